import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lite_controlnet.training.checkpoint import list_checkpoints, read_checkpoint
from lite_controlnet.training.config import TrainConfig
from lite_controlnet.data.fill50k import make_fill50k
from lite_controlnet.training.grids import COLUMNS
from conftest import with_scheduler_config
from lite_controlnet.training import trainer as trainer_module
from lite_controlnet.training.lock import RunLock, RunLockedError
from lite_controlnet.training.trainer import Trainer, draw_timesteps, loss_target, train

QUICK = dict(resolution=64, epochs=2, batch_size=4, num_workers=0, num_validation=1, validation_steps=1)


@pytest.fixture(scope="module")
def fill50k_small(tmp_path_factory):
    return make_fill50k(tmp_path_factory.mktemp("fill50k"), num=32, size=64, progress=False)


def config(tiny_base_dir, data, output, **overrides):
    return TrainConfig(**{"base": str(tiny_base_dir), "data": str(data), "output": str(output), **QUICK, **overrides})


def final_weights(output):
    return load_file(Path(output) / "final" / "diffusion_pytorch_model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def cli(tiny_base_dir, data, output, *extra):
    args = [sys.executable, "-m", "lite_controlnet", "train", "--base", str(tiny_base_dir), "--data", str(data),
            "--output", str(output), "--resolution", "64", "--epochs", "2", "--num-workers", "0",
            "--num-validation", "1", "--validation-steps", "1", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return args, env


def rows(output):
    path = Path(output) / "logs" / "loss.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


# `python -c KILLED_AT train ...`: the CLI, killed with SIGKILL (as by a Colab disconnect) as it
# begins optimizer step $KILL_AT_STEP (0-based), whatever the machine's speed.
KILLED_AT = """
import os, signal, sys
from lite_controlnet import cli
from lite_controlnet.training import trainer

original = trainer.Trainer._optimizer_step

def optimizer_step(self, step, *args, **kwargs):
    if step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, step, *args, **kwargs)

trainer.Trainer._optimizer_step = optimizer_step
cli.main(sys.argv[1:])
"""


def test_killed_run_resumes_to_identical_weights(tiny_base_dir, fill50k_small, tmp_path):
    # The reference: never interrupted.
    args, env = cli(tiny_base_dir, fill50k_small, tmp_path / "ref", "--checkpoint-every", "3")
    subprocess.run(args, env=env, check=True, capture_output=True)
    # The same command, killed in step 8 of 16: 7 steps logged, the last checkpoint at step 6.
    cut = tmp_path / "cut"
    args, env = cli(tiny_base_dir, fill50k_small, cut, "--checkpoint-every", "3")
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, *args[3:]], env={**env, "KILL_AT_STEP": "7"},
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert rows(cut) == 7 and [c.step for c in list_checkpoints(cut)] == [6, 3] and not (cut / "final").exists()
    # Started again: from step 6, step 7 redone, to the reference's weights bit for bit.
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Resumed from {cut / 'checkpoints' / 'step-00000006'} at step 6" in result.stderr + result.stdout
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(cut))
    # the loss log holds each step once, as in the reference
    assert rows(cut) == rows(tmp_path / "ref") == 16


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tiny_base_dir, fill50k_small, tmp_path):
    train(config(tiny_base_dir, fill50k_small, tmp_path / "straight", max_steps=12), progress=False)
    train(config(tiny_base_dir, fill50k_small, tmp_path / "run", max_steps=8, checkpoint_every=4), progress=False)
    newest = list_checkpoints(tmp_path / "run")[0]
    assert newest.step == 8
    weights = newest.path / "control" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy cut short
    with pytest.warns(UserWarning, match="step-00000008"):
        train(config(tiny_base_dir, fill50k_small, tmp_path / "run", max_steps=12, checkpoint_every=4), progress=False)
    # resumed from step 4: nothing lost, and the result is the uninterrupted one
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "run"))


