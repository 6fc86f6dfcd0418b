"""Activation Clustering (Chen et al., AAAI-SafeAI 2019): within a label, poisoned images and clean
ones fall into different clusters of the last hidden layer's activations.

For every given label: the backdoored model's last hidden activations (the classifier's input) of
all the label's training images at once, centred, reduced to 10 dimensions (PCA, as ART; the paper
uses ICA), split by 2-means (k-means++, 10 seeded restarts). A cluster holding less than 35% of
its label (the share rounded to two decimals first, as ART) is poison (relative size). Where no
cluster is that small, as at 10% all-to-one, where about half the target label is poison, the
paper's exclusionary reclassification decides: a model trained without the cluster classifies
it; a cluster mostly classified as another label (own-label count l over the most frequent other
label's count p below 1) is poison; of a label's two clusters at most the one with the lower l/p
is removed (on a tie, as when neither cluster is classified as its label at all, the one whose
predictions spread wider: poison from many sources). This needs two extra trainings (without the
first, then without the second cluster of every undecided label). Then train from scratch on
what is kept with the normal recipe.

Not BackdoorBench's version: it clusters per mini-batch and maps decisions back through a reshuffled
loader (docs/defenses.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..config import as_dict, check
from ..seeding import generator
from .base import DEFENSES
from .common import DataCleansing, features, retrain_from_scratch


@dataclass
class AcParams:
    dims: int = 10  # PCA components per label
    size_threshold: float = 0.35  # a cluster below this share of its label is poison
    analysis: Literal["exclusionary", "relative_size", "smaller"] = "exclusionary"
    reclassification_threshold: float = 1.0  # T: a removed cluster with l / p below T is poison
    restarts: int = 10  # k-means++ restarts; the lowest inertia wins

    def __post_init__(self):
        check(self.dims >= 1, f"dims={self.dims} must be >= 1")
        check(0 < self.size_threshold < 0.5, f"size_threshold={self.size_threshold} must be in (0, 0.5)")
        check(
            self.analysis in ("exclusionary", "relative_size", "smaller"),
            f"analysis='{self.analysis}' is not one of exclusionary, relative_size, smaller",
        )
        check(self.reclassification_threshold > 0, f"reclassification_threshold={self.reclassification_threshold} must be > 0")
        check(self.restarts >= 1, f"restarts={self.restarts} must be >= 1")


def reduce(features: torch.Tensor, dims: int) -> torch.Tensor:
    """Centred features projected on their top `dims` principal axes."""
    centred = features.double() - features.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:dims].T


def poison_by_size(smaller: int, total: int, threshold: float) -> bool:
    """ART's relative-size test: the cluster's share of its label, rounded to two decimals, below
    the threshold (52 of 150, 34.67%, rounds to 0.35 and is not poison)."""
    return round(smaller / max(total, 1), 2) < round(threshold, 2)


def two_means(points: torch.Tensor, restarts: int, gen: torch.Generator, iterations: int = 300) -> torch.Tensor:
    """Lloyd's 2-means with k-means++ seeding; the assignment (0/1) of the lowest-inertia restart."""
    best, best_inertia = torch.zeros(len(points), dtype=torch.long), float("inf")
    if len(points) < 2:
        return best
    for _ in range(restarts):
        first = points[torch.randint(len(points), (1,), generator=gen)]
        far = (points - first).pow(2).sum(1)
        second = points[torch.multinomial(far / far.sum(), 1, generator=gen)] if far.sum() > 0 else first
        centres = torch.cat([first, second])
        for _ in range(iterations):
            assign = torch.cdist(points, centres).argmin(1)
            moved = torch.stack([points[assign == k].mean(0) if (assign == k).any() else centres[k] for k in range(2)])
            if torch.allclose(moved, centres):
                break
            centres = moved
        inertia = float(torch.cdist(points, centres).min(1).values.pow(2).sum())
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best


def reclassification(predicted: torch.Tensor, label: int, num_classes: int) -> tuple[float, float]:
    """(l / p, p / n): the cluster's count predicted as its own label over the most frequent other
    label's count; and that other label's share of the cluster, which breaks ties (a cluster
    drawn from many source labels, as all-to-one poison, spreads over many)."""
    counts = torch.bincount(predicted, minlength=num_classes).double()
    own = float(counts[label])
    counts[label] = -1
    top = max(float(counts.max()), 1.0)
    return own / top, top / max(len(predicted), 1)


@DEFENSES.register("ac", aliases=("activation_clustering",))
class ActivationClustering(DataCleansing):
    """AC: 2-means on each label's last hidden activations; remove the poison cluster; retrain (modern)."""

    Params = AcParams
    source = "Chen et al., AAAI-SafeAI 2019"
    version = 2  # 2: the size share rounded to two decimals before the test, as ART (1: unrounded)

    def detect(self, ctx, data, model):
        p = self.params
        model = ctx.trainer.prepare(model).eval()
        activations = features(ctx.trainer, data.images, model.penultimate)
        gen = generator(ctx.seed, "ac:kmeans")
        removed = torch.zeros(len(data), dtype=torch.bool)
        undecided: list[tuple[int, list[torch.Tensor]]] = []  # (label, its two clusters as indices into data)
        for label in data.labels.unique().tolist():
            members = torch.nonzero(data.labels == label).flatten()
            assign = two_means(reduce(activations[members], p.dims), p.restarts, gen)
            clusters = sorted((members[assign == k] for k in range(2)), key=len)  # smaller first
            if p.analysis == "smaller" or poison_by_size(len(clusters[0]), len(members), p.size_threshold):
                removed[clusters[0]] = True
            else:
                undecided.append((label, clusters))
        ctx.metrics["ac_decided_by_size"] = int(data.labels.unique().numel()) - len(undecided)
        if p.analysis == "exclusionary" and undecided:
            self.reclassify(ctx, data, removed, undecided)
        return removed, None  # a cluster decision: no per-sample score

    def reclassify(self, ctx, data, removed: torch.Tensor, undecided: list) -> None:
        """Exclusionary reclassification of the undecided labels: marks the poison clusters in `removed`."""
        ratios = {label: [(0.0, 0.0), (0.0, 0.0)] for label, _ in undecided}
        for which in range(2):
            excluded = removed.clone()
            for _, clusters in undecided:
                excluded[clusters[which]] = True
            judge = retrain_from_scratch(ctx, data, ~excluded, f"exclusion_{which}", as_dict(self.params))
            for label, clusters in undecided:
                predicted = ctx.trainer.predict(judge, data.images[clusters[which]])
                ratios[label][which] = reclassification(predicted, label, ctx.num_classes)
        flagged = []
        for label, clusters in undecided:
            which = min(range(2), key=lambda k: ratios[label][k])
            if ratios[label][which][0] < self.params.reclassification_threshold:
                removed[clusters[which]] = True
                flagged.append(label)
        ctx.metrics["ac_reclassified_labels"] = flagged
