"""The helper process: one pool slot's pre-warmed interpreter, supervisor of its calls.

Started by the pool with `subprocess` (never a fork of the trainer), one per pool slot:
`python -c <BOOTSTRAP> FD` where FD is its end of a socketpair. The bootstrap imports only
`spo_agents.sandbox.helper` and its light siblings, without running `spo_agents/__init__`
(which imports gymnasium and loads plugins: slow, large to fork, and foreign code in a
process that runs as root). `python -m spo_agents.sandbox.helper FD` works too.

Start-up (namespaces mode): pre-import the allowed modules; make the helper's directory of
runner memory cgroups (`cgroups.py`, when one is usable); unshare network, mount, IPC and UTS
namespaces (plus a user namespace when not root); build the allow-list root, with the hidden
packages masked, and pivot into it (`rootfs.py`); blank the process's command line and
environment strings (they name the project's directory and are inherited by every runner);
`gc.freeze()`; fork the zygote that will fork every runner (`factory.py`); then run a probe
snippet through the full path, whose findings from inside the sandbox are the capability
report sent in the "hello" frame.

Serving: for a stateless call the helper takes its ready runner (asked from the zygote as
soon as the previous call was answered, so its set-up overlaps the caller's think time),
sends it the code and supervises it (`supervise.py`). A stateful session's runner is created
the same way, but its descriptors go to the pool, which lends them to any helper per call.

A failure while handling one call (whatever a runner sent) ends that call with an error
result; it never takes the helper, and with it the other sessions it serves, down.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys

from spo_agents.sandbox import cgroups, rootfs, runner
from spo_agents.sandbox import syscalls as sc
from spo_agents.sandbox.factory import (BWRAP_UID, LIGHT_PREIMPORTS, PR_SET_CHILD_SUBREAPER, SNIPPET_ENV,
                                        RunnerFactory, reap_children, start_zygote)
from spo_agents.sandbox.protocol import Channel, ChannelClosed, HelperSettings, IsolationMode, SandboxConfigError
from spo_agents.sandbox.result import classify
from spo_agents.sandbox.supervise import CallFacts, Outcome, RunnerHandle, supervise_call

HELPER_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
PROBE_TIMEOUT_S = 20.0
SPAWN_TIMEOUT_S = 10.0
ZYGOTE_EXIT_S = 5.0
# Runs inside a fresh runner at start-up: what the snippet's world really looks like.
PROBE_CODE = r'''
import ctypes, importlib, json, os, resource, socket, sys
def check(test):
    try:
        return bool(test())
    except Exception:
        return False
def refused(*args):
    try:
        socket.socket(*args).close()
    except OSError:
        return True
    return False
def memfd_refused():
    try:
        os.close(os.memfd_create("probe"))
    except OSError:
        return True
    return False
def own_cgroup():
    return [line for line in open("/proc/self/cgroup").read().splitlines() if EXPECT["cgroup_key"] in line]
def hidden_names():
    import fnmatch, pkgutil
    patterns = EXPECT["hidden_packages"]
    listed = {m.name for m in pkgutil.iter_modules() if any(fnmatch.fnmatchcase(m.name, p) for p in patterns)}
    return listed | {p for p in patterns if not any(c in p for c in "*?[")}
HIDDEN = hidden_names()
def importable(name):
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
libc = ctypes.CDLL(None, use_errno=True)
print(json.dumps({
    "network_namespace": check(lambda: {name for _, name in socket.if_nameindex()} <= {"lo"}),
    "pid_namespace": check(lambda: os.getpid() == 1),
    "private_proc": check(lambda: len([p for p in os.listdir("/proc") if p.isdigit()]) <= 2),
    "read_only_root": check(lambda: os.statvfs("/").f_flag & os.ST_RDONLY),
    "host_files_hidden": check(lambda: not any(os.path.exists(p) for p in EXPECT["hidden"])),
    "private_tmpfs": check(lambda: os.statvfs("/tmp").f_blocks * os.statvfs("/tmp").f_frsize <= EXPECT["tmp_bytes"]),
    "rlimits": check(lambda: resource.getrlimit(resource.RLIMIT_AS)[0] == EXPECT["as_bytes"]
                     and resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)),
    "unprivileged_uid": check(lambda: os.getuid() != 0 and os.geteuid() != 0),
    "no_capabilities": check(lambda: int(status["CapEff"], 16) == 0),
    "no_new_privs": check(lambda: status["NoNewPrivs"].strip() == "1"),
    "seccomp_filter": check(lambda: status["Seccomp"].strip() == "2"),
    "namespaces_blocked": check(lambda: libc.unshare(0x10000000) != 0),
    "cleared_environment": check(lambda: set(os.environ) <= set(EXPECT["env"])),
    "ipc_namespace": check(lambda: os.readlink("/proc/self/ns/ipc") != EXPECT["helper"]["ipc"]),
    "runner_network_namespace": check(lambda: os.readlink("/proc/self/ns/net") != EXPECT["helper"]["net"]),
    "socket_families_filtered": check(lambda: refused(16, socket.SOCK_RAW, 4) and refused(40, socket.SOCK_STREAM, 0)
                                      and refused(17, socket.SOCK_DGRAM, 0)),
    "call_memory_limit": check(lambda: own_cgroup() != EXPECT["helper"]["cgroup"] if EXPECT["cgroup"]
                               else memfd_refused() and EXPECT["sized"]),
    "packages_hidden": check(lambda: not any(importable(n) for n in HIDDEN)
                             and not [m for m in sys.modules if m.split(".")[0] in HIDDEN]),
    "proc_scrubbed": check(lambda: not any(b in open("/proc/1/cmdline", "rb").read()
                                           for b in (b"spo_agents", b"import", b"/"))),
}))
'''
# `python -c` program the pool starts: import the helper without `spo_agents/__init__`.
BOOTSTRAP = """\
import sys, types
for name, path in (("spo_agents", sys.argv[2]), ("spo_agents.sandbox", sys.argv[2] + "/sandbox")):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
from spo_agents.sandbox.helper import main
main(int(sys.argv[1]))
"""


def _vm_size_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class Helper:
    """One helper process: sets up isolation once, then serves frames from the pool."""

    def __init__(self, channel: Channel, settings: HelperSettings):
        self.channel = channel
        self.s = settings
        self.user_namespace = False
        self.exposed: list[str] = []
        self.masked: list[str] = []
        self.cgroups: cgroups.RunnerCgroups | None = None
        self.helper_view: dict = {}
        self.sized = False
        self.ready: RunnerHandle | None = None
        self.zygote_pid = 0
        self.zygote: Channel | None = None

    # start-up ----------------------------------------------------------------------------------
    def setup(self) -> dict:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sc.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphaned runners come back to us to be reaped
        bwrap_argv, runner_source = [], ""
        if self.s.mode is IsolationMode.BWRAP:
            self._preimport(LIGHT_PREIMPORTS)
            with open(runner.__file__, encoding="utf-8") as f:
                runner_source = f.read()
            bwrap_argv = self._bwrap_argv()
        else:
            self._preimport(self.s.preimport)
            if _vm_size_mb() + 64 > self.s.memory_mb:
                raise SandboxConfigError(f"memory_mb={self.s.memory_mb} leaves no room: the pre-warmed interpreter "
                                         f"already maps {_vm_size_mb():.0f} MB")
        runner.reseed()  # numpy's first seeding costs ~10 ms: pay it here, not in every runner
        self.helper_view = self._own_view()
        # without a cgroup, processes x address space (+ scratch) must fit the host's RAM
        self.sized = self.s.max_processes * self.s.memory_mb + self.s.tmpfs_mb <= cgroups.host_memory_mb()
        if self.s.cgroup_path:  # before pivot_root: the cgroup file system is not inside
            base = cgroups.CgroupBase(self.s.cgroup_version, self.s.cgroup_path)
            self.cgroups = cgroups.RunnerCgroups(base, self.s.call_memory_mb << 20, f"spo-sandbox-{os.getpid()}")
        hidden = rootfs.hidden_entries(rootfs.site_directories(self.s.readonly_paths), self.s.hidden_packages)
        runner.scrub_process_title()  # while /proc is still the host's
        # once here, every runner inherits it; the helper's own spo_agents modules always go (a
        # snippet that may import the project gets it from site-packages, whole)
        runner.scrub_interpreter([*self.s.hidden_packages, "spo_agents"])
        if self.s.mode is IsolationMode.NAMESPACES:
            self._enter_namespaces(hidden)
        elif self.s.mode is IsolationMode.BWRAP:
            self.masked = [path for _, path in hidden]
        gc.freeze()
        factory = RunnerFactory(self.s, self.user_namespace, bwrap_argv, runner_source, self.cgroups,
                                hidden if self.s.mode is IsolationMode.BWRAP else [])
        self.zygote_pid, self.zygote = start_zygote(factory)
        layers = self._probe()
        return {"mode": self.s.mode.value, "euid": os.geteuid(), "user_namespace": self.user_namespace,
                "layers": layers, "exposed_paths": self.exposed, "masked_paths": self.masked,
                "python": sys.version.split()[0], "preimported": [m for m in self.s.preimport if m in sys.modules]}

    def _own_view(self) -> dict:
        """The helper's namespaces and memory cgroup, for the probe to compare a runner's with."""
        key = self._cgroup_key()
        with open("/proc/self/cgroup") as f:
            own = [line for line in f.read().splitlines() if key in line]
        return {"ipc": os.readlink("/proc/self/ns/ipc"), "net": os.readlink("/proc/self/ns/net"), "cgroup": own}

    def _cgroup_key(self) -> str:
        return ":memory:" if self.s.cgroup_version == 1 else "0::"

    @staticmethod
    def _preimport(names) -> None:
        for name in names:
            try:
                __import__(name)
            except ImportError:
                pass

    def _enter_namespaces(self, hidden: list[tuple[str, str]]) -> None:
        if os.geteuid() == 0:
            sc.unshare(HELPER_NAMESPACES)
        else:
            uid, gid = os.geteuid(), os.getegid()
            sc.unshare(sc.CLONE_NEWUSER | HELPER_NAMESPACES)
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"0 {uid} 1")
            _write_file("/proc/self/gid_map", f"0 {gid} 1")
            self.user_namespace = True
        sc.sethostname("sandbox")
        self.helper_view.update(ipc=os.readlink("/proc/self/ns/ipc"), net=os.readlink("/proc/self/ns/net"))
        root = rootfs.build_root(self.s.readonly_paths, keep_host_proc=self.user_namespace, hidden=hidden)
        self.exposed, self.masked = root.exposed, root.masked

    def _bwrap_argv(self) -> list[str]:
        argv = [self.s.bwrap_path or "bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--as-pid-1", "--new-session", "--clearenv",
                "--hostname", "sandbox"]
        if os.geteuid() != 0:  # as root, the runner drops to the slot's UID itself (root has no NPROC limit)
            argv += ["--unshare-user", "--disable-userns", "--uid", str(BWRAP_UID), "--gid", str(BWRAP_UID),
                     "--cap-drop", "ALL"]
        steps = rootfs.plan_exposures(rootfs.sandbox_paths(self.s.readonly_paths))
        parents = sorted({os.path.dirname(dest) for _, _, dest in steps} - {"/"}, key=lambda p: (p.count("/"), p))
        for parent in rootfs.with_ancestors(parents):  # bwrap would create them 0700: unreadable after the drop
            argv += ["--perms", "0755", "--dir", parent]
        for kind, source, dest in steps:
            argv += ["--symlink", source, dest] if kind == "symlink" else ["--ro-bind", source, dest]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        for target in ("/tmp", rootfs.WORK_DIR, "/dev/shm"):  # each capped (bwrap cannot share one tmpfs)
            argv += ["--size", str(self.s.tmpfs_mb << 20), "--perms", "1777", "--tmpfs", target]
        argv += ["--symlink", "/tmp", "/var/tmp", "--remount-ro", "/", "--chdir", rootfs.WORK_DIR]
        self.exposed = [source for kind, source, _ in steps if kind == "bind"]
        return argv

    def _probe(self) -> dict:
        expect = {"hidden": ["/etc/shadow", "/home", "/var/log"],
                  "tmp_bytes": int(self.s.tmpfs_mb * 1.05) << 20, "as_bytes": self.s.memory_mb << 20,
                  "env": sorted(SNIPPET_ENV), "helper": self.helper_view, "cgroup": self.cgroups is not None,
                  "cgroup_key": self._cgroup_key(), "sized": self.sized,
                  "hidden_packages": list(self.s.hidden_packages)}
        code = f"EXPECT = {expect!r}\n{PROBE_CODE}"
        header, payload = self.execute(self.spawn(session=False, uid=self.s.slot_uid),
                                       {"code_len": len(code.encode()), "timeout_s": PROBE_TIMEOUT_S},
                                       code.encode(), session=False)
        if header["status"] != "ok":
            stderr = payload[header["stdout_len"]:].decode("utf-8", "replace")
            raise RuntimeError(f"the probe snippet failed: {header['error']}\n{stderr[-1500:]}")
        return json.loads(payload[:header["stdout_len"]])

    # serving -----------------------------------------------------------------------------------
    def spawn(self, session: bool, uid: int) -> RunnerHandle:
        """A new runner from the zygote (it sets itself up while we go on)."""
        self.zygote.send({"session": session, "uid": uid})
        reply, _, fds = self.zygote.recv(SPAWN_TIMEOUT_S)
        if not reply.get("ok") or len(fds) != 5:
            for fd in fds:
                os.close(fd)
            raise OSError(f"the zygote could not start a runner: {reply.get('error', 'no descriptors')}")
        return RunnerHandle.from_fds([*fds, None])

    def execute(self, handle: RunnerHandle, header: dict, payload: bytes, session: bool) -> tuple[dict, bytes]:
        """Supervise one call on `handle`; the result header and stdout+stderr payload."""
        timeout_s = float(header["timeout_s"])
        request = runner.encode_frame({"code_len": header["code_len"], "has_stdin": bool(header.get("has_stdin")),
                                       "timeout_s": timeout_s}, payload)
        try:
            facts = supervise_call(handle, request, timeout_s, self.s.output_limit_bytes,
                                   ready_known=bool(header.get("ready_known")))
        except Exception as exc:  # whatever went wrong, only this runner pays: stop it, report
            handle.kill()
            facts = CallFacts(outcome=Outcome.EXITED, duration_s=0.0, setup_error=f"{type(exc).__name__}: {exc}")
        return self._result_header(facts, timeout_s, session), bytes(facts.stdout) + bytes(facts.stderr)

    def _result_header(self, facts: CallFacts, timeout_s: float, session: bool) -> dict:
        stderr = facts.stderr.decode("utf-8", "replace")
        status, error = classify(facts.exit_code, facts.signal, timed_out=facts.outcome is Outcome.TIMED_OUT,
                                 truncated=facts.outcome is Outcome.OUTPUT_LIMIT, timeout_s=timeout_s,
                                 output_limit_bytes=self.s.output_limit_bytes, stderr=stderr,
                                 setup_error=facts.setup_error, violation=facts.violation,
                                 status_lost=facts.status_lost, oom_killed=facts.oom_killed,
                                 call_memory_mb=self.s.call_memory_mb)
        return {"status": status.value, "error": error, "exit_code": facts.exit_code, "signal": facts.signal,
                "timed_out": facts.outcome is Outcome.TIMED_OUT, "truncated": facts.outcome is Outcome.OUTPUT_LIMIT,
                "duration_s": round(facts.duration_s, 6), "stdout_len": len(facts.stdout),
                "session_alive": facts.runner_alive, "session_reset": session and not facts.runner_alive,
                "ready_known": facts.ready}

    def serve(self) -> None:
        """Answer requests until the pool closes the channel."""
        try:
            while True:
                if self.ready is None:
                    self.ready = self.spawn(session=False, uid=self.s.slot_uid)
                reap_children()
                self._handle(*self.channel.recv())
        except ChannelClosed:
            return

    def _handle(self, header: dict, payload: bytes, fds: list[int]) -> None:
        op = header.get("op")
        if op == "exec":
            if fds:  # a session's runner, lent by the pool for this call
                handle, session = RunnerHandle.from_fds(fds), True
            else:
                handle, self.ready, session = self.ready, None, False
            try:
                reply = self.execute(handle, header, payload, session=session)
            finally:
                handle.close()
            self.channel.send(*reply)
        elif op == "open_session":
            self._open_session(int(header["uid"]))
        else:
            self.channel.send({"error": f"unknown op {op!r}"})

    def _open_session(self, uid: int) -> None:
        try:
            handle = self.spawn(session=True, uid=uid)
            handle.receive_pidfd()
        except (OSError, TimeoutError) as exc:
            self.channel.send({"ok": False, "error": str(exc)})
            return
        self.channel.send({"ok": True, "pid": handle.pid}, fds=handle.fds())
        handle.close()

    def shutdown(self) -> None:
        """Kill the waiting runner, let the zygote kill and reap the rest, reap orphans."""
        if self.ready is not None:
            try:
                if self.ready.pidfd is None:
                    self.ready.receive_pidfd(timeout_s=1.0)
                self.ready.kill()
            except OSError:
                pass
            self.ready.close()
        if self.zygote is not None:
            self.zygote.close()  # the zygote kills its supervisors, reaps them, and exits
            if self.zygote_pid not in reap_children(block_s=ZYGOTE_EXIT_S):
                try:
                    os.kill(self.zygote_pid, signal.SIGKILL)
                except OSError:
                    pass
            reap_children(block_s=1.0)  # the zygote, and orphans reparented to us
        if self.cgroups is not None:
            self.cgroups.remove_all()


def main(fd: int) -> None:
    channel = Channel(socket.socket(fileno=fd))
    header, _, _ = channel.recv()
    try:
        helper = Helper(channel, HelperSettings.from_dict(header["settings"]))
        report = helper.setup()
    except BaseException as exc:
        channel.send({"event": "hello", "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "config_error": isinstance(exc, SandboxConfigError)})
        sys.exit(1)
    channel.send({"event": "hello", "ok": True, "report": report})
    try:
        helper.serve()
    finally:
        helper.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
