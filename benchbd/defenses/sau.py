"""SAU, Shared Adversarial Unlearning (Wei, Zhang, Zha & Wu, NeurIPS 2023): adversarial examples
that the backdoored model and the model being repaired misclassify *into the same label* act like
the backdoor's trigger; unlearn them.

Per batch of clean holdout images (no augmentation; both models in eval mode, so BatchNorm is
frozen, as the official code):
1. Shared PGD on a perturbation delta in pixel units, started at +0.2, 5 signed steps of 0.2,
   projected to the L_inf ball of 0.2, no clamp to the image range: minimise
   beta1 L_adv + beta2 L_share, with L_adv the negated CE of the samples each model does not yet
   misclassify (relative to its clean prediction) and L_share the Jensen-Shannon divergence of the
   two models' outputs on the samples not yet shared; stops when every sample is shared.
2. One Adam step (lr 1e-4) on lambda1 CE(x) + lambda2 CE(x + delta) + lambda3 L_SAR, where L_SAR
   pushes down the repaired model's probability of the label the backdoored model gives x + delta,
   on the samples where that label is neither the truth nor the backdoored model's clean
   prediction (the official code's two numerically different forms of -log(1 - p), averaged).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check
from .base import DEFENSES, Defense, Need


@dataclass
class SauParams:
    rounds: int = 100  # epochs over the holdout (n_rounds)
    batch_size: int = 256
    lr: float = 1e-4  # Adam; the official scheduler is never stepped, so it stays constant
    norm_bound: float = 0.2  # L_inf bound of delta, in pixel units ([0, 1] images)
    step_size: float = 0.2
    steps: int = 5
    beta_adv: float = 0.01  # beta1
    beta_share: float = 1.0  # beta2
    lambda_clean: float = 1.0  # lambda1
    lambda_adv: float = 0.0  # lambda2: plain adversarial training, off by default
    lambda_shared: float = 1.0  # lambda3

    def __post_init__(self):
        check(self.rounds >= 1 and self.steps >= 1, "rounds and steps must be >= 1")
        check(self.batch_size >= 2, f"batch_size={self.batch_size} must be >= 2")
        check(self.norm_bound > 0 and self.step_size > 0 and self.lr > 0, "norm_bound, step_size and lr must be > 0")


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Per-sample Jensen-Shannon divergence of two softmax outputs (probabilities clamped at 1e-8)."""
    pa, pb = F.softmax(logits_a, 1).clamp_min(1e-8), F.softmax(logits_b, 1).clamp_min(1e-8)
    mix = 0.5 * (pa + pb)
    return 0.5 * (pa * (pa.log() - mix.log())).sum(1) + 0.5 * (pb * (pb.log() - mix.log())).sum(1)


def shared_adversarial_loss(logits: torch.Tensor, adv_label: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -log(1 - p(adv_label)) on the selected samples, computed as the
    official code: the average of -log(sum of the other labels' p) and -log(1 - p(adv_label))."""
    if not selected.any():
        return logits.sum() * 0
    probs = F.softmax(logits, 1)
    chosen = F.one_hot(adv_label, probs.shape[1]).bool()
    pos = probs[chosen][selected]
    neg = (probs * ~chosen).sum(1)[selected]
    total = -torch.log(1e-6 + neg.clamp(max=0.999)).sum() - torch.log(1 + 1e-6 - pos.clamp(min=0.001)).sum()
    return total / 2 / len(logits)


@DEFENSES.register("sau", aliases=("shared_adversarial_unlearning",))
class SharedAdversarialUnlearning(Defense):
    """SAU: find adversarial examples both models share, unlearn them on the clean holdout (modern)."""

    Params = SauParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    group = "modern"
    source = "Wei et al., NeurIPS 2023 (official code in BackdoorBench)"
    version = 3  # 3: the last partial batch is kept, as the official loader; 2: Adam with amsgrad (train_settings_generate.py)

    def run(self, ctx):
        p, trainer = self.params, ctx.trainer
        reference = trainer.prepare(copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL))).eval().requires_grad_(False)
        model = trainer.prepare(copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL))).eval()
        holdout = ctx.need(Need.HOLDOUT)
        optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, amsgrad=True)  # as the official optimiser
        rounds = trainer.run_epochs("SAU", p.rounds, holdout)
        shared = torch.zeros((), device=trainer.device)
        seen = 0
        trainer.progress.start_run("SAU", rounds)
        for epoch in range(rounds):
            for x, y in trainer.batches(holdout, p.batch_size, f"sau:{epoch}", drop_last=False):
                delta = self.shared_pgd(model, reference, x, y)
                loss, n_shared = self.unlearning_loss(model, reference, x, y, delta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if epoch == rounds - 1:
                    shared += n_shared
                    seen += len(x)
            trainer.progress.advance(1, f"round {epoch + 1}/{rounds}")
        trainer.progress.end_run()
        ctx.metrics["sau_shared_share_last_round"] = round(float(shared) / max(seen, 1), 4)
        return model

    def shared_pgd(self, model, reference, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A perturbation both models misclassify into the same label (as far as 5 steps get); a
        sample counts as fooled when its label moves from the model's clean prediction, and its
        adversarial CE is taken against the true label, as the official code."""
        p = self.params
        with torch.no_grad():
            clean_label, clean_label_ref = model(x).argmax(1), reference(x).argmax(1)
        delta = torch.full_like(x, p.norm_bound).requires_grad_()
        for _ in range(p.steps):
            logits, logits_ref = model(x + delta), reference(x + delta)
            label, label_ref = logits.argmax(1), logits_ref.argmax(1)
            fooled, fooled_ref = label != clean_label, label_ref != clean_label_ref
            shared = fooled & fooled_ref & (label == label_ref)
            adv = F.cross_entropy(logits, y, reduction="none")[~fooled].sum()
            adv = adv + F.cross_entropy(logits_ref, y, reduction="none")[~fooled_ref].sum()
            adv = -adv / 2 / len(x)
            share = js_divergence(logits, logits_ref)[~shared].sum() / len(x)
            (grad,) = torch.autograd.grad(p.beta_adv * adv + p.beta_share * share, delta)
            with torch.no_grad():
                delta -= p.step_size * grad.sign()
                delta.clamp_(-p.norm_bound, p.norm_bound)
            if bool(shared.all()):
                break
        return delta.detach()

    def unlearning_loss(self, model, reference, x, y, delta) -> tuple[torch.Tensor, torch.Tensor]:
        """The outer loss, and how many samples of the batch were shared adversarial examples."""
        p = self.params
        logits, adv_logits = model(torch.cat([x, x + delta])).split(len(x))
        with torch.no_grad():
            clean_ref, adv_ref = reference(x).argmax(1), reference(x + delta).argmax(1)
        potential_poison = (adv_ref != y) & (adv_ref != clean_ref)
        shared = (adv_logits.argmax(1) != y) & potential_poison & (adv_logits.argmax(1) == adv_ref)
        loss = p.lambda_clean * F.cross_entropy(logits, y)
        if p.lambda_adv:
            loss = loss + p.lambda_adv * F.cross_entropy(adv_logits, y)
        loss = loss + p.lambda_shared * shared_adversarial_loss(adv_logits, adv_ref, potential_poison)
        return loss, shared.sum()
