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


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` (higher: more suspicious) for the `positive` mask: the
    Mann-Whitney statistic with average ranks for ties; NaN without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    values, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank (from 0) of the first of each tied group
    ranks = (first + (counts - 1) / 2.0 + 1)[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score_detection(ctx: DefenseContext, poison: torch.Tensor, flagged: torch.Tensor, score: torch.Tensor | None, prefix: str) -> None:
    """Precision, recall and F1 of the `flagged` samples against the true poison, and the AUROC of
    the defense's own per-sample `score` where it has one: for the row only, no decision reads them."""
    hits = int((flagged & poison).sum())
    precision = hits / int(flagged.sum()) if flagged.any() else float("nan")
    recall = hits / int(poison.sum()) if poison.any() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if hits else (0.0 if flagged.any() and poison.any() else float("nan"))
    ctx.metrics.update({f"{prefix}_precision": precision, f"{prefix}_recall": recall, f"{prefix}_f1": f1})
    if score is not None:
        ctx.metrics[f"{prefix}_auroc"] = auroc(score, poison)


def score_removal(ctx: DefenseContext, data: PoisonedSplit, removed: torch.Tensor, score: torch.Tensor | None = None) -> None:
    """What a data-cleansing defense removed, scored against the true poison."""
    ctx.metrics["removed"] = int(removed.sum())
    score_detection(ctx, data.poison_mask, removed, score, "detection")


class DataCleansing(Defense):
    """Detect suspected poison in the training set with the backdoored model, remove it, and train
    a fresh model on the rest with the cell's normal recipe. Subclasses say what to remove."""

    needs = frozenset({Need.POISONED_TRAIN, Need.BACKDOORED_MODEL})
    group = "modern"

    @classmethod
    def scenario(cls) -> str:
        return "after training: removes suspected poison from the training set, retrains from scratch"

    @abc.abstractmethod
    def detect(self, ctx: DefenseContext, data: PoisonedSplit, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(a bool mask over `data`: the samples to remove, the per-sample suspicion score or None)."""

    def run(self, ctx):
        data = ctx.need(Need.POISONED_TRAIN)
        removed, score = self.detect(ctx, data, ctx.need(Need.BACKDOORED_MODEL))
        score_removal(ctx, data, removed, score)
        return retrain_from_scratch(ctx, data, ~removed, "retrained", as_dict(self.params))
