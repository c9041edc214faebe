"""Says once when training steps become much slower than the run's own early steps.

A step many times slower than before, for a minute or more, is almost always the machine's
doing: another process on the CPU (a second run, a browser, another notebook cell), or a GPU
shared with another job. The progress bar would only look hung; one line says what is likely.
"""

from __future__ import annotations

import statistics
from collections import deque


class StallWatch:
    """Watches step times; `step(seconds)` returns a warning line once, when the median step of the last
    `window` seconds is `factor` times slower than the run's reference step.

    Args:
        factor: how much slower counts as a stall.
        window: seconds of slow steps before it is said (a single slow step, a checkpoint or a
            grid, is not a stall).
        reference_steps: the first steps (after the very first, which warms up) whose median is
            the reference, unless `reference` is given (e.g. the hardware plan's probed step).
        reference: seconds per step to compare with.
        device: "cpu" or the GPU's kind, for what the line suggests.
    """

    def __init__(self, factor: float = 5.0, window: float = 60.0, reference_steps: int = 5,
                 reference: float | None = None, device: str = "cpu"):
        self.factor, self.window, self.reference_steps = factor, window, reference_steps
        self.device = device
        self.reference = reference
        self.early: list[float] = []
        self.recent: deque[float] = deque()
        self.warned = False
        self.skipped_first = reference is not None

    def step(self, seconds: float) -> str | None:
        """Record one step's duration; the warning line the first time a stall is seen, else None."""
        if self.warned:
            return None
        if not self.skipped_first:
            self.skipped_first = True
            return None
        if self.reference is None:
            self.early.append(seconds)
            if len(self.early) == self.reference_steps:
                self.reference = statistics.median(self.early)
            return None
        self.recent.append(seconds)
        while len(self.recent) > 1 and sum(self.recent) - self.recent[0] >= self.window:  # keep just over `window` seconds of steps
            self.recent.popleft()
        spent = sum(self.recent)
        if spent < self.window:
            return None
        typical = statistics.median(self.recent)  # one long step (a checkpoint, a grid) is not a stall
        if typical < self.factor * self.reference:
            return None
        self.warned = True
        why = ("another process may be using the CPU (fewer threads share it best: --threads 1)" if self.device == "cpu"
               else "another job may be using the GPU, or the data loading cannot keep up")
        return (f"Training steps take {typical / self.reference:.0f}x longer than at the start ({typical:.2f} s against "
                f"{self.reference:.2f} s per step, for the last {spent:.0f} s): {why}.")
