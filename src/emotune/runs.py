"""Run folders: one folder per run holding everything a report or a server needs.

    config.yaml               the resolved configuration (method defaults filled in)
    labels.json               label names (regression: target names), in the order of the model's outputs
    targets.json              regression: the training targets' mean and standard deviation
    task_state.json           what the task fitted after training on validation (multilabel: per-label thresholds)
    model.safetensors         best weights: the trainable ones only (adapter + head for PEFT methods)
    vocab.json                classic models: the training words (frozen word vectors are rebuilt from it)
    history.jsonl             every validation evaluation, one JSON line each (older runs: history.json)
    metrics.json              best validation metrics, training figures, test metrics once evaluated
    predictions_<split>.csv   per-text predictions and class probabilities
    checkpoint.safetensors    while training: what a resumed run starts from (removed when done)
    .lock                     held (flock) by the process training, evaluating or writing the folder
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from .config import RunConfig
from .data.base import resolve_task
from .errors import ConfigError, EmotuneError, RunError
from .io import fsync_dir, load_tensors, read_json, read_jsonl, remove_stale_tmp, write_json, write_text
from .tasks import SCORE, MultiHead, flat_labels, task_for

CONFIG, LABELS, METRICS = "config.yaml", "labels.json", "metrics.json"
VOCAB = "vocab.json"  # classic models' word vocabulary
TARGETS = "targets.json"  # regression: the training targets' mean and standard deviation
TASK_STATE = "task_state.json"  # Task.fit_state's result (multilabel: per-label thresholds)
LOCK = ".lock"
CHECKPOINT = "checkpoint.safetensors"
BEST = "model.safetensors"
HISTORY = "history.jsonl"  # one line per evaluation, appended
PROMPT_METHODS = ("prefix", "prompt")  # virtual tokens through PEFT's model forward
LEGACY_HISTORY = "history.json"  # run folders written before history.jsonl: one JSON list


def predictions_file(split: str, task: str | None = None) -> str:
    """The file holding a split's per-text predictions (of one task of a multi-task run)."""
    return f"predictions_{split}_{task}.csv" if task else f"predictions_{split}.csv"


def read_history(folder: Path) -> list[dict]:
    """Every validation evaluation of the run in ``folder`` (either history format; [] when none)."""
    folder = Path(folder)
    if (folder / HISTORY).is_file():
        return read_jsonl(folder / HISTORY)
    if (folder / LEGACY_HISTORY).is_file():
        return read_json(folder / LEGACY_HISTORY)
    return []


def write_history(folder: Path, history: list[dict]) -> None:
    """Replace the history at once (a resumed run drops evaluations after its checkpoint)."""
    write_text(Path(folder) / HISTORY, "".join(json.dumps(h) + "\n" for h in history))
    (Path(folder) / LEGACY_HISTORY).unlink(missing_ok=True)
RUN_FILES = (CONFIG, LABELS, METRICS, BEST, HISTORY, LEGACY_HISTORY, CHECKPOINT, VOCAB, TARGETS, TASK_STATE)

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

_held: dict[Path, int] = {}  # folders this process has locked (a lock is re-entrant within a process)


@contextmanager
def run_lock(folder: str | Path, what: str = "emotune", *, wait: bool = False) -> Iterator[None]:
    """Hold ``<folder>/.lock`` exclusively while writing the folder; a second process gets a one-line
    RunError naming the process that holds it (or, with ``wait``, waits its turn). Released when the holder
    exits, even by kill -9."""
    folder = Path(folder).resolve()
    if fcntl is None or folder in _held:
        _held[folder] = _held.get(folder, 0) + 1
        try:
            yield
        finally:
            _held[folder] -= 1
            if not _held[folder]:
                del _held[folder]
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunError(f"{folder}: in use by {holder}; wait for it to finish or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} ({what})\n")
    f.flush()
    _held[folder] = 1
    try:
        yield
    finally:
        del _held[folder]
        if created and [p.name for p in folder.iterdir()] == [LOCK]:  # nothing written: leave no folder
            (folder / LOCK).unlink()
            folder.rmdir()
        f.close()  # closing releases the lock


