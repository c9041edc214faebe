"""Files and folders written whole or not at all: written beside their place, then renamed into it.

A reader, or a run started again after a kill, finds the old version or the new one, never half
of one; at worst a `<name>.partial` is left beside it, which the next write replaces.

A folder (a checkpoint, a run's `final/` module) is published with a manifest, `MANIFEST.json`:
the size and SHA-256 of each of its files. It is built on local disk, copied beside its place
under a temporary name, flushed, checked against its hashes and renamed into place; a folder
without a manifest, or whose files do not match it, is never read. This is safe on Google
Drive, where a Colab disconnect can cut a copy short. A full disk stops a write with one
`OSError` (ENOSPC) that says how much is needed; what was published before stays as it was,
and the staging copies of a killed writer are removed at the next start (`clean_stale_staging`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from .errors import USAGE, ReportedError, disk_full, require_space

MANIFEST = "MANIFEST.json"
STAGING_PREFIX = "lite-controlnet-ckpt-"  # local staging folders in the system temp folder: <prefix><pid>-...
_STAGING = re.compile(r"^\.(tmp|old)-.+-(\d+)$")  # publish_folder's copies beside a folder: .tmp-<name>-<pid>


class DamagedFolderError(ReportedError, RuntimeError):
    """A published folder is incomplete or damaged: no readable manifest, or files that differ from it."""

    exit_code = USAGE


def fsync_file(path: str | Path) -> None:
    """Flush the bytes of the file `path` to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_write(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Write the file or folder `path` whole or not at all.

    Yields the path to write instead, `<path>.partial` (a saver that goes by the suffix needs the
    format named, or a file object); when the block ends without an error, it replaces `path` in
    one rename. On an error it is removed and `path` is left as it was.

    Args:
        path: the file, or the folder (which must not exist yet, or be empty), to write.
        fsync: flush the file's bytes to the disk before the rename, so that the rename never
            publishes a file whose bytes are still in memory.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    _remove(partial)  # left by a writer that was killed
    try:
        yield partial
        if fsync:
            fsync_file(partial)
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise


def write_atomic(path: str | Path, data: bytes | str, fsync: bool = False) -> None:
    """Write `data` (text as UTF-8) to the file `path` whole or not at all (see `atomic_write`)."""
    with atomic_write(path, fsync=fsync) as partial:
        partial.write_bytes(data.encode() if isinstance(data, str) else data)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# -- folders published with a manifest ---------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
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
            if sha256(staging / rel) != expected["sha256"]:
                raise DamagedFolderError(f"{staging / rel} differs from what was written: the disk at "
                                         f"{staging.parent} returns other bytes than it was given.")
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(staging.parent, needed, shutil.disk_usage(staging.parent).free,
                            f" to write {what}") from error
        raise


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1), fsync=True)


def publish_folder(dest: str | Path, write: Callable[[Path], None], info: dict | None = None,
                   manifest_inside: bool = True, what: str | None = None) -> Path:
    """Replace the folder `dest` as a whole: written on local disk, copied beside it, checked, renamed.

    With `manifest_inside` (a module folder such as `final/`) the manifest is written before the
    rename, so that a kill leaves the previous `dest` or the new one (or, between the two renames,
    none). Without it (a checkpoint, which nothing replaces) the manifest is written after the
    rename, last: the folder counts as published only once it is there.

    Args:
        dest: the folder to publish.
        write: fills the given (empty, local) folder.
        info: values for the manifest besides its files (e.g. the step).
        manifest_inside: write the manifest before the rename rather than after it.
        what: what is written, for a full disk's message (default: `dest`).
    Raises:
        OSError: ENOSPC when a disk is full; what was published before is left as it was.
    """
    dest = Path(dest)
    staging = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    what = what or str(dest)
    with _local_folder() as local:
        _write_local(write, local, what)
        files = _file_list(local)
        _stage(local, files, staging, what)
    manifest = {**(info or {}), "files": files}
    if manifest_inside:
        _write_manifest(staging, manifest)
    old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    if not manifest_inside:
        _write_manifest(dest, manifest)
    return dest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of `folder`, checked for shape; a `DamagedFolderError` when unreadable or malformed."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedFolderError(f"{folder}: unreadable {MANIFEST} ({error}).") from error
    files = manifest.get("files") if isinstance(manifest, dict) else None
    well_formed = isinstance(files, dict) and bool(files) and all(
        isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        for entry in files.values())
    if not well_formed:
        raise DamagedFolderError(f"{folder}: {MANIFEST} is malformed: expected an object whose 'files' maps each "
                                 "file to its size and sha256.")
    if any(Path(rel).is_absolute() or ".." in Path(rel).parts for rel in files):
        raise DamagedFolderError(f"{folder}: {MANIFEST} names files outside the folder.")
    return manifest


def verify_files(folder: str | Path, files: dict[str, dict[str, Any]]) -> None:
    """Raise `DamagedFolderError` unless each of `files` (a manifest's entries) is in `folder` as listed."""
    folder = Path(folder)
    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file():
            raise DamagedFolderError(f"{folder}: {rel} is missing.")
        if path.stat().st_size != expected["size"] or sha256(path) != expected["sha256"]:
            raise DamagedFolderError(f"{folder}: {rel} does not match its manifest (damaged or partly copied).")


# -- what killed writers leave behind ----------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_staging(folder: Path) -> list[Path]:
    """Remove the `.tmp-<name>-<pid>` and `.old-<name>-<pid>` folders in `folder` whose writer is gone."""
    removed = []
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        match = _STAGING.match(child.name)
        if match and child.is_dir() and not pid_alive(int(match.group(2))):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def clean_stale_staging(*folders: str | Path) -> list[Path]:
    """Remove what killed writers left behind: local staging folders in the system temp folder
    (gigabytes each for ControlNet at SD1.5; one without a pid is no writer's of this version), and
    the `.tmp-*` and `.old-*` copies `publish_folder` makes in `folders`. Folders of live processes
    are kept. Returns what was removed."""
    removed = []
    for child in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*"):
        pid = child.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if child.is_dir() and not pid_alive(int(pid) if pid.isdigit() else -1):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    for folder in map(Path, folders):
        removed += _remove_dead_staging(folder)
    return removed
