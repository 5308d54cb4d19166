"""A differential pass over how the gateway reads HTTP/1.1 requests.

About 270 odd requests (framing, request lines, fields, Expect, pipelines,
half-closes) were sent to hello_gateway, nginx 1.22 and HAProxy, each in
front of its own recording origin, and every place where Blitz answered or
forwarded differently from both peers was read against RFC 9110/9112,
RELIABILITY.md and the runtime's documented choices (runtime/README.md,
"Deliberate protocol decisions"). The peers are not needed here: each test
asserts what the RFC (or a documented choice) requires, against the real
gateway and the recording origin.

Bugs this pass found, fixed, each tested next to a control:

- a trailer field line was only checked for its first byte: a space before
  the colon, a line without a colon, a name with non-token characters, even
  a request line, are taken (and dropped) where RFC 9112 §5.1 requires a 400
  for the first and the gateway refuses the same faults in the head;
- `Expect` was compared as one whole value, so the list forms RFC 9110
  §5.6.1.2 says a recipient MUST accept (`100-continue,`, `, 100-continue`,
  `100-continue, 100-continue` in one line, an empty field) get 417, where
  two `Expect: 100-continue` lines get their 100;
- a request-target longer than the head limit got 431, where RFC 9112 §3
  says MUST 414 (URI Too Long).

Pinned (what the existing files leave out): an HTTP/1.0 client's
`keep-alive` is acknowledged and the connection kept, without it the
connection closes after one answer; a pipelined request behind an error
answer of the gateway's own (502) is never forwarded (RFC 9112 §9.6); a
chunk extension within the runtime's bound is served and one past it is a
4xx with the upstream request never completed (RFC 9112 §7.1.1); a request
cut by the client's half-close (a short body, no last chunk, an Expect with
no body) never reaches the origin complete.
"""

from __future__ import annotations

import socket

import pytest
from support.asserts import assert_clean_forward, assert_origin_saw_nothing, assert_rejected
from support.client import RawConn, exchange

# The runtime's bound on the extensions of one chunk-size line (runtime/src/http/body.rs, MAX_CHUNK_EXT).
MAX_CHUNK_EXT = 4096
# hello_gateway's default --max-header-bytes.
MAX_HEADER_BYTES = 16384
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"


def head(method: str = "POST", target: str = "/echo", fields=(), version: str = "HTTP/1.1",
         host: bytes | None = b"Host: a.test") -> bytes:
    """A request head; `fields` are bytes or str lines, `host` None leaves Host out."""
    lines = [f"{method} {target} {version}".encode("latin-1")]
    if host is not None:
        lines.append(host)
    lines += [f if isinstance(f, bytes) else f.encode("latin-1") for f in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def finals(ex):
    return [r for r in ex.responses if r.status >= 200]


def assert_never_completed(origin, path: str, what: str) -> None:
    """No request for `path` reached the origin complete (an aborted upstream
    request is fine: the origin then sees a head and part of a body), and
    nothing after the rejected request was forwarded."""
    done = [r for r in origin.requests if r.path == path and r.complete]
    assert not done, f"{what}: the origin got a complete request: {done!r}"
    raw = origin.raw_since_reset()
    assert b"smuggled" not in raw, f"{what}: bytes after the request were forwarded: {raw[:600]!r}"


# ================================================================ trailer field lines
# RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ); §5.1: no whitespace
# between a field name and its colon, and a server MUST reject such a request
# with 400. The gateway's head parser refuses every one of these faults in a
# head; the chunked decoder (body.rs) checked only that a trailer line did not
# start with a non-token byte, whitespace, NUL, bare CR/LF (the first four below).
MALFORMED_TRAILERS = {
    "space-before-colon": b"X-T : 1",
    "no-colon": b"X-Checksum",
    "non-token-in-name": b"X(T): 1",
    "request-line": b"GET /in-trailer HTTP/1.1",
    "empty-name": b": 1",
    "starts-with-space": b" X-T: 1",
    "nul-in-value": b"X-T: a\x00b",
}


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(line, id=name) for name, line in MALFORMED_TRAILERS.items()
    ],
)
def test_malformed_trailer_line_is_400_and_the_request_never_completed(gateway, origin, line):
    """A trailer section holding a line that is not a valid field line: 400 and
    close (RELIABILITY.md: invalid chunk framing), the upstream request never
    completed, nothing after it read as a request."""
    body = b"5\r\nhello\r\n0\r\n" + line + b"\r\n\r\n"
    ex = exchange(gateway.port, head(target="/trailer", fields=["Transfer-Encoding: chunked"]) + body + SMUGGLED)
    assert_rejected(ex, (400,), repr(line))
    assert_never_completed(origin, "/trailer", repr(line))


