"""Upstreams end to end (issue #6): balancers, failover, health checks,
retries, DNS names, with a gateway built by `blitzc build` from a spec and
real origins that say who they are.

One spec (below) is built once per module; its origins listen on ports
chosen before the build, and each test starts its own origins on them (so a
test can kill one and start it again on the same port). Every origin
answers `x-origin: NAME`; the query steers it: `fail=a,b` makes those
origins answer 503, `stall=a` makes them wait 2 s (past the upstream's
response timeout), `delay=a` makes them wait 0.2 s. `/healthz` is 200.
The listener also speaks h2c (prior knowledge): the retry tests run over
HTTP/1.1 and over HTTP/2 streams, which follow the same policy.

Tolerances are stated next to each assertion. Waits only bound how long a
test blocks; nothing asserts a timing.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from support.h2client import H2Client
from support.origin import Origin, respond
from support.blitzc import Served, build_with_ports

NAMES = ("a", "b", "c", "d")
WORKERS = 2

SPEC = """
version 1
gateway "lb" {{
    workers {workers}
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
    protocols "h1" "h2c"
}}
upstream "rr" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
}}
upstream "wrr" {{
    balance "weighted-round-robin"
    server "127.0.0.1:{a}" weight=3
    server "127.0.0.1:{b}" weight=1
    server "127.0.0.1:{c}" weight=1
}}
upstream "lc" {{
    balance "least-conn"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
}}
upstream "p2c" {{
    balance "p2c"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
}}
upstream "hash4" {{
    balance "consistent-hash" key="header:x-user"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
    server "127.0.0.1:{d}"
}}
upstream "hash3" {{
    balance "consistent-hash" key="header:x-user"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
}}
upstream "checked" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    health-check path="/healthz" interval="200ms" timeout="200ms" healthy=2 unhealthy=2 expect="200-299"
}}
upstream "retry" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{dead}"
    timeouts connect="500ms" response="500ms"
    retry attempts=2 on="connect-error" "503" "timeout"
}}
upstream "deadline" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    timeouts response="500ms"
    retry attempts=2 on="timeout" total="800ms"
}}
upstream "budget" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    retry attempts=3 on="503"
}}
upstream "dns" {{
    server "localhost:{a}"
}}
upstream "ttl" {{
    server "svc.test:{s}"
    server "127.0.0.1:{c}"
}}
route "rr" {{
    match {{ path-prefix "/rr" }}
    proxy "rr"
}}
route "wrr" {{
    match {{ path-prefix "/wrr" }}
    proxy "wrr"
}}
route "lc" {{
    match {{ path-prefix "/lc" }}
    proxy "lc"
}}
route "p2c" {{
    match {{ path-prefix "/p2c" }}
    proxy "p2c"
}}
route "hash4" {{
    match {{ path-prefix "/hash4" }}
    proxy "hash4"
}}
route "hash3" {{
    match {{ path-prefix "/hash3" }}
    proxy "hash3"
}}
route "checked" {{
    match {{ path-prefix "/checked" }}
    proxy "checked"
}}
route "retry" {{
    match {{ path-prefix "/retry" }}
    proxy "retry"
}}
route "deadline" {{
    match {{ path-prefix "/deadline" }}
    proxy "deadline"
}}
route "budget" {{
    match {{ path-prefix "/budget" }}
    proxy "budget"
}}
route "dns" {{
    match {{ path-prefix "/dns" }}
    proxy "dns"
}}
route "ttl" {{
    match {{ path-prefix "/ttl" }}
    proxy "ttl"
}}
"""


def lb_origin(name: str, port: int, host: str = "127.0.0.1") -> Origin:
    """An origin on `port` that says who it is and obeys fail=/stall=/delay=."""
    origin = Origin(host=host, port=port)

    def handler(req, conn):
        path, _, query = req.target.partition("?")
        if path == "/healthz":
            return respond(conn, req, 200, b"ok\n")
        q = parse_qs(query)

        def names(key):
            return {n for v in q.get(key, []) for n in v.split(",")}

        if name in names("stall") and not conn.sleep(2.0):
            return False
        if name in names("delay") and not conn.sleep(0.2):
            return False
        status = 503 if name in names("fail") else 200
        return respond(conn, req, status, f"{name}\n".encode(), headers=(f"x-origin: {name}",))

    origin.handler = handler
    return origin


def client_requests(origin: Origin, prefix: str) -> list:
    """The requests `origin` got from clients (not health checks) under `prefix`."""
    return [r for r in origin.requests if r.target.startswith(prefix)]


class Setup:
    def __init__(self, binary: Path, ports: dict[str, int], env: dict):
        self.binary = binary
        self.ports = ports
        self.env = env
        self.origins: dict[str, Origin] = {}
        self.gateway: Served | None = None

    def start(self, names=NAMES) -> "Setup":
        for n in names:
            self.origins[n] = lb_origin(n, self.ports[n])
        self.gateway = Served([str(self.binary)], self.ports["gw"], self.env)
        return self

    def kill(self, name: str) -> None:
        self.origins.pop(name).stop()

    def revive(self, name: str) -> Origin:
        self.origins[name] = lb_origin(name, self.ports[name])
        return self.origins[name]

    def stop(self) -> None:
        try:
            if self.gateway is not None:
                assert self.gateway.stop() == 0, "graceful exit:\n" + "\n".join(self.gateway.lines[-30:])
        finally:
            for o in self.origins.values():
                o.stop()
            self.origins = {}

    def request(self, path: str, method: str = "GET", headers=None, body: bytes | None = None):
        """(status, x-origin) of one request on a new connection; status 0 if it failed."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.ports["gw"], timeout=10)
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp.status, resp.getheader("x-origin")
        except (OSError, http.client.HTTPException):
            return 0, None

    def h2(self) -> H2Client:
        """A new HTTP/2 (h2c, prior knowledge) connection to the gateway."""
        return H2Client(f"127.0.0.1:{self.ports['gw']}")

    def served_by(self, path: str, n: int, headers=None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _ in range(n):
            status, who = self.request(path, headers=headers)
            assert status == 200, (path, status)
            counts[who] = counts.get(who, 0) + 1
        return counts

    def wait_log(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.gateway.lines):
                return True
            time.sleep(0.05)
        return False


@pytest.fixture(scope="module")
def lb_binary(blitzc, cache_dir, tmp_path_factory):  # noqa: F811
    return build_with_ports(blitzc, cache_dir, tmp_path_factory.mktemp("lb"), "lb", SPEC,
                            (*NAMES, "dead", "gw", "s"), workers=WORKERS)


@pytest.fixture
def lb(lb_binary, cache_dir, dns):  # noqa: F811
    binary, ports = lb_binary
    dns.set("svc.test", ["127.0.0.1"])
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir), BLITZ_DNS_SERVER=dns.addr)
    setup = Setup(binary, ports, env)
    try:
        yield setup
    finally:
        setup.stop()


