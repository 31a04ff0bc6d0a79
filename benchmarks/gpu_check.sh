#!/usr/bin/env bash
# One short GPU check (issue: training at every scale): the throughput benchmark against the Trainer + PEFT
# recipe in bf16 and fp16, then a whole Emotion run (MiniLM, full fine-tuning, 3 epochs) with emotune and
# with the Trainer in each precision. Logs go to $OUT (default: gpu-check/), run folders to $RUNS (default: $OUT).
#   bash benchmarks/gpu_check.sh DATA_DIR MODEL [EPOCHS]
set -u
DATA=${1:?data dir}; MODEL=${2:?model alias or folder}; EPOCHS=${3:-3}
OUT=${OUT:-gpu-check}; RUNS=${RUNS:-$OUT}; STEPS=${STEPS:-100}; REPEATS=${REPEATS:-3}; MAX_STEPS=${MAX_STEPS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null | tee "$OUT/gpu.txt"
for prec in bf16 fp16; do
  python3 benchmarks/train_throughput.py --data-dir "$DATA" --model "$MODEL" --precision $prec \
    --steps "$STEPS" --repeats "$REPEATS" 2>&1 | grep -v Warning | tee "$OUT/throughput-$prec.txt"
done
for prec in bf16 fp16; do
  start=$(date +%s)
  python3 -m emotune.cli train emotion --data-dir "$DATA" --model "$MODEL" --method full --epochs "$EPOCHS" \
    --precision $prec --test --no-progress --out "$RUNS/emotune-$prec" ${MAX_STEPS:+--max-steps $MAX_STEPS} \
    > "$OUT/emotune-$prec.log" 2>&1
  echo "emotune $prec: exit $? wall $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
  python3 - "$RUNS/emotune-$prec" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
t = m["train"]
print(json.dumps({"emotune": sys.argv[1], "train_s": round(t["runtime_s"], 1), "steps": t["steps"],
                  "samples_per_s": round(t["samples_per_s"], 1), "precision": t["precision"],
                  "validation_accuracy": m["validation"]["accuracy"], "test_accuracy": m["test"]["accuracy"]}))
PY
  python3 benchmarks/trainer_recipe.py --data-dir "$DATA" --model "$MODEL" --epochs "$EPOCHS" --precision $prec \
    2>&1 | grep -v Warning | tail -2 | tee -a "$OUT/summary.txt"
done
