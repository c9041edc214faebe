"""One small interface over the two control modules: Lite and the original ControlNet.

The pipeline, the trainer and the comparison build, load and run a control module only
through these functions, so `kind="controlnet"` trains and samples the original
`diffusers.ControlNetModel` exactly like the Lite module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import ControlNetModel
from safetensors import SafetensorError

from .model import LiteControlNetModel

ControlKind = Literal["lite", "controlnet"]
CONTROL_KINDS = ("lite", "controlnet")
CONTROL_CLASSES = {"lite": LiteControlNetModel, "controlnet": ControlNetModel}


@dataclass
class ControlResiduals:
    """What a control module adds to the UNet: one tensor per skip connection, and the mid block."""

    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `UNet2DConditionModel.forward` (always both fields)."""
        return {"down_block_additional_residuals": self.down, "mid_block_additional_residual": self.mid}

    def repeat(self, times: int) -> ControlResiduals:
        """The same residuals for a batch repeated `times` (e.g. 2 for classifier-free guidance)."""
        return ControlResiduals(tuple(r.repeat(times, 1, 1, 1) for r in self.down), self.mid.repeat(times, 1, 1, 1))


def _check_options(target: Any, options: dict[str, Any], fixed: tuple[str, ...]) -> None:
    """Unknown module settings fail with the list of those accepted."""
    import inspect

    accepted = [name for name in inspect.signature(target).parameters if name not in ("self", "cls", *fixed)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"Unknown control option(s) {unknown}; {getattr(target, '__qualname__', target)} accepts "
                         f"{accepted}.")


def build_control(kind: ControlKind, unet: Any, vae_scale_factor: int = 8, **kwargs: Any) -> torch.nn.Module:
    """A freshly initialised control module that fits `unet`.

    Args:
        kind: "lite" (`LiteControlNetModel`) or "controlnet" (`diffusers.ControlNetModel`, a
            trainable copy of the UNet encoder initialised from `unet`'s weights).
        unet: the base `UNet2DConditionModel`.
        vae_scale_factor: image pixels per latent pixel of the base (8 for SD, 1 without VAE).
        kwargs: passed to the module's `from_unet`.
    """
    if kind == "lite":
        _check_options(LiteControlNetModel, kwargs, ("residual_channels", "residual_levels", "mid_channels",
                                                     "vae_scale_factor"))
        return LiteControlNetModel.from_unet(unet, vae_scale_factor=vae_scale_factor, **kwargs)
    if kind == "controlnet":
        # ControlNet's condition encoder halves the image once per entry after the first;
        # it must land on the latent resolution.
        widths = (16, 32, 96, 256)[: vae_scale_factor.bit_length()]
        if 2 ** (len(widths) - 1) != vae_scale_factor:
            raise ValueError(f"ControlNet needs vae_scale_factor 1, 2, 4 or 8, got {vae_scale_factor}.")
        _check_options(ControlNetModel.from_unet, kwargs, ("unet",))
        kwargs.setdefault("conditioning_embedding_out_channels", widths)
        return ControlNetModel.from_unet(unet, **kwargs)
    raise ValueError(f"Unknown control kind {kind!r}: use one of {CONTROL_KINDS}.")


def control_kind(control: torch.nn.Module) -> ControlKind:
    """The kind name ("lite" or "controlnet") of a control module."""
    for kind, cls in CONTROL_CLASSES.items():
        if isinstance(control, cls):
            return kind  # type: ignore[return-value]
    raise TypeError(f"{type(control).__name__} is not a control module: expected one of "
                    f"{[c.__name__ for c in CONTROL_CLASSES.values()]}.")


def load_control(path: str | Path, **kwargs: Any) -> torch.nn.Module:
    """Load a control module saved with `save_pretrained`, whichever kind it is.

    Args:
        path: a folder holding `config.json` and the weights.
        kwargs: passed to `from_pretrained` (e.g. `torch_dtype=torch.float16`).
    """
    expected = ("expected a folder with config.json and diffusion_pytorch_model.safetensors, as written by "
                "save_pretrained (e.g. <output>/final)")
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"No control module at {path}: {expected}.")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise OSError(f"{config_file} is unreadable ({error}): {expected}.") from error
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    kwargs.setdefault("use_safetensors", True)  # our folders hold safetensors: never unpickle a .bin
    for cls in CONTROL_CLASSES.values():
        if cls.__name__ == class_name:
            try:
                return cls.from_pretrained(path, **kwargs)
            except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # a damaged or foreign folder
                first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
                raise OSError(f"Cannot load the control module in {path} ({first}): {expected}.") from error
    raise ValueError(f"{config_file} describes a {class_name!r}, which is not a control module: "
                     f"expected one of {[c.__name__ for c in CONTROL_CLASSES.values()]}.")


def is_step_invariant(control: torch.nn.Module) -> bool:
    """True when the residuals depend only on the control image (compute once per generation)."""
    module = getattr(control, "module", control)  # under DistributedDataParallel
    return bool(getattr(module, "step_invariant", False))


def control_residuals(
    control: torch.nn.Module,
    *,
    sample: torch.Tensor,
    timestep: torch.Tensor | float,
    encoder_hidden_states: torch.Tensor,
    controlnet_cond: torch.Tensor,
    conditioning_scale: float = 1.0,
) -> ControlResiduals:
    """Run a control module of either kind and return its residuals for the UNet.

    Args:
        control: a `LiteControlNetModel` or a `ControlNetModel`.
        sample: the noisy latents the UNet will see (ignored by step-invariant modules).
        timestep: the diffusion timestep (ignored by step-invariant modules).
        encoder_hidden_states: text embeddings (ignored by step-invariant modules).
        controlnet_cond: control images in [0, 1], (B, C, H, W) at image resolution.
        conditioning_scale: control strength.
    """
    if is_step_invariant(control):
        down, mid = control(controlnet_cond, conditioning_scale=conditioning_scale, return_dict=False)
    else:
        down, mid = control(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=controlnet_cond,
            conditioning_scale=conditioning_scale,
            return_dict=False,
        )
    return ControlResiduals(tuple(down), mid)
