"""Bad inputs, careless or hostile: each ends in the right exit code and one line that names the
culprit (file, line or value) and what would be accepted, without a traceback; and nothing a
user had before (checkpoints, final/, the loss log, the data, the base) changes.

Every case runs the CLI in this process (`cli.main`) on a tiny base, a 32 px dataset of 8 pairs
and a run of 2 steps shared by the whole module; cases that damage something damage a copy.
"""

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import PIL.Image
import pytest
import torch

from conftest import SMALL_FLAGS, rewrite_manifest_entry
from lite_controlnet import LiteControlNetModel, LiteControlNetPipeline, cli
from lite_controlnet.data.fill50k import make_fill50k
from lite_controlnet.training.config import TrainConfig



# Files a start may rightly rewrite: the lock's guard (made on first use), the settings of the
# latest start, the loss plot; the loss log is checked apart: rows may only be added after it.
REWRITTEN = {".lock.guard", "train_config.json", "loss.png", "loss.csv"}


def snapshot(*folders):
    """Every regular file under `folders` (symlinks not followed, FIFOs not opened) with its hash; a
    run's loss log as its rows."""
    found = {}
    for folder in map(Path, folders):
        for parent, _, names in os.walk(folder):
            for name in names:
                path = Path(parent) / name
                if path.is_symlink() or not path.is_file() or (name in REWRITTEN and name != "loss.csv" and
                                         (name != "train_config.json" or path.parent == folder)):
                    continue
                data = path.read_bytes()
                rows = name == "loss.csv"
                found[str(path)] = data.decode().splitlines() if rows else hashlib.sha256(data).hexdigest()
    return found


def unchanged(before, after):
    """Whether every file of `before` is still there, unchanged (a loss log may have gained rows)."""
    for path, value in before.items():
        now = after.get(path)
        if isinstance(value, list) and isinstance(now, list):
            if now[: len(value)] != value:
                return False
        elif now != value:
            return False
    return True


def run_cli(argv, capsys):
    """(exit code, stderr) of `lite_controlnet argv`, run in this process."""
    capsys.readouterr()
    code, message = 0, ""
    try:
        cli.main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
        message = "" if isinstance(exit.code, int) or exit.code is None else f"{exit.code}\n"
    return code, capsys.readouterr().err + message


