"""RELIABILITY.md item by item, over the ways in its first tests did not take
(a QA pass: "protocol matrix").

Most RELIABILITY.md items were first tested over cleartext HTTP/1.1
(test_framing.py, test_limits.py, test_upstream_faults.py). Many have been
carried over since: the limits, header/body/idle timeouts and slow openings
over all four ways (test_limits_protocols.py), slow clients and memory over
TLS and HTTP/2 (test_memory_protocols_qa.py), the HTTP/2 attacks over h2c and
TLS (test_h2.py, test_h2_flow.py, test_tls_h2_qa.py), upstream faults from
every client at random (test_random_origin.py) and pinned for h2c/h2-TLS
(test_differential_responses_qa.py, test_h2_flow.py). What was left, and is
here:

- "HTTP/1.1 framing" over HTTP/1.1 on TLS. RFC 9112 framing does not depend
  on the transport, so every request-smuggling shape of test_framing.py (CL
  with TE, bad or duplicate Content-Length, bad Transfer-Encoding, TE on
  HTTP/1.0, header syntax with obs-fold, Host, request targets) is sent over
  TLS and over cleartext: the TLS answer must be the cleartext one, a
  rejection with the connection closed, and nothing may reach the origin.
  Invalid chunk framing over TLS aborts the upstream request, never completes
  it, and its upstream connection is not reused. Pipelines over TLS (one
  record, and one record per byte so a head spans records) are answered in
  order; bytes after a rejected request are never parsed; a body that looks
  like a request stays a body.
- hop-by-hop fields: over TLS HTTP/1.1 the origin gets the same field list
  as over cleartext (only `x-forwarded-proto` differs); over h2c and h2-TLS
  the request fields RELIABILITY.md calls hop-by-hop that RFC 9113 does NOT
  make malformed (`proxy-authorization`, other `proxy-*`, `trailer`; the
  connection-specific ones are test_h2.py's) never reach the upstream.
- "Upgrades and faults" from an HTTP/1.1-over-TLS client, pinned: an upstream
  that resets or answers garbage before its head gives 502, one silent past
  `response` 504, one cut mid-body a visibly short body and a closed
  connection; never a hang, and the next request never rides the broken
  upstream connection.
- "Resource limits and slow clients" over h2c at scale: a wave of h2c clients
  that stop in the preface or inside a HEADERS block (test_memory_protocols_qa
  runs such waves over TLS only), all ended at header-timeout with nothing
  forwarded, while h2c and HTTP/1.1 bystanders keep being served; memory and
  descriptors come back.
- "Memory stays bounded under any input" over TLS HTTP/1.1: test_limits.py's
  never-ending elements (request line, header line(s), empty lines, chunk
  extension, trailers) cut with 400/414/431 in bounded RSS; a pipeline never
  read (cleartext and TLS) held in bounded memory.
- header-timeout for the NEXT head of a keep-alive connection sent inside an
  unfinished TLS record (half a record, or trickled a byte at a time), over
  HTTP/1.1 and HTTP/2 on TLS, with cleartext controls. The gateway waited
  until idle-timeout (fixed since: a record begun and not finished while the
  connection waits for a request is held to header-timeout); a TLS client's
  first head was timed right (test_memory_protocols_qa.py).

Waits only bound how long a test blocks; the header-timeout tests tell which
of two timers (2 s and 6 s) ended a connection by reading for 4.5 s.
"""

from __future__ import annotations

import os
import socket
import ssl
import time

import hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame
from support.asserts import assert_clean_forward
from support.client import Closed, RawConn
from support.gateway import Gateway, GatewayError, settled_fd_count
from support.h2client import PREFACE, H2Client, RawH2
from support.waits import wait_until
from test_framing import (
    BAD_CHUNKS,
    BAD_CL,
    BAD_HEADER,
    BAD_HOSTS,
    BAD_TARGETS,
    BAD_TE,
    CHUNKED_HELLO,
    CL_TE,
    HOP_REQUEST_FIELDS,
    INNER_CHUNK_BODY,
    REQUESTS_IN_BODIES,
    SMUGGLED,
    head,
)
from test_limits import RssSampler, _flood_cases

AUTHORITY = "edge.test"
SENTINEL = "/__matrix-sentinel"


# ------------------------------------------------------------------ gateways and connections


