"""The model card of a trained control module, in the style of diffusers' training examples.

`model_card(folder, repo_id)` reads what the module's run recorded, never the network:

- the module folder (`final/`, or a checkpoint's `control/`): its kind, parameters, and the step
  of its manifest;
- its run folder (the folder's parent, or the checkpoint's run): `train_config.json` (base, data,
  training settings), the newest epoch grid `samples/epoch-NNN.png` (uploaded beside the card),
  and the reports `evaluate` wrote there (`--out runs/run1/report.json`), whose mean scores it lists;
- the dataset's recorded condition (`dataset.json`, see `data/dataset_folder.py`) when its folder is here.

What the run did not record is said to be unknown rather than guessed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..atomic import MANIFEST
from ..bases.loading import DEFAULT_BASE, PROXY_BASE, TINY_BASE

__all__ = ["HubCard", "TAGS", "loading_snippet", "model_card"]

TAGS = ["lite-controlnet", "controlnet", "stable-diffusion", "text-to-image", "diffusers"]
# SD1.5's license, which diffusers' train_controlnet.py writes on modules trained on it
SD15_LICENSE = "creativeml-openrail-m"
MAX_SCORES = 6  # columns of the scores table
GRID = "grid.png"  # the epoch grid, as uploaded beside the card
REPOSITORY = "https://github.com/lite-controlnet/lite-controlnet"
PAPER = "A Lightweight ControlNet for Fine-Tuning Stable Diffusion on Colab GPU"


@dataclass
class HubCard:
    """A model card and the files it refers to (name in the repository -> file here)."""

    card: ModelCard
    files: dict[str, Path] = field(default_factory=dict)


def run_folder(module: Path) -> Path | None:
    """The run a module folder belongs to: `<run>/final` or `<run>/checkpoints/step-N/control`."""
    for parent in (module.parent, module.parent.parent.parent):
        if (parent / "train_config.json").is_file():
            return parent
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def latest_grid(run: Path, step: int | None = None) -> tuple[Path, str] | None:
    """The run's newest grid and what it shows: the grid of `step` when training stopped inside an
    epoch (`samples/step-N.png`), else the newest epoch grid (`samples/epoch-NNN.png`); None if none."""
    if step is not None and (run / "samples" / f"step-{step:08d}.png").is_file():
        return run / "samples" / f"step-{step:08d}.png", f"at step {step}, where training ended"
    grids = sorted((run / "samples").glob("epoch-[0-9][0-9][0-9].png"))
    if not grids:
        return None
    epoch = int(grids[-1].stem.split("-")[1])
    return grids[-1], f"after epoch {epoch}" if epoch else "before training (no epoch ended)"


def evaluation_reports(run: Path) -> dict[str, dict[str, Any]]:
    """The `evaluate` reports at the top of the run folder (file name -> report), by name."""
    reports = {}
    for path in sorted(run.glob("*.json")):
        report = _read_json(path)
        if isinstance(report, dict) and isinstance(report.get("mean"), dict) and isinstance(report.get("settings"), dict):
            reports[path.name] = report
    return reports


def is_hub_id(text: str | None) -> bool:
    """Whether `text` names something on the Hub (`user/name`) rather than a folder or a short name."""
    if not text or text in (TINY_BASE, PROXY_BASE) or Path(text).expanduser().exists():
        return False
    from .download import looks_like_path

    return text.count("/") == 1 and not looks_like_path(text)


def parameter_counts(module: Any) -> tuple[int, int | None]:
    """The module's parameters, and a ControlNet's for SD1.5 when the module is made for SD1.5
    (counted on PyTorch's meta device: no memory, no download), else None."""
    from accelerate import init_empty_weights
    from diffusers import T2IAdapter

    from ..bases.sd_configs import SD15_UNET_CONFIG, empty_unet
    from ..controls import build_control
    from ..pipeline import check_control_fits

    count = sum(p.numel() for p in module.parameters())
    unet = empty_unet(SD15_UNET_CONFIG)
    try:
        if isinstance(module, T2IAdapter):
            if list(module.config.channels) != list(SD15_UNET_CONFIG["block_out_channels"]):
                return count, None
        else:
            check_control_fits(module, unet, 8)
    except ValueError:  # made for another base
        return count, None
    with init_empty_weights():
        controlnet = build_control("controlnet", unet)
    return count, sum(p.numel() for p in controlnet.parameters())


def loading_snippet(repo_id: str, base: str, condition: str | None) -> str:
    """Python that downloads the module, loads it on its base and samples one image."""
    what = f"a {condition} image" if condition else "a control image like those it was trained on"
    return f'''```python
import torch
from huggingface_hub import snapshot_download
from PIL import Image
from lite_controlnet import LiteControlNetPipeline

control = snapshot_download("{repo_id}")  # the control module: config.json and its weights
device = "cuda" if torch.cuda.is_available() else "cpu"
base = "{base}"  # the base it was trained on
pipe = LiteControlNetPipeline.from_base(base, controlnet=control, device=device,
                                        torch_dtype=torch.float16 if device == "cuda" else torch.float32)
control_image = Image.open("control.png").convert("RGB")  # {what}
image = pipe("a prompt as in training", control_image, num_inference_steps=20,
             generator=torch.Generator("cpu").manual_seed(0)).images[0]
image.save("out.png")
```'''


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else str(value)


def _scores_section(reports: dict[str, dict[str, Any]]) -> list[str]:
    if not reports:
        return []
    # the first scores of each report (disk IoU, colour errors, edge F1... on Fill50k), without the
    # counts of samples that had none
    names = [key for report in reports.values() for key, value in report["mean"].items()
             if key != "count" and not key.endswith("_none") and (value is None or isinstance(value, (int, float)))]
    columns = list(dict.fromkeys(names))[:MAX_SCORES]

    def one_step(report: dict[str, Any]) -> Any:
        scores = report.get("one_step")
        scores = scores.get("with_control") if isinstance(scores, dict) else None
        return scores.get("disk_iou") if isinstance(scores, dict) else None

    with_one_step = any(one_step(report) is not None for report in reports.values())
    lines = ["## Scores", "",
             "Measured by `python -m lite_controlnet evaluate` on held-out pairs (means over the samples"
             + ("; the one-step score denoises once at a fixed noise level" if with_one_step else "") + "):", "",
             "| report | control | samples | " + " | ".join(columns) + (" | one-step disk_iou" if with_one_step else "")
             + " |", "|---" * (len(columns) + 3 + with_one_step) + "|"]
    for name, report in reports.items():
        mean, settings = report["mean"], report["settings"]
        control = settings.get("control") or "none (text only)"
        lines.append(f"| {name} | {control} | {mean.get('count', settings.get('num', 'n/a'))} | "
                     + " | ".join(_number(mean.get(c)) for c in columns)
                     + (f" | {_number(one_step(report))}" if with_one_step else "") + " |")
    return [*lines, ""]


def model_card(folder: str | Path, repo_id: str, license: str | None = None) -> HubCard:
    """The model card of the control module in `folder`, to be uploaded as `repo_id`.

    Args:
        folder: a module folder written by training (`<run>/final`, or a checkpoint's `control/`).
        repo_id: the Hub repository it goes to (user/name): the loading snippet downloads it.
        license: the card's license; default: SD1.5's (creativeml-openrail-m), which a module
            trained on it inherits in diffusers' examples, else "other".
    """
    from ..controls import control_kind_of, load_control
    from ..data.dataset_folder import dataset_condition
    from ..training.config import TrainConfig

    folder = Path(folder)
    module = load_control(folder)
    run = run_folder(folder)
    saved = _read_json(run / "train_config.json") if run else None
    cfg = None
    if isinstance(saved, dict):
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        try:  # the settings this version knows; a --resume folder named then need not exist now
            cfg = TrainConfig.from_dict({**{k: v for k, v in saved.items() if k in known}, "resume": "auto"},
                                        source="train_config.json")
        except (TypeError, ValueError):  # malformed: the card says the settings were not recorded
            cfg = None
    kind = cfg.control_kind if cfg else control_kind_of(module)
    base = cfg.base if cfg else None
    # final/ holds its manifest; a checkpoint's control/ is listed in the checkpoint's
    manifest = _read_json(folder / MANIFEST if (folder / MANIFEST).is_file() else folder.parent / MANIFEST)
    step = manifest.get("step") if isinstance(manifest, dict) else None
    data = cfg.data if cfg else None
    condition = None
    if data and Path(data).is_dir():
        try:
            condition = dataset_condition(data)
        except ValueError:
            condition = None
    dataset_id = data if is_hub_id(data) else None
    count, controlnet = parameter_counts(module)
    grid = latest_grid(run, step) if run else None
    reports = evaluation_reports(run) if run else {}

    # 1. the metadata
    base_model = base if is_hub_id(base) else None
    card_data = ModelCardData(
        license=license or (SD15_LICENSE if base == DEFAULT_BASE else "other"),
        base_model=base_model,
        tags=[*TAGS, kind] if kind not in TAGS else list(TAGS),
        library_name="diffusers",
        datasets=[dataset_id] if dataset_id else None,
        pipeline_tag="text-to-image",
    )
    # 2. the body
    if base is None:
        base_text, snippet_base = "not recorded (no train_config.json beside the module)", DEFAULT_BASE
    elif is_hub_id(base):
        base_text, snippet_base = f"[{base}](https://huggingface.co/{base})", base
    elif base in (TINY_BASE, PROXY_BASE):
        shown = "the small base lite-controlnet ships" if base == PROXY_BASE else "a tiny random stand-in for tests"
        base_text, snippet_base = f"`{base}` ({shown})", base
    else:
        name = Path(base).name
        base_text, snippet_base = f"a local diffusers folder, `{name}`", name
    if dataset_id:
        dataset_text = f"[{dataset_id}](https://huggingface.co/datasets/{dataset_id})"
    else:
        dataset_text = f"a local dataset, `{Path(data).name}`" if data else "not recorded"
    lines = [
        f"# {repo_id.rsplit('/', 1)[-1]}", "",
        f"A `{kind}` control module for {base_text}, trained with [lite-controlnet]({REPOSITORY}): a lightweight "
        f"ControlNet after \"{PAPER}\". The base stays frozen; this module steers it with a control image.", "",
        f"- **Base model:** {base_text}",
        f"- **Condition:** {condition or 'not recorded with the dataset'}",
        f"- **Dataset:** {dataset_text}",
        f"- **Control kind:** `{kind}`",
        f"- **Parameters:** {count:,}"
        + (f" ({100 * count / controlnet:.2f}% of a ControlNet's {controlnet:,} for SD1.5)" if controlnet else ""),
        "",
    ]
    if cfg is not None:
        lines += ["## Training", "", "| setting | value |", "|---|---|"]
        settings = {"steps": step, "epochs": cfg.epochs, "max steps": cfg.max_steps, "resolution": cfg.resolution,
                    "batch size": cfg.batch_size, "learning rate": cfg.lr, "warm-up steps": cfg.lr_warmup_steps,
                    "timestep sampling": cfg.timesteps, "prompt dropout": cfg.prompt_dropout,
                    "control options": json.dumps(cfg.control_options or {}), "seed": cfg.seed,
                    "started from": cfg.init_from if is_hub_id(cfg.init_from) else
                    (Path(cfg.init_from).name if cfg.init_from else None)}
        lines += [f"| {key} | {value} |" for key, value in settings.items() if value is not None] + [""]
    elif step is not None:
        lines += [f"Trained for {step} steps.", ""]
    files = {}
    if grid is not None:
        files[GRID] = grid[0]
        lines += ["## Samples", "", f"The validation grid {grid[1]} (`samples/{grid[0].name}`): prompt, control, "
                  "reconstruction, text only, samples.", "", f"![validation grid](./{GRID})", ""]
    lines += _scores_section(reports)
    lines += ["## How to use", "",
              f"`pip install git+{REPOSITORY}`, then:", "",
              loading_snippet(repo_id, snippet_base, condition), ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return HubCard(ModelCard(content), files)
