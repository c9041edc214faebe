"""Files and folders written whole or not at all: written beside their place, then renamed into it.

A reader, or a run started again after a kill, finds the old version or the new one, never half
of one; at worst a `<name>.partial` is left beside it, which the next write replaces.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