@pytest.fixture(scope="module")
def gateways(hello_bin, origin_server, gateway_logs, pki):
    """One cleartext (`h1,h2c`) and one TLS (`h1,h2`, ALPN decides) gateway
    with default limits, shared by the tests that only send requests."""
    started: dict[str, Gateway] = {}

    def get(kind: str) -> Gateway:
        g = started.get(kind)
        if g is None or not g.alive():
            listener = (
                {"protocols": "h1,h2", "tls_cert": pki.path("edge.crt"), "tls_key": pki.path("edge.key")}
                if kind == "tls"
                else {"protocols": "h1,h2c"}
            )
            g = Gateway(hello_bin, origin_server.addr, log_dir=gateway_logs, **listener)
            try:
                started[kind] = g.start()
            except GatewayError as e:
                pytest.fail(str(e), pytrace=False)
        return g

    yield get
    crashed = [c for c in (g.crashed() for g in started.values()) if c]
    for g in started.values():
        g.kill()
    assert not crashed, f"a gateway died: {crashed}"


def tls_socket(g: Gateway, pki, alpn: str, timeout: float = 10) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", g.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    ctx.set_alpn_protocols([alpn])
    tls = ctx.wrap_socket(sock, server_hostname=AUTHORITY)
    assert tls.selected_alpn_protocol() == alpn, tls.selected_alpn_protocol()
    return tls


def h1_conn(gateways, pki, tls: bool) -> RawConn:
    """A raw HTTP/1.1 connection to the cleartext or the TLS gateway."""
    if tls:
        return RawConn(sock=tls_socket(gateways("tls"), pki, "http/1.1"))
    return RawConn(gateways("clear").port)


def answers(c: RawConn, data: bytes | list[bytes], quiet: float = 2.0, limit: float = 10.0) -> tuple[list, bool]:
    """Write data (a list: one write, so one TLS record, each) and read every
    response until the gateway closes or goes quiet: (responses, closed)."""
    for piece in data if isinstance(data, list) else [data]:
        if not c.send(piece):
            break
    out, deadline = [], time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            r = c.read_response(timeout=quiet)
        except (Closed, TimeoutError, ValueError):
            break
        out.append(r)
        if r.status >= 200 and not r.complete:
            break
    closed = c.eof or c.wait_closed(0.5)
    return out, closed


def verdict(responses: list, closed: bool) -> tuple:
    """What a client can tell of how a request was answered: the final
    statuses in order, and whether the connection was closed after them."""
    return tuple(r.status for r in responses if r.status >= 200), closed


def upstream_conn_closed(origin, req, timeout: float = 5) -> bool:
    """The upstream connection that carried req ends (either side) within timeout."""
    conn = origin.conn(req.conn_id)
    return origin.wait_for(lambda: conn.closed or conn.peer_closed, timeout)


def only_sentinel_reached_origin(gateways, pki, origin, what: str) -> None:
    """A good request over TLS; once the origin has it, anything the gateway
    had forwarded for the refused requests before it would be there too."""
    with h1_conn(gateways, pki, tls=True) as c:
        c.send(head("GET", SENTINEL, ["Host: a.test", "Connection: close"]))
        assert c.read_response().status == 200
    assert origin.wait_for(lambda: any(r.target == SENTINEL for r in origin.requests), 5)
    others = [r for r in origin.requests if r.target != SENTINEL]
    assert not others, f"{what}: the origin received {others!r}"


# ------------------------------------------------------------------ HTTP/1.1 framing over TLS

# Every request-smuggling shape of test_framing.py, built as it builds them.
SMUGGLING_SHAPES = {
    **{f"cl+te/{k}": v for k, v in CL_TE.items()},
    **{f"cl/{k}": head(headers=[b"Host: a.test", *v]) + b"hello" + SMUGGLED for k, v in BAD_CL.items()},
    **{f"te/{k}": head(headers=[b"Host: a.test", *v]) + CHUNKED_HELLO + SMUGGLED for k, v in BAD_TE.items()},
    "te/on-http-1.0": head(headers=("Host: a.test", "Transfer-Encoding: chunked"), version="HTTP/1.0")
    + CHUNKED_HELLO
    + SMUGGLED,
    **{f"field/{k}": head("GET", "/x", [b"Host: a.test", *v]) + SMUGGLED for k, v in BAD_HEADER.items()},
    "field/first-line-starts-with-space": b"GET /x HTTP/1.1\r\n Host: a.test\r\nHost: a.test\r\n\r\n" + SMUGGLED,
    "host/missing": head("GET", "/x", ()) + SMUGGLED,
    "host/two-different": head("GET", "/x", ["Host: a.test", "Host: b.test"]) + SMUGGLED,
    "host/two-identical": head("GET", "/x", ["Host: a.test", "Host: a.test"]) + SMUGGLED,
    **{f"host/{h}": head("GET", "/x", [f"Host: {h}"]) + SMUGGLED for h in BAD_HOSTS},
    **{f"target/{k}": v + b"\r\nHost: a.test\r\n\r\n" + SMUGGLED for k, v in BAD_TARGETS.items()},
}


