"""Rows of a Hugging Face dataset as (image, conditioning image, caption), read through `datasets`.

Three sources are opened, as diffusers' ``train_controlnet.py`` users bring them:

* a Hub dataset id, e.g. ``fusing/fill50k`` (``datasets.load_dataset``; offline, only one already
  in the local cache);
* a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``);
* one ``.parquet`` file, or a folder of them (a Hub dataset downloaded as it is stored, e.g.
  ``data/train-00000-of-00001.parquet``).

Of a dataset with several splits, ``train`` is read. The columns are named as in diffusers:
``image`` (the target), ``conditioning_image`` (the control) and ``text`` (the caption) by default.
An image value may be an ``Image`` feature's image, image bytes, or a path of an image file (a
relative path is taken from the dataset's folder); a caption is a text, or a list of texts of which
the first is used: diffusers draws one at random per step, which would give a row another prompt at
each epoch and defeat the text cache and an exact resume. ``max_train_samples`` keeps the first
rows only, as they are stored (diffusers shuffles first; here the order is the dataset's own).

Every problem of a row is a `DatasetError` that names the dataset, the row (its index in the
split) and the column. ``datasets`` is optional: without it, opening such a source says how to
install it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .reading import MAX_IMAGE_BYTES, DatasetError, check_image_file, exif_upright

__all__ = ["COLUMN_FLAGS", "DatasetRows", "is_hub_id", "local_source_kind"]

# role -> the flag (and TrainConfig field) that names its column
COLUMN_FLAGS = {"image": "--image-column", "conditioning_image": "--conditioning-image-column",
                "caption": "--caption-column"}
_STATE_FILES = ("state.json", "dataset_dict.json")  # what save_to_disk writes (a Dataset, a DatasetDict)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_BATCH = 256  # rows read at once when every row is hashed


def is_hub_id(text: str) -> bool:
    """Whether `text` can be a Hub dataset id (``namespace/name``); a path is never taken for one."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and not text.endswith((".parquet", ".json", ".jsonl"))


def local_source_kind(path: Path) -> str | None:
    """``"save_to_disk"`` or ``"parquet"`` for a local path that `DatasetRows` opens; None otherwise."""
    if path.is_file():
        return "parquet" if path.suffix == ".parquet" else None
    if not path.is_dir():
        return None
    if any((path / name).is_file() for name in _STATE_FILES):
        return "save_to_disk"
    if next(_parquet_files(path), None) is not None:
        return "parquet"
    return None


def _parquet_files(folder: Path):
    return (p for p in folder.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _import_datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"{what} is read through the `datasets` library, which is not installed: "
                           "pip install datasets") from None
    return datasets


