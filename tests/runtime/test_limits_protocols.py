"""Every `limits` setting at its boundary, over every way a request comes in:
HTTP/1.1 cleartext, HTTP/1.1 over TLS (ALPN `http/1.1`), h2c by prior
knowledge and HTTP/2 over TLS (ALPN `h2`).

SPEC.md's `limits` block and RELIABILITY.md "Resource limits and slow
clients" say what each limit does; test_limits.py and test_reliability_qa.py
check them over cleartext HTTP/1.1, test_h2.py and test_h2_flow.py a few
over HTTP/2. This file checks that each one means the same thing, at the same
byte, field or second, whichever of the four a client uses, so a spec moved
from `h1` to `h1 h2` / `h1 h2c` keeps its meaning:

- the largest request a limit allows is served whole (the origin gets it),
  one unit more is refused (431 / 413 / 408) with nothing forwarded (or, for
  a streamed body, the upstream request aborted on a closed connection);
- afterwards HTTP/1.1 closes the connection (runtime/README.md: every
  rejection closes), HTTP/2 keeps it: the stream is refused, the
  connection's other streams (one in flight, one opened after) are served;
- a refusal on a keep-alive request / second stream is the same as on the
  first.

What "request head bytes" is over HTTP/2 (docs/architecture.md "HTTP/2
downstream", `proxy/http2/translate.rs`): the h2 head is written out as the
HTTP/1.1 head it stands for and that is held to `max-header-bytes` and
`max-headers` exactly as a received one: `{method} {:path} HTTP/1.1\\r\\n`,
`host: {:authority}\\r\\n`, one `name: value\\r\\n` line per field (a repeated
name is a line per value, cookie crumbs are joined into one `cookie` line with
`"; "`), `transfer-encoding: chunked\\r\\n` when a body comes without
content-length, and the empty line; `:scheme` and HPACK's 32-byte overhead
are not counted. So an HTTP/2 request has exactly the size of the same
request sent over HTTP/1.1 (with `Host:`, and `Transfer-Encoding: chunked`
for a body without length), and that is what the boundary tests send. The
`h2` crate checks a looser bound first while decoding (RFC 9113's
accounting: name + value + 32 per field, pseudo-headers and every cookie
crumb included), which must never be the tighter one:
test_head_within_both_limits_is_served_whatever_hpack_counts sends the
shapes where it was. Trailers count toward neither limit: not
body bytes, and a trailer section larger than max-header-bytes is taken
(and dropped) on every way.

Small limits (1024 head bytes, 10 fields, 4096 body bytes) and 1-2 s timeouts;
waits only bound how long a test blocks, no timing is asserted.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import pytest

from support.client import Closed, RawConn
from support.gateway import Gateway, GatewayError
from support.h2client import ENHANCE_YOUR_CALM, NO_ERROR, RawH2
from support.h2streams import Streams, body_of, sha
from support.pki import Pki

AUTHORITY = "edge.test"
HEAD_BYTES = 1024  # --max-header-bytes
HEAD_FIELDS = 10  # --max-headers
BODY_BYTES = 4096  # --max-body-bytes
LIMITS = dict(max_header_bytes=HEAD_BYTES, max_headers=HEAD_FIELDS, max_body_bytes=BODY_BYTES)
# Timeouts far from anything the limit tests do, so only the limit under test fires.
LONG = dict(header_timeout=30, idle_timeout=30, body_timeout=30)

WAYS = ["h1", "h1-tls", "h2c", "h2-tls"]


# ------------------------------------------------------------------ the ways in


@dataclass
class Way:
    """One way in: the listener a gateway needs for it, and how a client
    opens a connection over it."""

    name: str
    pki: Pki

    @property
    def tls(self) -> bool:
        return self.name.endswith("tls")

    @property
    def h2(self) -> bool:
        return self.name.startswith("h2")

    def listener(self) -> dict:
        """hello_gateway flags: cleartext listeners speak `h1 h2c` (the first
        bytes decide), TLS ones `h1 h2` (ALPN decides): one of each serves two
        ways, as a spec's listener would."""
        if self.tls:
            return dict(protocols="h1,h2", tls_cert=self.pki.path("edge.crt"), tls_key=self.pki.path("edge.key"))
        return dict(protocols="h1,h2c")

    def socket(self, g: Gateway, timeout: float = 10) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.tls:
            return sock
        ctx = ssl.create_default_context(cafile=str(self.pki.path("ca.crt")))
        alpn = "h2" if self.h2 else "http/1.1"
        ctx.set_alpn_protocols([alpn])
        sock = ctx.wrap_socket(sock, server_hostname=AUTHORITY)
        assert sock.selected_alpn_protocol() == alpn, sock.selected_alpn_protocol()
        return sock

    def connect(self, g: Gateway) -> "H1Conn | H2Conn":
        sock = self.socket(g)
        return H2Conn(g, sock, self.tls) if self.h2 else H1Conn(sock)

    def raw_h2(self, g: Gateway) -> RawH2:
        """A connection for hand-made HTTP/2 frames (preface and SETTINGS sent)."""
        return RawH2(g.addr, sock=self.socket(g))


