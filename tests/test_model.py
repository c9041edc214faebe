import pytest
import torch

from conftest import randomize_
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
from lite_controlnet.model import SD15_RESIDUAL_CHANNELS, _average_pool, unet_residual_layout
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


@pytest.mark.parametrize("kind", ["lite", "lite-static", "lite-seed"])
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
    assert n_params(build_control("lite-seed", unet)) == 1_084_736  # the seed's design, as measured before


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
    lite = LiteControlNetModel.from_unet(SD15_UNET_CONFIG, design="seed", level_channels=16, pixel_mlp_channels=(8,))
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
    for level_mlp, size in zip(lite.level_mlps, lite.residual_sizes(64, 64)):
        x = _average_pool(x, size)
        features.append(level_mlp(x))
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
    with pytest.raises(ValueError, match="level_mlp_layers"):
        LiteControlNetModel(level_mlp_layers=-1)


@pytest.mark.parametrize("kind", ["lite-seed", "lite-static", "controlnet"])
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


def test_time_conditioned_feedback_starts_as_the_plain_one_and_reads_the_unets_time_embedding(tiny_base):
    unet = tiny_base.unet
    plain = randomize_(build_control("lite", unet), std=0.05).eval()
    timed = build_control("lite", unet, feedback_time_channels=8).eval()
    assert timed.config.time_embedding_channels == unet.time_embedding.linear_2.out_features
    missing, unexpected = timed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("time" in name or "film" in name for name in missing)
    latents, t, text = unet_inputs(tiny_base)
    cond = torch.rand(2, 3, 64, 64)

    def effect(module, steps):
        with torch.no_grad():
            return controlled_unet(unet, latents, steps, text, prepare_control(module, cond, torch.float32))

    # its scale and shift start at zero: the same output as without them
    torch.testing.assert_close(effect(timed, t), effect(plain, t))
    for name, p in timed.named_parameters():
        if "film" in name:
            torch.nn.init.normal_(p, std=0.5)
    # once trained, the correction depends on the timestep through the UNet's own embedding
    early, late = torch.tensor([900, 900]), torch.tensor([100, 100])
    assert (effect(timed, early) - effect(plain, early)).abs().max() > 1e-4
    assert not torch.allclose(effect(timed, early) - effect(plain, early), effect(timed, late) - effect(plain, late))
    assert not unet.time_embedding._forward_hooks  # no hook left behind
    with pytest.raises(ValueError, match="feedback_time_channels must be >= 0"):
        LiteControlNetModel(feedback_levels=(1,), feedback_time_channels=-1)


def _stream_into(block, unet, run):
    """The hidden states `block` receives while `run()` calls the UNet."""
    seen = []
    handle = block.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("hidden_states", args[0] if args else None)),
                                             with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_feedback_into_encoder_changes_what_the_encoders_later_blocks_compute(tiny_base):
    """By default the corrections reach only the skips the up blocks consume: the UNet's encoder
    computes what it computes alone. With feedback_into_encoder the later down blocks and the mid
    block compute on the corrected features; each correction is still added once. (Without the
    decoder's reading, which differs when the encoder does: a correction made in the encoder
    reads no decoder, which has not run yet.)"""
    unet = tiny_base.unet
    latents, t, text = unet_inputs(tiny_base)
    cond = torch.rand(2, 3, 64, 64)
    skips_only = randomize_(build_control("lite", unet, feedback_decoder=False), std=0.05).eval()
    into = build_control("lite", unet, feedback_decoder=False, feedback_into_encoder=True).eval()
    into.load_state_dict(skips_only.state_dict())  # the same weights, another wiring
    last_down = unet.down_blocks[-1]

    def stream(module):
        prepared = prepare_control(module, cond, torch.float32) if module is not None else None
        with torch.no_grad():
            return _stream_into(last_down, unet, lambda: controlled_unet(unet, latents, t, text, prepared)
                                if prepared else unet(latents, t, encoder_hidden_states=text))

    plain = stream(None)
    torch.testing.assert_close(stream(skips_only), plain)
    assert (stream(into) - plain).abs().max() > 1e-4
    # the correction of the skip that the first corrected block makes is the same either way: added once
    first = min(int(k) for k in into.feedback_skips)
    consumed = {}
    for name, module in (("skips", skips_only), ("into", into)):
        got = []
        with torch.no_grad(), module.feedback(unet, module(cond).features):
            # after the module's own hooks: what the up blocks consume
            hooks = [b.register_forward_pre_hook(lambda m, a, kw: got.append(kw["res_hidden_states_tuple"]),
                                                 with_kwargs=True) for b in unet.up_blocks]
            unet(latents, t, encoder_hidden_states=text)
        for h in hooks:
            h.remove()
        # the up blocks take the skips from the last, each its own in the UNet's order
        consumed[name] = [skip for skips in reversed(got) for skip in skips]
    torch.testing.assert_close(consumed["skips"][first], consumed["into"][first])
    assert (consumed["skips"][-1] - consumed["into"][-1]).abs().max() > 1e-4
    assert not any(b._forward_hooks for b in unet.down_blocks)  # no hook left behind
    # only some levels into the encoder: the levels must be feedback levels to matter
    some = build_control("lite", unet, feedback_decoder=False,
                         feedback_into_encoder=[max(into.config.feedback_levels)]).eval()
    some.load_state_dict(skips_only.state_dict())
    assert (stream(some) - plain).abs().max() > 1e-4


