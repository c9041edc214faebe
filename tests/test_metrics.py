"""Fill50k fidelity scores: CIEDE2000 against published data, and what the scores must say
about ground truth, mismatched pairs, resized images and bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from lite_controlnet.data.fill50k import fill50k_spec, render_fill50k_sample
from lite_controlnet.evaluation.metrics import (
    aggregate_scores,
    ciede2000,
    colour_errors,
    control_circle,
    count_disks,
    disk_roundness,
    fill50k_scores,
    srgb_to_lab,
)

# Sharma, Wu & Dalal (2005), Table 1: all 34 pairs (L1 a1 b1, L2 a2 b2, dE00). They probe the
# hue-angle edge cases (zero chroma, mean hue across 0/360 degrees) that naive code gets wrong.
SHARMA_2005 = """
50.0000 2.6772 -79.7751 50.0000 0.0000 -82.7485 2.0425
50.0000 3.1571 -77.2803 50.0000 0.0000 -82.7485 2.8615
50.0000 2.8361 -74.0200 50.0000 0.0000 -82.7485 3.4412
50.0000 -1.3802 -84.2814 50.0000 0.0000 -82.7485 1.0000
50.0000 -1.1848 -84.8006 50.0000 0.0000 -82.7485 1.0000
50.0000 -0.9009 -85.5211 50.0000 0.0000 -82.7485 1.0000
50.0000 0.0000 0.0000 50.0000 -1.0000 2.0000 2.3669
50.0000 -1.0000 2.0000 50.0000 0.0000 0.0000 2.3669
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0009 7.1792
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0010 7.1792
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0011 7.2195
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0012 7.2195
50.0000 -0.0010 2.4900 50.0000 0.0009 -2.4900 4.8045
50.0000 -0.0010 2.4900 50.0000 0.0010 -2.4900 4.8045
50.0000 -0.0010 2.4900 50.0000 0.0011 -2.4900 4.7461
50.0000 2.5000 0.0000 50.0000 0.0000 -2.5000 4.3065
50.0000 2.5000 0.0000 73.0000 25.0000 -18.0000 27.1492
50.0000 2.5000 0.0000 61.0000 -5.0000 29.0000 22.8977
50.0000 2.5000 0.0000 56.0000 -27.0000 -3.0000 31.9030
50.0000 2.5000 0.0000 58.0000 24.0000 15.0000 19.4535
50.0000 2.5000 0.0000 50.0000 3.1736 0.5854 1.0000
50.0000 2.5000 0.0000 50.0000 3.2972 0.0000 1.0000
50.0000 2.5000 0.0000 50.0000 1.8634 0.5757 1.0000
50.0000 2.5000 0.0000 50.0000 3.2592 0.3350 1.0000
60.2574 -34.0099 36.2677 60.4626 -34.1751 39.4387 1.2644
63.0109 -31.0961 -5.8663 62.8187 -29.7946 -4.0864 1.2630
61.2901 3.7196 -5.3901 61.4292 2.2480 -4.9620 1.8731
35.0831 -44.1164 3.7933 35.0232 -40.0716 1.5901 1.8645
22.7233 20.0904 -46.6940 23.0331 14.9730 -42.5619 2.0373
36.4612 47.8580 18.3852 36.2715 50.5065 21.2231 1.4146
90.8027 -2.0831 1.4410 91.1528 -1.6435 0.0447 1.4441
90.9257 -0.5406 -0.9208 88.6381 -0.8985 -0.7239 1.5381
6.7747 -0.2908 -2.4247 5.8714 -0.0985 -2.2286 0.6377
2.0776 0.0795 -1.1350 0.9033 -0.0636 -0.5514 0.9082
"""


def test_ciede2000_matches_sharma_2005_both_ways():
    table = np.array([[float(x) for x in line.split()] for line in SHARMA_2005.strip().splitlines()])
    assert table.shape == (34, 7)
    lab1, lab2, expected = table[:, :3], table[:, 3:6], table[:, 6]
    np.testing.assert_allclose(ciede2000(lab1, lab2), expected, atol=1e-4)
    np.testing.assert_allclose(ciede2000(lab2, lab1), expected, atol=1e-4)


def test_srgb_to_lab_known_values():
    np.testing.assert_allclose(srgb_to_lab(np.array([1.0, 1.0, 1.0])), [100, 0, 0], atol=1e-3)
    np.testing.assert_allclose(srgb_to_lab(np.array([1.0, 0.0, 0.0])), [53.24, 80.09, 67.20], atol=0.02)
    np.testing.assert_allclose(srgb_to_lab(np.array([0.0, 0.0, 1.0])), [32.30, 79.19, -107.86], atol=0.02)


def _scores(indices, size, resize=None, shift=0):
    rows = []
    for i in indices:
        control, _, _ = render_fill50k_sample(i + shift, size)
        _, target, prompt = render_fill50k_sample(i, size)
        if resize:
            control, target = (im.resize((resize, resize), Image.BILINEAR) for im in (control, target))
        rows.append(fill50k_scores(target, control, prompt))
    return rows


@pytest.mark.parametrize("size", [32, 64, 256])
def test_ground_truth_scores_perfectly(size):
    rows = _scores(range(24), size)
    for row in rows:
        assert row["disk_count"] == 1 and row["disk_roundness"] >= 0.9
        assert row["circle_colour_error"] < 3 and row["background_colour_error"] < 3
    summary = aggregate_scores(rows)
    assert summary["disk_iou"] >= 0.95
    assert summary["edge_f1"] >= 0.95
    assert summary["one_disk_share"] == summary["round_one_disk_share"] == 1.0
    # the smallest disks (radius 1.6 px at 32 px) are where pixels make IoU coarse
    assert min(row["disk_iou"] for row in rows) >= (0.85 if size == 32 else 0.95)


def test_another_samples_control_scores_low():
    rows = _scores(range(24), 64, shift=1)
    summary = aggregate_scores(rows)
    assert summary["disk_iou"] < 0.3
    assert summary["edge_f1"] < 0.4


def test_prompt_colours_are_what_is_measured():
    _, target, prompt = render_fill50k_sample(3, 64)
    _, _, other_prompt = render_fill50k_sample(4, 64)
    right, wrong = colour_errors(target, prompt), colour_errors(target, other_prompt)
    assert max(right) < 1
    assert min(wrong) > 10


def test_scores_are_stable_under_resizing():
    full = aggregate_scores(_scores(range(12), 512))
    half = aggregate_scores(_scores(range(12), 512, resize=256))
    for key in ("disk_iou", "edge_f1"):
        assert abs(full[key] - half[key]) < 0.02, key
    for key in ("circle_colour_error", "background_colour_error"):
        assert abs(full[key] - half[key]) < 1.0, key


def test_control_circle_recovers_a_border_clipped_circle():
    # find a sample whose circle is cut by the border: a closed-contour fill would miss it
    for index in range(200):
        spec = fill50k_spec(index, 256)
        x, y = spec.centre
        if min(x, y, 256 - x, 256 - y) < spec.radius * 0.5 and spec.radius > 40:
            break
    control, _, _ = render_fill50k_sample(index, 256)
    circle = control_circle(control)
    assert abs(circle.x - x) < 2 and abs(circle.y - y) < 2
    assert abs(circle.radius - spec.radius) < 2


def test_tensor_and_pil_inputs_agree():
    control, target, prompt = render_fill50k_sample(5, 64)
    tensor = torch.from_numpy(np.asarray(target, dtype=np.float32) / 255).permute(2, 0, 1)
    assert fill50k_scores(tensor, control, prompt) == pytest.approx(fill50k_scores(target, control, prompt), abs=1e-4)


def test_a_flat_image_has_no_disk_and_no_circle_colour():
    control, _, prompt = render_fill50k_sample(5, 64)
    flat = Image.new("RGB", (64, 64), (30, 60, 90))
    scores = fill50k_scores(flat, control, prompt)
    assert scores["disk_iou"] == 0.0 and scores["disk_count"] == 0 and scores["edge_f1"] == 0.0
    assert scores["circle_colour_error"] is None and scores["disk_roundness"] is None
    assert scores["background_colour_error"] > 0
    summary = aggregate_scores([scores, fill50k_scores(render_fill50k_sample(5, 64)[1], control, prompt)])
    assert summary["circle_colour_error_none"] == 1 and summary["count"] == 2
    assert summary["one_disk_share"] == 0.5


def test_two_disks_are_counted():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    draw.ellipse((5, 5, 20, 20), fill=(255, 0, 0))
    draw.ellipse((35, 35, 55, 55), fill=(255, 0, 0))
    assert count_disks(image) == 2


def test_a_long_blob_is_not_round():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    from PIL import ImageDraw

    ImageDraw.Draw(image).rectangle((10, 28, 50, 36), fill=(0, 0, 255))
    assert count_disks(image) == 1
    assert disk_roundness(image) < 0.5


def test_different_sizes_are_refused():
    control, target, prompt = render_fill50k_sample(0, 64)
    with pytest.raises(ValueError, match="same size|one size"):
        fill50k_scores(target.resize((32, 32)), control, prompt)


def test_control_without_circle_is_refused():
    _, target, prompt = render_fill50k_sample(0, 64)
    with pytest.raises(ValueError, match="no outline"):
        fill50k_scores(target, Image.new("RGB", (64, 64)), prompt)


def test_unknown_colours_are_refused_and_no_prompt_skips_colours():
    control, target, _ = render_fill50k_sample(0, 64)
    with pytest.raises(ValueError, match="Unknown colour"):
        fill50k_scores(target, control, "plaid circle with red background")
    scores = fill50k_scores(target, control, None)
    assert scores["circle_colour_error"] is None and scores["background_colour_error"] is None
    assert scores["disk_iou"] > 0.95


def test_out_of_range_tensor_is_refused():
    control, _, prompt = render_fill50k_sample(0, 32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fill50k_scores(torch.full((3, 32, 32), -1.0), control, prompt)


def test_aggregate_needs_scores():
    with pytest.raises(ValueError, match="at least one"):
        aggregate_scores([])


def test_the_disk_regions_are_found_once_per_image(monkeypatch):
    import lite_controlnet.evaluation.metrics as metrics

    calls = []
    real = metrics.connected_components
    monkeypatch.setattr(metrics, "connected_components", lambda mask: calls.append(1) or real(mask))
    control, target, prompt = render_fill50k_sample(0, 64)
    scores = metrics.fill50k_scores(target, control, prompt)
    assert len(calls) == 1 and scores["disk_count"] == 1 and scores["disk_roundness"] > 0.9
