"""A critical review, as black-box tests, of the runtime changes of one day
(629f2a0..d7df2d9), above all full duplex (d7df2d9): an upstream that
answers 2xx with keep-alive before it read the request body gets the rest of
it while its answer streams down; any other early answer ends the upload.

test_full_duplex.py proves the happy path (a lockstep echo over HTTP/1.1
and h2c); test_differential_responses_qa.py an early 2xx and an early 413.
This file probes what can go wrong once both directions are live, over
HTTP/1.1, h2c and TLS (h1 and h2 by ALPN), against RELIABILITY.md: never a
hang, never a request the upstream reads differently, never data lost or
silently truncated (a cut is a reset, a missing last chunk, an
RST_STREAM), memory bounded. Then, briefly, the other changes of the day:
Proxy-Status relayed, reason phrases, Expect lists, 414, a percent-encoded
Host, strict trailer lines.

The origin (`DuplexOrigin`) answers the moment it has a request head and
then, as the path asks, echoes the body piece by piece, or answers at once
and goes on reading, and may reset, close or stall after so many body bytes.
It records, per request, the body it got and whether that body ended as its
framing says (`complete`), and per connection whether the gateway closed it.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from support.client import Closed, RawConn
from support.gateway import Gateway
from support.h2streams import Streams, body_of, sha
from support.pki import Pki
from support.waits import wait_until

# Every wait below only bounds how long a test blocks.
BOUND = 10.0
# The gateway's timeouts for these tests: short, so a timeout case ends soon.
BODY_TIMEOUT = 2
RESPONSE_TIMEOUT = 2
MAX_BODY = 200_000
PIECE = b"p" * 4000


# ---------------------------------------------------------------- the origin


@dataclass
class Seen:
    """One request as the origin read it."""

    path: str
    cid: int
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # the body ended as its framing says (last chunk, or all of content-length)
    chunked: bool = False


class DuplexOrigin:
    """An HTTP/1.1 origin that answers before it reads the body.

    The query of the request-target chooses: `answer=echo` (default) a 200
    chunked head at once, then every read of the body echoed as a chunk and
    the last chunk when the body ends; `answer=done` a complete `200`
    (content-length 4, keep-alive) at once, then it reads the body to its
    end; `answer=204` the same with a 204; `answer=close` a complete
    `200` with `Connection: close`, then it closes without reading;
    `answer=later` a 200 chunked head at once, then nothing until the body
    ended, then `got N` and the last chunk. `after=N&then=reset|close|stall`
    does that once N body bytes were read (`stall`: neither reads nor
    writes again, until the gateway closes the connection). Keep-alive:
    the next request on the connection is served the same way. A path in
    `scripts` gets those raw bytes instead."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[Seen] = []
        # path -> raw answer parts, sent 0.2 s apart, then the connection
        # closes (for the checks of the other changes; no body is read).
        self.scripts: dict[str, list[bytes]] = {}
        self.connections = 0
        self.closed_by_gateway: dict[int, threading.Event] = {}
        # Connections a script answered keep-alive and this origin is about
        # to close: see settle().
        self.ending: set[int] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()

    def settle(self) -> None:
        """Waits until every connection a script answered is closed. A
        script's answer is keep-alive and then the origin closes: on a busy
        machine the close can lag, and the next test's POST would meet that
        connection in the gateway's pool before its FIN, the keep-alive race
        (a 502, as no proxy replays a POST). Once `close` returned, the FIN
        is in the gateway's receive queue, and its pool never hands that
        connection out."""
        wait_until(lambda: not self.ending, BOUND)

    def requests(self, path_prefix: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.startswith(path_prefix)]

    def wait_closed(self, cid: int, timeout: float = BOUND) -> bool:
        return self.closed_by_gateway[cid].wait(timeout)

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                cid = self.connections
                self.closed_by_gateway[cid] = threading.Event()
            threading.Thread(target=self._serve, args=(c, cid), daemon=True).start()

    def _serve(self, c: socket.socket, cid: int) -> None:
        c.settimeout(30)
        buf = bytearray()
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        raise ConnectionResetError("closed between requests")
                    buf += d
                i = buf.index(b"\r\n\r\n")
                head = bytes(buf[:i])
                del buf[: i + 4]
                if not self._exchange(c, cid, head, buf):
                    return
        except OSError:
            self.closed_by_gateway[cid].set()
        finally:
            c.close()
            with self.lock:
                self.ending.discard(cid)

    def _exchange(self, c: socket.socket, cid: int, head: bytes, buf: bytearray) -> bool:
        """Serves one request; False once the connection is done with."""
        lines = head.split(b"\r\n")
        target = lines[0].split(b" ")[1].decode()
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        q = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
        seen = Seen(target, cid, chunked=fields.get(b"transfer-encoding", b"").lower() == b"chunked")
        with self.lock:
            self.seen.append(seen)
        parts = self.scripts.get(urlsplit(target).path)
        if parts is not None:
            with self.lock:
                self.ending.add(cid)
            for i, part in enumerate(parts):
                if i:
                    time.sleep(0.2)  # the parts before went out on their own
                c.sendall(part)
            return False
        answer = q.get("answer", "echo")
        after, then = int(q.get("after", "-1")), q.get("then", "")
        if answer in ("echo", "later"):
            c.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        elif answer == "done":
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
        elif answer == "close":
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone")
            c.shutdown(socket.SHUT_WR)
            return False
        else:
            c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        done = after == 0
        if done and not self._then(c, cid, then):
            return False
        for piece in self._body(c, fields, buf, seen):
            if answer == "echo":
                c.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            if not done and 0 < after <= len(seen.body):
                done = True
                if not self._then(c, cid, then):
                    return False
        if answer == "later":
            c.sendall(chunk(b"got %d" % len(seen.body)))
        if answer in ("echo", "later"):
            c.sendall(b"0\r\n\r\n")
        return True

    def _then(self, c: socket.socket, cid: int, then: str) -> bool:
        if then == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if then == "close":
            c.shutdown(socket.SHUT_RDWR)
            return False
        if then == "stall":
            # Neither reads nor writes: waits for the gateway to end the connection.
            p = select.poll()
            p.register(c, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
            if p.poll(30_000):
                self.closed_by_gateway[cid].set()
            return False
        return True

    def _body(self, c: socket.socket, fields: dict, buf: bytearray, seen: Seen):
        """Yields the body's pieces as they are read; sets `seen.complete`
        once it ended as framed. Leaves the bytes after it in `buf`."""

        def more() -> None:
            d = c.recv(65536)
            if not d:
                raise ConnectionResetError("closed mid-body")
            buf.extend(d)

        if b"content-length" in fields:
            left = int(fields[b"content-length"])
            while left:
                if not buf:
                    more()
                piece = bytes(buf[:left])
                del buf[: len(piece)]
                left -= len(piece)
                seen.body += piece
                yield piece
            seen.complete = True
            return
        if not seen.chunked:
            seen.complete = True
            return
        while True:
            while b"\r\n" not in buf:
                more()
            j = buf.index(b"\r\n")
            size = int(bytes(buf[:j]).split(b";")[0], 16)
            del buf[: j + 2]
            if size == 0:
                while b"\r\n\r\n" not in b"\r\n" + buf:
                    more()
                k = (b"\r\n" + buf).index(b"\r\n\r\n")
                del buf[:k + 2]
                seen.complete = True
                return
            while len(buf) < size + 2:
                more()
            piece = bytes(buf[:size])
            del buf[: size + 2]
            seen.body += piece
            yield piece


def completed(seen: Seen) -> bool:
    """Whether the origin read the request's body to its end, waiting for
    it (an answer sent before the body is read may reach the client
    first)."""
    deadline = time.monotonic() + BOUND
    while not seen.complete and time.monotonic() < deadline:
        time.sleep(0.02)
    return seen.complete


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def duplex():
    o = DuplexOrigin()
    yield o
    o.close()


@pytest.fixture
def origin_d(duplex):
    duplex.settle()
    duplex.reset()
    return duplex


class Via:
    """A gateway and how to reach it: `h1`, `h1-tls` (ALPN http/1.1), `h2c`
    or `h2-tls` (ALPN h2)."""

    def __init__(self, name: str, gw: Gateway, pki: Pki):
        self.name, self.gw, self.pki = name, gw, pki
        self.tls = name.endswith("tls")

    def socket(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=BOUND)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.tls:
            return s
        ctx = ssl.create_default_context(cafile=str(self.pki.path("ca.crt")))
        ctx.set_alpn_protocols(["h2"] if self.name.startswith("h2") else ["http/1.1"])
        # A TCP end without close_notify must show (as a cut), not read as the end.
        return ctx.wrap_socket(s, server_hostname="edge.test", suppress_ragged_eofs=False)

    def h1(self) -> RawConn:
        return CutAwareConn(sock=self.socket(), timeout=BOUND)

    def h2(self, window: int | None = None) -> H2Duplex:
        return H2Duplex(self.socket(), "https" if self.tls else "http", window)


class CutAwareConn(RawConn):
    """A RawConn that counts a TLS connection ended without close_notify
    as a cut (`reset`), as it counts a TCP reset."""

    def _fill(self, deadline: float) -> bool:
        if self.eof or deadline <= time.monotonic():
            return False
        self.sock.settimeout(deadline - time.monotonic())
        try:
            d = self.sock.recv(262144)
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLEOFError):
            self.eof = self.reset = True
            return False
        except OSError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True


