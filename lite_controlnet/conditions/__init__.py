"""Conditions: kinds of control image, each with how it is made and how obeying it is scored.

=============  ==================================================  ======================
name           control image                                       controllability score
=============  ==================================================  ======================
outline        objects' outlines, white on black (Fill50k's)       ``outline_iou``
canny          OpenCV Canny edges of the target (any image)        ``edge_f1``
segmentation   objects' masks in their class colours               ``miou``
scribble       thick, jittered, partial strokes along the edges   ``scribble_recall``
depth          a depth model's estimate (any image; model chosen)  ``depth_similarity``
=============  ==================================================  ======================

``get_condition("canny", low_threshold=50)`` gives one with its settings; ``score(image,
control, prompt)`` re-detects the condition in a generated image (ControlNet++'s protocol) and
``objects.object_scores`` scores the objects of a shapes scene one by one.
"""

from __future__ import annotations

from typing import Any

from .base import Condition
from .canny import CannyCondition
from .depth import DepthCondition
from .objects import object_scores
from .outline import OutlineCondition
from .scribble import ScribbleCondition
from .segmentation import SegmentationCondition

__all__ = ["CONDITIONS", "Condition", "get_condition", "object_scores"]

# The registry: one instance with the default settings of each condition, by name.
CONDITIONS: dict[str, Condition] = {
    condition.name: condition
    for condition in (OutlineCondition(), CannyCondition(), SegmentationCondition(), ScribbleCondition(),
                      DepthCondition())
}


def get_condition(name: str, **params: Any) -> Condition:
    """The condition called ``name``, with ``params`` as its settings (e.g. canny's thresholds).

    Raises:
        ValueError: for an unknown name, or settings the condition does not take.
    """
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}: expected one of {', '.join(CONDITIONS)}.")
    if not params:
        return CONDITIONS[name]
    try:
        return type(CONDITIONS[name])(**params)
    except TypeError:
        raise ValueError(f"the {name!r} condition does not take the settings {', '.join(map(repr, params))} "
                         f"(it takes: {', '.join(CONDITIONS[name].params) or 'none'}).") from None
