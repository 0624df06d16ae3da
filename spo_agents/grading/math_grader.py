"""`MathGrader`: reward 1.0/0.0 for the last boxed answer of a reply, safe on hostile input.

Why: during RL the policy writes whatever raises its reward, and symbolic engines hang on
answers such as `9^{9^{9^9}}` or `100000!`. Grading must stay cheap for honest answers and
bounded for hostile ones, from any thread of a trainer.

How one `grade` call runs:
1. Replies longer than `max_reply_chars` score 0. Tool-call, tool-response and fenced code
   blocks are removed (`boxed.answer_region`); the last `\\boxed{}` is the answer; none or
   an empty one scores 0. Answers longer than `max_answer_chars` score 0.
2. Fast path, in-process: `normalize.equal_normalized` (exact strings and numbers). A match
   is final (1.0). Two different plain integers are final too (0.0). This keeps p50 low.
3. Otherwise math-verify decides, in a worker process (`workers.WorkerPool`) with a hard
   deadline of `timeout_s`: a worker that does not answer in time is SIGKILLed, the answer
   scores 0 and a fresh worker starts. Inside the worker a repeating timer stops sympy at
   80% of the deadline, so most slow answers cost no restart.
So the grader says "right" when either the fallback rules or math-verify do.

Backends: "auto" uses math-verify when it is importable, else the fallback alone;
"math_verify" requires it; "fallback" never starts a process. With "auto", a worker that
cannot start (broken install) switches the grader to the fallback with a warning.

Threads: `grade` may be called from many threads at once; each call takes one of
`workers` processes (default 2, warm ones first) and waits when all are busy. `timeout_s`
bounds the time spent on one answer, not the wait for a free worker nor the first start of
a worker (`warm_up()` starts them ahead of time).

Hedged answers: math-verify reads `1 \\text{ or } 2`, `1, 2` and `\\pm 1` as sets, which do
not equal a single number, so hedging scores 0; chains such as `x = 5 = 6` or `5 \\lor 6`
count as their last value only (one value, no second chance). Percent: `50\\%` scores 1
for a reference of `50` or `0.5` (see normalize.py).

Multi-part references: a reference that holds several boxes (`\\boxed{1}\\boxed{2}`) has one
part per box, and every part is required, in order: the reply's last box must list them
comma-separated (`\\boxed{1, 2}`), or its last k boxes must hold them (`\\boxed{1}, \\boxed{2}`).
`\\boxed{2}` alone scores 0 (it used to be graded against the last box of the reference only).
Each part is graded like a single answer. A reference without boxes, or with one, is one part
(`1, 2` stays one list answer, which math-verify compares as a set).

Left out: grading whole transcripts (the caller passes the final reply), partial credit.
"""

from __future__ import annotations

import atexit
import importlib.util
import threading
import warnings
from typing import Literal

from spo_agents.grading.boxed import answer_region, extract_all_boxes, extract_boxed, extract_last_boxes
from spo_agents.grading.normalize import equal_normalized, is_plain_integer, list_length, normalize_answer, split_list
from spo_agents.grading.workers import WorkerPool, WorkerStartError

Backend = Literal["auto", "math_verify", "fallback"]
# The worker's own timer stops sympy at this fraction of the deadline; the kill is the backstop.
INNER_TIMEOUT_FRACTION = 0.8


def math_verify_available() -> bool:
    """True when math-verify can be imported (checked without importing it)."""
    return importlib.util.find_spec("math_verify") is not None


