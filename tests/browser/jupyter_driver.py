"""A real Jupyter server and a real headless Chromium, driven as a person would drive them.

Used by the browser tests (`tests/browser/`) and by `scripts/readme_pictures.py`.

- `JupyterServer`: a notebook server of a given virtual environment, on 127.0.0.1 with a random
  token, serving a temporary folder, its settings kept in that folder (nothing in ~/.jupyter);
  stopped with its kernels by `stop()`.
- Two frontends: `NOTEBOOK7` (Notebook 7 / JupyterLab 4 with ipywidgets 8, the main
  environment) and `CLASSIC6` (classic Notebook 6.5 with ipywidgets 7.7.1, the versions Colab
  pins). Each knows its menus, its prompts and its kernel indicator; the widgets' own classes
  (`widget-slider`, `widget-readout`, `widget-image`, ...) are the same in ipywidgets 7 and 8.
- `NotebookPage`: one notebook open in the browser: run all, wait until the kernel is idle,
  read what the page shows (images as pixels, text), and act on widgets by their descriptions.
- `parametrized_copy`: a notebook with values injected after its `parameters` cell (as
  papermill does) and after its QUICK cell, written to the server's folder.

Chromium is Debian's (`/usr/bin/chromium`, or `$CHROMIUM`), launched by Playwright through
`executable_path`: Playwright's own browser download is never used.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# What works on a machine with a closed network (each one keeps Chromium from calling out).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLAB_VENV = Path(os.environ.get("LITE_CONTROLNET_COLAB_VENV", ROOT / ".venv-colab"))
TRACEBACK = "Traceback (most recent call last)"
# where a failed browser test leaves its screenshot and console log
EVIDENCE = Path(os.environ.get("BROWSER_EVIDENCE", Path(__file__).parent / "evidence"))


# -- the frontends --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frontend:
    """How one notebook frontend is started and read."""

    name: str
    app: str  # the traitlets application that takes the server options
    run_menu: str  # the menu holding "run all", and its entry
    run_all: str
    code_cell: str  # CSS of a code cell, of its input prompt, and of its output area
    prompt: str
    output: str
    busy: str  # CSS present while the kernel is busy, idle: present when it is idle
    idle: str
    versions: tuple[str, str]  # what its notebook and ipywidgets versions start with
    setup_script: str  # what installs its environment

    def server_args(self, port: int, token: str, root: Path) -> list[str]:
        app = self.app
        token_option = "IdentityProvider.token" if app == "ServerApp" else f"{app}.token"
        root_option = "root_dir" if app == "ServerApp" else "notebook_dir"
        return ["--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--{app}.port_retries=0",
                f"--{token_option}={token}", f"--{app}.{root_option}={root}", "--allow-root",
                f"--{app}.terminals_enabled=False"]


NOTEBOOK7 = Frontend(
    name="notebook7-ipywidgets8", app="ServerApp", run_menu="Run", run_all="Run All Cells",
    code_cell=".jp-CodeCell", prompt=".jp-InputPrompt", output=".jp-OutputArea-output",
    busy='.jp-Notebook-ExecutionIndicator[data-status="busy"]',
    idle='.jp-Notebook-ExecutionIndicator[data-status="idle"]',
    versions=("7.", "8."), setup_script="scripts/setup_env.sh",
)
CLASSIC6 = Frontend(
    name="classic6-ipywidgets7", app="NotebookApp", run_menu="Cell", run_all="Run All",
    code_cell=".code_cell", prompt=".input_prompt", output=".output_area",
    busy="#kernel_indicator_icon.kernel_busy_icon", idle="#kernel_indicator_icon.kernel_idle_icon",
    versions=("6.5.", "7.7.1"), setup_script="scripts/setup_colab_env.sh",
)


def frontend_python(frontend: Frontend) -> Path:
    """The Python of the environment that serves `frontend`."""
    if frontend is NOTEBOOK7:
        return Path(sys.executable)
    return COLAB_VENV / "bin" / "python"


def missing_frontend(frontend: Frontend) -> str | None:
    """Why `frontend` cannot be started here, or None."""
    python = frontend_python(frontend)
    if not python.is_file():
        return f"{python} does not exist: run `bash {frontend.setup_script}`"
    check = "import notebook, ipywidgets; print(notebook.__version__, ipywidgets.__version__)"
    found = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    if found.returncode != 0:
        return f"{python} cannot import notebook and ipywidgets: {found.stderr.strip()[-500:]}"
    notebook, widgets = found.stdout.split()
    wanted = frontend.versions
    if not (notebook.startswith(wanted[0]) and widgets.startswith(wanted[1])):
        return (f"{python} has notebook {notebook} and ipywidgets {widgets}; {frontend.name} needs notebook "
                f"{wanted[0]}* and ipywidgets {wanted[1]}*: run `bash {frontend.setup_script}`")
    return None


def missing_browser() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed: pip install -e '.[dev]'"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM to its path)"
    return None


# -- the server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """A notebook server of `frontend` serving `root`, on 127.0.0.1 with a random token.

    Kernels get `env` (added to this process's environment). Its configuration, runtime and
    settings folders are inside `root/.jupyter-test`, so no user setting changes what it shows.
    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self, frontend: Frontend, root: Path, env: dict[str, str] | None = None, timeout: float = 180):
        self.frontend, self.root, self.timeout = frontend, Path(root), timeout
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        state = self.root / ".jupyter-test"
        self.log_path = state / "server.log"
        python = frontend_python(frontend)
        self.env = {**os.environ, **(env or {}),
                    "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_DATA_DIR": str(state / "data"),
                    "JUPYTER_RUNTIME_DIR": str(state / "runtime"), "IPYTHONDIR": str(state / "ipython"),
                    "JUPYTERLAB_SETTINGS_DIR": str(state / "lab-settings"),
                    "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces")}
        self.env.pop("JUPYTER_PATH", None)
        self.command = [str(python), "-m", "notebook", *frontend.server_args(self.port, self.token, self.root)]
        self._write_settings(state / "lab-settings")

    @staticmethod
    def _write_settings(folder: Path) -> None:
        """JupyterLab-based frontends: start the notebook's kernel without asking, render every
        cell (no windowing: a cell out of view is still in the page), fetch no news."""
        settings = {"notebook-extension/tracker": {"autoStartDefaultKernel": True, "windowingMode": "none"},
                    "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}
        for name, values in settings.items():
            path = folder / "@jupyterlab" / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def _api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"{self.base_url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def start(self) -> JupyterServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command, cwd=self.root, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"The {self.frontend.name} server exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                self._api("status")
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"The {self.frontend.name} server did not answer in {self.timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        """Shut down its kernels, then the server (killed if it does not stop in 20 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            for kernel in self._api("kernels"):
                self._api(f"kernels/{kernel['id']}", method="DELETE")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass  # the server is going anyway; SIGTERM below stops what is left
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def kernel_ready(self, path: str) -> bool:
        """Whether the notebook at `path` has a kernel that is idle with a page connected to it."""
        sessions = [s for s in self._api("sessions") if s.get("path", s.get("notebook", {}).get("path")) == path]
        return any(s["kernel"].get("execution_state") == "idle" and s["kernel"].get("connections", 0) > 0
                   for s in sessions)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""

    def __enter__(self) -> JupyterServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- notebooks with parameters ------------------------------------------------------------------


def parametrized_copy(name: str, folder: Path, overrides: dict, sizes: dict | None = None,
                      extra_cells: list[str] = ()) -> Path:
    """Write notebook `name` into `folder` with `overrides` in a cell after its `parameters` cell,
    `sizes` after its QUICK cell (QUICK mode's choices stand, at a smaller size) and
    `extra_cells` at the end; return the path. The repository's notebook is not touched."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)

    def cell(values: dict, tag: str) -> Any:
        return nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()),
                                         metadata={"tags": [tag]})

    parameters = [k for k, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    quick = [k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith("if QUICK:")]
    if len(parameters) != 1:
        raise ValueError(f"{name}.ipynb should have one cell tagged 'parameters', found {len(parameters)}")
    if sizes and quick:
        nb.cells.insert(quick[0] + 1, cell(sizes, "injected-sizes"))
    nb.cells.insert(parameters[0] + 1, cell(overrides, "injected-parameters"))
    nb.cells += [nbformat.v4.new_code_cell(source) for source in extra_cells]
    path = Path(folder) / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


# -- the browser --------------------------------------------------------------------------------


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, with a fresh profile (Playwright makes one per launch)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def decode_png(data: bytes) -> Any:
    """PNG bytes as an RGB uint8 array."""
    import numpy as np
    import PIL.Image

    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


_IMAGE_BYTES = """async (img) => {
    if (!img.getAttribute('src')) return null;
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let text = '';
    for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return btoa(text);
}"""

# Records each text the element shows, so that a test can wait for "Generating..." then its end.
_WATCH = """(el) => {
    window.__seen = [el.textContent];
    if (window.__watch) window.__watch.disconnect();
    window.__watch = new MutationObserver(() => window.__seen.push(el.textContent));
    window.__watch.observe(el, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


@dataclass
class NotebookPage:
    """One notebook open in the browser, with what its console said."""

    page: Any
    frontend: Frontend
    name: str
    console: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Any, server: JupyterServer, name: str, viewport=(1400, 1000),
             timeout: float = 180) -> NotebookPage:
        """Open notebook `name` in a new page and wait until its kernel is connected and idle."""
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        page = context.new_page()
        page.set_default_timeout(60_000)
        opened = cls(page, server.frontend, name)
        page.on("console", lambda m: opened.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: opened.console.append(f"[pageerror] {e}"))
        page.goto(server.url(f"notebooks/{name}.ipynb"))
        # The indicator says idle before the kernel is connected too: ask the server as well. A
        # page whose kernel has not connected within a minute is reloaded, as a person would (the
        # classic Notebook's websocket has once stayed unconnected on a busy machine).
        started = time.monotonic()
        reload_at, deadline = started + 60, started + timeout
        while not (server.kernel_ready(f"{name}.ipynb") and page.locator(server.frontend.idle).count()):
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{name}: no connected, idle kernel after {timeout:.0f} s")
            if now > reload_at:
                opened.console.append(f"[driver] no connected, idle kernel after {now - started:.0f} s: reloaded")
                page.reload()
                reload_at = now + 60
            time.sleep(0.5)
        return opened

    def close(self) -> None:
        self.page.context.close()

    # -- running --------------------------------------------------------------------------------

    def run_all(self, timeout: float = 600) -> float:
        """Run all cells from the menu, as a person would; wait until every cell has run and the
        kernel is idle; fail with the traceback if a cell failed. Returns the seconds taken."""
        started = time.monotonic()
        f, page = self.frontend, self.page
        if f is NOTEBOOK7:
            page.get_by_role("menuitem", name=f.run_menu, exact=True).click()
            page.get_by_role("menuitem", name=f.run_all, exact=True).click()
        else:
            page.locator("#menus a.dropdown-toggle").filter(has_text=re.compile(rf"^{f.run_menu}$")).click()
            page.locator("#run_all_cells > a").filter(has_text=re.compile(rf"^{f.run_all}$")).click()
        deadline = started + timeout
        while True:
            prompts = page.locator(f"{f.code_cell} {f.prompt}").all_text_contents()
            ran = [re.search(r"\[(\d+)\]", p) is not None for p in prompts]
            busy = any("*" in p for p in prompts) or page.locator(f.busy).count() > 0
            if not busy and (all(ran) or self.tracebacks()) and page.locator(f.idle).count() > 0:
                break
            if not (busy or any(ran)) and time.monotonic() > started + 60:
                raise TimeoutError(f"{self.name}: nothing ran within 60 s of 'run all'; prompts {prompts}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: cells still running after {timeout:.0f} s; prompts {prompts}")
            time.sleep(0.5)
        failed = self.tracebacks()
        if failed or not all(ran):
            raise AssertionError(f"{self.name}: run all stopped; prompts {prompts}\n" + "\n".join(failed)[-4000:])
        return time.monotonic() - started

    def tracebacks(self) -> list[str]:
        """The text of every output that shows a Python traceback."""
        texts = self.page.locator(self.frontend.output).all_inner_texts()
        return [t for t in texts if TRACEBACK in t or re.search(r"^\w*Error\b.*Traceback", t, re.M)]

    def output_texts(self) -> list[str]:
        return self.page.locator(self.frontend.output).all_inner_texts()

    # -- reading what is shown ------------------------------------------------------------------

    def cell(self, containing: str) -> Any:
        """The code cell whose text contains `containing` (input or output)."""
        return self.page.locator(self.frontend.code_cell).filter(has_text=containing).last

    def widget_output(self, containing_css: str) -> Any:
        """The output area holding a widget that matches `containing_css`."""
        return self.page.locator(self.frontend.output).filter(has=self.page.locator(containing_css)).last

    @staticmethod
    def image_bytes(img: Any) -> bytes | None:
        """The PNG an `<img>` shows, as the page holds it (None if it is hidden or empty)."""
        if not img.is_visible():
            return None
        encoded = img.evaluate(_IMAGE_BYTES)
        return base64.b64decode(encoded) or None if encoded else None

    @staticmethod
    def text_box(element: Any) -> dict:
        """The box of the text an element shows ({x, y, width, height}), which may overflow the element."""
        return element.evaluate("""(el) => { const range = document.createRange(); range.selectNodeContents(el);
            const r = range.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; }""")

    def broken_images(self) -> int:
        """How many widget images the page draws as a broken-image icon (shown, with no picture)."""
        return self.page.evaluate("""() => [...document.querySelectorAll('img.widget-image')].filter(
            img => img.offsetParent !== null && img.complete && img.naturalWidth === 0).length""")

    def image_pixels(self, img: Any) -> Any:
        data = self.image_bytes(img)
        return None if data is None else decode_png(data)

    # -- acting on widgets ----------------------------------------------------------------------

    def slider(self, scope: Any, description: str) -> Any:
        label = self.page.locator(".widget-label").filter(has_text=re.compile(rf"^{re.escape(description)}$"))
        return scope.locator(".widget-slider").filter(has=label).first

    def drag_slider(self, slider: Any, dx: float) -> str:
        """Drag the slider's handle by `dx` pixels with the mouse; return the readout shown."""
        handle = slider.locator(".noUi-handle, .ui-slider-handle").first
        handle.scroll_into_view_if_needed()
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        mouse = self.page.mouse
        mouse.move(x, y)
        mouse.down()
        mouse.move(x + dx, y, steps=8)
        mouse.up()
        return slider.locator(".widget-readout").inner_text()

    def type_slider(self, slider: Any, value: str) -> str:
        """Type `value` into the slider's readout and press Enter; return the readout shown."""
        readout = slider.locator(".widget-readout")
        readout.click()
        self.page.keyboard.press("Control+A")
        self.page.keyboard.type(value)
        self.page.keyboard.press("Enter")
        return readout.inner_text()

    def tab(self, scope: Any, title: str) -> None:
        scope.locator(".widget-tab .lm-TabBar-tab, .widget-tab .p-TabBar-tab").filter(
            has_text=re.compile(rf"^\s*{re.escape(title)}\s*$")).click()

    def button(self, scope: Any, text: str) -> Any:
        return scope.locator(".widget-button").filter(has_text=text)

    def watch_text(self, element: Any) -> None:
        """Start recording the texts that `element` shows (see `seen_texts`)."""
        element.evaluate(_WATCH)

    def seen_texts(self) -> list[str]:
        return self.page.evaluate("() => window.__seen || []")

    def click_and_wait(self, button: Any, status: Any, busy_text: str, timeout: float = 120) -> str:
        """Click `button` and wait until `status` has shown `busy_text` and then something else;
        return the final status text."""
        self.watch_text(status)
        button.click()
        self.page.wait_for_function(
            """(busy) => { const seen = window.__seen || []; const i = seen.findIndex(t => t.includes(busy));
                          return i >= 0 && seen.slice(i + 1).some(t => !t.includes(busy)); }""",
            arg=busy_text, timeout=timeout * 1000)
        return status.inner_text()

    # -- keeping evidence -------------------------------------------------------------------------

    def keep_evidence(self, folder: Path, name: str) -> tuple[Path, Path]:
        """A full-page screenshot and the console log, as `<folder>/<name>.png` and `.console.log`."""
        folder.mkdir(parents=True, exist_ok=True)
        shot, log = folder / f"{name}.png", folder / f"{name}.console.log"
        try:
            self.page.screenshot(path=str(shot), full_page=True)
        except Exception as error:  # a crashed page has no screenshot; the log still helps
            shot = folder / f"{name}.screenshot-failed.txt"
            shot.write_text(repr(error))
        log.write_text("\n".join(self.console) + "\n")
        return shot, log

