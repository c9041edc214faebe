"""Fixtures of the browser tests: Chromium, a QUICK run made with the library, one Jupyter server
per frontend, and notebooks run in the page. Everything started here is stopped here, also when a
test fails. On a failure the page's screenshot and console log are kept in
`tests/browser/evidence/` and their paths printed in the report."""

from __future__ import annotations

import os
import time

import pytest

from . import jupyter_driver as jd

IN_CI = os.environ.get("CI") == "true"
FRONTENDS = (jd.NOTEBOOK7, jd.CLASSIC6)


def unavailable(reason: str) -> None:
    """A browser test that cannot run: a failure in CI, a skip (with the reason) elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    why = jd.missing_browser()
    if why:
        unavailable(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = jd.launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A QUICK run's outputs, made with the library at test size: 32 pairs of 32 px on the
    proxy base the package ships, 2 epochs of 8 steps at QUICK mode's learning rate."""
    from lite_controlnet.notebook.colab import prepare_fill50k
    from lite_controlnet.training.config import TrainConfig
    from lite_controlnet.presets import QUICK
    from lite_controlnet.training.trainer import train

    root = tmp_path_factory.mktemp("browser")
    data = prepare_fill50k(root / "data", num=32, size=QUICK.resolution)
    started = time.perf_counter()
    settings = {**QUICK.train_settings("lite"), "epochs": 2, "batch_size": 4, "num_validation": 2, "validation_steps": 2}
    final = train(TrainConfig(data=str(data), output=str(root / "run"), **settings), progress=False)
    print(f"quick run trained in {time.perf_counter() - started:.0f} s")
    return {"root": root, "data": data, "run": root / "run", "final": final,
            "env": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LITE_CONTROLNET_CACHE": str(root / "model-cache"),
                    "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}}


@pytest.fixture(scope="module", params=FRONTENDS, ids=[f.name for f in FRONTENDS])
def server(request, tmp_path_factory):
    """A notebook server of one frontend (its own environment), serving a fresh folder."""
    frontend = request.param
    why = jd.missing_frontend(frontend)
    if why:
        unavailable(why)
    quick_run = request.getfixturevalue("quick_run")  # only once the frontend is there
    root = tmp_path_factory.mktemp(frontend.name)
    with jd.JupyterServer(frontend, root, env=quick_run["env"]) as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed browser test: a screenshot and the console log of its page, named in the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when != "call":
        return
    for name, value in item.funcargs.items():
        if isinstance(value, jd.NotebookPage):
            shot, log = value.keep_evidence(jd.EVIDENCE, f"{item.name}-{name}".replace("/", "_"))
            tail = "\n".join(value.console[-30:])
            report.sections.append(("browser evidence", f"screenshot: {shot}\nconsole log: {log}\n"
                                                        f"last console lines:\n{tail}"))
