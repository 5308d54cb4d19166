"""A black-box QA pass of `--upgrade` (DESIGN.md, "The generated binary";
RELIABILITY.md, "Upgrades and faults"), aimed at what test_upgrade.py does
not cover: exchanges caught in every state at the moment of each handoff
(a body paused half-way on HTTP/1.1 and on h2c, a request head half sent,
a request body half sent, an idle keep-alive connection), two `--upgrade`s
started at once, an upgrade while the instance drains on SIGTERM, after it
was killed (a stale control socket), to a build that binds another
address, and through a control socket path of the longest length.

hello_gateway stands in for two builds (`--tag A` / `--tag B`: every
response says which one served).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hyperframe.frame import SettingsFrame, WindowUpdateFrame

from support.client import Closed, RawConn, request
from support.gateway import WatchedProcess, free_port, settled_fd_count
from support.handoff import gateway_pids, serves_tag, tag_of
from support.h2client import RawH2
from support.origin import pattern_sha256

GRACE = 10


class Gw(WatchedProcess):
    """One hello_gateway process; stderr kept; killed at teardown."""

    def __init__(self, binary, ports, origin, sock, tag, upgrade=False, workers=2, protocols="h1,h2c",
                 wait_for: str | None = "listening on"):
        args = [str(binary)]
        for p in ports:
            args += ["--listen", f"127.0.0.1:{p}"]
        args += ["--upstream", origin.addr, "--admin-socket", str(sock), "--tag", tag, "--workers", str(workers),
                 "--grace", f"{GRACE}s", "--protocols", protocols]
        if upgrade:
            args.append("--upgrade")
        self.tag = tag
        super().__init__(args, wait_for=wait_for)


@pytest.fixture
def gws():
    started: list[Gw] = []

    def start(*a, **kw) -> Gw:
        g = Gw(*a, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.kill()


def refused_soon(port: int, timeout: float = 10) -> bool:
    """True once connecting to `port` is refused (nothing listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- exchanges caught mid-way

BIG = 1_500_000  # /bytes/BIG?pause=P: the origin pauses P seconds after 1 MiB


class Caught:
    """Exchanges of the old process, each stopped in one state, for one handoff."""

    def __init__(self, port: int, origin):
        self.port = port
        # A response body paused after 1 MiB, 100 kB of it read.
        self.body = RawConn(port, timeout=30)
        self.body.send(f"GET /bytes/{BIG}?pause=1.5 HTTP/1.1\r\nHost: q\r\n\r\n".encode())
        while len(self.body.buf) < 100_000:
            assert self.body._fill(time.monotonic() + 10), "the big response did not start"
        # The same on h2c, with windows large enough for the whole body.
        window = 1 << 24
        self.h2 = RawH2(f"127.0.0.1:{port}", timeout=30, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window})
        self.h2.frame(WindowUpdateFrame(0, window_increment=window))
        self.h2.headers(1, path=f"/bytes/{BIG}?pause=1.5")
        self.h2.read_frames(time.monotonic() + 10, stop=lambda s: len(s.data.get(1, b"")) >= 100_000)
        assert len(self.h2.seen.data.get(1, b"")) >= 100_000, "the big h2c response did not start"
        # Half a request head.
        self.head = RawConn(port, timeout=30)
        self.head.send(b"GET /half-head HTTP/1.1\r\nHo")
        # Half a request body.
        self.upload = RawConn(port, timeout=30)
        self.upload.send(b"POST /sink HTTP/1.1\r\nHost: q\r\nContent-Length: 200000\r\n\r\n" + b"u" * 100_000)
        # An idle keep-alive connection (one answered request).
        self.idle = RawConn(port, timeout=30)
        self.idle.send(b"GET /before HTTP/1.1\r\nHost: q\r\n\r\n")
        assert self.idle.read_response().status == 200
        assert origin.wait_for(lambda: any(r.path == "/sink" for r in origin.requests), 10)

    def finish(self, old_tag: str) -> list[str]:
        """Completes each exchange after the handoff; returns what went wrong."""
        problems = []
        self.head.send(b"st: q\r\n\r\n")
        self.upload.send(b"u" * 100_000)
        try:
            r = self.head.read_response(timeout=20)
            if r.status != 200 or r.body != b"GET /half-head\n" or r.h("x-gateway-tag") != old_tag:
                problems.append(f"half-sent head: {r!r}")
        except (Closed, TimeoutError, OSError) as e:
            problems.append(f"half-sent head: {e!r}")
        try:
            r = self.upload.read_response(timeout=20)
            want = f"200000 {hashlib.sha256(b'u' * 200_000).hexdigest()}\n".encode()
            if r.status != 200 or r.body != want:
                problems.append(f"half-sent body: {r!r}")
        except (Closed, TimeoutError, OSError) as e:
            problems.append(f"half-sent body: {e!r}")
        try:
            r = self.body.read_response(timeout=20)
            if not (r.status == 200 and r.complete and len(r.body) == BIG
                    and hashlib.sha256(r.body).hexdigest() == pattern_sha256(BIG)):
                problems.append(f"paused body: {r.status}, {len(r.body)} bytes, complete={r.complete}")
        except (Closed, TimeoutError, OSError) as e:
            problems.append(f"paused body: {e!r}")
        s = self.h2.read_frames(time.monotonic() + 20, stop=lambda s: 1 in s.ended or 1 in s.resets or s.closed)
        got = s.data.get(1, b"")
        if not (1 in s.ended and s.status(1) == 200 and len(got) == BIG
                and hashlib.sha256(got).hexdigest() == pattern_sha256(BIG)):
            problems.append(f"paused h2c body: {len(got)} bytes, ended={1 in s.ended}, resets={s.resets}, goaway={s.goaway}")
        if not self.idle.wait_closed(10):
            problems.append("the idle keep-alive connection was not closed by the old process")
        return problems

    def close(self):
        for c in (self.body, self.h2, self.head, self.upload, self.idle):
            c.close()


