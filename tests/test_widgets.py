"""The notebook widgets, driven from code as a browser would: set values, press buttons."""

import datetime
import io
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
import traitlets

from conftest import randomize_
from lite_controlnet import LiteControlNetModel, LiteControlNetPipeline
from lite_controlnet.data.paired import PairedDataset
from lite_controlnet.data.fill50k import make_fill50k
from lite_controlnet.training.logs import LossLog
from lite_controlnet.training.trainer import EpochEnd
from lite_controlnet.notebook.widgets import (
    EpochViewer,
    SamplePanel,
    circle_control,
    loss_plot,
    preview_pairs,
    uploaded_files,
    uploaded_image,
)

STEPS = 2  # denoising steps: enough for the control to show, and fast


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = make_fill50k(tmp_path_factory.mktemp("fill50k"), num=6, size=64, progress=False, workers=1)
    return PairedDataset(folder, resolution=64)


@pytest.fixture(scope="module")
def pipe(tiny_base_dir, tiny_base):
    # random weights stand in for a trained module: its residuals are not zero
    lite = randomize_(LiteControlNetModel.from_unet(tiny_base.unet), std=0.3)
    return LiteControlNetPipeline.from_base(tiny_base_dir, controlnet=lite)


@pytest.fixture
def panel(pipe, dataset):
    panel = SamplePanel(pipe, dataset)
    panel.steps.value = STEPS
    return panel


def pixels(image):
    if isinstance(image, (bytes, memoryview)):  # an Image widget's value (ipywidgets 8 holds a memoryview)
        image = PIL.Image.open(io.BytesIO(image))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_generate_button_shows_a_new_image_for_new_settings(panel):
    assert panel.result.value == b""  # nothing runs before the button is pressed
    panel.generate_button.click()
    first = panel.result.value
    assert pixels(first).shape == (64, 64, 3)
    panel.seed.value = 1
    panel.generate_button.click()
    assert not np.array_equal(pixels(panel.result.value), pixels(first))
    panel.seed.value = 0
    panel.generate_button.click()
    assert np.array_equal(pixels(panel.result.value), pixels(first))  # same settings, same image
    assert "Done" in panel.status.value and not panel.generate_button.disabled


def test_strength_zero_is_the_text_only_image_and_one_is_not(panel, pipe):
    panel.strength.value = 0
    at_zero = panel.generate()
    assert pixels(panel.result.value).tolist() == pixels(at_zero).tolist()  # what it shows is what it returns
    text_only = pipe(panel.prompt.value, None, num_inference_steps=STEPS, guidance_scale=panel.guidance.value,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(pixels(at_zero), pixels(text_only))
    assert np.array_equal(pixels(panel.text_only()), pixels(text_only))
    panel.strength.value = 1
    assert np.abs(pixels(panel.generate()) - pixels(text_only)).max() > 2
    assert panel.strength.min == 0 and panel.strength.max == 2


def test_control_window_changes_the_image(panel):
    full = pixels(panel.generate())
    panel.window.value = (0.5, 1.0)
    assert not np.array_equal(pixels(panel.generate()), full)


def test_dataset_sample_sets_control_image_and_prompt(panel, dataset):
    assert panel.source == "dataset"
    panel.index.value = 3
    assert panel.prompt.value == dataset.records[3].prompt
    expected = (dataset.control_image(3).permute(1, 2, 0).numpy() * 255).round()
    assert np.array_equal(pixels(panel.control_image()), expected.astype(np.int16))
    assert pixels(panel.control_preview.value).tolist() == pixels(panel.control_image()).tolist()


def test_circle_sliders_draw_the_control(panel):
    panel.source = "circle"
    panel.x.value, panel.y.value, panel.radius.value = 0.25, 0.5, 0.125
    image = pixels(panel.control_image())
    assert image.shape == (64, 64, 3)
    assert image[32, 16].sum() == 0  # the centre is black
    assert image[32, 16 + 8].min() == 255 and image[32, 16 - 8].min() == 255  # the outline, radius 8 px
    assert pixels(panel.control_preview.value).tolist() == image.tolist()
    with_circle = pixels(panel.generate())
    panel.x.value = 0.75
    assert not np.array_equal(pixels(panel.generate()), with_circle)
    with pytest.raises(ValueError, match="this panel offers"):
        panel.source = "webcam"


def test_circle_control_matches_fill50k_line_width():
    image = np.asarray(circle_control(0.5, 0.5, 0.25, 512))
    row = image[256, :, 0]
    assert (row == 255).sum() == 2 * 4  # two crossings of a 4 px outline (512 / 128)


def upload_values(content):
    v7 = {"circle.png": {"metadata": {"name": "circle.png", "type": "image/png", "size": len(content)},
                         "content": content}}
    v8 = ({"name": "circle.png", "type": "image/png", "size": len(content),
           "last_modified": datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc),
           "content": memoryview(content)},)
    return {"ipywidgets 7": v7, "ipywidgets 8": v8}


