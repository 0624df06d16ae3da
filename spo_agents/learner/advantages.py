"""Advantage estimators as small pure functions, side by side: SPO (global), GRPO (group).

SPO: A_i = r_i - v_before(x_i), the tracker's value read BEFORE it absorbs r_i, then
standardised over the whole batch:
- `episode` (paper and reference code): (A - mean_B A) / (std_B A + 1e-8); the std is
  torch.std's unbiased one (ddof = 1) as in the reference code.
- `token` (SPO++): the loss averages over tokens, so standardise under the token measure:
  weight each episode by its number of policy tokens n_i, mean_tok = sum n_i A_i / sum n_i,
  var_tok = sum n_i (A_i - mean_tok)^2 / sum n_i (weighted population variance).
- `none`: raw A.
GRPO: A_i = (r_i - mean_g r) / (std_g r + 1e-6) within each group g (std unbiased, as verl),
or mean-only. A group whose rewards are all equal gives zero advantages: it is counted as
degenerate, the waste SPO avoids.

`RunningMoments` serves the streaming trainer: when an episode's gradient is accumulated on
arrival, the statistics of the batch being formed are not known yet, so its advantage is
standardised with running statistics (exact Welford since the last reset, or an EMA).

Each function takes numpy arrays or torch tensors and returns the same kind (torch: same dtype
and device). One scalar per episode; broadcasting to tokens is the loss's job. Left out:
anything that needs a model or a tracker object (the caller reads v_before from the tracker).
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import numpy as np

from spo_agents.learner.config import MomentsMode, Normalization


def _is_tensor(x: Any) -> bool:
    """True for a torch tensor, without importing torch (no tensor exists unless it is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x: Any) -> np.ndarray:
    if _is_tensor(x):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _like(result: np.ndarray, template: Any) -> Any:
    """Return `result` as the same kind of array as `template` (torch: its dtype and device)."""
    if _is_tensor(template):
        torch = sys.modules["torch"]
        dtype = template.dtype if template.is_floating_point() else torch.float32
        return torch.as_tensor(result, dtype=dtype, device=template.device)
    if isinstance(template, (int, float)):
        return float(result)
    return result


def _std(x_B: np.ndarray, ddof: int) -> float:
    """Standard deviation with `ddof`; 0.0 when there are too few values to define it."""
    return float(np.std(x_B, ddof=ddof)) if x_B.size > ddof else 0.0


def spo_advantages(
    rewards_B: Any,
    values_before_B: Any,
    num_tokens_B: Any = None,
    normalize: Normalization | str = Normalization.EPISODE,
    eps: float = 1e-8,
    ddof: int = 1,
) -> Any:
    """SPO advantages: A = r - v_before, standardised over the batch; shape (B,).

    `num_tokens_B` (policy tokens per episode) is required for `normalize="token"`.
    `ddof` applies to `episode` only (1 = the reference code's unbiased std).
    """
    normalize = Normalization(normalize)
    rewards = _to_numpy(rewards_B)
    raw_B = rewards - _to_numpy(values_before_B)
    if raw_B.ndim != 1:
        raise ValueError(f"expected one reward per episode, got shape {raw_B.shape}")
    if normalize is Normalization.NONE:
        return _like(raw_B, rewards_B)
    if normalize is Normalization.EPISODE:
        normalized_B = (raw_B - raw_B.mean()) / (_std(raw_B, ddof) + eps)
        return _like(normalized_B, rewards_B)
    if num_tokens_B is None:
        raise ValueError("normalize='token' needs num_tokens_B")
    mean, std = _weighted_moments(raw_B, _to_numpy(num_tokens_B))
    return _like((raw_B - mean) / (std + eps), rewards_B)


def _weighted_moments(x_B: np.ndarray, weights_B: np.ndarray) -> tuple[float, float]:
    """Mean and population std of x under the measure proportional to weights."""
    if weights_B.shape != x_B.shape:
        raise ValueError(f"weights shape {weights_B.shape} != values shape {x_B.shape}")
    if (weights_B < 0).any() or not weights_B.sum() > 0:
        raise ValueError("token counts must be non-negative with a positive total")
    p_B = weights_B / weights_B.sum()
    mean = float((p_B * x_B).sum())
    return mean, float(np.sqrt((p_B * (x_B - mean) ** 2).sum()))