@pytest.mark.parametrize(
    "line",
    [b"X-T: 1", b"X-T:", b"X-T:\tv\t", b"X-T: \x80\xff", b"x_t!#$%&'*+.^`|~: 1"],
    ids=["plain", "empty-value", "tabs", "obs-text", "token-chars"],
)
def test_well_formed_trailer_lines_are_taken_and_dropped(gateway, origin, line):
    """Control: valid field lines in the trailer section (RFC 9110 §5.5 values,
    §5.6.2 token names) are accepted; the body is forwarded whole, the trailer
    is not, and the connection serves the next request."""
    body = b"5\r\nhello\r\n0\r\n" + line + b"\r\n\r\n"
    ex = exchange(gateway.port, head(target="/echo", fields=["Transfer-Encoding: chunked"]) + body
                  + head("GET", "/after", ["Connection: close"]))
    assert ex.statuses == [200, 200], ex.responses
    assert [r.body for r in ex.responses] == [b"hello", b"GET /after\n"]
    req = origin.wait_requests(2, complete=True)[0]
    assert_clean_forward(req, b"hello")
    assert line.split(b":")[0].lower() not in origin.raw_since_reset().lower()


# ================================================================ Expect as a list
def expect_exchange(port: int, expect_lines: list[bytes]):
    """A POST of 5 bytes whose client waits (up to 2 s) for the 100 before the
    body, then the next request on the connection. Returns (interim statuses,
    final answer to the POST, answer to the request after it)."""
    with RawConn(port, timeout=5) as c:
        c.send(head(target="/echo", fields=expect_lines + [b"Content-Length: 5"]))
        interims = []
        try:
            first = c.read_response(timeout=2)
        except TimeoutError:  # no 100: RFC 9110 §10.1.1 lets the client send the body anyway
            first = None
        if first is not None and first.status < 200:
            interims.append(first.status)
            first = None
        if first is not None:  # a final answer before the body: the expectation was refused
            return interims, first, None
        c.send(b"hello")
        final = c.read_response()
        c.send(head("GET", "/after-expect", ["Connection: close"]))
        return interims, final, c.read_response()


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([b"Expect: 100-continue"], id="one-field"),
        pytest.param([b"Expect: 100-CONTINUE"], id="upper-case"),
        pytest.param([b"Expect: 100-continue", b"Expect: 100-continue"], id="two-fields"),
        pytest.param([b"Expect: 100-continue,"], id="trailing-empty-element"),
        pytest.param([b"Expect: , 100-continue"], id="leading-empty-element"),
        pytest.param([b"Expect: 100-continue, 100-continue"], id="two-elements-one-field"),
        pytest.param([b"Expect: 100-continue", b"Expect:"], id="second-field-empty"),
    ],
)
def test_expect_100_continue_in_each_list_form(gateway, origin, lines):
    """RFC 9110 §5.6.1.2: a recipient MUST accept empty list elements, and a
    field sent as several lines means the lines joined with commas (§5.3).
    Each of these asks for 100-continue and nothing else: the client gets its
    100, then the answer; Expect is not forwarded (runtime/README.md)."""
    interims, final, after = expect_exchange(gateway.port, lines)
    assert final.status == 200 and final.body == b"hello", (lines, final)
    assert interims == [100], (lines, interims)
    assert after is not None and after.body == b"GET /after-expect\n", after
    req = origin.wait_requests(2, complete=True)[0]
    assert_clean_forward(req, b"hello")
    assert not req.header("expect"), req


