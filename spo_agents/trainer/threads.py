"""How the learner and the local decoder share the CPU's cores (torch intra-op threads).

Why: the learner and the local backend's decoding thread both run torch ops, and each thread
that does gets its own OpenMP team. Two things follow on a CPU:

- When both compute at once (the streaming modes) with the default team size (every core),
  twice as many threads as cores compete and teams wait for descheduled members.
- Even when they take turns, libgomp (PyTorch's OpenMP) counts every team's threads, idle ones
  included, and once the process holds more of them than it has cores it stops idle workers
  from spinning (GOMP_SPINCOUNT throttled from 300,000 to 100): every parallel region then wakes
  its workers through the kernel. `scripts/omp_teams.py` on the 2-core container: a learner step
  in a second thread while the main thread kept a team took 1.36-1.72 s and 8,400 context
  switches per step, against 1.09-1.28 s and about 50 with one team (docs/training.md).

So the trainer keeps the process's OpenMP threads within the cores:
- `sharing: alternate`: the learner's work runs on the decoding thread itself, between two
  decode steps (`TransformersBackend.run_between_steps`; decoding pauses meanwhile), with all
  cores: one team in the process.
- `sharing: split`: the learner has a thread of its own and the cores are split between the
  two (decoder floor(C/2), learner the rest), so the two teams together hold C threads.
- `auto`: alternate where the phases alternate anyway (GRPO batch mode; unless
  `threads.learner` gives the learner a count of its own) and split where the learner's work
  overlaps generation (SPO streaming, GRPO group-gated). Without a local decoder
  the learner has every core in its own thread.
The trainer builds its model and warm start in a short-lived thread (its team ends with it)
and holds the main thread to one torch thread while it runs, so neither adds a team.
`threads.learner` / `threads.decoder` override the counts. C is torch's intra-op thread count
when the trainer starts (the cores, or OMP_NUM_THREADS).

`torch.set_num_threads` sets the team size of the *calling* thread (libgomp keeps it per
thread) and the default for threads that have not run a torch op yet, so each thread sets its
own: the decoder in the backend's thread (`TransformersBackend(num_threads=...)`), the learner
in the trainer's one-thread learner executor (`use_threads` as its initialiser).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pydantic

from spo_agents.backends.omp import in_own_thread

__all__ = ["Sharing", "ThreadBudget", "ThreadsConfig", "in_own_thread", "plan_threads", "use_threads"]


class Sharing(str, Enum):
    AUTO = "auto"
    SPLIT = "split"
    ALTERNATE = "alternate"


class ThreadsConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    learner: int = pydantic.Field(0, ge=0, description="torch intra-op threads of the learner (0 = auto: all "
                                  "cores, or the cores the decoder leaves when both run at once)")
    decoder: int = pydantic.Field(0, ge=0, description="torch intra-op threads of the local decoding thread (0 = "
                                  "auto: all cores, or half of them when the learner runs at the same time)")
    sharing: Sharing = pydantic.Field(Sharing.AUTO, description="alternate: the learner runs on the local "
                                      "decoder's thread between decode steps; split: in its own thread, cores "
                                      "split; auto: alternate when the phases alternate anyway (GRPO batch)")

    @pydantic.model_validator(mode="after")
    def _one_team_when_alternating(self) -> "ThreadsConfig":
        if self.sharing is Sharing.ALTERNATE and self.learner and self.learner != self.decoder:
            raise ValueError("threads.sharing=alternate runs the learner on the decoder's thread with its "
                             "threads: set threads.decoder, not threads.learner")
        return self


@dataclass(frozen=True)
class ThreadBudget:
    learner: int
    decoder: int
    cores: int
    reason: str
    alternate: bool = False  # the learner runs on the decoder's thread

    def describe(self) -> str:
        where = "on the decoder's thread" if self.alternate else "in its own thread"
        return (f"torch threads: learner {self.learner} ({where}), decoder {self.decoder} of {self.cores} "
                f"({self.reason})")


def plan_threads(config: ThreadsConfig, cores: int, overlapped: bool, local_decoder: bool) -> ThreadBudget:
    """The budget for a run: explicit settings win; 0 and `auto` mean the rule in the module
    docstring."""
    cores = max(1, cores)
    if config.sharing is Sharing.ALTERNATE and not local_decoder:
        raise ValueError("threads.sharing=alternate needs the local decoder (generation: local with the "
                         "transformers backend): there is no decoding thread to share")
    # auto takes turns unless the config gives the learner a count of its own
    own_learner_count = bool(config.learner) and config.learner != (config.decoder or cores)
    alternate = local_decoder and (config.sharing is Sharing.ALTERNATE or (
        config.sharing is Sharing.AUTO and not overlapped and not own_learner_count))
    if alternate:
        decoder = config.decoder or cores
        reason = "phases alternate: one thread, every core" if config.sharing is Sharing.AUTO \
            else "learner and decoder take turns on one thread"
        return ThreadBudget(decoder, decoder, cores, reason + ("; set in the config" if config.decoder else ""),
                            alternate=True)
    if overlapped and local_decoder and cores > 1:
        decoder, learner, reason = cores // 2, cores - cores // 2, "learner and decoder run at once: cores split"
    elif overlapped and local_decoder:
        decoder, learner, reason = 1, 1, "learner and decoder run at once on one core"
    elif local_decoder:
        decoder, learner, reason = cores, cores, "split by the config: each thread gets every core"
    else:
        decoder, learner, reason = cores, cores, "generation runs elsewhere"
    if config.learner or config.decoder:
        reason = "set in the config" if config.learner and config.decoder else reason + "; partly set in the config"
    return ThreadBudget(config.learner or learner, config.decoder or decoder, cores, reason)


def use_threads(count: int) -> None:
    """Set the calling thread's torch intra-op team size (after torch's per-thread lazy init,
    which would otherwise overwrite it on the thread's first op)."""
    import torch

    torch.get_num_threads()
    torch.set_num_threads(count)

