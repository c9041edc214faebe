"""Several seeds' fidelity curves combined: mean and spread, ControlNet's plateau, equal wall-clock."""

import pytest

from lite_controlnet.evaluation.summary import combine_seeds, mean_curve

TEXT_ONLY = {"one_step": {"disk_iou": 0.60}, "sampling": {"disk_iou": 0.02, "edge_f1": 0.05}}


def point(step, seconds, one_step, sampled=None, shuffled=0.60):
    p = {"step": step, "seconds": seconds, "one_step_iou": one_step, "one_step_shuffled_iou": shuffled}
    if sampled is not None:
        p["sampling"] = {"disk_iou": sampled, "edge_f1": sampled / 2, "circle_colour_error": 5.0}
    return p


def seed_result(seed, shift):
    """ControlNet: 2 s per step, sampled IoU 0.2, 0.6, 0.62 at steps 2, 4, 6 (plateau from step 4);
    Lite: 1 s per step, better per second."""
    cn = [point(s, 2.0 * s + shift, 0.60 + 0.04 * s, {2: 0.2, 4: 0.6, 6: 0.62}.get(s)) for s in range(1, 7)]
    lite = [point(s, 1.0 * s + shift, 0.60 + 0.03 * s + shift, {2: 0.1, 4: 0.3, 6: 0.5}.get(s)) for s in range(1, 7)]
    return {"variants": {"lite lr 0.003": {"kind": "lite", "learning_rate": 3e-3, "seed": seed},
                         "controlnet lr 0.001": {"kind": "controlnet", "learning_rate": 1e-3, "seed": seed}},
            "text_only": TEXT_ONLY, "curves": {"lite lr 0.003": lite, "controlnet lr 0.001": cn}}


def test_mean_curve_gives_mean_min_and_max_where_every_seed_has_the_score():
    curve = mean_curve([[point(1, 1.0, 0.7, 0.3)], [point(1, 3.0, 0.8)]])
    assert curve[0]["one_step_iou"] == {"mean": 0.75, "min": 0.7, "max": 0.8}
    assert curve[0]["seconds"]["mean"] == 2.0
    assert "sampled_iou" not in curve[0]  # only one seed was sampled there
    with pytest.raises(ValueError, match="different steps"):
        mean_curve([[point(1, 1.0, 0.7)], [point(2, 1.0, 0.7)]])
    # a seed scored every step, another every second one: combined where both were scored
    sparse = mean_curve([[point(1, 1.0, 0.7), point(2, 2.0, 0.8)], [point(2, 2.0, 0.6)]])
    assert [p["step"] for p in sparse] == [2] and sparse[0]["one_step_iou"]["mean"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="different steps"):  # but they must end alike
        mean_curve([[point(1, 1.0, 0.7), point(2, 2.0, 0.8)], [point(1, 1.0, 0.6)]])


def test_combined_seeds_are_read_at_controlnets_plateau_and_at_the_end():
    combined = combine_seeds([seed_result(0, 0.0), seed_result(1, 0.02)])
    summary = combined["summary"]
    assert combined["seeds"] == [0, 1]
    # ControlNet's best mean sampled IoU is 0.62; 95% of it (0.589) is first reached at step 4
    assert summary["controlnet_plateau"]["step"] == 4 and summary["controlnet_plateau"]["reached"]
    assert summary["controlnet_plateau"]["seconds"] == pytest.approx(8.01)
    lite = summary["by_kind"]["lite"]
    # by 8.01 s Lite (1 s per step, 0.01 s later on average) trained 7 steps; its last point is step 6
    assert lite["equal_wall_clock"]["step"] == 6 and lite["equal_wall_clock"]["sampled_step"] == 6
    assert lite["equal_wall_clock"]["one_step_iou"] == {"mean": 0.79, "min": 0.78, "max": 0.8}
    assert summary["by_kind"]["controlnet"]["equal_wall_clock"]["sampled_step"] == 4
    share = summary["share_of_controlnet"]["lite"]
    # one-step gain over no control: Lite 0.19 against ControlNet's 0.16 at step 4; sampled 0.5 / 0.6
    assert share["equal_wall_clock"] == {"one_step_gain": pytest.approx(0.19 / 0.16, abs=1e-3),
                                         "sampled_iou": pytest.approx(0.5 / 0.6, abs=1e-3)}
    assert share["end"]["sampled_iou"] == pytest.approx(0.5 / 0.62, abs=1e-3)
    assert summary["shuffled_helps"] == {"lite": False, "controlnet": False}
    assert summary["by_variant"]["lite lr 0.003"] == lite and set(summary["by_variant"]) == set(combined["curves"])


def test_step_times_measured_alone_replace_the_runs_wall_clock():
    # the runs' own seconds say ControlNet takes 2 s per step and Lite 1 s; measured alone, both take
    # 1.5 s: equal wall-clock is then equal steps
    combined = combine_seeds([seed_result(0, 0.0), seed_result(1, 0.02)], {"lite": 1.5, "controlnet": 1.5})
    cn = combined["curves"]["controlnet lr 0.001"]
    assert cn[3]["seconds"]["mean"] == 6.0 and cn[3]["recorded_seconds"]["mean"] == pytest.approx(8.01)
    summary = combined["summary"]
    assert summary["controlnet_plateau"]["seconds"] == 6.0
    assert summary["by_kind"]["lite"]["equal_wall_clock"]["step"] == 4
    assert combined["step_seconds"] == {"lite": 1.5, "controlnet": 1.5}
    with pytest.raises(ValueError, match=r"lacks the kind\(s\) \['controlnet'\]"):
        combine_seeds([seed_result(0, 0.0)], {"lite": 1.5})