@pytest.fixture(params=WAYS)
def way(request, pki) -> Way:
    return Way(request.param, pki)


@pytest.fixture(scope="module")
def _limit_gateways(hello_bin, origin_server, gateway_logs, pki):
    """The two gateways with small limits (a cleartext and a TLS listener),
    started once for the module: the limit tests only send requests."""
    started: dict[bool, Gateway] = {}

    def get(w: Way) -> Gateway:
        g = started.get(w.tls)
        if g is None or not g.alive():
            g = Gateway(hello_bin, origin_server.addr, log_dir=gateway_logs, **LIMITS, **LONG, **w.listener())
            try:
                started[w.tls] = g.start()
            except GatewayError as e:
                pytest.fail(str(e), pytrace=False)
        return g

    yield get
    for g in started.values():
        g.kill()


@pytest.fixture
def limited(_limit_gateways, way, origin) -> Gateway:
    """The small-limits gateway for this test's way (the origin's records
    cleared); the test fails if the gateway died during it."""
    g = _limit_gateways(way)
    yield g
    if not g.alive():
        pytest.fail(f"the gateway died during this test: {g.crashed() or g.tail()}", pytrace=False)


def start_for(start_gateway, w: Way, **opts) -> Gateway:
    return start_gateway(**w.listener(), **opts)


# ------------------------------------------------------------------ requests


@dataclass
class Req:
    path: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    method: str = "GET"
    body: bytes | None = None
    length: bool = True  # content-length; else chunked (HTTP/1.1) or DATA without a length (HTTP/2)
    trailers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Answer:
    status: int | None  # None: no response (the connection closed first)
    body: bytes = b""
    reset: int | None = None  # RST_STREAM code (HTTP/2)


def head_size(path: str, fields, method: str = "GET") -> int:
    """Bytes of the HTTP/1.1 head: request line, Host, one line per field,
    the empty line. Over HTTP/2 the same fields (`:authority` for Host) stand
    for exactly this head."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {AUTHORITY}"] + [f"{n}: {v}" for n, v in fields]
    return sum(len(ln) + 2 for ln in lines) + 2


def fields_at(kind: str, path: str, extra: int = 0) -> list[tuple[str, str]]:
    """Fields for a GET of `path` at its head limit (`extra` = 0) or `extra`
    units over it: `bytes` pads one field to HEAD_BYTES + extra head bytes;
    `fields` and `repeated` make HEAD_FIELDS + extra field lines, Host
    included (distinct names, or one name repeated)."""
    if kind == "bytes":
        pad = HEAD_BYTES + extra - head_size(path, [("x-pad", "")])
        return [("x-pad", "p" * pad)]
    count = HEAD_FIELDS - 1 + extra
    if kind == "fields":
        return [(f"x-f{i}", "v") for i in range(count)]
    return [("x-same", str(i)) for i in range(count)]


def h1_bytes(req: Req) -> bytes:
    lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {AUTHORITY}"] + [f"{n}: {v}" for n, v in req.fields]
    body = b""
    if req.body is not None and req.length:
        lines.append(f"content-length: {len(req.body)}")
        body = req.body
    elif req.body is not None:
        lines.append("transfer-encoding: chunked")
        half = len(req.body) // 2  # two chunks: the limit counts data, not framing
        for part in (req.body[:half], req.body[half:]):
            if part:
                body += b"%x\r\n%s\r\n" % (len(part), part)
        body += b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in req.trailers) + b"\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class H1Conn(RawConn):
    """A raw HTTP/1.1 connection over a given (cleartext or TLS) socket."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        # Not RawConn.__init__, which connects a socket of its own.
        self.sock, self.timeout = sock, timeout
        self.buf, self.eof, self.reset = bytearray(), False, False

    def request(self, req: Req, timeout: float = 10.0) -> Answer:
        self.send(h1_bytes(req))
        return self.answer(req.method, timeout)

    def answer(self, method: str = "GET", timeout: float = 10.0) -> Answer:
        try:
            r = self.read_response(method=method, timeout=timeout)
        except Closed:
            return Answer(None)
        return Answer(r.status, r.body)

    def ended(self, timeout: float = 5.0) -> bool:
        """The gateway closed the connection."""
        return self.wait_closed(timeout)


