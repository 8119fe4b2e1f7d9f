"""Hand-computed checks of lit_attn.tree (TreeRL-style tree advantages, docs/attnrl.md §6).

Notation: V(n) = mean leaf reward under n, A(n) = [(V(n)-V(root)) + (V(n)-V(parent))]/sqrt(#leaves(n)).
Sample addresses: (i,) = response i; (i, b, j) = continuation j of branch b of response i.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_attn.errors import UserError
from lit_attn.tree import (
    Branch,
    Node,
    PathSample,
    Response,
    Sample,
    Segment,
    Tree,
    all_leaves_equal,
    build_tree,
    paths,
)


def C(length: int, reward: float) -> Sample:
    """A rollout of ``length`` tokens (ids 0, 1, ...) with ``reward``."""
    return Sample(tuple(range(length)), reward)


def R(length: int, reward: float, branches: list | None = None) -> Response:
    """A response of ``length`` tokens with ``reward`` and branch points."""
    return Response(C(length, reward), branches or ())


def _by_segment(tree: Tree) -> dict[tuple[tuple[int, ...], int], Node]:
    """Every non-root node, keyed by (rollout address, segment start)."""
    return {(n.segment.rollout, n.segment.start): n for n in tree.root.walk() if n is not tree.root}


def _by_leaf(tree: Tree) -> dict[tuple[int, ...], PathSample]:
    return {p.leaf: p for p in paths(tree, dtype=torch.float64)}


def _expected(*regions: tuple[int, float]) -> torch.Tensor:
    """Per-token vector from (token count, advantage) regions."""
    return torch.cat([torch.full((n, ), a, dtype=torch.float64) for n, a in regions])


def _check_path(path: PathSample, *regions: tuple[int, float]) -> None:
    expected = _expected(*regions)
    assert path.advantages.shape == (sum(n for n, _ in regions),)
    assert path.num_tokens == expected.numel()
    torch.testing.assert_close(path.advantages, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# (1) no branches


def test_no_branches_is_grpo_like() -> None:
    # G = 4, rewards [1, 0, 0, 1], lengths [3, 2, 4, 1]. Every response is a leaf child of
    # the root. V(root) = 2/4 = 0.5; parent = root, one leaf each:
    #   A = [(r - 0.5) + (r - 0.5)] / sqrt(1) = +1 for r = 1, -1 for r = 0.
    tree = build_tree([R(3, 1.0), R(2, 0.0), R(4, 0.0),
                       R(1, 1.0)])
    assert len(tree.responses) == 4
    assert tree.root.value == 0.5
    assert tree.root.num_leaves == 4
    assert [c.advantage for c in tree.root.children] == [1.0, -1.0, -1.0, 1.0]
    assert all(c.is_leaf for c in tree.root.children)

    ps = paths(tree)
    assert [p.leaf for p in ps] == [(0,), (1,), (2,), (3,)]
    assert [p.reward for p in ps] == [1.0, 0.0, 0.0, 1.0]
    assert not any(p.expanded for p in ps)
    assert ps[0].advantages.dtype == torch.float32
    assert ps[0].advantages.tolist() == [1.0, 1.0, 1.0]
    assert ps[1].advantages.tolist() == [-1.0, -1.0]
    assert ps[2].advantages.tolist() == [-1.0] * 4
    assert ps[3].advantages.tolist() == [1.0]
    assert ps[2].segments == (Segment((2,), 0, 4),)


# ---------------------------------------------------------------------------------------
# (2) one branch point, T = 2


def test_one_branch_point() -> None:
    # Response 0: 10 tokens, reward 0, branch at offset 4 with continuations
    #   (0,0,0): 5 tokens reward 1, (0,0,1): 3 tokens reward 1.
    # Responses 1, 2, 3: lengths 6, 7, 8, rewards 1, 0, 0 (unexpanded).
    # Leaves: 0, 1, 1 | 1 | 0 | 0  -> 6 leaves, sum 3, V(root) = 1/2.
    # Nodes:
    #   P  = response 0 tokens [0, 4): leaves {0, 1, 1}, V = 2/3, n = 3
    #        A(P)  = [(2/3 - 1/2) + (2/3 - 1/2)] / sqrt(3) = (1/3)/sqrt(3)
    #   S  = response 0 tokens [4, 10): leaf 0,  A = (0 - 1/2) + (0 - 2/3) = -7/6
    #   C0 = (0,0,0) [0, 5): leaf 1,             A = (1 - 1/2) + (1 - 2/3) = 5/6
    #   C1 = (0,0,1) [0, 3): leaf 1,             A = 5/6
    #   response 1 (leaf 1): A = (1/2 + 1/2) = 1; responses 2, 3 (leaf 0): A = -1
    tree = build_tree([
        R(10, 0.0, [Branch(4, [C(5, 1.0), C(3, 1.0)])]),
        R(6, 1.0),
        R(7, 0.0),
        R(8, 0.0),
    ])
    a_p = (1 / 3) / math.sqrt(3)
    assert tree.root.value == pytest.approx(0.5)
    assert tree.root.num_leaves == 6
    nodes = _by_segment(tree)
    p, s = nodes[((0,), 0)], nodes[((0,), 4)]
    c0, c1 = nodes[((0, 0, 0), 0)], nodes[((0, 0, 1), 0)]
    assert p.segment == Segment((0,), 0, 4) and s.segment == Segment((0,), 4, 10)
    assert p.children == [s, c0, c1]  # original next segment first, then continuations
    assert (p.num_leaves, s.num_leaves, c0.num_leaves) == (3, 1, 1)
    assert p.value == pytest.approx(2 / 3) and p.reward is None
    assert (s.value, c0.value, c1.value) == (0.0, 1.0, 1.0)
    assert p.advantage == pytest.approx(a_p)
    assert s.advantage == pytest.approx(-7 / 6)
    assert c0.advantage == pytest.approx(5 / 6) and c1.advantage == pytest.approx(5 / 6)
    assert [nodes[((i,), 0)].advantage for i in (1, 2, 3)] == [1.0, -1.0, -1.0]

    ps = paths(tree, dtype=torch.float64)
    assert [q.leaf for q in ps] == [(0,), (0, 0, 0), (0, 0, 1), (1,), (2,), (3,)]
    by = {q.leaf: q for q in ps}
    # original response: 4 tokens of A(P) then 6 of A(S) -> 10 tokens
    _check_path(by[(0,)], (4, a_p), (6, -7 / 6))
    # continuations: the shared 4-token prefix, then their own tokens
    _check_path(by[(0, 0, 0)], (4, a_p), (5, 5 / 6))
    _check_path(by[(0, 0, 1)], (4, a_p), (3, 5 / 6))
    _check_path(by[(1,)], (6, 1.0))
    _check_path(by[(3,)], (8, -1.0))
    assert [by[k].reward for k in [(0,), (0, 0, 0), (0, 0, 1)]] == [0.0, 1.0, 1.0]
    assert by[(0, 0, 1)].segments == (Segment((0,), 0, 4), Segment((0, 0, 1), 0, 3))
    assert by[(0, 0, 1)].expanded and not by[(1,)].expanded


# ---------------------------------------------------------------------------------------
# (3) two branch points on one response


def test_two_branch_points() -> None:
    # Response 0: 12 tokens, reward 1; branch 0 at offset 3 -> (4, 0), (5, 0);
    #             branch 1 at offset 8 -> (2, 1), (6, 0).  Response 1: 5 tokens, reward 0.
    # Tree: P0 = r0[0,3) -> {S1 = r0[3,8), (0,0,0), (0,0,1)};  S1 -> {S2 = r0[8,12), (0,1,0), (0,1,1)}
    # Leaves: S2 1, (0,1,0) 1, (0,1,1) 0, (0,0,0) 0, (0,0,1) 0, r1 0 -> sum 2 / 6, V(root) = 1/3
    # V(S1) = 2/3 (n 3), V(P0) = 2/5 (n 5)
    # A(P0) = 2 (2/5 - 1/3) / sqrt(5) = (2/15)/sqrt(5)
    # A(S1) = [(2/3 - 1/3) + (2/3 - 2/5)] / sqrt(3) = (1/3 + 4/15)/sqrt(3) = (3/5)/sqrt(3)
    # A(S2) = A(0,1,0) = (1 - 1/3) + (1 - 2/3) = 1;  A(0,1,1) = (0 - 1/3) + (0 - 2/3) = -1
    # A(0,0,0) = A(0,0,1) = (0 - 1/3) + (0 - 2/5) = -11/15;  A(r1) = 2 (0 - 1/3) = -2/3
    tree = build_tree([
        R(12, 1.0, [Branch(3, [C(4, 0.0), C(5, 0.0)]), Branch(8, [C(2, 1.0), C(6, 0.0)])]),
        R(5, 0.0),
    ])
    a_p0, a_s1 = (2 / 15) / math.sqrt(5), (3 / 5) / math.sqrt(3)
    nodes = _by_segment(tree)
    p0, s1, s2 = nodes[((0,), 0)], nodes[((0,), 3)], nodes[((0,), 8)]
    assert p0.segment.end == 3 and s1.segment.end == 8 and s2.segment.end == 12
    assert p0.children[0] is s1 and s1.children[0] is s2
    assert [c.segment.rollout for c in p0.children[1:]] == [(0, 0, 0), (0, 0, 1)]
    assert [c.segment.rollout for c in s1.children[1:]] == [(0, 1, 0), (0, 1, 1)]
    assert tree.root.value == pytest.approx(1 / 3)
    assert (p0.num_leaves, s1.num_leaves) == (5, 3)
    assert p0.value == pytest.approx(2 / 5) and s1.value == pytest.approx(2 / 3)
    assert p0.advantage == pytest.approx(a_p0)
    assert s1.advantage == pytest.approx(a_s1)
    assert s2.advantage == pytest.approx(1.0)
    assert nodes[((0, 1, 0), 0)].advantage == pytest.approx(1.0)
    assert nodes[((0, 1, 1), 0)].advantage == pytest.approx(-1.0)
    assert nodes[((0, 0, 0), 0)].advantage == pytest.approx(-11 / 15)
    assert nodes[((0, 0, 1), 0)].advantage == pytest.approx(-11 / 15)
    assert nodes[((1,), 0)].advantage == pytest.approx(-2 / 3)

    by = _by_leaf(tree)
    assert list(by) == [(0,), (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1,)]
    _check_path(by[(0,)], (3, a_p0), (5, a_s1), (4, 1.0))  # 12 tokens
    _check_path(by[(0, 0, 0)], (3, a_p0), (4, -11 / 15))  # 7 tokens
    _check_path(by[(0, 0, 1)], (3, a_p0), (5, -11 / 15))  # 8 tokens
    _check_path(by[(0, 1, 0)], (3, a_p0), (5, a_s1), (2, 1.0))  # 10 tokens
    _check_path(by[(0, 1, 1)], (3, a_p0), (5, a_s1), (6, -1.0))  # 14 tokens
    _check_path(by[(1,)], (5, -2 / 3))
    assert by[(0, 1, 0)].segments == (
        Segment((0,), 0, 3), Segment((0,), 3, 8), Segment((0, 1, 0), 0, 2)
    )


# ---------------------------------------------------------------------------------------
# (4) coverage


def test_paths_cover_every_leaf_once() -> None:
    tree = build_tree([
        R(9, 1.0, [Branch(2, [C(3, 0.0), C(1, 1.0)]), Branch(5, [C(4, 0.0)])]),
        R(3, 0.0, [Branch(1, [C(2, 1.0), C(2, 0.5)])]),
    ])
    ps = paths(tree)
    assert len(ps) == tree.root.num_leaves == sum(n.is_leaf for n in tree.root.walk()) == 7  # 1 + 2 + 1 and 1 + 2
    assert len({p.leaf for p in ps}) == 7
    for p in ps:
        assert p.advantages.numel() == p.num_tokens
        assert all(a.end == b.start or a.rollout != b.rollout for a, b in zip(p.segments, p.segments[1:]))


# ---------------------------------------------------------------------------------------
# (5) zero-advantage filter


@pytest.mark.parametrize("reward", [0.0, 1.0])
def test_all_leaves_equal_true_means_zero_advantages(reward: float) -> None:
    tree = build_tree([
        R(5, reward, [Branch(2, [C(3, reward), C(4, reward)])]),
        R(4, reward),
    ])
    assert all_leaves_equal(tree)
    assert all(n.advantage == 0.0 for n in tree.root.walk())
    assert all(not p.advantages.any() for p in paths(tree))


def test_all_leaves_equal_false() -> None:
    # only a continuation differs from the rest
    tree = build_tree([
        R(5, 0.0, [Branch(2, [C(3, 0.0), C(4, 1.0)])]),
        R(4, 0.0),
    ])
    assert not all_leaves_equal(tree)
    assert all_leaves_equal(build_tree([R(3, 1.0)]))
    assert not all_leaves_equal(build_tree([R(3, 1.0), R(3, 0.0)]))


def test_fractional_rewards_are_allowed() -> None:
    # V(root) = (0.5 + 0.25)/2 = 0.375; A(r0) = 2 (0.5 - 0.375) = 0.25, A(r1) = -0.25
    tree = build_tree([R(2, 0.5), R(2, 0.25)])
    assert [c.advantage for c in tree.root.children] == pytest.approx([0.25, -0.25])


# ---------------------------------------------------------------------------------------
# (6) input validation


@pytest.mark.parametrize(
    ("responses", "message"),
    [
        ([], "at least one response"),
        ([R(5, float("nan"))], r"response 0: reward must be a number in \[0, 1\], got nan"),
        ([R(5, 1.5)], r"reward must be a number in \[0, 1\]"),
        ([R(5, -0.1)], r"reward must be a number in \[0, 1\]"),
        ([R(5, float("inf"))], r"reward must be a number"),
        ([R(5, "1")], r"reward must be a number"),
        ([Response(Sample((1, 2), 1.0, logprobs=(0.0,)))], "1 log-probs for 2 tokens"),
        ([R(5, 1.0, [Branch(5, [C(2, 1.0)])])], r"branch 0 offset 5 must be an int in 0\.\.4"),
        ([R(5, 1.0, [Branch(-2, [C(2, 1.0)])])], "offset -2"),
        (
            [R(9, 1.0, [Branch(4, [C(2, 1.0)]), Branch(2, [C(2, 1.0)])])],
            "branch offsets must be strictly increasing, got 4 then 2",
        ),
        (
            [R(9, 1.0, [Branch(4, [C(2, 1.0)]), Branch(4, [C(2, 1.0)])])],
            "strictly increasing, got 4 then 4",
        ),
        ([R(5, 1.0, [Branch(2, [])])], "branch 0 at offset 2 has no continuations"),
        (
            [R(3, 1.0), R(5, 1.0, [Branch(2, [C(2, float("nan"))])])],
            r"response 1, branch 0 continuation 0: reward must be a number in \[0, 1\], got nan",
        ),
        ([R(5, 1.0, [Branch(2, [(2, 1.0)])])], "continuation 0: expected a Sample, got tuple"),
        ([(5, 1.0)], "response 0 must be a Response"),
    ],
)
def test_bad_input_is_one_line_value_error(responses: list, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build_tree(responses)
    assert isinstance(info.value, UserError)
    assert "\n" not in str(info.value)


def test_a_branch_at_offset_0_is_a_fresh_sample_under_an_empty_node():
    tree = build_tree([R(4, 1.0, [Branch(0, [C(3, 0.0), C(5, 0.0)])]), R(2, 0.0)])
    first = tree.root.children[0]
    assert first.segment.num_tokens == 0 and len(first.children) == 3
    # V(root) = 1/4; the empty node's value is 1/3; its children's advantages are measured against it
    got = {p.leaf: p.advantages for p in paths(tree)}
    assert got[(0,)].shape == (4,) and got[(0, 0, 0)].shape == (3,)
    expected = ((1.0 - 0.25) + (1.0 - 1 / 3)) / 1.0
    assert torch.allclose(got[(0,)], torch.full((4,), expected))


def test_paths_carry_the_tokens_logprobs_and_versions_of_their_segments():
    response = Sample((10, 11, 12, 13), 0.0, logprobs=(-0.1, -0.2, -0.3, -0.4), version=3)
    continuation = Sample((20, 21), 1.0, logprobs=(-1.0, -2.0), version=4)
    tree = build_tree([Response(response, [Branch(2, [continuation])]), Response(Sample((30,), 1.0), ())])
    by = {p.leaf: p for p in paths(tree)}
    branch = by[(0, 0, 0)]
    assert branch.tokens == (10, 11, 20, 21) and branch.versions == (3, 3, 4, 4)
    assert branch.logprobs == (-0.1, -0.2, -1.0, -2.0)
    assert by[(0,)].tokens == (10, 11, 12, 13) and by[(0,)].logprobs == (-0.1, -0.2, -0.3, -0.4)
    assert by[(1,)].logprobs is None  # a rollout without log-probs gives a path without them
