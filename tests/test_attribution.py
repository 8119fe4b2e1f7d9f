"""AttnTrace (docs/attribution.md): text_scores against a naive eager reference, the subsampling
rules, the baselines, and the one-line errors."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, MambaConfig, PreTrainedModel

from lit_attn.attribution import (
    REFERENCE_TEMPLATE,
    AttnTrace,
    AttributionResult,
    PromptTemplate,
    attention_scores,
    attribute,
    leave_one_out,
    split_document,
    text_scores,
    text_scores_batch,
)
from lit_attn.tasks import LongContextTask
from lit_attn.attribution.prompt import SPLIT_MODES, SequenceInput
from lit_attn.attribution.trace import prepare
from lit_attn.errors import UserError
from lit_attn.models import build_tiny_model
from lit_attn.tasks import FactChainTask, format_prompt
from lit_attn.tokenizer import build_char_tokenizer

ARCHITECTURES = ["qwen2", "llama", "gpt2"]
_MODELS: dict[str, PreTrainedModel] = {}
TOKENIZER = build_char_tokenizer()
CONTEXTS = ["k=7", "a=3", "q=5", "m=2", "z=9", "b=1"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny tensors: one intra-op thread (conftest restores the thread count)."""
    torch.set_num_threads(1)


def tiny(architecture: str = "qwen2") -> PreTrainedModel:
    """One tiny random model per architecture over the character vocabulary (eval, sdpa)."""
    if architecture not in _MODELS:
        model = build_tiny_model(
            architecture, vocab_size=len(TOKENIZER), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=64, max_positions=512, pad_token_id=TOKENIZER.pad_token_id,
            eos_token_id=TOKENIZER.eos_token_id, seed=5,
        )
        _MODELS[architecture] = model.eval()
    return _MODELS[architecture]


def rounds_of(tracer: AttnTrace, contexts: list[str] | str, question: str, answer: str) -> list[SequenceInput]:
    """The sequence of every round of ``tracer`` (token ids, text spans, answer start), unscored."""
    prepared = prepare(
        tracer.model, tracer.tokenizer, tracer.template, contexts, question, answer,
        split=tracer.split, max_new_tokens=tracer.max_new_tokens,
    )
    return [prepared.pieces.build(keep) for keep in tracer.draw_subsets(len(prepared.contexts))]


