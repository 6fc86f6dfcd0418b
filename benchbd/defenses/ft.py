"""Fine-tuning: the backdoored model trained further on the clean holdout (a classic repair baseline)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..train import TrainRecipe
from .base import DEFENSES, Defense, Need


def repair_recipe() -> TrainRecipe:
    """The fine-tuning run of ft and fp (not in the spec): SGD lr 0.01, momentum 0.9, cosine, 20 epochs, batch 64."""
    return TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="cosine", epochs=20, batch_size=64)


@dataclass
class FineTuneParams:
    recipe: TrainRecipe = field(default_factory=repair_recipe)


@DEFENSES.register("ft", aliases=("finetune", "fine_tuning"))
class FineTune(Defense):
    """Fine-tuning: train the backdoored model further on the clean holdout."""

    Params = FineTuneParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    group = "baseline"  # not in the paper's Table 1: a baseline every benchmark reports

    def run(self, ctx):
        model = copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL))
        return ctx.trainer.fit(model, ctx.need(Need.HOLDOUT), self.params.recipe, desc="fine-tuning")
