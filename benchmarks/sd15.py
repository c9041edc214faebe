"""A Stable Diffusion 1.5 stack with random weights (the real architecture, 859.5M-parameter
UNet), for the benchmarks: timings and memory do not depend on weight values. `random_model`
builds any one network of it fast."""

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

from lite_controlnet.bases.tiny import tiny_vocabulary, write_tokenizer_files
from lite_controlnet.bases.sd_configs import SD15_UNET_CONFIG

# SD1.5's VAE and text encoder, written out (the UNet's is in lite_controlnet.bases.sd_configs: the tests use it too).
SD15_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SD15_TEXT_ENCODER_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def random_model(cls, config: dict, seed: int = 0):
    """A diffusers model of `cls` with this config and small random weights, built without the
    slow default initialisation (timings and memory do not depend on the weight values)."""
    with torch.device("meta"):
        model = cls(**config)
    if any(True for _ in model.buffers()):
        raise ValueError(f"{cls.__name__} has buffers that random_model cannot fill: build it normally.")
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
    return model


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
