"""lite-controlnet: train a lightweight ControlNet for Stable Diffusion 1.5 on a free Colab GPU."""

__version__ = "0.1.0"

from .base import DEFAULT_BASE, BaseModelError, BaseModels, load_base
from .controls import ControlResiduals, build_control, control_residuals, load_control
from .model import LiteControlNetModel, LiteControlNetOutput
from .pipeline import LiteControlNetPipeline

__all__ = [
    "DEFAULT_BASE",
    "BaseModelError",
    "BaseModels",
    "ControlResiduals",
    "LiteControlNetModel",
    "LiteControlNetOutput",
    "LiteControlNetPipeline",
    "build_control",
    "control_residuals",
    "load_base",
    "load_control",
]