@pytest.mark.parametrize("family", ["cl+te", "cl", "te", "field", "host", "target"])
def test_smuggling_shapes_over_tls_get_the_cleartext_answer(gateways, pki, origin, family):
    """RFC 9112 framing is the same whatever carries it: over TLS each shape
    is refused exactly as over cleartext (same status, connection closed, the
    request behind it never answered) and nothing reaches the origin."""
    shapes = {k: v for k, v in SMUGGLING_SHAPES.items() if k.startswith(family + "/")}
    differ, accepted = [], []
    for name, data in shapes.items():
        seen = {}
        for tls in (False, True):
            with h1_conn(gateways, pki, tls) as c:
                seen[tls] = verdict(*answers(c, data))
        statuses, closed = seen[True]
        if seen[True] != seen[False]:
            differ.append((name, seen[False], seen[True]))
        if len(statuses) != 1 or statuses[0] < 400 or not closed:
            accepted.append((name, seen[True]))
    assert not differ, f"TLS answers differ from cleartext ((statuses, closed) clear vs TLS): {differ}"
    assert not accepted, f"not one refusal then close over TLS: {accepted}"
    only_sentinel_reached_origin(gateways, pki, origin, family)


@pytest.mark.parametrize("name", list(BAD_CHUNKS))
def test_invalid_chunk_framing_over_tls_aborts_the_upstream_request(gateways, pki, origin, name):
    """Invalid chunk framing over TLS: 400 or a close (as over cleartext), the
    upstream request never completed nor the bad framing relayed, its upstream
    connection closed, and the next request on another upstream connection."""
    data = head(target="/chunk-abort", headers=("Host: a.test", "Transfer-Encoding: chunked")) + BAD_CHUNKS[name]
    with h1_conn(gateways, pki, tls=True) as c:
        statuses, closed = verdict(*answers(c, data + SMUGGLED))
    assert closed and statuses in ((), (400,)), (name, statuses, closed)
    assert not [r for r in origin.requests if "smuggled" in r.target], origin.requests
    aborted = [r for r in origin.requests if r.path == "/chunk-abort"]
    for r in aborted:
        assert upstream_conn_closed(origin, r), f"{name}: upstream connection kept: {r!r}"
        assert not r.complete, f"{name}: the origin got a complete request: {r!r}"
        assert "bad chunk" not in (r.body_error or ""), f"{name}: bad framing relayed as is: {r.body_error}"
    with h1_conn(gateways, pki, tls=True) as c:
        c.send(head("GET", "/after-abort", ["Host: a.test", "Connection: close"]))
        assert c.read_response().status == 200
    [after] = [q for q in origin.wait_requests(len(aborted) + 1) if q.target == "/after-abort"]
    assert after.conn_id not in {a.conn_id for a in aborted}, "the next request rode the aborted connection"


def pipeline() -> bytes:
    """Three requests (the first slow at the origin, the second with a body)
    and what each must be answered with, in order."""
    return (
        head("GET", "/slow?delay=0.3&n=1", ["Host: a.test"])
        + head("POST", "/echo", ["Host: a.test", "Content-Length: 3"])
        + b"two"
        + head("GET", "/third", ["Host: a.test", "Connection: close"])
    )


PIPELINE_BODIES = [b"GET /slow?delay=0.3&n=1\n", b"two", b"GET /third\n"]


@pytest.mark.parametrize("records", ["one-record", "one-record-per-byte"])
def test_pipelined_requests_over_tls_are_answered_in_order(gateways, pki, origin, records):
    """Pipelined requests in one TLS record, and in one record per byte (every
    head and the body span records): each answered, in request order."""
    data = pipeline()
    pieces = [data] if records == "one-record" else [data[i : i + 1] for i in range(len(data))]
    with h1_conn(gateways, pki, tls=True) as c:
        rs, closed = answers(c, pieces)
    assert [(r.status, r.body) for r in rs] == [(200, b) for b in PIPELINE_BODIES], rs
    assert closed, "Connection: close on the last request"
    for q in origin.wait_requests(3, complete=True):
        assert_clean_forward(q)


