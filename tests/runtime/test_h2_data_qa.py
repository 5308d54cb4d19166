"""A black-box QA pass over the HTTP/2 *data path* (issue #5), written from
RFC 9113 (§5.1 stream states, §5.2 and §6.9 flow control, §8.1 message
framing, §8.2 fields), RFC 9110 and RELIABILITY.md, against hello_gateway
with real clients (Python `h2`/`hyperframe` over raw sockets and `ssl`,
curl, h2load) and origins the tests start.

What test_h2.py, test_h2_flow.py, test_tls_h2_qa.py and test_h2spec.py
already cover (floods, TLS versions/ALPN/SNI, header translation, 8 MiB and
24 MiB bodies, 48 streams, a 16-byte window, resets closing the upstream
connection) is not repeated. This file checks data integrity and flow
control at the edges, most tests over h2c and over TLS (`serve`):

- bodies of every awkward size both ways (0, 1, a frame, a window, one
  past them; with and without content-length; content-length or chunked
  upstream), hashed at the origin and at the client; 16 MiB each way;
  h2load, curl and nghttp uploading and downloading; empty bodies in every
  spelling; HTTP/1.1 over TLS around record sizes;
- the client's windows: SETTINGS_INITIAL_WINDOW_SIZE 0 then raised, a
  window made negative mid-download (§6.9.2) or overflowed by a SETTINGS
  change, a response read one byte per WINDOW_UPDATE (whole, and with the
  origin held back), a larger SETTINGS_MAX_FRAME_SIZE, a client that stops
  reading its socket, slow but steady bodies past body-timeout; padded,
  one-byte and empty DATA frames up; refused uploads giving their window
  back;
- resets and cuts: a client resetting a download whose upstream is quiet
  (the upstream connection must not wait for the response timeout), a
  client resetting or dropping a chunked upload (the origin must never see
  the terminating chunk), upstream answers that break their framing (more
  bytes than declared, a HEAD/204 with a body, a 304 with a length or
  chunked, a broken chunk, a stall mid-body, close-delimited bodies), each
  followed by requests that must get their own bodies; content-length
  spellings and trailers that end a body short; a client GOAWAY that must
  not cut the client's own streams;
- the pool shared by HTTP/1.1 and HTTP/2 clients (and an origin closing a
  pooled connection before an upload); Expect: 100-continue with an
  upstream answering early; unasked 1xx during an upload; request trailers
  and `te: trailers` (not forwarded); response trailers (not relayed);
  `Upgrade: h2c` (ignored); bodies streamed without waiting for more; a
  mixed load with resets that must never mix or truncate bodies;
- a `blitzc build` gateway with TLS on both sides (HTTP/2 over TLS in
  front, a TLS upstream behind): bodies both ways, and a reset while the
  TLS upstream is quiet.

Found and fixed with these tests: a stream reset while its upstream was
quiet mid-body kept the upstream connection until the response timeout;
an upload sent as one-byte DATA frames got GOAWAY(ENHANCE_YOUR_CALM) (the
`h2` crate's budget for buffered small frames, spent while the gateway
wrote one frame per upstream write).
"""

from __future__ import annotations

import hashlib
import os
import http.client
import socket
import ssl
import subprocess
import threading
import time
import zlib
from pathlib import Path

import h2.connection
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from support.h2client import CANCEL, RawH2
from support.h2streams import Result, Streams, body_of, sha
from support.origin import default_handler, pattern, pattern_sha256
from support.pki import Pki

MiB = 1 << 20
H2C = {"protocols": "h1,h2c"}


# ------------------------------------------------------------------ setup


def tls_socket(port: int, pki: Pki) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(raw, server_hostname="edge.test")
    assert s.selected_alpn_protocol() == "h2"
    return s


