"""Refresh the measured blocks of README.md from benchmarks/results/*.json.

    python benchmarks/readme.py

Each block sits between `<!-- NAME:start ... -->` and `<!-- NAME:end -->` markers; numbers are
never typed into README.md by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def params_block() -> str:
    counts = json.loads((RESULTS / "params.json").read_text())
    controlnet = counts["ControlNet (diffusers ControlNetModel.from_unet)"]
    lines = ["| model (SD1.5 configuration) | parameters | vs. ControlNet |", "|---|---:|---:|"]
    lines += [f"| {name} | {n:,} | {n / controlnet:.2%} |" for name, n in counts.items()]
    return "\n".join(lines) + "\n\n(`python benchmarks/params.py`: counted on PyTorch's meta device, no weights needed.)"


def fill50k_block() -> str:
    r = json.loads((RESULTS / "fill50k_generation.json").read_text())
    return (f"Writing the synthetic Fill50k ({r['num']:,} pairs at {r['size']} px) took {r['seconds']:.0f} s "
            f"({r['samples_per_second']:.0f} pairs/s) with {r['workers']} workers on a {r['cpu_count']}-core "
            f"{r['cpu']} machine, {r['date'][:10]} (`python benchmarks/fill50k_speed.py`).")


BLOCKS = {"params": params_block, "fill50k": fill50k_block}


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, make in BLOCKS.items():
        pattern = rf"<!-- {name}:start.*?-->.*?<!-- {name}:end -->"
        if not re.search(pattern, text, flags=re.S):
            raise SystemExit(f"README.md has no <!-- {name}:start --> ... <!-- {name}:end --> block.")
        block = f"<!-- {name}:start (benchmarks/readme.py) -->\n{make()}\n<!-- {name}:end -->"
        text = re.sub(pattern, lambda _: block, text, flags=re.S)
    readme.write_text(text)
    print(f"Refreshed {', '.join(BLOCKS)} in {readme}")


if __name__ == "__main__":
    main()
