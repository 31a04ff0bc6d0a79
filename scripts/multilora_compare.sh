#!/usr/bin/env bash
# MultiLoRA against LoRA of the same adapter size, as the shared adapter of the multi-task configuration
# (experiments/multitask.yaml: emotion, sentiment, polarity, vad on one MiniLM): LoRA r=12 against 3 modules of
# r=4 (MODULES x RANK; both alpha = 2 r, the LoRA default's ratio, attention targets, LayerNorms trained, seed 42),
# so both train 12 x (in + out) adapter weights per layer (MultiLoRA adds one scale per module). Each run: STEPS
# steps on a seeded TRAIN_SAMPLES training texts per task, validated every STEPS/3 steps on a seeded EVAL_SAMPLES
# texts per task (the same texts for both runs); no test split is read. Then `emotune analyze` on both (mean
# effective rank of dW), the share of dW's energy (squared singular values) outside its top 1 and top 3 singular
# directions (lower = more dominated by a few directions), and the per-task validation metrics side by side.
#
# Usage: bash scripts/multilora_compare.sh DATA_DIR RUNS_DIR      # e.g. ../shared/data runs/multilora
#
# Defaults (STEPS=1200, TRAIN_SAMPLES=2000, EVAL_SAMPLES=500): about 5 minutes per run on a 2-core CPU, under
# 15 minutes in all with the analysis. A finished run is kept, so the script resumes. A dry run of the plumbing:
#   MODEL=path/to/tiny-bert STEPS=4 TRAIN_SAMPLES=40 EVAL_SAMPLES=20 bash scripts/multilora_compare.sh DATA RUNS
set -euo pipefail
USAGE="usage: multilora_compare.sh DATA_DIR RUNS_DIR"
DATA=${1:?$USAGE}
RUNS=${2:?$USAGE}
STEPS=${STEPS:-1200}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-2000}
EVAL_SAMPLES=${EVAL_SAMPLES:-500}
MODULES=${MODULES:-3}
RANK=${RANK:-4}
MODEL=${MODEL:-minilm}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$RUNS"
python "$HERE/benchmarks/machine.py" 2>/dev/null | tee "$RUNS/machine.txt" || true

# The two configs: the multi-task yaml with its method replaced, smaller data and the budget.
python - "$HERE/experiments/multitask.yaml" "$RUNS" "$STEPS" "$TRAIN_SAMPLES" "$EVAL_SAMPLES" "$MODULES" "$RANK" \
    "$MODEL" <<'PY'
import sys

import yaml

src, runs, steps, n_train, n_eval, modules, rank, model = sys.argv[1:]
steps, modules, rank = int(steps), int(modules), int(rank)
methods = {"lora": {"name": "lora", "r": modules * rank, "alpha": 2 * modules * rank},
           "multilora": {"name": "multilora", "modules": modules, "r": rank, "alpha": 2 * rank}}
for name, method in methods.items():
    spec = yaml.safe_load(open(src))
    spec["method"] = method
    spec.setdefault("model", {})["name"] = model
    spec["train"].update(max_steps=steps, eval_every=max(1, (steps + 2) // 3), seed=42)
    for t in spec["multitask"]["tasks"]:
        t["data"].update(max_train_samples=int(n_train), max_eval_samples=int(n_eval))
    yaml.safe_dump(spec, open(f"{runs}/{name}.yaml", "w"), sort_keys=False)
PY

finished() {  # FOLDER: a completed run
    python -c "import json,sys; sys.exit(0 if json.load(open('$1/metrics.json')).get('completed') else 1)" \
        2>/dev/null
}

for name in lora multilora; do
    if finished "$RUNS/$name"; then echo "$name: done"; continue; fi
    start=$(date +%s)
    emotune train --config "$RUNS/$name.yaml" --out "$RUNS/$name" --data-dir "$DATA" --no-progress \
        > "$RUNS/$name.log" 2>&1
    echo "$name: $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RUNS/times.txt"
done

emotune analyze "$RUNS/lora" "$RUNS/multilora" --out "$RUNS/analysis" | tee "$RUNS/analysis.txt"

python - "$RUNS" <<'PY' | tee "$RUNS/table.md"
import json
import sys
from pathlib import Path

import torch

from emotune.analyze.core import matrix_pairs
from emotune.io import load_tensors
from emotune.runs import Run

runs = Path(sys.argv[1])
names = ["lora", "multilora"]
metrics = {n: json.loads((runs / n / "metrics.json").read_text()) for n in names}
analysis = {Path(r["run"]).name: r for r in json.loads((runs / "analysis" / "analysis.json").read_text())["runs"]}


def fmt(v, digits=3):
    return "" if v is None else f"{v:.{digits}f}"


print("| run | method | adapter weights | trainable | matrices | mean eff. rank dW | energy outside top 1 "
      "| energy outside top 3 | ||dW||_F | train min |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
cache: dict = {}
for n in names:
    outside1, outside3 = [], []
    for _, w0, w, _ in matrix_pairs(Run.open(runs / n), cache):
        e = torch.linalg.svdvals(w - w0.double()) ** 2
        outside1.append(float(1 - e[0] / e.sum()))
        outside3.append(float(1 - e[:3].sum() / e.sum()))
    weights, _ = load_tensors(runs / n / "model.safetensors")
    adapter = sum(t.numel() for k, t in weights.items() if ".lora_" in k)
    a, t = analysis[n], metrics[n]["train"]
    print(f"| {n} | {a['method']} | {adapter:,} | {t['trainable_params']:,} | {a['totals']['matrices']} "
          f"| {fmt(a['totals']['mean_effective_rank'], 2)} | {fmt(sum(outside1) / len(outside1))} "
          f"| {fmt(sum(outside3) / len(outside3))} | {fmt(a['totals']['update_norm'], 4)} "
          f"| {t['runtime_s'] / 60:.1f} |")

print("\n| task | metric | " + " | ".join(f"{n} val" for n in names) + " | multilora - lora |")
print("|---|---|" + "---:|" * (len(names) + 1))
val = {n: metrics[n]["validation"] for n in names}
for task in (k for k, v in val["lora"].items() if isinstance(v, dict)):
    cfg_metric = next((t.metric for t in Run.open(runs / "lora").config.multitask.tasks if t.name == task), None)
    metric = cfg_metric or ("pearson" if "pearson" in val["lora"][task] else "accuracy")
    cells = [val[n].get(task, {}).get(metric) for n in names]
    diff = cells[1] - cells[0] if None not in cells else None
    print(f"| {task} | {metric} | " + " | ".join(fmt(c) for c in cells) + f" | {fmt(diff)} |")
cells = [val[n].get("score") for n in names]
print("| mean (score) | selection metrics | " + " | ".join(fmt(c) for c in cells)
      + f" | {fmt(cells[1] - cells[0]) if None not in cells else ''} |")
PY
