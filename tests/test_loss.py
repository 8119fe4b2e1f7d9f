"""Hand-computed checks of lit_attn.loss.policy_loss on tiny 2x3 batches.

Convention in these tests: old_logprobs = 0, so logprobs = log(ratio) and ratio = exp(logprobs).
Default clip range: [1 - 0.2, 1 + 0.28] = [0.8, 1.28]; default dual clip 3.0.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_attn.loss import policy_loss

LN2 = math.log(2.0)


def _logp(ratios: list[list[float]]) -> torch.Tensor:
    return torch.tensor(ratios, dtype=torch.float64).log().requires_grad_(True)


def _zeros() -> torch.Tensor:
    return torch.zeros(2, 3, dtype=torch.float64)


def _ones() -> torch.Tensor:
    return torch.ones(2, 3, dtype=torch.float64)


# Ratios all inside [0.8, 1.28]; per-sequence advantages A = [1, -2]; last token of row 0 masked.
# pg = -A * r: row 0: [-1.0, -1.1, (masked)]; row 1: 2 * [1.2, 1.0, 0.85] = [2.4, 2.0, 1.7]
RATIOS = [[1.0, 1.1, 0.9], [1.2, 1.0, 0.85]]
ADV = [1.0, -2.0]
MASK = [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        # (-1.0 - 1.1 + 2.4 + 2.0 + 1.7) / 5 tokens = 4.0 / 5
        ("token_mean", 0.8),
        # row means: -2.1 / 2 = -1.05 and 6.1 / 3 = 2.0333...; mean of the two = 0.491666...
        ("seq_mean_token_mean", (-1.05 + 6.1 / 3) / 2),
        # row sums / T=3: -2.1 / 3 = -0.7 and 6.1 / 3; mean over B=2 = 0.666666...
        ("seq_mean_token_sum_norm", (-0.7 + 6.1 / 3) / 2),
    ],
)
def test_aggregations_inside_clip_range(aggregation: str, expected: float) -> None:
    logp = _logp(RATIOS)
    loss, _ = policy_loss(
        logp, _zeros(), torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK, dtype=torch.float64),
        aggregation=aggregation,
    )
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert {"token_mean": 0.8, "seq_mean_token_mean": 0.4916666666666667,
            "seq_mean_token_sum_norm": 0.6666666666666666}[aggregation] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        # only row 1 counts: 6.1 / 3 tokens
        ("token_mean", 6.1 / 3),
        # row 0 has no tokens and is skipped: mean over row 1 only = 6.1 / 3
        ("seq_mean_token_mean", 6.1 / 3),
        # row 0 contributes 0; (0 + 6.1 / 3) / 2 sequences
        ("seq_mean_token_sum_norm", 6.1 / 3 / 2),
    ],
)
def test_aggregations_with_an_empty_sequence(aggregation: str, expected: float) -> None:
    mask = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    loss, _ = policy_loss(
        _logp(RATIOS), _zeros(), torch.tensor(ADV, dtype=torch.float64), mask, aggregation=aggregation
    )
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_per_sequence_advantages_equal_broadcast_per_token_advantages() -> None:
    mask = torch.tensor(MASK, dtype=torch.float64)
    logp_a, logp_b = _logp(RATIOS), _logp(RATIOS)
    adv = torch.tensor(ADV, dtype=torch.float64)
    loss_a, _ = policy_loss(logp_a, _zeros(), adv, mask)
    loss_b, _ = policy_loss(logp_b, _zeros(), adv[:, None].expand(2, 3).clone(), mask)
    loss_a.backward()
    loss_b.backward()
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-12)
    assert torch.allclose(logp_a.grad, logp_b.grad)


def test_per_token_advantages() -> None:
    # A varies within a sequence; all ratios 1.0 (inside the clip range), so pg = -A.
    adv = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], dtype=torch.float64)
    loss, _ = policy_loss(_logp([[1.0] * 3] * 2), _zeros(), adv, _ones())
    # -(1 + 2 + 3 - 1 + 0.5 + 0) / 6 = -5.5 / 6
    assert loss.item() == pytest.approx(-5.5 / 6, abs=1e-12)


@pytest.mark.parametrize(
    ("ratio", "adv", "dual_clip", "expected", "clipped"),
    [
        # inside the range: -A * r = -1.1
        (1.1, 1.0, 3.0, -1.1, False),
        # A > 0, r = 2 > 1.28: max(-2, -1.28) = -1.28 (clipped high)
        (2.0, 1.0, 3.0, -1.28, True),
        # A > 0, r = 0.5 < 0.8: max(-0.5, -0.8) = -0.5 (not clipped: the objective stays pessimistic)
        (0.5, 1.0, 3.0, -0.5, False),
        # A < 0, r = 0.5 < 0.8: max(0.5, 0.8) = 0.8 (clipped low)
        (0.5, -1.0, 3.0, 0.8, True),
        # A < 0, r = 2 > 1.28: max(2, 1.28) = 2, below the dual cap 3 (not clipped)
        (2.0, -1.0, 3.0, 2.0, False),
        # A < 0, r = 4: max(4, 1.28) = 4, dual clip min(4, 3 * 1) = 3 (clipped)
        (4.0, -1.0, 3.0, 3.0, True),
        # A = -2, r = 4: max(8, 2.56) = 8, dual clip min(8, 3 * 2) = 6
        (4.0, -2.0, 3.0, 6.0, True),
        # dual clip disabled: stays 4
        (4.0, -1.0, None, 4.0, False),
    ],
)
def test_clipping_cases(ratio: float, adv: float, dual_clip: float | None, expected: float, clipped: bool) -> None:
    logp = _logp([[ratio] * 3] * 2)
    loss, _ = policy_loss(logp, _zeros(), torch.full((2,), adv, dtype=torch.float64), _ones(), dual_clip=dual_clip)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    if clipped:
        assert torch.all(logp.grad == 0)
    else:
        # d(-A r)/d logp = -A r, averaged over 6 tokens
        assert torch.allclose(logp.grad, torch.full((2, 3), -adv * ratio / 6, dtype=torch.float64))


def test_mixed_batch_stats_and_gradients() -> None:
    ratios = [[1.1, 2.0, 0.5], [0.5, 2.0, 4.0]]
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    logp = _logp(ratios)
    loss, stats = policy_loss(logp, _zeros(), adv, _ones())
    # pg row 0: [-1.1, -1.28 (high clip), -0.5]; row 1: [0.8 (low clip), 2.0, 3.0 (dual clip)]
    # token mean: (-2.88 + 5.8) / 6 = 2.92 / 6
    assert loss.item() == pytest.approx(2.92 / 6, abs=1e-12)
    assert stats["pg_loss"].item() == pytest.approx(2.92 / 6, abs=1e-12)
    assert stats["kl"].item() == 0.0
    assert stats["clip_ratio/low_mean"].item() == pytest.approx(1 / 6)
    assert stats["clip_ratio/high_mean"].item() == pytest.approx(1 / 6)
    assert stats["clip_ratio/region_mean"].item() == pytest.approx(2 / 6)
    assert stats["clip_ratio/dual_mean"].item() == pytest.approx(1 / 6)
    # (1.1 + 2 + 0.5 + 0.5 + 2 + 4) / 6 = 10.1 / 6
    assert stats["ratio_mean"].item() == pytest.approx(10.1 / 6)
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())
    loss.backward()
    # unclipped tokens: -A r / 6; clipped (high, low, dual) tokens: exactly 0
    expected = torch.tensor([[-1.1, 0.0, -0.5], [0.0, 2.0, 0.0]], dtype=torch.float64) / 6
    assert torch.allclose(logp.grad, expected, atol=1e-15)
    assert logp.grad[0, 1] == 0 and logp.grad[1, 0] == 0 and logp.grad[1, 2] == 0


def test_stats_use_masked_tokens_only() -> None:
    # Same batch, but the three clipped tokens are masked out: no clipping counted.
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    _, stats = policy_loss(_logp([[1.1, 2.0, 0.5], [0.5, 2.0, 4.0]]), _zeros(), adv, mask)
    assert stats["clip_ratio/region_mean"].item() == 0.0
    assert stats["clip_ratio/dual_mean"].item() == 0.0
    # (1.1 + 0.5 + 2.0) / 3
    assert stats["ratio_mean"].item() == pytest.approx(3.6 / 3)
    # (-1.1 - 0.5 + 2.0) / 3
    assert stats["pg_loss"].item() == pytest.approx(0.4 / 3)


def test_log_ratio_clamp_keeps_loss_finite() -> None:
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    old = torch.full((2, 3), -1000.0, dtype=torch.float64)  # log-ratio 1000 -> clamped to 20
    adv = torch.full((2,), -1.0, dtype=torch.float64)
    loss, stats = policy_loss(logp, old, adv, _ones(), dual_clip=None)
    # pg = -A * exp(20) = exp(20) ~ 4.85e8 for every token
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-12)
    assert stats["ratio_mean"].item() == pytest.approx(math.exp(20.0), rel=1e-12)
    loss.backward()
    # past the clamp the log-ratio is constant: no gradient, and certainly no inf/NaN
    assert torch.all(logp.grad == 0)


def test_masked_positions_may_hold_inf() -> None:
    logp = torch.tensor([[-1.0, float("-inf"), -2.0], [-1.0, -1.0, float("nan")]], dtype=torch.float64)
    logp.requires_grad_(True)
    old = torch.tensor([[-1.0, float("-inf"), -2.0], [-1.0, -1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    ref = torch.full((2, 3), -1.0, dtype=torch.float64)
    loss, stats = policy_loss(logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), mask,
                              ref_logprobs=ref, kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1] == 0 and logp.grad[1, 2] == 0


def test_k3_kl_penalty() -> None:
    # ratio 1 and A = 0 everywhere, so pg = 0 and the loss is the KL term alone.
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    # d = ref - logp: row 0 [ln2, -ln2, 0], row 1 [0, 0, ln2]
    ref = torch.tensor([[LN2, -LN2, 0.0], [0.0, 0.0, LN2]], dtype=torch.float64)
    loss, stats = policy_loss(logp, _zeros(), torch.zeros(2, dtype=torch.float64), _ones(),
                              ref_logprobs=ref, kl_coef=0.1)
    # k3 = e^d - d - 1: d=ln2 -> 2 - ln2 - 1 = 0.30685282; d=-ln2 -> 0.5 + ln2 - 1 = 0.19314718; d=0 -> 0
    # token mean = (2 * 0.30685282 + 0.19314718) / 6 = (1.5 - ln2) / 6 = 0.13447547
    assert stats["kl"].item() == pytest.approx(0.13447547, abs=1e-8)
    assert stats["pg_loss"].item() == 0.0
    assert loss.item() == pytest.approx(0.1 * 0.13447547, abs=1e-9)
    loss.backward()
    # d k3 / d logp = 1 - e^d: ln2 -> -1, -ln2 -> 0.5, 0 -> 0; times kl_coef / 6 tokens
    expected = torch.tensor([[-1.0, 0.5, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64) * 0.1 / 6
    assert torch.allclose(logp.grad, expected, atol=1e-15)


def test_kl_is_reported_but_not_added_when_kl_coef_is_zero() -> None:
    ref = torch.tensor([[LN2, -LN2, 0.0], [0.0, 0.0, LN2]], dtype=torch.float64)
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, stats = policy_loss(logp, _zeros(), torch.zeros(2, dtype=torch.float64), _ones(), ref_logprobs=ref)
    assert loss.item() == 0.0
    assert stats["kl"].item() == pytest.approx(0.13447547, abs=1e-8)


def test_kl_diff_is_clamped() -> None:
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    ref = torch.full((2, 3), 1000.0, dtype=torch.float64)  # d = 1000 -> clamped to 20, e^20 stays finite
    loss, stats = policy_loss(logp, _zeros(), torch.zeros(2, dtype=torch.float64), _ones(),
                              ref_logprobs=ref, kl_coef=1.0)
    # e^20 - 20 - 1, then the k3 value's own clamp at 10
    assert loss.item() == 10.0
    assert torch.isfinite(stats["kl"])


def test_k3_value_is_clamped_at_10_as_verl_low_var_kl() -> None:
    # d = ref - logp: row 0 [3, 2, 0], row 1 [-20, 0, ln2]; k3 = e^d - d - 1
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[3.0, 2.0, 0.0], [-20.0, 0.0, LN2]], dtype=torch.float64)
    loss, stats = policy_loss(logp, _zeros(), torch.zeros(2, dtype=torch.float64), _ones(),
                              ref_logprobs=ref, kl_coef=1.0)
    # d = 3: e^3 - 4 = 16.09 -> 10; d = -20: 19 + e^-20 -> 10; d = 2: e^2 - 3 = 4.389 (kept); d = ln2: 1 - ln2
    per_token = [10.0, math.exp(2.0) - 3.0, 0.0, 10.0, 0.0, 1.0 - LN2]
    assert stats["kl"].item() == pytest.approx(sum(per_token) / 6, abs=1e-12)
    assert loss.item() == pytest.approx(sum(per_token) / 6, abs=1e-12)
    loss.backward()
    # a clamped token gives no gradient; the others d k3 / d logp = 1 - e^d, over 6 tokens
    expected = torch.tensor([[0.0, 1.0 - math.exp(2.0), 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64) / 6
    assert torch.allclose(logp.grad, expected, atol=1e-15)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_no_masked_tokens_gives_zero_connected_loss(aggregation: str) -> None:
    logp = _logp(RATIOS)
    loss, stats = policy_loss(logp, _zeros(), torch.tensor(ADV, dtype=torch.float64), _zeros(),
                              ref_logprobs=_zeros(), kl_coef=0.1, aggregation=aggregation)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.all(logp.grad == 0)
    assert all(v.item() == 0.0 for v in stats.values())


def test_bool_mask_and_float32() -> None:
    logp = torch.tensor(RATIOS).log().requires_grad_(True)
    loss, _ = policy_loss(logp, torch.zeros(2, 3), torch.tensor(ADV), torch.tensor(MASK).bool())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(old_logprobs=torch.zeros(2, 4)), r"old_logprobs shape \(2, 4\) must equal logprobs shape \(2, 3\)"),
        (dict(mask=torch.ones(3, 3)), r"mask shape \(3, 3\)"),
        (dict(advantages=torch.ones(3)), r"advantages shape \(3,\)"),
        (dict(advantages=torch.ones(2, 3, 1)), r"advantages shape \(2, 3, 1\)"),
        (dict(logprobs=torch.zeros(6)), r"logprobs must be \(B, T\), got shape \(6,\)"),
        (dict(ref_logprobs=torch.zeros(2, 2), kl_coef=0.1), r"ref_logprobs shape \(2, 2\)"),
        (dict(kl_coef=0.1), r"needs ref_logprobs"),
        (dict(kl_coef=-0.1), r"kl_coef must be >= 0"),
        (dict(dual_clip=1.0), r"dual_clip must be > 1"),
        (dict(dual_clip=0.5), r"dual_clip must be > 1"),
        (dict(clip_low=1.0), r"clip_low"),
        (dict(clip_high=-0.1), r"clip_high"),
        (dict(aggregation="mean"), r"'token_mean', 'seq_mean_token_mean', 'seq_mean_token_sum_norm'"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    args = dict(logprobs=torch.zeros(2, 3), old_logprobs=torch.zeros(2, 3), advantages=torch.ones(2),
                mask=torch.ones(2, 3))
    args.update(kwargs)
    logprobs, old, adv, mask = (args.pop(k) for k in ("logprobs", "old_logprobs", "advantages", "mask"))
    with pytest.raises(ValueError, match=match):
        policy_loss(logprobs, old, adv, mask, **args)
