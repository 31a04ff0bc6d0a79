"""The table of scripts/multitask_compare.sh: per task, the single-task run against the multi-task and
curriculum runs (validation and test), then training time.

    python benchmarks/multitask_table.py OUT_DIR
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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
