"""How well does the shapes base (`--base proxy-shapes`) draw what its prompt says, before any control?

    python benchmarks/proxy_shapes_eval.py                       # the shipped base
    python benchmarks/proxy_shapes_eval.py /work/run/shapes-base --num 32 --guidance 3

Measures, on held-out scenes (dataset seed `PROXY_HELD_OUT_SEED`, another than training's):

- the VAE's reconstruction PSNR (8-bit, posterior mean decoded);
- for images sampled without control (UniPC, 20 steps) from the real prompt, from another
  scene's prompt (shuffled) and from the empty prompt, all from the same noise, scored against
  the *real* scene: the share with the prompt's number of objects (`conditions.objects`: regions
  of each object's colour larger than a speck), each object's colour error, the background's,
  and the objects' IoU with the scene's (`object_scores`);
- the same scores of the scenes themselves ("scene" row), the ceiling.

The colour error of an object is position-free, because a base without control cannot know
where the object goes: CIEDE2000 between its named colour and the mean colour of the image's
pixels nearest to it (in CIELAB), as many as half of the object's visible area in the scene.
An image without an object of about that colour has no such pixels and a large error. The
IoU, which needs the right place, should stay low: where objects go is what control adds.

Writes benchmarks/results/proxy-shapes.json and prints a markdown table.
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

from lite_controlnet.bases import PROXY_SHAPES_BASE_DIR
from lite_controlnet.bases.loading import load_base
from lite_controlnet.bases.proxy_shapes_training import vae_psnr
from lite_controlnet.conditions.objects import colour_regions, object_scores
from lite_controlnet.data.heldout import PROXY_HELD_OUT_SEED
from lite_controlnet.data.shapes import parse_shapes_prompt, shapes_scene
from lite_controlnet.evaluation.metrics import ciede2000, srgb_to_lab
from lite_controlnet.pipeline import LiteControlNetPipeline
from lite_controlnet.sampling import SampleSettings

RESULTS = Path(__file__).resolve().parent / "results" / "proxy-shapes.json"


def nearest_colour_error(lab: np.ndarray, rgb: np.ndarray, named: tuple[int, int, int], pixels: int) -> float:
    """CIEDE2000 between `named` and the mean colour of the `pixels` pixels of the image nearest it in CIELAB."""
    target = srgb_to_lab(np.array(named, dtype=np.float64) / 255.0)
    distance = np.linalg.norm(lab.reshape(-1, 3) - target, axis=1)
    nearest = np.argpartition(distance, pixels - 1)[:pixels]
    mean = rgb.reshape(-1, 3)[nearest].mean(axis=0)
    return float(ciede2000(srgb_to_lab(mean), target))


def score_image(image: np.ndarray, target: np.ndarray, prompt: str) -> dict:
    """Scores of one (H, W, 3) image in [0, 1] against its real scene (`target`, `prompt`)."""
    objects, background = parse_shapes_prompt(prompt)
    truth = colour_regions(target, prompt)
    lab = srgb_to_lab(image)
    object_errors = [nearest_colour_error(lab, image, colour.rgb, max(1, int((truth == k).sum()) // 2))
                     for k, (colour, _) in enumerate(objects) if (truth == k).any()]
    background_error = nearest_colour_error(lab, image, background.rgb, max(1, int((truth == -1).sum()) // 2))
    scores = object_scores(image, target, prompt)
    return {"right_count": scores["right_object_count"], "object_iou": scores["object_iou"],
            "object_colour_error": float(np.mean(object_errors)), "background_colour_error": background_error}


def summarise(rows: list[dict]) -> dict:
    return {key: round(float(np.mean([row[key] for row in rows])), 3) for key in rows[0]}


def evaluate(pipe: LiteControlNetPipeline, scenes: list, targets: np.ndarray, steps: int, guidance: float,
             seed: int = 0, batch: int = 16) -> dict:
    """Sample the scenes' prompts three ways (real, shuffled, empty) and score each image against its real scene."""
    num = len(scenes)
    prompts = [scene.prompt for scene in scenes]
    conditions = {"real": prompts, "shuffled": prompts[1:] + prompts[:1], "empty": [""] * num}
    size = pipe.unet.config.sample_size
    noise = torch.randn((num, pipe.unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(seed))
    results, started = {}, time.perf_counter()
    for name, used in conditions.items():
        images = []
        for start in range(0, num, batch):
            out = pipe(used[start : start + batch], num_inference_steps=steps, guidance_scale=guidance,
                       latents=noise[start : start + batch].clone(), output_type="np")
            images.append(out.images)
        images = np.clip(np.concatenate(images), 0.0, 1.0)
        results[name] = summarise([score_image(i, t, p) for i, t, p in zip(images, targets, prompts)])
    return {"sampler": f"unipc, {steps} steps, guidance {guidance}", "guidance": guidance,
            "seconds": round(time.perf_counter() - started, 1), **results}


def table(report: dict) -> str:
    lines = ["| guidance | prompt | right object count | object colour error | background colour error | object IoU |",
             "|---|---|---|---|---|---|"]
    scene = report["scenes"]
    lines.append(f"| - | scene itself | {scene['right_count']:.0%} | {scene['object_colour_error']:.1f} | "
                 f"{scene['background_colour_error']:.1f} | {scene['object_iou']:.2f} |")
    for ev in report["evaluations"]:
        for name in ("real", "shuffled", "empty"):
            row = ev[name]
            lines.append(f"| {ev['guidance']:g} | {name} | {row['right_count']:.0%} | {row['object_colour_error']:.1f} | "
                         f"{row['background_colour_error']:.1f} | {row['object_iou']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", default=str(PROXY_SHAPES_BASE_DIR), help="shapes base folder")
    parser.add_argument("--num", type=int, default=48, help="held-out scenes to sample")
    parser.add_argument("--steps", type=int, default=SampleSettings.steps)
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0, 4.0, 7.5])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS), help="JSON to write ('' to only print)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = load_base(args.base)
    pipe = LiteControlNetPipeline.from_base(models)
    pipe.set_progress_bar_config(disable=True)
    image_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scenes = [shapes_scene(i, image_size, seed=PROXY_HELD_OUT_SEED) for i in range(args.num)]
    targets = np.stack([np.asarray(scene.render(), dtype=np.float64) / 255.0 for scene in scenes])
    report = {"benchmark": "proxy_shapes_eval", "base": str(args.base), "samples": args.num,
              "held_out_seed": PROXY_HELD_OUT_SEED, "image_size": image_size,
              "vae_scale_factor": pipe.vae_scale_factor,
              "vae_psnr_db": round(vae_psnr(models.vae, 64, image_size), 2),
              "scenes": summarise([score_image(t, t, s.prompt) for t, s in zip(targets, scenes)])}
    report["evaluations"] = [evaluate(pipe, scenes, targets, args.steps, g) for g in args.guidance]
    training = Path(args.base) / "training.json"
    if training.is_file():
        report["training"] = json.loads(training.read_text())
    report["machine"] = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"VAE reconstruction PSNR on {64} held-out scenes: {report['vae_psnr_db']} dB "
          f"(scale factor {pipe.vae_scale_factor}, {image_size} px)\n")
    print(table(report))


if __name__ == "__main__":
    main()
