"""The detector interface: a detector scores each input given to the deployed model.

Detectors act at test time, on the backdoored model a cell's repair defenses start from. A score
is oriented so that larger means more suspicious; the threshold is set by the evaluation
(`evaluation.py`) on clean holdout images only. A detector never sees a test image or a poisoned
image while it is fitted or calibrated.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn

from ..data.splits import Split
from ..defenses.base import Defense, Need
from ..registry import Registry
from ..train import Trainer

DETECTORS: Registry[type["Detector"]] = Registry("detector")


@dataclass
class DetectorParams:
    """Detectors without parameters use this."""


@dataclass
class DetectorContext:
    """What a detector may fit on: the fitting half of the clean holdout (never the test set)."""

    trainer: Trainer
    model: nn.Module  # on the device, eval mode
    fit: Split  # H_fit: clean, labelled, from the training split
    num_classes: int
    seed: int


class Detector(abc.ABC):
    Params = DetectorParams
    version = 1  # bump when what the detector computes changes
    source = ""  # the paper and the official code
    batch_size = 256  # inputs scored at once (STRIP multiplies them by its overlays)

    def __init__(self, params, name: str = ""):
        self.params = params
        self.name = name or type(self).__name__.lower()
        self.fitted: dict = {}  # what fit() chose (IBD-PSC's layers), for the row

    def fit(self, ctx: DetectorContext) -> None:
        """Fit on `ctx.fit` (STRIP's overlays, SCALE-UP's class statistics, IBD-PSC's layers)."""

    @abc.abstractmethod
    def score(self, model: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One score per input of the float batch `x` ([B, 3, H, W] in [0, 1]); larger = more suspicious."""

    @abc.abstractmethod
    def forward_passes(self) -> int:
        """Extra forward passes per scored input, beside the ordinary prediction."""

    def paper_threshold(self) -> float | None:
        """The paper's fixed threshold on the score, where it has one: rows report it beside the
        calibrated threshold, never instead of it."""
        return None

    def identity(self) -> dict:
        from ..config import as_dict

        return {"detector": self.name, "version": self.version, "params": as_dict(self.params)}


@torch.no_grad()
def predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


class GuardedModel(Defense):
    """A detector cell's model: the backdoored model as deployed, the holdout for the detector."""

    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    group = "detector"
    undefended = False  # no retuning: a detector cell reports detection

    def run(self, ctx):
        return ctx.need(Need.BACKDOORED_MODEL)


def detector_groups() -> dict[str, list[str]]:
    """`--detectors all`: every registered detector."""
    return {"all": DETECTORS.names()}
