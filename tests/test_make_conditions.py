"""make_conditions: a folder of images becomes a dataset with canny control images equal to
OpenCV's, captions from .txt files, a metadata.jsonl or one caption; bad folders end in one
error naming the file, with nothing written."""

import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from lite_controlnet.cli import main
from lite_controlnet.conditions.from_images import make_conditions
from lite_controlnet.data.dataset_folder import dataset_condition, dataset_info
from lite_controlnet.data.paired import DatasetError, PairedDataset


def _photos(folder, count=3, captions=True):
    """Smooth random pictures (JPEG and PNG, one in a sub-folder), with .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "more").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        coarse = Image.fromarray((rng.random((5, 6, 3)) * 255).astype(np.uint8))
        path = folder / ("more" if k == count - 1 else "") / (f"p{k}.jpg" if k % 2 else f"p{k}.png")
        coarse.resize((60 + 4 * k, 50), Image.BICUBIC).save(path)
        if captions:
            path.with_suffix(".txt").write_text(f"photo number {k}\n")
        paths.append(path)
    return paths


def test_canny_edges_equal_opencv_and_the_dataset_trains(tmp_path):
    paths = _photos(tmp_path / "photos")
    (tmp_path / "photos" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are left out
    out = make_conditions(tmp_path / "photos", "canny", tmp_path / "data", low_threshold=20, high_threshold=60,
                          progress=False)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    by_source = {row["source_file"]: row for row in rows}
    assert sorted(by_source) == ["more/p2.png", "p0.png", "p1.jpg"]
    for k, path in enumerate(paths):
        row = by_source[path.relative_to(tmp_path / "photos").as_posix()]
        assert row["text"] == f"photo number {k}"
        picture = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(out / row["image"])), picture)
        control = np.asarray(Image.open(out / row["conditioning_image"]))
        assert np.array_equal(control[:, :, 0], cv2.Canny(picture, 20, 60)) and control[:, :, 0].any()
    assert dataset_condition(out) == "canny"
    assert dataset_info(out)["condition_params"] == {"low_threshold": 20, "high_threshold": 60}
    dataset = PairedDataset(out, resolution=32)
    assert len(dataset) == 3 and dataset[0]["conditioning_pixel_values"].shape == (3, 32, 32)


def test_captions_from_metadata_or_one_for_all(tmp_path):
    _photos(tmp_path / "photos", captions=False)
    with pytest.raises(DatasetError, match=r"no caption for .*more/p2.png \(no p2.txt beside it\): pass one caption"):
        make_conditions(tmp_path / "photos", "canny", tmp_path / "data", progress=False)
    out = make_conditions(tmp_path / "photos", "canny", tmp_path / "one", caption="a photo", progress=False)
    assert {json.loads(line)["text"] for line in (out / "metadata.jsonl").read_text().splitlines()} == {"a photo"}
    lines = [{"file_name": name, "text": f"caption of {name}"} for name in ("p0.png", "p1.jpg", "more/p2.png")]
    (tmp_path / "photos" / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = make_conditions(tmp_path / "photos", "canny", tmp_path / "meta", progress=False)
    texts = {json.loads(line)["source_file"]: json.loads(line)["text"]
             for line in (out / "metadata.jsonl").read_text().splitlines()}
    assert texts["more/p2.png"] == "caption of more/p2.png"
    (tmp_path / "photos" / "metadata.jsonl").write_text(json.dumps(lines[0]) + "\n{bad\n")
    with pytest.raises(DatasetError, match=r"metadata.jsonl, line 2: not a JSON object"):
        make_conditions(tmp_path / "photos", "canny", tmp_path / "bad", progress=False)


@pytest.mark.parametrize("problem", ["not an image", "unreadable", "empty folder", "missing folder"])
def test_bad_folders_end_in_one_error_naming_it_and_write_nothing(tmp_path, problem):
    photos = tmp_path / "photos"
    if problem == "empty folder":
        photos.mkdir()
        (photos / "caption.txt").write_text("captions alone are no images")
        named, message = str(photos), "holds no images"
    elif problem == "missing folder":
        named, message = str(photos), "does not exist or is not a folder"
    else:
        _photos(photos)
        bad = photos / ("notes.pdf" if problem == "not an image" else "zz.png")
        bad.write_bytes(b"%PDF-1.4 not a picture" if problem == "not an image" else b"\x89PNG\r\n\x1a\n broken")
        bad.with_suffix(".txt").write_text("a caption")
        named = str(bad)
        message = "is not an image" if problem == "not an image" else "cannot read image"
    with pytest.raises(DatasetError, match=message) as error:
        make_conditions(photos, "canny", tmp_path / "data", progress=False)
    assert named in str(error.value) and "\n" not in str(error.value)
    assert sorted(os.listdir(tmp_path)) == (["photos"] if problem != "missing folder" else [])


def test_conditions_that_need_a_scene_and_overlapping_folders_are_refused(tmp_path):
    _photos(tmp_path / "photos")
    with pytest.raises(ValueError, match="'outline' condition cannot be made from images"):
        make_conditions(tmp_path / "photos", "outline", tmp_path / "data", progress=False)
    with pytest.raises(DatasetError, match="overlap"):
        make_conditions(tmp_path / "photos", "canny", tmp_path / "photos" / "data", progress=False)
    with pytest.raises(DatasetError, match="overlap"):
        make_conditions(tmp_path / "photos", "canny", tmp_path, progress=False)


def test_make_conditions_command(tmp_path, capsys):
    _photos(tmp_path / "photos", captions=False)
    main(["make-conditions", "--images", str(tmp_path / "photos"), "--condition", "canny", "--out",
          str(tmp_path / "data"), "--caption", "a photo", "--low-threshold", "10", "--high-threshold", "30"])
    assert "Wrote canny control images" in capsys.readouterr().out
    assert dataset_info(tmp_path / "data")["condition_params"] == {"low_threshold": 10.0, "high_threshold": 30.0}
    for argv, message in ((["--condition", "outline"], "argument --condition: invalid choice"),
                          (["--condition", "canny", "--low-threshold", "x"], "argument --low-threshold: invalid float"),
                          (["--condition", "canny", "--low-threshold", "90", "--high-threshold", "10"],
                           "must be >= low_threshold"),
                          (["--condition", "canny"], "no caption for")):
        with pytest.raises(SystemExit) as exit:
            main(["make-conditions", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "bad"), *argv])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def tiny_depth_model(tmp_path_factory):
    """A tiny random DPT depth model and its image processor, saved as a local model folder."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    folder = tmp_path_factory.mktemp("tiny-dpt")
    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                       patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
                       fusion_hidden_size=8, head_hidden_size=8, reassemble_factors=[4, 2, 1, 0.5])
    torch.manual_seed(0)
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_depth_through_a_transformers_pipeline(tmp_path, tiny_depth_model, capsys):
    from lite_controlnet.conditions import get_condition

    paths = _photos(tmp_path / "photos")
    out = make_conditions(tmp_path / "photos", "depth", tmp_path / "data", model=tiny_depth_model, progress=False)
    assert dataset_condition(out) == "depth" and dataset_info(out)["condition_params"] == {"model": tiny_depth_model}
    depth = get_condition("depth", model=tiny_depth_model)
    row = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    picture = Image.open(tmp_path / "photos" / row["source_file"]).convert("RGB")
    control = Image.open(out / row["conditioning_image"])
    assert control.size == picture.size
    assert np.array_equal(np.asarray(control), np.asarray(depth.from_image(picture)))
    assert depth.controllability(picture, control) > 0.99
    flat = Image.new("RGB", picture.size, (90, 90, 90))
    assert depth.controllability(flat, control) < depth.controllability(picture, control)
    assert len(paths) == 3
    capsys.readouterr()  # the pipeline's loading bars so far
    # without a model, or with one that is not there: one line that says what to pass
    for argv, message in (([], "needs a depth-estimation model: pass model=... (--depth-model ID_OR_FOLDER)"),
                          (["--depth-model", str(tmp_path / "nowhere")], "cannot load the depth model")):
        with pytest.raises(SystemExit) as exit:
            main(["make-conditions", "--images", str(tmp_path / "photos"), "--condition", "depth",
                  "--out", str(tmp_path / "d2"), *argv])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d2").exists()


