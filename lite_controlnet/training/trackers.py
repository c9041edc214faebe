"""Experiment trackers (`--report-to tensorboard|wandb|all`), through Accelerate's, as diffusers'
training scripts use them: the loss and learning rate of every optimizer step and each validation
grid, on the optimizer step's axis. `logs/loss.csv` and `loss.png` are written whatever is chosen.

Where the logs go: TensorBoard's under `<output>/logs/lite-controlnet` (`tensorboard --logdir
<output>/logs`, or `%tensorboard --logdir ...` in Colab); wandb's files under `<output>/logs/wandb`,
in the wandb project "lite-controlnet", named after the run folder.

A resumed run continues the same log. It redoes the steps after its checkpoint, and the redone
steps replace the logged ones: TensorBoard's writer is opened with `purge_step` (readers drop what
an earlier start logged from that step on), and wandb resumes the run of the id kept in
`<output>/logs/wandb-id`, where wandb keeps the first value of a step it already holds (the same
value: resumed training is exact).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..errors import UsageError

PROJECT = "lite-controlnet"  # the wandb project, and TensorBoard's folder under <output>/logs
GRID_TAG = "validation"  # the grids' name in the trackers
# how to install each tracker; whether it is installed, Accelerate judges (the package and its metadata)
_INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def _installed(name: str) -> bool:
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    return bool({"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[name]())


def tracker_names(report_to: str) -> list[str]:
    """The trackers `--report-to` asks for ("all": those installed), each checked to be installed;
    one that is not raises a `UsageError` that says what to install."""
    if report_to == "none":
        return []
    if report_to == "all":
        names = [name for name in _INSTALL if _installed(name)]
        if not names:
            raise UsageError("--report-to all found neither tensorboard nor wandb installed: pip install tensorboard "
                             "(or wandb), or pass --report-to none.")
        return names
    if report_to not in _INSTALL:
        raise UsageError(f"--report-to {report_to!r} is unknown: expected one of none, {', '.join(_INSTALL)}, all.")
    if not _installed(report_to):
        raise UsageError(f"--report-to {report_to} needs {report_to}, which is not installed: {_INSTALL[report_to]}, "
                         "or pass --report-to none.")
    return [report_to]


def accelerator_options(report_to: str, output: str | Path) -> dict[str, Any]:
    """The `Accelerator(...)` arguments that log to the trackers of `report_to` under `output`."""
    names = tracker_names(report_to)
    return {"log_with": names, "project_dir": str(Path(output) / "logs")} if names else {}


def start_trackers(accelerator: Any, config: dict[str, Any], output: str | Path, step: int) -> None:
    """Open the trackers on the main process to go on after optimizer step `step` (0: a new run,
    whose settings are stored with it); on the other processes none are opened."""
    if not accelerator.is_main_process or not accelerator.log_with:
        return
    logs = Path(output) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    options: dict[str, dict[str, Any]] = {"tensorboard": {"purge_step": step + 1}}
    if any(str(name) == "wandb" for name in accelerator.log_with):
        id_file = logs / "wandb-id"
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(8))
        options["wandb"] = {"dir": str(logs), "name": Path(output).resolve().name, "id": id_file.read_text().strip(),
                            "resume": "allow"}
    settings = {key: value if isinstance(value, (bool, int, float, str)) or value is None else json.dumps(value)
                for key, value in config.items()}  # trackers store plain values
    accelerator.init_trackers(PROJECT, config=settings if step == 0 else None, init_kwargs=options)


def log_grid(accelerator: Any, grid: PIL.Image.Image, step: int) -> None:
    """A validation grid to each open tracker, at optimizer `step` (0: before training)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({GRID_TAG: np.asarray(grid.convert("RGB"))[None]}, step=step, dataformats="NHWC")
            tracker.writer.flush()  # Accelerate flushes scalars only: a grid is seen at once, and not lost to a kill
        elif tracker.name == "wandb":
            tracker.log_images({GRID_TAG: [grid]}, step=step)


def end_trackers(accelerator: Any) -> None:
    """Close the open trackers (their files complete), leaving the process group alone."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
