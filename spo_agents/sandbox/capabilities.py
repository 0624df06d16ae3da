"""Which isolation layers are really in force, as measured from inside a sandbox.

Each helper runs a probe snippet through the full call path at start-up (see
`helper.PROBE_CODE`); what it finds (its PID, network interfaces, UID, capabilities, limits,
whether /etc/shadow is visible ...) is reported here, together with the isolation mode that
was chosen and why the better modes could not be used. `spo-agents sandbox check` prints it.

`detect_capabilities()` starts one helper to find out (about half a second); a running pool
has the same report as `pool.capabilities`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from spo_agents.sandbox.protocol import IsolationMode

LAYERS = {
    "network_namespace": "own empty network namespace: no network at all",
    "pid_namespace": "own PID namespace: every process the snippet starts dies with it",
    "private_proc": "own /proc: other processes are invisible",
    "read_only_root": "allow-list root file system, read-only",
    "host_files_hidden": "host files outside the allow-list are absent (/etc/shadow, /home, ...)",
    "private_tmpfs": "private, size-capped tmpfs for the work dir, /tmp, /var/tmp, /dev/shm",
    "rlimits": "rlimits: CPU, address space, file size, open files, processes, no core dumps",
    "unprivileged_uid": "runs as an unprivileged UID",
    "no_capabilities": "no capabilities",
    "no_new_privs": "no_new_privs: setuid binaries cannot raise privileges",
    "seccomp_filter": "seccomp filter: no namespaces, mounts, bpf, io_uring, keyrings ...",
    "namespaces_blocked": "cannot create new namespaces (no unbounded tmpfs in a user namespace)",
    "cleared_environment": "cleared environment: host variables are not visible",
    "ipc_namespace": "own IPC namespace per call/session: SysV shared memory and queues die with it",
    "runner_network_namespace": "own network namespace per call/session: abstract unix sockets do not cross",
    "socket_families_filtered": "socket families limited to unix, inet, inet6 (+ route netlink): no vsock",
    "call_memory_limit": "memory of the whole call bounded (memory cgroup, or no memfd and RAM-sized limits)",
    "packages_hidden": "the project's and environments' packages are hidden (no task generators, no graders)",
    "proc_scrubbed": "/proc/1/cmdline and environ show no host command line, paths or environment",
}
# Layers without which a mode does not count as isolated.
ESSENTIAL = ("network_namespace", "pid_namespace", "private_proc", "host_files_hidden", "rlimits",
             "unprivileged_uid", "cleared_environment", "ipc_namespace", "runner_network_namespace",
             "packages_hidden")
UNISOLATED_WARNING = (
    "SANDBOX UNISOLATED: snippets run with only rlimits, a wall-clock timeout and a cleared environment. "
    "They can read your files, use the network and leave processes behind. Use this only for code you trust."
)


@dataclass
class CapabilityReport:
    """The chosen isolation mode and the layers measured inside it."""

    mode: IsolationMode | None
    layers: dict[str, bool] = field(default_factory=dict)
    euid: int = -1
    user_namespace: bool = False
    bwrap_path: str | None = None
    failures: dict[str, str] = field(default_factory=dict)
    exposed_paths: list[str] = field(default_factory=list)
    masked_paths: list[str] = field(default_factory=list)
    preimported: list[str] = field(default_factory=list)
    python: str = ""
    memory: str = ""  # how a call's total memory is bounded, in words

    @property
    def isolated(self) -> bool:
        return self.mode in (IsolationMode.NAMESPACES, IsolationMode.BWRAP) and all(
            self.layers.get(name, False) for name in ESSENTIAL)

    @classmethod
    def from_hello(cls, report: dict, bwrap_path: str | None, failures: dict[str, str]) -> "CapabilityReport":
        return cls(mode=IsolationMode(report["mode"]), layers=report["layers"], euid=report["euid"],
                   user_namespace=report["user_namespace"], bwrap_path=bwrap_path, failures=failures,
                   exposed_paths=report["exposed_paths"], masked_paths=report.get("masked_paths", []),
                   preimported=report["preimported"], python=report["python"])

    def describe_memory(self, settings, no_cgroup_reason: str) -> None:
        """Say how a call's memory is bounded, from the settings the helpers were given."""
        if settings.cgroup_version:
            self.memory = (f"at most {settings.call_memory_mb} MB per call or session (memory cgroup v"
                           f"{settings.cgroup_version} under {settings.cgroup_path}); {settings.max_processes} "
                           f"processes x {settings.memory_mb} MB address space")
        else:
            self.memory = (f"at most {settings.max_processes} processes x {settings.memory_mb} MB address space + "
                           f"{settings.tmpfs_mb} MB scratch per call; memfd_create denied (no memory cgroup: "
                           f"{no_cgroup_reason})")

    def format(self) -> str:
        """Human-readable report: mode, one line per layer, why better modes were skipped."""
        if self.mode is None:
            lines = ["sandbox: NO ISOLATION AVAILABLE"]
        else:
            how = {IsolationMode.NAMESPACES: "in-process Linux namespaces" + (
                " (inside a user namespace: not root)" if self.user_namespace else " (root)"),
                IsolationMode.BWRAP: "bubblewrap fallback (a fresh interpreter per call: slower)",
                IsolationMode.UNISOLATED: "UNISOLATED (explicit opt-in)"}[self.mode]
            lines = [f"sandbox mode: {self.mode.value} - {how}", f"isolated: {'yes' if self.isolated else 'NO'}"]
        for name, text in LAYERS.items():
            if name in self.layers:
                lines.append(f"  [{'x' if self.layers[name] else ' '}] {text}")
        if self.memory:
            lines.append(f"call memory: {self.memory}")
        if self.masked_paths:
            lines.append(f"hidden: {len(self.masked_paths)} package entries masked")
        if self.preimported:
            lines.append(f"pre-imported: {', '.join(self.preimported)}")
        lines.append(f"bubblewrap: {self.bwrap_path or 'not installed'}")
        for mode, reason in self.failures.items():
            lines.append(f"not used: {mode}: {reason}")
        if self.mode is IsolationMode.UNISOLATED:
            lines.append("WARNING: " + UNISOLATED_WARNING)
        return "\n".join(lines)


def find_bwrap(configured: str | None = None) -> str | None:
    return shutil.which(configured or "bwrap")


def detect_capabilities(config=None) -> CapabilityReport:
    """Start one helper (as a pool with `config` would) and report what isolation it got."""
    from spo_agents.sandbox.config import SandboxConfig
    from spo_agents.sandbox.pool import SandboxPool, SandboxUnavailableError

    config = (config or SandboxConfig()).model_copy(update={"num_helpers": 1})
    try:
        with SandboxPool(config) as pool:
            return pool.capabilities
    except SandboxUnavailableError as exc:
        return exc.report
