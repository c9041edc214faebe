import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, randomize_
from lite_controlnet import (
    CONTROL_KINDS,
    LiteControlNetModel,
    build_control,
    control_residuals,
    controlled_unet,
    load_control,
    prepare_control,
)
from lite_controlnet.controls import ControlResiduals
from lite_controlnet.errors import UsageError
from lite_controlnet.model import LITE_FORMAT, SD15_RESIDUAL_CHANNELS, _average_pool, unet_residual_layout
from lite_controlnet.bases.sd_configs import SD15_UNET_CONFIG, SD21_UNET_CONFIG, empty_unet


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def unet_inputs(base, batch=2, size=64):
    torch.manual_seed(0)
    latents = torch.randn(batch, 4, size // 8, size // 8)
    text = torch.randn(batch, 77, base.unet.config.cross_attention_dim)
    return latents, torch.tensor([500] * batch), text


def unet_skip_shapes(unet, latents, t, text):
    """The shapes of the skip residuals the UNet collects on its down path, recorded by hooks."""
    shapes = []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))]
    for block in unet.down_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: shapes.extend(tuple(s.shape) for s in o[1])))
    mid = []
    hooks.append(unet.mid_block.register_forward_hook(lambda m, i, o: mid.append(tuple(o.shape))))
    with torch.no_grad():
        unet(latents, t, encoder_hidden_states=text)
    for h in hooks:
        h.remove()
    return shapes, mid[0]


def skips_around_feedback(module, unet, cond, latents, t, text):
    """What each up block of `unet` receives as skips before and after `module`'s feedback
    corrects them: one (before, after) pair of tuples per up block, in the UNet's order."""
    got = []

    def record(m, args, kwargs):
        got.append(kwargs["res_hidden_states_tuple"])

    hooks = [b.register_forward_pre_hook(record, with_kwargs=True) for b in unet.up_blocks]  # before the module's
    with torch.no_grad(), module.feedback(unet, module(cond).features):
        hooks += [b.register_forward_pre_hook(record, with_kwargs=True) for b in unet.up_blocks]  # after
        unet(latents, t, encoder_hidden_states=text)
    for h in hooks:
        h.remove()
    assert len(got) == 2 * len(unet.up_blocks)
    return list(zip(got[0::2], got[1::2]))


@pytest.mark.parametrize("kind", ["lite", "lite-static", "lite-mlp"])
def test_zero_initialised_module_leaves_unet_output_unchanged(kind, tiny_base):
    lite = build_control(kind, tiny_base.unet)
    latents, t, text = unet_inputs(tiny_base)
    control = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = tiny_base.unet(latents, t, encoder_hidden_states=text).sample
        controlled = controlled_unet(tiny_base.unet, latents, t, text, prepare_control(lite, control, torch.float32))
    assert torch.equal(plain, controlled)
    # and once trained (random weights here), the same call does change the output
    randomize_(lite)
    with torch.no_grad():
        changed = controlled_unet(tiny_base.unet, latents, t, text, prepare_control(lite, control, torch.float32))
    assert (changed - plain).abs().max() > 1e-3


def test_residual_shapes_match_tiny_unet(tiny_base):
    lite = LiteControlNetModel.from_unet(tiny_base.unet, design="static")
    latents, t, text = unet_inputs(tiny_base)
    expected_down, expected_mid = unet_skip_shapes(tiny_base.unet, latents, t, text)
    out = lite(torch.rand(2, 3, 64, 64))
    assert [tuple(r.shape) for r in out.down_block_res_samples] == expected_down
    assert tuple(out.mid_block_res_sample.shape) == expected_mid


def test_residual_shapes_match_sd15_layout():
    lite = LiteControlNetModel.from_unet(empty_unet(SD15_UNET_CONFIG), design="static")
    assert lite.config.residual_channels == LiteControlNetModel().config.residual_channels  # the defaults are SD1.5
    out = lite(torch.rand(1, 3, 512, 512))
    sizes = [64] * 3 + [32] * 3 + [16] * 3 + [8] * 3
    assert [tuple(r.shape) for r in out.down_block_res_samples] == [
        (1, c, s, s) for c, s in zip(SD15_RESIDUAL_CHANNELS, sizes)
    ]
    assert tuple(out.mid_block_res_sample.shape) == (1, 1280, 8, 8)


