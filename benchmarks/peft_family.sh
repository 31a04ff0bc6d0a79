#!/usr/bin/env bash
# The parameter-efficient family on Emotion with MiniLM, end to end: every method at two learning rates
# (chosen on validation, the chosen one tested once), three task adapters on one base against three
# separate models, merged export, merging, LoraHub-style composition for a new task (MR) and the
# intruder-dimension analysis of full fine-tuning vs LoRA r=8 vs r=32.
#
#   bash benchmarks/peft_family.sh [DATA_DIR] [RUNS] [REPORT] [EPOCHS]
#
# Defaults: ../shared/data, runs/peft-family, reports/peft-family, 1 epoch per cell (a 2-core CPU takes
# about an hour for the grid; say how many epochs when reporting). Every step resumes or skips what
# is already done, so the same command continues after an interruption.
set -euo pipefail
DATA=${1:-../shared/data}
RUNS=${2:-runs/peft-family}
REPORT=${3:-reports/peft-family}
EPOCHS=${4:-1}
SECONDS=0
step() { printf '\n== %s (%d s so far)\n' "$*" "$SECONDS"; }

step "the machine (CPU model, fp32/bf16 matmul GFLOP/s): absolute times and speeds below belong to it"
mkdir -p "$REPORT"
python benchmarks/machine.py | tee "$REPORT/machine.txt"

step "every method x 2 learning rates on Emotion"
# Only the cells whose method this machine can run (loftq needs CUDA/XPU), so any other failure stops here.
mapfile -t ONLY < <(python - <<'PY'
import yaml
from emotune.methods import METHODS

for group in yaml.safe_load(open("experiments/peft-methods.yaml"))["grids"]:
    method = METHODS.get(group["set"]["method"]["name"])
    if not (method.unavailable and method.unavailable()):
        print("--only")
        print(group["name"] + ("/*" if "axes" in group else ""))
PY
)
emotune grid experiments/peft-methods.yaml --out "$RUNS/methods" --data-dir "$DATA" \
    --set "train.max_epochs=$EPOCHS" --no-progress "${ONLY[@]}"

step "the report: one table per method, the validation pick of each evaluated on test"
emotune report "$RUNS/methods" --out "$REPORT" \
    --title "The parameter-efficient family on Emotion (MiniLM, $EPOCHS epoch(s) per run)"

# Emotion LoRA runs (r=8, attention) used below.
EMO=$RUNS/methods/lora/lr=0.002
EMO2=$RUNS/methods/lora/lr=0.004

step "sentiment (SemEval-2017 4A) and polarity (MR) LoRA adapters"
emotune train semeval2017a --data-dir "$DATA" --out "$RUNS/semeval-lora" --set train.max_steps=1000 \
    --set train.metric=recall_macro
emotune train mr --data-dir "$DATA" --out "$RUNS/mr-lora" --set train.max_steps=1000

step "memory: one base + 3 adapters vs 3 separate models (fresh processes, median of 3)"
python benchmarks/adapters_memory.py "$EMO" "$RUNS/semeval-lora" "$RUNS/mr-lora" --repeat 3 --threads 2 \
    | tee "$REPORT/adapters-memory.txt"

step "merged export: a plain Transformers folder with the same predictions"
emotune export "$EMO" --merged --out "$RUNS/export-lora" --overwrite | tee "$REPORT/export.txt"
python - "$EMO" "$RUNS/export-lora" "$DATA" <<'EOF' | tee -a "$REPORT/export.txt"
# Compare the exported folder with emotune on the whole Emotion test split.
import sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
import emotune
from emotune.data import load_data
from emotune.runs import Run

