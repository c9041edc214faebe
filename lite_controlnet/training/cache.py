"""Latents of every target and text embeddings of every distinct prompt, encoded once.

An epoch then reads them instead of running the VAE encoder and the text encoder at every
step. The cache is a folder of numpy files (memory-mapped, so 50k latents need no RAM), keyed
by the dataset's manifest, the resolution and the base model, so another dataset or size gets
its own. Within it, each latent is keyed on the content it encodes: the size, time and SHA-256
of its target image are recorded, and a target that changed since is encoded again. It is
built in chunks and records its progress: after a disconnect, building continues where it
stopped, and a later session reuses it.

The latents file is allocated on disk before it is written through its memory map: a write
into a sparse memory-mapped file on a full disk kills the process with SIGBUS, without a
word; allocating first turns a full disk into an `OSError` that says how much is needed.

Latents are the VAE posterior's mean (its spread is negligible for SD's VAE), scaled by the
VAE's scaling factor, stored as float16.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..atomic import atomic_write, write_atomic
from ..bases.loading import BaseModels
from ..data.paired import DatasetError, PairedDataset, check_image_file
from ..errors import disk_full, is_disk_full, require_space
from ..bases.latents import encode_text

TEXT_CACHE_LIMIT = 4 * 2**30  # above this many bytes of embeddings, the text encoder runs per step
FLUSH_EVERY = 64  # batches between progress saves


def cache_key(dataset: PairedDataset, resolution: int, base_name: str) -> str:
    """A short hash of what the cached values depend on: the manifest (a Hugging Face dataset: the
    content of its rows, `PairedDataset.fingerprint`), the size, the base."""
    digest = hashlib.sha256()
    if dataset.source is None:
        digest.update(Path(dataset.manifest).read_bytes())
    else:
        digest.update(f"datasets|{dataset.fingerprint()}".encode())
    digest.update(f"|{len(dataset)}|{resolution}|{base_name}".encode())
    return digest.hexdigest()[:16]


@dataclass
class TrainingCache:
    """Cached latents (N, C, h, w) and text embeddings (P, L, D) with each sample's prompt id."""

    folder: Path
    latents: np.ndarray
    prompt_ids: np.ndarray
    prompts: list[str]
    text: np.ndarray | None  # None when too large: encode per step instead

    def latent_batch(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.latents[i] for i in indices]))

    def text_batch(self, indices: list[int], base: BaseModels | None = None, drop: list[bool] | None = None) -> torch.Tensor:
        """Embeddings of the samples' prompts; `drop[k]` swaps in the empty prompt (index 0)."""
        ids = [0 if drop and drop[k] else int(self.prompt_ids[i]) for k, i in enumerate(indices)]
        if self.text is not None:
            return torch.from_numpy(np.stack([self.text[i] for i in ids]))
        return encode_text(base.tokenizer, base.text_encoder, [self.prompts[i] for i in ids]).cpu()


