"""The tables of scripts/stream_compare.sh: per stream, Online-LoRA against naive sequential LoRA and joint
training (final average accuracy, forgetting, BWT, plateaus against the true boundaries, wall time), and whether
the issue's target holds (Online-LoRA's forgetting at most half the naive baseline's, its average accuracy at
least the naive one's).

    python benchmarks/stream_table.py RUNS_DIR          # RUNS_DIR/<stream>-<strategy>/stream.json
    python benchmarks/stream_table.py --all RUNS_DIR    # every RUNS_DIR/*/stream.json with its settings (a grid)
    python benchmarks/stream_table.py --seeds RUNS_A RUNS_B ...   # mean ± sd over seeds (one RUNS_DIR a seed)

Streams: drift, classes; strategies: online-lora, naive, joint (and naive-no-trick, naive-replay where they ran).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

STREAMS = {"drift": "domain drift: MR -> SemEval-2017 4A -> Emotion (positive/negative/other)",
           "classes": "class-incremental Emotion: {sadness, joy} -> {love, anger} -> {fear, surprise}"}
STRATEGIES = ("online-lora", "naive", "joint", "naive-no-trick", "naive-replay")  # the last two: where they ran


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def pct(v: float | None, sign: bool = False) -> str:
    return "" if v is None else f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"


def main(root: Path) -> None:
    for stream, title in STREAMS.items():
        runs = {s: load(root / f"{stream}-{s}" / "stream.json") for s in STRATEGIES}
        print(f"\n### {title}\n")
        print("| strategy | final avg acc | forgetting | BWT | plateaus | boundaries matched | steps | wall time (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s, m in runs.items():
            if not m:
                if s in STRATEGIES[:3]:
                    print(f"| {s} | not run | | | | | | |")
                continue
            p = m["plateaus"]
            matched = f"{p['matched']}/{len(p['boundaries'])} (within {p['tolerance']})" if p["boundaries"] else "n/a"
            status = "" if m.get("completed") else f" ({m.get('status')})"
            print(f"| {s}{status} | {pct(m['final_average_accuracy'])} | {pct(m['forgetting'])} | "
                  f"{pct(m['bwt'], sign=True)} | {len(p['steps'])} | {matched} | {m['steps_done']} | "
                  f"{m['time']['wall_s']:.0f} |")
        ol = runs["online-lora"]
        for label, naive in (("naive", runs["naive"]), ("naive-no-trick", runs["naive-no-trick"])):
            if not (ol.get("completed") and naive.get("completed")):
                continue
            half = ol["forgetting"] <= naive["forgetting"] / 2
            level = ol["final_average_accuracy"] >= naive["final_average_accuracy"]
            print(f"\ntarget against {label} (forgetting <= half of its, average accuracy >= its): forgetting "
                  f"{pct(ol['forgetting'])} vs {pct(naive['forgetting'])} -> {'met' if half else 'not met'}; "
                  f"accuracy {pct(ol['final_average_accuracy'])} vs {pct(naive['final_average_accuracy'])} -> "
                  f"{'met' if level else 'not met'}")


SETTINGS = ("strategy", "mean_threshold", "variance_threshold", "reg_weight", "reg_scope", "head_reg_weight",
            "labels_trick", "replay", "eval_split", "eval_size", "seed")
# The regulariser's settings: only online-lora reads them, so they show as "-" for the other strategies.
ONLINE_ONLY = {"reg_weight", "reg_scope", "head_reg_weight"}


def setting(stream: dict, key: str) -> str:
    return "-" if key in ONLINE_ONLY and stream.get("strategy") != "online-lora" else str(stream.get(key, ""))


def grid(root: Path) -> None:
    """One row per run folder: the settings that tell cells apart, then the stream's figures."""
    print("| run | " + " | ".join(SETTINGS) + " | final avg acc | forgetting | plateaus | wall time (s) |")
    print("|---|" + "---|" * len(SETTINGS) + "---:|---:|---:|---:|")
    cells: dict[str, list[dict]] = {}  # runs named <cell>-s<seed>: one cell over several seeds
    for path in sorted(root.glob("*/stream.json")):
        m = load(path)
        s = m["config"]["stream"]
        print(f"| {path.parent.name} | " + " | ".join(setting(s, k) for k in SETTINGS)
              + f" | {pct(m['final_average_accuracy'])} | {pct(m['forgetting'])} | {len(m['plateaus']['steps'])} | "
              f"{m['time']['wall_s']:.0f} |")
        if m.get("completed"):
            cells.setdefault(re.sub(r"-s\d+$", "", path.parent.name), []).append(m)
    if any(len(runs) > 1 for runs in cells.values()):
        print("\n| cell | seeds | mean final avg acc | mean forgetting |\n|---|---:|---:|---:|")
        for name, runs in cells.items():
            n = len(runs)
            print(f"| {name} | {n} | {pct(sum(m['final_average_accuracy'] for m in runs) / n)} | "
                  f"{pct(sum(m['forgetting'] for m in runs) / n)} |")


def seeds(roots: list[Path]) -> None:
    """Mean ± sample sd over seeds (one RUNS_DIR each) of each strategy's final average accuracy and forgetting,
    and the target on the means."""
    from statistics import mean, stdev

    def ms(values: list[float]) -> str:
        sd = f" ± {100 * stdev(values):.1f}" if len(values) > 1 else ""
        return f"{100 * mean(values):.1f}{sd}"

    for stream, title in STREAMS.items():
        print(f"\n### {title} ({len(roots)} seeds)\n")
        print("| strategy | seeds | final avg acc | forgetting |")
        print("|---|---:|---:|---:|")
        means = {}
        for s in STRATEGIES:
            runs = [m for m in (load(r / f"{stream}-{s}" / "stream.json") for r in roots) if m.get("completed")]
            if not runs:
                continue
            acc, fgt = [m["final_average_accuracy"] for m in runs], [m["forgetting"] for m in runs]
            means[s] = (mean(acc), mean(fgt))
            print(f"| {s} | {len(runs)} | {ms(acc)} | {ms(fgt)} |")
        for label in ("naive", "naive-no-trick"):
            if "online-lora" in means and label in means:
                (a, f), (na, nf) = means["online-lora"], means[label]
                print(f"\ntarget against {label}, on the means: forgetting {100 * f:.1f} vs {100 * nf:.1f} -> "
                      f"{'met' if f <= nf / 2 else 'not met'}; accuracy {100 * a:.1f} vs {100 * na:.1f} -> "
                      f"{'met' if a >= na else 'not met'}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--all"] and len(args) == 2:
        grid(Path(args[1]))
    elif args[:1] == ["--seeds"] and len(args) > 1:
        seeds([Path(a) for a in args[1:]])
    elif len(args) == 1:
        main(Path(args[0]))
    else:
        sys.exit("usage: python benchmarks/stream_table.py [--all] RUNS_DIR | --seeds RUNS_DIR...")
