"""The ``ensemble`` method: finished runs on the same data, their outputs averaged, per task type.

``method: {name: ensemble, members: [runs/a, runs/b, ...], weights: null}`` (``emotune ensemble RUN...``)
builds a model that runs every member and averages what users get from each (with the weights):

- classification: the class probabilities; the ensemble's logits are the log of their mean;
- multilabel: each label's sigmoid probability; the logits are the logit of their mean. The thresholds
  (task_state.json) are the members' per-label thresholds averaged with the same weights. Why not 0.5: each
  member fitted its thresholds on this very validation split, and rare labels end far below 0.5, so 0.5 would
  throw that tuning away; averaged probabilities of members on the same data sit on their members' scale, so
  their mean cut-off carries over. Why not refit: an ensemble fits nothing; its model and its state are a
  function of its members alone;
- regression: the predicted values, on the targets' original scale (each member's head undoes its own
  standardisation), the logits being those values; targets.json is the first member's (equal for all:
  the members trained on the same examples);
- multi-task: each task's columns by its own type's rule above (thresholds kept per task).

A member with a calibration (``train.calibration``, in its task_state.json) enters with its calibrated logits:
the ensemble averages the probabilities each member answers alone, and fits no calibration of its own.

Nothing trains; the run folder keeps the member paths in config.yaml (the members' own folders hold the
weights) and evaluates, predicts, serves and reports like any run; its metrics are its task's own.

The members must read the same tokens (one tokenizer: the same ``model.name``, and for classic models the
same vocabulary), predict the same task type (multi-task: the same tasks, in order, each of the same type),
share the label set (regression: the target names) in the same order, and have trained and validated on the
same examples (checked when the ensemble is made: ``data.seed`` keeps the carved validation split of runs that
differ in ``train.seed``). The ensemble's validation split is then the members' own, so its validation figures
compare with theirs and no member has seen a validation example.
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
from ..tasks import flat_labels
from ..tasks.multilabel import thresholds

# How each task type's outputs average; the task's own ``outputs`` of the ensemble's logits give the mean back.
RULES = {"classification": "softmax", "multilabel": "sigmoid", "regression": "mean"}
EPS = 1e-12  # keeps the logit of a mean probability finite (a member may saturate at exactly 0 or 1)


@dataclass
class EnsembleConfig:
    """Options of the ``ensemble`` method."""

    members: list[str] = field(default_factory=list, metadata={
        "help": "Folders of two or more finished runs on the same data and labels (absolute paths are kept, "
                "so the ensemble loads from any folder)."})
    weights: list[float] | None = field(default=None, metadata={
        "help": "One non-negative weight per member for the average (normalized to sum 1); "
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


class EnsembleModel(nn.Module):
    """Every member's outputs averaged with fixed weights, column block by column block (``plan``: the columns
    of each task and its rule from ``RULES``); returns logits whose task outputs are those averages."""

    def __init__(self, members: list[nn.Module], weights: list[float],
                 plan: list[tuple[slice, str]] | None = None, calibrations: list[tuple] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.calibrations = calibrations or [(None, None)] * len(members)
        """Per member: (its task, its task state): its own calibration applies to its logits first."""
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]), persistent=False)
        self.plan = plan or [(slice(None), "softmax")]
        self.run_files: dict[str, dict] = {}
        """JSON files the ensemble's run folder keeps (task_state.json, targets.json), set by the build."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outs = [m(input_ids=input_ids, attention_mask=attention_mask).float() for m in self.members]
        outs = [task.calibrate(o, state) if state else o for o, (task, state) in zip(outs, self.calibrations)]
        weights = self.weights.float()
        blocks = []
        for columns, rule in self.plan:
            parts = [o[:, columns] for o in outs]
            if rule == "softmax":
                probs = sum(w * p.softmax(-1) for w, p in zip(weights, parts))
                blocks.append(probs.clamp(min=1e-30).log())
            elif rule == "sigmoid":  # in float64: the logit of a mean near 0 or 1 stays accurate
                probs = sum(w.double() * p.double().sigmoid() for w, p in zip(weights, parts)).clamp(EPS, 1 - EPS)
                blocks.append((probs.log() - (-probs).log1p()).float())
            else:
                blocks.append(sum(w * p for w, p in zip(weights, parts)))
        return torch.cat(blocks, -1)


