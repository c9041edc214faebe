"""The settings of sampling and of scoring samples, stated once: `SampleSettings` (how an image is
sampled) and `EvaluateSettings` (what the `evaluate` command scores). The `sample` and `evaluate`
commands get one flag per field (`training.config.add_config_arguments`, `--help` showing these
defaults); `evaluation.scoring` and the notebooks take their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SampleSettings:
    """Settings of sampling an image (or one per pair) from a prompt and a control image."""

    steps: int = 20  # denoising steps
    guidance: float = 7.5  # classifier-free guidance scale (<= 1 turns guidance off)
    scale: float = 1.0  # control strength (0: the base model alone)
    control_start: float = 0.0  # share of the schedule where control starts to apply
    control_end: float = 1.0  # share of the schedule where control stops applying
    scheduler: Literal["unipc", "ddim"] = "unipc"  # the sampler
    seed: int = 0  # seed of the noise; pair k of a set is sampled with seed + k

    @property
    def control_window(self) -> tuple[float, float]:
        """(start, end): the share of the schedule where control applies."""
        return (self.control_start, self.control_end)


@dataclass(frozen=True)
class EvaluateSettings:
    """What `evaluate` scores: held-out pairs sampled in full and scored in one step."""

    data: str  # held-out pairs, never trained on (e.g. make-fill50k data/heldout --seed 1): a folder, parquet or a Hub id
    manifest: str | None = None  # the manifest file, when the data folder holds several
    convert_mode: bool = False  # convert grey, palette or RGBA images to RGB instead of refusing them
    num: int = 64  # pairs scored, the first of the data
    resolution: int | None = None  # None: the base's native size
    one_step_t: int = 800  # timestep of the one-step score (of the base's 1000)
    condition: str | None = None  # score as this condition (canny, segmentation, ...); None: the one the data records, else Fill50k's disk
    # a Hugging Face dataset's columns, as `train` takes them
    image_column: str = "image"  # the column of the target images
    conditioning_image_column: str = "conditioning_image"  # the column of the control images
    caption_column: str = "text"  # the column of the captions (of a list of captions, the first)
