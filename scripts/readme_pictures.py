"""README's pictures: a QUICK run made with the library, then the notebooks in a real browser.

    .venv/bin/python scripts/readme_pictures.py

1. The run of `scripts/demo.sh` (the proxy base the package ships, a synthetic Fill50k of 3,200
   pairs of 32 px, 2 epochs of 200 steps at batch 16, learning rate 3e-3), in
   `outputs/readme-pictures/` (`--work`); a finished run is reused, a cut one resumes.
2. Notebook 7 (ipywidgets 8) in headless Chromium, as in the browser tests: 02_train on that run
   (nothing left to train: it shows the grids of each epoch) and 04_sample, where the Generate
   and Strength strip buttons are pressed through the page.
3. Screenshots of the epoch viewer and the sample panel, and the PNG of its strength strip
   (strengths 0, 0.5, 1, 1.5, 2 of the first Fill50k control, seed 0, as the demo samples it),
   into `docs/pictures/`;
   `manifest.json` beside them with their hashes, the run's settings and how well each image
   places its disk (disk IoU, read from the pixels the page shows); README's `pictures` block,
   made from the manifest.

After a change to the control module or the trainer, start afresh (`rm -rf outputs/readme-pictures`
first, or another `--work`): a finished run there is reused as it is. Measured on 2 CPU cores shared
with other jobs: 7.3 min to make the data and train, 35 s to 4 min for the browser part.

tests/test_readme_pictures.py checks that the README's block, the manifest and the PNGs agree.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

from lite_controlnet.training.config import TrainConfig
from lite_controlnet.presets import DEMO

ROOT = Path(__file__).resolve().parent.parent
PICTURES = ROOT / "docs" / "pictures"
MANIFEST = PICTURES / "manifest.json"
README = ROOT / "README.md"
BLOCK = "pictures"
# the run of scripts/demo.sh (the preset `demo`, its grids as TrainConfig draws them), and 04_sample's
# QUICK settings (which are the demo's samples')
RUN = {"base": DEMO.base, "num": DEMO.num_samples, "resolution": DEMO.resolution, "epochs": DEMO.epochs,
       "batch_size": DEMO.batch_size, "learning_rate": DEMO.learning_rate("lite"),
       "num_validation": TrainConfig.num_validation, "validation_steps": TrainConfig.validation_steps}
SAMPLING = {"steps": 20, "guidance": DEMO.guidance, "seed": 0, "strengths": [0, 0.5, 1, 1.5, 2]}
FILES = {"viewer": "epoch-viewer.png", "panel": "sample-panel.png", "strip": "strength-strip.png"}


def load(name: str, path: Path):
    """The module in file `path` (registered first: its dataclasses look themselves up)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_driver():
    """tests/browser/jupyter_driver.py, which starts the server and drives the page in the tests too."""
    return load("jupyter_driver", ROOT / "tests" / "browser" / "jupyter_driver.py")


def train_run(work: Path) -> tuple[Path, Path, float]:
    """The QUICK run (the demo's), made or resumed with the library; returns data, run folder, seconds."""
    from lite_controlnet.notebook.colab import prepare_fill50k
    from lite_controlnet.training.trainer import train

    started = time.perf_counter()
    data = prepare_fill50k(work / "fill50k", num=RUN["num"], size=RUN["resolution"])
    train(train_config(data, work / "run"))
    return data, work / "run", time.perf_counter() - started


def train_config(data: Path, output: Path) -> TrainConfig:
    return TrainConfig(data=str(data), output=str(output), control_kind="lite", **DEMO.train_settings("lite"))


def tiles(png: bytes, columns: int, rows: int) -> list[list]:
    """The square tiles of a strip or grid as the page shows it (rows of `columns` tiles under a
    band of captions), back at the run's resolution (they are enlarged pixel for pixel), in [0, 1]."""
    pixels = load_driver().decode_png(png)
    tile = pixels.shape[1] // columns
    step = tile // RUN["resolution"]
    body = pixels[pixels.shape[0] - rows * tile:]
    return [[body[r * tile:(r + 1) * tile:step, c * tile:(c + 1) * tile:step] / 255.0 for c in range(columns)]
            for r in range(rows)]


def disk_iou(image, control) -> float:
    """The project's placement score (lite_controlnet.evaluation.metrics): the image's disk against the control's."""
    from lite_controlnet.evaluation.metrics import fill50k_scores

    return round(fill50k_scores(image, control, None)["disk_iou"], 2)


