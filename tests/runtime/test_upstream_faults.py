"""RELIABILITY.md, "Upgrades and faults": an upstream that dies mid-response,
resets, stalls or answers garbage gives the client a 502/504 (or a cut
connection if the response had started), never a hang; the broken upstream
connection is not reused."""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.client import RawConn, request
from support.gateway import free_port
from support.origin import Origin, UnreadingOrigin

MiB = 1 << 20


@pytest.fixture
def fault_gw(start_gateway):
    return start_gateway(connect_timeout=1, response_timeout=2)


def _follow_up(gw, origin, faulty_conns: set) -> None:
    """After a fault, the next requests work, and none rides on the broken connection."""
    for i in range(3):
        r = request(gw.port, "GET", f"/after-fault{i}")
        assert r.status == 200 and r.body == f"GET /after-fault{i}\n".encode(), r
    after = [q for q in origin.requests if q.target.startswith("/after-fault")]
    assert len(after) == 3
    reused = [q for q in after if q.conn_id in faulty_conns]
    assert not reused, f"a broken upstream connection was reused: {reused}"


@pytest.mark.parametrize(
    "path,statuses",
    [
        ("/garbage", (502,)),
        ("/reset", (502,)),
        ("/close", (502,)),
        ("/stall", (504,)),
    ],
)
def test_upstream_fault_before_response(fault_gw, origin, path, statuses):
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        r = c.read_response(timeout=20)
        assert r.status in statuses, f"{path}: {r!r}"
        # the client connection is still usable afterwards (or closed cleanly)
        if c.send(b"GET /same-conn HTTP/1.1\r\nHost: a.test\r\n\r\n"):
            try:
                r2 = c.read_response(timeout=10)
                assert r2.status == 200, r2
            except Exception:
                assert c.eof, "client connection neither answered nor closed after a 5xx"
    faulty = {q.conn_id for q in origin.requests if q.path == path}
    assert faulty, "the request never reached the origin"
    for cid in faulty:
        conn = origin.conn(cid)
        assert origin.wait_for(lambda: conn.closed or conn.peer_closed, 5), (
            f"{path}: the gateway kept the broken upstream connection {cid} open"
        )
    _follow_up(fault_gw, origin, faulty)


@pytest.mark.parametrize("path", ["/cut?n=10", "/cut?n=10&mode=reset", "/cut-chunked"])
def test_upstream_dies_mid_response(fault_gw, origin, path):
    """The response had started: the client gets a 502 (if nothing was sent yet) or a
    cut connection - never a complete-looking response, never a hang."""
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        try:
            r = c.read_response(timeout=20)
        except Exception as e:
            assert c.eof, f"{path}: no response and no close: {e!r}"
            r = None
        if r is not None and r.status != 502:
            assert r.status == 200, r
            assert not r.complete, f"{path}: a truncated upstream body was delivered as complete: {r!r}"
            assert c.eof, f"{path}: connection not closed after a truncated body"
    faulty = {q.conn_id for q in origin.requests if q.path.startswith("/cut")}
    _follow_up(fault_gw, origin, faulty)


def test_upstream_connect_refused_502(start_gateway, origin):
    dead = free_port()  # nothing listens there
    g = start_gateway(upstream=f"127.0.0.1:{dead}", connect_timeout=1)
    r = request(g.port, "GET", "/refused", timeout=20)
    assert r.status == 502, r
    assert request(g.port, "GET", "/healthz").status == 200


def test_upstream_slow_response_within_timeout_served(fault_gw, origin):
    r = request(fault_gw.port, "GET", "/trickle?n=5&interval=0.2", timeout=20)
    assert r.status == 200 and r.body == b"xxxxx", r


