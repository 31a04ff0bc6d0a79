#!/usr/bin/env bash
# Instruction tuning on this CPU, side by side with MiniLM on the same examples:
#   bash scripts/instruct.sh DATA_DIR RUNS [PER_TASK] [PER_TASK_EVAL] [EVAL_EVERY]
# builds instruction data from experiments/instruct.yaml (PER_TASK training texts per task, default 250;
# PER_TASK_EVAL validation and test texts, default 100; validation every EVAL_EVERY steps, default 100),
# tunes SmolLM2-135M-Instruct with LoRA for one epoch (checkpoints on validation loss), trains MiniLM
# (multi-task, one shared LoRA, 4 epochs) on the same texts, tests both once, and scores SmolLM2 zero-shot on
# the same prompts (skipped with ZERO_SHOT=0; benchmarks/instruct_compare.py prints the table).
set -euo pipefail
DATA=$1; RUNS=$2; PER=${3:-250}; EVAL=${4:-100}; EVERY=${5:-100}
DIR=$RUNS/data-$PER
emotune instruct-data experiments/instruct.yaml --out "$DIR" --data-dir "$DATA" --per-task "$PER" \
  --per-task-eval "$EVAL"
emotune train "$DIR" --model smollm2 --epochs 1 --batch-size 8 --eval-every "$EVERY" --out "$RUNS/smollm2-lora-$PER" \
  --no-progress
emotune evaluate "$RUNS/smollm2-lora-$PER" --split test
emotune train --config "$DIR/encoders.yaml" --epochs 4 --eval-every 100 --out "$RUNS/minilm-multitask-$PER" \
  --no-progress
emotune evaluate "$RUNS/minilm-multitask-$PER" --split test
if [ "${ZERO_SHOT:-1}" = 1 ]; then  # the test rows are the same for every PER_TASK: once is enough
  python benchmarks/instruct_compare.py "$RUNS" --zero-shot "$DIR"
fi
