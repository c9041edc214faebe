"""Text + control image(s) -> images, with Lite modules, the original ControlNet, T2I-Adapters, or no
control: diffusers' `StableDiffusionControlNetPipeline`, with its arguments, checks and loaders, for
every kind of control module.

The pipeline subclasses diffusers' ControlNet pipeline and writes out only its denoising loop, step
for step as diffusers' (whose loop refuses any control model that is not a `ControlNetModel`):
where diffusers runs `self.controlnet(...)` and then `self.unet(...)`, this loop runs the control
step of this library (`prepare_control` once per generation, `controlled_unet` at every step).
With `controlnet_conditioning_scale=0` (or no control) it gives `StableDiffusionPipeline`'s image
for the same seed, bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import PIL.Image
import torch
import transformers

# diffusers' Stable Diffusion pipelines import CLIP's image processor (for a safety checker and
# IP-Adapter, which this package does not load by default); without torchvision, transformers
# warns at that import, on every start of every command, that it uses its PIL version instead
_verbosity = transformers.logging.get_verbosity()
transformers.logging.set_verbosity_error()
try:
    from diffusers import (
        ControlNetModel,
        DDIMScheduler,
        DiffusionPipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        UniPCMultistepScheduler,
    )
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
    from diffusers.configuration_utils import FrozenDict
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
    from diffusers.pipelines.controlnet.pipeline_controlnet import retrieve_timesteps
    from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
    from diffusers.utils.torch_utils import is_compiled_module
finally:
    transformers.logging.set_verbosity(_verbosity)

from .bases.loading import DEFAULT_BASE, BaseModels, load_base
from .training.checkpoint import verify_module_folder
from .controls import MultiControlModel, controlled_unet, install_control_hooks, load_control, prepare_control
from .bases.latents import decode_latents
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

    Lite modules and ControlNets are checked (each of several); other kinds are left to fail in their
    own words."""
    if isinstance(control, MultiControlNetModel):
        for net in control.nets:
            check_control_fits(net, unet, vae_scale_factor)
        return
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


PIPELINE_FILE = "lite_controlnet_pipeline"  # the module a saved folder names in model_index.json


