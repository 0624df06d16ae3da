"""Dependency-free answer normalisation and comparison: the fallback grader.

Why: math-verify (sympy) is an optional extra and costs a worker process. This module decides
the common cases (integers, decimals, fractions, thousands separators, LaTeX decoration) in
microseconds, in-process, with bounded work. `MathGrader` uses it as its fast path (a `True`
here is final) and as the whole grader when math-verify is not installed.

Decisions (the same ones math-verify makes, unless noted):
- Percent: `50\\%` equals `50` (the sign is read as notation, as in the MATH normaliser) and
  also `0.5` (its value). So a percentage answer matches its number or its number / 100.
  Math-verify does the same for integers but not for decimals (`12.5\\%` vs `12.5`); here
  decimals are treated like integers.
- Decimals: exact rational comparison. A decimal written with at least 6 fractional digits
  also matches a value that differs by less than one unit in its last digit (`0.333333`
  equals `\\frac{1}{3}`, as in math-verify's float rounding); `0.33` does not.
- Units: a trailing `\\text{cm}` (a word after a number), degrees (`^\\circ`) and `\\$` are
  dropped; `x = 5` is read as `5` (a single-letter assignment).
- Thousands separators: `1,234,567` (groups of three, no spaces) is one number; `1,2`,
  `32, 349` and `1,000, 000` stay lists (math-verify reads them as sets too). LaTeX `1{,}234`
  and thin spaces (`1\\,234`) are thousands separators.

- Lists: an answer must list as many comma-separated items as the reference (`list_length`),
  so `1` does not match `1, 1` although both are the set {1} to math-verify.

Left out on purpose: symbolic algebra (`2\\sqrt{2}` vs `\\sqrt{8}`), sets, intervals, scientific
notation, mixed numbers (`2\\frac{1}{2}` is ambiguous). Those compare as normalised strings
only, so the fallback can say "wrong" to a right answer but is built never to say "right" to
a hedge: `1 \\text{ or } 2`, `\\pm 2` and lists are not numbers and match only themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# Numbers longer than this are not parsed: int() of thousands of digits is slow (quadratic)
# and honest answers are short.
MAX_NUMBER_CHARS = 400
# A decimal needs this many fractional digits before it may match a value it rounds.
MIN_ROUNDED_DIGITS = 6

_SPACING = re.compile(r"\\[,;:! ]|\\(?:left|right|displaystyle)(?![A-Za-z])|~")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree")
_UNWRAP = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_AFTER_NUMBER = re.compile(
    r"^([-+]?[\d.,]+%?)\s*\\(?:text|textrm|textnormal|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z.\s]*\}(?:\^\{?\d\}?)?$"
)
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_FRAC_INT = re.compile(r"\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}")
_ASSIGN = re.compile(r"^[A-Za-z]=([^=]+)$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?$")
_SPACED_COMMA = re.compile(r"\s,|,\s")
_CHOICE = re.compile(r"^\(([A-Za-z])\)$")
_DECIMAL = re.compile(r"^[-+]?(\d+)?(?:\.(\d*))?$")
_INTEGER = re.compile(r"^[-+]?\d+$")


def normalize_answer(s: object) -> str:
    """A canonical string for an answer: LaTeX decoration, spaces and units removed.

    `\\frac{1}{2}`, `\\dfrac12` and `1/2` all become `1/2`; `\\$1,000.` becomes `1000`;
    `50\\%` becomes `50%`; `x = 3` becomes `3`; `\\text{(B)}` becomes `B`.
    """
    s = str(s).strip().replace("\\$", "").replace("$", "")
    s = _SPACING.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\%", "%").replace("{,}", ",")
    s = _DEGREES.sub("", s).strip()
    unit = _UNIT_AFTER_NUMBER.match(s)
    if unit:
        s = unit.group(1)
    for _ in range(4):  # nested \text{\textbf{..}}; bounded
        unwrapped = _UNWRAP.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    # `32, 349` is a list, never the number 32349: a comma is a thousands separator only with
    # no space around it (checked before spaces go).
    spaced_comma = _SPACED_COMMA.search(s) is not None
    s = "".join(s.split())
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_INT.sub(r"\1/\2", s)
    s = s.rstrip(".")
    assign = _ASSIGN.match(s)
    if assign:
        s = assign.group(1)
    if not spaced_comma and _THOUSANDS.match(s):
        s = s.replace(",", "")
    choice = _CHOICE.match(s)
    if choice:
        s = choice.group(1)
    return s


def split_list(answer: str) -> list[str]:
    """`answer` split at its top-level commas (outside braces, brackets and parentheses).

    `1, \\frac{1}{2}, (3, 4)` gives three items; `\\,` (a thin space) and `{,}` are not
    separators. Linear in the answer (answers are capped by max_answer_chars).
    """
    items, depth, start = [], 0, 0
    for pos, char in enumerate(answer):
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0 and not (pos and answer[pos - 1] == "\\"):
            items.append(answer[start:pos].strip())
            start = pos + 1
    items.append(answer[start:].strip())
    return items


_ENCLOSING = (("\\{", "\\}"), ("(", ")"), ("[", "]"))


def list_length(normalized: str) -> int:
    """How many items a normalised answer lists (1 for anything but a comma-separated list).

    One pair of brackets around the whole answer is looked through, so `(1,2)`, `\\{1,2\\}`
    and `1,2` all list two items; thousands separators were removed by `normalize_answer`.
    """
    if "," not in normalized:
        return 1
    items = split_list(normalized)
    if len(items) == 1:
        for opening, closing in _ENCLOSING:
            if normalized.startswith(opening) and normalized.endswith(closing):
                return len(split_list(normalized[len(opening) : -len(closing)]))
    return len(items)


@dataclass(frozen=True)
class ParsedNumber:
    """An exact number read from a normalised answer."""

    value: Fraction
    decimals: int | None  # fractional digits when written as a plain decimal, else None
    percent: bool


def _parse_decimal(s: str) -> tuple[Fraction, int | None] | None:
    match = _DECIMAL.match(s)
    if match is None or (match.group(1) is None and not match.group(2)):
        return None
    decimals = len(match.group(2)) if match.group(2) is not None else None
    return Fraction(s), decimals


def parse_number(normalized: str) -> ParsedNumber | None:
    """An integer, decimal or `a/b` (after `normalize_answer`), else None."""
    s = normalized
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    if s.count("/") == 1:
        num, den = s.split("/")
        if num.startswith("(") and num.endswith(")") and den.startswith("(") and den.endswith(")"):
            num, den = num[1:-1], den[1:-1]
        top, bottom = _parse_decimal(num), _parse_decimal(den)
        if top is None or bottom is None or bottom[0] == 0:
            return None
        return ParsedNumber(top[0] / bottom[0], None, percent)
    parsed = _parse_decimal(s)
    if parsed is None:
        return None
    return ParsedNumber(parsed[0], parsed[1], percent)


def is_plain_integer(normalized: str) -> bool:
    """True for a normalised answer that is a bare integer (no percent, no fraction)."""
    return len(normalized) <= MAX_NUMBER_CHARS and _INTEGER.match(normalized) is not None


def _candidates(number: ParsedNumber) -> list[tuple[Fraction, int | None]]:
    values = [(number.value, number.decimals)]
    if number.percent:
        shifted = None if number.decimals is None else number.decimals + 2
        values.append((number.value / 100, shifted))
    return values


def _close(a: Fraction, a_decimals: int | None, b: Fraction, b_decimals: int | None) -> bool:
    if a == b:
        return True
    for decimals in (a_decimals, b_decimals):
        if decimals is not None and decimals >= MIN_ROUNDED_DIGITS:
            if abs(a - b) < Fraction(1, 10**decimals):
                return True
    return False


def numbers_match(pred: ParsedNumber, ref: ParsedNumber) -> bool:
    """Exact equality, rounding-aware for long decimals, percent-aware (see module doc)."""
    return any(
        _close(a, da, b, db) for a, da in _candidates(pred) for b, db in _candidates(ref)
    )


def fallback_equal(pred: str, ref: str) -> bool:
    """True when pred and ref are the same answer by normalised string or exact number.

    Dependency-free, bounded work. Empty answers are never equal.
    """
    return equal_normalized(normalize_answer(pred), normalize_answer(ref))


def equal_normalized(a: str, b: str) -> bool:
    """`fallback_equal` on answers already passed through `normalize_answer`."""
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    return numbers_match(x, y)
