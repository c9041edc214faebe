"""Studies of control modules trained side by side: equal-budget runs measured for their step time
and memory, and fidelity curves scored after each chunk of training, resumably.

Equal budget (`equal_budget_configs`): the same base, data, resolution, batch, number of optimizer
steps and seed; each module with its own learning rate (by default 1e-4 for Lite, as "A
Lightweight ControlNet for Fine-Tuning Stable Diffusion on Colab GPU" trains it; 1e-5 for
ControlNet, as its paper). `train_measured` times a run's steps (the median of the steps in
`<output>/logs/loss.csv`, whose `seconds` column is cumulative, so steps that also saved a
checkpoint or drew a grid are left out) and its peak memory (`memory.PeakMemory`).

Fidelity curves (`fidelity_curves`): each variant (a control kind and its learning rate) trains
`eval_every` steps at a time, the variants taking turns so a busy machine slows all alike, and is
scored after each chunk by `scoring.score_control` (the one-step disk IoU, or with `condition` that
condition's controllability, also with shuffled controls, which must not help, and every
`sample_every` chunks and at the end full sampling; with `objects`, the shapes world's object
scores of the sampled images too, by number of objects).
Wall-clock is the training time the trainer records (evaluation excluded). Also the text-only
baseline and the no-prompt test (empty prompts). The summary and the plots: `summary.py`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..conditions.base import Condition
from ..controls import CONTROL_KINDS, load_control
from ..data.paired import PairedDataset
from ..training.checkpoint import list_checkpoints
from ..training.config import TIMESTEP_SAMPLINGS, TrainConfig
from ..training.logs import LossLog
from ..training.trainer import train
from .memory import PeakMemory
from .scoring import ScoreSettings, score_control
from .summary import summarize


# -- equal-budget training, measured ----------------------------------------------------------------


@dataclass
class TrainingStats:
    """What one training run measured."""

    kind: str
    steps: int  # optimizer steps in loss.csv
    step_seconds: float  # median seconds per optimizer step
    peak_memory: int | None  # bytes, while this call trained (None: the run was already complete)
    memory_kind: str
    final: Path  # the trained module's folder


def step_seconds(output: str | Path) -> float:
    """Median seconds per optimizer step from `<output>/logs/loss.csv` (NaN without steps)."""
    seconds = [float(row["seconds"]) for row in LossLog(output).read()]
    steps = [b - a for a, b in zip([0.0] + seconds, seconds)]
    return statistics.median(steps) if steps else math.nan


def equal_budget_configs(data: str | Path, output: str | Path, steps: int,
                         kinds: Sequence[str] = ("lite", "controlnet"), learning_rates: dict[str, float] | None = None,
                         **settings: Any) -> dict[str, TrainConfig]:
    """One `TrainConfig` per control kind, the same in all but the kind and its learning rate.

    Args:
        data: the dataset folder.
        output: the comparison's folder; kind `k` trains in `<output>/<k>`. Both share one cache
            (`<output>/cache` unless `cache_dir` is given).
        steps: optimizer steps for each kind (epochs are set to cover them).
        kinds: the control kinds to train.
        learning_rates: per kind; a kind left out gets `learning_rate` from `settings`, else its default.
        settings: any other `TrainConfig` field (base, resolution, batch_size, seed, ...).
    """
    unknown = sorted(set(learning_rates or {}) - set(kinds))
    if unknown:
        raise ValueError(f"learning_rates names {unknown}, which are not among the kinds compared {list(kinds)}.")
    output = Path(output)
    settings.setdefault("cache_dir", str(output / "cache"))
    batch_size = settings.get("batch_size", TrainConfig.batch_size)
    pairs = len(PairedDataset(data, resolution=None))
    epochs = max(1, math.ceil(steps / max(1, pairs // batch_size)))
    rates = {kind: (learning_rates or {}).get(kind, settings.get("learning_rate")) for kind in kinds}
    settings.pop("learning_rate", None)
    return {kind: TrainConfig(data=str(data), output=str(output / kind), control_kind=kind, max_steps=steps,
                              epochs=epochs, learning_rate=rates[kind], **settings) for kind in kinds}


def train_measured(cfg: TrainConfig, progress: bool = True) -> TrainingStats:
    """Train `cfg` (resuming if it was cut off) and measure its step time and peak memory.

    The step time covers every step in the log; the peak memory only the steps trained by this
    call, and is None when the run was already complete (a notebook run again after the end).
    """
    steps_before = len(LossLog(cfg.output).read())
    with PeakMemory() as peak:
        final = train(cfg, progress=progress)
    steps = len(LossLog(cfg.output).read())
    memory = peak.bytes if steps > steps_before else None
    return TrainingStats(cfg.control_kind, steps, step_seconds(cfg.output), memory, peak.kind, final)


def training_stats(result: dict, configs: dict[str, TrainConfig]) -> dict[str, TrainingStats]:
    """label -> `TrainingStats` of the runs `fidelity_curves` trained (peak memory over its chunks)."""
    stats = {}
    for label, cfg in configs.items():
        t = result["training"][label]
        stats[label] = TrainingStats(cfg.control_kind, t["steps"], t["step_seconds"], t["peak_memory"], t["memory_kind"],
                                     Path(t["final"]))
    return stats


# -- fidelity curves --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A control kind at a learning rate (None: the kind's default) and a timestep sampling (None:
    the kind's default), trained with a seed for `steps` optimizer steps (None: the study's)."""

    kind: str
    learning_rate: float | None = None
    seed: int = 0
    steps: int | None = None
    timesteps: str | None = None

    @property
    def label(self) -> str:
        """The kind, rate and sampling: runs of several seeds share it (`combine_seeds`)."""
        label = self.kind if self.learning_rate is None else f"{self.kind} lr {self.learning_rate:g}"
        return label if self.timesteps is None else f"{label} {self.timesteps}"

    @property
    def folder(self) -> str:
        name = f"run-{self.kind}" if self.learning_rate is None else f"run-{self.kind}-lr{self.learning_rate:g}"
        name = name if self.timesteps is None else f"{name}-{self.timesteps}"
        return name if self.seed == 0 else f"{name}-seed{self.seed}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """"lite", "lite:1e-3", "lite:1e-3:uniform" (the timestep sampling), each optionally with its
        own number of steps, "lite:1e-3@1000"."""
        spec, _, steps = text.partition("@")
        kind, _, rest = spec.partition(":")
        rate, _, timesteps = rest.partition(":")
        if kind not in CONTROL_KINDS:
            raise ValueError(f"variant {text!r}: the kind must be one of {CONTROL_KINDS}, optionally ':<learning "
                             "rate>', ':<timestep sampling>' and '@<steps>'.")
        try:
            learning_rate = float(rate) if rate else None
        except ValueError:
            raise ValueError(f"variant {text!r}: {rate!r} is not a learning rate (e.g. {kind}:1e-4).") from None
        if timesteps and timesteps not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"variant {text!r}: {timesteps!r} is not a timestep sampling: use one of "
                             f"{TIMESTEP_SAMPLINGS}.")
        if steps and not (steps.isdigit() and int(steps) > 0):
            raise ValueError(f"variant {text!r}: {steps!r} is not a number of steps (e.g. {spec}@1000).")
        return cls(kind, learning_rate, steps=int(steps) if steps else None, timesteps=timesteps or None)


