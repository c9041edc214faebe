"""The hardware plan: what device this is, and how to train on it (precision, batch, memory).

Choices, each with its reason:
- precision: bf16 only on compute capability >= 8.0 (a T4 reports bf16 "supported" through
  emulation, which is slow: we do not trust `torch.cuda.is_bf16_supported()`); fp16 with a
  GradScaler on other CUDA GPUs; fp32 on CPU and Apple MPS.
- the per-step batch: the largest that fits with about 10% headroom, found by probing a few
  real steps per candidate; then gradient accumulation keeps the requested effective batch.
- gradient checkpointing and 8-bit AdamW only when nothing fits without them.
- xformers when installed and working; TF32 matmuls on Ampere and newer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .attention import xformers_status

HEADROOM = 0.10  # keep this share of GPU memory free


@dataclass(frozen=True)
class DeviceInfo:
    """What the trainer runs on."""

    kind: str  # "cuda", "mps" or "cpu"
    name: str
    capability: tuple[int, int] | None = None  # CUDA compute capability
    total_memory: int | None = None  # bytes of GPU memory
    free_memory: int | None = None
    system_ram: int | None = None

    @property
    def gib(self) -> float:
        return (self.total_memory or 0) / 2**30


def detect_device(max_gpu_memory: float | None = None) -> DeviceInfo:
    """Describe the first GPU if there is one, else Apple MPS, else the CPU.

    Args:
        max_gpu_memory: GiB; cap this process's GPU memory (`torch.cuda.set_per_process_memory_fraction`)
            and plan for the cap: 15 rehearses a Colab T4 on a larger card. Ignored without a GPU.
    """
    ram = _system_ram()
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        name = props.name
        if max_gpu_memory is not None:
            if not max_gpu_memory > 0:
                raise ValueError(f"max_gpu_memory={max_gpu_memory!r} GiB is invalid: expected a positive number.")
            cap = min(int(max_gpu_memory * 2**30), total)
            torch.cuda.set_per_process_memory_fraction(cap / total, index)
            total, free = cap, min(free, cap)
            name = f"{props.name} (capped at {max_gpu_memory:g} GiB)"
        return DeviceInfo("cuda", name, (props.major, props.minor), total, free, ram)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple MPS", system_ram=ram)
    return DeviceInfo("cpu", f"CPU ({os.cpu_count()} cores)", system_ram=ram)


def inference_device(name: str | None = None, what: str = "device") -> tuple[str, torch.dtype]:
    """Where to sample (or encode) and in which dtype: fp16 on a CUDA GPU, fp32 elsewhere.

    Args:
        name: a device this machine has ("cuda", "cuda:1", "cpu", "mps"); None: the GPU when
            there is one, else the CPU.
        what: how error messages name the setting (the CLI says "--device").
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{what} {name!r} is not a device: expected cuda, cuda:N, cpu or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"{what} {name}: {why}; use cpu (or leave {what} unset).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{what} {name}: there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{what} {name}: Apple MPS is not available here; use cpu (or leave {what} unset).")
    if device.type not in ("cuda", "cpu", "mps"):
        raise ValueError(f"{what} {name}: expected cuda, cuda:N, cpu or mps.")
    return str(device), torch.float16 if device.type == "cuda" else torch.float32


