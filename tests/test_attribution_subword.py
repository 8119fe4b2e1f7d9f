"""Attribution with a real subword tokenizer: byte-level BPE with merges and a BOS token.

The other attribution tests use the shipped character tokenizer (no BOS, no merges). Here a
small byte-level BPE tokenizer is trained offline, in the test, on a few hundred words; its
post-processor prepends ``<bos>``. Paired with a tiny random model of the same vocabulary, it
checks that each text's token span decodes back to exactly that text, that BOS opens the
prompt once (chat template included), that a split document is read verbatim, and that
``python -m lit_attn attribute`` scores end to end.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from lit_attn.attribution import REFERENCE_TEMPLATE, AttnTrace, split_document
from lit_attn.attribution.prompt import BUILTIN_TEMPLATE, SPLIT_MODES, chat_template
from lit_attn.attribution.trace import prepare
from lit_attn.cli import main
from lit_attn.models import build_tiny_model

WORDS = (
    "river village rain rained raining bridge road stone cloud farmer market morning evening north south "
    "east west water mill wheel bread baker miller harbour boat sailor storm wind the a of and to in on at "
    "was were is are had has by with from over under after before"
).split()

CONTEXTS = [
    "The miller baked bread before the storm.",
    "  A boat was in the harbour,\nwaiting for wind.",
    "North of the bridge, the road is stone!",
    "The sailor had rained-on bread",
]
DOCUMENT = (
    "The river rose after the rain.  The mill wheel was under water!\n"
    "Was the baker at the market?\n\n"
    "In the evening, the wind came from the north.\n \n"
    "The boat  sailed south over the harbour. "
)
CHAT = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ~500 words of seeded text; ``<bos>`` prepended to every encoding."""
    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + rng.choice(".!?,")
        for _ in range(60)
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", padding_side="left"
    )
    fast.chat_template = CHAT
    return fast


TOKENIZER = train_tokenizer()


def decode(ids: list[int]) -> str:
    return TOKENIZER.decode(ids, clean_up_tokenization_spaces=False)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return build_tiny_model(
        "llama", vocab_size=len(TOKENIZER), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_positions=512, pad_token_id=TOKENIZER.pad_token_id,
        eos_token_id=TOKENIZER.eos_token_id, seed=3,
    ).eval()


def test_the_tokenizer_is_subword_with_bos() -> None:
    ids = TOKENIZER("The miller baked bread")["input_ids"]
    assert ids[0] == TOKENIZER.bos_token_id and TOKENIZER.bos_token_id not in ids[1:]
    tokens = TOKENIZER.convert_ids_to_tokens(ids[1:])
    assert len(tokens) < len("The miller baked bread") and any(len(t) > 2 for t in tokens)  # merges happened


@pytest.mark.parametrize("template", [BUILTIN_TEMPLATE, REFERENCE_TEMPLATE], ids=["builtin", "reference"])
def test_text_spans_decode_to_each_text_and_bos_opens_the_prompt(model: PreTrainedModel, template) -> None:
    prepared = prepare(model, TOKENIZER, template, CONTEXTS, "Who baked bread", " the miller")
    for keep in (None, [1, 3], [2]):
        sequence = prepared.pieces.build(keep)
        ids = sequence.input_ids
        assert ids[0] == TOKENIZER.bos_token_id and ids.count(TOKENIZER.bos_token_id) == 1
        kept = [CONTEXTS[i] for i in sequence.texts]
        assert [decode(ids[s:e]) for s, e in sequence.text_spans] == kept
        prompt = template.before + template.sep.join(kept) + template.suffix("Who baked bread")
        assert decode(ids[1 : sequence.answer_start]) == prompt
        assert decode(ids[sequence.answer_start :]) == " the miller"


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_a_split_document_is_read_verbatim(model: PreTrainedModel, mode: str) -> None:
    texts = split_document(DOCUMENT, mode, words=7)
    assert "".join(texts) == DOCUMENT and len(texts) >= 3
    prepared = prepare(model, TOKENIZER, None, DOCUMENT, "rain", "yes", split=mode)
    sequence = prepared.pieces.build()
    ids = sequence.input_ids
    assert ids[0] == TOKENIZER.bos_token_id
    assert decode(ids[1 : sequence.answer_start]) == DOCUMENT + BUILTIN_TEMPLATE.suffix("rain")
    assert [decode(ids[s:e]) for s, e in sequence.text_spans] == prepared.contexts
    # Whitespace opens the next text, as byte-level BPE attaches a space to the word after it:
    # the pieces' tokens are exactly the document's own tokenisation.
    first, last = sequence.text_spans[0][0], sequence.text_spans[-1][1]
    assert ids[first:last] == TOKENIZER(DOCUMENT, add_special_tokens=False)["input_ids"]