def grpo_advantages(
    rewards_B: Any,
    group_ids_B: Sequence[Any] | np.ndarray,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    ddof: int = 1,
) -> tuple[Any, int]:
    """GRPO advantages within groups: (r - mean_g) / (std_g + eps); returns (A_B, degenerate).

    A group is degenerate when all its rewards are equal (every advantage is zero). A group of
    one member is also degenerate here (its baseline would be its own reward; verl instead
    uses mean 0 and std 1 for it, i.e. the raw reward).
    """
    rewards = _to_numpy(rewards_B)
    group_ids = list(group_ids_B.tolist() if hasattr(group_ids_B, "tolist") else group_ids_B)
    if rewards.ndim != 1 or len(group_ids) != rewards.size:
        raise ValueError("rewards_B and group_ids_B must be 1-D with the same length")
    members: dict[Any, list[int]] = {}
    for i, group in enumerate(group_ids):
        members.setdefault(group, []).append(i)
    advantages_B = np.zeros_like(rewards)
    degenerate = 0
    for indices in members.values():
        group_rewards = rewards[indices]
        if len(indices) < 2 or np.all(group_rewards == group_rewards[0]):
            degenerate += 1
            continue
        centred = group_rewards - group_rewards.mean()
        if scale_by_std:
            centred = centred / (_std(group_rewards, ddof) + eps)
        advantages_B[indices] = centred
    return _like(advantages_B, rewards_B), degenerate


class RunningMoments:
    """Running mean and variance of advantages that arrive one at a time (optionally weighted).

    - `welford`: exact weighted mean and population variance of everything since `reset()`
      (West's weighted form of Welford's algorithm).
    - `ema`: exponentially decayed sums, decay `ema_decay` per unit of weight; follows the
      advantage distribution as it drifts. Early on (little weight seen) the estimate is noisy;
      `count` says how much weight backs it.
    Weight 1 per episode gives the episode measure; weight = policy tokens gives the token one.
    `var(ddof=1)` is the unbiased variance for reliability weights, V1^2 / (V1^2 - V2) times the
    population variance (V1, V2: sums of the (decayed) weights and of their squares), which is
    n / (n - 1) for n unit weights: torch.std's correction, as the batch statistics use.
    """

    def __init__(self, mode: MomentsMode | str = MomentsMode.WELFORD, ema_decay: float = 0.99):
        if not 0.0 < ema_decay < 1.0:
            raise ValueError("ema_decay must lie in (0, 1)")
        self.mode = MomentsMode(mode)
        self.ema_decay = ema_decay
        self.reset()

    def reset(self) -> None:
        self.count = 0.0  # total weight V1 (decayed for ema)
        self.mean = 0.0
        self._m2 = 0.0  # welford: weighted sum of squared deviations; ema: decayed sum w x^2
        self._w2 = 0.0  # sum of squared weights V2 (decayed twice as fast for ema)
        self.arrivals = 0  # values with positive weight since the last reset

    def update(self, x: float | Sequence[float] | np.ndarray, weight: Any = 1.0) -> None:
        """Add one value or a batch of values (each with its weight)."""
        x_N = np.atleast_1d(_to_numpy(x))
        w_N = np.broadcast_to(np.atleast_1d(_to_numpy(weight)), x_N.shape)
        for value, w in zip(x_N.tolist(), w_N.tolist(), strict=True):
            if w < 0:
                raise ValueError("weights must be non-negative")
            if w > 0:
                self._update_one(value, w)

    def _update_one(self, x: float, w: float) -> None:
        self.arrivals += 1
        if self.mode is MomentsMode.WELFORD:
            self.count += w
            self._w2 += w * w
            delta = x - self.mean
            self.mean += delta * w / self.count
            self._m2 += w * delta * (x - self.mean)
        else:
            decay = self.ema_decay**w
            sum_wx = self.mean * self.count * decay + w * x
            self.count = self.count * decay + w
            self._w2 = self._w2 * decay * decay + w * w
            self.mean = sum_wx / self.count
            self._m2 = self._m2 * decay + w * x * x

    @property
    def var(self) -> float:
        """Population variance of what was seen (0.0 before anything)."""
        if self.count <= 0:
            return 0.0
        if self.mode is MomentsMode.WELFORD:
            return max(self._m2 / self.count, 0.0)
        return max(self._m2 / self.count - self.mean**2, 0.0)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.var))

    def std_with(self, ddof: int) -> float:
        """ddof 0: the population std; ddof 1: the reliability-weights unbiased std (0.0 while it
        is not defined, i.e. with fewer than two values)."""
        if ddof == 0:
            return self.std
        denominator = self.count**2 - ddof * self._w2
        return float(np.sqrt(self.var * self.count**2 / denominator)) if denominator > 1e-12 else 0.0

    def normalize(self, x: Any, eps: float = 1e-8, ddof: int = 0) -> Any:
        """(x - mean) / (std + eps) with the current statistics, same kind of array as x."""
        return _like((_to_numpy(x) - self.mean) / (self.std_with(ddof) + eps), x)

    def state_dict(self) -> dict:
        return {
            "mode": self.mode.value,
            "ema_decay": self.ema_decay,
            "count": self.count,
            "mean": self.mean,
            "m2": self._m2,
            "w2": self._w2,
            "arrivals": self.arrivals,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.mode = MomentsMode(state["mode"])
        self.ema_decay = float(state["ema_decay"])
        self.count = float(state["count"])
        self.mean = float(state["mean"])
        self._m2 = float(state["m2"])
        self._w2 = float(state["w2"])
        self.arrivals = int(state["arrivals"])
