"""Lite against the original ControlNet at equal budget: fidelity against steps and seconds.

    python benchmarks/fidelity.py                        # the committed proxy base, CPU
    python benchmarks/fidelity.py --variants lite:1e-3 controlnet:1e-4 controlnet:1e-3
    python benchmarks/fidelity.py --base stable-diffusion-v1-5/stable-diffusion-v1-5 --resolution 512 ...

A variant is a control kind with an optional learning rate (`kind:lr`; without one, the
kind's default): a learning-rate sweep is part of a fair comparison.

Both modules train on the same base and data with the same trainer, in chunks of
`--eval-every` steps (each chunk resumes the run exactly), taking turns so a busy machine
slows both alike. After each chunk: the one-step disk IoU (held-out targets noised to t=800,
predicted in one step; also with shuffled controls, which must not help) and, every
`--sample-every` chunks, full sampling (disk IoU, colour errors, edge F1). Wall-clock is the
training time the trainer records (evaluation excluded). Also the text-only baseline and the
no-prompt test (empty prompts). Writes benchmarks/results/fidelity-<base>.json and a plot.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
from pathlib import Path

import torch
from fill50k_splits import fill50k_splits

from lite_controlnet import TrainConfig, load_base, load_control, train
from lite_controlnet.evaluate import evaluate, one_step_scores
from lite_controlnet.pipeline import LiteControlNetPipeline
from lite_controlnet.proxy_base import PROXY_BASE_DIR

HERE = Path(__file__).resolve().parent
KINDS = ("lite", "controlnet")


def parse_variant(text: str) -> tuple[str, str, float | None]:
    """"lite" or "lite:1e-3" -> (label, kind, learning rate or None)."""
    kind, _, lr = text.partition(":")
    if kind not in KINDS:
        raise SystemExit(f"--variants {text!r}: the kind must be one of {KINDS}, optionally with ':<learning rate>'.")
    try:
        rate = float(lr) if lr else None
    except ValueError:
        raise SystemExit(f"--variants {text!r}: {lr!r} is not a learning rate (e.g. {kind}:1e-4).") from None
    return (kind if rate is None else f"{kind} lr {rate:g}"), kind, rate


def trained_seconds(output: Path) -> float:
    with open(output / "logs" / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["seconds"]) if rows else 0.0


def scores(base, control, heldout, args, full: bool) -> dict:
    indices = list(range(args.heldout))
    out = {
        "one_step": one_step_scores(base, control, heldout, indices, args.timestep, seed=1),
        "one_step_shuffled": one_step_scores(base, control, heldout, indices, args.timestep, seed=1, shuffle=True)
        if control is not None else None,
    }
    if full:
        pipe = LiteControlNetPipeline(base.vae, base.text_encoder, base.tokenizer, base.unet, base.scheduler, control)
        pipe.set_progress_bar_config(disable=True)
        out["sampling"] = evaluate(pipe, heldout, num=args.sample_num, steps=args.sample_steps, seed=1,
                                   guidance=args.guidance)[0]["mean"]
    return out


def reached(curve: list[dict], key: str, start: float, fraction: float = 0.9) -> dict | None:
    """The first point of `curve` that has made `fraction` of its final gain over `start` (the
    score without control: IoU does not start from 0); None if it never gained."""
    gain = curve[-1][key] - start
    if gain <= 0:
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
    best = {kind: max((label for label, v in result["variants"].items() if v["kind"] == kind), key=at_equal.get)
            for kind in KINDS if any(v["kind"] == kind for v in result["variants"].values())}
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
    if len(best) == 2:
        lite, cn = at_equal[best["lite"]], at_equal[best["controlnet"]]
        summary["lite_reaches_90pct_of_controlnet_at_equal_wall_clock"] = lite >= 0.9 * cn
        # IoU starts at the text-only level, not 0: the share of ControlNet's gain is the sterner ratio
        summary["lite_share_of_controlnet_gain_at_equal_wall_clock"] = (
            round((lite - text_only) / (cn - text_only), 3) if cn > text_only else None)
    return summary


def plot(result: dict, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    for label, curve in result["curves"].items():
        for ax, x in zip(axes, ("step", "seconds")):
            line, = ax.plot([p[x] for p in curve], [p["one_step_iou"] for p in curve], marker="o", label=label)
            ax.plot([p[x] for p in curve], [p["one_step_shuffled_iou"] for p in curve], ls=":", color=line.get_color(),
                    label=f"{label}, shuffled control")
    for ax, x in zip(axes, ("optimizer step", "training seconds")):
        ax.axhline(result["text_only"]["one_step"]["disk_iou"], color="grey", ls="--", label="no control")
        ax.set_xlabel(x)
        ax.set_ylabel(f"one-step disk IoU (t={result['settings']['timestep']})")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Lite vs ControlNet on {result['settings']['base_name']}, {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(PROXY_BASE_DIR))
    parser.add_argument("--work", default="outputs/fidelity", help="data and runs (kept: re-running resumes)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--train-num", type=int, default=4000)
    parser.add_argument("--heldout", type=int, default=64, help="held-out pairs for the one-step probe")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--sample-every", type=int, default=4, help="full sampling every this many evaluations")
    parser.add_argument("--sample-num", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--timestep", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=["lite", "controlnet"],
                        help="kind or kind:learning_rate, e.g. lite:1e-3 controlnet:1e-4 (default rates: TrainConfig's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--summarize", type=Path, help="only recompute the summary and plot of this results file")
    args = parser.parse_args()
    if args.summarize:
        result = json.loads(args.summarize.read_text())
        result["summary"] = summarize(result)
        args.summarize.write_text(json.dumps(result, indent=1) + "\n")
        plot(result, args.summarize.with_suffix(".png"))
        print(json.dumps(result["summary"], indent=1))
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    train_dir, heldout = fill50k_splits(work, args.train_num, max(args.heldout, args.sample_num), args.resolution)
    base = load_base(args.base)
    variants = [parse_variant(v) for v in args.variants]
    if len({label for label, _, _ in variants}) != len(variants):
        raise SystemExit(f"--variants {args.variants}: each variant once.")

    result = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} thread(s)"
        if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "settings": {**vars(args), "base_name": Path(args.base).name},
        "text_only": scores(base, None, heldout, args, full=True),
        "variants": {label: {"kind": kind, "learning_rate": lr} for label, kind, lr in variants},
        "curves": {label: [] for label, _, _ in variants},
    }
    result["text_only"]["no_prompt"] = one_step_scores(base, None, heldout, list(range(args.heldout)),
                                                       args.timestep, seed=1, empty_prompt=True)
    evaluations = 0
    for target in range(args.eval_every, args.steps + 1, args.eval_every):
        evaluations += 1
        full = evaluations % args.sample_every == 0 or target == args.steps
        for label, kind, lr in variants:
            output = work / (f"run-{kind}" if lr is None else f"run-{kind}-lr{lr:g}")
            cfg = TrainConfig(data=str(train_dir), output=str(output), base=args.base, control=kind,
                              resolution=args.resolution, batch_size=args.batch_size, epochs=1000,
                              max_steps=target, learning_rate=lr, num_workers=0, num_validation=4,
                              validation_steps=10, checkpoint_every=args.eval_every, keep_checkpoints=1)
            final = train(cfg, progress=False)
            with open(output / "logs" / "loss.csv", newline="") as f:
                done = len(list(csv.DictReader(f)))
            if done != target:  # a run folder left by a longer run cannot be scored at this step
                raise SystemExit(f"{output} holds {done} steps, not {target}: delete it (or use another --work).")
            control = load_control(final).eval()
            point = {"step": target, "seconds": round(trained_seconds(output), 2), **scores(base, control, heldout, args, full)}
            point["one_step_iou"] = point["one_step"]["disk_iou"]
            point["one_step_shuffled_iou"] = point["one_step_shuffled"]["disk_iou"]
            if target == args.steps:
                point["no_prompt"] = one_step_scores(base, control, heldout, list(range(args.heldout)), args.timestep,
                                                     seed=1, empty_prompt=True)
            result["curves"][label].append(point)
            print(f"{label:>20} step {target:5d} ({point['seconds']:7.1f} s): one-step IoU {point['one_step_iou']:.3f} "
                  f"(shuffled {point['one_step_shuffled_iou']:.3f})"
                  + (f", sampled IoU {point['sampling']['disk_iou']:.3f}" if "sampling" in point else ""), flush=True)

    result["summary"] = summarize(result)
    out = Path(args.out) if args.out else HERE / "results" / f"fidelity-{Path(args.base).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=1))
    print(f"Wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
