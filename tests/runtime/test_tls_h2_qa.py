"""A black-box QA pass over TLS termination and HTTP/2 (issue #5), for what
test_tls_runtime.py, test_h2.py, test_h2_flow.py, test_h2spec.py and
tests/blitzc/test_tls*.py do not cover already.

hello_gateway (`--tls-cert/--tls-key`, `--protocols h1,h2` or `h1,h2c`) in
front of the recording origin; clients are `openssl s_client`, Python's
ssl (a ClientHello trickled byte by byte from a memory BIO), `h2load`, and
hand-made frames (`hyperframe`) for what no real client sends.

- TLS: server names the default certificate answers (an IP address, a
  trailing dot, upper case, none), ALPN with only unknown protocols
  (refused with `no_application_protocol`, as nginx since 1.21.4),
  TLS 1.0/1.1 refused, KeyUpdate mid-connection (both kinds), a
  ClientHello trickled one byte per segment, clients that give up in the
  middle of the handshake (no descriptor kept), a SIGTERM during two
  handshakes (the one that goes on is served, the stalled one ends at
  header-timeout), floods of records that carry no handshake progress,
  SIGHUP under an open HTTP/2 connection.
- HTTP/2 translation: a `:path` that is not origin-form never routes
  anywhere (`http://other/x` would otherwise be an absolute-form target
  that picks its own Host), `host` beside `:authority`, userinfo in
  `:authority`, whitespace around a field value (RFC 9113 §8.2.1; was
  trimmed and forwarded, now a 400), content-length on a request without
  DATA or broken by the DATA, request trailers, interim and bodiless
  upstream answers, a stalled stream beside a live one.
- Floods RELIABILITY.md's list implies but test_h2.py does not send:
  PING ACKs nobody asked for and WINDOW_UPDATE frames (each costs a
  parse, no byte of request; the `h2` crate accepts them forever: both
  were open after 15 s of flood, now GOAWAY(ENHANCE_YOUR_CALM)), empty
  DATA and CONTINUATION frames, SETTINGS ACKs, PRIORITY frames; over h2c
  and over TLS, with a well-behaved client served meanwhile; resets the
  client provokes instead of sending (MadeYouReset). And the other side
  of the WINDOW_UPDATE rule: a client that acknowledges every DATA frame
  of a long download, for the stream and the connection, and h2load over
  TLS with 20 streams per connection, are no flood.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from support.gateway import accept_queue_length, rss_kib, settled_fd_count
from support.h2client import ENHANCE_YOUR_CALM, PROTOCOL_ERROR, H2Client, RawH2
from support.origin import default_handler, pattern_sha256, respond
from support.pki import Pki, served_cert
from support.sclient import s_client_session
from support.waits import wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("tls-h2-qa"))
    p.leaf("edge", "edge.test", signer="int")
    return p


def tls_gateway(start_gateway, pki: Pki, **opts):
    opts.setdefault("protocols", "h1,h2")
    return start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), **opts)


def tls_socket(port: int, pki: Pki, alpn=("h2",), server_name: str | None = "edge.test") -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=server_name)


def s_client(port: int, *opts: str, stdin: str = "") -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *opts],
                       input=stdin, capture_output=True, text=True, errors="replace", timeout=20)
    return r.stdout + r.stderr


REQUEST = "GET /qa HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n\r\n"


# ------------------------------------------------------------------ TLS


@pytest.mark.parametrize(
    "sni", [["-servername", "127.0.0.1"], ["-servername", "edge.test."], ["-servername", "EDGE.TEST"], ["-noservername"]],
    ids=["ip-address", "trailing-dot", "upper-case", "none"],
)
def test_odd_server_names_get_a_handshake_and_an_answer(start_gateway, origin, pki, sni):
    """RFC 6066 §3 forbids an IP literal in SNI and a trailing dot, but
    clients send both (openssl does what it is told); rustls must not
    turn them into a failed handshake, and upper case is the same name."""
    g = tls_gateway(start_gateway, pki)
    out = s_client(g.port, *sni, "-CAfile", str(pki.path("ca.crt")), "-ign_eof", stdin=REQUEST)
    assert "HTTP/1.1 200 OK" in out and "GET /qa" in out, out[-2000:]
    assert served_cert(g.port, None) == pki.der("edge")
    assert g.alive()


def test_alpn_with_only_unknown_protocols_is_refused_cleanly(start_gateway, origin, pki):
    """RFC 7301 §3.2: no protocol in common is `no_application_protocol`
    (alert 120), as nginx answers since 1.21.4; http/1.0 is one the
    listener speaks; the gateway goes on serving."""
    g = tls_gateway(start_gateway, pki)
    out = s_client(g.port, "-servername", "edge.test", "-alpn", "spdy/3,h2c", "-ign_eof", stdin=REQUEST)
    assert "alert number 120" in out or "no application protocol" in out, out[-2000:]
    assert "HTTP/1.1" not in out
    out = s_client(g.port, "-servername", "edge.test", "-alpn", "http/1.0", "-ign_eof", stdin=REQUEST)
    assert "ALPN protocol: http/1.0" in out and "HTTP/1.1 200 OK" in out, out[-2000:]
    with tls_socket(g.port, pki, alpn=("h2",)) as s:
        assert s.selected_alpn_protocol() == "h2"
    assert g.alive()


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_are_refused(start_gateway, origin, pki, version):
    g = tls_gateway(start_gateway, pki)
    out = s_client(g.port, "-servername", "edge.test", version, "-cipher", "DEFAULT:@SECLEVEL=0", "-ign_eof",
                   stdin=REQUEST)
    assert "HTTP/1.1" not in out, out[-2000:]
    assert "Cipher is (NONE)" in out or "alert" in out, out[-2000:]
    assert g.alive()


def test_key_updates_mid_connection_keep_it_serving(start_gateway, origin, pki):
    """RFC 8446 §4.6.3: a KeyUpdate with update_requested must be answered
    with the server's own; after either kind, both sides' traffic goes on
    (rustls is driven by hand in tls/stream.rs: its answer must be sent
    although no response is being written)."""
    g = tls_gateway(start_gateway, pki)
    get = lambda p: f"GET {p} HTTP/1.1\r\nhost: edge.test\r\n\r\n".encode()
    steps = [get("/before"), b"K\n", 0.2, get("/after-K"), b"k\n", 0.2, get("/after-k")]
    out = s_client_session(g.port, pki.path("ca.crt"), steps)
    for path in ("/before", "/after-K", "/after-k"):
        assert f"GET {path}\n" in out, out[-2000:]
    assert out.count("HTTP/1.1 200 OK") == 3, out[-2000:]
    assert g.alive()


def _client_hello(pki: Pki) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    ctx.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="edge.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return tls, incoming, outgoing, outgoing.read()


def _finish_and_ask(s: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> bytes:
    """Completes a handshake whose ClientHello was sent on `s`, sends
    REQUEST and returns the answer (up to its body)."""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                s.sendall(outgoing.read())
            chunk = s.recv(65536)
            assert chunk, "closed during the handshake"
            incoming.write(chunk)
    tls.write(REQUEST.encode())
    s.sendall(outgoing.read())
    answer = b""
    while b"GET /qa\n" not in answer:
        chunk = s.recv(65536)
        assert chunk, f"closed before the answer: {answer!r}"
        incoming.write(chunk)
        try:
            answer += tls.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
    return answer


def test_a_client_hello_trickled_one_byte_per_segment_completes(start_gateway, origin, pki):
    """Each byte in its own TCP segment: the sniffing for plain HTTP and
    rustls' record reassembly both see a ClientHello in 500 pieces."""
    g = tls_gateway(start_gateway, pki, header_timeout=10)
    tls, incoming, outgoing, hello = _client_hello(pki)
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(hello)):
            s.sendall(hello[i : i + 1])
            time.sleep(0.001)
        answer = _finish_and_ask(s, tls, incoming, outgoing)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer


