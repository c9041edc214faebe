"""One small interface over the control modules: Lite (three designs), the original ControlNet
and T2I-Adapter.

The pipeline, the trainer and the evaluation build, load and run a control module only through
these functions, so every kind trains and samples through the same code:

    prepared = prepare_control(control, control_image, unet_dtype)   # once per generation
    noise_pred = controlled_unet(unet, sample, t, text, prepared, conditioning_scale)  # each step

The kinds differ in what they compute once and what at every step:

| kind          | once per generation            | every step                                                 |
|---------------|--------------------------------|------------------------------------------------------------|
| `lite`        | control features               | small layers reading the UNet's skips and decoder          |
| `lite-static` | residuals (3x3 level layers)   | nothing                                                    |
| `lite-mlp`    | residuals (the paper's design) | nothing                                                    |
| `t2i-adapter` | adapter features               | nothing (added inside the UNet's encoder)                  |
| `controlnet`  | nothing                        | a trainable copy of the UNet encoder                       |

(`lite-mlp` is the pixel-MLP design of "A Lightweight ControlNet for Fine-Tuning Stable Diffusion
on Colab GPU", as published.)

Several modules act at once when `controlled_unet` is given a list of prepared controls and one
scale each (as diffusers' `MultiControlNetModel`): residuals add, feedback and adapters stack.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from diffusers import ControlNetModel, ModelMixin, T2IAdapter  # noqa: F401 (ModelMixin: see MultiControlModel)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from safetensors import SafetensorError

from .errors import UsageError
from .model import FeedbackHooks, LiteControlNetModel, forget_graphs_without_hooks, lite_design

ControlKind = Literal["lite", "lite-static", "lite-mlp", "controlnet", "t2i-adapter"]
CONTROL_KINDS = ("lite", "lite-static", "lite-mlp", "controlnet", "t2i-adapter")
LITE_KINDS = {"lite": "feedback", "lite-static": "static", "lite-mlp": "mlp"}  # kind -> `lite_design` name
CONTROL_CLASSES = {"lite": LiteControlNetModel, "controlnet": ControlNetModel, "t2i-adapter": T2IAdapter}


@dataclass
class ControlResiduals:
    """What a control module adds to the UNet's skip connections and mid block."""

    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor

    def scaled(self, scale: float | torch.Tensor = 1.0, dtype: torch.dtype | None = None) -> ControlResiduals:
        """The residuals times `scale`, in `dtype`."""
        def cast(r: torch.Tensor) -> torch.Tensor:
            r = r if isinstance(scale, (int, float)) and scale == 1 else r * scale
            return r.to(dtype) if dtype is not None else r

        return ControlResiduals(tuple(cast(r) for r in self.down), cast(self.mid))

    def unet_kwargs(self, scale: float | torch.Tensor = 1.0, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Keyword arguments for `UNet2DConditionModel.forward` (always both fields: given only the
        down residuals, diffusers takes them for a T2I-Adapter's), times `scale`, in `dtype`."""
        found = self.scaled(scale, dtype)
        return {"down_block_additional_residuals": found.down, "mid_block_additional_residual": found.mid}

    def plus(self, other: ControlResiduals) -> ControlResiduals:
        """Both controls' residuals, added (as diffusers' `MultiControlNetModel` merges them)."""
        return ControlResiduals(tuple(a + b for a, b in zip(self.down, other.down)), self.mid + other.mid)


def _check_options(target: Any, options: dict[str, Any], fixed: tuple[str, ...]) -> None:
    """Unknown module settings, and values not of the type `target`'s signature gives them (a JSON
    or YAML value: `true` for a bool, a whole number for an int, a list for a tuple), fail with
    what is accepted."""
    import inspect
    from typing import get_type_hints

    accepted = [name for name in inspect.signature(target).parameters if name not in ("self", "cls", *fixed)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"Unknown control option(s) {unknown}; {getattr(target, '__qualname__', target)} accepts "
                         f"{accepted}.")
    try:
        hints = get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # a signature whose hints cannot be resolved here: its values go unchecked  # noqa: BLE001
        hints = {}
    for name, value in options.items():
        if name in hints and not _has_type(value, hints[name]):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ValueError(f"{name}={shown} is not of the type {getattr(target, '__qualname__', target)} takes: "
                             f"{_type_name(hints[name])}")


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON or YAML is of type `hint` (unknown kinds of hint: accepted)."""
    import math
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arm) for arm in args)
    if origin is Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args))
        return all(_has_type(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    """`hint` in the words of a JSON or YAML value."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    names = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a text",
             type(None): "null"}
    if hint in names:
        return names[hint]
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0]).removeprefix('a ')}s" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def check_control_options(kind: str, options: dict[str, Any]) -> None:
    """Check a control kind's module settings (names and types) before anything is built.

    Args:
        kind: the control kind.
        options: the module's own settings, as `build_control` takes them.
    """
    if kind in LITE_KINDS:  # the settings `build_control` fixes itself are not the user's to give
        _check_options(LiteControlNetModel, options, ("residual_channels", "residual_levels", "mid_channels",
                                                      "vae_scale_factor", "design"))
    elif kind == "controlnet":
        _check_options(ControlNetModel.from_unet, options, ("unet",))
    elif kind == "t2i-adapter":
        _check_options(T2IAdapter, options, ("channels", "downscale_factor"))
    else:
        raise ValueError(f"Unknown control kind {kind!r}: use one of {CONTROL_KINDS}.")


