"""Math-verify worker process: reads grading requests on stdin, writes verdicts on stdout.

Why a separate process: math-verify's own timeouts use SIGALRM, which works only on the main
thread, and sympy can hang inside C code (big-integer powers) where no signal is delivered.
This script owns its main thread, so it can time each request with a repeating interval
timer, and the parent (`math_grader.MathGrader`) SIGKILLs it when even that does not answer.

It is started as a plain script (`python -P this_file`), so it imports only the standard
library and math_verify: no spo_agents package import, no torch, nothing of the trainer.

Protocol, one JSON object per line: `{"i": id, "p": answer, "r": reference}` in,
`"<id> <1|0>"` out. The first line out is `ready` once math-verify is imported and warm.
Left out: batching several requests per line (latency here is dominated by sympy itself).
"""

from __future__ import annotations

import functools
import json
import logging
import resource
import signal
import sys


class _Deadline(BaseException):
    """Raised from the timer signal; a BaseException so `except Exception` in sympy and
    math-verify cannot swallow it."""


_ARMED = {"on": False}


def _on_timer(signum, frame):
    if _ARMED["on"]:
        raise _Deadline()


def _timed(fn, timeout_s: float) -> bool:
    """fn() under a repeating interval timer; False if it runs out of time or raises."""
    try:
        try:
            _ARMED["on"] = True
            # Repeating: if one interrupt is swallowed somewhere, the next one fires.
            signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)
            return bool(fn())
        finally:
            _ARMED["on"] = False
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
    except (_Deadline, Exception):
        _ARMED["on"] = False  # the timer may have fired inside `finally`
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        return False


def _limit_memory(limit_mb: int) -> None:
    if limit_mb <= 0:
        return
    limit = limit_mb * 1024 * 1024
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        pass


def main() -> int:
    limit_mb, inner_timeout_s = int(sys.argv[1]), float(sys.argv[2])
    _limit_memory(limit_mb)
    sys.setrecursionlimit(3000)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())

    @functools.lru_cache(maxsize=4096)
    def parse_reference(reference: str):
        return parse("\\boxed{" + reference + "}", extraction_config=config, parsing_timeout=None)

    def grade(answer: str, reference: str) -> bool:
        gold = parse_reference(reference)
        pred = parse("\\boxed{" + answer + "}", extraction_config=config, parsing_timeout=None)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=None))

    signal.signal(signal.SIGALRM, _on_timer)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    grade("\\frac{1}{2}", "0.5")  # warm-up: grammar tables, sympy caches
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            ident, answer, reference = int(request["i"]), str(request["p"]), str(request["r"])
        except (ValueError, KeyError, TypeError):
            continue
        verdict = _timed(lambda: grade(answer, reference), inner_timeout_s)
        out.write(f"{ident} {int(verdict)}\n".encode())
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
