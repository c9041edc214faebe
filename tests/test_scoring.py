import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from lite_controlnet.bases.latents import to_pil
from lite_controlnet.bases.loading import BaseModels
from lite_controlnet.cli import main as cli_main
from lite_controlnet.data.fill50k import make_fill50k
from lite_controlnet.data.paired import PairedDataset
from lite_controlnet.evaluation import scoring
from lite_controlnet.evaluation.scoring import evaluate, one_step_scores, sample_pairs
from lite_controlnet.sampling import SampleSettings


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return make_fill50k(tmp_path_factory.mktemp("heldout"), num=12, size=64, seed=1, progress=False)


class OraclePipe:
    """Stands in for a pipeline: returns the true target of each prompt (or another sample's)."""

    controlnet = object()

    def __init__(self, dataset, offset=0):
        self.by_prompt = {}
        for i in range(len(dataset)):
            item = dataset[(i + offset) % len(dataset)]
            self.by_prompt[dataset[i]["prompt"]] = item["pixel_values"]
        self.calls = []

    def __call__(self, prompts, controls, generator=None, **kwargs):
        self.calls.append([g.initial_seed() for g in generator])
        return type("Out", (), {"images": to_pil(torch.stack([self.by_prompt[p] for p in prompts]))})


def pairs_of(dataset, num):
    """(control image, prompt) of the first `num` pairs, as `evaluate` samples them."""
    return [(to_pil(dataset[i]["conditioning_pixel_values"][None] * 2 - 1)[0], dataset[i]["prompt"]) for i in range(num)]


def test_true_targets_score_as_perfect_and_misplaced_ones_do_not(heldout):
    dataset = PairedDataset(heldout, resolution=64)
    perfect = sample_pairs(OraclePipe(dataset), pairs_of(dataset, 10), batch_size=4, seed=5)
    assert perfect.mean["count"] == 10 and perfect.mean["disk_iou"] >= 0.95 and perfect.mean["circle_colour_error"] < 3
    wrong = sample_pairs(OraclePipe(dataset, offset=1), pairs_of(dataset, 10), batch_size=4)
    assert wrong.mean["disk_iou"] < 0.5


def test_each_sample_gets_its_own_seed(heldout):
    dataset = PairedDataset(heldout, resolution=64)
    pipe = OraclePipe(dataset)
    sample_pairs(pipe, pairs_of(dataset, 6), batch_size=4, seed=100)
    assert pipe.calls == [[100, 101, 102, 103], [104, 105]]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_perfect_one_step_prediction_gives_back_the_target(tiny_base, heldout, prediction_type, monkeypatch):
    """A UNet that predicts exactly what its prediction type asks for, from the target of the
    control it is shown, gives back that target: disk IoU 1. Shown the next sample's control
    (`shuffle=True`), it draws that sample's disk, which misses the control it is scored against."""
    dataset = PairedDataset(heldout, resolution=64)
    target_of = {item["conditioning_pixel_values"].numpy().tobytes(): item["pixel_values"] for item in dataset}
    alphas = DDPMScheduler().alphas_cumprod

    def oracle(unet, noisy, t, text, seen_controls):
        clean = torch.stack([target_of[c.numpy().tobytes()] for c in seen_controls])
        a = alphas[t].view(-1, 1, 1, 1)
        noise = (noisy - a.sqrt() * clean) / (1 - a).sqrt()
        return {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * clean, "sample": clean}[
            prediction_type]

    monkeypatch.setattr(scoring, "prepare_control", lambda control, controls, dtype: controls)
    monkeypatch.setattr(scoring, "controlled_unet", oracle)
    # in pixel space (no VAE), so that the target is what the UNet works on
    base = BaseModels(tiny_base.tokenizer, tiny_base.text_encoder, tiny_base.unet,
                      DDPMScheduler(prediction_type=prediction_type), vae=None)
    control, indices = SimpleNamespace(dtype=torch.float32), list(range(8))
    own = one_step_scores(base, control, dataset, indices, timestep=800, batch_size=4)
    assert own["count"] == 8 and own["disk_iou"] > 0.99 and own["circle_colour_error"] < 1
    shuffled = one_step_scores(base, control, dataset, indices, timestep=800, batch_size=4, shuffle=True)
    assert shuffled["disk_iou"] < 0.5


