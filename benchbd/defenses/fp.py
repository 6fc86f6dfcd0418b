"""Fine-Pruning (Liu et al., 2018): prune the last feature map's channels least active on the
clean holdout, as long as holdout accuracy stays within `max_drop` of the start, then fine-tune."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import check
from ..errors import BenchbdError
from ..train import TrainRecipe
from .base import DEFENSES, Defense, Need
from .ft import repair_recipe


class ChannelMask(nn.Module):
    """Multiplies a feature map by a fixed 0/1 mask per channel (a buffer: fine-tuning leaves it)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mask", torch.ones(channels))

    def forward(self, x):
        return x * self.mask.view(1, -1, 1, 1).to(x.dtype)


@dataclass
class FinePruningParams:
    max_drop: float = 0.10  # stop before holdout accuracy falls more than this (absolute) below its start
    prune_step: int = 1  # channels pruned between two accuracy checks
    recipe: TrainRecipe = field(default_factory=repair_recipe)

    def __post_init__(self):
        check(0 < self.max_drop < 1, f"max_drop={self.max_drop} must be in (0, 1)")
        check(self.prune_step >= 1, f"prune_step={self.prune_step} must be >= 1")


def insert_mask(net) -> ChannelMask:
    """Put a ChannelMask right before the global pooling of the net's tail (the last feature map)."""
    mods = list(net.tail)
    at = next((i for i, m in enumerate(mods) if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d))), None)
    if at is None:
        raise BenchbdError(f"fp needs a model whose tail pools a feature map; {type(net).__name__} has none")
    channels = net.stem_shape(net.num_blocks)[0]
    mask = ChannelMask(channels).to(next(net.parameters()).device)
    net.tail = nn.Sequential(*mods[:at], mask, *mods[at:])
    return mask


@DEFENSES.register("fp", aliases=("fine_pruning", "fineprune"))
class FinePruning(Defense):
    """Fine-Pruning: prune the least-active last-layer channels on the holdout, then fine-tune."""

    Params = FinePruningParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    group = "baseline"  # not in the paper's Table 1: a baseline every benchmark reports

    def run(self, ctx):
        net = ctx.trainer.prepare(copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL)))
        holdout = ctx.need(Need.HOLDOUT)
        mask = insert_mask(net)
        activity = self.channel_activity(ctx.trainer, net, mask, holdout)
        order = activity.argsort()  # least active first
        start = ctx.trainer.accuracy(net, holdout)
        pruned = 0
        for end in range(self.params.prune_step, len(order), self.params.prune_step):
            mask.mask[order[:end]] = 0
            if ctx.trainer.accuracy(net, holdout) < start - self.params.max_drop:
                mask.mask[order[pruned:end]] = 1  # one step too far: undo it
                break
            pruned = end
        ctx.metrics["pruned_channels"] = pruned
        return ctx.trainer.fit(net, holdout, self.params.recipe, desc="fine-pruning: fine-tune")

    @staticmethod
    @torch.no_grad()
    def channel_activity(trainer, net, mask: ChannelMask, data) -> torch.Tensor:
        """Mean activation of each channel of the last feature map over `data`."""
        total = torch.zeros_like(mask.mask)

        def record(module, inputs, output):
            total.add_(inputs[0].float().mean(dim=(2, 3)).sum(0))  # returns None: the output stays as it is

        handle = mask.register_forward_hook(record)
        try:
            trainer.predict(net, data.images)
        finally:
            handle.remove()
        return (total / len(data)).cpu()
