"""PPO-clip loss (clip-higher, dual clip, token-mean) against hand-computed numbers."""

import math

import pytest
import torch

from spo_agents.learner.loss import importance_weights, masked_mean, policy_loss


def _case():
    """Episode 0: A = +1, ratios [1, 1.5, 0.5]; episode 1: A = -1, ratios [0.7, 20, 50 (masked)]."""
    behaviour_B_T = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -3.0, -0.2]], dtype=torch.float64)
    ratios_B_T = torch.tensor([[1.0, 1.5, 0.5], [0.7, 20.0, 50.0]], dtype=torch.float64)
    logprobs_B_T = (behaviour_B_T + ratios_B_T.log()).requires_grad_(True)
    advantages_B = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask_B_T = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logprobs_B_T, behaviour_B_T, advantages_B, mask_B_T


def test_loss_value_and_clip_fractions_match_hand_computation():
    logprobs, behaviour, advantages, mask = _case()
    loss, metrics = policy_loss(logprobs, behaviour, advantages, mask)
    # A>0: -min(r, clip) -> -1, -1.28, -0.5; A<0: max(r, clip) -> 0.8, then min(20, c=10) -> 10
    assert loss.item() == pytest.approx((-1 - 1.28 - 0.5 + 0.8 + 10) / 5)
    assert metrics["loss/clip_frac_high"] == pytest.approx(0.2)
    assert metrics["loss/clip_frac_low"] == pytest.approx(0.2)
    assert metrics["loss/clip_frac_dual"] == pytest.approx(0.2)
    assert metrics["loss/ratio_mean"] == pytest.approx((1 + 1.5 + 0.5 + 0.7 + 20) / 5)
    assert metrics["loss/ratio_max"] == pytest.approx(20.0)  # the masked 50 is ignored
    k3 = [r - 1 - math.log(r) for r in (1.0, 1.5, 0.5, 0.7, 20.0)]
    assert metrics["loss/approx_kl"] == pytest.approx(sum(k3) / 5)


def test_gradients_flow_only_through_unclipped_policy_tokens():
    logprobs, behaviour, advantages, mask = _case()
    loss, _ = policy_loss(logprobs, behaviour, advantages, mask)
    loss.backward()
    # d(-A r)/d logp = -A r, over 5 tokens; clipped, dual-clipped and masked tokens give 0
    expected = torch.tensor([[-1.0 / 5, 0.0, -0.5 / 5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(logprobs.grad, expected)


@pytest.mark.parametrize("advantage, sign", [(1.0, -1.0), (-1.0, 1.0)])
def test_positive_advantage_raises_logprob_negative_lowers_it(advantage, sign):
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_loss(logprobs, logprobs.detach(), torch.tensor([advantage]), torch.ones(1, 2))
    loss.backward()
    assert torch.all(torch.sign(logprobs.grad) == sign)  # a step against the gradient


def test_dual_clip_can_be_switched_off():
    logprobs, behaviour, advantages, mask = _case()
    loss, metrics = policy_loss(logprobs, behaviour, advantages, mask, dual_clip=None)
    assert loss.item() == pytest.approx((-1 - 1.28 - 0.5 + 0.8 + 20) / 5)
    assert "loss/clip_frac_dual" not in metrics
    with pytest.raises(ValueError):
        policy_loss(logprobs, behaviour, advantages, mask, dual_clip=0.5)


def test_truncated_importance_weights_are_capped_and_detached():
    logprobs = torch.zeros(1, 2, requires_grad=True)
    weights = importance_weights(torch.log(torch.tensor([[3.0, 0.5]])), torch.zeros(1, 2))
    assert weights[0].tolist() == pytest.approx([3.0, 0.5])
    loss, metrics = policy_loss(
        logprobs, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2),
        tis_weights_B_T=weights, tis_cap=2.0,
    )
    assert loss.item() == pytest.approx((-2.0 - 0.5) / 2)
    assert metrics["loss/tis_truncated_frac"] == pytest.approx(0.5)
    assert metrics["loss/tis_weight_mean"] == pytest.approx(1.25)
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([-1.0, -0.25])


def test_kl_penalty_and_entropy_bonus_are_off_by_default_and_add_when_asked():
    logprobs = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    ref = logprobs.detach() + torch.tensor([[math.log(2.0), 0.0]])
    entropy = torch.tensor([[1.0, 3.0]])
    zero_adv, mask = torch.tensor([0.0]), torch.ones(1, 2)
    base, metrics = policy_loss(logprobs, logprobs.detach(), zero_adv, mask)
    assert base.item() == 0.0 and "loss/kl_ref" not in metrics and "loss/entropy" not in metrics
    loss, metrics = policy_loss(
        logprobs, logprobs.detach(), zero_adv, mask,
        ref_logprobs_B_T=ref, kl_coef=0.1, entropy_B_T=entropy, entropy_coef=0.01,
    )
    k3 = (2.0 - math.log(2.0) - 1.0) / 2  # k3 on token 0, zero on token 1, token-mean
    assert metrics["loss/kl_ref"] == pytest.approx(k3)
    assert metrics["loss/entropy"] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(0.1 * k3 - 0.01 * 2.0)
    with pytest.raises(ValueError):
        policy_loss(logprobs, logprobs.detach(), zero_adv, mask, kl_coef=0.1)


def test_token_normalizer_makes_micro_batches_sum_to_the_batch_token_mean():
    logprobs, behaviour, advantages, mask = _case()
    full, _ = policy_loss(logprobs, behaviour, advantages, mask)
    total_tokens = float(mask.sum())
    parts = [
        policy_loss(logprobs[i : i + 1], behaviour[i : i + 1], advantages[i : i + 1],
                    mask[i : i + 1], token_normalizer=total_tokens)[0]
        for i in range(2)
    ]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item())


def test_empty_mask_gives_zero_loss_and_masked_mean():
    logprobs = torch.zeros(1, 3, requires_grad=True)
    loss, metrics = policy_loss(logprobs, torch.zeros(1, 3), torch.tensor([1.0]), torch.zeros(1, 3))
    assert loss.item() == 0.0 and metrics["loss/ratio_max"] == 0.0
    assert masked_mean(torch.ones(2, 2), torch.zeros(2, 2)).item() == 0.0
