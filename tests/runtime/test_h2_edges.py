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

from support.h2client import CANCEL, PROTOCOL_ERROR, H2Client, RawH2
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


def test_reset_while_connecting_abandons_the_connect(start_gateway, blackhole):
    g = start_gateway(upstream=blackhole.addr, connect_timeout=CONNECT_TIMEOUT, **H2C)
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


def test_a_flood_of_streams_reset_while_connecting_holds_nothing(start_gateway, blackhole):
    """150 streams (more than the 100 a connection may have open), each
    reset once its connect is under way: every connect is abandoned, the
    gateway's fds come back, and the full stream budget is there after."""
    g = start_gateway(upstream=blackhole.addr, connect_timeout=CONNECT_TIMEOUT, **H2C)
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
