"""The PPO-clip policy loss shared by SPO and GRPO, in one readable function.

Per policy token t of episode i, with ratio_t = exp(logp_t - logp_behaviour_t):
    A > 0:  loss_t = -A * min(ratio_t, 1 + clip_high)                          (clip-higher)
    A < 0:  loss_t = min(-A * max(ratio_t, 1 - clip_low), -A * dual_clip)      (dual clip)
(the standard max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) written out per sign), then a
token-mean over sampled tokens only (loss mask 1; prompt, tool and environment tokens are 0).
Defaults are the reference recipe's: clip 0.2 / 0.28, dual clip c = 10, no KL, no entropy.

Truncated importance weight (optional, off by default). `behaviour_logprobs_B_T` is the
anchor of the PPO ratio. When the learner anchors the ratio on the inference engine's
log-probs recorded at generation, no weight is needed. When it anchors the ratio on the
trainer's own recompute of the episode (a "proximal" policy, e.g. the weights at step start,
as verl's old_log_prob does), the mismatch with the policy that really sampled the tokens is
corrected by w_t = min(exp(logp_proximal_t - logp_sampler_t), tis_cap), detached: pass
`tis_weights_B_T = importance_weights(proximal, sampler)` and `tis_cap`. The weight multiplies
the per-token loss and carries no gradient (truncated importance sampling, as verl's TIS).

The log-ratio is clamped to [-20, 20] before exp, as in verl, so one broken token cannot turn
the loss into inf. Left out: micro-batching and the optimiser (the trainer's job); with
gradient accumulation pass `token_normalizer` = the whole batch's policy-token count so the
accumulated loss is the token-mean over the batch, not a mean of micro-batch means.
"""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0


