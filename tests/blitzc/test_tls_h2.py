"""HTTP/2 over TLS, chosen by ALPN (`protocols "h1" "h2"` with a `tls` block):
curl `--http2` and `--http1.1` on one port, h2load over TLS, and the
translation the origin sees, on the interpreter (`blitzc dev`) and on a
compiled binary (`blitzc build`, runtime features `tls` and `h2`).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time

import h2.config
import h2.connection
import h2.events
import pytest

from support.gateway import free_port
from support.origin import Origin
from support.blitzc import Served, build
from test_tls import curl, pki, write_spec  # noqa: F401  (fixtures)


def h2_spec(tmp_path, pki, port: int, origin_port: int):  # noqa: F811
    spec = write_spec(tmp_path, pki, port, origin_port)
    spec.write_text(spec.read_text().replace('protocols "h1"', 'protocols "h1" "h2"'))
    return spec


@pytest.fixture
def origin():
    o = Origin()
    yield o
    o.stop()


def version_of(r: subprocess.CompletedProcess) -> str:
    """The HTTP version curl used (`-w %{http_version}` at the end of stdout)."""
    return r.stdout.rsplit(" ", 1)[-1]


def check_h2_and_h1_on_one_port(port: int, pki, origin) -> None:  # noqa: F811
    r = curl(port, "/local", pki, "edge.test", "--http2", "-w", " %{http_version}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "local\n 2", r.stdout
    assert "ALPN: server accepted h2" in r.stderr or "ALPN, server accepted to use h2" in r.stderr, r.stderr

    r = curl(port, "/items?id=7", pki, "api.test", "--http2", "-w", " %{http_version}",
             "-H", "cookie: a=1", "-H", "cookie: b=2")
    assert r.returncode == 0 and version_of(r) == "2", r.stdout + r.stderr
    seen = origin.wait_requests(1)[-1]
    assert seen.target == "/items?id=7"
    assert seen.header("host") == [f"api.test:{port}"], seen
    assert seen.header("x-forwarded-proto") == ["https"], seen
    assert seen.header("cookie") == ["a=1; b=2"], "cookie crumbs joined (RFC 9113 §8.2.3)"
    assert not any(name.startswith(b":") for name, _ in seen.headers), "no pseudo-header upstream"

    r = curl(port, "/local", pki, "edge.test", "--http1.1", "-w", " %{http_version}")
    assert r.returncode == 0 and r.stdout == "local\n 1.1", r.stdout + r.stderr


def h2load_over_tls(port: int, n: int = 2000) -> str:
    r = subprocess.run(
        ["h2load", "-n", str(n), "-c", "4", "-m", "10", "-t", "1", f"https://127.0.0.1:{port}/local"],
        capture_output=True, text=True, timeout=60,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Application protocol: h2" in out, out
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    assert m, out
    total, done, ok, failed, errored = map(int, m.groups())
    assert (done, ok, failed, errored) == (total, total, 0, 0), out
    return out


def test_h2_over_tls_by_alpn_on_the_interpreter(blitzc, cache_dir, pki, origin, tmp_path):  # noqa: F811
    port = free_port()
    spec = h2_spec(tmp_path, pki, port, origin.port)
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    gw = Served([str(blitzc), "dev", str(spec)], port, env)
    try:
        check_h2_and_h1_on_one_port(port, pki, origin)
        h2load_over_tls(port)
    finally:
        assert gw.stop() == 0


@pytest.mark.timeout(1800)
def test_h2_over_tls_by_alpn_on_a_compiled_gateway(blitzc, cache_dir, pki, origin, tmp_path):  # noqa: F811
    port = free_port()
    spec = h2_spec(tmp_path, pki, port, origin.port)
    out = tmp_path / "gateway-bin"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    gw = Served([str(out)], port, dict(os.environ))
    try:
        check_h2_and_h1_on_one_port(port, pki, origin)
        h2load_over_tls(port, 5000)
        # A large response over h2+TLS arrives whole (flow control, TLS records).
        r = subprocess.run(
            ["curl", "-sS", "--http2", "--max-time", "20", "--cacert", str(pki / "ca.crt"),
             "--resolve", f"edge.test:{port}:127.0.0.1", "-o", "/dev/null", "-w", "%{size_download} %{http_version}",
             f"https://edge.test:{port}/bytes/3000000"],
            capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0 and r.stdout == "3000000 2", r.stdout + r.stderr
    finally:
        assert gw.stop() == 0


# ------------------------------------------------- found by black-box QA (#5)


def tls_socket(port: int, pki, alpn: list[str] | None) -> ssl.SSLSocket:  # noqa: F811
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="edge.test")


def h2_get(sock: ssl.SSLSocket, path: str) -> tuple[str, dict, bytes]:
    """One GET with the `h2` library over `sock`: status, headers, body."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "https"),
                          (":authority", "edge.test")], end_stream=True)
    sock.sendall(conn.data_to_send())
    headers, body = {}, b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        assert data, "closed before the response ended"
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                headers = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                return headers.pop(":status"), headers, body
        sock.sendall(conn.data_to_send())
    raise AssertionError("no response in time")