def replace_dir(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing what was there only now that ``new`` is
    complete (a typo or a crash before this point leaves the old folder as it was)."""
    new, out = Path(new), Path(out)
    fsync_dir(new)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)
    fsync_dir(out.parent)


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A new, randomly named folder beside ``out`` to write into; swapped into place when the block
    succeeds, deleted when it fails."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def weights_sha256(folder: str | Path) -> str | None:
    """A short hash of a run's best weights (None when it has none): recorded by runs built on other runs
    (ensembles, transfer), which then refuse a member that was retrained since."""
    import hashlib

    path = Path(folder).expanduser() / BEST
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def check_weights(folder: str | Path, recorded: str | None, role: str) -> None:
    """Refuse a member/source run whose weights changed since ``recorded`` was taken."""
    if recorded and weights_sha256(folder) != recorded:
        raise RunError(f"{folder}: the {role} run's weights changed since this run was made (retrained?); "
                       "make it again")


def same_config(folder: Path, cfg: RunConfig) -> bool:
    try:
        return RunConfig.from_yaml(folder / CONFIG).to_dict() == cfg.to_dict()
    except (EmotuneError, OSError, ValueError):  # unreadable or from another version: not the same
        return False


def prepare_run_dir(cfg: RunConfig, out: Path, overwrite: bool) -> Path:
    """Where to write the run ``cfg`` describes, before anything is loaded or trained; the caller holds
    ``run_lock(out)``. A finished run is refused without ``overwrite``; an interrupted one resumes only
    with the same config. With ``overwrite`` the old run stays untouched: the new one is written into
    ``.<name>.overwrite`` beside it (resumable too) and `replace_dir` swaps it in once complete."""
    out = Path(out)
    if overwrite and (out / CONFIG).exists():
        work = out.with_name(f".{out.name}.overwrite")
        if work.exists() and not ((work / CHECKPOINT).exists() and same_config(work, cfg)):
            shutil.rmtree(work)
        if work.exists():
            remove_stale_tmp(work)
        return work
    if not out.exists():
        return out
    remove_stale_tmp(out)
    if overwrite:  # no run there (no config): clear what an earlier attempt left
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for p in out.glob("predictions_*.csv"):
            p.unlink()
        return out
    if not (out / CONFIG).exists():
        return out
    run = Run.open(out) if (out / LABELS).exists() else None
    if run is not None and run.complete:
        (out / CHECKPOINT).unlink(missing_ok=True)  # left by a kill between the final metrics and its removal
        raise RunError(f"{out}: a finished run is already there; choose another --out or pass --overwrite")
    if (out / CHECKPOINT).exists() and not same_config(out, cfg):
        raise RunError(f"{out}: holds an interrupted run with a different configuration; "
                       "pass --overwrite to start afresh")
    return out


def resolve_config(cfg: RunConfig) -> RunConfig:
    """Fill the method's (or classic model's) default learning rate and warm-up, and a classic model's
    options, into the config that gets saved."""
    from .methods import METHODS
    from .models import MODELS, is_classic
    from .models.classic import resolve_options

    cfg = encoder_view(cfg)
    method = METHODS.get(cfg.method.get("name", ""))
    method.make_config({k: v for k, v in cfg.method.items() if k != "name"})  # validate early
    check_switches(cfg, method.name, is_classic(cfg.model.name), trains=method.build is None)
    resolved = RunConfig.from_dict(cfg.to_dict())
    if method.resolve is not None:
        resolved.method = method.resolve(dict(resolved.method))
    classic = MODELS.get(cfg.model.name) if is_classic(cfg.model.name) else None
    if classic:  # every option recorded, and classic models' own default learning rate
        resolved.model.options = resolve_options(resolved)
    if resolved.train.lr is None:
        resolved.train.lr = classic.lr if classic else method.lr
    if resolved.data.data_dir:  # absolute, so `evaluate` works from any folder
        resolved.data.data_dir = str(Path(resolved.data.data_dir).expanduser().resolve())
    if resolved.train.warmup_ratio is None:
        resolved.train.warmup_ratio = method.warmup_ratio
    for data in [resolved.data, *(t.data for t in resolved.multitask.tasks)]:
        resolve_task(data)
        if data is not resolved.data:  # a task's data: its own data_dir, else the run's (--data-dir)
            data.data_dir = str(Path(data.data_dir).expanduser().resolve()) if data.data_dir \
                else resolved.data.data_dir
    if resolved.data.task == "instruct":  # absolute, so `evaluate` finds the folder from anywhere
        resolved.data.name = str(Path(resolved.data.name).expanduser().resolve())
    if resolved.is_multitask:
        resolved.train.metric = SCORE  # the mean of the tasks' own selection metrics
        return resolved
    task = task_for(resolved)
    if task.name == "instruct" and resolved.train.metric not in ("loss", SCORE):
        resolved.train.metric = "loss"  # accuracy (the default) or a search's objective: the answers' loss
    if resolved.train.metric == "accuracy" and "accuracy" not in task.metrics_higher_is_better:
        resolved.train.metric = task.default_metric  # the default suits classification only
    return resolved


def encoder_view(cfg: RunConfig) -> RunConfig:
    """An instruction folder read by an encoder (or a classic model) instead of a causal LM: the multi-task run
    over the same texts that ``emotune instruct-data`` wrote beside it (``encoders.yaml``), so that a search can
    cross encoders and decoders on one data set."""
    from .data.base import resolve_task
    from .models.causal import is_causal_lm

    data = RunConfig.from_dict(cfg.to_dict()).data
    resolve_task(data)
    if data.task != "instruct" or cfg.is_multitask or is_causal_lm(cfg.model.name):
        return cfg
    view = RunConfig.from_yaml(Path(data.name).expanduser() / "encoders.yaml")
    out = RunConfig.from_dict(cfg.to_dict())
    out.multitask = view.multitask
    out.data = type(cfg.data)(data_dir=cfg.data.data_dir, max_length=cfg.data.max_length)
    return out


def check_switches(cfg: RunConfig, method: str, classic: bool, trains: bool = True) -> None:
    """Refuse, in one line, the robustness switches a run cannot take (``emotune.train.robust``)."""
    if cfg.train.mixout and (method != "full" or classic):
        why = ("a classic model has no pretrained linear layers to mix towards" if classic else
               f"method {method} leaves the pretrained weights frozen (use method full)")
        raise ConfigError(f"train.mixout mixes an encoder's weights towards its pretrained ones during full "
                          f"fine-tuning; {why}")
    used = [k for k, on in (("train.mixout", cfg.train.mixout), ("train.adversarial", cfg.train.adversarial),
                            ("train.rdrop", cfg.train.rdrop), ("data.augment", cfg.data.augment)) if on]
    if used and not trains:
        raise ConfigError(f"{', '.join(used)}: method {method} does not train, so there is nothing to regularise")
    if cfg.train.teacher:
        if not trains:
            raise ConfigError(f"train.teacher: method {method} does not train, so there is no student to teach")
        if cfg.is_multitask and cfg.train.distill_unlabeled:
            raise ConfigError("train.distill_unlabeled: unlabeled texts belong to no task of a multi-task run")
        if cfg.is_multitask and any(t.data.augment for t in cfg.multitask.tasks):
            raise ConfigError("train.teacher with data.augment in a multi-task run: the teachers label "
                              "augmented copies of a single-task run only")


def build_model(cfg: RunConfig, num_labels: int, *, texts: list[str] | None = None,
                run_dir: Path | None = None, targets: dict | None = None, labels: list[str] | None = None):
    """(model, tokenizer, method) as configured, before any training. A classic model (``model.name`` in
    ``models.MODELS``) builds its vocabulary from ``texts`` (the training split) or reads ``run_dir``'s; a
    regression head takes its target statistics from ``targets`` or ``run_dir``'s targets.json. A multi-task
    model sizes its heads from ``labels`` (its flat task:label names) or ``run_dir``'s labels."""
    if labels is None and run_dir is not None and (Path(run_dir) / LABELS).is_file():
        labels = read_labels(Path(run_dir) / LABELS)
    model, tokenizer, method = _build_model(cfg, num_labels, texts, run_dir, task_for(cfg, labels))
    if targets is None and run_dir is not None and (Path(run_dir) / TARGETS).is_file():
        targets = read_json(Path(run_dir) / TARGETS)
    set_target_statistics(model, targets)
    return model, tokenizer, method


