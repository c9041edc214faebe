"""The commands that make datasets with a condition: ``make-shapes`` and ``make-conditions``.

`add_dataset_commands` adds both to the command line's sub-parsers (see `cli.py`); each
handler calls the library function and prints what it wrote. Bad values reach the user as one
line: flags argparse can check (a malformed ``--objects``, an unknown ``--condition``) exit
with code 2 from the parser; the rest from the library's errors, through `errors.run_command`.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_dataset_commands", "parse_objects", "run_make_conditions", "run_make_shapes"]


def parse_objects(text: str) -> tuple[int, int]:
    """``--objects``: "1-4" (a range) or "3" (a count), from 1 to 4."""
    from .data.shapes import MAX_OBJECTS

    parts = text.split("-")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        low = high = 0
    if not 1 <= low <= high <= MAX_OBJECTS:
        raise argparse.ArgumentTypeError(f"expected a count or a range such as 1-4, from 1 to {MAX_OBJECTS} "
                                         f"objects, got {text!r}")
    return low, high


def _condition_params(args: argparse.Namespace) -> dict[str, Any]:
    """The condition's settings given on the command line (none: the condition's defaults);
    a UsageError for a setting of another condition."""
    flags = {"canny": (("--low-threshold", "low_threshold"), ("--high-threshold", "high_threshold")),
             "depth": (("--depth-model", "depth_model"),)}
    params, wrong = {}, []
    for condition, settings in flags.items():
        for flag, attribute in settings:
            value = getattr(args, attribute, None)
            if value is None:
                continue
            if condition != args.condition:
                wrong.append(flag)
            else:
                params["model" if attribute == "depth_model" else attribute] = value
    if wrong:
        from .errors import UsageError

        verb = "apply" if len(wrong) > 1 else "applies"
        raise UsageError(f"{' and '.join(wrong)} {verb} to another condition than {args.condition!r}.")
    return params


def run_make_shapes(args: argparse.Namespace) -> None:
    """``make-shapes``: write a shapes dataset (see `data.shapes.make_shapes`)."""
    from .conditions.shapes_dataset import make_shapes

    out = make_shapes(args.out_dir, num=args.num, size=args.size, objects=args.objects, condition=args.condition,
                      seed=args.seed, workers=args.workers, overwrite=args.overwrite, **_condition_params(args))
    print(f"Wrote {args.num} {args.condition} pairs to {out}")


def run_make_conditions(args: argparse.Namespace) -> None:
    """``make-conditions``: control images for a folder of images (see `conditions.from_images`)."""
    from .conditions.from_images import make_conditions

    out = make_conditions(args.images, args.condition, args.out, caption=args.caption, overwrite=args.overwrite,
                          **_condition_params(args))
    print(f"Wrote {args.condition} control images for the images of {args.images} to {out}")


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--low-threshold", type=float, default=None, help="canny: lower threshold (default 100)")
    p.add_argument("--high-threshold", type=float, default=None, help="canny: upper threshold (default 200)")


def add_dataset_commands(commands: Any) -> None:
    """Add ``make-shapes`` and ``make-conditions`` to the sub-parsers ``commands``."""
    from .conditions import CONDITIONS
    from .data.shapes import DEFAULT_SIZE

    scene_conditions = [name for name, condition in CONDITIONS.items() if condition.from_scenes]
    image_conditions = [name for name, condition in CONDITIONS.items() if condition.from_images]

    p = commands.add_parser("make-shapes", help="write scenes of 1 to 4 coloured shapes with one condition's "
                                                "control images (Hugging Face layout)")
    p.add_argument("out_dir")
    p.add_argument("--num", type=int, default=50000)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"pixels (default {DEFAULT_SIZE})")
    p.add_argument("--objects", type=parse_objects, default=(1, 4),
                   help="objects per scene: N or MIN-MAX (default 1-4)")
    p.add_argument("--condition", choices=scene_conditions, default="outline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in out_dir")
    _add_thresholds(p)
    p.set_defaults(func=run_make_shapes)

    p = commands.add_parser("make-conditions", help="make control images (e.g. canny edges) for a folder of your "
                                                    "images: a dataset to train on")
    p.add_argument("--images", required=True, help="folder of images, with .txt captions beside them or a "
                                                   "metadata.jsonl (file_name, text), or use --caption")
    p.add_argument("--condition", choices=image_conditions, required=True)
    p.add_argument("--out", required=True, help="the dataset folder to write")
    p.add_argument("--caption", default=None, help="one caption for every image")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    _add_thresholds(p)
    p.add_argument("--depth-model", default=None, help="depth: Hub id or folder of a transformers depth-estimation "
                                                       "model (e.g. depth-anything/Depth-Anything-V2-Small-hf)")
    p.set_defaults(func=run_make_conditions)
