"""Attacks that poison the victim's training batch by batch (WaNet, BppAttack, Input-aware).

Their official code controls the training loop: each batch, as it is drawn, has its first
floor(poison_ratio x B) samples turned into backdoor samples (test-time trigger, target label)
and the next ones into the method's "noise" / "negative" samples, which keep their true labels so
that the model learns the exact trigger and not "any such transformation". The stored training
split stays clean. A training run the attacker does not control (a defense that trains on the
poisoned data itself, such as ABL or DP-SGD) sees the same rule applied once to the whole split in
a seeded order, as BackdoorBench saves it after training.
"""

from __future__ import annotations

import abc

import torch

from ..data.splits import PoisonedSplit, Split
from ..seeding import generator
from .base import Attack, TrainingControl


class PerBatchPoisoning(TrainingControl):
    """The training control of a PerBatchAttack: its rule on each batch, or once on a whole split."""

    def __init__(self, attack: "PerBatchAttack"):
        self.attack = attack
        self.after_augmentation = attack.stamps_after_augmentation

    def shape_batch(self, images, labels, poisoned, eligible, gen):
        return self.attack.poison_batch(images, labels, eligible, gen)

    def static_split(self, split: PoisonedSplit, seed: int) -> PoisonedSplit:
        gen = generator(seed, f"static poison:{self.attack.name}")
        order = torch.randperm(len(split), generator=gen)
        images, labels, backdoor = self.attack.poison_batch(split.images[order], split.labels[order], split.eligible_mask[order], gen)
        inverse = torch.argsort(order)
        return PoisonedSplit(images[inverse], labels[inverse], poisoned=torch.nonzero(backdoor[inverse]).flatten())


class PerBatchAttack(Attack):
    """Subclasses give `apply` (the test-time trigger), `extra_count` and `extra_samples`."""

    stamps_after_augmentation = False  # True: the victim's batches are stamped after crop and flip (TrainingControl)

    def __init__(self, params, num_classes, image_size, name=""):
        super().__init__(params, num_classes, image_size, name)
        self.training_control = PerBatchPoisoning(self)

    @abc.abstractmethod
    def extra_count(self, batch: int, backdoor: int) -> int:
        """How many label-keeping noise / negative samples a batch of `batch` (`backdoor` of them backdoor) gets."""

    @abc.abstractmethod
    def extra_samples(self, batch: torch.Tensor, positions: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The noise / negative versions (uint8) of the images at `positions` of the clean uint8 `batch`."""

    def poison_batch(
        self, images: torch.Tensor, labels: torch.Tensor, eligible: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The official per-batch rule on a batch in random order: of the samples the attacker may
        change, the first floor(poison_ratio x B) become backdoor samples, the next `extra_count`
        become noise / negative samples with their labels kept. Returns images, labels, backdoor mask."""
        n = len(images)
        n_backdoor = int(self.params.poison_ratio * n)
        candidates = torch.nonzero(eligible).flatten()
        backdoor = candidates[:n_backdoor]
        extra = candidates[n_backdoor : n_backdoor + self.extra_count(n, n_backdoor)]
        clean, images, labels = images, images.clone(), labels.clone()
        if len(backdoor):
            images[backdoor] = self.apply(clean[backdoor])
            labels[backdoor] = self.params.target
        if len(extra):
            images[extra] = self.extra_samples(clean, extra, gen)
        mask = torch.zeros(n, dtype=torch.bool, device=images.device)
        mask[backdoor] = True
        return images, labels, mask

    def poison(self, train: Split, full_train_size: int, seed: int, tools=None) -> PoisonedSplit:
        """The stored split stays clean: the poison is applied batch by batch in training."""
        return PoisonedSplit(train.images, train.labels, poisoned=torch.empty(0, dtype=torch.long))
