"""The proxy base: a few training steps give a folder that the library loads as a pixel-space
base, and the shipped weights draw one disk in the prompt's colours."""

import json

import numpy as np
import pytest
import torch

from lite_controlnet import LiteControlNetPipeline, build_control, load_base
from lite_controlnet.data.fill50k import render_fill50k_sample
from lite_controlnet.evaluation.metrics import colour_errors, count_disks, segment_disk
from lite_controlnet.bases import PROXY_BASE_DIR
from lite_controlnet.bases.proxy import ProxyRecipe, make_scheduler
from lite_controlnet.bases.proxy_training import make_proxy_base, min_snr_weight
from lite_controlnet.data.heldout import PROXY_HELD_OUT_SEED, held_out_pairs

SMALL = ProxyRecipe(block_out_channels=(16, 16, 32, 32), text_width=32, warmup_steps=1)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    lines = []
    folder = make_proxy_base(tmp_path_factory.mktemp("proxy"), steps=3, progress=False, recipe=SMALL,
                             log=lines.append, log_every=1, check_every=3)
    assert any("loss" in line for line in lines) and any("colour check" in line for line in lines)
    return folder


def test_a_few_steps_write_a_pixel_space_base_that_loads(trained_dir):
    index = json.loads((trained_dir / "model_index.json").read_text())
    assert index["vae"] == [None, None]
    assert json.loads((trained_dir / "training.json").read_text())["steps_done"] == 3
    base = load_base(trained_dir)
    assert base.vae is None and base.vae_scale_factor == 1
    assert base.unet.config.in_channels == 3 and base.unet.config.sample_size == 32
    assert base.scheduler.config.prediction_type == "v_prediction"
    ids = base.tokenizer("pale golden rod circle with old lace background").input_ids
    assert len(ids) == 8 + 2  # one token per colour word


def test_a_lite_module_starts_as_the_base_and_then_steers_it(trained_dir):
    pipe = LiteControlNetPipeline.from_base(trained_dir)
    pipe.set_progress_bar_config(disable=True)
    control, _, prompt = render_fill50k_sample(0, 32)

    def sample(controlnet):
        pipe.controlnet = controlnet
        return pipe(prompt, control if controlnet is not None else None, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    alone = sample(None)
    assert alone.shape == (1, 32, 32, 3) and np.isfinite(alone).all()
    torch.manual_seed(0)
    module = build_control("lite", pipe.unet, vae_scale_factor=1)
    # its projections into the UNet start at zero: the untrained module leaves the base's image as it was
    np.testing.assert_array_equal(sample(module), alone)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    assert np.abs(sample(module) - alone).max() > 1e-3  # once trained away from zero, the control shows


def test_training_is_deterministic_for_a_seed(trained_dir, tmp_path):
    again = make_proxy_base(tmp_path / "again", steps=3, progress=False, recipe=SMALL)
    first, second = load_base(trained_dir).unet, load_base(again).unet
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b)


def test_loss_weight_keeps_the_high_noise_steps():
    # the colours come from the prompt only at high noise: those steps must keep their weight
    weights = min_snr_weight(make_scheduler(), torch.tensor([0, 500, 999]), gamma=5.0)
    assert weights[2] == 1.0
    assert weights[0] < 0.01  # min-SNR still caps the nearly clean steps
    assert torch.all(weights[1:] >= weights[:-1])


@pytest.mark.parametrize("bad, match", [
    ({"resolution": 36}, "multiple of 8"),
    ({"cross_attention_levels": (4,)}, "0..3"),
    ({"prompt_dropout": 1.0}, r"\[0, 1\)"),
    ({"block_out_channels": (30, 48, 64, 96)}, "multiples of 8"),
])
def test_recipe_says_what_is_accepted(bad, match):
    with pytest.raises(ValueError, match=match):
        ProxyRecipe(**bad)


@pytest.mark.skipif(not (PROXY_BASE_DIR / "model_index.json").is_file(), reason="proxy base weights not shipped")
def test_shipped_weights_draw_one_disk_in_the_prompts_colours():
    pipe = LiteControlNetPipeline.from_base(PROXY_BASE_DIR)
    pipe.set_progress_bar_config(disable=True)
    prompts = held_out_pairs(16, 32, seed=PROXY_HELD_OUT_SEED).prompts
    noise = torch.randn((16, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    images = {}
    for name, used in (("real", prompts), ("shuffled", prompts[8:] + prompts[:8])):
        images[name] = pipe(used, num_inference_steps=10, guidance_scale=3.0, latents=noise.clone(),
                            output_type="np").images
    disks = [segment_disk(image) for image in images["real"]]
    assert sum(count_disks(image, disk) == 1 for image, disk in zip(images["real"], disks)) >= 12

    def background_error(name):
        return np.mean([colour_errors(image, prompt)[1] for image, prompt in zip(images[name], prompts)])

    assert background_error("real") < 0.3 * background_error("shuffled")
