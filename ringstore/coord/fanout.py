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
    on_all_done: Callable[[], Awaitable[None]] | None = None,
    known: Sequence[Outcome[T]] = (),
) -> bool:
    """Run `call` for every target in `background`; wait until `on_outcome` says enough.

    `on_outcome` sees every outcome, early or late (the pure core decides); it returns True
    once the request can be answered. Returns False if neither that nor the last answer
    came within `timeout_s`. The calls go on after the return, each bounded by `timeout_s`, and
    `on_all_done` runs after the last of them (read repair lives there). `known` are
    outcomes the caller already has (this node's own replica, read without waiting): they
    count first, and cost no task.
    """
    enough = trio.Event()
    for outcome in known:
        if on_outcome(outcome):
            enough.set()
    pending = len(targets)
    deadline = trio.current_time() + timeout_s

    async def one(target: Target) -> None:
        nonlocal pending
        outcome: Outcome[T] = Outcome(target, None, trio.TooSlowError())
        # A bare CancelScope, not trio.fail_after: this runs per replica per request, and
        # fail_after's generator context manager was a visible share of a small GET.
        with trio.CancelScope(deadline=deadline):
            try:
                outcome = Outcome(target, await call(target), None)
            except Exception as exc:  # a replica's failure is a vote, not a crash
                outcome = Outcome(target, None, exc)
        if on_outcome(outcome):
            enough.set()
        pending -= 1
        if pending == 0:
            enough.set()
            if on_all_done is not None:
                try:
                    await on_all_done()
                except Exception:
                    log.exception("background work after a request failed")

    for target in targets:
        background.start_soon(one, target)
    if not targets or enough.is_set():
        return enough.is_set()
    with trio.CancelScope(deadline=deadline):
        await enough.wait()
    return enough.is_set()
