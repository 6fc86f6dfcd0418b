"""Blend: x' = (1 - alpha) x + alpha t with the Hello-Kitty picture t (frequency-backdoor file)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from .base import ATTACKS, Attack, AttackParams, load_asset, resize_hwc, to_uint8

KITTY_FILE = "blend_kitty_x0.2.png"  # stores 0.2 t, so t = 5 x file


@dataclass
class BlendParams(AttackParams):
    alpha: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        check(0 < self.alpha <= 1, f"alpha={self.alpha} must be in (0, 1]")


@ATTACKS.register("blend")
class Blend(Attack):
    """Blend: 0.8 x + 0.2 Hello-Kitty over the whole image (dirty label)."""

    Params = BlendParams
    assets = (KITTY_FILE,)
    image_sizes = (32, 256)

    def __init__(self, params, num_classes, image_size, name="blend"):
        super().__init__(params, num_classes, image_size, name)
        self.picture = resize_hwc(load_asset(KITTY_FILE) * 5.0, image_size)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        a = self.params.alpha
        return to_uint8((1 - a) * images.float() + a * self.picture.to(images.device))
