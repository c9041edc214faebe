"""Writing a generated dataset in chunks, in this process or a pool: shared by Fill50k and the shapes world."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm


def write_chunks(write_chunk: Callable[[Any], tuple[int, list[str]]], tasks: Sequence[Any], num: int, workers: int,
                 desc: str, unit: str, progress: bool = True) -> list[str]:
    """Run `write_chunk` on each task (in `workers` processes when more than one) and return the
    prompts of all `num` items in index order; each task returns (its first index, its prompts)."""
    prompts: list[str] = [""] * num
    with tqdm(total=num, desc=desc, unit=unit, disable=not progress) as bar:
        if workers == 1 or len(tasks) == 1:
            results = map(write_chunk, tasks)
            for start, chunk in results:
                prompts[start : start + len(chunk)] = chunk
                bar.update(len(chunk))
        else:
            with multiprocessing.get_context().Pool(min(workers, len(tasks))) as pool:
                for start, chunk in pool.imap_unordered(write_chunk, tasks):
                    prompts[start : start + len(chunk)] = chunk
                    bar.update(len(chunk))
    return prompts
