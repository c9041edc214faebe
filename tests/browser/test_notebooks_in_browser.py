"""04_sample and 02_train in a real browser, in each frontend: run all, then act as a person would
(drag sliders, type in their readouts, press buttons, choose tabs, upload files) and check what the
page shows: the pixels of the rendered images, the texts shown, the kinds of widget drawn.

Two frontends (see `jupyter_driver`): Notebook 7 with ipywidgets 8, and classic Notebook 6.5
with ipywidgets 7.7.1, the widget versions Colab pins. About two minutes each on 2 CPU cores
(kernel starts and imports are most of it); `pytest -s` prints the seconds of each run all.
"""

from __future__ import annotations

import io
import re
import time

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from lite_controlnet.presets import QUICK
from lite_controlnet.notebook.widgets import circle_control

from . import jupyter_driver as jd

SAMPLE_STEPS = 4  # denoising steps of each Generate: enough to differ, quick on a CPU


def open_and_run(browser, server, name: str, overrides: dict, sizes: dict | None = None,
                 extra_cells: tuple[str, ...] = ()) -> jd.NotebookPage:
    """Open notebook `name` (with parameters) in a new page and run all its cells; on a failure,
    keep the evidence and say where it is."""
    jd.parametrized_copy(name, server.root, overrides, sizes, list(extra_cells))
    page = None
    try:
        page = jd.NotebookPage.open(browser, server, name)
        seconds = page.run_all()
        print(f"{server.frontend.name} {name}: run all in {seconds:.0f} s")
        return page
    except Exception as error:
        where = ""
        if page is not None:
            shot, log = page.keep_evidence(jd.EVIDENCE, f"{server.frontend.name}-{name}-run-all")
            page.close()
            where = f"\nscreenshot: {shot}\nconsole log: {log}"
        raise AssertionError(f"{name} in {server.frontend.name}: {error}{where}\n"
                             f"server log (tail):\n{server.log_tail(2000)}") from error


@pytest.fixture(scope="module")
def sample(browser, server, quick_run):
    """04_sample run in the page on the QUICK run, with the text-only image shown by an extra cell."""
    page = open_and_run(browser, server, "04_sample",
                        {"QUICK": True, "DATA_DIR": str(quick_run["data"]), "OUTPUT_DIR": str(quick_run["run"])},
                        {"STEPS": SAMPLE_STEPS}, extra_cells=("panel.text_only()",))
    yield page
    page.close()


@pytest.fixture(scope="module")
def training(browser, server, quick_run):
    """02_train run in the page: a new run of 2 epochs of 8 steps on the QUICK run's data."""
    output = server.root / "train-run"
    page = open_and_run(browser, server, "02_train",
                        {"QUICK": True, "DATA_DIR": str(quick_run["data"]), "OUTPUT_DIR": str(output)},
                        {"NUM_SAMPLES": 32, "EPOCHS": 2, "BATCH_SIZE": 4,
                         "TRAIN_OVERRIDES": {"learning_rate": QUICK.learning_rate("lite"), "num_workers": 0,
                                             "num_validation": 2, "validation_steps": 2}})
    page.output_dir = output
    yield page
    page.close()


@pytest.fixture(scope="module")
def own_photos(browser, server):
    """01_data run in the page on a folder of one's own photos (with .txt captions): canny pairs
    made from them, previewed and cached, in QUICK mode."""
    rng = np.random.default_rng(0)
    photos = server.root / "photos"
    photos.mkdir()
    for k in range(4):
        coarse = PIL.Image.fromarray((rng.random((5, 6, 3)) * 255).astype(np.uint8))
        coarse.resize((48, 40), PIL.Image.BICUBIC).save(photos / f"photo{k}.jpg")
        (photos / f"photo{k}.txt").write_text(f"photo number {k}")
    page = open_and_run(browser, server, "01_data",
                        {"QUICK": True, "OWN_IMAGES": str(photos), "CONDITION": "canny",
                         "DATA_DIR": str(server.root / "edges"), "OUTPUT_DIR": str(server.root / "own-run")})
    page.data_dir = server.root / "edges"
    yield page
    page.close()


