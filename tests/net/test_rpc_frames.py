"""Frames of every size share one connection: the sender coalesces small ones and writes
large payloads on their own, always in order, over TCP and the in-memory network."""

from __future__ import annotations

import random

import trio

from ringstore.net.connection import COALESCE_BYTES

DEADLINE_S = 10.0  # generous bound on any wait here; the test finishes far sooner


async def echo(peer: str, body: dict) -> dict:
    return {"peer": peer, "body": body}


async def test_small_and_large_calls_interleave_intact(make_cluster, clock) -> None:
    rng = random.Random(3)
    sizes = [0, 10, COALESCE_BYTES - 100, COALESCE_BYTES, 1024 * 1024, 7, 2 * COALESCE_BYTES]
    payloads = [rng.randbytes(size) for size in sizes * 3]
    replies: dict[int, dict] = {}
    async with make_cluster() as cluster:
        a = await cluster.start("a", {"echo": echo})
        b = await cluster.start("b", {"echo": echo})

        async def call(caller, peer: str, i: int) -> None:
            replies[i] = await caller.call(peer, "echo", {"i": i, "d": payloads[i]}, timeout_s=5)

        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                for i in range(len(payloads)):
                    # Both directions at once: replies and requests share each sender.
                    caller, peer = (a, "b") if i % 2 else (b, "a")
                    nursery.start_soon(call, caller, peer, i)
    assert sorted(replies) == list(range(len(payloads)))
    for i, reply in replies.items():
        assert reply["body"] == {"i": i, "d": payloads[i]}
