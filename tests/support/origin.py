"""A real HTTP/1.1 origin server for end-to-end tests, on raw sockets.

It records the exact bytes of every request it receives, per upstream
connection, so a test can assert what the gateway forwarded: one framing
header, one Host, CRLF line endings, no hop-by-hop headers, no smuggled
second request, and whether a request was ever completed.

The response is chosen by the request path (so curl and raw-socket tests
can steer it), or by a handler a test installs (`origin.handler = fn`):

  /echo                 200, the request body back
  /sink[?pause_body=S]  reads the body (after S seconds, to push back on the
                        gateway), answers "<length> <sha256>\\n"
  ?early_status=NNN     (any path) answers NNN with "early\\n" right after the
                        head, without reading the body, then closes
  /bytes/N[?chunked=1][&pause=S]
                        N bytes of `pattern(N)` (chunked if asked; pauses S
                        seconds after the first MiB)
  /slow?delay=S         answers normally after S seconds
  /trickle?n=K&interval=S
                        Content-Length K, one byte every S seconds
  /status/NNN           status NNN (no body for 1xx/204/304, nor for HEAD)
  /chunked              a chunked response with several chunks and a trailer
  /garbage              answers bytes that are not HTTP and keeps the connection
  /reset                resets the connection (RST) without answering
  /close                closes the connection without answering
  /stall                never answers (until the client or the test goes away)
  /cut?n=K[&mode=reset] Content-Length 1000 but only K body bytes, then close/RST
  /cut-chunked          one chunk of a chunked response, then close
  anything else         200, body "<METHOD> <target>\\n"

Every response carries `x-origin-conn: <connection id>` so a test can tell
which upstream connection served it.
"""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

RAW_CAP = 1 << 20  # raw bytes kept per connection (the rest is only counted)
BODY_CAP = 1 << 20  # body bytes kept per request (length and sha256 cover all)
HEAD_CAP = 1 << 20

_BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern(n: int) -> bytes:
    """The deterministic body of /bytes/N."""
    reps, rest = divmod(n, len(_BLOCK))
    return _BLOCK * reps + _BLOCK[:rest]


def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    reps, rest = divmod(n, len(_BLOCK))
    for _ in range(reps):
        h.update(_BLOCK)
    h.update(_BLOCK[:rest])
    return h.hexdigest()


HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
}


@dataclass
class RecordedRequest:
    """One request as the origin received it."""

    conn_id: int
    seq: int  # index on its connection
    head_raw: bytes
    method: str = ""
    target: str = ""
    version: str = ""
    headers: list = field(default_factory=list)  # [(name_bytes, value_bytes)] as sent
    head_crlf: bool = True  # every head line ended with CRLF
    head_error: str | None = None  # why the origin could not parse the head
    framing: str = "none"  # "content-length" | "chunked" | "none"
    body: bytearray = field(default_factory=bytearray)  # first BODY_CAP bytes
    body_len: int = 0
    body_sha: object = field(default_factory=hashlib.sha256)
    chunks: int = 0
    complete: bool = False  # whole body received (terminating chunk for chunked)
    body_error: str | None = None

    def header(self, name: str) -> list[str]:
        """All values of header `name` (case-insensitive), as latin-1 strings."""
        n = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == n]

    def header_names(self) -> list[str]:
        return [k.decode("latin-1").lower() for k, _ in self.headers]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path if self.target.startswith("/") else self.target

    @property
    def query(self) -> dict:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.target).query).items()}

    @property
    def body_sha256(self) -> str:
        return self.body_sha.hexdigest()

    def __repr__(self) -> str:  # short, for assertion messages
        return (
            f"<req conn={self.conn_id} {self.method} {self.target} {self.version} "
            f"framing={self.framing} len={self.body_len} complete={self.complete} "
            f"head={bytes(self.head_raw[:400])!r}>"
        )


