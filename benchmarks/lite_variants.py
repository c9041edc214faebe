"""What the pixel-MLP design (the kind lite-mlp, the design of "A Lightweight ControlNet for
Fine-Tuning Stable Diffusion on Colab GPU") allows, measured: its widths, depth and learning
rate, and the part of the schedule where control applies, on the proxy base at equal steps.

    python benchmarks/lite_variants.py                  # about 10 minutes on one CPU thread

Each variant trains the same number of steps on the same data (the trainer, batch 16) and is
scored by the one-step score (held-out targets noised to t=800, also with shuffled controls)
and by full sampling. The control window (control only on the first or last part of the
denoising steps) is a sampling setting: it is scored on the default variant. Writes
benchmarks/results/lite-variants-<base>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from fill50k_splits import fill50k_splits
from machine import machine_description

from lite_controlnet import TrainConfig, load_base, load_control
from lite_controlnet.bases import PROXY_BASE_DIR
from lite_controlnet.evaluation.scoring import ScoreSettings, score_control
from lite_controlnet.evaluation.study import train_measured

HERE = Path(__file__).resolve().parent

# name -> (learning rate, control_options over the kind lite-mlp's design); "default": the design as published
VARIANTS = {
    "default, lr 1e-3": (1e-3, {}),
    "default, lr 3e-4": (3e-4, {}),
    "default, lr 3e-3": (3e-3, {}),
    "narrow (pixel 32, level 48)": (1e-3, {"pixel_mlp_channels": [32], "level_channels": 48}),
    "wide (pixel 128x2, level 192)": (1e-3, {"pixel_mlp_channels": [128, 128], "level_channels": 192}),
    "deeper level MLP (2 layers)": (1e-3, {"level_layers": 2}),
}
WINDOWS = {"whole schedule": (0.0, 1.0), "first half only": (0.0, 0.5), "last half only": (0.5, 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(PROXY_BASE_DIR))
    parser.add_argument("--work", default="outputs/lite-variants", help="data and runs (kept: re-running resumes)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--train-num", type=int, default=4000)
    parser.add_argument("--heldout", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sample-num", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--timestep", type=int, default=800)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    train_dir, heldout = fill50k_splits(work, args.train_num, max(args.heldout, args.sample_num), args.resolution)
    base = load_base(args.base)
    scoring = ScoreSettings(args.heldout, args.timestep, args.sample_num, args.sample_steps, args.guidance)
    result = {
        "machine": machine_description(args.threads),
        "date": datetime.date.today().isoformat(), "settings": {**vars(args), "base_name": Path(args.base).name},
        "text_only": score_control(base, None, heldout, scoring, seed=1).to_dict(),
        "variants": {}, "windows": {},
    }
    for k, (name, (lr, options)) in enumerate(VARIANTS.items()):
        cfg = TrainConfig(data=str(train_dir), output=str(work / f"run-{k}"), base=args.base, control_kind="lite-mlp",
                          control_options=options or None, resolution=args.resolution, batch_size=args.batch_size,
                          epochs=1000, max_steps=args.steps, learning_rate=lr, num_workers=0, num_validation=4,
                          validation_steps=10, checkpoint_every=args.steps)
        stats = train_measured(cfg, progress=False)
        control = load_control(stats.final).eval()
        row = {
            "learning_rate": lr, "control_options": options,
            "parameters": sum(p.numel() for p in control.parameters()),
            "step_seconds": round(stats.step_seconds, 4),
            **score_control(base, control, heldout, scoring, seed=1).to_dict(),
        }
        result["variants"][name] = row
        print(f"{name:>32}: one-step IoU {row['one_step']['disk_iou']:.3f} (shuffled "
              f"{row['one_step_shuffled']['disk_iou']:.3f}), sampled IoU {row['sampling']['disk_iou']:.3f}, "
              f"edge F1 {row['sampling']['edge_f1']:.3f}, {row['parameters']:,} parameters, "
              f"{row['step_seconds']:.3f} s/step", flush=True)
        if k == 0:  # the control window, on the default variant
            for window_name, window in WINDOWS.items():
                s = score_control(base, control, heldout, scoring, seed=1, control_window=window).samples.mean
                result["windows"][window_name] = {"window": list(window), "sampling": s}
                print(f"{'window: ' + window_name:>32}: sampled IoU {s['disk_iou']:.3f}, edge F1 {s['edge_f1']:.3f}",
                      flush=True)
    out = HERE / "results" / f"lite-variants-{Path(args.base).name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
