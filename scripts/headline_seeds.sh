#!/usr/bin/env bash
# The README's headline Emotion rows, 3 seeds each, reported as mean ± standard deviation.
#
# Usage:
#   bash scripts/headline_seeds.sh DATA_DIR RUNS_DIR [SEED ...]        # seeds default to 42 1 2
#   ROWS="lora" bash scripts/headline_seeds.sh ../shared/data /tmp/headline   # one row only
#
# Rows (run one after another, never in parallel, so their times compare):
#   lora  the README's first command:  emotune train emotion --epochs 3 --test --seed S
#   full  full fine-tuning:            ... --method full --set model.pooling=pooler --epochs 3 --test --seed S
# Each run goes to RUNS_DIR/<row>-seed<S> (log: RUNS_DIR/logs/<row>-seed<S>.log). A finished run
# (metrics.json with a test section) is kept and not trained again; an interrupted one resumes. A run
# that fails is retried once after two minutes (a trained run whose test evaluation failed: that evaluation,
# `emotune evaluate RUN --split test`, the same as --test). Keep RUNS_DIR outside the repository.
# At the end it prints the machine line (benchmarks/machine.py) and the table of
# benchmarks/headline_summary.py: validation accuracy, test accuracy, test weighted F1, steps to the
# best checkpoint and training time, mean ± std over the seeds. Only these configurations' test
# splits are read; nothing is chosen on test. `emotune report RUNS_DIR --out DIR` reports the runs.
# Training times are only comparable on an otherwise idle machine: progress.log records the load average
# (1/5/15 min) at the start and end of every run, and the code's commit (-dirty: uncommitted edits) it started on.
set -uo pipefail

DATA=${1:?usage: headline_seeds.sh DATA_DIR RUNS_DIR [SEED ...]}
RUNS=${2:?usage: headline_seeds.sh DATA_DIR RUNS_DIR [SEED ...]}
shift 2
SEEDS=("$@")
[ ${#SEEDS[@]} -eq 0 ] && SEEDS=(42 1 2)
ROWS=${ROWS:-"lora full"}
HERE=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$RUNS/logs"
python "$HERE/benchmarks/machine.py" | tee "$RUNS/machine-start.txt"

row_args() {
    case "$1" in
        lora) echo "" ;;
        full) echo "--method full --set model.pooling=pooler" ;;
        *) echo "unknown row $1" >&2; exit 2 ;;
    esac
}

finished() {
    python - "$1/metrics.json" <<'PY'
import json, sys
try:
    sys.exit(0 if "test" in json.load(open(sys.argv[1])) else 1)
except (OSError, ValueError):
    sys.exit(1)
PY
}

for row in $ROWS; do
    for seed in "${SEEDS[@]}"; do
        out="$RUNS/$row-seed$seed"
        log="$RUNS/logs/$row-seed$seed.log"
        if finished "$out"; then echo "$row seed $seed: done already ($out)"; continue; fi
        if [ -f "$out/metrics.json" ]; then
            # Trained, but the test evaluation did not happen (it failed or was interrupted): what --test does.
            echo "$(date -u +%FT%TZ) $row seed $seed: trained, evaluating on test" | tee -a "$RUNS/logs/progress.log"
            emotune evaluate "$out" --split test --data-dir "$DATA" >>"$log" 2>&1
            finished "$out" && continue
        fi
        for attempt in 1 2; do
            echo "$(date -u +%FT%TZ) $row seed $seed (attempt $attempt) -> $out; load $(cut -d' ' -f1-3 /proc/loadavg); code $(git -C "$HERE" describe --always --dirty 2>/dev/null)" \
                | tee -a "$RUNS/logs/progress.log"
            start=$(date +%s)
            # shellcheck disable=SC2046
            emotune train emotion --data-dir "$DATA" --out "$out" --epochs 3 --test --seed "$seed" \
                $(row_args "$row") --no-progress >>"$log" 2>&1
            rc=$?
            echo "$(date -u +%FT%TZ) $row seed $seed: exit $rc after $(( $(date +%s) - start )) s; load $(cut -d' ' -f1-3 /proc/loadavg)" \
                | tee -a "$RUNS/logs/progress.log"
            [ $rc -eq 0 ] && break
            if [ -f "$out/metrics.json" ] && ! finished "$out"; then  # trained; the test evaluation failed
                sleep 120
                emotune evaluate "$out" --split test --data-dir "$DATA" >>"$log" 2>&1 && break
            fi
            [ $attempt -eq 1 ] && sleep 120
        done
    done
done

python "$HERE/benchmarks/machine.py" | tee "$RUNS/machine-end.txt"
python "$HERE/benchmarks/headline_summary.py" "$RUNS" | tee "$RUNS/summary.md"
