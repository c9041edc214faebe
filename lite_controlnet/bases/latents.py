"""Between images and what the UNet sees: text embeddings, and latents through the VAE (or none).

A base without a VAE works in pixel space: encode and decode are then the identity, which
keeps the rest of the library unchanged.
"""

from __future__ import annotations

from typing import Sequence

import PIL.Image
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer


@torch.no_grad()
def encode_text(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: Sequence[str], device: torch.device | None = None
) -> torch.Tensor:
    """CLIP embeddings (B, 77, D) of `prompts`, as Stable Diffusion computes them."""
    tokens = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    device = device or text_encoder.device
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(device)
    return text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]


@torch.no_grad()
def encode_images(vae: AutoencoderKL | None, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents of images in [-1, 1]: a sample of the VAE posterior times its scaling factor.

    Without a VAE the images themselves are the latents.
    """
    if vae is None:
        return images
    posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return posterior.sample(generator=generator) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae: AutoencoderKL | None, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] (not clamped) from latents; the identity without a VAE."""
    if vae is None:
        return latents
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False, generator=generator)[0]


def to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """(B, 3, H, W) images in [-1, 1] as PIL images (values outside are clipped)."""
    arrays = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [PIL.Image.fromarray(a) for a in arrays]
