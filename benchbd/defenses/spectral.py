"""Spectral Signatures (Tran, Li & Madry, NeurIPS 2018): poison leaves a trace along the top
singular vector of a class's centred representations.

For every given label: take the backdoored model's representation of each training image of that
label (the official layer: the last residual block's output before pooling, flattened), centre it,
score each image by its squared projection on the top right singular vector, and remove the top
1.5 eps scores, eps the poison budget (the defender's upper bound on poisoned images, here a share
of the training set: the whole budget may sit in any one label). As Qi et al.'s cleanser, no label
loses more than half its images. Then train from scratch on the rest with the normal recipe.

Not BackdoorBench's version: it removes a fixed 15% of every class, scores uncentred features and
extracts them through the training augmentation (docs/defenses.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from .base import DEFENSES
from .common import DataCleansing, features


@dataclass
class SpectralParams:
    poison_budget: float = 0.1  # the defender's upper bound on the poisoned share of the training set (the protocol's 10%)
    removal_factor: float = 1.5  # remove this many times the budget per label (the paper's 1.5 eps)
    max_label_share: float = 0.5  # never remove more than this share of one label (Qi et al.)

    def __post_init__(self):
        check(0 < self.poison_budget < 1, f"poison_budget={self.poison_budget} must be in (0, 1)")
        check(self.removal_factor > 0, f"removal_factor={self.removal_factor} must be > 0")
        check(0 < self.max_label_share <= 1, f"max_label_share={self.max_label_share} must be in (0, 1]")


def spectral_scores(features: torch.Tensor) -> torch.Tensor:
    """(R_i - mean R) . v squared, v the top right singular vector of the centred matrix."""
    centred = features.double() - features.double().mean(0, keepdim=True)
    if len(centred) < 2:
        return torch.zeros(len(centred), dtype=torch.float64)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]).pow(2)


@DEFENSES.register("spectral", aliases=("ss", "spectral_signatures"))
class SpectralSignatures(DataCleansing):
    """SS: remove the top singular-vector outliers of each label's features, retrain from scratch (modern)."""

    Params = SpectralParams
    source = "Tran et al., NeurIPS 2018"

    def detect(self, ctx, data, model):
        p = self.params
        model = ctx.trainer.prepare(model).eval()
        representation = features(ctx.trainer, data.images, model.stem(model.num_blocks))  # the last residual block's output
        per_label = round(p.removal_factor * p.poison_budget * len(data))
        removed = torch.zeros(len(data), dtype=torch.bool)
        suspicion = torch.zeros(len(data), dtype=torch.float64)  # each sample's score within its label
        for label in data.labels.unique().tolist():
            members = torch.nonzero(data.labels == label).flatten()
            scores = spectral_scores(representation[members])
            suspicion[members] = scores
            count = min(per_label, int(p.max_label_share * len(members)))
            if count == 0:
                continue
            removed[members[scores.topk(count).indices]] = True
        return removed, suspicion
