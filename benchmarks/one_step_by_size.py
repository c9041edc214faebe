"""Where the one-step gap lies: each held-out pair's one-step IoU, grouped by the circle's size.

    python benchmarks/one_step_by_size.py      # after benchmarks/fidelity.py --seed N, N = 0, 1, 2
    python benchmarks/one_step_by_size.py --run "Lite (previous default)=outputs/previous/run-lite-lr0.003-cubic"

For the fidelity study's default Lite module and its best ControlNet (cubic timesteps), each
seed's module at the end of training, scores the 64 held-out pairs one by one with the study's
one-step score (`scoring.one_step_pair_scores`, so the means are the study's), then groups the pairs into four
equal groups by the circle's radius. `--run NAME=FOLDER` adds the runs of another study (the
folder of seed 0; `FOLDER-seedN` for the others). Writes
benchmarks/results/one-step-by-size-proxy-base.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from fill50k_splits import fill50k_splits

from lite_controlnet import load_base, load_control
from lite_controlnet.bases import PROXY_BASE_DIR
from lite_controlnet.evaluation.scoring import ScoreSettings, one_step_pair_scores

HERE = Path(__file__).resolve().parent
RUNS = {"Lite (default)": "run-lite-lr0.003-cubic", "ControlNet, cubic timesteps": "run-controlnet-lr0.001-cubic"}
GROUPS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="outputs/fidelity", help="the fidelity study's folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER",
                        help="another study's runs to score too (the folder of seed 0)")
    parser.add_argument("--out", default=str(HERE / "results" / "one-step-by-size-proxy-base.json"))
    args = parser.parse_args()
    runs = {name: str(Path(args.work) / folder) for name, folder in RUNS.items()}
    for entry in args.run:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--run {entry!r}: expected NAME=FOLDER, e.g. \"Lite (previous)=outputs/old/run-lite-lr0.003-cubic\"")
        runs[name] = folder
    torch.set_num_threads(1)
    work = Path(args.work)
    _, heldout = fill50k_splits(work, 4000, 64, 32)  # the fidelity study's defaults
    scoring = ScoreSettings()
    base = load_base(str(PROXY_BASE_DIR))
    radii = [spec.radius for spec in heldout.specs][: scoring.heldout]
    order = sorted(range(len(radii)), key=radii.__getitem__)
    groups = [order[g * len(order) // GROUPS : (g + 1) * len(order) // GROUPS] for g in range(GROUPS)]
    result = {"timestep": scoring.timestep, "pairs": len(radii), "resolution": heldout.resolution, "seeds": args.seeds,
              "groups": [{"radius_min": round(min(radii[i] for i in g), 1), "radius_max": round(max(radii[i] for i in g), 1),
                          "pairs": len(g)} for g in groups],
              "modules": {}}
    for name, run in runs.items():
        per_seed = []
        for seed in args.seeds:
            folder = Path(run if seed == 0 else f"{run}-seed{seed}") / "final"
            # the arguments of the study's one-step score (`scoring.score_control`), pair by pair
            scores = one_step_pair_scores(base, load_control(folder).eval(), heldout, list(range(len(radii))),
                                          scoring.timestep, seed=1)
            per_seed.append([s["disk_iou"] for s in scores])
        mean = [sum(s[i] for s in per_seed) / len(per_seed) for i in range(len(radii))]
        result["modules"][name] = {"mean": sum(mean) / len(mean),
                                   "by_size": [sum(mean[i] for i in g) / len(g) for g in groups]}
    print(f"one-step disk IoU at t={scoring.timestep} by circle radius (pixels of {heldout.resolution}), "
          f"mean of seeds {args.seeds}, each module at the end of training:")
    print("| radius | " + " | ".join(result["modules"]) + " |")
    print("|---|" + "---:|" * len(result["modules"]))
    for g, group in enumerate(result["groups"]):
        print(f"| {group['radius_min']}-{group['radius_max']} | "
              + " | ".join(f"{m['by_size'][g]:.3f}" for m in result["modules"].values()) + " |")
    print("| all | " + " | ".join(f"{m['mean']:.3f}" for m in result["modules"].values()) + " |")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
