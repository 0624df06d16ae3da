"""A safe, exact arithmetic evaluator for the `calculator` tool.

Why: a policy under RL sends the calculator whatever it likes, including `9**9**9**9`,
`factorial(10**9)`, `(1).__class__` and megabyte strings. `eval` is out of the question,
and Python's own big integers will happily spend minutes on one power. This module parses
with `ast`, allows a small whitelist of node types, and bounds every result before it is
computed.

Semantics:
- Exact arithmetic: integers of any size, `/` gives an exact fraction (shown as an integer
  when it divides), decimal literals are exact (`0.1 + 0.2` is `3/10`). Floats appear only
  from `sqrt` of a non-square and fractional powers.
- `^` is rejected with a hint (in Python it is XOR, and a model meaning "power" would get a
  silently wrong result). `round` rounds halves away from zero (school rounding).
- Bounds: expressions up to MAX_EXPRESSION_CHARS characters, MAX_NODES syntax nodes,
  MAX_DEPTH nesting; results up to MAX_RESULT_DIGITS digits, estimated *before* computing
  `**`, `*`, `<<`, `factorial`, `comb` and `perm`; and a work budget per expression
  (WORK_BUDGET), because Python's big-integer division and gcd are quadratic and a chain of
  operations on 10,000-digit fractions would otherwise take seconds. Every rejection is a
  `CalculatorError` whose message is meant for the model; hostile input fails in
  milliseconds.

Why not a library: simpleeval and asteval evaluate with Python semantics and bound at most
`**` (simpleeval's MAX_POWER); neither bounds factorial, comb, shifts or chains of huge
operations, nor reads decimals exactly.

Left out on purpose: variables and constants (pi, e), trigonometry and logarithms (floats),
comparisons, bitwise and/or/xor, complex numbers.
"""

from __future__ import annotations

import ast
import functools
import math
import threading
from decimal import Context, Decimal, InvalidOperation
from fractions import Fraction

MAX_EXPRESSION_CHARS = 2000
MAX_NODES = 1000
MAX_DEPTH = 200
MAX_RESULT_DIGITS = 10_000
# Estimates before computing use bits (a value with more than MAX_BITS bits has more than
# MAX_RESULT_DIGITS digits); results are then checked exactly against _LIMIT.
MAX_BITS = math.ceil(MAX_RESULT_DIGITS * math.log2(10))
_LIMIT = 10**MAX_RESULT_DIGITS
# Work units (see `_cost`) per evaluation: about a dozen operations on 10,000-digit integers,
# a few on 10,000-digit fractions: about 20 ms at most on a 2024 server core.
WORK_BUDGET = 20_000
MAX_FACTORIAL_ARG = 100_000  # far above the digit bound (3,249! has 10,000 digits); a cheap first cut
_LN2 = math.log(2)
# CPython 3.11 keeps the AST converter's recursion counter per interpreter, not per thread:
# concurrent ast.parse calls (rollout threads) can fail with SystemError "AST constructor
# recursion depth mismatch". Parsing is serialised (microseconds for these short inputs).
_PARSE_LOCK = threading.Lock()

Number = int | Fraction | float

CALCULATOR_FUNCTIONS = (
    "Operators: + - * / // % ** (power; ^ is not power) << >>, unary minus, parentheses. "
    "Numbers: integers of any size (1_000_000 is allowed), exact decimals (0.1 + 0.2 = 3/10), "
    "scientific notation (1.5e3). / is exact: 7/2 gives 7/2 = 3.5. "
    "Functions: abs(x), min(a, b, ...), max(a, b, ...), round(x) or round(x, ndigits) "
    "(halves away from zero), gcd(a, b, ...), lcm(a, b, ...), factorial(n), comb(n, k), "
    "perm(n, k), sqrt(x) (exact for perfect squares, else a decimal approximation). "
    f"Limits: expressions up to {MAX_EXPRESSION_CHARS:,} characters, results up to "
    f"{MAX_RESULT_DIGITS:,} digits."
)


class CalculatorError(ValueError):
    """The expression was rejected or could not be evaluated; str(error) is for the model."""


def _too_large() -> CalculatorError:
    return CalculatorError(f"result too large (more than {MAX_RESULT_DIGITS:,} digits)")