def test_bytes_after_a_refused_request_over_tls_are_never_parsed(gateways, pki, origin):
    """A good request, a bad one and a request behind it in one TLS record:
    200, 400, closed; only the first reaches the origin."""
    data = head("GET", "/ok1", ["Host: a.test"]) + head("GET", "/bad", ["Host: a.test", "Content-Length: -1"]) + SMUGGLED
    with h1_conn(gateways, pki, tls=True) as c:
        assert verdict(*answers(c, data)) == ((200, 400), True)
    time.sleep(0.3)  # a request forwarded after the 400 would have arrived by now
    assert [r.target for r in origin.requests] == ["/ok1"], origin.requests


def test_a_body_that_looks_like_requests_stays_a_body_over_tls(gateways, pki, origin):
    """Content-Length and chunked bodies whose bytes are requests are echoed
    as bodies; the origin gets the three requests sent, never the inner one."""
    inner, chunk_body = SMUGGLED, INNER_CHUNK_BODY
    with h1_conn(gateways, pki, tls=True) as c:
        rs, _ = answers(c, REQUESTS_IN_BODIES)
    assert [(r.status, r.body) for r in rs] == [(200, inner), (200, chunk_body), (200, b"GET /last\n")], rs
    reqs = origin.wait_requests(3, complete=True)
    assert [q.path for q in reqs] == ["/echo", "/echo", "/last"], reqs


# ------------------------------------------------------------------ hop-by-hop fields


def test_hop_by_hop_fields_over_tls_are_dropped_as_over_cleartext(gateways, pki, origin):
    """The same request over cleartext and TLS: the origin gets the same
    fields in the same order, none of them hop-by-hop; only
    `x-forwarded-proto` (and the generated request id) tell them apart."""
    seen = {}
    for tls in (False, True):
        origin.reset()
        with h1_conn(gateways, pki, tls) as c:
            c.send(head("GET", "/hop", ["Host: a.test", *HOP_REQUEST_FIELDS]))
            assert c.read_response().status == 200
        [req] = origin.wait_requests(1, complete=True)
        assert_clean_forward(req)
        assert not req.header("x-private") and req.header("x-end-to-end") == ["kept"], req
        seen[tls] = req
    assert seen[False].header_names() == seen[True].header_names(), (seen[False], seen[True])
    assert (seen[False].header("x-forwarded-proto"), seen[True].header("x-forwarded-proto")) == (["http"], ["https"])


@pytest.mark.parametrize("transport", ["h2c", "h2-tls"])
def test_hop_by_hop_fields_rfc9113_allows_never_reach_the_upstream(gateways, pki, origin, transport):
    """RFC 9113 §8.2.2 makes only connection-specific fields malformed;
    `proxy-authorization`, other `proxy-*` and `trailer` are well-formed
    HTTP/2 fields, but RELIABILITY.md lists them as hop-by-hop: the HTTP/1.1
    request the gateway writes never carries them (with or without a body
    and trailers), while end-to-end fields pass."""
    hop = [("proxy-authorization", "Basic Zm9vOmJhcg=="), ("proxy-foo", "1"), ("trailer", "x-checksum")]
    g = gateways("tls" if transport == "h2-tls" else "clear")
    sock = tls_socket(g, pki, "h2") if transport == "h2-tls" else None
    scheme = "https" if sock else "http"
    with RawH2(g.addr, sock=sock) as c:
        c.headers(1, block=c.block("GET", "/hop-get", scheme=scheme, extra=[*hop, ("x-end-to-end", "kept")]))
        c.headers(3, block=c.block("POST", "/echo", scheme=scheme, extra=hop), end_stream=False)
        c.frame(DataFrame(3, data=b"hello"))
        c.headers(3, block=c.enc.encode([("x-checksum", "5")]), end_stream=True)
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: {1, 3} <= s.ended)
    assert (s.status(1), s.status(3), s.data.get(3)) == (200, 200, b"hello"), s
    reqs = origin.wait_requests(2, complete=True)
    for req in reqs:
        assert_clean_forward(req)
        leaked = {n for n in req.header_names() if n.startswith("proxy-") or n == "trailer"}
        assert not leaked, f"hop-by-hop fields forwarded: {leaked}: {req!r}"
    assert [q.header("x-end-to-end") for q in reqs if q.path == "/hop-get"] == [["kept"]], reqs


# ------------------------------------------------------------------ upstream faults, TLS HTTP/1.1 client

