"""Notebook widgets: flip through the grids of each epoch, and sample with a control strength slider.

Only core ipywidgets that exist in both 7.7 (what Colab ships) and 8.x are used, and nothing
runs in a background thread: Colab drops widget updates made from other threads, so every
update happens in a callback (or in the training loop's own `on_epoch_end`) on the main thread.
Sampling runs only when a button is pressed, never on every slider drag.

- `EpochViewer`: the validation grid of each epoch (and the loss curve); pass
  `viewer.on_epoch_end` to `train(...)`, or read a run folder with `EpochViewer.from_folder`.
- `SamplePanel`: prompt, control image (dataset sample, upload, or a drawn circle), control
  strength 0..2, guidance, steps, seed, control window; `generate()` and `strength_strip()`.
- `loss_plot(output)`, `preview_pairs(dataset)`: what the notebooks show besides.
"""

from __future__ import annotations

import html
import io
import re
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w
import PIL.Image
import PIL.ImageOps
import torch
from PIL import ImageDraw

from ..training.grids import table_grid
from ..training.logs import LossLog
from ..sampling import SampleSettings

__all__ = [
    "EpochViewer",
    "SamplePanel",
    "circle_control",
    "loss_plot",
    "preview_pairs",
    "uploaded_files",
    "uploaded_image",
]

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.png$")  # what the trainer writes; other names (a grid being written) are not epochs
_SLIDER_STYLE = {"description_width": "110px"}
STRENGTHS = (0.0, 0.5, 1.0, 1.5, 2.0)
DEFAULT_PROMPT = "red circle with blue background"  # without a dataset to take prompts from


def _image_widget(**kwargs: Any) -> w.Image:
    """A PNG Image widget, hidden until it has an image (see `_show`); each has its own layout."""
    return w.Image(format="png", layout=w.Layout(max_width="100%", display="none"), **kwargs)


def _show(widget: w.Image, png: bytes) -> None:
    """Show `png` in `widget`, or hide the widget when there is none: a browser draws an Image
    widget without data as a broken-image icon (seen in Notebook 7 and Notebook 6.5)."""
    widget.value = png
    widget.layout.display = None if png else "none"


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _error_html(error: BaseException) -> str:
    return f"<span style='color:#b00020'>{html.escape(type(error).__name__)}: {html.escape(str(error))}</span>"


# -- control images -----------------------------------------------------------------------------


def circle_control(x: float, y: float, radius: float, size: int) -> PIL.Image.Image:
    """A white circle outline on black, as Fill50k's control images are drawn.

    Args:
        x, y: the centre, as fractions of the image width and height (0..1).
        radius: as a fraction of the image width.
        size: image width and height in pixels.
    """
    image = PIL.Image.new("RGB", (size, size), (0, 0, 0))
    cx, cy, r = x * size, y * size, radius * size
    line_width = max(1, round(size / 128))  # the width `fill50k.py` draws at this size
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255), width=line_width)
    return image


def uploaded_files(value: Any) -> list[tuple[str, bytes]]:
    """(name, content) of each file in a `FileUpload.value`, whichever ipywidgets made it.

    ipywidgets 7 gives a dict `{name: {"metadata": {...}, "content": bytes}}`; ipywidgets 8 a
    tuple of dicts `{"name": ..., "type": ..., "size": ..., "content": memoryview, ...}`.
    """
    if isinstance(value, dict):
        entries = [(name, entry["content"]) for name, entry in value.items()]
    else:
        entries = [(entry["name"], entry["content"]) for entry in value]
    return [(name, bytes(content)) for name, content in entries]


def uploaded_image(value: Any) -> PIL.Image.Image | None:
    """The last uploaded file of a `FileUpload.value` as an RGB image; None if nothing was uploaded."""
    files = uploaded_files(value)
    if not files:
        return None
    name, content = files[-1]
    try:
        image = PIL.Image.open(io.BytesIO(content))
        image.load()
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"The uploaded file {name!r} is not an image Pillow can read ({error}).") from error
    return image.convert("RGB")


