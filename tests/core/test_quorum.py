"""GetCore and PutCore: Riak's quorum edge cases as tables, plus order-independence properties."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.core.quorum import (
    Absent,
    Acked,
    Failed,
    Found,
    GetCore,
    PutCore,
    RepairTarget,
)
from ringstore.errors import LocalError, QuorumError


class SetReconciler:
    """Objects are frozensets of sibling names; merge is union (a join). A sibling whose
    name starts with "~" is a tombstone; an object is deleted when all its siblings are."""

    def merge(self, a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
        return a | b

    def equal(self, a: frozenset[str], b: frozenset[str]) -> bool:
        return a == b

    def is_tombstone(self, obj: frozenset[str]) -> bool:
        return all(name.startswith("~") for name in obj)


REC = SetReconciler()


def obj(*names: str) -> frozenset[str]:
    return frozenset(names)


A = obj("a")
AB = obj("a", "b")
TOMB = obj("~x")
OK_A = ("ok", A)
NF = ("notfound",)
ERR = ("error", "disk on fire")


def get_core(n=3, r=2, pr=0, notfound_ok=True, basic_quorum=False, primaries=None) -> GetCore:
    return GetCore(n, r, pr, notfound_ok, basic_quorum, REC, primaries=primaries)


def feed_until_enough(core, answers):
    """Add answers one by one; return how many were needed for enough() (None: never)."""
    if core.enough():
        return 0
    for count, (replica, primary, result) in enumerate(answers, start=1):
        core.add_result(replica, primary, result)
        if core.enough():
            return count
    return None


def primaries_saying(*results):
    return [(f"p{i}", True, result) for i, result in enumerate(results)]


# ---------------------------------------------------------------------------------------------
# Get: table of Riak's edge cases

GET_CASES = [
    # (name, core kwargs, answers, answers needed for enough, expected response)
    ("r met by oks", {}, primaries_saying(OK_A, OK_A), 2, Found(A)),
    ("notfound_ok counts notfound toward r", {}, primaries_saying(NF, NF), 2, Absent()),
    ("notfound_ok: one object and one notfound", {}, primaries_saying(NF, OK_A), 2, Found(A)),
    (
        "notfound not ok: waits past a notfound for r objects",
        {"notfound_ok": False},
        primaries_saying(NF, OK_A, OK_A),
        3,
        Found(A),
    ),
    (
        "notfound not ok: enough notfounds means not found",
        {"notfound_ok": False},
        primaries_saying(NF, NF, OK_A),
        2,
        Absent(),
    ),
    (
        "notfound not ok: a notfound and an error is an r failure, not a notfound",
        {"notfound_ok": False},
        primaries_saying(NF, ERR, OK_A),
        2,
        Failed("r", 0, 2),
    ),
    ("errors are never notfound", {}, primaries_saying(ERR, ERR, OK_A), 2, Failed("r", 0, 2)),
    ("one error is tolerated", {}, primaries_saying(ERR, OK_A, OK_A), 3, Found(A)),
    ("all fail, r=n", {"r": 3}, primaries_saying(ERR, ERR, ERR), 1, Failed("r", 0, 3)),
    ("all fail, r=1", {"r": 1}, primaries_saying(ERR, ERR, ERR), 3, Failed("r", 0, 1)),
    (
        "threshold N-max(R,PR)+1 without basic_quorum",
        {"r": 1, "notfound_ok": False},
        primaries_saying(NF, NF, NF),
        3,
        Absent(),
    ),
    (
        "basic_quorum lowers the threshold to N//2+1",
        {"r": 1, "notfound_ok": False, "basic_quorum": True},
        primaries_saying(NF, NF, NF),
        2,
        Absent(),
    ),
    (
        "basic_quorum n=5: 3 non-ok answers, one an error",
        {"n": 5, "r": 1, "notfound_ok": False, "basic_quorum": True},
        primaries_saying(NF, ERR, NF, OK_A, OK_A),
        3,
        Failed("r", 0, 1),
    ),
    (
        "basic_quorum never raises the threshold above N-max(R,PR)+1",
        {"n": 5, "r": 4, "notfound_ok": False, "basic_quorum": True},
        primaries_saying(NF, NF, OK_A, OK_A, OK_A),
        2,
        Absent(),
    ),
    (
        "pr counts primaries only: fallback oks make pr impossible early",
        {"r": 1, "pr": 2},
        [("f1", False, OK_A), ("f2", False, OK_A), ("p1", True, OK_A)],
        2,
        Failed("pr", 0, 2),
    ),
    (
        "pr out of reach while r is still possible: pr is named, not r",
        {"r": 3, "pr": 2},
        [("f1", False, OK_A), ("f2", False, OK_A), ("p1", True, OK_A)],
        2,
        Failed("pr", 0, 2),
    ),
    (
        "pr met by primaries while a fallback also answered",
        {"r": 2, "pr": 2},
        [("f1", False, OK_A), ("p1", True, OK_A), ("p2", True, OK_A)],
        3,
        Found(A),
    ),
    (
        "r met but pr not, all answered",
        {"r": 1, "pr": 3, "notfound_ok": False},
        [("p1", True, OK_A), ("p2", True, OK_A), ("f1", False, OK_A)],
        3,
        Failed("pr", 2, 3),
    ),
    (
        "notfound_ok: primary notfounds count toward pr",
        {"r": 2, "pr": 2},
        [("p1", True, NF), ("p2", True, NF)],
        2,
        Absent(),
    ),
    (
        "notfound not ok: primary notfounds do not count toward pr",
        {"r": 1, "pr": 2, "notfound_ok": False},
        [("p1", True, OK_A), ("p2", True, NF), ("p3", True, OK_A)],
        3,
        Found(A),
    ),
    (
        "pr above the primaries asked fails before any answer",
        {"r": 1, "pr": 2, "primaries": 1},
        [],
        0,
        Failed("pr", 0, 2),
    ),
    ("n=1 found", {"n": 1, "r": 1}, primaries_saying(OK_A), 1, Found(A)),
    ("n=1 notfound", {"n": 1, "r": 1, "notfound_ok": False}, primaries_saying(NF), 1, Absent()),
    ("n=1 error", {"n": 1, "r": 1}, primaries_saying(ERR), 1, Failed("r", 0, 1)),
    ("r=n needs every replica", {"r": 3}, primaries_saying(OK_A, NF, OK_A), 3, Found(A)),
    (
        "r=n with a notfound not ok",
        {"r": 3, "notfound_ok": False},
        primaries_saying(OK_A, OK_A, NF),
        3,
        Failed("r", 2, 3),
    ),
    (
        "tombstones and notfounds only: absent, with the tombstone",
        {"notfound_ok": False},
        primaries_saying(("ok", TOMB), NF, NF),
        3,
        Absent(TOMB),
    ),
    ("merged tombstone is absent", {}, primaries_saying(("ok", TOMB), NF), 2, Absent(TOMB)),
    (
        "a tombstone concurrent with a live sibling is found",
        {},
        primaries_saying(("ok", A), ("ok", TOMB)),
        2,
        Found(A | TOMB),
    ),
    ("siblings merge", {}, primaries_saying(("ok", A), ("ok", obj("b"))), 2, Found(AB)),
]


@pytest.mark.parametrize(
    ("kwargs", "answers", "needed", "expected"),
    [case[1:] for case in GET_CASES],
    ids=[case[0] for case in GET_CASES],
)
def test_get_edge_cases(kwargs, answers, needed, expected):
    core = get_core(**kwargs)
    assert feed_until_enough(core, answers) == needed
    response = core.response()
    if isinstance(expected, Failed):
        assert isinstance(response, Failed)
        assert (response.kind, response.got, response.needed) == (
            expected.kind,
            expected.got,
            expected.needed,
        )
    else:
        assert response == expected


def test_get_duplicate_replies_count_once():
    core = get_core(r=2)
    core.add_result("p1", True, OK_A)
    core.add_result("p1", True, OK_A)
    core.add_result("p1", True, ERR)
    assert not core.enough()
    assert core.statistics().answered == 1
    core.add_result("p2", True, OK_A)
    assert core.response() == Found(A)


def test_get_late_results_feed_the_repair_plan_but_not_the_response():
    core = get_core(r=1)
    core.add_result("p1", True, ("ok", A))
    assert core.enough()
    assert core.response() == Found(A)
    core.add_result("p2", True, ("ok", AB))
    core.add_result("f1", False, NF)
    assert core.response() == Found(A)  # already answered: fixed
    plan = core.repair_plan()
    assert plan is not None
    assert plan.value == AB
    assert plan.targets == (
        RepairTarget("p1", True, "outofdate"),
        RepairTarget("f1", False, "notfound"),
    )
    assert plan.replicas == ("p1", "f1")


def test_get_repair_plan_empty_cases():
    agreeing = get_core()
    for replica in ("p1", "p2", "p3"):
        agreeing.add_result(replica, True, ("ok", AB))
    assert agreeing.repair_plan() is None
    nothing = get_core()
    for replica in ("p1", "p2"):
        nothing.add_result(replica, True, NF)
    assert nothing.repair_plan() is None  # no object to send
    failed = get_core()
    failed.add_result("p1", True, ("ok", A))
    failed.add_result("p2", True, ERR)
    assert failed.repair_plan() is None  # an error says nothing about the replica's copy


def test_get_repair_includes_tombstones_so_they_can_be_reaped():
    core = get_core()
    core.add_result("p1", True, ("ok", TOMB))
    core.add_result("p2", True, NF)
    plan = core.repair_plan()
    assert plan is not None and plan.value == TOMB and plan.replicas == ("p2",)


def test_get_reapable_only_with_n_primary_equal_tombstones():
    def core_with(answers):
        core = get_core()
        for replica, primary, result in answers:
            core.add_result(replica, primary, result)
        return core

    tomb = ("ok", TOMB)
    assert core_with([("p1", True, tomb), ("p2", True, tomb), ("p3", True, tomb)]).reapable()
    assert not core_with([("p1", True, tomb), ("p2", True, tomb)]).reapable()
    assert not core_with([("p1", True, tomb), ("p2", True, tomb), ("f1", False, tomb)]).reapable()
    assert not core_with([("p1", True, tomb), ("p2", True, tomb), ("p3", True, NF)]).reapable()
    older = ("ok", obj("~w"))
    assert not core_with([("p1", True, tomb), ("p2", True, tomb), ("p3", True, older)]).reapable()
    live = ("ok", A)
    assert not core_with([("p1", True, live), ("p2", True, live), ("p3", True, live)]).reapable()


def test_get_timeout_names_the_unmet_quorum():
    core = get_core(r=2)
    core.add_result("p1", True, OK_A)
    assert not core.enough()
    response = core.timeout_response()
    assert isinstance(response, Failed)
    assert (response.kind, response.got, response.needed) == ("r", 1, 2)
    assert response.detail.startswith("timed out")
    assert core.response() is response  # fixed once given
    error = response.error()
    assert isinstance(error, QuorumError)
    assert (error.kind, error.got, error.needed) == ("r", 1, 2)
    assert error.http_status == 503


def test_get_timeout_with_r_met_but_not_pr():
    core = get_core(r=1, pr=2)
    core.add_result("p1", True, OK_A)
    assert not core.enough()
    response = core.timeout_response()
    assert isinstance(response, Failed) and (response.kind, response.got) == ("pr", 1)


def test_get_timeout_after_enough_is_the_response():
    core = get_core(r=1)
    core.add_result("p1", True, OK_A)
    assert core.timeout_response() == Found(A)


def test_get_errors_are_reported():
    core = get_core()
    core.add_result("p1", True, ERR)
    core.add_result("p2", True, OK_A)
    assert core.errors() == (("p1", "disk on fire"),)


@pytest.mark.parametrize(
    "result",
    [("ok",), ("ok", None), ("found", A), "ok", None, ("notfound", 1), ("error",), ()],
)
def test_get_rejects_malformed_results(result):
    core = get_core()
    with pytest.raises(LocalError):
        core.add_result("p1", True, result)
    assert core.statistics().answered == 0


def test_get_rejects_misuse():
    core = get_core(n=2, r=1)
    with pytest.raises(LocalError):
        core.add_result("p1", 1, OK_A)
    with pytest.raises(LocalError):
        core.response()
    core.add_result("p1", True, NF)
    core.add_result("p2", True, NF)
    with pytest.raises(LocalError, match="more than n=2"):
        core.add_result("p3", True, NF)
    core.add_result("p1", True, OK_A)  # a known replica repeating itself is fine


@pytest.mark.parametrize(
    "args",
    [
        (0, 1, 0, True, False),
        (3, 0, 0, True, False),
        (3, 4, 0, True, False),
        (3, 2, 4, True, False),
        (3, 2, -1, True, False),
        (3, True, 0, True, False),
        (3, 2, 0, "yes", False),
        (3, 2, 0, True, None),
    ],
)
def test_get_core_rejects_bad_parameters(args):
    with pytest.raises(LocalError):
        GetCore(*args, REC)


def test_get_core_rejects_bad_primaries():
    with pytest.raises(LocalError):
        GetCore(3, 2, 0, True, False, REC, primaries=4)


# ---------------------------------------------------------------------------------------------
# Put: table of Riak's edge cases


def put_core(n=3, w=2, pw=0, dw=2, primaries=None) -> PutCore:
    return PutCore(n, w, pw, dw, primaries=primaries)


PUT_CASES = [
    ("w and dw met", {}, primaries_saying("dw", "dw"), 2, Acked()),
    ("a dw also counts as a w", {"dw": 0}, primaries_saying("dw", "dw"), 2, Acked()),
    (
        "w acks alone do not meet dw",
        {"dw": 1},
        [("p1", True, "w"), ("p2", True, "w"), ("p1", True, "dw")],
        3,
        Acked(),
    ),
    ("dw above w waits for dw acks", {"w": 1, "dw": 2}, primaries_saying("dw", "dw"), 2, Acked()),
    (
        "w then error: still a w, no longer a possible dw",
        {},
        [("p1", True, "w"), ("p1", True, ERR), ("p2", True, "dw"), ("p3", True, ERR)],
        4,
        Failed("dw", 1, 2),
    ),
    ("too many failures", {}, primaries_saying(ERR, ERR, "dw"), 2, Failed("dw", 0, 2)),
    ("w fails early, unlike Riak", {"w": 3, "dw": 1}, primaries_saying(ERR), 1, Failed("w", 0, 3)),
    (
        "pw counts primaries only: fallbacks make pw impossible early",
        {"pw": 2},
        [("f1", False, "dw"), ("f2", False, "dw"), ("p1", True, "dw")],
        2,
        Failed("pw", 0, 2),
    ),
    (
        "pw not met once all answered",
        {"pw": 2},
        [("f1", False, "dw"), ("p1", True, "dw"), ("f2", False, "dw")],
        3,
        Failed("pw", 1, 2),
    ),
    (
        "pw counts durable primary acks, not w",
        {"pw": 2, "dw": 1},
        [("p1", True, "w"), ("p2", True, "w"), ("p1", True, "dw"), ("p2", True, "dw")],
        4,
        Acked(),
    ),
    ("pw above the primaries asked", {"pw": 2, "primaries": 1}, [], 0, Failed("pw", 0, 2)),
    (
        "pw >= dw: pw is named first",
        {"pw": 2, "dw": 2},
        primaries_saying(ERR, ERR),
        2,
        Failed("pw", 0, 2),
    ),
    ("n=1 ok", {"n": 1, "w": 1, "dw": 1}, primaries_saying("dw"), 1, Acked()),
    ("n=1 error", {"n": 1, "w": 1, "dw": 1}, primaries_saying(ERR), 1, Failed("dw", 0, 1)),
    ("w=n", {"w": 3, "dw": 3}, primaries_saying("dw", "dw", "dw"), 3, Acked()),
    ("w=n with one failure", {"w": 3, "dw": 3}, primaries_saying("dw", ERR), 2, Failed("dw", 1, 3)),
]


@pytest.mark.parametrize(
    ("kwargs", "answers", "needed", "expected"),
    [case[1:] for case in PUT_CASES],
    ids=[case[0] for case in PUT_CASES],
)
def test_put_edge_cases(kwargs, answers, needed, expected):
    core = put_core(**kwargs)
    assert feed_until_enough(core, answers) == needed
    response = core.response()
    if isinstance(expected, Failed):
        assert isinstance(response, Failed)
        assert (response.kind, response.got, response.needed) == (
            expected.kind,
            expected.got,
            expected.needed,
        )
    else:
        assert response == expected


def test_put_duplicates_and_late_contradictions_change_nothing():
    core = put_core(w=2, dw=2)
    core.add_result("p1", True, "dw")
    core.add_result("p1", True, "dw")
    core.add_result("p1", True, "w")
    core.add_result("p1", True, ERR)
    stats = core.statistics()
    assert (stats.answered, stats.w, stats.dw, stats.failed) == (1, 1, 1, 0)
    assert not core.enough()


def test_put_late_results_after_response_keep_the_response():
    core = put_core(w=1, dw=1)
    core.add_result("p1", True, "dw")
    assert core.response() == Acked()
    core.add_result("p2", True, ERR)
    core.add_result("p3", True, ERR)
    assert core.response() == Acked()
    assert core.statistics().failed == 2
    assert core.errors() == (("p2", "disk on fire"), ("p3", "disk on fire"))
    assert core.all_answered()


def test_put_all_answered_waits_for_w_to_become_final():
    core = put_core(n=2, w=1, dw=1)
    core.add_result("p1", True, "w")
    core.add_result("p2", True, "dw")
    assert not core.all_answered()
    core.add_result("p1", True, "dw")
    assert core.all_answered()


def test_put_timeout_names_the_unmet_quorum():
    core = put_core(w=2, dw=2)
    core.add_result("p1", True, "dw")
    response = core.timeout_response()
    assert isinstance(response, Failed)
    assert (response.kind, response.got, response.needed) == ("dw", 1, 2)
    assert response.detail.startswith("timed out")
    assert core.response() is response


def test_put_failure_detail_counts_failures():
    core = put_core()
    core.add_result("p1", True, ERR)
    core.add_result("p2", True, ERR)
    response = core.response()
    assert isinstance(response, Failed)
    assert "2 failed" in response.detail
    assert str(response.error()).startswith("dw quorum not met: got 0, needed 2")


@pytest.mark.parametrize("result", ["x", ("w",), ("error",), None, ("dw", "obj"), 1])
def test_put_rejects_malformed_results(result):
    core = put_core()
    with pytest.raises(LocalError):
        core.add_result("p1", True, result)
    assert core.statistics().answered == 0


def test_put_rejects_misuse():
    core = put_core(n=1, w=1, dw=1)
    with pytest.raises(LocalError):
        core.response()
    with pytest.raises(LocalError):
        core.add_result("p1", "yes", "dw")
    core.add_result("p1", True, "dw")
    with pytest.raises(LocalError, match="more than n=1"):
        core.add_result("p2", True, "dw")


@pytest.mark.parametrize(
    "args", [(0, 1, 0, 0), (3, 0, 0, 1), (3, 4, 0, 1), (3, 2, 4, 1), (3, 2, 0, 4), (3, 2, 0, -1)]
)
def test_put_core_rejects_bad_parameters(args):
    with pytest.raises(LocalError):
        PutCore(*args)


# ---------------------------------------------------------------------------------------------
# Properties

NAMES = ("a", "b", "c", "~t")


@st.composite
def get_scenarios(draw):
    n = draw(st.integers(1, 5))
    r = draw(st.integers(1, n))
    pr = draw(st.integers(0, n))
    notfound_ok = draw(st.booleans())
    basic_quorum = draw(st.booleans())
    answers = []
    for i in range(n):
        primary = draw(st.booleans())
        kind = draw(st.sampled_from(["ok", "notfound", "error"]))
        if kind == "ok":
            value = frozenset(draw(st.sets(st.sampled_from(NAMES), min_size=1)))
            result = ("ok", value)
        elif kind == "notfound":
            result = NF
        else:
            result = ("error", "boom")
        answers.append((f"r{i}", primary, result))
    order = draw(st.permutations(answers))
    other_order = draw(st.permutations(answers))
    return (n, r, pr, notfound_ok, basic_quorum), order, other_order


def model_counts(params, answers):
    """Counts straight from the answers, independent of the core's bookkeeping."""
    _n, _r, _pr, notfound_ok, _bq = params
    ok = [a for a in answers if a[2][0] == "ok" or (a[2][0] == "notfound" and notfound_ok)]
    return len(ok), sum(1 for a in ok if a[1])