def test_resume_needs_no_random_state(tiny_base_dir, fill50k_small, tmp_path, monkeypatch):
    """Every draw comes from (seed, epoch) or (seed, step): what the global generators hold plays
    no part, so checkpoints do not save it."""
    train(config(tiny_base_dir, fill50k_small, tmp_path / "straight", max_steps=12), progress=False)
    original = Trainer._optimizer_step

    def scrambled(self, step, *args, **kwargs):  # as if a notebook drew from them between steps
        torch.manual_seed(1000 + step)
        np.random.seed(step)
        random.seed(step)
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_optimizer_step", scrambled)
    train(config(tiny_base_dir, fill50k_small, tmp_path / "scrambled", max_steps=12), progress=False)
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "scrambled"))


def test_unpublished_checkpoint_is_never_loaded(tiny_base_dir, fill50k_small, tmp_path):
    train(config(tiny_base_dir, fill50k_small, tmp_path, max_steps=4, checkpoint_every=2), progress=False)
    newest = list_checkpoints(tmp_path)[0]
    (newest.path / "MANIFEST.json").unlink()  # as if cut off before publishing
    assert [c.step for c in list_checkpoints(tmp_path)] == [2]
    assert read_checkpoint(list_checkpoints(tmp_path)[0]).state.global_step == 2


def test_checkpoints_keep_the_last_k_and_each_samples_alone(tiny_base_dir, fill50k_small, tmp_path):
    epochs = []
    final = train(config(tiny_base_dir, fill50k_small, tmp_path, checkpoint_every=2, keep_checkpoints=2),
                  on_epoch_end=epochs.append, progress=False)
    assert [c.step for c in list_checkpoints(tmp_path)] == [16, 14]
    from lite_controlnet import load_control

    module = load_control(list_checkpoints(tmp_path)[0].path / "control")
    assert_same_weights(module.state_dict(), final_weights(tmp_path))
    assert final == tmp_path / "final"
    # the epoch grids: before training, then one per epoch, handed to the callback and saved
    assert [e.epoch for e in epochs] == [0, 1, 2]
    assert all(e.grid_path.is_file() for e in epochs)
    grid = epochs[-1].grid
    assert grid.size[0] == len(COLUMNS) * 128  # 64 px tiles are shown at 128 px
    assert (tmp_path / "logs" / "loss.png").is_file()


def test_resume_with_other_settings_is_refused(tiny_base_dir, fill50k_small, tmp_path):
    train(config(tiny_base_dir, fill50k_small, tmp_path, max_steps=2), progress=False)
    with pytest.raises(ValueError, match="seed"):
        train(config(tiny_base_dir, fill50k_small, tmp_path, max_steps=4, seed=1), progress=False)


def test_out_of_memory_lowers_the_batch_and_carries_on(tiny_base_dir, fill50k_small, tmp_path, monkeypatch):
    original = Trainer._loss
    hits = []

    def flaky_loss(self, latents, *args):
        if len(latents) > 2:  # pretend a batch of 4 does not fit
            hits.append(len(latents))
            raise torch.OutOfMemoryError("simulated")
        return original(self, latents, *args)

    monkeypatch.setattr(Trainer, "_loss", flaky_loss)
    train(config(tiny_base_dir, fill50k_small, tmp_path / "oom", max_steps=4), progress=False)
    monkeypatch.setattr(Trainer, "_loss", original)
    assert hits == [4]  # failed once, then ran on at batch 2
    plan = torch.load(list_checkpoints(tmp_path / "oom")[0].path / "state.pt", weights_only=True)["plan"]
    assert (plan["micro_batch"], plan["accumulation"]) == (2, 2)
    assert "out-of-memory" in plan["reasons"]["micro_batch"]
    # same samples and noise as a run planned at batch 2 from the start
    train(config(tiny_base_dir, fill50k_small, tmp_path / "two", max_steps=4, micro_batch=2), progress=False)
    a, b = final_weights(tmp_path / "oom"), final_weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny_base_dir, fill50k_small, tmp_path, monkeypatch):
    original = Trainer._loss
    calls = []

    def nan_on_some_steps(self, *args):
        calls.append(1)
        loss = original(self, *args)
        return loss * float("nan") if len(calls) in (2, 3) else loss

    monkeypatch.setattr(Trainer, "_loss", nan_on_some_steps)
    train(config(tiny_base_dir, fill50k_small, tmp_path / "some", max_steps=5), progress=False)
    state = torch.load(list_checkpoints(tmp_path / "some")[0].path / "state.pt", weights_only=True)
    assert state["nonfinite_total"] == 2 and state["global_step"] == 5

    monkeypatch.setattr(Trainer, "_loss", lambda self, *args: original(self, *args) * float("nan"))
    with pytest.raises(RuntimeError, match="not finite for 3 steps"):
        train(config(tiny_base_dir, fill50k_small, tmp_path / "all", max_nonfinite=3), progress=False)


