"""BadNet-White: a white square near the bottom-right corner (I-BAU and T&R code)."""

from __future__ import annotations

import torch

from .base import ATTACKS, Attack


@ATTACKS.register("badnet_white", aliases=("badnet-white",))
class BadNetWhite(Attack):
    """BadNet-White: 4x4 white square overwriting rows/cols 27-30 (dirty label)."""

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        out[:, 27:31, 27:31, :] = 255
        return out
