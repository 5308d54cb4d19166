"""RELIABILITY.md, "Resource limits and slow clients": 431, 413, 408, slowloris,
memory per idle connection, and streaming large bodies in bounded memory.

Memory figures are measured from /proc/PID/status (VmRSS), printed, and
checked against generous bounds; timings are never asserted (a wait only
bounds how long a test may block)."""

from __future__ import annotations

import hashlib
import resource
import selectors
import socket
import threading
import time

import pytest

from support.asserts import assert_origin_saw_nothing
from support.client import RawConn, exchange, request
from support.gateway import rss_kib
from support.origin import pattern_sha256

MiB = 1 << 20
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"


@pytest.fixture
def small_limits(start_gateway):
    return start_gateway(max_header_bytes=1024, max_headers=10, max_body_bytes=1024)


def _head(target="/x", headers=(), method="GET") -> bytes:
    return ("\r\n".join([f"{method} {target} HTTP/1.1", "Host: a.test", *headers]) + "\r\n\r\n").encode()


class RssSampler:
    """Samples a process's VmRSS in a background thread; .peak in KiB."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.base = rss_kib(pid)
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(2)
        self.peak = max(self.peak, rss_kib(self.pid))


def _raise_nofile(n: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n)) if hard != resource.RLIM_INFINITY else max(soft, n)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- 431
@pytest.mark.parametrize(
    "name,headers",
    [
        ("one-big-header", ["X-Big: " + "a" * 2000]),
        ("many-medium-headers", [f"X-M{i}: " + "b" * 150 for i in range(8)]),
        ("huge-header-100k", ["X-Huge: " + "c" * 100_000]),
        ("too-many-headers", [f"X-{i}: v" for i in range(20)]),
    ],
)
def test_request_head_over_limits_431(small_limits, origin, name, headers):
    ex = exchange(small_limits.port, _head("/big", headers) + SMUGGLED)
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status == 431, f"{name}: {ex}"
    assert len(finals) == 1, f"{name}: bytes after the oversized head were answered: {ex}"
    assert_origin_saw_nothing(small_limits.port, origin, name)


def test_request_line_over_limit(small_limits, origin):
    ex = exchange(small_limits.port, _head("/" + "u" * 4000) + SMUGGLED)
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status in (414, 431), ex
    assert_origin_saw_nothing(small_limits.port, origin)


def test_head_within_limits_served(small_limits, origin):
    ex = exchange(small_limits.port, _head("/fits", ["X-A: " + "a" * 500, "X-B: b", "Connection: close"]))
    assert ex.statuses == [200], ex


# ---------------------------------------------------------------- 413
def test_declared_body_over_limit_413(small_limits, origin):
    ex = exchange(small_limits.port, _head("/post", ["Content-Length: 2000"], "POST") + b"x" * 2000 + SMUGGLED)
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status == 413, ex
    assert len(finals) == 1, ex
    assert_origin_saw_nothing(small_limits.port, origin)


def test_declared_body_over_limit_with_expect_413_without_100(small_limits, origin):
    with RawConn(small_limits.port) as c:
        c.send(_head("/post", ["Content-Length: 2000", "Expect: 100-continue"], "POST"))
        r = c.read_response(timeout=5)
    assert r.status == 413, f"expected 413 before any 100 Continue, got {r!r}"
    assert_origin_saw_nothing(small_limits.port, origin)


def test_body_at_limit_served(small_limits, origin):
    ex = exchange(small_limits.port, _head("/sink", ["Content-Length: 1024", "Connection: close"], "POST") + b"y" * 1024)
    assert ex.statuses == [200], ex
    assert ex.responses[0].body.split()[0] == b"1024"


def test_streamed_body_over_limit_413_and_upstream_aborted(small_limits, origin):
    """A chunked body that crosses max-body-bytes while streaming: 413 to the client
    (the origin had not answered yet), and the upstream request is aborted."""
    with RawConn(small_limits.port) as c:
        c.send(_head("/sink-stream", ["Transfer-Encoding: chunked"], "POST"))
        refused = False
        for _ in range(8):
            if not c.send(b"200\r\n" + b"z" * 512 + b"\r\n"):
                refused = True
                break
            time.sleep(0.05)
        if not refused:
            c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=10)
        assert r.status == 413, r
        assert c.wait_closed(5), "connection kept open after a 413 mid-body"
    started = [q for q in origin.requests if q.path == "/sink-stream"]
    for q in started:
        conn = origin.conn(q.conn_id)
        assert origin.wait_for(lambda: conn.closed or conn.peer_closed, 5), "aborted upstream connection left open"
        assert not q.complete, f"the origin received the over-limit body completely: {q!r}"
        assert q.body_len <= 1024 + 512, q


# ---------------------------------------------------------------- 408
def test_header_timeout_408_or_close(start_gateway, origin):
    g = start_gateway(header_timeout=1)
    with RawConn(g.port, timeout=15) as c:
        c.send(b"GET /partial HTTP/1.1\r\nHost: a.test\r\n")
        try:
            r = c.read_response(timeout=15)
            assert r.status == 408, r
        except Exception as e:  # a bare close is allowed too
            assert c.eof, f"neither 408 nor a close after the header timeout: {e!r}"
        assert c.wait_closed(5)
    assert_origin_saw_nothing(g.port, origin)


def test_slowloris_trickled_head_cut(start_gateway, origin):
    """The header timeout bounds the whole head, not the gap between bytes: a head
    sent one byte every 0.2 s (~10 s in all) is cut long before it completes."""
    g = start_gateway(header_timeout=1)
    data = _head("/loris", [f"X-{i}: {'v' * 5}" for i in range(5)])
    with RawConn(g.port, timeout=15) as c:
        deadline = time.monotonic() + 25
        cut = False
        for b in data:
            if not c.send(bytes([b])) or c.wait_closed(0.2):
                cut = True
                break
            if time.monotonic() > deadline:
                break
        if not cut:
            cut = c.wait_closed(5)
        assert cut, f"a head trickled over ~{len(data) * 0.2:.0f} s was not cut by --header-timeout 1s: {bytes(c.buf)!r}"
        statuses = []
        if c.buf:
            statuses = [int(bytes(c.buf).split(b" ")[1])] if bytes(c.buf).startswith(b"HTTP/1.1 ") else []
        assert statuses in ([], [408]), bytes(c.buf)
    assert not [q for q in origin.requests if q.path == "/loris"]


def test_body_timeout_408_or_close_and_upstream_aborted(start_gateway, origin):
    g = start_gateway(body_timeout=1)
    with RawConn(g.port, timeout=15) as c:
        c.send(_head("/paused-body", ["Content-Length: 10"], "POST") + b"abc")
        try:
            r = c.read_response(timeout=15)
            assert r.status == 408, r
        except Exception as e:
            assert c.eof, f"neither 408 nor close after the body timeout: {e!r}"
        assert c.wait_closed(5)
    for q in [q for q in origin.requests if q.path == "/paused-body"]:
        conn = origin.conn(q.conn_id)
        assert origin.wait_for(lambda: conn.closed or conn.peer_closed, 5), "upstream request not aborted"
        assert not q.complete, q


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
def test_many_slowloris_clients_do_not_block_others(start_gateway, origin):
    """2,000 clients trickle request heads; a normal client is still served the whole
    time, and the slow clients are cut at the header timeout."""
    n_slow = 2000
    _raise_nofile(n_slow + 500)
    g = start_gateway(header_timeout=3)
    base_rss = g.rss_kib()
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(n_slow):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", g.port))
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
    head = b"GET /loris HTTP/1.1\r\nHost: a.test\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    pos = [0] * n_slow
    closed = [False] * n_slow
    stop = threading.Event()
    peak = [base_rss]

    def trickle():
        # one byte per connection every 0.5 s, reading anything the gateway answers
        while not stop.is_set():
            t0 = time.monotonic()
            for i, s in enumerate(socks):
                if closed[i] or pos[i] >= len(head) - 4:
                    continue
                try:
                    s.send(head[pos[i] : pos[i] + 1])
                    pos[i] += 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed[i] = True
            for key, _ in sel.select(timeout=0):
                i = key.data
                try:
                    d = key.fileobj.recv(4096)
                    if not d:
                        closed[i] = True
                        sel.unregister(key.fileobj)
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = True
                    sel.unregister(key.fileobj)
            peak[0] = max(peak[0], g.rss_kib())
            stop.wait(max(0.0, 0.5 - (time.monotonic() - t0)))

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        served = 0
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            r = request(g.port, "GET", f"/normal{served}", timeout=10)
            assert r.status == 200 and r.body == f"GET /normal{served}\n".encode(), r
            served += 1
            time.sleep(0.05)
        # by now (12 s > 3 s header timeout) the slow clients must have been cut
        origin_saw_loris = [q for q in origin.requests if q.path == "/loris"]
        n_closed = sum(closed)
        print(
            f"\nslowloris: {n_slow} slow clients, {served} normal requests served, "
            f"{n_closed} slow clients cut, gateway RSS base {base_rss} KiB peak {peak[0]} KiB "
            f"now {g.rss_kib()} KiB"
        )
        assert served >= 20, f"only {served} normal requests in 12 s"
        assert not origin_saw_loris, "a trickled head reached the origin"
        assert n_closed >= 0.95 * n_slow, f"only {n_closed}/{n_slow} slow clients were cut after the header timeout"
    finally:
        stop.set()
        t.join(3)
        for s in socks:
            s.close()
        sel.close()


# ---------------------------------------------------------------- memory
@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
def test_idle_keepalive_connection_memory(start_gateway, origin):
    """2,000 idle keep-alive connections (each served one request) cost a few KiB each."""
    n = 2000
    _raise_nofile(n + 500)
    g = start_gateway(workers=1)
    # warm up allocator and any lazily created state
    for _ in range(3):
        warm = [RawConn(g.port) for _ in range(100)]
        for c in warm:
            c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        for c in warm:
            assert c.read_response().status == 200
        for c in warm:
            c.close()
    time.sleep(0.5)
    before = g.rss_kib()
    conns = []
    try:
        for i in range(n):
            c = RawConn(g.port)
            c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            conns.append(c)
            if len(conns) % 200 == 0:
                for cc in conns[-200:]:
                    assert cc.read_response().status == 200
        time.sleep(0.5)
        after = g.rss_kib()
        per = (after - before) * 1024 / n
        print(f"\nidle keep-alive: RSS {before} KiB -> {after} KiB for {n} connections = {per / 1024:.2f} KiB/conn")
        # all still open and usable
        for c in conns[:: max(1, n // 20)]:
            c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            assert c.read_response().status == 200
        assert per < 16 * 1024, f"{per / 1024:.1f} KiB per idle connection"
    finally:
        for c in conns:
            c.close()


def test_connections_do_not_leak_fds(start_gateway, origin):
    g = start_gateway(workers=1)
    request(g.port, "GET", "/warm")
    time.sleep(0.3)
    base = g.fds()
    for i in range(200):
        with RawConn(g.port) as c:
            c.send(f"GET /fd{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            c.read_response()
    for i in range(50):  # and some rejected ones
        exchange(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", quiet=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and g.fds() > base + 8:
        time.sleep(0.2)
    print(f"\nfds: {base} -> {g.fds()}")
    assert g.fds() <= base + 8, f"file descriptors grew from {base} to {g.fds()} after 250 closed connections"


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_large_upload_streams_in_bounded_memory(start_gateway, origin, framing):
    """A 50 MiB upload to an origin that is slow to read: the body arrives intact,
    and the gateway does not buffer it (RSS growth far below 50 MiB)."""
    size = 50 * MiB
    g = start_gateway(workers=1, max_body_bytes=100 * MiB)
    request(g.port, "GET", "/warm")
    block = bytes(range(256)) * 256
    sha = hashlib.sha256()
    for _ in range(size // len(block)):
        sha.update(block)
    with RssSampler(g.pid) as m:
        with RawConn(g.port, timeout=60) as c:
            if framing == "chunked":
                c.send(_head("/sink?pause_body=2", ["Transfer-Encoding: chunked"], "POST"))
                frame = b"%x\r\n%s\r\n" % (len(block), block)
                for _ in range(size // len(block)):
                    assert c.send(frame), "gateway closed during upload"
                c.send(b"0\r\n\r\n")
            else:
                c.send(_head("/sink?pause_body=2", [f"Content-Length: {size}"], "POST"))
                for _ in range(size // len(block)):
                    assert c.send(block), "gateway closed during upload"
            r = c.read_response(timeout=60)
    growth = m.peak - m.base
    print(f"\nupload {framing} 50 MiB: gateway RSS {m.base} KiB, peak {m.peak} KiB (+{growth / 1024:.1f} MiB)")
    assert r.status == 200, r
    assert r.body.decode().split() == [str(size), sha.hexdigest()], r.body
    assert growth < 20 * 1024, f"gateway RSS grew by {growth / 1024:.1f} MiB for a 50 MiB streamed upload"


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_download_to_slow_client_bounded_memory(start_gateway, origin, chunked):
    """A 50 MiB response to a client that stops reading for 2 s: the gateway applies
    backpressure to the origin instead of buffering the body."""
    size = 50 * MiB
    g = start_gateway(workers=1)
    request(g.port, "GET", "/warm")
    q = "?chunked=1" if chunked else ""
    sha = hashlib.sha256()
    got = 0
    with RssSampler(g.pid) as m:
        with RawConn(g.port, timeout=60) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            c.send(_head(f"/bytes/{size}{q}"))
            while b"\r\n\r\n" not in c.buf:
                assert c._fill(time.monotonic() + 10), "no response head"
            assert bytes(c.buf).startswith(b"HTTP/1.1 200"), bytes(c.buf[:200])
            time.sleep(2.0)  # stop reading: the gateway must push back on the origin
            stalled_peak = m.peak
            r = c.read_response(timeout=60)
            got = len(r.body)
            sha.update(r.body)
    print(
        f"\ndownload {'chunked' if chunked else 'CL'} 50 MiB: gateway RSS {m.base} KiB, peak while the client "
        f"stalled {stalled_peak} KiB, overall peak {m.peak} KiB (+{(m.peak - m.base) / 1024:.1f} MiB)"
    )
    assert got == size and sha.hexdigest() == pattern_sha256(size), f"body {got} bytes, sha mismatch"
    assert m.peak - m.base < 20 * 1024, f"gateway RSS grew by {(m.peak - m.base) / 1024:.1f} MiB"


def test_client_that_stops_reading_a_response_is_cut_at_body_timeout(start_gateway, origin):
    """A client asks for a large download and stops reading: once the gateway
    could write nothing to it for body-timeout (the longest gap between body
    bytes, in either direction; nginx: send_timeout), the connection is cut and
    the upstream connection released, instead of both being held forever."""
    g = start_gateway(body_timeout=2)
    with RawConn(g.port, timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.send(_head(f"/bytes/{512 * MiB}"))
        assert origin.wait_for(lambda: any(q.path.startswith("/bytes/") for q in origin.requests), 5)
        up = origin.conn(origin.requests[0].conn_id)
        # the origin's own send timeout is 30 s: a close well before is the gateway's
        released = origin.wait_for(lambda: up.closed or up.peer_closed, 15)
        assert released, f"upstream connection still streaming to a client that stopped reading ({up.sent >> 20} MiB sent)"
        assert c.wait_closed(15), "the client connection was not cut"


def test_slow_but_steady_reader_gets_the_whole_response(start_gateway, origin):
    """body-timeout bounds a *pause* in writing to the client, not a whole
    write: a client on a slow link that keeps reading (here 40 KiB/s through a
    4 KiB receive buffer: about 3 s for the body) gets
    the whole body under a 1 s body-timeout, as under nginx's send_timeout
    ("between two successive write operations")."""
    g = start_gateway(body_timeout=1)
    size = 128 * 1024
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", g.port))
    got = bytearray()
    try:
        s.sendall(_head(f"/bytes/{size}"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
            end = got.find(b"\r\n\r\n")
            if end >= 0 and len(got) - end - 4 >= size:
                break
            time.sleep(0.1)
    finally:
        s.close()
    end = got.find(b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200"), bytes(got[:80])
    body = bytes(got[end + 4 :])
    assert len(body) == size, f"cut after {len(body)} of {size} body bytes"
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)


@pytest.mark.parametrize("path", ["/healthz", "/proxied"])
def test_pipelining_client_that_never_reads_is_cut_at_body_timeout(start_gateway, origin, path):
    """A client pipelines requests and never reads the answers: once the gateway
    could write nothing to it for body-timeout, the connection is cut, whether
    the answers are the gateway's own (/healthz) or proxied - not held open
    forever with a full send queue."""
    g = start_gateway(body_timeout=2, idle_timeout=120)
    with RawConn(g.port, timeout=10) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.sock.setblocking(False)
        burst = f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode() * 100
        # Send until the gateway stops taking requests for a second: it is then
        # stuck writing answers nobody reads (or it already cut the connection).
        deadline = time.monotonic() + 30
        blocked_since = None
        while time.monotonic() < deadline:
            try:
                c.sock.send(burst)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 1:
                    break
                time.sleep(0.05)
            except OSError:
                break
        time.sleep(4)  # body-timeout 2 s, and nothing read meanwhile
        c.sock.setblocking(True)
        assert c.wait_closed(5), "a client that never reads its answers is still connected"


def test_idle_timeout_closes_keepalive_connection(start_gateway, origin):
    g = start_gateway(idle_timeout=1)
    with RawConn(g.port, timeout=15) as c:
        c.send(b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().status == 200
        assert c.wait_closed(15), "an idle keep-alive connection outlived --idle-timeout"
        assert not c.buf or bytes(c.buf).startswith(b"HTTP/1.1 408"), bytes(c.buf)


def test_header_count_boundary(small_limits, origin):
    """--max-headers 10: ten header lines (Host included) pass, eleven are 431."""
    ten = [f"X-{i}: v" for i in range(8)] + ["Connection: close"]  # + Host = 10
    ex = exchange(small_limits.port, _head("/ten-headers", ten))
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status == 200, f"10 headers with --max-headers 10: {ex}"
    ex = exchange(small_limits.port, _head("/eleven-headers", ten + ["X-8: v"]))
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status == 431, f"11 headers with --max-headers 10: {ex}"


def test_header_count_boundary_above_256(start_gateway, origin):
    """--max-headers 300 (the spec allows any count): 300 header lines pass,
    301 are 431 - the parser's stack array of 256 fields is not a hidden limit."""
    g = start_gateway(max_headers=300)
    fields = [f"X-{i}: v" for i in range(298)] + ["Connection: close"]  # + Host = 300
    ex = exchange(g.port, _head("/300-headers", fields))
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status == 200, f"300 headers with --max-headers 300: {ex}"
    req = origin.wait_requests(1)[0]
    assert len(req.header_names()) >= 298, req
    ex = exchange(g.port, _head("/301-headers", fields + ["X-298: v"]))
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status == 431, f"301 headers with --max-headers 300: {ex}"


