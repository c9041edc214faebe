#!/usr/bin/env bash
# The main job end to end, offline, on the embedded default: synthetic Fill50k -> train the
# Lite module -> sample with and without control -> score. Safe to re-run: existing data is
# reused and training resumes (or is already done).
#   BASE   base model (default: proxy, the small pixel-space base the package ships, 32 px)
#   OUT    where everything goes (default: outputs/demo)
#   LR     learning rate (default: 3e-3, the default module's best on this base; see README's Fidelity)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BASE=${BASE:-proxy}
OUT=${OUT:-outputs/demo}
LR=${LR:-3e-3}
export HF_HUB_OFFLINE=1
start=$(date +%s)
[ -f "$OUT/fill50k/prompt.json" ] || "$PY" -m lite_controlnet make-fill50k "$OUT/fill50k" --num 3200 --size 32
[ -f "$OUT/heldout/prompt.json" ] || "$PY" -m lite_controlnet make-fill50k "$OUT/heldout" --num 32 --size 32 --seed 1
# 400 steps of batch 16 (2 epochs); the small module learns faster at 1e-3 to 3e-3 than at the SD1.5 default 1e-4
"$PY" -m lite_controlnet train --base "$BASE" --data "$OUT/fill50k" --output "$OUT/run" --resolution 32 \
    --batch-size 16 --epochs 2 --learning-rate "$LR" --num-workers 0 --num-validation 4 --validation-steps 20
prompt=$(head -n 1 "$OUT/fill50k/prompt.json" | "$PY" -c "import json,sys; print(json.loads(sys.stdin.readline())['prompt'])")
for scale in 0 1; do
  "$PY" -m lite_controlnet sample --base "$BASE" --control-model "$OUT/run/final" \
      --image "$OUT/fill50k/source/0.png" --prompt "$prompt" --scale "$scale" --steps 20 --guidance 3 --seed 0 \
      --out "$OUT/sample-scale-$scale.png" --overwrite
done
# fidelity on held-out pairs: the text-only baseline, then the trained module
"$PY" -m lite_controlnet evaluate --base "$BASE" --data "$OUT/heldout" --num 32 --guidance 3 \
    --out "$OUT/eval-text-only.json" --overwrite
"$PY" -m lite_controlnet evaluate --base "$BASE" --control-model "$OUT/run/final" --data "$OUT/heldout" --num 32 \
    --guidance 3 --out "$OUT/eval-lite.json" --overwrite
echo "Done in $(( $(date +%s) - start )) s. Grids per epoch: $OUT/run/samples/, loss: $OUT/run/logs/loss.png,"
echo "samples at control strength 0 and 1: $OUT/sample-scale-0.png, $OUT/sample-scale-1.png,"
echo "scores: $OUT/eval-text-only.json, $OUT/eval-lite.json (grids beside them)"