def test_lock_refuses_a_live_run_and_takes_over_a_dead_one(tmp_path):
    lock = RunLock(tmp_path).acquire()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        held = json.loads(lock.path.read_text())
        lock.path.write_text(json.dumps({**held, "pid": other.pid}))  # another live process holds it
        with pytest.raises(RunLockedError, match="in use by another training run"):
            RunLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()
    lock.release()
    lock.path.write_text(json.dumps({**held, "pid": other.pid}))
    with pytest.warns(UserWarning, match="stale lock"):
        RunLock(tmp_path).acquire().release()  # its process is gone: taken over
    # a lock from another machine counts until it has been silent for stale_after seconds
    lock.path.write_text(json.dumps({"host": "other-runtime", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(RunLockedError, match="expires in"):
        RunLock(tmp_path).acquire()
    lock.path.write_text(json.dumps({"host": "other-runtime", "pid": 1, "heartbeat": time.time() - 1000}))
    with pytest.warns(UserWarning, match="stale lock"):
        RunLock(tmp_path).acquire().release()
    # a heartbeat far in the future (a wrong clock) is judged by the file's time: silent long enough, it is stale
    lock.path.write_text(json.dumps({"host": "other-runtime", "pid": 1, "heartbeat": time.time() + 10**6}))
    with pytest.raises(RunLockedError, match="expires in"):
        RunLock(tmp_path).acquire()  # the file was just written
    os.utime(lock.path, (time.time() - 1000, time.time() - 1000))
    with pytest.warns(UserWarning, match="stale lock"):
        RunLock(tmp_path).acquire().release()


def test_cache_is_built_once_and_reused(tiny_base_dir, fill50k_small, tmp_path, monkeypatch):
    train(config(tiny_base_dir, fill50k_small, tmp_path / "a", max_steps=1, cache_dir=str(tmp_path / "cache")), progress=False)
    from diffusers import AutoencoderKL

    calls = []
    original = AutoencoderKL.encode
    monkeypatch.setattr(AutoencoderKL, "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    train(config(tiny_base_dir, fill50k_small, tmp_path / "b", max_steps=1, cache_dir=str(tmp_path / "cache")), progress=False)
    assert calls == []


def test_the_loss_target_follows_the_prediction_type():
    from diffusers import DDPMScheduler

    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])

    def target(kind):
        return loss_target(DDPMScheduler(prediction_type=kind), latents, noise, t)

    assert torch.equal(target("epsilon"), noise)
    assert torch.equal(target("sample"), latents)
    alpha = DDPMScheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(target("v_prediction"), alpha.sqrt() * noise - (1 - alpha).sqrt() * latents)
    with pytest.raises(ValueError, match=r"prediction_type='flow'; training supports 'epsilon', 'v_prediction', 'sample'"):
        target("flow")


def test_a_base_that_predicts_the_sample_trains_toward_the_clean_latents(tiny_base_dir, fill50k_small, tmp_path,
                                                                         monkeypatch):
    base = with_scheduler_config(tiny_base_dir, tmp_path / "base", prediction_type="sample")
    trainer = Trainer(config(base, fill50k_small, tmp_path / "run"), progress=False)
    trainer.setup()
    # a UNet that predicts zeros: the loss is then the mean square of the target
    monkeypatch.setattr(trainer_module, "controlled_unet", lambda unet, noisy, *args: torch.zeros_like(noisy))
    indices = [0, 1]
    latents = trainer.cache.latent_batch(indices).float()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    controls = torch.stack([trainer.dataset.control_image(i) for i in indices])
    loss = trainer._loss(latents, trainer.cache.text_batch(indices), controls, noise, torch.tensor([100, 700]))
    assert loss.item() == pytest.approx(latents.pow(2).mean().item(), rel=1e-5)
    assert abs(loss.item() - noise.pow(2).mean().item()) > 0.05  # not the noise's


def test_a_base_of_another_prediction_type_is_refused_before_the_cache_is_built(tiny_base_dir, fill50k_small,
                                                                                tmp_path):
    base = with_scheduler_config(tiny_base_dir, tmp_path / "base", prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="prediction_type='flow_prediction'; training supports 'epsilon'"):
        train(config(base, fill50k_small, tmp_path / "run", cache_dir=str(tmp_path / "cache")), progress=False)
    assert not (tmp_path / "cache").exists()


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match=r"control_kind='t2i' \(--control-kind\)"):
        TrainConfig(data="d", output="o", control_kind="t2i")
    with pytest.raises(ValueError, match="micro_batch=3.*divisor"):
        TrainConfig(data="d", output="o", micro_batch=3)
    with pytest.raises(ValueError, match="resolution=500"):
        TrainConfig(data="d", output="o", resolution=500)


def test_config_file_and_flags(tmp_path):
    from lite_controlnet.cli import build_parser
    from lite_controlnet.training.config import config_from_args

    (tmp_path / "run.json").write_text(json.dumps({"data": "d", "output": "o", "epochs": 3,
                                                   "control_kind": "controlnet"}))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "run.json"), "--epochs", "5"])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.control_kind, cfg.lr) == (5, "controlnet", 1e-5)
    for key in ("epoch", "control"):
        (tmp_path / "bad.json").write_text(json.dumps({"data": "d", "output": "o", key: 3}))
        with pytest.raises(ValueError, match=f"unknown setting.*'{key}'"):
            config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "bad.json")]))