def strip_scores(strip_png: bytes, count: int) -> list[float]:
    """The disk IoU of each strength's image in the strip (the control tile comes first)."""
    control, *images = tiles(strip_png, count + 1, 1)[0]
    return [disk_iou(image, control) for image in images]


def grid_scores(grid_png: bytes, rows: int) -> list[tuple[float, float]]:
    """(Text only, Samples) disk IoU of each row of a validation grid (columns Prompt | Control |
    Reconstruction | Text only | Samples)."""
    return [(disk_iou(row[3], row[1]), disk_iou(row[4], row[1])) for row in tiles(grid_png, 5, rows)]


def screenshot_down_to(element, last, path: Path) -> None:
    """A screenshot of `element` from its top to the bottom of `last`, one of its children."""
    import PIL.Image

    element.scroll_into_view_if_needed()
    shot = PIL.Image.open(io.BytesIO(element.screenshot()))
    top, bottom = element.bounding_box(), last.bounding_box()
    shot.crop((0, 0, shot.width, round(bottom["y"] + bottom["height"] - top["y"]))).save(path, optimize=True)


def capture(data: Path, run: Path, shots: Path) -> dict:
    """Open 02_train and 04_sample on the run in Chromium and take the three pictures."""
    from playwright.sync_api import sync_playwright

    driver = load_driver()
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "DIFFUSERS_VERBOSITY": "error"}
    quick = {"QUICK": True, "DATA_DIR": str(data), "OUTPUT_DIR": str(run)}
    notes = {}
    with driver.JupyterServer(driver.NOTEBOOK7, shots, env=env) as server, sync_playwright() as playwright:
        browser = driver.launch_chromium(playwright)
        try:
            # the epoch viewer: 02_train with the run's own settings resumes it, finished
            driver.parametrized_copy("02_train", server.root, quick, {
                "NUM_SAMPLES": RUN["num"], "EPOCHS": RUN["epochs"], "BATCH_SIZE": RUN["batch_size"],
                "TRAIN_OVERRIDES": {"learning_rate": RUN["learning_rate"], "num_workers": DEMO.num_workers,
                                    "num_validation": RUN["num_validation"],
                                    "validation_steps": RUN["validation_steps"]}})
            page = driver.NotebookPage.open(browser, server, "02_train", viewport=(1000, 2000))
            page.run_all()
            viewer = page.widget_output(".widget-label:text-is('epoch')").locator(".widget-vbox").first
            # the slider and the newest grid (the loss curve below them is left out)
            screenshot_down_to(viewer, viewer.locator(":scope > .widget-image").first, PICTURES / FILES["viewer"])
            notes["viewer_label"] = viewer.locator(".widget-html").first.inner_text()
            notes["grid_iou"] = grid_scores(page.image_bytes(viewer.locator(":scope > .widget-image").first),
                                                 RUN["num_validation"])
            page.close()

            # the sample panel: Generate at strength 1, then Strength strip, through the page
            driver.parametrized_copy("04_sample", server.root, {**quick, "SEED": SAMPLING["seed"]},
                                     {"STEPS": SAMPLING["steps"], "GUIDANCE": SAMPLING["guidance"],
                                      "STRENGTHS": SAMPLING["strengths"]})
            page = driver.NotebookPage.open(browser, server, "04_sample", viewport=(1500, 2000))
            page.run_all()
            root = page.widget_output(".widget-button:has-text('Generate')")
            status = root.locator(".widget-html").last
            page.click_and_wait(page.button(root, "Generate"), status, "Generating")
            page.click_and_wait(page.button(root, "Strength strip"), status, "Generating")
            panel = root.locator(".widget-vbox").first
            # the prompt, the control image and the settings with the result (the strip is apart)
            screenshot_down_to(panel, panel.locator(":scope > .widget-hbox").first, PICTURES / FILES["panel"])
            # the strip as the page holds it: the browser shows it stretched to the cell's width
            strip = page.image_bytes(panel.locator(":scope > .widget-image"))
            (PICTURES / FILES["strip"]).write_bytes(strip)
            notes["strip_iou"] = strip_scores(strip, len(SAMPLING["strengths"]))
            notes["prompt"] = panel.get_by_role("textbox", name="prompt").input_value()
            page.close()
        finally:
            browser.close()
    return notes


