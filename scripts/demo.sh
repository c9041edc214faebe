#!/usr/bin/env bash
# The main job end to end, offline, on the embedded default: synthetic Fill50k -> train the
# Lite module -> sample with and without control -> score. Safe to re-run: existing data is
# reused and training resumes (or is already done). Its settings are the preset `demo` in
# lite_controlnet/presets.py (the proxy base the package ships, 32 px, two short epochs).
#   BASE   base model (default: the preset's, proxy)
#   OUT    where everything goes (default: outputs/demo)
#   LR     learning rate (default: the preset's, the default module's best on the proxy base; see README's Fidelity)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/demo}
HELDOUT=32  # held-out pairs, sampled and scored
export HF_HUB_OFFLINE=1
start=$(date +%s)
[ -f "$OUT/fill50k/prompt.json" ] || "$PY" -m lite_controlnet make-fill50k "$OUT/fill50k" --preset demo
[ -f "$OUT/heldout/prompt.json" ] || "$PY" -m lite_controlnet make-fill50k "$OUT/heldout" --preset demo \
    --num "$HELDOUT" --seed 1
"$PY" -m lite_controlnet train --preset demo ${BASE:+--base "$BASE"} ${LR:+--learning-rate "$LR"} \
    --data "$OUT/fill50k" --output "$OUT/run"
prompt=$(head -n 1 "$OUT/fill50k/prompt.json" | "$PY" -c "import json,sys; print(json.loads(sys.stdin.readline())['prompt'])")
for scale in 0 1; do
  "$PY" -m lite_controlnet sample --preset demo ${BASE:+--base "$BASE"} --control-model "$OUT/run/final" \
      --image "$OUT/fill50k/source/0.png" --prompt "$prompt" --scale "$scale" --seed 0 \
      --out "$OUT/sample-scale-$scale.png" --overwrite
done
# fidelity on held-out pairs: the text-only baseline, then the trained module
"$PY" -m lite_controlnet evaluate --preset demo ${BASE:+--base "$BASE"} --data "$OUT/heldout" --num "$HELDOUT" \
    --out "$OUT/eval-text-only.json" --overwrite
"$PY" -m lite_controlnet evaluate --preset demo ${BASE:+--base "$BASE"} --control-model "$OUT/run/final" \
    --data "$OUT/heldout" --num "$HELDOUT" --out "$OUT/eval-lite.json" --overwrite
echo "Done in $(( $(date +%s) - start )) s. Grids per epoch: $OUT/run/samples/, loss: $OUT/run/logs/loss.png,"
echo "samples at control strength 0 and 1: $OUT/sample-scale-0.png, $OUT/sample-scale-1.png,"
echo "scores: $OUT/eval-text-only.json, $OUT/eval-lite.json (grids beside them)"
