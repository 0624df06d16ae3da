"""The grading code that runs inside the sandbox: two calls of one fresh sandbox session.

Why two calls and two processes: the solution must never share a process with anything it
could use to pass without computing: the expected values (they never enter the sandbox at
all), but also the list of tests and the report channel. Inside one process every object is
reachable (frames, the garbage collector, raw memory), so:

- Call 1 (`build_loader`) runs the harness H in the session's interpreter. H makes itself
  non-dumpable (so a process of the same UID can neither ptrace it nor read /proc/H/mem, fd
  or environ), then forks the solution's process S. S points its stdin, stdout and stderr at
  /dev/null, closes every other descriptor except two pipes to H, loads the solution as
  module `solution` (its `if __name__ == "__main__"` block does not run) plus the task's
  setup, and says "loaded". At the fork H's memory held the solution and this call's nonce,
  and nothing else: no test had been sent to the sandbox yet.
- Call 2 (`build_test_runner`) sends the tests to H, which holds them in its own memory and
  hands S one expression at a time. S evaluates it under a per-test timer and answers
  `ok REPR` (only for values built from plain types, exact types) or `error TYPE`. H writes
  `NONCE INDEX <answer>` lines to the call's output; S cannot write there (it has no
  descriptor of it) and cannot see a test before it is asked it, which is no more than the
  function's own arguments. H gives S `test_timeout_s` plus a grace period per test; an S
  that ignores its timer is killed and the remaining tests fail.

The parent (grading.py) then parses the lines and compares values itself.
"""

from __future__ import annotations

MAX_REPR_CHARS = 20_000  # a result longer than this counts as failed (it is never that long)

_COMMON = r'''
import os as _os


def _spo_line(fd, timeout_s, limit):
    """One line from fd within timeout_s (None: wait), at most `limit` bytes; None if not."""
    import select, time
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data:
        if len(data) > limit:
            return None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
        chunk = _os.read(fd, 65536)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")
'''

_LOADER = _COMMON + r'''

def _spo_solution_process(down_r, up_w, solution, setup, test_timeout_s, max_repr):
    """The solution's process: never returns."""
    import json, signal, sys
    try:
        null = _os.open("/dev/null", _os.O_RDWR)
        for fd in (0, 1, 2):
            _os.dup2(null, fd)
        keep = sorted({down_r, up_w})
        _os.closerange(3, keep[0])
        _os.closerange(keep[0] + 1, keep[1])
        _os.closerange(keep[1] + 1, 65536)
        sys.stdout = sys.stderr = open(_os.devnull, "w")
        plain_types = (int, float, complex, str, bytes, bool, type(None))

        def send(text):
            data = (text.replace("\n", " ") + "\n").encode("utf-8", "backslashreplace")
            while data:
                data = data[_os.write(up_w, data):]

        def plain(value, depth=0):
            kind = type(value)
            if kind in plain_types:
                return True
            if depth > 50:
                return False
            if kind in (list, tuple, set, frozenset):
                return all(plain(item, depth + 1) for item in value)
            if kind is dict:
                return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
            return False

        def on_alarm(signum, frame):
            raise TimeoutError(f"test took longer than {test_timeout_s:g} s")

        signal.signal(signal.SIGALRM, on_alarm)
        namespace = {"__name__": "solution", "__builtins__": __builtins__}
        try:
            exec(compile(solution, "solution.py", "exec"), namespace)
            if setup:
                exec(compile(setup, "test_setup.py", "exec"), namespace)
        except BaseException as exc:
            send("load_error " + type(exc).__name__)
            return
        send("loaded")
        requests = _os.fdopen(down_r, "rb")
        for raw in requests:
            try:
                signal.setitimer(signal.ITIMER_REAL, test_timeout_s)
                value = eval(compile(json.loads(raw), "test.py", "eval"), namespace)
                signal.setitimer(signal.ITIMER_REAL, 0)
                if type(value) is frozenset:
                    value = set(value)
                if not plain(value):
                    raise TypeError(f"unsupported result type {type(value).__name__}")
                text = repr(value)
                if len(text) > max_repr:
                    raise ValueError("result too long")
                send("ok " + text)
            except BaseException as exc:
                signal.setitimer(signal.ITIMER_REAL, 0)
                send("error " + type(exc).__name__)
    finally:
        _os._exit(0)


def _spo_load(nonce, solution, setup, test_timeout_s, max_repr):
    import ctypes
    if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0
        print(nonce + " load_error HarnessSetup")
        return
    down_r, down_w = _os.pipe()
    up_r, up_w = _os.pipe()
    pid = _os.fork()
    if pid == 0:
        _spo_solution_process(down_r, up_w, solution, setup, test_timeout_s, max_repr)
    _os.close(down_r)
    _os.close(up_w)
    globals()["_spo_grading"] = (pid, down_w, up_r)
    reply = _spo_line(up_r, None, 1000)
    if reply == "loaded":
        print(nonce + " loaded")
    elif reply and reply.startswith("load_error "):
        print(nonce + " " + reply.split()[0] + " " + reply.split()[-1])
    else:
        print(nonce + " load_error NoAnswer")
'''

_RUNNER = _COMMON + r'''

def _spo_run(nonce, tests, test_timeout_s, max_repr):
    import json, signal
    pid, down_w, up_r = globals().get("_spo_grading", (0, -1, -1))
    alive = pid > 0
    grace = test_timeout_s + max(0.5, 0.5 * test_timeout_s)
    for index, expression in enumerate(tests):
        reply = None
        if alive:
            try:
                request = (json.dumps(expression) + "\n").encode()
                while request:
                    request = request[_os.write(down_w, request):]
                reply = _spo_line(up_r, grace, max_repr + 100)
            except OSError:
                reply = None
        if reply is None or not reply.startswith(("ok ", "error ")):
            if alive:
                _os.kill(pid, signal.SIGKILL)
            print(f"{nonce} {index} error {'Timeout' if alive else 'Stopped'}", flush=True)
            alive = False
        else:
            print(f"{nonce} {index} {reply}", flush=True)
    print(f"{nonce} done", flush=True)
'''


def build_loader(solution: str, setup: str, nonce: str, test_timeout_s: float) -> str:
    """Call 1: fork the solution's process and load the solution in it (no test in sight)."""
    args = (nonce, solution, setup, float(test_timeout_s), MAX_REPR_CHARS)
    return f"{_LOADER}\n_spo_load(*{args!r})\n"


def build_test_runner(expressions: list[str], nonce: str, test_timeout_s: float) -> str:
    """Call 2: hand the solution's process the tests one by one and report each answer."""
    args = (nonce, list(expressions), float(test_timeout_s), MAX_REPR_CHARS)
    return f"{_RUNNER}\n_spo_run(*{args!r})\n"
