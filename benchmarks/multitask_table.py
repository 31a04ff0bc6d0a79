"""The table of scripts/multitask_compare.sh: per task, the single-task run against the multi-task and
curriculum runs (validation and test), then training time; with --seeds, mean ± sd over several OUT_DIRs (one
seed each) of the single-task and multi-task runs and of their differences.

    python benchmarks/multitask_table.py OUT_DIR
    python benchmarks/multitask_table.py --seeds OUT_A OUT_B ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = {"emotion": "accuracy", "sentiment": "recall_macro", "polarity": "accuracy", "vad": "pearson"}


def load(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}


def fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


def main(out: Path) -> None:
    multi, curriculum = load(out / "multitask"), load(out / "curriculum")
    print("| task | metric | single val | single test | multi-task val | multi-task test | curriculum val "
          "| curriculum test |")
    print("|---|---|---|---|---|---|---|---|")
    for task, metric in TASKS.items():
        single = load(out / f"single-{task}")
        cells = [single.get(s, {}).get(metric) for s in ("validation", "test")]
        for m in (multi, curriculum):
            cells += [m.get(s, {}).get(task, {}).get(metric) for s in ("validation", "test")]
        print(f"| {task} | {metric} | " + " | ".join(fmt(c) for c in cells) + " |")
        if task == "vad":
            for target in ("V", "A", "D"):
                cells = [single.get(s, {}).get("per_target", {}).get(target, {}).get("pearson")
                         for s in ("validation", "test")]
                for m in (multi, curriculum):
                    cells += [m.get(s, {}).get(task, {}).get("per_target", {}).get(target, {}).get("pearson")
                              for s in ("validation", "test")]
                print(f"| vad {target} | pearson | " + " | ".join(fmt(c) for c in cells) + " |")
    singles = [load(out / f"single-{t}").get("train", {}) for t in TASKS]
    print(f"\n| training | steps | time (min) |\n|---|---|---|")
    print(f"| four single-task runs | {sum(s.get('steps', 0) for s in singles):,} | "
          f"{sum(s.get('runtime_s', 0) for s in singles) / 60:.1f} |")
    for name, m in (("multi-task", multi), ("curriculum", curriculum)):
        t = m.get("train", {})
        print(f"| {name} | {t.get('steps', 0):,} | {t.get('runtime_s', 0) / 60:.1f} |")


def seeds(outs: list[Path]) -> None:
    """Per task and split: single-task and multi-task mean ± sd over seeds, and the per-seed difference's mean ± sd
    (points for classification, r for vad)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from headline_summary import ms  # benchmarks/headline_summary.py: mean ± sd

    multis = [load(o / "multitask") for o in outs]
    print(f"| task | split | single ({len(outs)} seeds) | multi-task | multi − single |")
    print("|---|---|---:|---:|---:|")
    for task, metric in TASKS.items():
        scale, digits = (1.0, 3) if metric == "pearson" else (100.0, 1)
        singles = [load(o / f"single-{task}") for o in outs]
        for split in ("validation", "test"):
            pairs = [(single.get(split, {}).get(metric), multi.get(split, {}).get(task, {}).get(metric))
                     for single, multi in zip(singles, multis)]
            pairs = [(scale * a, scale * b) for a, b in pairs if a is not None and b is not None]
            if pairs:
                print(f"| {task} ({metric}) | {split} | {ms([a for a, _ in pairs], digits)} | "
                      f"{ms([b for _, b in pairs], digits)} | {ms([b - a for a, b in pairs], digits)} |")


if __name__ == "__main__":
    if sys.argv[1] == "--seeds":
        seeds([Path(a) for a in sys.argv[2:]])
    else:
        main(Path(sys.argv[1]))
