"""The `emotune` command line: a thin layer over emotune.api."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
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
        from .errors import Interrupted

        try:
            return fn(*args, **kwargs)
        except EmotuneError as e:
            if _main_process():  # data-parallel processes share their errors: one line, not one per process
                err.print(f"[red]error:[/red] {escape(_one_line(str(e)))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Interrupted as e:
            if _main_process():
                err.print(f"[yellow]{escape(str(e))}[/yellow]", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def _main_process() -> bool:
    """False in the other processes of a data-parallel run (torchrun / accelerate launch set RANK)."""
    return os.environ.get("RANK", "0") == "0"


def _one_line(text: str) -> str:
    """Messages that quote user text (a file's line, a YAML error) stay on one line."""
    return " ".join(part.strip() for part in text.split("\n") if part.strip()) if "\n" in text else text


def warn(message: str) -> None:
    """One plain line on stderr (user text in it is never read as markup)."""
    err.print(f"[yellow]warning:[/yellow] {escape(_one_line(message))}", highlight=False, soft_wrap=True)


def _set_typed(cfg, values: dict):
    """The config with CLI options set as the typed values they are (never re-read as YAML)."""
    return cfg.with_values({k: v for k, v in values.items() if v is not None})


METRIC_ROWS = [("score", "score (mean of the tasks' selection metrics)"), ("loss", "loss"), ("accuracy", "accuracy"), ("precision_weighted", "precision (weighted)"),
               ("recall_weighted", "recall (weighted)"), ("f1_weighted", "F1 (weighted)"),
               ("precision_macro", "precision (macro)"), ("recall_macro", "recall (macro)"),
               ("f1_macro", "F1 (macro)"), ("f1_pn", "F1-PN (mean F1 of positive, negative)"),
               ("precision_micro", "precision (micro)"), ("recall_micro", "recall (micro)"),
               ("f1_micro", "F1 (micro)"), ("jaccard", "Jaccard (samples)"), ("exact_match", "exact match"),
               ("pearson", "Pearson r (mean over targets)"), ("spearman", "Spearman rho (mean)"),
               ("mse", "MSE (mean)"), ("mae", "MAE (mean)")]
# SemEval-2017 4A's names, shown for positive/negative data (where f1_pn exists).
SENTIMENT_ROW_NAMES = {"recall_macro": "recall (macro) = AvgRec"}
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


def _task_names(split_metrics: dict) -> list[str]:
    return [k for k, v in split_metrics.items() if isinstance(v, dict) and k not in ("per_class", "per_target", "missing")]


def print_metrics(metrics: dict, title: str, splits: tuple[str, ...] = ("validation", "test")) -> None:
    """A metrics table with one column per split in ``splits`` found in ``metrics``; the training figures
    (``metrics["train"]``) below them unless ``train`` is one of the splits shown."""
    splits = [s for s in splits if s in metrics]
    tasks = next((_task_names(metrics[s]) for s in splits if "score" in metrics[s]), [])
    for name in tasks:  # a multi-task run: a table per task, then the mean score and the training figures
        print_metrics({s: metrics[s].get(name, {}) for s in splits}, f"{title} · {name}", tuple(splits))
    if tasks:
        metrics = {**{s: {"score": metrics[s].get("score")} for s in splits},
                   **({"train": metrics["train"]} if "train" in metrics else {})}
    table = Table(title=escape(title))
    table.add_column("metric")
    for s in splits:
        table.add_column(s, justify="right")
    sentiment = any("f1_pn" in metrics[s] for s in splits)
    for key, name in METRIC_ROWS:
        if any(key in metrics[s] for s in splits):  # f1_pn only exists for positive/negative data
            name = SENTIMENT_ROW_NAMES.get(key, name) if sentiment else name
            table.add_row(name, *[_fmt(metrics[s].get(key)) for s in splits])
    targets = next((list(metrics[s]["per_target"]) for s in splits if "per_target" in metrics[s]), [])
    for target in targets:  # regression: each target's Pearson r
        table.add_row(f"Pearson r, {escape(target)}",
                      *[_fmt(metrics[s].get("per_target", {}).get(target, {}).get("pearson")) for s in splits])
    multilabel = next((metrics[s]["per_class"] for s in splits if "jaccard" in metrics[s]), {})
    for label, row in multilabel.items():  # multilabel: each label's F1 (at its threshold)
        cut = f" (threshold {row['threshold']:.2f})" if "threshold" in row else ""
        table.add_row(f"F1, {escape(label)}{cut}",
                      *[_fmt(metrics[s].get("per_class", {}).get(label, {}).get("f1")) for s in splits])
    if "train" in metrics and "train" not in splits and splits:
        table.add_section()
        for key, name in TRAIN_ROWS:
            table.add_row(name, _fmt(metrics["train"].get(key)), *[""] * (len(splits) - 1))
    out.print(table)


@app.command()
@friendly
def train(
    dataset: Optional[str] = typer.Argument(None, help="Registered data set (emotion), a CSV/TSV/JSONL file or "
                                                       "folder, an instruction folder (`emotune instruct-data`; "
                                                       "with a causal LM such as --model smollm2), or a Hugging "
                                                       "Face hub id; optional with a --config that names its data "
                                                       "or tasks."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder to write (resumed if interrupted)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config; options below "
                                                                       "override it."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root holding emotion/, mr/... "
                                                      "(default: $EMOTUNE_DATA_DIR, else the hub)"),
    text_column: Optional[str] = typer.Option(None, help="Text column of CSV/TSV/JSONL/hub data."),
    label_column: Optional[str] = typer.Option(None, help="Label column of CSV/TSV/JSONL/hub data."),
    task: Optional[str] = typer.Option(None, help="classification, multilabel or regression (default: what the "
                                                  "data set declares; multilabel with --label-delimiter or "
                                                  "--label-columns; regression with --target-columns; instruct "
                                                  "for an instruction folder)."),
    target_columns: Optional[str] = typer.Option(None, help="Regression: numeric target columns of CSV/TSV/JSONL "
                                                            "data, comma-separated (e.g. V,A,D)."),
    label_delimiter: Optional[str] = typer.Option(None, help="Multi-label: the label column holds several labels "
                                                             "separated by this (e.g. ',')."),
    label_columns: Optional[str] = typer.Option(None, help="Multi-label: one 0/1 column per label of "
                                                           "CSV/TSV/JSONL data, comma-separated (e.g. joy,anger)."),
    model: Optional[str] = typer.Option(None, help="Encoder: minilm (default), a local folder or a hub id; or a "
                                                   "classic model (`emotune models`: baseline, bilstm...); or, for "
                                                   "instruction folders, a causal LM (smollm2, gemma-3-270m)."),
    method: Optional[str] = typer.Option(None, help="Fine-tuning method (`emotune methods`). (default: lora; "
                                                    "full for classic models)"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the method's)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size. (default: 16)"),
    epochs: Optional[float] = typer.Option(None, help="Maximum epochs. (default: 10)"),
    max_steps: Optional[int] = typer.Option(None, help="Maximum optimisation steps."),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N steps. (default: 250)"),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in evaluations. (default: 4)"),
    precision: Optional[str] = typer.Option(None, help="auto, fp32, bf16 or fp16. (default: auto)"),
    seed: Optional[int] = typer.Option(None, help="Random seed. (default: 42)"),
    max_train_samples: Optional[int] = typer.Option(None, help="Train on a seeded sample of N examples."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Validate/test on seeded samples of N examples."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Any config field: section.field=value, e.g. "
                                                           "method.r=16, method.target=all-linear, train.threads=2."),
    test: bool = typer.Option(False, "--test", help="Evaluate the best checkpoint on the test split when done."),
    overwrite: bool = typer.Option(False, help="Replace a finished or different run in --out."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    processes: Optional[int] = typer.Option(None, "--processes", help="Train data-parallel in N processes on this "
                                            "machine, started through torchrun (on the CPU one thread each; "
                                            "the batch size stays the global one). Under torchrun or "
                                            "accelerate launch, leave it out."),
    deepspeed: Optional[str] = typer.Option(None, "--deepspeed", help="A DeepSpeed JSON config "
                                            "(experiments/deepspeed/zero2.json, zero3-offload.json): ZeRO through a "
                                            "DeepSpeed engine, \"auto\" values from this run's config (pip install "
                                            "'emotune[deepspeed]'). accelerate launch --use_deepspeed "
                                            "--deepspeed_config_file F passes F without it."),
):
    """Train a classifier; the run folder gets the config, metrics, history and best weights."""
    from . import api
    from .config import RunConfig

    from .errors import ConfigError
    from .train.distributed import accelerate_cpu_processes, launch

    n = processes if processes is not None else accelerate_cpu_processes()
    if n is not None and n < 1:
        raise ConfigError(f"--processes must be at least 1, got {n}")
    if n and n > 1 and "WORLD_SIZE" not in os.environ:  # start the N processes, each running this command
        launch(n, _without_option(sys.argv[1:], "--processes"))
        return

    if dataset is None and config is None:
        raise ConfigError("name a data set (e.g. `emotune train emotion --out runs/x`) or pass --config")
    cfg = RunConfig.from_yaml(config) if config else RunConfig()
    if method is None and config is None and model is not None:
        from .models import is_classic

        method = "full" if is_classic(model) else None  # classic models' only method
    if method is not None and method != cfg.method.get("name"):
        cfg.method = {"name": method}
    cfg = _set_typed(cfg, {"data.name": dataset, "data.data_dir": data_dir, "data.text_column": text_column,
                           "data.label_column": label_column, "data.task": task,
                           "data.target_columns": target_columns, "data.label_delimiter": label_delimiter,
                           "data.label_columns": label_columns, "model.name": model, "train.lr": lr,
                           "train.batch_size": batch_size, "train.max_epochs": epochs,
                           "train.max_steps": max_steps, "train.eval_every": eval_every,
                           "train.patience": patience, "train.precision": precision, "train.seed": seed,
                           "data.max_train_samples": max_train_samples,
                           "data.max_eval_samples": max_eval_samples, "train.deepspeed": deepspeed})
    cfg = cfg.override(list(set_))  # --set values are YAML: lists, mappings, null
    from .runs import CHECKPOINT

    if (out_dir / CHECKPOINT).exists() and not overwrite and _main_process():
        err.print(f"resuming the interrupted run in {escape(str(out_dir))}", highlight=False)
    metrics = api.train(cfg, out_dir, overwrite=overwrite, progress=progress)
    if not _main_process():  # data-parallel: the main process tests and prints
        return
    if test:
        metrics["test"] = api.evaluate(out_dir, "test")
    print_metrics(metrics, f"{out_dir}")


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


@app.command("instruct-data")
@friendly
def instruct_data(
    config: Path = typer.Argument(..., help="A multi-task run config whose tasks are the sources "
                                            "(experiments/instruct.yaml)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write train/validation/test.jsonl and "
                                                          "tasks.json into."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root holding emotion/, mr/... "
                                                      "(default: $EMOTUNE_DATA_DIR, else the hub)"),
    per_task: Optional[int] = typer.Option(None, help="At most N training texts per task (a seeded sample)."),
    per_task_eval: Optional[int] = typer.Option(None, help="At most N validation and N test texts per task."),
    seed: int = typer.Option(42, help="Seed of the samples and of the template each example gets."),
):
    """Build instruction data (instruction, input, output) from a multi-task config's tasks, for
    `emotune train FOLDER --model smollm2`."""
    from .config import RunConfig
    from .data.instruct import instruction_rows, write_instructions

    cfg = RunConfig.from_yaml(config)
    if data_dir:
        cfg.data.data_dir = data_dir
    rows, tasks = instruction_rows(cfg, per_task, per_task_eval, seed)
    write_instructions(rows, tasks, out_dir)
    table = Table(title=escape(str(out_dir)))
    for col in ("task", "type", "train", "validation", "test"):
        table.add_column(col, justify="left" if col in ("task", "type") else "right")
    for name, desc in tasks.items():
        table.add_row(escape(name), desc["type"], *[str(sum(r["task"] == name for r in rows[s]))
                                                    for s in ("train", "validation", "test")])
    out.print(table)


@app.command()
@friendly
def zeroshot(
    dataset: str = typer.Argument(..., help="Registered data set (mr, emotion...), a CSV/TSV/JSONL file or folder, "
                                            "or a Hugging Face hub id."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder to write."),
    how: Optional[str] = typer.Option(None, help="embed (sentence embeddings vs label descriptions), llm (label "
                                                 "likelihood under a small LM) or transfer (a run trained on other "
                                                 "data, with a label map). (default: embed)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config; options below "
                                                                       "override it."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root holding emotion/, mr/... "
                                                      "(default: $EMOTUNE_DATA_DIR, else the hub)"),
    text_column: Optional[str] = typer.Option(None, help="Text column of CSV/TSV/JSONL/hub data."),
    label_column: Optional[str] = typer.Option(None, help="Label column of CSV/TSV/JSONL/hub data."),
    model: Optional[str] = typer.Option(None, help="embed: the encoder (default minilm); llm: a causal LM "
                                                   "(default smollm2: SmolLM2-135M-Instruct, pip-shipped)."),
    source: Optional[Path] = typer.Option(None, help="transfer: the trained run folder to transfer from."),
    label_map: list[str] = typer.Option([], "--map", help="transfer: SOURCE=TARGET label pairs (repeatable), e.g. "
                                                          "--map joy=positive --map sadness=negative; or one "
                                                          "named map (emotion-polarity)."),
    precision: Optional[str] = typer.Option(None, help="auto, fp32, bf16 or fp16. (default: auto)"),
    max_eval_samples: Optional[int] = typer.Option(None, help="Validate/test on seeded samples of N examples."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Any config field, e.g. method.calibrate=none, "
                                                           "method.template='This review is {label}.'"),
    test: bool = typer.Option(False, "--test", help="Also evaluate on the test split."),
    overwrite: bool = typer.Option(False, help="Replace a finished or different run in --out."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Classify without training on the data: a run folder like a trained one (evaluate, predict, serve, report).

    Options of each kind are method fields (`emotune methods` lists them), set with --set method.NAME=VALUE."""
    from . import api
    from .config import RunConfig
    from .errors import ConfigError

    cfg = RunConfig.from_yaml(config) if config else RunConfig()
    spec = dict(cfg.method) if cfg.method.get("name") == "zero-shot" else {"name": "zero-shot"}
    spec["how"] = how or spec.get("how", "embed")
    if source is not None:
        spec["source"] = str(source.expanduser().resolve())  # the run folder works from any directory later
    if len(label_map) == 1 and "=" not in label_map[0]:
        spec["label_map"] = label_map[0]
    elif label_map:
        pairs = [m.partition("=") for m in label_map]
        if any(not sep or not a.strip() or not b.strip() for a, sep, b in pairs):
            raise ConfigError("--map takes SOURCE=TARGET label pairs, e.g. --map joy=positive")
        spec["label_map"] = {a.strip(): b.strip() for a, _, b in pairs}
    cfg.method = spec
    if model is None and spec["how"] == "llm" and cfg.model.name == "minilm":
        model = "smollm2"  # the llm kind's default model
    cfg = _set_typed(cfg, {"data.name": dataset, "data.data_dir": data_dir, "data.text_column": text_column,
                           "data.label_column": label_column, "model.name": model, "train.precision": precision,
                           "data.max_eval_samples": max_eval_samples})
    cfg = cfg.override(list(set_))
    metrics = api.train(cfg, out_dir, overwrite=overwrite, progress=progress)
    if test:
        metrics["test"] = api.evaluate(out_dir, "test")
    print_metrics(metrics, f"{out_dir} (zero-shot {spec['how']})")


@app.command()
@friendly
def ensemble(
    members: list[Path] = typer.Argument(..., help="Two or more finished run folders on the same data and labels "
                                                   "(any task type, multi-task too; e.g. one configuration "
                                                   "trained with several --seed values and --set data.seed=42)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder to write."),
    weight: list[float] = typer.Option([], "--weight", "-w", help="One weight per member, in order "
                                                                 "(repeatable; default: a plain mean)."),
    precision: Optional[str] = typer.Option(None, help="auto, fp32, bf16 or fp16. (default: the first member's)"),
    test: bool = typer.Option(False, "--test", help="Also evaluate on the test split."),
    overwrite: bool = typer.Option(False, help="Replace a finished or different run in --out."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Average the outputs of finished runs (class or label probabilities, regression values; per task for
    multi-task runs): a run folder like a trained one, validated on the members' own validation split
    (evaluate, predict, serve, report)."""
    from . import api
    from .runs import Run

    first = Run.open(members[0])
    cfg = _set_typed(first.config, {"train.precision": precision})
    cfg.method = {"name": "ensemble", "members": [str(m.expanduser().resolve()) for m in members],
                  **({"weights": list(weight)} if weight else {})}
    metrics = api.train(cfg, out_dir, overwrite=overwrite, progress=progress)
    if test:
        metrics["test"] = api.evaluate(out_dir, "test")
    print_metrics(metrics, f"{out_dir} (ensemble of {len(members)})")


@app.command()
@friendly
def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    split: str = typer.Option("test", help="train, validation or test."),
    data_dir: Optional[str] = typer.Option(None, help="Data root, if the data moved since training."),
    precision: Optional[str] = typer.Option(None, help="Override the run's precision (fp32, bf16)."),
    answers: str = typer.Option("scored", help="Instruction-tuned decoders: scored (every allowed answer "
                                               "scored) or generated (free generation read by a parser; kept as "
                                               "<split>_generated with each task's parse-failure rate)."),
):
    """Evaluate a trained run on a split; metrics.json and predictions_<split>.csv are updated."""
    from . import api

    metrics = api.evaluate(run_dir, split, data_dir=data_dir, precision=precision, answers=answers)
    if answers == "generated":  # per task only: generated answers have no loss, so no mean score
        for name, m in metrics.items():
            out.print(f"{escape(name)}: parse failures {m['parse_failure_rate']:.1%}", highlight=False)
            if m["parse_failure_rate"] < 1:  # with nothing parsed there are no metrics to show
                print_metrics({split: m}, f"{run_dir} ({split}, generated) · {name}", splits=(split,))
        return
    print_metrics({split: metrics}, f"{run_dir} ({split})", splits=(split,))


@app.command()
@friendly
def predict(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    texts: list[str] = typer.Argument(None, help="Texts to classify."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read texts from a file, one per line "
                                                                   "('-' for standard input; blank lines skipped)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: label and every class probability."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Stream --file's predictions to this JSON-lines "
                                                                      "file in chunks (one record per text, with its "
                                                                      "0-based input `line`); an existing one is "
                                                                      "resumed."),
    chunk: int = typer.Option(4096, help="With --out: input lines read, predicted and written at a time."),
    shard: Optional[str] = typer.Option(None, help="With --out: predict only the input lines whose 0-based number "
                                                   "% N == i, given as i/N (e.g. 0/2 and 1/2 in two processes)."),
    progress: bool = typer.Option(True, help="With --out: a progress line (texts/s) per chunk on stderr."),
    precision: Optional[str] = typer.Option(None, help="fp32, bf16 (bf16 weights), bf16-autocast, int8 (dynamic "
                                                       "quantization) or auto (default: as the run trained)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch (default: every core)."),
    batch_size: int = typer.Option(64, help="Texts per forward pass (texts are sorted by length first)."),
    streams: Optional[int] = typer.Option(None, help="Batches run side by side (default: 2 with an explicit "
                                                     "precision on 2+ threads)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model first (about 30 s; "
                                                           "faster on long inputs)."),
    unfinished: bool = typer.Option(False, "--unfinished", help="Predict with an interrupted run's best weights "
                                                                "so far (refused otherwise)."),
    min_confidence: Optional[float] = typer.Option(None, help="Abstain below this top (calibrated) probability: "
                                                              "the label becomes `uncertain` (0-1)."),
):
    """Classify texts with a trained run; with --file and --out, stream a corpus of any size to a JSON-lines file."""
    from . import api
    from .data.base import read_text, split_lines
    from .errors import ConfigError, DataError

    def load() -> api.Predictor:
        predictor = api.Predictor(run_dir, precision=precision, threads=threads, batch_size=batch_size,
                                  streams=streams, compile=compile_, unfinished=unfinished)
        if not predictor.run.complete:
            err.print(f"warning: {escape(str(run_dir))} has not finished training; predicting with its best weights "
                      f"so far (step {predictor.step})", highlight=False, soft_wrap=True)
        return predictor

    if out_file is not None or shard is not None:
        from .inference.stream import parse_shard

        if out_file is None:
            raise ConfigError("--shard needs --out (the JSON-lines file a shard's predictions stream to)")
        if file is None or texts:
            raise ConfigError("--out streams the texts of --file (a path, or - for standard input); pass them there")
        summary = api.predict_file(load, str(file), out_file, parse_shard(shard) if shard else (0, 1), chunk,
                                   min_confidence, progress)
        if summary["complete"]:
            out.print(f"{escape(str(out_file))} is complete: {summary['skipped']:,} predictions; nothing to do",
                      highlight=False, soft_wrap=True)
        else:
            n, rate, rss = summary["texts"], summary["texts_per_s"], summary["peak_rss_mb"]
            out.print(f"predicted {n:,} texts in {summary['seconds']:.1f} s ({rate:,.1f} texts/s; "
                      f"{summary['skipped']:,} already in {escape(str(out_file))}); peak RSS {rss:,.0f} MB",
                      highlight=False, soft_wrap=True)
        return
    items = list(texts or [])
    if file is not None:
        lines = split_lines(sys.stdin.read()) if str(file) == "-" else read_text(file)
        items += [line for line in lines if line.strip()]
    if not items:
        raise DataError("no texts given: pass them as arguments or with --file")
    results = load().predict(items, min_confidence=min_confidence)
    if as_json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return
    table = Table()
    table.add_column("text", overflow="fold")
    if results and "tasks" in results[0]:  # a multi-task run: one column per task
        for name in results[0]["tasks"]:
            table.add_column(escape(name))
        for r in results:
            table.add_row(escape(r["text"]), *[escape(_summary(v)) for v in r["tasks"].values()])
    elif results and "scores" in results[0]:  # multilabel: the labels over their thresholds
        table.add_column("labels")
        for r in results:
            table.add_row(escape(r["text"]), escape(_summary(r)))
    elif results and "values" in results[0]:  # regression: one column per target
        for name in results[0]["values"]:
            table.add_column(escape(name), justify="right")
        for r in results:
            table.add_row(escape(r["text"]), *[f"{v:.3f}" for v in r["values"].values()])
    else:
        table.add_column("label")
        table.add_column("probability", justify="right")
        for r in results:
            table.add_row(escape(r["text"]), escape(r["label"]), f"{max(r['probabilities'].values()):.3f}")
    out.print(table)


@app.command()
@friendly
def calibrate(
    run_dir: Path = typer.Argument(..., help="A finished classification run folder."),
    how: str = typer.Option("temperature", help="temperature (predictions unchanged), vector (a weight and bias "
                                                "per class) or none (drop the calibration)."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root (default: the run's)."),
):
    """Fit the run's calibration again on its validation split (e.g. a run trained without one); its test
    figures are removed: evaluate the test split again."""
    from . import api

    metrics = api.recalibrate(run_dir, None if how == "none" else how, data_dir=data_dir)
    before = {k: metrics.get(f"{k}_uncalibrated") for k in ("ece", "brier", "nll")}
    out.print(f"{escape(str(run_dir))}: validation ECE {100 * metrics['ece']:.2f}%, Brier {metrics['brier']:.4f}, "
              f"NLL {metrics['nll']:.4f}" + (f" (before: ECE {100 * before['ece']:.2f}%, Brier {before['brier']:.4f}, "
                                             f"NLL {before['nll']:.4f})" if before["ece"] is not None else ""))


@app.command()
@friendly
def explain(
    run_dir: Path = typer.Argument(..., help="A finished run folder (a pretrained-encoder run)."),
    text: str = typer.Argument(..., help="The text to explain."),
    target: Optional[str] = typer.Option(None, help="Label (task:label in multi-task runs) or regression target "
                                                    "to explain (default: the predicted class)."),
    method: str = typer.Option("ig", help="ig (Integrated Gradients, Captum) or gxi (gradient x input: one "
                                          "backward pass, faster, rougher)."),
    steps: int = typer.Option(20, help="Integrated Gradients: points on the path from the all-[PAD] baseline."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the words with their character offsets and "
                                                       "scores."),
):
    """Which words pushed the prediction: green towards the target, red away from it."""
    from rich.text import Text

    from .inference.explain import Explainer

    e = Explainer(run_dir).explain(text, target, method, steps)
    if as_json:
        print(json.dumps(e.as_dict(), ensure_ascii=False, indent=2))
        return
    top = max((abs(w["score"]) for w in e.words), default=0.0) or 1.0
    line, last = Text(), 0
    for w in e.words:
        line.append(text[last:w["start"]])
        shade = int(255 * (1 - min(1.0, abs(w["score"]) / top)))
        colour = f"rgb({shade},255,{shade})" if w["score"] > 0 else f"rgb(255,{shade},{shade})"
        line.append(text[w["start"]:w["end"]], style=f"black on {colour}")
        last = w["end"]
    line.append(text[last:])
    out.print(f"target [bold]{escape(e.target)}[/] ({e.value:.3f}); predicted {escape(e.predicted)}; "
              f"{e.method}, {e.ms:.0f} ms")
    out.print(line)
    ranked = sorted(e.words, key=lambda w: -abs(w["score"]))[:5]
    out.print("strongest: " + ", ".join(f"{escape(w['word'])} {w['score']:+.3f}" for w in ranked))


def _summary(row: dict) -> str:
    """One task's prediction in a few characters: `joy 0.93`, `V 3.10 A 2.95`, or a label set
    (`joy 0.91, love 0.62`; `-` when no label reaches its threshold)."""
    if "values" in row:
        return " ".join(f"{k} {v:.2f}" for k, v in row["values"].items())
    if "scores" in row:
        return ", ".join(f"{k} {row['scores'][k]:.2f}" for k in row["labels"]) or "-"
    if "probabilities" in row:
        return f"{row['label']} {max(row['probabilities'].values()):.2f}"
    return ", ".join(row.get("labels", [])) or "-"


@app.command()
@friendly
def runs(root: Path = typer.Argument(Path("runs"), help="Folder to search for run folders."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List run folders with their key metrics."""
    rows = _list_runs(root)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        err.print(f"no runs under {escape(str(root))}", highlight=False)
        return
    table = Table()
    cols = list(rows[0])
    for c in cols:
        table.add_column(c.replace("_", " "), justify="left" if c in ("run", "status", "data", "model", "method")
                         else "right")
    for r in rows:
        table.add_row(*[escape(_fmt(r.get(c))) for c in cols])
    out.print(table)


def _list_runs(root: Path) -> list[dict]:
    """api.list_runs, except that a run folder it cannot read (a corrupt metrics.json, an unknown config
    field) is skipped with a one-line warning instead of stopping the listing."""
    from . import api

    return api.list_runs(root, on_error=lambda folder, why: warn(f"skipped {folder}: {why}"))


@app.command()
def methods():
    """List the fine-tuning methods with their options."""
    from rich.markup import escape

    from .methods import METHODS, option_help

    for name, m in METHODS.items():
        figures = f"default lr {m.lr:g}, warm-up {m.warmup_ratio:g}" if m.trains else "no training"
        out.print(f"[bold]{name}[/bold]: {escape(m.description)} ({figures})", highlight=False)
        reason = m.unavailable() if m.unavailable else None
        if reason:
            out.print(f"    not available here: {escape(reason)}", highlight=False)
        for opt, (default, help_) in option_help(m).items():
            out.print(f"    {opt} = {escape(repr(default))}: {escape(help_)}", highlight=False)


@app.command()
def models():
    """List the classic models (model.name) with their options (model.options.NAME=value)."""
    from .models import MODELS
    from .models.classic import EmbeddingOptions, option_help

    out.print("Any other model.name is a pretrained transformer encoder: minilm (default), a local folder or a "
              "Hugging Face model id. Classic models train with method full; the lab's recipe adds "
              "train.metric=loss train.patience=5.", highlight=False)
    out.print("[bold]every classic model[/bold]: the vocabulary and its word vectors", highlight=False)
    for opt, (default, help_) in option_help(EmbeddingOptions).items():
        out.print(f"    {opt} = {escape(repr(default))}: {escape(help_)}", highlight=False)
    for name, m in MODELS.items():
        out.print(f"[bold]{name}[/bold]: {escape(m.description)} (default lr {m.lr:g})", highlight=False)
        for opt, (default, help_) in option_help(m.options_cls, own=True).items():
            out.print(f"    {opt} = {escape(repr(default))}: {escape(help_)}", highlight=False)


@app.command()
def datasets():
    """List the named data sets."""
    from .data import DATASETS

    for name, loader in DATASETS.items():
        doc = (sys.modules[loader.__module__].__doc__ or "").strip().splitlines()[0]
        out.print(f"[bold]{name}[/bold]: {escape(doc)}", highlight=False)


@app.command()
def tasks():
    """List the task types (data.task) with the metrics that can select checkpoints."""
    from .tasks import TASKS

    for name, task in TASKS.items():
        doc = (sys.modules[type(task).__module__].__doc__ or "").strip().splitlines()[0]
        metrics = ", ".join([*task.metrics_higher_is_better, "loss"])
        out.print(f"[bold]{name}[/bold]: {escape(doc)} Metrics: {metrics} (default {task.default_metric}).",
                  highlight=False)


def _settings(set_: list[str], data_dir: Optional[str]) -> list:
    """--data-dir and --set as (key, value) pairs; exponent numbers such as 2e-5 are read as numbers."""
    from .experiments.settings import parse_assignment

    pairs = [("data.data_dir", data_dir)] if data_dir else []
    return pairs + [parse_assignment(s) for s in set_]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@app.command()
@friendly
def grid(
    file: Path = typer.Argument(..., help="Experiment YAML: a base config plus axes and/or groups of axes."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the grid's run folders, one per cell."),
    workers: int = typer.Option(1, "--workers", "-j", help="Cells trained at once, each in its own process "
                                                           "with an equal share of the CPU threads."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and their status; train nothing."),
    only: list[str] = typer.Option([], "--only", help="Only cells whose folder matches this glob, e.g. 'lora/*' "
                                                      "(repeatable)."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root for every cell "
                                                      "(default: $EMOTUNE_DATA_DIR, else the hub)"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a field in every cell, e.g. "
                                                           "train.max_epochs=3 (part of each cell's config)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Train every cell of an experiment grid; finished cells are skipped, an interrupted one resumes.
    Under torchrun (`torchrun --nproc-per-node 2 -m emotune.cli grid ...`) each cell trains data-parallel."""
    from .experiments.grid import Grid, GridInterrupted, plan, run_grid
    from .experiments.settings import labels

    g = Grid.from_yaml(file, _settings(set_, data_dir)).select(only)
    if dry_run:
        table = Table(title=escape(f"{g.name}: {len(g.cells)} cells -> {out_dir}"))
        for c in ("cell", "status", "settings"):
            table.add_column(c)
        statuses = plan(g, out_dir)
        for cell, status in statuses:
            table.add_row(escape(cell.name), status, escape(", ".join(labels(cell.values))))
        out.print(table)
        counts = {s: sum(st == s for _, st in statuses) for s in dict.fromkeys(st for _, st in statuses)}
        out.print(", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)
        return
    try:
        results = run_grid(g, out_dir, workers=workers, progress=progress)
    except GridInterrupted as e:
        if _main_process():
            err.print(f"[yellow]{escape(str(e))}[/yellow]", highlight=False)
        raise typer.Exit(130) from None
    if not _main_process():  # each cell trained data-parallel (torchrun): the main process prints
        return
    table = Table(title=escape(f"{g.name} -> {out_dir}"))
    for c in ("cell", "status", "val accuracy", "val F1 (w)", "runtime", "note"):
        table.add_column(c, justify="right" if c.startswith(("val", "runtime")) else "left")
    for r in results:
        m = r.metrics
        table.add_row(escape(r.cell.name), r.status, _fmt(m.get("val_accuracy")),
                      _fmt(m.get("val_f1_weighted")),
                      _minutes(m["runtime_s"]) if m.get("runtime_s") else "", escape(r.error or ""))
    out.print(table)
    summary = json.loads((out_dir / "grid.json").read_text(encoding="utf-8"))
    out.print(escape(f"grid wall time: this session {_minutes(summary['sessions'][-1]['wall_s'])}, all sessions "
                     f"{_minutes(summary['wall_s'])}; summary in {out_dir / 'grid.json'}"), highlight=False)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
@friendly
def report(
    dirs: list[Path] = typer.Argument(..., help="Folders holding run folders (grids, searches, single runs)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for report.md, report.html, plots, runs.csv."),
    metric: Optional[str] = typer.Option(None, help="Validation metric that chooses each family's run (default: "
                                                    "the runs' own train.metric when they share one, else "
                                                    "accuracy)."),
    examples: int = typer.Option(5, help="Right and wrong test predictions shown per chosen run."),
    seed: int = typer.Option(0, help="Seed for picking the example predictions."),
    test: bool = typer.Option(True, "--test/--no-test", help="Evaluate a chosen run on test when it has no test "
                                                             "figures yet (no other run is ever tested)."),
    data_dir: Optional[str] = typer.Option(None, help="Data root, if the data moved since training."),
    title: Optional[str] = typer.Option(None, help="Report title."),
    max_columns: int = typer.Option(12, help="At most this many runs per family table (the best on validation)."),
    note: str = typer.Option("", help="A paragraph placed under the title."),
):
    """Compare runs: per-family validation tables, chosen runs on test, examples, plots (Markdown + HTML)."""
    from .report import build_report

    r = build_report(dirs, out_dir, metric=metric, examples=examples, seed=seed, evaluate_test=test,
                     data_dir=data_dir, title=title, max_columns=max_columns, note=note)
    from .report.collect import parts
    from .report.tables import task_value

    # Each family on its own selection metric; a multi-task run adds a row per task on the task's metric.
    table = Table(title="chosen on validation")
    for c in ("family", "run", "metric", "validation", "test", "test accuracy"):
        table.add_column(escape(c), justify="left" if c in ("family", "run", "metric") else "right")
    for fam, e in r.chosen.items():
        m = r.metrics.get(fam, r.metric)
        table.add_row(escape(fam), escape(e.name), escape(m), _fmt(e.value("validation", m)),
                      _fmt(e.value("test", m)), _fmt(e.value("test", "accuracy")))
        for p in parts(e):
            table.add_row("", escape(f"· task {p.name}"), escape(p.metric),
                          *[_fmt(task_value(e, s, p.name, p.metric)) for s in ("validation", "test")],
                          _fmt(task_value(e, "test", p.name, "accuracy")))
    out.print(table)
    if r.evaluated:
        out.print(escape(f"evaluated on test now: {', '.join(map(str, r.evaluated))}"), highlight=False)
    out.print(escape(f"report: {r.markdown} and {r.html} ({len(r.figures)} plots)"), highlight=False)


@app.command()
@friendly
def tune(
    space: Path = typer.Argument(..., help="Search-space YAML: base config, objective, sampler, pruner, space."),
    trials: int = typer.Option(..., "--trials", "-n", help="Trials the study holds when done (complete + pruned, "
                                                           "every worker counted); a resumed study runs the rest."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for trial runs, best.yaml and the "
                                                                     "default SQLite study (default: runs/<study>)"),
    storage: Optional[str] = typer.Option(None, envvar="EMOTUNE_STORAGE",
                                          help="SQLAlchemy URL of the study database that workers share, e.g. "
                                               "postgresql://user:pass@host:5432/db "
                                               "(default: sqlite:///<out>/optuna.db)"),
    study: Optional[str] = typer.Option(None, help="Study name (default: the file's `study`, else its name)"),
    timeout: Optional[float] = typer.Option(None, help="Start no new trial after this many seconds."),
    retrain_full: bool = typer.Option(False, "--retrain-full", help="Retrain the best trial on train+validation "
                                                                    "for its best step count; evaluate on test once."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root (default: $EMOTUNE_DATA_DIR, else the hub)"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a base field, e.g. train.max_epochs=3."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Search hyper-parameters with Optuna (TPE + pruning); resumable, shareable across machines."""
    from .experiments.tune import SearchSpace
    from .experiments.tune import tune as run_tune

    s = SearchSpace.from_yaml(space, _settings(set_, data_dir))
    if study:
        s.name = study
    r = run_tune(s, out_dir or Path("runs") / s.name, trials=trials, storage=storage, timeout=timeout,
                 progress=progress, retrain=retrain_full)
    out.print(escape(f"study {r.study!r} in {r.storage}: {r.complete} complete, {r.pruned} pruned, "
                     f"{r.failed} failed"), highlight=False)
    if r.best is None:
        err.print("no trial has completed yet")
        return
    out.print(escape(f"best: trial {r.best['trial']}, validation {s.metric} {r.best['value']:.4f}, "
                     f"params {json.dumps(r.best['params'])}"), highlight=False)
    out.print(escape(f"best config: {r.best_config} (emotune train --config {r.best_config} ...)"), highlight=False)
    if r.retrained:
        print_metrics({"test": r.retrained["test"]}, f"{r.retrained['run']} (train+validation, "
                                                     f"{r.retrained['steps']} steps)")


@app.command()
@friendly
def serve(
    run_dirs: list[str] = typer.Argument(..., help="Run folders to serve, each as RUN (named after its folder) "
                                                   "or NAME=RUN."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    precision: str = typer.Option("auto", help="fp32, bf16, bf16-autocast, int8 or auto (bf16 where the CPU "
                                               "multiplies bfloat16 natively, else fp32)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch (default: every core)."),
    workers: int = typer.Option(1, help="Micro-batches run side by side, each on its share of the threads."),
    max_batch: int = typer.Option(32, help="Most texts in one micro-batch."),
    batch_size: int = typer.Option(16, help="Texts per forward pass: a micro-batch is sorted by length and cut "
                                            "into passes of this size, so short texts are not padded to long ones."),
    max_wait_ms: float = typer.Option(2.0, help="How long a micro-batch waits for more requests."),
    max_texts: int = typer.Option(64, help="Most texts in one request."),
    max_chars: int = typer.Option(2000, help="Most characters in one text."),
    max_body_bytes: int = typer.Option(1_000_000, help="Largest request body."),
    share: bool = typer.Option(True, help="LoRA runs on the same base model share one copy of it."),
    max_queue: int = typer.Option(256, help="Most requests waiting for or in inference; more are answered 503 "
                                            "with Retry-After."),
    timeout: float = typer.Option(30.0, help="Seconds a request may wait (queue + inference) before a 504; "
                                             "0: no limit."),
    allowed_host: Optional[list[str]] = typer.Option(
        None, "--allowed-host", help="A Host header value the server answers (repeatable; '*.example.com' "
                                     "patterns; '*': any). Default: the bound address, plus localhost, 127.0.0.1 "
                                     "and ::1 on loopback; any host when bound to 0.0.0.0."),
    log_level: str = typer.Option("warning", help="uvicorn log level (info logs every request)."),
):
    """Serve runs over HTTP: POST /v1/predict, POST /v1/explain, GET /v1/models, /health, /metrics, /docs and a
    web page at /."""
    from .serve.cli import serve as run_server

    run_server(run_dirs, host=host, port=port, precision=precision, threads=threads, workers=workers,
               max_batch=max_batch, batch_size=batch_size,
               max_wait_ms=max_wait_ms, max_texts=max_texts, max_chars=max_chars,
               max_body_bytes=max_body_bytes, share=share, max_queue=max_queue, timeout_s=timeout,
               allowed_hosts=allowed_host, log_level=log_level,
               echo=lambda msg: err.print(escape(str(msg)), highlight=False, soft_wrap=True))


@app.command()
@friendly
def compose(
    run_dirs: list[Path] = typer.Argument(..., help="Trained LoRA runs on the same base model, same rank."),
    data: str = typer.Option(..., "--data", help="The new task: a registered data set, a CSV/TSV/JSONL file or "
                                                 "folder, or a hub id."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder for the composed adapter + head."),
    shots: int = typer.Option(20, help="Labelled examples of the new task, in total: a seeded sample of its "
                                       "training split, stratified (at least one per label)."),
    trials: int = typer.Option(40, help="CMA-ES trials (candidate mixing weights)."),
    l1: float = typer.Option(0.05, help="Weight of |w|_1 in the objective (LoraHub's regularisation)."),
    head_c: float = typer.Option(0.01, help="Inverse regularisation strength of the logistic-regression head "
                                            "(on standardised features)."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root (default: $EMOTUNE_DATA_DIR, else the hub)"),
    text_column: Optional[str] = typer.Option(None, help="Text column of CSV/TSV/JSONL/hub data."),
    label_column: Optional[str] = typer.Option(None, help="Label column of CSV/TSV/JSONL/hub data."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Score on seeded samples of N validation/test "
                                                              "examples."),
    seed: int = typer.Option(42, help="Seed of the shots, the folds and the sampler."),
    test: bool = typer.Option(False, "--test", help="Also score every candidate on the test split."),
    overwrite: bool = typer.Option(False, help="Replace a finished run in --out."),
):
    """Mix LoRA adapters for a new task from a few shots (LoraHub: CMA-ES over the mixing weights, a
    logistic-regression head per candidate, no gradient through the base)."""
    from .workflows.compose import compose as run_compose

    r = run_compose(run_dirs, data, out_dir, shots=shots, trials=trials, l1=l1, c=head_c, data_dir=data_dir,
                    text_column=text_column, label_column=label_column, max_eval_samples=max_eval_samples,
                    seed=seed, test=test, overwrite=overwrite)
    splits = list(r.composed.splits)
    table = Table(title=escape(f"{out_dir}: {r.shots} shots, {trials} trials (same shots and head for every row)"))
    for c in ("encoder", "weights", "CV log-loss", *[f"{s} {m}" for s in splits for m in ("accuracy", "F1 (w)")]):
        table.add_column(c, justify="left" if c in ("encoder", "weights") else "right")
    for cand in [r.composed, *r.adapters, r.base]:
        table.add_row(escape(cand.name), " ".join(f"{w:+.3f}" for w in cand.weights or []), _fmt(cand.cv_log_loss),
                      *[_fmt(cand.splits[s][m]) for s in splits for m in ("accuracy", "f1_weighted")])
    out.print(table)
    out.print("zero-shot baseline: `emotune zeroshot` on the same data; metrics.json holds every row "
              "(composed_from, baselines).", highlight=False)


@app.command()
@friendly
def analyze(
    run_dirs: list[Path] = typer.Argument(..., help="Fine-tuned runs (full fine-tuning, LoRA...) to compare with "
                                                    "their pretrained base model."),
    top_k: int = typer.Option(10, help="Top singular vectors of each fine-tuned matrix tested for intrusion."),
    epsilon: float = typer.Option(0.5, help="Intruder threshold: largest |cosine| with every pretrained singular "
                                            "vector below this."),
    out_dir: Path = typer.Option(Path("analysis"), "--out", "-o", help="Folder for analysis.json, analysis.md "
                                                                       "and the plots (`emotune report` picks "
                                                                       "it up when given this folder)."),
):
    """Intruder dimensions and update ranks of LoRA vs full fine-tuning, per weight matrix (arXiv 2410.21228)."""
    from .report.analysis import analyze_runs as run_analysis

    r = run_analysis(run_dirs, out_dir, top_k=top_k, epsilon=epsilon,
                     on_run=lambda name: err.print(escape(f"analysing {name}"), highlight=False))
    table = Table(title=f"intruder dimensions (top-{top_k}, epsilon {epsilon})")
    for c in ("run", "method", "matrices changed", "intruders", "matrices with intruders", "mean eff. rank dW",
              "||dW||_F"):
        table.add_column(c, justify="left" if c in ("run", "method") else "right")
    for run in r.data["runs"]:
        t = run["totals"]
        table.add_row(escape(str(run["label"])), escape(str(run["method"])), _fmt(t["matrices"]), _fmt(t["intruders"]),
                      _fmt(t["matrices_with_intruders"]), _fmt(t["mean_effective_rank"]), _fmt(t["update_norm"]))
    out.print(table)
    out.print(escape(f"analysis: {r.json}, {r.markdown} ({len(r.figures)} plots)"), highlight=False)


@app.command("export")
@friendly
def export_run(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write the Transformers model to."),
    merged: bool = typer.Option(False, "--merged", help="Merge the adapter into the base: a standalone model "
                                                        "folder that AutoModelForSequenceClassification loads."),
    stock: bool = typer.Option(False, "--stock", help="Refuse unless a stock Transformers class reproduces the "
                                                      "run (pooling=pooler on BERT-type encoders); without it, "
                                                      "mean/cls pooling ship emotune's class (trust_remote_code)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder."),
):
    """Export a run as a Transformers model folder (adapter merged, predictions verified against emotune)."""
    from .errors import ConfigError
    from .workflows.export import export_merged

    if not merged:
        raise ConfigError("only merged export is available: pass --merged")
    r = export_merged(run_dir, out_dir, stock_only=stock, overwrite=overwrite)
    load = (f"AutoModelForSequenceClassification.from_pretrained({str(out_dir)!r}, use_safetensors=True"
            f"{', trust_remote_code=True' if r.trust_remote_code else ''})")
    out.print(escape(f"exported {run_dir} -> {out_dir} ({r.model_class}; outputs within {r.max_abs_diff:.1e} "
                     f"of emotune's on the check texts)\nload with: {load}"), highlight=False)


@app.command("merge")
@friendly
def merge_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Finished LoRA runs on one base: of one task (same labels), "
                                                    "or of different tasks (a multi-task run, a head per task)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder to write the merged run to."),
    how: str = typer.Option("linear", help="linear, ties, dare (dare_linear), dare_ties, magnitude_prune, cat, "
                                           "svd, ties_svd, dare_linear_svd, dare_ties_svd (PEFT's "
                                           "add_weighted_adapter); zip: two runs of different tasks, per-column "
                                           "coefficients learned on their examples (ZipLoRA)."),
    weights: Optional[str] = typer.Option(None, help="One weight per run, comma-separated (default: equal, "
                                                     "summing to 1). Heads and norms average with them normalised."),
    density: Optional[float] = typer.Option(None, help="Share of entries kept by ties/dare/magnitude_prune "
                                                       "(default 0.5)."),
    rank: Optional[int] = typer.Option(None, help="Rank of the svd combinations' result (default: the largest)."),
    data_dir: Optional[str] = typer.Option(None, help="Data root for the validation evaluation (and zip's "
                                                      "examples), if it moved."),
    evaluate_: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Evaluate the merged run on "
                                                                          "validation."),
    overwrite: bool = typer.Option(False, help="Replace a run in --out."),
    tasks: Optional[str] = typer.Option(None, help="Runs of different tasks: the task names, one per run, "
                                                   "comma-separated (default: their data sets' names)."),
    examples: Optional[int] = typer.Option(None, help="zip: training examples drawn (seeded) per task from each "
                                                      "run's own training data (default 200)."),
    steps: Optional[int] = typer.Option(None, help="zip: Adam steps on the coefficients (default 100)."),
    overlap_weight: Optional[float] = typer.Option(None, help="zip: weight of the sum over matrices of "
                                                              "|cos(m_A, m_B)| (default 0.01, the paper's)."),
    lr: Optional[float] = typer.Option(None, help="zip: Adam's learning rate for the coefficients (default 0.01)."),
):
    """Merge LoRA adapters into a new run, evaluated on validation like any run: runs of one task into a run of
    that task, runs of different tasks into a multi-task run (one merged adapter, each run's head)."""
    from .workflows.merge import merge_runs

    metrics = merge_runs(run_dirs, out_dir, how=how, weights=weights, density=density, rank=rank,
                         evaluate=evaluate_, data_dir=data_dir, overwrite=overwrite, tasks=tasks,
                         examples=examples, steps=steps, overlap_weight=overlap_weight, lr=lr)
    m = metrics["merged_from"]
    what = f"{m['how']}, {m['steps']} steps" if "steps" in m else f"{m['how']}, weights {m['weights']}"  # zip learns
    if "validation" in metrics:
        print_metrics({"validation": metrics["validation"]}, f"{out_dir} ({what})")
    else:
        out.print(escape(f"merged into {out_dir} ({what})"), highlight=False)


@app.command("stream")
@friendly
def stream_cmd(
    config: Path = typer.Argument(..., help="YAML with a `stream` section (kind, strategy, sizes, plateau "
                                            "thresholds, reg_weight...) plus model, method and train sections."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for stream.json, stream.md, steps.jsonl and "
                                                          "stream.yaml (rewritten as each segment finishes) and "
                                                          "checkpoint.safetensors (an interrupted stream resumes from "
                                                          "it when run again with the same config)."),
    strategy: Optional[str] = typer.Option(None, help="online-lora, naive or joint (overrides stream.strategy)."),
    data_dir: Optional[str] = typer.Option(None, help="Local data root holding emotion/, mr/, semeval2017a/ "
                                                      "(overrides stream.data_dir)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Any config field: stream.window=20, method.r=4, "
                                                           "train.lr=1e-3..."),
    overwrite: bool = typer.Option(False, help="Start afresh, replacing a finished or interrupted stream in --out."),
):
    """Task-free continual learning on a stream of mini-batches read once (Online-LoRA, or the naive and joint
    baselines): accuracy on every segment seen so far after each segment, forgetting, BWT, plateaus vs boundaries."""
    from .workflows.stream import StreamRun, render_markdown, run_stream

    cfg = StreamRun.from_yaml(config).override(list(set_)).with_stream(strategy=strategy, data_dir=data_dir)
    metrics = run_stream(cfg, out_dir, overwrite=overwrite,
                         echo=lambda msg: err.print(escape(msg), highlight=False, soft_wrap=True))
    out.print(escape(render_markdown(metrics)), highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
