"""The shapes base: the shipped latent-space base loads and samples 128 px images, its tokenizer
has one token per prompt word, a short training writes a folder the library loads (and resumes
exactly), and the Fill50k proxy base's recipe is the one its shipped weights were trained with."""

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from lite_controlnet import LiteControlNetPipeline, build_control, load_base
from lite_controlnet.bases import PROXY_BASE_DIR, PROXY_SHAPES_BASE_DIR
from lite_controlnet.bases.proxy import ProxyRecipe, build_proxy_models
from lite_controlnet.bases.proxy_command import main as make_proxy_base_command
from lite_controlnet.bases.proxy_shapes import ProxyShapesRecipe, ShapesVaeRecipe, shapes_vocabulary
from lite_controlnet.bases.proxy_shapes_training import make_proxy_shapes_base
from lite_controlnet.bases.tiny import tiny_vocabulary
from lite_controlnet.data.shapes import shapes_scene
from lite_controlnet.errors import UsageError

# 32 px scenes, a VAE of scale factor 4 (8x8 latents), a UNet of two levels: seconds per run
TINY = ProxyShapesRecipe(
    image_size=32,
    vae=ShapesVaeRecipe(block_out_channels=(8, 8, 16), steps=3, batch_size=2, crop=16, warmup_steps=1),
    unet=ProxyRecipe(resolution=8, steps=4, batch_size=2, warmup_steps=1, block_out_channels=(16, 32),
                     cross_attention_levels=(1,), text_width=16, render_scale=1),
)


def test_the_shipped_base_loads_offline_as_a_latent_base_of_128_px():
    base = load_base("proxy-shapes")
    training = json.loads((PROXY_SHAPES_BASE_DIR / "training.json").read_text())
    assert base.vae is not None and base.vae_scale_factor == 4
    assert base.vae.config.latent_channels == base.unet.config.in_channels == 4
    assert base.unet.config.sample_size == 32  # 128 px images
    # SD's convention: the scaling factor is 1 / the latents' std, measured when the VAE was trained
    assert base.vae.config.scaling_factor == pytest.approx(training["scaling_factor"], rel=1e-3)
    assert base.vae.config.scaling_factor != 0.18215
    assert base.scheduler.config.prediction_type == "v_prediction"
    assert training["steps_done"] == training["recipe"]["unet"]["steps"]


def test_the_pipeline_samples_a_128_px_image_from_it():
    pipe = LiteControlNetPipeline.from_base("proxy-shapes")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a red square and a teal circle on a beige background"], num_inference_steps=2,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 128, 128, 3) and np.isfinite(images).all()
    assert images.std() > 0.01  # decoded through the VAE, not a flat or empty frame


def test_a_lite_module_at_image_resolution_starts_as_the_base_and_then_steers_it():
    pipe = LiteControlNetPipeline.from_base("proxy-shapes")
    pipe.set_progress_bar_config(disable=True)
    scene = shapes_scene(0, 128, seed=1)

    def sample(controlnet):
        pipe.controlnet = controlnet
        return pipe(scene.prompt, scene.render() if controlnet is not None else None, num_inference_steps=2,
                    output_type="np", generator=torch.Generator().manual_seed(0)).images

    alone = sample(None)
    torch.manual_seed(0)
    module = build_control("lite", pipe.unet, vae_scale_factor=4)  # reads the 128 px control, 4x the latents
    np.testing.assert_array_equal(sample(module), alone)  # zero projections: the base's image as it was
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    assert np.abs(sample(module) - alone).mean() > 1e-3


def test_the_tokenizer_has_one_token_per_word_of_shapes_prompts():
    tokenizer = load_base("proxy-shapes").tokenizer
    for index in range(40):
        prompt = shapes_scene(index, 64).prompt
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        assert len(ids) == len(prompt.split()) + prompt.count(","), prompt  # the comma is a token of its own
    assert set(tiny_vocabulary()) - set(shapes_vocabulary()) >= {"disk", "with"}  # not the Fill50k words


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    lines = []
    folder = make_proxy_shapes_base(tmp_path_factory.mktemp("shapes"), TINY, log=lines.append, log_every=1,
                                    check_every=4, save_every=2)
    return folder, lines


