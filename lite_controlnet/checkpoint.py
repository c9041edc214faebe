"""Checkpoints that survive a Colab disconnect, and a lock against two runtimes in one folder.

A checkpoint is a folder `<output>/checkpoints/step-00000500/` holding:
- `control/`: the control module as a `save_pretrained` folder (usable alone for sampling);
- `state.pt`: optimizer, loss scaler, counters and RNG states (tensors and plain values only,
  read back with `torch.load(weights_only=True)`, so a shared folder cannot run code);
- `train_config.json`, `plan.json`: the run's settings and hardware plan;
- `MANIFEST.json`, written last: the size and SHA-256 of every file above.

Writing is safe on Google Drive: the checkpoint is built on local disk, copied next to the
others under a temporary name, flushed, renamed into place, and only then published by its
manifest. A folder without a manifest, or whose files do not match it, is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

MANIFEST = "MANIFEST.json"
_NAME = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete or damaged."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    def read_manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())


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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(output: str | Path, step: int, write: Callable[[Path], None], keep: int = 2, info: dict | None = None) -> Checkpoint:
    """Write a checkpoint for `step`: `write(folder)` fills a local folder, which is then published.

    Args:
        output: the run folder.
        step: the optimizer step the checkpoint resumes after.
        write: fills the given (empty, local) folder with the checkpoint's files.
        keep: how many published checkpoints to keep (older ones are removed after publishing).
        info: extra values for the manifest (epoch, position, ...).
    """
    root = checkpoint_root(output)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    with tempfile.TemporaryDirectory(prefix="lite-controlnet-ckpt-") as local:
        local = Path(local)
        write(local)
        files = {str(p.relative_to(local)): {"size": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(local.rglob("*")) if p.is_file()}
        staging = root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(local, staging)
    for rel in files:
        _fsync_file(staging / rel)
    if final.exists():  # an unpublished or superseded copy of the same step
        shutil.rmtree(final)
    os.replace(staging, final)
    manifest = {"step": step, "files": files, "written": time.time(), **(info or {})}
    partial = final / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=1))
    _fsync_file(partial)
    os.replace(partial, final / MANIFEST)
    _prune(root, keep)
    return Checkpoint(final, step)


def _prune(root: Path, keep: int) -> None:
    published = list_checkpoints(root.parent)
    for old in published[keep:]:
        shutil.rmtree(old.path, ignore_errors=True)
    for child in root.iterdir():  # leftovers of writes that were cut off
        if child.name.startswith(".tmp-step-") and not _pid_alive(_pid_of(child.name)):
            shutil.rmtree(child, ignore_errors=True)


def _pid_of(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def verify_checkpoint(checkpoint: Checkpoint) -> None:
    """Raise `CheckpointError` unless every file matches the manifest."""
    try:
        manifest = checkpoint.read_manifest()
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{checkpoint.path}: unreadable {MANIFEST} ({error}).") from error
    for rel, expected in manifest["files"].items():
        path = checkpoint.path / rel
        if not path.is_file():
            raise CheckpointError(f"{checkpoint.path}: {rel} is missing.")
        if path.stat().st_size != expected["size"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{checkpoint.path}: {rel} does not match its manifest (damaged or partly copied).")


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
        except (CheckpointError, OSError, RuntimeError, ValueError, KeyError) as error:
            warnings.warn(f"Skipping checkpoint {checkpoint.path}: {error}. Trying the previous one.", stacklevel=2)
    return None


def load_state(path: Path) -> dict[str, Any]:
    """Read `state.pt` safely: tensors and plain values only, no code."""
    return torch.load(path, map_location="cpu", weights_only=True)


# -- the run lock ------------------------------------------------------------------------------


class RunLockedError(RuntimeError):
    """Another runtime is training into the same output folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """A lock file in the output folder, refreshed while training.

    A lock counts as stale (and is taken over) when its process is gone from this machine, or
    when it has not been refreshed for `stale_after` seconds (a runtime that disconnected). A
    live holder refreshes it every `heartbeat` seconds.
    """

    def __init__(self, output: str | Path, stale_after: float = 90.0, heartbeat: float = 20.0):
        self.path = Path(output) / ".lock"
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def acquire(self) -> RunLock:
        held = self._read()
        if held and {k: held.get(k) for k in self.owner} != self.owner:
            age = time.time() - float(held.get("heartbeat", 0))
            same_host = held.get("host") == self.owner["host"]
            gone = same_host and not _pid_alive(int(held.get("pid", -1)))
            if not gone and age < self.stale_after:
                raise RunLockedError(
                    f"{self.path.parent} is in use by another training run (host {held.get('host')}, pid "
                    f"{held.get('pid')}, last active {age:.0f} s ago). Stop that run, or use another --output. "
                    f"If it is gone (a disconnected runtime), its lock expires in {self.stale_after - age:.0f} s; "
                    f"or delete {self.path}."
                )
            if held:
                warnings.warn(f"Taking over the stale lock of host {held.get('host')} pid {held.get('pid')} "
                              f"(last active {age:.0f} s ago).", stacklevel=2)
        self.refresh()
        # Refreshed from a thread, so that long phases (building the cache, sampling a grid)
        # never look like a dead runtime. It only writes this small file.
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lite-controlnet-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.refresh()
            except OSError:  # Drive hiccups: the next beat tries again
                pass

    def refresh(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".lock.{os.getpid()}.partial")
        partial.write_text(json.dumps({**self.owner, "heartbeat": time.time()}))
        os.replace(partial, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        held = self._read()
        if held and {k: held.get(k) for k in self.owner} == self.owner:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def latest_control(output: str | Path) -> Path | None:
    """The newest trained control module of a run: `<output>/final`, else the newest
    published checkpoint's `control/`; None if there is none yet."""
    candidates = [Path(output) / "final"] + [c.path / "control" for c in list_checkpoints(output)]
    return next((folder for folder in candidates if (folder / "config.json").is_file()), None)
