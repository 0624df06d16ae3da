"""Gymnasium environments whose action is the assistant's text and whose observation is text.

`TextEnv` is the minimal base (text spaces, ANSI rendering of a transcript). `ToolEnv` is the
multi-turn tool-use environment the built-in environments are made of: a task set, a list of
tools and a grader composed together, instead of one subclass per task.

Episode convention of `ToolEnv` (all built-in environments follow it):
- `reset(seed=..., options={"task_id": ...})` picks a task (sampled from the split when no id is
  given) and returns the task prompt; `info["task_id"]` is the id, `info["tools"]` the tool
  schemas (OpenAI function-calling JSON), `info["system_prompt"]` the suggested system prompt
  ("" for none): the task's own (`metadata["system_prompt"]`, e.g. from a conversational
  dataset row), else the env's `system_prompt`, else `DEFAULT_SYSTEM_PROMPT` (how to call
  tools, answer in `\\boxed{}`) only when the episode has tools; a tool-less env gets none.
- A turn whose text contains tool calls runs them (several per turn, capped); the observation
  is the tool output, `info["messages"]` the same as chat messages (role "tool"), reward 0.
- A turn without a tool call is the final reply: the reward grades it (built-in graders use
  the last `\\boxed{...}` outside tool-call blocks), `terminated=True`.
- Reaching `max_turns` without a final reply ends the episode with `truncated=True`, reward 0.
- `step` never raises because of what the model wrote: malformed calls, unknown tools, bad
  arguments, failing tools and failing graders all become error text or a zero reward.
Wall-clock values never go into `info` (they would break `check_env`'s determinism check);
the rollout engine measures time itself.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence, SupportsFloat

import gymnasium

from spo_agents.env.parsing import ParsedAction, parse_tool_calls
from spo_agents.env.spaces import UnicodeText
from spo_agents.env.tasks import Task, TaskSet
from spo_agents.env.tools import Tool, ToolError, as_tool

Grader = Callable[[str, Task], float]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves problems step by step. You may call the tools "
    'described to you with <tool_call>{"name": ..., "arguments": {...}}</tool_call>; their output '
    "comes back in the next message. When you are done, reply without a tool call and put the final "
    "answer in \\boxed{}."
)


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and tail of `text` within `limit` characters, marking the cut."""
    if len(text) <= limit:
        return text
    marker = f"\n...[{len(text) - limit} characters truncated]...\n"
    keep = max(limit - len(marker), 0)
    return text[: keep - keep // 2] + marker + (text[-(keep // 2):] if keep // 2 else "")


class TextEnv(gymnasium.Env[str, str]):
    """Minimal text environment: Unicode text spaces and an ANSI transcript renderer.

    Environments pickle and deep-copy (to worker processes, Ray actors, `copy.deepcopy`):
    attributes named in `transient_attributes` hold process-bound handles (sandbox sessions,
    pools, sockets, locks) and are left out, as None; a subclass that names one recreates it
    on first use. Everything else (tasks, tools, the RNG, the episode so far) is kept.
    """

    metadata = {"render_modes": ["ansi"]}
    transient_attributes: tuple[str, ...] = ()

    def __init__(self, render_mode: str | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()
        self.transcript: list[tuple[str, str]] = []

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{role}] {text}" for role, text in self.transcript)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self.transient_attributes:
            if name in state:
                state[name] = None
        return state


class ToolEnv(TextEnv):
    """A multi-turn tool-use environment composed of tasks, tools and a grader."""

    def __init__(
        self,
        tasks: TaskSet | Mapping[str, TaskSet | Sequence[Task]] | Sequence[Task],
        tools: Iterable[Tool | Callable[..., Any]] = (),
        grader: Grader | None = None,
        *,
        split: str = "train",
        system_prompt: str | None = None,
        max_turns: int = 8,
        max_calls_per_turn: int = 8,
        max_call_chars: int = 100_000,
        max_tool_output_chars: int = 4_000,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if isinstance(tasks, Mapping):
            self.splits = {name: t if isinstance(t, TaskSet) else TaskSet(t) for name, t in tasks.items()}
        else:
            self.splits = {split: tasks if isinstance(tasks, TaskSet) else TaskSet(tasks)}
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; available: {sorted(self.splits)}")
        self.split = split
        self.tools = [as_tool(t) for t in tools]
        self.grader = grader
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_calls_per_turn = max_calls_per_turn
        self.max_call_chars = max_call_chars
        self.max_tool_output_chars = max_tool_output_chars
        self.task: Task | None = None
        self.turn = 0
        self._episode_tools: dict[str, Tool] = {}

    # ----- hooks for subclasses -------------------------------------------------------------
    @property
    def tasks(self) -> TaskSet:
        """The tasks of the active split."""
        return self.splits[self.split]

    def tools_for(self, task: Task) -> list[Tool]:
        """Tools available in an episode of `task` (override for per-task state)."""
        return self.tools

    def prompt_for(self, task: Task) -> str:
        """The first user message of an episode."""
        return task.prompt

    def system_prompt_for(self, task: Task, tools: Sequence[Tool]) -> str:
        """The system prompt of an episode ("" for none). The task's own wins, then the env's;
        with neither, `DEFAULT_SYSTEM_PROMPT` (tool-call syntax and `\\boxed{}` answers) only when
        the episode has tools: it would tell a tool-less env's model about tools it lacks."""
        own = task.metadata.get("system_prompt")
        if isinstance(own, str):
            return own
        if self.system_prompt is not None:
            return self.system_prompt
        return DEFAULT_SYSTEM_PROMPT if tools else ""

    def grade(self, final_reply: str, task: Task) -> float:
        """Reward of the final reply; the default uses the `grader` given at construction."""
        if self.grader is None:
            raise TypeError(f"{type(self).__name__} needs a grader or an overridden grade()")
        return float(self.grader(final_reply, task))

    def reply_turn(self, reply: str) -> tuple[str, float, bool, dict[str, Any]]:
        """A turn without tool calls: (observation, reward, terminated, extra info).

        The default grades the reply and ends the episode. Environments that continue after a
        plain reply (e.g. revealing the next step of a chain) override this.
        """
        try:
            reward = self.grade(reply, self.task)
        except Exception as exc:  # a broken grader must not take the episode or the run down
            return "", 0.0, True, {"grader_error": f"{type(exc).__name__}: {exc}"}
        return "", reward, True, {}

    def end_episode(self) -> None:
        """Release per-episode resources (called on reset and close)."""

    # ----- gymnasium API --------------------------------------------------------------------
    def find_task(self, task_id: str) -> Task:
        for task_set in self.splits.values():
            if task_id in task_set:
                return task_set.get(task_id)
        raise KeyError(f"unknown task_id {task_id!r}")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self.end_episode()
        options = options or {}
        if options.get("task_id") is not None:
            self.task = self.find_task(str(options["task_id"]))
        else:
            self.task = self.tasks.sample(self.np_random)
        self.turn = 0
        self._episode_tools = {t.name: t for t in self.tools_for(self.task)}
        observation = self.prompt_for(self.task)
        system_prompt = self.system_prompt_for(self.task, list(self._episode_tools.values()))
        self.transcript = ([("system", system_prompt)] if system_prompt else []) + [("user", observation)]
        info = {
            "task_id": self.task.task_id,
            "tools": [t.schema for t in self._episode_tools.values()],
            "system_prompt": system_prompt,
        }
        return observation, info

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        text = action if isinstance(action, str) else str(action)
        self.turn += 1
        self.transcript.append(("assistant", text))
        parsed = parse_tool_calls(text, self.max_calls_per_turn, self.max_call_chars)
        info: dict[str, Any] = {"task_id": self.task.task_id, "turn": self.turn}
        if parsed.has_tool_calls and self._episode_tools:
            messages = self.run_tool_calls(parsed)
            observation = "\n\n".join(m["content"] for m in messages)
            reward, terminated = 0.0, False
            info.update(messages=messages, tool_calls=len(parsed.calls), tool_errors=len(parsed.errors))
        else:
            observation, reward, terminated, extra = self.reply_turn(text)
            info.update(extra)
            info.setdefault("messages", [{"role": "user", "content": observation}] if observation else [])
        truncated = not terminated and self.turn >= self.max_turns
        if observation:
            self.transcript.append(("tool" if parsed.has_tool_calls else "user", observation))
        if terminated or truncated:
            self.end_episode()
        return observation, float(reward), terminated, truncated, info

    def close(self) -> None:
        self.end_episode()
        super().close()

    # ----- tool execution -------------------------------------------------------------------
    def run_tool_calls(self, parsed: ParsedAction) -> list[dict[str, str]]:
        """Run valid calls and turn every call (valid or not) into a tool message, in order."""
        results: dict[int, tuple[str, str]] = {e.index: ("error", f"Error: {e.message}") for e in parsed.errors}
        valid_indices = [i for i in range(len(parsed.calls) + len(parsed.errors)) if i not in results]
        for index, call in zip(valid_indices, parsed.calls):
            results[index] = (call.name, self.run_tool(call.name, call.arguments))
        return [
            {"role": "tool", "name": name, "content": truncate_middle(content, self.max_tool_output_chars)}
            for _, (name, content) in sorted(results.items())
        ]

    def run_tool(self, name: str, arguments: dict[str, Any]) -> str:
        tool = self._episode_tools.get(name)
        if tool is None:
            return f"Error: unknown tool {name!r}; available tools: {', '.join(sorted(self._episode_tools))}"
        try:
            return tool(arguments)
        except ToolError as exc:
            return f"Error: {exc}"
        except Exception as exc:  # tool bugs are the environment author's, not the model's; still no crash
            return f"Error: tool {name!r} failed: {type(exc).__name__}: {exc}"

    def describe(self) -> dict[str, Any]:
        """Summary used by `spo-agents envs`."""
        return {
            "tools": [t.name for t in self.tools_for(self.tasks[0])] if len(self.tasks) else [t.name for t in self.tools],
            "splits": {name: len(ts) for name, ts in self.splits.items()},
            "max_turns": self.max_turns,
        }

