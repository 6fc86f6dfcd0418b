"""BadNet-Grid: a 3x3 checker patch in the bottom-right corner (ABL and T&R code)."""

from __future__ import annotations

import torch

from .base import ATTACKS, Attack

# Rows top to bottom; the same values in every channel. The 32x32 layout of the ABL and T&R CIFAR
# code, and the T&R ImageNet layout (datasets/imagenet.py), which is the 32x32 one turned by 180
# degrees, in 10x10-pixel cells.
GRID = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
IMAGENET_GRID = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 0]], dtype=torch.uint8)
# image size -> (grid, first row/col of the grid, pixels per grid cell)
PLACEMENT = {32: (GRID, 29, 1), 256: (IMAGENET_GRID, 32, 10)}


def stamp(images: torch.Tensor, top: int, left: int, cell: int = 1, grid: torch.Tensor = GRID) -> torch.Tensor:
    """A copy of `images` with the 3x3 `grid` (cells of `cell` pixels) overwriting rows/cols from (top, left)."""
    patch = grid.to(images.device).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    out = images.clone()
    out[:, top : top + 3 * cell, left : left + 3 * cell, :] = patch[None, :, :, None]
    return out


@ATTACKS.register("badnet_grid", aliases=("badnet-grid", "badnets"))
class BadNetGrid(Attack):
    """BadNet-Grid: 3x3 black/white grid overwriting rows/cols 29-31 (dirty label)."""

    image_sizes = tuple(PLACEMENT)

    def identity(self) -> dict:
        # The 256x256 layout changed (to T&R's ImageNet one) after 32x32 results existed: only its
        # cached splits and rows are invalidated.
        return {**super().identity(), **({"layout": "tnr-imagenet"} if self.image_size == 256 else {})}

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        grid, start, cell = PLACEMENT[images.shape[1]]
        return stamp(images, start, start, cell, grid)
