"""TLS termination end to end: a spec with a `tls` listener served by the
reference interpreter (`blitzc dev`, instant start) and, once, by a compiled
binary (`blitzc build`), driven by real clients: curl, `openssl s_client` and
Python's ssl module. Certificates come from a throwaway CA made with openssl
for each test module.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from support.gateway import free_port
from support.origin import Origin
from support.blitzc import Served, build

# ---------------------------------------------------------------- certificates


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_leaf(d: Path, name: str, cn: str, serial: int) -> None:
    """`name.crt` / `name.key`: an EC P-256 certificate for DNS:cn, signed by d/ca."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=Blitz Test CA", "-days", "30", cwd=d)
    make_leaf(d, "edge", "edge.test", 1)
    make_leaf(d, "api", "api.test", 2)
    make_leaf(d, "edge2", "edge.test", 3)  # the renewed edge certificate
    make_leaf(d, "origin", "origin.test", 4)
    # A second CA that signed nothing the tests serve.
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "other-ca.key", "-out", "other-ca.crt", "-subj", "/CN=Other CA", "-days", "30", cwd=d)
    return d


def spec_text(port: int, origin_port: int, extra_server: str = "") -> str:
    # Paths are relative to the spec's folder.
    return f"""version 1

gateway "tls-test" {{
    workers 1
}}

listener "tls" {{
    bind "127.0.0.1:{port}"
    protocols "h1"
    tls {{
        cert "certs/edge.crt" key="certs/edge.key"
        cert "certs/api.crt" key="certs/api.key" sni="api.test"
    }}
}}

limits {{
    header-timeout "2s"
}}

upstream "origin" {{
    server "127.0.0.1:{origin_port}"
}}
{extra_server}
route "local" {{
    match {{ path "/local" }}
    respond 200 body="local\\n" content-type="text/plain"
}}

route "proxied" {{
    proxy "origin"
}}
"""


def write_spec(tmp_path: Path, pki: Path, port: int, origin_port: int, extra: str = "") -> Path:
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    for name in ("edge", "api"):
        for ext in ("crt", "key"):
            (certs / f"{name}.{ext}").write_bytes((pki / f"{name}.{ext}").read_bytes())
    spec = tmp_path / "tls.kdl"
    spec.write_text(spec_text(port, origin_port, extra))
    return spec


@pytest.fixture
def origin():
    o = Origin()
    yield o
    o.stop()


@pytest.fixture
def served(blitzc, cache_dir, pki, origin, tmp_path):  # noqa: F811
    port = free_port()
    spec = write_spec(tmp_path, pki, port, origin.port)
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    gw = Served([str(blitzc), "dev", str(spec)], port, env)
    gw.spec_dir = tmp_path
    yield gw
    if gw.proc.poll() is None:
        assert gw.stop() == 0, "graceful exit"


# ---------------------------------------------------------------- clients


def curl(port: int, path: str, pki: Path, host: str = "edge.test", *opts: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "10", "--cacert", str(pki / "ca.crt"),
         "--resolve", f"{host}:{port}:127.0.0.1", *opts, f"https://{host}:{port}{path}"],
        capture_output=True, text=True, timeout=20,
    )


def s_client(port: int, *opts: str, stdin: str = "") -> str:
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *opts],
        input=stdin, capture_output=True, text=True, timeout=20,
    )
    return r.stdout + r.stderr


