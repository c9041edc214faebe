"""How the demo's training step shares a CPU: alone, and beside one or two competing processes.

Each measured run is `python -m lite_controlnet train --preset quick` on a small dataset of the
demo's pairs, for two dozen optimizer steps (stopped after MAX_SECONDS when it has collapsed);
its step time is the median step of `logs/loss.csv` past the first quarter (the grid before
training and the model loading are left out). Competitors:
another training of the same package (the demo beside a second run) and a plain CPU burner
(one busy Python loop: a browser tab, another cell). Each thread setting is measured against
each set of competitors, interleaved setting by setting, so a slow minute of the machine touches
all settings alike.

    python benchmarks/cpu_sharing.py                    # all settings, ~10 min on 2 cores (run it quiet)
    python benchmarks/cpu_sharing.py --settings package-default --competitors none training  # those rows only

Writes benchmarks/results/cpu-sharing.json (and prints a table); rows measured again replace theirs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_model  # noqa: E402

# What each setting puts in the run's environment and on its command line; a competing training
# runs with the same setting (the same package run twice). "torch" stands for torch's own
# default count (one thread per core), the package's default before it chose its threads.
SETTINGS = {
    "torch-default": {"env": {}, "args": ["--threads", "torch"]},
    "one-thread": {"env": {}, "args": ["--threads", "1"]},
    "package-default": {"env": {}, "args": []},
}
COMPETITORS = {
    "none": [],
    "training": ["training"],
    "burner": ["burner"],
    "training+burner": ["training", "burner"],
}
STEPS = 24
MAX_SECONDS = 150  # a measured run is stopped here: a collapsed one still leaves enough steps
BASE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
            "PYTHONUNBUFFERED": "1"}


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    return {**env, **BASE_ENV, **extra}


def lc(*args: str) -> list[str]:
    return [sys.executable, "-m", "lite_controlnet", *args]


def quick_train(data: Path, out: Path, steps: int, extra: list[str]) -> list[str]:
    return lc("train", "--preset", "quick", "--data", str(data), "--output", str(out), "--max-steps", str(steps),
              "--num-validation", "1", "--validation-steps", "1", "--checkpoint-every", "100000", *extra)


def step_seconds(run: Path) -> float:
    with open(run / "logs" / "loss.csv", newline="") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    steps = [b - a for a, b in zip(seconds, seconds[1:])]
    if len(steps) < 4:
        raise SystemExit(f"{run}: only {len(steps) + 1} steps logged within {MAX_SECONDS} s")
    return statistics.median(steps[len(steps) // 4:])  # past the first steps' warm-up


def torch_default_threads() -> int:
    """torch's own thread count in a fresh process with no thread variables."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=clean_env({}),
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def setting_args(setting: str) -> list[str]:
    args = SETTINGS[setting]["args"]
    return [str(torch_default_threads()) if a == "torch" else a for a in args]


def start_competitor(kind: str, setting: str, data: Path, work: Path) -> subprocess.Popen:
    env = clean_env({})
    if kind == "burner":
        cmd = [sys.executable, "-c", "while True: pass"]
    else:  # a second training with the same setting, long enough to outlast the measured run
        out = work / f"competitor-{time.monotonic_ns()}"
        cmd = quick_train(data, out, 100000, setting_args(setting))
        env = clean_env(SETTINGS[setting]["env"])
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    """Kill competitors and everything they started."""
    for p in procs:
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass
        p.wait()


def wait_until_training(work: Path, timeout: float = 300) -> None:
    """Until every competing training has logged a few steps (past its loading)."""
    deadline = time.monotonic() + timeout
    for run in work.glob("competitor-*"):
        log = run / "logs" / "loss.csv"
        while time.monotonic() < deadline:
            if log.is_file() and sum(1 for _ in open(log)) > 5:
                break
            time.sleep(1)


def measure(setting: str, competitors: list[str], data: Path, work: Path) -> dict:
    procs = [start_competitor(kind, setting, data, work) for kind in competitors]
    try:
        if "training" in competitors:
            wait_until_training(work)
        else:
            time.sleep(2)
        out = work / f"run-{setting}-{'+'.join(competitors) or 'alone'}"
        shutil.rmtree(out, ignore_errors=True)
        spec = SETTINGS[setting]
        start = time.monotonic()
        run = subprocess.Popen(quick_train(data, out, STEPS, setting_args(setting)), cwd=ROOT, env=clean_env(spec["env"]),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = run.communicate(timeout=MAX_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, 9)
            output, _ = run.communicate()
        wall = time.monotonic() - start
        if run.returncode and wall < MAX_SECONDS:
            raise SystemExit(f"{setting} beside {competitors}: train failed\n{output[-2000:]}")
        chosen = re.search(r"CPU threads\s+(\d+)", output)
        threads = int(chosen.group(1)) if chosen else None
        return {"setting": setting, "competitors": "+".join(competitors) or "none", "step_seconds": step_seconds(out),
                "wall_seconds": round(wall, 1), "threads": threads}
    finally:
        stop(procs)
        for run in work.glob("competitor-*"):
            shutil.rmtree(run, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--competitors", nargs="+", default=list(COMPETITORS), choices=list(COMPETITORS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu-sharing.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "pairs"
        subprocess.run(lc("make-fill50k", str(data), "--preset", "quick", "--num", "320"), cwd=ROOT,
                       env=clean_env({}), check=True, capture_output=True)
        rows = []
        for competitors in args.competitors:
            for setting in args.settings:  # interleaved: each competitor set, every setting in turn
                row = measure(setting, COMPETITORS[competitors], data, work)
                print(f"{row['setting']:<16} beside {row['competitors']:<16} {row['step_seconds']:.3f} s/step "
                      f"({row['threads']} thread(s))", flush=True)
                rows.append(row)
    out = Path(args.out)
    if out.is_file():  # the rows measured now replace theirs; the others stay
        measured = {(r["setting"], r["competitors"]) for r in rows}
        kept = [r for r in json.loads(out.read_text())["rows"] if (r["setting"], r["competitors"]) not in measured]
        order = {(s, c): k for k, (c, s) in enumerate((c, s) for c in COMPETITORS for s in SETTINGS)}
        rows = sorted(kept + rows, key=lambda r: order.get((r["setting"], r["competitors"]), len(order)))
    alone = {r["setting"]: r["step_seconds"] for r in rows if r["competitors"] == "none"}
    for r in rows:
        if r["setting"] in alone:
            r["slowdown"] = round(r["step_seconds"] / alone[r["setting"]], 2)
    result = {"machine": cpu_model(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "steps": STEPS, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
