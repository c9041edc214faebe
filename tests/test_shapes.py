"""The shapes world: scenes fixed by (seed, index), prompts that name them, and make_shapes's
dataset (HF layout, its condition recorded, written whole or not at all)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from lite_controlnet.cli import main
from lite_controlnet.conditions import get_condition
from lite_controlnet.conditions.shapes_dataset import make_shapes
from lite_controlnet.data.dataset_folder import dataset_condition, dataset_info
from lite_controlnet.data.paired import PairedDataset
from lite_controlnet.data.shapes import (
    MIN_COLOUR_DISTANCE,
    MIN_VISIBLE_SHARE,
    SHAPE_KINDS,
    parse_shapes_prompt,
    shapes_scene,
)
from lite_controlnet.evaluation.metrics import connected_components


def test_scenes_are_fixed_by_seed_and_index():
    assert shapes_scene(5, 128, (1, 4), seed=2) == shapes_scene(5, 128, (1, 4), seed=2)
    assert shapes_scene(5, 128, (1, 4), seed=2) != shapes_scene(5, 128, (1, 4), seed=3)
    assert shapes_scene(5, 128, (1, 4), seed=2) != shapes_scene(6, 128, (1, 4), seed=2)


def test_scenes_hold_what_the_prompt_says_and_every_object_shows():
    kinds, counts = set(), set()
    for index in range(60):
        scene = shapes_scene(index, 96, (1, 4), seed=0)
        counts.add(len(scene.objects))
        objects, background = parse_shapes_prompt(scene.prompt)
        assert background == scene.background
        assert objects == [(obj.colour, obj.kind) for obj in scene.objects]
        colours = np.array([scene.background.rgb] + [obj.colour.rgb for obj in scene.objects], dtype=float)
        distances = np.linalg.norm(colours[:, None] - colours[None], axis=2)
        assert distances[~np.eye(len(colours), dtype=bool)].min() >= MIN_COLOUR_DISTANCE
        labels = scene.labels()
        for k, obj in enumerate(scene.objects):
            kinds.add(obj.kind)
            whole = obj.mask(96)
            assert not (whole[0].any() or whole[-1].any() or whole[:, 0].any() or whole[:, -1].any())  # inside
            visible = labels == k + 1
            assert visible.sum() >= MIN_VISIBLE_SHARE * whole.sum()
            assert connected_components(visible)[1] == 1  # in one piece: the count is the prompt's
        # the target is the objects' colours where each is in front
        target = np.asarray(scene.render())
        for k, obj in enumerate(scene.objects):
            assert (target[labels == k + 1] == obj.colour.rgb).all()
        assert (target[labels == 0] == scene.background.rgb).all()
    assert counts == {1, 2, 3, 4} and kinds == set(SHAPE_KINDS)
    assert {len(shapes_scene(i, 96, 3).objects) for i in range(10)} == {3}


def test_prompts_read_as_english():
    scene = next(shapes_scene(i, 64, 2) for i in range(50) if shapes_scene(i, 64, 2).background.words[0] in "aeiou")
    first, second = scene.objects
    assert scene.prompt == f"{first.words} and {second.words} on an {scene.background.words} background"
    three = shapes_scene(0, 64, 3).prompt
    assert three.count(", ") == 1 and three.count(" and ") == 1
    objects, _ = parse_shapes_prompt("an orange square, a red circle and a teal triangle on a beige background")
    assert [kind for _, kind in objects] == ["square", "circle", "triangle"]
    for bad in ("a red square", "a red hexagon on a beige background", "a reddish square on a beige background"):
        with pytest.raises(ValueError, match="Cannot parse shapes prompt"):
            parse_shapes_prompt(bad)


def test_bad_arguments_say_what_is_accepted(tmp_path):
    for kwargs, message in (({"num": 0}, "num must be an integer >= 1"), ({"size": 8}, "size must be an integer >= 32"),
                            ({"objects": (0, 4)}, "from 1 to 4"), ({"objects": (3, 2)}, "from 3 to 4"),
                            ({"condition": "dept"}, "unknown condition 'dept'"),
                            ({"condition": "depth"}, "'depth' condition cannot be drawn from a scene"),
                            ({"seed": -1}, "seed must be")):
        with pytest.raises(ValueError, match=message):
            make_shapes(tmp_path / "out", **{"num": 2, **kwargs}, progress=False)
    assert not (tmp_path / "out").exists()


def test_make_shapes_writes_the_hf_layout_with_its_condition(tmp_path):
    out = make_shapes(tmp_path / "data", num=5, size=64, objects=(2, 3), condition="segmentation", seed=4,
                      workers=1, progress=False)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [row["image"] for row in rows] == [f"image/{i}.png" for i in range(5)]
    assert dataset_condition(out) == "segmentation"
    assert dataset_info(out)["objects"] == [2, 3] and dataset_info(out)["seed"] == 4
    segmentation = get_condition("segmentation")
    for index, row in enumerate(rows):
        scene = shapes_scene(index, 64, (2, 3), seed=4)
        assert row["text"] == scene.prompt
        assert np.array_equal(np.asarray(Image.open(out / row["image"])), np.asarray(scene.render()))
        assert np.array_equal(np.asarray(Image.open(out / row["conditioning_image"])),
                              np.asarray(segmentation.from_scene(scene)))
    dataset = PairedDataset(out, resolution=64)
    assert len(dataset) == 5 and dataset[0]["prompt"] == rows[0]["text"]
    assert not (tmp_path / "data.partial").exists()


def test_the_output_does_not_depend_on_workers_or_num(tmp_path):
    one = make_shapes(tmp_path / "one", num=70, size=32, condition="scribble", workers=1, progress=False)
    two = make_shapes(tmp_path / "two", num=130, size=32, condition="scribble", workers=2, progress=False)
    for index in (0, 63, 64, 69):
        for folder in ("image", "conditioning_image"):
            assert (one / folder / f"{index}.png").read_bytes() == (two / folder / f"{index}.png").read_bytes()
    assert (two / "metadata.jsonl").read_text().startswith((one / "metadata.jsonl").read_text())


def test_existing_folders_are_kept_and_failures_leave_nothing(tmp_path, monkeypatch):
    out = make_shapes(tmp_path / "data", num=2, size=32, progress=False)
    before = (out / "metadata.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        make_shapes(out, num=3, size=32, progress=False)
    assert (out / "metadata.jsonl").read_bytes() == before
    make_shapes(out, num=3, size=32, condition="canny", progress=False, overwrite=True)
    assert dataset_condition(out) == "canny" and len((out / "metadata.jsonl").read_text().splitlines()) == 3
    assert sorted(os.listdir(tmp_path)) == ["data"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no dataset"):
        make_shapes(mine, num=2, size=32, progress=False, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"

    def broken(self, scene, target=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(type(get_condition("outline")), "from_scene", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        make_shapes(tmp_path / "new", num=2, size=32, workers=1, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["data", "mine"]


def test_dataset_condition_of_other_folders(tmp_path):
    assert dataset_condition(tmp_path) is None  # e.g. a Fill50k: no dataset.json
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json is not valid JSON"):
        dataset_condition(tmp_path)


def test_make_shapes_command(tmp_path, capsys):
    main(["make-shapes", str(tmp_path / "cli"), "--num", "3", "--size", "48", "--objects", "2-4",
          "--condition", "canny", "--low-threshold", "50", "--seed", "7"])
    assert "Wrote 3 canny pairs" in capsys.readouterr().out
    info = dataset_info(tmp_path / "cli")
    assert info["condition_params"] == {"low_threshold": 50.0, "high_threshold": 200} and info["objects"] == [2, 4]
    for argv, message in ((["--objects", "0-9"], "argument --objects: expected a count or a range such as 1-4"),
                          (["--condition", "depth"], "argument --condition: invalid choice"),
                          (["--num", "0"], "num must be an integer >= 1"),
                          (["--condition", "outline", "--high-threshold", "9"],
                           "--high-threshold applies to another condition than 'outline'")):
        with pytest.raises(SystemExit) as exit:
            main(["make-shapes", str(tmp_path / "bad"), *argv])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
