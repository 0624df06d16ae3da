"""A memory cgroup per runner: one bound on everything a call holds in RAM.

Why: RLIMIT_AS limits each process's address space, not what a call holds. Memory that no
address space counts (an unmapped memfd, SysV shared memory, tmpfs pages) and memory spread
over forked processes (32 processes x 1 GB) escape it. A memory cgroup charges all of it,
page cache and kernel memory included, to the call, and the kernel's OOM killer enforces
the limit inside the cgroup only.

Where: cgroup v2 (`memory.max`) when this process's cgroup can delegate the memory
controller (the root cgroup, or a `cgroup` directory set in the config whose
`cgroup.subtree_control` has it), else cgroup v1 (`memory.limit_in_bytes`) when its memory
hierarchy is writable (root on a hybrid host, such as the development machine). The helper
opens the parent directory before it pivots into the sandbox's root (cgroupfs is not mounted
there) and makes a directory of its own; each runner's supervisor creates `r<pid>` in it,
moves the runner in, and removes it once the runner is gone. Without a usable cgroup the
sandbox denies `memfd_create` and sizes `max_processes` from the host's RAM instead (see
`config.py`).

Left out: CPU and I/O controllers; pids (RLIMIT_NPROC per UID does that).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

REMOVE_S = 2.0
_OOM_FILES = {2: "memory.events", 1: "memory.oom_control"}


@dataclass(frozen=True)
class CgroupBase:
    """A cgroup directory under which runner cgroups can be made (host path)."""

    version: int  # 1 or 2
    path: str


def host_memory_mb() -> int:
    """RAM of this machine (MemTotal) in MB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise OSError("no MemTotal in /proc/meminfo")


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every mount, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            found.append((fields[4].replace("\\040", " "), fields[dash + 1], fields[dash + 3]))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller list (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            paths[controllers] = path
    return paths


def _writable(path: str) -> bool:
    probe = os.path.join(path, f"spo-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
        return True
    except OSError:
        return False


def _v2_base(explicit: str | None) -> CgroupBase | None:
    mounts = [point for point, fstype, _ in _mounts() if fstype == "cgroup2"]
    if explicit is None:
        own = _own_cgroups().get("")
        if not mounts or own is None or own != "/":  # only the root cgroup may hold processes and delegate
            return None
        path = mounts[0]
    else:
        path = explicit
    try:
        with open(os.path.join(path, "cgroup.controllers")) as f:
            if "memory" not in f.read().split():
                return None
        with open(os.path.join(path, "cgroup.subtree_control"), "r+") as f:
            if "memory" not in f.read().split():
                if explicit is None:
                    return None  # never change the host's root cgroup; a configured one is ours
                f.write("+memory")
    except OSError:
        return None
    return CgroupBase(2, path) if _writable(path) else None


def _v1_base(explicit: str | None) -> CgroupBase | None:
    if explicit is None:
        own = next((path for controllers, path in _own_cgroups().items() if "memory" in controllers.split(",")),
                   None)
        mounts = [point for point, fstype, options in _mounts()
                  if fstype == "cgroup" and "memory" in options.split(",")]
        if own is None or not mounts:
            return None
        path = os.path.join(mounts[0], own.lstrip("/"))
    else:
        path = explicit
    if not os.path.exists(os.path.join(path, "memory.limit_in_bytes")):
        return None
    return CgroupBase(1, path) if _writable(path) else None


def find_base(setting: str) -> tuple[CgroupBase | None, str]:
    """The cgroup to use for `SandboxConfig.cgroup` ("auto", "off" or a directory), and why not.

    Raises ValueError when an explicit directory cannot be used."""
    if setting == "off":
        return None, "turned off (cgroup: off)"
    explicit = None if setting == "auto" else setting
    try:
        if explicit is not None and os.path.exists(os.path.join(explicit, "cgroup.controllers")):
            base = _v2_base(explicit)
        elif explicit is not None:
            base = _v1_base(explicit)
        else:
            base = _v2_base(None) or _v1_base(None)
    except OSError as exc:
        base = None
        if explicit is not None:
            raise ValueError(f"cgroup {explicit!r} cannot be used: {exc}") from exc
    if base is None and explicit is not None:
        raise ValueError(f"cgroup {explicit!r} cannot be used: not a writable cgroup with the memory controller")
    if base is None:
        return None, "no writable memory cgroup (needs root, and cgroup v1 or the v2 root cgroup)"
    return base, ""


class RunnerCgroups:
    """Per-runner memory cgroups below one helper's directory, reached through a directory fd.

    Made in the helper before it pivots into the sandbox root; the fd is inherited by the
    zygote and its supervisors (never by a runner after set-up)."""

    def __init__(self, base: CgroupBase, limit_bytes: int, name: str):
        self.version = base.version
        self.limit_bytes = limit_bytes
        self.name = name
        self.host_path = os.path.join(base.path, name)
        os.mkdir(self.host_path)
        if self.version == 2:
            self._write(self.host_path, "cgroup.subtree_control", "+memory")
        self.dir_fd = os.open(self.host_path, os.O_RDONLY | os.O_DIRECTORY)
        # the parent too: after pivot_root the host path no longer resolves, yet the helper
        # must remove its directory at shutdown (also when its pool's process just vanished)
        self.parent_fd = os.open(base.path, os.O_RDONLY | os.O_DIRECTORY)

    def _write(self, directory: str | int, name: str, text: str) -> None:
        fd = os.open(name, os.O_WRONLY, dir_fd=directory) if isinstance(directory, int) else \
            os.open(os.path.join(directory, name), os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def create(self, name: str) -> int:
        """Make the runner cgroup `name` with its limit; returns an fd of its cgroup.procs."""
        os.mkdir(name, dir_fd=self.dir_fd)
        leaf = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.dir_fd)
        try:
            if self.version == 2:
                self._write(leaf, "memory.max", str(self.limit_bytes))
                for optional, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                    try:
                        self._write(leaf, optional, value)
                    except FileNotFoundError:
                        pass
            else:
                self._write(leaf, "memory.limit_in_bytes", str(self.limit_bytes))
                try:
                    self._write(leaf, "memory.memsw.limit_in_bytes", str(self.limit_bytes))
                except (FileNotFoundError, PermissionError):
                    pass
            return os.open("cgroup.procs", os.O_WRONLY, dir_fd=leaf)
        finally:
            os.close(leaf)

    def oom_killed(self, name: str) -> bool:
        """Whether the kernel killed a process of `name` for exceeding the limit."""
        try:
            fd = os.open(f"{name}/{_OOM_FILES[self.version]}", os.O_RDONLY, dir_fd=self.dir_fd)
        except OSError:
            return False
        try:
            text = os.read(fd, 4096).decode()
        finally:
            os.close(fd)
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value) > 0
        return False

    def remove(self, name: str, wait_s: float = REMOVE_S) -> bool:
        """rmdir the runner cgroup; the last tasks may take a moment to leave it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                os.rmdir(name, dir_fd=self.dir_fd)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.005)

    def remove_all(self) -> None:
        """Remove every runner cgroup left, then the helper's directory (at shutdown)."""
        try:
            names = os.listdir(self.dir_fd)
        except OSError:
            names = []
        for name in names:
            if name.startswith("r") and name[1:].isdigit():
                self.remove(name, wait_s=0.5)
        os.close(self.dir_fd)
        try:
            os.rmdir(self.name, dir_fd=self.parent_fd)
        except OSError:
            pass
        os.close(self.parent_fd)


def join(procs_fd: int, pid: int | None = None) -> None:
    """Move `pid` (default: the caller) into the cgroup whose cgroup.procs is `procs_fd`; close it."""
    try:
        os.write(procs_fd, str(pid or 0).encode())
    finally:
        os.close(procs_fd)


def remove_leftovers(base: CgroupBase, helper_pid: int) -> None:
    """After a helper was killed: remove what its runners left below `base` (from the pool)."""
    path = os.path.join(base.path, f"spo-sandbox-{helper_pid}")
    if not os.path.isdir(path):
        return
    deadline = time.monotonic() + REMOVE_S
    for name in os.listdir(path):
        if name.startswith("r") and name[1:].isdigit():
            while True:
                try:
                    os.rmdir(os.path.join(path, name))
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.01)
    try:
        os.rmdir(path)
    except OSError:
        pass
