#!/usr/bin/env bash
# EmoBank valence/arousal/dominance regression with MiniLM: two configurations trained on train, compared on
# the dev split (mean Pearson r over V, A, D), the better one evaluated once on test.
# Usage: bash scripts/emobank_vad.sh DATA_DIR OUT_DIR [EPOCHS]
set -euo pipefail
data=${1:?data dir (holding emobank/)}; out=${2:?output folder}; epochs=${3:-3}
mkdir -p "$out"
python benchmarks/machine.py 2>/dev/null | tee "$out/machine.txt" || true
emotune train emobank --data-dir "$data" --out "$out/lora" --epochs "$epochs" --no-progress
emotune train emobank --data-dir "$data" --out "$out/full" --method full --epochs "$epochs" --no-progress
best=$(python - "$out" <<'PY'
import json, sys
from pathlib import Path
runs = {n: json.loads((Path(sys.argv[1]) / n / "metrics.json").read_text())["validation"] for n in ("lora", "full")}
print(max(runs, key=lambda n: runs[n]["pearson"]))
PY
)
echo "chosen on validation: $best"
emotune evaluate "$out/$best" --split test
python - "$out" "$best" <<'PY'
import json, sys
from pathlib import Path
out, best = Path(sys.argv[1]), sys.argv[2]
print("| run | split | V r | A r | D r | mean r | mean MAE | steps to best | training time |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ("lora", "full"):
    m = json.loads((out / name / "metrics.json").read_text())
    for split in ("validation", "test"):
        if split not in m:
            continue
        s, t = m[split], m["train"]
        print(f"| {name}{' (chosen)' if name == best else ''} | {split} | "
              + " | ".join(f"{s['per_target'][k]['pearson']:.3f}" for k in "VAD")
              + f" | {s['pearson']:.3f} | {s['mae']:.3f} | {t['best_step']} | {t['runtime_s'] / 60:.1f} min |")
PY