class H2Conn:
    """An HTTP/2 connection (`Streams`: the `h2` library's client, bodies
    sent as windows allow)."""

    def __init__(self, g: Gateway, sock: socket.socket, tls: bool):
        self.s = Streams(g.addr, sock=sock, scheme="https" if tls else "http")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.s.close()

    def start(self, req: Req) -> int:
        """Opens a stream for `req` (its body sent as the windows allow, then
        its trailers if it has any)."""
        sid = self.s.start(req.path, method=req.method, body=req.body, length=req.length,
                           headers=req.fields, authority=AUTHORITY, end=not req.trailers)
        if req.trailers:
            self.s.run(10, until=lambda: sid not in self.s.bodies or self.done(sid))
            if not self.done(sid):
                self.s.conn.send_headers(sid, req.trailers, end_stream=True)
                self.s.flush()
        return sid

    def done(self, sid: int) -> bool:
        r = self.s.results[sid]
        return r.ended or r.reset is not None

    def wait(self, sid: int, timeout: float = 10.0) -> Answer:
        """The stream's answer: its status once it ended or was reset."""
        r = self.s.run(timeout, until=lambda: self.done(sid))[sid]
        if not self.done(sid):
            raise TimeoutError(f"stream {sid} not answered within {timeout} s: {r}")
        return Answer(r.status, r.head, r.reset)

    def request(self, req: Req, timeout: float = 10.0) -> Answer:
        return self.wait(self.start(req), timeout)

    def ended(self, timeout: float = 5.0) -> bool:
        """The gateway ended the connection (GOAWAY or close)."""
        self.s.run(timeout, until=lambda: self.s.goaway is not None)
        return self.s.goaway is not None or self.s.closed


def forwarded(origin, path: str) -> list:
    return [q for q in origin.requests if q.path == path]


def assert_never_forwarded(origin, path: str) -> None:
    """No byte of a request for `path` reached the origin (checked after a
    later request was answered, so it would be there by now)."""
    origin.wait_for(lambda: path.encode() in origin.raw_since_reset(), 0.3)
    assert path.encode() not in origin.raw_since_reset(), f"{path} was forwarded: {forwarded(origin, path)}"


def assert_fields_arrived(origin, path: str, fields) -> None:
    """The origin got the request for `path` with every field sent, whole
    and in order (among the ones the gateway adds)."""
    [q] = forwarded(origin, path)
    names = {n for n, _ in fields}
    got = [(n.decode(), v.decode()) for n, v in q.headers if n.decode().lower() in names]
    assert got == list(fields), f"the origin did not get every field whole: {q!r}"


def assert_upstream_aborted(origin, path: str) -> None:
    """A refused streamed body: the upstream request for `path`, if it had
    started, never completed (no last chunk) and its connection is closed."""
    for q in forwarded(origin, path):
        assert not q.complete, f"upstream request completed despite the refusal: {q!r}"
        up = origin.conn(q.conn_id)
        assert origin.wait_for(lambda: up.closed or up.peer_closed, 10), f"upstream connection kept: {q!r}"


def assert_state_after_refusal(w: Way, conn, g: Gateway, origin, probe: Req, what: str) -> None:
    """HTTP/1.1: the connection was closed (bytes after a refused request are
    never read). HTTP/2: the refusal was the stream's alone: no GOAWAY, and a
    stream opened after it on the same connection is served. `probe` (a
    request the limits allow) then goes on a fresh HTTP/1.1 connection or
    on the same HTTP/2 one."""
    if w.h2:
        a = conn.request(probe)
        assert a.status == 200, f"{what}: the next stream on the connection got {a}"
        assert conn.s.goaway is None and not conn.s.closed, f"{what}: GOAWAY {conn.s.goaway} after a stream's refusal"
    else:
        assert conn.ended(), f"{what}: HTTP/1.1 connection left open after the refusal"
        with w.connect(g) as fresh:
            assert fresh.request(probe).status == 200, what
    assert forwarded(origin, probe.path), f"{what}: the probe request did not reach the origin"