def test_a_drain_lets_a_handshake_under_way_finish_and_bounds_a_stalled_one(start_gateway, origin, pki):
    """SIGTERM while two clients are half-way through their ClientHello:
    the one that goes on is served (it connected before the drain, as a
    client the old process accepted during an upgrade), the one that
    stalls is ended by header-timeout, so the process exits (0) long
    before its 60 s grace."""
    g = tls_gateway(start_gateway, pki, workers=1, header_timeout=3, grace=60)
    tls, incoming, outgoing, hello = _client_hello(pki)
    _, _, _, stalled_hello = _client_hello(pki)
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as going, \
            socket.create_connection(("127.0.0.1", g.port), timeout=10) as stalled:
        going.sendall(hello[:100])
        stalled.sendall(stalled_hello[:100])
        # Both accepted by the worker (a connection still on the kernel's queue is reset by the drain).
        assert wait_until(lambda: accept_queue_length(g.port) == 0, 10), "the worker never accepted the connections"
        time.sleep(0.3)  # and, likely, their first 100 bytes read (if not, the rest still comes in the last call)
        g.signal(signal.SIGTERM)
        time.sleep(0.5)
        going.sendall(hello[100:])
        answer = _finish_and_ask(going, tls, incoming, outgoing)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer
        try:
            g.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still draining 30 s after SIGTERM (header-timeout 3 s):\n{g.tail()}")
        assert g.proc.returncode == 0, g.tail()


