"""coalesced: small pieces joined into one write, large ones sent as they are, order kept."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.core.writes import coalesced


def test_small_runs_are_joined_and_large_pieces_pass_through_uncopied() -> None:
    large = b"L" * 10
    writes = list(coalesced([b"a", b"b", large, b"", b"c", large], 10))
    assert writes == [b"ab", large, b"c", large]
    assert writes[1] is large and writes[3] is large  # never copied into a joined buffer


def test_nothing_to_send_is_no_write() -> None:
    assert list(coalesced([], 4)) == []
    assert list(coalesced([b"", b""], 4)) == []


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=12)), st.integers(min_value=1, max_value=10))
def test_the_bytes_and_their_order_are_kept(pieces: list[bytes], large_bytes: int) -> None:
    writes = list(coalesced(pieces, large_bytes))
    assert b"".join(writes) == b"".join(pieces)
    assert all(writes)
