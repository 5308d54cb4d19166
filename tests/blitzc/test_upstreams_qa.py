"""Upstreams, black-box QA (issue #6): what tests/blitzc/test_upstreams.py
does not cover. A gateway built by `blitzc build` from the spec below, with
ONE worker, so that each balancer, passive health and the retry budget are
exact (they are per worker), and real origins that say who they are.

The origins are test_upstreams.py's (`lb_origin`: `fail=`, `stall=`,
`delay=` in the query), with health endpoints a test can steer:
`/healthz` answers the origin's `hc_status` (200 unless a test changes it;
"bare": a status line without a reason phrase, as every path ending in
`/bare` gets), `/hc` answers 204 on a and 200 elsewhere; `wait=SECONDS`
in the query delays any origin's answer.

Nothing asserts a timing; waits only bound how long a test blocks.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import parse_qs

import pytest

from support.blitzc import build_with_ports
from support.h2client import RawH2
from support.origin import Origin, respond
from support.waits import wait_until
from test_upstreams import Setup, client_requests, lb_origin

NAMES = ("a", "b", "c", "d")

SPEC = """
version 1
gateway "lbqa" {{
    workers 1
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
    protocols "h1" "h2c"
}}
upstream "w31" {{
    balance "weighted-round-robin"
    server "127.0.0.1:{a}" weight=3
    server "127.0.0.1:{b}" weight=1
}}
upstream "w0" {{
    balance "weighted-round-robin"
    server "127.0.0.1:{a}" weight=2
    server "127.0.0.1:{b}" weight=0
    server "127.0.0.1:{c}" weight=1
}}
upstream "hashw" {{
    balance "consistent-hash" key="header:x-user"
    server "127.0.0.1:{a}" weight=3
    server "127.0.0.1:{b}" weight=1
}}
upstream "hashhc" {{
    balance "consistent-hash" key="header:x-user"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
    health-check path="/healthz" interval="200ms" timeout="300ms" healthy=1 unhealthy=1
}}
upstream "hashpath" {{
    balance "consistent-hash" key="path"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
    server "127.0.0.1:{d}"
}}
upstream "expect" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    health-check path="/hc" interval="200ms" timeout="300ms" healthy=1 unhealthy=1 expect="204"
}}
upstream "passive" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
}}
upstream "alldead" {{
    server "127.0.0.1:{dead1}"
    server "127.0.0.1:{dead2}"
    timeouts connect="500ms"
}}
upstream "blackhole" {{
    server "127.0.0.1:{bh}"
    timeouts connect="300ms"
}}
upstream "ctotal" {{
    server "127.0.0.1:{bh}"
    server "127.0.0.1:{a}"
    timeouts connect="400ms" response="2s"
    retry attempts=1 on="connect-error" total="300ms"
}}
upstream "lc" {{
    balance "least-conn"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
}}
upstream "rtotal" {{
    server "127.0.0.1:{bh}"
    server "127.0.0.1:{a}"
    timeouts connect="200ms" response="2s"
    retry attempts=1 on="connect-error" total="700ms"
}}
upstream "retry1" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
    retry attempts=1 on="503"
}}
upstream "pool" {{
    server "127.0.0.1:{a}"
    pool max-idle=1 idle-timeout="1s"
}}
upstream "nopool" {{
    server "127.0.0.1:{b}"
    pool max-idle=0
}}
route "w31" {{
    match {{ path-prefix "/w31" }}
    proxy "w31"
}}
route "w0" {{
    match {{ path-prefix "/w0" }}
    proxy "w0"
}}
route "hashw" {{
    match {{ path-prefix "/hashw" }}
    proxy "hashw"
}}
route "hashhc" {{
    match {{ path-prefix "/hashhc" }}
    proxy "hashhc"
}}
route "hashpath" {{
    match {{ path-prefix "/hashpath" }}
    proxy "hashpath"
}}
route "expect" {{
    match {{ path-prefix "/expect" }}
    proxy "expect"
}}
route "passive" {{
    match {{ path-prefix "/passive" }}
    proxy "passive"
}}
route "alldead" {{
    match {{ path-prefix "/alldead" }}
    proxy "alldead"
}}
route "blackhole" {{
    match {{ path-prefix "/blackhole" }}
    proxy "blackhole"
}}
route "ctotal" {{
    match {{ path-prefix "/ctotal" }}
    proxy "ctotal"
}}
route "lc" {{
    match {{ path-prefix "/lc" }}
    proxy "lc"
}}
route "rtotal" {{
    match {{ path-prefix "/rtotal" }}
    proxy "rtotal"
}}
route "retry1" {{
    match {{ path-prefix "/retry1" }}
    proxy "retry1"
}}
route "pool" {{
    match {{ path-prefix "/pool" }}
    proxy "pool"
}}
route "nopool" {{
    match {{ path-prefix "/nopool" }}
    proxy "nopool"
}}
"""


def qa_origin(name: str, port: int) -> Origin:
    """test_upstreams.py's origin, with steerable health endpoints."""
    origin = lb_origin(name, port)
    origin.hc_status = 200
    inner = origin.handler

    def handler(req, conn):
        path = req.target.partition("?")[0]
        if path == "/healthz" or path.endswith("/bare"):
            if origin.hc_status == "bare" or path.endswith("/bare"):
                # A status line without a reason phrase (and its space).
                conn.send(b"HTTP/1.1 200\r\ncontent-length: 3\r\nx-origin: " + name.encode() + b"\r\n\r\nhc\n")
                return True
            return respond(conn, req, origin.hc_status, b"hc\n")
        if path == "/hc":
            return respond(conn, req, 204 if name == "a" else 200)
        wait = parse_qs(req.target.partition("?")[2]).get("wait")
        if wait and not conn.sleep(float(wait[0])):
            return False
        return inner(req, conn)

    origin.handler = handler
    return origin


