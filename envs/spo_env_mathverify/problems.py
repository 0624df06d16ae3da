"""The bundled problem set: a few hundred generated math problems with exact LaTeX answers.

Problems are generated deterministically (`numpy.random.default_rng([seed, index])`) from a
handful of templates whose answers are computed exactly with `fractions.Fraction`, so every
reference answer is known to be right. Task ids are `mv-{index:04d}`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import numpy as np

from spo_agents.env import Task


def latex_fraction(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _fraction_sum(rng):
    a, c = (int(x) for x in rng.integers(1, 12, size=2))
    b, d = (int(x) for x in rng.integers(2, 13, size=2))
    total = Fraction(a, b) + Fraction(c, d)
    return f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$ as a fraction in lowest terms.", latex_fraction(total)


def _linear_equation(rng):
    a = int(rng.integers(2, 15)) * (1 if rng.random() < 0.7 else -1)
    b, c = (int(x) for x in rng.integers(-50, 51, size=2))
    return f"Solve for $x$: ${a}x + {b} = {c}$.".replace("+ -", "- "), latex_fraction(Fraction(c - b, a))


def _quadratic_roots(rng):
    r1, r2 = (int(x) for x in rng.integers(-12, 13, size=2))
    s, p = r1 + r2, r1 * r2
    ask_sum = rng.random() < 0.5
    poly = f"x^2 - {s}x + {p} = 0".replace("- -", "+ ").replace("+ -", "- ")
    question = "sum" if ask_sum else "product"
    return f"What is the {question} of the roots of ${poly}$?", str(s if ask_sum else p)


def _gcd_lcm(rng):
    a, b = (int(x) for x in rng.integers(12, 400, size=2))
    if rng.random() < 0.5:
        return f"What is the greatest common divisor of {a} and {b}?", str(math.gcd(a, b))
    return f"What is the least common multiple of {a} and {b}?", str(math.lcm(a, b))


def _simplify_sqrt(rng):
    square = int(rng.integers(2, 10)) ** 2
    rest = int(rng.choice([2, 3, 5, 6, 7, 10, 11]))
    coefficient = int(math.isqrt(square))
    return f"Simplify $\\sqrt{{{square * rest}}}$.", f"{coefficient}\\sqrt{{{rest}}}"


def _arithmetic_series(rng):
    first, step, count = int(rng.integers(1, 20)), int(rng.integers(1, 10)), int(rng.integers(5, 60))
    last = first + step * (count - 1)
    total = count * (first + last) // 2
    return f"Find the sum ${first} + {first + step} + {first + 2 * step} + \\dots + {last}$.", str(total)


def _dice_probability(rng):
    target = int(rng.integers(2, 13))
    ways = sum(1 for i in range(1, 7) for j in range(1, 7) if i + j == target)
    return (
        f"Two fair six-sided dice are rolled. What is the probability that the sum is {target}? "
        "Give a common fraction.",
        latex_fraction(Fraction(ways, 36)),
    )


def _circle_area(rng):
    radius = int(rng.integers(2, 30))
    return f"What is the area of a circle of radius {radius}? Express your answer in terms of $\\pi$.", f"{radius**2}\\pi"


TEMPLATES: list[Callable[[np.random.Generator], tuple[str, str]]] = [
    _fraction_sum,
    _linear_equation,
    _quadratic_roots,
    _gcd_lcm,
    _simplify_sqrt,
    _arithmetic_series,
    _dice_probability,
    _circle_area,
]


def bundled_problems(num_problems: int = 400, seed: int = 0) -> list[Task]:
    tasks, prompts = [], set()
    for index in range(num_problems):
        rng = np.random.default_rng([seed, index])
        template = TEMPLATES[index % len(TEMPLATES)]
        prompt, answer = template(rng)
        if prompt in prompts:
            continue
        prompts.add(prompt)
        tasks.append(Task(task_id=f"mv-{index:04d}", prompt=prompt, answer=answer,
                          metadata={"template": template.__name__.lstrip("_")}))
    return tasks
