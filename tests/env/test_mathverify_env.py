"""spo/MathVerify-v0 on a user dataset: multi-part and list references through the real env."""

import json

import gymnasium
import pytest

import spo_agents  # noqa: F401


@pytest.fixture()
def dataset(tmp_path):
    path = tmp_path / "problems.jsonl"
    records = [
        {"id": "two-roots", "question": "Solve x^2 - 3x + 2 = 0; box each root.", "answer": "\\boxed{1}\\boxed{2}"},
        {"id": "pair", "question": "Give the two numbers of the pair.", "answer": "32, 349"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "task_id, reply, reward",
    [
        ("two-roots", "The roots are \\boxed{2}.", 0.0),  # half of a two-part reference
        ("two-roots", "The roots are \\boxed{1} and \\boxed{2}.", 1.0),
        ("two-roots", "The roots are \\boxed{1, 2}.", 1.0),
        ("pair", "\\boxed{32349}", 0.0),  # a list is not a number with a thousands separator
        ("pair", "\\boxed{32, 349}", 1.0),
    ],
)
def test_multi_part_references_need_every_part(dataset, task_id, reply, reward):
    env = gymnasium.make("spo/MathVerify-v0", dataset_path=str(dataset), heldout_fraction=0.0)
    try:
        env.reset(options={"task_id": task_id})
        _, got, terminated, truncated, _ = env.step(reply)
        assert (got, terminated, truncated) == (reward, True, False)
    finally:
        env.close()
