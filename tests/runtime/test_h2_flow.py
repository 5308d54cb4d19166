"""HTTP/2 bodies and flow control through the proxy (hello_gateway, each
test both over h2c by prior knowledge and over TLS by ALPN, the recording
origin): large uploads (with and without content-length) and downloads
compared by SHA-256 on both sides, many
streams with bodies at once on one connection, a client with a tiny
window, clients that reset mid-body (the upstream connection is closed,
never pooled), an upstream that dies or stops reading mid-exchange (only
that stream fails: 504/reset, the others on the connection go on), and a
body over max-body-bytes or paused past body-timeout mid-stream (413/408,
the upstream request aborted on a closed connection).

What test_h2.py covers is not repeated here (translation, drain of quiet
connections, the floods over h2c). Streams are driven together by
`support.h2streams.Streams`.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from support.h2client import CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM, PROTOCOL_ERROR, RawH2
from support.h2streams import Streams, body_of, sha
from support.origin import UnreadingOrigin, pattern_sha256

MiB = 1 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A throwaway CA and a certificate for edge.test it signed."""
    d = tmp_path_factory.mktemp("h2-flow-pki")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=h2 flow CA", "-days", "30")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "edge.key", "-out", "edge.csr", "-subj", "/CN=edge.test")
    (d / "edge.ext").write_text("subjectAltName=DNS:edge.test\n")
    openssl("x509", "-req", "-in", "edge.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "1",
            "-days", "30", "-extfile", "edge.ext", "-out", "edge.crt")
    return d


