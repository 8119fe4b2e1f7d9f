"""The host contract and the model probe, each written once (issue 22): the exploration's host
contract is :data:`lit_attn.exploration.host.REQUIRED`, checked by ``check_host``; both callbacks
probe their model with :func:`lit_attn.families.check_model`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lit_attn.errors import UserError
from lit_attn.exploration.host import REQUIRED, check_host
from lit_attn.families import check_model
from lit_attn.policy import PolicyModule

PACKAGE = Path(__file__).resolve().parents[1] / "lit_attn"


def test_check_host_names_every_missing_attribute_in_one_line():
    with pytest.raises(UserError) as err:
        check_host(object(), "AttentionBranchCallback")
    message = str(err.value)
    assert "\n" not in message and message.startswith("AttentionBranchCallback needs the LightningModule to offer ")
    assert ", ".join(REQUIRED) in message and "lit_attn/exploration/host.py" in message


def test_policy_module_offers_the_contract(tiny_model_dir):
    check_host(PolicyModule(name_or_path=str(tiny_model_dir)), "test")


def test_the_contract_and_the_probe_are_written_once():
    """No module but host.py lists the contract; no callback tests for PreTrainedModel itself."""
    listing = '"group_size", "max_new_tokens", "temperature"'
    holders = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if listing in p.read_text()]
    assert holders == ["exploration/host.py"], holders
    for path in (PACKAGE / "callbacks").glob("*.py"):
        tree = ast.parse(path.read_text())
        probes = [
            node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance"
            and "PreTrainedModel" in ast.unparse(node.args[1])
        ]
        assert not probes, f"{path.name} probes the model itself; call lit_attn.families.check_model"


def test_check_model_refuses_a_module_that_is_no_transformers_model():
    with pytest.raises(UserError, match=r"^M\.lm is a Linear, not a Hugging Face PreTrainedModel .*; hold it in lm$"):
        check_model(torch.nn.Linear(2, 2), "M.lm", fix="hold it in lm")
