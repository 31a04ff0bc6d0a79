"""Memory of one base with several LoRA adapters versus separate models, each measured in a fresh process.

    python benchmarks/adapters_memory.py RUN_A RUN_B RUN_C [--precision fp32] [--unmerged] [--repeat 3]

Configurations (one fresh Python process each, so nothing is shared or cached between them):

- ``single``: one Predictor of RUN_A (the plain-model reference);
- ``separate``: one Predictor per run (each its own copy of the base; LoRA merged into it);
- ``separate-unmerged`` (with ``--unmerged``): one unmerged PEFT model per run (base + adapter branch);
- ``shared``: ``emotune.inference.adapters.AdapterSet`` over every run (one base, an adapter + head per run).

Each process imports everything first and measures its resident memory (the baseline), loads, measures
again ("after load"), predicts a fixed set of texts with every model and measures once more ("after
predict"). Weights are read from safetensors files lazily (memory-mapped pages count once touched), so
RSS right after loading understates them; the ratios use the growth after one prediction pass, when every
weight has been read (except the rows of the word-embedding matrix that the texts never look up). RSS
varies a little with the allocator; the tensor bytes (distinct parameter and buffer storage) are exact. The shared set's
probabilities must equal the separate models' (printed as the largest difference; exit code 1 above 1e-4).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py
from machine import machine_line  # noqa: E402

TEXTS = ["i feel wonderful today", "this is terrifying", "i am so angry right now", "i miss her so much",
         "what a lovely surprise", "i feel a little nervous about tomorrow", "the film was dull and far too long",
         "an absolute delight from start to finish", "i can not believe they cancelled the show",
         "i adore the way you laugh", "nothing about this makes me happy", "ok"]
KINDS = ("single", "separate", "separate-unmerged", "shared")
TOLERANCE = 1e-4


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # Linux without psutil
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(kind: str, runs: list[str], precision: str) -> dict:
    """Load one configuration in this (fresh) process and report its memory and predictions."""
    import peft  # noqa: F401  (imported before the baseline in every configuration alike)
    import torch

    from emotune.data.encode import Encoded, encode
    from emotune.inference.adapters import AdapterSet
    from emotune.inference.engines import tensor_bytes
    from emotune.inference.predictor import Predictor
    from emotune.runs import Run
    from emotune.train.evaluate import predict_logits

    gc.collect()
    baseline = rss_mb()
    start = time.perf_counter()
    if kind == "shared":
        names = [f"run{i}" for i in range(len(runs))]
        held = AdapterSet.load(dict(zip(names, runs)), precision=precision)
        nbytes = held.nbytes()

        def predict() -> list:
            items = [(name, t) for t in TEXTS for name in names]  # one mixed batch, every adapter interleaved
            res = held.predict_mixed(items)
            return [[[res[j * len(names) + i]["probabilities"][lab] for lab in held.labels(name)]
                     for j in range(len(TEXTS))] for i, name in enumerate(names)]
    elif kind == "separate-unmerged":
        loaded = []
        for r in runs:
            run = Run.open(r)
            model, tok = run.load_model()
            loaded.append((run, model.eval(), tok))
        nbytes = tensor_bytes([m for _, m, _ in loaded])

        def predict() -> list:
            out = []
            for run, model, tok in loaded:
                enc = Encoded(encode(tok, TEXTS, run.config.data.max_length), [0] * len(TEXTS))
                logits = predict_logits(model, enc, 64, torch.device("cpu"), tok.pad_token_id or 0, torch.float32)
                out.append(torch.softmax(logits, -1).tolist())
            return out
    else:
        predictors = [Predictor(r, precision=precision, streams=1) for r in (runs[:1] if kind == "single" else runs)]
        nbytes = tensor_bytes([p.model for p in predictors])

        def predict() -> list:
            return [p.probabilities(TEXTS).tolist() for p in predictors]
    load_s = time.perf_counter() - start
    gc.collect()
    loaded_mb = rss_mb()
    probabilities = predict()
    gc.collect()
    return {"kind": kind, "baseline_mb": baseline, "after_load_mb": loaded_mb, "after_predict_mb": rss_mb(),
            "tensor_bytes": nbytes, "load_s": load_s, "probabilities": probabilities}


def measure(kind: str, runs: list[str], precision: str, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, __file__, *runs, "--child", kind, "--precision", precision],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind}: the measuring process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(samples: list[dict]) -> dict:
    out = dict(samples[0])
    for key in ("baseline_mb", "after_load_mb", "after_predict_mb", "load_s"):
        out[key] = statistics.median(s[key] for s in samples)
    out["load_growth_mb"] = statistics.median(s["after_load_mb"] - s["baseline_mb"] for s in samples)
    out["growth_mb"] = statistics.median(s["after_predict_mb"] - s["baseline_mb"] for s in samples)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LoRA run folders on one base (e.g. emotion, sentiment, polarity)")
    ap.add_argument("--precision", default="fp32", help="fp32 (default), bf16, int8...: every configuration")
    ap.add_argument("--unmerged", action="store_true", help="also measure separate unmerged PEFT models")
    ap.add_argument("--repeat", type=int, default=1, help="fresh processes per configuration (median)")
    ap.add_argument("--threads", type=int, default=1, help="PyTorch threads per process")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.runs, args.precision)))
        return 0

    kinds = [k for k in KINDS if k != "separate-unmerged" or args.unmerged]
    results = {k: summarize([measure(k, args.runs, args.precision, args.threads) for _ in range(args.repeat)])
               for k in kinds}
    shared, separate, single = results["shared"], results["separate"], results["single"]
    diff = max(abs(a - b) for ps, pp in zip(shared["probabilities"], separate["probabilities"])
               for rs, rp in zip(ps, pp) for a, b in zip(rs, rp))
    adapter_files = sum((Path(r) / "model.safetensors").stat().st_size for r in args.runs)
    summary = {
        "runs": args.runs, "precision": args.precision, "repeat": args.repeat,
        "configurations": {k: {key: v for key, v in r.items() if key != "probabilities"} for k, r in results.items()},
        "ratio_separate_to_shared_rss": separate["growth_mb"] / max(shared["growth_mb"], 1e-9),
        "ratio_separate_to_shared_tensors": separate["tensor_bytes"] / shared["tensor_bytes"],
        "shared_minus_single_rss_mb": shared["growth_mb"] - single["growth_mb"],
        "shared_minus_single_tensor_mb": (shared["tensor_bytes"] - single["tensor_bytes"]) / 2**20,
        "adapter_files_mb": adapter_files / 2**20,
        "max_probability_difference_shared_vs_separate": diff,
        "machine": machine_line(threads=args.threads),  # after the child processes finished
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        n = len(args.runs)
        names = {"single": "one model (first run)", "separate": f"{n} separate models (merged)",
                 "separate-unmerged": f"{n} separate models (unmerged)", "shared": f"1 base + {n} adapters"}
        print(f"RSS growth over the process's baseline after imports ({results['shared']['baseline_mb']:.0f} MB), MB")
        print(f"{'configuration':<32} {'after load':>11} {'after predict':>14} {'tensors MB':>11} {'load s':>7}")
        for k, r in results.items():
            print(f"{names[k]:<32} {r['load_growth_mb']:>11.1f} {r['growth_mb']:>14.1f} "
                  f"{r['tensor_bytes'] / 2**20:>11.2f} {r['load_s']:>7.2f}")
        print(f"separate / shared (RSS growth after predict): {summary['ratio_separate_to_shared_rss']:.2f}x; "
              f"tensors: {summary['ratio_separate_to_shared_tensors']:.2f}x")
        print(f"shared - single: {summary['shared_minus_single_rss_mb']:.1f} MB RSS, "
              f"{summary['shared_minus_single_tensor_mb']:.2f} MB tensors "
              f"(adapter files on disk: {summary['adapter_files_mb']:.2f} MB)")
        print(f"predictions, shared vs separate: largest probability difference {diff:.2e}")
        print(summary["machine"])
    return 0 if diff <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
