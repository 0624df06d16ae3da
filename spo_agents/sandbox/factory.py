"""Forking isolated runners: the zygote, its supervisors, and the runners' set-up.

Why a zygote: a runner is a fork, so it sees a copy of its parent's memory. If runners were
forked from the helper, which handles every request and answer, a snippet could search its
own memory for remnants of earlier calls: other episodes' code, outputs, or the hidden tests
a grader ran. So right after warm-up the helper forks a zygote that never sees a request: it
only receives "spawn (session?, uid)" and sends back the new runner's descriptors. Every
runner descends from that pristine copy.

Per spawn: the zygote forks a supervisor S; S makes R's memory cgroup (when there is one),
unshares a PID namespace and forks the runner R (PID 1 there, so killing R kills everything
the snippet started) and reports R's pid, pidfd and finally its wait status and whether the
cgroup saw an OOM kill, then removes the cgroup. R joins its cgroup, then, in new mount, IPC
and network namespaces of its own (so SysV objects and abstract unix sockets neither outlive
the call nor meet another call's), mounts its scratch tmpfs and procfs, caps SysV shared
memory and message queues, drops to the slot's UID (root) or into a nested user namespace
without capabilities (non-root), applies rlimits, no_new_privs and the seccomp filter, then
waits for its code. In bubblewrap mode R becomes `bwrap` and a fresh interpreter inside
finishes the job.

Left out: anything about running a call (see `supervise.py`) or talking to the pool.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time

from spo_agents.sandbox import cgroups, rootfs, runner, seccomp
from spo_agents.sandbox import syscalls as sc
from spo_agents.sandbox.protocol import Channel, ChannelClosed, HelperSettings, IsolationMode
from spo_agents.sandbox.supervise import FINAL, STATUS, RunnerHandle

INNER_UID = 1000  # the snippet's UID inside its nested user namespace (non-root hosts)
RUNNER_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET
# Per-IPC-namespace limits written in every runner (as RLIMIT_AS does not see SysV memory that
# is no longer mapped): shared memory up to the scratch size, 16 small message queues.
MSG_QUEUES, MSG_QUEUE_BYTES, SHM_SEGMENTS, POSIX_QUEUES = 16, 16384, 64, 16
BWRAP_UID = 65534
REAP_S = 3.0
PR_SET_CHILD_SUBREAPER = 36
LIGHT_PREIMPORTS = ("math", "fractions", "itertools", "collections", "re", "json", "statistics")
SNIPPET_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": rootfs.WORK_DIR, "USER": "sandbox", "LANG": "C.UTF-8",
    "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def close_fds_except(keep: list[int]) -> None:
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def arrange_fds(sources: list[int]) -> None:
    """Put `sources` on fds 0, 1, 2, ... (inheritable) and close everything else."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in sources]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
    close_fds_except(list(range(len(sources))))


def _print_internal_error() -> None:
    """A bug in the sandbox machinery (not the snippet's fault): tell the helper's stderr."""
    try:
        import traceback

        traceback.print_exc()
    except BaseException:
        pass


def _arm_death_signal(parent_pidfd: int) -> None:
    """SIGKILL this process when its parent dies; exit now if the parent is already gone.

    Must be re-armed after every credential change: the kernel clears it on setuid and
    when entering a user namespace."""
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([parent_pidfd], [], [], 0)[0]:
        os._exit(runner.SETUP_FAILED_EXIT)


def _bwrap_child_pid(info_fd: int) -> int | None:
    """The host PID of bubblewrap's sandboxed process, from its --info-fd JSON.

    The pool kills that process directly: as root, bubblewrap drops CAP_KILL, so its
    --die-with-parent signal cannot reach a process that changed to another UID."""
    data = b""
    try:
        while chunk := os.read(info_fd, 4096):
            data += chunk
    finally:
        os.close(info_fd)
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def cap_sysv_ipc(shm_mb: int) -> bool:
    """Limit SysV shared memory and message queues of this (new) IPC namespace; False if the
    kernel does not let us (then the seccomp filter denies shmget and msgget instead)."""
    limits = {"kernel/shmmax": shm_mb << 20, "kernel/shmall": shm_mb << 8, "kernel/shmmni": SHM_SEGMENTS,
              "kernel/msgmni": MSG_QUEUES, "kernel/msgmnb": MSG_QUEUE_BYTES, "fs/mqueue/queues_max": POSIX_QUEUES}
    try:
        for name, value in limits.items():
            _write_file(f"/proc/sys/{name}", str(value))
    except OSError:
        return False
    return True


def _readable_by_others(*paths: str) -> bool:
    """Whether a process of another UID can traverse to `paths` (e.g. not under a 0700 /root)."""
    for path in paths:
        current = os.path.realpath(path)
        while True:
            if not os.stat(current).st_mode & 0o001:
                return False
            if current == "/":
                break
            current = os.path.dirname(current)
    return True


