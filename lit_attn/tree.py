"""Tree advantages (TreeRL style) for the rollouts of one prompt, as used by AttnRL.

Plain Python and torch, no Lightning: everything here is a pure function of its inputs.

**Input.** For one prompt, its G initial :class:`Response` objects. Each holds a
:class:`Sample` — the tokens one policy version sampled, their behaviour log-probs, that
version, and the reward — and its branch points. A :class:`Branch` names a token offset *into
the response* where the regenerated part starts and the continuations (rollouts) sampled from
there; a continuation's tokens start at that offset. Continuations are not branched again.

**Sample addresses.** Response ``i`` is ``(i,)``; continuation ``j`` of branch ``b`` of
response ``i`` is ``(i, b, j)``.

**Tree.** One virtual root (no tokens) per prompt, with one child per response. A response of
length ``L`` with branch offsets ``o1 < o2 < ... < ok`` is cut into the segments
``[0, o1), [o1, o2), ..., [ok, L)``, each a :class:`Node`, chained one below the other. The
children of segment ``[o_{m-1}, o_m)`` are the response's next segment ``[o_m, ...)``
followed by the continuations of branch ``m``. The last segment of every rollout is a leaf
holding the reward. A branch at offset 0 leaves an empty first segment: its continuations are
fresh samples from the prompt, siblings of the whole response.

**Values and advantages** (docs/attnrl.md §6, from TreeRL)::

    V(n) = mean reward of the leaves under n          (V(root): all the prompt's leaves)
    A(n) = [(V(n) - V(root)) + (V(n) - V(parent(n)))] / sqrt(|leaves(n)|)

Every token of a node gets that node's ``A``. The root has no tokens; its ``advantage`` is
set to 0. Each root-to-leaf path is one training sequence (prefixes are shared between
several); :func:`paths` returns them with their tokens, behaviour log-probs, policy versions
and per-token advantages, and no further normalisation. :func:`all_leaves_equal` is the
zero-advantage filter of docs/attnrl.md §4: a prompt whose leaves all carry the same reward
has all advantages 0 and is dropped.

Bad input raises :class:`lit_attn.errors.UserError` (a ``ValueError``) with a one-line
message that says which rollout is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lit_attn.errors import UserError

Address = tuple[int, ...]
"""Where a rollout sits: ``(i,)`` for response i, ``(i, branch, continuation)`` below it."""


@dataclass(frozen=True)
class Sample:
    """Tokens one policy version sampled (a response, or a continuation from a branch point),
    their behaviour log-probs (``None`` when unknown), that ``version`` and the reward in [0, 1]."""

    tokens: Sequence[int]
    reward: float
    logprobs: Sequence[float] | None = None
    version: int = 0


@dataclass(frozen=True)
class Branch:
    """A branch point: ``offset`` (token index in the response where the regenerated part
    starts, ``0 <= offset < length``) and the continuations sampled from there."""

    offset: int
    continuations: Sequence[Sample]


@dataclass(frozen=True)
class Response:
    """One initial response and its branch points (sorted by offset)."""

    rollout: Sample
    branches: Sequence[Branch] = ()


@dataclass(frozen=True)
class Segment:
    """Tokens ``[start, end)`` of the rollout at ``rollout`` (see the module docstring)."""

    rollout: Address
    start: int
    end: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass
class Node:
    """A tree node: a segment of one rollout (``source``), its children, and (leaves only) its
    reward. ``value``, ``num_leaves`` and ``advantage`` are filled in by :func:`build_tree`."""

    segment: Segment
    source: Sample | None = None
    children: list[Node] = field(default_factory=list)
    reward: float | None = None
    value: float = 0.0
    num_leaves: int = 0
    advantage: float = 0.0

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def walk(self) -> Iterator[Node]:
        """This node and every node below it, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class Tree:
    """The tree of one prompt: a token-less ``root`` whose children are the G responses."""

    root: Node
    responses: Sequence[Response]


@dataclass(frozen=True)
class PathSample:
    """One training sequence: the root-to-leaf path ending at the rollout ``leaf``.

    ``tokens``, ``logprobs`` (``None`` when a rollout on the path has none) and ``versions``
    are those of the path's ``segments`` (root first), ``advantages`` one value per token;
    ``reward`` is the leaf's reward and ``expanded`` whether its response has branch points.
    """

    leaf: Address
    reward: float
    segments: tuple[Segment, ...]
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...] | None
    versions: tuple[int, ...]
    advantages: torch.Tensor
    expanded: bool

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


# ---------------------------------------------------------------------------------------
# Building


def _where(address: Address) -> str:
    if len(address) == 1:
        return f"response {address[0]}"
    return f"response {address[0]}, branch {address[1]} continuation {address[2]}"


def _check_rollout(rollout: object, where: str) -> Sample:
    if not isinstance(rollout, Sample):
        raise UserError(f"{where}: expected a Sample, got {type(rollout).__name__}")
    reward = rollout.reward
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise UserError(f"{where}: reward must be a number in [0, 1], got {reward!r}")
    if not math.isfinite(float(reward)) or not 0.0 <= float(reward) <= 1.0:
        raise UserError(f"{where}: reward must be a number in [0, 1], got {float(reward)!r}")
    if rollout.logprobs is not None and len(rollout.logprobs) != len(rollout.tokens):
        raise UserError(f"{where}: {len(rollout.logprobs)} log-probs for {len(rollout.tokens)} tokens; give one per token")
    return rollout


