"""Known correctness gaps fixed after the QA passes, each end to end with
the real hello_gateway, a raw-socket client and the recording origin.

- A higher minor version in the request line (`HTTP/1.2`) is served as
  HTTP/1.1 (RFC 9110 §2.5, RFC 9112 §2.3), forwarded as HTTP/1.1 and
  answered as HTTP/1.1; other majors stay 505, malformed versions 400.
- A listener certificate outside its validity period is still served (the
  client decides), and the gateway says so at start and on SIGHUP, as
  `blitzc check` does with B067 (tests/blitzc/test_positions_qa.py).
- SIGHUP re-reads upstream CA files (`server ... tls=#true ca=...`), not
  only listener certificates: new upstream connections verify with the new
  CA; a CA file that does not load keeps the current one, and is logged.
  (A `blitzc build` of a spec: hello_gateway has no upstream TLS.)
- A `[::]:P` listener takes IPv4 clients even where the host's
  `net.ipv6.bindv6only` is 1 (docs/spec.md section 5 calls it dual-stack,
  and `check` refuses a `0.0.0.0:P` beside it): run in a network
  namespace of its own with that sysctl set.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.asserts import assert_clean_forward, assert_origin_saw_nothing, assert_rejected
from support.blitzc import BLITZC_BUILD_TIMEOUT, Served, build
from support.client import exchange
from support.gateway import REPO, free_port
from support.pki import Pki, TlsOrigin, served_cert

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"


@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/1.9"])
def test_higher_minor_version_served_as_http11(gateway, origin, version):
    # Two requests on one connection: 1.x keeps the connection alive as 1.1 does.
    first = f"GET /minor/1 {version}\r\nHost: a.test\r\nX-Seq: 1\r\n\r\n".encode()
    second = f"GET /minor/2 {version}\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode()
    ex = exchange(gateway.port, first + second)
    assert ex.statuses == [200, 200], ex
    assert all(r.version == "HTTP/1.1" for r in ex.responses), ex
    reqs = origin.wait_requests(2, complete=True)
    assert [r.path for r in reqs] == ["/minor/1", "/minor/2"], reqs
    for r in reqs:
        assert r.version == "HTTP/1.1", r
        assert_clean_forward(r)
    assert reqs[0].header("x-seq") == ["1"]


def test_higher_minor_version_from_the_upstream(gateway, origin):
    def http12(req, conn):
        conn.send(b"HTTP/1.2 200 OK\r\ncontent-length: 3\r\nx-up: 12\r\n\r\nup\n")
        return True

    origin.handler = http12
    ex = exchange(gateway.port, b"GET /up HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert ex.statuses == [200], ex
    r = ex.responses[0]
    assert (r.version, r.h("x-up"), r.body) == ("HTTP/1.1", "12", b"up\n"), r


@pytest.mark.parametrize(
    "version,status",
    [("HTTP/2.0", 505), ("HTTP/3.0", 505), ("HTTP/0.9", 505), ("HTTP/1.10", 400), ("HTTP/01.1", 400)],
)
def test_other_versions_still_refused(gateway, origin, version, status):
    ex = exchange(gateway.port, f"GET /v {version}\r\nHost: a.test\r\n\r\n".encode() + SMUGGLED)
    assert_rejected(ex, (status,), version)
    assert_origin_saw_nothing(gateway.port, origin, version)


# ---------------------------------------------------------------- certificate validity


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("known-fixes-pki"))
    p.leaf("good", "edge.test")
    p.expired("old", "edge.test")
    p.dated("future", "edge.test", "20990101000000Z", "21000101000000Z")
    return p


def test_out_of_validity_listener_certificate_is_served_with_a_warning(start_gateway, pki, tmp_path):
    shutil.copy(pki.path("old.crt"), tmp_path / "live.crt")
    shutil.copy(pki.path("old.key"), tmp_path / "live.key")
    gw = start_gateway(tls_cert=tmp_path / "live.crt", tls_key=tmp_path / "live.key")
    line = gw.line_with("warning: certificate", timeout=10.0)
    assert line and "live.crt expired on 2020-02-01 00:00:00 UTC" in line, gw.tail()
    assert served_cert(gw.port, "edge.test") == pki.der("old")
    # A valid certificate on SIGHUP: no warning; a not-yet-valid one: warned.
    for name, warned in (("good", None), ("future", "is not valid before 2099-01-01 00:00:00 UTC")):
        shutil.copy(pki.path(f"{name}.crt"), tmp_path / "live.crt")
        shutil.copy(pki.path(f"{name}.key"), tmp_path / "live.key")
        mark = len(gw.lines)
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served_cert(gw.port, "edge.test") != pki.der(name):
            assert time.monotonic() < deadline, f"{name} not served after SIGHUP: {gw.tail()}"
            time.sleep(0.1)
        line = gw.line_with("warning: certificate", after=mark, timeout=1.0 if warned is None else 10.0)
        if warned is None:
            assert line is None, line
        else:
            assert line and warned in line, gw.tail()


# ---------------------------------------------------------------- upstream CA reload

CA_SPEC = """version 1
gateway "ca-reload" {{ workers 2 }}
listener "http" {{ bind "127.0.0.1:{port}" }}
upstream "secure" {{
    server "127.0.0.1:{origin}" tls=#true sni="origin.test" ca="ca.pem"
}}
route "secure" {{ proxy "secure" }}
"""


@pytest.fixture(scope="module")
def blitzc_bin() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    subprocess.run(["cargo", "build", "--release", "-p", "blitzc"], cwd=REPO, check=True, timeout=BLITZC_BUILD_TIMEOUT)
    return target / "release" / "blitzc"


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory) -> tuple[Pki, Pki]:
    """Two unrelated CAs; the origin's certificate is issued by the second."""
    a = Pki(tmp_path_factory.mktemp("ca-a"))
    b = Pki(tmp_path_factory.mktemp("ca-b"))
    b.leaf("origin", "origin.test")
    return a, b