class RunnerFactory:
    """Runs in the zygote: forks supervisors and runners, and reaps them."""

    def __init__(self, settings: HelperSettings, user_namespace: bool, bwrap_argv: list[str], runner_source: str,
                 memory_cgroups: cgroups.RunnerCgroups | None = None, hidden: list[tuple[str, str]] = ()):
        self.s = settings
        self.user_namespace = user_namespace
        self.bwrap_argv = bwrap_argv
        self.runner_source = runner_source
        self.cgroups = memory_cgroups
        self.hidden = list(hidden)  # bubblewrap mode: (kind, path) of package entries to mask
        self.pid = os.getpid()
        self.supervisors: set[int] = set()

    def keep_fds(self) -> list[int]:
        return [self.cgroups.dir_fd] if self.cgroups is not None else []

    def spawn(self, session: bool, uid: int) -> RunnerHandle:
        """Fork a supervisor, which forks the runner; returns at once (the runner sets up alone)."""
        ctl_r, ctl_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        sup_parent, sup_child = socket.socketpair()
        work_dir = tempfile.mkdtemp(prefix="spo-sandbox-") if self.s.mode is IsolationMode.UNISOLATED else None
        child_fds = [out_w, err_w, ctl_r, status_w]  # fds 1-4 of the runner (0 is /dev/null)
        pid = os.fork()
        if pid == 0:
            try:
                self._supervisor_main(child_fds, sup_child, session, uid, work_dir)
            except BaseException:
                _print_internal_error()
            finally:
                os._exit(70)
        for fd in child_fds:
            os.close(fd)
        sup_child.close()
        self.supervisors.add(pid)
        return RunnerHandle(ctl_w, out_r, err_r, status_r, sup_parent)

    def _supervisor_main(self, child_fds: list[int], sup: socket.socket, session: bool, uid: int,
                         work_dir: str | None) -> None:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.pid:
            return
        close_fds_except([*child_fds, sup.fileno(), *self.keep_fds()])
        bwrap = self.s.mode is IsolationMode.BWRAP
        cgroup_name = f"r{os.getpid()}"
        procs_fd = self.cgroups.create(cgroup_name) if self.cgroups is not None else None
        if self.s.mode is IsolationMode.NAMESPACES:
            sc.unshare(sc.CLONE_NEWPID)
        info_r, info_w = os.pipe() if bwrap else (None, None)
        own_pidfd = os.pidfd_open(os.getpid())
        pid = os.fork()
        if pid == 0:
            try:
                self._runner_main([*child_fds, own_pidfd, *([info_w] if bwrap else [])], session, uid, work_dir,
                                  procs_fd if bwrap else None)
            except BaseException:
                _print_internal_error()
            finally:
                os._exit(runner.SETUP_FAILED_EXIT)
        for fd in (own_pidfd, *child_fds, *([info_w] if bwrap else [])):
            os.close(fd)
        if procs_fd is not None and bwrap:
            os.close(procs_fd)  # a runner that becomes bwrap joined itself before exec (bwrap forks at once)
        elif procs_fd is not None:
            # Moving a process costs an RCU grace period (ms): done here while the runner sets
            # itself up, and before its pidfd (hence its code) is handed out.
            cgroups.join(procs_fd, pid)
        target = (_bwrap_child_pid(info_r) or pid) if bwrap else pid
        try:
            pidfd = os.pidfd_open(target)
        except ProcessLookupError:
            target, pidfd = pid, os.pidfd_open(pid)
        socket.send_fds(sup, [STATUS.pack(target)], [pidfd])
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if bwrap and os.WIFEXITED(status) and 128 < os.WEXITSTATUS(status) < 128 + 65:
            status = os.WEXITSTATUS(status) - 128  # bwrap reports "killed by signal N" as exit code 128 + N
        if self.s.mode is IsolationMode.UNISOLATED:
            try:
                os.killpg(pid, signal.SIGKILL)  # the runner's session: what the snippet forked
            except OSError:
                pass
            shutil.rmtree(work_dir, ignore_errors=True)
        oom_killed = False
        if self.cgroups is not None:
            oom_killed = self.cgroups.oom_killed(cgroup_name)
            self.cgroups.remove(cgroup_name)
        try:
            sup.sendall(FINAL.pack(status, int(oom_killed)))
        except OSError:
            pass

    def _runner_main(self, fds: list[int], session: bool, uid: int, work_dir: str | None,
                     procs_fd: int | None) -> None:
        """fds: stdout, stderr, control, status, the supervisor's pidfd (+ bwrap's info pipe)."""
        if procs_fd is not None:
            cgroups.join(procs_fd)  # before exec: all that bubblewrap starts is counted
        os.setsid()
        arrange_fds([os.open("/dev/null", os.O_RDWR), *fds])  # supervisor pidfd: 5, bwrap info: 6
        _arm_death_signal(5)
        try:
            if self.s.mode is IsolationMode.BWRAP:
                os.close(5)
                self._exec_bwrap(session, uid)
            self._isolate_runner(uid, work_dir)
            _arm_death_signal(5)  # changing credentials disarmed it
            os.close(5)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            runner.install_stdio()
            runner.install_environment(SNIPPET_ENV, work_dir or rootfs.WORK_DIR)
        except BaseException as exc:
            runner.report_setup_failure(exc)
        runner.serve(session)

    def denied_syscalls(self, sysv_capped: bool) -> tuple[str, ...]:
        """Optional seccomp denials: memfd without a memory cgroup, SysV IPC where it is not capped."""
        deny = () if self.cgroups is not None else ("memfd_create",)
        return deny if sysv_capped else (*deny, "shmget", "msgget")

    def _isolate_runner(self, uid: int, work_dir: str | None) -> None:
        drop_uid = os.geteuid() == 0 and not self.user_namespace
        sysv_capped = False
        if self.s.mode is IsolationMode.NAMESPACES:
            sc.unshare(RUNNER_NAMESPACES)
            rootfs.mount_scratch(self.s.tmpfs_mb, self.s.tmpfs_inodes, uid if drop_uid else None)
            sysv_capped = cap_sysv_ipc(self.s.tmpfs_mb)
        elif drop_uid and _readable_by_others(sys.prefix, sys.base_prefix):
            os.chown(work_dir, uid, uid)
        else:
            drop_uid = False  # unisolated: the interpreter must stay readable after a drop
        if self.user_namespace:
            sc.unshare(sc.CLONE_NEWUSER)
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"{INNER_UID} 0 1")
            _write_file("/proc/self/gid_map", f"{INNER_UID} 0 1")
        elif drop_uid:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        runner.apply_rlimits(self._rlimits())
        if self.user_namespace:
            sc.drop_capabilities()
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        seccomp.install(self.denied_syscalls(sysv_capped))

    def _rlimits(self) -> dict[str, list[int]]:
        mb = 1 << 20
        return {"RLIMIT_CORE": [0, 0], "RLIMIT_CPU": [self.s.session_cpu_s] * 2,
                "RLIMIT_AS": [self.s.memory_mb * mb] * 2, "RLIMIT_FSIZE": [self.s.max_file_mb * mb] * 2,
                "RLIMIT_NOFILE": [self.s.max_open_files] * 2, "RLIMIT_NPROC": [self.s.max_processes] * 2}

    def _exec_bwrap(self, session: bool, uid: int) -> None:
        """Become bubblewrap; a fresh interpreter inside finishes set-up (`runner.bwrap_main`)."""
        rlimits = self._rlimits()
        inside = {"RLIMIT_NPROC": rlimits.pop("RLIMIT_NPROC")}  # counted per user namespace
        runner.apply_rlimits(rlimits)
        program = seccomp.filter_program(deny=self.denied_syscalls(sysv_capped=False)) or b""
        settings = {"env": SNIPPET_ENV, "work_dir": rootfs.WORK_DIR, "rlimits": inside,
                    "preimport": list(LIGHT_PREIMPORTS), "session": session,
                    "drop_to_uid": uid if os.geteuid() == 0 else None, "hidden_packages": self.s.hidden_packages}
        extra_args = ["--seccomp", str(_data_fd(program))] if program else []
        extra_args += ["--info-fd", "6"]  # tells the supervisor the sandboxed process's PID
        extra_args += rootfs.bwrap_mask_args(self.hidden, _data_fd)
        os.execv(self.bwrap_argv[0], [*self.bwrap_argv, *extra_args, "--", sys.executable, "-I", "-c",
                                      self.runner_source + "\nbwrap_main(sys.argv[1])\n", json.dumps(settings)])

    def reap(self, block_s: float = 0.0) -> None:
        self.supervisors -= reap_children(block_s)

    def kill_all(self) -> None:
        """Kill every supervisor (their runners follow) and reap it all.

        Without this, descendants of a killed process would be reparented to PID 1, which in
        a container without an init process never reaps them (zombies)."""
        for pid in self.supervisors:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.reap(block_s=REAP_S)


