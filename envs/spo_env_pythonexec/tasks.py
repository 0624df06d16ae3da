"""The bundled programming tasks: function-writing problems from parametrised families.

Why generated: the tasks must be many (a few hundred, with a held-out split), have stable ids
(SPO's value tracker keys on them), and have hidden tests whose expected values are certainly
right. Each family (triangular-like numbers, digit sums, Caesar shifts, run compression,
chunking, recurrences, ...) takes parameters from `numpy.random.default_rng([seed, index])`
that change the task itself (the shift, the base, the modulus, the chunk size), and carries a
reference solution as source code. Expected values are computed by running that reference
in this process (it is our code, not the model's) on the test inputs; the oracle submits the
same source, and a test checks that every reference passes its own tests through the real
sandboxed grader.

Task ids are `py-{index:04d}`; an index that repeats an earlier task's function (same signature
and description, whatever the example) is skipped, so an id always means the same task for a
given seed and no function appears in both splits. Each task has one example input (shown in
the prompt) and `NUM_HIDDEN_TESTS` hidden ones; edge cases (0, empty inputs) come first.

The hidden inputs are drawn from a second generator seeded with `test_seed`, by default a
secret of this process: this file is public (and, with a normal install, in site-packages),
so if the hidden inputs followed from `seed` alone, code holding a copy of the generator
could find its task among the regenerated ones by the inputs it is called with and return
the reference's answers. The task itself (function, id, prompt, example) depends on `seed`
only, so splits and ids stay the same in every process.
"""

from __future__ import annotations

import functools
import secrets
import string
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from spo_agents.env import Task

NUM_HIDDEN_TESTS = 8
ORDINALS = {1: "largest", 2: "second largest", 3: "third largest", 4: "fourth largest", 5: "fifth largest"}


@dataclass(frozen=True)
class Spec:
    """One generated task before its expected values are computed."""

    entry: str
    signature: str
    description: str
    code: str  # reference solution
    inputs: Callable[[np.random.Generator], list[tuple]]  # argument tuples from an rng; the first is the example


def _ints(rng, low, high, size) -> list[int]:
    return [int(x) for x in rng.integers(low, high + 1, size=size)]


def _int_inputs(rng, low, high, edge=(0,)) -> list[tuple]:
    rest = _ints(rng, low, high, NUM_HIDDEN_TESTS + 1 - len(edge))
    return [(rest[0],), *((e,) for e in edge), *((x,) for x in rest[1:])]


def _word(rng, alphabet: str, low: int, high: int) -> str:
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), size=int(rng.integers(low, high + 1))))


def _text_inputs(rng, alphabet: str, low=1, high=24, edge=("",)) -> list[tuple]:
    texts = [_word(rng, alphabet, low, high) for _ in range(NUM_HIDDEN_TESTS + 1 - len(edge))]
    return [(texts[0],), *((e,) for e in edge), *((t,) for t in texts[1:])]


def _words_text(rng, min_words: int, max_words: int) -> str:
    words = [_word(rng, "abcdefgh", 1, 10) for _ in range(int(rng.integers(min_words, max_words + 1)))]
    return "".join(w + [" ", "  ", "\n", "\t"][int(rng.integers(4))] for w in words)


def _runs_text(rng, k: int) -> str:
    runs = int(rng.integers(1, 8))
    return "".join("abc"[int(rng.integers(3))] * int(rng.integers(1, k + 3)) for _ in range(runs))


def _list_inputs(rng, low=-50, high=50, max_len=16) -> list[tuple]:
    lists = [_ints(rng, low, high, int(rng.integers(1, max_len + 1))) for _ in range(NUM_HIDDEN_TESTS)]
    return [(lists[0],), ([],), *((items,) for items in lists[1:])]


def _fill(template: str, **values: Any) -> str:
    for name, value in values.items():
        template = template.replace(f"__{name}__", str(value))
    return template