def build_control(kind: ControlKind, unet: Any, vae_scale_factor: int = 8, **kwargs: Any) -> torch.nn.Module:
    """A freshly initialised control module that fits `unet`.

    Args:
        kind: "lite" (`LiteControlNetModel` with feedback, the default), "lite-static" (its best
            step-invariant design), "lite-mlp" (the pixel-MLP design of "A Lightweight ControlNet
            for Fine-Tuning Stable Diffusion on Colab GPU", as published), "controlnet"
            (`diffusers.ControlNetModel`, a trainable copy of the UNet encoder initialised from
            `unet`'s weights) or "t2i-adapter" (`diffusers.T2IAdapter`, the full adapter).
        unet: the base `UNet2DConditionModel`.
        vae_scale_factor: image pixels per latent pixel of the base (8 for SD, 1 without VAE).
        kwargs: the module's own settings (e.g. `level_channels=128` for Lite), over the kind's.
    """
    if kind in LITE_KINDS:
        _check_options(LiteControlNetModel, kwargs, ("residual_channels", "residual_levels", "mid_channels",
                                                     "decoder_channels", "vae_scale_factor"))
        return LiteControlNetModel.from_unet(unet, vae_scale_factor=vae_scale_factor, design=LITE_KINDS[kind], **kwargs)
    if kind == "controlnet":
        # ControlNet's condition encoder halves the image once per entry after the first;
        # it must land on the latent resolution.
        widths = (16, 32, 96, 256)[: vae_scale_factor.bit_length()]
        if 2 ** (len(widths) - 1) != vae_scale_factor:
            raise ValueError(f"ControlNet needs vae_scale_factor 1, 2, 4 or 8, got {vae_scale_factor}.")
        _check_options(ControlNetModel.from_unet, kwargs, ("unet",))
        kwargs.setdefault("conditioning_embedding_out_channels", widths)
        return ControlNetModel.from_unet(unet, **kwargs)
    if kind == "t2i-adapter":
        _check_options(T2IAdapter, kwargs, ("channels", "downscale_factor"))
        # the full adapter, as TencentARC's SD1.5 adapters (canny, depth, sketch...); its light
        # variant needs the UNet's last two widths equal (SD1.5's are; the proxy base's are not)
        settings = {"in_channels": 3, "num_res_blocks": 2, "adapter_type": "full_adapter", **kwargs}
        return T2IAdapter(channels=list(unet.config.block_out_channels), downscale_factor=vae_scale_factor,
                          **settings)
    raise ValueError(f"Unknown control kind {kind!r}: use one of {CONTROL_KINDS}.")