class MathGrader:
    """Grades the last boxed answer of a model reply against a reference answer.

    Args:
        backend: "auto", "math_verify" or "fallback" (see module doc).
        timeout_s: hard limit on the worker time for one answer; on expiry the answer
            scores 0 and the worker is killed and replaced.
        workers: number of math-verify processes (concurrent gradings).
        max_answer_chars: longer boxed answers score 0 without being parsed.
        max_reply_chars: longer replies score 0 without being scanned.
        memory_limit_mb: address-space limit of each worker (0: none).
        startup_timeout_s: how long to wait for a worker to import math-verify.
    """

    def __init__(
        self,
        backend: Backend = "auto",
        *,
        timeout_s: float = 3.0,
        workers: int = 2,
        max_answer_chars: int = 1000,
        max_reply_chars: int = 8_000_000,
        memory_limit_mb: int = 2048,
        startup_timeout_s: float = 60.0,
    ):
        if backend not in ("auto", "math_verify", "fallback"):
            raise ValueError(f"backend must be 'auto', 'math_verify' or 'fallback', not {backend!r}")
        if backend == "math_verify" and not math_verify_available():
            raise ImportError("backend='math_verify' needs math-verify: pip install 'spo-agents[math]'")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._requested = backend
        self._backend = "math_verify" if backend != "fallback" and math_verify_available() else "fallback"
        self.timeout_s = float(timeout_s)
        self.workers = max(1, int(workers))
        self.max_answer_chars = int(max_answer_chars)
        self.max_reply_chars = int(max_reply_chars)
        self.memory_limit_mb = int(memory_limit_mb)
        self.startup_timeout_s = float(startup_timeout_s)
        self._lock = threading.Lock()
        self._pool: WorkerPool | None = None
        self._closed = False

    @property
    def backend(self) -> str:
        """The backend in use: "math_verify" or "fallback"."""
        return self._backend

    def grade(self, pred_text: str, reference: str) -> float:
        """1.0 if the final answer of pred_text (outside tool/code blocks) equals reference.

        The final answer is the last box; for a reference of k > 1 boxes it may also be the
        last k boxes (see "Multi-part references" in the module doc).
        """
        if not isinstance(pred_text, str) or len(pred_text) > self.max_reply_chars:
            return 0.0
        parts = reference_parts(reference)
        region = answer_region(pred_text)
        answer = extract_boxed(region, max_chars=self.max_answer_chars)
        if answer is None:
            return 0.0
        if len(parts) > 1 and len(split_list(answer)) != len(parts):
            boxes = extract_last_boxes(region, len(parts), max_chars=self.max_answer_chars)
            if len(boxes) < len(parts) or None in boxes:
                return 0.0
            return self._grade_parts(boxes, parts)
        return self._grade_against(answer, parts)

    def grade_answer(self, answer: str, reference: str) -> float:
        """1.0 if an already extracted answer equals reference, else 0.0.

        A reference of k > 1 boxes needs an answer that lists k comma-separated parts.
        """
        return self._grade_against(str(answer), reference_parts(reference))

    def _grade_against(self, answer: str, parts: list[str]) -> float:
        if len(parts) == 1:
            return self._grade_one(answer, parts[0])
        items = split_list(answer)
        return self._grade_parts(items, parts) if len(items) == len(parts) else 0.0

    def _grade_parts(self, answers: list[str], parts: list[str]) -> float:
        """1.0 only when every answer equals its part, in order."""
        for answer, part in zip(answers, parts, strict=True):
            if self._grade_one(answer, part) != 1.0:
                return 0.0
        return 1.0

    def _grade_one(self, answer: str, reference: str) -> float:
        if self._closed:
            raise RuntimeError("the math grader is closed")
        answer, reference = answer.strip(), reference.strip()
        if not answer or not reference or len(answer) > self.max_answer_chars:
            return 0.0
        a, b = normalize_answer(answer), normalize_answer(reference)
        if list_length(a) != list_length(b):  # `1` for `1, 1`: sets would call them equal
            return 0.0
        if equal_normalized(a, b):
            return 1.0
        if self._backend == "fallback" or (is_plain_integer(a) and is_plain_integer(b)):
            return 0.0
        return self._grade_in_worker(answer, reference)

    def _grade_in_worker(self, answer: str, reference: str) -> float:
        pool = self._get_pool()
        try:
            verdict = pool.ask(answer, reference, self.timeout_s, self.startup_timeout_s)
        except WorkerStartError as exc:
            self._start_failed(exc)
            return 0.0
        return 1.0 if verdict else 0.0

    def _start_failed(self, exc: WorkerStartError) -> None:
        """backend="math_verify": raise. "auto": warn and grade with the fallback from now on."""
        if self._requested == "math_verify":
            raise exc
        warnings.warn(f"{exc}; grading with the fallback grader from now on", RuntimeWarning, stacklevel=4)
        self._backend = "fallback"

    def _get_pool(self) -> WorkerPool:
        with self._lock:
            if self._closed:
                raise RuntimeError("the math grader is closed")
            if self._pool is not None and not self._pool.owned_here():
                self._pool.abandon()  # we run in a forked child: the parent's workers are not ours
                self._pool = None
            if self._pool is None:
                inner = self.timeout_s * INNER_TIMEOUT_FRACTION
                self._pool = WorkerPool(self.workers, self.memory_limit_mb, inner)
            return self._pool

    @property
    def kills(self) -> int:
        """Workers killed so far for missing the deadline (or dying) in this process."""
        pool = self._pool
        return pool.kills if pool is not None else 0

    def worker_pids(self) -> list[int]:
        """Process ids of the running math-verify workers (for monitoring)."""
        pool = self._pool
        return pool.pids() if pool is not None and pool.owned_here() else []

    def warm_up(self) -> None:
        """Start all worker processes now and wait until they are ready (no-op for fallback)."""
        if self._backend == "math_verify":
            try:
                self._get_pool().warm_up(self.startup_timeout_s)
            except WorkerStartError as exc:
                self._start_failed(exc)

    def close(self) -> None:
        """Kill the worker processes. The grader cannot be used afterwards."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and pool.owned_here():
            pool.close()

    def __enter__(self) -> MathGrader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        try:
            if pool is not None and pool.owned_here():
                pool.close()
        except Exception:  # interpreter shutdown: the workers exit on stdin EOF anyway
            pass

    def __getstate__(self) -> dict:
        # Pickled graders (e.g. sent to subprocess envs) start their own workers.
        state = self.__dict__.copy()
        state["_lock"], state["_pool"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def reference_parts(reference: object) -> list[str]:
    """The parts of a reference answer: the content of each of its boxes, else the whole text.

    `\\boxed{1}\\boxed{2}` has two parts, both required; `1, 2` and `\\boxed{1, 2}` have one.
    An empty or unclosed box of a reference is an empty part, which nothing matches.
    """
    text = str(reference).strip()
    if "\\boxed" not in text and "\\fbox" not in text:
        return [text]
    boxes = extract_all_boxes(text)
    return [box or "" for box in boxes] if boxes else [text]


_SHARED: MathGrader | None = None
_SHARED_LOCK = threading.Lock()


def shared_math_grader() -> MathGrader:
    """The process-wide grader (default settings), created on first use."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED._closed:
            _SHARED = MathGrader()
            atexit.register(_SHARED.close)
        return _SHARED
