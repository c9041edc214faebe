"""Fidelity curves: chunked training of several runs, scored after each chunk, resumable."""

import json

import pytest

from lite_controlnet.data.paired import PairedDataset
from lite_controlnet.data.fill50k import make_fill50k
from lite_controlnet.evaluation.scoring import ScoreSettings
from lite_controlnet.evaluation.study import Variant, fidelity_curves, training_stats, variant_configs
from lite_controlnet.evaluation.summary import combine_seeds, summarize
from lite_controlnet.training.logs import LossLog

SCORING = ScoreSettings(heldout=2, sample_num=2, sample_steps=2, guidance=3.0)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    train_dir = make_fill50k(root / "train", num=8, size=64, seed=0, progress=False)
    heldout = PairedDataset(make_fill50k(root / "heldout", num=2, size=64, seed=1, progress=False), resolution=64)
    return train_dir, heldout


def configs_for(tiny_base_dir, train_dir, work, steps=2):
    variants = [Variant.parse("lite:1e-3"), Variant.parse("controlnet")]
    return variant_configs(variants, train_dir, work, steps, base=str(tiny_base_dir), resolution=64, batch_size=4,
                           num_validation=1, validation_steps=1)


def test_variants_parse_and_name_their_runs():
    assert Variant.parse("lite:1e-3") == Variant("lite", 1e-3)
    assert (Variant("lite", 1e-3).label, Variant("controlnet").label) == ("lite lr 0.001", "controlnet")
    assert Variant("lite", 1e-3).folder == "run-lite-lr0.001"
    with pytest.raises(ValueError, match="'t2i'.*one of"):
        Variant.parse("t2i")
    with pytest.raises(ValueError, match="'fast' is not a learning rate"):
        Variant.parse("lite:fast")
    with pytest.raises(ValueError, match="each variant once"):
        variant_configs([Variant("lite"), Variant("lite")], "d", "w", 2)
    # a variant with its own number of steps: same label and folder, so a study's points stay its own
    assert Variant.parse("lite-mlp:1e-3@1000") == Variant("lite-mlp", 1e-3, steps=1000)
    assert Variant.parse("lite-mlp:1e-3@1000").folder == Variant("lite-mlp", 1e-3).folder
    configs = variant_configs([Variant("lite", 1e-3, steps=4), Variant("controlnet")], "d", "w", 6)
    assert [c.max_steps for c in configs.values()] == [4, 6]
    with pytest.raises(ValueError, match="'many' is not a number of steps"):
        Variant.parse("lite:1e-3@many")
    # and its own timestep sampling: in its label and folder
    cubic = Variant.parse("controlnet:1e-3:cubic@1200")
    assert (cubic.timesteps, cubic.steps, cubic.label, cubic.folder) == (
        "cubic", 1200, "controlnet lr 0.001 cubic", "run-controlnet-lr0.001-cubic")
    assert variant_configs([cubic], "d", "w", 6)[cubic.label].timesteps == "cubic"
    with pytest.raises(ValueError, match="'cube' is not a timestep sampling"):
        Variant.parse("lite:1e-3:cube")


