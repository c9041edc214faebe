"""What fidelity curves answer: each kind read at equal wall-clock and at the end of training, the
mean and spread over seeds, and the plots.

Equal wall-clock has one definition here: where the best ControlNet's mean sampled score (Fill50k's
disk IoU, or a condition's controllability) plateaus (first within 5% of its best), each variant
read at its last point trained for at most that many seconds (`summarize_seeds`). `combine_seeds` takes one `study.fidelity_curves` result
per seed (same variants, steps and score settings) and answers with the mean of the seeds,
giving min and max beside each mean; `summarize` is one seed's answer, the same questions asked
of that seed alone. `benchmarks/fidelity.py --combine` calls `combine_seeds`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

MIN_GAIN = 0.01  # one IoU point: a smaller "gain" over no control is noise at these numbers of held-out pairs
# (name, point -> value or None): the scores combined at each step
SCORES: dict[str, Callable[[dict], float | None]] = {
    "one_step_iou": lambda p: p["one_step_iou"],
    "one_step_shuffled_iou": lambda p: p["one_step_shuffled_iou"],
    "sampled_iou": lambda p: p.get("sampling", {}).get("disk_iou"),
    "sampled_edge_f1": lambda p: p.get("sampling", {}).get("edge_f1"),
    "sampled_colour_error": lambda p: p.get("sampling", {}).get("circle_colour_error"),
    "no_prompt_iou": lambda p: p.get("no_prompt", {}).get("disk_iou"),
}
# the same for a study of a condition (`fidelity_curves(..., condition=...)`): its controllability,
# the shapes world's object scores, and both by the number of objects in the scene
OBJECT_COUNTS = (1, 2, 3, 4)
CONDITION_SCORES: dict[str, Callable[[dict], float | None]] = {
    "one_step_score": lambda p: p["one_step"]["controllability"],
    "one_step_shuffled_score": lambda p: p["one_step_shuffled"]["controllability"],
    "sampled_score": lambda p: p.get("sampling", {}).get("controllability"),
    "sampled_object_iou": lambda p: p.get("sampling", {}).get("object_iou"),
    "sampled_right_object_count": lambda p: p.get("sampling", {}).get("right_object_count"),
    "sampled_object_colour_error": lambda p: p.get("sampling", {}).get("object_colour_error"),
    "no_prompt_score": lambda p: p.get("no_prompt", {}).get("controllability"),
    **{f"sampled_{name}_{n}_objects": (lambda p, n=n, key=key: p.get("sampling_by_objects", {}).get(str(n), {}).get(key))
       for n in OBJECT_COUNTS for name, key in (("score", "controllability"), ("object_iou", "object_iou"))},
}
PLATEAU = 0.95  # ControlNet has plateaued once its mean sampled score is within 5% of its best


def score_names(result: dict) -> dict[str, Any]:
    """The keys a study's summary reads, by role: Fill50k's disk IoU, or, for a study of a
    condition (its result names it), the condition's controllability and the object scores."""
    if result.get("condition"):
        return {"scores": CONDITION_SCORES, "one_step": "one_step_score", "shuffled": "one_step_shuffled_score",
                "sampled": "sampled_score", "text_key": "controllability",
                "read": ["sampled_object_iou", "sampled_right_object_count", "sampled_object_colour_error",
                         *(k for k in CONDITION_SCORES if k.endswith("_objects"))],
                "shares": ["sampled_score", "sampled_object_iou",
                           *(k for k in CONDITION_SCORES if k.endswith("_objects"))]}
    return {"scores": SCORES, "one_step": "one_step_iou", "shuffled": "one_step_shuffled_iou", "sampled": "sampled_iou",
            "text_key": "disk_iou", "read": ["sampled_edge_f1"], "shares": ["sampled_iou"]}


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def mean_curve(curves: Sequence[list[dict]], step_seconds: float | None = None,
               scores: dict[str, Callable[[dict], float | None]] = SCORES) -> list[dict]:
    """One curve per seed -> one curve of {step, seconds, <score>: {mean, min, max}} at the steps
    every seed scored (a seed scored more often adds nothing between them), a score only where
    every seed has it. With `step_seconds` (a step's time measured on a quiet machine), the
    seconds are steps x that time, and the runs' own wall-clock is kept as "recorded_seconds"."""
    steps = [[p["step"] for p in curve] for curve in curves]
    common = sorted(set(steps[0]).intersection(*steps[1:]))
    if not common or any(s[-1] != steps[0][-1] for s in steps):
        raise ValueError(f"the seeds were scored at different steps: {steps}.")
    out = []
    for points in zip(*([p for p in curve if p["step"] in common] for curve in curves)):
        recorded = _spread([p["seconds"] for p in points])
        point: dict[str, Any] = {"step": points[0]["step"], "seconds": recorded}
        if step_seconds is not None:
            point["seconds"] = _spread([round(point["step"] * step_seconds, 2)])
            point["recorded_seconds"] = recorded
        for name, value in scores.items():
            values = [value(p) for p in points]
            if all(v is not None for v in values):
                point[name] = _spread(values)
        out.append(point)
    return out


