"""The sandboxed side: turn an already isolated process into the snippet's interpreter.

The helper (or bubblewrap) builds the isolation; this module only finishes the job inside it:
standard streams on the output pipes, a cleared environment, rlimits, then it waits for a
request on the control pipe and runs the code with `exec` in a fresh `__main__`. Running the
code in the forked, pre-warmed interpreter (instead of starting a new `python`) is what
makes a call cost a few milliseconds.

File descriptors inside the sandbox (set up by whoever started the runner):
0 = /dev/null, 1/2 = stdout/stderr pipes (read and capped by the helper),
3 = control pipe (requests in), 4 = status pipe (frames out: ready, setup error, done).

In stateless mode the runner serves one request and exits with the snippet's exit code; it
closes the status pipe before running the code, so a snippet cannot forge status frames.
In session mode it loops, keeping `__main__` between calls, and reports each call's exit
code on the status pipe (a snippet can write there too; the helper validates every frame and
ends the session on a malformed one, see `supervise.py`).

Before the first request the runner forgets where it came from (`scrub_interpreter`,
`scrub_process_title`): the helper's command line and environment (which name the project's
directory), the project's modules and any editable-install finder are removed, so a snippet
finds neither host paths nor the project's packages (task generators, graders) through them.

This module imports nothing from spo_agents: in bubblewrap mode its source is passed to a
fresh `python -c` inside the sandbox. It is not an isolation layer by itself.
"""

from __future__ import annotations

import atexit
import builtins
import fnmatch
import io
import json
import linecache
import os
import random
import resource
import struct
import sys
import threading
import traceback
import types

CTL_FD = 3
STATUS_FD = 4
SETUP_FAILED_EXIT = 121
SNIPPET_FILENAME = "<snippet>"
FRAME = struct.Struct("!II")  # header length, payload length


# framing (shared with the helper) ------------------------------------------------------------
def encode_frame(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return FRAME.pack(len(raw), len(payload)) + raw + payload


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> tuple[dict, bytes] | None:
    """One frame from a blocking fd; None on end of file."""
    prefix = _read_exact(fd, FRAME.size)
    if prefix is None:
        return None
    header_len, payload_len = FRAME.unpack(prefix)
    body = _read_exact(fd, header_len + payload_len)
    if body is None:
        return None
    return json.loads(body[:header_len]), body[header_len:]


def write_frame(fd: int, header: dict, payload: bytes = b"") -> None:
    view = memoryview(encode_frame(header, payload))
    while view:
        view = view[os.write(fd, view):]


# setup ---------------------------------------------------------------------------------------
def apply_rlimits(rlimits: dict[str, list[int]]) -> None:
    """Set rlimits given as {"RLIMIT_AS": [soft, hard], ...}; -1 means unlimited."""
    for name, (soft, hard) in rlimits.items():
        soft = resource.RLIM_INFINITY if soft < 0 else soft
        hard = resource.RLIM_INFINITY if hard < 0 else hard
        resource.setrlimit(getattr(resource, name), (soft, hard))


def install_environment(env: dict[str, str], work_dir: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(work_dir)
    sys.argv = ["-c"]
    sys.path[:] = [p for p in sys.path if p and os.path.isdir(p)]


def _hidden(name: str, patterns: list[str]) -> bool:
    top = name.split(".", 1)[0]
    return top.startswith("__editable__") or any(fnmatch.fnmatchcase(top, p) for p in patterns)


def scrub_interpreter(hidden_packages: list[str]) -> None:
    """Forget the helper's command line, the hidden packages' modules and editable finders."""
    sys.argv = ["-c"]
    sys.orig_argv = ["-c"]
    for name in [n for n in sys.modules if _hidden(n, hidden_packages)]:
        del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path if not _hidden(getattr(f, "__module__", "") or "", hidden_packages)
                        and not _hidden(type(f).__module__, hidden_packages)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not _hidden(getattr(h, "__module__", "") or "", hidden_packages)]
    sys.path_importer_cache.clear()


def scrub_process_title(title: bytes = b"python3") -> None:
    """Overwrite this process's original argv and environment strings (what /proc/PID/cmdline
    and /proc/PID/environ show) with `title` and zeros; Python keeps its own copies."""
    import ctypes

    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])  # stat fields 48-51
    if not arg_start or arg_end <= arg_start:
        return
    ctypes.memset(arg_start, 0, arg_end - arg_start)
    if env_end > env_start:
        ctypes.memset(env_start, 0, env_end - env_start)
    ctypes.memmove(arg_start, title, min(len(title), arg_end - arg_start - 1))


