"""Task sources: JSONL, Parquet and Hugging Face datasets on disk; stable ids; disjoint splits."""

import json

import gymnasium
import pytest

import spo_agents  # noqa: F401
from spo_agents.env import load_hf_dataset, load_tasks, split_tasks

RECORDS = [
    {"id": "g1", "question": "Janet has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7", "level": 1},
    {"id": "g2", "question": "A book costs 12 and a pen 3. Total for 2 books and a pen?", "answer": "#### 27"},
    {"id": None, "question": "What is 1,000 + 234?", "answer": "#### 1,234"},
]


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_jsonl_loader_ids_and_metadata(tmp_path):
    path = tmp_path / "gsm.jsonl"
    write_jsonl(path, RECORDS)
    tasks = load_tasks(path)
    assert [t.task_id for t in tasks[:2]] == ["g1", "g2"]
    assert len(tasks[2].task_id) == 16  # content hash when the id is missing
    assert load_tasks(path)[2].task_id == tasks[2].task_id  # stable across loads
    assert tasks[0].metadata == {"level": 1}
    with pytest.raises(KeyError, match="no field 'prompt'"):
        load_tasks(path, prompt_field="prompt")


def test_parquet_and_hf_dataset_on_disk(tmp_path):
    pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{k: v for k, v in r.items() if k != "level"} for r in RECORDS]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "gsm.parquet")
    from_parquet = load_tasks(tmp_path / "gsm.parquet")
    assert [t.prompt for t in from_parquet] == [r["question"] for r in RECORDS]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "gsm_ds"))
    from_hf = load_hf_dataset(str(tmp_path / "gsm_ds"), id_field="id")
    assert [t.task_id for t in from_hf] == [t.task_id for t in from_parquet]


def test_splits_never_overlap_and_are_stable():
    from spo_agents.env import Task

    tasks = [Task(task_id=f"t{i}", prompt=f"p{i}") for i in range(1000)]
    splits = split_tasks(tasks, heldout_fraction=0.2)
    assert splits["train"].disjoint_from(splits["heldout"])
    assert 150 < len(splits["heldout"]) < 250
    grown = split_tasks(tasks + [Task(task_id="new", prompt="new")], heldout_fraction=0.2)
    assert set(splits["heldout"].ids) <= set(grown["heldout"].ids)  # adding tasks moves none


def test_mathverify_env_with_a_gsm8k_file(tmp_path):
    path = tmp_path / "gsm.jsonl"
    write_jsonl(path, RECORDS * 1)
    env = gymnasium.make("spo/MathVerify-v0", dataset_path=str(path), answer_format="gsm8k", heldout_fraction=0.0)
    _, info = env.reset(options={"task_id": "g1"})
    assert env.unwrapped.task.answer == "7"
    assert env.step("so \\boxed{7}")[1] == 1.0
    env.reset(options={"task_id": "g2"})
    assert env.step("\\boxed{26}")[1] == 0.0
