"""An isolated, fast sandbox for untrusted Python snippets (model-written code).

    from spo_agents.sandbox import SandboxPool, SandboxConfig
    with SandboxPool(SandboxConfig(timeout_s=2)) as pool:
        print(pool.run("print(6 * 7)").to_observation())

Isolation is built from Linux namespaces, rlimits, an unprivileged UID and a seccomp filter in
pre-warmed helper processes (bubblewrap as a fallback); see docs/sandbox.md for the threat
model, each layer, what is not protected, and measured costs.
"""

from spo_agents.sandbox.capabilities import CapabilityReport, detect_capabilities
from spo_agents.sandbox.config import SandboxConfig
from spo_agents.sandbox.pool import SandboxError, SandboxPool, SandboxUnavailableError
from spo_agents.sandbox.protocol import IsolationMode, SandboxConfigError
from spo_agents.sandbox.result import ExecResult, ExecStatus, truncate_middle
from spo_agents.sandbox.session import SandboxSession

__all__ = [
    "CapabilityReport", "ExecResult", "ExecStatus", "IsolationMode", "SandboxConfig", "SandboxConfigError",
    "SandboxError", "SandboxPool", "SandboxSession", "SandboxUnavailableError", "detect_capabilities", "truncate_middle",
]
