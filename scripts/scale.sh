#!/usr/bin/env bash
# The measurements of docs/scale: the training-throughput levers against the Trainer + PEFT recipe, a 3-epoch
# Emotion run (MiniLM + LoRA) in 1 and in 2 processes, and streaming prediction over 100,000 texts.
#   bash scripts/scale.sh DATA_DIR RUNS_DIR [STEPS] [REPEATS]
set -euo pipefail
DATA=${1:?data dir}; RUNS=${2:?runs folder}; STEPS=${3:-60}; REPEATS=${4:-3}
mkdir -p "$RUNS"
python benchmarks/train_throughput.py --data-dir "$DATA" --steps "$STEPS" --warmup 10 --repeats "$REPEATS" \
  --levers all 2>&1 | grep -v -i "warn\|LOAD REPORT\|MISSING\|^Key \|^---\|^Notes\|^$\|train_runtime" \
  > "$RUNS/throughput.txt"
for n in 1 2; do
  start=$(date +%s)
  emotune train emotion --data-dir "$DATA" --epochs 3 --processes $n --no-progress --out "$RUNS/emotion-3ep-$n" \
    > "$RUNS/emotion-3ep-$n.log" 2>&1
  echo "$n process(es): wall $(( $(date +%s) - start )) s" >> "$RUNS/emotion-3ep.txt"
done
python benchmarks/predict_stream.py "$RUNS/emotion-3ep-1" --data-dir "$DATA" --lines 100000 > "$RUNS/predict-stream.txt" 2>&1
