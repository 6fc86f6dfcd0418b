"""The one trainer every method trains through (budgets: budgets.py).

The whole split is moved to the device once as uint8; batches are gathered, augmented and
converted there, channels_last; on CUDA also bf16 autocast. The loop does not synchronise with
the host inside an epoch (the running loss is read once per epoch). Training loops drop the last
partial batch by default, as the official loaders of the paper's defenses do (`drop_last=True`);
methods whose official loaders keep it pass `drop_last=False` (docs/deviations.md). A split
smaller than one batch trains on one batch of all of it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .budgets import BUDGETS as BUDGETS  # re-exported: the trainer's callers pick budgets here too
from .budgets import Budget
from .config import check
from .data.augment import to_float, to_image
from .data.splits import Split
from .errors import BenchbdError, did_you_mean
from .progress import NullProgress
from .seeding import generator

# Bump when what a training run computes changes (2: the last partial batch is dropped): it is part
# of every cached model's key and every cell's key, so older artifacts and rows are not reused.
TRAINER_VERSION = 2

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class TrainRecipe:
    """One training run's optimiser, schedule and length (SPEC section 5)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    epochs: int = 200
    batch_size: int = 256

    def __post_init__(self):
        check(self.lr > 0, f"lr={self.lr} must be positive")
        check(self.epochs >= 1, f"epochs={self.epochs} must be at least 1")
        check(self.batch_size >= 2, f"batch_size={self.batch_size} must be at least 2")
        check(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        check(list(self.milestones) == sorted(self.milestones), f"milestones={list(self.milestones)} must increase")


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def make_optimizer(recipe: TrainRecipe, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Fused: one kernel per step instead of a loop over ~100 parameter tensors (9% faster on the CPU)."""
    params = list(params)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    return torch.optim.SGD(
        params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=recipe.weight_decay, fused=True
    )


def make_schedule(recipe: TrainRecipe, optimizer: torch.optim.Optimizer, epochs: int):
    """Stepped once per epoch. Step milestones shrink with the budget, keeping their place in the run."""
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if recipe.schedule == "step":
        scale = epochs / recipe.epochs
        milestones = [max(1, round(m * scale)) for m in recipe.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=recipe.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


class TrainingDiverged(RuntimeError):
    """A training run's loss became NaN or infinite: the cell fails with this reason, the grid goes on."""


def steps_per_epoch(n: int, batch_size: int, budget: "Budget", drop_last: bool = True) -> int:
    """Full batches only with `drop_last` (one batch of all `n` when `n` is smaller than a batch),
    else every image, the last batch partial."""
    steps = math.ceil(n / batch_size) if not drop_last else (n // batch_size if n >= batch_size else 1)
    if budget.max_steps_per_epoch is not None:
        steps = min(steps, budget.max_steps_per_epoch)
    return steps


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N`; a device this machine lacks is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise BenchbdError(f"unknown device '{name}'{did_you_mean(kind, ('auto', 'cpu', 'cuda'))}; valid: auto, cpu, cuda, cuda:N")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BenchbdError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu (or auto)")
        if index and int(index) >= count:
            raise BenchbdError(f"--device {name}: this machine has {count} GPU(s): valid cuda:0..cuda:{count - 1}")
    return torch.device(name)


def precision_of(device: torch.device) -> str:
    """The numeric mode of a device's training and evaluation: bf16 autocast on CUDA, float32 elsewhere."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


@contextmanager
def attached(control, model: nn.Module):
    """An attack's training control attached to `model` for one training run (none: nothing)."""
    if control is None:
        yield
        return
    control.attach(model)
    try:
        yield
    finally:
        control.detach()


class Trainer:
    """fit / predict / accuracy on uint8 splits, with the dataset's device-side pipeline."""

    def __init__(
        self,
        pipeline,
        budget: Budget,
        device: torch.device | str = "cpu",
        seed: int = 0,
        progress: NullProgress | None = None,
        train_size: int | None = None,
    ):
        self.pipeline = pipeline
        self.budget = budget
        self.device = torch.device(device)
        self.seed = seed
        self.progress = progress or NullProgress()
        self.cuda = self.device.type == "cuda"
        if not self.cuda:
            # Subnormal floats take a slow path on x86 CPUs: T&R's stage 2 (Adam on a small head)
            # fell from 1,300 to 490 images/s after 25 epochs, to 35 beside other work. Flushed to
            # zero, its row came out identical (ASR, CA, RA) at 1,370 images/s throughout.
            torch.set_flush_denormal(True)
        # The cell's training set (split + holdout): a run over at least `budget.whole_split_share`
        # of it is a pass over the training split. None: every run counts as one.
        self.train_size = train_size
        # What ran, one entry per training run, for the result row (`trainings`)
        self.trainings: list[dict] = []

    @property
    def precision(self) -> str:
        return precision_of(self.device)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def whole_split(self, data: Split | int) -> bool:
        n = data if isinstance(data, int) else len(data)
        return self.train_size is None or n >= self.budget.whole_split_share * self.train_size

    def run_epochs(self, name: str, planned: int, data: Split | int, budgeted: bool = True) -> int:
        """The epochs a run of `planned` epochs over `data` takes under the budget (`budgeted=False`:
        rounds the budget does not shorten, as I-BAU's); opens the run's entry in `trainings`, whose
        steps and images `batches` and `fit` count."""
        epochs = self.budget.epochs(planned, self.whole_split(data)) if budgeted else planned
        self.trainings.append({"name": name, "planned_epochs": planned, "epochs": epochs, "steps": 0, "images": 0, "cached": False})
        return epochs

    def run_iterations(self, name: str, planned: int) -> int:
        """As `run_epochs`, for methods counted in optimiser steps (ANP)."""
        steps = self.budget.iterations(planned)
        self.trainings.append({"name": name, "planned_steps": planned, "steps": 0, "images": 0, "cached": False})
        return steps

    def count_batch(self, batch: int) -> None:
        if self.trainings:
            self.trainings[-1]["steps"] += 1
            self.trainings[-1]["images"] += batch

    def prepare(self, model: nn.Module) -> nn.Module:
        """On the device, channels_last (faster for these convnets on CUDA and on x86 CPUs alike)."""
        return model.to(self.device, memory_format=torch.channels_last)

    def fit(
        self,
        model: nn.Module,
        data: Split,
        recipe: TrainRecipe,
        *,
        loss: LossFn = cross_entropy,
        params: Iterable[torch.nn.Parameter] | None = None,
        desc: str = "train",
        wrap_optimizer: Callable[[torch.optim.Optimizer], torch.optim.Optimizer] | None = None,
        mixed_precision: bool = True,
        augment: bool = True,
        drop_last: bool = True,
    ) -> nn.Module:
        """Train `params` (default: every parameter that requires grad) of `model` on `data`.

        `wrap_optimizer(optimizer)` may replace the recipe's optimizer (DP-SGD);
        `mixed_precision=False` keeps float32 on CUDA too; `augment=False` trains on the images as
        they are (ABL's isolation and unlearning, as the official code); `drop_last=False` keeps the
        last partial batch (methods whose official loader keeps it)."""
        model = self.prepare(model)
        params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        optimizer = make_optimizer(recipe, params)
        if wrap_optimizer is not None:
            optimizer = wrap_optimizer(optimizer)
        epochs = self.run_epochs(desc, recipe.epochs, data)
        schedule = make_schedule(recipe, optimizer, epochs)
        images, labels = data.images.to(self.device), data.labels.to(self.device)
        control = getattr(data, "training_control", None)  # an attack that controls training (lba_k, wanet, bpp)
        if control is not None:
            poisoned, eligible = data.poison_mask.to(self.device), data.eligible_mask.to(self.device)
        n, bs = len(labels), recipe.batch_size
        steps = steps_per_epoch(n, bs, self.budget, drop_last)
        gen = generator(self.seed, f"fit:{desc}", self.device)
        self.progress.start_run(desc, epochs * steps, min(bs, n))
        with attached(control, model):
            for epoch in range(epochs):
                model.train()
                order = torch.randperm(n, device=self.device, generator=gen)
                total = torch.zeros((), device=self.device)
                for step in range(steps):
                    index = order[step * bs : (step + 1) * bs]
                    x, y = images[index], labels[index]
                    if control is not None and not control.after_augmentation:
                        x, y, backdoor = control.shape_batch(x, y, poisoned[index], eligible[index], gen)
                    x = self.pipeline.train(x, gen) if augment else self.pipeline.test(x)
                    if control is not None and control.after_augmentation:
                        x, y, backdoor = control.shape_batch(to_image(x), y, poisoned[index], eligible[index], gen)
                        x = to_float(x)
                    with self.autocast() if mixed_precision else nullcontext():
                        value = loss(model, x, y, gen)
                        extra = control.loss(y, backdoor) if control is not None else None
                        if extra is not None:
                            value = value + extra
                    optimizer.zero_grad(set_to_none=True)
                    value.backward()
                    optimizer.step()
                    total += value.detach()
                    self.count_batch(len(y))
                    self.progress.advance(1)
                mean_loss = total.item() / steps  # the one host read per epoch
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(f"{desc}: the training loss is {mean_loss} in epoch {epoch + 1}/{epochs}")
                self.progress.advance(0, f"epoch {epoch + 1}/{epochs} loss {mean_loss:.3f}")
                schedule.step()
        self.progress.end_run()
        return model

    def inputs(self, images: torch.Tensor, batch_size: int = 1024):
        """Yield (start index, float model inputs on the device) over `images`, without augmentation."""
        for start in range(0, len(images), batch_size):
            yield start, self.pipeline.test(images[start : start + batch_size].to(self.device))

    @torch.no_grad()
    def logits(self, model: nn.Module, images: torch.Tensor, batch_size: int = 1024):
        """Yield (start index, float logits) over `images` in eval mode, without augmentation."""
        model = self.prepare(model)
        model.eval()
        for start, x in self.inputs(images, batch_size):
            with self.autocast():
                yield start, model(x).float()

    def predict(self, model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        out = [z.argmax(1).cpu() for _, z in self.logits(model, images, batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def per_sample_loss(self, model: nn.Module, data: Split, batch_size: int = 1024) -> torch.Tensor:
        """Cross-entropy of every sample without augmentation, eval mode (CPU tensor)."""
        out = [
            F.cross_entropy(z, data.labels[start : start + len(z)].to(self.device), reduction="none").cpu()
            for start, z in self.logits(model, data.images, batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0)

    def batches(self, data: Split, batch_size: int, purpose: str, augment: bool = False, drop_last: bool = True):
        """One seeded pass over `data` in shuffled batches of float inputs on the device, for
        defenses with loops of their own (ANP, I-BAU). Full batches only unless `drop_last=False`,
        as `fit`; honours the budget's step cap."""
        gen = generator(self.seed, f"batches:{purpose}", self.device)
        images, labels = data.images.to(self.device), data.labels.to(self.device)
        order = torch.randperm(len(labels), device=self.device, generator=gen)
        for step in range(steps_per_epoch(len(labels), batch_size, self.budget, drop_last)):
            index = order[step * batch_size : (step + 1) * batch_size]
            x = self.pipeline.train(images[index], gen) if augment else self.pipeline.test(images[index])
            self.count_batch(len(index))
            yield x, labels[index]

    def accuracy(self, model: nn.Module, data: Split) -> float:
        """Share of `data` predicted as its label, per sample."""
        if len(data) == 0:
            return float("nan")
        return (self.predict(model, data.images) == data.labels.cpu()).double().mean().item()
