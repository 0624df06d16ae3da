"""Shared checks for the sandbox tests (fixtures are in conftest.py).

`check_aftermath` is what every hostile case must satisfy besides its own expectation: the
call came back within its timeout plus a margin, no process it started survives, no file with
the case's token appeared on the host, the host secret never showed up, and the pool still
runs an ordinary snippet correctly.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import pytest

from spo_agents.sandbox import SandboxConfig, SandboxPool

SECRET_NAME = "SPO_SANDBOX_TEST_SECRET"
SECRET_VALUE = "s3cret-" + secrets.token_hex(8)
os.environ[SECRET_NAME] = SECRET_VALUE  # set before any pool starts, as a trainer's API key would be
MARGIN_S = 2.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A UID range of its own: other pools in the same test run (the PythonExec/ToolMath envs share a
# process-wide pool on the default range) must not count as processes left behind by a snippet.
TEST_CONFIG = SandboxConfig(num_helpers=2, timeout_s=1.0, memory_mb=512, max_processes=16,
                            output_limit_bytes=32768, tmpfs_mb=16, tmpfs_inodes=512, max_file_mb=8,
                            uid_base=SandboxConfig().uid_base + 50_000)
SOLO_CONFIG = TEST_CONFIG.model_copy(update={"num_helpers": 1, "uid_base": TEST_CONFIG.uid_base + 1000})
HOST_DIRS = ["/tmp", "/var/tmp", "/dev/shm", str(PROJECT_ROOT), "/root", "/etc", "/", os.getcwd()]

# The sandbox puts a private tmpfs over /tmp, /var/tmp and /dev/shm. An interpreter installed
# under one of them (e.g. a checkout in /tmp) is then hidden from snippets: starting a child
# Python fails, and the bubblewrap root cannot exec it. Known limitation (docs/sandbox.md).
MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
INTERPRETER_MASKED = any(path.startswith(d + "/") for d in MASKED_DIRS
                         for path in (sys.prefix, os.path.realpath(sys.prefix)))
requires_unmasked_interpreter = pytest.mark.skipif(
    INTERPRETER_MASKED, reason="the interpreter lives under /tmp, /var/tmp or /dev/shm, which the sandbox masks")

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="UID-based checks need the root (CI) setup")


def _status_fields(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    except OSError:
        return {}


def _uid_range(config: SandboxConfig) -> range:
    return range(config.uid_base, config.session_uid(config.max_sessions))


def snippet_processes(config: SandboxConfig) -> list[str]:
    """Host PIDs of processes a snippet started: sandbox UID, and a parent with a sandbox UID.

    (A runner waiting for its next call also has a sandbox UID, but its parent is the root
    supervisor, so it is not counted.)"""
    uids = _uid_range(config)

    def in_range(fields: dict[str, str]) -> bool:
        return bool(fields) and int(fields["Uid"].split()[0]) in uids

    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fields = _status_fields(pid)
        if in_range(fields) and in_range(_status_fields(fields["PPid"].strip())):
            found.append(f"{pid}: {fields.get('Name', '?').strip()}")
    return found


def _ancestors(pid: str, depth: int) -> list[int]:
    chain = []
    for _ in range(depth):
        fields = _status_fields(pid)
        if not fields:
            break
        pid = fields["PPid"].strip()
        chain.append(int(pid))
    return chain


def orphaned_runners(config: SandboxConfig, helper_pids: list[int]) -> list[str]:
    """Sandbox-UID processes that no live helper owns (runner <- supervisor <- zygote <- helper)."""
    uids, found = _uid_range(config), []
    for pid in os.listdir("/proc"):
        fields = _status_fields(pid) if pid.isdigit() else {}
        if not fields or int(fields["Uid"].split()[0]) not in uids:
            continue
        parent = _status_fields(fields["PPid"].strip())
        if parent and int(parent["Uid"].split()[0]) in uids:
            continue  # a snippet's own child: `snippet_processes` reports those
        if not set(_ancestors(pid, 3)) & set(helper_pids):
            found.append(f"{pid}: {fields.get('Name', '?').strip()} {fields.get('State', '').strip()}")
    return found


def host_files_with(token: str) -> list[str]:
    hits = []
    for directory in HOST_DIRS:
        try:
            hits += [os.path.join(directory, name) for name in os.listdir(directory) if token in name]
        except OSError:
            pass
    return hits


def wait_for(predicate, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def check_aftermath(pool: SandboxPool, result, elapsed_s: float, timeout_s: float, token: str = "") -> None:
    assert elapsed_s <= timeout_s + MARGIN_S, f"took {elapsed_s:.2f} s"
    text = result.stdout + result.stderr + result.to_observation(10**6)
    assert SECRET_VALUE not in text
    if os.geteuid() == 0 and pool.mode.value == "namespaces":
        assert snippet_processes(pool.config) == []
        orphans = orphaned_runners(pool.config, pool.helper_pids())
        assert orphans == [], orphans
    if token:
        assert host_files_with(token) == []
    follow_up = pool.run("print(6 * 7)")
    assert follow_up.stdout == "42\n" and follow_up.ok, follow_up


def run_timed(pool: SandboxPool, code: str, **kwargs):
    start = time.monotonic()
    result = pool.run(code, **kwargs)
    return result, time.monotonic() - start


# Socket families (issue 16 item 2): what a snippet may and may not create.
SOCKETS = r'''
import json, socket
def attempt(family, kind=socket.SOCK_STREAM, proto=0, listen=None):
    try:
        s = socket.socket(family, kind, proto)
        if listen is not None:
            s.bind(listen)
            s.listen()
        s.close()
        return "ok"
    except OSError as exc:
        return exc.errno
print(json.dumps({
    "vsock": attempt(40, listen=(0xFFFFFFFF, 5016)),
    "alg": attempt(38, socket.SOCK_SEQPACKET),
    "packet": attempt(17, socket.SOCK_RAW),
    "netlink_sock_diag": attempt(16, socket.SOCK_RAW, 4),
    "netlink_audit": attempt(16, socket.SOCK_RAW, 9),
    "netlink_route": attempt(16, socket.SOCK_RAW, 0),
    "unix": attempt(socket.AF_UNIX),
    "inet": attempt(socket.AF_INET),
    "inet6": attempt(socket.AF_INET6, socket.SOCK_DGRAM),
    "pair": len(socket.socketpair()),
}))
'''
ALLOWED_SOCKETS = {"netlink_route": "ok", "unix": "ok", "inet": "ok", "inet6": "ok", "pair": 2}


def check_socket_families(pool) -> None:
    result = pool.run(SOCKETS)
    assert result.ok, result
    found = json.loads(result.stdout)
    for name in ("vsock", "alg", "packet", "netlink_sock_diag", "netlink_audit"):
        assert found[name] != "ok", (name, found)
    assert {name: found[name] for name in ALLOWED_SOCKETS} == ALLOWED_SOCKETS
