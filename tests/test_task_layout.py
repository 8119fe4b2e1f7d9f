"""The built-in task lives in lit_attn/tasks/, and attribution and the data module do not know each other.

The import graph is read from the source (``ast``), so a new module, or an import inside a
function, is checked as well as the ones that exist today.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lit_attn.attribution.examples import AttributionExample, examples_from_records
from lit_attn.attribution.kinds import final_value
from lit_attn.data import PromptDataModule
from lit_attn.errors import UserError
from lit_attn.tasks import FactChainTask, LongContextTask, SubtotalTask, extract_answer
from lit_attn.tasks.probes import PROBE_KEYS, builtin_probes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_attn"


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a file imports (``import a.b``, ``from a.b import c`` → ``a.b`` and ``a.b.c``),
    at any depth of the file; relative imports are resolved against the file's package (the
    file's path under ``root``)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def forbidden(path: Path, prefixes: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """The imports of ``path`` that are, or lie under, one of ``prefixes``."""
    return sorted(m for m in imported_modules(path, root) if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_the_import_reader_sees_every_form_of_import(tmp_path):
    module = tmp_path / "lit_attn" / "attribution" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import lit_attn.data\nfrom lit_attn import tasks\ndef f():\n    from ..tasks.chain import format_prompt\n"
        "from . import kinds\n"
    )
    found = imported_modules(module, tmp_path)
    assert {"lit_attn.data", "lit_attn.tasks", "lit_attn.tasks.chain", "lit_attn.attribution.kinds"} <= found
    assert forbidden(module, ("lit_attn.data", "lit_attn.tasks"), tmp_path) == [
        "lit_attn.data", "lit_attn.tasks", "lit_attn.tasks.chain", "lit_attn.tasks.chain.format_prompt"
    ]


@pytest.mark.parametrize("module", sorted((PACKAGE / "attribution").rglob("*.py")), ids=lambda p: p.name)
def test_attribution_imports_neither_the_data_module_nor_the_task(module):
    assert forbidden(module, ("lit_attn.data", "lit_attn.tasks")) == []


def test_the_data_module_does_not_import_attribution():
    assert forbidden(PACKAGE / "data.py", ("lit_attn.attribution",)) == []


@pytest.mark.parametrize("module", sorted((PACKAGE / "tasks").rglob("*.py")), ids=lambda p: p.name)
def test_the_task_imports_neither_the_data_module_nor_attribution_nor_lightning(module):
    assert forbidden(module, ("lit_attn.data", "lit_attn.attribution", "lit_attn.callbacks", "lightning")) == []


def test_the_old_homes_of_the_task_are_gone():
    for old in ("task.py", "warm_start.py", "attribution/longcontext.py"):
        assert not (PACKAGE / old).exists(), old


def test_builtin_probes_are_plain_records_that_attribution_takes():
    data = PromptDataModule(train_size=32, val_size=6, num_texts=30)
    probes = builtin_probes(data, 3)
    assert len(probes) == 3
    assert all(set(p) == set(PROBE_KEYS) for p in probes)
    assert all(isinstance(v, (str, list, type(None))) for p in probes for v in p.values())  # nothing of attribution's
    held_out = data.val_records()[:3]
    assert [p["contexts"] for p in probes] == [r["contexts"] for r in held_out]
    assert [p["reference"] for p in probes] == [r["answer"] for r in held_out]
    examples = examples_from_records(probes)
    assert all(isinstance(e, AttributionExample) for e in examples)
    assert [list(e.kinds) for e in examples] == [r["kinds"] for r in held_out]
    assert [e.injected_answer for e in examples] == [r["injected_answer"] for r in held_out]


def test_probe_records_label_plain_contexts_from_their_relevant_facts():
    (probe,) = builtin_probes(PromptDataModule(train_size=32, val_size=4, num_distractors=2), 1)
    assert [k == "needed" for k in probe["kinds"]] == [i in probe["relevant"] for i in range(len(probe["contexts"]))]


def test_a_record_with_bad_kinds_is_named_by_its_index():
    record = {"contexts": ["a=1", "b=2"], "question": "a+b", "kinds": ["needed"]}
    with pytest.raises(UserError, match=r"held-out record 1: 'kinds' has 1 label"):
        examples_from_records([{"contexts": ["a=1"], "question": "a"}, record])


@pytest.mark.parametrize("task", [FactChainTask(num_ops=2), SubtotalTask(), LongContextTask(num_texts=20)], ids=type)
def test_attribution_reads_the_final_answer_as_the_verifier_does(task):
    import random

    rng = random.Random(0)
    for _ in range(20):
        ex = task.example(rng)
        solution = ex.get("solution", ex["answer"])
        for text in (solution, solution + "\n\nanswer -3", "no answer here", "answer  12 then answer 4"):
            want = extract_answer(text)
            assert final_value(text) == (want if want is not None else text.strip())
