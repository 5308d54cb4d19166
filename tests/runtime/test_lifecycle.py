"""Process lifecycle of hello_gateway: io driver selection and logging, workers,
graceful drain on SIGTERM/SIGINT, command-line errors."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.client import RawConn, request
from support.gateway import accept_queue_length
from support.h2client import RawH2
from support.waits import wait_until


def _drivers(gw) -> list[str]:
    return re.findall(r"driver=(io_uring|poll)", gw.stderr())


def test_default_driver_is_logged(gateway, origin):
    assert _drivers(gateway), f"no 'driver=io_uring' or 'driver=poll' line on stderr:\n{gateway.stderr()}"


def test_poll_driver_fallback_serves(start_gateway, origin):
    g = start_gateway(driver="poll")
    assert "driver=poll" in g.stderr(), f"--driver poll did not log driver=poll:\n{g.stderr()}"
    assert "driver=io_uring" not in g.stderr()
    assert request(g.port, "GET", "/healthz").body == b"ok\n"
    r = request(g.port, "POST", "/echo", body=b"through poll")
    assert r.status == 200 and r.body == b"through poll", r
    with RawConn(g.port) as c:
        c.send(b"".join(f"GET /pp{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(10)))
        assert [c.read_response().body for _ in range(10)] == [f"GET /pp{i}\n".encode() for i in range(10)]


def test_io_uring_driver_or_clear_error(hello_bin, origin):
    """--driver io-uring either runs on io_uring, or (io_uring unavailable, e.g. seccomp)
    fails at start with a message - it never silently runs another driver."""
    from support.gateway import Gateway, GatewayError

    g = Gateway(hello_bin, origin.addr, driver="io-uring")
    try:
        g.start(attempts=1, timeout=10)
    except GatewayError as e:
        assert "io_uring" in str(e) or "io-uring" in str(e), str(e)
        return
    try:
        assert "driver=io_uring" in g.stderr(), g.stderr()
        assert request(g.port, "GET", "/healthz").status == 200
    finally:
        g.kill()


@pytest.mark.parametrize("workers", ["1", "2", "auto"])
def test_workers_serve(start_gateway, origin, workers):
    g = start_gateway(workers=workers)
    for i in range(10):
        assert request(g.port, "GET", f"/w{i}").status == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_drain_completes_in_flight_request(start_gateway, origin, sig):
    """A slow in-flight request completes after the signal; the process exits 0."""
    g = start_gateway(grace=15)
    result = {}

    def slow_client():
        try:
            result["r"] = request(g.port, "GET", "/slow?delay=2", timeout=20)
        except Exception as e:  # reported below
            result["e"] = e

    t = threading.Thread(target=slow_client)
    t.start()
    assert origin.wait_for(lambda: any(q.path == "/slow" for q in origin.requests), 10), "slow request never arrived"
    g.signal(sig)
    t.join(25)
    assert "e" not in result, f"in-flight request failed during drain: {result.get('e')!r}"
    r = result.get("r")
    assert r is not None and r.status == 200 and r.body == b"GET /slow?delay=2\n", r
    try:
        rc = g.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gateway did not exit after draining:\n{g.tail()}")
    g.stopped_on_purpose = True
    assert rc == 0, f"exit code {rc} after {sig.name}:\n{g.tail()}"


def test_drain_streams_in_flight_body_to_the_end(start_gateway, origin):
    g = start_gateway(grace=15)
    with RawConn(g.port, timeout=20) as c:
        c.send(b"GET /trickle?n=10&interval=0.2 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert origin.wait_for(lambda: any(q.path == "/trickle" for q in origin.requests), 10)
        g.signal(signal.SIGTERM)
        r = c.read_response(timeout=20)
    assert r.status == 200 and r.body == b"x" * 10 and r.complete, r
    rc = g.proc.wait(timeout=20)
    g.stopped_on_purpose = True
    assert rc == 0


def test_drain_closes_idle_keepalive_connections_and_exits(start_gateway, origin):
    """Idle keep-alive connections do not hold the drain until the grace period ends:
    they are closed, and the process exits 0."""
    g = start_gateway(grace=30)
    conns = []
    for i in range(5):
        c = RawConn(g.port, timeout=20)
        c.send(f"GET /idle{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert c.read_response().status == 200
        conns.append(c)
    try:
        g.signal(signal.SIGTERM)
        for c in conns:
            assert c.wait_closed(20), "an idle keep-alive connection was not closed during the drain"
        try:
            rc = g.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("gateway still running 20 s after SIGTERM with only idle connections")
        g.stopped_on_purpose = True
        assert rc == 0
    finally:
        for c in conns:
            c.close()


def test_stops_accepting_after_sigterm(start_gateway, origin):
    g = start_gateway(grace=15)
    t = threading.Thread(target=lambda: request(g.port, "GET", "/slow?delay=2", timeout=20))
    t.start()
    assert origin.wait_for(lambda: any(q.path == "/slow" for q in origin.requests), 10)
    g.signal(signal.SIGTERM)
    time.sleep(0.5)
    # while draining: a new connection is refused, or if accepted, answered (never hung)
    try:
        r = request(g.port, "GET", "/during-drain", timeout=10)
        assert r.status in (200, 503), r
    except (ConnectionRefusedError, ConnectionResetError):
        pass
    except Exception as e:
        from support.client import Closed

        assert isinstance(e, Closed), f"new connection during drain neither refused nor answered: {e!r}"
    t.join(25)
    rc = g.proc.wait(timeout=20)
    g.stopped_on_purpose = True
    assert rc == 0


@pytest.mark.parametrize("control", [False, True], ids=["no-control-socket", "control-socket"])
def test_new_connections_are_refused_once_the_drain_starts(start_gateway, origin, tmp_path, control):
    """After SIGTERM nobody takes the listening sockets over: they are closed
    at once, so a new connection is refused (a load balancer fails over right
    away), not queued in the backlog until the exit resets it. (nginx closes
    its listening sockets on a graceful shutdown too.) With or without a
    control socket for upgrades."""
    extra = {"admin_socket": str(tmp_path / "admin.sock")} if control else {}
    g = start_gateway(grace=15, **extra)
    t = threading.Thread(target=lambda: request(g.port, "GET", "/slow?delay=3", timeout=20))
    t.start()
    assert origin.wait_for(lambda: any(q.path == "/slow" for q in origin.requests), 10)
    g.signal(signal.SIGTERM)
    # The 2 s count from when the gateway took the signal (a loaded machine may be slow to run
    # its signal thread; that is not the backlog this test is about).
    assert g.line_with("draining", timeout=10), g.tail()
    deadline = time.monotonic() + 2
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            socket.create_connection(("127.0.0.1", g.port), timeout=2).close()
            time.sleep(0.05)
        except (ConnectionRefusedError, ConnectionResetError):
            # Reset: the connection reached the backlog just as the
            # listening socket closed; the client learns at once either way.
            refused = True
    assert refused, "a new connection was still accepted into the backlog 2 s into the drain"
    t.join(25)
    assert g.proc.wait(timeout=20) == 0
    g.stopped_on_purpose = True


def test_bad_command_line_exits_nonzero(hello_bin):
    p = subprocess.run([str(hello_bin), "--no-such-flag"], capture_output=True, timeout=10)
    assert p.returncode != 0
    p = subprocess.run(
        [str(hello_bin), "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--header-timeout", "banana"],
        capture_output=True,
        timeout=10,
    )
    assert p.returncode != 0, p.stderr


def test_grace_period_bounds_the_drain(start_gateway, origin):
    """An in-flight request longer than --grace does not keep the process alive:
    it exits once the grace period is over (the slow client's connection is cut)."""
    g = start_gateway(grace=1)
    c = RawConn(g.port, timeout=30)
    try:
        c.send(b"GET /slow?delay=25 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert origin.wait_for(lambda: any(q.path == "/slow" for q in origin.requests), 10)
        g.signal(signal.SIGTERM)
        try:
            rc = g.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("gateway still running 15 s after SIGTERM with --grace 1s")
        assert rc == 0, f"exit code {rc} after the grace period:\n{g.tail()}"
        assert c.wait_closed(5), "the slow client's connection was left open"
    finally:
        c.close()


def test_listen_address_in_use_fails(hello_bin, origin):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        p = subprocess.run(
            [str(hello_bin), "--listen", f"127.0.0.1:{port}", "--upstream", origin.addr],
            capture_output=True,
            timeout=10,
        )
        assert p.returncode != 0, "started on a port another socket is listening on"
        assert p.stderr.strip(), "no error message"
    finally:
        s.close()


def test_a_second_gateway_on_a_serving_port_is_refused(start_gateway, hello_bin, origin):
    """SO_REUSEPORT would let a second fresh start join the first gateway's socket group and
    split the traffic between two configurations; it must fail like nginx does, pointing
    at --upgrade, while the first keeps serving alone."""
    first = start_gateway(workers=2)
    p = subprocess.run(
        [str(hello_bin), "--listen", f"127.0.0.1:{first.port}", "--upstream", origin.addr],
        capture_output=True, text=True, timeout=10,
    )
    assert p.returncode != 0, "a second gateway joined the first one's port"
    assert "in use" in p.stderr and "--upgrade" in p.stderr, p.stderr
    assert first.alive()


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _tls_client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
def test_tls_connection_accepted_before_the_drain_is_served(start_gateway, origin, alpn):
    """A TLS client whose connection was accepted but whose handshake had not
    started when the drain began (during an upgrade: the old process took it
    off the queue) is served, like a plain connection waiting for its first
    request: its handshake completes and its request is answered."""
    g = start_gateway(grace=10, workers=1, protocols="h1,h2",
                      tls_cert=FIXTURES / "edge.crt", tls_key=FIXTURES / "edge.key")
    raw = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    try:
        # accepted by the worker (off the kernel's queue, which the drain resets); no ClientHello yet
        assert wait_until(lambda: accept_queue_length(g.port) == 0, 10), "the worker never accepted the connection"
        g.signal(signal.SIGTERM)
        time.sleep(0.5)
        ctx = _tls_client()
        ctx.set_alpn_protocols([alpn])
        try:
            tls = ctx.wrap_socket(raw, server_hostname="edge")
        except (ssl.SSLError, OSError) as e:
            pytest.fail(f"TLS handshake of a connection accepted before the drain was cut: {e!r}")
        if alpn == "h2":
            assert tls.selected_alpn_protocol() == "h2"
            c = RawH2("", sock=tls)
            c.headers(1, path="/accepted-before-drain", scheme="https")
            seen = c.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended or 1 in s.resets)
            assert seen.status(1) == 200 and seen.data.get(1) == b"GET /accepted-before-drain\n", seen
            assert 1 in seen.ended, seen
        else:
            tls.sendall(b"GET /accepted-before-drain HTTP/1.1\r\nHost: edge\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got or not got.endswith(b"GET /accepted-before-drain\n"):
                data = tls.recv(65536)
                if not data:
                    break
                got += data
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"GET /accepted-before-drain\n"), got
        tls.close()
    finally:
        raw.close()
    rc = g.proc.wait(timeout=20)
    g.stopped_on_purpose = True
    assert rc == 0


def test_h2c_connection_without_preface_gets_the_last_call(start_gateway, origin):
    """On an h2c-only listener a drain treats a connection that has sent no
    preface like an idle HTTP/1.1 one (closed after the last call), not like a
    slow client allowed its whole header-timeout; one whose preface is under
    way finishes it and is served."""
    from support.h2client import PREFACE
    from hyperframe.frame import SettingsFrame

    g = start_gateway(grace=60, header_timeout=60, workers=1, protocols="h2c")
    silent = socket.create_connection(("127.0.0.1", g.port), timeout=30)
    started = socket.create_connection(("127.0.0.1", g.port), timeout=30)
    try:
        started.sendall(PREFACE[:10])
        # both accepted by the worker (off the kernel's queue, which the drain resets)
        assert wait_until(lambda: accept_queue_length(g.port) == 0, 10), "the worker never accepted the connections"
        g.signal(signal.SIGTERM)
        time.sleep(1.5)  # past the last call
        c = RawH2("", preface=False, sock=started)
        c.send(PREFACE[10:])
        c.frame(SettingsFrame(0))
        c.headers(1, path="/preface-under-way")
        seen = c.read_frames(time.monotonic() + 20, stop=lambda s: 1 in s.ended or 1 in s.resets)
        assert seen.status(1) == 200 and seen.data.get(1) == b"GET /preface-under-way\n", seen
        silent.settimeout(20)
        try:
            while silent.recv(65536):  # the server's SETTINGS, then EOF
                pass
        except TimeoutError:
            pytest.fail("a connection that sent nothing held the drain (header-timeout, not the last call)")
        rc = g.proc.wait(timeout=20)
        g.stopped_on_purpose = True
        assert rc == 0
    finally:
        silent.close()
        started.close()
