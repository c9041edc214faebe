"""The Lite control module: a pixel-wise MLP, average pooling, small per-level layers and
zero-initialised 1x1 projections into the frozen UNet, with feedback from the UNet at each step.

Its base is the pixel-MLP design of "A Lightweight ControlNet for Fine-Tuning Stable Diffusion
on Colab GPU" (section 3), which replaces ControlNet's trainable copy of the UNet encoder with
"pixel-wise MLPs [that] pass through linear layers, utilize average pooling, and inject the
result into the Stable Diffusion (SD) Encoder Block using zero convolution":

    control image (B, 3, H, W) in [0, 1]
      -> pixel MLP: (1x1 conv -> SiLU) x len(pixel_mlp_channels), at full resolution (the
         default design: on each latent pixel's patch of the image, at the latent resolution)
      -> average pool to each skip resolution of the UNet (H/8, H/16, ... for SD1.5)
      -> level block: (conv -> [GroupNorm] -> SiLU) x level_layers, one per resolution
      -> one zero-initialised 1x1 conv per UNet skip residual (and one for the mid block)

Three designs ship (`lite_design`):

- "feedback" (the default, kind `lite`): 3x3 level layers at the coarse levels (H/16 and
  below: spatial context where the image is already pooled small), two per level, each
  normalised; and feedback at every skip and the mid block. At each denoising step each UNet
  skip feature `h_k` (the UNet's own encoder feature, computed anyway: nothing of the UNet is
  copied) and what the UNet's decoder brings into its level `d_k` (the input of the up block
  that consumes the skip, which already holds the coarser levels' corrections) are read through
  group-normalised 1x1 projections, added to the control features of the level, mixed by a 3x3
  conv and projected back by the zero conv:

      r_k = zero_conv_k(SiLU(mix_k(SiLU(control_features[level_k] + read_k(norm(h_k))
                                        + read_decoder_k(norm(d_k))))))

  so the correction depends on the control, the timestep and what has been drawn, and a fine
  correction knows where the coarse ones put the shape. The control features are computed once
  per generation; only the small feedback layers run per step, inside the UNet's forward
  (`feedback`: hooks on the UNet's up blocks, which consume the skips, and on its mid block).
- "static" (kind `lite-static`): the same level blocks without norms and without feedback:
  residuals from the control image alone, computed once per generation.
- "mlp" (kind `lite-mlp`): the paper's design as published, 1x1 level layers and no feedback.

Why these, with the numbers: benchmarks/DESIGN.md.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .errors import UsageError

# The skip residuals of the SD1.5 UNet (block_out_channels 320/640/1280/1280, two layers per
# block): channels and resolution level (0 = 1/8 of the image, 3 = 1/64) of each of the 12.
SD15_RESIDUAL_CHANNELS = (320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280)
SD15_RESIDUAL_LEVELS = (0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3)
# channels of what the SD1.5 UNet's decoder carries into each level (the up block's input)
SD15_DECODER_CHANNELS = (640, 1280, 1280, 1280)

LITE_DESIGNS = ("feedback", "static", "mlp")  # `lite_design`'s names; the kinds lite, lite-static, lite-mlp


def lite_design(name: str, num_levels: int) -> dict[str, Any]:
    """The settings of a named Lite design for a UNet with `num_levels` resolutions.

    - "feedback" (the default): the pixel MLP on patches of `vae_scale_factor` pixels (it runs at
      the latent resolution), two level layers (3x3 at the coarse levels), each normalised
      (GroupNorm), and feedback from the UNet at every level, each feedback layer reading the skip
      it corrects and what the UNet's decoder brings into its level.
    - "static": the same level layers without the norms (as measured best without feedback) and
      without feedback: nothing runs per step.
    - "mlp": the pixel-MLP design of "A Lightweight ControlNet for Fine-Tuning Stable Diffusion on
      Colab GPU": pixel MLP, average pooling, one 1x1 layer per level, zero 1x1 convs.
    """
    coarse_3x3 = (1, *(3,) * (num_levels - 1))
    designs = {
        "feedback": {"pixel_mlp_patch_size": None, "level_channels": 64, "level_layers": 2, "level_kernel_size": coarse_3x3, "level_norm": True,
                     "feedback": True, "feedback_channels": 32},
        "static": {"pixel_mlp_patch_size": 1, "level_channels": 64, "level_layers": 2, "level_kernel_size": coarse_3x3, "level_norm": False,
                   "feedback": False},
        "mlp": {"pixel_mlp_patch_size": 1, "level_channels": 96, "level_layers": 1, "level_kernel_size": 1, "level_norm": False,
                "feedback": False},
    }
    if name not in designs:
        raise ValueError(f"Unknown Lite design {name!r}: use one of {LITE_DESIGNS}.")
    return designs[name]


# The saved config's format (`config.json`'s "lite_format"). A file without one was written before
# formats were numbered (format 0, up to commit 8ce729c): `_upgrade_config` reads it as it was.
LITE_FORMAT = 2
# Format 0's constructor defaults (the paper's design): what a format-0 file means by a setting it
# lacks (one saved before the setting existed).
_FORMAT_0_DEFAULTS = {
    "conditioning_channels": 3, "pixel_mlp_channels": [64, 64], "level_channels": 96, "level_mlp_layers": 1,
    "level_kernel_size": 1, "level_top_down": False, "level_norm": False, "feedback_levels": [],
    "feedback_channels": 64, "feedback_time_channels": 0, "feedback_chain": False, "feedback_norm": False,
    "feedback_into_encoder": False, "feedback_relative": False, "feedback_gate": False, "feedback_decoder": False,
    "time_embedding_channels": 1280, "residual_channels": list(SD15_RESIDUAL_CHANNELS),
    "residual_levels": list(SD15_RESIDUAL_LEVELS), "mid_channels": 1280,
    "decoder_channels": list(SD15_DECODER_CHANNELS), "vae_scale_factor": 8,
}
# What a format-1 file means by a setting it lacks (format 1 ran up to commit 644a896).
_FORMAT_1_DEFAULTS = {"pixel_mlp_patch_size": 1}
# format 0's options of designs that lost (benchmarks/DESIGN.md), off when false or 0
_FORMAT_0_REMOVED = ("feedback_time_channels", "feedback_norm", "feedback_into_encoder", "feedback_chain",
                     "level_top_down", "feedback_relative", "feedback_gate")
_FORMAT_0_COMMIT = "8ce729c"
# format 0's state-dict names that changed
_FORMAT_0_KEYS = {"level_mlps.": "level_blocks."}


def _upgrade_config(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`config` (a saved `LiteControlNetModel` config of any format) in the current format.

    Raises:
        UsageError: naming `source` and the setting, for a format this version cannot read or a
            design option it no longer has.
    """
    config = dict(config)
    version = config.pop("lite_format", 0)
    if version in (1, LITE_FORMAT):
        stale = [k for k in (*_FORMAT_0_REMOVED, "feedback_levels", "feedback_decoder", "level_mlp_layers") if k in config]
        if stale:  # diffusers would ignore it: the file would load as another design
            raise UsageError(f"{source} has lite_format={version} but format 0's setting {stale[0]}: remove it, or "
                             f"remove lite_format to read the file as format 0.")
        if version == 1:  # format 2 added pixel_mlp_patch_size: a file without it means what format 1 did
            defaulted = set(config.get("_use_default_values", ()))
            config.update({k: v for k, v in _FORMAT_1_DEFAULTS.items() if k not in config or k in defaulted})
            config["_use_default_values"] = [k for k in defaulted if k not in _FORMAT_1_DEFAULTS]
        return {**config, "lite_format": LITE_FORMAT}
    if version != 0:
        raise UsageError(f"{source} has lite_format={version!r}: this version of lite-controlnet reads formats 0 to "
                         f"{LITE_FORMAT}; a newer one wrote it.")
    # keys diffusers filled with the constructor's defaults of that time
    defaulted = set(config.pop("_use_default_values", ()))
    old = {**_FORMAT_0_DEFAULTS, **{k: v for k, v in config.items() if k not in defaulted}}
    rerun = f"this version no longer has it (its design runs at commit {_FORMAT_0_COMMIT}: see benchmarks/DESIGN.md)"
    for name in _FORMAT_0_REMOVED:
        if old[name]:
            raise UsageError(f"{source} uses {name}={old[name]!r}: {rerun}.")
    levels, num_levels = sorted(old["feedback_levels"]), max(old["residual_levels"]) + 1
    if levels and levels != list(range(num_levels)):
        raise UsageError(f"{source} uses feedback_levels={old['feedback_levels']!r} (feedback at some levels "
                         f"only): {rerun}.")
    if levels and not old["feedback_decoder"]:
        raise UsageError(f"{source} uses feedback_decoder=False (feedback reading the skips only): {rerun}.")
    kept = ("conditioning_channels", "pixel_mlp_channels", "level_channels", "level_kernel_size", "level_norm",
            "feedback_channels", "residual_channels", "residual_levels", "mid_channels", "decoder_channels",
            "vae_scale_factor")
    private = {k: v for k, v in config.items() if k.startswith("_")}
    return {**private, **{k: old[k] for k in kept}, "level_layers": old["level_mlp_layers"], "feedback": bool(levels),
            **_FORMAT_1_DEFAULTS, "lite_format": LITE_FORMAT}


