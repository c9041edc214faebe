"""LiteControlNetPipeline is diffusers' `StableDiffusionControlNetPipeline` for every kind of control:
its arguments, checks and loaders, compared with diffusers' own pipelines where they must agree
(scale 0: `StableDiffusionPipeline`, bit for bit; a `ControlNetModel`: `StableDiffusionControlNetPipeline`)."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)

from conftest import randomize_
from lite_controlnet import LiteControlNetModel, LiteControlNetPipeline, MultiControlModel, build_control, load_base
from lite_controlnet.controls import controlled_unet, prepare_control
from lite_controlnet.pipeline import clip_text_model_alias

PROMPT = "red circle with blue background"
LITE = ("lite", "lite-static", "lite-mlp")
STEPS = 3


@pytest.fixture(scope="module")
def control_image():
    rng = np.random.default_rng(1)
    return PIL.Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def controls(tiny_base):
    """A module of each kind with random weights (trained ones' residuals are not zero)."""
    made = {kind: randomize_(build_control(kind, tiny_base.unet), std=0.3, seed=k) for k, kind in enumerate(LITE)}
    made["controlnet"] = randomize_(build_control("controlnet", tiny_base.unet), std=0.05, seed=7)
    made["t2i-adapter"] = randomize_(build_control("t2i-adapter", tiny_base.unet), std=0.05, seed=8)
    return made


def ours(base, control, scheduler=None):
    pipe = LiteControlNetPipeline.from_base(base, controlnet=control, scheduler="unipc")
    if scheduler is not None:
        pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parts(pipe):
    return dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def diffusers_sd(pipe):
    sd = StableDiffusionPipeline(**parts(pipe))
    sd.set_progress_bar_config(disable=True)
    return sd


def diffusers_controlnet(pipe):
    sd = StableDiffusionControlNetPipeline(**parts(pipe), controlnet=pipe.controlnet)
    sd.set_progress_bar_config(disable=True)
    return sd


def run(pipe, *args, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("height", 64)
    kwargs.setdefault("width", 64)
    if "prompt_embeds" not in kwargs:
        kwargs.setdefault("prompt", PROMPT)
    return pipe(*args, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


# -- (a) no control is StableDiffusionPipeline, bit for bit ------------------------------------------

@pytest.mark.parametrize("scheduler", [DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler,
                                       UniPCMultistepScheduler])
def test_scale_zero_is_stable_diffusion_bit_for_bit(tiny_base, controls, control_image, scheduler):
    pipe = ours(tiny_base, controls["lite"], scheduler.from_config(tiny_base.scheduler.config))
    reference = run(diffusers_sd(pipe))
    assert np.array_equal(run(pipe, image=control_image, controlnet_conditioning_scale=0.0), reference)
    assert np.array_equal(run(pipe), reference)
    # guidance_rescale as StableDiffusionPipeline's
    rescaled = run(diffusers_sd(pipe), guidance_rescale=0.7)
    assert np.abs(rescaled - reference).max() > 1e-4
    assert np.array_equal(run(pipe, image=control_image, controlnet_conditioning_scale=0.0, guidance_rescale=0.7),
                          rescaled)


def test_ddim_and_ddpm_configs_get_clip_sample_off_as_stable_diffusion_does(tiny_base):
    ddim = DDIMScheduler.from_config(tiny_base.scheduler.config, clip_sample=True)
    pipe = LiteControlNetPipeline(**{k: v for k, v in parts(ours(tiny_base, None)).items()
                                     if k not in ("scheduler", "requires_safety_checker")}, scheduler=ddim)
    assert pipe.scheduler.config.clip_sample is False
    pipe.set_scheduler("ddim")  # DDIM's default is clip_sample=True
    assert pipe.scheduler.config.clip_sample is False
    sd = diffusers_sd(pipe)
    sd.scheduler = pipe.scheduler
    assert np.array_equal(run(pipe), run(sd))


# -- (b) a ControlNet is StableDiffusionControlNetPipeline ----------------------------------------------

@pytest.mark.parametrize("guess_mode", [False, True])
def test_controlnet_equals_diffusers_controlnet_pipeline(tiny_base, controls, control_image, guess_mode):
    pipe = ours(tiny_base, controls["controlnet"])
    reference = diffusers_controlnet(pipe)
    for kwargs in ({}, {"controlnet_conditioning_scale": 0.6}, {"control_guidance_start": [0.3],
                                                                "control_guidance_end": [0.9]}):
        expected = run(reference, image=control_image, guess_mode=guess_mode, **kwargs)
        np.testing.assert_allclose(run(pipe, image=control_image, guess_mode=guess_mode, **kwargs), expected,
                                   atol=1e-5)
    assert np.abs(run(pipe, image=control_image, guess_mode=guess_mode) - run(pipe)).max() > 1e-3  # control acts
    if guess_mode:
        assert np.abs(run(pipe, image=control_image, guess_mode=True) - run(pipe, image=control_image)).max() > 1e-4


def test_clip_skip_custom_schedules_and_embeddings_as_diffusers(tiny_base, controls, control_image):
    pipe = ours(tiny_base, controls["controlnet"], EulerDiscreteScheduler.from_config(tiny_base.scheduler.config))
    reference = diffusers_controlnet(pipe)
    plain = run(pipe, image=control_image)
    skipped = run(pipe, image=control_image, clip_skip=1)
    assert np.abs(skipped - plain).max() > 1e-4
    with clip_text_model_alias(pipe.text_encoder):  # diffusers' clip_skip predates transformers 5's CLIP
        np.testing.assert_allclose(skipped, run(reference, image=control_image, clip_skip=1), atol=1e-5)
    for schedule in ({"timesteps": [999, 600, 200]}, {"sigmas": [14.6, 3.0, 0.5]}):
        np.testing.assert_allclose(run(pipe, image=control_image, **schedule),
                                   run(reference, image=control_image, **schedule), atol=1e-5)
    with pytest.raises(ValueError, match="custom"):  # diffusers' own refusal
        run(ours(tiny_base, controls["controlnet"]), image=control_image, timesteps=[999, 500])
    embeds, negative = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    assert np.array_equal(run(pipe, image=control_image, prompt_embeds=embeds, negative_prompt_embeds=negative),
                          plain)


# -- (c) callback_on_step_end sees and changes what diffusers' does -------------------------------------

def test_callback_on_step_end_as_diffusers(tiny_base, controls, control_image):
    pipe = ours(tiny_base, controls["controlnet"])

    def recording(seen):
        def callback(p, i, t, tensors):
            seen.append(tensors["latents"].clone())
            assert tensors["image"].shape[0] == 2 and tensors["prompt_embeds"].shape[0] == 2
            return {"latents": tensors["latents"] * 0.9} if i == 0 else {}
        return callback

    images = []
    for p in (pipe, diffusers_controlnet(pipe)):
        seen = []
        images.append(run(p, image=control_image, callback_on_step_end=recording(seen),
                          callback_on_step_end_tensor_inputs=["latents", "image", "prompt_embeds"]))
        images.append(seen)
    (ours_image, ours_seen, ref_image, ref_seen) = images
    assert len(ours_seen) == STEPS
    for a, b in zip(ours_seen, ref_seen):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours_image, ref_image, atol=1e-5)
    assert np.abs(ours_image - run(pipe, image=control_image)).max() > 1e-4  # the change took effect

    def interrupt(p, i, t, tensors):
        p._interrupt = True
        return {}
    np.testing.assert_allclose(run(pipe, image=control_image, callback_on_step_end=interrupt),
                               run(diffusers_controlnet(pipe), image=control_image, callback_on_step_end=interrupt),
                               atol=1e-5)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        run(pipe, image=control_image, callback_on_step_end=interrupt, callback_on_step_end_tensor_inputs=["noise"])


# -- arguments, for every Lite design ------------------------------------------------------------------

@pytest.mark.parametrize("kind", LITE)
def test_scale_types_windows_and_checks(tiny_base, controls, control_image, kind):
    pipe = ours(tiny_base, controls[kind])
    expected = run(pipe, image=control_image, controlnet_conditioning_scale=0.5)
    assert np.abs(expected - run(pipe)).max() > 1e-3  # control acts
    for scale in (torch.tensor(0.5), np.float32(0.5), [0.5], np.float64(0.5)):
        assert np.array_equal(run(pipe, image=control_image, controlnet_conditioning_scale=scale), expected)
    assert np.array_equal(run(pipe, image=control_image, controlnet_conditioning_scale=1),
                          run(pipe, image=control_image, controlnet_conditioning_scale=1.0))
    windowed = run(pipe, image=control_image, control_guidance_start=[0.4], control_guidance_end=[1.0])
    assert np.array_equal(windowed, run(pipe, image=control_image, control_guidance_start=0.4))
    with pytest.raises(ValueError, match="image batch size"):  # one prompt, two control images
        run(pipe, image=torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="controlnet_conditioning_scale"):
        run(pipe, image=control_image, controlnet_conditioning_scale=[1.0, 0.5])
    with pytest.raises(ValueError, match="control_guidance_start"):
        run(pipe, image=control_image, control_guidance_start=[0.1, 0.2], control_guidance_end=[0.9])
    with pytest.raises(ValueError, match="--scale"):
        run(pipe, image=control_image, controlnet_conditioning_scale=float("nan"))
    # a callback that swaps the control image: the module's once-per-generation work is redone
    gray = torch.full((2, 3, 64, 64), 0.5)
    swapped = run(pipe, image=control_image, callback_on_step_end=lambda p, i, t, x: {"image": gray},
                  callback_on_step_end_tensor_inputs=["image"])
    assert np.abs(swapped - run(pipe, image=control_image)).max() > 1e-4


@pytest.mark.parametrize("kind", [*LITE, "t2i-adapter"])
def test_guess_mode_controls_the_conditional_half_only(tiny_base, controls, control_image, kind):
    pipe = ours(tiny_base, controls[kind])
    # with guidance it changes the image; without, there is no unconditional half: nothing changes
    assert np.abs(run(pipe, image=control_image, guess_mode=True) - run(pipe, image=control_image)).max() > 1e-4
    assert np.array_equal(run(pipe, image=control_image, guess_mode=True, guidance_scale=1.0),
                          run(pipe, image=control_image, guidance_scale=1.0))
    # one step by hand: the unconditional half is the plain UNet, the conditional half the controlled one
    unet, control = tiny_base.unet, controls[kind]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(4))
    cond = pipe.prepare_control_image(control_image, 1, 64, 64, "cpu", torch.float32)
    with torch.no_grad():
        both = controlled_unet(unet, torch.cat([x, x]), 500, text, prepare_control(control, torch.cat([cond] * 2),
                               unet.dtype), 1.0, conditional_half_only=True)
        plain = unet(x, 500, encoder_hidden_states=text[:1]).sample
        controlled = controlled_unet(unet, x, 500, text[1:], prepare_control(control, cond, unet.dtype), 1.0)
    torch.testing.assert_close(both[:1], plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1:], controlled, atol=1e-5, rtol=0)


