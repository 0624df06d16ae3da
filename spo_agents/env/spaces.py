"""A Gymnasium space of arbitrary Unicode text.

gymnasium's `spaces.Text` checks every character against a fixed charset (alphanumerics by
default), so ordinary prompts with spaces, punctuation, LaTeX or emoji fail `contains`.
Observations and actions of a language agent are free text: this space accepts any `str`
up to a length bound and samples short random strings for `check_env`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

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
