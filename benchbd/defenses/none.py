"""No defense: normal training on the whole poisoned training set (split + holdout)."""

from __future__ import annotations

from .base import DEFENSES, Defense, Need


@DEFENSES.register("none", aliases=("no_defense",))
class NoDefense(Defense):
    """No defense: the model normally trained on the whole poisoned training set."""

    needs = frozenset({Need.BACKDOORED_MODEL})
    undefended = True

    @classmethod
    def scenario(cls) -> str:
        return "no defense: normal training on the whole poisoned training set"

    def run(self, ctx):
        return ctx.need(Need.BACKDOORED_MODEL)
