"""Latency distributions for the throughput simulator and the latency wrapper.

A top-level module (numpy only) because two layers use it: the benchmarks and the
environment kit's `LatencyWrapper`, which must not import the benchmarks.

Why: the throughput gain of SPO over GRPO depends on how heavy the tail of episode durations
is, so the simulator takes each ingredient of an episode's duration (turns, tokens per turn,
per-token time, tool latency) from a configurable distribution. Every distribution samples
from a caller-owned, seeded `numpy.random.Generator`, so a run is reproducible.

Provided: constant, log-normal (parametrised by its median and the sigma of the underlying
normal, which is what one reads off a latency histogram), Pareto (type I: minimum `scale`,
tail index `alpha`), empirical (resampling with replacement from a list or a file), and
Beta for per-task success probabilities.
`parse_distribution` turns a command-line spec such as `lognormal:median=2,sigma=1` into one.

Left out: correlations between ingredients (a long turn does not make the next turn long),
time-varying load, and fitted distributions; the empirical distribution covers measured data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class Distribution(Protocol):
    """Anything that draws `size` non-negative samples from a generator."""

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray: ...

    @property
    def mean(self) -> float: ...


@dataclass(frozen=True)
class Constant:
    value: float

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.full(size, float(self.value))

    @property
    def mean(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class LogNormal:
    """exp(N(log(median), sigma^2)): median `median`, mean median * exp(sigma^2 / 2)."""

    median: float
    sigma: float

    def __post_init__(self) -> None:
        if self.median <= 0 or self.sigma < 0:
            raise ValueError(f"log-normal needs median > 0 and sigma >= 0, got {self}")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.lognormal(math.log(self.median), self.sigma, size)

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)


@dataclass(frozen=True)
class Pareto:
    """Pareto type I: P(X > x) = (scale / x)^alpha for x >= scale; infinite mean if alpha <= 1."""

    alpha: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.scale <= 0:
            raise ValueError(f"Pareto needs alpha > 0 and scale > 0, got {self}")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        # numpy's pareto is the Lomax (Pareto II) form starting at 0.
        return self.scale * (1.0 + rng.pareto(self.alpha, size))

    @property
    def mean(self) -> float:
        return math.inf if self.alpha <= 1 else self.alpha * self.scale / (self.alpha - 1)


@dataclass(frozen=True)
class Empirical:
    """Resamples, with replacement, from measured values."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("empirical distribution needs at least one value")
        if min(self.values) < 0:
            raise ValueError("empirical values must be non-negative")

    @classmethod
    def from_file(cls, path: str | Path) -> Empirical:
        """Numbers from a file: a JSON list, or one number per line (blank lines skipped)."""
        text = Path(path).read_text()
        stripped = text.strip()
        if stripped.startswith("["):
            return cls(tuple(float(v) for v in json.loads(stripped)))
        return cls(tuple(float(line) for line in stripped.splitlines() if line.strip()))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.choice(np.asarray(self.values, dtype=float), size=size, replace=True)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))


@dataclass(frozen=True)
class Beta:
    """Beta(a, b) on [0, 1]: per-task success probabilities, not a latency."""

    a: float
    b: float

    def __post_init__(self) -> None:
        if self.a <= 0 or self.b <= 0:
            raise ValueError(f"Beta needs a > 0 and b > 0, got {self}")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.beta(self.a, self.b, size)

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)


def _parse_kwargs(body: str, names: tuple[str, ...]) -> dict[str, float]:
    """`median=2,sigma=1` or positional `2,1` (in the order of `names`) -> dict."""
    out: dict[str, float] = {}
    for i, part in enumerate(p for p in body.split(",") if p.strip()):
        if "=" in part:
            key, value = part.split("=", 1)
            key = key.strip()
        else:
            if i >= len(names):
                raise ValueError(f"too many values in {body!r}; expected {names}")
            key, value = names[i], part
        if key not in names:
            raise ValueError(f"unknown parameter {key!r}; expected {names}")
        out[key] = float(value)
    return out


def parse_distribution(spec: str) -> Distribution:
    """Parse a command-line spec into a distribution.

    Forms: `3` or `constant:3`; `lognormal:median=2,sigma=1`; `pareto:alpha=1.5,scale=1`;
    `beta:a=1,b=1` (probabilities); `empirical:1,2,5` (values) or `empirical:@path` (a file,
    see `Empirical.from_file`).
    """
    spec = spec.strip()
    kind, _, body = spec.partition(":")
    kind = kind.lower()
    if not body:
        try:
            return Constant(float(kind))
        except ValueError:
            raise ValueError(f"cannot parse distribution {spec!r}") from None
    if kind == "constant":
        return Constant(float(body))
    if kind == "lognormal":
        kw = _parse_kwargs(body, ("median", "sigma"))
        return LogNormal(kw["median"], kw["sigma"])
    if kind == "pareto":
        kw = _parse_kwargs(body, ("alpha", "scale"))
        return Pareto(kw["alpha"], kw.get("scale", 1.0))
    if kind == "beta":
        kw = _parse_kwargs(body, ("a", "b"))
        return Beta(kw["a"], kw["b"])
    if kind == "empirical":
        if body.startswith("@"):
            return Empirical.from_file(body[1:])
        return Empirical(tuple(float(v) for v in body.split(",") if v.strip()))
    raise ValueError(f"unknown distribution kind {kind!r} in {spec!r}")


def describe(dist: Distribution) -> str:
    """Short human-readable form, the inverse of `parse_distribution` where possible."""
    if isinstance(dist, Constant):
        return f"constant:{dist.value:g}"
    if isinstance(dist, LogNormal):
        return f"lognormal:median={dist.median:g},sigma={dist.sigma:g}"
    if isinstance(dist, Pareto):
        return f"pareto:alpha={dist.alpha:g},scale={dist.scale:g}"
    if isinstance(dist, Beta):
        return f"beta:a={dist.a:g},b={dist.b:g}"
    if isinstance(dist, Empirical):
        return f"empirical:{len(dist.values)} values, mean {dist.mean:.3g}"
    return repr(dist)