def test_an_unknown_prediction_type_is_refused_by_name(tiny_base, heldout):
    """One-step scores must know what the UNet predicts: anything but epsilon, v or sample is an error
    (it used to be read as "sample")."""
    base = BaseModels(tiny_base.tokenizer, tiny_base.text_encoder, tiny_base.unet,
                      DDPMScheduler(prediction_type="flow_prediction"), vae=None)
    with pytest.raises(ValueError, match="prediction_type='flow_prediction'; one-step scoring supports 'epsilon'"):
        one_step_scores(base, None, PairedDataset(heldout, resolution=64), [0, 1], timestep=800)


def test_held_out_pairs_are_the_pairs_make_fill50k_writes(heldout):
    """The in-memory held-out pairs are, tensor for tensor, the dataset seed 1 folder read back."""
    from lite_controlnet.data.heldout import held_out_pairs

    folder, pairs = PairedDataset(heldout, resolution=64), held_out_pairs(12, 64)
    assert len(pairs) == 12 and pairs.resolution == 64
    for i in range(12):
        for key in ("pixel_values", "conditioning_pixel_values"):
            assert torch.equal(pairs[i][key], folder[i][key]), (i, key)
        assert pairs[i]["prompt"] == folder[i]["prompt"] == pairs.prompts[i]
    assert [control.tobytes() for control, _ in pairs.pairs()] == [pairs.images(i)[0].tobytes() for i in range(12)]


def test_evaluate_cli_writes_report_and_grid(tiny_base_dir, tiny_base, heldout, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["evaluate", "--base", str(tiny_base_dir), "--data", str(heldout), "--num", "4", "--steps", "2",
            "--resolution", "64", "--one-step-t", "700", "--seed", "3", "--out", str(out)]
    cli_main(args)
    report = json.loads(out.read_text())
    assert report["settings"]["control"] is None  # no --control-model: the text-only baseline
    assert len(report["per_sample"]) == 4 and report["mean"]["count"] == 4
    assert report["mean"]["disk_iou"] == pytest.approx(np.mean([s["disk_iou"] for s in report["per_sample"]]))
    # the one-step probe of the first 4 pairs at --one-step-t, seeded by --seed; no control, no shuffled probe
    expected = one_step_scores(tiny_base, None, PairedDataset(heldout, resolution=64), [0, 1, 2, 3], 700, 3)
    assert report["one_step"]["timestep"] == 700 and "shuffled_control" not in report["one_step"]
    assert report["one_step"]["with_control"]["disk_iou"] == pytest.approx(expected["disk_iou"])
    assert report["one_step"]["with_control"]["edge_f1"] == pytest.approx(expected["edge_f1"])
    assert out.with_suffix(".png").is_file()
    written = out.read_bytes()
    with pytest.raises(SystemExit) as info:
        cli_main(args)
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == written
    with pytest.raises(ValueError, match="only 12 pairs"):
        evaluate(OraclePipe(PairedDataset(heldout, resolution=64)), PairedDataset(heldout, resolution=64), num=20)


def test_the_report_is_score_control_of_the_pairs(tiny_base, heldout):
    """`evaluate` reports the one scoring path's numbers: sampled pair by pair with seed + k, and one step."""
    dataset = PairedDataset(heldout, resolution=64)
    pipe = scoring.pipeline_for(tiny_base, None)
    sampling = SampleSettings(steps=2, guidance=3.0, seed=7)
    report, grid = evaluate(pipe, dataset, num=3, sampling=sampling, timestep=600)
    alone = sample_pairs(pipe, pairs_of(dataset, 3), steps=2, guidance=3.0, seed=7, size=64)
    assert [s["disk_iou"] for s in report["per_sample"]] == [s["disk_iou"] for s in alone.scores]
    assert [s["index"] for s in report["per_sample"]] == [0, 1, 2]
    assert report["one_step"]["with_control"] == one_step_scores(tiny_base, None, dataset, [0, 1, 2], 600, 7)
    assert report["settings"]["seed"] == 7 and grid.size[0] == 4 * 128  # Prompt, Control, Target, Sample


def test_sample_and_evaluate_flags_are_the_settings_dataclasses_with_their_defaults():
    import dataclasses

    from lite_controlnet.cli import build_parser, parse_args
    from lite_controlnet.sampling import EvaluateSettings

    evaluate_args = parse_args(["evaluate", "--data", "d"])
    sample_args = parse_args(["sample", "--prompt", "p", "--steps", "3"])
    for f in dataclasses.fields(SampleSettings):
        assert getattr(evaluate_args, f.name) == f.default, f.name
        assert getattr(sample_args, f.name) == (3 if f.name == "steps" else f.default), f.name
    assert {f.name: getattr(evaluate_args, f.name) for f in dataclasses.fields(EvaluateSettings)} == \
        dataclasses.asdict(EvaluateSettings(data="d"))
    commands = build_parser()._subparsers._group_actions[0].choices
    text = commands["evaluate"].format_help()
    assert "denoising steps; default: 20" in text and "default: 7.5" in text and "default: 800" in text
    train_help = commands["train"].format_help()
    assert "default: 512" in train_help and "default: None" not in train_help


@pytest.fixture(scope="module")
def canny_shapes(tmp_path_factory):
    from lite_controlnet.conditions.shapes_dataset import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes") / "canny", num=8, size=64, condition="canny", seed=2,
                       workers=1, progress=False, low_threshold=50, high_threshold=150)


