"""Fidelity against steps and seconds: control modules trained side by side on one base and one
dataset, in chunks that resume exactly, and scored after each chunk.

Each variant (a control kind and its learning rate) trains `eval_every` steps at a time, the
variants taking turns so a busy machine slows all alike. After each chunk: the one-step disk
IoU (held-out targets noised to `timestep`, predicted in one step; also with shuffled controls,
which must not help) and, every `sample_every` chunks and at the end, full sampling (disk IoU,
colour errors, edge F1). Wall-clock is the training time the trainer records (evaluation
excluded). Also the text-only baseline and the no-prompt test (empty prompts).
`benchmarks/fidelity.py` and the compare notebook call `fidelity_curves`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..training.checkpoint import list_checkpoints
from .compare import TrainingStats, pipeline_for, train_measured
from ..training.config import TIMESTEP_SAMPLINGS, TrainConfig
from ..controls import CONTROL_KINDS, load_control
from ..data.paired import PairedDataset
from .evaluate import evaluate, one_step_scores
from ..training.logs import LossLog


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


@dataclass
class ScoreSettings:
    """How a trained module is scored: the one-step scores and full sampling (see `evaluate`)."""

    heldout: int = 64  # held-out pairs scored in one step
    timestep: int = 800
    sample_num: int = 32  # pairs sampled in full
    sample_steps: int = 20
    guidance: float = 3.0


ProbeSettings = ScoreSettings  # the old name


def sample_scores(base: Any, control_model: Any, heldout: PairedDataset, scoring: ScoreSettings,
                  window: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Mean full-sampling scores of the first `scoring.sample_num` held-out pairs, with control
    applied on the `window` share of the schedule, sampled with the base's own scheduler."""
    pipe = pipeline_for(base, control_model, scheduler=None)
    return evaluate(pipe, heldout, num=scoring.sample_num, steps=scoring.sample_steps, seed=1,
                    guidance=scoring.guidance, control_window=window)[0]["mean"]


