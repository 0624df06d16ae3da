"""`SandboxToolEnv`: a `ToolEnv` whose `python` tool runs model-written code in the sandbox.

Part of the environment kit (import it from `spo_agents.env.sandbox_tool`): spo/PythonExec-v0
and spo/ToolMath-v0 use it, and so can any environment that wants a python tool. Three
decisions live here:

- One pool per configuration per process. A trainer makes one environment per rollout slot,
  and gymnasium's checker makes more; if each started its own helper processes, processes and
  start-up time would grow with the number of slots. `shared_pool(config)` keeps one
  `SandboxPool` per configuration (keyed by the config and the process id, so a forked child
  builds its own, as the sandbox requires), created lazily on the first call: making an
  environment starts nothing. Pools close at interpreter exit (their own finalizer).
- Stateless by default; with `stateful=True` each episode gets one `pool.session()` (variables
  persist between the tool calls of that episode only), opened at the first call and killed
  in `end_episode()` (on reset, at the episode's end, on close).
- Copies (pickle, `copy.deepcopy`: vector-env workers, Ray actors) keep everything but the
  sandbox session, which belongs to this process (`transient_attributes`); the pool is looked
  up per call. A stateful copy made mid-episode opens a fresh session at its next call, whose
  result says the interpreter was restarted (its variables are lost), as after a crash.
- A failure of the sandbox itself (it cannot start, a helper died under a session, the pool
  was closed) is not the model's doing: the episode ends at once with `truncated=True`,
  reward 0 and `info["sandbox_error"]`, and the next episode tries again (a closed or broken
  pool is dropped from the registry; a pool that could not start is retried after
  `RETRY_AFTER_S`). Timeouts, crashes and exceptions of the model's code are ordinary tool
  output ("[timed out after 5 s]"), and the episode goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Callable, Iterator, Mapping, SupportsFloat

from spo_agents.env import Tool, ToolEnv
from spo_agents.sandbox import (
    ExecResult,
    ExecStatus,
    SandboxConfig,
    SandboxConfigError,
    SandboxError,
    SandboxPool,
    SandboxSession,
)

# How long a configuration whose pool failed to start is refused before it is tried again.
RETRY_AFTER_S = 30.0

_POOLS: dict[tuple[int, SandboxConfig], SandboxPool] = {}
_START_FAILURES: dict[tuple[int, SandboxConfig], tuple[float, str]] = {}
_REGISTRY_LOCK = threading.Lock()

STATELESS_DESCRIPTION = (
    "Run Python 3 code in a fresh, isolated interpreter (no network, no files kept, time and memory "
    "limits) and return what it prints (stdout, then stderr and errors). Nothing is kept between calls: "
    "print() every result you need. math, itertools, fractions, collections, re, json, statistics, numpy "
    "and sympy are available."
)
STATEFUL_DESCRIPTION = (
    "Run Python 3 code in this conversation's isolated interpreter (no network, time and memory limits) "
    "and return what it prints (stdout, then stderr and errors). Variables and functions persist between "
    "calls until the interpreter is restarted (after a timeout or crash). math, itertools, fractions, "
    "collections, re, json, statistics, numpy and sympy are available."
)


def as_sandbox_config(sandbox: SandboxConfig | Mapping[str, Any] | None) -> SandboxConfig:
    """A `SandboxConfig` from a config, a dict of its fields (as `gymnasium.make` kwargs), or None."""
    if sandbox is None:
        return SandboxConfig()
    if isinstance(sandbox, SandboxConfig):
        return sandbox
    return SandboxConfig(**dict(sandbox))


def _key(config: SandboxConfig) -> tuple[int, SandboxConfig]:
    # `stateful` only tells environments how to use the pool; one pool serves both ways.
    return os.getpid(), config.model_copy(update={"stateful": False})


def shared_pool(config: SandboxConfig) -> SandboxPool:
    """The process-wide pool for `config`, started on first use.

    Raises `SandboxError` (or `SandboxConfigError`) when no pool can be started; that failure
    is remembered for `RETRY_AFTER_S` so that a broken machine does not pay the start-up
    attempt on every call.
    """
    key = _key(config)
    with _REGISTRY_LOCK:
        pool = _POOLS.get(key)
        if pool is not None:
            return pool
        failed = _START_FAILURES.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER_S:
            raise SandboxError(failed[1])
        try:
            pool = SandboxPool(key[1])
        except (SandboxError, SandboxConfigError) as exc:
            _START_FAILURES[key] = (time.monotonic(), f"the sandbox could not start: {exc}")
            raise SandboxError(_START_FAILURES[key][1]) from exc
        _START_FAILURES.pop(key, None)
        _POOLS[key] = pool
        return pool


def discard_pool(pool: SandboxPool) -> None:
    """Forget (and close) a pool that stopped serving, so the next call starts a fresh one."""
    with _REGISTRY_LOCK:
        for key, known in list(_POOLS.items()):
            if known is pool:
                del _POOLS[key]
    pool.close()


def pool_serves(pool: SandboxPool) -> bool:
    """False when `pool` refuses calls (closed, or owned by another process); probed after a failure."""
    try:
        pool.run("pass")
    except SandboxError:
        return False
    return True


def close_shared_pools() -> None:
    """Close every pool of this process (tests; pools also close at interpreter exit)."""
    with _REGISTRY_LOCK:
        pools = [pool for (pid, _), pool in _POOLS.items() if pid == os.getpid()]
        _POOLS.clear()
        _START_FAILURES.clear()
    for pool in pools:
        pool.close()


class SandboxToolEnv(ToolEnv):
    """A `ToolEnv` with a `python` tool backed by the shared sandbox pool (see module doc).

    Args:
        tasks: as for `ToolEnv`.
        sandbox: a `SandboxConfig` or a dict of its fields (limits, helpers, isolation mode).
        stateful: one interpreter per episode instead of a fresh one per call (also turned on
            by `SandboxConfig(stateful=True)`).
        **kwargs: every other `ToolEnv` argument.
    """

    transient_attributes = ("_session",)  # a session belongs to this process; copies open their own

    def __init__(self, tasks, *, sandbox: SandboxConfig | Mapping[str, Any] | None = None,
                 stateful: bool = False, **kwargs):
        self._session: SandboxSession | None = None
        self._episode_had_session = False  # survives copies, unlike the session itself
        self._sandbox_failure: str | None = None
        self.sandbox_config = as_sandbox_config(sandbox)
        self.stateful = bool(stateful or self.sandbox_config.stateful)
        description = STATEFUL_DESCRIPTION if self.stateful else STATELESS_DESCRIPTION
        python_tool = Tool.from_function(self.python, name="python", description=description)
        super().__init__(tasks, tools=[python_tool, *kwargs.pop("tools", ())], **kwargs)

    # ----- the tool -------------------------------------------------------------------------
    def python(self, code: str) -> str:
        """Run Python code in the sandbox.

        Args:
            code: Python source code; print() the values you want to see.
        """
        return self.execute(code).to_observation(self.max_tool_output_chars)

    def sandbox_pool(self) -> SandboxPool:
        """The pool this environment uses (override to inject another one)."""
        return shared_pool(self.sandbox_config)

    def execute(self, code: str, *, timeout_s: float | None = None, fresh: bool = False) -> ExecResult:
        """Run `code` (in the episode's session when stateful, unless `fresh`); never raises.

        A sandbox failure is returned as a `sandbox_error` result and marks the current step,
        which then ends the episode (see `step`).
        """
        pool = None
        try:
            pool = self.sandbox_pool()
            if self.stateful and not fresh:
                restarted = self._session is None and self._episode_had_session  # a copy's first call
                if self._session is None:
                    self._session, self._episode_had_session = pool.session(), True
                result = self._session.run(code, timeout_s=timeout_s)
                if restarted:
                    result = dataclasses.replace(result, session_reset=True)
            else:
                result = pool.run(code, timeout_s=timeout_s)
        except (SandboxError, SandboxConfigError) as exc:
            result = ExecResult.sandbox_failure(str(exc))
        return self._checked(result, pool)

    def _checked(self, result: ExecResult, pool: SandboxPool | None) -> ExecResult:
        if result.status is ExecStatus.SANDBOX_ERROR:
            self._sandbox_failure = result.error or "sandbox error"
            if pool is not None and not pool_serves(pool):
                discard_pool(pool)
        return result

    @contextlib.contextmanager
    def fresh_session(self) -> Iterator[Callable[..., ExecResult]]:
        """A sandbox session of its own (for grading: several calls, nothing of the episode's),
        killed on exit. Yields `run(code, timeout_s=None) -> ExecResult`, which never raises; a
        sandbox failure marks the step as `execute` does."""
        pool, session, failure = None, None, None
        try:
            pool = self.sandbox_pool()
            session = pool.session()
        except (SandboxError, SandboxConfigError) as exc:
            failure = str(exc)

        def run(code: str, timeout_s: float | None = None) -> ExecResult:
            try:
                result = session.run(code, timeout_s=timeout_s) if session is not None else \
                    ExecResult.sandbox_failure(failure or "no sandbox session")
            except (SandboxError, SandboxConfigError) as exc:
                result = ExecResult.sandbox_failure(str(exc))
            return self._checked(result, pool)

        try:
            yield run
        finally:
            if session is not None:
                try:
                    session.close()
                except Exception:  # a session of a closed pool is already gone
                    pass

    # ----- episode lifecycle ----------------------------------------------------------------
    def end_episode(self) -> None:
        session, self._session, self._episode_had_session = self._session, None, False
        if session is not None:
            try:
                session.close()
            except Exception:  # a session of a closed pool is already gone
                pass

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        self._sandbox_failure = None
        observation, reward, terminated, truncated, info = super().step(action)
        if self._sandbox_failure is not None:
            # not the model's doing: cut the episode short, with no reward either way
            info["sandbox_error"] = self._sandbox_failure
            reward, terminated, truncated = 0.0, False, True
            self._sandbox_failure = None
            self.end_episode()
        return observation, reward, terminated, truncated, info

    def describe(self) -> dict[str, Any]:
        summary = super().describe()
        summary["stateful"] = self.stateful
        return summary
