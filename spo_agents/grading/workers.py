"""A pool of killable math-verify worker processes (see `_mv_worker.py` for the child side).

Why: a symbolic engine given `9^{9^{9^9}}` or `100000!` can hang in C code where no Python
timeout reaches it. Each request therefore goes to a separate process with a hard deadline:
when the answer does not come in time the process is SIGKILLed and a fresh one is started
at once, so it warms up while the caller already has its 0.

- Processes are started with `subprocess` (fork+exec in C, no Python code runs in between),
  never with `os.fork()` of a multi-threaded trainer. `start_new_session=True` keeps the
  terminal's Ctrl-C away from them; they exit on their own when stdin closes (parent gone).
- Each worker serves one thread at a time; the pool hands out idle workers, preferring ones
  already warm. Callers beyond the pool size wait for a worker: the timeout bounds the
  time spent on one answer, not time queued behind other callers.
- I/O uses `select.poll` on raw pipe fds (no 1024-fd limit of `select.select`): POSIX only.

Left out: Windows (no poll on pipes), cross-process sharing of a pool (a pool notices when
it runs in a forked child and starts its own workers there).
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import threading
import time

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mv_worker.py")
_READ_SIZE = 65536


class WorkerStartError(RuntimeError):
    """A worker did not come up (math-verify not importable in it, or too slow to start)."""


class Worker:
    """One math-verify process, used by one thread at a time."""

    def __init__(self, memory_limit_mb: int, inner_timeout_s: float):
        self._argv = [sys.executable, "-P", WORKER_SCRIPT, str(int(memory_limit_mb)), f"{inner_timeout_s:.3f}"]
        self._proc: subprocess.Popen | None = None
        self._owner_pid = 0
        self._buf = b""
        self._ready = False
        self._next_id = 0
        self._poll_in: select.poll | None = None
        self._poll_out: select.poll | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the process (returns at once; `wait_ready` waits for its warm-up)."""
        self.kill()
        proc = subprocess.Popen(
            self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            bufsize=0, close_fds=True, start_new_session=True,
        )
        os.set_blocking(proc.stdin.fileno(), False)
        self._poll_in, self._poll_out = select.poll(), select.poll()
        self._poll_in.register(proc.stdout.fileno(), select.POLLIN)
        self._poll_out.register(proc.stdin.fileno(), select.POLLOUT)
        self._proc, self._owner_pid, self._buf, self._ready = proc, os.getpid(), b"", False

    def kill(self) -> None:
        """SIGKILL the process (if it is ours) and close the pipes."""
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return
        if self._owner_pid == os.getpid():
            if proc.poll() is None:
                try:
                    proc.kill()
                except OSError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # In a forked child the process belongs to the parent: only drop our copies of the fds.
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def readiness(self) -> int:
        """2 warm and waiting, 1 starting, 0 not running. Never blocks."""
        if self._proc is None or self._owner_pid != os.getpid() or self._proc.poll() is not None:
            return 0
        if not self._ready and self._read_line(time.monotonic()) == b"ready":
            self._ready = True
        return 2 if self._ready else 1

    def wait_ready(self, timeout_s: float) -> None:
        """Start if needed and wait for the warm-up line; WorkerStartError if it never comes."""
        if self.readiness() == 0:
            self.start()
        if self._ready:
            return
        line = self._read_line(time.monotonic() + timeout_s)
        if line != b"ready":
            self.kill()
            raise WorkerStartError(f"math-verify worker did not start within {timeout_s:.0f} s "
                                   f"(is math-verify installed for {sys.executable}?)")
        self._ready = True

    # requests ----------------------------------------------------------------------------
    def ask(self, answer: str, reference: str, timeout_s: float) -> bool | None:
        """The worker's verdict, or None when it missed the deadline or died (then killed)."""
        self._next_id += 1
        ident = str(self._next_id).encode()
        request = (json.dumps({"i": self._next_id, "p": answer, "r": reference}) + "\n").encode()
        deadline = time.monotonic() + timeout_s
        if self._write(request, deadline):
            while (line := self._read_line(deadline)) is not None:
                parts = line.split()
                if len(parts) == 2 and parts[0] == ident:
                    return parts[1] == b"1"
        self.kill()
        return None

    def _write(self, data: bytes, deadline: float) -> bool:
        fd = self._proc.stdin.fileno()
        while data:
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                if not self._poll_out.poll(_ms_left(deadline)):
                    return False
            except OSError:  # broken pipe: the worker died
                return False
        return True

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the worker, polling at least once; None on timeout or EOF."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            if not self._poll_in.poll(_ms_left(deadline)):
                return None
            try:
                chunk = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.strip()


def _ms_left(deadline: float) -> int:
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


class WorkerPool:
    """Hands out workers to threads; restarts the ones that had to be killed."""

    def __init__(self, size: int, memory_limit_mb: int, inner_timeout_s: float):
        self._workers = [Worker(memory_limit_mb, inner_timeout_s) for _ in range(max(1, size))]
        self._idle = list(self._workers)
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._closed = False
        self.kills = 0  # workers killed for missing a deadline (or dying)

    def ask(self, answer: str, reference: str, timeout_s: float, startup_timeout_s: float) -> bool | None:
        """Verdict of one warm worker; None if it timed out (it is then replaced)."""
        worker = self._acquire()
        try:
            worker.wait_ready(startup_timeout_s)
            verdict = worker.ask(answer, reference, timeout_s)
            if verdict is None:
                self.kills += 1
            if verdict is None and not self._closed:
                try:
                    worker.start()  # warms up while this slot is idle
                except OSError:
                    pass  # the next wait_ready retries and reports
            return verdict
        finally:
            self._release(worker)

    def warm_up(self, startup_timeout_s: float) -> None:
        """Start every worker and wait until all are warm."""
        held: list[Worker] = []
        try:
            for _ in self._workers:
                held.append(self._acquire())
            for worker in held:  # start all first, so their imports overlap
                if worker.readiness() == 0:
                    worker.start()
            for worker in held:
                worker.wait_ready(startup_timeout_s)
        finally:
            for worker in held:
                self._release(worker)

    def _acquire(self) -> Worker:
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise RuntimeError("the math grader is closed")
                self._cond.wait()
            if self._closed:
                raise RuntimeError("the math grader is closed")
            best = max(self._idle, key=Worker.readiness)
            self._idle.remove(best)
            return best

    def _release(self, worker: Worker) -> None:
        with self._cond:
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)
            self._cond.notify()

    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.pid for w in self._workers if w.pid is not None]

    def abandon(self) -> None:
        """In a forked child: close this process's copies of the parent's worker pipes (so the
        workers still see EOF when the parent exits), without signalling them or taking the
        lock (another thread of the parent may have held it at fork time)."""
        for worker in self._workers:
            worker.kill()  # not the owner: only closes the pipes

    def owned_here(self) -> bool:
        """False in a forked child: the workers belong to the parent."""
        return self._pid == os.getpid()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            worker.kill()
        # Busy workers are killed by their thread on release.
