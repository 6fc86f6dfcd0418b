"""No attack: the clean training set (poison ratio 0), for the paper's Table 10, which asks what a
defense costs when there is nothing to remove. It has no trigger, so its ASR is undefined (NaN)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from ..data.splits import PoisonedSplit, Split
from .base import ATTACKS, Attack


@dataclass
class CleanParams:
    target: int = 0  # kept so class-index checks and tables treat it like any attack

    def __post_init__(self):
        check(self.target >= 0, f"target={self.target} must be a class index >= 0")


@ATTACKS.register("clean", aliases=("no_attack", "poison_ratio_0"))
class Clean(Attack):
    """No attack: nothing is poisoned and nothing is triggered (ASR is NaN)."""

    Params = CleanParams
    in_all = False
    image_sizes = None

    @classmethod
    def label_kind(cls) -> str:
        return "none (no attack)"

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def poison(self, train: Split, full_train_size: int, seed: int, tools=None) -> PoisonedSplit:
        return PoisonedSplit(train.images, train.labels, poisoned=torch.empty(0, dtype=torch.long))

    def backdoor_test(self, test: Split) -> Split:
        return Split(test.images[:0], test.labels[:0])
