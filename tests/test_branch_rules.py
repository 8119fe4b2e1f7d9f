"""AttnRL's selection rules (docs/attnrl.md §3-4) on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from lit_attn.errors import UserError
from lit_attn.exploration.selection import (
    RunningMean,
    adaptive_batch_size,
    atb_branch_steps,
    choose_responses,
    early_branch_steps,
    entropy_branch_offsets,
    expansion_count,
    prompt_mean_fci,
)

# prompt [0, 10), then 7 response steps of 5 tokens each
SPANS = [(0, 10)] + [(10 + 5 * k, 15 + 5 * k) for k in range(7)]


def test_atb_takes_the_earliest_candidates_not_the_highest():
    # response steps 1..7; the top 20% (quantile 0.8 of 7 scores) are the 0.9, 0.8 and 0.7 steps
    fci = [0.0, 0.0, 0.1, 0.7, 0.2, 0.9, 0.1, 0.8]
    threshold = torch.quantile(torch.tensor(fci[1:], dtype=torch.float64), 0.8).item()
    assert 0.7 < threshold < 0.9
    # candidates ≥ threshold: step 5 (0.9) and step 7 (0.8); step 3 (0.7) is below
    assert atb_branch_steps(fci, SPANS, ratio=0.2, num_points=2) == [5, 7]
    # a wider ratio (threshold 0.5) admits step 3, earlier than 7: earliest first, not score order
    assert atb_branch_steps(fci, SPANS, ratio=0.4, num_points=2) == [3, 5]
    assert atb_branch_steps(fci, SPANS, ratio=0.4, num_points=1) == [3]


def test_atb_never_picks_the_first_response_step_and_fills_up_with_the_earliest_steps():
    fci = [0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # only step 1 scores (it cannot be chosen)
    assert atb_branch_steps(fci, SPANS) == [2, 3]  # too few candidates: the earliest eligible steps fill up
    # quantile 0 → the smallest positive score is the threshold: only positive steps are candidates
    fci = [0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.2]
    assert atb_branch_steps(fci, SPANS, ratio=0.2) == [3, 7]
    assert atb_branch_steps([0.0, 0.0], SPANS[:2]) == []
    assert atb_branch_steps([0.0, 0.0, 0.4], SPANS[:3]) == [2]  # one eligible step: one point


def test_atb_gives_two_points_on_a_realistic_five_step_answer():
    # prompt, then `a=3`, three arithmetic steps, `answer 8`: FCI scores 0 on the first step
    # (never a target) and on the last (nothing comes after it), so one step is the lone
    # candidate at the 0.8-quantile; the earliest remaining step fills up the second point.
    spans = [(0, 30), (30, 35), (35, 52), (52, 71), (71, 90), (90, 99)]
    fci = [0.0, 0.0, 0.21, 0.47, 0.18, 0.0]
    assert atb_branch_steps(fci, spans) == [2, 3]


def test_atb_spacing_counts_from_the_sequence_start_and_from_step_end_to_step_start():
    # absolute spans: step k (1..7) is [10 + 5(k-1), 15 + 5(k-1)); steps 2, 4, 5 are candidates
    fci = [0.0, 0.0, 0.9, 0.0, 0.9, 0.9, 0.0, 0.0]
    # step 2 starts at 15 >= 10; step 4 starts 5 after step 2 ends (20 → 25): too close;
    # step 5 starts 10 after it: chosen
    assert atb_branch_steps(fci, SPANS, ratio=0.5, num_points=2, min_token_distance=10) == [2, 5]
    # with 16: step 2 starts too early (15), step 4 qualifies, step 5 starts right at its end;
    # the earliest remaining eligible step (2) fills up, spacing aside
    assert atb_branch_steps(fci, SPANS, ratio=0.5, num_points=2, min_token_distance=16) == [2, 4]
    with pytest.raises(UserError, match="one score per span"):
        atb_branch_steps([0.1, 0.2], SPANS)


def test_early_steps_ablation():
    assert early_branch_steps(SPANS, num_points=2) == [2, 3]
    assert early_branch_steps(SPANS[:3], num_points=2) == [2]
    assert early_branch_steps(SPANS, num_points=2, min_token_distance=10) == [2, 5]


def test_entropy_offsets_are_the_highest_entropy_tokens_but_the_last_in_position_order():
    entropy = [9.0, 0.1, 2.0, 0.3, 3.0, 2.0]
    assert entropy_branch_offsets(entropy, num_points=2) == [0, 4]  # offset 0 may be chosen
    assert entropy_branch_offsets(entropy, num_points=1) == [0]
    assert entropy_branch_offsets([0.1, 0.2, 5.0], num_points=1) == [1]  # the last token never is
    assert entropy_branch_offsets([1.0], num_points=2) == []


def test_expansion_counts_match_the_paper_table():
    # ceil(exp(-z)·G), as the authors' code: one more than rounding at 1, 2 and 4 correct of 6
    assert [expansion_count(c, 6) for c in range(7)] == [6, 6, 5, 4, 4, 3, 3]
    assert expansion_count(0, 8) == 8
    assert expansion_count(4, 8) == math.ceil(math.exp(-0.5) * 8)  # 4.85 → 5
    assert [expansion_count(0, g) for g in range(1, 65)] == list(range(1, 65))  # an exact integer stays itself
    with pytest.raises(UserError):
        expansion_count(7, 6)


def test_choose_responses_incorrect_first_when_mostly_correct():
    g = torch.Generator().manual_seed(0)
    correct = [True, False, True, True, False, True]  # z = 4/6 ≥ 0.5: both incorrect first
    for _ in range(20):
        picked = choose_responses(correct, 3, g)
        assert len(picked) == 3 and {1, 4} <= set(picked)
    picked = choose_responses(correct, 1, g)
    assert len(picked) == 1 and picked[0] in (1, 4)


def test_choose_responses_correct_first_when_mostly_wrong_and_all_when_all_wrong():
    g = torch.Generator().manual_seed(0)
    correct = [False, True, False, False, False, False]  # z = 1/6 < 0.5: the correct one first
    seen = set()
    for _ in range(30):
        picked = choose_responses(correct, 2, g)
        assert 1 in picked and len(picked) == 2
        seen.update(picked)
    assert len(seen) > 2  # the incorrect fill-up is random
    assert choose_responses([False] * 6, expansion_count(0, 6), g) == list(range(6))


def test_choose_responses_is_driven_by_the_generator_only():
    correct = [True, True, True, True, False, False]
    a = [choose_responses(correct, 4, torch.Generator().manual_seed(3)) for _ in range(3)]
    state = torch.random.get_rng_state()
    b = [choose_responses(correct, 4, torch.Generator().manual_seed(3)) for _ in range(3)]
    assert a == b
    assert torch.equal(state, torch.random.get_rng_state())


def test_running_mean_and_prompt_mean_fci():
    mean = RunningMean()
    assert mean.value == 0.0
    mean.update([1.0, 3.0])
    mean.update([5.0])
    assert mean.value == pytest.approx(3.0) and mean.count == 3
    # (1/G) Σ_i mean over response steps (k ≥ 1) of y_i
    ys = [torch.tensor([9.0, 0.0, 2.0, 4.0]), torch.tensor([9.0, 1.0, 1.0, 1.0])]
    assert prompt_mean_fci(ys) == pytest.approx((2.0 + 1.0) / 2)


def test_adaptive_batch_size():
    # B_m = ceil((1-λ)·floor(B·B'/B'') + λ·B), B = the recurrence's own last value
    assert adaptive_batch_size(16, 96, 96, lam=0.9) == 16
    assert adaptive_batch_size(16, 96, 48, lam=0.9) == 18  # 0.1·32 + 14.4 = 17.6
    assert adaptive_batch_size(16, 96, 192, lam=0.9) == 16  # 0.1·8 + 14.4 = 15.2 (rounding gave 15)
    assert adaptive_batch_size(16, 480, 270, lam=0.9) == 18  # floor(28.44) = 28: 2.8 + 14.4 = 17.2
    assert adaptive_batch_size(16, 96, 0, lam=0.0) == 16 * 96  # B'' = 0 counts as 1
    assert adaptive_batch_size(1, 1, 1000, lam=0.0) == 1
    # 0.1·1 + 0.9·21 is 19.000000000000004 in floats: the ceil of an exact 19 stays 19
    assert adaptive_batch_size(21, 1, 21, lam=0.9) == 19
    with pytest.raises(UserError, match="lambda"):
        adaptive_batch_size(16, 96, 96, lam=1.5)
