"""Known gaps closed after the QA passes, end to end with the real
hello_gateway, raw clients and the recording origin (the gaps that need a
spec-built gateway are in tests/blitzc/test_known_gaps.py).

- A request target holds only visible ASCII (RFC 9112 §3.2 builds it from
  RFC 3986, which has no raw byte above 0x7F, nor a control, space or DEL):
  any other byte is a 400 and nothing reaches the origin, whether the bytes
  are UTF-8 or not, in the path or the query, on HTTP/1.1 and in an HTTP/2
  `:path` alike (there, bytes the `h2` crate does not take as a path — not
  UTF-8, a control or DEL — make a malformed request instead: the stream is reset, or
  the connection ended, RFC 9113 §8.1.1, §5.4.1). Percent-encoded, the same
  characters are forwarded as sent.
"""

from __future__ import annotations

import time

import pytest

from support.asserts import assert_origin_saw_nothing, assert_rejected
from support.client import exchange
from support.h2client import RawH2

PROTOCOL_ERROR = 1
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"

RAW_TARGETS = [
    b"/caf\xc3\xa9",  # UTF-8 in the path
    b"/search?q=\xe2\x82\xac",  # UTF-8 in the query
    b"http://a.test/\xc3\xa4",  # absolute form
    b"/caf\xe9",  # Latin-1
    b"/\xff\xfe",  # not UTF-8
    b"/a\x7fb",  # DEL
    b"/a\x01b",  # a control character
    b"/a\tb",  # tab
]
RAW_IDS = ["utf8-path", "utf8-query", "utf8-absolute", "latin1", "invalid-utf8", "del", "ctl", "tab"]


@pytest.mark.parametrize("target", RAW_TARGETS, ids=RAW_IDS)
def test_a_raw_byte_outside_visible_ascii_in_the_target_is_400_on_http11(gateway, origin, target):
    data = b"GET " + target + b" HTTP/1.1\r\nHost: a.test\r\n\r\n" + SMUGGLED
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400,), repr(target))
    assert_origin_saw_nothing(gateway.port, origin, repr(target))


def test_the_same_characters_percent_encoded_are_forwarded_as_sent(gateway, origin):
    target = b"/caf%C3%A9?q=%E2%82%AC"
    ex = exchange(gateway.port, b"GET " + target + b" HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert ex.statuses == [200], ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert req.head_raw.startswith(b"GET " + target + b" HTTP/1.1\r\n"), req


@pytest.fixture
def h2gw(start_gateway):
    return start_gateway(protocols="h1,h2c")


H2_PATHS = [(t, i) for t, i in zip(RAW_TARGETS, RAW_IDS) if t.startswith(b"/")]


@pytest.mark.parametrize("path", [t for t, _ in H2_PATHS], ids=[i for _, i in H2_PATHS])
def test_a_raw_byte_outside_visible_ascii_in_the_h2_path_is_refused(h2gw, origin, path):
    with RawH2(h2gw.addr) as c:
        c.headers(1, block=c.block(path=path))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.resets or 1 in s.ended or s.goaway is not None)
    try:
        # Bytes above 0x7F only, as UTF-8: a path to the `http` crate.
        utf8 = all(0x21 <= b != 0x7F for b in path) and bool(path.decode("utf-8"))
    except UnicodeDecodeError:
        utf8 = False
    if utf8:
        # A `:path` the h2 crate takes: refused by the gateway's parser, as on HTTP/1.1.
        assert s.status(1) == 400, (path, s)
    else:
        # Not even a `:path` to the h2 crate: a malformed request, the
        # stream reset (controls and DEL, refused by the `http` crate) or the
        # connection ended (bytes that are not UTF-8, refused as a string).
        assert s.resets.get(1) == PROTOCOL_ERROR or s.goaway == PROTOCOL_ERROR, (path, s)
    time.sleep(0.2)
    assert origin.raw_since_reset() == b"", origin.raw_since_reset()[:300]


def test_utf8_in_the_h2_path_is_400_not_forwarded(h2gw, origin):
    """The case that differed: UTF-8 the `http` crate accepts as a path."""
    with RawH2(h2gw.addr) as c:
        c.headers(1, block=c.block(path=b"/caf\xc3\xa9"))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended or 1 in s.resets)
    assert s.status(1) == 400, s
    time.sleep(0.2)
    assert origin.raw_since_reset() == b""