# ---------------------------------------------------------------- distribution


def test_round_robin_least_conn_and_weighted_round_robin_distribution(lb):
    lb.start()
    n = 300
    rr = lb.served_by("/rr/x", n)
    # Each worker rotates exactly; a worker's unfinished cycle leaves each
    # server at most 1 off its share: within WORKERS of n/3.
    assert set(rr) == {"a", "b", "c"}, rr
    for who, count in rr.items():
        assert abs(count - n / 3) <= WORKERS, rr
    # least-conn with one request at a time: every server has 0 in flight,
    # ties go in turn, so the same tolerance as round-robin.
    lc = lb.served_by("/lc/x", n)
    assert set(lc) == {"a", "b", "c"}, lc
    for who, count in lc.items():
        assert abs(count - n / 3) <= WORKERS, lc
    n = 500
    wrr = lb.served_by("/wrr/x", n)
    # Smooth WRR is exact over each window of sum(weights)=5 picks per worker;
    # an unfinished window per worker is off by less than the weight.
    expected = {"a": n * 3 / 5, "b": n / 5, "c": n / 5}
    weights = {"a": 3, "b": 1, "c": 1}
    for who, exp in expected.items():
        assert abs(wrr.get(who, 0) - exp) <= WORKERS * weights[who], wrr


