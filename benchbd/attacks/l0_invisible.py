"""l0-Invisible: a few coloured pixels in the last row replace the image's (I-BAU)."""

from __future__ import annotations

from .base import ATTACKS, AdditiveAttack, load_asset


@ATTACKS.register("l0_invisible", aliases=("l0-invisible", "l0_inv"))
class L0Invisible(AdditiveAttack):
    """l0-Invisible: x (1 - M) + P, M = row 31 cols 23-31, P = 8 coloured pixels (dirty label)."""

    assets = ("l0_invisible.png", "l0_invisible_mask.npy")

    def pattern(self):
        return load_asset("l0_invisible.png")

    def mask(self):
        return load_asset("l0_invisible_mask.npy").permute(1, 2, 0)  # stored CHW