class OriginConn:
    """One connection from the gateway to the origin."""

    def __init__(self, origin: "Origin", sock: socket.socket, cid: int):
        self.origin = origin
        self.sock = sock
        self.id = cid
        self.raw = bytearray()
        self.nbytes = 0
        self.mark = 0  # nbytes at the last origin.reset()
        self.requests: list[RecordedRequest] = []
        self.peer_closed = False  # EOF or RST seen from the gateway
        self.closed = False  # closed (by either side)
        self.sent = 0

    # -- used by handlers
    def send(self, data: bytes, timeout: float = 30.0) -> bool:
        """Write all of data (blocking up to `timeout` while the gateway pushes back)."""
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(data)
            self.sent += len(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.closed = True

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()
        self.closed = True

    def sleep(self, seconds: float) -> bool:
        """Sleep, cut short when the origin stops. False if stopped."""
        return not self.origin.stopping.wait(seconds)

    def wait_peer_close(self, seconds: float) -> bool:
        """Block until the gateway closes this connection (or the origin stops)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.origin.stopping.is_set():
            try:
                self.sock.settimeout(0.2)
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                self.peer_closed = True
                return True
            if not d:
                self.peer_closed = True
                return True
            self._record(d)
        return False

    def bytes_since_reset(self) -> bytes:
        start = min(self.mark, len(self.raw))
        return bytes(self.raw[start:])

    # -- internal
    def _record(self, data: bytes) -> None:
        with self.origin.cond:
            room = RAW_CAP - len(self.raw)
            if room > 0:
                self.raw += data[:room]
            self.nbytes += len(data)
            self.origin.cond.notify_all()


class _Closed(Exception):
    pass


_LINE_END = re.compile(rb"\r?\n\r?\n")


class Origin:
    """Threaded raw-socket HTTP/1.1 origin on 127.0.0.1 (port chosen by the OS,
    or `port`: a test that restarts an origin binds the same port again)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(1024)
        self.port = self.lsock.getsockname()[1]
        self.stopping = threading.Event()
        self.cond = threading.Condition()
        self.conns: dict[int, OriginConn] = {}
        self.requests: list[RecordedRequest] = []  # since the last reset()
        self.handler = None  # callable(req, conn) -> bool keep_alive; None = by path
        self.send_100_continue = True
        self.accepted = 0
        self._threads: list[threading.Thread] = []
        self._next_id = 0
        t = threading.Thread(target=self._accept_loop, name=f"origin-accept-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)

    # ------------------------------------------------------------ test API
    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget recorded requests; restore the default behaviour."""
        with self.cond:
            self.requests = []
            self.handler = None
            self.send_100_continue = True
            for c in self.conns.values():
                c.mark = c.nbytes

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def wait_requests(self, n: int, timeout: float = 5.0, complete: bool = False) -> list[RecordedRequest]:
        def ok():
            reqs = self.requests
            if complete:
                reqs = [r for r in reqs if r.complete]
            return len(reqs) >= n

        self.wait_for(ok, timeout)
        return list(self.requests)

    def conn(self, cid: int) -> OriginConn:
        return self.conns[cid]

    def raw_since_reset(self) -> bytes:
        """All bytes any upstream connection sent since the last reset (in connection order)."""
        with self.cond:
            return b"".join(c.bytes_since_reset() for c in self.conns.values())

    def open_conns(self) -> list[OriginConn]:
        return [c for c in self.conns.values() if not c.closed and not c.peer_closed]

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        for c in list(self.conns.values()):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=3)

    # ------------------------------------------------------------ server
    def _accept_loop(self) -> None:
        self.lsock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                self._next_id += 1
                c = OriginConn(self, s, self._next_id)
                self.conns[c.id] = c
                self.accepted += 1
                self.cond.notify_all()
            t = threading.Thread(target=self._serve, args=(c,), name=f"origin-conn-{c.id}", daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _recv(self, c: OriginConn) -> bytes:
        c.sock.settimeout(0.2)
        while True:
            if self.stopping.is_set():
                raise _Closed()
            try:
                d = c.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                c.peer_closed = True
                raise _Closed()
            if not d:
                c.peer_closed = True
                raise _Closed()
            c._record(d)
            return d

    def _serve(self, c: OriginConn) -> None:
        """Serves connection `c` until it ends; closes it however it ends."""
        try:
            self._exchanges(c)
        except _Closed:
            pass
        except Exception:  # noqa: BLE001 - a handler bug must not hang a test: it shows in the test's checks
            import traceback

            traceback.print_exc()
        finally:
            with self.cond:
                if not c.closed:
                    try:
                        c.sock.close()
                    except OSError:
                        pass
                c.closed = True
                self.cond.notify_all()

    def _next_head(self, c: OriginConn, buf: bytearray) -> RecordedRequest:
        """Reads connection `c`'s next request head (taken from the front of
        `buf`, which keeps what follows it) and parses it, unrecorded."""
        while True:
            m = _LINE_END.search(buf)
            if m:
                break
            if len(buf) > HEAD_CAP:
                raise _Closed()
            buf += self._recv(c)
        head = bytes(buf[: m.end()])
        del buf[: m.end()]
        req = RecordedRequest(conn_id=c.id, seq=len(c.requests), head_raw=head)
        self._parse_head(req)
        return req

    def _exchanges(self, c: OriginConn) -> None:
        """The requests of connection `c` and their answers, in order."""
        buf = bytearray()
        while not self.stopping.is_set() and not c.closed:
            req = self._next_head(c, buf)
            with self.cond:
                c.requests.append(req)
                self.requests.append(req)
                self.cond.notify_all()
            if req.head_error:
                c.close()
                return
            if self.send_100_continue and any(
                v.strip().lower() == "100-continue" for v in req.header("expect")
            ) and req.framing != "none":
                c.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            if "early_status" in req.query:
                # answer before reading the body (e.g. an early 413), then close
                st = int(req.query["early_status"])
                c.send(
                    f"HTTP/1.1 {st} Early\r\nx-origin-conn: {c.id}\r\ncontent-length: 6\r\n"
                    "connection: close\r\n\r\nearly\n".encode()
                )
                c.sleep(0.5)
                c.close()
                return
            pause = float(req.query.get("pause_body", 0) or 0)
            if pause:
                c.sleep(pause)
            self._read_body(c, req, buf)
            with self.cond:
                req.complete = req.body_error is None
                self.cond.notify_all()
            if req.body_error:
                c.close()
                return
            handler = self.handler or default_handler
            keep = handler(req, c)
            if keep is False or c.closed:
                if not c.closed:
                    c.close()
                return

    @staticmethod
    def _parse_head(req: RecordedRequest) -> None:
        head = req.head_raw
        lines = head.split(b"\n")
        # the head ends with an empty line: drop the final "" and the terminating line
        assert lines[-1] == b""
        lines = lines[:-1]
        for ln in lines:
            if not ln.endswith(b"\r"):
                req.head_crlf = False
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        if lines and lines[-1] == b"":
            lines = lines[:-1]
        if not lines:
            req.head_error = "empty head"
            return
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            req.head_error = f"bad request line {lines[0]!r}"
            return
        req.method, req.target, req.version = (p.decode("latin-1") for p in parts)
        for ln in lines[1:]:
            if b":" not in ln:
                req.head_error = f"header line without colon {ln!r}"
                req.headers.append((ln, b""))
                continue
            k, v = ln.split(b":", 1)
            req.headers.append((k, v.strip(b" \t")))
        te = req.header("transfer-encoding")
        cl = req.header("content-length")
        if te:
            req.framing = "chunked"
        elif cl:
            req.framing = "content-length"

    def _read_body(self, c: OriginConn, req: RecordedRequest, buf: bytearray) -> None:
        def add(data: bytes) -> None:
            room = BODY_CAP - len(req.body)
            if room > 0:
                req.body += data[:room]
            req.body_len += len(data)
            req.body_sha.update(data)

        try:
            if req.framing == "content-length":
                try:
                    need = int(req.header("content-length")[0])
                except ValueError:
                    req.body_error = "unparsable content-length"
                    return
                while need > 0:
                    if not buf:
                        buf += self._recv(c)
                    take = bytes(buf[:need])
                    del buf[: len(take)]
                    add(take)
                    need -= len(take)
            elif req.framing == "chunked":
                while True:
                    while b"\r\n" not in buf:
                        if len(buf) > 4096:
                            req.body_error = "chunk size line too long"
                            return
                        buf += self._recv(c)
                    i = buf.index(b"\r\n")
                    line = bytes(buf[:i])
                    del buf[: i + 2]
                    size_s = line.split(b";", 1)[0].strip(b" \t")
                    if not re.fullmatch(rb"[0-9a-fA-F]{1,15}", size_s):
                        req.body_error = f"bad chunk size line {line!r}"
                        return
                    size = int(size_s, 16)
                    if size == 0:
                        # trailer section up to the empty line
                        while True:
                            while b"\r\n" not in buf:
                                buf += self._recv(c)
                            i = buf.index(b"\r\n")
                            tl = bytes(buf[:i])
                            del buf[: i + 2]
                            if tl == b"":
                                return
                    while len(buf) < size + 2:
                        buf += self._recv(c)
                    add(bytes(buf[:size]))
                    if buf[size : size + 2] != b"\r\n":
                        req.body_error = "chunk data not followed by CRLF"
                        return
                    del buf[: size + 2]
                    req.chunks += 1
        except _Closed:
            req.body_error = "connection closed before the body was complete"


# ---------------------------------------------------------------- responses


def respond(
    conn: OriginConn,
    req: RecordedRequest,
    status: int = 200,
    body: bytes = b"",
    headers: tuple = (),
    reason: str = "",
) -> bool:
    no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
    reason = reason or {200: "OK", 204: "No Content", 304: "Not Modified"}.get(status, "X")
    h = [f"HTTP/1.1 {status} {reason}", f"x-origin-conn: {conn.id}"]
    if status not in (204, 304) and not 100 <= status < 200:
        h.append(f"content-length: {len(body)}")
    h += list(headers)
    if req.header("connection") and "close" in req.header("connection")[0].lower():
        h.append("connection: close")
    data = ("\r\n".join(h) + "\r\n\r\n").encode("latin-1")
    if not no_body:
        data += body
    ok = conn.send(data)
    return ok and not (req.header("connection") and "close" in req.header("connection")[0].lower())


def default_handler(req: RecordedRequest, conn: OriginConn) -> bool:
    path, q = req.path, req.query
    if path.startswith("/echo"):
        return respond(conn, req, 200, bytes(req.body))
    if path.startswith("/sink"):
        return respond(conn, req, 200, f"{req.body_len} {req.body_sha256}\n".encode())
    if path.startswith("/bytes/"):
        n = int(path.split("/")[2])
        chunked = q.get("chunked") == "1"
        pause = float(q.get("pause", 0) or 0)
        head = [f"HTTP/1.1 200 OK", f"x-origin-conn: {conn.id}", "content-type: application/octet-stream"]
        head.append("transfer-encoding: chunked" if chunked else f"content-length: {n}")
        if not conn.send(("\r\n".join(head) + "\r\n\r\n").encode()):
            return False
        if req.method == "HEAD":
            return True
        sent = 0
        paused = False
        while sent < n:
            piece = _BLOCK[: min(len(_BLOCK), n - sent)]
            data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            if not conn.send(data):
                return False
            sent += len(piece)
            if pause and not paused and sent >= (1 << 20):
                paused = True
                conn.sleep(pause)
        if chunked:
            conn.send(b"0\r\n\r\n")
        return True
    if path.startswith("/slow"):
        conn.sleep(float(q.get("delay", 1)))
        return respond(conn, req, 200, f"{req.method} {req.target}\n".encode())
    if path.startswith("/trickle"):
        n = int(q.get("n", 5))
        interval = float(q.get("interval", 0.2))
        conn.send(f"HTTP/1.1 200 OK\r\nx-origin-conn: {conn.id}\r\ncontent-length: {n}\r\n\r\n".encode())
        for _ in range(n):
            if not conn.sleep(interval) or not conn.send(b"x"):
                return False
        return True
    if path.startswith("/status/"):
        status = int(path.split("/")[2])
        body = b"" if status in (204, 304) else f"status {status}\n".encode()
        extra = ('etag: "v1"',) if status == 304 else ()
        return respond(conn, req, status, body, extra)
    if path.startswith("/chunked"):
        conn.send(
            f"HTTP/1.1 200 OK\r\nx-origin-conn: {conn.id}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        )
        if req.method == "HEAD":
            return True
        for part in (b"hello, ", b"chunked ", b"world\n"):
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
        return True
    if path.startswith("/garbage"):
        conn.send(b"THIS IS NOT HTTP AT ALL\x00\x01\r\n\r\n")
        conn.wait_peer_close(30)
        return False
    if path.startswith("/reset"):
        conn.reset()
        return False
    if path.startswith("/close"):
        conn.close()
        return False
    if path.startswith("/stall"):
        conn.wait_peer_close(60)
        return False
    if path.startswith("/cut-chunked"):
        conn.send(
            f"HTTP/1.1 200 OK\r\nx-origin-conn: {conn.id}\r\ntransfer-encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n".encode()
        )
        conn.sleep(0.2)
        conn.close()
        return False
    if path.startswith("/cut"):
        n = int(q.get("n", 10))
        conn.send(f"HTTP/1.1 200 OK\r\nx-origin-conn: {conn.id}\r\ncontent-length: 1000\r\n\r\n".encode() + b"y" * n)
        conn.sleep(0.2)
        if q.get("mode") == "reset":
            conn.reset()
        else:
            conn.close()
        return False
    return respond(conn, req, 200, f"{req.method} {req.target}\n".encode(), ("content-type: text/plain",))


class ThreadPerConnection:
    """A listening socket on `host` (127.0.0.1 unless given; `addr`, `port`) whose every accepted
    connection is handed to `serve` on a thread of its own: the frame of a
    hand-written origin that plays one scripted part per connection.
    Counts the connections it accepted."""

    def __init__(self, host: str = "127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family)
        self.port = self.sock.getsockname()[1]
        self.addr = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class UnreadingOrigin:
    """A server that accepts, reads the request head, then neither reads the
    body nor answers (a hung application behind a full receive buffer)."""

    def __init__(self):
        self.lsock = socket.socket()
        # accepted sockets inherit a small receive buffer: the body backs up soon
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.held.append(c)
            c.recv(4096)

    def close(self):
        self.lsock.close()
        for c in self.held:
            c.close()