def test_empty_expect_field_is_no_expectation(gateway, origin):
    """An empty Expect is an empty list (RFC 9110 §5.6.1.2): no expectation to
    fail, so no 417; the request is served (a 100 is neither required nor wrong)."""
    _, final, after = expect_exchange(gateway.port, [b"Expect:"])
    assert final.status == 200 and final.body == b"hello", final
    assert after is not None and after.status == 200, after


def test_unknown_expectation_on_a_bodiless_request_417_and_nothing_after_it(gateway, origin):
    """Control for the above: an expectation other than 100-continue gets 417
    (RFC 9110 §10.1.1 allows it; runtime/README.md chooses it), also without a
    body, and the pipelined request behind it is never read."""
    ex = exchange(gateway.port, head("GET", "/x", ["Expect: foo"]) + SMUGGLED)
    assert_rejected(ex, (417,))
    assert_origin_saw_nothing(gateway.port, origin)


# ================================================================ a request-target too long
def test_request_target_longer_than_the_head_limit_is_414(gateway, origin):
    """RFC 9112 §3: a server that receives a request-target longer than any URI
    it wishes to parse MUST respond 414. A target that alone exceeds
    max-header-bytes is such a target (no field made the head too large)."""
    ex = exchange(gateway.port, head("GET", "/" + "u" * (MAX_HEADER_BYTES + 600)) + SMUGGLED)
    assert_rejected(ex, (414,))
    assert_origin_saw_nothing(gateway.port, origin)


def test_head_too_large_through_a_field_is_431(gateway, origin):
    """Control: a short request line and a field past max-header-bytes: 431
    (RFC 6585 §5), nothing forwarded."""
    ex = exchange(gateway.port, head("GET", "/x", ["X-Long: " + "v" * (MAX_HEADER_BYTES + 600)]) + SMUGGLED)
    assert_rejected(ex, (431,))
    assert_origin_saw_nothing(gateway.port, origin)


def test_long_target_within_the_head_limit_forwarded_exactly(gateway, origin):
    """Control: a 16,000-byte target inside the limit (nginx answers 414 past
    8 KiB, HAProxy 400 past its buffer) is served and forwarded byte for byte."""
    target = "/" + "u" * 16000
    ex = exchange(gateway.port, head("GET", target, ["Connection: close"]))
    assert ex.statuses == [200], ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert req.target == target, req


# ================================================================ HTTP/1.0 persistence
def test_http10_keep_alive_acknowledged_and_connection_kept(gateway, origin):
    """RFC 9112 §9.3 / Appendix C.2.2: an HTTP/1.0 connection persists only if
    the server acknowledges the client's `keep-alive`. Each answer says so and
    both requests (a GET, then a POST with a body) are served on the connection."""
    with RawConn(gateway.port) as c:
        c.send(head("GET", "/one", ["Connection: keep-alive"], version="HTTP/1.0"))
        first = c.read_response()
        c.send(head("POST", "/echo", ["Connection: keep-alive", "Content-Length: 5"], version="HTTP/1.0") + b"hello")
        second = c.read_response()
    for r in (first, second):
        assert r.status == 200 and "keep-alive" in (r.h("connection") or "").lower(), r
    assert (first.body, second.body) == (b"GET /one\n", b"hello")
    reqs = origin.wait_requests(2, complete=True)
    assert [q.target for q in reqs] == ["/one", "/echo"], reqs


