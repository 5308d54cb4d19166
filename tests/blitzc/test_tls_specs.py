"""TLS of a compiled gateway, from its spec: certificates chosen by SNI among
several (key types and PEM forms mixed), ALPN per listener, and TLS to
upstreams (verification, SNI, pooling, a body cut without close_notify).
Also: `blitzc check` and the runtime agree on which certificate files load.

One spec (below) is built once per module with `blitzc build` (two
workers); its origins listen on ports chosen before the build. Clients are
curl, `openssl s_client` and Python's ssl; origins are
`support/origin.py`, behind Python's ssl for the TLS ones
(`support/pki.py`, which also makes the throwaway CA).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.blitzc import Served, build
from support.gateway import build_hello_gateway, free_port
from support.origin import Origin
from support.pki import Pki, TlsOrigin, served_cert

SPEC = """
version 1
gateway "tls-specs" {{
    workers 2
}}
listener "tls" {{
    bind "127.0.0.1:{tls}"
    protocols "h1" "h2"
    tls {{
        cert "certs/edge.crt" key="certs/edge.key"
        cert "certs/rsa.crt" key="certs/rsa.key" sni="rsa.test"
        cert "certs/ed.crt" key="certs/ed.key" sni="ed.test"
        cert "certs/sec1.crt" key="certs/sec1.key" sni="Sec1.Test"
        cert "certs/wild.crt" key="certs/wild.key" sni="a.wild.test"
    }}
}}
listener "tls-h1" {{
    bind "127.0.0.1:{tls_h1}"
    tls {{
        cert "certs/api.crt" key="certs/api.key" sni="api.test"
    }}
}}
limits {{
    header-timeout "3s"
}}
upstream "plain" {{
    server "127.0.0.1:{plain}"
}}
upstream "by-ip" {{
    server "127.0.0.1:{by_ip}" tls=#true ca="certs/ca.crt"
}}
upstream "by-name" {{
    server "127.0.0.1:{by_name}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "roots" {{
    server "127.0.0.1:{by_name}" tls=#true sni="origin.test"
}}
upstream "wrong-name" {{
    server "127.0.0.1:{by_name}" tls=#true sni="other.test" ca="certs/ca.crt"
}}
upstream "expired" {{
    server "127.0.0.1:{expired}" tls=#true sni="expired.test" ca="certs/ca.crt"
}}
upstream "checked" {{
    server "127.0.0.1:{checked}" tls=#true sni="origin.test" ca="certs/ca.crt"
    health-check path="/healthz" interval="1s" timeout="1s" unhealthy=2
}}
route "local" {{
    match {{ path "/local" }}
    respond 200 body="local\\n" content-type="text/plain"
}}
{routes}
route "plain" {{
    proxy "plain"
}}
"""

TLS_UPSTREAMS = ("by-ip", "by-name", "roots", "wrong-name", "expired", "checked")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    certs = tmp_path_factory.mktemp("tls-specs") / "certs"
    certs.mkdir()
    p = Pki(certs)
    p.leaf("edge", "edge.test", signer="int")  # the chain: leaf, intermediate
    p.leaf("rsa", "rsa.test", key="rsa-pkcs1")
    p.leaf("ed", "ed.test", key="ed25519")
    p.leaf("sec1", "sec1.test", key="ec-sec1")
    p.leaf("wild", "*.wild.test")
    p.leaf("api", "api.test", key="rsa")
    p.leaf("origin", "origin.test", "IP:127.0.0.1", signer="int")
    p.expired("expired", "expired.test")
    return p


class Setup:
    def __init__(self, pki: Pki, gw: Served, ports: dict, origins: dict):
        self.pki, self.gw, self.ports, self.origins = pki, gw, ports, origins


@pytest.fixture(scope="module")
def setup(blitzc, cache_dir, pki):
    origins = {
        "plain": Origin(),
        "by_ip": TlsOrigin(pki.path("origin.crt"), pki.path("origin.key")),
        "by_name": TlsOrigin(pki.path("origin.crt"), pki.path("origin.key")),
        "expired": TlsOrigin(pki.path("expired.crt"), pki.path("expired.key")),
        "checked": TlsOrigin(pki.path("origin.crt"), pki.path("origin.key")),
    }
    ports = {"tls": free_port(), "tls_h1": free_port(), **{k: o.port for k, o in origins.items()}}
    routes = "".join(
        f'route "{u}" {{\n    match {{ path-prefix "/{u}" }}\n    proxy "{u}"\n}}\n' for u in TLS_UPSTREAMS
    )
    spec = pki.dir.parent / "tls-specs.kdl"
    spec.write_text(SPEC.format(routes=routes, **ports))
    check = subprocess.run([str(blitzc), "check", str(spec)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    out = pki.dir.parent / "gateway-bin"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    gw = Served([str(out)], ports["tls_h1"], dict(os.environ))
    deadline = time.monotonic() + 10
    while sum("listening on" in line for line in gw.lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield Setup(pki, gw, ports, origins)
    assert gw.stop() == 0, "graceful exit"
    for o in origins.values():
        o.stop()


@pytest.fixture
def s(setup):
    for o in setup.origins.values():
        o.reset()
    yield setup
    assert setup.gw.proc.poll() is None, "the gateway died:\n" + "\n".join(setup.gw.lines[-30:])


def curl(s: Setup, path: str, host: str = "edge.test", *opts: str, port: str = "tls") -> subprocess.CompletedProcess:
    p = s.ports[port]
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(s.pki.path("ca.crt")),
         "--resolve", f"{host}:{p}:127.0.0.1", *opts, f"https://{host}:{p}{path}"],
        capture_output=True, text=True, timeout=20,
    )


def s_client(port: int, *opts: str) -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *opts],
                       input="", capture_output=True, text=True, errors="replace", timeout=20)
    return r.stdout + r.stderr


# ---------------------------------------------------------------- termination


def test_sni_chooses_by_exact_name_among_key_types(s):
    port = s.ports["tls"]
    for name, cert in (("rsa.test", "rsa"), ("ed.test", "ed"), ("sec1.test", "sec1"), ("a.wild.test", "wild"),
                       ("RSA.Test", "rsa"), ("SEC1.TEST", "sec1"), ("edge.test", "edge")):
        assert served_cert(port, name) == s.pki.der(cert), name
    # The default: no SNI, an unknown name, a name the wildcard certificate
    # would cover but that no `sni` names (SNI selects by exact name).
    for name in (None, "unknown.test", "b.wild.test", "wild.test"):
        assert served_cert(port, name) == s.pki.der("edge"), name
    # An IP literal in SNI (RFC 6066 forbids it; openssl sends it anyway).
    assert re.search(r"subject=\s*CN ?= ?edge\.test", s_client(port, "-servername", "127.0.0.1")), "default"
    # Each certificate verifies for its name with a real client.
    for name in ("rsa.test", "ed.test", "sec1.test", "a.wild.test"):
        r = curl(s, "/local", name)
        assert r.returncode == 0 and r.stdout == "local\n", (name, r.stderr)


def test_the_whole_chain_is_sent(s):
    """The default certificate was issued by an intermediate: a client that
    trusts only the root verifies it, so the intermediate was sent."""
    out = s_client(s.ports["tls"], "-servername", "edge.test", "-CAfile", str(s.pki.path("ca.crt")), "-showcerts",
                   "-verify_return_error")
    assert "Verify return code: 0 (ok)" in out, out
    assert len(re.findall(r"-----BEGIN CERTIFICATE-----", out)) == 2, out


def test_a_listener_without_a_default_serves_its_first_certificate(s):
    port = s.ports["tls_h1"]
    assert served_cert(port, "api.test") == s.pki.der("api")
    assert served_cert(port, None) == s.pki.der("api")
    assert served_cert(port, "edge.test") == s.pki.der("api")


def test_alpn_per_listener(s):
    out = s_client(s.ports["tls"], "-alpn", "h2,http/1.1", "-servername", "edge.test")
    assert "ALPN protocol: h2" in out, out
    out = s_client(s.ports["tls_h1"], "-alpn", "h2,http/1.1", "-servername", "api.test")
    assert "ALPN protocol: http/1.1" in out, "a listener without h2 never offers it: " + out
    out = s_client(s.ports["tls_h1"], "-alpn", "h2", "-servername", "api.test")
    assert "no application protocol" in out, out
    # An HTTP/1.0 client offers only `http/1.0`: `h1` speaks it.
    for port, host in (("tls", "edge.test"), ("tls_h1", "api.test")):
        r = curl(s, "/local", host, "--http1.0", "-w", "%{http_code}", "-o", "/dev/null", port=port)
        assert r.returncode == 0 and r.stdout == "200", (port, r.stdout, r.stderr)
    r = curl(s, "/local", "edge.test", "--http2", "-w", " %{http_version}")
    assert r.returncode == 0 and r.stdout == "local\n 2", r.stdout + r.stderr


def test_tls12_and_tls13_only(s):
    port = s.ports["tls"]
    for flag, version in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
        for name in ("edge.test", "rsa.test", "ed.test"):
            out = s_client(port, flag, "-servername", name)
            assert re.search(rf"New, {version}, Cipher is (TLS_AES|TLS_CHACHA|ECDHE-(ECDSA|RSA)-(AES|CHACHA))", out), \
                (flag, name, out)
    for flag in ("-tls1_1", "-tls1"):
        out = s_client(port, flag, "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "edge.test")
        assert "Cipher is (NONE)" in out, out
    # TLS 1.2 without forward secrecy or with CBC: not offered.
    for cipher in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"):
        out = s_client(port, "-tls1_2", "-cipher", cipher, "-servername", "rsa.test")
        assert "Cipher is (NONE)" in out, (cipher, out)
    r = curl(s, "/local", "rsa.test", "--tls-max", "1.2")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_a_session_resumes_only_for_its_server_name_and_listener(s, tmp_path, version):
    """A session made for rsa.test resumed under another name would skip the
    authentication of that name's certificate: a full handshake instead."""
    sess = tmp_path / "session.pem"
    request = "GET /local HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"

    def run(port: int, name: str, *opts: str) -> str:
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version, "-servername", name,
                            "-ign_eof", *opts], input=request, capture_output=True, text=True, errors="replace",
                           timeout=20)
        return r.stdout + r.stderr

    out = run(s.ports["tls"], "rsa.test", "-sess_out", str(sess))
    assert "New," in out, out
    assert "Reused," in run(s.ports["tls"], "RSA.test", "-sess_in", str(sess)), "same name, another case"
    out = run(s.ports["tls"], "edge.test", "-sess_in", str(sess))
    assert "New," in out and re.search(r"subject=\s*CN ?= ?edge\.test", out), out
    out = run(s.ports["tls_h1"], "rsa.test", "-sess_in", str(sess))
    assert "New," in out, "another listener has its own ticket keys and cache: " + out


