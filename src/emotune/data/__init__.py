"""Named data sets, local files and hub data sets, resolved from a DataConfig."""

from . import emobank, emotion, goemotions, mr, semeval  # noqa: F401  (registers the named data sets)
from .base import DATASET_TASKS, DATASETS, Split, Splits, load_data

__all__ = ["DATASETS", "DATASET_TASKS", "Split", "Splits", "load_data"]
