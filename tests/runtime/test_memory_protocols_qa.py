"""RELIABILITY.md "Resource limits and slow clients", memory and slow
clients over TLS and HTTP/2, where test_limits.py measures cleartext
HTTP/1.1 only: "thousands of such clients at once do not slow other clients
down"; "no per-connection buffer grows without limit; idle connections cost
a few KiB each". A black-box pass with the real hello_gateway (1 worker
unless said), its RSS read from /proc, figures printed (`-s`):

- RSS per idle connection over each way in (h1, h1 over TLS, h2c, h2 over
  TLS, a TLS handshake and nothing sent, with ALPN http/1.1 and h2), 1,000
  each on one worker and 2,000 TLS on two (test_limits.py has 2,000 h1,
  test_h2_flow.py 1,000 h2; this puts them side by side);
- waves of 1,000 TLS downloads of 1 MiB at once: memory per connection in
  flight, and the memory reused by the next wave;
- 1,400 slow TLS clients a wave (half a ClientHello; a head trickled a byte
  a second after the handshake; half an h2 HEADERS block) all closed at
  header-timeout, TLS bystanders over HTTP/1.1 and h2 answered throughout;
- a 16 KiB TLS record sent one byte per segment (served), and 500
  connections each holding such a record but its last byte (closed at
  header-timeout, memory per connection bounded);
- h2 over TLS with 100 open streams left idle on each of 10 connections:
  every stream ended at body-timeout, the connections at idle-timeout.

Measured here (KiB per idle connection, 1,000 connections): Blitz h1 2.7,
h1/TLS 15.4, h2c 23.3, h2/TLS 32.1, TLS handshake only 15.2 (ALPN
http/1.1) / 26.2 (ALPN h2). Where the HTTP/2 part goes (heaptrack, heap
allocated per connection): the `h2` crate's write buffer 16 KiB
(`FramedWrite`, fixed capacity), tokio-util's read buffer under it 8 KiB,
the HPACK decoder 4 KiB, its stream store about 3.5 KiB kept after the
stream ended; over TLS rustls' deframer buffer 4 KiB, our posted read 2 KiB,
the connection's rustls state and AEAD keys about 2.5 KiB. The bounds below
are about 1.5 times the figures (a frame- or record-sized buffer kept per
idle connection breaks them); memory is asserted, timings never: waits
only bound how long a test blocks.
"""

from __future__ import annotations

import resource
import selectors
import socket
import ssl
import threading
import time

import pytest
from support.client import RawConn
from support.gateway import Gateway, rss_kib, settled_fd_count
from support.h2client import RawH2

AUTHORITY = "edge.test"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: edge.test\r\n\r\n"
# Timeouts far beyond a measurement, so only the one a test is about fires.
LONG = {"header_timeout": 60, "idle_timeout": 60, "body_timeout": 60}


# ------------------------------------------------------------------ helpers


