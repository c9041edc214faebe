"""Peak memory of a piece of work: `torch.cuda.max_memory_allocated` on a GPU, else the
process's peak resident memory (reset before the work where Linux allows it)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import torch


def _rss_peak() -> int:
    """The process's peak resident memory in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # Unix only; imported here so the module loads everywhere

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _reset_rss_peak() -> bool:
    """Reset the peak resident memory to the current one (Linux >= 4.0); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of what runs inside `with PeakMemory() as peak:`; then `peak.bytes`, `peak.kind`.

    On a GPU: `torch.cuda.max_memory_allocated`, reset on entry. Elsewhere: the process's peak
    resident memory, reset on entry on Linux; where it cannot be reset it counts from the
    process's start, and `kind` says so.
    """

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.bytes = 0
        self.kind = "GPU max allocated" if self.cuda else "peak RSS"

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        elif not _reset_rss_peak():
            self.kind = "peak RSS since the process started"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bytes = torch.cuda.max_memory_allocated() if self.cuda else _rss_peak()
