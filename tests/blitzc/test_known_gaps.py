"""Known gaps closed after the QA passes, end to end with a gateway built by
`blitzc build` from the spec below (ONE worker, so per-worker logs are
exact) and real origins, a real DNS server (support/dns_server.py) and a
real TLS origin (support/pki.py):

- Active health checks run on each endpoint's own schedule: a server that
  accepts a check and never answers (with a long `timeout`) delays no
  other upstream's checks, so a dead server elsewhere is still marked down
  within a few of its own intervals (503 instead of 502).
- An address DNS removes and later re-adds is a new endpoint: its failed
  checks before the removal are forgotten, it needs `unhealthy` failures
  again to be marked down.
- After a SIGHUP reloaded the upstream CA files, a failed upstream TLS
  handshake is logged again (once per server and worker, and per reload).

Each test starts its own gateway process and origins. Nothing asserts a
timing: waits only bound how long a test blocks, with bounds far above
what the behaviour needs.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from support.blitzc import Served, build
from support.dns_server import DnsServer
from support.gateway import free_port
from support.origin import Origin, respond
from support.pki import Pki, TlsOrigin

SPEC = """
version 1
gateway "gaps" {{
    workers 1
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
}}
upstream "silent" {{
    server "127.0.0.1:{silent}"
    health-check path="/healthz" interval="200ms" timeout="60s" unhealthy=1
}}
upstream "lone" {{
    server "127.0.0.1:{lone}"
    health-check path="/healthz" interval="200ms" timeout="200ms" healthy=1 unhealthy=2
}}
upstream "named" {{
    server "svc.test:{named}"
    health-check path="/healthz" interval="200ms" timeout="300ms" healthy=1 unhealthy=3
}}
upstream "secure" {{
    server "127.0.0.1:{secure}" tls=#true sni="origin.test" ca="ca.pem"
}}
route "silent" {{
    match {{ path-prefix "/silent" }}
    proxy "silent"
}}
route "lone" {{
    match {{ path-prefix "/lone" }}
    proxy "lone"
}}
route "named" {{
    match {{ path-prefix "/named" }}
    proxy "named"
}}
route "secure" {{
    match {{ path-prefix "/secure" }}
    proxy "secure"
}}
"""


def origin_on(host: str, port: int, healthz: int = 200) -> Origin:
    """An origin answering `/healthz` with `healthz` and anything else 200."""
    origin = Origin(host=host, port=port)

    def handler(req, conn):
        status = healthz if req.target.startswith("/healthz") else 200
        return respond(conn, req, status, b"ok\n")

    origin.handler = handler
    return origin


class Built:
    def __init__(self, binary: Path, folder: Path, ports: dict, pki: tuple[Pki, Pki], secure: TlsOrigin, dns: DnsServer):
        self.binary, self.folder, self.ports, self.secure, self.dns = binary, folder, ports, secure, dns
        self.wrong_ca, self.origin_ca = pki


@pytest.fixture(scope="module")
def built(blitzc, cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gaps")
    # The origin's certificate is issued by one CA; the gateway trusts another.
    wrong_ca = Pki(tmp_path_factory.mktemp("gaps-ca-a"))
    origin_ca = Pki(tmp_path_factory.mktemp("gaps-ca-b"))
    origin_ca.leaf("origin", "origin.test")
    shutil.copy(wrong_ca.path("ca.crt"), folder / "ca.pem")
    secure = TlsOrigin(origin_ca.path("origin.crt"), origin_ca.path("origin.key"))
    dns = DnsServer({"svc.test": ["127.0.0.1"]}, ttl=1)
    ports = {n: free_port() for n in ("gw", "silent", "lone", "named")}
    ports["secure"] = secure.port
    spec = folder / "gaps.kdl"
    spec.write_text(SPEC.format(**ports))
    out = folder / "gaps-gateway"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    yield Built(out, folder, ports, (wrong_ca, origin_ca), secure, dns)
    secure.stop()
    dns.stop()


class Run:
    """One gateway process and the origins a test starts."""

    def __init__(self, built: Built):
        self.b = built
        self.origins: list[Origin] = []
        self.gateway: Served | None = None
        self.sockets: list[socket.socket] = []

    def start(self) -> "Run":
        env = dict(os.environ, BLITZ_DNS_SERVER=self.b.dns.addr)
        self.gateway = Served([str(self.b.binary)], self.b.ports["gw"], env)
        return self

    def origin(self, host: str, port: int, healthz: int = 200) -> Origin:
        o = origin_on(host, port, healthz)
        self.origins.append(o)
        return o

    def status(self, path: str) -> int:
        """The status of one request on a new connection (0 if it failed)."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.b.ports["gw"], timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp.status
        except (OSError, http.client.HTTPException):
            return 0

    def count(self, text: str) -> int:
        return sum(text in line for line in self.gateway.lines)

    def wait_log(self, text: str, n: int = 1, timeout: float = 10.0) -> bool:
        """Whether `text` is in at least `n` log lines within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(text) >= n:
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        return "\n".join(self.gateway.lines[-40:])

    def stop(self) -> None:
        try:
            if self.gateway is not None:
                assert self.gateway.stop() == 0, "graceful exit:\n" + self.log()
        finally:
            for o in self.origins:
                o.stop()
            for s in self.sockets:
                s.close()


@pytest.fixture
def run(built):
    built.dns.set("svc.test", ["127.0.0.1"])
    built.secure.reset()
    r = Run(built)
    try:
        yield r
    finally:
        r.stop()


def wait_status(run: Run, path: str, want: int, timeout: float) -> list[int]:
    """Requests `path` until it answers `want` (or `timeout`); the statuses seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(run.status(path))
        if seen[-1] == want:
            break
        time.sleep(0.05)
    return seen


