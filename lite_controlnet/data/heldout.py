"""Held-out Fill50k pairs: the synthetic pairs no training set holds, chosen in one place.

Training sets are Fill50k of dataset seed 0, samples 0, 1, 2, ... (`make_fill50k(seed=0)`, and
the proxy base's stream of samples). A held-out set is the first `count` samples of another
dataset seed, so its exact (colours, circle) combinations were never trained on. Each sample is
drawn from `SeedSequence([seed, index])` (see `fill50k.py`), so a set is fixed by its seed alone:

- `HELD_OUT_SEED` (1): the pairs every control module is scored on (`evaluation.scoring`, the
  benchmarks, the compare notebook, `scripts/demo.sh`'s `make-fill50k --seed 1`);
- `PROXY_HELD_OUT_SEED` (1,000,003): the proxy base's own colour check and evaluation
  (`bases.proxy_training`, `benchmarks/proxy_base_eval.py`), apart from the pairs control
  modules are scored on.
"""

from __future__ import annotations

import PIL.Image
from torch.utils.data import Dataset

from .fill50k import Fill50kSpec, fill50k_spec, render_fill50k_sample
from .paired import _to_tensor

__all__ = ["HELD_OUT_SEED", "PROXY_HELD_OUT_SEED", "HeldOutPairs", "held_out_pairs"]

HELD_OUT_SEED = 1
PROXY_HELD_OUT_SEED = 1_000_003


class HeldOutPairs(Dataset):
    """Fill50k samples `0, 1, ...` of dataset seed `seed`, rendered in memory (`held_out_pairs`).

    Items are those of `PairedDataset` at `resolution=size` (the same tensors as the PNGs
    `make_fill50k` writes, read back): "pixel_values" (3, size, size) in [-1, 1],
    "conditioning_pixel_values" in [0, 1], "prompt", "index" (the position in this set).
    """

    def __init__(self, count: int, size: int, seed: int = HELD_OUT_SEED, render_scale: int = 1):
        if count < 1 or size < 1 or render_scale < 1:
            raise ValueError(f"count, size and render_scale must be >= 1, got count={count}, size={size}, "
                             f"render_scale={render_scale}.")
        self.count, self.resolution, self.seed, self.render_scale = count, size, seed, render_scale
        self.root = self.manifest = f"Fill50k seed {seed}, samples 0..{count - 1}, {size} px"

    def __len__(self) -> int:
        return self.count

    def images(self, index: int) -> tuple[PIL.Image.Image, PIL.Image.Image, str]:
        """(control, target, prompt) of pair `index` as images; targets drawn `render_scale` times
        larger are box-filtered down (anti-aliased edges, as the proxy base trains on)."""
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} held-out pairs")
        size = self.resolution * self.render_scale
        control, target, prompt = render_fill50k_sample(index % self.count, size, self.seed)
        if self.render_scale > 1:
            control, target = (image.resize((self.resolution,) * 2, PIL.Image.BOX) for image in (control, target))
        return control, target, prompt

    def __getitem__(self, index: int) -> dict:
        control, target, prompt = self.images(int(index))
        return {"pixel_values": _to_tensor(target) * 2.0 - 1.0, "conditioning_pixel_values": _to_tensor(control),
                "prompt": prompt, "index": int(index) % self.count}

    def pairs(self) -> list[tuple[PIL.Image.Image, str]]:
        """(control, prompt) of every pair."""
        return [(control, prompt) for control, _target, prompt in map(self.images, range(self.count))]

    @property
    def prompts(self) -> list[str]:
        return [spec.prompt for spec in self.specs]

    @property
    def specs(self) -> list[Fill50kSpec]:
        """Each pair's colours and circle, at `size` pixels."""
        return [fill50k_spec(k, self.resolution, self.seed) for k in range(self.count)]

    def __repr__(self) -> str:
        return f"HeldOutPairs({self.root})"


def held_out_pairs(count: int, size: int, seed: int = HELD_OUT_SEED, render_scale: int = 1) -> HeldOutPairs:
    """The held-out pairs: the first `count` Fill50k samples of dataset seed `seed`, at `size` px.

    Args:
        count: how many pairs.
        size: image size in pixels.
        seed: the dataset seed: `HELD_OUT_SEED` for control modules, `PROXY_HELD_OUT_SEED` for the
            proxy base's own checks (training uses seed 0).
        render_scale: draw `render_scale` times larger and box-filter down.
    """
    return HeldOutPairs(count, size, seed, render_scale)