def test_clients_that_give_up_mid_handshake_leave_nothing_behind(start_gateway, origin, pki):
    """A hundred clients each stop at some point of the handshake (after
    part of the ClientHello, after the whole of it, after the server's
    flight) and close, some with a RST: the gateway holds no descriptor
    for any of them, long before the header timeout, and serves on."""
    g = tls_gateway(start_gateway, pki, workers=1, header_timeout=30)
    time.sleep(0.3)
    base = g.fds()
    for i in range(100):
        _, _, _, hello = _client_hello(pki)
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        try:
            stage = i % 3
            s.sendall(hello[: len(hello) // 2] if stage == 0 else hello)
            if stage == 2:
                assert s.recv(65536), "no server flight"
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        finally:
            s.close()
    after = settled_fd_count(g.pid, timeout=10)
    assert after <= base + 2, f"{after} descriptors after the clients left, {base} before"
    out = s_client(g.port, "-servername", "edge.test", "-ign_eof", stdin=REQUEST)
    assert "HTTP/1.1 200 OK" in out
    assert g.alive()


@pytest.mark.parametrize(
    "record,before_hello",
    [
        (bytes([0x15, 3, 3, 0, 2, 1, 90]), True),  # warning alert (user_canceled)
        (bytes([0x16, 3, 3, 0, 0]), True),  # empty handshake record
        (bytes([0x17, 3, 3, 0, 0]), True),  # empty application data, before any keys
        (bytes([0x14, 3, 3, 0, 1, 1]), False),  # ChangeCipherSpec after the ClientHello
    ],
    ids=["warning-alerts", "empty-handshake-records", "empty-app-data", "change-cipher-specs"],
)
def test_a_flood_of_records_around_the_client_hello_is_cut(start_gateway, origin, pki, record, before_hello):
    """100,000 small records that carry no handshake progress (RFC 8446
    §5.1: no empty handshake records; at most one ChangeCipherSpec): the
    connection ends long before they are all sent (a reset or an EOF),
    with no HTTP answer, and the gateway serves on."""
    g = tls_gateway(start_gateway, pki, workers=1)
    _, _, _, hello = _client_hello(pki)
    got, cut = b"", False
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        try:
            if not before_hello:
                s.sendall(hello)
            for _ in range(200):
                s.sendall(record * 500)
            if before_hello:
                s.sendall(hello)
            while chunk := s.recv(65536):
                got += chunk
            cut = True
        except (ConnectionResetError, BrokenPipeError):
            cut = True
    assert cut and b"HTTP/" not in got, got[:100]
    out = s_client(g.port, "-servername", "edge.test", "-ign_eof", stdin=REQUEST)
    assert "HTTP/1.1 200 OK" in out
    assert g.alive()


def test_sighup_under_an_open_h2_connection_keeps_its_streams(start_gateway, origin, pki, tmp_path):
    """test_tls_runtime.py reloads under HTTP/1.1; HTTP/2 over TLS is one
    long connection of many streams: after the swap it goes on opening
    streams, and a new handshake gets the new certificate."""
    pki.leaf("renewed-qa", "edge.test", key="rsa")
    live_crt, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_crt.write_bytes(pki.path("edge.crt").read_bytes())
    live_key.write_bytes(pki.path("edge.key").read_bytes())
    g = start_gateway(tls_cert=live_crt, tls_key=live_key, protocols="h1,h2", workers=2)
    with RawH2(g.addr, sock=tls_socket(g.port, pki)) as c:
        c.headers(1, block=c.block(path="/before", scheme="https"))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended)
        assert s.status(1) == 200, s
        live_crt.write_bytes(pki.path("renewed-qa.crt").read_bytes())
        live_key.write_bytes(pki.path("renewed-qa.key").read_bytes())
        mark = len(g.lines)
        g.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not any("reloaded" in line for line in g.lines[mark:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("reloaded" in line for line in g.lines[mark:]), g.tail()
        assert served_cert(g.port, "edge.test") == pki.der("renewed-qa")
        for sid in (3, 5, 7):
            c.headers(sid, block=c.block(path=f"/after/{sid}", scheme="https"))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: {3, 5, 7} <= s.ended)
        assert [s.status(sid) for sid in (3, 5, 7)] == [200] * 3, s
        assert s.goaway is None and not s.closed
    assert g.alive()


# -------------------------------------------------------- HTTP/2 translation


H2C = {"protocols": "h1,h2c"}


def _one_stream(g, block_of, end_stream=True, after=None):
    """Sends one request (HEADERS built by block_of(raw)) on a fresh h2c
    connection; what the server answered on stream 1."""
    with RawH2(g.addr) as c:
        c.headers(1, block=block_of(c), end_stream=end_stream)
        if after:
            after(c)
        return c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.resets or 1 in s.ended or s.goaway is not None)


def _pseudo(c, method="GET", path="/p", authority="a.test", extra=()):
    return c.enc.encode([(":method", method), (":scheme", "http"), (":authority", authority), (":path", path),
                         *extra])


@pytest.mark.parametrize("path", ["http://evil.test/x", "//evil.test/x", "x", "", "*"],
                         ids=["absolute-form", "double-slash", "relative", "empty", "asterisk-on-get"])
def test_a_path_not_in_origin_form_never_routes_elsewhere(start_gateway, origin, path):
    """RFC 9113 §8.3.1: `:path` is origin-form (or `*` for OPTIONS). Written
    into an HTTP/1.1 request line, `http://evil.test/x` would be an
    absolute-form target, whose authority decides the Host
    (RELIABILITY.md): it must be refused, not re-targeted."""
    g = start_gateway(**H2C)
    s = _one_stream(g, lambda c: _pseudo(c, path=path))
    time.sleep(0.2)
    forwarded = origin.raw_since_reset()
    if path == "//evil.test/x":
        # Origin-form with an empty first segment: a path (normalised like
        # any), never an authority.
        assert s.status(1) == 200, s
        [req] = origin.wait_requests(1)
        assert req.target.startswith("/") and req.header("host") == ["a.test"], req
    else:
        assert s.resets.get(1) == PROTOCOL_ERROR or s.status(1) == 400, s
        assert forwarded == b"", forwarded


def test_options_asterisk_is_forwarded_as_asterisk(start_gateway, origin):
    g = start_gateway(**H2C)
    s = _one_stream(g, lambda c: _pseudo(c, method="OPTIONS", path="*"))
    assert s.status(1) == 200 and s.data[1] == b"OPTIONS *\n", s
    [req] = origin.wait_requests(1)
    assert (req.target, req.header("host")) == ("*", ["a.test"])


def test_host_beside_authority_is_dropped_and_authority_routes(start_gateway, origin):
    """RFC 9113 §8.3.1: an intermediary building an HTTP/1.1 request takes
    Host from `:authority`; the client's `host` field never reaches the
    upstream beside it (one Host, the one that routed)."""
    g = start_gateway(**H2C)
    s = _one_stream(g, lambda c: _pseudo(c, authority="a.test", extra=[("host", "b.test")]))
    assert s.status(1) == 200, s
    [req] = origin.wait_requests(1)
    assert req.header("host") == ["a.test"]
    assert b"b.test" not in origin.raw_since_reset()


@pytest.mark.parametrize("authority", ["user@a.test", "user:pw@a.test", "a.test/evil", "a.test:80:90", "a test"])
def test_authority_that_is_no_host_is_refused(start_gateway, origin, authority):
    """RFC 9113 §8.3.1: no userinfo in `:authority`; anything that is not
    host[:port] is no Host either."""
    g = start_gateway(**H2C)
    s = _one_stream(g, lambda c: _pseudo(c, authority=authority))
    assert s.resets.get(1) == PROTOCOL_ERROR or s.status(1) == 400 or s.goaway == PROTOCOL_ERROR, s
    time.sleep(0.2)
    assert origin.raw_since_reset() == b""


@pytest.mark.parametrize("name,value", [("x-pad", " a"), ("x-pad", "a "), ("x-pad", "\ta"), ("cookie", "a=1\t"),
                                        ("content-type", " text/plain")])
def test_whitespace_around_a_field_value_is_malformed(start_gateway, origin, name, value):
    """RFC 9113 §8.2.1: a field value MUST NOT start or end with SP or HTAB,
    and such a request MUST be treated as malformed; nghttp2 (Envoy,
    Apache httpd) refuses it. Before, the gateway trimmed it (as HTTP/1.1
    OWS) and forwarded the request."""
    g = start_gateway(**H2C)
    s = _one_stream(g, lambda c: _pseudo(c, path="/padded", extra=[(name, value)]))
    assert s.resets.get(1) == PROTOCOL_ERROR or s.status(1) == 400, s
    time.sleep(0.2)
    assert origin.raw_since_reset() == b""
    # Whitespace inside a value is fine.
    s = _one_stream(g, lambda c: _pseudo(c, path="/inner", extra=[("x-inner", "a \t b")]))
    assert s.status(1) == 200, s
    [req] = origin.wait_requests(1)
    assert req.header("x-inner") == ["a \t b"]


def test_content_length_on_a_request_without_data_is_malformed(start_gateway, origin):
    """RFC 9113 §8.1.1: content-length must equal the DATA sent; a HEADERS
    frame with END_STREAM and `content-length: 5` would otherwise be a
    request whose upstream waits for five bytes that never come."""
    g = start_gateway(**H2C)
    s = _one_stream(g, lambda c: _pseudo(c, method="POST", path="/sink", extra=[("content-length", "5")]))
    assert s.resets.get(1) == PROTOCOL_ERROR or s.status(1) == 400, s
    time.sleep(0.2)
    assert b"content-length: 5" not in origin.raw_since_reset()


def test_request_trailers_end_the_body_and_are_not_forwarded(start_gateway, origin):
    """HEADERS, DATA, trailers (HEADERS with END_STREAM): the upstream gets
    the whole chunked body, terminated, and no trailer field (as for
    HTTP/1.1 clients: test_reliability_qa.py)."""
    g = start_gateway(**H2C)

    def body_and_trailers(c):
        c.frame(DataFrame(1, data=b"hello"))
        c.headers(1, block=c.enc.encode([("x-trailer", "t")]), end_stream=True)

    s = _one_stream(g, lambda c: _pseudo(c, method="POST", path="/sink"), end_stream=False, after=body_and_trailers)
    assert s.status(1) == 200 and s.data[1].split()[0] == b"5", s
    [req] = origin.wait_requests(1, complete=True)
    assert bytes(req.body) == b"hello"
    assert b"x-trailer" not in origin.raw_since_reset()


@pytest.mark.parametrize("length,sent", [(5, 10), (10, 5)], ids=["more-data-than-declared", "less-data-than-declared"])
def test_content_length_that_the_data_breaks_never_completes_upstream(start_gateway, origin, length, sent):
    """RFC 9113 §8.1.1: DATA that does not add up to content-length is
    malformed: the stream is reset, the upstream request (already under
    way with that length) is never completed, and its connection is not
    used again: the next request goes on another one, parsed clean."""
    g = start_gateway(workers=1, **H2C)
    with RawH2(g.addr) as c:
        c.headers(1, block=_pseudo(c, method="POST", path="/sink", extra=[("content-length", str(length))]),
                  end_stream=False)
        assert origin.wait_for(lambda: origin.requests, 5), "the upstream request did not start"
        c.frame(DataFrame(1, data=b"x" * sent, flags=["END_STREAM"]))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.resets or 1 in s.ended or s.goaway is not None)
        assert s.resets.get(1) == PROTOCOL_ERROR or s.goaway == PROTOCOL_ERROR, s
        c.headers(3, path="/after")
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 3 in s.ended or s.goaway is not None)
    assert s.status(3) == 200 and s.data[3] == b"GET /after\n", s
    post, after = origin.wait_requests(2)
    assert post.method == "POST" and not post.complete, post
    assert after.target == "/after" and after.conn_id != post.conn_id, (post, after)


