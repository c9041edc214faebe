"""README's first command, timed: `bash scripts/demo.sh` from scratch, alone or beside a competing
process, with the package's own thread choice (no thread variables set).

    python benchmarks/demo_time.py                          # alone
    python benchmarks/demo_time.py --competitor training    # beside a second training of the package

Each run writes into a fresh folder and adds (or replaces) its row in benchmarks/results/demo.json:
the seconds the demo took, the CPU threads its training chose, and the held-out scores it printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu_sharing import clean_env, lc, start_competitor, stop, wait_until_training  # noqa: E402
from machine import cpu_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "demo.json"


def run_demo(out: Path) -> dict:
    env = {**clean_env({}), "OUT": str(out), "PY": sys.executable}
    start = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode:
        raise SystemExit(f"scripts/demo.sh failed:\n{done.stderr[-3000:]}")
    text = done.stdout + done.stderr
    threads = re.search(r"CPU threads\s+(\d+)\s+(.*)", text)
    scores = {}
    for name in ("text-only", "lite"):
        report = json.loads((out / f"eval-{name}.json").read_text())
        scores[name] = {key: round(report["mean"][key], 3) for key in ("disk_iou", "edge_f1")}
    return {"seconds": round(seconds), "threads": int(threads.group(1)) if threads else None,
            "thread_reason": threads.group(2).strip() if threads else None, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competitor", choices=["none", "training", "burner"], default="none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = []
        if args.competitor != "none":
            data = work / "pairs"
            subprocess.run(lc("make-fill50k", str(data), "--preset", "quick", "--num", "320"), cwd=ROOT,
                           env=clean_env({}), check=True, capture_output=True)
            procs.append(start_competitor(args.competitor, "package-default", data, work))
            if args.competitor == "training":
                wait_until_training(work)
        try:
            row = run_demo(work / "demo")
        finally:
            stop(procs)
    row = {"competitor": args.competitor, **row, "machine": cpu_model(), "cores": len(os.sched_getaffinity(0)),
           "date": time.strftime("%Y-%m-%d")}
    result = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    result["rows"] = [r for r in result["rows"] if r["competitor"] != args.competitor] + [row]
    result["rows"].sort(key=lambda r: ["none", "burner", "training"].index(r["competitor"]))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
