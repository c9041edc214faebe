"""Train a control module on a frozen base: `train(TrainConfig(...))`.

Only the control module trains; UNet, VAE and text encoder are frozen, and latents and text
embeddings come from a cache built once. Backward runs only through the UNet's decoder: the
residuals enter the skip connections, and nothing before them needs a gradient.

Resuming is exact. Each optimizer step reads the samples `permutation(seed, epoch)[s*B:(s+1)*B]`
and draws its noise, timesteps and prompt dropout from a generator seeded by `(seed, step)`,
so a run restarted from a checkpoint continues with the very batch and noise it would have
seen; with the model, optimizer, loss scaler and counters restored, a run killed at any
moment ends, on CPU, with the same weights bit for bit as one never interrupted. The random
draws do not depend on the per-step batch either, so a smaller one after an out-of-memory
error sees the same samples.

Why some of what Accelerate offers is done here by hand. Accelerate places the models and, when
torchrun starts several processes, wraps the module in DDP (which averages the gradients), skips
the gradient sync between micro-batches, averages the logged loss and logs to its experiment
trackers (`trackers.py`); the rest of what it offers does not fit this trainer. The precision is the hardware plan's (fp16 on a T4, which lacks
native bf16; bf16 on Ampere and newer; fp32 on a CPU), chosen after the base is loaded, probed
on the GPU and reused from the checkpoint on resume, while Accelerate fixes its mixed precision
when the `Accelerator` is built: so autocast and the fp16 `GradScaler` follow the plan, a fresh
scaler for each probe. Gradient accumulation runs inside one optimizer step, over that step's
fixed samples, so that after an out-of-memory error the step is redone at a smaller per-step
batch with the same samples and noise; Accelerate's `accumulate` counts batches across the loop
at a number fixed in advance. A checkpoint is one folder built on local disk and published by
its manifest (a Colab disconnect never leaves half of one on Drive), whose `control/` samples on
its own and whose one state dict (`checkpoint.py`) loads with `weights_only=True`; Accelerate's
`save_state` writes its own layout in place. And no random generator's state is saved or
restored, as `save_state` would: every draw of training comes from a generator seeded by (seed,
epoch) or (seed, step), and the module's initial weights, drawn once from the global generator,
are in every checkpoint (a test scrambles the global generators before each step and gets the
same weights).
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..bases.loading import check_prediction_type, load_base
from .cache import build_cache
from .checkpoint import (
    TrainState,
    checkpoint_root,
    find_resume,
    list_checkpoints,
    publish_final,
    restore,
    run_identity,
    save_checkpoint,
)
from .config import DEFAULT_LEARNING_RATE, DEFAULT_TIMESTEP_SAMPLING, TIMESTEP_SAMPLINGS, TrainConfig
from ..atomic import clean_stale_staging
from ..controls import build_control, controlled_unet, prepare_control
from ..data.paired import PairedDataset
from ..errors import TrainingError
from .stall import StallWatch
from .threads import apply_threads, governor_for
from .hardware import HardwarePlan, choose_precision, detect_device, plan_hardware
from .lock import RunLock
from .grids import GridRow, make_grid
from .logs import LossLog
from .trackers import accelerator_options, end_trackers, log_grid, start_trackers
from .validation import read_validation_pairs, save_grid, validation_rows
from .init_from import check_init_fits, open_init_module

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class EpochEnd:
    """What `on_epoch_end` receives: epoch 0 is the grid before training."""

    epoch: int
    step: int
    grid: PIL.Image.Image | None
    grid_path: Path | None
    output: Path
    rows: list[GridRow] = field(default_factory=list)  # the grid's: the dataset's pairs, then your own


# What a derived seed is drawn for (its last number): each purpose gets its own random stream.
DATA_ORDER = 1  # the order of the samples in an epoch
STEP_DRAWS = 2  # a step's noise, timesteps and prompt dropout
MODULE_INIT = 3  # the control module's initial weights


def derived_seed(*numbers: int) -> int:
    """A 63-bit seed mixed from several integers (seed, epoch or step, purpose: `DATA_ORDER`, ...)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(2, dtype=np.uint32).astype(np.uint64)
               .dot([1 << 31, 1])) & ((1 << 63) - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the samples in `epoch`, fixed by `seed`."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch, DATA_ORDER))).tolist()


def draw_timesteps(sampling: str, count: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """`count` training timesteps: "uniform" over [0, T), or "cubic", t = T(1 - u^3) with u uniform
    (T2I-Adapter's recipe: 58% of the draws above 0.8 T, the noisy steps where the layout is decided)."""
    if sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (count,), generator=generator)
    if sampling == "cubic":
        u = torch.rand(count, generator=generator)
        return ((1 - u**3) * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)
    raise ValueError(f"timestep sampling {sampling!r} is unknown: use one of {TIMESTEP_SAMPLINGS}.")


def changed_schedule(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """What a resume changes of how the run learns (allowed: a run may be continued at another learning
    rate on purpose), each said, since forgetting a flag such as `--preset` changes it unnoticed."""
    lines = []
    kind = saved.get("control_kind", cfg.control_kind)
    before = {"learning rate": (saved.get("learning_rate") or DEFAULT_LEARNING_RATE.get(kind), cfg.lr, "--learning-rate"),
              "timestep sampling": (saved.get("timestep_sampling") or DEFAULT_TIMESTEP_SAMPLING.get(kind), cfg.timesteps,
                                    "--timestep-sampling")}
    for what, (old, new, flag) in before.items():
        if old is not None and old != new:
            lines.append(f"with {what} {new} where it trained with {old}: the run goes on with {new} "
                         f"(pass {flag} {old} to keep the old one).")
    return lines


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant as ControlNet."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr


def loss_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict from `scheduler.add_noise(latents, noise, timesteps)`, by the
    base's `prediction_type`: the noise, the velocity, or the clean latents themselves."""
    kind = check_prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return latents  # "sample"


class _StepControls(Dataset):
    """One item per optimizer step: the control images of this process's share of the step."""

    def __init__(self, dataset: PairedDataset, steps: list[list[int]]):
        self.dataset, self.steps = dataset, steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> tuple[list[int], torch.Tensor]:
        indices = self.steps[k]
        return indices, torch.stack([self.dataset.control_image(i) for i in indices])


class Trainer:
    """Holds one run's models and state; `run()` trains to the end (or `max_steps`)."""

    def __init__(self, cfg: TrainConfig, on_epoch_end: Callable[[EpochEnd], None] | None = None,
                 progress: bool = True, plan: HardwarePlan | None = None):
        self.cfg, self.on_epoch_end, self.progress = cfg, on_epoch_end, progress
        self.output = Path(cfg.output)
        self.info = detect_device(cfg.max_gpu_memory)
        self.threads = apply_threads(self.info.kind, cfg.threads)  # before anything computes
        self.accelerator = Accelerator(cpu=self.info.kind == "cpu", **accelerator_options(cfg.report_to, cfg.output))
        self.pairs = read_validation_pairs(cfg.validation_pairs, cfg.resolution, cfg.convert_mode)  # before any write
        self.main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({self.world}).")
        self.share = cfg.batch_size // self.world  # samples per process per optimizer step
        self.forced_plan = plan

    # -- setup -----------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.main:
            tqdm.write(message)

    def setup(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        # 0. the data (only its manifest is read here), what defines the run, and the checkpoint
        # to resume: one of another run, or a start that would mix two, is refused before anything
        # is loaded
        self.dataset = PairedDataset(cfg.data, resolution=cfg.resolution, manifest=cfg.manifest,
                                     convert_mode=cfg.convert_mode, image_column=cfg.image_column,
                                     conditioning_image_column=cfg.conditioning_image_column,
                                     caption_column=cfg.caption_column, max_train_samples=cfg.max_train_samples)
        self.identity = run_identity(cfg, self.dataset)
        resume = find_resume(self.output, cfg.resume, self.identity)
        # a trained module to start from: only for a fresh start (a checkpoint's weights win)
        init = open_init_module(cfg.init_from, cfg.control_kind) if cfg.init_from and resume is None else None
        if resume is not None:
            for line in changed_schedule(resume.config, cfg):
                self._log(f"warning: resuming {resume.checkpoint.path} {line}")
        # 1. the hardware plan: reused from the checkpoint unless the device changed
        plan = self.forced_plan
        if plan is None and resume is not None:
            saved = resume.plan
            if saved.device_name == self.info.name and saved.effective_batch == self.share:
                plan = saved
            else:
                self._log(f"The device changed ({saved.device_name} -> {self.info.name}): planning again.")
        # 2. the frozen base, in the training precision (the probe below trains in it too)
        self.precision = plan.precision if plan else choose_precision(self.info, cfg.precision)[0]
        self.weight_dtype = DTYPES[self.precision]
        self.base = load_base(cfg.base, torch_dtype=self.weight_dtype).to(device=acc.device)
        self.noise_scheduler = DDPMScheduler.from_config(self.base.scheduler.config)
        check_prediction_type(self.noise_scheduler)  # before the cache is built
        if init is not None:  # before the cache too: a module that does not fit is refused at once
            check_init_fits(init, cfg, self.base.unet, self.base.vae_scale_factor)
        # 3. the cache (the main process encodes; the others wait, then read)
        if len(self.dataset) < cfg.batch_size:
            raise ValueError(f"{self.dataset.manifest} has {len(self.dataset)} pairs, fewer than batch_size={cfg.batch_size}.")
        self.steps_per_epoch = len(self.dataset) // cfg.batch_size
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        if self.main:
            build_cache(self.dataset, self.base, cfg.cache_path, cfg.base, device=acc.device, progress=self.progress)
        acc.wait_for_everyone()
        self.cache = build_cache(self.dataset, self.base, cfg.cache_path, cfg.base, device=acc.device, progress=False)
        # 4. the control module, in fp32 (master weights), and the plan
        torch.manual_seed(derived_seed(cfg.seed, 0, MODULE_INIT))  # the module's initial weights follow the seed
        try:
            self.control_model = build_control(cfg.control_kind, self.base.unet, vae_scale_factor=self.base.vae_scale_factor,
                                         **(cfg.control_options or {}))
        except (TypeError, ValueError, RuntimeError) as error:  # the module's own check, or torch's
            raise ValueError(f"--control-options {json.dumps(cfg.control_options or {})} cannot build a "
                             f"{cfg.control_kind} module: {error}") from error
        if init is not None:  # the trained module's weights instead of fresh ones
            self.control_model.load_state_dict(init.state_dict())
        self.control_model.to(acc.device).train()
        if plan is None:
            plan = plan_hardware(self.info, self.share, cfg.precision, cfg.micro_batch, cfg.gradient_checkpointing,
                                 cfg.use_8bit_adam, cfg.xformers, probe=self._probe if self.info.kind == "cuda" else None)
        self.plan = plan
        self._apply_plan()
        threads = [("CPU threads", str(self.threads.threads), self.threads.reason)] if self.threads else []
        self._log("Hardware plan:\n" + plan.table(threads))
        # 5. optimizer, loss scaler, and the state of the run
        self.optimizer = self._make_optimizer(self.plan.use_8bit_adam, cfg.lr)
        self.scaler = torch.amp.GradScaler("cuda") if plan.precision == "fp16" else None
        self.control_model_ddp = acc.prepare(self.control_model) if self.world > 1 else self.control_model
        self.state = TrainState()
        self.nonfinite_run = 0  # non-finite losses in a row (a resumed run starts counting afresh)
        if resume is not None:
            resume = restore(resume, self.control_model, self.optimizer, self.scaler, fallback=cfg.resume == "auto")
            self.state = resume.state
            self._log(f"Resumed from {resume.checkpoint.path} at step {self.state.global_step} (epoch "
                      f"{self.state.epoch + 1}, step {self.state.step_in_epoch} of {self.steps_per_epoch}).")

    def _apply_plan(self) -> None:
        plan = self.plan
        if plan.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if plan.gradient_checkpointing:
            self.base.unet.enable_gradient_checkpointing()
            if hasattr(self.control_model, "enable_gradient_checkpointing") and self.control_model._supports_gradient_checkpointing:
                self.control_model.enable_gradient_checkpointing()
        if plan.xformers:
            self.base.unet.enable_xformers_memory_efficient_attention()

    def _make_optimizer(self, eight_bit: bool, lr: float) -> torch.optim.Optimizer:
        params = [p for p in self.control_model.parameters() if p.requires_grad]
        if eight_bit:
            try:
                import bitsandbytes as bnb
            except ImportError as error:
                raise RuntimeError("8-bit AdamW needs bitsandbytes: pip install bitsandbytes") from error
            return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=self.cfg.weight_decay)
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.cfg.weight_decay)

    # -- one optimizer step ------------------------------------------------------------------

    def _draws(self, step: int, count: int, latent_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """Noise, timesteps and prompt dropout of `step`, for this process's `count` samples."""
        generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, step, STEP_DRAWS))
        # Draw for the whole effective batch, then take this process's share: the same samples
        # get the same draws whatever the number of processes or the per-step batch.
        total = self.cfg.batch_size
        noise = torch.randn((total, *latent_shape), generator=generator)
        timesteps = draw_timesteps(self.cfg.timesteps, total, self.noise_scheduler.config.num_train_timesteps, generator)
        drop = (torch.rand(total, generator=generator) < self.cfg.prompt_dropout).tolist()
        start = self.accelerator.process_index * count
        return noise[start : start + count], timesteps[start : start + count], drop[start : start + count]

    def _autocast(self):
        if self.plan.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.accelerator.device.type, dtype=DTYPES[self.plan.precision])

    def _loss(self, latents: torch.Tensor, text: torch.Tensor, control_images: torch.Tensor,
              noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        device, unet = self.accelerator.device, self.base.unet
        latents, noise = latents.to(device, torch.float32), noise.to(device, torch.float32)
        timesteps = timesteps.to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = loss_target(self.noise_scheduler, latents, noise, timesteps)
        noisy, text = noisy.to(self.weight_dtype), text.to(device, self.weight_dtype)
        with self._autocast():
            prepared = prepare_control(self.control_model_ddp, control_images.to(device), self.weight_dtype)
            pred = controlled_unet(unet, noisy, timesteps, text, prepared)
        return F.mse_loss(pred.float(), target.float())

    def _optimizer_step(self, step: int, indices: list[int], control_images: torch.Tensor, lr: float | None = None) -> float:
        """Forward/backward over micro-batches, then one update (at `lr`, else the schedule's).

        Returns the mean loss (NaN if the update was skipped)."""
        micro, count = self.plan.micro_batch, len(indices)
        latents = self.cache.latent_batch(indices)
        noise, timesteps, drop = self._draws(step, count, tuple(latents.shape[1:]))
        text = self.cache.text_batch(indices, self.base, drop)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.cfg.lr, self.cfg.lr_warmup_steps) if lr is None else lr
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for start in range(0, count, micro):
            part = slice(start, start + micro)
            last = start + micro >= count
            sync = nullcontext() if last or self.world == 1 else self.accelerator.no_sync(self.control_model_ddp)
            with sync:
                loss = self._loss(latents[part], text[part], control_images[part], noise[part], timesteps[part])
                scaled = loss * (min(micro, count - start) / count)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            losses.append(loss.detach() * min(micro, count - start))
        mean = torch.stack(losses).sum() / count
        mean = self.accelerator.reduce(mean, reduction="mean") if self.world > 1 else mean
        if not torch.isfinite(mean):
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan")
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.control_model.parameters(), self.cfg.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return float(mean)

    def _probe(self, micro: int, checkpointing: bool, eight_bit: bool) -> int:
        """Peak reserved GPU memory of two training steps at `micro`, plus a validation-sized UNet call."""
        self.plan = HardwarePlan(self.info.kind, self.info.name, self.precision, micro, 1,
                                 gradient_checkpointing=checkpointing, use_8bit_adam=eight_bit)
        if checkpointing:
            self.base.unet.enable_gradient_checkpointing()
        else:
            self.base.unet.disable_gradient_checkpointing()
        self.control_model_ddp = self.control_model
        self.optimizer = self._make_optimizer(eight_bit, lr=0.0)
        self.scaler = torch.amp.GradScaler("cuda") if self.plan.precision == "fp16" else None
        torch.cuda.reset_peak_memory_stats()
        try:
            indices = list(range(micro))
            control_images = torch.stack([self.dataset.control_image(i) for i in indices])
            for step in range(2):
                self._optimizer_step(step, indices, control_images, lr=0.0)  # lr 0: the weights stay as they are
            with torch.no_grad(), self._autocast():  # validation with guidance: twice the batch
                rows = [i % len(self.dataset) for i in range(min(self.cfg.num_validation, len(self.dataset))
                                                             + len(self.pairs))] * 2
                k = len(rows)
                latents = self.cache.latent_batch(rows).to(self.accelerator.device, self.weight_dtype)
                text = self.cache.text_batch(rows).to(self.accelerator.device, self.weight_dtype)
                self.base.unet(latents, torch.full((k,), 500, device=latents.device), encoder_hidden_states=text)
            return torch.cuda.max_memory_reserved()
        finally:
            self.control_model.zero_grad(set_to_none=True)  # an out-of-memory step leaves gradients behind
            del self.optimizer
            gc.collect()
            torch.cuda.empty_cache()

    # -- checkpoints and validation ------------------------------------------------------------

    def _check_weights(self) -> None:
        """Refuse to publish non-finite weights: they would replace good checkpoints and final/."""
        bad = [name for name, p in self.control_model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingError(
                f"The control module's weights are not finite at step {self.state.global_step} ({len(bad)} tensors, "
                f"e.g. {bad[0]}); nothing was saved, the last good checkpoint is kept in {self.output / 'checkpoints'}. "
                "Try a lower --learning-rate or --max-grad-norm, or --precision fp32."
            )

    def _save(self) -> None:
        if not self.main:
            return
        self._check_weights()
        save_checkpoint(self.output, self.control_model, self.state, self.optimizer, self.scaler, self.cfg, self.plan,
                        self.identity, keep=self.cfg.keep_checkpoints)
        self.last_save = time.monotonic()

    def _grid(self, name: str, title: str) -> tuple[PIL.Image.Image, Path, list[GridRow]]:
        indices = list(range(min(self.cfg.num_validation, len(self.dataset))))
        with self._autocast():
            rows = validation_rows(self.base, self.control_model, self.dataset, self.cache, indices, self.pairs,
                                   steps=self.cfg.validation_steps, guidance=self.cfg.validation_guidance,
                                   seed=self.cfg.seed, title=title, progress=self.progress and self.main)
        grid = make_grid(rows, title=title)
        path = save_grid(grid, self.output, name)
        log_grid(self.accelerator, grid, self.state.global_step)
        return grid, path, rows

    def _epoch_grid(self, epoch: int) -> None:
        """The grid after `epoch` epochs (0: before training), saved and handed to the callback."""
        if not self.main:
            return
        grid, path, rows = self._grid(f"epoch-{epoch:03d}", f"epoch {epoch}, step {self.state.global_step}")
        LossLog(self.output).plot()
        if self.on_epoch_end:
            self.on_epoch_end(EpochEnd(epoch, self.state.global_step, grid, path, self.output, rows))

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        lock = RunLock(self.output).acquire() if self.main else None  # before the cache is built
        try:
            if self.main:
                clean_stale_staging(checkpoint_root(self.output), self.output)  # what killed writers left
            self.setup()
            state = self.state
            if self.main:
                (self.output / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
            start_trackers(acc, cfg.to_dict(), self.output, state.global_step)
            log = LossLog(self.output)
            if self.main:
                log.truncate_after(state.global_step)
            self.last_save = time.monotonic()
            if state.global_step == 0 and not (self.output / "samples" / "epoch-000.png").exists():
                self._epoch_grid(0)
            elif (state.step_in_epoch == 0 and state.epoch > 0
                  and not (self.output / "samples" / f"epoch-{state.epoch:03d}.png").exists()):
                self._epoch_grid(state.epoch)  # cut off between the epoch's checkpoint and its grid
            self.stall = StallWatch(device=self.info.kind)
            self.governor = governor_for(self.threads)
            bar = tqdm(total=self.total_steps, initial=state.global_step, disable=not (self.progress and self.main),
                       desc=f"train {cfg.control_kind}", dynamic_ncols=True)
            try:
                while state.global_step < self.total_steps:
                    self._run_epoch(bar, log)
            finally:
                bar.close()  # ends the bar's line, so that an error prints on a line of its own
            if self.main and not any(c.step == state.global_step for c in list_checkpoints(self.output)):
                self._save()
            final = self.output / "final"
            if self.main:
                self._check_weights()
                publish_final(self.output, self.control_model, state.global_step)
                if state.step_in_epoch != 0:  # stopped by max_steps inside an epoch
                    self._grid(f"step-{state.global_step:08d}", f"final, step {state.global_step}")
                LossLog(self.output).plot()
                self._log(f"Done: {state.global_step} steps. Control module saved to {final}")
            acc.wait_for_everyone()
            return final
        finally:
            end_trackers(acc)
            if lock:
                lock.release()

    def _run_epoch(self, bar: tqdm, log: LossLog) -> None:
        cfg, share = self.cfg, self.share
        state = self.state
        order = epoch_permutation(len(self.dataset), cfg.seed, state.epoch)
        first = state.step_in_epoch
        last = min(self.steps_per_epoch, first + self.total_steps - state.global_step)
        rank = self.accelerator.process_index
        steps = [order[s * cfg.batch_size + rank * share : s * cfg.batch_size + (rank + 1) * share] for s in range(first, last)]
        loader = DataLoader(_StepControls(self.dataset, steps), batch_size=None, num_workers=cfg.num_workers,
                            persistent_workers=False)
        started = time.monotonic()
        for indices, control_images in loader:
            loss = self._step_with_retry(indices, control_images)
            slow = self.stall.step(time.monotonic() - started)
            if slow:
                self._log(f"warning: {slow}")
            self.governor.update()  # fewer CPU threads while other processes need cores, all when they leave
            state.elapsed += time.monotonic() - started  # training time: loading and stepping, not saving or sampling
            state.global_step += 1
            state.step_in_epoch += 1
            epoch_done = state.step_in_epoch == self.steps_per_epoch
            if epoch_done:
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
            if self.main:
                lr = lr_at(state.global_step - 1, cfg.lr, cfg.lr_warmup_steps)
                log.append(state.global_step, state.epoch, loss, lr, state.elapsed)
                self.accelerator.log({"loss": loss, "lr": lr}, step=state.global_step)
                bar.update(1)
                postfix = {"loss": f"{loss:.4f}"}
                if self.governor.enabled:
                    postfix["threads"] = torch.get_num_threads()
                if torch.cuda.is_available():
                    postfix["VRAM"] = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}G"
                bar.set_postfix(postfix)
            due = (state.global_step % cfg.checkpoint_every == 0
                   or time.monotonic() - self.last_save >= 60 * cfg.checkpoint_minutes
                   or epoch_done or state.global_step == self.total_steps)
            if due:
                self._save()
            if epoch_done:
                self._epoch_grid(state.epoch)
            elif cfg.validation_every and state.global_step % cfg.validation_every == 0 and self.main:
                self._grid(f"step-{state.global_step:08d}", f"step {state.global_step}")
            if state.global_step >= self.total_steps:
                break
            started = time.monotonic()

    def _step_with_retry(self, indices: list[int], control_images: torch.Tensor) -> float:
        """One optimizer step; on out-of-memory, a smaller per-step batch and the same step again."""
        state = self.state
        while True:
            try:
                loss = self._optimizer_step(state.global_step, indices, control_images)
                break
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
                smaller = [b for b in range(self.plan.micro_batch - 1, 0, -1) if self.share % b == 0]
                if not smaller:
                    raise
                self.plan = self.plan.with_micro_batch(smaller[0], f"lowered after out-of-memory at step {state.global_step}")
                self._log(f"Out of memory at step {state.global_step}: batch per step now {self.plan.micro_batch}, "
                          f"accumulation {self.plan.accumulation} (same effective batch); the step is redone.")
        if math.isnan(loss):
            state.nonfinite_total += 1
            self.nonfinite_run += 1
            self._log(f"Step {state.global_step}: non-finite loss, update skipped ({state.nonfinite_total} so far).")
            if self.nonfinite_run >= self.cfg.max_nonfinite:
                raise TrainingError(
                    f"The loss was not finite for {self.nonfinite_run} steps in a row (step {state.global_step}); "
                    f"training stopped. The last good checkpoint is kept in {self.output / 'checkpoints'}. "
                    "Try a lower learning rate, or precision fp32."
                )
        else:
            self.nonfinite_run = 0
        return loss


def train(cfg: TrainConfig, on_epoch_end: Callable[[EpochEnd], None] | None = None, progress: bool = True,
          plan: HardwarePlan | None = None) -> Path:
    """Train the control module of `cfg`; resume from the output folder's checkpoints (`cfg.resume`).

    Args:
        cfg: the run's settings.
        on_epoch_end: called after each epoch's validation grid (and with epoch 0 before training).
        progress: show progress bars.
        plan: a hardware plan to use instead of detecting and probing.
    Returns:
        The folder of the final control module (`<output>/final`).
    """
    return Trainer(cfg, on_epoch_end, progress, plan).run()
