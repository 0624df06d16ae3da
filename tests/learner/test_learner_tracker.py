"""Value tracker: update sequences, EMA form, initialisation, state and table round trips."""

import json
import math

import pytest

from spo_agents.learner.tracker import (
    ValueTracker,
    init_alpha_beta,
    read_value_table,
    write_value_table,
)


def test_unseen_task_reads_as_uninformed_prior():
    tracker = ValueTracker()
    assert tracker.value("x") == 0.5
    assert tracker.n_eff("x") == 1.0
    assert "x" not in tracker and len(tracker) == 0


def test_binary_update_sequence_matches_hand_computation():
    tracker = ValueTracker()
    first = tracker.update("x", 1.0, rho=0.9)
    # alpha = 0.9*0.5 + 1 = 1.45, beta = 0.9*0.5 + 0 = 0.45
    assert tracker.alpha_beta("x") == pytest.approx((1.45, 0.45))
    assert first.v_before == 0.5 and first.n_eff_before == 1.0
    assert first.v_after == pytest.approx(1.45 / 1.9)
    assert first.n_eff_after == pytest.approx(1.9)
    second = tracker.update("x", 0, rho=0.875)
    # alpha = 0.875*1.45 = 1.26875, beta = 0.875*0.45 + 1 = 1.39375
    assert tracker.alpha_beta("x") == pytest.approx((1.26875, 1.39375))
    assert second.v_before == pytest.approx(1.45 / 1.9)
    assert tracker.value("x") == pytest.approx(1.26875 / 2.6625)
    assert tracker.visits("x") == 2


@pytest.mark.parametrize("rho, limit", [(0.875, 8.0), (0.96, 25.0)])
def test_constant_rho_n_eff_tends_to_one_over_one_minus_rho(rho, limit):
    tracker = ValueTracker()
    for step in range(600):
        tracker.update("x", step % 2, rho=rho)
    assert tracker.n_eff("x") == pytest.approx(limit, rel=1e-6)


def test_ema_form_for_non_binary_reward():
    tracker = ValueTracker()
    update = tracker.update("x", 0.3, rho=0.9)
    # eta = 1/(0.9*1 + 1); v = 0.5 + eta*(0.3-0.5) = 0.39473..; N = 1.9
    assert update.v_after == pytest.approx(0.5 - 0.2 / 1.9)
    assert update.n_eff_after == pytest.approx(1.9)
    assert tracker.alpha_beta("x") == pytest.approx((0.75, 1.15))


def test_ema_form_equals_beta_form_on_binary_rewards():
    from spo_agents.learner.tracker import _ema_update

    tracker = ValueTracker()
    rewards, rhos = [1, 0, 0, 1, 1, 1, 0], [0.9, 0.875, 0.96, 0.93, 0.875, 0.9, 0.95]
    alpha, beta = 0.5, 0.5
    for r, rho in zip(rewards, rhos):
        tracker.update("x", r, rho)
        alpha, beta = _ema_update(alpha / (alpha + beta), alpha + beta, float(r), rho)
    assert tracker.alpha_beta("x") == pytest.approx((alpha, beta), rel=1e-12)


@pytest.mark.parametrize("reward", [-0.1, 1.5, math.nan])
def test_rewards_outside_unit_interval_are_rejected(reward):
    with pytest.raises(ValueError):
        ValueTracker().update("x", reward, rho=0.9)


def test_bad_rho_and_task_id_are_rejected():
    tracker = ValueTracker()
    with pytest.raises(ValueError):
        tracker.update("x", 1, rho=0.0)
    with pytest.raises(ValueError):
        tracker.update("x", 1, rho=1.01)
    with pytest.raises(TypeError):
        tracker.update(3, 1, rho=0.9)


