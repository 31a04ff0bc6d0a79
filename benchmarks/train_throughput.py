"""Training throughput: emotune vs the plain Transformers Trainer + PEFT recipe.

Same data slice (Emotion train), same model (MiniLM), same batch size, same number of steps,
dynamic padding on both sides; several repetitions in one process, median samples/s and the ratio.
On a GPU both sides train in the same precision (emotune's resolved `--precision`: the Trainer's
`bf16`/`fp16` switch); on the CPU the Trainer runs its default float32.

    python benchmarks/train_throughput.py --data-dir ../shared/data [--steps 100 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py
from machine import machine_line  # noqa: E402


def emotune_run(method: str, texts, labels, args) -> float:
    from emotune.config import RunConfig
    from emotune.data.encode import Encoded, encode
    from emotune.runs import build_model
    from emotune.train.loop import Trainer

    cfg = RunConfig()
    cfg.method = {"name": method}
    cfg.train.batch_size, cfg.train.max_steps = args.batch_size, args.steps
    cfg.train.eval_every, cfg.train.checkpoint, cfg.train.precision = 10**9, False, args.precision
    cfg.train.group_by_length = not args.no_grouping
    cfg.model.name = args.model
    model, tok, m = build_model(cfg, 6)
    enc = Encoded(encode(tok, texts, 128), labels)
    small_val = Encoded(enc.ids[:16], enc.labels[:16])  # the one evaluation at the end: negligible
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, enc, small_val, [str(i) for i in range(6)], cfg.train, Path(out), lr=m.lr,
                          warmup_ratio=m.warmup_ratio, pad_id=tok.pad_token_id, progress=False)
        t0 = time.perf_counter()
        trainer.fit()
        return args.steps * args.batch_size / (synchronized() - t0)


def synchronized() -> float:
    """The time once queued GPU work has finished (plain time on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def hf_precision(precision: str) -> dict:
    """The Trainer's switches for emotune's resolved precision on a GPU (none on the CPU: its default fp32)."""
    if not torch.cuda.is_available():
        return {}
    from emotune.train.precision import resolve_precision

    dtype = resolve_precision(precision, torch.device("cuda"))
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def hf_run(method: str, texts, labels, args) -> float:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
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
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size,
                                  max_steps=args.steps, learning_rate=5e-5 if method == "full" else 3e-4,
                                  adam_beta2=0.99, save_strategy="no", eval_strategy="no", report_to=[],
                                  logging_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                                  **hf_precision(args.precision))
        trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=DataCollatorWithPadding(tok))
        t0 = time.perf_counter()
        trainer.train()
        return args.steps * args.batch_size / (synchronized() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=4000, help="Training examples the steps draw from.")
    p.add_argument("--precision", default="auto", help="emotune's precision (auto, bf16, fp32, fp16 on a GPU).")
    p.add_argument("--model", default="minilm", help="Encoder alias or folder (both sides).")
    p.add_argument("--methods", default="full,lora")
    p.add_argument("--no-grouping", action="store_true", help="emotune without length-grouped batches.")
    args = p.parse_args()

    from emotune.config import DataConfig
    from emotune.data import load_data

    data = load_data(DataConfig(name="emotion", data_dir=args.data_dir, max_train_samples=args.samples))
    texts, labels = data["train"].texts, data["train"].labels
    machine = machine_line()  # before the runs, on an idle process
    print(machine)
    print(f"{len(texts)} Emotion training texts, batch {args.batch_size}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, emotune precision {args.precision}"
          f"{', no length grouping' if args.no_grouping else ''}")
    rows = []
    for method in args.methods.split(","):
        ours, theirs = [], []
        for r in range(args.repeats):  # interleaved, so drifts in machine load hit both sides alike
            theirs.append(hf_run(method, texts, labels, args))
            ours.append(emotune_run(method, texts, labels, args))
            print(f"  {method} repeat {r + 1}: Trainer+PEFT {theirs[-1]:.1f} samples/s, emotune {ours[-1]:.1f}")
        ratios = [o / t for o, t in zip(ours, theirs)]
        rows.append((method, statistics.median(theirs), statistics.median(ours), statistics.median(ratios)))
    print("\n| method | Trainer+PEFT samples/s | emotune samples/s | ratio of medians | median of paired ratios |")
    print("|---|---|---|---|---|")
    for method, t, o, r in rows:
        print(f"| {method} | {t:.1f} | {o:.1f} | {o / t:.2f}x | {r:.2f}x |")
    print(f"\n{machine}")


if __name__ == "__main__":
    main()
