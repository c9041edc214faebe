"""A run that starts from a trained control module (`TrainConfig.init_from`, `--init-from`):
fine-tuning on new data. It takes the module's weights only: the optimizer starts fresh, at
step 0. Once the run has a checkpoint, resuming takes the checkpoint's weights, as every run does.

The module must be of the run's kind and fit its base; either mismatch is refused in one line
before any step, since a module loaded into the wrong shapes would fail deep inside training.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..controls import control_kind_of, load_control
from ..errors import UsageError
from ..hub.download import module_folder
from .checkpoint import verify_module_folder

__all__ = ["check_init_fits", "open_init_module"]


def open_init_module(source: str, kind: str) -> torch.nn.Module:
    """The trained module `source` (a folder or a Hub model id), verified and of control kind `kind`.

    Raises:
        UsageError: a missing or unreachable module, or one of another kind (both are named).
        DamagedFolderError: files that do not match the folder's manifest.
    """
    folder = module_folder(source, "--init-from")
    verify_module_folder(folder)  # a damaged copy would start the run from wrong weights
    try:
        module = load_control(folder)
    except (OSError, ValueError) as error:
        raise UsageError(f"--init-from {source}: {error}") from None
    found = control_kind_of(module)
    if found != kind:
        raise UsageError(f"--init-from {source} holds a {found} module but --control-kind is {kind}: pass "
                         f"--control-kind {found} to train it on (with the --control-options it was trained with, "
                         "if any), or leave out --init-from.")
    return module


def check_init_fits(init: torch.nn.Module, cfg: Any, unet: Any, vae_scale_factor: int) -> None:
    """Refuse `init` unless its tensors have the shapes of the module the run `cfg` builds on this
    base (`unet`, `vae_scale_factor`); checked on PyTorch's meta device, before the latent cache
    is built, so that a module that does not fit is refused at once."""
    from accelerate import init_empty_weights

    from ..controls import build_control
    from ..pipeline import check_control_fits

    source = cfg.init_from
    try:
        check_control_fits(init, unet, vae_scale_factor)
    except ValueError as error:
        reason = str(error).split(" Sample with", 1)[0]
        raise UsageError(f"--init-from {source} does not fit --base: {reason} Train on the base it was trained on, "
                         "or leave out --init-from.") from None
    try:
        with init_empty_weights():  # a UNet of the base's shapes too: ControlNet copies its encoder
            shapes = type(unet).from_config(unet.config)
            ours = build_control(cfg.control_kind, shapes, vae_scale_factor=vae_scale_factor,
                                 **(cfg.control_options or {})).state_dict()
    except (TypeError, ValueError, RuntimeError):  # options the module refuses: the trainer says so
        return
    theirs = init.state_dict()
    differ = sorted(set(theirs) ^ set(ours)) or [k for k in ours if theirs[k].shape != ours[k].shape]
    if differ:
        name = differ[0]
        shapes = (f"{tuple(theirs[name].shape)} there, {tuple(ours[name].shape)} here"
                  if name in theirs and name in ours else f"{'only there' if name in theirs else 'only here'}")
        raise UsageError(f"--init-from {source} does not fit the module this run builds (--control-options "
                         f"{json.dumps(cfg.control_options or {})}): {len(differ)} tensor(s) differ, e.g. {name} "
                         f"({shapes}). Pass the --control-options it was trained with (its config.json holds them).")