def set_target_statistics(model, targets: dict | None) -> None:
    """Give a regression head its training targets' mean and spread (``targets``: targets.json's content)."""
    head = getattr(model, "head", None)
    if targets is None or not hasattr(head, "set_statistics"):
        return
    if isinstance(head, MultiHead):
        head.set_statistics(targets)  # {task: {mean, std}}
    else:
        head.set_statistics(targets["mean"], targets["std"])


def read_labels(path: Path) -> list[str]:
    """A run's label names: a list, or for a multi-task run {task: labels}, flattened to task:label names."""
    labels = read_json(path)
    return flat_labels(labels) if isinstance(labels, dict) else labels


def _build_model(cfg: RunConfig, num_labels: int, texts: list[str] | None, run_dir: Path | None, task):
    from .methods import METHODS, apply_method
    from .models import build_classic, build_transformer, is_classic

    torch.manual_seed(cfg.train.seed)
    method = METHODS.get(cfg.method.get("name", ""))
    if method.build is not None:  # nothing trains: built from the config and the run's label names
        labels = read_json(run_dir / LABELS) if run_dir else []  # without them: a clear error
        return (*method.build(cfg, labels, fit=False), method)  # its kept tensors: model.safetensors
    if task.name == "instruct":  # a causal LM answering instructions (emotune.train.instruct)
        from .models.causal import build_instruct

        if method.name in PROMPT_METHODS:
            raise ConfigError(f"method {method.name} goes through PEFT's own model forward; instruction-tuned "
                              "decoders take full fine-tuning or a method that adapts layers (lora, dora, ...)")
        model, tokenizer = build_instruct(cfg.model)
        model, method, _ = apply_method(model, cfg.method)
        return model, tokenizer, method
    if is_classic(cfg.model.name):
        model, tokenizer = build_classic(cfg, num_labels, texts=texts, task=task,
                                         vocab_file=run_dir / VOCAB if run_dir else None)
        frozen = [p for p in model.parameters() if not p.requires_grad]  # e.g. frozen embeddings
        model, method, _ = apply_method(model, cfg.method)
        for p in frozen:  # `full` unfreezes every weight
            p.requires_grad_(False)
        return model, tokenizer, method
    model, tokenizer = build_transformer(cfg.model, num_labels, task)
    model, method, _ = apply_method(model, cfg.method)
    return model, tokenizer, method


