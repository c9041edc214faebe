#!/usr/bin/env bash
# Create .venv and install lite-controlnet with its test tools, offline-friendly:
# torch is installed first (CPU wheel by default) so that nothing later pulls a CUDA build.
#   TORCH_SPEC   what to install for torch when none is importable (default: torch==2.13.0)
#   VENV         where to create the environment (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
"$VENV/bin/python" -c "import torch, diffusers, transformers, lite_controlnet as l; print(f'lite-controlnet {l.__version__}: torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}')"