def test_a_stalled_stream_does_not_hold_up_another_on_its_connection(start_gateway, origin):
    """One stream's window is never reopened (64 MiB waiting); the
    connection's is, and the other stream's 4 MiB arrives whole: the
    gateway buffers at most max_send_buffer_size for the stalled one and
    does not let it take the connection."""
    g = start_gateway(**H2C)
    n = 4 << 20
    with RawH2(g.addr, timeout=10) as c:
        c.headers(1, path=f"/bytes/{64 << 20}")
        c.read_frames(time.monotonic() + 0.5, stop=lambda s: 1 in s.data)
        c.headers(3, path=f"/bytes/{n}")
        chunks: list[bytes] = []

        def acknowledge(s):
            for sid in (1, 3):
                fresh = s.data.pop(sid, b"")
                if not fresh:
                    continue
                update = WindowUpdateFrame(0, window_increment=len(fresh)).serialize()
                if sid == 3:
                    chunks.append(fresh)
                    update += WindowUpdateFrame(3, window_increment=len(fresh)).serialize()
                c.send(update)
            return 3 in s.ended or 3 in s.resets or s.goaway is not None

        s = c.read_frames(time.monotonic() + 30, stop=acknowledge)
    body = b"".join(chunks)
    assert 3 in s.ended and 3 not in s.resets and s.goaway is None, s.frames[-5:]
    assert len(body) == n and hashlib.sha256(body).hexdigest() == pattern_sha256(n)
    assert 1 not in s.ended, "the stalled stream cannot have finished"


