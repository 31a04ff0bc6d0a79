"""Hyper-parameter search with Optuna: a search space in YAML, one emotune run per trial.

    study: emotion-lora                # optional; defaults to the file name
    base: {data: {name: emotion}, method: {name: lora}, train: {max_epochs: 3}}
    objective: {metric: accuracy}      # any validation metric; direction follows it (loss: minimize)
    sampler: {name: tpe, seed: 42}     # tpe (default), random, cmaes, gp, qmc, bruteforce + their options
    pruner: {name: median, n_startup_trials: 3}   # median (default), percentile, hyperband,
                                                  # successive_halving, threshold, wilcoxon, none
    storage: null                      # SQLAlchemy URL; default sqlite:///<out>/optuna.db
    space:
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      method.r: {type: categorical, choices: [2, 8, 32]}
      method.target: [attention, all-linear]       # a plain list is categorical
      train.warmup_ratio: {type: float, low: 0.0, high: 0.2, step: 0.02}
      train.batch_size: {type: int, low: 8, high: 32, log: true}

Every trial trains into ``<out>/trials/trial-NNNN`` and reports each validation evaluation to the
pruner; a pruned trial's folder is marked ``pruned`` (no checkpoint, no weights). Workers on several
machines share a study through one database URL. An interrupted trial (Ctrl-C, a killed worker) is
queued again and resumes from its checkpoint on the machine that holds it. The best trial is exported
as ``best.yaml`` (a run config); `retrain_full` retrains it on train+validation and tests it once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..config import RunConfig
from ..errors import ConfigError, RunError
from ..io import read_json, write_json, write_text
from ..registry import Registry
from ..runs import CHECKPOINT, CONFIG, METRICS, read_history, resolve_config, same_config
from ..tasks import HIGHER_IS_BETTER
from .settings import apply_settings, config_from, format_value, labels, load_spec

FILE_KEYS = {"study", "base", "objective", "sampler", "pruner", "storage", "space"}
PARAM_TYPES = ("float", "int", "categorical")
TRIALS_DIR = "trials"
DB_FILE = "optuna.db"

SAMPLERS: Registry[str] = Registry("sampler")
PRUNERS: Registry[str] = Registry("pruner")
for _name, _cls in {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler",
                    "qmc": "QMCSampler", "bruteforce": "BruteForceSampler"}.items():
    SAMPLERS.register(_name)(_cls)
for _name, _cls in {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
                    "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner",
                    "wilcoxon": "WilcoxonPruner", "none": "NopPruner"}.items():
    PRUNERS.register(_name)(_cls)


@dataclass
class Param:
    """One searched setting: a config key and its distribution."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)

    @classmethod
    def parse(cls, key: str, spec: Any) -> "Param":
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"space.{key}: expected a list of choices or {{type: float|int|categorical, ...}}")
        spec = dict(spec)
        kind = spec.pop("type", "categorical" if "choices" in spec else None)
        if kind not in PARAM_TYPES:
            raise ConfigError(f"space.{key}: type must be one of {', '.join(PARAM_TYPES)}")
        unknown = set(spec) - ({"choices"} if kind == "categorical" else {"low", "high", "log", "step"})
        if unknown:
            raise ConfigError(f"space.{key}: unknown option(s) {', '.join(sorted(unknown))} for type {kind}")
        from .settings import coerce

        spec = coerce(spec)
        if kind == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"space.{key}: categorical needs a non-empty list of choices")
            return cls(key, kind, choices=spec["choices"])
        if not all(isinstance(spec.get(k), (int, float)) for k in ("low", "high")) or spec["low"] > spec["high"]:
            raise ConfigError(f"space.{key}: {kind} needs numbers low <= high")
        if spec.get("log") and spec["low"] <= 0:
            raise ConfigError(f"space.{key}: a log scale needs low > 0")
        return cls(key, kind, spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step"))

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if all(c is None or isinstance(c, (bool, int, float, str)) for c in self.choices):
            return trial.suggest_categorical(self.key, self.choices)
        # Optuna stores primitive choices only: lists/mappings (e.g. a list of LoRA targets) go by label.
        names = [format_value(c) for c in self.choices]
        return self.choices[names.index(trial.suggest_categorical(self.key, names))]


@dataclass
class SearchSpace:
    name: str
    base: RunConfig
    params: list[Param]
    metric: str = "accuracy"
    direction: str = "maximize"
    sampler: dict = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict = field(default_factory=lambda: {"name": "median"})
    storage: str | None = None
    source: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[tuple[str, Any]] = ()) -> "SearchSpace":
        return load_spec(path, "search space file",
                         lambda spec, stem: cls.from_dict(spec, overrides, default_name=stem))

    @classmethod
    def from_dict(cls, spec: Any, overrides: Iterable[tuple[str, Any]] = (), *,
                  default_name: str = "study") -> "SearchSpace":
        if not isinstance(spec, dict):
            raise ConfigError("a search space file is a mapping with base, objective and space")
        unknown = set(spec) - FILE_KEYS
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(FILE_KEYS))})")
        objective = spec.get("objective") or {}
        if isinstance(objective, str):
            objective = {"metric": objective}
        metric = objective.get("metric", "accuracy")
        last = str(metric).rsplit(".", 1)[-1]  # a multi-task run's task metric: vad.pearson, emotion.accuracy
        if last not in HIGHER_IS_BETTER:
            raise ConfigError(f"objective.metric: {metric!r} is not a validation metric "
                              f"({', '.join(HIGHER_IS_BETTER)}, or TASK.METRIC for a multi-task run)")
        direction = objective.get("direction", "maximize" if HIGHER_IS_BETTER[last] else "minimize")
        if direction not in ("maximize", "minimize"):
            raise ConfigError("objective.direction: maximize or minimize")
        overrides = list(overrides)
        base = apply_settings(config_from(spec.get("base"), where="base"), overrides)
        explicit = flat_keys(spec.get("base")) | {k.rsplit(".", 1)[-1] for k, _ in overrides}
        if "metric" not in explicit and "." not in metric:  # checkpoints and early stopping follow the objective
            base.train.metric = metric  # (a task's metric leaves them to the run's own: score, the tasks' mean)
        space = spec.get("space")
        if not isinstance(space, dict) or not space:
            raise ConfigError("space: expected a mapping of config keys to distributions")
        params = [Param.parse(k, v) for k, v in space.items()]
        sampler, pruner = _component(spec.get("sampler"), "tpe", SAMPLERS), _component(spec.get("pruner"), "median",
                                                                                     PRUNERS)
        out = cls(str(spec.get("study") or default_name), base, params, metric, direction, sampler, pruner,
                  spec.get("storage"))
        out.config_for({p.key: (p.choices[0] if p.type == "categorical" else p.low) for p in params})  # validate
        return out

    def config_for(self, params: dict[str, Any]) -> RunConfig:
        cfg = apply_settings(self.base, params)
        resolve_config(cfg)  # unknown methods/options fail here, before training
        return cfg

    def make_sampler(self):
        import optuna

        kw = {k: v for k, v in self.sampler.items() if k != "name"}
        return getattr(optuna.samplers, SAMPLERS.get(self.sampler["name"]))(**kw)

    def make_pruner(self):
        import optuna

        kw = {k: v for k, v in self.pruner.items() if k != "name"}
        return getattr(optuna.pruners, PRUNERS.get(self.pruner["name"]))(**kw)


