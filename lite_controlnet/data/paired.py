"""Paired (control image, target image, prompt) datasets read from a manifest or a Hugging Face dataset.

Two layouts are read, both as JSON Lines with paths relative to the dataset
folder:

* the original ControlNet layout (lllyasviel/ControlNet, ``docs/train.md``):
  ``prompt.json`` with lines ``{"source": ..., "target": ..., "prompt": ...}``;
* the diffusers / Hugging Face layout (``train_controlnet.py``):
  ``metadata.jsonl`` or ``train.jsonl`` with lines
  ``{"image": ..., "conditioning_image": ..., "text": ...}``, where ``image``
  is the target and ``conditioning_image`` the control.

Without a manifest, the data may also be a Hugging Face dataset (a Hub id such as
``fusing/fill50k``, a ``save_to_disk`` folder, parquet files), read through the optional
``datasets`` library (`hf_datasets.py`), with diffusers' column names or others named.

Images are opened lazily in ``__getitem__`` so that constructing a 50k-sample
dataset only parses the manifest. ``check()`` opens every image up front.
Transforms follow ControlNet / diffusers: resize the shorter side to
``resolution`` (bilinear), centre-crop a square, identically for both images;
the target is scaled to [-1, 1] (the VAE's range), the control to [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .hf_datasets import COLUMN_FLAGS, DatasetRows, is_hub_id, local_source_kind
from .reading import MAX_IMAGE_BYTES, DatasetError, check_image_file, exif_upright

__all__ = ["MANIFEST_NAMES", "MAX_IMAGE_BYTES", "check_image_file", "DatasetError", "PairRecord", "DataProblem", "DataReport", "PairedDataset"]

# Looked for in this order when no manifest is named.
MANIFEST_NAMES = ("prompt.json", "metadata.jsonl", "train.jsonl")
# The column flags' defaults (diffusers' train_controlnet.py): a manifest folder takes only these.
DEFAULT_COLUMNS = {"image": "image", "conditioning_image": "conditioning_image", "caption": "text"}


@dataclass(frozen=True)
class _Layout:
    name: str
    source: str  # key of the control image
    target: str  # key of the target image
    prompt: str

    @property
    def keys(self) -> tuple[str, str, str]:
        return (self.source, self.target, self.prompt)

    def describe(self) -> str:
        return f"{self.name} layout needs keys {', '.join(map(repr, self.keys))}"


_CONTROLNET = _Layout("ControlNet", source="source", target="target", prompt="prompt")
_DIFFUSERS = _Layout("diffusers", source="conditioning_image", target="image", prompt="text")
_LAYOUTS = (_CONTROLNET, _DIFFUSERS)
_ACCEPTED_KEYS = f"the {_CONTROLNET.describe()}; the {_DIFFUSERS.describe()}"


@dataclass(frozen=True)
class PairRecord:
    """One usable manifest line, or row of a Hugging Face dataset.

    Args:
        index: position in the dataset.
        line: 1-based line number in the manifest; of a Hugging Face dataset, the row's index in it.
        source: control image path (None for a Hugging Face dataset: the images are in its rows).
        target: target image path (None for a Hugging Face dataset).
        prompt: text prompt.
    """

    index: int
    line: int
    source: Path | None
    target: Path | None
    prompt: str


@dataclass(frozen=True)
class DataProblem:
    """A skipped manifest line or image (or dataset row): where it is and what is wrong."""

    line: int  # the manifest line, or the dataset row
    file: Path | None
    message: str  # the full DatasetError message, naming manifest and line


@dataclass
class DataReport:
    """What reading a dataset found.

    Args:
        manifest: the manifest file read (a Hugging Face dataset: its id or path).
        layout: ``"ControlNet"`` or ``"diffusers"``; of a Hugging Face dataset, ``"save_to_disk"``,
            ``"parquet"`` or ``"hub"``.
        ok: usable records.
        skipped: records (manifest lines or image pairs) skipped, with ``on_error="skip"``.
        converted: images converted to RGB (only counted by ``check()``).
        problems: one entry per skipped record.
    """

    manifest: Path | str
    layout: str
    ok: int = 0
    skipped: int = 0
    converted: int = 0
    problems: list[DataProblem] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"{self.manifest} ({self.layout} layout): {self.ok} ok, {self.skipped} skipped, "
            f"{self.converted} images converted to RGB"
        ]
        lines += [f"  {problem.message}" for problem in self.problems]
        return "\n".join(lines)


class PairedDataset(Dataset):
    """A torch Dataset of (target, control, prompt) triples from a manifest or a Hugging Face dataset.

    Args:
        root: the dataset folder; image paths in the manifest are relative to it
            and may not leave it. Without a manifest: a ``save_to_disk`` folder, a ``.parquet``
            file or a folder of them, or a Hub dataset id (`hf_datasets.DatasetRows`).
        resolution: square output size in pixels, or None to keep native sizes.
        manifest: the manifest file (relative to ``root`` unless absolute); by
            default the first of ``MANIFEST_NAMES`` found in ``root``.
        on_error: ``"raise"`` to stop at the first bad manifest line (or, in
            ``check()``, bad image); ``"skip"`` to leave it out and record it in
            ``self.report``.
        convert_mode: convert non-RGB images (grey, palette, RGBA, 16-bit grey)
            to RGB instead of raising. Alpha is dropped, not composited.
        image_column, conditioning_image_column, caption_column: a Hugging Face
            dataset's columns of the target, the control and the caption (a manifest
            folder's keys are fixed: only the defaults are accepted there).
        max_train_samples: keep the first this many pairs (rows) only; None: all.

    Each item is a dict with ``pixel_values`` (target, float 3xHxW in [-1, 1]),
    ``conditioning_pixel_values`` (control, float 3xHxW in [0, 1]), ``prompt``
    and ``index``. Of a Hugging Face dataset, ``source`` holds its rows, ``root`` is
    its path (a Hub id: the id) and ``manifest`` the name it was given by, for messages.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int | None = 512,
        manifest: str | os.PathLike | None = None,
        on_error: str = "raise",
        convert_mode: bool = False,
        image_column: str = DEFAULT_COLUMNS["image"],
        conditioning_image_column: str = DEFAULT_COLUMNS["conditioning_image"],
        caption_column: str = DEFAULT_COLUMNS["caption"],
        max_train_samples: int | None = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
            raise ValueError(f"resolution must be a positive integer or None (native size), got {resolution!r}.")
        if max_train_samples is not None and (isinstance(max_train_samples, bool) or not isinstance(max_train_samples, int)
                                              or max_train_samples < 1):
            raise ValueError(f"max_train_samples must be a whole number >= 1 or None (all), got {max_train_samples!r}.")
        self.resolution = resolution
        self.on_error = on_error
        self.convert_mode = convert_mode
        self.columns = {"image": image_column, "conditioning_image": conditioning_image_column,
                        "caption": caption_column}
        self.max_train_samples = max_train_samples
        self._warned_conversion = False
        self._records: list[PairRecord] | None = None
        self._truncated = False  # whether max_train_samples left out pairs of the manifest
        self.source: DatasetRows | None = None  # the rows of a Hugging Face dataset, if that is the data
        given = Path(root)
        if manifest is None and not any((given / name).is_file() for name in MANIFEST_NAMES) and (
                local_source_kind(given) or (not given.exists() and is_hub_id(str(root)))):
            self._open_rows(str(root))
            return
        self.root = Path(os.path.normpath(Path(root).absolute()))  # 'runs/../data' is the folder 'data'
        if not self.root.is_dir():
            raise DatasetError(f"Dataset folder {self.root} does not exist or is not a folder. Expected a dataset "
                               "folder (prompt.json, or metadata.jsonl), a save_to_disk folder, a .parquet file or "
                               "folder of them, or a Hub dataset id such as fusing/fill50k.")
        # Plain strings for the per-line path checks: pathlib is slow on 50k lines.
        self._root_str = str(self.root)
        self._root_prefix = os.path.join(self._root_str, "")
        self._real_root_prefix = os.path.join(os.path.realpath(self._root_str), "")
        self._inside: dict[str, bool] = {}  # folder -> whether it resolves inside the dataset folder
        self.manifest = self._find_manifest(manifest)
        changed = [COLUMN_FLAGS[role] for role, column in self.columns.items() if column != DEFAULT_COLUMNS[role]]
        if changed:
            raise DatasetError(f"{' and '.join(changed)} name columns of a Hugging Face dataset (a Hub id, a "
                               f"save_to_disk folder, parquet files); {self.root} is a manifest folder "
                               f"({self.manifest.name}), whose keys are fixed: {_ACCEPTED_KEYS}.")
        # Rows are (line, source, target, prompt) with plain-string paths: building
        # 100k Path objects would double the construction time of a 50k dataset.
        self._rows, self.report = self._read_manifest()
        if max_train_samples is not None and len(self._rows) > max_train_samples:
            self._rows, self._truncated = self._rows[:max_train_samples], True
            self.report.ok = len(self._rows)
        if not self._rows:
            detail = f" All {self.report.skipped} lines were skipped:\n{self.report}" if self.report.skipped else ""
            raise DatasetError(f"no usable records: the dataset is empty.{detail}", self.manifest)

    def _open_rows(self, data: str) -> None:
        """Read a Hugging Face dataset's captions; its images are read per row, as a manifest's."""
        self.source = rows = DatasetRows(data, **{f"{role}_column": column for role, column in self.columns.items()},
                                         max_train_samples=self.max_train_samples)
        self.root = Path(os.path.normpath(Path(data).absolute())) if rows.folder else data
        self.manifest = rows.name  # names the data in messages
        self._rows, problems = [], []
        for row, caption in enumerate(rows.captions()):
            if isinstance(caption, DatasetError):
                if self.on_error == "raise":
                    raise caption
                problems.append(DataProblem(row, None, str(caption)))
                continue
            self._rows.append((row, None, None, caption))
        self.report = DataReport(manifest=rows.name, layout=rows.kind, ok=len(self._rows), skipped=len(problems),
                                 problems=problems)
        if not self._rows:
            detail = f" All {len(problems)} rows were skipped:\n{self.report}" if problems else ""
            raise DatasetError(f"{rows.name}: no usable rows: the dataset is empty.{detail}")

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what the pairs are: of a manifest folder, the manifest's bytes (and, when
        `max_train_samples` leaves pairs out, how many are kept); of a Hugging Face dataset, every
        kept row's target and control image bytes and caption, wherever the data lies."""
        if self.source is None:
            digest = hashlib.sha256(Path(self.manifest).read_bytes())
            if self._truncated:
                digest.update(f"|first {len(self._rows)}".encode())
            return digest.hexdigest()
        digest = hashlib.sha256(b"datasets rows|")
        images = self.source.digests()
        for row, _, _, caption in self._rows:
            digest.update(f"{images[row][0]}|{images[row][1]}|{len(caption)}|{caption}".encode())
        return digest.hexdigest()

    # -- manifest -----------------------------------------------------------

    def _find_manifest(self, manifest: str | os.PathLike | None) -> Path:
        if manifest is not None:
            path = self.root / manifest  # an absolute `manifest` replaces root
            if not path.is_file():
                raise DatasetError(f"Manifest {path} does not exist or is not a file.")
            return path
        found = [self.root / name for name in MANIFEST_NAMES if (self.root / name).is_file()]
        if not found:
            raise DatasetError(
                f"No manifest found in {self.root}: looked for prompt.json (ControlNet layout, keys "
                f"source/target/prompt), metadata.jsonl or train.jsonl (diffusers layout, keys "
                f"image/conditioning_image/text), and for a Hugging Face dataset (save_to_disk's state.json, or "
                f".parquet files). Pass manifest='...' (train --manifest FILE) to name another file."
            )
        if len(found) > 1:
            names = ", ".join(path.name for path in found)
            raise DatasetError(f"{self.root} holds several manifests ({names}); pass manifest='...' "
                               f"(train --manifest {found[0].name}) to choose one.")
        return found[0]

    @property
    def records(self) -> list[PairRecord]:
        """One ``PairRecord`` per usable manifest line, in manifest order (built on first use)."""
        if self._records is None:
            self._records = [self._record(index) for index in range(len(self._rows))]
        return self._records

    def _record(self, index: int) -> PairRecord:
        line, source, target, prompt = self._rows[index]
        return PairRecord(index, line, source and Path(source), target and Path(target), prompt)

    def _read_manifest(self) -> tuple[list[tuple[int, str, str, str]], DataReport]:
        # Decode line by line so that a bad byte is reported with its line number.
        raw_lines = self.manifest.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")
        preferred = _CONTROLNET if self.manifest.name == "prompt.json" else _DIFFUSERS
        layout: _Layout | None = None
        rows: list[tuple[int, str, str, str]] = []
        problems: list[DataProblem] = []
        for line_number, raw in enumerate(raw_lines, start=1):
            if not raw.strip():
                continue  # blank lines (e.g. the trailing newline) hold no record
            try:
                entry = _parse_line(raw)
                if layout is None:
                    layout = _detect_layout(entry, preferred)
                source, target, prompt = self._check_entry(entry, layout)
            except DatasetError as error:
                located = DatasetError(str(error), self.manifest, line_number, error.file)
                if self.on_error == "raise":
                    raise located from None
                problems.append(DataProblem(line_number, error.file, str(located)))
                continue
            rows.append((line_number, source, target, prompt))
        report = DataReport(
            manifest=self.manifest,
            layout=(layout or preferred).name,
            ok=len(rows),
            skipped=len(problems),
            problems=problems,
        )
        return rows, report

    def _check_entry(self, entry: dict, layout: _Layout) -> tuple[str, str, str]:
        missing = [key for key in layout.keys if key not in entry]
        if missing:
            raise DatasetError(
                f"missing key(s) {', '.join(map(repr, missing))} (found {sorted(entry)}). "
                f"Earlier lines use the {layout.name} layout; accepted: {_ACCEPTED_KEYS}."
            )
        prompt = entry[layout.prompt]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DatasetError(f"{layout.prompt!r} must be a non-empty text prompt, got {prompt!r}.")
        return self._resolve(entry[layout.source], layout.source), self._resolve(entry[layout.target], layout.target), prompt

    def _resolve(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{key!r} must be an image path relative to {self.root}, got {value!r}.")
        if "\0" in value:
            raise DatasetError(f"{key!r} path {value!r} holds a NUL byte; expected an image path relative to "
                               f"{self.root}.")
        path = os.path.normpath(os.path.join(self._root_str, value))
        if not path.startswith(self._root_prefix):
            raise DatasetError(
                f"{key!r} path {value!r} leaves the dataset folder {self.root}; "
                f"paths must be relative to it and stay inside it.",
                file=Path(path),
            )
        # The folders on the way must resolve inside the dataset folder too: a symlinked folder
        # (`root -> /`) would let a downloaded dataset read any image on the machine. The image
        # file itself may be a symlink (a common way to share data), as README says.
        folder = os.path.dirname(path)
        inside = self._inside.get(folder)
        if inside is None:
            inside = os.path.join(os.path.realpath(folder), "").startswith(self._real_root_prefix)
            self._inside[folder] = inside
        if not inside:
            raise DatasetError(
                f"{key!r} path {value!r} goes through a symlinked folder that leads out of the dataset folder "
                f"{self.root} (to {os.path.realpath(folder)}); image files may be symlinks, folders may not "
                "leave the dataset folder.",
                file=Path(path),
            )
        return path

    # -- images -------------------------------------------------------------

    def _open_rgb(self, record: PairRecord, path: Path | None, role: str) -> tuple[Image.Image, bool]:
        """Open an image as RGB; return it and whether it had to be converted. Of a Hugging Face
        dataset, `role` is the column's role ("image" or "conditioning_image") and `path` None."""
        if self.source is not None:
            where = self.source.where(record.line, role)
            return self._rgb(self.source.open_image(record.line, role), "the image",
                             lambda message: DatasetError(f"{where}: {message}"))
        try:
            problem = check_image_file(path)
            if problem:
                raise DatasetError(f"{role} image {path} {problem}.", self.manifest, record.line, path)
            with Image.open(path) as opened:
                opened.load()  # read now, so a truncated file fails here, with its name
                image = exif_upright(opened)
        except FileNotFoundError:
            raise DatasetError(f"{role} image {path} not found.", self.manifest, record.line, path) from None
        except (OSError, Image.DecompressionBombError) as error:
            raise DatasetError(
                f"cannot read {role} image {path}: {error}. Expected an image file Pillow can open (PNG, JPEG, ...).",
                self.manifest,
                record.line,
                path,
            ) from None
        return self._rgb(image, f"{role} image {path}",
                         lambda message: DatasetError(message, self.manifest, record.line, path))

    def _rgb(self, image: Image.Image, named: str, error) -> tuple[Image.Image, bool]:
        """`image` as RGB and whether it was converted; `error(message)` is raised when it cannot be."""
        if image.mode == "RGB":
            return image, False
        if not self.convert_mode or image.mode in ("I", "F"):
            hint = (
                "its value range is unknown; convert it to 8-bit RGB yourself"
                if image.mode in ("I", "F")
                else "convert it, or pass convert_mode=True (train --convert-mode true) to convert such images to "
                "RGB on load (alpha is dropped)"
            )
            raise error(f"{named} has mode {image.mode!r}; expected 'RGB': {hint}.")
        if image.mode.startswith("I;16"):
            # Pillow's own conversion clips 16-bit values at 255; keep the top byte instead.
            image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
        return image.convert("RGB"), True

    def _open_pair(self, record: PairRecord) -> tuple[Image.Image, Image.Image, int]:
        if self.source is not None:
            source, source_converted = self._open_rgb(record, None, "conditioning_image")
            target, target_converted = self._open_rgb(record, None, "image")
            if source.size != target.size:
                raise DatasetError(
                    f"{self.source.where(record.line, 'conditioning_image')}: the control image is "
                    f"{source.size[0]}x{source.size[1]} but the target ({self.source.columns['image']!r}) is "
                    f"{target.size[0]}x{target.size[1]}; a pair must have the same size.")
            return source, target, source_converted + target_converted
        source, source_converted = self._open_rgb(record, record.source, "source (control)")
        target, target_converted = self._open_rgb(record, record.target, "target")
        if source.size != target.size:
            raise DatasetError(
                f"source {record.source} is {source.size[0]}x{source.size[1]} but target {record.target} is "
                f"{target.size[0]}x{target.size[1]}; a pair must have the same size.",
                self.manifest,
                record.line,
                record.source,
            )
        return source, target, source_converted + target_converted

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not -len(self._rows) <= index < len(self._rows):
            raise IndexError(f"index {index} out of range for a dataset of {len(self._rows)} pairs")
        record = self._record(index % len(self._rows))
        source, target, converted = self._open_pair(record)
        if converted and not self._warned_conversion:
            self._warned_conversion = True
            warnings.warn(
                f"{self.manifest}, {'row' if self.source is not None else 'line'} {record.line}: converted non-RGB image(s) to RGB (convert_mode=True). "
                f"Further conversions are not warned about; dataset.check() counts them all.",
                stacklevel=2,
            )
        if self.resolution is not None:
            source = _resize_and_crop(source, self.resolution)
            target = _resize_and_crop(target, self.resolution)
        return {
            "pixel_values": _to_tensor(target) * 2.0 - 1.0,
            "conditioning_pixel_values": _to_tensor(source),
            "prompt": record.prompt,
            "index": record.index,
        }

    def control_image(self, index: int) -> torch.Tensor:
        """The control image of one pair alone, 3xHxW in [0, 1], transformed as in ``__getitem__``.

        Training with cached latents needs only this: the target is not read.
        """
        record = self._record(int(index))
        source, _ = self._open_rgb(record, record.source, "source (control)" if self.source is None else
                                   "conditioning_image")
        if self.resolution is not None:
            source = _resize_and_crop(source, self.resolution)
        return _to_tensor(source)

    def check(self, progress: bool = False) -> DataReport:
        """Open every image and report what was found; also stored as ``self.report``.

        With ``on_error="raise"`` the first bad image raises a ``DatasetError``.
        With ``on_error="skip"`` bad pairs are listed in the report and removed
        from the dataset, so a training run will not meet them.

        Args:
            progress: show a tqdm progress bar.
        """
        report = replace(self.report, ok=0, converted=0, problems=list(self.report.problems))
        kept: list[tuple[int, str, str, str]] = []
        for index in tqdm(range(len(self._rows)), desc="Checking images", disable=not progress):
            record = self._record(index)
            try:
                _, _, converted = self._open_pair(record)
            except DatasetError as error:
                if self.on_error == "raise":
                    raise
                report.problems.append(DataProblem(record.line, error.file, str(error)))
                report.skipped += 1
                continue
            report.converted += converted
            kept.append(self._rows[index])
        if not kept:
            raise DatasetError(f"no usable records: every image pair failed the check.\n{report}", self.manifest)
        self._rows, self._records = kept, None
        report.ok = len(kept)
        self.report = report
        return report

    def __repr__(self) -> str:
        if self.source is not None:
            return (f"PairedDataset({self.source.name!r}, source={self.source.kind!r}, columns={self.source.columns}, "
                    f"records={len(self)}, resolution={self.resolution})")
        return (
            f"PairedDataset({str(self.root)!r}, manifest={self.manifest.name!r}, layout={self.report.layout!r}, "
            f"records={len(self)}, resolution={self.resolution})"
        )


def _parse_line(raw: bytes) -> dict:
    try:
        entry = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DatasetError(f"not UTF-8 text ({error}).") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"not valid JSON ({error}); each line must be one JSON object.") from None
    if not isinstance(entry, dict):
        raise DatasetError(f"expected a JSON object, got {type(entry).__name__}: accepted: {_ACCEPTED_KEYS}.")
    return entry


def _detect_layout(entry: dict, preferred: _Layout) -> _Layout:
    """The layout whose keys the first good line has, preferring the file name's."""
    for layout in sorted(_LAYOUTS, key=lambda layout: layout is not preferred):
        if all(key in entry for key in layout.keys):
            return layout
    raise DatasetError(f"cannot tell the layout from keys {sorted(entry)}; accepted: {_ACCEPTED_KEYS}.")


def _resize_and_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` (bilinear), then centre-crop a square.

    Rounds like torchvision's ``Resize(resolution)`` + ``CenterCrop(resolution)``,
    the transforms of diffusers' ``train_controlnet.py``.
    """
    width, height = image.size
    if min(width, height) != resolution:
        if width <= height:
            width, height = resolution, int(resolution * height / width)
        else:
            width, height = int(resolution * width / height), resolution
        image = image.resize((width, height), Image.BILINEAR)
    if (width, height) != (resolution, resolution):
        left = int(round((width - resolution) / 2.0))
        top = int(round((height - resolution) / 2.0))
        image = image.crop((left, top, left + resolution, top + resolution))
    return image


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float 3xHxW tensor in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
