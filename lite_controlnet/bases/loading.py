"""Load the frozen base model (SD1.5 or any SD-style folder) as separate components.

Real use passes a Hugging Face Hub id (default SD1.5) or a local folder in the diffusers
layout. `"tiny"` builds a small random stand-in (see `bases/tiny.py`) once and loads it
through the same code path, so tests and demos run offline.

`"proxy"` is the small pixel-space base the package ships (see `bases/proxy.py`): trained on
synthetic Fill50k, it draws a disk in the prompt's colours, so learning can be judged offline.
`"proxy-shapes"` is its latent-space sibling for the shapes world (see `bases/proxy_shapes.py`):
a VAE with scale factor 4 and a UNet in its 32x32 latents, 128 px scenes.

A base may have no VAE (a `vae/` folder is absent, or `model_index.json` lists it as null):
it then works in pixel space, encode and decode are the identity, and `vae_scale_factor` is 1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.import_utils import DummyObject
from safetensors import SafetensorError
from transformers import CLIPTextModel, CLIPTokenizer

from . import PROXY_BASE_DIR, PROXY_SHAPES_BASE_DIR

DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_BASE = "tiny"
PROXY_BASE = "proxy"
PROXY_SHAPES_BASE = "proxy-shapes"
# the short names of the bases the package ships: (folder, the make-proxy-base option that re-makes it)
SHIPPED_BASES = {PROXY_BASE: (PROXY_BASE_DIR, ""), PROXY_SHAPES_BASE: (PROXY_SHAPES_BASE_DIR, " --world shapes")}


class BaseModelError(OSError):
    """A base model could not be found or loaded; the message says what to pass instead."""


@dataclass
class BaseModels:
    """The frozen parts of a Stable Diffusion model. `vae` is None for a pixel-space base."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    scheduler: SchedulerMixin
    vae: AutoencoderKL | None = None

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel: 8 for SD's VAE, 1 without a VAE."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def freeze(self) -> BaseModels:
        """Switch every network to eval mode with gradients off."""
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None:
                module.requires_grad_(False).eval()
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BaseModels:
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None:
                module.to(device) if dtype is None else module.to(device, dtype)
        return self


def cache_dir() -> Path:
    """Where generated models are kept: $LITE_CONTROLNET_CACHE or ~/.cache/lite_controlnet."""
    return Path(os.environ.get("LITE_CONTROLNET_CACHE", Path.home() / ".cache" / "lite_controlnet"))


def resolve_base(base: str | Path) -> str:
    """Turn the short names ("tiny", "proxy", "proxy-shapes") into a folder; pass hub ids and folders through."""
    if str(base) in SHIPPED_BASES:
        folder, world = SHIPPED_BASES[str(base)]
        if not (folder / "model_index.json").is_file():
            raise BaseModelError(f"The {base} base is not in this install ({folder}); train one with "
                                 f"`python -m lite_controlnet make-proxy-base DIR{world}` and pass --base DIR.")
        return str(folder)
    if str(base) == TINY_BASE:
        from .tiny import make_tiny_base

        folder = cache_dir() / "tiny-sd"
        if not (folder / "model_index.json").is_file():
            make_tiny_base(folder)
        return str(folder)
    return str(base)


def _has_vae(base: str, local: bool) -> bool:
    if local:
        index = Path(base) / "model_index.json"
        if index.is_file() and json.loads(index.read_text()).get("vae", [None])[0] is None:
            return False
        return (Path(base) / "vae" / "config.json").is_file()
    return True  # hub models in the SD layout all have one


