"""A training checkpoint: everything a run needs to go on exactly where it stood, in one folder.

    <output>/checkpoints/step-00000500/
        control/        the control module (`save_pretrained`), usable alone for sampling
        state.pt        one dict: format, counters, optimizer, loss scaler, settings, hardware plan, run
        MANIFEST.json   written last: the step, and the size and SHA-256 of each file above

`state.pt` is read with `torch.load(weights_only=True)` (tensors and plain values, never code)
and checked field by field. A checkpoint whose files do not match their hashes, or match them
but hold malformed content, is damaged: resuming passes over it, with one warning, to the
previous one. A checkpoint of another format is refused in one line, naming both numbers.

No random state is saved: every random draw of training comes from a generator seeded by
(seed, epoch) or (seed, step) (see trainer.py), and the module's initial weights are in every
checkpoint. The run identity (data, base, module, resolution, batch size, seed, init module) is saved so
that a resume that would continue another run is refused.

Publishing (built on local disk, copied, checked, renamed; safe on Google Drive) is atomic.py's;
`<output>/final/` is published the same way, with its manifest inside before the rename.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import MANIFEST, DamagedFolderError, publish_folder, read_manifest, verify_files
from ..bases.loading import SHIPPED_BASES, TINY_BASE
from ..data.paired import PairedDataset
from ..errors import UsageError
from .config import TrainConfig
from .hardware import HardwarePlan

FORMAT = 1  # of state.pt; another number is refused
STATE = "state.pt"
WEIGHTS = "diffusion_pytorch_model.safetensors"
_NAME = re.compile(r"^step-(\d{8})$")
COUNTERS = ("global_step", "epoch", "step_in_epoch", "nonfinite_total")
RUN_KEYS = {"data": str, "base": str, "control_kind": str, "control_options": dict, "resolution": int,
            "batch_size": int, "seed": int, "init_from": (str, type(None))}
_PLAN_TYPES = {"device": str, "device_name": str, "precision": str, "micro_batch": int, "accumulation": int,
               "gradient_checkpointing": bool, "use_8bit_adam": bool, "xformers": bool, "tf32": bool,
               "peak_memory": (int, type(None)), "reasons": dict}
_STATE_KEYS = {"format", *COUNTERS, "elapsed", "optimizer", "scaler", "config", "plan", "run"}


@dataclass
class TrainState:
    """Where a run stands; the trainer keeps its counters here."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    nonfinite_total: int = 0  # updates skipped for a non-finite loss, over the whole run
    elapsed: float = 0.0  # seconds of training: loading and stepping, not saving or sampling


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


@dataclass
class Resume:
    """A verified checkpoint, read and checked: what a resumed run restores."""

    checkpoint: Checkpoint
    state: TrainState
    optimizer: dict[str, Any] = dataclasses.field(repr=False)
    scaler: dict[str, Any] | None = dataclasses.field(repr=False)
    config: dict[str, Any]  # the settings it was trained with
    plan: HardwarePlan
    run: dict[str, Any]  # its run identity (`run_identity`)


