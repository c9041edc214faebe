"""A shapes dataset on disk: scenes of `data.shapes` with the control images of a condition.

It sits above both: conditions draw from scenes, and the dataset needs a condition.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data.chunks import write_chunks
from ..data.dataset_folder import new_dataset_folder, write_metadata
from ..data.shapes import _CHUNK, _MIN_SIZE, _PNG_COMPRESS_LEVEL, DEFAULT_SIZE, _check_int, _check_objects, shapes_scene
from . import CONDITIONS, get_condition


def _write_chunk(task: tuple[str, int, int, int, tuple[int, int], int, str, dict]) -> tuple[int, list[str]]:
    """Worker: render and save scenes ``start..stop-1`` with their control images; return their prompts."""
    out_dir, start, stop, size, objects, seed, condition_name, params = task
    condition = get_condition(condition_name, **params)
    prompts = []
    for index in range(start, stop):
        scene = shapes_scene(index, size, objects, seed)
        target = scene.render()
        control = condition.from_scene(scene, target)
        target.save(os.path.join(out_dir, "image", f"{index}.png"), compress_level=_PNG_COMPRESS_LEVEL)
        control.save(os.path.join(out_dir, "conditioning_image", f"{index}.png"), compress_level=_PNG_COMPRESS_LEVEL)
        prompts.append(scene.prompt)
    return start, prompts


def make_shapes(
    out: str | os.PathLike,
    num: int = 50_000,
    size: int = DEFAULT_SIZE,
    objects: int | tuple[int, int] = (1, 4),
    condition: str = "outline",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **condition_params: Any,
) -> Path:
    """Write ``num`` shapes scenes and their control images as a dataset in the Hugging Face layout.

    Writes ``out/image/{i}.png`` (the scene), ``out/conditioning_image/{i}.png`` (its control
    image), ``out/metadata.jsonl`` (``{"image", "conditioning_image", "text"}`` per line, in
    index order) and ``out/dataset.json`` (the condition, its settings and the arguments here;
    read back by ``dataset_condition(out)``). The folder appears whole at the end or not at all.
    The output depends only on the arguments, not on ``workers``.

    Args:
        out: folder to write; missing or empty (or a dataset, with ``overwrite``).
        num: number of scenes (>= 1).
        size: image width and height in pixels (>= 32).
        objects: objects per scene: a count, or a (fewest, most) range from 1 to 4.
        condition: name of the condition whose control images to write (``get_condition``):
            "outline", "canny", "segmentation" or "scribble".
        seed: dataset seed (>= 0).
        workers: processes to render with; defaults to ``os.cpu_count()``.
        progress: show a tqdm progress bar.
        overwrite: replace ``out`` if it is a dataset.
        condition_params: the condition's settings (e.g. ``low_threshold=100`` for canny).

    Returns:
        ``out`` as a ``Path``.

    Raises:
        ValueError: for a bad count, size, range, seed or condition (the message says what is accepted).
        FileExistsError: if ``out`` holds a dataset and ``overwrite`` is False, or holds other files.
    """
    num = _check_int("num", num, 1)
    size = _check_int("size", size, _MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    objects = _check_objects(objects)
    chosen = get_condition(condition, **condition_params)
    if not chosen.from_scenes:
        raise ValueError(f"the {chosen.name!r} condition cannot be drawn from a scene; "
                         f"make_shapes draws {', '.join(_scene_conditions())}.")
    chosen.check_available()
    if workers is None:
        workers = os.cpu_count() or 1
    workers = _check_int("workers", workers, 1)

    with new_dataset_folder(out, overwrite) as partial:
        (partial / "image").mkdir()
        (partial / "conditioning_image").mkdir()
        tasks = [(str(partial), start, min(start + _CHUNK, num), size, objects, seed, chosen.name, chosen.params)
                 for start in range(0, num, _CHUNK)]
        prompts = write_chunks(_write_chunk, tasks, num, workers, "shapes", "pair", progress)
        rows = [(f"image/{i}.png", f"conditioning_image/{i}.png", prompt) for i, prompt in enumerate(prompts)]
        info = {"condition": chosen.name, "condition_params": chosen.params, "generator": "make_shapes",
                "num": num, "size": size, "objects": list(objects), "seed": seed}
        write_metadata(partial, rows, info)
    return Path(out)


def _scene_conditions() -> list[str]:
    return [name for name, condition in CONDITIONS.items() if condition.from_scenes]
