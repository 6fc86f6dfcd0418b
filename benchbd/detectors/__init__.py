"""Input-level detectors: `names()`, the registry and the interface."""

from __future__ import annotations

from . import ibd_psc, scale_up, strip, teco  # noqa: F401  (registration)
from .base import DETECTORS, Detector, DetectorContext, DetectorParams, detector_groups


def names() -> list[str]:
    return DETECTORS.names()


__all__ = ["DETECTORS", "Detector", "DetectorContext", "DetectorParams", "detector_groups", "names"]
