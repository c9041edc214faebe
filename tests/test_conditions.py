"""Conditions: each makes its control image and scores ground-truth targets near-perfectly and
someone else's control low; the outline of a Fill50k pair scores the existing disk IoU."""

import sys

import numpy as np
import pytest
from PIL import Image

from lite_controlnet.conditions import CONDITIONS, get_condition, object_scores
from lite_controlnet.conditions.canny import canny_edges
from lite_controlnet.data.fill50k import fill50k_spec, render_fill50k_sample
from lite_controlnet.data.shapes import ShapeObject, ShapesScene, shapes_scene
from lite_controlnet.errors import UsageError
from lite_controlnet.evaluation.metrics import fill50k_scores

SCENES = [shapes_scene(index, 128, (1, 4), seed=3) for index in range(6)]
TARGETS = [scene.render() for scene in SCENES]


def test_registry_names_and_settings():
    assert set(CONDITIONS) == {"outline", "canny", "segmentation", "scribble", "depth"}
    for name, condition in CONDITIONS.items():
        assert get_condition(name) is condition and condition.name == name
    canny = get_condition("canny", low_threshold=20, high_threshold=40)
    assert canny.params == {"low_threshold": 20, "high_threshold": 40}
    with pytest.raises(ValueError, match="unknown condition 'depthh': expected one of outline, canny"):
        get_condition("depthh")
    with pytest.raises(ValueError, match="does not take the settings 'width'"):
        get_condition("outline", width=3)
    with pytest.raises(ValueError, match="must be >= low_threshold"):
        get_condition("canny", low_threshold=200, high_threshold=100)


@pytest.mark.parametrize("name,floor", [("outline", 0.99), ("canny", 0.99), ("segmentation", 0.99), ("scribble", 0.95)])
def test_ground_truth_scores_high_and_other_controls_low(name, floor):
    condition = get_condition(name)
    truth, mismatched = [], []
    for k, (scene, target) in enumerate(zip(SCENES, TARGETS)):
        control = condition.from_scene(scene, target)
        assert control.size == (128, 128) and control.mode == "RGB"
        truth.append(condition.controllability(target, control, scene.prompt))
        other = TARGETS[(k + 1) % len(TARGETS)]  # another scene's image against this control
        mismatched.append(condition.controllability(other, control, scene.prompt))
    assert min(truth) >= floor, truth
    assert np.mean(mismatched) < 0.45 and max(mismatched) < 0.7, mismatched


def test_outline_of_a_fill50k_pair_is_its_disk_iou():
    outline = get_condition("outline")
    for index in range(4):
        control, target, prompt = render_fill50k_sample(index, 64, seed=0)
        other = render_fill50k_sample(index + 10, 64, seed=0)[1]
        for image in (target, other):
            scores = outline.score(image, control, prompt)
            assert scores["outline_iou"] == fill50k_scores(image, control, prompt)["disk_iou"]
        # a one-circle scene draws Fill50k's own control, pixel for pixel
        spec = fill50k_spec(index, 64, seed=0)
        disk = ShapeObject("circle", spec.circle, spec.centre, spec.radius)
        scene = ShapesScene(index, 0, 64, spec.background, (disk,))
        assert np.array_equal(np.asarray(outline.from_scene(scene)), np.asarray(control))
        assert np.array_equal(np.asarray(scene.render()), np.asarray(target))


def test_outline_without_prompt_finds_the_foreground():
    outline = get_condition("outline")
    scene, target = SCENES[0], TARGETS[0]
    control = outline.from_scene(scene)
    assert outline.score(target, control)["outline_iou"] > 0.97
    flat = Image.new("RGB", target.size, scene.background.rgb)
    assert outline.score(flat, control)["outline_iou"] == 0.0