class Gw:
    """A started gateway and how to open HTTP/2 connections to it (h2c by
    prior knowledge, or TLS with ALPN h2)."""

    def __init__(self, g, tls: bool, pki: Pki):
        self.g, self.tls, self.pki = g, tls, pki

    def sock(self) -> socket.socket:
        if self.tls:
            return tls_socket(self.g.port, self.pki)
        s = socket.create_connection(("127.0.0.1", self.g.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def streams(self, **kw) -> "DataStreams":
        return DataStreams(self.g.addr, sock=self.sock(), scheme="https" if self.tls else "http", **kw)

    def raw(self, settings: dict | None = None) -> RawH2:
        return RawH2(self.g.addr, sock=self.sock(), settings=settings)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


@pytest.fixture(params=["h2c", "h2-tls"])
def serve(request, start_gateway, pki):
    """serve(**hello_gateway flags) -> Gw, over h2c and over TLS."""
    tls = request.param == "h2-tls"

    def start(**opts) -> Gw:
        if tls:
            g = start_gateway(protocols="h1,h2", tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), **opts)
        else:
            g = start_gateway(**H2C, **opts)
        return Gw(g, tls, pki)

    return start


class DataStreams(Streams):
    """`Streams` that can also send an empty body (`body=b""`): HEADERS
    without END_STREAM, then an empty DATA frame with END_STREAM."""

    def start(self, path, method="GET", body=None, length=True, headers=(), authority="a.test", end=True):
        if body != b"":
            return super().start(path, method, body, length, headers, authority, end)
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", self.scheme), (":authority", authority), (":path", path)]
        hdrs += [("content-length", "0")] if length else []
        self.conn.send_headers(sid, hdrs + list(headers), end_stream=False)
        self.conn.send_data(sid, b"", end_stream=True)
        self.results[sid] = Result()
        self.flush()
        return sid


def sink_answer(body: bytes) -> list[str]:
    return [str(len(body)), sha(body)]


# ------------------------------------------------------------ body sizes

SIZES = [0, 1, 16383, 16384, 16385, 65535, 65536, 65537, 262144, 262145, MiB + 1, 3 * MiB + 7]


def test_bodies_of_edge_sizes_both_ways(serve, origin):
    """Every size around a frame (16 KiB), the default window (65535), the
    gateway's stream window (256 KiB) and connection window (1 MiB), up with
    content-length, up without (chunked upstream), down with content-length
    and down chunked, all at once on one connection: each body arrives whole
    and in its own stream, at the origin and at the client."""
    gw = serve(max_body_bytes=64 * MiB)
    ups, downs = {}, {}
    with gw.streams() as s:
        for i, n in enumerate(SIZES):
            for length in (True, False):
                body = body_of(n, 1000 + 2 * i + length)
                sid = s.start(f"/sink?n={n}&cl={int(length)}", method="POST", body=body, length=length)
                ups[sid] = (n, length, body)
            downs[s.start(f"/bytes/{n}")] = n
            downs[s.start(f"/bytes/{n}?chunked=1")] = n
        rs = s.run(90)
        assert s.goaway is None and not s.closed
    for sid, (n, length, body) in ups.items():
        r = rs[sid]
        assert r.ended and r.status == 200 and r.reset is None, (n, length, r)
        assert r.head.decode().split() == sink_answer(body), (n, length)
    for sid, n in downs.items():
        r = rs[sid]
        assert r.ended and r.status == 200 and r.reset is None, (n, r)
        assert (r.length, r.sha256) == (n, pattern_sha256(n)), (sid, n)
    got = [q for q in origin.wait_requests(len(ups) + len(downs), complete=True) if q.path == "/sink"]
    seen = {(q.query["n"], q.query["cl"]): q for q in got}
    assert len(seen) == len(ups)
    for n, length, body in ups.values():
        q = seen[(str(n), str(int(length)))]
        assert q.complete and (q.body_len, q.body_sha256) == (n, sha(body)), q
        if length:
            assert q.header("content-length") == [str(n)], q
        else:
            assert q.framing == "chunked" and not q.header("content-length"), q


@pytest.mark.slow
def test_sixteen_mib_each_way_at_once(serve, origin):
    """16 MiB up (with and without content-length) and 16 MiB down (both
    framings) on one connection at the same time."""
    gw = serve(max_body_bytes=64 * MiB)
    n = 16 * MiB
    up = body_of(n, 16)
    with gw.streams() as s:
        a = s.start("/sink?k=a", method="POST", body=up)
        b = s.start("/sink?k=b", method="POST", body=up, length=False)
        c = s.start(f"/bytes/{n}")
        d = s.start(f"/bytes/{n}?chunked=1")
        rs = s.run(100)
    for sid in (a, b):
        assert rs[sid].ended and rs[sid].head.decode().split() == sink_answer(up), rs[sid]
    for sid in (c, d):
        assert rs[sid].ended and (rs[sid].length, rs[sid].sha256) == (n, pattern_sha256(n)), rs[sid]
    reqs = [q for q in origin.wait_requests(4, complete=True) if q.path == "/sink"]
    assert sorted((q.query["k"], q.body_len, q.body_sha256) for q in reqs) == [("a", n, sha(up)), ("b", n, sha(up))]


def test_zero_length_bodies_in_every_spelling(serve, origin):
    """RFC 9113 §8.1: a request without content is HEADERS with END_STREAM
    (with or without `content-length: 0`), or HEADERS then an empty DATA
    frame with END_STREAM (with or without it). Each is a complete request
    at the origin with an empty body, answered whole."""
    gw = serve()
    with gw.streams() as s:
        cases = {
            s.start("/sink?c=headers-only", method="POST"): "headers-only",
            s.start("/sink?c=headers-cl0", method="POST", headers=[("content-length", "0")]): "headers-cl0",
            s.start("/sink?c=get-cl0", method="GET", headers=[("content-length", "0")]): "get-cl0",
            s.start("/sink?c=empty-data-cl0", method="POST", body=b""): "empty-data-cl0",
            s.start("/sink?c=empty-data", method="POST", body=b"", length=False): "empty-data",
        }
        rs = s.run(20)
    for sid, name in cases.items():
        assert rs[sid].ended and rs[sid].status == 200, (name, rs[sid])
        assert rs[sid].head.decode().split() == sink_answer(b""), (name, rs[sid])
    got = {q.query["c"]: q for q in origin.wait_requests(len(cases), complete=True)}
    assert set(got) == set(cases.values())
    for name, q in got.items():
        assert q.complete and q.body_len == 0, (name, q)
        # Never a declared length that disagrees with the (empty) body.
        assert q.header("content-length") in ([], ["0"]), (name, q)


def test_h2load_uploads_arrive_whole(start_gateway, origin, tmp_path):
    """nghttp2's client (its own flow control and DATA sizes): 200 uploads
    of 300 KiB (more than a stream window) over 4 connections, 10 streams
    each at a time: every one complete and intact at the origin."""
    g = start_gateway(**H2C, max_body_bytes=8 * MiB)
    body = body_of(300 * 1024 + 3, 77)
    f = tmp_path / "up.bin"
    f.write_bytes(body)
    r = subprocess.run(["h2load", "-n", "200", "-c", "4", "-m", "10", "-d", str(f), g.url + "/sink"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "200 succeeded" in r.stdout and "200 2xx" in r.stdout, r.stdout
    reqs = origin.wait_requests(200, complete=True)
    assert len(reqs) == 200
    bad = [q for q in reqs if (q.body_len, q.body_sha256) != (len(body), sha(body))]
    assert not bad, bad[:3]


def test_curl_over_tls_downloads_in_parallel_and_uploads(start_gateway, origin, pki, tmp_path):
    """curl --http2 over TLS: eight downloads of different sizes multiplexed
    on one connection (-Z), each file intact; then an upload of 5 MiB
    answered with its own hash."""
    g = start_gateway(protocols="h1,h2", tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"),
                      max_body_bytes=64 * MiB)
    sizes = [0, 1, 65535, 65536, 1 << 20, 3 * MiB + 5, 77777, 5 * MiB]
    base = f"https://edge.test:{g.port}"
    cmd = ["curl", "-sS", "--http2", "--cacert", str(pki.path("ca.crt")), "--resolve", f"edge.test:{g.port}:127.0.0.1",
           "-Z", "--parallel-max", "8", "-w", "%{http_version} %{num_connects}\\n"]
    for i, n in enumerate(sizes):
        cmd += [f"{base}/bytes/{n}" + ("?chunked=1" if i % 2 else ""), "-o", str(tmp_path / f"d{i}")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert all(ln.split()[0] == "2" for ln in r.stdout.split("\n") if ln.strip()), r.stdout
    for i, n in enumerate(sizes):
        data = (tmp_path / f"d{i}").read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (n, pattern_sha256(n)), (i, n)
    up = body_of(5 * MiB, 5)
    (tmp_path / "up").write_bytes(up)
    r = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(pki.path("ca.crt")), "--resolve",
                        f"edge.test:{g.port}:127.0.0.1", "--data-binary", f"@{tmp_path / 'up'}", f"{base}/sink"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == sink_answer(up), (r.stdout, r.stderr)


# ------------------------------------------------------------ flow control


def _data_since(raw: RawH2, sid: int) -> bytes:
    return raw.seen.data.pop(sid, b"")


def _read_acking(c: RawH2, got: bytearray, seconds: float, enough=None, connection: bool = False):
    """Reads stream 1, collecting its DATA into `got` and giving each batch
    back to the stream's window (and the connection's, if `connection`) as
    it comes; stops when the stream ends or is reset, the connection goes
    away, or `enough(got)`."""

    def ack(s):
        fresh = _data_since(c, 1)
        if fresh:
            got.extend(fresh)
            update = WindowUpdateFrame(1, window_increment=len(fresh)).serialize()
            if connection:
                update = WindowUpdateFrame(0, window_increment=len(fresh)).serialize() + update
            c.send(update)
        done = 1 in s.ended or 1 in s.resets or s.goaway is not None
        return done or (enough is not None and enough(got))

    return c.read_frames(time.monotonic() + seconds, stop=ack)


def test_initial_window_zero_then_raised(serve, origin):
    """SETTINGS_INITIAL_WINDOW_SIZE 0 (§6.5.2): the gateway answers the head
    but sends no DATA; once the client raises the setting to 65535 the
    window opens (§6.9.2) and the whole body comes (the connection window is
    widened as data arrives)."""
    gw = serve()
    n = 300_000
    with gw.raw(settings={0x4: 0}) as c:
        c.headers(1, path=f"/bytes/{n}", scheme=gw.scheme)
        s = c.read_frames(time.monotonic() + 1.5, stop=lambda s: 1 in s.data)
        assert s.status(1) == 200 and 1 not in s.data, s.frames
        c.frame(SettingsFrame(0, settings={0x4: 65535}))
        got = bytearray()
        s = _read_acking(c, got, 20, connection=True)
    assert 1 in s.ended and s.goaway is None and 1 not in s.resets, s.frames[-5:]
    assert (len(got), hashlib.sha256(got).hexdigest()) == (n, pattern_sha256(n))


def test_a_window_made_negative_mid_download(serve, origin):
    """§6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE lowered mid-stream can make a
    window negative; the sender must then send no DATA until WINDOW_UPDATEs
    make it positive. The client takes 65535 bytes unacknowledged, lowers the
    setting to 0 (window now -65535), checks that nothing more comes once
    its SETTINGS is acknowledged, then raises it and reads on: the body is
    whole."""
    gw = serve()
    n = 2 * MiB
    with gw.raw() as c:
        c.frame(WindowUpdateFrame(0, window_increment=16 * MiB))
        c.headers(1, path=f"/bytes/{n}", scheme=gw.scheme)
        got = bytearray()
        s = c.read_frames(time.monotonic() + 10, stop=lambda s: len(s.data.get(1, b"")) >= 65535)
        got += _data_since(c, 1)
        assert len(got) == 65535, (len(got), s.frames[-5:])  # the initial window, not a byte more
        acks = s.settings_acks
        c.frame(SettingsFrame(0, settings={0x4: 0}))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: s.settings_acks > acks)
        assert s.settings_acks > acks
        got += _data_since(c, 1)
        # The window is -65535 + 0: a WINDOW_UPDATE of 65535 only brings it to 0.
        c.frame(WindowUpdateFrame(1, window_increment=65535))
        s = c.read_frames(time.monotonic() + 1.5)
        assert not s.data.get(1), f"{len(s.data.get(1, b''))} bytes sent on a window of 0 or less"
        c.frame(SettingsFrame(0, settings={0x4: 1 << 20}))
        s = _read_acking(c, got, 20)
    assert 1 in s.ended and 1 not in s.resets and s.goaway is None, s.frames[-5:]
    assert (len(got), hashlib.sha256(got).hexdigest()) == (n, pattern_sha256(n))


def test_a_body_read_one_byte_per_window_update(serve, origin):
    """A client with a 1-byte stream window that opens it one byte at a time
    after each byte it gets: every DATA frame carries one byte, the body is
    whole, and this slow but steady reader is no flood (each WINDOW_UPDATE
    is answered by DATA)."""
    gw = serve()
    n = 3000
    with gw.raw(settings={0x4: 1}) as c:
        c.headers(1, path=f"/bytes/{n}", scheme=gw.scheme)
        got = bytearray()
        s = _read_acking(c, got, 40)
    assert 1 in s.ended and 1 not in s.resets and s.goaway is None, (len(got), s.frames[-5:])
    assert (len(got), hashlib.sha256(got).hexdigest()) == (n, pattern_sha256(n))
    assert s.frames.count("DataFrame") >= n, "DATA frames larger than the 1-byte window"


def test_a_slow_reader_holds_back_the_upstream(serve, origin):
    """A 256 MiB answer to a client that reads it byte by byte: what the
    gateway takes from the origin stays bounded (its per-stream send buffer
    and the socket buffers, not the body), and its memory too; the reset at
    the end closes the upstream connection."""
    gw = serve()
    n = 256 * MiB
    rss0 = gw.g.rss_kib()
    with gw.raw(settings={0x4: 1}) as c:
        c.headers(1, path=f"/bytes/{n}", scheme=gw.scheme)
        got = bytearray()
        s = _read_acking(c, got, 30, enough=lambda got: len(got) >= 1500)
        assert len(got) >= 1500 and 1 not in s.resets, s.frames[-5:]
        time.sleep(1)  # let the origin push all the socket buffers take
        [req] = origin.wait_requests(1)
        up = origin.conn(req.conn_id)
        pushed, rss = up.sent, gw.g.rss_kib()
        c.frame(RstStreamFrame(1, error_code=CANCEL))
        assert origin.wait_for(lambda: up.closed or up.peer_closed, 10), "upstream kept after the reset"
    print(f"slow reader: origin pushed {pushed >> 10} KiB, rss {rss0} -> {rss} KiB")
    assert bytes(got) == pattern(n)[: len(got)]
    assert pushed < 32 * MiB, f"the gateway took {pushed >> 20} MiB from the origin for a reader of 1500 bytes"
    assert rss - rss0 < 32 * 1024


def test_a_larger_max_frame_size_is_honoured_and_never_exceeded(serve, origin):
    """The client allows frames of up to 2^24-1 bytes: DATA may be larger
    than 16 KiB but never larger than the setting, and never larger than the
    window; the body is whole."""
    gw = serve()
    n = 5 * MiB + 3
    with gw.raw(settings={0x5: (1 << 24) - 1, 0x4: 1 << 30}) as c:
        c.frame(WindowUpdateFrame(0, window_increment=(1 << 30)))
        c.headers(1, path=f"/bytes/{n}", scheme=gw.scheme)
        s = c.read_frames(time.monotonic() + 30, stop=lambda s: 1 in s.ended or 1 in s.resets or s.goaway is not None)
        body = s.data.get(1, b"")
    assert 1 in s.ended and (len(body), hashlib.sha256(body).hexdigest()) == (n, pattern_sha256(n)), s.frames[-5:]


def _padded_data(sid: int, data: bytes, pad: int, end: bool = False) -> bytes:
    f = DataFrame(sid, data=data, flags=["PADDED"] + (["END_STREAM"] if end else []))
    f.pad_length = pad
    return f.serialize()


def test_padded_data_frames_up(serve, origin):
    """§6.1: padding counts against flow control but is no content. 2 MiB
    sent as 1000-byte DATA frames each padded with 255 bytes (half a MiB of
    padding, twice the stream window): the gateway must give the padding's
    window back too, or the upload stalls; the origin gets exactly the
    content."""
    gw = serve(max_body_bytes=64 * MiB, body_timeout=5)
    body = body_of(2 * MiB, 3)
    with gw.raw() as c:
        c.headers(1, method="POST", path="/sink", scheme=gw.scheme, end_stream=False,
                  extra=[("content-length", str(len(body)))])
        # Send as the windows allow: track them from the server's updates.
        conn_win, stream_win, pos = 65535, 65535, 0
        # The gateway's SETTINGS raise the stream window (256 KiB) and it
        # widens the connection's with a WINDOW_UPDATE: start with what
        # the RFC guarantees and add every update.
        deadline = time.monotonic() + 30
        buf = b""
        while pos < len(body) and time.monotonic() < deadline:
            while pos < len(body) and min(conn_win, stream_win) >= 1256:
                chunk = body[pos:pos + 1000]
                pos += len(chunk)
                c.send(_padded_data(1, chunk, 255, end=pos == len(body)))
                conn_win -= len(chunk) + 256
                stream_win -= len(chunk) + 256
            if pos == len(body):
                break
            c.sock.settimeout(0.5)
            try:
                data = c.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            buf += data
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                f, _ = Frame.parse_frame_header(memoryview(buf[:9]))
                f.parse_body(memoryview(buf[9:9 + length]))
                buf = buf[9 + length:]
                if isinstance(f, WindowUpdateFrame):
                    if f.stream_id == 0:
                        conn_win += f.window_increment
                    elif f.stream_id == 1:
                        stream_win += f.window_increment
                elif isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                    if 0x4 in f.settings:
                        stream_win += f.settings[0x4] - 65535
                    c.frame(SettingsFrame(0, flags=["ACK"]))
        assert pos == len(body), f"upload stalled at {pos} of {len(body)} bytes (windows {conn_win}, {stream_win})"
        c.buf = buf
        s = c.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended or 1 in s.resets)
    assert s.status(1) == 200 and s.data[1].decode().split() == sink_answer(body), s
    [q] = origin.wait_requests(1, complete=True)
    assert (q.body_len, q.body_sha256) == (len(body), sha(body))


@pytest.mark.parametrize("writes", ["one-write", "a-write-per-frame"])
def test_one_byte_data_frames_up(serve, origin, writes):
    """A client that sends its 4000-byte body one byte per DATA frame (a
    keyboard-speed or badly buffered client), all in one write or each
    frame in its own write (its own TCP segment, and over TLS its own
    record): wasteful but legal; the body arrives whole, chunked
    upstream."""
    gw = serve()
    body = body_of(4000, 9)
    with gw.raw() as c:
        c.headers(1, method="POST", path="/sink", scheme=gw.scheme, end_stream=False)
        frames = [DataFrame(1, data=body[i:i + 1], flags=["END_STREAM"] if i == len(body) - 1 else []).serialize()
                  for i in range(len(body))]
        if writes == "one-write":
            c.send(b"".join(frames))
        else:
            for f in frames:
                c.send(f)
        s = c.read_frames(time.monotonic() + 15, stop=lambda s: 1 in s.ended or 1 in s.resets or s.goaway is not None)
    assert s.goaway is None and s.status(1) == 200 and s.data[1].decode().split() == sink_answer(body), s
    [q] = origin.wait_requests(1, complete=True)
    assert (q.body_len, q.body_sha256) == (len(body), sha(body))


# ---------------------------------------------------- resets and cuts


def _head_then_pause(req, conn):
    """Declares 1 MiB, sends 1000 bytes, then waits for the gateway to go."""
    if req.path == "/paused":
        conn.send(f"HTTP/1.1 200 OK\r\nx-origin-conn: {conn.id}\r\ncontent-length: {MiB}\r\n\r\n".encode()
                  + b"p" * 1000)
        conn.wait_peer_close(60)
        return False
    return default_handler(req, conn)


def _reset_a_paused_download(s, origin):
    """Starts `/paused` (the origin sends its head and 1000 body bytes, then
    nothing), resets it once those arrived, and waits up to 10 s for the
    origin to see its upstream connection closed. Returns the upstream
    request and whether it was freed."""
    sid = s.start("/paused")
    s.run(10, until=lambda: s.results[sid].length >= 1000)
    assert s.results[sid].length == 1000, s.results[sid]
    s.reset(sid)
    [req] = origin.wait_requests(1)
    up = origin.conn(req.conn_id)
    return req, origin.wait_for(lambda: up.closed or up.peer_closed, 10)


def test_reset_of_a_download_whose_upstream_is_paused_frees_the_upstream(serve, origin):
    """A stream reset while its upstream is silent mid-body (a slow origin,
    a long poll): the upstream connection is closed at once, not held until
    the response timeout (60 s here) or the origin's next bytes. Otherwise
    each reset stream keeps an upstream connection: a client opening and
    resetting streams against a slow route pins them by the hundred."""
    origin.handler = _head_then_pause
    gw = serve(response_timeout=60)
    with gw.streams() as s:
        _, freed = _reset_a_paused_download(s, origin)
        nxt = s.start("/after")
        rs = s.run(10, until=lambda: s.results[nxt].ended)
    assert freed, "the upstream connection was still open 10 s after the client reset its stream"
    assert rs[nxt].status == 200 and rs[nxt].head == b"GET /after\n"
    # A stream the client gave up is never tried again.
    assert [q.path for q in origin.requests] == ["/paused", "/after"]


@pytest.mark.parametrize("how", ["rst-stream", "tcp-close", "goaway-then-close"])
def test_a_chunked_upload_cut_by_the_client_is_never_completed_upstream(serve, origin, how):
    """An upload without content-length goes up chunked; if the client resets
    the stream, or its connection drops, mid-body, the origin must never get
    the terminating chunk (it would take the cut body for a whole one)."""
    gw = serve(max_body_bytes=64 * MiB)
    part = body_of(300_000, 4)
    with gw.raw() as c:
        c.headers(1, method="POST", path="/sink", scheme=gw.scheme, end_stream=False)
        for i in range(0, len(part), 16384):
            c.frame(DataFrame(1, data=part[i:i + 16384]))
            if i > 60000:
                c.read_frames(time.monotonic() + 0.05)  # SETTINGS, WINDOW_UPDATEs
        assert origin.wait_for(lambda: origin.requests and origin.requests[0].body_len > 0, 10)
        if how == "rst-stream":
            c.frame(RstStreamFrame(1, error_code=CANCEL))
        elif how == "goaway-then-close":
            c.frame(GoAwayFrame(0, last_stream_id=0, error_code=0))
            c.sock.shutdown(socket.SHUT_WR)
        if how != "rst-stream":
            c.close()
        [req] = origin.wait_requests(1)
        up = origin.conn(req.conn_id)
        assert origin.wait_for(lambda: up.closed or up.peer_closed, 10), "upstream connection kept"
    assert not req.complete and req.framing == "chunked", req
    assert b"0\r\n\r\n" not in origin.raw_since_reset()


def _bad_framing(req, conn):
    p = req.path
    if p == "/more-than-declared":
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged")
        conn.wait_peer_close(10)
        return False
    if p == "/head-with-body":  # a HEAD answered with a body
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged")
        conn.wait_peer_close(10)
        return False
    if p == "/204-with-body":
        conn.send(b"HTTP/1.1 204 No Content\r\n\r\nforged")
        conn.wait_peer_close(10)
        return False
    if p == "/304-with-length":  # legal: the length of the representation, no body follows
        return conn.send(b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\ncontent-length: 100\r\n\r\n')
    if p == "/304-chunked":  # a 304 has no body whatever it says of its framing
        return conn.send(b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\ntransfer-encoding: chunked\r\n\r\n')
    if p == "/bad-chunk":
        conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nforged\r\n0\r\n\r\n")
        conn.wait_peer_close(10)
        return False
    if p == "/stall-mid-body":
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"s" * 10)
        conn.wait_peer_close(30)
        return False
    return default_handler(req, conn)


@pytest.mark.parametrize(
    "method,path,want",
    [
        ("GET", "/more-than-declared", "hello"),
        ("HEAD", "/head-with-body", ""),
        ("GET", "/204-with-body", ""),
        ("GET", "/304-with-length", ""),
        ("GET", "/304-chunked", ""),
        ("GET", "/bad-chunk", "502-or-reset"),
        ("GET", "/stall-mid-body", "reset"),
    ],
)
def test_upstream_answers_that_break_their_framing(serve, origin, method, path, want):
    """An upstream answer with bytes beyond its framing (more than its
    content-length, a body on HEAD or 204) is relayed as declared and its
    connection is never used again, so the extra bytes never become the
    answer to the next stream; a stall mid-body resets the stream (never an
    END_STREAM on a cut body), and so does a broken chunk, unless it came
    with the head (one write here, so most often one read): then nothing
    went to the client yet and it gets a 502, as on HTTP/1.1. A 304 may declare a length
    without a body: the connection stays in sync. Each time the next stream
    on the connection gets its own answer."""
    origin.handler = _bad_framing
    gw = serve(response_timeout=2, workers=1)
    with gw.streams() as s:
        sid = s.start(path, method=method)
        r = s.run(15, until=lambda: s.results[sid].ended or s.results[sid].reset is not None)[sid]
        nxt = []
        for i in range(3):  # one at a time: each may take the pooled connection
            nxt.append(s.start(f"/next/{i}"))
            rs = s.run(15)
        assert s.goaway is None and not s.closed
    if want == "reset":
        assert r.reset is not None and not r.ended, r
    elif want == "502-or-reset":
        assert (r.reset is not None and not r.ended) or (r.status == 502 and r.ended and r.reset is None), r
    else:
        assert r.ended and r.reset is None and r.head == want.encode(), r
        if path == "/304-with-length":
            assert r.status == 304 and r.header("content-length") == ["100"], r
    for i, n in enumerate(nxt):
        assert rs[n].ended and rs[n].status == 200 and rs[n].head == f"GET /next/{i}\n".encode(), rs[n]
    first = origin.requests[0]
    later = [q for q in origin.requests if q.path.startswith("/next/")]
    assert len(later) == 3
    if path.startswith("/304"):
        assert all(q.conn_id == first.conn_id for q in later), "a connection left in sync was not reused"
    else:
        assert all(q.conn_id != first.conn_id for q in later), "a connection with bytes past its answer was reused"


# ------------------------------------------------------ pool, expect, trailers


def _h1_get(port: int, path: str, conn: http.client.HTTPConnection | None = None):
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    return conn, r.status, r.getheader("x-origin-conn"), r.read()


def test_the_pool_is_shared_by_http1_and_http2_clients(start_gateway, origin):
    """One worker, one upstream connection at a time: HTTP/2 streams and
    HTTP/1.1 requests take turns on the same pooled connection, each getting
    its own body; after an HTTP/2 stream reset mid-download, neither kind of
    client is ever served on the half-read connection."""
    g = start_gateway(workers=1, **H2C)
    h1 = None
    conns = set()
    with Streams(g.addr) as s:
        for i in range(5):
            sid = s.start(f"/h2/{i}")
            r = s.run(10)[sid]
            assert r.status == 200 and r.head == f"GET /h2/{i}\n".encode(), r
            conns.add(r.header("x-origin-conn")[0])
            h1, status, oc, body = _h1_get(g.port, f"/h1/{i}", h1)
            assert (status, body) == (200, f"GET /h1/{i}\n".encode())
            conns.add(oc)
        assert len(conns) == 1, f"HTTP/1.1 and HTTP/2 did not share the pooled connection: {conns}"
        big = s.start(f"/bytes/{64 * MiB}")
        s.run(10, until=lambda: s.results[big].length >= 100_000)
        s.reset(big)
        half_read = s.results[big].header("x-origin-conn")[0]
        for i in range(3):
            sid = s.start(f"/h2-after/{i}")
            # wait for this stream only: the one we reset never ends nor gets a server reset,
            # so waiting for "every stream" would spend the whole 10 s each time
            r = s.run(10, until=lambda sid=sid: s.results[sid].ended or s.results[sid].reset is not None)[sid]
            assert r.status == 200 and r.head == f"GET /h2-after/{i}\n".encode(), r
            assert r.header("x-origin-conn")[0] != half_read
            h1, status, oc, body = _h1_get(g.port, f"/h1-after/{i}", h1)
            assert (status, body) == (200, f"GET /h1-after/{i}\n".encode()) and oc != half_read
    h1.close()


def test_expect_continue_with_an_upstream_that_answers_early(serve, origin):
    """Expect: 100-continue over HTTP/2 to an upstream that refuses the body
    before reading it (417 and close): the client gets at most a 100, then
    the 417 whole and ended; its body is never completed upstream; the
    connection goes on."""
    gw = serve()
    with gw.raw() as c:
        c.headers(1, method="POST", path="/upload?early_status=417", scheme=gw.scheme, end_stream=False,
                  extra=[("expect", "100-continue"), ("content-length", "100000")])
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: s.status(1) is not None)
        if s.status(1) == 100:
            c.frame(DataFrame(1, data=b"x" * 16384))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended or 1 in s.resets)
        statuses = [int(v) for n, v in s.headers.get(1, []) if n in (":status", b":status")]
        assert statuses[-1] == 417 and 1 in s.ended and s.data.get(1) == b"early\n", s
        c.headers(3, path="/next", scheme=gw.scheme)
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 3 in s.ended)
        assert s.status(3) == 200 and s.data[3] == b"GET /next\n", s
    up = [q for q in origin.requests if q.path == "/upload"]
    assert up and not any(q.complete and q.body_len == 100000 for q in up)


