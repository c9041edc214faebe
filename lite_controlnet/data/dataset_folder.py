"""A dataset folder in the Hugging Face layout, written whole or not at all, and what made it.

`make_shapes` and `make_conditions` write ``metadata.jsonl`` (one ``{"image", "conditioning_image",
"text"}`` object per line, as diffusers' ``train_controlnet.py`` reads), the images it names, and
``dataset.json``: which condition made the control images and with which settings, so that
evaluation and the notebooks pick the matching controllability score (:func:`dataset_condition`).

Everything is written into ``<out>.partial`` and renamed into place at the end: a folder that is
there holds every pair; a failed or killed run leaves at most a ``.partial`` beside it, which the
next run replaces.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["DATASET_INFO", "METADATA", "dataset_condition", "dataset_info", "new_dataset_folder", "write_metadata"]

DATASET_INFO = "dataset.json"
METADATA = "metadata.jsonl"


def dataset_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The contents of ``folder/dataset.json``, or None if the folder has none.

    Raises:
        ValueError: if the file is there but is not a JSON object (the message names it).
    """
    path = Path(folder) / DATASET_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it should hold the dataset's condition, "
                         'e.g. {"condition": "canny"}.') from None
    if not isinstance(info, dict):
        raise ValueError(f'{path} must hold a JSON object such as {{"condition": "canny"}}, '
                         f"got {type(info).__name__}.")
    return info


def dataset_condition(folder: str | os.PathLike) -> str | None:
    """The name of the condition whose control images ``folder`` holds (e.g. ``"canny"``), or
    None for a dataset that does not record one (e.g. a Fill50k written by `make_fill50k`)."""
    info = dataset_info(folder)
    condition = None if info is None else info.get("condition")
    if condition is not None and not isinstance(condition, str):
        raise ValueError(f"{Path(folder) / DATASET_INFO}: 'condition' must be a condition name, got {condition!r}.")
    return condition


def write_metadata(folder: Path, rows: list[tuple[str, str, str]], info: dict[str, Any],
                   extra: list[dict[str, Any]] | None = None) -> None:
    """Write ``metadata.jsonl`` from (image, conditioning_image, text) rows (``extra``: more keys
    for each row) and ``dataset.json`` from ``info``."""
    with open(folder / METADATA, "w", encoding="utf-8") as file:
        for k, (image, control, text) in enumerate(rows):
            row = {"image": image, "conditioning_image": control, "text": text, **(extra[k] if extra else {})}
            file.write(json.dumps(row) + "\n")
    (folder / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


@contextmanager
def new_dataset_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty folder to write a dataset into; when the block ends, it becomes ``out``.

    ``out`` may be missing or empty. With ``overwrite``, it may also be a dataset (a folder with
    ``metadata.jsonl`` or ``dataset.json``), which is then replaced; a folder with other files is
    never replaced, so nothing else the user keeps there is lost. On an error the partial folder
    is removed and ``out`` is left as it was.

    Raises:
        FileExistsError: if ``out`` is a file, a dataset (without ``overwrite``) or a folder of other files.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder: choose a new or empty folder for the dataset.")
    is_dataset = (out / METADATA).is_file() or (out / DATASET_INFO).is_file()
    if out.is_dir() and any(out.iterdir()):
        if not is_dataset:
            raise FileExistsError(f"{out} is not empty and holds no dataset (no {METADATA}): choose a new or "
                                  "empty folder, so that no file of yours is replaced.")
        if not overwrite:
            raise FileExistsError(f"{out / METADATA} already exists: {out} looks like an existing dataset. "
                                  "Choose an empty folder, or pass overwrite=True (--overwrite) to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    old = out.with_name(out.name + ".old")
    for leftover in (partial, old):  # left by a run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        if out.is_dir() and any(out.iterdir()):
            os.replace(out, old)
            os.replace(partial, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, out)  # a missing or empty folder is replaced in one rename
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