def control_kind_of(control: torch.nn.Module) -> str:
    """The control kind of a module (`build_control`'s inverse), e.g. of one loaded from a folder.

    A Lite module without feedback is the step-invariant design whose level layers it shares most
    settings with (`control_options` may have changed some): `lite-mlp` or `lite-static`.
    """
    module = _unwrap(control)
    if isinstance(module, ControlNetModel):
        return "controlnet"
    if isinstance(module, T2IAdapter):
        return "t2i-adapter"
    if not isinstance(module, LiteControlNetModel):
        raise ValueError(f"{type(module).__name__} is not a control module: expected one of "
                         f"{[c.__name__ for c in CONTROL_CLASSES.values()]}.")
    config = module.config
    if config.feedback:
        return "lite"
    levels = max(config.residual_levels) + 1

    def kernels(value: Any) -> tuple[int, ...]:
        return (value,) * levels if isinstance(value, int) else tuple(value)

    def shared(kind: str) -> int:
        design = lite_design(LITE_KINDS[kind], levels)
        return sum(kernels(config[key]) == kernels(value) if key == "level_kernel_size" else config[key] == value
                   for key, value in design.items() if key in config)

    return max(("lite-static", "lite-mlp"), key=shared)  # a tie: lite-static, listed first


def load_control(path: str | Path, **kwargs: Any) -> torch.nn.Module:
    """Load a control module saved with `save_pretrained`, whichever kind it is.

    Args:
        path: a folder holding `config.json` and the weights.
        kwargs: passed to `from_pretrained` (e.g. `torch_dtype=torch.float16`).
    """
    expected = ("expected a folder with config.json and diffusion_pytorch_model.safetensors, as written by "
                "save_pretrained (e.g. <output>/final)")
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"No control module at {path}: {expected}.")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise OSError(f"{config_file} is unreadable ({error}): {expected}.") from error
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    kwargs.setdefault("use_safetensors", True)  # our folders hold safetensors: never unpickle a .bin
    for cls in CONTROL_CLASSES.values():
        if cls.__name__ == class_name:
            try:
                module, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
            except UsageError:  # a readable file this version refuses: its own message says why
                raise
            except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # a damaged or foreign folder
                first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
                raise OSError(f"Cannot load the control module in {path} ({first}): {expected}.") from error
            # a tensor missing from the weights would be left unset (on the meta device) and fail later
            missing = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
            if missing:
                raise OSError(f"Cannot load the control module in {path}: its weights lack {len(missing)} of the "
                              f"tensors its config.json describes ({', '.join(map(str, missing[:3]))}"
                              f"{', ...' if len(missing) > 3 else ''}): {expected}.")
            check_finite(module, str(path))
            return module
    raise ValueError(f"{config_file} describes a {class_name!r}, which is not a control module: "
                     f"expected one of {[c.__name__ for c in CONTROL_CLASSES.values()]}.")


class MultiControlModel(MultiControlNetModel):
    """Several control modules used at once, of any kinds (Lite, ControlNet, T2I-Adapter mixed), as
    diffusers' `MultiControlNetModel` holds several ControlNets: in `nets`, saved to `<folder>`,
    `<folder>_1`, ..., each loaded back by `load_control` (diffusers' loader takes ControlNets only).
    The pipeline runs them through `controlled_unet`, not through `forward`.

    (A pipeline's loader finds a component's loading method by the base classes its module names:
    hence `ModelMixin` among this module's imports.)"""

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str | Path, **kwargs: Any) -> MultiControlModel:
        """The modules saved by `save_pretrained` in `pretrained_model_path`, `..._1`, `..._2`, ...

        Args:
            pretrained_model_path: the first module's folder.
            kwargs: passed to each `load_control` (e.g. `torch_dtype`).
        """
        accepted = ("torch_dtype", "device_map", "low_cpu_mem_usage", "variant", "use_safetensors")
        kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
        nets, index = [], 0
        while Path(f"{pretrained_model_path}{f'_{index}' if index else ''}").is_dir():
            nets.append(load_control(f"{pretrained_model_path}{f'_{index}' if index else ''}", **kwargs))
            index += 1
        if not nets:
            raise FileNotFoundError(f"No control module at {pretrained_model_path}: expected the folder written by "
                                    "save_pretrained.")
        return cls(nets)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("MultiControlModel holds control modules of several kinds: run them with "
                        "prepare_control() and controlled_unet(), as LiteControlNetPipeline does.")


def check_finite(module: torch.nn.Module, where: str) -> None:
    """Refuse a module whose weights hold NaN or inf: it would sample black images without a word."""
    from .errors import NonFiniteWeightsError

    bad = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()]
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise NonFiniteWeightsError(f"The control module in {where} has NaN or infinite weights ({len(bad)} "
                                    f"tensor(s), e.g. {bad[0]}): it cannot sample. Use an earlier checkpoint "
                                    "(<output>/checkpoints/step-N/control), or train again with a lower "
                                    "--learning-rate.")


