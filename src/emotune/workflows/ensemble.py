"""The ``ensemble`` method: finished runs on the same data, their class probabilities averaged.

``method: {name: ensemble, members: [runs/a, runs/b, ...], weights: null}`` (``emotune ensemble RUN...``)
builds a model that runs every member and returns the log of the (weighted) mean of their probabilities.
Nothing trains; the run folder keeps the member paths in config.yaml (the members' own folders hold the
weights) and evaluates, predicts, serves and reports like any run.

The members must read the same tokens (one tokenizer: the same ``model.name``, and for classic models the
same vocabulary), share the label set in the same order, and have trained and validated on the same examples
(checked when the ensemble is made: ``data.seed`` keeps the carved validation split of runs that differ in
``train.seed``). The ensemble's validation split is then the members' own, so its validation figures compare
with theirs and no member has seen a validation example.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..methods.base import register_method


@dataclass
class EnsembleConfig:
    """Options of the ``ensemble`` method."""

    members: list[str] = field(default_factory=list, metadata={
        "help": "Folders of two or more finished runs on the same data and labels (absolute paths are kept, "
                "so the ensemble loads from any folder)."})
    weights: list[float] | None = field(default=None, metadata={
        "help": "One non-negative weight per member for the probability average (normalized to sum 1); "
                "None: a plain mean."})
    member_sha256: list[str | None] | None = field(default=None, metadata={
        "help": "Filled in when the ensemble is made: a hash of each member's weights; a member retrained "
                "since is refused."})

    def __post_init__(self):
        if isinstance(self.members, str):
            self.members = [self.members]
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least two member runs, got {len(self.members)}")
        if self.weights is not None:
            if len(self.weights) != len(self.members):
                raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
            if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in self.weights) \
                    or sum(self.weights) <= 0:
                raise ValueError(f"weights must be non-negative numbers, not all zero, got {self.weights}")


class EnsembleClassifier(nn.Module):
    """Every member's softmax, averaged with fixed weights; the logits are its log."""

    def __init__(self, members: list[nn.Module], weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        probs = sum(w * m(input_ids=input_ids, attention_mask=attention_mask).float().softmax(-1)
                    for w, m in zip(self.weights.float(), self.members))
        return probs.clamp(min=1e-30).log()


def _splits(cfg, data_dir: str | None, seen: dict) -> tuple[str, ...]:
    """Fingerprints of the training and validation texts a config reads, from ``data_dir`` (the same files
    may sit elsewhere on another machine); ``seen`` keeps them per data setting, so members that differ only
    in train.seed load the data once."""
    from ..data import load_data

    data_cfg = dataclasses.replace(cfg.data, data_dir=data_dir)
    key = (repr(data_cfg), cfg.train.seed if data_cfg.seed is None else data_cfg.seed)
    if key not in seen:
        data = load_data(data_cfg, cfg.train.seed)
        seen[key] = tuple(hashlib.sha256("\n".join(sorted(data[s].texts)).encode()).hexdigest()
                          for s in ("train", "validation"))
    return seen[key]


def _tokens(run) -> tuple:
    """What decides the token ids a run reads."""
    from ..runs import VOCAB

    vocab = run.path / VOCAB
    return run.config.model.name, run.config.data.max_length, vocab.read_bytes() if vocab.is_file() else None


def build_ensemble(cfg, labels: list[str], fit: bool = True):
    from ..methods import METHODS, merge_adapter
    from ..runs import Run, check_weights

    options = METHODS.get("ensemble").make_config({k: v for k, v in cfg.method.items() if k != "name"})
    runs = []
    for member in options.members:
        path = Path(member).expanduser()
        run = Run.open_finished(path, "member")
        if run.config.method.get("name") == "ensemble":
            raise ConfigError(f"{path}: a member cannot itself be an ensemble; list its members instead")
        runs.append(run)
    first = runs[0]
    expected = list(labels) or first.labels  # the ensemble's labels (its data's, or its labels.json)
    for run in runs:
        if run.labels != expected:
            raise ConfigError(f"{run.path}: labels {run.labels} differ from the ensemble's {expected}")
        if _tokens(run) != _tokens(first):
            raise ConfigError(f"{run.path} reads different tokens from {first.path} (model.name, data.max_length "
                              "or a classic model's vocabulary differ): ensemble members share one tokenizer")
    if fit:  # once, when the run is made: the ensemble's validation split is every member's
        seen: dict = {}
        own = _splits(cfg, cfg.data.data_dir, seen)
        for run in runs:
            if _splits(run.config, cfg.data.data_dir, seen) != own:
                raise ConfigError(f"{run.path} was trained or validated on other examples than the ensemble's "
                                  "data settings give (data.* or the split seed differ): train the members on the "
                                  "same data with the same data.seed, e.g. --seed N --set data.seed=42")
    for run, recorded in zip(runs, options.member_sha256 or [None] * len(runs)):
        check_weights(run.path, recorded, "member")
    members, tokenizer = [], None
    for run in runs:
        model, tokenizer = run.load_model()
        members.append(merge_adapter(model))  # inference only: adapters fold into their base
    model = EnsembleClassifier(members, options.weights or [1.0] * len(members)).eval()
    model.requires_grad_(False)  # nothing of it is kept in the ensemble's own model.safetensors
    return model, tokenizer


def record_members(options: dict) -> dict:
    from ..runs import weights_sha256

    members = options.get("members") or []
    return {**options, "member_sha256": [weights_sha256(m) for m in ([members] if isinstance(members, str)
                                                                      else members)]}


@register_method("ensemble", description="No training: finished runs on the same data (e.g. several seeds), "
                                         "their class probabilities averaged (emotune ensemble RUN...).",
                 config=EnsembleConfig, lr=0.0, trains=False, mergeable=False, build=build_ensemble,
                 resolve=record_members, family=lambda options: f"ensemble of {len(options.get('members', []))}")
def apply_ensemble(model: nn.Module, cfg) -> nn.Module:
    raise ConfigError("an ensemble is built from finished runs (emotune ensemble), not trained")