def raise_nofile(n: int) -> None:
    """Lets this process hold `n` sockets (the gateway raises its own soft limit to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(hard, n)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Client:
    """Opens connections to one gateway over one way in: `h1`, `h2c`, `h1-tls`, `h2-tls`."""

    def __init__(self, g: Gateway, way: str, ca=None):
        self.g, self.way = g, way
        self.tls = way.endswith("tls")
        self.h2 = way.startswith("h2")
        self.ctx = None
        if self.tls:
            self.ctx = ssl.create_default_context(cafile=str(ca))
            self.ctx.set_alpn_protocols(["h2" if self.h2 else "http/1.1"])

    def sock(self, timeout: float = 10) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.g.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            s = self.ctx.wrap_socket(s, server_hostname=AUTHORITY)
        return s

    def served(self, path: str = "/healthz"):
        """A connection that made one request and got its 200 (left open, idle)."""
        s = self.sock()
        if self.h2:
            c = RawH2(self.g.addr, sock=s)
            c.headers(1, path=path, authority=AUTHORITY, scheme="https" if self.tls else "http")
            seen = c.read_frames(time.monotonic() + 10, stop=lambda seen: 1 in seen.ended or seen.closed)
            assert 1 in seen.ended and dict(seen.headers[1]).get(":status") == "200", seen
            return c
        c = RawConn(sock=s)
        c.send(HEALTHZ.replace(b"/healthz", path.encode()))
        r = c.read_response()
        assert r.status == 200, r
        return c


def per_connection_kib(g: Gateway, open_one, n: int, warm: int = 100) -> tuple[float, list]:
    """RSS growth per connection while `n` connections made by `open_one` are
    open, after `warm` were opened and closed (the allocator's first pages,
    lazily made state). Returns the figure and the connections (open)."""
    for c in [open_one() for _ in range(warm)]:
        c.close()
    settled_fd_count(g.pid, timeout=5)
    before = g.rss_kib()
    conns = [open_one() for _ in range(n)]
    time.sleep(0.5)
    return (g.rss_kib() - before) / n, conns


def close_all(conns) -> None:
    for c in conns:
        try:
            c.close()
        except OSError:
            pass


def tls_gateway(start_gateway, pki, **opts) -> Gateway:
    """A gateway with one TLS listener speaking `h1 h2` (ALPN decides)."""
    return start_gateway(protocols="h1,h2", tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), **opts)


def client_hello(pki) -> bytes:
    """The bytes of a real TLS ClientHello for edge.test (made in memory, never sent)."""
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=AUTHORITY)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class RecordClient:
    """A TLS client over a memory BIO: the handshake done over `sock`, then
    the ciphertext of what it writes handed back to the test to send as it
    likes (a record one byte at a time, a record without its last byte)."""

    def __init__(self, port: int, pki, alpn: str = "http/1.1"):
        ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
        ctx.set_alpn_protocols([alpn])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=AUTHORITY)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                data = self.sock.recv(65536)
                assert data, "the gateway closed during the handshake"
                self.inc.write(data)
        self.sock.sendall(self.out.read())  # the client's Finished

    def seal(self, plaintext: bytes) -> bytes:
        """The records carrying `plaintext` (one record up to 16 KiB)."""
        self.obj.write(plaintext)
        return self.out.read()

    def read_response(self, timeout: float = 10) -> bytes:
        """Decrypted bytes the gateway sent until a whole response with a
        content-length came, it closed, or `timeout` passed."""
        got, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline and not response_complete(got):
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not data:
                break
            self.inc.write(data)
            try:
                while True:
                    piece = self.obj.read(65536)
                    if not piece:
                        return got
                    got += piece
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return got
        return got

    def close(self) -> None:
        self.sock.close()


def response_complete(data: bytes) -> bool:
    """`data` holds an HTTP/1.1 head and the content-length it announces."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lengths = [ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
    return bool(lengths) and len(body) >= int(lengths[0])


def wait_closed_all(socks, timeout: float) -> int:
    """Reads (and drops) whatever the gateway sends on each socket until it
    closes them or `timeout` passes; the number closed. Works on plain
    sockets under TLS connections too: a close is EOF or a reset."""
    sel = selectors.DefaultSelector()
    open_ = set()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        open_.add(i)
    deadline = time.monotonic() + timeout
    try:
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                try:
                    if key.fileobj.recv(65536):
                        continue
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue  # a TLS record not whole yet
                except OSError:
                    pass  # a reset, or a TLS connection ended without close_notify
                sel.unregister(key.fileobj)
                open_.discard(key.data)
    finally:
        sel.close()
    return len(socks) - len(open_)


