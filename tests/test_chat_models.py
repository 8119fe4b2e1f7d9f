"""Chat and thinking models (docs/chat_models.md): the walk-through's model folder, chat prompts in
``fit`` / ``predict``, AttnRL's ``think_end_tag`` over a tag the tokenizer splits, and
``attribute --chat-template`` on the same folder — through the CLI, as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_attn.chat import render_prompt
from lit_attn.cli import main
from lit_attn.errors import UserError
from lit_attn.models import load_policy
from lit_attn.records import load_records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CHAT_PROMPTS = EXAMPLES / "chat_prompts.jsonl"


def _script():
    """examples/chat_model.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("chat_model_script", EXAMPLES / "chat_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chat") / "chat_model"
    assert _script().main([str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def loaded(chat_model: Path):
    return load_policy(chat_model)


def run_args(chat_model: Path, run_dir: Path, *extra: str, config: str = "chat.yaml") -> list[str]:
    """examples/<config> on the test's model folder, writing under ``run_dir``, one RL step."""
    return [
        "--config", str(EXAMPLES / config), f"--model.name_or_path={chat_model}",
        f"--data.train_path={CHAT_PROMPTS}", "--model.sampling.max_new_tokens=12", "--trainer.max_steps=1",
        "--trainer.val_check_interval=1", f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}", *extra,
    ]


def test_the_folder_has_a_chat_template_and_splits_the_think_tag(chat_model: Path, loaded, tmp_path: Path) -> None:
    _, tokenizer = loaded
    tag = tokenizer.convert_ids_to_tokens(tokenizer("</think>", add_special_tokens=False)["input_ids"])
    assert tag == ["</", "think", ">"]
    opened = tokenizer.apply_chat_template([{"role": "user", "content": "m+y?"}], tokenize=False, add_generation_prompt=True)
    assert opened == "<|im_start|>user\nm+y?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    info = json.loads((chat_model / "lit_attn_chat_model.json").read_text())
    assert info["think_end_tokens"] == tag
    # The script rebuilds its own folder, and refuses one that holds anything else.
    assert _script().main([str(chat_model)]) == 0
    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="not a folder this script made"):
        _script().build(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "a user's file"


def test_fit_samples_from_prompts_rendered_by_the_chat_template(chat_model: Path, loaded, tmp_path: Path, monkeypatch) -> None:
    import lit_attn.policy

    seen_ids: list[list[int]] = []
    real = lit_attn.policy.sample_continuations

    def spy(model, tokenizer, prompt_ids, *args, **kwargs):
        seen_ids.extend(list(p) for p in prompt_ids)
        return real(model, tokenizer, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(lit_attn.policy, "sample_continuations", spy)
    (tmp_path / "chat_spy_reward.py").write_text(textwrap.dedent(
        """
        CALLS = []
        def spy_reward(prompts, completions, messages, question, **kwargs):
            CALLS.append((list(prompts), list(messages), list(question)))
            return [0.0 for _ in completions]
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "chat_spy_reward", raising=False)
    rc = main(["fit", *run_args(chat_model, tmp_path / "runs", "--model.rewards.functions=[chat_spy_reward.spy_reward]")])
    assert rc == 0

    _, tokenizer = loaded
    records = load_records(CHAT_PROMPTS)
    expected = {
        tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True): r for r in records
    }
    assert len(seen_ids) == 2  # prompts_per_step prompts, each sampled group_size times
    for ids in seen_ids:
        text = tokenizer.decode(ids, skip_special_tokens=False)
        assert text in expected, text  # what the model read is a rendered record, token for token
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n<think>\n")
        assert ids == tokenizer(text)["input_ids"]

    import chat_spy_reward

    prompts, messages, questions = chat_spy_reward.CALLS[0]  # the first call scores the training rollout
    for prompt, conversation, question in zip(prompts, messages, questions):
        assert conversation == expected[prompt]["prompt"]  # the conversation, as written in the file
        assert question == expected[prompt]["question"]  # the file's other columns, untouched


def test_apply_chat_template_wraps_plain_prompts_in_predict(chat_model: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl"
    rows = [{"prompt": f"x{i}=3\ny=4\nx{i}+y?", "answer": "7"} for i in range(6)]
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "runs"
    args = run_args(chat_model, run_dir, f"--data.train_path={plain}", "--data.val_size=2", "--data.apply_chat_template=true")
    assert main(["predict", *args]) == 0
    predictions = [json.loads(line) for line in next(run_dir.rglob("predictions.jsonl")).read_text().splitlines()]
    assert [p["prompt"] for p in predictions] == [
        f"<|im_start|>user\n{r['prompt']}<|im_end|>\n<|im_start|>assistant\n<think>\n" for r in rows[-2:]
    ]


def test_think_end_tag_over_three_tokens_ends_the_fci_targets(loaded) -> None:
    from lit_attn.callbacks import AttentionBranchCallback
    from lit_attn.tree import Sample
    from lit_attn.exploration.groups import PromptGroup

    model, tokenizer = loaded
    prompt = render_prompt([{"role": "user", "content": "m=6\ny=4\nn=7\nm+y-n?"}], tokenizer)
    steps = ["m=6\n\n", "m+y:6+(y=4)=0\n\n", "m+y-n:0-(n=7)=3\n</think>\n\n", "answer 3\n\n", "answer 3<|im_end|>"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    response = tokenizer("".join(steps), add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(response).count(">ĊĊ") == 1  # the tag's last token closes its step

    def scores(tag: str | None) -> tuple[torch.Tensor, list]:
        rule = AttentionBranchCallback(min_gap=1, think_end_tag=tag).rule
        group = PromptGroup(record={}, prompt_ids=prompt_ids, responses=[Sample(tokens=response, reward=0.0)])
        fci, spans = rule.score(SimpleNamespace(model=model, tokenizer=tokenizer), [group])
        return fci[0][0], spans[0][0]

    with_tag, spans = scores("</think>")
    without, _ = scores(None)
    assert len(spans) == 1 + len(steps)  # the prompt, then one span per step
    closing = 3  # the step holding "</think>"
    assert "</think>" in tokenizer.decode(response[spans[closing][0] - len(prompt_ids) : spans[closing][1] - len(prompt_ids)])
    assert torch.all(with_tag[closing:] == 0), with_tag  # zero from the think-end step on
    assert with_tag[2] > 0 and torch.equal(with_tag[:closing], without[:closing])  # earlier steps unchanged
    assert without[closing] > 0  # without the tag the closing step is a target


def test_attribute_with_the_chat_template_writes_its_output(chat_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    rc = main([
        "attribute", "--model", str(chat_model), "--input", str(EXAMPLES / "chat_attribute.jsonl"), "--chat-template",
        "--output", str(out), "--max-new-tokens", "6", "--num-subsamples", "4", "--show", "2",
    ])
    assert rc == 0
    inputs = [json.loads(line) for line in (EXAMPLES / "chat_attribute.jsonl").read_text().splitlines()]
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == len(inputs) == 2
    assert all(len(r["scores"]) == len(i["contexts"]) for r, i in zip(results, inputs))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ")
    return err[-1]


def test_chat_prompts_with_a_tokenizer_without_a_template_is_one_line(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    rc = main(["validate", *run_args(tiny_model_dir, tmp_path / "runs", "--data.val_size=2")])
    assert rc == 2
    line = _error_line(capsys)
    assert "has no chat template" in line and "docs/chat_models.md" in line
    assert not (tmp_path / "runs").exists()  # refused before the run wrote anything


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([], "'prompt' is an empty list of messages"),
        (["hi"], "'prompt' message 0 is a str, not an object"),
        ([{"content": "hi"}], "'prompt' message 0 has role missing"),
        ([{"role": "user", "content": ["hi"]}], r"'prompt' message 0 \(user\) has content a list; it must be a string"),
        ([{"role": "system", "content": " "}], "every message of 'prompt' is empty"),
    ],
)
def test_malformed_messages_are_one_line(tmp_path: Path, prompt: list, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "answer": "1"}) + "\n" + json.dumps({"prompt": prompt, "answer": "1"}) + "\n")
    with pytest.raises(UserError, match=rf"bad\.jsonl:2: {message}") as info:
        load_records(path)
    assert "\n" not in str(info.value)


def test_malformed_messages_and_mixed_prompts_through_the_cli(chat_model: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user"}], "answer": "1"}) + "\n")
    assert main(["validate", *run_args(chat_model, tmp_path / "runs", f"--data.val_path={bad}")]) == 2
    assert "bad.jsonl:1: 'prompt' message 0 (user) has content missing" in _error_line(capsys)

    mixed = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "plain", "answer": "1"}, {"prompt": [{"role": "user", "content": "chat"}], "answer": "1"}]
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["validate", *run_args(chat_model, tmp_path / "runs", f"--data.val_path={mixed}")]) == 2
    line = _error_line(capsys)
    assert "record 0 has a plain-text prompt while record 1 is a list of messages" in line
    assert "data.apply_chat_template true" in line