run, folder, data_dir = sys.argv[1:]
cfg = Run.open(run).config
cfg.data.data_dir = data_dir
texts = load_data(cfg.data)["test"].texts
# fp32 on both sides: the exported folder loads in float32, while emotune keeps a run's training precision.
preds = emotune.predict(run, texts, precision="fp32")
ours = torch.tensor([[p["probabilities"][k] for k in p["probabilities"]] for p in preds])
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
rows = []
with torch.inference_mode():
    for i in range(0, len(texts), 64):
        batch = tok(texts[i:i + 64], padding=True, truncation=True, max_length=cfg.data.max_length,
                    return_tensors="pt")
        rows.append(model(**batch).logits.float().softmax(-1))
theirs = torch.cat(rows)
same = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
print(f"Emotion test ({len(texts)} texts): same label {100 * same:.2f}%, largest probability difference "
      f"{(ours - theirs).abs().max().item():.2e}")
EOF

step "merging two Emotion LoRA runs (linear, ties, dare), evaluated on validation"
for how in linear ties dare; do
    emotune merge "$EMO" "$EMO2" --how "$how" --weights 0.5,0.5 --out "$RUNS/merge-$how" --overwrite \
        --data-dir "$DATA"
done

step "composition for MR from 20 shots: Emotion x 2 + SemEval adapters"
emotune compose "$EMO" "$EMO2" "$RUNS/semeval-lora" --data mr --data-dir "$DATA" --shots 20 --trials 40 \
    --test --out "$RUNS/compose-mr" --overwrite
emotune zeroshot mr --how embed --data-dir "$DATA" --out "$RUNS/zeroshot-mr" --test --overwrite
python - "$RUNS" <<'PY' > "$REPORT/compose.md"
# One table from the two run folders' metrics.json.
import json, sys
runs = sys.argv[1]
m = json.load(open(f"{runs}/compose-mr/metrics.json"))
z = json.load(open(f"{runs}/zeroshot-mr/metrics.json"))
c = m["composed_from"]
print("# Composition for MR from 20 shots (emotune compose)\n")
print("Adapters: " + ", ".join(r.split(runs + "/")[-1] for r in c["runs"]) + f"; new task MR, {c['shots']} "
      "stratified shots from its training split; the same shots and the same logistic-regression head for every "
      f"row. Objective: {c['objective']}.\n")
print("| encoder | mixing weights | 5-fold CV log-loss (shots) | validation accuracy (%) | test accuracy (%) "
      "| test F1 (weighted, %) |\n|---|---|---:|---:|---:|---:|")


def row(name, w, cv, val, test):
    cv = "-" if cv is None else f"{cv:.4f}"
    print(f"| {name} | {w} | {cv} | {100 * val['accuracy']:.2f} | {100 * test['accuracy']:.2f} "
          f"| {100 * test['f1_weighted']:.2f} |")


row("composed", " ".join(f"{x:+.3f}" for x in c["weights"]), c["cv_log_loss"], m["validation"], m["test"])
b = m["baselines"]
for a in b["adapters"]:
    row(a["name"].split(runs + "/")[-1] + " alone", " ".join(f"{x:+.1f}" for x in a["weights"]), a["cv_log_loss"],
        a["validation"], a["test"])
row("base encoder (no adapter)", "-", b["base_encoder"]["cv_log_loss"], b["base_encoder"]["validation"],
    b["base_encoder"]["test"])
row("zero-shot embed (no shots)", "-", None, z["validation"], z["test"])
PY
cat "$REPORT/compose.md"

step "intruder dimensions: full vs LoRA r=8 vs LoRA r=32"
# Full fine-tuning's validation pick, as the report chose it.
FULL=$RUNS/methods/$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['families']['full fine-tuning']['chosen']['run'])" "$REPORT/summary.json")
emotune analyze "$FULL" "$EMO" "$RUNS/methods/lora-r32" --out "$RUNS/analysis"

step "the report again, with the analysis section"
emotune report "$RUNS/methods" "$RUNS/analysis" --out "$REPORT" \
    --title "The parameter-efficient family on Emotion (MiniLM, $EPOCHS epoch(s) per run)"

step "done"
