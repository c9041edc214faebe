import json
import shutil

import pytest
import torch

from conftest import with_scheduler_config
from lite_controlnet import BaseModelError, load_base
from lite_controlnet.bases.tiny import tiny_vocabulary


def test_tiny_base_loads_offline_through_the_real_path(tiny_base):
    assert type(tiny_base.unet).__name__ == "UNet2DConditionModel"
    assert type(tiny_base.scheduler).__name__ == "PNDMScheduler"  # SD1.5's own
    assert tiny_base.vae_scale_factor == 8
    assert not any(p.requires_grad for p in tiny_base.unet.parameters())  # frozen
    assert not tiny_base.unet.training


def test_tiny_tokenizer_has_one_token_per_colour_word(tiny_base):
    tokenizer = tiny_base.tokenizer
    for word in tiny_vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("pale golden rod circle with old lace background").input_ids
    assert len(ids) == 8 + 2  # eight words, plus start and end


def test_tiny_alias_builds_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LITE_CONTROLNET_CACHE", str(tmp_path))
    models = load_base("tiny")
    assert (tmp_path / "tiny-sd" / "model_index.json").is_file()
    assert models.vae is not None


def test_unreachable_hub_says_how_to_pass_a_local_folder():
    with pytest.raises(BaseModelError, match="local folder") as info:
        load_base("no-such-user/no-such-model")
    assert "no-such-user/no-such-model" in str(info.value)
    assert "--base proxy" in str(info.value)  # what works offline: the base the package ships


def test_folder_that_is_not_a_model_is_explained(tmp_path):
    with pytest.raises(BaseModelError, match="no unet/"):
        load_base(tmp_path)
    with pytest.raises(BaseModelError, match="does not exist"):
        load_base(str(tmp_path / "missing"))


def test_base_without_vae_works_in_pixel_space(tiny_base_dir, tmp_path):
    folder = tmp_path / "pixel-base"
    shutil.copytree(tiny_base_dir, folder)
    shutil.rmtree(folder / "vae")
    index = json.loads((folder / "model_index.json").read_text())
    index["vae"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    models = load_base(folder)
    assert models.vae is None and models.vae_scale_factor == 1


def test_dtype_is_applied(tiny_base_dir):
    models = load_base(tiny_base_dir, torch_dtype=torch.float16)
    assert models.unet.dtype == torch.float16 and models.text_encoder.dtype == torch.float16


def test_cli_make_proxy_base_help_does_not_train(capsys, tmp_path, monkeypatch):
    from lite_controlnet.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["make-proxy-base", "--help"])
    assert info.value.code == 0
    assert "out_dir" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_any_scheduler_of_diffusers_is_loaded_and_an_unknown_one_is_refused(tiny_base_dir, tmp_path, monkeypatch):
    euler = load_base(with_scheduler_config(tiny_base_dir, tmp_path / "euler", _class_name="EulerDiscreteScheduler"))
    assert type(euler.scheduler).__name__ == "EulerDiscreteScheduler"
    unknown = with_scheduler_config(tiny_base_dir, tmp_path / "unknown", _class_name="NoSuchScheduler")
    with pytest.raises(BaseModelError, match=r"_class_name='NoSuchScheduler' is not a scheduler of diffusers"):
        load_base(unknown)
    not_a_scheduler = with_scheduler_config(tiny_base_dir, tmp_path / "unet", _class_name="UNet2DConditionModel")
    with pytest.raises(BaseModelError, match="'UNet2DConditionModel' is not a scheduler"):
        load_base(not_a_scheduler)

    # a scheduler whose optional dependency is missing: what to install, on one line
    import diffusers
    from diffusers.utils.import_utils import DummyObject

    class NeedsScipyScheduler(metaclass=DummyObject):
        @classmethod
        def from_config(cls, *args, **kwargs):
            raise ImportError("\nNeedsScipyScheduler requires the scipy library: `pip install\nscipy`\n")

    monkeypatch.setattr(diffusers, "NeedsScipyScheduler", NeedsScipyScheduler, raising=False)
    placeholder = with_scheduler_config(tiny_base_dir, tmp_path / "scipy", _class_name="NeedsScipyScheduler")
    with pytest.raises(BaseModelError, match=r"NeedsScipyScheduler scheduler cannot be built here: .*pip install scipy") \
            as info:
        load_base(placeholder)
    assert "\n" not in str(info.value)