# ---------------------------------------------------------------------------------------
# values: sizes, normalisation, type checks


def _bits(v: Number) -> int:
    if isinstance(v, int):
        return v.bit_length()
    if isinstance(v, Fraction):
        return max(v.numerator.bit_length(), v.denominator.bit_length())
    return 0


def _finish(v: Number) -> Number:
    """Normalise a result (integral fractions become ints) and enforce the size bound."""
    if isinstance(v, Fraction):
        if v.denominator == 1:
            v = v.numerator
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise CalculatorError("result is not a finite number")
        return v
    elif isinstance(v, complex):
        raise CalculatorError("the result would be a complex number, which is not supported")
    if isinstance(v, int):
        if _bits(v) > MAX_BITS or abs(v) >= _LIMIT:
            raise _too_large()
    elif _bits(v) > MAX_BITS or abs(v.numerator) >= _LIMIT or v.denominator >= _LIMIT:
        raise _too_large()
    return v


def _whole(v: Number, what: str) -> int:
    if not isinstance(v, int):
        raise CalculatorError(f"{what} needs whole numbers, got {format_value(v)}")
    return v


# ---------------------------------------------------------------------------------------
# operators


def _mul(a: Number, b: Number) -> Number:
    # For integers the product has at least bits(a) + bits(b) - 1 bits. Fractions may cancel,
    # so they are multiplied (both operands are bounded) and checked afterwards.
    if isinstance(a, int) and isinstance(b, int) and a and b:
        if a.bit_length() + b.bit_length() - 2 > MAX_BITS:
            raise _too_large()
    return a * b


