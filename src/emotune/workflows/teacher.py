"""The teachers of a distilled run (``train.teacher``): their outputs on the student's training texts, computed
once and cached by fingerprint, so that distilling costs the student's training time only (plus one teacher
pass the first time those texts meet that teacher).

The cache (``emotune.io.cache_dir()/teachers/<fingerprint>.safetensors``) is keyed by the teacher's weights
hash, its config (an ensemble's member hashes included), its labels and the texts; a retrained teacher or
other texts never reuse stale outputs. The student records each teacher's path and weights hash in its
metrics.json (``train.teachers``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError
from ..inference.predictor import Predictor
from ..io import cache_dir, load_tensors, save_tensors
from ..progress import training_progress
from ..runs import Run, weights_sha256
from ..tasks import Task

CHUNK = 512  # texts per progress step of the teacher pass


def teacher_runs(paths: Sequence[str], label_names: list[str], task: Task) -> list[tuple[Run, str | None]]:
    """The teacher runs with their weights hashes (read once: a big teacher's file takes seconds), checked
    against the student: the same task type (multi-task: the same tasks, each of the same type) and the same
    labels in the same order."""
    runs = []
    for p in paths:
        run = Run.open_finished(Path(p).expanduser(), "teacher")
        multi = run.config.is_multitask
        if multi != hasattr(task, "parts"):
            raise ConfigError(f"{run.path}: a {'multi' if multi else 'single'}-task teacher cannot teach a "
                              f"{'single' if multi else 'multi'}-task student")
        if _kind(run.task) != _kind(task):
            raise ConfigError(f"{run.path} is a {_kind(run.task)} run; the student is a {_kind(task)} run")
        if run.labels != label_names:
            raise ConfigError(f"{run.path}: labels {run.labels} differ from the student's {label_names} "
                              "(teachers must share the labels, in order)")
        runs.append((run, weights_sha256(run.path)))
    return runs


def _kind(task: Task) -> str:
    """A task type, or a multi-task run's tasks with theirs (``emotion: classification, vad: regression``)."""
    parts = getattr(task, "parts", None)
    return ", ".join(f"{p.name}: {p.task.name}" for p in parts) if parts is not None else task.name


def fingerprint(run: Run, sha: str | None, texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([sha, run.config.to_yaml(), run.labels]).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:32]


def teacher_logits(run: Run, sha: str | None, texts: Sequence[str],
                   progress: bool = True) -> tuple[torch.Tensor, float | None]:
    """(the teacher's logits on ``texts``, seconds spent computing them: None when read from the cache); ``sha``:
    its weights hash."""
    path = cache_dir() / "teachers" / f"{fingerprint(run, sha, texts)}.safetensors"
    if path.is_file():
        logits = load_tensors(path)[0]["logits"]
        if logits.shape[0] == len(texts):
            return logits, None
    start = time.perf_counter()
    predictor = Predictor(run, batch_size=run.config.train.eval_batch_size)
    parts = []
    with training_progress(len(texts), progress, f"teacher pass ({run.path.name})") as bar:
        for i in range(0, len(texts), CHUNK):
            parts.append(predictor.logits(list(texts[i:i + CHUNK])))
            bar.update(completed=min(i + CHUNK, len(texts)))
    logits = torch.cat(parts) if parts else torch.empty(0, len(run.labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, {"logits": logits.contiguous()}, {"teacher": str(run.path)})
    return logits, time.perf_counter() - start


def teacher_targets(paths: Sequence[str], groups: Sequence[Sequence[str]], label_names: list[str], task: Task,
                    temperature: float, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Each text's distillation target (the teachers' softened probabilities or values, averaged), in the order
    of ``groups`` (the training texts, then extra ones), and what the student records of its teachers. Each group
    is cached on its own, so the training texts' outputs are reused whatever extra texts a student adds."""
    teachers = teacher_runs(paths, label_names, task)
    logits, seconds = [], []
    for run, sha in teachers:
        parts = []
        for texts in (g for g in groups if g):
            got, s = teacher_logits(run, sha, texts, progress)
            parts.append(got)
            seconds.append(s)
        logits.append(torch.cat(parts))
    return task.soften(logits, temperature), _record(teachers, seconds)


def multitask_teacher_targets(paths: Sequence[str], texts: dict[str, list[str]], label_names: list[str], task,
                              temperature: float, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """A multi-task student: per task, its training texts' targets from the teachers' columns of that task."""
    teachers = teacher_runs(paths, label_names, task)
    soft, seconds = {}, []
    for part in task.parts:
        logits = []
        for run, sha in teachers:
            got, s = teacher_logits(run, sha, texts[part.name], progress)
            logits.append(got[:, run.task.part(part.name).columns])
            seconds.append(s)
        soft[part.name] = part.task.soften(logits, temperature)
    return soft, _record(teachers, seconds)


def _record(teachers: list[tuple[Run, str | None]], seconds: list[float | None]) -> dict:
    """What the student's metrics.json keeps of its teachers; ``seconds``: one per teacher pass, None for each read
    from the cache."""
    computed = [s for s in seconds if s is not None]
    return {"teachers": [{"path": str(run.path.resolve()), "sha256": sha} for run, sha in teachers],
            "teacher_passes": len(computed), "teacher_passes_cached": len(seconds) - len(computed),
            "teacher_pass_s": round(sum(computed), 1)}