def start_via(name: str, hello_bin, upstream: str, logs, pki: Pki, **opts) -> Via:
    opts = {"workers": 1, "body_timeout": BODY_TIMEOUT, "response_timeout": RESPONSE_TIMEOUT,
            "max_body_bytes": MAX_BODY} | opts
    if name.endswith("tls"):
        gw = Gateway(hello_bin, upstream, log_dir=logs, protocols="h1,h2",
                     tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), **opts)
    else:
        gw = Gateway(hello_bin, upstream, log_dir=logs, protocols="h1,h2c", **opts)
    return Via(name, gw.start(), pki)


@pytest.fixture(scope="module")
def gateways(hello_bin, duplex, gateway_logs, pki):
    """One cleartext and one TLS gateway in front of the duplex origin,
    shared by the tests that use the default limits."""
    started: dict[str, Via] = {}

    def get(name: str) -> Via:
        kind = "tls" if name.endswith("tls") else "plain"
        v = started.get(kind)
        if v is None or not v.gw.alive():
            v = started[kind] = start_via(name, hello_bin, duplex.addr, gateway_logs, pki)
        return Via(name, v.gw, pki)

    yield get
    for v in started.values():
        v.gw.kill()


@pytest.fixture
def via(request, gateways):
    v = gateways(request.param)
    yield v
    assert v.gw.alive(), v.gw.crashed()


H1_WAYS = ["h1", "h1-tls"]
H2_WAYS = ["h2c", "h2-tls"]


# ---------------------------------------------------------------- HTTP/1.1 client side


def read_head(conn: RawConn, deadline: float) -> bytes:
    """The next response head (interims included: the caller skips them)."""
    while b"\r\n\r\n" not in conn.buf:
        if not conn._fill(deadline):
            raise Closed("no response head", bytes(conn.buf)) if conn.eof else TimeoutError(bytes(conn.buf))
    i = conn.buf.index(b"\r\n\r\n")
    head = bytes(conn.buf[:i])
    del conn.buf[: i + 4]
    return head


def next_chunk(conn: RawConn, deadline: float) -> bytes | None:
    """The next chunk of a chunked answer: its data, `b""` for the last
    chunk (and the empty trailer section), None when the connection ended
    first (a cut). TimeoutError when nothing came by `deadline`."""
    while True:
        if b"\r\n" in conn.buf:
            j = conn.buf.index(b"\r\n")
            size = int(bytes(conn.buf[:j]), 16)
            rest = conn.buf[j + 2:]
            if size == 0 and rest.startswith(b"\r\n"):
                del conn.buf[: j + 4]
                return b""
            if size and len(rest) >= size + 2:
                data = bytes(rest[:size])
                del conn.buf[: j + 2 + size + 2]
                return data
        if not conn._fill(deadline):
            if conn.eof:
                return None
            raise TimeoutError(f"stalled with {bytes(conn.buf[:100])!r}")


def echo_of(conn: RawConn, n: int) -> bytes | None:
    """At least `n` bytes of echo, or None if the answer was cut first."""
    got = b""
    deadline = time.monotonic() + BOUND
    while len(got) < n:
        c = next_chunk(conn, deadline)
        if not c:
            return None
        got += c
    return got


def rest_of_answer(conn: RawConn) -> tuple[bytes, bool]:
    """The rest of a chunked answer, and whether it ended with its last
    chunk (False: the connection ended first)."""
    got = b""
    deadline = time.monotonic() + BOUND
    while True:
        c = next_chunk(conn, deadline)
        if c is None:
            return got, False
        if c == b"":
            return got, True
        got += c


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def open_duplex(conn: RawConn, target: str, framing: str = "chunked", extra: bytes = b"",
                version: bytes = b"HTTP/1.1") -> bytes:
    """Sends a POST head (`chunked` or `length=N`) and returns the final
    answer's head, which the origin sends before it reads any body."""
    frame = b"transfer-encoding: chunked" if framing == "chunked" else b"content-length: " + framing[7:].encode()
    conn.send(b"POST %s %s\r\nhost: a.test\r\n%s\r\n%s\r\n" % (target.encode(), version, frame, extra))
    deadline = time.monotonic() + BOUND
    head = read_head(conn, deadline)
    while head.split(b" ")[1].startswith(b"1"):
        head = read_head(conn, deadline)
    return head


def lockstep(conn: RawConn, pieces: int, wire=chunk) -> bytes:
    """Sends `pieces` PIECEs, each once the echo of the one before came back."""
    echoed = b""
    for _ in range(pieces):
        assert conn.send(wire(PIECE)), "the gateway closed the connection mid-body"
        got = echo_of(conn, len(PIECE))
        assert got is not None, f"the answer was cut after {len(echoed)} bytes"
        echoed += got
    return echoed


# ---------------------------------------------------------------- HTTP/2 client side


@dataclass
class StreamState:
    status: str | None = None
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False  # END_STREAM from the gateway
    reset: int | None = None  # its RST_STREAM code


