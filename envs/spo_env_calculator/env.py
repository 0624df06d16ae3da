"""spo/Calculator-v0: arithmetic word problems solved with an exact calculator tool."""

from __future__ import annotations

import re

from spo_agents.env import Task, ToolEnv, ToolError, strip_tool_calls, tool
from spo_agents.grading import extract_boxed
from spo_agents.tools.calculator import CalculatorError, evaluate, format_value

from spo_env_calculator.tasks import calculator_splits

SYSTEM_PROMPT = (
    "You solve arithmetic word problems exactly. Use the calculator tool for every computation: "
    '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>. '
    "When you know the result, reply without a tool call and give the final answer as \\boxed{NUMBER}."
)


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (big integers, fractions).

    Args:
        expression: Arithmetic with + - * / // % ** and parentheses, e.g. "123456789 * 987654321 + 5".
    """
    try:
        return format_value(evaluate(expression))
    except CalculatorError as exc:
        raise ToolError(str(exc)) from None


_NUMBER_NOISE = re.compile(r"[\s,$]|\\[,!;: ]|\\text\{[^}]*\}")


def exact_integer_reward(final_reply: str, task: Task) -> float:
    """1.0 if the last boxed answer (outside tool calls) equals the integer answer exactly."""
    boxed = extract_boxed(strip_tool_calls(final_reply))
    if boxed is None:
        return 0.0
    cleaned = _NUMBER_NOISE.sub("", boxed)
    if cleaned.endswith(".0"):
        cleaned = cleaned[:-2]
    return 1.0 if cleaned.lstrip("+") == task.answer else 0.0


class CalculatorEnv(ToolEnv):
    """Multi-turn arithmetic word problems that need exact big-number arithmetic via a calculator tool.

    ## Description
    Each task is a short word problem (products, differences, sums of products, powers) whose
    numbers grow with the difficulty level, so that a small model must use the tool.

    ## Action
    The assistant's text for one turn. Calls look like
    `<tool_call>{"name": "calculator", "arguments": {"expression": "..."}}</tool_call>`.

    ## Observation
    The problem statement at reset; the calculator's output (or an error message) after a turn
    with tool calls.

    ## Tools
    `calculator(expression: str)`: exact arithmetic by a safe AST evaluator (no eval), with
    bounded input length, nesting depth and result size.

    ## Rewards
    1.0 if the last `\\boxed{}` of the final reply (outside tool calls) is exactly the answer,
    else 0.0. Commas and spaces inside the number are ignored.

    ## Episode end
    Terminated when the assistant replies without a tool call; truncated after `max_turns` turns.

    ## Arguments
    `difficulty` (1-3, default 2), `num_tasks` (default 2000), `seed` (task generator seed,
    default 0), `heldout_fraction` (default 0.2), `split` ("train" or "heldout"), `max_turns`
    (default 6), plus every `ToolEnv` argument.

    ## Version history
    - v0: initial release.
    """

    def __init__(self, difficulty: int = 2, num_tasks: int = 2000, seed: int = 0, heldout_fraction: float = 0.2,
                 split: str = "train", max_turns: int = 6, **kwargs):
        super().__init__(
            calculator_splits(num_tasks, difficulty, seed, heldout_fraction),
            tools=[calculator],
            grader=exact_integer_reward,
            split=split,
            system_prompt=kwargs.pop("system_prompt", SYSTEM_PROMPT),
            max_turns=max_turns,
            **kwargs,
        )

    def oracle_action(self) -> str:
        """The optimal next turn: one calculator call, then the boxed result (a scripted policy)."""
        if self.turn == 0:
            expression = self.task.metadata["expression"]
            return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}</tool_call>'
        role, last_observation = self.transcript[-1]
        value = last_observation.split("(")[0].strip() if role == "tool" else self.task.answer
        return f"The result is \\boxed{{{value}}}."
