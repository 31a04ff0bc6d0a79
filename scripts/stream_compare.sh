#!/usr/bin/env bash
# Online-LoRA against naive sequential LoRA (the lower bound) and joint training (the upper bound) on both streams:
# domain drift (MR -> SemEval-2017 4A -> Emotion on positive/negative/other, experiments/stream-drift.yaml) and
# class-incremental Emotion (experiments/stream-classes.yaml), plus naive without the labels trick on the latter and,
# where a config sets stream.replay, naive with the same replay.
# Prints a table per stream: final average accuracy, forgetting, BWT, plateaus against the true boundaries, wall
# time (benchmarks/stream_table.py). Scored on the TEST split (stream.eval_split=test, EVAL_SPLIT to change), read
# once for the settings in the config files, which scripts/stream_tune.sh chose on validation.
#
# Usage: bash scripts/stream_compare.sh DATA_DIR RUNS_DIR        # e.g. ../shared/data runs/stream
#        SEED=1 STREAMS=drift EVAL_SIZE=1000 bash scripts/stream_compare.sh DATA_DIR RUNS_DIR
#
# MiniLM + LoRA r=8 on attention, batch 16, seed 42; SIZE training examples per segment (default 2,000: 6,000 per
# stream, 375 steps), EVAL_SIZE held-out examples per segment (default 500; fear + surprise have 293). Measured on
# a 2-core AMD EPYC (fp32 ~190 GFLOP/s; the configs train in float32) with the shipped replay 500: about 30 minutes
# for the 9 runs (per stream: naive and joint ~1.5-2 min each, naive with replay ~3.5-4, Online-LoRA with replay
# ~4-4.5, naive without the labels trick ~1.5). Runs one at a time; a finished run is kept, so the script resumes. A dry run of the plumbing in seconds, with a tiny encoder folder:
#   MODEL=path/to/tiny-bert SIZE=32 EVAL_SIZE=16 bash scripts/stream_compare.sh DATA RUNS
set -euo pipefail
USAGE="usage: stream_compare.sh DATA_DIR RUNS_DIR"
DATA=${1:?$USAGE}
RUNS=${2:?$USAGE}
MODEL=${MODEL:-minilm}
SIZE=${SIZE:-2000}
EVAL_SIZE=${EVAL_SIZE:-500}
EVAL_SPLIT=${EVAL_SPLIT:-test}
SEED=${SEED:-42}  # the samples, the stream's order, the initialisation and dropout
STREAMS=${STREAMS:-drift classes}  # e.g. STREAMS=drift for the domain-drift stream only
HERE=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's emotune
mkdir -p "$RUNS"
python "$HERE/benchmarks/machine.py" 2>/dev/null | tee "$RUNS/machine.txt" || true

finished() {  # FOLDER: a completed stream
    python -c "import json,sys; sys.exit(0 if json.load(open('$1/stream.json')).get('completed') else 1)" \
        2>/dev/null
}

one() {  # STREAM STRATEGY NAME [SETTINGS...]
    local stream=$1 strategy=$2 name=$3; shift 3
    if finished "$RUNS/$name"; then echo "$name: done"; return; fi
    local args=()
    for s in "$@"; do args+=(--set "$s"); done
    start=$(date +%s)
    python -m emotune.cli stream "$HERE/experiments/stream-$stream.yaml" --strategy "$strategy" \
        --data-dir "$DATA" --out "$RUNS/$name" --overwrite --set "model.name=$MODEL" \
        --set "stream.segment_size=$SIZE" --set "stream.eval_size=$EVAL_SIZE" \
        --set "stream.eval_split=$EVAL_SPLIT" --set "stream.seed=$SEED" ${args[@]+"${args[@]}"} > "$RUNS/$name.log" 2>&1
    echo "$name: $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RUNS/times.txt"
}

replay() {  # STREAM: the config's stream.replay
    python -c "import yaml; print(yaml.safe_load(open('$HERE/experiments/stream-$1.yaml'))['stream'].get('replay', 0))"
}

for stream in $STREAMS; do
    one "$stream" online-lora "$stream-online-lora"
    one "$stream" naive "$stream-naive" stream.replay=0  # the lower bound: plain sequential fine-tuning
    one "$stream" joint "$stream-joint"
    # With replay in the config, naive with the same reservoir too: how much of Online-LoRA's gain is replay's alone.
    if [ "$(replay "$stream")" != 0 ]; then one "$stream" naive "$stream-naive-replay"; fi
done
case " $STREAMS " in *" classes "*) one classes naive classes-naive-no-trick stream.labels_trick=false stream.replay=0;; esac
python "$HERE/benchmarks/stream_table.py" "$RUNS" | tee "$RUNS/table.md"