def test_curves_are_scored_per_chunk_and_resume_from_their_state(tiny_base_dir, tiny_base, splits, tmp_path):
    train_dir, heldout = splits
    configs = configs_for(tiny_base_dir, train_dir, tmp_path)
    state = tmp_path / "fidelity.json"
    lines = []
    result = fidelity_curves(configs, tiny_base, heldout, eval_every=1, sample_every=2, scoring=SCORING,
                             log=lines.append, state=state)
    assert {label: [p["step"] for p in curve] for label, curve in result["curves"].items()} == {
        "lite lr 0.001": [1, 2], "controlnet": [1, 2]}
    first = result["curves"]["lite lr 0.001"]
    assert "sampling" not in first[0] and "sampling" in first[1]  # full sampling every 2nd chunk and at the end
    assert "no_prompt" in first[1] and first[1]["seconds"] >= first[0]["seconds"] > 0
    assert len(lines) == 4 and "one-step IoU" in lines[0]
    assert json.loads(state.read_text())["curves"] == result["curves"]
    stats = training_stats(result, configs)
    assert stats["controlnet"].steps == 2 and stats["controlnet"].final.name == "final"
    assert result["summary"]["best_variant"] == {"lite": "lite lr 0.001", "controlnet": "controlnet"}
    assert result["summary"] == combine_seeds([result])["summary"]  # one definition of equal wall-clock

    # called again (a notebook after a disconnect): nothing is trained or scored twice
    logs = {label: LossLog(cfg.output).read() for label, cfg in configs.items()}
    again = fidelity_curves(configs, tiny_base, heldout, eval_every=1, sample_every=2, scoring=SCORING,
                            log=lines.append, state=state)
    assert again["curves"] == result["curves"] and len(lines) == 4
    assert {label: LossLog(cfg.output).read() for label, cfg in configs.items()} == logs

    # the same study made longer continues from its points; cut shorter, the runs it trained past
    # cannot be scored at the new end
    longer = fidelity_curves(configs_for(tiny_base_dir, train_dir, tmp_path, steps=3), tiny_base, heldout,
                             eval_every=1, sample_every=2, scoring=SCORING, log=lines.append, state=state)
    assert [p["step"] for p in longer["curves"]["controlnet"]] == [1, 2, 3] and len(lines) == 6
    assert longer["curves"]["controlnet"][:2] == result["curves"]["controlnet"]
    assert "sampling" in longer["curves"]["controlnet"][2] and "no_prompt" in longer["curves"]["controlnet"][2]
    with pytest.raises(RuntimeError, match="no checkpoint of step 1"):
        fidelity_curves(configs_for(tiny_base_dir, train_dir, tmp_path, steps=1), tiny_base, heldout,
                        eval_every=1, scoring=SCORING, state=state)

    # other settings against the same state, or a run folder ahead of the first chunk, are refused
    with pytest.raises(ValueError, match="holds the scores of other settings"):
        fidelity_curves(configs, tiny_base, heldout, eval_every=2, scoring=SCORING, state=state)
    with pytest.raises(RuntimeError, match="holds 3 steps, not 1"):
        fidelity_curves(configs, tiny_base, heldout, eval_every=1, scoring=SCORING, state=tmp_path / "other.json")
    with pytest.raises(ValueError, match="multiple of eval_every=3"):
        fidelity_curves(configs, tiny_base, heldout, eval_every=3, scoring=SCORING)


def test_a_run_with_fewer_steps_stops_there_while_the_others_go_on(tiny_base_dir, tiny_base, splits, tmp_path):
    train_dir, heldout = splits
    variants = [Variant.parse("lite:1e-3@1"), Variant.parse("controlnet")]
    configs = variant_configs(variants, train_dir, tmp_path, 2, base=str(tiny_base_dir), resolution=64, batch_size=4,
                              num_validation=1, validation_steps=1)
    result = fidelity_curves(configs, tiny_base, heldout, eval_every=1, sample_every=2, scoring=SCORING, log=lambda _: None)
    lite, cn = result["curves"]["lite lr 0.001"], result["curves"]["controlnet"]
    assert [p["step"] for p in lite] == [1] and [p["step"] for p in cn] == [1, 2]
    assert "sampling" in lite[0] and "no_prompt" in lite[0]  # its end: scored in full
    assert "sampling" not in cn[0] and "sampling" in cn[1]
    assert len(LossLog(configs["lite lr 0.001"].output).read()) == 1


def test_a_study_can_gain_a_variant_and_keeps_the_points_it_has(tiny_base_dir, tiny_base, splits, tmp_path):
    train_dir, heldout = splits
    settings = dict(base=str(tiny_base_dir), resolution=64, batch_size=4, num_validation=1, validation_steps=1)
    state = tmp_path / "state.json"
    first = fidelity_curves(variant_configs([Variant.parse("lite:1e-3")], train_dir, tmp_path, 2, **settings),
                            tiny_base, heldout, eval_every=1, scoring=SCORING, log=lambda _: None, state=state)
    lines = []
    shorter = variant_configs([Variant.parse("lite:1e-3:uniform@1")], train_dir, tmp_path, 2, **settings)
    again = fidelity_curves(shorter, tiny_base, heldout, eval_every=1, scoring=SCORING, log=lines.append, state=state)
    # the runs of the first call keep every point, past the new variant's shorter end too
    assert [p["step"] for p in again["curves"]["lite lr 0.001"]] == [1, 2]
    assert again["curves"]["lite lr 0.001"] == first["curves"]["lite lr 0.001"]
    assert len(lines) == 1 and "lite lr 0.001 uniform" in lines[0]  # only the new variant was trained
    assert again["variants"]["lite lr 0.001 uniform"]["timestep_sampling"] == "uniform"
    assert again["variants"]["lite lr 0.001"]["timestep_sampling"] == "cubic"  # the default Lite's
    both = variant_configs([Variant.parse("lite:1e-3"), Variant.parse("lite:1e-3:uniform@1")], train_dir, tmp_path,
                           2, **settings)
    lines.clear()
    last = fidelity_curves(both, tiny_base, heldout, eval_every=1, scoring=SCORING, log=lines.append, state=state)
    assert lines == [] and last["curves"] == again["curves"]  # runs already scored are not trained again


