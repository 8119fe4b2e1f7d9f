"""The warm-start curriculum and the lookup supervision that taught the shipped model to look up."""

from __future__ import annotations

import math

import pytest
import torch

from lit_attn.data import WarmStartDataModule
from lit_attn.errors import UserError
from lit_attn.lookup_loss import fact_span, lookup_attention_loss, lookup_targets
from lit_attn.tasks import MAX_FACTS, MAX_OPS, verify
from lit_attn.tasks.warm_start import FIRST_FACTS, HELD_OUT_SETS, WarmStartMix, drop_needed_facts, held_out_set
from lit_attn.tokenizer import FACT_KEYS, build_char_tokenizer

TOK = build_char_tokenizer()
KEYS = set(TOK.convert_tokens_to_ids(list(FACT_KEYS)))


def test_fact_keys_are_one_token_and_text_round_trips():
    text = "x=2\nab=3\nA=4\n1=5\nq is 2\nx+q?\n\n(x=2)"
    ids = TOK(text)["input_ids"]
    tokens = TOK.convert_ids_to_tokens(ids)
    assert tokens[:3] == ["x=", "2", "\n"]
    assert "b=" in tokens and "A" in tokens and "1" in tokens  # only lower-case letter + "=" merge
    assert TOK.decode(ids) == text


def test_batches_are_a_pure_function_of_seed_and_index():
    mix = WarmStartMix()
    assert mix.batch(0, 900, 4) == mix.batch(0, 900, 4)
    assert mix.batch(0, 900, 4) != mix.batch(1, 900, 4)


def test_curriculum_starts_with_small_recall_drills_then_grows_to_every_kind():
    mix = WarmStartMix(recall_steps=20, ramp_steps=30)
    early = [mix.batch(0, i, 4) for i in range(20)]
    for batch in early:
        for ex in batch:
            assert "," in ex["question"] and len(ex["contexts"]) <= FIRST_FACTS
    late = [ex for i in range(50, 250) for ex in mix.batch(0, i, 2)]
    kinds = {"drill" if "," in ex["question"] else "long" if any(" " in c for c in ex["contexts"]) else "chain" for ex in late}
    assert kinds == {"drill", "long", "chain"}
    facts = [sum("=" in c for c in ex["contexts"]) for ex in late]
    assert max(facts) == MAX_FACTS
    ops = {ex["question"].count("+") + ex["question"].count("-") for ex in late if "," not in ex["question"]}
    assert ops == set(range(1, MAX_OPS + 1))
    for ex in late:
        if "," not in ex["question"]:
            assert verify(ex["solution"], ex["answer"]) == 1.0


def test_long_context_examples_fit_the_model_positions():
    mix = WarmStartMix()
    longest = 0
    for i in range(3000, 3400):
        batch = mix.batch(0, i, 1)
        longest = max(longest, len(TOK(batch[0]["prompt"] + batch[0]["solution"])["input_ids"]) + 1)
    assert 500 < longest <= 1024


def test_lookup_targets_point_at_the_value_the_solution_copies():
    ex = held_out_set("3op_3d", 1, seed=0)[0]
    prompt = TOK(ex["prompt"])["input_ids"]
    ids = prompt + TOK(ex["solution"], add_special_tokens=False)["input_ids"]
    pairs = lookup_targets(ids, len(prompt), KEYS)
    assert len(pairs) == 4  # the first fact, then one per operation
    for query, source in pairs:
        assert query >= len(prompt) and source < len(prompt)
        assert ids[source - 1] == ids[query]  # the same key in the context ...
        assert ids[source] == ids[query + 1]  # ... whose value the solution writes next
        start, end = fact_span(ids, source, {TOK.convert_tokens_to_ids("\n")})
        assert TOK.decode(ids[start:end]) in ex["contexts"]


def test_lookup_targets_skip_keys_that_are_absent_or_repeated():
    prompt = TOK("a=1\na=2\nb=3\n")["input_ids"]
    ids = prompt + TOK("(a=1)(b=3)(c=4)")["input_ids"]
    pairs = lookup_targets(ids, len(prompt), KEYS)
    assert [(TOK.decode([ids[q]]), TOK.decode([ids[s]])) for q, s in pairs] == [("b=", "3")]


