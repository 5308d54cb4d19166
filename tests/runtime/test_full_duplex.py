"""Full duplex through the gateway: an upstream that answers 2xx before it
read the request body, then reads it while its answer streams.

RFC 9112 §9.5: a client stops sending a body only when the answer says the
server does not want it and is closing the connection. An upstream that
accepted the request (2xx) and goes on reading (an echo, an upload that
reports progress, a streaming RPC) must get the whole body, and the client
the whole answer, over HTTP/1.1 and HTTP/2 alike. Any other early answer
(401, 413...) still ends the upload (runtime/README.md).

The origin here echoes each piece of the body as a chunk as soon as it
reads it. The client sends the next piece only once the echo of the last
one came back, so the test passes only if the gateway moves both ways at
once: a gateway that waited for the whole body before relaying, or stopped
the upload at the answer's head, would leave the client waiting for an echo
that never comes.
"""

from __future__ import annotations

import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from support.client import RawConn
from support.gateway import Gateway
from support.origin import ThreadPerConnection

PIECES = [bytes([ord("a") + i]) * (3000 + 1000 * i) for i in range(8)]
READ_BOUND = 10.0


class EchoOrigin(ThreadPerConnection):
    """HTTP/1.1 origin that answers `200` (chunked) to a request with a body
    as soon as it has its head, then echoes every read of the body as one
    chunk and ends the answer when the body ends; keep-alive. `/early-done`
    answers a complete `200` at once and closes without reading the body;
    `/silent-after-body` answers a `200` head at once, reads the whole body
    and then says nothing more (a hung application). Counts the connections
    it accepted."""

    def __init__(self):
        self.bodies: list[bytes] = []
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        c.settimeout(READ_BOUND)
        buf = b""
        with c:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        d = c.recv(65536)
                        if not d:
                            return
                        buf += d
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    line = head.split(b"\r\n")[0]
                    if b" /early-done " in line:
                        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone")
                        return
                    if b" /silent-after-body " in line:
                        self._read_then_hang(c, head, buf)
                        return
                    buf = self._echo(c, head, buf)
            except OSError:
                return

    def _read_then_hang(self, c: socket.socket, head: bytes, buf: bytes) -> None:
        c.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")))
        while len(buf) < length:
            buf += c.recv(65536)
        self.bodies.append(buf)
        c.settimeout(3 * READ_BOUND)
        while c.recv(65536):  # until the gateway gives up on it
            pass

    def _echo(self, c: socket.socket, head: bytes, buf: bytes) -> bytes:
        """Echoes one request's body (the gateway sends it chunked or with a
        length); returns the bytes after it."""
        fields = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
                  for line in head.split(b"\r\n")[1:] if b":" in line}
        c.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        body = b""

        def more() -> bytes:
            d = c.recv(65536)
            if not d:
                raise OSError("closed mid-body")
            return d

        if b"content-length" in fields:
            left = int(fields[b"content-length"])
            while left:
                if not buf:
                    buf = more()
                part, buf = buf[:left], buf[left:]
                left -= len(part)
                body += part
                c.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        else:  # chunked
            while True:
                while b"\r\n" not in buf:
                    buf += more()
                size_line, buf = buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while b"\r\n" not in buf:
                        buf += more()
                    buf = buf.split(b"\r\n", 1)[1]
                    break
                while len(buf) < size + 2:
                    buf += more()
                part, buf = buf[:size], buf[size + 2:]
                body += part
                c.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        # Recorded before the last chunk: a client that saw the answer end
        # may look at once (CI once found the list still empty).
        self.bodies.append(body)
        c.sendall(b"0\r\n\r\n")
        return buf


@pytest.fixture
def echo():
    o = EchoOrigin()
    yield o
    o.close()


@pytest.fixture
def gw(hello_bin, echo, gateway_logs):
    g = Gateway(hello_bin, echo.addr, log_dir=gateway_logs, protocols="h1,h2c", workers=1,
                response_timeout=5, body_timeout=5).start()
    yield g
    g.kill()


# ---------------------------------------------------------------- HTTP/1.1


def read_chunk(conn: RawConn, deadline: float) -> bytes:
    """One chunk of a chunked body from the raw connection's buffer."""
    while True:
        if b"\r\n" in conn.buf:
            size_line, rest = conn.buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) >= size + 2:
                conn.buf = rest[size + 2:]
                return bytes(rest[:size])
        assert conn._fill(deadline), f"no chunk before the bound (have {conn.buf[:200]!r})"


def h1_lockstep(conn: RawConn, path: str, chunked: bool) -> bytes:
    """Sends PIECES one by one, each only after the echo of the one before
    came back; returns everything echoed."""
    total = sum(len(p) for p in PIECES)
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % total
    conn.send(b"POST %s HTTP/1.1\r\nhost: a.test\r\n%s\r\n\r\n" % (path.encode(), framing))
    deadline = time.monotonic() + READ_BOUND
    while b"\r\n\r\n" not in conn.buf:
        assert conn._fill(deadline), f"no answer head before the body was sent: {conn.buf!r}"
    head, conn.buf = conn.buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    echoed = b""
    for piece in PIECES:
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        got = b""
        while len(got) < len(piece):
            got += read_chunk(conn, time.monotonic() + READ_BOUND)
        echoed += got
    if chunked:
        conn.send(b"0\r\n\r\n")
    # The last chunk and the empty trailer section end the answer.
    assert read_chunk(conn, time.monotonic() + READ_BOUND) == b"", "the answer did not end with the body"
    return echoed


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_an_http1_body_goes_up_while_its_echo_comes_down(gw, echo, chunked):
    """Each piece's echo comes back before the next piece is sent; the
    origin gets the whole body, the client the whole echo, and both
    connections stay open: a second exchange runs on the same client
    connection and the same upstream connection."""
    with RawConn(gw.port, timeout=READ_BOUND) as conn:
        first = h1_lockstep(conn, "/echo", chunked)
        second = h1_lockstep(conn, "/echo-again", chunked)
    whole = b"".join(PIECES)
    assert first == whole and second == whole
    assert echo.bodies == [whole, whole]
    assert echo.connections == 1, "the upstream connection was not kept after a full-duplex exchange"