def test_sd21_layout_derived_from_config():
    channels, levels, mid = unet_residual_layout(SD21_UNET_CONFIG)
    assert len(channels) == 12 and mid == 1280
    lite = LiteControlNetModel.from_unet(SD21_UNET_CONFIG, design="static")
    out = lite(torch.rand(1, 3, 768, 768))
    assert out.down_block_res_samples[0].shape == (1, 320, 96, 96)
    assert out.mid_block_res_sample.shape == (1, 1280, 12, 12)


def test_sd15_parameter_count_is_under_one_percent_of_controlnet():
    unet = empty_unet(SD15_UNET_CONFIG)
    from accelerate import init_empty_weights

    with init_empty_weights():
        controlnet = build_control("controlnet", unet)
    assert n_params(unet) == 859_520_964  # the real SD1.5 UNet
    assert 360e6 < n_params(controlnet) < 362e6
    for kind in ("lite", "lite-static"):
        assert n_params(build_control(kind, unet)) <= 0.01 * n_params(controlnet), kind
    assert n_params(build_control("lite", unet)) == 2_404_576  # benchmarks/results/params.json
    assert n_params(build_control("lite-mlp", unet)) == 1_084_736  # the paper's design


def test_save_and_load_round_trip(tmp_path, tiny_base):
    lite = randomize_(LiteControlNetModel.from_unet(tiny_base.unet, design="static", level_channels=48))
    lite.save_pretrained(tmp_path / "lite")
    assert (tmp_path / "lite" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = LiteControlNetModel.from_pretrained(tmp_path / "lite")
    control = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = lite(control), loaded(control)
    assert loaded.config.level_channels == 48
    for x, y in zip(a.down_block_res_samples + (a.mid_block_res_sample,), b.down_block_res_samples + (b.mid_block_res_sample,)):
        assert torch.equal(x, y)
    half = load_control(tmp_path / "lite", torch_dtype=torch.float16)
    assert isinstance(half, LiteControlNetModel) and half.dtype == torch.float16


def test_earlier_layers_learn_once_the_zero_projection_moves():
    lite = LiteControlNetModel.from_unet(SD15_UNET_CONFIG, design="mlp", level_channels=16, pixel_mlp_channels=(8,))
    optimizer = torch.optim.SGD(lite.parameters(), lr=0.1)
    control = torch.rand(1, 3, 64, 64)
    for step in range(2):
        optimizer.zero_grad()
        out = lite(control)
        loss = sum(r.square().mean() - r.mean() for r in out.down_block_res_samples)
        loss.backward()
        grad = lite.pixel_mlp[0].weight.grad.abs().sum()
        if step == 0:  # only the zero projections receive gradient at first ...
            assert grad == 0 and lite.zero_convs[0].weight.grad.abs().sum() > 0
        optimizer.step()
    assert grad > 0  # ... and after one update the pixel MLP learns too


def test_full_resolution_activations_are_recomputed_with_the_same_gradients(tiny_base):
    """In training the pixel MLP runs under activation checkpointing: gradients as without it."""
    lite = randomize_(LiteControlNetModel.from_unet(tiny_base.unet, design="static"), std=0.1)
    control = torch.rand(2, 3, 64, 64)
    sum(f.square().sum() for f in lite.control_features(control)).backward()
    checkpointed = [p.grad.clone() for p in lite.parameters() if p.grad is not None]
    lite.zero_grad()
    x = lite._pooled_pixel_mlp(control, lite.residual_sizes(64, 64)[0])  # the same, kept in memory
    features = []
    for level_block, size in zip(lite.level_blocks, lite.residual_sizes(64, 64)):
        x = _average_pool(x, size)
        features.append(level_block(x))
    sum(f.square().sum() for f in features).backward()
    kept = [p.grad for p in lite.parameters() if p.grad is not None]
    assert len(kept) == len(checkpointed) > 0
    for a, b in zip(checkpointed, kept):
        torch.testing.assert_close(a, b)


def test_conditioning_scale_multiplies_residuals(tiny_base):
    lite = randomize_(LiteControlNetModel.from_unet(tiny_base.unet, design="static"))
    control = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        one, half, zero = (lite(control, conditioning_scale=s) for s in (1.0, 0.5, 0.0))
    torch.testing.assert_close(half.mid_block_res_sample, 0.5 * one.mid_block_res_sample)
    assert all(torch.count_nonzero(r) == 0 for r in zero.down_block_res_samples)


@pytest.mark.parametrize(
    "shape, message",
    [((1, 1, 64, 64), "shape"), ((1, 3, 60, 64), "multiple of vae_scale_factor"), ((3, 64, 64), "shape")],
)
def test_bad_control_input_is_refused(shape, message):
    lite = LiteControlNetModel.from_unet(SD15_UNET_CONFIG)
    with pytest.raises(ValueError, match=message):
        lite(torch.rand(*shape))


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="one level per residual"):
        LiteControlNetModel(residual_channels=(32, 32), residual_levels=(0,))
    with pytest.raises(ValueError, match="level_layers"):
        LiteControlNetModel(level_layers=-1)