def flat_keys(base: Any) -> set[str]:
    """Field names mentioned in a ``base:`` mapping, whether nested or dotted."""
    if not isinstance(base, dict):
        return set()
    keys = set()
    for k, v in base.items():
        keys.add(str(k).rsplit(".", 1)[-1])
        if isinstance(v, dict):
            keys |= set(map(str, v))
    return keys


def _component(spec: Any, default: str, registry: Registry) -> dict:
    spec = {"name": spec} if isinstance(spec, str) else dict(spec or {})
    spec.setdefault("name", default)
    registry.get(spec["name"])  # unknown names fail early
    return spec


# ---- running a study -----------------------------------------------------------------------------

@dataclass
class TuneResult:
    study: str
    storage: str
    complete: int
    pruned: int
    failed: int
    best: dict | None
    """trial, value, params, run, best_step of the best trial (None before any trial completes)."""
    best_config: Path | None = None
    retrained: dict | None = None
    """The retrained run's folder and test metrics (with --retrain-full)."""


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / DB_FILE).resolve()}"


def open_study(space: SearchSpace, storage: str, *, create: bool = True):
    """The study in ``storage`` (created if absent); heartbeats let other workers spot a dead one's trial."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(5):
        try:
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=300)
            break
        except ImportError as e:
            raise ConfigError(f"storage {_safe_url(storage)}: database driver missing ({e}); for PostgreSQL: "
                              "pip install 'psycopg[binary]'") from None
        except SQLAlchemyError as e:  # workers starting together on an empty database race to create its tables
            if attempt == 4:
                raise ConfigError(f"cannot open the study storage {_safe_url(storage)}: "
                                  f"{str(e).splitlines()[0]}") from None
            time.sleep(0.5 + random.random() * (attempt + 1))
    study = optuna.create_study(study_name=space.name, storage=rdb, sampler=space.make_sampler(),
                                pruner=space.make_pruner(), direction=space.direction, load_if_exists=create)
    if study.direction.name.lower() != space.direction:
        raise ConfigError(f"study {space.name!r} in {_safe_url(storage)} was created to "
                          f"{study.direction.name.lower()}; this space asks to {space.direction}")
    return study


def tune(space: SearchSpace, out: str | Path, *, trials: int, storage: str | None = None,
         timeout: float | None = None, progress: bool = True, retrain: bool = False) -> TuneResult:
    """Run the study until ``trials`` trials (complete or pruned, counted over every worker) have
    finished, export the best trial's config and, with ``retrain``, retrain it on train+validation."""
    import optuna
    from optuna.trial import TrialState

    from ..train.distributed import processes

    if processes().world > 1:
        raise ConfigError("emotune tune spreads trials over processes and machines through its study storage "
                          "(start more tune workers instead); a trial does not train data-parallel")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or space.storage or default_storage(out)
    if space.source:
        write_text(out / "space.yaml", space.source)
    if progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable enough
    study = open_study(space, url)
    optuna.storages.fail_stale_trials(study)  # trials of workers that died without a word
    from ..runs import run_lock

    with run_lock(out, "emotune tune: queueing interrupted trials", wait=True):  # workers sharing --out: once
        requeue_interrupted(study, out)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < trials:
        from .progress import GridProgress

        quiet = QuietInterrupt()
        optimize_log = logging.getLogger("optuna.study._optimize")
        optimize_log.addFilter(quiet)
        try:
            with GridProgress(trials, done, enabled=progress, description=f"study {space.name}",
                              unit="trials") as bar:
                objective = Objective(space, out, bar)
                stop = optuna.study.MaxTrialsCallback(trials, states=finished)
                study.optimize(objective, timeout=timeout, callbacks=[stop, objective.finished])
        finally:
            optimize_log.removeFilter(quiet)
    result = summarize(study, out, url)
    if result.best is not None:
        result.best_config = export_best(study, space, out)
        if retrain:
            result.retrained = retrain_full(space, result.best, out, progress=progress)
    return result


