"""The run folder of a method that builds its model instead of training it (zero-shot kinds, ensembles):
built from the config, evaluated on validation, written like a trained run.

config.yaml, labels.json, model.safetensors (the head: label embeddings, calibration offsets or the label
map; empty for an ensemble; the rest is rebuilt from the config on load), history.jsonl (empty),
metrics.json (validation metrics; ``train`` holds the time to build and evaluate, 0 trainable
parameters, the total and the peak memory) and predictions_validation.csv; what the built model says the
folder keeps besides (its ``run_files``: an ensemble's task_state.json and targets.json). A multi-task config
(an ensemble of multi-task runs) is validated task by task on each task's data, as a trained one is.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..data import load_data
from ..data.encode import Encoded, encode
from ..io import save_tensors, write_json, write_text


class _Counting(nn.Module):
    """Passes batches through and advances a progress bar by their rows."""

    def __init__(self, model: nn.Module, bar):
        super().__init__()
        self.model, self.bar, self.done = model, bar, 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        self.done += len(input_ids)
        self.bar.update(completed=self.done)
        return out


def write_built_run(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Build the model a config describes (its method's ``build`` hook, e.g. ``{name: zero-shot, how: ...}``),
    evaluate it on the validation split and write the run folder ``out``; return its metrics. The folder is
    written beside ``out`` and swapped in when complete: a failure leaves what was there untouched."""
    from ..runs import prepare_run_dir, resolve_config, run_lock, staged_dir

    out = Path(out)
    cfg = resolve_config(cfg)
    with run_lock(out, "emotune build"):
        if not overwrite:
            prepare_run_dir(cfg, out, overwrite=False)  # refuses a finished run or another interrupted one
        with staged_dir(out) as tmp:
            metrics = _build_into(cfg, tmp, progress)
    return metrics


def _build_into(cfg: RunConfig, out: Path, progress: bool) -> dict:
    from ..inference.predictor import prepare_model, resolve_mode
    from ..methods import METHODS
    from ..progress import training_progress
    from ..runs import BEST, CONFIG, LABELS, Run, predictions_file, write_history
    from ..tasks import flat_labels
    from ..train.evaluate import evaluate_model, predict_logits
    from ..train.metrics import parameter_counts, peak_memory_mb, reset_peak_memory
    from ..train.precision import resolve_device

    start = time.perf_counter()
    reset_peak_memory(resolve_device(cfg.train.device))  # this run's own peak
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.is_multitask:  # every task's own data; labels.json keeps {task: labels}
        data = {t.name: load_data(t.data, cfg.train.seed) for t in cfg.multitask.tasks}
        label_sets = {name: d.label_names for name, d in data.items()}
        labels, labels_file = flat_labels(label_sets), label_sets
        lengths = {t.name: t.data.max_length for t in cfg.multitask.tasks}
    else:
        data = load_data(cfg.data, cfg.train.seed)
        labels = labels_file = data.label_names
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = METHODS.get(cfg.method["name"]).build(cfg, labels_file)
    counts = parameter_counts(model)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, cfg.to_yaml())
    write_json(out / LABELS, labels_file)
    for name, content in getattr(model, "run_files", {}).items():  # read back below as the run's task state
        write_json(out / name, content)
    save_tensors(out / BEST, {n: p for n, p in model.named_parameters() if n.startswith("head.")})
    write_history(out, [])
    # Evaluated exactly as `emotune evaluate` will (the run's precision, Predictor's default mode).
    run = Run(out, cfg, labels)
    task, state = run.task, run.task_state  # an ensemble's multilabel thresholds: its members' mean
    device = resolve_device(cfg.train.device)
    mode = resolve_mode(None, run, device)
    model = prepare_model(model, mode, device)
    pad_id = tokenizer.pad_token_id or 0
    eval_start = time.perf_counter()
    what = " ".join(str(cfg.method[k]) for k in ("name", "how") if k in cfg.method)
    if cfg.is_multitask:
        val = {name: d["validation"] for name, d in data.items()}
        enc = {name: Encoded(encode(tokenizer, v.texts, lengths[name]), v.labels) for name, v in val.items()}
        n_texts = sum(len(e) for e in enc.values())
        with training_progress(n_texts, enabled=progress, description=what) as bar:
            counting = _Counting(model, bar)
            logits = {name: predict_logits(counting, e, cfg.train.eval_batch_size, device, pad_id, mode.compute)
                      for name, e in enc.items()}
        gold = {name: v.labels for name, v in val.items()}
        # Per task and their mean score; the state only where there is one (a multi-label task's thresholds).
        metrics = task.metrics(logits, gold, labels, **({} if state is None else {"state": state}))
        for p in task.parts:
            p.task.write_predictions(out / predictions_file("validation", p.name), val[p.name].texts, gold[p.name],
                                     logits[p.name][:, p.columns], p.labels, state=(state or {}).get(p.name))
        sizes = {name: {s: len(v) for s, v in d.splits.items()} for name, d in data.items()}
    else:
        val = data["validation"]
        enc = Encoded(encode(tokenizer, val.texts, cfg.data.max_length), val.labels)
        n_texts = len(enc)
        with training_progress(n_texts, enabled=progress, description=what) as bar:
            metrics, logits = evaluate_model(_Counting(model, bar), enc, labels, cfg.train.eval_batch_size,
                                             device, pad_id, mode.compute, task)
        if state is not None:
            metrics = task.metrics(logits, val.labels, labels, state=state)
        task.write_predictions(out / predictions_file("validation"), val.texts, val.labels, logits, labels,
                               state=state)
        sizes = {"name": data.name, **{s: len(v) for s, v in data.splits.items()}}
    eval_s = time.perf_counter() - eval_start
    runtime = time.perf_counter() - start
    summary = {"runtime_s": runtime, "build_s": runtime - eval_s, "eval_s": eval_s,
               "texts_per_s": n_texts / max(eval_s, 1e-9), "steps": 0, "best_step": 0,
               "peak_memory_mb": peak_memory_mb(device),
               "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "rss",
               "precision": str(mode.compute).replace("torch.", ""), "device": str(device), "lr": 0.0,
               **counts}
    return run.update_metrics(completed=True, trained=False, data=sizes, train=summary, validation=metrics)