def test_a_short_training_writes_the_diffusers_layout_with_a_vae(trained):
    folder, lines = trained
    assert any(line.startswith("vae step 3/3") for line in lines)
    assert any("vae done" in line and "PSNR" in line for line in lines)
    assert any("background check" in line for line in lines)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["_class_name"] == "LiteControlNetPipeline"
    for part in ("vae", "unet", "text_encoder"):
        assert any((folder / part).glob("*.safetensors")), part
    assert not (folder / "resume").exists()  # the resumable state goes when the run ends
    training = json.loads((folder / "training.json").read_text())
    assert training["steps_done"] == 4 and training["recipe"] == json.loads(json.dumps(asdict(TINY)))
    base = load_base(folder)
    assert base.vae_scale_factor == 4 and base.unet.config.in_channels == 4
    assert base.vae.config.scaling_factor == pytest.approx(1 / training["latent_std"], rel=1e-2)
    pipe = LiteControlNetPipeline.from_base(base)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle on a navy background", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_an_interrupted_training_resumes_to_the_same_weights(trained, tmp_path):
    folder, _ = trained

    class Killed(Exception):
        pass

    def kill_at_step_3(line):
        if line.startswith("step 3/"):
            raise Killed  # after the state of step 2 was saved

    with pytest.raises(Killed):
        make_proxy_shapes_base(tmp_path, TINY, log=kill_at_step_3, log_every=1, check_every=4, save_every=2)
    assert (tmp_path / "resume" / "state.pt").is_file()
    resumed = []
    make_proxy_shapes_base(tmp_path, TINY, log=resumed.append, log_every=1, check_every=4, save_every=2)
    assert "unet: resumed at step 2" in resumed and not any(line.startswith("vae step") for line in resumed)
    ours, theirs = load_base(tmp_path), load_base(folder)
    for mine, other in ((ours.unet, theirs.unet), (ours.text_encoder, theirs.text_encoder), (ours.vae, theirs.vae)):
        for (name, a), b in zip(mine.state_dict().items(), other.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_resume_of_another_recipe_is_refused_unless_only_the_unet_steps_changed(tmp_path):
    class Killed(Exception):
        pass

    def kill(line):
        if line.startswith("vae step 3/"):
            raise Killed

    with pytest.raises(Killed):
        make_proxy_shapes_base(tmp_path, TINY, log=kill, log_every=1, save_every=2)
    other_vae = replace(TINY, vae=replace(TINY.vae, steps=4))
    with pytest.raises(UsageError, match="another recipe"):
        make_proxy_shapes_base(tmp_path, other_vae, save_every=2)
    # the VAE stage does not depend on the UNet's steps: it is kept when they change
    longer = replace(TINY, unet=replace(TINY.unet, steps=5))
    lines = []
    make_proxy_shapes_base(tmp_path, longer, log=lines.append, log_every=1, save_every=2)
    assert "vae: resumed at step 2" in lines and any(line.startswith("step 5/5") for line in lines)


def test_the_fill50k_proxy_recipe_is_the_one_its_shipped_weights_were_trained_with(tmp_path):
    shipped = json.loads((PROXY_BASE_DIR / "training.json").read_text())
    assert json.loads(json.dumps(asdict(ProxyRecipe()))) == shipped["recipe"]
    models = build_proxy_models(ProxyRecipe(), tmp_path / "tokenizer")
    unet_config = json.loads((PROXY_BASE_DIR / "unet" / "config.json").read_text())
    for key, value in models.unet.config.items():
        if not key.startswith("_") and key in unet_config:
            assert json.loads(json.dumps(value)) == unet_config[key], key
    assert json.loads((tmp_path / "tokenizer" / "vocab.json").read_text()) == \
        json.loads((PROXY_BASE_DIR / "tokenizer" / "vocab.json").read_text())


def test_vae_steps_are_refused_for_the_fill50k_world(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_proxy_base_command([str(tmp_path), "--vae-steps", "3"])
    assert "--vae-steps is for --world shapes" in capsys.readouterr().err