def naive_text_scores(
    model: PreTrainedModel, ids: torch.Tensor, spans: list[tuple[int, int]], answer_start: int, top_k: int | None
) -> torch.Tensor:
    """docs/attribution.md §2: by hand from the eager attention maps (T×T, fine for a test)."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(ids[None], output_attentions=True)
    maps = torch.stack([a[0].float() for a in out.attentions])  # (L, H, T, T)
    vector = maps[:, :, answer_start - 1 :, :].mean(dim=(0, 1, 2))
    scores = []
    for start, end in spans:
        values = vector[start:end]
        k = values.numel() if top_k is None else min(top_k, values.numel())
        scores.append(torch.topk(values, k).values.mean())
    return torch.stack(scores)


def random_case(seed: int) -> tuple[torch.Tensor, list[tuple[int, int]], int]:
    """Random ids (30-70 tokens), random non-overlapping text spans, an answer start."""
    gen = random.Random(seed)
    length = gen.randint(30, 70)
    ids = torch.tensor([gen.randrange(5, len(TOKENIZER)) for _ in range(length)])
    answer_start = gen.randint(length // 2, length - 1)
    spans, start = [], gen.randint(0, 3)
    while True:
        end = start + gen.randint(1, 9)
        if end > answer_start - 1:
            break
        spans.append((start, end))
        start = end + gen.randint(0, 2)
    return ids, spans, answer_start


# --------------------------------------------------------------------------- text_scores (§2)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("seed,top_k", [(0, 5), (1, 1), (2, None), (3, 3)])
def test_text_scores_match_naive_eager(architecture: str, seed: int, top_k: int | None) -> None:
    model = tiny(architecture)
    ids, spans, answer_start = random_case(seed)
    got = text_scores(model, ids, spans, answer_start, top_k=top_k)
    want = naive_text_scores(model, ids, spans, answer_start, top_k)
    assert got.dtype == torch.float32 and got.shape == (len(spans),)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_text_scores_small_chunks_equal_one_chunk() -> None:
    model = tiny("qwen2")
    ids, spans, answer_start = random_case(7)
    whole = text_scores(model, ids, spans, answer_start)
    chunked = text_scores(model, ids.tolist(), spans, answer_start, chunk_elements=ids.numel() * 2)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_text_scores_batch_left_padded_equals_unbatched(architecture: str) -> None:
    model = tiny(architecture)
    cases = [random_case(seed) for seed in (10, 11, 12)]
    width = max(ids.numel() for ids, _, _ in cases)
    batch = torch.zeros(len(cases), width, dtype=torch.long)
    mask = torch.zeros(len(cases), width, dtype=torch.long)
    for row, (ids, _, _) in enumerate(cases):
        batch[row, width - ids.numel() :] = ids
        mask[row, width - ids.numel() :] = 1
    got = text_scores_batch(model, batch, mask, [c[1] for c in cases], [c[2] for c in cases])
    for row, (ids, spans, answer_start) in enumerate(cases):
        torch.testing.assert_close(got[row], text_scores(model, ids, spans, answer_start), atol=1e-5, rtol=0)


def test_text_scores_leave_model_state_alone() -> None:
    model = tiny("llama")
    model.train()
    ids, spans, answer_start = random_case(4)
    try:
        text_scores(model, ids, spans, answer_start)
        assert model.training and model.config._attn_implementation == "sdpa"
    finally:
        model.eval()


def test_text_scores_bad_spans_are_one_line_errors() -> None:
    model = tiny()
    ids = torch.arange(5, 25)
    with pytest.raises(UserError, match=r"text span 0 is \(3, 3\)"):
        text_scores(model, ids, [(3, 3)], 10)
    with pytest.raises(UserError, match=r"inside the prompt of 10 tokens"):
        text_scores(model, ids, [(0, 4), (8, 12)], 10)
    with pytest.raises(UserError, match="answer_start is 0"):
        text_scores(model, ids, [(0, 4)], 0)
    with pytest.raises(UserError, match="no context text spans"):
        text_scores(model, ids, [], 10)
    with pytest.raises(UserError, match="top_k must be >= 1"):
        text_scores(model, ids, [(0, 4)], 10, top_k=0)
    with pytest.raises(UserError, match="1-D sequence"):
        text_scores(model, ids[None], [(0, 4)], 10)


# --------------------------------------------------------------------------- prompt (§1)


def test_prompt_pieces_equal_the_builtin_prompt_and_spans_are_exact() -> None:
    tracer = AttnTrace(tiny(), TOKENIZER, num_subsamples=1)
    [sequence] = rounds_of(tracer, CONTEXTS, "a+m-k", answer="a=3")
    prompt = format_prompt(CONTEXTS, "a+m-k")
    assert sequence.input_ids[: sequence.answer_start] == TOKENIZER(prompt)["input_ids"]
    assert TOKENIZER.decode(sequence.input_ids[sequence.answer_start :]) == "a=3"
    for (start, end), text in zip(sequence.text_spans, CONTEXTS):
        assert TOKENIZER.decode(sequence.input_ids[start:end]) == text


def test_reference_template_and_document_splitting() -> None:
    tracer = AttnTrace(tiny(), TOKENIZER, template="reference", num_subsamples=1)
    [sequence] = rounds_of(tracer, CONTEXTS[:2], "what is a", answer="3")
    text = TOKENIZER.decode(sequence.input_ids)
    assert text.startswith(REFERENCE_TEMPLATE.before) and "Query: what is a" in text and text.endswith("Answer:3")
    words = " ".join(f"w{i}" for i in range(250))
    assert [len(t.split()) for t in split_document(words)] == [100, 100, 50]
    assert split_document("one.\n\ntwo\n \nthree", "paragraph") == ["one.", "\n\ntwo", "\n \nthree"]
    assert split_document("A b. C d! E?  F", "sentence") == ["A b.", " C d!", " E?", "  F"]
    result = AttnTrace(tiny(), TOKENIZER, num_subsamples=1, split="sentence").attribute("a=1. b=2.", "a", "1")
    assert result.contexts == ["a=1.", " b=2."]
    with pytest.raises(UserError, match="must contain \\{question\\}"):
        PromptTemplate(after="no question here")
    with pytest.raises(UserError, match="unknown split mode 'words'"):
        split_document("a b", "words")
    with pytest.raises(UserError, match="the document is empty"):
        split_document(" \n\n ", "paragraph")
    with pytest.raises(UserError, match="unknown template 'chat'"):
        AttnTrace(tiny(), TOKENIZER, template="chat")


DOCUMENT = (
    "  The river rose.  It rained for three days!\n"
    "Nobody left the village?\n\n\n"
    "Second   paragraph:  runs of  spaces.\n \n"
    "Third paragraph, last line. \n"
)


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_split_document_keeps_the_document_verbatim_in_the_prompt(mode: str) -> None:
    pieces = split_document(DOCUMENT, mode, words=4)
    assert "".join(pieces) == DOCUMENT and len(pieces) > 2 and all(p.strip() for p in pieces)
    tracer = AttnTrace(tiny(), TOKENIZER, num_subsamples=1, split=mode)
    [sequence] = rounds_of(tracer, DOCUMENT, "a", "1")
    prompt = TOKENIZER.decode(sequence.input_ids[: sequence.answer_start])
    assert prompt == DOCUMENT + "\na?\n\n"  # the built-in template around the verbatim document
    texts = split_document(DOCUMENT, mode)
    assert [TOKENIZER.decode(sequence.input_ids[s:e]) for s, e in sequence.text_spans] == texts
    # subsampled rounds: the kept pieces, verbatim and back to back
    for keep in ([0], [len(texts) - 1], list(range(0, len(texts), 2))):
        partial = prepare(tracer.model, TOKENIZER, tracer.template, DOCUMENT, "a", "1", split=mode).pieces.build(keep)
        assert TOKENIZER.decode(partial.input_ids[: partial.answer_start]) == "".join(texts[i] for i in keep) + "\na?\n\n"


# --------------------------------------------------------------------------- subsampling (§3)


def test_each_round_draws_exactly_m_texts_in_order_and_others_are_absent() -> None:
    contexts = [f"{chr(97 + i)}={i % 10}" for i in range(12)]
    tracer = AttnTrace(tiny(), TOKENIZER, subsample_ratio=0.4, num_subsamples=20, seed=3)
    rounds = rounds_of(tracer, contexts, "a+b", answer="a=0")
    assert len(rounds) == 20
    for sequence in rounds:
        assert len(sequence.texts) == 4  # max(1, floor(0.4 * 12))
        assert sequence.texts == sorted(sequence.texts)
        decoded = TOKENIZER.decode(sequence.input_ids[: sequence.answer_start])
        assert decoded == format_prompt([contexts[i] for i in sequence.texts], "a+b")
        kept_lines = decoded.split("\n")
        for i, text in enumerate(contexts):
            assert (text in kept_lines) == (i in sequence.texts)
        assert [TOKENIZER.decode(sequence.input_ids[s:e]) for s, e in sequence.text_spans] == [
            contexts[i] for i in sequence.texts
        ]
    assert len({tuple(r.texts) for r in rounds}) > 1


def test_minimum_one_text_per_round() -> None:
    subsets = AttnTrace(tiny(), TOKENIZER, subsample_ratio=0.01, num_subsamples=5).draw_subsets(12)
    assert len(subsets) == 5 and all(len(s) == 1 for s in subsets)


def test_final_score_is_the_mean_over_rounds_that_drew_the_text_and_never_drawn_is_zero() -> None:
    model = tiny()
    contexts = [f"{chr(97 + i)}={i}" for i in range(10)]
    tracer = AttnTrace(model, TOKENIZER, subsample_ratio=0.2, num_subsamples=3, seed=1, batch_size=2)
    result = tracer.attribute(contexts, "a+b", answer="a=0")
    rounds = rounds_of(tracer, contexts, "a+b", answer="a=0")
    per_text: dict[int, list[float]] = {}
    for sequence in rounds:
        scores = text_scores(model, torch.tensor(sequence.input_ids), sequence.text_spans, sequence.answer_start)
        for i, score in zip(sequence.texts, scores.tolist()):
            per_text.setdefault(i, []).append(score)
    drawn = set(per_text)
    assert len(drawn) < len(contexts)  # 3 rounds of 2 texts cannot cover 10 texts
    for i in range(len(contexts)):
        want = sum(per_text[i]) / len(per_text[i]) if i in drawn else 0.0
        assert result.scores[i] == pytest.approx(want, abs=1e-6)
    assert all(result.scores[i] == 0.0 for i in set(range(10)) - drawn)
    assert all(result.scores[i] > 0.0 for i in drawn)


def test_seeded_same_seed_same_scores_other_seed_other_draws_global_rng_untouched() -> None:
    model = tiny()
    contexts = [f"{chr(97 + i)}={i}" for i in range(10)]
    torch_state, py_state = torch.random.get_rng_state(), random.getstate()
    first = AttnTrace(model, TOKENIZER, num_subsamples=4, seed=0).attribute(contexts, "a+b", "a=0")
    again = AttnTrace(model, TOKENIZER, num_subsamples=4, seed=0).attribute(contexts, "a+b", "a=0")
    assert torch.equal(torch.random.get_rng_state(), torch_state) and random.getstate() == py_state
    assert first.scores == again.scores
    other = AttnTrace(model, TOKENIZER, num_subsamples=4, seed=1)
    assert other.draw_subsets(10) != AttnTrace(model, TOKENIZER, num_subsamples=4, seed=0).draw_subsets(10)
    assert other.attribute(contexts, "a+b", "a=0").scores != first.scores


@pytest.mark.parametrize("ratio,rounds", [(1.0, 30), (0.4, 1)])
def test_no_subsampling_is_one_pass_over_all_texts(ratio: float, rounds: int) -> None:
    model = tiny("gpt2")
    tracer = AttnTrace(model, TOKENIZER, subsample_ratio=ratio, num_subsamples=rounds)
    assert tracer.draw_subsets(len(CONTEXTS)) == [list(range(len(CONTEXTS)))]
    result = tracer.attribute(CONTEXTS, "a+m-k", answer="a=3\n\nanswer 8")
    [sequence] = rounds_of(tracer, CONTEXTS, "a+m-k", answer="a=3\n\nanswer 8")
    want = text_scores(model, torch.tensor(sequence.input_ids), sequence.text_spans, sequence.answer_start)
    assert result.scores == pytest.approx(want.tolist(), abs=1e-7)
    plain = attention_scores(model, TOKENIZER, CONTEXTS, "a+m-k", "a=3\n\nanswer 8")
    want_mean = text_scores(
        model, torch.tensor(sequence.input_ids), sequence.text_spans, sequence.answer_start, top_k=None
    )
    assert plain.method == "attention" and plain.scores == pytest.approx(want_mean.tolist(), abs=1e-7)


def test_generated_answer_is_greedy_and_result_ranks() -> None:
    model = tiny()
    result = AttnTrace(model, TOKENIZER, num_subsamples=2, max_new_tokens=6).attribute(CONTEXTS, "a+m-k")
    prompt = TOKENIZER(format_prompt(CONTEXTS, "a+m-k"), return_tensors="pt")
    prompt = {"input_ids": prompt["input_ids"], "attention_mask": prompt["attention_mask"]}  # 4.57 refuses token_type_ids
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=TOKENIZER.eos_token_id)
    assert result.answer == TOKENIZER.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert result.ranking == sorted(range(len(CONTEXTS)), key=lambda i: (-result.scores[i], i))
    assert [i for i, _, _ in result.top(2)] == result.ranking[:2]
    table = result.to_markdown(relevant=[result.ranking[0]])
    assert table.splitlines()[2].endswith("✓ |") and len(table.splitlines()) == 2 + len(CONTEXTS)
    assert result.to_rich_table().row_count == len(CONTEXTS)


# --------------------------------------------------------------------------- leave-one-out (§5)


def test_leave_one_out_equals_directly_computed_logprobs() -> None:
    model = tiny("llama")
    contexts, question, answer = CONTEXTS[:3], "a+k", "a=3"
    result = leave_one_out(model, TOKENIZER, contexts, question, answer, batch_size=2)

    def logp(texts: list[str]) -> float:
        prompt = TOKENIZER(format_prompt(texts, question))["input_ids"]
        ids = torch.tensor([prompt + TOKENIZER(answer)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0].double().log_softmax(-1)
        return sum(float(logits[t - 1, ids[0, t]]) for t in range(len(prompt), ids.shape[1]))

    full = logp(contexts)
    want = [full - logp([t for j, t in enumerate(contexts) if j != i]) for i in range(3)]
    assert result.method == "leave_one_out" and result.params["passes"] == 4
    assert result.scores == pytest.approx(want, abs=1e-4)


def test_attribute_dispatches_and_rejects_unknown_method_or_option() -> None:
    model = tiny()
    loo = attribute(model, TOKENIZER, CONTEXTS, "a+m", "a=3", method="leave_one_out")
    assert isinstance(loo, AttributionResult) and loo.method == "leave_one_out"
    trace = attribute(model, TOKENIZER, CONTEXTS, "a+m", "a=3", num_subsamples=3)
    assert trace.method == "attntrace" and trace.params["rounds"] == 3
    with pytest.raises(UserError, match="unknown attribution method 'shapley'"):
        attribute(model, TOKENIZER, CONTEXTS, "a+m", "a=3", method="shapley")
    with pytest.raises(UserError, match="'leave_one_out' does not take num_subsamples"):
        attribute(model, TOKENIZER, CONTEXTS, "a+m", "a=3", method="leave_one_out", num_subsamples=3)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_one_line_user_errors() -> None:
    model = tiny()
    tracer = AttnTrace(model, TOKENIZER)
    with pytest.raises(UserError, match="context list is empty") as err:
        tracer.attribute([], "a", "1")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="context text 1 is empty, so it would be missing from the prompt"):
        tracer.attribute(["a=1", ""], "a", "1")
    with pytest.raises(UserError, match=r"prompt is \d+ tokens plus 3 answer tokens = \d+, longer than the model's context of 512"):
        tracer.attribute(["a=1" * 60] * 5, "a", "a+1")
    with pytest.raises(UserError, match="longer than the model's context of 512"):
        leave_one_out(model, TOKENIZER, ["a=1" * 60] * 5, "a")
    for bad in (dict(subsample_ratio=0.0), dict(num_subsamples=0), dict(top_k_tokens=0), dict(batch_size=0)):
        with pytest.raises(UserError, match="must be"):
            AttnTrace(model, TOKENIZER, **bad)


def test_model_without_attention_capture_names_its_architecture() -> None:
    torch.manual_seed(0)
    mamba = AutoModelForCausalLM.from_config(
        MambaConfig(vocab_size=len(TOKENIZER), hidden_size=16, num_hidden_layers=1, state_size=4)
    ).eval()
    with pytest.raises(UserError, match=r"MambaForCausalLM \(mamba\) does not route its attention"):
        AttnTrace(mamba, TOKENIZER, num_subsamples=1).attribute(["a=1", "b=2"], "a", "1")


# --------------------------------------------------------------------------- long-context data


def test_long_context_examples_are_seeded_and_carry_ground_truth() -> None:
    task = LongContextTask(num_texts=60)
    first, again = task.examples(3, seed=4), task.examples(3, seed=4)
    assert first == again and first != task.examples(3, seed=5)
    for example in first:
        contexts = example["contexts"]
        assert len(contexts) == 60 and len(set(contexts)) == 60
        needed = [contexts[i] for i in example["relevant"]]
        assert len(needed) == FactChainTask().num_ops + 1
        assert all("=" in text and len(text) == 3 for text in needed)
        for name_value in needed:  # the reference solution copies every needed fact
            assert f"({name_value})" in example["answer"] or example["answer"].startswith(name_value)
        assert example["injected"] not in example["relevant"]
        assert all(i not in example["relevant"] for i in example["paraphrases"])
        for i in example["paraphrases"]:
            assert "=" not in contexts[i]
