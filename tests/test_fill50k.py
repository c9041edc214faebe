"""The synthetic Fill50k and its colour names: what training and metrics rely on."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
from PIL import Image, ImageColor

from lite_controlnet.data.colours import COLOURS, colour_by_words, parse_fill50k_prompt
from lite_controlnet.data.paired import PairedDataset
from lite_controlnet.data.fill50k import (
    MIN_COLOUR_DISTANCE,
    RADIUS_FRACTION,
    fill50k_spec,
    make_fill50k,
    render_fill50k_sample,
)

# More than one 64-sample worker task, so that workers=2 really uses a pool.
NUM = 140
SIZE = 32


def _files(folder):
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


@pytest.fixture(scope="module")
def fill_dir(tmp_path_factory):
    return make_fill50k(tmp_path_factory.mktemp("fill") / "data", num=NUM, size=SIZE, seed=3, workers=1, progress=False)


# -- colours -------------------------------------------------------------------


def test_colours_are_the_css3_names_with_pil_rgb():
    css3 = set(ImageColor.colormap) - {"rebeccapurple"}  # rebeccapurple is CSS4
    assert len(COLOURS) == 147
    assert {colour.name for colour in COLOURS} == css3
    for colour in COLOURS:
        assert colour.words.replace(" ", "") == colour.name
        assert ImageColor.getrgb(colour.words.replace(" ", "")) == colour.rgb, colour
    assert len({colour.words for colour in COLOURS}) == len(COLOURS)


def test_colour_words_follow_the_original_prompts():
    assert colour_by_words("pale golden rod").name == "palegoldenrod"
    assert colour_by_words("old lace").rgb == (253, 245, 230)
    assert colour_by_words("grey").rgb == colour_by_words("gray").rgb == (128, 128, 128)


def test_unknown_colour_names_close_matches():
    with pytest.raises(ValueError, match="'pale goldenrod'") as info:
        colour_by_words("pale goldenrod")
    assert "pale golden rod" in str(info.value)


def test_every_colour_pair_round_trips_through_a_prompt():
    for circle in COLOURS:
        for background in COLOURS:
            prompt = f"{circle.words} circle with {background.words} background"
            assert parse_fill50k_prompt(prompt) == (circle, background)


@pytest.mark.parametrize(
    "prompt",
    [
        "red circle on blue background",
        "red circle with blue",
        "circle with blue background",
        "reddish circle with blue background",
        "red circle with blue background ",
    ],
)
def test_bad_prompts_are_quoted_in_the_error(prompt):
    with pytest.raises(ValueError) as info:
        parse_fill50k_prompt(prompt)
    assert repr(prompt) in str(info.value)


# -- samples -------------------------------------------------------------------


def test_samples_draw_distinct_colours_and_circles_in_range():
    for index in range(300):
        spec = fill50k_spec(index, size=512, seed=0)
        distance = np.linalg.norm(np.subtract(spec.circle.rgb, spec.background.rgb))
        assert distance >= MIN_COLOUR_DISTANCE
        assert all(0 <= c < 512 for c in spec.centre)
        assert RADIUS_FRACTION[0] * 512 <= spec.radius <= RADIUS_FRACTION[1] * 512
        assert spec.line_width == 4
    assert fill50k_spec(0, size=64).line_width == 1


def test_source_is_an_outline_of_the_target_disk():
    clipped = 0
    for index in range(40):
        spec = fill50k_spec(index, size=128, seed=1)
        source, target, prompt = render_fill50k_sample(index, size=128, seed=1)
        assert source.mode == target.mode == "RGB" and source.size == target.size == (128, 128)
        source, target = np.asarray(source), np.asarray(target)
        x, y = int(spec.centre[0]), int(spec.centre[1])
        assert (source[y, x] == 0).all(), "the centre of the disk must be black in the control"
        assert tuple(target[y, x]) == spec.circle.rgb
        white = (source == 255).all(-1)
        disk = (target == spec.circle.rgb).all(-1)
        assert set(np.unique(source)) <= {0, 255}
        assert white.any() and not (white & ~disk).any(), "the outline must trace the disk's edge"
        assert white.sum() < disk.sum() or disk.sum() < 200, "a filled disk is not an outline"
        assert set(map(tuple, target.reshape(-1, 3))) <= {spec.circle.rgb, spec.background.rgb}
        assert parse_fill50k_prompt(prompt) == (spec.circle, spec.background)
        clipped += not (spec.radius <= min(x, y, 127 - x, 127 - y))
    assert clipped > 0, "some circles should be clipped by the border"


# -- writing -------------------------------------------------------------------


def test_layout_manifest_and_prompts(fill_dir):
    lines = (fill_dir / "prompt.json").read_text().splitlines()
    assert len(lines) == NUM
    for index, line in enumerate(lines):
        record = json.loads(line)
        assert record["source"] == f"source/{index}.png" and record["target"] == f"target/{index}.png"
        spec = fill50k_spec(index, size=SIZE, seed=3)
        assert record["prompt"] == spec.prompt
        assert parse_fill50k_prompt(record["prompt"]) == (spec.circle, spec.background)


def test_written_images_equal_the_in_memory_sample(fill_dir):
    for index in (0, 77, NUM - 1):
        source, target, _ = render_fill50k_sample(index, size=SIZE, seed=3)
        with Image.open(fill_dir / f"source/{index}.png") as saved:
            assert saved.mode == "RGB" and np.array_equal(np.asarray(saved), np.asarray(source))
        with Image.open(fill_dir / f"target/{index}.png") as saved:
            assert saved.mode == "RGB" and np.array_equal(np.asarray(saved), np.asarray(target))


def test_same_seed_gives_identical_bytes_whatever_the_workers(fill_dir, tmp_path):
    again = make_fill50k(tmp_path / "two_workers", num=NUM, size=SIZE, seed=3, workers=2, progress=False)
    assert _files(again) == _files(fill_dir)
    other = make_fill50k(tmp_path / "other_seed", num=10, size=SIZE, seed=4, workers=1, progress=False)
    first_ten = (fill_dir / "prompt.json").read_text().splitlines()[:10]
    assert (other / "prompt.json").read_text().splitlines() != first_ten


def test_output_is_readable_by_paired_dataset(fill_dir):
    dataset = PairedDataset(fill_dir, resolution=None)
    assert len(dataset) == NUM and dataset.report.layout == "ControlNet"
    item = dataset[5]
    source, target, prompt = render_fill50k_sample(5, size=SIZE, seed=3)
    assert item["prompt"] == prompt
    expected_target = np.asarray(target, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1
    expected_source = np.asarray(source, dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(item["pixel_values"].numpy(), expected_target, atol=1e-6)
    np.testing.assert_allclose(item["conditioning_pixel_values"].numpy(), expected_source, atol=1e-6)


def test_refuses_to_overwrite_an_existing_dataset(tmp_path):
    out = make_fill50k(tmp_path / "data", num=3, size=SIZE, seed=0, workers=1, progress=False)
    before = (out / "prompt.json").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_fill50k(out, num=2, size=SIZE, seed=1, workers=1, progress=False)
    assert (out / "prompt.json").read_bytes() == before
    make_fill50k(out, num=2, size=SIZE, seed=1, workers=1, progress=False, overwrite=True)
    assert len((out / "prompt.json").read_text().splitlines()) == 2
    assert not (out / "prompt.json.partial").exists()


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num": 0}, "num"), ({"size": 8}, "size"), ({"seed": -1}, "seed"), ({"workers": 0}, "workers")],
)
def test_bad_arguments_are_named(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_fill50k(tmp_path / "data", **{"num": 2, "size": SIZE, "progress": False, **kwargs})
    assert not (tmp_path / "data" / "prompt.json").exists()