def test_init_smoothed_and_plain_match_hand_computation():
    # N0 = 1/(1-0.875) = 8; smoothed v0 = 3.5/9; plain v0 = 3/8
    assert init_alpha_beta(3, 8) == pytest.approx((8 * 3.5 / 9, 8 * 5.5 / 9))
    assert init_alpha_beta(3, 8, smoothed=False) == pytest.approx((3.0, 5.0))
    assert init_alpha_beta(0, 8) == pytest.approx((8 * 0.5 / 9, 8 * 8.5 / 9))
    assert init_alpha_beta(2, 4, rho_min=0.9) == pytest.approx((5.0, 5.0))
    with pytest.raises(ValueError):
        init_alpha_beta(9, 8)


def test_init_from_table_keeps_prior_for_tasks_without_samples():
    tracker = ValueTracker()
    count = tracker.init_from_table({"a": (8, 8), "b": (0, 0), "c": (1, 8)})
    assert count == 2
    assert tracker.value("a") == pytest.approx(8.5 / 9)
    assert tracker.n_eff("a") == pytest.approx(8.0)
    assert tracker.value("b") == 0.5 and "b" not in tracker
    assert tracker.visits("a") == 0


def test_state_dict_round_trips_exactly_through_json():
    tracker = ValueTracker()
    tracker.init_from_table({"a": (3, 8)})
    for i, r in enumerate([1, 0, 0.37, 1, 0]):
        tracker.update(f"t{i % 3}", r, rho=0.875 + 0.0123 * i)
    state = json.loads(json.dumps(tracker.state_dict()))
    restored = ValueTracker(prior_alpha=0.1, prior_beta=0.2)
    restored.load_state_dict(state)
    assert restored.state_dict() == tracker.state_dict()
    for task_id in ["a", "t0", "t1", "t2", "unseen"]:
        assert restored.alpha_beta(task_id) == tracker.alpha_beta(task_id)  # bit-exact
        assert restored.visits(task_id) == tracker.visits(task_id)


def test_value_table_jsonl_round_trip_and_torn_last_line(tmp_path):
    path = tmp_path / "values.jsonl"
    write_value_table(path, {"a": (3, 8), "b": (0.5, 2)})
    write_value_table(path, {"a": (4, 8)}, append=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"task_id": "a", "successes": 3, "samples": 8}
    with open(path, "a") as handle:
        handle.write('{"task_id": "c", "succ')  # killed mid-write
    assert read_value_table(path) == {"a": (4, 8), "b": (0.5, 2)}


def test_value_table_rejects_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "values.jsonl"
    path.write_text('{"task_id": "a", "successes": 1, "samples": 2}\nnot json\n')
    with pytest.raises(ValueError, match=":2:"):
        read_value_table(path)


def test_stats_summarise_tracked_tasks():
    tracker = ValueTracker()
    assert tracker.stats() == {"tracker/num_tasks": 0.0}
    tracker.set_alpha_beta("a", 1.0, 3.0)
    tracker.set_alpha_beta("b", 3.0, 1.0)
    stats = tracker.stats()
    assert stats["tracker/v_mean"] == pytest.approx(0.5)
    assert stats["tracker/n_eff_mean"] == pytest.approx(4.0)


def test_unsmoothed_init_of_tasks_never_or_always_solved():
    """The paper's v0 = k / n0 gives v0 = 0 or 1 (alpha or beta = 0); the tracker must take it."""
    tracker = ValueTracker()
    assert tracker.init_from_table({"never": (0, 8), "always": (8, 8), "half": (4, 8)}, smoothed=False) == 3
    assert (tracker.value("never"), tracker.value("always"), tracker.value("half")) == (0.0, 1.0, 0.5)
    assert tracker.n_eff("never") == pytest.approx(8.0)
    update = tracker.update("never", 1.0, rho=0.875)
    assert update.v_after == pytest.approx(1 / (0.875 * 8 + 1)) and update.v_before == 0.0
    with pytest.raises(ValueError, match="positive sum"):
        tracker.set_alpha_beta("x", 0.0, 0.0)