class QaSetup(Setup):
    def start(self, names=NAMES) -> "QaSetup":
        for n in names:
            self.origins[n] = qa_origin(n, self.ports[n])
        return super().start(names=())

    def revive(self, name: str) -> Origin:
        self.origins[name] = qa_origin(name, self.ports[name])
        return self.origins[name]

    def served(self, path: str, headers=None) -> str | None:
        status, who = self.request(path, headers=headers)
        assert status == 200, (path, status, who)
        return who


@pytest.fixture(scope="module")
def qa_binary(blitzc, cache_dir, tmp_path_factory):  # noqa: F811
    return build_with_ports(blitzc, cache_dir, tmp_path_factory.mktemp("lbqa"), "lbqa", SPEC,
                            (*NAMES, "dead1", "dead2", "bh", "gw"))


@pytest.fixture
def qa(qa_binary, cache_dir):
    binary, ports = qa_binary
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    setup = QaSetup(binary, ports, env)
    try:
        yield setup
    finally:
        setup.stop()



# ---------------------------------------------------------------- weights


def test_weighted_round_robin_3_to_1_is_exact_per_window_and_weight_0_is_never_picked(qa):
    qa.start(names=("a", "b", "c"))
    # One worker: smooth WRR is exact over every window of sum(weights) picks.
    seq = [qa.served("/w31/x") for _ in range(40)]
    for i in range(0, 40, 4):
        window = seq[i : i + 4]
        assert sorted(window) == ["a", "a", "a", "b"], (i, seq)
    seq = [qa.served("/w0/x") for _ in range(60)]
    assert "b" not in seq, seq
    assert seq.count("a") == 40 and seq.count("c") == 20, seq
    assert not client_requests(qa.origins["b"], "/w0"), "weight 0 never gets a request"