class QuietInterrupt(logging.Filter):
    """Drops Optuna's "trial failed" warnings (with a traceback) for a trial stopped by Ctrl-C/SIGTERM: that
    is a pause, not a failure; emotune prints one line and the next run queues the trial again."""

    interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        from ..errors import Interrupted

        if record.exc_info and isinstance(record.exc_info[1], Interrupted):
            self.interrupted = True  # Optuna then logs "Trial N failed with value None." for the same trial
            return False
        return not (self.interrupted and "failed with value None" in record.getMessage())


def _find(metrics: dict, metric: str) -> tuple[Any, str | None]:
    """(the value of ``metric``, None) or (where the walk stopped, the missing part); ``task.metric`` walks into a
    task's figures."""
    value: Any = metrics
    for part in metric.split(".") if metric not in metrics else [metric]:
        if not isinstance(value, dict) or part not in value:
            return value, part
        value = value[part]
    return value, None


def has_metric(metrics: dict, metric: str) -> bool:
    return _find(metrics, metric)[1] is None


def metric_value(metrics: dict, metric: str) -> float:
    """A validation metric by name; ``task.metric`` reads one task's figure of a multi-task run."""
    value, missing = _find(metrics, metric)
    if missing is not None:
        raise ConfigError(f"objective.metric {metric!r}: these runs' validation metrics have no {missing!r} "
                          f"(they have {', '.join(sorted(value)) if isinstance(value, dict) else 'none'})")
    return float(value)