def build_cache(
    dataset: PairedDataset,
    base: BaseModels,
    folder: Path,
    base_name: str,
    batch_size: int = 8,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainingCache:
    """Encode what is missing from the cache in `folder`, then open it.

    Args:
        dataset: the training pairs, at the training resolution.
        base: the frozen base (its VAE and text encoder do the encoding).
        folder: the cache root; a subfolder per dataset/resolution/base is used.
        base_name: the base's id or folder, part of the cache key.
        batch_size: images per VAE call.
        num_workers: data loader processes.
        device: where to run the encoders.
    """
    if dataset.resolution is None:
        raise ValueError("The training cache needs a dataset with a fixed resolution (resolution=None was given).")
    folder = Path(folder) / cache_key(dataset, dataset.resolution, base_name)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    size = dataset.resolution // base.vae_scale_factor
    latent_shape = (base.vae.config.latent_channels if base.vae is not None else 3, size, size)
    text_shape = (base.tokenizer.model_max_length, base.text_encoder.config.hidden_size)
    latents_file, done_file, text_file = folder / "latents.npy", folder / "latents_done.npy", folder / "text.npy"

    # 0. a damaged file (a disconnect on Drive, a disk that filled up, a hand edit) is named,
    # removed and built again: the cache holds only what can be encoded again
    wanted = list(dict.fromkeys([""] + [r.prompt for r in dataset.records]))
    prompts = _read_json(folder / "prompts.json", lambda v: _prompts_problem(v, wanted), [text_file])
    _check_npy(latents_file, (n, *latent_shape), np.float16, [done_file])
    _check_npy(done_file, (n,), np.bool_)
    if prompts is not None:
        _check_npy(text_file, (len(prompts), *text_shape), np.float16)

    # 1. prompts: distinct ones, the empty prompt first (for prompt dropout)
    prompts_file = folder / "prompts.json"
    if prompts is None:
        prompts = wanted
        write_atomic(prompts_file, json.dumps(prompts))
    ids = {p: i for i, p in enumerate(prompts)}
    prompt_ids = np.array([ids[r.prompt] for r in dataset.records], dtype=np.int32)

    # what is still to be written must fit, before any of it is: refused up front, in one line
    text_bytes = len(prompts) * math.prod(text_shape) * 2
    cache_text = text_bytes <= TEXT_CACHE_LIMIT
    needed = (text_bytes + 4096 if cache_text and not text_file.is_file() else 0) + \
        (math.prod((n, *latent_shape)) * 2 + 4096 if not latents_file.is_file() else 0)
    if needed:
        require_space(folder, needed, f" for the latent cache of {n} images and {len(prompts)} prompts")

    # 2. text embeddings, unless too large to keep
    text = None
    if cache_text:
        if not text_file.is_file():
            chunks = []
            for start in tqdm(range(0, len(prompts), 64), desc="Encoding prompts", disable=not progress):
                emb = encode_text(base.tokenizer, base.text_encoder, prompts[start : start + 64], device)
                chunks.append(emb.float().cpu().numpy().astype(np.float16))
            try:
                _atomic_write_npy(text_file, np.concatenate(chunks))
            except OSError as error:
                if not is_disk_full(error):
                    raise
                raise disk_full(folder, text_bytes, shutil.disk_usage(folder).free,
                                f" for the text embeddings of {len(prompts)} prompts (latent cache)") from error
        text = np.load(text_file, mmap_mode="r")

    # 3. latents, in chunks, resumable; those whose target changed since are encoded again
    if not latents_file.is_file():
        _create_latents_file(latents_file, (n, *latent_shape))
    done = np.load(done_file) if done_file.is_file() else np.zeros(n, dtype=bool)
    _forget_stale(dataset, folder, done, done_file, progress)
    todo = np.flatnonzero(~done)
    if len(todo):
        _allocate(latents_file)
        latents = np.load(latents_file, mmap_mode="r+")
        loader = DataLoader(Subset(dataset, todo.tolist()), batch_size=batch_size, num_workers=num_workers)
        with tqdm(total=len(todo), desc="Encoding latents", disable=not progress) as bar:
            for k, batch in enumerate(loader):
                with torch.no_grad():
                    encoded = _encode(base, batch["pixel_values"], device)
                index = batch["index"].numpy()
                latents[index] = encoded.float().cpu().numpy().astype(np.float16)
                done[index] = True
                bar.update(len(index))
                if (k + 1) % FLUSH_EVERY == 0:
                    latents.flush()
                    _atomic_write_npy(done_file, done)
        latents.flush()
        del latents
        _atomic_write_npy(done_file, done)
    if len(todo) or not (folder / "info.json").is_file():
        (folder / "info.json").write_text(json.dumps(
            {"manifest": str(dataset.manifest), "records": n, "resolution": dataset.resolution, "base": base_name,
             "latent_shape": list(latent_shape), "prompts": len(prompts), "text_cached": text is not None}, indent=2))
    return TrainingCache(folder, np.load(latents_file, mmap_mode="r"), prompt_ids, prompts, text)


def _create_latents_file(path: Path, shape: tuple[int, ...]) -> None:
    """An empty latents file of `shape`, its blocks allocated; refused up front when the disk is too small."""
    require_space(path.parent, math.prod(shape) * np.dtype(np.float16).itemsize + 4096,
                  f" for the latent cache of {shape[0]} images")
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape).flush()
    try:
        _allocate(path)
    except OSError:
        path.unlink(missing_ok=True)  # never leave a sparse file that a later run would write into
        raise


