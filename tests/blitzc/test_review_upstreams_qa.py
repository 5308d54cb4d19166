"""A code-review QA pass over the upstream side of the runtime (issue #6):
`runtime/src/lb/` (balancers, endpoints, pools, the retry budget),
`runtime/src/health/` (active checks, DNS, passive ejection) and how
`runtime/src/proxy/upstream.rs` uses them, read against docs/spec.md 7.1.
Each suspicion from the review is settled here black-box, with a gateway
built by `blitzc build` from the spec below (ONE worker, so passive health
and pools, which are per worker, are exact) and real origins and a real DNS
server (`support/dns_server.py`). What test_upstreams.py,
test_upstreams_qa.py and test_known_gaps.py already cover is not repeated.

- Active checks (`active.rs`, `exchange`/`final_status`): a check that gets no
  status line (a silent server, garbage, a reset) marks the server down; a
  status line cut before its CRLF, then a stall or a close, must too (the
  data path answers 504/502 to it), and a 103 Early Hints before a 200 must
  not (the data path relays the 200; RFC 9110 §15.2: a client must parse
  1xx answers before the final one). The last two were bugs, fixed: the
  checker now reads the answer with the proxy's own parser (`final_status`).
- DNS (`dns.rs`, `UpstreamSet::refresh`): an address DNS removes loses its
  idle connections at the workers' next tick, and a request in flight to
  it finishes but its connection is not pooled; an empty or NXDOMAIN answer
  keeps the last addresses; a name that resolves to nothing at start is
  503 until it resolves, then served without a restart.
- Balancers (`balance.rs`): with one server down, least-conn's ties must
  still go in turn among the others, as round-robin's turns do (a bug,
  fixed: the tie-break cursor now moves past the endpoint picked).
- Pools (`pool.rs`): `max-idle` is per endpoint, not per upstream.
- Passive health (`outlier.rs`): a second ejection without a success in
  between lasts longer than the first (2 s, then 4 s), and still ends.

Nothing asserts a timing: waits only bound how long a test blocks, and the
ejection test only looks at requests started well inside the documented
ejection times.
"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import parse_qs

import pytest
from support.blitzc import Served, build_with_ports
from support.client import exchange
from support.origin import Origin, OriginConn, RecordedRequest, respond
from support.waits import wait_until
from test_upstreams import Setup, client_requests

SPEC = """
version 1
gateway "revqa" {{
    workers 1
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
}}
upstream "checked" {{
    server "127.0.0.1:{ca}"
    server "127.0.0.1:{cb}"
    health-check path="/healthz" interval="200ms" timeout="400ms" healthy=1 unhealthy=2
}}
upstream "plain" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    timeouts response="1s"
}}
upstream "pooled" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    pool max-idle=1
}}
upstream "named" {{
    server "svc.test:{s}"
}}
upstream "named-checked" {{
    server "svc.test:{n}"
    health-check path="/healthz" interval="200ms" timeout="400ms"
}}
upstream "rr-checked" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
    health-check path="/healthz" interval="200ms" timeout="400ms" healthy=1 unhealthy=1
}}
upstream "lc-checked" {{
    balance "least-conn"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
    health-check path="/healthz" interval="200ms" timeout="400ms" healthy=1 unhealthy=1
}}
route "checked" {{
    match {{ path-prefix "/checked" }}
    proxy "checked"
}}
route "plain" {{
    match {{ path-prefix "/plain" }}
    proxy "plain"
}}
route "pooled" {{
    match {{ path-prefix "/pooled" }}
    proxy "pooled"
}}
route "named" {{
    match {{ path-prefix "/named" }}
    proxy "named"
}}
route "named-checked" {{
    match {{ path-prefix "/by-name-checked" }}
    proxy "named-checked"
}}
route "rr-checked" {{
    match {{ path-prefix "/rr-checked" }}
    proxy "rr-checked"
}}
route "lc-checked" {{
    match {{ path-prefix "/lc-checked" }}
    proxy "lc-checked"
}}
"""

# Health-check answers an origin can be told to give (`origin.hc_mode`).
EARLY_HINTS_THEN_200 = (
    b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
)
CUT_STATUS_LINE = b"HTTP/1.1 200 OK"  # no CRLF: not a status line yet
GARBAGE = b"SSH-2.0-OpenSSH_9.6\r\n"  # what a wrong port may well answer
CLOSE_HEAD = "HTTP/1.1\r\nhost: revqa.test\r\nconnection: close\r\n\r\n"


def review_origin(name: str, port: int, host: str = "127.0.0.1") -> Origin:
    """An origin that says who it is (`x-origin`). `/healthz` answers as
    `origin.hc_mode` says (see `answer_check`). Other paths obey the query:
    `early=1` sends a 103 before the 200, `cut=hang|close` sends a cut status
    line then stalls or closes, `delay=SECONDS` waits first, `fail=a,b`
    makes those origins answer 503."""
    origin = Origin(host=host, port=port)
    origin.hc_mode = "ok"

    def handler(req: RecordedRequest, conn: OriginConn) -> bool:
        path, _, query = req.target.partition("?")
        if path == "/healthz":
            return answer_check(origin.hc_mode, req, conn)
        q = {k: v[0] for k, v in parse_qs(query).items()}
        if "delay" in q and not conn.sleep(float(q["delay"])):
            return False
        if q.get("cut"):
            return answer_check(f"cut-{q['cut']}", req, conn)
        if "early" in q:
            conn.send(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
        status = 503 if name in q.get("fail", "").split(",") else 200
        return respond(conn, req, status, f"{name}\n".encode(), headers=(f"x-origin: {name}",))

    origin.handler = handler
    return origin


def answer_check(mode: str, req: RecordedRequest, conn: OriginConn) -> bool:
    """One answer of kind `mode`; returns whether the connection stays open."""
    if mode == "ok":
        return respond(conn, req, 200, b"ok\n")
    if mode == "500":
        return respond(conn, req, 500, b"sick\n")
    if mode == "early-hints":
        conn.send(EARLY_HINTS_THEN_200)
        return False
    if mode == "hang":
        conn.sleep(10)  # far past the check's timeout; cut short when the origin stops
        return False
    if mode == "garbage":
        conn.send(GARBAGE)
        return False
    if mode == "reset":
        conn.reset()
        return False
    if mode == "cut-hang":
        conn.send(CUT_STATUS_LINE)
        conn.sleep(10)
        return False
    if mode == "cut-close":
        conn.send(CUT_STATUS_LINE)
        return False
    raise AssertionError(f"unknown answer {mode!r}")



class ReviewSetup(Setup):
    """One gateway process and the origins a test starts (its own, by name)."""

    def origin(self, name: str, host: str = "127.0.0.1", port_of: str | None = None) -> Origin:
        self.origins[name] = review_origin(name, self.ports[port_of or name], host)
        return self.origins[name]

    def start(self, names=()) -> ReviewSetup:
        for n in names:
            self.origin(n)
        self.gateway = Served([str(self.binary)], self.ports["gw"], self.env)
        return self

    def log(self) -> str:
        return "\n".join(self.gateway.lines[-40:])

    def checks(self, name: str) -> int:
        """Health checks origin `name` has received."""
        return sum(r.target == "/healthz" for r in self.origins[name].requests)


@pytest.fixture(scope="module")
def review_binary(blitzc, cache_dir, tmp_path_factory):
    return build_with_ports(blitzc, cache_dir, tmp_path_factory.mktemp("revqa"), "revqa", SPEC,
                            ("gw", "ca", "cb", "a", "b", "c", "s", "n"))


@pytest.fixture
def review(review_binary, cache_dir, dns):
    binary, ports = review_binary
    dns.set("svc.test", ["127.0.0.1"])
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir), BLITZ_DNS_SERVER=dns.addr)
    setup = ReviewSetup(binary, ports, env)
    try:
        yield setup
    finally:
        setup.stop()


# ---------------------------------------------------------------- active checks



@pytest.mark.parametrize(
    "mode",
    [
        "hang",
        "garbage",
        "reset",
        "cut-hang",
        "cut-close",
    ],
)
def test_a_check_that_gets_no_complete_status_line_marks_the_server_down(review, mode):
    """cb answers its checks with `mode`; ca is fine. `unhealthy=2`: two such
    checks mark cb down (docs/spec.md 7.1: a status line within `timeout`
    is a success, anything else a failure), and clients only reach ca."""
    review.start(names=())
    review.origin("ca")
    review.origin("cb").hc_mode = mode
    cb = review.ports["cb"]
    down = f'"checked": 127.0.0.1:{cb} is unhealthy (2 failed checks)'
    # Two checks of at most 400 ms, 200 ms apart, need about 1.2 s.
    assert review.wait_log(down, timeout=5), review.log()
    served = {review.request(f"/checked/x?i={i}") for i in range(10)}
    assert served == {(200, "ca")}, served


def test_a_check_names_a_dns_server_by_its_name_and_an_ip_server_by_its_address(review):
    """docs/spec.md 7.1: a check's `host` is the server's name in the spec
    (`svc.test:PORT`), so an origin that picks its site by name (virtual
    hosting) answers the check for the site the gateway proxies to; a
    server given by address gets `IP:port` (the control)."""
    review.start(names=())
    named, by_ip = review.origin("n"), review.origin("ca")

    def hosts(origin):
        return [r.header("host") for r in list(origin.requests) if r.target == "/healthz"]

    assert wait_until(lambda: len(hosts(named)) >= 2 and len(hosts(by_ip)) >= 2, timeout=8), review.log()
    assert set(map(tuple, hosts(named))) == {(f"svc.test:{review.ports['n']}",)}, hosts(named)
    assert set(map(tuple, hosts(by_ip))) == {(f"127.0.0.1:{review.ports['ca']}",)}, hosts(by_ip)


@pytest.mark.parametrize(
    "mode",
    [
        "ok",
        "early-hints",
    ],
)
def test_a_server_whose_checks_end_in_a_200_stays_up(review, mode):
    """cb's checks are answered 200, plainly or after a 103 Early Hints.
    RFC 9110 §15.2: a client must parse 1xx answers before the final one;
    the data path does (see the control below). After four checks cb is
    still up and still gets clients."""
    review.start(names=())
    review.origin("ca")
    review.origin("cb").hc_mode = mode
    assert wait_until(lambda: review.checks("cb") >= 4, timeout=8), review.log()
    time.sleep(0.1)  # the last check's verdict is recorded and logged
    cb = review.ports["cb"]
    assert not any(f"127.0.0.1:{cb} is unhealthy" in line for line in review.gateway.lines), review.log()
    served = {review.request(f"/checked/x?i={i}") for i in range(10)}
    assert served == {(200, "ca"), (200, "cb")}, served


def test_the_data_path_relays_a_200_after_early_hints_and_takes_no_cut_status_line(review):
    """The controls of the two cases above: the same answers through the
    proxy. A 103 then a 200 is a 200 (the checker must agree); a status
    line cut before its CRLF is no answer: 504 when the server then stalls
    past `timeouts response` (1 s), 502 when it closes."""
    review.start(names=("a", "b"))
    for i in range(2):
        got = exchange(review.ports["gw"], f"GET /plain/early?early=1&i={i} {CLOSE_HEAD}".encode())
        # The 103 may be relayed before it (spec: interims go to HTTP/1.1 clients).
        assert got.statuses[-1:] == [200] and got.responses[-1].h("x-origin") in ("a", "b"), got.responses
    assert review.request("/plain/cut?cut=hang")[0] == 504
    assert review.request("/plain/cut?cut=close")[0] == 502


# ---------------------------------------------------------------- balancers


@pytest.mark.parametrize(
    "balance",
    [
        "rr",
        "lc",
    ],
)
def test_ties_go_in_turn_among_the_servers_left_when_one_is_down(review, balance):
    """a, b and c; b fails its checks (500) and is marked down. Requests one
    at a time leave every server 0 in flight, so least-conn's ties decide
    every pick, and spec 7.1 says ties go in turn, as round-robin's turns
    do (the control): a and c alternate, each half of the requests (+-1).
    Least-conn's cursor steps once per pick over [a, b, c]: from a it picks
    a, from b and from c it picks c, so c would get two thirds."""
    review.start(names=("a", "b", "c"))
    review.origins["b"].hc_mode = "500"
    upstream = f"{balance}-checked"
    assert review.wait_log(f'"{upstream}": 127.0.0.1:{review.ports["b"]} is unhealthy'), review.log()
    n = 60
    counts = review.served_by(f"/{upstream}/x", n)
    assert set(counts) == {"a", "c"}, counts
    assert abs(counts["a"] - counts["c"]) <= 2, counts


# ---------------------------------------------------------------- DNS


def test_an_address_dns_removes_has_its_idle_connections_closed_and_its_last_one_not_pooled(review, dns):
    """svc.test moves from 127.0.0.1 to 127.0.0.2 while 127.0.0.1 has an idle
    pooled connection and one carrying a slow request. The idle one is
    closed when the worker adopts the new list (spec 7.1: within a second),
    not kept to its idle timeout (60 s); the slow request still gets its
    answer, and its connection is closed after it, not pooled."""
    review.start(names=())
    old = review.origin("old", "127.0.0.1", port_of="s")
    review.origin("new", "127.0.0.2", port_of="s")
    # Two at once: two connections to the old address, both pooled.
    results: list = []
    pair = [threading.Thread(target=lambda: results.append(review.request("/named/pair?delay=0.3"))) for _ in range(2)]
    for t in pair:
        t.start()
    for t in pair:
        t.join()
    assert results == [(200, "old")] * 2, results
    assert len({r.conn_id for r in client_requests(old, "/named/pair")}) == 2
    assert wait_until(lambda: len(old.open_conns()) == 2, timeout=5), old.open_conns()
    # The slow request takes one of them (the pool hands out the last one in).
    slow: list = []
    slow_thread = threading.Thread(target=lambda: slow.append(review.request("/named/slow?delay=5")))
    slow_thread.start()
    try:
        assert old.wait_for(lambda: client_requests(old, "/named/slow"), timeout=5)
        busy = client_requests(old, "/named/slow")[0].conn_id
        dns.set("svc.test", ["127.0.0.2"])
        assert review.wait_log(f"svc.test is now [127.0.0.2:{review.ports['s']}]"), review.log()
        # The worker adopts the list on its next tick; requests meanwhile still succeed.
        assert wait_until(lambda: review.request("/named/after") == (200, "new"), timeout=5), review.log()
        idle = [c for c in old.open_conns() if c.id != busy]
        assert wait_until(lambda: not [c for c in old.open_conns() if c.id != busy], timeout=3), (
            f"the removed address's idle connection {idle} was kept"
        )
    finally:
        slow_thread.join()
    assert slow == [(200, "old")], "a request in flight to a removed address is not cut"
    assert old.wait_for(lambda: not old.open_conns(), timeout=3), "its connection was pooled after it"
    assert {review.request(f"/named/later?i={i}") for i in range(5)} == {(200, "new")}
    assert not client_requests(old, "/named/later"), "nothing new goes to the removed address"


def test_an_empty_or_nxdomain_answer_keeps_the_last_addresses(review, dns):
    """spec 7.1: "A failed resolution keeps the last addresses" (dns.rs: a
    resolver outage must not empty an upstream). svc.test first answers no
    record, then NXDOMAIN: each is asked again every second, and the
    gateway keeps serving from the last address without logging a change."""
    review.start(names=())
    review.origin("old", "127.0.0.1", port_of="s")
    assert review.request("/named/before") == (200, "old")
    for gone in ("empty", "nxdomain"):
        if gone == "empty":
            dns.set("svc.test", [])
        else:
            dns.records.pop("svc.test", None)
        asked = dns.questions
        # Two more resolutions (A and AAAA each), a second apart.
        assert wait_until(lambda asked=asked: dns.questions >= asked + 4, timeout=8), (gone, dns.questions, asked)
        for i in range(5):
            assert review.request(f"/named/{gone}?i={i}") == (200, "old"), gone
    assert not any("svc.test is now" in line for line in review.gateway.lines), review.log()


def test_a_name_unresolvable_at_start_is_503_until_it_resolves(review, dns):
    """spec 7.1: a name that does not resolve at start leaves its server
    without endpoints (503, no healthy server) and is asked again every
    second; once it resolves the gateway serves it, without a restart."""
    dns.records.pop("svc.test", None)
    review.start(names=())
    review.origin("late", "127.0.0.1", port_of="s")
    assert review.request("/named/early") == (503, None)
    dns.set("svc.test", ["127.0.0.1"])
    assert wait_until(lambda: review.request("/named/late") == (200, "late"), timeout=8), review.log()


# ---------------------------------------------------------------- pools


def test_max_idle_is_per_endpoint(review):
    """`pool max-idle=1` on an upstream of two servers: after four requests
    at once (round-robin: two to each, two connections each), each server
    keeps one idle connection (spec 7.1: "per endpoint and per worker"),
    and the next request to each reuses it."""
    review.start(names=("a", "b"))
    a, b = review.origins["a"], review.origins["b"]
    results: list = []
    def one() -> None:
        results.append(review.request("/pooled/burst?delay=0.3"))

    burst = [threading.Thread(target=one) for _ in range(4)]
    for t in burst:
        t.start()
    for t in burst:
        t.join()
    assert sorted(results) == [(200, "a"), (200, "a"), (200, "b"), (200, "b")], results
    for o in (a, b):
        assert len({r.conn_id for r in client_requests(o, "/pooled/burst")}) == 2
        assert wait_until(lambda o=o: len(o.open_conns()) == 1, timeout=5), (o.port, o.open_conns())
    kept = {n: o.open_conns()[0].id for n, o in (("a", a), ("b", b))}
    assert sorted(review.request("/pooled/next") for _ in range(2)) == [(200, "a"), (200, "b")]
    for n, o in (("a", a), ("b", b)):
        assert [r.conn_id for r in client_requests(o, "/pooled/next")] == [kept[n]], n


# ---------------------------------------------------------------- passive health


@pytest.mark.timeout(60)
def test_a_second_ejection_without_a_success_lasts_longer_than_the_first_and_ends(review):
    """No health check, no retry; a answers every request 503, b 200.
    Round-robin: three failures in a row eject a for 2 s (spec 7.1); when
    it comes back it fails three more times and is ejected again, now for
    4 s. Requests started between 2.5 s and 3.5 s after that second ejection
    (past the first one's length, inside the second's) all go to b; then a
    is tried again."""
    review.start(names=("a", "b"))
    a = review.origins["a"]

    def eject() -> float:
        """Sends requests until a has failed three times; when that was."""
        failures = 0
        for i in range(40):
            status, who = review.request(f"/plain/f?fail=a&i={i}")
            if who == "a":
                assert status == 503
                failures += 1
                if failures == 3:
                    return time.monotonic()
            else:
                assert (status, who) == (200, "b")
        raise AssertionError("a was not sent three requests")

    eject()
    # The first ejection ends (2 s): a is tried again, and fails again.
    assert wait_until(lambda: review.request("/plain/back?fail=a")[1] == "a", timeout=10), "a never came back"
    # That was its first failure since; two more eject it again.
    failures = 1
    for i in range(10):
        _, who = review.request(f"/plain/g?fail=a&i={i}")
        if who == "a":
            failures += 1
            if failures == 3:
                break
    assert failures == 3, "a was not sent two more requests"
    ejected_at = time.monotonic()
    time.sleep(2.5)
    during = []
    while time.monotonic() < ejected_at + 3.5:
        during.append(review.request("/plain/during?fail=a"))
    assert during, "the loop was too slow to say anything"
    assert set(during) == {(200, "b")}, during
    assert not client_requests(a, "/plain/during")
    back = wait_until(lambda: review.request("/plain/end?fail=a")[1] == "a", timeout=10)
    assert back, "the second ejection never ended"
