"""How the shapes base (`proxy_shapes.py`) is trained, in two stages on scenes rendered in memory.

1. The VAE: random crops of scenes 0, 1, ..., an absolute plus squared reconstruction error and a
   small KL term; then its `scaling_factor` is set to 1 / the std of its latents, as SD's is, so
   the UNet sees latents of unit variance.
2. The UNet and the text encoder in the frozen VAE's latents, with the proxy base's recipe
   (`proxy_training`: v-prediction, its min-SNR weight, warm-up and cosine decay, prompt
   dropout, an EMA of the weights, which is what is saved), each scene seen once.

    python -m lite_controlnet make-proxy-base OUT_DIR --world shapes [--steps N] [--threads 1] [--log FILE]

A run keeps its whole state (weights, optimiser, random generator, step) in `OUT_DIR/resume/`
every `save_every` steps, and the same command continues it where it stopped (during or after
the VAE stage, also with other UNet steps); the state is removed when the run ends.
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..atomic import atomic_write
from ..data.heldout import PROXY_HELD_OUT_SEED
from ..data.shapes import shapes_scene
from ..errors import UsageError
from .proxy import ProxyModels, build_proxy_models, save_proxy_base
from .proxy_shapes import ProxyShapesRecipe, build_vae, shapes_vocabulary
from .proxy_training import diffusion_step, lr_factor, make_optimizer, target_batch, token_ids

__all__ = ["TRAIN_DATA_SEED", "background_check", "latent_std", "make_proxy_shapes_base", "render_scenes", "vae_psnr"]

# Training scenes are those of dataset seed 0; the held-out checks draw `PROXY_HELD_OUT_SEED`'s.
TRAIN_DATA_SEED = 0
_RESUME = "resume"


def render_scenes(indices: range | list[int], size: int, objects: tuple[int, int],
                  seed: int = TRAIN_DATA_SEED) -> tuple[torch.Tensor, list[str]]:
    """Shapes scenes as a (B, 3, size, size) tensor in [-1, 1], and their prompts."""
    scenes = [shapes_scene(i, size, objects, seed) for i in indices]
    return target_batch([scene.render() for scene in scenes]), [scene.prompt for scene in scenes]


def _random_crops(images: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    corners = torch.randint(0, images.shape[-1] - crop + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([image[:, y : y + crop, x : x + crop] for image, (y, x) in zip(images, corners)])


@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, count: int = 64, size: int = 128, objects: tuple[int, int] = (1, 4),
             seed: int = PROXY_HELD_OUT_SEED, batch: int = 16) -> float:
    """Mean PSNR (dB, 8-bit images) of the VAE's reconstructions (posterior mean, decoded) of
    `count` scenes of dataset `seed`, another seed than training's."""
    scores = []
    for start in range(0, count, batch):
        images, _ = render_scenes(range(start, min(count, start + batch)), size, objects, seed)
        decoded = vae.decode(vae.encode(images).latent_dist.mean).sample
        quantised = ((decoded.clamp(-1, 1) + 1) * 127.5).round()
        error = (quantised - (images + 1) * 127.5).pow(2).mean(dim=(1, 2, 3))
        scores += (10 * torch.log10(255.0**2 / error.clamp(min=1e-10))).tolist()
    return float(np.mean(scores))


@torch.no_grad()
def latent_std(vae: AutoencoderKL, count: int, size: int, objects: tuple[int, int], batch: int = 16) -> float:
    """Std of the (unscaled) latents of `count` training scenes: SD sets scaling_factor to its inverse."""
    latents = [vae.encode(render_scenes(range(s, min(count, s + batch)), size, objects)[0]).latent_dist.sample()
               for s in range(0, count, batch)]
    return float(torch.cat(latents).std())


@torch.no_grad()
def background_check(models: ProxyModels, vae: AutoencoderKL, recipe: ProxyShapesRecipe, count: int = 16,
                     timestep: int = 980) -> dict[str, float]:
    """A cheap check that the prompt's background colour is used, for logs during training.

    Noises held-out scenes' latents to `timestep` (too noisy to read colours from), predicts the
    clean latents once, decodes them and measures the RGB distance (0-255) of the image's border
    (background in every scene) to the prompt's background colour, with the real prompts and
    with the prompts rolled by one. Real well below rolled = the colour words are bound.
    """
    scenes = [shapes_scene(i, recipe.image_size, recipe.objects, PROXY_HELD_OUT_SEED) for i in range(count)]
    images = target_batch([s.render() for s in scenes])
    latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    background = torch.tensor([s.background.rgb for s in scenes], dtype=torch.float32)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((count,), timestep, dtype=torch.long)
    noisy = models.scheduler.add_noise(latents, noise, t)
    alpha_bar = models.scheduler.alphas_cumprod[timestep]
    prompts = [s.prompt for s in scenes]
    border = torch.ones(recipe.image_size, recipe.image_size, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    result = {}
    for name, used in (("real", prompts), ("rolled", prompts[1:] + prompts[:1])):
        text = models.text_encoder(token_ids(models.tokenizer, used))[0]
        v = models.unet(noisy, t, encoder_hidden_states=text).sample
        x0 = alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * v
        rgb = (vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1) + 1) * 127.5
        result[f"background_{name}"] = float((rgb[:, :, border].mean(dim=2) - background).norm(dim=1).mean())
    return result