# fault -> (origin path that plays it, the status before a head; None: the answer started, then was cut)
UPSTREAM_FAULTS = {
    "reset-before-head": ("/reset", 502),
    "garbage-head": ("/garbage", 502),
    "silent-past-response-timeout": ("/stall", 504),
    "close-mid-body": ("/cut?n=10", None),
    "reset-mid-body": ("/cut?n=10&mode=reset", None),
    "close-mid-chunked-body": ("/cut-chunked", None),
}


@pytest.fixture(scope="module")
def faults_gateway(hello_bin, origin_server, gateway_logs, pki):
    g = Gateway(
        hello_bin, origin_server.addr, log_dir=gateway_logs, response_timeout=1,
        protocols="h1", tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"),
    )
    try:
        g.start()
    except GatewayError as e:
        pytest.fail(str(e), pytrace=False)
    yield g
    crashed = g.crashed()
    g.kill()
    assert not crashed, crashed


@pytest.mark.parametrize("fault", list(UPSTREAM_FAULTS))
def test_upstream_faults_seen_from_a_tls_http1_client(faults_gateway, pki, origin, fault):
    """RELIABILITY.md "Upgrades and faults" over TLS: before the head, the
    status (502 garbage/reset, 504 silence); after it, a body visibly short
    of its framing and the connection closed; never a hang. The broken
    upstream connection is closed and the next request (on the same TLS
    connection when it survived, else a new one) rides another one."""
    path, status = UPSTREAM_FAULTS[fault]
    c = RawConn(sock=tls_socket(faults_gateway, pki, "http/1.1"))
    try:
        c.send(head("GET", path, ["Host: a.test"]))
        try:
            r = c.read_response(timeout=10)
        except Closed:
            r = None  # cut before a head: only acceptable once the answer started, which it had not
        if status is not None:
            assert r is not None and r.status == status, (fault, r)
            if "close" in (r.h("connection") or ""):
                assert c.wait_closed(5), f"{fault}: `connection: close` on the {status} but the connection stayed open"
        else:
            assert r is not None and r.status == 200 and not r.complete, (fault, r)
            assert c.eof, "a cut answer must end the client connection"
        [broken] = origin.wait_requests(1)
        assert upstream_conn_closed(origin, broken), "the broken upstream connection was kept"
        if c.eof:
            c.close()
            c = RawConn(sock=tls_socket(faults_gateway, pki, "http/1.1"))
        c.send(head("GET", "/after-fault", ["Host: a.test", "Connection: close"]))
        after = c.read_response(timeout=10)
    finally:
        c.close()
    assert after.status == 200, after
    [nxt] = [q for q in origin.wait_requests(2) if q.target == "/after-fault"]
    assert nxt.conn_id != broken.conn_id, "the next request rode the broken upstream connection"


# ------------------------------------------------------------------ slow h2c clients at scale

SLOW_PER_KIND = 400
HEADER_TIMEOUT = 2
WAVES = 3


