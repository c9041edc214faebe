import pytest
import torch

from lite_controlnet.training.hardware import DeviceInfo, HardwarePlan, plan_hardware

GiB = 2**30
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 * GiB, 14 * GiB, 12 * GiB)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * GiB, 39 * GiB, 80 * GiB)
L4 = DeviceInfo("cuda", "NVIDIA L4", (8, 9), 22 * GiB, 21 * GiB, 50 * GiB)
CPU = DeviceInfo("cpu", "CPU (2 cores)", system_ram=24 * GiB)


def test_inference_device_is_checked_and_brings_its_dtype():
    from lite_controlnet.training.hardware import inference_device

    expected = ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)
    assert inference_device() == expected
    assert inference_device("cpu") == ("cpu", torch.float32)
    with pytest.raises(ValueError, match=r"^--device 'gpu' is not a device: expected cuda, cuda:N, cpu or mps\.$"):
        inference_device("gpu", what="--device")
    with pytest.raises(ValueError, match="device cuda:99"):
        inference_device("cuda:99")


def probe_from(per_sample, fixed=2 * GiB, saved_by_checkpointing=0.0, oom_above=None):
    """A fake probe: memory grows with the batch; optionally out-of-memory above a batch size."""
    calls = []

    def probe(batch, checkpointing, eight_bit):
        calls.append((batch, checkpointing, eight_bit))
        if oom_above is not None and batch > oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        per = per_sample * (1 - saved_by_checkpointing if checkpointing else 1)
        return int(fixed + per * batch)

    probe.calls = calls
    return probe


@pytest.mark.parametrize("device, precision", [(T4, "fp16"), (A100, "bf16"), (L4, "bf16"), (CPU, "fp32")])
def test_precision_follows_the_device(device, precision):
    plan = plan_hardware(device, 4, probe=probe_from(1 * GiB))
    assert plan.precision == precision
    assert plan.tf32 == (device in (A100, L4))


def test_t4_is_not_trusted_with_bf16():
    with pytest.raises(ValueError, match="compute capability >= 8.0"):
        plan_hardware(T4, 4, precision="bf16")


def test_batch_fits_when_memory_allows():
    plan = plan_hardware(T4, 4, probe=probe_from(2 * GiB))  # 2 + 4*2 = 10 GiB < 13.5 GiB budget
    assert (plan.micro_batch, plan.accumulation) == (4, 1)
    assert not plan.gradient_checkpointing and not plan.use_8bit_adam


def test_small_vram_gets_a_smaller_batch_with_accumulation():
    small = DeviceInfo("cuda", "Small GPU", (7, 5), 8 * GiB, 8 * GiB)
    plan = plan_hardware(small, 4, probe=probe_from(2 * GiB))  # budget 7.2: 4 -> 10, 2 -> 6 GiB
    assert (plan.micro_batch, plan.accumulation, plan.effective_batch) == (2, 2, 4)
    assert "largest that fits" in plan.reasons["micro_batch"]


def test_probe_recovers_from_out_of_memory():
    probe = probe_from(1 * GiB, oom_above=1)
    plan = plan_hardware(T4, 4, probe=probe)
    assert [c[0] for c in probe.calls] == [4, 2, 1]
    assert (plan.micro_batch, plan.accumulation) == (1, 4)


def test_memory_savers_only_when_nothing_fits_without_them():
    probe = probe_from(20 * GiB, saved_by_checkpointing=0.7)  # batch 1: 22 GiB plain, 8 GiB checkpointed
    plan = plan_hardware(T4, 4, probe=probe)
    assert plan.gradient_checkpointing and not plan.use_8bit_adam and plan.micro_batch == 1
    assert plan.reasons["gradient_checkpointing"] == "needed to fit"
    with pytest.raises(RuntimeError, match="does not fit on Tesla T4"):
        plan_hardware(T4, 4, probe=probe_from(100 * GiB))


def test_user_overrides_win():
    probe = probe_from(1 * GiB)
    plan = plan_hardware(T4, 4, precision="fp32", micro_batch=1, use_8bit_adam=True, probe=probe)
    assert (plan.precision, plan.micro_batch, plan.accumulation, plan.use_8bit_adam) == ("fp32", 1, 4, True)
    assert probe.calls == []  # a forced batch is not probed
    assert "requested" in plan.table()


