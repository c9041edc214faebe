"""The errors a user can act on, and the CLI's boundary that prints each as one line.

Expected errors (a bad value, file or folder; a full disk; a run that cannot go on) reach the
user as one line, `error: <what is wrong and what would be accepted>`, with exit code 2 for
usage errors and 1 for failures of the run or its surroundings. Anything else is a bug and
keeps its traceback, as does every error under `--debug`.
"""

from __future__ import annotations

import errno
import math
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

USAGE = 2  # exit code: fix the command, the data or the files it names
FAILED = 1  # exit code: the run could not go on (disk full, non-finite weights)
INTERRUPTED = 130  # exit code after Ctrl-C, as shells report SIGINT

# OSErrors that are the machine's, not the command's: the same command may work elsewhere.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


class ReportedError(Exception):
    """An expected error the CLI prints as one line and exits with `exit_code`."""

    exit_code = FAILED


class UsageError(ReportedError, ValueError):
    """A value, file or option given on the command line cannot be used."""

    exit_code = USAGE


class TrainingError(ReportedError, RuntimeError):
    """Training could not go on (non-finite losses or weights); the last good checkpoint is kept."""

    exit_code = FAILED


class NonFiniteWeightsError(ReportedError, ValueError):
    """A saved module whose weights hold NaN or inf: it would sample black or noise images."""

    exit_code = FAILED


def is_disk_full(error: OSError) -> bool:
    """Whether `error` says the disk (or quota) is full: ENOSPC and kin, or numpy's short write
    ("N requested and M written"), which carries no errno."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return error.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(error)) is not None


def disk_full(where: Any, needed: int | None = None, free: int | None = None, what: str = "") -> OSError:
    """An `OSError(ENOSPC)` that says where, how much is needed and how much is free."""
    amounts = ""
    if needed is not None:
        amounts = f": needs {_human_size(needed)}" + (f", {_human_size(free)} free" if free is not None else "")
    return OSError(errno.ENOSPC, f"No space left on {where}{what}{amounts}. Free some space or choose another folder "
                                 "(e.g. --output or --cache-dir on a larger disk).")


def require_space(folder: Path, needed: int, what: str) -> None:
    """Raise `disk_full` unless `folder`'s filesystem has `needed` bytes free. A filesystem that
    reports no size at all (some network mounts) is not judged: writing will tell."""
    usage = shutil.disk_usage(folder)
    if usage.total and needed > usage.free:
        raise disk_full(folder, needed, usage.free, what)


def _human_size(size: int) -> str:
    """A size for people: 12 KB, 3.4 MB, 1.2 GB."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{math.ceil(size / 2**10)} KB"


def exit_code(error: BaseException) -> int | None:
    """The exit code of an expected error; None for a bug (the traceback is then shown)."""
    if isinstance(error, ReportedError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(error, OSError):
        return FAILED if error.errno in _ENVIRONMENT_ERRNOS or is_disk_full(error) else USAGE
    if isinstance(error, ValueError):
        return USAGE
    try:
        from PIL.Image import DecompressionBombError
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return None
    return USAGE if isinstance(error, DecompressionBombError) else None


def one_line(error: BaseException) -> str:
    """The message of `error` on one line, without `[Errno N]` or a DataLoader worker's traceback."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (a training run resumes from its last checkpoint when started again)."
    message = str(error)
    if isinstance(error, OSError) and error.strerror:
        named = error.filename and str(error.filename) not in error.strerror
        message = error.strerror + (f": {error.filename}" if named else "")
    # An error raised in a DataLoader worker comes back wrapping the worker's traceback; its
    # last line is "module.Class: message", the message the user needs.
    if "\nOriginal Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = re.sub(r"^[\w.]+(Error|Exception)\w*: ", "", last)
    message = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return message or type(error).__name__


def run_command(command: Callable[[], Any], debug: bool = False) -> int:
    """Run `command` as the CLI does: expected errors become one line on stderr and an exit code.

    Warnings are shown as one `warning: ...` line each. Returns the exit code (0 on success);
    a bug, or any error with `debug`, propagates with its traceback.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            command()
        except (Exception, KeyboardInterrupt) as error:
            code = exit_code(error)
            if debug or code is None:
                raise
            print(f"error: {one_line(error)}", file=sys.stderr)
            return code
    return 0


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=file or sys.stderr)

