"""QA of TLS to upstream servers, from the outside: a compiled gateway
(`blitzc build`, one worker so that one client's requests share one pool)
in front of Python ssl origins that record, per connection, the protocol
version, the ALPN protocol chosen and whether the session was resumed.

What test_tls_specs.py and test_tls.py already cover (verification against
a CA file, wrong CA, wrong name, expired, SNI from `sni=` and none for an
IP address, a close-delimited body cut without close_notify) is not
repeated; this adds: SNI from a server's host name, the ALPN offered,
TLS 1.2-only and 1.3-only servers, handshakes counted under pooling and
resumed when a server closes each connection, close_notify after a
complete response, a chunked body cut without close_notify, a plain HTTP
server where the spec says TLS, and failover and retries across TLS
servers.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from support.blitzc import Served, build
from support.gateway import free_port
from support.origin import OriginConn, RecordedRequest, respond
from support.pki import Pki, TlsOrigin

SPEC = """
version 1
gateway "tls-up-qa" {{
    workers 1
}}
listener "http" {{
    bind "127.0.0.1:{port}"
    protocols "h1" "h2c"
}}
upstream "good" {{
    server "127.0.0.1:{good}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "by-host" {{
    server "localhost:{by_host}" tls=#true ca="certs/ca.crt"
}}
upstream "tls12" {{
    server "127.0.0.1:{tls12}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "tls13" {{
    server "127.0.0.1:{tls13}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "plain-answers" {{
    server "127.0.0.1:{plain_answers}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "plain-silent" {{
    server "127.0.0.1:{plain_silent}" tls=#true sni="origin.test" ca="certs/ca.crt"
    timeouts connect="1s"
}}
upstream "silent-failover" {{
    server "127.0.0.1:{plain_silent}" tls=#true sni="origin.test" ca="certs/ca.crt"
    server "127.0.0.1:{good4}" tls=#true sni="origin.test" ca="certs/ca.crt"
    timeouts connect="1s"
}}
upstream "mtls" {{
    server "127.0.0.1:{mtls}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "notify" {{
    server "127.0.0.1:{notify}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "failover" {{
    server "127.0.0.1:{other_ca}" tls=#true sni="origin.test" ca="certs/ca.crt"
    server "127.0.0.1:{good2}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "retry" {{
    server "127.0.0.1:{busy}" tls=#true sni="origin.test" ca="certs/ca.crt"
    server "127.0.0.1:{good3}" tls=#true sni="origin.test" ca="certs/ca.crt"
    retry attempts=1 on="503"
}}
{routes}
"""

UPSTREAMS = ("good", "by-host", "tls12", "tls13", "notify", "mtls", "plain-answers", "plain-silent", "silent-failover",
             "failover", "retry")


@dataclass
class Session:
    """One TLS connection as the origin saw it."""

    version: str
    alpn: str | None
    resumed: bool


class RecOrigin(TlsOrigin):
    """TlsOrigin that records each connection's version, ALPN and
    resumption, and prefers `h2` if the client offered it (so seeing
    `http/1.1` chosen shows `h2` was not offered)."""

    def __init__(self, cert, key, min_version=None, max_version=None):
        super().__init__(cert, key)
        if min_version:
            self.ctx.minimum_version = min_version
        if max_version:
            self.ctx.maximum_version = max_version
        self.ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.sessions: list[Session] = []

    def forget(self) -> None:
        self.reset()
        with self._tls_lock:
            self.sessions = []
            self.handshakes = 0
            self.sni_seen = []
            self.handshake_errors = []

    def _handshake_done(self, sock) -> None:
        self.sessions.append(Session(sock.version(), sock.selected_alpn_protocol(), sock.session_reused))


class PlainServer:
    """A cleartext TCP server where the spec says TLS: `answers` replies to
    the first bytes (the ClientHello) as an HTTP server does to garbage,
    `400` and close; otherwise it reads and says nothing."""

    def __init__(self, answers: bool):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.answers = answers
        self.first_bytes: list[bytes] = []
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.lsock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s: socket.socket) -> None:
        with s:
            s.settimeout(10)
            try:
                data = s.recv(65536)
                self.first_bytes.append(data)
                if self.answers:
                    s.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"
                              b"bad request\n")
                else:
                    while not self.stopping.is_set() and s.recv(65536):
                        pass
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.lsock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    certs = tmp_path_factory.mktemp("tls-up-qa") / "certs"
    certs.mkdir()
    p = Pki(certs)
    p.leaf("origin", "origin.test", signer="int")
    p.leaf("local", "localhost")
    p.leaf("rsa", "origin.test", key="rsa")
    return p


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> Pki:
    """An unrelated CA that issued a certificate for the right name."""
    p = Pki(tmp_path_factory.mktemp("tls-up-qa-other"))
    p.leaf("origin", "origin.test")
    return p


class Setup:
    def __init__(self, pki, gw, origins, plain):
        self.pki, self.gw, self.origins, self.plain = pki, gw, origins, plain


@pytest.fixture(scope="module")
def setup(blitzc, cache_dir, pki, other_pki):
    crt, key = pki.path("origin.crt"), pki.path("origin.key")
    origins = {
        "good": RecOrigin(crt, key),
        "by_host": RecOrigin(pki.path("local.crt"), pki.path("local.key")),
        # RSA: TLS 1.2 suites are ECDHE-RSA, the common case of an older server.
        "tls12": RecOrigin(pki.path("rsa.crt"), pki.path("rsa.key"), max_version=ssl.TLSVersion.TLSv1_2),
        "tls13": RecOrigin(crt, key, min_version=ssl.TLSVersion.TLSv1_3),
        "notify": RecOrigin(crt, key),
        "mtls": RecOrigin(crt, key),
        "good4": RecOrigin(crt, key),
        "other_ca": RecOrigin(other_pki.path("origin.crt"), other_pki.path("origin.key")),
        "good2": RecOrigin(crt, key),
        "busy": RecOrigin(crt, key),
        "good3": RecOrigin(crt, key),
    }
    # Asks for a client certificate, which the gateway does not have.
    origins["mtls"].ctx.verify_mode = ssl.CERT_REQUIRED
    origins["mtls"].ctx.load_verify_locations(pki.path("ca.crt"))
    plain = {"plain_answers": PlainServer(answers=True), "plain_silent": PlainServer(answers=False)}
    ports = {"port": free_port(), **{k: o.port for k, o in origins.items()}, **{k: p.port for k, p in plain.items()}}
    routes = "".join(
        f'route "{u}" {{\n    match {{ path-prefix "/{u}/" }}\n    proxy "{u}"\n}}\n' for u in UPSTREAMS
    )
    spec = pki.dir.parent / "tls-up-qa.kdl"
    spec.write_text(SPEC.format(routes=routes, **ports))
    check = subprocess.run([str(blitzc), "check", str(spec)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    out = pki.dir.parent / "gateway-bin"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    gw = Served([str(out)], ports["port"], dict(os.environ))
    yield Setup(pki, gw, origins, plain)
    assert gw.stop() == 0, "graceful exit"
    for o in origins.values():
        o.stop()
    for p in plain.values():
        p.stop()


@pytest.fixture
def s(setup):
    for o in setup.origins.values():
        o.forget()
    yield setup
    assert setup.gw.proc.poll() is None, "the gateway died:\n" + "\n".join(setup.gw.lines[-30:])


class Client:
    """One keep-alive client connection to the gateway (so one worker)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body)
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.conn.close()


