"""Command line: `python -m lite_controlnet <command>` (or `lite-controlnet <command>`).

Every command reports an expected error (bad data, values, files or folders; a full disk) as
one line, `error: ...`, with exit code 2 for usage errors and 1 when the run could not go on;
`--debug` shows the traceback instead (see `errors.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from .bases.loading import DEFAULT_BASE
from .errors import USAGE, UsageError, run_command
from .presets import PRESETS, Preset
from .sampling import EvaluateSettings, SampleSettings


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the full usage is one --help away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _make_fill50k(args: argparse.Namespace) -> None:
    from .data.fill50k import make_fill50k

    out = make_fill50k(args.out_dir, num=args.num, size=args.size, seed=args.seed, workers=args.workers,
                       overwrite=args.overwrite)
    print(f"Wrote {args.num} pairs to {out}")


def _make_tiny_base(args: argparse.Namespace) -> None:
    from .bases.tiny import make_tiny_base

    out = Path(args.out_dir)
    if (out / "model_index.json").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a model (model_index.json); pass --overwrite to replace it.")
    make_tiny_base(out, seed=args.seed)
    print(f"Wrote a tiny random SD stack to {out}")


def _new_output(args: argparse.Namespace, suffixes: tuple[str, ...] | None = None) -> Path:
    """`--out`, checked before any work: refused if it exists and `--overwrite` was not given
    (outputs are never replaced silently), if it is a folder, if its suffix is not one of
    `suffixes` (None: an image format Pillow writes), or if its folder cannot be written."""
    import PIL.Image

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; expected a file name such as {out / 'out.png'}.")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it, or choose another --out.")
    if suffixes is None:
        written = {ext for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.SAVE}
        accepted, shown = written, ".png, .jpg, .webp or another format Pillow writes"
    else:
        accepted, shown = set(suffixes), " or ".join(suffixes)
    if out.suffix.lower() not in accepted:
        raise UsageError(f"--out {out}: cannot tell the format from {out.suffix or 'no suffix'!r}; expected {shown}.")
    folder = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write into {folder}; choose another --out.")
    return out


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed {seed} is invalid: expected a whole number from 0 to 2**63 - 1.")


def _device(args: argparse.Namespace) -> tuple[str, Any]:
    """`--device`, checked (a device this machine has; default: cuda when available, else cpu), and
    the dtype to sample in there; on a CPU, the threads (`--threads`) set and said."""
    from .training.hardware import inference_device
    from .training.threads import apply_threads

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} is invalid: expected a whole number >= 1, or leave it unset.")
    device, dtype = inference_device(args.device, what="--device")
    threads = apply_threads(device, args.threads)
    if threads is not None:
        print(f"CPU threads: {threads.threads} ({threads.reason})")
    return device, dtype


def _pipeline(args: argparse.Namespace, device: str, dtype: Any, **kwargs):
    """The pipeline of `--base` and `--control-model` on `device`, in `dtype`."""
    from .pipeline import LiteControlNetPipeline

    if args.control_model is not None and not Path(args.control_model).is_dir():
        raise UsageError(f"--control-model {args.control_model} is not a folder; expected one written by training "
                         "(e.g. runs/run1/final).")
    return LiteControlNetPipeline.from_base(args.base, controlnet=args.control_model, torch_dtype=dtype,
                                            device=device, **kwargs)


def _read_control_image(path: str):
    import PIL.Image

    from .data.paired import check_image_file, exif_upright

    try:
        problem = check_image_file(path)  # a FIFO would block, /dev/zero never end
        if problem:
            raise UsageError(f"Cannot read control image {path}: it {problem}.")
        with PIL.Image.open(path) as opened:
            return exif_upright(opened).convert("RGB")
    except (OSError, PIL.Image.DecompressionBombError) as error:
        raise UsageError(f"Cannot read control image {path}: {error}. Expected an image file Pillow can open "
                         "(PNG, JPEG, ...).") from None


def _settings(args: argparse.Namespace, settings: type) -> Any:
    """The dataclass `settings` of the flags `add_config_arguments` made for it."""
    return settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(settings)})


def _check_default_size(pipe: Any, image: Any, args: argparse.Namespace) -> None:
    """Refuse to sample, by default, at the size of a control image far larger than the base's own
    (a 2000x2000 image takes 15x as long as 512x512 on SD1.5): the size is then asked for."""
    native = pipe.unet.config.sample_size
    if not isinstance(native, int):  # a UNet with a non-square native size: not judged
        return
    native *= pipe.vae_scale_factor
    if image is None or args.height is not None or args.width is not None or image.width * image.height <= 4 * native**2:
        return
    raise UsageError(f"--image {args.image} is {image.width}x{image.height}, over 4x the pixels of the base's own "
                     f"{native}x{native}, and would be sampled at that size: pass --height and --width (e.g. "
                     f"--height {native} --width {native}; the control image is resized to them), or --height "
                     f"{image.height} --width {image.width} to sample it as it is.")


def _sample(args: argparse.Namespace) -> None:
    import torch

    from .pipeline import check_sampling_args

    # 1. everything that can be checked before the models are loaded
    if args.control_model is not None and not args.image:
        raise UsageError(f"--control-model {args.control_model} needs --image (the control image it follows); "
                         "without --control-model the base samples alone.")
    sampling = _settings(args, SampleSettings)
    check_sampling_args(sampling.steps, sampling.guidance, sampling.scale)  # height and width: by the base, once loaded
    _check_seed(sampling.seed)
    out = _new_output(args)
    device, dtype = _device(args)
    image = _read_control_image(args.image) if args.image else None
    # 2. sample
    pipe = _pipeline(args, device, dtype, scheduler=sampling.scheduler)
    _check_default_size(pipe, image, args)
    result = pipe(
        args.prompt,
        image,
        negative_prompt=args.negative_prompt,
        num_inference_steps=sampling.steps,
        guidance_scale=sampling.guidance,
        controlnet_conditioning_scale=sampling.scale,
        control_guidance_start=sampling.control_start,
        control_guidance_end=sampling.control_end,
        height=args.height,
        width=args.width,
        generator=torch.Generator(device="cpu").manual_seed(sampling.seed),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    result.images[0].save(out)
    print(f"Saved {out}")


def _train(args: argparse.Namespace) -> None:
    from .hub.commands import prepare_push, push_trained
    from .training.config import config_from_args
    from .training.trainer import train

    cfg = config_from_args(args)
    repo_id = prepare_push(args, cfg.output)  # --push-to-hub: checked and created before training
    push_trained(args, repo_id, train(cfg))


def _evaluate(args: argparse.Namespace) -> None:
    from .data.paired import PairedDataset
    from .evaluation.scoring import evaluate, native_resolution, write_report
    from .pipeline import check_sampling_args

    settings, sampling = _settings(args, EvaluateSettings), _settings(args, SampleSettings)
    check_sampling_args(sampling.steps, sampling.guidance, sampling.scale)
    _check_seed(sampling.seed)
    if settings.num < 1:
        raise UsageError(f"--num {settings.num} is invalid: expected a whole number >= 1.")
    if settings.resolution is not None and (settings.resolution < 8 or settings.resolution % 8):
        raise UsageError(f"--resolution {settings.resolution} is invalid: expected a multiple of 8 (e.g. 512).")
    out = _new_output(args, suffixes=(".json",))
    pipe = _pipeline(args, *_device(args), scheduler=sampling.scheduler)
    pipe.set_progress_bar_config(disable=True)
    if not 0 <= settings.one_step_t < pipe.scheduler.config.num_train_timesteps:
        raise UsageError(f"--one-step-t {settings.one_step_t} is invalid: expected a timestep from 0 to "
                         f"{pipe.scheduler.config.num_train_timesteps - 1}.")
    dataset = PairedDataset(settings.data, resolution=settings.resolution or native_resolution(pipe.base_models()),
                            manifest=settings.manifest, convert_mode=settings.convert_mode,
                            image_column=settings.image_column, caption_column=settings.caption_column,
                            conditioning_image_column=settings.conditioning_image_column)
    condition = _scoring_condition(settings)
    objects = _shapes_scenes(settings.data)
    report, grid = evaluate(pipe, dataset, num=settings.num, sampling=sampling, timestep=settings.one_step_t,
                            progress=True, condition=condition, objects=objects)
    report_path, grid_path = write_report(report, grid, out)
    mean = report["mean"]
    if condition is not None:
        print(f"{condition.name} controllability ({condition.metric}) {mean['controllability']:.3f} over "
              f"{mean['count']} samples; one-step (t={settings.one_step_t}) "
              f"{report['one_step']['with_control']['controllability']:.3f}")
        if objects:
            print(f"objects: per-object IoU {mean['object_iou']:.3f}, right number of objects "
                  f"{mean['right_object_count']:.0%}, object colour error {mean['object_colour_error'] or float('nan'):.1f}")
        print(f"Wrote {report_path} and {grid_path}")
        return
    print(f"disk IoU {mean['disk_iou']:.3f}, circle colour error {mean['circle_colour_error'] or float('nan'):.1f}, "
          f"background colour error {mean['background_colour_error'] or float('nan'):.1f}, edge F1 {mean['edge_f1']:.3f} "
          f"over {mean['count']} samples; one-step IoU (t={settings.one_step_t}) "
          f"{report['one_step']['with_control']['disk_iou']:.3f}")
    print(f"Wrote {report_path} and {grid_path}")


def _shapes_scenes(data: str) -> bool:
    """Whether the dataset folder holds shapes scenes (`make-shapes` wrote it): their objects are scored too."""
    from .data.dataset_folder import dataset_info

    return Path(data).is_dir() and (dataset_info(data) or {}).get("generator") == "make_shapes"


def _scoring_condition(settings: Any) -> Any:
    """The condition `evaluate` scores as: --condition, else the one the dataset records (with the
    settings it was made with), else None (Fill50k's disk scores)."""
    from .conditions import get_condition
    from .data.dataset_folder import dataset_condition, dataset_info

    name, params = settings.condition, {}
    if Path(settings.data).is_dir():
        recorded = dataset_condition(settings.data)
        if recorded is not None and name in (None, recorded):
            name, params = recorded, dict((dataset_info(settings.data) or {}).get("condition_params") or {})
    if name is None:
        return None
    try:
        condition = get_condition(name, **params)
        condition.check_available()
    except ValueError as error:
        raise UsageError(f"--condition {name}: {error}") from None
    return condition


def _make_proxy_base(args: argparse.Namespace) -> None:
    from .bases.proxy_command import main as proxy_main

    proxy_main(args.args[1:] if args.args[:1] == ["--"] else args.args)


def _preset_flags(preset: Preset) -> dict[str, dict[str, Any]]:
    """The flags `--preset` sets, per command (those of `train`: see `config_from_args`)."""
    sampling = {"base": preset.base, "guidance": preset.guidance}
    return {"make-fill50k": {"num": preset.num_samples, "size": preset.resolution}, "sample": sampling,
            "evaluate": sampling}


def build_parser(preset: Preset | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with `preset`, the flags it sets default to its values."""
    from .training.config import add_config_arguments

    def add_preset(p: argparse.ArgumentParser, sets: str) -> None:
        p.add_argument("--preset", choices=list(PRESETS), default=None,
                       help=f"the {sets} of a run size (lite_controlnet.presets): quick, the small base the package "
                            "ships, 32 px, a few minutes on a CPU; demo, quick for two epochs. Flags given win")

    parser = _Parser(prog="lite_controlnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error (anywhere on the line)")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("make-fill50k", help="write a synthetic Fill50k (circle outline -> filled circle)")
    p.add_argument("out_dir")
    p.add_argument("--num", type=int, default=50000)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in out_dir")
    add_preset(p, "--num and --size")
    p.set_defaults(func=_make_fill50k)

    from .dataset_commands import add_dataset_commands  # make-shapes, make-conditions
    add_dataset_commands(commands)
    from .hub.commands import add_push_command, add_train_push_arguments
    add_push_command(commands)

    p = commands.add_parser("make-tiny-base", help="write a tiny random SD stack for offline tests and demos")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_make_tiny_base)

    p = commands.add_parser("make-proxy-base", add_help=False,
                            help="train a small base used offline "
                                 "(OUT [--world fill50k|shapes] [--steps N] [--threads T])")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_make_proxy_base)

    p = commands.add_parser("sample", help="generate an image from a prompt and a control image")
    p.add_argument("--base", default=DEFAULT_BASE, help="hub id, local diffusers folder, 'proxy', "
                   "'proxy-shapes' or 'tiny'")
    p.add_argument("--control-model", default=None, help="folder written by save_pretrained (none: base alone)")
    p.add_argument("--image", default=None, help="control image (e.g. a Fill50k source/N.png)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    add_config_arguments(p, SampleSettings, defaults=True)
    p.add_argument("--height", type=int, default=None, help="default: the control image's, else the base's size")
    p.add_argument("--width", type=int, default=None, help="default: the control image's, else the base's size")
    p.add_argument("--device", default=None, help="cuda, cpu or mps (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: chosen from the cores and the load, as training does)")
    p.add_argument("--out", default="out.png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_preset(p, "--base and --guidance")
    p.set_defaults(func=_sample)

    p = commands.add_parser("evaluate", help="sample held-out pairs and score them: as the condition the data records (canny, "
                            "segmentation, ...), or Fill50k's disk IoU, colours and edges")
    p.add_argument("--base", default=DEFAULT_BASE, help="hub id, local diffusers folder, 'proxy', "
                   "'proxy-shapes' or 'tiny'")
    p.add_argument("--control-model", default=None, help="folder written by save_pretrained (none: text-only baseline)")
    add_config_arguments(p, EvaluateSettings, defaults=True)
    add_config_arguments(p, SampleSettings, defaults=True)
    p.add_argument("--device", default=None, help="cuda, cpu or mps (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: chosen from the cores and the load, as training does)")
    p.add_argument("--out", default="report.json", help="the JSON report; the grid of samples goes beside it (.png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_preset(p, "--base and --guidance")
    p.set_defaults(func=_evaluate)

    p = commands.add_parser("train", help="train a control module (resumes from --output's checkpoints)")
    p.add_argument("--config", default=None, help="JSON or YAML file of TrainConfig settings (flags win)")
    add_preset(p, "base, resolution, batch size, epochs, learning rate (the control kind's) and workers")
    add_config_arguments(p)
    add_train_push_arguments(p)
    p.set_defaults(func=_train)
    if preset is not None:
        for command, flags in _preset_flags(preset).items():
            commands.choices[command].set_defaults(**flags)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command and its settings; a `--preset` supplies the flags it sets that `argv` leaves out."""
    if argv[:1] == ["make-proxy-base"]:  # its own parser, flags and --help included
        argv = ["make-proxy-base", "--", *argv[1:]]
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):  # again, with the preset's values as the defaults of its flags
        args = build_parser(PRESETS[args.preset]).parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> None:
    """Run one command; an expected error exits with its code after one line on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    args = parse_args([a for a in argv if a != "--debug"])
    code = run_command(lambda: args.func(args), debug=debug)
    if code:
        raise SystemExit(code)
