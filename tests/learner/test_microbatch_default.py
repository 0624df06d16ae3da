"""The default micro-batch keeps activation memory small: a GRPO-sized batch (64 rows of about
100 tokens, as in `bench learner`) is trained in several micro-batches, not one or two (at 4096
tokens, 50 rows at once took 1.6x the process's peak RSS of the 1024 default)."""

from spo_agents.learner.update import OptimConfig, microbatches


def test_default_budget_splits_a_64_row_batch_into_small_microbatches():
    budget = OptimConfig().microbatch_tokens
    groups = microbatches([101] * 64, budget)
    assert len(groups) >= 6 and max(len(g) for g in groups) * 101 <= budget
    assert sorted(i for g in groups for i in g) == list(range(64))
