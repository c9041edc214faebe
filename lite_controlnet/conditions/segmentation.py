"""The segmentation condition: each object's visible mask in the colour of its class.

As a semantic segmentation map (ADE20K's, which ControlNet's seg model reads), the colour
stands for the class, here the kind of shape (`CLASS_COLOURS`), on a black background; the
objects' own colours are left to the prompt. Score: as ControlNet++ scores segmentation
control, the mIoU of the segmentation re-detected in the generated image against the control,
over the classes present in either. Re-detection matches objects by the prompt's colours: each
pixel goes to the nearest of the prompt's colours (`objects.colour_regions`), and an object's
region takes the class the prompt gives it ("a red square": red pixels are square). Without a
prompt there is nothing to match by, and the score is None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..data.shapes import SHAPE_KINDS, parse_shapes_prompt
from .base import Condition, same_size
from .objects import colour_regions

__all__ = ["CLASS_COLOURS", "SegmentationCondition"]

# Far apart in RGB and from black (colours of Trubetskoy's "20 distinct colours").
CLASS_COLOURS = {"circle": (230, 25, 75), "square": (60, 180, 75), "triangle": (0, 130, 200)}
_BACKGROUND = (0, 0, 0)


def _classes(control: np.ndarray) -> np.ndarray:
    """(H, W) class map of a control: 0 background, 1 + the index of the kind in SHAPE_KINDS."""
    palette = np.array([_BACKGROUND] + [CLASS_COLOURS[kind] for kind in SHAPE_KINDS], dtype=np.float64) / 255.0
    return np.linalg.norm(control[:, :, None, :] - palette[None, None], axis=3).argmin(axis=2)


class SegmentationCondition(Condition):
    """Objects' masks in their class colours (circle, square, triangle) on black."""

    name = "segmentation"
    metric = "miou"

    def from_scene(self, scene: Any, target: Image.Image | None = None) -> Image.Image:
        control = Image.new("RGB", (scene.size, scene.size), _BACKGROUND)
        draw = ImageDraw.Draw(control)
        for obj in scene.objects:
            obj.draw(draw, fill=CLASS_COLOURS[obj.kind])
        return control

    def score(self, image: Any, control: Any, prompt: str | None = None) -> dict[str, Any]:
        rgb, control_rgb = same_size(image, control)
        if prompt is None:
            return {"miou": None}
        objects, _ = parse_shapes_prompt(prompt)
        regions = colour_regions(rgb, prompt)
        kinds = np.array([0] + [1 + SHAPE_KINDS.index(kind) for _, kind in objects])
        found = kinds[regions + 1]  # region -1 (background) -> class 0
        truth = _classes(control_rgb)
        ious = []
        for label in range(1, len(SHAPE_KINDS) + 1):
            union = ((found == label) | (truth == label)).sum()
            if union:
                ious.append(float(((found == label) & (truth == label)).sum() / union))
        return {"miou": float(np.mean(ious)) if ious else None}
