"""Hugging Face datasets as training data: a save_to_disk folder, parquet files, a Hub id (offline),
with diffusers' column flags; read into the same pairs, cache, run identity and exact resume as a
manifest folder. Every dataset is built here, a few 32 px rows."""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

datasets = pytest.importorskip("datasets")

from conftest import SMALL, SMALL_FLAGS  # noqa: E402
from lite_controlnet.data.fill50k import make_fill50k  # noqa: E402
from lite_controlnet.data.paired import DatasetError, PairedDataset  # noqa: E402
from lite_controlnet.training.cache import cache_key  # noqa: E402
from lite_controlnet.training.checkpoint import list_checkpoints  # noqa: E402
from lite_controlnet.training.config import TrainConfig  # noqa: E402
from lite_controlnet.training.trainer import train  # noqa: E402
from test_trainer import KILLED_AT, assert_same_weights, final_weights  # noqa: E402

COLUMNS = dict(image_column="photo", conditioning_image_column="edges", caption_column="caption")
COLUMN_FLAGS = ["--image-column", "photo", "--conditioning-image-column", "edges", "--caption-column", "caption"]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """datasets' own cache (the arrow copies of parquet files) in the test's folder, here and in subprocesses."""
    folder = str(tmp_path / "hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", folder)
    monkeypatch.setenv("HF_DATASETS_CACHE", folder)
    return folder