@pytest.mark.parametrize("kind", ["lite-mlp", "lite-static", "controlnet"])
def test_residual_kinds_give_residuals_of_the_unets_shapes(kind, tiny_base):
    control_module = randomize_(build_control(kind, tiny_base.unet), std=0.05)
    latents, t, text = unet_inputs(tiny_base)
    expected_down, expected_mid = unet_skip_shapes(tiny_base.unet, latents, t, text)
    with torch.no_grad():
        res = control_residuals(
            control_module, sample=latents, timestep=t, encoder_hidden_states=text, controlnet_cond=torch.rand(2, 3, 64, 64)
        )
    assert isinstance(res, ControlResiduals)
    assert [tuple(r.shape) for r in res.down] == expected_down and tuple(res.mid.shape) == expected_mid


@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_every_kind_steers_the_unet_through_the_shared_interface(kind, tiny_base, tmp_path):
    control_module = randomize_(build_control(kind, tiny_base.unet), std=0.05).eval()
    latents, t, text = unet_inputs(tiny_base)
    cond = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = tiny_base.unet(latents, t, encoder_hidden_states=text).sample
        prepared = prepare_control(control_module, cond, torch.float32)
        steered = controlled_unet(tiny_base.unet, latents, t, text, prepared)
        off = controlled_unet(tiny_base.unet, latents, t, text, prepared, conditioning_scale=0.0)
        per_sample = controlled_unet(tiny_base.unet, latents, t, text, prepared,
                                     conditioning_scale=torch.tensor([0.0, 1.0]))
        after = tiny_base.unet(latents, t, encoder_hidden_states=text).sample  # no hook left behind
    assert (steered - plain).abs().max() > 1e-4
    torch.testing.assert_close(off, plain)
    torch.testing.assert_close(per_sample[0], plain[0])
    torch.testing.assert_close(per_sample[1], steered[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, plain)
    control_module.save_pretrained(tmp_path / kind)
    loaded = load_control(tmp_path / kind).eval()
    with torch.no_grad():
        again = controlled_unet(tiny_base.unet, latents, t, text, prepare_control(loaded, cond, torch.float32))
    torch.testing.assert_close(again, steered)


def test_feedback_reads_the_unet_each_step(tiny_base):
    """The default module's residuals depend on the noisy sample (they are recomputed inside the
    UNet's forward); the step-invariant designs' do not."""
    seen = {}
    for kind in ("lite", "lite-static"):
        module = randomize_(build_control(kind, tiny_base.unet), std=0.05).eval()
        latents, t, text = unet_inputs(tiny_base)
        prepared = prepare_control(module, torch.rand(2, 3, 64, 64), torch.float32)
        with torch.no_grad():
            effects = [controlled_unet(tiny_base.unet, x, t, text, prepared) - tiny_base.unet(x, t, encoder_hidden_states=text).sample
                       for x in (latents, latents + 1.0)]
        seen[kind] = (effects[0] - effects[1]).abs().max().item()
    assert seen["lite"] > 1e-3
    assert module.step_invariant and not build_control("lite", tiny_base.unet).step_invariant
    with pytest.raises(TypeError, match="controlled_unet"):
        control_residuals(build_control("lite", tiny_base.unet), sample=None, timestep=None, encoder_hidden_states=None,
                          controlnet_cond=torch.rand(1, 3, 64, 64))


def test_unknown_kind_and_missing_folder_are_explained(tmp_path):
    with pytest.raises(ValueError, match="lite"):
        build_control("t2i", SD15_UNET_CONFIG)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_control(tmp_path / "nothing")


def test_normalised_level_layers_do_not_depend_on_the_scale_of_their_weights():
    """A GroupNorm after each level layer: scaling a level conv's weights and bias leaves the
    features as they were (without the norm they scale)."""
    config = dict(residual_channels=(8, 8, 16, 16), residual_levels=(0, 0, 1, 2), mid_channels=16, vae_scale_factor=4,
                  level_channels=8, pixel_mlp_channels=(8,), pixel_mlp_patch_size=1, level_kernel_size=(1, 3, 3), level_layers=2,
                  feedback=False)
    cond = torch.zeros(2, 3, 32, 32)
    cond[..., :, :12] = 1  # features that vary across the image, far above the norm's epsilon
    for norm in (False, True):
        module = randomize_(LiteControlNetModel(**config, level_norm=norm), std=0.3).eval()
        assert any(isinstance(m, torch.nn.GroupNorm) for m in module.level_blocks.modules()) == norm
        with torch.no_grad():
            before = module.control_features(cond)
            for level in module.level_blocks:
                level[0].weight.mul_(10)
                level[0].bias.mul_(10)
            after = module.control_features(cond)
        same = all(torch.allclose(a, b, atol=1e-3) for a, b in zip(before, after))
        assert same == norm


def test_decoder_reading_feedback_follows_what_the_coarser_corrections_changed(tiny_base):
    """Each feedback layer also reads the up block's input: with those reads at zero, a change of
    the mid block's correction alone leaves the corrections of the finest skips as they were
    (computed from the encoder's features only); with them, it changes them."""
    unet = tiny_base.unet
    latents, t, text = unet_inputs(tiny_base)
    cond = torch.rand(2, 3, 64, 64)
    module = randomize_(build_control("lite", unet), std=0.05).eval()
    widths = tuple(unet.config.block_out_channels)
    assert tuple(module.config.decoder_channels) == widths[1:] + widths[-1:]

    def finest_corrections():
        before, after = skips_around_feedback(module, unet, cond, latents, t, text)[-1]
        return torch.cat([a - b for b, a in zip(before, after)], dim=1)

    changed = {}
    for reads in ("zero", "random"):
        for name, p in module.named_parameters():
            if ".read_decoder." in name:
                torch.nn.init.zeros_(p) if reads == "zero" else torch.nn.init.normal_(p, std=0.5)
        first = finest_corrections()
        with torch.no_grad():
            module.mid_zero_conv.weight.add_(0.5)
        changed[reads] = (finest_corrections() - first).abs().max().item()
    assert changed["zero"] == 0 and changed["random"] > 1e-4


def test_the_constructors_defaults_are_the_default_design_at_sd15():
    torch.manual_seed(0)
    bare = LiteControlNetModel()
    torch.manual_seed(0)
    derived = LiteControlNetModel.from_unet(empty_unet(SD15_UNET_CONFIG))
    settings = lambda m: {k: v for k, v in m.config.items() if not k.startswith("_")}  # noqa: E731
    assert settings(bare) == settings(derived) and settings(bare)["lite_format"] == LITE_FORMAT
    assert n_params(bare) == 2_404_576 and not bare.step_invariant and bare.config.pixel_mlp_patch_size == 8
    a, b = bare.state_dict(), derived.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_feedback_module_refuses_a_scale_it_cannot_apply(tiny_base):
    lite = build_control("lite", tiny_base.unet)
    control = torch.rand(1, 3, 64, 64)
    assert len(lite(control, conditioning_scale=1.0).features) == len(tiny_base.unet.config.block_out_channels)
    for scale in (0.0, 0.5, torch.tensor([0.5])):
        with pytest.raises(ValueError, match=r"pass conditioning_scale to feedback\(\) or controlled_unet\(\)"):
            lite(control, conditioning_scale=scale)


def assert_steers_alike(tiny_base, a, b):
    """Both modules give the tiny UNet the same output, exactly, for one random control image."""
    cond = torch.rand(2, 3, 64, 64)
    latents, t, text = unet_inputs(tiny_base)
    with torch.no_grad():
        outputs = [controlled_unet(tiny_base.unet, latents, t, text, prepare_control(m, cond, torch.float32))
                   for m in (a, b)]
    assert torch.equal(*outputs)


FORMAT_0 = ROOT / "tests" / "fixtures" / "lite-format-0"  # configs saved by the code at commit 8ce729c


@pytest.mark.parametrize("name, expected", [
    ("mlp", {"level_channels": 96, "level_layers": 1, "level_kernel_size": 1, "level_norm": False, "feedback": False}),
    ("static", {"level_channels": 64, "level_layers": 2, "level_kernel_size": [1, 3, 3], "level_norm": False,
                "feedback": False}),
    ("feedback", {"level_channels": 64, "level_layers": 2, "level_kernel_size": [1, 3, 3], "level_norm": True,
                  "feedback": True, "feedback_channels": 32}),
])
def test_files_saved_before_formats_were_numbered_load_as_what_they_were(name, expected, tiny_base, tmp_path):
    """A format-0 config (no lite_format) reads as its design, whatever today's defaults are; its
    weights, named as they were then (`level_mlps`), load into today's names."""
    config = LiteControlNetModel.load_config(FORMAT_0 / name)
    assert {k: config[k] for k in expected} == expected and config["lite_format"] == LITE_FORMAT
    # format 0's pixel MLP read single pixels (today's default design reads patches)
    reference = randomize_(LiteControlNetModel.from_unet(tiny_base.unet, design=name, pixel_mlp_patch_size=1),
                           std=0.1).eval()
    assert config["pixel_mlp_patch_size"] == 1
    assert {k: v for k, v in reference.config.items() if k in expected} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in expected.items()}
    # the fixture's folder as the old code wrote it: its config, and its weights under the old names
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(FORMAT_0 / name / "config.json", folder / "config.json")
    save_file({k.replace("level_blocks.", "level_mlps."): v.contiguous() for k, v in reference.state_dict().items()},
              folder / "diffusion_pytorch_model.safetensors")
    loaded = load_control(folder).eval()
    assert loaded.config.lite_format == LITE_FORMAT
    assert_steers_alike(tiny_base, reference, loaded)
    loaded.save_pretrained(tmp_path / "again")  # saved again: in today's format, with the same design
    assert json.loads((tmp_path / "again" / "config.json").read_text())["lite_format"] == LITE_FORMAT
    assert dict(load_control(tmp_path / "again").config) == {**dict(loaded.config), "_name_or_path": tmp_path / "again"}


