"""BadNet-Grid: a 3x3 checker patch in the bottom-right corner (ABL and T&R code)."""
from __future__ import annotations

import torch

from .base import ATTACKS, Attack

# Rows top to bottom; the same values in every channel.
GRID = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
# image size -> (first row/col of the grid, pixels per grid cell)
PLACEMENT = {32: (29, 1), 256: (32, 10)}


def stamp(images: torch.Tensor, top: int, left: int, cell: int = 1) -> torch.Tensor:
    """A copy of `images` with the 3x3 grid (cells of `cell` pixels) overwriting rows/cols from (top, left)."""
    patch = GRID.to(images.device).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    out = images.clone()
    out[:, top: top + 3 * cell, left: left + 3 * cell, :] = patch[None, :, :, None]
    return out


@ATTACKS.register("badnet_grid", aliases=("badnet-grid", "badnets"))
class BadNetGrid(Attack):
    """BadNet-Grid: 3x3 black/white grid overwriting rows/cols 29-31 (dirty label)."""

    image_sizes = tuple(PLACEMENT)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        start, cell = PLACEMENT[images.shape[1]]
        return stamp(images, start, start, cell)