class Objective:
    """Train one trial's run; report every validation evaluation to the pruner."""

    def __init__(self, space: SearchSpace, out: Path, bar=None):
        self.space, self.out, self.bar = space, out, bar
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial) -> float:
        import optuna

        from .. import api
        from ..runs import Run

        params = {p.key: p.suggest(trial) for p in self.space.params}
        cfg = self.space.config_for(params)
        rel = trial.user_attrs.get("run") or f"{TRIALS_DIR}/trial-{trial.number:04d}"
        run_dir = self.out / rel
        for k, v in {"run": rel, "worker": self.worker, "config": resolve_config(cfg).to_dict()}.items():
            trial.set_user_attr(k, v)
        metric, name = self.space.metric, f"trial {trial.number} ({', '.join(labels(params))})"

        def on_evaluate(step: int, metrics: dict) -> None:
            if not has_metric(metrics, metric):  # a decoder's evaluations during training: loss only
                return
            trial.report(metric_value(metrics, metric), step)
            if self.bar:
                self.bar.evaluated(name, step, metric, metric_value(metrics, metric))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

        def on_step(step: int) -> bool:
            if self.bar:
                self.bar.step(name, step)
            return False

        if self.bar:
            self.bar.start(name)
        resolved = resolve_config(cfg)
        if (run_dir / CONFIG).is_file() and not same_config(run_dir, resolved) and Run.open(run_dir).complete:
            raise RunError(f"{run_dir}: holds a finished run with another configuration (another study in this "
                           "--out?); use another --out")
        for h in read_history(run_dir):  # a resumed trial: the pruner sees its earlier evaluations too
            if has_metric(h["validation"], metric):
                trial.report(metric_value(h["validation"], metric), h["step"])
        try:
            if (run_dir / CONFIG).is_file() and Run.open(run_dir).complete:
                metrics = Run.open(run_dir).metrics  # trained before the worker could record it
            else:
                metrics = api.train(cfg, run_dir, progress=False, on_step=on_step, on_evaluate=on_evaluate)
        except optuna.TrialPruned:
            mark_pruned(run_dir, trial.number)
            raise
        t = metrics["train"]
        for k, v in {"best_step": t["best_step"], "steps": t["steps"], "runtime_s": t["runtime_s"],
                     "trainable_params": t["trainable_params"]}.items():
            trial.set_user_attr(k, v)
        return metric_value(metrics["validation"], metric)

    def finished(self, study, trial) -> None:
        """Optuna callback after every trial of this worker: close its progress line."""
        if not self.bar:
            return
        from optuna.trial import TrialState

        name = next((t for t in self.bar.tasks if t.startswith(f"trial {trial.number} ")), f"trial {trial.number}")
        status = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned"}.get(trial.state, "failed")
        last = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
        value = trial.value if trial.state == TrialState.COMPLETE else last
        note = f": val {self.space.metric} {value:.4f}" if value is not None else ""
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            note += f" at step {max(trial.intermediate_values)}"
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        self.bar.finish(name, status, completed=done, note=note)