def load_base(
    base: str | Path = DEFAULT_BASE,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **load_kwargs: Any,
) -> BaseModels:
    """Load tokenizer, text encoder, UNet, VAE and scheduler of a base model, frozen.

    Args:
        base: a hub id (e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5"), a local folder in
            the diffusers layout, "proxy" (the shipped pixel-space base), "proxy-shapes" (the shipped
            latent-space base of the shapes world) or "tiny" (random, for tests).
        torch_dtype: dtype of the networks (e.g. torch.float16 on a GPU).
        device: where to put the networks.
        load_kwargs: passed to every `from_pretrained` (e.g. `revision`, `variant`, `cache_dir`).
    """
    # weights are read from safetensors only: unpickling a .bin can run any code it holds
    ours = {"use_safetensors": True}
    base = resolve_base(base)
    local = Path(base).expanduser().is_dir()
    if local:
        base = str(Path(base).expanduser())
        if not (Path(base) / "unet").is_dir():
            raise BaseModelError(
                f"{base} is a folder but not a diffusers model: it has no unet/ subfolder. Expected "
                "the layout of a diffusers pipeline (unet/, text_encoder/, tokenizer/, scheduler/, "
                "and vae/ unless the base works in pixel space)."
            )
    elif base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise BaseModelError(f"Base model folder {base} does not exist.")

    def load(component: str, cls: Any, **kwargs: Any) -> Any:
        weights = "use_safetensors" in kwargs
        if local:
            _check_local_component(Path(base) / component, cls, weights)
        try:
            loaded = cls.from_pretrained(base, subfolder=component, **load_kwargs, **kwargs,
                                         **({"output_loading_info": True} if weights else {}))
        except (OSError, ValueError, SafetensorError) as error:
            if local:
                first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
                raise BaseModelError(f"Could not load {component}/ of the base model folder {base}: {first}") \
                    from error
            raise BaseModelError(
                f"Could not load the {component} of base model {base!r} from the Hugging Face Hub "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                "The hub may be unreachable (no internet, or HF_HUB_OFFLINE=1), the id may be wrong, "
                "or the model may need a login. Pass a local folder in the diffusers layout instead: "
                f"download it once where there is internet (`huggingface-cli download {base} "
                "--local-dir sd15`) and pass --base sd15, or try the package offline with --base proxy (the small "
                "base it ships, 32 px)."
            ) from error
        if not weights:
            return loaded
        model, info = loaded
        # a tensor missing from the weights would be left random (a text encoder) or unset (a UNet)
        missing = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
        if missing:
            raise BaseModelError(f"Could not load {component}/ of the base model {base}: its weights lack "
                                 f"{len(missing)} of the tensors its config.json describes "
                                 f"({', '.join(map(str, missing[:3]))}{', ...' if len(missing) > 3 else ''}).")
        return model

    dtype_kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    scheduler = _scheduler(load("scheduler", _SchedulerConfig), f"{base}/scheduler")
    models = BaseModels(
        tokenizer=load("tokenizer", CLIPTokenizer),
        text_encoder=load("text_encoder", CLIPTextModel, **dtype_kwargs, **ours),
        unet=load("unet", UNet2DConditionModel, **dtype_kwargs, **ours),
        scheduler=scheduler,
        vae=load("vae", AutoencoderKL, **dtype_kwargs, **ours) if _has_vae(base, local) else None,
    )
    models.freeze()
    if device is not None:
        models.to(device=device)
    return models


def _check_local_component(folder: Path, cls: Any, weights: bool) -> None:
    """Refuse a component folder that describes another class, or whose weights are only pickles."""
    config_file = folder / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as error:
            raise BaseModelError(f"{config_file} is unreadable ({type(error).__name__}); expected the config "
                                 f"of a {cls.__name__}.") from None
        named = config.get("_class_name") if isinstance(config, dict) else None
        architectures = config.get("architectures") if isinstance(config, dict) else None
        if isinstance(named, str) and named != cls.__name__ or \
                isinstance(architectures, list) and architectures and cls.__name__ not in architectures:
            raise BaseModelError(f"{config_file} describes a {named or architectures[0]!r}; expected a "
                                 f"{cls.__name__} there (the diffusers layout of a Stable Diffusion model).")
    if weights and folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise BaseModelError(f"{folder}/ holds only pickled weights ({', '.join(pickles)}), which are not "
                                 "loaded: unpickling a file can run any code it holds. Convert them to safetensors "
                                 "where you trust them (from_pretrained, then save_pretrained(..., "
                                 "safe_serialization=True)).")


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # those of diffusers' DDPMScheduler


def check_prediction_type(scheduler: SchedulerMixin, purpose: str = "training") -> str:
    """The base's `prediction_type` if `purpose` knows what the UNet predicts; else a `ValueError` naming it.

    Args:
        scheduler: the base's scheduler.
        purpose: what needs it, for the message ("training", "one-step scoring").
    """
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"The base's scheduler has prediction_type={kind!r}; {purpose} supports "
                         f"{', '.join(map(repr, PREDICTION_TYPES))}.")
    return kind


def _scheduler(config: dict[str, Any], where: str) -> SchedulerMixin:
    """The scheduler a base's config names: any of the scheduler classes of the installed diffusers."""
    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    # a scheduler whose optional dependency is missing (scipy, torchsde) is a placeholder class
    placeholder = isinstance(cls, DummyObject)
    if not (placeholder or isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise BaseModelError(
            f"{where}: _class_name={name!r} is not a scheduler of diffusers {diffusers.__version__} (expected one "
            "such as 'PNDMScheduler' or 'DDIMScheduler'; a newer scheduler needs a newer diffusers)."
        )
    try:
        return cls.from_config(config)
    except ImportError as error:  # the placeholder says what to install
        raise BaseModelError(f"{where}: the {name} scheduler cannot be built here: {' '.join(str(error).split())}") \
            from error


class _SchedulerConfig:
    """Loads only a scheduler's config, so any scheduler class in the folder is accepted."""

    @staticmethod
    def from_pretrained(base: str, subfolder: str, **kwargs: Any) -> dict[str, Any]:
        kwargs = {k: v for k, v in kwargs.items() if k in ("cache_dir", "revision", "local_files_only", "token")}
        return dict(diffusers.DDPMScheduler.load_config(base, subfolder=subfolder, **kwargs))
