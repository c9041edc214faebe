"""Fidelity of generated Fill50k images as numbers: where the disk is, its colours, its edges.

For one generated image, its control (a white circle outline on black) and its prompt
("<colour> circle with <colour> background"), :func:`fill50k_scores` reports

* ``disk_iou``: the disk the control outline encloses against the disk in the image. The
  image is split into its two dominant colours (2-means); the background is the colour
  that dominates the image border, the other is the disk. Placement is thus scored without
  depending on the base getting the colours right.
* ``circle_colour_error``, ``background_colour_error``: CIEDE2000 (Sharma, Wu & Dalal 2005)
  between the mean colour inside / outside the generated disk and the prompt's colours.
* ``edge_f1`` (with ``edge_precision``, ``edge_recall``): as ControlNet++ (Li et al. 2024)
  measures controllability, edges re-detected in the image (Sobel, thinned, thresholded)
  against the control outline, within a tolerance of 2 px per 64 px of image size.
* ``disk_count``: connected regions of the disk colour (one is what Fill50k draws), and
  ``disk_roundness``: IoU of the largest with the circle fitted to its edge.

Images and controls must have the same size: a ValueError says so otherwise, because
resizing a thin outline or a small image changes the edges that are scored.
numpy only (no scipy, no OpenCV).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import PIL.Image

from ..data.colours import parse_fill50k_prompt

__all__ = [
    "Circle",
    "aggregate_scores",
    "ciede2000",
    "colour_errors",
    "connected_components",
    "control_circle",
    "count_disks",
    "detect_edges",
    "disk_roundness",
    "edge_f1",
    "fill50k_scores",
    "segment_disk",
    "srgb_to_lab",
    "to_rgb_array",
]

# Two dominant colours closer than this (Euclidean RGB in [0, 1], i.e. 25 of 255) are one
# colour: the image has no disk. Fill50k's own colour pairs are >= 80/255 apart.
MIN_COLOUR_CONTRAST = 0.1
# A Sobel magnitude (colour change per pixel, RGB in [0, 1]) above this is an edge. A step
# between Fill50k's closest colours gives ~0.16, noise in a flat region far less.
EDGE_THRESHOLD = 0.05
# Edge tolerance: 2 px at 64 px, proportional to the image size (at least 1 px).
EDGE_TOLERANCE_PER_64PX = 2.0
# Regions of the disk colour smaller than this share of the image are specks, not disks.
# Fill50k's smallest disk (radius 5% of the width) covers 0.8%, 0.4% when half clipped.
MIN_DISK_AREA_FRACTION = 0.003
# A disk region at least this round (IoU with its fitted circle) counts as a disk, not a
# blob. Fill50k's own disks score >= 0.9 at 32 px.
ROUND_DISK_IOU = 0.8
# A control whose brightest pixel is darker than this has no outline. (Outline pixels are
# those at least half as bright as the brightest, so that a resized, fainter outline is
# still found: a 1 px line downscaled 4x is ~0.25 bright.)
MIN_OUTLINE_BRIGHTNESS = 0.1


def to_rgb_array(image: Any, name: str = "image") -> np.ndarray:
    """An (H, W, 3) float array in [0, 1] from a PIL image, a (3, H, W) tensor or an (H, W, 3) array in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        array = image.detach().cpu().float().numpy()
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3 or array.shape[0] != 3:
            raise ValueError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(array.shape)}.")
        array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"{name}: expected a PIL image, a (3, H, W) tensor or an (H, W, 3) array, "
                             f"got {type(image).__name__} of shape {getattr(array, 'shape', None)}.")
    array = array.astype(np.float64)
    if array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise ValueError(f"{name}: values must lie in [0, 1], got [{array.min():.3f}, {array.max():.3f}] "
                         f"(a pipeline's [-1, 1] output maps to [0, 1] with (x + 1) / 2).")
    return np.clip(array, 0.0, 1.0)


# -- colour ------------------------------------------------------------------------------------

