"""A review of the runtime changes made on 2026-11-27 (5ce1c1d..: interims
relayed, `Date` added, `Max-Forwards`, `OPTIONS` absolute-form with an empty
path as `*`, HEAD error answers without content, the HTTP/2 header-block
tick), each suspicion from reading the diff proven or pinned against
hello_gateway.

Bugs this review found in those changes, each beside a passing control
(all fixed the same day; each test failed before its fix):

- An error answer to a HEAD preceded by an empty line carries content.
  RFC 9112 §2.2 has a server ignore at least one CRLF before a request line
  (httparse does; clients send one after a POST body), but
  `conn.rs::serve_h1` decides "no content" from
  `client.buffered().starts_with(b"HEAD ")`, the raw bytes: `\r\nHEAD ...`
  rejected with 400 gets the error body RFC 9110 §9.3.2 forbids. Nor has
  the 400 to plain HTTP on a TLS port (a HEAD) its head only: it is one
  fixed answer, `conn.rs::PLAIN_HTTP_TO_TLS`. Nor the 408 to a HEAD
  whose head timed out: `io.rs::read_more` hands back a fresh empty buffer
  on a timeout (the bytes read so far went with the cancelled read), so
  the prefix test sees nothing. The control: a HEAD refused by the parser.
- A `Date` the upstream nominated in `Connection` leaves the answer undated
  (HTTP/1.1 and h2c): `date.rs::add_missing_date` asks `headers().get("date")`,
  which sees nominated fields, and the response writers then drop them as
  hop-by-hop (RFC 9110 §6.6.1: a recipient forwarding a response without a
  Date MUST add one).
- The 400 to plain HTTP sent to a TLS listener has no `Date`: it is the
  fixed byte string `conn.rs::PLAIN_HTTP_TO_TLS`, outside
  `write_local_response`, which today's change dates (RFC 9110 §6.6.1: an
  origin server's 4xx; the control is a refused head on a cleartext port).
- A `Max-Forwards` the client nominated in `Connection` reaches the
  upstream on OPTIONS and TRACE: `proxy::max_forwards` decrements it with
  `headers_mut().set`, and the new field is end-to-end (RFC 9110 §7.6.1;
  a GET's, left alone, is dropped: the control).
- A HEADERS frame whose 9-byte frame header is trickled is not timed by
  header-timeout: `watch.rs::header_block_arriving` counts a block only once
  its frame header is in (`in_block && payload_left > 0`), so a head whose
  first byte came 8 s before its last, with header-timeout 2 s, is served;
  only idle-timeout bounds it (the payload trickle, fixed today, is cut:
  the control).

Pinned (subtle edges of the changes no other test covers): an interim goes
out before its own final answer and never leaks into the next answer of a
pipelined HTTP/1.1 connection; over TLS it goes through the TLS stream; with
`Expect: 100-continue` the client sees the gateway's one `100`, never the
upstream's, and the upstream's `103`; a 103 sent before the upstream
reads the body reaches an HTTP/1.1 client mid-upload, the body going on
whole; on an h2c stream the 103 is an
informational HEADERS before the final one (also for HEAD and before the
gateway's own 502), the upstream's unasked 100 is not relayed;
`OPTIONS http://host?query` (empty path, but a query) stays `/?query`
upstream (RFC 9112 §3.2.4 makes only an empty path *and* no query `*`).
"""

from __future__ import annotations

import email.utils
import re
import socket
import ssl
import threading
import time

import h2.events
import pytest
from hyperframe.frame import HeadersFrame
from support.client import RawConn
from support.h2client import H2Client, RawH2
from support.origin import respond
from support.pki import Pki

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"


class Precondition(Exception):
    """A step a test relies on went wrong: never taken for the bug its strict
    xfail names (the xfails expect AssertionError only)."""


def _read_to_close(c: RawConn, timeout: float = 5.0) -> bytes:
    """Everything the gateway sends until it closes (bounded by `timeout`)."""
    if not c.wait_closed(timeout):
        raise Precondition(f"the gateway kept the connection open: {bytes(c.buf)!r}")
    return bytes(c.buf)