def masked_mean(values_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """Mean of values over mask-1 positions; 0 when the mask is empty."""
    return (values_B_T * mask_B_T).sum() / mask_B_T.sum().clamp(min=1.0)


def importance_weights(
    numerator_logprobs_B_T: torch.Tensor, denominator_logprobs_B_T: torch.Tensor
) -> torch.Tensor:
    """exp(numerator - denominator), detached, log-ratio clamped to [-20, 20]."""
    log_ratio_B_T = (numerator_logprobs_B_T - denominator_logprobs_B_T).detach()
    return torch.exp(log_ratio_B_T.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def policy_loss(
    logprobs_B_T: torch.Tensor,
    behaviour_logprobs_B_T: torch.Tensor,
    advantages_B: torch.Tensor,
    loss_mask_B_T: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 10.0,
    tis_weights_B_T: torch.Tensor | None = None,
    tis_cap: float | None = None,
    ref_logprobs_B_T: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy_B_T: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    token_normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip loss with clip-higher and dual clip, token-mean over policy tokens.

    Shapes: log-probs, mask, weights and entropy (B, T); advantages (B,), one per episode.
    Returns the scalar loss to minimise and float metrics.
    """
    _check_options(dual_clip, kl_coef, ref_logprobs_B_T, entropy_coef, entropy_B_T)
    mask_B_T = loss_mask_B_T.to(logprobs_B_T.dtype)
    advantages_B_1 = advantages_B.to(logprobs_B_T.dtype).detach().unsqueeze(-1)

    log_ratio_B_T = (logprobs_B_T - behaviour_logprobs_B_T.detach()).clamp(
        -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP
    )
    ratio_B_T = torch.exp(log_ratio_B_T)
    clipped_ratio_B_T = ratio_B_T.clamp(1.0 - clip_low, 1.0 + clip_high)
    unclipped_loss_B_T = -advantages_B_1 * ratio_B_T
    clipped_loss_B_T = -advantages_B_1 * clipped_ratio_B_T
    ppo_loss_B_T = torch.maximum(unclipped_loss_B_T, clipped_loss_B_T)
    token_loss_B_T = ppo_loss_B_T
    if dual_clip is not None:
        dual_loss_B_T = torch.minimum(ppo_loss_B_T, -advantages_B_1 * dual_clip)
        token_loss_B_T = torch.where(advantages_B_1 < 0, dual_loss_B_T, ppo_loss_B_T)
    if tis_weights_B_T is not None:
        token_loss_B_T = token_loss_B_T * _truncate(tis_weights_B_T, tis_cap, mask_B_T.dtype)

    denominator = mask_B_T.sum().clamp(min=1.0) if token_normalizer is None else token_normalizer
    pg_loss = (token_loss_B_T * mask_B_T).sum() / denominator
    loss = pg_loss
    metrics = {"loss/pg": pg_loss.item()}
    if ref_logprobs_B_T is not None:
        ref_log_ratio_B_T = (ref_logprobs_B_T.detach() - logprobs_B_T).clamp(
            -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP
        )
        kl_ref_B_T = torch.exp(ref_log_ratio_B_T) - ref_log_ratio_B_T - 1.0  # k3 estimator
        kl_ref = (kl_ref_B_T * mask_B_T).sum() / denominator
        loss = loss + kl_coef * kl_ref
        metrics["loss/kl_ref"] = kl_ref.item()
    if entropy_B_T is not None:
        entropy = (entropy_B_T * mask_B_T).sum() / denominator
        loss = loss - entropy_coef * entropy
        metrics["loss/entropy"] = entropy.item()

    metrics.update(
        _clip_metrics(
            ratio_B_T, log_ratio_B_T, mask_B_T, advantages_B_1, clip_low, clip_high, dual_clip
        )
    )
    if tis_weights_B_T is not None:
        metrics.update(_tis_metrics(tis_weights_B_T, tis_cap, mask_B_T))
    metrics["loss/total"] = loss.item()
    return loss, metrics


def _check_options(dual_clip, kl_coef, ref_logprobs_B_T, entropy_coef, entropy_B_T) -> None:
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must exceed 1, got {dual_clip}")
    if kl_coef > 0 and ref_logprobs_B_T is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs_B_T")
    if entropy_coef > 0 and entropy_B_T is None:
        raise ValueError("entropy_coef > 0 needs entropy_B_T")


def _truncate(weights_B_T: torch.Tensor, cap: float | None, dtype: torch.dtype) -> torch.Tensor:
    """Detached importance weights, capped at `cap` when given."""
    weights_B_T = weights_B_T.detach().to(dtype)
    return weights_B_T if cap is None else weights_B_T.clamp(max=cap)


@torch.no_grad()
def _tis_metrics(
    weights_B_T: torch.Tensor, cap: float | None, mask_B_T: torch.Tensor
) -> dict[str, float]:
    truncated_B_T = _truncate(weights_B_T, cap, mask_B_T.dtype)
    metrics = {"loss/tis_weight_mean": masked_mean(truncated_B_T, mask_B_T).item()}
    if cap is not None:
        over_cap_B_T = (weights_B_T > cap).to(mask_B_T.dtype)
        metrics["loss/tis_truncated_frac"] = masked_mean(over_cap_B_T, mask_B_T).item()
    return metrics


@torch.no_grad()
def _clip_metrics(
    ratio_B_T: torch.Tensor,
    log_ratio_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    advantages_B_1: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
) -> dict[str, float]:
    """Fractions of policy tokens whose gradient a clip removed, ratio stats, approx KL."""
    dtype = mask_B_T.dtype
    positive_B_1, negative_B_1 = advantages_B_1 > 0, advantages_B_1 < 0
    clipped_high_B_T = (positive_B_1 & (ratio_B_T > 1.0 + clip_high)).to(dtype)
    clipped_low_B_T = (negative_B_1 & (ratio_B_T < 1.0 - clip_low)).to(dtype)
    metrics = {
        "loss/clip_frac_high": masked_mean(clipped_high_B_T, mask_B_T).item(),
        "loss/clip_frac_low": masked_mean(clipped_low_B_T, mask_B_T).item(),
        "loss/ratio_mean": masked_mean(ratio_B_T, mask_B_T).item(),
        "loss/ratio_max": (
            ratio_B_T.masked_fill(mask_B_T == 0, float("-inf")).max().item()
            if mask_B_T.any()
            else 0.0
        ),
        # k3 estimate of KL(behaviour || current) on the sampled tokens
        "loss/approx_kl": masked_mean(ratio_B_T - 1.0 - log_ratio_B_T, mask_B_T).item(),
    }
    if dual_clip is not None:
        dual_B_T = (negative_B_1 & (ratio_B_T > dual_clip)).to(dtype)
        metrics["loss/clip_frac_dual"] = masked_mean(dual_B_T, mask_B_T).item()
    return metrics