def test_the_old_bare_constructor_was_the_papers_design():
    """Format 0's defaults were the paper's design: a file that relied on them (saved by
    `LiteControlNetModel()`, or before a setting existed) still reads as that design."""
    bare = LiteControlNetModel.from_config(LiteControlNetModel.load_config(FORMAT_0 / "bare"))
    assert n_params(bare) == 1_084_736 and bare.step_invariant
    older = {k: v for k, v in json.loads((FORMAT_0 / "mlp" / "config.json").read_text()).items()
             if not k.startswith("feedback") and k not in ("level_norm", "level_top_down", "decoder_channels")}
    assert not LiteControlNetModel.from_config(older).config.feedback  # saved before feedback existed


@pytest.mark.parametrize("name, option", [("gate", "feedback_gate=True"), ("time", "feedback_time_channels=8"),
                                          ("previous-default", "feedback_levels=[1, 2]")])
def test_a_file_of_a_removed_design_is_refused_in_one_line(name, option, tmp_path):
    with pytest.raises(UsageError) as info:
        load_control(FORMAT_0 / name)
    message = str(info.value)
    assert option in message and str(FORMAT_0 / name / "config.json") in message and "8ce729c" in message
    assert "\n" not in message
    config = json.loads((FORMAT_0 / "feedback" / "config.json").read_text())
    for removed in ("feedback_into_encoder", "feedback_chain", "level_top_down", "feedback_relative", "feedback_norm"):
        with pytest.raises(UsageError, match=f"the config given uses {removed}=True"):
            LiteControlNetModel.from_config({**config, removed: True})
    with pytest.raises(UsageError, match="feedback_decoder=False"):
        LiteControlNetModel.from_config({**config, "feedback_decoder": False})
    # today's format holds none of them: one written in would be ignored, so it is refused too
    with pytest.raises(UsageError, match=f"lite_format={LITE_FORMAT} but format 0's setting feedback_gate"):
        LiteControlNetModel.from_config({**dict(LiteControlNetModel().config), "feedback_gate": True})
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "config.json").write_text(json.dumps({**dict(LiteControlNetModel().config),
                                                                "lite_format": LITE_FORMAT + 1}))
    with pytest.raises(UsageError, match=f"lite_format={LITE_FORMAT + 1}.*newer one wrote it"):
        LiteControlNetModel.from_pretrained(tmp_path / "newer")


