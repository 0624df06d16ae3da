"""Watching one call from outside the sandbox: deadline, output cap, kill, exit status.

A runner is reached through a `RunnerHandle`: the write end of its control pipe, the read
ends of its stdout/stderr/status pipes, a pidfd (a race-free handle on the process, usable
from any process it is passed to), and a socket on which its supervisor process sends the
runner's wait status once it is gone. `supervise_call` sends the request, reads the streams
with `poll`, and kills with SIGKILL through the pidfd at the deadline or the moment the
output passes its cap. Timing and killing happen here, in the helper, never inside the
sandbox, so nothing the snippet does to its signals, threads or C code can stop it.

When a namespaced runner is found dead, its whole PID namespace is already empty (the kernel
lets a namespace's init finish exiting only after every other member is gone), so "the call
returned" implies "nothing it started survives". That guarantee is weaker in bubblewrap mode
(the namespace's init dies an instant later) and absent in the unisolated mode.

Nothing read from the runner is trusted: in a session the snippet owns the status pipe's
write end (fd 4), so a status frame must be small (`MAX_STATUS_FRAME`), valid JSON, a dict,
and the one event the runner's state allows (ready/setup_error before readiness, then one
"done" with an int exit code per call). Anything else stops that runner (and only it) and the
call reports what the code did; the helper never buffers more than the cap. A runner whose
end cannot be told (its supervisor is gone too) is a sandbox error, never "ok".
"""

from __future__ import annotations

import enum
import json
import os
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass, field

from spo_agents.sandbox.runner import FRAME

READ_SIZE = 65536
DRAIN_S = 5.0
MAX_STATUS_FRAME = 4096
STATUS = struct.Struct("!i")  # the runner's pid, sent with its pidfd
FINAL = struct.Struct("!ii")  # the runner's wait status, and whether its cgroup saw an OOM kill
_EVENT_MASK = select.POLLIN | select.POLLHUP | select.POLLERR