class H2Duplex:
    """One HTTP/2 connection whose streams send and receive in lockstep
    (the `h2` library keeps the state; received data is acknowledged as it
    is read)."""

    def __init__(self, sock: socket.socket, scheme: str, window: int | None = None):
        self.sock, self.scheme = sock, scheme
        self.acknowledge = True  # False: received data is never acknowledged (windows stay shut)
        self.unacknowledged = 0
        self.rbuf = b""
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.streams: dict[int, StreamState] = {}
        self.goaway = False
        self.closed = False
        self.flush()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def start(self, path: str, length: int | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", "POST"), (":path", path), (":scheme", self.scheme), (":authority", "a.test")]
        if length is not None:
            hdrs.append(("content-length", str(length)))
        self.conn.send_headers(sid, hdrs)
        self.streams[sid] = StreamState()
        self.flush()
        return sid

    def get(self, sid: int, body: bytes = b"") -> int:
        self.conn.send_headers(sid, [(":method", "GET"), (":path", "/get?answer=done"), (":scheme", self.scheme),
                                     (":authority", "a.test")], end_stream=True)
        self.streams[sid] = StreamState()
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> bool:
        """Sends all of `data` as the windows allow; False once the stream
        was reset or the connection ended (the client learnt its upload is
        over). TimeoutError if the window stays shut for BOUND."""
        deadline = time.monotonic() + BOUND
        while data:
            st = self.streams[sid]
            if st.reset is not None or self.closed:
                return False
            try:
                room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(data))
            except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
                return False
            if room <= 0:
                if not self.pump(deadline, lambda: False, quiet=0.2) and time.monotonic() > deadline:
                    raise TimeoutError(f"window shut for {BOUND}s on stream {sid}, no reset: {st}")
                continue
            try:
                self.conn.send_data(sid, data[:room])
            except h2.exceptions.StreamClosedError:
                return False
            data = data[room:]
            self.flush()
        if end:
            try:
                self.conn.end_stream(sid)
            except h2.exceptions.StreamClosedError:
                return False
            self.flush()
        return True

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, error_code=8)  # CANCEL
        self.flush()

    def pump(self, deadline: float, done, quiet: float | None = None) -> bool:
        """Reads and handles frames until `done()`, the connection ends or
        `deadline` (or `quiet` seconds without a frame); returns `done()`."""
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return done()
            self.sock.settimeout(min(left, quiet) if quiet else left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return done()
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return done()
            # Frame by frame, so a graceful GOAWAY is handled (see _event)
            # before the frames that follow it in the same read.
            self.rbuf += data
            while len(self.rbuf) >= 9 and len(self.rbuf) >= 9 + int.from_bytes(self.rbuf[:3], "big"):
                end = 9 + int.from_bytes(self.rbuf[:3], "big")
                frame, self.rbuf = self.rbuf[:end], self.rbuf[end:]
                for ev in self.conn.receive_data(frame):
                    self._event(ev)
            self.flush()
        return True

    def _event(self, ev) -> None:
        sid = getattr(ev, "stream_id", None)
        st = self.streams.get(sid) if sid else None
        if isinstance(ev, h2.events.ResponseReceived) and st:
            st.status = dict(ev.headers)[":status"]
        elif isinstance(ev, h2.events.DataReceived):
            if st:
                st.data += ev.data
            if self.acknowledge:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            else:
                self.unacknowledged += ev.flow_controlled_length
        elif isinstance(ev, h2.events.StreamEnded) and st:
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset) and st:
            st.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = True
            if ev.error_code == 0:
                # Streams up to its last-stream-id go on (RFC 9113 §6.8); the
                # `h2` library closes its whole state on any GOAWAY: reopen it.
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    def wait(self, sid: int, done) -> StreamState:
        self.pump(time.monotonic() + BOUND, lambda: done(self.streams[sid]))
        return self.streams[sid]

    def wait_over(self, sid: int) -> StreamState:
        """Waits until the stream ended or was reset (or the connection ended)."""
        return self.wait(sid, lambda s: s.ended or s.reset is not None or self.closed)

    def lockstep(self, sid: int, pieces: int) -> None:
        for _ in range(pieces):
            want = len(self.streams[sid].data) + len(PIECE)
            assert self.send(sid, PIECE), f"stream {sid} ended mid-body: {self.streams[sid]}"
            st = self.wait(sid, lambda s, w=want: len(s.data) >= w or s.reset is not None or s.ended)
            assert len(st.data) >= want, f"no echo: {st}"


# ---------------------------------------------------------------- HTTP/1.1: the control


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_a_duplex_echo_then_a_second_exchange_on_both_connections(via, origin_d):
    """The control for what follows, over TLS too: a lockstep echo ends
    with its last chunk, the next request runs on the same client and
    upstream connections."""
    with via.h1() as conn:
        assert open_duplex(conn, "/ok").startswith(b"HTTP/1.1 200")
        echoed = lockstep(conn, 5)
        conn.send(b"0\r\n\r\n")
        assert rest_of_answer(conn) == (b"", True)
        assert echoed == PIECE * 5
        conn.send(b"GET /next?answer=done HTTP/1.1\r\nhost: a.test\r\n\r\n")
        r = conn.read_response()
        assert r.status == 200 and r.body == b"done"
    first, second = origin_d.requests("/ok")[0], origin_d.requests("/next")[0]
    assert first.complete and bytes(first.body) == PIECE * 5
    assert second.cid == first.cid, "the upstream connection was not reused after a clean duplex exchange"


# ---------------------------------------------------------------- HTTP/1.1: the client fails mid-duplex


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("framing", ["chunked", "length=100000"])
@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_a_client_gone_mid_duplex_leaves_the_upstream_request_incomplete(via, origin_d, how, framing):
    """The client closes (or resets) after two pieces of a body the echo
    was answering: the upstream request is never completed (no last chunk,
    fewer bytes than its content-length) and its connection is closed."""
    wire = chunk if framing == "chunked" else (lambda d: d)
    conn = via.h1()
    assert open_duplex(conn, f"/gone-{how}", framing).startswith(b"HTTP/1.1 200")
    lockstep(conn, 2, wire)
    if how == "reset":
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    [seen] = origin_d.requests(f"/gone-{how}")
    assert origin_d.wait_closed(seen.cid), "the upstream connection outlived the client"
    assert not seen.complete and bytes(seen.body) == PIECE * 2, seen


# ---------------------------------------------------------------- HTTP/1.1: the upstream fails mid-duplex


@pytest.mark.parametrize("then", ["reset", "close", "stall"])
@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_an_upstream_failing_mid_duplex_cuts_the_answer_visibly(via, origin_d, then):
    """The echo resets, closes, or stalls (reads and writes nothing) once
    it had 8000 bytes, its answer still open: the client's answer ends
    without its last chunk and the connection closes, within the bound
    (a stall at the response timeout), never a hang."""
    with via.h1() as conn:
        open_duplex(conn, f"/fail?after=8000&then={then}")
        echoed = b""
        for _ in range(10):
            if not conn.send(chunk(PIECE)):
                break
            got = echo_of(conn, len(PIECE)) if len(echoed) < 8000 else None
            if got is None:
                break
            echoed += got
        _, ended = rest_of_answer(conn)
        assert not ended, "an answer cut by its upstream ended with a last chunk"
        assert conn.wait_closed(BOUND)
    [seen] = origin_d.requests("/fail")
    if then == "stall":
        assert origin_d.wait_closed(seen.cid), "the stalled upstream connection was not closed"


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_an_upstream_closing_after_its_whole_answer_leaves_the_client_that_answer(via, origin_d):
    """The upstream answers `200 done` (keep-alive) at once, then closes
    without reading the body: the client, still sending, gets that answer
    whole, then the connection ends (its body is one byte short: it never
    ends well); a new client connection is served on a new upstream
    connection."""
    with via.h1() as conn:
        conn.send(b"POST /done-close?answer=done&after=0&then=close HTTP/1.1\r\nhost: a.test\r\n"
                  b"content-length: 100001\r\n\r\n")
        for _ in range(5):
            conn.send(PIECE)
        r = conn.read_response("POST")
        assert r.status == 200 and r.body == b"done" and r.complete, r
        for _ in range(20):
            if not conn.send(PIECE):
                break
        assert conn.wait_closed(BOUND), "the connection stayed open with the body unfinished"
    with via.h1() as conn:
        conn.send(b"GET /after-close?answer=done HTTP/1.1\r\nhost: a.test\r\n\r\n")
        assert conn.read_response().body == b"done"
    assert origin_d.requests("/after-close")[0].cid != origin_d.requests("/done-close")[0].cid


# ---------------------------------------------------------------- HTTP/1.1: limits and timeouts mid-duplex


