"""Defenses: `names()`, the registry and the interface."""

from __future__ import annotations

from . import abl, anp, clp, dp, fp, fst, ft, ftsam, ibau, nad, none, tnr  # noqa: F401  (registration)
from .base import DEFENSES, Defense, DefenseContext, DefenseParams, Frozen, Need, defense_groups


def names() -> list[str]:
    return DEFENSES.names()


__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseParams", "Frozen", "Need", "defense_groups", "names"]