def test_stale_pooled_upstream_connection(fault_gw, origin):
    """The origin closes a keep-alive connection right after answering (without
    saying so): the next request must not fail because of the stale pooled connection."""

    def answer_then_close(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        conn.close()
        return False

    origin.handler = answer_then_close
    for i in range(5):
        r = request(fault_gw.port, "GET", f"/stale{i}")
        assert r.status == 200 and r.body == b"ok\n", (i, r)
        time.sleep(0.2)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_pooled_connection_the_upstream_closed_is_not_used_for_a_body(fault_gw, origin, framing):
    """The origin closes each keep-alive connection after answering (without
    saying so), as servers do with idle connections. A request with a body
    cannot be replayed once sent, so the gateway must not send it on a pooled
    connection the upstream has already closed: every POST is answered 200,
    none gets a 502 (nginx and HAProxy drop idle connections closed by the
    server from their pools as the close arrives)."""

    def answer_then_close(req, conn):
        conn.send(f"HTTP/1.1 200 OK\r\ncontent-length: {req.body_len}\r\n\r\n".encode() + bytes(req.body))
        conn.close()
        return False

    origin.handler = answer_then_close
    if framing == "chunked":
        frame, body = "Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n"
    else:
        frame, body = "Content-Length: 5", b"hello"
    for i in range(6):
        with RawConn(fault_gw.port, timeout=20) as c:
            c.send(f"POST /stale-post{i} HTTP/1.1\r\nHost: a\r\n{frame}\r\n\r\n".encode() + body)
            r = c.read_response(timeout=20)
        assert r.status == 200 and r.body == b"hello", (i, r)
        # the origin's FIN reaches the gateway long before the next request
        served = origin.conn(origin.requests[-1].conn_id)
        assert origin.wait_for(lambda: served.closed, 5)
        time.sleep(0.1)


def test_pooled_connection_with_an_unsolicited_answer_is_not_reused(fault_gw, origin):
    """Some servers send a 408 on an idle keep-alive connection before closing
    it. That answer belongs to no request: the next request must not take it
    for its response (it would get a 408 it never caused); the connection is
    dropped from the pool instead."""

    def answer_then_408(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        conn.sleep(0.2)
        conn.send(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        conn.wait_peer_close(5)
        return False

    origin.handler = answer_then_408
    for i in range(4):
        r = request(fault_gw.port, "GET", f"/idle-408-{i}")
        assert r.status == 200 and r.body == b"ok\n", (i, r)
        time.sleep(0.4)


def test_upstream_that_stops_reading_the_body_is_504_not_a_hang(start_gateway):
    """The upstream takes the head, then stops reading a large upload and never
    answers: the gateway cannot push the body on. Within the upstream's response
    timeout of no progress, the client gets a 504 (nginx: proxy_send_timeout;
    HAProxy: timeout server), instead of an upload stuck forever."""
    up = UnreadingOrigin()
    try:
        g = start_gateway(upstream=up.addr, response_timeout=2, body_timeout=30, max_body_bytes=512 * MiB)
        size = 256 * MiB
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n".encode())
        s.setblocking(False)
        block = b"u" * 65536
        answer, closed = b"", False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not closed and b"\r\n\r\n" not in answer:
            try:
                s.send(block)
            except BlockingIOError:
                time.sleep(0.05)
            except OSError:
                closed = True
            try:
                d = s.recv(4096)
                answer += d
                closed = closed or not d
            except BlockingIOError:
                pass
            except OSError:
                closed = True
        s.close()
        assert answer or closed, "the upload hung for 30 s after the upstream stopped reading it"
        assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
    finally:
        up.close()


def test_many_faults_do_not_leak_upstream_connections(fault_gw, origin):
    before = len(origin.open_conns())
    for i in range(20):
        r = request(fault_gw.port, "GET", "/garbage" if i % 2 else "/reset", timeout=20)
        assert r.status == 502, r
    assert origin.wait_for(lambda: len(origin.open_conns()) <= before + 5, 10), (
        f"{len(origin.open_conns()) - before} upstream connections still open after 20 faults"
    )


BAD_RESPONSES = {
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
    "hex-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
    "non-numeric-status": b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 0\r\n\r\n",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    "unknown-transfer-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    "http09-like": b"hello world\r\n",
    "huge-head": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"h" * 1000) for i in range(200)) + b"\r\n",
}


@pytest.mark.parametrize("name", list(BAD_RESPONSES))
def test_malformed_upstream_response_502(fault_gw, origin, name):
    """An upstream response the gateway cannot frame unambiguously is a 502, and its
    connection is not reused; a client never sees the bytes as a response."""

    def bad(req, conn):
        conn.send(BAD_RESPONSES[name])
        conn.wait_peer_close(10)
        return False

    origin.handler = bad
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(b"GET /bad-response HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response(timeout=20)
    assert r.status == 502, f"{name}: {r!r}"
    faulty = {q.conn_id for q in origin.requests}
    for cid in faulty:
        conn = origin.conn(cid)
        assert origin.wait_for(lambda: conn.closed or conn.peer_closed, 5), f"{name}: broken upstream conn kept"
    origin.handler = None
    _follow_up(fault_gw, origin, faulty)


def test_upstream_response_with_cl_and_te(fault_gw, origin):
    """Response smuggling: CL and TE together. Either a 502, or the body decoded as
    chunked (TE wins, RFC 9112 6.3) and re-framed for the client - never 5 raw bytes."""

    def both(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        conn.wait_peer_close(10)
        return False

    origin.handler = both
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(b"GET /cl-te-response HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response(timeout=20)
        assert r.status in (200, 502), r
        if r.status == 200:
            assert r.body == b"hello", r
            assert not (r.h("content-length") and r.h("transfer-encoding")), r


def test_bad_chunk_in_upstream_response_never_completes(fault_gw, origin):
    def bad_chunk(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n")
        conn.wait_peer_close(10)
        return False

    origin.handler = bad_chunk
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(b"GET /bad-chunk-response HTTP/1.1\r\nHost: a.test\r\n\r\n")
        try:
            r = c.read_response(timeout=20)
        except Exception as e:
            assert c.eof, f"no response and no close: {e!r}"
            return
        if r.status != 502:
            assert not r.complete and c.eof, f"a response with broken chunk framing was completed: {r!r}"


BAD_FIRST_CHUNK = {
    "non-hex-size": b"zz\r\nhello\r\n0\r\n\r\n",
    "bare-lf-after-size": b"5\nhello\r\n0\r\n\r\n",
    "size-overflow": b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "no-crlf-after-data": b"5\r\nhelloXX0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_FIRST_CHUNK))
def test_bad_first_chunk_with_the_head_is_502(fault_gw, origin, name):
    """The upstream's head and a broken first chunk arrive together: nothing has
    reached the client yet, so it gets a 502 (not an empty reply), and the
    broken upstream connection is not reused."""

    def bad_body(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + BAD_FIRST_CHUNK[name])
        conn.wait_peer_close(10)
        return False

    origin.handler = bad_body
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(b"GET /bad-first-chunk HTTP/1.1\r\nHost: a.test\r\n\r\n")
        try:
            r = c.read_response(timeout=20)
        except Exception as e:
            pytest.fail(f"{name}: no 502, {e!r} (closed={c.eof})")
    assert r.status == 502, f"{name}: {r!r}"
    faulty = {q.conn_id for q in origin.requests}
    origin.handler = None
    _follow_up(fault_gw, origin, faulty)


def test_close_delimited_upstream_response(fault_gw, origin):
    """An HTTP/1.1 response without CL/TE ends at the close: the client gets it whole,
    re-framed (chunked) or close-delimited."""

    def close_delimited(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\n")
        conn.close()
        return False

    origin.handler = close_delimited
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(b"GET /close-delimited HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response(timeout=20)
    assert r.status == 200 and r.body == b"until the end\n" and r.complete, r


def test_upstream_stalls_mid_body_client_not_hung(fault_gw, origin):
    """The origin sends the head and part of the body, then goes silent with the
    connection open: the client's response is cut (or 502/504) - it does not hang."""

    def stall_mid(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"s" * 10)
        conn.wait_peer_close(40)
        return False

    origin.handler = stall_mid
    with RawConn(fault_gw.port, timeout=40) as c:
        c.send(b"GET /stall-mid HTTP/1.1\r\nHost: a.test\r\n\r\n")
        try:
            r = c.read_response(timeout=40)
        except TimeoutError as e:
            pytest.fail(f"client still waiting 40 s after the upstream stalled mid-body: {e}")
        except Exception as e:
            assert c.eof, repr(e)
            return
        if r.status not in (502, 504):
            assert not r.complete and c.eof, r


def test_upstream_informational_response_then_final(fault_gw, origin):
    """103 Early Hints before the final response: the client gets the 103
    (RFC 9110 §15.2: a proxy forwards 1xx), then the final 200 with its body,
    and the connection stays in sync."""

    def early_hints(req, conn):
        conn.send(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nfinal\n"
        )
        return True

    origin.handler = early_hints
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(b"GET /early HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 103 and r.header("link") == ["</s.css>; rel=preload"], r
        r = c.read_response()
        assert r.status == 200 and r.body == b"final\n", r
        origin.handler = None
        c.send(b"GET /after-early HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == b"GET /after-early\n", r2


@pytest.mark.parametrize("status", [413, 403])
def test_upstream_early_response_during_upload_relayed(fault_gw, origin, status):
    """The origin answers (and closes) before reading a large upload, as servers do to
    refuse a body: the client gets that answer, not a 502 and not a hang."""
    size = 4 * MiB
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(f"POST /upload?early_status={status} HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"u" * 65536
        for _ in range(size // len(block)):
            if not c.send(block):
                break
        try:
            r = c.read_response(timeout=20)
        except Exception as e:
            pytest.fail(f"no answer after the origin's early {status}: {e!r} (eof={c.eof})")
    assert r.status == status and r.body == b"early\n", r


def test_upstream_body_on_head_response_does_not_desync_pool(fault_gw, origin):
    """The origin wrongly sends a body with its answer to HEAD: those bytes are not
    passed on, and they do not poison the next response on that upstream connection."""

    def head_with_body(req, conn):
        if req.method == "HEAD":
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
        else:
            conn.send(f"HTTP/1.1 200 OK\r\ncontent-length: {len(req.target) + 1}\r\n\r\n{req.target}\n".encode())
        return True

    origin.handler = head_with_body
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
        r1 = c.read_response(method="HEAD")
        assert r1.status == 200, r1
        for i in range(3):
            c.send(f"GET /next{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == 200 and r.body == f"/next{i}\n".encode(), f"request {i} after the bad HEAD: {r!r}"


def test_unsolicited_101_from_upstream_is_502(fault_gw, origin):
    """101 Switching Protocols to a request that asked for no upgrade is not a valid
    answer: 502, and the connection is not turned into a tunnel."""

    def switch(req, conn):
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw bytes")
        conn.wait_peer_close(10)
        return False

    origin.handler = switch
    with RawConn(fault_gw.port, timeout=20) as c:
        c.send(b"GET /no-upgrade HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response(timeout=20)
    assert r.status == 502, r


def _sockets_to(port: int, state: str) -> int:
    out = subprocess.run(
        ["ss", "-Htn", "state", state, f"( dport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_pool_surplus_is_closed_without_time_wait(start_gateway):
    """More exchanges at once than --pool-max-idle: the surplus connections
    are closed when they come back idle, with a reset (SO_LINGER 0), so the
    gateway keeps no TIME_WAIT socket per shed connection (HAProxy does the
    same); the one kept idle is still reused."""
    own = Origin()
    try:
        g = start_gateway(upstream=own.addr, pool_max_idle=1)
        n = 6
        with ThreadPoolExecutor(n) as ex:
            rs = list(ex.map(lambda i: request(g.port, "GET", f"/slow?delay=0.5&i={i}"), range(n)))
        assert [r.status for r in rs] == [200] * n
        assert len({q.conn_id for q in own.requests}) == n, "each slow request had its own connection"
        time.sleep(0.3)
        assert _sockets_to(own.port, "time-wait") == 0
        assert _sockets_to(own.port, "established") == 1, "max-idle=1 keeps one"
        r = request(g.port, "GET", "/after")
        assert r.status == 200
        assert own.requests[-1].conn_id in {q.conn_id for q in own.requests[:n]}, "the kept connection is reused"
    finally:
        own.stop()
