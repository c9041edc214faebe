"""How the proxy base (`proxy.py`) is trained: Fill50k targets rendered in memory, each seen once;
v-prediction with a min-SNR weight that keeps the noisiest steps, AdamW with warm-up and cosine
decay, an EMA of the weights, which is what is saved.

    python -m lite_controlnet make-proxy-base OUT_DIR [--steps N] [--threads 1] [--log FILE]
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPTokenizer

from ..data.fill50k import render_fill50k_sample
from ..data.heldout import PROXY_HELD_OUT_SEED, held_out_pairs
from .proxy import ProxyModels, ProxyRecipe, build_proxy_models, save_proxy_base

__all__ = ["TRAIN_DATA_SEED", "colour_check", "diffusion_step", "ema_update", "lr_factor", "make_optimizer", "make_proxy_base", "min_snr_weight",
           "target_batch", "token_ids"]

# The colour check and the base's evaluation draw held-out pairs (`heldout.held_out_pairs`) of
# another dataset seed than training, so their exact (colours, circle) combinations were never seen.
TRAIN_DATA_SEED = 0


def render_targets(indices: range | list[int], recipe: ProxyRecipe, data_seed: int) -> tuple[torch.Tensor, list[str]]:
    """Fill50k targets as a (B, 3, R, R) tensor in [-1, 1], and their prompts."""
    size = recipe.resolution * recipe.render_scale
    targets, prompts = [], []
    for index in indices:
        _, target, prompt = render_fill50k_sample(index, size, data_seed)
        if recipe.render_scale > 1:
            target = target.resize((recipe.resolution, recipe.resolution), Image.BOX)
        targets.append(target)
        prompts.append(prompt)
    return target_batch(targets), prompts


def target_batch(targets: list[Image.Image]) -> torch.Tensor:
    """Target images as a (B, 3, R, R) tensor in [-1, 1]."""
    return torch.from_numpy(np.stack([np.asarray(t, dtype=np.float32) for t in targets])).permute(0, 3, 1, 2) / 127.5 - 1.0


def token_ids(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, 77) token ids of `prompts`, padded to the tokenizer's length."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _is_text_path(name: str) -> bool:
    # attention blocks (self and cross) and the pooled-text embedding learn the prompt
    return "attentions" in name or "add_embedding" in name


def make_optimizer(models: ProxyModels, recipe: ProxyRecipe) -> torch.optim.AdamW:
    """AdamW over the UNet (its text path at `attention_lr_scale` times the rate) and, if trained,
    the text encoder; each group's "lr_scale" multiplies the scheduled rate."""
    named = list(models.unet.named_parameters())
    groups = [
        {"params": [p for n, p in named if not _is_text_path(n)], "lr_scale": 1.0},
        {"params": [p for n, p in named if _is_text_path(n)], "lr_scale": recipe.attention_lr_scale},
    ]
    if recipe.train_text_encoder:
        groups.append({"params": list(models.text_encoder.parameters()), "lr_scale": recipe.attention_lr_scale})
    return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=0.01)


def min_snr_weight(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample weight of the v-prediction loss: min(1, gamma / (SNR + 1)).

    Min-SNR-gamma (Hang et al. 2023) caps the weight of the low-noise steps. Its usual form for
    v-prediction, min(SNR, gamma) / (SNR + 1), also sends the weight of the high-noise steps to
    zero, and those are the only steps where the colours must come from the prompt: at higher
    SNR the noisy image itself shows its mean colours (hundreds of pixels average the noise
    out). With that form, prototypes learned the disk but ignored the prompt's colours. Here
    the cap applies to SNR + 1, v-prediction's own weight on the clean-image error, so
    high-noise steps keep weight 1.
    """
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alpha_bar / (1.0 - alpha_bar)
    return torch.clamp(gamma / (snr + 1.0), max=1.0)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """Move each parameter of `ema` towards `model`'s by 1 - `decay`."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


@torch.no_grad()
def colour_check(models: ProxyModels, recipe: ProxyRecipe, count: int = 32, timestep: int = 980) -> dict[str, float]:
    """A cheap check that the prompt's colours are used, for logs during training.

    Noises held-out targets to `timestep` (SNR ~0.001: too little is left of the image to read
    its colours from it), predicts
    the clean image once, and measures the RGB distance (0-255) of its mean colour inside and
    outside the true disk to the prompt's colours, with the real prompts and with the prompts
    rolled by one (another sample's colours). Real well below rolled = colours are bound.
    """
    pairs = held_out_pairs(count, recipe.resolution, seed=PROXY_HELD_OUT_SEED, render_scale=recipe.render_scale)
    images = target_batch([pairs.images(i)[1] for i in range(count)])
    prompts, specs = pairs.prompts, pairs.specs
    circle = torch.tensor([s.circle.rgb for s in specs], dtype=torch.float32)
    background = torch.tensor([s.background.rgb for s in specs], dtype=torch.float32)
    yy, xx = torch.meshgrid(torch.arange(recipe.resolution) + 0.5, torch.arange(recipe.resolution) + 0.5, indexing="ij")
    inside = torch.stack([((xx - s.centre[0]) ** 2 + (yy - s.centre[1]) ** 2) <= s.radius**2 for s in specs]).float()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=generator)
    t = torch.full((count,), timestep, dtype=torch.long)
    noisy = models.scheduler.add_noise(images, noise, t)
    alpha_bar = models.scheduler.alphas_cumprod[timestep]
    result = {}
    for name, used in (("real", prompts), ("rolled", prompts[1:] + prompts[:1])):
        text = models.text_encoder(token_ids(models.tokenizer, used))[0]
        v = models.unet(noisy, t, encoder_hidden_states=text).sample
        x0 = (alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * v).clamp(-1, 1)
        rgb = (x0 + 1) * 127.5
        mean_in = (rgb * inside[:, None]).sum((2, 3)) / inside.sum((1, 2))[:, None].clamp(min=1)
        mean_out = (rgb * (1 - inside[:, None])).sum((2, 3)) / (1 - inside).sum((1, 2))[:, None].clamp(min=1)
        result[f"circle_{name}"] = float((mean_in - circle).norm(dim=1).mean())
        result[f"background_{name}"] = float((mean_out - background).norm(dim=1).mean())
    return result


