"""spo/ChainCalc-v0: a calculation revealed one step at a time; every intermediate result is reported.

Unlike the other built-in environments, a reply without a tool call does not always end the
episode: it is the report of the current step, and a correct report is answered with the next
step as a user message (`reply_turn` is overridden). A wrong or missing report ends the
episode, because every later step builds on the value that was just reported wrongly.
"""

from __future__ import annotations

import json
import re
from typing import Any, SupportsFloat

from spo_agents.env import ToolEnv, ToolError, extract_last_boxed, tool
from spo_agents.tools import CalculatorError, evaluate, format_value

from spo_env_chaincalc.tasks import SYMBOLS, ChainConfig, chain_values, chaincalc_splits, step_text

SYSTEM_PROMPT = (
    "You carry out a calculation that is revealed one step at a time. Use the calculator for every step: "
    '<tool_call>{"name": "calculator", "arguments": {"expression": "48213 * 9127"}}</tool_call>. '
    "Then reply without a tool call and give the result of the step as \\boxed{NUMBER}; the next step follows."
)
MAX_REPORT_CHARS = 200
_REPORT_NOISE = re.compile(r"[\s,$]|\\[,!;: ]|\{,\}")
_INTEGER = re.compile(r"[+-]?\d+")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (big integers, fractions).

    Args:
        expression: Arithmetic with + - * / // % ** and parentheses, e.g. "48213 * 9127 - 7781".
    """
    try:
        return format_value(evaluate(expression))
    except CalculatorError as exc:
        raise ToolError(str(exc)) from None


def reported_value(reply: str) -> int | None:
    """The integer in the last boxed answer outside tool calls (commas, spaces, `$`, `.0` ignored)."""
    boxed = extract_last_boxed(reply)
    if boxed is None or len(boxed) > MAX_REPORT_CHARS:
        return None
    cleaned = _REPORT_NOISE.sub("", boxed)
    cleaned = cleaned[:-2] if cleaned.endswith(".0") else cleaned
    return int(cleaned) if _INTEGER.fullmatch(cleaned) else None


class ChainCalcEnv(ToolEnv):
    """A calculation revealed one step at a time (1 to 64 steps, 2 to 128 turns per episode).

    ## Description
    Step 1 gives a start number and an operation ("start with 48213 and multiply it by 9127");
    each later step applies an operation to the previous result ("subtract 7781 from the
    previous result"). After each step the assistant uses the calculator and reports the result;
    a correct report reveals the next step. Chain lengths are drawn per task from a discretised
    Pareto distribution between `min_steps` and `max_steps` (1 and 64): half of the chains
    have one step, a few percent have 64, so episodes range from 2 to 128 turns.

    ## Action
    The assistant's text for one turn: a calculator call, or a report (a reply without a tool
    call whose last `\\boxed{}` holds the step's integer result).

    ## Observation
    The task description and step 1 at reset; the calculator's output after a tool turn;
    "Correct." and the next step (also in `info["messages"]` as a user message) after a
    correct report.

    ## Tools
    `calculator(expression: str)`: exact arithmetic by a safe AST evaluator (no eval).

    ## Rewards
    Binary (default): 1.0 when the report of the last step is correct (which requires every
    report to be correct), else 0.0. With `partial_credit=True` the reward is the fraction of
    steps reported correctly before the episode ended (a non-binary reward in [0, 1], which
    SPO's value tracker handles through its EMA form). The reward comes at the episode's end;
    every other step gives 0.0. `info["steps_correct"]` and `info["steps_total"]` follow a report.

    ## Episode end
    Terminated after the correct report of the last step, or at the first wrong or missing
    report (a reply without a tool call and without the right boxed integer). Truncated after
    `max_turns` turns (reward 0, or the fraction so far with `partial_credit`).

    ## Arguments
    `num_tasks` (2000), `seed` (0), `heldout_fraction` (0.2), `split` ("train"/"heldout"),
    `digits` (4, operand size), `min_steps` (1), `max_steps` (64), `tail_index` (1.0; smaller is
    heavier-tailed), `partial_credit` (False), `max_turns` (default `3 * max_steps + 8`, enough
    for two turns per step and a few retries), `instructions` (True; False drops the paragraph of
    instructions from the first message, which then is only "Step 1 of N: ...": for small models
    trained from scratch, which learn the protocol from demonstrations; the tasks and splits are
    the same either way), plus every `ToolEnv` argument.

    ## Version history
    - v0: initial release.
    """

    def __init__(self, num_tasks: int = 2000, seed: int = 0, heldout_fraction: float = 0.2, split: str = "train",
                 digits: int = 4, min_steps: int = 1, max_steps: int = 64, tail_index: float = 1.0,
                 partial_credit: bool = False, max_turns: int | None = None, instructions: bool = True, **kwargs):
        config = ChainConfig(digits=digits, min_steps=min_steps, max_steps=max_steps, tail_index=tail_index)
        super().__init__(
            chaincalc_splits(num_tasks, seed, heldout_fraction, config, instructions),
            tools=[calculator],
            split=split,
            system_prompt=kwargs.pop("system_prompt", SYSTEM_PROMPT),
            max_turns=3 * max_steps + 8 if max_turns is None else max_turns,
            **kwargs,
        )
        self.partial_credit = partial_credit
        self._steps: list[list] = []
        self._values: list[int] = []
        self._done = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        observation, info = super().reset(seed=seed, options=options)
        self._steps = self.task.metadata["steps"]
        self._values = chain_values(self.task.metadata["start"], self._steps)
        self._done = 0
        return observation, info

    def episode_reward(self) -> float:
        """The reward of the episode as it stands (steps reported correctly so far)."""
        if self.partial_credit:
            return self._done / len(self._steps)
        return 1.0 if self._done == len(self._steps) else 0.0

    def reply_turn(self, reply: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Check the report of the current step; reveal the next step or end the episode."""
        if self._done >= len(self._steps):  # stepping after the end: nothing left to check
            return "", 0.0, True, {}
        correct = reported_value(reply) == self._values[self._done]
        if correct:
            self._done += 1
        progress = {"steps_correct": self._done, "steps_total": len(self._steps)}
        if not correct:
            observation = f"Step {self._done + 1} is incorrect; the chain ends here."
        elif self._done == len(self._steps):
            observation = "Correct. That was the last step."
        else:
            observation = f"Correct.\n\n{step_text(self._done, self._steps)}"
        finished = not correct or self._done == len(self._steps)
        progress["messages"] = [{"role": "user", "content": observation}]
        return observation, self.episode_reward() if finished else 0.0, finished, progress

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = super().step(action)
        if truncated and self.partial_credit:
            reward = self.episode_reward()
        return observation, reward, terminated, truncated, info

    def oracle_action(self) -> str:
        """The optimal next turn: a calculator call for the current step, then its boxed result."""
        role, last = self.transcript[-1]
        if role == "tool":
            return f"The result of step {self._done + 1} is \\boxed{{{last.split('(')[0].strip()}}}."
        op, operand = self._steps[self._done]
        previous = self._values[self._done - 1] if self._done else self.task.metadata["start"]
        expression = f"{previous} {SYMBOLS[op]} {operand}"
        return f"<tool_call>{json.dumps({'name': 'calculator', 'arguments': {'expression': expression}})}</tool_call>"
