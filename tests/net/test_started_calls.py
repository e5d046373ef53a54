"""PeerService.start_call: calls without a waiting task, answered through a function.

Each test runs over TCP on 127.0.0.1 in real time and over a MemoryNetwork under MockClock.
"""

from __future__ import annotations

import logging

import pytest
import trio

from ringstore.errors import (
    LocalError,
    LocalProtocolError,
    NotFound,
    PeerTimeout,
    PeerUnavailable,
    RemoteCallError,
)
from ringstore.net.rpc import EXPIRY_TICK_S
from tests.net.test_rpc import DEADLINE_S, Blocker, echo


class Answers:
    """Collects what started calls are told; `wait_for(n)` waits for the n-th answer."""

    def __init__(self) -> None:
        self.got: list[tuple[dict | None, BaseException | None]] = []
        self._changed = trio.Event()

    def __call__(self, body: dict | None, error: BaseException | None) -> None:
        self.got.append((body, error))
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.got) < count:
            self._changed = trio.Event()
            await self._changed.wait()


async def connected(cluster, handlers, **options):
    a = await cluster.start("a", **options)
    b = await cluster.start("b", handlers)
    await a.call("b", "echo", {}, timeout_s=5)  # start_call needs an established connection
    return a, b


async def test_a_started_call_is_answered_through_its_function(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", {"echo": echo})
        answers = Answers()
        # No connection yet: nothing starts, nothing will be told.
        assert not a.start_call("b", "echo", {"n": 0}, timeout_s=5, on_reply=answers)
        with trio.fail_after(DEADLINE_S):
            await a.call("b", "echo", {}, timeout_s=5)
            for n in range(3):
                assert a.start_call("b", "echo", {"n": n}, timeout_s=5, on_reply=answers)
            await answers.wait_for(3)
        in_order = sorted(answers.got, key=lambda answer: answer[0]["body"]["n"])  # any order
        assert in_order == [({"peer": "a", "body": {"n": n}}, None) for n in range(3)]
        assert a.statistics().calls_in_flight == 0


async def test_a_started_call_is_told_the_remote_error(make_cluster, clock) -> None:
    async def not_found(peer: str, body: dict) -> dict:
        raise NotFound("no such key")

    async with make_cluster() as cluster:
        a, _ = await connected(cluster, {"echo": echo, "get": not_found})
        answers = Answers()
        with trio.fail_after(DEADLINE_S):
            assert a.start_call("b", "get", {}, timeout_s=5, on_reply=answers)
            await answers.wait_for(1)
        [(body, error)] = answers.got
        assert body is None
        assert isinstance(error, RemoteCallError) and error.kind == "NotFound"


async def test_a_started_call_times_out_and_frees_its_slot(make_cluster, clock) -> None:
    blocker = Blocker()
    async with make_cluster() as cluster:
        a, b = await connected(cluster, {"echo": echo, "block": blocker})
        answers = Answers()
        with trio.fail_after(DEADLINE_S):
            start = trio.current_time()
            assert a.start_call("b", "block", {}, timeout_s=0.3, on_reply=answers)
            await answers.wait_for(1)
            elapsed = trio.current_time() - start
            [(body, error)] = answers.got
            assert body is None and isinstance(error, PeerTimeout) and error.timeout_s == 0.3
            assert 0.3 <= elapsed < 2.0
            if clock is not None:
                assert elapsed <= 0.3 + EXPIRY_TICK_S + 1e-9
            assert a.statistics().calls_in_flight == 0
            # The late reply is dropped, and the connection serves on.
            blocker.release.set()
            assert await a.call("b", "echo", {"n": 1}, timeout_s=5) == {
                "peer": "a",
                "body": {"n": 1},
            }
        assert len(answers.got) == 1


async def test_started_calls_fail_at_once_when_the_connection_breaks(make_cluster, clock) -> None:
    blocker = Blocker()
    async with make_cluster() as cluster:
        a, _ = await connected(cluster, {"echo": echo, "block": blocker})
        answers = Answers()
        start = trio.current_time()
        with trio.fail_after(DEADLINE_S):
            for _ in range(5):
                assert a.start_call("b", "block", {}, timeout_s=60, on_reply=answers)
            await blocker.wait_for_calls(5)
            await cluster.stop("b")
            await answers.wait_for(5)
        for body, error in answers.got:
            assert body is None and isinstance(error, PeerUnavailable)
            assert "connection lost" in str(error)
        assert trio.current_time() - start < 5  # at once, not at the 60 s timeout


async def test_without_a_free_slot_a_call_does_not_start(make_cluster, clock) -> None:
    blocker = Blocker()
    async with make_cluster() as cluster:
        a, _ = await connected(cluster, {"echo": echo, "block": blocker}, max_calls_in_flight=2)
        answers = Answers()
        with trio.fail_after(DEADLINE_S):
            assert a.start_call("b", "block", {}, timeout_s=60, on_reply=answers)
            assert a.start_call("b", "block", {}, timeout_s=60, on_reply=answers)
            assert not a.start_call("b", "echo", {}, timeout_s=60, on_reply=answers)
            await blocker.wait_for_calls(2)
            blocker.release.set()
            await answers.wait_for(2)
            assert a.start_call("b", "echo", {}, timeout_s=60, on_reply=answers)
            await answers.wait_for(3)
        assert [error for _, error in answers.got] == [None, None, None]
        assert answers.got[2][0] == {"peer": "a", "body": {}}


async def test_a_failing_answer_function_is_logged_and_harms_nothing(
    make_cluster, clock, caplog
) -> None:
    def broken(body: dict | None, error: BaseException | None) -> None:
        raise ValueError("bug in the caller")

    async with make_cluster() as cluster:
        a, _ = await connected(cluster, {"echo": echo})
        with (
            caplog.at_level(logging.ERROR, logger="ringstore.net.connection"),
            trio.fail_after(DEADLINE_S),
        ):
            assert a.start_call("b", "echo", {}, timeout_s=5, on_reply=broken)
            # The reader went on: the next call's reply gets through the same connection.
            assert await a.call("b", "echo", {"n": 2}, timeout_s=5) == {
                "peer": "a",
                "body": {"n": 2},
            }
        assert "answer function failed" in caplog.text and "bug in the caller" in caplog.text
        assert a.statistics().calls_in_flight == 0
        assert a.statistics().connections_dialled == 1


async def test_bad_started_calls_are_refused_before_anything_is_sent(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a, b = await connected(cluster, {"echo": echo})
        answers = Answers()
        handled = b.statistics().requests_handled
        with pytest.raises(LocalProtocolError):
            a.start_call("b", "echo", {"value": 1.5}, timeout_s=5, on_reply=answers)
        with pytest.raises(LocalProtocolError):
            a.start_call("b", "not a method!", {}, timeout_s=5, on_reply=answers)
        with pytest.raises(LocalError):
            a.start_call("a", "echo", {}, timeout_s=5, on_reply=answers)
        with pytest.raises(LocalError):
            a.start_call("b", "echo", {}, timeout_s=0, on_reply=answers)
        assert a.statistics().calls_in_flight == 0
        with trio.fail_after(DEADLINE_S):
            await a.call("b", "echo", {}, timeout_s=5)
        assert b.statistics().requests_handled == handled + 1
        assert answers.got == []