def _unwrap(control: torch.nn.Module) -> torch.nn.Module:
    return getattr(control, "module", control)  # under DistributedDataParallel


@dataclass
class PreparedControl:
    """A control module with what it computes once per generation (`prepare_control`)."""

    control: torch.nn.Module
    controlnet_cond: torch.Tensor
    unet_dtype: torch.dtype
    residuals: ControlResiduals | None = None  # step-invariant Lite
    features: tuple[torch.Tensor, ...] | None = None  # Lite with feedback, T2I-Adapter


def prepare_control(control: torch.nn.Module, controlnet_cond: torch.Tensor, unet_dtype: torch.dtype) -> PreparedControl:
    """Run what a control module computes from the control image alone.

    Args:
        control: a control module of any kind (or one wrapped by DistributedDataParallel).
        controlnet_cond: control images in [0, 1], (B, C, H, W) at image resolution, batch as the
            UNet's (repeat them for classifier-free guidance).
        unet_dtype: the UNet's dtype (read once: a diffusers model's `.dtype` walks its modules).
    """
    module = _unwrap(control)
    prepared = PreparedControl(control, controlnet_cond, unet_dtype)
    if isinstance(module, T2IAdapter):
        prepared.features = tuple(control(controlnet_cond.to(module.dtype)))
    elif isinstance(module, LiteControlNetModel):
        out = control(controlnet_cond, return_dict=False)
        if module.step_invariant:
            prepared.residuals = ControlResiduals(tuple(out[0]), out[1])
        else:
            prepared.features = tuple(out[0])
    return prepared


def controlled_unet(
    unet: torch.nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor | float,
    encoder_hidden_states: torch.Tensor,
    prepared: PreparedControl | Sequence[PreparedControl] | None = None,
    conditioning_scale: float | torch.Tensor | Sequence[float | torch.Tensor] = 1.0,
    *,
    guess_mode: bool = False,
    conditional_half_only: bool = False,
    **unet_kwargs: Any,
) -> torch.Tensor:
    """The UNet's prediction with prepared control modules applied at `conditioning_scale`
    (or without control when `prepared` is None).

    Args:
        unet: the base `UNet2DConditionModel`.
        sample, timestep, encoder_hidden_states: as for the UNet.
        prepared: `prepare_control`'s output, or a sequence of them (several controls at once, as
            diffusers' `MultiControlNetModel`: residuals add, feedback and adapter features stack).
        conditioning_scale: control strength, a float or one value per sample, shape (B,); with
            several controls, a sequence of one per control. A float 0 skips that control.
        guess_mode: a `ControlNetModel`'s residuals are scaled from 0.1 (first skip) to 1 (mid
            block), as diffusers' guess mode does; other kinds have no such scaling.
        conditional_half_only: the batch is classifier-free guidance's [unconditional,
            conditional]: control applies to its second half only, the first runs the plain UNet
            (diffusers' guess mode with guidance).
        unet_kwargs: the UNet's other arguments (`timestep_cond`, `cross_attention_kwargs`,
            `added_cond_kwargs`, ...).

    `unet` may be compiled (`torch.compile`, with or without `fullgraph`): the hooks through which
    Lite feedback and T2I-Adapter act are registered once (`install_control_hooks`) and the graphs
    are guarded on the control, so every call gives the eager output.
    """
    install_control_hooks(unet)
    if prepared is None:
        controls: list = []
    elif isinstance(prepared, PreparedControl):
        controls = [(prepared, conditioning_scale)]
    else:
        scales = list(conditioning_scale) if isinstance(conditioning_scale, (list, tuple)) else None
        if scales is None or len(scales) != len(prepared):
            raise ValueError(f"{len(prepared)} controls need as many conditioning scales (a list), got "
                             f"{conditioning_scale!r}.")
        controls = list(zip(prepared, scales))
    # a control at a float scale 0 adds exactly nothing: skip its work
    controls = [(p, s) for p, s in controls if isinstance(s, torch.Tensor) or s != 0]
    if not controls:
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False, **unet_kwargs)[0]

    residuals: ControlResiduals | None = None
    with contextlib.ExitStack() as stack:
        for item, scale in controls:
            module, dtype = _unwrap(item.control), item.unet_dtype
            if isinstance(scale, torch.Tensor):
                scale = scale.to(sample.device, dtype).reshape(-1, 1, 1, 1)
            if isinstance(module, ControlNetModel):
                found = _controlnet_residuals(item, module, sample, timestep, encoder_hidden_states, guess_mode,
                                              conditional_half_only, unet_kwargs)
                scale_here = scale
            else:
                scale_here = _on_second_half(scale, sample.shape[0], dtype) if conditional_half_only else scale
                found = item.residuals
            if found is not None:
                added = found.scaled(scale_here, dtype)
                residuals = added if residuals is None else residuals.plus(added)
            elif isinstance(module, T2IAdapter):
                stack.enter_context(_adapter_hooks(unet, [(f * scale_here).to(dtype) for f in item.features]))
            elif isinstance(module, LiteControlNetModel):
                stack.enter_context(module.feedback(unet, item.features, scale_here))
        kwargs = residuals.unet_kwargs() if residuals is not None else {}
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False, **unet_kwargs,
                    **kwargs)[0]