FORMAT_1 = ROOT / "tests" / "fixtures" / "lite-format-1"  # configs saved by the code at commit 644a896


def test_files_of_format_1_read_single_pixels_as_they_did(tiny_base, tmp_path):
    """Format 1 had no pixel_mlp_patch_size: its pixel MLP read single pixels, whatever the VAE's
    scale. Such a file loads as that (its weights fit), while a module made today reads patches."""
    bare = LiteControlNetModel.from_config(LiteControlNetModel.load_config(FORMAT_1 / "bare"))
    assert bare.config.pixel_mlp_patch_size == 1 and n_params(bare) == 2_392_480
    reference = randomize_(LiteControlNetModel.from_unet(tiny_base.unet, pixel_mlp_patch_size=1), std=0.1).eval()
    folder = tmp_path / "format-1"
    folder.mkdir()
    shutil.copy(FORMAT_1 / "feedback" / "config.json", folder / "config.json")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, folder / "diffusion_pytorch_model.safetensors")
    loaded = load_control(folder).eval()
    assert loaded.config.pixel_mlp_patch_size == 1 and loaded.config.lite_format == LITE_FORMAT
    assert_steers_alike(tiny_base, reference, loaded)
    assert LiteControlNetModel.from_unet(tiny_base.unet).config.pixel_mlp_patch_size == 8


