"""Memory to serve several runs: peak resident memory of a fresh process that loads the runs' predictors and
predicts one text with each, less that of the same process before loading (Python, PyTorch and emotune
imported). ``--against`` names a run to compare with (e.g. one multi-task run that replaces the others).

    python benchmarks/serve_memory.py RUN [RUN ...] [--against RUN]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

PROBE = r"""
import json, resource, sys
import torch
from emotune.inference.predictor import Predictor
from emotune.runs import Run
Run.open(sys.argv[1])  # imports done
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
keep = [Predictor(p) for p in sys.argv[1:]]
for p in keep:
    p.predict(["what a wonderful surprise"])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = sum(t.numel() * t.element_size() for p in keep for t in [*p.model.parameters(), *p.model.buffers()])
print(json.dumps({"rss_mb": (after - before) / 1024, "weights_mb": params / 2**20}))
"""


def measure(runs: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *runs], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--against")
    args = ap.parse_args()
    rows = [(f"{len(args.runs)} runs", measure(args.runs))]
    if args.against:
        rows.append(("1 run: " + args.against.rstrip("/").rsplit("/", 1)[-1], measure([args.against])))
    print("| served | extra resident memory (MB) | weights in memory (MB) |")
    print("|---|---|---|")
    for name, m in rows:
        print(f"| {name} | {m['rss_mb']:.0f} | {m['weights_mb']:.0f} |")
    if args.against:
        print(f"\nratio (one run / the others): {rows[1][1]['rss_mb'] / rows[0][1]['rss_mb']:.2f} resident, "
              f"{rows[1][1]['weights_mb'] / rows[0][1]['weights_mb']:.2f} weights")


if __name__ == "__main__":
    main()
