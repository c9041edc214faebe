"""The T4 question, answered by the real trainer: with GPU memory capped at 15 GiB (a Colab T4's
usable memory) and fp16, what per-step batch does the hardware plan choose for Lite and for the
original ControlNet at 512 px, and which memory savers does each need?

    python benchmarks/t4_cap.py                       # needs a CUDA GPU with more than 15 GiB
    python benchmarks/t4_cap.py --memory-gib 15 --resolution 512 --batch-size 16 --steps 6

Each control kind trains in its own process, from a random SD1.5 base written in the diffusers
layout (the real architecture; memory does not depend on weight values) on a small synthetic
Fill50k, through `lite_controlnet.train` with `max_gpu_memory` set: the plan probes per-step
batches 16, 8, 4, 2, 1 without savers, then with gradient checkpointing, then with 8-bit AdamW
(if bitsandbytes is installed), and keeps the first that fits with 10% headroom.
Writes benchmarks/results/t4-cap-<card>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def child(args: argparse.Namespace) -> None:
    """Train one control kind under the cap and print one JSON line."""
    from lite_controlnet import TrainConfig
    from lite_controlnet.training.logs import LossLog
    from lite_controlnet.training.trainer import Trainer

    cuda = torch.cuda.is_available()
    shutil.rmtree(args.work / f"run-{args.child}", ignore_errors=True)  # a fresh run: never mixed with an earlier one
    cfg = TrainConfig(
        data=str(args.work / "data"), output=str(args.work / f"run-{args.child}"), base=str(args.work / "base"),
        control_kind=args.child, resolution=args.resolution, batch_size=args.batch_size, max_steps=args.steps, epochs=100,
        precision="fp16" if cuda else "fp32", max_gpu_memory=args.memory_gib if cuda else None,
        num_validation=2, validation_steps=10, checkpoint_every=10_000, resume="never",
    )
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    trainer.run()
    rows = LossLog(cfg.output).read()
    elapsed = [float(r["seconds"]) for r in rows]
    step_seconds = [b - a for a, b in zip(elapsed, elapsed[1:])]
    plan = trainer.plan
    print(json.dumps({
        "control": args.child, "device": trainer.info.name, "precision": plan.precision,
        "batch_size": cfg.batch_size, "micro_batch": plan.micro_batch, "accumulation": plan.accumulation,
        "gradient_checkpointing": plan.gradient_checkpointing, "use_8bit_adam": plan.use_8bit_adam,
        "xformers": plan.xformers, "probe_peak_reserved_bytes": plan.peak_memory, "reasons": plan.reasons,
        "trainable_params": sum(p.numel() for p in trainer.control_model.parameters() if p.requires_grad),
        "steps": len(rows), "step_seconds_median": round(statistics.median(step_seconds), 4) if step_seconds else None,
        "run_peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-gib", type=float, default=15.0)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="effective batch; the plan probes its divisors")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps trained after the plan")
    parser.add_argument("--controls", nargs="+", default=["lite", "controlnet"])
    parser.add_argument("--timeout", type=float, default=240, help="seconds per control kind")
    parser.add_argument("--allow-cpu", action="store_true", help="plumbing check without a GPU (no cap, fp32)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--summarize", type=Path, help="only rewrite the summary of this results file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.summarize:
        data = json.loads(args.summarize.read_text())
        args.resolution = data["resolution"]
        data["summary"] = summarize(data["runs"], args)
        args.summarize.write_text(json.dumps(data, indent=2) + "\n")
        print("\n".join(data["summary"]))
        return
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("t4_cap.py needs a CUDA GPU (the cap is GPU memory); --allow-cpu runs the plumbing only.")
    args.work = args.work or Path(tempfile.mkdtemp(prefix="t4cap-"))
    from sd15 import write_random_sd15

    from lite_controlnet.data.fill50k import make_fill50k

    t0 = time.perf_counter()
    if not (args.work / "base" / "model_index.json").is_file():
        write_random_sd15(args.work / "base", torch.float16)
    if not (args.work / "data").is_dir():
        make_fill50k(args.work / "data", num=2 * args.batch_size, size=args.resolution, progress=False)
    print(f"base and data ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    runs = []
    for control in args.controls:
        cmd = [sys.executable, __file__, "--child", control, "--work", str(args.work),
               "--memory-gib", str(args.memory_gib), "--resolution", str(args.resolution),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            runs.append({"control": control, "error": f"no result within {args.timeout:.0f} s"})
            continue
        if out.returncode != 0:
            tail = out.stderr.strip().splitlines()[-3:]
            runs.append({"control": control, "error": " | ".join(tail)})
        else:
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr)

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    data = {
        "card": card, "memory_cap_gib": args.memory_gib if torch.cuda.is_available() else None,
        "resolution": args.resolution, "batch_size": args.batch_size, "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "runs": runs, "summary": summarize(runs, args),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"t4-cap-{card.replace(' ', '-').lower()}.json"
    out_path.write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(data["summary"]))
    print(f"Wrote {out_path}")


def summarize(runs: list[dict], args: argparse.Namespace) -> list[str]:
    lines = []
    ok = {r["control"]: r for r in runs if "error" not in r}
    if "lite" in ok and "controlnet" in ok and ok["lite"]["step_seconds_median"]:
        lite, cn = ok["lite"], ok["controlnet"]
        lines.append(
            f"at the same effective batch ({lite['batch_size']}) under the cap, Lite's optimizer step is "
            f"{cn['step_seconds_median'] / lite['step_seconds_median']:.1f}x faster than ControlNet's and its peak "
            f"reserved memory {lite['run_peak_reserved_bytes'] / cn['run_peak_reserved_bytes']:.0%} of ControlNet's "
            f"(per-step batches {lite['micro_batch']} and {cn['micro_batch']})"
            if lite["run_peak_reserved_bytes"] and cn["run_peak_reserved_bytes"] else
            f"at the same effective batch ({lite['batch_size']}), Lite's optimizer step is "
            f"{cn['step_seconds_median'] / lite['step_seconds_median']:.1f}x faster than ControlNet's")
    for run in runs:
        if "error" in run:
            lines.append(f"{run['control']}: did not train under the cap: {run['error']}")
            continue
        savers = [name for name, on in (("gradient checkpointing", run["gradient_checkpointing"]),
                                        ("8-bit AdamW", run["use_8bit_adam"])) if on]
        peak = run["run_peak_reserved_bytes"]
        lines.append(
            f"{run['control']}: per-step batch {run['micro_batch']} at {args.resolution} px {run['precision']} "
            f"({', '.join(savers) if savers else 'no memory savers'}), peak reserved "
            f"{'n/a' if peak is None else f'{peak / 2**30:.1f} GiB'}, {run['step_seconds_median']} s per optimizer "
            f"step of {run['batch_size']}"
        )
    return lines


if __name__ == "__main__":
    main()
