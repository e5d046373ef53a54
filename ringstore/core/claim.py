"""Claim: choose the owner of every partition for a member list, from the previous ring if any.

Rules, in priority order (Q = ring size, M = members, N = n_val):

1. Balance, always: every member owns floor(Q/M) or ceil(Q/M) partitions.
2. Spacing, always: two partitions of one member are at least `achievable_spacing(M, Q, N)`
   apart around the ring, so that many consecutive partitions have distinct owners. That is
   N whenever N distinct owners for every N consecutive partitions can be had at all with
   rule 1, which is exactly when ceil(Q/M) <= floor(Q/N). Otherwise a member owning
   c = ceil(Q/M) partitions must have two within floor(Q/c) of each other, so the best
   spacing is floor(Q/c) < N, and that is what we guarantee. With Q a power of two and
   M >= N this happens only when M == N is not a power of two (3 nodes at N=3: Q=64 gives
   22+21+21 partitions, and 22*3 > 64), or on tiny rings (Q=8 with 6 or 7 nodes at N >= 5).
   The preference list then skips the repeated owner (see Ring.preflist), so replicas stay
   on distinct nodes anyway. With M < N the spacing is at most M: every window holds all.
3. Few moves: starting from the previous ring, partitions go only from members above their
   target count (or from members that left, or that break the spacing) to members below it;
   a join or leave moves about Q/(M+1), resp. the leaving node's share. When that greedy gets
   stuck, short chains of moves are searched (one member takes a partition from another
   that takes one elsewhere). If still stuck, or if the result moved more than needed, the
   fresh layout below, relabelled and rotated to agree most with the previous ring, is
   computed and the one moving fewer partitions wins.

The fresh layout ("stripe with the wrap-around fixed"): c = ceil(Q/M) rows of floor(Q/c) or
floor(Q/c)+1 consecutive partitions; the h members owning c partitions take the first h
columns of every row (so their gaps are the row lengths, >= floor(Q/c)); the others take the
remaining cells round-robin, which puts their partitions M apart. It needs no search.

Cost: O(Q * moves) for the greedy, O(Q * M) per chain search; Q=1024, M=32 takes a few ms.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import deque
from collections.abc import Sequence

from ringstore.core.ring import Ring, check_node_name, check_ring_size
from ringstore.errors import RingError

SHUFFLE_ATTEMPTS = 8  # seeded tries at a shuffled layout before falling back to the stripe
MAX_FRESH_ROTATIONS = 16  # rotations tried when fitting the stripe to the old ring
MAX_RELEASE_TRIES = 64  # partitions offered to the chain search when a taker is stuck
WASTE_SLACK_FRACTION = 0.1  # below this share of spare room, a taker avoids wasting room
UNOWNED = ""  # marks a partition whose owner left or was freed; never a valid node name


def achievable_spacing(member_count: int, ring_size: int, n_val: int) -> int:
    """The spacing claim guarantees: min(N, floor(Q / ceil(Q/M))), the best balance allows."""
    most = -(-ring_size // member_count)
    return min(n_val, ring_size // most)


def achievable_spacing_exact(member_count: int, ring_size: int) -> int:
    return ring_size // -(-ring_size // member_count)


def balanced_counts(member_count: int, ring_size: int) -> tuple[int, int]:
    """(floor(Q/M), ceil(Q/M)): the only partition counts a member may own."""
    low, extra = divmod(ring_size, member_count)
    return low, low + (1 if extra else 0)


def claim(members: Sequence[str], ring_size: int, n_val: int, previous: Ring | None = None) -> Ring:
    """A new ring for `members` (version previous.version + 1, or 1); see the module doc.

    Deterministic: the same arguments give the same ring, whatever the order of `members`.
    A `previous` ring of another size is ignored except for its version.
    """
    if isinstance(members, str) or not isinstance(members, Sequence):
        raise RingError("members must be a sequence of node names")
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
        owners = _fresh(names, ring_size, spacing, None)
    else:
        owners = _best_from(previous.owners, names, spacing)
    version = previous.version + 1 if previous is not None else 1
    return Ring(version, tuple(owners))


def _best_from(old: tuple[str, ...], names: list[str], spacing: int) -> list[str]:
    size = len(old)
    if spacing * -(-size // len(names)) == size:
        # Rigid: every member must own exactly every spacing-th partition, so only the
        # striped layout fits; relabelling it is the only freedom left.
        return _fresh(names, size, spacing, old)
    greedy = _Greedy(old, names, spacing)
    owners = greedy.run()
    if owners is not None:
        moved = _moves(old, owners)
        if moved <= greedy.needed_moves:
            return owners
    fresh = _fresh(names, size, spacing, old)
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
        for k in range(gap):
            dist[(start + k) % size] = min(k, gap - k)
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
        owner, size = self.owners[p], self.size
        return all(self.owners[(p + k) % size] != owner for k in range(1, self.spacing))


class _Offers:
    """The partitions of members above target that one taker could take, best first.

    A lazy heap: a partition's key (see `_key`) only ever drops while the taker gains
    partitions and givers lose surplus, so a popped entry whose key is unchanged is the best.
    Chains of moves break that, so the caller drops its _Offers after one.
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
        self.heap: list[tuple[tuple[int, int, int, int, int], int]] = []
        for giver in greedy.names:
            if greedy._need(giver) < 0:
                for p in greedy.held[giver]:
                    key = self._key(p)
                    if key is not None:
                        self.heap.append((key, p))
        heapq.heapify(self.heap)

    def _key(self, p: int) -> tuple[int, int, int, int, int] | None:
        """Smaller is better: partitions that waste none of the room left for the taker's
        later partitions (only minded when room runs short); then any as far from its own
        as an even spread would put them; then the giver with most surplus (givers run dry
        evenly, so late takers still find partitions); then farther; then the lowest.
        """
        greedy = self.greedy
        giver = greedy.owners[p]
        surplus = -greedy._need(giver) if giver else 0
        far = greedy._distance(self.taker)[p]
        if surplus <= 0 or far < greedy.spacing:
            return None
        waste = 0
        need = greedy._need(self.taker)
        if self.mine and self.room - need < need * WASTE_SLACK_FRACTION:
            size, spacing, mine = greedy.size, greedy.spacing, self.mine
            i = bisect.bisect(mine, p)
            before, after = (p - mine[i - 1]) % size, (mine[i % len(mine)] - p) % size
            waste = (before + after) // spacing - before // spacing - after // spacing
        return (waste, -min(far, self.roomy), -surplus, -far, p)

    def pop(self) -> int:
        """The best partition to take now, or -1 if there is none."""
        while self.heap:
            key, p = heapq.heappop(self.heap)
            now = self._key(p)
            if now == key:
                return p
            if now is not None:
                heapq.heappush(self.heap, (now, p))
        return -1

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


