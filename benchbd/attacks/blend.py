"""Blend: x' = (1 - alpha) x + alpha t with the Hello-Kitty picture t (frequency-backdoor file)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check
from .base import ATTACKS, Attack, AttackParams, load_png, to_uint8

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

    def __init__(self, params, num_classes, image_size, name="blend"):
        super().__init__(params, num_classes, image_size, name)
        picture = torch.from_numpy(load_png(KITTY_FILE).astype(np.float32) * 5.0)
        if picture.shape[0] != image_size:
            picture = F.interpolate(picture.permute(2, 0, 1)[None], size=(image_size, image_size), mode="bilinear",
                                    align_corners=False)[0].permute(1, 2, 0)
        self.picture = picture

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        a = self.params.alpha
        return to_uint8((1 - a) * images.float() + a * self.picture.to(images.device))
