"""The Lite control module: pixel-wise MLPs, average pooling, zero-initialised 1x1 projections.

The seed (section 3) replaces ControlNet's trainable copy of the UNet encoder with
"pixel-wise MLPs [that] pass through linear layers, utilize average pooling, and inject the
result into the Stable Diffusion (SD) Encoder Block using zero convolution". Here that is:

    control image (B, 3, H, W) in [0, 1]
      -> pixel MLP: (1x1 conv -> SiLU) x len(pixel_mlp_channels), at full resolution
      -> average pool to each skip resolution of the UNet (H/8, H/16, ... for SD1.5)
      -> level MLP: (1x1 conv -> SiLU) x level_mlp_layers, one per resolution
      -> one zero-initialised 1x1 conv per UNet skip residual (and one for the mid block)

That design (`lite_design("seed")`, the kind `lite-seed`) sees neither the timestep nor the
noisy latent, so a generation computes its residuals once; measured on the proxy base it marks the outline's edges
but barely moves the disk in full sampling. A per-pixel MLP followed by averaging sees each pixel
alone (it can tell where the outline is, not which side is inside), and residuals fixed for the
whole generation cannot follow what the generation has drawn so far, while the layout is decided
in the first, noisy steps. Two settings address those two causes:

- `level_kernel_size=3`: the per-resolution layers are 3x3 convolutions, spatial context where
  the image is already pooled small (cheap: at SD1.5's 32x32 level a 3x3 conv of 64 channels
  costs about 0.04 GMAC, against the UNet's ~340 per step at 512 px).
- `feedback_levels`: feedback from the generation, the lesson of ControlNet-XS: at every
  denoising step each UNet skip feature `h_k` (the UNet's own encoder feature, computed anyway:
  nothing of the UNet is copied) is read through a group-normalised 1x1 projection, added to the
  control feature of its level, mixed by a 3x3 conv, and projected back by the zero conv:

      r_k = zero_conv_k(SiLU(mix_k(SiLU(control_features[level_k] + read_k(norm(h_k))))))

  so the correction depends on the control, the timestep and what has been drawn. The control
  features are still computed once per generation; only the small per-skip layers run per step,
  inside the UNet's forward (`feedback`: hooks on the UNet's up blocks, which consume the skips,
  and on its mid block).

The default design (`lite_design("feedback")`, the kind `lite`) has 3x3 level layers at the
coarse levels (H/16 and below), two per level, each followed by a GroupNorm (`level_norm`;
computed once per generation: free at sampling time), and feedback at every skip and the mid
block, where each feedback layer also reads what the UNet's decoder brings into its level
(`feedback_decoder`, below). Its per-step work is a few small convolutions beside the UNet's;
`lite_design("static")` keeps a control path without the feedback, for a generation that must
cost nothing per step.

- `feedback_decoder`: the skips are consumed by the UNet's up blocks from the coarsest to the
  finest; when an up block starts, what the decoder brings in (the block's input) already holds
  the coarser levels' corrections, decoded by the UNet's own layers. Each feedback layer reads
  it too (a group-normalised 1x1 projection, added to what it reads of the skip):

      r_k = zero_conv_k(SiLU(mix_k(SiLU(control_features[level_k] + read_k(norm(h_k))
                                        + read_decoder_k(norm(d_level_k))))))

  so a fine correction knows where the coarse ones put the disk, through the UNet's computation
  (nothing of it is copied or recomputed), and needs only to draw its edge along the outline.

How it is trained matters as much as its shape: the trainer draws the default module's
timesteps as T2I-Adapter does (`TrainConfig.timestep_sampling="cubic"`: t = T(1 - u^3), more of
the noisy steps where the layout is decided). Measured on the proxy base
(`benchmarks/lite_designs.py`, one seed, 1,000 steps), that alone took the sampled disk IoU of
the one-layer design from 0.41 to 0.66, where wider layers, feedback at every level or a
time-conditioned scale and shift (`feedback_time_channels`, FiLM from the UNet's own time
embedding) changed little.

The norms came from a failure: four or six level layers did not learn at all within
1,000 steps, a sign that the plain stack of small convolutions trains badly. A GroupNorm after
each level layer made the two-layer design learn faster at every point measured (one-step IoU
0.854 against 0.841 at step 800, sampled disk IoU 0.747 against 0.686 at step 1,000, one seed);
a norm in the feedback layers as well (`feedback_norm`) added nothing.

Reading the decoder came last, from where the one-step gap lay (`benchmarks/one_step_by_size.py`):
the design of the time (feedback at the coarse levels, reading the skips only) fell behind
ControlNet mostly on small circles, whose edges the coarse levels cannot place and the finest
levels, which saw the control alone, could not fill. Feedback at every level alone did not help;
with each feedback layer also reading the decoder it did, at once and by far (one seed, designs
run): one-step IoU 0.912 against 0.854 at step 800 (ControlNet: 0.886), sampled disk IoU 0.806
against 0.747 at step 1,000 (ControlNet: 0.773). Reading the decoder at the coarse levels only
did not help: the finest levels are where it matters. In the fidelity study (three seeds, at the
training time where ControlNet plateaus) it makes more than ControlNet's one-step gain and over
90% of its sampled disk IoU, and draws the small circles better than ControlNet does
(`benchmarks/one_step_by_size.py`).

More settings stay available because they were measured (same benchmark), none of them
better than the default of the time at about 800 steps, where the fidelity study compares at
equal wall-clock:

- `feedback_into_encoder`: each correction is added where the UNet's encoder makes its skip, so
  the encoder's later blocks compute on it (as T2I-Adapter and ControlNet-XS inject). Ahead at
  1,000 steps on two seeds, behind at 800 on both, and the backward through those blocks takes
  training memory past half of ControlNet's at SD1.5 size.
- `feedback_chain`: each feedback layer also reads the previous one's output, one small network
  beside the UNet's, as ControlNet-XS's control encoder. Slower to learn.
- `level_top_down`: coarse-to-fine control features (a feature pyramid), so the finest levels
  know which side of the outline is inside. Slower to learn; so are deeper level layers.
- `feedback_relative`: each correction scaled by the size of the feature it corrects (the idea
  of ControlNeXt's cross normalisation). No better.
- `feedback_gate`: each correction also scales the feature it corrects (as SPADE modulates).
  Faster at first (level with ControlNet at step 200), no better from step 800 on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

# The skip residuals of the SD1.5 UNet (block_out_channels 320/640/1280/1280, two layers per
# block): channels and resolution level (0 = 1/8 of the image, 3 = 1/64) of each of the 12.
SD15_RESIDUAL_CHANNELS = (320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280)
SD15_RESIDUAL_LEVELS = (0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3)
# channels of what the SD1.5 UNet's decoder carries into each level (the up block's input)
SD15_DECODER_CHANNELS = (640, 1280, 1280, 1280)

# Named designs (`build_control`'s kinds lite-seed, lite-static and lite): settings over the
# defaults, which are the seed's design, so a module saved before the others existed loads as it was.
LITE_DESIGNS = ("seed", "static", "feedback")


def lite_design(name: str, num_levels: int) -> dict[str, Any]:
    """The settings of a named Lite design for a UNet with `num_levels` resolutions.

    - "seed": pixel MLP, average pooling, 1x1 level MLPs, zero 1x1 convs (the seed's section 3).
    - "static": the feedback design's control path without the feedback (and without its norms,
      as measured), two layers per level (3x3 at the coarse levels): nothing runs per step.
    - "feedback": two level layers (3x3 at the coarse levels), each normalised (GroupNorm), and
      feedback from the UNet at every level, each feedback layer reading the skip it corrects and
      what the UNet's decoder brings into its level.
    """
    coarse = tuple(range(1, num_levels))
    designs = {
        "seed": {},
        "static": {"level_kernel_size": (1, *(3,) * len(coarse)), "level_mlp_layers": 2, "level_channels": 64},
        "feedback": {"level_kernel_size": (1, *(3,) * len(coarse)), "level_mlp_layers": 2, "level_norm": True,
                     "feedback_levels": tuple(range(num_levels)), "feedback_decoder": True, "feedback_channels": 32,
                     "level_channels": 64},
    }
    if name not in designs:
        raise ValueError(f"Unknown Lite design {name!r}: use one of {LITE_DESIGNS}.")
    return designs[name]


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


def _level_layers(in_channels: int, width: int, layers: int, kernel_size: int, norm: bool = False) -> nn.Sequential:
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


class _FeedbackSkip(nn.Module):
    """Reads one UNet skip feature each step and turns it, with the control features of its
    level (and, given `time_channels`, the UNet's time embedding), into that skip's correction
    (before the zero projection)."""

    def __init__(self, skip_channels: int, feature_channels: int, width: int, time_channels: int = 0,
                 chain: bool = False, norm: bool = False, gate: bool = False, decoder_channels: int = 0):
        super().__init__()
        self.groups = _norm_groups(skip_channels)
        self.read = nn.Conv2d(skip_channels, feature_channels, kernel_size=1)
        # with decoder_channels: what the UNet's decoder brings into this level (normalised), read as well
        self.read_decoder = nn.Conv2d(decoder_channels, feature_channels, kernel_size=1) if decoder_channels else None
        self.mix = nn.Conv2d(feature_channels, width, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(_norm_groups(width), width) if norm else nn.Identity()
        # a scale and shift per channel from the timestep, zero at first (FiLM)
        self.film = zero_module(nn.Linear(time_channels, 2 * width)) if time_channels else None
        # with a chain: what the previous feedback layer of this step computed, read in
        self.carry = nn.Conv2d(width, feature_channels, kernel_size=1) if chain else None
        # with a gate: a scale per position and channel of the skip itself, zero at first (as SPADE modulates)
        self.gate = zero_module(nn.Conv2d(width, skip_channels, kernel_size=1)) if gate else None

    def forward(self, skip: torch.Tensor, features: torch.Tensor, time: torch.Tensor | None = None,
                previous: torch.Tensor | None = None, decoded: torch.Tensor | None = None) -> torch.Tensor:
        # the UNet's features differ in scale by level and timestep: normalise before reading
        seen = self.read(F.group_norm(skip.to(features.dtype), self.groups))
        if self.read_decoder is not None and decoded is not None:
            seen = seen + _resize(self.read_decoder(decoded), seen.shape[-2:])
        if self.carry is not None and previous is not None:
            seen = seen + self.carry(_resize(previous, features.shape[-2:]))
        mixed = self.norm(self.mix(F.silu(features + seen)))
        if self.film is not None and time is not None:
            scale, shift = self.film(time)[:, :, None, None].chunk(2, dim=1)
            mixed = mixed * (1 + scale) + shift
        return F.silu(mixed)


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
        level_mlp_layers: number of layers per resolution after pooling (0: none).
        level_kernel_size: kernel of those layers: 1 (the seed's pixel-wise MLP) or 3 (spatial
            context at the pooled resolutions); one for all levels, or one per level.
        level_top_down: pass each level's features, upsampled, into the next finer level's layers
            (coarse to fine, as in a feature pyramid), so the fine levels see the layout.
        level_norm: a GroupNorm after each per-resolution layer (before its SiLU).
        feedback_levels: the resolution levels whose skips (and, if any, the mid block) read the
            UNet's own features at each step (see the module docstring); () for residuals computed
            from the control image alone (step-invariant).
        feedback_channels: width of the per-step feedback layers.
        feedback_time_channels: with feedback, the width of a projection of the UNet's own time
            embedding that scales and shifts each feedback layer's output (0: none).
        feedback_chain: with feedback, each feedback layer also reads what the previous one (in the
            order the UNet makes or consumes the skips) computed at this step, so the feedback
            layers form one small network beside the UNet's, as ControlNet-XS's control encoder.
        feedback_norm: with feedback, a GroupNorm after each feedback layer's 3x3 mix.
        feedback_into_encoder: with feedback, add each correction where the UNet's encoder makes
            the skip, so the encoder's later blocks compute on the corrected feature (as T2I-Adapter
            injects), rather than only to the skip its up block consumes: True for every feedback
            level, or the levels (the later blocks' backward costs memory in training).
        feedback_relative: with feedback, scale each feedback layer's correction by the standard deviation of the
            UNet feature it is added to (per sample), so that its size follows the feature's, which
            changes with the level and the timestep (the idea of ControlNeXt's cross normalisation).
        feedback_gate: with feedback, each feedback layer also scales the UNet feature it corrects,
            per position and channel (`h + r + h * g`, g zero at first), as SPADE modulates features
            by a spatial condition.
        feedback_decoder: with feedback, each feedback layer of a skip also reads what the UNet's
            decoder brings into that skip's level (the input of the up block that consumes it),
            which the coarser levels' corrections have already shaped: the finer corrections follow
            the layout being decoded, through the UNet's own computation. (A correction made in
            the encoder, with feedback_into_encoder, reads no decoder: it has not run yet.)
        time_embedding_channels: width of the UNet's time embedding (`from_unet` reads it).
        residual_channels: channels of each UNet skip residual, in the UNet's order.
        residual_levels: resolution level of each residual (0 is the latent resolution,
            each level halves it).
        mid_channels: channels of the UNet mid block.
        decoder_channels: channels of the decoder's input at each resolution level (`from_unet`
            reads them; used with feedback_decoder).
        vae_scale_factor: image pixels per latent pixel (8 for SD; 1 for a pixel-space base).
    """

    @register_to_config
    def __init__(
        self,
        conditioning_channels: int = 3,
        pixel_mlp_channels: tuple[int, ...] = (64, 64),
        level_channels: int = 96,
        level_mlp_layers: int = 1,
        level_kernel_size: int | tuple[int, ...] = 1,
        level_top_down: bool = False,
        level_norm: bool = False,
        feedback_levels: tuple[int, ...] = (),
        feedback_channels: int = 64,
        feedback_time_channels: int = 0,
        feedback_chain: bool = False,
        feedback_norm: bool = False,
        feedback_into_encoder: bool | tuple[int, ...] = False,
        feedback_relative: bool = False,
        feedback_gate: bool = False,
        feedback_decoder: bool = False,
        time_embedding_channels: int = 1280,
        residual_channels: tuple[int, ...] = SD15_RESIDUAL_CHANNELS,
        residual_levels: tuple[int, ...] = SD15_RESIDUAL_LEVELS,
        mid_channels: int = 1280,
        decoder_channels: tuple[int, ...] = SD15_DECODER_CHANNELS,
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
        num_levels = max(residual_levels) + 1
        kernels = (level_kernel_size,) * num_levels if isinstance(level_kernel_size, int) else tuple(level_kernel_size)
        if len(kernels) != num_levels or any(k not in (1, 3) for k in kernels):
            raise ValueError(f"level_kernel_size must be 1 or 3, or one of those per level ({num_levels}), "
                             f"got {level_kernel_size}.")
        if any(level not in range(num_levels) for level in feedback_levels):
            raise ValueError(f"feedback_levels must name levels 0 to {num_levels - 1}, got {feedback_levels}.")
        if feedback_time_channels < 0:
            raise ValueError(f"feedback_time_channels must be >= 0, got {feedback_time_channels}.")
        if feedback_decoder and len(decoder_channels) != num_levels:
            raise ValueError(f"decoder_channels must give one width per level ({num_levels}), got {decoder_channels}.")
        if feedback_channels < 1:
            raise ValueError(f"feedback_channels must be >= 1, got {feedback_channels}.")
        if vae_scale_factor < 1:
            raise ValueError(f"vae_scale_factor must be >= 1, got {vae_scale_factor}.")

        # 1. the pixel-wise MLP, run at full image resolution
        self.pixel_mlp = _pointwise_mlp(conditioning_channels, pixel_mlp_channels)
        # 2. one small network per resolution, after pooling
        feature_channels = level_channels if level_mlp_layers else pixel_mlp_channels[-1]
        self.level_mlps = nn.ModuleList(
            _level_layers(pixel_mlp_channels[-1], level_channels, level_mlp_layers, kernel, level_norm) for kernel in kernels
        )
        if level_top_down:  # a 1x1 projection of each coarser level's features into the finer level's input
            self.top_down = nn.ModuleList(
                nn.Conv2d(feature_channels, pixel_mlp_channels[-1], kernel_size=1) for _ in kernels[1:])
        # 3. with feedback: per skip of those levels (and the mid block), layers that read the
        # UNet's own feature
        time_channels = feedback_time_channels if feedback_levels else 0
        if time_channels:  # the UNet's time embedding, read once per step for all feedback layers
            self.feedback_time = nn.Sequential(nn.SiLU(), nn.Linear(time_embedding_channels, time_channels), nn.SiLU())
        self.feedback_skips = nn.ModuleDict({
            str(k): _FeedbackSkip(c, feature_channels, feedback_channels, time_channels, feedback_chain, feedback_norm,
                                  feedback_gate, decoder_channels[level] if feedback_decoder else 0)
            for k, (c, level) in enumerate(zip(residual_channels, residual_levels)) if level in feedback_levels
        })
        if feedback_levels:
            self.feedback_mid = _FeedbackSkip(mid_channels, feature_channels, feedback_channels, time_channels,
                                              feedback_chain, feedback_norm, feedback_gate)
        # 4. the zero projections into the UNet. Only these are zeroed: two zero layers in
        # series would leave the earlier one without gradient.
        self.zero_convs = nn.ModuleList(
            zero_module(nn.Conv2d(feedback_channels if str(k) in self.feedback_skips else feature_channels, c, 1))
            for k, c in enumerate(residual_channels)
        )
        mid_in = feedback_channels if feedback_levels else feature_channels
        self.mid_zero_conv = zero_module(nn.Conv2d(mid_in, mid_channels, kernel_size=1))

    @classmethod
    def from_unet(
        cls, unet: Any, vae_scale_factor: int = 8, design: str = "feedback", **overrides: Any
    ) -> LiteControlNetModel:
        """Build a module whose residuals fit `unet` (a `UNet2DConditionModel` or its config).

        Args:
            unet: the frozen base UNet, or its `config`.
            vae_scale_factor: image pixels per latent pixel of the base (8 for SD, 1 without VAE).
            design: "feedback" (the default), "static" or "seed" (see `lite_design`).
            overrides: any other `__init__` argument, e.g. `level_channels=128`, over the design's.
        """
        config = getattr(unet, "config", unet)
        channels, levels, mid = unet_residual_layout(config)
        settings = {"decoder_channels": unet_decoder_channels(config), **lite_design(design, max(levels) + 1),
                    **overrides}
        if settings.get("feedback_time_channels"):
            settings.setdefault("time_embedding_channels", _time_embedding_channels(config))
        return cls(
            residual_channels=channels,
            residual_levels=levels,
            mid_channels=mid,
            vae_scale_factor=vae_scale_factor,
            **settings,
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

    @property
    def step_invariant(self) -> bool:
        """True when the residuals depend only on the control image (compute once per generation)."""
        return not self.config.feedback_levels

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
        # same averages, computed from a smaller tensor), then the per-level layers
        pooled = []
        for size in sizes:
            x = _average_pool(x, size)
            pooled.append(x)
        if not self.config.level_top_down:
            return tuple(level_mlp(x) for level_mlp, x in zip(self.level_mlps, pooled))
        # coarse to fine: each level's layers also read the coarser level's features
        features = [self.level_mlps[-1](pooled[-1])]
        for level in range(len(sizes) - 2, -1, -1):
            coarse = _resize(features[0], sizes[level])
            features.insert(0, self.level_mlps[level](pooled[level] + self.top_down[level](coarse)))
        return tuple(features)

    def _pooled_pixel_mlp(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return _average_pool(self.pixel_mlp(x), size)

    def forward(
        self,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float | torch.Tensor = 1.0,
        return_dict: bool = True,
    ) -> LiteControlNetOutput | LiteControlNetFeatures | tuple:
        """Compute the UNet residuals for a batch of control images; with feedback, the control
        features that `feedback` turns into residuals at each step.

        Args:
            controlnet_cond: control images, (B, conditioning_channels, H, W) in [0, 1], with
                H and W multiples of `vae_scale_factor`.
            conditioning_scale: control strength; multiplies every residual (0 disables control).
                Unused with feedback (give it to `feedback`).
            return_dict: return a `LiteControlNetOutput` (`LiteControlNetFeatures` with
                feedback) rather than a tuple.
        """
        features = self.control_features(controlnet_cond)
        if not self.step_invariant:
            return LiteControlNetFeatures(features=features) if return_dict else (features,)

        # 4. zero projections into the UNet's skip connections
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
        control `features` (`forward`'s output) and the UNet's own skip and mid features, to the
        skips its up blocks consume and to its mid block's output.

        Args:
            unet: the base `UNet2DConditionModel` the module was made for (`from_unet`).
            features: `forward(controlnet_cond).features`, batch as the UNet's.
            conditioning_scale: control strength (0: the UNet's own output).
        """
        if self.step_invariant:
            raise ValueError("feedback needs a module with feedback_levels; this one's residuals come from "
                             "forward() alone.")
        levels = self.config.residual_levels
        # the up blocks consume the skips from the last: each takes the last len(resnets) left
        blocks, left = [], len(levels)
        for block in unet.up_blocks:
            blocks.append((block, range(left - len(block.resnets), left)))
            left -= len(block.resnets)
        if left != 0 or unet.mid_block is None:
            raise ValueError(f"this module was made for a UNet with {len(levels)} skip connections and a mid block; "
                             f"the UNet given consumes {len(levels) - left}. Build it with from_unet(unet).")

        # this forward's time embedding, projected (with feedback_time_channels), and the last
        # feedback layer's output (with feedback_chain)
        step: dict[str, Any] = {}

        def keep_time(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            step["time"] = self.feedback_time(out.to(features[0].dtype))

        chain, relative = self.config.feedback_chain, self.config.feedback_relative
        reads_decoder = self.config.feedback_decoder

        def correction(index: int | None, feature: torch.Tensor, decoded: torch.Tensor | None = None) -> torch.Tensor:
            if index is not None and str(index) not in self.feedback_skips:
                # a level without feedback: the residual of the control features alone
                out = self.zero_convs[index](features[levels[index]])
                return (out * conditioning_scale).to(feature.dtype)
            layer, zero_conv, own = ((self.feedback_mid, self.mid_zero_conv, features[-1]) if index is None else
                                     (self.feedback_skips[str(index)], self.zero_convs[index], features[levels[index]]))
            hidden = layer(feature, own, step.get("time"), step.get("previous"), decoded)
            if chain:
                step["previous"] = hidden
            out = zero_conv(hidden)
            if relative:
                out = out * feature.to(out.dtype).std(dim=(1, 2, 3), keepdim=True)
            if layer.gate is not None:
                out = out + feature.to(out.dtype) * layer.gate(hidden)
            return (out * conditioning_scale).to(feature.dtype)

        # with feedback_into_encoder, the feedback skips are corrected as the down blocks make them;
        # the up blocks correct the rest
        into = self.config.feedback_into_encoder
        into_levels = self.config.feedback_levels if into is True else (into or ())
        in_encoder = {int(k) for k in self.feedback_skips if levels[int(k)] in into_levels}

        def down_hook(indices: range) -> Any:
            def hook(module: nn.Module, args: tuple, out: tuple) -> tuple:
                hidden, skips = out
                skips = tuple(s + correction(i, s) if i in in_encoder else s for i, s in zip(indices, skips))
                return skips[-1], skips  # the block's last skip is what the next block reads

            return hook

        def up_hook(indices: range) -> Any:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                skips, decoded = kwargs["res_hidden_states_tuple"], None
                if reads_decoder:  # what the decoder brings in, normalised once for all the block's skips
                    decoder = kwargs.get("hidden_states", args[0] if args else None)
                    decoded = F.group_norm(decoder.to(features[0].dtype), _norm_groups(decoder.shape[1]))
                kwargs["res_hidden_states_tuple"] = tuple(
                    s if i in in_encoder else s + correction(i, s, decoded) for i, s in zip(indices, skips))
                return args, kwargs

            return hook

        def start_chain(module: nn.Module, args: tuple) -> None:
            step.pop("previous", None)

        handles = [block.register_forward_pre_hook(up_hook(indices), with_kwargs=True) for block, indices in blocks]
        if chain:  # each forward starts its own chain
            handles.append(unet.register_forward_pre_hook(start_chain))
        if 0 in in_encoder:  # the UNet's conv_in makes skip 0
            handles.append(unet.conv_in.register_forward_hook(lambda module, args, out: out + correction(0, out)))
        first = 1  # each down block makes the next ones
        for block in unet.down_blocks if in_encoder else ():
            made = range(first, first + len(block.resnets) + len(block.downsamplers or ()))
            if in_encoder.intersection(made):
                handles.append(block.register_forward_hook(down_hook(made)))
            first = made.stop
        handles.append(unet.mid_block.register_forward_hook(lambda module, args, out: out + correction(None, out)))
        if self.config.feedback_time_channels:
            handles.append(unet.time_embedding.register_forward_hook(keep_time))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _time_embedding_channels(unet_config: Mapping[str, Any]) -> int:
    """Width of a `UNet2DConditionModel`'s time embedding (as its `__init__` computes it)."""
    factor = 2 if unet_config.get("time_embedding_type", "positional") == "fourier" else 4
    return unet_config.get("time_embedding_dim") or unet_config["block_out_channels"][0] * factor


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
