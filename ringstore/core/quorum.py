"""Riak's get and put quorum logic as pure state machines: replica results in, a decision out.

The request drivers in `coord/` do the messaging and the timeouts; these cores only count
and decide, as riak_kv_get_core / riak_kv_put_core do for riak_kv_get_fsm / put_fsm:

    core = GetCore(n, r, pr, notfound_ok, basic_quorum, reconciler)
    for each replica reply:          core.add_result(replica, is_primary, result)
        if core.enough():            answer the client with core.response()
    at the deadline, if not enough:  answer with core.timeout_response()
    after the last reply or timeout: send core.repair_plan() (read repair)

Counting (per distinct replica: the first answer of a replica counts, repeats are ignored,
because the network may duplicate a reply):

    get   ok        an object (tombstones included)            counts toward R
          notfound  counts toward R when notfound_ok, else toward the failure threshold
          error     counts toward the failure threshold
          PR counts what counts toward R, from primaries only
          failure threshold = N - max(R, PR) + 1; basic_quorum lowers it to
          min(N//2 + 1, N - max(R, PR) + 1)
    put   w         the replica accepted the write
          dw        the write is durable there; also counts as a w
          error     after a w, the replica still counts as a w but can no longer give a dw
          PW counts durable acks (dw) from primaries, as riak_kv_put_core's num_pw

`enough()` is true once the quorum is met, or once the replicas that have not answered
(plus those that still could upgrade a w to a dw) cannot meet it any more. Riak detects
the second case only through its failure thresholds; the cores here also see it when
fallback answers make PR/PW impossible, and when W is out of reach, so a doomed request
fails at once instead of at its timeout. Which quorum a failure names follows Riak's
choice (riak_kv_get_core:response, riak_kv_put_core:response) wherever Riak would have
answered, and otherwise names the quorum that became impossible.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeAlias, TypeVar

from ringstore.errors import LocalError, QuorumError

MAX_N = 64  # far above any n_val a bucket allows (10); a bigger n is a driver bug

T = TypeVar("T")
Replica: TypeAlias = Hashable  # whatever names a replica for the driver: node, partition, ...


class Reconciler(Protocol[T]):
    """How the get core combines replica objects without knowing their format.

    `merge` must be commutative, associative and idempotent (a join), so the merged
    answer does not depend on the order replies arrive in.
    """

    def merge(self, a: T, b: T) -> T: ...

    def equal(self, a: T, b: T) -> bool: ...

    def is_tombstone(self, obj: T) -> bool: ...


# ---------------------------------------------------------------------------------------------
# Replies


@dataclass(frozen=True, slots=True)
class Found(Generic[T]):
    """A read met its quorum and the merged object is live."""

    value: T


@dataclass(frozen=True, slots=True)
class Absent(Generic[T]):
    """The key does not exist. `tombstone` is the merged tombstone when the key was
    deleted (its context lets a client write over the deletion), None if never written."""

    tombstone: T | None = None


@dataclass(frozen=True, slots=True)
class Acked:
    """A write met W, DW and PW."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The quorum `kind` ("r", "pr", "w", "dw" or "pw") was not met: `got` of `needed`."""

    kind: str
    got: int
    needed: int
    detail: str = ""

    def error(self) -> QuorumError:
        return QuorumError(self.kind, self.got, self.needed, self.detail)


@dataclass(frozen=True, slots=True)
class RepairTarget:
    replica: Replica
    is_primary: bool
    reason: Literal["notfound", "outofdate"]


@dataclass(frozen=True, slots=True)
class RepairPlan(Generic[T]):
    """Send `value` (the merge of every object seen) to each of `targets`."""

    value: T
    targets: tuple[RepairTarget, ...]

    @property
    def replicas(self) -> tuple[Replica, ...]:
        return tuple(target.replica for target in self.targets)


