"""I-BAU (Zeng et al., 2022), SPEC section 7: a minimax unlearning of universal adversarial
perturbations, the outer step using the implicit hypergradient of the inner fixed point.

Written with torch.autograd: for an inner fixed-point map Phi(d, w) = d - lr_inner * grad_d L_in(d, w)
at its (approximate) fixed point d, the hypergradient of L_out(d(w), w) is

    grad_w L_out + (dPhi/dw)^T v,   v = sum_{k<K} ((dPhi/dd)^T)^k grad_d L_out,

v built by K fixed-point iterations v <- (dPhi/dd)^T v + grad_d L_out (the official hypertorch
`fixed_point` method). The model stays in eval mode: BatchNorm statistics are neither used
from the batch nor updated, and its affine parameters are ordinary parameters of w.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..config import check
from .base import DEFENSES, Defense, Need


def implicit_hypergradient(
    outer_loss: Callable[[torch.Tensor], torch.Tensor],
    fp_map: Callable[[torch.Tensor], torch.Tensor],
    d: torch.Tensor,
    params: Sequence[torch.Tensor],
    iterations: int,
) -> list[torch.Tensor]:
    """d(outer)/d(params) through the fixed point `d` of `fp_map` (both closures over `params`)."""
    d = d.detach().requires_grad_(True)
    loss = outer_loss(d)
    grad_d, *grad_w = torch.autograd.grad(loss, [d, *params], allow_unused=True)
    mapped = fp_map(d)
    v = torch.zeros_like(d)
    for _ in range(iterations):
        (jv,) = torch.autograd.grad(mapped, d, grad_outputs=v, retain_graph=True)
        v = jv + grad_d
    indirect = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    return [
        (g if g is not None else torch.zeros_like(p)) + (i if i is not None else torch.zeros_like(p))
        for g, i, p in zip(grad_w, indirect, params)
    ]


@dataclass
class IbauParams:
    rounds: int = 5
    batch_size: int = 100
    perturbation_lr: float = 10.0  # SGD on the universal perturbation, one pass per round
    regularisation: float = 0.001  # weight of |d|^2 in the inner loss
    radius: float = 10.0  # L2 ball the perturbation is projected onto
    fixed_point_iterations: int = 5  # K
    inner_lr: float = 0.1  # step of the fixed-point map d <- d - inner_lr grad_d L_in
    outer_lr: float = 1e-3  # Adam on the model weights
    perturbed_share: float = 0.01  # share of each batch the outer loss perturbs (at least one image), as the official code

    def __post_init__(self):
        check(self.rounds >= 1 and self.batch_size >= 1, "rounds and batch_size must be >= 1")
        check(self.radius > 0 and self.inner_lr > 0 and self.outer_lr > 0, "radius, inner_lr and outer_lr must be positive")
        check(self.fixed_point_iterations >= 1, f"fixed_point_iterations={self.fixed_point_iterations} must be >= 1")
        check(0 < self.perturbed_share <= 1, f"perturbed_share={self.perturbed_share} must be in (0, 1]")


@DEFENSES.register("ibau", aliases=("i-bau",))
class IBAU(Defense):
    """I-BAU: unlearn universal adversarial perturbations with an implicit hypergradient."""

    Params = IbauParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})

    def run(self, ctx):
        p = self.params
        trainer = ctx.trainer
        model = trainer.prepare(copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL))).eval()
        params = [w for w in model.parameters() if w.requires_grad]
        optimizer = torch.optim.Adam(params, lr=p.outer_lr)
        holdout = ctx.need(Need.HOLDOUT)
        shape = (1, 3, *holdout.images.shape[1:3])
        gen = torch.Generator(device=trainer.device).manual_seed(ctx.seed)
        rounds = trainer.run_epochs("I-BAU rounds", p.rounds, holdout, budgeted=False)  # rounds, not epochs: as before
        trainer.progress.start_run("I-BAU rounds", rounds)
        for round_ in range(rounds):
            d = self.universal_perturbation(trainer, model, holdout, shape, f"ibau:{round_}:search")
            for x, y in trainer.batches(holdout, p.batch_size, f"ibau:{round_}:unlearn"):

                def inner(pert, x=x, y=y):
                    return F.cross_entropy(model(x + pert), y, reduction="none").mean().neg() + p.regularisation * pert.pow(2).sum()

                def fp_map(pert):
                    (g,) = torch.autograd.grad(inner(pert), pert, create_graph=True)
                    return pert - p.inner_lr * g

                # the outer loss perturbs a few images of the batch, so the model keeps its clean accuracy
                chosen = torch.randperm(len(y), device=x.device, generator=gen)[: max(1, int(len(y) * p.perturbed_share))]
                patch = torch.zeros(len(y), 1, 1, 1, device=x.device)
                patch[chosen] = 1

                def outer(pert, x=x, y=y, patch=patch):
                    return F.cross_entropy(model(x + patch * pert), y)

                grads = implicit_hypergradient(outer, fp_map, d, params, p.fixed_point_iterations)
                optimizer.zero_grad(set_to_none=True)
                for w, g in zip(params, grads):
                    w.grad = g
                optimizer.step()
            trainer.progress.advance(1)
        trainer.progress.end_run()
        return model

    def universal_perturbation(self, trainer, model, holdout, shape, purpose: str) -> torch.Tensor:
        """One pass of SGD over the holdout for a perturbation that flips the model's own predictions,
        then the projection onto the L2 ball."""
        p = self.params
        d = torch.zeros(shape, device=trainer.device, requires_grad=True)
        optimizer = torch.optim.SGD([d], lr=p.perturbation_lr)
        for x, _ in trainer.batches(holdout, p.batch_size, purpose):
            with torch.no_grad():
                predicted = model(x).argmax(1)
            loss = -F.cross_entropy(model(x + d), predicted) + p.regularisation * d.pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            norm = d.norm()
            return (d * torch.clamp(p.radius / norm, max=1.0) if norm > 0 else d).detach()
