"""The peer protocol's strict CBOR subset: a check of what may be sent, a parser that refuses
what may not be received before building anything from it."""

# The subset: None, bool, int (CBOR's native -2**64 .. 2**64-1), bytes (bytearray is sent as
# bytes), str, list and dict with str or bytes keys, exactly those types, at most MAX_DEPTH
# deep and MAX_ITEMS_PER_FRAME items in one frame. We encode with cbor2 (C) after
# `check_value`, and decode with `Decoder`, which refuses tags, floats, other simple values,
# indefinite lengths, duplicate keys, too deep nesting and too many items as it meets them: a
# general decoder would first build them, blocking the event loop for seconds on one 4 MiB
# frame of tiny items. Both sides apply the same limits, so what we send, the peer can decode.
# Errors: LocalProtocolError for what we try to send, ProtocolError for what the peer sent.

from __future__ import annotations

from typing import Any

from ringstore.errors import LocalProtocolError, ProtocolError

MAX_ITEMS_PER_FRAME = 131_072  # 4 MiB of 32-byte hashes fits; bounds objects made per frame
MAX_DEPTH = 16  # nested maps/lists per frame, the message map included; bounds recursion
CBOR_UINT_MAX = 2**64 - 1  # CBOR's native integers; bigger ones need tags, which we refuse
_QUOTE_CHARS = 40  # peer-supplied values quoted in errors are cut to this many characters


def quote(value: object) -> str:
    """A short printable form of a value for an error message, cheap even for huge values."""
    if isinstance(value, str | bytes | bytearray):
        text = repr(value[:_QUOTE_CHARS])
    elif isinstance(value, list | dict):
        text = f"<{type(value).__name__} of {len(value)} items>"
    elif isinstance(value, int) and value.bit_length() > 64:
        text = f"<int of {value.bit_length()} bits>"
    else:
        text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "..."


class Tally:
    """Items and a lower bound on encoded bytes, counted while checking a value to send."""

    __slots__ = ("items", "min_bytes")

    def __init__(self, items: int = 0) -> None:
        self.items = items
        self.min_bytes = 0


def check_value(value: Any, depth: int, tally: Tally) -> None:
    """Raise LocalProtocolError unless `value` may travel in a frame (see the top).

    Types are checked exactly (no subclasses), so what the peer decodes equals what we sent.
    """
    tally.items += 1
    kind = type(value)
    if kind is bytes or kind is bytearray:
        tally.min_bytes += len(value)
    elif kind is str:
        tally.min_bytes += len(value)
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise LocalProtocolError(f"string {quote(value)} is not valid Unicode") from None
    elif kind is int:
        if not -CBOR_UINT_MAX - 1 <= value <= CBOR_UINT_MAX:
            raise LocalProtocolError(f"integer {quote(value)} is outside -2**64..2**64-1")
    elif kind is list or kind is dict:
        if depth >= MAX_DEPTH:
            raise LocalProtocolError(f"message nests deeper than {MAX_DEPTH} levels")
        if tally.items + len(value) > MAX_ITEMS_PER_FRAME:
            raise LocalProtocolError(f"message has over {MAX_ITEMS_PER_FRAME} CBOR items")
        if kind is list:
            for item in value:
                check_value(item, depth + 1, tally)
        else:
            for key, item in value.items():
                if type(key) is not str and type(key) is not bytes:
                    raise LocalProtocolError(f"map key {quote(key)} is not str or bytes")
                check_value(key, depth + 1, tally)
                check_value(item, depth + 1, tally)
        if tally.items > MAX_ITEMS_PER_FRAME:
            raise LocalProtocolError(f"message has over {MAX_ITEMS_PER_FRAME} CBOR items")
    elif value is not None and kind is not bool:
        raise LocalProtocolError(
            f"{kind.__name__} cannot travel in a message "
            "(allowed: None, bool, int, bytes, bytearray, str, list, dict)"
        )


SIMPLE_VALUES = {20: False, 21: True, 22: None}  # the only major-type-7 values we accept


