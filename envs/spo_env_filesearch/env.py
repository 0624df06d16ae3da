"""spo/FileSearch-v0: answer a question by exploring a generated, in-memory file tree."""

from __future__ import annotations

import re
from collections import OrderedDict

from spo_agents.env import Task, Tool, ToolEnv, extract_last_boxed

from spo_env_filesearch.oracle import next_action
from spo_env_filesearch.tasks import FileSearchConfig, filesearch_splits
from spo_env_filesearch.tree import VirtualTree, tree_tools
from spo_env_filesearch.world import build_files

SYSTEM_PROMPT = (
    "You answer questions about a read-only snapshot of configuration files. Explore it with the tools "
    "ls, cat, grep and find, one step at a time, e.g. "
    '<tool_call>{"name": "cat", "arguments": {"path": "/etc/services/web.conf"}}</tool_call>. '
    "Follow includes and variables until you find the setting that applies. When you know it, reply "
    "without a tool call and give the value exactly as written in the files as \\boxed{VALUE}."
)
TREE_CACHE_SIZE = 8
_WRAPPER = re.compile(r"^\\(?:text|texttt|mathrm|mathtt)\{(.*)\}$", re.DOTALL)


def normalize_answer(text: str) -> str:
    """Strip whitespace, one `\\text{}`-style wrapper, and surrounding backticks or quotes."""
    text = text.strip()
    wrapped = _WRAPPER.match(text)
    if wrapped:
        text = wrapped.group(1).strip()
    return text.strip("`'\"").strip()


def exact_answer_reward(final_reply: str, task: Task) -> float:
    """1.0 if the last boxed answer (outside tool calls) is exactly the reference value."""
    boxed = extract_last_boxed(final_reply)
    return 1.0 if boxed is not None and normalize_answer(boxed) == task.answer else 0.0


class FileSearchEnv(ToolEnv):
    """Questions answered by searching a generated in-memory file tree (2 to 49 turns per episode).

    ## Description
    Each task is a question about one service's setting (`listen_port`, `max_connections`,
    `db_host`, `cache_ttl_s`) in a read-only, in-memory snapshot of configuration files (no real
    file system access). The answer is at the end of a chain of files: includes, `${VAR}`
    references defined in env files, files to be found by name, profile directories whose
    highest-numbered profile is active. Distractor services have chains of the same shape with
    other values, and filler files hold decoys. The number of tool calls an optimal searcher
    needs is drawn per task from a discretised Pareto distribution: most tasks take 1-4 calls,
    a few take 40 or more.

    ## Action
    The assistant's text for one turn, with tool calls such as
    `<tool_call>{"name": "grep", "arguments": {"pattern": "NET_CFG_1A2B=", "path": "/etc/env.d"}}</tool_call>`.

    ## Observation
    The question at reset; the tools' output (or `Error: ...`) after a turn with tool calls,
    truncated to `max_tool_output_chars` characters (head and tail kept).

    ## Tools
    `ls(path)`, `cat(path)`, `grep(pattern, path)` (literal substring, not a regex; recursive;
    lines `file:line:text`; at most 40 matches), `find(name, path)` (shell wildcards on file
    names; at most 40 matches). Paths are normalised inside the virtual root.

    ## Rewards
    1.0 if the last `\\boxed{}` of the final reply (outside tool calls) is exactly the value
    (surrounding spaces, backticks, quotes or one `\\text{}` are ignored), else 0.0.

    ## Episode end
    Terminated when the assistant replies without a tool call; truncated after `max_turns`
    turns (reward 0).

    ## Arguments
    `num_tasks` (2000), `seed` (0), `heldout_fraction` (0.2), `split` ("train"/"heldout"),
    `num_files` (120 filler files), `depth` (4 directory levels), `distractors` (10 services),
    `min_calls` (1) and `max_calls` (48) clip the per-task search budget, `tail_index` (1.0;
    smaller is heavier-tailed), `max_turns` (64), `max_tool_output_chars` (2000), plus every
    `ToolEnv` argument.

    ## Version history
    - v0: initial release.
    """

    def __init__(self, num_tasks: int = 2000, seed: int = 0, heldout_fraction: float = 0.2, split: str = "train",
                 num_files: int = 120, depth: int = 4, distractors: int = 10, min_calls: int = 1,
                 max_calls: int = 48, tail_index: float = 1.0, max_turns: int = 64,
                 max_tool_output_chars: int = 2000, **kwargs):
        config = FileSearchConfig(num_files=num_files, depth=depth, distractors=distractors, min_calls=min_calls,
                                  max_calls=max_calls, tail_index=tail_index)
        super().__init__(
            filesearch_splits(num_tasks, seed, heldout_fraction, config),
            grader=exact_answer_reward,
            split=split,
            system_prompt=kwargs.pop("system_prompt", SYSTEM_PROMPT),
            max_turns=max_turns,
            max_tool_output_chars=max_tool_output_chars,
            **kwargs,
        )
        self._trees: OrderedDict[str, VirtualTree] = OrderedDict()

    def tree_for(self, task: Task) -> VirtualTree:
        """The task's file tree (rebuilt deterministically; the last few are cached)."""
        tree = self._trees.pop(task.task_id, None) or VirtualTree(build_files(task))
        self._trees[task.task_id] = tree
        while len(self._trees) > TREE_CACHE_SIZE:
            self._trees.popitem(last=False)
        return tree

    def tools_for(self, task: Task) -> list[Tool]:
        return tree_tools(self.tree_for(task))

    def oracle_action(self) -> str:
        """The optimal next turn: follow the chain with one ls/cat/grep/find call per turn, then answer."""
        return next_action(self.transcript, self.task.metadata["attribute"])
