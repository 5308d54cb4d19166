"""Odd upstream answers relayed to HTTP/1.1 and to HTTP/2 (h2c and TLS) clients: what
a differential pass against nginx 1.22 and HAProxy 2.6 found, pinned from the
RFCs so the suite needs neither peer.

The pass put hello_gateway, nginx and HAProxy in front of one scripted origin
(`support/rogue_origin.py`) and sent each of about 150 odd answers through
each proxy to an HTTP/1.1 and an h2c client, then asked whether the upstream
connection was reused. Where the three disagreed, the RFC decided; what the
existing files (`test_random_origin.py`, `test_upstream_faults.py`,
`test_review_h1_qa.py`, `test_review_today_qa.py`, `test_h2_data_qa.py`) do
not already pin is here, each case over HTTP/1.1, h2c and HTTP/2 over TLS
(ALPN `h2`, a second gateway), the reuse checked through the same gateway:

- `Connection: close` from the upstream ends that upstream connection, in any
  spelling (`CLOSE`, a second `Connection` line, HTTP/1.0 without
  `keep-alive`, `keep-alive, close`), checked with an origin that keeps the
  socket open, so a reuse shows as a request the origin never answers
  (RFC 9112 §9.6, §9.3). The same token in a 1xx is ignored: a bug, below.
- The final answer's hop-by-hop fields and every name `Connection` lists
  (even `Set-Cookie` and `Date`, which nginx and HAProxy relay) never reach
  the client; over HTTP/2 nginx sends `proxy-connection`, `upgrade`, `te`.
- At most sixteen interims per answer are relayed (runtime/README.md), the
  rest dropped, the final answer whole.
- Interims carry no hop-by-hop field (RFC 9110 §7.6.1; over HTTP/2 they would
  make the HEADERS malformed, RFC 9113 §8.2.2), and neither a 1xx nor a 204
  carries `Content-Length` (RFC 9110 §8.6). HAProxy relays a nominated field
  in a 103 over HTTP/2 and `content-length` on a 204 over HTTP/2.
- A transfer coding the gateway cannot undo (`gzip`, `chunked, gzip`,
  `gzip, chunked`, split over two lines, `identity`) is a 502: a coding is
  hop-by-hop (RFC 9112 §6.1), so relaying the coded bytes as the content
  hands the client another message (nginx does, for `gzip` and
  `gzip, chunked`).
- Status codes that are not three digits from 100 (`000`, `099`, `20`,
  `1000`, `+200`) are 502 (RFC 9112 §4 `status-code = 3DIGIT`, RFC 9110 §15;
  nginx relays them all, over HTTP/2 as `:status 000`); an empty or missing
  reason phrase, or one of obs-text, is no reason to refuse the answer.
- An interim then an upstream that closes, resets, sends garbage or stalls:
  the client still gets a final answer (502/504) after the interim, the
  stream ended cleanly (HAProxy resets the HTTP/2 stream with REFUSED_STREAM
  after relaying the 103).
- Field values reach an HTTP/2 client without surrounding whitespace
  (RFC 9113 §8.2.1 makes such a field malformed), and `Set-Cookie` fields
  (with commas in `Expires`) stay separate fields in order, on a final
  answer and on a 103 (RFC 9110 §5.3, RFC 6265 §3).
- Response heads at the bounds docs/spec.md gives (256 fields, 64 KiB) are
  relayed, one past them is a 502, over both protocols (an HTTP/2 head that
  long goes out in CONTINUATION frames).
- An upload answered early (413 and `Connection: close` before the body is
  read) over HTTP/2: the client gets the whole answer, then is told its
  upload is over with RST_STREAM(NO_ERROR) (RFC 9113 §8.1), and its next
  stream on the connection is served.

Found by this pass:

- `Connection: close` in an upstream 1xx was ignored, and the connection
  pooled after the final answer (fixed: `read_response_head` keeps the
  interims' keep-alive verdict). RFC 9112 §9.6: a client that receives
  `close` "MUST cease sending requests on that connection"; a 1xx is a
  response message (RFC 9110 §15.2). HAProxy closes it. With an origin
  that said `close` in its 103 and then left the socket open, the next
  request waited out the response timeout: 504. (An `HTTP/1.0` 103 without
  `keep-alive` before an HTTP/1.1 final answer was pooled the same way;
  both peers close it; now closed too.)
- A 2xx answer that started before the upload was read stopped the
  upload (fixed: the body goes on up beside the answer): the gateway
  sent no more of the body once any response head arrived
  (runtime/README.md, "Request bodies go up while the response head is
  awaited", written for early 401/413), so an origin that answers at once
  and then reads the body (full duplex) never gets it and the client's
  answer is cut at the response timeout (HTTP/1.1: a chunked body without
  its last chunk; HTTP/2: RST_STREAM(INTERNAL_ERROR)). RFC 9112 §9.5 has a
  client stop only when the answer says the server does not want the body
  and is closing; HAProxy streams both ways and the origin gets all of it.
  The control: an early 413 with `close` is relayed and ends the upload.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import pytest
from support.client import Closed, RawConn
from support.gateway import Gateway
from support.origin import ThreadPerConnection
from support.rogue_origin import RogueOrigin, Script

# Short, so a request sent on a connection the origin will never answer ends
# (504) well within a test's timeout.
RESPONSE_TIMEOUT = 2
# Bound on any one read: past RESPONSE_TIMEOUT, so a 504 arrives first.
READ_BOUND = 8.0
# How the client reaches the gateway: HTTP/1.1 and h2c (prior knowledge) on a
# cleartext listener, HTTP/2 over TLS (ALPN `h2`) on a second gateway.
PROTOCOLS = ["h1", "h2c", "h2-tls"]

# Fields RFC 9110 §7.6.1 calls hop-by-hop (RELIABILITY.md counts `Proxy-*`
# too), and the ones RFC 9113 §8.2.2 forbids in HTTP/2.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


@dataclass
class Answer:
    """What one client got for one request, over either protocol."""

    interims: list = field(default_factory=list)  # [(status, [(name, value)])]
    status: int | None = None
    headers: list = field(default_factory=list)  # [(lower-case name, value)]
    body: bytes = b""
    complete: bool = False  # HTTP/1.1: framed body read whole; HTTP/2: END_STREAM
    reset: int | None = None  # HTTP/2: RST_STREAM error code on the stream

    def names(self) -> list[str]:
        return [n for n, _ in self.headers]

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


# ------------------------------------------------------------------ clients


def _wire_fields(raw_head: bytes) -> list[tuple[str, str]]:
    """The fields of an HTTP/1.1 head as written: the name lower-cased, the
    value after the colon with one leading space dropped and nothing else
    (so whitespace the gateway left around a value shows)."""
    fields = []
    for line in raw_head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.decode("latin-1").partition(":")
            fields.append((name.lower(), value.removeprefix(" ")))
    return fields


def fetch_h1(port: int, path: str, method: str = "GET") -> Answer:
    """One request on a fresh HTTP/1.1 connection; interims then the final answer."""
    ans = Answer()
    with RawConn(port, timeout=READ_BOUND) as c:
        c.send(f"{method} {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        try:
            while True:
                r = c.read_response(method, timeout=READ_BOUND)
                if 100 <= r.status < 200:
                    ans.interims.append((r.status, _wire_fields(r.raw_head)))
                    continue
                ans.status, ans.body, ans.complete = r.status, r.body, r.complete
                ans.headers = _wire_fields(r.raw_head)
                return ans
        except Closed:
            return ans


def _h2_connection() -> h2.connection.H2Connection:
    # Inbound validation off: the tests check the fields themselves, and
    # must see a connection-specific field if the gateway sent one.
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="latin-1", validate_inbound_headers=False))
    conn.local_settings.max_header_list_size = 1 << 20
    conn.decoder.max_header_list_size = 1 << 20  # heads of 64 KiB, as docs/spec.md allows
    conn.initiate_connection()
    return conn


def _h2_pump(sock: socket.socket, conn, deadline: float) -> list:
    sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return []
    if not data:
        raise ConnectionError("closed")
    events = conn.receive_data(data)
    sock.sendall(conn.data_to_send())
    return events


def _h2_note(ans: Answer, sid: int, e) -> bool:
    """Records event `e` of stream `sid`; True once the stream is over."""
    if getattr(e, "stream_id", None) != sid:
        return isinstance(e, h2.events.ConnectionTerminated)
    if isinstance(e, h2.events.InformationalResponseReceived):
        hs = [(n, v) for n, v in e.headers if not n.startswith(":")]
        ans.interims.append((int(dict(e.headers)[":status"]), hs))
    elif isinstance(e, h2.events.ResponseReceived):
        ans.status = int(dict(e.headers)[":status"])
        ans.headers = [(n, v) for n, v in e.headers if not n.startswith(":")]
    elif isinstance(e, h2.events.DataReceived):
        ans.body += e.data
    elif isinstance(e, h2.events.StreamEnded):
        ans.complete = True
        return True
    elif isinstance(e, h2.events.StreamReset):
        ans.reset = e.error_code
        return True
    return False


def open_h2(port: int, tls: ssl.SSLContext | None) -> socket.socket:
    """A socket for HTTP/2: h2c with prior knowledge, or TLS with ALPN `h2`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_BOUND)
    if tls is None:
        return sock
    sock = tls.wrap_socket(sock, server_hostname="edge.test")
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def fetch_h2(port: int, path: str, method: str = "GET", tls: ssl.SSLContext | None = None) -> Answer:
    """One request on a fresh HTTP/2 connection."""
    ans = Answer()
    conn = _h2_connection()
    with open_h2(port, tls) as sock:
        conn.send_headers(1, [(":method", method), (":scheme", "http"), (":authority", "a.test"),
                              (":path", path)], end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + READ_BOUND
        try:
            while time.monotonic() < deadline:
                events = _h2_pump(sock, conn, deadline)
                if any(_h2_note(ans, 1, e) for e in events):
                    break
        except ConnectionError:
            pass
    return ans


@dataclass
class Via:
    """A gateway and the protocol a test's client speaks to it."""

    gw: Gateway
    proto: str
    tls: ssl.SSLContext | None = None

    def fetch(self, path: str, method: str = "GET") -> Answer:
        if self.proto == "h1":
            return fetch_h1(self.gw.port, path, method)
        return fetch_h2(self.gw.port, path, method, self.tls)

    def probe(self, path: str) -> Answer:
        """A plain GET through the same gateway (so the same upstream pool):
        HTTP/1.1 on the cleartext one, HTTP/2 on the TLS one."""
        return fetch_h1(self.gw.port, path) if self.tls is None else fetch_h2(self.gw.port, path, tls=self.tls)


# ------------------------------------------------------------------ origin side


def play(origin: RogueOrigin, path: str, wire: bytes, end: str = "keep") -> None:
    origin.scripts[path] = Script([wire], [0], end=end)


def upstream_conn(origin: RogueOrigin, path: str) -> int:
    got = [a.conn_id for a in origin.arrivals if a.req.target == path]
    assert got, f"{path} never reached the origin"
    return got[0]


def assert_not_reused(via: Via, origin: RogueOrigin, path: str) -> None:
    """The upstream connection that carried `path` carries nothing more: the
    next request goes to another connection and is answered by the origin."""
    conn = upstream_conn(origin, path)
    probe = f"/probe-after{path}"
    got = via.probe(probe)
    assert got.status == 200 and got.body == f"GET {probe}\n".encode(), \
        f"the request after {path} was not answered by the origin: {got}"
    assert upstream_conn(origin, probe) != conn and not origin.late_bytes.get(conn), \
        f"the connection that carried {path} (origin conn {conn}) was reused: late bytes {origin.late_bytes}"


def assert_reused(via: Via, origin: RogueOrigin, path: str) -> None:
    """The connection is pooled (a clean answer): the next request rides it."""
    conn = upstream_conn(origin, path)
    probe = f"/probe-after{path}"
    got = via.probe(probe)
    assert got.status == 200 and upstream_conn(origin, probe) == conn, (got, origin.arrivals[-2:])


def ok(extra: str = "", body: str = "hello", status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\n{extra}content-length: {len(body)}\r\n\r\n{body}".encode("latin-1")


@pytest.fixture(scope="module")
def rogue():
    o = RogueOrigin()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def gw(hello_bin, rogue, gateway_logs):
    # One worker: every request meets the same upstream pool, so a connection
    # left pooled is the one the next request takes.
    g = Gateway(hello_bin, rogue.addr, log_dir=gateway_logs, protocols="h1,h2c", workers=1,
                response_timeout=RESPONSE_TIMEOUT).start()
    yield g
    g.kill()


@pytest.fixture(scope="module")
def tls_gw(hello_bin, rogue, gateway_logs, pki):
    g = Gateway(hello_bin, rogue.addr, log_dir=gateway_logs, protocols="h1,h2", workers=1,
                response_timeout=RESPONSE_TIMEOUT, tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key")).start()
    yield g
    g.kill()


@pytest.fixture
def origin(rogue, gw, tls_gw):
    rogue.reset()
    yield rogue
    for g in (gw, tls_gw):
        assert g.alive(), f"a gateway died: {g.crashed() or g.tail()}"


@pytest.fixture(params=PROTOCOLS)
def via(request, gw, tls_gw, pki) -> Via:
    if request.param != "h2-tls":
        return Via(gw, request.param)
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    ctx.set_alpn_protocols(["h2"])
    return Via(tls_gw, request.param, ctx)


# ------------------------------------------------------------------ Connection: close

CLOSE_SPELLINGS = {
    "close": "HTTP/1.1 200 OK\r\nConnection: close\r\n",
    "upper-case": "HTTP/1.1 200 OK\r\nConnection: CLOSE\r\n",
    "second-line": "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n",
    "http10-no-keep-alive": "HTTP/1.0 200 OK\r\n",
    "http10-keep-alive-close": "HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\n",
}


@pytest.mark.parametrize("spelling", CLOSE_SPELLINGS)
def test_connection_close_in_the_final_answer_ends_the_upstream_connection(via, origin, spelling):
    """RFC 9112 §9.6 (and §9.3 for HTTP/1.0): after `close` no request is sent
    on that connection. The origin leaves the socket open, so a reuse would
    show as a request it never answers."""
    path = f"/close/{spelling}/{via.proto}"
    play(origin, path, (CLOSE_SPELLINGS[spelling] + "Content-Length: 5\r\n\r\nhello").encode(), end="wait")
    got = via.fetch(path)
    assert got.status == 200 and got.body == b"hello" and got.complete, got
    assert not set(got.names()) & HOP_BY_HOP, got.headers
    assert_not_reused(via, origin, path)


def test_connection_close_in_an_interim_ends_the_upstream_connection(via, origin):
    """The same `close` in a 103 before the final answer: RFC 9112 §9.6 speaks
    of the response message that carries it, and a 1xx is one (RFC 9110
    §15.2). Found by this pass: the gateway pooled the connection and the
    next request waited out the response timeout (504)."""
    path = f"/interim-close/{via.proto}"
    play(origin, path, b"HTTP/1.1 103 Early Hints\r\nConnection: close\r\nLink: </a.css>\r\n\r\n" + ok(),
         end="wait")
    got = via.fetch(path)
    assert got.status == 200 and got.body == b"hello", got
    assert [s for s, _ in got.interims] == [103], got.interims
    assert_not_reused(via, origin, path)


def test_an_interim_without_close_leaves_the_connection_pooled(via, origin):
    """The control of the test above: the same 103 without `close` (and a
    nominated field in it) is relayed and the connection pooled."""
    path = f"/interim-keep/{via.proto}"
    play(origin, path, b"HTTP/1.1 103 Early Hints\r\nConnection: x-h\r\nx-h: 1\r\nLink: </a.css>\r\n\r\n" + ok())
    got = via.fetch(path)
    assert got.status == 200 and got.body == b"hello", got
    assert [s for s, _ in got.interims] == [103], got.interims
    assert_reused(via, origin, path)


# ------------------------------------------------------------------ hop-by-hop fields of the final answer


def test_hop_by_hop_fields_and_the_names_connection_lists_never_reach_the_client(via, origin):
    """RFC 9110 §7.6.1: a proxy MUST remove the fields `Connection` names, even
    end-to-end ones (`Set-Cookie`, `Date` here; nginx and HAProxy relay the
    nominated `Set-Cookie`), and the hop-by-hop fields themselves; over
    HTTP/2 they are connection-specific and would make the response
    malformed (RFC 9113 §8.2.2; nginx sends `proxy-connection`, `upgrade`,
    `te` and `trailer` over HTTP/2, HAProxy `te` and `trailer`). The `Date`
    dropped is replaced by the gateway's own (RFC 9110 §6.6.1)."""
    path = f"/hop/{via.proto}"
    play(origin, path, b"HTTP/1.1 200 OK\r\nConnection: x-hop, date, set-cookie, keep-alive\r\nx-hop: secret\r\n"
                       b"Date: Mon, 01 Jan 2001 00:00:00 GMT\r\nSet-Cookie: nominated=1\r\nKeep-Alive: timeout=5\r\n"
                       b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: x-t\r\n"
                       b"x-end-to-end: kept\r\nContent-Length: 5\r\n\r\nhello")
    got = via.fetch(path)
    assert got.status == 200 and got.body == b"hello", got
    names = set(got.names())
    assert not names & (HOP_BY_HOP | {"x-hop", "set-cookie"}), got.headers
    assert got.values("x-end-to-end") == ["kept"]
    assert len(got.values("date")) == 1 and "2001" not in got.values("date")[0], got.headers
    assert_reused(via, origin, path)


# The gateway relays at most this many interims per answer (runtime/README.md,
# "Interim answers of the upstream"); more are read and dropped.
MAX_INTERIMS = 16


def test_at_most_sixteen_interims_are_relayed_then_the_final_answer(via, origin):
    """Twenty 103s before the answer: sixteen relayed (the documented bound),
    the rest read and dropped, the final answer whole and the connection
    pooled (HAProxy relays all twenty)."""
    path = f"/many-interims/{via.proto}"
    hints = b"".join(f"HTTP/1.1 103 Early Hints\r\nLink: </{i}.css>\r\n\r\n".encode() for i in range(20))
    play(origin, path, hints + ok())
    got = via.fetch(path)
    assert got.status == 200 and got.body == b"hello" and got.complete, got
    assert [(s, f) for s, f in got.interims] == [(103, [("link", f"</{i}.css>")]) for i in range(MAX_INTERIMS)]
    assert_reused(via, origin, path)


# ------------------------------------------------------------------ fields of 1xx and 204


INTERIM_EXTRAS = {
    "hop-by-hop": b"Connection: x-hop, keep-alive\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\n"
                  b"Transfer-Encoding: chunked\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n",
    "content-length": b"Content-Length: 5\r\n",
}


@pytest.mark.parametrize("extra", INTERIM_EXTRAS)
def test_an_interim_carries_no_hop_by_hop_field_nor_a_length(via, origin, extra):
    """RFC 9110 §7.6.1 (hop-by-hop, and the names `Connection` lists), §8.6
    (no Content-Length in a 1xx); over HTTP/2 such a field would make the
    informational HEADERS malformed (RFC 9113 §8.2.2). (Both framing fields
    at once in a 103 are a 502, as on any head.)"""
    path = f"/interim-fields/{extra}/{via.proto}"
    hint = (b"HTTP/1.1 103 Early Hints\r\n" + INTERIM_EXTRAS[extra]
            + b"Link: </a.css>; rel=preload\r\nLink: </b.js>; rel=preload\r\n\r\n")
    play(origin, path, hint + ok())
    got = via.fetch(path)
    assert got.status == 200 and got.body == b"hello", got
    assert len(got.interims) == 1, got.interims
    status, fields = got.interims[0]
    assert status == 103
    assert [(n.lower(), v) for n, v in fields] == [("link", "</a.css>; rel=preload"), ("link", "</b.js>; rel=preload")]
    assert_reused(via, origin, path)


@pytest.mark.parametrize("shape", ["length", "length-and-body", "chunked-and-body"])
def test_a_204_reaches_the_client_without_content_length(via, origin, shape):
    """RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204 (HAProxy
    relays it over HTTP/2). A body after a 204 is none: the connection that
    carried it is not reused (RFC 9112 §6.3: a 204 ends at its head)."""
    path = f"/204/{shape}/{via.proto}"
    wire = {
        "length": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "length-and-body": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
        "chunked-and-body": b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    }[shape]
    play(origin, path, wire)
    got = via.fetch(path)
    assert got.status == 204 and got.body == b"" and got.complete, got
    assert not {"content-length", "transfer-encoding"} & set(got.names()), got.headers
    if shape == "length":
        assert_reused(via, origin, path)
    else:
        assert_not_reused(via, origin, path)


# ------------------------------------------------------------------ transfer codings

CODINGS = {
    "gzip-close-delimited": (b"Transfer-Encoding: gzip\r\n\r\nrawgzipbytes", "close"),
    "chunked-then-gzip": (b"Transfer-Encoding: chunked, gzip\r\n\r\nrawgzipbytes", "close"),
    "gzip-then-chunked": (b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "keep"),
    "gzip-and-chunked-lines": (
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "keep"),
    "identity": (b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello", "close"),
}


@pytest.mark.parametrize("coding", CODINGS)
def test_a_transfer_coding_the_gateway_cannot_undo_is_a_502(via, origin, coding):
    """A transfer coding belongs to the hop (RFC 9112 §6.1); the gateway
    decodes only `chunked`, so it cannot re-frame the others (and HTTP/2 has
    no transfer codings at all, RFC 9113 §8.2.2). Relaying the coded bytes
    as the content, as nginx does, gives the client a body the origin never
    meant: 502, and the connection is not reused."""
    path = f"/coding/{coding}/{via.proto}"
    rest, end = CODINGS[coding]
    play(origin, path, b"HTTP/1.1 200 OK\r\n" + rest, end=end)
    got = via.fetch(path)
    assert got.status == 502, got
    assert b"rawgzipbytes" not in got.body and b"hello" not in got.body, got
    assert_not_reused(via, origin, path)


# ------------------------------------------------------------------ status lines


@pytest.mark.parametrize("code", ["000", "099", "20", "1000", "+200"])
def test_a_status_code_that_is_not_three_digits_from_100_is_a_502(via, origin, code):
    """RFC 9112 §4: `status-code = 3DIGIT`; RFC 9110 §15: the first digit is
    1 to 5 for HTTP, 100 the lowest. nginx relays every one of these (over
    HTTP/2 as `:status 000` with the whole upstream answer as DATA)."""
    path = f"/status/{code}/{via.proto}"
    play(origin, path, f"HTTP/1.1 {code} X\r\nContent-Length: 5\r\n\r\nhello".encode())
    got = via.fetch(path)
    assert got.status == 502 and b"hello" not in got.body, got
    assert_not_reused(via, origin, path)


REASONS = {
    "no-reason-no-space": (b"HTTP/1.1 200\r\n", 200),
    "empty-reason": (b"HTTP/1.1 404 \r\n", 404),
    "obs-text-reason": (b"HTTP/1.1 200 \x80\xffok\r\n", 200),
    "tab-in-reason": (b"HTTP/1.1 299 a\tb\r\n", 299),
}


@pytest.mark.parametrize("reason", REASONS)
def test_an_odd_reason_phrase_is_no_reason_to_refuse_the_answer(via, origin, reason):
    """RFC 9112 §4: the reason phrase may be empty and may hold obs-text, and a
    client SHOULD ignore it; the status, fields and body are relayed and the
    connection stays pooled. (A missing SP before an empty reason is
    invalid, but every peer and the gateway read it.)"""
    path = f"/reason/{reason}/{via.proto}"
    line, status = REASONS[reason]
    play(origin, path, line + b"x-kept: 1\r\nContent-Length: 5\r\n\r\nhello")
    got = via.fetch(path)
    assert got.status == status and got.body == b"hello" and got.values("x-kept") == ["1"], got
    assert_reused(via, origin, path)


# ------------------------------------------------------------------ interim, then failure

AFTER_INTERIM = {
    "close": (b"", "close", 502),
    "reset": (b"", "reset", 502),
    "garbage": (b"garbage garbage\r\n\r\n", "close", 502),
    "stall": (b"", "stall", 504),
}


@pytest.mark.parametrize("failure", AFTER_INTERIM)
def test_an_upstream_failing_after_an_interim_still_gets_the_client_a_final_answer(via, origin, failure):
    """An interim is not an answer (RFC 9110 §15.2): after a relayed 103 the
    upstream closes, resets, sends garbage or stalls, and the client gets a
    final 502/504, its stream ended cleanly, not reset (RELIABILITY.md:
    502/504 unless the response had started; HAProxy resets the HTTP/2
    stream with REFUSED_STREAM here)."""
    path = f"/interim-then/{failure}/{via.proto}"
    tail, end, status = AFTER_INTERIM[failure]
    play(origin, path, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + tail, end=end)
    got = via.fetch(path)
    assert [s for s, _ in got.interims] == [103], got
    assert got.status == status and got.complete and got.reset is None, got
    assert_not_reused(via, origin, path)


# ------------------------------------------------------------------ field values


def test_field_values_reach_the_client_without_surrounding_whitespace(via, origin):
    """RFC 9110 §5.5: OWS around a value is not part of it; RFC 9113 §8.2.1:
    an HTTP/2 field value starting or ending with whitespace is malformed."""
    path = f"/ows/{via.proto}"
    play(origin, path, b"HTTP/1.1 200 OK\r\nx-trail: b \t \r\nx-blank:    \r\nx-lead:\t lead\r\n"
                       b"x-inner: a \t b\r\nContent-Length: 5\r\n\r\nhello")
    got = via.fetch(path)
    assert got.status == 200 and got.body == b"hello", got
    values = {n: v for n, v in got.headers if n.startswith("x-")}
    assert values == {"x-trail": "b", "x-blank": "", "x-lead": "lead", "x-inner": "a \t b"}, got.headers


def test_set_cookie_fields_stay_separate_and_in_order(via, origin):
    """RFC 9110 §5.3: Set-Cookie is the field that cannot be joined with
    commas (its `Expires` holds one); RFC 9113 §8.2.3 allows splitting only
    `cookie`. Thirty on a final answer and two on a 103, each its own field."""
    path = f"/cookies/{via.proto}"
    cookies = [f"c{i}=v{i}; Path=/; Expires=Wed, 21 Oct 2037 07:28:{i:02d} GMT" for i in range(30)]
    hint = b"HTTP/1.1 103 Early Hints\r\nSet-Cookie: h1=a, b\r\nSet-Cookie: h2=c\r\n\r\n"
    play(origin, path, hint + ok("".join(f"Set-Cookie: {c}\r\n" for c in cookies)))
    got = via.fetch(path)
    assert got.status == 200 and got.values("set-cookie") == cookies, got.headers
    assert [(n.lower(), v) for n, v in got.interims[0][1]] == [("set-cookie", "h1=a, b"), ("set-cookie", "h2=c")]


# ------------------------------------------------------------------ response head bounds

# docs/spec.md, "Limits": an upstream's response head may have up to 64 KiB and
# 256 fields (the request limits here are the defaults, below both).
HEAD_BYTES = 64 * 1024
HEAD_FIELDS = 256


def _head_of(fields: int = 0, pad_to: int = 0) -> bytes:
    lines = "".join(f"Set-Cookie: c{i}=v\r\n" for i in range(fields - 1))  # + content-length
    head = f"HTTP/1.1 200 OK\r\n{lines}content-length: 5\r\n\r\n"
    if pad_to:
        pad = pad_to - len(head) - len("x-pad: \r\n")
        head = f"HTTP/1.1 200 OK\r\nx-pad: {'p' * pad}\r\n{lines}content-length: 5\r\n\r\n"
        assert len(head) == pad_to
    return head.encode() + b"hello"


HEAD_SIZES = {
    "256-fields": (_head_of(fields=HEAD_FIELDS), 200),
    "257-fields": (_head_of(fields=HEAD_FIELDS + 1), 502),
    "64KiB": (_head_of(fields=1, pad_to=HEAD_BYTES), 200),
    "64KiB+1": (_head_of(fields=1, pad_to=HEAD_BYTES + 1), 502),
}


@pytest.mark.parametrize("size", HEAD_SIZES)
def test_response_heads_at_the_documented_bounds(via, origin, size):
    """At the bound the answer is relayed whole (over HTTP/2 in HEADERS plus
    CONTINUATION frames); one past it, a 502 and the connection closed.
    HAProxy (16 KiB buffers) answers 502 to all four, nginx (4 KiB) to the
    64 KiB ones."""
    path = f"/head/{size}/{via.proto}"
    wire, status = HEAD_SIZES[size]
    play(origin, path, wire)
    got = via.fetch(path)
    assert got.status == status and got.complete, got
    if status == 200:
        assert got.body == b"hello"
        sent = wire[: wire.index(b"\r\n\r\n")].decode().split("\r\n")[1:]
        expected = [ln.split(": ", 1)[1] for ln in sent if ln.startswith("x-pad")]
        assert got.values("x-pad") == expected
        assert len(got.values("set-cookie")) == sum(ln.startswith("Set-Cookie") for ln in sent)
        assert_reused(via, origin, path)
    else:
        assert_not_reused(via, origin, path)


# ------------------------------------------------------------------ answers before the upload is read


def h2_upload(sock: socket.socket, conn, sid: int, path: str, body: bytes,
              after_head: bool = False) -> tuple[Answer, int]:
    """POSTs `body` on stream `sid` within flow control while reading what
    comes back (with `after_head`, the body waits for the response head);
    returns the answer and how many body bytes went out. Ends when the
    stream is reset, or when the body is out and the stream ended."""
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "a.test"), (":path", path),
                            ("content-length", str(len(body)))])
    sock.sendall(conn.data_to_send())
    ans, sent = Answer(), 0
    deadline = time.monotonic() + READ_BOUND
    while time.monotonic() < deadline and ans.reset is None and not (ans.complete and sent == len(body)):
        room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(body) - sent)
        if room > 0 and (ans.status is not None or not after_head):
            conn.send_data(sid, body[sent:sent + room], end_stream=sent + room == len(body))
            sent += room
            sock.sendall(conn.data_to_send())
            continue
        for e in _h2_pump(sock, conn, deadline):
            _h2_note(ans, sid, e)
            if isinstance(e, h2.events.DataReceived):
                conn.acknowledge_received_data(e.flow_controlled_length, sid)
    return ans, sent