# ------------------------------------------------------------------ head limits


@pytest.mark.parametrize("position", ["first", "second"])
@pytest.mark.parametrize("kind", ["bytes", "fields", "repeated"])
def test_head_limit_boundary(way, limited, origin, kind, position):
    """max-header-bytes (request line to the empty line) and max-headers
    (field lines, Host / `:authority` included; a name repeated N times is N
    lines): a head exactly at the limit is served whole, one byte / one field
    more is 431 with nothing forwarded, on the first request of a connection
    and on a keep-alive request / second stream alike."""
    at, over = f"/{kind}-at-limit", f"/{kind}-over-limit"
    with way.connect(limited) as conn:
        if position == "second":
            a = conn.request(Req(at, fields_at(kind, at)))
            assert a.status == 200, a
            assert_fields_arrived(origin, at, fields_at(kind, at))
        a = conn.request(Req(over, fields_at(kind, over, extra=1)))
        assert a.status == 431, f"{way.name}: {kind} one over the limit ({position} request): {a}"
        after = at + "-after"
        assert_state_after_refusal(way, conn, limited, origin, Req(after, fields_at(kind, after)), f"{way.name} {kind}")
    assert_fields_arrived(origin, after, fields_at(kind, after))
    assert_never_forwarded(origin, over)


def test_cookie_crumbs_are_one_field(way, limited, origin):
    """RFC 9113 §8.2.3: HTTP/2 may split `cookie` into crumbs, which are
    joined with "; " into the one field they stand for (and so counted once
    by max-headers). 16 crumbs beside 8 other fields and `:authority` are 10
    field lines: served, the origin gets one `cookie` line. Over HTTP/1.1
    the same request sends the joined line itself."""
    crumbs = [f"c{i:02d}=1" for i in range(16)]
    others = [(f"x-f{i}", "v") for i in range(HEAD_FIELDS - 2)]
    if way.h2:
        fields = [("cookie", c) for c in crumbs] + others
    else:
        fields = [("cookie", "; ".join(crumbs))] + others
    with way.connect(limited) as conn:
        a = conn.request(Req("/crumbs", fields))
    assert a.status == 200, a
    [q] = forwarded(origin, "/crumbs")
    assert q.header("cookie") == ["; ".join(crumbs)], q
    # and the joined line is one of the 10: one more field is over
    with way.connect(limited) as conn:
        a = conn.request(Req("/crumbs-over", fields + [("x-one-more", "v")]))
    assert a.status == 431, a
    assert_never_forwarded(origin, "/crumbs-over")


@pytest.mark.parametrize("shape", ["sixty-crumbs", "both-limits-at-once"])
@pytest.mark.parametrize("way_name", WAYS)
def test_head_within_both_limits_is_served_whatever_hpack_counts(_limit_gateways, pki, origin, way_name, shape):
    """A head within max-header-bytes and max-headers is served over HTTP/2
    as over HTTP/1.1, however the `h2` crate's HPACK accounting counts it.
    RFC 9113 counts 32 bytes more per field where HTTP/1.1 counts 4 (": "
    and CRLF), the four pseudo-headers too, and every cookie crumb where
    HTTP/1.1 has one line joined with "; ":
    - 60 cookie crumbs (one field once joined, a 541-byte head): 3056
      bytes to HPACK;
    - a head of exactly 1024 bytes with 10 fields: 1415 to HPACK.
    Both were over the crate's first bound (max-header-bytes + 32 x
    max-headers = 1344), which answered 431 itself before the exact check
    ran; the bound is now the worst case of a head that passes
    (`http2::max_header_list_size`)."""
    w = Way(way_name, pki)
    g = _limit_gateways(w)
    if shape == "sixty-crumbs":
        crumbs = [f"c{i:02d}=1" for i in range(60)]
        fields = [("cookie", c) for c in crumbs] if w.h2 else [("cookie", "; ".join(crumbs))]
        path = "/sixty-crumbs"
    else:
        path = "/both-limits"
        fields = [(f"x-f{i}", "v") for i in range(HEAD_FIELDS - 2)]
        fields.append(("x-pad", "p" * (HEAD_BYTES - head_size(path, fields + [("x-pad", "")]))))
        assert head_size(path, fields) == HEAD_BYTES and len(fields) + 1 == HEAD_FIELDS
    with w.connect(g) as conn:
        a = conn.request(Req(path, fields))
    assert g.alive(), g.crashed()
    assert a.status == 200, f"{way_name}: {shape}: {a}"
    assert forwarded(origin, path)