@dataclass
class LiteControlNetOutput(BaseOutput):
    """Residuals for `UNet2DConditionModel.forward`.

    Args:
        down_block_res_samples: one tensor per UNet skip connection, passed as
            `down_block_additional_residuals`.
        mid_block_res_sample: passed as `mid_block_additional_residual`. Always pass both:
            given only the down residuals, diffusers routes them to its T2I-Adapter path.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


@dataclass
class LiteControlNetFeatures(BaseOutput):
    """What a feedback module computes from the control image alone, once per generation.

    Args:
        features: one tensor per resolution level; `LiteControlNetModel.feedback` turns them,
            with the UNet's own features, into residuals at each step.
    """

    features: tuple[torch.Tensor, ...]


def unet_residual_layout(unet_config: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Channels and resolution levels of a `UNet2DConditionModel`'s skip residuals.

    Follows how the UNet's down path collects `down_block_res_samples`: the output of
    `conv_in`, then one per resnet layer of each down block, then one per downsampler.

    Returns:
        (residual_channels, residual_levels, mid_channels)
    """
    block_out_channels = tuple(unet_config["block_out_channels"])
    layers_per_block = unet_config["layers_per_block"]
    if isinstance(layers_per_block, int):
        layers_per_block = (layers_per_block,) * len(block_out_channels)
    channels, levels = [block_out_channels[0]], [0]
    for level, (width, layers) in enumerate(zip(block_out_channels, layers_per_block)):
        channels += [width] * layers
        levels += [level] * layers
        if level < len(block_out_channels) - 1:  # the downsampler's output, one level lower
            channels.append(width)
            levels.append(level + 1)
    return tuple(channels), tuple(levels), block_out_channels[-1]