# ----- numbers ------------------------------------------------------------------------------
POLYGON_NAMES = {3: "triangular", 4: "square", 5: "pentagonal", 6: "hexagonal", 7: "heptagonal", 8: "octagonal",
                 9: "nonagonal", 10: "decagonal", 11: "hendecagonal", 12: "dodecagonal"}


def _polygonal(rng) -> Spec:
    k = int(rng.integers(3, 13))
    entry = f"{POLYGON_NAMES[k]}_number"
    first = [((k - 2) * n * n - (k - 4) * n) // 2 for n in range(1, 5)]
    code = _fill("def __E__(n):\n    return ((__K__ - 2) * n * n - (__K__ - 4) * n) // 2\n", E=entry, K=k)
    return Spec(entry, f"{entry}(n: int) -> int",
                f"returns the n-th {POLYGON_NAMES[k]} ({k}-gonal) number; the sequence starts "
                f"{', '.join(map(str, first))} for n = 1, 2, 3, 4, and the 0-th is 0",
                code, lambda r: _int_inputs(r, 1, 1000))


def _sum_of_multiples(rng) -> Spec:
    a, b = sorted(int(x) for x in rng.choice(np.arange(2, 21), size=2, replace=False))
    code = _fill("def sum_of_multiples(n):\n"
                 "    return sum(i for i in range(1, n) if i % __A__ == 0 or i % __B__ == 0)\n", A=a, B=b)
    return Spec("sum_of_multiples", "sum_of_multiples(n: int) -> int",
                f"returns the sum of all positive integers below n that are multiples of {a} or {b} "
                "(each such integer counted once)", code, lambda r: _int_inputs(r, 1, 3000, edge=(0, a)))


def _digit_sum(rng) -> Spec:
    base = int(rng.integers(2, 17))
    code = _fill("def digit_sum(n):\n    total = 0\n    while n:\n        n, digit = divmod(n, __B__)\n"
                 "        total += digit\n    return total\n", B=base)
    return Spec("digit_sum", "digit_sum(n: int) -> int",
                f"returns the sum of the digits of the non-negative integer n written in base {base}",
                code, lambda r: _int_inputs(r, 1, 10**9, edge=(0, base)))


def _persistence(rng) -> Spec:
    kind = ["sum", "product"][int(rng.integers(2))]
    base = int(rng.integers(3, 11))
    step = "value += d" if kind == "sum" else "value *= d"
    start = 0 if kind == "sum" else 1
    code = _fill("def persistence(n):\n    steps = 0\n    while n >= __B__:\n        value = __S__\n        while n:\n"
                 "            n, d = divmod(n, __B__)\n            __STEP__\n        n = value\n        steps += 1\n"
                 "    return steps\n", B=base, S=start, STEP=step)
    return Spec("persistence", "persistence(n: int) -> int",
                f"returns how many times the non-negative integer n must be replaced by the {kind} of its "
                f"digits in base {base} until it is smaller than {base}", code, lambda r: _int_inputs(r, 1, 10**8))


def _primes_in_class(rng) -> Spec:
    m = int(rng.integers(3, 13))
    r = int(rng.integers(0, m))
    code = _fill("def count_primes(n):\n    count = 0\n    for p in range(2, n + 1):\n"
                 "        if p % __M__ == __R__ and all(p % d for d in range(2, int(p ** 0.5) + 1)):\n"
                 "            count += 1\n    return count\n", M=m, R=r)
    return Spec("count_primes", "count_primes(n: int) -> int",
                f"returns how many prime numbers p with p <= n leave the remainder {r} when divided by {m}",
                code, lambda r: _int_inputs(r, 2, 600))


def _popcount(rng) -> Spec:
    k = int(rng.integers(1, 7))
    code = _fill("def count_with_ones(n):\n    return sum(1 for x in range(n + 1) if bin(x).count('1') == __K__)\n",
                 K=k)
    return Spec("count_with_ones", "count_with_ones(n: int) -> int",
                f"returns how many integers x with 0 <= x <= n have exactly {k} one-bits in their binary "
                "representation", code, lambda r: _int_inputs(r, 1, 1000))


def _recurrence(rng) -> Spec:
    x, y = _ints(rng, 0, 9, 2)
    c1, c2 = _ints(rng, 1, 5, 2)
    m = int(rng.choice([97, 1000, 10007, 1_000_000_007]))
    code = _fill("def sequence(n):\n    a, b = __X__, __Y__\n    for _ in range(n):\n"
                 "        a, b = b, (__C1__ * b + __C2__ * a)\n    return a % __M__\n", X=x, Y=y, C1=c1, C2=c2, M=m)
    return Spec("sequence", "sequence(n: int) -> int",
                f"returns a(n) modulo {m}, where a(0) = {x}, a(1) = {y} and a(i) = {c1} * a(i-1) + {c2} * a(i-2) "
                "for i >= 2", code, lambda r: _int_inputs(r, 2, 300, edge=(0, 1)))


# ----- strings ------------------------------------------------------------------------------
def _shift_letters(rng) -> Spec:
    k = int(rng.integers(1, 26))
    forward = bool(rng.integers(2))
    shift = k if forward else 26 - k
    code = _fill("def shift_letters(s):\n    return ''.join(chr((ord(c) - 97 + __K__) % 26 + 97) if 'a' <= c <= 'z' "
                 "else c for c in s)\n", K=shift)
    direction = "forward" if forward else "backward"
    return Spec("shift_letters", "shift_letters(s: str) -> str",
                f"returns s with every lowercase ASCII letter moved {k} places {direction} in the alphabet, "
                "wrapping around between z and a; every other character stays as it is",
                code, lambda r: _text_inputs(r, string.ascii_lowercase + "  ,.!AZ"))


def _rotate(rng) -> Spec:
    k = int(rng.integers(1, 13))
    left = bool(rng.integers(2))
    body = "return s[k:] + s[:k]" if left else "return s[-k:] + s[:-k] if k else s"
    code = _fill("def rotate(s):\n    if not s:\n        return s\n    k = __K__ % len(s)\n    " + body + "\n", K=k)
    moved = f"the first {k} characters move to the end" if left else f"the last {k} characters move to the front"
    return Spec("rotate", "rotate(s: str) -> str",
                f"returns s rotated {'left' if left else 'right'} by {k} characters ({moved}); when s is shorter, "
                f"rotate by {k} modulo len(s); the empty string stays empty",
                code, lambda r: _text_inputs(r, string.ascii_lowercase, 1, 15, edge=("", "ab")))


def _count_special(rng) -> Spec:
    letters = "".join(sorted(str(c) for c in rng.choice(list(string.ascii_lowercase), size=int(rng.integers(3, 7)),
                                                        replace=False)))
    code = _fill("def count_special(s):\n    return sum(1 for c in s if c in __L__)\n", L=repr(letters))
    return Spec("count_special", "count_special(s: str) -> int",
                f"returns how many characters of s are one of the letters {letters!r} (case-sensitive)",
                code, lambda r: _text_inputs(r, string.ascii_letters + " ", 1, 40))


def _compress_runs(rng) -> Spec:
    k = int(rng.integers(2, 7))
    code = _fill("def compress_runs(s):\n    out, i = [], 0\n    while i < len(s):\n        j = i\n"
                 "        while j < len(s) and s[j] == s[i]:\n            j += 1\n"
                 "        out.append(str(j - i) + s[i] if j - i >= __K__ else s[i:j])\n        i = j\n"
                 "    return ''.join(out)\n", K=k)
    return Spec("compress_runs", "compress_runs(s: str) -> str",
                f"returns s with every maximal run of at least {k} equal consecutive characters replaced by the "
                f"run's length followed by the character (e.g. {'x' * (k + 1)!r} becomes '{k + 1}x'); shorter runs "
                "stay as they are", code, lambda r: [(_runs_text(r, k),), ("",), *((_runs_text(r, k),) for _ in range(7))])


def _interleave(rng) -> Spec:
    k = int(rng.integers(1, 5))
    code = _fill("def interleave(a, b):\n    out = []\n    for i in range(0, max(len(a), len(b)), __K__):\n"
                 "        out.append(a[i:i + __K__] + b[i:i + __K__])\n    return ''.join(out)\n", K=k)

    def inputs(r) -> list[tuple]:
        pairs = [(_word(r, "abcdef", 0, 10), _word(r, "UVWXYZ", 0, 10)) for _ in range(NUM_HIDDEN_TESTS)]
        return [pairs[0], ("", ""), *pairs[1:]]

    return Spec("interleave", "interleave(a: str, b: str) -> str",
                f"returns a string built by taking {k} character(s) from a, then {k} from b, then the next {k} from "
                "a, and so on; once one string is used up, the rest of the other follows", code, inputs)


def _strip_palindrome(rng) -> Spec:
    ignored = "".join(sorted(str(c) for c in rng.choice(list(" ,.!?-'"), size=int(rng.integers(1, 5)), replace=False)))
    code = _fill("def is_palindrome(s):\n    kept = [c.lower() for c in s if c not in __I__]\n"
                 "    return kept == kept[::-1]\n", I=repr(ignored))

    def inputs(r) -> list[tuple]:
        found = []
        for i in range(NUM_HIDDEN_TESTS + 1):
            half = _word(r, "abcAB" + ignored, 1, 8)
            found.append((half + half[::-1] if i % 2 == 0 else half + "x" + _word(r, "ab" + ignored, 1, 5),))
        return found

    return Spec("is_palindrome", "is_palindrome(s: str) -> bool",
                f"returns True if s reads the same forwards and backwards once every character that is one of "
                f"{ignored!r} is removed and letters are compared case-insensitively, else False",
                code, inputs)


def _select_words(rng) -> Spec:
    k = int(rng.integers(2, 9))
    mode, op = [("more than", ">"), ("exactly", "=="), ("fewer than", "<")][int(rng.integers(3))]
    code = _fill("def select_words(text):\n    return [w for w in text.split() if len(w) __OP__ __K__]\n", OP=op, K=k)
    return Spec("select_words", "select_words(text: str) -> list[str]",
                f"returns, in order, the words of text (separated by whitespace) that have {mode} {k} characters",
                code, lambda r: [(_words_text(r, 1, 12),), ("",), *((_words_text(r, 0, 12),) for _ in range(7))])


# ----- lists --------------------------------------------------------------------------------
def _chunks(rng) -> Spec:
    k = int(rng.integers(2, 9))
    code = _fill("def chunks(items):\n    return [items[i:i + __K__] for i in range(0, len(items), __K__)]\n", K=k)
    return Spec("chunks", "chunks(items: list[int]) -> list[list[int]]",
                f"splits items into consecutive chunks of {k} elements (the last chunk may be shorter) and returns "
                "the list of chunks", code, lambda r: _list_inputs(r, max_len=25))


def _every_kth(rng) -> Spec:
    start, step = int(rng.integers(0, 4)), int(rng.integers(2, 7))
    code = _fill("def every_kth(items):\n    return items[__S__::__K__]\n", S=start, K=step)
    return Spec("every_kth", "every_kth(items: list[int]) -> list[int]",
                f"returns the elements of items at the 0-based positions {start}, {start + step}, {start + 2 * step}, "
                f"and so on (every {step}-th element starting at position {start})",
                code, lambda r: _list_inputs(r, max_len=25))


def _filter_divisible(rng) -> Spec:
    k = int(rng.integers(2, 10))
    m = k * int(rng.integers(2, 6))
    code = _fill("def keep_divisible(numbers):\n    return [x for x in numbers if x % __K__ == 0 and x % __M__ != 0]\n",
                 K=k, M=m)
    return Spec("keep_divisible", "keep_divisible(numbers: list[int]) -> list[int]",
                f"returns, in their original order, the elements of numbers that are divisible by {k} but not by {m}",
                code, lambda r: _list_inputs(r, -100, 100, 30))


def _running(rng) -> Spec:
    kind = int(rng.integers(3))
    m = int(rng.integers(7, 1000))
    if kind == 2:
        code = ("def running(numbers):\n    out = []\n    for x in numbers:\n"
                "        out.append(x if not out else max(out[-1], x))\n    return out\n")
        what = "the running maximum: element i of the result is the largest of numbers[0..i]"
    else:
        op, start, name = ("+", 0, "sum") if kind == 0 else ("*", 1, "product")
        code = _fill("def running(numbers):\n    out, acc = [], __S__\n    for x in numbers:\n"
                     "        acc = (acc __OP__ x) % __M__\n        out.append(acc)\n    return out\n",
                     S=start, OP=op, M=m)
        what = f"the running {name}s modulo {m}: element i of the result is the {name} of numbers[0..i] modulo {m}"
    return Spec("running", "running(numbers: list[int]) -> list[int]", f"returns {what}", code,
                lambda r: _list_inputs(r, -30, 60, 15))


def _kth_largest(rng) -> Spec:
    k = int(rng.integers(1, 6))
    code = _fill("def kth_largest(numbers):\n    values = sorted(set(numbers), reverse=True)\n"
                 "    return values[__K1__] if len(values) >= __K__ else None\n", K=k, K1=k - 1)
    return Spec("kth_largest", "kth_largest(numbers: list[int]) -> int | None",
                f"returns the {ORDINALS[k]} distinct value of numbers (equal values count once), or None when "
                f"numbers has fewer than {k} distinct values", code, lambda r: _list_inputs(r, 0, 12, 12))


def _pairs_with_sum(rng) -> Spec:
    target = int(rng.integers(-10, 41))
    code = _fill("def count_pairs(numbers):\n    n = len(numbers)\n"
                 "    return sum(1 for i in range(n) for j in range(i + 1, n) if numbers[i] + numbers[j] == __T__)\n",
                 T=target)
    return Spec("count_pairs", "count_pairs(numbers: list[int]) -> int",
                f"returns the number of index pairs (i, j) with i < j and numbers[i] + numbers[j] == {target}",
                code, lambda r: _list_inputs(r, min(target, 0) - 5, max(target, 0) + 5, 16))


def _group_words(rng) -> Spec:
    k = int(rng.integers(1, 4))
    suffix = bool(rng.integers(2))
    part = "w[-__K__:]" if suffix else "w[:__K__]"
    code = _fill("def group_words(words):\n    groups = {}\n    for w in words:\n"
                 "        groups.setdefault(" + part + ", []).append(w)\n    return groups\n", K=k)
    where = "last" if suffix else "first"
    def inputs(r) -> list[tuple]:
        return [(text.split(),) for (text,) in _text_inputs(r, "abc  ", 1, 40)]

    return Spec("group_words", "group_words(words: list[str]) -> dict[str, list[str]]",
                f"returns a dict that maps each word's {where} {k} character(s) (the whole word if it is shorter) "
                "to the list of words, in their original order, that have them", code, inputs)


def _matrix(rng) -> Spec:
    kind = int(rng.integers(4))
    bodies = ["[list(row) for row in zip(*matrix)]", "[list(row) for row in zip(*matrix[::-1])]",
              "[list(row) for row in zip(*matrix)][::-1]", "[row[::-1] for row in matrix[::-1]]"]
    what = ["its transpose", "the matrix rotated 90 degrees clockwise",
            "the matrix rotated 90 degrees counterclockwise", "the matrix rotated 180 degrees"][kind]
    code = "def transform(matrix):\n    return " + bodies[kind] + "\n"

    def inputs(r) -> list[tuple]:
        found = []
        for _ in range(NUM_HIDDEN_TESTS + 1):
            rows, cols = _ints(r, 1, 4, 2)
            found.append(([_ints(r, 0, 9, cols) for _ in range(rows)],))
        return found

    return Spec("transform", "transform(matrix: list[list[int]]) -> list[list[int]]",
                f"returns {what} (matrix is a non-empty rectangular list of rows; return a new list of lists)",
                code, inputs)


FAMILIES: list[Callable[[np.random.Generator], Spec]] = [
    _polygonal, _sum_of_multiples, _digit_sum, _persistence, _primes_in_class, _popcount, _recurrence,
    _shift_letters, _rotate, _count_special, _compress_runs, _interleave, _strip_palindrome, _select_words,
    _chunks, _every_kth, _filter_divisible, _running, _kth_largest, _pairs_with_sum, _group_words, _matrix,
]


def call_expression(entry: str, args: tuple) -> str:
    return f"{entry}({', '.join(repr(a) for a in args)})"


def task_from_spec(task_id: str, spec: Spec, family: str, inputs: list[tuple]) -> Task:
    """A `Task` whose hidden tests hold expected values computed by the reference solution.

    `inputs`: argument tuples; the first is the prompt's example, the others the hidden tests."""
    namespace: dict[str, Any] = {}
    exec(compile(spec.code, f"<reference {task_id}>", "exec"), namespace)  # our own reference code
    function = namespace[spec.entry]
    expected = [function(*args) for args in inputs]
    example = f"{call_expression(spec.entry, inputs[0])} == {expected[0]!r}"
    prompt = f"Write a Python function `{spec.signature}` that {spec.description}.\n\nExample: `{example}`"
    tests = [{"expr": call_expression(spec.entry, args), "expected": repr(value)}
             for args, value in zip(inputs[1:], expected[1:])]
    return Task(task_id=task_id, prompt=prompt, answer=spec.code,
                metadata={"family": family, "entry_point": spec.entry, "tests": tests, "setup": "",
                          "example": example})


def process_test_seed() -> int:
    """The secret that draws hidden test inputs when no `test_seed` is given: one per process."""
    global _PROCESS_TEST_SEED
    if _PROCESS_TEST_SEED is None:
        _PROCESS_TEST_SEED = secrets.randbits(63)
    return _PROCESS_TEST_SEED


_PROCESS_TEST_SEED: int | None = None


@functools.lru_cache(maxsize=8)
def _generate(num_tasks: int, seed: int, test_seed: int) -> tuple[Task, ...]:
    tasks, definitions = [], set()
    index = 0
    while len(tasks) < num_tasks and index < 20 * num_tasks:
        rng = np.random.default_rng([seed, index])
        family = FAMILIES[index % len(FAMILIES)]
        spec = family(rng)
        index += 1
        definition = f"{spec.signature} {spec.description}"
        if definition in definitions:  # the same function (with other tests) would leak across splits
            continue
        definitions.add(definition)
        example = spec.inputs(rng)[0]  # public: the task, its id and its prompt depend on `seed` only
        hidden = spec.inputs(np.random.default_rng([seed, index - 1, test_seed]))[1:]
        tasks.append(task_from_spec(f"py-{index - 1:04d}", spec, family.__name__.lstrip("_"), [example, *hidden]))
    return tuple(tasks)


def generate_tasks(num_tasks: int = 400, seed: int = 0, test_seed: int | None = None) -> list[Task]:
    """`num_tasks` distinct programming tasks (cached: environments are made often).

    `seed` decides the tasks (functions, ids, prompts and examples); `test_seed` the inputs of
    the hidden tests. Left None, it is a secret drawn once per process, so code that has the
    generator (a copy of this file) still cannot regenerate the hidden tests of a task."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    return list(_generate(num_tasks, seed, process_test_seed() if test_seed is None else int(test_seed)))