def log_lines(s: Setup, needle: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in s.gw.lines if needle in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ---------------------------------------------------------------- handshake


def test_sni_is_the_servers_host_name_without_an_sni_option(s):
    """docs/spec.md: the name sent in SNI and checked in the certificate is
    `sni=`, else the address's host."""
    c = Client(s.gw.port)
    try:
        assert c.request("GET", "/by-host/x") == (200, b"GET /by-host/x\n")
    finally:
        c.close()
    assert s.origins["by_host"].sni_seen == ["localhost"]


def test_alpn_offers_http11_only(s):
    c = Client(s.gw.port)
    try:
        assert c.request("GET", "/good/alpn")[0] == 200
    finally:
        c.close()
    sessions = s.origins["good"].sessions
    assert sessions and all(x.alpn == "http/1.1" for x in sessions), sessions


@pytest.mark.parametrize("name, version", [("tls12", "TLSv1.2"), ("tls13", "TLSv1.3")])
def test_servers_that_speak_one_tls_version(s, name, version):
    c = Client(s.gw.port)
    path = f"/{name.replace('_', '-')}/v"
    try:
        for _ in range(3):
            assert c.request("GET", path) == (200, f"GET {path}\n".encode())
    finally:
        c.close()
    origin = s.origins[name]
    assert [x.version for x in origin.sessions] == [version], origin.sessions
    assert origin.sni_seen == ["origin.test"]


# ---------------------------------------------------------------- pooling and resumption


def test_concurrent_clients_share_few_upstream_handshakes(s):
    """Eight clients, twenty requests each, at once: the pool of the one
    worker holds at most as many connections as there were exchanges at
    once, so the handshakes are far fewer than the requests."""
    origin = s.origins["good"]

    def client(i: int) -> list[int]:
        c = Client(s.gw.port)
        try:
            return [c.request("GET", f"/good/{i}/{k}")[0] for k in range(20)]
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        statuses = [st for r in pool.map(client, range(8)) for st in r]
    assert statuses == [200] * 160
    assert len(origin.requests) == 160
    # (An earlier test may have left a connection in the pool.)
    assert origin.handshakes <= 8, origin.handshakes
    assert len({r.conn_id for r in origin.requests}) <= 8


def test_h2_streams_at_once_share_the_pooled_tls_connections(s):
    """h2load over h2c, 400 requests ten streams at a time on two
    connections: each stream is an exchange on a pooled TLS connection,
    so at most as many handshakes as exchanges at once (20)."""
    origin = s.origins["good"]
    r = subprocess.run(["h2load", "-n", "400", "-c", "2", "-m", "10", f"http://127.0.0.1:{s.gw.port}/good/h2"],
                       capture_output=True, text=True, timeout=60)
    assert "400 succeeded" in r.stdout and "status codes: 400 2xx" in r.stdout, r.stdout + r.stderr
    assert len(origin.requests) == 400
    assert origin.handshakes <= 20, origin.handshakes
    assert len({req.conn_id for req in origin.requests}) <= 20


def closing(req: RecordedRequest, conn: OriginConn) -> bool:
    """Answers with `connection: close`: every request needs a new connection."""
    conn.send(f"HTTP/1.1 200 OK\r\ncontent-length: {len(req.target) + 1}\r\nconnection: close\r\n\r\n"
              f"{req.target}\n".encode())
    return False


@pytest.mark.parametrize("name", ["tls13", "tls12"])
def test_new_upstream_connections_resume_the_session(s, name):
    """A server that closes after each answer: every request is a new TLS
    connection, and after the first the gateway offers the session it got
    (a TLS 1.3 ticket, a TLS 1.2 ticket or session ID): an abbreviated
    handshake, no certificate to verify again."""
    origin = s.origins[name]
    origin.handler = closing
    c = Client(s.gw.port)
    try:
        for i in range(4):
            assert c.request("GET", f"/{name}/r{i}") == (200, f"/{name}/r{i}\n".encode())
    finally:
        c.close()
    # The first request may find a connection an earlier test left pooled.
    assert origin.handshakes >= 3, origin.sessions
    assert all(x.resumed for x in origin.sessions[1:]), origin.sessions
    assert len({r.conn_id for r in origin.requests}) == 4


def test_large_bodies_both_ways_through_a_pooled_tls_connection(s):
    """Many TLS records each way on the upstream side: an 8 MiB download
    and a 3 MiB upload, then a small request on the same pooled
    connection, every byte accounted for."""
    import hashlib

    from support.origin import default_handler, pattern_sha256

    def unprefixed(req, conn):
        req.target = req.target.removeprefix("/good")
        return default_handler(req, conn)

    origin = s.origins["good"]
    origin.handler = unprefixed
    c = Client(s.gw.port)
    try:
        n = 8 * 1024 * 1024
        status, body = c.request("GET", f"/good/bytes/{n}")
        assert status == 200 and len(body) == n and hashlib.sha256(body).hexdigest() == pattern_sha256(n)
        up = bytes(range(256)) * (3 * 4096)
        status, body = c.request("POST", "/good/sink", up)
        assert (status, body) == (200, f"{len(up)} {hashlib.sha256(up).hexdigest()}\n".encode())
        assert c.request("GET", "/good/after")[0] == 200
    finally:
        c.close()
    assert len({r.conn_id for r in origin.requests}) == 1, "one pooled TLS connection carried all three"


def test_after_a_ca_reload_new_connections_verify_afresh_without_resuming(s):
    """docs/spec.md: after SIGHUP re-reads the `ca` files, new connections
    verify with them and "start without resumable sessions": a session
    verified under the old CA certificates is not resumed, which would skip
    the new verification."""
    import signal

    origin = s.origins["tls13"]
    origin.handler = closing
    c = Client(s.gw.port)
    try:
        for i in range(2):
            assert c.request("GET", f"/tls13/a{i}")[0] == 200
        mark = len(s.gw.lines)
        os.kill(s.gw.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("upstream CA file" in line for line in s.gw.lines[mark:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("reloaded" in line for line in s.gw.lines[mark:]), s.gw.lines[mark:]
        for i in range(2):
            assert c.request("GET", f"/tls13/b{i}")[0] == 200
    finally:
        c.close()
    assert [x.resumed for x in origin.sessions][-2:] == [False, True], origin.sessions


# ---------------------------------------------------------------- how the server ends


def notify_then_fin(req: RecordedRequest, conn: OriginConn) -> bool:
    """A complete response (content-length, no `connection: close`), then
    close_notify and FIN: the connection must not be used again."""
    respond(conn, req, 200, b"done\n")
    try:
        conn.sock.settimeout(1)
        conn.sock.unwrap()
    except (OSError, ValueError):
        pass
    return False


def notify_in_the_same_segment(req: RecordedRequest, conn: OriginConn) -> bool:
    """The same, but the response and the close_notify leave in one TCP
    segment (corked), so the gateway reads both at once, and the TCP
    connection stays open for a while after it (no FIN): only the TLS layer
    knows the server is done."""
    raw = conn.sock
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    respond(conn, req, 200, b"done\n")
    try:
        raw.settimeout(0.3)
        raw.unwrap()  # sends close_notify, then waits for the gateway's: times out
    except (OSError, ValueError):
        pass
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    except OSError:
        pass
    conn.sleep(3)
    return False


@pytest.mark.parametrize("handler", [notify_then_fin, notify_in_the_same_segment])
def test_close_notify_after_a_complete_response(s, handler):
    """The request that got the close_notify succeeded; the next ones, even
    POSTs with a body (which cannot be replayed: a 502 if sent on a
    connection the server has finished with), go on new connections."""
    origin = s.origins["notify"]
    origin.handler = handler
    c = Client(s.gw.port)
    try:
        for i, (method, body) in enumerate([("GET", None), ("POST", b"payload"), ("POST", b"payload")]):
            assert c.request(method, f"/notify/n{i}", body) == (200, b"done\n"), (i, method)
            time.sleep(0.5)  # the close_notify arrives before the next request
    finally:
        c.close()
    assert len(origin.requests) == 3, origin.requests
    assert len({r.conn_id for r in origin.requests}) == 3, "each connection carried one request"


def test_an_early_answer_over_tls_reaches_the_client_while_the_body_is_sent(s):
    """The origin answers 413 right after the head, without reading a
    4 MiB body, then closes (no close_notify): the client gets the 413,
    as over cleartext, and nothing hangs."""
    body = b"u" * (4 * 1024 * 1024)
    c = http.client.HTTPConnection("127.0.0.1", s.gw.port, timeout=15)
    try:
        c.putrequest("POST", "/notify/upload?early_status=413")
        c.putheader("content-length", str(len(body)))
        c.endheaders()
        try:
            c.send(body)
        except OSError:
            pass  # the gateway may stop reading the upload once answered
        r = c.getresponse()
        assert (r.status, r.read()) == (413, b"early\n")
    finally:
        c.close()


def cut_chunked(req: RecordedRequest, conn: OriginConn) -> bool:
    conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"8000\r\n" + b"c" * 0x8000 + b"\r\n")
    time.sleep(0.1)
    conn.close()  # a TCP FIN, no close_notify, no last chunk
    return False


def test_a_chunked_body_cut_without_close_notify_is_cut_for_the_client(s):
    s.origins["good"].handler = cut_chunked
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                        f"http://127.0.0.1:{s.gw.port}/good/cut"], capture_output=True, text=True, timeout=20)
    # 18: transfer closed with outstanding read data remaining.
    assert r.returncode == 18, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "200 32768", r.stdout


# ---------------------------------------------------------------- a server that is not TLS


def test_a_plain_http_server_that_answers_the_client_hello_is_a_502_and_a_log(s):
    c = Client(s.gw.port)
    try:
        status, body = c.request("GET", "/plain-answers/x")
    finally:
        c.close()
    assert status == 502, body
    assert s.plain["plain_answers"].first_bytes[0][:1] == b"\x16", "a TLS handshake record was sent"
    port = s.plain["plain_answers"].port
    lines = log_lines(s, f"TLS handshake with upstream server 127.0.0.1:{port} failed")
    assert lines, "\n".join(s.gw.lines)
    assert "plain HTTP" in lines[0], lines


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_server_that_requires_a_client_certificate_is_a_502_and_a_log(s, method):
    """The gateway has no client certificate. With TLS 1.3 the server
    refuses it only after the client's last handshake flight (an alert
    `certificate_required` where the response should be): still a 502,
    never a hang, and the reason is logged."""
    c = Client(s.gw.port)
    try:
        status, _ = c.request(method, "/mtls/x", b"z" if method == "POST" else None)
    finally:
        c.close()
    assert status == 502
    assert s.origins["mtls"].requests == []
    port = s.origins["mtls"].port
    lines = log_lines(s, f"upstream server 127.0.0.1:{port}")
    assert lines and any("certificate" in line.lower() for line in lines), "\n".join(s.gw.lines[-20:])


def test_a_plain_server_that_says_nothing_times_out_at_the_connect_timeout(s):
    """The handshake is bounded by `timeouts connect` (1 s here): 504, as
    a connect that times out, and no hang."""
    c = Client(s.gw.port)
    try:
        status, _ = c.request("GET", "/plain-silent/x")
    finally:
        c.close()
    assert status == 504


# ---------------------------------------------------------------- failover and retries


def test_connect_failover_past_a_server_whose_certificate_does_not_verify(s):
    """Round robin over a server certified by another CA and a good one:
    the failed handshake is a failed connect, and the next server is
    tried, for every method (nothing was sent)."""
    other, good = s.origins["other_ca"], s.origins["good2"]
    c = Client(s.gw.port)
    try:
        for i in range(6):
            method, body = ("POST", b"x" * 10) if i % 2 else ("GET", None)
            assert c.request(method, f"/failover/{i}", body) == (200, f"{method} /failover/{i}\n".encode()), i
    finally:
        c.close()
    assert other.requests == [] and other.handshakes == 0, other.requests
    assert len(good.requests) == 6
    assert log_lines(s, f"TLS handshake with upstream server 127.0.0.1:{other.port} failed"), s.gw.lines


def test_connect_failover_past_a_server_that_never_answers_the_client_hello(s):
    """A handshake that times out is a connect that timed out: the next
    server is tried (docs/spec.md, "Connect failover"), for a POST too."""
    silent, good = s.plain["plain_silent"], s.origins["good4"]
    hellos = len(silent.first_bytes)
    c = Client(s.gw.port)
    try:
        for i in range(4):
            method, body = ("POST", b"y" * 10) if i % 2 else ("GET", None)
            assert c.request(method, f"/silent-failover/{i}", body) == (
                200, f"{method} /silent-failover/{i}\n".encode()), i
    finally:
        c.close()
    assert len(good.requests) == 4
    assert len(silent.first_bytes) > hellos, "the silent server was tried"


def busy(req: RecordedRequest, conn: OriginConn) -> bool:
    return respond(conn, req, 503, b"busy\n")


def test_a_503_from_a_tls_server_is_retried_on_the_other(s):
    s.origins["busy"].handler = busy
    c = Client(s.gw.port)
    try:
        for i in range(4):
            assert c.request("GET", f"/retry/{i}") == (200, f"GET /retry/{i}\n".encode()), i
    finally:
        c.close()
    assert len(s.origins["good3"].requests) == 4
    # Round robin: the busy server was tried first for half of them.
    assert len(s.origins["busy"].requests) >= 1


# ---------------------------------------------------------------- check and runtime agree on key files

KDL_ONE_CERT = """version 1
listener "l" {{
    bind "127.0.0.1:1"
    tls {{
        cert "{cert}" key="{key}"
    }}
}}
route "r" {{
    respond 200
}}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Pki:
    """Key and chain files in the shapes people really have."""
    p = Pki(tmp_path_factory.mktemp("tls-up-qa-files"))
    p.leaf("edge", "k.test", signer="int")  # leaf, intermediate
    p.leaf("rsa", "k.test", key="rsa-pkcs1")
    p.leaf("other", "k.test")
    d = p.dir

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    # A PKCS#1 key encrypted the traditional way (`Proc-Type: 4,ENCRYPTED`
    # headers inside `RSA PRIVATE KEY`), as `openssl genrsa -aes256` makes.
    ossl("rsa", "-in", "rsa.key", "-aes256", "-passout", "pass:x", "-traditional", "-out", "rsa-enc.key")
    # `openssl ecparam -genkey`: an `EC PARAMETERS` section before the key.
    ossl("ecparam", "-name", "prime256v1", "-genkey", "-out", "ecparam.key")
    ossl("req", "-new", "-x509", "-key", "ecparam.key", "-subj", "/CN=k.test", "-addext",
         "subjectAltName=DNS:k.test", "-days", "30", "-out", "ecparam.crt")
    ossl("x509", "-in", "edge.crt", "-outform", "der", "-out", "edge.der")
    text = (d / "edge.crt").read_text()
    end = "-----END CERTIFICATE-----\n"
    leaf, intermediate = [part + end for part in text.split(end) if part.strip()]
    (d / "reversed.crt").write_text(intermediate + leaf)
    (d / "with-root.crt").write_text(leaf + (d / "ca.crt").read_text() + intermediate)
    (d / "combined.pem").write_text(text + (d / "edge.key").read_text())
    (d / "key-first.pem").write_text((d / "edge.key").read_text() + text)
    (d / "crlf.crt").write_bytes(text.replace("\n", "\r\n").encode())
    (d / "explained.crt").write_text(
        subprocess.run(["openssl", "x509", "-in", "edge.crt", "-text"], cwd=d, check=True, capture_output=True,
                       text=True, timeout=30).stdout)
    (d / "two-keys.key").write_text((d / "edge.key").read_text() + (d / "other.key").read_text())
    (d / "two-keys-other-first.key").write_text((d / "other.key").read_text() + (d / "edge.key").read_text())
    return p


@pytest.fixture(scope="module")
def hello_bin():
    from support.gateway import build_hello_gateway

    try:
        return build_hello_gateway()
    except RuntimeError as e:
        pytest.fail(f"cannot build hello_gateway: {e}", pytrace=False)


# (cert, key, code `check` gives or None, a word both must say)
FILE_CASES = [
    ("rsa.crt", "rsa-enc.key", "B062", "encrypted"),
    ("ecparam.crt", "ecparam.key", None, None),
    ("edge.crt", "two-keys.key", None, None),  # the first key is the one (as nginx)
    ("edge.crt", "two-keys-other-first.key", "B063", "does not match"),
    ("reversed.crt", "edge.key", "B063", "first"),
    ("with-root.crt", "edge.key", None, None),  # sent as written; clients sort it out
    ("combined.pem", "combined.pem", None, None),
    ("key-first.pem", "key-first.pem", None, None),
    ("crlf.crt", "edge.key", None, None),
    ("explained.crt", "edge.key", None, None),  # `openssl x509 -text` output
    ("edge.der", "edge.key", "B062", None),
]


@pytest.mark.parametrize("cert, key, code, word", FILE_CASES, ids=[f"{c}+{k}" for c, k, _, _ in FILE_CASES])
def test_check_and_the_runtime_agree_on_more_key_and_chain_files(blitzc, files, hello_bin, cert, key, code, word):
    import json
    import signal

    from support.pki import served_cert

    spec = files.dir / f"agree-{cert}-{key}.kdl"
    spec.write_text(KDL_ONE_CERT.format(cert=cert, key=key))
    r = subprocess.run([str(blitzc), "check", "--format", "json", str(spec)], capture_output=True, text=True,
                       timeout=60)
    found = json.loads(r.stdout)["diagnostics"]
    if code is None:
        assert r.returncode == 0 and found == [], found
    else:
        assert r.returncode == 1 and {d["code"] for d in found} == {code}, found
        if word:
            assert word in json.dumps(found), found
    port = free_port()
    proc = subprocess.Popen(
        [str(hello_bin), "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1", "--workers", "1",
         "--tls-cert", str(files.dir / cert), "--tls-key", str(files.dir / key)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        if code is None:
            line = proc.stderr.readline()
            while line and "listening on" not in line:
                line = proc.stderr.readline()
            assert "listening on" in line, "the runtime refused what check accepted"
            first = "ecparam" if cert.startswith("ecparam") else "edge"
            assert served_cert(port, "k.test") == files.der(first)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        else:
            err = proc.stderr.read()
            assert proc.wait(timeout=30) == 1, err
            assert "panicked" not in err and (cert in err or key in err), err
            if word:
                assert word in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("cert, subjects", [
    ("edge.crt", ["k.test", "Blitz QA Intermediate"]),
    # Out of order after the leaf: sent as written (RFC 8446 §4.4.2 lets
    # clients cope; only the leaf's place is fixed).
    ("with-root.crt", ["k.test", "Blitz QA Root", "Blitz QA Intermediate"]),
])
def test_the_chain_is_sent_leaf_first_as_written(files, hello_bin, cert, subjects):
    import re
    import signal

    port = free_port()
    proc = subprocess.Popen(
        [str(hello_bin), "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1", "--workers", "1",
         "--tls-cert", str(files.dir / cert), "--tls-key", str(files.dir / "edge.key")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        line = proc.stderr.readline()
        while line and "listening on" not in line:
            line = proc.stderr.readline()
        assert "listening on" in line
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "k.test",
                              "-showcerts", "-CAfile", str(files.path("ca.crt")), "-verify_return_error"],
                             input="", capture_output=True, text=True, errors="replace", timeout=20).stdout
        sent = re.findall(r"^\s*\d+ s:\s*CN\s*=\s*(.+?)\s*$", out, re.M)
        assert sent == subjects, out
        assert "Verify return code: 0 (ok)" in out, out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- check and runtime agree on `ca` files

CA_SPEC = """version 1
gateway "ca-agree" {{
    workers 1
}}
listener "http" {{
    bind "127.0.0.1:{port}"
}}
{upstreams}
"""

# name: (what the file holds, loads)
CA_SHAPES = {
    "pem": ("the CA certificate", True),
    "with-key": ("the CA certificate and a private key", True),
    "two": ("another CA's certificate, then the CA's", True),
    "der": ("the CA certificate in DER", False),
    "empty": ("nothing", False),
    "key-only": ("a private key", False),
    "bad-second": ("the CA certificate, then a broken one", False),
}


@pytest.mark.timeout(180, func_only=True)  # builds a gateway of its own in the test: 11-19 s on one busy core
def test_check_and_the_runtime_agree_on_ca_files(blitzc, cache_dir, pki, other_pki, tmp_path):
    """Every `ca` shape: `check` reports B062 exactly for the files the
    runtime cannot load (it logs why, and answers 502), and the others
    verify the origin. The spec is built with good files, then the files
    are replaced (as a deploy might) before check and start."""
    origin = RecOrigin(pki.path("origin.crt"), pki.path("origin.key"))
    port = free_port()
    names = list(CA_SHAPES)
    upstreams = "".join(
        f'upstream "{n}" {{\n    server "127.0.0.1:{origin.port}" tls=#true sni="origin.test" ca="ca-{n}.pem"\n}}\n'
        f'route "{n}" {{\n    match {{ path-prefix "/{n}/" }}\n    proxy "{n}"\n}}\n'
        for n in names
    )
    spec = tmp_path / "ca-agree.kdl"
    spec.write_text(CA_SPEC.format(port=port, upstreams=upstreams))
    ca = pki.path("ca.crt").read_text()
    for n in names:
        (tmp_path / f"ca-{n}.pem").write_text(ca)
    out = tmp_path / "gateway-bin"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    der = ssl.PEM_cert_to_DER_cert(ca)
    shapes = {
        "pem": ca.encode(),
        "with-key": (ca + pki.path("ca.key").read_text()).encode(),
        "two": (other_pki.path("ca.crt").read_text() + ca).encode(),
        "der": der,
        "empty": b"",
        "key-only": pki.path("ca.key").read_bytes(),
        "bad-second": (ca + "-----BEGIN CERTIFICATE-----\nnot base64 !!!\n-----END CERTIFICATE-----\n").encode(),
    }
    for n, data in shapes.items():
        (tmp_path / f"ca-{n}.pem").write_bytes(data)
    import json

    r = subprocess.run([str(blitzc), "check", "--format", "json", str(spec)], capture_output=True, text=True,
                       timeout=60)
    lines = spec.read_text().splitlines()
    refused_by_check = set()
    for d in json.loads(r.stdout)["diagnostics"]:
        assert d["code"] == "B062", d
        refused_by_check.add(next(n for n in names if f"ca-{n}.pem" in lines[d["line"] - 1]))
    gw = Served([str(out)], port, dict(os.environ))
    try:
        statuses = {n: gw.get(f"/{n}/x")[0] for n in names}
        logged = {n for n in names if any(f'upstream "{n}": TLS:' in line for line in gw.lines)}
    finally:
        assert gw.stop() == 0
        origin.stop()
    expected_bad = {n for n, (_, loads) in CA_SHAPES.items() if not loads}
    assert refused_by_check == expected_bad, r.stdout
    assert logged == expected_bad, gw.lines
    assert {n for n, st in statuses.items() if st == 502} == expected_bad, statuses
    assert {n for n, st in statuses.items() if st == 200} == set(names) - expected_bad, statuses
