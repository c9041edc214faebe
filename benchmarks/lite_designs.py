"""Lite designs against each other on the proxy base: which settings buy control, one seed.

    python benchmarks/lite_designs.py --only 'ControlNet, cubic timesteps'   # one candidate per call
    python benchmarks/lite_designs.py --report             # the table of all candidates scored so far

Most rows of the results ran designs whose options have since left the library (what won and
why: benchmarks/DESIGN.md); each names the commit that re-runs it, and this script refuses those
names with the command that does (`git checkout 8ce729c && python benchmarks/lite_designs.py
--only NAME`).

Each candidate is a control kind (mostly `lite`) with its own module settings
(`control_options` over the kind's design), learning rate and trainer settings, trained like the
fidelity study's runs (same data, held-out pairs, scores and seed; `lite_controlnet.evaluation.study`)
and scored at every `--eval-every` steps,
with full sampling at `--sample-every` evaluations and at the end. The per-step cost of each
design at SD1.5 size comes from `benchmarks/run.py`; here: parameters at SD1.5 and at proxy size.
Writes benchmarks/results/lite-designs-proxy-base.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import torch
from fill50k_splits import fill50k_splits
from machine import machine_description

from lite_controlnet import load_base
from lite_controlnet.evaluation.scoring import ScoreSettings
from lite_controlnet.evaluation.study import Variant, fidelity_curves, variant_configs
from lite_controlnet.model import LiteControlNetModel
from lite_controlnet.bases import PROXY_BASE_DIR
from lite_controlnet.bases.sd_configs import SD15_UNET_CONFIG

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "lite-designs-proxy-base.json"

CUBIC = {"timestep_sampling": "cubic"}
# name -> (kind, learning rate, module settings over the kind's design, trainer settings): the
# candidates today's code can run. A note in parentheses is not part of the run's folder name.
CANDIDATES = {
    "ControlNet, cubic timesteps": ("controlnet", 1e-3, {}, CUBIC),
    "normalised, reading the decoder at every level (default)": ("lite", 3e-3, {}, CUBIC),
}
# The other rows of the results ran designs whose options have left the library: each row names
# the commit ("commit") whose code re-runs it (benchmarks/DESIGN.md).


def rerun_command(name: str, row: dict) -> str:
    """The command that re-runs the results row `name` at the commit that has its options."""
    seed = f" --seed {row['seed']}" if row.get("seed") else ""
    only = re.sub(r", seed \d+$", "", name)
    return f"git checkout {row['commit']} && python benchmarks/lite_designs.py --only '{only}'{seed}"


def parameters(options: dict, unet_config: dict) -> int:
    module = LiteControlNetModel.from_unet(unet_config, **options)  # the settings as the trainer passes them
    return sum(p.numel() for p in module.parameters())


def report() -> dict:
    result = json.loads(OUT.read_text()) if OUT.is_file() else {"candidates": {}}
    print("| design | code | lr | parameters (SD1.5) | step | one-step IoU (shuffled) | sampled disk IoU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, c in result["candidates"].items():
        for point in c["curve"]:
            sampled = f"{point['sampling']['disk_iou']:.3f}" if "sampling" in point else ""
            params = f"{c['parameters_sd15']:,}" if c["parameters_sd15"] else ""
            print(f"| {name} | {c.get('commit', 'this one')} | {c['learning_rate']:g} | {params} | {point['step']} | "
                  f"{point['one_step_iou']:.3f} ({point['one_step_shuffled_iou']:.3f}) | {sampled} |")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"the candidate to train and score: one of {list(CANDIDATES)}")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--work", default="outputs/fidelity", help="the fidelity study's data (shared) and these runs")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--sample-every", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.report or not args.only:
        report()
        return
    if args.only not in CANDIDATES:
        rows = json.loads(OUT.read_text())["candidates"] if OUT.is_file() else {}
        key = args.only if args.seed == 0 else f"{args.only}, seed {args.seed}"
        if "commit" in rows.get(key, {}):
            sys.exit(f"error: {args.only!r} needs design options this version no longer has; re-run it with: "
                     f"{rerun_command(key, rows[key])}")
        parser.error(f"unknown candidate {args.only!r}: use one of {list(CANDIDATES)}")
    torch.set_num_threads(1)
    kind, lr, options, training = CANDIDATES[args.only]
    work = Path(args.work)
    train_dir, heldout = fill50k_splits(work, 4000, 64, 32)  # the fidelity study's defaults
    slug = re.sub(r" \(.*\)$", "", args.only).replace(" ", "-").replace(",", "").replace("+", "and")
    config = variant_configs([Variant(kind, lr, args.seed)], train_dir, work, args.steps, base=str(PROXY_BASE_DIR),
                             resolution=32, batch_size=16)
    (label, cfg), = config.items()
    cfg = dataclasses.replace(cfg, control_options=options or None, output=str(work / f"design-{slug}-seed{args.seed}"),
                              **training)
    result = fidelity_curves({label: cfg}, load_base(str(PROXY_BASE_DIR)), heldout, args.eval_every, args.sample_every,
                             ScoreSettings(), log=lambda line: print(line, flush=True),
                             state=work / f"design-state-{slug}-seed{args.seed}.json")
    all_results = json.loads(OUT.read_text()) if OUT.is_file() else {"candidates": {}}
    all_results["machine"] = machine_description(1)
    key = args.only if args.seed == 0 else f"{args.only}, seed {args.seed}"
    all_results["candidates"][key] = {
        "kind": kind, "learning_rate": lr, "options": options, "training": training, "seed": args.seed,
        "steps": args.steps,
        "parameters_sd15": parameters(options, SD15_UNET_CONFIG) if kind == "lite" else None,
        "text_only": {"one_step_iou": result["text_only"]["one_step"]["disk_iou"],
                      "sampled_iou": result["text_only"]["sampling"]["disk_iou"]},
        "curve": [{k: v for k, v in p.items() if k in ("step", "one_step_iou", "one_step_shuffled_iou")}
                  | ({"sampling": {"disk_iou": p["sampling"]["disk_iou"], "edge_f1": p["sampling"]["edge_f1"]}}
                     if "sampling" in p else {})
                  for p in result["curves"][label]],
    }
    OUT.write_text(json.dumps(all_results, indent=1) + "\n")
    report()


if __name__ == "__main__":
    main()
