"""The file system a snippet sees: an allow-list root, plus fresh scratch space per call.

`build_root` runs once per helper, inside the helper's own mount namespace: it builds a new
root on a small tmpfs holding only read-only bind mounts of what Python needs (the system
directories, the interpreter's prefixes and site-packages, a few /etc files, five device
nodes), then `pivot_root`s into it and detaches the host root entirely. Home directories,
the project checkout (except a virtual environment inside it), /var, /srv, /mnt, sockets
of host services and the host's /proc are simply not there. A path needed by a custom
interpreter layout can be added with `SandboxConfig.readonly_paths`.

Hidden packages: site-packages is exposed whole, but the project's own packages and its
environments (`SandboxConfig.hidden_packages`: spo_agents, spo_env_*) must not be: with a
normal install their task generators and graders sit there, and code that imports them can
regenerate a task and copy its reference solution. Each matching entry is covered by a
read-only mount: a package directory by one whose `__init__.py` raises ModuleNotFoundError,
a module by such a file, metadata and .pth files by empty ones (`hidden_entries`).

`mount_scratch` runs in every runner, in a mount namespace of its own: one size- and
inode-capped tmpfs backs the work directory, /tmp, /var/tmp and /dev/shm (so their total is
capped, and it all disappears with the runner), and a new procfs shows only the runner's
PID namespace.

Left out: bubblewrap mode builds its root with bwrap's own options (see `helper.py`);
nothing here applies to the unisolated mode.
"""

from __future__ import annotations

import fnmatch
import os
import sys

from spo_agents.sandbox import syscalls as sc

WORK_DIR = "/sandbox"
SCRATCH_DIR = "/.scratch"
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_PATHS = (
    "/etc/localtime", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/nsswitch.conf",
    "/etc/ssl/certs", "/etc/ca-certificates", "/etc/alternatives", "/etc/mime.types", "/etc/protocols",
    "/etc/services",
)
DEVICES = ("null", "zero", "full", "random", "urandom")
# (name inside the scratch tmpfs, where it appears, mode); the work dir belongs to the snippet.
SCRATCH_TARGETS = (("work", WORK_DIR, 0o700), ("tmp", "/tmp", 0o1777), ("var_tmp", "/var/tmp", 0o1777),
                   ("shm", "/dev/shm", 0o1777))
SYNTHETIC_FILES = {
    "/etc/passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "/etc/hostname": "sandbox\n",
}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}


MASK_DIR = "/.masks"
HIDDEN_MODULE = ("raise ModuleNotFoundError(\"No module named {name!r} (hidden inside the sandbox)\", "
                 "name={name!r})\n")


def _entry_name(entry: str) -> str:
    """The top-level module a site-packages entry belongs to (spo_agents-0.1.dist-info -> spo_agents)."""
    for prefix in ("__editable___", "__editable__."):
        if entry.startswith(prefix):
            entry = entry[len(prefix):]
    for suffix in (".dist-info", ".egg-info", ".egg-link", ".pth", ".py"):
        if entry.endswith(suffix):
            entry = entry[: -len(suffix)]
            return entry.split("-", 1)[0]
    return entry


def hidden_entries(directories: list[str], patterns: list[str]) -> list[tuple[str, str]]:
    """(kind, host path) for every entry of `directories` that belongs to a hidden package.

    kind: "package" (a package directory), "module" (a .py file), "directory" (metadata) or
    "file" (.pth, editable-install finders' data). An editable finder such as
    `__editable___spo_agents_0_1_finder.py` matches `spo_agents` by prefix."""
    found = []
    for directory in dict.fromkeys(os.path.realpath(d) for d in directories):
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            name = _entry_name(entry)
            if not any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + "_*") for p in patterns):
                continue
            path = os.path.join(directory, entry)
            if os.path.islink(path):
                continue  # a symlink leads elsewhere: the target is only visible if exposed itself
            if os.path.isdir(path):
                kind = "package" if os.path.exists(os.path.join(path, "__init__.py")) or "." not in entry \
                    else "directory"
            else:
                kind = "module" if entry.endswith(".py") and not entry.startswith("__editable__") else "file"
            found.append((kind, path))
    return found