def test_te_trailers_and_request_trailers(serve, origin):
    """`te: trailers` is the only TE HTTP/2 allows (§8.2.2); it is hop-by-hop
    (RFC 9110 §10.1.4) and the HTTP/1.1 upstream does not get it. Request
    trailers end the body, which arrives whole; the trailer fields are not
    forwarded (as test_tls_h2_qa.py checks without a `te`)."""
    gw = serve()
    with gw.raw() as c:
        c.headers(1, method="POST", path="/sink", scheme=gw.scheme, end_stream=False, extra=[("te", "trailers")])
        c.frame(DataFrame(1, data=b"abc"))
        c.frame(DataFrame(1, data=b"def"))
        c.headers(1, block=c.enc.encode([("x-checksum", "1234")]), end_stream=True)
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended or 1 in s.resets)
    assert s.status(1) == 200 and s.data[1].decode().split() == sink_answer(b"abcdef"), s
    [q] = origin.wait_requests(1, complete=True)
    assert bytes(q.body) == b"abcdef"
    # Dropped, as every hop-by-hop field: the gateway relays no response
    # trailers (test_response_trailers_from_a_chunked_upstream), so it
    # cannot promise the upstream that the client takes them.
    assert not q.header("te") and not q.header("x-checksum"), q


def _chunked_with_trailers(req, conn):
    if req.path == "/trailers":
        conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-digest\r\n\r\n"
                  b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nx-digest: zzz\r\nx-other: y\r\n\r\n")
        return True
    return default_handler(req, conn)


