#!/usr/bin/env bash
# Learned (ZipLoRA-style) merging against linear, TIES and DARE: two MiniLM LoRA runs of different tasks (Emotion,
# 6 classes; MR, positive/negative), merged into one multi-task run each way, each task's validation accuracy as a
# share of its own adapter's (benchmarks/zip_table.py).
#
# Usage: bash scripts/zip_compare.sh DATA_DIR RUNS_DIR [STEPS]      # e.g. ../shared/data runs/zip 600
#
# Each run: LoRA r=8 on attention, mean pooling, batch 16, seed 42, STEPS steps (default 600: about 2.5 min each on a
# 2-core CPU), validated every STEPS/3 steps on a seeded 1,000-text sample (the merged runs validate on the same
# texts). Merges (each validated on both tasks): zip (200 examples per task, 100 steps, overlap weight 0.01),
# cat (the plain sum of the two updates, zip's starting point), and linear, ties, dare at weights 1,1 (each task's
# update at full strength, as in the sum; the default 0.5,0.5 halves both). Runs one thing at a time; a finished
# run or merge is kept, so the script resumes. A dry run of the plumbing in seconds: a tiny encoder folder and
#   MODEL=path/to/tiny-bert EVAL_SAMPLES=20 ZIP_EXAMPLES=16 ZIP_STEPS=2 bash scripts/zip_compare.sh DATA RUNS 3
set -euo pipefail
USAGE="usage: zip_compare.sh DATA_DIR RUNS_DIR [STEPS]"
DATA=${1:?$USAGE}
RUNS=${2:?$USAGE}
STEPS=${3:-600}
MODEL=${MODEL:-minilm}
EVAL_SAMPLES=${EVAL_SAMPLES:-1000}
ZIP_EXAMPLES=${ZIP_EXAMPLES:-200}
ZIP_STEPS=${ZIP_STEPS:-100}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$RUNS"
python "$HERE/benchmarks/machine.py" 2>/dev/null | tee "$RUNS/machine.txt" || true

finished() {  # FOLDER: a completed run or merge
    python -c "import json,sys; sys.exit(0 if json.load(open('$1/metrics.json')).get('completed') else 1)" \
        2>/dev/null
}

timed() {  # NAME COMMAND...: run it unless finished, log its wall time
    local name=$1; shift
    if finished "$RUNS/$name"; then echo "$name: done"; return; fi
    local start; start=$(date +%s)
    "$@" > "$RUNS/$name.log" 2>&1
    echo "$name: $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RUNS/times.txt"
}

for task in emotion mr; do
    timed "$task" emotune train "$task" --data-dir "$DATA" --model "$MODEL" --method lora --seed 42 \
        --max-steps "$STEPS" --eval-every $(( (STEPS + 2) / 3 )) --max-eval-samples "$EVAL_SAMPLES" --no-progress \
        --out "$RUNS/$task"
done
for how in zip cat linear ties dare; do
    extra=(--weights 1,1)
    [ "$how" = zip ] && extra=(--examples "$ZIP_EXAMPLES" --steps "$ZIP_STEPS" --overlap-weight 0.01)
    timed "merged-$how" emotune merge --how "$how" "$RUNS/emotion" "$RUNS/mr" --tasks emotion,mr --data-dir "$DATA" \
        --out "$RUNS/merged-$how" "${extra[@]}"
done
python "$HERE/benchmarks/zip_table.py" "$RUNS" | tee "$RUNS/table.md"
