"""The training and held-out Fill50k splits the fidelity benchmarks share."""

from __future__ import annotations

from pathlib import Path

from lite_controlnet import make_fill50k
from lite_controlnet.data.heldout import HELD_OUT_SEED, HeldOutPairs, held_out_pairs


def fill50k_splits(work: Path, train_num: int, heldout_num: int, resolution: int) -> tuple[Path, HeldOutPairs]:
    """(training folder, held-out pairs): the training set under `work` (dataset seed 0), made
    once and then reused; the held-out pairs (`held_out_pairs`, seed 1), rendered in memory."""
    train_dir = work / "train"
    if not (train_dir / "prompt.json").is_file():
        make_fill50k(train_dir, num=train_num, size=resolution, seed=0)
    return train_dir, held_out_pairs(heldout_num, resolution, seed=HELD_OUT_SEED)