@dataclass
class Run:
    path: Path
    config: RunConfig
    labels: list[str]

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise RunError(f"{path}: not a run folder (no {CONFIG})")
        labels = read_labels(path / LABELS) if (path / LABELS).is_file() else None
        if labels is None:
            raise RunError(f"{path}: incomplete run folder (no {LABELS})")
        return cls(path, RunConfig.from_yaml(path / CONFIG), labels)

    @classmethod
    def open_finished(cls, path: str | Path, role: str = "") -> "Run":
        """Open a run folder and refuse it unless its training finished (``role`` names it in the error,
        e.g. "member")."""
        run = cls.open(path)
        if not run.complete:
            raise RunError(f"{run.path}: the {role + ' ' if role else ''}run has not finished training "
                           f"({run.status()})")
        return run

    @property
    def task(self):
        """What the run predicts (``emotune.tasks``): its head, loss, metrics and output format."""

        return task_for(self.config, self.labels)

    @property
    def target_statistics(self) -> dict | None:
        """Regression runs: the training targets' mean and standard deviation (targets.json)."""
        return read_json(self.path / TARGETS) if (self.path / TARGETS).is_file() else None

    @property
    def task_state(self) -> dict | None:
        """What the task fitted on validation after training (task_state.json: multilabel thresholds); None
        when it fits nothing."""
        return read_json(self.path / TASK_STATE) if (self.path / TASK_STATE).is_file() else None

    @property
    def metrics(self) -> dict:
        return read_json(self.path / METRICS) if (self.path / METRICS).is_file() else {}

    @property
    def complete(self) -> bool:
        return bool(self.metrics.get("completed"))

    def best_step(self) -> int | None:
        """The step model.safetensors comes from: the finished run's, or an unfinished run's best so far."""
        if "best_step" in self.metrics.get("train", {}):
            return self.metrics["train"]["best_step"]
        if (self.path / CHECKPOINT).is_file():
            from safetensors import safe_open

            with safe_open(str(self.path / CHECKPOINT), framework="pt") as f:
                return json.loads((f.metadata() or {}).get("state", "{}")).get("best_step")
        return None

    def status(self) -> str:
        if self.complete:
            return "complete"
        return "interrupted" if (self.path / CHECKPOINT).exists() else "incomplete"

    def load_model(self):
        """(model, tokenizer) with the best weights, in float32 on the CPU."""
        if not (self.path / BEST).is_file():
            raise RunError(f"{self.path}: no trained weights ({BEST}); the run has not finished an evaluation")
        model, tokenizer, _ = build_model(self.config, len(self.labels), run_dir=self.path)
        weights, _ = load_tensors(self.path / BEST)
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        unknown = [n for n in weights if n not in params]
        if missing or unknown:
            raise RunError(f"{self.path / BEST}: weights do not fit the configured model "
                           f"(missing {missing[:3]}, unexpected {unknown[:3]})")
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)
        return model, tokenizer

    def update_metrics(self, **sections) -> dict:
        metrics = {**self.metrics, **sections}
        write_json(self.path / METRICS, metrics)
        return metrics


READ_ERRORS = (EmotuneError, ValueError, OSError)
"""What reading a damaged run folder raises (an unknown config field, corrupt JSON, an unreadable file)."""


def unreadable(e: Exception) -> str:
    """Why a run folder could not be read, in one line."""
    if isinstance(e, json.JSONDecodeError):
        return f"unreadable JSON ({e.msg} at line {e.lineno})"
    return str(e) if isinstance(e, EmotuneError) else f"{type(e).__name__}: {e}"


def find_runs(root: str | Path, on_error: Callable[[Path, str], None] | None = None) -> list[Run]:
    """Every run folder at or below ``root``, sorted by path. A folder that is no run yet (no labels) is left
    out; one that cannot be read (see READ_ERRORS) too, after ``on_error(folder, why)`` when given."""
    root = Path(root)
    if not root.exists():
        raise RunError(f"{root}: no such folder")
    found = []
    for cfg in sorted(root.rglob(CONFIG)):
        try:
            run = Run.open(cfg.parent)
            run.metrics  # noqa: B018 - a corrupt metrics.json makes the folder unreadable too
        except RunError:
            continue
        except READ_ERRORS as e:
            if on_error is not None:
                on_error(cfg.parent, unreadable(e))
            continue
        found.append(run)
    return found
