"""Mean ± standard deviation of the README's headline Emotion rows over seeds.

    python benchmarks/headline_summary.py RUNS_DIR [--machine]

RUNS_DIR holds the run folders of scripts/headline_seeds.sh, named <row>-seed<S> (lora-seed42, full-seed1...).
Prints, as Markdown: per run, then per row (mean ± sample standard deviation over its seeds), validation
accuracy, test accuracy, test weighted F1, steps to the best checkpoint, steps run, training time, samples/s
and peak RSS, read from each run's metrics.json (`validation.accuracy`, `test.accuracy`, `test.f1_weighted`,
`train.best_step`, `train.runtime_s`...). `--machine` measures and prints the machine line first
(benchmarks/machine.py); the runs' own machine lines are in RUNS_DIR/machine-*.txt when the script wrote them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROWS = {
    "lora": "LoRA r=8, attention, defaults (lr 2e-3): `--epochs 3 --test --seed S`",
    "full": "full fine-tuning, `--method full --set model.pooling=pooler --epochs 3 --test --seed S` (lr 5e-5)",
}


def pct(x: float) -> float:
    return 100 * x if x <= 1 else x


def read(run: Path) -> dict | None:
    try:
        m = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if "test" not in m:
        return None
    t = m.get("train", {})
    return {
        "val_acc": pct(m["validation"]["accuracy"]),
        "test_acc": pct(m["test"]["accuracy"]),
        "test_f1w": pct(m["test"]["f1_weighted"]),
        "best_step": t.get("best_step"),
        "steps": t.get("steps"),
        "minutes": t.get("runtime_s", float("nan")) / 60,
        "samples_s": t.get("samples_per_s", float("nan")),
        "rss_gb": t.get("peak_memory_mb", float("nan")) / 1024,
        "resumed": t.get("resumed_from_step"),
        "stopped_early": t.get("stopped_early"),
    }


def ms(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    return f"{statistics.mean(values):,.{digits}f} ± {statistics.stdev(values):,.{digits}f}"


COLS = [("val_acc", "val acc", 2), ("test_acc", "test acc", 2), ("test_f1w", "test F1 (w)", 2),
        ("best_step", "steps to best", 0), ("steps", "steps run", 0), ("minutes", "training time (min)", 1),
        ("samples_s", "samples/s", 0), ("rss_gb", "peak RSS (GB)", 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--machine", action="store_true", help="measure and print this machine's line first")
    args = ap.parse_args(argv)
    if args.machine:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from machine import machine_line

        print(machine_line(), "\n")
    for f in sorted(args.runs.glob("machine-*.txt")):
        print(f"{f.stem}: {f.read_text().strip()}  ")
    found: dict[str, dict[int, dict]] = {}
    for run in sorted(args.runs.iterdir()):
        match = re.fullmatch(r"(\w+)-seed(\d+)", run.name)
        if match and run.is_dir() and (r := read(run)):
            found.setdefault(match[1], {})[int(match[2])] = r
    if not found:
        print(f"no finished runs (metrics.json with test figures) under {args.runs}", file=sys.stderr)
        return 1
    print("\nPer run:\n")
    print("| run | seed | " + " | ".join(c[1] for c in COLS) + " | stopped early |")
    print("|---|---:|" + "---:|" * len(COLS) + "---|")
    for row, seeds in found.items():
        for seed, r in seeds.items():
            cells = [f"{r[k]:,.{d}f}" if r[k] is not None else "" for k, _, d in COLS]
            print(f"| {row} | {seed} | " + " | ".join(cells) + f" | {r['stopped_early']} |")
    print("\nMean ± standard deviation over seeds:\n")
    print("| row | seeds | " + " | ".join(c[1] for c in COLS) + " |")
    print("|---|---|" + "---:|" * len(COLS))
    for row, seeds in found.items():
        cells = [ms([r[k] for r in seeds.values() if r[k] is not None], d) for k, _, d in COLS]
        label = ROWS.get(row, row)
        print(f"| {label} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
