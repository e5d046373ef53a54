"""Claim: choose the owner of every partition for a member list, from the previous ring if any.

Rules, in priority order (Q = ring size, M = members, N = n_val):

1. Balance, always: every member owns floor(Q/M) or ceil(Q/M) partitions.
2. Spacing, always: any two partitions of one member are at least
   `achievable_spacing(M, Q, N)` = min(N, floor(Q / ceil(Q/M))) apart around the ring, so
   any that many consecutive partitions have distinct owners. That is N (every N
   consecutive partitions have N distinct owners) exactly when rule 1 allows it at all:
   when ceil(Q/M) <= floor(Q/N). Otherwise a member owning c = ceil(Q/M) partitions must
   have two within floor(Q/c) of each other, so floor(Q/c) < N is the best spacing there
   is, and the one guaranteed (tests/core/test_claim.py checks both by exhaustive search on
   small rings). With Q a power of two and M >= N, that happens when M == N is not a power
   of two (3 nodes at N=3: 64 = 22+21+21 and 22*3 > 64, so 2 windows of 3 partitions out
   of 64 hold a node twice), and when M > N only on rings smaller than N*(N+1) (Q=8 with 6
   or 7 nodes at N=5). Then every gap is at most N, so each member is short of N distinct
   in the fewest windows possible (c*N - Q), and Ring.preflist skips a repeated owner, so
   replicas still land on N distinct nodes. With M < N the spacing is at most M, and every
   window of N holds every node anyway.
3. Few moves. From the previous ring, partitions move only to members below their target
   count, and only from members that left, members whose partitions break the spacing, and
   members above their target. Measured (and asserted by the tests): with M >= 2N after a
   join or leave, it moves at most 2x the minimum + 2 (the minimum being floor(Q/M) for a
   join, the leaving node's share for a leave) and usually exactly the minimum; closer to
   the spacing's limit, up to about 4x. "Rigid" member lists, where the spacing times
   ceil(Q/M) is Q (M=2; M == N a power of two), have one layout up to relabelling, so a
   change into one moves whatever that layout needs.

How (riak_core's claim v2 idea, made to keep rule 2):

- Greedy: the new targets go to who holds most (fewest moves). Unowned partitions (their
  owner left, or they were freed to restore the spacing) go first, the hardest to place
  first, each to a member below target that the spacing allows. Then each member below
  target takes, from members above it, a partition far from its own (an even spread)
  without wasting the room its later ones need, from the giver with most surplus.
- Chains, when nobody may take a partition: a member with one partition too near it moves
  into it, another moves into the partition so vacated, ... until a member below target
  may take the last vacated one (breadth-first, shortest first; undone if a member's
  partitions end up crowded).
- Fresh layout, when the greedy fails or moved more than needed (the fewer moves wins),
  and for a first ring. Striped when N cannot be met, or the layout is rigid: c = ceil(Q/M)
  rows of floor(Q/c) or floor(Q/c)+1 partitions; the h members owning c take the first h
  columns of every row (their gaps are the row lengths, >= floor(Q/c)) and the others the
  remaining cells round-robin (M apart). Otherwise shuffled (see `_shuffled_slots`): after
  a leave, a stripe's orphaned partitions can only be taken by one member (its neighbours
  are the same everywhere), a shuffled layout's by many. Either is relabelled (the stripe
  also rotated) to agree most with the previous ring.

Deterministic for its arguments (seeds are fixed strings). Measured on Q=1024 with 32 nodes:
a first ring, a join or a leave each take 10-40 ms.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import deque
from collections.abc import Iterable, Sequence

from ringstore.core.ring import Ring, check_node_name, check_ring_size
from ringstore.errors import RingError

SHUFFLE_ATTEMPTS = 8  # seeded tries at a shuffled layout before falling back to the stripe
MAX_FRESH_ROTATIONS = 16  # rotations tried when fitting the stripe to the old ring
MAX_RELEASE_TRIES = 16  # partitions offered to the chain search when a taker is stuck
WASTE_SLACK_FRACTION = 0.1  # below this share of spare room, a taker avoids wasting room
UNOWNED = ""  # marks a partition whose owner left or was freed; never a valid node name


def achievable_spacing(member_count: int, ring_size: int, n_val: int) -> int:
    """The spacing claim guarantees: min(N, floor(Q / ceil(Q/M))), the best balance allows."""
    most = -(-ring_size // member_count)
    return min(n_val, ring_size // most)


def balanced_counts(member_count: int, ring_size: int) -> tuple[int, int]:
    """(floor(Q/M), ceil(Q/M)): the only partition counts a member may own."""
    low, extra = divmod(ring_size, member_count)
    return low, low + (1 if extra else 0)


def claim(members: Iterable[str], ring_size: int, n_val: int, previous: Ring | None = None) -> Ring:
    """A new ring for `members` (version previous.version + 1, or 1); see the module doc.

    Deterministic: the same arguments give the same ring, whatever the order of `members`.
    A `previous` ring of another size is ignored except for its version.
    """
    if isinstance(members, str | bytes) or not isinstance(members, Iterable):
        raise RingError("members must be a collection of node names")
    names = sorted(check_node_name(name) for name in members)
    if not names:
        raise RingError("a ring needs at least one member")
    if len(set(names)) != len(names):
        raise RingError("members must be distinct")
    check_ring_size(ring_size)
    if type(n_val) is not int or not 1 <= n_val <= ring_size:
        raise RingError(f"n_val must be an int from 1 to the ring size, got {n_val!r:.80}")
    if previous is not None and not isinstance(previous, Ring):
        raise RingError(f"previous must be a Ring or None, got {type(previous)}")
    spacing = achievable_spacing(len(names), ring_size, n_val)
    if previous is None or previous.size != ring_size:
        owners = _fresh(names, ring_size, spacing, spacing < n_val, None)
    else:
        owners = _best_from(previous.owners, names, spacing, spacing < n_val)
    version = previous.version + 1 if previous is not None else 1
    return Ring(version, tuple(owners))


def _best_from(old: tuple[str, ...], names: list[str], spacing: int, striped: bool) -> list[str]:
    size = len(old)
    if spacing * -(-size // len(names)) == size:
        # Rigid: every member must own exactly every spacing-th partition, so only the
        # striped layout fits; relabelling it is the only freedom left.
        return _fresh(names, size, spacing, True, old)
    greedy = _Greedy(old, names, spacing)
    owners = greedy.run()
    if owners is not None:
        moved = _moves(old, owners)
        if moved <= greedy.needed_moves:
            return owners
    fresh = _fresh(names, size, spacing, striped, old)
    if owners is None or _moves(old, fresh) < moved:
        return fresh
    return owners


def _moves(old: Sequence[str], new: Sequence[str]) -> int:
    return sum(1 for a, b in zip(old, new, strict=True) if a != b)


def _distances(positions: Sequence[int], size: int) -> list[int]:
    """For every partition, the distance around the ring to the nearest of `positions`."""
    if not positions:
        return [size] * size
    ordered = sorted(positions)
    dist = [0] * size
    for i, start in enumerate(ordered):
        gap = (ordered[(i + 1) % len(ordered)] - start) % size or size
        # Counting up from `start`, then down towards the next position.
        run = [*range(gap // 2 + 1), *range((gap + 1) // 2 - 1, 0, -1)]
        end = start + gap
        if end <= size:
            dist[start:end] = run
        else:
            dist[start:] = run[: size - start]
            dist[: end - size] = run[size - start :]
    return dist


def _crowded(positions: list[int], size: int, spacing: int) -> list[int]:
    """Which of one member's partitions to give up so the rest are `spacing` apart."""
    count = len(positions)
    if count < 2 or spacing < 2:
        return []
    ordered = sorted(positions)
    gaps = [(ordered[(i + 1) % count] - ordered[i]) % size for i in range(count)]
    if min(gaps) >= spacing:
        return []
    # Start right after the widest gap: the walk's last kept partition then has most room.
    start = (gaps.index(max(gaps)) + 1) % count
    walk = ordered[start:] + ordered[:start]
    kept = [walk[0]]
    freed = []
    for p in walk[1:]:
        if (p - kept[-1]) % size >= spacing:
            kept.append(p)
        else:
            freed.append(p)
    while len(kept) > 1 and (kept[0] - kept[-1]) % size < spacing:
        freed.append(kept.pop())
    return freed


