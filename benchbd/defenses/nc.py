"""Neural Cleanse (Wang et al., IEEE S&P 2019): reverse-engineer, for every label, the smallest
trigger that sends clean images there; a label whose trigger is far smaller than the others' is the
backdoor's target; unlearn that trigger.

Reverse engineering, as the official code (visualizer.py): a mask m in [0, 1]^{HxW} shared by the
channels and a pattern p in [0, 1]^{3xHxW}, both tanh-parametrised and randomly initialised;
x' = (1 - m) x + m p; minimise CE(f(x'), t) + lambda |m|_1 with Adam (lr 0.1, betas 0.5 / 0.9)
over the clean holdout. lambda starts at 0 and is set to 1e-3 once the attack succeeds (>= 99% of
an epoch's images) for 5 epochs; then it doubles after 5 successful epochs and is divided by
2^1.5 after 5 failing ones. The smallest-L1 successful mask is kept; the search stops early once
lambda has gone up and down and the best L1 has not improved by 1% for 25 epochs.

Detection (mad_outlier_detection.py): anomaly index |min L1 - median| / (1.4826 MAD); labels below
the median by more than 2 are flagged. Mitigation (BackdoorBench's, the repo this spec follows):
fine-tune on the holdout with 20% of each batch stamped with a flagged label's reversed trigger and
its true label kept. A model with no flagged label is returned unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import check
from ..seeding import generator
from ..train import TrainRecipe
from .base import DEFENSES, Defense, Need

TANH_EPS = 1e-7  # Keras' epsilon, as the official tanh parametrisation


def nc_recipe() -> TrainRecipe:
    """BackdoorBench's nc/cifar10.yaml unlearning: SGD lr 0.01, momentum 0.9, wd 5e-4, cosine, 100 epochs, batch 256."""
    return TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="cosine", epochs=100, batch_size=256)


@dataclass
class NcParams:
    init_cost: float = 1e-3
    lr: float = 0.1
    epochs: int = 80  # per label, over the holdout (BackdoorBench's nc_epoch)
    batch_size: int = 256
    success_threshold: float = 0.99  # the official ATTACK_SUCC_THRESHOLD
    patience: int = 5
    cost_multiplier: float = 2.0  # up by this, down by this ** 1.5
    early_stop_threshold: float = 0.99  # "no improvement": best L1 above 99% of the best so far
    early_stop_patience: int = 25
    anomaly_threshold: float = 2.0
    unlearning_share: float = 0.2  # share of each unlearning batch stamped with a reversed trigger
    recipe: TrainRecipe = field(default_factory=nc_recipe)

    def __post_init__(self):
        check(self.init_cost > 0 and self.lr > 0, "init_cost and lr must be > 0")
        check(self.epochs >= 1 and self.batch_size >= 2, "epochs must be >= 1 and batch_size >= 2")
        check(0 < self.success_threshold <= 1, f"success_threshold={self.success_threshold} must be in (0, 1]")
        check(self.cost_multiplier > 1, f"cost_multiplier={self.cost_multiplier} must be > 1")
        check(0 < self.unlearning_share < 1, f"unlearning_share={self.unlearning_share} must be in (0, 1)")
        check(self.anomaly_threshold > 0, f"anomaly_threshold={self.anomaly_threshold} must be > 0")


def to_unit(raw: torch.Tensor) -> torch.Tensor:
    return torch.tanh(raw) / (2 - TANH_EPS) + 0.5


def from_unit(value: torch.Tensor) -> torch.Tensor:
    return torch.atanh((value - 0.5) * (2 - TANH_EPS))


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    return (1 - mask) * x + mask * pattern


def anomaly(l1: torch.Tensor, threshold: float) -> tuple[float, list[int]]:
    """MAD outlier test on the labels' mask norms: (anomaly index of the smallest, flagged labels)."""
    median = l1.quantile(0.5)  # numpy's median, as the official test: the mean of the two middle values
    mad = 1.4826 * (l1 - median).abs().quantile(0.5)
    deviation = (l1 - median).abs() / mad.clamp_min(1e-12)
    index = float(deviation[l1.argmin()])
    flagged = [int(t) for t in torch.nonzero((l1 < median) & (deviation > threshold)).flatten()]
    return index, flagged


class CostSchedule:
    """The official lambda schedule and early stop, fed one epoch at a time."""

    def __init__(self, p: NcParams):
        self.p = p
        self.cost = 0.0
        self.set_counter = self.up_counter = self.down_counter = self.stop_counter = 0
        self.went_up = self.went_down = False
        self.best_l1 = self.stop_reference = float("inf")

    def update(self, success: bool, best_l1: float) -> bool:
        """Adjust lambda after an epoch; True when the search should stop."""
        p = self.p
        stop = False
        if best_l1 < float("inf"):
            self.stop_counter = self.stop_counter + 1 if best_l1 >= p.early_stop_threshold * self.stop_reference else 0
            stop = self.went_up and self.went_down and self.stop_counter >= p.early_stop_patience
        self.stop_reference = min(best_l1, self.stop_reference)
        if self.cost == 0 and success:
            self.set_counter += 1
            if self.set_counter >= p.patience:
                self.cost, self.up_counter, self.down_counter, self.went_up, self.went_down = p.init_cost, 0, 0, False, False
        else:
            self.set_counter = 0
        self.up_counter, self.down_counter = (self.up_counter + 1, 0) if success else (0, self.down_counter + 1)
        if self.up_counter >= p.patience:
            self.up_counter, self.went_up = 0, True
            self.cost *= p.cost_multiplier
        elif self.down_counter >= p.patience:
            self.down_counter, self.went_down = 0, True
            self.cost /= p.cost_multiplier**1.5
        return stop


