"""lite-controlnet: train a lightweight ControlNet for Stable Diffusion 1.5 on a free Colab GPU."""

__version__ = "0.1.0"

from .bases.loading import DEFAULT_BASE, BaseModelError, BaseModels, load_base
from .training.config import TrainConfig
from .controls import (
    CONTROL_KINDS,
    ControlResiduals,
    MultiControlModel,
    build_control,
    control_residuals,
    controlled_unet,
    load_control,
    prepare_control,
)
from .data.paired import DatasetError, PairedDataset
from .data.fill50k import make_fill50k
from .model import LITE_DESIGNS, LiteControlNetFeatures, LiteControlNetModel, LiteControlNetOutput
from .pipeline import LiteControlNetPipeline
from .hub.push import push_to_hub
from .training.trainer import EpochEnd, train

__all__ = [
    "CONTROL_KINDS",
    "LITE_DESIGNS",
    "LiteControlNetFeatures",
    "DEFAULT_BASE",
    "BaseModelError",
    "BaseModels",
    "ControlResiduals",
    "DatasetError",
    "EpochEnd",
    "LiteControlNetModel",
    "LiteControlNetOutput",
    "LiteControlNetPipeline",
    "MultiControlModel",
    "PairedDataset",
    "TrainConfig",
    "build_control",
    "control_residuals",
    "controlled_unet",
    "prepare_control",
    "push_to_hub",
    "load_base",
    "load_control",
    "make_fill50k",
    "train",
]