def test_lookup_attention_loss_by_hand():
    attention = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.1, 0.1, 0.7]])
    got = lookup_attention_loss(attention, torch.tensor([1, 3]))
    assert math.isclose(got.item(), -(math.log(0.25) + math.log(0.7)) / 2, rel_tol=1e-6)
    assert lookup_attention_loss(attention, torch.tensor([], dtype=torch.long)).item() == 0.0
    # several heads: the mean over lookups and heads
    heads = torch.stack([attention, attention.flip(-1)], dim=1)  # (L=2, H=2, T=4)
    want = -(math.log(0.25) + math.log(0.7) + math.log(0.25) + math.log(0.1)) / 4
    assert math.isclose(lookup_attention_loss(heads, torch.tensor([1, 3])).item(), want, rel_tol=1e-6)


def test_held_out_sets_have_the_named_shape():
    for name, (ops, distractors, texts) in HELD_OUT_SETS.items():
        ex = held_out_set(name, 2, seed=0)[0]
        assert len(ex["relevant"]) == ops + 1
        assert len(ex["contexts"]) == (texts or ops + 1 + distractors)
    assert held_out_set("1op_8d", 3, seed=0) == held_out_set("1op_8d", 3, seed=0)


def test_bad_settings_fail_with_one_line():
    with pytest.raises(UserError, match="unknown set"):
        WarmStartDataModule(val_sets=["nope"])
    with pytest.raises(UserError, match="drill \\+ long_context <= 1"):
        WarmStartDataModule(drill=0.8, long_context=0.5)


def test_context_hygiene_loss_counts_only_kept_rows_and_context_columns():
    from lit_attn.lookup_loss import context_hygiene_loss

    # B=1, H=1, R=2 rows, T=4 positions; the context is positions 0-1.
    attention = torch.tensor([[[[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.5, 0.5]]]])
    keep = torch.tensor([[True, False]])
    got = context_hygiene_loss(attention, keep, torch.tensor([2]))
    assert math.isclose(got.item(), -math.log(1 - 0.75), rel_tol=1e-6)
    both = context_hygiene_loss(attention, torch.tensor([[True, True]]), torch.tensor([2]))
    assert math.isclose(both.item(), -math.log(1 - 0.75) / 2, rel_tol=1e-5)
    assert context_hygiene_loss(attention, torch.tensor([[False, False]]), torch.tensor([2])).item() == 0.0


def test_absent_facts_leave_the_context_and_keep_the_solution():
    import random

    from lit_attn.tasks import FactChainTask

    rng = random.Random(0)
    for _ in range(50):
        rec = FactChainTask(num_ops=3, num_distractors=4).example(rng)
        gapped = drop_needed_facts(rec, rng)
        assert gapped["absent"], "at least one needed fact goes"
        assert gapped["solution"] == rec["solution"] and gapped["question"] == rec["question"]
        for name in gapped["absent"]:
            assert f"{name}=" not in gapped["prompt"] and f"{name}=" in gapped["solution"]
        assert len(gapped["contexts"]) == len(rec["contexts"]) - len(gapped["absent"])
        needed = {rec["contexts"][i].split("=")[0] for i in rec["relevant"]}
        assert {gapped["contexts"][i].split("=")[0] for i in gapped["relevant"]} == needed - set(gapped["absent"])


def test_absent_facts_start_at_absent_from_and_leave_other_batches_alone():
    plain = WarmStartMix(recall_steps=0, ramp_steps=0)
    gapped = WarmStartMix(recall_steps=0, ramp_steps=0, absent=0.5, absent_from=40)
    assert all(plain.batch(0, i, 4) == gapped.batch(0, i, 4) for i in range(40))
    late = [(plain.batch(0, i, 4), gapped.batch(0, i, 4)) for i in range(40, 120)]
    changed = [g for p, g in late for a, g in zip(p, g) if a != g]
    assert changed and all(g.get("absent") for g in changed)
    assert all("," not in g["question"] and not any(" " in c for c in g["contexts"]) for g in changed)  # chains only
    with pytest.raises(UserError, match="absent must be in"):
        WarmStartDataModule(absent=1.5)


def test_a_solution_is_learned_up_to_the_key_of_its_first_absent_fact():
    from lit_attn.sft import SFTModule

    module = SFTModule(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32, lookup_supervision=1.0, lookup_layer=0)
    whole = {"prompt": "a=3\nm=2\nk=7\na+m-k?\n\n", "solution": "a=3\n\na+m:3+(m=2)=5\n\na+m-k:5-(k=7)=8\n\nanswer 8"}
    gapped = {**whole, "prompt": "a=3\nk=7\na+m-k?\n\n", "absent": ["m"]}
    ids, _, labels, lookups = module.encode_lookups([whole, gapped])
    learned = [TOK.decode([t for t in row if t != -100]) for row in labels.tolist()]
    assert learned[0] == whole["solution"] + TOK.eos_token
    assert learned[1] == "a=3\n\na+m:3+(m="  # nothing after the key of the missing fact
    rows = lookups[0].tolist()
    assert rows.count(0) == 3 and rows.count(1) == 2  # a= and k= still have a fact to read; m= has none


