"""TeCo (Liu et al., CVPR 2023): a clean image's prediction flips at similar severities whatever the
corruption; a triggered image's does not (some corruptions erase the trigger at once, others never).

Per corruption, the transition point is the first severity (1..5) whose prediction differs from
the clean input's, 6 if none does; score = the population standard deviation of the transition
points over the corruptions. Each (corruption, severity) is applied to the original image: the
official code (and BackdoorBench's port) overwrites its stored images in place, so its severity s
corrupts the severity s-1 output and each corruption starts from what the previous ones left; its
published numbers come from that chain, not from the paper's grid. Eight of the fifteen ImageNet-C
corruptions run here (`corruptions.py`: those that need no external asset or extra library), so the
score is a std over eight values and is not comparable with fifteen-value results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from .base import DETECTORS, Detector, predicted
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt


@dataclass
class TecoParams:
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)

    def __post_init__(self):
        self.corruptions = tuple(self.corruptions)
        check(len(self.corruptions) >= 2, f"corruptions={self.corruptions} needs at least two (a std over one is 0)")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        check(not unknown, f"corruptions: {', '.join(unknown)} not among: {', '.join(CORRUPTIONS)}")


def transition_points(same: torch.Tensor) -> torch.Tensor:
    """`same` [..., severities] (True where the prediction equals the clean one) -> the first
    severity (1-based) whose prediction differs, or severities + 1 where none does."""
    flipped = ~same
    first = flipped.float().argmax(-1) + 1
    return torch.where(flipped.any(-1), first, torch.full_like(first, same.shape[-1] + 1))


@DETECTORS.register("teco")
class Teco(Detector):
    """TeCo: an uneven corruption robustness across corruption types flags a trigger (hard labels)."""

    Params = TecoParams
    source = "Liu et al., CVPR 2023; CGCL-codes/TeCo"
    batch_size = 128

    def score(self, model, x, gen):
        label = predicted(model, x)
        points = []
        for name in self.params.corruptions:
            same = torch.stack([predicted(model, corrupt(x, name, s, gen)) == label for s in SEVERITIES], -1)
            points.append(transition_points(same))
        return torch.stack(points, 1).float().std(1, unbiased=False)

    def forward_passes(self) -> int:
        return len(self.params.corruptions) * len(SEVERITIES)
