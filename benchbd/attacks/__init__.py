"""Attacks: `names()`, `create(name, dataset=..., **params)`, and the registry."""

from __future__ import annotations

from . import (  # noqa: F401  (registration)
    adaptive,
    badnet_grid,
    badnet_white,
    blend,
    bpp,
    clean,
    input_aware,
    l0_invisible,
    l2_invisible,
    lba,
    lcba,
    sig,
    smooth,
    trojan_sq,
    trojan_wm,
    wanet,
)
from .base import ATTACKS, Attack, AttackParams, AttackTools, attack_groups


def names() -> list[str]:
    return ATTACKS.names()


def create(name: str, dataset: str = "cifar10", num_classes: int | None = None, image_size: int | None = None, **params) -> Attack:
    """An attack with the layered defaults for `dataset`, overridden by `params`."""
    from ..config import Layers
    from ..data import DATASETS

    canonical = ATTACKS.resolve(name)
    cls = ATTACKS.get(canonical)
    dataset = DATASETS.resolve(dataset) if dataset in DATASETS else dataset
    source = DATASETS.get(dataset) if dataset in DATASETS else None
    num_classes = num_classes or getattr(source, "num_classes", None) or 10
    image_size = image_size or getattr(source, "image_size", None) or 32
    layers = Layers()
    attack = cls(layers.params("attack", canonical, dataset, cls.Params, **params), num_classes, image_size, canonical)
    attack.resolve_parts(lambda other: layers.params("attack", other, dataset, ATTACKS.get(other).Params))
    return attack


__all__ = ["ATTACKS", "Attack", "AttackParams", "AttackTools", "attack_groups", "create", "names"]
