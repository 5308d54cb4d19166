"""Interim answers keep the wait for an upstream's answer alive.

`timeouts response` bounds the wait for the response head (docs/spec.md).
An upstream that sends `102 Processing` (RFC 2518 §10.1: "the server has
received and is processing the request... to prevent the client from timing
out") shows it is still at work, so each interim starts that wait again, as
nginx's `proxy_read_timeout` and HAProxy's `timeout server` do (they count
from the last bytes read). Only the first sixteen interims do (the most the
gateway relays, runtime/README.md): an upstream sending them without end is
still cut within `response` of the sixteenth.

The origin here reads the request (and its body), then sends `n` interims
`gap` seconds apart, then `200 done`. The gateway's response timeout is
`RESPONSE` seconds; each case's interims together last well past it, each
gap well within it. Over HTTP/1.1 and h2c, with a body and without one
(with a body the wait starts once the body is sent).
"""

from __future__ import annotations

import socket
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from support.client import exchange
from support.gateway import Gateway
from support.h2client import H2Client
from support.origin import ThreadPerConnection

RESPONSE = 2
GAP = 0.4  # well inside RESPONSE, so a busy machine still sends each in time
SLOW = 8  # interims: 3.2 s of them, past RESPONSE
BODY = b"x" * 5000


class WorkingOrigin(ThreadPerConnection):
    """Answers `/work?n=N&gap=S` (after reading any content-length body) with N
    `102 Processing` interims S seconds apart, then `200` with body `done`;
    one request per connection."""

    def __init__(self):
        self.requests = 0
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        c.settimeout(30)
        with c:
            try:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, body = buf.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    d = c.recv(65536)
                    if not d:
                        return
                    body += d
                self.requests += 1
                query = parse_qs(urlsplit(lines[0].split(b" ")[1].decode()).query)
                n, gap = int(query["n"][0]), float(query["gap"][0])
                for _ in range(n):
                    time.sleep(gap)
                    c.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
                time.sleep(gap)
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone")
            except OSError:
                return


@pytest.fixture(scope="module")
def working():
    o = WorkingOrigin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def gw(hello_bin, working, tmp_path_factory):
    g = Gateway(hello_bin, working.addr, log_dir=tmp_path_factory.mktemp("logs"), protocols="h1,h2c", workers=1,
                response_timeout=RESPONSE, body_timeout=10).start()
    yield g
    g.kill()


def h1(gw: Gateway, n: int, gap: float, body: bytes | None):
    req = f"{'POST' if body is not None else 'GET'} /work?n={n}&gap={gap} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n"
    req = req.encode() + (b"content-length: %d\r\n\r\n" % len(body) + body if body is not None else b"\r\n")
    return exchange(gw.port, req, quiet=RESPONSE + 5, timeout=40)


def h2(gw: Gateway, n: int, gap: float, body: bytes | None):
    with H2Client(f"127.0.0.1:{gw.port}", timeout=40) as c:
        return c.request(f"/work?n={n}&gap={gap}", method="POST" if body is not None else "GET",
                         body=body, timeout=40)


@pytest.mark.parametrize("body", [None, BODY], ids=["get", "post"])
def test_interims_within_the_timeout_keep_an_http1_wait_alive(gw, body):
    ex = h1(gw, SLOW, GAP, body)
    assert ex.statuses == [102] * SLOW + [200], ex
    assert ex.responses[-1].body == b"done"


@pytest.mark.parametrize("body", [None, BODY], ids=["get", "post"])
def test_interims_within_the_timeout_keep_an_http2_wait_alive(gw, body):
    r = h2(gw, SLOW, GAP, body)
    assert (r.status, r.body) == (200, b"done"), r


@pytest.mark.parametrize("body", [None, BODY], ids=["get", "post"])
def test_control_a_silent_upstream_is_cut_at_the_response_timeout(gw, body):
    """The same origin without interims: its 200 comes 2x RESPONSE after
    the request, so the gateway answers 504 first."""
    ex = h1(gw, 0, 2 * RESPONSE, body)
    assert ex.statuses == [504], ex
    r = h2(gw, 0, 2 * RESPONSE, body)
    assert r.status == 504, r


@pytest.mark.timeout(90)
def test_only_sixteen_interims_start_the_wait_again(gw):
    """An upstream that keeps sending interims is still bounded: after the
    sixteenth, `response` runs out while the origin is still at them (its
    200 would come after 40 interims)."""
    gap = 0.25
    ex = h1(gw, 40, gap, None)
    assert ex.statuses[-1] == 504, ex.statuses
    # Sixteen relayed, then the gateway's answer; the origin's 200 never.
    assert ex.statuses[:-1] == [102] * 16, ex.statuses