class _Greedy:
    """Hand partitions to members below their target count: first the unowned ones (their
    owner left, or they broke the spacing), then those of members above their target.
    """

    def __init__(self, old: tuple[str, ...], names: list[str], spacing: int) -> None:
        self.size = len(old)
        self.spacing = spacing
        self.names = names
        self.distance_cache: dict[str, list[int]] = {}
        member_set = set(names)
        self.owners = [owner if owner in member_set else UNOWNED for owner in old]
        self.held: dict[str, set[int]] = {name: set() for name in names}
        for p, owner in enumerate(self.owners):
            if owner:
                self.held[owner].add(p)
        for name in names:
            for p in _crowded(list(self.held[name]), self.size, spacing):
                self._set_owner(p, UNOWNED)
        low, extra = divmod(self.size, len(names))
        # Those holding most keep the extra partitions: fewest moves.
        by_holding = sorted(names, key=lambda name: (-len(self.held[name]), name))
        self.target = {name: low + (1 if i < extra else 0) for i, name in enumerate(by_holding)}
        self.needed_moves = sum(self._need(name) for name in names if self._need(name) > 0)

    def run(self) -> list[str] | None:
        """The new owners, or None if no way was found to keep the spacing."""
        if not self._place_unowned():
            return None
        offers: dict[str, _Offers] = {}
        while True:
            needy = [name for name in self.names if self._need(name) > 0]
            if not needy:
                return self.owners
            taker = max(needy, key=self._need)
            if taker not in offers:
                offers[taker] = _Offers(self, taker)
            p = offers[taker].pop()
            if p >= 0:
                self._set_owner(p, taker)
                offers[taker].took(p)
            elif self._release_and_fill():
                offers.clear()
            else:
                return None

    def _need(self, name: str) -> int:
        return self.target[name] - len(self.held[name])

    def _distance(self, name: str) -> list[int]:
        cached = self.distance_cache.get(name)
        if cached is None:
            cached = _distances(list(self.held[name]), self.size)
            self.distance_cache[name] = cached
        return cached

    def _set_owner(self, p: int, owner: str) -> None:
        previous = self.owners[p]
        if previous:
            self.held[previous].discard(p)
            self.distance_cache.pop(previous, None)
        self.owners[p] = owner
        if not owner:
            return
        self.held[owner].add(p)
        dist = self.distance_cache.get(owner)
        if dist is not None:
            size = self.size
            dist[p] = 0
            for step in (1, -1):
                for k in range(1, size):
                    q = (p + step * k) % size
                    if dist[q] <= k:
                        break
                    dist[q] = k

    def _place_unowned(self) -> bool:
        """Place each unowned partition with a member below target that can take it, the one
        needing most; partitions that fewest can take go first. When none can take one,
        make room with a chain of moves.
        """
        spacing = self.spacing
        needy = [name for name in self.names if self._need(name) > 0]
        unowned = [p for p, owner in enumerate(self.owners) if not owner]
        able_at_start = {
            p: sum(1 for name in needy if self._distance(name)[p] >= spacing) for p in unowned
        }
        for hole in sorted(unowned, key=lambda p: (able_at_start[p], p)):
            if self.owners[hole]:
                continue
            able = [
                name
                for name in self.names
                if self._need(name) > 0 and self._distance(name)[hole] >= spacing
            ]
            if able:
                taker = max(able, key=lambda name: (self._need(name), self._distance(name)[hole]))
                self._set_owner(hole, taker)
            elif not self._fill(hole, overfill=True):
                return False
        return True

    def _release_and_fill(self) -> bool:
        """Unstick the takers: some member above target gives up a partition that a chain of
        moves can bring to a member below target.
        """
        offered = sorted(
            (p for name in self.names if self._need(name) < 0 for p in self.held[name]),
            key=lambda p: (self._need(self.owners[p]), p),
        )
        for p in offered[:MAX_RELEASE_TRIES]:
            giver = self.owners[p]
            self._set_owner(p, UNOWNED)
            if self._fill(p, overfill=False):
                return True
            self._set_owner(p, giver)
        return False

    def _fill(self, hole: int, *, overfill: bool) -> bool:
        """Give the unowned `hole` to a member below target through a chain of moves: a
        member m1 with one partition q1 too near the hole moves from q1 into it, m2 moves
        from q2 into q1, ... and a member below target with none too near takes the last
        vacated one. Breadth-first, so the chain is as short as possible. With `overfill`,
        if no such chain exists, one ending at a member at target will do (it then gives
        up another partition later).
        """
        size, spacing, owners = self.size, self.spacing, self.owners
        # vacated partition -> (the partition its mover fills, the mover)
        came_from: dict[int, tuple[int, str]] = {hole: (-1, UNOWNED)}
        queue = deque([hole])
        spare: tuple[int, str] | None = None
        while queue:
            vacated = queue.popleft()
            moved: dict[int, str] = {vacated: UNOWNED}
            p = vacated
            while p != hole:
                p, mover = came_from[p]
                moved[p] = mover
            near: dict[str, list[int]] = {}
            for k in range(1 - spacing, spacing):
                q = (vacated + k) % size
                owner = moved.get(q, owners[q])
                if k and owner:
                    near.setdefault(owner, []).append(q)
            free = [name for name in self.names if name not in near]
            takers = [name for name in free if self._need(name) > 0]
            if takers:
                taker = max(takers, key=lambda name: (self._need(name), -self.names.index(name)))
                if self._apply_chain(vacated, taker, came_from):
                    return True
            elif free and spare is None:
                spare = (vacated, free[0])
            for name, mine in sorted(near.items()):
                if len(mine) == 1 and mine[0] not in came_from:
                    came_from[mine[0]] = (vacated, name)
                    queue.append(mine[0])
        return overfill and spare is not None and self._apply_chain(*spare, came_from)

    def _apply_chain(self, last: int, taker: str, came_from: dict[int, tuple[int, str]]) -> bool:
        undo = [(last, self.owners[last])]
        self._set_owner(last, taker)
        moved = [last]
        p = last
        while True:
            filled, mover = came_from[p]
            if filled < 0:
                break
            undo.append((filled, self.owners[filled]))
            self._set_owner(filled, mover)
            moved.append(filled)
            p = filled
        if all(self._spaced(q) for q in moved):
            return True
        for q, owner in reversed(undo):
            self._set_owner(q, owner)
        return False

    def _spaced(self, p: int) -> bool:
        owner, size, owners = self.owners[p], self.size, self.owners
        return all(
            owners[(p + k) % size] != owner and owners[(p - k) % size] != owner
            for k in range(1, self.spacing)
        )