def test_a_controlnet_still_rising_at_its_last_point_has_not_plateaued():
    results = [seed_result(0, 0.0)]
    results[0]["curves"]["controlnet lr 0.001"][5]["sampling"]["disk_iou"] = 0.9  # jumps at the end
    plateau = combine_seeds(results)["summary"]["controlnet_plateau"]
    assert plateau["step"] == 6 and not plateau["reached"]


def test_a_shuffled_control_that_helps_is_reported():
    results = [seed_result(0, 0.0)]
    for p in results[0]["curves"]["lite lr 0.003"]:
        p["one_step_shuffled_iou"] = 0.65
    assert combine_seeds(results)["summary"]["shuffled_helps"]["lite"] is True


def test_seeds_must_match_and_differ():
    with pytest.raises(ValueError, match="each seed once"):
        combine_seeds([seed_result(0, 0.0), seed_result(0, 0.0)])
    other = seed_result(1, 0.0)
    other["curves"].pop("lite lr 0.003")
    with pytest.raises(ValueError, match="same variants"):
        combine_seeds([seed_result(0, 0.0), other])


def condition_point(step, seconds, one_step, sampled=None, by_objects=None):
    p = {"step": step, "seconds": seconds, "one_step": {"controllability": one_step},
         "one_step_shuffled": {"controllability": 0.30}}
    if sampled is not None:
        p["sampling"] = {"controllability": sampled, "object_iou": sampled / 2, "right_object_count": 0.5,
                         "object_colour_error": 20.0}
        p["sampling_by_objects"] = {str(n): {"controllability": sampled / n, "object_iou": sampled / (2 * n)}
                                    for n in (by_objects or (1, 2, 3, 4))}
    return p


def condition_result(seed, with_uniform=False):
    """A canny study: ControlNet reaches sampled F1 0.4 at step 4 of 6 (1 s per step); Lite 0.36."""
    curves = {"controlnet lr 0.001": [condition_point(s, 1.0 * s, 0.3 + 0.02 * s, {2: 0.2, 4: 0.4, 6: 0.41}.get(s))
                                      for s in range(1, 7)],
              "lite lr 0.003": [condition_point(s, 1.0 * s, 0.3 + 0.03 * s, {2: 0.3, 4: 0.36, 6: 0.38}.get(s))
                                for s in range(1, 7)]}
    variants = {"controlnet lr 0.001": {"kind": "controlnet", "learning_rate": 1e-3, "seed": seed},
                "lite lr 0.003": {"kind": "lite", "learning_rate": 3e-3, "seed": seed}}
    if with_uniform:
        curves["controlnet lr 0.001 uniform"] = [condition_point(s, 1.0 * s, 0.3, {2: 0.1, 4: 0.2, 6: 0.25}.get(s))
                                                 for s in range(1, 7)]
        variants["controlnet lr 0.001 uniform"] = {"kind": "controlnet", "learning_rate": 1e-3, "seed": seed}
    text = {"one_step": {"controllability": 0.30}, "sampling": {"controllability": 0.05, "object_iou": 0.02},
            "sampling_by_objects": {str(n): {"controllability": 0.05, "object_iou": 0.02} for n in (1, 2, 3, 4)}}
    return {"condition": {"name": "canny", "metric": "edge_f1"}, "variants": variants, "text_only": text,
            "curves": curves}


def test_a_conditions_study_is_read_by_its_controllability_and_object_scores():
    from lite_controlnet.evaluation.complexity import complexity_table, plot_complexity

    # a variant run by one seed only (ControlNet with uniform timesteps) is the mean of that seed
    combined = combine_seeds([condition_result(0, with_uniform=True), condition_result(1)], partial=True)
    assert combined["variants"]["controlnet lr 0.001 uniform"]["seeds"] == [0]
    assert combined["variants"]["lite lr 0.003"]["seeds"] == [0, 1]
    summary = combined["summary"]
    assert summary["best_variant"]["controlnet"] == "controlnet lr 0.001"
    assert summary["controlnet_plateau"] == {"step": 4, "seconds": 4.0, "sampled_score": 0.41, "reached": True}
    lite = summary["by_kind"]["lite"]["equal_wall_clock"]
    assert lite["sampled_score"]["mean"] == 0.36 and lite["sampled_object_iou"]["mean"] == 0.18
    assert lite["sampled_score_3_objects"]["mean"] == pytest.approx(0.12)
    share = summary["share_of_controlnet"]["lite"]["equal_wall_clock"]
    assert share["sampled_score"] == pytest.approx(0.9) and share["sampled_object_iou"] == pytest.approx(0.9)
    assert share["one_step_gain"] == pytest.approx(0.12 / 0.08)
    assert summary["text_only"]["sampled_object_iou_2_objects"] == 0.02
    assert summary["shuffled_helps"] == {"controlnet": False, "lite": False}
    table = complexity_table(combined)
    assert table["score"]["lite"][2]["mean"] == pytest.approx(0.18) and table["score"]["text_only"][4] == 0.05
    assert table["object_iou"]["controlnet"][4]["mean"] == pytest.approx(0.05)
    assert len(plot_complexity({"canny": combined, "outline": combined}).axes) == 4
    with pytest.raises(ValueError, match="same variants"):  # unless asked, every seed must run every variant
        combine_seeds([condition_result(0, with_uniform=True), condition_result(1)])