def checkpoint_root(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def list_checkpoints(output: str | Path) -> list[Checkpoint]:
    """Published checkpoints (those with a manifest), newest first."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and (child / MANIFEST).is_file():
            found.append(Checkpoint(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step, reverse=True)


# -- what defines a run ------------------------------------------------------------------------


def base_id(base: str) -> str:
    """The base as a run records it: a hub id or short name as given, a local folder by its full path."""
    path = Path(base).expanduser()
    if base == TINY_BASE or base in SHIPPED_BASES or not path.is_dir():
        return base
    return str(path.resolve())


def run_identity(cfg: TrainConfig, dataset: PairedDataset) -> dict[str, Any]:
    """What defines the run of `cfg` on `dataset`: its data (a hash of the manifest's content, or of
    a Hugging Face dataset's rows as its columns give them, of the pairs `max_train_samples` keeps;
    wherever the data now lies), base, control module, resolution, batch size, seed and the trained
    module it started from, if any."""
    identity = {
        "data": dataset.fingerprint()[:16],
        "base": base_id(cfg.base),
        "control_kind": cfg.control_kind,
        "control_options": cfg.control_options or {},
        "resolution": cfg.resolution,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "init_from": base_id(cfg.init_from) if cfg.init_from else None,  # a folder by its full path
    }
    return json.loads(json.dumps(identity))  # tuples as lists, as read back


def check_same_run(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume `checkpoint` (identity `saved`) with settings that define another run."""
    changed = [key for key in current if saved.get(key) != current[key]]
    if not changed:
        return
    flags = {"data": "--data (the pairs differ: the manifest's or the dataset's content, its columns or "
                     "--max-train-samples)", "control_options": "--control-options"}
    details = "; ".join(f"{flags.get(key, '--' + key.replace('_', '-'))}: {saved.get(key)!r} -> {current[key]!r}"
                        for key in changed)
    raise UsageError(f"{checkpoint} belongs to another run ({details}). Resume with that run's settings, or start "
                     "a new run in another --output.")


def refuse_mixing(output: Path, newest_step: int | None, has_final: bool, why: str) -> None:
    """Refuse a start that would mix a new run with the one `output` holds."""
    held = [f"checkpoints up to step {newest_step}"] if newest_step is not None else []
    if has_final:
        held.append("a final/ module")
    raise UsageError(
        f"{output} holds another run ({' and '.join(held)}); {why} would mix the two (its checkpoints outrank new "
        f"ones, final/ and the loss log would be replaced). Use another --output, or move that run aside first "
        f"(e.g. mv {output} {output}-old)."
    )


# -- writing -----------------------------------------------------------------------------------


def save_checkpoint(output: str | Path, module: torch.nn.Module, state: TrainState, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, cfg: TrainConfig, plan: HardwarePlan, run: dict[str, Any],
                    keep: int = 2) -> Checkpoint:
    """Publish the checkpoint of `state.global_step`, then remove all but the newest `keep`.

    Raises:
        OSError: ENOSPC when the disk is full; the published checkpoints are left as they were.
    """
    step = state.global_step
    saved = {"format": FORMAT, **dataclasses.asdict(state), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "config": cfg.to_dict(), "plan": plan.to_dict(), "run": run}

    def write(folder: Path) -> None:
        module.save_pretrained(folder / "control")
        torch.save(saved, folder / STATE)

    root = checkpoint_root(output)
    root.mkdir(parents=True, exist_ok=True)
    path = publish_folder(root / f"step-{step:08d}", write, info={"step": step}, manifest_inside=False,
                          what=f"checkpoint step-{step:08d}")
    for old in list_checkpoints(output)[keep:]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(path, step)


def publish_final(output: str | Path, module: torch.nn.Module, step: int) -> Path:
    """Replace `<output>/final` with `module`, whole: a kill leaves the previous one or the new one."""
    return publish_folder(Path(output) / "final", module.save_pretrained, info={"step": step})


# -- reading -----------------------------------------------------------------------------------


def open_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder named by the user (`--resume FOLDER`), its files verified."""
    path = Path(path)
    manifest = read_manifest(path)
    step = manifest.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise DamagedFolderError(f"{path}: {MANIFEST} has no step; expected a checkpoint folder such as "
                                 "<output>/checkpoints/step-00000500.")
    verify_files(path, manifest["files"])
    return Checkpoint(path, step)


def _load_state(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # it would need code to be run: never done
        raise DamagedFolderError(f"{path} holds more than tensors and plain values (it would need unpickling "
                                 "code to load); refused.") from error
    except (OSError, EOFError, RuntimeError, ValueError) as error:
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise DamagedFolderError(f"{path} is unreadable ({first}).") from error


def _is_whole(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _wrong_type(value: Any, kind: Any) -> bool:
    if kind is int:
        return not _is_whole(value, low=-(1 << 63))
    return not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))


def _problem(state: dict[str, Any], step: int) -> str | None:
    """What is malformed in a state of the current format, or None."""
    missing, unknown = sorted(_STATE_KEYS - set(state)), sorted(map(str, set(state) - _STATE_KEYS))
    if missing or unknown:
        return f"lacks {missing}" if missing else f"holds unknown entries {unknown}"
    if state["format"] != FORMAT or isinstance(state["format"], bool):
        return f"format={state['format']!r} is not a format number"
    for name in COUNTERS:
        if not _is_whole(state[name]):
            return f"{name}={state[name]!r} is not a whole number >= 0"
    if state["global_step"] != step:
        return f"global_step={state['global_step']} but the checkpoint is of step {step}"
    elapsed = state["elapsed"]
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed) or elapsed < 0:
        return f"elapsed={elapsed!r} is not a number of seconds"
    optimizer = state["optimizer"]
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if (not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) or not isinstance(groups, list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        return "optimizer is not an optimizer's state_dict"
    if state["scaler"] is not None and not isinstance(state["scaler"], dict):
        return "scaler is neither a loss scaler's state_dict nor None"
    config = state["config"]
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        return "config is not a mapping of settings"
    plan = state["plan"]
    if not isinstance(plan, dict) or set(plan) != set(_PLAN_TYPES) or any(
            _wrong_type(plan[k], kind) for k, kind in _PLAN_TYPES.items()):
        return f"plan is not a hardware plan (expected {sorted(_PLAN_TYPES)} of the right types)"
    if plan["precision"] not in ("fp32", "fp16", "bf16") or not (_is_whole(plan["micro_batch"], 1)
                                                                  and _is_whole(plan["accumulation"], 1)):
        return "plan's precision or batch is out of range"
    run = state["run"]
    if not isinstance(run, dict) or set(run) != set(RUN_KEYS) or any(
            _wrong_type(run[k], kind) for k, kind in RUN_KEYS.items()):
        return f"run is not a run identity (expected {sorted(RUN_KEYS)} of the right types)"
    return None


def _refuse_format(path: Path, state: Any) -> None:
    """Refuse, in one line, a state.pt of another format (or of the layout before formats)."""
    sample = f"its control/ module still samples (--control-model {path / 'control'})"
    if isinstance(state, dict) and "format" not in state and "global_step" in state:
        raise UsageError(f"{path} is a checkpoint of the layout before format numbers (plan.json and run.json beside "
                         f"{STATE}), which lite-controlnet no longer reads (it reads format {FORMAT}); {sample}. "
                         "To train on, start a new run in another --output, or resume it with the version that "
                         "wrote it.")
    number = state.get("format") if isinstance(state, dict) else None
    if _is_whole(number) and number != FORMAT:
        raise UsageError(f"{path} is a checkpoint of format {number}; this lite-controlnet reads format {FORMAT} "
                         f"only. Resume it with the version that wrote it, or start a new run in another --output; "
                         f"{sample}.")


def read_checkpoint(checkpoint: Checkpoint) -> Resume:
    """Verify a checkpoint's files and read its state, checked field by field.

    Raises:
        DamagedFolderError: files that do not match the manifest, or content that is malformed.
        UsageError: a checkpoint of another format.
    """
    path = checkpoint.path
    manifest = read_manifest(path)
    state = _load_state(path / STATE) if (path / STATE).is_file() else None
    _refuse_format(path, state)
    verify_files(path, manifest["files"])
    if state is None or not (path / "control" / WEIGHTS).is_file():
        raise DamagedFolderError(f"{path}: {STATE if state is None else 'control/' + WEIGHTS} is missing.")
    if not isinstance(state, dict):
        raise DamagedFolderError(f"{path / STATE} holds a {type(state).__name__}, not a training state.")
    if isinstance(state.get("run"), dict):  # written before runs could start from a trained module
        state["run"].setdefault("init_from", None)
    problem = _problem(state, checkpoint.step)
    if problem:
        raise DamagedFolderError(f"{path / STATE} is malformed: {problem}.")
    counters = TrainState(**{f.name: state[f.name] for f in dataclasses.fields(TrainState)})
    return Resume(checkpoint, counters, state["optimizer"], state["scaler"], state["config"],
                  HardwarePlan.from_dict(state["plan"]), state["run"])


def _newest_readable(output: Path, checkpoints: list[Checkpoint]) -> Resume | None:
    """The newest of `checkpoints` that reads; damaged ones are passed over with a warning each."""
    for checkpoint in checkpoints:
        try:
            return read_checkpoint(checkpoint)
        except DamagedFolderError as error:
            warnings.warn(f"Skipping checkpoint {checkpoint.path}: {error} Trying the previous one.", stacklevel=3)
    return None


def find_resume(output: str | Path, resume: str, run: dict[str, Any]) -> Resume | None:
    """The checkpoint a run resumes (None: a fresh start), read and checked.

    Args:
        output: the run folder.
        resume: "auto" (the newest that reads, passing over damaged ones), "never", or a folder.
        run: the identity of the run being started (`run_identity`): a checkpoint of another run
            is refused, as is a fresh start in a folder that holds one.
    """
    output = Path(output)
    published = list_checkpoints(output)
    has_final = (output / "final").exists()
    newest = published[0].step if published else None
    if resume == "never":
        if published or has_final:
            refuse_mixing(output, newest, has_final, "--resume never")
        return None
    if resume != "auto":  # a folder named by the user: it must read, no fallback
        checkpoint = open_checkpoint(resume)
        newer = [c for c in published if c.step > checkpoint.step and c.path.resolve() != checkpoint.path.resolve()]
        if newer:
            refuse_mixing(output, newer[0].step, False, f"resuming from step {checkpoint.step}")
        found = read_checkpoint(checkpoint)
    else:
        found = _newest_readable(output, published)
        if found is None and (published or has_final):
            refuse_mixing(output, newest, has_final, "a fresh start (none of its checkpoints can be resumed)")
    if found is not None:
        check_same_run(found.run, run, found.checkpoint.path)
    return found


def restore(found: Resume, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None, fallback: bool = True) -> Resume:
    """Load a checkpoint's weights, optimizer and loss scaler states into those given.

    A checkpoint whose content does not fit the module (its hashes match, its tensors do not)
    is damaged: with `fallback`, the previous checkpoints of the same run are tried, with a
    warning each. Returns the checkpoint restored.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    while True:
        path = found.checkpoint.path
        try:
            module.load_state_dict(load_file(path / "control" / WEIGHTS))
            optimizer.load_state_dict(found.optimizer)
            _check_moments(optimizer)
            if scaler is not None and found.scaler:
                scaler.load_state_dict(found.scaler)
            return found
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, SafetensorError) as error:
            first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            damaged = DamagedFolderError(f"{path} does not fit the control module being trained ({first[:300]}).")
            if not fallback:
                raise damaged from error
            warnings.warn(f"Skipping checkpoint {path}: {damaged} Trying the previous one.", stacklevel=2)
        output = path.parent.parent
        older = [c for c in list_checkpoints(output) if c.step < found.checkpoint.step]
        previous = _newest_readable(output, older)
        if previous is None:
            refuse_mixing(output, list_checkpoints(output)[0].step, (output / "final").exists(),
                          "a fresh start (none of its checkpoints can be resumed)")
        check_same_run(previous.run, found.run, previous.checkpoint.path)
        found = previous


