"""The trainer's step time of each control kind on a proxy base, measured on a quiet machine:
the seconds axis of the fidelity studies (`benchmarks/fidelity.py --combine`, `benchmarks/shapes_study.py
--combine`).

    python benchmarks/proxy_step_time.py            # about 4 minutes on one CPU thread; nothing else running
    python benchmarks/proxy_step_time.py --base proxy-shapes   # the shapes base, 128 px canny pairs: about 8 minutes

The study's own timings are wall-clock of runs that shared two cores with other runs (three seeds
side by side), so a chunk's seconds depend on what else ran at the time. Here each kind trains a
short run with the study's settings (data, batch 16, 32 px, one thread), the kinds taking turns
for `--rounds` rounds; a kind's step time is the median of its steps after the first few (the
trainer's own log: loading and stepping, not saving). Writes benchmarks/results/proxy-step-time.json
(proxy-shapes-step-time.json for the shapes base).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from fill50k_splits import fill50k_splits
from machine import machine_description

from lite_controlnet import TrainConfig, train
from lite_controlnet.bases import PROXY_BASE_DIR, PROXY_SHAPES_BASE_DIR
from lite_controlnet.conditions.shapes_dataset import make_shapes
from lite_controlnet.training.logs import LossLog

HERE = Path(__file__).resolve().parent
KINDS = ("lite", "lite-static", "lite-mlp", "t2i-adapter", "controlnet")
WARMUP = 5  # steps left out of each run: first-call allocations


def step_times(kind: str, data: Path, steps: int, seed: int, cache: Path, base: Path = PROXY_BASE_DIR,
               resolution: int = 32) -> list[float]:
    """Seconds of each step after the warm-up, of one short run of `kind` (trained in a temporary folder)."""
    folder = Path(tempfile.mkdtemp(prefix=f"step-time-{kind}-"))
    try:
        train(TrainConfig(data=str(data), output=str(folder), control_kind=kind, base=str(base), resolution=resolution,
                          batch_size=16, max_steps=steps, epochs=1000, num_workers=0, num_validation=1, validation_steps=2,
                          seed=seed,
                          checkpoint_every=10 ** 6, cache_dir=str(cache)), progress=False)
        seconds = [float(row["seconds"]) for row in LossLog(folder).read()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [b - a for a, b in zip(seconds[WARMUP:], seconds[WARMUP + 1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", choices=("proxy-base", "proxy-shapes"), default="proxy-base")
    parser.add_argument("--work", default=None, help="the study's data (made if missing; default: outputs/fidelity, "
                        "outputs/shapes-study for proxy-shapes)")
    parser.add_argument("--steps", type=int, default=25, help="steps of each run (the first few are left out)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = args.base == "proxy-shapes"
    work = Path(args.work or ("outputs/shapes-study" if shapes else "outputs/fidelity"))
    if shapes:  # the shapes study's canny training set (the step does not depend on the condition)
        train_dir = work / "canny" / "train"
        if not (train_dir / "dataset.json").is_file():
            make_shapes(train_dir, num=6400, condition="canny", seed=0, progress=False)
    else:
        train_dir, _ = fill50k_splits(work, 4000, 64, 32)
    base, resolution = (PROXY_SHAPES_BASE_DIR, 128) if shapes else (PROXY_BASE_DIR, 32)
    cache = work / "step-time-cache"  # latents and text, shared by the runs
    times: dict[str, list[float]] = {kind: [] for kind in args.kinds}
    for round_ in range(args.rounds):
        for kind in args.kinds:
            times[kind] += step_times(kind, train_dir, args.steps, round_, cache, base, resolution)
            print(f"round {round_ + 1}: {kind:>12} {statistics.median(times[kind]):.3f} s per step", flush=True)
    result = {"machine": machine_description(1), "settings": vars(args),
              "step_seconds": {kind: round(statistics.median(t), 4) for kind, t in times.items()},
              "steps_timed": {kind: len(t) for kind, t in times.items()}}
    out = HERE / "results" / ("proxy-shapes-step-time.json" if shapes else "proxy-step-time.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["step_seconds"], indent=1))
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
