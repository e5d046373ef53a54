"""Crash recovery of the LMDB engine: a child process writing objects is killed with SIGKILL.

Each round starts crash_child.py on the same directory, reads its report of begun and
acknowledged operations, kills it at a random moment and then checks, in this process:
every acknowledged object is there byte for byte (an operation that was in flight may or may
not have landed), no record names a chunk that cannot be read and verified, reference counts
match the records, and after a sweep with no grace no chunk file is left unreferenced.
Replay a failure with RINGSTORE_CRASH_SEED=<seed printed by the failing run>.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cbor2
import crash_child
import lmdb
import trio

from ringstore.core.hashing import chunk_hash
from ringstore.storage.lmdb_store import LmdbStore

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = 5
ACKS_BEFORE_KILL = (10, 100)  # a round's kill comes after this many acknowledgements...
KILL_DELAY_S = (0.0, 0.2)  # ...plus a random delay: the point is a random moment
ROUND_DEADLINE_S = 60  # a child far slower than this is broken, not slow


@dataclass
class KeyState:
    """What the reports say about one key: its last acknowledged state and any newer one."""

    acked: str = crash_child.DELETED
    pending: str | None = None

    def allowed(self) -> set[str]:
        return {self.acked} if self.pending is None else {self.acked, self.pending}


class Reports:
    """Parses the child's stdout lines into per-key states."""

    def __init__(self, states: dict[tuple[bytes, bytes], KeyState]) -> None:
        self.states = states
        self.acks = 0
        self.partial = b""

    def feed(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()  # the rest of this line comes with the next data
        for line in lines:
            phase, _op, bucket, key, state = line.decode().split(" ")
            entry = self.states[bytes.fromhex(bucket), bytes.fromhex(key)]
            if phase == "begin":
                assert entry.pending is None, f"two operations in flight on one key: {line!r}"
                entry.pending = state
            else:
                assert phase == "ack" and entry.pending == state, line
                entry.acked, entry.pending = state, None
                self.acks += 1

    def end_of_stream(self) -> None:
        # Each line is one write of less than PIPE_BUF bytes: not even a kill cuts one.
        assert self.partial == b"", self.partial


def tail_of(path: Path) -> str:
    return path.read_text()[-2000:]


async def run_and_kill(
    directory: Path, seed: int, rng: random.Random, reports: Reports, stderr_path: Path
) -> None:
    """One round: run the child until a random moment after some acknowledgements, kill it."""
    wanted_acks = reports.acks + rng.randint(*ACKS_BEFORE_KILL)
    enough_or_eof = trio.Event()
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD), str(directory), str(seed)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None

        async def read_reports() -> None:
            async for data in process.stdout:
                reports.feed(data)
                if reports.acks >= wanted_acks:
                    enough_or_eof.set()
            enough_or_eof.set()

        with trio.fail_after(ROUND_DEADLINE_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_reports)
                await enough_or_eof.wait()
                assert reports.acks >= wanted_acks, (
                    f"the child stopped after {reports.acks} acks: {tail_of(stderr_path)}"
                )
                await trio.sleep(rng.uniform(*KILL_DELAY_S))
                process.kill()
                # The reader goes on to end of file: reports written before the kill count.
            returncode = await process.wait()
        reports.end_of_stream()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.stdout.aclose()
    assert returncode == -signal.SIGKILL, tail_of(stderr_path)


def chunk_files(directory: Path) -> set[bytes]:
    return {bytes.fromhex(name) for _, _, names in os.walk(directory / "chunks") for name in names}


