"""The bases the package makes itself, for work where SD1.5 cannot be downloaded or run.

- `tiny.py`: a tiny random SD stack (`--base tiny`), made in code, so that tests and demos run
  offline; it draws nothing.
- `proxy.py`: the small pixel-space base the package ships (`--base proxy`): its recipe, its
  networks and its folder layout. The trained weights are in `PROXY_BASE_DIR`.
- `proxy_training.py`: how the proxy base is trained (`python -m lite_controlnet make-proxy-base DIR`).
- `proxy_shapes.py`, `proxy_shapes_training.py`: the same for the 128 px latent-space base of the
  shapes world (`--base proxy-shapes`, `make-proxy-base DIR --world shapes`), weights in
  `PROXY_SHAPES_BASE_DIR`.
- `proxy_command.py`: the `make-proxy-base` command, for either.

`base.py` loads each of them through the same code path as SD1.5.
"""

from pathlib import Path

# Where the package ships the proxy base's trained weights (see that folder's README.md).
PROXY_BASE_DIR = Path(__file__).resolve().parent.parent / "assets" / "proxy-base"
PROXY_SHAPES_BASE_DIR = Path(__file__).resolve().parent.parent / "assets" / "proxy-shapes"

__all__ = ["PROXY_BASE_DIR", "PROXY_SHAPES_BASE_DIR"]
