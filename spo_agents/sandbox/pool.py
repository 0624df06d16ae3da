"""`SandboxPool`: run untrusted Python snippets in isolated, pre-warmed helper processes.

    with SandboxPool(SandboxConfig(timeout_s=2)) as pool:
        result = pool.run("print(sum(range(10)))")       # ExecResult(stdout="45\\n", ...)
        result = await pool.arun(code)                   # from asyncio, without blocking the loop
        with pool.session() as session:                  # stateful: variables persist
            session.run("x = 41"); session.run("print(x + 1)")

Why a pool of helpers: a helper (see `helper.py`) is started once with `subprocess` (never a
fork of the trainer, which holds threads and torch state), imports the allowed modules, sets
up its namespaces, and then forks one isolated runner per call: a few milliseconds instead of
a fresh interpreter's tens. Each helper serves one call at a time; callers take an idle one
from a queue, so any number of threads (and asyncio tasks, through a thread executor) can use
one pool. A helper that crashes or stops answering is killed and replaced; a call that was
running on it returns a `sandbox_error` result, never an exception.

Isolation is chosen at start-up: namespaces, else bubblewrap, else (only with
`allow_unisolated=True` or `mode="unisolated"`, with a loud warning) no isolation at all; if
nothing is allowed, `SandboxUnavailableError` says why. Helpers are closed by `close()`, by
the context manager, or at interpreter exit. A pool belongs to the process that made it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

from spo_agents.sandbox import cgroups
from spo_agents.sandbox import helper as helper_module
from spo_agents.sandbox.capabilities import UNISOLATED_WARNING, CapabilityReport, find_bwrap
from spo_agents.sandbox.config import SandboxConfig, resolved_limits
from spo_agents.sandbox.protocol import Channel, ChannelClosed, HelperSettings, IsolationMode, SandboxConfigError
from spo_agents.sandbox.result import ExecResult, ExecStatus

logger = logging.getLogger(__name__)

# Beyond the call's own timeout, what a helper may need to kill, drain and report.
ANSWER_GRACE_S = 15.0
EXIT_GRACE_S = 5.0  # time helpers get to exit cleanly at close
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
              "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class SandboxError(RuntimeError):
    """The pool cannot serve (closed, used from a forked child, too many sessions)."""


class SandboxUnavailableError(SandboxError):
    """No allowed isolation mode could be set up; `.report` says what was tried."""

    def __init__(self, report: CapabilityReport):
        reasons = "; ".join(f"{mode}: {why}" for mode, why in report.failures.items())
        super().__init__(f"no sandbox could be set up ({reasons}). Install bubblewrap, run where user "
                         f"namespaces are allowed, or opt in to SandboxConfig(allow_unisolated=True)")
        self.report = report


class HelperFailure(Exception):
    """A helper crashed, hung, or could not start; it has been killed."""


class HelperClient:
    """The pool's end of one helper process. Used by one thread at a time."""

    def __init__(self, settings: HelperSettings, start_timeout_s: float):
        self.settings = settings
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.report: dict | None = None

    def start(self) -> None:
        parent, child = socket.socketpair()
        env = dict(HELPER_ENV)
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        argv = [sys.executable, "-P", "-c", helper_module.BOOTSTRAP, str(child.fileno()), PACKAGE_DIR]
        self.proc = subprocess.Popen(argv, pass_fds=[child.fileno()], env=env, cwd="/", stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        child.close()
        self.channel, self.report = Channel(parent), None
        self.channel.send({"op": "configure", "settings": self.settings.to_dict()})

    def wait_ready(self) -> dict:
        """The helper's capability report; raises HelperFailure with its reason."""
        if self.report is None:
            try:
                hello, _, _ = self.channel.recv(self.start_timeout_s)
            except (ChannelClosed, TimeoutError) as exc:
                self.kill()
                raise HelperFailure(f"the helper did not start: {exc}") from exc
            if not hello.get("ok"):
                self.kill()
                if hello.get("config_error"):
                    raise SandboxConfigError(f"unusable sandbox configuration: {hello.get('error')}")
                raise HelperFailure(hello.get("error", "unknown error"))
            self.report = hello["report"]
        return self.report

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, header: dict, payload: bytes, fds: list[int], answer_within_s: float, retry: bool = False):
        """One request/answer; restarts a dead helper first. Raises HelperFailure.

        `retry`: if the helper is found dead (not hung) during the request, replace it and send
        the request once more; only for requests without side effects outside the sandbox
        (stateless calls): a helper can die between calls without the pool noticing yet.
        """
        for attempt in range(2 if retry else 1):
            if not self.alive():
                self.kill()
                self.start()
            self.wait_ready()
            try:
                self.channel.send(header, payload, fds)
                return self.channel.recv(answer_within_s)
            except ChannelClosed as exc:
                self.kill()
                failure = HelperFailure("the sandbox helper crashed during the call and was replaced")
                failure.__cause__ = exc
            except TimeoutError as exc:
                self.kill()
                raise HelperFailure("the sandbox helper stopped answering and was replaced") from exc
        raise failure

    def request_exit(self) -> None:
        """Close the channel: an idle helper then kills and reaps its runners and exits."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def wait_exit(self, timeout_s: float) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=max(0.0, timeout_s))
            except subprocess.TimeoutExpired:
                pass

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                proc.kill()
        if proc is not None:
            proc.wait()
            if self.settings.cgroup_path:  # a killed helper could not remove its runners' cgroups
                cgroups.remove_leftovers(cgroups.CgroupBase(self.settings.cgroup_version, self.settings.cgroup_path),
                                         proc.pid)


def candidate_modes(config: SandboxConfig, bwrap_path: str | None) -> list[IsolationMode]:
    if config.mode is not IsolationMode.AUTO:
        return [config.mode]
    modes = [IsolationMode.NAMESPACES]
    if bwrap_path:
        modes.append(IsolationMode.BWRAP)
    if config.allow_unisolated:
        modes.append(IsolationMode.UNISOLATED)
    return modes


def memory_cgroup(config: SandboxConfig) -> tuple[cgroups.CgroupBase | None, str]:
    """The cgroup runners' memory cgroups go under (or None, and why); checks the settings that need one."""
    try:
        base, why_not = cgroups.find_base(config.cgroup)
    except ValueError as exc:
        raise SandboxConfigError(str(exc)) from exc
    if base is None and config.call_memory_mb is not None:
        raise SandboxConfigError(f"call_memory_mb={config.call_memory_mb} needs a memory cgroup, and there is none "
                                 f"here: {why_not}")
    return base, why_not


