"""Seeded arithmetic word problems that need exact big-number arithmetic.

Each task is generated from `numpy.random.default_rng([seed, level, index])`, so a task id
(`calc-L{level}-{index:05d}`) always means the same problem. Numbers grow with the level, so
that beyond level 1 a small model cannot do the arithmetic in its head and must call the
calculator.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from spo_agents.env import Task, split_tasks

# (digits of each operand) per difficulty level
LEVEL_DIGITS = {1: (2, 3), 2: (3, 5), 3: (5, 8)}


def _number(rng: np.random.Generator, level: int) -> int:
    low, high = LEVEL_DIGITS[level]
    digits = int(rng.integers(low, high + 1))
    return int(rng.integers(10 ** (digits - 1), 10**digits))


def _product(rng, level):
    a, b = _number(rng, level), _number(rng, level)
    item = ["boxes", "crates", "pallets", "shelves"][int(rng.integers(4))]
    return (f"A warehouse has {a} {item}, each holding {b} items. How many items are there in total?", f"{a}*{b}")


def _product_minus(rng, level):
    a, b = _number(rng, level), _number(rng, level)
    c = int(rng.integers(1, a * b))
    return (
        f"A factory makes {a} parts per day for {b} days and then ships {c} parts. How many parts are left?",
        f"{a}*{b}-{c}",
    )


def _two_products(rng, level):
    a, b, c, d = (_number(rng, level) for _ in range(4))
    return (
        f"A shop sells {a} tickets at {b} coins each and {c} passes at {d} coins each. "
        "How many coins does it take in altogether?",
        f"{a}*{b}+{c}*{d}",
    )


def _power_sum(rng, level):
    base = int(rng.integers(2, 10))
    exponent = int(rng.integers(10 + 5 * level, 20 + 10 * level))
    extra = _number(rng, level)
    return (
        f"A colony of cells multiplies by {base} every hour. Starting from one cell, how many cells are "
        f"there after {exponent} hours if {extra} more cells are added at the end?",
        f"{base}**{exponent}+{extra}",
    )


TEMPLATES: list[Callable[[np.random.Generator, int], tuple[str, str]]] = [
    _product,
    _product_minus,
    _two_products,
    _power_sum,
]


def eval_integer_expression(expression: str) -> int:
    """Value of a generated expression (only digits, + - * and **, built by the templates)."""
    total = 0
    for term in expression.replace("-", "+-").split("+"):
        sign, term = (-1, term[1:]) if term.startswith("-") else (1, term)
        if "**" in term:
            base, exponent = term.split("**")
            total += sign * int(base) ** int(exponent)
        else:
            product = 1
            for factor in term.split("*"):
                product *= int(factor)
            total += sign * product
    return total


def generate_tasks(num_tasks: int = 2000, level: int = 2, seed: int = 0) -> list[Task]:
    """`num_tasks` distinct problems of one difficulty level."""
    if level not in LEVEL_DIGITS:
        raise ValueError(f"difficulty level must be one of {sorted(LEVEL_DIGITS)}, got {level}")
    tasks, prompts = [], set()
    for index in range(num_tasks):
        rng = np.random.default_rng([seed, level, index])
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        prompt, expression = template(rng, level)
        if prompt in prompts:  # identical prompt would leak across splits
            continue
        prompts.add(prompt)
        tasks.append(
            Task(
                task_id=f"calc-L{level}-{index:05d}",
                prompt=prompt,
                answer=str(eval_integer_expression(expression)),
                metadata={"level": level, "template": template.__name__.lstrip("_"), "expression": expression},
            )
        )
    return tasks


def calculator_splits(num_tasks: int = 2000, level: int = 2, seed: int = 0, heldout_fraction: float = 0.2):
    return split_tasks(generate_tasks(num_tasks, level, seed), heldout_fraction)
