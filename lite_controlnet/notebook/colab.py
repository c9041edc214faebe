"""Colab conveniences: Google Drive for what must survive a disconnect, local disk for speed.

Outside Colab every function falls back to local folders, so notebooks run anywhere.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import zipfile
from pathlib import Path

from ..atomic import atomic_write

DRIVE_MOUNT = Path("/content/drive")
DEMO_RUN = Path("outputs") / "demo" / "run"  # where scripts/demo.sh trains, from the repository root
DEMO_BASE = "proxy"  # the base the demo trains on


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no `google` package at all
        return False


def mount_drive(mount_point: str | Path = DRIVE_MOUNT) -> Path | None:
    """Mount Google Drive in Colab (asks for permission once) and return `MyDrive`; None elsewhere."""
    if not in_colab():
        return None
    from google.colab import drive

    drive.mount(str(mount_point))
    return Path(mount_point) / "MyDrive"


def run_folder(name: str, local_root: str | Path = "outputs", output: str | Path | None = None) -> Path:
    """Where a run keeps checkpoints and outputs, created: `output` when given (a notebook's
    OUTPUT_DIR), else `MyDrive/lite-controlnet/<name>` in Colab (mounting Drive if needed), else
    `<local_root>/<name>`."""
    if output:
        folder = Path(output)
    else:
        drive = mount_drive() if in_colab() else None
        folder = (drive / "lite-controlnet" if drive is not None else Path(local_root)) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def trained_control(output: str | Path, base: str) -> Path | None:
    """The control module to sample from: the run folder's newest (`latest_control`), else, on the
    demo's base, the module `scripts/demo.sh` trained (looked for from here and from the parent
    folder, where a notebook opened from `notebooks/` finds the repository); None if neither."""
    from ..training.checkpoint import latest_control

    found = latest_control(output)
    if found is not None or base != DEMO_BASE:
        return found
    for root in (Path("."), Path("..")):
        if (root / DEMO_RUN).is_dir() and (found := latest_control(root / DEMO_RUN)) is not None:
            return found
    return None


def copy_to_local(source: str | Path, destination: str | Path) -> Path:
    """Copy a dataset (a folder, or a .zip of one) to local disk, once; return the dataset folder.

    Drive is slow with many small files: training reads the local copy. An existing
    destination is reused, never overwritten.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists():
        return _dataset_root(destination)
    if not source.exists():
        raise FileNotFoundError(f"Dataset {source} does not exist: pass a folder with prompt.json "
                                "(or metadata.jsonl), or a .zip of one.")
    with atomic_write(destination) as partial:
        if source.is_file() and source.suffix == ".zip":
            with zipfile.ZipFile(source) as archive:
                archive.extractall(partial)
        elif source.is_dir():
            shutil.copytree(source, partial)
        else:
            raise ValueError(f"{source} is neither a folder nor a .zip file.")
    return _dataset_root(destination)


def _dataset_root(folder: Path) -> Path:
    """The folder holding the manifest: the folder itself, or its single subfolder (zips often nest)."""
    from ..data.paired import MANIFEST_NAMES

    if any((folder / name).is_file() for name in MANIFEST_NAMES):
        return folder
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        if any((child / name).is_file() for name in MANIFEST_NAMES):
            return child
    raise FileNotFoundError(f"No prompt.json, metadata.jsonl or train.jsonl in {folder} or its subfolders.")


def prepare_data(data_dir: str | Path, own_images: str | Path | None = None, dataset: str | None = None,
                 condition: str = "canny", caption: str | None = None, real_fill50k: str | Path | None = None,
                 num: int = 50_000, size: int = 512, seed: int = 0) -> Path | str:
    """The dataset to train on, what both the data and the training notebook call (again after a
    disconnect wiped the local disk, with the same result):

    - `own_images`: your own pictures (a folder, e.g. on Drive; captions in ``.txt`` files beside
      them, a ``metadata.jsonl``, or `caption` for all) made into pairs with `condition` in
      `data_dir` (`conditions.from_images.make_conditions`), once;
    - else `dataset`: pairs already made, as `PairedDataset` reads them (a Hub dataset id, a
      dataset saved with ``save_to_disk``, parquet files, a folder of pairs), returned as is;
    - else Fill50k (`prepare_fill50k`: the real one copied from `real_fill50k`, or the synthetic
      one of `num` pairs of `size` px).
    """
    if own_images:
        from ..conditions.from_images import make_conditions
        from ..data.dataset_folder import dataset_info

        data_dir = Path(data_dir)
        made = dataset_info(data_dir) if data_dir.is_dir() else None
        if made is None:  # the folder appears whole or not at all
            return make_conditions(own_images, condition, data_dir, caption=caption)
        if (made.get("images"), made.get("condition")) != (str(own_images), condition):
            raise FileExistsError(
                f"{data_dir} holds pairs made from {made.get('images')} with {made.get('condition')!r}, not from "
                f"{own_images} with {condition!r}: choose another DATA_DIR (or delete that folder to make them again).")
        return data_dir
    if dataset:
        return dataset
    return prepare_fill50k(data_dir, real=real_fill50k, num=num, size=size, seed=seed)


def prepare_fill50k(data_dir: str | Path, real: str | Path | None = None, num: int = 50_000, size: int = 512,
                    seed: int = 0) -> Path:
    """The Fill50k to train on, on local disk: the real one copied from `real` (a folder or
    .zip), else the synthetic one, made once. Safe to call again after a disconnect wiped the
    local disk: the synthetic set is deterministic, so caches built from it stay valid."""
    if real:
        return copy_to_local(real, data_dir)
    data_dir = Path(data_dir)
    if (data_dir / "prompt.json").is_file():
        return data_dir
    from ..data.fill50k import make_fill50k

    return make_fill50k(data_dir, num=num, size=size, seed=seed)