def load(lb, path: str, threads: int, seconds: float, results: list, stop_at: float | None = None):
    """`threads` clients sending GET `path` in a loop for `seconds`; appends
    (start_time, status, origin) per request to `results`."""
    deadline = time.monotonic() + seconds

    def run():
        while time.monotonic() < deadline:
            t = time.monotonic()
            status, who = lb.request(path)
            results.append((t, status, who))

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    return ts


@pytest.mark.parametrize("algorithm", ["lc", "p2c"])
def test_least_conn_and_p2c_avoid_the_slow_server(lb, algorithm):
    """Origin a takes 0.2 s per request, b and c answer at once. Round-robin
    gives a its third of the requests whatever; least-conn and p2c, which
    look at requests in flight, give it far fewer."""
    lb.start()
    shares = {}
    for path in ("rr", algorithm):
        results: list = []
        for t in load(lb, f"/{path}/x?delay=a", threads=6, seconds=2.0, results=results):
            t.join()
        assert all(status == 200 for _, status, _ in results)
        shares[path] = sum(1 for r in results if r[2] == "a") / len(results)
    assert abs(shares["rr"] - 1 / 3) < 0.05, shares
    # Tolerance: a gets at most 20% (it would get 33% by rotation).
    assert shares[algorithm] < 0.20, shares


def test_p2c_spreads_sequential_load(lb):
    lb.start()
    n = 300
    counts = lb.served_by("/p2c/x", n)
    # Random pairs with equal loads: each server within 33% +- 10 points.
    for who in ("a", "b", "c"):
        assert abs(counts.get(who, 0) / n - 1 / 3) < 0.10, counts


def test_consistent_hash_is_stable_and_removing_one_of_n_remaps_about_1_over_n(lb):
    lb.start()
    keys = [f"user-{i}" for i in range(400)]
    four = {}
    three = {}
    for k in keys:
        status, who = lb.request("/hash4/x", headers={"x-user": k})
        assert status == 200
        four[k] = who
        status, who = lb.request("/hash3/x", headers={"x-user": k})
        assert status == 200
        three[k] = who
    # Stable: the same key again goes to the same server.
    for k in keys[:40]:
        assert lb.request("/hash4/x", headers={"x-user": k})[1] == four[k]
    on_d = [k for k in keys if four[k] == "d"]
    moved = [k for k in keys if four[k] != "d" and three[k] != four[k]]
    assert moved == [], "keys of the servers that stayed do not move"
    # About 1/4 of the keys were on the removed server (tolerance 15%..35%).
    assert 0.15 <= len(on_d) / len(keys) <= 0.35, len(on_d)
    # Distribution: each of the 4 servers holds 25% of the keys, +-12 points.
    for who in ("a", "b", "c", "d"):
        share = sum(1 for k in keys if four[k] == who) / len(keys)
        assert 0.13 <= share <= 0.37, (who, share)


# ---------------------------------------------------------------- failover and health


def test_failover_when_an_origin_is_killed_under_load(lb):
    lb.start()
    threads = 4
    results: list = []
    ts = load(lb, "/rr/x", threads=threads, seconds=3.0, results=results)
    time.sleep(1.0)
    killed_at = time.monotonic()
    lb.kill("c")
    for t in ts:
        t.join()
    errors = [r for r in results if r[1] != 200]
    # Only requests in flight to c when it died may fail: at most one per client.
    assert len(errors) <= threads, errors
    after = [r for r in results if r[0] > killed_at + 0.5]
    assert after and all(r[2] in ("a", "b") for r in after if r[1] == 200)
    assert sum(1 for r in results if r[0] < killed_at and r[2] == "c") > 0, "c served before it died"