def _data_fd(data: bytes) -> int:
    """An inheritable fd from which `data` (small: it must fit the pipe buffer) can be read once."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    return read_end


def reap_children(block_s: float = 0.0) -> set[int]:
    """Collect exited children (and orphans handed to us as subreaper); with `block_s`, keep
    waiting until none is left or the time is up. Returns the reaped PIDs."""
    deadline = time.monotonic() + block_s
    reaped = set()
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped.add(pid)
        elif time.monotonic() >= deadline:
            return reaped
        else:
            time.sleep(0.005)


def start_zygote(factory: RunnerFactory) -> tuple[int, Channel]:
    """Fork the zygote; returns its pid and the channel to send spawn requests on."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            parent.close()
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
            close_fds_except([child.fileno(), *factory.keep_fds()])
            sc.prctl(PR_SET_CHILD_SUBREAPER, 1)
            factory.pid = os.getpid()
            _serve_zygote(Channel(child), factory)
        except BaseException:
            _print_internal_error()
        finally:
            os._exit(0)
    child.close()
    return pid, Channel(parent)


def _serve_zygote(channel: Channel, factory: RunnerFactory) -> None:
    try:
        while True:
            header, _, _ = channel.recv()
            factory.reap()
            try:
                handle = factory.spawn(session=bool(header["session"]), uid=int(header["uid"]))
            except OSError as exc:
                channel.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                continue
            channel.send({"ok": True}, fds=handle.fds()[:5])
            handle.close()
    except ChannelClosed:
        factory.kill_all()
