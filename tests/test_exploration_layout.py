"""lit_attn/exploration/'s layout: imports run one way (no stage imports the step), and every
exploration knob is spelled once — ExplorationSettings and the rules carry the docs, defaults and
checks; the callbacks' arguments are exactly their fields."""

from __future__ import annotations

import ast
import inspect
from dataclasses import MISSING, fields
from pathlib import Path

import docstring_parser
import pytest

from lit_attn.callbacks import AttentionBranchCallback, BranchingCallback, EntropyBranchCallback
from lit_attn.errors import UserError
from lit_attn.exploration.rules import EntropyBranching, FCIBranching
from lit_attn.exploration.settings import ExplorationSettings

PACKAGE = Path(__file__).resolve().parents[1] / "lit_attn" / "exploration"


def package_imports() -> dict[str, set[str]]:
    """For each module of the package, the package modules it imports (``__init__`` for the package itself)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name == "lit_attn.exploration":
                    found.add("__init__")
                elif name.startswith("lit_attn.exploration.") and (PACKAGE / f"{name.split('.')[2]}.py").exists():
                    found.add(name.split(".")[2])
        graph[path.stem] = found
    return graph


def test_no_module_of_the_package_imports_the_step_or_the_package_root():
    graph = package_imports()
    assert {"step", "stages", "rules", "selection", "settings", "state"} <= set(graph)
    assert [m for m, deps in graph.items() if "step" in deps] == []
    assert [m for m, deps in graph.items() if "__init__" in deps] == []
    # the rules and the pure maths know nothing of the step's stages either
    for module in ("rules", "selection", "settings", "state", "groups", "host", "audit"):
        assert "stages" not in graph[module], module


def test_the_package_imports_have_no_cycle():
    graph = package_imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())


def defaults(*classes: type) -> dict[str, object]:
    return {f.name: f.default for cls in classes for f in fields(cls) if f.default is not MISSING}


def arguments(callback: type) -> dict[str, object]:
    params = list(inspect.signature(callback.__init__).parameters.values())[1:]
    return {p.name: p.default for p in params}


def test_the_callbacks_arguments_are_the_fields_of_the_rule_and_the_settings():
    assert arguments(AttentionBranchCallback) == defaults(FCIBranching, ExplorationSettings)
    # TreeRL: no ADS and a fixed batch size by default; everything else as the settings
    assert arguments(EntropyBranchCallback) == {
        **defaults(ExplorationSettings), "adaptive_sampling": False, "adaptive_batch": False, **defaults(EntropyBranching),
    }
    assert list(arguments(EntropyBranchCallback))[-1] == "chunk_size"


@pytest.mark.parametrize("callback", [AttentionBranchCallback, EntropyBranchCallback])
def test_every_callback_argument_is_documented_for_help(callback):
    documented = {p.arg_name: p.description for p in docstring_parser.parse(callback.__doc__).params}
    for name in arguments(callback):
        assert documented.get(name), f"{callback.__name__}.{name} has no description"


def test_the_arguments_reach_the_rule_and_the_settings():
    a = AttentionBranchCallback(min_gap=1, selection="early", continuations=3, max_batch_prompts=8, seed=4)
    assert (a.rule.min_gap, a.rule.selection) == (1, "early")
    assert (a.settings.continuations, a.settings.max_batch_prompts, a.state.seed) == (3, 8, 4)
    e = EntropyBranchCallback(chunk_size=7, num_points=3)
    assert (e.rule.chunk_size, e.settings.num_points, e.settings.adaptive_sampling) == (7, 3, False)
    b = BranchingCallback(EntropyBranching(), continuations=4)
    assert b.settings == ExplorationSettings(continuations=4)
    with pytest.raises(TypeError, match="contnuations"):
        BranchingCallback(EntropyBranching(), contnuations=4)


@pytest.mark.parametrize(
    "bad, name",
    [
        ({"continuations": 0}, "continuations"), ({"num_points": 0}, "num_points"), ({"batch_lambda": 1.5}, "batch_lambda"),
        ({"target_sequences": 0}, "target_sequences"), ({"max_batch_prompts": 0}, "max_batch_prompts"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_setting(bad, name):
    with pytest.raises(UserError, match=name) as caught:
        ExplorationSettings(**bad)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=f"^EntropyBranchCallback: {name}"):
        EntropyBranchCallback(**bad)


@pytest.mark.parametrize("bad, name", [({"selection": "best"}, "selection"), ({"min_gap": 0}, "min_gap"), ({"ratio": 0.0}, "ratio")])
def test_bad_fci_settings_are_checked_by_the_rule(bad, name):
    with pytest.raises(UserError, match=f"^{name}"):
        FCIBranching(**bad)
    with pytest.raises(UserError, match=f"^AttentionBranchCallback: {name}"):
        AttentionBranchCallback(**bad)


def test_a_new_exploration_knob_is_one_field_on_its_dataclass():
    """The callbacks' constructors are generated from the settings dataclasses (callbacks.branching
    .takes): a field added there is a typed, documented constructor and CLI argument, with no
    constructor to edit."""
    import dataclasses
    import io

    from jsonargparse import ArgumentParser

    from lit_attn.callbacks.branching import documented, takes

    @dataclasses.dataclass(frozen=True)
    class Knobs:
        """Knobs.

        Attributes:
            new_knob: a knob added in one place.
            other: another one.
        """

        new_knob: int = 3
        other: float | None = None

    @documented(Knobs)
    @takes(Knobs, other=0.5)
    class Toy:
        """A toy host of the knobs."""

        def __init__(self, arguments):
            self.arguments = dict(arguments)

    assert Toy(new_knob=5).arguments == {"new_knob": 5, "other": 0.5}  # defaults filled, overrides applied
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['nope'\\]"):
        Toy(nope=1)
    parser = ArgumentParser()
    parser.add_class_arguments(Toy, "toy")
    assert parser.parse_args(["--toy.new_knob", "7"]).toy.new_knob == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["--toy.new_knob", "seven"])  # typed from the dataclass
    out = io.StringIO()
    parser.print_help(out)
    assert "a knob added in one place" in out.getvalue()
