"""Parameter counts at the real SD1.5 UNet configuration (no weights are downloaded or even
allocated: the big models are built on PyTorch's meta device).

    python benchmarks/params.py     # prints the table, writes benchmarks/results/params.json
    python benchmarks/readme.py     # then refreshes README.md from the results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import T2IAdapter

from lite_controlnet import LiteControlNetModel, build_control
from lite_controlnet.bases.sd_configs import SD15_UNET_CONFIG, empty_unet

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "params.json"
LITE_VARIANTS = {  # name -> (design, overrides)
    "Lite (default: feedback)": ("feedback", {}),
    "Lite static (best step-invariant)": ("static", {}),
    # the pixel-MLP design of "A Lightweight ControlNet for Fine-Tuning Stable Diffusion on Colab GPU"
    "Lite, the pixel-MLP design": ("mlp", {}),
    "Lite, the pixel-MLP design, level_channels=64": ("mlp", {"level_channels": 64}),
    "Lite, the pixel-MLP design, level_channels=256, 2 level layers": ("mlp", {"level_channels": 256,
                                                                               "level_layers": 2}),
}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure() -> dict[str, int]:
    unet = empty_unet(SD15_UNET_CONFIG)
    counts = {"SD1.5 UNet (frozen base)": count(unet)}
    with init_empty_weights():
        counts["ControlNet (diffusers ControlNetModel.from_unet)"] = count(build_control("controlnet", unet))
        for name, adapter_type, blocks in (("T2I-Adapter full (2 res blocks per level)", "full_adapter", 2),
                                                  ("T2I-Adapter light (4 res blocks per level)", "light_adapter", 4)):
            counts[name] = count(T2IAdapter(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=blocks,
                                            downscale_factor=8, adapter_type=adapter_type))
    for name, (design, overrides) in LITE_VARIANTS.items():
        counts[name] = count(LiteControlNetModel.from_unet(unet, design=design, **overrides))
    return counts


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    counts = measure()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(counts, indent=2) + "\n")
    width = max(map(len, counts))
    for name, n in counts.items():
        print(f"{name:<{width}}  {n:>13,}")


if __name__ == "__main__":
    main()
