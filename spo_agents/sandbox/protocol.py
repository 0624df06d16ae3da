"""What the pool and its helper processes say to each other, and how.

Frames (see `runner.encode_frame`) travel over a connected AF_UNIX stream socket; a frame may
carry file descriptors (SCM_RIGHTS), which is how a stateful session's pipes and process
handle move from the helper that created it to the pool, and from the pool to whichever
helper supervises its next call. Requests, by "op":

- configure  (pool -> helper, first frame): `HelperSettings` as a dict; answered by "hello"
             with the capability report or the reason isolation could not be set up.
- exec       code + optional stdin as payload; with the session's six fds when stateful.
             Answered with the result header (see `result.ExecResult.from_wire`) and
             stdout + stderr bytes as payload.
- open_session  answered with a header and the new session's six fds.

This module must stay free of heavy imports: the helper imports it before it forks runners.
"""

from __future__ import annotations

import array
import enum
import json
import socket
import time
from dataclasses import asdict, dataclass, field

from spo_agents.sandbox.runner import FRAME, encode_frame

MAX_FDS = 8


class IsolationMode(str, enum.Enum):
    """How snippets are isolated (see docs/sandbox.md)."""

    AUTO = "auto"  # namespaces, else bubblewrap, else (only if allowed) unisolated
    NAMESPACES = "namespaces"  # in-process Linux namespaces from a pre-warmed helper (fast)
    BWRAP = "bwrap"  # a bubblewrap sandbox and a fresh interpreter per call (slower)
    UNISOLATED = "unisolated"  # rlimits, timeout and a cleared environment only: NOT a sandbox


@dataclass
class HelperSettings:
    """Everything a helper needs, as plain data (the helper does not import pydantic)."""

    mode: IsolationMode
    slot_uid: int
    memory_mb: int
    output_limit_bytes: int
    max_processes: int
    max_open_files: int
    max_file_mb: int
    tmpfs_mb: int
    tmpfs_inodes: int
    session_cpu_s: int
    call_memory_mb: int = 0
    cgroup_version: int = 0  # 0: no memory cgroup (memfd_create is then denied)
    cgroup_path: str | None = None  # where the helper makes its directory of runner cgroups
    preimport: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    hidden_packages: list[str] = field(default_factory=list)
    bwrap_path: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mode"] = self.mode.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "HelperSettings":
        return cls(**{**data, "mode": IsolationMode(data["mode"])})


class SandboxConfigError(ValueError):
    """The configuration cannot work on this machine in any mode (e.g. memory_mb too small)."""


class ChannelClosed(EOFError):
    """The other end of a channel went away (process exited or crashed)."""


class Channel:
    """Length-prefixed JSON frames, with optional fds, over a blocking AF_UNIX stream socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = bytearray()
        self._fds: list[int] = []

    def send(self, header: dict, payload: bytes = b"", fds: list[int] | tuple[int, ...] = ()) -> None:
        data = encode_frame(header, payload)
        self.sock.settimeout(None)
        try:
            if fds:
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                data = data[sent:]
            if data:
                self.sock.sendall(data)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    def recv(self, timeout_s: float | None = None) -> tuple[dict, bytes, list[int]]:
        """One frame and the fds that came with it; raises ChannelClosed or TimeoutError."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._fill(FRAME.size, deadline)
        header_len, payload_len = FRAME.unpack(self._buffer[:FRAME.size])
        self._fill(FRAME.size + header_len + payload_len, deadline)
        body = bytes(self._buffer[FRAME.size:FRAME.size + header_len + payload_len])
        del self._buffer[:FRAME.size + header_len + payload_len]
        fds, self._fds = self._fds, []
        return json.loads(body[:header_len]), body[header_len:], fds

    def _fill(self, size: int, deadline: float | None) -> None:
        while len(self._buffer) < size:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no answer from the sandbox helper in time")
                self.sock.settimeout(remaining)
            else:
                self.sock.settimeout(None)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    min(size - len(self._buffer), 1 << 20), socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
            except socket.timeout as exc:
                raise TimeoutError("no answer from the sandbox helper in time") from exc
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                raise ChannelClosed("the sandbox helper closed its channel")
            self._buffer += data

    def close(self) -> None:
        self.sock.close()