def parse_variants(texts: Sequence[str], seed: int = 0) -> list[Variant]:
    """`Variant.parse` of each text, each trained with `seed`; a ValueError names the bad one."""
    return [dataclasses.replace(Variant.parse(text), seed=seed) for text in texts]


def variant_configs(variants: Sequence[Variant], data: str | Path, work: str | Path, steps: int,
                    **settings: Any) -> dict[str, TrainConfig]:
    """One `TrainConfig` per variant (`<work>/<variant.folder>`) for its steps (or `steps`), the same
    in all else."""
    if len({v.label for v in variants}) != len(variants):
        raise ValueError(f"each variant once: got {[v.label for v in variants]}.")
    settings = {"epochs": 1000, "num_workers": 0, "num_validation": 4, "validation_steps": 10, "keep_checkpoints": 1,
                **settings}
    return {v.label: TrainConfig(data=str(data), output=str(Path(work) / v.folder), control_kind=v.kind,
                                 learning_rate=v.learning_rate, max_steps=v.steps or steps, seed=v.seed,
                                 timestep_sampling=v.timesteps, **settings)
            for v in variants}


def fidelity_curves(
    configs: dict[str, TrainConfig],
    base: Any,
    heldout: PairedDataset,
    eval_every: int,
    sample_every: int = 4,
    scoring: ScoreSettings | None = None,
    log: Callable[[str], None] = print,
    state: str | Path | None = None,
    condition: Condition | None = None,
    objects: bool = False,
) -> dict:
    """Train each run of `configs` to its `max_steps` in chunks of `eval_every`, taking turns,
    scoring after each chunk.

    Args:
        configs: label -> the run's settings (`variant_configs`, or `equal_budget_configs`);
            each `max_steps` a multiple of `eval_every` (a run that stops sooner is scored at its end,
            the others go on).
        base: the runs' base, loaded (`load_base(cfg.base)`), for scoring.
        heldout: held-out pairs (not trained on; `heldout.held_out_pairs`).
        sample_every: full sampling after every this many chunks, and after the last.
        scoring: how each point is scored (None: `ScoreSettings()`).
        state: a JSON file that keeps the scores as they come: called again (after a
            disconnect), the points already scored are kept and the runs resume.
        condition: score as this condition does (`conditions.get_condition`; None: Fill50k's
            disk scores, the points' "one_step_iou").
        objects: the held-out pairs are shapes scenes: also their object scores (`score_control`).
    Returns:
        {"date", "condition" (with one), "variants", "text_only", "curves": {label: [point, ...]}, "training": {label:
        step seconds, peak memory, final folder}, "summary"}.
    """
    scoring = scoring or ScoreSettings()
    max_steps = {label: cfg.max_steps for label, cfg in configs.items()}
    if any(n is None or n % eval_every for n in max_steps.values()):
        raise ValueError(f"every run needs max_steps, a multiple of eval_every={eval_every}; got {max_steps}.")
    steps = max(max_steps.values())
    # the number of steps is not part of the key: a study continues longer, or ends sooner, from
    # the same points; and it may gain variants (a run already scored keeps its folder)
    key = {"eval_every": eval_every, "scoring": dataclasses.asdict(scoring),
           "runs": {label: cfg.output for label, cfg in configs.items()}}
    described = {"name": condition.name, "metric": condition.metric, **condition.params} if condition else None
    if condition is not None or objects:  # (a Fill50k study's key as it always was)
        key.update(condition=described, objects=objects)

    def scores(control_model: Any, sampled: bool, no_prompt: bool) -> dict:
        return _scores(base, control_model, heldout, scoring, sampled, no_prompt, condition, objects)

    state = Path(state) if state else None
    result = json.loads(state.read_text()) if state and state.is_file() else None
    if result is not None:
        stored = result.get("key", {})
        moved = {label: folder for label, folder in stored.get("runs", {}).items()
                 if label in key["runs"] and key["runs"][label] != folder}
        settings = ("eval_every", "scoring", "condition", "objects")
        if [stored.get(k) for k in settings] != [key.get(k) for k in settings] or moved:
            raise ValueError(f"{state} holds the scores of other settings ({stored}); give another state file for "
                             f"these ({key}), or delete it.")
        result["key"]["runs"] = {**stored["runs"], **key["runs"]}
        for label in configs:
            result["curves"].setdefault(label, [])
    if result is None:
        result = {
            "key": key,
            "date": datetime.date.today().isoformat(),
            **({"condition": described} if condition else {}),
            "variants": {},
            "text_only": scores(None, sampled=True, no_prompt=True),
            "curves": {label: [] for label in configs},
            "training": {},
        }
    result["variants"].update({label: {"kind": cfg.control_kind, "learning_rate": cfg.lr, "seed": cfg.seed,
                                       "timestep_sampling": cfg.timesteps} for label, cfg in configs.items()})
    # a run of this call that ends sooner drops its later points; the runs of other calls keep theirs
    result["curves"] = {label: [p for p in curve if label not in max_steps or p["step"] <= max_steps[label]]
                        for label, curve in result["curves"].items()}
    for chunk, target in enumerate(range(eval_every, steps + 1, eval_every), start=1):
        for label, cfg in configs.items():
            full = chunk % sample_every == 0 or target == cfg.max_steps
            if target > cfg.max_steps or any(point["step"] == target for point in result["curves"][label]):
                continue  # this run stops sooner, or the point was scored before a disconnect
            stats = train_measured(dataclasses.replace(cfg, max_steps=target, checkpoint_every=eval_every),
                                   progress=False)
            rows = LossLog(cfg.output).read()
            if len(rows) != target:  # a folder left by a longer run cannot be scored at this step
                raise RuntimeError(f"{cfg.output} holds {len(rows)} steps, not {target}: delete it, or use another "
                                   "output folder.")
            peaks = [m for m in (result["training"].get(label, {}).get("peak_memory"), stats.peak_memory) if m]
            result["training"][label] = {"steps": stats.steps, "step_seconds": stats.step_seconds,
                                         "peak_memory": max(peaks, default=None),
                                         "memory_kind": stats.memory_kind, "final": str(stats.final)}
            control_model = load_control(stats.final).eval()
            point = {"step": target, "seconds": round(float(rows[-1]["seconds"]), 2),
                     **scores(control_model, full, no_prompt=target == cfg.max_steps)}
            headline = "controllability" if condition else "disk_iou"
            if condition is None:
                point["one_step_iou"] = point["one_step"]["disk_iou"]
                point["one_step_shuffled_iou"] = point["one_step_shuffled"]["disk_iou"]
            result["curves"][label].append(point)
            if state:
                _write_json(state, result)
            name = condition.metric if condition else "IoU"
            log(f"{label:>20} step {target:5d} ({point['seconds']:7.1f} s): one-step {name} "
                f"{point['one_step'][headline]:.3f} (shuffled {point['one_step_shuffled'][headline]:.3f})"
                + (f", sampled {point['sampling'][headline]:.3f}" if "sampling" in point else ""))
    for label, cfg in configs.items():  # a longer study ended here: its last points lack the final scores
        point = result["curves"][label][-1]
        if "sampling" not in point or "no_prompt" not in point:
            at_end = [c for c in list_checkpoints(cfg.output) if c.step == cfg.max_steps]
            if not at_end:
                raise RuntimeError(f"{cfg.output} keeps no checkpoint of step {cfg.max_steps} (it was trained past "
                                   "it): its module cannot be scored at that step; delete it, or give the steps it "
                                   "reached.")
            end = scores(load_control(at_end[0].path / "control").eval(), sampled=True, no_prompt=True)
            point.update({k: v for k, v in end.items() if k not in point})
            if state:
                _write_json(state, result)
    result["summary"] = summarize(result)
    return result


def _scores(base: Any, control_model: Any, heldout: Any, scoring: ScoreSettings, sampled: bool,
            no_prompt: bool, condition: Condition | None = None, objects: bool = False) -> dict:
    """A curve's point: `score_control` with the studies' seed (1), sampled with the base's own scheduler."""
    return score_control(base, control_model, heldout, scoring, seed=1, sampled=sampled, no_prompt=no_prompt,
                         condition=condition, objects=objects).to_dict()


def _write_json(path: Path, value: dict) -> None:
    """Write `path` whole or not at all (a disconnect mid-write leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=1) + "\n")
