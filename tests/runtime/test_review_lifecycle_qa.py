"""A code-review pass over zero-downtime upgrades (socket handoff), drain
and process lifecycle (DESIGN.md, "The generated binary"; RELIABILITY.md,
"Upgrades and faults"; docs/operations.md, "What an upgrade does"), each
suspicion from reading runtime/src/handoff/ and runtime/src/rt/ proven
against the real binary. What test_upgrade.py, test_upgrade_qa.py,
test_lifecycle.py and the drain tests of the HTTP/2 files already cover is
not repeated here.

Bugs, each beside a passing control that differs in the one thing the bug
needs (each test failed before its fix):

- (fixed) A stop signal (SIGTERM/SIGINT) sent to a `GATEWAY --upgrade` process before
  it took over was held (the signals are blocked from the first line of
  `rt::serve`, and only read once the process serves), so the process takes
  over, tells the old one to drain, and then drains itself: nobody accepts
  any more and the port is refused.
- (fixed) An aborted upgrade to a build with more workers reset connections: the
  new process joins the listener's `SO_REUSEPORT` group with fresh sockets
  (`listen::assemble`) before it has checked the rest of its listeners;
  connections the kernel queued on those sockets meanwhile are reset when
  the abort closes them, although the old instance "serves on".
- (fixed, minor) An `--upgrade` killed after it bound its next control socket and
  before `ready` leaves `PATH.PID.new` behind.
- (fixed) When the grace period ends with a close-delimited response in flight (an
  HTTP/1.0 client), the connection ends with a FIN, so the client takes the
  cut body for the whole one; the gateway resets such a connection when the
  upstream cuts it, and over TLS the missing close_notify tells the cut.

Pinned (no existing test covers them): connections queued in the old
process's backlog at the moment of the handoff (its workers frozen with
ptrace, its control thread running) served by the new build; an h2c connection of the old process
through a handoff (streams opened before the drain's final GOAWAY served by
the old build, one opened after it never forwarded and served on a new
connection by the new build, a preface half sent at the handoff completed
and served); what HTTP/2 and TLS clients see when the grace period cuts
their responses (no END_STREAM; no close_notify); a handoff that an old
process paused for a moment (SIGSTOP) delays but completes; SIGTERM to the
old process after it passed its sockets and before the new one is ready
(the old drains, the new one serves what queued meanwhile and owns the
control socket).

hello_gateway stands in for two builds (`--tag A` / `--tag B`: every
response says which one served). Only 127.0.0.1; every loop is bounded in
time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hyperframe.frame import PingFrame, SettingsFrame, WindowUpdateFrame
from support.client import RawConn, request
from support.gateway import WatchedProcess, fd_count, free_port, settled_fd_count
from support.h2client import PREFACE, RawH2
from support.handoff import gateway_pids, serves_tag, tag_of
from support.pki import Pki
from support.waits import wait_until

GRACE = 5


def gateway_args(binary, ports, origin, sock, tag, workers=1, grace=GRACE, upgrade=False, extra=()):
    args = [str(binary)]
    for p in ports:
        args += ["--listen", f"127.0.0.1:{p}"]
    args += ["--upstream", origin.addr, "--admin-socket", str(sock), "--tag", tag,
             "--workers", str(workers), "--grace", f"{grace}s", *extra]
    if upgrade:
        args.append("--upgrade")
    return args


@pytest.fixture
def procs():
    """Starts WatchedProcesses; at teardown each is resumed (a test may have
    stopped it) and killed."""
    started: list[WatchedProcess] = []

    def start(argv, wait_for: str | None = "listening on") -> WatchedProcess:
        p = WatchedProcess(argv, wait_for=None)
        started.append(p)
        if wait_for:
            p.wait_line(wait_for)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
            except OSError:
                pass
        p.kill()


@pytest.fixture
def sock_path(tmp_path) -> Path:
    return tmp_path / "gw.sock"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("lifecycle-qa-pki"))
    p.leaf("edge", "edge.test")
    return p


def answered(port: int) -> bool:
    """Whether a new connection to `port` gets a 200 (by any build)."""
    try:
        return request(port, "GET", "/healthz").status == 200
    except OSError:
        return False


# ----------------------------------------------- connections queued at the handoff


class FrozenThreads:
    """Stops some threads of a process (not the others) with ptrace
    (PTRACE_SEIZE + PTRACE_INTERRUPT stop one thread, no group stop), and
    lets them go on at exit. Skips the test where ptrace is not allowed."""

    SEIZE, INTERRUPT, DETACH = 0x4206, 0x4207, 17
    WALL = 0x40000000

    def __init__(self, pid: int, name_prefix: str):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")
                     if Path(f"/proc/{pid}/task/{t}/comm").read_text().startswith(name_prefix)]
        assert self.tids, f"no thread named {name_prefix}*"
        self.seized: list[int] = []

    def _ptrace(self, request_: int, tid: int) -> None:
        if self.libc.ptrace(request_, tid, None, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"ptrace({request_:#x}, {tid}): {os.strerror(err)}")

    def __enter__(self):
        for tid in self.tids:
            try:
                self._ptrace(self.SEIZE, tid)
            except PermissionError as e:
                self.__exit__()
                pytest.skip(f"ptrace not allowed here: {e}")
            self.seized.append(tid)
            self._ptrace(self.INTERRUPT, tid)
            os.waitpid(tid, self.WALL)
        return self

    def __exit__(self, *exc):
        for tid in self.seized:
            try:
                self._ptrace(self.DETACH, tid)
            except OSError:
                # Not in a ptrace stop any more: the process was killed. A
                # traced thread's exit is reported to its tracer, which must
                # reap it before the process can be.
                self._reap(tid)
        self.seized = []

    def _reap(self, tid: int, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(tid, os.WNOHANG | self.WALL)[0] == tid:
                    return
            except ChildProcessError:
                return
            time.sleep(0.05)


def test_connections_queued_in_the_backlog_at_the_handoff_are_served_by_the_new_build(
        procs, hello_bin, origin, sock_path):
    """A's worker threads are frozen (its control thread is not): 20 HTTP/1.1
    and 10 h2c clients connect and send their request, and wait in the
    kernel's accept queues of A's sockets, which nobody accepts from. B
    takes over those very sockets (docs/operations.md: "a connection
    waiting in a backlog is taken by whichever process asks next"): every
    client is answered by B, none is reset. A, let go, drains and exits 0."""
    port = free_port()
    extra = ("--protocols", "h1,h2c")
    a = procs(gateway_args(hello_bin, [port], origin, sock_path, "A", workers=2, extra=extra))
    assert tag_of(port) == "A"
    h1: list[RawConn] = []
    h2: list[RawH2] = []
    try:
        with FrozenThreads(a.pid, "blitz-worker"):
            for i in range(20):
                c = RawConn(port, timeout=10)
                h1.append(c)
                c.send(f"GET /queued/{i} HTTP/1.1\r\nHost: q\r\n\r\n".encode())
            for i in range(10):
                c = RawH2(f"127.0.0.1:{port}")
                h2.append(c)
                c.headers(1, path=f"/queued-h2/{i}")
            time.sleep(0.3)
            assert not origin.requests, "a frozen worker accepted a connection"
            procs(gateway_args(hello_bin, [port], origin, sock_path, "B", workers=2, upgrade=True, extra=extra))
            answers = []
            for c in h1:
                try:
                    r = c.read_response(timeout=10)
                    answers.append((r.status, r.h("x-gateway-tag")))
                except (OSError, ValueError) as e:
                    answers.append((type(e).__name__, None))
            for c in h2:
                s = c.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended or s.closed)
                answers.append((s.status(1), dict(s.headers.get(1, [])).get("x-gateway-tag")))
        assert answers == [(200, "B")] * 30, answers
        assert a.exit_code(GRACE + 10) == 0, a.text()
    finally:
        for c in [*h1, *h2]:
            c.close()


# ----------------------------------------------- an h2c connection through a handoff


class PingAckingH2(RawH2):
    """A raw HTTP/2 connection that acknowledges PINGs, as real clients do:
    the drain's final GOAWAY (naming the last stream processed) follows the
    ack of its PING (RFC 9113 §6.8)."""

    def _note(self, f):
        super()._note(f)
        if isinstance(f, PingFrame) and "ACK" not in f.flags:
            self.frame(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]))


def test_an_h2c_connection_of_the_old_process_through_a_handoff(procs, hello_bin, origin, sock_path):
    """On A's `h1,h2c` listener: a connection with stream 1 in flight, and
    one that sent 10 bytes of the connection preface. B takes over. Stream
    3, opened after A's first GOAWAY (2^31-1), is served by A, which names it
    in its final GOAWAY; stream 5, opened after that, is never forwarded
    (the client may retry it, RFC 9113 §6.8) and a retry on a new
    connection is served by B. The half preface, completed after the
    handoff with a request, is served by A (docs/operations.md: an opening
    under way finishes). Nothing is reset; A exits 0."""
    port = free_port()
    extra = ("--protocols", "h1,h2c")
    a = procs(gateway_args(hello_bin, [port], origin, sock_path, "A", workers=2, extra=extra))
    c = PingAckingH2(f"127.0.0.1:{port}")
    half = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        c.headers(1, path="/slow?delay=1&s=1")
        half.sendall(PREFACE[:10])
        assert origin.wait_for(lambda: any(r.target == "/slow?delay=1&s=1" for r in origin.requests), 10)
        procs(gateway_args(hello_bin, [port], origin, sock_path, "B", workers=2, upgrade=True, extra=extra))
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: s.goaway is not None)
        assert s.goaway == 0 and s.goaway_last_stream == 2**31 - 1, s
        c.headers(3, path="/slow?delay=0.3&s=3")
        s = c.read_frames(time.monotonic() + 5, stop=lambda s: s.goaway_last_stream != 2**31 - 1)
        assert s.goaway == 0 and s.goaway_last_stream == 3, s
        c.headers(5, path="/slow?delay=0.1&s=5")
        half.sendall(PREFACE[10:] + SettingsFrame(0).serialize())
        late = RawH2("", sock=half, preface=False)
        late.headers(1, path="/half-preface")
        s = c.read_frames(time.monotonic() + 10)
        h = late.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended or s.closed)
    finally:
        c.close()
        half.close()
    for sid in (1, 3):
        assert sid in s.ended and s.status(sid) == 200 and dict(s.headers[sid])["x-gateway-tag"] == "A", (sid, s)
    assert 5 not in s.headers and not s.resets and s.closed, s
    assert 1 in h.ended and h.status(1) == 200 and dict(h.headers[1])["x-gateway-tag"] == "A", h
    assert not any("s=5" in r.target for r in origin.requests), "a stream past the final GOAWAY was forwarded"
    with RawH2(f"127.0.0.1:{port}") as retry:
        retry.headers(1, path="/slow?delay=0.1&s=5")
        r = retry.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended)
    assert r.status(1) == 200 and dict(r.headers[1])["x-gateway-tag"] == "B", r
    assert a.exit_code(GRACE + 10) == 0, a.text()


# ----------------------------------------------- a stop signal during the handoff


def start_upgrade_while_the_old_one_is_paused(procs, hello_bin, origin, sock_path, port, then=None):
    """Starts A, pauses it (SIGSTOP: its control thread cannot answer yet),
    starts `--upgrade` B, which connects and waits for the sockets; runs
    `then(b)` while B waits, and resumes A. A pause of a fraction of a
    second stands for any slow step before the takeover (a busy old process,
    a new one resolving its upstreams)."""
    a = procs(gateway_args(hello_bin, [port], origin, sock_path, "A", workers=2))
    assert tag_of(port) == "A"
    os.kill(a.pid, signal.SIGSTOP)
    try:
        b = procs(gateway_args(hello_bin, [port], origin, sock_path, "B", workers=2, upgrade=True), wait_for=None)
        # B's workers start, then it connects to the control socket (the
        # listening Unix socket queues the connection while A is stopped).
        b.wait_line(r"worker 1 driver=")
        time.sleep(0.3)
        if then is not None:
            then(b)
        time.sleep(0.2)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    return a, b


def test_a_handoff_delayed_by_a_paused_old_process_completes(procs, hello_bin, origin, sock_path):
    """Control of the next test: the same delay without a signal. Once A
    resumes, it passes its sockets, B serves and A drains and exits 0."""
    port = free_port()
    a, b = start_upgrade_while_the_old_one_is_paused(procs, hello_bin, origin, sock_path, port)
    b.wait_line("listening on", timeout=15)
    assert serves_tag(port, "B", timeout=10), b.text()
    assert a.exit_code(GRACE + 10) == 0, a.text()
    assert answered(port)
    # The control socket is B's now: owner-only, and no temporary path left.
    assert [p.name for p in sock_path.parent.iterdir()] == [sock_path.name]
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600


@contextlib.contextmanager
def new_process_held_before_ready(procs, hello_bin, origin, sock_path, port):
    """A serves `port`; `--upgrade` B receives A's sockets and has bound its
    next control socket (`PATH.PID.new`), but its workers are frozen before
    they accept, so B never says `ready` while this lasts. Yields (A, B)."""
    a = procs(gateway_args(hello_bin, [port], origin, sock_path, "A", workers=2))
    assert tag_of(port) == "A"
    os.kill(a.pid, signal.SIGSTOP)  # holds the handoff until B's workers are frozen
    try:
        b = procs(gateway_args(hello_bin, [port], origin, sock_path, "B", workers=2, upgrade=True), wait_for=None)
        b.wait_line(r"worker 1 driver=")
        time.sleep(0.3)  # B's workers wait for their sockets
        with FrozenThreads(b.pid, "blitz-worker"):
            os.kill(a.pid, signal.SIGCONT)
            a.wait_line("passing 2 sockets")
            # B took them and bound its next control socket (then waits for its workers): a sleep
            # here only guessed it, and a loaded machine ran past the guess.
            next_control = sock_path.parent / f"{sock_path.name}.{b.pid}.new"
            assert wait_until(next_control.exists, 10), f"B never bound {next_control.name}:\n{b.text()}"
            yield a, b
    finally:
        if a.proc.poll() is None:
            os.kill(a.pid, signal.SIGCONT)


def test_sigterm_to_the_old_process_mid_handoff_leaves_the_new_one_serving(procs, hello_bin, origin, sock_path):
    """docs/operations.md, "Failures": SIGTERM during an upgrade — the old
    instance drains; the new one serves once ready. A passes its sockets to
    B, whose workers are frozen before they accept (so B is not ready yet);
    A gets SIGTERM, drains and exits 0. Connections made while nobody
    accepts wait in the backlog of the sockets B holds, and B answers them
    once its workers run; B owns the control socket (a next upgrade, C,
    takes over from it) and no temporary path is left."""
    port = free_port()
    waiting: list[RawConn] = []
    try:
        with new_process_held_before_ready(procs, hello_bin, origin, sock_path, port) as (a, b):
            os.kill(a.pid, signal.SIGTERM)
            assert a.exit_code(GRACE + 10) == 0, a.text()
            for i in range(5):
                c = RawConn(port, timeout=10)
                waiting.append(c)
                c.send(f"GET /meanwhile/{i} HTTP/1.1\r\nHost: q\r\n\r\n".encode())
        b.wait_line("listening on", timeout=15)
        answers = [(r.status, r.h("x-gateway-tag")) for r in (c.read_response(timeout=10) for c in waiting)]
        assert answers == [(200, "B")] * 5, answers
    finally:
        for c in waiting:
            c.close()
    assert [p.name for p in sock_path.parent.iterdir()] == [sock_path.name]
    procs(gateway_args(hello_bin, [port], origin, sock_path, "C", workers=2, upgrade=True))
    assert serves_tag(port, "C", timeout=10)
    assert b.exit_code(GRACE + 10) == 0, b.text()


def test_a_new_process_killed_before_ready_leaves_no_file_behind(procs, hello_bin, origin, sock_path):
    """B is killed (SIGKILL, an OOM kill) while it waits for its workers,
    after `Takeover::bind_next` bound `PATH.PID.new`. A serves on, as
    documented, and the next upgrade works; but the temporary socket file
    stayed in the control socket's folder (nobody listens on it); now A,
    which learns B's pid in the hello and sees the session end, removes it. test_upgrade.py kills the new process before that file
    exists (`BLITZ_TEST_HANDOFF_STALL=after-sockets`)."""
    port = free_port()
    with new_process_held_before_ready(procs, hello_bin, origin, sock_path, port) as (a, b):
        assert f"{sock_path.name}.{b.pid}.new" in {p.name for p in sock_path.parent.iterdir()}
        os.kill(b.pid, signal.SIGKILL)  # reaped once its frozen threads are let go
    assert b.exit_code(10) == -signal.SIGKILL
    a.wait_line("did not complete, still serving", timeout=15)
    assert tag_of(port) == "A"
    procs(gateway_args(hello_bin, [port], origin, sock_path, "C", workers=2, upgrade=True))
    assert serves_tag(port, "C", timeout=10)
    left = sorted(p.name for p in sock_path.parent.iterdir())
    assert left == [sock_path.name], f"left in the control socket's folder: {left}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_an_upgrading_process_leaves_the_gateway_serving(procs, hello_bin, origin, sock_path, sig):
    """An operator stops a `--upgrade` that seems stuck (Ctrl-C in the shell
    that runs it, or SIGTERM) before it took over. Whatever the new process
    then does (abort, and the old instance serves on: docs/operations.md's
    promise for an upgrade that does not complete; or serve), one of the two
    must still serve. Both drain instead: `process::block_termination` runs
    first in `rt::serve`, the signal thread that reads the pending signal
    only starts after `Takeover::complete` told the old process to drain."""
    port = free_port()
    a, b = start_upgrade_while_the_old_one_is_paused(
        procs, hello_bin, origin, sock_path, port, then=lambda b: os.kill(b.pid, sig))
    # Each either exits (it drained) or serves on; wait for that to settle.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and a.proc.poll() is None and b.proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1)
    served = [answered(port) for _ in range(3)]
    assert all(served), (f"after {signal.Signals(sig).name} to the upgrading process: new connections answered "
                         f"{served}; old exit {a.proc.poll()}, new exit {b.proc.poll()}\n"
                         f"old:\n{a.text()}\nnew:\n{b.text()}")


# ----------------------------------------------- an aborted upgrade with more workers


class NewConnectionLoad:
    """Clients that each open a connection, send one request and read the
    answer to its end, in a loop, until stopped (bounded by `limit` s).
    Counts answers and failures by kind."""

    def __init__(self, port: int, clients: int = 3, limit: float = 60):
        self.port, self.limit = port, limit
        self.ok = 0
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(10)

    def failed(self) -> int:
        with self.lock:
            return sum(self.failures.values())

    def _one(self) -> str | None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n")
                got = b""
                while chunk := c.recv(4096):
                    got += chunk
        except OSError as e:
            return type(e).__name__
        return None if got.startswith(b"HTTP/1.1 200") and got.endswith(b"ok\n") else f"answer {got[:30]!r}"

    def _run(self):
        end = time.monotonic() + self.limit
        while not self.stopping.is_set() and time.monotonic() < end:
            failure = self._one()
            with self.lock:
                if failure is None:
                    self.ok += 1
                else:
                    self.failures[failure] = self.failures.get(failure, 0) + 1


def aborted_upgrades(procs, hello_bin, origin, sock_path, workers: int, seconds: float, stop_at_first_failure: bool):
    """A (1 worker) serves `port` under new-connection load; `--upgrade`
    builds that add 40 listeners and one on an address another process
    holds (so each aborts, docs/operations.md: "the upgrade is aborted and
    the old instance serves on") run one after the other for `seconds`.
    The 40 listeners only make the moment between the new process binding
    its sockets and its abort long enough to be met by the load. Returns
    (A, its port, load, upgrades run, A's fds before, A's threads before)."""
    port = free_port()
    a = procs(gateway_args(hello_bin, [port], origin, sock_path, "A", workers=1))
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    added = [free_port() for _ in range(40)] + [holder.getsockname()[1]]
    argv = gateway_args(hello_bin, [port, *added], origin, sock_path, "B", workers=workers, upgrade=True)
    assert tag_of(port) == "A"
    fds_before = settled_fd_count(a.pid)
    threads_before = len(os.listdir(f"/proc/{a.pid}/task"))
    upgrades = 0
    try:
        with NewConnectionLoad(port) as load:
            time.sleep(0.3)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                r = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=30)
                if "already in progress" in r.stderr:
                    # The old process has not yet seen the last aborted
                    # process's control connection close (a loaded CI
                    # machine): it says so, and to try again (documented).
                    time.sleep(0.05)
                    continue
                upgrades += 1
                assert r.returncode == 1 and "in use" in r.stderr, r.stderr[-2000:]
                if stop_at_first_failure and load.failed():
                    break
            time.sleep(0.3)
    finally:
        holder.close()
    return a, port, load, upgrades, fds_before, threads_before


@pytest.mark.timeout(90)
def test_aborted_upgrades_with_as_many_workers_refuse_nothing_and_leak_nothing(procs, hello_bin, origin, sock_path):
    """Control of the next test: the same aborted upgrades under the same
    load, by a build with as many workers as the old one (it binds no
    socket on the served address). No connection fails; the old instance
    serves on with the descriptors and threads it had (each refused
    session's thread and control connection are gone); no process is left."""
    a, port, load, upgrades, fds_before, threads_before = aborted_upgrades(
        procs, hello_bin, origin, sock_path, workers=1, seconds=4, stop_at_first_failure=False)
    print(f"{upgrades} aborted upgrades, {load.ok} answers, failures {load.failures}")
    assert load.ok > 100 and not load.failures, load.failures
    assert tag_of(port) == "A"
    assert settled_fd_count(a.pid) <= fds_before, f"A's fds {fds_before} -> {fd_count(a.pid)}"
    deadline = time.monotonic() + 5
    while len(os.listdir(f"/proc/{a.pid}/task")) > threads_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(os.listdir(f"/proc/{a.pid}/task")) <= threads_before
    assert gateway_pids(hello_bin, sock_path) == [a.pid]
    assert "did not complete, still serving" in a.text()


@pytest.mark.timeout(90)
def test_an_aborted_upgrade_with_more_workers_refuses_nothing(procs, hello_bin, origin, sock_path):
    """The new build has 32 workers where the old one had 1: `assemble`
    binds 31 fresh sockets into the served address's `SO_REUSEPORT` group
    (listening at once, so the kernel spreads new connections over them),
    then meets the held address and returns the error; the sockets are
    closed and every connection queued on them is reset. RELIABILITY.md:
    an upgrade refuses no connection; docs/operations.md: a failed
    `--upgrade` means the running instance keeps serving. (Checking every
    listener before joining a group, or binding the fresh sockets last,
    narrows this to a crash of the new process.)"""
    _, _, load, upgrades, _, _ = aborted_upgrades(
        procs, hello_bin, origin, sock_path, workers=32, seconds=25, stop_at_first_failure=True)
    print(f"{upgrades} aborted upgrades, {load.ok} answers, failures {load.failures}")
    assert load.ok > 100
    assert not load.failures, f"{load.failures} during {upgrades} aborted upgrades"


# ----------------------------------------------- responses cut by the end of the grace period


CUT_AT = 1 << 20  # the origin's /bytes/N?pause=P pauses after 1 MiB
WHOLE = 1_500_000


def read_to_the_end(conn, until: float) -> tuple[bytes, str]:
    """Reads `conn` to its end; returns the bytes and how it ended: "reset",
    "fin", "close_notify" (TLS, then the FIN), "no close_notify" (TLS) or
    "timeout"."""
    got = b""
    conn.settimeout(0.5)
    while time.monotonic() < until:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got, "reset"
        except ssl.SSLEOFError:
            return got, "no close_notify"
        if not chunk:
            return got, "close_notify" if isinstance(conn, ssl.SSLSocket) else "fin"
        got += chunk
    return got, "timeout"


def close_delimited_body_cut_by_the_grace_period(start, client) -> tuple[bytes, str]:
    """An HTTP/1.0 client (so the chunked upstream answer reaches it
    delimited by the close) reads 1 MiB of a 1.5 MiB body whose origin then
    pauses 10 s; SIGTERM with --grace 1s cuts it. Returns the body and how
    the connection ended."""
    g = start()
    conn = client(g.port)
    try:
        conn.sendall(f"GET /bytes/{WHOLE}?chunked=1&pause=10 HTTP/1.0\r\nHost: q\r\n\r\n".encode())
        got = b""
        conn.settimeout(10)
        while len(got) < CUT_AT and (chunk := conn.recv(65536)):
            got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length" not in head.lower(), head
        g.signal(signal.SIGTERM)
        rest, ending = read_to_the_end(conn, time.monotonic() + 15)
        assert g.proc.wait(15) == 0
        return body + rest, ending
    finally:
        conn.close()


def plain(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_a_close_delimited_body_cut_by_the_grace_period_ends_in_a_reset(start_gateway):
    """Over cleartext only the way the connection ends tells a cut
    close-delimited body from a complete one; the gateway resets such a
    connection when the upstream cuts the body (test_reliability_qa.py),
    but the end of the grace period drops the worker's tasks and their
    sockets close with a FIN (`rt::run_worker` returns, the runtime is
    dropped)."""
    body, ending = close_delimited_body_cut_by_the_grace_period(
        lambda: start_gateway(grace=1, workers=1), plain)
    assert len(body) < WHOLE, "the origin's pause did not hold the body"
    assert ending == "reset", f"{len(body)} of {WHOLE} bytes, then a {ending}: the client sees a complete body"


def test_a_close_delimited_body_cut_by_the_grace_period_over_tls_has_no_close_notify(start_gateway, pki):
    """Control of the test above, over TLS: the same cut ends without
    close_notify, so the client knows the body is not complete (RFC 8446
    §6.1), as for a body the upstream cut."""
    def tls_client(port):
        ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
        return ctx.wrap_socket(plain(port), server_hostname="edge.test", suppress_ragged_eofs=False)

    body, ending = close_delimited_body_cut_by_the_grace_period(
        lambda: start_gateway(grace=1, workers=1, tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key")),
        tls_client)
    assert len(body) < WHOLE
    assert ending == "no close_notify", f"{len(body)} of {WHOLE} bytes, then {ending}"


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_http2_streams_cut_by_the_grace_period_are_visibly_incomplete(start_gateway, pki, tls):
    """HTTP/2 streams the grace period cuts (a body paused half-way, a head
    not yet answered): neither ends with END_STREAM, the connection closes
    (over TLS without close_notify after the cut), after the drain's
    GOAWAY(NO_ERROR). What the client sees is a connection lost under
    streams it knows are incomplete, never a short body marked complete.
    (There is no RST_STREAM or second GOAWAY with an error code: RFC 9113
    §6.8 allows, does not require, one for "a condition that requires
    immediately terminating the connection".)"""
    opts = {"tls_cert": pki.path("edge.crt"), "tls_key": pki.path("edge.key"), "protocols": "h1,h2"} if tls \
        else {"protocols": "h1,h2c"}
    g = start_gateway(grace=1, workers=1, **opts)
    sock = None
    if tls:
        ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(plain(g.port), server_hostname="edge.test", suppress_ragged_eofs=False)
        assert sock.selected_alpn_protocol() == "h2"
    window = 1 << 24
    c = RawH2(g.addr, sock=sock, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window})
    try:
        c.frame(WindowUpdateFrame(0, window_increment=window))
        c.headers(1, path=f"/bytes/{WHOLE}?pause=10")
        c.headers(3, path="/slow?delay=10")
        c.read_frames(time.monotonic() + 10, stop=lambda s: len(s.data.get(1, b"")) >= CUT_AT)
        assert len(c.seen.data.get(1, b"")) >= CUT_AT, c.seen
        g.signal(signal.SIGTERM)
        ending = "?"
        if tls:
            # RawH2 treats any end as a close; read the TLS end ourselves.
            c.read_frames(time.monotonic() + 3, stop=lambda s: s.goaway is not None)
            rest, ending = read_to_the_end(sock, time.monotonic() + 10)
            c.buf += rest
            s = c.read_frames(time.monotonic() + 2)
        else:
            s = c.read_frames(time.monotonic() + 15)
        assert g.proc.wait(15) == 0
    finally:
        c.close()
    assert s.closed and s.goaway == 0, s
    assert 1 not in s.ended and 3 not in s.ended, f"a cut stream was marked complete: {s.ended}"
    assert len(s.data.get(1, b"")) < WHOLE and s.status(3) is None
    if tls:
        assert ending == "no close_notify", ending
