"""Conditions made from your own images: a folder of pictures becomes a training dataset.

:func:`make_conditions` reads every image of a folder (and its sub-folders), makes its control
image with a condition that works on any image (``canny``, or ``depth`` with a model you name),
and writes the pairs in the Hugging Face layout (see `data.dataset_folder`): ``image/{i}.png``
(the picture as RGB, turned upright by its EXIF orientation), ``conditioning_image/{i}.png``, ``metadata.jsonl`` and ``dataset.json``
(the condition and its settings). Captions come from one of, in this order:

1. ``caption``: one text for every image;
2. a ``metadata.jsonl`` in the folder, as the ``datasets`` image folder reads it: one
   ``{"file_name": "a.jpg", "text": "..."}`` per line, ``file_name`` relative to the folder;
3. a ``.txt`` file beside each image, with the same name (``a.jpg`` -> ``a.txt``).

Hidden files (``.DS_Store``) are left out. Any other file that is not an image, an image that
cannot be read, an image without a caption or a folder without images stops the run with one
`DatasetError` that names it, before the output folder appears: it is written as
``<out>.partial`` and renamed at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ..data.dataset_folder import METADATA, new_dataset_folder, write_metadata
from ..data.paired import DatasetError
from . import CONDITIONS, get_condition

__all__ = ["image_conditions", "make_conditions"]

_PNG_COMPRESS_LEVEL = 1
_CAPTION_SUFFIX = ".txt"


def image_conditions() -> list[str]:
    """Names of the conditions that can be made from any image."""
    return [name for name, condition in CONDITIONS.items() if condition.from_images]


def _image_suffixes() -> set[str]:
    Image.init()  # registers every format Pillow can open
    extensions = Image.registered_extensions()
    return {suffix.lower() for suffix, format_name in extensions.items() if format_name in Image.OPEN}


def _list_images(images_dir: Path) -> list[Path]:
    """The folder's image files, sorted; a DatasetError for any other file."""
    suffixes = _image_suffixes()
    images = []
    for path in sorted(images_dir.rglob("*")):
        relative = path.relative_to(images_dir)
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue
        if path.suffix.lower() == _CAPTION_SUFFIX or relative == Path(METADATA):
            continue
        if path.suffix.lower() not in suffixes:
            raise DatasetError(f"{path} is not an image (its suffix {path.suffix or '(none)'!r} is no image format "
                               "Pillow reads): the folder may hold images, .txt captions beside them and a "
                               f"{METADATA}; move other files out.", file=path)
        images.append(path)
    if not images:
        raise DatasetError(f"{images_dir} holds no images: expected image files (PNG, JPEG, ...), in it or "
                           "in its sub-folders.")
    return images


def _metadata_captions(manifest: Path) -> dict[str, str]:
    """file_name -> text from an image folder's metadata.jsonl."""
    captions = {}
    for line_number, raw in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as error:
            raise DatasetError(f"not a JSON object ({error.msg}).", manifest, line_number) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) \
                or not isinstance(entry.get("text"), str) or not entry["text"].strip():
            raise DatasetError('expected {"file_name": "<image path in the folder>", "text": "<caption>"}, '
                               f"got {raw.strip()[:80]!r}.", manifest, line_number)
        captions[os.path.normpath(entry["file_name"])] = entry["text"]
    return captions


def _captions(images_dir: Path, images: list[Path], caption: str | None) -> list[str]:
    if caption is not None:
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetError(f"the caption must be a non-empty text, got {caption!r}.")
        return [caption] * len(images)
    how = (f"pass one caption for all (--caption TEXT), put a {_CAPTION_SUFFIX} file of the same name beside each "
           f"image, or a {METADATA} with file_name and text in {images_dir}")
    manifest = images_dir / METADATA
    if manifest.is_file():
        known = _metadata_captions(manifest)
        captions = []
        for path in images:
            relative = os.path.normpath(path.relative_to(images_dir))
            if relative not in known:
                raise DatasetError(f"no caption for {path}: {manifest} has no line with \"file_name\": "
                                   f"{relative!r}; {how}.", file=path)
            captions.append(known[relative])
        return captions
    captions = []
    for path in images:
        text_file = path.with_suffix(_CAPTION_SUFFIX)
        try:
            text = text_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise DatasetError(f"no caption for {path} (no {text_file.name} beside it): {how}.", file=path) from None
        except UnicodeDecodeError:
            raise DatasetError(f"caption file {text_file} is not UTF-8 text.", file=text_file) from None
        if not text:
            raise DatasetError(f"caption file {text_file} is empty: write the image's caption in it.", file=text_file)
        captions.append(text)
    return captions


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as opened:
            opened.load()  # read now, so that a truncated file fails here, with its name
            # upright as a viewer shows it: phone photos store their rotation in EXIF
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}. Expected an image file Pillow can open "
                           "(PNG, JPEG, ...).", file=path) from None


def make_conditions(
    images_dir: str | os.PathLike,
    condition: str,
    out: str | os.PathLike,
    caption: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **condition_params: Any,
) -> Path:
    """Make a condition's control image for every image of a folder; write them as a dataset.

    Args:
        images_dir: the folder of images (and their captions: see the module docstring).
        condition: a condition that works on any image (`image_conditions`), e.g. "canny".
        out: folder to write; missing or empty (or a dataset, with ``overwrite``); not inside
            ``images_dir``, nor holding it.
        caption: one caption for every image, instead of the folder's captions.
        overwrite: replace ``out`` if it is a dataset.
        progress: show a tqdm progress bar.
        condition_params: the condition's settings, e.g. ``low_threshold=100,
            high_threshold=200`` for canny; recorded in ``dataset.json``.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        DatasetError: for a missing or empty folder, a file that is not an image, an unreadable
            image or one without a caption (the message names it).
        ValueError: for an unknown condition, one that needs a scene, or bad settings.
        FileExistsError: if ``out`` holds a dataset and ``overwrite`` is False, or other files.
    """
    chosen = get_condition(condition, **condition_params)
    if not chosen.from_images:
        raise ValueError(f"the {chosen.name!r} condition cannot be made from images (it is drawn from shapes "
                         f"scenes by make-shapes); from images: {', '.join(image_conditions())}.")
    images_dir, out = Path(images_dir), Path(out)
    if not images_dir.is_dir():
        raise DatasetError(f"images folder {images_dir} does not exist or is not a folder.")
    source, target = images_dir.resolve(), out.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise DatasetError(f"the output folder {out} and the images folder {images_dir} overlap: write the "
                           "dataset to a folder outside the images (and not around them).")
    images = _list_images(images_dir)
    captions = _captions(images_dir, images, caption)
    chosen.check_available()

    with new_dataset_folder(out, overwrite) as partial:
        (partial / "image").mkdir()
        (partial / "conditioning_image").mkdir()
        rows, sources = [], []
        for index, (path, text) in enumerate(tqdm(list(zip(images, captions)), desc=chosen.name, unit="image",
                                                  disable=not progress)):
            picture = _open_rgb(path)
            control = chosen.from_image(picture)
            picture.save(partial / "image" / f"{index}.png", compress_level=_PNG_COMPRESS_LEVEL)
            control.save(partial / "conditioning_image" / f"{index}.png", compress_level=_PNG_COMPRESS_LEVEL)
            rows.append((f"image/{index}.png", f"conditioning_image/{index}.png", text))
            sources.append({"source_file": path.relative_to(images_dir).as_posix()})
        info = {"condition": chosen.name, "condition_params": chosen.params, "generator": "make_conditions",
                "images": str(images_dir), "num": len(rows)}
        write_metadata(partial, rows, info, extra=sources)
    return out