def _closing(req, conn):
    """Every answer closes the upstream connection: each request needs a new
    TLS connection, verified with the roots of the moment."""
    conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
    return False


def _hup_and_wait(gw: Served, needle: str, timeout: float = 10.0) -> str:
    mark = len(gw.lines)
    os.kill(gw.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gw.lines[mark:]:
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no {needle!r} after SIGHUP:\n" + "\n".join(gw.lines[mark:]))


@pytest.mark.timeout(1800)
def test_sighup_reloads_upstream_ca_files(blitzc_bin, two_cas, tmp_path):
    ca_a, ca_b = two_cas
    origin = TlsOrigin(ca_b.path("origin.crt"), ca_b.path("origin.key"))
    origin.handler = _closing
    port = free_port()
    spec = tmp_path / "ca-reload.kdl"
    spec.write_text(CA_SPEC.format(port=port, origin=origin.port))
    ca_file = tmp_path / "ca.pem"
    shutil.copy(ca_a.path("ca.crt"), ca_file)
    cache = Path(os.environ.get("BLITZ_CACHE_DIR", tmp_path / "cache"))
    out = tmp_path / "gateway-bin"
    result = build(blitzc_bin, spec, out, cache)
    assert result.returncode == 0, result.stderr
    gw = Served([str(out)], port, dict(os.environ), cwd=tmp_path)
    try:
        def statuses(n: int = 4) -> list[int]:
            return [gw.get(f"/r{i}")[0] for i in range(n)]

        # CA A does not issue the origin's certificate: no upstream connection verifies.
        assert statuses() == [502] * 4
        assert origin.handshakes == 0
        # CA B in its place, SIGHUP: new connections verify with it.
        shutil.copy(ca_b.path("ca.crt"), ca_file)
        line = _hup_and_wait(gw, "upstream CA file")
        assert "reloaded" in line and "not reloaded" not in line, line
        assert statuses() == [200] * 4
        seen = origin.handshakes
        assert seen >= 4, seen  # a new TLS connection per request (the origin closes each)
        # A CA file that does not load: logged, and CA B stays in use.
        ca_file.write_text("-----BEGIN CERTIFICATE-----\nnot base64 !!!\n-----END CERTIFICATE-----\n")
        line = _hup_and_wait(gw, "upstream CA file")
        assert "not reloaded, keeping the current one" in line and "ca.pem" in line, line
        assert statuses() == [200] * 4
        assert origin.handshakes >= seen + 4
        # Back to CA A: new connections fail to verify again.
        shutil.copy(ca_a.path("ca.crt"), ca_file)
        line = _hup_and_wait(gw, "upstream CA file")
        assert "not reloaded" not in line, line
        assert statuses() == [502] * 4
        assert gw.proc.poll() is None
    finally:
        assert gw.stop() == 0
        origin.stop()


# ---------------------------------------------------------------- dual-stack [::] listeners


@pytest.fixture
def v6only_namespace():
    """A network namespace with `lo` up and `net.ipv6.bindv6only=1`."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace")
    name = f"blitz-v6only-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    made = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"no network namespace here: {made.stderr.decode().strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.bindv6only=1"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _status_in(ns: str, url: str) -> str:
    """The status a GET of `url` gets from inside `ns` ("" when it could not connect)."""
    client = (
        "import http.client, sys, urllib.parse as u\n"
        "p = u.urlsplit(sys.argv[1])\n"
        "c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)\n"
        "try:\n"
        "    c.request('GET', '/dual', headers={'host': 'a.test'}); print(c.getresponse().status)\n"
        "except OSError:\n"
        "    print('')\n"
    )
    run = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", client, url],
                         check=False, capture_output=True, timeout=30, text=True)
    return run.stdout.strip()


def test_an_ipv6_wildcard_listener_takes_ipv4_clients_whatever_bindv6only_says(hello_bin, v6only_namespace):
    ns = v6only_namespace
    origin = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-m", "http.server", "9901",
                               "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen(["ip", "netns", "exec", ns, str(hello_bin), "--listen", "[::]:9902",
                           "--upstream", "127.0.0.1:9901", "--workers", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while _status_in(ns, "http://[::1]:9902/") != "404" and time.monotonic() < deadline:
            time.sleep(0.1)  # the origin (http.server answers 404 for /dual) and the gateway start
        assert _status_in(ns, "http://[::1]:9902/") == "404", "the gateway did not serve over IPv6"
        assert _status_in(ns, "http://127.0.0.1:9902/") == "404", "an IPv4 client was not served on [::]"
    finally:
        for p in (gw, origin):
            p.terminate()
        for p in (gw, origin):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


# ---------------------------------------------------------------- lingering close after an early answer


def test_a_client_sending_its_whole_body_before_reading_gets_the_early_answer_without_a_reset(start_gateway, origin):
    """A body declared over `max-body-bytes` is answered 413 at once. A
    client that sends all of it before it reads (many simple clients do)
    must then find the 413 and a FIN, not a reset: most TCP stacks drop an
    unread answer on a reset. The gateway discards what follows the answer
    (nginx's lingering close); it used to stop after 256 KiB or 500 ms and
    close with the rest unread, a reset. 6 MiB here, within the 8 MiB and
    the 1 s gaps it now discards."""
    g = start_gateway(max_body_bytes=1024 * 1024)
    body = 6 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", g.port), timeout=20) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % body)
        chunk = b"x" * 65536
        for _ in range(body // len(chunk)):
            s.sendall(chunk)  # a reset here is the bug
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while data := s.recv(65536):  # so is a reset here
            answer += data
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in answer.lower(), answer[:300]
    assert_origin_saw_nothing(g.port, origin, "an over-long body")
