"""A lock against two runtimes training into one output folder.

The lock is a small JSON file, `<output>/.lock`, naming its holder (host, pid) and refreshed
by a heartbeat. It counts as stale, and is taken over, when its process is gone from this
machine or when it has not been refreshed for `stale_after` seconds (a runtime that
disconnected from a shared Drive folder).

Acquiring is atomic: on this machine every acquirer first takes an exclusive `flock` on
`<output>/.lock.guard`, so reading the lock, judging its holder and writing the new one
happen as one step, the takeover of a stale lock included; and a free lock is created with
`os.link`, which fails when the file exists, so two acquirers on filesystems without `flock`
cannot both create it either.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..atomic import pid_alive
from ..errors import USAGE, ReportedError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None


class RunLockedError(ReportedError, RuntimeError):
    """Another runtime is training into the same output folder."""

    exit_code = USAGE


@contextmanager
def _guard(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a no-op where the filesystem has no locks)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a mount without locks: os.link below still refuses a second creator
                pass
        yield
    finally:
        os.close(fd)  # closing releases the flock


class RunLock:
    """A lock file in the output folder, refreshed while training.

    Args:
        output: the run folder.
        stale_after: seconds without a heartbeat after which a lock of another host is stale.
        heartbeat: seconds between refreshes while held.
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
            held = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return held if isinstance(held, dict) else None

    def _mine(self, held: dict[str, Any] | None) -> bool:
        return bool(held) and {k: held.get(k) for k in self.owner} == self.owner

    def _content(self) -> str:
        return json.dumps({**self.owner, "heartbeat": time.time()})

    def acquire(self) -> RunLock:
        """Take the lock, or raise `RunLockedError` naming its live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _guard(self.path.with_name(".lock.guard")):
            held = self._read()
            if self.path.exists() and not self._mine(held):
                self._judge(held)  # raises while the holder is alive
                self._write()  # take over the stale lock
            elif not self.path.exists():
                self._create()
            else:
                self._write()
        # Refreshed from a thread, so that long phases (building the cache, sampling a grid)
        # never look like a dead runtime. It only writes this small file.
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lite-controlnet-lock", daemon=True)
        self._thread.start()
        return self

    def _judge(self, held: dict[str, Any] | None) -> None:
        """Raise unless the lock `held` (None: unreadable) is stale; warn when taking it over."""
        try:
            beat = float(held.get("heartbeat", 0)) if held else self.path.stat().st_mtime
        except (OSError, TypeError, ValueError):
            beat = 0.0
        if beat > time.time() + self.stale_after:  # a heartbeat far in the future (a bad clock, an edit) would
            try:                                   # never go stale: the file's own time is judged instead
                beat = self.path.stat().st_mtime
            except OSError:
                beat = 0.0
        age = time.time() - beat
        host, pid = (held or {}).get("host"), (held or {}).get("pid")
        try:
            gone = host == self.owner["host"] and not pid_alive(int(pid))
        except (TypeError, ValueError):
            gone = False
        if not gone and age < self.stale_after:
            raise RunLockedError(
                f"{self.path.parent} is in use by another training run (host {host}, pid {pid}, last active "
                f"{age:.0f} s ago). Stop that run, or use another --output. If it is gone (a disconnected "
                f"runtime), its lock expires in {self.stale_after - age:.0f} s; or delete {self.path}."
            )
        warnings.warn(f"Taking over the stale lock of host {host} pid {pid} (last active {age:.0f} s ago).",
                      stacklevel=3)

    def _partial(self) -> Path:
        partial = self.path.with_name(f".lock.{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_text(self._content())
        return partial

    def _create(self) -> None:
        """Create the lock file, failing if another acquirer created it meanwhile."""
        partial = self._partial()
        try:
            os.link(partial, self.path)  # the whole content at once
        except FileExistsError:
            raise self._taken() from None
        except OSError:  # no hard links here (some network mounts): create exclusively, then write
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise self._taken() from None
            with os.fdopen(fd, "w") as f:
                f.write(self._content())
        finally:
            partial.unlink(missing_ok=True)

    def _taken(self) -> RunLockedError:
        return RunLockedError(f"{self.path.parent} was just taken by another training run; use another --output, "
                              "or try again once it has stopped.")

    def _write(self) -> None:
        os.replace(self._partial(), self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.refresh()
            except OSError:  # Drive hiccups: the next beat tries again
                pass

    def refresh(self) -> None:
        """Renew the heartbeat; a lock another run has taken over is left to it, with a warning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _guard(self.path.with_name(".lock.guard")):
            held = self._read()
            if held is not None and not self._mine(held):
                warnings.warn(f"The lock of {self.path.parent} was taken over by host {held.get('host')} pid "
                              f"{held.get('pid')}: this run no longer holds it.", stacklevel=2)
                self._stop.set()
                return
            self._write()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self.path.parent.is_dir():
            return
        with _guard(self.path.with_name(".lock.guard")):
            if self._mine(self._read()):
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
