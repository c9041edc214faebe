"""How many CPU threads a run uses, kept at what the other processes leave free.

PyTorch's default is one intra-op thread per core, and its OpenMP threads wait for each other
by spinning. That is the fastest choice only while nothing else runs: as soon as another process
takes a core, every operation waits for the thread that lost its core, and the spinning threads
burn the time the other process needed. Measured on 2 cores (`benchmarks/cpu_sharing.py`), the
demo's step became many times slower beside a second run with torch's default, while one thread
fewer per busy core shared the machine at about its fair cost; alone, every core is fastest.

So on a CPU a run starts with the cores the other processes leave free (`choose_threads`), and
while it trains a `ThreadGovernor` re-reads how busy the other processes keep the machine
(Linux's /proc/stat, less this process's own CPU time) and follows it, one step at a time: fewer
threads when a competitor arrives, all of them again when it leaves. A GPU run keeps torch's
default (its CPU threads only feed the GPU). `--threads N` (or `threads=N`) fixes the count; so
does an `OMP_NUM_THREADS` the user exported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# a core counts as busy from this share of it in use by other processes (a browser tab idles below)
BUSY_SHARE = 0.35


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count of a run and why: printed in the hardware plan."""

    threads: int
    reason: str
    follow: bool = False  # chosen by the package: a run may follow the load (`ThreadGovernor`)


def cpu_cores() -> int:
    """Cores this process may run on (its affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(window: float = 0.25) -> float:
    """Cores' worth of CPU time the other processes use now: measured over `window` seconds from
    /proc/stat (less this process's time), else the 1-minute load average (0 where both are unknown).

    A load average still counts a command that just ended (the training before a `sample`), so it
    is used only where the machine's own counters cannot be read."""
    busy, own, start = _busy_seconds(), time.process_time(), time.monotonic()
    if busy is not None:
        time.sleep(window)
        later = _busy_seconds()
        if later is not None:
            others = (later - busy) - (time.process_time() - own)
            return max(0.0, others / (time.monotonic() - start))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(cores: int, load: float = 0.0, device: str = "cpu", requested: int | None = None,
                   environment: str | None = None) -> ThreadChoice | None:
    """The intra-op thread count for a run on `device`, or None to keep torch's default.

    Args:
        cores: cores the process may use (`cpu_cores()`).
        load: cores' worth of CPU time other processes use now (`busy_cores()`, before the run starts).
        device: "cpu", "cuda" or "mps": only a CPU run's threads are chosen.
        requested: `--threads`, which wins over everything.
        environment: the value of `OMP_NUM_THREADS`, which wins over the choice.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads={requested} is invalid: use a whole number >= 1, or leave it unset.")
        return ThreadChoice(requested, "requested")
    if environment:
        try:
            return ThreadChoice(max(1, int(environment)), "OMP_NUM_THREADS")
        except ValueError:
            pass  # a malformed value: torch ignores it too, and so does the choice below
    if device != "cpu":
        return None
    busy = busy_count(load)
    threads = free_cores(cores, load)
    reason = f"{cores} cores" + (f", {busy} busy ({load:.1f} in use by other processes)" if busy else "") + ", follows the load"
    return ThreadChoice(threads, reason, follow=True)


def busy_count(busy: float) -> int:
    """Whole cores counted busy when other processes use `busy` cores' worth of time."""
    return int(busy + 1 - BUSY_SHARE)


def free_cores(cores: int, busy: float) -> int:
    """Threads for a run when other processes keep `busy` cores' worth busy: the rest, at least one."""
    return max(1, cores - busy_count(busy))


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux), or None where unknown."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return None


class ThreadGovernor:
    """Keeps a CPU run's thread count at the cores other processes leave free, as they come and go.

    Call `update()` between steps: every `interval` seconds it measures the cores' worth of CPU
    time the other processes used (the machine's busy time less this process's), and when the
    count it implies differs from the current one twice in a row, sets it.

    Args:
        cores: cores this process may use.
        interval: seconds between measurements.
        enabled: False for a requested count (or a GPU run): `update` never changes it.
        busy_seconds, own_seconds, clock: the measurements (for tests).
    """

    def __init__(self, cores: int, interval: float = 2.0, enabled: bool = True,
                 busy_seconds: Callable[[], float | None] = _busy_seconds,
                 own_seconds: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic):
        self.cores, self.interval, self.enabled = cores, interval, enabled
        self.busy_seconds, self.own_seconds, self.clock = busy_seconds, own_seconds, clock
        self.last: tuple[float, float, float] | None = None
        self.pending: int | None = None

    def update(self) -> int | None:
        """Measure if it is time; the new thread count when it was changed, else None."""
        if not self.enabled:
            return None
        now, busy = self.clock(), self.busy_seconds()
        if busy is None:
            return None
        own = self.own_seconds()
        if self.last is None or now - self.last[0] < self.interval:
            self.last = self.last or (now, busy, own)
            return None
        wall = now - self.last[0]
        others = max(0.0, (busy - self.last[1]) - (own - self.last[2])) / wall
        self.last = (now, busy, own)
        wanted = free_cores(self.cores, others)
        if wanted == torch.get_num_threads():
            self.pending = None
            return None
        if self.pending != wanted:  # once may be a blip (another process starting, a file copied)
            self.pending = wanted
            return None
        self.pending = None
        torch.set_num_threads(wanted)
        return wanted


def apply_threads(device: str = "cpu", requested: int | None = None) -> ThreadChoice | None:
    """Choose the thread count for this process and set it (`torch.set_num_threads`)."""
    choice = choose_threads(cpu_cores(), busy_cores(), device, requested, os.environ.get("OMP_NUM_THREADS"))
    if choice is not None and choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    return choice


def governor_for(choice: ThreadChoice | None) -> ThreadGovernor:
    """The governor of a run whose threads `apply_threads` chose: active only for a count it chose."""
    return ThreadGovernor(cpu_cores(), enabled=choice is not None and choice.follow)
