"""Zero-shot by transfer: a run trained on another data set, its labels mapped onto the target's.

``source`` is a finished emotune run (e.g. an Emotion run) and ``label_map`` maps source labels to target
labels (joy/love/surprise -> positive, sadness/anger/fear -> negative). The source's (calibrated) class probabilities are
computed as trained; source labels left out of the map are dropped and the rest renormalized; each target
label's probability is the sum over its source labels, and the logits are their logs.

Every target label needs at least one source label, or a fixed probability (``fixed``, e.g.
``{neutral: 0.7}``): a target that no source class covers (SemEval's neutral from Emotion's six
emotions) then wins whenever no mapped group's share of the probability reaches that value (with two
groups, a value above 0.5). Anything else is a configuration error, so a target label can never
silently get probability zero.

The head holds the map: weights 0/1 (target x source), bias the fixed probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .base import register_kind

# Named label maps for ``label_map: NAME``.
LABEL_MAPS = {
    "emotion-polarity": {"joy": "positive", "love": "positive", "surprise": "positive",
                         "sadness": "negative", "anger": "negative", "fear": "negative"},
}


@dataclass
class TransferOptions:
    source: str = field(default="", metadata={
        "help": "Folder of a finished emotune run trained on another data set (the source model)."})
    label_map: dict[str, str] | str | None = field(default=None, metadata={
        "help": "Source label -> target label (a source label left out is dropped: its probability is not "
                f"counted), or a named map ({', '.join(LABEL_MAPS)}); None: the identity, when the source "
                "and target labels are the same."})
    fixed: dict[str, float] = field(default_factory=dict, metadata={
        "help": "Target label -> a fixed probability, for targets no source label maps to (e.g. {neutral: 0.7}: "
                "neutral wins when no mapped label group holds 70% of the probability)."})
    source_sha256: str | None = field(default=None, metadata={
        "help": "Filled in when the run is made: a hash of the source run's weights; a source retrained since "
                "is refused."})

    def __post_init__(self):
        if isinstance(self.label_map, str) and self.label_map not in LABEL_MAPS:
            raise ValueError(f"unknown label map {self.label_map!r}; named maps: {', '.join(LABEL_MAPS)}")
        for label, p in self.fixed.items():
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
                raise ValueError(f"fixed probability of {label!r} must be a number between 0 and 1, got {p!r}")


def map_matrix(source: list[str], target: list[str], opts: TransferOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [target, source] of 0/1, bias [target] of fixed probabilities), every name checked."""
    mapping = LABEL_MAPS[opts.label_map] if isinstance(opts.label_map, str) else opts.label_map
    if mapping is None:
        if sorted(source) != sorted(target):
            raise ConfigError(f"the source labels ({', '.join(source)}) differ from the target's "
                              f"({', '.join(target)}): give method.label_map (source label -> target label)")
        mapping = {s: s for s in source}
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError("label_map must map source labels to target labels")
    bad_source = [s for s in mapping if s not in source]
    bad_target = sorted({str(t) for t in mapping.values() if t not in target})
    if bad_source:
        raise ConfigError(f"label_map names source label(s) {', '.join(map(repr, bad_source))} that the source "
                          f"run does not have (its labels: {', '.join(source)})")
    if bad_target:
        raise ConfigError(f"label_map maps to {', '.join(map(repr, bad_target))}, not labels of the target data "
                          f"(its labels: {', '.join(target)})")
    bad_fixed = [t for t in opts.fixed if t not in target]
    if bad_fixed:
        raise ConfigError(f"fixed names {', '.join(map(repr, bad_fixed))}, not labels of the target data "
                          f"(its labels: {', '.join(target)})")
    both = sorted(set(opts.fixed) & set(mapping.values()))
    if both:
        raise ConfigError(f"target label(s) {', '.join(both)} have source labels and a fixed probability: "
                          "give one or the other")
    uncovered = [t for t in target if t not in mapping.values() and t not in opts.fixed]
    if uncovered:
        raise ConfigError(f"no source label maps to target label(s) {', '.join(uncovered)}: map one to each "
                          "(method.label_map) or give them a fixed probability (method.fixed, e.g. "
                          f"{{{uncovered[0]}: 0.7}})")
    weight = torch.zeros(len(target), len(source))
    for s, t in mapping.items():
        weight[target.index(t), source.index(s)] = 1.0
    bias = torch.tensor([float(opts.fixed.get(t, 0.0)) for t in target])
    return weight, bias


class TransferClassifier(nn.Module):
    """source model -> class probabilities (with the source run's calibration) -> kept mass renormalized ->
    summed per target label -> log."""

    def __init__(self, source: nn.Module, weight: torch.Tensor, bias: torch.Tensor, calibrate=None):
        super().__init__()
        self.encoder = source
        self.calibrate = calibrate  # the source run's calibration (logits -> calibrated logits), if it fitted one
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        with torch.autocast(logits.device.type, enabled=False):
            w = self.head.weight.float()
            logits = self.calibrate(logits.float()) if self.calibrate is not None else logits.float()
            probs = logits.softmax(-1) * (w.sum(0) > 0)  # drop the source labels left out of the map
            probs = probs / probs.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
            return nn.functional.linear(probs, w, self.head.bias.float()).clamp(min=1e-30).log()


@register_kind("transfer", description="a run trained on another data set, its labels mapped onto the target's "
                                       "(method.source, method.label_map)", options=TransferOptions)
def build_transfer(cfg, opts: TransferOptions, labels: list[str], fit: bool = True):
    from ..methods import merge_adapter
    from ..runs import Run, check_weights

    if not opts.source:
        raise ConfigError("zero-shot transfer needs method.source: the folder of a trained emotune run")
    path = Path(opts.source).expanduser()
    run = Run.open_finished(path, "source")
    if run.config.method.get("name") == "zero-shot":
        raise ConfigError(f"{path}: the source must be a trained run, not a zero-shot one")
    check_weights(path, opts.source_sha256, "source")
    weight, bias = map_matrix(run.labels, labels, opts)
    source, tokenizer = run.load_model()
    source = merge_adapter(source)  # inference only: a LoRA adapter folds into its base
    state = run.task_state
    calibrate = (lambda logits: run.task.calibrate(logits, state)) if state else None
    return TransferClassifier(source, weight, bias, calibrate), tokenizer