def mark_pruned(run_dir: Path, number: int) -> None:
    """Leave a pruned trial's folder clean: no checkpoint for anything to resume, no weights; marked pruned."""
    from ..runs import BEST, CHECKPOINT, METRICS

    for name in (CHECKPOINT, BEST):
        (run_dir / name).unlink(missing_ok=True)
    history = read_history(run_dir)
    old = read_json(run_dir / METRICS) if (run_dir / METRICS).is_file() else {}
    write_json(run_dir / METRICS, {**old, "completed": False, "pruned": True, "trial": number,
                                   "pruned_at_step": history[-1]["step"] if history else 0})


def requeue_interrupted(study, out: Path) -> list[int]:
    """Queue again the failed trials whose run folder here holds a checkpoint: they resume from it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("resumes") for t in trials}
    queued = []
    for t in trials:
        rel = t.user_attrs.get("run")
        if t.state != TrialState.FAIL or not rel or t.number in taken:
            continue
        if (out / rel / CHECKPOINT).exists():
            study.enqueue_trial(t.params, user_attrs={"run": rel, "resumes": t.number})
            queued.append(t.number)
    return queued


def summarize(study, out: Path, storage: str) -> TuneResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    best = None
    if count[TrialState.COMPLETE]:
        b = study.best_trial
        best = {"trial": b.number, "value": b.value, "params": b.params, "run": b.user_attrs.get("run"),
                "best_step": b.user_attrs.get("best_step"), "config": b.user_attrs.get("config")}
    return TuneResult(study.study_name, _safe_url(storage), count[TrialState.COMPLETE], count[TrialState.PRUNED],
                      count[TrialState.FAIL], best)


def _safe_url(url: str) -> str:
    """The storage URL without its password, for printing (also when it does not parse)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - whatever went wrong, never show the password
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def export_best(study, space: SearchSpace, out: Path) -> Path:
    """best.yaml: the best trial's full run config (train it with `emotune train --config best.yaml`)."""
    b = study.best_trial
    cfg = RunConfig.from_dict(b.user_attrs["config"])
    header = (f"# Best trial of study {space.name!r}: trial {b.number}, validation {space.metric} {b.value:.6g}\n"
              f"# params: {json.dumps(b.params)}\n# best checkpoint at step {b.user_attrs.get('best_step')}\n")
    write_text(out / "best.yaml", header + cfg.to_yaml())
    return out / "best.yaml"


# ---- retraining on train + validation --------------------------------------------------------------

def merged_data_config(cfg: RunConfig, folder: Path) -> RunConfig:
    """A copy of ``cfg`` whose data is a folder of JSONL files: train = train + validation (the same
    samples the trial saw), validation = the validation split again (now seen: for monitoring only),
    test = the untouched test split. A multi-task run gets one such folder per task; an instruction folder
    a merged instruction folder."""
    merged = RunConfig.from_dict(cfg.to_dict())
    if cfg.data.task == "instruct":
        from ..data.instruct import read_instructions, write_instructions

        rows, tasks = read_instructions(cfg.data.name)
        write_instructions({"train": rows["train"] + rows["validation"], "validation": rows["validation"],
                            "test": rows["test"]}, tasks, folder)
        merged.data.name = str(folder.resolve())
        return merged
    if cfg.is_multitask:
        for spec in merged.multitask.tasks:
            _merge_split_files(spec.data, folder / spec.name, cfg.train.seed, cfg.data.data_dir)
        return merged
    _merge_split_files(merged.data, folder, cfg.train.seed)
    return merged


