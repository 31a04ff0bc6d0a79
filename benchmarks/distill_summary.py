"""The table of scripts/distill.sh or experiments/distill-mr.yaml: teacher, distilled students and plain student
side by side.

    python benchmarks/distill_summary.py RUNS_DIR

Prints, as Markdown, per run folder under RUNS_DIR (grid cells included): validation and test accuracy, test
weighted F1, test ECE / Brier / NLL after → before calibration ("-" for a run never evaluated on test), steps
to best, training time, the teacher pass and the teacher-labelled copies (from each run's metrics.json), and the
faithfulness line of RUNS_DIR/faithfulness.txt when present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(metrics: dict, name: str, pct: bool = False) -> str:
    value = metrics.get(name)
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if pct else f"{value:.4f}"


def main() -> None:
    root = Path(sys.argv[1])
    print("| run | params | val acc | test acc | test F1 (w) | test ECE % (before) | test Brier (before) | "
          "test NLL (before) | steps to best | training min | teacher pass min | teacher-labelled copies |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in sorted(root.rglob("metrics.json")):
        m = json.loads(path.read_text())
        val, test, train = m.get("validation", {}), m.get("test", {}), m.get("train", {})

        def pair(name: str, pct: bool = False) -> str:
            after, before = cell(test, name, pct), cell(test, f"{name}_uncalibrated", pct)
            return after if before == "-" else f"{after} ({before})"

        print(f"| {path.parent.relative_to(root)} | {train.get('total_params', 0) / 1e6:.1f}M | "
              f"{cell(val, 'accuracy', True)} | {cell(test, 'accuracy', True)} | {cell(test, 'f1_weighted', True)} | {pair('ece', True)} | "
              f"{pair('brier')} | {pair('nll')} | {train.get('best_step', '-')} | "
              f"{train.get('runtime_s', 0) / 60:.1f} | {train.get('teacher_pass_s', 0) / 60:.1f} | "
              f"{train.get('teacher_labelled_copies', 0):,} |")
    faith = root / "faithfulness.txt"
    if faith.is_file():
        print()
        print(faith.read_text().strip())


if __name__ == "__main__":
    main()
