#!/usr/bin/env bash
# Multi-task (emotion + sentiment + polarity + vad, one shared MiniLM LoRA) against the four single-task runs
# and against a curriculum (sentiment -> +vad -> +emotion -> +polarity), on the same budget: each single-task
# run trains STEPS steps, the multi-task and curriculum runs 4 x STEPS (the four single runs' total).
# Validation and test are capped at 1,000 texts per task (seeded sample) to keep evaluations short; SemEval-2017
# 4A has no test split here, so its test column stays empty. Test splits are read once, after training.
# Options after STEPS go to every `emotune train` (e.g. `--method full --seed 1`); MULTI_SET only to the multi-task
# and curriculum runs (e.g. MULTI_SET="--set multitask.sampling=round_robin"); KINDS="multitask" skips the
# curriculum.
# Usage: [KINDS=...] [MULTI_SET=...] bash scripts/multitask_compare.sh DATA_DIR OUT_DIR [STEPS [TRAIN OPTIONS]]
set -euo pipefail
data=${1:?data dir}; out=${2:?output folder}; steps=${3:-600}; shift $(($# < 3 ? $# : 3)); train=("$@")
kinds=${KINDS:-multitask curriculum}; read -r -a multi_set <<< "${MULTI_SET:-}"
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
python "$here/benchmarks/machine.py" 2>/dev/null | tee "$out/machine.txt" || true
common=(--data-dir "$data" --max-eval-samples 1000 --eval-every $((steps / 3)) --max-steps "$steps" --no-progress
        "${train[@]}")
declare -A dataset=([emotion]=emotion [sentiment]=semeval2017a [polarity]=mr [vad]=emobank)
for task in emotion sentiment polarity vad; do
  extra=(); [ "$task" = sentiment ] && extra=(--set train.metric=recall_macro)
  [ -f "$out/single-$task/metrics.json" ] && grep -q '"completed": true' "$out/single-$task/metrics.json" \
    || emotune train "${dataset[$task]}" --out "$out/single-$task" "${common[@]}" "${extra[@]}"
done
python - "$here/experiments/multitask.yaml" "$out" <<'PY'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
for t in spec["multitask"]["tasks"]:
    t["data"]["max_eval_samples"] = 1000
yaml.safe_dump(spec, open(f"{sys.argv[2]}/multitask.yaml", "w"), sort_keys=False)
spec["multitask"]["stages"] = [["sentiment"], ["vad"], ["emotion"], ["polarity"]]
yaml.safe_dump(spec, open(f"{sys.argv[2]}/curriculum.yaml", "w"), sort_keys=False)
PY
for kind in $kinds; do
  [ -f "$out/$kind/metrics.json" ] && grep -q '"completed": true' "$out/$kind/metrics.json" \
    || emotune train --config "$out/$kind.yaml" --out "$out/$kind" --data-dir "$data" --max-steps $((4 * steps)) \
         --eval-every $((4 * steps / 6)) --no-progress "${train[@]}" "${multi_set[@]}"
done
for run in single-emotion single-polarity single-vad $kinds; do
  python -c "import json,sys; sys.exit('test' in json.load(open('$out/$run/metrics.json')))" \
    && emotune evaluate "$out/$run" --split test > /dev/null
done
python "$here/benchmarks/serve_memory.py" "$out/single-emotion" "$out/single-sentiment" "$out/single-polarity" \
  "$out/single-vad" --against "$out/multitask" | tee "$out/serve_memory.txt"
python "$here/benchmarks/multitask_table.py" "$out" | tee "$out/table.md"
