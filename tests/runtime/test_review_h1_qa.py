"""A code-review pass over the HTTP/1.1 proxy path and the upstream pool
(runtime/src/proxy/conn.rs, upstream.rs, io.rs, runtime/src/http/,
runtime/src/lb/), each suspicion from reading the code proven or pinned
against hello_gateway, with a passing control beside each bug.

The state machines held up under the peers this pass played (pipelines
around errors, half-closes, upstreams answering early, closing or resetting
at each phase, stale pooled connections): what did not hold are fields the
RFCs give an intermediary duties for that the code never looks at, and the
request id of a replayed request. Bugs, each with a control (each test
failed before its fix):

- (fixed) `Date` (RFC 9110 §6.6.1). The gateway never wrote one:
  `write.rs::write_response_head` relays the upstream's fields and adds
  none, so a response whose upstream sent no `Date` reaches the client
  without one ("A recipient with a clock that receives a response message
  without a Date header field MUST record the time it was received and
  append a corresponding Date header field to the message's header section
  if it is cached or forwarded downstream"); and
  `write.rs::write_local_response` answers 2xx, 3xx and 4xx of its own
  (`respond`, `redirect`, 400/408/413/431) without one ("An origin server
  with a clock MUST generate a Date header field in all 2xx (Successful),
  3xx (Redirection), and 4xx (Client Error) responses").
- (fixed) `Max-Forwards` (RFC 9110 §7.6.2): "Each intermediary that receives
  a TRACE or OPTIONS request containing a Max-Forwards header field MUST
  check and update its value prior to forwarding the request. If the
  received value is zero (0), the intermediary MUST NOT forward the
  request; instead, the intermediary MUST respond as the final recipient."
  (§3.7: a gateway is an intermediary.) `write.rs::write_forward_request`
  copied the field as sent: `Max-Forwards: 0` was forwarded, `5` went up
  as `5`.
- (fixed) An OPTIONS with an absolute-form target and an empty path
  (`OPTIONS http://a.test HTTP/1.1`) asks about the server, as `OPTIONS *`
  does. RFC 9112 §3.2.4: "the last proxy on the request chain MUST send a
  request-target of "*" when it forwards the request to the indicated
  origin server". `parse.rs::parse_request_head` stores an empty path as
  `/` for every method, so the upstream is asked `OPTIONS /`, about one
  resource.
- (fixed) `x-request-id` per try, not per request: `upstream.rs::exchange`
  (and `http2/exchange.rs::forward_request` for an HTTP/2 stream) draws a
  new id from `w.ids` each time it runs, so a request replayed
  after the keep-alive race (a pooled connection the upstream closed on
  receiving it, `Tries::replay_stale`) reaches the upstream twice under two
  ids: the upstream's logs show two requests where the client made one,
  and the id no longer ties the attempts together. A valid id the client
  sent is kept on both tries (the control); retries of the retry policy go
  through the same `exchange` and would do the same.

Pinned (no other test covers it): the pool is not too timid. After every
clean answer shape (HEAD answered chunked or with a length, 204, 304 with a
length, interims relayed or not, a chunked body re-framed for an HTTP/1.0
client, chunk extensions and trailers dropped, an HTTP/1.0 keep-alive
answer) the next request rides the same upstream connection.
"""

from __future__ import annotations

import email.utils

import pytest
from support.client import RawConn
from support.h2client import H2Client
from support.origin import respond


class Precondition(Exception):
    """A step a test relies on went wrong: never taken for the bug its strict
    xfail names (the xfails expect AssertionError only)."""


def _answer(port: int, request: bytes, method: str = "GET"):
    """The one response to `request`, sent alone on a fresh connection."""
    with RawConn(port, timeout=10) as c:
        if not c.send(request):
            raise Precondition("the gateway closed before the request was written")
        return c.read_response(method=method, timeout=10)


def _forwarded(origin, path: str, timeout: float = 5.0):
    """The requests the origin got whose path is `path` (waits for one, bounded)."""
    origin.wait_for(lambda: any(q.path == path or q.target == path for q in origin.requests), timeout)
    return [q for q in origin.requests if q.path == path or q.target == path]


