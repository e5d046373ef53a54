"""Claim: balance, spacing (and its proven limit), few moves, determinism, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.core.claim import achievable_spacing, balanced_counts, claim
from ringstore.core.ring import Ring
from ringstore.errors import RingError

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
POOL = [f"riak{i:02d}@10.1.0.{i}" for i in range(48)]

ring_sizes = st.sampled_from(SIZES)
member_lists = st.lists(st.sampled_from(POOL), min_size=1, max_size=32, unique=True)
n_vals = st.integers(1, 5)


def gaps(owners: tuple[str, ...]) -> dict[str, list[int]]:
    """Each owner's distances to its next partition around the ring."""
    size = len(owners)
    positions: dict[str, list[int]] = {}
    for p, owner in enumerate(owners):
        positions.setdefault(owner, []).append(p)
    return {
        owner: [(ps[(i + 1) % len(ps)] - ps[i]) % size or size for i in range(len(ps))]
        for owner, ps in positions.items()
    }


def short_windows(owners: tuple[str, ...], n: int) -> int:
    """How many windows of n consecutive partitions (wrapping) lack n distinct owners."""
    size = len(owners)
    doubled = owners + owners
    return sum(1 for p in range(size) if len(set(doubled[p : p + n])) < n)


def assert_valid(ring: Ring, members: list[str], n: int) -> None:
    """Balance, and the spacing claim promises (checked on windows, not with its formula)."""
    size = ring.size
    low, high = balanced_counts(len(members), size)
    counts = Counter(ring.owners)
    assert set(counts) <= set(members)
    assert all(low <= counts[m] <= high for m in members), counts
    spacing = achievable_spacing(len(members), size, n)
    doubled = ring.owners + ring.owners
    assert all(len(set(doubled[p : p + spacing])) == spacing for p in range(size))
    if len(members) >= n and -(-size // len(members)) <= size // n:
        assert spacing == n
        assert short_windows(ring.owners, n) == 0


def move_bound(ideal: int, members: int, size: int, n: int) -> int | None:
    """The documented bound on partitions moved by one join or leave (None: rigid)."""
    spacing = achievable_spacing(members, size, n)
    if spacing * -(-size // members) == size:
        return None
    if members >= 2 * n:
        return 2 * ideal + 2
    return 4 * ideal + 2 * n


def layout_exists(size: int, counts: list[int], spacing: int) -> bool:
    """Exhaustive search: can members with these counts fill a ring `spacing` apart?"""
    members = len(counts)
    left = list(counts)
    first = [-1] * members
    last = [-size] * members

    def fits(m: int, p: int) -> bool:
        end = first[m] + size - spacing if first[m] >= 0 else p + size - spacing
        return left[m] == 0 or (end - p) // spacing + 1 >= left[m]

    def place(p: int) -> bool:
        if p == size:
            return True
        tried_fresh: set[int] = set()
        for m in range(members):
            if not left[m] or p - last[m] < spacing:
                continue
            if first[m] >= 0 and first[m] + size - p < spacing:
                continue
            if first[m] < 0:
                if left[m] in tried_fresh:
                    continue  # unused members with equal counts are interchangeable
                tried_fresh.add(left[m])
            saved = first[m], last[m]
            left[m] -= 1
            first[m] = p if first[m] < 0 else first[m]
            last[m] = p
            if all(fits(k, p + 1) for k in range(members)) and place(p + 1):
                return True
            left[m] += 1
            first[m], last[m] = saved
        return False

    return place(0)


# ---------------------------------------------------------------------------------------------
# The spacing promise and its limit


@pytest.mark.parametrize(
    ("size", "members", "n"),
    [(8, m, n) for m in range(1, 9) for n in range(1, 6)]
    + [(16, m, n) for m in range(2, 8) for n in range(2, 6)],
)
def test_achievable_spacing_is_the_best_any_balanced_layout_has(size, members, n):
    low, high = balanced_counts(members, size)
    extra = size - low * members
    counts = [high] * extra + [low] * (members - extra)
    spacing = achievable_spacing(members, size, n)
    assert layout_exists(size, counts, spacing)
    if spacing < min(n, size):
        assert not layout_exists(size, counts, spacing + 1)
    assert_valid(Ring.initial(POOL[:members], size, n), POOL[:members], n)


@pytest.mark.parametrize(
    ("size", "members", "n", "expected"),
    [
        (64, 3, 3, 2),  # 22+21+21 partitions: 22*3 > 64
        (8, 3, 3, 2),
        (1024, 3, 3, 2),
        (64, 5, 5, 4),
        (8, 6, 5, 4),
        (8, 7, 5, 4),
        (64, 4, 3, 3),
        (64, 2, 3, 2),
        (16, 6, 4, 4),
        (1024, 32, 5, 5),
    ],
)
def test_documented_spacing_cases(size, members, n, expected):
    assert achievable_spacing(members, size, n) == expected


@pytest.mark.parametrize(
    ("size", "members", "n"), [(64, 3, 3), (8, 3, 3), (1024, 3, 3), (256, 5, 5), (8, 6, 5)]
)
def test_when_n_cannot_be_met_each_member_falls_short_in_the_fewest_windows(size, members, n):
    ring = Ring.initial(POOL[:members], size, n)
    most = -(-size // members)
    for owner, owner_gaps in gaps(ring.owners).items():
        shortfall = sum(max(0, n - gap) for gap in owner_gaps)
        # A member with c partitions has gaps summing to the ring size: at least c*n - size
        # windows of n hold it twice. The stripe reaches exactly that.
        assert shortfall == max(0, len(owner_gaps) * n - size), owner
    assert short_windows(ring.owners, n) >= most * n - size > 0


def test_three_nodes_on_64_partitions():
    ring = Ring.initial(["a", "b", "c"], 64, 3)
    assert sorted(Counter(ring.owners).values()) == [21, 21, 22]
    assert short_windows(ring.owners, 3) == 2
    assert short_windows(ring.owners, 2) == 0


# ---------------------------------------------------------------------------------------------
# Properties over random memberships


@given(ring_sizes, member_lists, n_vals)
@settings(max_examples=120, deadline=None)
def test_initial_ring_is_balanced_and_spaced(size, members, n):
    ring = claim(members, size, n)
    assert ring.version == 1
    assert_valid(ring, members, n)
    assert claim(list(reversed(members)), size, n) == ring  # member order does not matter


@given(ring_sizes, member_lists, n_vals, st.data())
@settings(max_examples=80, deadline=None)
def test_one_join_or_leave_moves_near_the_minimum(size, members, n, data):
    before = claim(members, size, n)
    if len(members) > 1 and data.draw(st.booleans(), label="leave"):
        gone = data.draw(st.sampled_from(members), label="leaving")
        after_members = [m for m in members if m != gone]
        ideal = before.owners.count(gone)
    else:
        after_members = [*members, data.draw(st.sampled_from(sorted(set(POOL) - set(members))))]
        ideal = size // len(after_members)
    after = claim(after_members, size, n, before)
    assert after.version == 2
    assert_valid(after, after_members, n)
    moved = len(before.transfers_to(after))
    assert moved >= ideal
    bound = move_bound(ideal, len(after_members), size, n)
    if bound is not None:
        assert moved <= bound, (moved, ideal)


@given(ring_sizes, member_lists, n_vals, st.data())
@settings(max_examples=25, deadline=None)
def test_a_series_of_changes_keeps_every_promise(size, members, n, data):
    ring = claim(members, size, n)
    for version in range(2, 7):
        spare = sorted(set(POOL) - set(members))
        if len(members) > 1 and data.draw(st.booleans(), label="leave"):
            gone = data.draw(st.sampled_from(members), label="leaving")
            new_members = [m for m in members if m != gone]
            ideal = ring.owners.count(gone)
        else:
            new_members = [*members, data.draw(st.sampled_from(spare), label="joining")]
            ideal = size // len(new_members)
        new = claim(new_members, size, n, ring)
        assert new.version == version
        assert_valid(new, new_members, n)
        if len(new_members) >= 2 * n and move_bound(ideal, len(new_members), size, n):
            assert len(ring.transfers_to(new)) <= 2 * ideal + 2
        ring, members = new, new_members


@given(ring_sizes, member_lists, n_vals)
@settings(max_examples=40, deadline=None)
def test_claiming_the_same_members_again_moves_nothing(size, members, n):
    ring = claim(members, size, n)
    again = claim(members, size, n, ring)
    assert again.owners == ring.owners
    assert again.version == ring.version + 1


def test_more_members_than_partitions_leaves_some_without():
    members = POOL[:12]
    ring = claim(members, 8, 3)
    assert_valid(ring, members, 3)
    assert len(ring.members) == 8


def test_a_previous_ring_of_another_size_only_gives_its_version():
    old = Ring.initial(POOL[:4], 64)
    new = claim(POOL[:4], 128, 3, old)
    assert new.version == 2
    assert new.owners == Ring.initial(POOL[:4], 128).owners


def test_a_previous_ring_claimed_for_a_smaller_n_is_respaced():
    old = Ring.initial(POOL[:8], 64, 2)
    new = claim(POOL[:8], 64, 4, old)
    assert_valid(new, POOL[:8], 4)


def test_same_arguments_give_the_same_ring_in_another_process():
    script = (
        "from ringstore.core.claim import claim\n"
        "names = [f'n{i}' for i in range(9)]\n"
        "r = claim(names, 256, 3)\n"
        "r = claim(names[1:] + ['x'], 256, 3, r)\n"
        "print(','.join(r.owners))\n"
    )
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1


# ---------------------------------------------------------------------------------------------
# Figures for the lead (pytest -s shows them)

FIGURE_CASES = [
    (64, 3, 3),
    (64, 4, 3),
    (64, 5, 3),
    (64, 8, 3),
    (64, 16, 3),
    (256, 5, 3),
    (256, 12, 3),
    (1024, 8, 3),
    (1024, 31, 3),
    (1024, 32, 3),
    (256, 7, 5),
    (1024, 16, 5),
]


def test_print_moved_partitions_against_the_minimum():
    print()
    print(f"{'Q':>5} {'M':>3} {'N':>2}  {'join: moved/ideal':>18}  {'leave: moved/ideal':>19}")
    for size, count, n in FIGURE_CASES:
        members = POOL[:count]
        before = claim(members, size, n)
        joined = claim([*members, POOL[count]], size, n, before)
        join_ideal = size // (count + 1)
        join_moved = len(before.transfers_to(joined))
        leave_moved = leave_ideal = 0
        for gone in members:
            after = claim([m for m in members if m != gone], size, n, before)
            moved, ideal = len(before.transfers_to(after)), before.owners.count(gone)
            bound = move_bound(ideal, count - 1, size, n)
            assert bound is None or moved <= bound
            leave_moved += moved
            leave_ideal += ideal
        join = f"{join_moved:>5}/{join_ideal:<5} ({join_moved / join_ideal:.2f}x)"
        leave = (
            f"{leave_moved / count:>6.1f}/{leave_ideal / count:<5.1f} "
            f"({leave_moved / leave_ideal:.2f}x)"
        )
        print(f"{size:>5} {count:>3} {n:>2}  {join}  {leave}")
        join_bound = move_bound(join_ideal, count + 1, size, n)
        assert join_bound is None or join_moved <= join_bound


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("members", "size", "n", "previous"),
    [
        ([], 64, 3, None),
        (["a", "a"], 64, 3, None),
        ("abc", 64, 3, None),
        (b"abc", 64, 3, None),
        (None, 64, 3, None),
        (["a", None], 64, 3, None),
        (["a", ""], 64, 3, None),
        (["a", "x" * 300], 64, 3, None),
        (["a"], 63, 3, None),
        (["a"], 4, 3, None),
        (["a"], 2048, 3, None),
        (["a"], "64", 3, None),
        (["a"], 64, 0, None),
        (["a"], 64, 65, None),
        (["a"], 64, True, None),
        (["a"], 64, 3.0, None),
        (["a"], 64, 3, "ring"),
        (["a"], 64, 3, {"version": 1}),
    ],
)
def test_bad_arguments_raise_ring_error(members, size, n, previous):
    with pytest.raises(RingError):
        claim(members, size, n, previous)


def test_members_may_be_any_collection_of_names():
    assert claim({"b", "a"}, 16, 2) == claim(("a", "b"), 16, 2) == claim(iter(["b", "a"]), 16, 2)
