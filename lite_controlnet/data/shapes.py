"""The shapes world: scenes of 1 to 4 flat objects in named colours, a harder Fill50k.

A scene is a background of one CSS colour and 1 to 4 objects (circle, square, triangle), each
of another colour, of varied size, position and rotation, drawn back to front (later objects
cover earlier ones), with a prompt naming them in that order::

    "a red square and a teal circle on a beige background"

Every colour of a scene is at least `MIN_COLOUR_DISTANCE` from every other, so each object can
be told apart by its colour (the object-level scores match objects by the prompt's colours).
Objects lie inside the image (its border rows are background), and each keeps at least
`MIN_VISIBLE_SHARE` of its area visible in one 4-connected piece, so the number of objects in the
image is the number in the prompt.

As in `fill50k.py`, scene ``i`` draws its own random numbers from ``SeedSequence([seed, i])``:
it is the same whatever the number of scenes or workers. ``conditions.shapes_dataset.make_shapes``
writes a dataset in the Hugging Face layout with the control images of one condition.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .colours import COLOURS, NamedColour, colour_by_words

__all__ = [
    "DEFAULT_SIZE",
    "MIN_COLOUR_DISTANCE",
    "MAX_OBJECTS",
    "MIN_VISIBLE_SHARE",
    "SHAPE_KINDS",
    "ShapeObject",
    "ShapesScene",
    "make_shapes",
    "parse_shapes_prompt",
    "shapes_scene",
]

SHAPE_KINDS = ("circle", "square", "triangle")
DEFAULT_SIZE = 128  # where four objects are still told apart
# Euclidean distance in 8-bit RGB between any two colours of a scene (Fill50k uses 80 between
# its two): 100 keeps the edge between any two colours above Canny's default high threshold.
MIN_COLOUR_DISTANCE = 100.0
# The equal-area radius of an object (sqrt(area / pi)) as a fraction of the image width: at
# 128 px, 9 to 22 px; four of the largest still fit with overlaps.
RADIUS_FRACTION = (0.07, 0.17)
MIN_VISIBLE_SHARE = 0.6
_MIN_SIZE = 32
MAX_OBJECTS = 4
_PLACEMENT_TRIES = 100
_PNG_COMPRESS_LEVEL = 1  # flat images: about as small as level 6, far faster (see fill50k.py)
_CHUNK = 64

_RGB = np.array([colour.rgb for colour in COLOURS], dtype=np.float64)
# circumradius / equal-area radius: a square of circumradius R has area 2 R^2, an equilateral
# triangle 3 sqrt(3) / 4 R^2; both equal pi r^2 at these ratios
_CIRCUMRADIUS = {"circle": 1.0, "square": math.sqrt(math.pi / 2),
                 "triangle": math.sqrt(4 * math.pi / (3 * math.sqrt(3)))}
_CORNERS = {"square": 4, "triangle": 3}


@dataclass(frozen=True)
class ShapeObject:
    """One flat object of a scene.

    Args:
        kind: "circle", "square" or "triangle".
        colour: its fill colour.
        centre: (x, y) in pixels.
        radius: equal-area radius in pixels (its area is pi radius^2 whatever its kind).
        angle: rotation in degrees (ignored for circles).
    """

    kind: str
    colour: NamedColour
    centre: tuple[float, float]
    radius: float
    angle: float = 0.0

    @property
    def words(self) -> str:
        """How the prompt names it: "a red square", "an orange circle"."""
        article = "an" if self.colour.words[0] in "aeiou" else "a"
        return f"{article} {self.colour.words} {self.kind}"

    @property
    def extent(self) -> float:
        """Distance from the centre to the farthest point of the object."""
        return self.radius * _CIRCUMRADIUS[self.kind]

    def corners(self) -> list[tuple[float, float]]:
        """The polygon's corners in pixels (a square or a triangle)."""
        x, y = self.centre
        count = _CORNERS[self.kind]
        return [(x + self.extent * math.cos(math.radians(self.angle + 360 * k / count)),
                 y + self.extent * math.sin(math.radians(self.angle + 360 * k / count))) for k in range(count)]

    def draw(self, draw: ImageDraw.ImageDraw, fill: Any, outline: Any = None, width: int = 1) -> None:
        """Draw the object with PIL (no anti-aliasing: flat colours, exact masks)."""
        if self.kind == "circle":
            x, y = self.centre
            box = (x - self.radius, y - self.radius, x + self.radius, y + self.radius)
            draw.ellipse(box, fill=fill, outline=outline, width=width)
        else:
            draw.polygon(self.corners(), fill=fill, outline=outline, width=width)

    def mask(self, size: int) -> np.ndarray:
        """The (size, size) boolean mask of the whole object, hidden parts included."""
        image = Image.new("L", (size, size), 0)
        self.draw(ImageDraw.Draw(image), fill=1)
        return np.asarray(image, dtype=bool)


