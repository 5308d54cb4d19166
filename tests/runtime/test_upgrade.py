"""Zero-downtime upgrades (`--upgrade`, docs/operations.md): the listening sockets
pass to the new process over the control socket, the old one drains and exits 0.

Two "builds" are hello_gateway with `--tag A` / `--tag B`: every response carries
`x-gateway-tag`, and `/tag` answers the tag, so a test sees which build served.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.client import Closed, RawConn, request
from support.h2client import RawH2
from support.gateway import _kill_group, _register, free_port, settled_fd_count
from support.handoff import gateway_pids, serves_tag, tag_of

GRACE = 5.0


class Proc:
    """One hello_gateway process started by these tests (stderr kept)."""

    def __init__(self, binary, ports, origin, sock, tag, workers=2, upgrade=False, env=None, log_dir=None, extra=()):
        args = [str(binary)]
        for p in ports:
            args += ["--listen", f"127.0.0.1:{p}"]
        args += ["--upstream", origin, "--admin-socket", str(sock), "--tag", tag]
        args += ["--workers", str(workers), "--grace", f"{int(GRACE)}s", *extra]
        if upgrade:
            args.append("--upgrade")
        self.tag = tag
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        _register(self.proc)
        self.log = open(log_dir / f"upgrade-{self.proc.pid}.log", "w") if log_dir else None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if self.log:
                self.log.write(line + "\n")
                self.log.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        """stderr so far; once the process ended, all of it (its last lines may
        still be in the pipe when `wait()` returns)."""
        if self.proc.poll() is not None and self._reader is not threading.current_thread():
            self._reader.join(5)
        with self._lock:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 20.0) -> bool:
        """True once a stderr line matches `pattern`; False if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.stderr()):
                return True
            if self.proc.poll() is not None:
                self._reader.join(1)
                return bool(re.search(pattern, self.stderr()))
            time.sleep(0.02)
        return False

    def kill(self):
        _kill_group(self.proc)


