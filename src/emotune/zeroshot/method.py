"""The ``zero-shot`` entry of the method registry: its options are the zero-shot kinds' (``emotune methods``
lists them). Nothing is applied to a model: the method's ``build`` hook makes it (``emotune.workflows.built``
writes the run)."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..methods.base import register_method
from . import ZeroShotConfig, build_zero_shot


def record_source(options: dict) -> dict:
    """A transfer run records its source's weight hash (see TransferOptions.source_sha256)."""
    if options.get("how") != "transfer" or not options.get("source"):
        return options
    from ..runs import weights_sha256

    return {**options, "source_sha256": weights_sha256(options["source"])}


@register_method("zero-shot", description="No training: embeddings vs label descriptions, label likelihood "
                                          "under a small LM, or a run from another data set with a label map.",
                 config=ZeroShotConfig, lr=0.0, trains=False, mergeable=False, build=build_zero_shot,
                 resolve=record_source, family=lambda options: f"zero-shot {options.get('how', 'embed')}")
def apply_zero_shot(model: nn.Module, cfg) -> nn.Module:
    raise ConfigError("zero-shot models are built by emotune.zeroshot (emotune zeroshot), not trained")
