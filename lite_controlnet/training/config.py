"""`TrainConfig`: every setting of a training run, validated, written into every checkpoint.

The same dataclass feeds the CLI (one flag per field), a JSON/YAML config file, the
notebooks and the checkpoint, so a run is reproduced from its checkpoint alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import reprlib
import stat
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..bases.loading import DEFAULT_BASE
from ..presets import get_preset
from ..sampling import SampleSettings

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# The Lite code that "A Lightweight ControlNet for Fine-Tuning Stable Diffusion on Colab GPU" cites trains
# its small module at 1e-4; ControlNet uses 1e-5.
DEFAULT_LEARNING_RATE = {"lite": 1e-4, "lite-static": 1e-4, "lite-mlp": 1e-4, "controlnet": 1e-5, "t2i-adapter": 1e-5}
# The default Lite module trains on T2I-Adapter's cubic draw of timesteps: on the proxy base it
# gets most of its sampled disk IoU from it (benchmarks/lite_designs.py); the other kinds keep
# their published recipes (uniform).
TIMESTEP_SAMPLINGS = ("uniform", "cubic")
DEFAULT_TIMESTEP_SAMPLING = {kind: "cubic" if kind == "lite" else "uniform" for kind in DEFAULT_LEARNING_RATE}


@dataclass
class TrainConfig:
    """Settings of one training run. `None` means "choose for me" (see `hardware.py`)."""

    data: str  # dataset folder (prompt.json, or metadata.jsonl / train.jsonl), a save_to_disk folder, parquet, or a Hub id
    output: str  # run folder: checkpoints, grids, logs, final model (on Drive in Colab)
    base: str = DEFAULT_BASE  # hub id, local diffusers folder, or "tiny"
    # which control module trains (`--control-kind`)
    control_kind: Literal["lite", "lite-static", "lite-mlp", "controlnet", "t2i-adapter"] = "lite"
    control_options: dict | None = None  # the module's own settings, e.g. {"level_channels": 192} (lite)
    resolution: int = 512
    epochs: int = 2  # the paper trained 2 epochs of Fill50k
    max_steps: int | None = None  # stop after this many optimizer steps (all epochs together)
    batch_size: int = 4  # effective batch per optimizer step, as in the paper
    micro_batch: int | None = None  # per forward pass; None: the largest that fits (probed)
    learning_rate: float | None = None  # None: 1e-4 for the lite kinds, 1e-5 for controlnet and t2i-adapter
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    prompt_dropout: float = 0.1  # share of prompts replaced by "" (keeps guidance usable)
    # how training timesteps are drawn: "uniform" over the schedule, or "cubic" (t = T(1 - u^3), as
    # T2I-Adapter trains: more of the noisy steps where the layout is decided); None: the kind's default
    timestep_sampling: Literal["uniform", "cubic"] | None = None
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
    validation_steps: int = SampleSettings.steps  # denoising steps of validation samples
    validation_guidance: float = SampleSettings.guidance  # guidance scale of validation samples
    cache_dir: str | None = None  # latent/text cache; None: <output>/cache
    num_workers: int = 2  # data loader processes
    threads: int | None = None  # CPU threads; None: chosen from the cores and the load (training/threads.py)
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops
    manifest: str | None = None  # the dataset's manifest file, when it holds several (relative to data)
    convert_mode: bool = False  # convert grey, palette or RGBA images to RGB instead of refusing them
    # Your own validation pairs, rows of every grid after the dataset's num_validation: control image
    # files and their prompts, as many of each, or one of either for all of the other (as diffusers)
    validation_image: list[str] | None = None
    validation_prompt: list[str] | None = None  # the prompts of --validation-image, in its order
    # also log the loss, learning rate and grids through Accelerate's trackers, under <output>/logs
    report_to: Literal["none", "tensorboard", "wandb", "all"] = "none"
    # A Hugging Face dataset as --data (a Hub id such as fusing/fill50k, a save_to_disk folder, a .parquet
    # file or a folder of them; read through the `datasets` library): its columns, named as in diffusers'
    # train_controlnet.py. A manifest folder's keys are fixed.
    image_column: str = "image"  # a Hugging Face dataset's column of the target images
    conditioning_image_column: str = "conditioning_image"  # the column of the control images
    caption_column: str = "text"  # the column of the captions (of a list of captions, the first)
    max_train_samples: int | None = None  # train on the first N pairs (rows) only, in the data's own order
    init_from: str | None = None  # start from a trained control module (a folder or a Hub model id): its weights, step 0

    def __post_init__(self) -> None:
        def bad(name: str, accepted: str) -> ValueError:
            flag = "--" + name.replace("_", "-")
            value = _SHORT.repr(getattr(self, name))  # a value from a file may be huge: shown cut short
            return ValueError(f"TrainConfig.{name}={value} ({flag}) is invalid: expected {accepted}.")

        for name in ("validation_image", "validation_prompt"):  # one pair in a file may be written unlisted
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        # 1. types: what a JSON or YAML file can get wrong (flags arrive typed)
        for f in dataclasses.fields(self):
            problem = _type_problem(getattr(self, f.name), _HINTS[f.name])
            if problem:
                raise bad(f.name, problem)
        # a path from a file or an --flag=~/x (which no shell expands) means the home folder, as in a shell
        for name in ("data", "output", "cache_dir", "resume", "init_from"):
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith("~"):
                setattr(self, name, os.path.expanduser(value))
        if self.validation_image:
            self.validation_image = [os.path.expanduser(path) for path in self.validation_image]
        # 2. ranges
        for name, (low, high) in _WHOLE_RANGES.items():
            value = getattr(self, name)
            if value is not None and (value < low or (high is not None and value > high)):
                raise bad(name, f"a whole number >= {low}" + (f" and <= {high}" if high is not None else "")
                          + (", or None" if _is_optional(_HINTS[name]) else ""))
        for name, (low, high, low_allowed) in _REAL_RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            above = value >= low if low_allowed else value > low
            if not math.isfinite(value) or not above or (high is not None and value > high):
                raise bad(name, f"a finite number {'>=' if low_allowed else '>'} {low:g}"
                          + (f" and <= {high:g}" if high is not None else "")
                          + (", or None for the default" if _is_optional(_HINTS[name]) else ""))
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise bad("prompt_dropout", "a share in [0, 1)")
        # 3. settings that depend on each other, or name things
        if self.control_options is not None and not all(isinstance(k, str) for k in self.control_options):
            raise bad("control_options", 'a mapping of module settings, e.g. {"level_channels": 192}, or None')
        if self.control_options:
            from ..controls import check_control_options

            try:  # against the module's own signature, as these settings are checked against theirs
                check_control_options(self.control_kind, self.control_options)
            except ValueError as error:
                raise ValueError(f"TrainConfig.control_options={_SHORT.repr(self.control_options)} "
                                 f"(--control-options) is invalid: {str(error).rstrip('.')}.") from None
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise bad("micro_batch", f"a divisor of batch_size={self.batch_size}")
        if self.resolution % 8:
            raise bad("resolution", "a multiple of 8 (e.g. 512)")
        for name in ("data", "output", "base", "resume"):
            if not getattr(self, name).strip():
                raise bad(name, "a non-empty text")
        if self.init_from is not None and not self.init_from.strip():
            raise bad("init_from", "a trained module's folder (e.g. runs/run1/final) or a Hub model id, or None")
        if self.resume not in ("auto", "never") and not Path(self.resume).is_dir():
            raise bad("resume", "'auto', 'never', or an existing checkpoint folder")
        images, prompts = self.validation_image or [], self.validation_prompt or []
        if images and not prompts:
            raise bad("validation_prompt", "the prompts of --validation-image (one for all images, or one each)")
        if prompts and not images:
            raise bad("validation_image", "the control image files of --validation-prompt (one for all, or one each)")
        if len(images) > 1 and len(prompts) > 1 and len(images) != len(prompts):
            raise ValueError(f"{len(images)} --validation-image and {len(prompts)} --validation-prompt: expected as "
                             "many of each, or one image for all prompts, or one prompt for all images.")
        if self.num_validation == 0 and not images:
            raise bad("num_validation", "a whole number >= 1, or 0 with --validation-image and --validation-prompt")
        _check_data_columns(self, bad)

    @property
    def lr(self) -> float:
        """The learning rate in use (the default for the control kind when unset)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[self.control_kind]

    @property
    def timesteps(self) -> str:
        """How training timesteps are drawn (the kind's default when unset)."""
        return self.timestep_sampling or DEFAULT_TIMESTEP_SAMPLING[self.control_kind]

    @property
    def validation_pairs(self) -> list[tuple[str, str]]:
        """(control image file, prompt) of each of your own validation pairs."""
        images, prompts = self.validation_image or [], self.validation_prompt or []
        count = max(len(images), len(prompts))
        return [(images[k % len(images)], prompts[k % len(prompts)]) for k in range(count)] if images else []

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output) / "cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Settings as a mapping (a config file, a checkpoint's `train_config.json`), checked."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(map(str, set(values) - set(names)))
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known settings are {sorted(names)}.")
        missing = [name for name in ("data", "output") if name not in values]
        if missing:
            raise ValueError(f"{source}: needs {' and '.join(missing)} (the dataset and the run folder), "
                             f"as settings or as --{' and --'.join(missing)}.")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or YAML file of settings; `overrides` win over the file."""
        return cls.from_dict({**cls.read_file(path), **overrides}, source=str(path))

    @staticmethod
    def read_file(path: str | Path) -> dict[str, Any]:
        """The settings in a JSON or YAML file, as written (`from_dict` checks them)."""
        path = Path(path)
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"Cannot read the config file {path}: not a regular file (a FIFO, device or "
                                 "folder); expected a JSON or YAML file.")
            if info.st_size > MAX_CONFIG_BYTES:
                raise ValueError(f"{path}: a config file of {info.st_size} bytes; expected at most "
                                 f"{MAX_CONFIG_BYTES // 2**20} MB of JSON or YAML settings.")
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"Cannot read the config file {path}: {error.strerror or error}.") from error
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); expected JSON or "
                             "YAML settings.") from error
        if path.suffix in (".yaml", ".yml"):
            values = _parse_yaml(text, str(path))
        else:
            values = parse_json(text, str(path))
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of setting names to values, got {type(values).__name__}.")
        _check_bounds(values, str(path))
        return values

def _check_data_columns(cfg: TrainConfig, bad: Any) -> None:
    """The dataset's columns and how many of its pairs: three different column names, N >= 1."""
    if cfg.max_train_samples is not None and cfg.max_train_samples < 1:
        raise bad("max_train_samples", "a whole number >= 1 (the first N pairs), or None for all")
    names = ("image_column", "conditioning_image_column", "caption_column")
    for k, name in enumerate(names):
        if not getattr(cfg, name).strip():
            raise bad(name, "the name of a column of the dataset")
        other = next((o for o in names[:k] if getattr(cfg, o) == getattr(cfg, name)), None)
        if other:
            raise bad(name, f"a column other than --{other.replace('_', '-')}'s: the target, the control and the "
                            "caption are three columns")


