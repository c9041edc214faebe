"""The scribble condition: thick, jittered, partial strokes along the objects' visible edges.

A stand-in for a hand drawing: each object's outline is traced as a stroke that covers only a
part of it (`COVERED_SHARE`), wanders off the true edge by a smooth random offset (up to
`JITTER_FRACTION` of the image width) and is drawn `STROKE_FRACTION` of the width thick, white
on black, leaving out what later objects hide. The strokes' randomness comes from the scene's
(seed, index), in a stream of its own, so a scene always gets the same scribble.

Score: ``scribble_recall``, the share of stroke pixels that lie within the stroke's own
half-width plus the jitter of an edge re-detected in the generated image (`metrics.detect_edges`).
Recall and not F1 because a scribble is partial by design: the image rightly has edges where
the scribble has none (the rest of each outline), which precision would count against it.
``scribble_precision`` (edges near a stroke) is reported too; alone, recall would also reward
an image with edges everywhere, which the two read together show.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..evaluation.metrics import detect_edges, edge_f1
from .base import Condition, same_size

__all__ = ["ScribbleCondition"]

STROKE_FRACTION = 1 / 40  # stroke width / image width: 3 px at 128 px
JITTER_FRACTION = 1 / 64  # largest offset from the true edge / image width: 2 px at 128 px
COVERED_SHARE = (0.5, 0.9)  # share of each outline a stroke covers
_POINTS = 96  # points along each outline
_KNOTS = 8  # random offsets per outline, smoothly interpolated between
_STREAM = 1  # SeedSequence([seed, index, _STREAM]): the strokes' own random numbers


def _outline_points(obj: Any) -> np.ndarray:
    """(_POINTS + 1, 2) points along the object's outline, the first repeated at the end."""
    if obj.kind == "circle":
        angles = np.linspace(0, 2 * math.pi, _POINTS + 1)
        return np.stack([obj.centre[0] + obj.radius * np.cos(angles), obj.centre[1] + obj.radius * np.sin(angles)], 1)
    corners = np.array(obj.corners() + obj.corners()[:1])
    t = np.linspace(0, len(corners) - 1, _POINTS + 1)
    k = np.minimum(t.astype(int), len(corners) - 2)
    return corners[k] + (t - k)[:, None] * (corners[k + 1] - corners[k])


class ScribbleCondition(Condition):
    """Partial, jittered, thick strokes along each object's visible outline."""

    name = "scribble"
    metric = "scribble_recall"

    def from_scene(self, scene: Any, target: Image.Image | None = None) -> Image.Image:
        rng = np.random.default_rng(np.random.SeedSequence([scene.seed, scene.index, _STREAM]))
        size = scene.size
        width = max(2, round(size * STROKE_FRACTION))
        labels = scene.labels()
        control = Image.new("RGB", (size, size), (0, 0, 0))
        draw = ImageDraw.Draw(control)
        for k, obj in enumerate(scene.objects):
            points = _outline_points(obj)
            # 1. a smooth offset along the outline, towards or away from the centre
            knots = rng.uniform(-1, 1, _KNOTS + 1) * JITTER_FRACTION * size
            knots[-1] = knots[0]
            offset = np.interp(np.linspace(0, _KNOTS, len(points)), np.arange(_KNOTS + 1), knots)
            direction = points - np.array(obj.centre)
            direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-9)
            jittered = points + offset[:, None] * direction
            # 2. one arc of the outline, starting anywhere
            covered = int(round(rng.uniform(*COVERED_SHARE) * _POINTS))
            start = int(rng.integers(_POINTS))
            arc = [(start + i) % _POINTS for i in range(covered + 1)]
            # 3. only where the object is in front (tested just inside its edge)
            inside = points - 2.0 * direction
            ix = np.clip(inside[:, 0].astype(int), 0, size - 1)
            iy = np.clip(inside[:, 1].astype(int), 0, size - 1)
            visible = labels[iy, ix] == k + 1
            piece: list[tuple[float, float]] = []
            for i in arc + [None]:
                if i is not None and visible[i]:
                    piece.append((float(jittered[i, 0]), float(jittered[i, 1])))
                    continue
                if len(piece) >= 2:
                    draw.line(piece, fill=(255, 255, 255), width=width, joint="curve")
                piece = []
        return control

    def score(self, image: Any, control: Any, prompt: str | None = None) -> dict[str, Any]:
        rgb, control_rgb = same_size(image, control)
        strokes = control_rgb.mean(axis=2) >= 0.5
        size = max(rgb.shape[:2])
        tolerance = max(1, math.ceil(size * (STROKE_FRACTION / 2 + JITTER_FRACTION)))
        precision, recall, _ = edge_f1(detect_edges(rgb), strokes, tolerance)
        return {"scribble_recall": recall, "scribble_precision": precision}