def _save_state(out_dir: Path, state: dict) -> None:
    folder = out_dir / _RESUME
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "state.pt") as partial:
        torch.save(state, partial)


def _vae_stage(recipe: dict) -> dict:
    """What the VAE stage depends on, of a recipe as a dict: the UNet's steps may change after it."""
    return {"image_size": recipe["image_size"], "objects": recipe["objects"], "vae": recipe["vae"],
            "seed": recipe["unet"]["seed"]}


def _load_state(out_dir: Path, recipe: ProxyShapesRecipe) -> dict | None:
    path = out_dir / _RESUME / "state.pt"
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    ours = asdict(recipe)
    same = _vae_stage(state["recipe"]) == _vae_stage(ours) if state["stage"] in ("vae", "vae_done") \
        else state["recipe"] == ours
    if not same:
        raise UsageError(f"{path} holds a run of another recipe (steps or sizes differ); pass the same "
                         f"options as that run, another OUT_DIR, or delete {path.parent} to start again.")
    return state


def _train_vae(recipe: ProxyShapesRecipe, out_dir: Path, state: dict | None, log: Callable[[str], None],
               log_every: int, save_every: int) -> tuple[AutoencoderKL, dict]:
    """Stage 1: train the VAE (or resume it from `state`), set its scaling factor; returns it and its stats."""
    vr = recipe.vae
    torch.manual_seed(recipe.unet.seed)
    vae = build_vae(vr, recipe.image_size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=vr.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(recipe.unet.seed)
    first, seconds = 0, 0.0
    if state is not None:
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        first, seconds = state["step"], state["seconds"]
        log(f"vae: resumed at step {first}")
    started = time.perf_counter() - seconds
    running = []
    for step in range(first, vr.steps):
        # 1. fresh scenes, one random crop each
        images, _ = render_scenes(range(step * vr.batch_size, (step + 1) * vr.batch_size), recipe.image_size,
                                  recipe.objects)
        crops = _random_crops(images, vr.crop, generator)
        # 2. reconstruct through a posterior sample; L1 + MSE + a small KL
        for group in optimizer.param_groups:
            group["lr"] = vr.lr * lr_factor(step, vr.steps, vr.warmup_steps)
        posterior = vae.encode(crops).latent_dist
        decoded = vae.decode(posterior.sample(generator=generator)).sample
        loss = (F.l1_loss(decoded, crops) + vr.mse_weight * F.mse_loss(decoded, crops)
                + vr.kl_weight * posterior.kl().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        done = step + 1
        if done % log_every == 0 or done == vr.steps:
            elapsed = time.perf_counter() - started
            log(f"vae step {done}/{vr.steps} loss {np.mean(running):.4f} {elapsed / done:.3f} s/step "
                f"{elapsed / 60:.1f} min")
            running = []
        if save_every and done % save_every == 0 and done < vr.steps:
            _save_state(out_dir, {"recipe": asdict(recipe), "stage": "vae", "step": done, "vae": vae.state_dict(),
                                  "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                  "seconds": time.perf_counter() - started})
    vae.eval().requires_grad_(False)
    std = latent_std(vae, 256, recipe.image_size, recipe.objects)
    vae.register_to_config(scaling_factor=1.0 / std)
    stats = {"vae_train_seconds": round(time.perf_counter() - started, 1), "latent_std": round(std, 4),
             "scaling_factor": round(1.0 / std, 4),
             "vae_psnr_held_out": round(vae_psnr(vae, 64, recipe.image_size, recipe.objects), 2)}
    log(f"vae done: latent std {std:.4f}, scaling_factor {1 / std:.4f}, held-out PSNR {stats['vae_psnr_held_out']} dB")
    vae.save_pretrained(out_dir / "vae")
    _save_state(out_dir, {"recipe": asdict(recipe), "stage": "vae_done", "vae_stats": stats})
    return vae, stats


def make_proxy_shapes_base(
    out_dir: str | Path,
    recipe: ProxyShapesRecipe | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 100,
    check_every: int = 1000,
    save_every: int | None = 500,
) -> Path:
    """Train the shapes base's VAE, then its UNet and text encoder, and save it to `out_dir`.

    Args:
        out_dir: destination folder in the diffusers layout (see `proxy_shapes.py`). If it
            holds the `resume/` state of an interrupted run of the same recipe, the run continues.
        recipe: sizes and training (`ProxyShapesRecipe()`).
        log: receives progress lines (loss, speed; a background-colour check every `check_every`
            UNet steps, see `background_check`); None logs nothing.
        save_every: keep the resumable state every this many steps of either stage, and save the
            UNet stage's EMA weights to `out_dir` then too, so an interrupted run leaves a usable base.

    Returns:
        `out_dir` as a Path. Its `training.json` holds the recipe, the VAE's held-out PSNR and
        scaling factor, the steps and the time taken.
    """
    recipe = recipe or ProxyShapesRecipe()
    log = log or (lambda line: None)
    out_dir = Path(out_dir)
    state = _load_state(out_dir, recipe)
    if state is not None and state["stage"] in ("vae_done", "unet"):
        vae = AutoencoderKL.from_pretrained(out_dir / "vae").eval().requires_grad_(False)
        vae_stats = state["vae_stats"]
        state = state if state["stage"] == "unet" else None
    else:
        vae, vae_stats = _train_vae(recipe, out_dir, state, log, log_every, save_every or 0)
        state = None

    # 2. the UNet and the text encoder in the frozen VAE's latents
    ur = recipe.unet
    models = build_proxy_models(ur, out_dir / "tokenizer", in_channels=vae.config.latent_channels,
                                words=shapes_vocabulary())
    models.text_encoder.requires_grad_(ur.train_text_encoder)
    ema = ProxyModels(models.tokenizer, copy.deepcopy(models.text_encoder).eval(),
                      copy.deepcopy(models.unet).eval(), models.scheduler)
    optimizer = make_optimizer(models, ur)
    generator = torch.Generator().manual_seed(ur.seed)
    first, seconds = 0, 0.0
    if state is not None:
        for module, key in ((models.unet, "unet"), (models.text_encoder, "text_encoder"), (ema.unet, "ema_unet"),
                            (ema.text_encoder, "ema_text_encoder")):
            module.load_state_dict(state[key])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        first, seconds = state["step"], state["seconds"]
        log(f"unet: resumed at step {first}")
    started = time.perf_counter() - seconds

    def metadata(step: int) -> dict:
        return {"recipe": asdict(recipe), **vae_stats, "steps_done": step,
                "unet_train_seconds": round(time.perf_counter() - started, 1),
                "torch_threads": torch.get_num_threads(), "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
                "data": f"shapes_scene, dataset seed {TRAIN_DATA_SEED}, {recipe.image_size} px, in memory"}

    running = []
    for step in range(first, ur.steps):
        # 1. fresh scenes (scene i of the stream is shapes scene i, never repeated), encoded
        images, prompts = render_scenes(range(step * ur.batch_size, (step + 1) * ur.batch_size), recipe.image_size,
                                        recipe.objects)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator=generator) * vae.config.scaling_factor

        # 2. one update of the UNet and text encoder, and their average, as the proxy base's
        running.append(diffusion_step(models, ema, optimizer, ur, latents, prompts, step, generator))

        # 3. logs, snapshots and the resumable state
        done = step + 1
        if done % log_every == 0 or done == ur.steps:
            elapsed = time.perf_counter() - started
            log(f"step {done}/{ur.steps} loss {np.mean(running):.4f} {elapsed / done:.3f} s/step "
                f"{elapsed / 60:.1f} min")
            running = []
        if done % check_every == 0 or done == ur.steps:
            check = background_check(ema, vae, recipe)
            log(f"step {done} background check (RGB distance) " + " ".join(f"{k} {v:.1f}" for k, v in check.items()))
        if save_every and done % save_every == 0 and done < ur.steps:
            save_proxy_base(ema, out_dir, metadata(done), vae=vae)
            _save_state(out_dir, {
                "recipe": asdict(recipe), "stage": "unet", "step": done, "vae_stats": vae_stats,
                "unet": models.unet.state_dict(), "text_encoder": models.text_encoder.state_dict(),
                "ema_unet": ema.unet.state_dict(), "ema_text_encoder": ema.text_encoder.state_dict(),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "seconds": time.perf_counter() - started})
    saved = save_proxy_base(ema, out_dir, metadata(ur.steps), vae=vae)
    shutil.rmtree(out_dir / _RESUME, ignore_errors=True)
    return saved


def recipe_for(steps: int | None = None, vae_steps: int | None = None, seed: int = 0) -> ProxyShapesRecipe:
    """The default recipe with the UNet's steps, the VAE's steps and the seed replaced where given."""
    recipe = ProxyShapesRecipe()
    unet = replace(recipe.unet, seed=seed, **({} if steps is None else {"steps": steps}))
    vae = recipe.vae if vae_steps is None else replace(recipe.vae, steps=vae_steps)
    return replace(recipe, unet=unet, vae=vae)