def png(array):
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def pictures(n, size=32, seed=0):
    """`n` (target, control) pairs of random RGB images, as uint8 arrays."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            for _ in range(n)]


def rows_dataset(pairs, captions=None, photo=None):
    """A datasets.Dataset with non-default columns: photo (target), edges (control), caption."""
    captions = captions or [f"caption {i}" for i in range(len(pairs))]
    photo = photo or [{"bytes": png(t), "path": None} for t, _ in pairs]
    table = {"photo": photo, "edges": [{"bytes": png(c), "path": None} for _, c in pairs], "caption": captions}
    return datasets.Dataset.from_dict(table).cast_column("photo", datasets.Image()).cast_column("edges", datasets.Image())


def target_of(array):
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255 * 2 - 1


def test_every_local_source_gives_the_same_pairs(tmp_path):
    pairs = pictures(4)
    captions = [["a red one"], ["first caption", "second"], ["c"], ["d"]]  # lists of captions
    ds = rows_dataset(pairs, captions)
    ds.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(tmp_path / "splits")
    ds.to_parquet(tmp_path / "one.parquet")
    (tmp_path / "hub-layout" / "data").mkdir(parents=True)
    ds.to_parquet(tmp_path / "hub-layout" / "data" / "train-00000-of-00001.parquet")
    ds.select([0]).to_parquet(tmp_path / "hub-layout" / "data" / "test-00000-of-00001.parquet")
    fingerprints = set()
    for source in ("saved", "splits", "one.parquet", "hub-layout"):
        dataset = PairedDataset(tmp_path / source, resolution=32, **COLUMNS)
        assert len(dataset) == 4, source  # the train split only
        for k, (target, control) in enumerate(pairs):
            item = dataset[k]
            assert torch.equal(item["pixel_values"], target_of(target)), source
            assert torch.equal(item["conditioning_pixel_values"], torch.from_numpy(control).permute(2, 0, 1) / 255)
        assert [r.prompt for r in dataset.records] == ["a red one", "first caption", "c", "d"]  # a list: its first
        fingerprints.add(dataset.fingerprint())
    assert len(fingerprints) == 1  # the content, not where or how it is stored
    # other columns, or fewer rows, are other data
    swapped = PairedDataset(tmp_path / "saved", resolution=32, image_column="edges", conditioning_image_column="photo",
                            caption_column="caption")
    first = PairedDataset(tmp_path / "saved", resolution=32, max_train_samples=3, **COLUMNS)
    assert len(first) == 3 and torch.equal(first[2]["pixel_values"], target_of(pairs[2][0]))
    assert len({swapped.fingerprint(), first.fingerprint(), *fingerprints}) == 3
    assert PairedDataset(tmp_path / "saved", max_train_samples=9, **COLUMNS).fingerprint() in fingerprints


def test_images_as_paths_or_bytes_and_the_cache_key_follows_the_content(tmp_path):
    pairs = pictures(2)
    (tmp_path / "data" / "img").mkdir(parents=True)
    for k, (target, _) in enumerate(pairs):
        PIL.Image.fromarray(target).save(tmp_path / "data" / "img" / f"{k}.png")
    table = {"photo": ["img/0.png", "img/1.png"], "edges": [png(c) for _, c in pairs], "caption": ["a", "b"]}
    datasets.Dataset.from_dict(table).to_parquet(tmp_path / "data" / "train.parquet")
    dataset = PairedDataset(tmp_path / "data" / "train.parquet", resolution=32, **COLUMNS)
    assert torch.equal(dataset[1]["pixel_values"], target_of(pairs[1][0]))
    key = cache_key(dataset, 32, "tiny")
    # the same rows elsewhere share the cache; a path is taken from the dataset's own folder
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    assert cache_key(PairedDataset(tmp_path / "moved", resolution=32, **COLUMNS), 32, "tiny") == key
    datasets.Dataset.from_dict(table).to_parquet(tmp_path / "alone.parquet")
    with pytest.raises(DatasetError, match=r"alone.parquet, row 0, column 'photo' \(--image-column\): image file "
                                           r".*img/0.png not found"):
        PairedDataset(tmp_path / "alone.parquet", resolution=32, **COLUMNS).fingerprint()
    # one changed target is another cache; the same rows stored otherwise are the same, other rows are not
    PIL.Image.fromarray(pairs[0][1]).save(tmp_path / "data" / "img" / "1.png")
    assert cache_key(PairedDataset(tmp_path / "data", resolution=32, **COLUMNS), 32, "tiny") != key
    rows_dataset(pairs, captions=["a", "b"]).to_parquet(tmp_path / "embedded.parquet")  # the same bytes, inside
    assert cache_key(PairedDataset(tmp_path / "embedded.parquet", resolution=32, **COLUMNS), 32, "tiny") == key
    rows_dataset(pictures(2, seed=1), captions=["a", "b"]).to_parquet(tmp_path / "other.parquet")
    assert cache_key(PairedDataset(tmp_path / "other.parquet", resolution=32, **COLUMNS), 32, "tiny") != key


def test_columns_that_are_not_there_or_hold_no_images_are_named(tmp_path):
    rows_dataset(pictures(2)).save_to_disk(tmp_path / "saved")
    with pytest.raises(DatasetError) as error:
        PairedDataset(tmp_path / "saved")  # diffusers' default names
    assert "no column 'image' (--image-column)" in str(error.value)
    assert "['photo', 'edges', 'caption']" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DatasetError, match=r"column 'photo' \(--caption-column\) holds Image.*expected captions"):
        PairedDataset(tmp_path / "saved", image_column="photo", conditioning_image_column="edges",
                      caption_column="photo")
    datasets.Dataset.from_dict({"photo": [1, 2], "edges": [png(pictures(1)[0][1])] * 2, "caption": ["a", "b"]}) \
        .save_to_disk(tmp_path / "numbers")
    with pytest.raises(DatasetError, match=r"'photo' \(--image-column\) holds Value\('int64'\).*expected images"):
        PairedDataset(tmp_path / "numbers", **COLUMNS)


def test_a_bad_row_is_named_by_row_and_column(tmp_path):
    pairs = pictures(4)
    photo = [{"bytes": png(t), "path": None} for t, _ in pairs]
    photo[2] = {"bytes": b"not a png", "path": None}
    rows_dataset(pairs, captions=["a", None, "c", "d"], photo=photo).save_to_disk(tmp_path / "saved")
    with pytest.raises(DatasetError) as error:
        PairedDataset(tmp_path / "saved", **COLUMNS)
    assert str(error.value).endswith("row 1, column 'caption' (--caption-column): missing caption (None); expected a "
                                     "non-empty text caption.")
    dataset = PairedDataset(tmp_path / "saved", resolution=32, on_error="skip", **COLUMNS)
    assert [r.line for r in dataset.records] == [0, 2, 3] and dataset.report.skipped == 1
    with pytest.raises(DatasetError, match=r"row 2, column 'photo' \(--image-column\): cannot read the image"):
        dataset[1]
    report = dataset.check()
    assert [r.line for r in dataset.records] == [0, 3] and [p.line for p in report.problems] == [1, 2]
    # a grey image is refused as in a manifest folder, or converted when asked
    grey = rows_dataset(pairs[:1])
    grey = datasets.Dataset.from_dict({**grey.to_dict(), "edges": [png(pairs[0][1][..., 0])]})
    grey.to_parquet(tmp_path / "grey.parquet")
    with pytest.raises(DatasetError, match=r"row 0, column 'edges' .*has mode 'L'; expected 'RGB'"):
        PairedDataset(tmp_path / "grey.parquet", **COLUMNS)[0]
    with pytest.warns(UserWarning, match="row 0: converted"):
        assert PairedDataset(tmp_path / "grey.parquet", convert_mode=True, **COLUMNS)[0]["prompt"] == "caption 0"


def test_max_train_samples_of_a_manifest_folder_keeps_its_first_pairs_and_its_identity(tmp_path):
    data = make_fill50k(tmp_path / "fill50k", num=6, size=32, progress=False)
    whole = PairedDataset(data, resolution=32)
    assert whole.fingerprint() == hashlib.sha256((data / "prompt.json").read_bytes()).hexdigest()  # as before
    first = PairedDataset(data, resolution=32, max_train_samples=4)
    assert [r.line for r in first.records] == [1, 2, 3, 4] and first.fingerprint() != whole.fingerprint()
    assert PairedDataset(data, max_train_samples=6).fingerprint() == whole.fingerprint()
    with pytest.raises(DatasetError, match="--caption-column name columns of a Hugging Face dataset.*manifest folder"):
        PairedDataset(data, caption_column="prompt")


def test_hub_ids_offline_names_that_are_neither_and_damaged_parquet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as error:
        PairedDataset("someone/not-in-the-cache")
    message = str(error.value)
    assert message.startswith("someone/not-in-the-cache: cannot load this Hub dataset") and "\n" not in message
    assert "save_to_disk" in message and "parquet" in message
    with pytest.raises(DatasetError, match="not-a-folder does not exist.*Hub dataset id such as fusing/fill50k"):
        PairedDataset("not-a-folder")
    def scripted(*args, **kwargs):  # what datasets >= 4 says of a Hub dataset built by a script
        raise RuntimeError("Dataset scripts are no longer supported, but found fill50k.py")

    with monkeypatch.context() as patched, pytest.raises(DatasetError, match=r"fusing/fill50k is built by a loading "
                                                             r"script.*--revision refs/convert/parquet --local-dir DIR`"):
        patched.setattr(datasets, "load_dataset", scripted)
        PairedDataset("fusing/fill50k")
    (tmp_path / "damaged.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="damaged.parquet: cannot read this parquet dataset: Parquet magic bytes"):
        PairedDataset(tmp_path / "damaged.parquet")


def test_without_the_datasets_library_a_manifest_still_reads_and_parquet_says_how_to_install(tmp_path, monkeypatch):
    rows_dataset(pictures(1)).to_parquet(tmp_path / "one.parquet")
    data = make_fill50k(tmp_path / "fill50k", num=2, size=32, progress=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails
    assert len(PairedDataset(data)) == 2
    with pytest.raises(DatasetError, match=r"one.parquet \(a parquet dataset\) is read through the `datasets` "
                                           r"library, which is not installed: pip install datasets"):
        PairedDataset(tmp_path / "one.parquet", **COLUMNS)


def test_config_checks_the_columns_and_max_train_samples():
    with pytest.raises(ValueError, match=r"max_train_samples=0 \(--max-train-samples\) is invalid: expected a whole "
                                         r"number >= 1"):
        TrainConfig(data="d", output="o", max_train_samples=0)
    with pytest.raises(ValueError, match=r"caption_column='image' \(--caption-column\).*other than --image-column"):
        TrainConfig(data="d", output="o", caption_column="image")
    with pytest.raises(ValueError, match=r"image_column=' ' \(--image-column\).*name of a column"):
        TrainConfig(data="d", output="o", image_column=" ")


def test_parquet_with_its_own_columns_trains_resumes_bitwise_after_a_kill_and_refuses_other_columns(
        tiny_base_dir, tmp_path, hf_cache, capsys):
    # Fill50k pairs (which evaluate's scores read) in columns of other names
    fill50k = make_fill50k(tmp_path / "fill50k", num=10, size=32, progress=False)
    lines = [json.loads(line) for line in (fill50k / "prompt.json").read_text().splitlines()]
    captions = [line["prompt"] for line in lines]
    datasets.Dataset.from_dict({
        "photo": [{"bytes": (fill50k / line["target"]).read_bytes(), "path": None} for line in lines],
        "edges": [{"bytes": (fill50k / line["source"]).read_bytes(), "path": None} for line in lines],
        "caption": captions,
    }, features=datasets.Features({"photo": datasets.Image(), "edges": datasets.Image(),
                                   "caption": datasets.Value("string")})).to_parquet(tmp_path / "train.parquet")
    data = tmp_path / "train.parquet"
    settings = dict(base=str(tiny_base_dir), data=str(data), **COLUMNS, max_train_samples=8, max_steps=4,
                    checkpoint_every=2, threads=1, **SMALL)
    reference = train(TrainConfig(output=str(tmp_path / "ref"), **settings), progress=False)
    assert (reference.parent / "samples" / "epoch-001.png").is_file()  # the epoch's grid was sampled
    # the CLI, killed as it begins step 4 of 4: the last checkpoint at step 2
    cut = tmp_path / "cut"
    args = ["train", "--base", str(tiny_base_dir), "--data", str(data), "--output", str(cut), *COLUMN_FLAGS,
            "--max-train-samples", "8", "--max-steps", "4", "--checkpoint-every", "2", "--threads", "1", *SMALL_FLAGS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "KILL_AT_STEP": "3"}
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, *args], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [c.step for c in list_checkpoints(cut)] == [2] and not (cut / "final").exists()
    # started again: from step 2, to the reference's weights bit for bit, on the cache built before the kill
    (cache,) = (cut / "cache").iterdir()
    latents = (cache / "latents.npy").stat().st_mtime_ns
    train(TrainConfig(output=str(cut), **settings), progress=False)
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(cut))
    assert [p.name for p in (cut / "cache").iterdir()] == [cache.name]
    assert (cache / "latents.npy").stat().st_mtime_ns == latents
    # the columns and max_train_samples belong to the run: another choice is another run
    from lite_controlnet.errors import UsageError

    for change in (dict(max_train_samples=6), dict(image_column="edges", conditioning_image_column="photo")):
        with pytest.raises(UsageError, match="belongs to another run.*--data"):
            train(TrainConfig(output=str(cut), **{**settings, **change, "max_steps": 5}), progress=False)
    # the module samples, and evaluate reads the same source and columns
    from lite_controlnet import cli

    out = tmp_path / "report.json"
    cli.main(["evaluate", "--base", str(tiny_base_dir), "--control-model", str(reference), "--data", str(data),
              *COLUMN_FLAGS, "--num", "2", "--steps", "1", "--resolution", "32", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [s["prompt"] for s in report["per_sample"]] == captions[:2]
    assert report["settings"]["data"] == str(data) and out.with_suffix(".png").is_file()