def test_chained_feedback_starts_as_the_plain_one_and_starts_again_each_forward(tiny_base):
    unet = tiny_base.unet
    plain = randomize_(build_control("lite", unet), std=0.05).eval()
    chained = build_control("lite", unet, feedback_chain=True).eval()
    missing, unexpected = chained.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".carry." in name for name in missing)
    latents, t, text = unet_inputs(tiny_base)
    cond = torch.rand(2, 3, 64, 64)

    def out(module):
        with torch.no_grad():
            return controlled_unet(unet, latents, t, text, prepare_control(module, cond, torch.float32))

    for name, p in chained.named_parameters():
        if ".carry." in name:
            torch.nn.init.zeros_(p)
    torch.testing.assert_close(out(chained), out(plain))  # a zero carry: the plain feedback
    for name, p in chained.named_parameters():
        if ".carry." in name:
            torch.nn.init.normal_(p, std=0.5)
    first = out(chained)
    assert (first - out(plain)).abs().max() > 1e-4
    torch.testing.assert_close(out(chained), first)  # the second forward does not read the first's chain


def test_top_down_features_let_each_fine_position_see_the_whole_layout():
    """Without the top-down path a 1x1 level sees only its own pooled patch; with it, a change of
    the control image far away reaches every position of the finest level."""
    config = dict(residual_channels=(8, 8, 16, 16), residual_levels=(0, 0, 1, 2), mid_channels=16, vae_scale_factor=4,
                  level_channels=8, pixel_mlp_channels=(8,), level_kernel_size=(1, 3, 3))
    cond = torch.rand(1, 3, 32, 32)
    moved = cond.clone()
    moved[..., 24:, 24:] = 1 - moved[..., 24:, 24:]  # the bottom-right corner only
    for top_down in (False, True):
        module = randomize_(LiteControlNetModel(**config, level_top_down=top_down), std=0.3).eval()
        with torch.no_grad():
            before, after = module.control_features(cond)[0], module.control_features(moved)[0]
        far = (before - after)[..., :4, :4].abs().max()  # the top-left corner of the finest level
        assert (far > 1e-4) == top_down
        assert before.shape[-2:] == (8, 8)


def test_normalised_level_layers_do_not_depend_on_the_scale_of_their_weights():
    """A GroupNorm after each level layer: scaling a level conv's weights and bias leaves the
    features as they were (without the norm they scale)."""
    config = dict(residual_channels=(8, 8, 16, 16), residual_levels=(0, 0, 1, 2), mid_channels=16, vae_scale_factor=4,
                  level_channels=8, pixel_mlp_channels=(8,), level_kernel_size=(1, 3, 3), level_mlp_layers=2)
    cond = torch.zeros(2, 3, 32, 32)
    cond[..., :, :12] = 1  # features that vary across the image, far above the norm's epsilon
    for norm in (False, True):
        module = randomize_(LiteControlNetModel(**config, level_norm=norm), std=0.3).eval()
        assert any(isinstance(m, torch.nn.GroupNorm) for m in module.level_mlps.modules()) == norm
        with torch.no_grad():
            before = module.control_features(cond)
            for level in module.level_mlps:
                level[0].weight.mul_(10)
                level[0].bias.mul_(10)
            after = module.control_features(cond)
        same = all(torch.allclose(a, b, atol=1e-3) for a, b in zip(before, after))
        assert same == norm