def closed_within(sock: ssl.SSLSocket, seconds: float) -> bool:
    """Reads (and drops) what the server sends until it closes; False if it
    is still open after `seconds`."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError):
            return True
    return False


@pytest.fixture
def h2_only(blitzc, cache_dir, pki, origin, tmp_path):  # noqa: F811
    """A TLS listener that speaks only `h2` (header-timeout 2 s, idle 60 s)."""
    port = free_port()
    spec = write_spec(tmp_path, pki, port, origin.port)
    spec.write_text(spec.read_text().replace('protocols "h1"', 'protocols "h2"'))
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    gw = Served([str(blitzc), "dev", str(spec)], port, env)
    yield gw
    assert gw.stop() == 0


def test_a_listener_without_h1_never_speaks_http1(h2_only, pki):  # noqa: F811
    port = h2_only.port
    # ALPN offering only http/1.1 is refused (no_application_protocol)...
    with pytest.raises(ssl.SSLError):
        tls_socket(port, pki, ["http/1.1"]).recv(1)
    # ...and a client offering no ALPN is not served HTTP/1.1 either: it
    # must speak HTTP/2, as on a cleartext listener without `h1`.
    r = curl(port, "/local", pki, "edge.test", "--no-alpn", "--http1.1")
    assert r.returncode != 0 and "HTTP/1.1 200" not in r.stderr, r.stdout + r.stderr
    with tls_socket(port, pki, None) as sock:
        assert sock.selected_alpn_protocol() is None
        assert h2_get(sock, "/local")[::2] == ("200", b"local\n")
    with tls_socket(port, pki, ["h2"]) as sock:
        assert h2_get(sock, "/local")[::2] == ("200", b"local\n")


def test_a_preface_without_settings_ends_at_the_header_timeout(h2_only, pki):  # noqa: F811
    # The client preface must be followed by a SETTINGS frame; one that
    # never comes is a handshake not done within header-timeout (2 s), not
    # an idle connection (60 s).
    with tls_socket(h2_only.port, pki, ["h2"]) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert closed_within(sock, 10), "still open 10 s after a preface without SETTINGS"
    with tls_socket(h2_only.port, pki, ["h2"]) as sock:
        assert h2_get(sock, "/local")[0] == "200", "a whole preface is served"


def test_a_local_204_has_neither_length_nor_body(blitzc, cache_dir, pki, origin, tmp_path):  # noqa: F811
    port = free_port()
    spec = h2_spec(tmp_path, pki, port, origin.port)
    empty = 'route "empty" {\n    match { path "/empty" }\n    respond 204 body="xyz"\n}\n\n'
    spec.write_text(spec.read_text().replace('route "local"', empty + 'route "local"'))
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    gw = Served([str(blitzc), "dev", str(spec)], port, env)
    try:
        # HTTP/1.1: a body after a 204 would be read as the next response.
        with tls_socket(port, pki, ["http/1.1"]) as sock:
            sock.sendall(b"GET /empty HTTP/1.1\r\nhost: edge.test\r\n\r\n"
                         b"GET /local HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n\r\n")
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        first, rest = got.split(b"\r\n\r\n", 1)
        assert first.startswith(b"HTTP/1.1 204 "), got
        assert b"content-length" not in first.lower(), first
        assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nlocal\n"), got
        # HTTP/2: no content-length field, no DATA.
        with tls_socket(port, pki, ["h2"]) as sock:
            status, headers, body = h2_get(sock, "/empty")
        assert (status, body) == ("204", b""), (status, headers, body)
        assert "content-length" not in headers, headers
    finally:
        assert gw.stop() == 0
