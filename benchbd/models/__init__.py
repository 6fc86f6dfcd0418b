"""Splittable classifiers: WRN-16-1, ResNet-34, PreAct-ResNet-18."""

from . import resnet, wrn  # noqa: F401  (registration)
from .base import SplitNet
from .registry import MODELS, create_model

__all__ = ["MODELS", "SplitNet", "create_model"]
