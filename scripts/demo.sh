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
# control strength 0 (text only) and 1, on the held-out pair with the largest circle inside the image (visible at 32 px)
pick=$("$PY" - "$OUT/heldout" "$HELDOUT" <<'EOF'
import json, sys
from PIL import Image
from lite_controlnet.data.fill50k import fill50k_spec
folder, count = sys.argv[1], int(sys.argv[2])
rows = [json.loads(line) for line in open(f"{folder}/prompt.json")][:count]
size = Image.open(f"{folder}/{rows[0]['source']}").width
specs = [fill50k_spec(i, size, seed=1) for i in range(count)]  # the held-out set's seed
inside = [i for i, s in enumerate(specs) if min(*s.centre, size - s.centre[0], size - s.centre[1]) >= s.radius]
best = max(inside or range(count), key=lambda i: specs[i].radius)
print(f"{best}\t{rows[best]['prompt']}")
EOF
)
index=${pick%%$'\t'*}
prompt=${pick#*$'\t'}
for scale in 0 1; do
  "$PY" -m lite_controlnet sample --preset demo ${BASE:+--base "$BASE"} --control-model "$OUT/run/final" \
      --image "$OUT/heldout/source/$index.png" --prompt "$prompt" --scale "$scale" --seed 0 \
      --out "$OUT/sample-scale-$scale.png" --overwrite
done
"$PY" - "$OUT" "$index" "$prompt" <<'EOF'
import sys
from PIL import Image
from lite_controlnet.training.grids import table_grid
out, index, prompt = sys.argv[1:]
cells = [prompt, Image.open(f"{out}/heldout/source/{index}.png"), Image.open(f"{out}/sample-scale-0.png"),
         Image.open(f"{out}/sample-scale-1.png")]
table_grid(["Prompt", "Control", "Text only", "Strength 1"], [cells]).save(f"{out}/strength.png")
EOF
# fidelity on held-out pairs: the text-only baseline, then the trained module
"$PY" -m lite_controlnet evaluate --preset demo ${BASE:+--base "$BASE"} --data "$OUT/heldout" --num "$HELDOUT" \
    --out "$OUT/eval-text-only.json" --overwrite
"$PY" -m lite_controlnet evaluate --preset demo ${BASE:+--base "$BASE"} --control-model "$OUT/run/final" \
    --data "$OUT/heldout" --num "$HELDOUT" --out "$OUT/eval-lite.json" --overwrite
echo "Done in $(( $(date +%s) - start )) s. Grids per epoch: $OUT/run/samples/, loss: $OUT/run/logs/loss.png,"
echo "control strength 0 (text only) and 1 side by side: $OUT/strength.png,"
echo "scores: $OUT/eval-text-only.json, $OUT/eval-lite.json (grids beside them)"