def set_upload(panel, value):
    """Set the upload widget's value; a stand-in holds a value of the other ipywidgets version."""
    try:
        panel.upload.value = value
    except traitlets.TraitError:
        panel.upload = SimpleNamespace(value=value)
        panel._refresh_control()


@pytest.mark.parametrize("version", ["ipywidgets 7", "ipywidgets 8"])
def test_upload_works_with_both_ipywidgets_value_forms(panel, version):
    uploaded = circle_control(0.3, 0.6, 0.2, 96)  # another size: cropped and resized to 64
    value = upload_values(png_bytes(uploaded))[version]
    assert uploaded_files(value) == [("circle.png", png_bytes(uploaded))]
    assert np.array_equal(pixels(uploaded_image(value)), pixels(uploaded))
    panel.source = "upload"
    set_upload(panel, value)
    control = panel.control_image()
    assert control.size == (64, 64)
    assert np.array_equal(pixels(control), pixels(uploaded.resize((64, 64), PIL.Image.BILINEAR)))
    assert pixels(panel.control_preview.value).tolist() == pixels(control).tolist()
    from_upload = pixels(panel.generate())
    panel.source = "circle"
    assert not np.array_equal(pixels(panel.generate()), from_upload)


def test_upload_problems_are_shown_in_the_panel(panel):
    panel.source = "upload"
    assert "No image uploaded" in panel.status.value
    panel.generate_button.click()  # the button reports the error instead of failing silently
    assert "No image uploaded" in panel.status.value and panel.result.value == b""
    assert not panel.generate_button.disabled
    with pytest.raises(ValueError, match="notes.txt"):
        uploaded_image({"notes.txt": {"metadata": {}, "content": b"not an image"}})
    assert uploaded_image(()) is None and uploaded_image({}) is None
    panel.source = "circle"  # a control image again: the message goes
    assert panel.status.value == "Press Generate."


def test_strength_strip_uses_one_seed_at_each_strength(panel):
    strengths = (0, 1, 2)
    strip = panel.strength_strip(strengths)
    assert pixels(panel.strip.value).tolist() == pixels(strip).tolist()
    size = 128  # 64 px images are enlarged to 128 px tiles, for legible captions
    header = strip.height - size
    assert strip.width == size * (1 + len(strengths))

    def tile(k):
        return pixels(strip.crop((size * k, header, size * (k + 1), header + size)))

    def enlarged(image):
        return pixels(image.resize((size, size), PIL.Image.NEAREST))

    assert np.array_equal(tile(0), enlarged(panel.control_image()))
    assert np.array_equal(tile(1), enlarged(panel.text_only()))
    panel.strength.value = 2
    assert np.array_equal(tile(3), enlarged(panel.generate()))
    assert np.abs(tile(2) - tile(1)).max() > 2
    panel.strip_button.click()  # the default strengths 0, 0.5, 1, 1.5, 2
    assert PIL.Image.open(io.BytesIO(panel.strip.value)).width == size * 6


