"""Training throughput: emotune and each speed lever against the plain Transformers Trainer + PEFT recipe.

Same data slice (Emotion train), same model (MiniLM), same batch size, same number of steps, dynamic padding
on both sides. Speeds are steady-state samples/s: the steps after the first --warmup ones (so compilation and
first-touch costs are left out on both sides). Each repeat runs the Trainer recipe once, then every lever,
interleaved, so drifts in machine load hit all alike; the table gives each lever's median samples/s, the
median of its paired ratios to the Trainer run of the same repeat, and its share of the machine's roofline
(MiniLM costs about 1.4 GFLOP per 22-token training sample: samples/s x 1.4 / matmul GFLOP/s).
On a GPU both sides train in the same precision (emotune's resolved --precision: the Trainer's bf16/fp16
switch); on the CPU the Trainer runs its default float32.

    python benchmarks/train_throughput.py --data-dir ../shared/data [--steps 100 --repeats 3 --levers all]

Levers (--levers, comma-separated, or `all`):
  emotune            as shipped: one process, every core's thread, length-grouped batches, fused AdamW
  2x1                two processes x one thread (data-parallel through torchrun, gloo)
  eager              the encoder's plain matmul + softmax attention (model.attention=eager) ...
  sdpa               ... and PyTorch's fused scaled-dot-product attention (model.attention=sdpa)
  pad8               batches padded to a multiple of 8 tokens (train.pad_multiple=8)
  compile            torch.compile of the training step, batches padded to a multiple of 8
  sync               the loss read on the host after every step (what emotune's loop no longer does)
  unfused            AdamW without the fused kernel (foreach)
  ungrouped          batches without length grouping
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py
from machine import machine_line, measure  # noqa: E402

GFLOP_PER_SAMPLE = 1.4  # MiniLM training step, 22-token sample (forward + backward)
LEVERS: dict[str, dict] = {
    "emotune": {},
    "2x1": {"processes": 2},
    "eager": {"model.attention": "eager"},
    "sdpa": {"model.attention": "sdpa"},
    "pad8": {"train.pad_multiple": 8},
    "compile": {"train.compile": True, "train.pad_multiple": 8},
    "sync": {"sync": True},
    "unfused": {"unfused": True},
    "ungrouped": {"train.group_by_length": False},
}
LABELS = {"emotune": "emotune (as shipped)", "2x1": "2 processes x 1 thread", "eager": "eager attention",
          "sdpa": "SDPA attention", "pad8": "padded to x8", "compile": "torch.compile (+ padded to x8)",
          "sync": "a host sync per step", "unfused": "unfused AdamW", "ungrouped": "no length grouping"}


def synchronized() -> float:
    """The time once queued GPU work has finished (plain time on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepClock:
    """Steady-state samples/s: from the end of step ``warmup`` to the last step seen."""

    def __init__(self, warmup: int, batch: int):
        self.warmup, self.batch, self.marks = warmup, batch, {}

    def __call__(self, step: int) -> bool:
        if step >= self.warmup:
            self.marks[step] = synchronized()
        return False

    def rate(self) -> float:
        first, last = min(self.marks), max(self.marks)
        return (last - first) * self.batch / (self.marks[last] - self.marks[first])


def load_texts(args):
    from emotune.config import DataConfig
    from emotune.data import load_data

    data = load_data(DataConfig(name="emotion", data_dir=args.data_dir, max_train_samples=args.samples))
    return data["train"].texts, data["train"].labels


@contextmanager
def patched(lever: dict):
    """The levers that are not config switches: a host read of the loss every step, AdamW unfused."""
    from emotune.train import loop

    step, make = loop.Trainer.train_step, loop.make_optimizer
    if lever.get("sync"):
        loop.Trainer.train_step = lambda self, idx, s: float(step(self, idx, s))
    if lever.get("unfused"):
        def unfused(groups, cfg, lr):
            return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=1e-8, foreach=True)
        loop.make_optimizer = unfused
    try:
        yield
    finally:
        loop.Trainer.train_step, loop.make_optimizer = step, make