def test_health_checks_eject_and_recover_with_thresholds_and_503_when_none_is_healthy(lb):
    lb.start(names=("a", "b"))
    b_port = lb.ports["b"]
    assert set(lb.served_by("/checked/x", 20)) == {"a", "b"}
    lb.kill("b")
    # unhealthy=2: two failed checks mark it down (logged once, by the one checker).
    assert lb.wait_log(f"127.0.0.1:{b_port} is unhealthy (2 failed checks)"), "\n".join(lb.gateway.lines)
    assert sum(f"127.0.0.1:{b_port} is unhealthy" in line for line in lb.gateway.lines) == 1, "one checker, not one per worker"
    # Meanwhile and after, no client error: a is still there.
    assert lb.served_by("/checked/x", 20) == {"a": 20}
    b = lb.revive("b")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, who = lb.request("/checked/x")
        assert status == 200
        if who == "b":
            break
        time.sleep(0.02)
    else:
        pytest.fail("b never got traffic back:\n" + "\n".join(lb.gateway.lines))
    # healthy=2: b served a client only after it had passed two checks.
    order = [r.target for r in b.requests]
    first_client = next(i for i, t in enumerate(order) if t.startswith("/checked"))
    assert order[:first_client].count("/healthz") >= 2, order[: first_client + 1]
    assert lb.wait_log(f"127.0.0.1:{b_port} is healthy again")
    # Nothing healthy: 503 (no panic mode).
    lb.kill("a")
    lb.kill("b")
    assert lb.wait_log(f"127.0.0.1:{lb.ports['a']} is unhealthy")
    assert lb.wait_log(f"127.0.0.1:{b_port} is unhealthy (2 failed checks)", timeout=10)
    time.sleep(0.3)
    assert lb.request("/checked/x")[0] == 503


# ---------------------------------------------------------------- retries


def test_retries_only_where_safe(lb):
    lb.start(names=("a", "b"))
    a, b = lb.origins["a"], lb.origins["b"]
    # Bank some retry budget (20% of requests), and connect failover: the
    # dead server never costs a client error, for GET or POST.
    for i in range(100):
        assert lb.request("/retry/ok")[0] == 200
    for i in range(10):
        status, _ = lb.request(f"/retry/post-ok?i={i}", method="POST", body=b"hello")
        assert status == 200
    posted = [r.target for r in client_requests(a, "/retry/post-ok") + client_requests(b, "/retry/post-ok")]
    assert sorted(posted) == sorted(f"/retry/post-ok?i={i}" for i in range(10)), "each POST reached an origin once"

    # An idempotent GET answered 503 by a is retried on b: no client error.
    for i in range(12):
        status, who = lb.request(f"/retry/get?fail=a&i={i}")
        assert (status, who) == (200, "b")
    assert client_requests(a, "/retry/get"), "a did answer 503 to some"

    # A POST whose body was sent is never retried, whatever the status.
    for i in range(10):
        status, _ = lb.request(f"/retry/post?fail=a,b&i={i}", method="POST", body=b"x" * 100)
        assert status == 503
    got = [r.target for r in client_requests(a, "/retry/post") + client_requests(b, "/retry/post")]
    got = [t for t in got if not t.startswith("/retry/post-ok")]
    assert sorted(got) == sorted(f"/retry/post?fail=a,b&i={i}" for i in range(10)), got
    # Nor an idempotent PUT with a body: bodies are streamed, not kept for a replay.
    status, _ = lb.request("/retry/put?fail=a,b", method="PUT", body=b"y" * 100)
    assert status == 503
    assert len(client_requests(a, "/retry/put") + client_requests(b, "/retry/put")) == 1

    # A GET that times out on a (stall) is retried on b; a POST is not.
    for i in range(4):
        status, who = lb.request(f"/retry/slow?stall=a&i={i}")
        assert (status, who) == (200, "b")
    for i in range(6):
        lb.request(f"/retry/slow-post?stall=a&i={i}", method="POST", body=b"z")
    slow_posts = [r.target for r in client_requests(a, "/retry/slow-post") + client_requests(b, "/retry/slow-post")]
    assert sorted(slow_posts) == sorted(f"/retry/slow-post?stall=a&i={i}" for i in range(6)), slow_posts


