"""What branching found: step of a branch offset, first wrong step of a built-in record."""

from __future__ import annotations

import random

from lit_attn.attention import split_steps
from lit_attn.exploration.audit import before_first_error, first_error, step_of_offset
from lit_attn.tasks import SubtotalTask
from lit_attn.tokenizer import build_char_tokenizer

TOK = build_char_tokenizer()


def test_offsets_map_to_the_step_that_holds_them():
    prompt = TOK("a=1\na?\n\n")["input_ids"]
    response = TOK("a=1\n\nb:2\n\nanswer 3", add_special_tokens=False)["input_ids"]
    spans = split_steps(prompt + response, TOK, prompt_length=len(prompt))
    starts = [a - len(prompt) for a, _ in spans[1:]]
    assert [step_of_offset(spans, len(prompt), off) for off in starts] == [0, 1, 2]
    assert step_of_offset(spans, len(prompt), starts[1] + 2) == 1  # a token inside step 1
    assert step_of_offset(spans, len(prompt), len(response)) == 2  # the end belongs to the last step
    assert before_first_error(spans, len(prompt), [starts[1], starts[2]], error_step=1) == [True, False]


def test_first_error_of_a_slipped_subtotal_response():
    task = SubtotalTask()
    record = task.example(random.Random(4))
    steps = record["solution"].split("\n\n")
    x = task.named_steps[0]
    slipped = steps[:]
    slipped[x] = slipped[x][:-1] + str((int(slipped[x][-1]) + 1) % 10)  # x written down wrong
    assert first_error(record, "\n\n".join(slipped)) == x
    assert first_error(record, record["solution"]) is None
    assert first_error({"prompt": "p", "answer": "1"}, "anything") is None  # a user's data: no step truth


def test_branch_audit_and_rescued_over_prompt_groups():
    from lit_attn.exploration.audit import branch_audit, rescued
    from lit_attn.tree import Sample
    from lit_attn.exploration.groups import PromptGroup

    record = SubtotalTask().example(random.Random(7))
    steps = record["solution"].split("\n\n")
    x = SubtotalTask().named_steps[0]
    slipped = steps[:]
    slipped[x] = slipped[x][:-1] + str((int(slipped[x][-1]) + 1) % 10)  # x written down wrong
    prompt_ids = TOK(record["prompt"])["input_ids"]

    def response(text: str, reward: float) -> Sample:
        ids = TOK(text, add_special_tokens=False)["input_ids"]
        return Sample(tuple(ids), reward, tuple(0.0 for _ in ids), 0)

    wrong, right = response("\n\n".join(slipped), 0.0), response(record["solution"], 1.0)
    spans = split_steps(list(prompt_ids) + list(wrong.tokens), TOK, prompt_length=len(prompt_ids))
    at = [spans[k][0] - len(prompt_ids) for k in (x, x + 2)]  # response steps x - 1 and x + 1: before and after the slip
    group = PromptGroup(record, list(prompt_ids), [wrong, right], [at, [at[0]]])
    assert branch_audit([group], TOK, threshold=1.0) == [True, False]  # the right response is not audited
    continuations = {(0, 0, at[0]): [response("", 0.0), response("", 1.0)], (0, 0, at[1]): [response("", 0.0)]}
    assert rescued([group], continuations, threshold=1.0) == [True]
    assert rescued([group], {(0, 0, at[1]): [response("", 0.0)]}, threshold=1.0) == [False]
    user = PromptGroup({"prompt": "p", "answer": "1"}, list(prompt_ids), [wrong], [at])
    assert branch_audit([user], TOK, threshold=1.0) == []  # no step-level truth for a user's data
