"""fan_out: answer at quorum, keep collecting in the background, count known outcomes first."""

from __future__ import annotations

import trio
import trio.testing

from ringstore.coord.fanout import Outcome, fan_out
from ringstore.core.ring import Target

LOCAL = Target(0, "n1", True)
REMOTES = [Target(0, "n2", True), Target(0, "n3", True)]


async def test_a_known_outcome_can_answer_alone_and_the_remote_calls_still_run(
    nursery, autojump_clock
):
    seen: list[str] = []
    slow_reply = trio.Event()
    all_done = trio.Event()

    async def call(target: Target) -> str:
        if target.node == "n3":
            await slow_reply.wait()
        return target.node

    def on_outcome(outcome: Outcome[str]) -> bool:
        seen.append(outcome.target.node)
        return True  # R=1: any answer is enough

    async def after_all() -> None:
        all_done.set()

    enough = await fan_out(
        nursery,
        REMOTES,
        call,
        on_outcome,
        timeout_s=5,
        on_all_done=after_all,
        known=[Outcome(LOCAL, "n1", None)],
    )
    assert enough and seen == ["n1"]  # answered from the known outcome, before any call
    await trio.testing.wait_all_tasks_blocked()
    assert seen == ["n1", "n2"] and not all_done.is_set()
    slow_reply.set()
    await all_done.wait()  # the read repair hook runs after the last remote answer
    assert seen == ["n1", "n2", "n3"]


async def test_known_failures_count_and_the_deadline_still_bounds_the_wait(nursery, autojump_clock):
    outcomes: list[Outcome[str]] = []

    async def call(target: Target) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    def on_outcome(outcome: Outcome[str]) -> bool:
        outcomes.append(outcome)
        return len([o for o in outcomes if o.error is None]) >= 2

    started = trio.current_time()
    known = [Outcome(LOCAL, None, OSError("disk gone"))]
    # The remote calls time out at the same instant as the wait: whether fan_out saw them
    # all end is a tie, so only the time and the outcomes are asserted.
    await fan_out(nursery, REMOTES, call, on_outcome, timeout_s=5, known=known)
    assert trio.current_time() - started == 5
    await trio.testing.wait_all_tasks_blocked()
    assert [type(o.error).__name__ for o in outcomes] == ["OSError", "TooSlowError", "TooSlowError"]


async def test_started_calls_count_without_tasks_and_the_rest_run_in_tasks(nursery, autojump_clock):
    """`start` takes n2's call (answered later, from elsewhere); n3's start declines, so n3
    runs in a task. The hook's awaitable runs once the last outcome is in, whichever it was."""
    seen: list[tuple[str, object]] = []
    delivers: dict[str, object] = {}
    repaired = trio.Event()
    called: list[str] = []

    def start(target: Target, deliver, timeout_s: float) -> bool:
        assert timeout_s == 5
        if target.node == "n3":
            return False
        delivers[target.node] = deliver
        return True

    async def call(target: Target) -> str:
        called.append(target.node)
        return "from a task"

    def on_outcome(outcome: Outcome[str]) -> bool:
        seen.append((outcome.target.node, outcome.value))
        return len(seen) >= 2

    async def repair() -> None:
        repaired.set()

    def after_all():
        return repair()

    enough = await fan_out(
        nursery,
        REMOTES,
        call,
        on_outcome,
        timeout_s=5,
        on_all_done=after_all,
        known=[Outcome(LOCAL, "local", None)],
        start=start,
    )
    assert enough
    assert called == ["n3"] and seen == [("n1", "local"), ("n3", "from a task")]
    assert not repaired.is_set()
    delivers["n2"](Outcome(REMOTES[0], "started", None))  # the last outcome, from a callback
    with trio.fail_after(1):
        await repaired.wait()  # the hook's work ran in the background nursery
    assert seen[-1] == ("n2", "started")


async def test_a_started_call_can_answer_before_start_returns_and_errors_are_contained(
    nursery, autojump_clock, caplog
):
    seen: list[str] = []

    def start(target: Target, deliver, timeout_s: float) -> bool:
        deliver(Outcome(target, None, OSError(f"{target.node} down")))
        return True

    async def call(target: Target) -> str:
        raise AssertionError("every call was started")

    def on_outcome(outcome: Outcome[str]) -> bool:
        if outcome.target.node == "n3":
            raise RuntimeError("a bug in the quorum core")
        seen.append(str(outcome.error))
        return False

    started = trio.current_time()
    enough = await fan_out(nursery, REMOTES, call, on_outcome, timeout_s=5, start=start)
    # n2 counted before start returned; n3's count raised inside deliver: logged there, not
    # raised into the task that delivered, and not counted, so fan_out waited out its time.
    assert seen == ["n2 down"]
    assert enough is False and trio.current_time() - started == 5
    assert "counting a replica's answer failed" in caplog.text


async def test_a_start_that_raises_counts_as_that_replicas_failure(nursery, autojump_clock):
    outcomes: list[Outcome[str]] = []

    def start(target: Target, deliver, timeout_s: float) -> bool:
        if target.node == "n2":
            raise ValueError("cannot send that")
        return False

    async def call(target: Target) -> str:
        return target.node

    def on_outcome(outcome: Outcome[str]) -> bool:
        outcomes.append(outcome)
        return len(outcomes) == 2

    assert await fan_out(nursery, REMOTES, call, on_outcome, timeout_s=5, start=start)
    assert [(o.target.node, o.value, type(o.error).__name__) for o in outcomes] == [
        ("n2", None, "ValueError"),
        ("n3", "n3", "NoneType"),
    ]
