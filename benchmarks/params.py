"""Parameter counts at the real SD1.5 UNet configuration (no weights are downloaded or even
allocated: the big models are built on PyTorch's meta device).

    python benchmarks/params.py            # prints the table, writes benchmarks/results/params.json
    python benchmarks/params.py --readme   # also refreshes the table in README.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import T2IAdapter

from lite_controlnet import LiteControlNetModel, build_control
from lite_controlnet.sd_configs import SD15_UNET_CONFIG, empty_unet

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "params.json"
LITE_VARIANTS = {
    "Lite (default)": {},
    "Lite, level_channels=64": {"level_channels": 64},
    "Lite, level_channels=128": {"level_channels": 128},
    "Lite, level_channels=256, 2 level layers": {"level_channels": 256, "level_mlp_layers": 2},
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
    for name, overrides in LITE_VARIANTS.items():
        counts[name] = count(LiteControlNetModel.from_unet(unet, **overrides))
    return counts


def table(counts: dict[str, int]) -> str:
    controlnet = counts["ControlNet (diffusers ControlNetModel.from_unet)"]
    lines = ["| model | parameters | vs. ControlNet |", "|---|---:|---:|"]
    for name, n in counts.items():
        lines.append(f"| {name} | {n:,} | {n / controlnet:.2%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="rewrite the table between the params markers in README.md")
    args = parser.parse_args()
    counts = measure()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(counts, indent=2) + "\n")
    print(table(counts))
    if args.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        block = f"<!-- params:start (benchmarks/params.py --readme) -->\n{table(counts)}\n<!-- params:end -->"
        new = re.sub(r"<!-- params:start.*?<!-- params:end -->", block, text, flags=re.S)
        if new == text and block not in text:
            raise SystemExit("README.md has no <!-- params:start --> ... <!-- params:end --> markers.")
        readme.write_text(new)


if __name__ == "__main__":
    main()
