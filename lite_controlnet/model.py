"""The Lite control module: pixel-wise MLPs, average pooling, zero-initialised 1x1 projections.

The seed (section 3) replaces ControlNet's trainable copy of the UNet encoder with
"pixel-wise MLPs [that] pass through linear layers, utilize average pooling, and inject the
result into the Stable Diffusion (SD) Encoder Block using zero convolution". Here that is:

    control image (B, 3, H, W) in [0, 1]
      -> pixel MLP: (1x1 conv -> SiLU) x len(pixel_mlp_channels), at full resolution
      -> average pool to each skip resolution of the UNet (H/8, H/16, ... for SD1.5)
      -> level MLP: (1x1 conv -> SiLU) x level_mlp_layers, one per resolution
      -> one zero-initialised 1x1 conv per UNet skip residual (and one for the mid block)

The module sees neither the timestep nor the noisy latent, so a generation computes its
residuals once and reuses them at every denoising step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

# The skip residuals of the SD1.5 UNet (block_out_channels 320/640/1280/1280, two layers per
# block): channels and resolution level (0 = 1/8 of the image, 3 = 1/64) of each of the 12.
SD15_RESIDUAL_CHANNELS = (320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280)
SD15_RESIDUAL_LEVELS = (0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3)


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


def _pointwise_mlp(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=1), nn.SiLU()]
        in_channels = width
    return nn.Sequential(*layers)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters, so the module's output is zero until training moves it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class LiteControlNetModel(ModelMixin, ConfigMixin):
    """A ControlNet whose trainable copy of the UNet encoder is replaced by pixel-wise MLPs.

    Args:
        conditioning_channels: channels of the control image (3 for RGB).
        pixel_mlp_channels: widths of the 1x1 layers applied at full image resolution.
        level_channels: width of the per-resolution MLP applied after pooling.
        level_mlp_layers: number of 1x1 layers per resolution after pooling (0: none).
        residual_channels: channels of each UNet skip residual, in the UNet's order.
        residual_levels: resolution level of each residual (0 is the latent resolution,
            each level halves it).
        mid_channels: channels of the UNet mid block.
        vae_scale_factor: image pixels per latent pixel (8 for SD; 1 for a pixel-space base).
    """

    # Residuals depend only on the control image: compute once per generation.
    step_invariant = True

    @register_to_config
    def __init__(
        self,
        conditioning_channels: int = 3,
        pixel_mlp_channels: tuple[int, ...] = (64, 64),
        level_channels: int = 96,
        level_mlp_layers: int = 1,
        residual_channels: tuple[int, ...] = SD15_RESIDUAL_CHANNELS,
        residual_levels: tuple[int, ...] = SD15_RESIDUAL_LEVELS,
        mid_channels: int = 1280,
        vae_scale_factor: int = 8,
    ):
        super().__init__()
        if len(residual_channels) != len(residual_levels):
            raise ValueError(
                f"residual_channels has {len(residual_channels)} entries but residual_levels has "
                f"{len(residual_levels)}: give one level per residual."
            )
        if not pixel_mlp_channels:
            raise ValueError("pixel_mlp_channels must name at least one width, e.g. (64, 64).")
        if level_mlp_layers < 0:
            raise ValueError(f"level_mlp_layers must be >= 0, got {level_mlp_layers}.")
        if vae_scale_factor < 1:
            raise ValueError(f"vae_scale_factor must be >= 1, got {vae_scale_factor}.")
        num_levels = max(residual_levels) + 1

        # 1. the pixel-wise MLP, run at full image resolution
        self.pixel_mlp = _pointwise_mlp(conditioning_channels, pixel_mlp_channels)
        # 2. one small pixel-wise MLP per resolution, after pooling
        feature_channels = level_channels if level_mlp_layers else pixel_mlp_channels[-1]
        self.level_mlps = nn.ModuleList(
            _pointwise_mlp(pixel_mlp_channels[-1], [level_channels] * level_mlp_layers)
            for _ in range(num_levels)
        )
        # 3. the zero projections into the UNet. Only these are zeroed: two zero layers in
        # series would leave the earlier one without gradient.
        self.zero_convs = nn.ModuleList(
            zero_module(nn.Conv2d(feature_channels, c, kernel_size=1)) for c in residual_channels
        )
        self.mid_zero_conv = zero_module(nn.Conv2d(feature_channels, mid_channels, kernel_size=1))

    @classmethod
    def from_unet(cls, unet: Any, vae_scale_factor: int = 8, **overrides: Any) -> LiteControlNetModel:
        """Build a module whose residuals fit `unet` (a `UNet2DConditionModel` or its config).

        Args:
            unet: the frozen base UNet, or its `config`.
            vae_scale_factor: image pixels per latent pixel of the base (8 for SD, 1 without VAE).
            overrides: any other `__init__` argument, e.g. `level_channels=128`.
        """
        config = getattr(unet, "config", unet)
        channels, levels, mid = unet_residual_layout(config)
        return cls(
            residual_channels=channels,
            residual_levels=levels,
            mid_channels=mid,
            vae_scale_factor=vae_scale_factor,
            **overrides,
        )

    def residual_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Spatial size of each resolution level for a control image of `height` x `width`."""
        h, w = height // self.config.vae_scale_factor, width // self.config.vae_scale_factor
        sizes = []
        for _ in self.level_mlps:
            sizes.append((h, w))
            # The UNet downsamples with a stride-2, padding-1 conv: ceil(size / 2).
            h, w = (h + 1) // 2, (w + 1) // 2
        return sizes

    def forward(
        self,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float | torch.Tensor = 1.0,
        return_dict: bool = True,
    ) -> LiteControlNetOutput | tuple:
        """Compute the UNet residuals for a batch of control images.

        Args:
            controlnet_cond: control images, (B, conditioning_channels, H, W) in [0, 1], with
                H and W multiples of `vae_scale_factor`.
            conditioning_scale: control strength; multiplies every residual (0 disables control).
            return_dict: return a `LiteControlNetOutput` rather than a tuple.
        """
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

        # 2. pixel-wise MLP at full resolution
        x = self.pixel_mlp(x)

        # 3. average-pool to each skip resolution (each level pools the previous one: the same
        # averages, computed from an 8x smaller tensor), then the per-level MLP
        features = []
        for level_mlp, size in zip(self.level_mlps, self.residual_sizes(height, width)):
            x = _average_pool(x, size)
            features.append(level_mlp(x))

        # 4. zero projections into the UNet's skip connections
        if isinstance(conditioning_scale, torch.Tensor):  # per sample, (B,) or (B, 1, 1, 1): in the module's dtype
            scale = conditioning_scale.to(features[0].device, features[0].dtype)
            conditioning_scale = scale.reshape(-1, 1, 1, 1) if scale.ndim == 1 else scale
        down = tuple(
            conv(features[level]) * conditioning_scale
            for conv, level in zip(self.zero_convs, cfg.residual_levels)
        )
        mid = self.mid_zero_conv(features[-1]) * conditioning_scale

        if not return_dict:
            return down, mid
        return LiteControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)


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