_HINTS = get_type_hints(TrainConfig)
# Whole-number settings: (lowest, highest or None). Upper limits catch typos, not wishes.
_WHOLE_RANGES = {
    "resolution": (8, 4096), "epochs": (1, None), "max_steps": (1, None), "batch_size": (1, None),
    "micro_batch": (1, None), "lr_warmup_steps": (0, None), "seed": (0, 2**63 - 1), "checkpoint_every": (1, None),
    "keep_checkpoints": (1, None), "validation_every": (1, None), "num_validation": (0, None),
    "validation_steps": (1, 500), "num_workers": (0, 64), "threads": (1, 1024),
    "max_nonfinite": (1, None),
}
# Real-valued settings: (lowest, highest or None, whether the lowest itself is allowed); all finite.
# A negative max_grad_norm would reverse the gradients; a NaN checkpoint_minutes would turn off
# timed checkpoints without a word.
_REAL_RANGES = {
    "learning_rate": (0.0, 1.0, False), "weight_decay": (0.0, None, True), "max_grad_norm": (0.0, None, False),
    "max_gpu_memory": (0.0, None, False), "checkpoint_minutes": (0.0, None, False),
    "validation_guidance": (0.0, 100.0, True),
}


def _is_optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, UnionType) and type(None) in get_args(hint)


