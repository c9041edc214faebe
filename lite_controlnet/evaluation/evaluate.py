"""Fidelity of a control module as numbers: sample held-out Fill50k pairs and score them.

Two measures:
- full sampling from noise (the pipeline, as a user samples), each image scored with
  `metrics.fill50k_scores` (disk IoU, colour errors, edge F1) against its control:
  `sample_pairs` is the one path that samples and scores (`evaluate` adds a report and a grid;
  `fidelity.sample_scores` the mean; `compare.sample_and_score` the timing of each image);
- `one_step_scores`: a steadier measure of the same question early in training. Held-out
  targets are noised to a high timestep (t=800 of 1000: at t=500 the disk is still visible in
  pixel space), the clean image is predicted in one UNet call, and the prediction's disk is
  scored against the control. With a shuffled control (each sample given another's outline)
  the score must not rise: that separates following the control from drawing any disk.

Which pairs are held out: `heldout.held_out_pairs`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DDPMScheduler

from ..bases.loading import BaseModels, check_prediction_type
from ..controls import controlled_unet, prepare_control
from ..data.paired import PairedDataset
from ..training.grids import table_grid
from ..bases.latents import decode_latents, encode_images, encode_text, to_pil
from .metrics import aggregate_scores, fill50k_scores

SCORE_COLUMNS = ("Prompt", "Control", "Target", "Sample")


def native_resolution(base: BaseModels) -> int:
    """The image size the base was trained at (512 for SD1.5)."""
    return int(base.unet.config.sample_size) * base.vae_scale_factor


@torch.no_grad()
def one_step_predictions(
    base: BaseModels,
    control_model: torch.nn.Module | None,
    targets: torch.Tensor,
    control_images: torch.Tensor,
    prompts: list[str],
    timestep: int = 800,
    seed: int = 0,
) -> torch.Tensor:
    """Clean images predicted in one step from targets noised to `timestep`; (B, 3, H, W) in [-1, 1].

    Args:
        base: the frozen base.
        control_model: the control module, or None for the base alone.
        targets: (B, 3, H, W) in [-1, 1].
        control_images: (B, 3, H, W) in [0, 1] (what the module sees; pass shuffled ones to test).
        prompts: one per target.
        timestep: the noise level, out of the base's training timesteps.
        seed: seed of the noise.
    """
    device, dtype = base.unet.device, base.unet.dtype
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    kind = check_prediction_type(scheduler, "one-step scoring")  # before any work
    latents = encode_images(base.vae, targets.to(device), torch.Generator(device).manual_seed(seed)).to(torch.float32)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    t = torch.full((len(latents),), timestep, device=device, dtype=torch.long)
    noisy = scheduler.add_noise(latents, noise, t)
    text = encode_text(base.tokenizer, base.text_encoder, prompts, device).to(dtype)
    prepared = (prepare_control(control_model, control_images.to(device, control_model.dtype), dtype)
                if control_model is not None else None)
    pred = controlled_unet(base.unet, noisy.to(dtype), t, text, prepared).float()
    alpha = scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
    if kind == "v_prediction":
        clean = alpha.sqrt() * noisy - (1 - alpha).sqrt() * pred
    elif kind == "epsilon":
        clean = (noisy - (1 - alpha).sqrt() * pred) / alpha.sqrt()
    else:  # "sample": the UNet predicts the clean latents themselves
        clean = pred
    return decode_latents(base.vae, clean).float().clamp(-1, 1)


def one_step_scores(
    base: BaseModels,
    control_model: torch.nn.Module | None,
    dataset: PairedDataset,
    indices: list[int],
    timestep: int = 800,
    seed: int = 0,
    shuffle: bool = False,
    batch_size: int = 32,
    empty_prompt: bool = False,
) -> dict[str, Any]:
    """Mean `fill50k_scores` of one-step predictions of `indices` (see `one_step_predictions`).

    With `shuffle=True` the module sees the next sample's control, while the score is still
    taken against each sample's own control. `empty_prompt=True` predicts without the prompts.
    """
    return aggregate_scores(one_step_pair_scores(base, control_model, dataset, indices, timestep, seed, shuffle,
                                                 batch_size, empty_prompt))


def one_step_pair_scores(
    base: BaseModels,
    control_model: torch.nn.Module | None,
    dataset: PairedDataset,
    indices: list[int],
    timestep: int = 800,
    seed: int = 0,
    shuffle: bool = False,
    batch_size: int = 32,
    empty_prompt: bool = False,
) -> list[dict[str, Any]]:
    """`fill50k_scores` of the one-step prediction of each of `indices`, in their order (the
    pairs `one_step_scores` averages, with the same arguments)."""
    scores = []
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        targets = torch.stack([it["pixel_values"] for it in items])
        control_images = torch.stack([it["conditioning_pixel_values"] for it in items])
        seen = control_images.roll(1, dims=0) if shuffle else control_images
        prompts = ["" if empty_prompt else it["prompt"] for it in items]
        preds = one_step_predictions(base, control_model, targets, seen, prompts, timestep, seed + start)
        for pred, item in zip(to_pil(preds), items):
            control_image = to_pil(item["conditioning_pixel_values"][None] * 2 - 1)[0]
            scores.append(fill50k_scores(pred, control_image, None if empty_prompt else item["prompt"]))
    return scores


@dataclass
class Samples:
    """Images sampled from (control, prompt) pairs, their scores and how long they took."""

    images: list[PIL.Image.Image]
    scores: list[dict[str, Any]] | None  # per image, against its control (None: not scored)
    seconds_per_image: float  # the median over the batches, per image; after a warm-up if asked


def sample_pairs(
    pipe: Any,
    pairs: Sequence[tuple[PIL.Image.Image, str]],
    steps: int = 20,
    guidance: float = 7.5,
    seed: int = 0,
    scale: float = 1.0,
    batch_size: int = 8,
    size: int | None = None,
    empty_prompt: bool = False,
    control_window: tuple[float, float] = (0.0, 1.0),
    score: Callable[..., dict[str, Any]] | None = fill50k_scores,
    warm_up: bool = False,
) -> Samples:
    """Sample one image per (control image, prompt) with `pipe`, in batches, and score each against
    its control: the one sampling-and-scoring path.

    Args:
        pipe: a `LiteControlNetPipeline` (without `controlnet`: the text-only baseline).
        pairs: (control image, prompt) of each sample.
        steps, guidance, scale: denoising steps, guidance scale, control strength.
        seed: image `k` uses seed `seed + k`, whatever the batch size, so modules see the same noise.
        batch_size: images per pipeline call (1 times each image alone).
        size: height and width to sample (None: the pipeline's default).
        empty_prompt: generate with "" instead of each prompt (colour errors are then None).
        control_window: the share of the schedule, (start, end), where control applies.
        score: `(image, control, prompt or None) -> scores` (`metrics.fill50k_scores`); None: not scored.
        warm_up: first sample the first batch once, untimed (kernels, allocator).
    """
    with_control = getattr(pipe, "controlnet", None) is not None

    def generate(start: int) -> list[PIL.Image.Image]:
        batch = pairs[start : start + batch_size]
        return pipe(["" if empty_prompt else prompt for _, prompt in batch],
                    [control for control, _ in batch] if with_control else None,
                    num_inference_steps=steps, guidance_scale=guidance, controlnet_conditioning_scale=scale,
                    control_guidance_start=control_window[0], control_guidance_end=control_window[1],
                    height=size, width=size,
                    generator=[torch.Generator().manual_seed(seed + start + k) for k in range(len(batch))]).images

    if warm_up and pairs:
        generate(0)
    images, seconds = [], []
    for start in range(0, len(pairs), batch_size):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        batch = generate(start)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append((time.perf_counter() - started) / len(batch))
        images.extend(batch)
    scores = None
    if score is not None:
        scores = [score(image, control, None if empty_prompt else prompt)
                  for image, (control, prompt) in zip(images, pairs)]
    return Samples(images, scores, statistics.median(seconds) if seconds else float("nan"))


def evaluate(
    pipe: Any,
    dataset: PairedDataset,
    num: int = 64,
    steps: int = 20,
    seed: int = 0,
    guidance: float = 7.5,
    scale: float = 1.0,
    batch_size: int = 8,
    empty_prompt: bool = False,
    control_window: tuple[float, float] = (0.0, 1.0),
) -> tuple[dict[str, Any], PIL.Image.Image]:
    """Sample the first `num` pairs of `dataset` with `pipe` (`sample_pairs`) and report their scores.

    Args:
        pipe: a `LiteControlNetPipeline` (without `controlnet`: the text-only baseline).
        dataset: held-out pairs (not trained on; `PairedDataset` or `heldout.held_out_pairs`), at
            the resolution to sample.
        num: how many pairs.
        steps, guidance, scale: denoising steps, guidance scale, control strength.
        seed: sample `i` uses seed `seed + i`.
        empty_prompt: generate with "" instead of each prompt (colour errors are then None).
        control_window: the share of the schedule, (start, end), where control applies.
    Returns:
        (report with "mean" and "per_sample" scores, a grid PNG of the first 8 samples)
    """
    if num > len(dataset):
        raise ValueError(f"num={num} but {dataset.manifest} has only {len(dataset)} pairs.")
    items = [dataset[i] for i in range(num)]
    pairs = [(to_pil(it["conditioning_pixel_values"][None] * 2 - 1)[0], it["prompt"]) for it in items]
    sampled = sample_pairs(pipe, pairs, steps, guidance, seed, scale, batch_size, dataset.resolution, empty_prompt,
                           control_window)
    per_sample = [{"index": k, "prompt": item["prompt"], **score}
                  for k, (item, score) in enumerate(zip(items, sampled.scores))]
    rows = [[item["prompt"], control, to_pil(item["pixel_values"][None])[0], image]
            for item, (control, _), image in zip(items[:8], pairs, sampled.images)]
    report = {
        "settings": {"num": num, "steps": steps, "seed": seed, "guidance": guidance, "scale": scale,
                     "resolution": dataset.resolution, "data": str(dataset.root), "empty_prompt": empty_prompt,
                     "control_window": list(control_window),
                     "control": type(pipe.controlnet).__name__ if pipe.controlnet is not None else None},
        "mean": aggregate_scores(sampled.scores),
        "per_sample": per_sample,
    }
    return report, table_grid(SCORE_COLUMNS, rows)


def write_report(report: dict[str, Any], grid: PIL.Image.Image, out: str | Path) -> tuple[Path, Path]:
    """Write the JSON report and, next to it, the grid (`<out stem>.png`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    grid_path = out.with_suffix(".png")
    grid.save(grid_path)
    return out, grid_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
