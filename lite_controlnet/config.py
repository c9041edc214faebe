"""`TrainConfig`: every setting of a training run, validated, written into every checkpoint.

The same dataclass feeds the CLI (one flag per field), a JSON/YAML config file, the
notebooks and the checkpoint, so a run is reproduced from its checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .base import DEFAULT_BASE
from .controls import CONTROL_KINDS

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# The Lite code the seed cites trains its small module at 1e-4; ControlNet uses 1e-5.
DEFAULT_LEARNING_RATE = {"lite": 1e-4, "lite-static": 1e-4, "lite-seed": 1e-4, "controlnet": 1e-5, "t2i-adapter": 1e-5}


@dataclass
class TrainConfig:
    """Settings of one training run. `None` means "choose for me" (see `hardware.py`)."""

    data: str  # dataset folder (prompt.json, or metadata.jsonl / train.jsonl)
    output: str  # run folder: checkpoints, grids, logs, final model (on Drive in Colab)
    base: str = DEFAULT_BASE  # hub id, local diffusers folder, or "tiny"
    control: Literal["lite", "lite-static", "lite-seed", "controlnet", "t2i-adapter"] = "lite"
    control_options: dict | None = None  # the module's own settings, e.g. {"level_channels": 192} (lite)
    resolution: int = 512
    epochs: int = 2  # the seed trained 2 epochs of Fill50k
    max_steps: int | None = None  # stop after this many optimizer steps (all epochs together)
    batch_size: int = 4  # effective batch per optimizer step, as in the seed
    micro_batch: int | None = None  # per forward pass; None: the largest that fits (probed)
    learning_rate: float | None = None  # None: 1e-4 for the lite kinds, 1e-5 for controlnet and t2i-adapter
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    prompt_dropout: float = 0.1  # share of prompts replaced by "" (keeps guidance usable)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool | None = None  # None: only if needed to fit
    use_8bit_adam: bool | None = None  # None: only if needed to fit (bitsandbytes)
    xformers: bool | None = None  # None: when installed and working
    max_gpu_memory: float | None = None  # GiB: cap GPU memory and plan for it (15 rehearses a T4)
    seed: int = 0
    checkpoint_every: int = 500  # optimizer steps
    checkpoint_minutes: float = 10.0  # also save this often: Colab disconnects without warning
    keep_checkpoints: int = 2
    resume: str = "auto"  # "auto" (newest complete checkpoint), "never", or a checkpoint folder
    validation_every: int | None = None  # grids every N steps, besides every epoch end
    num_validation: int = 4  # rows of the grid
    validation_steps: int = 20  # denoising steps of validation samples
    validation_guidance: float = 7.5
    cache_dir: str | None = None  # latent/text cache; None: <output>/cache
    num_workers: int = 2  # data loader processes
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops

    def __post_init__(self) -> None:
        def bad(name: str, accepted: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: expected {accepted}.")

        if self.control not in CONTROL_KINDS:
            raise bad("control", f"one of {CONTROL_KINDS}")
        if self.control_options is not None and not isinstance(self.control_options, dict):
            raise bad("control_options", 'a mapping of module settings, e.g. {"level_channels": 192}, or None')
        if self.precision not in PRECISIONS:
            raise bad("precision", f"one of {PRECISIONS}")
        for name in ("resolution", "epochs", "batch_size", "checkpoint_every", "keep_checkpoints",
                     "num_validation", "validation_steps", "max_nonfinite"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "a whole number >= 1")
        for name in ("max_steps", "micro_batch", "validation_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(name, "a whole number >= 1, or None")
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise bad("micro_batch", f"a divisor of batch_size={self.batch_size}")
        if self.resolution % 8:
            raise bad("resolution", "a multiple of 8 (e.g. 512)")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise bad("learning_rate", "a positive number, or None for the default")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise bad("prompt_dropout", "a share in [0, 1)")
        if self.max_gpu_memory is not None and not self.max_gpu_memory > 0:
            raise bad("max_gpu_memory", "a positive number of GiB, or None for the whole GPU")
        if self.checkpoint_minutes <= 0:
            raise bad("checkpoint_minutes", "a positive number of minutes")
        if self.lr_warmup_steps < 0 or self.num_workers < 0:
            raise bad("lr_warmup_steps" if self.lr_warmup_steps < 0 else "num_workers", "a number >= 0")
        if self.resume not in ("auto", "never") and not Path(self.resume).is_dir():
            raise bad("resume", "'auto', 'never', or an existing checkpoint folder")

    @property
    def lr(self) -> float:
        """The learning rate in use (the default for the control kind when unset)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[self.control]

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output) / "cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known settings are {sorted(known)}.")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or YAML file of settings; `overrides` win over the file."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as error:
                raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use JSON.") from error
            values = yaml.safe_load(text) or {}
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}).") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of setting names to values.")
        return cls.from_dict({**values, **overrides}, source=str(path))


def add_config_arguments(parser: Any) -> None:
    """Add one `--flag` per `TrainConfig` field to an argparse parser (defaults: None = unset)."""
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        kind = hint
        if get_origin(hint) is not Literal:  # Optional[X] -> X
            kind = next((t for t in get_args(hint) if t is not type(None)), hint)
        help_text = f"default: {f.default!r}" if f.default is not dataclasses.MISSING else "required"
        if get_origin(kind) is Literal:
            parser.add_argument(flag, choices=get_args(kind), default=None, help=help_text)
        elif kind is bool:
            parser.add_argument(flag, type=_parse_bool, default=None, metavar="{true,false}", help=help_text)
        elif kind is dict:
            parser.add_argument(flag, type=_parse_json_object, default=None, metavar="JSON", help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def _parse_json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"expected a JSON object such as '{{\"level_channels\": 192}}', got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object such as '{{\"level_channels\": 192}}', got {text!r}")
    return value


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def config_from_args(args: Any) -> TrainConfig:
    """A `TrainConfig` from parsed CLI flags, over an optional `--config` file."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    if getattr(args, "config", None):
        return TrainConfig.from_file(args.config, **given)
    missing = [f"--{name}" for name in ("data", "output") if name not in given]
    if missing:
        raise ValueError(f"train needs {' and '.join(missing)} (or a --config file that sets them).")
    return TrainConfig(**given)
