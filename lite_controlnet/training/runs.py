"""What defines a training run, so that a resume continues the same run and two runs never mix.

A run is defined by its data (the content of its manifest, wherever the folder now lies), its
base model, its control module (kind and options), its resolution, batch size and seed. Each
checkpoint records them in `run.json`; a resume that changes one is refused in one line that
names it. A fresh start (`--resume never`) in a folder that holds another run is refused too:
its checkpoints would outrank the new ones, its `final/` and loss log would be replaced, and the
next plain command would resume the old run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..bases.loading import PROXY_BASE, TINY_BASE
from .config import TrainConfig
from ..data.paired import PairedDataset
from ..errors import UsageError

RUN_FILE = "run.json"
# What a checkpoint written before run.json existed can still be checked against (train_config.json).
_LEGACY_KEYS = ("base", "control", "control_options", "resolution", "batch_size", "seed")


def data_fingerprint(dataset: PairedDataset) -> str:
    """A short hash of the dataset's manifest: the same pairs and prompts, wherever the folder is."""
    return hashlib.sha256(Path(dataset.manifest).read_bytes()).hexdigest()[:16]


def base_id(base: str) -> str:
    """The base as a run records it: a hub id or alias as given, a local folder by its full path."""
    path = Path(base).expanduser()
    if base in (TINY_BASE, PROXY_BASE) or not path.is_dir():
        return base
    return str(path.resolve())


def run_identity(cfg: TrainConfig, dataset: PairedDataset) -> dict[str, Any]:
    """What defines the run of `cfg` on `dataset` (JSON-ready)."""
    identity = {
        "data": data_fingerprint(dataset),
        "base": base_id(cfg.base),
        "control": cfg.control_kind,  # the key of run.json files written before the rename: kept
        "control_options": cfg.control_options or {},
        "resolution": cfg.resolution,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
    }
    return json.loads(json.dumps(identity))  # tuples as lists, as read back from a file


def saved_identity(checkpoint: Path) -> dict[str, Any]:
    """The identity recorded in a checkpoint folder (from its settings when it predates run.json)."""
    if (checkpoint / RUN_FILE).is_file():
        return json.loads((checkpoint / RUN_FILE).read_text())
    config = json.loads((checkpoint / "train_config.json").read_text())
    legacy = {key: config.get(key) for key in _LEGACY_KEYS}
    legacy["control"] = config.get("control", config.get("control_kind"))
    legacy["base"] = base_id(legacy["base"]) if isinstance(legacy["base"], str) else legacy["base"]
    legacy["control_options"] = legacy["control_options"] or {}
    return legacy


def check_same_run(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume `checkpoint` (identity `saved`) with settings that define another run."""
    changed = [key for key in current if key in saved and saved[key] != current[key]]
    if not changed:
        return
    flags = {"data": "--data (the manifest's content differs)", "control_options": "--control-options"}
    details = "; ".join(f"{flags.get(key, '--' + key.replace('_', '-'))}: {saved[key]!r} -> {current[key]!r}"
                        for key in changed)
    raise UsageError(
        f"{checkpoint} belongs to another run ({details}). Resume with that run's settings, or start a new run "
        f"in another --output."
    )


def refuse_mixing(output: Path, newest_step: int | None, has_final: bool, why: str) -> None:
    """Refuse a start that would mix a new run with the one `output` holds."""
    held = []
    if newest_step is not None:
        held.append(f"checkpoints up to step {newest_step}")
    if has_final:
        held.append("a final/ module")
    raise UsageError(
        f"{output} holds another run ({' and '.join(held)}); {why} would mix the two (its checkpoints outrank new "
        f"ones, final/ and the loss log would be replaced). Use another --output, or move that run aside first "
        f"(e.g. mv {output} {output}-old)."
    )