@pytest.mark.parametrize("answer", ["echo", "done"])
@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_a_body_past_max_body_bytes_mid_duplex(via, origin_d, answer):
    """A chunked body runs past max-body-bytes after the 2xx head went out:
    413 cannot be sent any more. An answer still streaming (the echo) is
    cut, without its last chunk; a complete one (`done`) stays whole; either
    way the connection closes and the upstream request is never completed
    with a last chunk, its connection closed."""
    with via.h1() as conn:
        head = open_duplex(conn, f"/big?answer={answer}")
        assert head.startswith(b"HTTP/1.1 200")
        if answer == "done":
            assert conn.buf.startswith(b"4\r\ndone\r\n0\r\n\r\n") or b"content-length: 4" in head.lower(), head
        sent = 0
        while sent <= MAX_BODY + len(PIECE) and conn.send(chunk(PIECE)):
            sent += len(PIECE)
            if answer == "echo" and echo_of(conn, len(PIECE)) is None:
                break
        if answer == "echo":
            assert sent > MAX_BODY, f"cut at {sent} bytes, within max-body-bytes"
            assert rest_of_answer(conn)[1] is False, "the answer ended as if whole"
        assert conn.wait_closed(BOUND)
    [seen] = origin_d.requests("/big")
    assert origin_d.wait_closed(seen.cid)
    assert not seen.complete and len(seen.body) <= MAX_BODY, (seen.complete, len(seen.body))


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_a_client_pausing_its_body_mid_duplex_is_cut_at_body_timeout(via, origin_d):
    """Two pieces echoed, then the client pauses past body-timeout: the
    answer is cut (no last chunk), the connection closed, the upstream
    request left incomplete and its connection closed."""
    with via.h1() as conn:
        open_duplex(conn, "/pause")
        lockstep(conn, 2)
        assert rest_of_answer(conn)[1] is False
        assert conn.wait_closed(BOUND)
    [seen] = origin_d.requests("/pause")
    assert origin_d.wait_closed(seen.cid) and not seen.complete


@pytest.fixture
def patient_gw(hello_bin, duplex, gateway_logs, pki, request):
    """A gateway whose body-timeout (5 s) is longer than its response
    timeout (1 s), for the `via` of the test."""
    v = start_via(request.param, hello_bin, duplex.addr, gateway_logs, pki, body_timeout=5, response_timeout=1)
    yield v
    v.gw.kill()


def pausing_echo(v: Via, origin_d: DuplexOrigin, pause: float) -> tuple[bytes, bool]:
    """A lockstep echo of 4 pieces with a client pause of `pause` seconds
    after the second; returns the echo and whether it ended whole."""
    if v.name.startswith("h2"):
        c = v.h2()
        try:
            sid = c.start(f"/pausing-{pause}")
            c.lockstep(sid, 2)
            time.sleep(pause)
            for _ in range(2):
                want = len(c.streams[sid].data) + len(PIECE)
                c.send(sid, PIECE)
                st = c.wait(sid, lambda s, w=want: len(s.data) >= w or s.reset is not None or s.ended)
            c.send(sid, b"", end=True)
            st = c.wait_over(sid)
            return bytes(st.data), st.ended and st.reset is None
        finally:
            c.close()
    with v.h1() as conn:
        open_duplex(conn, f"/pausing-{pause}")
        echoed = lockstep(conn, 2)
        time.sleep(pause)
        for _ in range(2):
            conn.send(chunk(PIECE))
            got = echo_of(conn, len(PIECE))
            if got is None:
                return echoed, False
            echoed += got
        conn.send(b"0\r\n\r\n")
        rest, ended = rest_of_answer(conn)
        return echoed + rest, ended


@pytest.mark.parametrize("patient_gw", ["h1", "h2c"], indirect=True)
def test_a_client_pause_within_body_timeout_but_past_response_timeout_control(patient_gw, origin_d):
    """The control: a pause shorter than both timeouts."""
    assert pausing_echo(patient_gw, origin_d, 0.3) == (PIECE * 4, True)


@pytest.mark.parametrize("patient_gw", ["h1", "h2c"], indirect=True)
def test_a_client_pause_within_body_timeout_but_past_response_timeout(patient_gw, origin_d):
    """The client pauses 2 s (body-timeout 5 s) while the echo upstream
    waits for its next piece: the upstream is silent because the client
    is. docs/spec.md: the response timeout runs "from the request sent to
    the response head received", and before the duplex change it started
    only once the body was sent; during duplex the gateway times the
    upstream's answer while the body is still coming, so a pause the
    client is allowed cuts the answer as an upstream timeout, which
    `Tries::missed` counts against the upstream (passive health)."""
    assert pausing_echo(patient_gw, origin_d, 2.0) == (PIECE * 4, True)


# ---------------------------------------------------------------- HTTP/1.1: what comes around a duplex exchange


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_a_request_pipelined_behind_a_duplex_body_is_answered_after_it(via, origin_d):
    """The end of a duplex body and the next request arrive in one write:
    the echo ends first and whole, then the next request gets its own
    answer; upstream, the body holds none of the next request's bytes and
    the next request arrives as its own."""
    with via.h1() as conn:
        open_duplex(conn, "/pipe-first")
        echoed = lockstep(conn, 2)
        conn.send(chunk(PIECE) + b"0\r\n\r\n" + b"GET /pipe-second?answer=done HTTP/1.1\r\nhost: a.test\r\n\r\n")
        rest, ended = rest_of_answer(conn)
        assert ended and echoed + rest == PIECE * 3
        r = conn.read_response()
        assert r.status == 200 and r.body == b"done", r
    [first], [second] = origin_d.requests("/pipe-first"), origin_d.requests("/pipe-second")
    assert first.complete and bytes(first.body) == PIECE * 3
    assert completed(second) and not second.body


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_expect_100_continue_with_an_early_2xx(via, origin_d):
    """`Expect: 100-continue` and an upstream that answers 200 at once: the
    client gets its 100 (from the gateway), then the 200, sends its body
    beside the echo and gets all of it; the upstream never sees Expect."""
    with via.h1() as conn:
        conn.send(b"POST /expect HTTP/1.1\r\nhost: a.test\r\nexpect: 100-continue\r\n"
                  b"content-length: %d\r\n\r\n" % (len(PIECE) * 3))
        deadline = time.monotonic() + BOUND
        assert read_head(conn, deadline).startswith(b"HTTP/1.1 100")
        assert read_head(conn, deadline).startswith(b"HTTP/1.1 200")
        echoed = lockstep(conn, 3, lambda d: d)
        assert rest_of_answer(conn) == (b"", True)
    assert echoed == PIECE * 3
    [seen] = origin_d.requests("/expect")
    assert seen.complete and bytes(seen.body) == PIECE * 3


