"""A small pixel-space text-to-image base, trained here on synthetic Fill50k targets.

Real SD1.5 cannot be downloaded everywhere, and the random `tiny` base draws nothing, so a
control module trained on it cannot be judged. This base can: from "red circle with navy
background" it draws a flat disk of about the right colour on a background of about the
right colour, somewhere (where the disk goes is what a control module adds).

It is a Stable Diffusion stack without a VAE (images of 32 px are the "latents"), in the
diffusers folder layout, so `load_base(folder)` and `LiteControlNetPipeline.from_base(folder)`
run on it unchanged:

    unet/           UNet2DConditionModel, in_channels=3, ~3M parameters
    text_encoder/   a tiny CLIPTextModel, trained with the UNet
    tokenizer/      CLIP BPE with one token per colour word (`tiny.tiny_vocabulary`)
    scheduler/      DDPMScheduler, squared-cosine betas, v-prediction
    model_index.json  with "vae": [null, null]

Why the recipe is what it is (2-core CPU prototypes): with min-SNR weighting in its usual
v-prediction form and a frozen random text encoder, the model learned the disk but ignored
the prompt's colours after 2.8k steps. The colours must come from the prompt only at the
noisiest steps (at any lower noise the image's hundreds of pixels reveal its mean colours),
and that weighting gives those steps almost no weight. Here they keep full weight (see
`proxy_training.min_snr_weight`), the text encoder is trained with the UNet, and the prompt
also reaches every ResNet block through the timestep embedding (`addition_embed_type="text"`:
attention pooling over the text tokens), besides cross-attention at 8 and 4 px.

How it is trained: `proxy_training.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from . import PROXY_BASE_DIR
from .tiny import tiny_vocabulary, write_tokenizer_files

__all__ = ["PROXY_BASE_DIR", "ProxyModels", "ProxyRecipe", "build_proxy_models", "make_scheduler", "save_proxy_base"]


@dataclass(frozen=True)
class ProxyRecipe:
    """How the proxy base is built and trained.

    Args:
        resolution: image size in pixels (the UNet works on pixels: no VAE).
        steps: optimizer steps.
        batch_size: images per step.
        lr: peak AdamW learning rate of the UNet's convolutions.
        attention_lr_scale: multiplies `lr` for the attention blocks, the text path and the
            text encoder, which must learn the colour words from scratch.
        warmup_steps: linear warm-up, then cosine decay to 10% of the peak.
        prompt_dropout: share of prompts replaced by "" so that classifier-free guidance works.
        min_snr_gamma: caps the loss weight of nearly clean steps, as min-SNR weighting (Hang
            et al. 2023) does, gamma 5 as in the paper; see `proxy_training.min_snr_weight` for the form.
        ema_decay: decay of the exponential moving average that is saved.
        block_out_channels: UNet widths, one per resolution (32, 16, 8, 4 px).
        cross_attention_levels: which of those resolutions get cross-attention (0 = full size).
        pooled_text: also add attention-pooled text to the timestep embedding, so every
            ResNet block sees the prompt (`addition_embed_type="text"` in diffusers).
        text_width: width of the text encoder (= the UNet's cross_attention_dim).
        text_layers: transformer layers of the text encoder.
        train_text_encoder: train the text encoder with the UNet (else it stays random).
        render_scale: targets are drawn this many times larger and box-filtered down, so disk
            edges are anti-aliased as in a downscaled photograph.
        seed: seed of the weights, the noise, the timesteps and the prompt dropout. The data
            is always Fill50k (dataset seed 0) samples 0, 1, 2, ..., each seen once.
    """

    resolution: int = 32
    steps: int = 7000
    batch_size: int = 16
    lr: float = 4e-4
    attention_lr_scale: float = 2.0
    warmup_steps: int = 200
    prompt_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    block_out_channels: tuple[int, ...] = (32, 48, 64, 96)
    cross_attention_levels: tuple[int, ...] = (2, 3)
    pooled_text: bool = True
    text_width: int = 64
    text_layers: int = 2
    train_text_encoder: bool = True
    render_scale: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        if self.resolution < 2 ** (levels - 1) or self.resolution % 2 ** (levels - 1):
            raise ValueError(
                f"resolution must be a positive multiple of {2 ** (levels - 1)} "
                f"(the UNet halves it {levels - 1} times), got {self.resolution}."
            )
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}.")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")
        if any(not 0 <= level < levels for level in self.cross_attention_levels):
            raise ValueError(
                f"cross_attention_levels must lie in 0..{levels - 1} (one per UNet resolution), "
                f"got {self.cross_attention_levels}."
            )
        if any(width % 8 for width in self.block_out_channels) or self.text_width % 8:
            raise ValueError(
                f"block_out_channels and text_width must be multiples of 8 (GroupNorm groups and "
                f"attention heads), got {self.block_out_channels} and {self.text_width}."
            )


@dataclass
class ProxyModels:
    """The trainable parts of the proxy base."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler = field(repr=False)


def make_scheduler() -> DDPMScheduler:
    """The noise schedule of the proxy base.

    Squared-cosine betas (Nichol & Dhariwal 2021) suit small pixel images, whose content the
    linear schedule destroys too early; v-prediction stays well-posed where the cosine
    schedule's SNR reaches ~0; "trailing" spacing makes few-step samplers start at t=999.
    No clipping of the predicted clean image: DDIM clips it without recomputing its noise
    estimate, which shifted the colours (CIEDE2000 of the background 8.9 instead of 3.8 on a
    4k-step proxy base, 20 DDIM steps).
    """
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        timestep_spacing="trailing",
    )


