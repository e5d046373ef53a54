"""The admin line protocol and the console's word splitting and display, without sockets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.admin.commands import parse_value, printable, show_name, split_words, text_lines
from ringstore.admin.protocol import (
    MAX_COMMAND_BYTES,
    MAX_UNIX_PATH_BYTES,
    Reply,
    ReplyParser,
    encode_command,
    encode_reply,
    greeting,
    one_line,
    parse_greeting,
    unix_address,
)
from ringstore.errors import BadRequest, ProtocolError

line_text = st.text(
    st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=30
)


def parse(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    replies = []
    for raw in data.decode("utf-8").split("\n")[:-1]:
        reply = parser.feed(raw)
        if reply is not None:
            replies.append(reply)
    return replies


@settings(max_examples=200, deadline=None)
@given(st.lists(line_text, max_size=5), st.one_of(st.none(), line_text))
def test_reply_round_trips_through_the_wire_form(lines, error):
    reply = Reply(tuple(lines), error)
    assert parse(encode_reply(reply)) == [reply]


def test_replies_follow_each_other_and_an_output_line_may_look_like_a_status():
    first = Reply(("ok", "error: not really", "| piped"))
    second = Reply((), "it failed")
    assert parse(encode_reply(first) + encode_reply(second)) == [first, second]


@pytest.mark.parametrize("line", ["", "OK", "okay", "|no space", "Error: x", "hello"])
def test_a_line_that_is_neither_output_nor_status_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        ReplyParser().feed(line)


def test_reply_lines_and_errors_cannot_hold_line_breaks():
    with pytest.raises(ValueError):
        Reply(("two\nlines",))
    with pytest.raises(ValueError):
        Reply((), "two\rlines")
    assert one_line("a\nb\r\n c") == "a b c"
    assert one_line("plain") == "plain"


def test_greeting_names_node_and_version_and_anything_else_is_refused():
    assert parse_greeting(greeting("node1", "0.1.0")) == ("node1", "0.1.0")
    for bad in [
        Reply(("HTTP/1.1 400 Bad Request",)),
        Reply(("ringstore-admin/2 node1 0.1.0",)),
        Reply(("ringstore-admin/1 node1",)),
        Reply(()),
        Reply(("ringstore-admin/1 n 1", "extra")),
    ]:
        with pytest.raises(ProtocolError):
            parse_greeting(bad)
    with pytest.raises(ProtocolError, match="refused the session: busy"):
        parse_greeting(Reply((), "busy"))


def test_commands_are_one_bounded_line():
    assert encode_command("get b k") == b"get b k\n"
    with pytest.raises(BadRequest):
        encode_command("get b\nk")
    with pytest.raises(BadRequest):
        encode_command("x" * MAX_COMMAND_BYTES)
    assert len(encode_command("x" * (MAX_COMMAND_BYTES - 1))) == MAX_COMMAND_BYTES


def test_split_words_is_shell_like_and_keeps_the_rest_raw():
    assert split_words("a 'b c' d") == (["a", "b c", "d"], "")
    assert split_words("b k hello   world", 2) == (["b", "k"], "hello   world")
    assert split_words("b k", 2) == (["b", "k"], "")
    assert split_words("b", 2) == (["b"], "")
    assert split_words("'' k v", 2) == (["", "k"], "v")
    assert split_words("b k # not a comment", 2) == (["b", "k"], "# not a comment")
    with pytest.raises(BadRequest, match="No closing quotation"):
        split_words("b 'k")


@pytest.mark.parametrize(
    ("rest", "value"),
    [
        ("hello world", "hello world"),
        ("'two  spaces'", "two  spaces"),
        ('"double"', "double"),
        ("it's", "it's"),
        ("'a' 'b'", "'a' 'b'"),
        ("'unclosed", "'unclosed"),
        ("''", ""),
        ("x 'y'", "x 'y'"),
    ],
)
def test_a_put_value_is_the_rest_of_the_line_unquoted_only_when_one_quoted_word(rest, value):
    assert parse_value(rest) == value


def test_names_are_shown_so_they_can_be_typed_back():
    assert show_name(b"photos") == "photos"
    assert show_name(b"my bucket") == "'my bucket'"
    assert show_name(b"") == "''"
    assert split_words(show_name(b"it's a key"))[0] == ["it's a key"]
    assert "\x1b" not in show_name(b"\x1b[31mred")
    assert show_name(b"\xff") == "'\\xff'"


def test_values_are_shown_as_lines_without_terminal_control():
    assert text_lines("") == []
    assert text_lines("one\ntwo\n") == ["one", "two"]
    assert text_lines("one\r\n\ntwo") == ["one", "", "two"]
    assert text_lines("\x1b[2Jboom") == ["\\x1b[2Jboom"]
    assert printable("tab\there") == "tab\there"


def test_long_socket_paths_are_reached_through_the_directory(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "admin.sock"
    assert len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES
    server = socket.socket(socket.AF_UNIX)
    try:
        with unix_address(path) as address:
            assert len(address) <= MAX_UNIX_PATH_BYTES
            server.bind(address)
        server.listen(1)
        assert path.exists()
        client = socket.socket(socket.AF_UNIX)
        with client, unix_address(path) as address:
            client.connect(address)
    finally:
        server.close()
    short = Path("/tmp/x.sock")
    with unix_address(short) as address:
        assert address == "/tmp/x.sock"
