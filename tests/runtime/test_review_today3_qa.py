"""A review of the runtime changes of fb05990..94b59ba, each change attacked
against hello_gateway with real clients (raw sockets, a TLS client whose
records this file cuts and times itself through `ssl.MemoryBIO`, the `h2`
frame layer) and the recording origin:

- `proxy/conn.rs::linger_close` / `close_after_answer`: after an early
  answer (413) the connection discards what the client still sends for at
  most 5 s in all and 8 MiB, the answer reaching a client that sends
  forever; SIGTERM while connections linger exits within grace; many
  lingering clients at once leave a bystander served and fds bounded; over
  TLS the answer and close_notify come before the close;
- `tls/stream.rs::Records` / `limit_unfinished_records` (HTTP/1.1 over TLS,
  the wait for a next head): a next head whose record has begun and not
  finished is ended at header-timeout, not idle-timeout (TLS 1.2 and 1.3); a
  next request whose record comes one byte per segment, or two requests in
  one record, is served; a head + body in one record trickled slower than
  header-timeout is cut (docs/spec.md: over TLS, header-timeout runs from
  the first byte of the record carrying the head);
- `http2/mod.rs` `record_ticks` (HTTP/2 over TLS): a record begun with no
  stream open and not finished is ended (GOAWAY/close) near header-timeout;
  a slow but steady upload in one big record with a stream open is not;
- `rt/listen.rs::new_socket`: `[::1]` and IPv4-mapped listeners (the latter
  takes IPv4 clients), and `--upgrade` handing off a `[::1]` listener while
  clients linger on the old process.

Every early-answer path (413, 400, 431, 408, 502, a proxied answer with
`connection: close`) lingers instead of resetting; KeyUpdates come from
`openssl s_client` (`k`), whole or cut in two by a relay.

Bugs found, each fixed since (the tests pass; each has a passing control):

- a KeyUpdate between two requests whose record arrives in two reads cuts
  the idle wait at header-timeout: `TlsStream::read_some` sets `started`
  when it sees a record unfinished and never clears it when that record
  ends with no plaintext (control: the same KeyUpdate whole, and the relay
  with no KeyUpdate);
- a next head whose record began in the same segment as the previous
  request is held to idle-timeout, not header-timeout: `started` is set
  only after a receive made during the wait (control: the record begun
  during the wait ends at header-timeout);
- an answer the client does not take (the write stalled for body-timeout)
  is still followed by a 5 s lingering close: the stall is
  `ErrorKind::ClientTimeout` (`PumpError::SinkTimeout`), while conn.rs
  passes `delivered = false` to `close_after_answer` only for `ClientWrite`.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest
from support.gateway import WatchedProcess, free_port
from support.sclient import s_client_session

HEADER_TIMEOUT = 1
IDLE_TIMEOUT = 6
BODY_TIMEOUT = 4
LINGER_TOTAL = 5.0  # conn.rs LINGER_TOTAL
LINGER_BYTES = 8 * 1024 * 1024  # conn.rs LINGER_BYTES
BOUND = 15  # how long any wait here may block

GET = b"GET /r HTTP/1.1\r\nhost: edge.test\r\n\r\n"


# ---------------------------------------------------------------- helpers
def tls_gateway(start_gateway, pki, **opts):
    opts = {"protocols": "h1,h2", "header_timeout": HEADER_TIMEOUT, "idle_timeout": IDLE_TIMEOUT, "body_timeout": BODY_TIMEOUT, **opts}
    return start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), **opts)


class RecordClient:
    """A TLS client whose ciphertext this file sends itself: `seal` turns
    plaintext into records (one `write` is one record up to 16 KiB), so a
    test can split, trickle or hold back any byte of them."""

    def __init__(self, port: int, pki, version: ssl.TLSVersion | None = None, alpn: str = "http/1.1"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki.path("ca.crt"))
        ctx.set_alpn_protocols([alpn])
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="edge.test")
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                assert data, "the gateway closed during the handshake"
                self.inc.write(data)
        self._flush()
        self.closed = False

    def _flush(self) -> None:
        out = self.out.read()
        if out:
            self.sock.sendall(out)

    def seal(self, plaintext: bytes) -> bytes:
        self.tls.write(plaintext)
        return self.out.read()

    def send(self, plaintext: bytes) -> None:
        self.sock.sendall(self.seal(plaintext))

    def read_until(self, done, timeout: float = BOUND) -> bytes:
        """Plaintext until `done(bytes)` or the connection ends (then
        `closed` is set) or `timeout` passes."""
        got = b""
        deadline = time.monotonic() + timeout
        while not done(got) and time.monotonic() < deadline:
            try:
                chunk = self.tls.read(65536)
                if not chunk:
                    self.closed = True
                    break
                got += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.closed = True
                break
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                self.closed = True
                break
            if not data:
                self.inc.write_eof()
                continue
            self.inc.write(data)
        return got

    def close(self) -> None:
        self.sock.close()


def split_responses(got: bytes) -> tuple[list[int], bool]:
    """The statuses of the whole responses in `got` (the origin's and the
    gateway's carry content-length), and whether `got` ends on a boundary."""
    rest, found = got, []
    while b"\r\n\r\n" in rest:
        head, after = rest.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(after) < length:
            return found, False
        found.append(int(lines[0].split(b" ")[1]))
        rest = after[length:]
    return found, not rest


def answers(n: int):
    """A `done` for `read_until`: `n` whole responses."""
    return lambda got: len(split_responses(got)[0]) >= n


def statuses(got: bytes) -> list[int]:
    return split_responses(got)[0]


def time_to_end(c: RecordClient, timeout: float) -> tuple[float, bytes]:
    """Seconds until the gateway ends the connection, and what it sent."""
    t0 = time.monotonic()
    got = c.read_until(lambda _: False, timeout)
    assert c.closed, f"the connection was not ended within {timeout}s (got {got[:80]!r})"
    return time.monotonic() - t0, got


def big_post_head(length: int) -> bytes:
    return b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % length


def send_while_reading(
    sock: socket.socket, chunk: bytes, gap: float, limit: float, read: bool = True
) -> tuple[bytes, int, float]:
    """Sends `chunk` every `gap` s (never waiting on a full buffer) while
    reading; returns what came back, bytes sent, and when the gateway
    ended the connection (seconds, or `limit` if it did not). Its FIN is
    not the end: a lingering close half-closes first and then reads on;
    the end is when a send fails (the gateway closed, the kernel resets).
    With `read` false nothing is read: a client that takes no answer."""
    sock.setblocking(False)
    got, sent, fin = b"", 0, False
    t0 = time.monotonic()
    next_send = t0
    while (now := time.monotonic()) - t0 < limit:
        want_write = [sock] if now >= next_send else []
        r, w, _ = select.select([sock] if read and not fin else [], want_write, [], 0.05)
        if r:
            try:
                data = sock.recv(65536)
            except OSError:
                return got, sent, time.monotonic() - t0
            fin = not data
            got += data
        if w:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                pass
            except OSError:
                return got, sent, time.monotonic() - t0
            next_send = time.monotonic() + gap
    return got, sent, limit


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def fetch(family: int, addr: tuple) -> bytes:
    """One GET with `connection: close` to `addr`, all of the answer."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(BOUND)
        s.connect(addr)
        s.sendall(b"GET /v6 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


# ------------------------------------------------------- lingering close
def test_a_client_that_sends_forever_gets_its_413_and_is_cut_within_the_linger_time(start_gateway):
    gw = start_gateway(max_body_bytes=1000, body_timeout=BODY_TIMEOUT)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=BOUND)
    s.sendall(big_post_head(10**12))
    # 4 KiB every 0.2 s: inside LINGER_GAP, far below LINGER_BYTES.
    got, _sent, ended = send_while_reading(s, b"x" * 4096, 0.2, LINGER_TOTAL + 6)
    s.close()
    assert statuses(got)[:1] == [413], got[:200]
    assert ended < LINGER_TOTAL + 3, f"a client sending forever lingered {ended:.1f}s"


def test_a_fast_sender_after_an_early_answer_is_cut_after_about_8_mib(start_gateway):
    gw = start_gateway(max_body_bytes=1000)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=BOUND)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    s.sendall(big_post_head(10**12))
    got, sent, ended = send_while_reading(s, b"x" * 65536, 0, LINGER_TOTAL + 6)
    s.close()
    assert statuses(got)[:1] == [413], got[:200]
    assert ended < LINGER_TOTAL + 3
    # Socket buffers on both sides hold a few MiB more than the gateway read.
    assert sent < LINGER_BYTES + 16 * 1024 * 1024, f"{sent} bytes taken while lingering"


def test_sigterm_while_connections_linger_exits_within_grace(start_gateway):
    grace = 1
    gw = start_gateway(max_body_bytes=1000, grace=grace)
    stop = threading.Event()
    socks = []

    def keep_sending(s: socket.socket) -> None:
        s.settimeout(0.5)
        while not stop.is_set():
            try:
                s.send(b"x" * 1024)
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                return
            time.sleep(0.2)

    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=BOUND)
        s.sendall(big_post_head(10**9))
        socks.append(s)
    for s in socks:
        assert s.recv(12) == b"HTTP/1.1 413"
    threads = [threading.Thread(target=keep_sending, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    code = gw.terminate(timeout=BOUND)
    took = time.monotonic() - t0
    stop.set()
    for s in socks:
        s.close()
    assert code is not None, "the gateway did not exit"
    assert took < grace + 2.5, f"exit took {took:.1f}s with grace {grace}s (lingering is 5 s)"


def test_many_lingering_clients_leave_a_bystander_served_and_release_their_fds(start_gateway):
    gw = start_gateway(max_body_bytes=1000)
    base_fds = gw.fds()
    socks = []
    for _ in range(150):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=BOUND)
        # Body bytes after the head: the close would be a reset without lingering.
        s.sendall(big_post_head(10**9) + b"x" * 2000)
        socks.append(s)
    t0 = time.monotonic()
    by = socket.create_connection(("127.0.0.1", gw.port), timeout=BOUND)
    by.sendall(b"GET /by HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    answer = b""
    while chunk := by.recv(65536):
        answer += chunk
    by.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert time.monotonic() - t0 < 3, "the bystander waited on the lingering connections"
    for s in socks:
        assert s.recv(12) == b"HTTP/1.1 413"
    # A client that reads its answer and stays silent is let go at LINGER_GAP.
    deadline = time.monotonic() + LINGER_TOTAL + 5
    while gw.fds() > base_fds + 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gw.fds() <= base_fds + 5, f"fds {gw.fds()} (were {base_fds}) after the lingering ended"
    for s in socks:
        s.close()


def test_tls_early_answer_comes_with_close_notify_then_the_connection_ends(start_gateway, pki):
    gw = tls_gateway(start_gateway, pki, max_body_bytes=1000)
    c = RecordClient(gw.port, pki)
    c.send(big_post_head(10**9) + b"x" * 8000)
    got = c.read_until(lambda _: False, 2)
    assert statuses(got)[:1] == [413], got[:200]
    assert c.closed, "no close_notify/close after the 413"
    # Half-closed, the client may still send records: they are read and
    # dropped for as long as the gateway lingers (2 s here), not reset.
    # Each record sealed afresh: a replayed one would fail to decrypt.
    t0, failed = time.monotonic(), None
    while time.monotonic() - t0 < 2 and failed is None:
        try:
            c.sock.sendall(c.seal(b"x" * 1024))
        except OSError as e:
            failed = f"{e!r} {time.monotonic() - t0:.2f}s after the close_notify"
        time.sleep(0.2)
    c.close()
    assert failed is None, failed


class KeepSending:
    """Clients that each send 1 KiB every 0.2 s on a thread until stopped:
    connections the gateway lingers on for as long as it may."""

    def __init__(self, socks: list[socket.socket]):
        self.socks, self.stop = socks, threading.Event()
        for s in socks:
            threading.Thread(target=self._run, args=(s,), daemon=True).start()

    def _run(self, s: socket.socket) -> None:
        s.settimeout(0.5)
        while not self.stop.is_set():
            try:
                s.send(b"x" * 1024)
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                return
            time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        for s in self.socks:
            s.close()


def answered_413(port: int, n: int) -> list[socket.socket]:
    """`n` connections whose POST over max-body-bytes got its 413."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        s.sendall(big_post_head(10**9) + b"x" * 2000)
        socks.append(s)
    for s in socks:
        assert s.recv(12) == b"HTTP/1.1 413"
    return socks


def read_status_line(s: socket.socket) -> bytes:
    got = b""
    s.settimeout(BOUND)
    while b"\r\n" not in got:
        chunk = s.recv(1)
        if not chunk:
            break
        got += chunk
    return got


# Each path that answers early then lingers: flags, what the client sends
# (the head and bytes the gateway will not read), the status.
EARLY_ANSWERS = {
    "413": ({"max_body_bytes": 1000}, big_post_head(10**9) + b"x" * 4000, 413),
    "400": ({}, b"GET / HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n" + b"x" * 4000, 400),
    "431": ({"max_header_bytes": 1024}, b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"y" * 4000 + b"\r\n\r\n", 431),
    "408": ({"body_timeout": 1}, big_post_head(100) + b"x" * 10, 408),
    "502": ({}, b"GET /reset HTTP/1.1\r\nhost: a\r\n\r\n" + b"GET /r HTTP/1.1\r\nhost: a\r\n\r\n" * 50, 502),
    "proxied-close": ({}, b"GET /r HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n" + b"x" * 4000, 200),
}


@pytest.mark.parametrize("case", list(EARLY_ANSWERS))
def test_every_early_answer_path_lingers_instead_of_resetting(start_gateway, case):
    """After the answer, the gateway half-closes and keeps reading: a client
    still sending for 2 s (inside LINGER_TOTAL, 0.2 s gaps inside LINGER_GAP)
    is not reset. Without lingering its sends would meet a reset at once."""
    opts, wire, status = EARLY_ANSWERS[case]
    gw = start_gateway(**opts)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=BOUND)
    s.sendall(wire)
    line = read_status_line(s)
    assert line.startswith(b"HTTP/1.1 %d" % status), line
    _, sent, ended = send_while_reading(s, b"z" * 1024, 0.2, 2)
    s.close()
    assert ended >= 2, f"reset {ended:.2f}s after the {status} ({sent} bytes taken)"


