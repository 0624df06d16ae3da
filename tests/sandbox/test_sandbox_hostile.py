"""Hostile snippets, several per category of ../shared/design/SECURITY.md sections 1-8.

Every case states what the model must see, and `check_aftermath` adds what must hold after
any case: back within timeout + margin, no surviving process, no file on the host, no host
secret in the output, and the pool still serving. Network cases with live servers are in
test_sandbox_network.py.
"""

from __future__ import annotations

import os
import signal

import pytest
from sandbox_checks import (PROJECT_ROOT, SECRET_NAME, SECRET_VALUE, TEST_CONFIG, check_aftermath,
                            requires_unmasked_interpreter, run_timed)

from spo_agents.sandbox import ExecStatus

S = ExecStatus


def expect(*statuses: ExecStatus, contains: str | None = None, stdout: str | None = None):
    def check(result) -> None:
        assert result.status in statuses, result
        observation = result.to_observation(10**6)
        if contains is not None:
            assert contains in observation, observation
        if stdout is not None:
            assert result.stdout == stdout, result
    return check


def case(category: str, name: str, code: str, check, marks=(), timeout_s: float | None = None):
    """`timeout_s`: for cases that must end on their own (a MemoryError after filling memory)
    and need more than the default second on a loaded machine."""
    return pytest.param(code, check, timeout_s, id=f"{category}-{name}", marks=marks)


