"""A synthetic Fill50k: the toy dataset of the ControlNet tutorial, rebuilt.

The original (lllyasviel/ControlNet, ``docs/train.md``) pairs a white circle
outline on black (the control, ``source/``) with a filled circle of one named
colour on a background of another (the target, ``target/``), and a prompt
naming both colours, e.g. "pale golden rod circle with old lace background".
This module writes the same layout, deterministically from a seed, so the
dataset needs no download and every sample can be re-rendered in memory
(:func:`render_fill50k_sample`) by tests and metrics.

Each sample draws its own random numbers from ``SeedSequence([seed, index])``,
so sample ``i`` is the same whatever the number of samples or workers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_write
from .chunks import write_chunks
from .colours import COLOURS, NamedColour

__all__ = [
    "Fill50kSpec",
    "fill50k_spec",
    "render_fill50k_sample",
    "make_fill50k",
    "MIN_COLOUR_DISTANCE",
    "RADIUS_FRACTION",
]

# Euclidean distance in 8-bit RGB below which two colours count as "too
# similar": e.g. snow on white (distance 7) would make the disk invisible.
# 80 still leaves every colour at least 99 of the 147 as partners.
MIN_COLOUR_DISTANCE = 80.0
# Radius as a fraction of the image width; centres lie anywhere in the image,
# so large circles are often clipped by the border, as in the original.
RADIUS_FRACTION = (0.05, 0.45)
# zlib level 1: flat images compress almost as well as at level 6 (about 6 kB
# for 512 px), at well under half the time, which is what makes 50k fast.
_PNG_COMPRESS_LEVEL = 1
_MIN_SIZE = 16
_CHUNK = 64  # samples per worker task: big enough to amortise the IPC

_RGB = np.array([colour.rgb for colour in COLOURS], dtype=np.float64)


@dataclass(frozen=True)
class Fill50kSpec:
    """Everything that defines one sample, before it is drawn.

    Args:
        index: sample number.
        size: image width and height in pixels.
        circle: colour of the disk in the target.
        background: colour of the target's background.
        centre: (x, y) of the circle centre in pixels, inside the image.
        radius: circle radius in pixels.
        line_width: width of the outline in the source, in pixels.
    """

    index: int
    size: int
    circle: NamedColour
    background: NamedColour
    centre: tuple[float, float]
    radius: float
    line_width: int

    @property
    def prompt(self) -> str:
        """The prompt in the original Fill50k wording."""
        return f"{self.circle.words} circle with {self.background.words} background"

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """The circle's bounding box as PIL's ``ImageDraw.ellipse`` takes it."""
        x, y = self.centre
        return (x - self.radius, y - self.radius, x + self.radius, y + self.radius)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def fill50k_spec(index: int, size: int = 512, seed: int = 0) -> Fill50kSpec:
    """Draw the colours and circle of sample ``index`` for ``seed``.

    Args:
        index: sample number (>= 0).
        size: image width and height in pixels (>= 16).
        seed: dataset seed (>= 0).
    """
    index = _check_int("index", index, 0)
    size = _check_int("size", size, _MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))

    circle = int(rng.integers(len(COLOURS)))
    # Rejection sampling: uniform over all pairs that are far enough apart.
    while True:
        background = int(rng.integers(len(COLOURS)))
        if np.linalg.norm(_RGB[circle] - _RGB[background]) >= MIN_COLOUR_DISTANCE:
            break
    centre = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
    radius = float(rng.uniform(*RADIUS_FRACTION)) * size
    return Fill50kSpec(
        index=index,
        size=size,
        circle=COLOURS[circle],
        background=COLOURS[background],
        centre=centre,
        radius=radius,
        line_width=max(1, round(size / 128)),
    )


def render_fill50k_sample(index: int, size: int = 512, seed: int = 0) -> tuple[Image.Image, Image.Image, str]:
    """Render sample ``index`` in memory, exactly as :func:`make_fill50k` writes it.

    Args:
        index: sample number (>= 0).
        size: image width and height in pixels (>= 16).
        seed: dataset seed (>= 0).

    Returns:
        ``(source, target, prompt)``: the RGB outline image (control), the RGB
        filled-disk image, and the prompt naming both colours.
    """
    spec = fill50k_spec(index, size, seed)
    source = Image.new("RGB", (size, size), (0, 0, 0))
    ImageDraw.Draw(source).ellipse(spec.bbox, outline=(255, 255, 255), width=spec.line_width)
    target = Image.new("RGB", (size, size), spec.background.rgb)
    ImageDraw.Draw(target).ellipse(spec.bbox, fill=spec.circle.rgb)
    return source, target, spec.prompt


def _write_chunk(task: tuple[str, int, int, int, int]) -> tuple[int, list[str]]:
    """Worker: render and save samples ``start..stop-1``; return their prompts."""
    out_dir, start, stop, size, seed = task
    prompts = []
    for index in range(start, stop):
        source, target, prompt = render_fill50k_sample(index, size, seed)
        source.save(os.path.join(out_dir, "source", f"{index}.png"), compress_level=_PNG_COMPRESS_LEVEL)
        target.save(os.path.join(out_dir, "target", f"{index}.png"), compress_level=_PNG_COMPRESS_LEVEL)
        prompts.append(prompt)
    return start, prompts


def make_fill50k(
    out_dir: str | os.PathLike,
    num: int = 50_000,
    size: int = 512,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic Fill50k in the original ControlNet layout.

    Writes ``out_dir/source/{i}.png`` (white circle outline on black),
    ``out_dir/target/{i}.png`` (coloured disk on a coloured background) and
    ``out_dir/prompt.json``, one JSON object per line in index order::

        {"source": "source/0.png", "target": "target/0.png", "prompt": "..."}

    The output depends only on ``num``, ``size`` and ``seed``, not on ``workers``.

    Args:
        out_dir: folder to write to; created if missing.
        num: number of samples.
        size: image width and height in pixels (>= 16).
        seed: dataset seed (>= 0).
        workers: processes to render with; defaults to ``os.cpu_count()``.
        progress: show a tqdm progress bar.
        overwrite: allow writing into a folder that already holds a
            ``prompt.json``. Images from an earlier, larger run that this run
            does not rewrite are left in place but are not in the new manifest.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileExistsError: if ``out_dir/prompt.json`` exists and ``overwrite`` is False.
        ValueError: for a non-positive ``num``/``workers`` or a too small ``size``.
    """
    num = _check_int("num", num, 1)
    size = _check_int("size", size, _MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = _check_int("workers", workers, 1)

    out_dir = Path(out_dir)
    manifest = out_dir / "prompt.json"
    if manifest.exists() and not overwrite:
        raise FileExistsError(
            f"{manifest} already exists: {out_dir} looks like an existing dataset. "
            f"Choose an empty folder, or pass overwrite=True to replace it."
        )
    (out_dir / "source").mkdir(parents=True, exist_ok=True)
    (out_dir / "target").mkdir(parents=True, exist_ok=True)
    # Remove the old manifest first, so that an interrupted run never leaves a
    # manifest that describes a mix of old and new images.
    manifest.unlink(missing_ok=True)

    tasks = [(str(out_dir), start, min(start + _CHUNK, num), size, seed) for start in range(0, num, _CHUNK)]
    prompts = write_chunks(_write_chunk, tasks, num, workers, "Fill50k", "sample", progress)

    # prompt.json last, whole or not at all: a folder with it holds every pair
    with atomic_write(manifest) as partial, open(partial, "w", encoding="utf-8") as file:
        for index, prompt in enumerate(prompts):
            record = {"source": f"source/{index}.png", "target": f"target/{index}.png", "prompt": prompt}
            file.write(json.dumps(record) + "\n")
    return out_dir
