"""The one end-to-end learning test: on the shipped proxy base (which draws a disk where it
likes), a few hundred steps of training the default Lite module must move the disk to where the
control says.

Scored with the one-step probe on held-out pairs (noised to t=800, predicted in one UNet call):
steadier than full sampling this early. A shuffled control (each sample given another's
outline) must not help, which separates following the control from drawing any disk.
Measured on this 2-core machine with the shipped base (7,000 steps), module seed 0, lr 3e-3
(the default design, cubic timesteps): one-step disk IoU 0.643 without control, 0.726 with the
trained module, 0.616 with shuffled controls; edge F1 0.574, 0.726 and 0.516. (The pixel-MLP design
at 1e-3 gave 0.709 and 0.698.)
The thresholds below leave about half of each gap as margin.
"""

import pytest

from lite_controlnet import PairedDataset, TrainConfig, load_base, load_control, make_fill50k, train
from lite_controlnet.evaluation.scoring import one_step_scores

STEPS = 200
# The small module needs a larger step than the SD1.5 default 1e-4 on this base; the default
# design starts slower than the pixel-MLP design (its zero projections sit behind more layers) and learns
# fastest at 3e-3 of the rates tried (benchmarks/fidelity.py).
LEARNING_RATE = 3e-3
SEED = 0


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    data = make_fill50k(root / "train", num=STEPS * 16, size=32, seed=0, progress=False)
    heldout = PairedDataset(make_fill50k(root / "heldout", num=64, size=32, seed=1, progress=False), resolution=32)
    final = train(TrainConfig(data=str(data), output=str(root / "run"), base="proxy", resolution=32, batch_size=16,
                              epochs=1, max_steps=STEPS, learning_rate=LEARNING_RATE, num_workers=0,
                              num_validation=1, validation_steps=1, seed=SEED), progress=False)
    base, control = load_base("proxy"), load_control(final).eval()
    indices = list(range(len(heldout)))
    return {
        "none": one_step_scores(base, None, heldout, indices, timestep=800, seed=1),
        "lite": one_step_scores(base, control, heldout, indices, timestep=800, seed=1),
        "shuffled": one_step_scores(base, control, heldout, indices, timestep=800, seed=1, shuffle=True),
    }


def test_trained_lite_places_the_disk_better_than_no_control(scores):
    assert scores["lite"]["disk_iou"] >= scores["none"]["disk_iou"] + 0.02, scores
    assert scores["lite"]["edge_f1"] >= scores["none"]["edge_f1"] + 0.05, scores


def test_a_shuffled_control_does_not_help(scores):
    assert scores["shuffled"]["disk_iou"] <= scores["none"]["disk_iou"] + 0.01, scores
    assert scores["shuffled"]["edge_f1"] <= scores["none"]["edge_f1"], scores