def helper_settings(config: SandboxConfig, mode: IsolationMode, uid: int, bwrap_path: str | None,
                    cgroup: cgroups.CgroupBase | None = None) -> HelperSettings:
    max_processes, call_memory_mb = resolved_limits(config, cgroup is not None)
    return HelperSettings(
        mode=mode, slot_uid=uid, memory_mb=config.memory_mb, output_limit_bytes=config.output_limit_bytes,
        max_processes=max_processes, max_open_files=config.max_open_files, max_file_mb=config.max_file_mb,
        tmpfs_mb=config.tmpfs_mb, tmpfs_inodes=config.tmpfs_inodes, session_cpu_s=config.session_cpu_s,
        call_memory_mb=call_memory_mb, cgroup_version=cgroup.version if cgroup else 0,
        cgroup_path=cgroup.path if cgroup else None, preimport=list(config.preimport),
        readonly_paths=list(config.readonly_paths), hidden_packages=list(config.hidden_packages),
        bwrap_path=bwrap_path)


def _shutdown(helpers: list[HelperClient], sessions: "weakref.WeakSet", owner_pid: int) -> None:
    """Close sessions, let helpers exit cleanly (they reap their runners), then kill stragglers."""
    if os.getpid() != owner_pid:
        return  # a forked child must not kill its parent's helpers
    for session in list(sessions):
        session.close()
    for client in helpers:
        client.request_exit()
    deadline = time.monotonic() + EXIT_GRACE_S
    for client in helpers:
        client.wait_exit(deadline - time.monotonic())
        client.kill()