def test_an_early_complete_answer_from_an_upstream_that_stops_reading(gw, echo):
    """The upstream answers 200 at once and closes without reading the body:
    the client gets that answer whole, then the connection ends (the body
    it was sending has nowhere to go), within the bound, never a hang."""
    with RawConn(gw.port, timeout=READ_BOUND) as conn:
        conn.send(b"POST /early-done HTTP/1.1\r\nhost: a.test\r\ncontent-length: 1000000\r\n\r\n")
        conn.send(b"x" * 20000)
        r = conn.read_response("POST")
        assert r.status == 200 and r.body == b"done", r
        assert conn.wait_closed(READ_BOUND), "the connection stayed open with the body unfinished"


def test_an_upstream_silent_after_the_body_is_cut_at_the_response_timeout(gw, echo):
    """While the body goes up, the upstream's silence is not timed (it may
    be waiting for the body); once the body is sent, `response-timeout`
    counts again, for the read already in flight too: the answer that
    started is cut (no last chunk), never left hanging."""
    body = b"b" * 50000
    with RawConn(gw.port, timeout=READ_BOUND) as conn:
        conn.send(b"POST /silent-after-body HTTP/1.1\r\nhost: a.test\r\ncontent-length: %d\r\n\r\n" % len(body))
        deadline = time.monotonic() + READ_BOUND
        while b"\r\n\r\n" not in conn.buf:
            assert conn._fill(deadline), f"no answer head: {conn.buf!r}"
        assert conn.buf.startswith(b"HTTP/1.1 200"), conn.buf
        conn.send(body)
        assert conn.wait_closed(3 * READ_BOUND), "the answer was left hanging after the body was sent"
        assert not conn.buf.endswith(b"0\r\n\r\n"), "a cut answer was ended as if complete"
    assert echo.bodies == [body]


# ---------------------------------------------------------------- HTTP/2


def test_an_http2_body_goes_up_while_its_echo_comes_down(gw, echo):
    """The same lockstep over h2c: DATA up, the echo's DATA down, piece by
    piece, then END_STREAM both ways; the origin gets the whole body."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=READ_BOUND)
    with sock:
        sock.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":path", "/echo"), (":scheme", "http"),
                                (":authority", "a.test")])
        sock.sendall(conn.data_to_send())
        status, echoed, ended = None, b"", False

        def pump_until(cond) -> None:
            nonlocal status, echoed, ended
            deadline = time.monotonic() + READ_BOUND
            while not cond():
                assert time.monotonic() < deadline, f"stalled: status {status}, {len(echoed)} echoed"
                data = sock.recv(65536)
                assert data, "the gateway closed the connection"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status = dict(ev.headers)[":status"]
                    elif isinstance(ev, h2.events.DataReceived):
                        echoed += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    elif isinstance(ev, h2.events.StreamEnded):
                        ended = True
                    elif isinstance(ev, h2.events.StreamReset):
                        pytest.fail(f"stream reset: {ev}")
                sock.sendall(conn.data_to_send())

        pump_until(lambda: status is not None)
        assert status == "200"
        sent = 0
        for piece in PIECES:
            conn.send_data(sid, piece)
            sock.sendall(conn.data_to_send())
            sent += len(piece)
            pump_until(lambda want=sent: len(echoed) >= want)
        conn.end_stream(sid)
        sock.sendall(conn.data_to_send())
        pump_until(lambda: ended)
    whole = b"".join(PIECES)
    assert echoed == whole
    assert echo.bodies == [whole]


def test_an_http2_upstream_silent_after_the_body_gets_the_stream_reset(gw, echo):
    """The HTTP/2 side of the silent upstream: once the body is sent, the
    read in flight is timed again, and the answer that started is cut with
    RST_STREAM, never ended as if complete nor left hanging."""
    body = b"b" * 50000
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=3 * READ_BOUND)
    events = []
    with sock:
        sock.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":path", "/silent-after-body"), (":scheme", "http"),
                                (":authority", "a.test"), ("content-length", str(len(body)))])
        for i in range(0, len(body), 16384):
            conn.send_data(sid, body[i:i + 16384], end_stream=i + 16384 >= len(body))
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 3 * READ_BOUND
        while not any(isinstance(e, (h2.events.StreamReset, h2.events.StreamEnded)) for e in events):
            assert time.monotonic() < deadline, f"the answer was left hanging: {events}"
            data = sock.recv(65536)
            assert data, f"connection closed without ending the stream: {events}"
            events += conn.receive_data(data)
            sock.sendall(conn.data_to_send())
    assert any(isinstance(e, h2.events.ResponseReceived) for e in events), events
    assert any(isinstance(e, h2.events.StreamReset) for e in events), f"a cut answer was ended: {events}"
    assert echo.bodies == [body]
