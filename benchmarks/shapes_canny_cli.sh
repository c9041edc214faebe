#!/usr/bin/env bash
# The command line with its defaults on the shapes base: the default Lite module trained 400 steps
# of 16 on make-shapes canny pairs, and its sampled canny score on held-out pairs (another scene
# seed) against the text-only base's. Writes outputs/shapes-canny/ and
# benchmarks/results/shapes-canny-cli.json.   bash benchmarks/shapes_canny_cli.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
OUT=outputs/shapes-canny
mkdir -p "$OUT"
$PY -m lite_controlnet make-shapes "$OUT/canny" --num 6400 --condition canny --seed 0
$PY -m lite_controlnet make-shapes "$OUT/canny-heldout" --num 32 --condition canny --seed 1
$PY -m lite_controlnet train --base proxy-shapes --data "$OUT/canny" --output "$OUT/run" --resolution 128 \
    --batch-size 16 --max-steps 400
$PY -m lite_controlnet evaluate --base proxy-shapes --control-model "$OUT/run/final" --data "$OUT/canny-heldout" \
    --num 32 --out "$OUT/lite.json" --overwrite
$PY -m lite_controlnet evaluate --base proxy-shapes --data "$OUT/canny-heldout" --num 32 --out "$OUT/text.json" --overwrite
$PY - "$OUT" <<'PY'
import json, platform, sys
from pathlib import Path
out = Path(sys.argv[1])
lite, text = (json.loads((out / f"{name}.json").read_text()) for name in ("lite", "text"))
result = {"command": "bash benchmarks/shapes_canny_cli.sh", "settings": lite["settings"],
          "sampled": {"lite": lite["mean"]["controllability"], "text_only": text["mean"]["controllability"]},
          "one_step": {"lite": lite["one_step"]["with_control"]["controllability"],
                       "text_only": text["one_step"]["with_control"]["controllability"]},
          "machine": platform.platform()}
result["ratio"] = round(result["sampled"]["lite"] / result["sampled"]["text_only"], 2)
Path("benchmarks/results/shapes-canny-cli.json").write_text(json.dumps(result, indent=2) + "\n")
print(f"sampled canny edge F1: lite {result['sampled']['lite']:.3f}, text only {result['sampled']['text_only']:.3f} "
      f"({result['ratio']}x)")
PY
