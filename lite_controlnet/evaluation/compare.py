"""Lite vs the original ControlNet on the same base and data: the measurements of `03_compare.ipynb`.

Equal budget: the same base, data, resolution, batch, number of optimizer steps and seed;
each module with its own default learning rate (1e-4 for Lite, as the seed trains it; 1e-5
for ControlNet, as its paper). Measured per module:

- parameters, counted on the loaded module;
- seconds per training step: the median of the steps in `<output>/logs/loss.csv` (its
  `seconds` column is cumulative; the median leaves out steps that also saved a checkpoint
  or drew a validation grid);
- peak memory while training: `torch.cuda.max_memory_allocated` on a GPU, else the process's
  peak resident memory (reset before each run where Linux allows it);
- seconds per sampled image, and fidelity on held-out synthetic Fill50k samples (sampled and
  scored by `evaluate.sample_pairs`, the pairs chosen by `heldout.held_out_pairs`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from ..bases.loading import BaseModels
from ..training.config import TrainConfig
from ..data.paired import PairedDataset
from .evaluate import sample_pairs
from ..data.heldout import COMPARE_START, held_out_pairs
from ..training.logs import LossLog
from ..pipeline import LiteControlNetPipeline
from .memory import PeakMemory
from .report import FIDELITY_COLUMNS, bar_plots, markdown_table, result_rows, sample_grid
from ..training.trainer import train

__all__ = [  # the tables and pictures live in `report`, memory in `memory`: importable from here as before
    "FIDELITY_COLUMNS", "HELD_OUT_START", "PeakMemory", "SamplingStats", "TrainingStats", "bar_plots", "count_parameters",
    "equal_budget_configs", "held_out_samples", "markdown_table", "pipeline_for", "result_rows", "sample_and_score",
    "sample_grid", "step_seconds", "train_measured",
]

HELD_OUT_START = COMPARE_START  # the old name of where `held_out_samples` starts


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of `module` (all of them, trainable or not)."""
    return sum(p.numel() for p in module.parameters())


# -- training -------------------------------------------------------------------------------------


@dataclass
class TrainingStats:
    """What one equal-budget training run measured."""

    kind: str
    steps: int  # optimizer steps in loss.csv
    step_seconds: float  # median seconds per optimizer step
    peak_memory: int | None  # bytes, while this call trained (None: the run was already complete)
    memory_kind: str
    final: Path  # the trained module's folder


def step_seconds(output: str | Path) -> float:
    """Median seconds per optimizer step from `<output>/logs/loss.csv` (NaN without steps)."""
    seconds = [float(row["seconds"]) for row in LossLog(output).read()]
    steps = [b - a for a, b in zip([0.0] + seconds, seconds)]
    return statistics.median(steps) if steps else math.nan


def equal_budget_configs(data: str | Path, output: str | Path, steps: int,
                         kinds: Sequence[str] = ("lite", "controlnet"), learning_rates: dict[str, float] | None = None,
                         **settings: Any) -> dict[str, TrainConfig]:
    """One `TrainConfig` per control kind, the same in all but the kind and its learning rate.

    Args:
        data: the dataset folder.
        output: the comparison's folder; kind `k` trains in `<output>/<k>`. Both share one cache
            (`<output>/cache` unless `cache_dir` is given).
        steps: optimizer steps for each kind (epochs are set to cover them).
        kinds: the control kinds to train.
        learning_rates: per kind; a kind left out gets `learning_rate` from `settings`, else its default.
        settings: any other `TrainConfig` field (base, resolution, batch_size, seed, ...).
    """
    unknown = sorted(set(learning_rates or {}) - set(kinds))
    if unknown:
        raise ValueError(f"learning_rates names {unknown}, which are not among the kinds compared {list(kinds)}.")
    output = Path(output)
    settings.setdefault("cache_dir", str(output / "cache"))
    batch_size = settings.get("batch_size", TrainConfig.batch_size)
    pairs = len(PairedDataset(data, resolution=None))
    epochs = max(1, math.ceil(steps / max(1, pairs // batch_size)))
    rates = {kind: (learning_rates or {}).get(kind, settings.get("learning_rate")) for kind in kinds}
    settings.pop("learning_rate", None)
    return {kind: TrainConfig(data=str(data), output=str(output / kind), control_kind=kind, max_steps=steps,
                              epochs=epochs, learning_rate=rates[kind], **settings) for kind in kinds}


def train_measured(cfg: TrainConfig, progress: bool = True) -> TrainingStats:
    """Train `cfg` (resuming if it was cut off) and measure its step time and peak memory.

    The step time covers every step in the log; the peak memory only the steps trained by this
    call, and is None when the run was already complete (a notebook run again after the end).
    """
    steps_before = len(LossLog(cfg.output).read())
    with PeakMemory() as peak:
        final = train(cfg, progress=progress)
    steps = len(LossLog(cfg.output).read())
    memory = peak.bytes if steps > steps_before else None
    return TrainingStats(cfg.control_kind, steps, step_seconds(cfg.output), memory, peak.kind, final)


# -- sampling -------------------------------------------------------------------------------------


@dataclass
class SamplingStats:
    """Images sampled by one module, with the time each took and their fidelity scores."""

    kind: str
    seconds_per_image: float  # median over the images, after one untimed warm-up
    images: list[PIL.Image.Image] = field(repr=False)
    scores: dict[str, float] | None  # aggregate scores; None when sampled without metrics


def held_out_samples(count: int, size: int, seed: int = 0) -> list[tuple[PIL.Image.Image, str]]:
    """(control, prompt) of `count` synthetic Fill50k samples that no training set holds: samples
    `COMPARE_START`, ... of dataset seed `seed` (`heldout.held_out_pairs`)."""
    return held_out_pairs(count, size, seed=seed, start=COMPARE_START).pairs()


def pipeline_for(base: BaseModels, control_model: torch.nn.Module | None,
                 scheduler: str | None = "unipc") -> LiteControlNetPipeline:
    """A sampling pipeline (no progress bar) over an already loaded base (shared, not copied) and a
    control module; `scheduler` as in `LiteControlNetPipeline.from_base` (None: the base's own)."""
    pipe = LiteControlNetPipeline.from_base(base, control_model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _scalar(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def sample_and_score(pipe: LiteControlNetPipeline, kind: str, samples: Sequence[tuple[PIL.Image.Image, str]],
                     steps: int = 20, guidance: float = 7.5, seed: int = 0, metrics: Any = None,
                     size: int | None = None) -> SamplingStats:
    """Generate one image per (control image, prompt), one at a time after an untimed warm-up,
    timing each; score them with `metrics` (`lite_controlnet.evaluation.metrics`; None: not scored).

    Samples through `evaluate.sample_pairs`: the k-th image uses the seed `seed + k` for every
    module, so modules see the same noise. `size`: the height and width to sample (None: the
    pipeline's default).
    """
    sampled = sample_pairs(pipe, samples, steps, guidance, seed, batch_size=1, size=size, warm_up=True,
                           score=metrics.fill50k_scores if metrics is not None else None)
    scores = None
    if metrics is not None:
        aggregate = metrics.aggregate_scores(sampled.scores)
        scores = {name: v for name, value in aggregate.items() if (v := _scalar(value)) is not None}
    return SamplingStats(kind, sampled.seconds_per_image, sampled.images, scores)