def new_get(params):
    n, r, pr, notfound_ok, basic_quorum = params
    return GetCore(n, r, pr, notfound_ok, basic_quorum, REC)


@settings(max_examples=300, deadline=None)
@given(get_scenarios())
def test_get_properties(scenario):
    params, order, other_order = scenario
    n, r, pr, _notfound_ok, basic_quorum = params
    core = new_get(params)
    was_enough = False
    first_response = None
    seen = []
    for replica, primary, result in order:
        core.add_result(replica, primary, result)
        seen.append((replica, primary, result))
        enough = core.enough()
        assert enough or not was_enough, "enough() went from true to false"
        if enough and first_response is None:
            first_response = core.response()
            ok, primary_ok = model_counts(params, seen)
            objects = [res[1] for _, _, res in seen if res[0] == "ok"]
            if isinstance(first_response, Found):
                assert ok >= r and primary_ok >= pr, "answered ok below the quorum"
                assert first_response.value == functools.reduce(frozenset.union, objects)
            if isinstance(first_response, Absent) and not (ok >= r and primary_ok >= pr):
                # Riak's "all said no such key" case: no failures, no live object
                assert all(res[0] != "error" for _, _, res in seen)
                assert all(REC.is_tombstone(o) for o in objects)
            if isinstance(first_response, Failed):
                needed = {"r": r, "pr": pr}[first_response.kind]
                got = {"r": ok, "pr": primary_ok}[first_response.kind]
                assert (first_response.got, first_response.needed) == (got, needed)
                assert got < needed
                if not basic_quorum:
                    # early failure is sound: even if every replica not heard from were a
                    # primary with an object, the quorum could not be met
                    pending = n - len(seen)
                    assert ok + pending < r or primary_ok + pending < pr
        was_enough = enough
    assert core.enough(), "all N answers in but not enough"

    # with every answer in, the order they came in does not matter
    one, two = new_get(params), new_get(params)
    for replica, primary, result in order:
        one.add_result(replica, primary, result)
    for replica, primary, result in other_order:
        two.add_result(replica, primary, result)
    assert one.response() == two.response()
    plan_one, plan_two = one.repair_plan(), two.repair_plan()
    assert (plan_one is None) == (plan_two is None)
    if plan_one is not None:
        assert plan_one.value == plan_two.value
        assert set(plan_one.targets) == set(plan_two.targets)
        # every replica that has a different copy or none is repaired, no other
        expected = {
            replica
            for replica, _, result in order
            if result[0] == "notfound" or (result[0] == "ok" and result[1] != plan_one.value)
        }
        assert set(plan_one.replicas) == expected