@pytest.mark.parametrize("kind", ["bytes", "fields"])
def test_a_body_without_length_counts_its_chunked_framing(way, limited, origin, kind):
    """The head of an upload without a length carries `transfer-encoding:
    chunked`, and that line counts: over HTTP/1.1 the client sends it, over
    HTTP/2 the head the request stands for has it (translate.rs), so the
    same upload is held to the same limit both ways. A POST whose head,
    that line included, is exactly at max-header-bytes / max-headers is
    served; one byte / field more is 431. (Over HTTP/2 the client never
    sent those 28 bytes and that field: its HEADERS frame alone, with
    END_STREAM or content-length, would have been within the limit.)"""
    te = [("transfer-encoding", "chunked")]

    def fields(path: str, extra: int) -> list[tuple[str, str]]:
        if kind == "bytes":
            pad = HEAD_BYTES + extra - head_size(path, [("x-pad", "")] + te, method="POST")
            return [("x-pad", "p" * pad)]
        return [(f"x-f{i}", "v") for i in range(HEAD_FIELDS - 2 + extra)]

    body = b"b" * 100
    with way.connect(limited) as conn:
        a = conn.request(Req("/te-at", fields("/te-at", 0), method="POST", body=body, length=False))
        assert a.status == 200, a
    with way.connect(limited) as conn:
        a = conn.request(Req("/te-over", fields("/te-over", 1), method="POST", body=body, length=False))
        assert a.status == 431, a
    assert forwarded(origin, "/te-at")[0].body_len == len(body)
    assert_never_forwarded(origin, "/te-over")


# ------------------------------------------------------------------ body limit


@pytest.mark.parametrize("framing", ["content-length", "streamed", "streamed-with-trailers"])
def test_body_limit_boundary(way, limited, origin, framing):
    """max-body-bytes, declared by content-length or streamed without it
    (chunked over HTTP/1.1, DATA frames without content-length over HTTP/2;
    the framing and trailers are not body bytes, and trailers larger than
    max-header-bytes are not a 431 either): a body of exactly the
    limit reaches the origin whole; one byte more is 413 - declared, with
    nothing forwarded; streamed, with the upstream request aborted. The
    413 comes on a keep-alive request / second stream, and over HTTP/2 a
    stream in flight beside it and one opened after it are served."""
    length = framing == "content-length"
    # A trailer section larger than a request head may be: not held to the head limits either.
    trailers = [("x-checksum", "c" * (HEAD_BYTES + 500))] if framing.endswith("trailers") else []
    at_body, over_body = body_of(BODY_BYTES, 1), body_of(BODY_BYTES + 1, 2)
    with way.connect(limited) as conn:
        a = conn.request(Req("/sink/at", method="POST", body=at_body, length=length, trailers=trailers))
        assert a.status == 200 and a.body.split() == [str(BODY_BYTES).encode(), sha(at_body).encode()], a
        [q] = forwarded(origin, "/sink/at")
        assert q.framing == ("content-length" if length else "chunked") and q.complete, q
        bystander = conn.start(Req("/slow?delay=1")) if way.h2 else None
        over = Req("/sink/over", method="POST", body=over_body, length=length, trailers=trailers)
        a = conn.request(over)
        assert a.status == 413, f"{way.name}: {framing} body one byte over the limit: {a}"
        if bystander is not None:
            b = conn.wait(bystander)
            assert b.status == 200 and b.body == b"GET /slow?delay=1\n", f"the stream beside the 413: {b}"
        assert_state_after_refusal(way, conn, limited, origin, Req("/after-413"), f"{way.name} {framing}")
    if length:
        assert_never_forwarded(origin, "/sink/over")
    else:
        assert_upstream_aborted(origin, "/sink/over")