def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    picture = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    picture.save(photos / "phone.jpg", exif=exif)
    out = make_conditions(photos, "canny", tmp_path / "data", caption="a phone photo", progress=False)
    assert Image.open(out / "image" / "0.png").size == (20, 40)
    assert Image.open(out / "conditioning_image" / "0.png").size == (20, 40)


def test_the_notebooks_make_your_pairs_once_and_never_mix_two_sources(tmp_path):
    """`prepare_data` (what 01_data and 02_train call): photos become pairs in DATA_DIR once; a
    second call (after a disconnect) reuses them; other photos or another condition are refused
    rather than mixed into the same folder; without photos a dataset id is passed through."""
    from lite_controlnet.notebook.colab import prepare_data

    _photos(tmp_path / "photos")
    _photos(tmp_path / "other", count=2)
    data = prepare_data(tmp_path / "pairs", own_images=tmp_path / "photos", condition="canny")
    assert data == tmp_path / "pairs" and len(PairedDataset(data, resolution=32)) == 3
    written = (data / "metadata.jsonl").read_bytes()
    assert prepare_data(tmp_path / "pairs", own_images=tmp_path / "photos", condition="canny") == data
    for images, condition in ((tmp_path / "other", "canny"), (tmp_path / "photos", "depth")):
        with pytest.raises(FileExistsError, match="choose another DATA_DIR"):
            prepare_data(tmp_path / "pairs", own_images=images, condition=condition)
    assert (data / "metadata.jsonl").read_bytes() == written
    assert prepare_data(tmp_path / "unused", dataset="user/pairs") == "user/pairs"
    assert not (tmp_path / "unused").exists()
