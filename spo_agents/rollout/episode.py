"""Episode data: what one multi-turn interaction produced, token for token.

Why this exists: RL on tool-calling agents goes wrong quietly when the training sequence is not
the sequence the policy saw. Re-rendering a conversation through a chat template and
re-tokenising it can merge tokens differently, drop `<think>` blocks (Qwen3) or reformat tool
calls, and the behaviour log-probs then belong to other tokens (PEERS.md item 2). So a Turn keeps
the prompt-side ids that were appended before the completion, the completion ids exactly as
sampled, and one behaviour log-prob per sampled token; `Episode.training_view()` concatenates
them without ever touching text.

Layout of one episode as the policy saw it:

    turn 0: prompt_ids = rendered first prompt (system, tools, user, assistant header)
            completion_ids = sampled
    turn k: prompt_ids = close of turn k-1 (if not sampled) + observation + next assistant header
            completion_ids = sampled

Serialisation is JSON Lines, one episode per line, lossless: Python's float repr round-trips
every finite double exactly. `append_episode_log` flushes and fsyncs each line so a killed
trainer loses no finished episode. What this module leaves out: advantages and any learner
state (the learner derives those from episodes), and how episodes are produced (the engine).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from spo_agents.backends.base import FinishReason

__all__ = [
    "FinishReason",
    "Turn",
    "Episode",
    "TrainingSample",
    "read_episode_log",
    "iter_episode_log",
    "append_episode_log",
]

_SCHEMA_VERSION = 1


@dataclass
class Turn:
    """One policy call and the environment's answer to it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    policy_version: int
    completion_text: str = ""
    observation: str | None = None
    reward: float = 0.0
    policy_seconds: float = 0.0
    env_seconds: float = 0.0

    def __post_init__(self) -> None:
        if len(self.completion_ids) != len(self.logprobs):
            raise ValueError(
                f"a turn needs one log-prob per completion token: {len(self.completion_ids)} tokens, "
                f"{len(self.logprobs)} log-probs"
            )
        self.finish_reason = FinishReason(self.finish_reason)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["finish_reason"] = self.finish_reason.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Turn":
        return cls(
            prompt_ids=[int(t) for t in data["prompt_ids"]],
            completion_ids=[int(t) for t in data["completion_ids"]],
            logprobs=[float(x) for x in data["logprobs"]],
            finish_reason=FinishReason(data["finish_reason"]),
            policy_version=int(data["policy_version"]),
            completion_text=data.get("completion_text", ""),
            observation=data.get("observation"),
            reward=float(data.get("reward", 0.0)),
            policy_seconds=float(data.get("policy_seconds", 0.0)),
            env_seconds=float(data.get("env_seconds", 0.0)),
        )


@dataclass
class TrainingSample:
    """One episode as a single token sequence for the learner.

    `loss_mask[i] == 1` exactly where `token_ids[i]` was sampled by the policy;
    `behaviour_logprobs[i]` is that token's log-prob at generation time (0.0 where the mask is
    0). All three lists have the same length. The model's logits at position i-1 predict
    token i, so a learner shifts by one when it gathers its own log-probs.
    """

    token_ids: list[int]
    loss_mask: list[int]
    behaviour_logprobs: list[float]

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_sampled_tokens(self) -> int:
        return sum(self.loss_mask)


@dataclass
class Episode:
    """A finished (or failed) multi-turn interaction of one slot with one task."""

    env_id: str
    task_id: str
    turns: list[Turn] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    error: str | None = None
    slot: int = -1
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def reward(self) -> float:
        """Sum of the per-turn rewards."""
        return float(sum(turn.reward for turn in self.turns))

    @property
    def policy_versions(self) -> list[int]:
        """The distinct policy versions that generated this episode, in order of first use."""
        return list(dict.fromkeys(turn.policy_version for turn in self.turns))

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(turn.completion_ids) for turn in self.turns)

    @property
    def num_tokens(self) -> int:
        return sum(len(turn.prompt_ids) + len(turn.completion_ids) for turn in self.turns)

    @property
    def policy_seconds(self) -> float:
        return float(sum(turn.policy_seconds for turn in self.turns))

    @property
    def env_seconds(self) -> float:
        return float(sum(turn.env_seconds for turn in self.turns))

    def training_view(self) -> TrainingSample:
        """Concatenate the turns into one sequence, masking everything the policy did not sample."""
        token_ids: list[int] = []
        loss_mask: list[int] = []
        behaviour_logprobs: list[float] = []
        for turn in self.turns:
            token_ids.extend(turn.prompt_ids)
            loss_mask.extend([0] * len(turn.prompt_ids))
            behaviour_logprobs.extend([0.0] * len(turn.prompt_ids))
            token_ids.extend(turn.completion_ids)
            loss_mask.extend([1] * len(turn.completion_ids))
            behaviour_logprobs.extend(turn.logprobs)
        return TrainingSample(token_ids, loss_mask, behaviour_logprobs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": _SCHEMA_VERSION,
            "env_id": self.env_id,
            "task_id": self.task_id,
            "turns": [turn.to_dict() for turn in self.turns],
            "terminated": self.terminated,
            "truncated": self.truncated,
            "error": self.error,
            "slot": self.slot,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Episode":
        schema = data.get("schema", _SCHEMA_VERSION)
        if schema != _SCHEMA_VERSION:
            raise ValueError(f"unsupported episode schema {schema} (this build reads {_SCHEMA_VERSION})")
        return cls(
            env_id=data["env_id"],
            task_id=str(data["task_id"]),
            turns=[Turn.from_dict(t) for t in data["turns"]],
            terminated=bool(data.get("terminated", False)),
            truncated=bool(data.get("truncated", False)),
            error=data.get("error"),
            slot=int(data.get("slot", -1)),
            started_at=float(data.get("started_at", 0.0)),
            finished_at=float(data.get("finished_at", 0.0)),
        )

    def to_json(self) -> str:
        """One line of JSON (no newline inside), lossless for ids and floats."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "Episode":
        return cls.from_dict(json.loads(line))


def append_episode_log(path: str | os.PathLike[str], episode: Episode) -> None:
    """Append one episode as a JSON line, then flush and fsync so it survives a killed process."""
    line = episode.to_json() + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def iter_episode_log(path: str | os.PathLike[str]) -> Iterator[Episode]:
    """Yield the episodes of a JSONL log in order.

    A final line without its newline is the trace of a process killed mid-write; it is skipped.
    Any other malformed line raises, naming the line number.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_torn_tail = number == len(lines) and not line.endswith("\n")
        try:
            episode = Episode.from_json(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if is_torn_tail:
                return
            raise ValueError(f"{path}:{number}: not a valid episode line: {exc}") from exc
        yield episode


def read_episode_log(path: str | os.PathLike[str]) -> list[Episode]:
    """All episodes of a JSONL log (see `iter_episode_log`)."""
    return list(iter_episode_log(path))
