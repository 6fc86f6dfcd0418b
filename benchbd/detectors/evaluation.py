"""The one evaluation every detector gets (../shared/methods/detectors.md section 6).

The clean holdout is split, stratified by class and seeded, into H_fit (what a detector fits on)
and H_cal (where the threshold is set, at 5% false positives). Negatives are all clean test
images, positives the triggered test images whose true label is not the target. No test image and
no poisoned image enters any decision: `threshold_at_fpr` sees H_cal's scores only.
"""

from __future__ import annotations

import copy

import torch

from ..data.splits import Split
from ..defenses.common import auroc
from ..seeding import derive, generator
from ..train import Trainer
from .base import Detector, DetectorContext

TARGET_FPR = 0.05


def split_calibration(holdout: Split, seed: int) -> tuple[Split, Split]:
    """(H_fit, H_cal): each class's holdout images shuffled (seeded) and halved, the odd one to H_fit."""
    gen = generator(seed, "detector:calibration")
    fit, cal = [], []
    for c in holdout.labels.unique().tolist():
        mine = (holdout.labels == c).nonzero().squeeze(1)
        mine = mine[torch.randperm(len(mine), generator=gen)]
        half = (len(mine) + 1) // 2
        fit.append(mine[:half])
        cal.append(mine[half:])
    return holdout.subset(torch.cat(fit).sort().values), holdout.subset(torch.cat(cal).sort().values)


def threshold_at_fpr(calibration: torch.Tensor, fpr: float = TARGET_FPR) -> float:
    """The smallest score tau among the calibration scores with at most `fpr` of them strictly
    above it (flag if score > tau). Ties at tau stay below it, so the achieved rate may be lower."""
    values = calibration.double().sort().values
    allowed = int(fpr * len(values))  # how many may lie strictly above
    for tau in values.unique():
        if int((values > tau).sum()) <= allowed:
            return float(tau)
    return float(values[-1])


def scores_of(trainer: Trainer, model, detector: Detector, images: torch.Tensor, seed: int, purpose: str) -> torch.Tensor:
    """The detector's score for every image (uint8 [N, H, W, 3]); a seeded stream per purpose."""
    gen = generator(seed, f"detector:{detector.name}:{purpose}", trainer.device)
    out = []
    trainer.progress.start_run(f"{detector.name}: scoring {purpose}", -(-len(images) // detector.batch_size), detector.batch_size)
    for _, x in trainer.inputs(images, detector.batch_size):
        with torch.no_grad(), trainer.autocast():
            out.append(detector.score(model, x, gen).float().cpu())
        trainer.progress.advance(1)
    trainer.progress.end_run()
    return torch.cat(out) if out else torch.empty(0)


def _rate(mask: torch.Tensor) -> float:
    return round(100 * mask.double().mean().item(), 4) if len(mask) else float("nan")


def detect(
    trainer: Trainer, model, detector: Detector, holdout: Split, test: Split, backdoor: Split, target: int, num_classes: int, seed: int
) -> dict:
    """Fit on H_fit, calibrate on H_cal, score the test negatives and positives: the row's numbers.

    `backdoor`: the triggered non-target test images with their true labels. Rates in %."""
    model = trainer.prepare(model).eval()
    detector = copy.deepcopy(detector)  # fit() keeps state (overlays, statistics): one cell's, not shared by the next
    fit, cal = split_calibration(holdout, seed)
    torch.manual_seed(derive(seed, f"detector:{detector.name}"))
    detector.fit(DetectorContext(trainer, model, fit, num_classes, seed))
    calibration = scores_of(trainer, model, detector, cal.images, seed, "calibration")
    tau = threshold_at_fpr(calibration)
    negatives = scores_of(trainer, model, detector, test.images, seed, "test-clean")
    positives = scores_of(trainer, model, detector, backdoor.images, seed, "test-triggered")
    clean_pred, triggered_pred = trainer.predict(model, test.images), trainer.predict(model, backdoor.images)
    flag_neg, flag_pos = negatives > tau, positives > tau
    tp, fp = int(flag_pos.sum()), int(flag_neg.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / len(positives) if len(positives) else 0.0
    out = {
        "auroc": round(auroc(torch.cat([negatives, positives]), torch.arange(len(negatives) + len(positives)) >= len(negatives)), 6),
        "tpr_at_5fpr": _rate(flag_pos),  # the TPR at the threshold set on the holdout
        "fpr": _rate(flag_neg),  # measured on the clean test images
        "fpr_target_class": _rate(flag_neg[test.labels == target]),
        "holdout_fpr": _rate(calibration > tau),  # achieved on H_cal (at most 5; ties may keep it lower)
        "f1": round(100 * (2 * precision * recall / (precision + recall) if precision + recall else 0.0), 4),
        # the model behind the detector: a rejected input never reaches the target, and a rejected
        # clean input counts as wrong
        "filtered_asr": _rate(~flag_pos & (triggered_pred == target)),
        "filtered_ca": _rate(~flag_neg & (clean_pred == test.labels)),
        "threshold": tau,
        "n_fit": len(fit),
        "n_calibration": len(cal),
        "n_negatives": len(negatives),
        "n_positives": len(positives),
        "cost_forward_passes": detector.forward_passes(),
        **{f"{detector.name}_{k}": v for k, v in detector.fitted.items()},
    }
    # Scores tied at tau (discrete SPC, TeCo's std) can keep the holdout rate far below 5%: the
    # randomised test that also flags a tied input with probability r (r set so that the holdout
    # rate is 5% in expectation) has these expected rates, computed, not drawn
    tied_cal = int((calibration == tau).sum())
    r = min(1.0, max(0.0, (TARGET_FPR * len(calibration) - int((calibration > tau).sum())) / tied_cal)) if tied_cal else 0.0
    out.update(
        tie_flag_probability=round(r, 6),
        tpr_at_5fpr_tiebreak=_rate(flag_pos.double() + r * (positives == tau).double()),
        fpr_tiebreak=_rate(flag_neg.double() + r * (negatives == tau).double()),
    )
    paper = detector.paper_threshold()
    if paper is not None:  # the paper's fixed T (flag if score >= T), beside, never instead
        out.update(
            paper_threshold=paper, tpr_at_paper_threshold=_rate(positives >= paper), fpr_at_paper_threshold=_rate(negatives >= paper)
        )
    return out
