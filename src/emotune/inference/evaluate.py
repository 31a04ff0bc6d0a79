"""Evaluate a finished run on a split of its data: the run's own inference path (precision, merged adapters),
the metrics and per-text predictions saved into its folder."""

from __future__ import annotations

from pathlib import Path

from ..data import load_data
from ..data.encode import Encoded, encode
from ..errors import ConfigError, DataError
from ..io import write_json, write_text
from ..runs import CONFIG, METRICS, TASK_STATE, Run, predictions_file, run_lock
from ..train.evaluate import evaluate_model, predict_logits
from .predictor import Predictor


def evaluate(run_dir: str | Path, split: str = "test", *, data_dir: str | None = None,
             precision: str | None = None, answers: str = "scored") -> dict:
    """Evaluate a finished run on a split of its data set; saves metrics and predictions. ``answers``
    (instruction-tuned runs): ``scored`` (every allowed answer scored) or ``generated`` (free generation read by
    a parser, kept as ``<split>_generated`` with each task's parse-failure rate)."""
    run = Run.open_finished(run_dir)
    if answers not in ("scored", "generated"):
        raise ConfigError(f"answers must be scored or generated, got {answers!r}")
    if answers == "generated" and run.config.data.task != "instruct":
        raise ConfigError("--answers generated applies to instruction-tuned decoders; this run's answers are its "
                          "outputs")
    with run_lock(run.path, "emotune evaluate"):
        return _evaluate(run, split, data_dir, precision, answers)


def _evaluate(run: Run, split: str, data_dir: str | None, precision: str | None, answers: str = "scored") -> dict:
    if run.config.is_multitask:
        return _evaluate_tasks(run, split, data_dir, precision)
    if run.config.data.task == "instruct":  # every task's answers, scored (emotune.train.instruct)
        from ..train.instruct import evaluate_instruct

        metrics = evaluate_instruct(run, split, answers=answers)
        run.update_metrics(**{split if answers == "scored" else f"{split}_generated": metrics})
        return metrics
    part, predictor, metrics, logits = _split_logits(run, split, data_dir, precision)
    state = run.task_state  # multilabel: the thresholds chosen on validation after training
    if state is not None:
        metrics = run.task.metrics(logits, part.labels, run.labels, state=state)
    metrics["precision"] = predictor.precision  # the inference mode these figures come from
    run.task.write_predictions(run.path / predictions_file(split), part.texts, part.labels, logits, run.labels,
                               state=state)
    run.update_metrics(**{split: metrics})
    return metrics


def _split_logits(run: Run, split: str, data_dir: str | None, precision: str | None):
    """A single-task run on a split of its data, through its own inference path: (the split, the predictor, the
    metrics without the task state, the logits)."""
    data_cfg = run.config.data
    if data_dir:
        data_cfg.data_dir = data_dir
    data = load_data(data_cfg, run.config.train.seed)
    part = data[split]
    if data.label_names != run.labels:
        raise DataError(f"the data's labels {data.label_names} differ from the run's {run.labels}")
    predictor = Predictor(run, precision=precision, batch_size=run.config.train.eval_batch_size)
    enc = Encoded(encode(predictor.tokenizer, part.texts, predictor.max_length), part.labels)
    metrics, logits = evaluate_model(predictor.model, enc, run.labels, predictor.batch_size, predictor.device,
                                     predictor.pad_id, predictor.dtype, run.task)
    return part, predictor, metrics, logits


def _evaluate_tasks(run: Run, split: str, data_dir: str | None, precision: str | None) -> dict:
    """A multi-task run: every task on its own data's split; metrics keyed by task, with their mean ``score``."""
    predictor = Predictor(run, precision=precision, batch_size=run.config.train.eval_batch_size)
    task, specs = run.task, {t.name: t for t in run.config.multitask.tasks}
    logits, gold, missing = {}, {}, {}
    for part in task.parts:
        data_cfg = specs[part.name].data
        if data_dir:
            data_cfg.data_dir = data_dir
        data = load_data(data_cfg, run.config.train.seed)
        if split not in data.splits:  # e.g. SemEval-2017 4A without test files: the other tasks still count
            missing[part.name] = f"its data set {data.name!r} has no {split} split"
            continue
        if data.label_names != part.labels:
            raise DataError(f"task {part.name!r}: the data's labels {data.label_names} differ from the run's "
                            f"{part.labels}")
        texts = data[split].texts
        enc = encode(predictor.tokenizer, texts, data_cfg.max_length)
        logits[part.name] = predict_logits(predictor.model, Encoded(enc, data[split].labels), predictor.batch_size,
                                           predictor.device, predictor.pad_id, predictor.dtype)
        gold[part.name] = data[split].labels
        part.task.write_predictions(run.path / predictions_file(split, part.name), texts, gold[part.name],
                                    logits[part.name][:, part.columns], part.labels,
                                    state=(run.task_state or {}).get(part.name))
    if not logits:
        raise DataError(f"no task of {run.path} has a {split} split ({'; '.join(missing.values())})")
    metrics = {**task.metrics(logits, gold, run.labels, state=run.task_state), "precision": predictor.precision}
    if missing:
        metrics["missing"] = missing  # the score is the mean over the tasks evaluated
    run.update_metrics(**{split: metrics})
    return metrics


def recalibrate(run_dir: str | Path, how: str | None, *, data_dir: str | None = None,
                precision: str | None = None) -> dict:
    """Fit a finished classification run's calibration again on its validation split (``how``: temperature,
    vector, or None to drop it), e.g. for a run trained without one. The run's config, task state, validation
    figures and predictions follow; its test figures, made with the old calibration, are removed (evaluate
    the test split again). Returns the new validation metrics."""
    run = Run.open_finished(run_dir)
    if run.config.is_multitask or run.task.name != "classification":
        raise ConfigError(f"{run.path}: calibrate applies to single-task classification runs (this is a "
                          f"{'multi-task' if run.config.is_multitask else run.task.name} run)")
    run.config.train.calibration = how
    run.config.train.validate()
    with run_lock(run.path, "emotune calibrate"):
        part, predictor, _, logits = _split_logits(run, "validation", data_dir, precision)
        state = {k: v for k, v in (run.task_state or {}).items() if k != "calibration"}
        state.update(run.task.fit_state(logits, part.labels, run.labels, calibration=how) or {})
        if state:
            write_json(run.path / TASK_STATE, state)
        else:
            (run.path / TASK_STATE).unlink(missing_ok=True)
        write_text(run.path / CONFIG, Run.open(run.path).config.with_values({"train.calibration": how}).to_yaml())
        metrics = run.task.metrics(logits, part.labels, run.labels, state=state or None)
        metrics["precision"] = predictor.precision
        run.task.write_predictions(run.path / predictions_file("validation"), part.texts, part.labels, logits,
                                   run.labels, state=state or None)
        everything = run.metrics
        everything.pop("test", None)
        (run.path / predictions_file("test")).unlink(missing_ok=True)
        write_json(run.path / METRICS, {**everything, "validation": metrics})
    return metrics
