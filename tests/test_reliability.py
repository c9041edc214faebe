"""Nothing lost, nothing mixed: full disks, kills while publishing, racing trainers, stale caches.

The disk-full tests run twice: on a real 3 MB tmpfs where the machine allows mounting one (root),
and everywhere with the full disk simulated.
"""

import errno
import json
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from conftest import randomize_, rewrite_manifest_entry
from lite_controlnet import LiteControlNetModel, cli
from lite_controlnet.training.checkpoint import latest_control, list_checkpoints
from lite_controlnet.training.lock import RunLock, RunLockedError
from lite_controlnet.training.config import TrainConfig
from lite_controlnet.training.trainer import train

SMALL = dict(resolution=32, batch_size=2, num_workers=0, num_validation=1, validation_steps=1)
SMALL_FLAGS = ["--resolution", "32", "--batch-size", "2", "--num-workers", "0", "--num-validation", "1",
               "--validation-steps", "1"]


def train_cli(world, output, *extra, data=None):
    return ["train", "--base", str(world.base), "--data", str(data or world.data), "--output", str(output),
            *SMALL_FLAGS, *map(str, extra)]


def run_cli(argv, capsys):
    capsys.readouterr()
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err[-3000:]
    assert sum("error:" in line for line in lines) == 1, err[-3000:]
    return lines[-1]


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# -- 1. a full disk: while the latent cache is built, and while a checkpoint is written ---------