def test_control_options_shape_the_module_from_flags_to_the_saved_model(tiny_base_dir, fill50k_small, tmp_path):
    from lite_controlnet import load_control
    from lite_controlnet.cli import build_parser
    from lite_controlnet.training.config import config_from_args

    args = build_parser().parse_args(["train", "--data", str(fill50k_small), "--output", str(tmp_path),
                                      "--control-options", '{"level_channels": 40, "pixel_mlp_channels": [24]}'])
    assert config_from_args(args).control_options == {"level_channels": 40, "pixel_mlp_channels": [24]}
    with pytest.raises(SystemExit):  # argparse reports the bad JSON and exits
        build_parser().parse_args(["train", "--control-options", "level_channels=40"])
    with pytest.raises(ValueError, match="control_options="):
        TrainConfig(data="d", output="o", control_options="level_channels=40")
    final = train(config(tiny_base_dir, fill50k_small, tmp_path / "run", max_steps=1,
                         control_options={"level_channels": 40, "pixel_mlp_channels": [24]}), progress=False)
    module = load_control(final)
    assert module.config.level_channels == 40 and list(module.config.pixel_mlp_channels) == [24]
    with pytest.raises(ValueError, match=r"Unknown control option\(s\) \['width'\].*level_channels"):
        train(config(tiny_base_dir, fill50k_small, tmp_path / "bad", max_steps=1, control_options={"width": 3}),
              progress=False)


def test_two_processes_train_and_resume_like_one(tiny_base_dir, fill50k_small, tmp_path):
    def torchrun(max_steps):
        args, env = cli(tiny_base_dir, fill50k_small, tmp_path / "ddp", "--max-steps", str(max_steps),
                        "--checkpoint-every", "2")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(random.randint(20000, 40000))]
        result = subprocess.run(launcher + args[1:], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    torchrun(4)
    resumed = torchrun(6)  # the second launch continues from step 4
    assert "Resumed from" in resumed.stderr + resumed.stdout
    assert [c.step for c in list_checkpoints(tmp_path / "ddp")] == [6, 4]
    train(config(tiny_base_dir, fill50k_small, tmp_path / "single", max_steps=6), progress=False)
    # each process took half of every batch, with the same noise: the same run, up to rounding
    a, b = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)  # float sums in another order


def test_original_controlnet_trains_with_the_same_trainer(tiny_base_dir, fill50k_small, tmp_path):
    final = train(config(tiny_base_dir, fill50k_small, tmp_path, control_kind="controlnet", max_steps=2), progress=False)
    from diffusers import ControlNetModel

    from lite_controlnet import load_control

    module = load_control(final)
    assert isinstance(module, ControlNetModel)
    zero_conv = module.controlnet_down_blocks[0].weight
    assert zero_conv.abs().sum() > 0  # the zero convolutions have started to move