def read_close_delimited(conn: RawConn, n: int) -> bytes:
    while len(conn.buf) < n and conn._fill(time.monotonic() + BOUND):
        pass
    got = bytes(conn.buf[:n])
    del conn.buf[:n]
    return got


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_an_http10_client_in_duplex_gets_a_close_delimited_echo(via, origin_d):
    """An HTTP/1.0 client (content-length body): the chunked echo reaches
    it close-delimited, piece by piece, and ends with a clean close (FIN,
    and over TLS close_notify), the upstream request complete."""
    with via.h1() as conn:
        head = open_duplex(conn, "/ten", f"length={len(PIECE) * 3}", version=b"HTTP/1.0")
        assert head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")), head
        echoed = b""
        for _ in range(3):
            conn.send(PIECE)
            echoed += read_close_delimited(conn, len(PIECE))
        assert conn.wait_closed(BOUND) and not conn.reset and not conn.buf
    assert echoed == PIECE * 3
    [seen] = origin_d.requests("/ten")
    assert seen.complete


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_an_http10_client_in_duplex_sees_an_upstream_cut_as_a_reset(via, origin_d):
    """The same, the upstream resetting after 8000 bytes: a close-delimited
    body cut must not end with a clean close (it would look whole)."""
    with via.h1() as conn:
        open_duplex(conn, "/ten-cut?after=8000&then=reset", f"length={len(PIECE) * 5}", version=b"HTTP/1.0")
        reset_on_send = False
        for _ in range(5):
            try:
                conn.sock.sendall(PIECE)
            except ConnectionResetError:  # the reset came while sending: the socket reports it once, here
                reset_on_send = True
                break
            except OSError:
                break
            time.sleep(0.05)
        while conn._fill(time.monotonic() + BOUND):
            pass
        assert conn.eof, "no end within the bound"
        assert conn.reset or reset_on_send, f"a cut close-delimited answer ended with a clean close ({len(conn.buf)} bytes)"


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_an_early_204_lets_the_body_go_up_and_the_connections_serve_on(via, origin_d):
    """An early `204` (2xx, keep-alive, no body): the body still goes up
    whole, and the next request runs on both connections."""
    with via.h1() as conn:
        conn.send(b"POST /early-204?answer=204 HTTP/1.1\r\nhost: a.test\r\ncontent-length: %d\r\n\r\n" % (3 * len(PIECE)))
        r = conn.read_response("POST")
        assert r.status == 204, r
        conn.send(PIECE * 3 + b"GET /after-204?answer=done HTTP/1.1\r\nhost: a.test\r\n\r\n")
        r = conn.read_response()
        assert r.status == 200 and r.body == b"done", r
    [seen], [after] = origin_d.requests("/early-204"), origin_d.requests("/after-204")
    assert seen.complete and bytes(seen.body) == PIECE * 3
    assert after.cid == seen.cid


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_sigterm_during_a_duplex_exchange_lets_it_finish(via, hello_bin, duplex, origin_d, gateway_logs, pki):
    """SIGTERM while an echo is half way: within the grace period the
    exchange goes on to its last chunk, the connection then closes, and
    the gateway exits 0."""
    v = start_via(via.name, hello_bin, duplex.addr, gateway_logs, pki, grace=8)
    try:
        with v.h1() as conn:
            open_duplex(conn, "/drain")
            echoed = lockstep(conn, 2)
            v.gw.signal(signal.SIGTERM)
            time.sleep(0.3)
            echoed += lockstep(conn, 2)
            conn.send(b"0\r\n\r\n")
            assert rest_of_answer(conn) == (b"", True)
            assert conn.wait_closed(BOUND)
        assert echoed == PIECE * 4
        assert v.gw.proc.wait(BOUND) == 0
    finally:
        v.gw.kill()
    [seen] = origin_d.requests("/drain")
    assert seen.complete


# ---------------------------------------------------------------- HTTP/2


def served_after(c: H2Duplex) -> None:
    """A GET on the same connection still gets its answer."""
    sid = c.get(c.conn.get_next_available_stream_id())
    st = c.wait_over(sid)
    assert st.status == "200" and st.data == b"done" and st.ended, st


@pytest.mark.parametrize("answer", ["echo", "done"])
@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_a_body_past_max_body_bytes_mid_duplex(via, origin_d, answer):
    """Over HTTP/2 (no content-length): the body runs past max-body-bytes
    after the 200 went out. The echo still streaming is reset (RST_STREAM,
    never END_STREAM); after a complete answer (`done`, END_STREAM) the
    client must still learn its upload is over (RST_STREAM, or every byte
    taken), not be left with a window that never opens. The upstream
    request is never completed, the connection serves the next stream."""
    c = via.h2()
    try:
        sid = c.start(f"/h2-big?answer={answer}")
        st = c.wait(sid, lambda s: s.status is not None)
        assert st.status == "200", st
        sent, going = 0, True
        while going and sent <= MAX_BODY + 4 * len(PIECE):
            going = c.send(sid, PIECE)
            sent += len(PIECE)
            if answer == "echo":
                c.wait(sid, lambda s, w=sent: len(s.data) >= w or s.reset is not None or s.ended)
        st = c.wait(sid, lambda s: s.reset is not None)
        assert st.reset is not None, f"no RST_STREAM after {sent} bytes past max-body-bytes: {st}"
        if answer == "echo":
            assert not st.ended, "an echo cut mid-body ended with END_STREAM"
        else:
            assert st.ended and st.data == b"done", st
        served_after(c)
    finally:
        c.close()
    [seen] = origin_d.requests("/h2-big")
    assert origin_d.wait_closed(seen.cid)
    assert not seen.complete and len(seen.body) <= MAX_BODY


@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_a_client_reset_mid_duplex_cuts_the_upstream_request(via, origin_d):
    """RST_STREAM from the client after two echoed pieces: the upstream
    request is left incomplete and its connection closed; the client
    connection serves on."""
    c = via.h2()
    try:
        sid = c.start("/h2-reset")
        c.lockstep(sid, 2)
        c.reset(sid)
        [seen] = origin_d.requests("/h2-reset")
        assert origin_d.wait_closed(seen.cid), "the upstream connection outlived the stream"
        assert not seen.complete
        served_after(c)
    finally:
        c.close()


@pytest.mark.parametrize("then", ["reset", "close", "stall"])
@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_an_upstream_failing_mid_duplex_resets_the_stream(via, origin_d, then):
    """The echo upstream resets, closes or stalls after 8000 bytes: the
    stream is reset (never END_STREAM), within the bound, and the
    connection serves the next stream."""
    c = via.h2()
    try:
        sid = c.start(f"/h2-fail?after=8000&then={then}")
        c.lockstep(sid, 2)
        for _ in range(5):
            if not c.send(sid, PIECE):
                break
        st = c.wait_over(sid)
        assert st.reset is not None and not st.ended, st
        served_after(c)
    finally:
        c.close()


@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_a_client_pausing_mid_duplex_is_reset_at_body_timeout(via, origin_d):
    c = via.h2()
    try:
        sid = c.start("/h2-pause")
        c.lockstep(sid, 2)
        st = c.wait_over(sid)
        assert st.reset is not None and not st.ended, st
        served_after(c)
    finally:
        c.close()
    [seen] = origin_d.requests("/h2-pause")
    assert origin_d.wait_closed(seen.cid) and not seen.complete


def done_then_upload_reset(via, path: str, pieces: int) -> None:
    """An HTTP/2 upload to `path`, whose upstream answers `200 done` early:
    the client gets that answer whole (END_STREAM), then, still sending up
    to `pieces` pieces, learns its upload is over (RST_STREAM) rather than
    being left with a window that stays shut; the connection serves on."""
    c = via.h2()
    try:
        sid = c.start(path)
        st = c.wait(sid, lambda s: s.ended or s.reset is not None)
        assert st.status == "200" and st.data == b"done" and st.ended, st
        for _ in range(pieces):
            if not c.send(sid, PIECE):
                break
        st = c.wait(sid, lambda s: s.reset is not None)
        assert st.reset is not None, f"the stream was neither reset nor its body taken: {st}"
        served_after(c)
    finally:
        c.close()


@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_an_upstream_closing_after_its_whole_answer(via, origin_d):
    """`200 done` (keep-alive) then the upstream closes without reading:
    the client gets `done` with END_STREAM, then learns the rest of its
    upload is not wanted (RST_STREAM) rather than being left waiting."""
    done_then_upload_reset(via, "/h2-done-close?answer=done&after=0&then=close", pieces=40)


@pytest.fixture
def roomy(hello_bin, duplex, gateway_logs, pki, request):
    """A gateway taking bodies up to 64 MiB, for the `via` of the test."""
    v = start_via(request.param, hello_bin, duplex.addr, gateway_logs, pki, max_body_bytes=64 << 20)
    yield v
    v.gw.kill()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("roomy", H2_WAYS, indirect=True)
