"""Trojan-SQ: the optimised 3x3 square of the ABL code, added at rows/cols 25-27."""

from __future__ import annotations

from .base import ATTACKS, AdditiveAttack, load_asset


@ATTACKS.register("trojan_sq", aliases=("trojan-sq",))
class TrojanSquare(AdditiveAttack):
    """Trojan-SQ: x + P, P a 3x3 optimised square at rows/cols 25-27 (dirty label)."""

    assets = ("trojan_sq_3x3.npy",)

    def pattern(self):
        return load_asset("trojan_sq_3x3.npy")
