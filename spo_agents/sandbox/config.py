"""Limits and options of the sandbox, as one typed, validated model.

Every field maps to one mechanism (see docs/sandbox.md): `timeout_s` to the SIGKILL from
outside, `memory_mb` to RLIMIT_AS, `max_processes` to RLIMIT_NPROC, `call_memory_mb` to the
memory cgroup of each runner, `tmpfs_mb` to the size of the per-call tmpfs, and so on.
Limits are per call (stateless) or per session process.

Two defaults depend on the machine (`resolved_limits`): without a memory cgroup, a call's
memory is bounded only by `max_processes x memory_mb`, so `max_processes` is then sized from
the host's RAM (half of it per call at most) instead of 32.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spo_agents.sandbox.cgroups import host_memory_mb
from spo_agents.sandbox.protocol import IsolationMode

DEFAULT_PREIMPORTS = ("math", "fractions", "itertools", "collections", "re", "json", "statistics", "numpy",
                      "sympy")
DEFAULT_HIDDEN_PACKAGES = ("spo_agents", "spo_env_*")
CGROUP_PROCESSES = 32  # the default max_processes when a memory cgroup bounds the call
MIN_PROCESSES = 4


class SandboxConfig(BaseModel):
    """Configuration of a `SandboxPool`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(5.0, gt=0, le=3600, description="wall-clock limit per call; SIGKILL from outside")
    memory_mb: int = Field(1024, ge=128, description="address-space limit (RLIMIT_AS) of each sandboxed process")
    output_limit_bytes: int = Field(65536, ge=256, description="stdout+stderr cap; the call is killed when it is hit")
    max_processes: int | None = Field(None, ge=1, description="processes and threads at once, the runner "
                                      "included (RLIMIT_NPROC); default: 32 with a memory cgroup, else sized from "
                                      "the host's RAM")
    call_memory_mb: int | None = Field(None, ge=32, description="RAM one call (or session) may hold in total, all "
                                       "its processes, scratch files, shared memory and memfds together (memory "
                                       "cgroup); default: memory_mb + tmpfs_mb")
    cgroup: str = Field("auto", description="memory cgroup per runner: auto (when a writable one exists), off, or "
                                            "a cgroup directory (v2 with the memory controller, or v1 memory) to "
                                            "create them under")
    hidden_packages: tuple[str, ...] = Field(DEFAULT_HIDDEN_PACKAGES, description="top-level packages (glob "
                                             "patterns) hidden from snippets even where site-packages is exposed: "
                                             "the project and its environments (task generators, graders)")
    max_open_files: int = Field(256, ge=16, description="open file descriptors per process (RLIMIT_NOFILE)")
    max_file_mb: int = Field(16, ge=1, description="largest file a snippet may write (RLIMIT_FSIZE)")
    tmpfs_mb: int = Field(64, ge=1, description="size of the private tmpfs behind the work dir, /tmp, /var/tmp "
                                                "and /dev/shm together")
    tmpfs_inodes: int = Field(4096, ge=64, description="files and directories the private tmpfs may hold")
    num_helpers: int = Field(2, ge=1, le=64, description="pre-started helper processes = calls served at once")
    stateful: bool = Field(False, description="environments built on the sandbox run each episode in one "
                                              "`session()` (variables persist between calls) instead of "
                                              "independent calls; the pool itself offers both")
    max_sessions: int = Field(256, ge=1, le=65536, description="stateful sessions open at once")
    session_cpu_s: int = Field(600, ge=1, description="CPU seconds a session process may use in total "
                                                      "(hard RLIMIT_CPU)")
    mode: IsolationMode = Field(IsolationMode.AUTO, description="isolation: auto, namespaces, bwrap or unisolated")
    allow_unisolated: bool = Field(False, description="let mode=auto fall back to running code WITHOUT isolation "
                                                      "(loud warning) when no sandbox can be built")
    preimport: tuple[str, ...] = Field(DEFAULT_PREIMPORTS, description="modules imported once in each helper "
                                                                      "(missing ones are skipped)")
    readonly_paths: tuple[str, ...] = Field((), description="extra host paths the snippet may read")
    uid_base: int = Field(1_800_000_000, ge=1000, description="first of the unprivileged UIDs used when root "
                                                              "(one per helper slot and per session)")
    max_code_bytes: int = Field(1_000_000, ge=1024, description="longest code (plus stdin) accepted per call")
    start_timeout_s: float = Field(60.0, gt=0, description="time a helper may take to start and warm up")
    bwrap_path: str | None = Field(None, description="bubblewrap executable (default: found on PATH)")

    @field_validator("cgroup")
    @classmethod
    def _cgroup_setting(cls, value: str) -> str:
        if value not in ("auto", "off") and not os.path.isabs(value):
            raise ValueError(f"cgroup must be 'auto', 'off' or an absolute cgroup directory, got {value!r}")
        return value

    @field_validator("hidden_packages")
    @classmethod
    def _package_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern or "/" in pattern or pattern.startswith("."):
                raise ValueError(f"hidden_packages holds top-level package names or globs, got {pattern!r}")
        return value

    @model_validator(mode="after")
    def _uids_fit(self) -> "SandboxConfig":
        if self.uid_base + self.num_helpers + self.max_sessions >= 2**32 - 2:
            raise ValueError("uid_base + num_helpers + max_sessions must stay below 2**32 - 2")
        return self

    def session_uid(self, index: int) -> int:
        return self.uid_base + self.num_helpers + index

    def slot_uid(self, slot: int) -> int:
        return self.uid_base + slot


def resolved_limits(config: SandboxConfig, cgroup: bool) -> tuple[int, int]:
    """(max_processes, call_memory_mb) in force, filling in the machine-dependent defaults.

    With a memory cgroup, `call_memory_mb` bounds the call and processes default to 32.
    Without one, a call can hold up to `max_processes x memory_mb` (+ its tmpfs), so the default
    number of processes is chosen to keep that within half of the host's RAM."""
    call_memory_mb = config.call_memory_mb or config.memory_mb + config.tmpfs_mb
    if config.max_processes is not None:
        return config.max_processes, call_memory_mb
    if cgroup:
        return CGROUP_PROCESSES, call_memory_mb
    fitting = host_memory_mb() // 2 // config.memory_mb
    return max(MIN_PROCESSES, min(CGROUP_PROCESSES, fitting)), call_memory_mb