@pytest.fixture
def procs(gateway_logs):
    started: list[Proc] = []

    def start(*a, **kw) -> Proc:
        p = Proc(*a, log_dir=gateway_logs, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


@pytest.fixture
def sock_path(tmp_path):
    return tmp_path / "gw.sock"


def start_first(procs, hello_bin, ports, origin, sock, tag="A", **kw) -> Proc:
    p = procs(hello_bin, ports, origin.addr, sock, tag, **kw)
    assert p.wait_line(r"listening on"), f"gateway did not start:\n{p.stderr()}"
    return p


def upgrade(procs, hello_bin, ports, origin, sock, tag, **kw) -> Proc:
    p = procs(hello_bin, ports, origin.addr, sock, tag, upgrade=True, **kw)
    assert p.wait_line(r"upgrade: took over from pid \d+"), f"upgrade to {tag} failed:\n{p.stderr()}"
    return p


# ---------------------------------------------------------------- load


class _LoadThreads:
    """Client threads that run until `finish`, counting successes and keeping
    the first failures (shared by the plain and the TLS load)."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.threads: list[threading.Thread] = []

    def _record_failure(self, what: str):
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append(what)

    def _start(self, clients):
        for fn, n in clients:
            t = threading.Thread(target=fn, args=(n,), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self, timeout: float = 30.0):
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a load client did not stop in time"


class Load(_LoadThreads):
    """Continuous traffic of several client kinds, each counting what went wrong."""

    def __init__(self, port: int):
        super().__init__(port)
        self.refused = 0
        self.tags: dict[str, int] = {}

    def _good(self, tag: str | None):
        with self.lock:
            self.ok += 1
            self.tags[tag or "?"] = self.tags.get(tag or "?", 0) + 1

    def _fail(self, kind: str, what: str):
        self._record_failure(f"{kind}: {what}")

    def _check(self, kind: str, r, want_body: bytes) -> None:
        if r.status != 200 or not r.complete or r.body != want_body:
            self._fail(kind, f"status {r.status}, complete={r.complete}, body {r.body[:80]!r} (want {want_body[:80]!r})")
        else:
            self._good(r.h("x-gateway-tag"))

    def _connect(self, kind: str) -> RawConn | None:
        try:
            return RawConn(self.port, timeout=15)
        except ConnectionRefusedError as e:
            with self.lock:
                self.refused += 1
            self._fail(kind, f"connection refused: {e}")
        except OSError as e:
            self._fail(kind, f"connect: {e!r}")
        return None

    def keep_alive(self, n: int):
        """Requests back to back on one connection; a new one only after `Connection: close`."""
        kind, conn, i = f"keep-alive#{n}", None, 0
        while not self.stop.is_set():
            if conn is None:
                conn = self._connect(kind)
                if conn is None:
                    time.sleep(0.05)
                    continue
            i += 1
            target = f"/ka{n}?i={i}"
            try:
                conn.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                r = conn.read_response()
            except (Closed, OSError, TimeoutError) as e:
                self._fail(kind, f"request {i} on a kept-alive connection: {e!r}")
                conn.close()
                conn = None
                continue
            self._check(kind, r, f"GET {target}\n".encode())
            if "close" in (r.h("connection") or "").lower():
                conn.close()
                conn = None
        if conn:
            conn.close()

    def one_shot(self, n: int):
        """A new connection per request; every third asks for a 200 kB body."""
        kind, i = f"new-connection#{n}", 0
        while not self.stop.is_set():
            i += 1
            big = i % 3 == 0
            target = "/bytes/200000" if big else f"/nc{n}?i={i}"
            conn = self._connect(kind)
            if conn is None:
                time.sleep(0.05)
                continue
            try:
                conn.send(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
                r = conn.read_response()
            except (Closed, OSError, TimeoutError) as e:
                self._fail(kind, f"{target}: {e!r}")
                continue
            finally:
                conn.close()
            if big:
                ok = r.status == 200 and r.complete and len(r.body) == 200000
                if ok:
                    self._good(r.h("x-gateway-tag"))
                else:
                    self._fail(kind, f"{target}: status {r.status}, {len(r.body)} bytes, complete={r.complete}")
            else:
                self._check(kind, r, f"GET {target}\n".encode())

    def slow_upload(self, n: int):
        """A 96 KiB body in 12 pieces over ~1.2 s; the origin answers its length and sha256."""
        kind = f"slow-upload#{n}"
        piece = bytes(range(256)) * 32
        body = piece * 12
        want = f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()
        while not self.stop.is_set():
            conn = self._connect(kind)
            if conn is None:
                time.sleep(0.05)
                continue
            try:
                conn.send(f"POST /sink HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode())
                for k in range(12):
                    if not conn.send(piece):
                        raise Closed(f"gateway closed after {k} pieces")
                    time.sleep(0.1)
                r = conn.read_response(timeout=20)
            except (Closed, OSError, TimeoutError) as e:
                self._fail(kind, repr(e))
                continue
            finally:
                conn.close()
            self._check(kind, r, want)

    def slow_response(self, n: int):
        """The origin waits 1 s before answering."""
        kind = f"slow-response#{n}"
        while not self.stop.is_set():
            conn = self._connect(kind)
            if conn is None:
                time.sleep(0.05)
                continue
            try:
                conn.send(b"GET /slow?delay=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                r = conn.read_response(timeout=20)
            except (Closed, OSError, TimeoutError) as e:
                self._fail(kind, repr(e))
                continue
            finally:
                conn.close()
            self._check(kind, r, b"GET /slow?delay=1\n")

    def start(self):
        self._start([(self.keep_alive, 1), (self.keep_alive, 2), (self.one_shot, 1), (self.one_shot, 2),
                     (self.slow_upload, 1), (self.slow_response, 1)])



# ---------------------------------------------------------------- tests


def test_upgrades_under_load_refuse_nothing_and_fail_nothing(procs, hello_bin, origin, sock_path):
    """20 upgrades alternating two builds (A: 2 workers, B: 3) under continuous load of
    keep-alive, new-connection, slow-upload and slow-response clients: no refused
    connection, no failed or truncated response, both builds answered, every old
    process exits 0 within the grace period, the fd count does not grow, nothing is left."""
    port = free_port()
    builds = [("A", 2), ("B", 3)]
    current = start_first(procs, hello_bin, [port], origin, sock_path, "A", workers=2)
    # Two quiet upgrades first, so the socket group has its final size (3, B's workers).
    for tag, workers in builds[1], builds[0]:
        old, current = current, upgrade(procs, hello_bin, [port], origin, sock_path, tag, workers=workers)
        assert old.proc.wait(GRACE + 5) == 0
    fds_before = settled_fd_count(current.pid)

    load = Load(port)
    load.start()
    olds: list[tuple[Proc, float]] = []
    try:
        time.sleep(1.0)
        for i in range(20):
            tag, workers = builds[(i + 1) % 2]
            old = current
            current = upgrade(procs, hello_bin, [port], origin, sock_path, tag, workers=workers)
            handed_off = time.monotonic()
            olds.append((old, handed_off))
            assert tag_of(port) == tag, f"upgrade {i + 1}: a new connection was not served by build {tag}"
            time.sleep(0.4)
        time.sleep(1.0)
    finally:
        load.finish()

    report = f"ok={load.ok} refused={load.refused} tags={load.tags}\nfailures:\n" + "\n".join(load.failures)
    print(report)
    assert load.refused == 0, report
    assert not load.failures, report
    assert load.ok > 100 and load.tags.get("A", 0) > 0 and load.tags.get("B", 0) > 0, report

    for old, handed_off in olds:
        remaining = handed_off + GRACE + 1.0 - time.monotonic()
        try:
            rc = old.proc.wait(max(remaining, 0.1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"old pid {old.pid} still running {GRACE}s after its handoff:\n{old.stderr()[-2000:]}")
        assert rc == 0, f"old pid {old.pid} exited {rc}:\n{old.stderr()[-2000:]}"
        assert "handed off to pid" in old.stderr()

    # Quiet again: two more upgrades back to a build A, whose fd count is compared.
    for tag, workers in builds[1], builds[0]:
        old, current = current, upgrade(procs, hello_bin, [port], origin, sock_path, tag, workers=workers)
        assert old.proc.wait(GRACE + 5) == 0
    fds_after = settled_fd_count(current.pid)
    assert fds_after <= fds_before, f"fd count grew across upgrades: {fds_before} -> {fds_after}"
    assert gateway_pids(hello_bin, sock_path) == [current.pid], "leftover gateway processes"
    assert tag_of(port) == "A"


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TLS_ARGS = ["--protocols", "h1,h2", "--tls-cert", str(FIXTURES / "edge.crt"), "--tls-key", str(FIXTURES / "edge.key")]


class TlsLoad(_LoadThreads):
    """TLS clients, each handshake on a new connection: HTTP/1.1 one request per
    connection, and HTTP/2 (ALPN) streams back to back until the server's GOAWAY.
    A stream the GOAWAY's last-stream-id covers must be answered; one above it was
    not processed (RFC 9113 §6.8) and is retried on a new connection."""

    def __init__(self, port: int):
        super().__init__(port)
        self.goaways = 0

    def _fail(self, what: str):
        self._record_failure(what)

    def _tls(self, alpn: str) -> ssl.SSLSocket:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols([alpn])
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        try:
            return ctx.wrap_socket(raw, server_hostname="edge")
        except BaseException:
            raw.close()
            raise

    def h1(self, n: int):
        i = 0
        while not self.stop.is_set():
            i += 1
            target = f"/tls{n}?i={i}"
            try:
                with self._tls("http/1.1") as t:
                    t.sendall(f"GET {target} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode())
                    got = b""
                    while data := t.recv(65536):
                        got += data
            except (OSError, ssl.SSLError) as e:
                self._fail(f"tls-h1 {target}: {e!r}")
                continue
            if got.startswith(b"HTTP/1.1 200") and got.endswith(f"GET {target}\n".encode()):
                with self.lock:
                    self.ok += 1
            else:
                self._fail(f"tls-h1 {target}: {got[-200:]!r}")

    def h2(self, n: int):
        while not self.stop.is_set():
            try:
                t = self._tls("h2")
            except (OSError, ssl.SSLError) as e:
                self._fail(f"tls-h2 #{n}: handshake: {e!r}")
                continue
            c = RawH2("", sock=t)
            sent: list[int] = []
            sid = 1
            while not self.stop.is_set() and c.seen.goaway is None and not c.seen.closed:
                c.headers(sid, path=f"/h2-{n}/{sid}")
                sent.append(sid)
                c.read_frames(time.monotonic() + 10, stop=lambda s, sid=sid: sid in s.ended or sid in s.resets or s.closed)
                sid += 2
            s = c.read_frames(time.monotonic() + 10, stop=lambda s: all(i in s.ended or i in s.resets for i in sent) or s.closed)
            c.close()
            if s.goaway is not None:
                with self.lock:
                    self.goaways += 1
            last = s.goaway_last_stream if s.goaway is not None else None
            for i in sent:
                if i in s.ended and s.status(i) == 200 and s.data.get(i) == f"GET /h2-{n}/{i}\n".encode():
                    with self.lock:
                        self.ok += 1
                elif last is not None and i > last and i not in s.headers:
                    pass  # not processed: a client retries it
                elif self.stop.is_set() and not s.closed and s.goaway is None:
                    pass  # the test ended while it was in flight
                else:
                    self._fail(f"tls-h2 #{n} stream {i}: status {s.status(i)}, reset {s.resets.get(i)}, "
                               f"goaway {s.goaway} last {last}, closed {s.closed}")

    def start(self):
        self._start([(self.h1, 1), (self.h1, 2), (self.h2, 1), (self.h2, 2)])



def test_upgrades_under_tls_and_h2_load_fail_nothing(procs, hello_bin, origin, sock_path):
    """Upgrades of a TLS listener (HTTP/1.1 and HTTP/2 by ALPN) under continuous load of
    new TLS connections: no handshake is cut (a connection the old process accepted just
    before its drain is served), no request fails, every HTTP/2 stream the GOAWAY covers
    is answered; every old process exits 0 and nothing is left."""
    port = free_port()
    current = start_first(procs, hello_bin, [port], origin, sock_path, "A", extra=TLS_ARGS)
    load = TlsLoad(port)
    load.start()
    olds = []
    try:
        time.sleep(0.5)
        for i in range(8):
            old = current
            current = upgrade(procs, hello_bin, [port], origin, sock_path, "AB"[(i + 1) % 2], extra=TLS_ARGS)
            olds.append(old)
            time.sleep(0.5)
        time.sleep(0.5)
    finally:
        load.finish()
    report = f"ok={load.ok} goaways={load.goaways}\nfailures:\n" + "\n".join(load.failures)
    print(report)
    assert not load.failures, report
    assert load.ok > 50 and load.goaways > 0, report
    for old in olds:
        assert old.proc.wait(GRACE + 5) == 0, old.stderr()[-2000:]
    assert gateway_pids(hello_bin, sock_path) == [current.pid], "leftover gateway processes"


def test_control_socket_survives_back_to_back_idle_upgrades(procs, hello_bin, origin, sock_path):
    """An idle old process ends its drain at once, while the new one renames its
    control socket over the path: the old one must not unlink the path then (it
    would remove the new socket, and the serving instance could never be upgraded
    again). Back-to-back upgrades of an idle gateway, each old process also sent
    SIGTERM after the handoff (as a service manager may): after each one, the path
    is there and the next upgrade takes over. The race is narrow: this fails only
    now and then without the fix (the deterministic check is the unit test
    handoff::server::tests)."""
    port = free_port()
    current = start_first(procs, hello_bin, [port], origin, sock_path, "A", workers=1)
    for i in range(60):
        old = current
        current = upgrade(procs, hello_bin, [port], origin, sock_path, "AB"[(i + 1) % 2], workers=1)
        os.kill(old.pid, signal.SIGTERM)
        assert old.proc.wait(GRACE + 5) == 0, old.stderr()[-2000:]
        assert sock_path.exists(), f"upgrade {i + 1}: the control socket is gone; the serving pid {current.pid} cannot be upgraded"
    assert tag_of(port) == "A"


def test_new_process_killed_mid_handoff_leaves_the_old_one_serving(procs, hello_bin, origin, sock_path):
    port = free_port()
    old = start_first(procs, hello_bin, [port], origin, sock_path, "A")
    stalled = procs(hello_bin, [port], origin.addr, sock_path, "B", upgrade=True,
                    env={"BLITZ_TEST_HANDOFF_STALL": "after-sockets"})
    assert stalled.wait_line(r"received \d+ sockets; stalling"), stalled.stderr()
    # The new process holds the sockets but does not accept: the old one serves.
    for i in range(20):
        assert tag_of(port) == "A"
    os.kill(stalled.pid, signal.SIGKILL)
    stalled.proc.wait(5)
    assert old.wait_line(r"did not complete, still serving"), old.stderr()
    for i in range(50):
        r = request(port, "GET", f"/after-kill{i}")
        assert r.status == 200 and r.h("x-gateway-tag") == "A", r
    assert old.proc.poll() is None
    # A later upgrade still works.
    new = upgrade(procs, hello_bin, [port], origin, sock_path, "C")
    assert serves_tag(port, "C")
    assert old.proc.wait(GRACE + 5) == 0
    assert new.proc.poll() is None


def test_second_upgrade_during_one_in_progress_is_refused(procs, hello_bin, origin, sock_path):
    port = free_port()
    old = start_first(procs, hello_bin, [port], origin, sock_path, "A")
    first = procs(hello_bin, [port], origin.addr, sock_path, "B", upgrade=True,
                  env={"BLITZ_TEST_HANDOFF_STALL": "after-sockets"})
    assert first.wait_line(r"stalling"), first.stderr()
    second = procs(hello_bin, [port], origin.addr, sock_path, "C", upgrade=True)
    assert second.proc.wait(15) == 1
    second._reader.join(2)
    assert "an upgrade is already in progress" in second.stderr(), second.stderr()
    assert tag_of(port) == "A"
    first.kill()
    assert old.wait_line(r"did not complete, still serving"), old.stderr()
    assert tag_of(port) == "A"


def test_upgrade_without_running_instance_is_a_clear_error(procs, hello_bin, origin, sock_path):
    p = procs(hello_bin, [free_port()], origin.addr, sock_path, "A", upgrade=True)
    assert p.proc.wait(15) == 1
    p._reader.join(2)
    assert "no running instance to upgrade" in p.stderr(), p.stderr()


def test_removed_listener_is_refused_and_the_old_keeps_serving(procs, hello_bin, origin, sock_path):
    p1, p2 = free_port(), free_port()
    old = start_first(procs, hello_bin, [p1, p2], origin, sock_path, "A")
    new = procs(hello_bin, [p1], origin.addr, sock_path, "B", upgrade=True)
    assert new.proc.wait(15) == 1
    new._reader.join(2)
    assert f"127.0.0.1:{p2}" in new.stderr() and "no listener of this spec binds" in new.stderr(), new.stderr()
    assert old.wait_line(r"refused to take over"), old.stderr()
    assert tag_of(p1) == "A" and tag_of(p2) == "A"
    # And a proper upgrade afterwards works.
    upgrade(procs, hello_bin, [p1, p2], origin, sock_path, "C")
    assert tag_of(p1) == "C" and tag_of(p2) == "C"
    assert old.proc.wait(GRACE + 5) == 0


def test_added_listener_is_bound_by_the_new_process(procs, hello_bin, origin, sock_path):
    p1, p3 = free_port(), free_port()
    old = start_first(procs, hello_bin, [p1], origin, sock_path, "A")
    new = upgrade(procs, hello_bin, [p1, p3], origin, sock_path, "B")
    assert tag_of(p1) == "B" and tag_of(p3) == "B"
    assert old.proc.wait(GRACE + 5) == 0
    assert new.proc.poll() is None


def test_other_gateway_name_or_version_is_refused(procs, hello_bin, origin, sock_path):
    """A client speaking another protocol version gets a clear refusal; the gateway serves on."""
    port = free_port()
    start_first(procs, hello_bin, [port], origin, sock_path, "A")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(sock_path))
    s.sendall(f"blitz-handoff/1 hello {os.getpid()} another-gateway\n".encode())
    answer = s.recv(4096).decode()
    s.close()
    assert answer.startswith("blitz-handoff/1 refused") and "another-gateway" in answer, answer
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(sock_path))
    s.sendall(f"blitz-handoff/9 hello {os.getpid()} hello\n".encode())
    answer = s.recv(4096).decode()
    s.close()
    assert "refused" in answer and "blitz-handoff/9" in answer, answer
    assert tag_of(port) == "A"


def test_sigterm_still_drains_and_removes_the_control_socket(procs, hello_bin, origin, sock_path):
    port = free_port()
    p = start_first(procs, hello_bin, [port], origin, sock_path, "A")
    assert sock_path.exists()
    os.kill(p.pid, signal.SIGTERM)
    assert p.proc.wait(GRACE + 5) == 0
    assert not sock_path.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def _activated(hello_bin, origin, listen_sock: socket.socket, listen_args: list[str], log_dir):
    """Starts hello_gateway the way systemd does: the socket as fd 3, LISTEN_FDS=1,
    LISTEN_PID set to the gateway's own pid (by a shell that then execs it)."""
    fd = listen_sock.fileno()

    def to_fd3():
        os.dup2(fd, 3)

    args = ["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', str(hello_bin)]
    for a in listen_args:
        args += ["--listen", a]
    args += ["--upstream", origin.addr, "--workers", "2"]
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env, pass_fds=(3,), preexec_fn=to_fd3, start_new_session=True)
    _register(p)
    return p


def test_systemd_socket_activation_serves_on_the_passed_socket(hello_bin, origin, gateway_logs):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: a fresh bind of this port by the gateway would fail
    ls.listen(128)
    port = ls.getsockname()[1]
    p = _activated(hello_bin, origin, ls, [f"127.0.0.1:{port}"], gateway_logs)
    try:
        ls.close()  # the gateway's copy is the only one left
        line = b""
        deadline = time.monotonic() + 20
        while b"listening on" not in line and time.monotonic() < deadline and p.poll() is None:
            line = p.stderr.readline()
        assert b"listening on" in line, f"gateway did not start (exit {p.poll()}): {p.stderr.read() if p.poll() is not None else ''}"
        for i in range(10):
            r = request(port, "GET", f"/activated{i}")
            assert r.status == 200 and r.body == f"GET /activated{i}\n".encode(), r
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
    finally:
        _kill_group(p)


def test_systemd_socket_for_no_listener_is_a_clear_error(hello_bin, origin, gateway_logs):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    port = ls.getsockname()[1]
    other = free_port()
    p = _activated(hello_bin, origin, ls, [f"127.0.0.1:{other}"], gateway_logs)
    try:
        ls.close()
        assert p.wait(15) == 1
        err = p.stderr.read().decode()
        assert "systemd (LISTEN_FDS)" in err and f"127.0.0.1:{port}" in err, err
    finally:
        _kill_group(p)


def test_after_took_over_every_new_connection_reaches_the_new_process(procs, hello_bin, origin, sock_path):
    """docs/operations.md: the old process stops accepting *before* it tells the new
    one `draining`, and the new one prints "took over" only after that. So a connection
    opened once "took over" is printed must reach the new build, even while the old
    one's workers are busy with clients. 12 upgrades; after each, connections opened
    by four client threads from the moment the test sees the line are checked.
    `BLITZ_TEST_DRAIN_DELAY_MS` makes every worker see the drain 300 ms late (as on a
    loaded machine, where CI once saw the old build answer right after an upgrade)."""
    port = free_port()
    late = {"BLITZ_TEST_DRAIN_DELAY_MS": "300"}
    current = start_first(procs, hello_bin, [port], origin, sock_path, "A", workers=2, env=late)
    load = Load(port)
    load.start()  # keeps the old process's workers busy while it drains
    seen_after: list[tuple[int, str, str]] = []
    lock = threading.Lock()
    took_over = {"at": None, "tag": None, "round": -1}
    stop = threading.Event()

    def prober():
        while not stop.is_set():
            mark = dict(took_over)
            try:
                tag = tag_of(port)
            except (OSError, AssertionError, Closed) as e:
                tag = f"error {e!r}"
            if mark["at"] is not None:
                with lock:
                    seen_after.append((mark["round"], mark["tag"], tag))

    probers = [threading.Thread(target=prober, daemon=True) for _ in range(4)]
    try:
        for t in probers:
            t.start()
        for i in range(12):
            tag = "BA"[i % 2]
            old, current = current, procs(hello_bin, [port], origin.addr, sock_path, tag, upgrade=True, env=late)
            assert current.wait_line(r"upgrade: took over from pid \d+"), current.stderr()
            took_over.update(at=time.monotonic(), tag=tag, round=i)
            time.sleep(0.3)
            took_over.update(at=None)
            assert old.proc.wait(GRACE + 5) == 0, old.stderr()[-2000:]
    finally:
        stop.set()
        for t in probers:
            t.join(15)
        load.finish()
    wrong = [s for s in seen_after if s[1] != s[2]]
    assert len(seen_after) > 50, seen_after
    assert not wrong, f"{len(wrong)} of {len(seen_after)} connections opened after 'took over' " \
                      f"were answered by another build: {wrong[:10]}"
    assert not load.failures and load.refused == 0, load.failures
