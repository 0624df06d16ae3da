"""Keeping a process's OpenMP threads within its cores.

Why: PyTorch's CPU kernels run on OpenMP (libgomp), which gives every thread that runs a
parallel op a team of its own and keeps the team's workers after the op. Once the process holds
more OpenMP threads than cores, idle or not, libgomp lets idle workers spin only briefly
(GOMP_SPINCOUNT throttled from 300,000 to 100), so every parallel region wakes its team through
the kernel: on a 2-core machine a learner step ran 25-55% slower that way (trainer/threads.py).
A team ends with its thread; `in_own_thread` runs set-up work (loading a model, a warm start,
a baseline measurement) in a thread that ends, so the caller's thread is left without one.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["in_own_thread"]


def in_own_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a new thread that ends when it returns; its result, or its
    exception re-raised in the caller."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    # a daemon, so that Ctrl-C in the waiting caller ends the process instead of waiting for it
    thread = threading.Thread(target=target, name="spo-setup", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
