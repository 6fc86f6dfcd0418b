"""WaNet (Nguyen & Tran, ICLR 2021): a fixed, smooth warp of the whole image.

The warp field: k x k uniform values in [-1, 1] per axis, divided by their mean magnitude, upsampled
bicubically (align_corners) to the image; the backdoor grid is clamp((identity + s * field / H) *
grid_rescale, -1, 1) and the image is resampled bilinearly on it (grid_sample, align_corners). The
attacker controls training (per_batch.py): per batch, floor(poison_ratio x B) warped samples get
the target label and floor(cross_ratio x that) "noise" samples, warped on the backdoor grid plus
uniform noise of one pixel (redrawn per sample), keep theirs. The official code draws the field
with torch.rand when training starts; here `grid_seed` fixes it, so the trigger is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check
from ..seeding import generator
from .base import ATTACKS, AttackParams, to_uint8
from .per_batch import PerBatchAttack


@dataclass
class WaNetParams(AttackParams):
    cross_ratio: float = 2.0  # noise samples per backdoor sample in a batch
    warp_strength: float = 0.5  # s
    grid_size: int = 4  # k: the control points of the warp field per axis
    grid_rescale: float = 1.0
    grid_seed: int = 0  # draws the warp field

    def __post_init__(self):
        super().__post_init__()
        check(self.cross_ratio >= 0, f"cross_ratio={self.cross_ratio} must be >= 0")
        check(self.warp_strength > 0, f"warp_strength={self.warp_strength} must be positive")
        check(self.grid_size >= 2, f"grid_size={self.grid_size} must be at least 2")
        check(self.grid_rescale > 0, f"grid_rescale={self.grid_rescale} must be positive")


def warp_field(control_points: torch.Tensor, size: int) -> torch.Tensor:
    """[1, 2, k, k] control points -> the normalised, upsampled field [1, size, size, 2]."""
    points = control_points / control_points.abs().mean()
    return F.interpolate(points, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def identity_grid(size: int) -> torch.Tensor:
    """grid_sample's identity sampling grid [1, size, size, 2] (x, y) for align_corners=True."""
    line = torch.linspace(-1, 1, size)
    rows, cols = torch.meshgrid(line, line, indexing="ij")
    return torch.stack((cols, rows), 2)[None]


def warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] resampled on `grid` ([1 or N, H, W, 2]), bilinear, align_corners."""
    x = images.permute(0, 3, 1, 2).float()
    out = F.grid_sample(x, grid.to(x.device).expand(len(x), -1, -1, -1), mode="bilinear", align_corners=True)
    return to_uint8(out.permute(0, 2, 3, 1))


@ATTACKS.register("wanet")
class WaNet(PerBatchAttack):
    """WaNet: a fixed smooth warp, poisoned batch by batch with label-keeping noise warps (modern; dirty label)."""

    Params = WaNetParams
    in_all = False
    group = "modern"
    source = "Nguyen & Tran, ICLR 2021"

    def __init__(self, params, num_classes, image_size, name="wanet"):
        super().__init__(params, num_classes, image_size, name)
        gen = generator(params.grid_seed, "wanet:field")
        points = torch.rand(1, 2, params.grid_size, params.grid_size, generator=gen) * 2 - 1
        field = warp_field(points, image_size)
        self.grid = ((identity_grid(image_size) + params.warp_strength * field / image_size) * params.grid_rescale).clamp(-1, 1)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return warp(images, self.grid)

    def extra_count(self, batch: int, backdoor: int) -> int:
        return int(self.params.cross_ratio * backdoor)

    def extra_samples(self, batch, positions, gen):
        """Warped on the backdoor grid plus uniform noise of up to one pixel, redrawn per sample."""
        size = batch.shape[1]
        noise = torch.rand(len(positions), size, size, 2, device=batch.device, generator=gen) * 2 - 1
        return warp(batch[positions], (self.grid.to(batch.device) + noise / size).clamp(-1, 1))
