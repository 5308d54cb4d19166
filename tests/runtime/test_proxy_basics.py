"""Happy paths of hello_gateway with real clients (curl, http.client, raw sockets):
the gateway's own routes, forwarding headers, keep-alive, bodiless responses,
Expect: 100-continue and chunked responses."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import pytest

from support.asserts import assert_clean_forward
from support.client import RawConn, exchange, request

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed (scripts/install-test-deps.sh)")


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CURL, "-sS", "--max-time", str(int(timeout)), *args], capture_output=True, timeout=timeout + 5
    )


# ---------------------------------------------------------------- gateway routes
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_healthz_served_by_gateway(gateway, origin, method):
    r = request(gateway.port, method, "/healthz")
    assert r.status == 200, r
    assert (r.h("content-type") or "").startswith("text/plain"), r
    if method == "GET":
        assert r.body == b"ok\n"
    else:
        assert r.body == b""
    assert origin.requests == [], "healthz reached the origin"


def test_redirect_route(gateway, origin):
    r = request(gateway.port, "GET", "/redirect")
    assert r.status == 301, r
    assert r.h("location") == "https://example.com/"
    assert origin.requests == []


def test_proxied_request_and_forwarding_headers(gateway, origin):
    r = request(gateway.port, "GET", "/some/path?x=1&y=%20", headers=["X-Custom: v", "User-Agent: t/1"])
    assert r.status == 200, r
    assert r.body == b"GET /some/path?x=1&y=%20\n"
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.target == "/some/path?x=1&y=%20"
    assert req.header("x-custom") == ["v"] and req.header("user-agent") == ["t/1"]
    xff = req.header("x-forwarded-for")
    assert len(xff) == 1 and xff[0].split(",")[-1].strip() == "127.0.0.1", xff
    assert req.header("x-forwarded-proto") == ["http"]
    assert req.header("via") == ["1.1 blitz"], req
    rid = req.header("x-request-id")
    assert len(rid) == 1 and rid[0].strip(), req


def test_x_forwarded_for_appends_to_client_value(gateway, origin):
    r = request(gateway.port, "GET", "/xff", headers=["X-Forwarded-For: 203.0.113.7"])
    assert r.status == 200
    xff = origin.wait_requests(1)[0].header("x-forwarded-for")
    # one header, client's value kept, our peer appended (never two XFF headers)
    assert len(xff) == 1, xff
    parts = [p.strip() for p in xff[0].split(",")]
    assert parts[-1] == "127.0.0.1", xff


def test_request_ids_differ(gateway, origin):
    for i in range(3):
        assert request(gateway.port, "GET", f"/rid{i}").status == 200
    ids = [q.header("x-request-id")[0] for q in origin.wait_requests(3)]
    assert len(set(ids)) == 3, ids


def test_methods_and_bodies_forwarded(gateway, origin):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        r = request(gateway.port, method, "/echo", body=b"payload-" + method.encode())
        assert r.status == 200 and r.body == b"payload-" + method.encode(), (method, r)
    for q in origin.wait_requests(4, complete=True):
        assert_clean_forward(q, b"payload-" + q.method.encode())


def test_upstream_error_status_passed_through(gateway, origin):
    for status in (404, 500, 503):
        r = request(gateway.port, "GET", f"/status/{status}")
        assert r.status == status and r.body == f"status {status}\n".encode(), r


# ---------------------------------------------------------------- real clients
@needs_curl
def test_curl_get_post_and_chunked_upload(gateway, origin, tmp_path):
    p = curl("-i", f"{gateway.url}/curl-get")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"HTTP/1.1 200"), p.stdout[:200]
    assert p.stdout.endswith(b"GET /curl-get\n")

    p = curl("--data-binary", "hello curl", f"{gateway.url}/echo")
    assert p.returncode == 0 and p.stdout == b"hello curl", (p.stdout, p.stderr)

    src = tmp_path / "up.bin"
    src.write_bytes(b"z" * 100_000)
    p = curl("-H", "Transfer-Encoding: chunked", "-T", str(src), f"{gateway.url}/sink")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == b"100000", p.stdout
    for q in origin.wait_requests(3, complete=True):
        assert_clean_forward(q)


@needs_curl
def test_curl_keepalive_reuses_connection(gateway, origin):
    p = curl("-v", f"{gateway.url}/k1", f"{gateway.url}/k2", f"{gateway.url}/k3")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"GET /k1\nGET /k2\nGET /k3\n"
    assert p.stderr.count(b"Re-using existing connection") + p.stderr.count(b"Reusing existing") >= 2, p.stderr[-2000:]


def test_python_http_client(gateway, origin):
    c = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        for i in range(5):
            c.request("POST", f"/echo?i={i}", body=f"body {i}".encode(), headers={"X-I": str(i)})
            r = c.getresponse()
            assert r.status == 200 and r.read() == f"body {i}".encode()
        c.request("GET", "/healthz")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"ok\n"
        c.request("GET", "/chunked")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"hello, chunked world\n"
    finally:
        c.close()


# ---------------------------------------------------------------- keep-alive
def test_client_keepalive_many_requests_one_connection(gateway, origin):
    with RawConn(gateway.port) as c:
        for i in range(20):
            c.send(f"GET /ka{i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == 200 and r.body == f"GET /ka{i}\n".encode(), r
        assert not c.wait_closed(0.2), "keep-alive connection closed by the gateway"


def test_upstream_connections_are_reused(gateway, origin):
    """Sequential requests through the gateway share pooled upstream connections."""
    with RawConn(gateway.port) as c:
        for i in range(20):
            c.send(f"GET /pool{i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
            assert c.read_response().status == 200
    conns = {q.conn_id for q in origin.wait_requests(20)}
    assert len(conns) < 20, f"every request opened a new upstream connection ({len(conns)} for 20)"


def test_connection_close_honoured(gateway, origin):
    with RawConn(gateway.port) as c:
        c.send(b"GET /cc HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert c.wait_closed(5), "gateway kept the connection after Connection: close"


def test_http10_closes_by_default(gateway, origin):
    with RawConn(gateway.port) as c:
        c.send(b"GET /ten HTTP/1.0\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"GET /ten\n", r
        assert c.wait_closed(5)


# ---------------------------------------------------------------- bodiless responses
@pytest.mark.parametrize("first", ["HEAD /bytes/100", "GET /status/204", "GET /status/304", "HEAD /chunked"])
def test_bodiless_responses_keep_framing(gateway, origin, first):
    """HEAD, 204 and 304 carry no body: the next response on the same connection
    parses cleanly (a proxy that waits for or invents a body would desync)."""
    method, target = first.split()
    with RawConn(gateway.port) as c:
        c.send(f"{method} {target} HTTP/1.1\r\nHost: a.test\r\n\r\nGET /next HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        r1 = c.read_response(method=method)
        r2 = c.read_response()
    assert r1.status in (200, 204, 304), r1
    if method == "HEAD" and r1.h("content-length"):
        assert r1.h("content-length") == "100", r1
    assert r2.status == 200 and r2.body == b"GET /next\n", r2
    if r1.status in (204, 304):
        assert r1.h("content-length") in (None, "0") and r1.h("transfer-encoding") is None, r1


def test_head_on_healthz_then_get(gateway, origin):
    with RawConn(gateway.port) as c:
        c.send(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response(method="HEAD").status == 200
        r = c.read_response()
        assert r.status == 200 and r.body == b"ok\n"


# ---------------------------------------------------------------- Expect / chunked responses
def test_expect_100_continue(gateway, origin):
    """The client waits for `100 Continue` before sending the body; then gets the answer."""
    with RawConn(gateway.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n")
        interim = c.read_response(timeout=5)
        assert interim.status == 100, f"expected 100 Continue, got {interim!r}"
        c.send(b"payload")
        r = c.read_response()
    assert r.status == 200 and r.body == b"payload", r
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req, b"payload")


def test_chunked_response_passthrough(gateway, origin):
    with RawConn(gateway.port) as c:
        c.send(b"GET /chunked HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello, chunked world\n", r
        c.send(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"GET /after\n"


def test_many_pipelined_requests(gateway, origin):
    n = 100
    data = b"".join(f"GET /p{i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode() for i in range(n))
    with RawConn(gateway.port) as c:
        c.send(data)
        bodies = [c.read_response().body for _ in range(n)]
    assert bodies == [f"GET /p{i}\n".encode() for i in range(n)]


def test_empty_lines_before_request_tolerated_or_rejected_cleanly(gateway, origin):
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request."""
    ex = exchange(gateway.port, b"\r\nGET /lead HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert ex.statuses in ([200], [400]), ex


def test_expect_100_continue_body_sent_without_waiting(gateway, origin):
    """Clients may send the body right away; at most one 100 precedes the answer and
    the connection stays in sync for the next request."""
    with RawConn(gateway.port) as c:
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody"
            b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n"
        )
        r = c.read_response()
        if r.status == 100:
            r = c.read_response()
        assert r.status == 200 and r.body == b"body", r
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == b"GET /next\n", r2


