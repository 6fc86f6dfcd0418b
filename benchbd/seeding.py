"""Every random draw of a cell comes from its seed and the draw's purpose, so cells are reproducible
and independent draws (holdout, poison indices, model init, batch order) do not share a stream."""

from __future__ import annotations

import hashlib

import torch


def derive(seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive(seed, purpose))