# -- several controls at once ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", [*LITE, "controlnet", "t2i-adapter"])
def test_several_controls_add_up(tiny_base, controls, control_image, kind):
    other = "lite" if kind != "lite" else "controlnet"
    single = ours(tiny_base, controls[kind])
    alone = run(single, image=control_image, controlnet_conditioning_scale=0.8)
    listed = ours(tiny_base, [controls[kind]])
    assert isinstance(listed.controlnet, MultiControlModel)
    np.testing.assert_allclose(run(listed, image=[control_image], controlnet_conditioning_scale=[0.8]), alone,
                               atol=1e-6)
    both = ours(tiny_base, [controls[kind], controls[other]])
    gray = PIL.Image.new("RGB", (64, 64), (90, 160, 40))
    np.testing.assert_allclose(run(both, image=[control_image, gray], controlnet_conditioning_scale=[0.8, 0.0]),
                               alone, atol=1e-6)
    np.testing.assert_allclose(run(both, image=[control_image, gray], controlnet_conditioning_scale=0.8,
                                   control_guidance_start=[0.0, 0.99], control_guidance_end=[1.0, 1.0]),
                               alone, atol=1e-6)  # the second's window holds no step
    mixed = run(both, image=[control_image, gray], controlnet_conditioning_scale=[0.8, 1.0])
    assert np.abs(mixed - alone).max() > 1e-4
    with pytest.raises(ValueError, match="same length as the number of controlnets"):
        run(both, image=[control_image])
    with pytest.raises(TypeError, match="must be type `list`"):
        run(both, image=control_image)


