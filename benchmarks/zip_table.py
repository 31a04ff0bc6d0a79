"""The table of scripts/zip_compare.sh: each merged multi-task run's validation accuracy per task as a share of
that task's own adapter's, and the points lost.

    python benchmarks/zip_table.py RUNS_DIR

Reads RUNS_DIR/<task>/metrics.json (the single-task LoRA runs: emotion, mr) and RUNS_DIR/merged-<how>/metrics.json
(zip, linear, ties, dare, cat). Both are validated on the same texts: a merged run's task keeps its run's data
settings and split seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = ("emotion", "mr")
MERGES = ("zip", "cat", "linear", "ties", "dare")
WHAT = {"zip": "learned per-column coefficients (ZipLoRA)", "cat": "plain sum of the updates (zip's start)",
        "linear": "PEFT linear, weights 1,1", "ties": "TIES, density 0.5, weights 1,1",
        "dare": "DARE, density 0.5, weights 1,1"}


def load(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}


def main(root: Path) -> None:
    own = {t: load(root / t).get("validation", {}).get("accuracy") for t in TASKS}
    print("| merge | " + " | ".join(f"{t} acc | {t} share | {t} points" for t in TASKS) + " | what |")
    print("|---|" + "---:|---:|---:|" * len(TASKS) + "---|")
    print("| own adapter | " + " | ".join(f"{100 * own[t]:.2f} | 100.0% | 0.00" if own[t] is not None else "- | - | -"
                                        for t in TASKS) + " | each task's single-task LoRA run |")
    for how in MERGES:
        m = load(root / f"merged-{how}")
        if not m:
            continue
        cells = []
        for t in TASKS:
            acc = m.get("validation", {}).get(t, {}).get("accuracy")
            if acc is None or own[t] is None:
                cells.append("- | - | -")
            else:
                cells.append(f"{100 * acc:.2f} | {100 * acc / own[t]:.1f}% | {100 * (acc - own[t]):+.2f}")
        print(f"| {how} | " + " | ".join(cells) + f" | {WHAT[how]} |")
    z = load(root / "merged-zip").get("merged_from")
    if z:
        losses = ", ".join(f"{t} {x['plain_sum']:.3f} -> {x['zip']:.3f}"
                           for t, x in zip(z["tasks"], z["matching_loss"]))
        print(f"\nzip: {z['steps']} steps on {z['examples']} examples per task, overlap weight {z['overlap_weight']}, "
              f"lr {z['lr']}; matching loss (plain sum -> learned): {losses}; |cos(m_A, m_B)| mean "
              f"{z['cosine']['mean']:.3f} (min {z['cosine']['min']:.3f}, max {z['cosine']['max']:.3f}).")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
