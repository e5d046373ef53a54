"""Which writes send a sequence of byte pieces: small ones joined, large ones as they are."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def coalesced(pieces: Iterable[bytes], large_bytes: int) -> Iterator[bytes]:
    """The writes that send `pieces` in order: each run of pieces shorter than `large_bytes`
    joined into one (one syscall instead of several), each larger piece (a chunk of a value)
    on its own (joining would copy it for no syscall saved). Empty writes are left out."""
    small: list[bytes] = []
    for piece in pieces:
        if len(piece) < large_bytes:
            small.append(piece)
            continue
        if small:
            joined = b"".join(small)
            small = []
            if joined:
                yield joined
        yield piece
    joined = b"".join(small)
    if joined:
        yield joined
