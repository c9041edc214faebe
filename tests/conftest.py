import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

# Tests never reach a model hub: everything they load is built in code.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: steady on a busy 2-core machine (two threads there thrash), and what the
# learning test was calibrated with.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A tiny random SD stack on disk, loaded by tests through the real `load_base` path."""
    from lite_controlnet.bases.tiny import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_base(tiny_base_dir):
    from lite_controlnet import load_base

    return load_base(tiny_base_dir)


# A small run: 32 px, batches of 2, one validation row of one step.
SMALL = dict(resolution=32, batch_size=2, num_workers=0, num_validation=1, validation_steps=1)
SMALL_FLAGS = ["--resolution", "32", "--batch-size", "2", "--num-workers", "0", "--num-validation", "1",
               "--validation-steps", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_base_dir):
    """A dataset of 8 pairs (32 px), and a run of 2 steps with a checkpoint after each and a final/
    module, made once per test module: tests that damage or extend them work on copies."""
    from types import SimpleNamespace

    from lite_controlnet.data.fill50k import make_fill50k
    from lite_controlnet.training.config import TrainConfig
    from lite_controlnet.training.trainer import train

    root = tmp_path_factory.mktemp("world")
    data = make_fill50k(root / "data", num=8, size=32, progress=False)
    run = root / "run"
    train(TrainConfig(data=str(data), output=str(run), base=str(tiny_base_dir), max_steps=2, checkpoint_every=1,
                      **SMALL), progress=False)
    return SimpleNamespace(root=root, data=data, run=run, base=Path(tiny_base_dir), image=data / "source" / "0.png")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Generated models ("tiny") go to a per-test folder, never the user's ~/.cache.
    monkeypatch.setenv("LITE_CONTROLNET_CACHE", str(tmp_path / "cache"))


def randomize_(module, std=0.2, seed=0):
    """Give every parameter random values, so a zero-initialised module has an effect."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


def with_scheduler_config(tiny_base_dir, folder, **changes):
    """A copy of the tiny base whose scheduler config has `changes`."""
    shutil.copytree(tiny_base_dir, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


def rewrite_manifest_entry(checkpoint, rel):
    """Make a checkpoint's manifest agree with a file replaced on purpose (so only the content is bad)."""
    manifest = json.loads((checkpoint / "MANIFEST.json").read_text())
    data = (checkpoint / rel).read_bytes()
    manifest["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "MANIFEST.json").write_text(json.dumps(manifest))


ROOT = Path(__file__).resolve().parent.parent


def load_script(relative: str):
    """A repository script (e.g. "benchmarks/readme.py") imported as a module."""
    path = ROOT / relative
    if str(path.parent) not in sys.path:  # as `python benchmarks/x.py` does: its folder's modules import
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_block(name: str, relative: str = "README.md") -> str:
    """What `relative` (README.md by default) holds between <!-- name:start ... --> and <!-- name:end -->."""
    found = re.search(rf"<!-- {name}:start.*?-->\n(.*?)\n<!-- {name}:end -->", (ROOT / relative).read_text(),
                      flags=re.S)
    assert found, f"{relative} lacks the {name} block"
    return found.group(1)
