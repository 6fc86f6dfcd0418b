"""Smooth: a low-frequency universal pattern, then a per-image min-max rescale (frequency-backdoor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .base import ATTACKS, Attack, AttackParams, load_asset, to_uint8


@dataclass
class SmoothParams(AttackParams):
    trigger: Literal["cifar10", "gtsrb"] = "cifar10"  # which dataset's optimised pattern (registry.yaml picks per dataset)


@ATTACKS.register("smooth")
class Smooth(Attack):
    """Smooth: x + 255 S, then each image min-max rescaled to 0-255 (dirty label)."""

    Params = SmoothParams

    def __init__(self, params, num_classes, image_size, name="smooth"):
        super().__init__(params, num_classes, image_size, name)
        self.assets = (f"smooth_{params.trigger}.npy",)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        pattern = load_asset(self.assets[0])[0].to(images.device)  # [32, 32, 3] in 0-0.2
        x = images.float() + 255.0 * pattern
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        return to_uint8((x - lo) / (hi - lo).clamp_min(1e-6) * 255.0)