def _type_problem(value: Any, hint: Any) -> str | None:
    """What a setting of type `hint` should be, when `value` is not that; None when it is."""
    kinds = list(get_args(hint)) if get_origin(hint) in (Union, UnionType) else [hint]
    if value is None and type(None) in kinds:
        return None
    accepted = []
    for kind in (k for k in kinds if k is not type(None)):
        if get_origin(kind) is Literal:
            if isinstance(value, str) and value in get_args(kind):
                return None
            accepted.append(f"one of {get_args(kind)}")
        elif kind is bool:
            if isinstance(value, bool):
                return None
            accepted.append("true or false")
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return None
            accepted.append("a whole number")
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return None  # finite and in range: checked with the ranges
            accepted.append("a number")
        elif kind is str:
            if isinstance(value, str):
                return None
            accepted.append("a text")
        elif kind is dict:
            if isinstance(value, dict):
                return None
            accepted.append('a mapping of settings, e.g. {"level_channels": 192}')
        elif get_origin(kind) is list:
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return None
            accepted.append("a list of texts")
    problem = " or ".join(accepted) + (", or None" if type(None) in kinds else "")
    if isinstance(value, str) and any(k in (int, float) for k in kinds):
        problem += " (a number in a YAML file needs a dot before an exponent, e.g. 1.0e-4: YAML reads 1e-4 as text)"
    return problem