def test_plan_round_trips_and_keeps_the_effective_batch():
    plan = plan_hardware(CPU, 8)
    assert HardwarePlan.from_dict(plan.to_dict()) == plan
    smaller = plan.with_micro_batch(2, "test")
    assert (smaller.micro_batch, smaller.accumulation) == (2, 4)


def test_without_bitsandbytes_8bit_adam_is_not_probed(monkeypatch):
    import lite_controlnet.training.hardware as hardware

    monkeypatch.setattr(hardware, "bitsandbytes_available", lambda: False)
    probe = probe_from(100 * GiB)
    with pytest.raises(RuntimeError, match="bitsandbytes not installed"):
        plan_hardware(T4, 4, probe=probe)
    assert probe.calls and not any(eight_bit for _, _, eight_bit in probe.calls)
    monkeypatch.setattr(hardware, "bitsandbytes_available", lambda: True)
    probe = probe_from(100 * GiB)
    with pytest.raises(RuntimeError, match="does not fit"):
        plan_hardware(T4, 4, probe=probe)
    assert any(eight_bit for _, _, eight_bit in probe.calls)


def test_max_gpu_memory_caps_the_process_and_the_plan(monkeypatch):
    """A 15 GiB cap on an 80 GiB card: the allocator is capped and the plan sees 15 GiB."""
    from types import SimpleNamespace

    import lite_controlnet.training.hardware as hardware

    fractions = []
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "get_device_properties", lambda i: SimpleNamespace(name="NVIDIA H100", major=9, minor=0))
    monkeypatch.setattr(cuda, "mem_get_info", lambda i: (79 * GiB, 80 * GiB))
    monkeypatch.setattr(cuda, "set_per_process_memory_fraction", lambda f, i: fractions.append((f, i)))
    info = hardware.detect_device(15)
    assert fractions == [(15 / 80, 0)]
    assert (info.total_memory, info.free_memory) == (15 * GiB, 15 * GiB)
    assert info.name == "NVIDIA H100 (capped at 15 GiB)"
    assert hardware.detect_device().total_memory == 80 * GiB and len(fractions) == 1
    with pytest.raises(ValueError, match="max_gpu_memory=0"):
        hardware.detect_device(0)


@pytest.fixture
def fresh_xformers_status():
    """`xformers_status` is cached for the process: each case detects afresh, and leaves no answer behind."""
    from lite_controlnet.training.attention import xformers_status

    xformers_status.cache_clear()
    yield xformers_status
    xformers_status.cache_clear()


def fake_xformers(monkeypatch, attention):
    """An importable `xformers` whose attention is `attention`; on a CPU the probe's tensors stay here."""
    import sys
    from types import SimpleNamespace

    ops = SimpleNamespace(memory_efficient_attention=attention)
    monkeypatch.setitem(sys.modules, "xformers", SimpleNamespace(__version__="0.0.99", ops=ops))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *shape, device=None, **kwargs: randn(*shape, **kwargs))


def test_xformers_is_used_only_with_cuda_when_it_imports_and_runs(fresh_xformers_status, monkeypatch):
    import sys

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fresh_xformers_status() == (False, "no CUDA GPU")

    fresh_xformers_status.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "xformers", None)  # not installed
    usable, why = fresh_xformers_status()
    assert not usable and why.startswith("xformers not importable: ModuleNotFoundError")

    def no_kernel(q, k, v):
        raise NotImplementedError("no kernel for this GPU")

    fresh_xformers_status.cache_clear()
    fake_xformers(monkeypatch, no_kernel)
    assert fresh_xformers_status() == (False, "xformers installed but fails here: NotImplementedError: "
                                              "no kernel for this GPU")

    calls = []
    fresh_xformers_status.cache_clear()
    fake_xformers(monkeypatch, lambda q, k, v: calls.append((q.shape, q.dtype)) or q)
    assert fresh_xformers_status() == (True, "xformers 0.0.99")
    assert calls == [((1, 2, 1, 40), torch.float16)]  # a real call was tried, in half precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fresh_xformers_status() == (True, "xformers 0.0.99")  # detected once per process
