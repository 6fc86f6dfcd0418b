"""FST, Feature Shift Tuning (Min, Qin, Shen & Cheng, NeurIPS 2023).

The classifier head is re-initialised (U(-1/sqrt(d), 1/sqrt(d)), d its input width) and the
whole network fine-tuned on clean data with CE + alpha <W, W0>_F, which pushes the new head away
from the backdoored head W0; after every optimiser step the head is rescaled to W0's Frobenius
norm. SGD without weight decay, cosine. Its own clean-data size is 2% of the training set (the
official README's split_ratio): a seeded 40% of benchbd's 5% holdout, recorded in the row.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import check
from ..train import TrainRecipe
from .base import DEFENSES, Defense, Need


def fst_recipe() -> TrainRecipe:
    """The official README's run: SGD lr 0.01, momentum 0.9, no weight decay, cosine, 10 epochs, batch 128."""
    return TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, schedule="cosine", epochs=10, batch_size=128)


@dataclass
class FstParams:
    alpha: float = 0.1  # weight of <W, W0>_F (README 0.1; the argparse default is 0.2)
    holdout_share: float = 0.4  # of the 5% holdout: 2% of the training set, the README's split_ratio
    recipe: TrainRecipe = field(default_factory=fst_recipe)

    def __post_init__(self):
        check(self.alpha >= 0, f"alpha={self.alpha} must be >= 0")
        check(0 < self.holdout_share <= 1, f"holdout_share={self.holdout_share} must be in (0, 1]")


@DEFENSES.register("fst", aliases=("feature_shift_tuning",))
class FeatureShiftTuning(Defense):
    """FST: re-initialise the head, fine-tune everything away from the old head's direction, norm kept (modern)."""

    Params = FstParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    group = "modern"
    source = "Min et al., NeurIPS 2023"
    version = 2  # 2: the last partial batch is kept, as the official loader (1: dropped)

    def run(self, ctx):
        net = copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL))
        clean = ctx.clean_share(self.params.holdout_share)
        head = net.classifier
        old = head.weight.detach().clone()
        norm = old.norm()
        bound = 1 / math.sqrt(head.in_features)
        with torch.no_grad():
            head.weight.uniform_(-bound, bound)
            head.bias.uniform_(-bound, bound)
        alpha = self.params.alpha

        def loss(model, x, y, gen):
            return F.cross_entropy(model(x), y) + alpha * (head.weight * old.to(head.weight.device)).sum()

        def keep_norm(optimizer, args, kwargs):
            with torch.no_grad():
                head.weight.mul_(norm.to(head.weight.device) / head.weight.norm())

        def with_projection(optimizer):
            optimizer.register_step_post_hook(keep_norm)
            return optimizer

        return ctx.trainer.fit(net, clean, self.params.recipe, loss=loss, wrap_optimizer=with_projection, desc="fst", drop_last=False)