def _valid_http_date(value: str) -> bool:
    """An IMF-fixdate (RFC 9110 §5.6.7), as a recipient parses it."""
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- Date

ORIGIN_DATE = "Fri, 27 Nov 2026 19:00:00 GMT"


def test_the_upstreams_date_is_relayed_as_sent(gateway, origin):
    """The control for the two tests below: an upstream's `Date` reaches the
    client once, unchanged (the date the origin generated the response)."""

    def dated(req, conn):
        return respond(conn, req, 200, b"dated\n", (f"Date: {ORIGIN_DATE}",))

    origin.handler = dated
    r = _answer(gateway.port, b"GET /dated HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert r.status == 200 and r.body == b"dated\n", r
    assert r.header("date") == [ORIGIN_DATE], r


def test_a_proxied_response_without_date_gets_one(gateway, origin):
    """The default origin answers without `Date` (support/origin.py `respond`)."""
    r = _answer(gateway.port, b"GET /undated HTTP/1.1\r\nHost: a.test\r\n\r\n")
    if r.status != 200 or not _forwarded(origin, "/undated"):
        raise Precondition(f"not proxied: {r!r}")
    dates = r.header("date")
    assert len(dates) == 1 and _valid_http_date(dates[0]), f"Date of a forwarded response: {dates}"


LOCAL_ANSWERS = {
    # respond (2xx), redirect (3xx), a rejected head (4xx): the gateway is the
    # origin of each.
    "respond-200": (b"GET /healthz HTTP/1.1\r\nHost: a.test\r\n\r\n", 200),
    "redirect-301": (b"GET /redirect HTTP/1.1\r\nHost: a.test\r\n\r\n", 301),
    "rejected-400": (b"GET /no-host HTTP/1.1\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(LOCAL_ANSWERS))
def test_local_answers_carry_date(gateway, origin, case):
    request, status = LOCAL_ANSWERS[case]
    r = _answer(gateway.port, request)
    if r.status != status:
        raise Precondition(f"{case}: expected {status}, got {r!r}")
    dates = r.header("date")
    assert len(dates) == 1 and _valid_http_date(dates[0]), f"{case}: Date {dates}"


# --------------------------------------------------------- Max-Forwards


def test_max_forwards_of_other_methods_goes_up_as_sent(gateway, origin):
    """The control: RFC 9110 §7.6.2 lets a recipient ignore Max-Forwards on
    methods other than TRACE and OPTIONS; the gateway forwards a GET's as
    sent, even 0."""
    r = _answer(gateway.port, b"GET /mf-get HTTP/1.1\r\nHost: a.test\r\nMax-Forwards: 0\r\n\r\n")
    assert r.status == 200, r
    got = _forwarded(origin, "/mf-get")
    assert len(got) == 1 and got[0].header("max-forwards") == ["0"], got


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
def test_max_forwards_zero_is_answered_not_forwarded(gateway, origin, method):
    path = f"/mf-zero-{method.lower()}"
    request = f"{method} {path} HTTP/1.1\r\nHost: a.test\r\nMax-Forwards: 0\r\n\r\n".encode()
    r = _answer(gateway.port, request)
    # A forwarded request is recorded by the origin before it answers, so
    # once the client has its answer there is nothing left to wait for.
    forwarded = [q for q in origin.requests if q.path == path]
    assert not forwarded, f"{method} with Max-Forwards: 0 reached the origin (client got {r.status}): {forwarded}"
    # The gateway answers as the final recipient: OPTIONS with 200, TRACE
    # with 501 (it does not reflect requests).
    assert r.status == {"OPTIONS": 200, "TRACE": 501}[method], r


def test_max_forwards_over_http2(start_gateway, origin):
    """The same rule for an HTTP/2 stream: spent, answered; else lowered."""
    g = start_gateway(protocols="h1,h2c")
    with H2Client(g.addr) as c:
        zero = c.request("/mf-h2-zero", method="OPTIONS", headers=[("max-forwards", "0")])
        two = c.request("/mf-h2-two", method="OPTIONS", headers=[("max-forwards", "2")])
    assert zero.status == 200 and not [q for q in origin.requests if q.path == "/mf-h2-zero"], zero
    got = _forwarded(origin, "/mf-h2-two")
    assert two.status == 200 and len(got) == 1 and got[0].header("max-forwards") == ["1"], (two, got)


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
def test_max_forwards_is_decremented(gateway, origin, method):
    path = f"/mf-five-{method.lower()}"
    r = _answer(gateway.port, f"{method} {path} HTTP/1.1\r\nHost: a.test\r\nMax-Forwards: 5\r\n\r\n".encode())
    got = _forwarded(origin, path)
    if r.status != 200 or len(got) != 1:
        raise Precondition(f"not proxied once: {r!r} {got}")
    assert got[0].header("max-forwards") == ["4"], got[0]


# ------------------------------------------------- OPTIONS about the server


@pytest.mark.parametrize(
    "target, upstream_target",
    [
        ("*", "*"),
        # A path, even just "/", is about that resource: it stays.
        ("http://a.test/", "/"),
        ("http://a.test/?q=1", "/?q=1"),
    ],
)
def test_options_targets_forwarded(gateway, origin, target, upstream_target):
    """The control for the test below: `OPTIONS *` goes up as `*`, an
    absolute-form target with a path as its origin-form."""
    r = _answer(gateway.port, f"OPTIONS {target} HTTP/1.1\r\nHost: a.test\r\nx-case: opt\r\n\r\n".encode())
    assert r.status == 200, r
    origin.wait_for(lambda: any(q.header("x-case") == ["opt"] for q in origin.requests), 5)
    got = [q.target for q in origin.requests if q.header("x-case") == ["opt"]]
    assert got == [upstream_target], got


@pytest.mark.parametrize("target", ["http://a.test", "http://a.test:80"])
def test_options_absolute_form_without_path_is_asked_of_the_server(gateway, origin, target):
    r = _answer(gateway.port, f"OPTIONS {target} HTTP/1.1\r\nHost: a.test\r\nx-case: opt-empty\r\n\r\n".encode())
    if r.status != 200:
        raise Precondition(f"not proxied: {r!r}")
    origin.wait_for(lambda: any(q.header("x-case") == ["opt-empty"] for q in origin.requests), 5)
    got = [q.target for q in origin.requests if q.header("x-case") == ["opt-empty"]]
    assert got == ["*"], f"OPTIONS {target} went upstream as {got}"


# ------------------------------------------- pooled after every clean shape

# Answers that end cleanly without a body to pump, or with one the gateway
# re-frames: each leaves the upstream connection reusable (`upstream.rs::exchange`:
# `upstream_reusable` is the upstream's keep-alive, no bytes past the answer, the
# request body finished). (method, HTTP version of the client, the upstream's answer)
CLEAN_SHAPES = {
    "head-answered-chunked": ("HEAD", "1.1", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
    "head-answered-with-length": ("HEAD", "1.1", b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n"),
    "304-with-length": ("GET", "1.1", b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ncontent-length: 50\r\n\r\n"),
    "204": ("GET", "1.1", b"HTTP/1.1 204 No Content\r\n\r\n"),
    "103-then-200": ("GET", "1.1", (b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")),
    "102-to-http10-client": ("GET", "1.0", (b"HTTP/1.1 102 Processing\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")),
    "chunked-to-http10-client": ("GET", "1.0", (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"2\r\nok\r\n0\r\n\r\n")),
    "chunked-with-trailers": ("GET", "1.1", (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n"
                              b"2;ext=1\r\nok\r\n0\r\nx-t: 1\r\n\r\n")),
    "http10-upstream-keep-alive-204": ("GET", "1.1", b"HTTP/1.0 204 No Content\r\nconnection: keep-alive\r\n\r\n"),
}


@pytest.mark.parametrize("shape", sorted(CLEAN_SHAPES))
def test_upstream_connection_is_pooled_after_a_clean_answer_of_every_shape(start_gateway, origin, shape):
    """Pinned: the pool is not too timid. After each answer shape above (no
    body to pump: HEAD, 204, 304; interims skipped or relayed; a body
    re-framed: chunked to an HTTP/1.0 client, chunk extensions and trailers
    dropped), the next request, from another client connection, rides the same
    upstream connection (test_reliability_qa.py covers the keep-alive
    spellings of the answer; test_upstream_faults.py the broken ones, never
    reused)."""
    method, version, answer = CLEAN_SHAPES[shape]

    def scripted(req, conn):
        if req.path == "/shape":
            return conn.send(answer)
        return respond(conn, req, 200, b"next\n")

    origin.handler = scripted
    g = start_gateway()
    with RawConn(g.port, timeout=10) as c:
        c.send(f"{method} /shape HTTP/{version}\r\nHost: a.test\r\n\r\n".encode())
        r = c.read_response(method=method)
        if r.status < 200:  # the relayed interim
            r = c.read_response(method=method)
    if r.status != int(answer.rsplit(b"HTTP/1.", 1)[1][2:5]) or not r.complete:
        raise Precondition(f"{shape}: not relayed: {r!r}")
    nxt = _answer(g.port, b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert nxt.status == 200 and nxt.body == b"next\n", nxt
    conns = [(q.path, q.conn_id) for q in origin.requests]
    assert len({cid for _, cid in conns}) == 1, f"{shape}: a new upstream connection for the next request: {conns}"


# ------------------------------------------------ request id across tries


def _drop_on_pooled(req, conn):
    """The keep-alive race on demand: `/drop` on a reused upstream connection
    (not its first request) is read, then the connection closed unanswered;
    everything else, and `/drop` on a fresh connection, gets a 200."""
    if req.path == "/drop" and req.seq > 0:
        conn.close()
        return False
    return respond(conn, req, 200, f"{req.method} {req.path}\n".encode())


def _get(g, via: str, path: str, extra: list[tuple[str, str]]) -> int:
    """The status of `GET path` with `extra` fields, over HTTP/1.1 or h2c."""
    if via == "h2c":
        with H2Client(g.addr) as client:
            return client.request(path, headers=extra).status
    fields = "".join(f"{n}: {v}\r\n" for n, v in extra)
    return _answer(g.port, f"GET {path} HTTP/1.1\r\nHost: a.test\r\n{fields}\r\n".encode()).status


def _replayed_ids(start_gateway, origin, via: str, extra=()) -> list[list[str]]:
    """Warms one pooled upstream connection, then sends `GET /drop` on it (it
    is replayed on a fresh one); the x-request-id values of both arrivals."""
    origin.handler = _drop_on_pooled
    g = start_gateway(protocols="h1,h2c")
    warm = _get(g, via, "/warm", [])
    status = _get(g, via, "/drop", list(extra))
    arrivals = [q for q in origin.requests if q.path == "/drop"]
    if warm != 200 or status != 200 or len(arrivals) != 2 or arrivals[0].conn_id == arrivals[1].conn_id:
        raise Precondition(f"no replay on a fresh connection: {warm} {status} {arrivals}")
    return [q.header("x-request-id") for q in arrivals]


@pytest.mark.parametrize("via", ["http1.1", "h2c"])
def test_a_client_request_id_is_kept_on_a_replayed_request(start_gateway, origin, via):
    """The control: a valid id the client sent goes up with both tries."""
    ids = _replayed_ids(start_gateway, origin, via, [("x-request-id", "client-chosen-1")])
    assert ids == [["client-chosen-1"], ["client-chosen-1"]], ids


@pytest.mark.parametrize("via", ["http1.1", "h2c"])
def test_a_generated_request_id_is_kept_on_a_replayed_request(start_gateway, origin, via):
    ids = _replayed_ids(start_gateway, origin, via)
    if not all(len(i) == 1 for i in ids):
        raise Precondition(f"not one x-request-id per arrival: {ids}")
    assert ids[0] == ids[1], f"the two tries of one request carried {ids}"
