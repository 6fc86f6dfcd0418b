"""Trap-and-Replace (NeurIPS 2022), SPEC section 6.

Stage 1 trains the whole network with an image decoder on the stem's features, so that the
stem must keep the image's content and the easy-to-learn backdoor is "trapped" in the small
head. Stage 2 throws the head (and decoder) away and trains a fresh head on the clean holdout
over the frozen stem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import as_dict, check
from ..data.augment import cutmix
from ..errors import BenchbdError
from ..seeding import derive
from ..train import TrainRecipe
from .base import DEFENSES, Defense, DefenseContext, Frozen, Need


def total_variation(r: torch.Tensor) -> torch.Tensor:
    """(sum of squared vertical + horizontal neighbour differences) / (B C H W)."""
    dv = (r[:, :, 1:, :] - r[:, :, :-1, :]).pow(2).sum()
    dh = (r[:, :, :, 1:] - r[:, :, :, :-1]).pow(2).sum()
    return (dv + dh) / r.numel()


@dataclass
class TnRParams:
    split: Optional[int] = None  # residual blocks in the stem; None = the model's own (5 for WRN-16-1)
    rec_weight: float = 10.0  # weight of the reconstruction MSE (the paper's l1)
    tv_weight: float = 1.0  # weight of TV (l1 x l2 in the paper's form)
    replace_head: bool = True  # False = stage 1 only (ablation "no replacement")
    head_dropout: float = 0.5
    label_smoothing: float = 0.1
    cutmix: bool = True
    stage1: TrainRecipe = field(default_factory=TrainRecipe)
    stage2: TrainRecipe = field(default_factory=lambda: TrainRecipe(lr=0.03, epochs=100, batch_size=64))

    def __post_init__(self):
        check(self.rec_weight >= 0 and self.tv_weight >= 0, "rec_weight and tv_weight must be >= 0")
        check(0 <= self.head_dropout < 1, f"head_dropout={self.head_dropout} must be in [0, 1)")
        check(0 <= self.label_smoothing < 1, f"label_smoothing={self.label_smoothing} must be in [0, 1)")


class TrapNet(nn.Module):
    """Stage 1's network: classifier and decoder on the stem output. Forward gives logits."""

    def __init__(self, net, split: int):
        super().__init__()
        self.net, self.split = net, split
        self.stem, self.head = net.stem(split), net.head(split)
        self.decoder = net.decoder(split)

    def forward(self, x):
        return self.head(self.stem(x))

    def stem_features(self, x):
        return self.stem(x)

    def reconstruct(self, x):
        return self.decoder(self.stem(x))

    def trap_loss(self, x, y, rec_weight: float, tv_weight: float):
        features = self.stem(x)
        logits = self.head(features)
        loss = F.cross_entropy(logits, y)
        if rec_weight or tv_weight:
            rec = self.decoder(features).float()
            loss = loss + rec_weight * F.mse_loss(rec, x.float()) + tv_weight * total_variation(rec)
        return loss


class ReplacedHead(nn.Sequential):
    """Stage 2's model: the frozen stage-1 stem, then the new head."""

    def __init__(self, stem: nn.Module, head: nn.Module):
        super().__init__(Frozen(stem), head)

    def stem_features(self, x):
        return self[0](x)


@torch.no_grad()
def reconstruction_mse(trainer, trapped: TrapNet, data) -> float:
    """Mean squared error of the decoder's reconstruction of `data` (un-augmented, in [0, 1])."""
    trapped = trainer.prepare(trapped).eval()
    total, count = 0.0, 0
    for _, x in trainer.inputs(data.images, 512):
        with trainer.autocast():
            rec = trapped.reconstruct(x).float()
        total += F.mse_loss(rec, x.float(), reduction="sum").item()
        count += x.numel()
    return total / max(count, 1)


@DEFENSES.register("tnr", aliases=("trap_and_replace", "t&r"))
class TrapAndReplace(Defense):
    """Trap-and-Replace: trap the backdoor in a small head with a decoder, then replace the head."""

    Params = TnRParams
    needs = frozenset({Need.POISONED_TRAIN, Need.HOLDOUT})
    version = 3  # 3: the official decoder at splits 3-4 (its output differs only there); 2: stage 1 cached
    attacker_controls_training = True  # stage 1 is the victim's training with T&R's terms added

    def check_model(self, model) -> None:
        if self.params.split is None:  # the model's own split: nothing to check (and no forward passes to run)
            return
        valid = model.decodable_splits()
        if self.params.split not in valid:
            raise BenchbdError(
                f"defense.{self.name}.split={self.params.split} is out of range for {type(model).__name__}: "
                f"valid {valid[0]}..{valid[-1]} (default {model.default_split}; a stem that keeps the input "
                f"resolution leaves the decoder nothing to upsample)"
            )

    def run(self, ctx: DefenseContext) -> nn.Module:
        trapped = self.stage1(ctx)
        if not self.params.replace_head:
            return trapped.net
        ctx.probe("stage1", trapped.net)  # the trapped model before its head is replaced: a failed trap or a failed replacement?
        return self.stage2(ctx, trapped)

    def stage1(self, ctx: DefenseContext) -> TrapNet:
        """Train stem, head and decoder end to end on the poisoned training split."""
        p = self.params
        net = ctx.new_model()
        trapped = TrapNet(net, net.default_split if p.split is None else p.split)

        def loss(model, x, y, gen):
            return model.trap_loss(x, y, p.rec_weight, p.tv_weight)

        identity = {"split": trapped.split, "rec_weight": p.rec_weight, "tv_weight": p.tv_weight, "stage1": as_dict(p.stage1)}
        ctx.cached_model(
            "stage1",
            identity,
            trapped,
            lambda m: ctx.trainer.fit(m, ctx.need(Need.POISONED_TRAIN), p.stage1, loss=loss, desc="T&R stage 1"),
        )
        if p.rec_weight > 0:  # Table 8's column; on the clean holdout, which stage 1 never saw
            ctx.metrics["recon_mse"] = reconstruction_mse(ctx.trainer, trapped, ctx.need(Need.HOLDOUT))
            ctx.artifacts["reconstruction"] = trapped
        return trapped

    def stage2(self, ctx: DefenseContext, trapped: TrapNet) -> nn.Module:
        """Freeze the stem (BatchNorm in eval mode); train a fresh head on the clean holdout."""
        p = self.params
        torch.manual_seed(derive(ctx.seed, "tnr:stage2"))  # the same head and dropout whether stage 1 trained or came from the cache
        head = ctx.new_model(dropout=p.head_dropout).head(trapped.split)
        model = ReplacedHead(trapped.stem, head)

        def loss(m, x, y, gen):
            if not p.cutmix:
                return F.cross_entropy(m(x), y, label_smoothing=p.label_smoothing)
            mixed, ya, yb, lam = cutmix(x, y, gen)
            logits = m(mixed)
            return lam * F.cross_entropy(logits, ya, label_smoothing=p.label_smoothing) + (1 - lam) * F.cross_entropy(
                logits, yb, label_smoothing=p.label_smoothing
            )

        ctx.trainer.fit(model, ctx.need(Need.HOLDOUT), p.stage2, loss=loss, params=head.parameters(), desc="T&R stage 2")
        return model
