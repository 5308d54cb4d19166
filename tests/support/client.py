"""Raw-socket HTTP/1.1 client helpers: write exact bytes, read what came back.

`RawConn.read_response()` parses one response (1xx interim responses are
returned like any other, so Expect: 100-continue can be observed) and knows
which responses have no body (HEAD, 1xx, 204, 304). `exchange()` writes
bytes and collects every response until the server closes the connection or
goes quiet, which is what the rejection tests need: "one 400, then closed".
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


class Closed(Exception):
    """The server closed the connection before a complete response."""

    def __init__(self, msg: str, partial: bytes = b""):
        super().__init__(msg)
        self.partial = partial


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list = field(default_factory=list)  # [(name_lower_str, value_str)]
    body: bytes = b""
    raw_head: bytes = b""
    complete: bool = True  # False: the connection was cut inside the body

    def header(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.headers if k == n]

    def h(self, name: str) -> str | None:
        v = self.header(name)
        return v[0] if v else None

    def __repr__(self) -> str:
        return f"<resp {self.status} {self.reason!r} headers={self.headers} body={self.body[:200]!r}{'' if self.complete else ' INCOMPLETE'}>"


class SocketOwner:
    """A test client over one socket (`self.sock`): closed on `close()` or
    at the end of a `with` block."""

    sock: socket.socket

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RawConn(SocketOwner):
    """Raw bytes over one connection: to `host:port`, or over `sock` (one a
    test made itself, a TLS one say)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", timeout: float = 10.0,
                 sock: socket.socket | None = None):
        if sock is None:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def send(self, data: bytes) -> bool:
        """Write all of data; False if the peer had already closed/reset."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _fill(self, deadline: float) -> bool:
        """Read more into buf. False on EOF/reset/timeout."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(262144)
        except socket.timeout:
            return False
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        except OSError:
            self.eof = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read_response(self, method: str = "GET", timeout: float | None = None) -> Response:
        """One response. Raises Closed on EOF before its end (with partial body info),
        TimeoutError when nothing complete arrives in time."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if not self._fill(deadline):
                if self.eof:
                    raise Closed("closed before a response head", bytes(self.buf))
                raise TimeoutError(f"no response head; got {bytes(self.buf[:200])!r}")
        head = bytes(self.buf[: i + 4])
        del self.buf[: i + 4]
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"not an HTTP response: {head[:200]!r}")
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.decode("latin-1").partition(":")
            headers.append((k.strip().lower(), v.strip()))
        r = Response(status, reason, version, headers, b"", head)
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            return r
        te = r.h("transfer-encoding")
        cl = r.h("content-length")
        if te and "chunked" in te.lower():
            body = bytearray()
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill(deadline):
                        r.body, r.complete = bytes(body), False
                        return self._cut(r)
                j = self.buf.index(b"\r\n")
                size = int(bytes(self.buf[:j]).split(b";")[0].strip(), 16)
                del self.buf[: j + 2]
                if size == 0:
                    while True:
                        while b"\r\n" not in self.buf:
                            if not self._fill(deadline):
                                r.body, r.complete = bytes(body), False
                                return self._cut(r)
                        j = self.buf.index(b"\r\n")
                        line = bytes(self.buf[:j])
                        del self.buf[: j + 2]
                        if not line:
                            r.body = bytes(body)
                            return r
                while len(self.buf) < size + 2:
                    if not self._fill(deadline):
                        body += self.buf[:size]
                        r.body, r.complete = bytes(body), False
                        return self._cut(r)
                body += self.buf[:size]
                del self.buf[: size + 2]
        if cl is not None:
            n = int(cl)
            while len(self.buf) < n:
                if not self._fill(deadline):
                    r.body, r.complete = bytes(self.buf), False
                    self.buf.clear()
                    return self._cut(r)
            r.body = bytes(self.buf[:n])
            del self.buf[:n]
            return r
        # close-delimited
        while self._fill(deadline):
            pass
        r.body = bytes(self.buf)
        self.buf.clear()
        r.complete = self.eof and not self.reset
        return r

    def _cut(self, r: Response) -> Response:
        if not self.eof:
            raise TimeoutError(f"response body stalled: {r!r}")
        return r

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes (EOF or RST) within timeout; extra bytes are kept in buf."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                return False
        return True


@dataclass
class Exchange:
    responses: list
    closed: bool
    leftover: bytes  # bytes that did not parse as a response

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def exchange(port: int, data: bytes, quiet: float = 3.0, timeout: float = 10.0, method: str = "GET") -> Exchange:
    """Send data on a fresh connection and read responses until the server closes
    the connection, or sends nothing for `quiet` seconds."""
    c = RawConn(port, timeout=timeout)
    try:
        c.send(data)
        resps = []
        leftover = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                resps.append(c.read_response(method=method, timeout=quiet))
            except Closed as e:
                leftover = e.partial
                break
            except TimeoutError:
                leftover = bytes(c.buf)
                break
            except ValueError:
                leftover = bytes(c.buf)
                break
            if resps[-1].status >= 200 and not resps[-1].complete:
                break
        closed = c.eof or c.wait_closed(0.5 if c.eof else 0.1)
        return Exchange(resps, closed, leftover)
    finally:
        c.close()


def request(
    port: int,
    method: str = "GET",
    target: str = "/",
    headers: list | tuple = (),
    body: bytes | None = None,
    host: str = "example.test",
    timeout: float = 10.0,
) -> Response:
    """One well-formed request on a fresh connection (Connection: close)."""
    h = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    h += list(headers)
    if body is not None:
        h.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(h) + "\r\n\r\n").encode("latin-1") + (body or b"")
    with RawConn(port, timeout=timeout) as c:
        c.send(data)
        return c.read_response(method=method)
