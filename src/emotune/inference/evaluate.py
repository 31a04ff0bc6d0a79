"""Evaluate a finished run on a split of its data: the run's own inference path (precision, merged adapters),
the metrics and per-text predictions saved into its folder."""

from __future__ import annotations

from pathlib import Path

from ..data import load_data
from ..data.encode import Encoded, encode
from ..errors import DataError
from ..runs import Run, predictions_file, run_lock
from ..train.evaluate import evaluate_model
from .predictor import Predictor


def evaluate(run_dir: str | Path, split: str = "test", *, data_dir: str | None = None,
             precision: str | None = None) -> dict:
    """Evaluate a finished run on a split of its data set; saves metrics and predictions."""
    run = Run.open_finished(run_dir)
    with run_lock(run.path, "emotune evaluate"):
        return _evaluate(run, split, data_dir, precision)


def _evaluate(run: Run, split: str, data_dir: str | None, precision: str | None) -> dict:
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
    metrics["precision"] = predictor.precision  # the inference mode these figures come from
    run.task.write_predictions(run.path / predictions_file(split), part.texts, part.labels, logits, run.labels)
    run.update_metrics(**{split: metrics})
    return metrics
