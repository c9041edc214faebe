"""A small latent-space text-to-image base for the shapes world (`--base proxy-shapes`).

The pixel-space proxy base (`proxy.py`) never exercises Stable Diffusion's path through a VAE:
control at image resolution, latents several times smaller, images decoded before they are
scored. This base does, at about the proxy's cost: a VAE with scale factor 4 turns 128 px
shapes scenes (`data.shapes`) into 32x32x4 latents, and a UNet of the proxy's design denoises
them from the scene's prompt ("a red square and a teal circle on a beige background"). It
draws objects of about the prompt's colours on a background of about the prompt's colour,
somewhere: where they go is what a control module adds.

The folder is in the diffusers layout, so `load_base(folder)` and
`LiteControlNetPipeline.from_base(folder)` run on it unchanged:

    vae/            AutoencoderKL, scale factor 4, 4 latent channels, no attention
    unet/           UNet2DConditionModel, in_channels=4, the proxy base's design (`ProxyRecipe`)
    text_encoder/   a tiny CLIPTextModel, trained with the UNet
    tokenizer/      CLIP BPE with one token per word of a shapes prompt (`shapes_vocabulary`)
    scheduler/      the proxy base's DDPMScheduler (`proxy.make_scheduler`)

Why these sizes (2-core CPU prototypes, one thread): scale factor 4 keeps the UNet's input at
32x32, the proxy base's size, so a step costs about what the proxy's does; the VAE's 12x
compression still keeps flat colours and sharp edges of these scenes. The VAE has no
attention, so it is trained on 32 px crops (a sixteenth of the cost of whole scenes) and runs
on 128 px ones unchanged.

How it is trained: `proxy_shapes_training.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL

from ..data.colours import COLOURS
from ..data.shapes import DEFAULT_SIZE, MAX_OBJECTS, SHAPE_KINDS
from .proxy import ProxyRecipe

__all__ = ["PROMPT_WORDS", "ProxyShapesRecipe", "ShapesVaeRecipe", "build_vae", "shapes_vocabulary"]

# The words of a shapes prompt besides colours and shapes ("an orange circle on a beige background").
PROMPT_WORDS = ("a", "an", "and", "on", "background")
INITIAL_LOG_VARIANCE = -8.0  # of the VAE's posterior (see `build_vae`)


def shapes_vocabulary() -> list[str]:
    """Every word a shapes prompt can hold: colour words, shape kinds and `PROMPT_WORDS`.

    Each becomes one token (`tiny.write_tokenizer_files`), so the text encoder learns a word,
    not its byte pieces; the comma between objects is CLIP's own one-character token.
    """
    words = {w for colour in COLOURS for w in colour.words.split()}
    return sorted(words | set(SHAPE_KINDS) | set(PROMPT_WORDS))


@dataclass(frozen=True)
class ShapesVaeRecipe:
    """The VAE of the shapes base and how it is trained (before the UNet, then frozen).

    Args:
        block_out_channels: encoder/decoder widths, one per resolution; the image is halved
            len - 1 times (scale factor 4 for three widths).
        latent_channels: channels of the latents.
        steps: optimizer steps.
        batch_size: crops per step.
        crop: side of the random square crop of each 128 px scene it trains on (the VAE is
            fully convolutional, so it then runs on whole scenes).
        lr: peak AdamW learning rate (warm-up, then cosine decay to 10%).
        warmup_steps: linear warm-up steps.
        kl_weight: weight of the KL term; small, as SD's VAE (1e-6), so the latents keep
            detail and the posterior stays nearly deterministic.
        mse_weight: weight of the squared error beside the absolute error (L1 keeps flat
            colours exact; the squared error punishes the rare large miss at an edge).
    """

    # 16 channels at full size learn as fast per step as 32 (prototype: loss 0.43 after 150 steps
    # either way) at two thirds of the cost
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    # shapes are kept within 500 steps; the exact colours take longer (held-out PSNR 19.8 dB
    # after 500 steps, 23.2 dB after 1500 of a 2400-step run)
    steps: int = 4000
    # many small crops rather than a few large ones: at the same cost per step, more scenes and
    # colours per step (prototype: loss 0.43 instead of 0.52 after 150 steps)
    batch_size: int = 32
    crop: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    kl_weight: float = 1e-6
    mse_weight: float = 1.0

    def __post_init__(self) -> None:
        if len(self.block_out_channels) < 2 or any(w % 8 for w in self.block_out_channels):
            raise ValueError(f"block_out_channels must be 2 or more multiples of 8 (GroupNorm groups), "
                             f"got {self.block_out_channels}.")
        if self.latent_channels < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"latent_channels, steps and batch_size must be >= 1, got {self.latent_channels}, "
                             f"{self.steps} and {self.batch_size}.")
        if self.crop % self.scale_factor:
            raise ValueError(f"crop must be a multiple of the scale factor {self.scale_factor}, got {self.crop}.")
        if self.kl_weight < 0 or self.mse_weight < 0:
            raise ValueError(f"kl_weight and mse_weight must be >= 0, got {self.kl_weight} and {self.mse_weight}.")

    @property
    def scale_factor(self) -> int:
        """Image pixels per latent pixel."""
        return 2 ** (len(self.block_out_channels) - 1)


def _default_unet() -> ProxyRecipe:
    # the proxy base's design and optimiser at latent size; each scene is rendered once at 128 px
    return ProxyRecipe(resolution=DEFAULT_SIZE // 4, steps=6000, render_scale=1)


@dataclass(frozen=True)
class ProxyShapesRecipe:
    """How the shapes base is built and trained.

    Args:
        image_size: scene size in pixels (the UNet works on image_size / the VAE's scale factor).
        objects: (fewest, most) objects per training scene.
        vae: the VAE and its training (`ShapesVaeRecipe`).
        unet: the UNet, the text encoder and their training, as the proxy base's (`ProxyRecipe`;
            its `resolution` is the latent size, its `render_scale` must be 1: scenes are flat
            and drawn at `image_size`).

    `unet.seed` seeds both stages: the weights, the crops, the noise, the timesteps and the
    prompt dropout. The data is always shapes scenes of dataset seed 0: the VAE sees scenes
    0, 1, ... and so does the UNet, each once per stage.
    """

    image_size: int = DEFAULT_SIZE
    objects: tuple[int, int] = (1, MAX_OBJECTS)
    vae: ShapesVaeRecipe = field(default_factory=ShapesVaeRecipe)
    unet: ProxyRecipe = field(default_factory=_default_unet)

    def __post_init__(self) -> None:
        factor = self.vae.scale_factor
        if self.image_size % factor or self.image_size // factor != self.unet.resolution:
            raise ValueError(f"unet.resolution must be image_size / the VAE's scale factor "
                             f"({self.image_size} / {factor}), got {self.unet.resolution}.")
        if self.vae.crop > self.image_size:
            raise ValueError(f"vae.crop must be <= image_size {self.image_size}, got {self.vae.crop}.")
        if self.unet.render_scale != 1:
            raise ValueError(f"unet.render_scale must be 1 (scenes are drawn at image_size), "
                             f"got {self.unet.render_scale}.")
        low, high = self.objects
        if not 1 <= low <= high <= MAX_OBJECTS:
            raise ValueError(f"objects must be a (fewest, most) pair from 1 to {MAX_OBJECTS}, got {self.objects}.")


def build_vae(recipe: ShapesVaeRecipe, image_size: int) -> AutoencoderKL:
    """A freshly initialised VAE for `recipe` (seed the global generator first for fixed weights)."""
    levels = len(recipe.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=recipe.block_out_channels,
        layers_per_block=1,
        latent_channels=recipe.latent_channels,
        norm_num_groups=8,
        sample_size=image_size,
        # attention over 32x32 latents would cost more than the rest of the encoder; flat
        # scenes need none, and without it the VAE is fully convolutional (trained on crops)
        mid_block_add_attention=False,
    )
    # The posterior starts with log-variance ~0: unit noise on latents whose signal is still
    # small, which the reconstruction must first learn to shrink (the KL term is too weak to
    # matter). Starting at a std of e^-4 lets the first steps learn the image instead.
    with torch.no_grad():
        vae.quant_conv.bias[recipe.latent_channels :] = INITIAL_LOG_VARIANCE
    return vae
