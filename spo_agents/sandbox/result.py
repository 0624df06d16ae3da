"""The outcome of one sandboxed call, and the text a model sees about it.

`ExecResult` keeps the raw facts (streams, exit code, signal, limit flags, duration) plus a
`status` enum and a one-line `error`, so environment code can branch on the status while the
model reads `to_observation()`: the output, then one bracketed line that says plainly what
went wrong ("[timed out after 2 s]"), head and tail kept when it is too long. Invalid UTF-8 is
replaced, NUL and other control bytes are shown escaped, so no stream can corrupt a prompt.

This module is shared by the helper (which classifies outcomes) and the pool; it imports
nothing heavy.
"""

from __future__ import annotations

import enum
import re
import signal as signal_module
from dataclasses import dataclass

_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b(:.*)?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SIGNAL_TEXT = {
    signal_module.SIGSEGV: "segmentation fault",
    signal_module.SIGBUS: "bus error",
    signal_module.SIGABRT: "aborted",
    signal_module.SIGFPE: "floating point exception",
    signal_module.SIGILL: "illegal instruction",
    signal_module.SIGXCPU: "CPU time limit exceeded",
    signal_module.SIGXFSZ: "file size limit exceeded",
    signal_module.SIGKILL: "killed (CPU time limit or SIGKILL)",
}
SESSION_RESET_NOTE = "[the session was restarted: variables from earlier calls are lost]"


class ExecStatus(str, enum.Enum):
    """What happened to a call, from the model's point of view."""

    OK = "ok"  # exit code 0
    ERROR = "error"  # non-zero exit code: an exception, sys.exit(n)
    CRASHED = "crashed"  # killed by a signal: segfault, CPU limit, abort
    TIMEOUT = "timeout"  # wall-clock limit hit; killed from outside
    OUTPUT_LIMIT = "output_limit"  # stdout + stderr exceeded the cap; killed at once
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed (setup, helper crash)


def _signal_name(number: int) -> str:
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(exit_code: int | None, signal: int | None, *, timed_out: bool, truncated: bool, timeout_s: float,
             output_limit_bytes: int, stderr: str, setup_error: str | None = None, violation: str | None = None,
             status_lost: bool = False, oom_killed: bool = False,
             call_memory_mb: int = 0) -> tuple[ExecStatus, str | None]:
    """(status, one-line error) for the facts of a call; error is None when it succeeded.

    A call whose end nobody could observe (`status_lost`) is a sandbox error, never "ok"."""
    if setup_error:
        return ExecStatus.SANDBOX_ERROR, f"sandbox setup failed: {setup_error}"
    if violation:
        return ExecStatus.ERROR, (f"the code wrote to the sandbox's status channel (fd 4: {violation}); "
                                  "its interpreter was stopped")
    if timed_out:
        return ExecStatus.TIMEOUT, f"timed out after {timeout_s:g} s"
    if truncated:
        return ExecStatus.OUTPUT_LIMIT, f"output limit of {output_limit_bytes} bytes exceeded; the process was stopped"
    if status_lost:
        return ExecStatus.SANDBOX_ERROR, "the sandboxed interpreter is gone and its supervisor with it"
    if oom_killed and signal:
        return ExecStatus.CRASHED, f"out of memory: the call's memory limit ({call_memory_mb} MB) was exceeded"
    if exit_code is None and not signal:
        return ExecStatus.SANDBOX_ERROR, "the sandboxed process ended without an exit status"
    if signal:
        text = _SIGNAL_TEXT.get(signal, "killed")
        return ExecStatus.CRASHED, f"{text} ({_signal_name(signal)})"
    if exit_code:
        lines = [line.strip() for line in stderr.strip().splitlines()[-3:] if line.strip()]
        if lines and _EXCEPTION_LINE.match(lines[-1]):
            return ExecStatus.ERROR, lines[-1][:300]
        return ExecStatus.ERROR, f"exited with code {exit_code}"
    return ExecStatus.OK, None


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail of `text` within `max_chars`, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    marker = "\n[... {} characters omitted ...]\n"
    budget = max(0, max_chars - len(marker.format(len(text))))
    head = budget * 3 // 5
    tail = budget - head
    omitted = len(text) - head - tail
    return text[:head] + marker.format(omitted) + (text[len(text) - tail:] if tail else "")


@dataclass(frozen=True)
class ExecResult:
    """One call's outcome. `stdout`/`stderr` are decoded as UTF-8 with replacement."""

    stdout: str
    stderr: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    truncated: bool
    duration_s: float
    error: str | None
    status: ExecStatus = ExecStatus.OK
    session_reset: bool = False

    @property
    def ok(self) -> bool:
        return self.status is ExecStatus.OK

    def to_observation(self, max_chars: int = 4000) -> str:
        """Model-facing text: output, stderr, then one bracketed line on what went wrong."""
        sections = []
        if self.stdout:
            sections.append(self.stdout.rstrip("\n"))
        if self.stderr:
            sections.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.status is ExecStatus.ERROR:
            sections.append(f"[exit code {self.exit_code}]")
        elif self.status is ExecStatus.SANDBOX_ERROR:
            sections.append(f"[sandbox error: {self.error}]")
        elif self.error:
            sections.append(f"[{self.error}]")
        if self.session_reset:
            sections.append(SESSION_RESET_NOTE)
        text = "\n".join(sections) if sections else "[no output]"
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        return truncate_middle(text, max_chars)

    @classmethod
    def from_wire(cls, header: dict, payload: bytes) -> "ExecResult":
        stdout_len = header["stdout_len"]
        return cls(
            stdout=payload[:stdout_len].decode("utf-8", "replace"),
            stderr=payload[stdout_len:].decode("utf-8", "replace"),
            exit_code=header["exit_code"], signal=header["signal"], timed_out=header["timed_out"],
            truncated=header["truncated"], duration_s=header["duration_s"], error=header["error"],
            status=ExecStatus(header["status"]), session_reset=header.get("session_reset", False),
        )

    @classmethod
    def sandbox_failure(cls, message: str, duration_s: float = 0.0, session_reset: bool = False) -> "ExecResult":
        return cls(stdout="", stderr="", exit_code=None, signal=None, timed_out=False, truncated=False,
                   duration_s=duration_s, error=message, status=ExecStatus.SANDBOX_ERROR,
                   session_reset=session_reset)
