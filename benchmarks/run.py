"""The benchmark suite: Lite against the original ControlNet (and T2I-Adapter) at the real
SD1.5 size, with random weights (timings and memory do not depend on weight values).

    python benchmarks/run.py                     # CPU defaults: 256 px, 1 thread
    python benchmarks/run.py --device cuda --resolution 512 --dtype fp16

Writes benchmarks/results/<machine>.json and refreshes benchmarks/RESULTS.md from every
results file (benchmarks/readme.py). Each comparison is measured in one run, interleaved (variants take turns),
after a warm-up, as the median of several repeats, so a noisy machine moves all sides alike:
the ratios are the result; absolute CPU seconds are context only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import diffusers
import torch
import transformers
from machine import cpu_model
from sd15 import sd15_components

from lite_controlnet import LiteControlNetPipeline, build_control

# pipeline name -> control kind, in the order of the tables
PIPELINES = {"SD": None, "SD + Lite": "lite", "SD + Lite static": "lite-static", "SD + Lite seed": "lite-mlp",
             "SD + ControlNet": "controlnet", "SD + T2I-Adapter": "t2i-adapter"}
TRAIN_VARIANTS = ("floor", "lite", "lite-static", "lite-mlp", "controlnet", "t2i-adapter")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name().replace(" ", "-").lower()
    import os

    words = re.sub(r"\((r|tm)\)", "", cpu_model().lower()).split()  # "Intel(R) Xeon(R)" -> intel xeon
    return f"cpu-{os.cpu_count()}core-" + "-".join(words[:3])


def sampling(args: argparse.Namespace) -> dict:
    """Whole generations (text encoding, denoising with guidance, VAE decode) per variant."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    parts = sd15_components(device, dtype)
    unet = parts["unet"]
    pipes = {}
    for name, kind in PIPELINES.items():
        if kind is not None and kind not in args.kinds:
            continue
        control = build_control(kind, unet).to(device, dtype).eval() if kind else None  # timing: any weights do
        pipes[name] = LiteControlNetPipeline(**parts, controlnet=control)
    import PIL.Image

    image = PIL.Image.new("RGB", (args.resolution, args.resolution))
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    def generate(name: str) -> float:
        pipe = pipes[name]
        kwargs = {} if name == "SD" else {"image": image}
        sync(device)
        start = time.perf_counter()
        pipe("a red circle with blue background", num_inference_steps=args.sample_steps, guidance_scale=7.5,
             height=args.resolution, width=args.resolution, generator=torch.Generator().manual_seed(0), **kwargs)
        sync(device)
        return time.perf_counter() - start

    times = {name: [] for name in pipes}
    for name in pipes:  # warm-up
        generate(name)
    for repeat in range(args.repeats):
        names = list(pipes)
        names = names[repeat % len(names):] + names[: repeat % len(names)]  # take turns
        for name in names:
            times[name].append(generate(name))
            print(f"  sampling {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "steps": args.sample_steps, "guidance": 7.5, "resolution": args.resolution, "repeats": args.repeats,
        "seconds": {k: round(v, 3) for k, v in median.items()},
        "overhead_vs_sd": {k: round(v / median["SD"] - 1, 4) for k, v in median.items() if k != "SD"},
    }


def training(args: argparse.Namespace) -> list[dict]:
    """Train steps per variant and batch, each in its own process, taking turns."""
    runs = []
    for repeat in range(args.train_repeats):
        for batch in args.batches:
            for variant in ("floor", *args.kinds):
                cmd = [sys.executable, str(HERE / "train_step.py"), "--variant", variant, "--batch", str(batch),
                       "--resolution", str(args.resolution), "--steps", str(args.train_steps),
                       "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype]
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.train_timeout)
                except subprocess.TimeoutExpired:
                    runs.append({"variant": variant, "batch": batch, "error": f"over {args.train_timeout:.0f} s"})
                    continue
                if out.returncode != 0:
                    runs.append({"variant": variant, "batch": batch, "error": out.stderr.strip().splitlines()[-1]})
                    continue
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  train {variant} batch {batch}: {runs[-1]['step_s']:.2f} s/step", file=sys.stderr)
    # median over repeats, per (variant, batch)
    merged = {}
    for run in runs:
        merged.setdefault((run["variant"], run["batch"]), []).append(run)
    result = []
    for (variant, batch), group in merged.items():
        ok = [r for r in group if "error" not in r]
        if not ok:
            result.append(group[0])
            continue
        row = dict(ok[0])
        for key in ("forward_s", "backward_s", "optimizer_s", "step_s", "peak_memory_bytes"):
            row[key] = statistics.median(r[key] for r in ok)
        result.append(row)
    return result


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def write_markdown() -> Path:
    """Refresh benchmarks/RESULTS.md (and README.md's results table) from every results file."""
    import readme  # benchmarks/readme.py, beside this script

    readme.main()
    return HERE / "RESULTS.md"