def test_total_deadline_stops_retries(lb):
    """Both servers stall; response timeout 500 ms per try, `total="800ms"`:
    the first try times out, the second is cut to the 300 ms left and times
    out too, and no third try starts (attempts=2 would allow one)."""
    lb.start(names=("a", "b"))
    assert lb.request("/deadline/x?stall=a,b")[0] == 504
    time.sleep(0.5)  # a third try, if one started wrongly, would have reached an origin by now
    got = client_requests(lb.origins["a"], "/deadline") + client_requests(lb.origins["b"], "/deadline")
    assert len(got) == 2, [r.target for r in got]


def test_retry_budget_bounds_retries_during_an_outage(lb):
    """Every server answers 503 and `retry attempts=3 on="503"`: without a
    budget each request would be sent 4 times; the budget allows 20% more
    plus a floor of 3 per second per worker."""
    lb.start(names=("a", "b"))
    n = 100
    started = time.monotonic()
    for i in range(n):
        assert lb.request(f"/budget/x?fail=a,b&i={i}")[0] == 503
    elapsed = time.monotonic() - started
    sent = len(client_requests(lb.origins["a"], "/budget")) + len(client_requests(lb.origins["b"], "/budget"))
    bound = n + n // 5 + 3 * WORKERS * (int(elapsed) + 1)
    assert n < sent <= bound, (sent, bound, elapsed)


# ---------------------------------------------------------------- retries of HTTP/2 streams


def h2_request(conn: H2Client, path: str, method: str = "GET", body: bytes | None = None):
    """(status, x-origin, body) of one stream on `conn`."""
    r = conn.request(path, method=method, body=body)
    assert r.reset is None, (path, r)
    who = r.header("x-origin")
    return r.status, who[0] if who else None, r.body


def test_h2_streams_are_retried_only_where_safe(lb):
    """The HTTP/1.1 retry policy, over HTTP/2 streams (one connection, so
    one worker and one retry budget)."""
    lb.start(names=("a", "b"))
    a, b = lb.origins["a"], lb.origins["b"]
    with lb.h2() as conn:
        # Bank retry budget (20% of requests); the dead server is failed
        # over at connect.
        for i in range(60):
            assert h2_request(conn, f"/retry/ok?i={i}")[0] == 200

        # A GET answered 503 by a is retried on b: the client gets b's 200
        # (a's 503 and its body never reach it), and a saw each GET once at
        # most (a retry never goes back to the server that failed).
        for i in range(12):
            assert h2_request(conn, f"/retry/h2get?fail=a&i={i}") == (200, "b", b"b\n")
        at_a = [r.target for r in client_requests(a, "/retry/h2get")]
        assert at_a, "a did answer 503 to some"
        assert len(at_a) == len(set(at_a)), at_a
        at_b = sorted(r.target for r in client_requests(b, "/retry/h2get"))
        assert at_b == sorted(f"/retry/h2get?fail=a&i={i}" for i in range(12)), at_b

        # A GET that times out on a (stall, past `timeouts response`) is
        # retried on b.
        for i in range(3):
            assert h2_request(conn, f"/retry/h2slow?stall=a&i={i}")[:2] == (200, "b")

        # A POST whose body was sent is never retried: each reached one
        # origin once, and the client gets that origin's 503.
        for i in range(8):
            status, who, _ = h2_request(conn, f"/retry/h2post?fail=a,b&i={i}", method="POST", body=b"x" * 100)
            assert status == 503 and who in ("a", "b"), (status, who)
        posted = [r.target for r in client_requests(a, "/retry/h2post") + client_requests(b, "/retry/h2post")]
        assert sorted(posted) == sorted(f"/retry/h2post?fail=a,b&i={i}" for i in range(8)), posted
        # Nor an idempotent PUT with a body, nor a POST that timed out.
        assert h2_request(conn, "/retry/h2put?fail=a,b", method="PUT", body=b"y" * 100)[0] == 503
        assert len(client_requests(a, "/retry/h2put") + client_requests(b, "/retry/h2put")) == 1
        for i in range(4):
            conn.request(f"/retry/h2slow-post?stall=a&i={i}", method="POST", body=b"z")
        slow = [r.target for r in client_requests(a, "/retry/h2slow-post") + client_requests(b, "/retry/h2slow-post")]
        assert sorted(slow) == sorted(f"/retry/h2slow-post?stall=a&i={i}" for i in range(4)), slow


