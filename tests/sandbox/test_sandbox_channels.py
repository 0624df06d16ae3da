"""Channels that outlive a call or cross between calls (SECURITY.md category 13, issue 16).

Every case here was an escape found by an outside audit: SysV shared memory and message
queues kept by the helper's IPC namespace, abstract unix sockets shared through the helper's
network namespace, socket families the network namespace does not cover (vsock), a status
pipe the helper trusted, and host paths in /proc/1/cmdline. The pools have one helper, so two
calls are sure to meet on the same helper (where the leaks were).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from sandbox_checks import PROJECT_ROOT, SOLO_CONFIG, check_socket_families, run_timed, wait_for

from spo_agents.sandbox import ExecStatus, SandboxPool

SYSV = r'''
import ctypes, ctypes.util, errno, json
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
IPC_CREAT, IPC_NOWAIT = 0o1000, 0o4000

class Message(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]

def put(key, text):
    shm = libc.shmget(key, 4096, IPC_CREAT | 0o666)
    address = libc.shmat(shm, None, 0)
    ctypes.memmove(address, text.encode(), len(text))
    libc.shmdt(ctypes.c_void_p(address))
    queue = libc.msgget(key, IPC_CREAT | 0o666)
    message = Message(1, text.encode())
    return shm >= 0 and queue >= 0 and libc.msgsnd(queue, ctypes.byref(message), 64, IPC_NOWAIT) == 0

def get(key):
    found = {}
    shm = libc.shmget(key, 0, 0)
    if shm >= 0:
        address = libc.shmat(shm, None, 0)
        found["shm"] = ctypes.string_at(address, 64).split(b"\0")[0].decode()
    queue = libc.msgget(key, 0)
    if queue >= 0:
        message = Message()
        if libc.msgrcv(queue, ctypes.byref(message), 64, 0, IPC_NOWAIT) >= 0:
            found["msg"] = message.mtext.decode()
    return found
'''
KEY = 0x5370_0016


@pytest.fixture(scope="module")
def solo():
    with SandboxPool(SOLO_CONFIG) as pool:
        yield pool


def test_sysv_ipc_objects_die_with_the_call(solo, token):
    stored = solo.run(SYSV + f"print(put({KEY}, {token!r}))")
    assert stored.stdout == "True\n", stored
    later = solo.run(SYSV + f"print(json.dumps(get({KEY})))")
    assert later.ok and json.loads(later.stdout) == {}, later


def test_sysv_ipc_objects_do_not_cross_sessions(solo, token):
    with solo.session() as first, solo.session() as second:
        assert first.run(SYSV + f"print(put({KEY}, {token!r}))").stdout == "True\n"
        assert json.loads(second.run(SYSV + f"print(json.dumps(get({KEY})))").stdout) == {}
        assert json.loads(solo.run(SYSV + f"print(json.dumps(get({KEY})))").stdout) == {}
        assert json.loads(first.run(f"print(json.dumps(get({KEY})))").stdout) == {"shm": token, "msg": token}


# Pins SysV shared memory without keeping it mapped (so RLIMIT_AS does not see it).
PIN_SHM = r'''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
pinned = 0
for i in range(6):
    shm = libc.shmget(0, 128 << 20, 0o1000 | 0o600)
    if shm < 0:
        break
    address = libc.shmat(shm, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        break
    ctypes.memset(address, 1, 128 << 20)
    libc.shmdt(ctypes.c_void_p(address))
    pinned += 128
    print(pinned, flush=True)
'''


def test_sysv_shared_memory_within_a_call_is_capped(solo):
    result, _ = run_timed(solo, PIN_SHM, timeout_s=10)
    pinned = int(result.stdout.split()[-1]) if result.stdout.split() else 0
    assert pinned <= max(SOLO_CONFIG.tmpfs_mb, 128), result  # 6 x 128 MB before the fix


ABSTRACT_SERVER = r'''
import socket, threading
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind("\0NAME")
server.listen()
def answer():
    while True:
        connection, _ = server.accept()
        connection.sendall(b"from-the-other-session")
        connection.close()
threading.Thread(target=answer, daemon=True).start()
print("listening")
'''
ABSTRACT_CLIENT = r'''
import socket
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    client.connect("\0NAME")
    print(client.recv(100).decode())
except OSError as exc:
    print(type(exc).__name__)
'''


def test_abstract_unix_sockets_do_not_cross_sessions_or_calls(solo, token):
    name = f"spo-{token}"
    with solo.session() as server, solo.session() as other:
        assert server.run(ABSTRACT_SERVER.replace("NAME", name)).stdout == "listening\n"
        assert server.run(ABSTRACT_CLIENT.replace("NAME", name)).stdout == "from-the-other-session\n"  # control
        assert other.run(ABSTRACT_CLIENT.replace("NAME", name)).stdout == "ConnectionRefusedError\n"
        assert solo.run(ABSTRACT_CLIENT.replace("NAME", name)).stdout == "ConnectionRefusedError\n"


def test_only_unix_and_inet_socket_families(solo):
    check_socket_families(solo)


# ----- the status pipe (fd 4 of a session's interpreter) -----------------------------------
FORGED_FRAMES = {
    "not json": "import os, struct; os.write(4, struct.pack('!II', 5, 0) + b'nojsn')",
    "huge declared frame": "import os, struct; os.write(4, struct.pack('!II', 2**31, 0) + b'x' * 65536)",
    "wrong types": "import os, struct, json; h = json.dumps({'event': 'done', 'exit_code': 'zero'}).encode()\n"
                   "os.write(4, struct.pack('!II', len(h), 0) + h)",
    "not a dict": "import os, struct; os.write(4, struct.pack('!II', 2, 0) + b'[]')",
    "forged setup error": "import os, struct, json; h = json.dumps({'event': 'setup_error', 'error': 'x'}).encode()\n"
                          "os.write(4, struct.pack('!II', len(h), 0) + h)\nimport time; time.sleep(0.5)",
}


def helper_rss_mb(pool) -> float:
    with open(f"/proc/{pool.helper_pids()[0]}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.parametrize("name", sorted(FORGED_FRAMES))
def test_a_forged_status_frame_ends_only_that_session(solo, name):
    helpers = solo.helper_pids()
    rss_before = helper_rss_mb(solo)
    with solo.session() as bystander, solo.session() as forger:
        assert bystander.run("kept = 'still here'").ok
        forger.run("x = 1")
        result, elapsed = run_timed(forger, FORGED_FRAMES[name])
        assert elapsed < SOLO_CONFIG.timeout_s + 2
        assert result.status in (ExecStatus.ERROR, ExecStatus.OK), result
        if result.status is ExecStatus.ERROR:
            assert result.session_reset and "status" in result.error, result
        assert solo.helper_pids() == helpers  # the helper survived
        assert helper_rss_mb(solo) < rss_before + 64
        assert bystander.run("print(kept)").stdout == "still here\n"
        after = forger.run("print(6 * 7)")
        assert after.stdout == "42\n", after


def test_a_dead_session_interpreter_is_never_reported_as_ok(solo):
    with solo.session() as session:
        session.run("x = 1")
        os.kill(session.runner_pid, signal.SIGKILL)
        assert wait_for(lambda: not os.path.exists(f"/proc/{session.runner_pid}/status")
                        or "State:\tZ" in open(f"/proc/{session.runner_pid}/status").read())
        result = session.run("print(x)")
        assert result.status is not ExecStatus.OK and result.session_reset, result
        assert session.run("print(2)").stdout == "2\n"


def test_sessions_of_a_killed_helper_report_an_error_not_ok():
    with SandboxPool(SOLO_CONFIG) as pool:
        with pool.session() as session:
            session.run("x = 1")
            os.kill(pool.helper_pids()[0], signal.SIGKILL)
            time.sleep(0.2)
            result = session.run("print(x)")
            assert result.status is ExecStatus.SANDBOX_ERROR and result.session_reset, result
            assert session.run("print(3)").stdout == "3\n"


# ----- host paths ---------------------------------------------------------------------------
PROC_VIEW = r'''
import json, sys
def read(path):
    try:
        return open(path, "rb").read().decode("utf-8", "replace")
    except OSError as exc:
        return type(exc).__name__
print(json.dumps({"cmdline": read("/proc/1/cmdline"), "environ": read("/proc/1/environ"),
                  "mountinfo": read("/proc/self/mountinfo"), "orig_argv": list(sys.orig_argv),
                  "argv": list(sys.argv), "modules": sorted(m for m in sys.modules if m.startswith("spo")),
                  "meta_path": [type(f).__module__ for f in sys.meta_path]}))
'''


def test_proc_and_the_interpreter_show_no_host_paths_beyond_the_exposed_ones(solo):
    result = solo.run(PROC_VIEW)
    assert result.ok, result
    view = json.loads(result.stdout)
    project = str(PROJECT_ROOT)
    assert project not in view["cmdline"] and "spo_agents" not in view["cmdline"], view["cmdline"]
    assert project not in view["environ"] and "PYTHONPATH" not in view["environ"]
    assert view["orig_argv"] == view["argv"] == ["-c"]
    assert view["modules"] == [] and not any("editable" in m for m in view["meta_path"])
    mountinfo = view["mountinfo"]
    for exposed in solo.capabilities.exposed_paths:
        mountinfo = mountinfo.replace(exposed, "<exposed>")
    assert project not in mountinfo, mountinfo