@dataclass(frozen=True, slots=True)
class GetStatistics:
    answered: int
    ok: int  # toward R: objects, plus notfounds when notfound_ok
    primary_ok: int  # toward PR
    notfound: int  # toward the failure threshold (only when not notfound_ok)
    failed: int
    tombstones: int


@dataclass(frozen=True, slots=True)
class PutStatistics:
    answered: int
    w: int
    dw: int
    pw: int
    failed: int


def _check_count(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise LocalError(f"quorum core: {name} must be an integer in {low}..{high}, got {value!r}")
    return value


def _check_primaries(primaries: int | None, n: int) -> int:
    return n if primaries is None else _check_count("primaries", primaries, 0, n)


def _pending_primaries(pending: int, primaries: int, primaries_answered: int) -> int:
    # Unanswered replicas that may still be primaries: bounded by the free slots and, when
    # the driver said how many primaries it asked, by those not heard from yet.
    return max(0, min(pending, primaries - primaries_answered))


# ---------------------------------------------------------------------------------------------
# Get


@dataclass(frozen=True, slots=True)
class _GetAnswer(Generic[T]):
    kind: Literal["ok", "notfound", "error"]
    is_primary: bool
    value: T | None = None
    reason: object = None


class GetCore(Generic[T]):
    """The decision half of a coordinated read (riak_kv_get_core)."""

    def __init__(
        self,
        n: int,
        r: int,
        pr: int,
        notfound_ok: bool,
        basic_quorum: bool,
        reconciler: Reconciler[T],
        *,
        primaries: int | None = None,
    ) -> None:
        """`primaries`: how many of the N replicas asked are primaries, if the driver knows
        (None: any replica may be one). Riak refuses PR above it before asking anyone; here
        the core is then `enough()` at once with a pr failure."""
        self.n = _check_count("n", n, 1, MAX_N)
        self.r = _check_count("r", r, 1, n)
        self.pr = _check_count("pr", pr, 0, n)
        self.primaries = _check_primaries(primaries, n)
        if not isinstance(notfound_ok, bool) or not isinstance(basic_quorum, bool):
            raise LocalError("get core: notfound_ok and basic_quorum must be bools")
        self.notfound_ok = notfound_ok
        self.basic_quorum = basic_quorum
        self._reconciler = reconciler
        strictest = max(r, pr)
        threshold = n - strictest + 1  # this many non-ok replies and max(R, PR) is out of reach
        self.fail_threshold = min(n // 2 + 1, threshold) if basic_quorum else threshold
        self._answers: dict[Replica, _GetAnswer[T]] = {}
        self._stats = GetStatistics(0, 0, 0, 0, 0, 0)
        self._response: Found[T] | Absent[T] | Failed | None = None

    def add_result(self, replica: Replica, is_primary: bool, result: tuple[object, ...]) -> None:
        """Record one replica's answer: ("ok", obj), ("notfound",) or ("error", reason).

        Accepted after the response too (for the repair plan). A replica's later answers
        are ignored; a (N+1)th distinct replica is a driver bug (LocalError).
        """
        if not isinstance(is_primary, bool):
            raise LocalError(f"get core: is_primary must be a bool, got {is_primary!r}")
        match result:
            case ("ok", value) if value is not None:
                answer: _GetAnswer[T] = _GetAnswer("ok", is_primary, value)
            case ("notfound",):
                answer = _GetAnswer("notfound", is_primary)
            case ("error", reason):
                answer = _GetAnswer("error", is_primary, reason=reason)
            case _:
                raise LocalError(f"get core: unknown replica result {result!r}")
        if replica in self._answers:
            return
        if len(self._answers) >= self.n:
            raise LocalError(f"get core: more than n={self.n} replicas answered ({replica!r})")
        self._answers[replica] = answer
        self._stats = self._counted(self._stats, answer)

    def _counted(self, stats: GetStatistics, answer: _GetAnswer[T]) -> GetStatistics:
        # Answers are never replaced, so each is counted once, when it arrives.
        ok, primary_ok, notfound = stats.ok, stats.primary_ok, stats.notfound
        failed, tombstones = stats.failed, stats.tombstones
        if answer.kind == "error":
            failed += 1
        elif answer.kind == "notfound" and not self.notfound_ok:
            notfound += 1
        else:
            ok += 1
            primary_ok += answer.is_primary
            if answer.kind == "ok" and self._reconciler.is_tombstone(answer.value):
                tombstones += 1
        return GetStatistics(stats.answered + 1, ok, primary_ok, notfound, failed, tombstones)

    def statistics(self) -> GetStatistics:
        return self._stats

    def errors(self) -> tuple[tuple[Replica, object], ...]:
        """The replicas that failed and why, for logs."""
        return tuple(
            (replica, answer.reason)
            for replica, answer in self._answers.items()
            if answer.kind == "error"
        )

    def all_answered(self) -> bool:
        return len(self._answers) >= self.n

    def _met(self, stats: GetStatistics) -> bool:
        return stats.ok >= self.r and stats.primary_ok >= self.pr

    def _r_out_of_reach(self, stats: GetStatistics) -> bool:
        return stats.ok + (self.n - stats.answered) < self.r

    def _pr_out_of_reach(self, stats: GetStatistics) -> bool:
        primaries_answered = sum(a.is_primary for a in self._answers.values())
        pending = _pending_primaries(self.n - stats.answered, self.primaries, primaries_answered)
        return stats.primary_ok + pending < self.pr

    def enough(self) -> bool:
        """True once the read can be answered; stays true."""
        stats = self.statistics()
        return (
            self._met(stats)
            or stats.notfound + stats.failed >= self.fail_threshold
            or stats.answered >= self.n
            or self._pr_out_of_reach(stats)
        )

    def response(self) -> Found[T] | Absent[T] | Failed:
        """The answer for the client; fixed by the first call. Only once `enough()`."""
        if self._response is None:
            if not self.enough():
                raise LocalError("get core: response() before enough()")
            self._response = self._decide(timed_out=False)
        return self._response

    def timeout_response(self) -> Found[T] | Absent[T] | Failed:
        """The answer when the deadline passed: the response if there is one, else the
        quorum that was not met with what was got."""
        if self._response is None:
            self._response = self._decide(timed_out=not self.enough())
        return self._response

    def _merged(self) -> T | None:
        values = [a.value for a in self._answers.values() if a.kind == "ok"]
        if not values:
            return None
        return functools.reduce(self._reconciler.merge, values)

    def _absent_or_found(self) -> Found[T] | Absent[T]:
        merged = self._merged()
        if merged is None:
            return Absent(None)
        if self._reconciler.is_tombstone(merged):
            return Absent(merged)
        return Found(merged)

    def _decide(self, *, timed_out: bool) -> Found[T] | Absent[T] | Failed:
        stats = self.statistics()
        if not timed_out:
            if self._met(stats):
                return self._absent_or_found()
            # Every answer said "no such key" (notfound or tombstone) and none failed: the
            # key is absent, not unavailable (riak_kv_get_core:response, second clause).
            all_absent = stats.ok - stats.tombstones == 0 and stats.failed == 0
            if stats.notfound + stats.tombstones > 0 and all_absent:
                return self._absent_or_found()
        r_dead = self._r_out_of_reach(stats)
        pr_dead = self.pr > 0 and self._pr_out_of_reach(stats)
        if r_dead != pr_dead:
            kind = "r" if r_dead else "pr"
        elif (self.pr > 0 and stats.primary_ok < self.pr and stats.ok >= self.r) or (
            self.pr >= self.r
        ):
            kind = "pr"
        else:
            kind = "r"
        return self._failed(kind, stats, timed_out)

    def _failed(self, kind: str, stats: GetStatistics, timed_out: bool) -> Failed:
        found = sum(a.kind == "ok" for a in self._answers.values())
        notfound = sum(a.kind == "notfound" for a in self._answers.values())
        detail = (
            f"{found} found, {notfound} not found, {stats.failed} failed,"
            f" {self.n - stats.answered} no answer"
        )
        if timed_out:
            detail = f"timed out: {detail}"
        if kind == "pr":
            if self.primaries < self.n:
                detail += f"; only {self.primaries} primaries reachable"
            return Failed("pr", stats.primary_ok, self.pr, detail)
        return Failed("r", stats.ok, self.r, detail)

    def repair_plan(self) -> RepairPlan[T] | None:
        """Read repair over every answer so far (late ones included): the merged object and
        the replicas that said notfound or hold something strictly older. None if there is
        nothing to repair or no object at all (riak_kv_get_core:final_action)."""
        merged = self._merged()
        if merged is None:
            return None
        targets = []
        for replica, answer in self._answers.items():
            if answer.kind == "notfound":
                targets.append(RepairTarget(replica, answer.is_primary, "notfound"))
            elif answer.kind == "ok" and not self._reconciler.equal(merged, answer.value):
                targets.append(RepairTarget(replica, answer.is_primary, "outofdate"))
        return RepairPlan(merged, tuple(targets)) if targets else None

    def reapable(self) -> bool:
        """All N replicas are primaries holding the same tombstone: the deletion is
        complete and the tombstone may be reaped (after its delay, decided elsewhere)."""
        if len(self._answers) < self.n:
            return False
        answers = list(self._answers.values())
        if not all(a.kind == "ok" and a.is_primary for a in answers):
            return False
        merged = self._merged()
        assert merged is not None
        return self._reconciler.is_tombstone(merged) and all(
            self._reconciler.equal(merged, a.value) for a in answers
        )


# ---------------------------------------------------------------------------------------------
# Put

_PutState: TypeAlias = Literal["w", "dw", "error", "w_failed"]
_PutEvent: TypeAlias = Literal["w", "dw", "error"]

# One replica's progress. A pair not in the table (a repeat, or news after a final state)
# changes nothing.
_PUT_TRANSITIONS: dict[tuple[_PutState | None, _PutEvent], _PutState] = {
    (None, "w"): "w",
    (None, "dw"): "dw",
    (None, "error"): "error",
    ("w", "dw"): "dw",
    ("w", "error"): "w_failed",
}
_ACKED_STATES = frozenset({"w", "dw", "w_failed"})
_FAILED_STATES = frozenset({"error", "w_failed"})


class PutCore:
    """The decision half of a coordinated write (riak_kv_put_core)."""

    def __init__(self, n: int, w: int, pw: int, dw: int, *, primaries: int | None = None) -> None:
        """`primaries` as for GetCore: Riak refuses PW above it before writing anything."""
        self.n = _check_count("n", n, 1, MAX_N)
        self.w = _check_count("w", w, 1, n)
        self.pw = _check_count("pw", pw, 0, n)
        self.dw = _check_count("dw", dw, 0, n)
        self.primaries = _check_primaries(primaries, n)
        self._states: dict[Replica, _PutState] = {}
        self._primary: dict[Replica, bool] = {}
        self._reasons: dict[Replica, object] = {}
        self._stats = PutStatistics(0, 0, 0, 0, 0)
        self._response: Acked | Failed | None = None

    def add_result(self, replica: Replica, is_primary: bool, result: object) -> None:
        """Record "w", "dw" or ("error", reason) from a replica (late ones too)."""
        if not isinstance(is_primary, bool):
            raise LocalError(f"put core: is_primary must be a bool, got {is_primary!r}")
        reason: object = None
        match result:
            case "w" | "dw":
                event: _PutEvent = result
            case ("error", reason):
                event = "error"
            case _:
                raise LocalError(f"put core: unknown replica result {result!r}")
        previous = self._states.get(replica)
        if previous is None and len(self._states) >= self.n:
            raise LocalError(f"put core: more than n={self.n} replicas answered ({replica!r})")
        new = _PUT_TRANSITIONS.get((previous, event))
        if new is None:
            return
        self._states[replica] = new
        self._primary.setdefault(replica, is_primary)
        if event == "error":
            self._reasons[replica] = reason
        self._stats = self._counted()

    def statistics(self) -> PutStatistics:
        return self._stats

    def _counted(self) -> PutStatistics:
        states = self._states
        return PutStatistics(
            answered=len(states),
            w=sum(state in _ACKED_STATES for state in states.values()),
            dw=sum(state == "dw" for state in states.values()),
            pw=sum(state == "dw" and self._primary[replica] for replica, state in states.items()),
            failed=sum(state in _FAILED_STATES for state in states.values()),
        )

    def errors(self) -> tuple[tuple[Replica, object], ...]:
        return tuple(self._reasons.items())

    def all_answered(self) -> bool:
        """Every replica reached a final state (durable or failed)."""
        return len(self._states) >= self.n and all(s != "w" for s in self._states.values())

    def _reachable(self) -> dict[str, int]:
        # The most each count can still become if every open replica ends durable.
        pending = self.n - len(self._states)
        stats = self.statistics()
        may_upgrade = [r for r, s in self._states.items() if s == "w"]
        primaries_answered = sum(self._primary.values())
        return {
            "w": stats.w + pending,
            "dw": stats.dw + len(may_upgrade) + pending,
            "pw": stats.pw
            + sum(self._primary[r] for r in may_upgrade)
            + _pending_primaries(pending, self.primaries, primaries_answered),
        }

    def _unmet(self) -> list[str]:
        stats = self._stats
        got = {"w": stats.w, "dw": stats.dw, "pw": stats.pw}
        return [kind for kind in ("w", "dw", "pw") if got[kind] < self._needed(kind)]

    def _needed(self, kind: str) -> int:
        return {"w": self.w, "dw": self.dw, "pw": self.pw}[kind]

    def _out_of_reach(self) -> list[str]:
        reachable = self._reachable()
        return [kind for kind in ("w", "dw", "pw") if reachable[kind] < self._needed(kind)]

    def enough(self) -> bool:
        """True once the write can be answered; stays true."""
        stats = self._stats
        if stats.w >= self.w and stats.dw >= self.dw and stats.pw >= self.pw:
            return True
        return bool(self._out_of_reach())

    def response(self) -> Acked | Failed:
        """The answer for the client; fixed by the first call. Only once `enough()`."""
        if self._response is None:
            if not self.enough():
                raise LocalError("put core: response() before enough()")
            self._response = self._decide(timed_out=False)
        return self._response

    def timeout_response(self) -> Acked | Failed:
        """The answer when the deadline passed (see GetCore.timeout_response)."""
        if self._response is None:
            self._response = self._decide(timed_out=not self.enough())
        return self._response

    def _decide(self, *, timed_out: bool) -> Acked | Failed:
        unmet = self._unmet()
        if not unmet:
            return Acked()
        # riak_kv_put_core:response names PW first when PW >= DW, else DW; W, which Riak
        # never fails early, comes after DW.
        order = ("pw", "dw", "w") if self.pw >= self.dw else ("dw", "w", "pw")
        candidates = unmet if timed_out else self._out_of_reach()
        kind = next(k for k in order if k in candidates)
        stats = self.statistics()
        got = {"w": stats.w, "dw": stats.dw, "pw": stats.pw}[kind]
        detail = (
            f"{stats.w} acked ({stats.dw} durable, {stats.pw} durable on primaries),"
            f" {stats.failed} failed, {self.n - stats.answered} no answer"
        )
        if timed_out:
            detail = f"timed out: {detail}"
        if kind == "pw" and self.primaries < self.n:
            detail += f"; only {self.primaries} primaries reachable"
        return Failed(kind, got, self._needed(kind), detail)
