"""Lite designs against each other on the proxy base: which settings buy control, one seed.

    python benchmarks/lite_designs.py --only time          # one candidate per call (run two side by side)
    python benchmarks/lite_designs.py --report             # the table of all candidates scored so far

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

ALL_LEVELS = {"feedback_levels": [0, 1, 2, 3], "level_kernel_size": 3}
CUBIC, UNIFORM = {"timestep_sampling": "cubic"}, {"timestep_sampling": "uniform"}
# the default design before its feedback layers read the decoder, at the coarse levels only: every
# candidate run before then
CORRECTING = {"feedback_levels": [1, 2, 3], "feedback_decoder": False}
# ... and before its level layers were normalised
PLAIN = {**CORRECTING, "level_norm": False}
ONE = {**PLAIN, "level_mlp_layers": 1}  # the feedback design's first version: one layer per level
NORM = {**CORRECTING, "level_norm": True}
# name -> (kind, learning rate, module settings over the kind's design, trainer settings); the
# ControlNet rows ask whether a training recipe that helps Lite helps ControlNet as much. A
# note in parentheses is not part of the run's folder name.
CANDIDATES = {
    "uniform timesteps": ("lite", 3e-3, ONE, UNIFORM),
    "time": ("lite", 3e-3, {**ONE, "feedback_time_channels": 64}, UNIFORM),
    "all levels + time": ("lite", 3e-3, {**ONE, **ALL_LEVELS, "feedback_time_channels": 64}, UNIFORM),
    "lr 6e-3": ("lite", 6e-3, ONE, UNIFORM),
    "cubic timesteps": ("lite", 3e-3, ONE, CUBIC),
    "cubic timesteps, all levels": ("lite", 3e-3, {**ONE, **ALL_LEVELS}, CUBIC),
    "cubic timesteps, wide": ("lite", 3e-3, {**ONE, "level_channels": 96, "feedback_channels": 64}, CUBIC),
    "cubic timesteps, two level layers (the previous default)": ("lite", 3e-3, PLAIN, CUBIC),
    "ControlNet, cubic timesteps": ("controlnet", 1e-3, {}, CUBIC),
    "3x3 at every level": ("lite", 3e-3, {**PLAIN, "level_kernel_size": 3}, CUBIC),
    "into the encoder": ("lite", 3e-3, {**PLAIN, "feedback_into_encoder": True}, CUBIC),
    "top-down": ("lite", 3e-3, {**PLAIN, "level_top_down": True}, CUBIC),
    "chain, into the encoder": ("lite", 3e-3, {**PLAIN, "feedback_chain": True, "feedback_into_encoder": True}, CUBIC),
    "chain": ("lite", 3e-3, {**PLAIN, "feedback_chain": True}, CUBIC),
    "into the encoder at levels 2 and 3": ("lite", 3e-3, {**PLAIN, "feedback_into_encoder": [2, 3]}, CUBIC),
    "lr 2e-3": ("lite", 2e-3, PLAIN, CUBIC),
    "lr 1.5e-3": ("lite", 1.5e-3, PLAIN, CUBIC),
    "four level layers": ("lite", 3e-3, {**PLAIN, "level_mlp_layers": 4}, CUBIC),
    "six level layers": ("lite", 3e-3, {**PLAIN, "level_mlp_layers": 6}, CUBIC),
    "normalised level layers (the previous default)": ("lite", 3e-3, NORM, CUBIC),
    "four normalised level layers": ("lite", 3e-3, {**NORM, "level_mlp_layers": 4}, CUBIC),
    "normalised level and feedback layers": ("lite", 3e-3, {**NORM, "feedback_norm": True}, CUBIC),
    "normalised, lr 5e-3": ("lite", 5e-3, NORM, CUBIC),
    "normalised, lr 2e-3": ("lite", 2e-3, NORM, CUBIC),
    "normalised, feedback at every level": ("lite", 3e-3, {**NORM, **ALL_LEVELS}, CUBIC),
    "normalised, 3x3 at every level": ("lite", 3e-3, {**NORM, "level_kernel_size": 3}, CUBIC),
    "normalised, top-down": ("lite", 3e-3, {**NORM, "level_top_down": True}, CUBIC),
    "normalised, relative corrections": ("lite", 3e-3, {**NORM, "feedback_relative": True}, CUBIC),
    "normalised, into the encoder": ("lite", 3e-3, {**NORM, "feedback_into_encoder": True}, CUBIC),
    "normalised, gated corrections": ("lite", 3e-3, {**NORM, "feedback_gate": True}, CUBIC),
    "normalised, wide": ("lite", 3e-3, {**NORM, "level_channels": 96, "feedback_channels": 64}, CUBIC),
    "normalised, reading the decoder": ("lite", 3e-3, {**NORM, "feedback_decoder": True}, CUBIC),
    "normalised, reading the decoder at every level (default)": ("lite", 3e-3, {}, CUBIC),
}


def parameters(options: dict, unet_config: dict) -> int:
    module = LiteControlNetModel.from_unet(unet_config, **options)  # the settings as the trainer passes them
    return sum(p.numel() for p in module.parameters())


def report() -> dict:
    result = json.loads(OUT.read_text()) if OUT.is_file() else {"candidates": {}}
    print("| design | lr | parameters (SD1.5) | step | one-step IoU (shuffled) | sampled disk IoU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, c in result["candidates"].items():
        for point in c["curve"]:
            sampled = f"{point['sampling']['disk_iou']:.3f}" if "sampling" in point else ""
            params = f"{c['parameters_sd15']:,}" if c["parameters_sd15"] else ""
            print(f"| {name} | {c['learning_rate']:g} | {params} | {point['step']} | "
                  f"{point['one_step_iou']:.3f} ({point['one_step_shuffled_iou']:.3f}) | {sampled} |")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(CANDIDATES), help="the candidate to train and score")
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
