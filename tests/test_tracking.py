"""Your own validation pairs in the grids and the callback, and the trackers (`report_to`): TensorBoard
event files read back, a resumed run's log without repeated steps, wandb at its module's boundary."""

import csv
import io
import json
import shutil
import sys
import textwrap
from types import SimpleNamespace

import accelerate.tracking
from accelerate.utils import LoggerType
import numpy as np
import PIL.Image
import pytest

from conftest import SMALL, SMALL_FLAGS
from lite_controlnet.data.fill50k import make_fill50k
from lite_controlnet.data.paired import _resize_and_crop
from lite_controlnet.training.checkpoint import list_checkpoints
from lite_controlnet.training.config import TrainConfig
from lite_controlnet.training.grids import COLUMNS, HEADER
from lite_controlnet.training.trackers import GRID_TAG, PROJECT
from lite_controlnet.training.trainer import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TILE = 128  # grids enlarge 32 px tiles to 128 px
PROMPTS = ["my own red disk", "my own blue disk"]


def own_control(path):
    """A 48x40 control image of one's own, not square: read as training reads, it is resized and cropped."""
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def loss_rows(output):
    with open(output / "logs" / "loss.csv", newline="") as f:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(f)}


def events(output):
    accumulator = event_accumulator.EventAccumulator(
        str(output / "logs" / PROJECT), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_base_dir):
    """A run of 4 steps (one epoch), one image for two prompts of one's own beside one dataset row,
    logged to TensorBoard; stopped after step 3 and resumed from its checkpoint of step 2 (step 3
    redone, as after a kill), to the end of the epoch."""
    root = tmp_path_factory.mktemp("tracking")
    data = make_fill50k(root / "data", num=8, size=32, progress=False)
    image = own_control(root / "mine.png")
    output = root / "run"
    seen = []
    settings = dict(data=str(data), output=str(output), base=str(tiny_base_dir), epochs=1, checkpoint_every=2,
                    validation_image=[str(image)], validation_prompt=PROMPTS, report_to="tensorboard", **SMALL)
    train(TrainConfig(max_steps=3, **settings), on_epoch_end=seen.append, progress=False)
    first_events = events(output)
    first_loss = loss_rows(output)
    assert [c.step for c in list_checkpoints(output)] == [3, 2]
    shutil.rmtree(list_checkpoints(output)[0].path)
    shutil.rmtree(output / "final")
    train(TrainConfig(**settings), on_epoch_end=seen.append, progress=False)
    return SimpleNamespace(output=output, image=image, seen=seen, first_events=first_events, first_loss=first_loss)


def test_own_pairs_are_rows_of_every_grid_and_of_the_callback(run):
    assert [end.epoch for end in run.seen] == [0, 1]
    expected = _resize_and_crop(PIL.Image.open(run.image).convert("RGB"), 32)
    for end in run.seen:
        # one dataset row (num_validation=1), then the two prompts of the one image
        assert [row.prompt for row in end.rows[1:]] == PROMPTS and len(end.rows) == 3
        for row in end.rows[1:]:
            assert np.array_equal(np.asarray(row.control), np.asarray(expected))
        grid = PIL.Image.open(end.grid_path)
        assert grid.size == (len(COLUMNS) * TILE, 2 * HEADER + 3 * TILE)  # a title band, the column titles, 3 rows
        control_column = COLUMNS.index("Control") * TILE
        for row in (1, 2):
            top = 2 * HEADER + row * TILE
            tile = grid.crop((control_column, top, control_column + TILE, top + TILE))
            assert np.array_equal(np.asarray(tile), np.asarray(expected.resize((TILE, TILE), PIL.Image.NEAREST)))


def test_tensorboard_holds_the_loss_learning_rate_and_grids_of_each_step(run):
    loss = loss_rows(run.output)
    assert sorted(loss) == [1, 2, 3, 4]
    logged = events(run.output)
    assert [e.step for e in logged.Scalars("loss")] == [1, 2, 3, 4]  # once each, after the resume too
    assert [e.value for e in logged.Scalars("loss")] == pytest.approx([loss[s] for s in range(1, 5)], rel=1e-5)
    assert [e.value for e in logged.Scalars("lr")] == pytest.approx([TrainConfig(data="d", output="o").lr] * 4)
    # the grids, as saved: before training and at the end of the epoch (that of the first stop, at
    # step 3, was dropped with the step when the resumed run redid it)
    images = logged.Images(GRID_TAG)
    assert [e.step for e in images] == [0, 4]
    for event, name in zip(images, ["epoch-000", "epoch-001"]):
        logged_grid = PIL.Image.open(io.BytesIO(event.encoded_image_string))
        assert np.array_equal(np.asarray(logged_grid), np.asarray(PIL.Image.open(run.output / "samples" / f"{name}.png")))


def test_a_resumed_run_replaces_the_steps_it_redoes(run):
    # the first start logged step 3; the resumed one redid it (from the checkpoint of step 2), and
    # the log holds it once, with the value of the redone step (the same: resuming is exact)
    assert [e.step for e in run.first_events.Scalars("loss")] == [1, 2, 3]
    assert len(list((run.output / "logs" / PROJECT).glob("events.out.tfevents.*"))) == 2
    assert loss_rows(run.output)[3] == run.first_loss[3]


