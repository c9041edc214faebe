"""The control kinds against each other on the shapes world: one condition's controllability,
per-object IoU and both by the number of objects, against steps and seconds, on the latent base.

    python benchmarks/shapes_study.py --condition canny --seed 0      # one seed per call (run seeds side by side)
    python benchmarks/shapes_study.py --condition canny --seed 0 --variants lite-static:3e-3@300 ...
    python benchmarks/shapes_study.py --condition canny --combine     # every seed: mean, spread, plateau, shares

The data (made once under --work, `make_shapes`): a training set of scenes of 1 to 4 objects
(scene seed 0) and held-out scenes (seeds 101 to 104, one per number of objects), interleaved so
that every prefix holds each number of objects alike. The variants train on the proxy-shapes base
with the same trainer, taking turns in chunks of --eval-every steps, and are scored after each
(`lite_controlnet.evaluation.study.fidelity_curves`, with the condition's score and the object
scores). A variant is `kind:lr:timesteps@steps` as in benchmarks/fidelity.py. The seconds axis of
`--combine` is steps times each kind's step measured alone (`benchmarks/proxy_step_time.py --base
proxy-shapes`). Each seed writes benchmarks/results/shapes-<condition>/seed-<n>.json; `--combine`
writes benchmarks/results/shapes-<condition>.json, its curves' plot and the complexity plot of every
condition combined (shapes-complexity.png).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from machine import machine_description

from lite_controlnet import load_base
from lite_controlnet.bases import PROXY_SHAPES_BASE_DIR
from lite_controlnet.conditions import get_condition
from lite_controlnet.conditions.shapes_dataset import make_shapes
from lite_controlnet.data.paired import PairedDataset
from lite_controlnet.evaluation.complexity import plot_complexity
from lite_controlnet.evaluation.scoring import ScoreSettings
from lite_controlnet.evaluation.study import fidelity_curves, parse_variants, variant_configs
from lite_controlnet.evaluation.summary import OBJECT_COUNTS, combine_seeds, plot_seeds

HERE = Path(__file__).resolve().parent
CONDITIONS = ("canny", "segmentation", "outline")
HELD_OUT_SEED = 100  # scenes of n objects: seed 100 + n


class InterleavedPairs(torch.utils.data.Dataset):
    """Pairs of several datasets taken in turn (item i is item i // k of dataset i % k), so any
    prefix holds each alike; what `score_control` reads of a dataset."""

    def __init__(self, datasets: list[PairedDataset]):
        self.datasets = datasets
        self.resolution = datasets[0].resolution
        self.manifest = " + ".join(str(d.manifest) for d in datasets)

    def __len__(self) -> int:
        return len(self.datasets) * min(len(d) for d in self.datasets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} held-out pairs")
        k = len(self.datasets)
        return {**self.datasets[index % k][index // k], "index": index}


def shapes_splits(work: Path, condition: str, train_num: int, per_count: int) -> tuple[Path, InterleavedPairs]:
    """(training folder, held-out pairs) of `condition` under `work`, made once and then reused."""
    train = work / "train"
    if not (train / "dataset.json").is_file():
        make_shapes(train, num=train_num, condition=condition, seed=0, progress=False)
    heldout = []
    for n in OBJECT_COUNTS:
        folder = work / f"heldout-{n}-objects"
        if not (folder / "dataset.json").is_file():
            make_shapes(folder, num=per_count, objects=n, condition=condition, seed=HELD_OUT_SEED + n, progress=False)
        heldout.append(PairedDataset(folder, resolution=128))
    return train, InterleavedPairs(heldout)


def write_combined(condition: str, step_time: Path) -> None:
    files = sorted((HERE / "results" / f"shapes-{condition}").glob("seed-*.json"))
    if not files:
        raise SystemExit(f"--combine: no seed-*.json in {HERE / 'results' / f'shapes-{condition}'}; run seeds first.")
    seeds = [json.loads(f.read_text()) for f in files]
    step_seconds = None
    if str(step_time) != "none":
        if not step_time.is_file():
            raise SystemExit(f"--step-time: {step_time} is missing; run benchmarks/proxy_step_time.py --base "
                             "proxy-shapes, or give --step-time none for the runs' own wall-clock.")
        step_seconds = json.loads(step_time.read_text())["step_seconds"]
    combined = {"machine": seeds[0]["machine"], "date": max(r["date"] for r in seeds),
                "settings": {k: v for k, v in seeds[0]["settings"].items() if k not in ("seed", "out", "variants")},
                **combine_seeds(seeds, step_seconds, partial=True)}
    out = HERE / "results" / f"shapes-{condition}.json"
    out.write_text(json.dumps(combined, indent=1) + "\n")
    title = f"{condition} on proxy-shapes: {len(seeds)} seeds (mean, min-max), {combined['machine']}"
    plot_seeds(combined, title).savefig(out.with_suffix(".png"), dpi=100)
    found = {c: json.loads((HERE / "results" / f"shapes-{c}.json").read_text()) for c in CONDITIONS
             if (HERE / "results" / f"shapes-{c}.json").is_file()}
    complexity = HERE / "results" / "shapes-complexity.png"
    plot_complexity(found, "by objects in the scene, each kind at equal wall-clock (mean, min-max of the seeds)"
                    ).savefig(complexity, dpi=100)
    print(json.dumps(combined["summary"]["share_of_controlnet"], indent=1))
    print(f"Wrote {out}, {out.with_suffix('.png')} and {complexity}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--condition", choices=CONDITIONS, required=True)
    parser.add_argument("--work", default="outputs/shapes-study", help="data and runs (kept: re-running resumes)")
    parser.add_argument("--train-num", type=int, default=6400)
    parser.add_argument("--per-count", type=int, default=16, help="held-out scenes of each number of objects")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--sample-every", type=int, default=1, help="full sampling every this many evaluations")
    parser.add_argument("--heldout", type=int, default=64, help="held-out pairs scored in one step")
    parser.add_argument("--sample-num", type=int, default=64, help="held-out pairs sampled in full")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=["lite:3e-3:cubic", "controlnet:1e-3:cubic"],
                        help="as in benchmarks/fidelity.py; the defaults: the best rates of the Fill50k study")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--combine", action="store_true", help="only combine the seeds' results of --condition")
    parser.add_argument("--step-time", type=Path, default=HERE / "results" / "proxy-shapes-step-time.json",
                        help="with --combine: each kind's step time measured alone; 'none': the runs' own wall-clock")
    args = parser.parse_args()
    if args.combine:
        write_combined(args.condition, args.step_time)
        return
    try:
        variants = parse_variants(args.variants, args.seed)
    except ValueError as error:
        raise SystemExit(f"--variants: {error}") from None
    torch.set_num_threads(args.threads)
    work = Path(args.work) / args.condition
    train_dir, heldout = shapes_splits(work, args.condition, args.train_num, args.per_count)
    condition = get_condition(args.condition)
    scoring = ScoreSettings(heldout=args.heldout, sample_num=args.sample_num)
    configs = variant_configs(variants, train_dir, work, args.steps, base=str(PROXY_SHAPES_BASE_DIR), resolution=128,
                              batch_size=args.batch_size, cache_dir=str(work / "cache"))
    result = fidelity_curves(configs, load_base(str(PROXY_SHAPES_BASE_DIR)), heldout, args.eval_every,
                             args.sample_every, scoring, log=lambda line: print(line, flush=True),
                             state=work / f"state-seed{args.seed}.json", condition=condition, objects=True)
    result = {"machine": machine_description(args.threads),
              "settings": {**{k: v for k, v in vars(args).items() if k not in ("combine", "step_time")},
                           "base_name": "proxy-shapes", "work": str(work)},
              **result}
    out = HERE / "results" / f"shapes-{args.condition}" / f"seed-{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"].get("share_of_controlnet"), indent=1))
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
