"""How many CPU threads a run uses, chosen so that it shares a busy machine fairly.

PyTorch's default is one intra-op thread per core, and its OpenMP threads wait for each other
by spinning. On a small machine that is the fastest choice only while nothing else runs: as
soon as another process takes a core, every operation waits for the thread that lost its core,
and the spinning thread burns the time the other process needed. Measured on 2 cores
(`benchmarks/cpu_sharing.py`), the demo's step then became many times slower beside a second
run, while one thread per run shared the machine at about its fair cost and was as fast alone.

So on a CPU the package leaves one core to the rest of the machine on machines of up to four
cores and one more for each busy core the load average shows; a GPU run keeps torch's default
(its CPU threads only feed the GPU). `--threads N` (or `threads=N`) sets the count; so does an
`OMP_NUM_THREADS` the user exported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# at most this many cores: a machine this small has no core to spare for spinning threads
SMALL_MACHINE = 4


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count of a run and why: printed in the hardware plan."""

    threads: int
    reason: str


def cpu_cores() -> int:
    """Cores this process may run on (its affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores() -> float:
    """Cores other processes keep busy: the 1-minute load average (0 where it is unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(cores: int, load: float = 0.0, device: str = "cpu", requested: int | None = None,
                   environment: str | None = None) -> ThreadChoice | None:
    """The intra-op thread count for a run on `device`, or None to keep torch's default.

    Args:
        cores: cores the process may use (`cpu_cores()`).
        load: cores other processes keep busy now (`busy_cores()`, before the run starts).
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
    spare = 1 if cores <= SMALL_MACHINE else 0
    busy = int(load + 0.5)
    threads = max(1, cores - spare - busy)
    parts = [f"{cores} cores"]
    if spare:
        parts.append("one left to the rest of the machine")
    if busy:
        parts.append(f"{busy} busy (load {load:.1f})")
    return ThreadChoice(threads, ", ".join(parts))


def apply_threads(device: str = "cpu", requested: int | None = None) -> ThreadChoice | None:
    """Choose the thread count for this process and set it (`torch.set_num_threads`)."""
    choice = choose_threads(cpu_cores(), busy_cores(), device, requested, os.environ.get("OMP_NUM_THREADS"))
    if choice is not None and choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    return choice