def emotune_rate(method: str, lever: dict, texts, labels, args, folder: str | None = None) -> float:
    """emotune's steady-state samples/s with ``lever`` (config overrides and patches) in this process
    (``folder``: the run folder the data-parallel processes share)."""
    from emotune.config import RunConfig
    from emotune.data.encode import Encoded, encode
    from emotune.runs import build_model
    from emotune.train.loop import Trainer

    cfg = RunConfig()
    cfg.method = {"name": method}
    cfg.model.name = args.model
    cfg.train.batch_size, cfg.train.max_steps = args.batch_size, args.steps
    cfg.train.eval_every, cfg.train.checkpoint, cfg.train.precision = 10**9, False, args.precision
    cfg = cfg.with_values({k: v for k, v in lever.items() if "." in k})
    model, tok, m = build_model(cfg, 6)
    enc = Encoded(encode(tok, texts, 128), labels)
    small_val = Encoded(enc.ids[:16], enc.labels[:16])  # the one evaluation at the end: negligible
    clock = StepClock(args.warmup, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp, patched(lever):
        out = folder or tmp
        trainer = Trainer(model, enc, small_val, [str(i) for i in range(6)], cfg.train, Path(out), lr=m.lr,
                          warmup_ratio=m.warmup_ratio, pad_id=tok.pad_token_id, progress=False, on_step=clock)
        trainer.fit()
    return clock.rate()


def processes_rate(method: str, lever: dict, args) -> float:
    """The same, in ``lever['processes']`` processes of one thread each, started through torchrun."""
    n = lever["processes"]
    with tempfile.TemporaryDirectory() as folder:
        spec = {"method": method, "lever": lever, "args": vars(args), "folder": folder}
        worker = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                  __file__, "--worker", json.dumps(spec)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(worker, env=env, capture_output=True, text=True, check=True).stdout
    return float(next(line for line in out.splitlines() if line.startswith("RATE ")).split()[1])


def hf_rate(method: str, texts, labels, args) -> float:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from emotune.models import resolve_model_path

    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["query", "key", "value"]))
    enc = tok(list(texts), truncation=True, max_length=128)
    ds = [{"input_ids": i, "attention_mask": a, "label": y}
          for i, a, y in zip(enc["input_ids"], enc["attention_mask"], labels)]
    clock = StepClock(args.warmup, args.batch_size)

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            clock(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size,
                                  max_steps=args.steps, learning_rate=5e-5 if method == "full" else 3e-4,
                                  adam_beta2=0.99, save_strategy="no", eval_strategy="no", report_to=[],
                                  logging_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                                  **hf_precision(args.precision))
        Trainer(model=model, args=targs, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                callbacks=[Clock()]).train()
    return clock.rate()


def hf_precision(precision: str) -> dict:
    """The Trainer's switches for emotune's resolved precision on a GPU (none on the CPU: its default fp32)."""
    if not torch.cuda.is_available():
        return {}
    from emotune.train.precision import resolve_precision

    dtype = resolve_precision(precision, torch.device("cuda"))
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def worker(spec: str) -> None:
    """One of the data-parallel processes of the `2x1` lever (under torchrun); the main one prints RATE."""
    spec = json.loads(spec)
    args = argparse.Namespace(**spec["args"])
    texts, labels = load_texts(args)
    rate = emotune_rate(spec["method"], spec["lever"], texts, labels, args, spec["folder"])
    if os.environ.get("RANK", "0") == "0":
        print(f"RATE {rate}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10, help="Steps left out of each timing.")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=4000, help="Training examples the steps draw from.")
    p.add_argument("--precision", default="auto", help="emotune's precision (auto, bf16, fp32, fp16 on a GPU).")
    p.add_argument("--model", default="minilm", help="Encoder alias or folder (both sides).")
    p.add_argument("--methods", default="full,lora")
    p.add_argument("--levers", default="emotune", help=f"Comma-separated: {', '.join(LEVERS)}, or all.")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker)
    levers = list(LEVERS) if args.levers == "all" else args.levers.split(",")
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        p.error(f"unknown levers {unknown}; choose from {', '.join(LEVERS)}")
    if args.warmup >= args.steps - 1:
        p.error("--warmup must leave at least two timed steps")
    texts, labels = load_texts(args)
    info = measure()  # before the runs, on an idle process
    machine = machine_line(info)
    print(machine, flush=True)
    print(f"{len(texts)} Emotion training texts, batch {args.batch_size}, {args.steps} steps ({args.warmup} "
          f"untimed), {torch.get_num_threads()} threads, emotune precision {args.precision}", flush=True)
    tables = {}
    for method in args.methods.split(","):
        theirs, ours = [], {x: [] for x in levers}
        for r in range(args.repeats):
            theirs.append(hf_rate(method, texts, labels, args))
            line = [f"Trainer+PEFT {theirs[-1]:.1f}"]
            for x in levers:
                lever = LEVERS[x]
                ours[x].append(processes_rate(method, lever, args) if "processes" in lever
                               else emotune_rate(method, lever, texts, labels, args))
                line.append(f"{x} {ours[x][-1]:.1f}")
            print(f"  {method} repeat {r + 1} samples/s: " + ", ".join(line), flush=True)
        tables[method] = (statistics.median(theirs),
                          {x: (statistics.median(v), statistics.median(o / t for o, t in zip(v, theirs)))
                           for x, v in ours.items()})
    print("\n| method | lever | samples/s (median) | x Trainer+PEFT (median of paired ratios) | "
          "share of bf16 roofline | share of fp32 roofline |")
    print("|---|---|---|---|---|---|")
    for method, (t, rows) in tables.items():
        def share(rate: float, key: str) -> str:
            return f"{100 * rate * GFLOP_PER_SAMPLE / info[key]:.1f}%"
        print(f"| {method} | Trainer+PEFT | {t:.1f} | 1.00x | {share(t, 'bf16_gflops')} | {share(t, 'fp32_gflops')} |")
        for x, (rate, ratio) in rows.items():
            print(f"| {method} | {LABELS[x]} | {rate:.1f} | {ratio:.2f}x | {share(rate, 'bf16_gflops')} | "
                  f"{share(rate, 'fp32_gflops')} |")
    print(f"\n{machine}")


if __name__ == "__main__":
    main()
