"""A streaming multipart/form-data parser (RFC 7578): bytes in, part events out, bounded memory.

Sans-IO, as h11: `receive_data(bytes)` feeds the body (b"" at its end), `next_event()` returns
`PartStart`, `PartData`, `PartEnd`, `FormEnd` or `NEED_DATA`. A file part's bytes come out as
they arrive: the parser holds at most one received piece plus a delimiter's length, however
large the file, so an upload streams straight into `KV.put`. The standard library cannot do
this (`email.parser.BytesFeedParser` keeps the whole message), nor can any package we use.

The body, as RFC 2046 section 5.1.1 frames it:

    preamble CRLF? "--" boundary LWSP* CRLF  headers CRLF  data
               CRLF "--" boundary LWSP* CRLF  headers CRLF  data ...
               CRLF "--" boundary "--" epilogue

The machine (the delimiter is CRLF "--" boundary; a CRLF is put in front of the body so the
first one, which may start the body, looks like every other):

    PREAMBLE   -- skip to the first delimiter                       -> BOUNDARY
    BOUNDARY   -- "--": the form is over                             -> EPILOGUE (FormEnd)
                  LWSP* CRLF: a part follows                         -> HEADERS
    HEADERS    -- up to the empty line; PartStart                    -> DATA
    DATA       -- PartData up to the next delimiter, then PartEnd    -> BOUNDARY
    EPILOGUE   -- everything is ignored
    ERROR      -- every call raises the error that got us here

Names and filenames follow the HTML form encoding (what browsers send): a quoted string ends
at the next quote (no backslash escapes: a Windows path keeps its backslashes) and `%22`,
`%0D` and `%0A` in it stand for a quote, CR and LF. Header bytes are decoded as UTF-8 with
undecodable bytes kept as surrogate escapes, so no name a browser sends is lost.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ringstore.errors import BadFormData

MAX_BOUNDARY_CHARS = 70  # RFC 2046's limit
MAX_PART_HEADER_BYTES = 8 * 1024  # one part's header block: a name, a filename and a type
MAX_PARTS = 64  # a form is a handful of fields; more is garbage or an attack
MAX_PREAMBLE_BYTES = 64 * 1024  # browsers send none; a missing boundary is found out early
MAX_PADDING_BYTES = 64  # spaces or tabs allowed after a boundary on its line
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTML_ESCAPES = (("%22", '"'), ("%0D", "\r"), ("%0A", "\n"))


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins: its form field name, the filename of a file field, its content type."""

    name: str
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


@dataclass(frozen=True, slots=True)
class FormEnd:
    """The closing boundary arrived; whatever follows is epilogue and ignored."""


Event = PartStart | PartData | PartEnd | FormEnd


class _State(enum.Enum):
    PREAMBLE = "preamble"
    BOUNDARY = "boundary"
    HEADERS = "headers"
    DATA = "data"
    EPILOGUE = "epilogue"
    ERROR = "error"