def _fresh(names: list[str], size: int, spacing: int, old: tuple[str, ...] | None) -> list[str]:
    """A new layout, labelled (and, if striped, rotated) to agree most with `old`."""
    slots = _shuffled_slots(len(names), size, spacing)
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
    """Rounds of every slot once, each round in a different (seeded, fixed) order.

    Unlike the stripe, the neighbours of a slot differ from round to round, so when a member
    leaves, the partitions it owned have different members able to take them. Returns None
    if the seeded attempts all end without the spacing (the caller then uses the stripe).
    """
    if spacing >= achievable_spacing_exact(member_count, size):
        return None
    most = -(-size // member_count)
    heavy = size % member_count or member_count
    for attempt in range(SHUFFLE_ATTEMPTS):
        rng = random.Random(f"ringstore.claim/{member_count}/{size}/{spacing}/{attempt}")
        left = [most] * heavy + [most - 1] * (member_count - heavy)
        first = [-1] * member_count
        last = [-size] * member_count
        slots: list[int] = []
        for p in range(size):
            able = [
                s
                for s in range(member_count)
                if left[s]
                and p - last[s] >= spacing
                and (first[s] < 0 or first[s] + size - p >= spacing)
            ]
            if not able:
                break
            top = max(left[s] for s in able)
            pick = rng.choice([s for s in able if left[s] == top])
            left[pick] -= 1
            last[pick] = p
            if first[pick] < 0:
                first[pick] = p
            slots.append(pick)
        else:
            return slots
    return None


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
