"""The retuning attack of Min et al. (NeurIPS 2024, "Uncovering, Explaining, and Mitigating the
Superficial Safety of Backdoor Defense"): is a low ASR after a defense real or superficial?

From a model, fine-tune 5 epochs with SGD (lr 0.01, momentum 0.9, no weight decay, no schedule,
batch 128, train mode) on 2% of the clean training set in which 5 images are replaced by the
attack's poisoned training samples (with their poisoned labels): the official `ft_poison.py` with
its README's command. A purified model that regains its ASR was only superficially purified; a
model trained on clean data must not acquire the backdoor from 5 samples (else the retuning is too
strong). The retuning is an attacker's action: its clean images come from the training split, not
the defender's holdout. As the official code, the augmentation (crop and flip) is drawn once when
the set is built and then frozen, and the last partial batch is kept (8 steps an epoch on CIFAR-10).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import check
from .data.splits import PoisonedSplit, Split
from .seeding import generator
from .train import Trainer


@dataclass
class RetuneParams:
    clean_fraction: float = 0.02  # of the training set: 1,000 CIFAR-10 images
    poisoned: int = 5  # of them replaced by the attack's poisoned samples
    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 128

    def __post_init__(self):
        check(0 < self.clean_fraction <= 1, f"clean_fraction={self.clean_fraction} must be in (0, 1]")
        check(self.poisoned >= 0, f"poisoned={self.poisoned} must be >= 0")
        check(self.epochs >= 1, f"epochs={self.epochs} must be >= 1")
        check(self.lr > 0 and self.batch_size >= 1, "lr must be > 0 and batch_size >= 1")


def retuning_set(clean: Split, poisoned: PoisonedSplit, full_size: int, params: RetuneParams, seed: int) -> Split:
    """`clean_fraction` of the training set drawn from `clean` (seeded), its first `poisoned`
    images replaced by poisoned samples of the attack (seeded draw among them)."""
    n = min(len(clean), max(params.poisoned + 1, int(round(params.clean_fraction * full_size))))
    index = torch.randperm(len(clean), generator=generator(seed, "retune:clean"))[:n]
    images, labels = clean.images[index].clone(), clean.labels[index].clone()
    k = min(params.poisoned, len(poisoned.poisoned))
    chosen = poisoned.poisoned[torch.randperm(len(poisoned.poisoned), generator=generator(seed, "retune:poison"))[:k]]
    images[:k], labels[:k] = poisoned.images[chosen], poisoned.labels[chosen]
    return Split(images, labels)


def retune(trainer: Trainer, model: torch.nn.Module, data: Split, params: RetuneParams, seed: int, evaluate) -> dict:
    """Fine-tune a copy of `model` on `data`; `evaluate(model) -> (asr, ca)` after every epoch
    (epoch 0: before). Returns the per-epoch lists, the final numbers and the first epoch whose ASR
    passes 50 (None if none does)."""
    model = trainer.prepare(copy.deepcopy(model)).requires_grad_(True)
    asr, ca = evaluate(model)
    log = {"asr": [asr], "ca": [ca]}
    gen = generator(seed, "retune:batches", trainer.device)
    x_all = trainer.pipeline.train(data.images.to(trainer.device), gen)  # drawn once, then frozen
    y_all = data.labels.to(trainer.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=0.0)
    epochs = trainer.run_epochs("retuning", params.epochs, data, budgeted=False)
    trainer.progress.start_run("retuning", epochs)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_all), device=trainer.device, generator=gen)
        for start in range(0, len(order), params.batch_size):
            index = order[start : start + params.batch_size]
            with trainer.autocast():
                loss = F.cross_entropy(model(x_all[index]), y_all[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            trainer.count_batch(len(index))
        asr, ca = evaluate(model)
        log["asr"].append(asr)
        log["ca"].append(ca)
        trainer.progress.advance(1, f"epoch {epoch + 1}/{epochs} ASR {asr:.1f}")
    trainer.progress.end_run()
    above = [e for e, a in enumerate(log["asr"]) if a > 50]
    return {
        "asr_after_retuning": log["asr"][-1],
        "ca_after_retuning": log["ca"][-1],
        "retuning_asr": log["asr"],
        "retuning_ca": log["ca"],
        "retuning_epoch_asr_above_50": above[0] if above else None,
    }
