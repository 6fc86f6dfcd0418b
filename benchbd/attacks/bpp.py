"""BppAttack (Wang, Zhai & Ma, CVPR 2022): colour-depth squeezing as the trigger.

Q(x) = round(x / 255 * (m - 1)) / (m - 1) * 255 per pixel and channel, in [0, 255] (never on
normalised values). The attacker controls training (per_batch.py): per batch, floor(poison_ratio
x B) squeezed samples get the target label and floor(negative_ratio x B) "negative" samples keep
theirs: x + r_j, clamped, where r_j = Q(x_j) - x_j is the quantisation residual of another image.
The official code draws r_j from a bank of residuals of the training images (5 passes of its
loader); here j is another image of the same batch, a random sample of the same training set.
Floyd-Steinberg dithering (off in the official defaults) is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from .base import ATTACKS, AttackParams, to_uint8
from .per_batch import PerBatchAttack


@dataclass
class BppParams(AttackParams):
    # the protocol's 10%, as every attack of the grid (and BackdoorBench's Bpp); the official
    # injection_rate 0.2 with --set attack.bpp.poison_ratio=0.2
    poison_ratio: float = 0.1
    negative_ratio: float = 0.2  # label-keeping negative samples per batch, as a share of the batch
    squeeze_num: int = 8  # m: colour levels per channel (the official config.py; its README says 32)

    def __post_init__(self):
        super().__post_init__()
        check(0 <= self.negative_ratio < 1, f"negative_ratio={self.negative_ratio} must be in [0, 1)")
        check(self.squeeze_num >= 2, f"squeeze_num={self.squeeze_num} must be at least 2")


def squeeze(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Q(x) in float, [0, 255]: `levels` evenly spaced values per channel."""
    return torch.round(images.float() / 255 * (levels - 1)) / (levels - 1) * 255


def negatives(images: torch.Tensor, others: torch.Tensor, levels: int) -> torch.Tensor:
    """x + (Q(x_j) - x_j), clamped to uint8: each image plus the quantisation residual of its `others` row."""
    return to_uint8(images.float() + squeeze(others, levels) - others.float())


@ATTACKS.register("bpp", aliases=("bppattack",))
class BppAttack(PerBatchAttack):
    """BppAttack: colour depth squeezed to 8 levels, poisoned batch by batch with negative samples (modern; dirty label)."""

    Params = BppParams
    in_all = False
    group = "modern"
    source = "Wang, Zhai & Ma, CVPR 2022"
    image_sizes = None

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return to_uint8(squeeze(images, self.params.squeeze_num))

    def extra_count(self, batch: int, backdoor: int) -> int:
        return int(self.params.negative_ratio * batch)

    def extra_samples(self, batch, positions, gen):
        """x + (Q(x_j) - x_j) with x_j another image of the batch (never the sample itself)."""
        n = len(batch)
        if n < 2:
            return batch[positions]
        offset = torch.randint(1, n, (len(positions),), device=batch.device, generator=gen)
        return negatives(batch[positions], batch[(positions + offset) % n], self.params.squeeze_num)