class _Offers:
    """The partitions of members above target that one taker could take, best first.

    One lazy heap per giver: a partition's key (see `_key`) gets worse as the taker gains
    partitions, so an entry whose key is unchanged when it reaches the top is taken (the
    waste term can turn back off near the end; then the choice is merely good, not the
    best). Chains of moves change keys arbitrarily, so the caller drops its _Offers.
    """

    def __init__(self, greedy: _Greedy, taker: str) -> None:
        self.greedy = greedy
        self.taker = taker
        size, spacing = greedy.size, greedy.spacing
        self.mine = sorted(greedy.held[taker])
        if self.mine:
            pairs = zip(self.mine, self.mine[1:] + self.mine[:1], strict=True)
            self.room = sum(((b - a) % size or size) // spacing - 1 for a, b in pairs)
        else:
            self.room = size // spacing
        self.roomy = max(spacing, size // max(1, greedy.target[taker]))
        self.heaps: dict[str, list[tuple[tuple[int, int, int, int], int]]] = {}
        for giver in greedy.names:
            if greedy._need(giver) < 0:
                heap = []
                for p in greedy.held[giver]:
                    key = self._key(p, giver)
                    if key is not None:
                        heap.append((key, p))
                heapq.heapify(heap)
                self.heaps[giver] = heap

    def _key(self, p: int, giver: str) -> tuple[int, int, int, int] | None:
        """Smaller is better, None if the taker may not take `p` from `giver` now."""
        greedy = self.greedy
        far = greedy._distance(self.taker)[p]
        if greedy.owners[p] != giver or far < greedy.spacing:
            return None
        waste = 0
        need = greedy._need(self.taker)
        if self.mine and self.room - need < need * WASTE_SLACK_FRACTION:
            size, spacing, mine = greedy.size, greedy.spacing, self.mine
            i = bisect.bisect(mine, p)
            before, after = (p - mine[i - 1]) % size, (mine[i % len(mine)] - p) % size
            waste = (before + after) // spacing - before // spacing - after // spacing
        return (waste, -min(far, self.roomy), -far, p)

    def pop(self) -> int:
        """The best partition to take now, or -1 if there is none.

        Best: one that wastes none of the room left for the taker's later partitions (only
        minded when room runs short); then any as far from its own as an even spread would
        put them; then from the giver with most surplus (givers run dry evenly, so late
        takers still find partitions); then farther; then the lowest.
        """
        best = -1
        best_key: tuple[int, int, int, int, int] | None = None
        for giver, heap in self.heaps.items():
            surplus = -self.greedy._need(giver)
            if surplus <= 0:
                continue
            while heap:
                key, p = heap[0]
                now = self._key(p, giver)
                if now == key:
                    break
                if now is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (now, p))
            if heap:
                (waste, roomy, far, p), _ = heap[0]
                rank = (waste, roomy, -surplus, far, p)
                if best_key is None or rank < best_key:
                    best, best_key = p, rank
        return best

    def took(self, p: int) -> None:
        size, spacing, mine = self.greedy.size, self.greedy.spacing, self.mine
        if mine:
            i = bisect.bisect(mine, p)
            before, after = (p - mine[i - 1]) % size, (mine[i % len(mine)] - p) % size
            waste = (before + after) // spacing - before // spacing - after // spacing
            self.room -= 1 + waste
        else:
            self.room -= 1
        bisect.insort(mine, p)


def _fresh(
    names: list[str], size: int, spacing: int, striped: bool, old: tuple[str, ...] | None
) -> list[str]:
    """A new layout, labelled (and, if striped, rotated) to agree most with `old`.

    Striped when asked (N distinct owners per N partitions cannot be had: the stripe keeps
    the fewest windows short of N) or when nothing else fits; shuffled otherwise.
    """
    slots = None if striped else _shuffled_slots(len(names), size, spacing)
    shifts = 1
    if slots is None:
        slots = _striped_slots(len(names), size)
        shifts = min(size, MAX_FRESH_ROTATIONS)
    if old is None:
        return [names[s] for s in slots]
    best: tuple[int, list[str]] | None = None
    for shift in range(shifts):
        rotated = slots[shift:] + slots[:shift]
        label = _labels(rotated, old, names)
        owners = [label[s] for s in rotated]
        kept = size - _moves(old, owners)
        if best is None or kept > best[0]:
            best = (kept, owners)
    assert best is not None
    return best[1]


def _shuffled_slots(member_count: int, size: int, spacing: int) -> list[int] | None:
    """Slots in rounds of every slot once, each round in a different (seeded, fixed) order.

    Unlike the stripe, the neighbours of a slot differ from round to round, so when a member
    leaves, different members can take the partitions it owned. Built partition by partition:
    a random slot among those with most partitions left that the spacing allows, unless
    taking it would leave some slot unable to place its remaining partitions before its
    deadline (earliest-deadline-first says so); then the slot with the earliest deadline.
    Only used with room to spare (spacing below the most balance allows); returns None if
    every seeded attempt gets stuck, and the caller uses the stripe.
    """
    most = -(-size // member_count)
    if spacing * most == size:
        return None
    heavy = size % member_count or member_count
    for attempt in range(SHUFFLE_ATTEMPTS):
        rng = random.Random(f"ringstore.claim/{member_count}/{size}/{spacing}/{attempt}")
        left = [most] * heavy + [most - 1] * (member_count - heavy)
        first = [-1] * member_count
        last = [-size] * member_count
        # due[slot]: the latest partition its next one can go in and still leave room for
        # the rest before it wraps around to its first (unbounded once it has none left).
        due = [size - 1 - (count - 1) * spacing for count in left]
        slots: list[int] = []
        every_slot = range(member_count)
        for p in range(size):
            free_since = p - spacing
            able = [slot for slot in every_slot if left[slot] and last[slot] <= free_since]
            if p > size - spacing:
                able = [
                    slot for slot in able if first[slot] < 0 or first[slot] > p - size + spacing - 1
                ]
            if not able:
                break
            top = max(left[slot] for slot in able)
            pick = rng.choice([slot for slot in able if left[slot] == top])
            if not _still_feasible(due, pick, _due_after(pick, p, first, left, size, spacing), p):
                pick = min(able, key=lambda slot: (due[slot], slot))
            due[pick] = _due_after(pick, p, first, left, size, spacing)
            left[pick] -= 1
            if first[pick] < 0:
                first[pick] = p
            last[pick] = p
            slots.append(pick)
        else:
            return slots
    return None


def _due_after(
    slot: int, p: int, first: list[int], left: list[int], size: int, spacing: int
) -> int:
    """The slot's deadline once it takes partition p."""
    if left[slot] == 1:
        return 2 * size
    start = first[slot] if first[slot] >= 0 else p
    return start + size - spacing - (left[slot] - 2) * spacing


def _still_feasible(due: list[int], pick: int, picked_due: int, p: int) -> bool:
    """Earliest-deadline-first can still meet every deadline after `pick` takes p."""
    before = due[pick]
    due[pick] = picked_due
    try:
        if min(due) > p + len(due):
            return True
        return all(d > p + k for k, d in enumerate(sorted(due)))
    finally:
        due[pick] = before


def _labels(slots: list[int], old: tuple[str, ...], names: list[str]) -> list[str]:
    """Give each slot the member that already owns most of its partitions (greedy)."""
    overlap: dict[tuple[int, str], int] = {}
    for slot, owner in zip(slots, old, strict=True):
        overlap[slot, owner] = overlap.get((slot, owner), 0) + 1
    member_set = set(names)
    ranked = sorted(
        ((count, slot, owner) for (slot, owner), count in overlap.items() if owner in member_set),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    label: list[str | None] = [None] * len(names)
    taken: set[str] = set()
    for _, slot, owner in ranked:
        if label[slot] is None and owner not in taken:
            label[slot] = owner
            taken.add(owner)
    spare = iter(name for name in names if name not in taken)
    return [name if name is not None else next(spare) for name in label]


def _striped_slots(member_count: int, size: int) -> list[int]:
    """Slot (0..M-1) owning each partition in the fresh layout; slots 0..h-1 own ceil(Q/M)."""
    rows = -(-size // member_count)
    heavy = size % member_count or member_count
    short_row, long_rows = divmod(size, rows)
    light = member_count - heavy
    slots: list[int] = []
    turn = 0
    for row in range(rows):
        slots.extend(range(heavy))
        for _ in range(short_row + (1 if row < long_rows else 0) - heavy):
            slots.append(heavy + turn % light)
            turn += 1
    return slots
