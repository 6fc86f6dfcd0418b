"""Splits as uint8 tensors in the stored layout [N, H, W, 3], and the seeded holdout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..seeding import generator


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, H, W, 3]
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    @staticmethod
    def concat(*splits: "Split") -> "Split":
        return Split(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))


@dataclass
class PoisonedSplit(Split):
    """A training split some of whose images carry a trigger; `poisoned` indexes them."""

    poisoned: torch.Tensor = None  # int64 indices into this split
    # Set by attacks that control the victim's training (lba_k, WaNet, BppAttack): an
    # attacks.base.TrainingControl the trainer runs whenever it trains on this split. None on a split
    # a defense trains on by itself (`static()`).
    training_control: Optional[Any] = None
    clean_tail: int = 0  # the last images are the defender's holdout, appended clean: never poisoned

    @property
    def poison_mask(self) -> torch.Tensor:
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[self.poisoned] = True
        return mask

    @property
    def eligible_mask(self) -> torch.Tensor:
        """The images an attacker may poison: all but the appended holdout."""
        mask = torch.ones(len(self), dtype=torch.bool)
        mask[len(self) - self.clean_tail :] = False
        return mask

    def plus_clean(self, clean: Split) -> "PoisonedSplit":
        """This split followed by clean images (the whole training set: split + holdout)."""
        whole = Split.concat(self, clean)
        return PoisonedSplit(
            whole.images, whole.labels, poisoned=self.poisoned, training_control=self.training_control, clean_tail=len(clean)
        )

    def static(self, seed: int) -> "PoisonedSplit":
        """This split as a training run the attacker does not control sees it: attacks that poison
        batch by batch give their poison as a fixed dataset (as BackdoorBench saves it)."""
        return self if self.training_control is None else self.training_control.static_split(self, seed)


@dataclass
class Splits:
    """What one cell sees of a dataset: training split, disjoint clean holdout, test set."""

    train: Split
    holdout: Split
    test: Split
    num_classes: int

    @property
    def full_train_size(self) -> int:
        """The training set before the holdout was taken out: the poison ratio counts against it."""
        return len(self.train) + len(self.holdout)


def split_holdout(train: Split, test: Split, num_classes: int, holdout_fraction: float, seed: int) -> Splits:
    """Draw the holdout once per seed, disjoint from the training split (never poisoned)."""
    order = torch.randperm(len(train), generator=generator(seed, "holdout"))
    n_holdout = int(round(holdout_fraction * len(train)))
    return Splits(train.subset(order[n_holdout:].sort().values), train.subset(order[:n_holdout].sort().values), test, num_classes)


def limit_holdout(holdout: Split, size: int | None, seed: int) -> Split:
    """The defender's share of the holdout: `size` images drawn at random (seeded), or all of it."""
    if size is None or size >= len(holdout):
        return holdout
    order = torch.randperm(len(holdout), generator=generator(seed, "holdout_size"))
    return holdout.subset(order[:size].sort().values)
