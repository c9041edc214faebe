"""How well does the shapes base (`--base proxy-shapes`) draw what its prompt says, before any control?

    python benchmarks/proxy_shapes_eval.py                       # the shipped base
    python benchmarks/proxy_shapes_eval.py /work/run/shapes-base --num 32 --guidance 3

Measures, on held-out scenes (dataset seed `PROXY_HELD_OUT_SEED`, another than training's):

- the VAE's reconstruction PSNR (8-bit, posterior mean decoded);
- for images sampled without control (UniPC, 20 steps) from the real prompt, from another
  scene's prompt (shuffled) and from the empty prompt, all from the same noise, scored against
  the *real* scene (`score_image`): whether the image has the prompt's number of objects, the
  colour error (CIEDE2000) of each object and of the background, and the objects' IoU with
  the scene's (`conditions.objects.object_scores`);
- the same scores of the scenes themselves ("scene itself" row), the ceiling, and of the scenes
  encoded and decoded by the VAE ("scene through the VAE"), what the VAE alone costs.

Count and colours are measured without positions, because a base without control cannot know
where an object goes: the image's blobs are found against its own border colour, and each
object of the prompt is matched to the blob nearest its colour. The IoU, which needs the right
place, should stay low: where objects go is what control adds. (`object_scores`' own count,
regions of each of the prompt's colours, is reported too; it counts the specks of a blotchy
blob's other colours as objects.)

Writes benchmarks/results/proxy-shapes.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from machine import cpu_model
from proxy_base_eval import sample_three_ways
from readme import proxy_shapes_table

from lite_controlnet.bases import PROXY_SHAPES_BASE_DIR
from lite_controlnet.bases.loading import load_base
from lite_controlnet.bases.proxy_shapes_training import vae_psnr
from lite_controlnet.conditions.objects import object_scores
from lite_controlnet.data.heldout import PROXY_HELD_OUT_SEED
from lite_controlnet.data.shapes import parse_shapes_prompt, shapes_scene
from lite_controlnet.evaluation.metrics import MIN_DISK_AREA_FRACTION, ciede2000, srgb_to_lab
from lite_controlnet.pipeline import LiteControlNetPipeline
from lite_controlnet.sampling import SampleSettings

RESULTS = Path(__file__).resolve().parent / "results" / "proxy-shapes.json"


# a pixel is an object's, not the background's, when it is this far (Euclidean CIELAB) from
# the background's colour; 20 is well above the VAE's own error on flat areas (~3) and below
# the smallest distance between two colours of a scene (`shapes.MIN_COLOUR_DISTANCE`, 100 RGB)
FOREGROUND_LAB_DISTANCE = 20.0
# two neighbouring object pixels are one blob when their colours are this close (CIELAB): a
# blob is a region of one colour, or of colours that shade into each other, so objects of two
# colours that touch are two blobs
NEIGHBOUR_LAB_DISTANCE = 10.0


def _colour_regions(lab: np.ndarray, foreground: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of `foreground` pixels joined where neighbours' colours are close, as index arrays."""
    height, width = foreground.shape
    seen = ~foreground
    regions = []
    for start in zip(*np.nonzero(foreground)):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), [start]
        while queue:
            i, j = queue.popleft()
            for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if 0 <= a < height and 0 <= b < width and not seen[a, b] and \
                        np.linalg.norm(lab[a, b] - lab[i, j]) < NEIGHBOUR_LAB_DISTANCE:
                    seen[a, b] = True
                    queue.append((a, b))
                    members.append((a, b))
        regions.append(np.array(members))
    return regions


