"""The depth condition: a depth map estimated by a model you choose, as grey levels.

Made with transformers' ``depth-estimation`` pipeline from any image (e.g. ``model=
"depth-anything/Depth-Anything-V2-Small-hf"`` or ``"Intel/dpt-hybrid-midas"``, ControlNet's;
a Hub id or a local folder). The pipeline's ``depth`` image is the estimate scaled to 0..255,
at the image's size; it is saved as RGB (three equal channels), as ControlNet's depth
controls are. Nothing is downloaded until a control is made; offline, a Hub id fails in one
line that says how to pass a local copy.

Score: as ControlNet++ scores depth control, the RMSE between the depth re-estimated from the
generated image (same model) and the control, both scaled to [0, 1] (each by its own min and
max, since estimators give relative depth); ``depth_similarity`` = 1 - RMSE is the headline,
so that higher is better as for the other conditions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..errors import UsageError
from .base import Condition, as_rgb_image, same_size

__all__ = ["DepthCondition"]

EXAMPLE_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


def _unit(depth: np.ndarray) -> np.ndarray:
    low, high = float(depth.min()), float(depth.max())
    return np.zeros_like(depth) if high - low < 1e-12 else (depth - low) / (high - low)


class DepthCondition(Condition):
    """Depth maps by a transformers ``depth-estimation`` model.

    Args:
        model: Hub id or local folder of the depth model (no default: its licence and size are
            the user's choice; e.g. ``"depth-anything/Depth-Anything-V2-Small-hf"``).
        device: where to run it ("cpu", "cuda"; default: the pipeline's choice).
    """

    name = "depth"
    metric = "depth_similarity"
    from_scenes = False
    from_images = True

    def __init__(self, model: str | None = None, device: str | None = None):
        super().__init__()
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError(f"depth model must be a Hub id or a folder, got {model!r}.")
        self.params = {"model": model}
        self._device = device
        self._pipeline: Any = None

    def check_available(self) -> None:
        self.estimator()

    def estimator(self) -> Any:
        """The loaded ``depth-estimation`` pipeline (loaded once)."""
        if self._pipeline is not None:
            return self._pipeline
        model = self.params["model"]
        if model is None:
            raise UsageError(f"the depth condition needs a depth-estimation model: pass model=... "
                             f"(--depth-model ID_OR_FOLDER), e.g. {EXAMPLE_MODEL}.")
        from transformers import pipeline

        try:
            self._pipeline = pipeline("depth-estimation", model=model, device=self._device)
        except OSError as error:
            raise UsageError(f"cannot load the depth model {model!r} ({' '.join(str(error).split())[:200]}); "
                             "offline, download it once (huggingface-cli download ID --local-dir DIR) and pass "
                             "the folder instead.") from None
        return self._pipeline

    def depth(self, image: Any) -> np.ndarray:
        """(H, W) estimated depth of an image, in [0, 1]."""
        picture = as_rgb_image(image)
        estimate = self.estimator()(picture)["depth"]
        if estimate.size != picture.size:
            estimate = estimate.resize(picture.size, Image.BILINEAR)
        return _unit(np.asarray(estimate, dtype=np.float64))

    def from_image(self, image: Any) -> Image.Image:
        grey = np.round(self.depth(image) * 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")

    def score(self, image: Any, control: Any, prompt: str | None = None) -> dict[str, Any]:
        rgb, control_rgb = same_size(image, control)
        rmse = float(np.sqrt(np.mean((self.depth(rgb) - _unit(control_rgb.mean(axis=2))) ** 2)))
        return {"depth_similarity": 1.0 - rmse, "depth_rmse": rmse}
