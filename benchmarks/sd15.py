"""A Stable Diffusion 1.5 stack with random weights (the real architecture, 859.5M-parameter
UNet), for the benchmarks: timings and memory do not depend on weight values."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from lite_controlnet.sd_configs import (
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    random_model,
)
from lite_controlnet.tiny_base import tiny_vocabulary, write_tokenizer_files


def sd15_scheduler() -> PNDMScheduler:
    """SD1.5's own scheduler configuration."""
    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                         skip_prk_steps=True, set_alpha_to_one=False)


def sd15_components(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """tokenizer, text_encoder, unet, vae, scheduler (UniPC) of SD1.5's architecture, random weights."""
    folder = Path(tempfile.mkdtemp())
    write_tokenizer_files(folder, tiny_vocabulary())  # its ids fit CLIP's vocabulary; speed is the same
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    torch.manual_seed(0)
    return dict(
        tokenizer=tokenizer,
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG)).to(device, dtype).eval(),
        unet=random_model(UNet2DConditionModel, SD15_UNET_CONFIG).to(device, dtype).eval(),
        vae=random_model(AutoencoderKL, SD15_VAE_CONFIG).to(device, dtype).eval(),
        scheduler=UniPCMultistepScheduler.from_config(sd15_scheduler().config),
    )


def write_random_sd15(folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Save a random SD1.5 stack in the diffusers folder layout (loads with `load_base(folder)`)."""
    parts = sd15_components("cpu", dtype)
    parts["scheduler"] = sd15_scheduler()
    pipeline = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return Path(folder)