def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65 white) of sRGB values in [0, 1], shape (..., 3)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    # sRGB -> XYZ (IEC 61966-2-1), then normalised by the D65 white point
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray, kl: float = 1.0, kc: float = 1.0, kh: float = 1.0) -> np.ndarray:
    """CIEDE2000 colour difference of CIELAB colours, shape (..., 3) each, broadcast.

    Implements the equations of Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference
    formula: implementation notes, supplementary test data, and mathematical observations",
    including their notes on hue angles at zero chroma and the mean hue across 0/360 deg.
    """
    lab1, lab2 = np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64)
    l1, a1, b1 = np.moveaxis(lab1, -1, 0)
    l2, a2, b2 = np.moveaxis(lab2, -1, 0)
    # 1. a' from the mean chroma, then C' and h'
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    # 2. differences; the hue difference is zero when either chroma is zero (note 2)
    dl, dc = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dhh = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    # 3. means; the mean hue goes the short way round the circle (eq. 14)
    lp, cp = (l1 + l2) / 2, (c1p + c2p) / 2
    hsum, hdiff = h1p + h2p, np.abs(h1p - h2p)
    hp = np.where(hdiff <= 180, hsum / 2, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2))
    hp = np.where(c1p * c2p == 0, hsum, hp)
    t = (1 - 0.17 * np.cos(np.radians(hp - 30)) + 0.24 * np.cos(np.radians(2 * hp))
         + 0.32 * np.cos(np.radians(3 * hp + 6)) - 0.20 * np.cos(np.radians(4 * hp - 63)))
    d_theta = 30 * np.exp(-(((hp - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cp**7 / (cp**7 + 25.0**7))
    sl = 1 + 0.015 * (lp - 50) ** 2 / np.sqrt(20 + (lp - 50) ** 2)
    sc, sh = 1 + 0.045 * cp, 1 + 0.015 * cp * t
    rt = -np.sin(np.radians(2 * d_theta)) * rc
    terms_l, terms_c, terms_h = dl / (kl * sl), dc / (kc * sc), dhh / (kh * sh)
    return np.sqrt(terms_l**2 + terms_c**2 + terms_h**2 + rt * terms_c * terms_h)


def _colour_error(rgb: np.ndarray | None, named: tuple[int, int, int]) -> float | None:
    if rgb is None:
        return None
    return float(ciede2000(srgb_to_lab(rgb), srgb_to_lab(np.array(named) / 255.0)))


# -- regions -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Circle:
    """A circle in pixel coordinates (pixel (i, j) has its centre at x = j + 0.5, y = i + 0.5)."""

    x: float
    y: float
    radius: float

    def mask(self, height: int, width: int) -> np.ndarray:
        """The (height, width) boolean disk: pixels whose centre lies inside the circle."""
        yy, xx = np.mgrid[0:height, 0:width] + 0.5
        return (xx - self.x) ** 2 + (yy - self.y) ** 2 <= self.radius**2


def control_circle(control: Any) -> Circle:
    """The circle drawn in a control image (a white outline on black), as the disk it encloses.

    The centre is a least-squares fit to the outline pixels: unlike filling the enclosed
    region, that also works for circles clipped by the image border, whose outline does not
    close. The outer radius (the edge of the target's filled disk) is the ink-weighted mean
    distance of the outline from the centre plus half the line width, and the line width is
    the ink (summed brightness) per pixel of visible arc. Brightness is conserved by resizing,
    so a resized, fainter and wider outline gives the same disk.

    Raises:
        ValueError: if the control has no outline (e.g. all black) or the outline is no circle.
    """
    gray = to_rgb_array(control, "control").mean(axis=2)
    height, width = gray.shape
    if gray.max() < MIN_OUTLINE_BRIGHTNESS:
        raise ValueError(f"The control has no outline: its brightest pixel is {gray.max():.2f}, expected a "
                         f"white circle outline on black (pixels >= {MIN_OUTLINE_BRIGHTNESS}).")
    ys, xs = np.nonzero(gray >= 0.5 * gray.max())
    xs, ys = xs + 0.5, ys + 0.5
    # 1. Kasa fit: x^2 + y^2 + D x + E y + F = 0 is linear in (D, E, F)
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1)
    (d, e, _), *_ = np.linalg.lstsq(design, -(xs**2 + ys**2), rcond=None)
    cx, cy = -d / 2, -e / 2
    distances = np.hypot(xs - cx, ys - cy)
    fit_radius = distances.mean()
    if len(xs) < 5 or not np.isfinite(fit_radius) or fit_radius > 10 * max(height, width) \
            or distances.std() > 0.2 * fit_radius + 1:
        raise ValueError(f"The control's {len(xs)} outline pixels do not form a circle (fitted radius "
                         f"{fit_radius:.1f} px in a {width}x{height} image): expected one circle outline.")
    # 2. ink near the fitted circle: its weighted mean distance and the line width
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    distance = np.hypot(xx - cx, yy - cy)
    ink = np.where(np.abs(distance - fit_radius) <= 2 + 0.05 * max(height, width), gray, 0.0)
    mid_radius = float((ink * distance).sum() / ink.sum())
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    px, py = cx + mid_radius * np.cos(angles), cy + mid_radius * np.sin(angles)
    visible = np.mean((px >= 0) & (px <= width) & (py >= 0) & (py <= height))
    line_width = ink.sum() / max(2 * np.pi * mid_radius * visible, 1e-9)
    return Circle(float(cx), float(cy), mid_radius + float(line_width) / 2)


def segment_disk(image: Any) -> np.ndarray:
    """Boolean mask of the disk: pixels nearer the image's second dominant colour.

    2-means in RGB, started from the median border colour and the colour farthest from it;
    the background is the cluster that holds most border pixels (a Fill50k disk, at most 90%
    of the width across, never covers most of the border). Empty if the two colours are
    closer than `MIN_COLOUR_CONTRAST` (one flat colour: no disk).
    """
    rgb = to_rgb_array(image)
    pixels = rgb.reshape(-1, 3)
    border = np.zeros(rgb.shape[:2], dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    centres = np.stack([np.median(rgb[border], axis=0),
                        pixels[np.argmax(np.linalg.norm(pixels - np.median(rgb[border], axis=0), axis=1))]])
    for _ in range(20):
        labels = np.linalg.norm(pixels[:, None] - centres[None], axis=2).argmin(axis=1)
        new = np.stack([pixels[labels == k].mean(axis=0) if np.any(labels == k) else centres[k] for k in (0, 1)])
        if np.allclose(new, centres):
            break
        centres = new
    if np.linalg.norm(centres[0] - centres[1]) < MIN_COLOUR_CONTRAST:
        return np.zeros(rgb.shape[:2], dtype=bool)
    labels = labels.reshape(rgb.shape[:2])
    background = int(np.bincount(labels[border], minlength=2).argmax())
    return labels != background


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 4-connected regions of a boolean mask: (labels with 0 = outside, count)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    count = 0
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        queue = deque([start])
        while queue:
            i, j = queue.popleft()
            for ni, nj in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if 0 <= ni < height and 0 <= nj < width and mask[ni, nj] and not labels[ni, nj]:
                    labels[ni, nj] = count
                    queue.append((ni, nj))
    return labels, count


def count_disks(image: Any, disk: np.ndarray | None = None,
                components: tuple[np.ndarray, int] | None = None) -> int:
    """Connected regions of the disk colour larger than `MIN_DISK_AREA_FRACTION` of the image.

    Args:
        image: the generated image.
        disk: its `segment_disk` mask, if already computed.
        components: `connected_components(disk)`, if already computed.
    """
    disk = segment_disk(image) if disk is None else disk
    labels, count = connected_components(disk) if components is None else components
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return int(np.sum(areas >= MIN_DISK_AREA_FRACTION * disk.size))


def disk_roundness(image: Any, disk: np.ndarray | None = None,
                   components: tuple[np.ndarray, int] | None = None) -> float | None:
    """How disk-like the image's largest region of the disk colour is, in [0, 1].

    The IoU of the region with the circle fitted (least squares) to its edge pixels; edges
    along the image border are left out, so a clipped disk still fits its circle. Fill50k's
    own disks score >= 0.9 even at 32 px; blobs score less. None if the image has no disk.

    Args:
        image: the generated image.
        disk: its `segment_disk` mask, if already computed.
        components: `connected_components(disk)`, if already computed.
    """
    disk = segment_disk(image) if disk is None else disk
    labels, count = connected_components(disk) if components is None else components
    if count == 0:
        return None
    region = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    padded = np.pad(region, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    ys, xs = np.nonzero(region & ~inner)
    if len(xs) < 5:
        return 0.0
    xs, ys = xs + 0.5, ys + 0.5
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1)
    (d, e, f), *_ = np.linalg.lstsq(design, -(xs**2 + ys**2), rcond=None)
    squared = d**2 / 4 + e**2 / 4 - f
    if not squared > 0:
        return 0.0
    # edge pixel centres lie half a pixel inside the region's boundary
    circle = Circle(-d / 2, -e / 2, math.sqrt(squared) + 0.5).mask(*region.shape)
    return float((circle & region).sum() / (circle | region).sum())


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood lies inside `mask` (outside the image counts as inside)."""
    # a square neighbourhood is separable: erode the rows, then the columns
    height, width = mask.shape
    padded = np.pad(mask, ((0, 0), (radius, radius)), mode="edge")
    rows = np.ones_like(mask)
    for dj in range(2 * radius + 1):
        rows &= padded[:, dj : dj + width]
    padded = np.pad(rows, ((radius, radius), (0, 0)), mode="edge")
    out = np.ones_like(mask)
    for di in range(2 * radius + 1):
        out &= padded[di : di + height, :]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` (Chebyshev distance) of a pixel of `mask`."""
    return ~_erode(~mask, radius)


def _mean_colour(rgb: np.ndarray, region: np.ndarray, margin: int) -> np.ndarray | None:
    # Leave out a margin at the region's edge, where anti-aliasing mixes the two colours;
    # keep the whole region if the margin would leave nothing.
    if not region.any():
        return None
    inner = _erode(region, margin)
    return rgb[inner if inner.any() else region].mean(axis=0)


def colour_errors(image: Any, prompt: str, disk: np.ndarray | None = None) -> tuple[float | None, float | None]:
    """CIEDE2000 of the mean colour inside and outside the image's disk to the prompt's colours.

    The means leave out a margin of 1 px per 128 px at the disk's edge, where anti-aliasing
    mixes the two colours (the whole region is used if the margin would leave nothing).

    Args:
        image: the generated image.
        prompt: its Fill50k prompt, "<colour> circle with <colour> background".
        disk: its `segment_disk` mask, if already computed.

    Returns:
        (circle error, background error); the first is None if the image has no disk, the
        second if the disk fills the image.

    Raises:
        ValueError: if the prompt is not a Fill50k prompt of CSS colour names.
    """
    circle, background = parse_fill50k_prompt(prompt)
    rgb = to_rgb_array(image)
    disk = segment_disk(rgb) if disk is None else disk
    margin = max(1, round(max(rgb.shape[:2]) / 128))
    return (_colour_error(_mean_colour(rgb, disk, margin), circle.rgb),
            _colour_error(_mean_colour(rgb, ~disk, margin), background.rgb))


# -- edges -------------------------------------------------------------------------------------

def detect_edges(image: Any, threshold: float = EDGE_THRESHOLD) -> np.ndarray:
    """Boolean edge map: Sobel colour gradient, thinned along the gradient (as Canny), thresholded.

    The gradient magnitude is the Euclidean norm over the RGB channels of the Sobel responses
    divided by 8, i.e. colour change per pixel, so a step between two colours at RGB distance
    d gives d / 2.
    """
    rgb = to_rgb_array(image)
    padded = np.pad(rgb, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = rgb.shape[:2]

    def shifted(di: int, dj: int) -> np.ndarray:
        return padded[1 + di : 1 + di + height, 1 + dj : 1 + dj + width]

    gx = (shifted(-1, 1) + 2 * shifted(0, 1) + shifted(1, 1) - shifted(-1, -1) - 2 * shifted(0, -1) - shifted(1, -1)) / 8
    gy = (shifted(1, -1) + 2 * shifted(1, 0) + shifted(1, 1) - shifted(-1, -1) - 2 * shifted(-1, 0) - shifted(-1, 1)) / 8
    magnitude = np.sqrt((gx**2 + gy**2).sum(axis=2))
    # direction of the strongest channel's gradient, quantised to 0/45/90/135 degrees
    strongest = np.argmax(gx**2 + gy**2, axis=2)[..., None]
    angle = np.degrees(np.arctan2(np.take_along_axis(gy, strongest, 2)[..., 0],
                                  np.take_along_axis(gx, strongest, 2)[..., 0])) % 180
    sector = (np.round(angle / 45).astype(int) % 4)
    mag = np.pad(magnitude, 1, mode="constant")
    keep = np.zeros_like(magnitude, dtype=bool)
    for k, (di, dj) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = mag[1 + di : 1 + di + height, 1 + dj : 1 + dj + width]
        behind = mag[1 - di : 1 - di + height, 1 - dj : 1 - dj + width]
        keep |= (sector == k) & (magnitude >= ahead) & (magnitude >= behind)
    return keep & (magnitude > threshold)


def edge_f1(edges: np.ndarray, reference: np.ndarray, tolerance: int) -> tuple[float, float, float]:
    """(precision, recall, F1) of an edge map against reference edges, within `tolerance` px.

    Precision: share of detected edge pixels within `tolerance` (Chebyshev) of a reference
    pixel; recall: share of reference pixels within `tolerance` of a detected one. An image
    without detected edges scores 0.
    """
    if not edges.any() or not reference.any():
        return 0.0, 0.0, 0.0
    precision = float((edges & _dilate(reference, tolerance)).sum() / edges.sum())
    recall = float((reference & _dilate(edges, tolerance)).sum() / reference.sum())
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1


# -- scores ------------------------------------------------------------------------------------

def fill50k_scores(image: Any, control: Any, prompt: str | None) -> dict[str, float | int | None]:
    """Fidelity of one generated Fill50k image to its control and prompt.

    Args:
        image: the generated image: PIL, a (3, H, W) tensor or an (H, W, 3) array in [0, 1].
        control: its control image (white circle outline on black), of the same size.
        prompt: its prompt, "<colour> circle with <colour> background"; None skips the colour
            errors (they are then None).

    Returns:
        ``disk_iou`` (0 if the image has no disk), ``circle_colour_error`` (None if the image
        has no disk), ``background_colour_error`` (None if the disk fills the image), both
        CIEDE2000; ``edge_precision``, ``edge_recall``, ``edge_f1``; ``disk_count``;
        ``disk_roundness`` (None if the image has no disk).

    Raises:
        ValueError: if image and control differ in size, the control has no circle outline,
            or the prompt is not a Fill50k prompt of CSS colour names.
    """
    rgb = to_rgb_array(image)
    control_rgb = to_rgb_array(control, "control")
    if rgb.shape != control_rgb.shape:
        raise ValueError(
            f"image is {rgb.shape[1]}x{rgb.shape[0]} but control is {control_rgb.shape[1]}x{control_rgb.shape[0]}: "
            "score them at one size (generate at the control's size, or resize the control first)."
        )
    if prompt is not None:
        parse_fill50k_prompt(prompt)  # a bad prompt fails before any work
    height, width = rgb.shape[:2]
    size = max(height, width)

    # 1. placement: the control's disk against the image's
    truth = control_circle(control_rgb).mask(height, width)
    disk = segment_disk(rgb)
    union = (truth | disk).sum()
    iou = float((truth & disk).sum() / union) if union else 0.0

    # 2. colours inside / outside the generated disk
    circle_error = background_error = None
    if prompt is not None:
        circle_error, background_error = colour_errors(rgb, prompt, disk)

    # 3. edges re-detected in the image against the control outline
    gray = control_rgb.mean(axis=2)
    outline = gray >= 0.5 * gray.max()
    tolerance = max(1, round(EDGE_TOLERANCE_PER_64PX * size / 64))
    precision, recall, f1 = edge_f1(detect_edges(rgb), outline, tolerance)

    # 4. the regions of the disk colour: how many disks, how round the largest
    components = connected_components(disk)
    return {
        "disk_iou": iou,
        "circle_colour_error": circle_error,
        "background_colour_error": background_error,
        "edge_f1": f1,
        "edge_precision": precision,
        "edge_recall": recall,
        "disk_count": count_disks(rgb, disk, components),
        "disk_roundness": disk_roundness(rgb, disk, components),
    }


def aggregate_scores(scores: Iterable[dict[str, float | int | None]]) -> dict[str, float | int | None]:
    """Means of `fill50k_scores` results over images.

    Returns, for each key, its mean over the images where it is not None (None if it is None
    everywhere) and ``<key>_none``, the number of images where it is None; ``count``, the
    number of images; ``one_disk_share``, the share of images with exactly one disk; and
    ``round_one_disk_share``, the share of those whose disk is also round (roundness >=
    `ROUND_DISK_IOU`).
    """
    scores = list(scores)
    if not scores:
        raise ValueError("aggregate_scores needs at least one score dict (from fill50k_scores), got none.")
    out: dict[str, float | int | None] = {"count": len(scores)}
    keys = list(dict.fromkeys(key for s in scores for key in s))
    for key in keys:
        values = [s[key] for s in scores if s.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_none"] = len(scores) - len(values)
    if "disk_count" in keys:
        out["one_disk_share"] = float(np.mean([s.get("disk_count") == 1 for s in scores]))
        out["round_one_disk_share"] = float(np.mean([
            s.get("disk_count") == 1 and (s.get("disk_roundness") or 0.0) >= ROUND_DISK_IOU for s in scores
        ]))
    return out