def _at(curve: list[dict], seconds: float, score: str) -> dict | None:
    """The last point with `score` trained for at most `seconds` (mean seconds)."""
    points = [p for p in curve if score in p and p["seconds"]["mean"] <= seconds]
    return points[-1] if points else None


def combine_seeds(results: Sequence[dict], step_seconds: dict[str, float] | None = None,
                  partial: bool = False) -> dict:
    """One `study.fidelity_curves` result per seed -> {"seeds", "variants", "text_only", "curves": {label:
    mean curve}, "summary"}.

    Args:
        results: one `fidelity_curves` result per seed; a variant that only some seeds ran is the
            mean of those (its "seeds" says which), when `partial` allows it.
        step_seconds: control kind -> its training step's seconds, measured alone on a quiet machine
            (`benchmarks/proxy_step_time.py`): the seconds axis becomes steps x that, instead of the
            runs' wall-clock, which depends on what else shared the machine. Every kind or none.
    """
    labels = list(dict.fromkeys(label for r in results for label in r["curves"]))
    if not partial and any(list(r["curves"]) != labels for r in results):
        raise ValueError(f"every seed needs the same variants: {[list(r['curves']) for r in results]}.")
    seeds = [next(iter(r["variants"].values())).get("seed", 0) for r in results]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"each seed once: got {seeds}.")
    having = {label: [r for r in results if label in r["curves"]] for label in labels}
    variants = {label: {**{k: v for k, v in having[label][0]["variants"][label].items() if k != "seed"},
                        **({"seeds": [r["variants"][label]["seed"] for r in having[label]]} if partial else {})}
                for label in labels}
    missing = sorted({v["kind"] for v in variants.values()} - set(step_seconds)) if step_seconds else []
    if missing:
        raise ValueError(f"step_seconds lacks the kind(s) {missing}: measure every kind of the study, or give none.")
    scores = score_names(results[0])["scores"]
    curves = {label: mean_curve([r["curves"][label] for r in having[label]],
                                step_seconds[variants[label]["kind"]] if step_seconds else None, scores)
              for label in labels}
    combined = {"seeds": seeds, "variants": variants, "text_only": results[0]["text_only"], "curves": curves,
                **({"condition": results[0]["condition"]} if results[0].get("condition") else {}),
                "seconds": "steps x step time measured alone" if step_seconds else "the runs' wall-clock"}
    if step_seconds:
        kinds = dict.fromkeys(v["kind"] for v in variants.values())
        combined["step_seconds"] = {kind: step_seconds[kind] for kind in kinds}
    combined["summary"] = summarize_seeds(combined)
    return combined


def summarize(result: dict) -> dict:
    """The summary of one seed's `fidelity_curves` result: `summarize_seeds` of it alone."""
    return combine_seeds([result])["summary"]


