"""The CPU thread count a run chooses: from the cores and the load, overridable, GPU runs untouched."""

import pytest
import torch

from lite_controlnet.training.threads import ThreadChoice, apply_threads, choose_threads


@pytest.mark.parametrize("cores, load, threads", [
    (1, 0.0, 1),   # one core: one thread
    (2, 0.0, 1),   # a Colab-sized CPU: the other core left to the rest of the machine
    (2, 1.0, 1),   # another process busy: still one, never zero
    (2, 3.7, 1),
    (4, 0.0, 3),
    (4, 1.2, 2),   # one busy core counted
    (8, 0.0, 8),   # a larger machine keeps every core when it is quiet
    (8, 2.6, 5),   # three busy cores left to their processes
    (16, 40.0, 1),
])
def test_threads_follow_cores_and_load(cores, load, threads):
    choice = choose_threads(cores, load)
    assert choice.threads == threads
    assert f"{cores} cores" in choice.reason
    if round(load):
        assert f"load {load:.1f}" in choice.reason


def test_a_gpu_run_keeps_torch_default():
    assert choose_threads(2, 0.0, device="cuda") is None
    assert choose_threads(2, 0.0, device="mps") is None


def test_requested_and_environment_win():
    assert choose_threads(2, 5.0, requested=2) == ThreadChoice(2, "requested")
    assert choose_threads(2, 0.0, device="cuda", requested=3) == ThreadChoice(3, "requested")
    assert choose_threads(8, 0.0, environment="2") == ThreadChoice(2, "OMP_NUM_THREADS")
    assert choose_threads(8, 0.0, requested=4, environment="2").threads == 4  # the flag wins over the variable
    assert choose_threads(8, 0.0, environment="lots").threads == 8  # malformed: ignored, as torch ignores it
    with pytest.raises(ValueError, match="threads=0 is invalid"):
        choose_threads(2, 0.0, requested=0)


def test_apply_sets_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("lite_controlnet.training.threads.cpu_cores", lambda: 4)
    monkeypatch.setattr("lite_controlnet.training.threads.busy_cores", lambda: 0.0)
    try:
        assert apply_threads("cpu").threads == 3
        assert torch.get_num_threads() == 3
        assert apply_threads("cpu", requested=2).threads == 2
        assert torch.get_num_threads() == 2
        assert apply_threads("cuda") is None
        assert torch.get_num_threads() == 2  # untouched on a GPU
    finally:
        torch.set_num_threads(before)