class SandboxPool:
    """Pre-started sandbox helpers; thread-safe; `run`, `arun`, `session`. See module doc."""

    def __init__(self, config: SandboxConfig | None = None, **overrides):
        base = config or SandboxConfig()
        self.config = SandboxConfig(**{**base.model_dump(), **overrides}) if overrides else base
        self._owner_pid = os.getpid()
        self._idle: queue.SimpleQueue[HelperClient] = queue.SimpleQueue()
        self._helpers: list[HelperClient] = []
        self._sessions: weakref.WeakSet = weakref.WeakSet()
        self._session_slots = list(range(self.config.max_sessions - 1, -1, -1))
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._helpers, self._sessions, self._owner_pid)
        self.capabilities = self._start()
        for client in self._helpers:
            self._idle.put(client)

    # start-up ----------------------------------------------------------------------------------
    def _start(self) -> CapabilityReport:
        bwrap_path = find_bwrap(self.config.bwrap_path)
        cgroup, no_cgroup_reason = memory_cgroup(self.config)
        failures: dict[str, str] = {}
        for mode in candidate_modes(self.config, bwrap_path):
            if mode is IsolationMode.BWRAP and not bwrap_path:
                failures[mode.value] = "bwrap not found"
                continue
            clients = [HelperClient(helper_settings(self.config, mode, self.config.slot_uid(slot), bwrap_path,
                                                    cgroup), self.config.start_timeout_s)
                       for slot in range(self.config.num_helpers)]
            clients[0].start()
            try:
                report = clients[0].wait_ready()
            except HelperFailure as exc:
                failures[mode.value] = str(exc)
                continue
            for client in clients[1:]:
                client.start()
            self._helpers.extend(clients)
            try:
                for client in clients[1:]:
                    client.wait_ready()
            except HelperFailure:
                self.close()
                raise
            capabilities = CapabilityReport.from_hello(report, bwrap_path, failures)
            capabilities.describe_memory(clients[0].settings, no_cgroup_reason)
            if mode is IsolationMode.UNISOLATED:
                warnings.warn(UNISOLATED_WARNING, RuntimeWarning, stacklevel=3)
                logger.warning(UNISOLATED_WARNING)
            return capabilities
        raise SandboxUnavailableError(CapabilityReport(mode=None, bwrap_path=bwrap_path, failures=failures,
                                                       euid=os.geteuid()))

    def _check_usable(self) -> None:
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        if os.getpid() != self._owner_pid:
            raise SandboxError("a SandboxPool cannot be used in a forked child process; create one there")

    # calls -------------------------------------------------------------------------------------
    def encode_request(self, code: str, timeout_s: float | None, stdin: str | bytes | None):
        """(header, payload) for a call, or an ExecResult when the request itself is refused."""
        timeout = self.config.timeout_s if timeout_s is None else float(timeout_s)
        if not 0 < timeout <= 3600:
            raise ValueError(f"timeout_s must be in (0, 3600], got {timeout}")
        code_bytes = code.encode("utf-8", "surrogatepass")
        stdin_bytes = stdin.encode("utf-8", "surrogatepass") if isinstance(stdin, str) else (stdin or b"")
        if len(code_bytes) + len(stdin_bytes) > self.config.max_code_bytes:
            return ExecResult(stdout="", stderr="", exit_code=None, signal=None, timed_out=False, truncated=False,
                              duration_s=0.0, status=ExecStatus.ERROR,
                              error=f"code and stdin are too long ({len(code_bytes) + len(stdin_bytes)} bytes; "
                                    f"the limit is {self.config.max_code_bytes})")
        header = {"op": "exec", "code_len": len(code_bytes), "has_stdin": stdin is not None, "timeout_s": timeout}
        return header, code_bytes + stdin_bytes

    def submit(self, header: dict, payload: bytes, fds: list[int] = (), retry: bool = False):
        """Send one request to an idle helper: (reply header, payload, fds). Raises HelperFailure."""
        self._check_usable()
        client = self._idle.get()
        try:
            if self._closed:
                raise SandboxError("the sandbox pool is closed")
            return client.call(header, payload, list(fds), header.get("timeout_s", 0) + ANSWER_GRACE_S, retry)
        finally:
            self._idle.put(client)

    def run(self, code: str, timeout_s: float | None = None, stdin: str | bytes | None = None) -> ExecResult:
        """Run `code` in a fresh sandbox; `stdin` (if given) is what `sys.stdin` reads."""
        request = self.encode_request(code, timeout_s, stdin)
        if isinstance(request, ExecResult):
            return request
        try:
            reply, payload, _ = self.submit(*request, retry=True)
        except HelperFailure as exc:
            return ExecResult.sandbox_failure(str(exc))
        return ExecResult.from_wire(reply, payload)

    async def arun(self, code: str, timeout_s: float | None = None, stdin: str | bytes | None = None) -> ExecResult:
        """`run` for asyncio: waits in a worker thread, so the event loop keeps running."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor(), functools.partial(self.run, code, timeout_s, stdin))

    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=max(32, 4 * self.config.num_helpers),
                                                    thread_name_prefix="sandbox")
            return self._executor

    # sessions ----------------------------------------------------------------------------------
    def session(self):
        """A stateful session: one interpreter, variables kept between calls, killed at close."""
        from spo_agents.sandbox.session import SandboxSession

        self._check_usable()
        with self._lock:
            if not self._session_slots:
                raise SandboxError(f"too many open sessions (max_sessions={self.config.max_sessions})")
            slot = self._session_slots.pop()
        session = SandboxSession(self, slot)
        self._sessions.add(session)
        return session

    def release_session_slot(self, slot: int) -> None:
        with self._lock:
            self._session_slots.append(slot)

    # lifecycle ---------------------------------------------------------------------------------
    @property
    def mode(self) -> IsolationMode:
        return self.capabilities.mode

    def helper_pids(self) -> list[int]:
        return [client.proc.pid for client in self._helpers if client.proc is not None]

    def close(self) -> None:
        """Kill every helper and session. Idempotent."""
        self._closed = True
        self._finalizer()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
