"""SPO's and GRPO's use of every advantage setting, and SPO's learner step with each drift
estimator: which passes it makes and the D it reports, against hand computations."""

import copy

import numpy as np
import pytest

from spo_agents.learner import DriftCache, ValueTracker
from spo_agents.learner.drift import rho_from_drift
from spo_agents.rollout.episode import Episode, FinishReason, Turn
from spo_agents.trainer.algorithms import GRPOAlgorithm, SPOAlgorithm
from spo_agents.trainer.config import load_config


def _episode(task_id, reward, completion=(7, 8), prompt=(1, 2, 3), logprobs=None, version=0):
    logprobs = [-1.0] * len(completion) if logprobs is None else list(logprobs)
    turn = Turn(prompt_ids=list(prompt), completion_ids=list(completion), logprobs=logprobs,
                finish_reason=FinishReason.STOP, policy_version=version, reward=reward)
    return Episode(env_id="e", task_id=task_id, turns=[turn])


def _spo(*overrides):
    config = load_config(None, list(overrides))
    return SPOAlgorithm(ValueTracker(), DriftCache.from_config(config.tracker), config)


# ---- accumulate mode: the running advantage under each AdvantageConfig setting ---------------

REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0]  # values before are all the prior 0.5: raw = r - 0.5
LENGTHS = [2, 5, 1, 3, 4]  # policy tokens per episode


def _running(*overrides):
    spo = _spo("spo_update=accumulate", *overrides)
    out = []
    for i, (reward, length) in enumerate(zip(REWARDS, LENGTHS)):
        episode = _episode(f"t{i}", reward, completion=range(10, 10 + length))
        spo.on_arrival(episode)
        out.append(spo.running_advantage(episode))
    return np.array(out)


def _expected(weights_fn, ddof, eps=1e-8):
    """A_k = (raw_k - mean_k) / (std_k + eps) under weights w_j(k) of the first k + 1 arrivals."""
    raw = np.array(REWARDS) - 0.5
    out = [raw[0]]  # one arrival: no spread yet, the raw advantage
    for k in range(1, len(raw)):
        w = weights_fn(k)
        mean = np.sum(w * raw[: k + 1]) / w.sum()
        var = np.sum(w * (raw[: k + 1] - mean) ** 2) / w.sum()
        if ddof:
            var *= w.sum() ** 2 / (w.sum() ** 2 - np.sum(w**2))
        out.append((raw[k] - mean) / (np.sqrt(var) + eps))
    return np.array(out)


def test_accumulate_mode_uses_the_configured_running_statistics():
    ones = lambda k: np.ones(k + 1)  # noqa: E731
    decayed = lambda k: 0.5 ** np.arange(k, -1, -1.0)  # noqa: E731  (ema_decay 0.5 per episode)
    tokens = lambda k: np.array(LENGTHS[: k + 1], dtype=float)  # noqa: E731
    assert _running() == pytest.approx(_expected(ones, ddof=1))  # welford, episode, ddof 1
    assert _running("advantage.ddof=0") == pytest.approx(_expected(ones, ddof=0))
    assert _running("advantage.running_moments=ema", "advantage.ema_decay=0.5") == pytest.approx(
        _expected(decayed, ddof=1))
    assert _running("advantage.normalize=token") == pytest.approx(_expected(tokens, ddof=0))
    assert _running("advantage.normalize=none") == pytest.approx(np.array(REWARDS) - 0.5)
    assert _running("advantage.spo_eps=10") == pytest.approx(_expected(ones, ddof=1, eps=10.0))


def test_running_moments_survive_a_checkpoint():
    spo = _spo("spo_update=accumulate", "advantage.running_moments=ema")
    for i, reward in enumerate(REWARDS[:3]):
        episode = _episode(f"t{i}", reward)
        spo.on_arrival(episode)
        spo.running_advantage(episode)
    restored = _spo("spo_update=accumulate", "advantage.running_moments=ema")
    restored.load_state_dict(spo.state_dict())
    last = _episode("t9", 0.0)
    for algorithm in (spo, restored):
        algorithm.on_arrival(last)
    assert restored.running_advantage(last) == spo.running_advantage(last)


