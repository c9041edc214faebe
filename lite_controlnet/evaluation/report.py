"""Tables, plots and pictures of measured control modules (`study.train_measured`'s and
`scoring.timed_samples`' results, in notebook 03)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import PIL.Image
import torch

from ..training.grids import table_grid

if TYPE_CHECKING:
    from .scoring import Samples
    from .study import TrainingStats

# The fidelity scores in the table (of `metrics.aggregate_scores`), with which way is better.
FIDELITY_COLUMNS = {
    "disk_iou": "disk IoU (higher is better)",
    "edge_f1": "edge F1 (higher is better)",
    "one_disk_share": "one disk (share, higher is better)",
    "circle_colour_error": "circle colour error (CIEDE2000, lower is better)",
    "background_colour_error": "background colour error (CIEDE2000, lower is better)",
}


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of `module` (all of them, trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def result_rows(parameters: dict[str, int], training: dict[str, TrainingStats],
                sampling: dict[str, Samples]) -> list[dict[str, Any]]:
    """One row per kind: parameters, training and sampling measurements, and the fidelity scores
    of `FIDELITY_COLUMNS` that were measured."""
    rows = []
    for kind in parameters:
        t, s = training[kind], sampling[kind]
        row = {"module": kind, "parameters": parameters[kind], "train s/step": t.step_seconds,
               f"train memory GiB ({t.memory_kind})": math.nan if t.peak_memory is None else t.peak_memory / 2**30,
               "sample s/image": s.seconds_per_image}
        scores = s.mean if s.scores is not None else {}
        row.update({title: scores[key] for key, title in FIDELITY_COLUMNS.items() if scores.get(key) is not None})
        rows.append(row)
    return rows


def _format(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of `rows` (dicts; the columns are all their keys, in first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if k == 0 else "---:" for k in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def bar_plots(rows: list[dict[str, Any]], label: str = "module") -> Any:
    """A matplotlib figure with one bar chart per numeric column of `rows` (parameters on a log scale).

    Columns with a missing or NaN value in some row are left out (the table shows them as n/a).
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the notebook's backend alone

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)

    columns = [c for c in dict.fromkeys(k for row in rows for k in row)
               if c != label and all(number(row.get(c)) for row in rows)]
    per_row = min(5, len(columns))
    lines = math.ceil(len(columns) / per_row)
    fig = Figure(figsize=(3.0 * per_row, 3.2 * lines))
    axes = list(fig.subplots(lines, per_row, squeeze=False).flat)
    names = [str(row[label]) for row in rows]
    for ax, column in zip(axes, columns):
        values = [row[column] for row in rows]
        ax.bar(names, values, color=["tab:blue", "tab:orange", "tab:green", "tab:red"][: len(names)])
        ax.set_title("\n".join(textwrap.wrap(column, 24)), fontsize=9)
        if column == "parameters":
            ax.set_yscale("log")
        for k, v in enumerate(values):
            ax.annotate(_format(v), (k, v), ha="center", va="bottom", fontsize=8)
    for ax in axes[len(columns):]:
        ax.set_visible(False)  # the unused places of the last line
    fig.tight_layout()
    return fig


def sample_grid(samples: Sequence[tuple[PIL.Image.Image, str]], sampling: dict[str, Samples],
                count: int = 4) -> PIL.Image.Image:
    """Prompt | control | one column per module, for the first `count` samples (same seed per row).

    Tiles are the images' size, enlarged to at least 128 px (nearest neighbour) for legible prompts."""
    kinds = list(sampling)
    rows = [[prompt, control, *(sampling[k].images[r] for k in kinds)]
            for r, (control, prompt) in enumerate(samples[:count])]
    return table_grid(["prompt", "control", *kinds], rows, band=20)
