"""Presets: one statement of a run size, which the command line, the notebooks and the demo read."""

import json

import pytest

from lite_controlnet.cli import parse_args
from lite_controlnet.training.config import config_from_args
from lite_controlnet.presets import DEMO, PRESETS, QUICK, Preset, get_preset


def test_quick_is_the_short_run_on_the_shipped_base():
    assert (QUICK.base, QUICK.num_samples, QUICK.resolution, QUICK.batch_size) == ("proxy", 3200, 32, 16)
    assert QUICK.steps == 200 and DEMO.steps == 400 and DEMO.guidance == QUICK.guidance == 3.0
    assert QUICK.learning_rate("lite") == 3e-3 and QUICK.learning_rate("controlnet") == 1e-3
    assert QUICK.learning_rate("unknown") is None and get_preset("demo") is DEMO
    with pytest.raises(ValueError, match="Unknown preset 'fast': expected one of quick, demo"):
        get_preset("fast")
    with pytest.raises(ValueError, match="batch_size=0"):
        Preset("x", "proxy", 32, 32, 0, 1, {}, 0, 3.0)


def test_train_preset_fills_what_flags_and_the_config_file_leave_out(tmp_path):
    def config(*flags):
        return config_from_args(parse_args(["train", "--data", "d", "--output", "o", *flags]))

    cfg = config("--preset", "quick")
    assert (cfg.base, cfg.resolution, cfg.batch_size, cfg.epochs, cfg.lr, cfg.num_workers) == ("proxy", 32, 16, 1, 3e-3, 0)
    assert config("--preset", "quick", "--control-kind", "controlnet").lr == 1e-3  # the kind's own rate
    flags_win = config("--preset", "demo", "--learning-rate", "1e-4", "--batch-size", "8")
    assert (flags_win.epochs, flags_win.lr, flags_win.batch_size) == (2, 1e-4, 8)
    (tmp_path / "run.json").write_text(json.dumps({"control_kind": "controlnet", "resolution": 64}))
    from_file = config("--preset", "quick", "--config", str(tmp_path / "run.json"))
    assert (from_file.control_kind, from_file.lr, from_file.resolution, from_file.base) == ("controlnet", 1e-3, 64, "proxy")
    assert config().base != "proxy" and config().resolution == 512  # no preset: TrainConfig's defaults


@pytest.mark.parametrize("name", list(PRESETS))
def test_data_and_sampling_commands_take_the_presets_values_unless_given(name):
    preset = PRESETS[name]
    data = parse_args(["make-fill50k", "out", "--preset", name])
    assert (data.num, data.size) == (preset.num_samples, preset.resolution)
    assert parse_args(["make-fill50k", "out", "--preset", name, "--num", "32"]).num == 32
    sample = parse_args(["sample", "--prompt", "p", "--preset", name])
    assert (sample.base, sample.guidance, sample.steps) == (preset.base, preset.guidance, 20)
    evaluate = parse_args(["evaluate", "--data", "d", "--preset", name, "--guidance", "7.5", "--base", "tiny"])
    assert (evaluate.base, evaluate.guidance) == ("tiny", 7.5)
    plain = parse_args(["sample", "--prompt", "p"])
    assert (plain.base, plain.guidance) == ("stable-diffusion-v1-5/stable-diffusion-v1-5", 7.5)