@pytest.fixture
def small_disk(tmp_path):
    """mount(megabytes): a tmpfs of that size (3 MB as in the issue; needs root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(megabytes=3):
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(disk)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def size_of(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def fill(disk, leave):
    """Fill `disk` until `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * (free - leave))


def run_subprocess(argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lite_controlnet", *argv], env=env, capture_output=True, text=True,
                          timeout=300)


def test_full_disk_while_the_cache_is_built_is_one_line_not_sigbus(world, small_disk, tmp_path):
    disk = small_disk(3)
    # 8 latents at 256 px take 64 KB; the text embeddings (44 KB) still fit
    fill(disk, 80 * 1024)
    result = run_subprocess(train_cli(world, tmp_path / "out", "--resolution", "256", "--max-steps", "1",
                                      "--cache-dir", disk / "cache"))
    assert result.returncode == 1, f"exit {result.returncode} (135 / -7: SIGBUS)\n{result.stderr[-2000:]}"
    line = error_line(result.stderr)
    assert "No space left" in line and "latent cache" in line and "needs" in line
    assert not list(disk.rglob("latents.npy"))  # no sparse file left for a later run to write into


def test_full_disk_while_a_checkpoint_is_written_keeps_the_earlier_ones(world, small_disk):
    # a disk that holds the run, and then half a checkpoint more (the run's own files take KBs)
    checkpoint = size_of(world.run / "checkpoints" / "step-00000002")
    disk = small_disk(max(3, math.ceil((size_of(world.run) + 2 * checkpoint) / 2**20)))
    run = Path(shutil.copytree(world.run, disk / "run", ignore=shutil.ignore_patterns("cache")))
    before = files(run)
    fill(disk, max(checkpoint // 2, 100 * 1024))
    result = run_subprocess(train_cli(world, run, "--max-steps", "3", "--cache-dir", world.run / "cache"))
    assert result.returncode == 1, result.stderr[-2000:]
    line = error_line(result.stderr)
    assert "No space left" in line and "checkpoint step-00000003" in line and "needs" in line and len(line) < 400
    after = files(run)
    for name, data in before.items():
        if name.startswith(("checkpoints/", "final/")):
            assert after.get(name) == data, name
    assert not list((run / "checkpoints").glob(".tmp-*"))  # a retry would leave one more each time


def test_a_failed_allocation_leaves_no_sparse_cache_file(world, tmp_path, capsys, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    code, err = run_cli(train_cli(world, tmp_path / "out", "--max-steps", "1"), capsys)
    line = error_line(err)
    assert code == 1 and "No space left" in line and "latent cache" in line
    assert not list((tmp_path / "out").rglob("latents.npy"))


def test_a_full_disk_at_checkpoint_time_is_one_line_and_leaves_no_staging(world, tmp_path, capsys, monkeypatch):
    run = Path(shutil.copytree(world.run, tmp_path / "run"))
    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=10_000)
                        if str(path).startswith(str(run / "checkpoints")) else usage(path))
    code, err = run_cli(train_cli(world, run, "--max-steps", "3"), capsys)
    line = error_line(err)
    assert code == 1 and "needs" in line and "KB free" in line
    assert [c.step for c in list_checkpoints(run)] == [2, 1]
    assert not list((run / "checkpoints").glob(".tmp-*"))


# -- 3. the latent cache is keyed on the content it encodes ---------------------------------------


def test_changed_target_images_are_encoded_again(world, tmp_path, monkeypatch):
    data = Path(shutil.copytree(world.data, tmp_path / "data"))
    cache = tmp_path / "cache"
    cfg = dict(base=str(world.base), output=str(tmp_path / "a"), cache_dir=str(cache), max_steps=1, **SMALL)
    train(TrainConfig(data=str(data), **cfg), progress=False)
    (latents_file,) = cache.rglob("latents.npy")
    before = np.load(latents_file).copy()
    # a new image under the same name, the manifest unchanged
    PIL.Image.new("RGB", (32, 32), (0, 255, 0)).save(data / "target" / "5.png")
    from diffusers import AutoencoderKL

    encoded = []
    original = AutoencoderKL.encode
    monkeypatch.setattr(AutoencoderKL, "encode",
                        lambda self, x, *a, **k: encoded.append(len(x)) or original(self, x, *a, **k))
    train(TrainConfig(data=str(data), **{**cfg, "output": str(tmp_path / "b")}), progress=False)
    after = np.load(latents_file)
    assert encoded == [1]  # the changed image alone
    assert not np.array_equal(before[5], after[5])
    assert np.array_equal(np.delete(before, 5, axis=0), np.delete(after, 5, axis=0))


# -- 4. the run lock: one holder, however many start at once ---------------------------------------


def _contend(folder, slow, start, done, results):
    if slow:  # a slow disk between reading the lock and writing it: where a race would show
        read = RunLock._read
        RunLock._read = lambda self: (read(self), time.sleep(0.05))[0]
    start.wait()
    try:
        lock = RunLock(folder).acquire()
        results.put("held")
    except RunLockedError:
        lock = None
        results.put("refused")
    done.wait()  # hold it until every other process has tried
    if lock:
        lock.release()


@pytest.mark.parametrize("stale", [False, True], ids=["free lock", "stale lock"])
def test_concurrent_acquirers_get_the_lock_once(tmp_path, stale):
    context = multiprocessing.get_context("fork")
    n = 8
    for trial in range(3):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        if stale:  # left by a process that is gone
            gone = subprocess.Popen([sys.executable, "-c", "pass"])
            gone.wait()
            (folder / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid,
                                                      "heartbeat": time.time()}))
        start, done, results = context.Barrier(n), context.Barrier(n), context.Queue()
        workers = [context.Process(target=_contend, args=(folder, True, start, done, results)) for _ in range(n)]
        for worker in workers:
            worker.start()
        outcomes = sorted(results.get(timeout=60) for _ in range(n))
        for worker in workers:
            worker.join(timeout=60)
        assert outcomes.count("held") == 1, (trial, outcomes)


def test_the_lock_works_where_hard_links_do_not(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # as on some network mounts
    lock = RunLock(tmp_path).acquire()
    try:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            lock.release()
            held = {"host": socket.gethostname(), "pid": holder.pid, "heartbeat": time.time()}
            lock.path.write_text(json.dumps(held))
            with pytest.raises(RunLockedError, match="in use"):
                RunLock(tmp_path).acquire()
        finally:
            holder.kill()
            holder.wait()
    finally:
        lock.release()


def test_a_filesystem_that_reports_no_size_is_not_judged_full(world, tmp_path, monkeypatch):
    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(total=0, used=0, free=0))
    train(TrainConfig(data=str(world.data), output=str(tmp_path / "run"), base=str(world.base), max_steps=1, **SMALL),
          progress=False)
    assert latest_control(tmp_path / "run") == tmp_path / "run" / "final"


# -- 5. final/ is published whole, and checked -----------------------------------------------------


def test_a_kill_while_final_is_written_leaves_no_half_final(world, tmp_path, monkeypatch):
    original = LiteControlNetModel.save_pretrained
    calls = []

    def killed_on_the_final(self, folder, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 3:  # checkpoints of steps 1 and 2, then final/
            self.save_config(folder)  # config.json is written first ...
            raise KeyboardInterrupt  # ... and the runtime dies before the weights
        return original(self, folder, *args, **kwargs)

    monkeypatch.setattr(LiteControlNetModel, "save_pretrained", killed_on_the_final)
    cfg = TrainConfig(data=str(world.data), output=str(tmp_path / "run"), base=str(world.base), max_steps=2,
                      checkpoint_every=1, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert len(calls) == 3
    # notebook 04 samples what latest_control() names: the newest checkpoint, not a half final/
    assert latest_control(tmp_path / "run") == list_checkpoints(tmp_path / "run")[0].path / "control"
    monkeypatch.setattr(LiteControlNetModel, "save_pretrained", original)
    train(cfg, progress=False)  # the same command again publishes final/
    assert latest_control(tmp_path / "run") == tmp_path / "run" / "final"
    assert (tmp_path / "run" / "final" / "MANIFEST.json").is_file()


def test_latest_control_skips_a_final_that_holds_only_config(world, tmp_path):
    run = Path(shutil.copytree(world.run, tmp_path / "run"))
    for name in ("diffusion_pytorch_model.safetensors", "MANIFEST.json"):
        (run / "final" / name).unlink(missing_ok=True)
    assert latest_control(run) == run / "checkpoints" / "step-00000002" / "control"


def test_latest_control_skips_a_final_with_flipped_bytes(world, tmp_path):
    run = Path(shutil.copytree(world.run, tmp_path / "run"))
    weights = run / "final" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="does not match its manifest"):
        assert latest_control(run) == run / "checkpoints" / "step-00000002" / "control"


# -- 6. a per-sample strength keeps the module's dtype ---------------------------------------------


def test_a_per_sample_scale_tensor_keeps_the_module_dtype():
    module = randomize_(LiteControlNetModel(residual_channels=(8, 8), residual_levels=(0, 1), mid_channels=8,
                                            vae_scale_factor=2, level_kernel_size=1, feedback=False)).to(torch.float16)
    scale = torch.tensor([1.0, 0.5]).view(2, 1, 1, 1)  # float32, one per sample
    down, mid = module(torch.rand(2, 3, 8, 8, dtype=torch.float16), conditioning_scale=scale, return_dict=False)
    assert all(r.dtype == torch.float16 for r in (*down, mid))  # what an fp16 UNet accepts
    full, _ = module(torch.ones(2, 3, 8, 8, dtype=torch.float16), return_dict=False)
    for scale in (scale, scale.flatten()):  # (B, 1, 1, 1) or (B,)
        half, _ = module(torch.ones(2, 3, 8, 8, dtype=torch.float16), conditioning_scale=scale, return_dict=False)
        torch.testing.assert_close(half[0][1], full[0][1] * 0.5)  # each sample scaled by its own strength
        torch.testing.assert_close(half[0][0], full[0][0])


# -- 7. the flags that messages suggest exist, and work --------------------------------------------


def test_the_flags_that_data_errors_suggest_exist_and_work(world, tmp_path, capsys):
    data = Path(shutil.copytree(world.data, tmp_path / "data"))
    PIL.Image.open(data / "source" / "0.png").convert("L").save(data / "source" / "0.png")
    (data / "metadata.jsonl").write_text("")
    code, err = run_cli(train_cli(world, tmp_path / "out", "--max-steps", "1", data=data), capsys)
    assert code == 2 and "--manifest prompt.json" in error_line(err)
    code, err = run_cli(train_cli(world, tmp_path / "out", "--max-steps", "1", "--manifest", "prompt.json", data=data),
                        capsys)
    assert code == 2 and "--convert-mode true" in error_line(err)
    code, err = run_cli(train_cli(world, tmp_path / "out", "--max-steps", "1", "--manifest", "prompt.json",
                                  "--convert-mode", "true", data=data), capsys)
    assert code == 0, err[-3000:]


# -- 9. what a killed writer left in the temp folder is removed at the next start -------------------


def test_staging_folders_of_killed_writers_are_removed_at_the_next_start(world, tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_local = temp / f"lite-controlnet-ckpt-{gone.pid}-abc123"
        live_local = temp / f"lite-controlnet-ckpt-{alive.pid}-def456"
        old_style = temp / "lite-controlnet-ckpt-xyz789"  # written before names carried a pid
        for folder in (dead_local, live_local, old_style):
            (folder / "control").mkdir(parents=True)
            (folder / "state.pt").write_bytes(b"\0" * 1000)
        an_hour_ago = time.time() - 2 * 3600
        os.utime(old_style, (an_hour_ago, an_hour_ago))
        run = Path(shutil.copytree(world.run, tmp_path / "run"))
        dead_copy = run / "checkpoints" / f".tmp-step-00000003-{gone.pid}"
        dead_copy.mkdir()
        train(TrainConfig(data=str(world.data), output=str(run), base=str(world.base), max_steps=2, **SMALL),
              progress=False)
        assert not dead_local.exists() and not old_style.exists() and not dead_copy.exists()
        assert live_local.exists()  # a writer that is still running keeps its folder
    finally:
        alive.kill()
        alive.wait()


# -- 10. a checkpoint's content is checked, not only its hashes ------------------------------------


def rewrite_state(checkpoint, change):
    """Change a checkpoint's state.pt with `change(state)` and re-hash it: only the content is bad."""
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    change(state)
    torch.save(state, checkpoint / "state.pt")
    rewrite_manifest_entry(checkpoint, "state.pt")


def weights_of_another_shape(checkpoint):
    from safetensors.torch import load_file, save_file

    path = checkpoint / "control" / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    name = next(iter(weights))
    save_file({**weights, name: torch.zeros(3, 5)}, path)
    rewrite_manifest_entry(checkpoint, "control/diffusion_pytorch_model.safetensors")


MALFORMED = {
    "plan-as-empty-list": lambda c: rewrite_state(c, lambda s: s.update(plan=[])),
    "plan-field-of-another-type": lambda c: rewrite_state(c, lambda s: s["plan"].update(micro_batch="2")),
    "counter-as-text": lambda c: rewrite_state(c, lambda s: s.update(epoch="0")),
    "optimizer-as-list": lambda c: rewrite_state(c, lambda s: s.update(optimizer=[])),
    "run-identity-as-text": lambda c: rewrite_state(c, lambda s: s.update(run="x")),
    "weights-of-another-shape": weights_of_another_shape,
    "optimizer-moment-of-another-shape": lambda c: rewrite_state(
        c, lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3, 5))),
}


@pytest.mark.parametrize("damage", list(MALFORMED))
def test_a_checkpoint_with_matching_hashes_but_malformed_content_falls_back(damage, world, tmp_path, capsys):
    run = Path(shutil.copytree(world.run, tmp_path / "run", ignore=shutil.ignore_patterns("cache")))
    shutil.rmtree(run / "final")
    MALFORMED[damage](run / "checkpoints" / "step-00000002")
    previous = files(run / "checkpoints" / "step-00000001")
    code, err = run_cli(train_cli(world, run, "--max-steps", "2", "--checkpoint-every", "1",
                                  "--cache-dir", world.run / "cache"), capsys)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    skipped = [line for line in err.splitlines() if line.startswith("warning: Skipping")]
    assert len(skipped) == 1 and "step-00000002" in skipped[0], err[-3000:]
    assert files(run / "checkpoints" / "step-00000001") == previous
    # resumed from step 1: the same weights as the run never damaged
    a, b = (load_file(r / "final" / "diffusion_pytorch_model.safetensors") for r in (world.run, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def as_the_layout_before_format_numbers(checkpoint):
    """The checkpoint as written before state.pt carried a format: its entries in files beside it."""
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    for name, key in (("train_config.json", "config"), ("plan.json", "plan"), ("run.json", "run")):
        (checkpoint / name).write_text(json.dumps(state.pop(key)))
        rewrite_manifest_entry(checkpoint, name)
    del state["format"]
    torch.save(state, checkpoint / "state.pt")
    rewrite_manifest_entry(checkpoint, "state.pt")


@pytest.mark.parametrize("layout", ["format-2", "layout-before-format-numbers"])
@pytest.mark.parametrize("named", [False, True], ids=["auto", "--resume FOLDER"])
def test_a_checkpoint_of_another_format_is_refused_in_one_line(layout, named, world, tmp_path, capsys):
    run = Path(shutil.copytree(world.run, tmp_path / "run", ignore=shutil.ignore_patterns("cache")))
    newest = run / "checkpoints" / "step-00000002"
    if layout == "format-2":
        rewrite_state(newest, lambda s: s.update(format=2))
    else:
        as_the_layout_before_format_numbers(newest)
    before = files(run)
    extra = ["--resume", newest] if named else []
    code, err = run_cli(train_cli(world, run, "--max-steps", "3", "--cache-dir", world.run / "cache", *extra), capsys)
    line = error_line(err)
    assert code == 2 and str(newest) in line and "format 1" in line, err[-3000:]
    assert ("format 2" if layout == "format-2" else "layout before format numbers") in line
    assert "--output" in line and f"--control-model {newest / 'control'}" in line  # what to do instead
    assert "warning: Skipping" not in err
    after = files(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the run changed


def test_a_named_checkpoint_with_malformed_content_is_one_line(world, tmp_path, capsys):
    run = Path(shutil.copytree(world.run, tmp_path / "run", ignore=shutil.ignore_patterns("cache")))
    newest = run / "checkpoints" / "step-00000002"
    MALFORMED["plan-as-empty-list"](newest)
    before = files(run)
    code, err = run_cli(train_cli(world, run, "--max-steps", "3", "--resume", newest), capsys)
    line = error_line(err)
    assert code == 2 and "step-00000002" in line and "plan is not a hardware plan" in line
    assert files(run) == before
