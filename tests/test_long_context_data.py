"""data.num_texts: the built-in question among many texts, as RL prompts."""

from __future__ import annotations

import pytest

from lit_attn import PromptDataModule
from lit_attn.callbacks.attribution import builtin_examples
from lit_attn.errors import UserError
from lit_attn.tasks import verify


def test_long_context_prompts_carry_the_needed_facts_and_verify():
    data = PromptDataModule(num_texts=30, num_ops=2, num_distractors=5, train_size=20, val_size=10, seed=1)
    data.setup("fit")
    train, val = data.records("fit")["train"], data.val_records()
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}
    for rec in val:
        assert len(rec["contexts"]) == 30 and len(rec["relevant"]) == 3
        assert rec["prompt"].startswith("\n".join(rec["contexts"])) and rec["prompt"].endswith(f"{rec['question']}?\n\n")
        assert verify(rec["solution"], rec["answer"]) == 1.0
        needed = {rec["contexts"][i].split("=")[0] for i in rec["relevant"]}
        assert needed == set(rec["question"].replace("+", " ").replace("-", " ").split())
        assert rec["injected"] is not None and len(rec["paraphrases"]) == 3
    probes = builtin_examples(data, 4)
    assert [p.relevant for p in probes] == [tuple(r["relevant"]) for r in val[:4]]
    with pytest.raises(UserError, match="num_distractors: null"):
        builtin_examples(data, 4, num_distractors=3)


def test_the_task_and_the_data_module_name_their_settings_alike():
    """`data.num_distractors` is `num_distractors` in LongContextTask and FactChainTask (issue 22:
    it was `num_distractor_facts` in LongContextTask)."""
    import dataclasses
    import inspect

    from lit_attn.tasks import FactChainTask
    from lit_attn.tasks.long_context import LongContextTask

    data = set(inspect.signature(PromptDataModule).parameters)
    for task in (LongContextTask, FactChainTask):
        shared = {f.name for f in dataclasses.fields(task)} & data
        assert {"num_ops", "num_distractors", "modulus"} <= shared, task
    assert {f.name for f in dataclasses.fields(LongContextTask)} - data == {"paraphrases", "injection"}
