"""The attack interface: poison a training split, and stamp the test-time trigger on a batch.

Triggers act on the stored uint8 images [N, H, W, 3] before any augmentation; arithmetic is in
float, then rounded and clipped to [0, 255] (the official code truncates).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import as_dict, check
from ..data.splits import PoisonedSplit, Split
from ..errors import BenchbdError
from ..registry import Registry
from ..seeding import generator

ATTACKS: Registry[type["Attack"]] = Registry("attack")


@dataclass
class AttackParams:
    poison_ratio: float = 0.1  # of the whole training set, holdout included
    target: int = 0

    def __post_init__(self):
        check(0 < self.poison_ratio < 1, f"poison_ratio={self.poison_ratio} must be in (0, 1)")
        check(self.target >= 0, f"target={self.target} must be a class index >= 0")


@dataclass
class AttackTools:
    """What an attack that trains models of its own (lcba's surrogate, input_aware's generator)
    gets from the runner."""

    trainer: object  # benchbd.train.Trainer of the cell
    clean_train: Split  # the training split before poisoning
    train_cached: Callable[[str, Split], nn.Module]  # (purpose, data) -> a model normally trained on data, cached
    new_model: Callable[[], nn.Module] | None = None  # a fresh model of the cell's architecture
    recipe: object = None  # benchbd.train.TrainRecipe: the cell's normal training recipe
    # (kind, identity, build) -> tensors: an artifact of this attack on this cell's data, seed, model,
    # recipe and budget, built once by build() and cached (identity adds what else determines it)
    cached: Callable[[str, dict, Callable[[], dict]], dict] | None = None


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def asset_path(name: str):
    return resources.files("benchbd.attacks").joinpath("assets", name)


def load_asset(name: str) -> torch.Tensor:
    """A trigger file as float32: PNGs as RGB [H, W, 3] in 0-255, .npy as stored."""
    with asset_path(name).open("rb") as f:
        if name.endswith(".npy"):
            return torch.from_numpy(np.load(f).astype(np.float32))
        with Image.open(f) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).astype(np.float32))


def resize_hwc(pattern: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float [H, W, C] pattern to [size, size, C]."""
    if pattern.shape[0] == size:
        return pattern
    return F.interpolate(pattern.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)


