"""Stateful sandbox sessions: one sandboxed interpreter per episode, killed when it ends.

A session holds the six file descriptors of a looping runner (control, stdout, stderr and
status pipes, the supervisor's socket, a pidfd), received from the helper that forked it. Each
call borrows any idle helper of the pool and lends it these descriptors, so the helper's
deadline and output cap apply exactly as for stateless calls, and sessions cost the pool no
helper while idle. The runner is a copy-on-write fork of a pre-warmed helper: cheap to keep.

When a call times out, exceeds the output cap, or the code exits the interpreter, the runner
is gone and its variables with it: that call's result has `session_reset=True` (its
observation says so) and the next call starts a fresh interpreter. `close()` (or leaving the
`with` block, or garbage collection, or closing the pool) kills the runner and everything it
started, and returns only when it is dead.

Left out: per-call stdin at the file-descriptor level (`sys.stdin` is replaced per call;
fd 0 stays /dev/null), and separating output of background processes between calls.
"""

from __future__ import annotations

import asyncio
import functools
import os
import select
import signal
import threading
import weakref

from spo_agents.sandbox.result import ExecResult

KILL_WAIT_S = 5.0


class _RunnerFds:
    """The descriptors of one live session runner; closing kills the runner first."""

    def __init__(self, fds: list[int], pid: int):
        self.fds, self.pid = fds, pid

    @property
    def pidfd(self) -> int:
        return self.fds[5]

    def close(self) -> None:
        if not self.fds:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            select.select([self.pidfd], [], [], KILL_WAIT_S)
        except (ProcessLookupError, OSError):
            pass
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def _finalize(state: dict) -> None:
    if state["runner"] is not None:
        state["runner"].close()
        state["runner"] = None


class SandboxSession:
    """Created by `SandboxPool.session()`; thread-safe (calls are serialised)."""

    def __init__(self, pool, slot: int):
        self._pool = pool
        self._slot = slot
        self._uid = pool.config.session_uid(slot)
        self._lock = threading.Lock()
        self._state = {"runner": None}
        self._ready_known = False
        self._closed = False
        self._finalizer = weakref.finalize(self, _finalize, self._state)

    @property
    def runner_pid(self) -> int | None:
        """Host PID of the current session interpreter (None before the first call)."""
        runner = self._state["runner"]
        return runner.pid if runner is not None else None

    def _open(self) -> _RunnerFds:
        from spo_agents.sandbox.pool import HelperFailure, SandboxError

        try:
            reply, _, fds = self._pool.submit({"op": "open_session", "uid": self._uid}, b"")
        except HelperFailure as exc:
            raise SandboxError(f"could not open a sandbox session: {exc}") from exc
        if not reply.get("ok") or len(fds) != 6:
            for fd in fds:
                os.close(fd)
            raise SandboxError(f"could not open a sandbox session: {reply.get('error', 'no descriptors')}")
        self._ready_known = False
        return _RunnerFds(fds, int(reply["pid"]))

    def run(self, code: str, timeout_s: float | None = None, stdin: str | bytes | None = None) -> ExecResult:
        """Run `code` in this session's interpreter (globals persist between calls)."""
        from spo_agents.sandbox.pool import HelperFailure, SandboxError

        request = self._pool.encode_request(code, timeout_s, stdin)
        if isinstance(request, ExecResult):
            return request
        header, payload = request
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox session is closed")
            try:
                if self._state["runner"] is None:
                    self._state["runner"] = self._open()
                header["ready_known"] = self._ready_known
                reply, out, _ = self._pool.submit(header, payload, self._state["runner"].fds)
            except (HelperFailure, SandboxError) as exc:
                _finalize(self._state)
                return ExecResult.sandbox_failure(str(exc), session_reset=True)
            result = ExecResult.from_wire(reply, out)
            self._ready_known = self._ready_known or bool(reply.get("ready_known"))
            if not reply.get("session_alive"):
                _finalize(self._state)
            return result

    async def arun(self, code: str, timeout_s: float | None = None, stdin: str | bytes | None = None) -> ExecResult:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool.executor(), functools.partial(self.run, code, timeout_s, stdin))

    def close(self) -> None:
        """Kill the interpreter and everything it started; returns when it is dead."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._finalizer()
            self._pool.release_session_slot(self._slot)

    def __enter__(self) -> "SandboxSession":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
