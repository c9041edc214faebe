"""Validation grids during training: the same samples and seeds every time."""

from __future__ import annotations

import gc
from pathlib import Path

import PIL.Image
import torch

from ..atomic import atomic_write
from ..bases.loading import BaseModels
from .cache import TrainingCache
from ..data.paired import PairedDataset
from .grids import GridRow, make_grid
from ..bases.latents import decode_latents, to_pil
from ..pipeline import LiteControlNetPipeline
from ..sampling import SampleSettings


@torch.no_grad()
def validation_grid(
    base: BaseModels,
    control: torch.nn.Module,
    dataset: PairedDataset,
    cache: TrainingCache,
    indices: list[int],
    steps: int = SampleSettings.steps,
    guidance: float = SampleSettings.guidance,
    seed: int = 0,
    title: str | None = None,
    progress: bool = False,
) -> PIL.Image.Image:
    """Prompt | Control | Reconstruction | Text only | Samples, one row per index.

    Text only and Samples use the same seed per row, so they differ only by the control. With
    `progress`, a bar per pass says what is being sampled (a grid takes a while on a CPU).
    """
    was_training = control.training
    control.eval()
    device = base.unet.device
    pipe = LiteControlNetPipeline.from_base(base, control)  # UniPC
    items = [dataset[i] for i in indices]
    prompts = [item["prompt"] for item in items]
    controls = [item["conditioning_pixel_values"] for item in items]
    latents = cache.latent_batch(indices).to(device=device, dtype=base.unet.dtype)
    reconstructions = to_pil(decode_latents(base.vae, latents))

    def generate(use_control: bool) -> list[PIL.Image.Image]:
        what = f"grid{' (' + title + ')' if title else ''}: {'samples' if use_control else 'text only'}"
        pipe.set_progress_bar_config(disable=not progress, desc=what, leave=False, dynamic_ncols=True)
        generator = [torch.Generator().manual_seed(seed + k) for k in range(len(prompts))]
        return pipe(prompts, controls if use_control else None, num_inference_steps=steps, guidance_scale=guidance,
                    generator=generator, height=controls[0].shape[-2], width=controls[0].shape[-1]).images

    text_only, samples = generate(False), generate(True)
    rows = [
        GridRow(p, to_pil(c[None] * 2 - 1)[0], r, t, s)
        for p, c, r, t, s in zip(prompts, controls, reconstructions, text_only, samples)
    ]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # validation is where ControlNet users run out of memory
    control.train(was_training)
    return make_grid(rows, title=title)


def save_grid(grid: PIL.Image.Image, output: str | Path, name: str) -> Path:
    path = Path(output) / "samples" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        grid.save(partial, format="PNG")
    return path