def test_declared_body_one_over_limit_413(small_limits, origin):
    ex = exchange(small_limits.port, _head("/post", ["Content-Length: 1025"], "POST") + b"x" * 1025)
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status == 413, ex
    assert_origin_saw_nothing(small_limits.port, origin)


def test_chunked_body_at_limit_served(small_limits, origin):
    body = b"400\r\n" + b"c" * 1024 + b"\r\n0\r\n\r\n"
    ex = exchange(small_limits.port, _head("/sink", ["Transfer-Encoding: chunked", "Connection: close"], "POST") + body)
    assert ex.statuses == [200], ex
    assert ex.responses[0].body.split()[0] == b"1024"


# ---------------------------------------------------------------- bounded memory under any input
_FLOOD = 16 * MiB


def _flood_cases():
    line = b"X-T: " + b"t" * 1000 + b"\r\n"
    return {
        # a chunk-size line that never ends (a 16 MiB chunk extension)
        "endless-chunk-extension": (
            _head("/flood", ["Transfer-Encoding: chunked"], "POST") + b"5;ext=",
            b"e" * 65536,
        ),
        # a trailer section that never ends (16,000 lines of 1 KiB)
        "endless-trailers": (
            _head("/flood", ["Transfer-Encoding: chunked"], "POST") + b"5\r\nhello\r\n0\r\n",
            line * 64,
        ),
        # empty lines before a request, forever
        "endless-empty-lines": (b"", b"\r\n" * 32768),
        # a header line without an end
        "endless-header-line": (b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ", b"h" * 65536),
        # a request line without an end
        "endless-request-line": (b"GET /", b"u" * 65536),
        # endless header lines, each small
        "endless-header-lines": (b"GET / HTTP/1.1\r\nHost: a\r\n", line * 64),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_flood_cases()))
