"""The comparison's measurements: equal-budget configs, step time, peak memory, timed sampling, the table."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from safetensors import safe_open

from lite_controlnet import build_control
from lite_controlnet.controls import load_control
from lite_controlnet.data.fill50k import make_fill50k
from lite_controlnet.data.heldout import held_out_pairs
from lite_controlnet.evaluation.report import (FIDELITY_COLUMNS, bar_plots, count_parameters, markdown_table,
                                              result_rows, sample_grid)
from lite_controlnet.evaluation.scoring import pipeline_for, timed_samples
from lite_controlnet.evaluation.study import equal_budget_configs, step_seconds, train_measured
from lite_controlnet.training.logs import LossLog


@pytest.fixture(scope="module")
def fill50k_small(tmp_path_factory):
    return make_fill50k(tmp_path_factory.mktemp("fill50k"), num=8, size=64, progress=False, workers=1)


def test_the_parameters_counted_are_the_values_the_module_saves(tiny_base, tmp_path):
    module = build_control("lite", tiny_base.unet)
    module.requires_grad_(False)  # frozen or not, every parameter counts
    module.save_pretrained(tmp_path / "lite")
    files = list((tmp_path / "lite").glob("*.safetensors"))
    saved = 0
    for path in files:
        with safe_open(path, "pt") as weights:
            saved += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    assert len(files) == 1 and count_parameters(module) == saved > 0
    assert count_parameters(load_control(tmp_path / "lite")) == saved  # and as loaded again


def test_step_seconds_is_the_median_step_of_the_cumulative_log(tmp_path):
    log = LossLog(tmp_path)
    for step, seconds in enumerate([1.0, 1.5, 2.0, 12.0, 12.5], start=1):  # step 4 also saved a checkpoint
        log.append(step, 0, 0.1, 1e-4, seconds)
    assert step_seconds(tmp_path) == pytest.approx(0.5)
    assert np.isnan(step_seconds(tmp_path / "empty"))


PEAK_MEMORY_RUNS = """
import json, numpy as np
from lite_controlnet.evaluation.memory import PeakMemory
with PeakMemory() as big:
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    del block
with PeakMemory() as small:
    block = np.ones(10 * 2**20 // 8)
    del block
print(json.dumps({"big": big.bytes, "small": small.bytes, "kind": big.kind}))
"""


def test_peak_memory_sees_an_allocation_and_is_reset_between_runs():
    # in a process of its own: what earlier tests left in this one's heap would blur the peaks
    out = subprocess.run([sys.executable, "-c", PEAK_MEMORY_RUNS], capture_output=True, text=True, check=True)
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks["big"] > 300 * 2**20
    if peaks["kind"] == "peak RSS":  # Linux could reset it
        assert peaks["small"] < peaks["big"] - 200 * 2**20


def test_equal_budget_configs_differ_only_in_the_kind(fill50k_small, tmp_path):
    configs = equal_budget_configs(fill50k_small, tmp_path, steps=5, base="tiny", resolution=64, batch_size=4)
    lite, controlnet = configs["lite"].to_dict(), configs["controlnet"].to_dict()
    assert {k for k in lite if lite[k] != controlnet[k]} == {"control_kind", "output"}
    assert configs["lite"].lr == 1e-4 and configs["controlnet"].lr == 1e-5  # each its own default
    assert lite["max_steps"] == 5 and lite["epochs"] * (8 // 4) >= 5  # enough epochs for the steps
    assert lite["cache_dir"] == str(tmp_path / "cache")  # one cache for both
    rates = equal_budget_configs(fill50k_small, tmp_path, steps=5, learning_rates={"lite": 1e-3}, learning_rate=2e-5)
    assert rates["lite"].lr == 1e-3 and rates["controlnet"].lr == 2e-5  # per kind, else the shared setting
    with pytest.raises(ValueError, match=r"learning_rates names \['t2i'\]"):
        equal_budget_configs(fill50k_small, tmp_path, steps=5, learning_rates={"t2i": 1e-3})


def test_training_and_sampling_are_measured_for_both_kinds(tiny_base_dir, tiny_base, fill50k_small, tmp_path):
    configs = equal_budget_configs(fill50k_small, tmp_path, steps=2, base=str(tiny_base_dir), resolution=64,
                                   batch_size=4, num_workers=0, num_validation=1, validation_steps=1)
    training = {kind: train_measured(cfg, progress=False) for kind, cfg in configs.items()}
    samples = held_out_pairs(2, 64).pairs()
    sampling, parameters = {}, {}
    for kind, stats in training.items():
        assert stats.kind == kind and stats.steps == 2 and stats.step_seconds > 0 and stats.peak_memory > 0
        control = load_control(stats.final)
        parameters[kind] = count_parameters(control)
        pipe = pipeline_for(tiny_base, control)
        sampling[kind] = timed_samples(pipe, samples, steps=2)
        # the k-th image is the pipeline's image for seed k
        again = pipe(samples[1][1], samples[1][0], num_inference_steps=2,
                     generator=torch.Generator().manual_seed(1)).images[0]
        assert np.array_equal(np.asarray(sampling[kind].images[1]), np.asarray(again))
        assert len(sampling[kind].scores) == 2 and sampling[kind].mean["count"] == 2  # each image scored
        assert sampling[kind].seconds_per_image > 0
    for kind, count in parameters.items():  # what was trained and saved, counted as built
        assert count == sum(p.numel() for p in build_control(kind, tiny_base.unet).parameters()), kind
    assert parameters["controlnet"] > 3 * parameters["lite"]  # on the tiny base; at SD1.5 size 250x (test_model)

    again = train_measured(configs["lite"], progress=False)  # already complete: nothing trained, no memory
    assert again.steps == 2 and again.peak_memory is None and again.step_seconds == training["lite"].step_seconds

    rows = result_rows(parameters, training, sampling)
    assert [row["module"] for row in rows] == ["lite", "controlnet"]
    assert list(rows[0])[5:] == list(FIDELITY_COLUMNS.values())  # the headline scores measured, named
    table = markdown_table(rows)
    assert table.splitlines()[0].startswith("| module | parameters | train s/step |")
    assert f"{parameters['controlnet']:,}" in table and len(table.splitlines()) == 4
    fig = bar_plots(rows)
    titles = [ax.get_title().replace("\n", " ") for ax in fig.get_axes() if ax.get_visible()]
    assert titles == [c for c in rows[0] if c != "module"]
    training["lite"] = again
    rows = result_rows(parameters, training, sampling)
    assert "| n/a |" in markdown_table(rows)
    titles = [ax.get_title() for ax in bar_plots(rows).get_axes() if ax.get_visible()]
    assert not any(title.startswith("train memory") for title in titles)  # n/a is not plotted
    grid = sample_grid(samples, sampling, count=2)
    assert grid.size == (128 * 4, 20 + 128 * 2)  # 64 px enlarged to 128 px tiles


def test_markdown_table_formats_numbers():
    table = markdown_table([{"module": "lite", "parameters": 1084736, "s": 0.123456, "x": float("nan")}])
    assert table.splitlines() == ["| module | parameters | s | x |", "|---|---:|---:|---:|",
                                  "| lite | 1,084,736 | 0.123 | n/a |"]


class TargetPipe:
    """Stands in for a pipeline: draws the true target of the control it is given, or of the
    `shift`-th next sample's."""

    controlnet = object()

    def __init__(self, samples, targets, shift=0):
        self.samples, self.targets, self.shift = samples, targets, shift

    def __call__(self, prompts, controls, **kwargs):
        ks = [next(k for k, (c, _) in enumerate(self.samples) if c is control) for control in controls]
        return SimpleNamespace(images=[self.targets[(k + self.shift) % len(self.targets)] for k in ks])


def test_timed_samples_are_scored_against_their_own_controls():
    pairs = held_out_pairs(3, 64)
    samples = pairs.pairs()
    targets = [pairs.images(k)[1] for k in range(3)]
    perfect = timed_samples(TargetPipe(samples, targets), samples, steps=1).mean
    assert perfect["count"] == 3
    assert perfect["disk_iou"] > 0.95 and perfect["edge_f1"] > 0.9
    assert perfect["circle_colour_error"] < 3  # each image scored against its own prompt's colours
    misplaced = timed_samples(TargetPipe(samples, targets, shift=1), samples, steps=1).mean
    assert misplaced["disk_iou"] < 0.5 and misplaced["edge_f1"] < 0.5