@pytest.fixture(params=["h2c", "h2-tls"])
def serve(request, start_gateway, pki):
    """Starts a gateway (hello_gateway flags as keywords) that speaks HTTP/2
    by prior knowledge, or over TLS by ALPN; `g.streams(**kw)` opens a
    `Streams` connection to it the same way."""
    tls = request.param == "h2-tls"

    def start(**opts):
        if tls:
            g = start_gateway(protocols="h1,h2", tls_cert=pki / "edge.crt", tls_key=pki / "edge.key", **opts)
        else:
            g = start_gateway(protocols="h1,h2c", **opts)

        def streams(**kw) -> Streams:
            sock = socket.create_connection(("127.0.0.1", g.port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
                ctx.set_alpn_protocols(["h2"])
                sock = ctx.wrap_socket(sock, server_hostname="edge.test")
            return Streams(g.addr, sock=sock, scheme="https" if tls else "http", **kw)

        g.streams = streams
        return g

    return start


# ------------------------------------------------------------- large bodies


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_large_upload_arrives_whole(serve, origin, length):
    """8 MiB up (more than every window: stream 256 KiB, connection 1 MiB),
    with content-length and without (then chunked upstream)."""
    g = serve(max_body_bytes=64 * MiB)
    body = body_of(8 * MiB, 1)
    with g.streams() as s:
        sid = s.start("/sink", method="POST", body=body, length=length)
        r = s.run(60)[sid]
    assert r.ended and r.status == 200, r
    assert r.head.decode().split() == [str(len(body)), sha(body)]
    [req] = origin.wait_requests(1, complete=True)
    assert (req.body_len, req.body_sha256) == (len(body), sha(body))
    if length:
        assert req.header("content-length") == [str(len(body))]
        assert req.framing == "content-length"
    else:
        assert req.framing == "chunked" and not req.header("content-length"), req


def test_large_download_arrives_whole(serve, origin):
    n = 24 * MiB + 123
    with serve().streams() as s:
        sid = s.start(f"/bytes/{n}")
        chunked = s.start(f"/bytes/{n}?chunked=1")
        rs = s.run(90)
    for sid_ in (sid, chunked):
        r = rs[sid_]
        assert r.ended and r.status == 200 and r.reset is None, r
        assert (r.length, r.sha256) == (n, pattern_sha256(n))
    assert rs[sid].header("content-length") == [str(n)]
    assert rs[chunked].header("content-length") == []


def test_many_streams_with_bodies_at_once(serve, origin):
    """24 uploads (half with content-length) and 24 downloads interleaved on
    one connection: every body arrives whole at its own stream."""
    g = serve(max_body_bytes=64 * MiB)
    ups, downs = {}, {}
    with g.streams() as s:
        for i in range(24):
            body = body_of(300_000 + i * 4099, 100 + i)
            ups[s.start(f"/sink?u={i}", method="POST", body=body, length=i % 2 == 0)] = (i, body)
            n = 700_000 + i * 7919
            downs[s.start(f"/bytes/{n}" + ("?chunked=1" if i % 3 == 0 else ""))] = n
        rs = s.run(90)
        assert not s.closed and s.goaway is None
    for sid, (_, body) in ups.items():
        r = rs[sid]
        assert r.ended and r.status == 200, (sid, r)
        assert r.head.decode().split() == [str(len(body)), sha(body)], sid
    for sid, n in downs.items():
        r = rs[sid]
        assert r.ended and r.status == 200, (sid, r)
        assert (r.length, r.sha256) == (n, pattern_sha256(n)), sid
    got = {q.query["u"]: q for q in origin.wait_requests(48, complete=True) if q.path == "/sink"}
    assert len(got) == 24
    for i, body in ups.values():
        assert (got[str(i)].body_len, got[str(i)].body_sha256) == (len(body), sha(body)), i


@pytest.mark.parametrize("window", [16, 1000])
def test_a_tiny_window_still_gets_every_byte(serve, origin, window):
    """SETTINGS_INITIAL_WINDOW_SIZE of a few bytes: the gateway sends DATA
    as small as the window, never more, and the whole body arrives."""
    n = 200_000 if window >= 1000 else 20_000
    with serve().streams(initial_window=window) as s:
        sids = [s.start(f"/bytes/{n}"), s.start(f"/bytes/{n}?chunked=1"), s.start("/hello")]
        rs = s.run(60)
        assert s.goaway is None and not s.closed
    for sid in sids[:2]:
        assert rs[sid].ended and (rs[sid].length, rs[sid].sha256) == (n, pattern_sha256(n)), rs[sid]
    assert rs[sids[2]].ended and rs[sids[2]].head == b"GET /hello\n"


# ------------------------------------------------- resets and broken exchanges


def test_client_reset_mid_download_closes_the_upstream_connection(serve, origin):
    """A stream reset while its 64 MiB answer streams: the upstream
    connection it used is closed (never pooled with the rest of a body in
    it), and the next stream on the connection is served."""
    n = 64 * MiB
    with serve().streams() as s:
        sid = s.start(f"/bytes/{n}")
        s.run(20, until=lambda: s.results[sid].length >= MiB)
        assert s.results[sid].length >= MiB, s.results[sid]
        s.reset(sid)
        [req] = origin.wait_requests(1)
        up = origin.conn(req.conn_id)
        assert origin.wait_for(lambda: up.closed or up.peer_closed, 10), "upstream connection kept after the reset"
        assert up.sent < n, "the origin could send the whole body"
        nxt = s.start("/after-reset")
        rs = s.run(10, until=lambda: s.results[nxt].ended)
        assert rs[nxt].status == 200 and rs[nxt].head == b"GET /after-reset\n"
    after = [q for q in origin.requests if q.path == "/after-reset"]
    assert after and after[0].conn_id != req.conn_id


def test_client_reset_mid_upload_aborts_the_upstream_request(serve, origin):
    """A stream reset in the middle of its declared 8 MiB body: the upstream
    request is never completed and its connection is closed."""
    g = serve(max_body_bytes=64 * MiB)
    body = body_of(8 * MiB, 7)
    with g.streams() as s:
        sid = s.start("/sink", method="POST", body=body)
        s.run(20, until=lambda: len(s.bodies.get(sid, b"")) < len(body) - 2 * MiB)
        s.reset(sid)
        [req] = origin.wait_requests(1)
        up = origin.conn(req.conn_id)
        assert origin.wait_for(lambda: up.closed or up.peer_closed, 10), "upstream connection kept after the reset"
        assert not req.complete and req.body_len < len(body), req
        nxt = s.start("/after-reset")
        rs = s.run(10, until=lambda: s.results[nxt].ended)
        assert rs[nxt].status == 200


def test_upstream_dying_mid_response_resets_only_its_stream(serve, origin):
    """Four streams on one connection; the upstreams of two close (FIN, RST)
    after 10 of their 1000 declared bytes: those streams are reset (never
    ended as if complete), the others finish, the connection goes on."""
    with serve().streams() as s:
        cut = s.start("/cut?n=10")
        cut_rst = s.start("/cut?n=10&mode=reset")
        big = s.start(f"/bytes/{4 * MiB}")
        slow = s.start("/slow?delay=1")
        rs = s.run(30)
        assert s.goaway is None and not s.closed
        for sid in (cut, cut_rst):
            r = rs[sid]
            # 502 if the cut came before anything was relayed (an RST may
            # discard what the gateway had not read yet), else a reset
            # after the 10 bytes: never an ended 200.
            assert (r.status == 502 and r.ended) or (
                r.status == 200 and r.reset is not None and not r.ended and r.length <= 10
            ), r
        assert rs[big].ended and (rs[big].length, rs[big].sha256) == (4 * MiB, pattern_sha256(4 * MiB))
        assert rs[slow].ended and rs[slow].head == b"GET /slow?delay=1\n"
        nxt = s.start("/next")
        assert s.run(10)[nxt].status == 200


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_upstream_that_stops_reading_the_upload_is_504(serve, length):
    """As on HTTP/1.1 (test_upstream_faults): the upstream takes the head,
    then neither reads the body nor answers. Within the response timeout
    of no progress, the stream gets 504 instead of an upload stuck until
    the client gives up; other streams on the connection are served."""
    up = UnreadingOrigin()
    try:
        g = serve(upstream=up.addr, response_timeout=2, body_timeout=30, max_body_bytes=512 * MiB)
        body = b"u" * (64 * MiB)
        with g.streams() as s:
            sid = s.start("/upload", method="POST", body=body, length=length)
            local = s.start("/healthz")
            rs = s.run(30, until=lambda: s.results[sid].status is not None or s.results[sid].reset is not None)
            assert rs[sid].status is not None or rs[sid].reset is not None, (
                "the upload hung for 30 s after the upstream stopped reading it"
            )
            assert rs[sid].status == 504, rs[sid]
            assert len(s.bodies.get(sid, b"")) > 0, "the whole body went through an unreading upstream?"
            assert rs[local].ended and rs[local].status == 200, "the other stream was held up"
    finally:
        up.close()


# ------------------------------------------------- client-side limits mid-body


def test_streamed_body_over_the_limit_aborts_the_upstream_request(serve, origin):
    """A body without content-length that grows past max-body-bytes once
    the upstream request started: 413 to the client, and the upstream
    request is never completed (no terminating chunk) on a connection that
    is closed."""
    g = serve(max_body_bytes=MiB)
    body = body_of(3 * MiB, 9)
    with g.streams() as s:
        sid = s.start("/sink", method="POST", body=body, length=False)
        other = s.start("/other")
        rs = s.run(30)
    assert rs[sid].status == 413, rs[sid]
    assert rs[other].ended and rs[other].status == 200
    [req] = [q for q in origin.wait_requests(2) if q.path == "/sink"]
    up = origin.conn(req.conn_id)
    assert origin.wait_for(lambda: up.closed or up.peer_closed, 10), "upstream connection kept after the 413"
    assert not req.complete and req.body_len <= MiB, req


def test_paused_body_is_408_and_aborts_the_upstream_request(serve, origin):
    """A client that stops sending its declared body for longer than
    body-timeout: 408 (or a reset) at that timeout, the upstream request
    never completed and its connection closed; the connection's other
    streams are still served."""
    g = serve(body_timeout=1)
    with g.streams() as s:
        sid = s.start("/sink", method="POST", body=b"x" * 100, headers=[("content-length", "1000")], length=False,
                      end=False)
        rs = s.run(15, until=lambda: s.results[sid].status is not None or s.results[sid].reset is not None)
        assert rs[sid].status == 408 or rs[sid].reset is not None, rs[sid]
        nxt = s.start("/next")
        assert s.run(10, until=lambda: s.results[nxt].ended)[nxt].status == 200
    [req] = [q for q in origin.wait_requests(2) if q.path == "/sink"]
    up = origin.conn(req.conn_id)
    assert origin.wait_for(lambda: up.closed or up.peer_closed, 10), "upstream connection kept after the 408"
    assert not req.complete and req.body_len == 100, req


# ------------------------------------------------------------------ drain


def test_drain_lets_bodies_in_flight_finish(serve, origin):
    """SIGTERM while a large upload and a large download stream on one
    connection: GOAWAY(NO_ERROR), both bodies arrive whole (the upload's
    upstream pauses before reading it, the download's mid-body), and the
    gateway exits 0."""
    g = serve(max_body_bytes=64 * MiB, grace=20)
    up = body_of(8 * MiB, 3)
    n = 16 * MiB
    with g.streams() as s:
        sink = s.start("/sink?pause_body=0.5", method="POST", body=up)
        down = s.start(f"/bytes/{n}?pause=1")
        s.run(10, until=lambda: s.results[down].length >= MiB)
        g.signal(signal.SIGTERM)
        rs = s.run(30, until=lambda: s.goaway is not None)
        assert s.goaway == 0, "no GOAWAY(NO_ERROR) after SIGTERM"
        rs = s.run(30)
        assert rs[sink].ended and rs[sink].head.decode().split() == [str(len(up)), sha(up)], rs[sink]
        assert rs[down].ended and (rs[down].length, rs[down].sha256) == (n, pattern_sha256(n)), rs[down]
    assert g.terminate(timeout=30) == 0


# ------------------------------------------------------------------ idle


@pytest.mark.parametrize("kind", ["ping", "window-update", "settings"])
def test_frames_that_are_no_request_do_not_keep_a_connection(serve, kind):
    """idle-timeout is "a keep-alive connection with no request is closed
    after this": a client that made one request, then only sends PINGs
    (or WINDOW_UPDATEs, or empty SETTINGS) twice a second, gets
    GOAWAY(NO_ERROR) after the idle timeout like a silent one."""
    g = serve(idle_timeout=2)
    make = {
        "ping": lambda: PingFrame(0, opaque_data=b"12345678"),
        "window-update": lambda: WindowUpdateFrame(0, window_increment=1),
        "settings": lambda: SettingsFrame(0, settings={}),
    }[kind]
    with g.streams() as s:
        sid = s.start("/first")
        assert s.run(10)[sid].status == 200
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and s.goaway is None and not s.closed:
            s.sock.sendall(make().serialize())
            s.run(0.5, until=lambda: s.goaway is not None)
        assert s.goaway == 0 or s.closed, f"still open 15 s past a 2 s idle timeout, kept by {kind} frames"


@pytest.mark.slow
@pytest.mark.timeout(180, func_only=True)
def test_idle_connections_stay_small(serve, request):
    """RELIABILITY.md: "idle connections cost a few KiB each". 1,000 idle
    HTTP/2 connections that each made one request: the gateway keeps no
    buffer of a frame's size for them (a small posted read, no write
    buffer, rustls' own small ones over TLS). What is left is mostly the
    `h2` crate's per-connection state (its read and write buffers, 24 KiB
    allocated, are part of it), so the bound is loose against "a few
    KiB"; a fixed 16 KiB read and write buffer per connection (37 KiB in
    cleartext, 56 KiB over TLS, measured before) breaks it."""
    import resource

    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 500), hard))
    g = serve()
    tls = request.node.callspec.params["serve"] == "h2-tls"

    def one() -> Streams:
        s = g.streams()
        sid = s.start("/idle")
        assert s.run(10)[sid].status == 200
        return s

    for s in [one() for _ in range(100)]:  # warm the allocator
        s.close()
    time.sleep(0.5)
    before = g.rss_kib()
    conns = []
    try:
        for _ in range(n):
            conns.append(one())
        time.sleep(0.5)
        per = (g.rss_kib() - before) / n
        print(f"\n{n} idle HTTP/2 connections ({'TLS' if tls else 'h2c'}): {per:.1f} KiB each")
        for s in conns[:: n // 10]:  # still open and usable
            sid = s.start("/again")
            assert s.run(10)[sid].status == 200
        assert per < (44 if tls else 30), f"{per:.1f} KiB per idle connection"
    finally:
        for s in conns:
            s.close()


# ------------------------------------------------------- attacks over TLS
# test_h2.py runs each RELIABILITY.md attack over h2c; these are the same
# floods through the TLS stack (rustls records, ALPN h2), with a
# well-behaved TLS client on another connection served throughout.


def _flood_ping(raw: RawH2) -> None:
    for _ in range(50):
        if not raw.send(PingFrame(0, opaque_data=b"12345678").serialize() * 400):
            return


def _flood_settings(raw: RawH2) -> None:
    for _ in range(50):
        if not raw.send(SettingsFrame(0, settings={0x4: 65535}).serialize() * 400):
            return


def _rapid_reset(raw: RawH2) -> None:
    sid = 1
    for _ in range(20):
        batch = b""
        for _ in range(500):
            h = HeadersFrame(sid, flags=["END_STREAM", "END_HEADERS"])
            h.data = raw.block(path=f"/rr/{sid}", scheme="https")
            batch += h.serialize() + RstStreamFrame(sid, error_code=CANCEL).serialize()
            sid += 2
        if not raw.send(batch):
            return


def _continuation_flood(raw: RawH2) -> None:
    raw.headers(1, block=raw.block(scheme="https"), end_headers=False)
    junk = raw.enc.encode([("x-flood", "a" * 100)])
    for _ in range(2000):
        if not raw.frame(ContinuationFrame(1, data=junk)):
            return


def _hpack_bomb(raw: RawH2) -> None:
    raw.headers(1, block=raw.block(extra=[("x-bomb", "a" * 4000)], scheme="https"))
    raw.headers(3, block=raw.block(scheme="https") + b"\xbe" * 10000)


class TlsBystander(threading.Thread):
    """A well-behaved client on its own TLS connections, requesting until stopped."""

    def __init__(self, g):
        super().__init__(daemon=True)
        self.g, self.ok, self.bad, self.stop = g, 0, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                with self.g.streams() as s:
                    for i in range(20):
                        if self.stop.is_set():
                            return
                        sid = s.start(f"/bystander/{i}")
                        r = s.run(10, until=lambda: s.results[sid].ended or s.results[sid].reset is not None)[sid]
                        if r.ended and r.status == 200:
                            self.ok += 1
                        else:
                            self.bad.append(repr(r))
                        time.sleep(0.02)
            except Exception as e:  # noqa: BLE001 - asserted by the test
                self.bad.append(repr(e))
                time.sleep(0.1)


@pytest.mark.parametrize(
    "attack", [_flood_ping, _flood_settings, _rapid_reset, _continuation_flood, _hpack_bomb],
    ids=["ping-flood", "settings-flood", "rapid-reset", "continuation-flood", "hpack-bomb"],
)
def test_attacks_over_tls_end_the_connection_in_bounded_memory(start_gateway, pki, attack):
    g = start_gateway(protocols="h1,h2", tls_cert=pki / "edge.crt", tls_key=pki / "edge.key")
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.set_alpn_protocols(["h2"])

    def tls_socket():
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", g.port), timeout=5), server_hostname="edge.test")

    g.streams = lambda **kw: Streams(g.addr, sock=tls_socket(), scheme="https", **kw)
    rss0 = g.rss_kib()
    by = TlsBystander(g)
    by.start()
    try:
        time.sleep(0.5)
        before = by.ok
        with RawH2(g.addr, sock=tls_socket(), timeout=5) as raw:
            attack(raw)
            s = raw.ended_by_server(timeout=10)
            peak = g.rss_kib()
        time.sleep(0.5)
    finally:
        by.stop.set()
        by.join(15)
    print(f"{attack.__name__} over TLS: goaway={s.goaway} closed={s.closed} rss {rss0} -> {peak} KiB")
    assert s.goaway in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR, COMPRESSION_ERROR) or s.closed, s.frames[-10:]
    assert peak - rss0 < 64 * 1024, f"RSS grew {peak - rss0} KiB"
    assert not by.bad, f"the well-behaved TLS client was refused: {by.bad[:3]}"
    assert by.ok > before, "the well-behaved TLS client got no answer during the attack"
    assert g.alive()