def diffusion_step(models: ProxyModels, ema: ProxyModels, optimizer: torch.optim.Optimizer, recipe: ProxyRecipe,
                   clean: torch.Tensor, prompts: list[str], step: int, generator: torch.Generator) -> float:
    """One training step of a proxy base on `clean` images (or latents) and their prompts: prompt
    dropout, noise and the v-prediction target, the loss with min-SNR weighting, one AdamW update
    at `step`'s learning rate, and the EMA. Returns the loss."""
    schedule = models.scheduler
    drop = torch.rand(len(prompts), generator=generator) < recipe.prompt_dropout
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(0, schedule.config.num_train_timesteps, (len(prompts),), generator=generator)
    noisy = schedule.add_noise(clean, noise, timesteps)
    target = schedule.get_velocity(clean, noise, timesteps)
    for group in optimizer.param_groups:
        group["lr"] = recipe.lr * group["lr_scale"] * lr_factor(step, recipe.steps, recipe.warmup_steps)
    text = models.text_encoder(token_ids(models.tokenizer, prompts))[0]
    pred = models.unet(noisy, timesteps, encoder_hidden_states=text).sample
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    loss = (per_sample * min_snr_weight(schedule, timesteps, recipe.min_snr_gamma)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    # warm the average up, so short runs are not dominated by the random initialisation
    decay = min(recipe.ema_decay, (1 + step) / (10 + step))
    ema_update(ema.unet, models.unet, decay)
    ema_update(ema.text_encoder, models.text_encoder, decay)
    return loss.item()


def make_proxy_base(
    out_dir: str | Path,
    steps: int = ProxyRecipe.steps,
    seed: int = 0,
    resolution: int = 32,
    progress: bool = True,
    recipe: ProxyRecipe | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 100,
    check_every: int = 1000,
    save_every: int | None = None,
) -> Path:
    """Train the proxy base on in-memory Fill50k targets and save it to `out_dir`.

    Args:
        out_dir: destination folder in the diffusers layout (see the module docstring).
        steps, seed, resolution: override the same fields of `recipe`.
        progress: show a progress bar.
        recipe: everything else about the networks and the training (`ProxyRecipe()`).
        log: receives one line every `log_every` steps (loss, speed) and a colour check every
            `check_every` steps (see `colour_check`); None logs nothing.
        save_every: also save the EMA weights to `out_dir` every this many steps, so an
            interrupted run leaves a usable base.

    Returns:
        `out_dir` as a Path. Its `training.json` holds the recipe, the steps and the time taken.
    """
    recipe = ProxyRecipe(**{**asdict(recipe or ProxyRecipe()), "steps": steps, "seed": seed, "resolution": resolution})
    out_dir = Path(out_dir)
    models = build_proxy_models(recipe, out_dir / "tokenizer")
    models.text_encoder.requires_grad_(recipe.train_text_encoder)
    ema = ProxyModels(models.tokenizer, copy.deepcopy(models.text_encoder).eval(),
                      copy.deepcopy(models.unet).eval(), models.scheduler)
    optimizer = make_optimizer(models, recipe)
    generator = torch.Generator().manual_seed(recipe.seed)
    started = time.perf_counter()

    def metadata(step: int) -> dict:
        return {"recipe": asdict(recipe), "steps_done": step, "train_seconds": round(time.perf_counter() - started, 1),
                "torch_threads": torch.get_num_threads(), "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
                "data": f"render_fill50k_sample, dataset seed {TRAIN_DATA_SEED}, in memory"}

    running = []
    for step in tqdm(range(recipe.steps), desc="proxy base", disable=not progress):
        # 1. a fresh batch: sample i of the stream is Fill50k sample i, never repeated
        first = step * recipe.batch_size
        images, prompts = render_targets(range(first, first + recipe.batch_size), recipe, TRAIN_DATA_SEED)

        # 2. one update of the UNet and text encoder, and their average
        loss = diffusion_step(models, ema, optimizer, recipe, images, prompts, step, generator)

        # 3. logs and snapshots
        running.append(loss)
        done = step + 1
        if log is not None and (done % log_every == 0 or done == recipe.steps):
            elapsed = time.perf_counter() - started
            log(f"step {done}/{recipe.steps} loss {np.mean(running):.4f} {elapsed / done:.3f} s/step {elapsed / 60:.1f} min")
            running = []
        if log is not None and (done % check_every == 0 or done == recipe.steps):
            check = colour_check(ema, recipe)
            log(f"step {done} colour check (RGB distance) " + " ".join(f"{k} {v:.1f}" for k, v in check.items()))
        if save_every and done % save_every == 0 and done < recipe.steps:
            save_proxy_base(ema, out_dir, metadata(done))
    return save_proxy_base(ema, out_dir, metadata(recipe.steps))
