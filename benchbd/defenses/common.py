"""Pieces several defenses share: the classifier head, a layer's features over a split, retraining
from scratch on the samples a detector kept, the detection scores of what it removed, and the
shape of a data-cleansing defense (SS, AC)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import as_dict
from ..data.splits import PoisonedSplit
from ..errors import BenchbdError
from ..seeding import derive
from ..train import Trainer, TrainRecipe
from .base import Defense, DefenseContext, Need


def classifier_head(net: nn.Module) -> nn.Linear:
    """The last linear layer: the classifier whose input is the network's last hidden layer."""
    heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise BenchbdError(f"this defense needs a model with a linear classifier head; {type(net).__name__} has none")
    return heads[-1]


@torch.no_grad()
def layer_features(trainer: Trainer, model: nn.Module, images: torch.Tensor, layer: nn.Module, take: str = "output") -> torch.Tensor:
    """[N, D] float32 CPU features of `images` at `layer`'s input or output: eval mode, no
    augmentation (BackdoorBench's SS and AC extract through the training augmentation; we do not)."""
    captured: list[torch.Tensor] = []

    def hook(module, args, out):
        captured.append((args[0] if take == "input" else out).detach().float().flatten(1).cpu())

    handle = layer.register_forward_hook(hook)
    try:
        for _ in trainer.logits(model, images):
            pass
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.empty(0)


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

    def detect(self, ctx: DefenseContext, data: PoisonedSplit, model: nn.Module) -> torch.Tensor:
        """A bool mask over `data`: the samples to remove."""
        raise NotImplementedError

    def run(self, ctx):
        data = ctx.need(Need.POISONED_TRAIN)
        removed = self.detect(ctx, data, ctx.need(Need.BACKDOORED_MODEL))
        score_removal(ctx, data, removed)
        return retrain_from_scratch(ctx, data, ~removed, "retrained", as_dict(self.params))