@DEFENSES.register("nc", aliases=("neural_cleanse",))
class NeuralCleanse(Defense):
    """NC: reverse-engineer a minimal trigger per label, flag MAD outliers, unlearn their triggers (modern)."""

    Params = NcParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    group = "modern"
    source = "Wang et al., IEEE S&P 2019"
    # 3: the last partial batch is kept, as the official loaders; 2: the MAD test's medians as numpy's
    # (mean of the two middle values), not torch's lower one
    version = 3

    def run(self, ctx):
        model = ctx.trainer.prepare(copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL)))
        holdout = ctx.need(Need.HOLDOUT)
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        triggers = [self.reverse_engineer(ctx, frozen, holdout, label) for label in range(ctx.num_classes)]
        l1 = torch.tensor([float(mask.sum()) for mask, _ in triggers])
        index, flagged = anomaly(l1, self.params.anomaly_threshold)
        ctx.metrics.update(nc_anomaly_index=round(index, 4), nc_flagged=flagged, nc_mask_l1=[round(v, 2) for v in l1.tolist()])
        if ctx.attack_target is not None:
            ctx.metrics["nc_found_target"] = ctx.attack_target in flagged
        if not flagged:
            return model
        masks = torch.stack([triggers[t][0] for t in flagged]).to(ctx.trainer.device)
        patterns = torch.stack([triggers[t][1] for t in flagged]).to(ctx.trainer.device)
        share = self.params.unlearning_share

        def unlearning_loss(net, x, y, gen):
            chosen = torch.rand(len(x), generator=gen, device=x.device) < share
            which = torch.randint(len(flagged), (len(x),), generator=gen, device=x.device)
            stamped = stamp(x, masks[which], patterns[which])
            return F.cross_entropy(net(torch.where(chosen[:, None, None, None], stamped, x)), y)

        return ctx.trainer.fit(model, holdout, self.params.recipe, loss=unlearning_loss, desc="NC unlearning", drop_last=False)

    def reverse_engineer(self, ctx, model, holdout, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The smallest-L1 (mask [1, H, W], pattern [3, H, W]) that sends the holdout to `label`."""
        p, trainer = self.params, ctx.trainer
        dev = trainer.device
        size = next(trainer.inputs(holdout.images[:1]))[1].shape[-2:]
        gen = generator(ctx.seed, f"nc:init:{label}")
        mask_raw = from_unit(torch.rand(1, *size, generator=gen)).to(dev).requires_grad_()
        pattern_raw = from_unit(torch.rand(3, *size, generator=gen)).to(dev).requires_grad_()
        optimizer = torch.optim.Adam([mask_raw, pattern_raw], lr=p.lr, betas=(0.5, 0.9))
        schedule = CostSchedule(p)
        best = None
        epochs = trainer.run_epochs(f"NC label {label}", p.epochs, holdout)
        trainer.progress.start_run(f"NC label {label}", epochs)
        for epoch in range(epochs):
            hits = torch.zeros((), device=dev)
            seen = 0
            for x, _ in trainer.batches(holdout, p.batch_size, f"nc:{label}:{epoch}", drop_last=False):
                mask, pattern = to_unit(mask_raw), to_unit(pattern_raw)
                with trainer.autocast():
                    logits = model(stamp(x, mask, pattern))
                target = torch.full((len(x),), label, device=dev)
                loss = F.cross_entropy(logits.float(), target) + schedule.cost * mask.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                hits += (logits.argmax(1) == label).sum()
                seen += len(x)
            with torch.no_grad():
                mask, pattern = to_unit(mask_raw), to_unit(pattern_raw)
                l1 = float(mask.sum())
            success = float(hits) / max(seen, 1) >= p.success_threshold
            if success and l1 < schedule.best_l1:
                schedule.best_l1, best = l1, (mask.detach().cpu(), pattern.detach().cpu())
            trainer.progress.advance(1, f"epoch {epoch + 1}/{epochs} L1 {l1:.1f} lambda {schedule.cost:.2g}")
            if schedule.update(success, schedule.best_l1):
                break
        trainer.progress.end_run()
        if best is None:  # never reached the threshold: the last mask stands for this label (BackdoorBench)
            best = (mask.detach().cpu(), pattern.detach().cpu())
        return best