def test_memory_bounded_under_endless_input(start_gateway, origin, name):
    """16 MiB of input that never completes a protocol element: the gateway stops
    reading it (an error status and/or a close) and its RSS does not follow the input."""
    g = start_gateway(workers=1)
    request(g.port, "GET", "/warm")
    prefix, unit = _flood_cases()[name]
    sent = 0
    with RssSampler(g.pid) as m:
        with RawConn(g.port, timeout=30) as c:
            ok = c.send(prefix)
            while ok and sent < _FLOOD:
                ok = c.send(unit)
                if ok:
                    sent += len(unit)
            closed = c.wait_closed(10)  # also collects any answer
            cut = not ok or closed
            answered = bytes(c.buf[:40])
    growth = m.peak - m.base
    print(f"\n{name}: sent {sent >> 10} KiB before the gateway stopped reading; RSS +{growth} KiB; answer {answered!r}")
    assert growth < 8 * 1024, f"{name}: gateway RSS grew {growth} KiB while fed {sent >> 10} KiB"
    assert cut, f"{name}: gateway still reading after {sent >> 20} MiB of a never-ending element"
    if answered:
        status = int(answered.split(b" ")[1])
        assert status in (400, 408, 413, 414, 431), answered
    assert not [q for q in origin.requests if q.path == "/flood" and q.complete], "flood request completed"
    assert request(g.port, "GET", "/healthz").status == 200