def test_checkpoints_also_follow_the_clock(tiny_base_dir, fill50k_small, tmp_path):
    train(config(tiny_base_dir, fill50k_small, tmp_path, max_steps=3, checkpoint_every=1000,
                 checkpoint_minutes=1e-9, keep_checkpoints=3), progress=False)
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 2, 1]


def test_colab_helpers_fall_back_to_local_folders(tmp_path, fill50k_small):
    import shutil
    import zipfile

    from lite_controlnet.notebook.colab import copy_to_local, in_colab, run_folder

    assert not in_colab()
    assert run_folder("run1", local_root=tmp_path) == tmp_path / "run1"
    assert run_folder("run1", local_root=tmp_path, output=tmp_path / "mine" / "run") == tmp_path / "mine" / "run"
    assert (tmp_path / "mine" / "run").is_dir()  # a notebook's OUTPUT_DIR, made
    with zipfile.ZipFile(tmp_path / "fill50k.zip", "w") as archive:  # zips often nest one folder
        for path in fill50k_small.rglob("*"):
            archive.write(path, Path("fill50k") / path.relative_to(fill50k_small))
    local = copy_to_local(tmp_path / "fill50k.zip", tmp_path / "local")
    assert (local / "prompt.json").read_text() == (fill50k_small / "prompt.json").read_text()
    assert copy_to_local(tmp_path / "fill50k.zip", tmp_path / "local") == local  # reused, not copied again
    with pytest.raises(FileNotFoundError, match="does not exist"):
        copy_to_local(tmp_path / "missing.zip", tmp_path / "other")
    shutil.rmtree(tmp_path / "local")


def test_lock_heartbeat_keeps_a_long_phase_alive(tmp_path):
    lock = RunLock(tmp_path, stale_after=0.6, heartbeat=0.1).acquire()
    try:
        time.sleep(1.0)  # longer than stale_after: only the heartbeat keeps it fresh
        held = json.loads(lock.path.read_text())
        assert time.time() - held["heartbeat"] < 0.6
    finally:
        lock.release()
    assert not lock.path.exists()


def test_latest_control_and_prepare_fill50k(tiny_base_dir, fill50k_small, tmp_path):
    from lite_controlnet.training.checkpoint import latest_control
    from lite_controlnet.notebook.colab import prepare_fill50k

    assert latest_control(tmp_path / "run") is None
    train(config(tiny_base_dir, fill50k_small, tmp_path / "run", max_steps=2, checkpoint_every=1), progress=False)
    assert latest_control(tmp_path / "run") == tmp_path / "run" / "final"
    import shutil

    shutil.rmtree(tmp_path / "run" / "final")
    assert latest_control(tmp_path / "run") == list_checkpoints(tmp_path / "run")[0].path / "control"
    made = prepare_fill50k(tmp_path / "data", num=8, size=32)
    manifest = (made / "prompt.json").read_text()
    assert prepare_fill50k(tmp_path / "data", num=8, size=32) == made  # reused, not rewritten
    assert (made / "prompt.json").read_text() == manifest


def test_probe_runs_real_steps_and_leaves_the_weights_alone(tiny_base_dir, fill50k_small, tmp_path, monkeypatch):
    # The probe is GPU code; its memory counters are stubbed here so its steps run on the CPU.
    trainer = Trainer(config(tiny_base_dir, fill50k_small, tmp_path), progress=False)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.control_model.state_dict().items()}
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: 123)
    assert trainer._probe(2, False, False) == 123
    assert all(p.grad is None for p in trainer.control_model.parameters())
    assert_same_weights(before, trainer.control_model.state_dict())


