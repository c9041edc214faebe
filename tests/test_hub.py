"""The Hub, offline: the model card's content (its loading snippet run against a trained module),
the upload at the `huggingface_hub` boundary (`HfApi` mocked: repository, files, private flag),
`train --push-to-hub`, and a run started from a trained module (`--init-from`)."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import huggingface_hub
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard, RepoUrl
from safetensors.torch import load_file

from conftest import SMALL, SMALL_FLAGS
from lite_controlnet import CONTROL_KINDS, DEFAULT_BASE, LiteControlNetModel, build_control, cli
from lite_controlnet.controls import control_kind_of
from lite_controlnet.hub.model_card import GRID, TAGS, model_card
from lite_controlnet.training.config import TrainConfig
from lite_controlnet.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "diffusion_pytorch_model.safetensors"


def weights(folder):
    return load_file(Path(folder) / WEIGHTS)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).iterdir() if p.is_file()}


@pytest.fixture
def sd15_run(world, tmp_path):
    """A copy of the tiny run whose settings name SD1.5 as its base, and a dataset that records its
    condition: what a real run on the Hub's base would have recorded."""
    run = Path(shutil.copytree(world.run, tmp_path / "fill50k-lite", ignore=shutil.ignore_patterns("cache")))
    data = Path(shutil.copytree(world.data, tmp_path / "edges"))
    (data / "dataset.json").write_text(json.dumps({"condition": "canny"}))
    settings = json.loads((run / "train_config.json").read_text())
    (run / "train_config.json").write_text(json.dumps({**settings, "base": DEFAULT_BASE, "data": str(data)}))
    return run


class FakeHub:
    """`HfApi.create_repo` and `upload_folder`, recorded: what would have reached the Hub."""

    def __init__(self, monkeypatch, user="someone", on_create=None):
        self.created, self.uploads = [], []
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_saved")  # as after `hf auth login`
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.created.append({"repo_id": repo_id, "token": api.token, **kwargs})
            if on_create:
                on_create()
            return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else f'{user}/{repo_id}'}")

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            hub.uploads.append({"repo_id": repo_id, "token": api.token, "files": files, **kwargs})

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


# -- the card ------------------------------------------------------------------------------------


def test_the_card_says_what_the_run_recorded(sd15_run, world, capsys):
    # a report as `evaluate` writes it, where the README puts it: in the run folder
    code = cli.main(["evaluate", "--base", str(world.base), "--control-model", str(sd15_run / "final"), "--data",
                     str(world.data), "--num", "2", "--steps", "1", "--resolution", "32", "--threads", "1",
                     "--out", str(sd15_run / "report.json")])
    assert code is None
    report = json.loads((sd15_run / "report.json").read_text())
    hub_card = model_card(sd15_run / "final", "someone/fill50k-lite")
    card = hub_card.card
    data = card.data
    assert data.license == "creativeml-openrail-m" and data.base_model == DEFAULT_BASE
    assert set(TAGS) | {"lite"} == set(data.tags) and data.library_name == "diffusers"
    assert data.datasets is None  # a local dataset: no Hub id to link
    text = card.text
    assert f"**Base model:** [{DEFAULT_BASE}](https://huggingface.co/{DEFAULT_BASE})" in text
    assert "**Condition:** canny" in text and "a local dataset, `edges`" in text
    count = sum(t.numel() for t in weights(sd15_run / "final").values())
    assert f"**Parameters:** {count:,}\n" in text  # a tiny module: no share of SD1.5's ControlNet claimed
    for row in ("| steps | 2 |", "| resolution | 32 |", "| batch size | 2 |", "| learning rate | 0.0001 |",
                "| timestep sampling | cubic |", "| seed | 0 |"):
        assert row in text, row
    # the run stopped inside its first epoch (2 steps of 4): the grid of its last step, not epoch 0's
    assert hub_card.files == {GRID: sd15_run / "samples" / "step-00000002.png"}
    assert "grid at step 2, where training ended (`samples/step-00000002.png`)" in text and f"![validation grid](./{GRID})" in text
    row = next(line for line in text.splitlines() if line.startswith("| report.json |"))
    assert f"| {report['mean']['disk_iou']:.3f} |" in row and "| LiteControlNetModel | 2 |" in row
    assert f"| {report['one_step']['with_control']['disk_iou']:.3f} |" in row
    # the card is what the Hub reads back
    assert ModelCard(str(card)).data.base_model == DEFAULT_BASE