def _on_second_half(scale: float | torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """`scale` for the second half of a batch of `batch`, 0 for the first, one value per sample."""
    half = batch // 2
    if isinstance(scale, torch.Tensor):
        scale = scale.reshape(-1)
        scale = scale[half:] if scale.numel() == batch else scale.expand(half)
        return torch.cat([torch.zeros_like(scale), scale]).reshape(-1, 1, 1, 1)
    return torch.tensor([0.0] * half + [float(scale)] * (batch - half), dtype=dtype).reshape(-1, 1, 1, 1)


def _controlnet_residuals(item: PreparedControl, module: ControlNetModel, sample: torch.Tensor,
                          timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor, guess_mode: bool,
                          conditional_half_only: bool, unet_kwargs: dict[str, Any]) -> ControlResiduals:
    """A ControlNet's residuals at scale 1 for this step; with `conditional_half_only`, computed on
    the conditional half and zero on the other (as diffusers' pipeline does in guess mode)."""
    cond, half = item.controlnet_cond, 0
    if conditional_half_only:
        half = sample.shape[0] // 2
        sample, encoder_hidden_states = sample[half:], encoder_hidden_states[half:]
        cond = cond[half:] if cond.shape[0] == 2 * half else cond
    extra = {k: unet_kwargs[k] for k in ("timestep_cond", "cross_attention_kwargs", "added_cond_kwargs")
             if unet_kwargs.get(k) is not None}
    if "added_cond_kwargs" in extra and "image_embeds" in extra["added_cond_kwargs"]:
        del extra["added_cond_kwargs"]  # IP-Adapter image embeddings are for the UNet alone, as in diffusers
    if conditional_half_only and "timestep_cond" in extra:
        extra["timestep_cond"] = extra["timestep_cond"][half:]
    down, mid = item.control(
        sample.to(module.dtype), timestep, encoder_hidden_states=encoder_hidden_states.to(module.dtype),
        controlnet_cond=cond.to(module.dtype), conditioning_scale=1.0, guess_mode=guess_mode, return_dict=False,
        **extra,
    )
    if conditional_half_only:
        down = [torch.cat([torch.zeros_like(d), d]) for d in down]
        mid = torch.cat([torch.zeros_like(mid), mid])
    return ControlResiduals(tuple(down), mid)


def install_control_hooks(unet: torch.nn.Module) -> None:
    """Register, once per UNet, the hooks through which Lite feedback and T2I-Adapter act inside
    its forward; with no control active they change nothing.

    `controlled_unet` calls it at every call, controlled or not, and the pipeline when it is built,
    so the hooks are there before the UNet first runs: `torch.compile` does not re-check a module's
    hooks, and a UNet compiled without them would keep running without control. Registered on a
    UNet already compiled (and maybe run elsewhere), they make Dynamo drop its compiled graphs,
    once (`forget_graphs_without_hooks`).
    """
    if getattr(unet, "mid_block", None) is not None and hasattr(unet, "up_blocks"):
        FeedbackHooks.of(unet)
        _AdapterHooks.of(unet)


@contextlib.contextmanager
def _adapter_hooks(unet: torch.nn.Module, features: list[torch.Tensor]) -> Any:
    """Add T2I-Adapter's features inside the UNet's encoder, where diffusers adds them for a
    cross-attention block: to the output of each down block's last layer, before its downsampler
    (so into the skip and everything after). Hooks, because diffusers' own path adds them after
    the downsampler of a block without cross-attention, where the sizes differ."""
    hooks = _AdapterHooks.of(unet)
    if len(features) != hooks.num_blocks:
        raise ValueError(f"the adapter gives {len(features)} features for a UNet of {hooks.num_blocks} down "
                         "blocks: build it with build_control('t2i-adapter', unet).")
    entry = tuple(features)
    hooks.run_last()
    hooks.active = (*hooks.active, entry)  # after any adapter already active on the UNet
    try:
        yield
    finally:
        hooks.active = tuple(e for e in hooks.active if e is not entry)


class _AdapterHooks:
    """A forward hook on the last layer of each of a UNet's down blocks, registered once per UNet
    and kept (as `FeedbackHooks`, so that a compiled UNet traces them from its first call and is
    guarded on `active`), adding each active adapter's feature i to block i's output; with none
    active, nothing."""

    _ATTRIBUTE = "_lite_adapter_hooks"

    def __init__(self, unet: torch.nn.Module):
        self.active: tuple[tuple[torch.Tensor, ...], ...] = ()  # one feature per down block, per adapter
        self.num_blocks = len(unet.down_blocks)
        self._registered = []
        for index, block in enumerate(unet.down_blocks):
            cross_attention = bool(getattr(block, "attentions", None))
            layer = block.attentions[-1] if cross_attention else block.resnets[-1]
            handle = layer.register_forward_hook(functools.partial(self._add, index=index, tupled=cross_attention))
            self._registered.append((layer._forward_hooks, handle.id))

    @classmethod
    def of(cls, unet: torch.nn.Module) -> _AdapterHooks:
        module = getattr(unet, "_orig_mod", unet)  # torch.compile's OptimizedModule
        hooks = module.__dict__.get(cls._ATTRIBUTE)
        if hooks is None:
            hooks = cls(module)
            object.__setattr__(module, cls._ATTRIBUTE, hooks)
            forget_graphs_without_hooks(unet)
        return hooks

    def run_last(self) -> None:
        """After every other hook of their layers, as if registered now."""
        for hooks, hook_id in self._registered:
            if next(reversed(hooks)) != hook_id:
                hooks.move_to_end(hook_id)

    def _add(self, layer: torch.nn.Module, args: tuple, out: Any, *, index: int, tupled: bool) -> Any:
        if not self.active:
            return None
        for features in self.active:
            out = (out[0] + features[index], *out[1:]) if tupled else out + features[index]
        return out


def control_residuals(
    control: torch.nn.Module,
    *,
    sample: torch.Tensor | None,
    timestep: torch.Tensor | float | None,
    encoder_hidden_states: torch.Tensor | None,
    controlnet_cond: torch.Tensor,
    conditioning_scale: float = 1.0,
) -> ControlResiduals:
    """The skip and mid residuals of a step-invariant Lite module or a ControlNet (the modules
    whose whole contribution is residuals computed before the UNet runs); other kinds act inside
    the UNet's forward: use `prepare_control` and `controlled_unet`.

    Args:
        control: a step-invariant `LiteControlNetModel` or a `ControlNetModel`.
        sample, timestep, encoder_hidden_states: what the UNet will see (ControlNet only).
        controlnet_cond: control images in [0, 1], (B, C, H, W) at image resolution.
        conditioning_scale: control strength.
    """
    module = _unwrap(control)
    if isinstance(module, LiteControlNetModel) and module.step_invariant:
        down, mid = control(controlnet_cond, conditioning_scale=conditioning_scale, return_dict=False)
    elif isinstance(module, ControlNetModel):
        down, mid = control(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                            controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale, return_dict=False)
    else:
        raise TypeError(f"{type(module).__name__}{' with feedback' if isinstance(module, LiteControlNetModel) else ''}"
                        " acts inside the UNet's forward and has no residuals to return: use "
                        "prepare_control() and controlled_unet().")
    return ControlResiduals(tuple(down), mid)