def test_http10_without_keep_alive_closes_after_one_answer(gateway, origin):
    """Without `keep-alive` an HTTP/1.0 connection ends after the answer: the
    second request written behind the first is never forwarded."""
    ex = exchange(gateway.port, head("GET", "/only", version="HTTP/1.0") + head("GET", "/smuggled", version="HTTP/1.0"))
    assert ex.statuses == [200] and ex.closed, ex.responses
    assert ex.responses[0].body == b"GET /only\n"
    assert [q.target for q in origin.wait_requests(1, complete=True)] == ["/only"]
    assert b"smuggled" not in origin.raw_since_reset()


# ================================================================ keep-alive after an error answer
def test_pipelined_request_after_a_502_is_never_forwarded(gateway, origin):
    """The upstream closes without answering (the gateway may replay an
    idempotent GET once): the client gets 502 with `connection: close`, the
    connection ends, and the request pipelined behind it is never forwarded
    (RFC 9112 §9.6: after sending close a server MUST NOT process further
    requests on that connection). nginx and HAProxy answer it instead; both
    choices are allowed, but not announcing close and then serving."""
    ex = exchange(gateway.port, head("GET", "/close") + SMUGGLED)
    fs = finals(ex)
    assert [r.status for r in fs] == [502], ex.responses
    assert fs[0].h("connection") == "close" and ex.closed, ex
    origin.wait_requests(1)
    assert all(q.path == "/close" for q in origin.requests), origin.requests
    assert b"smuggled" not in origin.raw_since_reset()


# ================================================================ chunk extension bound
def test_chunk_extension_within_the_bound_is_served(gateway, origin):
    """RFC 9112 §7.1.1: unrecognised chunk extensions are ignored. One of
    4000 bytes (under the runtime's 4 KiB bound) is skipped, the data forwarded."""
    ext = b";a=" + b"x" * 3990 + b";q=\"a;b\""
    assert len(ext) < MAX_CHUNK_EXT
    data = head(fields=["Transfer-Encoding: chunked", "Connection: close"]) + b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"
    ex = exchange(gateway.port, data)
    assert ex.statuses == [200] and ex.responses[0].body == b"hello", ex.responses
    assert_clean_forward(origin.wait_requests(1, complete=True)[0], b"hello")


def test_chunk_extension_past_the_bound_is_4xx_and_never_completed(gateway, origin):
    """RFC 9112 §7.1.1: a server ought to limit chunk extensions and answer
    4xx past the limit; the upstream request, already under way, is aborted,
    never completed (RELIABILITY.md)."""
    data = head(target="/long-ext", fields=["Transfer-Encoding: chunked"]) + b"5;" + b"a" * (MAX_CHUNK_EXT + 1000)
    ex = exchange(gateway.port, data + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
    assert_rejected(ex, (400,))
    assert_never_completed(origin, "/long-ext", "long chunk extension")


# ================================================================ half-close cutting a request
@pytest.mark.parametrize(
    "data",
    [
        head(target="/cut", fields=["Content-Length: 10"]) + b"hello",
        head(target="/cut", fields=["Transfer-Encoding: chunked"]) + b"5\r\nhello\r\n",
        head(target="/cut", fields=["Transfer-Encoding: chunked"]) + b"5\r\nhello\r\n0\r\n",
        head(target="/cut", fields=["Expect: 100-continue", "Content-Length: 5"]),
    ],
    ids=["short-content-length", "no-last-chunk", "no-end-of-trailers", "expect-without-body"],
)
def test_half_close_inside_a_body_never_completes_the_request(gateway, origin, data):
    """The client shuts its write side before its body is complete: what it
    sent is not a request, so no 2xx comes back and the origin never sees it
    complete (a short body is not padded, a chunked one not terminated)."""
    with RawConn(gateway.port) as c:
        c.send(data)
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed(10), "connection left open after the client's half-close"
        answered = bytes(c.buf)
    assert b"HTTP/1.1 2" not in answered, answered[:300]
    origin.wait_requests(1, timeout=2)
    assert_never_completed(origin, "/cut", repr(data[-40:]))