@pytest.mark.slow
def test_pipelining_client_that_never_reads_bounded_memory(start_gateway, origin):
    """A client pipelines thousands of requests for 64 KiB responses and never reads:
    the gateway stops reading requests when its output backs up, instead of
    queueing responses in memory."""
    g = start_gateway(workers=1)
    request(g.port, "GET", "/warm")
    # ~1 KiB per request, so the requests alone overflow the socket buffers
    req = b"GET /bytes/65536 HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
    sent = 0
    with RssSampler(g.pid) as m:
        c = RawConn(g.port, timeout=1)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline and sent < 200_000:
                c.sock.settimeout(max(0.1, deadline - time.monotonic()))
                c.sock.sendall(req * 50)
                sent += 50
        except OSError:
            pass
        time.sleep(1.0)
        c.close()
    growth = m.peak - m.base
    print(f"\npipelined {sent} requests ({sent * len(req) >> 20} MiB) for 64 KiB each without reading: RSS +{growth} KiB")
    assert growth < 16 * 1024, f"gateway RSS grew by {growth} KiB for a client that does not read"
    assert request(g.port, "GET", "/healthz").status == 200


def test_client_abort_mid_request_body_aborts_upstream(gateway, origin):
    """The client sends part of a declared body and disconnects: the upstream request
    is aborted (never completed), and later requests are unaffected."""
    c = RawConn(gateway.port)
    c.send(b"POST /sink?tag=abort HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000)
    origin.wait_for(lambda: any(q.path == "/sink" for q in origin.requests), 3)
    c.close()
    for q in [q for q in origin.requests if q.path == "/sink"]:
        conn = origin.conn(q.conn_id)
        assert origin.wait_for(lambda: conn.closed or conn.peer_closed, 10), "upstream request not aborted"
        assert not q.complete, q
    for i in range(3):
        assert request(gateway.port, "GET", f"/after-abort{i}").body == f"GET /after-abort{i}\n".encode()


def test_client_abort_mid_response_releases_upstream(gateway, origin):
    """The client disconnects while a large response streams: the gateway drops the
    upstream connection (it cannot be reused mid-body) and keeps serving."""
    fds0 = gateway.fds()
    c = RawConn(gateway.port, timeout=10)
    c.send(b"GET /bytes/52428800 HTTP/1.1\r\nHost: a\r\n\r\n")
    got = 0
    while got < 1 << 20 and c._fill(time.monotonic() + 10):
        got += len(c.buf)
        c.buf.clear()
    c.close()
    q = [q for q in origin.wait_requests(1) if q.path.startswith("/bytes/")][0]
    conn = origin.conn(q.conn_id)
    assert origin.wait_for(lambda: conn.closed or conn.peer_closed, 15), (
        "upstream connection still open 15 s after the client went away mid-response"
    )
    assert conn.sent < 52428800, "the origin was allowed to send the whole body to nobody"
    for i in range(3):
        assert request(gateway.port, "GET", f"/after-cut{i}").body == f"GET /after-cut{i}\n".encode()
    time.sleep(0.5)
    assert gateway.fds() <= fds0 + 4, f"fds {fds0} -> {gateway.fds()}"


@pytest.mark.slow
def test_slow_client_memory_is_freed(start_gateway, origin):
    """Waves of 1,000 clients stuck in their request head: each wave is cut at the
    header timeout, and its memory is reused by the next wave (RSS plateaus after
    the first wave instead of growing with every wave - no leak per cut connection)."""
    _raise_nofile(1500)
    g = start_gateway(workers=1, header_timeout=1)
    peaks = []
    for wave in range(4):
        socks = []
        try:
            for _ in range(1000):
                s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
                s.sendall(b"GET /wave HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 200)
                socks.append(s)
            deadline = time.monotonic() + 15
            cut = 0
            for s in socks:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    d = s.recv(100)
                    cut += d == b"" or d.startswith(b"HTTP/1.1 408")
                except OSError:
                    cut += 1  # reset
            assert cut == len(socks), f"wave {wave}: only {cut}/{len(socks)} cut at the header timeout"
        finally:
            for s in socks:
                s.close()
        time.sleep(0.3)
        peaks.append(g.rss_kib())
    print(f"\nRSS after each wave of 1,000 cut slow clients: {peaks} KiB")
    assert max(peaks[1:]) - peaks[0] < 4 * 1024, f"RSS keeps growing wave after wave: {peaks} KiB"
    assert not [q for q in origin.requests if q.path == "/wave"]