def test_an_answer_the_client_does_not_take_is_not_followed_by_lingering(start_gateway):
    """`close_after_answer(delivered=false)`: a big answer the client never
    reads stalls the write for body-timeout, then the connection is closed
    at once (the client keeps sending, so a lingering close would last
    LINGER_TOTAL more). The control, an answer taken then lingering:
    `test_every_early_answer_path_lingers_instead_of_resetting[proxied-close]`."""
    body_timeout = 1
    gw = start_gateway(body_timeout=body_timeout)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(BOUND)
    s.connect(("127.0.0.1", gw.port))
    s.sendall(b"GET /bytes/268435456 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    _, _, ended = send_while_reading(s, b"z" * 100, 0.2, body_timeout + LINGER_TOTAL + 4, read=False)
    s.close()
    assert ended < body_timeout + LINGER_TOTAL - 1, f"ended {ended:.1f}s after the request"


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_upgrade_while_connections_linger_hands_off_and_the_old_process_exits_within_grace(
    hello_bin, origin, tmp_path
):
    """`--upgrade` with lingering clients on the old process: the handoff
    does not wait for them, the old process exits within grace, and the new
    one serves both listeners, the `[::1]` one included."""
    port, v6 = free_port(), free_port()
    sock = tmp_path / "admin.sock"
    argv = [str(hello_bin), "--listen", f"127.0.0.1:{port}", "--listen", f"[::1]:{v6}", "--upstream", origin.addr,
            "--max-body-bytes", "1000", "--grace", "1s", "--admin-socket", str(sock)]
    old = WatchedProcess(argv)
    new = None
    senders = None
    try:
        senders = KeepSending(answered_413(port, 5))
        t0 = time.monotonic()
        new = WatchedProcess(argv + ["--upgrade"], wait_for=r"took over from pid")
        took_over = time.monotonic() - t0
        old_exit = old.exit_code(BOUND)
        old_gone = time.monotonic() - t0
        for family, addr in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", v6))):
            assert fetch(family, addr).startswith(b"HTTP/1.1 200"), addr
    finally:
        if senders:
            senders.close()
        old.kill()
        if new:
            new.kill()
    assert took_over < 5, f"the handoff took {took_over:.1f}s"
    assert old_gone < 1 + 4, f"the old process exited {old_gone:.1f}s after the upgrade began"
    assert old_exit == 0, old.text()[-2000:]


# ------------------------------------------- TLS records, HTTP/1.1 keep-alive
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_a_stalled_next_head_in_an_unfinished_record_ends_at_header_timeout(start_gateway, pki, version):
    gw = tls_gateway(start_gateway, pki)
    c = RecordClient(gw.port, pki, version)
    c.send(GET)
    assert statuses(c.read_until(answers(1))) == [200]
    record = c.seal(GET)
    c.sock.sendall(record[:-1])  # the last byte never comes
    took, got = time_to_end(c, IDLE_TIMEOUT + 3)
    c.close()
    assert took < IDLE_TIMEOUT - 2, f"held {took:.1f}s: idle-timeout, not header-timeout"
    assert statuses(got) in ([], [408]), got[:200]


def test_a_next_head_record_begun_behind_the_previous_request_ends_at_header_timeout(start_gateway, pki):
    """The next request's record begins in the same segment as the
    previous request and its last byte never comes: docs/spec.md times
    the head from the first byte of its record, so the connection ends
    near header-timeout, as when the record begins during the wait."""
    gw = tls_gateway(start_gateway, pki)
    c = RecordClient(gw.port, pki)
    c.send(GET)
    assert statuses(c.read_until(answers(1))) == [200]
    c.sock.sendall(c.seal(GET) + c.seal(GET)[:-1])
    assert statuses(c.read_until(answers(1))) == [200]
    took, got = time_to_end(c, IDLE_TIMEOUT + 3)
    c.close()
    assert took < IDLE_TIMEOUT - 2, f"held {took:.1f}s: idle-timeout, not header-timeout"
    assert statuses(got) in ([], [408]), got[:200]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_an_idle_keep_alive_tls_connection_waits_past_header_timeout(start_gateway, pki, version):
    """The control of the test above: with no byte of a next request, the
    wait is idle-timeout."""
    gw = tls_gateway(start_gateway, pki)
    c = RecordClient(gw.port, pki, version)
    c.send(GET)
    assert statuses(c.read_until(answers(1))) == [200]
    time.sleep(HEADER_TIMEOUT * 2.5)
    c.send(GET)
    assert statuses(c.read_until(answers(1))) == [200]
    c.close()


def test_a_next_request_sent_one_ciphertext_byte_per_segment_is_served(start_gateway, pki):
    gw = tls_gateway(start_gateway, pki)
    c = RecordClient(gw.port, pki)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.send(GET)
    assert statuses(c.read_until(answers(1))) == [200]
    # Two records, each split at every byte, the whole within header-timeout.
    wire = c.seal(GET) + c.seal(GET)
    gap = HEADER_TIMEOUT / 2 / len(wire)
    for i in range(len(wire)):
        c.sock.sendall(wire[i : i + 1])
        time.sleep(gap)
    assert statuses(c.read_until(answers(2))) == [200, 200]
    c.close()


def test_pipelined_requests_in_one_record_are_all_served(start_gateway, pki):
    gw = tls_gateway(start_gateway, pki)
    c = RecordClient(gw.port, pki)
    c.send(GET * 3)
    assert statuses(c.read_until(answers(3))) == [200, 200, 200]
    c.send(GET + GET)
    assert statuses(c.read_until(answers(2))) == [200, 200]
    c.close()


def test_a_head_and_body_in_one_record_trickled_past_header_timeout_is_cut(start_gateway, pki):
    """Pinned (docs/spec.md): over TLS header-timeout runs from the first
    byte of the record that carries the head, so a 12 KiB record with the
    head in front, arriving over 2x header-timeout, is cut though each gap
    is far within body-timeout."""
    gw = tls_gateway(start_gateway, pki)
    c = RecordClient(gw.port, pki)
    c.send(GET)
    assert statuses(c.read_until(answers(1))) == [200]
    body = b"b" * 12000
    record = c.seal(big_post_head(len(body)) + body)
    pieces = 20
    step = len(record) // pieces + 1
    t0 = time.monotonic()
    try:
        for i in range(0, len(record), step):
            c.sock.sendall(record[i : i + step])
            time.sleep(HEADER_TIMEOUT * 2 / pieces)
    except OSError:
        pass
    got = c.read_until(answers(1), BOUND)
    c.close()
    assert statuses(got) in ([], [408]), f"served after {time.monotonic() - t0:.1f}s: {got[:120]!r}"


class SplittingRelay:
    """A TCP relay between one client and the gateway that cuts every
    client-to-gateway write in two (its first 3 bytes, then the rest after
    `pause`), so each record the client sends arrives in two reads: a
    record begun and not finished, then finished."""

    def __init__(self, port: int, pause: float = 0.2):
        self.target, self.pause = port, pause
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target), timeout=BOUND)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, split: bool) -> None:
        try:
            while data := src.recv(65536):
                if split and len(data) > 3:
                    dst.sendall(data[:3])
                    time.sleep(self.pause)
                    data = data[3:]
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def get_path(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: edge.test\r\n\r\n".encode()


@pytest.mark.parametrize(
    "split",
    [False, True],
    ids=["whole", "split"],
)
def test_a_key_update_between_requests_does_not_shorten_idle_timeout(start_gateway, pki, split):
    """A KeyUpdate carries no plaintext: the wait for the next request is
    still idle-timeout, not header-timeout, whether its record came in one
    read (`whole`) or two (`split`). The control: the same wait with no
    KeyUpdate (`test_an_idle_keep_alive_tls_connection_waits_past_header_timeout`)."""
    gw = tls_gateway(start_gateway, pki)
    relay = SplittingRelay(gw.port) if split else None
    out = s_client_session(relay.port if relay else gw.port, pki.path("ca.crt"),
                           [get_path("/before"), b"k\n", HEADER_TIMEOUT * 2.5, get_path("/after")])
    if relay:
        relay.close()
    assert "GET /before\n" in out, out[-1500:]
    assert "KEYUPDATE" in out, out[-1500:]
    assert "GET /after\n" in out, f"the request after the KeyUpdate was not served:\n{out[-1500:]}"


def test_a_split_request_through_the_relay_after_a_pause_is_served(start_gateway, pki):
    """The control of the `split` case above: the relay alone (every record
    in two reads) and the same pause, without the KeyUpdate."""
    gw = tls_gateway(start_gateway, pki)
    relay = SplittingRelay(gw.port)
    out = s_client_session(relay.port, pki.path("ca.crt"), [get_path("/before"), HEADER_TIMEOUT * 2.5, get_path("/after")])
    relay.close()
    assert "GET /before\n" in out and "GET /after\n" in out, out[-1500:]


# ------------------------------------------------------ TLS records, HTTP/2
class H2OverRecords:
    """An `h2` connection over a `RecordClient` (ALPN h2)."""

    def __init__(self, port: int, pki):
        self.c = RecordClient(port, pki, alpn="h2")
        assert self.c.tls.selected_alpn_protocol() == "h2"
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.c.send(self.h2.data_to_send())
        self.events: list = []

    def pump(self, until, timeout: float = BOUND) -> None:
        """Reads events until `until(events)` or the end of the connection."""
        deadline = time.monotonic() + timeout
        while not until(self.events) and time.monotonic() < deadline and not self.c.closed:
            data = self.c.read_until(lambda got: len(got) > 0, min(0.2, deadline - time.monotonic()))
            if data:
                self.events += self.h2.receive_data(data)
                out = self.h2.data_to_send()
                if out:
                    self.c.send(out)


def ended(events) -> bool:
    return any(isinstance(e, (h2.events.ConnectionTerminated, h2.events.StreamEnded)) for e in events)


def test_h2_tls_a_record_begun_with_no_stream_open_ends_near_header_timeout(start_gateway, pki):
    gw = tls_gateway(start_gateway, pki)
    conn = H2OverRecords(gw.port, pki)
    conn.pump(lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev), 3)
    conn.h2.send_headers(1, [(":method", "GET"), (":path", "/x"), (":scheme", "https"), (":authority", "a")],
                         end_stream=True)
    record = conn.c.seal(conn.h2.data_to_send())
    conn.c.sock.sendall(record[:-1])
    t0 = time.monotonic()
    conn.pump(lambda ev: any(isinstance(e, h2.events.ConnectionTerminated) for e in ev), IDLE_TIMEOUT + 3)
    took = time.monotonic() - t0
    conn.c.close()
    assert conn.c.closed or any(isinstance(e, h2.events.ConnectionTerminated) for e in conn.events)
    assert took < IDLE_TIMEOUT - 2, f"held {took:.1f}s"