def open_slow_h2c(port: int, kind: str) -> socket.socket:
    """A cleartext HTTP/2 client that stops where `kind` says: half the
    preface, or inside a HEADERS block (no END_HEADERS, no CONTINUATION)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if kind == "half-preface":
        s.sendall(PREFACE[:12])
    else:
        s.sendall(PREFACE + SettingsFrame(0).serialize() + HALF_HEADERS)
    return s


def _half_headers() -> bytes:
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", "/slow-h2c"), ("x-a", "b" * 200)]
    )
    f = HeadersFrame(1)
    f.data = block[: len(block) // 2]
    return f.serialize()


HALF_HEADERS = _half_headers()


def closed_by_peer(s: socket.socket) -> bool:
    """True once the gateway ended the connection (FIN/RST, after whatever
    it wrote, a GOAWAY say)."""
    s.setblocking(False)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.timeout(120)
def test_waves_of_slow_h2c_clients_are_ended_at_header_timeout_and_starve_no_one(start_gateway, origin):
    """Waves of h2c clients stopped in the preface or inside a HEADERS block,
    on one worker: while they hang, h2c and HTTP/1.1 bystanders get every
    answer; each slow one is ended by the gateway (header-timeout) and none
    forwards anything; memory held per slow client is bounded, each wave's
    peak stays near the first (nothing kept per connection) and the
    descriptors come back."""
    g = start_gateway(workers=1, protocols="h1,h2c", header_timeout=HEADER_TIMEOUT, idle_timeout=30, body_timeout=30)
    with H2Client(g.addr) as warm:  # the allocator and the upstream pool, so the base is not a cold start
        assert all(warm.request(f"/bystander-warm-{i}").status == 200 for i in range(10))
    base, fds_before = g.rss_kib(), settled_fd_count(g.pid)
    peaks = []
    for wave in range(WAVES):
        slow = [open_slow_h2c(g.port, kind) for kind in ("half-preface", "half-headers") for _ in range(SLOW_PER_KIND)]
        served, asked = 0, 0
        with H2Client(g.addr) as bystander:
            deadline = time.monotonic() + HEADER_TIMEOUT * 0.8
            while time.monotonic() < deadline and asked < 20:
                asked += 1
                served += bystander.request(f"/bystander-h2c-{wave}").status == 200
                with RawConn(g.port) as h1:
                    h1.send(head("GET", f"/bystander-h1-{wave}", ["Host: a.test", "Connection: close"]))
                    asked += 1
                    served += h1.read_response().status == 200
        peaks.append(g.rss_kib())  # every slow client of the wave is still open here
        assert served == asked, f"wave {wave}: bystanders served {served} of {asked}"
        ended = wait_until(lambda wave_conns=slow: all(map(closed_by_peer, wave_conns)), HEADER_TIMEOUT + 15, 0.2)
        still_open = sum(not closed_by_peer(s) for s in slow)
        for s in slow:
            s.close()
        assert ended, f"wave {wave}: {still_open} of {len(slow)} slow clients still open past header-timeout"
    stray = [r for r in origin.requests if not r.target.startswith("/bystander")]
    assert not stray, f"slow clients forwarded: {stray[:3]}"
    fds_after = settled_fd_count(g.pid)
    n = 2 * SLOW_PER_KIND
    print(f"\n{WAVES} waves of {n} slow h2c clients: RSS before {base} KiB, with each wave open {peaks} KiB "
          f"(+{(peaks[0] - base) / n:.1f} KiB per slow client), fds {fds_before} -> {fds_after}")
    assert peaks[0] - base < n * 64, f"{(peaks[0] - base) / n:.1f} KiB per slow h2c client"
    # A leak of 4 KiB per slow client would add 6.4 MiB by the last wave; what
    # the allocator keeps after a wave (mimalloc gives pages back lazily; a
    # settling of ~3.7 MiB over seven waves, flat from the fourth, was measured)
    # is reused by the next.
    assert max(peaks[1:]) - peaks[0] < 6144, f"RSS grows wave after wave: {peaks} KiB"
    assert fds_after <= fds_before + 2, f"descriptors kept: {fds_before} -> {fds_after}"


# ------------------------------------------------------------------ bounded memory over TLS HTTP/1.1

# test_limits.py's never-ending protocol elements (request line, header line,
# header lines, empty lines, chunk extension, trailers), fed over TLS: 4 MiB
# each (the cleartext tests feed 16; a TLS record costs the client more).
TLS_FLOOD_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def one_worker_tls_gateway(hello_bin, origin_server, gateway_logs, pki):
    """One worker (all connections on one heap, so RSS shows what one
    connection costs), TLS `h1`."""
    g = Gateway(
        hello_bin, origin_server.addr, log_dir=gateway_logs, workers=1,
        protocols="h1", tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"),
    )
    try:
        g.start()
    except GatewayError as e:
        pytest.fail(str(e), pytrace=False)
    with RawConn(sock=tls_socket(g, pki, "http/1.1")) as warm:  # the TLS and HTTP paths once, before any base
        warm.send(head("GET", "/warm", ["Host: a.test", "Connection: close"]))
        assert warm.read_response().status == 200
    yield g
    crashed = g.crashed()
    g.kill()
    assert not crashed, crashed


@pytest.mark.parametrize("name", list(_flood_cases()))
def test_endless_input_over_tls_is_cut_in_bounded_memory(one_worker_tls_gateway, pki, origin, name):
    """A protocol element that never ends, over TLS: the gateway stops taking
    it (an error status and/or a close) before it has read 4 MiB, RSS does not
    follow the input, nothing completes upstream, and the gateway serves on."""
    g = one_worker_tls_gateway
    prefix, unit = _flood_cases()[name]
    sent = 0
    with RssSampler(g.pid) as m, RawConn(sock=tls_socket(g, pki, "http/1.1", timeout=10)) as c:
        ok = c.send(prefix)
        while ok and sent < TLS_FLOOD_BYTES:
            ok = c.send(unit)
            sent += len(unit) if ok else 0
        closed = c.wait_closed(10)
        answered = bytes(c.buf[:40])
    growth = m.peak - m.base
    print(f"\n{name} over TLS: {sent >> 10} KiB taken; RSS +{growth} KiB; answer {answered!r}")
    assert not ok or closed, f"{name}: still reading after {sent >> 20} MiB of a never-ending element"
    assert growth < 8 * 1024, f"{name}: RSS grew {growth} KiB while fed {sent >> 10} KiB"
    if answered:
        assert int(answered.split(b" ")[1]) in (400, 408, 413, 414, 431), answered
    assert not [q for q in origin.requests if q.path == "/flood" and q.complete], "flood request completed"
    with RawConn(sock=tls_socket(g, pki, "http/1.1")) as c:
        c.send(head("GET", "/after-flood", ["Host: a.test", "Connection: close"]))
        assert c.read_response().status == 200


NEVER_READ_TIMEOUTS = {"body_timeout": 2, "header_timeout": 30, "idle_timeout": 60}


def never_reading_gateway(start_gateway, pki, tls: bool) -> Gateway:
    """One worker, body-timeout far below header- and idle-timeout, warmed
    by one request."""
    listener = {"protocols": "h1", "tls_cert": pki.path("edge.crt"), "tls_key": pki.path("edge.key")} if tls else {}
    g = start_gateway(workers=1, **NEVER_READ_TIMEOUTS, **listener)
    with RawConn(sock=tls_socket(g, pki, "http/1.1")) if tls else RawConn(g.port) as warm:
        warm.send(head("GET", "/warm", ["Host: a.test", "Connection: close"]))
        assert warm.read_response().status == 200
    return g


def pipeline_never_read(g: Gateway, pki, tls: bool, path: str, most: int) -> tuple[socket.socket, int]:
    """A client with a 4 KiB receive buffer that pipelines requests for
    `path` (~1 KiB each) and never reads: returns once the gateway stops
    taking them for a second, or `most` were sent, with the TCP socket
    under the client (a dup, to drain without decrypting) and the count."""
    raw = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client = raw
    if tls:
        ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
        ctx.set_alpn_protocols(["http/1.1"])
        client = ctx.wrap_socket(raw, server_hostname=AUTHORITY)
    burst = head("GET", path, ["Host: a.test", "X-Pad: " + "p" * 900]) * 16
    sent = 0
    client.settimeout(1.0)
    try:
        while sent < most:
            client.sendall(burst)  # times out once the gateway stops reading
            sent += 16
    except OSError:
        pass
    under = socket.socket(fileno=os.dup(client.fileno()))
    client.close()
    return under, sent


def cut_within(under: socket.socket, seconds: float) -> bool:
    """Whether the gateway ends the connection within `seconds` (what it
    sent meanwhile is drained, undecrypted)."""
    try:
        return wait_until(lambda: closed_by_peer(under), timeout=seconds, step=0.2)
    finally:
        under.close()


@pytest.mark.parametrize("way", ["h1", "h1-tls"])
@pytest.mark.parametrize("path", ["/healthz", "/bytes/65536"])
def test_a_pipeline_never_read_is_held_in_bounded_memory(start_gateway, pki, way, path):
    """A client pipelines requests and never reads the answers (the gateway's
    own for /healthz, 64 KiB proxied ones otherwise), over cleartext and TLS:
    the gateway stops taking requests once its output backs up instead of
    keeping (or encrypting) answers nobody reads. (When it ends the
    connection is left out: by a race, the client's own TCP stack may leave
    the next head half sent, in retransmission backoff, and the connection
    then waits for it under header-timeout, or, over TLS, idle-timeout: see
    the test after this one.)"""
    tls = way == "h1-tls"
    g = never_reading_gateway(start_gateway, pki, tls)
    with RssSampler(g.pid) as m:
        under, sent = pipeline_never_read(g, pki, tls, path, most=60_000)
        cut = cut_within(under, 4)
    growth = m.peak - m.base
    print(f"\n{way}: {sent} x GET {path} pipelined, never read: RSS +{growth} KiB; cut within 4 s: {cut}")
    assert sent < 60_000, "the gateway took 60 MiB of pipelined requests whose answers nobody reads"
    assert growth < 16 * 1024, f"RSS grew {growth} KiB for a client that never reads"


# ------------------------------------------------------------------ header-timeout inside a TLS record

PARTIAL_TIMEOUTS = {"header_timeout": 2, "idle_timeout": 6, "body_timeout": 30}


class RecordClient:
    """A TLS client over a memory BIO, so a test holds the encrypted records
    and decides how many of their bytes go out (half a record, one byte at
    a time); `way` is `h1-tls`, `h2-tls` or cleartext `h1` (bytes as is)."""

    def __init__(self, g: Gateway, pki, way: str):
        self.way = way
        self.sock = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = None
        if way.endswith("tls"):
            ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
            ctx.set_alpn_protocols(["h2" if way.startswith("h2") else "http/1.1"])
            self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname=AUTHORITY)
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self.sock.sendall(self.out.read())
                    self.inc.write(self.sock.recv(65536))
            self.sock.sendall(self.out.read())

    def records(self, plaintext: bytes) -> bytes:
        """What goes on the wire for plaintext: TLS records, or the bytes themselves."""
        if self.tls is None:
            return plaintext
        self.tls.write(plaintext)
        return self.out.read()

    def read_until(self, needle: bytes, timeout: float = 5) -> bytes:
        got, deadline = b"", time.monotonic() + timeout
        while needle not in got and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            if self.tls is None:
                got += data
                continue
            self.inc.write(data)
            try:
                while True:
                    got += self.tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
        return got

    def close(self) -> None:
        self.sock.close()


def first_exchange(c: RecordClient) -> bytes:
    """One complete request and its answer, so the connection is a
    keep-alive one waiting for the next; returns the next request's bytes."""
    if c.way.startswith("h2"):
        enc = hpack.Encoder()

        def request(sid: int, path: str) -> bytes:
            f = HeadersFrame(sid, flags=["END_HEADERS", "END_STREAM"])
            scheme = "https" if c.tls is not None else "http"
            f.data = enc.encode([(":method", "GET"), (":scheme", scheme), (":authority", AUTHORITY),
                                 (":path", path), ("x-pad", "p" * 300)])
            return f.serialize()

        c.sock.sendall(c.records(PREFACE + SettingsFrame(0).serialize() + request(1, "/first")))
        assert c.read_until(b"GET /first"), "no answer to the first stream"
        return request(3, "/second")
    c.sock.sendall(c.records(head("GET", "/first", ["Host: a.test"])))
    assert c.read_until(b"GET /first").startswith(b"HTTP/1.1 200"), "no answer to the first request"
    return head("GET", "/second", ["Host: a.test", "X-Pad: " + "p" * 300])


