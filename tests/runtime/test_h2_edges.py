"""Edges of the HTTP/2 downstream (runtime/src/proxy/http2/), h2c against
hello_gateway:

- a client's RST_STREAM while the gateway is still connecting to the
  upstream abandons the connect at once (RFC 9113 §5.4.2, §8.1: the stream
  is gone, nothing of it is sent upstream): the half-open socket is closed
  well before connect-timeout, the request never reaches the origin, the
  connection goes on serving, and a flood of such streams holds nothing;
- the known gaps the `h2` crate leaves (docs/architecture.md, "HTTP/2",
  "What the h2 crate decides"), pinned as strict xfails so that a crate
  upgrade that closes them is noticed: `te: Trailers` in another case is
  reset, an `:path` that is not UTF-8 ends the whole connection.

The upstream that "accepts nothing" is a listening socket whose accept
queue is full (backlog 0, one connection the test made and never
accepted): Linux drops the SYNs of every further connect, which stays in
SYN_SENT (seen in /proc/net/tcp) until the connecting socket is closed.
Once the test accepts the filler, the listener answers as an origin, so a
connect the gateway did not abandon would get through at its next SYN
retransmission (after 1 s, 3 s, ...) and be seen.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from support.h2client import CANCEL, PROTOCOL_ERROR, RawH2
from support.h2streams import Streams

H2C = {"protocols": "h1,h2c"}

# How long the test waits for what the gateway does at once: far below the
# connect-timeout the gateways here are given, so only an abandoned
# connect can end a wait early.
PROMPT = 5.0
CONNECT_TIMEOUT = 60


def _syn_sent_to(port: int) -> int:
    """Sockets on this host in SYN_SENT to 127.0.0.1:`port` (IPv4)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            cols = row.split()
            remote, state = cols[2], cols[3]
            if state == "02" and int(remote.split(":")[1], 16) == port:
                n += 1
    return n


class Blackhole:
    """A listener that completes no handshake until `open()`; then it is an
    origin that answers every request 200 and records the request lines."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        # Fills the accept queue of a backlog-0 listener.
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.requests: list[bytes] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.stopped = False
        self.threads: list[threading.Thread] = []

    def connecting(self) -> int:
        return _syn_sent_to(self.port)

    def wait_connecting(self, n: int, timeout: float = PROMPT) -> int:
        """Waits until exactly `n` connects to this listener are pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connecting() == n:
                return n
            time.sleep(0.05)
        return self.connecting()

    def open(self) -> None:
        """Accepts the filler (closed at once), then serves."""
        self.lsock.settimeout(5)
        filler, _ = self.lsock.accept()
        filler.close()
        self.filler.close()
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = b""
        try:
            while not self.stopped:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                with self.lock:
                    self.requests.append(head.split(b"\r\n", 1)[0])
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        except OSError:
            return
        finally:
            conn.close()

    def request_lines(self) -> list[bytes]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.stopped = True
        self.filler.close()
        self.lsock.close()
        for t in self.threads:
            t.join(2)


@pytest.fixture
def blackhole():
    b = Blackhole()
    yield b
    b.close()


# Both drivers: the polling driver (io_uring disabled, DESIGN.md) made its
# connect syscall on a blocking socket, so the worker itself hung in each
# connect to an upstream that does not answer, one at a time, out of reach
# of any reset or timer.
DRIVERS = pytest.mark.parametrize("driver", ["auto", "poll"])


@DRIVERS
def test_reset_while_connecting_abandons_the_connect(start_gateway, blackhole, driver):
    g = start_gateway(upstream=blackhole.addr, connect_timeout=CONNECT_TIMEOUT, driver=driver, **H2C)
    with Streams(g.addr) as c:
        sid = c.start("/cancelled-while-connecting")
        assert blackhole.wait_connecting(1) == 1, "the gateway never started connecting upstream"
        reset_at = time.monotonic()
        c.reset(sid, CANCEL)
        left = blackhole.wait_connecting(0)
        assert left == 0, f"the connect outlived the client's RST_STREAM ({left} still in SYN_SENT)"

        # The connection goes on: a local answer, then (the upstream open)
        # a proxied one on the same connection.
        local = c.start("/healthz")
        c.run(10, until=lambda: c.results[local].ended)
        assert c.results[local].status == 200
        blackhole.open()
        proxied = c.start("/after")
        c.run(10, until=lambda: c.results[proxied].ended or c.results[proxied].reset is not None)
        assert (c.results[proxied].status, c.results[proxied].head) == (200, b"ok\n")

        # Past two SYN retransmissions of a connect that was not given up:
        # the origin saw one connection, with only the later request.
        time.sleep(max(0.0, reset_at + 3.5 - time.monotonic()))
        assert blackhole.request_lines() == [b"GET /after HTTP/1.1"]
        assert blackhole.connections == 1
    assert g.alive()


