"""Time writing the synthetic Fill50k, and record the figure with the machine it ran on.

    python benchmarks/fill50k_speed.py                    # the full 50,000 at 512 px
    python benchmarks/fill50k_speed.py --num 2000 --out -  # a quick look, printed only

The dataset is written to a temporary folder, which is deleted afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

from lite_controlnet.data.fill50k import make_fill50k

DEFAULT_OUT = Path(__file__).parent / "results" / "fill50k_generation.json"


def _load_average() -> list[float] | None:
    # Other work on the machine slows the run; record it so the figure can be judged.
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="result JSON file, or '-' to only print")
    args = parser.parse_args()

    load_before = _load_average()
    tmp = Path(tempfile.mkdtemp(prefix="fill50k_speed_"))
    try:
        start = time.perf_counter()
        make_fill50k(tmp / "fill50k", num=args.num, size=args.size, seed=args.seed, workers=args.workers)
        seconds = time.perf_counter() - start
        disk_bytes = sum(path.stat().st_size for path in (tmp / "fill50k").rglob("*") if path.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "benchmark": "make_fill50k",
        "num": args.num,
        "size": args.size,
        "seed": args.seed,
        "workers": args.workers or os.cpu_count(),
        "seconds": round(seconds, 1),
        "samples_per_second": round(args.num / seconds, 1),
        "dataset_megabytes": round(disk_bytes / 1e6, 1),
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
