"""The run folder of a method that builds its model instead of training it (zero-shot kinds, ensembles):
built from the config, evaluated on validation, written like a trained run.

config.yaml, labels.json, model.safetensors (the head: label embeddings, calibration offsets or the label
map; empty for an ensemble; the rest is rebuilt from the config on load), history.jsonl (empty),
metrics.json (validation metrics; ``train`` holds the time to build and evaluate, 0 trainable
parameters, the total and the peak memory) and predictions_validation.csv.
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
    from ..train.evaluate import evaluate_model
    from ..train.metrics import parameter_counts, peak_memory_mb, reset_peak_memory
    from ..train.precision import resolve_device

    start = time.perf_counter()
    reset_peak_memory(resolve_device(cfg.train.device))  # this run's own peak
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = load_data(cfg.data, cfg.train.seed)
    val = data["validation"]
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = METHODS.get(cfg.method["name"]).build(cfg, data.label_names)
    counts = parameter_counts(model)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, cfg.to_yaml())
    write_json(out / LABELS, data.label_names)
    save_tensors(out / BEST, {n: p for n, p in model.named_parameters() if n.startswith("head.")})
    write_history(out, [])
    # Evaluated exactly as `emotune evaluate` will (the run's precision, Predictor's default mode).
    run = Run(out, cfg, data.label_names)
    device = resolve_device(cfg.train.device)
    mode = resolve_mode(None, run, device)
    model = prepare_model(model, mode, device)
    enc = Encoded(encode(tokenizer, val.texts, cfg.data.max_length), val.labels)
    pad_id = tokenizer.pad_token_id or 0
    eval_start = time.perf_counter()
    what = " ".join(str(cfg.method[k]) for k in ("name", "how") if k in cfg.method)
    with training_progress(len(enc), enabled=progress, description=what) as bar:
        metrics, logits = evaluate_model(_Counting(model, bar), enc, data.label_names,
                                         cfg.train.eval_batch_size, device, pad_id, mode.compute, run.task)
    eval_s = time.perf_counter() - eval_start
    run.task.write_predictions(out / predictions_file("validation"), val.texts, val.labels, logits,
                               data.label_names)
    runtime = time.perf_counter() - start
    summary = {"runtime_s": runtime, "build_s": runtime - eval_s, "eval_s": eval_s,
               "texts_per_s": len(enc) / max(eval_s, 1e-9), "steps": 0, "best_step": 0,
               "peak_memory_mb": peak_memory_mb(device),
               "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "rss",
               "precision": str(mode.compute).replace("torch.", ""), "device": str(device), "lr": 0.0,
               **counts}
    return run.update_metrics(completed=True, trained=False,
                              data={"name": data.name, **{s: len(v) for s, v in data.splits.items()}},
                              train=summary, validation=metrics)
