"""The canny condition: the target's edges by OpenCV's Canny detector, white on black.

As ControlNet's canny annotator does, ``cv2.Canny`` runs on the 8-bit RGB image itself (OpenCV
takes, at each pixel, the channel with the strongest gradient), so an edge between two colours
of equal brightness is still found. OpenCV is optional: ``pip install opencv-python-headless``
(Colab has it). Score: as ControlNet++ scores canny control, the F1 of the edges re-detected in
the generated image (same detector, same thresholds) against the control's edges, here within a
tolerance of 1 px per 128 px (at least 1 px), since a generated edge one pixel off is still
where the control asked for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..evaluation.metrics import edge_f1
from .base import Condition, as_rgb_image, same_size

__all__ = ["CannyCondition", "canny_edges", "require_cv2"]

INSTALL = "pip install opencv-python-headless"


def require_cv2() -> Any:
    """The ``cv2`` module; a one-line UsageError saying how to install it if it is missing."""
    try:
        import cv2
    except ImportError:
        raise UsageError(f"the canny condition needs OpenCV, which is not installed: {INSTALL}") from None
    return cv2


def canny_edges(image: Any, low_threshold: float = 100, high_threshold: float = 200) -> np.ndarray:
    """(H, W) boolean edge map of an image by ``cv2.Canny(rgb_uint8, low_threshold, high_threshold)``."""
    cv2 = require_cv2()
    rgb = np.asarray(as_rgb_image(image), dtype=np.uint8)
    return cv2.Canny(np.ascontiguousarray(rgb), low_threshold, high_threshold) > 0


class CannyCondition(Condition):
    """Canny edges of the target, white on black.

    Args:
        low_threshold: Canny's lower hysteresis threshold (diffusers' and ControlNet's default 100).
        high_threshold: Canny's upper threshold (default 200); must not be below ``low_threshold``.
    """

    name = "canny"
    metric = "edge_f1"
    from_images = True

    def __init__(self, low_threshold: float = 100, high_threshold: float = 200):
        super().__init__()
        for label, value in (("low_threshold", low_threshold), ("high_threshold", high_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10_000:
                raise ValueError(f"canny {label} must be a number from 0 to 10000, got {value!r}.")
        if high_threshold < low_threshold:
            raise ValueError(f"canny high_threshold ({high_threshold}) must be >= low_threshold ({low_threshold}).")
        self.params = {"low_threshold": low_threshold, "high_threshold": high_threshold}

    def check_available(self) -> None:
        require_cv2()

    def edges(self, image: Any) -> np.ndarray:
        """The image's edges at this condition's thresholds."""
        return canny_edges(image, self.params["low_threshold"], self.params["high_threshold"])

    def from_image(self, image: Any) -> Image.Image:
        edges = self.edges(image)
        return Image.fromarray(np.repeat(edges[:, :, None] * np.uint8(255), 3, axis=2), "RGB")

    def from_scene(self, scene: Any, target: Image.Image | None = None) -> Image.Image:
        return self.from_image(scene.render() if target is None else target)

    def score(self, image: Any, control: Any, prompt: str | None = None) -> dict[str, Any]:
        rgb, control_rgb = same_size(image, control)
        reference = control_rgb.mean(axis=2) >= 0.5
        tolerance = max(1, round(max(rgb.shape[:2]) / 128))
        precision, recall, f1 = edge_f1(self.edges(rgb), reference, tolerance)
        return {"edge_f1": f1, "edge_precision": precision, "edge_recall": recall}