@dataclass(frozen=True)
class ShapesScene:
    """A scene: its objects in draw order (back to front) on a background.

    Args:
        index: scene number.
        seed: dataset seed (conditions that draw random strokes seed them from both).
        size: image width and height in pixels.
        background: background colour.
        objects: the objects, back to front.
    """

    index: int
    seed: int
    size: int
    background: NamedColour
    objects: tuple[ShapeObject, ...]

    @property
    def prompt(self) -> str:
        """"a red square, a teal circle and a blue triangle on a beige background"."""
        names = [obj.words for obj in self.objects]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        article = "an" if self.background.words[0] in "aeiou" else "a"
        return f"{listed} on {article} {self.background.words} background"

    @property
    def line_width(self) -> int:
        """Width of outlines, as Fill50k's: 1 px per 128 px."""
        return max(1, round(self.size / 128))

    def render(self) -> Image.Image:
        """The target image: the objects in their colours, back to front, on the background."""
        image = Image.new("RGB", (self.size, self.size), self.background.rgb)
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            obj.draw(draw, fill=obj.colour.rgb)
        return image

    def labels(self) -> np.ndarray:
        """(size, size) uint8 map: 0 for the background, k + 1 where object k is in front."""
        image = Image.new("L", (self.size, self.size), 0)
        draw = ImageDraw.Draw(image)
        for k, obj in enumerate(self.objects):
            obj.draw(draw, fill=k + 1)
        return np.asarray(image).copy()


def parse_shapes_prompt(prompt: str) -> tuple[list[tuple[NamedColour, str]], NamedColour]:
    """The (colour, kind) of each object, in prompt order, and the background colour of a
    shapes prompt such as "a red square and an orange circle on a beige background".

    Raises:
        ValueError: if the prompt does not have that form or names an unknown colour.
    """
    form = ("expected '<a|an> <colour> <circle|square|triangle>, ... and <a|an> <colour> <kind> on "
            "<a|an> <colour> background', e.g. 'a red square and a teal circle on a beige background'")
    match = re.fullmatch(r"(?P<objects>.+) on an? (?P<background>[a-z ]+) background", prompt)
    if match is None:
        raise ValueError(f"Cannot parse shapes prompt {prompt!r}: {form}.")
    objects = []
    for part in re.split(r", | and ", match["objects"]):
        found = re.fullmatch(rf"an? (?P<colour>[a-z ]+) (?P<kind>{'|'.join(SHAPE_KINDS)})", part)
        if found is None:
            raise ValueError(f"Cannot parse shapes prompt {prompt!r} at {part!r}: {form}.")
        try:
            objects.append((colour_by_words(found["colour"]), found["kind"]))
        except ValueError as error:
            raise ValueError(f"Cannot parse shapes prompt {prompt!r}: {error}") from None
    try:
        background = colour_by_words(match["background"])
    except ValueError as error:
        raise ValueError(f"Cannot parse shapes prompt {prompt!r}: {error}") from None
    return objects, background


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum \
            or (maximum is not None and value > maximum):
        accepted = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"{name} must be an integer {accepted}, got {value!r}.")
    return int(value)


def _check_objects(objects: object) -> tuple[int, int]:
    if isinstance(objects, (int, np.integer)) and not isinstance(objects, bool):
        objects = (objects, objects)
    if not isinstance(objects, (tuple, list)) or len(objects) != 2:
        raise ValueError(f"objects must be a count or a (fewest, most) pair from 1 to {MAX_OBJECTS}, got {objects!r}.")
    low = _check_int("the fewest objects", objects[0], 1, MAX_OBJECTS)
    high = _check_int("the most objects", objects[1], low, MAX_OBJECTS)
    return low, high


