"""The control modules against each other at equal budget: fidelity against steps and seconds.

    python benchmarks/fidelity.py                        # the committed proxy base, CPU, seed 0
    python benchmarks/fidelity.py --variants lite:1e-3 controlnet:1e-4 controlnet:1e-3
    python benchmarks/fidelity.py --steps 1200 --variants lite:3e-3 controlnet:1e-3:cubic lite-mlp:1e-3@1000
    python benchmarks/fidelity.py --seed 1 ...           # one seed per call (run seeds in parallel)
    python benchmarks/fidelity.py --combine              # all seeds: mean, spread, plateau, shares
    python benchmarks/fidelity.py --base stable-diffusion-v1-5/stable-diffusion-v1-5 --resolution 512 ...

A variant is a control kind with an optional learning rate and timestep sampling
(`kind:lr:cubic`; without them, the kind's defaults): a sweep is part of a fair comparison;
`@steps` ends a variant sooner than the study (`lite-mlp:1e-3@1000`). The seconds axis of
`--combine` is steps times each kind's step measured alone (`benchmarks/proxy_step_time.py`).

The variants train on the same base and data with the same trainer, taking turns in chunks
of `--eval-every` steps, and are scored after each chunk (`lite_controlnet.evaluation.study`).
Each seed writes benchmarks/results/fidelity-<base>/seed-<n>.json and a plot beside it;
`--combine` writes benchmarks/results/fidelity-<base>.json and its plot from every seed there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from fill50k_splits import fill50k_splits
from machine import machine_description

from lite_controlnet import load_base
from lite_controlnet.evaluation.scoring import ScoreSettings
from lite_controlnet.evaluation.study import fidelity_curves, parse_variants, variant_configs
from lite_controlnet.evaluation.summary import combine_seeds, plot_fidelity, plot_seeds, summarize
from lite_controlnet.training.config import add_config_arguments
from lite_controlnet.bases import PROXY_BASE_DIR

HERE = Path(__file__).resolve().parent


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    title = f"seed {result['settings']['seed']} on {result['settings']['base_name']}, {result['machine']}"
    plot_fidelity(result, title).savefig(out.with_suffix(".png"), dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(PROXY_BASE_DIR))
    parser.add_argument("--work", default="outputs/fidelity", help="data and runs (kept: re-running resumes)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--train-num", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=1200,
                        help="ControlNet with cubic timesteps levels off near 800 on the proxy base, with uniform "
                             "ones after 1,000 (a study resumes longer)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--sample-every", type=int, default=2, help="full sampling every this many evaluations")
    add_config_arguments(parser, ScoreSettings, defaults=True)  # --heldout, --timestep, --sample-num, ...
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--variants", nargs="+",
                        default=["lite:3e-3:cubic", "lite-static:3e-3@1000", "lite-mlp:1e-3@1000",
                                 "t2i-adapter:1e-3@1000", "controlnet:1e-3:cubic", "controlnet:1e-3:uniform@1000"],
                        help="kind or kind:learning_rate, e.g. lite:1e-3 controlnet:1e-4 (default rates: TrainConfig's); "
                             "the defaults: each kind at its best rate of those tried on the proxy base; "
                             "kind:lr:cubic or kind:lr:uniform for a timestep sampling, @steps to stop sooner")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--summarize", type=Path, help="only recompute the summary and plot of this results file")
    parser.add_argument("--combine", action="store_true", help="only combine the seeds' results of --base")
    parser.add_argument("--step-time", type=Path, default=HERE / "results" / "proxy-step-time.json",
                        help="with --combine: each kind's step time measured alone (benchmarks/proxy_step_time.py), "
                             "the seconds axis; 'none': the runs' own wall-clock")
    args = parser.parse_args()
    name = Path(args.base).name
    if args.combine:
        files = sorted((HERE / "results" / f"fidelity-{name}").glob("seed-*.json"))
        if not files:
            raise SystemExit(f"--combine: no seed-*.json in {HERE / 'results' / f'fidelity-{name}'}; run seeds first.")
        seeds = [json.loads(f.read_text()) for f in files]
        step_time = None
        if str(args.step_time) != "none" and name == "proxy-base":
            if not args.step_time.is_file():
                raise SystemExit(f"--step-time: {args.step_time} is missing; run benchmarks/proxy_step_time.py, or "
                                 "give --step-time none for the runs' own wall-clock.")
            step_time = json.loads(args.step_time.read_text())["step_seconds"]
        combined = {"machine": seeds[0]["machine"], "date": max(r["date"] for r in seeds),
                    "settings": {k: v for k, v in seeds[0]["settings"].items() if k not in ("seed", "out")},
                    **combine_seeds(seeds, step_time)}
        out = HERE / "results" / f"fidelity-{name}.json"
        out.write_text(json.dumps(combined, indent=1) + "\n")
        title = f"{len(seeds)} seeds (mean, min-max) on {name}, {combined['machine']}"
        plot_seeds(combined, title).savefig(out.with_suffix(".png"), dpi=100)
        print(json.dumps(combined["summary"], indent=1))
        print(f"Wrote {out} and {out.with_suffix('.png')}")
        return
    if args.summarize:
        result = json.loads(args.summarize.read_text())
        result["summary"] = summarize(result)
        write(result, args.summarize)
        print(json.dumps(result["summary"], indent=1))
        return
    try:
        variants = parse_variants(args.variants, args.seed)
    except ValueError as error:
        raise SystemExit(f"--variants: {error}") from None
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    train_dir, heldout = fill50k_splits(work, args.train_num, max(args.heldout, args.sample_num), args.resolution)
    scoring = ScoreSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ScoreSettings)})
    configs = variant_configs(variants, train_dir, work, args.steps, base=args.base, resolution=args.resolution,
                              batch_size=args.batch_size)
    result = fidelity_curves(configs, load_base(args.base), heldout, args.eval_every, args.sample_every, scoring,
                             log=lambda line: print(line, flush=True), state=work / f"fidelity-state-seed{args.seed}.json")
    result = {
        "machine": machine_description(args.threads),
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("summarize", "step_time")}, "base_name": Path(args.base).name},
        **result,
    }
    out = Path(args.out) if args.out else HERE / "results" / f"fidelity-{name}" / f"seed-{args.seed}.json"
    write(result, out)
    print(json.dumps(result["summary"], indent=1))
    print(f"Wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