def _tensor_to_pil(control: torch.Tensor) -> PIL.Image.Image:
    """A 3xHxW tensor in [0, 1] as an RGB image."""
    array = (control.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return PIL.Image.fromarray(array)


# -- the grids of a training run ----------------------------------------------------------------


class EpochViewer:
    """The validation grid of each epoch, one at a time, chosen with a slider; and the loss curve.

    Give `viewer.on_epoch_end` to `train(...)`: each new grid is added and shown as training goes
    (epoch 0 is the grid before training). `EpochViewer.from_folder(output)` reads the grids a run
    already saved (`<output>/samples/epoch-NNN.png`), so a resumed run shows its earlier epochs.
    The slider reacts once the training cell has finished (the kernel is busy until then).
    Display `viewer.widget`.
    """

    def __init__(self) -> None:
        self.grids: dict[int, PIL.Image.Image | Path] = {}
        self.steps: dict[int, int] = {}
        self.slider = w.IntSlider(value=0, min=0, max=0, description="epoch", style=_SLIDER_STYLE)
        self.label = w.HTML(value="No grid yet: the first one comes before training starts.")
        self.image = _image_widget()  # max width 100%: large grids shrink to the notebook's width
        self.loss = _image_widget()
        self.slider.observe(lambda change: self._render(), names="value")
        self.widget = w.VBox([w.HBox([self.slider, self.label]), self.image, self.loss])

    @classmethod
    def from_folder(cls, output: str | Path) -> EpochViewer:
        """A viewer holding the grids already saved in the run folder `output` (none if it is new)."""
        viewer = cls()
        viewer.load(output)
        return viewer

    def load(self, output: str | Path) -> None:
        """Add the grids saved in `<output>/samples/` and show the newest, with the loss curve."""
        samples = Path(output) / "samples"
        found = sorted((int(m.group(1)), p) for p in samples.glob("epoch-*.png") if (m := _EPOCH_FILE.match(p.name)))
        for epoch, path in found:
            self.grids[epoch] = path
        self._show_loss(Path(output))
        if found:
            self.show(found[-1][0])

    def on_epoch_end(self, event: Any) -> None:
        """The callback for `train(cfg, on_epoch_end=...)`: add the epoch's grid and show it."""
        self.add(event.epoch, event.grid_path if event.grid_path is not None else event.grid, step=event.step)
        self._show_loss(Path(event.output))

    def add(self, epoch: int, grid: PIL.Image.Image | str | Path, step: int | None = None) -> None:
        """Add (or replace) the grid of `epoch`, an image or a PNG file, and show it."""
        if grid is None:
            raise ValueError(f"Epoch {epoch} has no grid to show.")
        self.grids[epoch] = grid if isinstance(grid, PIL.Image.Image) else Path(grid)
        if step is not None:
            self.steps[epoch] = step
        self.show(epoch)

    def show(self, epoch: int) -> None:
        """Show the grid of `epoch` (as moving the slider does)."""
        if epoch not in self.grids:
            raise KeyError(f"No grid for epoch {epoch}; epochs with a grid: {sorted(self.grids)}.")
        self.slider.max = max(self.grids)
        self.slider.min = min(self.grids)
        if self.slider.value == epoch:
            self._render()  # same value: the observer does not fire, but the grid may be new
        self.slider.value = epoch

    @property
    def epoch(self) -> int | None:
        """The epoch shown, or None before the first grid."""
        return self.slider.value if self.grids else None

    def grid(self, epoch: int | None = None) -> PIL.Image.Image:
        """The grid of `epoch` (by default the one shown) as an image."""
        grid = self.grids[self.slider.value if epoch is None else epoch]
        return grid if isinstance(grid, PIL.Image.Image) else PIL.Image.open(grid).convert("RGB")

    def _render(self) -> None:
        epoch = self.slider.value
        grid = self.grids.get(epoch)
        if grid is None:
            self.label.value = f"epoch {epoch}: no grid saved"
            _show(self.image, b"")
            return
        _show(self.image, grid.read_bytes() if isinstance(grid, Path) else _png(grid))
        details = [f"epoch {epoch} of {max(self.grids)}"]
        if epoch in self.steps:
            details.append(f"step {self.steps[epoch]}")
        if isinstance(grid, Path):
            details.append(html.escape(grid.name))
        self.label.value = " &middot; ".join(details)

    def _show_loss(self, output: Path) -> None:
        path = output / "logs" / "loss.png"  # written by the trainer before each epoch's callback
        if path.is_file():
            _show(self.loss, path.read_bytes())


def loss_plot(output: str | Path, smooth: int = 20) -> w.Image:
    """The loss curve of the run in `output`, drawn now (`<output>/logs/loss.png`), as an Image widget."""
    path = LossLog(output).plot(smooth=smooth)
    return w.Image(value=path.read_bytes(), format="png")


def preview_pairs(dataset: Any, count: int = 4, start: int = 0) -> Any:
    """A matplotlib figure of `count` pairs: controls above, targets below, prompts as titles.

    Args:
        dataset: a `PairedDataset`.
        count: how many pairs (columns).
        start: index of the first pair.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the notebook's backend alone

    indices = list(range(start, min(start + count, len(dataset))))
    fig = Figure(figsize=(2.6 * len(indices), 5.6))
    axes = fig.subplots(2, len(indices), squeeze=False)
    for column, index in enumerate(indices):
        item = dataset[index]
        axes[0, column].imshow(_tensor_to_pil(item["conditioning_pixel_values"]))
        axes[1, column].imshow(_tensor_to_pil((item["pixel_values"] + 1) / 2))
        axes[0, column].set_title("\n".join(textwrap.wrap(item["prompt"], 28)), fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("control")
    axes[1, 0].set_ylabel("target")
    fig.tight_layout()
    return fig


# -- sampling ---------------------------------------------------------------------------------


class SamplePanel:
    """Generate with a trained control module, choosing the control strength with a slider.

    Args:
        pipe: a `LiteControlNetPipeline` with its control module (its progress bar is turned
            off: the panel's status line reports instead).
        dataset: a `PairedDataset` to take control images (and prompts) from, or None.
        resolution: image size in pixels; by default the dataset's, else the base model's.

    Control images come from the source chosen in the tabs: a dataset sample (choosing one also
    fills in its prompt), an uploaded image (centre-cropped to a square), or a circle drawn from
    the x / y / radius sliders (white outline on black, as in Fill50k). Nothing is generated
    until Generate (or Strength strip) is pressed. Display `panel.widget`; from code, set the
    widgets' values and call `generate()` or `strength_strip()`.
    """

    def __init__(self, pipe: Any, dataset: Any = None, resolution: int | None = None):
        self.pipe, self.dataset = pipe, dataset
        pipe.set_progress_bar_config(disable=True)
        if resolution is None:
            resolution = getattr(dataset, "resolution", None) or pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.resolution = resolution
        slider = {"style": _SLIDER_STYLE, "layout": w.Layout(width="360px")}

        # 1. prompt and control image sources
        prompt = dataset.records[0].prompt if dataset is not None and len(dataset) else DEFAULT_PROMPT
        self.prompt = w.Text(value=prompt, description="prompt", layout=w.Layout(width="720px"))
        self.index = w.IntSlider(value=0, min=0, max=max(0, len(dataset) - 1) if dataset is not None else 0,
                                 description="sample", continuous_update=False, **slider)
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="control image")
        self.x = w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description="x", **slider)
        self.y = w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description="y", **slider)
        self.radius = w.FloatSlider(value=0.25, min=0.02, max=0.5, step=0.01, description="radius", **slider)
        pages = {"circle": w.VBox([self.x, self.y, self.radius]), "upload": w.VBox([self.upload])}
        if dataset is not None:
            pages = {"dataset": w.VBox([self.index]), **pages}
        self.sources = tuple(pages)
        self.tabs = w.Tab(children=list(pages.values()))
        for k, name in enumerate(self.sources):
            self.tabs.set_title(k, name)
        self.tabs.selected_index = 0
        self.control_preview = _image_widget(width="256")

        # 2. sampling settings
        self.strength = w.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="control strength", **slider)
        self.guidance = w.FloatSlider(value=SampleSettings.guidance, min=1.0, max=15.0, step=0.5, description="guidance", **slider)
        self.steps = w.IntSlider(value=SampleSettings.steps, min=1, max=100, description="steps", **slider)
        self.seed = w.IntText(value=0, description="seed", style=_SLIDER_STYLE, layout=w.Layout(width="240px"))
        self.window = w.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.05,
                                         description="control window", **slider)

        # 3. actions and results
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.strip_button = w.Button(description="Strength strip", tooltip="the same seed at strengths " +
                                     ", ".join(f"{s:g}" for s in STRENGTHS))
        self.status = w.HTML(value="Press Generate.")
        self.result = _image_widget(width="384")
        self.strip = _image_widget()
        self.generate_button.on_click(self._handler(self.generate))
        self.strip_button.on_click(self._handler(self.strength_strip))

        for control in (self.index, self.upload, self.x, self.y, self.radius):
            control.observe(lambda change: self._refresh_control(), names="value")
        self.tabs.observe(lambda change: self._refresh_control(), names="selected_index")
        self.index.observe(self._take_prompt, names="value")
        self._control_problem: str | None = None  # the status message of a missing control image
        self._refresh_control()

        # The right margin leaves room for the control window's readout ("0.00 - 1.00"), wider than
        # a slider's readout box; the row wraps where the notebook is narrow (classic Notebook, Colab
        # on a small screen). Without both, the result image was drawn over the sliders' readouts.
        settings = w.VBox([self.strength, self.guidance, self.steps, self.seed, self.window,
                           w.HBox([self.generate_button, self.strip_button]), self.status],
                          layout=w.Layout(margin="0 40px 0 0"))
        self.widget = w.VBox([
            self.prompt,
            w.HBox([w.VBox([self.tabs, self.control_preview]), settings, self.result],
                   layout=w.Layout(flex_flow="row wrap")),
            self.strip,
        ])

    # -- the control image -------------------------------------------------------------------

    @property
    def source(self) -> str:
        """Where the control image comes from: "dataset", "circle" or "upload" (the open tab)."""
        return self.sources[self.tabs.selected_index or 0]

    @source.setter
    def source(self, name: str) -> None:
        if name not in self.sources:
            raise ValueError(f"Unknown control source {name!r}: this panel offers {list(self.sources)}.")
        self.tabs.selected_index = self.sources.index(name)

    def control_image(self) -> PIL.Image.Image:
        """The control image of the chosen source, at the panel's resolution."""
        size = self.resolution
        if self.source == "dataset":
            return _tensor_to_pil(self.dataset.control_image(self.index.value)).resize((size, size))
        if self.source == "upload":
            image = uploaded_image(self.upload.value)
            if image is None:
                raise ValueError("No image uploaded yet: choose a file with the upload button, or another tab.")
            return PIL.ImageOps.fit(image, (size, size), PIL.Image.BILINEAR)
        return circle_control(self.x.value, self.y.value, self.radius.value, size)

    def _refresh_control(self) -> None:
        try:
            _show(self.control_preview, _png(self.control_image()))
        except ValueError as error:  # e.g. the upload tab before an upload: say so, show nothing
            _show(self.control_preview, b"")
            self.status.value = self._control_problem = _error_html(error)
            return
        if self.status.value == self._control_problem:  # the problem is gone
            self.status.value = "Press Generate."

    def _take_prompt(self, change: dict) -> None:
        if self.dataset is not None:
            self.prompt.value = self.dataset.records[change["new"]].prompt

    # -- generation --------------------------------------------------------------------------

    def _sample(self, strength: float, control: PIL.Image.Image | None) -> PIL.Image.Image:
        start, end = self.window.value
        return self.pipe(
            self.prompt.value,
            control,
            controlnet_conditioning_scale=float(strength),
            guidance_scale=self.guidance.value,
            num_inference_steps=self.steps.value,
            control_guidance_start=start,
            control_guidance_end=end,
            height=self.resolution,
            width=self.resolution,
            # a CPU generator: the same seed gives the same image on any device
            generator=torch.Generator().manual_seed(int(self.seed.value)),
        ).images[0]

    def generate(self) -> PIL.Image.Image:
        """Generate with the current settings, show the image, and return it."""
        image = self._sample(self.strength.value, self.control_image())
        _show(self.result, _png(image))
        return image

    def text_only(self) -> PIL.Image.Image:
        """The base model's image for the same prompt, seed and settings, without control."""
        return self._sample(0.0, None)

    def strength_strip(self, strengths: Sequence[float] = STRENGTHS) -> PIL.Image.Image:
        """The control image, then one image per strength, all with the same seed; shown and returned."""
        control = self.control_image()
        images = [self._sample(s, control) for s in strengths]
        strip = table_grid(["control", *(f"strength {s:g}" for s in strengths)], [[control, *images]], band=20)
        _show(self.strip, _png(strip))
        return strip

    def _handler(self, action: Callable[[], Any]) -> Callable[[Any], None]:
        """A button callback: busy while it runs, then the time taken, or the error."""

        def on_click(_button: Any) -> None:
            buttons = (self.generate_button, self.strip_button)
            for button in buttons:
                button.disabled = True
            self.status.value = "Generating&hellip;"
            started = time.perf_counter()
            try:
                action()
                self.status.value = f"Done in {time.perf_counter() - started:.1f} s (seed {self.seed.value})."
            except Exception as error:
                # shown in the panel, then raised on: a callback's traceback is easy to miss in Colab
                self.status.value = _error_html(error)
                raise
            finally:
                for button in buttons:
                    button.disabled = False

        return on_click