# -- loading as diffusers users do -------------------------------------------------------------------

def test_saved_pipeline_loads_through_diffusers(tiny_base, controls, control_image, tmp_path, monkeypatch):
    import diffusers.utils.dynamic_modules_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not the user's cache
    pipe = ours(tiny_base, [controls["lite"], controls["controlnet"]])
    images = [control_image, PIL.Image.new("RGB", (64, 64), (90, 160, 40))]
    expected = run(pipe, image=images)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = LiteControlNetPipeline.from_pretrained(tmp_path / "pipe")  # runs no code from the folder
    generic = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    for p in (loaded, generic):
        assert type(p) is LiteControlNetPipeline
        assert [type(n) for n in p.controlnet.nets] == [LiteControlNetModel, type(controls["controlnet"])]
        p.set_progress_bar_config(disable=True)
        assert np.array_equal(run(p, image=images), expected)
    controls["lite"].save_pretrained(tmp_path / "lite")
    for device_map in ("auto", {"": "cpu"}):
        placed = LiteControlNetModel.from_pretrained(tmp_path / "lite", device_map=device_map)
        assert placed.device.type == "cpu"
        assert all(torch.equal(a, b) for a, b in zip(placed.state_dict().values(),
                                                     controls["lite"].state_dict().values()))


def test_lora_loads_fuses_and_control_still_acts(tiny_base_dir, controls, control_image, tmp_path):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_base_dir / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    randomize_(torch.nn.ParameterList([p for n, p in unet.named_parameters() if "lora" in n]), std=0.2)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))

    pipe = ours(load_base(tiny_base_dir), controls["lite"])
    without = run(pipe, image=control_image)
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = run(pipe, image=control_image)
    assert np.abs(with_lora - without).max() > 1e-3
    np.testing.assert_allclose(run(pipe, image=control_image, cross_attention_kwargs={"scale": 0.0}), without,
                               atol=1e-5)  # the LoRA scale reaches the UNet
    assert np.abs(run(pipe) - with_lora).max() > 1e-3  # control still acts
    pipe.fuse_lora()
    np.testing.assert_allclose(run(pipe, image=control_image), with_lora, atol=1e-4)