@pytest.mark.parametrize(
    "way,how",
    [
        ("h1", "half"),
        ("h1", "trickled"),
        ("h1-tls", "half"),
        ("h1-tls", "trickled"),
        ("h2c", "half"),
        ("h2-tls", "half"),
        ("h2-tls", "trickled"),
    ],
)
def test_the_next_head_in_an_unfinished_record_is_timed_by_header_timeout(start_gateway, pki, origin, way, how):
    """docs/spec.md `header-timeout`: "the whole request head must arrive
    within this"; RELIABILITY.md: a head sent slower than header-timeout is
    408 or a close at that timeout. On a keep-alive connection the next
    request's head is sent as half of its bytes (over TLS: half of its
    record, so nothing decrypts) or one byte every half second (the record
    never finished): the gateway must end the connection at header-timeout
    (2 s), not at idle-timeout (6 s). The test reads for 4.5 s, between the two.
    The first request of a connection is held to header-timeout over TLS
    too (test_memory_protocols_qa.py); this is the second one."""
    tls = way.endswith("tls")
    listener = (
        {"protocols": "h1,h2", "tls_cert": pki.path("edge.crt"), "tls_key": pki.path("edge.key")}
        if tls
        else {"protocols": "h1,h2c"}
    )
    g = start_gateway(**PARTIAL_TIMEOUTS, **listener)
    c = RecordClient(g, pki, way)
    try:
        wire = c.records(first_exchange(c))
        start, sent, ended = time.monotonic(), 0, False
        if how == "half":
            c.sock.sendall(wire[: len(wire) // 2])
        while time.monotonic() < start + 4.5 and not ended:
            if how == "trickled" and sent < len(wire) - 1:
                try:
                    c.sock.sendall(wire[sent : sent + 1])
                    sent += 1
                except OSError:
                    ended = True
                    break
            c.sock.settimeout(0.5)
            try:
                ended = not c.sock.recv(65536)  # a GOAWAY or 408 may come first; then the close
            except TimeoutError:
                pass
            except OSError:
                ended = True
    finally:
        c.close()
    assert ended, f"{way}: the next head, {how}, held past header-timeout (2 s) for 4.5 s"
    assert not [r for r in origin.requests if r.path == "/second"], "the unfinished request was forwarded"
