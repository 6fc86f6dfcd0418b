"""Pieces several defenses share: the classifier head, a layer's features over a split, retraining
from scratch on the samples a detector kept, and the detection scores of what it removed."""

from __future__ import annotations

import torch
from torch import nn

from ..data.splits import PoisonedSplit
from ..errors import BenchbdError
from ..seeding import derive
from ..train import Trainer, TrainRecipe
from .base import DefenseContext


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
