"""`Streams`: many HTTP/2 streams on one connection, driven together by a
small event loop over the `h2` library's client state machine (bodies sent
as the windows allow, received data hashed and acknowledged), over any
connected socket (cleartext or TLS). Used by the flow-control tests and the
compiled-gateway parity tests.
"""

from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings

from support.h2client import CANCEL, SocketOwner


@dataclass
class Result:
    """One stream's answer: the body is hashed, not kept (only its head)."""

    status: int | None = None
    headers: list = field(default_factory=list)
    length: int = 0
    sha: object = field(default_factory=hashlib.sha256)
    head: bytes = b""  # the body's first bytes (`Streams(keep=)`, 256 by default)
    ended: bool = False
    reset: int | None = None

    @property
    def sha256(self) -> str:
        return self.sha.hexdigest()

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


class Streams(SocketOwner):
    """Many streams on one HTTP/2 connection, their bodies sent and read
    together as the windows allow (the `h2` library does flow control;
    received data is acknowledged as soon as it is hashed)."""

    def __init__(self, addr: str, initial_window: int | None = None, sock: socket.socket | None = None,
                 keep: int = 256, scheme: str = "http"):
        if sock is None:
            host, port = addr.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        if initial_window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
        self.keep = keep
        self.scheme = scheme
        self.results: dict[int, Result] = {}
        self.bodies: dict[int, memoryview] = {}
        self.open_ended: set[int] = set()  # streams whose body does not end the stream
        self.goaway: int | None = None
        self.closed = False
        self.rbuf = b""
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, path: str, method: str = "GET", body: bytes | None = None, length: bool = True,
              headers: list[tuple[str, str]] = (), authority: str = "a.test", end: bool = True) -> int:
        """Opens a stream; its body (if any) is sent by `run` as windows open,
        the last DATA frame ending the stream unless `end` is False."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", self.scheme), (":authority", authority), (":path", path)]
        if body is not None and length:
            hdrs.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, hdrs + list(headers), end_stream=body is None)
        self.results[sid] = Result()
        if body is not None:
            self.bodies[sid] = memoryview(body)
        if not end:
            self.open_ended.add(sid)
        self.flush()
        return sid

    def reset(self, sid: int, code: int = CANCEL) -> None:
        self.conn.reset_stream(sid, code)
        self.bodies.pop(sid, None)
        self.flush()

    def _send_bodies(self) -> None:
        for sid, view in list(self.bodies.items()):
            if self.results[sid].ended or self.results[sid].reset is not None:
                del self.bodies[sid]
                continue
            while len(view):
                window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk, view = view[:window], view[window:]
                self.conn.send_data(sid, bytes(chunk), end_stream=not len(view) and sid not in self.open_ended)
            if len(view):
                self.bodies[sid] = view
            else:
                del self.bodies[sid]
        self.flush()

    def pump(self, until: float) -> None:
        """One round: send what the windows allow, read what came (at most
        until `until`), handle it."""
        self._send_bodies()
        self.sock.settimeout(max(0.01, min(0.5, until - time.monotonic())))
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        # Frame by frame, so a GOAWAY is handled (see _event) before the
        # frames that follow it in the same read.
        self.rbuf += data
        while len(self.rbuf) >= 9:
            end = 9 + int.from_bytes(self.rbuf[:3], "big")
            if len(self.rbuf) < end:
                break
            frame, self.rbuf = self.rbuf[:end], self.rbuf[end:]
            for e in self.conn.receive_data(frame):
                self._event(e)
        self.flush()

    def _event(self, e) -> None:
        if isinstance(e, h2.events.ConnectionTerminated):
            self.goaway = e.error_code
            if e.error_code == 0:
                # A graceful GOAWAY: streams up to its last-stream-id go on
                # (RFC 9113 §6.8), bodies both ways and the server's PING
                # included. The `h2` library closes the whole connection
                # state on any GOAWAY; reopen it so they can.
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            return
        r = self.results.get(getattr(e, "stream_id", None))
        if r is None:
            return
        if isinstance(e, h2.events.ResponseReceived):
            r.headers = list(e.headers)
            r.status = int(dict(r.headers)[":status"])
        elif isinstance(e, h2.events.InformationalResponseReceived):
            pass
        elif isinstance(e, h2.events.DataReceived):
            r.length += len(e.data)
            r.sha.update(e.data)
            if len(r.head) < self.keep:
                r.head += e.data[: self.keep - len(r.head)]
            self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, h2.events.StreamEnded):
            r.ended = True
        elif isinstance(e, h2.events.StreamReset):
            r.reset = e.error_code

    def run(self, timeout: float, until=None) -> dict[int, Result]:
        """Pumps until every stream ended or was reset (or `until()`), the
        connection closed, or `timeout` seconds passed."""
        done = until or (lambda: all(r.ended or r.reset is not None for r in self.results.values()))
        deadline = time.monotonic() + timeout
        while not done() and not self.closed and time.monotonic() < deadline:
            self.pump(deadline)
        return self.results


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body_of(n: int, seed: int) -> bytes:
    """n bytes that differ per seed (so a body swapped between streams shows)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]