def boundary_from_content_type(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data; boundary=...` Content-Type; BadFormData if the
    type is another or the boundary is missing or not what RFC 2046 allows."""
    if content_type is None:
        raise BadFormData("an upload needs Content-Type: multipart/form-data")
    head, *params = _split_params(content_type)
    if head.strip().lower() != "multipart/form-data":
        raise BadFormData(f"an upload must be multipart/form-data, not {head.strip()!r}")
    boundary = None
    for param in params:
        name, eq, value = param.partition("=")
        if eq and name.strip().lower() == "boundary":
            boundary = _unquote_param(value.strip())
    if boundary is None:
        raise BadFormData("multipart/form-data without a boundary parameter")
    if not _BCHARS.fullmatch(boundary):
        raise BadFormData(
            f"invalid multipart boundary {boundary[: MAX_BOUNDARY_CHARS + 10]!r} "
            f"(1 to {MAX_BOUNDARY_CHARS} characters of RFC 2046's set, not ending in a space)"
        )
    return boundary.encode("ascii")


def _split_params(value: str) -> list[str]:
    """Split on `;` outside double quotes (a quote ends a quoted string, as browsers write)."""
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    for char in value:
        if char == '"':
            in_quotes = not in_quotes
        if char == ";" and not in_quotes:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if in_quotes:
        raise BadFormData(f"unterminated quoted string in {value!r}")
    parts.append("".join(current))
    return parts


def _unquote_param(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
        for escaped, char in _HTML_ESCAPES:
            value = value.replace(escaped, char)
        return value
    if '"' in value:
        raise BadFormData(f"malformed parameter value {value!r}")
    return value


def _parse_part_headers(block: bytes) -> PartStart:
    """A part's header block (without the empty line) to its PartStart."""
    disposition: str | None = None
    content_type: str | None = None
    text = block.decode("utf-8", "surrogateescape")
    for line in text.split("\r\n") if text else ():
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadFormData(f"malformed part header line {line[:100]!r}")
        lower = name.lower()
        if lower == "content-disposition":
            if disposition is not None:
                raise BadFormData("a part with two Content-Disposition headers")
            disposition = value.strip()
        elif lower == "content-type":
            content_type = value.strip()
    if disposition is None:
        raise BadFormData("a form part without Content-Disposition")
    head, *params = _split_params(disposition)
    if head.strip().lower() != "form-data":
        raise BadFormData(f"a form part's disposition must be form-data, not {head.strip()!r}")
    values: dict[str, str] = {}
    for param in params:
        key, eq, value = param.partition("=")
        key = key.strip().lower()
        if not eq or not _TOKEN.fullmatch(key):
            raise BadFormData(f"malformed Content-Disposition parameter {param.strip()!r}")
        if key in values:
            raise BadFormData(f"Content-Disposition names {key} twice")
        values[key] = _unquote_param(value.strip())
    if "name" not in values:
        raise BadFormData("a form part without a field name")
    return PartStart(values["name"], values.get("filename"), content_type)


class FormDataParser:
    """Parses one multipart/form-data body; see the module docstring for the machine."""

    def __init__(
        self,
        boundary: bytes,
        *,
        max_parts: int = MAX_PARTS,
        max_header_bytes: int = MAX_PART_HEADER_BYTES,
    ) -> None:
        if not _BCHARS.fullmatch(boundary.decode("ascii", "replace")):
            raise ValueError(f"invalid multipart boundary {boundary!r}")
        self.max_parts = max_parts
        self.max_header_bytes = max_header_bytes
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")
        self._eof = False
        self._state = _State.PREAMBLE
        self._skipped = 0  # preamble bytes dropped so far
        self._parts = 0
        self._error: BadFormData | None = None
        self._steps = {
            _State.PREAMBLE: self._preamble,
            _State.BOUNDARY: self._boundary,
            _State.HEADERS: self._headers,
            _State.DATA: self._data,
            _State.EPILOGUE: self._epilogue,
        }

    def receive_data(self, data: bytes) -> None:
        """Feed the next bytes of the body; b"" says the body ended."""
        if self._eof:
            raise RuntimeError("receive_data after the end of the body")
        if not data:
            self._eof = True
        elif self._state is not _State.EPILOGUE:
            self._buffer += data

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA; BadFormData (every time, once raised) if the body is
        not a well-formed form."""
        if self._error is not None:
            raise self._error
        try:
            event = self._steps[self._state]()
        except BadFormData as exc:
            self._state = _State.ERROR
            self._error = exc
            raise
        if event is NEED_DATA and self._eof:
            self._state = _State.ERROR
            self._error = BadFormData("the form ended before its closing boundary")
            raise self._error
        return event

    # -- states --------------------------------------------------------------------------------

    def _preamble(self) -> Event | _NeedData:
        found = self._buffer.find(self._delimiter)
        drop = found if found >= 0 else max(0, len(self._buffer) - (len(self._delimiter) - 1))
        self._skipped += drop
        if self._skipped > MAX_PREAMBLE_BYTES:
            raise BadFormData("no multipart boundary found at the start of the form")
        if found < 0:
            del self._buffer[:drop]
            return NEED_DATA
        del self._buffer[: found + len(self._delimiter)]
        self._state = _State.BOUNDARY
        return self._boundary()

    def _boundary(self) -> Event | _NeedData:
        buffer = self._buffer
        if buffer[:2] == b"--":
            self._state = _State.EPILOGUE
            buffer.clear()
            return FormEnd()
        if buffer == b"-":
            return NEED_DATA
        padding = len(buffer) - len(buffer.lstrip(b" \t"))
        if padding > MAX_PADDING_BYTES:
            raise BadFormData("malformed multipart boundary line")
        rest = buffer[padding : padding + 2]
        if rest == b"\r\n":
            del buffer[: padding + 2]
            self._state = _State.HEADERS
            return self._headers()
        if rest in (b"", b"\r"):
            return NEED_DATA
        raise BadFormData("malformed multipart boundary line")

    def _headers(self) -> Event | _NeedData:
        buffer = self._buffer
        if buffer[:2] == b"\r\n":
            end, block = 2, b""
        else:
            found = buffer.find(b"\r\n\r\n")
            if found < 0:
                if len(buffer) > self.max_header_bytes:
                    raise BadFormData(f"a form part's headers exceed {self.max_header_bytes} bytes")
                return NEED_DATA
            if found > self.max_header_bytes:
                raise BadFormData(f"a form part's headers exceed {self.max_header_bytes} bytes")
            end, block = found + 4, bytes(buffer[:found])
        self._parts += 1
        if self._parts > self.max_parts:
            raise BadFormData(f"a form of more than {self.max_parts} parts")
        start = _parse_part_headers(block)
        del buffer[:end]
        self._state = _State.DATA
        return start

    def _data(self) -> Event | _NeedData:
        buffer = self._buffer
        found = buffer.find(self._delimiter)
        if found == 0:
            del buffer[: len(self._delimiter)]
            self._state = _State.BOUNDARY
            return PartEnd()
        if found > 0:
            data = bytes(buffer[:found])
            del buffer[:found]
            return PartData(data)
        # The tail may be the start of a delimiter: hold back what could be.
        safe = len(buffer) - (len(self._delimiter) - 1)
        if safe <= 0:
            return NEED_DATA
        data = bytes(buffer[:safe])
        del buffer[:safe]
        return PartData(data)

    def _epilogue(self) -> Event | _NeedData:
        if self._eof:
            return FormEnd()
        return NEED_DATA
