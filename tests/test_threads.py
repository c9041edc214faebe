"""The CPU thread count a run chooses: from the cores and the load, followed while it trains,
overridable, GPU runs untouched."""

import pytest
import torch

from lite_controlnet.training.threads import ThreadChoice, ThreadGovernor, apply_threads, choose_threads


@pytest.mark.parametrize("cores, load, threads", [
    (1, 0.0, 1),   # one core: one thread
    (2, 0.0, 2),   # a quiet machine: every core (fastest alone)
    (2, 0.2, 2),   # a browser tab idling is not a busy core
    (2, 0.5, 1),   # another process busy: its core left to it
    (2, 1.0, 1),
    (2, 3.7, 1),   # never zero
    (4, 1.2, 3),
    (8, 2.6, 5),   # three busy cores left to their processes
    (16, 40.0, 1),
])
def test_threads_start_from_cores_and_load(cores, load, threads):
    choice = choose_threads(cores, load)
    assert choice.threads == threads and choice.follow
    assert f"{cores} cores" in choice.reason
    if threads < cores:
        assert f"{load:.1f} in use by other processes" in choice.reason


class Machine:
    """A fake machine: the other processes' CPU use per second, and this process's."""

    def __init__(self):
        self.now, self.busy, self.own, self.others, self.ours = 0.0, 0.0, 0.0, 0.0, 1.0

    def tick(self, seconds):
        self.now += seconds
        self.busy += (self.others + self.ours) * seconds
        self.own += self.ours * seconds

    def governor(self, cores=2):
        return ThreadGovernor(cores, interval=2.0, busy_seconds=lambda: self.busy, own_seconds=lambda: self.own,
                              clock=lambda: self.now)


def test_the_governor_gives_a_core_to_a_competitor_and_takes_it_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    machine = Machine()
    governor = machine.governor()
    try:
        counts = []
        for phase, others in (("alone", 0.05), ("beside a competitor", 1.0), ("alone again", 0.0)):
            machine.others = others
            for _ in range(10):  # 10 steps of 1 s
                machine.tick(1.0)
                governor.update()
                counts.append(torch.get_num_threads())
        assert counts[:10] == [2] * 10  # quiet: both cores
        assert counts[10:12] == [2, 2] and counts[14:20] == [1] * 6  # changed after two measurements, not one
        assert counts[-1] == 2  # the competitor gone: both again
    finally:
        torch.set_num_threads(before)


def test_the_governor_ignores_a_blip_and_a_fixed_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    machine = Machine()
    governor = machine.governor()
    try:
        for others in (0.0, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0):  # busy for one second: one measurement only
            machine.others = others
            machine.tick(1.0)
            governor.update()
            assert torch.get_num_threads() == 2
        fixed = ThreadGovernor(2, enabled=False, busy_seconds=lambda: machine.busy, own_seconds=lambda: machine.own,
                               clock=lambda: machine.now)
        machine.others = 2.0
        for _ in range(10):
            machine.tick(1.0)
            assert fixed.update() is None
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_gpu_run_keeps_torch_default():
    assert choose_threads(2, 0.0, device="cuda") is None
    assert choose_threads(2, 0.0, device="mps") is None


def test_requested_and_environment_win():
    assert choose_threads(2, 5.0, requested=2) == ThreadChoice(2, "requested")
    assert choose_threads(2, 0.0, device="cuda", requested=3) == ThreadChoice(3, "requested")
    assert choose_threads(8, 0.0, environment="2") == ThreadChoice(2, "OMP_NUM_THREADS")
    assert choose_threads(8, 0.0, requested=4, environment="2").threads == 4  # the flag wins over the variable
    assert choose_threads(8, 0.0, environment="lots").threads == 8  # malformed: ignored, as torch ignores it
    assert not choose_threads(2, 0.0, requested=2).follow and not choose_threads(8, 0.0, environment="2").follow
    with pytest.raises(ValueError, match="threads=0 is invalid"):
        choose_threads(2, 0.0, requested=0)


def test_busy_cores_counts_other_processes_not_this_one():
    from lite_controlnet.training.threads import busy_cores

    import subprocess
    import sys
    import time

    started = time.process_time()
    while time.process_time() - started < 0.3:  # this process busy: not counted
        pass
    quiet = busy_cores(window=0.5)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = busy_cores(window=0.5)
    finally:
        burner.kill()
        burner.wait()
    assert busy > quiet + 0.5  # one busy loop elsewhere: most of a core


def test_apply_sets_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("lite_controlnet.training.threads.cpu_cores", lambda: 4)
    monkeypatch.setattr("lite_controlnet.training.threads.busy_cores", lambda: 0.0)
    try:
        assert apply_threads("cpu").threads == 4
        assert torch.get_num_threads() == 4
        assert apply_threads("cpu", requested=2).threads == 2
        assert torch.get_num_threads() == 2
        assert apply_threads("cuda") is None
        assert torch.get_num_threads() == 2  # untouched on a GPU
    finally:
        torch.set_num_threads(before)
