import json

import pytest
import torch

from lite_controlnet.cli import main as cli_main
from lite_controlnet.data import PairedDataset
from lite_controlnet.evaluate import evaluate
from lite_controlnet.fill50k import make_fill50k


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
        from lite_controlnet.latents import to_pil

        self.calls.append([g.initial_seed() for g in generator])
        return type("Out", (), {"images": to_pil(torch.stack([self.by_prompt[p] for p in prompts]))})


def test_true_targets_score_as_perfect_and_misplaced_ones_do_not(heldout):
    dataset = PairedDataset(heldout, resolution=64)
    report, grid = evaluate(OraclePipe(dataset), dataset, num=10, batch_size=4, seed=5)
    mean = report["mean"]
    assert mean["count"] == 10 and mean["disk_iou"] >= 0.95 and mean["circle_colour_error"] < 3
    assert [s["index"] for s in report["per_sample"]] == list(range(10))
    assert grid.size[0] == 4 * 128  # Prompt, Control, Target, Sample
    wrong, _ = evaluate(OraclePipe(dataset, offset=1), dataset, num=10, batch_size=4)
    assert wrong["mean"]["disk_iou"] < 0.5


def test_each_sample_gets_its_own_seed(heldout):
    dataset = PairedDataset(heldout, resolution=64)
    pipe = OraclePipe(dataset)
    evaluate(pipe, dataset, num=6, batch_size=4, seed=100)
    assert pipe.calls == [[100, 101, 102, 103], [104, 105]]


def test_evaluate_cli_writes_report_and_grid(tiny_base_dir, heldout, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["evaluate", "--base", str(tiny_base_dir), "--data", str(heldout), "--num", "4", "--steps", "2",
            "--resolution", "64", "--out", str(out)]
    cli_main(args)
    report = json.loads(out.read_text())
    assert report["settings"]["control"] is None  # no --control-model: the text-only baseline
    assert len(report["per_sample"]) == 4 and report["mean"]["count"] == 4
    assert 0.0 <= report["one_step"]["with_control"]["disk_iou"] <= 1.0
    assert out.with_suffix(".png").is_file()
    written = out.read_bytes()
    with pytest.raises(SystemExit) as info:
        cli_main(args)
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == written
    with pytest.raises(ValueError, match="only 12 pairs"):
        evaluate(OraclePipe(PairedDataset(heldout, resolution=64)), PairedDataset(heldout, resolution=64), num=20)