def readme_block(manifest: dict) -> str:
    """README's pictures block, made from the manifest alone."""
    run, sampling, files = manifest["run"], manifest["sampling"], manifest["files"]
    steps = run["epochs"] * run["num"] // run["batch_size"]
    strip = ", ".join(f"{s:g}: {iou:.2f}" for s, iou in zip(sampling["strengths"], manifest["strip_iou"]))
    grid = ", ".join(f"{text:.2f} → {samples:.2f}" for text, samples in manifest["grid_iou"])
    return "\n".join([
        f"What the notebooks show after the demo's QUICK run (`bash scripts/demo.sh`'s settings: the proxy base, "
        f"{run['num']:,} pairs of {run['resolution']} px, {steps} steps of batch {run['batch_size']} at "
        f"{run['learning_rate']:g}), captured from Notebook 7 in headless Chromium by "
        f"`python scripts/readme_pictures.py` ({manifest['date']}, {manifest['machine']}). "
        "At 32 px on a CPU-sized base the images are small and coarse: real pictures need SD1.5 on a GPU.",
        "",
        f"**02_train**: the grid of each epoch, chosen with the slider ({manifest['viewer_label']}; "
        "the loss curve under it is left out). Columns Prompt | Control | Reconstruction | Text only | Samples. "
        "How well the disk sits on the control's circle (disk IoU, the project's fidelity score, 0 to 1), "
        f"Text only → Samples, row by row: {grid}.",
        "",
        f"![the epoch viewer of 02_train]({files['viewer']['path']})",
        "",
        "**04_sample**: a control image from the dataset, a circle or an upload; control strength, guidance, "
        "steps, seed and control window; Generate.",
        "",
        f"![the sample panel of 04_sample]({files['panel']['path']})",
        "",
        f"**Strength strip** (the same seed at strengths {', '.join(f'{s:g}' for s in sampling['strengths'])}; "
        f"prompt \"{manifest['prompt']}\", {sampling['steps']} steps, guidance {sampling['guidance']:g}). "
        f"Disk IoU with the control's circle: {strip}.",
        "",
        f"![the strength strip of 04_sample]({files['strip']['path']})",
    ])


def write_readme_block(block: str) -> None:
    import re

    text = README.read_text()
    pattern = rf"<!-- {BLOCK}:start.*?-->.*?<!-- {BLOCK}:end -->"
    if not re.search(pattern, text, flags=re.S):
        raise SystemExit(f"README.md has no <!-- {BLOCK}:start --> ... <!-- {BLOCK}:end --> block.")
    new = f"<!-- {BLOCK}:start (scripts/readme_pictures.py) -->\n{block}\n<!-- {BLOCK}:end -->"
    README.write_text(re.sub(pattern, lambda _: new, text, flags=re.S))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=lambda p: Path(p).absolute(), default=ROOT / "outputs" / "readme-pictures",
                        help="the run's folder (data, run, the Jupyter server's folder); reused when there")
    args = parser.parse_args()
    driver = load_driver()
    for why in (driver.missing_browser(), driver.missing_frontend(driver.NOTEBOOK7)):
        if why:
            raise SystemExit(why)
    started = time.perf_counter()
    data, run, train_seconds = train_run(args.work)  # minutes the first time, seconds once done
    print(f"QUICK run ready in {train_seconds:.0f} s: {run}")
    PICTURES.mkdir(parents=True, exist_ok=True)
    shots = args.work / "jupyter"
    shots.mkdir(parents=True, exist_ok=True)
    notes = capture(data, run, shots)
    machine = load("machine", ROOT / "benchmarks" / "machine.py")
    files = {key: {"path": str((PICTURES / name).relative_to(ROOT)), "sha256": sha256(PICTURES / name)}
             for key, name in FILES.items()}
    manifest = {"date": date.today().isoformat(), "machine": f"{machine.cpu_model()}, {os.cpu_count()} cores",
                "run": RUN, "sampling": SAMPLING, "files": files, **notes,
                "seconds": round(time.perf_counter() - started), "train_seconds": round(train_seconds),
                "python": platform.python_version()}
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    write_readme_block(readme_block(manifest))
    print(f"Pictures in {PICTURES}, README's {BLOCK} block refreshed, in {manifest['seconds']} s.")


if __name__ == "__main__":
    main()
