"""Anti-Backdoor Learning (Li et al., 2021), SPEC section 7: backdoored samples are learnt fastest,
so a model trained with the local gradient ascent loss isolates the 1% with the lowest loss,
trains on the rest, then unlearns the isolated samples by gradient ascent. Isolation and unlearning
see the images un-augmented, as the official code: crop and flip would move or cut a corner trigger
and slow the very learning that isolation measures."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import check
from ..train import TrainRecipe
from .base import DEFENSES, Defense, Need
from .common import score_detection


def _sgd(lr: float, epochs: int, milestones: tuple[int, ...] = ()) -> TrainRecipe:
    return TrainRecipe(
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        schedule="step" if milestones else "constant",
        milestones=milestones,
        epochs=epochs,
        batch_size=128,
    )


@dataclass
class AblParams:
    gamma: float = 0.5  # LGA: sign(L - gamma) L holds the batch loss near gamma
    isolation_ratio: float = 0.01
    isolation: TrainRecipe = field(default_factory=lambda: _sgd(0.1, 20))
    clean_training: TrainRecipe = field(default_factory=lambda: _sgd(0.1, 60, (40,)))
    unlearning: TrainRecipe = field(default_factory=lambda: _sgd(5e-4, 20))

    def __post_init__(self):
        check(0 < self.isolation_ratio < 1, f"isolation_ratio={self.isolation_ratio} must be in (0, 1)")
        check(self.gamma >= 0, f"gamma={self.gamma} must be >= 0")


@DEFENSES.register("abl")
class AntiBackdoorLearning(Defense):
    """ABL: isolate the lowest-loss 1% under LGA training, train on the rest, unlearn the 1%."""

    Params = AblParams
    needs = frozenset({Need.POISONED_TRAIN})
    version = 2  # 2: isolation and unlearning un-augmented; full batches only

    def run(self, ctx):
        p = self.params
        data = ctx.need(Need.POISONED_TRAIN)
        trainer = ctx.trainer

        def lga(model, x, y, gen):
            loss = F.cross_entropy(model(x), y)
            return torch.sign(loss - p.gamma) * loss

        model = trainer.fit(ctx.new_model(), data, p.isolation, loss=lga, desc="ABL isolation", augment=False)
        losses = trainer.per_sample_loss(model, data)
        isolated = self.isolate(losses)
        kept = torch.ones(len(data), dtype=torch.bool)
        kept[isolated] = False
        # the poison indices only score the isolation (lower loss: more suspicious); no decision uses them
        score_detection(ctx, data.poison_mask, ~kept, -losses, "isolation")
        ctx.metrics["isolated"] = int(len(isolated))
        trainer.fit(model, data.subset(kept), p.clean_training, desc="ABL training on the rest")
        ctx.probe("before_unlearning", model)  # the row's before_unlearning_asr / _ca: what the unlearning itself did

        def ascent(m, x, y, gen):
            return -F.cross_entropy(m(x), y)

        return trainer.fit(model, data.subset(isolated), p.unlearning, loss=ascent, desc="ABL unlearning", augment=False)

    def isolate(self, losses: torch.Tensor) -> torch.Tensor:
        """Indices of the isolation_ratio share of samples with the lowest loss."""
        count = max(1, int(self.params.isolation_ratio * len(losses)))
        return losses.argsort()[:count].sort().values
