"""Tasks and where they come from.

A task is one problem with a stable `task_id` (the key of SPO's per-task value tracker, so it
must not change between runs), a prompt, a reference answer and free-form metadata. A
`TaskSet` holds the tasks of one split. Sources: seeded generators in the built-in
environments, JSONL or Parquet files, and Hugging Face `datasets` (local, offline).

Splits never overlap: `split_tasks` assigns each task to train or held-out by a hash of its id,
and `TaskSet.disjoint_from` checks ids and prompts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pydantic


class Task(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)

    task_id: str
    prompt: str
    answer: str = ""
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict)


class TaskSet(Sequence[Task]):
    """An ordered, id-indexed collection of tasks."""

    def __init__(self, tasks: Iterable[Task]):
        self._tasks = list(tasks)
        self._by_id = {task.task_id: task for task in self._tasks}
        if len(self._by_id) != len(self._tasks):
            raise ValueError("duplicate task_id in task set")

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index):  # type: ignore[override]
        return self._tasks[index]

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return [task.task_id for task in self._tasks]

    def get(self, task_id: str) -> Task:
        try:
            return self._by_id[task_id]
        except KeyError:
            raise KeyError(f"unknown task_id {task_id!r} ({len(self)} tasks in this split)") from None

    def sample(self, rng: np.random.Generator) -> Task:
        if not self._tasks:
            raise ValueError("empty task set")
        return self._tasks[int(rng.integers(len(self._tasks)))]

    def disjoint_from(self, other: "TaskSet") -> bool:
        prompts = {task.prompt for task in self._tasks}
        return not (set(self._by_id) & set(other._by_id)) and not any(t.prompt in prompts for t in other)


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_tasks(tasks: Iterable[Task], heldout_fraction: float = 0.2) -> dict[str, TaskSet]:
    """Deterministic train/heldout split by a hash of the task id (stable as the set grows)."""
    train, heldout = [], []
    for task in tasks:
        in_heldout = (stable_hash(task.task_id) % 10_000) < heldout_fraction * 10_000
        (heldout if in_heldout else train).append(task)
    return {"train": TaskSet(train), "heldout": TaskSet(heldout)}


def _message_text(message: Any, index: int) -> tuple[str, str]:
    """(role, text) of one chat message; content may be a string or a list of text parts."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise ValueError(f"record {index}: a conversational field holds messages like "
                         f"{{'role': 'user', 'content': '...'}}, got {message!r:.80}")
    content = message["content"]
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise ValueError(f"record {index}: only text message parts are supported, got {content!r:.80}")
        content = "".join(p["text"] for p in content)
    return str(message["role"]), str(content)


def conversational_prompt(messages: list[Any], index: int = 0) -> tuple[str, str | None]:
    """(user prompt, system prompt or None) of a TRL-style conversational prompt: an optional
    system message, then one user message. A task's prompt is one user turn (the environment
    writes the rest of the conversation), so longer histories are refused rather than flattened."""
    pairs = [_message_text(m, index) for m in messages]
    system = pairs.pop(0)[1] if pairs and pairs[0][0] == "system" else None
    if len(pairs) != 1 or pairs[0][0] != "user":
        roles = [role for role, _ in pairs]
        raise ValueError(f"record {index}: a conversational prompt must be [system,] user; got roles {roles} "
                         "(multi-turn prompts are not supported: a task starts from one user message)")
    return pairs[0][1], system


def _task_from_record(record: dict[str, Any], prompt_field: str, answer_field: str, id_field: str | None,
                      prefix: str, index: int) -> Task:
    if prompt_field not in record:
        raise KeyError(f"record {index} has no field {prompt_field!r} (fields: {sorted(record)})")
    prompt, system = record[prompt_field], None
    if isinstance(prompt, list):  # TRL's conversational format: a list of messages
        prompt, system = conversational_prompt(prompt, index)
    elif not isinstance(prompt, (str, int, float)):
        raise ValueError(f"record {index}: field {prompt_field!r} must be text or a list of messages, "
                         f"got {type(prompt).__name__}")
    prompt = str(prompt)
    answer = record.get(answer_field, "")
    if isinstance(answer, list):  # a conversational completion: the assistant's text is the reference
        answer = "".join(text for role, text in (_message_text(m, index) for m in answer) if role == "assistant")
    if id_field and record.get(id_field) is not None:
        task_id = f"{prefix}{record[id_field]}"
    else:  # content hash: stable across runs and file reorderings
        key = prompt if system is None else f"{system}\x00{prompt}"
        task_id = f"{prefix}{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    metadata = {k: v for k, v in record.items() if k not in (prompt_field, answer_field, id_field)}
    if system is not None:  # ToolEnv uses a task's own system prompt (ToolEnv.system_prompt_for)
        metadata["system_prompt"] = system
    return Task(task_id=task_id, prompt=prompt, answer="" if answer is None else str(answer),
                metadata=json.loads(json.dumps(metadata, default=str)))


def _dedupe(tasks: Iterable[Task]) -> list[Task]:
    seen: dict[str, Task] = {}
    for task in tasks:
        seen.setdefault(task.task_id, task)
    return list(seen.values())


def load_tasks(path: str | Path, prompt_field: str = "question", answer_field: str = "answer",
               id_field: str | None = "id", prefix: str = "") -> list[Task]:
    """Tasks from a local JSONL or Parquet file (GSM8K / DAPO-Math style records).

    `prompt_field` holds text, or TRL's conversational format (a list of messages: an optional
    system message, which becomes the task's `metadata["system_prompt"]`, then one user message).
    """
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional extra `data`

        records = pq.read_table(path).to_pylist()
    else:
        with path.open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
    return _dedupe(
        _task_from_record(r, prompt_field, answer_field, id_field, prefix, i) for i, r in enumerate(records)
    )


def load_hf_dataset(path: str, split: str = "train", prompt_field: str = "question", answer_field: str = "answer",
                    id_field: str | None = None, prefix: str = "", **load_kwargs: Any) -> list[Task]:
    """Tasks from a Hugging Face `datasets` dataset saved on disk or cached locally (offline)."""
    import datasets  # optional extra `data`

    if Path(path).is_dir() and (Path(path) / "dataset_info.json").exists():
        dataset = datasets.load_from_disk(path)
        dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
    else:
        dataset = datasets.load_dataset(path, split=split, **load_kwargs)
    return _dedupe(
        _task_from_record(dict(r), prompt_field, answer_field, id_field, prefix, i) for i, r in enumerate(dataset)
    )
