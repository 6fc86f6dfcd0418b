"""SIG: a horizontal sinusoidal signal blended into target-class images only (clean label)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from .base import ATTACKS, Attack, AttackParams, to_uint8


@dataclass
class SigParams(AttackParams):
    alpha: float = 0.2
    amplitude: float = 20.0
    frequency: float = 0.8  # radians per column at 32 columns; stretched for wider images

    def __post_init__(self):
        super().__post_init__()
        check(0 < self.alpha <= 1, f"alpha={self.alpha} must be in (0, 1]")


def sig_signal(width: int, amplitude: float = 20.0, frequency: float = 0.8) -> torch.Tensor:
    """s(col) = trunc(A sin(f col')) mod 256 with col' = col x 32 / width: the ABL file's values."""
    cols = torch.arange(width, dtype=torch.float64) * (32.0 / width)
    return torch.remainder(torch.trunc(amplitude * torch.sin(frequency * cols)), 256).float()


@ATTACKS.register("sig")
class Sig(Attack):
    """SIG: 0.8 x + 0.2 s, s a sinusoid along columns, on target-class images (clean label)."""

    Params = SigParams
    clean_label = True
    image_sizes = (32, 256)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        p = self.params
        signal = sig_signal(images.shape[2], p.amplitude, p.frequency).to(images.device)[None, None, :, None]
        return to_uint8((1 - p.alpha) * images.float() + p.alpha * signal)