def test_h2_total_deadline_stops_retries(lb):
    """As over HTTP/1.1: response timeout 500 ms a try, `total="800ms"`:
    two tries (the second cut to 300 ms), no third, and a 504."""
    lb.start(names=("a", "b"))
    with lb.h2() as conn:
        assert h2_request(conn, "/deadline/h2?stall=a,b")[0] == 504
    time.sleep(0.5)  # a third try, if one started wrongly, would have reached an origin by now
    got = client_requests(lb.origins["a"], "/deadline") + client_requests(lb.origins["b"], "/deadline")
    assert len(got) == 2, [r.target for r in got]


def test_h2_retry_budget_bounds_retries_during_an_outage(lb):
    """Every server answers 503, `retry attempts=3 on="503"`, over HTTP/2:
    retries happen, within the budget of 20% of the requests plus 3 a
    second. One connection is one worker, so one budget."""
    lb.start(names=("a", "b"))
    n = 100
    started = time.monotonic()
    with lb.h2() as conn:
        for i in range(n):
            assert h2_request(conn, f"/budget/h2?fail=a,b&i={i}")[0] == 503
    elapsed = time.monotonic() - started
    sent = len(client_requests(lb.origins["a"], "/budget")) + len(client_requests(lb.origins["b"], "/budget"))
    bound = n + n // 5 + 3 * (int(elapsed) + 1)
    assert n < sent <= bound, (sent, bound, elapsed)


# ---------------------------------------------------------------- DNS


def test_a_server_named_by_dns(lb):
    lb.start(names=("a",))
    # localhost may also resolve to ::1, where nothing listens: that
    # endpoint is refused and fails over, never a client error.
    assert lb.served_by("/dns/x", 20) == {"a": 20}


def test_dns_answers_are_followed_by_ttl_without_dropping_other_pools(lb, dns):
    """svc.test (TTL 1 s) moves from 127.0.0.1 to 127.0.0.2: traffic follows
    within the TTL plus a worker tick, with no client error, and the other
    server's pooled connections are kept (it sees no new connection)."""
    lb.start(names=("c",))
    port = lb.ports["s"]
    old = lb_origin("s-old", port, host="127.0.0.1")
    new = lb_origin("s-new", port, host="127.0.0.2")
    lb.origins["s-old"], lb.origins["s-new"] = old, new
    before = lb.served_by("/ttl/x", 40)
    assert set(before) == {"s-old", "c"}, before
    c_conns = lb.origins["c"].accepted
    dns.set("svc.test", ["127.0.0.2"])
    assert lb.wait_log(f"svc.test is now [127.0.0.2:{port}]"), "\n".join(lb.gateway.lines)
    # Each worker adopts the new list on its next tick (once a second);
    # requests meanwhile still succeed (the old address is still up).
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert lb.request("/ttl/x")[0] == 200
        time.sleep(0.05)
    after = lb.served_by("/ttl/x", 40)
    assert set(after) == {"s-new", "c"}, after
    assert lb.origins["c"].accepted == c_conns, "c's idle connections survived the DNS change"
