"""The notebooks, run top to bottom in fresh kernels, small and offline, as CI runs them.

Each notebook gets the tiny parameters in a cell inserted after its `parameters` cell (as
papermill does); all share one data folder, one run folder and one model cache, so they see
each other's results in order. `02_train` runs twice: stopped early, then with *Run all*
again, which must resume. The executed notebooks live in memory (and in the temporary
folder): the repository's notebooks are never written.

The whole module takes about 80 s on 2 CPU cores shared with other jobs (kernel start and
imports are most of it); `pytest -s` prints the seconds of each notebook.
"""

import csv
import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the dev extra: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the dev extra: pip install -e '.[dev]'")
pytest.importorskip("ipykernel", reason="the notebook tests need the dev extra: pip install -e '.[dev]'")

from lite_controlnet.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
ORDER = ("00_setup", "01_data", "02_train", "03_compare", "04_sample")
REQUIRED_PARAMETERS = ("BASE_MODEL", "DATA_DIR", "OUTPUT_DIR", "QUICK")
BADGE = "https://colab.research.google.com/github/{repo}/blob/main/notebooks/{name}.ipynb"
CELL_TIMEOUT = 300  # seconds per cell; a whole cell never comes close in QUICK mode


def read(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def parameters_index(nb):
    tagged = [k for k, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def quick_index(nb):
    """The cell that applies QUICK mode, if the notebook has one."""
    found = [k for k, cell in enumerate(nb.cells) if cell.cell_type == "code" and cell.source.startswith("if QUICK:")]
    assert len(found) <= 1
    return found[0] if found else None


def execute(name, overrides, workdir, env, sizes=None):
    """Run notebook `name` with `overrides` injected after its parameters cell and `sizes` after
    its QUICK cell (QUICK mode's choices stand, at test size); return the executed notebook
    (never saved)."""
    nb = read(name)

    def cell(values, tag):
        source = "\n".join(f"{key} = {value!r}" for key, value in values.items())
        return nbformat.v4.new_code_cell(source, metadata={"tags": [tag]})

    quick = quick_index(nb)
    if sizes and quick is not None:
        nb.cells.insert(quick + 1, cell(sizes, "injected-test-sizes"))
    nb.cells.insert(parameters_index(nb) + 1, cell(overrides, "injected-parameters"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute(env=env)
    finally:  # kept for a look after a failure
        nbformat.write(nb, workdir / f"{name}.executed.ipynb")
    return nb


def stream_text(nb):
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
                   if out.output_type == "stream")


def outputs_of(nb, kind):
    """The outputs of code cells holding `kind` (e.g. "image/png"), in order."""
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
            if kind in out.get("data", {})]


def widget_states(nb, model):
    """The final state of each widget of class `model` (e.g. "IntSliderModel") that the notebook made."""
    states = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [w["state"] for w in states.values() if w["model_name"] == model]


def loss_steps(output):
    with open(output / "logs" / "loss.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.ipynb"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All notebooks in order; what the tests look at, with the state between the two training runs."""
    tmp = tmp_path_factory.mktemp("notebooks")
    before = digest(NOTEBOOKS)
    # One thread per kernel: tiny models gain nothing from more, and on a busy machine
    # oversubscribed threads make a step many times slower.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITE_CONTROLNET_CACHE": str(tmp / "model-cache"),
           "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}
    # QUICK mode as a user gets it (the proxy base the package ships, 32 px), shrunk to test size
    quick = {"QUICK": True, "DATA_DIR": str(tmp / "data"), "OUTPUT_DIR": str(tmp / "run")}
    sizes = {"NUM_SAMPLES": 32, "EPOCHS": 2, "BATCH_SIZE": 4, "COMPARE_STEPS": 4, "EVAL_EVERY": 2, "FIDELITY_SAMPLES": 2,
             "SAMPLE_STEPS": 2, "STEPS": 2,
             "TRAIN_OVERRIDES": {"num_workers": 0, "num_validation": 2, "validation_steps": 2}}
    result = {"output": tmp / "run", "unchanged": None}
    seconds = {}
    for name in ORDER:
        if name == "02_train":  # a run cut off after 3 steps (as by a disconnect), then Run all again
            started = time.perf_counter()
            result["02_train:cut"] = execute(name, {**quick, "MAX_STEPS": 3}, tmp, env, sizes)
            seconds["02_train (cut)"] = time.perf_counter() - started
            result["after_cut"] = (loss_steps(tmp / "run"), [c.step for c in list_checkpoints(tmp / "run")])
        started = time.perf_counter()
        result[name] = execute(name, quick, tmp, env, sizes)
        seconds[name] = time.perf_counter() - started
    result["unchanged"] = digest(NOTEBOOKS) == before
    print("notebook seconds: " + ", ".join(f"{name} {s:.0f}" for name, s in seconds.items()))  # shown with -s
    return result


def test_setup_shows_the_device_and_the_plan(runs):
    text = stream_text(runs["00_setup"])
    assert "Not Colab" in text and "DeviceInfo(kind=" in text
    assert "batch per step" in text and "precision" in text  # the plan table


def test_data_is_made_previewed_and_cached(runs):
    output = runs["output"]
    nb = runs["01_data"]
    assert outputs_of(nb, "image/png"), "the preview of pairs is shown"
    assert "32 latents" in stream_text(nb)
    assert any((output / "cache").iterdir())


def execute_results(nb):
    return [out["data"]["text/plain"] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if out.output_type == "execute_result"]


def test_quick_mode_runs_on_the_proxy_base(runs):
    config = [text for text in execute_results(runs["02_train"]) if text.startswith("TrainConfig(")]
    assert config and "base='proxy'" in config[0] and "resolution=32" in config[0]
    # the comparison trains each module at its own learning rate on the proxy base
    rates = [text for text in execute_results(runs["03_compare"]) if text.startswith("{'lite'")]
    assert rates and "0.003)" in rates[0].split("'controlnet'")[0] and rates[0].count("0.001)") == 1, rates


def test_train_resumes_after_a_cut_with_no_edit(runs):
    output = runs["output"]
    steps_after_cut, checkpoints_after_cut = runs["after_cut"]
    assert steps_after_cut == [1, 2, 3] and checkpoints_after_cut[0] == 3
    text = stream_text(runs["02_train"])
    assert re.search(r"Resumed from .*step-00000003 at step 3", text), text[-2000:]
    assert loss_steps(output) == list(range(1, 17))  # 2 epochs of 8 steps, each step once
    assert list_checkpoints(output) and (output / "final" / "config.json").is_file()
    assert sorted(p.name for p in (output / "samples").glob("epoch-*.png")) == [
        "epoch-000.png", "epoch-001.png", "epoch-002.png"]
    # the epoch viewer, displayed, ends on the last epoch with all three grids to choose from
    sliders = [state for state in widget_states(runs["02_train"], "IntSliderModel") if state["description"] == "epoch"]
    assert [(s["min"], s["max"], s["value"]) for s in sliders] == [(0, 2, 2)]
    labels = [state["value"] for state in widget_states(runs["02_train"], "HTMLModel")]
    assert "epoch 2 of 2 &middot; step 16 &middot; epoch-002.png" in labels


def test_compare_prints_the_table_for_both_modules(runs):
    nb = runs["03_compare"]
    text = stream_text(nb)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| module | parameters | train s/step |")
    assert [line.split(" | ")[0] for line in table[1:]] == ["| lite", "| controlnet"]
    assert len(outputs_of(nb, "image/png")) >= 3  # the fidelity curves, the bar plots and the sample grid
    for kind in ("lite", "controlnet"):
        assert (runs["output"] / "compare" / kind / "final" / "config.json").is_file()
    # the curves: both modules scored after each turn of EVAL_EVERY steps, kept for a resume
    state = json.loads((runs["output"] / "compare" / "fidelity.json").read_text())
    assert {label: [p["step"] for p in curve] for label, curve in state["curves"].items()} == {
        "lite": [2, 4], "controlnet": [2, 4]}
    summary = [text for text in execute_results(nb) if "controlnet_plateau" in text]
    assert summary and "share_of_controlnet" in summary[0]  # Lite read at equal wall-clock


def test_sample_shows_the_panel_an_image_and_a_strip(runs):
    nb = runs["04_sample"]
    assert "Control module: " + str(runs["output"] / "final") in stream_text(nb)
    assert outputs_of(nb, "application/vnd.jupyter.widget-view+json")
    images = outputs_of(nb, "image/png")
    assert len(images) == 2  # panel.generate() and the strength strip


def test_running_leaves_the_committed_notebooks_unchanged(runs):
    assert runs["unchanged"]


# -- the notebooks as committed (no kernel needed) --------------------------------------------


@pytest.mark.parametrize("name", ORDER)
def test_notebook_is_committed_clean_with_title_badge_and_parameters(name):
    nb = read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "outputs must be stripped before commit"
    title = nb.cells[0]
    assert title.cell_type == "markdown" and title.source.startswith(f"# {name[:2]} ")
    badge = re.search(r"\(https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/notebooks/([^)]+)\)",
                      title.source)
    assert badge and badge.group(2) == f"{name}.ipynb"
    assert len([line for line in title.source.splitlines() if line.strip()]) == 3  # title, badge, one line
    parameters = nb.cells[parameters_index(nb)].source
    defined = set(re.findall(r"^([A-Z_0-9]+) = ", parameters, flags=re.MULTILINE))
    assert set(REQUIRED_PARAMETERS) <= defined
    assert 'BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"' in parameters and "QUICK = False" in parameters


def test_notebooks_name_the_repository_of_the_readme():
    # The repository address lives in README.md; the badges and install cells must follow it.
    readme = (ROOT / "README.md").read_text()
    found = set(re.findall(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/", readme))
    assert len(found) == 1, f"README.md's Colab links should name one repository, found {sorted(found)}"
    repo = found.pop()
    assert f"https://github.com/{repo}" in readme
    for name in ORDER:
        text = json.dumps(read(name))
        assert BADGE.format(repo=repo, name=name) in text
        assert f'REPO_URL = \\"https://github.com/{repo}\\"' in text


def test_a_preset_sets_the_parameters_a_notebook_defines_and_its_overrides_win():
    from lite_controlnet import presets

    quick = presets.QUICK
    train = {"BASE_MODEL": "sd", "NUM_SAMPLES": 50_000, "RESOLUTION": 512, "EPOCHS": 2, "BATCH_SIZE": 4,
             "CONTROL_KIND": "controlnet", "TRAIN_OVERRIDES": {"num_workers": 1}}
    presets.apply(quick, train)
    assert (train["BASE_MODEL"], train["NUM_SAMPLES"], train["RESOLUTION"], train["EPOCHS"], train["BATCH_SIZE"]) == (
        quick.base, quick.num_samples, quick.resolution, quick.epochs, quick.batch_size)
    assert train["TRAIN_OVERRIDES"] == {"learning_rate": quick.learning_rate("controlnet"), "num_workers": 1}
    assert "GUIDANCE" not in train and "COMPARE_STEPS" not in train  # only what the notebook defines
    compare = {"KINDS": ["lite", "controlnet"], "LEARNING_RATES": {"lite": 1e-4}, "COMPARE_STEPS": 300,
               "EVAL_EVERY": 100, "GUIDANCE": 7.5}
    presets.apply("quick", compare)
    assert compare["LEARNING_RATES"] == {"lite": 1e-4, "controlnet": quick.learning_rate("controlnet")}
    assert (compare["COMPARE_STEPS"], compare["EVAL_EVERY"], compare["GUIDANCE"]) == (quick.steps, quick.steps // 4,
                                                                                     quick.guidance)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """01_data on a folder of one's own photos (canny made from each), and 02_train on a parquet
    dataset with its own column names, cut after 2 steps and run again: QUICK mode, test size."""
    import datasets
    import numpy as np
    from PIL import Image

    tmp = tmp_path_factory.mktemp("own-data")
    rng = np.random.default_rng(0)
    (tmp / "photos").mkdir()
    pictures = []
    for k in range(6):
        picture = Image.fromarray((rng.random((5, 6, 3)) * 255).astype(np.uint8)).resize((48, 40), Image.BICUBIC)
        picture.save(tmp / "photos" / f"p{k}.png")
        (tmp / "photos" / f"p{k}.txt").write_text(f"photo number {k}")
        pictures.append(picture)
    rows = datasets.Dataset.from_dict({"photo": pictures, "edges": pictures[::-1], "caption": [f"pair {k}" for k in
                                                                                                range(6)]})
    rows.cast_column("photo", datasets.Image()).cast_column("edges", datasets.Image()).to_parquet(tmp / "pairs.parquet")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "OMP_NUM_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}
    sizes = {"EPOCHS": 1, "BATCH_SIZE": 2, "TRAIN_OVERRIDES": {"num_workers": 0, "num_validation": 1,
                                                                "validation_steps": 2}}
    photos = {"QUICK": True, "OWN_IMAGES": str(tmp / "photos"), "CONDITION": "canny", "DATA_DIR": str(tmp / "edges"),
              "OUTPUT_DIR": str(tmp / "photos-run")}
    pairs = {"QUICK": True, "DATASET": str(tmp / "pairs.parquet"), "DATA_DIR": str(tmp / "unused"),
             "COLUMNS": {"image_column": "photo", "conditioning_image_column": "edges", "caption_column": "caption"},
             "OUTPUT_DIR": str(tmp / "pairs-run")}
    result = {"tmp": tmp, "01_data": execute("01_data", photos, tmp, env, sizes)}
    result["cut"] = execute("02_train", {**pairs, "MAX_STEPS": 2}, tmp, env, sizes)
    result["steps_after_cut"] = loss_steps(tmp / "pairs-run")
    result["02_train"] = execute("02_train", pairs, tmp, env, sizes)
    return result


def test_your_own_photos_become_pairs_previewed_and_cached(own_data):
    from lite_controlnet.data.dataset_folder import dataset_condition

    tmp = own_data["tmp"]
    assert dataset_condition(tmp / "edges") == "canny" and len(list((tmp / "edges" / "conditioning_image").iterdir())) == 6
    assert outputs_of(own_data["01_data"], "image/png"), "the preview of pairs is shown"
    assert "6 latents" in stream_text(own_data["01_data"])
    assert any((tmp / "photos-run" / "cache").iterdir())


def test_02_train_takes_a_parquet_dataset_with_its_columns_and_resumes(own_data):
    tmp = own_data["tmp"]
    assert own_data["steps_after_cut"] == [1, 2]
    assert loss_steps(tmp / "pairs-run") == [1, 2, 3]  # 6 pairs, 2 per step: resumed at step 3, not redone
    assert (tmp / "pairs-run" / "final" / "config.json").is_file() and not (tmp / "unused").exists()
    config = json.loads((tmp / "pairs-run" / "train_config.json").read_text())
    assert (config["image_column"], config["conditioning_image_column"], config["caption_column"]) == (
        "photo", "edges", "caption")