def blobs(image: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The background colour of an (H, W, 3) image in [0, 1] (the median of its 2 px border,
    background in every scene) and the mean colour of each blob (`_colour_regions` of the pixels
    far from that colour) larger than a speck (`metrics.MIN_DISK_AREA_FRACTION` of the image).
    Found without the prompt or the scene: where they are and how many is the image's own."""
    border = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                             image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    lab = srgb_to_lab(image)
    foreground = np.linalg.norm(lab - srgb_to_lab(background), axis=2) > FOREGROUND_LAB_DISTANCE
    smallest = MIN_DISK_AREA_FRACTION * foreground.size
    means = [image[r[:, 0], r[:, 1]].mean(axis=0) for r in _colour_regions(lab, foreground) if len(r) >= smallest]
    return background, means


def _error(rgb: np.ndarray, named: tuple[int, int, int]) -> float:
    return float(ciede2000(srgb_to_lab(rgb), srgb_to_lab(np.array(named, dtype=np.float64) / 255.0)))


def score_image(image: np.ndarray, target: np.ndarray, prompt: str) -> dict:
    """Scores of one (H, W, 3) image in [0, 1] against its real scene (`target`, `prompt`).

    ``blob_count_right``: the image has as many blobs (`blobs`) as the prompt has objects;
    ``right_count``: `object_scores`' count, regions of each of the prompt's object colours;
    ``object_colour_error``: for each object of the prompt, CIEDE2000 from its named colour to
    the nearest blob's mean colour (to the background's if the image has no blob), averaged;
    ``background_colour_error``: CIEDE2000 from the named background to the border's colour;
    ``object_iou``: `object_scores`' (needs the right place: what control adds).
    """
    objects, named_background = parse_shapes_prompt(prompt)
    background, means = blobs(image)
    found = means or [background]
    object_errors = [min(_error(mean, colour.rgb) for mean in found) for colour, _ in objects]
    scores = object_scores(image, target, prompt)
    return {"blob_count_right": float(len(means) == len(objects)), "right_count": scores["right_object_count"],
            "object_colour_error": float(np.mean(object_errors)),
            "background_colour_error": _error(background, named_background.rgb), "object_iou": scores["object_iou"]}


def summarise(rows: list[dict]) -> dict:
    return {key: round(float(np.mean([row[key] for row in rows])), 3) for key in rows[0]}


def evaluate(pipe: LiteControlNetPipeline, scenes: list, targets: np.ndarray, steps: int, guidance: float,
             seed: int = 0, batch: int = 16) -> dict:
    """Sample the scenes' prompts three ways (real, shuffled, empty) and score each image against its real scene."""
    prompts = [scene.prompt for scene in scenes]
    started = time.perf_counter()
    images = sample_three_ways(pipe, prompts, steps, guidance, seed, batch)
    results = {name: summarise([score_image(i, t, p) for i, t, p in zip(np.clip(found, 0.0, 1.0), targets, prompts)])
               for name, found in images.items()}
    return {"sampler": f"unipc, {steps} steps, guidance {guidance}", "guidance": guidance,
            "seconds": round(time.perf_counter() - started, 1), **results}


def reconstruct(vae, targets: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) images in [0, 1] encoded (posterior mean) and decoded by the VAE."""
    images = torch.from_numpy(targets).float().permute(0, 3, 1, 2) * 2 - 1
    decoded = torch.cat([vae.decode(vae.encode(images[i : i + 16]).latent_dist.mean).sample
                         for i in range(0, len(images), 16)])
    return ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", default=str(PROXY_SHAPES_BASE_DIR), help="shapes base folder")
    parser.add_argument("--num", type=int, default=32, help="held-out scenes to sample")
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
    shipped = Path(args.base).resolve() == PROXY_SHAPES_BASE_DIR.resolve()
    report = {"benchmark": "proxy_shapes_eval", "base": "proxy-shapes" if shipped else str(args.base), "samples": args.num,
              "held_out_seed": PROXY_HELD_OUT_SEED, "image_size": image_size,
              "vae_scale_factor": pipe.vae_scale_factor,
              "vae_psnr_db": round(vae_psnr(models.vae, 64, image_size), 2),
              "scenes": summarise([score_image(t, t, s.prompt) for t, s in zip(targets, scenes)]),
              "through_vae": summarise([score_image(r, t, s.prompt)
                                        for r, t, s in zip(reconstruct(models.vae, targets), targets, scenes)])}
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
    print(f"VAE reconstruction PSNR on 64 held-out scenes: {report['vae_psnr_db']} dB "
          f"(scale factor {pipe.vae_scale_factor}, {image_size} px)\n")
    print(proxy_shapes_table(report))


if __name__ == "__main__":
    main()
