"""Validation grids during training: the same samples and seeds every time, of the dataset's
first pairs and of your own (`--validation-image` / `--validation-prompt`)."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..atomic import atomic_write
from ..bases.loading import BaseModels
from ..errors import UsageError
from .cache import TrainingCache
from ..data.paired import PairedDataset, _resize_and_crop, _to_tensor, check_image_file, exif_upright
from .grids import GridRow, make_grid, prompt_tile


@dataclass(frozen=True)
class ValidationPair:
    """One of your own validation pairs: a control image (3xHxW in [0, 1]) and its prompt."""

    path: str
    prompt: str
    control: torch.Tensor


def read_validation_pairs(pairs: Sequence[tuple[str, str]], resolution: int,
                          convert_mode: bool = False) -> list[ValidationPair]:
    """Read each (control image file, prompt) of `pairs` as training reads control images: upright
    by EXIF, the shorter side resized to `resolution` and centre-cropped, RGB (other modes only
    with `convert_mode`). A file that cannot be used raises a one-line `UsageError` naming it."""
    read: dict[str, torch.Tensor] = {}
    for path, _ in pairs:
        if path in read:
            continue
        where = f"--validation-image {path}"
        try:
            problem = check_image_file(path)
            if problem:
                raise UsageError(f"{where} {problem}.")
            with PIL.Image.open(path) as opened:
                opened.load()
                image = exif_upright(opened)
        except FileNotFoundError:
            raise UsageError(f"{where}: no such file; expected a control image file (PNG, JPEG, ...).") from None
        except (OSError, PIL.Image.DecompressionBombError) as error:
            raise UsageError(f"{where} cannot be read: {error}. Expected an image file Pillow can open (PNG, "
                             "JPEG, ...).") from None
        if image.mode != "RGB":
            if not convert_mode or image.mode in ("I", "F"):
                raise UsageError(f"{where} has mode {image.mode!r}; expected 'RGB' as training images are: convert it"
                                 + (", or pass --convert-mode true" if image.mode not in ("I", "F") else "") + ".")
            if image.mode.startswith("I;16"):  # as the dataset does: the top byte, not Pillow's clipping
                image = PIL.Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
            image = image.convert("RGB")
        read[path] = _to_tensor(_resize_and_crop(image, resolution))
    return [ValidationPair(path, prompt, read[path]) for path, prompt in pairs]
from ..bases.latents import decode_latents, to_pil
from ..pipeline import LiteControlNetPipeline
from ..sampling import SampleSettings


@torch.no_grad()
def validation_rows(
    base: BaseModels,
    control: torch.nn.Module,
    dataset: PairedDataset,
    cache: TrainingCache,
    indices: list[int],
    pairs: Sequence[ValidationPair] = (),
    steps: int = SampleSettings.steps,
    guidance: float = SampleSettings.guidance,
    seed: int = 0,
    title: str | None = None,
    progress: bool = False,
) -> list[GridRow]:
    """The rows of a validation grid: one per dataset index, then one per pair of your own (whose
    Reconstruction tile says it has no target).

    Text only and Samples use the same seed per row, so they differ only by the control. With
    `progress`, a bar per pass says what is being sampled (a grid takes a while on a CPU).
    """
    was_training = control.training
    control.eval()
    device = base.unet.device
    pipe = LiteControlNetPipeline.from_base(base, control)  # UniPC
    items = [dataset[i] for i in indices]
    prompts = [item["prompt"] for item in items] + [pair.prompt for pair in pairs]
    controls = [item["conditioning_pixel_values"] for item in items] + [pair.control for pair in pairs]
    reconstructions = []
    if indices:
        latents = cache.latent_batch(indices).to(device=device, dtype=base.unet.dtype)
        reconstructions = to_pil(decode_latents(base.vae, latents))
    reconstructions += [prompt_tile("(your own pair: no target image)", controls[0].shape[-1]) for _ in pairs]

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
    return rows


def validation_grid(*args, title: str | None = None, **kwargs) -> PIL.Image.Image:
    """Prompt | Control | Reconstruction | Text only | Samples: the rows of `validation_rows` (same
    arguments) as one image."""
    return make_grid(validation_rows(*args, title=title, **kwargs), title=title)


def save_grid(grid: PIL.Image.Image, output: str | Path, name: str) -> Path:
    path = Path(output) / "samples" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        grid.save(partial, format="PNG")
    return path