def build_proxy_models(recipe: ProxyRecipe, tokenizer_dir: str | Path, in_channels: int = 3,
                       words: list[str] | None = None) -> ProxyModels:
    """Freshly initialised tokenizer, text encoder, UNet and scheduler for `recipe`.

    Args:
        recipe: sizes of the networks.
        tokenizer_dir: a folder to write the tokenizer files to (created).
        in_channels: channels the UNet denoises: 3 for pixels, the VAE's latent channels for a
            latent-space base.
        words: the tokenizer's one-token words (default `tiny.tiny_vocabulary()`).
    """
    torch.manual_seed(recipe.seed)
    tokenizer_dir = Path(tokenizer_dir)
    write_tokenizer_files(tokenizer_dir, tiny_vocabulary() if words is None else words)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=recipe.text_width,
            intermediate_size=2 * recipe.text_width,
            num_hidden_layers=recipe.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    levels = range(len(recipe.block_out_channels))
    attend = set(recipe.cross_attention_levels)
    unet = UNet2DConditionModel(
        sample_size=recipe.resolution,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=recipe.block_out_channels,
        layers_per_block=1,
        down_block_types=tuple("CrossAttnDownBlock2D" if i in attend else "DownBlock2D" for i in levels),
        # up blocks run from the lowest resolution back up
        up_block_types=tuple("CrossAttnUpBlock2D" if i in attend else "UpBlock2D" for i in reversed(levels)),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=recipe.text_width,
        attention_head_dim=4,  # diffusers' name for the number of heads
        norm_num_groups=8,
        addition_embed_type="text" if recipe.pooled_text else None,
        addition_embed_type_num_heads=4,
    )
    return ProxyModels(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=make_scheduler())


def save_proxy_base(models: ProxyModels, out_dir: str | Path, metadata: dict | None = None,
                    vae: AutoencoderKL | None = None) -> Path:
    """Write `models` in the diffusers layout (loads with `load_base(out_dir)`).

    Args:
        models: tokenizer, text encoder, UNet and scheduler.
        out_dir: destination folder (created; existing components are overwritten).
        metadata: written to `out_dir/training.json` (recipe, steps, time, machine).
        vae: the VAE of a latent-space base, written to `vae/`; None (pixel space) writes
            "vae": [null, null] in `model_index.json`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models.unet.save_pretrained(out_dir / "unet")
    models.text_encoder.save_pretrained(out_dir / "text_encoder")
    models.tokenizer.save_pretrained(out_dir / "tokenizer")
    models.scheduler.save_pretrained(out_dir / "scheduler")
    if vae is not None:
        vae.save_pretrained(out_dir / "vae")
    index = {
        # Written by hand: no diffusers pipeline class saves a null VAE. `load_base` reads
        # "vae": [null, null] as "pixel space".
        "_class_name": "LiteControlNetPipeline",
        "_diffusers_version": diffusers.__version__,
        "vae": ["diffusers", "AutoencoderKL"] if vae is not None else [None, None],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "controlnet": [None, None],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if metadata is not None:
        (out_dir / "training.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out_dir
