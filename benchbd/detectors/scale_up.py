"""SCALE-UP (Guo et al., ICLR 2023): multiply the pixels by n and clip; a benign image loses its
class evidence, a triggered one keeps the target (the trigger survives the amplification).

Score = SPC, the share of the scaling factors under which the hard prediction stays that of the
input (hard labels only: a black-box detector). Factors (3, 5, 7, 9, 11) by default, the paper's
example; the official code's 1..11 (its factor 1 is the input itself, so SPC >= 1/11) is
`factors=[1,2,...,11]`, and its extra 0.02 uniform input noise is left out. Never mix the two in
one table.

`variant="data_limited"`: the paper's per-class normalisation, SPC standardised by the mean and
std of SPC over the fitting-half holdout images of the predicted class (consistency against the
prediction, as the paper; both toolboxes use one global mean against the true label instead).
A class with fewer than `min_class_images` images falls back to the pooled statistics, and a std
below `std_floor` is raised to it (SPC is discrete, a class may score one value only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from .base import DETECTORS, Detector, DetectorContext, predicted


@dataclass
class ScaleUpParams:
    factors: tuple[int, ...] = (3, 5, 7, 9, 11)
    variant: str = "data_free"  # or "data_limited"
    min_class_images: int = 5
    std_floor: float = 0.05

    def __post_init__(self):
        self.factors = tuple(self.factors)
        check(len(self.factors) >= 1 and all(f >= 1 for f in self.factors), f"factors={self.factors} must be integers >= 1")
        check(self.variant in ("data_free", "data_limited"), f"variant={self.variant!r} is not one of: data_free, data_limited")
        check(self.std_floor > 0, f"std_floor={self.std_floor} must be > 0")


def consistency(model, x: torch.Tensor, factors) -> tuple[torch.Tensor, torch.Tensor]:
    """(SPC, the prediction on x): the share of factors n with C(clip(n x)) == C(x)."""
    label = predicted(model, x)
    same = [predicted(model, (n * x).clamp(0, 1)) == label for n in factors]
    return torch.stack(same).float().mean(0), label


@DETECTORS.register("scale_up", aliases=("scaleup",))
class ScaleUp(Detector):
    """SCALE-UP: a prediction that survives pixel amplification flags a trigger (hard labels)."""

    Params = ScaleUpParams
    source = "Guo et al., ICLR 2023; JunfengGo/SCALE-UP"

    def fit(self, ctx: DetectorContext) -> None:
        if self.params.variant != "data_limited":
            return
        spc, label = [], []
        for _, x in ctx.trainer.inputs(ctx.fit.images, self.batch_size):
            s, y = consistency(ctx.model, x, self.params.factors)
            spc.append(s.cpu())
            label.append(y.cpu())
        spc, label = torch.cat(spc), torch.cat(label)
        pooled = (spc.mean(), spc.std(unbiased=False).clamp_min(self.params.std_floor))
        self.mean, self.std = torch.full((ctx.num_classes,), float(pooled[0])), torch.full((ctx.num_classes,), float(pooled[1]))
        fallback = []
        for c in range(ctx.num_classes):
            mine = spc[label == c]
            if len(mine) < self.params.min_class_images:
                fallback.append(c)
                continue
            self.mean[c], self.std[c] = mine.mean(), mine.std(unbiased=False).clamp_min(self.params.std_floor)
        self.fitted["pooled_classes"] = fallback

    def score(self, model, x, gen):
        spc, label = consistency(model, x, self.params.factors)
        if self.params.variant == "data_free":
            return spc
        label = label.cpu()
        return ((spc.cpu() - self.mean[label]) / self.std[label]).to(x.device)

    def paper_threshold(self) -> float | None:
        return 0.5 if self.params.variant == "data_free" else None  # BackdoorBox's T, on SPC only

    def forward_passes(self) -> int:
        return len(self.params.factors)