@dataclass
class RunnerHandle:
    """The outside's grip on one runner; `fds()` order is what travels between processes."""

    ctl_w: int
    out_r: int
    err_r: int
    status_r: int
    sup: socket.socket
    pidfd: int | None = None
    pid: int = 0

    def fds(self) -> list[int]:
        return [self.ctl_w, self.out_r, self.err_r, self.status_r, self.sup.fileno(), self.pidfd]

    @classmethod
    def from_fds(cls, fds: list[int], pid: int = 0) -> "RunnerHandle":
        ctl_w, out_r, err_r, status_r, sup_fd, pidfd = fds
        for fd in (ctl_w, out_r, err_r, status_r):
            os.set_blocking(fd, False)
        return cls(ctl_w, out_r, err_r, status_r, socket.socket(fileno=sup_fd), pidfd, pid)

    def receive_pidfd(self, timeout_s: float = 10.0) -> None:
        """The supervisor sends the runner's pid and pidfd right after forking it."""
        self.sup.settimeout(timeout_s)
        message, fds, _, _ = socket.recv_fds(self.sup, STATUS.size, 1)
        if len(message) != STATUS.size or not fds:
            raise OSError("the sandbox supervisor exited before starting the runner")
        self.pid, self.pidfd = STATUS.unpack(message)[0], fds[0]

    def kill(self) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for fd in (self.ctl_w, self.out_r, self.err_r, self.status_r, self.pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.sup.close()


class Outcome(str, enum.Enum):
    DONE = "done"  # a session call finished; the runner lives on
    EXITED = "exited"  # the runner exited (always, for a stateless call)
    TIMED_OUT = "timed_out"
    OUTPUT_LIMIT = "output_limit"
    STATUS_VIOLATION = "status_violation"  # the code wrote to the status pipe; the runner was stopped


@dataclass
class CallFacts:
    outcome: Outcome
    duration_s: float
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    signal: int | None = None
    setup_error: str | None = None
    violation: str | None = None
    status_lost: bool = False  # the runner is gone and nobody could tell how it ended
    oom_killed: bool = False
    runner_alive: bool = False
    ready: bool = False


class _Call:
    """State of one supervised call (the poll loop's bookkeeping)."""

    def __init__(self, handle: RunnerHandle, request: bytes, output_limit: int):
        self.handle = handle
        self.pending = memoryview(request)
        self.output_limit = output_limit
        self.stdout, self.stderr = bytearray(), bytearray()
        self.status_buffer = bytearray()
        self.ready = False
        self.setup_error: str | None = None
        self.done_exit_code: int | None = None
        self.violation: str | None = None
        self.truncated = False
        self.poller = select.poll()
        self.open_fds: set[int] = set()

    def register(self) -> None:
        self.poller.register(self.handle.ctl_w, select.POLLOUT)
        for fd in (self.handle.out_r, self.handle.err_r, self.handle.status_r, self.handle.pidfd):
            self.poller.register(fd, select.POLLIN)
            self.open_fds.add(fd)

    def forget(self, fd: int) -> None:
        self.poller.unregister(fd)
        self.open_fds.discard(fd)

    def write_request(self, event: int) -> None:
        fd = self.handle.ctl_w
        if event & (select.POLLERR | select.POLLHUP):
            self.poller.unregister(fd)
            return
        try:
            self.pending = self.pending[os.write(fd, self.pending[:READ_SIZE]):]
        except BlockingIOError:
            return
        except BrokenPipeError:
            self.pending = self.pending[:0]
        if not self.pending:
            self.poller.unregister(fd)

    def read_stream(self, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if not chunk:
            self.forget(fd)
            return
        room = self.output_limit - len(self.stdout) - len(self.stderr)
        if len(chunk) > room:
            chunk, self.truncated = chunk[:max(room, 0)], True
        (self.stdout if fd == self.handle.out_r else self.stderr).extend(chunk)

    def read_status(self) -> None:
        try:
            chunk = os.read(self.handle.status_r, MAX_STATUS_FRAME)
        except BlockingIOError:
            return
        if not chunk:
            self.forget(self.handle.status_r)
            return
        if self.violation is not None:
            return  # the runner is being stopped: discard the rest unread
        self.status_buffer += chunk
        while len(self.status_buffer) >= FRAME.size and self.violation is None:
            header_len, payload_len = FRAME.unpack(self.status_buffer[:FRAME.size])
            if payload_len or header_len > MAX_STATUS_FRAME - FRAME.size:
                self.violation = f"a status frame of {header_len + payload_len} bytes"
                return
            end = FRAME.size + header_len
            if len(self.status_buffer) < end:
                return
            try:
                frame = json.loads(bytes(self.status_buffer[FRAME.size:end]))
            except (ValueError, RecursionError):
                frame = None
            del self.status_buffer[:end]
            self.violation = self._on_status(frame)

    def _on_status(self, frame) -> str | None:
        """Apply one frame; a description of what is wrong with it, or None."""
        event = frame.get("event") if isinstance(frame, dict) else None
        if event == "ready" and not self.ready:
            self.ready = True
        elif event == "setup_error" and not self.ready:
            self.setup_error = str(frame.get("error"))[:2000]
        elif event == "done" and self.ready and self.done_exit_code is None:
            exit_code = frame.get("exit_code")
            if type(exit_code) is not int or not 0 <= exit_code <= 255:
                return "a done frame without a valid exit code"
            self.done_exit_code = exit_code
        else:
            return f"an unexpected status frame {str(frame)[:80]!r}"
        return None

    def stale_status(self) -> bool:
        """A session's status pipe must be empty between calls; data there was written by code."""
        try:
            chunk = os.read(self.handle.status_r, MAX_STATUS_FRAME)
        except BlockingIOError:
            return False
        if chunk:
            self.violation = "status data written between calls"
        return bool(chunk)

    def drain(self, until_eof: bool) -> None:
        """Read what is left; until end of file (bounded) once the runner is gone."""
        deadline = time.monotonic() + DRAIN_S
        streams = [fd for fd in (self.handle.out_r, self.handle.err_r, self.handle.status_r) if fd in self.open_fds]
        while streams and time.monotonic() < deadline:
            if until_eof:
                select.select(streams, [], [], max(0.0, deadline - time.monotonic()))
            progressed = False
            for fd in list(streams):
                before = (len(self.stdout), len(self.stderr), len(self.status_buffer))
                if fd == self.handle.status_r:
                    self.read_status()
                else:
                    self.read_stream(fd)
                if fd not in self.open_fds:
                    streams.remove(fd)
                progressed |= before != (len(self.stdout), len(self.stderr), len(self.status_buffer))
            if not until_eof and not progressed:
                return


def _wait_status(handle: RunnerHandle) -> tuple[int, bool] | None:
    """(wait status, OOM-killed) from the runner's supervisor; None if it is gone as well."""
    handle.sup.settimeout(DRAIN_S)
    data = b""
    try:
        while len(data) < FINAL.size:
            chunk = handle.sup.recv(FINAL.size - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    if len(data) != FINAL.size:
        return None
    status, oom = FINAL.unpack(data)
    return status, bool(oom)


def supervise_call(handle: RunnerHandle, request: bytes, timeout_s: float, output_limit: int,
                   ready_known: bool = False) -> CallFacts:
    """Run one request on `handle`'s runner and collect what happened.

    `ready_known`: the runner announced readiness in an earlier call (a session), so dying
    now is the snippet's doing, not a failed setup.
    """
    if handle.pidfd is None:
        handle.receive_pidfd()
    call = _Call(handle, request, output_limit)
    call.ready = ready_known
    start = time.monotonic()
    if ready_known and call.stale_status():
        outcome = Outcome.STATUS_VIOLATION
    else:
        call.register()
        outcome = _poll_until_outcome(call, start + timeout_s)
    facts = CallFacts(outcome=outcome, duration_s=time.monotonic() - start)
    if outcome is Outcome.DONE:
        call.drain(until_eof=False)
        if call.violation is not None:
            outcome = Outcome.STATUS_VIOLATION
        elif call.truncated:
            outcome = Outcome.OUTPUT_LIMIT
    if outcome is Outcome.DONE:
        facts.exit_code, facts.runner_alive = call.done_exit_code, True
    else:
        _collect_end(call, facts, outcome)
    facts.outcome, facts.stdout, facts.stderr, facts.setup_error = outcome, call.stdout, call.stderr, call.setup_error
    facts.violation, facts.ready = call.violation, call.ready
    return facts


def _collect_end(call: _Call, facts: CallFacts, outcome: Outcome) -> None:
    """The runner is gone or must go: kill it, read what is left, learn how it ended."""
    if outcome is not Outcome.EXITED:
        call.handle.kill()
    call.drain(until_eof=True)
    ended = _wait_status(call.handle)
    if ended is None:
        facts.status_lost = True
    else:
        status, facts.oom_killed = ended
        if os.WIFSIGNALED(status):
            facts.signal = os.WTERMSIG(status)
        else:
            facts.exit_code = os.WEXITSTATUS(status)
    if call.setup_error is None and not call.ready:
        tail = bytes(call.stderr[-2000:]).decode("utf-8", "replace").strip()
        call.setup_error = f"the sandboxed process exited before it was ready: {tail or 'no message'}"


def _poll_until_outcome(call: _Call, deadline: float) -> Outcome:
    handle = call.handle
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Outcome.TIMED_OUT
        exited = False
        for fd, event in call.poller.poll(max(1, int(remaining * 1000) + 1)):
            if fd == handle.ctl_w:
                call.write_request(event)
            elif fd == handle.status_r:
                call.read_status()
            elif fd == handle.pidfd:
                exited = True
            elif event & _EVENT_MASK:
                call.read_stream(fd)
        if call.violation is not None:
            return Outcome.STATUS_VIOLATION
        if call.truncated:
            return Outcome.OUTPUT_LIMIT
        if exited:
            return Outcome.EXITED
        if call.done_exit_code is not None:
            return Outcome.DONE