def score_module(base: Any, control_model: Any, heldout: PairedDataset, scoring: ScoreSettings, full: bool,
                 no_prompt: bool = False) -> dict:
    """One-step scores (also with shuffled controls); with `full`, full-sampling scores; with
    `no_prompt`, one-step scores with empty prompts."""
    indices = list(range(scoring.heldout))

    def one_step(**kwargs: Any) -> dict:
        return one_step_scores(base, control_model, heldout, indices, scoring.timestep, seed=1, **kwargs)

    out = {"one_step": one_step(), "one_step_shuffled": one_step(shuffle=True) if control_model is not None else None}
    if full:
        out["sampling"] = sample_scores(base, control_model, heldout, scoring)
    if no_prompt:
        out["no_prompt"] = one_step(empty_prompt=True)
    return out


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
    *,
    probe: ScoreSettings | None = None,
) -> dict:
    """Train each run of `configs` to its `max_steps` in chunks of `eval_every`, taking turns,
    scoring after each chunk.

    Args:
        configs: label -> the run's settings (`variant_configs`, or `compare.equal_budget_configs`);
            each `max_steps` a multiple of `eval_every` (a run that stops sooner is scored at its end,
            the others go on).
        base: the runs' base, loaded (`load_base(cfg.base)`), for scoring.
        heldout: held-out pairs (not trained on; `heldout.held_out_pairs`).
        sample_every: full sampling after every this many chunks, and after the last.
        scoring: how each point is scored (`ScoreSettings()`); `probe` is its old name.
        state: a JSON file that keeps the scores as they come: called again (after a
            disconnect), the points already scored are kept and the runs resume.
    Returns:
        {"date", "variants", "text_only", "curves": {label: [point, ...]}, "training": {label:
        step seconds, peak memory, final folder}, "summary"}.
    """
    if probe is not None and scoring is not None:
        raise ValueError("give the score settings once: scoring= (probe= is its old name).")
    scoring = scoring or probe or ScoreSettings()
    max_steps = {label: cfg.max_steps for label, cfg in configs.items()}
    if any(n is None or n % eval_every for n in max_steps.values()):
        raise ValueError(f"every run needs max_steps, a multiple of eval_every={eval_every}; got {max_steps}.")
    steps = max(max_steps.values())
    # the number of steps is not part of the key: a study continues longer, or ends sooner, from
    # the same points; and it may gain variants (a run already scored keeps its folder)
    # "probe": the score settings' key in state files written before they were renamed
    key = {"eval_every": eval_every, "probe": dataclasses.asdict(scoring),
           "runs": {label: cfg.output for label, cfg in configs.items()}}
    state = Path(state) if state else None
    result = json.loads(state.read_text()) if state and state.is_file() else None
    if result is not None:
        stored = result.get("key", {})
        moved = {label: folder for label, folder in stored.get("runs", {}).items()
                 if label in key["runs"] and key["runs"][label] != folder}
        if [stored.get("eval_every"), stored.get("probe")] != [eval_every, key["probe"]] or moved:
            raise ValueError(f"{state} holds the scores of other settings ({stored}); give another state file for "
                             f"these ({key}), or delete it.")
        result["key"]["runs"] = {**stored["runs"], **key["runs"]}
        for label in configs:
            result["curves"].setdefault(label, [])
    if result is None:
        result = {
            "key": key,
            "date": datetime.date.today().isoformat(),
            "variants": {},
            "text_only": score_module(base, None, heldout, scoring, full=True, no_prompt=True),
            "curves": {label: [] for label in configs},
            "training": {},
        }
    result["variants"].update({label: {"kind": cfg.control_kind, "learning_rate": cfg.lr, "seed": cfg.seed,
                                       "timestep_sampling": cfg.timesteps} for label, cfg in configs.items()})
    result["curves"] = {label: [p for p in curve if p["step"] <= max_steps.get(label, steps)]
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
                     **score_module(base, control_model, heldout, scoring, full, no_prompt=target == cfg.max_steps)}
            point["one_step_iou"] = point["one_step"]["disk_iou"]
            point["one_step_shuffled_iou"] = point["one_step_shuffled"]["disk_iou"]
            result["curves"][label].append(point)
            if state:
                _write_json(state, result)
            log(f"{label:>20} step {target:5d} ({point['seconds']:7.1f} s): one-step IoU {point['one_step_iou']:.3f} "
                f"(shuffled {point['one_step_shuffled_iou']:.3f})"
                + (f", sampled IoU {point['sampling']['disk_iou']:.3f}" if "sampling" in point else ""))
    for label, cfg in configs.items():  # a longer study ended here: its last points lack the final scores
        point = result["curves"][label][-1]
        if "sampling" not in point or "no_prompt" not in point:
            at_end = [c for c in list_checkpoints(cfg.output) if c.step == cfg.max_steps]
            if not at_end:
                raise RuntimeError(f"{cfg.output} keeps no checkpoint of step {cfg.max_steps} (it was trained past "
                                   "it): its module cannot be scored at that step; delete it, or give the steps it "
                                   "reached.")
            scores = score_module(base, load_control(at_end[0].path / "control").eval(), heldout, scoring,
                                  full=True, no_prompt=True)
            point.update({k: v for k, v in scores.items() if k not in point})
            if state:
                _write_json(state, result)
    result["summary"] = summarize(result)
    return result


