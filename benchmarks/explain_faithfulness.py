"""Faithfulness and cost of `emotune explain` on a run's test texts.

For each text (more than k words), delete the k words with the highest attribution for the predicted class,
and separately k random words (seeded); the explanation is faithful on that text when the predicted class's
probability falls more for the attributed words. Prints the share of such texts, the mean falls, and the
median milliseconds per explanation, for Integrated Gradients (ig) and gradient x input (gxi), beside the
machine line (benchmarks/machine.py).

    python benchmarks/explain_faithfulness.py RUN --data-dir ../shared/data --texts 500 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default="ig,gxi")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()

    import torch

    from emotune.data import load_data
    from emotune.inference.explain import Explainer, faithfulness

    torch.manual_seed(args.seed)
    explainer = Explainer(args.run)
    cfg = explainer.run.config.data
    if args.data_dir:
        cfg.data_dir = args.data_dir
    texts = list(load_data(cfg, explainer.run.config.train.seed)[args.split].texts)
    texts = random.Random(args.seed).sample(texts, min(args.texts, len(texts)))
    print(machine_line(), flush=True)
    results = {}
    for method in args.methods.split(","):
        r = faithfulness(explainer, texts, k=args.k, method=method, steps=args.steps, seed=args.seed)
        results[method] = r
        print(f"{method}: faithful on {100 * r['share']:.1f}% of {r['texts']} {args.split} texts (> {args.k} words); "
              f"mean fall of the predicted class's probability: top-{args.k} words {r['mean_drop_top']:.3f}, "
              f"random {r['mean_drop_random']:.3f}; {r['ms_per_explanation']:.0f} ms per explanation (median)",
              flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine_line(), "run": str(args.run),
                                                   "split": args.split, **results}, indent=2))


if __name__ == "__main__":
    main()