CASES = [
    # 1. time
    case("time", "busy-loop", "while True: pass", expect(S.TIMEOUT, contains="[timed out after 1 s]")),
    case("time", "sleep", "import time; time.sleep(100)", expect(S.TIMEOUT)),
    case("time", "signal-ignoring-spin",
         "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):\n"
         "    signal.signal(s, signal.SIG_IGN)\nsignal.pthread_sigmask(signal.SIG_BLOCK, range(1, 32))\n"
         "while True: pass", expect(S.TIMEOUT)),
    case("time", "blocked-in-C", "print(sum(range(10**13)))", expect(S.TIMEOUT)),
    case("time", "libc-sleep", "import ctypes; ctypes.CDLL(None).sleep(100)", expect(S.TIMEOUT)),
    case("time", "deep-recursion", "def f(n): return f(n + 1)\nf(0)", expect(S.ERROR, contains="RecursionError")),
    case("time", "deep-recursion-raised-limit",
         "import sys; sys.setrecursionlimit(10**8)\ndef f(n): return f(n + 1)\nf(0)",
         expect(S.TIMEOUT, S.CRASHED, S.ERROR)),
    # 2. processes
    case("processes", "fork-bomb", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
         expect(S.TIMEOUT, S.ERROR)),
    case("processes", "process-count-capped",
         "import subprocess\nstarted = 0\ntry:\n    for _ in range(200):\n"
         "        subprocess.Popen(['sleep', '1000']); started += 1\nexcept OSError as e:\n"
         "    print(type(e).__name__)\nprint(started < 16)", expect(S.OK, contains="True")),
    case("processes", "thread-explosion",
         "import threading, time\nfor _ in range(10000):\n"
         "    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()",
         expect(S.ERROR, contains="can't start new thread")),
    case("processes", "setsid-double-fork-daemon",
         "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n"
         "    os._exit(0)\nprint('parent done')", expect(S.OK, stdout="parent done\n")),
    case("processes", "new-session-subprocess",
         "import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True)\nprint('spawned')",
         expect(S.OK, stdout="spawned\n")),
    case("processes", "orphan-keeps-writing",
         "import subprocess\nsubprocess.Popen(['sh', '-c', 'while true; do echo tick; sleep 0.01; done'])",
         expect(S.OK, S.OUTPUT_LIMIT)),
    case("processes", "multiprocessing-works",
         "from multiprocessing import Pool\nwith Pool(2) as p: print(p.map(abs, [-1, -2, -3]))",
         expect(S.OK, stdout="[1, 2, 3]\n")),
    # 3. memory
    case("memory", "one-huge-allocation", "x = bytearray(8 * 2**30)", expect(S.ERROR, contains="MemoryError"),
         timeout_s=5),
    case("memory", "gradual-growth", "chunks = []\nwhile True: chunks.append(bytearray(2**20))",
         expect(S.ERROR, contains="MemoryError"), timeout_s=5),
    case("memory", "numpy-huge-array", "import numpy as np; np.ones((10**5, 10**5))",
         expect(S.ERROR, contains="Unable to allocate"), timeout_s=5),
    case("memory", "numpy-gradual", "import numpy as np\nkeep = []\nwhile True: keep.append(np.ones(10**7))",
         expect(S.ERROR, contains="MemoryError"), timeout_s=5),
    case("memory", "anonymous-mmap", "import mmap; m = mmap.mmap(-1, 2**34)", expect(S.ERROR)),
    case("memory", "memory-in-a-child",
         "import subprocess, sys\nr = subprocess.run([sys.executable, '-c', 'bytearray(8 * 2**30)'], "
         "capture_output=True)\nprint(r.returncode != 0, b'MemoryError' in r.stderr)",
         expect(S.OK, stdout="True True\n"), marks=requires_unmasked_interpreter),
    # 4. output
    case("output", "unbounded-stdout", "while True: print('x' * 1000)",
         expect(S.OUTPUT_LIMIT, contains="output limit of 32768 bytes exceeded")),
    case("output", "unbounded-stderr", "import sys\nwhile True: sys.stderr.write('e' * 1000)",
         expect(S.OUTPUT_LIMIT)),
    case("output", "one-huge-write", "import sys; sys.stdout.write('y' * 10**8)", expect(S.OUTPUT_LIMIT)),
    case("output", "invalid-utf8-and-nul",
         "import sys; sys.stdout.buffer.write(b'a\\x00b\\xff\\xfe\\xc3(end')",
         expect(S.OK, contains="a\\x00b")),
    case("output", "closed-descriptors", "import os; os.close(1); os.close(2); print('lost')",
         expect(S.OK, S.ERROR)),
    case("output", "escape-sequences", "print('\\x1b[2J\\x1b[31mred\\x07')",
         expect(S.OK, contains="\\x1b[31mred")),
    # 5. disk
    case("disk", "one-big-file", "open('big', 'wb').write(b'x' * 100 * 2**20)",
         expect(S.ERROR, contains="File too large")),
    case("disk", "fill-the-tmpfs", "for i in range(10):\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 7 * 2**20)",
         expect(S.ERROR, contains="No space left on device")),
    case("disk", "many-small-files", "for i in range(100000):\n    open(f'/tmp/n{i}', 'w').close()",
         expect(S.ERROR, contains="No space left on device")),
    case("disk", "writes-outside-the-work-dir",
         "import os\nwritten = []\nfor d in ['/tmp', '/var/tmp', '/dev/shm', '/', '/etc', '/root', '/usr', "
         f"'{PROJECT_ROOT}', '{PROJECT_ROOT}/.venv', '/work', os.getcwd()]:\n"
         "    try:\n        open(os.path.join(d, 'TOKEN'), 'w').write('x'); written.append(d)\n"
         "    except OSError:\n        pass\nprint(sorted(written))",
         expect(S.OK, stdout="['/dev/shm', '/sandbox', '/tmp', '/var/tmp']\n")),
    # 6. secrets
    case("secrets", "environment", "import os; print(sorted(os.environ))",
         expect(S.OK, stdout="['HOME', 'LANG', 'MKL_NUM_THREADS', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', "
                             "'PATH', 'PYTHONDONTWRITEBYTECODE', 'TMPDIR', 'USER']\n")),
    case("secrets", "proc-environ-and-cmdline",
         "import os\nfor pid in os.listdir('/proc'):\n    for leaf in ('environ', 'cmdline'):\n        try:\n"
         "            print(open(f'/proc/{pid}/{leaf}', 'rb').read())\n        except OSError:\n            pass",
         expect(S.OK)),
    case("secrets", "other-processes-invisible",
         "import os; print([p for p in os.listdir('/proc') if p.isdigit()])", expect(S.OK, stdout="['1']\n")),
    case("secrets", "project-checkout",
         f"import os; print(os.path.exists('{PROJECT_ROOT}/pyproject.toml'), "
         f"os.path.exists('{PROJECT_ROOT}/spo_agents'))", expect(S.OK, stdout="False False\n")),
    case("secrets", "host-user-files",
         "import os\nprint([p for p in ('/etc/shadow', '/root/.bash_history', '/root/.ssh', '/home', '/var/log', "
         "'/run', '/proc/1/root/etc/shadow') if os.path.exists(p)])", expect(S.OK, stdout="[]\n")),
    # 8. the host and the helper
    case("host", "kill-everything", "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n"
         "    pass\nprint('still here')", expect(S.OK, stdout="still here\n")),
    case("host", "kill-parent", "import os\nos.kill(os.getppid(), 9)\nprint('alive')", expect(S.OK)),
    case("host", "kill-process-group", "import os, signal\ntry:\n    os.killpg(0, signal.SIGKILL)\n"
         "except OSError as e:\n    print(e)", expect(S.OK, S.CRASHED)),
    case("host", "kill-guessed-pids", "import os\nhits = 0\nfor pid in range(2, 70000):\n    try:\n"
         "        os.kill(pid, 9); hits += 1\n    except OSError:\n        pass\nprint(hits)",
         expect(S.OK, stdout="0\n")),
    case("host", "inherited-descriptors", "import os\nopen_fds = []\nfor fd in range(3, 1024):\n    try:\n"
         "        os.fstat(fd); open_fds.append(fd)\n    except OSError:\n        pass\nprint(open_fds)",
         expect(S.OK, stdout="[]\n")),
    case("host", "os-exit-before-checks", "print('checks passed')\nimport os; os._exit(0)", expect(S.OK)),
    case("host", "sys-exit-code", "import sys; sys.exit(5)", expect(S.ERROR, contains="[exit code 5]")),
    case("host", "segfault-via-ctypes", "import ctypes; ctypes.string_at(0)",
         expect(S.CRASHED, contains="segmentation fault (SIGSEGV)")),
    case("host", "abort", "import os; os.abort()", expect(S.CRASHED, S.ERROR, S.OK)),
    case("host", "fd-exhaustion", "files = []\nwhile True: files.append(open('/dev/null'))",
         expect(S.ERROR, contains="Too many open files")),
    case("host", "stdin-input", "print(input())", expect(S.ERROR, contains="EOFError")),
    case("host", "stdin-read-fd", "import os, sys; print(repr(sys.stdin.read()), os.read(0, 100))",
         expect(S.OK, stdout="'' b''\n")),
    case("host", "raise-privileges", "import os\ntry:\n    os.setuid(0)\nexcept PermissionError:\n    print('denied')",
         expect(S.OK, stdout="denied\n")),
    case("host", "new-namespaces", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "print([libc.unshare(flag) for flag in (0x10000000, 0x20000, 0x40000000)])",
         expect(S.OK, stdout="[-1, -1, -1]\n")),
    case("host", "mount", "import ctypes\nprint(ctypes.CDLL(None).mount(b'none', b'/tmp', b'tmpfs', 0, None))",
         expect(S.OK, stdout="-1\n")),
]