def _write_json(path: Path, value: dict) -> None:
    """Write `path` whole or not at all (a disconnect mid-write leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=1) + "\n")


def training_stats(result: dict, configs: dict[str, TrainConfig]) -> dict[str, TrainingStats]:
    """label -> `TrainingStats` of the runs `fidelity_curves` trained (peak memory over its chunks)."""
    stats = {}
    for label, cfg in configs.items():
        t = result["training"][label]
        stats[label] = TrainingStats(cfg.control_kind, t["steps"], t["step_seconds"], t["peak_memory"], t["memory_kind"],
                                     Path(t["final"]))
    return stats


MIN_GAIN = 0.01  # one IoU point: a smaller "gain" over no control is noise at these numbers of held-out pairs


def reached(curve: list[dict], key: str, start: float, fraction: float = 0.9) -> dict | None:
    """The first point of `curve` that has made `fraction` of its final gain over `start` (the
    score without control: IoU does not start from 0); None if it gained less than `MIN_GAIN`."""
    gain = curve[-1][key] - start
    if gain < MIN_GAIN:
        return None
    for point in curve:
        if point[key] - start >= fraction * gain:
            return {"step": point["step"], "seconds": point["seconds"]}
    return None


def at_seconds(curve: list[dict], seconds: float, key: str) -> float:
    """`key` of the last point trained for at most `seconds`."""
    points = [p for p in curve if p["seconds"] <= seconds]
    return points[-1][key] if points else curve[0][key]


def summarize(result: dict) -> dict:
    """The questions of the comparison, from the curves: each kind at its best learning rate at
    equal wall-clock, how fast each makes 90% of its final gain, the no-prompt test."""
    text_only = result["text_only"]["one_step"]["disk_iou"]
    curves = result["curves"]
    equal_seconds = min(curve[-1]["seconds"] for curve in curves.values())
    at_equal = {label: at_seconds(curve, equal_seconds, "one_step_iou") for label, curve in curves.items()}
    kinds = [k for k in CONTROL_KINDS if any(v["kind"] == k for v in result["variants"].values())]
    best = {kind: max((label for label, v in result["variants"].items() if v["kind"] == kind), key=at_equal.get)
            for kind in kinds}
    summary = {
        "reach_90pct_of_final_one_step_gain": {label: reached(curve, "one_step_iou", text_only)
                                               for label, curve in curves.items()},
        "equal_wall_clock_seconds": equal_seconds,
        "one_step_iou_at_equal_wall_clock": at_equal,
        "best_variant_at_equal_wall_clock": best,
        "text_only_one_step_iou": text_only,
        "no_prompt_one_step_iou": {label: curve[-1]["no_prompt"]["disk_iou"] for label, curve in curves.items()},
        "text_only_no_prompt_one_step_iou": result["text_only"]["no_prompt"]["disk_iou"],
    }
    if {"lite", "controlnet"} <= set(best):
        lite, cn = at_equal[best["lite"]], at_equal[best["controlnet"]]
        summary["lite_reaches_90pct_of_controlnet_at_equal_wall_clock"] = lite >= 0.9 * cn
        # IoU starts at the text-only level, not 0: the share of ControlNet's gain is the sterner
        # ratio (None while ControlNet has not gained: a ratio of noise means nothing)
        summary["lite_share_of_controlnet_gain_at_equal_wall_clock"] = (
            round((lite - text_only) / (cn - text_only), 3) if cn - text_only >= MIN_GAIN else None)
    return summary


PANELS = (  # (y label, point -> value or None, text-only value)
    ("one-step disk IoU", lambda p: p["one_step_iou"], lambda t: t["one_step"]["disk_iou"]),
    ("sampled disk IoU", lambda p: p.get("sampling", {}).get("disk_iou"), lambda t: t["sampling"]["disk_iou"]),
    ("sampled edge F1", lambda p: p.get("sampling", {}).get("edge_f1"), lambda t: t["sampling"]["edge_f1"]),
    ("sampled disk colour error", lambda p: p.get("sampling", {}).get("circle_colour_error"),
     lambda t: t["sampling"]["circle_colour_error"]),
)


def plot_fidelity(result: dict, title: str = "") -> Any:
    """Scores against optimizer steps (top) and training seconds (bottom), one panel per score;
    dotted: the one-step IoU with shuffled controls; dashed grey: no control."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(PANELS), 6.4))
    axes = fig.subplots(2, len(PANELS))
    for row, x in enumerate(("step", "seconds")):
        for col, (name, value, baseline) in enumerate(PANELS):
            ax = axes[row][col]
            for label, curve in result["curves"].items():
                points = [(p[x], value(p)) for p in curve if value(p) is not None]
                line, = ax.plot(*zip(*points), marker="o", label=label) if points else ax.plot([], [], label=label)
                if col == 0:
                    ax.plot([p[x] for p in curve], [p["one_step_shuffled_iou"] for p in curve], ls=":",
                            color=line.get_color(), label=f"{label}, shuffled control")
            ax.axhline(baseline(result["text_only"]), color="grey", ls="--", label="no control")
            ax.set_xlabel("optimizer step" if x == "step" else "training seconds")
            ax.set_ylabel(name)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
