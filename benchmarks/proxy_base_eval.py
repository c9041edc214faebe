"""Does the proxy base draw what its prompt says? Samples held-out Fill50k prompts without
control and scores the images with `lite_controlnet.evaluation.metrics`.

    python benchmarks/proxy_base_eval.py                      # the shipped base
    python benchmarks/proxy_base_eval.py /work/proxy-base-run/final --num 64 --guidance 3

Reports the share of images with exactly one disk and the CIEDE2000 colour errors of disk
and background against the prompt's colours, for images generated from the real prompt,
from another sample's prompt (shuffled) and from the empty prompt, all from the same noise.
A base that uses its prompt has a real-prompt error clearly below the other two. By default
this runs at guidance 3 (what the proxy base's README recommends) and 7.5 (the pipeline's
default). Writes
benchmarks/results/proxy_base.json (with the machine and, from the base's training.json,
the training steps and time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from machine import cpu_model

from lite_controlnet.bases import PROXY_BASE_DIR
from lite_controlnet.data.heldout import PROXY_HELD_OUT_SEED, held_out_pairs
from lite_controlnet.evaluation.metrics import ROUND_DISK_IOU, colour_errors, count_disks, disk_roundness, segment_disk
from lite_controlnet.pipeline import LiteControlNetPipeline
from lite_controlnet.sampling import SampleSettings

RESULTS = Path(__file__).resolve().parent / "results" / "proxy_base.json"


def machine() -> dict:
    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def score_images(images: np.ndarray, prompts: list[str]) -> dict:
    """One-disk share and mean colour errors of (N, H, W, 3) images in [0, 1] against `prompts`."""
    disks = [segment_disk(image) for image in images]
    errors = [colour_errors(image, prompt, disk) for image, prompt, disk in zip(images, prompts, disks)]
    circle = [c for c, _ in errors if c is not None]
    background = [b for _, b in errors if b is not None]
    one = [count_disks(image, disk) == 1 for image, disk in zip(images, disks)]
    round_ = [(disk_roundness(image, disk) or 0.0) >= ROUND_DISK_IOU for image, disk in zip(images, disks)]
    return {
        "one_disk_share": float(np.mean(one)),
        # stricter: exactly one disk, and it is round (not a blob)
        "round_one_disk_share": float(np.mean([a and b for a, b in zip(one, round_)])),
        "circle_colour_error": float(np.mean(circle)) if circle else None,
        "background_colour_error": float(np.mean(background)) if background else None,
        "images_without_disk": len(errors) - len(circle),
    }


def sample_three_ways(pipe: LiteControlNetPipeline, prompts: list[str], steps: int, guidance_scale: float,
                      seed: int = 0, batch: int = 32) -> dict[str, np.ndarray]:
    """Images of `prompts` sampled with each real prompt, with another sample's (rolled by one) and
    with the empty prompt, from the same noise: {"real", "shuffled", "empty"} -> (N, H, W, 3) in [0, 1]."""
    num = len(prompts)
    conditions = {"real": prompts, "shuffled": prompts[1:] + prompts[:1], "empty": [""] * num}
    size = pipe.unet.config.sample_size
    noise = torch.randn((num, pipe.unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(seed))
    images = {}
    for name, used in conditions.items():
        parts = [pipe(used[start : start + batch], num_inference_steps=steps, guidance_scale=guidance_scale,
                      latents=noise[start : start + batch].clone(), output_type="np").images
                 for start in range(0, num, batch)]
        images[name] = np.concatenate(parts)
    return images


def evaluate(base: str | Path, num: int = 64, steps: int = SampleSettings.steps,
             guidance_scale: float = SampleSettings.guidance, seed: int = 0, batch: int = 32) -> dict:
    """Sample `num` held-out prompts three ways (real, shuffled, empty) and score the images."""
    pipe = LiteControlNetPipeline.from_base(base)
    pipe.set_progress_bar_config(disable=True)
    prompts = held_out_pairs(num, pipe.unet.config.sample_size, seed=PROXY_HELD_OUT_SEED).prompts
    started = time.perf_counter()
    images = sample_three_ways(pipe, prompts, steps, guidance_scale, seed, batch)
    # always scored against the real prompt's colours
    results = {name: score_images(found, prompts) for name, found in images.items()}
    return {
        "samples": num,
        "sampler": f"unipc, {steps} steps, guidance {guidance_scale}",
        "seconds": round(time.perf_counter() - started, 1),
        **results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", default=str(PROXY_BASE_DIR), help="proxy base folder")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--steps", type=int, default=SampleSettings.steps)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, SampleSettings.guidance])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS), help="JSON to write ('' to only print)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    report = {"benchmark": "proxy_base_eval", "base": str(args.base)}
    report["evaluations"] = [evaluate(args.base, args.num, args.steps, g) for g in args.guidance]
    training = Path(args.base) / "training.json"
    if training.is_file():
        report["training"] = json.loads(training.read_text())
    report["machine"] = machine()
    report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
