"""Fan one call out to several replicas; return at quorum, keep collecting in the background."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from ringstore.core.ring import Target

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    target: Target
    value: T | None
    error: BaseException | None


async def fan_out(
    background: trio.Nursery,
    targets: Sequence[Target],
    call: Callable[[Target], Awaitable[T]],
    on_outcome: Callable[[Outcome[T]], bool],
    *,
    timeout_s: float,
    on_all_done: Callable[[], Awaitable[None] | None] | None = None,
    known: Sequence[Outcome[T]] = (),
    start: Callable[[Target, Callable[[Outcome[T]], None], float], bool] | None = None,
) -> bool:
    """Run `call` for every target in `background`; wait until `on_outcome` says enough.

    `on_outcome` sees every outcome, early or late (the pure core decides); it returns True
    once the request can be answered. Returns False if neither that nor the last answer
    came within `timeout_s`. The calls go on after the return, each bounded by `timeout_s`,
    and `on_all_done()` is called after the last of them (at once if there are none); the
    awaitable it may return (read repair) then runs in the background. `known` are outcomes
    the caller already has (this node's own replica, read without waiting): they count
    first, and cost no task.

    `start(target, deliver, timeout_s)`, if given, is tried first for each target: True
    means it started the target's call without a task and will `deliver(outcome)` exactly
    once, from whichever task gets the answer, within `timeout_s`; False, that the call
    runs in a task after all. A task per call is a visible share of a small GET.
    """
    enough = trio.Event()
    for outcome in known:
        if on_outcome(outcome):
            enough.set()
    pending = len(targets)
    deadline = trio.current_time() + timeout_s

    def count(outcome: Outcome[T]) -> Awaitable[None] | None:
        """Count one outcome; return the background work to run if it was the last."""
        nonlocal pending
        if on_outcome(outcome):
            enough.set()
        pending -= 1
        if pending == 0:
            enough.set()
            return all_done()
        return None

    def all_done() -> Awaitable[None] | None:
        if on_all_done is not None:
            try:
                return on_all_done()
            except Exception:
                log.exception("background work after a request failed")
        return None

    def in_background(work: Awaitable[None] | None) -> None:
        if work is not None:
            try:
                background.start_soon(_run_in_background, work)
            except RuntimeError:  # the node is stopping: its background nursery is closed
                getattr(work, "close", lambda: None)()

    def deliver(outcome: Outcome[T]) -> None:
        try:
            work = count(outcome)
        except Exception:
            log.exception("counting a replica's answer failed")
            return
        in_background(work)

    async def one(target: Target) -> None:
        outcome: Outcome[T] = Outcome(target, None, trio.TooSlowError())
        # A bare CancelScope, not trio.fail_after: this runs per replica per request, and
        # fail_after's generator context manager was a visible share of a small GET.
        with trio.CancelScope(deadline=deadline):
            try:
                outcome = Outcome(target, await call(target), None)
            except Exception as exc:  # a replica's failure is a vote, not a crash
                outcome = Outcome(target, None, exc)
        work = count(outcome)
        if work is not None:
            await _run_in_background(work)

    for target in targets:
        try:
            started = start is not None and start(target, deliver, timeout_s)
        except Exception as exc:  # refused before anything was sent: a vote, like a failure
            deliver(Outcome(target, None, exc))
            continue
        if not started:
            background.start_soon(one, target)
    if not targets:
        in_background(all_done())
        return enough.is_set()
    if enough.is_set():
        return True
    with trio.CancelScope(deadline=deadline):
        await enough.wait()
    return enough.is_set()


async def _run_in_background(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("background work after a request failed")