# ---- GRPO: grpo_scale_by_std and grpo_eps --------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    ([], np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)),  # std (ddof 1) of 1,0,0,0 = 0.5
    (["advantage.grpo_scale_by_std=false"], [0.75, -0.25, -0.25, -0.25]),
    (["advantage.grpo_eps=1.5"], np.array([0.75, -0.25, -0.25, -0.25]) / 2.0),
])
def test_grpo_uses_scale_by_std_and_eps(overrides, expected):
    config = load_config(None, ["algo=grpo", *overrides])
    group = [_episode("t", r) for r in (1.0, 0.0, 0.0, 0.0)]
    batch = GRPOAlgorithm(config).make_batch([group], version=0)
    assert batch.advantages == pytest.approx(list(expected))


# ---- SPO's learner step and the drift estimators, on the tiny real model -------------------

@pytest.fixture(scope="module")
def tiny():
    from spo_agents.backends.models import load_model

    return load_model("tiny", seed=0)


class CountingUpdater:
    """A real PolicyUpdater whose separate no-grad passes (`logprobs`) are counted."""

    def __init__(self, tiny, lr=1e-4):
        from spo_agents.learner.update import OptimConfig, PolicyUpdater

        self.inner = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=lr))
        self.passes: list[int] = []  # sequences scored per call

    def logprobs(self, token_ids_list, loss_masks=None):
        self.passes.append(len(token_ids_list))
        return self.inner.logprobs(token_ids_list, loss_masks)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _on_policy(updater, task_id, reward, completion, prompt=(5, 6, 7)):
    ids = list(prompt) + list(completion)
    logprobs = updater.inner.logprobs([ids])[0][len(prompt):]
    return _episode(task_id, reward, completion, prompt, logprobs, version=updater.version)


def _step(spo, updater, episodes):
    for episode in episodes:
        spo.on_arrival(episode)
    return spo.learner_step(updater, spo.make_batch(episodes, updater.version))


def _drift(then_ids, then_logprobs_fn, now_logprobs_fn, mask):
    mask = np.array(mask, dtype=bool)
    return float(np.abs(then_logprobs_fn([then_ids])[0][mask] - now_logprobs_fn([then_ids])[0][mask]).mean())