# ---------------------------------------------------------------- per-endpoint check schedules


def test_a_silent_server_with_a_long_check_timeout_does_not_delay_other_upstreams_checks(run):
    """`silent` accepts checks and never answers (timeout 60 s); `lone`'s only
    server dies. Its checks (every 200 ms, unhealthy=2) mark it down within
    about half a second: requests get 503 (nothing healthy) instead of 502
    (connect refused). Checks run as one batch would wait for the silent
    check, and `lone` would stay up (502) for the whole minute."""
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", run.b.ports["silent"]))
    silent.listen(64)  # connections complete in the backlog; nothing is ever read or answered
    run.sockets.append(silent)
    lone = run.origin("127.0.0.1", run.b.ports["lone"])
    run.start()
    assert run.status("/lone/x") == 200
    lone.stop()
    run.origins.remove(lone)
    # Marked down after 2 failed checks (~0.4 s): bound 10 s, far below the silent check's 60 s.
    seen = wait_status(run, "/lone/x", 503, timeout=10)
    assert seen[-1] == 503, (seen, run.log())
    assert set(seen) <= {502, 503}, seen
    assert run.wait_log(f"127.0.0.1:{run.b.ports['lone']} is unhealthy (2 failed checks)", timeout=1), run.log()
    # The silent server's check is still waiting: it was not counted yet.
    assert run.count(f"127.0.0.1:{run.b.ports['silent']} is unhealthy") == 0, run.log()


def test_a_server_that_comes_back_up_is_seen_while_a_silent_check_waits(run):
    """Same silent server; `lone` starts dead, is marked down (503), then
    comes back: with healthy=1 it serves again after one passed check."""
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", run.b.ports["silent"]))
    silent.listen(64)
    run.sockets.append(silent)
    run.start()
    seen = wait_status(run, "/lone/x", 503, timeout=10)
    assert seen[-1] == 503, (seen, run.log())
    run.origin("127.0.0.1", run.b.ports["lone"])
    seen = wait_status(run, "/lone/x", 200, timeout=10)
    assert seen[-1] == 200, (seen, run.log())
    assert run.wait_log(f"127.0.0.1:{run.b.ports['lone']} is healthy again", timeout=1), run.log()


# ---------------------------------------------------------------- DNS re-add starts fresh


def test_an_address_dns_removes_and_re_adds_starts_with_fresh_check_counts(run):
    """svc.test is 127.0.0.1 and 127.0.0.2; the server on .2 fails its checks
    and is marked down after unhealthy=3 (and keeps failing). DNS drops .2,
    then gives it back: the re-added endpoint starts as a new one (up, as
    every endpoint of a starting gateway), and is marked down again only
    after 3 more failed checks — not at its first, on the count it had."""
    port = run.b.ports["named"]
    run.b.dns.set("svc.test", ["127.0.0.1", "127.0.0.2"])
    run.origin("127.0.0.1", port)
    failing = run.origin("127.0.0.2", port, healthz=500)
    run.start()
    down = f"127.0.0.2:{port} is unhealthy"
    assert run.wait_log(down), run.log()
    assert run.count(f"{down} (3 failed checks)") == 1, run.log()
    # Let it fail a few more checks while down (its count grows past 3).
    checks = len(failing.requests)
    assert failing.wait_for(lambda: len(failing.requests) >= checks + 3, timeout=10), failing.requests
    run.b.dns.set("svc.test", ["127.0.0.1"])
    assert run.wait_log(f"svc.test is now [127.0.0.1:{port}]"), run.log()
    run.b.dns.set("svc.test", ["127.0.0.1", "127.0.0.2"])
    assert run.wait_log(f"svc.test is now [127.0.0.1:{port}, 127.0.0.2:{port}]"), run.log()
    assert run.wait_log(down, n=2), run.log()
    second = [line for line in run.gateway.lines if down in line][1]
    assert second.endswith("(3 failed checks)"), run.log()
    # Meanwhile .1 served every request.
    assert all(run.status("/named/x") == 200 for _ in range(10))


# ---------------------------------------------------------------- handshake log after SIGHUP


def hup(run: Run) -> None:
    mark = run.count("upstream CA file")
    os.kill(run.gateway.proc.pid, signal.SIGHUP)
    assert run.wait_log("upstream CA file", n=mark + 1), run.log()


def test_a_failed_upstream_handshake_is_logged_again_after_a_reload(run):
    """The CA file does not issue the origin's certificate: every request is
    a 502, and why is logged once (not once per request). After a SIGHUP
    reloads the CA file (still the wrong one), the next failure is logged
    again: an operator checking the reload sees it did not help."""
    failed = f"TLS handshake with upstream server 127.0.0.1:{run.b.ports['secure']} failed"
    run.start()
    assert [run.status(f"/secure/{i}") for i in range(3)] == [502] * 3
    assert run.wait_log(failed), run.log()
    time.sleep(0.2)
    assert run.count(failed) == 1, "once, not per request:\n" + run.log()
    hup(run)
    assert [line for line in run.gateway.lines if "upstream CA file" in line][-1].endswith(
        "reloaded"
    ), run.log()
    assert [run.status(f"/secure/again/{i}") for i in range(3)] == [502] * 3
    assert run.wait_log(failed, n=2), "not logged again after the reload:\n" + run.log()
    time.sleep(0.2)
    assert run.count(failed) == 2, run.log()
    # And once more after the next reload.
    hup(run)
    assert run.status("/secure/third") == 502
    assert run.wait_log(failed, n=3), run.log()
    assert run.b.secure.requests == [], "nothing sent over an unverified connection"
