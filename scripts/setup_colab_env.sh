#!/usr/bin/env bash
# Create .venv-colab: lite-controlnet with Colab's widget versions (ipywidgets 7.7.1, classic
# Notebook 6.5, widgetsnbextension 3.6; tests/browser/colab-widgets.txt). The browser tests serve
# the notebooks from it too, so the widgets are checked in the protocol Colab's frontend speaks.
#   TORCH_SPEC   what to install for torch when none is importable (default: torch==2.13.0)
#   VENV         where to create the environment (default: .venv-colab)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-colab}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e . -r tests/browser/colab-widgets.txt
"$VENV/bin/python" -c "import ipywidgets, notebook, lite_controlnet as l; print(f'{l.__name__} {l.__version__}: ipywidgets {ipywidgets.__version__}, notebook {notebook.__version__}')"