class TrainingControl:
    """What an attack that controls the victim's training does in each run on its poisoned split.

    The trainer calls, per run: `attach(model)`; per step: `shape_batch` on the batch as drawn,
    the model's forward pass, `loss`; after the run: `detach`. Every method has a neutral default,
    so an attack overrides only what it does: lba_k adds a latent loss, WaNet and BppAttack poison
    each batch as it is drawn. Training runs the attacker does not control (a defense that trains
    on the poisoned data itself) see `static_split(...)` instead: the poison as a fixed dataset.

    `after_augmentation`: `shape_batch` gets the batch after the training augmentation (crop and
    flip), where the official code stamps after its loader's transforms (Input-aware); by default
    before it, where the official code stamps the drawn batch and augments afterwards (WaNet,
    BppAttack: their loaders have no augmentation, `PostTensorTransform` follows the poisoning)."""

    after_augmentation = False

    def attach(self, model: nn.Module) -> None:
        """Before the run (e.g. register forward hooks on `model`)."""

    def detach(self) -> None:
        """After the run, also when it fails."""

    def shape_batch(
        self, images: torch.Tensor, labels: torch.Tensor, poisoned: torch.Tensor, eligible: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch the step trains on, before augmentation (or after: `after_augmentation`): uint8 images [B, H, W, 3], labels and
        the mask of backdoor samples (what `loss` sees). `eligible` marks the samples the attacker
        may change (not the defender's holdout); `gen` is the run's seeded generator."""
        return images, labels, poisoned

    def loss(self, y: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor | None:
        """An extra loss for the step whose forward pass just ran (its labels and backdoor mask), or None."""
        return None

    def static_split(self, split: PoisonedSplit, seed: int) -> PoisonedSplit:
        """`split` as a training run the attacker does not control sees it (no control attached)."""
        return dataclasses.replace(split, training_control=None)


class Attack(abc.ABC):
    """Subclasses set `Params` and implement `apply`; `poison` is shared by all."""

    Params = AttackParams
    clean_label = False
    in_all = True  # expanded by `--attacks all`
    version = 1  # bump when the trigger changes: cached poisoned splits are rebuilt
    assets: tuple[str, ...] = ()
    image_sizes: tuple[int, ...] | None = (32,)  # image sizes this trigger is defined for (None: any)
    trains_surrogate = False  # poisoning trains a model through AttackTools (lcba)
    sample_specific = False  # each image gets its own trigger (input_aware): the gallery shows several
    group = "paper"  # 'modern': published after the T&R paper, selected by `--attacks modern`
    source = "T&R paper (SPEC 3)"  # where the method and its settings come from

    @classmethod
    def label_kind(cls) -> str:
        """How the poisoned samples are labelled: 'clean' (kept) or 'dirty' (the target)."""
        return "clean" if cls.clean_label else "dirty"

    def __init__(self, params: AttackParams, num_classes: int, image_size: int, name: str = ""):
        self.params = params
        self.num_classes = num_classes
        self.image_size = image_size
        self.name = name or type(self).__name__.lower()
        if params.target >= num_classes:
            raise BenchbdError(f"attack.{self.name}.target={params.target} is out of range: valid 0..{num_classes - 1}")
        if self.image_sizes is not None and image_size not in self.image_sizes:
            raise BenchbdError(
                f"attack {self.name} has no trigger for {image_size}x{image_size} images; "
                f"it is defined for sizes {', '.join(map(str, self.image_sizes))}"
            )

    @abc.abstractmethod
    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> the same batch with the test-time trigger, uint8 [N, H, W, 3]."""

    def poison_images(self, images: torch.Tensor, labels: torch.Tensor, tools: AttackTools | None, seed: int) -> torch.Tensor:
        """The training-time trigger; the test-time one unless an attack differs (lcba)."""
        return self.apply(images)

    # An attack that controls the victim's training (lba_k, WaNet, BppAttack) sets this to a
    # TrainingControl: the trainer runs it in each training run on the attack's poisoned split that the
    # attacker controls (the backdoored model; T&R's stage 1, whose threat model lets the attacker in).
    training_control: "TrainingControl | None" = None

    def prepare(self, tools: AttackTools) -> None:
        """Before the cell poisons or evaluates: build or load what the trigger itself needs
        (input_aware's trained generator). Called by the runner for every cell of the attack."""

    def resolve_parts(self, params_of: Callable[[str], AttackParams]) -> None:
        """Attacks built from other registered attacks (lba_k's trigger) resolve those attacks'
        parameters here: `params_of(name)` gives them through the same layers as any attack
        (registry.yaml, per-dataset values, user file, --set). Called by the runner and by
        `attacks.create` after construction."""

    def identity(self) -> dict:
        """Everything that determines the poisoned split, for cache keys."""
        digest = hashlib.sha256()
        for name in self.assets:
            digest.update(asset_path(name).read_bytes())
        return {"attack": self.name, "params": as_dict(self.params), "version": self.version, "assets": digest.hexdigest()[:16]}

    def poison(self, train: Split, full_train_size: int, seed: int, tools: AttackTools | None = None) -> PoisonedSplit:
        """Dirty label: int(ratio x full size) non-target images, triggered and relabelled.
        Clean label: up to that many target-class images, triggered, labels kept."""
        target = self.params.target
        n_poison = int(self.params.poison_ratio * full_train_size)
        pool = torch.nonzero(train.labels == target if self.clean_label else train.labels != target).flatten()
        if not self.clean_label and n_poison > len(pool):
            raise BenchbdError(
                f"attack.{self.name}.poison_ratio={self.params.poison_ratio} asks for {n_poison} poisoned images "
                f"but only {len(pool)} non-target training images exist"
            )
        order = torch.randperm(len(pool), generator=generator(seed, f"poison:{self.name}"))
        chosen = pool[order[: min(n_poison, len(pool))]].sort().values
        images, labels = train.images.clone(), train.labels.clone()
        images[chosen] = self.poison_images(train.images[chosen], train.labels[chosen], tools, seed)
        if not self.clean_label:
            labels[chosen] = target
        return PoisonedSplit(images, labels, poisoned=chosen)

    def backdoor_test(self, test: Split) -> Split:
        """The ASR set: test images whose true label is not the target, with the trigger applied."""
        keep = test.labels != self.params.target
        return Split(self.apply(test.images[keep]), test.labels[keep])

    def accuracy_sets(self, test: Split, device: torch.device | str = "cpu") -> dict[str, Split]:
        """Extra labelled test sets of this attack whose accuracy the row records as
        `<name>_accuracy` (Input-aware's cross-trigger images), made on `device`; none by default."""
        return {}


def attack_groups() -> dict[str, list[str]]:
    """The group names `--attacks` takes: 'all' (the paper's attacks) and 'modern' (those since)."""
    names = ATTACKS.names()
    return {"all": [n for n in names if ATTACKS.get(n).in_all], "modern": [n for n in names if ATTACKS.get(n).group == "modern"]}


class AdditiveAttack(Attack):
    """x' = x (1 - mask) + pattern, in float (mask absent: x + pattern). Patterns are [H, W, 3]."""

    @abc.abstractmethod
    def pattern(self) -> torch.Tensor:
        """The float [H, W, 3] pattern added to the image (resized to the image if needed)."""

    def mask(self) -> torch.Tensor | None:
        return None

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        mask = self.mask()
        if mask is not None:
            x = x * (1 - mask.to(x.device))
        return to_uint8(x + resize_hwc(self.pattern(), images.shape[1]).to(x.device))
