"""BadNet-Grid: a 3x3 checker patch in the bottom-right corner (ABL and T&R code)."""
from __future__ import annotations

import torch

from ..errors import BenchbdError
from .base import ATTACKS, Attack

# Rows top to bottom; the same values in every channel.
GRID = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
# image size -> (first row/col of the grid, pixels per grid cell)
PLACEMENT = {32: (29, 1), 256: (32, 10)}


@ATTACKS.register("badnet_grid", aliases=("badnet-grid", "badnets"))
class BadNetGrid(Attack):
    """BadNet-Grid: 3x3 black/white grid overwriting rows/cols 29-31 (dirty label)."""

    def __init__(self, params, num_classes, image_size, name="badnet_grid"):
        super().__init__(params, num_classes, image_size, name)
        if image_size not in PLACEMENT:
            raise BenchbdError(f"attack {name} has no trigger for {image_size}x{image_size} images; valid sizes: "
                               + ", ".join(str(s) for s in PLACEMENT))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        start, cell = PLACEMENT[images.shape[1]]
        patch = GRID.to(images.device).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        out = images.clone()
        size = 3 * cell
        out[:, start: start + size, start: start + size, :] = patch[None, :, :, None]
        return out
