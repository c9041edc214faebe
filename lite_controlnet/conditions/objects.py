"""Objects of the shapes world found in an image by the prompt's colours, and their scores.

A generated image is split into the prompt's colours: each pixel goes to the nearest of the
objects' and the background's named colours (Euclidean distance in CIELAB), so object ``k`` of
the prompt is the region of its colour. The same split of the ground-truth target (flat
colours) gives each object's visible mask exactly. :func:`object_scores` then reports, per
scene, the objects' IoU, whether the image holds the prompt's number of objects, and the
CIEDE2000 error of each object's colour, as `metrics.fill50k_scores` does for Fill50k's disk.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.shapes import parse_shapes_prompt
from ..evaluation.metrics import MIN_DISK_AREA_FRACTION, ciede2000, connected_components, srgb_to_lab, to_rgb_array

__all__ = ["colour_regions", "count_objects", "object_scores"]


def colour_regions(image: Any, prompt: str) -> np.ndarray:
    """(H, W) int map: k for pixels nearest object k's colour (prompt order), -1 for the background's."""
    objects, background = parse_shapes_prompt(prompt)
    palette = srgb_to_lab(np.array([c.rgb for c, _ in objects] + [background.rgb], dtype=np.float64) / 255.0)
    lab = srgb_to_lab(to_rgb_array(image))
    nearest = np.linalg.norm(lab[:, :, None, :] - palette[None, None], axis=3).argmin(axis=2)
    return np.where(nearest == len(objects), -1, nearest)


def count_objects(regions: np.ndarray, count: int) -> int:
    """Connected regions (4-connected) of each of `count` object colours larger than
    `metrics.MIN_DISK_AREA_FRACTION` of the image (smaller ones are specks), summed."""
    found = 0
    for k in range(count):
        labels, pieces = connected_components(regions == k)
        if pieces:
            areas = np.bincount(labels.ravel(), minlength=pieces + 1)[1:]
            found += int(np.sum(areas >= MIN_DISK_AREA_FRACTION * regions.size))
    return found


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` whose four neighbours are in it too (its edge, where colours mix, left out);
    the whole mask if that leaves nothing."""
    padded = np.pad(mask, 1, mode="edge")
    inner = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inner if inner.any() else mask


def _colour_error(rgb: np.ndarray, region: np.ndarray, named: tuple[int, int, int]) -> float:
    """CIEDE2000 between the mean colour of `region`'s interior and a named colour."""
    mean = rgb[_interior(region)].mean(axis=0)
    return float(ciede2000(srgb_to_lab(mean), srgb_to_lab(np.array(named) / 255.0)))


def object_scores(image: Any, target: Any, prompt: str) -> dict[str, float | int | None]:
    """Object-level fidelity of a generated shapes image to its scene.

    Args:
        image: the generated image (PIL, an (H, W, 3) array or a (3, H, W) tensor in [0, 1]).
        target: the scene's ground-truth image, of the same size.
        prompt: the scene's prompt ("a red square and a teal circle on a beige background").

    Returns:
        ``object_iou``: mean over the prompt's objects of the IoU of the region of its colour
        in the image with its visible mask in the target; ``object_count``: objects found in
        the image (`count_objects`); ``right_object_count``: 1.0 if that is the prompt's number
        of objects, else 0.0; ``object_colour_error``: mean CIEDE2000 between each object's
        named colour and the image's mean colour where the target shows it (None if no object
        is visible in the target); ``background_colour_error`` likewise for the background.

    Raises:
        ValueError: for images of different sizes or a prompt that is not a shapes prompt.
    """
    objects, background = parse_shapes_prompt(prompt)
    rgb, truth_rgb = to_rgb_array(image), to_rgb_array(target, "target")
    if rgb.shape != truth_rgb.shape:
        raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but target is {truth_rgb.shape[1]}x"
                         f"{truth_rgb.shape[0]}: score them at one size.")
    found, truth = colour_regions(rgb, prompt), colour_regions(truth_rgb, prompt)
    ious, errors = [], []
    for k, (colour, _) in enumerate(objects):
        union = ((found == k) | (truth == k)).sum()
        ious.append(float(((found == k) & (truth == k)).sum() / union) if union else 0.0)
        if (truth == k).any():
            errors.append(_colour_error(rgb, truth == k, colour.rgb))
    count = count_objects(found, len(objects))
    background_error = None
    if (truth == -1).any():
        background_error = _colour_error(rgb, truth == -1, background.rgb)
    return {
        "object_iou": float(np.mean(ious)),
        "object_count": count,
        "right_object_count": float(count == len(objects)),
        "object_colour_error": float(np.mean(errors)) if errors else None,
        "background_colour_error": background_error,
    }