@pytest.mark.parametrize("code, check, timeout_s", CASES)
def test_hostile_snippet(pool, token, code, check, timeout_s):
    timeout_s = timeout_s or TEST_CONFIG.timeout_s
    result, elapsed = run_timed(pool, code.replace("TOKEN", token), timeout_s=timeout_s)
    check(result)
    check_aftermath(pool, result, elapsed, timeout_s, token)


def test_every_category_has_several_cases():
    counts = {}
    for param in CASES:
        category = param.id.split("-")[0]
        counts[category] = counts.get(category, 0) + 1
    assert set(counts) == {"time", "processes", "memory", "output", "disk", "secrets", "host"}
    assert min(counts.values()) >= 4


def test_host_secret_is_set_in_the_test_process():
    assert os.environ[SECRET_NAME] == SECRET_VALUE  # otherwise the secret checks would prove nothing


def test_output_is_capped_and_kept(pool):
    result, _ = run_timed(pool, "while True: print('z' * 99)")
    total = len(result.stdout.encode()) + len(result.stderr.encode())
    assert result.truncated and total == TEST_CONFIG.output_limit_bytes
    assert result.stdout.startswith("z" * 99)


def test_helper_processes_survive_hostile_signals(pool):
    before = pool.helper_pids()
    pool.run("import os, signal\nfor pid in range(1, 5000):\n    try: os.kill(pid, signal.SIGKILL)\n"
             "    except OSError: pass")
    assert pool.helper_pids() == before
    for pid in before:
        os.kill(pid, 0)  # still alive
    assert signal.getsignal(signal.SIGINT) is not None  # and so is this test process


# Counts copies of a byte string in the process's own memory, outside the needle and buffer.
MEMORY_SCANNER = r'''
import ctypes
needle = bytes.fromhex(HEX)
buf = bytearray(1 << 20)
buf_addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
needle_addr = id(needle) + bytes.__basicsize__ - 1
skip = [(buf_addr, buf_addr + len(buf)), (needle_addr, needle_addr + len(needle))]
hits = 0
for line in open('/proc/self/maps').read().splitlines():
    fields = line.split()
    if 'r' not in fields[1] or (len(fields) > 5 and fields[5].startswith(('[vvar', '[vsyscall'))):
        continue
    start, end = (int(x, 16) for x in fields[0].split('-'))
    pos = start
    while pos < end:
        n = min(len(buf), end - pos)
        ctypes.memmove(buf_addr, pos, n)
        i = buf.find(needle, 0, n)
        while i != -1:
            hits += not any(lo <= pos + i < hi for lo, hi in skip)
            i = buf.find(needle, i + 1, n)
        pos += max(1, n - len(needle))
print(hits)
'''


def test_no_remnants_of_earlier_calls_in_a_new_runners_memory(pool, token):
    """A grader's hidden tests (or another episode's code) must not be readable later on."""
    secret_test = f"assert solution() == 'hidden-{token}'"
    scanner = MEMORY_SCANNER.replace("HEX", repr(f"hidden-{token}".encode().hex()))
    with pool.session() as session:  # control: the scanner finds a copy that is there
        session.run(f"kept = 'hidden-' + '{token}'")
        found = session.run(scanner, timeout_s=30)
        assert found.ok and int(found.stdout) >= 1, found
    for _ in range(TEST_CONFIG.num_helpers):
        pool.run(secret_test)
        pool.run(f"print('hidden-{token}')")
    for _ in range(2 * TEST_CONFIG.num_helpers):
        scanned = pool.run(scanner, timeout_s=30)
        assert scanned.ok and scanned.stdout == "0\n", scanned
