#!/usr/bin/env bash
# Distilling the mpnet teacher into MiniLM on MR (lab split), beside the plain MiniLM run (issue: a larger teacher,
# distillation, calibrated confidence, explanations).
#
# Usage:
#   bash scripts/distill_mr.sh DATA_DIR RUNS_DIR [SEED]
#
# Runs, one after another (never in parallel, so their times compare), each evaluated once on test (--test):
#   teacher-mpnet-full  mpnet (all-mpnet-base-v2), full fine-tuning, 2 epochs
#   student-minilm      MiniLM full fine-tuning (pooler), 3 epochs, train.teacher = the teacher, alpha 0.5, T 2
#   plain-minilm        the same MiniLM run without a teacher
# and `emotune report RUNS_DIR --out RUNS_DIR/report`. Nothing is chosen on test: each row is one fixed
# configuration. A finished run (metrics.json with a test section) is kept; an interrupted one resumes.
set -euo pipefail
DATA=${1:?usage: distill_mr.sh DATA_DIR RUNS_DIR [SEED]}
RUNS=${2:?usage: distill_mr.sh DATA_DIR RUNS_DIR [SEED]}
SEED=${3:-42}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$RUNS"
python "$HERE/benchmarks/machine.py" | tee -a "$RUNS/machine.txt"

run() {  # NAME ARGS...: train unless already tested; log the load average around it
    local name=$1; shift
    if python -c "import json,sys; sys.exit(0 if 'test' in json.load(open('$RUNS/$name/metrics.json')) else 1)" \
        2>/dev/null; then echo "$name: done"; return; fi
    echo "$name: start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RUNS/times.txt"
    emotune train mr --data-dir "$DATA" --seed "$SEED" --eval-every 250 --test --out "$RUNS/$name" "$@" \
        > "$RUNS/$name.log" 2>&1
    echo "$name: end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RUNS/times.txt"
}

run teacher-mpnet-full --model mpnet --method full --epochs 2
run student-minilm --method full --set model.pooling=pooler --epochs 3 \
    --set "train.teacher=$RUNS/teacher-mpnet-full" --set train.distill_alpha=0.5 --set train.distill_temperature=2
run plain-minilm --method full --set model.pooling=pooler --epochs 3
emotune report "$RUNS" --data-dir "$DATA" --out "$RUNS/report"
python "$HERE/benchmarks/distill_summary.py" "$RUNS" | tee "$RUNS/summary.md"
