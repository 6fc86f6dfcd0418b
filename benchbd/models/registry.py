"""The model registry: name -> factory(num_classes, dropout, mean, std, input_size) -> SplitNet."""

from __future__ import annotations

from typing import Callable

from ..registry import Registry
from .base import SplitNet

MODELS: Registry[Callable[..., SplitNet]] = Registry("model")


def create_model(name: str, num_classes: int, *, dropout: float = 0.0, mean=None, std=None, input_size: int | None = None) -> SplitNet:
    """A fresh model; `input_size` defaults to the model's own (32, or 224 for resnet34)."""
    sized = {"input_size": input_size} if input_size else {}
    return MODELS.get(name)(num_classes, dropout=dropout, mean=mean, std=std, **sized)
