"""Bucket properties and the quorum options of one request, validated as Riak validates them.

Two layers of input meet here:

- `BucketProps`: the per-bucket settings (Riak's names and defaults), updated partially from
  the JSON of `PUT /buckets/B/props`, stored in cluster meta as CBOR.
- Query parameters (`r`, `w`, `dw`, `rw`, `pr`, `pw`, `notfound_ok`, `basic_quorum`,
  `timeout`, `returnbody`), parsed exactly as riak_kv_wm_object parses them and resolved
  against the bucket's props into the plain integers of a `RequestOptions`.

Where ringstore is stricter than Riak it says so next to the check. Every bad value raises
`BadRequest` naming the property or parameter and the reason; nothing is changed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import cbor2

from ringstore.errors import BadRequest, LocalError, ProtocolError

MAX_N_VAL = 10  # every request fans out to N replicas; config.py bounds the node default alike
DEFAULT_TIMEOUT_MS = 60_000  # Riak's default request timeout
# Erlang's timer limit (2**32 - 1 ms, about 49 days): the largest timeout Riak accepts.
MAX_TIMEOUT_MS = 2**32 - 1
MAX_ENCODED_PROPS_BYTES = 4096  # a stored props record is ~150 bytes; bigger is not ours
SHOWN_VALUE_CHARS = 40  # error messages quote a bad value, cut to this length

QuorumWord: TypeAlias = Literal["one", "quorum", "all", "default"]
QuorumValue: TypeAlias = int | QuorumWord
Operation: TypeAlias = Literal["get", "put", "delete"]

QUORUM_WORDS: frozenset[str] = frozenset({"one", "quorum", "all", "default"})
# "default" means "the bucket's property": meaningless inside the bucket's props themselves,
# and riak_kv_bucket refuses it there too.
PROP_QUORUM_WORDS: frozenset[str] = frozenset({"one", "quorum", "all"})
QUORUM_PARAMS = ("r", "w", "dw", "rw", "pr", "pw")
BOOL_PARAMS = ("notfound_ok", "basic_quorum")
OPERATIONS: frozenset[str] = frozenset({"get", "put", "delete"})

# Erlang's list_to_integer: an optional sign and ASCII digits, nothing else (no spaces,
# underscores or other scripts' digits, which Python's int() would accept).
_INTEGER = re.compile(r"[+-]?[0-9]+")

# Quorum props that must be at least 1 (a read or write nobody answers is meaningless);
# dw, pr and pw may be 0 (riak_kv_bucket: is_quorum vs is_opt_quorum).
_POSITIVE_QUORUM_PROPS = frozenset({"r", "w", "rw"})
_BOOL_PROPS = ("allow_mult", "last_write_wins", "notfound_ok", "basic_quorum")

# Riak bucket properties whose behaviour ringstore fixes. A props body may carry them (a client
# writing back what it read from Riak), but only with the value that describes what ringstore
# does: anything else would be a setting we silently ignore.
_FIXED_RIAK_PROPS: dict[str, tuple[object, str]] = {
    "precommit": ([], "commit hooks are not supported"),
    "postcommit": ([], "commit hooks are not supported"),
    "dvv_enabled": (True, "ringstore always uses dotted version vectors"),
    "consistent": (False, "strongly consistent buckets are not supported"),
    "write_once": (False, "write-once buckets are not supported"),
}
# The bucket's name: the HTTP layer puts it in the props it shows and may get it back.
_NAME_PROP = "name"


def _show(value: object) -> str:
    text = repr(value)
    if len(text) > SHOWN_VALUE_CHARS:
        text = text[: SHOWN_VALUE_CHARS - 3] + "..."
    return text


def _bad_prop(name: str, reason: str) -> BadRequest:
    return BadRequest(f"bucket property '{name}' {reason}")


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python; JSON true is not a number
    return isinstance(value, int) and not isinstance(value, bool)


def _check_prop_quorum(name: str, value: object, n_val: int) -> None:
    if isinstance(value, str):
        if value not in PROP_QUORUM_WORDS:
            raise _bad_prop(
                name, f"must be an integer or one of 'one', 'quorum', 'all', got {_show(value)}"
            )
        return
    if not _is_int(value):
        raise _bad_prop(
            name, f"must be an integer or one of 'one', 'quorum', 'all', got {_show(value)}"
        )
    assert isinstance(value, int)
    low = 1 if name in _POSITIVE_QUORUM_PROPS else 0
    if value < low:
        raise _bad_prop(name, f"must be at least {low}, got {value}")
    # Stricter than Riak, which stores such a value and then fails every request that uses
    # the default with n_val_violation.
    if value > n_val:
        raise _bad_prop(name, f"must not exceed n_val ({n_val}), got {value}")


@dataclass(frozen=True, slots=True)
class BucketProps:
    """A bucket's replication and conflict settings, with Riak's names and defaults.

    `allow_mult` defaults to True, unlike Riak's untyped default bucket: with it false,
    concurrent writes would be resolved by timestamp and one of them silently lost.
    ringstore never drops an acknowledged write unless the bucket asks for it with
    `last_write_wins`. Setting both true is rejected (Riak leaves it undefined).

    Quorum values are an integer or one of "one", "quorum", "all"; integers may not exceed
    `n_val`. The constructor validates, so an invalid BucketProps never exists.
    """

    n_val: int = 3
    r: QuorumValue = "quorum"
    w: QuorumValue = "quorum"
    dw: QuorumValue = "quorum"
    rw: QuorumValue = "quorum"
    pr: QuorumValue = 0
    pw: QuorumValue = 0
    allow_mult: bool = True
    last_write_wins: bool = False
    notfound_ok: bool = True
    basic_quorum: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.n_val) or not 1 <= self.n_val <= MAX_N_VAL:
            raise _bad_prop(
                "n_val", f"must be an integer from 1 to {MAX_N_VAL}, got {_show(self.n_val)}"
            )
        for name in QUORUM_PARAMS:
            _check_prop_quorum(name, getattr(self, name), self.n_val)
        for name in _BOOL_PROPS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise _bad_prop(name, f"must be true or false, got {_show(value)}")
        if self.allow_mult and self.last_write_wins:
            raise BadRequest(
                "bucket properties 'allow_mult' and 'last_write_wins' cannot both be true"
                " (keep siblings or keep only the newest: Riak leaves the mix undefined)"
            )

    @classmethod
    def from_json(cls, update: object, base: BucketProps) -> BucketProps:
        """`base` with the properties named in `update` (the inner map of `{"props": ...}`).

        A partial update: properties not named keep `base`'s values. The result is
        validated as a whole, so one request can change `n_val` and a quorum together.
        Unknown properties are rejected by name, unlike Riak which stores them.
        """
        if not isinstance(update, Mapping):
            raise BadRequest(f"bucket properties must be a JSON object, got {_show(update)}")
        changes: dict[str, Any] = {}
        known = {field.name for field in dataclasses.fields(cls)}
        for name, value in update.items():
            if not isinstance(name, str):
                raise BadRequest(f"bucket property names must be strings, got {_show(name)}")
            if name in known:
                changes[name] = value
            elif name == _NAME_PROP:
                if not isinstance(value, str):
                    raise _bad_prop(name, f"must be a string, got {_show(value)}")
            elif name in _FIXED_RIAK_PROPS:
                fixed, reason = _FIXED_RIAK_PROPS[name]
                if value != fixed or type(value) is not type(fixed):
                    raise _bad_prop(name, f"can only be {_show(fixed)}: {reason}")
            else:
                raise _bad_prop(name, "is unknown")
        return dataclasses.replace(base, **changes)

    def to_json(self) -> dict[str, object]:
        """The props as Riak shows them (the HTTP layer wraps them in {"props": ...}).

        Includes the fixed Riak properties, so clients see truthfully what ringstore does and
        can write the map back unchanged.
        """
        shown: dict[str, object] = {
            field.name: getattr(self, field.name) for field in dataclasses.fields(self)
        }
        for name, (fixed, _reason) in _FIXED_RIAK_PROPS.items():
            shown[name] = list(fixed) if isinstance(fixed, list) else fixed
        return shown

    def encode(self) -> bytes:
        """Canonical CBOR for cluster meta: equal props always give equal bytes."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return cbor2.dumps(fields, canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> BucketProps:
        """Props from `encode()` bytes; anything else raises ProtocolError.

        Fields missing from the record take the defaults, so a record written before a
        property existed still decodes.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ProtocolError(f"bucket props record must be bytes, got {type(data).__name__}")
        if len(data) > MAX_ENCODED_PROPS_BYTES:
            raise ProtocolError(f"bucket props record too large ({len(data)} bytes)")
        try:
            fields = cbor2.loads(bytes(data))
        except Exception as exc:  # cbor2 raises many types on garbage; all mean "not ours"
            raise ProtocolError(f"bucket props record is not valid CBOR: {exc}") from None
        if not isinstance(fields, dict):
            raise ProtocolError("bucket props record is not a CBOR map")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = [name for name in fields if name not in known]
        if unknown:
            raise ProtocolError(f"bucket props record has unknown fields: {_show(unknown)}")
        try:
            return dataclasses.replace(cls(), **fields)
        except BadRequest as exc:
            raise ProtocolError(f"bucket props record is invalid: {exc}") from None


DEFAULT_PROPS = BucketProps()


# ---------------------------------------------------------------------------------------------
# Query parameters


def _quorum_param_error(name: str) -> BadRequest:
    # riak_kv_wm_object's exact words, so clients matching on them keep working
    return BadRequest(
        f"{name} query parameter must be an integer or one of the following words:"
        " 'one', 'quorum' or 'all'"
    )


def _parse_integer(text: str) -> int | None:
    if not _INTEGER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than Python converts: no quorum or timeout is that big
        return None


def parse_quorum(text: str, name: str) -> QuorumValue:
    """A quorum query parameter: an integer or one of one/quorum/all/default (case-sensitive,
    as Riak). Range checks happen in `resolve_quorum`, which knows N."""
    if text in QUORUM_WORDS:
        return text
    value = _parse_integer(text)
    if value is None:
        raise _quorum_param_error(name)
    return value


def parse_bool(text: str, name: str) -> bool:
    """A boolean query parameter: true or false, case-insensitively."""
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise BadRequest(f"{name} query parameter must be true or false")


def parse_timeout(text: str) -> int:
    """The `timeout` query parameter: an integer number of milliseconds.

    Riak accepts any integer and crashes on a negative one; ringstore rejects values outside
    0..MAX_TIMEOUT_MS. 0 is allowed: the request times out at once.
    """
    value = _parse_integer(text)
    if value is None or not 0 <= value <= MAX_TIMEOUT_MS:
        raise BadRequest(f"Bad timeout value {_show(text)}")
    return value


def resolve_quorum(value: QuorumValue, n_val: int, default: QuorumValue, *, name: str) -> int:
    """The number of replies `value` asks for with N = `n_val`.

    one = 1, quorum = N//2 + 1, all = N, default = the bucket property `default`.
    An integer above N is Riak's n_val_violation, a negative one is refused; both BadRequest.
    """
    if value == "default":
        if default == "default":
            raise LocalError(f"the default for {name} cannot itself be 'default'")
        value = default
    if value == "one":
        return 1
    if value == "quorum":
        return n_val // 2 + 1
    if value == "all":
        return n_val
    if not _is_int(value):
        raise _quorum_param_error(name)
    assert isinstance(value, int)
    if value < 0:
        raise BadRequest(f"{name} query parameter must not be negative, got {value}")
    if value > n_val:
        raise BadRequest(
            f"Specified {name} value {value} invalid for bucket n value of {n_val}"
            " (n_val_violation)"
        )
    return value


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """The resolved quorum numbers of one request; 0 for those its operation does not use.

    - get: n, r, pr, notfound_ok, basic_quorum.
    - put: n, w, pw, dw (at least 1: a write is acknowledged only once durable somewhere,
      as riak_kv_put_fsm's max(DW, 1)), returnbody. dw may exceed w: durable acks count as
      acks, so the put then waits for dw of them.
    - delete: both, because a delete reads (r, pr) then writes a tombstone (w, pw, dw);
      `rw` stands in for r and w when the client gave neither, exactly as riak_kv_delete.
    """

    op: Operation
    n: int
    r: int
    pr: int
    w: int
    pw: int
    dw: int
    rw: int
    notfound_ok: bool
    basic_quorum: bool
    timeout_ms: int
    returnbody: bool


def resolve_options(
    props: BucketProps,
    query: Mapping[str, str],
    op: Operation,
    *,
    default_timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> RequestOptions:
    """Validate every quorum-related query parameter and resolve it against `props`.

    As Riak, all six quorum parameters and both booleans are checked for syntax whatever
    the operation; only those the operation uses are resolved (so only they can fail with
    n_val_violation). A parameter given as "default" counts as not given. Other query
    parameters (vtag, keys, ...) are left to the HTTP layer.
    """
    if op not in OPERATIONS:
        raise LocalError(f"unknown operation {op!r}")
    raw: dict[str, QuorumValue] = {
        name: parse_quorum(query[name], name) for name in QUORUM_PARAMS if name in query
    }
    flags: dict[str, bool] = {}
    for name in BOOL_PARAMS:
        text = query.get(name, "default")
        # Riak's malformed_boolean_param also takes "default": the bucket's property
        flags[name] = getattr(props, name) if text.lower() == "default" else parse_bool(text, name)
    timeout_ms = parse_timeout(query["timeout"]) if "timeout" in query else default_timeout_ms
    returnbody = query.get("returnbody") == "true"  # Riak: only the exact string turns it on

    n = props.n_val

    def given(name: str) -> bool:
        return raw.get(name, "default") != "default"

    def resolve(name: str, *, minimum: int = 0) -> int:
        value = resolve_quorum(raw.get(name, "default"), n, getattr(props, name), name=name)
        if value < minimum:
            raise BadRequest(f"{name} query parameter must be at least {minimum}, got {value}")
        return value

    r = pr = w = pw = dw = rw = 0
    if op == "get":
        r, pr = resolve("r", minimum=1), resolve("pr")
    elif op == "put":
        w, pw = resolve("w", minimum=1), resolve("pw")
        dw = max(resolve("dw"), 1)
    else:
        if not given("w"):  # rw is then needed for w, and for r too when r is not given
            rw = resolve("rw", minimum=1)
        r = resolve("r", minimum=1) if given("r") or given("w") else rw
        w = resolve("w", minimum=1) if given("w") else rw
        pr, pw = resolve("pr"), resolve("pw")
        dw = max(resolve("dw"), 1)
    return RequestOptions(
        op=op,
        n=n,
        r=r,
        pr=pr,
        w=w,
        pw=pw,
        dw=dw,
        rw=rw,
        notfound_ok=flags["notfound_ok"],
        basic_quorum=flags["basic_quorum"],
        timeout_ms=timeout_ms,
        returnbody=returnbody and op == "put",
    )
