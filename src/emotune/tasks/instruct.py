"""Instruction tuning of a causal LM: the training loss is the answer tokens' negative log-likelihood (the
model gives the log-likelihoods of each sequence's last tokens, the answer's among them), and the validation
metric that picks checkpoints is that loss (EmoLLMs' choice).

Answers are then read without parsing: every allowed answer is scored given the prompt
(``InstructLM.candidate_scores``) and each instruction task is measured by its own task type's metrics:
- classification: the label words' log-likelihoods are the logits (an invalid label cannot come out);
- multi-label: each label's likelihood as the answer's first label, normalised over the labels, is its
  probability, thresholded per label at values chosen on validation;
- regression: the expectation over the grid of one-decimal numbers on the task's scale, weighted by their
  normalised likelihoods (steadier than the single most likely number, and never off the scale).

Free generation read by a parser (``parse``) is the alternative, for comparison: its parse failures are
counted, and its metrics cover the answers that could be read.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from .base import Task, register_task
from .classification import CLASSIFICATION
from .multilabel import MULTILABEL
from .multitask import SCORE
from .regression import REGRESSION

BY_TYPE = {"classification": CLASSIFICATION, "multilabel": MULTILABEL, "regression": REGRESSION}


def answer_mask(counts: torch.Tensor, window: int) -> torch.Tensor:
    """[rows, window] True at each row's last ``count`` positions: its answer tokens."""
    return torch.arange(window, device=counts.device)[None] >= window - counts.reshape(-1, 1)


class Instruct(Task):
    name = "instruct"
    default_metric = "loss"
    metrics_higher_is_better: dict[str, bool] = {SCORE: True}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             kind: str | None = None) -> torch.Tensor:
        """Mean negative log-likelihood of the answer tokens (``targets``: each row's answer length)."""
        mask = answer_mask(targets, logits.shape[1])
        return -(logits * mask).sum() / mask.sum().clamp(min=1)

    def check_metric(self, metric: str, label_names: list[str]) -> None:
        """``loss`` (the answers' validation loss), or ``score``: the mean of the tasks' selection metrics, which
        costs scoring every validation answer at each evaluation."""
        if metric not in ("loss", SCORE):
            raise ConfigError(f"instruction-tuned runs select checkpoints on loss or {SCORE}, not {metric!r}")

    def metrics(self, logits: torch.Tensor, targets: Sequence[Any], label_names: list[str], *,
                state: dict | None = None) -> dict:
        loss = float(self.loss(logits.float(), torch.as_tensor(list(targets)))) if len(targets) else 0.0
        return {"loss": loss, "perplexity": float(torch.tensor(loss).exp())}

    # A finished run's answers: one block of columns per instruction task (``answers``), in the order of
    # ``state["tasks"]``, each read by its task type (``state``: the run's task_state.json).
    def outputs(self, logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        out = logits.float().clone()
        for name, desc, cols in parts(state):
            out[:, cols] = BY_TYPE[desc["type"]].outputs(logits[:, cols], fitted(state, name))
        return out

    def format(self, outputs: torch.Tensor, label_names: list[str], *, state: dict | None = None) -> list[dict]:
        """One entry per instruction task, each in its task type's format: {"tasks": {name: {...}}}."""
        per = {name: BY_TYPE[desc["type"]].format(outputs[:, cols], labels_of(name, desc), state=fitted(state, name))
               for name, desc, cols in parts(state)}
        return [{"tasks": {name: rows[i] for name, rows in per.items()}} for i in range(len(outputs))]


INSTRUCT = register_task(Instruct())


def parts(state: dict | None) -> list[tuple[str, dict, slice]]:
    """(task name, its description, its columns) of a run's answers."""
    out, start = [], 0
    for name, desc in (state or {}).get("tasks", {}).items():
        n = len(labels_of(name, desc))
        out.append((name, desc, slice(start, start + n)))
        start += n
    return out


def fitted(state: dict | None, name: str) -> dict | None:
    """What was fitted on validation for one task (multi-label thresholds, a classification temperature)."""
    return (state or {}).get("fitted", {}).get(name)


# ---- answers of one instruction task ----------------------------------------------------------------
def grid(scale: Sequence[float]) -> list[float]:
    """Every one-decimal number on the scale [lo, hi]."""
    lo, hi = round(float(scale[0]) * 10), round(float(scale[1]) * 10)
    return [v / 10 for v in range(lo, hi + 1)]


def candidates(desc: dict) -> list[str]:
    """The answers scored for a task (``desc``: its entry of tasks.json)."""
    return [f"{v:.1f}" for v in grid(desc["scale"])] if desc["type"] == "regression" else list(desc["choices"])


def labels_of(name: str, desc: dict) -> list[str]:
    return [desc.get("target", name)] if desc["type"] == "regression" else list(desc["choices"])


def to_logits(desc: dict, scores: torch.Tensor) -> torch.Tensor:
    """The candidates' log-likelihoods -> what the task type's metrics read: class logits, multi-label
    logits (of each label's normalised probability) or the expected value [rows, 1]."""
    if desc["type"] == "classification":
        return scores
    p = scores.float().log_softmax(-1).exp()
    if desc["type"] == "multilabel":
        p = p.clamp(1e-7, 1 - 1e-7)
        return p.log() - (-p).log1p()
    return (p @ torch.tensor(grid(desc["scale"]))).reshape(-1, 1)


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse(desc: dict, text: str) -> Any:
    """A freely generated answer read as the task's answer (a label, a list of labels, a number clipped to the
    scale); None when it cannot be read (a parse failure)."""
    said = text.strip().lower().rstrip(".!")
    if desc["type"] == "regression":
        m = _NUMBER.search(said)
        return None if m is None else min(max(float(m.group()), desc["scale"][0]), desc["scale"][1])
    choices = {c.lower(): c for c in desc["choices"]}
    if desc["type"] == "classification":
        if said in choices:
            return choices[said]
        named = [c for key, c in choices.items() if re.search(rf"\b{re.escape(key)}\b", said)]
        return named[0] if len(named) == 1 else None
    items = [x.strip() for x in said.split(",") if x.strip()]
    if items == ["none"]:
        return []
    return [choices[x] for x in items] if items and all(x in choices for x in items) else None


def gold(desc: dict, values: Sequence[Any]) -> list:
    """Gold answers as the task type's targets: class indices, label lists as multi-hot, values as rows."""
    if desc["type"] == "classification":
        return [desc["choices"].index(v) for v in values]
    if desc["type"] == "multilabel":
        return [[1.0 if c in v else 0.0 for c in desc["choices"]] for v in values]
    return [[float(v)] for v in values]
