"""HTTP/2 clients for the end-to-end tests, on raw sockets.

- `H2Client`: a well-behaved client (the `h2` library's state machine) for
  requests and responses; `request()` returns status, headers and body.
- `RawH2`: hand-made frames (`hyperframe` + `hpack`) for what a real client
  would never send: floods, malformed headers, protocol violations.
  `events()` reads frames until a deadline and reports what the server did
  (GOAWAY with its error code, RST_STREAM, close).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from support.client import SocketOwner

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 §7 error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB


def _addr(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reset: int | None = None  # RST_STREAM error code, if the stream was reset

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


class H2Client(SocketOwner):
    """One HTTP/2 (h2c, prior knowledge) connection, used sequentially."""

    def __init__(self, addr: str, timeout: float = 10.0, validate: bool = True):
        self.sock = socket.create_connection(_addr(addr), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.goaway: int | None = None
        self.closed = False

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        authority: str = "a.test",
        headers: list[tuple[str, str]] = (),
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> Response:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)]
        hdrs += list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=body is None)
        if body is not None:
            self._send_body(sid, body)
        self.sock.sendall(self.conn.data_to_send())
        return self._wait(sid, timeout)

    def _send_body(self, sid: int, body: bytes) -> None:
        view = memoryview(body)
        while True:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0 and len(view):
                self.sock.sendall(self.conn.data_to_send())
                self._pump(time.monotonic() + 10)
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(sid, bytes(chunk), end_stream=not len(view))
            if not len(view):
                return

    def _pump(self, deadline: float) -> list:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise ConnectionError("server closed the connection")
        events = self.conn.receive_data(data)
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)
        for e in events:
            if isinstance(e, h2.events.ConnectionTerminated):
                self.goaway = e.error_code
        return events

    def _wait(self, sid: int, timeout: float) -> Response:
        deadline = time.monotonic() + timeout
        status, headers, body = 0, [], bytearray()
        while True:
            for e in self._pump(deadline):
                if getattr(e, "stream_id", None) != sid:
                    continue
                if isinstance(e, h2.events.ResponseReceived):
                    headers = [(n, v) for n, v in e.headers]
                    status = int(dict(headers)[":status"])
                elif isinstance(e, h2.events.DataReceived):
                    body += e.data
                    self.conn.acknowledge_received_data(e.flow_controlled_length, sid)
                elif isinstance(e, h2.events.StreamEnded):
                    self.sock.sendall(self.conn.data_to_send())
                    return Response(status, headers, bytes(body))
                elif isinstance(e, h2.events.StreamReset):
                    return Response(status, headers, bytes(body), reset=e.error_code)


@dataclass
class Seen:
    """What the server did on a raw connection."""

    goaway: int | None = None
    goaway_last_stream: int | None = None
    resets: dict[int, int] = field(default_factory=dict)
    headers: dict[int, list] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)
    ended: set = field(default_factory=set)
    settings: int = 0
    settings_acks: int = 0
    pings: int = 0
    window_updates: int = 0
    closed: bool = False
    frames: list = field(default_factory=list)

    def status(self, sid: int) -> int | None:
        for n, v in self.headers.get(sid, []):
            if n in (b":status", ":status"):
                return int(v)
        return None


class RawH2(SocketOwner):
    """A connection driven frame by frame."""

    def __init__(self, addr: str, timeout: float = 10.0, preface: bool = True, settings: dict | None = None,
                 sock: socket.socket | None = None):
        """`sock`: a connected socket to use (a TLS one, say) instead of connecting to `addr`."""
        if sock is None:
            sock = socket.create_connection(_addr(addr), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.buf = b""
        self.seen = Seen()
        if preface:
            self.send(PREFACE)
            self.frame(SettingsFrame(0, settings=settings or {}))

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except socket.timeout:
            # The server stopped reading (it is ending the connection).
            return False
        except OSError:
            self.seen.closed = True
            return False

    def frame(self, f: Frame) -> bool:
        return self.send(f.serialize())

    def block(self, method="GET", path="/", authority="a.test", extra=(), scheme="http") -> bytes:
        hdrs = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
        return self.enc.encode(hdrs + list(extra))

    def headers(self, sid: int, block: bytes | None = None, end_stream=True, end_headers=True, **kw) -> bool:
        f = HeadersFrame(sid)
        f.data = block if block is not None else self.block(**kw)
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return self.frame(f)

    def read_frames(self, until: float, stop=None) -> Seen:
        """Reads frames until `until` (monotonic), the close, or stop(seen)."""
        s = self.seen
        while time.monotonic() < until and not s.closed:
            if stop and stop(s):
                break
            while len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + length:
                    break
                f, _ = Frame.parse_frame_header(memoryview(self.buf[:9]))
                f.parse_body(memoryview(self.buf[9 : 9 + length]))
                self.buf = self.buf[9 + length :]
                self._note(f)
                if stop and stop(s):
                    return s
            try:
                self.sock.settimeout(max(0.01, min(0.5, until - time.monotonic())))
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                s.closed = True
                break
            if not data:
                s.closed = True
                break
            self.buf += data
        return s

    def _note(self, f: Frame) -> None:
        s = self.seen
        s.frames.append(type(f).__name__)
        if isinstance(f, GoAwayFrame):
            s.goaway = f.error_code
            s.goaway_last_stream = f.last_stream_id
        elif isinstance(f, RstStreamFrame):
            s.resets[f.stream_id] = f.error_code
        elif isinstance(f, HeadersFrame):
            s.headers[f.stream_id] = self.dec.decode(f.data)
            if "END_STREAM" in f.flags:
                s.ended.add(f.stream_id)
        elif isinstance(f, DataFrame):
            s.data[f.stream_id] = s.data.get(f.stream_id, b"") + f.data
            if "END_STREAM" in f.flags:
                s.ended.add(f.stream_id)
        elif isinstance(f, SettingsFrame):
            if "ACK" in f.flags:
                s.settings_acks += 1
            else:
                s.settings += 1
                self.frame(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(f, PingFrame):
            if "ACK" in f.flags:
                s.pings += 1
        elif isinstance(f, WindowUpdateFrame):
            s.window_updates += 1

    def ended_by_server(self, timeout: float = 5.0) -> Seen:
        """Reads until GOAWAY or close (or timeout)."""
        return self.read_frames(time.monotonic() + timeout, stop=lambda s: s.goaway is not None or s.closed)
