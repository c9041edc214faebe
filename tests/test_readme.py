"""README.md as a user reads it: its measured blocks (and benchmarks/RESULTS.md's) are what
`benchmarks/readme.py` makes of benchmarks/results, it stays a front door, and every Python
snippet in it (and in docs/python.md) runs as written, offline, in a fresh folder."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, load_script, readme_block

README = (ROOT / "README.md").read_text()
PYTHON_DOC = ROOT / "docs" / "python.md"  # the Python snippets README points to run as written too
SNIPPETS = [snippet for text in (README, PYTHON_DOC.read_text())
            for snippet in re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)]


def test_every_measured_block_matches_its_results():
    script = load_script("benchmarks/readme.py")
    for relative, blocks in script.BLOCKS.items():
        for name in blocks:
            assert readme_block(name, relative) == script.block(name), (
                f"{relative}'s {name} block is stale: run python benchmarks/readme.py")


def test_readme_is_a_front_door():
    lines = README.splitlines()
    assert len(lines) <= 210, f"README.md has {len(lines)} lines: the studies belong in benchmarks/RESULTS.md"
    first_command = next(i for i, line in enumerate(lines) if line.startswith("```bash"))
    assert first_command < 60, f"README's first command is at line {first_command + 1}"
    assert "source .venv/bin/activate" in README
    # the source paper is cited by its title; "seed" means only a random seed
    assert "A Lightweight ControlNet for Fine-Tuning Stable Diffusion on Colab GPU" in README
    for text in (README, (ROOT / "benchmarks" / "RESULTS.md").read_text()):
        assert not re.search(r"the seed\b|seed's|lite-seed", text)
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


@pytest.mark.parametrize("number", range(len(SNIPPETS)), ids=[f"snippet-{n + 1}" for n in range(len(SNIPPETS))])
def test_readme_python_snippet_runs_as_written(number, tmp_path):
    # a fresh folder, offline, one thread (a busy 2-core CI machine): what a new user's shell gives,
    # with this checkout's package importable as an installed one would be
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    (tmp_path / "snippet.py").write_text(SNIPPETS[number])
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, f"Python snippet {number + 1} (README, then docs/python.md) failed:\n{done.stderr[-3000:]}"
    if "image.save(" in SNIPPETS[number]:  # the quick start: a trained module and its sample
        assert (tmp_path / "runs" / "quickstart" / "final" / "config.json").is_file()
        from PIL import Image

        assert Image.open(tmp_path / "runs" / "quickstart" / "sample.png").size == (32, 32)


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 4  # the quick start, diffusers' tools; a LoRA and a denoising loop of one's own