def test_a_hub_dataset_is_linked_and_named_in_the_metadata(sd15_run):
    settings = json.loads((sd15_run / "train_config.json").read_text())
    (sd15_run / "train_config.json").write_text(json.dumps({**settings, "data": "fusing/fill50k"}))
    card = model_card(sd15_run / "final", "someone/fill50k-lite").card
    assert card.data.datasets == ["fusing/fill50k"]
    assert "**Dataset:** [fusing/fill50k](https://huggingface.co/datasets/fusing/fill50k)" in card.text


def test_an_sd15_module_states_its_share_of_controlnet_as_the_benchmark_counts_it(tmp_path):
    LiteControlNetModel().save_pretrained(tmp_path / "module")  # the default design, for SD1.5: no run beside it
    text = model_card(tmp_path / "module", "someone/lite").card.text
    counts = json.loads((ROOT / "benchmarks" / "results" / "params.json").read_text())
    lite, controlnet = counts["Lite (default: feedback)"], counts["ControlNet (diffusers ControlNetModel.from_unet)"]
    assert f"**Parameters:** {lite:,} ({100 * lite / controlnet:.2f}% of a ControlNet's {controlnet:,} for SD1.5)" in text
    assert "**Base model:** not recorded" in text and "**Control kind:** `lite`" in text


def test_a_checkpoints_module_gets_the_card_of_its_run_and_step(world):
    text = model_card(world.run / "checkpoints" / "step-00000001" / "control", "someone/early").card.text
    assert "| steps | 1 |" in text and "| resolution | 32 |" in text


def test_the_kind_of_every_module_is_read_back(tiny_base):
    for kind in CONTROL_KINDS:
        module = build_control(kind, tiny_base.unet, vae_scale_factor=tiny_base.vae_scale_factor)
        assert control_kind_of(module) == kind
    # settings changed by control_options leave a design recognisable by the rest
    mlp = build_control("lite-mlp", tiny_base.unet, vae_scale_factor=tiny_base.vae_scale_factor, level_channels=64)
    assert control_kind_of(mlp) == "lite-mlp"


def test_the_card_shows_the_newest_epoch_grid_when_training_ended_with_an_epoch(tmp_path):
    from lite_controlnet.hub.model_card import latest_grid

    (tmp_path / "samples").mkdir()
    for name in ("epoch-000.png", "epoch-002.png", "epoch-001.png", "step-00000003.png"):
        (tmp_path / "samples" / name).write_bytes(b"png")
    assert latest_grid(tmp_path, step=8) == (tmp_path / "samples" / "epoch-002.png", "after epoch 2")
    assert latest_grid(tmp_path, step=3)[0] == tmp_path / "samples" / "step-00000003.png"


def test_the_cards_loading_snippet_runs(sd15_run, world, tmp_path, monkeypatch):
    text = model_card(sd15_run / "final", "someone/fill50k-lite").card.text
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert f'"{DEFAULT_BASE}"' in code
    code = code.replace(f'"{DEFAULT_BASE}"', repr(str(world.base)))  # no Hub here: the tiny base stands in
    downloaded = []

    def snapshot_download(repo_id, **kwargs):
        downloaded.append(repo_id)
        return str(sd15_run / "final")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    shutil.copy(world.image, "control.png")
    namespace = {}
    exec(compile(code, "model card snippet", "exec"), namespace)
    assert downloaded == ["someone/fill50k-lite"]
    assert PIL.Image.open("out.png").size == PIL.Image.open("control.png").size
    control = namespace["pipe"].controlnet
    assert isinstance(control, LiteControlNetModel)
    assert same_weights({k: v for k, v in control.state_dict().items()}, weights(sd15_run / "final"))


# -- the upload ----------------------------------------------------------------------------------


def test_push_uploads_the_module_its_card_and_grid_and_changes_nothing_here(sd15_run, monkeypatch):
    hub = FakeHub(monkeypatch)
    before = hashes(sd15_run / "final")
    code = cli.main(["push", "--model", str(sd15_run / "final"), "--repo-id", "someone/fill50k-lite", "--private",
                     "--token", "hf_test"])
    assert code is None
    assert hub.created == [{"repo_id": "someone/fill50k-lite", "token": "hf_test", "private": True, "exist_ok": True,
                            "repo_type": "model"}]
    (upload,) = hub.uploads
    assert upload["repo_id"] == "someone/fill50k-lite" and upload["token"] == "hf_test"
    files = upload["files"]
    assert set(files) == {"config.json", WEIGHTS, "MANIFEST.json", "README.md", GRID}
    final = sd15_run / "final"
    assert all(files[name] == (final / name).read_bytes() for name in ("config.json", WEIGHTS, "MANIFEST.json"))
    assert files[GRID] == (sd15_run / "samples" / "step-00000002.png").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == DEFAULT_BASE and 'snapshot_download("someone/fill50k-lite")' in card.text
    assert hashes(final) == before  # the card was staged elsewhere


