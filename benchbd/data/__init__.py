"""Datasets, seeded splits and device-side augmentation."""

from .datasets import DATASETS, Dataset, DatasetParams, LoadedData, parse_dataset_spec
from .splits import PoisonedSplit, Split, Splits, limit_holdout, split_holdout

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetParams",
    "LoadedData",
    "parse_dataset_spec",
    "PoisonedSplit",
    "Split",
    "Splits",
    "limit_holdout",
    "split_holdout",
]