def _one_piece(mask: np.ndarray) -> bool:
    """Whether the True pixels of `mask` form one 4-connected region.

    Joins each row's runs of True pixels with the overlapping runs of the row above
    (union-find over runs): a few runs per row, so far faster than a flood fill per pixel.
    """
    filled = np.flatnonzero(mask.any(axis=1))
    if len(filled) == 0:
        return False
    steps = np.diff(np.pad(mask[filled[0] : filled[-1] + 1], ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, begins = np.nonzero(steps == 1)  # row-major order: the k-th start and stop are one run
    ends = np.nonzero(steps == -1)[1]
    parent = list(range(len(rows)))

    def root(run: int) -> int:
        while parent[run] != run:
            parent[run] = parent[parent[run]]
            run = parent[run]
        return run

    above: list[tuple[int, int, int]] = []  # (begin, end, run) of the row above
    current: list[tuple[int, int, int]] = []
    row_now = -2
    for run, (row, begin, end) in enumerate(zip(rows.tolist(), begins.tolist(), ends.tolist())):
        if row != row_now:
            above, current, row_now = (current if row == row_now + 1 else []), [], row
        for other_begin, other_end, other in above:
            if other_begin < end and begin < other_end:
                parent[root(other)] = root(run)
        current.append((begin, end, run))
    return len({root(run) for run in range(len(parent))}) == 1


def _pick_colours(rng: np.random.Generator, count: int) -> list[int]:
    """`count` colour indices, each at least MIN_COLOUR_DISTANCE from all the others (rejection sampling)."""
    chosen: list[int] = []
    while len(chosen) < count:
        candidate = int(rng.integers(len(COLOURS)))
        if all(np.linalg.norm(_RGB[candidate] - _RGB[other]) >= MIN_COLOUR_DISTANCE for other in chosen):
            chosen.append(candidate)
    return chosen


def shapes_scene(index: int, size: int = DEFAULT_SIZE, objects: int | tuple[int, int] = (1, 4),
                 seed: int = 0) -> ShapesScene:
    """Draw scene ``index`` of dataset ``seed``.

    Args:
        index: scene number (>= 0).
        size: image width and height in pixels (>= 32).
        objects: the number of objects, or the (fewest, most) range it is drawn from uniformly (1 to 4).
        seed: dataset seed (>= 0).
    """
    index = _check_int("index", index, 0)
    size = _check_int("size", size, _MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    low, high = _check_objects(objects)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    count = int(rng.integers(low, high + 1))
    background, *colours = _pick_colours(rng, count + 1)
    while True:  # place the objects one by one; start again if one finds no place
        placed: list[ShapeObject] = []
        masks: list[np.ndarray] = []
        for colour in colours:
            for _ in range(_PLACEMENT_TRIES):
                kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
                radius = float(rng.uniform(*RADIUS_FRACTION)) * size
                angle = float(rng.uniform(0, 360)) if kind != "circle" else 0.0
                margin = radius * _CIRCUMRADIUS[kind] + 1  # a pixel of background all round
                centre = (float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin)))
                candidate = ShapeObject(kind, COLOURS[colour], centre, radius, angle)
                mask = candidate.mask(size)
                if _still_visible(masks, mask):
                    placed.append(candidate)
                    masks.append(mask)
                    break
            else:
                break
        if len(placed) == count:
            return ShapesScene(index, seed, size, COLOURS[background], tuple(placed))


def _still_visible(masks: list[np.ndarray], new: np.ndarray) -> bool:
    """Whether `new` is one piece and every earlier object keeps MIN_VISIBLE_SHARE of its area,
    in one piece, under `new` and the objects drawn after it."""
    for k, mask in enumerate(masks):
        if not (mask & new).any():
            continue
        covered = new.copy()
        for later in masks[k + 1 :]:
            covered |= later
        visible = mask & ~covered
        if visible.sum() < MIN_VISIBLE_SHARE * mask.sum() or not _one_piece(visible):
            return False
    return _one_piece(new)  # a triangle's sharp tip can leave a pixel joined only by a corner