class Decoder:
    """Parses one CBOR item of the allowed subset; anything else is the peer's ProtocolError."""

    __slots__ = ("data", "end", "pos", "items")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.items = 1  # the item decode() is about to read; containers count their own

    def decode(self, depth: int) -> object:
        data = self.data
        pos = self.pos
        if pos >= self.end:
            raise ProtocolError("frame ends before its CBOR item does")
        initial = data[pos]
        major = initial >> 5
        info = initial & 0x1F
        pos += 1
        if major == 7:
            self.pos = pos
            if info in SIMPLE_VALUES:
                return SIMPLE_VALUES[info]
            raise ProtocolError("floats and simple values other than false/true/null are refused")
        if major == 6:
            raise ProtocolError("CBOR tags are not allowed")
        if info < 24:
            argument = info
        elif info < 28:
            width = 1 << (info - 24)
            if pos + width > self.end:
                raise ProtocolError("frame ends inside a CBOR item")
            argument = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        else:
            raise ProtocolError("indefinite lengths and reserved CBOR values are not allowed")
        if major <= 1:
            self.pos = pos
            return argument if major == 0 else -1 - argument
        if major <= 3:
            end = pos + argument
            if end > self.end:
                raise ProtocolError("frame ends inside a CBOR string")
            self.pos = end
            if major == 2:
                return bytes(data[pos:end])
            try:
                return str(data[pos:end], "utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("text string is not valid UTF-8") from None
        self.pos = pos
        if depth >= MAX_DEPTH:
            raise ProtocolError(f"frame nests deeper than {MAX_DEPTH} levels")
        # Count a container's items before decoding any of them, and refuse impossible counts
        # (each item takes at least one byte) before looping on them.
        count = argument if major == 4 else 2 * argument
        if count > self.end - pos:
            raise ProtocolError(f"{'array' if major == 4 else 'map'} is longer than its frame")
        self.items += count
        if self.items > MAX_ITEMS_PER_FRAME:
            raise ProtocolError(f"frame holds over {MAX_ITEMS_PER_FRAME} CBOR items")
        if major == 4:
            return [self.decode(depth + 1) for _ in range(argument)]
        return self._map(argument, depth + 1)

    def _map(self, length: int, depth: int) -> dict[Any, Any]:
        """A map's `length` pairs at `depth`. Every message is maps of short text keys to
        small ints, strings, byte strings and booleans: those are read here, without a call
        of decode() each (a fifth to a third of a small frame's decoding time); anything
        else, the errors included, goes through decode()."""
        data = self.data
        end = self.end
        decode = self.decode
        result: dict[Any, Any] = {}
        for _ in range(length):
            pos = self.pos
            initial = data[pos] if pos < end else 0xFF
            if 0x60 <= initial < 0x78:  # a text string shorter than 24 bytes
                stop = pos + 1 + initial - 0x60
                if stop > end:
                    raise ProtocolError("frame ends inside a CBOR string")
                try:
                    key: Any = str(data[pos + 1 : stop], "utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError("text string is not valid UTF-8") from None
                pos = stop
            else:
                key = decode(depth)
                if type(key) is not str and type(key) is not bytes:
                    raise ProtocolError(f"map key {quote(key)} is not str or bytes")
                pos = self.pos
            if key in result:
                raise ProtocolError(f"duplicate map key {quote(key)}")
            initial = data[pos] if pos < end else 0xFF
            if initial < 0x18:  # an unsigned int below 24
                self.pos = pos + 1
                result[key] = initial
            elif 0x40 <= initial < 0x5A or 0x60 <= initial < 0x7A:
                # A byte or text string with a length of up to two bytes.
                length_or_info = initial & 0x1F
                start = pos + 1
                if length_or_info == 24:
                    if start >= end:
                        raise ProtocolError("frame ends inside a CBOR item")
                    length_or_info = data[start]
                    start += 1
                elif length_or_info == 25:
                    if start + 2 > end:
                        raise ProtocolError("frame ends inside a CBOR item")
                    length_or_info = (data[start] << 8) | data[start + 1]
                    start += 2
                stop = start + length_or_info
                if stop > end:
                    raise ProtocolError("frame ends inside a CBOR string")
                self.pos = stop
                if initial < 0x60:
                    result[key] = bytes(data[start:stop])
                else:
                    try:
                        result[key] = str(data[start:stop], "utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError("text string is not valid UTF-8") from None
            else:
                self.pos = pos
                result[key] = decode(depth)
        return result


def bytes_head(length: int) -> bytes:
    """The CBOR head of a byte string of `length` bytes (major type 2, shortest form)."""
    if length < 24:
        return bytes([0x40 | length])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * size):
            return bytes([0x40 | info]) + length.to_bytes(size, "big")
    raise LocalProtocolError(f"a byte string of {length} bytes cannot be encoded")
