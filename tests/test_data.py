"""PairedDataset: both manifest layouts, ControlNet transforms, and errors a user can act on."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from lite_controlnet.data.paired import DatasetError, PairedDataset

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _flat(path, colour, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    # An adaptive palette keeps the colour exact; the default web palette would dither it.
    image = image.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)
    image.save(path)
    return path


def _manifest(path, entries):
    lines = [entry if isinstance(entry, str) else json.dumps(entry) for entry in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


def _controlnet_dir(root, n=3):
    """n pairs: control i is a flat grey of level 10*i, target a flat (200, 100, i)."""
    entries = []
    for i in range(n):
        _flat(root / "source" / f"{i}.png", (10 * i,) * 3)
        _flat(root / "target" / f"{i}.png", (200, 100, i))
        entries.append({"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": f"prompt {i}"})
    _manifest(root / "prompt.json", entries)
    return root


def _error(match_line, *args, **kwargs):
    """Construct a dataset expecting a DatasetError; return its message."""
    with pytest.raises(DatasetError) as info:
        PairedDataset(*args, **kwargs)
    message = str(info.value)
    assert f"line {match_line}" in message, message
    return message


# -- reading -------------------------------------------------------------------


def test_controlnet_layout_values_shapes_and_ranges(tmp_path):
    dataset = PairedDataset(_controlnet_dir(tmp_path), resolution=16)
    assert len(dataset) == 3 and dataset.report.layout == "ControlNet"
    item = dataset[2]
    assert item["prompt"] == "prompt 2" and item["index"] == 2
    target, control = item["pixel_values"], item["conditioning_pixel_values"]
    assert target.shape == control.shape == (3, 16, 16)
    assert target.dtype == control.dtype == torch.float32
    # target in [-1, 1], control in [0, 1]: flat colours come through exactly
    expected = torch.tensor([200, 100, 2]) / 127.5 - 1
    assert torch.allclose(target, expected[:, None, None].expand(3, 16, 16), atol=1e-6)
    assert torch.allclose(control, torch.full((3, 16, 16), 20 / 255), atol=1e-6)
    record = dataset.records[1]
    assert (record.index, record.line, record.prompt) == (1, 2, "prompt 1")
    assert record.source == tmp_path / "source" / "1.png"


def test_diffusers_layout_maps_image_to_target_and_conditioning_to_control(tmp_path):
    _flat(tmp_path / "img.png", RED)
    _flat(tmp_path / "cond.png", BLUE)
    for name in ("metadata.jsonl", "train.jsonl", "pairs.jsonl"):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        _flat(folder / "images" / "a.png", RED)
        _flat(folder / "conditioning" / "a.png", BLUE)
        _manifest(folder / name, [{"image": "images/a.png", "conditioning_image": "conditioning/a.png", "text": "hi"}])
        dataset = PairedDataset(folder, resolution=8, manifest="pairs.jsonl" if name == "pairs.jsonl" else None)
        assert dataset.report.layout == "diffusers" and dataset.manifest.name == name
        item = dataset[0]
        assert item["prompt"] == "hi"
        assert item["pixel_values"][:, 0, 0].tolist() == [1.0, -1.0, -1.0]  # red target
        assert item["conditioning_pixel_values"][:, 0, 0].tolist() == [0.0, 0.0, 1.0]  # blue control


def test_resize_and_centre_crop_are_identical_for_both_images(tmp_path):
    stripes = np.zeros((20, 60, 3), np.uint8)  # landscape: red | green | blue, 20 px each
    stripes[:, :20], stripes[:, 20:40], stripes[:, 40:] = RED, GREEN, BLUE
    Image.fromarray(stripes).save(tmp_path / "s.png")
    Image.fromarray(stripes).save(tmp_path / "t.png")
    Image.fromarray(stripes.transpose(1, 0, 2).copy()).save(tmp_path / "portrait.png")
    _manifest(
        tmp_path / "prompt.json",
        [
            {"source": "s.png", "target": "t.png", "prompt": "landscape"},
            {"source": "portrait.png", "target": "portrait.png", "prompt": "portrait"},
        ],
    )
    # Shorter side already 20: only the centre crop applies, leaving the green stripe.
    for index in (0, 1):
        item = PairedDataset(tmp_path, resolution=20)[index]
        assert torch.equal(item["conditioning_pixel_values"], torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 20, 20))
    # Downscaled to 30x10, then cropped: both images go through the same geometry.
    item = PairedDataset(tmp_path, resolution=10)[0]
    assert item["pixel_values"].shape == (3, 10, 10)
    assert torch.allclose(item["conditioning_pixel_values"] * 2 - 1, item["pixel_values"], atol=1e-6)
    assert item["conditioning_pixel_values"][1, :, 2:8].min() == 1.0  # the middle is green
    native = PairedDataset(tmp_path, resolution=None)[0]
    assert native["pixel_values"].shape == (3, 20, 60)


def test_batches_through_a_dataloader(tmp_path):
    loader = torch.utils.data.DataLoader(PairedDataset(_controlnet_dir(tmp_path), resolution=8), batch_size=2)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (2, 3, 8, 8)
    assert batch["prompt"] == ["prompt 0", "prompt 1"] and batch["index"].tolist() == [0, 1]


def test_construction_is_lazy(tmp_path):
    entries = [{"source": f"s/{i}.png", "target": f"t/{i}.png", "prompt": "p"} for i in range(50_000)]
    _manifest(tmp_path / "prompt.json", entries)
    dataset = PairedDataset(tmp_path)  # no image exists: none may be opened here
    assert len(dataset) == 50_000
    with pytest.raises(DatasetError, match="line 7"):
        dataset[6]


# -- manifests -----------------------------------------------------------------


def test_missing_manifest_names_the_files_looked_for(tmp_path):
    with pytest.raises(DatasetError) as info:
        PairedDataset(tmp_path)
    for name in ("prompt.json", "metadata.jsonl", "train.jsonl", "manifest="):
        assert name in str(info.value)
    with pytest.raises(DatasetError, match="nope.jsonl"):
        PairedDataset(tmp_path, manifest="nope.jsonl")


def test_several_manifests_ask_which(tmp_path):
    _controlnet_dir(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(DatasetError, match="manifest="):
        PairedDataset(tmp_path)
    assert len(PairedDataset(tmp_path, manifest="prompt.json")) == 3


GOOD = {"source": "source/0.png", "target": "target/0.png", "prompt": "ok"}


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('"a string"', "expected a JSON object"),
        ({"source": "source/0.png", "target": "target/0.png"}, "missing key(s) 'prompt'"),
        ({"image": "target/0.png", "conditioning_image": "source/0.png", "text": "x"}, "missing key(s)"),
        ({**GOOD, "prompt": ""}, "non-empty text prompt"),
        ({**GOOD, "prompt": "   "}, "non-empty text prompt"),
        ({**GOOD, "prompt": 3}, "non-empty text prompt"),
        ({**GOOD, "source": ""}, "must be an image path"),
        ({**GOOD, "target": None}, "must be an image path"),
        ({**GOOD, "source": "../outside.png"}, "leaves the dataset folder"),
        ({**GOOD, "target": "source/../../outside.png"}, "leaves the dataset folder"),
        ({**GOOD, "source": "/etc/passwd"}, "leaves the dataset folder"),
    ],
)
def test_bad_manifest_lines_name_file_line_and_what_is_accepted(tmp_path, bad, expected):
    _controlnet_dir(tmp_path, n=1)
    _manifest(tmp_path / "prompt.json", [GOOD, "", bad, GOOD])
    message = _error(3, tmp_path)
    assert str(tmp_path / "prompt.json") in message and expected in message
    if "key" in expected or "object" in expected:
        for key in ("'source'", "'target'", "'prompt'", "'image'", "'conditioning_image'", "'text'"):
            assert key in message


def test_first_line_without_a_layout_lists_both_layouts(tmp_path):
    _manifest(tmp_path / "prompt.json", [{"src": "a.png", "tgt": "b.png", "caption": "c"}])
    message = _error(1, tmp_path)
    assert "'source'" in message and "'conditioning_image'" in message


def test_absolute_paths_inside_the_folder_are_accepted(tmp_path):
    _controlnet_dir(tmp_path, n=1)
    _manifest(tmp_path / "prompt.json", [{**GOOD, "source": str(tmp_path / "source" / "0.png")}])
    assert PairedDataset(tmp_path, resolution=None)[0]["conditioning_pixel_values"].shape == (3, 30, 40)


def test_a_folder_named_through_dot_dot_is_the_folder_itself(tmp_path):
    _controlnet_dir(tmp_path / "data", n=1)
    _manifest(tmp_path / "data" / "prompt.json", [GOOD])
    (tmp_path / "runs").mkdir()
    dataset = PairedDataset(tmp_path / "runs" / ".." / "data", resolution=None)
    assert len(dataset) == 1 and dataset.root == tmp_path / "data"


def test_empty_manifest_is_an_error(tmp_path):
    (tmp_path / "prompt.json").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty"):
        PairedDataset(tmp_path)


@pytest.mark.parametrize("kwargs, name", [({"on_error": "ignore"}, "'ignore'"), ({"resolution": 0}, "0")])
def test_bad_options_are_named(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        PairedDataset(_controlnet_dir(tmp_path), **kwargs)


# -- images --------------------------------------------------------------------


def _one_pair(root, source_writer, target_writer=None):
    source_writer(root / "source" / "0.png")
    (target_writer or (lambda path: _flat(path, RED)))(root / "target" / "0.png")
    _manifest(root / "prompt.json", ["", GOOD])  # the record is on line 2
    return PairedDataset(root)


def _item_error(dataset):
    with pytest.raises(DatasetError) as info:
        dataset[0]
    message = str(info.value)
    assert "line 2" in message and str(dataset.manifest) in message
    return message


def test_missing_image_names_file_and_line(tmp_path):
    dataset = _one_pair(tmp_path, lambda path: path.parent.mkdir(parents=True))
    assert "source" in _item_error(dataset) and "0.png not found" in _item_error(dataset)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_image_names_file_and_line(tmp_path, content):
    def write(path):
        _flat(path, GREEN, size=(64, 64))
        data = path.read_bytes()
        path.write_bytes(content if isinstance(content, bytes) else data[: len(data) // 2])

    message = _item_error(_one_pair(tmp_path, write))
    assert "cannot read" in message and "source/0.png" in message


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "I;16"])
def test_non_rgb_images_need_convert_mode(tmp_path, mode):
    def write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "I;16":
            Image.fromarray(np.full((30, 40), 0x8000, np.uint16)).save(path)
        else:
            _flat(path, (255,) * 3 if mode == "1" else (128,) * 3, mode=mode)  # "1" would dither grey

    dataset = _one_pair(tmp_path, write)
    message = _item_error(dataset)
    assert f"mode {mode!r}" in message and "convert_mode=True" in message

    converting = PairedDataset(tmp_path, convert_mode=True, resolution=None)
    with pytest.warns(UserWarning, match="converted"):
        control = converting[0]["conditioning_pixel_values"]
    assert control.shape == (3, 30, 40)
    expected = 1.0 if mode == "1" else 128 / 255  # 16-bit 0x8000 keeps its top byte, 128
    assert torch.allclose(control, torch.full_like(control, expected), atol=1e-6)
    report = converting.check()
    assert report.converted == 1 and report.ok == 1 and "1 images converted" in str(report)


def test_32_bit_images_are_refused_even_with_convert_mode(tmp_path):
    def write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((30, 40), 70_000, np.int32)).save(path.with_suffix(".tiff"))
        path.with_suffix(".tiff").rename(path)  # Pillow reads by content, not suffix

    _one_pair(tmp_path, write)
    with pytest.raises(DatasetError, match="mode 'I'"):
        PairedDataset(tmp_path, convert_mode=True)[0]


def test_pairs_of_different_sizes_are_refused(tmp_path):
    dataset = _one_pair(tmp_path, lambda path: _flat(path, RED, size=(40, 30)), lambda path: _flat(path, RED, size=(30, 40)))
    message = _item_error(dataset)
    assert "40x30" in message and "30x40" in message and "same size" in message


# -- skipping and checking -----------------------------------------------------


def test_skip_mode_counts_and_locates_every_skipped_line(tmp_path):
    _controlnet_dir(tmp_path, n=3)
    lines = [
        {"source": "source/0.png", "target": "target/0.png", "prompt": "a"},
        "{broken",
        {"source": "source/1.png", "target": "target/1.png", "prompt": " "},
        {"source": "source/2.png", "target": "target/2.png", "prompt": "c"},
        {"source": "../x.png", "target": "target/2.png", "prompt": "d"},
    ]
    _manifest(tmp_path / "prompt.json", lines)
    dataset = PairedDataset(tmp_path, on_error="skip", resolution=8)
    assert len(dataset) == 2 and [r.line for r in dataset.records] == [1, 4]
    assert dataset[1]["prompt"] == "c" and dataset[1]["index"] == 1
    report = dataset.report
    assert (report.ok, report.skipped) == (2, 3)
    assert [problem.line for problem in report.problems] == [2, 3, 5]
    assert all(str(dataset.manifest) in problem.message for problem in report.problems)
    assert report.problems[2].file is not None and report.problems[2].file.name == "x.png"
    assert "2 ok, 3 skipped" in str(report)


def test_all_lines_skipped_is_an_error_that_lists_them(tmp_path):
    _manifest(tmp_path / "prompt.json", ["{broken", "[]"])
    with pytest.raises(DatasetError, match="empty") as info:
        PairedDataset(tmp_path, on_error="skip")
    assert "line 1" in str(info.value) and "line 2" in str(info.value)


def test_check_opens_every_image(tmp_path):
    _controlnet_dir(tmp_path, n=4)
    (tmp_path / "target" / "1.png").unlink()
    _flat(tmp_path / "source" / "2.png", RED, mode="L")

    with pytest.raises(DatasetError, match="line 2"):
        PairedDataset(tmp_path).check()

    dataset = PairedDataset(tmp_path, on_error="skip")
    report = dataset.check()
    assert (report.ok, report.skipped, report.converted) == (2, 2, 0)
    assert [problem.line for problem in report.problems] == [2, 3]
    assert report.problems[0].file == tmp_path / "target" / "1.png"
    assert dataset.report is report
    # Bad pairs are gone from the dataset, and indices stay contiguous.
    assert len(dataset) == 2 and [dataset[i]["prompt"] for i in range(2)] == ["prompt 0", "prompt 3"]
    assert [record.index for record in dataset.records] == [0, 1]

    converting = PairedDataset(tmp_path, on_error="skip", convert_mode=True)
    report = converting.check()
    assert (report.ok, report.skipped, report.converted) == (3, 1, 1)


def test_symlinked_folders_may_not_leave_the_dataset_but_symlinked_images_may(tmp_path):
    outside = tmp_path / "elsewhere"
    _flat(outside / "shared.png", RED)
    root = _controlnet_dir(tmp_path / "data", n=1)
    os.symlink(outside / "shared.png", root / "source" / "linked.png")  # a symlinked image: allowed
    os.symlink("/", root / "root")  # a symlinked folder leading out: refused
    os.symlink(outside, root / "shared")  # likewise, even to a harmless place
    _manifest(root / "prompt.json", [{**GOOD, "source": "source/linked.png"}])
    assert PairedDataset(root, resolution=None)[0]["conditioning_pixel_values"][:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    for source in ("root" + str(outside / "shared.png"), "shared/shared.png"):
        _manifest(root / "prompt.json", [GOOD, {**GOOD, "source": source}])
        message = _error(2, root)
        assert "symlinked folder" in message and repr(source) in message
    # the dataset folder itself may be a symlink (e.g. to a copy on local disk)
    os.symlink(root, tmp_path / "link")
    _manifest(root / "prompt.json", [GOOD])
    assert len(PairedDataset(tmp_path / "link")) == 1