class Panel:
    """The sample panel as the page shows it (its layout: prompt; tabs and control preview,
    settings, result; strength strip)."""

    def __init__(self, page):
        self.page = page
        self.root = page.widget_output(".widget-button:has-text('Generate')")
        boxes = self.root.locator(".widget-hbox").filter(has=page.page.locator(".widget-tab")).first
        self.preview = boxes.locator(".widget-tab + .widget-image")
        self.result = boxes.locator(":scope > .widget-image")
        self.strip = self.root.locator(".widget-vbox").first.locator(":scope > .widget-image")
        self.status = self.root.locator(".widget-html").last
        self.strength = page.slider(self.root, "control strength")

    def generate(self) -> str:
        return self.page.click_and_wait(self.page.button(self.root, "Generate"), self.status, "Generating")

    def shown(self, what=None):
        return self.page.image_pixels(what or self.result)


def text_only(page):
    return page.image_pixels(page.cell("panel.text_only()").locator("img").last)


def equal(a, b):
    return a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b)


def eventually(check, timeout=30.0):
    """True once `check()` is (the kernel answers a widget change in its own time)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def overlap(a, b):
    """Whether two boxes ({x, y, width, height}, as the page gives them) overlap."""
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def assert_differs(a, b, what):
    assert a is not None and b is not None and (a.shape != b.shape or not np.array_equal(a, b)), what


# -- 04_sample --------------------------------------------------------------------------------


def test_the_panel_is_drawn_with_its_images(sample):
    panel = Panel(sample)
    assert panel.strength.locator(".widget-readout").inner_text() == "1.00"
    tabs = panel.root.locator(".widget-tab .lm-TabBar-tab, .widget-tab .p-TabBar-tab").all_inner_texts()
    assert [t.strip() for t in tabs] == ["dataset", "circle", "upload"]
    assert panel.shown(panel.preview).shape == (32, 32, 3)
    # `panel.generate()` in the notebook shows its image both below the cell and in the panel
    generated = sample.image_pixels(sample.cell("panel.generate()").locator("img").last)
    assert np.array_equal(panel.shown(), generated)
    strip = panel.shown(panel.strip)
    assert strip.shape[1] == 6 * 128  # the control, then strengths 0, 0.5, 1, 1.5, 2
    assert sample.broken_images() == 0
    # no slider's readout (the control window's is the widest) is drawn under the result image
    image = panel.result.bounding_box()
    for name in ("control strength", "guidance", "steps", "control window"):
        text = jd.NotebookPage.text_box(sample.slider(panel.root, name).locator(".widget-readout"))
        assert text["width"] > 0 and not overlap(text, image), f"the {name} readout is drawn under the result image"


def test_strength_zero_shows_the_text_only_image_and_one_and_a_half_does_not(sample):
    panel = Panel(sample)
    panel.page.tab(panel.root, "dataset")
    at_one = panel.shown()
    assert sample.drag_slider(panel.strength, -600) == "0.00"
    assert panel.generate().startswith("Done in")
    at_zero = panel.shown()
    assert equal(at_zero, text_only(sample)), "strength 0 must give the base model's image"
    assert_differs(at_zero, at_one, "strength 1 (the notebook's image) must differ from strength 0")

    assert sample.type_slider(panel.strength, "1.5") == "1.50"
    assert panel.generate().startswith("Done in")
    at_one_and_a_half = panel.shown()
    assert_differs(at_one_and_a_half, at_zero, "strength 1.5 must differ from the text-only image")
    assert_differs(at_one_and_a_half, at_one, "strength 1.5 must differ from strength 1")


def readouts(page, scope, *names):
    return [float(page.slider(scope, name).locator(".widget-readout").inner_text()) for name in names]


def test_circle_tab_follows_the_radius_slider(sample):
    panel = Panel(sample)
    sample.tab(panel.root, "circle")
    x, y, radius = readouts(sample, panel.root, "x", "y", "radius")
    circle = np.asarray(circle_control(x, y, radius, 32))
    assert eventually(lambda: equal(panel.shown(panel.preview), circle)), "the preview shows the sliders' circle"
    assert panel.generate().startswith("Done in")
    before = panel.shown()

    shown = sample.drag_slider(sample.slider(panel.root, "radius"), 50)
    assert float(shown) > radius, f"dragging right should grow the radius, shows {shown}"
    x, y, grown = readouts(sample, panel.root, "x", "y", "radius")
    circle = np.asarray(circle_control(x, y, grown, 32))
    assert eventually(lambda: equal(panel.shown(panel.preview), circle)), f"the preview shows radius {grown}"
    assert panel.generate().startswith("Done in")
    assert_differs(panel.shown(), before, "a larger circle must change the image")


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_an_image_then_a_file_that_is_not_one(sample, tmp_path):
    panel = Panel(sample)
    sample.tab(panel.root, "upload")
    sample.page.wait_for_function("(el) => el.textContent.includes('No image uploaded yet')",
                                  arg=panel.status.element_handle())
    assert eventually(lambda: panel.shown(panel.preview) is None), "no control image before an upload"
    assert sample.broken_images() == 0, "an empty image widget must be hidden, not drawn broken"
    before = panel.shown()

    picture = circle_control(0.35, 0.6, 0.2, 64)  # larger than the panel's 32 px: it is scaled down
    (tmp_path / "my-control.png").write_bytes(png_bytes(picture))
    upload = panel.root.locator(".widget-upload")
    with sample.page.expect_file_chooser() as chooser:
        upload.click()
    chooser.value.set_files(str(tmp_path / "my-control.png"))
    expected = np.asarray(PIL.ImageOps.fit(picture, (32, 32), PIL.Image.BILINEAR))
    assert eventually(lambda: equal(panel.shown(panel.preview), expected)), "the preview shows the uploaded image"
    assert panel.status.inner_text() == "Press Generate."
    assert panel.generate().startswith("Done in")
    assert_differs(panel.shown(), before, "the uploaded control must change the image")

    (tmp_path / "notes.txt").write_text("not a picture\n")
    with sample.page.expect_file_chooser() as chooser:
        upload.click()
    chooser.value.set_files(str(tmp_path / "notes.txt"))
    sample.page.wait_for_function("(el) => el.textContent.includes('notes.txt')", arg=panel.status.element_handle())
    message = panel.status.inner_text()
    assert re.search(r"ValueError: The uploaded file 'notes\.txt' is not an image", message), message
    assert eventually(lambda: panel.shown(panel.preview) is None), "no control image for a file that is not one"
    assert sample.broken_images() == 0
    assert sample.tracebacks() == [], "a file that is not an image is a message in the panel, not a traceback"


# -- 02_train ---------------------------------------------------------------------------------


def test_progress_bars_are_widgets_not_text(training):
    bars = training.page.locator(".widget-hprogress")
    assert bars.count() >= 1, "tqdm.auto draws its bars as progress widgets"
    texts = "\n".join(training.output_texts())
    assert not re.search(r"\d+%\|[█▏▎▍▌▋▊▉ ]*\|", texts), "a tqdm bar was printed as text"
    assert "IProgress not found" not in texts


def test_epoch_viewer_moves_between_epochs(training):
    page = training
    root = page.widget_output(".widget-label:text-is('epoch')")
    slider = page.slider(root, "epoch")
    grid = root.locator(".widget-image").first
    label = root.locator(".widget-html").first
    assert slider.locator(".widget-readout").inner_text() == "2"
    assert label.inner_text().startswith("epoch 2 of 2")
    saved = {e: np.asarray(PIL.Image.open(training.output_dir / "samples" / f"epoch-{e:03d}.png").convert("RGB"))
             for e in range(3)}
    assert np.array_equal(page.image_pixels(grid), saved[2]), "the viewer shows the newest grid"

    assert page.drag_slider(slider, -600) == "0"
    page.page.wait_for_function("(el) => el.textContent.startsWith('epoch 0 of 2')", arg=label.element_handle())
    at_zero = page.image_pixels(grid)
    assert np.array_equal(at_zero, saved[0])
    assert page.type_slider(slider, "1") == "1"
    page.page.wait_for_function("(el) => el.textContent.startsWith('epoch 1 of 2')", arg=label.element_handle())
    at_one = page.image_pixels(grid)
    assert np.array_equal(at_one, saved[1])
    assert_differs(at_zero, at_one, "training changes the grid between epoch 0 and epoch 1")
    assert_differs(at_one, saved[2], "and between epoch 1 and epoch 2")
    loss = root.locator(".widget-image").nth(1)
    assert page.image_pixels(loss) is not None, "the loss curve is shown below the grid"
    assert page.broken_images() == 0


# -- 01_data on one's own photos --------------------------------------------------------------


def test_your_own_photos_become_canny_pairs_shown_in_the_preview(own_photos):
    from lite_controlnet.data.dataset_folder import dataset_condition

    assert dataset_condition(own_photos.data_dir) == "canny"
    preview = own_photos.page.locator(own_photos.frontend.code_cell).filter(has_text="preview_pairs(").last
    shown = own_photos.image_pixels(preview.locator("img").last)
    assert shown is not None and shown.std() > 0, "the preview of the pairs is drawn"
    assert "4 latents" in "\n".join(own_photos.output_texts()), "the 4 pairs are encoded into the cache"
    assert own_photos.broken_images() == 0