PUT_EVENT_LISTS = [["w"], ["dw"], ["w", "dw"], [ERR], ["w", ERR], ["dw", ERR], ["dw", "dw"], []]


@st.composite
def put_scenarios(draw):
    n = draw(st.integers(1, 5))
    w = draw(st.integers(1, n))
    dw = draw(st.integers(0, n))
    pw = draw(st.integers(0, n))
    replicas = []
    for i in range(n):
        replicas.append((f"r{i}", draw(st.booleans()), draw(st.sampled_from(PUT_EVENT_LISTS))))

    def interleave():
        # a random merge of the replicas' event lists, each list kept in its own order
        slots = [name for name, _, events in replicas for _ in events]
        slots = draw(st.permutations(slots))
        queues = {name: (primary, list(events)) for name, primary, events in replicas}
        out = []
        for name in slots:
            primary, events = queues[name]
            out.append((name, primary, events.pop(0)))
        return out

    return (n, w, pw, dw), interleave(), interleave(), replicas


def final_put_state(events):
    state = None
    for event in events:
        kind = event if isinstance(event, str) else "error"
        state = {
            (None, "w"): "w",
            (None, "dw"): "dw",
            (None, "error"): "error",
            ("w", "dw"): "dw",
            ("w", "error"): "w_failed",
        }.get((state, kind), state)
    return state