def test_panel_without_dataset_offers_circle_and_upload(pipe):
    panel = SamplePanel(pipe)
    assert panel.sources == ("circle", "upload") and panel.source == "circle"
    assert panel.resolution == 64  # the tiny base's UNet sample size times the VAE factor
    assert panel.control_image().size == (64, 64)


def grid_image(colour, size=(80, 40)):
    return PIL.Image.new("RGB", size, colour)


def test_epoch_viewer_shows_the_chosen_epoch(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    colours = {0: "red", 1: "green"}
    for epoch, colour in colours.items():
        grid_image(colour).save(samples / f"epoch-{epoch:03d}.png")
    grid_image("black").save(samples / "epoch-002.partial.png")  # a grid being written: not an epoch
    grid_image("black").save(samples / "step-00000003.png")
    viewer = EpochViewer.from_folder(tmp_path)
    assert sorted(viewer.grids) == [0, 1] and viewer.epoch == 1  # the newest is shown
    assert viewer.image.value == (samples / "epoch-001.png").read_bytes()
    viewer.slider.value = 0  # the user moves the slider
    assert viewer.image.value == (samples / "epoch-000.png").read_bytes()
    assert "epoch 0" in viewer.label.value

    # training goes on: the callback adds epoch 2 and shows it
    grid = grid_image("blue")
    grid.save(samples / "epoch-002.png")
    viewer.on_epoch_end(EpochEnd(epoch=2, step=16, grid=grid, grid_path=samples / "epoch-002.png", output=tmp_path))
    assert viewer.epoch == 2 and viewer.slider.max == 2 and "step 16" in viewer.label.value
    assert pixels(viewer.image.value)[0, 0].tolist() == [0, 0, 255]
    viewer.slider.value = 1
    assert pixels(viewer.image.value)[0, 0].tolist() == [0, 128, 0]
    assert pixels(viewer.grid(2))[0, 0].tolist() == [0, 0, 255]
    with pytest.raises(KeyError, match="epochs with a grid"):
        viewer.show(7)


def test_epoch_viewer_of_a_new_run_is_empty_and_takes_grids_without_files(tmp_path):
    viewer = EpochViewer.from_folder(tmp_path / "not-yet")
    assert viewer.grids == {} and viewer.epoch is None and viewer.image.value == b""
    viewer.on_epoch_end(EpochEnd(epoch=0, step=0, grid=grid_image("red"), grid_path=None, output=tmp_path))
    assert viewer.epoch == 0 and pixels(viewer.image.value)[0, 0].tolist() == [255, 0, 0]
    viewer.on_epoch_end(EpochEnd(epoch=0, step=0, grid=grid_image("green"), grid_path=None, output=tmp_path))
    assert pixels(viewer.image.value)[0, 0].tolist() == [0, 128, 0]  # a replaced grid is shown again


def test_epoch_viewer_shows_the_loss_curve(tmp_path):
    log = LossLog(tmp_path)
    for step in range(1, 6):
        log.append(step, 0, 1.0 / step, 1e-4, step * 0.5)
    image = loss_plot(tmp_path)
    assert bytes(image.value).startswith(b"\x89PNG") and (tmp_path / "logs" / "loss.png").is_file()
    viewer = EpochViewer.from_folder(tmp_path)
    assert viewer.loss.value == (tmp_path / "logs" / "loss.png").read_bytes()


def test_preview_pairs_has_controls_above_targets(dataset):
    fig = preview_pairs(dataset, count=3)
    axes = fig.get_axes()
    assert len(axes) == 6
    assert axes[0].get_title().replace("\n", " ") == dataset.records[0].prompt
    control = axes[0].get_images()[0].get_array()
    assert np.array_equal(np.asarray(control), (dataset.control_image(0).permute(1, 2, 0).numpy() * 255).round())
