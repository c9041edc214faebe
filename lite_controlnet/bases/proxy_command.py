"""`python -m lite_controlnet make-proxy-base OUT_DIR [--world fill50k|shapes] ...`: train a proxy base.

`--world fill50k` (the default) trains the 32 px pixel-space `proxy` base (`proxy_training`);
`--world shapes` the 128 px latent-space `proxy-shapes` base (`proxy_shapes_training`).
"""

from __future__ import annotations

import argparse

import torch

from .proxy import ProxyRecipe
from .proxy_shapes_training import make_proxy_shapes_base, recipe_for
from .proxy_training import make_proxy_base

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """`python -m lite_controlnet make-proxy-base OUT_DIR [--world fill50k|shapes] [--steps N] [--threads 1]
    [--log FILE]`."""
    parser = argparse.ArgumentParser(description="Train a proxy base and save it: the 32 px pixel-space base on "
                                                 "synthetic Fill50k, or with --world shapes the 128 px latent-space "
                                                 "base (a VAE, then a UNet in its latents) on the shapes world.")
    parser.add_argument("out_dir")
    parser.add_argument("--world", choices=("fill50k", "shapes"), default="fill50k",
                        help="what the base draws (default fill50k: the `proxy` base; shapes: `proxy-shapes`)")
    parser.add_argument("--steps", type=int, help=f"UNet steps (default {ProxyRecipe.steps} for fill50k, the "
                                                  "shapes recipe's for shapes)")
    parser.add_argument("--vae-steps", type=int, help="VAE steps (shapes only; default the shapes recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--log", help="append progress lines to this file (default: print them)")
    parser.add_argument("--save-every", type=int, help="save the weights (and, for shapes, the resumable state) "
                                                       "every N steps (default 1000 for fill50k, 500 for shapes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(line: str) -> None:
        if args.log is None:
            print(line, flush=True)
            return
        with open(args.log, "a", encoding="utf-8") as file:
            file.write(line + "\n")

    if args.world == "shapes":
        recipe = recipe_for(args.steps, args.vae_steps, args.seed)
        log(f"proxy-shapes base: {recipe}, {args.threads} thread(s)")
        make_proxy_shapes_base(args.out_dir, recipe, log=log,
                               save_every=500 if args.save_every is None else args.save_every)
        log("done")
        return
    if args.vae_steps is not None:
        parser.error("--vae-steps is for --world shapes (the Fill50k proxy base has no VAE)")
    steps = ProxyRecipe.steps if args.steps is None else args.steps
    log(f"proxy base: {ProxyRecipe(steps=steps, seed=args.seed)}, {args.threads} thread(s)")
    make_proxy_base(args.out_dir, steps=steps, seed=args.seed, progress=False, log=log,
                    save_every=1000 if args.save_every is None else args.save_every)
    log("done")


if __name__ == "__main__":
    main()