def test_consistent_hash_honours_weights(qa):
    qa.start(names=("a", "b"))
    keys = [f"k{i}" for i in range(400)]
    where = {k: qa.served("/hashw/x", headers={"x-user": k}) for k in keys}
    share = sum(1 for w in where.values() if w == "a") / len(keys)
    # weight 3:1 -> 75% of the keys on a; tolerance +-10 points.
    assert 0.65 <= share <= 0.85, share
    # Stable, and the header name is case-insensitive (the value is the key).
    for k in keys[:30]:
        assert qa.served("/hashw/x", headers={"X-User": k}) == where[k], k


def test_consistent_hash_on_the_path_ignores_the_query_and_uses_the_normalised_path(qa):
    qa.start()
    for i in range(30):
        who = qa.served(f"/hashpath/item{i}")
        assert qa.served(f"/hashpath/item{i}?v={i}") == who, i
        assert qa.served(f"/hashpath/./x/../item{i}") == who, i
    spread = {qa.served(f"/hashpath/item{i}") for i in range(60)}
    assert len(spread) >= 3, spread


# ---------------------------------------------------------------- active health


def test_consistent_hash_keys_of_a_server_failing_its_check_move_and_come_back(qa):
    """b starts answering its health check 500 (it still serves requests):
    it is taken out (unhealthy=1), only its keys move, to the next server on
    the ring; when the check passes again (healthy=1) they come back."""
    qa.start(names=("a", "b", "c"))
    keys = [f"user-{i}" for i in range(150)]
    before = {k: qa.served("/hashhc/x", headers={"x-user": k}) for k in keys}
    assert set(before.values()) == {"a", "b", "c"}, before
    b_port = qa.ports["b"]
    qa.origins["b"].hc_status = 500
    assert qa.wait_log(f'"hashhc": 127.0.0.1:{b_port} is unhealthy (1 failed checks)'), "\n".join(qa.gateway.lines)
    during = {k: qa.served("/hashhc/x", headers={"x-user": k}) for k in keys}
    assert "b" not in during.values(), during
    moved = [k for k in keys if before[k] != "b" and during[k] != before[k]]
    assert moved == [], "keys of the healthy servers stay where they were"
    qa.origins["b"].hc_status = 200
    assert qa.wait_log(f'"hashhc": 127.0.0.1:{b_port} is healthy again'), "\n".join(qa.gateway.lines)
    after = {k: qa.served("/hashhc/x", headers={"x-user": k}) for k in keys}
    assert after == before


def test_a_health_check_answered_without_a_reason_phrase_passes(qa):
    """`HTTP/1.1 200` with no reason phrase is a 200 to the proxy (it
    relays it); the checker must read it as a 200 too, not mark the server
    down for a response the data path accepts."""
    qa.start(names=("a", "b", "c"))
    b = qa.origins["b"]
    b.hc_status = "bare"
    # The data path takes it.
    assert qa.request("/passive/bare")[0] == 200
    checks_before = len([r for r in b.requests if r.target == "/healthz"])
    assert b.wait_for(lambda: len([r for r in b.requests if r.target == "/healthz"]) >= checks_before + 3, timeout=10)
    time.sleep(0.1)  # the verdict of the last check is logged
    assert not any(f'"hashhc": 127.0.0.1:{qa.ports["b"]} is unhealthy' in line for line in qa.gateway.lines), (
        "\n".join(qa.gateway.lines)
    )
    served = {qa.served("/hashhc/x", headers={"x-user": f"u{i}"}) for i in range(60)}
    assert "b" in served, served