def _valid_http_date(value: str) -> bool:
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


# ------------------------------------------------- HEAD error answers


# (listener, bytes sent, the status the gateway answers them with)
HEAD_ERRORS = {
    # A field line without a colon: refused (400) after the request line.
    "refused": ("cleartext", b"HEAD /refused HTTP/1.1\r\nHost: a.test\r\nno colon here\r\n\r\n", 400),
    # Half a head, then nothing: 408 at header-timeout.
    "timed-out": ("cleartext", b"HEAD /slow HTTP/1.1\r\nHost: a.t", 408),
    # RFC 9112 §2.2: an empty line before the request line is ignored.
    "refused-after-an-empty-line": (
        "cleartext", b"\r\nHEAD /refused HTTP/1.1\r\nHost: a.test\r\nno colon here\r\n\r\n", 400),
    "plain-http-to-tls": ("tls", b"HEAD /plain HTTP/1.1\r\nHost: edge.test\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", list(HEAD_ERRORS))
def test_an_error_answer_to_head_has_no_content(start_gateway, origin, tmp_path, case):
    """RFC 9110 §9.3.2: the answer to a HEAD has no content (its
    content-length may describe the GET's). Today's change: heads refused
    once their method is read (the control: a head refused by the parser)."""
    listener, request, status = HEAD_ERRORS[case]
    if listener == "tls":
        pki = Pki(tmp_path)
        pki.leaf("edge", "edge.test")
        g = start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"))
    else:
        g = start_gateway(header_timeout=1)
    with RawConn(g.port, timeout=10) as c:
        c.send(request)
        got = _read_to_close(c)
    head, sep, after = got.partition(b"\r\n\r\n")
    if not sep or not head.startswith(f"HTTP/1.1 {status}".encode()):
        raise Precondition(f"not a {status}: {got!r}")
    assert after == b"", f"content after the head of an answer to HEAD: {after!r}"


# ---------------------------------------------------------------- Date


@pytest.mark.parametrize("via", ["h1", "h2c"])
@pytest.mark.parametrize(
    "connection",
    [
        pytest.param("x-other", id="control-other-field-nominated"),
        pytest.param("date", id="date-nominated"),
    ],
)
def test_the_client_always_gets_a_date(start_gateway, origin, connection, via):
    """RFC 9110 §6.6.1: a forwarded response without a `Date` gets one. A
    `Date` the upstream named in `Connection` is dropped with the other
    hop-by-hop fields, so the client's answer has none unless one is added;
    the control names another field, and the upstream's `Date` is relayed."""

    def dated(req, conn):
        return respond(conn, req, 200, b"dated\n", ("Date: Fri, 27 Nov 2026 19:00:00 GMT", f"Connection: {connection}"))

    origin.handler = dated
    g = start_gateway(protocols="h1,h2c")
    if via == "h2c":
        with H2Client(g.addr) as c:
            r = c.request("/date-hop")
    else:
        with RawConn(g.port, timeout=10) as c:
            c.send(b"GET /date-hop HTTP/1.1\r\nHost: a.test\r\n\r\n")
            r = c.read_response()
    if r.status != 200 or r.body != b"dated\n":
        raise Precondition(f"not proxied: {r!r}")
    dates = r.header("date")
    assert len(dates) == 1 and _valid_http_date(dates[0]), f"Date of a forwarded response: {dates}"


@pytest.mark.parametrize(
    "listener",
    [
        pytest.param("cleartext", id="control-cleartext-400"),
        pytest.param("tls", id="plain-http-to-tls-400"),
    ],
)
def test_the_gateways_own_400_is_dated(start_gateway, origin, tmp_path, listener):
    """RFC 9110 §6.6.1: an origin server with a clock MUST send `Date` in its
    4xx answers; today's change dates every answer written by
    `write_local_response`. The control is a head refused on a cleartext
    listener; the other, plain HTTP sent to a TLS listener."""
    if listener == "tls":
        pki = Pki(tmp_path)
        pki.leaf("edge", "edge.test")
        g = start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"))
        request = b"GET /plain-to-tls HTTP/1.1\r\nHost: edge.test\r\n\r\n"
    else:
        g = start_gateway()
        request = b"GET /refused HTTP/1.1\r\nHost: a.test\r\nno colon here\r\n\r\n"
    with RawConn(g.port, timeout=10) as c:
        c.send(request)
        r = c.read_response()
    if r.status != 400:
        raise Precondition(f"not a 400: {r!r}")
    dates = r.header("date")
    assert len(dates) == 1 and _valid_http_date(dates[0]), f"Date of the gateway's 400: {dates}"


# ------------------------------------------------------------- interims


def test_interims_stay_with_their_answer_on_a_pipelined_connection(gateway, origin):
    """Two requests pipelined in one write; the first's upstream answers 103
    then 200, the second's 200 alone. The client must see 103, 200, 200 in
    that order: the interim before its own final head, none for the second."""

    def hinted(req, conn):
        if req.path == "/hinted":
            return conn.send(EARLY_HINTS + b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nhinted\n")
        return respond(conn, req, 200, b"plain\n")

    origin.handler = hinted
    with RawConn(gateway.port, timeout=10) as c:
        c.send(b"GET /hinted HTTP/1.1\r\nHost: a.test\r\n\r\nGET /plain HTTP/1.1\r\nHost: a.test\r\n\r\n")
        answers = [c.read_response() for _ in range(3)]
    assert [(r.status, r.body) for r in answers] == [(103, b""), (200, b"hinted\n"), (200, b"plain\n")], answers
    assert answers[0].header("link") == ["</style.css>; rel=preload"], answers[0]


def test_expect_continue_the_client_gets_one_100_and_the_hints(gateway, origin):
    """The gateway answers `Expect: 100-continue` itself (it is not passed on),
    so a `100` the upstream sends anyway is not relayed (RFC 9110 §15.2: not
    one the proxy asked for itself); its `103` is."""

    def hinted(req, conn):
        return conn.send(b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINTS
                         + b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")

    origin.handler = hinted
    with RawConn(gateway.port, timeout=10) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        first = c.read_response()
        if first.status != 100:
            raise Precondition(f"no 100 Continue before the body: {first!r}")
        c.send(b"hello")
        rest = [c.read_response()]
        while rest[-1].status < 200:
            rest.append(c.read_response())
    statuses = [r.status for r in rest]
    assert statuses == [103, 200], f"after the gateway's 100: {statuses}"
    assert rest[-1].body == b"ok\n", rest[-1]
    got = [q for q in origin.requests if q.path == "/upload"]
    assert len(got) == 1 and got[0].body == b"hello", got


def test_interims_reach_an_http11_client_over_tls(start_gateway, origin, tmp_path):
    """`ClientInterims` writes on the client's stream: over TLS that is the
    TLS stream (an interim written on the raw socket would break the
    record layer). The 103 then the 200 come out of the TLS session intact,
    and the connection serves on."""
    pki = Pki(tmp_path)
    pki.leaf("edge", "edge.test")
    g = start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"))

    def hinted(req, conn):
        if req.path == "/hinted-tls":
            return conn.send(EARLY_HINTS + b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntls\n")
        return respond(conn, req, 200, b"next\n")

    origin.handler = hinted
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    raw = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="edge.test") as tls:
        tls.sendall(b"GET /hinted-tls HTTP/1.1\r\nHost: edge.test\r\n\r\n"
                    b"GET /next HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        got = b""
        deadline = time.monotonic() + 10
        while not got.endswith(b"next\n") and time.monotonic() < deadline:
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", got)]
    assert statuses == [103, 200, 200], got
    assert b"\r\n\r\ntls\n" in got and got.endswith(b"\r\n\r\nnext\n"), got


def test_an_interim_sent_before_the_body_is_read_reaches_an_uploading_client(start_gateway, origin):
    """An upstream that answers 103 on the request head, before it reads the
    body (as Early Hints servers do): on HTTP/1.1 the hint is written to the
    client while the body pump reads from the same connection
    (`send_body_read_head` selects the two); the upload goes on whole and
    the final answer follows the hint."""
    body = bytes(range(256)) * 4096  # 1 MiB
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    got_body: list[bytes] = []

    def upstream():
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            _, rest = buf.split(b"\r\n\r\n", 1)
            conn.sendall(EARLY_HINTS)
            while len(rest) < len(body):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
            got_body.append(rest)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nsent\n")

    t = threading.Thread(target=upstream, daemon=True)
    t.start()
    try:
        g = start_gateway(upstream=f"127.0.0.1:{lsock.getsockname()[1]}")
        with RawConn(g.port, timeout=20) as c:
            c.send(b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % len(body))
            hint = c.read_response()
            c.send(body)
            final = c.read_response()
    finally:
        lsock.close()
        t.join(5)
    assert (hint.status, final.status, final.body) == (103, 200, b"sent\n"), (hint, final)
    assert got_body == [body], "the upload did not reach the upstream whole"


def _h2_events_of_stream(client: H2Client, path: str, method: str = "GET", timeout: float = 10.0) -> list:
    """(kind, status, headers) for each head on the stream of `method path`, in
    the order they arrived, up to its end: kind is "interim" or "final"."""
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(
        sid, [(":method", method), (":scheme", "http"), (":authority", "a.test"), (":path", path)], end_stream=True
    )
    client.sock.sendall(client.conn.data_to_send())
    deadline = time.monotonic() + timeout
    heads = []
    while time.monotonic() < deadline:
        # H2Client._pump: one read, its events, and the acks they need.
        for e in client._pump(deadline):
            if getattr(e, "stream_id", None) != sid:
                continue
            if isinstance(e, (h2.events.InformationalResponseReceived, h2.events.ResponseReceived)):
                fields = [(bytes(n).decode(), bytes(v).decode()) if isinstance(n, bytes) else (n, v) for n, v in e.headers]
                kind = "interim" if isinstance(e, h2.events.InformationalResponseReceived) else "final"
                heads.append((kind, int(dict(fields)[":status"]), fields))
            elif isinstance(e, h2.events.DataReceived):
                client.conn.acknowledge_received_data(e.flow_controlled_length, sid)
            elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                return heads
    raise TimeoutError(f"stream {sid} did not end: {heads}")


def _hints_then(final: bytes):
    """An upstream answering `/hints-*` with a 100 (unasked) and a 103, then `final`."""

    def handler(req, conn):
        if req.path.startswith("/hints-"):
            return conn.send(b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINTS + final)
        return respond(conn, req, 200, b"next\n")

    return handler


FINALS = {
    "200": (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n", 200),
    # The upstream breaks after the hints: the gateway's own 502 follows them.
    "garbage-502": (b"NOT HTTP AT ALL\r\n\r\n", 502),
}


@pytest.mark.parametrize("final", sorted(FINALS))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_interims_over_http2_come_before_the_final_head(start_gateway, origin, final, method):
    """On an HTTP/2 stream the upstream's 103 goes out as an informational
    HEADERS frame before the final one (RFC 9113 §8.1), its 100 does not (the
    gateway did not pass on an Expect), and the connection serves on."""
    answer, status = FINALS[final]
    origin.handler = _hints_then(answer)
    g = start_gateway(protocols="h1,h2c")
    with H2Client(g.addr) as c:
        heads = _h2_events_of_stream(c, f"/hints-{final}", method)
        assert [(kind, code) for kind, code, _ in heads] == [("interim", 103), ("final", status)], heads
        assert ("link", "</style.css>; rel=preload") in heads[0][2], heads[0]
        nxt = c.request("/next")
    assert (nxt.status, nxt.body) == (200, b"next\n"), nxt


# ------------------------------------------------ HTTP/2 header-timeout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "trickled",
    [
        pytest.param("payload", id="control-payload"),
        pytest.param("frame-header"),
    ],
)
def test_http2_head_trickled_before_its_payload_is_cut_at_header_timeout(start_gateway, origin, trickled):
    """header-timeout 2 s, idle-timeout 30 s, an h2c connection past its
    preface. Then one HEADERS frame (END_HEADERS, END_STREAM) goes out one
    byte a second: only its payload (the control: the case fixed today,
    `header_block_arriving`) or only its 9-byte frame header, the payload
    then all at once. Either way the head's first byte came 8 s before its
    last: the connection must end or the stream be refused before the head
    is complete, and nothing reach the origin (RELIABILITY.md: a client that
    sends the head slower than header-timeout gets 408 or a close)."""
    g = start_gateway(header_timeout=2, idle_timeout=30, protocols="h1,h2c")
    path = f"/trickled-{trickled}"
    with RawH2(g.addr) as h:
        h.read_frames(time.monotonic() + 1, stop=lambda s: s.settings >= 1 and s.settings_acks >= 1)
        f = HeadersFrame(1)
        f.data = h.block(path=path)
        f.flags.add("END_HEADERS")
        f.flags.add("END_STREAM")
        wire = f.serialize()
        # Eight pieces a second apart, then the rest at once: bytes 1-8 of
        # the frame header, or the whole frame header and then the payload's
        # first 7 bytes.
        if trickled == "frame-header":
            slow = [wire[i : i + 1] for i in range(8)]
        else:
            slow = [wire[:9]] + [wire[i : i + 1] for i in range(9, 16)]
        sent = sum(len(p) for p in slow)
        cut = False
        for piece in slow:
            if not h.send(piece):
                cut = True
                break
            seen = h.read_frames(time.monotonic() + 1, stop=lambda s: s.goaway is not None or s.closed)
            if seen.goaway is not None or seen.closed or 1 in seen.resets:
                cut = True
                break
        if not cut:
            h.send(wire[sent:])
        seen = h.read_frames(time.monotonic() + 3, stop=lambda s: 1 in s.ended or s.closed or 1 in s.resets)
    forwarded = [q for q in origin.requests if q.path == path]
    assert not forwarded and (cut or seen.status(1) != 200), (
        f"a head trickled over 8 s with header-timeout 2 s: stream 1 answered {seen.status(1)}, "
        f"forwarded {len(forwarded)}")


# ---------------------------------------------------------- Max-Forwards


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("GET", id="control-GET"),
        pytest.param("OPTIONS"),
        pytest.param("TRACE"),
    ],
)
def test_max_forwards_nominated_in_connection_is_not_forwarded(gateway, origin, method):
    """RFC 9110 §7.6.1: a proxy removes every field `Connection` names before
    forwarding (RELIABILITY.md: they never reach the upstream as sent). The
    GET's, which `max_forwards` leaves alone, is dropped; an OPTIONS' or
    TRACE's, decremented by `headers_mut().set`, goes up as a new field."""
    path = f"/mf-hop-{method.lower()}"
    with RawConn(gateway.port, timeout=10) as c:
        c.send(f"{method} {path} HTTP/1.1\r\nHost: a.test\r\nConnection: max-forwards\r\n"
               "Max-Forwards: 3\r\n\r\n".encode())
        r = c.read_response()
    if r.status != 200:
        raise Precondition(f"not proxied: {r!r}")
    origin.wait_for(lambda: any(q.path == path for q in origin.requests), 5)
    got = [q for q in origin.requests if q.path == path]
    if len(got) != 1:
        raise Precondition(f"forwarded {len(got)} times")
    assert got[0].header("max-forwards") == [], f"{method}: hop-by-hop Max-Forwards forwarded: {got[0].headers}"


# ------------------------------------------------- OPTIONS absolute-form


def test_options_absolute_form_with_a_query_but_no_path_stays_origin_form(gateway, origin):
    """RFC 9112 §3.2.4: `*` only for an empty path *and* no query; with a
    query, the origin-form is `/` plus the query."""
    with RawConn(gateway.port, timeout=10) as c:
        c.send(b"OPTIONS http://a.test?q=1 HTTP/1.1\r\nHost: a.test\r\nx-case: opt-query\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    origin.wait_for(lambda: any(q.header("x-case") == ["opt-query"] for q in origin.requests), 5)
    got = [q.target for q in origin.requests if q.header("x-case") == ["opt-query"]]
    assert got == ["/?q=1"], got