def test_chat_template_keeps_one_bos_and_spans_exact(model: PreTrainedModel) -> None:
    template = chat_template(REFERENCE_TEMPLATE, TOKENIZER)
    assert template.before == "<|user|>\n" + REFERENCE_TEMPLATE.before  # the rendered BOS text dropped
    assert template.after.endswith("\n<|assistant|>\n")
    sequence = prepare(model, TOKENIZER, template, CONTEXTS, "Who baked bread", "the miller").pieces.build()
    ids = sequence.input_ids
    assert ids[0] == TOKENIZER.bos_token_id and ids.count(TOKENIZER.bos_token_id) == 1
    assert [decode(ids[s:e]) for s, e in sequence.text_spans] == CONTEXTS
    rendered = TOKENIZER.apply_chat_template(
        [{"role": "user", "content": REFERENCE_TEMPLATE.before + "\n".join(CONTEXTS) + REFERENCE_TEMPLATE.suffix("Who baked bread")}],
        tokenize=False, add_generation_prompt=True,
    )
    assert decode(ids[: sequence.answer_start]) == rendered


def test_attntrace_scores_every_text(model: PreTrainedModel) -> None:
    tracer = AttnTrace(model, TOKENIZER, num_subsamples=4, subsample_ratio=0.5, max_new_tokens=5)
    result = tracer.attribute(CONTEXTS, "Who baked bread")
    drawn = {i for subset in tracer.draw_subsets(len(CONTEXTS)) for i in subset}
    assert len(result.scores) == len(CONTEXTS) and result.params["rounds"] == 4
    assert [s > 0 for s in result.scores] == [i in drawn for i in range(len(CONTEXTS))]


def test_attribute_cli_end_to_end(model: PreTrainedModel, tmp_path: Path, capsys) -> None:
    model_dir = tmp_path / "bpe-model"
    model.save_pretrained(model_dir)
    TOKENIZER.save_pretrained(model_dir)
    rows = [
        {"contexts": CONTEXTS, "question": "Who baked bread", "answer": " the miller", "relevant": [0]},
        {"contexts": DOCUMENT, "question": "Did it rain", "relevant": [0], "reference": "yes"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "scores.jsonl"
    for extra in ([], ["--chat-template", "--template", "reference", "--method", "leave_one_out"]):
        code = main([
            "attribute", "--model", str(model_dir), "--input", str(source), "--output", str(output),
            "--split", "sentence", "--device", "cpu", "--max-new-tokens", "4", *extra,
            *([] if extra else ["--num-subsamples", "3"]),
        ])
        assert code == 0, capsys.readouterr().err
        written = [json.loads(line) for line in output.read_text().splitlines()]
        assert [w["contexts"] for w in written] == [CONTEXTS, split_document(DOCUMENT, "sentence")]
        assert "".join(written[1]["contexts"]) == DOCUMENT and written[1]["reference"] == "yes"
        assert all(len(w["scores"]) == len(w["contexts"]) for w in written)
        assert written[0]["answer"] == " the miller" and written[0]["method"] == ("leave_one_out" if extra else "attntrace")
