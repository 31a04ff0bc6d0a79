"""Zero-shot classifiers: models built from a run config without training on the target data.

Three kinds (``method: {name: zero-shot, how: ...}``): ``embed`` (sentence embeddings against label
descriptions), ``llm`` (label likelihood under a small instruction-tuned causal LM) and ``transfer`` (a run
trained on another data set with a label map). ``emotune.train(cfg, out)`` writes an ordinary run folder
that evaluate, predict, serve and report use like any other.
"""

from . import embed, llm, transfer  # noqa: F401  (registers the kinds)
from .base import KINDS, build_zero_shot, kind_options, merged_options, register_kind

ZeroShotConfig = merged_options()

__all__ = ["KINDS", "ZeroShotConfig", "build_zero_shot", "kind_options", "register_kind"]