def add_config_arguments(parser: Any, settings: type | None = None, defaults: bool = False) -> None:
    """Add one `--flag` per field of the dataclass `settings` (default: `TrainConfig`) to an argparse
    parser; the help shows each field's real default and its comment in the dataclass.

    Flags default to None (unset), so that a config file or a preset can fill them; with
    `defaults`, to the fields' own defaults (a field without one is a required flag).
    """
    settings = TrainConfig if settings is None else settings
    hints = get_type_hints(settings)
    comments = _field_comments(settings)
    for f in dataclasses.fields(settings):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        kind = hint
        if get_origin(hint) is not Literal:  # Optional[X] -> X
            kind = next((t for t in get_args(hint) if t is not type(None)), hint)
        help_text = _help(f, comments.get(f.name))
        given = {"default": None}
        if defaults:
            required = f.default is dataclasses.MISSING
            given = {"required": True} if required else {"default": f.default}
        if get_origin(kind) is Literal:
            parser.add_argument(flag, dest=f.name, choices=get_args(kind), help=help_text, **given)
        elif kind is bool:
            parser.add_argument(flag, type=parse_bool, metavar="{true,false}", help=help_text, **given)
        elif kind is dict:
            parser.add_argument(flag, type=_parse_json_object, metavar="JSON", help=help_text, **given)
        elif get_origin(kind) is list:  # one or several values, or the flag repeated (as diffusers' scripts)
            parser.add_argument(flag, nargs="+", action="extend", type=get_args(kind)[0], help=help_text, **given)
        else:
            parser.add_argument(flag, type=kind, help=help_text, **given)


def _field_comments(settings: type) -> dict[str, str]:
    """name -> the comment on a dataclass field's line, or on the comment lines just above it."""
    import inspect

    comments: dict[str, str] = {}
    above: list[str] = []
    lines = inspect.getsource(settings).splitlines()
    body = next(k for k, line in enumerate(lines) if line.lstrip().startswith("class ")) + 1
    for line in lines[body:]:
        stripped = line.strip()
        if stripped.startswith(("def ", "@")):  # the fields end where the methods begin
            break
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        name, colon, rest = stripped.partition(":")
        if colon and name.isidentifier() and "#" in rest:
            comments[name] = rest.split("#", 1)[1].strip()
        elif colon and name.isidentifier() and above:
            comments[name] = " ".join(above)
        above = []
    return comments


def _help(f: dataclasses.Field, comment: str | None) -> str:
    """A flag's help: its comment and its default (where None means "choose", the comment says how)."""
    if f.default is dataclasses.MISSING:
        text = f"{comment}; required" if comment else "required"
    elif f.default is None:
        text = comment or "default: unset"
    else:
        text = f"{comment}; default: {f.default}" if comment else f"default: {f.default}"
    return text.replace("%", "%%")  # argparse formats help with %


def _parse_json_object(text: str) -> dict:
    example = "expected a JSON object such as '{\"level_channels\": 192}'"
    try:
        value = parse_json(text, "")
        if isinstance(value, dict):
            _check_bounds(value, "")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{example}, got {_SHORT.repr(text)} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{example}, got {_SHORT.repr(text)}")
    return value


def parse_bool(text: str) -> bool:
    """A command-line true or false (also yes/no, on/off, 1/0)."""
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def config_from_args(args: Any) -> TrainConfig:
    """A `TrainConfig` from parsed CLI flags, over an optional `--config` file, over an optional
    `--preset` (whose learning rate is that of the control kind the run trains)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    path = getattr(args, "config", None)
    values = {**(TrainConfig.read_file(path) if path else {}), **given}
    if getattr(args, "preset", None):
        kind = values.get("control_kind", "lite")
        values = {**get_preset(args.preset).train_settings(kind if isinstance(kind, str) else "lite"), **values}
    if path:
        return TrainConfig.from_dict(values, source=str(path))
    missing = [f"--{name}" for name in ("data", "output") if name not in values]
    if missing:
        raise ValueError(f"train needs {' and '.join(missing)} (or a --config file that sets them).")
    return TrainConfig(**values)


# -- bounded parsing: a settings file is small and flat; a hostile one must not hang, crash or flood --

MAX_CONFIG_BYTES = 2**20
MAX_DEPTH = 16  # nesting of values; settings need 3 (a list inside control_options)
MAX_VALUES = 10_000  # values in all, counted as written out: YAML aliases repeat what they name
MAX_DIGITS = 100  # of a whole number (seed takes 19)

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = 8
_SHORT.maxlevel = 3


class _SettingsProblem(ValueError):
    """A problem a parser hook finds; `line` when it is known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class _LongNumber(int):
    """A whole number too long to convert, kept as its digit count until its setting is known."""


