#!/usr/bin/env bash
# Distilling an mpnet teacher into MiniLM on a named classification data set (emotion, mr, ...), beside the plain
# MiniLM run.
#
# Usage:
#   bash scripts/distill.sh DATASET DATA_DIR RUNS_DIR [SEED]      # e.g. emotion ../shared/data RUNS 42
#
# Runs, one after another (never in parallel, so their times compare), each evaluated once on test (--test):
#   teacher-mpnet-full  mpnet (all-mpnet-base-v2), full fine-tuning, 2 epochs
#   student-minilm      MiniLM full fine-tuning (pooler), 3 epochs, train.teacher = the teacher, alpha 0.5, T 2
#   plain-minilm        the same MiniLM run without a teacher
# then the faithfulness of explanations on 500 test texts of the student (benchmarks/explain_faithfulness.py)
# and `emotune report RUNS_DIR --out RUNS_DIR/report`. Nothing is chosen on test: each row is one fixed
# configuration. A finished run (metrics.json with a test section) is kept; an interrupted one resumes.
set -euo pipefail
USAGE="usage: distill.sh DATASET DATA_DIR RUNS_DIR [SEED]"
DATASET=${1:?$USAGE}
DATA=${2:?$USAGE}
RUNS=${3:?$USAGE}
SEED=${4:-42}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$RUNS"
python "$HERE/benchmarks/machine.py" | tee -a "$RUNS/machine.txt"

run() {  # NAME ARGS...: train unless already tested; log the load average around it
    local name=$1; shift
    if python -c "import json,sys; sys.exit(0 if 'test' in json.load(open('$RUNS/$name/metrics.json')) else 1)" \
        2>/dev/null; then echo "$name: done"; return; fi
    echo "$name: start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RUNS/times.txt"
    emotune train "$DATASET" --data-dir "$DATA" --seed "$SEED" --eval-every 250 --test --out "$RUNS/$name" "$@" \
        > "$RUNS/$name.log" 2>&1
    echo "$name: end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RUNS/times.txt"
}

run teacher-mpnet-full --model mpnet --method full --epochs 2
run student-minilm --method full --set model.pooling=pooler --epochs 3 \
    --set "train.teacher=$RUNS/teacher-mpnet-full" --set train.distill_alpha=0.5 --set train.distill_temperature=2
run plain-minilm --method full --set model.pooling=pooler --epochs 3
python "$HERE/benchmarks/explain_faithfulness.py" "$RUNS/student-minilm" --data-dir "$DATA" --texts 500 \
    --json "$RUNS/faithfulness.json" | tee "$RUNS/faithfulness.txt"
emotune report "$RUNS" --data-dir "$DATA" --out "$RUNS/report"
python "$HERE/benchmarks/distill_summary.py" "$RUNS" | tee "$RUNS/summary.md"
