"""STRIP (Gao et al., ACSAC 2019): superimpose clean images on the input; a triggered input keeps
its prediction whatever is laid over it, so the entropy of its predictions stays low.

Score = minus the mean Shannon entropy (in bits, as the paper's Table 3) of the softmax over N
copies of the input, each summed with a clean image drawn at random for that input from the fitting
half of the holdout. `superimpose="sum"` is the official notebook's `cv2.addWeighted(x, 1, overlay,
1, 0)` on floats: a plain sum, not clipped (values up to 2); `"clip"` clips the sum to [0, 1] as
backdoor-toolbox does. The two give different entropies: rows record which ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from .base import DETECTORS, Detector, DetectorContext


@dataclass
class StripParams:
    overlays: int = 100  # N, the official notebook's and BackdoorBench's
    superimpose: str = "sum"  # "sum" (official, unclipped) or "clip"

    def __post_init__(self):
        check(self.overlays >= 1, f"overlays={self.overlays} must be >= 1")
        check(self.superimpose in ("sum", "clip"), f"superimpose={self.superimpose!r} is not one of: sum, clip")


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each row's softmax, in bits."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1) / torch.log(torch.tensor(2.0))


@DETECTORS.register("strip")
class Strip(Detector):
    """STRIP: low prediction entropy under superimposed clean images flags a trigger."""

    Params = StripParams
    source = "Gao et al., ACSAC 2019; garrisongys/STRIP (notebook)"
    batch_size = 32  # x 100 overlays per forward

    def fit(self, ctx: DetectorContext) -> None:
        self.pool = ctx.trainer.pipeline.test(ctx.fit.images.to(ctx.trainer.device))
        self.fitted["overlay_pool"] = len(self.pool)

    def score(self, model, x, gen):
        n, b = self.params.overlays, len(x)
        draw = torch.randint(len(self.pool), (b, n), generator=gen, device=gen.device).to(x.device)
        mixed = x[:, None] + self.pool[draw]  # [B, N, 3, H, W]: a fresh draw per input
        if self.params.superimpose == "clip":
            mixed = mixed.clamp(0, 1)
        logits = model(mixed.flatten(0, 1))
        return -entropy_bits(logits).view(b, n).mean(1)

    def forward_passes(self) -> int:
        return self.params.overlays