def _interim_then_final(req, conn):
    if req.path == "/early-hints":
        conn.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")
        return respond(conn, req, 200, b"final\n")
    if req.path == "/204-with-length":
        return conn.send(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nx-a: 1\r\n\r\n")
    return default_handler(req, conn)


@pytest.mark.parametrize(
    "method,path,status,length,body",
    [
        ("GET", "/early-hints", 200, "6", b"final\n"),
        ("HEAD", "/bytes/1000", 200, "1000", b""),
        ("HEAD", "/chunked", 200, None, b""),
        ("GET", "/status/204", 204, None, b""),
        ("GET", "/204-with-length", 204, None, b""),
        ("GET", "/status/304", 304, None, b""),
    ],
)
def test_interim_and_bodiless_upstream_answers(start_gateway, origin, method, path, status, length, body):
    """An interim 103 is not taken for the final answer; HEAD keeps the
    declared length without a body; 204 carries no content-length (RFC
    9110 §8.6), and the upstream connection stays in sync for the next
    request on it."""
    origin.handler = _interim_then_final
    g = start_gateway(**H2C)
    with H2Client(g.addr) as c:
        r = c.request(path, method=method)
        assert (r.status, r.body, r.reset) == (status, body, None), r
        assert r.header("content-length") == ([length] if length else []), r.headers
        again = c.request("/next")
        assert (again.status, again.body) == (200, b"GET /next\n"), again


# ------------------------------------------------------------------ floods


def _ping_acks(raw):
    ack = PingFrame(0, opaque_data=b"qa-pongs", flags=["ACK"])
    return ack.serialize() * 400


def _connection_window_updates(raw):
    return WindowUpdateFrame(0, window_increment=1).serialize() * 400


def _stream_window_updates(raw):
    return WindowUpdateFrame(1, window_increment=1).serialize() * 400


def _empty_data(raw):
    return DataFrame(1, data=b"").serialize() * 400


def _empty_continuations(raw):
    return ContinuationFrame(1, data=b"").serialize() * 400


def _settings_acks(raw):
    return SettingsFrame(0, flags=["ACK"]).serialize() * 400


def _priorities(raw):
    return b"".join(PriorityFrame(sid, depends_on=1).serialize() for sid in range(3, 803, 2))


def _open_slow_stream(raw):
    # A stream in flight: the connection is not idle, only the flood can end it.
    raw.headers(1, block=raw.block(path="/slow?delay=30"))


def _open_upload(raw):
    raw.headers(1, block=raw.block(method="POST", path="/sink"), end_stream=False)


def _open_header_block(raw):
    # The server's SETTINGS first: the client's ACK must not land inside the block.
    raw.read_frames(time.monotonic() + 1, stop=lambda s: s.settings >= 1)
    raw.headers(1, block=raw.block(), end_headers=False)


FLOODS = {
    # (setup, one batch of frames, the codes that end it)
    "ping-ack": (None, _ping_acks, (ENHANCE_YOUR_CALM,)),
    "window-update-connection": (None, _connection_window_updates, (ENHANCE_YOUR_CALM,)),
    "window-update-stream": (_open_slow_stream, _stream_window_updates, (ENHANCE_YOUR_CALM,)),
    "empty-data": (_open_upload, _empty_data, (ENHANCE_YOUR_CALM,)),
    "empty-continuation": (_open_header_block, _empty_continuations, (ENHANCE_YOUR_CALM, PROTOCOL_ERROR)),
    "settings-ack": (None, _settings_acks, (ENHANCE_YOUR_CALM, PROTOCOL_ERROR)),
    "priority": (None, _priorities, (ENHANCE_YOUR_CALM,)),
}


class Bystander(threading.Thread):
    """A well-behaved client on its own connections (h2c, or h2 over TLS),
    requesting until stopped; counts answers."""

    def __init__(self, g, pki: Pki | None):
        super().__init__(daemon=True)
        self.g, self.pki = g, pki
        self.ok, self.bad = 0, []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                sock = tls_socket(self.g.port, self.pki) if self.pki else None
                with RawH2(self.g.addr, sock=sock) as c:
                    for i in range(20):
                        if self.stop.is_set():
                            return
                        sid = 1 + 2 * i
                        c.headers(sid, block=c.block(path=f"/bystander/{i}", scheme="https" if self.pki else "http"))
                        s = c.read_frames(time.monotonic() + 10, stop=lambda s: sid in s.ended or s.goaway is not None)
                        if s.status(sid) == 200 and sid in s.ended:
                            self.ok += 1
                        else:
                            self.bad.append(f"stream {sid}: {s.frames[-5:]}")
                        time.sleep(0.02)
            except Exception as e:  # noqa: BLE001 - asserted by the test
                self.bad.append(repr(e))
                time.sleep(0.1)


@pytest.mark.parametrize("transport", ["h2c", "tls"])
@pytest.mark.parametrize("flood", list(FLOODS))
def test_floods_of_frames_that_carry_no_request_end_the_connection(start_gateway, origin, pki, flood, transport):
    """Each frame costs the gateway a parse and brings nothing: the
    connection ends with GOAWAY (ENHANCE_YOUR_CALM where the flood is
    counted, PROTOCOL_ERROR where the frame is illegal anyway) within the
    bounded time the flood is sent for, memory stays bounded, and a
    well-behaved client is served meanwhile. idle-timeout is far away: the
    flood itself must end it."""
    setup, batch, codes = FLOODS[flood]
    if transport == "tls":
        g = tls_gateway(start_gateway, pki, idle_timeout=120)
    else:
        g = start_gateway(idle_timeout=120, **H2C)
    rss0 = g.rss_kib()
    by = Bystander(g, pki if transport == "tls" else None)
    by.start()
    try:
        time.sleep(0.5)
        before = by.ok
        sock = tls_socket(g.port, pki) if transport == "tls" else None
        with RawH2(g.addr, sock=sock, timeout=5) as raw:
            if setup:
                setup(raw)
            frames = batch(raw)
            sent = 0
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if not raw.send(frames):
                    break
                sent += 1
                s = raw.read_frames(time.monotonic() + 0.001, stop=lambda s: s.goaway is not None or s.closed)
                if s.goaway is not None or s.closed:
                    break
            s = raw.ended_by_server(timeout=5)
            peak = rss_kib(g.pid)
        time.sleep(0.5)
    finally:
        by.stop.set()
        by.join(15)
    print(f"{flood} over {transport}: {sent} batches, goaway={s.goaway} closed={s.closed}, rss {rss0} -> {peak} KiB")
    assert s.goaway in codes or (s.goaway is None and s.closed), (
        f"still open after {sent} batches of {flood}: goaway={s.goaway} frames={s.frames[-8:]}"
    )
    assert peak - rss0 < 64 * 1024, f"RSS grew {peak - rss0} KiB"
    assert not by.bad, f"the well-behaved client was refused: {by.bad[:3]}"
    assert by.ok > before, "the well-behaved client got no answer during the flood"
    assert g.alive()


def test_resets_the_client_provokes_are_bounded_too(start_gateway, origin):
    """MadeYouReset (CVE-2025-8671): instead of sending RST_STREAM (which
    the control budget counts), the client makes the *server* reset each
    stream, here with a PRIORITY frame that depends on its own stream (a
    stream error, RFC 9113 §5.3.1), while the upstream works on the request.
    max_local_error_reset_streams (128) ends it with ENHANCE_YOUR_CALM: the
    origin sees about that many requests, not one per stream sent."""
    g = start_gateway(workers=1, **H2C)
    sid = 1
    with RawH2(g.addr, timeout=5) as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = b""
            for _ in range(50):
                h = HeadersFrame(sid, flags=["END_HEADERS", "END_STREAM"])
                h.data = c.block(path=f"/slow?delay=3&s={sid}")
                batch += h.serialize() + PriorityFrame(sid, depends_on=sid).serialize()
                sid += 2
            if not c.send(batch):
                break
            s = c.read_frames(time.monotonic() + 0.05, stop=lambda s: s.goaway is not None or s.closed)
            if s.goaway is not None or s.closed:
                break
        s = c.ended_by_server(5)
    assert s.goaway == ENHANCE_YOUR_CALM or s.closed, f"{sid // 2} streams sent: {s.frames[-8:]}"
    time.sleep(0.5)
    assert len(origin.requests) <= 200, f"{len(origin.requests)} requests reached the origin"
    assert g.alive()


@pytest.mark.parametrize("transport", ["h2c", "tls"])
def test_a_download_acknowledged_frame_by_frame_is_no_flood(start_gateway, origin, pki, transport):
    """The other side of the WINDOW_UPDATE budget: a client that answers
    every DATA frame with two WINDOW_UPDATE frames (stream and connection;
    eager, but legal) downloads 4 MiB whole: 512 updates, more than any
    fixed allowance, each explained by a DATA frame the gateway sent."""
    g = tls_gateway(start_gateway, pki) if transport == "tls" else start_gateway(**H2C)
    n = 4 << 20
    sock = tls_socket(g.port, pki) if transport == "tls" else None
    with RawH2(g.addr, sock=sock, timeout=10) as raw:
        raw.headers(1, block=raw.block(path=f"/bytes/{n}", scheme="https" if sock else "http"))
        chunks: list[bytes] = []

        def acknowledge(s):
            # Called after each frame: new DATA bytes are acknowledged at once.
            fresh = s.data.pop(1, b"")
            if fresh:
                chunks.append(fresh)
                raw.send(WindowUpdateFrame(1, window_increment=len(fresh)).serialize()
                         + WindowUpdateFrame(0, window_increment=len(fresh)).serialize())
            return 1 in s.ended or 1 in s.resets or s.goaway is not None

        s = raw.read_frames(time.monotonic() + 60, stop=acknowledge)
    body = b"".join(chunks)
    assert s.goaway is None and 1 not in s.resets, f"goaway={s.goaway} resets={s.resets}"
    assert s.status(1) == 200 and 1 in s.ended
    assert len(body) == n
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(n)


def test_h2load_over_tls_with_many_streams_is_no_flood(start_gateway, origin, pki):
    """nghttp2's own flow control (window updates as it consumes) over many
    concurrent streams, each a 64 KiB answer: every request succeeds."""
    g = tls_gateway(start_gateway, pki)
    r = subprocess.run(
        ["h2load", "-n", "400", "-c", "2", "-m", "20", "-w", "16", "-W", "16",
         f"https://127.0.0.1:{g.port}/bytes/65536"],
        capture_output=True, text=True, timeout=120,
    )
    assert "400 succeeded, 0 failed" in r.stdout, r.stdout + r.stderr
    assert "400 2xx" in r.stdout, r.stdout