# ------------------------------------------------------------------ header-timeout


@pytest.mark.parametrize("position", ["first", "second"])
def test_header_timeout_cuts_a_head_that_stops(way, start_gateway, origin, position):
    """header-timeout, "the whole request head must arrive within this": a
    head that stops half-way (HTTP/1.1: no empty line; HTTP/2: HEADERS
    without END_HEADERS) is ended at that timeout, on a new connection and
    on one that was served before. HTTP/1.1: 408 or a close; HTTP/2 (the
    connection can carry nothing else while a header block is open): GOAWAY
    (ENHANCE_YOUR_CALM, docs/architecture.md), then the close. Nothing is
    forwarded."""
    g = start_for(start_gateway, way, header_timeout=1, idle_timeout=30, body_timeout=30)
    if way.h2:
        with way.raw_h2(g) as raw:
            if position == "second":
                raw.headers(1, path="/served", authority=AUTHORITY)
                raw.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended)
                assert raw.seen.status(1) == 200, raw.seen
            # The server's SETTINGS read (and acknowledged) first: no frame of
            # ours may come between HEADERS and its CONTINUATION.
            raw.read_frames(time.monotonic() + 10, stop=lambda s: s.settings > 0)
            sid = 3 if position == "second" else 1
            # HEADERS without END_HEADERS: its CONTINUATION never comes.
            raw.headers(sid, path="/never", authority=AUTHORITY, end_headers=False, extra=[("x-a", "1")])
            seen = raw.read_frames(time.monotonic() + 10, stop=lambda s: s.closed)
        assert seen.goaway == ENHANCE_YOUR_CALM and seen.closed, seen
    else:
        with way.connect(g) as conn:
            if position == "second":
                assert conn.request(Req("/served")).status == 200
            conn.send(f"GET /never HTTP/1.1\r\nHost: {AUTHORITY}\r\nX-A: 1\r\n".encode())  # no empty line
            a = conn.answer(timeout=10)
            assert a.status in (408, None), a
            assert conn.ended(), "HTTP/1.1 connection left open after the header timeout"
    assert_never_forwarded(origin, "/never")


