"""Budgets: how long every training run is, without importing torch (tables and listings read them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .registry import Registry

# Bump when a budget's rule changes (2: `long_run_epochs` shortens passes over the training split
# only, no longer the defenses' short runs on the holdout): part of every cell's and cached model's key.
BUDGET_RULES_VERSION = 2


@dataclass(frozen=True)
class Budget:
    """How long training runs are: every setting of a recipe is kept but its epoch count."""

    description: str
    # Runs over the training split (at least `whole_split_share` of the training set: normal
    # training, T&R's stage 1, ABL's isolation and retraining, DP-SGD, retraining after data
    # cleansing, surrogates) take min(planned, long_run_epochs); runs over the holdout or another
    # small subset keep their recipe.
    long_run_epochs: Optional[int] = None
    max_epochs: Optional[int] = None  # every run is capped at this
    max_steps_per_epoch: Optional[int] = None
    whole_split_share: float = 0.5

    def identity(self) -> dict:
        """What determines the epochs and steps of every run (part of cell and cache keys)."""
        return {
            "rules": BUDGET_RULES_VERSION,
            "long_run_epochs": self.long_run_epochs,
            "max_epochs": self.max_epochs,
            "max_steps_per_epoch": self.max_steps_per_epoch,
            "whole_split_share": self.whole_split_share,
        }

    def iterations(self, planned: int) -> int:
        """For methods counted in iterations rather than epochs (ANP): capped like an epoch's steps."""
        return planned if self.max_steps_per_epoch is None else min(planned, self.max_steps_per_epoch)

    def epochs(self, planned: int, whole_split: bool = True) -> int:
        """The epochs a run planned at `planned` takes; `whole_split`: the run passes over the training split."""
        epochs = planned
        if self.long_run_epochs is not None and whole_split:
            epochs = min(planned, self.long_run_epochs)
        if self.max_epochs is not None:
            epochs = min(epochs, self.max_epochs)
        return epochs


BUDGETS: Registry[Budget] = Registry("budget")
BUDGETS.register("paper", description="the paper's epochs (SPEC section 5)")(Budget("paper"))
BUDGETS.register("fast", description="passes over the training split take at most 30 epochs; runs on the holdout keep theirs")(
    Budget("fast", long_run_epochs=30)
)
BUDGETS.register("quick", description="passes over the training split take at most 5 epochs, every run at most 20: the quick start")(
    Budget("quick", long_run_epochs=5, max_epochs=20)
)
BUDGETS.register("demo", description="every run capped at 20 epochs: real but short, for small studies on a CPU")(
    Budget("demo", max_epochs=20)
)
BUDGETS.register("smoke", description="1 epoch of at most 2 steps per run: exercises the code only")(
    Budget("smoke", max_epochs=1, max_steps_per_epoch=2)
)