EnsembleClassifier = EnsembleModel  # the name before ensembles handled every task type


def _rule(task, where: str) -> str:
    if task.name not in RULES:
        raise ConfigError(f"{where}: an ensemble cannot average {task.name!r} outputs (it averages "
                          f"{', '.join(RULES)} and multi-task runs of them)")
    return RULES[task.name]


def averaging_plan(run) -> list[tuple[slice, str]]:
    """(columns, rule) per task of ``run``: one block for a single task, one per task of a multi-task run."""
    parts = getattr(run.task, "parts", None)
    if parts is None:
        return [(slice(None), _rule(run.task, str(run.path)))]
    return [(p.columns, _rule(p.task, f"{run.path}: task {p.name!r}")) for p in parts]


def check_same_task(run, first) -> None:
    """A one-line ConfigError unless ``run`` predicts what ``first`` predicts: the same task type, tasks (in
    order, each of the same type), labels and target names."""
    a, b = run.task, first.task
    if a.name != b.name:
        raise ConfigError(f"{run.path} is a {a.name} run but {first.path} is a {b.name} run: ensemble members "
                          "must predict the same task type")
    parts_a, parts_b = getattr(a, "parts", None), getattr(b, "parts", None)
    if parts_a is None:
        if run.labels != first.labels:
            what = "targets" if a.name == "regression" else "labels"
            raise ConfigError(f"{run.path}: {what} {run.labels} differ from {first.path}'s {first.labels}: "
                              f"ensemble members must share their {what}, in order")
        return
    names_a, names_b = [p.name for p in parts_a], [p.name for p in parts_b]
    if names_a != names_b:
        raise ConfigError(f"{run.path}: tasks {names_a} differ from {first.path}'s {names_b}: multi-task "
                          "ensemble members must have the same tasks, in order")
    for pa, pb in zip(parts_a, parts_b):
        if pa.task.name != pb.task.name:
            raise ConfigError(f"{run.path}: task {pa.name!r} is {pa.task.name} but {pb.task.name} in "
                              f"{first.path}: ensemble members must predict the same task types")
        if pa.labels != pb.labels:
            what = "targets" if pa.task.name == "regression" else "labels"
            raise ConfigError(f"{run.path}: task {pa.name!r} {what} {pa.labels} differ from {first.path}'s "
                              f"{pb.labels}: ensemble members must share them, in order")


def mean_thresholds(runs: list, share: list[float]) -> dict | None:
    """The task state of the ensemble: each multi-label task's thresholds, the members' weighted mean per label
    (a member without saved thresholds counts 0.5, what it predicts with); None when no task is multi-label."""
    first = runs[0].task

    def mean(states: list[dict | None], labels: list[str]) -> dict:
        cut = sum(s * thresholds(state, labels) for s, state in zip(share, states))
        return {"thresholds": {name: float(t) for name, t in zip(labels, cut)}}

    parts = getattr(first, "parts", None)
    if parts is None:
        return mean([r.task_state for r in runs], runs[0].labels) if first.name == "multilabel" else None
    state = {p.name: mean([(r.task_state or {}).get(p.name) for r in runs], p.labels)
             for p in parts if p.task.name == "multilabel"}
    return state or None


def _splits(cfg, ensemble_cfg, seen: dict) -> tuple[str, ...]:
    """Fingerprints of the training and validation texts a config reads (every task's, for a multi-task
    config), from the ensemble's data folders (the same files may sit elsewhere on another machine); ``seen``
    keeps them per data setting, so members that differ only in train.seed load the data once."""
    if cfg.is_multitask:
        dirs = {t.name: t.data.data_dir for t in ensemble_cfg.multitask.tasks}
        return tuple(h for t in cfg.multitask.tasks
                     for h in _fingerprint(t.data, dirs.get(t.name, t.data.data_dir), cfg.train.seed, seen))
    return _fingerprint(cfg.data, ensemble_cfg.data.data_dir, cfg.train.seed, seen)


