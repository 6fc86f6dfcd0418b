"""l2-Invisible: a dense, low-amplitude additive pattern (I-BAU)."""

from __future__ import annotations

from .base import ATTACKS, AdditiveAttack, load_asset


@ATTACKS.register("l2_invisible", aliases=("l2-invisible", "l2_inv"))
class L2Invisible(AdditiveAttack):
    """l2-Invisible: x + P with a dense pattern P of 0-68 (dirty label)."""

    assets = ("l2_invisible.png",)

    def pattern(self):
        return load_asset("l2_invisible.png")
