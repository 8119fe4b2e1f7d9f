"""bench/context_cite_adapter.py: ContextCite over exactly our texts, prompt and answer.

Skipped unless the optional ``bench`` extra (``context-cite``) is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("context_cite")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from context_cite_adapter import TeacherForcedContextCiter, TextListPartitioner, context_cite  # noqa: E402

from lit_attn.attribution.prompt import BUILTIN_TEMPLATE, encode_answer, tokenize_prompt  # noqa: E402
from lit_attn.models import load_policy  # noqa: E402
from lit_attn.tasks import format_prompt  # noqa: E402

CONTEXTS = ["m=7", "t=7", "u=9", "c=6", "x=6"]
QUESTION = "u+t"
ANSWER = "u=9\n\nu+t:9+(t=7)=6\n\nanswer 6"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_policy(str(tiny_model_dir))


def test_partitioner_sources_are_our_texts():
    part = TextListPartitioner(CONTEXTS, "\n")
    assert part.num_sources == len(CONTEXTS)
    assert part.sources == CONTEXTS
    assert part.get_context() == "\n".join(CONTEXTS)
    assert part.get_context(np.array([True, False, True, False, False])) == "m=7\nu=9"
    assert part.get_context(np.zeros(len(CONTEXTS), dtype=bool)) == ""


def test_prompt_and_response_are_ours(tiny):
    model, tok = tiny
    citer = TeacherForcedContextCiter(model, tok, CONTEXTS, QUESTION, ANSWER, num_ablations=4)
    assert citer._get_prompt_ids(return_prompt=True)[1] == format_prompt(CONTEXTS, QUESTION)  # no chat template
    assert citer.response == ANSWER  # given, not generated
    ours = tokenize_prompt(tok, BUILTIN_TEMPLATE, CONTEXTS, QUESTION, encode_answer(tok, ANSWER))
    keep = [0, 2, 3]
    mask = np.isin(np.arange(len(CONTEXTS)), keep)
    assert citer._get_prompt_ids(mask) + citer._response_ids == ours.build(keep).input_ids


def test_one_score_per_text(tiny):
    model, tok = tiny
    result = context_cite(model, tok, CONTEXTS, QUESTION, ANSWER, num_ablations=8)
    assert len(result.scores) == len(CONTEXTS)
    assert all(np.isfinite(result.scores))
    assert sorted(result.ranking) == list(range(len(CONTEXTS)))
    assert result.method == "context_cite" and result.params["num_ablations"] == 8