@settings(max_examples=300, deadline=None)
@given(put_scenarios())
def test_put_properties(scenario):
    params, order, other_order, replicas = scenario
    n, w, pw, dw = params
    core = PutCore(*params)
    was_enough = False
    first_response = None
    seen: dict[str, list] = {}
    primary_of = {name: primary for name, primary, _ in replicas}
    for replica, primary, event in order:
        core.add_result(replica, primary, event)
        seen.setdefault(replica, []).append(event)
        enough = core.enough()
        assert enough or not was_enough, "enough() went from true to false"
        if enough and first_response is None:
            first_response = core.response()
            states = {name: final_put_state(events) for name, events in seen.items()}
            acks = sum(s in ("w", "dw", "w_failed") for s in states.values())
            durable = sum(s == "dw" for s in states.values())
            primary_durable = sum(s == "dw" and primary_of[k] for k, s in states.items())
            if isinstance(first_response, Acked):
                assert acks >= w and durable >= dw and primary_durable >= pw
            else:
                pending = n - len(states)
                open_ = [k for k, s in states.items() if s == "w"]
                # sound early failure: even if everything open ended durable on a primary
                assert (
                    acks + pending < w
                    or durable + len(open_) + pending < dw
                    or primary_durable + sum(primary_of[k] for k in open_) + pending < pw
                )
        was_enough = enough
    all_final = len(seen) == n and all(
        final_put_state(events) not in (None, "w") for events in seen.values()
    )
    if all_final:
        assert core.enough(), "every replica final but not enough"

    one, two = PutCore(*params), PutCore(*params)
    for replica, primary, event in order:
        one.add_result(replica, primary, event)
    for replica, primary, event in other_order:
        two.add_result(replica, primary, event)
    assert one.statistics() == two.statistics()
    if one.enough():
        assert one.response() == two.response()


def test_replica_names_may_be_any_hashable():
    core = get_core(r=1)
    core.add_result(("node1", 17), True, OK_A)
    assert core.response() == Found(A)