def test_response_trailers_from_a_chunked_upstream(serve, origin):
    """Chunk extensions and a trailer section from the upstream: the body is
    relayed exactly (no extension, no trailer bytes in DATA); the trailer
    fields come as a trailing HEADERS frame or not at all, never in the
    response head; the upstream connection stays usable (the trailer
    section was read to its end)."""
    origin.handler = _chunked_with_trailers
    gw = serve(workers=1)
    with gw.streams() as s:
        sid = s.start("/trailers", headers=[("te", "trailers")])
        r = s.run(10)[sid]
        nxt = s.start("/next")
        r2 = s.run(10)[nxt]
    assert r.ended and r.status == 200 and r.head == b"abcdefg", r
    assert not r.header("x-digest") and not r.header("trailer") and not r.header("transfer-encoding"), r.headers
    assert r2.status == 200 and r2.head == b"GET /next\n"
    first, second = origin.wait_requests(2)
    assert second.conn_id == first.conn_id, "a connection whose answer ended cleanly was not reused"


def test_a_client_goaway_does_not_cut_its_own_streams(serve, origin):
    """RFC 9113 §6.8: GOAWAY applies to the streams its *receiver* initiated
    (the server's pushes, none here); a client that says GOAWAY(NO_ERROR,
    last stream 0) while its own download and upload are in flight still
    gets both answers whole, then the connection may close."""
    gw = serve(max_body_bytes=64 * MiB)
    n = 3 * MiB
    up = body_of(MiB, 21)
    with gw.streams() as s:
        down = s.start(f"/bytes/{n}")
        sink = s.start("/sink?pause_body=0.5", method="POST", body=up)
        s.run(10, until=lambda: s.results[down].length >= 100_000)
        assert s.results[down].length >= 100_000
        s.conn.close_connection(error_code=0, last_stream_id=0)
        s.flush()
        # The h2 library stops after its own GOAWAY; let it go on reading.
        s.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        rs = s.run(30)
    assert rs[down].ended and (rs[down].length, rs[down].sha256) == (n, pattern_sha256(n)), rs[down]
    assert rs[sink].ended and rs[sink].head.decode().split() == sink_answer(up), rs[sink]


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
def test_mixed_load_with_resets_never_mixes_or_truncates_bodies(start_gateway, origin):
    """Two HTTP/2 connections and an HTTP/1.1 keep-alive client on the same
    worker pool, for a bounded time: downloads and uploads of random sizes
    (content-length or chunked each way), every fifth HTTP/2 stream reset
    mid-flight. Every stream not reset gets exactly its own body; every
    upload the origin saw *complete* is exactly the body sent under its id
    (a cut or a body from another request is never taken for whole); the
    connections end without GOAWAY."""
    import random

    g = start_gateway(workers=2, max_body_bytes=64 * MiB, **H2C)
    sent: dict[str, str] = {}  # upload id -> sha of its body
    errors: list[str] = []
    stop_at = time.monotonic() + 20

    def h2_client(k: int):
        rnd = random.Random(k)
        try:
            with DataStreams(g.addr) as s:
                for round_ in range(4):
                    if time.monotonic() > stop_at:
                        return
                    want, to_reset = {}, set()
                    for i in range(20):
                        name = f"c{k}r{round_}s{i}"
                        if rnd.random() < 0.5:
                            n = rnd.randrange(0, 400_000)
                            sid = s.start(f"/bytes/{n}?{name}" + ("&chunked=1" if i % 2 else ""))
                            want[sid] = ("down", n)
                        else:
                            body = body_of(rnd.randrange(0, 300_000), zlib.crc32(name.encode()))
                            sent[name] = sha(body)
                            sid = s.start(f"/sink?id={name}", method="POST", body=body, length=i % 3 != 0)
                            want[sid] = ("up", body)
                        if i % 5 == 4:
                            to_reset.add(sid)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and not s.closed:
                        for sid in list(to_reset):
                            r = s.results[sid]
                            progressed = r.length > 0 or (sid not in s.bodies and want[sid][0] == "up")
                            if r.ended or r.reset is not None:
                                to_reset.discard(sid)
                            elif progressed or rnd.random() < 0.3:
                                s.reset(sid)
                                s.results[sid].reset = CANCEL
                                to_reset.discard(sid)
                        if all(r.ended or r.reset is not None for r in s.results.values()):
                            break
                        s.pump(deadline)
                    if s.goaway is not None or s.closed:
                        errors.append(f"client {k}: goaway={s.goaway} closed={s.closed}")
                        return
                    for sid, (kind, x) in want.items():
                        r = s.results[sid]
                        if r.reset is not None:
                            continue
                        if not r.ended or r.status != 200:
                            errors.append(f"client {k} stream {sid}: {r}")
                        elif kind == "down" and (r.length, r.sha256) != (x, pattern_sha256(x)):
                            errors.append(f"client {k} stream {sid}: got {r.length} of {x} bytes, sha differs")
                        elif kind == "up" and r.head.decode().split() != sink_answer(x):
                            errors.append(f"client {k} stream {sid}: origin answered {r.head!r}")
                    s.results.clear()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {k}: {e!r}")

    def h1_client():
        rnd = random.Random(99)
        conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
        i = 0
        try:
            while time.monotonic() < stop_at:
                i += 1
                if i % 2:
                    n = rnd.randrange(0, 300_000)
                    conn.request("GET", f"/bytes/{n}?h1={i}")
                    r = conn.getresponse()
                    data = r.read()
                    if (r.status, len(data), hashlib.sha256(data).hexdigest()) != (200, n, pattern_sha256(n)):
                        errors.append(f"h1 {i}: {r.status} {len(data)} of {n}")
                else:
                    name = f"h1-{i}"
                    body = body_of(rnd.randrange(1, 200_000), i)
                    sent[name] = sha(body)
                    conn.request("POST", f"/sink?id={name}", body=body)
                    r = conn.getresponse()
                    if r.read().decode().split() != sink_answer(body):
                        errors.append(f"h1 {i}: wrong sink answer")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"h1: {e!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=h2_client, args=(k,)) for k in range(2)]
    threads.append(threading.Thread(target=h1_client))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client is still running past its bound"
    assert not errors, errors[:5]
    origin.wait_for(lambda: False, 1)  # let the last cut requests land
    complete = [q for q in origin.requests if q.path == "/sink" and q.complete]
    assert len(complete) > 20, f"only {len(complete)} uploads went through"
    bad = [q for q in complete if sent.get(q.query["id"]) != q.body_sha256]
    assert not bad, f"complete uploads that are not the body sent under their id: {bad[:3]}"


