"""The other isolation modes: bubblewrap fallback, unisolated opt-in, and a non-root user.

The bubblewrap tests need `bwrap` (CI installs the bubblewrap package); the non-root test
runs a pool as `nobody` through `setpriv` and needs a system Python of the same version,
permission to create user namespaces, and a checkout readable by `nobody`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import pytest
from sandbox_checks import (INTERPRETER_MASKED, PROJECT_ROOT, SECRET_VALUE, TEST_CONFIG, check_socket_families,
                            run_timed, wait_for)

from spo_agents.sandbox import ExecStatus, IsolationMode, SandboxPool, detect_capabilities

requires_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None or INTERPRETER_MASKED,
                                    reason="bubblewrap is not installed, or the interpreter lives under a "
                                           "directory the sandbox masks (/tmp, /var/tmp, /dev/shm)")


def processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


ESCAPE = ("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)', 'MARK'], "
          "start_new_session=True)\nprint('spawned')")


@pytest.fixture(scope="module")
def bwrap_pool():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    with SandboxPool(TEST_CONFIG.model_copy(update={"mode": IsolationMode.BWRAP, "num_helpers": 1})) as pool:
        yield pool


@requires_bwrap
def test_bwrap_mode_isolates(bwrap_pool):
    assert bwrap_pool.capabilities.isolated, bwrap_pool.capabilities.format()
    assert all(bwrap_pool.capabilities.layers.values()), bwrap_pool.capabilities.format()
    check_socket_families(bwrap_pool)  # vsock & co. are refused here too (issue 16 item 2)
    shm = bwrap_pool.run("import ctypes; print(ctypes.CDLL(None).shmget(0, 4096, 0o1000 | 0o600))")
    assert shm.stdout == "-1\n", shm  # SysV memory cannot be capped in bwrap mode: refused
    assert bwrap_pool.run("print(6 * 7)").stdout == "42\n"
    probe = bwrap_pool.run(
        "import json, os, socket\ntry:\n    environ = open('/proc/1/environ').read()\nexcept OSError:\n"
        "    environ = ''\nprint(json.dumps({'pid': os.getpid(), 'uid': os.getuid(), 'environ': environ,"
        f" 'checkout': os.path.exists('{PROJECT_ROOT}/pyproject.toml'),"
        " 'interfaces': [n for _, n in socket.if_nameindex()]}))")
    facts = json.loads(probe.stdout)
    assert facts["pid"] == 1 and facts["uid"] != 0 and not facts["checkout"] and facts["interfaces"] == ["lo"]
    assert SECRET_VALUE not in probe.stdout


@requires_bwrap
@pytest.mark.parametrize("code, status", [
    ("while True: pass", ExecStatus.TIMEOUT),
    ("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", ExecStatus.TIMEOUT),
    ("x = bytearray(8 * 2**30)", ExecStatus.ERROR),
    ("while True: print('x' * 1000)", ExecStatus.OUTPUT_LIMIT),
    ("import ctypes; print(ctypes.CDLL(None).unshare(0x10000000))", ExecStatus.OK),
    (ESCAPE, ExecStatus.OK),
])
def test_bwrap_mode_hostile(bwrap_pool, code, status):
    marker = f"spo-mark-{time.monotonic_ns()}"
    result, elapsed = run_timed(bwrap_pool, code.replace("MARK", marker))
    assert result.status is status and elapsed < TEST_CONFIG.timeout_s + 3
    assert "-1" in result.stdout or "unshare" not in code
    assert wait_for(lambda: processes_with(marker) == [])
    assert bwrap_pool.run("print(1)").stdout == "1\n"


@requires_bwrap
def test_bwrap_session(bwrap_pool):
    with bwrap_pool.session() as session:
        session.run("x = 5")
        assert session.run("print(x * 2)").stdout == "10\n"


def test_unisolated_mode_warns_loudly_and_still_limits():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = SandboxPool(TEST_CONFIG.model_copy(update={"mode": IsolationMode.UNISOLATED, "num_helpers": 1}))
    try:
        assert any("UNISOLATED" in str(w.message) for w in caught)
        assert not pool.capabilities.isolated and "WARNING" in pool.capabilities.format()
        assert pool.run("print(6 * 7)").stdout == "42\n"
        result, elapsed = run_timed(pool, "while True: pass")
        assert result.timed_out and elapsed < TEST_CONFIG.timeout_s + 2
        assert SECRET_VALUE not in pool.run("import os; print(os.environ)").stdout
        assert "MemoryError" in pool.run("x = bytearray(8 * 2**30)").stderr
    finally:
        pool.close()


def test_auto_mode_never_falls_back_to_unisolated_silently():
    report = detect_capabilities(TEST_CONFIG)
    assert report.mode in (IsolationMode.NAMESPACES, IsolationMode.BWRAP, None)
    if report.mode is not None:
        assert report.isolated, report.format()


NON_ROOT_SCRIPT = r"""
import json, os, sys, time
print(json.dumps({"stage": "python"}), flush=True)
from spo_agents.sandbox import SandboxConfig, SandboxPool
print(json.dumps({"stage": "import"}), flush=True)
with SandboxPool(SandboxConfig(num_helpers=1, timeout_s=1.0, memory_mb=512, mode="namespaces")) as pool:
    report = pool.capabilities
    start = time.monotonic()
    bomb = pool.run("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass")
    out = {"stage": "pool", "isolated": report.isolated, "user_namespace": report.user_namespace,
           "layers": report.layers, "hello": pool.run("print(6 * 7)").stdout,
           "bomb": bomb.status.value, "bomb_s": time.monotonic() - start,
           "procs": pool.run("import os; print([p for p in os.listdir('/proc') if p.isdigit()])").stdout,
           "env": pool.run("import os; print(sorted(os.environ))").stdout,
           "net": pool.run("import socket; socket.create_connection(('127.0.0.1', 22), timeout=0.5)").error,
           "after": pool.run("print('ok')").stdout}
    with pool.session() as session:
        session.run("x = 3")
        out["session"] = session.run("print(x)").stdout
print(json.dumps(out), flush=True)
"""


def test_non_root_user_gets_a_user_namespace_sandbox():
    python = "/usr/bin/python3"
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not os.path.exists(python):
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    if version.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip("the system Python's version differs from this one (compiled packages would not load)")
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": ":".join([str(PROJECT_ROOT), *site])}
    completed = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
                                NON_ROOT_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    stages = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    if not stages or stages[-1]["stage"] != "pool":
        reason = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        if not stages or stages[-1]["stage"] == "python" or "unshare" in completed.stderr:
            pytest.skip(f"cannot run the sandbox as nobody here: {reason[0]}")
        pytest.fail(completed.stderr)
    out = stages[-1]
    assert out["isolated"] and out["user_namespace"], out["layers"]
    assert all(out["layers"].values()), out["layers"]  # every layer, the issue 16 ones included
    assert out["hello"] == "42\n" and out["after"] == "ok\n" and out["session"] == "3\n"
    assert out["bomb"] in ("timeout", "error") and out["bomb_s"] < 4
    assert out["procs"] == "['1']\n" and "SPO_SANDBOX_TEST_SECRET" not in out["env"]
    assert "unreachable" in out["net"]
