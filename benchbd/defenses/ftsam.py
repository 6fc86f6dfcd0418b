"""FT-SAM (Zhu, Wei, Shen, Fan & Wu, ICCV 2023): fine-tuning the backdoored model on clean data
with sharpness-aware minimisation, which shrinks the norms of backdoor-related neurons that plain
fine-tuning leaves alone.

Each step (BackdoorBench's `sam.py`, the official code, with its default adaptive SAM): the
gradient g at w; the ascent e = rho (|w|^2 g) / || |w| g ||_2 over all parameters together; the
label-smoothed CE (0.1) at w + e with BatchNorm's running statistics frozen; w restored and the
SGD step taken with the gradient from w + e.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..train import TrainRecipe
from .base import DEFENSES, Defense, Need


def ftsam_recipe() -> TrainRecipe:
    """BackdoorBench's ft-sam/cifar10.yaml: SGD lr 0.01, momentum 0.9, wd 5e-4, cosine, 100 epochs, batch 256."""
    return TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="cosine", epochs=100, batch_size=256)


@dataclass
class FtSamParams:
    rho: float = 2.0  # the ascent radius (8 on gtsrb)
    adaptive: bool = True  # ASAM, on by default in the official code
    label_smoothing: float = 0.1
    recipe: TrainRecipe = field(default_factory=ftsam_recipe)

    def __post_init__(self):
        check(self.rho >= 0, f"rho={self.rho} must be >= 0")
        check(0 <= self.label_smoothing < 1, f"label_smoothing={self.label_smoothing} must be in [0, 1)")


def ascent(params: list[nn.Parameter], grads: list[torch.Tensor], rho: float, adaptive: bool) -> list[torch.Tensor]:
    """SAM's weight perturbation e per parameter: rho s^2 g / ||s g||, s = |w| (ASAM) or 1."""
    scaled = [(p.detach().abs() if adaptive else 1.0) * g for p, g in zip(params, grads)]
    norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2)
    scale = rho / (norm + 1e-12)
    return [(p.detach().pow(2) if adaptive else 1.0) * g * scale for p, g in zip(params, grads)]


class SharpnessAware:
    """The two-pass SAM loss for `Trainer.fit`: returns the loss at w + e with w perturbed in
    place; the optimiser's step pre-hook puts w back before the step uses the gradient."""

    def __init__(self, params: FtSamParams):
        self.params = params
        self.pending: list[tuple[nn.Parameter, torch.Tensor]] = []  # (parameter, its value at w)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen) -> torch.Tensor:
        smoothing = self.params.label_smoothing
        weights = [p for p in model.parameters() if p.requires_grad]
        first = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        grads = torch.autograd.grad(first, weights, allow_unused=True)
        pairs = [(p, g) for p, g in zip(weights, grads) if g is not None]
        steps = ascent([p for p, _ in pairs], [g for _, g in pairs], self.params.rho, self.params.adaptive)
        self.pending = [(p, p.detach().clone()) for p, _ in pairs]  # w itself, put back exactly
        with torch.no_grad():
            for (p, _), e in zip(pairs, steps):
                p.add_(e)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0  # the second pass leaves the running statistics as the first set them
        try:
            return F.cross_entropy(model(x), y, label_smoothing=smoothing)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum

    def restore(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for p, original in self.pending:
                p.copy_(original)
        self.pending = []


@DEFENSES.register("ftsam", aliases=("ft-sam", "ft_sam"))
class FtSam(Defense):
    """FT-SAM: fine-tune the backdoored model on the holdout with (adaptive) sharpness-aware minimisation (modern)."""

    Params = FtSamParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    group = "modern"
    source = "Zhu et al., ICCV 2023"
    version = 2  # 2: the last partial batch is kept, as the official loader (1: dropped)

    def run(self, ctx):
        net = copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL))
        sam = SharpnessAware(self.params)

        def restoring(optimizer):
            optimizer.register_step_pre_hook(sam.restore)
            return optimizer

        holdout = ctx.need(Need.HOLDOUT)
        return ctx.trainer.fit(net, holdout, self.params.recipe, loss=sam.loss, wrap_optimizer=restoring, desc="ft-sam", drop_last=False)