def _fingerprint(data, data_dir: str | None, train_seed: int, seen: dict) -> tuple[str, ...]:
    from ..data import load_data

    data_cfg = dataclasses.replace(data, data_dir=data_dir)
    key = (repr(data_cfg), train_seed if data_cfg.seed is None else data_cfg.seed)
    if key not in seen:
        loaded = load_data(data_cfg, train_seed)
        seen[key] = tuple(hashlib.sha256("\n".join(sorted(loaded[s].texts)).encode()).hexdigest()
                          for s in ("train", "validation"))
    return seen[key]


def _tokens(run) -> tuple:
    """What decides the token ids a run reads (every task's max_length for a multi-task run)."""
    from ..runs import VOCAB

    vocab = run.path / VOCAB
    lengths = tuple(t.data.max_length for t in run.config.multitask.tasks)
    return (run.config.model.name, run.config.data.max_length, lengths,
            vocab.read_bytes() if vocab.is_file() else None)


def build_ensemble(cfg, labels: list[str] | dict[str, list[str]], fit: bool = True):
    from ..methods import METHODS, merge_adapter
    from ..runs import TARGETS, TASK_STATE, Run, check_weights

    options = METHODS.get("ensemble").make_config({k: v for k, v in cfg.method.items() if k != "name"})
    runs = []
    for member in options.members:
        path = Path(member).expanduser()
        run = Run.open_finished(path, "member")
        if run.config.method.get("name") == "ensemble":
            raise ConfigError(f"{path}: a member cannot itself be an ensemble; list its members instead")
        runs.append(run)
    first = runs[0]
    for run in runs[1:]:  # task type, tasks and targets first: their errors say more than a label list
        check_same_task(run, first)
    plan = averaging_plan(first)
    # The ensemble's labels (its data's, or its labels.json: {task: labels} for a multi-task run).
    expected = (flat_labels(labels) if isinstance(labels, dict) else list(labels)) or first.labels
    for run in runs:
        if run.labels != expected:
            raise ConfigError(f"{run.path}: labels {run.labels} differ from the ensemble's {expected}")
        if _tokens(run) != _tokens(first):
            raise ConfigError(f"{run.path} reads different tokens from {first.path} (model.name, data.max_length "
                              "or a classic model's vocabulary differ): ensemble members share one tokenizer")
    if fit:  # once, when the run is made: the ensemble's validation split is every member's
        seen: dict = {}
        own = _splits(cfg, cfg, seen)
        for run in runs:
            if _splits(run.config, cfg, seen) != own:
                raise ConfigError(f"{run.path} was trained or validated on other examples than the ensemble's "
                                  "data settings give (data.* or the split seed differ): train the members on the "
                                  "same data with the same data.seed, e.g. --seed N --set data.seed=42")
    for run, recorded in zip(runs, options.member_sha256 or [None] * len(runs)):
        check_weights(run.path, recorded, "member")
    members, tokenizer = [], None
    for run in runs:
        model, tokenizer = run.load_model()
        members.append(merge_adapter(model))  # inference only: adapters fold into their base
    weights = options.weights or [1.0] * len(members)
    model = EnsembleModel(members, weights, plan, [(r.task, r.task_state) for r in runs]).eval()
    model.requires_grad_(False)  # nothing of it is kept in the ensemble's own model.safetensors
    state = mean_thresholds(runs, [w / sum(weights) for w in weights])
    model.run_files = {name: content for name, content in ((TASK_STATE, state), (TARGETS, first.target_statistics))
                       if content is not None}
    return model, tokenizer


def record_members(options: dict) -> dict:
    from ..runs import weights_sha256

    members = options.get("members") or []
    return {**options, "member_sha256": [weights_sha256(m) for m in ([members] if isinstance(members, str)
                                                                      else members)]}


@register_method("ensemble", description="No training: finished runs on the same data (e.g. several seeds), "
                                         "their outputs averaged: probabilities, values, per task "
                                         "(emotune ensemble RUN...).",
                 config=EnsembleConfig, lr=0.0, trains=False, mergeable=False, build=build_ensemble,
                 resolve=record_members, family=lambda options: f"ensemble of {len(options.get('members', []))}")
def apply_ensemble(model: nn.Module, cfg) -> nn.Module:
    raise ConfigError("an ensemble is built from finished runs (emotune ensemble), not trained")
