"""How control degrades as scenes get harder: a shapes study's sampled scores by the number of
objects in the scene, each kind read at equal wall-clock (`summary.summarize_seeds`).

"A Lightweight ControlNet for Fine-Tuning Stable Diffusion on Colab GPU" leaves open "how model
performance degrades with increasing dataset complexity"; `complexity_table` answers it for one
condition, Lite against ControlNet, and `plot_complexity` draws it.
"""

from __future__ import annotations

from typing import Any

from .summary import CONDITION_SCORES, OBJECT_COUNTS

SCORES = (("score", "controllability"), ("object_iou", "per-object IoU"))


def complexity_table(combined: dict, kinds: tuple[str, ...] = ("lite", "controlnet"), when: str = "equal_wall_clock",
                     ) -> dict[str, Any]:
    """{score: {kind or "text_only": {n objects: {mean, min, max}, or a float for text only}}} of
    a combined shapes study (`combine_seeds` of `fidelity_curves(..., objects=True)` results),
    each kind at its best variant, read `when` ("equal_wall_clock" or "end")."""
    by_kind = combined["summary"].get("by_kind", {})
    missing = [kind for kind in kinds if kind not in by_kind]
    if missing:
        raise ValueError(f"the study has no {missing} to compare (it has {sorted(by_kind)}).")
    table: dict[str, Any] = {}
    for name, _ in SCORES:
        row: dict[str, Any] = {kind: {n: by_kind[kind][when].get(f"sampled_{name}_{n}_objects") for n in OBJECT_COUNTS}
                               for kind in kinds}
        row["text_only"] = {n: CONDITION_SCORES[f"sampled_{name}_{n}_objects"](combined["text_only"])
                            for n in OBJECT_COUNTS}
        table[name] = row
    return table


def plot_complexity(studies: dict[str, dict], title: str = "") -> Any:
    """The sampled controllability and per-object IoU against the number of objects, one row per
    condition (`studies`: condition name -> its combined study): Lite and ControlNet at equal
    wall-clock (mean and min-max over seeds), and the text-only base."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 3.0 * len(studies)))
    axes = fig.subplots(len(studies), len(SCORES), squeeze=False)
    for row, (condition, combined) in zip(axes, studies.items()):
        table = complexity_table(combined)
        metric = combined["condition"]["metric"]
        for ax, (name, label) in zip(row, SCORES):
            for kind, values in table[name].items():
                counts = [n for n in OBJECT_COUNTS if values.get(n) is not None]
                if kind == "text_only":
                    ax.plot(counts, [values[n] for n in counts], color="grey", ls="--", marker=".", label="no control")
                    continue
                means = [values[n]["mean"] for n in counts]
                low = [m - values[n]["min"] for m, n in zip(means, counts)]
                high = [values[n]["max"] - m for m, n in zip(means, counts)]
                ax.errorbar(counts, means, yerr=[low, high], marker="o", capsize=3, label=kind)
            ax.set_xticks(list(OBJECT_COUNTS))
            ax.set_xlabel("objects in the scene")
            ax.set_ylabel(f"{condition}: sampled {metric}" if name == "score" else f"{condition}: sampled {label}")
        row[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