def test_one_seeds_summary_reads_equal_wall_clock_where_controlnet_plateaus():
    def curve(points):
        return [{"step": s, "seconds": t, "one_step_iou": v, "one_step_shuffled_iou": 0.60,
                 "sampling": {"disk_iou": v - 0.5, "edge_f1": 0.1, "circle_colour_error": 5.0}} for s, t, v in points]

    result = {
        "text_only": {"one_step": {"disk_iou": 0.60}, "sampling": {"disk_iou": 0.05}},
        "variants": {"lite": {"kind": "lite", "seed": 0}, "cn slow": {"kind": "controlnet", "seed": 0},
                     "cn": {"kind": "controlnet", "seed": 0}},
        "curves": {"lite": curve([(1, 10, 0.66), (2, 20, 0.68), (3, 30, 0.69)]),
                   "cn slow": curve([(1, 15, 0.60), (2, 30, 0.61), (3, 45, 0.62)]),
                   "cn": curve([(1, 15, 0.70), (2, 30, 0.80), (3, 45, 0.81)])},
    }
    s = summarize(result)
    assert s["best_variant"] == {"lite": "lite", "controlnet": "cn"}  # each kind at its best final sampled IoU
    # the best ControlNet's sampled IoU is within 5% of its best (0.31) from step 2, 30 s: Lite is read there
    assert (s["controlnet_plateau"]["step"], s["controlnet_plateau"]["seconds"]) == (2, 30)
    assert s["by_kind"]["lite"]["equal_wall_clock"]["step"] == 3
    assert s["share_of_controlnet"]["lite"]["equal_wall_clock"]["one_step_gain"] == pytest.approx(0.45)  # .09 of .20


def test_a_study_of_a_condition_scores_its_controllability_and_the_objects(tiny_base_dir, tiny_base, tmp_path):
    from lite_controlnet.conditions import get_condition
    from lite_controlnet.conditions.shapes_dataset import make_shapes

    train_dir = make_shapes(tmp_path / "train", num=8, size=64, condition="segmentation", seed=0, workers=1,
                            progress=False)
    heldout = PairedDataset(make_shapes(tmp_path / "heldout", num=2, size=64, condition="segmentation", seed=1,
                                        workers=1, progress=False), resolution=64)
    configs = variant_configs([Variant.parse("lite:1e-3")], train_dir, tmp_path / "runs", 1, base=str(tiny_base_dir),
                              resolution=64, batch_size=4, num_validation=1, validation_steps=1)
    lines, state = [], tmp_path / "state.json"
    segmentation = get_condition("segmentation")
    result = fidelity_curves(configs, tiny_base, heldout, eval_every=1, scoring=SCORING, log=lines.append, state=state,
                             condition=segmentation, objects=True)
    assert result["condition"] == {"name": "segmentation", "metric": "miou"}
    point = result["curves"]["lite lr 0.001"][0]
    assert "one_step_iou" not in point and set(point["one_step"]) >= {"controllability", "miou"}
    assert {"object_iou", "right_object_count", "controllability"} <= set(point["sampling"])
    assert point["sampling_by_objects"] and "one-step miou" in lines[0]
    assert result["summary"]["best_variant"] == {"lite": "lite lr 0.001"}
    with pytest.raises(ValueError, match="holds the scores of other settings"):  # another condition, same state
        fidelity_curves(configs, tiny_base, heldout, eval_every=1, scoring=SCORING, log=lines.append, state=state,
                        condition=get_condition("canny"), objects=True)