def assert_one_line(err, culprits):
    """stderr ends with one `error:` line that holds every text in `culprits`; no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1].startswith("error: ") and lines[-1] == errors[0], err[-3000:]
    for text in culprits:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"


# -- the cases: each returns (argv, texts the error line must hold[, folders to watch, a check]) --

CASES = {}


def case(name, code=2):
    def register(make):
        CASES[name] = (make, code)
        return make

    return register


def train_args(c, output, *extra, data=None, base=None):
    return ["train", "--base", base or c.w.base, "--data", data or c.w.data, "--output", output, *SMALL_FLAGS,
            *extra]


def sample_args(c, *extra, control=None):
    control = ["--control-model", control] if control else []
    return ["sample", "--base", c.w.base, *control, "--image", c.w.image, "--prompt", "red circle", "--steps", "1",
            "--out", c.tmp / "out.png", *extra]


def copy_run(c):
    return Path(shutil.copytree(c.w.run, c.tmp / "run"))


def copy_data(c):
    return Path(shutil.copytree(c.w.data, c.tmp / "data"))


def write_manifest(folder, lines):
    (folder / "prompt.json").write_text("\n".join(line if isinstance(line, str) else json.dumps(line)
                                                  for line in lines) + "\n")


def pair(i):
    return {"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": f"prompt {i}"}


class Payload:  # unpickling it would need this module's code
    pass


# settings: flags and config files


for flag, value, texts in [
    ("--learning-rate", "inf", ["learning_rate=inf", "--learning-rate", "> 0"]),
    ("--learning-rate", "nan", ["learning_rate=nan", "finite"]),
    ("--learning-rate", "-0.0001", ["learning_rate=-0.0001", "> 0"]),
    ("--max-grad-norm", "nan", ["max_grad_norm=nan", "finite number > 0"]),
    ("--max-grad-norm", "-1", ["max_grad_norm=-1.0", "> 0"]),
    ("--checkpoint-minutes", "nan", ["checkpoint_minutes=nan", "> 0"]),
    ("--checkpoint-minutes", "0", ["checkpoint_minutes=0.0", "> 0"]),
    ("--weight-decay", "inf", ["weight_decay=inf", "finite"]),
    ("--prompt-dropout", "1.5", ["prompt_dropout=1.5", "[0, 1)"]),
    ("--validation-guidance", "nan", ["validation_guidance=nan", "finite"]),
    ("--max-gpu-memory", "inf", ["max_gpu_memory=inf", "finite"]),
    ("--epochs", "0", ["epochs=0", ">= 1"]),
    ("--seed", "-1", ["seed=-1", ">= 0"]),
    ("--resolution", "500", ["resolution=500", "multiple of 8"]),
    ("--micro-batch", "3", ["micro_batch=3", "divisor of batch_size=2"]),
    ("--epochs", "two", ["--epochs", "'two'", "int"]),
    ("--control-kind", "t2i", ["--control-kind", "'t2i'", "lite"]),
    ("--control-options", "level_channels=40", ["--control-options", "JSON object"]),
    ("--xformers", "maybe", ["--xformers", "true or false"]),
]:
    def make(c, flag=flag, value=value, texts=texts):
        return train_args(c, c.tmp / "out", flag, value), texts

    case(f"flag{flag}={value}")(make)


@case("train-without-data")
def _(c):
    return ["train", "--output", c.tmp / "out"], ["--data"]


@case("resume-folder-missing")
def _(c):
    return train_args(c, c.tmp / "out", "--resume", c.tmp / "nope"), ["resume=", "nope", "checkpoint folder"]


@case("config-file-missing")
def _(c):
    return ["train", "--config", c.tmp / "run.json"], ["run.json", "Cannot read"]


@case("config-json-broken")
def _(c):
    (c.tmp / "run.json").write_text('{\n "data": "d",\n "epochs": 2,,\n}\n')
    return ["train", "--config", c.tmp / "run.json"], ["run.json, line 3", "not valid JSON"]


@case("config-yaml-broken")
def _(c):
    (c.tmp / "run.yaml").write_text("data: d\noutput: o\nepochs: [2\n")
    return ["train", "--config", c.tmp / "run.yaml"], ["run.yaml, line", "not valid YAML"]


@case("config-wrong-type")
def _(c):
    (c.tmp / "run.json").write_text(json.dumps({"data": str(c.w.data), "output": str(c.tmp / "o"), "epochs": "two"}))
    return ["train", "--config", c.tmp / "run.json"], ["epochs='two'", "whole number"]


@case("config-yaml-exponent-is-text")
def _(c):
    (c.tmp / "run.yaml").write_text(f"data: {c.w.data}\noutput: {c.tmp / 'o'}\nlearning_rate: 1e-4\n")
    return ["train", "--config", c.tmp / "run.yaml"], ["learning_rate='1e-4'", "1.0e-4"]


@case("config-negative-grad-norm")
def _(c):
    (c.tmp / "run.json").write_text(json.dumps({"data": "d", "output": "o", "max_grad_norm": -1}))
    return ["train", "--config", c.tmp / "run.json"], ["max_grad_norm=-1", "> 0"]


@case("config-unknown-setting")
def _(c):
    (c.tmp / "run.json").write_text(json.dumps({"data": "d", "output": "o", "epoch": 3}))
    return ["train", "--config", c.tmp / "run.json"], ["unknown setting", "'epoch'", "epochs"]


@case("config-not-a-mapping")
def _(c):
    (c.tmp / "run.json").write_text("[1, 2]")
    return ["train", "--config", c.tmp / "run.json"], ["run.json", "mapping"]


@case("control-option-unknown")
def _(c):
    return train_args(c, c.tmp / "out", "--control-options", '{"width": 3}'), ["'width'", "level_channels"]


@case("control-option-value-the-module-cannot-build")
def _(c):
    return train_args(c, c.tmp / "out", "--control-options", '{"level_channels": -8}'), \
        ["--control-options", "level_channels", "cannot build a lite module"]


# your own validation pairs and the trackers: refused before anything is written


def own_pair(c, image=None, *prompts):
    return ["--validation-image", image or c.w.image, "--validation-prompt", *(prompts or ["mine"])]


@case("validation-image-missing")
def _(c):
    return train_args(c, c.tmp / "out", *own_pair(c, c.tmp / "nope.png")), \
        ["--validation-image", "nope.png", "no such file"], [], absent(c.tmp / "out")


@case("validation-image-unreadable")
def _(c):
    (c.tmp / "broken.png").write_bytes(b"not a png")
    return train_args(c, c.tmp / "out", *own_pair(c, c.tmp / "broken.png")), \
        ["--validation-image", "broken.png", "cannot be read"], [], absent(c.tmp / "out")


@case("validation-images-and-prompts-of-unequal-counts")
def _(c):
    argv = train_args(c, c.tmp / "out", "--validation-image", c.w.image, c.w.image, "--validation-prompt", "a", "b", "c")
    return argv, ["2 --validation-image and 3 --validation-prompt", "as many of each"], [], absent(c.tmp / "out")


@case("validation-image-without-prompt")
def _(c):
    return train_args(c, c.tmp / "out", "--validation-image", c.w.image), \
        ["--validation-prompt", "prompts of --validation-image"], [], absent(c.tmp / "out")


@case("no-validation-rows-at-all")
def _(c):
    argv = train_args(c, c.tmp / "out")
    argv[argv.index("--num-validation") + 1] = "0"
    return argv, ["num_validation=0", "--validation-image"], [], absent(c.tmp / "out")


@case("report-to-unknown")
def _(c):
    return train_args(c, c.tmp / "out", "--report-to", "tensorbord"), \
        ["--report-to", "'tensorbord'", "tensorboard"], [], absent(c.tmp / "out")


for tracker, modules in [("wandb", ["wandb"]), ("tensorboard", ["tensorboard", "tensorboardX"])]:
    def make(c, tracker=tracker, modules=modules):
        for module in modules:  # as if not installed: imports of it fail
            c.mp.setitem(sys.modules, module, None)
        return train_args(c, c.tmp / "out", "--report-to", tracker), \
            [f"--report-to {tracker}", f"pip install {tracker}"], [], absent(c.tmp / "out")

    case(f"report-to-{tracker}-not-installed")(make)


# data


@case("data-missing")
def _(c):
    return train_args(c, c.tmp / "out", data=c.tmp / "nope"), ["nope", "does not exist"]


@case("data-without-manifest")
def _(c):
    (c.tmp / "empty").mkdir()
    return train_args(c, c.tmp / "out", data=c.tmp / "empty"), ["No manifest found", "prompt.json", "--manifest"]


@case("data-two-manifests")
def _(c):
    data = copy_data(c)
    (data / "metadata.jsonl").write_text("")
    return train_args(c, c.tmp / "out", data=data), ["several manifests", "--manifest prompt.json"], [data]


@case("data-broken-line")
def _(c):
    data = copy_data(c)
    write_manifest(data, [pair(0), pair(1), "{broken", pair(3)])
    return train_args(c, c.tmp / "out", data=data), ["prompt.json, line 3", "not valid JSON"], [data]


@case("data-path-escapes")
def _(c):
    data = copy_data(c)
    write_manifest(data, [pair(0), {**pair(1), "source": "../outside.png"}, pair(2), pair(3)])
    return train_args(c, c.tmp / "out", data=data), ["line 2", "leaves the dataset folder"], [data]


@case("data-symlinked-folder")
def _(c):
    data = copy_data(c)
    secret = c.tmp / "secret.png"  # an image of the machine, outside the dataset
    shutil.copy(c.w.image, secret)
    os.symlink("/", data / "root")
    write_manifest(data, [{**pair(0), "source": "root" + str(secret)}, pair(1), pair(2), pair(3)])
    return train_args(c, c.tmp / "out", data=data), ["line 1", "symlinked folder", "leave the dataset folder"], [data]


@case("data-grey-image")
def _(c):
    data = copy_data(c)
    PIL.Image.open(data / "source" / "0.png").convert("L").save(data / "source" / "0.png")
    return train_args(c, c.tmp / "out", data=data), ["line 1", "mode 'L'", "--convert-mode true"], [data]


@case("data-decompression-bomb")
def _(c):
    c.mp.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # a 32x32 image now counts as a bomb
    return train_args(c, c.tmp / "out"), ["line 1", "decompression bomb"]


@case("data-fewer-pairs-than-a-batch")
def _(c):
    return train_args(c, c.tmp / "out", "--batch-size", "16"), ["8 pairs", "batch_size=16"]


@case("data-target-deleted-after-caching")
def _(c):
    run, data = copy_run(c), copy_data(c)
    (data / "target" / "3.png").unlink()
    return train_args(c, run, "--max-steps", "3", data=data), ["line 4", "target/3.png", "cannot be read"], [run]


@case("data-error-in-a-loader-worker")
def _(c):
    run, data = copy_run(c), copy_data(c)
    for image in (data / "source").iterdir():  # the cache holds the targets: only the loader reads these
        image.write_bytes(b"not a png")
    return train_args(c, run, "--max-steps", "3", "--num-workers", "1", data=data), \
        ["prompt.json, line", "cannot read source (control) image"], [run]



# data: a Hugging Face dataset (parquet) with its own column names

HF_COLUMNS = ["--image-column", "photo", "--conditioning-image-column", "edges", "--caption-column", "caption"]


def hf_parquet(c, control=None, caption=None):
    """A parquet file of the shared data's 8 pairs in columns photo, edges and caption, in a folder
    of its own; `control` and `caption` replace row -> value."""
    import datasets

    c.mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(c.tmp / "hf-datasets"))  # its arrow copy
    rows = {"photo": [], "edges": [], "caption": []}
    for i in range(8):
        rows["photo"].append((c.w.data / "target" / f"{i}.png").read_bytes())
        rows["edges"].append((control or {}).get(i, (c.w.data / "source" / f"{i}.png").read_bytes()))
        rows["caption"].append((caption or {}).get(i, f"caption {i}"))
    folder = c.tmp / "parquet"
    folder.mkdir()
    datasets.Dataset.from_dict(rows).to_parquet(folder / "train.parquet")
    return folder


for flag, value, texts in [
    ("--max-train-samples", "0", ["max_train_samples=0", "--max-train-samples", ">= 1"]),
    ("--max-train-samples", "-2", ["max_train_samples=-2", ">= 1"]),
    ("--max-train-samples", "all", ["--max-train-samples", "'all'", "int"]),
    ("--caption-column", "conditioning_image", ["caption_column='conditioning_image'", "--caption-column",
                                                "other than --conditioning-image-column"]),
    ("--image-column", "", ["image_column=''", "--image-column", "name of a column"]),
]:
    def make(c, flag=flag, value=value, texts=texts):
        return train_args(c, c.tmp / "out", flag, value), texts

    case(f"flag{flag}={value}")(make)


@case("data-parquet-without-the-default-columns")
def _(c):
    data = hf_parquet(c)
    return train_args(c, c.tmp / "out", data=data), \
        ["has no column 'image' (--image-column)", "['photo', 'edges', 'caption']"], [data]


@case("data-parquet-column-flag-naming-no-column")
def _(c):
    data = hf_parquet(c)
    return train_args(c, c.tmp / "out", *HF_COLUMNS, "--conditioning-image-column", "edge", data=data), \
        ["no column 'edge' (--conditioning-image-column)", "'edges'"], [data]


@case("data-parquet-unreadable-image-bytes")
def _(c):
    data = hf_parquet(c, control={2: b"not a png"})
    return train_args(c, c.tmp / "out", *HF_COLUMNS, "--max-steps", "1", data=data), \
        ["parquet, row 2, column 'edges' (--conditioning-image-column): cannot read the image (9 bytes): not an "
         "image format"], [data]


@case("data-parquet-missing-caption")
def _(c):
    data = hf_parquet(c, caption={5: None})
    return train_args(c, c.tmp / "out", *HF_COLUMNS, data=data), \
        ["row 5, column 'caption' (--caption-column): missing caption"], [data]


@case("data-parquet-without-the-datasets-library")
def _(c):
    data = hf_parquet(c)
    c.mp.setitem(sys.modules, "datasets", None)  # import datasets fails, as where it is not installed
    return train_args(c, c.tmp / "out", *HF_COLUMNS, data=data), ["`datasets` library", "pip install datasets"], [data]


@case("data-hub-id-offline")
def _(c):
    return train_args(c, c.tmp / "out", data="someone/not-in-the-cache"), \
        ["someone/not-in-the-cache: cannot load this Hub dataset", "save_to_disk", "parquet"]


@case("data-neither-a-path-nor-a-hub-id")
def _(c):
    c.mp.chdir(c.tmp)
    return train_args(c, c.tmp / "out", data="no-such-folder"), ["no-such-folder does not exist", "Hub dataset id"]


@case("data-column-flags-on-a-manifest-folder")
def _(c):
    return train_args(c, c.tmp / "out", "--caption-column", "prompt"), \
        ["--caption-column name columns of a Hugging Face dataset", "manifest folder (prompt.json)"]


@case("resume-with-other-max-train-samples")
def _(c):
    run = copy_run(c)
    return train_args(c, run, "--max-steps", "3", "--max-train-samples", "6"), \
        ["belongs to another run", "--data", "--max-train-samples"], [run]


# runs, checkpoints and locks


@case("resume-with-other-data")
def _(c):
    run = copy_run(c)
    other = make_fill50k(c.tmp / "other", num=8, size=32, seed=1, progress=False)
    return train_args(c, run, "--max-steps", "3", data=other), ["belongs to another run", "--data"], [run]


@case("resume-with-other-base")
def _(c):
    run = copy_run(c)
    return train_args(c, run, "--max-steps", "3", base="proxy"), ["belongs to another run", "--base", "proxy"], [run]


@case("resume-with-other-batch-size")
def _(c):
    run = copy_run(c)
    return train_args(c, run, "--max-steps", "3", "--batch-size", "4"), ["--batch-size: 2 -> 4"], [run]


@case("fresh-start-in-a-used-folder")
def _(c):
    run = copy_run(c)
    return train_args(c, run, "--resume", "never"), [str(run), "holds another run", "step 2", "another --output"], [run]


@case("resume-from-an-older-checkpoint-than-the-folder-holds")
def _(c):
    run = copy_run(c)
    return train_args(c, run, "--resume", run / "checkpoints" / "step-00000001"), ["step 2", "holds another run"], [run]


@case("resume-when-every-checkpoint-is-damaged")
def _(c):
    run = copy_run(c)
    for weights in (run / "checkpoints").glob("*/control/diffusion_pytorch_model.safetensors"):
        weights.write_bytes(weights.read_bytes()[:-100])
    return train_args(c, run, "--max-steps", "3"), ["holds another run", "none of its checkpoints can be resumed"], \
        [run]


@case("resume-named-checkpoint-with-empty-manifest")
def _(c):
    run = copy_run(c)
    (run / "checkpoints" / "step-00000002" / "MANIFEST.json").write_text("[]")
    return train_args(c, run, "--resume", run / "checkpoints" / "step-00000002"), \
        ["step-00000002", "MANIFEST.json is malformed"], [run]


@case("resume-named-checkpoint-that-needs-unpickling")
def _(c):
    run = copy_run(c)
    checkpoint = run / "checkpoints" / "step-00000002"
    torch.save({"global_step": 2, "payload": Payload()}, checkpoint / "state.pt")
    rewrite_manifest_entry(checkpoint, "state.pt")
    return train_args(c, run, "--resume", checkpoint), ["state.pt", "unpickling", "refused"], [run]


@case("second-trainer-on-a-locked-folder")
def _(c):
    run = copy_run(c)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    c.defer(lambda: (holder.kill(), holder.wait()))
    (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "heartbeat": time.time()}))
    return train_args(c, run, "--max-steps", "3"), ["in use by another training run", f"pid {holder.pid}"], [run]


@case("weights-become-non-finite", code=1)
def _(c):
    run = copy_run(c)
    step = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    c.mp.setattr(torch.optim.AdamW, "step", poisoned)
    return train_args(c, run, "--max-steps", "3"), ["not finite at step 3", "--learning-rate"], [run]


@case("disk-full-while-the-cache-is-built", code=1)
def _(c):
    usage = shutil.disk_usage
    full = str(c.tmp / "out")
    c.mp.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=1024) if str(path).startswith(full)
                 else usage(path))
    return train_args(c, c.tmp / "out"), ["No space left", "latent cache", "needs"]


@case("disk-full-while-a-checkpoint-is-written", code=1)
def _(c):
    run = copy_run(c)
    copy = shutil.copyfile

    def copyfile(src, dst, *args, **kwargs):
        if str(dst).startswith(str(run / "checkpoints")):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return copy(src, dst, *args, **kwargs)

    c.mp.setattr(shutil, "copyfile", copyfile)

    def nothing_left_behind():
        assert not list((run / "checkpoints").glob(".tmp-*"))

    return train_args(c, run, "--max-steps", "3"), ["No space left", "checkpoint step-00000003"], [run], \
        nothing_left_behind


# models


def module_folder(c, *files):
    folder = c.tmp / "module"
    folder.mkdir()
    for name in files:
        shutil.copy(c.w.run / "final" / name, folder / name)
    return folder


@case("control-model-with-flipped-bytes")
def _(c):
    run = copy_run(c)
    weights = run / "final" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor: still loads, as another image
    weights.write_bytes(bytes(data))
    return sample_args(c, control=run / "final"), ["final", "does not match its manifest"], [run]


@case("control-model-holding-only-config")
def _(c):
    return sample_args(c, control=module_folder(c, "config.json")), \
        ["Cannot load the control module", "diffusion_pytorch_model.safetensors"]


@case("control-model-with-pickled-weights-only")
def _(c):
    folder = module_folder(c, "config.json")
    module = LiteControlNetModel.from_pretrained(c.w.run / "final")
    torch.save(module.state_dict(), folder / "diffusion_pytorch_model.bin")
    return sample_args(c, control=folder), ["Cannot load the control module", "safetensors"]


@case("control-model-for-another-base")
def _(c):
    folder = c.tmp / "module"
    LiteControlNetModel(residual_channels=(8, 8), residual_levels=(0, 1), mid_channels=8, level_kernel_size=1,
                        feedback=False).save_pretrained(folder)
    return sample_args(c, control=folder), ["made for another base", "channels [8, 8]"]


@case("control-model-config-garbage")
def _(c):
    folder = module_folder(c, "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text("{not json")
    return sample_args(c, control=folder), ["config.json", "unreadable"]


@case("control-model-missing")
def _(c):
    return sample_args(c, control=c.tmp / "nope"), ["--control-model", "nope", "not a folder"]


@case("base-missing")
def _(c):
    return ["sample", "--base", c.tmp / "nope", "--prompt", "p", "--out", c.tmp / "o.png"], ["nope", "does not exist"]


@case("base-without-unet")
def _(c):
    (c.tmp / "notamodel").mkdir()
    return ["sample", "--base", c.tmp / "notamodel", "--prompt", "p", "--out", c.tmp / "o.png"], \
        ["notamodel", "no unet/ subfolder"]


@case("base-with-truncated-weights")
def _(c):
    base = Path(shutil.copytree(c.w.base, c.tmp / "base"))
    weights = base / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return ["sample", "--base", base, "--prompt", "p", "--out", c.tmp / "o.png"], ["unet/", str(base)], [base]


# sampling


for extra, texts in [
    (["--scale", "nan"], ["controlnet_conditioning_scale=nan", "--scale", "from 0"]),
    (["--scale", "inf"], ["controlnet_conditioning_scale=inf", "--scale"]),
    (["--scale", "1e9"], ["controlnet_conditioning_scale=1000000000.0", "to 10"]),
    (["--steps", "0"], ["num_inference_steps=0", "--steps", ">= 1"]),
    (["--steps", "-5"], ["num_inference_steps=-5", ">= 1"]),
    (["--steps", "1000"], ["num_inference_steps=1000", "UniPCMultistepScheduler", "fewer than its 1000"]),
    (["--steps", "5000", "--scheduler", "ddim"], ["num_inference_steps=5000", "DDIMScheduler"]),
    (["--guidance", "nan"], ["guidance_scale=nan", "--guidance"]),
    (["--height", "0"], ["height=0", "multiple of 8"]),
    (["--width", "30"], ["width=30", "multiple of 8"]),
    (["--seed", "-1"], ["--seed -1", "from 0"]),
    (["--control-start", "0.9", "--control-end", "0.1"], ["control_guidance_start", "0.9"]),
    (["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], ["--device cuda", "cpu"]),
    (["--device", "gpu"], ["--device 'gpu'", "cuda, cuda:N, cpu or mps"]),
]:
    def make(c, extra=extra, texts=texts):
        return sample_args(c, *extra, control=c.w.run / "final"), texts

    case(f"sample{'='.join(extra)}")(make)


def no_sampling(c):
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before --out was checked")

    c.mp.setattr(LiteControlNetPipeline, "__call__", refuse)


@case("sample-out-unknown-format")
def _(c):
    no_sampling(c)
    return [*sample_args(c), "--out", c.tmp / "out.xyz"], ["--out", "out.xyz", ".png"]


@case("sample-out-exists")
def _(c):
    no_sampling(c)
    (c.tmp / "out.png").write_bytes(b"keep me")
    return sample_args(c), ["out.png exists", "--overwrite"], [c.tmp]


@case("sample-out-is-a-folder")
def _(c):
    no_sampling(c)
    (c.tmp / "out.png").mkdir()
    return sample_args(c, "--overwrite"), ["out.png is a folder"]


@case("sample-image-missing")
def _(c):
    return [*sample_args(c), "--image", c.tmp / "nope.png"], ["control image", "nope.png"]


@case("sample-image-not-an-image")
def _(c):
    (c.tmp / "fake.png").write_text("hello")
    return [*sample_args(c), "--image", c.tmp / "fake.png"], ["control image", "fake.png", "PNG, JPEG"]


@case("sample-image-decompression-bomb")
def _(c):
    c.mp.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    return sample_args(c), ["control image", "0.png", "decompression bomb"]


@case("evaluate-num-zero")
def _(c):
    return ["evaluate", "--base", c.w.base, "--data", c.w.data, "--num", "0", "--out", c.tmp / "r.json"], \
        ["--num 0", ">= 1"]


@case("evaluate-out-not-json")
def _(c):
    return ["evaluate", "--base", c.w.base, "--data", c.w.data, "--num", "1", "--out", c.tmp / "r.txt"], \
        ["--out", "r.txt", ".json"]


@case("evaluate-one-step-timestep-out-of-range")
def _(c):
    return ["evaluate", "--base", c.w.base, "--data", c.w.data, "--num", "1", "--one-step-t", "5000",
            "--out", c.tmp / "r.json"], ["--one-step-t 5000", "from 0 to 999"]


@case("evaluate-unknown-condition")
def _(c):
    return ["evaluate", "--base", c.w.base, "--data", c.w.data, "--num", "1", "--condition", "edgez",
            "--out", c.tmp / "r.json"], ["--condition edgez", "unknown condition", "canny"]


# hostile inputs, second round


def absent(*paths):
    """A check that none of `paths` (globs allowed) exists: nothing was stored or half-written."""
    def check():
        for path in map(Path, paths):
            assert not list(path.parent.glob(path.name)), f"{path} exists"

    return check


for options, texts in [
    ({"level_norm": "no"}, ["--control-options", "level_norm='no'", "true or false"]),
    ({"level_channels": "wide"}, ["--control-options", "level_channels='wide'", "whole number"]),
    ({"level_channels": 2.5}, ["--control-options", "level_channels=2.5", "whole number"]),
    ({"level_channels": float("inf")}, ["--control-options", "level_channels=inf", "whole number"]),
]:
    def make(c, options=options, texts=texts):
        return train_args(c, c.tmp / "out", "--control-options", json.dumps(options)), texts, [], \
            absent(c.tmp / "out")

    case(f"control-option-of-the-wrong-type-{json.dumps(options)}")(make)


@case("control-options-in-a-yaml-file-of-the-wrong-type")
def _(c):
    (c.tmp / "run.yaml").write_text(f"data: {c.w.data}\noutput: {c.tmp / 'out'}\nbase: {c.w.base}\n"
                                    "control_options: {level_norm: 'no'}\n")
    return ["train", "--config", c.tmp / "run.yaml"], ["control_options", "level_norm='no'", "true or false"], [], \
        absent(c.tmp / "out")


@case("disk-full-for-the-text-embeddings", code=1)
def _(c):
    usage, full = shutil.disk_usage, str(c.tmp / "out")
    # room for the latents alone (8 x 4x4x4 float16 and a header), not for the text embeddings too
    c.mp.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=6000) if str(path).startswith(full)
                 else usage(path))
    return train_args(c, c.tmp / "out"), ["No space left", "latent cache", "prompts", "needs"], [], \
        absent(c.tmp / "out" / "cache" / "*" / "text.npy*")


@case("disk-full-while-the-text-embeddings-are-written", code=1)
def _(c):
    import numpy as np

    save = np.save

    def short_write(file, array, *args, **kwargs):  # what numpy raises when the disk fills mid-write
        if "text.npy" in str(getattr(file, "name", file)):
            raise OSError(f"{array.nbytes} requested and {array.nbytes // 3} written")
        return save(file, array, *args, **kwargs)

    c.mp.setattr(np, "save", short_write)
    return train_args(c, c.tmp / "out"), ["No space left", "text embeddings", "needs"], [], \
        absent(c.tmp / "out" / "cache" / "*" / "text.npy*")


@case("control-model-missing-a-tensor")
def _(c):
    from safetensors.torch import load_file, save_file

    folder = module_folder(c, "config.json", "diffusion_pytorch_model.safetensors")  # no MANIFEST.json
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    save_file({k: v for k, v in weights.items() if k != sorted(weights)[-1]}, folder / "diffusion_pytorch_model.safetensors")
    return sample_args(c, control=folder), ["Cannot load the control module", "lack 1 of the tensors",
                                             sorted(weights)[-1]], [folder], absent(c.tmp / "out.png")


@case("control-model-config-of-another-control-class")
def _(c):
    folder = module_folder(c, "config.json", "diffusion_pytorch_model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "T2IAdapter"}))
    return sample_args(c, control=folder), ["Cannot load the control module", str(folder)], [folder], \
        absent(c.tmp / "out.png")


def base_copy(c):
    return Path(shutil.copytree(c.w.base, c.tmp / "base"))


def sample_base(c, base):
    return ["sample", "--base", base, "--prompt", "p", "--steps", "1", "--out", c.tmp / "o.png"]


@case("base-missing-a-tensor")
def _(c):
    from safetensors.torch import load_file, save_file

    base = base_copy(c)
    path = base / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    save_file({k: v for k, v in weights.items() if k != "conv_in.bias"}, path)
    return sample_base(c, base), ["unet/", str(base), "lack 1 of the tensors", "conv_in.bias"], [base], \
        absent(c.tmp / "o.png")


@case("base-unet-config-of-a-foreign-class")
def _(c):
    base = base_copy(c)
    config = json.loads((base / "unet" / "config.json").read_text())
    (base / "unet" / "config.json").write_text(json.dumps({**config, "_class_name": "ControlNetModel"}))
    return sample_base(c, base), ["unet/config.json", "'ControlNetModel'", "UNet2DConditionModel"], [base], \
        absent(c.tmp / "o.png")


for name, weights in [("its-weights", "real"), ("none-of-the-weights", "empty")]:
    def make(c, weights=weights):
        from safetensors.torch import load_file

        base = base_copy(c)
        encoder = base / "text_encoder"
        tensors = load_file(encoder / "model.safetensors") if weights == "real" else {"x": torch.zeros(1)}
        (encoder / "model.safetensors").unlink()
        torch.save(tensors, encoder / "pytorch_model.bin")
        return sample_base(c, base), ["text_encoder", "pytorch_model.bin", "pickled", "safetensors"], [base], \
            absent(c.tmp / "o.png")

    case(f"base-text-encoder-only-a-pickle-holding-{name}")(make)


@case("data-nul-byte-in-a-path")
def _(c):
    data = copy_data(c)
    write_manifest(data, [pair(0), {**pair(1), "target": "target/1.png\u0000.txt"}, pair(2), pair(3)])
    return train_args(c, c.tmp / "out", data=data), ["prompt.json, line 2", "NUL byte", "'target'"], [data], \
        absent(c.tmp / "out" / "cache")


for value in ("nan", "inf"):
    def make(c, value=value):
        folder = c.tmp / "module"
        module = LiteControlNetModel.from_pretrained(c.w.run / "final")
        with torch.no_grad():
            next(module.parameters()).view(-1)[0] = float(value)
        module.save_pretrained(folder)
        return sample_args(c, control=folder), ["NaN or infinite", str(folder), "earlier checkpoint"], [folder], \
            absent(c.tmp / "out.png")

    case(f"control-model-with-{value}-weights", code=1)(make)


def nested(depth):
    return "[" * depth + "]" * depth


for suffix, write in [
    ("json", lambda c, extra: json.dumps({"data": str(c.w.data), "output": str(c.tmp / "o")})[:-1] + f", {extra}}}"),
    ("yaml", lambda c, extra: f"data: {c.w.data}\noutput: {c.tmp / 'o'}\n{extra}\n"),
]:
    key = (lambda name: f'"{name}": ') if suffix == "json" else (lambda name: f"{name}: ")
    for what, extra, texts in [
        ("nested-100000-deep", key("control_options") + "{" + key("a") + nested(100_000) + "}",
         ["control_options", "nested more than"]),
        ("with-a-5000-digit-number", key("seed") + "7" * 5000, ["'seed'", "5000 digits"]),
        ("giving-a-setting-twice", key("epochs") + "1" + (", " if suffix == "json" else "\n") + key("epochs") + "2",
         ["'epochs'", "given twice"]),
    ]:
        def make(c, suffix=suffix, write=write, extra=extra, texts=texts):
            (c.tmp / f"run.{suffix}").write_text(write(c, extra))
            return ["train", "--config", c.tmp / f"run.{suffix}"], [f"run.{suffix}", *texts], [], absent(c.tmp / "o")

        case(f"config-{suffix}-{what}")(make)


@case("config-yaml-alias-bomb-in-control-options")
def _(c):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    (c.tmp / "run.yaml").write_text(f"data: {c.w.data}\noutput: {c.tmp / 'o'}\n" + "\n".join(bomb) +
                                    "\ncontrol_options: {level_channels: *h}\n")
    return ["train", "--config", c.tmp / "run.yaml"], ["run.yaml", "control_options", "more than 10000 values"], [], \
        absent(c.tmp / "o")


@case("config-file-over-a-megabyte")
def _(c):
    (c.tmp / "run.json").write_text(json.dumps({"data": str(c.w.data), "output": str(c.tmp / "o"),
                                                "manifest": "x" * 2**21}))
    return ["train", "--config", c.tmp / "run.json"], ["run.json", "at most 1 MB"], [], absent(c.tmp / "o")


@case("config-file-is-a-fifo")
def _(c):
    os.mkfifo(c.tmp / "run.json")
    return ["train", "--config", c.tmp / "run.json"], ["run.json", "not a regular file"]


for what, flag, texts in [
    ("nested-100000-deep", '{"a": ' + nested(100_000) + "}", ["--control-options", "nested more than"]),
    ("with-a-5000-digit-number", '{"level_channels": ' + "7" * 5000 + "}", ["--control-options", "5000 digits"]),
    ("giving-a-setting-twice", '{"level_channels": 8, "level_channels": 16}', ["--control-options", "given twice"]),
]:
    def make(c, flag=flag, texts=texts):
        return train_args(c, c.tmp / "out", "--control-options", flag), texts, [], absent(c.tmp / "out")

    case(f"flag-control-options-{what}")(make)


for special in ("fifo", "symlink-to-dev-zero"):
    def make(c, special=special):
        data = copy_data(c)
        target = data / "target" / "5.png"
        target.unlink()
        os.mkfifo(target) if special == "fifo" else os.symlink("/dev/zero", target)
        return train_args(c, c.tmp / "out", data=data), ["line 6", "target/5.png", "not a regular file"], [data]

    case(f"data-target-is-a-{special}")(make)

    def make(c, special=special):
        image = c.tmp / "control.png"
        os.mkfifo(image) if special == "fifo" else os.symlink("/dev/zero", image)
        return [*sample_args(c, control=c.w.run / "final"), "--image", image], \
            ["control image", "control.png", "not a regular file"], [], absent(c.tmp / "out.png")

    case(f"sample-image-is-a-{special}")(make)


@case("sample-control-model-without-image")
def _(c):
    no_sampling(c)
    argv = [a for a in sample_args(c, control=c.w.run / "final") if a not in ("--image", c.w.image)]
    return argv, ["--control-model", "needs --image"], [], absent(c.tmp / "out.png")


@case("sample-control-image-far-larger-than-the-base-makes")
def _(c):
    no_sampling(c)
    PIL.Image.new("RGB", (1024, 1024)).save(c.tmp / "big.png")
    return [*sample_args(c, control=c.w.run / "final"), "--image", c.tmp / "big.png"], \
        ["big.png is 1024x1024", "--height and --width", "--height 1024 --width 1024"], [], absent(c.tmp / "out.png")


# a trained module to start from (--init-from), and the Hub (push, train --push-to-hub)


def flipped_final(c):
    run = copy_run(c)
    weights = run / "final" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    return run


@case("init-from-missing-folder")
def _(c):
    return train_args(c, c.tmp / "out", "--init-from", c.tmp / "nope"), ["--init-from", "nope", "does not exist"], \
        [], absent(c.tmp / "out" / "checkpoints")


@case("init-from-of-another-kind")
def _(c):
    return train_args(c, c.tmp / "out", "--init-from", c.w.run / "final", "--control-kind", "lite-static"), \
        ["holds a lite module but --control-kind is lite-static", "--control-kind lite"]


@case("init-from-for-another-base")
def _(c):
    folder = c.tmp / "module"
    LiteControlNetModel(residual_channels=(8, 8), residual_levels=(0, 1), mid_channels=8, level_kernel_size=1,
                        feedback=False).save_pretrained(folder)
    return train_args(c, c.tmp / "out", "--init-from", folder, "--control-kind", "lite-static"), \
        ["--init-from", "does not fit --base", "channels [8, 8]"], [folder], absent(c.tmp / "out" / "cache")


@case("init-from-with-other-control-options")
def _(c):
    return train_args(c, c.tmp / "out", "--init-from", c.w.run / "final", "--control-options",
                      '{"level_channels": 32}'), ["does not fit the module this run builds", "level_channels"], [], \
        absent(c.tmp / "out" / "cache")  # refused before the latent cache is built


@case("init-from-a-damaged-module")
def _(c):
    run = flipped_final(c)
    return train_args(c, c.tmp / "out", "--init-from", run / "final"), ["final", "does not match its manifest"], [run]


@case("init-from-a-hub-id-offline")
def _(c):
    return train_args(c, c.tmp / "out", "--init-from", "someone/fill50k-lite"), \
        ["--init-from someone/fill50k-lite", "offline", "--local-dir"]


@case("resume-with-another-init-from")
def _(c):
    run = copy_run(c)
    return train_args(c, run, "--max-steps", "3", "--init-from", c.w.run / "final"), \
        ["belongs to another run", "--init-from: None ->"], [run]


def push_args(c, model=None, *extra):
    return ["push", "--model", model or c.w.run / "final", "--repo-id", "someone/fill50k-lite", *extra]


def hub_online_without_login(c):
    import huggingface_hub

    def no_request(*args, **kwargs):
        raise AssertionError("a request reached the Hub")

    c.mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    c.mp.setattr(huggingface_hub, "get_token", lambda: None)
    c.mp.setattr(huggingface_hub.HfApi, "create_repo", no_request)
    c.mp.setattr(huggingface_hub.HfApi, "upload_folder", no_request)


@case("push-model-not-a-module-folder")
def _(c):
    (c.tmp / "empty").mkdir()
    return push_args(c, c.tmp / "empty"), ["empty", "no config.json and no diffusion_pytorch_model.safetensors"]


@case("push-model-damaged")
def _(c):
    run = flipped_final(c)
    return push_args(c, run / "final"), ["final", "does not match its manifest"], [run]


@case("push-repo-id-malformed")
def _(c):
    return [*push_args(c)[:-1], "someone/fill50k/lite"], ["--repo-id 'someone/fill50k/lite'", "USER/NAME"]


@case("push-offline")
def _(c):
    return push_args(c), ["someone/fill50k-lite", "offline", "HF_HUB_OFFLINE"]


@case("push-not-logged-in")
def _(c):
    hub_online_without_login(c)
    return push_args(c), ["not logged in", "hf auth login", "--token"]


@case("push-token-refused")
def _(c):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    def refuse(*args, **kwargs):  # what the Hub answers a token that is wrong or expired
        response = SimpleNamespace(status_code=401, headers={}, request=None)
        raise HfHubHTTPError("401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create",
                             response=response)

    c.mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    c.mp.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    return push_args(c, None, "--token", "hf_expired"), ["someone/fill50k-lite", "refused the token (401)",
                                                         "hf auth login"]


@case("train-push-to-hub-offline")
def _(c):
    return train_args(c, c.tmp / "out", "--push-to-hub"), ["offline", "HF_HUB_OFFLINE"], [], absent(c.tmp / "out")


@case("train-push-to-hub-not-logged-in")
def _(c):
    hub_online_without_login(c)
    return train_args(c, c.tmp / "out", "--push-to-hub"), ["not logged in", "--token"], [], absent(c.tmp / "out")


@case("train-hub-model-id-malformed")
def _(c):
    return train_args(c, c.tmp / "out", "--push-to-hub", "--hub-model-id", "my run!"), \
        ["--hub-model-id 'my run!'", "USER/NAME"], [], absent(c.tmp / "out")


@case("train-hub-model-id-without-push-to-hub")
def _(c):
    return train_args(c, c.tmp / "out", "--hub-model-id", "someone/x"), \
        ["--hub-model-id only apply with --push-to-hub"], [], absent(c.tmp / "out")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_in_one_line_and_changes_nothing(name, world, tmp_path, capsys, monkeypatch, request):
    make, code = CASES[name]
    c = SimpleNamespace(w=world, tmp=tmp_path, mp=monkeypatch, defer=request.addfinalizer)
    argv, culprits, *rest = make(c)
    watched = rest[0] if rest else []
    shared, own = snapshot(world.root, world.base), snapshot(*watched)
    got, err = run_cli(argv, capsys)
    assert_one_line(err, culprits)
    assert len(err) < 2000, f"{len(err)} characters: {err[:500]}"  # one short line, whatever the input's size
    assert got == code, err[-2000:]
    assert snapshot(world.root, world.base) == shared  # the shared data, run and base
    assert unchanged(own, snapshot(*watched))  # checkpoints, final/, loss log, data of the case
    if len(rest) > 1:
        rest[1]()


CACHE_DAMAGE = {
    "latents cut short": ("latents.npy", lambda f: os.truncate(f, 200)),
    "done-flags garbage": ("latents_done.npy", lambda f: f.write_bytes(b"garbage, not numpy")),
    "text embeddings empty": ("text.npy", lambda f: f.write_bytes(b"")),
    "prompt list missing an entry": ("prompts.json", lambda f: f.write_text(json.dumps(json.loads(f.read_text())[:-1]))),
    "target stamps garbage": ("targets.json", lambda f: f.write_text("{not json")),
}


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_a_damaged_latent_cache_is_named_and_built_again(damage, world, tmp_path, capsys):
    run = Path(shutil.copytree(world.run, tmp_path / "run"))
    name, spoil = CACHE_DAMAGE[damage]
    (cache,) = (run / "cache").iterdir()
    intact = {f.name: f.read_bytes() for f in cache.iterdir() if f.name != "info.json"}
    spoil(cache / name)
    log = {k: v for k, v in snapshot(run).items() if k.endswith("loss.csv")}
    code, err = run_cli(train_cli_args(world, run, "--max-steps", "3"), capsys)
    assert code == 0 and "Traceback" not in err and "allow_pickle" not in err, err[-3000:]
    warnings = [line for line in err.splitlines() if "warning:" in line and "latent cache" in line]
    assert len(warnings) == 1 and str(cache / name) in warnings[0] and "building it again" in warnings[0], err[-3000:]
    # encoded again as it was (the encoders are deterministic), and the run went on from step 2
    assert {f.name: f.read_bytes() for f in cache.iterdir() if f.name in intact} == intact
    assert (run / "checkpoints" / "step-00000003").is_dir() and not (run / "checkpoints" / "step-00000004").exists()
    assert log and unchanged(log, snapshot(run))  # the loss log kept its rows: resumed, not restarted


def train_cli_args(world, output, *extra):
    return ["train", "--base", world.base, "--data", world.data, "--output", output, *SMALL_FLAGS, *extra]


def test_a_tilde_in_a_path_setting_means_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps({"data": "~/data", "output": "~/runs/a", "cache_dir": "~/cache"}))
    cfg = TrainConfig.from_file(tmp_path / "run.json")
    assert (cfg.data, cfg.output, cfg.cache_dir) == (str(tmp_path / "data"), str(tmp_path / "runs" / "a"),
                                                     str(tmp_path / "cache"))


def test_exif_orientation_is_applied_as_viewers_show_the_image(world, tmp_path):
    from lite_controlnet.data.paired import PairedDataset

    data = Path(shutil.copytree(world.data, tmp_path / "data"))
    source = PIL.Image.new("RGB", (32, 16), (255, 0, 0))
    source.paste((0, 0, 255), (0, 0, 8, 16))  # blue on the left
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    source.save(data / "source" / "0.jpg", exif=exif, quality=100)
    source.save(data / "target" / "0.jpg", exif=exif, quality=100)
    write_manifest(data, [{"source": "source/0.jpg", "target": "target/0.jpg", "prompt": "p"}])
    image = PairedDataset(data, resolution=None)[0]["conditioning_pixel_values"]
    assert image.shape == (3, 32, 16)  # upright: 16 wide, 32 high
    assert image[2, 2, 8] > 0.9 and image[0, -2, 8] > 0.9  # blue at the top, red at the bottom


def test_debug_shows_the_traceback(world, tmp_path, capsys):
    with pytest.raises(ValueError, match="learning_rate=inf"):
        cli.main(["train", "--data", str(world.data), "--output", str(tmp_path / "o"), "--learning-rate", "inf",
                  "--debug"])


def test_a_bug_keeps_its_traceback(world, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise TypeError("a bug, not a bad input")

    monkeypatch.setattr(LiteControlNetPipeline, "__call__", bug)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["sample", "--base", str(world.base), "--prompt", "p", "--steps", "1",
                  "--out", str(tmp_path / "o.png")])


@pytest.mark.parametrize("damage", ["empty-list manifest", "manifest without files", "state that needs unpickling",
                                   "weights cut short"])
def test_a_damaged_newest_checkpoint_of_any_kind_falls_back(damage, world, tmp_path, capsys):
    run = Path(shutil.copytree(world.run, tmp_path / "run"))
    shutil.rmtree(run / "final")
    newest = run / "checkpoints" / "step-00000002"
    if damage == "empty-list manifest":
        (newest / "MANIFEST.json").write_text("[]")
    elif damage == "manifest without files":
        (newest / "MANIFEST.json").write_text(json.dumps({"step": 2}))
    elif damage == "state that needs unpickling":
        torch.save({"global_step": 2, "payload": Payload()}, newest / "state.pt")
        rewrite_manifest_entry(newest, "state.pt")
    else:
        weights = newest / "control" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    code, err = run_cli(["train", "--base", world.base, "--data", world.data, "--output", run, *SMALL_FLAGS,
                         "--max-steps", "2", "--checkpoint-every", "1"], capsys)
    assert code == 0, err[-3000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning: Skipping checkpoint")]
    assert len(warnings) == 1 and "step-00000002" in warnings[0] and "Traceback" not in err
    # resumed from step 1: the same weights as the run never damaged
    from safetensors.torch import load_file

    a, b = (load_file(r / "final" / "diffusion_pytorch_model.safetensors") for r in (world.run, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