def site_directories(extra_paths: list[str]) -> list[str]:
    """Directories whose entries are importable inside the sandbox: site-packages and extras."""
    return [p for p in python_paths() if os.path.isdir(p) and p != sys.prefix] + \
        [p for p in extra_paths if os.path.isdir(p)]


def mask_content(kind: str, path: str) -> bytes:
    name = _entry_name(os.path.basename(path))
    return HIDDEN_MODULE.format(name=name).encode() if kind in ("package", "module") else b""


def bwrap_mask_args(hidden: list[tuple[str, str]], data_fd) -> list[str]:
    """bubblewrap options that mask `hidden` entries; `data_fd(bytes)` makes an fd to read from."""
    args = []
    for kind, path in hidden:
        if kind in ("package", "directory"):
            args += ["--perms", "0755", "--tmpfs", path]
            if kind == "package":
                args += ["--ro-bind-data", str(data_fd(mask_content(kind, path))), path + "/__init__.py"]
            args += ["--remount-ro", path]
        else:
            args += ["--ro-bind-data", str(data_fd(mask_content(kind, path))), path]
    return args


def python_paths() -> list[str]:
    """Directories the interpreter needs: its prefixes, site-packages and executable."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.realpath(sys.executable)}
    paths.update(p for p in sys.path if p and os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages"))
    return sorted(paths)


def plan_exposures(paths: list[str]) -> list[tuple[str, str, str]]:
    """Steps that make host `paths` visible at the same place: ("bind", source, dest) or
    ("symlink", link target, dest). Symlinks along a path are recreated as symlinks and their
    targets exposed, so a path never leads somewhere the host would not."""
    steps: list[tuple[str, str, str]] = []
    bound: list[str] = []
    links: set[str] = set()

    def covered(path: str) -> bool:
        return any(path == done or path.startswith(done.rstrip("/") + "/") for done in bound)

    def visit(path: str) -> None:
        path = os.path.abspath(path)
        if not os.path.lexists(path) or covered(path):
            return
        prefix = ""
        for part in [p for p in path.split("/") if p]:
            prefix = f"{prefix}/{part}"
            if os.path.islink(prefix):
                if not covered(prefix) and prefix not in links:
                    links.add(prefix)
                    steps.append(("symlink", os.readlink(prefix), prefix))
                visit(os.path.realpath(path))
                return
        bound.append(path)
        steps.append(("bind", path, path))

    for path in sorted(set(paths), key=lambda p: (os.path.islink(p), len(p), p)):
        visit(path)
    return steps


def with_ancestors(paths: list[str]) -> list[str]:
    """`paths` and all their ancestor directories (except /), parents first."""
    found = set()
    for path in paths:
        while path not in ("/", ""):
            found.add(path)
            path = os.path.dirname(path)
    return sorted(found, key=lambda p: (p.count("/"), p))


def sandbox_paths(extra_paths: list[str]) -> list[str]:
    """Every host path a snippet may read: system dirs, Python, a few /etc files, extras."""
    return [*SYSTEM_PATHS, *python_paths(), *ETC_PATHS, *extra_paths]


class RootBuilder:
    """Populates a staging tmpfs with read-only views of host paths (never writes the host)."""

    def __init__(self, staging: str):
        self.staging = staging
        self.exposed: list[str] = []
        self.masked: list[str] = []

    def _mkdirs(self, path: str) -> str:
        """Create `path` (absolute) under staging, refusing to walk through a symlink."""
        current = self.staging
        for part in [p for p in path.split("/") if p]:
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise OSError(f"refusing to create {path}: {current} is a symlink")
            if not os.path.isdir(current):
                os.mkdir(current, 0o755)
        return current

    def apply(self, steps: list[tuple[str, str, str]]) -> None:
        for kind, source, dest in steps:
            if kind == "symlink":
                self._mkdirs(os.path.dirname(dest))
                os.symlink(source, self.staging + dest)
            else:
                self._bind(source)

    def _bind(self, path: str) -> None:
        if os.path.isdir(path):
            target = self._mkdirs(path)
        else:
            target = os.path.join(self._mkdirs(os.path.dirname(path)), os.path.basename(path))
            open(target, "w").close()
        sc.mount(path, target, None, sc.MS_BIND)
        flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.mount_flags_of(path)
        sc.mount(None, target, None, flags)
        self.exposed.append(path)

    def add_devices(self) -> None:
        dev = self._mkdirs("/dev")
        for name in DEVICES:
            target = os.path.join(dev, name)
            open(target, "w").close()
            sc.mount(f"/dev/{name}", target, None, sc.MS_BIND)
        for name, link in DEV_LINKS.items():
            os.symlink(link, os.path.join(dev, name))

    def add_files(self, files: dict[str, str]) -> None:
        for path, text in files.items():
            if not os.path.lexists(self.staging + path):
                with open(os.path.join(self._mkdirs(os.path.dirname(path)), os.path.basename(path)), "w") as f:
                    f.write(text)

    def hide(self, hidden: list[tuple[str, str]]) -> None:
        """Cover each hidden entry (already exposed through its site-packages) with a mask."""
        for index, (kind, path) in enumerate(hidden):
            mask = os.path.join(self._mkdirs(MASK_DIR), str(index))
            if kind in ("package", "directory"):
                os.mkdir(mask, 0o755)
                if kind == "package":
                    with open(os.path.join(mask, "__init__.py"), "wb") as f:
                        f.write(mask_content(kind, path))
            else:
                with open(mask, "wb") as f:
                    f.write(mask_content(kind, path))
            target = self.staging + path
            sc.mount(mask, target, None, sc.MS_BIND)
            sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)
            self.masked.append(path)

    def add_mount_points(self) -> None:
        for path in ("/proc", "/tmp", "/var/tmp", "/dev/shm", WORK_DIR, SCRATCH_DIR):
            self._mkdirs(path)
        os.chmod(self.staging + "/tmp", 0o1777)


def build_root(extra_paths: list[str], keep_host_proc: bool, hidden: list[tuple[str, str]] = (),
               staging: str = "/tmp") -> RootBuilder:
    """Build the allow-list root and pivot into it; returns what was exposed and masked.

    Must run in a fresh mount namespace. `keep_host_proc` leaves the host /proc under /proc
    (covered by every runner's own procfs): the kernel lets a user namespace mount a procfs
    only where one is already fully visible.
    """
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", staging, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=4m,nr_inodes=8192,mode=0755")
    builder = RootBuilder(staging)
    builder.apply(plan_exposures(sandbox_paths(extra_paths)))
    builder.hide([(kind, path) for kind, path in hidden if os.path.lexists(staging + path)])
    builder.add_files(SYNTHETIC_FILES)
    builder.add_devices()
    builder.add_mount_points()
    if keep_host_proc:
        sc.mount("/proc", staging + "/proc", None, sc.MS_BIND | sc.MS_REC)
    os.mkdir(staging + "/.oldroot")
    os.chdir(staging)
    sc.pivot_root(".", ".oldroot")
    os.chdir("/")
    sc.umount2("/.oldroot", sc.MNT_DETACH)
    os.rmdir("/.oldroot")
    sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)
    return builder


def mount_scratch(size_mb: int, inodes: int, owner_uid: int | None) -> None:
    """Fresh capped tmpfs for work dir, /tmp, /var/tmp, /dev/shm; fresh /proc. Per runner."""
    sc.mount("tmpfs", SCRATCH_DIR, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
             f"size={size_mb}m,nr_inodes={inodes},mode=0755")
    for name, target, mode in SCRATCH_TARGETS:
        source = f"{SCRATCH_DIR}/{name}"
        os.mkdir(source)
        os.chmod(source, mode)
        if name == "work" and owner_uid is not None:
            os.chown(source, owner_uid, owner_uid)
        sc.mount(source, target, None, sc.MS_BIND)
    sc.umount2(SCRATCH_DIR, sc.MNT_DETACH)
    sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
