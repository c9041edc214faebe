"""What every dataset reader shares: its error, and the checks made before an image is read.

A manifest folder (`paired.py`) and a Hugging Face dataset (`hf_datasets.py`) both read images
that a user, or a download, put there: only regular files of a bounded size are read, and each
problem is a `DatasetError` that says where it is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from PIL import Image, ImageOps

__all__ = ["MAX_IMAGE_BYTES", "DatasetError", "check_image_file", "exif_upright"]

# An image file larger than this is refused before it is read (a 4096x4096 RGB PNG is at most 48 MB).
MAX_IMAGE_BYTES = 512 * 2**20


class DatasetError(ValueError):
    """A problem with a dataset, located by manifest file, line and image file (a Hugging Face
    dataset's errors name the row and column in the message instead).

    Attributes:
        manifest: the manifest file, if known.
        line: 1-based line number in the manifest, if known.
        file: the offending image file, if any.
    """

    def __init__(self, message: str, manifest: Path | None = None, line: int | None = None, file: Path | None = None):
        where = f"{manifest}, line {line}: " if line is not None else f"{manifest}: " if manifest is not None else ""
        super().__init__(where + message)
        self.manifest, self.line, self.file = manifest, line, file


def check_image_file(path: str | os.PathLike) -> str | None:
    """Why `path` (symlinks followed) cannot be an image file to read, or None if it can: only
    regular files are read (a FIFO would block forever, /dev/zero never end), up to
    `MAX_IMAGE_BYTES`. A missing file raises `FileNotFoundError`."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a FIFO, device or socket); expected an image file"
    if info.st_size > MAX_IMAGE_BYTES:
        return f"is {info.st_size / 2**20:.0f} MB; image files over {MAX_IMAGE_BYTES // 2**20} MB are not read"
    return None


def exif_upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says (a phone photo as viewers show it), as
    diffusers' `load_image` does; an image without that tag is returned as it is."""
    if image.getexif().get(0x0112, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)
