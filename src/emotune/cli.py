"""The `emotune` command line: a thin layer over emotune.api."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import EmotuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and serve emotion and sentiment classifiers.")
out = Console()
err = Console(stderr=True)


def friendly(fn):
    """User errors become one line on stderr and exit code 2; Ctrl-C after a checkpoint exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .train.loop import Interrupted

        try:
            return fn(*args, **kwargs)
        except EmotuneError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Interrupted as e:
            err.print(f"[yellow]{e}[/yellow]", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


METRIC_ROWS = [("loss", "loss"), ("accuracy", "accuracy"), ("precision_weighted", "precision (weighted)"),
               ("recall_weighted", "recall (weighted)"), ("f1_weighted", "F1 (weighted)"),
               ("precision_macro", "precision (macro)"), ("recall_macro", "recall (macro)"),
               ("f1_macro", "F1 (macro)")]
TRAIN_ROWS = [("runtime_s", "runtime (s)"), ("steps", "steps"), ("best_step", "steps to best"),
              ("steps_per_s", "steps/s"), ("samples_per_s", "samples/s"), ("peak_memory_mb", "peak memory (MB)"),
              ("trainable_params", "trainable parameters"), ("trainable_pct", "trainable %"),
              ("precision", "precision")]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def print_metrics(metrics: dict, title: str) -> None:
    splits = [s for s in ("validation", "test") if s in metrics]
    table = Table(title=title)
    table.add_column("metric")
    for s in splits:
        table.add_column(s, justify="right")
    for key, name in METRIC_ROWS:
        table.add_row(name, *[_fmt(metrics[s].get(key)) for s in splits])
    if "train" in metrics:
        table.add_section()
        for key, name in TRAIN_ROWS:
            table.add_row(name, _fmt(metrics["train"].get(key)), *[""] * (len(splits) - 1))
    out.print(table)


@app.command()
@friendly
def train(
    dataset: str = typer.Argument(..., help="Registered data set (emotion), a CSV/TSV/JSONL file or folder, "
                                            "or a Hugging Face hub id."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder to write (resumed if interrupted)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config; options below "
                                                                       "override it."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root holding emotion/, mr/... "
                                                      "[default: $EMOTUNE_DATA_DIR, else the hub]"),
    text_column: Optional[str] = typer.Option(None, help="Text column of CSV/TSV/JSONL/hub data."),
    label_column: Optional[str] = typer.Option(None, help="Label column of CSV/TSV/JSONL/hub data."),
    model: Optional[str] = typer.Option(None, help="Encoder: minilm (default), a local folder or a hub id."),
    method: Optional[str] = typer.Option(None, help="Fine-tuning method (`emotune methods`). [default: lora]"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: the method's]."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size. [default: 16]"),
    epochs: Optional[float] = typer.Option(None, help="Maximum epochs. [default: 10]"),
    max_steps: Optional[int] = typer.Option(None, help="Maximum optimisation steps."),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N steps. [default: 250]"),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in evaluations. [default: 4]"),
    precision: Optional[str] = typer.Option(None, help="auto, fp32, bf16 or fp16. [default: auto]"),
    seed: Optional[int] = typer.Option(None, help="Random seed. [default: 42]"),
    max_train_samples: Optional[int] = typer.Option(None, help="Train on a seeded sample of N examples."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Validate/test on seeded samples of N examples."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Any config field: section.field=value, e.g. "
                                                           "method.r=16, method.target=all-linear, train.threads=2."),
    test: bool = typer.Option(False, "--test", help="Evaluate the best checkpoint on the test split when done."),
    overwrite: bool = typer.Option(False, help="Replace a finished or different run in --out."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Train a classifier; the run folder gets the config, metrics, history and best weights."""
    from . import api
    from .config import RunConfig

    cfg = RunConfig.from_yaml(config) if config else RunConfig()
    sets = [f"data.name={dataset}"]
    for key, value in [("data.data_dir", data_dir), ("data.text_column", text_column),
                       ("data.label_column", label_column), ("model.name", model), ("train.lr", lr),
                       ("train.batch_size", batch_size), ("train.max_epochs", epochs),
                       ("train.max_steps", max_steps), ("train.eval_every", eval_every),
                       ("train.patience", patience), ("train.precision", precision), ("train.seed", seed),
                       ("data.max_train_samples", max_train_samples),
                       ("data.max_eval_samples", max_eval_samples)]:
        if value is not None:
            sets.append(f"{key}={value}")
    if method is not None and method != cfg.method.get("name"):
        cfg.method = {"name": method}
    cfg = cfg.override(sets + list(set_))
    if (out_dir / "checkpoint.safetensors").exists() and not overwrite:
        err.print(f"resuming the interrupted run in {out_dir}")
    metrics = api.train(cfg, out_dir, overwrite=overwrite, progress=progress)
    if test:
        metrics["test"] = api.evaluate(out_dir, "test")
    print_metrics(metrics, f"{out_dir}")


@app.command()
@friendly
def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    split: str = typer.Option("test", help="train, validation or test."),
    data_dir: Optional[str] = typer.Option(None, help="Data root, if the data moved since training."),
    precision: Optional[str] = typer.Option(None, help="Override the run's precision (fp32, bf16)."),
):
    """Evaluate a trained run on a split; metrics.json and predictions_<split>.csv are updated."""
    from . import api

    metrics = api.evaluate(run_dir, split, data_dir=data_dir, precision=precision)
    print_metrics({split: metrics} if split in ("validation", "test") else {"test": metrics}, f"{run_dir} ({split})")


@app.command()
@friendly
def predict(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    texts: list[str] = typer.Argument(None, help="Texts to classify."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read texts from a file, one per line "
                                                                   "('-' for standard input)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: label and every class probability."),
    precision: Optional[str] = typer.Option(None, help="Override the run's precision (fp32, bf16)."),
):
    """Classify texts with a trained run."""
    from . import api
    from .data.base import read_text
    from .errors import DataError

    items = list(texts or [])
    if file is not None:
        lines = sys.stdin.read().splitlines() if str(file) == "-" else read_text(file)
        items += [line for line in lines if line.strip()]
    if not items:
        raise DataError("no texts given: pass them as arguments or with --file")
    results = api.predict(run_dir, items, precision=precision)
    if as_json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return
    table = Table()
    table.add_column("text", overflow="fold")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for r in results:
        table.add_row(r["text"], r["label"], f"{r['probabilities'][r['label']]:.3f}")
    out.print(table)


@app.command()
@friendly
def runs(root: Path = typer.Argument(Path("runs"), help="Folder to search for run folders."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List run folders with their key metrics."""
    from . import api

    rows = api.list_runs(root)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        err.print(f"no runs under {root}")
        return
    table = Table()
    cols = list(rows[0])
    for c in cols:
        table.add_column(c.replace("_", " "), justify="left" if c in ("run", "status", "data", "model", "method")
                         else "right")
    for r in rows:
        table.add_row(*[_fmt(r[c]) for c in cols])
    out.print(table)


@app.command()
def methods():
    """List the fine-tuning methods with their options."""
    from .methods import METHODS, option_help

    for name, m in METHODS.items():
        out.print(f"[bold]{name}[/bold]: {m.description} (default lr {m.lr:g}, warm-up {m.warmup_ratio:g})",
                  highlight=False)
        for opt, (default, help_) in option_help(m).items():
            out.print(f"    {opt} = {default!r}: {help_}", highlight=False)


@app.command()
def datasets():
    """List the named data sets."""
    from .data import DATASETS

    for name, loader in DATASETS.items():
        doc = (sys.modules[loader.__module__].__doc__ or "").strip().splitlines()[0]
        out.print(f"[bold]{name}[/bold]: {doc}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
