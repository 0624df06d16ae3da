"""Seeded ChainCalc tasks: a start number and a chain of operations revealed one at a time.

Task `chain-{index:05d}` is drawn from `numpy.random.default_rng([seed, index])`, so an id
always means the same chain. The chain length is a discretised Pareto draw,
`floor((1 - U) ** (-1 / tail_index))` clipped to `[min_steps, max_steps]` (P(length >= k) is
about k ** -tail_index): half of the chains have one step, a few percent reach 64.

Operations are whole-number add, subtract, multiply, integer-divide and remainder with
operands of `digits` digits. Values stay positive (nothing is subtracted that would reach zero
or below, no remainder of zero), so integer division and remainder mean the same in every
convention, and they stay below `4 * digits` digits (values above `3 * digits` digits are
divided or reduced next), so a report never needs more than a few dozen characters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spo_agents.env import Task, split_tasks

OPERATIONS = ("add", "sub", "mul", "div", "mod")
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "//", "mod": "%"}
STEP_TEXT = {
    "add": "add {b} to the previous result",
    "sub": "subtract {b} from the previous result",
    "mul": "multiply the previous result by {b}",
    "div": "divide the previous result by {b}, discarding the remainder (integer division)",
    "mod": "take the remainder of the previous result divided by {b}",
}
FIRST_STEP_TEXT = {
    "add": "start with {a} and add {b} to it",
    "sub": "start with {a} and subtract {b} from it",
    "mul": "start with {a} and multiply it by {b}",
    "div": "start with {a} and divide it by {b}, discarding the remainder (integer division)",
    "mod": "start with {a} and take the remainder of it divided by {b}",
}


@dataclass(frozen=True)
class ChainConfig:
    """Difficulty knobs (environment arguments of the same names)."""

    digits: int = 4  # digits of each operand
    min_steps: int = 1
    max_steps: int = 64
    tail_index: float = 1.0  # Pareto shape of the chain length: smaller means a heavier tail

    def __post_init__(self):
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not 1 <= self.digits <= 30 or self.tail_index <= 0:
            raise ValueError("digits must be 1-30 and tail_index > 0")


def apply(op: str, value: int, operand: int) -> int:
    if op == "add":
        return value + operand
    if op == "sub":
        return value - operand
    if op == "mul":
        return value * operand
    if op == "div":
        return value // operand
    return value % operand


def chain_values(start: int, steps: list[list]) -> list[int]:
    """The result after each step."""
    values, value = [], start
    for op, operand in steps:
        value = apply(op, value, int(operand))
        values.append(value)
    return values


def draw_length(rng: np.random.Generator, config: ChainConfig) -> int:
    draw = (1.0 - rng.random()) ** (-1.0 / config.tail_index)
    return int(min(max(int(draw), config.min_steps), config.max_steps))


def _operand(rng: np.random.Generator, digits: int) -> int:
    return int(rng.integers(max(2, 10 ** (digits - 1)), 10**digits))


def draw_step(rng: np.random.Generator, value: int, digits: int) -> tuple[str, int]:
    """One operation that keeps the value positive and below 4 * digits digits."""
    if value >= 10 ** (3 * digits):
        allowed = ["div", "mod"]
    elif value <= 10**digits:
        allowed = ["add", "mul"]
    else:
        allowed = list(OPERATIONS)
    op = allowed[int(rng.integers(len(allowed)))]
    operand = _operand(rng, digits)
    if op == "sub" and operand >= value:
        op = "add"
    while op == "mod" and value % operand == 0:  # a zero would make the rest of the chain trivial
        operand += 1
    return op, operand


def chain_prompt(start: int, steps: list[list], instructions: bool = True) -> str:
    """The first user message; `instructions=False` keeps only the step line (for a small model
    trained from scratch, which cannot use the paragraph of instructions and gets them from
    demonstrations instead)."""
    op, operand = steps[0]
    first = f"Step 1 of {len(steps)}: {FIRST_STEP_TEXT[op].format(a=start, b=operand)}."
    if not instructions:
        return first
    return (
        f"This is a chain of {len(steps)} calculation steps, revealed one at a time. For each step, use the "
        "calculator, then reply without a tool call with the result of that step in \\boxed{} to receive the "
        f"next step. The chain ends after step {len(steps)}.\n\n" + first
    )


def step_text(index: int, steps: list[list]) -> str:
    """The text revealing step `index` (0-based; index >= 1)."""
    op, operand = steps[index]
    return f"Step {index + 1} of {len(steps)}: {STEP_TEXT[op].format(b=operand)}."


def generate_tasks(num_tasks: int = 2000, seed: int = 0, config: ChainConfig | None = None,
                   instructions: bool = True) -> list[Task]:
    """`num_tasks` chains with ids `chain-{index:05d}` (an id whose prompt repeats is skipped).

    Repeats are judged on the full prompt with instructions whatever `instructions` says, so the
    task set (and the train/held-out split) does not depend on how the prompt is worded."""
    config = config or ChainConfig()
    tasks, prompts = [], set()
    for index in range(num_tasks):
        rng = np.random.default_rng([seed, index])
        length = draw_length(rng, config)
        start = _operand(rng, config.digits + 1)
        steps, value = [], start
        for _ in range(length):
            op, operand = draw_step(rng, value, config.digits)
            value = apply(op, value, operand)
            steps.append([op, operand])
        key = chain_prompt(start, steps)
        if key in prompts:  # an identical prompt would leak across the splits
            continue
        prompts.add(key)
        prompt = key if instructions else chain_prompt(start, steps, instructions=False)
        tasks.append(Task(task_id=f"chain-{index:05d}", prompt=prompt, answer=str(value),
                          metadata={"start": start, "steps": steps, "length": length, "digits": config.digits}))
    return tasks


def chaincalc_splits(num_tasks: int = 2000, seed: int = 0, heldout_fraction: float = 0.2,
                     config: ChainConfig | None = None, instructions: bool = True):
    return split_tasks(generate_tasks(num_tasks, seed, config, instructions), heldout_fraction)
