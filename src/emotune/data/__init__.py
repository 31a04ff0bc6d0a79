"""Named data sets, local files and hub data sets, resolved from a DataConfig."""

from . import emotion, mr, semeval  # noqa: F401  (registers the named data sets)
from .base import DATASETS, Split, Splits, load_data

__all__ = ["DATASETS", "Split", "Splits", "load_data"]