def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl, through memory BIOs)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=AUTHORITY)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_header_timeout_bounds_an_opening_that_never_completes(way, start_gateway, origin):
    """The connection's opening is held to header-timeout too (docs/spec.md
    section 5: "the handshake must finish within header-timeout";
    architecture.md: "preface + SETTINGS within header-timeout"), each way
    stopping at another step: HTTP/1.1 sends nothing at all; HTTP/1.1 over
    TLS half a ClientHello; h2c the preface without the SETTINGS frame that
    must follow it; h2 over TLS a whole handshake (ALPN `h2`), then no
    preface. The gateway closes the connection at that timeout, having
    answered no request."""
    g = start_for(start_gateway, way, header_timeout=1, idle_timeout=30, body_timeout=30)
    if way.name == "h2-tls":
        sock = way.socket(g)
    else:
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        if way.tls:
            hello = client_hello()
            sock.sendall(hello[: len(hello) // 2])
        elif way.h2:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    got, closed, deadline = b"", False, time.monotonic() + 10
    with sock:
        while time.monotonic() < deadline and not closed:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                break
            except OSError:  # a reset, or a TLS stream cut without close_notify
                closed = True
                break
            closed = not data
            got += data
    assert closed, f"{way.name}: connection still open 10 s past a 1 s header-timeout"
    assert b"HTTP/" not in got, got[:200]


# ------------------------------------------------------------------ idle-timeout


def test_idle_timeout_closes_only_a_connection_without_a_request(way, start_gateway, origin):
    """idle-timeout, "a keep-alive connection with no request is closed
    after this": a request in flight longer than it (an upstream answering
    after 1.5 s with a 1 s idle-timeout) is served, and once answered the
    quiet connection is ended: HTTP/1.1 closes it, HTTP/2 sends GOAWAY
    (NO_ERROR) and closes. Over HTTP/2, a connection opened beside it that
    never opens a stream is idle too (architecture.md: "no stream in flight
    and none opened for idle-timeout"), whatever header-timeout is (30 s
    here); over HTTP/1.1 that one is header-timeout's (the first request's
    head is awaited from the accept)."""
    g = start_for(start_gateway, way, idle_timeout=1, header_timeout=30, body_timeout=30)
    quiet = way.connect(g) if way.h2 else None
    with way.connect(g) as conn:
        a = conn.request(Req("/slow?delay=1.5"))
        assert a.status == 200 and a.body.startswith(b"GET /slow"), a
        assert conn.ended(10), f"{way.name}: still open 10 s past a 1 s idle-timeout"
        if way.h2:
            assert conn.s.goaway == NO_ERROR, conn.s.goaway
            conn.s.run(10, until=lambda: conn.s.closed)
            assert conn.s.closed, "GOAWAY sent but the idle connection not closed"
    if quiet is not None:
        with quiet:
            assert quiet.ended(10) and quiet.s.goaway == NO_ERROR, f"no GOAWAY(NO_ERROR): {quiet.s.goaway}"
            quiet.s.run(10, until=lambda: quiet.s.closed)
            assert quiet.s.closed, "GOAWAY sent but the connection that opened no stream not closed"


# ------------------------------------------------------------------ body-timeout


@pytest.mark.timeout(60, func_only=True)
def test_body_timeout_ends_a_paused_upload_only(way, start_gateway, origin):
    """body-timeout, "the longest gap between body bytes": uploads that
    pause longer (one with content-length, one streamed without it, both
    stopping after 100 bytes) get 408 (or a close / reset) with their
    upstream requests aborted; an upload whose pauses are shorter (0.3 s
    against 2 s) is served whole. Over HTTP/2 the three are streams of one
    connection: the 408s are theirs alone, the slow upload and a stream
    opened after are served."""
    g = start_for(start_gateway, way, body_timeout=2, header_timeout=30, idle_timeout=30)
    steady = body_of(3000, 7)
    if way.h2:
        with way.connect(g) as conn:
            s = conn.s
            declared = s.start("/sink/declared", method="POST", body=b"x" * 100, length=False,
                               headers=[("content-length", "1000")], authority=AUTHORITY, end=False)
            streamed = s.start("/sink/streamed", method="POST", body=b"x" * 100, length=False,
                               authority=AUTHORITY, end=False)
            slow = s.start("/sink/steady", method="POST", body=b"", length=False, authority=AUTHORITY, end=False)
            for i in range(0, len(steady), 500):
                s.conn.send_data(slow, steady[i:i + 500], end_stream=i + 500 >= len(steady))
                s.flush()
                s.run(0.3, until=lambda: False)
            for sid in (declared, streamed):
                a = conn.wait(sid, 15)
                assert a.status == 408 or a.reset is not None, f"paused upload {sid}: {a}"
            a = conn.wait(slow, 15)
            assert a.status == 200 and a.body.split() == [b"3000", sha(steady).encode()], a
            assert_state_after_refusal(way, conn, g, origin, Req("/after-408"), way.name)
    else:
        paused = []
        for path, framing in (("/sink/declared", b"content-length: 1000"), ("/sink/streamed",
                                                                            b"transfer-encoding: chunked")):
            c = way.connect(g)
            data = b"x" * 100 if b"length" in framing else b"64\r\n" + b"x" * 100 + b"\r\n"
            c.send(b"POST %s HTTP/1.1\r\nHost: %s\r\n%s\r\n\r\n%s" % (path.encode(), AUTHORITY.encode(), framing,
                                                                     data))
            paused.append(c)
        with way.connect(g) as c:
            c.send(b"POST /sink/steady HTTP/1.1\r\nHost: %s\r\ncontent-length: %d\r\n\r\n" % (AUTHORITY.encode(),
                                                                                             len(steady)))
            for i in range(0, len(steady), 500):
                c.send(steady[i:i + 500])
                time.sleep(0.3)
            a = c.answer(method="POST", timeout=10)
            assert a.status == 200 and a.body.split() == [b"3000", sha(steady).encode()], a
        for c in paused:
            with c:
                a = c.answer(timeout=15)
                assert a.status in (408, None), a
                assert c.ended(), "HTTP/1.1 connection left open after the body timeout"
    for path in ("/sink/declared", "/sink/streamed"):
        assert origin.wait_for(lambda: forwarded(origin, path), 5), f"{path} never reached the origin"
        assert_upstream_aborted(origin, path)