def test_cubic_timesteps_are_mostly_noisy_and_the_default_lite_trains_on_them(tiny_base_dir, fill50k_small, tmp_path,
                                                                            monkeypatch):
    def draw(sampling):
        return draw_timesteps(sampling, 20_000, 1000, torch.Generator().manual_seed(0))

    cubic, uniform = draw("cubic"), draw("uniform")
    assert 0 <= cubic.min() and cubic.max() <= 999
    assert (cubic >= 800).float().mean() == pytest.approx(0.585, abs=0.02)  # P(u^3 < 0.2) = 0.2^(1/3)
    assert (uniform >= 800).float().mean() == pytest.approx(0.2, abs=0.02)
    with pytest.raises(ValueError, match="'cube' is unknown"):
        draw("cube")
    # the trainer draws each kind's default, or what the config asks for
    used = []
    monkeypatch.setattr(trainer_module, "draw_timesteps",
                        lambda sampling, *args: used.append(sampling) or draw_timesteps(sampling, *args))
    for name, overrides in (("lite", {}), ("controlnet", {"control_kind": "controlnet"}),
                            ("lite-uniform", {"timestep_sampling": "uniform"})):
        train(config(tiny_base_dir, fill50k_small, tmp_path / name, max_steps=1, **overrides), progress=False)
    assert used == ["cubic", "uniform", "uniform"]


def test_the_plan_prints_the_cpu_threads_chosen_or_requested(tiny_base_dir, fill50k_small, tmp_path):
    """The thread count is the package's own choice on a CPU, shown in the plan; --threads sets it."""
    for extra, expected in (((), r"CPU threads\s+\d+\s+\d+ cores"), (("--threads", "2"), r"CPU threads\s+2\s+requested")):
        args, env = cli(tiny_base_dir, fill50k_small, tmp_path / f"run{len(extra)}", "--max-steps", "1", *extra)
        env.pop("OMP_NUM_THREADS")
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert re.search(expected, done.stdout + done.stderr), (done.stdout + done.stderr)[-2000:]


def test_a_stall_is_said_once(tiny_base_dir, fill50k_small, tmp_path, monkeypatch, capsys):
    from lite_controlnet.training.stall import StallWatch

    # every step counts as slow against a reference of a nanosecond: the line must still come once
    monkeypatch.setattr(trainer_module, "StallWatch", lambda device: StallWatch(window=0.0, reference=1e-9, device=device))
    train(config(tiny_base_dir, fill50k_small, tmp_path / "run", max_steps=6), progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "longer than at the start" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: Training steps take") and "--threads 1" in lines[0]


def test_a_resume_that_changes_how_the_run_learns_says_so(tiny_base_dir, fill50k_small, tmp_path, capsys):
    """Allowed (a run may go on at another rate on purpose), but never unnoticed: a forgotten
    --preset would change the learning rate 30x."""
    out = tmp_path / "run"
    train(config(tiny_base_dir, fill50k_small, out, max_steps=2, learning_rate=3e-3), progress=False)
    capsys.readouterr()
    train(config(tiny_base_dir, fill50k_small, out, max_steps=3, learning_rate=3e-3), progress=False)
    assert "warning: resuming" not in capsys.readouterr().out  # the same settings: nothing to say
    train(config(tiny_base_dir, fill50k_small, out, max_steps=4, timestep_sampling="uniform"), progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: resuming")]
    assert len(lines) == 2
    assert "learning rate 0.0001 where it trained with 0.003" in lines[0] and "--learning-rate 0.003" in lines[0]
    assert "timestep sampling uniform where it trained with cubic" in lines[1]


def test_04_sample_finds_the_run_s_module_else_the_demo_s(tmp_path, monkeypatch):
    from lite_controlnet import LiteControlNetModel
    from lite_controlnet.notebook.colab import DEMO_RUN, trained_control
    from lite_controlnet.training.checkpoint import publish_final

    module = LiteControlNetModel(residual_channels=(8, 8), residual_levels=(0, 1), mid_channels=8,
                                 decoder_channels=(8, 8), pixel_mlp_channels=(4,), level_channels=8,
                                 feedback_channels=8, level_kernel_size=(1, 3), vae_scale_factor=1)
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    run = repo / "outputs" / "fill50k-lite"
    monkeypatch.chdir(repo / "notebooks")  # a notebook opened locally runs in notebooks/
    assert trained_control(run, "proxy") is None
    publish_final(repo / DEMO_RUN, module, step=400)
    assert trained_control(run, "proxy") == Path("..") / DEMO_RUN / "final"
    assert trained_control(run, "stable-diffusion-v1-5/stable-diffusion-v1-5") is None  # the demo's is for its base
    publish_final(run, module, step=10)
    assert trained_control(run, "proxy") == run / "final"  # the run's own comes first
