"""The outline condition: each object's outline, white on black, as Fill50k's control is.

Drawn from a scene back to front, each object with its outline and a black fill, so a later
object hides the outline of what it covers: the control shows the edges the target shows. A
one-circle scene's outline is Fill50k's source image, at the same line width.

Score: for a Fill50k pair (a prompt "<colour> circle with <colour> background") it is the disk
IoU of `metrics.fill50k_scores`, which this returns whole. For a shapes scene it is the
foreground IoU: the regions the outlines enclose against the image's pixels that are not of
the background colour (the nearest of the prompt's colours, or, without a prompt, farther than
`metrics.MIN_COLOUR_CONTRAST` from the image border's median colour). For one disk wholly inside
the image that is the disk IoU again; a Fill50k prompt chooses Fill50k's own score, whose circle
fit also handles the circles the border clips. Per-object IoU, counts and colours are
`object_scores`'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..data.colours import parse_fill50k_prompt
from ..evaluation.metrics import MIN_COLOUR_CONTRAST, connected_components, fill50k_scores
from .base import Condition, same_size
from .objects import colour_regions

__all__ = ["OutlineCondition", "enclosed_regions", "foreground"]


def enclosed_regions(control: np.ndarray) -> np.ndarray:
    """(H, W) boolean mask of what a control's outlines enclose (the outlines included): every
    pixel not in a dark region that touches the image border."""
    gray = control.mean(axis=2)
    outline = gray >= 0.5 * max(gray.max(), 1e-6)
    labels, _ = connected_components(~outline)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return ~np.isin(labels, border[border > 0])


def foreground(image: np.ndarray, prompt: str | None) -> np.ndarray:
    """(H, W) boolean mask of the pixels that are not background: of an object's colour in the
    prompt (nearest colour), or without a prompt, away from the border's median colour."""
    if prompt is not None:
        return colour_regions(image, prompt) >= 0
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.linalg.norm(image - np.median(border, axis=0), axis=2) >= MIN_COLOUR_CONTRAST


def _outline(obj: Any, inside: np.ndarray, size: int, width: int) -> np.ndarray:
    """The object's outline, `width` px wide, inside its mask `inside`.

    A circle's is PIL's ellipse outline, as Fill50k draws it (it lies inside the disk). PIL
    draws a polygon's outline partly outside its fill, so a polygon's is its mask's inner
    edge instead: the pixels of the mask within `width` steps of a pixel outside it, which
    close the outline (no 4-connected path crosses it).
    """
    if obj.kind == "circle":
        drawn = Image.new("L", (size, size), 0)
        obj.draw(ImageDraw.Draw(drawn), fill=None, outline=1, width=width)
        return np.asarray(drawn, dtype=bool)
    core = inside
    for _ in range(width):
        padded = np.pad(core, 1)
        core = core & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~core


class OutlineCondition(Condition):
    """Objects' outlines, white on black (Fill50k's control, for several objects)."""

    name = "outline"
    metric = "outline_iou"

    def from_scene(self, scene: Any, target: Image.Image | None = None) -> Image.Image:
        lines = np.zeros((scene.size, scene.size), dtype=bool)
        for obj in scene.objects:
            inside = obj.mask(scene.size)
            lines = (lines & ~inside) | _outline(obj, inside, scene.size, scene.line_width)
        return Image.fromarray(np.repeat(lines[:, :, None] * np.uint8(255), 3, axis=2), "RGB")

    def score(self, image: Any, control: Any, prompt: str | None = None) -> dict[str, Any]:
        rgb, control_rgb = same_size(image, control)
        if prompt is not None:
            try:
                parse_fill50k_prompt(prompt)
            except ValueError:
                pass  # a shapes prompt
            else:
                scores = fill50k_scores(rgb, control_rgb, prompt)
                return {"outline_iou": scores["disk_iou"], **scores}
        truth, found = enclosed_regions(control_rgb), foreground(rgb, prompt)
        union = (truth | found).sum()
        return {"outline_iou": float((truth & found).sum() / union) if union else 0.0}