@pytest.mark.parametrize(
    "values,ok",
    [(["5", "5"], True), (["05"], True), (["5", "6"], False), (["+5"], False), (["5,5"], False), (["-5"], False)],
    ids=["repeated", "leading-zero", "conflicting", "plus-sign", "list", "negative"],
)
def test_content_length_spellings(serve, origin, values, ok):
    """RFC 9110 §8.6 / RFC 9113 §8.1.1: content-length is digits; a
    repeated field with one value is that value; anything else (two
    values, a sign, a list) makes the request malformed. Five bytes of DATA
    follow: a request that is accepted reaches the origin with exactly one
    content-length of 5 and its body; one that is not never completes
    upstream with another length."""
    gw = serve()
    with gw.raw() as c:
        c.headers(1, method="POST", path="/sink", scheme=gw.scheme, end_stream=False,
                  extra=[("content-length", v) for v in values])
        c.frame(DataFrame(1, data=b"hello", flags=["END_STREAM"]))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended or 1 in s.resets or s.goaway is not None)
    time.sleep(0.3)
    reqs = [q for q in origin.requests if q.path == "/sink"]
    if ok:
        assert s.status(1) == 200 and s.data[1].decode().split() == sink_answer(b"hello"), s
        [q] = reqs
        assert q.complete and q.header("content-length") == ["5"] and bytes(q.body) == b"hello", q
    else:
        assert s.status(1) == 400 or 1 in s.resets or s.goaway is not None, s
        assert not any(q.complete for q in reqs), reqs


def test_trailers_after_a_body_with_content_length(serve, origin):
    """HEADERS (content-length 6), DATA, trailers with END_STREAM: the body
    that goes up with its length is complete at the origin, answered once."""
    gw = serve()
    with gw.raw() as c:
        c.headers(1, method="POST", path="/sink", scheme=gw.scheme, end_stream=False,
                  extra=[("content-length", "6")])
        c.frame(DataFrame(1, data=b"abcdef"))
        c.headers(1, block=c.enc.encode([("x-checksum", "1")]), end_stream=True)
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended or 1 in s.resets)
    assert s.status(1) == 200 and s.data[1].decode().split() == sink_answer(b"abcdef"), s
    [q] = origin.wait_requests(1, complete=True)
    assert q.framing == "content-length" and bytes(q.body) == b"abcdef"