def _merge_split_files(data_cfg, folder: Path, seed: int, data_dir: str | None = None) -> None:
    """Write ``data_cfg``'s data as merged split files into ``folder`` and point ``data_cfg`` at them (in place);
    labels, label columns or targets as the task type reads them."""
    from ..data import load_data

    if data_cfg.data_dir is None:
        data_cfg.data_dir = data_dir
    data = load_data(data_cfg, seed)
    parts = {"train": [data["train"], data["validation"]], "validation": [data["validation"]],
             "test": [data["test"]] if "test" in data.splits else []}
    names, kind = data.label_names, data_cfg.task

    def record(text: str, y: Any) -> dict:
        if kind == "regression":
            return {"text": text, **dict(zip(names, y))}
        if kind == "multilabel":
            return {"text": text, **{n: int(v) for n, v in zip(names, y)}}
        return {"text": text, "label": names[y]}

    for split, pieces in parts.items():
        if pieces:
            lines = [json.dumps(record(t, y), ensure_ascii=False) for piece in pieces
                     for t, y in zip(piece.texts, piece.labels)]
            write_text(folder / f"{split}.jsonl", "\n".join(lines) + "\n")
    data_cfg.name, data_cfg.data_dir = str(folder.resolve()), None
    data_cfg.text_column, data_cfg.label_column, data_cfg.label_delimiter = "text", "label", None
    if kind == "regression":
        data_cfg.target_columns = list(names)
    elif kind == "multilabel":
        data_cfg.label_columns = list(names)
    data_cfg.max_train_samples = data_cfg.max_eval_samples = None


def retrain_full(space: SearchSpace, best: dict, out: Path, *, progress: bool = True) -> dict:
    """Retrain the best trial on train+validation for its best step count; evaluate on test once.

    No data is held out any more, so the run keeps the last weights: evaluations happen only at the
    end (and at epoch ends) on the seen validation split, ranked by loss, which keeps falling."""
    from .. import api
    from ..runs import Run

    if not best.get("config") or not best.get("best_step"):
        raise RunError(f"trial {best.get('trial')} has no recorded config or best step to retrain")
    name = f"best-full-trial-{best['trial']:04d}"
    run_dir, data_dir = out / name, out / f"{name}-data"
    cfg = merged_data_config(RunConfig.from_dict(best["config"]), data_dir)
    steps = int(best["best_step"])
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.patience, cfg.train.metric = steps, steps, None, "loss"
    run = Run.open(run_dir) if (run_dir / CONFIG).is_file() else None
    if run is not None and run.complete and not same_config(run_dir, resolve_config(cfg)):
        raise RunError(f"{run_dir}: holds a finished run with another configuration (another study in this "
                       "--out?); use another --out")
    if run is None or not run.complete:
        # Marked before training starts, so no report ever mistakes its validation figures for held-out ones.
        marker = {"from_trial": best["trial"], "study": space.name, "data": "train+validation", "steps": steps,
                  "source_data": best["config"]["data"]["name"]}
        write_json(run_dir / METRICS, {"retrained": marker})
        api.train(cfg, run_dir, progress=progress)
        run = Run.open(run_dir)
    metrics = run.metrics
    test = metrics.get("test") or api.evaluate(run_dir, "test")
    if metrics["train"]["best_step"] != metrics["train"]["steps"]:
        from ..progress import console

        console.print(f"[yellow]note:[/yellow] {run_dir}: kept the weights of step {metrics['train']['best_step']} "
                      f"(lowest loss on the seen validation data), not the last step {metrics['train']['steps']}")
    return {"run": str(run_dir), "steps": steps, "test": test}


__all__ = ["Objective", "Param", "SearchSpace", "TuneResult", "default_storage", "export_best", "mark_pruned",
           "merged_data_config", "open_study", "requeue_interrupted", "retrain_full", "tune"]
