"""Text + control image -> images, with a Lite module, the original ControlNet, or no control.

It needs its own denoising loop: `StableDiffusionControlNetPipeline` refuses any control
model that is not a `ControlNetModel`. The loop is Stable Diffusion's, step for step, so
with `controlnet_conditioning_scale=0` (or no control) it gives the base model's image for
the same seed.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import PIL.Image
import torch
from diffusers import ControlNetModel, DDIMScheduler, DiffusionPipeline, ImagePipelineOutput, UniPCMultistepScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from .bases.loading import DEFAULT_BASE, BaseModels, load_base
from .training.checkpoint import verify_module_folder
from .controls import controlled_unet, install_control_hooks, load_control, prepare_control
from .bases.latents import decode_latents, encode_text
from .model import LiteControlNetModel, unet_residual_layout
from .sampling import SampleSettings

logger = logging.getLogger(__name__)

SCHEDULERS = {"unipc": UniPCMultistepScheduler, "ddim": DDIMScheduler}
MAX_CONDITIONING_SCALE = 10.0  # far beyond any useful strength: larger is a typo
MAX_GUIDANCE_SCALE = 100.0


def check_sampling_args(
    num_inference_steps: int,
    guidance_scale: float,
    controlnet_conditioning_scale: float,
    height: int | None = None,
    width: int | None = None,
    multiple: int = 1,
) -> None:
    """Refuse sampling settings that would give a black image, noise or an error deep in the loop.

    Each message names the argument, its command-line flag, and what would be accepted.
    """
    def bad(name: str, flag: str, value: Any, accepted: str) -> ValueError:
        return ValueError(f"{name}={value!r} ({flag}) is invalid: expected {accepted}.")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise bad("num_inference_steps", "--steps", num_inference_steps, "a whole number >= 1 (e.g. 20)")
    if not number(guidance_scale) or not 0 <= guidance_scale <= MAX_GUIDANCE_SCALE:
        raise bad("guidance_scale", "--guidance", guidance_scale,
                  f"a finite number from 0 to {MAX_GUIDANCE_SCALE:g} (<= 1 turns guidance off; 7.5 is usual)")
    if not number(controlnet_conditioning_scale) or not 0 <= controlnet_conditioning_scale <= MAX_CONDITIONING_SCALE:
        raise bad("controlnet_conditioning_scale", "--scale", controlnet_conditioning_scale,
                  f"a finite number from 0 (no control) to {MAX_CONDITIONING_SCALE:g}")
    for name, size in (("height", height), ("width", width)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < multiple
                                 or size % multiple or size > 8192):
            raise bad(name, f"--{name}", size, f"a multiple of {multiple} from {multiple} to 8192, or None for the "
                      "control image's size")


def check_control_fits(control: torch.nn.Module, unet: Any, vae_scale_factor: int) -> None:
    """Refuse a control module made for another base: its residuals would not fit the UNet's skips.

    Lite modules and ControlNets are checked; other kinds are left to fail in their own words."""
    config = control.config
    expected = unet_residual_layout(unet.config)
    if isinstance(control, LiteControlNetModel):
        found = (tuple(config.residual_channels), tuple(config.residual_levels), config.mid_channels)
        scale = config.vae_scale_factor
    elif isinstance(control, ControlNetModel):  # a copy of the encoder of the UNet it was made from
        found = unet_residual_layout(config)
        scale = 2 ** (len(config.conditioning_embedding_out_channels) - 1)
    else:
        return
    if found != expected or scale != vae_scale_factor:
        raise ValueError(
            f"This {type(control).__name__} was made for another base: its residuals have channels {list(found[0])} "
            f"(mid {found[2]}, image/latent scale {scale}), but this base's UNet takes {list(expected[0])} (mid "
            f"{expected[2]}, scale {vae_scale_factor}). Sample with the base it was trained on (its run's "
            "train_config.json names it)."
        )


class LiteControlNetPipeline(DiffusionPipeline):
    """Stable Diffusion with a control module (`LiteControlNetModel` or `ControlNetModel`).

    Args:
        vae: the base's `AutoencoderKL`, or None for a pixel-space base.
        text_encoder, tokenizer, unet, scheduler: the frozen base model.
        controlnet: the control module, or None for the base model alone.
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["vae", "controlnet"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, controlnet=None):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, controlnet=controlnet
        )
        if unet is not None:  # before the UNet is compiled or run (see install_control_hooks)
            install_control_hooks(unet)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )

    @classmethod
    def from_base(
        cls,
        base: str | Path | BaseModels = DEFAULT_BASE,
        controlnet: torch.nn.Module | str | Path | None = None,
        scheduler: str | None = "unipc",
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **load_kwargs: Any,
    ) -> LiteControlNetPipeline:
        """Assemble a pipeline from a base model and a control module.

        Args:
            base: hub id, local folder, "proxy" or "tiny" (see `load_base`), or a base already
                loaded (`BaseModels`: its networks are shared, not copied).
            controlnet: a control module, the folder of one (`save_pretrained`), or None.
            scheduler: "unipc" (default, good in 20 steps) or "ddim"; None keeps the base's own
                (as the fidelity studies sample: their committed scores were taken so).
            torch_dtype: e.g. torch.float16 on a GPU, for what is loaded here.
            device: where to run.
        """
        models = base if isinstance(base, BaseModels) else load_base(base, torch_dtype=torch_dtype, **load_kwargs)
        if isinstance(controlnet, (str, Path)):
            verify_module_folder(controlnet)  # flipped bytes would change the image silently
            controlnet = load_control(controlnet, **({"torch_dtype": torch_dtype} if torch_dtype else {}))
        if controlnet is not None:
            check_control_fits(controlnet, models.unet, models.vae_scale_factor)
            if torch_dtype is not None and controlnet.dtype != torch_dtype:  # a module given in memory
                controlnet = controlnet.to(dtype=torch_dtype)
        pipe = cls(
            vae=models.vae,
            text_encoder=models.text_encoder,
            tokenizer=models.tokenizer,
            unet=models.unet,
            scheduler=models.scheduler,
            controlnet=controlnet,
        )
        if scheduler is not None:
            pipe.set_scheduler(scheduler)
        return pipe.to(device) if device is not None else pipe

    def base_models(self) -> BaseModels:
        """The frozen base as `BaseModels` (shares the pipeline's modules)."""
        return BaseModels(self.tokenizer, self.text_encoder, self.unet, self.scheduler, self.vae)

    def set_scheduler(self, name: str) -> None:
        """Switch the sampler: "unipc" or "ddim" (same noise schedule as the base)."""
        if name not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {name!r}: use one of {sorted(SCHEDULERS)}.")
        self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config)

    # -- memory options that Colab users expect ------------------------------------------------

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time (less peak memory, same images)."""
        if self.vae is not None:
            self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        if self.vae is not None:
            self.vae.disable_slicing()

    def enable_xformers_if_available(self) -> bool:
        """Use xformers attention when it is installed and works here; otherwise keep PyTorch SDPA.

        Returns whether xformers is now in use; the reason it is not is logged.
        """
        from .training.attention import xformers_status

        usable, reason = xformers_status()
        if not usable:
            logger.info("xformers not used (%s); PyTorch SDPA attention stays on.", reason)
            return False
        self.enable_xformers_memory_efficient_attention()
        return True

    # -- sampling ------------------------------------------------------------------------------

    def prepare_control_image(
        self, image: Any, batch_size: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Control images as a (batch_size, C, height, width) tensor in [0, 1].

        `image` is a PIL image, a tensor in [0, 1], or a list of either: one for all prompts or
        one per prompt.
        """
        images = image if isinstance(image, list) else [image]
        if len(images) not in (1, batch_size):
            raise ValueError(f"Got {len(images)} control images for {batch_size} prompts: give one, or one per prompt.")
        control = self.control_image_processor.preprocess(images, height=height, width=width).to(torch.float32)
        if control.shape[0] == 1 and batch_size > 1:
            control = control.repeat(batch_size, 1, 1, 1)
        # contiguous: the processor's NHWC->NCHW permute would otherwise carry a channels-last
        # layout into the residuals and through the UNet (slower on a GPU)
        return control.to(device=device, dtype=dtype).contiguous()

    def check_inputs(self, num_inference_steps: int, guidance_scale: float, controlnet_conditioning_scale: float,
                     height: int | None, width: int | None) -> None:
        """`check_sampling_args`, and the number of steps against this scheduler's range."""
        check_sampling_args(num_inference_steps, guidance_scale, controlnet_conditioning_scale, height, width,
                            self.vae_scale_factor)
        # as many steps as training timesteps already breaks UniPC (it repeats the last timestep)
        train_timesteps = self.scheduler.config.num_train_timesteps
        if num_inference_steps >= train_timesteps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} (--steps) is beyond the range of the "
                f"{type(self.scheduler).__name__} of this base: expected fewer than its {train_timesteps} training "
                "timesteps (20 to 50 is usual)."
            )

    def _default_size(self, image: Any) -> tuple[int, int]:
        first = (image if isinstance(image, list) else [image])[0] if image is not None else None
        if isinstance(first, PIL.Image.Image):
            width, height = first.size
        elif isinstance(first, torch.Tensor):
            height, width = first.shape[-2:]
        else:
            height = width = self.unet.config.sample_size * self.vae_scale_factor
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: Any = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = SampleSettings.steps,
        guidance_scale: float = SampleSettings.guidance,
        controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: one prompt or a list (the batch).
            image: the control image(s): PIL, tensor in [0, 1], or a list (one, or one per prompt).
                None, or a pipeline without `controlnet`, gives the base model alone.
            negative_prompt: what to steer away from (the empty prompt by default).
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance; <= 1 turns it off.
            controlnet_conditioning_scale: control strength (0: the base model's image).
            control_guidance_start, control_guidance_end: the fraction of the steps during which
                control is applied.
            num_images_per_prompt: images per prompt.
            height, width: output size; by default the control image's, rounded down to what the
                UNet accepts.
            generator: seed(s) for the initial noise.
            latents: initial noise, instead of drawing it.
            eta: DDIM's eta.
            output_type: "pil", "np", "pt" or "latent".
        """
        # 1. check inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.check_inputs(num_inference_steps, guidance_scale, controlnet_conditioning_scale, height, width)
        if not 0.0 <= control_guidance_start < control_guidance_end <= 1.0:
            raise ValueError(
                f"Need 0 <= control_guidance_start < control_guidance_end <= 1, got "
                f"{control_guidance_start} and {control_guidance_end}."
            )
        use_control = self.controlnet is not None and image is not None
        if image is not None and self.controlnet is None:
            logger.warning("A control image was given but the pipeline has no controlnet: it is ignored.")
        default_height, default_width = self._default_size(image)
        height, width = height or default_height, width or default_width
        device = self._execution_device
        batch_size = len(prompts) * num_images_per_prompt
        do_cfg = guidance_scale > 1.0

        # 2. encode the prompts (negative first, as Stable Diffusion does)
        prompt_embeds = encode_text(self.tokenizer, self.text_encoder, prompts, device)
        prompt_embeds = prompt_embeds.to(self.unet.dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if do_cfg:
            negatives = [""] * len(prompts) if negative_prompt is None else negative_prompt
            negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
            if len(negatives) != len(prompts):
                raise ValueError(f"Got {len(negatives)} negative prompts for {len(prompts)} prompts.")
            negative_embeds = encode_text(self.tokenizer, self.text_encoder, negatives, device)
            negative_embeds = negative_embeds.to(self.unet.dtype).repeat_interleave(num_images_per_prompt, dim=0)
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])

        # 3. the control image, and what the module computes from it alone (once per generation)
        # (a diffusers model's `.dtype` walks all its modules: read it once, not per step)
        unet_dtype = self.unet.dtype
        prepared = None
        if use_control:
            control_image = self.prepare_control_image(
                image, len(prompts), height, width, device, self.controlnet.dtype
            ).repeat_interleave(num_images_per_prompt, dim=0)
            if do_cfg:
                control_image = torch.cat([control_image] * 2)
            prepared = prepare_control(self.controlnet, control_image, unet_dtype)

        # 4. timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch_size, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        latents = latents.to(device) * self.scheduler.init_noise_sigma
        step_kwargs = {}
        step_params = set(inspect.signature(self.scheduler.step).parameters)
        if "eta" in step_params:
            step_kwargs["eta"] = eta
        if "generator" in step_params:
            step_kwargs["generator"] = generator

        # 5. denoise
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            # control applies on the steps inside [start, end] of the schedule, as in diffusers
            inside = not (i / len(timesteps) < control_guidance_start or (i + 1) / len(timesteps) > control_guidance_end)
            scale = controlnet_conditioning_scale if inside else 0.0
            noise_pred = controlled_unet(self.unet, model_input, t, prompt_embeds,
                                         prepared if scale != 0 else None, scale)
            if do_cfg:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]

        # 6. decode
        if output_type == "latent":
            images = latents
        else:
            images = decode_latents(self.vae, latents, generator=generator)
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