def _until_close(req, conn):
    n = int(req.query.get("n", 0))
    conn.send(b"HTTP/1.0 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n" + pattern(n))
    conn.sleep(0.2)
    if req.query.get("mode") == "reset":
        conn.reset()
    else:
        conn.close()
    return False


def test_a_close_delimited_upstream_body(serve, origin):
    """An HTTP/1.0 upstream whose body ends at its close: a FIN ends the
    stream with the whole body; an RST (the body may be cut) resets the
    stream instead of ending it as if complete."""
    origin.handler = _until_close
    gw = serve()
    n = 700_001
    with gw.streams() as s:
        fin = s.start(f"/x?n={n}")
        rst = s.start(f"/x?n={n}&mode=reset")
        rs = s.run(20)
    assert rs[fin].ended and (rs[fin].length, rs[fin].sha256) == (n, pattern_sha256(n)), rs[fin]
    assert rs[fin].header("content-length") == []
    assert rs[rst].reset is not None and not rs[rst].ended, rs[rst]


def test_curl_upload_answered_early_by_the_upstream(start_gateway, origin, tmp_path):
    """curl --http2 sends 3 MiB to an upstream that answers 413 at once and
    closes: curl reports the 413 as a complete transfer (the gateway ends
    the response, then drops the rest of the upload), and the origin never
    got the whole body."""
    g = start_gateway(**H2C, max_body_bytes=64 * MiB)
    f = tmp_path / "big"
    f.write_bytes(b"b" * (3 * MiB))
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", f"@{f}", "-w", "\\n%{http_code}",
                        g.url + "/up?early_status=413"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.split() == ["early", "413"], (r.returncode, r.stdout, r.stderr)
    assert not any(q.complete for q in origin.requests), origin.requests


def test_a_client_that_stops_reading_its_socket(serve, origin):
    """Windows wide open (2^31-1), a 256 MiB download, and the client stops
    reading the socket altogether: the gateway's writes back up. What it
    takes from the origin stays bounded, the stream is given up at
    body-timeout and the connection closed (the upstream connection with
    it), while another connection is served all along."""
    gw = serve(body_timeout=2, idle_timeout=2)
    n = 256 * MiB
    c = gw.raw(settings={0x4: (1 << 31) - 1})
    try:
        c.frame(WindowUpdateFrame(0, window_increment=(1 << 31) - 1 - 65535))
        c.headers(1, path=f"/bytes/{n}", scheme=gw.scheme)
        [req] = origin.wait_requests(1)
        up = origin.conn(req.conn_id)
        served = 0
        deadline = time.monotonic() + 25
        with gw.streams() as other:
            while time.monotonic() < deadline and not (up.closed or up.peer_closed):
                sid = other.start(f"/other/{served}")
                r = other.run(10)[sid]
                assert r.ended and r.status == 200 and r.head == f"GET /other/{served}\n".encode(), r
                served += 1
                time.sleep(0.1)
        freed = up.closed or up.peer_closed
        pushed = up.sent
    finally:
        c.close()
    print(f"non-reader: origin pushed {pushed >> 20} MiB before the upstream connection closed")
    assert freed, "the upstream connection of a client that stopped reading was kept for 25 s"
    assert served > 0
    assert pushed < 64 * MiB, f"the gateway took {pushed >> 20} MiB for a client that reads nothing"


def test_an_upload_after_the_origin_closed_the_pooled_connection(serve, origin):
    """The origin closes the idle pooled connection (its keep-alive timeout)
    between two streams: the next stream, an upload that cannot be replayed
    once sent, must not be sent on the dead connection; it gets 200 and its
    body arrives whole on a new one."""
    gw = serve(workers=1, max_body_bytes=64 * MiB)
    body = body_of(600_000, 31)
    with gw.streams() as s:
        sid = s.start("/first")
        r = s.run(10)[sid]
        assert r.status == 200
        first = origin.requests[0]
        origin.conn(first.conn_id).close()
        time.sleep(0.5)
        sid = s.start("/sink", method="POST", body=body)
        r = s.run(20)[sid]
    assert r.ended and r.status == 200 and r.head.decode().split() == sink_answer(body), r
    [q] = [q for q in origin.wait_requests(2, complete=True) if q.path == "/sink"]
    assert q.conn_id != first.conn_id and q.complete


# --------------------------------------------------------- response fields


def _many_fields(req, conn):
    if req.path == "/fields":
        lines = [f"x-big-{i}: {str(i) * 1000}"[:1010] for i in range(40)]
        lines += [f"set-cookie: c{i}=v{i}; Path=/" for i in range(20)]
        conn.send(("HTTP/1.1 200 OK\r\n" + "\r\n".join(lines) + "\r\ncontent-length: 2\r\n\r\nok").encode())
        return True
    return default_handler(req, conn)


def test_a_response_head_larger_than_a_frame(serve, origin):
    """40 KiB of response fields (HEADERS then CONTINUATION frames from the
    gateway, §6.10) and 20 set-cookie fields: each arrives, the cookies as
    20 separate fields (never joined, RFC 9110 §5.3), and the body after
    them; the next request on the connection is served (the HPACK state
    stayed in sync)."""
    origin.handler = _many_fields
    gw = serve()
    with gw.streams() as s:
        sid = s.start("/fields")
        r = s.run(10)[sid]
        nxt = s.start("/next")
        r2 = s.run(10)[nxt]
    if r.status == 502:
        pytest.skip("response head over the gateway's limit (502): nothing to check")
    assert r.ended and r.status == 200 and r.head == b"ok", r
    for i in range(40):
        assert r.header(f"x-big-{i}") == [f"x-big-{i}: {str(i) * 1000}"[:1010].split(": ", 1)[1]], i
    assert r.header("set-cookie") == [f"c{i}=v{i}; Path=/" for i in range(20)]
    assert r2.status == 200 and r2.head == b"GET /next\n"


def test_a_client_header_table_of_zero(serve, origin):
    """SETTINGS_HEADER_TABLE_SIZE 0 (RFC 7541 §4.2): once acknowledged, the
    gateway's response header blocks must not use a dynamic table; a
    decoder with no table decodes three responses in a row."""
    gw = serve()
    with gw.raw(settings={0x1: 0}) as c:
        c.dec.max_allowed_table_size = 0
        c.dec.header_table_size = 0
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: s.settings_acks > 0)
        assert s.settings_acks > 0
        for i, sid in enumerate((1, 3, 5)):
            c.headers(sid, path=f"/t/{i}", scheme=gw.scheme)
            s = c.read_frames(time.monotonic() + 5, stop=lambda s: sid in s.ended or s.goaway is not None)
            assert s.status(sid) == 200 and s.data[sid] == f"GET /t/{i}\n".encode(), s


# ------------------------------------------------------------------ nghttp


