"""Checkpoints and the final module, published so that a Colab disconnect never leaves half of one.

A checkpoint is a folder `<output>/checkpoints/step-00000500/` holding:
- `control/`: the control module as a `save_pretrained` folder (usable alone for sampling);
- `state.pt`: counters, optimizer and loss scaler (`train_state.py`; tensors and plain values
  only, read back with `torch.load(weights_only=True)`, so a shared folder cannot run code);
- `train_config.json`, `plan.json`, `run.json`: the run's settings, hardware plan and identity;
- `MANIFEST.json`, written last: the size and SHA-256 of every file above.

Writing is safe on Google Drive: the checkpoint is built on local disk, copied next to the
others under a temporary name, flushed, checked against its hashes, renamed into place, and
only then published by its manifest. A folder without a manifest, or whose files do not
match it, is never loaded. `<output>/final/` is published the same way, its manifest inside
before the rename, so it is either the whole new module or the previous one.

A full disk stops a write with one `OSError` (ENOSPC) that says how much is needed; what was
published before stays as it was, and the staging copies of a killed writer are removed at
the next start (`clean_stale_staging`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import fsync_file, write_atomic
from ..errors import USAGE, ReportedError, disk_full, require_space
from .lock import RunLock, RunLockedError, pid_alive

__all__ = ["MANIFEST", "Checkpoint", "CheckpointError", "RunLock", "RunLockedError", "checkpoint_root",
           "clean_stale_staging", "latest_control", "list_checkpoints", "load_latest", "load_state",
           "open_checkpoint", "publish_folder", "save_checkpoint", "verify_checkpoint", "verify_module_folder"]

MANIFEST = "MANIFEST.json"
STAGING_PREFIX = "lite-controlnet-ckpt-"  # local staging folders in the system temp folder
_NAME = re.compile(r"^step-(\d{8})$")
_OWNED = re.compile(r"-(\d+)$")  # staging names end with their writer's pid
_OLD_STAGING_AGE = 3600.0  # seconds: staging folders without a pid (older versions) are removed after this


class CheckpointError(ReportedError, RuntimeError):
    """A checkpoint or module folder is incomplete or damaged."""

    exit_code = USAGE


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, checked for shape; raises `CheckpointError` when it is unreadable or malformed."""
        return _read_manifest(self.path)


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- writing -----------------------------------------------------------------------------------


@contextmanager
def _local_folder() -> Iterator[Path]:
    """An empty folder on local disk, named with this process's pid so that a kill's leftovers
    can be told apart (and removed) later."""
    folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_local(write: Callable[[Path], None], local: Path, what: str) -> None:
    """`write(local)`, with a full local disk reported as such (torch.save says only "write failed")."""
    try:
        write(local)
    except Exception as error:
        full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or shutil.disk_usage(local).free < 1 << 20:
            raise disk_full(f"{local.parent} (the system temp folder; set TMPDIR to move it)",
                            what=f" to write {what}") from error
        raise


def _file_list(folder: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _stage(local: Path, files: dict[str, dict[str, Any]], staging: Path, what: str) -> None:
    """Copy `local` to `staging`, flush and check it against `files`; on any failure remove the
    copy and raise (a full disk as one `OSError` ENOSPC that says how much `what` needs)."""
    # each file takes at least a block more than its bytes on most filesystems
    needed = sum(entry["size"] for entry in files.values()) + 4096 * (len(files) + 1)
    staging.parent.mkdir(parents=True, exist_ok=True)
    require_space(staging.parent, needed, f" to write {what}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local / rel, staging / rel)
            fsync_file(staging / rel)
        for rel, expected in files.items():
            if _sha256(staging / rel) != expected["sha256"]:
                raise CheckpointError(f"{staging / rel} differs from what was written: the disk at {staging.parent} "
                                      "returns other bytes than it was given.")
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(staging.parent, needed, shutil.disk_usage(staging.parent).free,
                            f" to write {what}") from error
        raise


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1), fsync=True)