def test_textual_inversion_freeu_and_vae_tiling(tiny_base_dir, controls, control_image):
    pipe = ours(load_base(tiny_base_dir), controls["lite"])
    prompt = "a <shape> circle"
    before = run(pipe, image=control_image, prompt=prompt)
    pipe.load_textual_inversion({"<shape>": torch.randn(32, generator=torch.Generator().manual_seed(5))})
    assert pipe.tokenizer.convert_tokens_to_ids("<shape>") != pipe.tokenizer.unk_token_id
    learned = run(pipe, image=control_image, prompt=prompt)
    assert np.abs(learned - before).max() > 1e-4
    plain = run(pipe, image=control_image)
    pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    assert np.abs(run(pipe, image=control_image) - plain).max() > 1e-4
    pipe.disable_freeu()
    assert np.array_equal(run(pipe, image=control_image), plain)
    pipe.enable_vae_tiling()  # 64 px fit one tile: the same image
    np.testing.assert_allclose(run(pipe, image=control_image), plain, atol=1e-5)
    pipe.disable_vae_tiling()


def test_ip_adapter_image_embeds_reach_the_unet(tiny_base, controls, control_image):
    pipe = ours(tiny_base, controls["lite"])
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("added_cond_kwargs")),
                                               with_kwargs=True)
    embeds = torch.randn(2, 1, 16)  # [negative, positive] with guidance, as diffusers takes them
    try:
        run(pipe, image=control_image, ip_adapter_image_embeds=[embeds])
    finally:
        hook.remove()
    assert len(seen) == STEPS and torch.equal(seen[0]["image_embeds"][0], embeds)
    with pytest.raises(ValueError, match="ip_adapter_image_embeds"):
        run(pipe, image=control_image, ip_adapter_image_embeds=embeds)


