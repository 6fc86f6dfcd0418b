"""Pieces several defenses share: a model part's features over a split, retraining
from scratch on the samples a detector kept, the detection scores of what it removed, and the
shape of a data-cleansing defense (SS, AC)."""

from __future__ import annotations

import abc
from typing import Callable

import torch
from torch import nn

from ..config import as_dict
from ..data.splits import PoisonedSplit
from ..seeding import derive
from ..train import Trainer, TrainRecipe
from .base import Defense, DefenseContext, Need


@torch.no_grad()
def features(trainer: Trainer, images: torch.Tensor, extract: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """[N, D] float32 CPU features `extract(x)` of `images` (a model's part, in eval mode), without
    augmentation (BackdoorBench's SS and AC extract through the training augmentation; we do not)."""
    out = []
    for _, x in trainer.inputs(images):
        with trainer.autocast():
            out.append(extract(x).float().flatten(1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def retrain_from_scratch(ctx: DefenseContext, data: PoisonedSplit, kept: torch.Tensor, purpose: str, identity: dict) -> nn.Module:
    """A fresh model trained with the cell's normal recipe on `data[kept]`, cached by `identity`
    (every setting that decided `kept`)."""
    recipe = ctx.normal_recipe or TrainRecipe()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(ctx.seed, f"init:{purpose}"))
        model = ctx.new_model()
    subset = data.subset(kept)
    return ctx.cached_model(purpose, identity, model, lambda m: ctx.trainer.fit(m, subset, recipe, desc=purpose))


def score_removal(ctx: DefenseContext, data: PoisonedSplit, removed: torch.Tensor) -> None:
    """Precision and recall of the removed samples against the true poison (scoring only)."""
    poison = data.poison_mask
    hits = int((removed & poison).sum())
    ctx.metrics["removed"] = int(removed.sum())
    ctx.metrics["detection_precision"] = hits / int(removed.sum()) if removed.any() else float("nan")
    ctx.metrics["detection_recall"] = hits / int(poison.sum()) if poison.any() else float("nan")


class DataCleansing(Defense):
    """Detect suspected poison in the training set with the backdoored model, remove it, and train
    a fresh model on the rest with the cell's normal recipe. Subclasses say what to remove."""

    needs = frozenset({Need.POISONED_TRAIN, Need.BACKDOORED_MODEL})
    group = "modern"

    @classmethod
    def scenario(cls) -> str:
        return "after training: removes suspected poison from the training set, retrains from scratch"

    @abc.abstractmethod
    def detect(self, ctx: DefenseContext, data: PoisonedSplit, model: nn.Module) -> torch.Tensor:
        """A bool mask over `data`: the samples to remove."""

    def run(self, ctx):
        data = ctx.need(Need.POISONED_TRAIN)
        removed = self.detect(ctx, data, ctx.need(Need.BACKDOORED_MODEL))
        score_removal(ctx, data, removed)
        return retrain_from_scratch(ctx, data, ~removed, "retrained", as_dict(self.params))