def install_stdio() -> None:
    """Python streams on fds 0-2 (the helper's own streams pointed elsewhere)."""
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin


def reseed() -> None:
    """Forked runners would otherwise all share the helper's random state."""
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def limit_cpu(timeout_s: float, session: bool) -> None:
    """CPU rlimit for this call: wall timeout + 1 s (soft, SIGXCPU), +2 s (hard, SIGKILL)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) if session else 0
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + int(timeout_s) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    if not session:
        hard = soft + 1 if hard == resource.RLIM_INFINITY else min(hard, soft + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


# running code --------------------------------------------------------------------------------
def fresh_main() -> dict:
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    return module.__dict__


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_snippet(code: str, stdin: bytes | None, namespace: dict) -> int:
    """Execute `code` in `namespace` like `python -c` would; returns the exit code."""
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8", errors="replace")
    linecache.cache[SNIPPET_FILENAME] = (len(code), None, code.splitlines(True), SNIPPET_FILENAME)
    try:
        exec(compile(code, SNIPPET_FILENAME, "exec", dont_inherit=True), namespace)
        exit_code = 0
    except SystemExit as exc:
        exit_code = _exit_code(exc)
    except BaseException as exc:  # the snippet's own error: show it like Python would
        try:
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        except BaseException:
            pass
        exit_code = 1
    _flush_streams()
    return exit_code


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _finish_process(exit_code: int) -> None:
    """What interpreter shutdown would do: wait for threads, run atexit; then exit at once."""
    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    except BaseException:
        pass
    _flush_streams()
    os._exit(exit_code)


def _reap_children() -> None:
    """As PID 1 of its namespace a session runner must reap orphans between calls."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def decode_request(header: dict, payload: bytes) -> tuple[str, bytes | None]:
    code_len = header["code_len"]
    code = payload[:code_len].decode("utf-8", "surrogatepass")
    stdin = payload[code_len:] if header.get("has_stdin") else None
    return code, stdin


def serve(session: bool) -> None:
    """Announce readiness, then run requests from the control pipe (one, or a session's)."""
    atexit._clear()
    reseed()
    namespace = fresh_main()
    write_frame(STATUS_FD, {"event": "ready"})
    while True:
        frame = read_frame(CTL_FD)
        if frame is None:
            os._exit(0)
        code, stdin = decode_request(*frame)
        limit_cpu(frame[0]["timeout_s"], session)
        if not session:
            os.close(STATUS_FD)
            os.close(CTL_FD)
            _finish_process(run_snippet(code, stdin, namespace))
        exit_code = run_snippet(code, stdin, namespace)
        _reap_children()
        write_frame(STATUS_FD, {"event": "done", "exit_code": exit_code})


def report_setup_failure(exc: BaseException) -> None:
    try:
        write_frame(STATUS_FD, {"event": "setup_error", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        os._exit(SETUP_FAILED_EXIT)


def bwrap_main(settings_json: str) -> None:
    """Entry point inside bubblewrap (a fresh interpreter): finish setup, then serve."""
    settings = json.loads(settings_json)
    try:
        uid = settings.get("drop_to_uid")
        if uid is not None:  # bubblewrap started as root: leave root here, inside the sandbox
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            import ctypes  # re-arm --die-with-parent: changing credentials cleared it

            ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        install_stdio()
        install_environment(settings["env"], settings["work_dir"])
        apply_rlimits(settings["rlimits"])
        scrub_process_title()
        for name in settings["preimport"]:
            try:
                __import__(name)
            except ImportError:
                pass
        scrub_interpreter(settings["hidden_packages"])
    except BaseException as exc:
        report_setup_failure(exc)
    serve(settings["session"])