def test_canny_is_opencv_canny_at_its_thresholds():
    import cv2

    # a smooth photo-like image: gradients of every strength, so the thresholds matter
    coarse = Image.fromarray((np.random.default_rng(0).random((6, 5, 3)) * 255).astype(np.uint8))
    image = coarse.resize((40, 48), Image.BICUBIC)
    for low, high in ((100, 200), (30, 60)):
        control = get_condition("canny", low_threshold=low, high_threshold=high).from_image(image)
        expected = cv2.Canny(np.asarray(image), low, high)
        assert np.array_equal(np.asarray(control)[:, :, 0], expected)
        assert np.array_equal(canny_edges(image, low, high), expected > 0)
    assert canny_edges(image, 30, 60).sum() > canny_edges(image, 100, 200).sum()  # lower: more edges


def test_canny_without_opencv_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(UsageError, match=r"needs OpenCV, which is not installed: pip install opencv-python-headless"):
        get_condition("canny").from_image(TARGETS[0])


def test_segmentation_needs_the_prompt_colours():
    segmentation = get_condition("segmentation")
    scene, target = next((s, t) for s, t in zip(SCENES, TARGETS) if len({obj.kind for obj in s.objects}) > 1)
    control = segmentation.from_scene(scene)
    assert segmentation.score(target, control, None) == {"miou": None}
    # the right layout with the objects' colours swapped scores low: objects match by colour
    swapped = np.asarray(target).copy()
    labels = scene.labels()
    order = list(range(len(scene.objects)))[::-1]
    for k, j in enumerate(order):
        swapped[labels == k + 1] = scene.objects[j].colour.rgb
    assert segmentation.controllability(target, control, scene.prompt) == 1.0
    assert segmentation.controllability(Image.fromarray(swapped), control, scene.prompt) < 0.9


def test_scribble_is_partial_and_the_same_for_a_scene():
    scribble, outline = get_condition("scribble"), get_condition("outline")
    for scene in SCENES[:3]:
        first, again = scribble.from_scene(scene), scribble.from_scene(scene)
        assert np.array_equal(np.asarray(first), np.asarray(again))
        assert np.asarray(first).any()
    # another scene, other strokes
    assert not np.array_equal(np.asarray(scribble.from_scene(SCENES[0])), np.asarray(scribble.from_scene(SCENES[1])))


def test_object_scores_of_the_truth_and_of_mistakes():
    for scene, target in zip(SCENES, TARGETS):
        truth = object_scores(target, target, scene.prompt)
        assert truth["object_iou"] == 1.0 and truth["object_count"] == len(scene.objects)
        assert truth["right_object_count"] == 1.0
        assert truth["object_colour_error"] < 0.5 and truth["background_colour_error"] < 0.5
    scene, target = next((s, t) for s, t in zip(SCENES, TARGETS) if len(s.objects) >= 2)
    # the last object left out: one object fewer, its IoU 0
    missing = ShapesScene(scene.index, scene.seed, scene.size, scene.background, scene.objects[:-1]).render()
    scores = object_scores(missing, target, scene.prompt)
    assert scores["object_count"] == len(scene.objects) - 1 and scores["right_object_count"] == 0.0
    assert scores["object_iou"] <= 1 - 1 / len(scene.objects) + 1e-9
    # the right places in a wrong colour: a colour error
    shifted = np.clip(np.asarray(target).astype(int) + [40, -40, 0], 0, 255).astype(np.uint8)
    assert object_scores(Image.fromarray(shifted), target, scene.prompt)["object_colour_error"] > 5
    # another scene's image: low IoU
    other = next(t for s, t in zip(SCENES, TARGETS) if s is not scene)
    assert object_scores(other, target, scene.prompt)["object_iou"] < 0.3


def test_scores_refuse_images_of_another_size():
    for name in ("outline", "canny", "segmentation", "scribble"):
        condition = get_condition(name)
        control = condition.from_scene(SCENES[0], TARGETS[0])
        with pytest.raises(ValueError, match="image is 64x64 but control is 128x128"):
            condition.score(TARGETS[0].resize((64, 64)), control, SCENES[0].prompt)
    with pytest.raises(ValueError, match="Cannot parse shapes prompt"):
        object_scores(TARGETS[0], TARGETS[0], "a cat on a mat")
