"""No defense: normal training on the whole poisoned training set (split + holdout)."""
from __future__ import annotations

from .base import DEFENSES, Defense, Need


@DEFENSES.register("none", aliases=("no_defense",))
class NoDefense(Defense):
    """No defense: the model normally trained on the whole poisoned training set."""

    needs = frozenset({Need.BACKDOORED_MODEL})

    def run(self, ctx):
        return ctx.need(Need.BACKDOORED_MODEL)