@DRIVERS
def test_a_flood_of_streams_reset_while_connecting_holds_nothing(start_gateway, blackhole, driver):
    """150 streams (more than the 100 a connection may have open), each
    reset once its connect is under way: every connect is abandoned, the
    gateway's fds come back, and the full stream budget is there after."""
    g = start_gateway(upstream=blackhole.addr, connect_timeout=CONNECT_TIMEOUT, driver=driver, **H2C)
    with Streams(g.addr) as c:
        warm = c.start("/healthz")
        c.run(10, until=lambda: c.results[warm].ended)
        fds_before = g.fds()
        most_fds = fds_before
        for batch in range(3):
            sids = [c.start(f"/flood/{batch}/{i}") for i in range(50)]
            assert blackhole.wait_connecting(50) == 50, f"batch {batch}: not all 50 connects under way"
            most_fds = max(most_fds, g.fds())
            for sid in sids:
                c.conn.reset_stream(sid, CANCEL)
            c.flush()
            left = blackhole.wait_connecting(0)
            assert left == 0, f"batch {batch}: {left} connects outlived their streams' resets"
        assert most_fds >= fds_before + 50, "the connects were not the gateway's sockets"
        deadline = time.monotonic() + PROMPT
        while g.fds() > fds_before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert g.fds() <= fds_before + 2, f"fds {fds_before} before the flood, {g.fds()} after"

        # The whole budget of concurrent streams is free: 100 at once, all
        # answered by the (now open) upstream, none refused.
        blackhole.open()
        sids = [c.start(f"/after/{i}") for i in range(100)]
        c.run(30, until=lambda: all(c.results[s].ended or c.results[s].reset is not None for s in sids))
        statuses = [c.results[s].status for s in sids]
        assert statuses == [200] * 100, [(s, c.results[s].reset) for s in sids if c.results[s].status != 200]
        time.sleep(1.5)
        lines = blackhole.request_lines()
        assert not [l for l in lines if l.startswith(b"GET /flood/")], "a reset stream's request went upstream"
        assert len(lines) == 100
    assert g.alive()


# The gaps the `h2` crate leaves: strict, so a crate that closes one turns
# its test into a failure to be promoted (docs/architecture.md).
GAP_TE = pytest.mark.xfail(
    strict=True,
    reason="h2 0.4 compares `te` with \"trailers\" case-sensitively (frame/headers.rs, HeaderBlock::load) "
    "and resets the stream; not fixable without rewriting the client's HPACK bytes (docs/architecture.md)",
)
GAP_PATH = pytest.mark.xfail(
    strict=True,
    reason="h2 0.4's HPACK decoder refuses a `:path` that is not UTF-8 mid-block (hpack/header.rs, "
    "Header::new), a connection error; not fixable without rewriting the client's HPACK bytes "
    "(docs/architecture.md)",
)


@pytest.fixture
def h2gw(start_gateway):
    return start_gateway(**H2C)


def _until_done(sid: int):
    return lambda s: sid in s.ended or sid in s.resets or s.goaway is not None


@pytest.mark.parametrize(
    "value",
    ["trailers", pytest.param("Trailers", marks=GAP_TE), pytest.param("TRAILERS", marks=GAP_TE)],
)
def test_te_trailers_in_any_case_is_served(h2gw, origin, value):
    """RFC 9110 §10.1.4: TE's values are case-insensitive tokens, and
    RFC 9113 §8.2.2 allows `te` only with "trailers"."""
    with RawH2(h2gw.addr) as c:
        c.headers(1, block=c.block(path="/te", extra=[("te", value)]))
        s = c.read_frames(time.monotonic() + PROMPT, stop=_until_done(1))
    assert (s.status(1), s.resets.get(1), s.goaway) == (200, None, None), s
    reqs = origin.wait_requests(1)
    assert [r.target for r in reqs] == ["/te"] and not reqs[0].header("te"), reqs


def test_te_trailers_in_another_case_costs_only_its_stream(h2gw, origin):
    """What the gap costs today: the crate resets that stream
    (PROTOCOL_ERROR) before the gateway sees it; nothing goes upstream and
    the connection goes on."""
    with RawH2(h2gw.addr) as c:
        c.headers(1, block=c.block(path="/te-upper", extra=[("te", "Trailers")]))
        c.headers(3, block=c.block(path="/after-te"))
        s = c.read_frames(time.monotonic() + PROMPT, stop=_until_done(3))
    assert s.resets.get(1) == PROTOCOL_ERROR, s
    assert (s.status(3), s.goaway) == (200, None), s
    assert [r.target for r in origin.wait_requests(1)] == ["/after-te"]


@GAP_PATH
def test_a_path_that_is_not_utf8_costs_only_its_stream(h2gw, origin):
    """RFC 9113 §8.1.1: a malformed request is a stream error; the
    connection's other streams go on."""
    with RawH2(h2gw.addr) as c:
        c.headers(1, block=c.block(path=b"/\xff\xfe"))
        c.headers(3, block=c.block(path="/after-bad-path"))
        s = c.read_frames(time.monotonic() + PROMPT, stop=_until_done(3))
    assert s.resets.get(1) == PROTOCOL_ERROR or s.status(1) == 400, s
    assert (s.status(3), s.goaway) == (200, None), s


def test_a_path_that_is_not_utf8_ends_only_its_own_connection(h2gw, origin):
    """What the gap costs today: GOAWAY(PROTOCOL_ERROR) for the connection
    that sent it (a stream in flight on it is cut: its upstream request is
    abandoned), nothing of the bad request upstream, and the gateway's other
    connections served."""
    with RawH2(h2gw.addr) as bystander, RawH2(h2gw.addr) as c:
        c.headers(1, block=c.block(path="/slow?delay=2"))
        assert [r.target for r in origin.wait_requests(1)] == ["/slow?delay=2"]
        c.headers(3, block=c.block(path=b"/\xff\xfe"))
        s = c.ended_by_server(PROMPT)
        assert s.goaway == PROTOCOL_ERROR, s
        assert 1 not in s.ended, "the stream in flight was not cut (the gap is closed: update this test)"
        bystander.headers(1, block=bystander.block(path="/bystander"))
        b = bystander.read_frames(time.monotonic() + PROMPT, stop=_until_done(1))
        assert (b.status(1), b.goaway) == (200, None), b
    targets = [r.target for r in origin.requests]
    assert targets == ["/slow?delay=2", "/bystander"], targets