def summarize(data: dict) -> list[str]:
    """The targets: the default Lite <= +10% of a generation, the step-invariant one <= +2%; each
    Lite's training step >= 1.6x faster than ControlNet's at <= 50% of its peak memory."""
    by = {(r["variant"], r["batch"]): r for r in data.get("training", []) if "error" not in r}  # none: sampling only
    over = data["sampling"]["overhead_vs_sd"]
    targets = {"SD + Lite": " (target <= +10%)", "SD + Lite static": " (target <= +2%)"}
    lines = ["sampling, a whole generation: " + ", ".join(f"{name[5:]} {value:+.1%}{targets.get(name, '')}"
                                                          for name, value in over.items())]
    for batch in sorted({b for _, b in by}):
        cn, floor = by.get(("controlnet", batch)), by.get(("floor", batch))
        for kind in ("lite", "lite-static", "lite-mlp", "t2i-adapter"):
            mine = by.get((kind, batch))
            if mine and cn:
                lines.append(f"training, batch {batch}: {kind} {cn['step_s'] / mine['step_s']:.2f}x faster than "
                             f"ControlNet (target >= 1.6x); peak memory "
                             f"{mine['peak_memory_bytes'] / cn['peak_memory_bytes']:.1%} of ControlNet's (target <= 50%)"
                             + (f"; {mine['step_s'] / floor['step_s'] - 1:+.1%} above the floor" if floor else ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads: 1 gives the steadiest CPU ratios")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--train-repeats", type=int, default=2)
    parser.add_argument("--skip-sampling", action="store_true", help="keep the sampling results already in the file")
    parser.add_argument("--skip-training", action="store_true", help="keep the training results already in the file")
    parser.add_argument("--train-timeout", type=float, default=900, help="seconds per training-step process")
    parser.add_argument("--markdown-only", action="store_true", help="only rewrite RESULTS.md from the results")
    parser.add_argument("--kinds", nargs="+", choices=TRAIN_VARIANTS[1:], default=list(TRAIN_VARIANTS[1:]),
                        help="the control kinds to measure (the rows of others already in the file are kept)")
    args = parser.parse_args()
    if args.markdown_only:
        print(f"Wrote {write_markdown()}")
        return
    torch.set_num_threads(args.threads)
    name = machine_name(args.device)
    out = RESULTS / f"{name}.json"
    subset = set(args.kinds) != set(TRAIN_VARIANTS[1:])
    data = json.loads(out.read_text()) if out.is_file() and (args.skip_sampling or args.skip_training or subset) else {}
    data["machine"] = {
        "name": name, "description": name if args.device.startswith("cuda") else f"{platform.machine()} CPU",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "threads": args.threads, "date": datetime.date.today().isoformat(), "python": platform.python_version(),
        "commit": git_commit(),
    }
    data.pop("notes", None)  # notes describe an earlier measurement
    data["settings"] = {"dtype": args.dtype, "resolution": args.resolution, "device": args.device}
    if not args.skip_sampling:
        measured = sampling(args)
        if subset and "sampling" in data:  # the other kinds keep their overheads (each against its own SD run)
            for key in ("seconds", "overhead_vs_sd"):
                measured[key] = {**data["sampling"][key], **measured[key]}
        data["sampling"] = measured
    if not args.skip_training:
        new_rows = training(args)
        measured = {(r["variant"], r["batch"]) for r in new_rows}
        rows = [r for r in data.get("training", []) if (r["variant"], r["batch"]) not in measured] + new_rows
        order = {v: i for i, v in enumerate(TRAIN_VARIANTS)}  # older kind names (lite-seed) last
        data["training"] = sorted(rows, key=lambda r: (r["batch"], order.get(r["variant"], len(order))))
    data["summary"] = summarize(data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(data["summary"]))
    print(f"Wrote {out} and {write_markdown()}")



if __name__ == "__main__":
    main()