def test_lookup_targets_follow_names_the_solution_defines():
    from lit_attn.tasks import SubtotalTask

    ex = SubtotalTask().example(__import__("random").Random(0))
    prompt = TOK(ex["prompt"])["input_ids"]
    ids = prompt + TOK(ex["solution"], add_special_tokens=False)["input_ids"]
    delimiter = TOK.convert_tokens_to_ids("\n\n")
    pairs = lookup_targets(ids, len(prompt), KEYS)
    named = [(q, s) for q, s in pairs if TOK.decode([ids[q]]) in ("x=", "y=")]
    assert len(named) == len(SubtotalTask().pattern)  # every read of a subtotal
    # with the delimiter known, writing a subtotal down (x=7 after …=7) looks up the result before it
    written = sorted(set(lookup_targets(ids, len(prompt), KEYS, delimiter)) - set(pairs))
    assert len(written) == 2
    for query, source in written:
        assert TOK.decode([ids[query]]) in ("x=", "y=") and ids[query - 1] == delimiter
        assert ids[source] == ids[query + 1] and TOK.decode([ids[source + 1]]) == "\n\n"
    from lit_attn.tasks import FactChainTask

    chain = FactChainTask(num_ops=3).example(__import__("random").Random(1))
    chain_ids = TOK(chain["prompt"])["input_ids"] + TOK(chain["solution"], add_special_tokens=False)["input_ids"]
    assert lookup_targets(chain_ids, len(TOK(chain["prompt"])["input_ids"]), KEYS, delimiter) == lookup_targets(
        chain_ids, len(TOK(chain["prompt"])["input_ids"]), KEYS
    )  # nothing changes for the chain mode
    for query, source in named:
        assert source > len(prompt)  # the value the solution wrote where it named the subtotal
        assert TOK.decode([ids[source - 1]]) == TOK.decode([ids[query]])
        assert ids[source] == ids[query + 1]  # ... which is the value the read copies


def test_subtotal_batches_join_from_their_step_and_leave_other_batches_alone():
    plain = WarmStartMix(recall_steps=0, ramp_steps=0)
    mixed = WarmStartMix(recall_steps=0, ramp_steps=0, subtotal=0.5, subtotal_from=10, slip=0.5)
    assert [plain.batch(0, i, 2) for i in range(10)] == [mixed.batch(0, i, 2) for i in range(10)]
    later = [mixed.batch(0, i, 4) for i in range(10, 60)]
    subtotal = [b for b in later if b[0].get("mode") == "subtotal"]
    assert 10 < len(subtotal) < 40
    others = [b for i, b in zip(range(10, 60), later) if b[0].get("mode") != "subtotal"]
    assert all(b == plain.batch(0, i, 4) for i, b in zip(range(10, 60), later) if b in others)
    records = [r for b in subtotal for r in b]
    slipped = sum(bool(r.get("slipped")) for r in records) / len(records)
    assert 0.55 < slipped < 0.95  # each of two subtotals slips with p = 0.5: 1 - 0.25 of solutions
    assert all(verify(r["solution"], r["answer"]) == float(not r.get("slipped")) for r in records)
    with pytest.raises(ValueError, match="slip"):
        WarmStartMix(slip=1.5)


def test_lookup_loss_from_log_rows_keeps_its_gradient_where_attention_is_tiny():
    scores = torch.tensor([[0.0, -40.0, 5.0]], requires_grad=True)  # the source (key 1) starts far below 1e-9
    sources = torch.tensor([1])
    from_probs = lookup_attention_loss(torch.softmax(scores, -1), sources)
    from_probs.backward()
    assert scores.grad.abs().max().item() == 0.0  # the clamp: no signal, the lookup never forms
    scores.grad = None
    from_logs = lookup_attention_loss(torch.log_softmax(scores, -1), sources, log=True)
    from_logs.backward()
    assert from_logs.item() == pytest.approx(45.0, abs=0.01)
    assert scores.grad[0, 1].item() == pytest.approx(-1.0, abs=1e-6)  # pulls the source up at full strength
