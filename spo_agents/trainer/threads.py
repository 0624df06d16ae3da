"""How the learner and the local decoder share the CPU's cores (torch intra-op threads).

Why: the learner thread and the backend's decoding thread are two Python threads of one
process, and each runs torch ops with its own OpenMP team. When both compute at once (the
streaming modes) with the default team size (every core), twice as many threads as cores
compete: OpenMP teams wait for descheduled members, and on a 2-core machine the overlap that
streaming is for turns into a slowdown. In the synchronous GRPO mode the two phases
alternate, so each may use every core.

`torch.set_num_threads` sets the team size of the *calling* thread (libgomp keeps it per
thread, and so does MKL's local setting) and the default for threads that have not run a
torch op yet. So each side sets its own: the decoder in the backend's thread
(`TransformersBackend(num_threads=...)`), the learner in the trainer's one-thread learner
executor (`use_threads` as its initialiser).

Auto rule (`threads.learner` / `threads.decoder` = 0): with a local decoder whose work
overlaps the learner's (SPO streaming, GRPO group-gated), the cores are split (decoder
floor(C/2), learner the rest); otherwise each side gets all C. C is torch's intra-op thread
count when the trainer starts (the cores, or OMP_NUM_THREADS).
"""

from __future__ import annotations

from dataclasses import dataclass

import pydantic


class ThreadsConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    learner: int = pydantic.Field(0, ge=0, description="torch intra-op threads of the learner (0 = auto: all "
                                  "cores, or the cores the decoder leaves when both run at once)")
    decoder: int = pydantic.Field(0, ge=0, description="torch intra-op threads of the local decoding thread (0 = "
                                  "auto: all cores, or half of them when the learner runs at the same time)")


@dataclass(frozen=True)
class ThreadBudget:
    learner: int
    decoder: int
    cores: int
    reason: str

    def describe(self) -> str:
        return f"torch threads: learner {self.learner}, decoder {self.decoder} of {self.cores} ({self.reason})"


def plan_threads(config: ThreadsConfig, cores: int, overlapped: bool, local_decoder: bool) -> ThreadBudget:
    """The budget for a run: explicit settings win; 0 means the auto rule (module docstring)."""
    cores = max(1, cores)
    if overlapped and local_decoder and cores > 1:
        decoder, learner, reason = cores // 2, cores - cores // 2, "learner and decoder run at once: cores split"
    elif overlapped and local_decoder:
        decoder, learner, reason = 1, 1, "learner and decoder run at once on one core"
    else:
        decoder, learner = cores, cores
        reason = "phases alternate: each gets every core" if local_decoder else "generation runs elsewhere"
    if config.learner or config.decoder:
        reason = "set in the config" if config.learner and config.decoder else reason + "; partly set in the config"
    return ThreadBudget(config.learner or learner, config.decoder or decoder, cores, reason)


def use_threads(count: int) -> None:
    """Set the calling thread's torch intra-op team size (after torch's per-thread lazy init,
    which would otherwise overwrite it on the thread's first op)."""
    import torch

    torch.get_num_threads()
    torch.set_num_threads(count)