def test_train_push_to_hub_creates_the_repo_first_and_pushes_the_final_module(world, tmp_path, monkeypatch):
    output = tmp_path / "my-run"
    hub = FakeHub(monkeypatch, user="me", on_create=lambda: hub.created[-1].update(trained=(output / "final").exists()))
    code = cli.main(["train", "--base", str(world.base), "--data", str(world.data), "--output", str(output),
                     *SMALL_FLAGS, "--max-steps", "1", "--threads", "1", "--push-to-hub"])
    assert code is None
    # the default id is the output folder's name, under the account; made before a step was trained
    assert [(c["repo_id"], c["trained"], c["private"]) for c in hub.created] == [("my-run", False, None)]
    (upload,) = hub.uploads
    assert upload["repo_id"] == "me/my-run" and upload["token"] is None  # the saved login's
    assert upload["files"][WEIGHTS] == (output / "final" / WEIGHTS).read_bytes()
    assert "token" not in (output / "train_config.json").read_text()


def test_a_push_that_fails_after_training_keeps_the_module_and_says_how_to_push_it_again(world, tmp_path, monkeypatch,
                                                                                        capsys):
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError

    FakeHub(monkeypatch)

    def refuse(api, **kwargs):
        raise HfHubHTTPError("403 Forbidden", response=SimpleNamespace(status_code=403, headers={}, request=None))

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refuse)
    output = tmp_path / "run"
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "--base", str(world.base), "--data", str(world.data), "--output", str(output), *SMALL_FLAGS,
                  "--max-steps", "1", "--threads", "1", "--push-to-hub", "--hub-model-id", "someone/run"])
    assert exit.value.code == 2 and (output / "final" / WEIGHTS).is_file()
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "may not write there (403" in line
    assert f"push --model {output / 'final'} --repo-id someone/run" in line


# -- starting from a trained module --------------------------------------------------------------


def test_a_run_starts_from_a_trained_module_then_resumes_from_its_own_checkpoints(world, tmp_path, monkeypatch):
    trained = weights(world.run / "final")
    cfg = TrainConfig(data=str(world.data), output=str(tmp_path / "b"), base=str(world.base), max_steps=1,
                      init_from=str(world.run / "final"), threads=1, **SMALL)
    start = Trainer(cfg, progress=False)
    start.setup()
    assert start.state.global_step == 0 and not start.optimizer.state  # step 0, a fresh optimizer
    assert same_weights(start.control_model.state_dict(), trained)
    # a Hub id is downloaded (here: from a mocked Hub) and starts the same way
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(world.run / "final"))
    from_hub = Trainer(TrainConfig(**{**cfg.to_dict(), "init_from": "someone/fill50k-lite"}), progress=False)
    from_hub.setup()
    assert same_weights(from_hub.control_model.state_dict(), trained)
    # it trains on from there, and records where it started
    final = train(cfg, progress=False)
    assert not same_weights(weights(final), trained)
    state = torch.load(tmp_path / "b" / "checkpoints" / "step-00000001" / "state.pt", weights_only=True)
    assert state["run"]["init_from"] == str((world.run / "final").resolve())
    # resumed, its checkpoint's weights win, wherever the init module now is; another one is refused
    moved = Path(shutil.copytree(world.run / "final", tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="belongs to another run.*--init-from"):
        train(TrainConfig(**{**cfg.to_dict(), "max_steps": 2, "init_from": str(moved)}), progress=False)
    resumed = Trainer(TrainConfig(**{**cfg.to_dict(), "max_steps": 2}), progress=False)
    resumed.setup()
    assert resumed.state.global_step == 1 and same_weights(resumed.control_model.state_dict(), weights(final))


@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_a_trained_module_of_every_kind_fits_a_run_of_its_kind_and_no_other(kind, tiny_base, tmp_path, recwarn):
    from types import SimpleNamespace

    from lite_controlnet.errors import UsageError
    from lite_controlnet.training.init_from import check_init_fits, open_init_module

    build_control(kind, tiny_base.unet, vae_scale_factor=tiny_base.vae_scale_factor).save_pretrained(tmp_path / "m")
    init = open_init_module(str(tmp_path / "m"), kind)
    check_init_fits(init, SimpleNamespace(init_from="m", control_kind=kind, control_options=None), tiny_base.unet,
                    tiny_base.vae_scale_factor)
    assert not [w for w in recwarn if "meta" in str(w.message)]  # shapes compared without a warning per tensor
    other = "lite" if kind != "lite" else "controlnet"
    with pytest.raises(UsageError, match=f"holds a {kind} module but --control-kind is {other}"):
        open_init_module(str(tmp_path / "m"), other)