@pytest.mark.timeout(120)
def test_exchanges_caught_mid_way_by_five_upgrades_all_complete(gws, hello_bin, origin, tmp_path):
    """At each of five handoffs the old process has: a response body paused
    after 1 MiB (HTTP/1.1 and h2c), half a request head, half a request body,
    an idle keep-alive connection. The bodies arrive whole (length, sha256),
    the head and the upload are answered by the old build, the idle connection
    is closed; every old process exits 0; the fd count of the last process is
    the first's; no process is left but the last."""
    port, sock = free_port(), tmp_path / "gw.sock"
    tags = ["A", "B"]
    current = gws(hello_bin, [port], origin, sock, "A")
    first_fds = settled_fd_count(current.pid)
    problems = []
    for i in range(5):
        caught = Caught(port, origin)
        try:
            old = current
            current = gws(hello_bin, [port], origin, sock, tags[(i + 1) % 2], upgrade=True,
                          wait_for=r"took over from pid")
            assert serves_tag(port, current.tag)
            problems += [f"upgrade {i + 1}: {p}" for p in caught.finish(old.tag)]
        finally:
            caught.close()
        assert old.exit_code(GRACE + 5) == 0, old.text()[-3000:]
        assert f"handed off to pid {current.pid}" in old.text()
    assert not problems, "\n".join(problems)
    assert settled_fd_count(current.pid) <= first_fds, "descriptors grew across upgrades"
    assert gateway_pids(hello_bin, sock) == [current.pid]


# ---------------------------------------------------------------- concurrent upgrades


@pytest.mark.timeout(120)
def test_two_upgrades_started_at_once_leave_one_instance_serving(gws, hello_bin, origin, tmp_path):
    """Two `--upgrade`s started together, three times, under light load: each
    either takes over (and later hands off and exits 0) or exits 1 saying why;
    every request is answered; in the end exactly one instance serves, and it
    can still be upgraded."""
    port, sock = free_port(), tmp_path / "gw.sock"
    current = gws(hello_bin, [port], origin, sock, "A", workers=1)
    stop, failures, answered = threading.Event(), [], [0]

    def load():
        while not stop.is_set():
            try:
                r = request(port, "GET", f"/load{answered[0]}", timeout=20)
                if r.status != 200:
                    failures.append(repr(r))
                answered[0] += 1
            except (OSError, Closed, TimeoutError) as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    everyone = [current]
    try:
        for round_ in range(3):
            pair = [gws(hello_bin, [port], origin, sock, f"{round_}{k}", upgrade=True, workers=1, wait_for=None)
                    for k in range(2)]
            everyone += pair
            # Each one ends up serving or exits 1.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(p.proc.poll() is not None or "took over from pid" in p.text() for p in pair):
                    break
                time.sleep(0.05)
            winners = [p for p in pair if "took over from pid" in p.text()]
            assert winners, "neither upgrade took over:\n" + "\n---\n".join(p.text() for p in pair)
            for p in pair:
                if p not in winners:
                    assert p.exit_code(15) == 1, p.text()
                    assert re.search(r"refused|no running instance", p.text()), p.text()
            # Both may win, one after the other (the second upgrading the first).
            current = max(winners, key=lambda p: p.proc.pid if p.proc.poll() is None else -1)
            assert current.proc.poll() is None, current.text()
            assert serves_tag(port, current.tag)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:10]
    assert answered[0] > 20
    for p in everyone:
        if p is not current:
            rc = p.exit_code(GRACE + 5)
            if "took over from pid" in p.text() or p is everyone[0]:
                assert rc == 0 and "handed off to pid" in p.text(), p.text()[-2000:]
    assert gateway_pids(hello_bin, sock) == [current.pid]
    last = gws(hello_bin, [port], origin, sock, "Z", upgrade=True, workers=1, wait_for=r"took over from pid")
    assert serves_tag(port, "Z")
    assert current.exit_code(GRACE + 5) == 0
    assert gateway_pids(hello_bin, sock) == [last.pid]


# ---------------------------------------------------------------- upgrades that must not happen