def _div(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("division by zero")
    if isinstance(a, float) or isinstance(b, float):
        return a / b
    return Fraction(a) / b


def _pow(a: Number, b: Number) -> Number:
    if isinstance(b, int):
        if isinstance(a, float):
            return a**b
        if a == 0 and b < 0:
            raise CalculatorError("division by zero (0 to a negative power)")
        if a in (0, 1, -1) or b == 0:
            return a**b
        # |a| >= 2^(bits-1) for numerator or denominator, so the result has >= that * |b| bits.
        if (_bits(a) - 1) * abs(b) > MAX_BITS:
            raise _too_large()
        return Fraction(a) ** b if b < 0 else a**b
    return _fractional_pow(a, b)


def _fractional_pow(a: Number, b: Number) -> Number:
    if a < 0:
        raise CalculatorError("a fractional power of a negative number is not a real number")
    if isinstance(b, Fraction) and not isinstance(a, float) and b.denominator <= 64:
        root = _exact_root(Fraction(a), b.denominator)
        if root is not None:
            return _pow(root, b.numerator)
    return float(a) ** float(b)


def _integer_root(m: int, n: int) -> int:
    """floor(m ** (1/n)) for m >= 0 by Newton's method on integers (exact at any size)."""
    if m < 2:
        return m
    # Start just above the root (a float estimate plus a relative margin), so Newton's
    # iteration decreases monotonically to the floor in a few steps.
    e = math.log2(m) / n
    if e < 50:
        x = int(2.0**e) + 2
    else:
        whole = int(e)
        x = int(2.0 ** (e - whole + 52)) << (whole - 52)
        x += (x >> 30) + 1
    while True:
        y = ((n - 1) * x + m // x ** (n - 1)) // n
        if y >= x:
            return x
        x = y


def _exact_root(x: Fraction, n: int) -> Fraction | None:
    """x ** (1/n) when it is rational (numerator and denominator exact n-th powers), else None."""
    num, den = _integer_root(x.numerator, n), _integer_root(x.denominator, n)
    if num**n == x.numerator and den**n == x.denominator:
        return Fraction(num, den)
    return None


def _floordiv(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("division by zero")
    return a // b


def _mod(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("modulo by zero")
    return a % b


def _lshift(a: Number, b: Number) -> Number:
    a, b = _whole(a, "<<"), _whole(b, "<<")
    if b < 0:
        raise CalculatorError("negative shift count")
    if a and a.bit_length() + b > MAX_BITS:
        raise _too_large()
    return a << b


def _rshift(a: Number, b: Number) -> Number:
    a, b = _whole(a, ">>"), _whole(b, ">>")
    if b < 0:
        raise CalculatorError("negative shift count")
    return a >> b


_BINARY_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: _mul,
    ast.Div: _div,
    ast.FloorDiv: _floordiv,
    ast.Mod: _mod,
    ast.Pow: _pow,
    ast.LShift: _lshift,
    ast.RShift: _rshift,
}

# ---------------------------------------------------------------------------------------
# functions


def _log2_factorial(n: int) -> float:
    return math.lgamma(n + 1) / _LN2


def _factorial(n: Number) -> int:
    n = _whole(n, "factorial")
    if n < 0:
        raise CalculatorError("factorial of a negative number")
    if n > MAX_FACTORIAL_ARG or _log2_factorial(n) > MAX_BITS:
        raise _too_large()
    return math.factorial(n)


def _falling_bits(n: int, k: int) -> float:
    """A lower bound on log2(n * (n-1) * ... * (n-k+1)), usable for any n >= k >= 0."""
    if n < 2**53:
        return _log2_factorial(n) - _log2_factorial(n - k) - 64  # 64: slack for float error
    return k * (n.bit_length() - 2)  # every factor is >= n/2 because k <= MAX_BITS << n


def _comb(n: Number, k: Number) -> int:
    n, k = _whole(n, "comb"), _whole(k, "comb")
    if n < 0 or k < 0:
        raise CalculatorError("comb needs non-negative arguments")
    if k > n:
        return 0
    k = min(k, n - k)
    if k > MAX_BITS or _falling_bits(n, k) - _log2_factorial(k) > MAX_BITS:  # C(n,k) >= 2^k
        raise _too_large()
    return math.comb(n, k)


def _perm(n: Number, k: Number | None = None) -> int:
    if k is None:
        return _factorial(n)
    n, k = _whole(n, "perm"), _whole(k, "perm")
    if n < 0 or k < 0:
        raise CalculatorError("perm needs non-negative arguments")
    if k > n:
        return 0
    if k > MAX_BITS or _falling_bits(n, k) > MAX_BITS:  # n!/(n-k)! >= 2^k for n >= 2
        raise _too_large()
    return math.perm(n, k)


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalculatorError("square root of a negative number")
    if isinstance(x, float):
        return math.sqrt(x)
    x = Fraction(x)
    num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
    if num * num == x.numerator and den * den == x.denominator:
        return Fraction(num, den)
    return math.sqrt(x)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    digits = 0 if ndigits is None else _whole(ndigits, "round")
    if abs(digits) > MAX_RESULT_DIGITS:
        raise CalculatorError(f"round: ndigits must be within ±{MAX_RESULT_DIGITS:,}")
    exact = Fraction(x)
    scale = Fraction(10) ** digits
    scaled = abs(exact) * scale
    rounded = math.floor(scaled + Fraction(1, 2))  # halves away from zero
    result = Fraction(rounded if exact >= 0 else -rounded) / scale
    if ndigits is None:
        return int(result)
    return float(result) if isinstance(x, float) else result


def _lcm(*args: Number) -> int:
    result = 1
    for value in args:  # each step has bounded operands, so it is checked after computing
        result = math.lcm(result, _whole(value, "lcm"))
        if result.bit_length() > MAX_BITS:
            raise _too_large()
    return result


def _gcd(*args: Number) -> int:
    return math.gcd(*(_whole(v, "gcd") for v in args))


def _min(*args: Number) -> Number:
    return min(args)


def _max(*args: Number) -> Number:
    return max(args)


# name -> (function, minimum args, maximum args or None for any)
FUNCTIONS = {
    "abs": (abs, 1, 1),
    "min": (_min, 1, None),
    "max": (_max, 1, None),
    "round": (_round, 1, 2),
    "gcd": (_gcd, 1, None),
    "lcm": (_lcm, 1, None),
    "factorial": (_factorial, 1, 1),
    "comb": (_comb, 2, 2),
    "perm": (_perm, 1, 2),
    "sqrt": (_sqrt, 1, 1),
}


def _no_cost(*args: Number) -> int:
    return 0


def _comb_cost(n: Number, k: Number) -> int:
    """math.comb(n, k) divides an intermediate of about min(k, n-k) * log2(n) bits."""
    if not isinstance(n, int) or not isinstance(k, int) or n < 0 or not 0 <= k <= n:
        return 0
    return (min(k, n - k) * n.bit_length() >> 10) ** 2


# Extra work units charged before a call, beyond its arguments and result.
_CALL_COSTS = {"comb": _comb_cost}


# ---------------------------------------------------------------------------------------
# parsing: ast -> a small tuple program, cached

_NUM, _NEG, _BIN, _CALL = range(4)

_NODE_NAMES = {
    ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "lambda",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.Compare: "comparisons", ast.BoolOp: "and/or",
    ast.IfExp: "if/else", ast.Tuple: "tuples (write 1000 or 1_000, not 1,000)", ast.List: "lists",
    ast.Dict: "dicts", ast.Set: "sets", ast.JoinedStr: "strings", ast.NamedExpr: ":=",
    ast.Starred: "* unpacking", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
}
_OP_HINTS = {ast.BitXor: "^ is not supported; write ** for powers", ast.MatMult: "@ is not supported"}
_SUPPORTED = "only numbers, + - * / // % ** << >>, parentheses and the functions " + ", ".join(FUNCTIONS)


def _check_shape(tree: ast.AST) -> None:
    """Node count and nesting depth, walked iteratively (no recursion on hostile input)."""
    count, stack = 0, [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalculatorError(f"expression too complex (more than {MAX_NODES} syntax nodes)")
        if depth > MAX_DEPTH:
            raise CalculatorError(f"expression nested too deeply (more than {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _literal(node: ast.Constant, source: str) -> tuple:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError(f"{type(value).__name__} values are not supported; {_SUPPORTED}")
    if isinstance(value, float):
        # Decimal literals are exact: re-read the source text (1e999 is not infinity here).
        text = (ast.get_source_segment(source, node) or repr(value)).replace("_", "")
        try:
            decimal = Decimal(text)
        except InvalidOperation:
            raise CalculatorError(f"cannot read the number {text[:40]!r}") from None
        if not decimal.is_finite() or abs(decimal.adjusted()) > MAX_RESULT_DIGITS or abs(
                decimal.as_tuple().exponent) > 2 * MAX_RESULT_DIGITS:
            raise _too_large()
        value = Fraction(decimal)
    return (_NUM, _finish(value))


def _lower(node: ast.AST, source: str) -> tuple:
    """Translate a whitelisted ast node into the tuple program run by `_run`."""
    if isinstance(node, ast.Constant):
        return _literal(node, source)
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return (_NEG, _lower(node.operand, source))
        if isinstance(node.op, ast.UAdd):
            return _lower(node.operand, source)
        raise CalculatorError(f"unary {type(node.op).__name__} is not supported; {_SUPPORTED}")
    if isinstance(node, ast.BinOp):
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            hint = _OP_HINTS.get(type(node.op), f"operator {type(node.op).__name__} is not supported")
            raise CalculatorError(f"{hint}; {_SUPPORTED}")
        return (_BIN, op, _lower(node.left, source), _lower(node.right, source))
    if isinstance(node, ast.Call):
        return _lower_call(node, source)
    if isinstance(node, ast.Name):
        raise CalculatorError(f"unknown name {node.id[:40]!r}; {_SUPPORTED}")
    what = _NODE_NAMES.get(type(node), type(node).__name__)
    raise CalculatorError(f"{what} not allowed; {_SUPPORTED}")


def _lower_call(node: ast.Call, source: str) -> tuple:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        name = node.func.id[:40] if isinstance(node.func, ast.Name) else "this"
        raise CalculatorError(f"unknown function {name!r}; {_SUPPORTED}")
    name = node.func.id
    function, least, most = FUNCTIONS[name]
    if node.keywords:
        raise CalculatorError(f"{name}: keyword arguments are not supported")
    if len(node.args) < least or (most is not None and len(node.args) > most):
        expected = str(least) if least == most else f"{least} or more" if most is None else f"{least} to {most}"
        raise CalculatorError(f"{name} takes {expected} arguments, got {len(node.args)}")
    return (_CALL, function, tuple(_lower(arg, source) for arg in node.args), _CALL_COSTS.get(name, _no_cost))


@functools.lru_cache(maxsize=4096)
def _compile(expression: str) -> tuple:
    """Parse, check and lower an expression; cached because tools see repeats."""
    try:
        with _PARSE_LOCK:
            tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"syntax error: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError, OverflowError, SystemError):
        raise CalculatorError("could not parse the expression") from None
    _check_shape(tree)
    return _lower(tree.body, expression)


def _cost(v: Number) -> int:
    """Work units for an operation touching v: (bits / 1024)^2, fractions counted double size.

    Python's big-integer division and gcd are quadratic; at the 10,000-digit bound one
    fraction operation costs milliseconds, so the number of such operations is budgeted.
    """
    if isinstance(v, int):
        return (v.bit_length() >> 10) ** 2
    if isinstance(v, Fraction):
        return (max(v.numerator.bit_length(), v.denominator.bit_length()) >> 9) ** 2
    return 0


def _spend(meter: list[int], units: int) -> None:
    meter[0] -= units
    if meter[0] < 0:
        raise CalculatorError("expression too expensive to compute (too many operations on very "
                              "large numbers); split it into smaller steps")


def _run(program: tuple, meter: list[int]) -> Number:
    kind = program[0]
    if kind == _NUM:
        return program[1]
    if kind == _NEG:
        return -_run(program[1], meter)
    if kind == _BIN:
        a, b = _run(program[2], meter), _run(program[3], meter)
        _spend(meter, max(_cost(a), _cost(b)))
        result = _finish(program[1](a, b))
    else:
        args = [_run(arg, meter) for arg in program[2]]
        _spend(meter, sum(map(_cost, args)) + program[3](*args))
        result = _finish(program[1](*args))
    _spend(meter, _cost(result))
    return result


_SPELLINGS = str.maketrans({"×": "*", "÷": "/", "−": "-", "\u2009": None, "\u00a0": " "})


def evaluate(expression: str) -> Number:
    """The exact value of an arithmetic expression (see CALCULATOR_FUNCTIONS).

    Returns an int, a Fraction (non-integral exact result) or a float (sqrt of a non-square,
    fractional powers). Raises CalculatorError with a message meant for the model.
    """
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression too long ({len(expression):,} characters; "
                              f"the limit is {MAX_EXPRESSION_CHARS:,})")
    expression = expression.translate(_SPELLINGS).strip().rstrip("=").strip()
    if not expression:
        raise CalculatorError("empty expression")
    try:
        return _run(_compile(expression), [WORK_BUDGET])
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("number too large for a floating-point result") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise CalculatorError(f"cannot evaluate: {exc}") from None
    except (RecursionError, MemoryError):
        raise CalculatorError("expression too complex") from None


# ---------------------------------------------------------------------------------------
# presentation

_APPROX_DIGITS = 20
_MAX_EXACT_DECIMALS = 40


def _int_text(n: int) -> str:
    # str(int) refuses more than sys.get_int_max_str_digits() (4,300) digits; Decimal does not.
    return str(n) if n.bit_length() < 4000 else str(Decimal(n))


def _terminating_decimal(q: Fraction) -> str | None:
    """The exact decimal of q if it terminates within _MAX_EXACT_DECIMALS places."""
    den, twos, fives = q.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    places = max(twos, fives)
    if den != 1 or places > _MAX_EXACT_DECIMALS:
        return None
    digits = _int_text(abs(q.numerator) * 10**places // q.denominator).rjust(places + 1, "0")
    sign = "-" if q < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")


def format_value(v: Number) -> str:
    """Text for the model: `123`, `7/2 = 3.5`, `1/3 ≈ 0.33333333333333333333`, `1.4142135623730951`."""
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return _int_text(v)
    if isinstance(v, Fraction):
        if v.denominator == 1:
            return _int_text(v.numerator)
        text = f"{_int_text(v.numerator)}/{_int_text(v.denominator)}"
        exact = _terminating_decimal(v)
        if exact is not None:
            return f"{text} = {exact}"
        approx = Context(prec=_APPROX_DIGITS).divide(Decimal(v.numerator), Decimal(v.denominator))
        return f"{text} ≈ {approx}"
    return repr(v)