def save_checkpoint(output: str | Path, step: int, write: Callable[[Path], None], keep: int = 2,
                    info: dict | None = None) -> Checkpoint:
    """Write a checkpoint for `step`: `write(folder)` fills a local folder, which is then published.

    Args:
        output: the run folder.
        step: the optimizer step the checkpoint resumes after.
        write: fills the given (empty, local) folder with the checkpoint's files.
        keep: how many published checkpoints to keep (older ones are removed after publishing).
        info: extra values for the manifest (epoch, position, ...).
    Raises:
        OSError: ENOSPC when the disk is full; the published checkpoints are left as they were.
    """
    root = checkpoint_root(output)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    staging = root / f".tmp-{final.name}-{os.getpid()}"
    with _local_folder() as local:
        _write_local(write, local, f"checkpoint {final.name}")
        files = _file_list(local)
        _stage(local, files, staging, f"checkpoint {final.name}")
    if final.exists():  # an unpublished or superseded copy of the same step
        shutil.rmtree(final)
    os.replace(staging, final)
    _write_manifest(final, {"step": step, "files": files, "written": time.time(), **(info or {})})
    _prune(root, keep)
    return Checkpoint(final, step)


def publish_folder(dest: str | Path, write: Callable[[Path], None], info: dict | None = None) -> Path:
    """Replace the folder `dest` as a whole: written aside with a manifest, checked, then renamed.

    A kill at any moment leaves either the previous `dest` or the new one (or, between the two
    renames, none: `latest_control` then falls back to the newest checkpoint).

    Args:
        dest: the folder to publish (e.g. `<output>/final`).
        write: fills the given (empty, local) folder.
        info: extra values for the manifest (e.g. the step).
    """
    dest = Path(dest)
    staging = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    with _local_folder() as local:
        _write_local(write, local, str(dest))
        files = _file_list(local)
        _stage(local, files, staging, str(dest))
    _write_manifest(staging, {"files": files, "written": time.time(), **(info or {})})
    old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _prune(root: Path, keep: int) -> None:
    published = list_checkpoints(root.parent)
    for old in published[keep:]:
        shutil.rmtree(old.path, ignore_errors=True)
    _remove_dead_staging(root, ".tmp-step-")


def _owner_pid(name: str) -> int | None:
    match = _OWNED.search(name)
    return int(match.group(1)) if match else None


def _remove_dead_staging(folder: Path, prefix: str) -> list[Path]:
    """Remove `prefix*-<pid>` folders in `folder` whose writer is gone; return them."""
    removed = []
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        if child.name.startswith(prefix) and child.is_dir() and not pid_alive(_owner_pid(child.name) or -1):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def clean_stale_staging(output: str | Path | None = None) -> list[Path]:
    """Remove what killed writers left behind: local staging folders in the system temp folder
    (gigabytes each for ControlNet at SD1.5), and `.tmp-*` copies next to the checkpoints and
    `final/`. Folders of live processes are kept. Returns what was removed."""
    removed = []
    temp = Path(tempfile.gettempdir())
    for child in temp.glob(f"{STAGING_PREFIX}*"):
        pid = child.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit():
            stale = not pid_alive(int(pid))
        else:  # written by a version without the pid: stale once no write could still be running
            try:
                stale = time.time() - child.stat().st_mtime > _OLD_STAGING_AGE
            except OSError:
                continue
        if stale and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    if output is not None:
        removed += _remove_dead_staging(checkpoint_root(output), ".tmp-step-")
        removed += _remove_dead_staging(Path(output), ".tmp-final-")
        removed += _remove_dead_staging(Path(output), ".old-final-")
    return removed


