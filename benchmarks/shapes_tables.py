"""The shapes studies' blocks of RESULTS.md and README.md (`benchmarks/readme.py` writes them), made
from benchmarks/results/shapes-<condition>.json (`python benchmarks/shapes_study.py --combine`).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONDITIONS = ("canny", "segmentation", "outline")
NAMES = {"edge_f1": "canny edge F1", "miou": "segmentation mIoU", "outline_iou": "outline IoU"}
METRICS = {"edge_f1": "edge F1 of canny edges found in the image against the control's",
           "miou": "mIoU of the object classes found in the image, objects told apart by the prompt's colours",
           "outline_iou": "IoU of the regions the outlines enclose and the objects found in the image"}
KINDS = {"lite": "Lite (default, feedback)", "lite-static": "Lite static", "lite-mlp": "Lite MLP (the paper's design)",
         "t2i-adapter": "T2I-Adapter", "controlnet": "ControlNet"}


def studies() -> dict[str, dict]:
    """condition -> its combined study, for those measured."""
    return {c: json.loads((RESULTS / f"shapes-{c}.json").read_text()) for c in CONDITIONS
            if (RESULTS / f"shapes-{c}.json").is_file()}


def _ms(value: dict | None, fmt: str = ".3f") -> str:
    if value is None:
        return ""
    if value["min"] == value["max"]:
        return f"{value['mean']:{fmt}}"
    return f"{value['mean']:{fmt}} ({value['min']:{fmt}}-{value['max']:{fmt}})"


def _variant(v: dict) -> str:
    seeds = v.get("seeds", [])
    return (f"{KINDS.get(v['kind'], v['kind'])}, {v.get('timestep_sampling') or 'uniform'} timesteps, lr "
            f"{v['learning_rate']:g}, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}")


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _plateau(r: dict) -> str:
    p = r["summary"]["controlnet_plateau"]
    return (f"{p['seconds']:.0f} s of training, where the best ControlNet's sampled score plateaus (step {p['step']})"
            if p["reached"] else f"{p['seconds']:.0f} s of training, the best ControlNet's last point (step "
            f"{p['step']}; still rising there, so a lower bound of its plateau)")


def study_block() -> str:
    """RESULTS.md: per condition, every variant at equal wall-clock and at the end, the shares and
    the complexity table."""
    found = studies()
    if not found:
        return ("Not measured yet: run `python benchmarks/shapes_study.py --condition canny --seed N`, then "
                "`--combine` (the shapes studies).")
    lines = []
    for condition, r in found.items():
        s, st, variants = r["summary"], r["settings"], r["variants"]
        rows, text, labels = s["by_variant"], s["text_only"], list(s["by_variant"])
        seconds = ", ".join(f"{KINDS.get(k, k)} {v:.3f} s" for k, v in r.get("step_seconds", {}).items())
        metric = r["condition"]["metric"]
        lines += [
            f"### {condition}", "",
            f"Score: {metric}, {METRICS.get(metric, metric)}. On proxy-shapes ({r['machine']}, {r['date']}; seeds "
            f"{', '.join(map(str, r['seeds']))}; up to {max(c[-1]['step'] for c in r['curves'].values())} steps at "
            f"batch {st['batch_size']}, 128 px, {st['train_num']:,} training scenes of 1 to 4 objects; held-out: "
            f"{st['per_count']} scenes of each number of objects, {st['heldout']} scored in one step, "
            f"{st['sample_num']} sampled in full; `python benchmarks/shapes_study.py --condition {condition} --seed N`, "
            "then `--combine`). Mean of the seeds (min-max). "
            + (f"Seconds are steps times each kind's step measured alone ({seconds}; `python "
               "benchmarks/proxy_step_time.py --base proxy-shapes`)." if seconds else "Seconds: the runs' wall-clock."),
            ""]
        for when, title in (("equal_wall_clock", f"**At equal wall-clock**: {_plateau(r)}"),
                            ("end", "**At the end of training**")):
            lines += [title, "", "| | no control | " + " | ".join(_variant(variants[k]) for k in labels) + " |",
                      "|---|---:|" + "---:|" * len(labels)]
            table = (("steps trained", "", "step", ""), (f"one-step {metric}", "one_step_score", "one_step_score", ".3f"),
                     ("... shuffled controls (must not help)", "", "one_step_shuffled_score", ".3f"),
                     (f"sampled {metric}", "sampled_score", "sampled_score", ".3f"),
                     ("sampled per-object IoU", "sampled_object_iou", "sampled_object_iou", ".3f"),
                     ("sampled: right number of objects", "sampled_right_object_count", "sampled_right_object_count",
                      ".0%"),
                     ("sampled object colour error", "sampled_object_colour_error", "sampled_object_colour_error",
                      ".1f"))
            for name, base_key, key, fmt in table:
                first = f"{text[base_key]:{fmt}}" if base_key and text.get(base_key) is not None else ""
                cells = [str(rows[k][when][key]) if key == "step" else _ms(rows[k][when][key], fmt) for k in labels]
                lines.append(f"| {name} | {first} | " + " | ".join(cells) + " |")
            lines.append("")
        shares, best = s["share_of_controlnet"], s["best_variant"]
        lines.append(f"Share of the best ControlNet's ({_variant(variants[best['controlnet']])}) sampled score / "
                     "per-object IoU, each kind's best variant: "
                     + "; ".join(f"{KINDS.get(k, k)} {_share(sh['equal_wall_clock']['sampled_score'])} / "
                                 f"{_share(sh['equal_wall_clock']['sampled_object_iou'])} at equal wall-clock, "
                                 f"{_share(sh['end']['sampled_score'])} / {_share(sh['end']['sampled_object_iou'])} "
                                 "at the end" for k, sh in shares.items())
                     + ". Shuffled controls help " + (", ".join(KINDS.get(k, k) for k, v in s["shuffled_helps"].items()
                                                            if v) or "no kind") + ".")
        lines += ["", complexity_rows(r), "",
                  f"![{condition} curves](results/shapes-{condition}.png)", ""]
    lines.append("![complexity](results/shapes-complexity.png)")
    if (RESULTS / "shapes-canny-cli.json").is_file():
        cli = json.loads((RESULTS / "shapes-canny-cli.json").read_text())
        lines += ["", f"Through the command line with its defaults (`{cli['command']}`: `make-shapes --condition canny`, "
                  f"`train --base proxy-shapes` for 400 steps of 16, `evaluate` on {cli['settings']['num']} held-out "
                  f"scenes of another scene seed): sampled canny edge F1 {cli['sampled']['lite']:.3f} against "
                  f"{cli['sampled']['text_only']:.3f} text only ({cli['ratio']}x)."]
    return "\n".join(lines).rstrip()


def complexity_rows(r: dict) -> str:
    """The complexity table of one condition: sampled score and per-object IoU by objects in the scene."""
    s, metric = r["summary"], r["condition"]["metric"]
    by, text = s["by_kind"], s["text_only"]
    lines = [f"By objects in the scene, at equal wall-clock (sampled {metric} / per-object IoU):", "",
             "| objects | no control | Lite | ControlNet | Lite's share |", "|---:|---:|---:|---:|---:|"]
    for n in (1, 2, 3, 4):
        cells = []
        for kind in ("lite", "controlnet"):
            row = by[kind]["equal_wall_clock"]
            score, iou = row.get(f"sampled_score_{n}_objects"), row.get(f"sampled_object_iou_{n}_objects")
            cells.append(f"{_ms(score)} / {_ms(iou)}" if score and iou else "")
        share = s["share_of_controlnet"]["lite"]["equal_wall_clock"]
        lines.append(f"| {n} | {text[f'sampled_score_{n}_objects']:.3f} / {text[f'sampled_object_iou_{n}_objects']:.3f} | "
                     f"{cells[0]} | {cells[1]} | {_share(share.get(f'sampled_score_{n}_objects'))} / "
                     f"{_share(share.get(f'sampled_object_iou_{n}_objects'))} |")
    return "\n".join(lines)


def summary_block() -> str:
    """README: per condition, Lite's share of ControlNet's controllability and per-object IoU at
    equal wall-clock, and the complexity plot."""
    found = studies()
    if not found:
        return "Not measured yet: run `python benchmarks/shapes_study.py` (the shapes studies)."
    parts = []
    for condition, r in found.items():
        s = r["summary"]
        lite, cn = s["by_kind"]["lite"]["equal_wall_clock"], s["by_kind"]["controlnet"]["equal_wall_clock"]
        share = s["share_of_controlnet"]["lite"]["equal_wall_clock"]
        seeds = len(r["variants"][s["best_variant"]["lite"]].get("seeds", r["seeds"]))
        metric = r["condition"]["metric"]
        parts.append(f"{_share(share['sampled_score'])} of the best ControlNet's {NAMES.get(metric, metric)} "
                     f"({lite['sampled_score']['mean']:.2f} against {cn['sampled_score']['mean']:.2f}, no control "
                     f"{s['text_only']['sampled_score']:.2f}; {seeds} seed{'s' if seeds > 1 else ''}) and "
                     f"{_share(share['sampled_object_iou'])} of its per-object IoU")
    return ("Beyond one disk (`python benchmarks/shapes_study.py`: scenes of 1 to 4 objects on the latent "
            "proxy-shapes base, 128 px through a VAE; sampled scores at equal wall-clock: where the best ControlNet "
            "plateaus or, still rising, ends): Lite reaches " + "; ".join(parts) + ". By objects in the scene below; the "
            "details, and every other study (each kind at equal budget, Lite's designs, costs on CPU and GPU), in "
            "[RESULTS.md](benchmarks/RESULTS.md#the-shapes-world): "
            "![sampled scores by objects in the scene](benchmarks/results/shapes-complexity.png)")
