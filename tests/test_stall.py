"""The stall line: said once when steps stay much slower than the run's early steps."""

from lite_controlnet.training.stall import StallWatch


def feed(watch, times):
    return [line for line in map(watch.step, times) if line]


def test_a_lasting_slowdown_is_said_once():
    watch = StallWatch(factor=5, window=60, reference_steps=5)
    lines = feed(watch, [3.0] + [0.4] * 20 + [2.5] * 100)  # a slow first step, 0.4 s steps, then 6x slower
    assert len(lines) == 1
    assert "6x longer" in lines[0] and "0.40 s per step" in lines[0] and "--threads 1" in lines[0]
    assert "\n" not in lines[0]


def test_short_or_mild_slowdowns_are_not_stalls():
    watch = StallWatch(factor=5, window=60, reference_steps=5)
    # a checkpoint (30 s) and a grid (20 s) between normal steps, then steps 3x slower for minutes
    assert feed(watch, [1.0] + [0.4] * 10 + [30.0] + [0.4] * 10 + [20.0] + [0.4] * 50 + [1.2] * 500) == []


def test_slow_steps_said_within_about_the_window():
    watch = StallWatch(factor=5, window=60, reference=0.5, device="cuda")
    seen = None
    for n in range(1, 100):
        if watch.step(5.0):
            seen = n
            break
    assert seen is not None and 12 <= seen <= 14  # about 60 s of 5 s steps
    assert watch.step(5.0) is None


def test_the_gpu_line_names_the_gpu():
    watch = StallWatch(factor=2, window=10, reference=0.1, device="cuda")
    lines = feed(watch, [1.0] * 20)
    assert len(lines) == 1 and "GPU" in lines[0] and "--threads" not in lines[0]
