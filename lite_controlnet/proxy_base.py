"""The proxy base's old import path: it now lives in `lite_controlnet.bases` (`proxy.py`, its
recipe and networks; `proxy_training.py`, its training). Kept so that `from
lite_controlnet.proxy_base import PROXY_BASE_DIR` and `python -m lite_controlnet.proxy_base`
still work."""

from .bases import PROXY_BASE_DIR
from .bases.proxy import ProxyModels, ProxyRecipe, build_proxy_models, make_scheduler, save_proxy_base
from .bases.proxy_training import (
    PROBE_DATA_SEED,
    PROXY_HELD_OUT_SEED,
    TRAIN_DATA_SEED,
    colour_check,
    colour_probe,
    lr_factor,
    main,
    make_proxy_base,
    min_snr_weight,
    render_targets,
)

__all__ = ["PROBE_DATA_SEED", "PROXY_BASE_DIR", "PROXY_HELD_OUT_SEED", "TRAIN_DATA_SEED", "ProxyModels", "ProxyRecipe",
           "build_proxy_models", "colour_check", "colour_probe", "lr_factor", "main", "make_proxy_base", "make_scheduler", "min_snr_weight",
           "render_targets", "save_proxy_base"]

if __name__ == "__main__":
    main()