# -- reading -----------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder}: unreadable {MANIFEST} ({error}).") from error
    files = manifest.get("files") if isinstance(manifest, dict) else None
    well_formed = isinstance(files, dict) and bool(files) and all(
        isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        for entry in files.values())
    if not well_formed:
        raise CheckpointError(f"{folder}: {MANIFEST} is malformed: expected an object whose 'files' maps each "
                              "file to its size and sha256.")
    if any(Path(rel).is_absolute() or ".." in Path(rel).parts for rel in files):
        raise CheckpointError(f"{folder}: {MANIFEST} names files outside the folder.")
    return manifest


def _verify_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{folder}: {rel} is missing.")
        if path.stat().st_size != expected["size"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{folder}: {rel} does not match its manifest (damaged or partly copied).")


def verify_checkpoint(checkpoint: Checkpoint) -> None:
    """Raise `CheckpointError` unless the manifest is well formed and every file matches it."""
    _verify_files(checkpoint.path, checkpoint.read_manifest()["files"])


def open_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder named by the user (`--resume FOLDER`), verified."""
    path = Path(path)
    manifest = _read_manifest(path)
    step = manifest.get("step")
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: {MANIFEST} has no step; expected a checkpoint folder such as "
                              "<output>/checkpoints/step-00000500.")
    checkpoint = Checkpoint(path, step)
    verify_checkpoint(checkpoint)
    return checkpoint


def verify_module_folder(path: str | Path) -> None:
    """Check a control module folder against its manifest: `final/` holds its own, a checkpoint's
    `control/` is listed in the checkpoint's. A folder with neither (saved by hand) is not checked."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        _verify_files(path, _read_manifest(path)["files"])
    elif path.name == "control" and (path.parent / MANIFEST).is_file():
        files = _read_manifest(path.parent)["files"]
        _verify_files(path.parent, {rel: entry for rel, entry in files.items() if rel.startswith("control/")})


def load_latest(output: str | Path, load: Callable[[Checkpoint], Any]) -> tuple[Checkpoint, Any] | None:
    """Load the newest checkpoint that verifies; warn about and skip damaged ones.

    Args:
        output: the run folder.
        load: reads a verified checkpoint and returns what the caller needs.
    Returns:
        (checkpoint, what `load` returned), or None when there is no usable checkpoint.
    """
    for checkpoint in list_checkpoints(output):
        try:
            verify_checkpoint(checkpoint)
            return checkpoint, load(checkpoint)
        except (CheckpointError, OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"Skipping checkpoint {checkpoint.path}: {error}. Trying the previous one.", stacklevel=2)
    return None


def load_state(path: Path) -> dict[str, Any]:
    """Read `state.pt` safely: tensors and plain values only, no code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # it would need code to be run: never done
        raise CheckpointError(f"{path} holds more than tensors and plain values (it would need unpickling "
                              "code to load); refused.") from error
    except (EOFError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else repr(error)
        raise CheckpointError(f"{path} is unreadable ({first}).") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training state.")
    return state


def latest_control(output: str | Path) -> Path | None:
    """The newest trained control module of a run that verifies: `<output>/final` unless a
    checkpoint is newer, else the newest good checkpoint's `control/`; None if there is none.
    Damaged folders are skipped with a warning."""
    newest = None
    for checkpoint in list_checkpoints(output):
        try:
            verify_module_folder(checkpoint.path / "control")  # the module's files: not the optimizer state
        except CheckpointError as error:
            warnings.warn(f"Skipping checkpoint {checkpoint.path}: {error}", stacklevel=2)
            continue
        newest = checkpoint
        break
    final = Path(output) / "final"
    if (final / MANIFEST).is_file():
        try:
            step = _read_manifest(final).get("step")
            verify_module_folder(final)
            if newest is None or not isinstance(step, int) or step >= newest.step:
                return final
        except CheckpointError as error:
            warnings.warn(f"Skipping {final}: {error}", stacklevel=2)
    elif (final / "config.json").is_file() and (final / "diffusion_pytorch_model.safetensors").is_file():
        return final  # written before final/ had a manifest
    return newest.path / "control" if newest is not None else None