# ---------------------------------------------------------------- upstreams


def get_keep_alive(s: Setup, paths: list[str]) -> list[tuple[int, dict, bytes]]:
    """GETs over one client connection (so one worker)."""
    import http.client
    import ssl

    ctx = ssl.create_default_context(cafile=str(s.pki.path("ca.crt")))
    ctx.check_hostname = False  # the address is an IP, the certificate's name edge.test (chain still verified)
    conn = http.client.HTTPSConnection("127.0.0.1", s.ports["tls"], context=ctx, timeout=10)
    out = []
    try:
        for p in paths:
            conn.request("GET", p, headers={"host": "edge.test"})
            r = conn.getresponse()
            out.append((r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()))
    finally:
        conn.close()
    return out


def test_upstream_tls_verifies_sends_sni_and_pools(s):
    by_ip, by_name = s.origins["by_ip"], s.origins["by_name"]
    answers = get_keep_alive(s, [f"/by-name/{i}" for i in range(5)] + [f"/by-ip/{i}" for i in range(3)])
    assert [a[0] for a in answers] == [200] * 8, answers
    assert answers[0][2] == b"GET /by-name/0\n"
    # One upstream TLS connection carried every request to a server (one
    # client connection is one worker): pooled, not a handshake each.
    assert len({a[1]["x-origin-conn"] for a in answers[:5]}) == 1, answers
    assert len({a[1]["x-origin-conn"] for a in answers[5:]}) == 1, answers
    assert by_name.handshakes <= 2 and by_ip.handshakes <= 2, (by_name.handshakes, by_ip.handshakes)
    # SNI: the `sni` name; none for a server by IP address (RFC 6066),
    # whose certificate is then checked for the IP address.
    assert "origin.test" in by_name.sni_seen, by_name.sni_seen
    assert set(by_ip.sni_seen) == {None}, by_ip.sni_seen


