"""The training and held-out Fill50k splits the fidelity benchmarks share."""

from __future__ import annotations

from pathlib import Path

from lite_controlnet import PairedDataset, make_fill50k


def fill50k_splits(work: Path, train_num: int, heldout_num: int, resolution: int) -> tuple[Path, PairedDataset]:
    """(training folder, held-out dataset) under `work`, made once (seeds 0 and 1) and then reused."""
    train_dir, heldout_dir = work / "train", work / "heldout"
    if not (train_dir / "prompt.json").is_file():
        make_fill50k(train_dir, num=train_num, size=resolution, seed=0)
    if not (heldout_dir / "prompt.json").is_file():
        make_fill50k(heldout_dir, num=heldout_num, size=resolution, seed=1)
    return train_dir, PairedDataset(heldout_dir, resolution=resolution)
