"""The one-step predictions of trained modules side by side: what the one-step IoU scores.

    python benchmarks/one_step_pictures.py      # after benchmarks/fidelity.py --seed 0

Rows: target, control, then each module's clean image predicted in one step from the target
noised to t=800 (the fidelity study's one-step score), for the first 16 held-out pairs of the fidelity
study, with each prediction's disk IoU printed. Writes
benchmarks/results/one-step-pictures-proxy-base.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from fill50k_splits import fill50k_splits
from PIL import Image

from lite_controlnet import load_base, load_control
from lite_controlnet.bases import PROXY_BASE_DIR
from lite_controlnet.bases.latents import to_pil
from lite_controlnet.evaluation.metrics import fill50k_scores
from lite_controlnet.evaluation.scoring import ScoreSettings, one_step_predictions

HERE = Path(__file__).resolve().parent
RUNS = {"Lite (default)": "run-lite-lr0.003-cubic", "ControlNet": "run-controlnet-lr0.001-cubic"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="outputs/fidelity", help="the fidelity study's folder")
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--out", default=str(HERE / "results" / "one-step-pictures-proxy-base.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    _, heldout = fill50k_splits(work, 4000, 64, 32)  # the fidelity study's defaults
    base = load_base(str(PROXY_BASE_DIR))
    items = [heldout[i] for i in range(args.num)]
    targets = torch.stack([it["pixel_values"] for it in items])
    controls = torch.stack([it["conditioning_pixel_values"] for it in items])
    prompts = [it["prompt"] for it in items]
    rows = [to_pil(targets), to_pil(controls * 2 - 1)]
    for name, run in RUNS.items():
        module = load_control(work / run / "final").eval()
        with torch.no_grad():
            images = to_pil(one_step_predictions(base, module, targets, controls, prompts, ScoreSettings().timestep, 1))
        rows.append(images)
        ious = [fill50k_scores(image, control, prompt)["disk_iou"] for image, control, prompt in zip(images, rows[1], prompts)]
        print(f"{name}: disk IoU " + " ".join(f"{iou:.2f}" for iou in ious) + f" (mean {sum(ious) / len(ious):.3f})")
    tile = 4 * heldout.resolution
    grid = Image.new("RGB", (args.num * tile, len(rows) * tile))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.resize((tile, tile), Image.NEAREST), (c * tile, r * tile))
    grid.save(args.out)
    print(f"rows: target, control, {', '.join(RUNS)} -> {args.out}")


if __name__ == "__main__":
    main()
