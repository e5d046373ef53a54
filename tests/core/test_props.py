"""Bucket props validation and codec; query parameter parsing and per-request resolution."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.core.props import (
    DEFAULT_PROPS,
    DEFAULT_TIMEOUT_MS,
    MAX_N_VAL,
    MAX_TIMEOUT_MS,
    BucketProps,
    RequestOptions,
    parse_bool,
    parse_quorum,
    parse_timeout,
    resolve_options,
    resolve_quorum,
)
from ringstore.errors import BadRequest, LocalError, ProtocolError

QUORUM_MESSAGE = (
    "{} query parameter must be an integer or one of the following words: 'one', 'quorum' or 'all'"
)

# ---------------------------------------------------------------------------------------------
# BucketProps


def test_defaults_are_riaks_with_allow_mult():
    props = BucketProps()
    assert props == DEFAULT_PROPS
    assert props.to_json() == {
        "n_val": 3,
        "r": "quorum",
        "w": "quorum",
        "dw": "quorum",
        "rw": "quorum",
        "pr": 0,
        "pw": 0,
        "allow_mult": True,
        "last_write_wins": False,
        "notfound_ok": True,
        "basic_quorum": False,
        "precommit": [],
        "postcommit": [],
        "dvv_enabled": True,
        "consistent": False,
        "write_once": False,
    }


def test_props_are_frozen():
    with pytest.raises(AttributeError):
        DEFAULT_PROPS.n_val = 5  # type: ignore[misc]


def test_partial_update_keeps_the_rest():
    base = BucketProps(n_val=5, r=4)
    updated = BucketProps.from_json({"w": "all", "notfound_ok": False}, base)
    assert updated == BucketProps(n_val=5, r=4, w="all", notfound_ok=False)
    assert base == BucketProps(n_val=5, r=4)


def test_update_of_everything_round_trips_through_to_json():
    props = BucketProps(
        n_val=5,
        r=1,
        w="one",
        dw=0,
        rw="all",
        pr="quorum",
        pw=2,
        allow_mult=False,
        last_write_wins=True,
        notfound_ok=False,
        basic_quorum=True,
    )
    assert BucketProps.from_json(props.to_json(), DEFAULT_PROPS) == props


def test_name_and_fixed_riak_props_are_accepted_with_ringstores_values():
    update = {
        "name": "photos",
        "precommit": [],
        "postcommit": [],
        "dvv_enabled": True,
        "consistent": False,
        "write_once": False,
        "r": 1,
    }
    assert BucketProps.from_json(update, DEFAULT_PROPS) == BucketProps(r=1)


def test_n_val_and_quorum_change_together():
    base = BucketProps(n_val=5, w=5)
    with pytest.raises(BadRequest, match="'w' must not exceed n_val \\(3\\)"):
        BucketProps.from_json({"n_val": 3}, base)
    assert BucketProps.from_json({"n_val": 3, "w": 3}, base) == BucketProps(n_val=3, w=3)


BAD_PROPS = [
    ({"n_val": 0}, "'n_val' must be an integer from 1 to 10"),
    ({"n_val": MAX_N_VAL + 1}, "'n_val' must be an integer from 1 to 10"),
    ({"n_val": "3"}, "'n_val' must be an integer"),
    ({"n_val": 3.0}, "'n_val' must be an integer"),
    ({"n_val": True}, "'n_val' must be an integer"),
    ({"n_val": None}, "'n_val' must be an integer"),
    ({"r": 0}, "'r' must be at least 1"),
    ({"w": 0}, "'w' must be at least 1"),
    ({"rw": 0}, "'rw' must be at least 1"),
    ({"r": -1}, "'r' must be at least 1"),
    ({"pr": -1}, "'pr' must be at least 0"),
    ({"r": 4}, "'r' must not exceed n_val"),
    ({"pw": 4}, "'pw' must not exceed n_val"),
    ({"r": "default"}, "'r' must be an integer or one of"),
    ({"r": "ONE"}, "'r' must be an integer or one of"),
    ({"dw": "2"}, "'dw' must be an integer or one of"),
    ({"r": True}, "'r' must be an integer or one of"),
    ({"w": 2.0}, "'w' must be an integer or one of"),
    ({"w": None}, "'w' must be an integer or one of"),
    ({"w": [2]}, "'w' must be an integer or one of"),
    ({"allow_mult": "true"}, "'allow_mult' must be true or false"),
    ({"notfound_ok": 1}, "'notfound_ok' must be true or false"),
    ({"basic_quorum": None}, "'basic_quorum' must be true or false"),
    ({"last_write_wins": True}, "'allow_mult' and 'last_write_wins' cannot both be true"),
    ({"colour": "blue"}, "'colour' is unknown"),
    ({"precommit": [{"mod": "m", "fun": "f"}]}, "'precommit' can only be \\[\\]"),
    ({"postcommit": None}, "'postcommit' can only be \\[\\]"),
    ({"dvv_enabled": False}, "'dvv_enabled' can only be True"),
    ({"dvv_enabled": 1}, "'dvv_enabled' can only be True"),
    ({"consistent": True}, "'consistent' can only be False"),
    ({"write_once": 0}, "'write_once' can only be False"),
    ({"name": 7}, "'name' must be a string"),
    ({1: 2}, "names must be strings"),
]


@pytest.mark.parametrize(("update", "message"), BAD_PROPS, ids=[repr(u) for u, _ in BAD_PROPS])
def test_bad_props_are_rejected_by_name(update, message):
    with pytest.raises(BadRequest, match=message):
        BucketProps.from_json(update, DEFAULT_PROPS)


@pytest.mark.parametrize("update", [None, [], "props", 3, [("n_val", 3)]])
def test_props_must_be_an_object(update):
    with pytest.raises(BadRequest, match="must be a JSON object"):
        BucketProps.from_json(update, DEFAULT_PROPS)


def test_last_write_wins_needs_allow_mult_off():
    props = BucketProps.from_json({"allow_mult": False, "last_write_wins": True}, DEFAULT_PROPS)
    assert (props.allow_mult, props.last_write_wins) == (False, True)
    with pytest.raises(BadRequest, match="cannot both be true"):
        BucketProps.from_json({"allow_mult": True}, props)


def test_long_bad_values_are_shortened_in_messages():
    with pytest.raises(BadRequest) as info:
        BucketProps.from_json({"r": "x" * 10_000}, DEFAULT_PROPS)
    assert len(str(info.value)) < 200


def test_constructor_validates():
    with pytest.raises(BadRequest, match="'n_val'"):
        BucketProps(n_val=0)
    with pytest.raises(BadRequest, match="'dw'"):
        BucketProps(dw="most")


# ---------------------------------------------------------------------------------------------
# CBOR codec

WORDS = st.sampled_from(["one", "quorum", "all"])


@st.composite
def valid_props(draw):
    n_val = draw(st.integers(1, MAX_N_VAL))
    values = {}
    for name in ("r", "w", "rw"):
        values[name] = draw(
            st.one_of(st.sampled_from(["one", "quorum", "all"]), st.integers(1, n_val))
        )
    for name in ("dw", "pr", "pw"):
        values[name] = draw(
            st.one_of(st.sampled_from(["one", "quorum", "all"]), st.integers(0, n_val))
        )
    last_write_wins = draw(st.booleans())
    allow_mult = False if last_write_wins else draw(st.booleans())
    return BucketProps(
        n_val=n_val,
        allow_mult=allow_mult,
        last_write_wins=last_write_wins,
        notfound_ok=draw(st.booleans()),
        basic_quorum=draw(st.booleans()),
        **values,
    )


@settings(max_examples=200, deadline=None)
@given(valid_props())
def test_codec_round_trips_and_is_canonical(props):
    data = props.encode()
    assert BucketProps.decode(data) == props
    assert BucketProps.decode(bytearray(data)) == props
    rebuilt = BucketProps.from_json(props.to_json(), DEFAULT_PROPS)
    assert rebuilt.encode() == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_garbage_raises_only_protocol_error(data):
    try:
        BucketProps.decode(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["n_val", "r", "w", "dw", "rw", "pr", "pw", "allow_mult", "zzz"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-5, 20),
            st.text(max_size=8),
            st.floats(allow_nan=False),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_decode_of_wrong_fields_raises_only_protocol_error(fields):
    data = cbor2.dumps(fields)
    try:
        props = BucketProps.decode(data)
    except ProtocolError:
        return
    assert isinstance(props, BucketProps)


def test_decode_missing_fields_take_defaults():
    assert BucketProps.decode(cbor2.dumps({"n_val": 5})) == BucketProps(n_val=5)
    assert BucketProps.decode(cbor2.dumps({})) == DEFAULT_PROPS


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid CBOR"),
        (b"\xff\xff", "not valid CBOR"),
        (cbor2.dumps([1, 2]), "not a CBOR map"),
        (cbor2.dumps({"n_val": 0}), "invalid"),
        (cbor2.dumps({"colour": 1}), "unknown fields"),
        (cbor2.dumps({1: 1}), "unknown fields"),
        (cbor2.dumps({"name": "b"}), "unknown fields"),
        (b"\xa1" + cbor2.dumps("n_val") + b"\x1b" + b"\xff" * 8, "invalid"),
        (b"\x00" * 5000, "too large"),
    ],
)
def test_decode_rejects_bad_records(data, message):
    with pytest.raises(ProtocolError, match=message):
        BucketProps.decode(data)


def test_decode_rejects_non_bytes():
    with pytest.raises(ProtocolError, match="must be bytes"):
        BucketProps.decode("n_val")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Query parameters


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("one", "one"),
        ("quorum", "quorum"),
        ("all", "all"),
        ("default", "default"),
        ("0", 0),
        ("3", 3),
        ("+2", 2),
        ("-1", -1),
        ("007", 7),
    ],
)
def test_parse_quorum_accepts_riaks_forms(text, value):
    assert parse_quorum(text, "r") == value


@pytest.mark.parametrize(
    "text",
    ["", "ONE", "Quorum", "1.0", " 1", "1 ", "1_0", "\u0661", "0x1", "two", "+", "-", "9" * 5000],
)
def test_parse_quorum_rejects_the_rest_with_riaks_words(text):
    with pytest.raises(BadRequest) as info:
        parse_quorum(text, "pw")
    assert str(info.value) == QUORUM_MESSAGE.format("pw")


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("TRUE", True), ("False", False), ("fAlSe", False)]
)
def test_parse_bool(text, value):
    assert parse_bool(text, "notfound_ok") is value


@pytest.mark.parametrize("text", ["", "yes", "1", "0", "t", "true ", "default"])
def test_parse_bool_rejects(text):
    with pytest.raises(BadRequest, match="^basic_quorum query parameter must be true or false$"):
        parse_bool(text, "basic_quorum")


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("60000", 60000), (str(MAX_TIMEOUT_MS), MAX_TIMEOUT_MS)]
)
def test_parse_timeout(text, value):
    assert parse_timeout(text) == value


@pytest.mark.parametrize(
    "text", ["", "-1", "abc", "1.5", "1e3", " 5", str(MAX_TIMEOUT_MS + 1), "9" * 5000]
)
def test_parse_timeout_rejects(text):
    with pytest.raises(BadRequest, match="^Bad timeout value"):
        parse_timeout(text)


@pytest.mark.parametrize(
    ("value", "n", "expected"),
    [
        ("one", 1, 1),
        ("one", 5, 1),
        ("quorum", 1, 1),
        ("quorum", 2, 2),
        ("quorum", 3, 2),
        ("quorum", 4, 3),
        ("quorum", 5, 3),
        ("all", 1, 1),
        ("all", 5, 5),
        (0, 3, 0),
        (3, 3, 3),
        ("default", 3, 2),  # the default given below is "quorum"
    ],
)
def test_resolve_quorum(value, n, expected):
    assert resolve_quorum(value, n, "quorum", name="r") == expected


def test_resolve_quorum_default_uses_the_bucket_value():
    assert resolve_quorum("default", 5, 4, name="w") == 4
    assert resolve_quorum("default", 5, "all", name="w") == 5


def test_resolve_quorum_rejects_values_above_n_as_n_val_violation():
    with pytest.raises(BadRequest, match="n_val_violation") as info:
        resolve_quorum(4, 3, "quorum", name="w")
    assert "w value 4" in str(info.value) and "n value of 3" in str(info.value)


def test_resolve_quorum_rejects_negative_and_non_quorum_values():
    with pytest.raises(BadRequest, match="must not be negative"):
        resolve_quorum(-1, 3, "quorum", name="r")
    with pytest.raises(BadRequest, match="r query parameter must be an integer"):
        resolve_quorum("most", 3, "quorum", name="r")  # type: ignore[arg-type]
    with pytest.raises(LocalError):
        resolve_quorum("default", 3, "default", name="r")


# ---------------------------------------------------------------------------------------------
# resolve_options


def options(query, op, props=DEFAULT_PROPS) -> RequestOptions:
    return resolve_options(props, query, op)


def test_get_defaults():
    assert options({}, "get") == RequestOptions(
        op="get",
        n=3,
        r=2,
        pr=0,
        w=0,
        pw=0,
        dw=0,
        rw=0,
        notfound_ok=True,
        basic_quorum=False,
        timeout_ms=DEFAULT_TIMEOUT_MS,
        returnbody=False,
    )


def test_put_defaults():
    got = options({}, "put")
    assert (got.w, got.pw, got.dw, got.r, got.pr, got.returnbody) == (2, 0, 2, 0, 0, False)


def test_get_with_everything():
    got = options(
        {"r": "all", "pr": "one", "notfound_ok": "FALSE", "basic_quorum": "true", "timeout": "5"},
        "get",
    )
    assert (got.r, got.pr, got.notfound_ok, got.basic_quorum, got.timeout_ms) == (
        3,
        1,
        False,
        True,
        5,
    )


def test_bucket_props_are_the_defaults():
    props = BucketProps(n_val=5, r=1, pr="quorum", notfound_ok=False, basic_quorum=True)
    got = options({"notfound_ok": "default", "r": "default"}, "get", props)
    assert (got.n, got.r, got.pr, got.notfound_ok, got.basic_quorum) == (5, 1, 3, False, True)


def test_dw_is_at_least_one_and_may_exceed_w():
    assert options({"dw": "0"}, "put").dw == 1
    got = options({"w": "1", "dw": "3"}, "put")
    assert (got.w, got.dw) == (1, 3)


def test_returnbody_only_for_the_exact_word_on_put():
    assert options({"returnbody": "true"}, "put").returnbody is True
    assert options({"returnbody": "True"}, "put").returnbody is False
    assert options({"returnbody": "1"}, "put").returnbody is False
    assert options({"returnbody": "true"}, "get").returnbody is False


def test_every_quorum_parameter_is_checked_for_syntax_whatever_the_operation():
    for op in ("get", "put", "delete"):
        for name in ("r", "w", "dw", "rw", "pr", "pw"):
            with pytest.raises(BadRequest, match=QUORUM_MESSAGE.format(name)):
                options({name: "lots"}, op)
        for name in ("notfound_ok", "basic_quorum"):
            with pytest.raises(BadRequest, match=f"{name} query parameter must be true or false"):
                options({name: "maybe"}, op)
        with pytest.raises(BadRequest, match="Bad timeout value"):
            options({"timeout": "soon"}, op)


def test_only_used_parameters_can_violate_n_val():
    assert options({"w": "9"}, "get").r == 2  # w is not used by a get (as Riak)
    with pytest.raises(BadRequest, match="n_val_violation"):
        options({"r": "4"}, "get")
    with pytest.raises(BadRequest, match="n_val_violation"):
        options({"pr": "4"}, "get")
    with pytest.raises(BadRequest, match="n_val_violation"):
        options({"pw": "4"}, "put")
    with pytest.raises(BadRequest, match="n_val_violation"):
        options({"dw": "4"}, "put")


def test_zero_reads_and_writes_are_refused():
    with pytest.raises(BadRequest, match="r query parameter must be at least 1"):
        options({"r": "0"}, "get")
    with pytest.raises(BadRequest, match="w query parameter must be at least 1"):
        options({"w": "0"}, "put")
    with pytest.raises(BadRequest, match="rw query parameter must be at least 1"):
        options({"rw": "0"}, "delete")
    assert options({"pr": "0"}, "get").pr == 0


def test_negative_quorum_is_refused():
    with pytest.raises(BadRequest, match="must not be negative"):
        options({"pr": "-1"}, "get")


DELETE_CASES = [
    # query, expected (r, w, rw): rw stands in for r and w as riak_kv_delete does
    ({}, (2, 2, 2)),
    ({"rw": "1"}, (1, 1, 1)),
    ({"rw": "all"}, (3, 3, 3)),
    ({"rw": "1", "r": "3"}, (3, 1, 1)),
    ({"rw": "1", "w": "3"}, (2, 3, 0)),  # w given: r takes the bucket's r, not rw
    ({"rw": "1", "r": "3", "w": "3"}, (3, 3, 0)),
    ({"rw": "9", "w": "3"}, (2, 3, 0)),  # rw unused, so never resolved
    ({"rw": "1", "r": "default", "w": "default"}, (1, 1, 1)),  # "default" is "not given"
]


@pytest.mark.parametrize(("query", "expected"), DELETE_CASES)
def test_delete_rw_stands_in_for_r_and_w(query, expected):
    got = options(query, "delete")
    assert (got.r, got.w, got.rw) == expected
    assert got.dw >= 1


def test_delete_uses_the_buckets_rw():
    props = BucketProps(rw=1, r=3, w=3)
    got = options({}, "delete", props)
    assert (got.r, got.w) == (1, 1)


def test_delete_rw_violation():
    with pytest.raises(BadRequest, match="n_val_violation"):
        options({"rw": "9"}, "delete")


def test_unknown_operation():
    with pytest.raises(LocalError):
        resolve_options(DEFAULT_PROPS, {}, "patch")  # type: ignore[arg-type]


def test_custom_default_timeout():
    assert resolve_options(DEFAULT_PROPS, {}, "get", default_timeout_ms=5).timeout_ms == 5


QUERY_VALUES = st.sampled_from(
    ["one", "quorum", "all", "default", "0", "1", "2", "3", "4", "-1", "x", "", "TRUE", "false"]
)


@settings(max_examples=300, deadline=None)
@given(
    valid_props(),
    st.dictionaries(
        st.sampled_from(
            ["r", "w", "dw", "rw", "pr", "pw", "notfound_ok", "basic_quorum", "timeout", "vtag"]
        ),
        QUERY_VALUES,
    ),
    st.sampled_from(["get", "put", "delete"]),
)
def test_resolve_options_yields_sane_numbers_or_bad_request(props, query, op):
    try:
        got = resolve_options(props, query, op)
    except BadRequest:
        return
    n = props.n_val
    assert got.n == n
    if op in ("get", "delete"):
        assert 1 <= got.r <= n and 0 <= got.pr <= n
    if op in ("put", "delete"):
        assert 1 <= got.w <= n and 0 <= got.pw <= n and 1 <= got.dw <= n
    if op == "get":
        assert got.w == got.pw == got.dw == 0
    if op == "put":
        assert got.r == got.pr == 0
    assert 0 <= got.timeout_ms <= MAX_TIMEOUT_MS