def test_http2_concurrent_duplex_streams_under_small_windows(roomy, origin_d):
    """Four echo streams of 1 MiB each at once on one connection whose
    client window is 8 KiB: the echo comes down while the bodies go up,
    flow control holding both ways; no deadlock, every byte echoed in
    order, the origin gets every body whole, memory bounded."""
    bodies = {i: body_of(1 << 20, 40 + i) for i in range(4)}
    s = Streams(roomy.gw.addr, initial_window=8192, sock=roomy.socket(), scheme="https" if roomy.tls else "http")
    rss_before = roomy.gw.rss_kib()
    rss_max = rss_before
    with s:
        sids = {s.start(f"/many-{i}", method="POST", body=b, length=False): i for i, b in bodies.items()}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(r.ended or r.reset is not None for r in s.results.values()):
            s.run(1)
            rss_max = max(rss_max, roomy.gw.rss_kib())
        results = s.results
    print(f"RSS {rss_before} KiB before, {rss_max} KiB at most")
    for sid, i in sids.items():
        r = results[sid]
        assert r.status == 200 and r.ended and r.reset is None, (i, r.status, r.length, r.reset)
        assert (r.length, r.sha256) == (len(bodies[i]), sha(bodies[i])), f"stream {i}: echo differs"
        [seen] = origin_d.requests(f"/many-{i}")
        assert seen.complete and bytes(seen.body) == bodies[i]
    assert rss_max - rss_before < 32 * 1024, "the gateway buffered what flow control should have held back"


@pytest.mark.parametrize("roomy", H2_WAYS, indirect=True)
def test_http2_a_client_that_takes_no_echo_is_held_back_not_buffered(roomy, origin_d):
    """The client uploads and never opens its window for the echo: the
    gateway must stop taking the upload once the echo backs up (through
    the upstream, which stops reading when it cannot write), not buffer
    the body or the echo. The upload stalls well short of its 64 MiB
    limit, gateway memory stays bounded, and a reset of the stream frees
    it while the connection serves on."""
    c = roomy.h2()
    c.acknowledge = False
    rss_before = roomy.gw.rss_kib()
    try:
        sid = c.start("/no-ack")
        sent, block = 0, PIECE * 16
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            room = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size, len(block))
            if room <= 0:
                if not c.pump(time.monotonic() + 1.5, lambda: c.conn.local_flow_control_window(sid) > 0):
                    break  # shut for 1.5 s: held back
                continue
            c.conn.send_data(sid, block[:room])
            c.flush()
            sent += room
        rss_growth = roomy.gw.rss_kib() - rss_before
        print(f"sent {sent >> 10} KiB before the window stayed shut; RSS grew {rss_growth} KiB")
        assert time.monotonic() < deadline and sent < 40 << 20, f"the upload was never held back ({sent} bytes)"
        assert rss_growth < 16 * 1024
        c.reset(sid)
        # The echo it got took the connection's window too: give that back.
        c.acknowledge = True
        c.conn.increment_flow_control_window(c.unacknowledged)
        c.flush()
        served_after(c)
    finally:
        c.close()
    [seen] = origin_d.requests("/no-ack")
    assert origin_d.wait_closed(seen.cid) and not seen.complete


# ---------------------------------------------------------------- the other changes of the day, briefly


ANY_WAY = ["h1", "h2c"]


def get_through(v: Via, path: str, extra: list[tuple[str, str]] = ()) -> tuple[int | None, list, bytes, bool]:
    """A GET over HTTP/1.1 or HTTP/2: (status, fields, body, whether it
    ended whole: a last chunk / length reached, or END_STREAM)."""
    if v.name.startswith("h2"):
        c = v.h2()
        try:
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", c.scheme),
                                      (":authority", "a.test"), *extra], end_stream=True)
            c.flush()
            c.streams[sid] = StreamState()
            fields: list = []
            orig = c._event

            def keep_fields(ev):
                if isinstance(ev, h2.events.ResponseReceived):
                    fields.extend(ev.headers)
                orig(ev)

            c._event = keep_fields
            st = c.wait_over(sid)
            return (int(st.status) if st.status else None), fields, bytes(st.data), st.ended and st.reset is None
        finally:
            c.close()
    with v.h1() as conn:
        head = "".join(f"{k}: {val}\r\n" for k, val in extra)
        conn.send(f"GET {path} HTTP/1.1\r\nhost: a.test\r\n{head}\r\n".encode())
        try:
            r = conn.read_response()
        except Closed:
            return None, [], b"", False
        return r.status, r.headers, r.body, r.complete


@pytest.mark.parametrize("via", ANY_WAY, indirect=True)
def test_proxy_status_is_relayed_unless_connection_names_it(via, origin_d):
    """2f179cf: `Proxy-Status` (RFC 9209) reaches the client; the other
    `Proxy-*` fields do not, nor a `Proxy-Status` that `Connection` names
    (hop-by-hop then, RFC 9110 §7.6.1)."""
    origin_d.scripts["/ps"] = [(b"HTTP/1.1 200 OK\r\nProxy-Status: origin; error=dns_timeout\r\nProxy-Other: 1\r\n"
                                b"content-length: 2\r\n\r\nok")]
    origin_d.scripts["/ps-named"] = [(b"HTTP/1.1 200 OK\r\nConnection: Proxy-Status\r\nProxy-Status: origin\r\n"
                                      b"content-length: 2\r\n\r\nok")]
    status, fields, _, whole = get_through(via, "/ps")
    names = {k.lower(): val for k, val in fields}
    assert status == 200 and whole and names.get("proxy-status") == "origin; error=dns_timeout", fields
    assert "proxy-other" not in names
    status, fields, _, whole = get_through(via, "/ps-named")
    assert status == 200 and whole and "proxy-status" not in {k.lower() for k, _ in fields}, fields


@pytest.mark.parametrize("line, want", [(b"HTTP/1.1 299", b"HTTP/1.1 299 \r\n"),
                                        (b"HTTP/1.1 422 ", b"HTTP/1.1 422 Unprocessable Content\r\n"),
                                        (b"HTTP/1.1 200 Fine Thanks", b"HTTP/1.1 200 Fine Thanks\r\n")])
@pytest.mark.parametrize("via", ["h1"], indirect=True)
def test_reason_phrases(via, origin_d, line, want):
    """c737835: a relayed answer keeps its own phrase, one without gets the
    registered phrase of its status, an unregistered status an empty one,
    the SP before it kept (RFC 9112 §4: `status-code SP [reason-phrase]`)."""
    origin_d.scripts["/reason"] = [line + b"\r\ncontent-length: 2\r\n\r\nok"]
    with via.h1() as conn:
        conn.send(b"GET /reason HTTP/1.1\r\nhost: a.test\r\n\r\n")
        assert read_head(conn, time.monotonic() + BOUND).startswith(want.rstrip(b"\r\n") + b"\r\n")


@pytest.mark.parametrize("via", ANY_WAY, indirect=True)
def test_a_malformed_response_trailer_after_the_data_is_a_visible_cut(via, origin_d):
    """8a677bb made trailer lines as strict as head fields, in responses
    too (a space before the colon: the answer is refused, where RFC 9112
    §5.1 has a proxy remove the space). Once the data went out, the bad
    trailer can only cut the answer: it must show as a cut (no last chunk,
    RST_STREAM), never end as if whole."""
    origin_d.scripts["/bad-trailer"] = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                                        b"0\r\nX-Sum : 1\r\n\r\n"]
    origin_d.scripts["/good-trailer"] = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                                         b"0\r\nX-Sum: 1\r\n\r\n"]
    assert get_through(via, "/good-trailer")[2:] == (b"hello", True)
    status, _, body, whole = get_through(via, "/bad-trailer")
    assert status == 200 and body == b"hello" and not whole


