"""A small seccomp filter: no new namespaces, no mounts, no rarely needed kernel interfaces.

Why: without it a snippet could create a user namespace (allowed to unprivileged users on
many kernels), mount an unlimited tmpfs inside it and fill the host's memory before the
timeout, or reach kernel code that ordinary Python never uses (a large share of kernel
exploits go through user namespaces, bpf, io_uring, userfaultfd, keyrings, perf).

Denied with EPERM: unshare, setns, clone with any CLONE_NEW* flag, mount and the new mount
API, umount2, pivot_root, chroot, bpf, perf_event_open, userfaultfd, io_uring_*, keyctl,
add_key, request_key, kexec and module loading. clone3 gets ENOSYS, so glibc falls back to
clone (whose flags a classic BPF filter can inspect).

Sockets: only AF_UNIX, AF_INET, AF_INET6 and route netlink (NETLINK_ROUTE, which glibc's
`if_nameindex` and `getaddrinfo` use) may be created; every other family (vsock, which a
network namespace does not cover, packet, alg, other netlink protocols, bluetooth, ...) gets
EAFNOSUPPORT, as if the kernel lacked it.

Optional, chosen per runner: `memfd_create` (anonymous files, memory that RLIMIT_AS does not
count; denied when no memory cgroup bounds the call) and SysV `shmget` / `msgget` (denied
where their per-namespace size limits cannot be set, e.g. bubblewrap mode).

Everything else is allowed: this is a deny-list for attack surface, not the isolation
itself (namespaces, rlimits and the UID do that). Other architectures than x86_64 and
aarch64 get no filter (reported by `check`).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

from spo_agents.sandbox import syscalls as sc

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
NAMESPACE_CLONE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0

_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K, _AND_K = 0x20, 0x15, 0x35, 0x06, 0x54
_NR, _ARCH, _ARG0, _ARG2 = 0, 4, 16, 32  # offsets in struct seccomp_data (low 32 bits of args)

# name -> (x86_64, aarch64) syscall numbers
_DENIED = {
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "bpf": (321, 280), "perf_event_open": (298, 241),
    "userfaultfd": (323, 282), "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
}
OPTIONAL = {"memfd_create": (319, 279), "shmget": (29, 194), "msgget": (68, 186)}
_SOCKET_CALLS = {"socket": (41, 198), "socketpair": (53, 199)}
_ARCHES = {  # machine -> (audit arch, index into the tables, clone, clone3, reject x32 numbers)
    "x86_64": (0xC000003E, 0, 56, 435, True),
    "aarch64": (0xC00000B7, 1, 220, 435, False),
}
_ARCHES["amd64"], _ARCHES["arm64"] = _ARCHES["x86_64"], _ARCHES["aarch64"]


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _socket_rules(column: int) -> list[bytes]:
    """socket()/socketpair(): allow AF_UNIX, AF_INET, AF_INET6 and NETLINK_ROUTE, else EAFNOSUPPORT."""
    socket_nr, socketpair_nr = (numbers[column] for numbers in _SOCKET_CALLS.values())
    block = [
        _insn(_LD_W_ABS, _ARG0),
        _insn(_JEQ_K, AF_UNIX, 6, 0), _insn(_JEQ_K, AF_INET, 5, 0), _insn(_JEQ_K, AF_INET6, 4, 0),
        _insn(_JEQ_K, AF_NETLINK, 0, 2), _insn(_LD_W_ABS, _ARG2), _insn(_JEQ_K, NETLINK_ROUTE, 1, 0),
        _insn(_RET_K, RET_ERRNO | errno.EAFNOSUPPORT), _insn(_RET_K, RET_ALLOW),
    ]
    return [_insn(_JEQ_K, socket_nr, 1, 0), _insn(_JEQ_K, socketpair_nr, 0, len(block)), *block]


def filter_program(machine: str | None = None, deny: tuple[str, ...] = ()) -> bytes | None:
    """The BPF program as raw `struct sock_filter` bytes, or None on unsupported machines.

    `deny`: names from `OPTIONAL` to refuse as well (EPERM)."""
    arch = _ARCHES.get((machine or platform.machine()).lower())
    if arch is None:
        return None
    unknown = set(deny) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"not optional syscalls: {sorted(unknown)}")
    audit_arch, column, clone_nr, clone3_nr, reject_x32 = arch
    refuse = RET_ERRNO | errno.EPERM
    prog = [_insn(_LD_W_ABS, _ARCH), _insn(_JEQ_K, audit_arch, 1, 0), _insn(_RET_K, refuse),
            _insn(_LD_W_ABS, _NR)]
    if reject_x32:
        prog += [_insn(_JGE_K, 0x40000000, 0, 1), _insn(_RET_K, refuse)]
    prog += [_insn(_JEQ_K, clone3_nr, 0, 1), _insn(_RET_K, RET_ERRNO | errno.ENOSYS)]
    for numbers in [*_DENIED.values(), *(OPTIONAL[name] for name in sorted(set(deny)))]:
        prog += [_insn(_JEQ_K, numbers[column], 0, 1), _insn(_RET_K, refuse)]
    prog += _socket_rules(column)
    prog += [
        _insn(_JEQ_K, clone_nr, 1, 0), _insn(_RET_K, RET_ALLOW),
        _insn(_LD_W_ABS, _ARG0), _insn(_AND_K, NAMESPACE_CLONE_FLAGS),  # low 32 bits of the flags
        _insn(_JEQ_K, 0, 0, 1), _insn(_RET_K, RET_ALLOW), _insn(_RET_K, refuse),
    ]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(deny: tuple[str, ...] = ()) -> bool:
    """Apply the filter to this process (needs no_new_privs first); False if unsupported."""
    program = filter_program(deny=deny)
    if program is None:
        return False
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    sc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
    return True
