"""TLS termination on the runtime itself (hello_gateway with `--tls-cert` /
`--tls-key`): session resumption across workers, SIGHUP reload under
traffic, and handshakes that never finish. Certificates come from a
throwaway CA (`support/pki.py`); clients are `openssl s_client`, curl and
Python's ssl. The spec-driven side (SNI among several certificates, TLS to
upstreams, `check` against the runtime) is in tests/blitzc/test_tls_specs.py.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.origin import pattern_sha256
from support.pki import Pki, served_cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("runtime-tls"))
    p.leaf("edge", "edge.test", signer="int")
    p.leaf("renewed", "edge.test", key="rsa")
    p.leaf("other", "other.test")
    return p


@pytest.fixture
def certs(pki, tmp_path) -> Path:
    """A folder with `live.crt` / `live.key` (the edge pair), which a test
    may overwrite before a SIGHUP."""
    shutil.copy(pki.path("edge.crt"), tmp_path / "live.crt")
    shutil.copy(pki.path("edge.key"), tmp_path / "live.key")
    return tmp_path


def tls_gateway(start_gateway, certs: Path, **opts):
    return start_gateway(tls_cert=certs / "live.crt", tls_key=certs / "live.key", **opts)


def s_client(port: int, *opts: str, stdin: str = "") -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "edge.test", *opts],
                       input=stdin, capture_output=True, text=True, errors="replace", timeout=20)
    return r.stdout + r.stderr


def wait_line(gw, needle: str, after: int = 0, timeout: float = 5.0) -> str:
    line = gw.line_with(needle, after, timeout)
    assert line is not None, f"no log line with {needle!r}:\n{gw.tail()}"
    return line


# ---------------------------------------------------------------- resumption


@pytest.mark.parametrize("opts", [("-tls1_3",), ("-tls1_2",), ("-tls1_2", "-no_ticket")],
                         ids=["tls13-ticket", "tls12-ticket", "tls12-session-id"])
def test_sessions_resume_on_every_worker(start_gateway, certs, tmp_path, opts):
    """Two workers: successive connections land on either (SO_REUSEPORT
    spreads them by address), and each resumes, so the ticket keys and the
    session cache are the listener's, not a worker's."""
    gw = tls_gateway(start_gateway, certs, workers=2)
    sess = tmp_path / "session.pem"
    request = "GET /healthz HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n\r\n"
    first = s_client(gw.port, *opts, "-sess_out", str(sess), "-ign_eof", stdin=request)
    assert "New," in first and "ok" in first, first
    for i in range(8):
        again = s_client(gw.port, *opts, "-sess_in", str(sess), "-ign_eof", stdin=request)
        assert "Reused," in again, f"resumption {i}: {again}"
        assert "HTTP/1.1 200" in again, again


# ---------------------------------------------------------------- reload


class SlowDownload(threading.Thread):
    """GET /bytes/N over TLS, read slowly: in flight across a reload."""

    def __init__(self, port: int, pki: Pki, n: int):
        super().__init__(daemon=True)
        self.port, self.n = port, n
        self.ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
        self.started = threading.Event()
        self.release = threading.Event()
        self.digest = None
        self.error = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=20) as raw:
                with self.ctx.wrap_socket(raw, server_hostname="edge.test") as s:
                    s.sendall(f"GET /bytes/{self.n} HTTP/1.1\r\nhost: edge.test\r\n\r\n".encode())
                    head, body = read_head(s)
                    assert head.startswith(b"HTTP/1.1 200"), head
                    h = hashlib.sha256(body)
                    got = len(body)
                    self.started.set()
                    self.release.wait(10)  # the reload happens meanwhile
                    while got < self.n:
                        chunk = s.recv(65536)
                        assert chunk, f"closed after {got} of {self.n} bytes"
                        h.update(chunk)
                        got += len(chunk)
                    self.digest = h.hexdigest()
        except Exception as e:  # noqa: BLE001  (reported by the test)
            self.error = e
            self.started.set()


def test_sighup_swaps_certificates_under_traffic(start_gateway, origin, certs, pki):
    gw = tls_gateway(start_gateway, certs, workers=2)
    n = 8 * 1024 * 1024
    download = SlowDownload(gw.port, pki, n)
    download.start()
    assert download.started.wait(10) and download.error is None, download.error
    keep = pki_client(pki).wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=10),
                                       server_hostname="edge.test")
    assert get(keep, "/healthz") == b"ok\n"

    # Renewed certificate, another key type: new handshakes get it.
    mark = len(gw.lines)
    shutil.copy(pki.path("renewed.crt"), certs / "live.crt")
    shutil.copy(pki.path("renewed.key"), certs / "live.key")
    gw.signal(signal.SIGHUP)
    wait_line(gw, "certificate(s) reloaded", after=mark)
    assert served_cert(gw.port, "edge.test") == pki.der("renewed")
    assert get(keep, "/healthz") == b"ok\n", "a connection opened before the reload goes on"

    # Half a renewal (the new certificate, the old key): refused, the
    # current pair stays, the log names both files.
    mark = len(gw.lines)
    shutil.copy(pki.path("other.crt"), certs / "live.crt")
    gw.signal(signal.SIGHUP)
    line = wait_line(gw, "not reloaded", after=mark)
    assert "live.crt" in line and "live.key" in line and "does not match" in line, line
    assert served_cert(gw.port, "edge.test") == pki.der("renewed")
    # A key file gone: the same.
    (certs / "live.key").unlink()
    mark = len(gw.lines)
    gw.signal(signal.SIGHUP)
    line = wait_line(gw, "not reloaded", after=mark)
    assert "not found" in line, line
    assert served_cert(gw.port, "edge.test") == pki.der("renewed")

    download.release.set()
    download.join(30)
    assert download.error is None, download.error
    assert download.digest == pattern_sha256(n), "the download in flight finished intact"
    assert get(keep, "/healthz") == b"ok\n"
    keep.close()
    assert gw.alive()


def pki_client(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.path("ca.crt")))


def read_head(sock) -> tuple[bytes, bytes]:
    """Reads a response head: (head, the body bytes that came with it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "closed before the head"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    return head, body


def get(sock: ssl.SSLSocket, path: str) -> bytes:
    """One keep-alive GET; the body (Content-Length framed)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: edge.test\r\n\r\n".encode())
    head, body = read_head(sock)
    length = int([v for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                  if k.strip().lower() == b"content-length"][0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return body


# ---------------------------------------------------------------- handshakes that never finish


def test_half_open_handshakes_do_not_starve_a_good_client(start_gateway, certs, pki):
    """Hundreds of connections that send nothing, half a ClientHello, or
    plain HTTP: a good client is served meanwhile, and the unfinished ones
    are closed at the header timeout (each handshake is bounded)."""
    gw = tls_gateway(start_gateway, certs, workers=1, header_timeout=1)
    baseline = gw.fds()
    partial = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 16
    socks = []
    try:
        for i in range(600):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            if i % 3 == 1:
                s.sendall(partial)
            elif i % 3 == 2:
                s.sendall(b"GET / HTTP/1.1\r\nhost: edge.test\r\n\r\n")
            socks.append(s)
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(pki.path("ca.crt")),
                            "--resolve", f"edge.test:{gw.port}:127.0.0.1", f"https://edge.test:{gw.port}/healthz"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
        for i, s in enumerate(socks):
            got = b""
            while True:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
            # Plain HTTP gets a plain 400 (as from nginx), the rest no HTTP answer.
            if i % 3 == 2:
                assert got.startswith(b"HTTP/1.1 400 "), (i, got)
            else:
                assert not got.startswith(b"HTTP/"), (i, got)
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while gw.fds() > baseline + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.fds() <= baseline + 5, (baseline, gw.fds())
    assert gw.alive()


# ------------------------------------------------------------- closing


def _tls_client(port: int, pki: Pki) -> ssl.SSLSocket:
    """A TLS client socket to the gateway that tells a close_notify from a
    bare TCP EOF (`suppress_ragged_eofs=False`: the latter raises)."""
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="edge.test", suppress_ragged_eofs=False)


def _read_response_then_close(s: ssl.SSLSocket) -> str:
    """Reads until the gateway ends the stream: 'close_notify' or 'bare EOF'."""
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ssl.SSLEOFError:
            return "bare EOF"
        if not chunk:
            assert b" 200 " in data.split(b"\r\n", 1)[0], data[:200]
            return "close_notify"
        data += chunk


@pytest.mark.parametrize("how", ["idle-timeout", "drain"])
def test_an_idle_tls_connection_is_closed_with_close_notify(start_gateway, certs, pki, how):
    """RFC 8446 §6.1: each party MUST send close_notify before closing its
    write side. A keep-alive TLS connection the gateway closes (idle
    timeout, drain) ends with one, so the client can tell the end of the
    stream from a cut."""
    g = tls_gateway(start_gateway, certs, idle_timeout=1, grace=5)
    s = _tls_client(g.port, pki)
    try:
        s.sendall(b"GET /k HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        if how == "drain":
            time.sleep(0.3)
            g.signal(signal.SIGTERM)
        assert _read_response_then_close(s) == "close_notify"
    finally:
        s.close()


def test_a_tls_client_that_stops_reading_is_cut_at_body_timeout(start_gateway, origin, certs, pki):
    """As in cleartext (test_limits.py): a TLS client that asks for a large
    download and stops reading is cut once nothing could be written to it
    for body-timeout. Its close_notify cannot be delivered either (the send
    buffer is full): the gateway must not wait for that forever."""
    g = tls_gateway(start_gateway, certs, body_timeout=2)
    time.sleep(0.3)
    base = g.fds()
    raw = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
    s = ctx.wrap_socket(raw, server_hostname="edge.test")
    try:
        s.sendall(f"GET /bytes/{256 << 20} HTTP/1.1\r\nHost: edge.test\r\n\r\n".encode())
        assert origin.wait_for(lambda: any(q.path.startswith("/bytes/") for q in origin.requests), 5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and g.fds() > base:
            time.sleep(0.2)
        assert g.fds() <= base, f"the gateway still holds the connection of a client that stopped reading ({g.fds()} fds, {base} before)"
    finally:
        s.close()
