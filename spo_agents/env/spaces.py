"""A Gymnasium space of arbitrary Unicode text, and how text crosses AsyncVectorEnv's processes.

gymnasium's `spaces.Text` checks every character against a fixed charset (alphanumerics by
default), so ordinary prompts with spaces, punctuation, LaTeX or emoji fail `contains`.
Observations and actions of a language agent are free text: this space accepts any `str`
up to a length bound and samples short random strings for `check_env`.

`gymnasium.vector.AsyncVectorEnv` hands observations from its workers to the parent through
shared memory by default, and gymnasium's shared-memory functions know only fixed-size spaces
(they raise for custom ones, and read `spaces.Text` once, at start). Text has no fixed size,
so `UnicodeText` registers its own implementation with those functions (gymnasium's extension
point for custom spaces): one file per sub-environment in a private directory (on /dev/shm,
which is memory, where present). The worker writes its observation before it answers the
parent; the parent's observations are a live view that reads the files, and a deep copy of it
(what AsyncVectorEnv returns unless `copy=False`) is a tuple of strings, as with
`shared_memory=False`. So `gymnasium.make_vec(ID, num_envs=n, vectorization_mode="async")`
needs no options.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

# Printable ASCII plus a few multi-byte characters, used only by `sample()`.
_SAMPLE_ALPHABET = list(" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-*/=()[]{}<>.,:;!?\"'\\\n") + [
    "é",
    "π",
    "∑",
    "中",
    "🙂",
]


class UnicodeText(spaces.Space[str]):
    """Any Python `str` of at most `max_length` characters."""

    def __init__(self, max_length: int = 10_000_000, seed: int | np.random.Generator | None = None):
        self.max_length = int(max_length)
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        length = int(self.np_random.integers(0, 64))
        picks = self.np_random.integers(0, len(_SAMPLE_ALPHABET), size=length)
        return "".join(_SAMPLE_ALPHABET[i] for i in picks)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, UnicodeText) and other.max_length == self.max_length


class TextSlots:
    """The "shared memory" of n text observations: one file per sub-environment.

    Made in the parent, which owns (and at garbage collection or exit removes) the directory;
    workers get it pickled or forked and only write their own slot. Text is stored as UTF-8
    with `surrogatepass`, so lone surrogates round-trip.
    """

    def __init__(self, n: int):
        self.directory = tempfile.mkdtemp(prefix="spo-text-obs-", dir=_memory_dir())
        self.n = n
        self._cleanup = weakref.finalize(self, _remove_directory, self.directory, os.getpid())

    def __reduce__(self) -> tuple[Any, ...]:
        return _attached_slots, (self.directory, self.n)

    def path(self, index: int) -> str:
        return os.path.join(self.directory, str(index))

    def write(self, index: int, text: str) -> None:
        staging = self.path(index) + ".new"
        with open(staging, "wb") as handle:
            handle.write(text.encode("utf-8", "surrogatepass"))
        os.replace(staging, self.path(index))  # a reader sees the old or the new text, whole

    def read(self, index: int) -> str:
        try:
            with open(self.path(index), "rb") as handle:
                return handle.read().decode("utf-8", "surrogatepass")
        except FileNotFoundError:  # nothing written yet
            return ""


class TextSlotsView(Sequence):
    """The parent's observations: reads the slots on access; deep-copies to a tuple of str."""

    def __init__(self, slots: TextSlots):
        self.slots = slots

    def __len__(self) -> int:
        return self.slots.n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self.slots.read(i) for i in range(self.slots.n)[index])
        if not -self.slots.n <= index < self.slots.n:
            raise IndexError(index)
        return self.slots.read(index % self.slots.n)

    def __deepcopy__(self, memo: dict[int, Any]) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other: Any) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, TextSlotsView)) else other)

    def __repr__(self) -> str:
        return f"TextSlotsView({tuple(self)!r})"


def _memory_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _remove_directory(directory: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked worker that inherited the finalizer
        shutil.rmtree(directory, ignore_errors=True)


def _attached_slots(directory: str, n: int) -> TextSlots:
    slots = TextSlots.__new__(TextSlots)
    slots.directory, slots.n = directory, n
    return slots


@create_shared_memory.register(UnicodeText)
def _create_text_slots(space: UnicodeText, n: int = 1, ctx: Any = None) -> TextSlots:
    return TextSlots(n)


@read_from_shared_memory.register(UnicodeText)
def _read_text_slots(space: UnicodeText, shared_memory: TextSlots, n: int = 1) -> TextSlotsView:
    return TextSlotsView(shared_memory)


@write_to_shared_memory.register(UnicodeText)
def _write_text_slot(space: UnicodeText, index: int, value: str, shared_memory: TextSlots) -> None:
    shared_memory.write(index, value if isinstance(value, str) else str(value))
