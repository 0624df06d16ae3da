"""spo/ToolMath-v0: the SPO paper's tool-integrated math setting (a python tool, a boxed answer)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Mapping

from spo_agents.env import Task, load_tasks, split_tasks, strip_tool_calls
from spo_agents.grading import shared_math_grader
from spo_agents.sandbox import SandboxConfig
from spo_agents.env.sandbox_tool import SandboxToolEnv

from spo_env_toolmath.problems import bundled_problems

SYSTEM_PROMPT = (
    "Solve the math problem. You can run Python code with the python tool: "
    '<tool_call>{"name": "python", "arguments": {"code": "print(2 ** 100)"}}</tool_call>; it returns what '
    "the code prints. Use it for any computation. When you are done, reply without a tool call and put the "
    "final answer in \\boxed{}."
)
# answer_format -> (default prompt field, default answer field)
ANSWER_FORMATS = {"plain": ("question", "answer"), "gsm8k": ("question", "answer"), "dapo": ("prompt", "reward_model")}


def gsm8k_answer(answer: str) -> str:
    """GSM8K references end with '#### 42'; keep what follows the marker."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "") if "####" in answer else answer


def _python_value(text: str) -> Any:
    """A field that held a list or dict comes back from `load_tasks` as its Python repr."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def dapo_task(task: Task) -> Task:
    """DAPO-Math records: `prompt` is a list of chat messages, `reward_model.ground_truth` the answer."""
    prompt, answer = _python_value(task.prompt), _python_value(task.answer)
    if isinstance(prompt, list):
        user = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = user[-1] if user else task.prompt
    if isinstance(answer, dict):
        answer = answer.get("ground_truth", "")
    return task.model_copy(update={"prompt": str(prompt), "answer": str(answer)})


def load_math_tasks(path: str | Path, answer_format: str = "plain", prompt_field: str | None = None,
                    answer_field: str | None = None, id_field: str | None = "id") -> list[Task]:
    """Math problems from a local JSONL or Parquet file.

    `answer_format`: "plain" (question/answer fields), "gsm8k" (keep what follows `####`), or
    "dapo" (DAPO-Math-17k: a chat-message `prompt` and `reward_model.ground_truth`).
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {sorted(ANSWER_FORMATS)}, got {answer_format!r}")
    default_prompt, default_answer = ANSWER_FORMATS[answer_format]
    tasks = load_tasks(path, prompt_field or default_prompt, answer_field or default_answer, id_field)
    if answer_format == "gsm8k":
        tasks = [t.model_copy(update={"answer": gsm8k_answer(t.answer)}) for t in tasks]
    elif answer_format == "dapo":
        tasks = [dapo_task(t) for t in tasks]
    return [t for t in tasks if t.answer.strip()]


def math_reward(final_reply: str, task: Task) -> float:
    """1.0 if the last boxed answer outside tool calls, tool output and code is equivalent to the reference."""
    return shared_math_grader().grade(strip_tool_calls(final_reply), task.answer)


class ToolMathEnv(SandboxToolEnv):
    """Tool-integrated math: a sandboxed python tool for up to 8 turns, then a verified boxed answer.

    ## Description
    The SPO paper's tool-integrated reasoning setting. A math problem is posed; the assistant
    may run Python for computation and then gives the final answer in `\\boxed{}`. The bundled
    set holds 400 generated problems that reward computing (modular powers, power sums,
    recurrences, digit sums of huge numbers, binomials, inclusion-exclusion counts, divisor
    counts and sums, primes, partitions, lattice solutions, totient sums, Collatz lengths).
    User data sets (GSM8K / DAPO-Math style JSONL or Parquet, local files) load with
    `dataset_path`.

    ## Action
    The assistant's text for one turn: tool calls
    `<tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>`, or the final reply.

    ## Observation
    The problem at reset; after a tool turn, what the code printed (stdout, `[stderr]`, then one
    bracketed line on errors, timeouts or limits), head and tail kept beyond
    `max_tool_output_chars` (2000); an empty string after the final reply.

    ## Tools
    `python(code: str)`: runs the code in the sandbox (spo_agents.sandbox). Stateless by default
    (a fresh interpreter per call); `stateful=True` keeps one interpreter per episode.

    ## Rewards
    1.0 if the last `\\boxed{}` of the final reply is equivalent to the reference (the shared
    math grader: math-verify in a killable worker, or the fallback normaliser), else 0.0. Boxes
    inside tool calls, copied tool output (`<tool_response>`) and fenced code do not count.

    ## Episode end
    Terminated when the assistant replies without a tool call; truncated after `max_turns` (9:
    up to 8 tool turns and the answer), or at once with `info["sandbox_error"]` and reward 0
    when the sandbox itself fails.

    ## Arguments
    `num_problems` (400), `seed` (0), `heldout_fraction` (0.2), `split`, `dataset_path`,
    `answer_format` ("plain", "gsm8k" or "dapo"), `prompt_field` and `answer_field` (defaults
    per format: question/answer, or prompt/reward_model for dapo), `id_field` ("id"),
    `sandbox` (a SandboxConfig or a dict of its fields), `stateful` (False), `max_turns` (9),
    `max_tool_output_chars` (2000), plus every `ToolEnv` argument.

    ## Version history
    - v0: initial release.
    """

    def __init__(self, num_problems: int = 400, seed: int = 0, heldout_fraction: float = 0.2, split: str = "train",
                 dataset_path: str | Path | None = None, answer_format: str = "plain", prompt_field: str | None = None,
                 answer_field: str | None = None, id_field: str | None = "id",
                 sandbox: SandboxConfig | Mapping[str, Any] | None = None, stateful: bool = False,
                 max_turns: int = 9, max_tool_output_chars: int = 2000, **kwargs):
        if dataset_path is None:
            tasks = bundled_problems(num_problems, seed)
        else:
            tasks = load_math_tasks(dataset_path, answer_format, prompt_field, answer_field, id_field)
        super().__init__(split_tasks(tasks, heldout_fraction), grader=math_reward, split=split, sandbox=sandbox,
                         stateful=stateful, system_prompt=kwargs.pop("system_prompt", SYSTEM_PROMPT),
                         max_turns=max_turns, max_tool_output_chars=max_tool_output_chars, **kwargs)

    def oracle_action(self) -> str:
        """Compute with one python call, then box what it printed (the reference without code)."""
        code = self.task.metadata.get("code")
        if self.turn == 0 and code:
            call = {"name": "python", "arguments": {"code": f"{code}\nprint(result)"}}
            return f"Let me compute it.\n<tool_call>{json.dumps(call)}</tool_call>"
        role, last = self.transcript[-1]
        value = last.strip() if role == "tool" and last.strip().lstrip("-").isdigit() else self.task.answer
        return f"The answer is \\boxed{{{value}}}."
