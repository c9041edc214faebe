"""Optional xformers attention, detected at run time; PyTorch SDPA is the default.

xformers wheels are CUDA-only and pin a torch version, so it is never required: it is used
only when it imports, a CUDA GPU is present, and a tiny attention call actually runs.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def xformers_status() -> tuple[bool, str]:
    """(usable, reason): whether xformers memory-efficient attention works on this machine."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    try:
        import xformers.ops
    except Exception as error:  # ImportError, or a binary built for another torch
        return False, f"xformers not importable: {type(error).__name__}: {error}"
    try:
        q = torch.randn(1, 2, 1, 40, device="cuda", dtype=torch.float16)
        xformers.ops.memory_efficient_attention(q, q, q)
    except Exception as error:  # kernels missing for this GPU or this torch
        return False, f"xformers installed but fails here: {type(error).__name__}: {error}"
    return True, f"xformers {getattr(xformers, '__version__', '?')}"
