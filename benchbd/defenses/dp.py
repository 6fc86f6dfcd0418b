"""DP-SGD with Opacus (SPEC section 7): train on the poisoned training split with per-sample
gradient clipping and Gaussian noise; BatchNorm is replaced by GroupNorm (Opacus' validator),
and the privacy spent, epsilon at `delta`, goes into the result row."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import check
from ..train import TrainRecipe
from .base import DEFENSES, Defense, Need


def freeze_unused(net) -> None:
    """Stop training parameters the forward pass never reads (WRN's unused bn1 where widths change):
    Opacus' optimizer needs a per-sample gradient for every trainable parameter."""
    params = [p for p in net.parameters() if p.requires_grad]
    x = torch.rand(2, 3, net.input_size, net.input_size)
    grads = torch.autograd.grad(net(x).sum(), params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None:
            p.requires_grad_(False)


@dataclass
class DpParams:
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0  # per-sample clipping norm
    delta: float = 1e-5
    recipe: TrainRecipe = field(
        default_factory=lambda: TrainRecipe(optimizer="adam", lr=1e-3, weight_decay=5e-4, epochs=200, batch_size=256)
    )

    def __post_init__(self):
        check(self.noise_multiplier >= 0, f"noise_multiplier={self.noise_multiplier} must be >= 0")
        check(self.max_grad_norm > 0, f"max_grad_norm={self.max_grad_norm} must be positive")
        check(0 < self.delta < 1, f"delta={self.delta} must be in (0, 1)")


@DEFENSES.register("dp", aliases=("dp_sgd", "dpsgd"))
class DifferentialPrivacy(Defense):
    """DP-SGD (Opacus): per-sample clipping 1.0 and noise 1.0; reports epsilon at delta 1e-5."""

    Params = DpParams
    needs = frozenset({Need.POISONED_TRAIN})
    group = "baseline"  # not in the paper's Table 1: a baseline every benchmark reports
    version = 2  # 2: an attack's training control (lba_k) no longer acts inside DP-SGD; full batches only

    def run(self, ctx):
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.validators import ModuleValidator

        p = self.params
        data = ctx.need(Need.POISONED_TRAIN)
        net = ModuleValidator.fix(ctx.new_model())
        for module in net.modules():  # Opacus' per-sample hooks forbid in-place activations
            if getattr(module, "inplace", False):
                module.inplace = False
        freeze_unused(net)
        model = GradSampleModule(net, loss_reduction="mean")
        accountant = RDPAccountant()
        ctx.trainer.fit(
            model, data, p.recipe, desc="DP-SGD", mixed_precision=False, wrap_optimizer=lambda opt: self.private(opt, len(data), accountant)
        )
        # Batches are shuffled, not Poisson-sampled: epsilon follows the usual approximation.
        ctx.metrics["epsilon"] = float(accountant.get_epsilon(p.delta)) if accountant.history else 0.0
        ctx.metrics["delta"] = p.delta
        return model._module

    def private(self, optimizer, n_samples: int, accountant):
        """The recipe's optimizer made DP: clip each sample's gradient, add noise, account the step."""
        from opacus.optimizers import DPOptimizer

        batch = self.params.recipe.batch_size
        dp = DPOptimizer(
            optimizer,
            noise_multiplier=self.params.noise_multiplier,
            max_grad_norm=self.params.max_grad_norm,
            expected_batch_size=batch,
            loss_reduction="mean",
        )
        dp.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=min(1.0, batch / n_samples)))
        return dp
