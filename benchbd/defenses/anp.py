"""Adversarial Neuron Pruning (Wu and Wang, 2021), SPEC section 7: learn a mask on every
BatchNorm channel that keeps the holdout accurate under adversarial multiplicative noise on the
channels, then prune (zero the BN weight of) every channel whose mask ends below the threshold.
The threshold is fixed: no test data chooses it (the official code's sweep looks at test ASR)."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..config import check
from .base import DEFENSES, Defense, Need


@dataclass
class AnpParams:
    eps: float = 0.4  # noise range and the size of its one signed ascent step
    alpha: float = 0.2  # weight of the clean loss; 1 - alpha on the perturbed one
    mask_lr: float = 0.2
    momentum: float = 0.9
    iterations: int = 2000
    batch_size: int = 128
    threshold: float = 0.2  # prune channels whose mask ends below this

    def __post_init__(self):
        check(0 <= self.eps <= 1, f"eps={self.eps} must be in [0, 1]")
        check(0 <= self.alpha <= 1, f"alpha={self.alpha} must be in [0, 1]")
        check(0 <= self.threshold <= 1, f"threshold={self.threshold} must be in [0, 1]")
        check(self.iterations >= 1 and self.batch_size >= 2, "iterations must be >= 1 and batch_size >= 2")


def batchnorms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.affine}


@DEFENSES.register("anp")
class AdversarialNeuronPruning(Defense):
    """ANP: mask BatchNorm channels that adversarial noise exploits; prune masks below 0.2."""

    Params = AnpParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    version = 2  # 2: the noise step is not clamped (reaches 2 eps) and masks learn on augmented batches

    def run(self, ctx):
        model = ctx.trainer.prepare(copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL))).eval().requires_grad_(False)
        # As the official code: masks learn with BatchNorm on batch statistics (train mode), on a
        # copy whose running statistics are then thrown away; the pruned model keeps its own.
        masks = self.learn_masks(ctx, copy.deepcopy(model).train())
        pruned = 0
        with torch.no_grad():
            for n, m in batchnorms(model).items():
                off = masks[n] < self.params.threshold
                m.weight[off] = 0
                pruned += int(off.sum())
        ctx.metrics["pruned_channels"] = pruned
        return model

    def learn_masks(self, ctx, model: nn.Module) -> dict[str, torch.Tensor]:
        """One mask in [0, 1] per BN channel of `model`, learnt on the holdout (in train mode
        `model`'s BN running statistics move; its weights do not)."""
        p = self.params
        trainer = ctx.trainer
        bns = batchnorms(model)
        dev = trainer.device
        masks = {n: torch.ones_like(m.weight, requires_grad=True) for n, m in bns.items()}
        optimizer = torch.optim.SGD(masks.values(), lr=p.mask_lr, momentum=p.momentum)
        gen = torch.Generator(device=dev).manual_seed(ctx.seed)

        def forward(x, noise_w=None, noise_b=None):
            """The model with BN weight x (mask + noise) and bias x (1 + noise); running statistics as they are."""
            override = {}
            for n, m in bns.items():
                scale = masks[n] + (noise_w[n] if noise_w else 0)
                override[f"{n}.weight"] = m.weight * scale
                override[f"{n}.bias"] = m.bias * (1 + noise_b[n]) if noise_b else m.bias
            return functional_call(model, override, (x,))

        holdout = ctx.need(Need.HOLDOUT)
        iterations = trainer.run_iterations("ANP masks", p.iterations)
        batches = itertools.chain.from_iterable(
            trainer.batches(holdout, p.batch_size, f"anp:{epoch}", augment=True) for epoch in itertools.count()
        )
        trainer.progress.start_run("ANP masks", iterations)
        for x, y in itertools.islice(batches, iterations):
            noise_w = {n: torch.empty_like(m.weight).uniform_(-p.eps, p.eps, generator=gen).requires_grad_() for n, m in bns.items()}
            noise_b = {n: torch.empty_like(m.bias).uniform_(-p.eps, p.eps, generator=gen).requires_grad_() for n, m in bns.items()}
            if p.eps > 0:  # one signed step that makes the noise maximise the loss; not clamped, as the official code
                loss = F.cross_entropy(forward(x, noise_w, noise_b), y)
                # allow_unused: a BN whose output the network never reads (WRN's quirk) gets no gradient
                grads = torch.autograd.grad(loss, [*noise_w.values(), *noise_b.values()], allow_unused=True)
                for t, g in zip([*noise_w.values(), *noise_b.values()], grads):
                    if g is not None:
                        t.data = t.data + p.eps * g.sign()
            noise_w = {n: t.detach() for n, t in noise_w.items()}
            noise_b = {n: t.detach() for n, t in noise_b.items()}
            loss = p.alpha * F.cross_entropy(forward(x), y) + (1 - p.alpha) * F.cross_entropy(forward(x, noise_w, noise_b), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for m in masks.values():
                    m.clamp_(0, 1)
            trainer.progress.advance(1)
        trainer.progress.end_run()
        return {n: t.detach() for n, t in masks.items()}