def _chain(rollout: Sample, address: Address, offsets: Sequence[int]) -> list[Node]:
    """The segment nodes of one rollout cut at ``offsets``, the last one a leaf."""
    bounds = [0, *offsets, len(rollout.tokens)]
    nodes = [Node(Segment(address, bounds[m], bounds[m + 1]), rollout) for m in range(len(bounds) - 1)]
    nodes[-1].reward = float(rollout.reward)
    return nodes


def _build_response(response: Response, i: int) -> Node:
    """The chain of segment nodes of response ``i`` with its continuations; returns its first segment."""
    where = _where((i,))
    if not isinstance(response, Response):
        raise UserError(f"{where} must be a Response, got {type(response).__name__}")
    rollout = _check_rollout(response.rollout, where)
    length = len(rollout.tokens)
    offsets: list[int] = []
    for b, branch in enumerate(response.branches):
        if not isinstance(branch, Branch):
            raise UserError(f"{where}: branch {b} must be a Branch, got {type(branch).__name__}")
        off = branch.offset
        if isinstance(off, bool) or not isinstance(off, numbers.Integral) or not 0 <= off < length:
            raise UserError(
                f"{where}: branch {b} offset {off!r} must be an int in 0..{length - 1} "
                f"(inside the response's {length} tokens)"
            )
        if offsets and off <= offsets[-1]:
            raise UserError(
                f"{where}: branch offsets must be strictly increasing, got {offsets[-1]} then {off} "
                "(sort them; merge the continuations of equal offsets into one Branch)"
            )
        if len(branch.continuations) == 0:
            raise UserError(f"{where}: branch {b} at offset {off} has no continuations")
        offsets.append(int(off))
    nodes = _chain(rollout, (i,), offsets)
    for m, branch in enumerate(response.branches):
        nodes[m].children.append(nodes[m + 1])
        for j, continuation in enumerate(branch.continuations):
            address = (i, m, j)
            nodes[m].children.append(_chain(_check_rollout(continuation, _where(address)), address, ())[0])
    return nodes[0]


def _fill_values(node: Node) -> tuple[float, int]:
    """Set ``value`` and ``num_leaves`` below ``node``; returns (reward sum, leaf count)."""
    if node.is_leaf:
        assert node.reward is not None
        total, count = node.reward, 1
    else:
        total, count = 0.0, 0
        for child in node.children:
            t, c = _fill_values(child)
            total += t
            count += c
    node.value = total / count
    node.num_leaves = count
    return total, count


def _fill_advantages(node: Node, root_value: float) -> None:
    for child in node.children:
        child.advantage = ((child.value - root_value) + (child.value - node.value)) / math.sqrt(child.num_leaves)
        _fill_advantages(child, root_value)


def build_tree(responses: Sequence[Response]) -> Tree:
    """The tree of one prompt from its G responses, with values and advantages filled in."""
    if len(responses) == 0:
        raise UserError("build_tree needs at least one response")
    root = Node(Segment((), 0, 0))
    root.children = [_build_response(response, i) for i, response in enumerate(responses)]
    _fill_values(root)
    root.advantage = 0.0
    _fill_advantages(root, root.value)
    return Tree(root=root, responses=list(responses))


# ---------------------------------------------------------------------------------------
# Using


def paths(tree: Tree, dtype: torch.dtype = torch.float32) -> list[PathSample]:
    """Every root-to-leaf path as a training sequence, sorted by leaf address.

    Sorting by address puts, per response, the original response first, then the
    continuations of its first branch point, and so on.
    """
    out: list[PathSample] = []

    def visit(node: Node, trail: list[Node]) -> None:
        trail.append(node)
        if node.is_leaf:
            assert node.reward is not None
            tokens, logprobs, versions = [], [], []
            for n in trail:
                start, end = n.segment.start, n.segment.end
                tokens += n.source.tokens[start:end]
                versions += [n.source.version] * (end - start)
                logprobs = None if logprobs is None or n.source.logprobs is None else logprobs + list(n.source.logprobs[start:end])
            lengths = torch.tensor([n.segment.num_tokens for n in trail], dtype=torch.long)
            values = torch.tensor([n.advantage for n in trail], dtype=torch.float64)
            leaf = node.segment.rollout
            out.append(PathSample(
                leaf=leaf, reward=node.reward, segments=tuple(n.segment for n in trail),
                tokens=tuple(int(t) for t in tokens), logprobs=None if logprobs is None else tuple(logprobs),
                versions=tuple(versions), advantages=values.repeat_interleave(lengths).to(dtype),
                expanded=bool(tree.responses[leaf[0]].branches),
            ))
        else:
            for child in node.children:
                visit(child, trail)
        trail.pop()

    for response in tree.root.children:
        visit(response, [])
    out.sort(key=lambda p: p.leaf)
    return out


def all_leaves_equal(tree: Tree) -> bool:
    """True when every leaf of the prompt has the same reward (all advantages are then 0,
    and docs/attnrl.md §4's zero-advantage filter drops all of the prompt's sequences)."""
    return len({node.reward for node in tree.root.walk() if node.is_leaf}) <= 1