def test_relative_corrections_follow_the_size_of_the_feature_they_correct(tiny_base):
    """With feedback_relative each feedback correction is the plain one times the standard
    deviation (per sample) of the UNet feature it is added to."""
    unet = tiny_base.unet
    latents, t, text = unet_inputs(tiny_base)
    cond = torch.rand(2, 3, 64, 64)
    # without the decoder's reading, through which a correction would also change the finer ones
    plain = randomize_(build_control("lite", unet, feedback_decoder=False), std=0.05).eval()
    relative = build_control("lite", unet, feedback_decoder=False, feedback_relative=True).eval()
    relative.load_state_dict(plain.state_dict())  # the same weights
    consumed = {name: [pair for block in skips_around_feedback(module, unet, cond, latents, t, text)
                       for pair in zip(*block)]
                for name, module in (("plain", plain), ("relative", relative))}
    fed = 0
    for (before, plain_after), (_, relative_after) in zip(consumed["plain"], consumed["relative"]):
        plain_correction, relative_correction = plain_after - before, relative_after - before
        if plain_correction.abs().max() == 0:
            continue
        std = before.std(dim=(1, 2, 3), keepdim=True)
        if torch.allclose(relative_correction, plain_correction):  # a level without feedback: unchanged
            continue
        torch.testing.assert_close(relative_correction, plain_correction * std, rtol=1e-4, atol=1e-6)
        fed += 1
    assert fed == len(relative.feedback_skips)


def test_gated_corrections_start_as_the_plain_ones_and_then_scale_the_feature(tiny_base):
    """feedback_gate adds `h * g` to each feedback correction, g zero at first: the module starts
    as the plain one; once g moves, the correction grows with the UNet feature it corrects."""
    unet = tiny_base.unet
    latents, t, text = unet_inputs(tiny_base)
    cond = torch.rand(2, 3, 64, 64)
    plain = randomize_(build_control("lite", unet), std=0.05).eval()
    gated = build_control("lite", unet, feedback_gate=True).eval()
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".gate." in name for name in missing)

    def out(module, x=latents):
        with torch.no_grad():
            return controlled_unet(unet, x, t, text, prepare_control(module, cond, torch.float32))

    torch.testing.assert_close(out(gated), out(plain))  # a zero gate: the plain feedback
    for name, p in gated.named_parameters():
        if ".gate." in name:
            torch.nn.init.normal_(p, std=0.5)
    assert (out(gated) - out(plain)).abs().max() > 1e-4
    # each feedback skip's correction is zero_conv(hidden) + h * gate(hidden), h the UNet's skip
    hidden = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, k=k: hidden.__setitem__(k, o))
             for k, layer in gated.feedback_skips.items()]
    skips = skips_around_feedback(gated, unet, cond, latents, t, text)
    for h in hooks:
        h.remove()
    checked, left = 0, len(gated.config.residual_levels)
    for block, (before, after) in zip(unet.up_blocks, skips):
        indices = range(left - len(block.resnets), left)
        left = indices.start
        for k, h, corrected in zip(indices, before, after):
            if str(k) in gated.feedback_skips:
                with torch.no_grad():
                    layer, zero_conv = gated.feedback_skips[str(k)], gated.zero_convs[k]
                    expected = h + zero_conv(hidden[str(k)]) + h * layer.gate(hidden[str(k)])
                torch.testing.assert_close(corrected, expected)
                checked += 1
    assert checked == len(gated.feedback_skips)


def test_decoder_reading_feedback_follows_what_the_coarser_corrections_changed(tiny_base):
    """With feedback_decoder each feedback layer also reads the up block's input: a zero read is
    the plain feedback; a change of the mid block's correction alone then changes the corrections
    of the finest skips, which the plain feedback computes from the encoder's features only."""
    unet = tiny_base.unet
    latents, t, text = unet_inputs(tiny_base)
    cond = torch.rand(2, 3, 64, 64)
    every = {"feedback_levels": list(range(len(unet.config.block_out_channels)))}
    plain = randomize_(build_control("lite", unet, feedback_decoder=False, **every), std=0.05).eval()
    reading = build_control("lite", unet, feedback_decoder=True, **every).eval()
    missing, unexpected = reading.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".read_decoder." in name for name in missing)
    widths = tuple(unet.config.block_out_channels)
    assert tuple(reading.config.decoder_channels) == widths[1:] + widths[-1:]

    def finest_corrections(module):
        before, after = skips_around_feedback(module, unet, cond, latents, t, text)[-1]
        return torch.cat([a - b for b, a in zip(before, after)], dim=1)

    for name, p in reading.named_parameters():
        if ".read_decoder." in name:
            torch.nn.init.zeros_(p)
    torch.testing.assert_close(finest_corrections(reading), finest_corrections(plain))  # a zero read: the plain
    for name, p in reading.named_parameters():
        if ".read_decoder." in name:
            torch.nn.init.normal_(p, std=0.5)
    changed = {}
    for name, module in (("plain", plain), ("reading", reading)):
        first = finest_corrections(module)
        with torch.no_grad():
            module.mid_zero_conv.weight.add_(0.5)
        changed[name] = (finest_corrections(module) - first).abs().max().item()
    assert changed["plain"] == 0 and changed["reading"] > 1e-4