def test_upgrade_during_a_sigterm_drain_is_refused_and_the_drain_finishes(gws, hello_bin, origin, tmp_path):
    port, sock = free_port(), tmp_path / "gw.sock"
    old = gws(hello_bin, [port], origin, sock, "A")
    slow = RawConn(port, timeout=30)
    try:
        slow.send(b"GET /slow?delay=3 HTTP/1.1\r\nHost: q\r\n\r\n")
        assert origin.wait_for(lambda: any(r.path == "/slow" for r in origin.requests), 10)
        os.kill(old.pid, signal.SIGTERM)
        old.wait_line("draining")
        new = gws(hello_bin, [port], origin, sock, "B", upgrade=True, wait_for=None)
        assert new.exit_code(20) == 1, new.text()
        assert re.search(r"shutting down|no running instance", new.text()), new.text()
        r = slow.read_response(timeout=20)
        assert r.status == 200 and r.body == b"GET /slow?delay=3\n" and r.h("x-gateway-tag") == "A", r
        assert old.exit_code(GRACE + 5) == 0
    finally:
        slow.close()
    assert not sock.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert gateway_pids(hello_bin, sock) == []


def test_upgrade_after_the_instance_was_killed_fails_clearly(gws, hello_bin, origin, tmp_path):
    """SIGKILL leaves the control socket file behind: `--upgrade` says there is
    no running instance (exit 1, nothing bound), and a fresh start replaces the
    stale file."""
    port, sock = free_port(), tmp_path / "gw.sock"
    old = gws(hello_bin, [port], origin, sock, "A")
    old.proc.kill()
    old.proc.wait(10)
    # The kernel tears a killed process's io_uring down after its exit: its
    # listening sockets may accept connections a little longer.
    assert refused_soon(port), "the killed instance's sockets outlived it"
    assert sock.is_socket(), "the stale socket file is what this test is about"
    new = gws(hello_bin, [port], origin, sock, "B", upgrade=True, wait_for=None)
    assert new.exit_code(20) == 1
    assert "no running instance to upgrade" in new.text() and str(sock) in new.text(), new.text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    fresh = gws(hello_bin, [port], origin, sock, "C")
    assert tag_of(port) == "C"
    upgraded = gws(hello_bin, [port], origin, sock, "D", upgrade=True, wait_for=r"took over from pid")
    assert serves_tag(port, "D")
    assert fresh.exit_code(GRACE + 5) == 0
    assert gateway_pids(hello_bin, sock) == [upgraded.pid]


def test_upgrade_to_a_build_on_another_address_is_refused_and_binds_nothing(gws, hello_bin, origin, tmp_path):
    """The running instance listens on P1; a build listening on P2 instead
    cannot take P1 over: it exits 1 naming P1, the old one serves on, and P2
    was never left listening."""
    p1, p2, sock = free_port(), free_port(), tmp_path / "gw.sock"
    old = gws(hello_bin, [p1], origin, sock, "A")
    new = gws(hello_bin, [p2], origin, sock, "B", upgrade=True, wait_for=None)
    assert new.exit_code(20) == 1
    assert f"127.0.0.1:{p1}" in new.text(), new.text()
    assert old.wait_line(r"did not complete, still serving")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p2), timeout=2)
    for _ in range(5):
        assert tag_of(p1) == "A"
    # And both addresses: P1 taken over, P2 bound.
    both = gws(hello_bin, [p1, p2], origin, sock, "C", upgrade=True, wait_for=r"took over from pid")
    assert serves_tag(p1, "C") and serves_tag(p2, "C")
    assert old.exit_code(GRACE + 5) == 0
    assert gateway_pids(hello_bin, sock) == [both.pid]


def test_a_control_socket_path_of_the_longest_length_is_upgradable(gws, hello_bin, origin):
    """A Unix socket path takes up to 107 bytes. The new process binds its own
    control socket beside the old one under a longer, temporary name before
    renaming it over: that name must not make an instance whose path fits
    impossible to upgrade."""
    base = Path(tempfile.mkdtemp(prefix="blitz-qa-"))
    try:
        folder = base / ("d" * (107 - len(str(base)) - len("//gw.sock")))
        folder.mkdir()
        sock = folder / "gw.sock"
        assert len(str(sock).encode()) == 107
        port = free_port()
        current = gws(hello_bin, [port], origin, sock, "A", workers=1)
        assert sock.is_socket()
        for tag in ("B", "C"):
            old, current = current, gws(hello_bin, [port], origin, sock, tag, upgrade=True, workers=1,
                                        wait_for=r"took over from pid|upgrade aborted")
            assert "took over from pid" in current.text(), current.text()
            assert serves_tag(port, tag)
            assert old.exit_code(GRACE + 5) == 0
            assert sock.is_socket()
        assert sorted(os.listdir(folder)) == ["gw.sock"], "a temporary socket was left behind"
        assert gateway_pids(hello_bin, sock) == [current.pid]
        os.kill(current.pid, signal.SIGTERM)
        assert current.exit_code(GRACE + 5) == 0
        assert not sock.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
