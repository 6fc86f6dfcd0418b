"""The defense interface: a defense declares what it needs and returns a model to evaluate.

The runner hands a defense exactly what it declared (SPEC section 1) and nothing else: the
poisoned training split, the clean holdout, and/or the backdoored model to repair (normal
training on the whole poisoned training set, built once per cell and cached).
"""

from __future__ import annotations

import abc
import copy
import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..data.splits import PoisonedSplit, Split, limit_holdout
from ..errors import BenchbdError
from ..models.base import SplitNet
from ..registry import Registry
from ..train import Trainer, TrainRecipe

DEFENSES: Registry[type["Defense"]] = Registry("defense")


class Need(enum.Enum):
    POISONED_TRAIN = "poisoned training split"
    HOLDOUT = "clean holdout"
    BACKDOORED_MODEL = "backdoored model to repair"


@dataclass
class DefenseParams:
    """Defenses without parameters use this."""


@dataclass
class DefenseContext:
    """What a defense may use. Fields for needs it did not declare stay None."""

    trainer: Trainer
    new_model: Callable[..., SplitNet]  # new_model(dropout=0.0): a fresh model of the cell's architecture
    num_classes: int
    seed: int
    poisoned_train: PoisonedSplit | None = None
    holdout: Split | None = None
    backdoored_model: SplitNet | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # extra numbers for the result row
    # Intermediate models a defense exposes for figures (T&R: "reconstruction", its stage-1 network)
    artifacts: dict[str, nn.Module] = field(default_factory=dict)
    # Set by the runner: (purpose, identity, model, train) -> True if `model` was loaded from the cache
    cache_model: Callable[[str, dict, nn.Module, Callable[[nn.Module], Any]], bool] | None = None
    cached: dict[str, bool] = field(default_factory=dict)  # cache hits, for the result row
    normal_recipe: TrainRecipe | None = None  # the cell's normal training (defenses that retrain from scratch)
    # The attack's target class, set by the runner for scoring only (does NC flag the true target?):
    # no decision of a defense may read it.
    attack_target: int | None = None

    # Models inside the defense the runner evaluates on the test set after it (the defense never
    # sees test data): metrics `<name>_asr`, `<name>_ca` (T&R's trapped model as "stage1")
    probes: dict[str, nn.Module] = field(default_factory=dict)

    def probe(self, name: str, model: nn.Module) -> None:
        """Have `model` as it is now evaluated for the row (a copy: the defense may go on changing it)."""
        self.probes[name] = copy.deepcopy(model)

    def cached_model(self, purpose: str, identity: dict, model: nn.Module, train: Callable[[nn.Module], Any]) -> nn.Module:
        """`train(model)`, or its result from the cache when another cell already trained the same.

        `identity` must hold every setting of this training besides the cell's poisoned split, seed,
        budget and architecture (which the runner adds): cells differing only elsewhere (T&R's
        stage 2, the defender's holdout size) then share it."""
        if self.cache_model is None:
            train(model)
        else:
            self.cached[purpose] = self.cache_model(purpose, identity, model, train)
        return model

    def clean_share(self, share: float) -> Split:
        """A seeded `share` of the holdout, for methods whose own clean-data size is smaller than
        benchbd's (RNP 1%, FST 2% of the training set); its size goes into the row."""
        holdout = self.need(Need.HOLDOUT)
        clean = limit_holdout(holdout, max(1, int(share * len(holdout))), self.seed)
        self.metrics["n_clean"] = len(clean)
        return clean

    def need(self, what: Need):
        value = {Need.POISONED_TRAIN: self.poisoned_train, Need.HOLDOUT: self.holdout, Need.BACKDOORED_MODEL: self.backdoored_model}[what]
        if value is None:
            raise BenchbdError(f"the defense used the {what.value} without declaring it in `needs`")
        return value


class Defense(abc.ABC):
    Params = DefenseParams
    needs: frozenset[Need] = frozenset()
    version = 1  # bump when the method changes
    # Whether an attack that controls the victim's training (lba_k) also controls this defense's
    # training on the poisoned split. True where that training is the victim's own objective with
    # the defense's terms added (T&R's stage 1: Table 7's adaptive attacker targets exactly it);
    # False where the defense trains with a loss or optimiser of its own (ABL, DP-SGD).
    attacker_controls_training = False
    group = "paper"  # 'baseline' (ft, fp, dp) is in 'all' too; 'modern': since the paper, `--defenses modern`, not in 'all'
    # True where the defense returns the backdoored model as it is (none): its retuning check also
    # retunes a model trained on clean data, the control that must not acquire the backdoor
    undefended = False
    source = "T&R paper (SPEC 7)"  # where the method and its settings come from

    def __init__(self, params: Any, name: str = ""):
        self.params = params
        self.name = name or type(self).__name__.lower()

    @classmethod
    def scenario(cls) -> str:
        """When in the pipeline the defense acts, read off its needs."""
        if Need.BACKDOORED_MODEL in cls.needs:
            return "after training: repairs the trained model" + (" with the holdout" if Need.HOLDOUT in cls.needs else "")
        if Need.POISONED_TRAIN in cls.needs:
            return "during training on the poisoned set" + (" and the holdout" if Need.HOLDOUT in cls.needs else "")
        return "on the holdout only"

    def check_model(self, model: SplitNet) -> None:
        """Refuse, before any training, parameters that do not fit the cell's architecture."""

    @abc.abstractmethod
    def run(self, ctx: DefenseContext) -> nn.Module:
        """The defended model (float inputs in [0, 1], logits out)."""


def defense_groups() -> dict[str, list[str]]:
    """The group names `--defenses` takes: 'all' (the paper's defenses, ft and fp) and 'modern'."""
    modern = [n for n in DEFENSES.names() if DEFENSES.get(n).group == "modern"]
    return {"all": [n for n in DEFENSES.names() if n not in modern], "modern": modern}


class Frozen(nn.Module):
    """A module whose parameters do not train and whose BatchNorm stays in eval mode."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, x):
        return self.module(x)