def test_many_headers_and_long_value_forwarded(gateway, origin):
    hdrs = [f"X-H{i}: value-{i}" for i in range(90)] + ["X-Long: " + "L" * 8000]
    r = request(gateway.port, "GET", "/many-headers", headers=hdrs)
    assert r.status == 200, r
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.header("x-h89") == ["value-89"] and req.header("x-long") == ["L" * 8000]


def test_concurrent_clients_get_their_own_responses(gateway, origin):
    """40 clients x 25 keep-alive requests in parallel, with unique bodies, some of them
    hitting failing upstream paths: every response belongs to its own request (no
    cross-talk through pooled upstream connections)."""
    import random
    import threading

    errors: list[str] = []

    def client(n: int) -> None:
        rnd = random.Random(n)
        c = RawConn(gateway.port, timeout=20)
        try:
            for i in range(25):
                k = rnd.random()
                if k < 0.1:
                    c.send(b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n")
                    r = c.read_response()
                    if r.status != 502:
                        errors.append(f"client {n} req {i}: /reset gave {r!r}")
                    if (r.h("connection") or "").lower() == "close" or c.wait_closed(0.05):
                        c.close()
                        c = RawConn(gateway.port, timeout=20)  # the gateway may close after a 502
                    continue
                body = f"client {n} request {i} ".encode() * rnd.randint(1, 200)
                c.send(b"POST /echo?c=%d&i=%d HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (n, i, len(body), body))
                r = c.read_response()
                if r.status != 200 or r.body != body:
                    errors.append(f"client {n} req {i}: got {r.status} {r.body[:60]!r}")
        except Exception as e:
            errors.append(f"client {n}: {e!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not errors, f"{len(errors)} wrong answers, e.g. {errors[:5]}"


def test_client_supplied_forwarded_proto_overwritten(gateway, origin):
    """The edge sets X-Forwarded-Proto itself: a client's `https` is not passed on."""
    r = request(gateway.port, "GET", "/xfp", headers=["X-Forwarded-Proto: https"])
    assert r.status == 200
    assert origin.wait_requests(1)[0].header("x-forwarded-proto") == ["http"]


def test_http10_client_never_gets_chunked(gateway, origin):
    """An HTTP/1.0 client does not understand chunked: a chunked upstream response is
    delivered close-delimited or with a Content-Length, decoded."""
    with RawConn(gateway.port) as c:
        c.send(b"GET /chunked HTTP/1.0\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert r.h("transfer-encoding") is None, f"chunked sent to an HTTP/1.0 client: {r!r}"
        assert r.body == b"hello, chunked world\n", r


def test_304_with_content_length_has_no_body(gateway, origin):
    """A 304 may carry the Content-Length of the representation; it still has no body,
    so the gateway must not wait for one (on either side)."""

    def not_modified(req, conn):
        if req.path == "/nm":
            conn.send(b'HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\netag: "x"\r\n\r\n')
        else:
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nnext\n")
        return True

    origin.handler = not_modified
    with RawConn(gateway.port, timeout=10) as c:
        c.send(b"GET /nm HTTP/1.1\r\nHost: a\r\n\r\nGET /after-304 HTTP/1.1\r\nHost: a\r\n\r\n")
        r1 = c.read_response()
        assert r1.status == 304, r1
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == b"next\n", r2
    # and the upstream connection stayed in sync for the gateway too
    origin.handler = None
    assert request(gateway.port, "GET", "/later").body == b"GET /later\n"


# ---------------------------------------------------------------- Date


def _imf_fixdate(value: str | None) -> datetime:
    """`value` parsed as an IMF-fixdate (RFC 9110 §5.6.7), or an assertion."""
    assert value and re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", value), value
    return parsedate_to_datetime(value)


def test_answers_are_dated(gateway, origin):
    """RFC 9110 §6.6.1: a recipient with a clock adds `Date` to a response
    it forwards without one; an origin server with a clock dates its own
    2xx-4xx answers (the gateway's routes, its errors). A `Date` the origin
    sent is forwarded as it is, alone."""

    def dated_or_not(req, conn):
        if req.path == "/dated":
            return conn.send(b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 3\r\n\r\nold")
        return conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew")

    origin.handler = dated_or_not
    now = datetime.now(timezone.utc)
    with RawConn(gateway.port, timeout=10) as c:
        c.send(b"GET /undated HTTP/1.1\r\nHost: a\r\n\r\nGET /dated HTTP/1.1\r\nHost: a\r\n\r\n"
               b"GET /redirect HTTP/1.1\r\nHost: a\r\n\r\n")
        undated, dated, local = c.read_response(), c.read_response(), c.read_response()
    assert undated.status == 200 and undated.body == b"new", undated
    [added] = undated.header("date")
    # The clock is the machine's: a day either way only catches a date not of now.
    assert abs(_imf_fixdate(added) - now) < timedelta(days=1), added
    assert dated.header("date") == ["Sun, 06 Nov 1994 08:49:37 GMT"], dated
    assert local.status == 301 and len(local.header("date")) == 1, local
    _imf_fixdate(local.header("date")[0])
    origin.handler = None
    with RawConn(gateway.port, timeout=10) as c:  # an error answer of the gateway's own
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Bad : v\r\n\r\n")
        bad = c.read_response()
    assert bad.status == 400 and len(bad.header("date")) == 1, bad
    _imf_fixdate(bad.header("date")[0])
