"""IBD-PSC (Hou et al., ICML 2024): amplify the affine parameters of the deepest BatchNorm layers;
benign predictions lose confidence, poisoned ones keep a high probability on their label.

As the authors' code (BackdoorBox and backdoor-toolbox, which agree): the BatchNorm2d layers in
reverse registration order (index 0 nearest the classifier); M_k multiplies the weight and bias of
the k deepest by omega (eval mode, so it multiplies their outputs; running statistics untouched);
k* = the first k in 1..L-1 whose top-1 error on labelled clean data exceeds xi; the ensemble
amplifies k*+1 .. k*+n layers (`offset=1`; `offset=0` gives k*..k*+n-1, a reading of the paper's
Eq. 4); PSC(x) = the mean probability the ensemble gives the original model's label.

The score is -log(1 - PSC), computed from the other labels' probability mass in log space: the
same order as PSC, without its saturation. In float32 a softmax probability is exactly 1 once the
logit margin passes about 17, and on the blend model more than 5% of clean holdout images score
PSC = 1.0, so a threshold at 5% holdout FPR could flag nothing (version 1, measured). The paper's
T = 0.9 is score 2.3026.

The authors' code crashes when no k < L crosses xi; here k* is then L (all layers, recorded as
`selection_fallback`), and counts past L saturate at L as theirs do (the ensemble may repeat a
member). The amplified parameters are passed with `functional_call`: the model is never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..config import check
from .base import DETECTORS, Detector, DetectorContext, predicted


@dataclass
class IbdPscParams:
    n: int = 5  # ensemble size
    xi: float = 0.6  # error rate that ends the layer selection
    omega: float = 1.5  # factor on BN weight and bias
    offset: int = 1  # the ensemble starts at k* + offset layers (the authors' code: 1)

    def __post_init__(self):
        check(self.n >= 1, f"n={self.n} must be >= 1")
        check(0 < self.xi < 1, f"xi={self.xi} must be in (0, 1)")
        check(self.omega > 0, f"omega={self.omega} must be > 0")
        check(self.offset in (0, 1), f"offset={self.offset} must be 0 or 1")


def deepest_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm2d layers, deepest (last registered) first."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.affine][::-1]


def amplified(model: nn.Module, layers: list[str], omega: float) -> dict[str, torch.Tensor]:
    """Parameter overrides for `functional_call` that scale the weight and bias of `layers` by omega."""
    modules = dict(model.named_modules())
    out = {}
    for name in layers:
        out[f"{name}.weight"] = modules[name].weight * omega
        out[f"{name}.bias"] = modules[name].bias * omega
    return out


@DETECTORS.register("ibd_psc", aliases=("ibdpsc",))
class IbdPsc(Detector):
    """IBD-PSC: confidence that survives amplified BatchNorm layers flags a poisoned input (white-box)."""

    Params = IbdPscParams
    version = 2  # 2: the score is -log(1 - PSC) from log-space probabilities (1: PSC in float32, saturating at 1)
    source = "Hou et al., ICML 2024; THUYimingLi/BackdoorBox core/defenses/IBD_PSC.py"

    def fit(self, ctx: DetectorContext) -> None:
        p = self.params
        names = deepest_batchnorms(ctx.model)
        if not names:
            from ..errors import BenchbdError

            raise BenchbdError("detector ibd_psc needs a model with BatchNorm2d layers; this one has none")
        errors, chosen = [], None
        for k in range(1, len(names)):
            overrides = amplified(ctx.model, names[:k], p.omega)
            wrong = seen = 0
            for start, x in ctx.trainer.inputs(ctx.fit.images, 512):
                with ctx.trainer.autocast(), torch.no_grad():
                    label = functional_call(ctx.model, overrides, (x,)).argmax(1).cpu()
                wrong += int((label != ctx.fit.labels[start : start + len(x)]).sum())
                seen += len(x)
            errors.append(round(wrong / seen, 4))
            if wrong / seen > p.xi:
                chosen = k
                break
        fallback = chosen is None
        k_star = len(names) if fallback else chosen
        start = k_star + p.offset
        self.ensemble = [min(start + i, len(names)) for i in range(p.n)]
        self.layers = names
        self.fitted.update(
            k_star=k_star, selection_errors=errors, ensemble=self.ensemble, selection_fallback=fallback, bn_layers=len(names)
        )

    def score(self, model, x, gen):
        with torch.no_grad():
            label = predicted(model, x)
            rest = torch.zeros(len(x), dtype=torch.float64, device=x.device)  # sum over members of 1 - p(label)
            for count in self.ensemble:
                logits = functional_call(model, amplified(model, self.layers[:count], self.params.omega), (x,)).double()
                others = logits.scatter(1, label[:, None], float("-inf"))
                rest += (others.logsumexp(1) - logits.logsumexp(1)).exp()
        return -(rest / len(self.ensemble)).log()

    def paper_threshold(self) -> float | None:
        return -math.log(1 - 0.9)  # T = 0.9 on PSC, both authorial copies

    def forward_passes(self) -> int:
        return self.params.n
