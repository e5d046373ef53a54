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