def _as_float(value: Any) -> Any:
    """A Python number for a number, a 0-d tensor or a numpy scalar (what diffusers users pass);
    anything else unchanged, for the checks to name."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic) and np.ndim(value) == 0:
        return value.item()
    return value


def fix_scheduler_config(scheduler: Any) -> Any:
    """`clip_sample=False`, as `StableDiffusionPipeline` sets it for configs that leave it on (DDIM's
    and DDPM's default): they would otherwise clip their estimate of the clean latents to [-1, 1],
    a range SD's latents exceed."""
    if scheduler is not None and getattr(scheduler.config, "clip_sample", False) is True:
        scheduler._internal_dict = FrozenDict({**scheduler.config, "clip_sample": False})
    return scheduler


@contextlib.contextmanager
def clip_text_model_alias(text_encoder: Any) -> Iterator[None]:
    """Lets diffusers' `clip_skip` find the final layer norm at `text_encoder.text_model`, where
    transformers before 5 kept it (transformers 5 made `CLIPTextModel` flat)."""
    flat = text_encoder is not None and hasattr(text_encoder, "final_layer_norm") \
        and not hasattr(text_encoder, "text_model")
    if flat:
        text_encoder.__dict__["text_model"] = text_encoder  # a plain attribute: not a submodule, no weights
    try:
        yield
    finally:
        if flat:
            del text_encoder.__dict__["text_model"]


class LiteControlNetPipeline(StableDiffusionControlNetPipeline):
    """Stable Diffusion with control modules: `LiteControlNetModel`, `ControlNetModel`, `T2IAdapter`,
    or a list of them (several at once, of any kinds).

    A `StableDiffusionControlNetPipeline` for every kind of control: it inherits diffusers' prompt
    encoding (`prompt_embeds`, `clip_skip`, LoRA scale), its input checks, its loaders
    (`load_lora_weights`, `load_textual_inversion`, `load_ip_adapter`, `from_single_file`) and
    helpers (`enable_freeu`, `enable_vae_tiling`, offloading, slicing). Only the denoising loop is
    written out here, as diffusers' step for step, because diffusers' loop refuses other control
    types; its control step (`prepare_control` + `controlled_unet`) is the only part that is this
    library's own.

    Loading as diffusers does: `LiteControlNetPipeline.from_pretrained(folder)` or
    `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` of a folder written by
    `save_pretrained`; `LiteControlNetPipeline.from_single_file("model.safetensors",
    controlnet=control)` for an SD1.5 checkpoint file (offline, add `config=` the folder of a
    diffusers SD1.5, e.g. the base's).

    Args:
        vae: the base's `AutoencoderKL`, or None for a pixel-space base.
        text_encoder, tokenizer, unet, scheduler: the frozen base model.
        controlnet: a control module, a list of them, or None for the base model alone.
        safety_checker, feature_extractor, image_encoder: as diffusers' (optional; the image
            encoder is IP-Adapter's).
        requires_safety_checker: as diffusers'.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->controlnet->unet->vae"
    _optional_components = ["vae", "controlnet", "safety_checker", "feature_extractor", "image_encoder"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, controlnet=None, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False):
        # diffusers' __init__ needs a VAE: a pixel-space base has none
        DiffusionPipeline.__init__(self)
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlModel(controlnet)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=fix_scheduler_config(scheduler),
            controlnet=controlnet, safety_checker=safety_checker, feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        if unet is not None:  # before the UNet is compiled or run (see install_control_hooks)
            install_control_hooks(unet)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True)
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    @classmethod
    def from_base(
        cls,
        base: str | Path | BaseModels = DEFAULT_BASE,
        controlnet: torch.nn.Module | str | Path | Sequence[torch.nn.Module | str | Path] | None = None,
        scheduler: str | None = "unipc",
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **load_kwargs: Any,
    ) -> LiteControlNetPipeline:
        """Assemble a pipeline from a base model and control module(s).

        Args:
            base: hub id, local folder, "proxy" or "tiny" (see `load_base`), or a base already
                loaded (`BaseModels`: its networks are shared, not copied).
            controlnet: a control module, the folder of one (`save_pretrained`), a list of either
                (several controls at once), or None.
            scheduler: "unipc" (default, good in 20 steps) or "ddim"; None keeps the base's own
                (as the fidelity studies sample: their committed scores were taken so).
            torch_dtype: e.g. torch.float16 on a GPU, for what is loaded here.
            device: where to run.
        """
        models = base if isinstance(base, BaseModels) else load_base(base, torch_dtype=torch_dtype, **load_kwargs)
        many = isinstance(controlnet, (list, tuple))
        controls = []
        for control in controlnet if many else ([] if controlnet is None else [controlnet]):
            if isinstance(control, (str, Path)):
                verify_module_folder(control)  # flipped bytes would change the image silently
                control = load_control(control, **({"torch_dtype": torch_dtype} if torch_dtype else {}))
            check_control_fits(control, models.unet, models.vae_scale_factor)
            if torch_dtype is not None and control.dtype != torch_dtype:  # a module given in memory
                control = control.to(dtype=torch_dtype)
            controls.append(control)
        pipe = cls(
            vae=models.vae,
            text_encoder=models.text_encoder,
            tokenizer=models.tokenizer,
            unet=models.unet,
            scheduler=models.scheduler,
            controlnet=controls if many else (controls[0] if controls else None),
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
        self.scheduler = fix_scheduler_config(SCHEDULERS[name].from_config(self.scheduler.config))

    # -- saving and loading as diffusers does ----------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """diffusers' `save_pretrained`, plus a one-line `lite_controlnet_pipeline.py` that
        `model_index.json` names, so that `DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)` loads this class (diffusers' custom-pipeline mechanism;
        `LiteControlNetPipeline.from_pretrained(folder)` needs no such flag)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        (folder / f"{PIPELINE_FILE}.py").write_text(
            '"""Lets `DiffusionPipeline.from_pretrained(this folder, trust_remote_code=True)` build the pipeline of '
            'lite-controlnet (pip install lite-controlnet)."""\n\n'
            "from lite_controlnet.pipeline import LiteControlNetPipeline  # noqa: F401\n"
        )
        index = folder / "model_index.json"
        config = json.loads(index.read_text())
        config["_class_name"] = [PIPELINE_FILE, type(self).__name__]
        index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        """The saved config, with this class for the class the folder names: loading through this
        class runs no code from the folder."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if list(config.get("_class_name") or []) == [PIPELINE_FILE, cls.__name__]:
            config["_class_name"] = cls.__name__
        return loaded

    # -- memory options that Colab users expect ------------------------------------------------

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time (less peak memory, same images)."""
        if self.vae is not None:
            self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        if self.vae is not None:
            self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Decode large images tile by tile (less peak memory; tiles blend at their seams)."""
        if self.vae is not None:
            self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        if self.vae is not None:
            self.vae.disable_tiling()

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

    # -- inputs --------------------------------------------------------------------------------

    def encode_prompt(self, *args: Any, clip_skip: int | None = None, **kwargs: Any) -> tuple:
        """diffusers' `encode_prompt`, whose `clip_skip` also works with transformers 5's CLIP."""
        with clip_text_model_alias(self.text_encoder) if clip_skip is not None else contextlib.nullcontext():
            return super().encode_prompt(*args, clip_skip=clip_skip, **kwargs)

    def control_modules(self) -> list[torch.nn.Module]:
        """The control modules, one per control image (none without `controlnet`)."""
        controlnet = getattr(self, "controlnet", None)
        controlnet = controlnet._orig_mod if is_compiled_module(controlnet) else controlnet
        if controlnet is None:
            return []
        return list(controlnet.nets) if isinstance(controlnet, MultiControlNetModel) else [controlnet]

    def prepare_control_image(
        self, image: Any, batch_size: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Control images as a (batch_size, C, height, width) tensor in [0, 1].

        `image` is a PIL image, a tensor in [0, 1], or a list of either: one for all prompts or
        one per prompt.
        """
        return self.prepare_image(image, width, height, batch_size, 1, device, dtype)

    def prepare_image(self, image, width, height, batch_size, num_images_per_prompt, device, dtype,
                      do_classifier_free_guidance=False, guess_mode=False):
        """diffusers' `prepare_image`, made contiguous: the processor's NHWC->NCHW permute would
        otherwise carry a channels-last layout into the residuals and through the UNet (slower on
        a GPU)."""
        return super().prepare_image(image, width, height, batch_size, num_images_per_prompt, device, dtype,
                                     do_classifier_free_guidance, guess_mode).contiguous()

    def check_inputs(self, prompt, image, callback_steps, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                     controlnet_conditioning_scale=1.0, control_guidance_start=0.0, control_guidance_end=1.0,
                     callback_on_step_end_tensor_inputs=None, *, num_inference_steps=None, guidance_scale=None,
                     height=None, width=None):
        """diffusers' checks for every kind of control module (one, or a list with one image, scale
        and control window each), `check_sampling_args`, and the number of steps against this
        scheduler's range.

        `image` None is accepted: the base model alone."""
        # this library's own checks first: each names its command-line flag
        for scale in controlnet_conditioning_scale:
            check_sampling_args(num_inference_steps if num_inference_steps is not None else 1,
                                guidance_scale if guidance_scale is not None else 1.0, scale, height, width,
                                self.vae_scale_factor)
        # as many steps as training timesteps already breaks UniPC (it repeats the last timestep)
        train_timesteps = self.scheduler.config.num_train_timesteps
        if num_inference_steps is not None and num_inference_steps >= train_timesteps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} (--steps) is beyond the range of the "
                f"{type(self.scheduler).__name__} of this base: expected fewer than its {train_timesteps} training "
                "timesteps (20 to 50 is usual)."
            )
        # Stable Diffusion's own: the prompt or its embeddings, the callback's tensors, IP-Adapter's
        # inputs, the size (None: the control image's, checked when it is read)
        StableDiffusionPipeline.check_inputs(
            self, prompt, height or 8, width or 8, callback_steps, negative_prompt, prompt_embeds,
            negative_prompt_embeds, ip_adapter_image, ip_adapter_image_embeds, callback_on_step_end_tensor_inputs,
        )
        if isinstance(prompt, list) and isinstance(negative_prompt, list) and len(negative_prompt) != len(prompt):
            raise ValueError(f"Got {len(negative_prompt)} negative prompts for {len(prompt)} prompts: give one, or "
                             "one per prompt.")

        # the control images: one per control module, each one or one per prompt
        nets = self.control_modules()
        if image is not None and nets:
            if len(nets) == 1:
                self.check_image(image, prompt, prompt_embeds)
            elif not isinstance(image, list):
                raise TypeError("For multiple controlnets: `image` must be type `list`")
            elif any(isinstance(i, list) for i in image):
                transposed = [list(t) for t in zip(*image)]
                if len(transposed) != len(nets):
                    raise ValueError(
                        f"For multiple controlnets: if you pass`image` as a list of list, each sublist must have the "
                        f"same length as the number of controlnets, but the sublists in `image` got {len(transposed)} "
                        f"images and {len(nets)} ControlNets.")
                for image_ in transposed:
                    self.check_image(image_, prompt, prompt_embeds)
            elif len(image) != len(nets):
                raise ValueError(
                    f"For multiple controlnets: `image` must have the same length as the number of controlnets, but "
                    f"got {len(image)} images and {len(nets)} ControlNets.")
            else:
                for image_ in image:
                    self.check_image(image_, prompt, prompt_embeds)

        # the scales and control windows, one per control module (the caller made them lists)
        scales = controlnet_conditioning_scale
        if len(scales) != max(len(nets), 1):
            raise ValueError(
                f"For multiple controlnets: When `controlnet_conditioning_scale` is specified as `list`, it must have"
                f" the same length as the number of controlnets (got {len(scales)} for {len(nets)}).")
        if len(control_guidance_start) != len(control_guidance_end):
            raise ValueError(
                f"`control_guidance_start` has {len(control_guidance_start)} elements, but `control_guidance_end` has "
                f"{len(control_guidance_end)} elements. Make sure to provide the same number of elements to each list.")
        if len(nets) > 1 and len(control_guidance_start) != len(nets):
            raise ValueError(
                f"`control_guidance_start`: {control_guidance_start} has {len(control_guidance_start)} elements but "
                f"there are {len(nets)} controlnets available. Make sure to provide {len(nets)}.")
        for start, end in zip(control_guidance_start, control_guidance_end):
            # diffusers' checks, naming the arguments and their command-line flags
            if start >= end:
                raise ValueError(f"control_guidance_start={start} (--control-start) cannot be larger or equal to "
                                 f"control_guidance_end={end} (--control-end).")
            if start < 0.0:
                raise ValueError(f"control_guidance_start={start} (--control-start) can't be smaller than 0.")
            if end > 1.0:
                raise ValueError(f"control_guidance_end={end} (--control-end) can't be larger than 1.0.")

    def _default_size(self, image: Any) -> tuple[int, int]:
        first = image
        while isinstance(first, list):  # one per control, one per prompt
            first = first[0] if first else None
        if isinstance(first, PIL.Image.Image):
            width, height = first.size
        elif isinstance(first, torch.Tensor):  # (..., C, H, W)
            height, width = first.shape[-2:]
        elif isinstance(first, np.ndarray):  # (..., H, W, C), as diffusers' image processor reads it
            height, width = first.shape[-3:-1]
        else:
            height = width = self.unet.config.sample_size * self.vae_scale_factor
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)

    # -- sampling ------------------------------------------------------------------------------

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = SampleSettings.steps,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = SampleSettings.guidance,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: Any = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        guidance_rescale: float = 0.0,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Generate images: `StableDiffusionControlNetPipeline.__call__`'s arguments, with the same
        meanings, for every kind of control module (and `StableDiffusionPipeline`'s
        `guidance_rescale`).

        Args:
            prompt: one prompt or a list (the batch); or give `prompt_embeds`.
            image: the control image(s): PIL, numpy, tensor in [0, 1], or a list (one, or one per
                prompt); with several control modules, a list of one such per module. None, or a
                pipeline without `controlnet`, gives the base model alone.
            height, width: output size; by default the control image's, rounded down to what the
                UNet accepts.
            num_inference_steps: denoising steps (20 by default: the default UniPC needs no more).
            timesteps, sigmas: a custom schedule, for schedulers whose `set_timesteps` takes one.
            guidance_scale: classifier-free guidance; <= 1 turns it off.
            negative_prompt: what to steer away from (the empty prompt by default).
            num_images_per_prompt: images per prompt.
            eta: DDIM's eta.
            generator: seed(s) for the initial noise.
            latents: initial noise, instead of drawing it.
            prompt_embeds, negative_prompt_embeds: text embeddings instead of the prompts.
            ip_adapter_image, ip_adapter_image_embeds: IP-Adapter's image prompt (`load_ip_adapter`).
            output_type: "pil", "np", "pt" or "latent".
            return_dict: a `StableDiffusionPipelineOutput` rather than a tuple.
            cross_attention_kwargs: for the attention processors (e.g. {"scale": 0.7}, the LoRA scale).
            controlnet_conditioning_scale: control strength (0: the base model's image); a number
                (float, int, 0-d tensor, numpy) or a list, one per control module.
            guess_mode: with classifier-free guidance, control applies to the conditional half of
                the batch only, the unconditional half runs the plain UNet, so guidance pushes
                towards the control as well as the prompt; a `ControlNetModel` is also run as
                diffusers does in guess mode (on the conditional half, residuals scaled from 0.1 to
                1). A Lite module or a T2I-Adapter has no such scaling: for them guess mode is the
                conditional-half control alone, and without guidance it changes nothing.
            control_guidance_start, control_guidance_end: the fraction of the steps during which
                control applies; a float or a list, one per control module.
            clip_skip: layers of CLIP to skip for the prompt embeddings.
            callback_on_step_end: called after each step as `callback(pipe, i, t, tensors)`, with the
                tensors named in `callback_on_step_end_tensor_inputs` ("latents", "prompt_embeds",
                "negative_prompt_embeds", "image"); the tensors it returns replace them.
            guidance_rescale: rescales guidance (https://huggingface.co/papers/2305.08891, 3.4).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        nets = self.control_modules()
        num_controls = max(len(nets), 1)
        if image is not None and not nets:
            logger.warning("A control image was given but the pipeline has no controlnet: it is ignored.")
            image = None

        # align format for control guidance and strength: one per control module
        if not isinstance(control_guidance_start, (list, tuple)) and isinstance(control_guidance_end, (list, tuple)):
            control_guidance_start = len(control_guidance_end) * [control_guidance_start]
        elif not isinstance(control_guidance_end, (list, tuple)) and isinstance(control_guidance_start, (list, tuple)):
            control_guidance_end = len(control_guidance_start) * [control_guidance_end]
        elif not isinstance(control_guidance_start, (list, tuple)):
            control_guidance_start, control_guidance_end = (num_controls * [control_guidance_start],
                                                            num_controls * [control_guidance_end])
        control_guidance_start = [_as_float(s) for s in control_guidance_start]
        control_guidance_end = [_as_float(e) for e in control_guidance_end]
        scales = controlnet_conditioning_scale
        scales = [_as_float(s) for s in scales] if isinstance(scales, (list, tuple)) \
            else num_controls * [_as_float(scales)]
        if prompt is not None and isinstance(prompt, tuple):
            prompt = list(prompt)

        # 1. check inputs
        default_height, default_width = self._default_size(image)
        self.check_inputs(
            prompt, image, None, negative_prompt, prompt_embeds, negative_prompt_embeds, ip_adapter_image,
            ip_adapter_image_embeds, scales, control_guidance_start, control_guidance_end,
            callback_on_step_end_tensor_inputs,
            num_inference_steps=num_inference_steps if timesteps is None and sigmas is None else None,
            guidance_scale=guidance_scale, height=height, width=width,
        )
        height, width = height or default_height, width or default_width
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. define call parameters
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None:
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        device = self._execution_device
        use_control = image is not None and bool(nets)
        guess_mode = guess_mode or any(getattr(n.config, "global_pool_conditions", False) for n in nets)

        # 3. encode the prompt (the negative first: one batch for classifier-free guidance)
        lora_scale = self.cross_attention_kwargs.get("scale", None) if self.cross_attention_kwargs is not None else None
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, lora_scale=lora_scale,
            clip_skip=self.clip_skip,
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, batch_size * num_images_per_prompt,
                self.do_classifier_free_guidance,
            )

        # 4. the control images (as the UNet's batch, both halves of guidance even in guess mode:
        # there the unconditional half takes scale 0), and what each module computes from its
        # image alone, once per generation
        # (a diffusers model's `.dtype` walks all its modules: read it once, not per step)
        unet_dtype = self.unet.dtype
        prepared: list = []
        if use_control:
            per_control = image if len(nets) > 1 else [image]
            if isinstance(per_control[0], list) and len(nets) > 1:  # nested: one list per prompt
                per_control = [list(t) for t in zip(*per_control)]
            image = [
                self.prepare_image(
                    image=image_, width=width, height=height, batch_size=batch_size * num_images_per_prompt,
                    num_images_per_prompt=num_images_per_prompt, device=device, dtype=net.dtype,
                    do_classifier_free_guidance=self.do_classifier_free_guidance,
                )
                for image_, net in zip(per_control, nets)
            ]
            height, width = image[0].shape[-2:]
            prepared = [prepare_control(net, image_, unet_dtype) for net, image_ in zip(nets, image)]
            image = image if len(nets) > 1 else image[0]

        # 5. timesteps
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps,
                                                            sigmas)
        self._num_timesteps = len(timesteps)

        # 6. initial noise
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt, self.unet.config.in_channels, height, width, prompt_embeds.dtype,
            device, generator, latents,
        )

        # 6.5 the guidance scale embedding, for UNets distilled to take one
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            guidance_scale_tensor = torch.tensor(self.guidance_scale - 1).repeat(batch_size * num_images_per_prompt)
            timestep_cond = self.get_guidance_scale_embedding(
                guidance_scale_tensor, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)

        # 7. the scheduler's extra arguments, IP-Adapter's embeddings, and which controls act at each step
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        added_cond_kwargs = ({"image_embeds": image_embeds}
                             if ip_adapter_image is not None or ip_adapter_image_embeds is not None else None)
        controlnet_keep = [
            [1.0 - float(i / len(timesteps) < s or (i + 1) / len(timesteps) > e)
             for s, e in zip(control_guidance_start, control_guidance_end)]
            for i in range(len(timesteps))
        ]
        conditional_half_only = guess_mode and self.do_classifier_free_guidance

        # 8. denoise
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)

                # the control step: this library's own (diffusers runs `self.controlnet` then `self.unet`)
                cond_scale = [s * keep for s, keep in zip(scales, controlnet_keep[i])]
                noise_pred = controlled_unet(
                    self.unet, latent_model_input, t, prompt_embeds, prepared or None, cond_scale,
                    guess_mode=guess_mode, conditional_half_only=conditional_half_only, timestep_cond=timestep_cond,
                    cross_attention_kwargs=self.cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
                )

                # perform guidance
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                if self.do_classifier_free_guidance and self.guidance_rescale > 0.0:
                    noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale)

                # compute the previous noisy sample x_t -> x_t-1
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:  # a loop: a comprehension has its own locals()
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                    new_image = callback_outputs.pop("image", image)
                    if new_image is not image:  # a new control image: what its modules compute from it, again
                        image = new_image
                        images = image if len(nets) > 1 else [image]
                        prepared = [prepare_control(net, image_, unet_dtype) for net, image_ in zip(nets, images)]

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 9. decode (the identity for a pixel-space base)
        if output_type != "latent":
            image = decode_latents(self.vae, latents, generator=generator)
            image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
        else:
            image, has_nsfw_concept = latents, None
        do_denormalize = [True] * image.shape[0] if has_nsfw_concept is None else [not n for n in has_nsfw_concept]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image, has_nsfw_concept)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw_concept)