def _nghttp(gw: Gw, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    if gw.tls:
        # nghttp verifies nothing by default; SNI and ALPN h2 come from the URI.
        uri_host = f"https://127.0.0.1:{gw.g.port}"
    else:
        uri_host = f"http://127.0.0.1:{gw.g.port}"
    argv = ["nghttp", *[a.replace("{base}", uri_host) for a in args]]
    return subprocess.run(argv, capture_output=True, timeout=timeout)


def test_nghttp_with_a_one_byte_window(serve, origin):
    """nghttp2's own flow control with a stream window of one byte (-w 1,
    it sends a WINDOW_UPDATE as it consumes each byte), and a 2^16-byte
    one with 10 streams at once (-m 10): the bodies are whole, and neither
    is taken for a WINDOW_UPDATE flood."""
    gw = serve()
    n = 20_000
    r = _nghttp(gw, "-w", "1", f"{{base}}/bytes/{n}")
    assert r.returncode == 0 and r.stdout == pattern(n), (r.returncode, len(r.stdout), r.stderr[-500:])
    n = 1000 * 1024  # shown as "1000K" in the statistics
    r = _nghttp(gw, "-w", "16", "-m", "10", "-s", "-n", f"{{base}}/bytes/{n}?chunked=1")
    assert r.returncode == 0, r.stderr[-500:]
    # The statistics: one line per stream, "id responseEnd requestStart process code size path".
    rows = [ln.split() for ln in r.stdout.decode().splitlines() if ln.strip().endswith(f"/bytes/{n}?chunked=1")]
    assert len(rows) == 10 and all(row[4:6] == ["200", "1000K"] for row in rows), r.stdout[-1500:]


def test_nghttp_upload(serve, origin, tmp_path):
    """nghttp -d: 2 MiB up with nghttp2's DATA framing, the origin's answer
    is the body's own hash."""
    gw = serve(max_body_bytes=64 * MiB)
    body = body_of(2 * MiB + 17, 5)
    f = tmp_path / "up"
    f.write_bytes(body)
    r = _nghttp(gw, "-d", str(f), "{base}/sink")
    assert r.returncode == 0 and r.stdout.decode().split() == sink_answer(body), (r.stdout[:200], r.stderr[-500:])
    [q] = origin.wait_requests(1, complete=True)
    assert (q.body_len, q.body_sha256) == (len(body), sha(body))


# -------------------------------------------------------------- streaming


def test_bodies_stream_both_ways_without_waiting_for_more(serve, origin):
    """No buffering until some size: each part of a body goes on as soon as
    it comes. Down: the origin sends one part of a chunked (and of a
    content-length) answer and waits until the client has it before the
    next; up: the client sends one DATA frame and waits until the origin has
    it before the next. A gateway that held bytes back would deadlock both
    (each side waits 10 s, then the test fails)."""
    got_part = threading.Event()
    waited: list[bool] = []

    def lockstep(req, conn):
        chunked = req.query.get("chunked") == "1"
        head = "transfer-encoding: chunked" if chunked else "content-length: 15"
        conn.send(f"HTTP/1.1 200 OK\r\n{head}\r\n\r\n".encode())
        for part in (b"part1", b"part2", b"part3"):
            got_part.clear()
            conn.send(b"5\r\n" + part + b"\r\n" if chunked else part)
            waited.append(got_part.wait(10))
        if chunked:
            conn.send(b"0\r\n\r\n")
        return True

    origin.handler = lockstep
    gw = serve()
    for chunked in ("1", "0"):
        waited.clear()
        with gw.streams() as s:
            sid = s.start(f"/lockstep?chunked={chunked}")
            seen = 0
            deadline = time.monotonic() + 40
            while not s.results[sid].ended and s.results[sid].reset is None and time.monotonic() < deadline:
                s.pump(deadline)
                if s.results[sid].length > seen:
                    seen = s.results[sid].length
                    got_part.set()
            r = s.results[sid]
        origin.wait_for(lambda: len(waited) == 3, 5)  # the origin notes its last wait after sending it
        assert r.ended and r.head == b"part1part2part3" and waited == [True] * 3, (chunked, r, waited)

    # Up: an origin of our own that reports each piece of the body it reads.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    received = bytearray()
    cond = threading.Condition()

    def upstream():
        c, _ = lsock.accept()
        c.settimeout(30)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        with cond:
            received.extend(rest)
            cond.notify_all()
        while len(received) < 15:
            d = c.recv(65536)
            if not d:
                return
            with cond:
                received.extend(d)
                cond.notify_all()
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        c.close()

    t = threading.Thread(target=upstream, daemon=True)
    t.start()
    g2 = serve(upstream=f"127.0.0.1:{lsock.getsockname()[1]}")
    try:
        with g2.raw() as c:
            c.headers(1, method="POST", path="/up", scheme=g2.scheme, end_stream=False,
                      extra=[("content-length", "15")])
            for i, part in enumerate((b"part1", b"part2", b"part3")):
                c.frame(DataFrame(1, data=part, flags=["END_STREAM"] if i == 2 else []))
                with cond:
                    arrived = cond.wait_for(lambda: len(received) >= 5 * (i + 1), 10)
                assert arrived, f"part {i + 1} of the upload held back by the gateway (origin has {bytes(received)!r})"
            s = c.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended or 1 in s.resets)
        assert s.status(1) == 200 and s.data[1] == b"ok"
        assert bytes(received) == b"part1part2part3"
    finally:
        lsock.close()
        t.join(5)


# ------------------------------------------------------- HTTP/1.1 over TLS