def summarize_seeds(combined: dict) -> dict:
    """Each kind at its best learning rate (best final mean sampled score), read where the best
    ControlNet's mean sampled score has plateaued (equal wall-clock) and at the end; the default
    Lite's share of ControlNet's gains there."""
    curves, variants = combined["curves"], combined["variants"]
    names = score_names(combined)
    one_key, shuffled_key, sampled_key = names["one_step"], names["shuffled"], names["sampled"]
    text = combined["text_only"]
    base = {one_key: text["one_step"][names["text_key"]], sampled_key: text["sampling"][names["text_key"]]}
    if combined.get("condition"):
        base.update({key: CONDITION_SCORES[key](text) for key in names["read"]})

    def final(label: str, score: str) -> float:
        return [p for p in curves[label] if score in p][-1][score]["mean"]

    best = {}
    for kind in dict.fromkeys(v["kind"] for v in variants.values()):
        best[kind] = max((label for label, v in variants.items() if v["kind"] == kind),
                         key=lambda label: final(label, sampled_key))
    summary: dict[str, Any] = {"best_variant": best, "text_only": base}
    if "controlnet" not in best:
        return summary
    cn = curves[best["controlnet"]]
    sampled = [p for p in cn if sampled_key in p]
    top = max(p[sampled_key]["mean"] for p in sampled)
    plateau = next(p for p in sampled if p[sampled_key]["mean"] >= PLATEAU * top)
    seconds = plateau["seconds"]["mean"]
    # reached only if a later point confirms it: at the last point ControlNet may still be rising
    summary["controlnet_plateau"] = {"step": plateau["step"], "seconds": seconds, sampled_key: top,
                                     "reached": plateau is not sampled[-1]}
    rows = {}
    for label in curves:  # every variant, read where the best ControlNet plateaus and at its end
        row = {}
        for when, limit in (("equal_wall_clock", seconds), ("end", float("inf"))):
            one, samp = _at(curves[label], limit, one_key), _at(curves[label], limit, sampled_key)
            row[when] = {"step": one["step"] if one else 0,
                         one_key: one[one_key] if one else None,
                         shuffled_key: one[shuffled_key] if one else None,
                         "sampled_step": samp["step"] if samp else 0,
                         sampled_key: samp[sampled_key] if samp else None,
                         **{key: samp.get(key) if samp else None for key in names["read"]}}
        rows[label] = row
    summary["by_variant"] = rows
    table = {kind: rows[label] for kind, label in best.items()}
    summary["by_kind"] = table

    def share(kind: str, when: str, score: str, over_base: bool) -> float | None:
        mine, theirs = table[kind][when][score], table["controlnet"][when][score]
        if mine is None or theirs is None:
            return None
        b = base[score] if over_base else 0.0
        return round((mine["mean"] - b) / (theirs["mean"] - b), 3) if theirs["mean"] - b >= MIN_GAIN else None

    summary["share_of_controlnet"] = {
        kind: {when: {"one_step_gain": share(kind, when, one_key, True),
                      **{score: share(kind, when, score, False) for score in names["shares"]}}
               for when in ("equal_wall_clock", "end")}
        for kind in best if kind != "controlnet"}
    # shuffled controls must not help: no variant of a kind beats no control by a gain that counts
    summary["shuffled_helps"] = {
        kind: any(rows[label]["end"][shuffled_key]["mean"] - base[one_key] >= MIN_GAIN
                  for label, v in variants.items() if v["kind"] == kind and rows[label]["end"][shuffled_key])
        for kind in best}
    return summary


def plot_seeds(combined: dict, title: str = "") -> Any:
    """Mean scores (lines) and their min-max over seeds (bands) against optimizer steps (top) and
    training seconds (bottom); dashed grey: no control; dotted vertical: ControlNet's plateau."""
    from matplotlib.figure import Figure

    text = combined["text_only"]
    if combined.get("condition"):
        metric = combined["condition"]["metric"]
        panels = ((f"one-step {metric}", "one_step_score", CONDITION_SCORES["one_step_score"](text)),
                  (f"sampled {metric}", "sampled_score", CONDITION_SCORES["sampled_score"](text)),
                  ("sampled per-object IoU", "sampled_object_iou", CONDITION_SCORES["sampled_object_iou"](text)))
    else:
        panels = (("one-step disk IoU", "one_step_iou", text["one_step"]["disk_iou"]),
                  ("sampled disk IoU", "sampled_iou", text["sampling"]["disk_iou"]),
                  ("sampled edge F1", "sampled_edge_f1", text["sampling"]["edge_f1"]))
    fig = Figure(figsize=(4.2 * len(panels), 6.6))
    axes = fig.subplots(2, len(panels))
    plateau = combined["summary"].get("controlnet_plateau")
    for row, x in enumerate(("step", "seconds")):
        for col, (name, score, baseline) in enumerate(panels):
            ax = axes[row][col]
            for label, curve in combined["curves"].items():
                points = [p for p in curve if score in p]
                xs = [p[x] if x == "step" else p[x]["mean"] for p in points]
                line, = ax.plot(xs, [p[score]["mean"] for p in points], marker="o", ms=3, label=label)
                ax.fill_between(xs, [p[score]["min"] for p in points], [p[score]["max"] for p in points],
                                color=line.get_color(), alpha=0.2)
            ax.axhline(baseline, color="grey", ls="--", label="no control")
            if plateau:
                ax.axvline(plateau[x] if x == "step" else plateau["seconds"], color="black", ls=":", lw=1)
            ax.set_xlabel("optimizer step" if x == "step" else "training seconds")
            ax.set_ylabel(name)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


PANELS = (  # (y label, point -> value or None, text-only value)
    ("one-step disk IoU", lambda p: p["one_step_iou"], lambda t: t["one_step"]["disk_iou"]),
    ("sampled disk IoU", lambda p: p.get("sampling", {}).get("disk_iou"), lambda t: t["sampling"]["disk_iou"]),
    ("sampled edge F1", lambda p: p.get("sampling", {}).get("edge_f1"), lambda t: t["sampling"]["edge_f1"]),
    ("sampled disk colour error", lambda p: p.get("sampling", {}).get("circle_colour_error"),
     lambda t: t["sampling"]["circle_colour_error"]),
)


def plot_fidelity(result: dict, title: str = "") -> Any:
    """One seed's scores against optimizer steps (top) and training seconds (bottom), one panel per
    score; dotted: the one-step IoU with shuffled controls; dashed grey: no control."""
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