def test_health_check_path_and_expected_status_are_honoured_and_none_healthy_is_503(qa):
    """`path="/hc" expect="204"`: a answers 204 (healthy), b answers 200,
    which is not expected, so b is taken out though it serves requests."""
    qa.start(names=("a", "b"))
    b_port = qa.ports["b"]
    assert qa.wait_log(f'"expect": 127.0.0.1:{b_port} is unhealthy (1 failed checks)'), "\n".join(qa.gateway.lines)
    assert not any(f"\"expect\": 127.0.0.1:{qa.ports['a']} is unhealthy" in line for line in qa.gateway.lines)
    counts = {}
    for _ in range(20):
        who = qa.served("/expect/x")
        counts[who] = counts.get(who, 0) + 1
    assert counts == {"a": 20}, counts
    # The checks went to the configured path, as GET, with a Host.
    checks = [r for r in qa.origins["a"].requests if r.target == "/hc"]
    assert checks and all(r.method == "GET" and r.header("host") for r in checks), checks
    # a stops answering 204 as well: nothing is healthy, 503 at once (no
    # request reaches an origin).
    qa.origins["a"].handler = lambda req, conn: respond(conn, req, 200, b"a\n", headers=("x-origin: a",))
    assert qa.wait_log(f'"expect": 127.0.0.1:{qa.ports["a"]} is unhealthy (1 failed checks)'), "\n".join(qa.gateway.lines)
    n_a = len(client_requests(qa.origins["a"], "/expect"))
    n_b = len(client_requests(qa.origins["b"], "/expect"))
    for _ in range(5):
        assert qa.request("/expect/none")[0] == 503
    assert len(client_requests(qa.origins["a"], "/expect")) == n_a
    assert len(client_requests(qa.origins["b"], "/expect")) == n_b


# ---------------------------------------------------------------- passive health


def test_passive_ejection_after_three_5xx_then_retried_after_the_ejection(qa):
    """No health check, no retry: a answers 503. After 3 failures in a row
    it is ejected (2 s): requests sent meanwhile all go to b. Once the
    ejection ends, a gets requests again."""
    qa.start(names=("a", "b"))
    a = qa.origins["a"]
    failures = 0
    started = []
    while failures < 3:
        assert len(started) < 20, "a never failed three times"
        started.append(time.monotonic())
        status, who = qa.request("/passive/f?fail=a")
        if who == "a":
            assert status == 503, "the origin's 503 is relayed (no retry policy)"
            failures += 1
        else:
            assert (status, who) == (200, "b")
    ejected_at = time.monotonic()
    during = []
    for i in range(10):
        t = time.monotonic()
        status, who = qa.request(f"/passive/e?fail=a&i={i}")
        during.append((t, status, who))
    # Only requests started well inside the 2 s ejection are asserted on.
    inside = [r for r in during if r[0] < ejected_at + 1.5]
    assert inside, "the loop was too slow to say anything"
    assert all(r[1:] == (200, "b") for r in inside), during
    # The ejection ends: a is tried again (and now answers 200).
    assert wait_until(lambda: qa.request("/passive/back")[1] == "a", timeout=10), "a never came back"
    assert client_requests(a, "/passive/back")


def test_when_every_server_is_ejected_they_are_all_still_tried(qa):
    """Both servers answer 503 until ejected: the clients keep getting the
    origins' own answers (tried anyway), never a gateway 503 without one."""
    qa.start(names=("a", "b"))
    for i in range(12):
        status, who = qa.request(f"/passive/all?fail=a,b&i={i}")
        assert status == 503 and who in ("a", "b"), (i, status, who)
    # Recovery: both answer 200 again. The first success ends its server's
    # ejection; the other one serves again once its own ejection ends.
    seen = set()
    assert wait_until(lambda: seen.add(qa.served("/passive/ok")) or seen == {"a", "b"}, timeout=40), seen


# ---------------------------------------------------------------- error mapping


