"""Trojan-WM: a sparse watermark added to the image (I-BAU); resized for 256x256 images."""

from __future__ import annotations

from .base import ATTACKS, AdditiveAttack, load_asset


@ATTACKS.register("trojan_wm", aliases=("trojan-wm",))
class TrojanWatermark(AdditiveAttack):
    """Trojan-WM: x + P, P a sparse watermark (dirty label; also on imagenet12)."""

    assets = ("trojan_wm.png",)
    image_sizes = (32, 256)

    def pattern(self):
        return load_asset("trojan_wm.png")
