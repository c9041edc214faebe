"""Fidelity of a control module as numbers: the one path that scores it on held-out pairs.

`score_control` measures, on the same pairs:
- one-step scores (`one_step_scores`): a steady measure early in training. Held-out targets are
  noised to a high timestep (t=800 of 1000: at t=500 the disk is still visible in pixel space),
  the clean image is predicted in one UNet call, and the prediction's disk is scored against
  the control with `metrics.fill50k_scores` (disk IoU, colour errors, edge F1);
- the same with shuffled controls (each sample given another's outline): the score must not
  rise; that separates following the control from drawing any disk;
- full sampling from noise (`sample_pairs`, the pipeline as a user samples), each image scored
  against its control.

Given a condition (`lite_controlnet.conditions`: canny, segmentation, outline, ...), every score
is that condition's instead (`pair_scores`): it re-detects the condition in the image and reports
its ``controllability``.

The `evaluate` command (`evaluate`), the studies (`study.fidelity_curves`), the compare notebook
and the benchmarks all score through it. Which pairs are held out: `data.heldout.held_out_pairs`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from ..bases.latents import decode_latents, encode_images, encode_text, to_pil
from ..bases.loading import BaseModels, check_prediction_type
from ..conditions.objects import object_scores
from ..controls import controlled_unet, prepare_control
from ..data.shapes import parse_shapes_prompt
from ..pipeline import LiteControlNetPipeline
from ..sampling import EvaluateSettings, SampleSettings
from ..training.grids import table_grid
from .metrics import aggregate_scores, fill50k_scores

if TYPE_CHECKING:
    from ..conditions.base import Condition

SCORE_COLUMNS = ("Prompt", "Control", "Target", "Sample")


def pair_scores(image: Any, control: Any, prompt: str | None, condition: Condition | None = None) -> dict[str, Any]:
    """Scores of a generated (or one-step predicted) image against its control: Fill50k's
    (`metrics.fill50k_scores`: disk IoU, colours, edge F1) without a condition; with one, its
    `score` (ControlNet++'s re-detection) and ``controllability``, the condition's headline."""
    if condition is None:
        return fill50k_scores(image, control, prompt)
    scores = dict(condition.score(image, control, prompt))
    scores["controllability"] = scores[condition.metric]
    return scores


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
    timestep: int = EvaluateSettings.one_step_t,
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
    dataset: Any,
    indices: list[int],
    timestep: int = EvaluateSettings.one_step_t,
    seed: int = 0,
    shuffle: bool = False,
    batch_size: int = 32,
    empty_prompt: bool = False,
    condition: Condition | None = None,
) -> dict[str, Any]:
    """Mean `pair_scores` of one-step predictions of `indices` (see `one_step_predictions`).

    With `shuffle=True` the module sees the next sample's control, while the score is still
    taken against each sample's own control. `empty_prompt=True` predicts without the prompts.
    `condition`: score as this condition does (None: Fill50k's disk scores).
    """
    return aggregate_scores(one_step_pair_scores(base, control_model, dataset, indices, timestep, seed, shuffle,
                                                 batch_size, empty_prompt, condition))


def one_step_pair_scores(
    base: BaseModels,
    control_model: torch.nn.Module | None,
    dataset: Any,
    indices: list[int],
    timestep: int = EvaluateSettings.one_step_t,
    seed: int = 0,
    shuffle: bool = False,
    batch_size: int = 32,
    empty_prompt: bool = False,
    condition: Condition | None = None,
) -> list[dict[str, Any]]:
    """`pair_scores` of the one-step prediction of each of `indices`, in their order (the
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
            scores.append(pair_scores(pred, control_image, None if empty_prompt else item["prompt"], condition))
    return scores


@dataclass
class Samples:
    """Images sampled from (control, prompt) pairs, their scores and how long they took."""

    images: list[PIL.Image.Image] = field(repr=False)
    scores: list[dict[str, Any]] | None  # per image, against its control (None: not scored)
    seconds_per_image: float  # the median over the batches, per image; after a warm-up if asked

    @property
    def mean(self) -> dict[str, Any]:
        """`metrics.aggregate_scores` of the images' scores."""
        if self.scores is None:
            raise ValueError("these samples were not scored (sample_pairs(..., score=False)).")
        return aggregate_scores(self.scores)


def sample_pairs(
    pipe: Any,
    pairs: Sequence[tuple[PIL.Image.Image, str]],
    steps: int = SampleSettings.steps,
    guidance: float = SampleSettings.guidance,
    seed: int = SampleSettings.seed,
    scale: float = SampleSettings.scale,
    batch_size: int = 8,
    size: int | None = None,
    empty_prompt: bool = False,
    control_window: tuple[float, float] = SampleSettings().control_window,
    score: bool = True,
    warm_up: bool = False,
    progress: bool = False,
    condition: Condition | None = None,
) -> Samples:
    """Sample one image per (control image, prompt) with `pipe`, in batches, and score each against
    its control (`pair_scores`): the one sampling-and-scoring path.

    Args:
        pipe: a `LiteControlNetPipeline` (without `controlnet`: the text-only baseline).
        pairs: (control image, prompt) of each sample.
        steps, guidance, scale: denoising steps, guidance scale, control strength.
        seed: image `k` uses seed `seed + k`, whatever the batch size, so modules see the same noise.
        batch_size: images per pipeline call (1 times each image alone).
        size: height and width to sample (None: the pipeline's default).
        empty_prompt: generate with "" instead of each prompt (colour errors are then None).
        control_window: the share of the schedule, (start, end), where control applies.
        score: score each image; False: only sample and time them.
        warm_up: first sample the first batch once, untimed (kernels, allocator).
        progress: a progress bar over the images (sampling many takes minutes on a CPU).
        condition: score as this condition does (None: Fill50k's disk scores).
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
    bar = tqdm(total=len(pairs), desc="sampling" + (" with control" if with_control else " text only"),
               unit="image", disable=not progress, leave=False, dynamic_ncols=True)
    for start in range(0, len(pairs), batch_size):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        batch = generate(start)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append((time.perf_counter() - started) / len(batch))
        images.extend(batch)
        bar.update(len(batch))
    bar.close()
    scores = None
    if score:
        scores = [pair_scores(image, control, None if empty_prompt else prompt, condition)
                  for image, (control, prompt) in zip(images, pairs)]
    return Samples(images, scores, statistics.median(seconds) if seconds else float("nan"))


def pipeline_for(base: BaseModels, control_model: torch.nn.Module | None,
                 scheduler: str | None = SampleSettings.scheduler) -> LiteControlNetPipeline:
    """A sampling pipeline (no progress bar) over an already loaded base (shared, not copied) and a
    control module; `scheduler` as in `LiteControlNetPipeline.from_base` (None: the base's own)."""
    pipe = LiteControlNetPipeline.from_base(base, control_model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed_samples(pipe: Any, pairs: Sequence[tuple[PIL.Image.Image, str]], steps: int = SampleSettings.steps,
                  guidance: float = SampleSettings.guidance, seed: int = SampleSettings.seed,
                  size: int | None = None) -> Samples:
    """`sample_pairs` one image at a time after an untimed warm-up, so that `seconds_per_image`
    is the time of one image alone; each image scored against its control."""
    return sample_pairs(pipe, pairs, steps, guidance, seed, batch_size=1, size=size, warm_up=True)


# -- the one scoring of a control module ----------------------------------------------------------


@dataclass(frozen=True)
class ScoreSettings:
    """How `score_control` scores a module on held-out pairs (the studies' settings)."""

    heldout: int = 64  # held-out pairs scored in one step, with their own and with shuffled controls
    timestep: int = EvaluateSettings.one_step_t  # noise level of the one-step score
    sample_num: int = 32  # pairs sampled in full
    sample_steps: int = SampleSettings.steps  # denoising steps of the pairs sampled in full
    guidance: float = 3.0  # guidance of the pairs sampled in full: the proxy base's (presets.QUICK), where studies run


@dataclass
class ControlScores:
    """What `score_control` measured: mean scores, and the sampled images with their own scores."""

    one_step: dict[str, Any]  # `metrics.aggregate_scores` of the one-step predictions
    one_step_shuffled: dict[str, Any] | None  # the same with shuffled controls (None: no module)
    samples: Samples | None = None  # the pairs sampled in full (None: not sampled)
    no_prompt: dict[str, Any] | None = None  # one-step scores with empty prompts (None: not measured)
    by_objects: dict[str, dict[str, Any]] | None = None  # sampled scores by the scene's number of objects

    def to_dict(self) -> dict[str, Any]:
        """The mean scores as the studies store them: "one_step", "one_step_shuffled", and
        "sampling", "sampling_by_objects" and "no_prompt" where measured."""
        out = {"one_step": self.one_step, "one_step_shuffled": self.one_step_shuffled}
        if self.samples is not None:
            out["sampling"] = self.samples.mean
        if self.by_objects is not None:
            out["sampling_by_objects"] = self.by_objects
        if self.no_prompt is not None:
            out["no_prompt"] = self.no_prompt
        return out


def score_control(
    base: BaseModels,
    control_model: torch.nn.Module | None,
    heldout: Any,
    scoring: ScoreSettings = ScoreSettings(),
    seed: int = 0,
    sampled: bool = True,
    no_prompt: bool = False,
    pipe: Any = None,
    scale: float = SampleSettings.scale,
    control_window: tuple[float, float] = SampleSettings().control_window,
    batch_size: int = 8,
    progress: bool = False,
    condition: Condition | None = None,
    objects: bool = False,
) -> ControlScores:
    """Score a control module on held-out pairs: one step (also with shuffled controls) on the first
    `scoring.heldout` pairs, and, with `sampled`, full sampling of the first `scoring.sample_num`.

    Args:
        base: the frozen base, loaded.
        control_model: the module, or None for the base alone (then no shuffled scores).
        heldout: held-out pairs (`held_out_pairs`, or a `PairedDataset` not trained on), at the
            resolution to score.
        scoring: how many pairs, the one-step timestep, the sampling steps and guidance.
        seed: of the one-step noise and of the sampled images (pair `k` sampled with `seed + k`).
        sampled: also sample in full.
        no_prompt: also the one-step scores with empty prompts.
        pipe: the pipeline to sample with (None: `pipeline_for(base, control_model)` with the
            base's own scheduler).
        scale, control_window: control strength, and the share of the schedule where it applies.
        batch_size: images per pipeline call.
        progress: say what is being scored (a line for the one-step scores, a bar for sampling).
        condition: score as this condition does (None: Fill50k's disk scores).
        objects: the pairs are shapes scenes: each sampled image also gets the object scores
            against its target (`conditions.objects.object_scores`: per-object IoU, object count,
            colour errors), and the sampled means are also given by the scene's number of objects.
    """
    for name, count in (("heldout", scoring.heldout), ("sample_num", scoring.sample_num if sampled else 0)):
        if count > len(heldout):
            raise ValueError(f"ScoreSettings.{name}={count} but {heldout.manifest} has only {len(heldout)} pairs.")
    indices = list(range(scoring.heldout))

    def one_step(**kwargs: Any) -> dict[str, Any]:
        if progress:
            what = ", shuffled controls" if kwargs.get("shuffle") else ", empty prompts" if kwargs.get("empty_prompt") else ""
            tqdm.write(f"one-step scores of {len(indices)} pairs{what}")
        return one_step_scores(base, control_model, heldout, indices, scoring.timestep, seed=seed,
                               condition=condition, **kwargs)

    samples, by_objects = None, None
    if sampled:
        items = [heldout[i] for i in range(scoring.sample_num)]
        pairs = [(to_pil(it["conditioning_pixel_values"][None] * 2 - 1)[0], it["prompt"]) for it in items]
        samples = sample_pairs(pipe if pipe is not None else pipeline_for(base, control_model, scheduler=None),
                               pairs, scoring.sample_steps, scoring.guidance, seed, scale, batch_size,
                               heldout.resolution, control_window=control_window, progress=progress,
                               condition=condition)
        if objects:
            by_objects = _add_object_scores(samples, items)
    return ControlScores(one_step(), one_step(shuffle=True) if control_model is not None else None, samples,
                         one_step(empty_prompt=True) if no_prompt else None, by_objects)


def _add_object_scores(samples: Samples, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add each sampled image's object scores against its item's target (in place), and return
    the mean scores of the images of each number of objects ("1": ..., "2": ...)."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for image, item, scores in zip(samples.images, items, samples.scores):
        target = to_pil(item["pixel_values"][None])[0]
        scores.update(object_scores(image, target, item["prompt"]))
        groups.setdefault(len(parse_shapes_prompt(item["prompt"])[0]), []).append(scores)
    return {str(n): aggregate_scores(groups[n]) for n in sorted(groups)}


def evaluate(
    pipe: Any,
    dataset: Any,
    num: int = 64,
    sampling: SampleSettings = SampleSettings(),
    timestep: int = ScoreSettings.timestep,
    batch_size: int = 8,
    progress: bool = False,
    condition: Condition | None = None,
    objects: bool = False,
) -> tuple[dict[str, Any], PIL.Image.Image]:
    """Score the first `num` pairs of `dataset` (`score_control`) and report it: what the `evaluate`
    command writes.

    Args:
        pipe: a `LiteControlNetPipeline` (without `controlnet`: the text-only baseline).
        dataset: held-out pairs (not trained on; `PairedDataset` or `held_out_pairs`), at the
            resolution to sample.
        num: how many pairs, sampled in full and scored in one step.
        sampling: steps, guidance, control strength and window, seed (pair `i` uses `seed + i`).
        timestep: noise level of the one-step scores.
        batch_size: images per pipeline call.
        progress: say what is being scored and how far sampling is.
        condition: score as this condition does (e.g. ``get_condition("canny")``, the condition
            the dataset records: `data.dataset_folder.dataset_condition`); None: Fill50k's disk scores.
        objects: the pairs are shapes scenes (`make_shapes`): each sample also gets the object
            scores against its target, and the report their means by number of objects ("by_objects").
    Returns:
        (report with the settings, the "mean" and "per_sample" sampled scores and the "one_step"
        scores, a grid PNG of the first 8 samples)
    """
    if num > len(dataset):
        raise ValueError(f"num={num} but {dataset.manifest} has only {len(dataset)} pairs.")
    scoring = ScoreSettings(heldout=num, timestep=timestep, sample_num=num, sample_steps=sampling.steps,
                            guidance=sampling.guidance)
    scores = score_control(pipe.base_models(), pipe.controlnet, dataset, scoring, sampling.seed, pipe=pipe,
                           scale=sampling.scale, control_window=sampling.control_window, batch_size=batch_size,
                           progress=progress, condition=condition, objects=objects)
    items = [dataset[i] for i in range(num)]
    samples = scores.samples
    per_sample = [{"index": k, "prompt": item["prompt"], **score}
                  for k, (item, score) in enumerate(zip(items, samples.scores))]
    rows = [[item["prompt"], to_pil(item["conditioning_pixel_values"][None] * 2 - 1)[0],
             to_pil(item["pixel_values"][None])[0], image] for item, image in zip(items[:8], samples.images)]
    one_step = {"timestep": timestep, "with_control": scores.one_step}
    if scores.one_step_shuffled is not None:
        one_step["shuffled_control"] = scores.one_step_shuffled
    report = {
        "settings": {"num": num, "steps": sampling.steps, "seed": sampling.seed, "guidance": sampling.guidance,
                     "scale": sampling.scale, "resolution": dataset.resolution, "data": str(dataset.root),
                     "empty_prompt": False, "control_window": list(sampling.control_window),
                     "control": type(pipe.controlnet).__name__ if pipe.controlnet is not None else None,
                     "condition": None if condition is None else {"name": condition.name, "metric": condition.metric,
                                                                  **condition.params}},
        "mean": samples.mean,
        "per_sample": per_sample,
        "one_step": one_step,
    }
    if scores.by_objects is not None:
        report["by_objects"] = scores.by_objects
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