def test_the_default_pixel_mlp_reads_each_latent_pixels_own_patch(tiny_base):
    """With patches of vae_scale_factor pixels, a latent pixel's control features come from its own
    patch of the control image alone (at the finest level, whose layers are 1x1); the paper's
    design keeps one pixel per position (patch 1)."""
    module = randomize_(LiteControlNetModel.from_unet(tiny_base.unet, design="static"), std=0.3).eval()
    patched = randomize_(LiteControlNetModel.from_unet(tiny_base.unet, design="static", pixel_mlp_patch_size=8),
                         std=0.3).eval()
    assert module.config.pixel_mlp_patch_size == 1 and patched.pixel_mlp[0].in_channels == 3 * 8 * 8
    cond = torch.rand(1, 3, 64, 64)
    changed = cond.clone()
    changed[:, :, 8:16, 16:24] = 1 - changed[:, :, 8:16, 16:24]  # latent pixel (1, 2)'s patch
    with torch.no_grad():
        before, after = (patched.control_features(c)[0] for c in (cond, changed))
    moved = (after - before).abs().amax(dim=(0, 1)) > 0
    assert moved[1, 2] and moved.sum() == 1
    with pytest.raises(ValueError, match="pixel_mlp_patch_size must be None or a divisor of vae_scale_factor=8, got 3"):
        LiteControlNetModel.from_unet(tiny_base.unet, pixel_mlp_patch_size=3)