FAKE_WANDB = textwrap.dedent('''
    """A stand-in for wandb that records what it is asked."""
    calls = []

    class Image:
        def __init__(self, image):
            self.image = image

    class _Config:
        def update(self, values, allow_val_change=False):
            calls.append(("config", values))

    config = _Config()

    class _Run:
        def log(self, values, step=None, **kwargs):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return _Run()
''')


def test_wandb_gets_the_run_through_accelerates_tracker(tmp_path, tiny_base_dir, monkeypatch):
    # a package "wandb" with its metadata, as pip installs one, so that Accelerate finds it
    (tmp_path / "site" / "wandb").mkdir(parents=True)
    (tmp_path / "site" / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    (tmp_path / "site" / "wandb-0.0.1.dist-info").mkdir()
    (tmp_path / "site" / "wandb-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: wandb\n"
                                                                          "Version: 0.0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    # Accelerate lists the trackers installed when it is imported, before this one was
    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [*accelerate.tracking._available_trackers, LoggerType.WANDB])
    data = make_fill50k(tmp_path / "data", num=4, size=32, progress=False)
    output = tmp_path / "run"
    train(TrainConfig(data=str(data), output=str(output), base=str(tiny_base_dir), max_steps=2, report_to="wandb",
                      **SMALL), progress=False)
    calls = sys.modules["wandb"].calls
    (_, init), (_, settings) = calls[:2]
    assert init == {"project": PROJECT, "dir": str(output / "logs"), "name": "run",
                    "id": (output / "logs" / "wandb-id").read_text(), "resume": "allow"}
    assert settings["max_steps"] == 2 and settings["report_to"] == "wandb"
    assert all(value is None or isinstance(value, (bool, int, float, str)) for value in settings.values())
    logs = [call for call in calls if call[0] == "log"]
    assert [(sorted(values), step) for _, values, step in logs] == [
        ([GRID_TAG], 0), (["loss", "lr"], 1), (["loss", "lr"], 2), ([GRID_TAG], 2)]
    assert [values["loss"] for _, values, _ in logs[1:3]] == pytest.approx(list(loss_rows(output).values()), rel=1e-5)
    grid = logs[-1][1][GRID_TAG][0].image
    assert np.array_equal(np.asarray(grid), np.asarray(PIL.Image.open(output / "samples" / "epoch-001.png")))
    assert calls[-1] == ("finish",)


def test_a_run_resumes_with_other_pairs_of_ones_own_through_the_cli(world, tmp_path, capsys):
    """Validation pairs are not part of what defines a run: a resume may add or change them, here
    with no dataset rows at all (--num-validation 0), and the flags take several values or repeat."""
    from lite_controlnet import cli

    run = shutil.copytree(world.run, tmp_path / "run")
    image = own_control(tmp_path / "mine.png")
    flags = list(SMALL_FLAGS)
    flags[flags.index("--num-validation") + 1] = "0"
    cli.main(["train", "--base", str(world.base), "--data", str(world.data), "--output", str(run), *flags,
              "--max-steps", "3", "--validation-image", str(image), str(world.image), "--validation-prompt", "mine",
              "--validation-prompt", "the dataset's first control"])
    assert "Resumed from" in capsys.readouterr().out
    grid = PIL.Image.open(run / "samples" / "step-00000003.png")
    assert grid.size == (len(COLUMNS) * TILE, 2 * HEADER + 2 * TILE)  # the two pairs alone
    top, left = 2 * HEADER, COLUMNS.index("Control") * TILE
    tile = grid.crop((left, top, left + TILE, top + TILE))
    expected = _resize_and_crop(PIL.Image.open(image).convert("RGB"), 32).resize((TILE, TILE), PIL.Image.NEAREST)
    assert np.array_equal(np.asarray(tile), np.asarray(expected))
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["validation_image"] == [str(image), str(world.image)] and saved["num_validation"] == 0


def test_pairs_from_a_settings_file_pair_up_as_diffusers_does():
    one_image = TrainConfig.from_dict({"data": "d", "output": "o", "validation_image": "a.png",
                                       "validation_prompt": ["x", "y"]})
    assert one_image.validation_image == ["a.png"]  # a single pair may be written without a list
    assert one_image.validation_pairs == [("a.png", "x"), ("a.png", "y")]
    one_prompt = TrainConfig(data="d", output="o", validation_image=["a.png", "b.png"], validation_prompt=["x"])
    assert one_prompt.validation_pairs == [("a.png", "x"), ("b.png", "x")]
    assert TrainConfig(data="d", output="o").validation_pairs == []
    with pytest.raises(ValueError, match=r"validation_image=\[1\] \(--validation-image\).*a list of texts"):
        TrainConfig.from_dict({"data": "d", "output": "o", "validation_image": [1], "validation_prompt": "x"})