def _where(source: str, line: int | None = None) -> str:
    return (f"{source}, line {line}: " if line else f"{source}: ") if source else ""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    twice = next((key for i, key in enumerate(keys) if key in keys[:i]), None)
    if twice is not None:
        raise _SettingsProblem(f"setting {twice!r} is given twice; give each setting once")
    return dict(pairs)


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


def parse_json(text: str, source: str) -> Any:
    """JSON settings, with bounded nesting and numbers, and no key given twice.

    Args:
        text: the JSON text.
        source: the file it came from, for the messages ("" for a command-line value).
    """
    depth, key, last = 0, None, None
    for token in _JSON_TOKENS.finditer(text):  # before parsing: the parser itself recurses
        value = token.group()
        if value in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, token.start()) + 1
                named = f"setting {key!r} " if key else ""
                raise ValueError(f"{_where(source, line)}{named}is nested more than {MAX_DEPTH} deep; settings "
                                 "are plain values, lists or one mapping (control_options).")
        elif value in "]}":
            depth -= 1
        elif value == ":" and depth == 1 and last and last.startswith('"'):
            key = last[1:-1]
        last = value
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_int=lambda digits: _LongNumber(len(digits)) if len(digits) > MAX_DIGITS
                          else int(digits))
    except json.JSONDecodeError as error:
        raise ValueError(f"{_where(source, error.lineno)}not valid JSON ({error.msg}).") from error
    except RecursionError:
        raise ValueError(f"{_where(source)}nested too deeply to read.") from None
    except _SettingsProblem as error:
        raise ValueError(f"{_where(source)}{error}.") from None


def _parse_yaml(text: str, source: str) -> Any:
    """YAML settings (the safe loader), with bounded nesting and numbers, and no key given twice."""
    try:
        import yaml
    except ImportError as error:
        raise ValueError(f"{source}: reading YAML needs PyYAML (pip install pyyaml), or use JSON.") from error

    class Loader(yaml.SafeLoader):
        path: list[Any] = []

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.path.append(index)
            try:
                if len(self.path) > MAX_DEPTH + 1:
                    key = self.path[1] if len(self.path) > 1 else None
                    named = f"setting {key.value!r} " if isinstance(key, yaml.ScalarNode) else ""
                    raise _SettingsProblem(f"{named}is nested more than {MAX_DEPTH} deep; settings are plain "
                                           "values, lists or one mapping (control_options)",
                                           self.peek_event().start_mark.line + 1)
                return super().compose_node(parent, index)
            finally:
                self.path.pop()

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, str) and key in seen:
                    raise _SettingsProblem(f"setting {key!r} is given twice (lines {seen[key]} and {line}); give "
                                           "each setting once", line)
                seen[key] = line
            return super().construct_mapping(node, deep)

        def construct_yaml_int(self, node: Any) -> Any:
            digits = sum(c.isdigit() for c in str(node.value))
            return _LongNumber(digits) if digits > MAX_DIGITS else super().construct_yaml_int(node)

    Loader.path = []
    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    Loader.add_constructor("tag:yaml.org,2002:map", Loader.construct_yaml_map)
    try:
        return yaml.load(text, Loader=Loader) or {}
    except _SettingsProblem as error:
        raise ValueError(f"{_where(source, error.line)}{error}.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"{_where(source, mark.line + 1 if mark is not None else None)}not valid YAML "
                         f"({problem}).") from error
    except RecursionError:
        raise ValueError(f"{_where(source)}nested too deeply to read.") from None


def _check_bounds(values: dict[str, Any], source: str) -> None:
    """Refuse settings nested too deep, holding too many values (as written out) or too long a number."""
    stack = [(key, value, 1) for key, value in values.items()]
    count = 0
    while stack:
        key, value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            what = f"more than {MAX_VALUES} values" if count > MAX_VALUES else f"values nested more than {MAX_DEPTH} deep"
            raise ValueError(f"{_where(source)}setting {key!r} holds {what} (YAML aliases count each time they are "
                             "used); settings are plain values, lists or one mapping (control_options).")
        if isinstance(value, _LongNumber):
            raise ValueError(f"{_where(source)}setting {key!r} holds a whole number of {int(value)} digits; expected "
                             f"at most {MAX_DIGITS}.")
        if isinstance(value, dict):
            stack.extend((key, v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((key, v, depth + 1) for v in value)