class DatasetRows:
    """The rows of a Hugging Face dataset: target image, control image and caption of each.

    Args:
        data: a Hub dataset id, a ``save_to_disk`` folder, a ``.parquet`` file or a folder of them.
        image_column: the target image's column.
        conditioning_image_column: the control image's column.
        caption_column: the caption's column.
        max_train_samples: keep the first this many rows only (None: all).

    Raises:
        DatasetError: the source cannot be opened (offline and not cached, not found, not a
            dataset, ``datasets`` missing), or lacks a column, or a column holds the wrong kind
            of values. Row problems are raised when the row is read.
    """

    def __init__(self, data: str, image_column: str = "image", conditioning_image_column: str = "conditioning_image",
                 caption_column: str = "text", max_train_samples: int | None = None):
        self.name = str(data)
        path = Path(data).expanduser()
        self.kind = local_source_kind(path) or "hub"
        # relative image paths are taken from here; None for a Hub dataset
        self.folder = None if self.kind == "hub" else Path(os.path.abspath(path if path.is_dir() else path.parent))
        self.columns = {"image": image_column, "conditioning_image": conditioning_image_column,
                        "caption": caption_column}
        dataset = self._open(path)
        self._check_columns(dataset)
        self.total = len(dataset)
        if max_train_samples is not None and max_train_samples < len(dataset):
            dataset = dataset.select(range(max_train_samples))
        dataset = dataset.select_columns(list(dict.fromkeys(self.columns.values())))
        datasets = _import_datasets(self.name)
        for role in ("image", "conditioning_image"):  # bytes or path, decoded here with each row's own errors
            if isinstance(dataset.features[self.columns[role]], datasets.Image):
                dataset = dataset.cast_column(self.columns[role], datasets.Image(decode=False))
        self._dataset = dataset
        self._digests: list[tuple[str, str]] | None = None

    # -- opening ------------------------------------------------------------------------------

    def _open(self, path: Path) -> Any:
        datasets = _import_datasets(f"{self.name} (a {'Hub dataset' if self.kind == 'hub' else self.kind + ' dataset'})")
        try:
            if self.kind == "save_to_disk":
                loaded = datasets.load_from_disk(str(path))
            elif self.kind == "parquet" and path.is_file():
                loaded = datasets.load_dataset("parquet", data_files=str(path))
            elif self.kind == "parquet":
                loaded = datasets.load_dataset("parquet", data_dir=str(path))
            else:
                loaded = datasets.load_dataset(self.name)
        except ConnectionError as error:  # offline, or the Hub unreachable, and not in the local cache
            raise DatasetError(
                f"{self.name}: cannot load this Hub dataset: it is not in the local cache and the Hub cannot be "
                f"reached ({_short(error)}). Pass a local copy as --data instead: a folder written by "
                f"datasets' save_to_disk, or its parquet files (e.g. from `huggingface-cli download {self.name} "
                "--repo-type dataset --local-dir DIR`), or an image folder with metadata.jsonl."
            ) from None
        except FileNotFoundError as error:  # datasets' DatasetNotFoundError is one
            if self.kind != "hub":  # e.g. a state.json that is not save_to_disk's
                raise DatasetError(f"{self.name}: cannot read this {self.kind} dataset: {_short(error)}.") from None
            raise DatasetError(f"{self.name} is not a folder here and not a dataset on the Hub ({_short(error)}); "
                               "expected a dataset folder, a parquet file or a Hub dataset id such as "
                               "fusing/fill50k.") from None
        except RuntimeError as error:
            if "scripts are no longer supported" not in str(error):
                raise
            # a Hub dataset built by a loading script (fusing/fill50k is one): the Hub keeps a parquet copy
            raise DatasetError(
                f"{self.name} is built by a loading script, which datasets {datasets.__version__} no longer runs. "
                f"Pass the parquet copy the Hub keeps of it: `huggingface-cli download {self.name} --repo-type "
                "dataset --revision refs/convert/parquet --local-dir DIR`, then --data DIR.") from None
        except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
            raise DatasetError(f"{self.name}: cannot read this {self.kind} dataset: {_short(error)}.") from None
        if isinstance(loaded, datasets.DatasetDict):
            splits = list(loaded)
            if "train" not in loaded and len(splits) != 1:
                raise DatasetError(f"{self.name} has no 'train' split (it has {splits}); save the split to train "
                                   "on alone (dataset['NAME'].save_to_disk(DIR)) and pass that folder.")
            loaded = loaded["train" if "train" in loaded else splits[0]]
        return loaded

    def _check_columns(self, dataset: Any) -> None:
        found = list(dataset.column_names)
        for role, column in self.columns.items():
            if column not in found:
                raise DatasetError(
                    f"{self.name} has no column {column!r} ({COLUMN_FLAGS[role]}); its columns are {found}. Name the "
                    "target image, control image and caption columns with --image-column, "
                    "--conditioning-image-column and --caption-column.")
        datasets = _import_datasets(self.name)
        for role, column in self.columns.items():
            feature = dataset.features[column]
            if role == "caption":
                inner = getattr(feature, "feature", feature)  # a list of captions: of texts
                ok = isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string")
                accepted = "captions (texts, or lists of texts)"
            else:
                ok = isinstance(feature, datasets.Image) or (
                    isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary",
                                                                              "large_binary")
                ) or (isinstance(feature, dict) and {"bytes", "path"} <= set(feature))
                accepted = "images (an Image feature, image bytes, or paths of image files)"
            if not ok:
                raise DatasetError(f"{self.name}: column {column!r} ({COLUMN_FLAGS[role]}) holds {feature}; expected "
                                   f"{accepted}. Its columns are {found}.")

    # -- rows ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._dataset)

    def where(self, row: int, role: str) -> str:
        """Where a value is, for a message: the dataset, the row and the column (with its flag)."""
        return f"{self.name}, row {row}, column {self.columns[role]!r} ({COLUMN_FLAGS[role]})"

    def captions(self) -> list[str | DatasetError]:
        """Each row's caption, or the `DatasetError` that says what is wrong with it."""
        column = self.columns["caption"]
        values = self._dataset.select_columns([column])[:][column]
        return [self._caption(row, value) for row, value in enumerate(values)]

    def _caption(self, row: int, value: Any) -> str | DatasetError:
        if isinstance(value, (list, tuple)):
            if not value:
                return DatasetError(f"{self.where(row, 'caption')}: an empty list of captions; expected a text.")
            value = value[0]
        if isinstance(value, str) and value.strip():
            return value
        got = "missing caption (None)" if value is None else f"got {value!r}" if isinstance(value, str) else \
            f"got a {type(value).__name__}"
        return DatasetError(f"{self.where(row, 'caption')}: {got}; expected a non-empty text caption.")

    def image_bytes(self, row: int, role: str) -> bytes:
        """The encoded image of `role` (``"image"`` or ``"conditioning_image"``) in `row`."""
        return self._bytes(self._dataset[row][self.columns[role]], row, role)

    def _bytes(self, value: Any, row: int, role: str) -> bytes:
        where = self.where(row, role)
        path = None
        if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
            if value.get("bytes") is not None:
                value = value["bytes"]
            else:
                path = value.get("path")
                if path is None:
                    raise DatasetError(f"{where}: missing image (neither bytes nor a path).")
        elif isinstance(value, str):
            path = value
        if path is not None:
            return self._read_file(path, where)
        if value is None:
            raise DatasetError(f"{where}: missing image (None).")
        if not isinstance(value, (bytes, bytearray)):
            raise DatasetError(f"{where}: got a {type(value).__name__}; expected an image (bytes, or a path of an "
                               "image file).")
        if len(value) > MAX_IMAGE_BYTES:
            raise DatasetError(f"{where}: an image of {len(value) / 2**20:.0f} MB; images over "
                               f"{MAX_IMAGE_BYTES // 2**20} MB are not read.")
        return bytes(value)

    def _read_file(self, path: str, where: str) -> bytes:
        if not path.strip() or "\0" in path:
            raise DatasetError(f"{where}: {path!r} is not a path of an image file.")
        if not os.path.isabs(path):
            if self.folder is None:
                raise DatasetError(f"{where}: a relative image path {path!r} in a Hub dataset, with no folder to "
                                   "find it in; expected the image's bytes.")
            path = str(self.folder / path)
        try:
            problem = check_image_file(path)
            if problem:
                raise DatasetError(f"{where}: image file {path} {problem}.")
            return Path(path).read_bytes()
        except FileNotFoundError:
            raise DatasetError(f"{where}: image file {path} not found.") from None
        except OSError as error:
            raise DatasetError(f"{where}: cannot read image file {path} ({error.strerror or error}).") from None

    def open_image(self, row: int, role: str) -> Image.Image:
        """The image of `role` in `row`, read now (a damaged one fails here) and turned upright."""
        data = self.image_bytes(row, role)
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                return exif_upright(opened)
        except (OSError, Image.DecompressionBombError) as error:
            why = "not an image format Pillow knows" if isinstance(error, UnidentifiedImageError) else str(error)
            raise DatasetError(f"{self.where(row, role)}: cannot read the image ({len(data)} bytes): {why}. Expected "
                               "image bytes Pillow can open (PNG, JPEG, ...).") from None

    # -- what the rows hold -------------------------------------------------------------------

    def digests(self) -> list[tuple[str, str]]:
        """(SHA-256 of the target's bytes, of the control's bytes) of each row, computed once."""
        if self._digests is None:
            columns = [self.columns["image"], self.columns["conditioning_image"]]
            digests, row = [], 0
            for batch in self._dataset.select_columns(list(dict.fromkeys(columns))).iter(batch_size=_BATCH):
                for target, control in zip(batch[columns[0]], batch[columns[1]]):
                    digests.append((hashlib.sha256(self._bytes(target, row, "image")).hexdigest(),
                                    hashlib.sha256(self._bytes(control, row, "conditioning_image")).hexdigest()))
                    row += 1
            self._digests = digests
        return self._digests

    def __repr__(self) -> str:
        return f"DatasetRows({self.name!r}, {self.kind}, rows={len(self)}, columns={self.columns})"


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:300].rstrip(".") or type(error).__name__