def _system_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class HardwarePlan:
    """How to train on one device; stored in checkpoints and reused on resume."""

    device: str
    device_name: str
    precision: str  # "fp32", "fp16" or "bf16"
    micro_batch: int
    accumulation: int
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    xformers: bool = False
    tf32: bool = False
    peak_memory: int | None = None  # bytes measured by the probe at micro_batch
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.accumulation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> HardwarePlan:
        return cls(**values)

    def with_micro_batch(self, micro_batch: int, reason: str) -> HardwarePlan:
        """The same plan with a smaller per-step batch and more accumulation (same effective batch)."""
        effective = self.effective_batch
        return dataclasses.replace(
            self, micro_batch=micro_batch, accumulation=effective // micro_batch,
            reasons={**self.reasons, "micro_batch": reason},
        )

    def table(self, extra: Sequence[tuple[str, str, str]] = ()) -> str:
        """The plan as aligned rows of setting, value and why; `extra` rows (e.g. the CPU threads) at the end."""
        rows = [
            ("device", self.device_name, ""),
            ("precision", self.precision, self.reasons.get("precision", "")),
            ("batch per step", str(self.micro_batch), self.reasons.get("micro_batch", "")),
            ("accumulation", str(self.accumulation), f"effective batch {self.effective_batch}"),
            ("gradient checkpointing", _yes(self.gradient_checkpointing), self.reasons.get("gradient_checkpointing", "")),
            ("8-bit AdamW", _yes(self.use_8bit_adam), self.reasons.get("use_8bit_adam", "")),
            ("attention", "xformers" if self.xformers else "PyTorch SDPA", self.reasons.get("xformers", "")),
            ("TF32 matmuls", _yes(self.tf32), self.reasons.get("tf32", "")),
            *extra,
        ]
        width = max(len(r[0]) for r in rows)
        value_width = max(len(r[1]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value:<{value_width}}  {why}".rstrip() for name, value, why in rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def choose_precision(info: DeviceInfo, requested: str = "auto") -> tuple[str, str]:
    """(precision, reason) for a device."""
    if requested != "auto":
        if info.kind != "cuda" and requested != "fp32":
            raise ValueError(f"precision={requested!r} needs a CUDA GPU; this is {info.name}: use fp32 or auto.")
        if requested == "bf16" and (info.capability or (0, 0)) < (8, 0):
            raise ValueError(
                f"precision='bf16' needs compute capability >= 8.0 (Ampere or newer); {info.name} has "
                f"{info.capability}: use fp16 or auto."
            )
        return requested, "requested"
    if info.kind != "cuda":
        return "fp32", f"{info.kind.upper()}: no fast half precision for training"
    if info.capability >= (8, 0):
        return "bf16", f"compute capability {info.capability[0]}.{info.capability[1]} has native bf16"
    return "fp16", (f"compute capability {info.capability[0]}.{info.capability[1]} lacks native bf16 "
                    "(emulated, slow): fp16 with loss scaling")


ProbeFn = Callable[[int, bool, bool], int]
"""probe(micro_batch, gradient_checkpointing, use_8bit_adam) -> peak bytes; raises torch.cuda.OutOfMemoryError."""


def plan_hardware(
    info: DeviceInfo,
    batch_size: int,
    precision: str = "auto",
    micro_batch: int | None = None,
    gradient_checkpointing: bool | None = None,
    use_8bit_adam: bool | None = None,
    xformers: bool | None = None,
    probe: ProbeFn | None = None,
) -> HardwarePlan:
    """Choose how to train on `info`; every argument other than `info` and `probe` can force a choice.

    Args:
        info: the device (`detect_device()`).
        batch_size: the effective batch per optimizer step, kept whatever the per-step batch.
        probe: runs a few real training steps (and a validation sample) at a per-step batch
            and returns the peak reserved memory; only used on CUDA without a forced micro_batch.
    """
    chosen_precision, precision_reason = choose_precision(info, precision)
    reasons = {"precision": precision_reason}
    plan = HardwarePlan(info.kind, info.name, chosen_precision, micro_batch or batch_size, 1, reasons=reasons)

    if xformers is None:
        usable, why = xformers_status() if info.kind == "cuda" else (False, "no CUDA GPU")
        plan.xformers, reasons["xformers"] = usable, why
    else:
        plan.xformers, reasons["xformers"] = xformers, "requested"
    plan.tf32 = info.kind == "cuda" and (info.capability or (0, 0)) >= (8, 0)
    reasons["tf32"] = "Ampere or newer" if plan.tf32 else "not an Ampere-or-newer GPU"

    candidates = [b for b in range(batch_size, 0, -1) if batch_size % b == 0]  # largest first
    if micro_batch is not None:
        candidates = [micro_batch]
        reasons["micro_batch"] = "requested"
    if info.kind != "cuda" or probe is None or micro_batch is not None:
        plan = dataclasses.replace(plan, micro_batch=candidates[0], accumulation=batch_size // candidates[0])
        plan.gradient_checkpointing = bool(gradient_checkpointing)
        plan.use_8bit_adam = bool(use_8bit_adam)
        reasons.setdefault("micro_batch", "no GPU memory to fit: the whole batch per step" if info.kind != "cuda"
                           else "not probed")
        reasons["gradient_checkpointing"] = "requested" if gradient_checkpointing is not None else "not needed"
        reasons["use_8bit_adam"] = "requested" if use_8bit_adam is not None else "not needed"
        return plan

    # Memory savers are tried only when nothing fits without them (unless forced either way).
    budget = int((1 - HEADROOM) * info.total_memory)
    settings = [(False, False), (True, False), (True, True)]
    settings = [(gc, adam) for gc, adam in settings
                if (gradient_checkpointing is None or gc == gradient_checkpointing)
                and (use_8bit_adam is None or adam == use_8bit_adam)] or [(bool(gradient_checkpointing), bool(use_8bit_adam))]
    tried = []
    if use_8bit_adam is None and not bitsandbytes_available():
        tried.append("8-bit AdamW: bitsandbytes not installed (pip install bitsandbytes)")
        settings = [(gc, adam) for gc, adam in settings if not adam]
    for gc, adam in settings:
        for candidate in candidates:
            try:
                peak = probe(candidate, gc, adam)
            except torch.cuda.OutOfMemoryError:
                tried.append(f"batch {candidate}{' + checkpointing' if gc else ''}{' + 8-bit Adam' if adam else ''}: out of memory")
                _free_cuda()
                continue
            if peak > budget:
                tried.append(f"batch {candidate}: {peak / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB budget")
                continue
            plan = dataclasses.replace(plan, micro_batch=candidate, accumulation=batch_size // candidate,
                                       gradient_checkpointing=gc, use_8bit_adam=adam, peak_memory=peak)
            reasons["micro_batch"] = (f"largest that fits: {peak / 2**30:.1f} of {info.gib:.1f} GiB at batch "
                                      f"{candidate} ({HEADROOM:.0%} headroom kept)")
            reasons["gradient_checkpointing"] = "needed to fit" if gc else "not needed"
            reasons["use_8bit_adam"] = "needed to fit" if adam else "not needed"
            return plan
    raise RuntimeError(
        f"Training does not fit on {info.name} ({info.gib:.1f} GiB) even at batch 1. Tried: " + "; ".join(tried)
        + ". Lower --resolution, use --control-kind lite, or a larger GPU."
    )


def bitsandbytes_available() -> bool:
    """Whether 8-bit AdamW can be used (bitsandbytes imports)."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _free_cuda() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
