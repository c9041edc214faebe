"""Command line: `python -m lite_controlnet <command>` (or `lite-controlnet <command>`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .base import DEFAULT_BASE


def _make_fill50k(args: argparse.Namespace) -> None:
    from .fill50k import make_fill50k

    out = make_fill50k(args.out_dir, num=args.num, size=args.size, seed=args.seed, workers=args.workers,
                       overwrite=args.overwrite)
    print(f"Wrote {args.num} pairs to {out}")


def _make_tiny_base(args: argparse.Namespace) -> None:
    from .tiny_base import make_tiny_base

    out = Path(args.out_dir)
    if (out / "model_index.json").exists() and not args.overwrite:
        raise SystemExit(f"{out} already holds a model (model_index.json); pass --overwrite to replace it.")
    make_tiny_base(out, seed=args.seed)
    print(f"Wrote a tiny random SD stack to {out}")


def _new_output(args: argparse.Namespace) -> Path:
    """`--out`, refused if it exists and `--overwrite` was not given: outputs are never replaced silently."""
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it, or choose another --out.")
    return out


def _pipeline(args: argparse.Namespace, **kwargs):
    """The pipeline of `--base` and `--control-model` on `--device` (fp16 on CUDA)."""
    import torch

    from .pipeline import LiteControlNetPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return LiteControlNetPipeline.from_base(args.base, controlnet=args.control_model, torch_dtype=dtype,
                                            device=device, **kwargs)


def _sample(args: argparse.Namespace) -> None:
    import PIL.Image
    import torch

    out = _new_output(args)
    pipe = _pipeline(args, scheduler=args.scheduler)
    image = None
    if args.image:
        try:
            image = PIL.Image.open(args.image).convert("RGB")
        except OSError as error:
            raise SystemExit(f"Cannot read control image {args.image}: {error}") from error
    result = pipe(
        args.prompt,
        image,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        controlnet_conditioning_scale=args.scale,
        control_guidance_start=args.control_start,
        control_guidance_end=args.control_end,
        height=args.height,
        width=args.width,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    result.images[0].save(out)
    print(f"Saved {out}")


def _train(args: argparse.Namespace) -> None:
    from .config import config_from_args
    from .trainer import train

    train(config_from_args(args))


def _evaluate(args: argparse.Namespace) -> None:

    from .data import PairedDataset
    from .evaluate import evaluate, native_resolution, one_step_scores, write_report

    out = _new_output(args)
    pipe = _pipeline(args)
    pipe.set_progress_bar_config(disable=True)
    base = pipe.base_models()
    dataset = PairedDataset(args.data, resolution=args.resolution or native_resolution(base))
    report, grid = evaluate(pipe, dataset, num=args.num, steps=args.steps, seed=args.seed,
                            guidance=args.guidance, scale=args.scale)
    indices = list(range(args.num))
    report["one_step"] = {"timestep": args.one_step_t,
                          "with_control": one_step_scores(base, pipe.controlnet, dataset, indices, args.one_step_t, args.seed)}
    if pipe.controlnet is not None:
        report["one_step"]["shuffled_control"] = one_step_scores(base, pipe.controlnet, dataset, indices,
                                                                 args.one_step_t, args.seed, shuffle=True)
    report_path, grid_path = write_report(report, grid, out)
    mean = report["mean"]
    print(f"disk IoU {mean['disk_iou']:.3f}, circle colour error {mean['circle_colour_error'] or float('nan'):.1f}, "
          f"background colour error {mean['background_colour_error'] or float('nan'):.1f}, edge F1 {mean['edge_f1']:.3f} "
          f"over {mean['count']} samples; one-step IoU (t={args.one_step_t}) "
          f"{report['one_step']['with_control']['disk_iou']:.3f}")
    print(f"Wrote {report_path} and {grid_path}")


def _make_proxy_base(args: argparse.Namespace) -> None:
    from .proxy_base import main as proxy_main

    proxy_main(args.args[1:] if args.args[:1] == ["--"] else args.args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lite_controlnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("make-fill50k", help="write a synthetic Fill50k (circle outline -> filled circle)")
    p.add_argument("out_dir")
    p.add_argument("--num", type=int, default=50000)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in out_dir")
    p.set_defaults(func=_make_fill50k)

    p = commands.add_parser("make-tiny-base", help="write a tiny random SD stack for offline tests and demos")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_make_tiny_base)

    p = commands.add_parser("make-proxy-base", add_help=False,
                            help="train the small pixel-space base used offline (OUT [--steps N] [--threads T])")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_make_proxy_base)

    p = commands.add_parser("sample", help="generate an image from a prompt and a control image")
    p.add_argument("--base", default=DEFAULT_BASE, help="hub id, local diffusers folder, 'proxy' or 'tiny'")
    p.add_argument("--control-model", default=None, help="folder written by save_pretrained (none: base alone)")
    p.add_argument("--image", default=None, help="control image (e.g. a Fill50k source/N.png)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--scale", type=float, default=1.0, help="control strength (0: base model alone)")
    p.add_argument("--control-start", type=float, default=0.0)
    p.add_argument("--control-end", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", choices=["unipc", "ddim"], default="unipc")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda, cpu or mps (default: cuda when available)")
    p.add_argument("--out", default="out.png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_sample)

    p = commands.add_parser("evaluate", help="sample held-out Fill50k pairs and score disk IoU, colours, edges")
    p.add_argument("--base", default=DEFAULT_BASE, help="hub id, local diffusers folder, 'proxy' or 'tiny'")
    p.add_argument("--control-model", default=None, help="folder written by save_pretrained (none: text-only baseline)")
    p.add_argument("--data", required=True, help="held-out pairs (e.g. make-fill50k data/heldout --seed 1)")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=None, help="default: the base's native size")
    p.add_argument("--one-step-t", type=int, default=800, help="timestep of the one-step probe")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="report.json")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_evaluate)

    from .config import add_config_arguments

    p = commands.add_parser("train", help="train a control module (resumes from --output's checkpoints)")
    p.add_argument("--config", default=None, help="JSON or YAML file of TrainConfig settings (flags win)")
    add_config_arguments(p)
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["make-proxy-base"]:  # its own parser, flags and --help included
        argv = ["make-proxy-base", "--", *argv[1:]]
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as error:  # user errors: print the message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