def test_from_single_file_loads_an_sd15_checkpoint_file(tiny_base_dir, tiny_base, controls, control_image, tmp_path):
    from safetensors.torch import save_file

    checkpoint = {**unet_to_ldm(tiny_base.unet), **vae_to_ldm(tiny_base.vae),
                  **{"cond_stage_model.transformer.text_model." + k: v
                     for k, v in tiny_base.text_encoder.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, tmp_path / "model.safetensors")
    # `config`: the base's folder (offline; a hub id such as SD1.5's online)
    pipe = LiteControlNetPipeline.from_single_file(str(tmp_path / "model.safetensors"), config=str(tiny_base_dir),
                                                   controlnet=controls["lite"])
    for name in ("unet", "vae", "text_encoder"):
        loaded, original = getattr(pipe, name).state_dict(), getattr(tiny_base, name).state_dict()
        assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in original)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    assert np.array_equal(run(pipe, image=control_image), run(ours(tiny_base, controls["lite"]), image=control_image))


def _resnet(prefix_sd, prefix_hf):
    return [(prefix_sd + a, prefix_hf + b) for a, b in (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."),
            ("emb_layers.1.", "time_emb_proj."), ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."),
            ("skip_connection.", "conv_shortcut."))]

def unet_to_ldm(unet):
    """The UNet's weights under the original Stable Diffusion checkpoint's names (any number of blocks and
    layers: the inverse of diffusers' conversion)."""
    L = unet.config.layers_per_block
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
             ("middle_block.1.", "mid_block.attentions.0.")]
    pairs += _resnet("middle_block.0.", "mid_block.resnets.0.") + _resnet("middle_block.2.", "mid_block.resnets.1.")
    for i, block in enumerate(unet.down_blocks):
        for j in range(L):
            pairs += _resnet(f"input_blocks.{(L + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}.")
            pairs.append((f"input_blocks.{(L + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        pairs.append((f"input_blocks.{(L + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
    for i, block in enumerate(unet.up_blocks):
        for j in range(L + 1):
            pairs += _resnet(f"output_blocks.{(L + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}.")
            pairs.append((f"output_blocks.{(L + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        pairs.append((f"output_blocks.{(L + 1) * i + L}.{2 if getattr(block, 'attentions', None) else 1}.conv.",
                      f"up_blocks.{i}.upsamplers.0.conv."))
    out = {}
    for key, value in unet.state_dict().items():
        match = max((p for p in pairs if key.startswith(p[1])), key=lambda p: len(p[1]))
        out["model.diffusion_model." + match[0] + key[len(match[1]):]] = value
    return out

def vae_to_ldm(vae):
    """The VAE's weights under the original checkpoint's names (its attention as 1x1 convolutions)."""
    n = len(vae.config.block_out_channels)
    pairs = [("encoder.norm_out.", "encoder.conv_norm_out."), ("decoder.norm_out.", "decoder.conv_norm_out.")]
    for part in ("encoder", "decoder"):
        pairs.append((f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0."))
        for j in range(2):
            pairs.append((f"{part}.mid.block_{j + 1}.", f"{part}.mid_block.resnets.{j}."))
    for i in range(n):
        pairs.append((f"encoder.down.{i}.block.", f"encoder.down_blocks.{i}.resnets."))
        pairs.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
        pairs.append((f"decoder.up.{n - 1 - i}.block.", f"decoder.up_blocks.{i}.resnets."))
        pairs.append((f"decoder.up.{n - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    renames = {"conv_shortcut": "nin_shortcut", "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
               "to_out.0": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        matches = [p for p in pairs if key.startswith(p[1])]
        if matches:
            sd, hf = max(matches, key=lambda p: len(p[1]))
            key = sd + key[len(hf):]
        if ".attn_1." in key:
            for a, b in renames.items():
                key = key.replace(f".{a}.", f".{b}.")
            value = value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value
        key = key.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + key] = value
    return out