def blackhole_listener(port: int) -> tuple[socket.socket, list[socket.socket]]:
    """A listener on `port` whose accept queue is full: SYNs to it are
    dropped, so connects to it time out (not refused)."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.2)
    return lsock, fillers


def test_error_mapping_refused_is_502_connect_timeout_is_504(qa):
    qa.start(names=())
    for _ in range(3):
        assert qa.request("/alldead/x")[0] == 502
    lsock, fillers = blackhole_listener(qa.ports["bh"])
    try:
        # Check the premise: a connect from here times out too.
        probe = socket.socket()
        probe.settimeout(0.3)
        with pytest.raises(OSError):
            probe.connect(("127.0.0.1", qa.ports["bh"]))
        probe.close()
        for _ in range(2):
            assert qa.request("/blackhole/x")[0] == 504
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_connect_failover_does_not_outlive_the_total_deadline(qa):
    """`retry total="300ms"`, `timeouts connect="400ms"`: a connect to the
    blackholed server is cut to the 300 ms the total leaves, and then the
    total has passed, so no other server is tried: 504 (spec 7.1: "no try
    starts once it has passed"). Round-robin on one worker starts every
    other request at the blackholed server (until it is ejected), so of 4
    requests at least one must be a 504; a (alive) never sees those."""
    qa.start(names=("a",))
    lsock, fillers = blackhole_listener(qa.ports["bh"])
    try:
        statuses = [qa.request(f"/ctotal/x?i={i}")[0] for i in range(4)]
    finally:
        for s in fillers:
            s.close()
        lsock.close()
    assert set(statuses) <= {200, 504}, statuses
    assert 504 in statuses, statuses
    assert len(client_requests(qa.origins["a"], "/ctotal")) == statuses.count(200), statuses


def test_the_response_wait_after_a_connect_failover_is_cut_to_what_total_leaves(qa):
    """`total="700ms"`, connect 200 ms, response 2 s; a answers after 0.6 s.
    A request that first meets the blackholed server fails over to a at
    about 200 ms, with 500 ms of the total left: a's answer at about 800 ms
    is past the total, so 504. (Before, the response timeout was cut once,
    before connecting, to the whole 700 ms, and ran from the failover: a
    200 at 800 ms.) Round-robin on one worker starts requests at the
    blackholed server until it is ejected."""
    qa.start(names=("a",))
    lsock, fillers = blackhole_listener(qa.ports["bh"])
    try:
        statuses = [qa.request(f"/rtotal/x?wait=0.6&i={i}")[0] for i in range(4)]
    finally:
        for s in fillers:
            s.close()
        lsock.close()
    assert set(statuses) <= {200, 504}, statuses
    assert 504 in statuses, statuses


# ---------------------------------------------------------------- retries


def test_retry_attempts_are_bounded_and_go_to_another_server(qa):
    """`retry attempts=1 on="503"`, three servers all answering 503: each
    GET is sent exactly twice, to two different servers, and the client
    gets the second 503."""
    qa.start(names=("a", "b", "c"))
    for i in range(60):  # bank retry budget: 60 requests = 12 retries
        qa.served(f"/retry1/ok?i={i}")
    for i in range(8):
        status, who = qa.request(f"/retry1/f?fail=a,b,c&i={i}")
        assert status == 503 and who in ("a", "b", "c"), (status, who)
    for i in range(8):
        target = f"/retry1/f?fail=a,b,c&i={i}"
        got = [n for n, o in qa.origins.items() for r in client_requests(o, "/retry1/f") if r.target == target]
        assert len(got) == 2 and got[0] != got[1], (target, got)
    # Other idempotent methods without a body are retried alike; a POST
    # without a body is not (not idempotent).
    for method in ("HEAD", "DELETE", "OPTIONS", "POST"):
        target = f"/retry1/m?fail=a,b,c&m={method}"
        status, _ = qa.request(target, method=method)
        assert status == 503, (method, status)
        got = [r.method for o in qa.origins.values() for r in client_requests(o, "/retry1/m") if r.target == target]
        assert got == [method] * (1 if method == "POST" else 2), (method, got)


# ---------------------------------------------------------------- pools


def client_conns(origin: Origin, prefix: str) -> set[int]:
    """The ids of `origin`'s connections that carried requests under `prefix`
    (health checks open connections of their own)."""
    return {r.conn_id for r in client_requests(origin, prefix)}


def test_pool_max_idle_and_idle_timeout_are_honoured(qa):
    qa.start(names=("a", "b"))
    a, b = qa.origins["a"], qa.origins["b"]
    # Sequential requests reuse one connection.
    for _ in range(5):
        qa.served("/pool/x")
    assert len(client_conns(a, "/pool")) == 1, client_conns(a, "/pool")
    # Four at once need four connections; max-idle=1 keeps one of them.
    results = []

    def one():
        results.append(qa.request("/pool/y?delay=a"))

    ts = [threading.Thread(target=one) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == [(200, "a")] * 4, results
    assert len(client_conns(a, "/pool/y")) == 4, client_conns(a, "/pool/y")

    def open_pool_conns():
        return [c for c in a.open_conns() if c.id in client_conns(a, "/pool")]

    assert wait_until(lambda: len(open_pool_conns()) == 1, timeout=5), open_pool_conns()
    # idle-timeout=1s: the idle one is closed by the gateway.
    assert wait_until(lambda: len(open_pool_conns()) == 0, timeout=6), open_pool_conns()
    # max-idle=0: nothing is kept, every request opens a connection.
    for _ in range(4):
        qa.served("/nopool/x")
    assert len(client_conns(b, "/nopool")) == 4, client_conns(b, "/nopool")
    assert wait_until(lambda: not [c for c in b.open_conns() if c.id in client_conns(b, "/nopool")], timeout=5)


def test_a_connection_busy_longer_than_the_idle_timeout_is_still_reused(qa):
    """`idle-timeout="1s"` is about idle time: a connection whose exchange
    took 2 s (the origin stalls) was idle for no time when it came back,
    so the next request reuses it (nginx's and HAProxy's keep-alive
    timeouts also run from the end of the last exchange)."""
    qa.start(names=("a",))
    a = qa.origins["a"]
    assert qa.request("/pool/slow?stall=a") == (200, "a")
    assert qa.request("/pool/next") == (200, "a")
    assert len(client_conns(a, "/pool")) == 1, [(r.conn_id, r.target) for r in client_requests(a, "/pool")]


# ---------------------------------------------------------------- in-flight counts


def test_least_conn_forgets_the_streams_of_an_http2_connection_that_went_away(qa):
    """An HTTP/2 client holds a stream at a (which stalls) and drops its
    connection: the stream is cancelled, and a's in-flight count on the
    worker must go back down. If it leaked, least-conn would send every
    later request to b (0 in flight) for as long as the gateway runs."""
    qa.start(names=("a", "b"))
    a = qa.origins["a"]
    h2 = RawH2(f"127.0.0.1:{qa.ports['gw']}")
    try:
        for i in range(6):
            h2.headers(1 + 2 * i, path=f"/lc/hold?stall=a&i={i}")
            if a.wait_for(lambda: client_requests(a, "/lc/hold"), timeout=0.5):
                break
        assert client_requests(a, "/lc/hold"), "no stream reached a"
    finally:
        h2.close()
    # Past a's stall (2 s): had the stream not been cancelled, it is over
    # by now as well, and a's count is back down either way.
    time.sleep(2.5)
    seq = [qa.served(f"/lc/after?i={i}") for i in range(10)]
    # Nothing in flight: least-conn's ties go in turn.
    assert seq.count("a") >= 4, seq

    # The same over HTTP/1.1: a client that hangs up while a stalls.
    socks = []
    try:
        for i in range(6):
            sock = socket.create_connection(("127.0.0.1", qa.ports["gw"]), timeout=5)
            socks.append(sock)
            sock.sendall(f"GET /lc/hold1?stall=a&i={i} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            if a.wait_for(lambda: client_requests(a, "/lc/hold1"), timeout=0.5):
                break
        assert client_requests(a, "/lc/hold1"), "no request reached a"
    finally:
        for sock in socks:
            sock.close()
    time.sleep(2.5)
    seq = [qa.served(f"/lc/after1?i={i}") for i in range(10)]
    assert seq.count("a") >= 4, seq
