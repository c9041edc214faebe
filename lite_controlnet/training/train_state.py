"""What a checkpoint's `state.pt` holds besides the module's weights: where the run stands, and
the states of its optimizer and loss scaler.

No random state is saved: every random draw of training comes from a generator seeded by
(seed, epoch) or (seed, step) (see trainer.py). Checkpoints written before this dataclass also
held the global random generators' states, under "rng"; they still resume, that entry unread.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, load_state

REQUIRED = ("global_step", "epoch", "step_in_epoch", "optimizer")  # what every checkpoint has held


@dataclass
class TrainState:
    """A run's counters, and (in a checkpoint) the optimizer's and loss scaler's `state_dict`s.

    While training, the trainer keeps its counters here with `optimizer` and `scaler` left None:
    the optimizer and scaler hold their own states, which are put in only to be saved.
    """

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    nonfinite_total: int = 0  # updates skipped for a non-finite loss, over the whole run
    elapsed: float = 0.0  # seconds of training: loading and stepping, not saving or sampling
    optimizer: dict[str, Any] | None = field(default=None, repr=False)
    scaler: dict[str, Any] | None = field(default=None, repr=False)  # None unless training in fp16

    def to_dict(self) -> dict[str, Any]:
        """The plain dict `state.pt` holds (the state dicts as they are, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any], where: Path | str = "state.pt") -> TrainState:
        """The state of a `state.pt`'s dict; a `CheckpointError` names what it lacks."""
        missing = [key for key in REQUIRED if key not in state]
        if missing:
            raise CheckpointError(f"{where} lacks {missing}: not a training state.")
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})

    def save(self, path: Path) -> None:
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """Read `state.pt` safely (tensors and plain values only, see `load_state`)."""
        return cls.from_dict(load_state(path), path)
