"""Named settings of a run, stated once for the notebooks (`QUICK = True`), `scripts/demo.sh` and
the command line (`--preset quick`).

- `QUICK`: a short run that a CPU handles in minutes, on the small base the package ships
  ("proxy", pixel space, 32 px): a synthetic Fill50k of 3,200 pairs, one epoch of 200 steps at
  batch 16, each control kind at its learning rate of the fidelity study, samples at guidance 3.
- `DEMO`: `QUICK` for two epochs (400 steps): what `scripts/demo.sh` runs and README's pictures show.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Preset:
    """The settings of a run of one size; each user takes those it needs.

    Args:
        name: what `--preset` calls it.
        base: the base model (see `load_base`).
        num_samples: synthetic Fill50k pairs to train on.
        resolution: the size of the pairs, of training and of samples.
        batch_size: effective batch per optimizer step.
        epochs: passes over the pairs.
        learning_rates: per control kind; a kind left out trains at its default (`TrainConfig.lr`).
        num_workers: data loader processes.
        guidance: classifier-free guidance of samples and scores.
    """

    name: str
    base: str
    num_samples: int
    resolution: int
    batch_size: int
    epochs: int
    learning_rates: Mapping[str, float]
    num_workers: int
    guidance: float

    def __post_init__(self) -> None:
        for name in ("num_samples", "resolution", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"Preset.{name}={getattr(self, name)!r} is invalid: expected a whole number >= 1.")
        if self.num_samples < self.batch_size:
            raise ValueError(f"Preset.num_samples={self.num_samples} is invalid: expected at least one batch "
                             f"({self.batch_size}).")

    @property
    def steps(self) -> int:
        """Optimizer steps of the run: `epochs` passes of `num_samples // batch_size` steps."""
        return self.epochs * (self.num_samples // self.batch_size)

    def learning_rate(self, kind: str) -> float | None:
        """The learning rate of control kind `kind`; None: the kind's default."""
        return self.learning_rates.get(kind)

    def train_settings(self, kind: str = "lite") -> dict[str, Any]:
        """The `TrainConfig` settings this preset gives a run of control kind `kind`."""
        settings = {"base": self.base, "resolution": self.resolution, "batch_size": self.batch_size,
                    "epochs": self.epochs, "num_workers": self.num_workers}
        rate = self.learning_rate(kind)
        return settings if rate is None else {**settings, "learning_rate": rate}


QUICK = Preset(
    name="quick",
    base="proxy",
    num_samples=3200,
    resolution=32,
    batch_size=16,
    epochs=1,
    # the rates of README's fidelity study on this base (benchmarks/fidelity.py): the default Lite
    # module learned fastest at 3e-3 of 1e-3 and 3e-3, ControlNet at 1e-3 of 1e-4 and 1e-3; far
    # above SD1.5's defaults (1e-4, 1e-5)
    learning_rates=MappingProxyType({"lite": 3e-3, "lite-static": 3e-3, "lite-mlp": 1e-3, "t2i-adapter": 1e-3,
                                     "controlnet": 1e-3}),
    num_workers=0,  # the pairs are read in the training process
    guidance=3.0,  # cleaner images than 7.5 on this base (lite_controlnet/assets/proxy-base/README.md)
)
DEMO = dataclasses.replace(QUICK, name="demo", epochs=2)
PRESETS = {preset.name: preset for preset in (QUICK, DEMO)}


def get_preset(name: str) -> Preset:
    """The preset called `name` ("quick" or "demo")."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: expected one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def apply(preset: Preset | str, parameters: dict[str, Any]) -> None:
    """Set the notebook parameters that `preset` decides, in `parameters` (a notebook's `globals()`).

    Only the parameters the notebook defines are set: `BASE_MODEL`, `NUM_SAMPLES`, `RESOLUTION`,
    `EPOCHS`, `BATCH_SIZE`, `GUIDANCE`, `COMPARE_STEPS` (the preset's steps) and `EVAL_EVERY` (a
    quarter of them). `TRAIN_OVERRIDES` gains the preset's workers and, with `CONTROL_KIND`, that
    kind's learning rate; `LEARNING_RATES` the rate of each of `KINDS`. What the notebook already
    put in `TRAIN_OVERRIDES` or `LEARNING_RATES` wins.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    values = {"BASE_MODEL": preset.base, "NUM_SAMPLES": preset.num_samples, "RESOLUTION": preset.resolution,
              "EPOCHS": preset.epochs, "BATCH_SIZE": preset.batch_size, "GUIDANCE": preset.guidance,
              "COMPARE_STEPS": preset.steps, "EVAL_EVERY": preset.steps // 4}
    parameters.update({name: value for name, value in values.items() if name in parameters})
    if "TRAIN_OVERRIDES" in parameters:
        rate = {"learning_rate": preset.learning_rate(parameters["CONTROL_KIND"])} if "CONTROL_KIND" in parameters else {}
        parameters["TRAIN_OVERRIDES"] = {**rate, "num_workers": preset.num_workers, **parameters["TRAIN_OVERRIDES"]}
    if "LEARNING_RATES" in parameters and "KINDS" in parameters:
        parameters["LEARNING_RATES"] = {**{kind: preset.learning_rate(kind) for kind in parameters["KINDS"]},
                                        **parameters["LEARNING_RATES"]}