def chunk_rows(directory: Path) -> dict[bytes, list]:
    """The `chunks` database as lmdb_layout's Layout documents it: hash -> [size, refcount,
    last_change, present]. Read with the engine closed."""
    env = lmdb.open(str(directory / "meta.lmdb"), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return {
                bytes(chunk): cbor2.loads(raw)
                for chunk, raw in txn.cursor(db=env.open_db(b"chunks", txn=txn))
            }
    finally:
        env.close()


async def check_recovered(directory: Path, states: dict[tuple[bytes, bytes], KeyState]) -> None:
    """Reopen the store: acknowledged objects are intact, records and chunks agree, and a
    sweep with no grace leaves exactly the referenced chunk files. Then settle `states` on
    what was found, for the next round."""
    # As the crash left it: a chunk row says present only once its file is durable in place
    # (else a record could name a chunk that is not there).
    present = {chunk for chunk, row in chunk_rows(directory).items() if row[3]}
    assert present <= chunk_files(directory)

    store = LmdbStore(
        directory,
        ring_size=crash_child.RING_SIZE,
        inline_max=crash_child.INLINE_MAX,
        chunk_size=crash_child.CHUNK_SIZE,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for (bucket, key), entry in states.items():
            found = crash_child.state_of(await crash_child.load_value(store, bucket, key))
            assert found in entry.allowed(), (bucket, key, found, entry)
            entry.acked, entry.pending = found, None

        records = []
        for partition in range(crash_child.RING_SIZE):
            async for page in store.scan_partition(partition):
                records.extend(page)
        assert {(r.bucket, r.key) for r in records} <= set(states)
        assert store.statistics().objects == len(records)
        references = Counter(chunk for r in records for chunk in set(r.chunks))
        assert await store.missing_chunks(list(references)) == frozenset()
        for chunk in references:
            await store.read_chunk(chunk)  # verified against its hash

        await store.sweep(0)
        assert chunk_files(directory) == set(references)
        assert os.listdir(directory / "tmp") == []
        await store.aclose()

    rows = chunk_rows(directory)
    assert {chunk: row[1] for chunk, row in rows.items()} == dict(references)
    assert all(row[3] for row in rows.values()), "a referenced chunk is marked missing"


async def test_acknowledged_writes_survive_sigkill(tmp_path):
    seed = int(os.environ.get("RINGSTORE_CRASH_SEED", random.randrange(2**32)))
    print(f"RINGSTORE_CRASH_SEED={seed}")
    rng = random.Random(seed)
    directory = tmp_path / "store"
    states = {pair: KeyState() for pair in crash_child.all_keys()}
    reports = Reports(states)
    for round_number in range(ROUNDS):
        await run_and_kill(
            directory, rng.randrange(2**32), rng, reports, tmp_path / f"stderr.{round_number}"
        )
        await check_recovered(directory, states)
    assert reports.acks >= ROUNDS * ACKS_BEFORE_KILL[0]
    assert {entry.acked for entry in states.values()} != {crash_child.DELETED}


def drop_clean_mark(directory: Path) -> None:
    """What a crash leaves: the engine removes the mark when it opens, puts it back at close."""
    env = lmdb.open(str(directory / "meta.lmdb"), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            assert txn.delete(b"\xffclean", db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


async def test_start_after_a_crash_adopts_chunk_files_without_rows(tmp_path):
    directory = tmp_path / "store"

    async def run_store(check) -> None:
        store = LmdbStore(directory, ring_size=crash_child.RING_SIZE)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await check(store)
            await store.aclose()

    kept_data, orphan_data = b"named by a record", b"published, then the crash"
    kept, orphan = chunk_hash(kept_data), chunk_hash(orphan_data)

    async def write(store: LmdbStore) -> None:
        await store.write_chunk(kept_data)
        await store.put_record(b"b", b"k", b"r", [kept])

    await run_store(write)
    orphan_path = directory / "chunks" / orphan.hex()[:2] / orphan.hex()[2:4] / orphan.hex()
    orphan_path.parent.mkdir(parents=True)
    orphan_path.write_bytes(orphan_data)
    stray_path = directory / "chunks" / "00" / "00" / "not-a-chunk"
    stray_path.parent.mkdir(parents=True)
    stray_path.write_bytes(b"left by the operator")

    async def after_clean_stop(store: LmdbStore) -> None:
        # No walk after a clean stop: such a file cannot exist then.
        assert store.statistics().chunks == 1
        assert await store.missing_chunks([orphan]) == {orphan}

    await run_store(after_clean_stop)
    drop_clean_mark(directory)

    async def after_crash(store: LmdbStore) -> None:
        assert store.statistics().chunks == 2
        assert await store.read_chunk(orphan) == orphan_data
        assert await store.sweep(0) == 1
        assert await store.read_chunk(kept) == kept_data

    await run_store(after_crash)
    assert stray_path.exists()
    stray_path.unlink()
    assert chunk_files(directory) == {kept}
    assert sorted(chunk_rows(directory)) == [kept]
