"""The bundled problem set of spo/ToolMath-v0: math problems that reward computing.

Why its own set (and not MathVerify's): in the tool-integrated setting the tool should
matter. Every problem here is easy to state and short to program but tedious or impossible
to do in one's head: modular powers with 12-digit exponents, power sums modulo a prime,
Fibonacci-like terms modulo m, digit sums of huge numbers, counting primes or lattice
solutions, partitions, divisor counts of 12-digit numbers, totient sums, inclusion-exclusion
counts up to a billion, Collatz lengths.

Each template returns the prompt and a short program that sets `result`. The reference
answer is that program run here, in this process (it is our code, not the model's; all
programs are sized to run in about a millisecond), so every answer is computed, never typed.
The oracle policy sends the same program to the python tool. Problems are generated from
`numpy.random.default_rng([seed, index])`; task ids are `tm-{index:04d}`, and an index whose
prompt repeats an earlier one is skipped (so an id always means the same problem for a seed).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

from spo_agents.env import Task


def _ints(rng, low: int, high: int, size: int) -> list[int]:
    return [int(x) for x in rng.integers(low, high + 1, size=size)]


def _modpow(rng):
    a, b = int(rng.integers(2, 10**6)), int(rng.integers(10**6, 10**12))
    m = int(rng.choice([10**9 + 7, 998_244_353, int(rng.integers(10**4, 10**6))]))
    return f"What is the remainder when ${a}^{{{b}}}$ is divided by ${m}$?", f"result = pow({a}, {b}, {m})"


def _power_sum(rng):
    n, p = int(rng.integers(1000, 5001)), int(rng.integers(3, 9))
    m = int(rng.choice([1_000_003, 10**9 + 7, 99_991]))
    return (f"Compute $\\sum_{{k=1}}^{{{n}}} k^{{{p}}}$ modulo ${m}$.",
            f"result = sum(pow(k, {p}, {m}) for k in range(1, {n + 1})) % {m}")


def _recurrence(rng):
    x, y = _ints(rng, 1, 9, 2)
    c = int(rng.integers(1, 4))
    n, m = int(rng.integers(500, 5001)), int(rng.choice([10**9 + 7, 10**6, 9973]))
    term = "a_{n-2}" if c == 1 else f"{c} a_{{n-2}}"
    return (f"A sequence has $a_1 = {x}$, $a_2 = {y}$ and $a_n = a_{{n-1}} + {term}$ for $n \\ge 3$. "
            f"What is the remainder when $a_{{{n}}}$ is divided by ${m}$?",
            f"a, b = {x}, {y}\nfor _ in range({n - 1}):\n    a, b = b, b + {c} * a\nresult = a % {m}")


def _digit_sum_power(rng):
    a, b = int(rng.integers(2, 13)), int(rng.integers(100, 1001))
    return f"What is the sum of the decimal digits of ${a}^{{{b}}}$?", f"result = sum(int(d) for d in str({a} ** {b}))"


def _digit_sum_factorial(rng):
    n = int(rng.integers(40, 401))
    return (f"What is the sum of the decimal digits of ${n}!$?",
            f"import math\nresult = sum(int(d) for d in str(math.factorial({n})))")


def _binomial(rng):
    n = int(rng.integers(40, 121))
    k = int(rng.integers(5, n // 2))
    m = int(rng.choice([10**9 + 7, 10**6, 65_537]))
    return (f"What is the remainder when $\\binom{{{n}}}{{{k}}}$ is divided by ${m}$?",
            f"import math\nresult = math.comb({n}, {k}) % {m}")


def _count_divisible(rng):
    n = int(rng.integers(10**5, 10**9))
    a, b, c = (int(x) for x in rng.choice(np.arange(2, 30), size=3, replace=False))
    return (f"How many integers from 1 to {n} are divisible by {a} or by {b}, but not by {c}?",
            f"from math import lcm\nN = {n}\nresult = (N // {a} + N // {b} - N // lcm({a}, {b})\n"
            f"          - N // lcm({a}, {c}) - N // lcm({b}, {c}) + N // lcm({a}, {b}, {c}))")


def _divisors(rng):
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23]
    chosen = sorted(int(p) for p in rng.choice(primes, size=int(rng.integers(3, 6)), replace=False))
    n = math.prod(p ** int(rng.integers(1, 5)) for p in chosen)
    if rng.random() < 0.5:
        return (f"How many positive divisors does ${n}$ have?",
                f"n, result, d = {n}, 1, 2\nwhile n > 1:\n    e = 0\n    while n % d == 0:\n        n //= d\n"
                f"        e += 1\n    result *= e + 1\n    d += 1")
    return (f"What is the sum of all positive divisors of ${n}$?",
            f"n, result, d = {n}, 1, 2\nwhile n > 1:\n    term, power = 1, 1\n    while n % d == 0:\n"
            f"        n //= d\n        power *= d\n        term += power\n    result *= term\n    d += 1")


def _primes(rng):
    n = int(rng.integers(1000, 20001))
    sieve = (f"n = {n}\nis_prime = bytearray([1]) * (n + 1)\nis_prime[0:2] = b'\\x00\\x00'\n"
             "for i in range(2, int(n ** 0.5) + 1):\n    if is_prime[i]:\n"
             "        is_prime[i * i::i] = bytearray(len(range(i * i, n + 1, i)))\n")
    if rng.random() < 0.5:
        return f"How many prime numbers are less than or equal to {n}?", sieve + "result = sum(is_prime)"
    return (f"What is the sum of all prime numbers less than or equal to {n}?",
            sieve + "result = sum(i for i in range(n + 1) if is_prime[i])")


def _partitions(rng):
    n = int(rng.integers(20, 101))
    return (f"In how many ways can {n} be written as a sum of positive integers, if the order of the terms "
            "does not matter?",
            f"ways = [1] + [0] * {n}\nfor part in range(1, {n + 1}):\n    for total in range(part, {n + 1}):\n"
            f"        ways[total] += ways[total - part]\nresult = ways[{n}]")


def _lattice(rng):
    a, b, c = sorted(int(x) for x in rng.choice(np.arange(1, 10), size=3, replace=False))
    n = int(rng.integers(100, 601))
    return (f"How many ordered triples $(x, y, z)$ of non-negative integers satisfy ${a}x + {b}y + {c}z = {n}$?",
            f"ways = [1] + [0] * {n}\nfor coin in ({a}, {b}, {c}):\n    for total in range(coin, {n + 1}):\n"
            f"        ways[total] += ways[total - coin]\nresult = ways[{n}]")


def _totient_sum(rng):
    n = int(rng.integers(100, 3001))
    return (f"Compute $\\sum_{{k=1}}^{{{n}}} \\varphi(k)$, where $\\varphi$ is Euler's totient function.",
            f"phi = list(range({n + 1}))\nfor i in range(2, {n + 1}):\n    if phi[i] == i:\n"
            f"        for j in range(i, {n + 1}, i):\n            phi[j] -= phi[j] // i\nresult = sum(phi[1:])")


def _collatz(rng):
    n = int(rng.integers(10**5, 10**9))
    return (f"Starting from {n}, repeatedly replace the number by half of it when it is even and by three times "
            "it plus one when it is odd. How many replacements are needed to reach 1?",
            f"n, result = {n}, 0\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    result += 1")


TEMPLATES: list[Callable[[np.random.Generator], tuple[str, str]]] = [
    _modpow, _power_sum, _recurrence, _digit_sum_power, _digit_sum_factorial, _binomial, _count_divisible,
    _divisors, _primes, _partitions, _lattice, _totient_sum, _collatz,
]


def solve(code: str) -> int:
    """Run a generated program (ours, trusted) and return its `result`."""
    namespace: dict = {}
    exec(compile(code, "<toolmath problem>", "exec"), namespace)
    return int(namespace["result"])


@functools.lru_cache(maxsize=8)
def _generate(num_problems: int, seed: int) -> tuple[Task, ...]:
    tasks, prompts = [], set()
    for index in range(20 * num_problems):
        if len(tasks) == num_problems:
            break
        rng = np.random.default_rng([seed, index])
        template = TEMPLATES[index % len(TEMPLATES)]
        prompt, code = template(rng)
        if prompt in prompts:
            continue
        prompts.add(prompt)
        tasks.append(Task(task_id=f"tm-{index:04d}", prompt=prompt, answer=str(solve(code)),
                          metadata={"template": template.__name__.lstrip("_"), "code": code}))
    return tuple(tasks)


def bundled_problems(num_problems: int = 400, seed: int = 0) -> list[Task]:
    """The generated problem set (cached: environments are made often)."""
    return list(_generate(num_problems, seed))
