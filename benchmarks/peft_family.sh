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

step "every method x 2 learning rates on Emotion"
# loftq needs CUDA/XPU: on a CPU its cell stops with that message and the grid goes on.
emotune grid experiments/peft-methods.yaml --out "$RUNS/methods" --data-dir "$DATA" \
    --set "train.max_epochs=$EPOCHS" --no-progress || true

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
ours = torch.tensor([[p["probabilities"][k] for k in p["probabilities"]] for p in emotune.predict(run, texts)])
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
    --test --out "$RUNS/compose-mr" --overwrite | tee "$REPORT/compose.txt"
emotune zeroshot mr --how embed --data-dir "$DATA" --out "$RUNS/zeroshot-mr" --test | tee -a "$REPORT/compose.txt"

step "intruder dimensions: full vs LoRA r=8 vs LoRA r=32"
FULL=$(ls -d "$RUNS"/methods/full/lr=* | head -1)
emotune analyze "$FULL" "$EMO" "$RUNS/methods/lora-r32" --out "$REPORT/analysis" | tee "$REPORT/analysis.txt"

step "done"