def served_cert(port: int, server_name: str | None) -> bytes:
    """The DER certificate the gateway presents for `server_name` (None: no SNI)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True)


def der(pki: Path, name: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert((pki / f"{name}.crt").read_text())


class KeepAlive:
    """One TLS connection, verified against the test CA, for several requests."""

    def __init__(self, port: int, pki: Path, host: str = "edge.test"):
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=host)
        self.host = host
        self.buf = b""

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nhost: {self.host}\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split()[1])
        length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed mid-body"
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- tests


def test_curl_over_tls13_and_tls12(served, pki, origin):
    for opts, version in ((("--tlsv1.3",), "TLSv1.3"), (("--tls-max", "1.2"), "TLSv1.2")):
        r = curl(served.port, "/local", pki, "edge.test", *opts)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "local\n"
        assert f"SSL connection using {version}" in r.stderr, r.stderr
        assert "ALPN: server accepted http/1.1" in r.stderr, r.stderr
    # Proxied: the origin sees the request, forwarded over plain HTTP/1.1.
    r = curl(served.port, "/hello?x=1", pki)
    assert r.returncode == 0, r.stderr
    reqs = origin.wait_requests(1)
    assert reqs[0].target == "/hello?x=1"
    assert reqs[0].header("x-forwarded-proto") == ["https"], reqs[0]


def test_sni_picks_the_certificate_and_unknown_names_get_the_default(served, pki):
    assert served_cert(served.port, "api.test") == der(pki, "api")
    assert served_cert(served.port, "API.Test") == der(pki, "api"), "names compare case-insensitively"
    assert served_cert(served.port, "edge.test") == der(pki, "edge")
    assert served_cert(served.port, "unknown.test") == der(pki, "edge")
    assert served_cert(served.port, None) == der(pki, "edge")
    out = s_client(served.port, "-servername", "api.test", "-CAfile", str(pki / "ca.crt"))
    assert re.search(r"subject=.*CN ?= ?api\.test", out), out
    assert "Verify return code: 0 (ok)" in out, out
    # curl verifies the chosen certificate against the name it asked for.
    r = curl(served.port, "/local", pki, "api.test")
    assert r.returncode == 0 and r.stdout == "local\n", r.stderr


def test_alpn_offers_what_the_listener_speaks(served):
    out = s_client(served.port, "-alpn", "h2,http/1.1", "-servername", "edge.test")
    assert "ALPN protocol: http/1.1" in out, out
    # Only protocols the listener does not speak: the handshake fails
    # (no_application_protocol), the gateway lives on.
    out = s_client(served.port, "-alpn", "h2", "-servername", "edge.test")
    assert "no application protocol" in out.lower() or "alert" in out.lower(), out
    out = s_client(served.port, "-servername", "edge.test")  # no ALPN at all: HTTP/1.1
    assert "No ALPN negotiated" in out, out
    assert served.proc.poll() is None


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_session_resumption(served, tmp_path, version):
    sess = tmp_path / f"session{version}"
    # `-ign_eof` with no input would hang: send a request so the server answers
    # (and, with TLS 1.3, the ticket arrives before the client quits).
    request = "GET /local HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n\r\n"
    first = s_client(served.port, version, "-servername", "edge.test", "-sess_out", str(sess), "-ign_eof",
                     stdin=request)
    assert "New," in first, first
    assert sess.exists() and sess.stat().st_size > 0
    second = s_client(served.port, version, "-servername", "edge.test", "-sess_in", str(sess), "-ign_eof",
                      stdin=request)
    assert "Reused," in second, second
    assert "local" in second


def wait_log(served: Served, needle: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in served.lines:
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needle!r}:\n" + "\n".join(served.lines))


def test_sighup_reloads_certificates_without_dropping_connections(served, pki):
    before = KeepAlive(served.port, pki)
    assert before.get("/local") == (200, b"local\n")
    certs = served.spec_dir / "certs"
    # Renewed certificate: written in place, then SIGHUP.
    (certs / "edge.crt").write_bytes((pki / "edge2.crt").read_bytes())
    (certs / "edge.key").write_bytes((pki / "edge2.key").read_bytes())
    served.proc.send_signal(signal.SIGHUP)
    wait_log(served, "certificate(s) reloaded")
    assert before.get("/local") == (200, b"local\n"), "the connection opened before keeps working"
    assert served_cert(served.port, "edge.test") == der(pki, "edge2"), "new handshakes see the new certificate"
    assert served_cert(served.port, "api.test") == der(pki, "api")

    # A broken file on reload: the current certificates stay, and the log says why.
    (certs / "api.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64 !!!\n-----END CERTIFICATE-----\n")
    served.proc.send_signal(signal.SIGHUP)
    line = wait_log(served, "not reloaded")
    assert "api.crt" in line, line
    assert served.proc.poll() is None, "a bad file never kills the gateway"
    assert served_cert(served.port, "edge.test") == der(pki, "edge2")
    assert served_cert(served.port, "api.test") == der(pki, "api")
    assert before.get("/local") == (200, b"local\n")
    before.close()


def test_handshake_garbage_and_silence_close_without_harm(served, pki):
    # Plain HTTP to the TLS port: the handshake fails, and the client is told
    # so in plain HTTP (400, as nginx), with no TLS alert before it; then the
    # connection closes. Nothing reaches the origin.
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), got
        assert b"content-length: %d" % len(body) in head.lower(), got
        assert b"HTTPS port" in body, got
    # Random bytes shaped like a TLS record.
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05" + os.urandom(5))
        while s.recv(4096):
            pass
    # Silence: closed after the header timeout (2 s in the spec), not held open.
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(4096) == b""
        assert time.monotonic() - started < 9
    # A client that stops mid-handshake.
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert s.recv(4096) == b""
    assert served.proc.poll() is None
    r = curl(served.port, "/local", pki)
    assert r.returncode == 0 and r.stdout == "local\n", r.stderr


def test_large_bodies_both_ways_over_tls(served, pki, origin, tmp_path):
    """A 3 MiB upload and download through the TLS client side (many records,
    partial reads and writes)."""
    from support.origin import pattern, respond

    body = pattern(3 * 1024 * 1024)

    def handler(req, conn):
        return respond(conn, req, 200, body)

    origin.handler = handler
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(pki / "ca.crt"),
         "--resolve", f"edge.test:{served.port}:127.0.0.1", "--data-binary", f"@{upload}",
         "-o", str(tmp_path / "down.bin"), f"https://edge.test:{served.port}/up"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256((tmp_path / "down.bin").read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()
    reqs = origin.wait_requests(1, complete=True)
    assert reqs[0].body_sha256 == hashlib.sha256(body).hexdigest()


@pytest.mark.timeout(1800)
def test_compiled_gateway_terminates_tls(blitzc, cache_dir, pki, origin, tmp_path):  # noqa: F811
    port = free_port()
    spec = write_spec(tmp_path, pki, port, origin.port)
    out = tmp_path / "gateway-bin"
    # The spec named relative to where blitzc runs, the binary started from
    # elsewhere: its certificates are still found (paths are the spec
    # folder's, made absolute at build time).
    result = build(blitzc, Path(spec.name), out, cache_dir, cwd=spec.parent)
    assert result.returncode == 0, result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    gw = Served([str(out)], port, env, cwd=elsewhere)
    try:
        r = curl(port, "/local", pki)
        assert r.returncode == 0 and r.stdout == "local\n", r.stderr
        assert served_cert(port, "api.test") == der(pki, "api")
        r = curl(port, "/via-origin", pki, "api.test", "--tls-max", "1.2")
        assert r.returncode == 0, r.stderr
        assert origin.wait_requests(1)[0].target == "/via-origin"
    finally:
        assert gw.stop() == 0


# ---------------------------------------------------------------- TLS to upstreams


class TlsOrigin:
    """A real HTTPS origin (Python's http.server over ssl) with the test CA's
    `origin.test` certificate; answers `secure <path>` with keep-alive."""

    def __init__(self, pki: Path):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                body = f"secure {self.path}\n".encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / "origin.crt", pki / "origin.key")
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def upstream_tls_spec(origin_port: int) -> str:
    return f"""
upstream "secure" {{
    server "127.0.0.1:{origin_port}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}

upstream "wrong-ca" {{
    server "127.0.0.1:{origin_port}" tls=#true sni="origin.test" ca="certs/other-ca.crt"
}}

upstream "wrong-name" {{
    server "127.0.0.1:{origin_port}" tls=#true sni="elsewhere.test" ca="certs/ca.crt"
}}

route "secure" {{
    match {{ path-prefix "/secure" }}
    proxy "secure"
}}

route "wrong-ca" {{
    match {{ path-prefix "/wrong-ca" }}
    proxy "wrong-ca"
}}

route "wrong-name" {{
    match {{ path-prefix "/wrong-name" }}
    proxy "wrong-name"
}}
"""


def test_tls_to_upstreams_verifies_the_server(blitzc, cache_dir, pki, origin, tmp_path):  # noqa: F811
    tls_origin = TlsOrigin(pki)
    port = free_port()
    spec = write_spec(tmp_path, pki, port, origin.port, upstream_tls_spec(tls_origin.port))
    for name in ("ca", "other-ca"):
        (tmp_path / "certs" / f"{name}.crt").write_bytes((pki / f"{name}.crt").read_bytes())
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    check = subprocess.run([str(blitzc), "check", str(spec)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    gw = Served([str(blitzc), "dev", str(spec)], port, env)
    try:
        # Several requests: the second and later reuse the pooled TLS connection.
        conn = KeepAlive(port, pki)
        for i in range(3):
            assert conn.get(f"/secure/{i}") == (200, f"secure /secure/{i}\n".encode())
        conn.close()
        # A certificate the configured CA did not sign, or not issued for the
        # name: the handshake fails, the client gets 502.
        for path in ("/wrong-ca", "/wrong-name"):
            r = curl(port, path, pki, "edge.test", "-o", "/dev/null", "-w", "%{http_code}")
            assert r.returncode == 0 and r.stdout == "502", (path, r.stdout, r.stderr)
        # The reason is logged (once per server and worker).
        failures = [line for line in gw.lines if "TLS handshake with upstream server" in line]
        assert len(failures) == 2, gw.lines
        assert any("certificate" in line.lower() for line in failures), failures
    finally:
        assert gw.stop() == 0
        tls_origin.stop()


def test_check_reports_bad_upstream_tls_settings(blitzc, pki, tmp_path):  # noqa: F811
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "key-only.pem").write_bytes((pki / "edge.key").read_bytes())
    spec = tmp_path / "bad.kdl"
    spec.write_text("""version 1
listener "http" {
    bind "127.0.0.1:8080"
}
upstream "a" {
    server "127.0.0.1:9001" tls=#true ca="certs/missing.pem"
    server "127.0.0.1:9002" tls=#true ca="certs/key-only.pem"
    server "127.0.0.1:9003" tls=#true sni="not a name"
    server "127.0.0.1:9004" sni="x.test"
}
route "r" {
    proxy "a"
}
""")
    r = subprocess.run([str(blitzc), "check", "--format", "json", str(spec)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    import json

    found = [(d["code"], d["line"]) for d in json.loads(r.stdout)["diagnostics"]]
    assert ("B062", 6) in found and ("B062", 7) in found, found
    assert ("B039", 8) in found, found
    assert ("B012", 9) in found, found
