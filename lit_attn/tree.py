"""Tree advantages (TreeRL style) for the rollouts of one prompt, as used by AttnRL.

Plain Python and torch, no Lightning: everything here is a pure function of its inputs.

**Input.** For one prompt, the G initial responses, each a :class:`ResponseRollout` holding
its token count, its reward (a float in [0, 1], normally 0 or 1) and its branch points. A
:class:`Branch` names a token offset *into that rollout's own tokens* where a step starts
(the regenerated step) and the continuations sampled from there. A continuation is given
either as a pair ``(length, reward)`` or, when it is branched again (nested branching), as
another :class:`ResponseRollout` whose branch offsets count from the continuation's start.
A continuation's ``length`` is the number of tokens it generated, i.e. from the branch
offset to its end.

**Rollout addresses.** Every rollout has an address, a tuple of ints: response ``i`` is
``(i,)``; continuation ``j`` of branch ``b`` of the rollout at address ``a`` is
``a + (b, j)``. So ``(2, 0, 1)`` is the second continuation of the first branch point of
response 2, and ``(2, 0, 1, 0, 0)`` a continuation sampled inside that continuation.

**Tree.** One virtual root (no tokens) per prompt, with one child per response. A rollout of
length ``L`` with branch offsets ``o1 < o2 < ... < ok`` is cut into the segments
``[0, o1), [o1, o2), ..., [ok, L)``, each a :class:`Node`, chained one below the other.
The children of segment ``[o_{m-1}, o_m)`` are the rollout's next segment ``[o_m, ...)``
followed by the continuations of branch ``m`` (each of which is cut the same way when it
has branches of its own). The last segment of every rollout is a leaf holding the reward.

**Values and advantages** (AttnRL docs/attnrl.md §6, from TreeRL)::

    V(n) = mean reward of the leaves under n          (V(root): all the prompt's leaves)
    A(n) = [(V(n) - V(root)) + (V(n) - V(parent(n)))] / sqrt(|leaves(n)|)

Every token of a node gets that node's ``A``. The root has no tokens; its ``advantage`` is
set to 0. Each root-to-leaf path is one training sequence (prefixes are shared between
several); :func:`paths` returns them with a per-token advantage vector and no further
normalisation. :func:`all_leaves_equal` is the zero-advantage filter of docs/attnrl.md §4: a prompt
whose leaves all carry the same reward has all advantages 0 and is dropped.

Bad input raises :class:`lit_attn.errors.UserError` (a ``ValueError``) with a one-line
message that says which rollout is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lit_attn.errors import UserError

Address = tuple[int, ...]
"""Where a rollout sits: ``(i,)`` for response i, ``parent + (branch, continuation)`` below."""


@dataclass(frozen=True)
class Branch:
    """A branch point: ``offset`` (token index in its rollout where the regenerated part
    starts, ``0 <= offset < length``; 0 = a fresh sample from the prompt, whose tree node above
    the split holds no tokens) and the continuations sampled from there, each a
    ``(length, reward)`` pair or a :class:`ResponseRollout` (to branch it again)."""

    offset: int
    continuations: Sequence[tuple[int, float] | ResponseRollout]


@dataclass(frozen=True)
class ResponseRollout:
    """One sampled rollout: its token count, its reward in [0, 1] and its branch points
    (sorted by offset, offsets counted from this rollout's first token)."""

    length: int
    reward: float
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
    """A tree node: a segment of one rollout, its children, and (leaves only) its reward.

    ``value``, ``num_leaves`` and ``advantage`` are filled in by :func:`build_tree`.
    """

    segment: Segment
    children: list[Node] = field(default_factory=list)
    reward: float | None = None
    value: float = 0.0
    num_leaves: int = 0
    advantage: float = 0.0

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def leaves(self) -> Iterator[Node]:
        """The leaves under this node (itself if it is one), depth first."""
        if self.is_leaf:
            yield self
            return
        for child in self.children:
            yield from child.leaves()

    def walk(self) -> Iterator[Node]:
        """This node and every node below it, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class Tree:
    """The tree of one prompt: a token-less ``root`` whose children are the G responses."""

    root: Node
    num_responses: int

    def nodes(self) -> Iterator[Node]:
        """Every node except the root, parents before children."""
        for child in self.root.children:
            yield from child.walk()

    def leaves(self) -> list[Node]:
        return list(self.root.leaves())


@dataclass(frozen=True)
class PathSample:
    """One training sequence: the root-to-leaf path ending at the rollout ``leaf``.

    The sequence is the concatenation of ``segments`` (root first); ``advantages`` holds one
    value per token of it, ``reward`` is the leaf's reward.
    """

    leaf: Address
    reward: float
    segments: tuple[Segment, ...]
    advantages: torch.Tensor

    @property
    def response_index(self) -> int:
        """Index of the initial response this sequence starts from."""
        return self.leaf[0]

    @property
    def num_tokens(self) -> int:
        return sum(seg.num_tokens for seg in self.segments)

    def token_ids(self, tokens_of: Callable[[Address], Sequence[int]]) -> list[int]:
        """The sequence's token ids, given ``tokens_of(address)`` -> that rollout's tokens."""
        ids: list[int] = []
        for seg in self.segments:
            tokens = tokens_of(seg.rollout)
            if len(tokens) < seg.end:
                raise UserError(
                    f"rollout {seg.rollout} has {len(tokens)} tokens but the tree needs {seg.end}"
                )
            ids.extend(int(t) for t in tokens[seg.start : seg.end])
        return ids


# ---------------------------------------------------------------------------------------
# Building


def _where(address: Address) -> str:
    if len(address) == 1:
        return f"response {address[0]}"
    parts = [f"response {address[0]}"]
    for depth in range(1, len(address), 2):
        parts.append(f"branch {address[depth]} continuation {address[depth + 1]}")
    return ", ".join(parts)


def _check_reward(reward: object, where: str) -> float:
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise UserError(f"{where}: reward must be a number in [0, 1], got {reward!r}")
    value = float(reward)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"{where}: reward must be a number in [0, 1], got {value!r}")
    return value


def _check_length(length: object, where: str) -> int:
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
        raise UserError(f"{where}: length must be an int >= 0, got {length!r}")
    return int(length)


def _as_rollout(item: object, where: str) -> ResponseRollout:
    if isinstance(item, ResponseRollout):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return ResponseRollout(length=item[0], reward=item[1])
    raise UserError(f"{where}: a continuation must be (length, reward) or a ResponseRollout, got {item!r}")


def _build_rollout(rollout: ResponseRollout, address: Address) -> Node:
    """The chain of segment nodes of one rollout; returns its first segment."""
    where = _where(address)
    length = _check_length(rollout.length, where)
    reward = _check_reward(rollout.reward, where)
    offsets: list[int] = []
    for b, branch in enumerate(rollout.branches):
        if not isinstance(branch, Branch):
            raise UserError(f"{where}: branch {b} must be a Branch, got {type(branch).__name__}")
        off = branch.offset
        if isinstance(off, bool) or not isinstance(off, numbers.Integral) or not 0 <= off < length:
            raise UserError(
                f"{where}: branch {b} offset {off!r} must be an int in 0..{length - 1} "
                f"(inside the rollout's {length} tokens)"
            )
        if offsets and off <= offsets[-1]:
            raise UserError(
                f"{where}: branch offsets must be strictly increasing, got {offsets[-1]} then {off} "
                "(sort them; merge the continuations of equal offsets into one Branch)"
            )
        if len(branch.continuations) == 0:
            raise UserError(f"{where}: branch {b} at offset {off} has no continuations")
        offsets.append(int(off))

    bounds = [0, *offsets, length]
    nodes = [Node(Segment(address, bounds[m], bounds[m + 1])) for m in range(len(bounds) - 1)]
    nodes[-1].reward = reward
    for m, branch in enumerate(rollout.branches):
        nodes[m].children.append(nodes[m + 1])
        for j, item in enumerate(branch.continuations):
            child_address = (*address, m, j)
            child = _as_rollout(item, _where(child_address))
            nodes[m].children.append(_build_rollout(child, child_address))
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
        child.advantage = ((child.value - root_value) + (child.value - node.value)) / math.sqrt(
            child.num_leaves
        )
        _fill_advantages(child, root_value)


def build_tree(responses: Sequence[ResponseRollout]) -> Tree:
    """The tree of one prompt from its G responses, with values and advantages filled in."""
    if len(responses) == 0:
        raise UserError("build_tree needs at least one response")
    root = Node(Segment((), 0, 0))
    for i, response in enumerate(responses):
        if not isinstance(response, ResponseRollout):
            raise UserError(f"response {i} must be a ResponseRollout, got {type(response).__name__}")
        root.children.append(_build_rollout(response, (i,)))
    _fill_values(root)
    root.advantage = 0.0
    _fill_advantages(root, root.value)
    return Tree(root=root, num_responses=len(responses))


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
            lengths = torch.tensor([n.segment.num_tokens for n in trail], dtype=torch.long)
            values = torch.tensor([n.advantage for n in trail], dtype=torch.float64)
            out.append(
                PathSample(
                    leaf=node.segment.rollout,
                    reward=node.reward,
                    segments=tuple(n.segment for n in trail),
                    advantages=values.repeat_interleave(lengths).to(dtype),
                )
            )
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
    rewards = {leaf.reward for leaf in tree.root.leaves()}
    return len(rewards) <= 1
