"""Tests for lit_attn.rewards: built-in reward functions, RewardSet and import strings."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import torch

from lit_attn.errors import UserError
from lit_attn.rewards import RewardSet, math_reward, resolve_reward, task_reward


def test_task_reward() -> None:
    out = task_reward(["p", "p", "p"], ["x\n\nanswer 8", "answer 7", "no answer"], answer=["8", "8", "8"])
    assert out == [1.0, 0.0, 0.0]


def test_math_reward_equivalent_forms() -> None:
    completion = "The answer is $\\frac{1}{2}$"
    assert math_reward(["p"] * 2, [completion] * 2, answer=["0.5", "1/2"]) == [1.0, 1.0]


def test_math_reward_plain_integer_and_wrong_answer() -> None:
    out = math_reward(["p", "p"], ["So it is $42$.", "I think $41$."], answer=["42", 42])
    assert out == [1.0, 0.0]


def test_math_reward_unparseable_gold_is_none() -> None:
    assert math_reward(["p"], ["$1$"], answer=[""]) == [None]


def test_math_reward_off_main_thread() -> None:
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["out"] = math_reward(["p", "p"], ["The answer is $\\frac{1}{2}$", "$3$"], answer=["0.5", "1/2"])
        except BaseException as e:  # noqa: BLE001 - surfaced by the assertion below
            result["err"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert "err" not in result, result.get("err")
    assert result["out"] == [1.0, 0.0]


def const(value: float | None) -> Any:
    def fn(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return [value] * len(completions)

    return fn


def test_reward_set_weights_and_none() -> None:
    def first(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return [1.0, None, None]

    def second(prompts: list[str], completions: list[str], flag: list[bool], **_: Any) -> list[float | None]:
        return [0.5 if f else None for f in flag]

    rs = RewardSet([first, second], weights=[2.0, 4.0])
    total = rs(["p"] * 3, ["a", "b", "c"], flag=[True, True, False])
    assert total.dtype == torch.float32 and total.shape == (3,)
    assert total[0].item() == pytest.approx(2.0 + 2.0)
    assert total[1].item() == pytest.approx(2.0)  # None from `first` counts as 0
    assert math.isnan(total[2].item())  # every function returned None
    assert rs.last_stats == {"rewards/first/mean": 1.0, "rewards/second/mean": 0.5}


def test_reward_set_default_weights_and_duplicate_names() -> None:
    rs = RewardSet([task_reward, "lit_attn.rewards:task_reward"])
    assert rs.names == ["task_reward", "task_reward_2"]
    total = rs(["p", "p"], ["answer 3", "answer 4"], answer=["3", "5"])
    assert total.tolist() == [2.0, 0.0]
    assert rs.last_stats["rewards/task_reward_2/mean"] == 0.5


def test_reward_set_all_none_stat_is_nan() -> None:
    rs = RewardSet(const(None))
    assert math.isnan(rs(["p"], ["c"])[0].item())
    assert math.isnan(rs.last_stats["rewards/fn/mean"])


def test_reward_set_weight_count_mismatch() -> None:
    with pytest.raises(UserError, match="2 reward functions but 1 weights"):
        RewardSet([const(1.0), const(0.0)], weights=[1.0])


def test_reward_set_empty() -> None:
    with pytest.raises(UserError, match="no reward functions"):
        RewardSet([])


def test_reward_set_wrong_length_names_function() -> None:
    def short(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [1.0]

    with pytest.raises(UserError, match="'short' returned 1 values for 2 completions"):
        RewardSet([short])(["p", "p"], ["a", "b"])


def test_reward_set_bad_value_names_function() -> None:
    def wordy(prompts: list[str], completions: list[str], **_: Any) -> list[Any]:
        return ["good"]

    with pytest.raises(UserError, match="'wordy' returned str"):
        RewardSet([wordy])(["p"], ["a"])


def test_resolve_reward_import_strings() -> None:
    assert resolve_reward("lit_attn.rewards.task_reward") is task_reward
    assert resolve_reward("lit_attn.rewards:math_reward") is math_reward
    assert resolve_reward("math_reward") is math_reward
    assert resolve_reward(task_reward) is task_reward
    assert resolve_reward("lit_attn.tasks:verify").__name__ == "verify"


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("no_such_pkg_xyz.mod:fn", r"cannot import reward 'no_such_pkg_xyz\.mod:fn'.*No module named"),
        ("lit_attn.rewards:nope", r"cannot import reward 'lit_attn\.rewards:nope'.*no attribute 'nope'"),
        ("lit_attn.rewards.nope", r"'lit_attn\.rewards\.nope'.*no attribute"),
        ("just_a_name", r"'just_a_name': not an import string"),
        ("lit_attn.tasks.chain:STEP_DELIMITER", r"'lit_attn\.tasks\.chain:STEP_DELIMITER' is a str, not a function"),
    ],
)
def test_resolve_reward_errors(spec: str, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern):
        resolve_reward(spec)
    with pytest.raises(UserError, match=pattern):
        RewardSet([spec])
