"""Defenses: `names()`, the registry and the interface."""

from __future__ import annotations

from . import abl, activation_clustering, anp, bti_dbf, clp, dp, fp, fst, ft, ftsam, ibau, nad, nc, none, rnp, sau, spectral, tnr  # noqa: F401  (registration)
from .base import DEFENSES, Defense, DefenseContext, DefenseParams, Frozen, Need, defense_groups


def names() -> list[str]:
    return DEFENSES.names()


__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseParams", "Frozen", "Need", "defense_groups", "names"]