def test_h2_tls_a_slow_steady_upload_in_one_record_with_a_stream_open_is_served(start_gateway, pki):
    gw = tls_gateway(start_gateway, pki)
    conn = H2OverRecords(gw.port, pki)
    conn.pump(lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev), 3)
    body = b"u" * 12000
    conn.h2.send_headers(1, [(":method", "POST"), (":path", "/upload"), (":scheme", "https"), (":authority", "a"),
                             ("content-length", str(len(body)))])
    conn.c.send(conn.h2.data_to_send())
    conn.h2.send_data(1, body, end_stream=True)
    record = conn.c.seal(conn.h2.data_to_send())
    assert len(record) > 12000
    pieces = 25
    step = len(record) // pieces + 1
    # 3x header-timeout in all, each gap far inside body-timeout.
    for i in range(0, len(record), step):
        conn.c.sock.sendall(record[i : i + step])
        time.sleep(HEADER_TIMEOUT * 3 / pieces)
    conn.pump(ended, BOUND)
    conn.c.close()
    got = [e for e in conn.events if isinstance(e, h2.events.ResponseReceived)]
    assert got and dict(got[0].headers).get(b":status") == b"200", conn.events


# ------------------------------------------------------------ IPv6 listeners
@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_loopback_and_ipv4_mapped_listeners_serve(start_gateway):
    v6, mapped = free_port(), free_port()
    gw = start_gateway(extra_args=["--listen", f"[::1]:{v6}", "--listen", f"[::ffff:127.0.0.1]:{mapped}"])

    assert fetch(socket.AF_INET6, ("::1", v6)).startswith(b"HTTP/1.1 200")
    # An IPv4-mapped listener takes IPv4 clients: it is dual-stack whatever bindv6only says.
    assert fetch(socket.AF_INET, ("127.0.0.1", mapped)).startswith(b"HTTP/1.1 200")
    assert gw.alive()


def test_sigterm_exit_code_is_clean_after_lingering(start_gateway):
    """A gateway whose lingering connections ended on their own exits 0."""
    gw = start_gateway(max_body_bytes=1000)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=BOUND)
    s.sendall(big_post_head(10**9) + b"x" * 2000)
    assert s.recv(12) == b"HTTP/1.1 413"
    s.close()
    assert gw.terminate(timeout=BOUND) == 0