class Bystanders:
    """Well-behaved TLS clients, HTTP/1.1 and h2, each on a fresh connection,
    asking in a loop while a test's misbehaving clients are at it; every
    answer is checked, and they must have been answered at least once each."""

    def __init__(self, g: Gateway, pki):
        self.clients = [Client(g, "h1-tls", pki.path("ca.crt")), Client(g, "h2-tls", pki.path("ca.crt"))]
        self.answered = {c.way: 0 for c in self.clients}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for c in self.clients:
                try:
                    c.served(f"/bystander-{c.way}").close()
                    self.answered[c.way] += 1
                except (AssertionError, OSError) as e:
                    self.failures.append(f"{c.way}: {e!r}"[:300])
            self._stop.wait(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(20)

    def check(self):
        assert not self.failures, f"bystanders failed: {self.failures[:3]}"
        assert all(self.answered.values()), f"a bystander was never answered: {self.answered}"


# ------------------------------------------------------- idle connections

# KiB of gateway RSS per idle connection, by how it came in; measured on this
# machine (1 worker, 1,000 connections; 2 workers and 2,000 within 1 KiB of it):
# h1 2.7, h1-tls 15.4, h2c 23.3, h2-tls 32.1, a TLS handshake and nothing sent
# 15.2 (ALPN http/1.1) and 26.2 (ALPN h2). Bounds: about 1.5 times that, so a
# buffer of a frame or record kept per idle connection (16-17 KiB) breaks them.
IDLE_BOUND_KIB = {
    "h1": 8, "h1-tls": 24, "h2c": 36, "h2-tls": 52, "tls-handshake-h1": 24, "tls-handshake-h2": 40,
}


def idle_opener(g: Gateway, way: str, pki):
    """How `way` opens one idle connection: served one request, or (`tls-handshake-*`) only the handshake."""
    if way.startswith("tls-handshake"):
        return Client(g, "h2-tls" if way.endswith("h2") else "h1-tls", pki.path("ca.crt")).sock
    return Client(g, way, pki.path("ca.crt")).served


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
@pytest.mark.parametrize("way", list(IDLE_BOUND_KIB))
def test_idle_connection_costs_a_few_kib(start_gateway, pki, way):
    """RELIABILITY.md: "idle connections cost a few KiB each", over every way
    in. 1,000 connections held open (after a request, or, for
    `tls-handshake-*`, right after the handshake), RSS growth per connection
    printed and bounded; a sample of them still answers afterwards."""
    n = 1000
    raise_nofile(n + 600)
    tls = "tls" in way
    opts = dict(workers=1, **LONG)
    g = tls_gateway(start_gateway, pki, **opts) if tls else start_gateway(protocols="h1,h2c", **opts)
    per, conns = per_connection_kib(g, idle_opener(g, way, pki), n)
    try:
        print(f"\nidle {way}: {per:.1f} KiB per connection ({n} connections, 1 worker)")
        if not way.startswith("tls-handshake"):
            again = Client(g, way, pki.path("ca.crt"))
            for c in conns[:: n // 10]:
                if again.h2:
                    c.headers(3, path="/again", authority=AUTHORITY, scheme="https" if tls else "http")
                    seen = c.read_frames(time.monotonic() + 10, stop=lambda s: 3 in s.ended or s.closed)
                    assert 3 in seen.ended, seen
                else:
                    c.send(HEALTHZ)
                    assert c.read_response().status == 200
        assert per < IDLE_BOUND_KIB[way], f"{way}: {per:.1f} KiB per idle connection"
    finally:
        close_all(conns)


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
def test_idle_tls_connections_on_two_workers(start_gateway, pki):
    """The same over two workers (each its own heap and timers): 2,000 idle
    connections, half HTTP/1.1 and half h2 over TLS, cost what they cost on one."""
    n = 1000
    raise_nofile(2 * n + 600)
    g = tls_gateway(start_gateway, pki, workers=2, **LONG)
    conns = []
    try:
        for way in ("h1-tls", "h2-tls"):
            per, opened = per_connection_kib(g, idle_opener(g, way, pki), n)
            conns += opened
            print(f"\nidle {way}: {per:.1f} KiB per connection ({n} more connections, 2 workers)")
            assert per < IDLE_BOUND_KIB[way], f"{way}: {per:.1f} KiB per idle connection"
    finally:
        close_all(conns)


# ------------------------------------------------------- a burst, then quiet

MiB = 1 << 20


class RssPeak:
    """The highest VmRSS of a process while the block runs (sampled on a thread)."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, rss_kib(pid)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(2)


def read_download(sock: socket.socket, timeout: float = 30) -> int:
    """Reads one HTTP/1.1 response with a content-length off `sock`, dropping
    the body; the body's length (-1 if cut)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return -1
        buf += data
    head, _, got = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")).split(b":")[1])
    have = len(got)
    while have < length:
        data = sock.recv(min(1 << 18, length - have))
        if not data:
            return -1
        have += len(data)
    return have


def rss_settled(g: Gateway, timeout: float = 10) -> int:
    """RSS once it stopped falling for a second (the allocator gives freed
    pages back with a delay), or as it is after `timeout`."""
    last, since, deadline = g.rss_kib(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = g.rss_kib()
        if now < last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break
    return last


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
def test_tls_download_burst_memory_comes_back(start_gateway, pki, origin):
    """1,000 TLS connections each ask for 1 MiB at once and read their
    answers one after the other (so most wait with their response in
    flight), then all close; three such waves. While they are open the
    gateway holds a bounded amount per connection; once they are gone the
    memory is reused by the next wave (the peaks stay where the first was:
    buffers freed with their connection, not kept per connection, nor grown
    without bound by a pool). RSS does not come back to the baseline by
    itself: mimalloc keeps the freed pages of a worker that went quiet
    (with MIMALLOC_PURGE_DELAY=0 it came back to within 2.5 MiB)."""
    n = 1000
    raise_nofile(n + 600)
    g = tls_gateway(start_gateway, pki, workers=1, **LONG)
    client = Client(g, "h1-tls", pki.path("ca.crt"))
    for _ in range(20):  # warm: the allocator, the upstream pool, the session cache
        with client.sock() as s:
            s.sendall(b"GET /bytes/1048576 HTTP/1.1\r\nHost: edge.test\r\n\r\n")
            assert read_download(s) == MiB
    base = rss_settled(g)
    fds_base = settled_fd_count(g.pid)
    peaks, afters, fds = [], [], []
    for wave in range(3):
        socks = []
        try:
            with RssPeak(g.pid) as peak:
                for _ in range(n):
                    s = client.sock()
                    s.sendall(b"GET /bytes/1048576 HTTP/1.1\r\nHost: edge.test\r\n\r\n")
                    socks.append(s)
                got = [read_download(s) for s in socks]
        finally:
            close_all(socks)
        assert got.count(MiB) == n, f"wave {wave}: {n - got.count(MiB)} downloads cut"
        peaks.append(peak.peak)
        afters.append(rss_settled(g))
        fds.append(settled_fd_count(g.pid))
    print(f"\n{n} TLS downloads of 1 MiB at once, 3 waves: RSS before {base} KiB, peaks {peaks} KiB "
          f"(+{(max(peaks) - base) / n:.1f} KiB per connection), after each wave {afters} KiB; "
          f"fds {fds_base} -> {fds}")
    assert max(peaks) - base < n * 64, f"{(max(peaks) - base) / n:.1f} KiB per connection in flight"
    # A leak per download raises each wave's peak by the wave's size times
    # the leak (8 MiB over two waves at 4 KiB); what the allocator keeps once
    # a wave is gone (it gives pages back lazily) is reused by the next one.
    # Peaks vary by up to ~4 MiB run to run: how many responses are buffered
    # at once, how many upstream connections stay pooled.
    assert max(peaks[1:]) - peaks[0] < 8 * 1024, f"RSS peaks grow wave after wave: {peaks} KiB"
    assert max(afters) <= max(peaks) + 1024, f"RSS after the waves {afters} KiB, above their peaks {peaks} KiB"
    assert max(fds) <= fds_base + 64, f"fds {fds_base} -> {fds}"


# ------------------------------------------------------- slow clients over TLS

SLOW_HEAD = b"GET /slow-tls HTTP/1.1\r\nHost: edge.test\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"


class SlowCrowd:
    """Thousands of clients that never finish their opening, over TLS:
    `half_hello` send half a ClientHello; `trickle` finish the handshake and
    send a request head one byte (one TLS record) per second; `half_block`
    open h2 and send a HEADERS frame without END_HEADERS. One loop drives
    them all (a TLS socket is used by one thread only) and notes which the
    gateway closed."""

    def __init__(self, g: Gateway, pki, half_hello: int, trickle: int, half_block: int):
        self.kinds: dict[str, list] = {"half_hello": [], "trickle": [], "half_block": []}
        hello = client_hello(pki)
        for _ in range(half_hello):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
            s.sendall(hello[: len(hello) // 2])
            self.kinds["half_hello"].append(s)
        h1 = Client(g, "h1-tls", pki.path("ca.crt"))
        for _ in range(trickle):
            self.kinds["trickle"].append(h1.sock())
        h2c = Client(g, "h2-tls", pki.path("ca.crt"))
        for _ in range(half_block):
            c = RawH2(g.addr, sock=h2c.sock())
            c.headers(1, end_headers=False, end_stream=True, path="/slow-tls", authority=AUTHORITY, scheme="https")
            self.kinds["half_block"].append(c.sock)
        self.sent = {id(s): 0 for s in self.kinds["trickle"]}
        self.closed: set[int] = set()

    def all(self) -> list:
        return [s for socks in self.kinds.values() for s in socks]

    def run(self, timeout: float) -> None:
        """Trickles and reads until the gateway closed every connection or `timeout` passed."""
        sel = selectors.DefaultSelector()
        for s in self.all():
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while len(self.closed) < len(self.all()) and time.monotonic() < deadline:
                tick = time.monotonic() + 1
                for s in self.kinds["trickle"]:
                    i = self.sent[id(s)]
                    if id(s) in self.closed or i >= len(SLOW_HEAD) - 1:
                        continue
                    try:
                        self.sent[id(s)] += s.send(SLOW_HEAD[i : i + 1])
                    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    except OSError:
                        self._closed(sel, s)
                while time.monotonic() < tick:
                    for key, _ in sel.select(timeout=max(0.0, tick - time.monotonic())):
                        try:
                            if key.fileobj.recv(65536):
                                continue
                        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                            continue
                        except OSError:
                            pass
                        self._closed(sel, key.fileobj)
        finally:
            sel.close()

    def _closed(self, sel, s) -> None:
        if id(s) not in self.closed:
            self.closed.add(id(s))
            sel.unregister(s)

    def open_left(self) -> dict[str, int]:
        return {k: sum(id(s) not in self.closed for s in socks) for k, socks in self.kinds.items()}

    def close(self) -> None:
        close_all(self.all())


@pytest.mark.slow
@pytest.mark.timeout(150, func_only=True)
def test_thousands_of_slow_tls_clients(start_gateway, pki, origin):
    """RELIABILITY.md: a client slower than header-timeout is cut at that
    timeout "with its memory freed; thousands of such clients at once do not
    slow other clients down", over TLS: 600 clients stalled mid-ClientHello,
    400 trickling a request head a byte a second after the handshake and 400
    h2 clients with half a HEADERS block, in two waves. Every one is closed
    by the gateway, nothing reaches the origin, TLS bystanders (HTTP/1.1 and
    h2) are answered throughout, memory per slow client is bounded, the
    second wave reuses the first's memory, and the descriptors come back."""
    raise_nofile(1400 + 600)
    g = tls_gateway(start_gateway, pki, workers=1, header_timeout=4, idle_timeout=60, body_timeout=60)
    for c in [Client(g, w, pki.path("ca.crt")).served() for w in ("h1-tls", "h2-tls") for _ in range(50)]:
        c.close()  # warm
    base, fds_base = rss_settled(g, 3), settled_fd_count(g.pid)
    peaks, afters, fds_after = [], [], []
    with Bystanders(g, pki) as bystanders:
        for wave in range(2):
            crowd = None
            try:
                with RssPeak(g.pid) as peak:
                    crowd = SlowCrowd(g, pki, half_hello=600, trickle=400, half_block=400)
                    crowd.run(timeout=30)
                left = crowd.open_left()
            finally:
                if crowd:
                    crowd.close()
            assert not any(left.values()), f"wave {wave}: still open 30 s past a 4 s header-timeout: {left}"
            assert sum(crowd.sent.values()) > 0, "no byte of a head was trickled after a handshake"
            peaks.append(peak.peak)
            afters.append(rss_settled(g, 5))
            fds_after.append(settled_fd_count(g.pid))
    print(f"\n1,400 slow TLS clients a wave: RSS before {base} KiB, peaks {peaks} KiB "
          f"(+{(max(peaks) - base) / 1400:.1f} KiB per slow client), after {afters} KiB; fds {fds_base} -> "
          f"{fds_after}; bystanders answered {bystanders.answered}")
    bystanders.check()
    assert not [q for q in origin.requests if q.path == "/slow-tls"], "a slow client's request reached the origin"
    assert max(peaks) - base < 1400 * 40, f"{(max(peaks) - base) / 1400:.1f} KiB per slow client"
    # A leak per connection raises each wave's peak by the wave's size times
    # the leak; what the allocator keeps once a wave is gone (it gives pages
    # back lazily, so "after" varies run to run) is reused by the next one.
    assert max(peaks[1:]) - peaks[0] < 4 * 1024, f"RSS peaks grow wave after wave: {peaks} KiB"
    assert max(afters) <= peaks[0] + 4 * 1024, f"RSS after the waves {afters} KiB, above the first peak {peaks[0]} KiB"
    assert max(fds_after) <= fds_base + 8, f"fds {fds_base} -> {fds_after}"


# ------------------------------------------------------- partial TLS records

RECORD = 16 * 1024  # the largest TLS plaintext record


def record_sized_head(path: str) -> bytes:
    """A GET whose head fills one TLS record exactly (within the default max-header-bytes, 16 KiB)."""
    start = f"GET {path} HTTP/1.1\r\nHost: edge.test\r\nX-Pad: ".encode()
    return start + b"p" * (RECORD - len(start) - 4) + b"\r\n\r\n"


def test_tls_record_sent_one_byte_at_a_time(start_gateway, pki, origin):
    """A request in one full 16 KiB TLS record, written one byte per TCP
    segment: the gateway reassembles the record (rustls decrypts only whole
    records) in bounded memory and serves the request."""
    g = tls_gateway(start_gateway, pki, workers=1, **LONG)
    Client(g, "h1-tls", pki.path("ca.crt")).served().close()  # warm
    c = RecordClient(g.port, pki)
    before = rss_settled(g, 3)
    try:
        record = c.seal(record_sized_head("/one-byte-record"))
        assert len(record) < RECORD + 256 and record[0] == 23, "not one application-data record"
        with RssPeak(g.pid) as peak:
            for i in range(len(record)):
                c.sock.sendall(record[i : i + 1])
            answer = c.read_response(10)
    finally:
        c.close()
    print(f"\na {len(record)}-byte record one byte at a time: RSS {before} KiB, peak {peak.peak} KiB")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert [q for q in origin.requests if q.path == "/one-byte-record"]
    assert peak.peak - before < 2048, f"RSS {before} KiB -> {peak.peak} KiB for one record"


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
def test_many_tls_connections_holding_a_partial_record(start_gateway, pki, origin):
    """500 TLS connections each send a 16 KiB record but its last byte (a
    request head the gateway cannot decrypt yet) and stop: each holds at
    most a record's worth more than an idle TLS connection, all are closed
    at header-timeout with their memory reused and descriptors freed, and
    the same record completed (a control, on 10 more) is served."""
    n = 500
    raise_nofile(n + 600)
    g = tls_gateway(start_gateway, pki, workers=1, header_timeout=6, idle_timeout=60, body_timeout=60)
    for c in [Client(g, "h1-tls", pki.path("ca.crt")).served() for _ in range(50)]:
        c.close()  # warm
    base, fds_base = rss_settled(g, 3), settled_fd_count(g.pid)
    clients = []
    try:
        with RssPeak(g.pid) as peak:
            for _ in range(n):
                c = RecordClient(g.port, pki)
                clients.append(c)
                c.sock.sendall(c.seal(record_sized_head("/partial"))[:-1])
            time.sleep(0.5)
            held = (rss_kib(g.pid) - base) / n
            controls = [RecordClient(g.port, pki) for _ in range(10)]
            for c in controls:
                c.sock.sendall(c.seal(record_sized_head("/partial-completed")))
            served = [c.read_response(10).startswith(b"HTTP/1.1 200") for c in controls]
            close_all(c.sock for c in controls)
            cut = wait_closed_all([c.sock for c in clients], timeout=30)
    finally:
        close_all(c.sock for c in clients)
    after, fds_after = rss_settled(g, 5), settled_fd_count(g.pid)
    print(f"\n{n} TLS connections holding a 16 KiB record but one byte: {held:.1f} KiB each "
          f"(RSS {base} KiB -> peak {peak.peak} KiB -> {after} KiB after); fds {fds_base} -> {fds_after}")
    assert all(served), f"completed records served: {served}"
    assert cut == n, f"{n - cut} of {n} still open 30 s past a 6 s header-timeout"
    assert not [q for q in origin.requests if q.path == "/partial"]
    assert held < IDLE_BOUND_KIB["h1-tls"] + 40, f"{held:.1f} KiB per connection holding a partial record"
    # the controls' upstream connections may stay pooled
    assert fds_after <= fds_base + len(controls) + 4, f"fds {fds_base} -> {fds_after}"


# ------------------------------------------------------- h2: open streams left idle


@pytest.mark.slow
@pytest.mark.timeout(120, func_only=True)
def test_h2_connections_with_100_idle_streams(start_gateway, pki, origin):
    """10 HTTP/2 connections each open 100 streams (the most the gateway
    allows at once) with a HEADERS frame that does not end the stream and
    then send nothing: memory per connection stays bounded (its streams'
    state and their upstream requests), every stream is ended at
    body-timeout (an answer or a reset), the idle connection then at
    idle-timeout (GOAWAY and close), and the upstream requests are aborted
    and the descriptors freed. Over TLS (h2c runs the same code above the
    transport, and measured the same within 4%: 17.3 KiB per stream)."""
    way, conns_n, streams = "h2-tls", 10, 100
    raise_nofile(conns_n * streams * 2 + 600)
    opts = {"workers": 1, "header_timeout": 60, "body_timeout": 3, "idle_timeout": 5}
    g = tls_gateway(start_gateway, pki, **opts)
    client = Client(g, way, pki.path("ca.crt"))
    scheme = "https" if client.tls else "http"
    for c in [client.served() for _ in range(20)]:
        c.close()  # warm
    base, fds_base = rss_settled(g, 3), settled_fd_count(g.pid)
    conns = []
    try:
        for _ in range(conns_n):
            c = RawH2(g.addr, sock=client.sock())
            for i in range(streams):
                c.headers(1 + 2 * i, end_stream=False, method="POST", path="/idle-stream", authority=AUTHORITY,
                          scheme=scheme)
            conns.append(c)
        origin.wait_for(lambda: len([q for q in origin.requests if q.path == "/idle-stream"]) >= conns_n * streams,
                        timeout=15)
        time.sleep(0.5)
        held = (g.rss_kib() - base) / conns_n
        fds_held = g.fds() - fds_base
        upstream = len([q for q in origin.requests if q.path == "/idle-stream"])
        ended = [c.read_frames(time.monotonic() + 20, stop=lambda s: s.closed) for c in conns]
    finally:
        close_all(conns)
    after, fds_after = rss_settled(g, 5), settled_fd_count(g.pid)
    print(f"\n{conns_n} {way} connections with {streams} idle streams each: {held:.0f} KiB per connection "
          f"({held / streams:.1f} KiB per stream), {fds_held} fds held, {upstream} requests upstream; "
          f"RSS {base} KiB -> {after} KiB after; fds {fds_base} -> {fds_after}")
    for seen in ended:
        unanswered = [sid for sid in range(1, 2 * streams, 2) if sid not in seen.resets and sid not in seen.ended]
        assert not unanswered, f"streams neither answered nor reset at body-timeout: {unanswered[:10]}"
        assert seen.goaway is not None and seen.closed, f"connection not ended at idle-timeout: {seen.frames[-5:]}"
    assert held < streams * 48, f"{held:.0f} KiB per connection with {streams} idle streams"
    assert fds_after <= fds_base + 8, f"fds {fds_base} -> {fds_after}"
    assert origin.wait_for(lambda: not [c for c in origin.open_conns()], timeout=10), "upstream requests not aborted"