def unet_decoder_channels(unet_config: Mapping[str, Any]) -> tuple[int, ...]:
    """Channels of what a `UNet2DConditionModel`'s decoder brings into each resolution level: the
    up block of level l takes what the block below it made (the mid block's, at the coarsest)."""
    widths = tuple(unet_config["block_out_channels"])
    return tuple(widths[min(level + 1, len(widths) - 1)] for level in range(len(widths)))


def _pointwise_mlp(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=1), nn.SiLU()]
        in_channels = width
    return nn.Sequential(*layers)


def _level_block(in_channels: int, width: int, layers: int, kernel_size: int, norm: bool) -> nn.Sequential:
    """`layers` x (conv `kernel_size` -> [GroupNorm] -> SiLU) at one pooled resolution."""
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules.append(nn.Conv2d(in_channels, width, kernel_size, padding=kernel_size // 2))
        if norm:
            modules.append(nn.GroupNorm(_norm_groups(width), width))
        modules.append(nn.SiLU())
        in_channels = width
    return nn.Sequential(*modules)


def _norm_groups(channels: int) -> int:
    return math.gcd(channels, 32)


class _FeedbackLayer(nn.Module):
    """Reads one UNet feature each step (a skip, or the mid block's output) and turns it, with
    the control features of its level and what the decoder brings into that level, into the
    feature's correction (before the zero projection)."""

    def __init__(self, unet_channels: int, feature_channels: int, width: int, decoder_channels: int = 0):
        super().__init__()
        self.groups = _norm_groups(unet_channels)
        self.read = nn.Conv2d(unet_channels, feature_channels, kernel_size=1)
        # what the decoder brings into the level, normalised (none for the mid block: no decoder runs before it)
        self.read_decoder = nn.Conv2d(decoder_channels, feature_channels, kernel_size=1) if decoder_channels else None
        self.mix = nn.Conv2d(feature_channels, width, kernel_size=3, padding=1)

    def forward(self, unet_feature: torch.Tensor, features: torch.Tensor,
                decoded: torch.Tensor | None = None) -> torch.Tensor:
        # the UNet's features differ in scale by level and timestep: normalise before reading
        seen = self.read(F.group_norm(unet_feature.to(features.dtype), self.groups))
        if self.read_decoder is not None:
            seen = seen + _resize(self.read_decoder(decoded), seen.shape[-2:])
        return F.silu(self.mix(F.silu(features + seen)))


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters, so the module's output is zero until training moves it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class LiteControlNetModel(ModelMixin, ConfigMixin):
    """A ControlNet whose trainable copy of the UNet encoder is replaced by a pixel-wise MLP,
    average pooling and small per-level layers, with per-step feedback from the UNet itself.

    The defaults are the default design ("feedback") for SD1.5; `from_unet` fits any SD UNet and
    builds the other designs (`lite_design`).

    Args:
        conditioning_channels: channels of the control image (3 for RGB).
        pixel_mlp_channels: widths of the 1x1 layers applied at full image resolution.
        pixel_mlp_patch_size: pixels per side of the patches the MLP reads (1: each pixel, as the
            paper's design; None: `vae_scale_factor`, so the MLP runs at the latent resolution,
            on each latent pixel's patch of the control image, `F.pixel_unshuffle`d into channels).
            It must divide `vae_scale_factor`.
        level_channels: width of the level blocks applied after pooling.
        level_layers: layers in each level block (0: none).
        level_kernel_size: kernel of those layers, one for all levels or one per level: 1 (a
            pixel-wise MLP) or 3 (spatial context at the pooled resolutions).
        level_norm: a GroupNorm after each level layer (before its SiLU): the two-layer blocks
            learn faster with it.
        feedback: the residuals read the UNet's own features at each step (see the module
            docstring), through `feedback`; False: residuals from the control image alone
            (step-invariant), returned by `forward`.
        feedback_channels: width of the per-step feedback layers.
        residual_channels: channels of each UNet skip residual, in the UNet's order.
        residual_levels: resolution level of each residual (0 is the latent resolution,
            each level halves it).
        mid_channels: channels of the UNet mid block.
        decoder_channels: channels of the decoder's input at each resolution level (read by the
            feedback layers; `from_unet` derives them).
        vae_scale_factor: image pixels per latent pixel (8 for SD; 1 for a pixel-space base).
    """

    # a few MB, and its feedback adds tensors of several layers: one device for the whole module
    # when `from_pretrained(..., device_map=...)` places a model
    _no_split_modules = ["LiteControlNetModel"]

    @register_to_config
    def __init__(
        self,
        conditioning_channels: int = 3,
        pixel_mlp_channels: tuple[int, ...] = (64, 64),
        pixel_mlp_patch_size: int | None = None,
        level_channels: int = 64,
        level_layers: int = 2,
        level_kernel_size: int | tuple[int, ...] = (1, 3, 3, 3),
        level_norm: bool = True,
        feedback: bool = True,
        feedback_channels: int = 32,
        residual_channels: tuple[int, ...] = SD15_RESIDUAL_CHANNELS,
        residual_levels: tuple[int, ...] = SD15_RESIDUAL_LEVELS,
        mid_channels: int = 1280,
        decoder_channels: tuple[int, ...] = SD15_DECODER_CHANNELS,
        vae_scale_factor: int = 8,
    ):
        super().__init__()
        self.register_to_config(lite_format=LITE_FORMAT)
        if len(residual_channels) != len(residual_levels):
            raise ValueError(
                f"residual_channels has {len(residual_channels)} entries but residual_levels has "
                f"{len(residual_levels)}: give one level per residual."
            )
        if not pixel_mlp_channels:
            raise ValueError("pixel_mlp_channels must name at least one width, e.g. (64, 64).")
        if level_layers < 0:
            raise ValueError(f"level_layers must be >= 0, got {level_layers}.")
        num_levels = max(residual_levels) + 1
        kernels = (level_kernel_size,) * num_levels if isinstance(level_kernel_size, int) else tuple(level_kernel_size)
        if len(kernels) != num_levels or any(k not in (1, 3) for k in kernels):
            raise ValueError(f"level_kernel_size must be 1 or 3, or one of those per level ({num_levels}), "
                             f"got {level_kernel_size}.")
        if feedback and len(decoder_channels) != num_levels:
            raise ValueError(f"decoder_channels must give one width per level ({num_levels}), got {decoder_channels}.")
        if feedback_channels < 1:
            raise ValueError(f"feedback_channels must be >= 1, got {feedback_channels}.")
        if vae_scale_factor < 1:
            raise ValueError(f"vae_scale_factor must be >= 1, got {vae_scale_factor}.")
        patch = vae_scale_factor if pixel_mlp_patch_size is None else pixel_mlp_patch_size
        if not isinstance(patch, int) or patch < 1 or vae_scale_factor % patch:
            raise ValueError(f"pixel_mlp_patch_size must be None or a divisor of vae_scale_factor={vae_scale_factor}, "
                             f"got {pixel_mlp_patch_size!r}.")
        self.register_to_config(pixel_mlp_patch_size=patch)  # saved as the number it is

        # 1. the pixel-wise MLP, run at full image resolution
        self.pixel_mlp = _pointwise_mlp(conditioning_channels * patch ** 2, pixel_mlp_channels)
        # 2. one level block per resolution, after pooling
        feature_channels = level_channels if level_layers else pixel_mlp_channels[-1]
        self.level_blocks = nn.ModuleList(
            _level_block(pixel_mlp_channels[-1], level_channels, level_layers, kernel, level_norm) for kernel in kernels
        )
        # 3. with feedback: per skip (and the mid block), a layer that reads the UNet's own feature
        if feedback:
            self.feedback_skips = nn.ModuleList(
                _FeedbackLayer(c, feature_channels, feedback_channels, decoder_channels[level])
                for c, level in zip(residual_channels, residual_levels)
            )
            self.feedback_mid = _FeedbackLayer(mid_channels, feature_channels, feedback_channels)
        # 4. the zero projections into the UNet. Only these are zeroed: two zero layers in
        # series would leave the earlier one without gradient.
        projected = feedback_channels if feedback else feature_channels
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(projected, c, 1)) for c in residual_channels)
        self.mid_zero_conv = zero_module(nn.Conv2d(projected, mid_channels, kernel_size=1))

    @classmethod
    def from_unet(
        cls, unet: Any, vae_scale_factor: int = 8, design: str = "feedback", **overrides: Any
    ) -> LiteControlNetModel:
        """Build a module whose residuals fit `unet` (a `UNet2DConditionModel` or its config).

        Args:
            unet: the frozen base UNet, or its `config`.
            vae_scale_factor: image pixels per latent pixel of the base (8 for SD, 1 without VAE).
            design: "feedback" (the default), "static" or "mlp" (see `lite_design`).
            overrides: any other `__init__` argument, e.g. `level_channels=128`, over the design's.
        """
        config = getattr(unet, "config", unet)
        channels, levels, mid = unet_residual_layout(config)
        settings = {"decoder_channels": unet_decoder_channels(config), **lite_design(design, max(levels) + 1),
                    **overrides}
        return cls(
            residual_channels=channels,
            residual_levels=levels,
            mid_channels=mid,
            vae_scale_factor=vae_scale_factor,
            **settings,
        )

    # saved files: read any format as what it was (`_upgrade_config`)
    @classmethod
    def load_config(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        source = Path(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "", cls.config_name)
        if isinstance(loaded, tuple):
            return (_upgrade_config(loaded[0], str(source)), *loaded[1:])
        return _upgrade_config(loaded, str(source))

    @classmethod
    def extract_init_dict(cls, config_dict: Mapping[str, Any], **kwargs: Any) -> Any:
        config = _upgrade_config(config_dict, "the config given")
        config.pop("lite_format")  # not a setting: __init__ writes the current one
        return super().extract_init_dict(config, **kwargs)

    def _fix_state_dict_keys_on_load(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # weights saved in format 0 name the level blocks as they were then
        for old, new in _FORMAT_0_KEYS.items():
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[new + key[len(old):]] = state_dict.pop(key)
        return super()._fix_state_dict_keys_on_load(state_dict)

    def residual_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Spatial size of each resolution level for a control image of `height` x `width`."""
        h, w = height // self.config.vae_scale_factor, width // self.config.vae_scale_factor
        sizes = []
        for _ in self.level_blocks:
            sizes.append((h, w))
            # The UNet downsamples with a stride-2, padding-1 conv: ceil(size / 2).
            h, w = (h + 1) // 2, (w + 1) // 2
        return sizes

    @property
    def step_invariant(self) -> bool:
        """True when the residuals depend only on the control image (compute once per generation)."""
        return not self.config.feedback

    def control_features(self, controlnet_cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The features of the control image at each resolution level (what a generation caches)."""
        # 1. check the input
        cfg = self.config
        if controlnet_cond.ndim != 4 or controlnet_cond.shape[1] != cfg.conditioning_channels:
            raise ValueError(
                f"controlnet_cond must have shape (batch, {cfg.conditioning_channels}, height, width), "
                f"got {tuple(controlnet_cond.shape)}."
            )
        height, width = controlnet_cond.shape[-2:]
        if height % cfg.vae_scale_factor or width % cfg.vae_scale_factor:
            raise ValueError(
                f"control image size {height}x{width} must be a multiple of vae_scale_factor="
                f"{cfg.vae_scale_factor}; resize it, e.g. to 512x512."
            )
        x = controlnet_cond.to(dtype=self.dtype).contiguous()  # residuals in the UNet's own layout

        # 2. pixel-wise MLP at full resolution, pooled to the first skip resolution. In training its
        # activations are recomputed in backward rather than kept: at full resolution they are the
        # module's largest (4 x 64 channels x 512 x 512 per image), and recomputing them costs little
        sizes = self.residual_sizes(height, width)
        if torch.is_grad_enabled() and self.pixel_mlp[0].weight.requires_grad:
            x = checkpoint(self._pooled_pixel_mlp, x, sizes[0], use_reentrant=False)
        else:
            x = self._pooled_pixel_mlp(x, sizes[0])

        # 3. average-pool to each further skip resolution (each level pools the previous one: the
        # same averages, computed from a smaller tensor), then each level's block
        features = []
        for level_block, size in zip(self.level_blocks, sizes):
            x = _average_pool(x, size)
            features.append(level_block(x))
        return tuple(features)

    def _pooled_pixel_mlp(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        patch = self.config.pixel_mlp_patch_size
        if patch > 1:  # each patch's pixels as channels: the MLP runs on H/patch x W/patch positions
            x = F.pixel_unshuffle(x, patch)
        return _average_pool(self.pixel_mlp(x), size)

    def forward(
        self,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float | torch.Tensor = 1.0,
        return_dict: bool = True,
    ) -> LiteControlNetOutput | LiteControlNetFeatures | tuple:
        """The UNet residuals for a batch of control images; with feedback, the control features
        that `feedback` turns into residuals at each step.

        Args:
            controlnet_cond: control images, (B, conditioning_channels, H, W) in [0, 1], with
                H and W multiples of `vae_scale_factor`.
            conditioning_scale: control strength; multiplies every residual (0 disables control).
                With feedback the residuals are made at each step: give it to `feedback` (or
                `controlled_unet`) instead.
            return_dict: return a `LiteControlNetOutput` (`LiteControlNetFeatures` with
                feedback) rather than a tuple.
        """
        # 1. with feedback, the residuals are made at each step (`feedback`), where the scale applies
        if not self.step_invariant and (isinstance(conditioning_scale, torch.Tensor) or conditioning_scale != 1):
            raise ValueError("this module's residuals come from feedback at each step, where the control "
                             "strength applies: pass conditioning_scale to feedback() or controlled_unet(), "
                             "not to forward().")

        # 2. the control image's features at each level
        features = self.control_features(controlnet_cond)
        if not self.step_invariant:
            return LiteControlNetFeatures(features=features) if return_dict else (features,)

        # 3. zero projections into the UNet's skip connections and mid block
        if isinstance(conditioning_scale, torch.Tensor):  # per sample, (B,) or (B, 1, 1, 1): in the module's dtype
            scale = conditioning_scale.to(features[0].device, features[0].dtype)
            conditioning_scale = scale.reshape(-1, 1, 1, 1) if scale.ndim == 1 else scale
        down = tuple(
            conv(features[level]) * conditioning_scale
            for conv, level in zip(self.zero_convs, self.config.residual_levels)
        )
        mid = self.mid_zero_conv(features[-1]) * conditioning_scale

        if not return_dict:
            return down, mid
        return LiteControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    @contextlib.contextmanager
    def feedback(
        self, unet: nn.Module, features: Sequence[torch.Tensor], conditioning_scale: float | torch.Tensor = 1.0
    ) -> Iterator[None]:
        """While active, each forward of `unet` adds this module's residuals, computed from the
        control `features` (`forward`'s output) and the UNet's own features, to the skips its up
        blocks consume and to its mid block's output.

        The hooks that do it are registered once per UNet (`FeedbackHooks.of`) and stay; this
        context only sets what they apply. So a compiled UNet (`torch.compile`) sees the same hooks
        at every call, and its graphs are guarded on what is active: each call runs the graph of
        its own control, as eager does.

        Args:
            unet: the base `UNet2DConditionModel` the module was made for (`from_unet`), or the
                UNet compiled.
            features: `forward(controlnet_cond).features`, batch as the UNet's.
            conditioning_scale: control strength (0: the UNet's own output), a float or a tensor
                that broadcasts over (B, C, H, W).
        """
        # 1. check the module and the UNet
        if self.step_invariant:
            raise ValueError("feedback needs a module built with feedback=True; this one's residuals come from "
                             "forward() alone.")
        hooks = FeedbackHooks.of(unet)
        num_skips = len(self.config.residual_levels)
        if hooks.num_skips != num_skips:
            raise ValueError(f"this module was made for a UNet with {num_skips} skip connections and a mid block; "
                             f"the UNet given consumes {hooks.num_skips}. Build it with from_unet(unet).")

        # 2. the UNet's hooks apply this module (after any already active on it) while the UNet
        # runs, as often as the caller wants; 3. then no longer
        entry = (self, tuple(features), conditioning_scale)
        hooks.run_last()
        hooks.active = (*hooks.active, entry)
        try:
            yield
        finally:
            hooks.active = tuple(e for e in hooks.active if e is not entry)

    def _correct_mid(self, block: nn.Module, args: tuple, out: torch.Tensor, *, features: Sequence[torch.Tensor],
                     scale: float | torch.Tensor) -> torch.Tensor:
        """The mid block's output plus its correction (a forward hook)."""
        correction = self.mid_zero_conv(self.feedback_mid(out, features[-1]))
        return out + (correction * scale).to(out.dtype)

    def _correct_skips(self, block: nn.Module, args: tuple, kwargs: dict, *, indices: range,
                       features: Sequence[torch.Tensor], scale: float | torch.Tensor) -> tuple[tuple, dict]:
        """An up block's skips plus their corrections (a forward pre-hook)."""
        # what the decoder brings in, normalised once for all the block's skips
        decoder = kwargs.get("hidden_states", args[0] if args else None)
        decoded = F.group_norm(decoder.to(features[0].dtype), _norm_groups(decoder.shape[1]))
        levels, corrected = self.config.residual_levels, []
        for k, skip in zip(indices, kwargs["res_hidden_states_tuple"]):
            correction = self.zero_convs[k](self.feedback_skips[k](skip, features[levels[k]], decoded))
            corrected.append(skip + (correction * scale).to(skip.dtype))
        kwargs["res_hidden_states_tuple"] = tuple(corrected)
        return args, kwargs


class FeedbackHooks:
    """The hooks through which feedback modules act inside a UNet's forward: a forward hook on its
    mid block and a forward pre-hook on each up block (which consume the skips), registered once
    per UNet and kept. They apply the modules in `active`, each a (module, features, scale) that
    `LiteControlNetModel.feedback` sets for the time of its context; with none active they change
    nothing.

    Registered once rather than per call because `torch.compile` does not re-check a module's
    hooks: a graph compiled without them would be reused once they were added. Fixed hooks that
    read `active` make Dynamo guard on it (how many are active, which modules, the features' shapes
    and the scale), so a compiled UNet recompiles when the control changes from none to some, or
    back, and otherwise reuses the graph of that control.
    """

    _ATTRIBUTE = "_lite_feedback_hooks"

    def __init__(self, unet: nn.Module):
        if getattr(unet, "mid_block", None) is None or not hasattr(unet, "up_blocks"):
            raise ValueError(f"feedback needs a UNet2DConditionModel with a mid block and up blocks; got "
                             f"{type(unet).__name__}.")
        self.active: tuple[tuple[LiteControlNetModel, tuple[torch.Tensor, ...], float | torch.Tensor], ...] = ()
        # the up blocks consume the skips from the last: each takes the last len(resnets) left
        self.num_skips = sum(len(block.resnets) for block in unet.up_blocks)
        left = self.num_skips
        handle = unet.mid_block.register_forward_hook(self._correct_mid)
        self._registered = [(unet.mid_block._forward_hooks, handle.id)]
        for block in unet.up_blocks:
            indices = range(left - len(block.resnets), left)
            handle = block.register_forward_pre_hook(functools.partial(self._correct_skips, indices=indices),
                                                     with_kwargs=True)
            self._registered.append((block._forward_pre_hooks, handle.id))
            left -= len(block.resnets)

    def run_last(self) -> None:
        """Put these hooks after every other hook of their blocks, as if registered now: hooks
        registered before a `feedback` context see the UNet's own features, those registered in it
        the corrected ones."""
        for hooks, hook_id in self._registered:
            if next(reversed(hooks)) != hook_id:
                hooks.move_to_end(hook_id)

    @classmethod
    def of(cls, unet: nn.Module) -> FeedbackHooks:
        """The hooks of `unet` (the module a `torch.compile` wraps, for a compiled one), registered
        on first use."""
        module = getattr(unet, "_orig_mod", unet)  # torch.compile's OptimizedModule
        hooks = module.__dict__.get(cls._ATTRIBUTE)
        if hooks is None:
            hooks = cls(module)
            object.__setattr__(module, cls._ATTRIBUTE, hooks)  # a plain attribute: no weights, no config
            forget_graphs_without_hooks(unet)
        return hooks

    def _correct_mid(self, block: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        active = self.active
        if not active:
            return None
        for module, features, scale in active:
            out = module._correct_mid(block, args, out, features=features, scale=scale)
        return out

    def _correct_skips(self, block: nn.Module, args: tuple, kwargs: dict, *, indices: range) -> tuple | None:
        active = self.active
        if not active:
            return None
        for module, features, scale in active:
            args, kwargs = module._correct_skips(block, args, kwargs, indices=indices, features=features, scale=scale)
        return args, kwargs


def forget_graphs_without_hooks(unet: nn.Module) -> None:
    """After hooks are first registered on a UNet already compiled, drop the graphs Dynamo compiled:
    it does not re-check hooks, and a graph compiled before them (the UNet run elsewhere first)
    would run without them. Dynamo keeps no graphs per module, so all are dropped, once per UNet;
    those of other modules compile again at their next call."""
    if unet is not getattr(unet, "_orig_mod", unet) or getattr(unet, "_compiled_call_impl", None) is not None:
        torch._dynamo.reset()


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """`x` at `size`: averaged down, or bilinearly up."""
    if x.shape[-2] >= size[0]:
        return _average_pool(x, tuple(size))
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _average_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h % size[0] == 0 and w % size[1] == 0:
        # the same averages as F.avg_pool2d, as a mean over reshaped blocks: its backward is a
        # plain broadcast (avg_pool2d's backward kernel took 19% of the module's GPU time on an H100)
        kh, kw = h // size[0], w // size[1]
        return x.reshape(*x.shape[:-2], size[0], kh, size[1], kw).mean(dim=(-3, -1))
    return F.adaptive_avg_pool2d(x, size)
