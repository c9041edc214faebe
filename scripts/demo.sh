#!/usr/bin/env bash
# The main job end to end, offline, on the embedded default: synthetic Fill50k -> train the
# Lite module -> sample with several control strengths. Safe to re-run: existing data is
# reused and training resumes (or is already done).
#   BASE   base model (default: tiny, the offline stand-in for SD1.5)
#   OUT    where everything goes (default: outputs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BASE=${BASE:-tiny}
OUT=${OUT:-outputs/demo}
export HF_HUB_OFFLINE=1
start=$(date +%s)
[ -f "$OUT/fill50k/prompt.json" ] || "$PY" -m lite_controlnet make-fill50k "$OUT/fill50k" --num 400 --size 64
"$PY" -m lite_controlnet train --base "$BASE" --data "$OUT/fill50k" --output "$OUT/run" \
    --resolution 64 --epochs 2 --num-workers 0 --num-validation 4 --validation-steps 10
prompt=$(head -n 1 "$OUT/fill50k/prompt.json" | "$PY" -c "import json,sys; print(json.loads(sys.stdin.readline())['prompt'])")
for scale in 0 1; do
  "$PY" -m lite_controlnet sample --base "$BASE" --control-model "$OUT/run/final" \
      --image "$OUT/fill50k/source/0.png" --prompt "$prompt" --scale "$scale" --steps 20 --seed 0 \
      --out "$OUT/sample-scale-$scale.png" --overwrite
done
echo "Done in $(( $(date +%s) - start )) s. Grids per epoch: $OUT/run/samples/, loss: $OUT/run/logs/loss.png,"
echo "samples at control strength 0 and 1: $OUT/sample-scale-0.png, $OUT/sample-scale-1.png"