def test_stored_episode_reads_revisits_off_the_training_forward(tiny):
    """First visits cost no pass; a revisit whose new episode repeats the stored one is read off
    the training forward; only the other revisit is re-scored, in one pass before the update."""
    spo, updater = _spo("tracker.drift_estimator=stored_episode"), CountingUpdater(tiny)
    a1, b1 = _on_policy(updater, "a", 1.0, [11, 12, 13]), _on_policy(updater, "b", 0.0, [21, 22])
    then_fn = PolicyUpdaterCopy(updater)  # theta0, the weights of step 1's training forward
    first = _step(spo, updater, [a1, b1])
    assert updater.passes == [] and first["drift/revisits"] == 0 and first["drift/mean"] == 0.0
    a_ids, b_ids = a1.training_view().token_ids, b1.training_view().token_ids
    # D against the step-1 forward (theta0), now at the step-2 start (theta1), on the stored tokens
    expected = [_drift(a_ids, then_fn, updater.inner.logprobs, a1.training_view().loss_mask),
                _drift(b_ids, then_fn, updater.inner.logprobs, b1.training_view().loss_mask)]
    a2 = _on_policy(updater, "a", 0.0, [11, 12, 13])  # the same episode again
    b2 = _on_policy(updater, "b", 1.0, [23, 24, 25])  # a different one
    updater.passes.clear()
    second = _step(spo, updater, [a2, b2])
    assert updater.passes == [1]  # b's stored episode only
    assert (second["drift/revisits"], second["drift/read_off_forward"], second["drift/rescored"]) == (2, 1, 1)
    assert second["drift/mean"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert min(expected) > 0.0
    assert second["rho/min"] == pytest.approx(min(rho_from_drift(np.array(expected))), rel=1e-6)


def test_stored_episode_pass_runs_on_the_decoders_thread_beside_the_training_forward(tiny):
    """With a side runner (the trainer passes the local decoder's `run_between_steps`), the
    re-scoring pass is started before the training forward and runs on the decode thread; D,
    rho and the stored episodes are those of the pass made in line."""
    import threading

    from spo_agents.backends.transformers_backend import TransformersBackend

    results = {}
    for aside in (False, True):
        spo, updater = _spo("tracker.drift_estimator=stored_episode"), CountingUpdater(tiny)
        _step(spo, updater, [_on_policy(updater, "a", 1.0, [11, 12, 13]), _on_policy(updater, "b", 0.0, [21, 22])])
        again = [_on_policy(updater, "a", 0.0, [11, 12, 13]), _on_policy(updater, "b", 1.0, [23, 24, 25])]
        for episode in again:
            spo.on_arrival(episode)
        batch = spo.make_batch(again, updater.version)
        ran_on = []
        with TransformersBackend(copy.deepcopy(tiny.model), tiny.tokenizer) as backend:
            def side_runner(fn, *args):
                ran_on.append(threading.current_thread().name)  # where the job is submitted from
                return backend.run_between_steps(lambda: (ran_on.append(threading.current_thread().name),
                                                          fn(*args))[1])
            metrics = spo.learner_step(updater, batch, side_runner if aside else None)
        results[aside] = metrics, ran_on, spo.drift_cache.get("b").policy_logprobs
    (inline, inline_threads, inline_b), (side, side_threads, side_b) = results[False], results[True]
    assert inline_threads == [] and side_threads == [threading.current_thread().name, "spo-transformers-decode"]
    assert (side["drift/rescored"], side["drift/rescored_aside"], inline["drift/rescored_aside"]) == (1, 1, 0)
    assert side["drift/mean"] == pytest.approx(inline["drift/mean"], rel=1e-9) and side["drift/mean"] > 0
    assert side["rho/min"] == inline["rho/min"] and np.array_equal(side_b, inline_b)


def test_scores_made_ahead_must_be_the_ones_the_cache_asks_for(tiny):
    from concurrent.futures import ThreadPoolExecutor

    from spo_agents.trainer.algorithms import ScoredAhead

    updater = CountingUpdater(tiny)
    with ThreadPoolExecutor(1) as pool:
        ahead = ScoredAhead(updater.inner, [[5, 6, 7, 8]], [[0, 0, 1, 1]], pool.submit)
        assert ahead([[5, 6, 7, 8]], [[0, 0, 1, 1]])[0] == pytest.approx(updater.inner.logprobs(
            [[5, 6, 7, 8]], [[0, 0, 1, 1]])[0])
        with pytest.raises(RuntimeError, match="other episodes"):
            ahead([[5, 6, 7, 9]], [[0, 0, 1, 1]])


def test_behaviour_ratio_makes_no_pass_and_compares_sampler_with_training_forward(tiny):
    spo, updater = _spo("tracker.drift_estimator=behaviour_ratio"), CountingUpdater(tiny)
    fresh = _on_policy(updater, "a", 1.0, [11, 12, 13])
    stale = _on_policy(updater, "b", 0.0, [21, 22])
    stale.turns[0].logprobs = [lp - 0.02 for lp in stale.turns[0].logprobs]  # sampled by an older policy
    metrics = _step(spo, updater, [fresh, stale])
    assert updater.passes == []
    assert metrics["drift/mean"] == pytest.approx((0.0 + 0.02) / 2, abs=1e-5)
    assert metrics["rho/max"] == pytest.approx(0.96) and metrics["rho/min"] == pytest.approx(
        rho_from_drift(0.02), rel=1e-3)


def test_stored_episode_rescore_keeps_the_reference_timing(tiny):
    """One pass after every update: the batch's episodes (and the stored ones) under the new weights."""
    spo, updater = _spo("tracker.drift_estimator=stored_episode_rescore"), CountingUpdater(tiny)
    a1 = _on_policy(updater, "a", 1.0, [11, 12, 13])
    _step(spo, updater, [a1, _on_policy(updater, "b", 0.0, [21, 22])])
    assert updater.passes == [2]
    theta1_fn = PolicyUpdaterCopy(updater)
    a2 = _on_policy(updater, "a", 0.0, [14])
    second = _step(spo, updater, [a2])
    assert updater.passes == [2, 2]  # a's stored episode and a2
    view = a1.training_view()
    expected = _drift(view.token_ids, theta1_fn, updater.inner.logprobs, view.loss_mask)  # theta1 -> theta2
    assert second["drift/mean"] == pytest.approx(expected, rel=1e-5)


def PolicyUpdaterCopy(updater):  # noqa: N802 - a frozen scorer of the updater's current weights
    from spo_agents.learner.update import PolicyUpdater

    return PolicyUpdater(copy.deepcopy(updater.inner.model)).logprobs


@pytest.mark.parametrize("update_mode", ["collect", "accumulate"])
def test_drift_audit_logs_the_reference_estimator_on_the_same_visits(tiny, update_mode):
    """The audit's reference D equals what a run with stored_episode_rescore reports."""
    runs = {}
    for estimator, audit in (("stored_episode", "true"), ("stored_episode_rescore", "false")):
        spo = _spo(f"tracker.drift_estimator={estimator}", f"tracker.drift_audit={audit}",
                   f"spo_update={update_mode}")
        updater = CountingUpdater(tiny)
        records = []
        for completion in ([11, 12, 13], [14, 15]):
            episodes = [_on_policy(updater, "a", 1.0, completion), _on_policy(updater, "b", 0.0, [21, 22])]
            if update_mode == "accumulate":
                for episode in episodes:
                    spo.on_arrival(episode)
                    spo.accumulate_on_arrival(updater, episode, 1.0)
                records.append(spo.learner_step(updater, spo.make_batch(episodes, updater.version)))
            else:
                records.append(_step(spo, updater, episodes))
        runs[estimator] = records
    audited, reference = runs["stored_episode"], runs["stored_episode_rescore"]
    assert audited[0]["drift/audit_tasks"] == 0 and audited[1]["drift/audit_tasks"] == 2
    assert audited[1]["drift/audit_reference_mean"] == pytest.approx(reference[1]["drift/mean"], rel=1e-5)
    assert audited[1]["drift/audit_mean"] == pytest.approx(audited[1]["drift/mean"])
    assert audited[1]["drift/audit_abs_diff"] >= abs(audited[1]["drift/audit_diff"])
    assert "drift/audit_tasks" not in reference[1]


def test_drift_audit_against_itself_is_rejected():
    with pytest.raises(ValueError, match="nothing to compare"):
        load_config(None, ["tracker.drift_estimator=stored_episode_rescore", "tracker.drift_audit=true"])


@pytest.mark.parametrize("overrides", [[], ["advantage.ddof=0"], ["advantage.normalize=token"],
                                       ["advantage.normalize=none"], ["advantage.spo_eps=10"]])
def test_collect_mode_batch_uses_the_advantage_settings(overrides):
    """The batch standardisation, as hand-computed, for each setting."""
    spo = _spo(*overrides)
    episodes = [_episode(f"t{i}", r, completion=range(10, 10 + n)) for i, (r, n) in enumerate(zip(REWARDS, LENGTHS))]
    for episode in episodes:
        spo.on_arrival(episode)
    batch = spo.make_batch(episodes, version=0)
    raw, tokens = np.array(REWARDS) - 0.5, np.array(LENGTHS, dtype=float)
    c = spo.config.advantage
    if c.normalize.value == "none":
        expected = raw
    elif c.normalize.value == "token":
        mean = np.sum(tokens * raw) / tokens.sum()
        expected = (raw - mean) / (np.sqrt(np.sum(tokens * (raw - mean) ** 2) / tokens.sum()) + c.spo_eps)
    else:
        expected = (raw - raw.mean()) / (raw.std(ddof=c.ddof) + c.spo_eps)
    assert batch.advantages == pytest.approx(list(expected))