@pytest.mark.parametrize("via", ANY_WAY, indirect=True)
def test_a_percent_encoded_host_is_refused_on_every_way_in(via, origin_d):
    """5c8f718: `Host: admin%2etest` is 400 (an HTTP/2 `:authority` so
    spelt: 400 or a PROTOCOL_ERROR reset), nothing forwarded; the control
    with a plain host is served."""
    origin_d.scripts["/pct"] = [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    if via.name == "h2c":
        c = via.h2()
        try:
            for authority, ok in [("admin.test", True), ("admin%2etest", False)]:
                sid = c.conn.get_next_available_stream_id()
                c.conn.send_headers(sid, [(":method", "GET"), (":path", "/pct"), (":scheme", "http"),
                                          (":authority", authority)], end_stream=True)
                c.streams[sid] = StreamState()
                c.flush()
                st = c.wait_over(sid)
                # Refused: a 400, or the `h2` crate's reset of a malformed request (RFC 9113 §8.1.1).
                assert st.status == "200" if ok else (st.status == "400" or st.reset == 1), (authority, st)
        finally:
            c.close()
    else:
        for host, want in [(b"admin.test", 200), (b"admin%2etest", 400), (b"admin%2Etest:80", 400)]:
            with via.h1() as conn:
                conn.send(b"GET /pct HTTP/1.1\r\nhost: %s\r\n\r\n" % host)
                assert conn.read_response().status == want, host
    assert len(origin_d.requests("/pct")) == 1


# ---------------------------------------------------------------- more around duplex


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_a_whole_answer_then_a_whole_body_keeps_both_connections(via, origin_d):
    """`200 done` comes whole before the body; the body then ends well:
    both sides ended cleanly, so the client connection carries the next
    request and the upstream connection is reused for it."""
    with via.h1() as conn:
        conn.send(b"POST /whole-first?answer=done HTTP/1.1\r\nhost: a.test\r\ncontent-length: %d\r\n\r\n"
                  % (3 * len(PIECE)))
        r = conn.read_response("POST")
        assert r.status == 200 and r.body == b"done" and r.h("connection") is None, r
        conn.send(PIECE * 3 + b"GET /whole-next?answer=done HTTP/1.1\r\nhost: a.test\r\n\r\n")
        assert conn.read_response().body == b"done"
    [first], [second] = origin_d.requests("/whole-first"), origin_d.requests("/whole-next")
    assert first.complete and bytes(first.body) == PIECE * 3
    assert second.cid == first.cid, "not reused though both sides ended cleanly"


@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_an_early_2xx_with_close_ends_the_upload_visibly(via, origin_d):
    """An early `200` with `Connection: close` is no full duplex: the
    upload ends. The client gets the 200 whole (END_STREAM) and learns its
    upload is over (RST_STREAM), never a window that stays shut."""
    done_then_upload_reset(via, "/h2-close?answer=close", pieces=100)


@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_sigterm_during_a_duplex_stream_lets_it_finish(via, hello_bin, duplex, origin_d, gateway_logs, pki):
    """SIGTERM while an HTTP/2 echo is half way: GOAWAY, and the stream
    goes on to END_STREAM within the grace period; the gateway exits 0."""
    v = start_via(via.name, hello_bin, duplex.addr, gateway_logs, pki, grace=8)
    try:
        c = v.h2()
        try:
            sid = c.start("/h2-drain")
            c.lockstep(sid, 2)
            v.gw.signal(signal.SIGTERM)
            assert c.pump(time.monotonic() + BOUND, lambda: c.goaway), "no GOAWAY after SIGTERM"
            c.lockstep(sid, 2)
            assert c.send(sid, b"", end=True)
            st = c.wait_over(sid)
            assert st.ended and st.reset is None and bytes(st.data) == PIECE * 4, st
        finally:
            c.close()
        assert v.gw.proc.wait(BOUND) == 0
    finally:
        v.gw.kill()
    [seen] = origin_d.requests("/h2-drain")
    assert seen.complete and bytes(seen.body) == PIECE * 4


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_a_client_that_reads_no_echo_is_cut_with_memory_bounded(via, origin_d):
    """An HTTP/1.1 client sends its body and never reads the echo (nor
    ends the body): the exchange is ended within the bound (the client took
    nothing for body-timeout, or sent nothing for it), memory stays bounded
    and the upstream request is never completed."""
    rss_before = via.gw.rss_kib()
    conn = via.h1()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    open_duplex(conn, "/no-read")
    conn.sock.settimeout(1.5)
    sent = 0
    try:
        while sent < MAX_BODY - len(PIECE):
            conn.sock.sendall(chunk(PIECE))
            sent += len(PIECE)
    except OSError:
        pass  # held back (timed out), or cut
    rss_growth = via.gw.rss_kib() - rss_before
    print(f"sent {sent >> 10} KiB; RSS grew {rss_growth} KiB")
    assert rss_growth < 16 * 1024
    [seen] = origin_d.requests("/no-read")
    assert origin_d.wait_closed(seen.cid), "the exchange of a client that reads nothing was never ended"
    assert not seen.complete
    conn.close()


@pytest.mark.parametrize("via", H1_WAYS, indirect=True)
def test_a_bad_chunk_mid_duplex_cuts_both_ways_and_nothing_after_it_is_parsed(via, origin_d):
    """A chunk-size line that is not hex after two echoed pieces, with a
    request behind it: the answer is cut (no last chunk), the connection
    closed; upstream the request is never completed and the request behind
    the bad chunk never arrives."""
    with via.h1() as conn:
        open_duplex(conn, "/bad-chunk")
        lockstep(conn, 2)
        conn.send(b"zz\r\nhello\r\n0\r\n\r\nGET /smuggled?answer=done HTTP/1.1\r\nhost: a.test\r\n\r\n")
        _, ended = rest_of_answer(conn)
        assert not ended, "an answer whose request body broke ended with a last chunk"
        assert conn.wait_closed(BOUND)
    [seen] = origin_d.requests("/bad-chunk")
    assert origin_d.wait_closed(seen.cid) and not seen.complete
    assert not origin_d.requests("/smuggled")


@pytest.mark.parametrize("answer", ["done", "204"])
@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_a_whole_early_answer_then_a_whole_body_reuses_the_upstream(via, origin_d, answer):
    """An early `200 done` or `204` (END_STREAM) before the body, then the
    body ends well: the origin gets it whole and the next stream runs on
    the same upstream connection."""
    c = via.h2()
    try:
        sid = c.start(f"/h2-whole-first?answer={answer}")
        st = c.wait(sid, lambda s: s.ended or s.reset is not None)
        assert st.status == ("200" if answer == "done" else "204") and st.ended, st
        assert c.send(sid, PIECE * 3, end=True)
        [first] = origin_d.requests("/h2-whole-first")
        assert completed(first) and bytes(first.body) == PIECE * 3
        served_after(c)
        assert c.streams[sid].reset is None, "the body, taken whole, was refused"
    finally:
        c.close()
    assert origin_d.requests("/get")[0].cid == first.cid, "not reused though both sides ended cleanly"


@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_a_body_shorter_than_its_content_length_mid_duplex(via, origin_d):
    """`content-length` says three pieces, the stream ends after two, the
    echo streaming: a malformed request (RFC 9113 §8.1.1). The stream is
    reset, never ended as if whole, and upstream the request (sent with
    that length) is never completed; its connection is closed."""
    c = via.h2()
    try:
        sid = c.start("/h2-short", length=3 * len(PIECE))
        c.lockstep(sid, 2)
        c.send(sid, b"", end=True)
        st = c.wait_over(sid)
        assert st.reset is not None and not st.ended, st
        served_after(c)
    finally:
        c.close()
    [seen] = origin_d.requests("/h2-short")
    assert origin_d.wait_closed(seen.cid) and not seen.complete


@pytest.mark.parametrize("via", ["h1"], indirect=True)
def test_a_client_half_closing_after_its_whole_body_gets_the_whole_echo(via, origin_d):
    """The client sends its whole body (last chunk included) and shuts its
    sending side while the echo is still coming: the body ended well, so
    the echo goes on to its last chunk (a half-close is no cut)."""
    with via.h1() as conn:
        open_duplex(conn, "/half-close")
        conn.send(chunk(PIECE) * 4 + b"0\r\n\r\n")
        conn.sock.shutdown(socket.SHUT_WR)
        echoed, ended = rest_of_answer(conn)
    assert ended and echoed == PIECE * 4
    [seen] = origin_d.requests("/half-close")
    assert seen.complete


@pytest.mark.parametrize("patient_gw", ["h1", "h2c"], indirect=True)
def test_a_steady_upload_longer_than_response_timeout_after_an_early_head(patient_gw, origin_d):
    """The same root as above, with no client pause at all: the upstream
    sends its 200 head at once and the rest of its answer once it has the
    whole body (an upload that reports at the end); the client uploads
    steadily, a piece every 0.25 s for 2.5 s, past the 1 s response timeout.
    The upstream is silent only because the body is still coming."""
    assert steady_upload(patient_gw, "/steady?answer=later", 10) == b"got %d" % (10 * len(PIECE))


@pytest.mark.parametrize("patient_gw", ["h1", "h2c"], indirect=True)
def test_a_steady_upload_within_response_timeout_after_an_early_head_control(patient_gw, origin_d):
    """The control: the same upload over 0.25 s, within the response timeout."""
    assert steady_upload(patient_gw, "/steady?answer=later", 1) == b"got %d" % len(PIECE)


def steady_upload(v: Via, path: str, pieces: int) -> bytes | None:
    """Uploads `pieces` PIECEs 0.25 s apart after the early head; the
    answer's body, or None if it was cut."""
    if v.name.startswith("h2"):
        c = v.h2()
        try:
            sid = c.start(path)
            c.wait(sid, lambda s: s.status is not None)
            for _ in range(pieces):
                if not c.send(sid, PIECE):
                    return None
                c.pump(time.monotonic() + 0.25, lambda: c.streams[sid].reset is not None)
            c.send(sid, b"", end=True)
            st = c.wait_over(sid)
            return bytes(st.data) if st.ended and st.reset is None else None
        finally:
            c.close()
    with v.h1() as conn:
        open_duplex(conn, path)
        for _ in range(pieces):
            if not conn.send(chunk(PIECE)):
                return None
            time.sleep(0.25)
        conn.send(b"0\r\n\r\n")
        body, ended = rest_of_answer(conn)
        return body if ended else None


@pytest.mark.parametrize("via", ["h1", "h2c"], indirect=True)
def test_a_duplex_exchange_cut_by_the_end_of_grace_is_a_visible_cut(via, hello_bin, duplex, origin_d,
                                                                     gateway_logs, pki):
    """SIGTERM with a 1 s grace, the echo going on past it: when grace ends
    the answer is cut visibly (no last chunk / no END_STREAM), never ended
    as if whole, and the upstream request is left incomplete."""
    v = start_via(via.name, hello_bin, duplex.addr, gateway_logs, pki, grace=1)
    try:
        if via.name == "h2c":
            c = v.h2()
            try:
                sid = c.start("/grace-cut")
                c.lockstep(sid, 1)
                v.gw.signal(signal.SIGTERM)
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline and c.send(sid, PIECE) and not c.closed:
                    c.pump(time.monotonic() + 0.2, lambda: c.streams[sid].reset is not None)
                st = c.wait_over(sid)
                assert not st.ended, f"an echo cut by the end of grace ended as if whole: {st}"
            finally:
                c.close()
        else:
            with v.h1() as conn:
                open_duplex(conn, "/grace-cut")
                lockstep(conn, 1)
                v.gw.signal(signal.SIGTERM)
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline and conn.send(chunk(PIECE)):
                    if echo_of(conn, len(PIECE)) is None:
                        break
                    time.sleep(0.2)
                assert rest_of_answer(conn)[1] is False, "an echo cut by the end of grace ended as if whole"
        assert v.gw.proc.wait(BOUND) is not None
    finally:
        v.gw.kill()
    [seen] = origin_d.requests("/grace-cut")
    assert origin_d.wait_closed(seen.cid) and not seen.complete


@pytest.mark.parametrize("via", H2_WAYS, indirect=True)
def test_http2_a_paused_duplex_stream_is_reset_alone(via, origin_d):
    """Three echo streams on one connection; one stops sending after its
    first piece while the other two go on for longer than body-timeout:
    only the paused one is reset, the others end whole."""
    c = via.h2()
    try:
        a, b, paused = c.start("/iso-a"), c.start("/iso-b"), c.start("/iso-paused")
        c.lockstep(paused, 1)
        deadline = time.monotonic() + BODY_TIMEOUT + 1.5
        rounds = 0
        while time.monotonic() < deadline:
            c.lockstep(a, 1)
            c.lockstep(b, 1)
            rounds += 1
            time.sleep(0.1)
        for sid in (a, b):
            assert c.send(sid, b"", end=True)
        for sid in (a, b):
            st = c.wait_over(sid)
            assert st.ended and st.reset is None and bytes(st.data) == PIECE * rounds, (sid, st.reset, len(st.data))
        st = c.wait_over(paused)
        assert st.reset is not None and not st.ended, st
    finally:
        c.close()
    for path in ("/iso-a", "/iso-b"):
        [seen] = origin_d.requests(path)
        assert completed(seen) and bytes(seen.body) == PIECE * rounds


def test_tls_key_updates_mid_duplex_keep_both_directions_going(gateways, origin_d):
    """TLS 1.3 KeyUpdate from the client (one asking for the gateway's own,
    `K`, then one not asking, `k`) while an echo streams both ways: the
    gateway reads the body and writes the echo on one TLS connection at
    once, and the key change on either direction must not stall or garble
    the other. `openssl s_client` interactively: a line `K`/`k` sends one."""
    v = gateways("h1-tls")
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{v.gw.port}", "-servername", "edge.test", "-tls1_3",
         "-alpn", "http/1.1", "-CAfile", str(v.pki.path("ca.crt"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    out = b""

    def until(needle: bytes, times: int = 1) -> None:
        nonlocal out
        deadline = time.monotonic() + BOUND
        while out.count(needle) < times and time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 0.1)[0]:
                got = os.read(p.stdout.fileno(), 65536)
                if not got:
                    return
                out += got
        assert out.count(needle) >= times, out[-1500:]

    def write(data: bytes) -> None:
        p.stdin.write(data)
        p.stdin.flush()

    try:
        until(b"Verify return code")
        write(b"POST /key-update HTTP/1.1\r\nhost: edge.test\r\ntransfer-encoding: chunked\r\n\r\n")
        until(b"HTTP/1.1 200")
        for i, command in enumerate([b"K\n", b"k\n", None]):
            piece = b"<<piece-%d>>" % i
            write(chunk(piece))
            until(piece)
            if command:
                write(command)
                until(b"KEYUPDATE", i + 1)
                time.sleep(0.2)
        write(b"0\r\n\r\n")
        until(b"\r\n0\r\n\r\n")
    finally:
        p.kill()
        p.wait(5)
    [seen] = origin_d.requests("/key-update")
    assert completed(seen) and bytes(seen.body) == b"<<piece-0>><<piece-1>><<piece-2>>"
