"""What a condition is: a kind of control image, how to make it, and how well an image obeys it.

A `Condition` has a name (``"canny"``), makes the control image from a rendered shapes scene
(`from_scene`) and, where it can, from any image (`from_image`, as edges can be found in any
photo), and scores a generated image against its control (`score`). Scoring follows
ControlNet++ (Li et al. 2024, "ControlNet++: Improving Conditional Controls with Efficient
Consistency Feedback"): re-detect the condition in the generated image and compare it with the
control that was given; `metric` names the key of `score`'s result that is the
controllability score (higher is better).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from PIL import Image

from ..evaluation.metrics import to_rgb_array

__all__ = ["Condition", "as_rgb_image", "same_size"]


class Condition(ABC):
    """A condition; subclasses set the class attributes and implement what they support.

    Attributes:
        name: the registry name.
        metric: the key of `score`'s result that is the controllability score.
        from_scenes: whether `from_scene` makes control images from shapes scenes.
        from_images: whether `from_image` makes them from any image.
        params: the condition's settings (JSON values), recorded with the datasets it makes.
    """

    name = ""
    metric = ""
    from_scenes = True
    from_images = False

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{type(self).__name__}({settings})"

    def check_available(self) -> None:
        """Raise a one-line error if something this condition needs is not installed."""

    def from_scene(self, scene: Any, target: Image.Image | None = None) -> Image.Image:
        """The control image of a `ShapesScene` (``target``: its rendering, if already made)."""
        raise ValueError(f"the {self.name!r} condition cannot be drawn from a shapes scene.")

    def from_image(self, image: Any) -> Image.Image:
        """The control image of any RGB image (PIL, or an (H, W, 3) array in [0, 1])."""
        raise ValueError(f"the {self.name!r} condition needs a shapes scene: it cannot be made from an image.")

    @abstractmethod
    def score(self, image: Any, control: Any, prompt: str | None = None) -> dict[str, Any]:
        """Scores of a generated ``image`` against its ``control`` (and ``prompt``, where the
        score needs the prompt's colours); ``result[self.metric]`` is the controllability."""

    def controllability(self, image: Any, control: Any, prompt: str | None = None) -> float | None:
        """`score`'s headline: how well ``image`` obeys ``control``, higher is better."""
        return self.score(image, control, prompt)[self.metric]


def as_rgb_image(image: Any, name: str = "image") -> Image.Image:
    """A PIL RGB image from a PIL image, an (H, W, 3) array in [0, 1] or a (3, H, W) tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.round(to_rgb_array(image, name) * 255).astype(np.uint8), "RGB")


def same_size(image: Any, control: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both as (H, W, 3) arrays in [0, 1]; a ValueError if their sizes differ."""
    rgb, control_rgb = to_rgb_array(image), to_rgb_array(control, "control")
    if rgb.shape != control_rgb.shape:
        raise ValueError(
            f"image is {rgb.shape[1]}x{rgb.shape[0]} but control is {control_rgb.shape[1]}x{control_rgb.shape[0]}: "
            "score them at one size (generate at the control's size, or resize the control first)."
        )
    return rgb, control_rgb