def _check_moments(optimizer: torch.optim.Optimizer) -> None:
    """Raise `ValueError` unless AdamW's moments (loaded unchecked) have their parameters' shapes."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if name in ("exp_avg", "exp_avg_sq") and (not torch.is_tensor(value) or value.shape != param.shape):
                    shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise ValueError(f"the optimizer's {name} is {shape} for a parameter of shape {tuple(param.shape)}")


# -- the trained module, for sampling ----------------------------------------------------------


def verify_module_folder(path: str | Path) -> None:
    """Check a control module folder against its manifest: `final/` holds its own, a checkpoint's
    `control/` is listed in the checkpoint's. A folder with neither (saved by hand) is not checked."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        verify_files(path, read_manifest(path)["files"])
    elif path.name == "control" and (path.parent / MANIFEST).is_file():
        files = read_manifest(path.parent)["files"]
        verify_files(path.parent, {rel: entry for rel, entry in files.items() if rel.startswith("control/")})


def latest_control(output: str | Path) -> Path | None:
    """The newest trained control module of a run that verifies: `<output>/final` unless a
    checkpoint is newer, else the newest good checkpoint's `control/`; None if there is none.
    Damaged folders are skipped with a warning."""
    newest = None
    for checkpoint in list_checkpoints(output):
        try:
            verify_module_folder(checkpoint.path / "control")  # the module's files: not the optimizer state
        except DamagedFolderError as error:
            warnings.warn(f"Skipping checkpoint {checkpoint.path}: {error}", stacklevel=2)
            continue
        newest = checkpoint
        break
    final = Path(output) / "final"
    if (final / MANIFEST).is_file():
        try:
            step = read_manifest(final).get("step")
            verify_module_folder(final)
            if newest is None or not isinstance(step, int) or step >= newest.step:
                return final
        except DamagedFolderError as error:
            warnings.warn(f"Skipping {final}: {error}", stacklevel=2)
    return newest.path / "control" if newest is not None else None
