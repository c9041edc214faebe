import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler

from conftest import randomize_
from lite_controlnet import LiteControlNetModel, LiteControlNetPipeline, build_control
from lite_controlnet.cli import main as cli_main

PROMPT = "red circle with blue background"


@pytest.fixture(scope="module")
def control_image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def trained_lite(tiny_base):
    # random weights stand in for a trained module: its residuals are not zero
    return randomize_(LiteControlNetModel.from_unet(tiny_base.unet), std=0.3)


@pytest.fixture(scope="module")
def pipe(tiny_base_dir, trained_lite):
    return LiteControlNetPipeline.from_base(tiny_base_dir, controlnet=trained_lite)


def generate(pipe, image, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return pipe(PROMPT, image, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def test_scale_zero_equals_the_base_model_without_control(pipe, control_image):
    sd = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=UniPCMultistepScheduler.from_config(pipe.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    sd.set_progress_bar_config(disable=True)
    reference = sd(PROMPT, num_inference_steps=4, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    scale_zero = generate(pipe, control_image, controlnet_conditioning_scale=0.0)
    text_only = generate(pipe, None)
    assert np.array_equal(scale_zero, reference)
    assert np.array_equal(text_only, reference)
    controlled = generate(pipe, control_image, controlnet_conditioning_scale=1.0)
    assert np.abs(controlled - reference).max() > 0.01


def test_control_window_limits_where_control_applies(pipe, control_image):
    full = generate(pipe, control_image)
    none = generate(pipe, None)
    late = generate(pipe, control_image, control_guidance_start=0.5)
    assert np.abs(late - full).max() > 1e-3 and np.abs(late - none).max() > 1e-3
    with pytest.raises(ValueError, match="control_guidance_start"):
        generate(pipe, control_image, control_guidance_start=0.8, control_guidance_end=0.2)


def test_lite_residuals_are_computed_once_per_generation(pipe, control_image):
    calls = []
    hook = pipe.controlnet.register_forward_hook(lambda *a: calls.append(1))
    generate(pipe, control_image, num_inference_steps=5)
    hook.remove()
    assert len(calls) == 1


def test_original_controlnet_runs_in_the_same_pipeline(tiny_base_dir, tiny_base, control_image):
    controlnet = build_control("controlnet", tiny_base.unet)
    pipe = LiteControlNetPipeline.from_base(tiny_base_dir, controlnet=controlnet)
    calls = []
    controlnet.register_forward_hook(lambda *a: calls.append(1))
    zero_init = generate(pipe, control_image)
    assert len(calls) == 4  # ControlNet depends on the step: once per step
    assert np.array_equal(zero_init, generate(pipe, None))  # zero convolutions: no effect yet
    randomize_(controlnet, std=0.05)
    assert np.abs(generate(pipe, control_image) - zero_init).max() > 1e-3


def test_a_loaded_base_is_shared_and_samples_as_its_folder(pipe, tiny_base, trained_lite, control_image):
    shared = LiteControlNetPipeline.from_base(tiny_base, controlnet=trained_lite)
    assert shared.unet is tiny_base.unet and shared.vae is tiny_base.vae  # not copied
    assert type(shared.scheduler).__name__ == "UniPCMultistepScheduler"
    np.testing.assert_allclose(generate(shared, control_image), generate(pipe, control_image), atol=1e-5)
    other = LiteControlNetModel.from_unet(tiny_base.unet, vae_scale_factor=1)
    with pytest.raises(ValueError, match="made for another base"):
        LiteControlNetPipeline.from_base(tiny_base, controlnet=other)
    # a module given in memory takes the dtype asked for, as one loaded from its folder does
    half = LiteControlNetPipeline.from_base(tiny_base, controlnet=build_control("lite", tiny_base.unet),
                                            torch_dtype=torch.float16)
    assert half.controlnet.dtype == torch.float16


def test_batch_of_prompts_and_images_per_prompt(pipe, control_image):
    images = pipe(["red circle with blue background", "aqua circle with old lace background"], control_image,
                  num_images_per_prompt=2, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (4, 64, 64, 3)
    assert np.abs(images[0] - images[2]).max() > 1e-3  # different prompts, different images
    with pytest.raises(ValueError, match="image batch size"):
        pipe(["a", "b", "c"], [control_image, control_image], num_inference_steps=1)


def test_ddim_is_selectable_and_pipeline_round_trips(pipe, control_image, tmp_path):
    expected = generate(pipe, control_image)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = LiteControlNetPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.controlnet, LiteControlNetModel)
    assert np.array_equal(generate(loaded, control_image), expected)
    loaded.set_scheduler("ddim")
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert np.abs(generate(loaded, control_image) - expected).max() > 1e-4
    with pytest.raises(ValueError, match="unipc"):
        loaded.set_scheduler("euler-x")


def test_xformers_is_enabled_only_where_it_works(pipe, monkeypatch):
    from lite_controlnet.training import attention
    enabled = []
    monkeypatch.setattr(LiteControlNetPipeline, "enable_xformers_memory_efficient_attention",
                        lambda self: enabled.append(self))
    monkeypatch.setattr(attention, "xformers_status", lambda: (False, "no CUDA GPU"))
    assert pipe.enable_xformers_if_available() is False and enabled == []  # SDPA stays
    monkeypatch.setattr(attention, "xformers_status", lambda: (True, "xformers 0.0.99"))
    assert pipe.enable_xformers_if_available() is True and enabled == [pipe]


def test_memory_options_keep_the_image(pipe, control_image):
    expected = generate(pipe, control_image)
    pipe.enable_attention_slicing()
    pipe.enable_vae_slicing()
    try:
        np.testing.assert_allclose(generate(pipe, control_image), expected, atol=1e-5)
    finally:
        pipe.disable_attention_slicing()
        pipe.disable_vae_slicing()


def test_cli_sample_writes_an_image(tiny_base_dir, trained_lite, control_image, tmp_path, capsys):
    trained_lite.save_pretrained(tmp_path / "lite")
    control_image.save(tmp_path / "control.png")
    out = tmp_path / "out.png"
    args = ["sample", "--base", str(tiny_base_dir), "--control-model", str(tmp_path / "lite"),
            "--image", str(tmp_path / "control.png"), "--prompt", PROMPT, "--steps", "2", "--out", str(out)]
    cli_main(args)
    assert PIL.Image.open(out).size == (64, 64)
    written = out.read_bytes()
    with pytest.raises(SystemExit) as info:
        cli_main(args)  # an existing output is never replaced silently
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == written