def h1_upload(port: int, path: str, body: bytes, after_head: bool = False) -> Answer:
    """POSTs `body` (Content-Length) on a fresh HTTP/1.1 connection, written
    from a thread while the answer is read, as a client that reads as it
    sends does (with `after_head`, once the response head is in)."""
    ans = Answer()
    with RawConn(port, timeout=READ_BOUND) as c:
        c.send(f"POST {path} HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        deadline = time.monotonic() + READ_BOUND
        while after_head and b"\r\n\r\n" not in c.buf:
            c.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                got = c.sock.recv(65536)
            except OSError:
                return ans
            if not got:
                return ans
            c.buf += got
        writer = threading.Thread(target=c.send, args=(body,), daemon=True)
        writer.start()
        try:
            r = c.read_response("POST", timeout=READ_BOUND)
            ans.status, ans.body, ans.complete, ans.headers = r.status, r.body, r.complete, _wire_fields(r.raw_head)
        except (Closed, TimeoutError):
            pass
    return ans


class DuplexOrigin(ThreadPerConnection):
    """An origin that answers before it reads the request body, as RFC 9110
    lets a server: on `/duplex` a 200 head and a first chunk at once, then it
    reads the whole body and ends the answer with a chunk saying how much it
    got; on `/refuse` a 413 with `Connection: close`, reading nothing."""

    def __init__(self):
        self.received: dict[str, int] = {}
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        with c:
            c.settimeout(READ_BOUND)
            try:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, rest = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                                  if ln.lower().startswith(b"content-length:")))
                if path == "/refuse":
                    c.sendall(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbig\n")
                    c.shutdown(socket.SHUT_WR)
                    while c.recv(65536):  # a lingering close: the 413 is not lost to a reset
                        pass
                    return
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                got = len(rest)
                while got < length:
                    d = c.recv(65536)
                    if not d:
                        break
                    got += len(d)
                self.received[path] = got
                tail = f"got {got}".encode()
                c.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
            except OSError:
                return


@pytest.fixture(scope="module")
def duplex():
    o = DuplexOrigin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def duplex_gw(hello_bin, duplex, gateway_logs):
    g = Gateway(hello_bin, duplex.addr, log_dir=gateway_logs, protocols="h1,h2c",
                response_timeout=RESPONSE_TIMEOUT).start()
    yield g
    g.kill()


def _upload_through(gw: Gateway, proto: str, path: str, body: bytes, after_head: bool) -> Answer:
    if proto == "h1":
        return h1_upload(gw.port, path, body, after_head)
    conn = _h2_connection()
    with open_h2(gw.port, None) as sock:
        sock.sendall(conn.data_to_send())
        return h2_upload(sock, conn, 1, path, body, after_head)[0]


UPLOAD = b"u" * 100_000


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_a_2xx_answer_started_before_the_upload_is_read_gets_the_whole_upload(duplex_gw, duplex, proto):
    """RFC 9112 §9.5: a client stops sending the body when the response says
    the server does not want it and is closing; otherwise it goes on. Found
    by this pass: the gateway stopped at the head of any early answer, so an
    origin that answers 200 at once and then reads the upload (full duplex,
    which HAProxy relays) never got it, and the client's answer was cut at
    the response timeout (fixed; tests/runtime/test_full_duplex.py goes
    further). The client sends its body once the head is relayed,
    as a full-duplex client does (a body sent at once reaches the origin
    before its head comes back, and goes through)."""
    got = _upload_through(duplex_gw, proto, "/duplex", UPLOAD, after_head=True)
    assert got.status == 200 and got.complete and got.body == b"first" + f"got {len(UPLOAD)}".encode(), got


@pytest.mark.parametrize("proto", ["h1", "h2c"])
def test_an_early_refusal_before_the_upload_is_read_is_relayed(duplex_gw, duplex, proto):
    """The control: the same origin refusing the upload early (413,
    `Connection: close`) has its answer relayed whole."""
    got = _upload_through(duplex_gw, proto, "/refuse", UPLOAD, after_head=False)
    assert got.status == 413 and got.body == b"big\n" and got.complete, got


# ------------------------------------------------------------------ early answer over HTTP/2


@pytest.mark.parametrize("via", ["h2c", "h2-tls"], indirect=True)
def test_an_early_answer_to_an_http2_upload_ends_the_upload_with_no_error(via, origin):
    """The origin answers 413 with `Connection: close` before reading a 4 MiB
    upload. RFC 9113 §8.1: a server that answers before the request is
    complete MAY ask the client to stop with RST_STREAM(NO_ERROR) after the
    complete answer; the client must learn its upload is over one way or
    another (that, or every byte taken), not be left with a stream whose
    window never opens. The connection serves the next stream."""
    path = "/early-upload"
    early_413 = b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbig\n"
    origin.scripts[path] = Script([early_413], [0], end="close", early=True)
    size = 4 * 1024 * 1024
    conn = _h2_connection()
    with open_h2(via.gw.port, via.tls) as sock:
        sock.sendall(conn.data_to_send())
        ans, sent = h2_upload(sock, conn, 1, path, b"u" * size)
        assert ans.status == 413 and ans.body == b"big\n" and ans.complete, ans
        assert ans.reset == 0 or sent == size, f"upload neither refused with NO_ERROR nor taken: {ans}, sent {sent}"
        # the next stream on the same connection
        after = Answer()
        conn.send_headers(3, [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"),
                              (":path", "/after-early")], end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + READ_BOUND
        while time.monotonic() < deadline and not any(_h2_note(after, 3, e) for e in _h2_pump(sock, conn, deadline)):
            pass
    assert after.status == 200 and after.body == b"GET /after-early\n", after
    assert_not_reused(via, origin, path)