@pytest.mark.parametrize("path, why", [
    ("/roots", "UnknownIssuer"),  # the built-in Mozilla roots do not know the test CA
    ("/wrong-name", "not valid for name"),
    ("/expired", "expired"),
])
def test_an_upstream_certificate_that_does_not_verify_is_a_502_and_a_log(s, path, why):
    r = curl(s, path, "edge.test", "-o", "/dev/null", "-w", "%{http_code}")
    assert r.returncode == 0 and r.stdout == "502", (r.stdout, r.stderr)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        logged = [line for line in s.gw.lines if "TLS handshake with upstream server" in line and why in line]
        if logged:
            break
        time.sleep(0.05)
    assert logged, "\n".join(s.gw.lines)
    origin = s.origins["expired" if path == "/expired" else "by_name"]
    assert origin.requests == [], "nothing was sent over an unverified connection"


def test_health_checks_reach_a_tls_server_over_tls(s):
    """Active checks speak to a TLS server as the workers do (TLS, SNI,
    the CA file): in cleartext it answers nothing and would be marked down
    after `unhealthy` checks, every request then a 503."""
    checked = s.origins["checked"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        checks = [r for r in checked.requests if r.header("user-agent") == ["blitz-health-check"]]
        if len(checks) >= 3:
            break
        time.sleep(0.1)
    assert len(checks) >= 3, (checked.requests, checked.handshake_errors)
    assert checks[0].path == "/healthz"
    assert "origin.test" in checked.sni_seen
    r = curl(s, "/checked/x", "edge.test", "-w", " %{http_code}")
    assert r.returncode == 0 and r.stdout == "GET /checked/x\n 200", (r.stdout, r.stderr)
    assert not [line for line in s.gw.lines if '"checked"' in line and "unhealthy" in line], s.gw.lines


def close_delimited(req, conn) -> bool:
    """A response whose body ends with the connection (`?length=N`: one that
    says it has N bytes): 100 KiB, then a close_notify (`?clean=1`) or a
    bare TCP close."""
    length = f"content-length: {req.query['length']}\r\n" if "length" in req.query else ""
    conn.send(f"HTTP/1.1 200 OK\r\nconnection: close\r\n{length}\r\n".encode() + b"z" * 100_000)
    if req.query.get("clean") == "1":
        try:
            conn.sock.unwrap()  # close_notify (the second half of the shutdown may fail: no matter)
        except OSError:
            pass
    conn.close()
    return False


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_a_body_cut_without_close_notify_is_not_passed_as_complete(s, http):
    """RFC 9110 §9.8: a close-delimited body over TLS is complete only after
    close_notify; a bare EOF may be an attacker's cut."""
    s.origins["by_name"].handler = close_delimited
    r = curl(s, "/by-name/eof?clean=1", "edge.test", http, "-o", "/dev/null", "-w", "%{http_code} %{size_download}")
    assert r.returncode == 0 and r.stdout == "200 100000", (r.stdout, r.stderr)
    r = curl(s, "/by-name/eof", "edge.test", http, "-o", "/dev/null", "-w", "%{http_code} %{size_download}")
    # curl: 18 (HTTP/1.1: no last chunk before the close), 92 (HTTP/2: the
    # stream was reset).
    assert r.returncode in (18, 92), (r.returncode, r.stdout, r.stderr)
    # A Content-Length body cut short fails the same way, close_notify or not.
    for query in ("length=200000", "length=200000&clean=1"):
        r = curl(s, f"/by-name/eof?{query}", "edge.test", http, "-o", "/dev/null")
        assert r.returncode in (18, 92), (query, r.returncode, r.stderr)


# ---------------------------------------------------------------- check and runtime agree

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
def files(pki) -> Pki:
    """Certificate files that load, and files that do not."""
    for key in ("ec", "p384", "p521", "rsa", "ed448", "rsa1024"):
        pki.leaf(f"k-{key}", "k.test", key=key)
    pki.with_expired_intermediate("old-int-chain", "k.test")
    d = pki.dir
    (d / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 !!!\n-----END CERTIFICATE-----\n")
    (d / "empty.pem").write_text("")
    subprocess.run(["openssl", "pkey", "-in", "edge.key", "-aes256", "-passout", "pass:x", "-out", "encrypted.key"],
                   cwd=d, check=True, capture_output=True, timeout=30)
    return pki


@pytest.fixture(scope="module")
def hello_bin() -> Path:
    try:
        return build_hello_gateway()
    except RuntimeError as e:
        pytest.fail(f"cannot build hello_gateway: {e}", pytrace=False)


# (cert, key, code `check` gives or None)
CASES = [
    ("edge.crt", "edge.key", None),  # EC P-256, PKCS#8, with its chain
    ("sec1.crt", "sec1.key", None),  # EC, SEC1
    ("rsa.crt", "rsa.key", None),  # RSA, PKCS#1
    ("api.crt", "api.key", None),  # RSA, PKCS#8
    ("ed.crt", "ed.key", None),  # Ed25519
    ("k-p384.crt", "k-p384.key", None),
    ("k-p521.crt", "k-p521.key", None),
    # loads and is served (expiry is the client's business), but check warns
    ("expired.crt", "expired.key", "B067"),
    ("old-int-chain.crt", "old-int-chain.key", "B067"),  # valid itself, its intermediate expired
    ("k-ed448.crt", "k-ed448.key", "B062"),
    ("k-rsa1024.crt", "k-rsa1024.key", "B062"),
    ("edge.crt", "api.key", "B063"),
    ("garbage.pem", "edge.key", "B062"),
    ("empty.pem", "edge.key", "B062"),
    ("edge.crt", "empty.pem", "B062"),
    ("edge.key", "edge.crt", "B062"),
    ("edge.crt", "encrypted.key", "B062"),
    ("missing.crt", "edge.key", "B062"),
    ("edge.crt", "missing.key", "B062"),
]


# Codes that are warnings: check passes and the runtime serves the files.
WARNINGS = {"B067"}


@pytest.mark.parametrize("cert, key, code", CASES, ids=[f"{c}+{k}" for c, k, _ in CASES])
def test_check_and_the_runtime_agree_on_certificate_files(blitzc, files, hello_bin, tmp_path, cert, key, code):
    spec = files.dir / f"agree-{cert}-{key}.kdl"
    spec.write_text(KDL_ONE_CERT.format(cert=cert, key=key))
    r = subprocess.run([str(blitzc), "check", "--format", "json", str(spec)], capture_output=True, text=True,
                       timeout=60)
    found = [(d["code"], d["line"], d["column"]) for d in json.loads(r.stdout)["diagnostics"]]
    warns = code in WARNINGS
    if code is None:
        assert r.returncode == 0 and found == [], found
    elif warns:
        assert r.returncode == 0 and [(f[0], f[1]) for f in found] == [(code, 5)], found
    else:
        assert r.returncode == 1 and found and {f[0] for f in found} == {code}, found
        assert all(f[1] == 5 for f in found), "diagnostics point at the `cert` line"
    # The runtime, with the same files: starts exactly when check passed,
    # and otherwise says why and exits (never a panic).
    port = free_port()
    proc = subprocess.Popen(
        [str(hello_bin), "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1", "--workers", "1",
         "--tls-cert", str(files.dir / cert), "--tls-key", str(files.dir / key)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        if code is None or warns:
            line = proc.stderr.readline()
            while line and "listening on" not in line:
                line = proc.stderr.readline()
            assert "listening on" in line, "the runtime refused what check accepted"
            assert served_cert(port, "k.test") == files.der(cert.removesuffix(".crt"))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        else:
            err = proc.stderr.read()
            assert proc.wait(timeout=30) == 1, err
            assert "panicked" not in err and (cert in err or key in err), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