def test_scores_follow_the_condition_true_targets_near_perfect_and_others_low(canny_shapes):
    """With a condition, sampled images are scored by re-detecting it (canny here): the true
    targets obey their edges almost perfectly, other samples' targets do not."""
    from lite_controlnet.conditions import get_condition

    canny = get_condition("canny", low_threshold=50, high_threshold=150)
    dataset = PairedDataset(canny_shapes, resolution=64)
    perfect = sample_pairs(OraclePipe(dataset), pairs_of(dataset, 8), batch_size=4, condition=canny)
    wrong = sample_pairs(OraclePipe(dataset, offset=1), pairs_of(dataset, 8), batch_size=4, condition=canny)
    assert all(s["controllability"] == s["edge_f1"] for s in perfect.scores)
    assert perfect.mean["controllability"] > 0.9 and wrong.mean["controllability"] < 0.5
    assert "disk_iou" not in perfect.mean


def test_evaluate_cli_scores_as_the_condition_the_dataset_records(tiny_base_dir, canny_shapes, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["evaluate", "--base", str(tiny_base_dir), "--data", str(canny_shapes), "--num", "2", "--steps", "1",
            "--resolution", "64", "--out", str(out)]
    cli_main(args)
    report = json.loads(out.read_text())
    # the dataset's dataset.json names canny and its thresholds: the report scores with both
    assert report["settings"]["condition"] == {"name": "canny", "metric": "edge_f1", "low_threshold": 50,
                                               "high_threshold": 150}
    assert [s["controllability"] for s in report["per_sample"]] == [s["edge_f1"] for s in report["per_sample"]]
    # shapes scenes: their objects are scored too, and by number of objects
    assert all("object_iou" in s for s in report["per_sample"]) and sum(
        group["count"] for group in report["by_objects"].values()) == 2
    out = capsys.readouterr().out
    assert "canny controllability (edge_f1)" in out and "objects: per-object IoU" in out
    cli_main(args[:-2] + ["--condition", "outline", "--out", str(tmp_path / "outline.json")])
    outline = json.loads((tmp_path / "outline.json").read_text())
    assert outline["settings"]["condition"]["metric"] == "outline_iou"
    assert [s["controllability"] for s in outline["per_sample"]] == [s["outline_iou"] for s in outline["per_sample"]]


def test_object_scores_of_sampled_scenes_by_number_of_objects(tiny_base, canny_shapes):
    """With `objects`, each sampled image is also scored object by object against its scene's
    target, and the means are given by the scene's number of objects: the true targets score
    near-perfectly, another scene's do not."""
    from lite_controlnet.conditions import get_condition
    from lite_controlnet.data.shapes import parse_shapes_prompt

    canny = get_condition("canny", low_threshold=50, high_threshold=150)
    dataset = PairedDataset(canny_shapes, resolution=64)
    settings = scoring.ScoreSettings(heldout=2, sample_num=8)
    counts = sorted({len(parse_shapes_prompt(dataset[i]["prompt"])[0]) for i in range(8)})
    scored = {}
    for offset in (0, 1):
        scored[offset] = scoring.score_control(tiny_base, None, dataset, settings, pipe=OraclePipe(dataset, offset),
                                               condition=canny, objects=True)
    truth, wrong = scored[0].to_dict(), scored[1].to_dict()
    assert sorted(int(n) for n in truth["sampling_by_objects"]) == counts
    assert sum(group["count"] for group in truth["sampling_by_objects"].values()) == 8
    assert truth["sampling"]["object_iou"] > 0.95 and truth["sampling"]["right_object_count"] == 1.0
    assert wrong["sampling"]["object_iou"] < 0.5
    assert all(s["object_iou"] is not None for s in scored[0].samples.scores)
    assert "sampling_by_objects" not in scoring.score_control(tiny_base, None, dataset, settings,
                                                              pipe=OraclePipe(dataset), condition=canny).to_dict()