def test_http1_over_tls_bodies_around_record_sizes(start_gateway, origin, pki):
    """The same sizes over HTTP/1.1 on one keep-alive TLS connection (ALPN
    http/1.1): bodies that end exactly on, just before and just after a
    TLS record (16 KiB of plaintext) go up with content-length and chunked,
    and come down with content-length and chunked, whole."""
    g = start_gateway(protocols="h1,h2", tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"),
                      max_body_bytes=64 * MiB)
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPConnection("edge.test", g.port, timeout=20)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", g.port), timeout=20),
                                server_hostname="edge.test")
    sizes = [0, 1, 16383, 16384, 16385, 32767, 32768, 32769, 1 << 20]
    try:
        for i, n in enumerate(sizes):
            body = body_of(n, 500 + i)
            conn.request("POST", f"/sink?n={n}", body=body)
            r = conn.getresponse()
            assert r.read().decode().split() == sink_answer(body), n
            conn.request("POST", f"/sink?n={n}&chunked=1", body=iter([body[:n // 2], body[n // 2:]]),
                         encode_chunked=True)
            r = conn.getresponse()
            assert r.read().decode().split() == sink_answer(body), ("chunked", n)
            for q in ("", "?chunked=1"):
                conn.request("GET", f"/bytes/{n}{q}")
                r = conn.getresponse()
                data = r.read()
                assert (r.status, len(data), hashlib.sha256(data).hexdigest()) == (200, n, pattern_sha256(n)), (n, q)
    finally:
        conn.close()
    conns = {q.conn_id for q in origin.requests}
    assert len(origin.requests) == 4 * len(sizes) and all(q.complete for q in origin.requests)
    assert len(conns) == 1, "one keep-alive client, one pooled upstream connection"


def test_a_settings_change_that_overflows_an_open_window(serve, origin):
    """§6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes an open
    stream's window past 2^31-1 is a connection error FLOW_CONTROL_ERROR
    (the value itself is legal: the stream's window was widened before)."""
    gw = serve()
    with gw.raw() as c:
        c.headers(1, path="/stall", scheme=gw.scheme)
        s = c.read_frames(time.monotonic() + 2, stop=lambda s: s.settings_acks > 0)
        assert origin.wait_for(lambda: origin.requests, 5)
        c.frame(WindowUpdateFrame(1, window_increment=(1 << 31) - 1 - 65535))
        c.frame(SettingsFrame(0, settings={0x4: 65536}))
        s = c.ended_by_server(timeout=5)
    assert s.goaway == 0x3, (s.goaway, s.resets, s.frames[-5:])


def test_interim_answers_while_the_body_goes_up(serve):
    """An upstream that sends `100 Continue` and `103 Early Hints` unasked,
    right after the request head and before reading the body (RFC 9110
    §15.2: a client must take unexpected 1xx): the upload goes on to its
    end and the final answer is the one relayed."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    seen: list[tuple[int, str]] = []

    def upstream():
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            with c:
                c.settimeout(20)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += c.recv(65536)
                head, body = buf.split(b"\r\n\r\n", 1)
                length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
                c.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n")
                while len(body) < length:
                    d = c.recv(65536)
                    if not d:
                        break
                    body += d
                seen.append((len(body), sha(body)))
                answer = f"{len(body)} {sha(body)}\n".encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))

    t = threading.Thread(target=upstream, daemon=True)
    t.start()
    try:
        gw = serve(upstream=f"127.0.0.1:{lsock.getsockname()[1]}", max_body_bytes=64 * MiB)
        body = body_of(3 * MiB, 8)
        with gw.streams() as s:
            sid = s.start("/up", method="POST", body=body)
            r = s.run(30)[sid]
        assert r.ended and r.status == 200 and r.head.decode().split() == sink_answer(body), r
        assert seen == [(len(body), sha(body))]
    finally:
        lsock.close()
        t.join(5)


def test_an_http1_upgrade_to_h2c_is_ignored(start_gateway, origin, tmp_path):
    """RFC 9113 §3.1 deprecates `Upgrade: h2c`: curl --http2 over cleartext
    offers it (with HTTP2-Settings); the answer comes over HTTP/1.1, the
    body goes up whole, and neither field reaches the origin."""
    g = start_gateway(**H2C)
    f = tmp_path / "up"
    body = body_of(200_000, 12)
    f.write_bytes(body)
    r = subprocess.run(["curl", "-sS", "--http2", "-w", "\\n%{http_version}", "--data-binary", f"@{f}", g.url + "/sink"],
                       capture_output=True, text=True, timeout=30)
    lines = r.stdout.split("\n")
    assert r.returncode == 0 and lines[0].split() == sink_answer(body) and lines[-1] == "1.1", (r.stdout, r.stderr)
    [q] = origin.wait_requests(1, complete=True)
    assert not q.header("upgrade") and not q.header("http2-settings") and not q.header("connection"), q


def test_slow_but_steady_bodies_outlive_the_body_timeout(serve, origin):
    """body-timeout bounds a *pause*, not a body: a download read one byte
    every 0.3 s and an upload sent one byte every 0.3 s, each for well over
    the 1 s body-timeout, go on to their end."""
    gw = serve(body_timeout=1)
    n = 12
    with gw.raw(settings={0x4: 1}) as c:
        c.headers(1, path=f"/bytes/{n}", scheme=gw.scheme)
        c.headers(3, method="POST", path="/sink", scheme=gw.scheme, end_stream=False,
                  extra=[("content-length", str(n))])
        c.frame(WindowUpdateFrame(3, window_increment=100_000))  # the upload's answer is not the slow part
        got = bytearray()
        for i in range(n):
            c.frame(DataFrame(3, data=b"u", flags=["END_STREAM"] if i == n - 1 else []))
            s = c.read_frames(time.monotonic() + 0.3)
            fresh = _data_since(c, 1)
            got += fresh
            if fresh:
                time.sleep(0.05)
                c.frame(WindowUpdateFrame(1, window_increment=len(fresh)))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: (3 in s.ended and len(got) + len(s.data.get(1, b"")) >= n)
                          or s.resets or s.goaway is not None)
        got += _data_since(c, 1)
    assert not s.resets and s.goaway is None, (s.resets, s.frames[-5:])
    assert bytes(got) == pattern(n)
    assert s.status(3) == 200 and s.data[3].decode().split() == sink_answer(b"u" * n), s


def test_refused_uploads_give_their_window_back(serve, origin):
    """Eight uploads declared at 10 MiB against a 64 KiB max-body-bytes,
    their DATA sent as fast as the windows allow: each gets 413 and its
    stream is closed while DATA is still in flight. That DATA (read and
    dropped, or arriving on a closed stream) must give its connection
    window back, or the connection's next uploads stall: twenty uploads of
    60 KB afterwards (more than the 1 MiB connection window in all) each
    arrive whole."""
    gw = serve(max_body_bytes=64 * 1024)
    with gw.streams() as s:
        refused = [s.start(f"/big/{i}", method="POST", body=b"r" * (10 * MiB)) for i in range(8)]
        s.run(30, until=lambda: all(s.results[i].status is not None and (s.results[i].ended or s.results[i].reset)
                                    for i in refused))
        for sid in refused:
            assert s.results[sid].status == 413, s.results[sid]
            s.bodies.pop(sid, None)
        for i in range(20):
            body = body_of(60_000, 300 + i)
            sid = s.start(f"/sink?i={i}", method="POST", body=body)
            r = s.run(15, until=lambda: s.results[sid].ended or s.results[sid].reset is not None)[sid]
            assert r.ended and r.status == 200 and r.head.decode().split() == sink_answer(body), (
                i, r, len(s.bodies.get(sid, b"")))
        assert not s.closed and s.goaway is None


def test_trailers_before_the_declared_length_is_reached(serve, origin):
    """§8.1.1: trailers (END_STREAM) after 5 of 10 declared bytes end a body
    that does not add up to its content-length: malformed, the stream is
    reset at once (not left waiting for bytes that cannot come until a
    timeout), and the upstream request is never completed."""
    gw = serve(response_timeout=30)
    with gw.raw() as c:
        c.headers(1, method="POST", path="/sink", scheme=gw.scheme, end_stream=False,
                  extra=[("content-length", "10")])
        c.frame(DataFrame(1, data=b"12345"))
        assert origin.wait_for(lambda: origin.requests and origin.requests[0].body_len == 5, 5)
        c.headers(1, block=c.enc.encode([("x-t", "1")]), end_stream=True)
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.resets or 1 in s.ended or s.goaway is not None)
        assert s.resets.get(1) == 0x1 or s.goaway == 0x1, (s.resets, s.goaway, s.frames[-5:])
        c.headers(3, path="/after", scheme=gw.scheme)
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 3 in s.ended or s.goaway is not None)
    if s.goaway is None:
        assert s.status(3) == 200 and s.data[3] == b"GET /after\n"
    [post] = [q for q in origin.requests if q.path == "/sink"]
    assert not post.complete


def test_empty_data_frames_inside_a_chunked_upload(serve, origin):
    """Empty DATA frames between the parts of an upload without
    content-length (legal, if pointless): an empty frame must never become
    an empty chunk upstream, which is the chunked body's terminator (the
    rest would then be read as a second, smuggled request). The origin gets
    one request with the whole body."""
    gw = serve()
    with gw.raw() as c:
        c.headers(1, method="POST", path="/sink", scheme=gw.scheme, end_stream=False)
        for part in (b"abc", b"", b"", b"GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n", b"", b"def"):
            c.frame(DataFrame(1, data=part))
            c.read_frames(time.monotonic() + 0.05)
        c.frame(DataFrame(1, data=b"", flags=["END_STREAM"]))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended or 1 in s.resets or s.goaway is not None)
    body = b"abcGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\ndef"
    assert s.status(1) == 200 and s.data[1].decode().split() == sink_answer(body), s
    time.sleep(0.3)
    assert [q.path for q in origin.requests] == ["/sink"], origin.requests
    assert origin.requests[0].complete and bytes(origin.requests[0].body) == body


# ------------------------------------- a compiled gateway, TLS both sides

SPEC = """
version 1
gateway "h2-data-qa" {{
    workers 1
}}
listener "edge" {{
    bind "127.0.0.1:{edge}"
    protocols "h1" "h2"
    tls {{
        cert "certs/edge.crt" key="certs/edge.key"
    }}
}}
limits {{
    max-body-bytes "64MiB"
}}
upstream "secure" {{
    server "127.0.0.1:{origin}" tls=#true sni="origin.test" ca="certs/ca.crt"
    timeouts connect="1s" response="60s"
}}
route "all" {{
    proxy "secure"
}}
"""


@pytest.fixture(scope="module")
def tls_both_sides(tmp_path_factory):
    """`blitzc build` of a spec: HTTP/2 over TLS in front, a TLS upstream
    (the recording origin behind Python's ssl) behind: the data path with
    rustls on both sides. Yields (port, origin, pki)."""
    from support.blitzc import BLITZC_BUILD_TIMEOUT, Served, build
    from support.gateway import REPO, free_port, target_dir
    from support.pki import TlsOrigin

    root = tmp_path_factory.mktemp("h2-data-compiled")
    certs = root / "certs"
    certs.mkdir()
    p = Pki(certs)
    p.leaf("edge", "edge.test")
    p.leaf("origin", "origin.test")
    origin = TlsOrigin(p.path("origin.crt"), p.path("origin.key"))
    subprocess.run(["cargo", "build", "--release", "-p", "blitzc"], cwd=REPO, check=True,
                   timeout=BLITZC_BUILD_TIMEOUT, capture_output=True)
    blitzc = target_dir() / "release" / "blitzc"
    port = free_port()
    spec = root / "h2-data.kdl"
    spec.write_text(SPEC.format(edge=port, origin=origin.port))
    cache = os.environ.get("BLITZ_CACHE_DIR") or str(tmp_path_factory.mktemp("blitz-cache"))
    out = root / "gateway-bin"
    r = build(blitzc, spec, out, Path(cache))
    assert r.returncode == 0, r.stderr[-3000:]
    gw = Served([str(out)], port, dict(os.environ))
    yield port, origin, p
    assert gw.stop() == 0, "\n".join(gw.lines[-20:])
    origin.stop()


def _tls_streams(port: int, pki: Pki) -> Streams:
    return DataStreams(f"127.0.0.1:{port}", sock=tls_socket(port, pki), scheme="https")


def test_compiled_gateway_bodies_through_a_tls_upstream(tls_both_sides):
    """Bodies both ways (content-length and chunked, up to 5 MiB) between
    an HTTP/2 client over TLS and a TLS upstream, all at once on one
    connection: whole at both ends."""
    port, origin, pki = tls_both_sides
    origin.reset()
    ups, downs = {}, {}
    with _tls_streams(port, pki) as s:
        for i, n in enumerate([0, 1, 16384, 65536, MiB + 1, 5 * MiB]):
            body = body_of(n, 700 + i)
            ups[s.start(f"/sink?i={i}", method="POST", body=body, length=i % 2 == 0)] = body
            downs[s.start(f"/bytes/{n}" + ("?chunked=1" if i % 2 else ""))] = n
        rs = s.run(60)
    for sid, body in ups.items():
        assert rs[sid].ended and rs[sid].head.decode().split() == sink_answer(body), rs[sid]
    for sid, n in downs.items():
        assert rs[sid].ended and (rs[sid].length, rs[sid].sha256) == (n, pattern_sha256(n)), rs[sid]


def test_compiled_gateway_reset_while_a_tls_upstream_is_quiet(tls_both_sides):
    """The reset of a download whose TLS upstream is silent mid-body: the
    upstream TLS connection is closed at once (its read cancelled, never
    pooled half-read), and the next stream is served whole."""
    port, origin, pki = tls_both_sides
    origin.reset()
    origin.handler = _head_then_pause
    with _tls_streams(port, pki) as s:
        req, freed = _reset_a_paused_download(s, origin)
        nxt = s.start(f"/bytes/{MiB}")
        # this stream only: the reset one never ends, so "every stream" would always take the whole 10 s
        r = s.run(10, until=lambda: s.results[nxt].ended or s.results[nxt].reset is not None)[nxt]
    assert freed, "the TLS upstream connection was still open 10 s after the client reset its stream"
    assert r.ended and (r.length, r.sha256) == (MiB, pattern_sha256(MiB)), r
    assert [q.path for q in origin.requests] == ["/paused", f"/bytes/{MiB}"]
    assert origin.requests[1].conn_id != req.conn_id