def _allocate(path: Path) -> None:
    """Give `path` all its disk blocks now, so that writing it through a memory map cannot hit a
    full disk (SIGBUS); a full disk raises `OSError` here instead."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: no sparse-file trap to avoid this way
        return
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path.parent, size, shutil.disk_usage(path.parent).free, " for the latent cache") from error
        if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):  # a filesystem without it
            raise
    finally:
        os.close(fd)


def _target_stamps(dataset: PairedDataset, previous: list | None, progress: bool) -> list[list]:
    """[size, mtime_ns, sha256] of each target image; a hash is reused from `previous` when the
    file's size and time are unchanged (a stat instead of reading every image at every start)."""
    stamps = []
    for record in tqdm(dataset.records, desc="Checking targets", disable=not progress or len(dataset) < 1000):
        try:
            info = os.stat(record.target)
            problem = check_image_file(record.target)
        except OSError as error:
            raise DatasetError(f"target image {record.target} cannot be read ({error.strerror}); the latent cache "
                               "is keyed on the images it encodes.", dataset.manifest, record.line,
                               record.target) from None
        if problem:
            raise DatasetError(f"target image {record.target} {problem}.", dataset.manifest, record.line,
                               record.target)
        old = previous[record.index] if previous else None
        if old and old[:2] == [info.st_size, info.st_mtime_ns]:
            stamps.append(old)
        else:
            digest = hashlib.sha256(Path(record.target).read_bytes()).hexdigest()
            stamps.append([info.st_size, info.st_mtime_ns, digest])
    return stamps


def _forget_stale(dataset: PairedDataset, folder: Path, done: np.ndarray, done_file: Path, progress: bool) -> None:
    """Mark as not done the latents whose target image changed since they were encoded."""
    if dataset.source is not None:  # a Hugging Face dataset's cache is keyed on its rows' content already
        return
    stamps_file = folder / "targets.json"
    previous = _read_json(stamps_file, _stamps_problem)
    if previous is not None and len(previous) != len(dataset):
        previous = None
    stamps = _target_stamps(dataset, previous, progress)
    if previous is None:  # encoded before targets were recorded: nothing proves them current
        stale = done.copy()
    else:
        stale = done & np.array([old[2] != new[2] for old, new in zip(previous, stamps)], dtype=bool)
    if stale.any():
        if progress:
            tqdm.write(f"{int(stale.sum())} cached latents do not match their target images: encoding them again.")
        done[stale] = False
        _atomic_write_npy(done_file, done)  # before the new stamps: a kill in between re-encodes them anyway
    if stamps != previous:
        write_atomic(stamps_file, json.dumps(stamps))


def _encode(base: BaseModels, pixels: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    if base.vae is None:
        return pixels
    vae = base.vae
    return vae.encode(pixels.to(device=device, dtype=vae.dtype)).latent_dist.mean * vae.config.scaling_factor


def _atomic_write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as partial, open(partial, "wb") as file:
        np.save(file, array)  # a file object: given a name without .npy, np.save would add it


def _damaged(path: Path, why: str, also: list[Path] = ()) -> None:
    """Warn that the cache file `path` is damaged; remove it (and what was built from it)."""
    warnings.warn(f"The latent cache file {path} is damaged ({why}): building it again.", stacklevel=3)
    for file in (path, *also):
        file.unlink(missing_ok=True)


def _read_json(path: Path, problem, also: list[Path] = ()):
    """The JSON value in `path` (None if absent, or damaged: then removed, with a warning)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
        why = problem(value)
    except (OSError, ValueError, RecursionError) as error:
        why = f"not readable JSON: {type(error).__name__}"
    if why:
        _damaged(path, why, also)
        return None
    return value


def _prompts_problem(value, wanted: list[str]) -> str | None:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value) or value[:1] != [""]:
        return "expected a list of prompts, the empty one first"
    missing = set(wanted) - set(value)
    return f"{len(missing)} prompt(s) of the manifest missing" if missing else None


def _stamps_problem(value) -> str | None:
    ok = isinstance(value, list) and all(isinstance(s, list) and len(s) == 3 for s in value)
    return None if ok else "expected [size, time, sha256] per target"


def _check_npy(path: Path, shape: tuple[int, ...], dtype, also: list[Path] = ()) -> None:
    """Remove (with a warning) a cache array that cannot be read or is not of `shape` and `dtype`."""
    if not path.is_file():
        return
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        why = None if array.shape == shape and array.dtype == dtype else \
            f"holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}"
        del array
    except (OSError, ValueError, EOFError) as error:  # cut short, not a .npy file, empty
        why = f"{type(error).__name__}: {' '.join(str(error).split())[:80]}"
        if "pickle" in why:  # numpy's hint to load it unsafely is no help here
            why = "not a numpy array file"
    if why:
        _damaged(path, why, also)
