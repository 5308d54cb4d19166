"""Review of TLS configuration, certificate reload and TLS to upstreams,
through one compiled gateway (`blitzc build`, one worker so that one
client's requests share one upstream pool).

What the other TLS suites already pin is not repeated (see
test_tls*.py, test_tls_upstream_qa.py, test_issue5_blackbox.py and
tests/runtime/test_tls_*.py). This file adds:

- a SIGHUP reload is all-or-nothing per listener, across its SNI names: a
  listener whose one file is now wrong (a certificate for another name)
  keeps every current certificate, including the names whose new files
  were good, while another listener of the same gateway takes its new
  certificate; the next good reload applies all names at once;
- `sni` written with capitals and a trailing dot selects for the plain
  lower-case name a client sends (RFC 6066: SNI has no trailing dot);
- upstream verification is on for more ways a certificate can be wrong:
  a certificate not yet valid, one whose extended key usage is client
  authentication only, and a chain the server sends without its
  intermediate; each is a 502 and the request never reaches the server;
- upstream verification is also on for a certificate with the name in
  its CN only (no subjectAltName): no CN fallback (RFC 6125 §6.4.4);
- two upstreams at one address with a different `sni`, or a different
  `ca`, share no pooled connection: a connection verified for one name
  or CA file never carries a request of the other;
- an upstream `sni` with a trailing dot is sent without it;
- upstream CA files rotate on SIGHUP end to end: a wrong CA, then the
  right one, a file that does not load (nothing changes, sessions still
  resume), the wrong one again (new connections fail); and a CA file
  missing at start is used once a SIGHUP loads it;
- (fixed) `blitzc check` took for a DNS name an `sni` the runtime's
  rustls does not (an all-numeric or hex last label, two trailing dots):
  on a server it checked clean and then every request was a 502; on a
  listener it was reported, but as B066 (certificate not valid for the
  name) instead of the documented B039. `check` now asks rustls.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.blitzc import Served, build
from support.gateway import free_port
from support.origin import OriginConn, RecordedRequest, respond
from support.pki import Pki, TlsOrigin, openssl, served_cert

SPEC = """
version 1
gateway "review-tls-qa" {{
    workers 1
}}
listener "http" {{
    bind "127.0.0.1:{http}"
}}
listener "reload" {{
    bind "127.0.0.1:{reload}"
    tls {{
        cert "live/default.crt" key="live/default.key"
        cert "live/a.crt" key="live/a.key" sni="a.test"
        cert "live/b.crt" key="live/b.key" sni="b.test"
    }}
}}
listener "neighbour" {{
    bind "127.0.0.1:{neighbour}"
    tls {{
        cert "live/n.crt" key="live/n.key"
    }}
}}
listener "names" {{
    bind "127.0.0.1:{names}"
    tls {{
        cert "certs/default.crt" key="certs/default.key"
        cert "certs/b0.crt" key="certs/b0.key" sni="B.Test."
    }}
}}
upstream "good" {{
    server "127.0.0.1:{good}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "other-name" {{
    server "127.0.0.1:{good}" tls=#true sni="other.test" ca="certs/ca.crt"
}}
upstream "other-ca" {{
    server "127.0.0.1:{good}" tls=#true sni="origin.test" ca="certs/other-ca.crt"
}}
upstream "dot" {{
    server "127.0.0.1:{dot}" tls=#true sni="origin.test." ca="certs/ca.crt"
}}
upstream "future" {{
    server "127.0.0.1:{future}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "client-eku" {{
    server "127.0.0.1:{client_eku}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "no-intermediate" {{
    server "127.0.0.1:{no_intermediate}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
upstream "rotating-ca" {{
    server "127.0.0.1:{rotating}" tls=#true sni="origin.test" ca="live/rotating-ca.pem"
}}
upstream "late-ca" {{
    server "127.0.0.1:{rotating}" tls=#true sni="origin.test" ca="live/late-ca.pem"
}}
upstream "cn-only" {{
    server "127.0.0.1:{cn_only}" tls=#true sni="origin.test" ca="certs/ca.crt"
}}
{routes}
"""

UPSTREAMS = ("good", "other-name", "other-ca", "dot", "future", "client-eku", "no-intermediate", "cn-only",
             "rotating-ca", "late-ca")


def issue_with_extensions(pki: Pki, name: str, common_name: str, extensions: str, serial: int) -> None:
    """`name.crt` / `name.key` (P-256) for subject CN `common_name`, signed by
    the root, with exactly `extensions` (openssl `-extfile` lines)."""
    (pki.dir / f"{name}.ext").write_text(extensions + "\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={common_name}", cwd=pki.dir)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", str(serial),
            "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki.dir)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    certs = tmp_path_factory.mktemp("review-tls-qa") / "certs"
    certs.mkdir()
    p = Pki(certs)
    p.leaf("default", "default.test")
    # Two generations of each reloaded certificate, and a good certificate
    # for a name the listener does not select it for.
    for gen in ("0", "1"):
        p.leaf(f"a{gen}", "a.test")
        p.leaf(f"b{gen}", "b.test")
        p.leaf(f"n{gen}", "neighbour.test")
    p.leaf("c", "c.test")
    p.leaf("numeric", "origin.123")
    p.leaf("origin", "origin.test", signer="int")
    p.dated("future", "origin.test", "20400101000000Z", "20410101000000Z")
    issue_with_extensions(p, "client-eku", "origin.test",
                          "subjectAltName=DNS:origin.test\nextendedKeyUsage=clientAuth", serial=901)
    # The name in the subject's CN only, no subjectAltName (what old servers have).
    issue_with_extensions(p, "cn-only", "origin.test", "basicConstraints=CA:FALSE", serial=902)
    # Another root, which did not issue the origin's certificate.
    other = certs / "other"
    other.mkdir()
    shutil.copyfile(Pki(other).path("ca.crt"), p.path("other-ca.crt"))
    # The leaf the intermediate signed, without the intermediate after it.
    p.leaf("no-int", "origin.test", signer="int")
    text = p.path("no-int.crt").read_text()
    end = "-----END CERTIFICATE-----\n"
    p.path("no-int.crt").write_text(text[: text.index(end) + len(end)])
    return p


def closing(req: RecordedRequest, conn: OriginConn) -> bool:
    """Answers 200 with `connection: close`, and closes."""
    respond(conn, req, 200, b"ok\n", headers=("connection: close",))
    return False


def install_file(source: Path, dest: Path) -> None:
    """Replaces `dest` whole with a copy of `source` (a rename), as a
    deployment tool does."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def install(pki: Pki, live: Path, name: str, source: str) -> None:
    """Puts `source.crt` / `source.key` in place as `live/name.*`."""
    for ext in ("crt", "key"):
        install_file(pki.path(f"{source}.{ext}"), live / f"{name}.{ext}")


class ResumeOrigin(TlsOrigin):
    """TlsOrigin that records, per handshake, whether the session was resumed."""

    def __init__(self, cert: Path, key: Path):
        super().__init__(cert, key)
        self.resumed: list[bool] = []

    def _handshake_done(self, sock) -> None:
        self.resumed.append(sock.session_reused)


class Setup:
    def __init__(self, pki: Pki, live: Path, gw: Served, ports: dict, origins: dict):
        self.pki, self.live, self.gw, self.ports, self.origins = pki, live, gw, ports, origins

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=15)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def sighup(self, *needles: str) -> list[str]:
        """Sends SIGHUP and waits for the reload log line (a listener's or a
        CA file's) that holds each of `needles`; returns them in order."""
        seen = len(self.gw.lines)
        os.kill(self.gw.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            new = [line for line in self.gw.lines[seen:] if "reloaded" in line]
            found = [next((line for line in new if needle in line), None) for needle in needles]
            if all(found):
                return found
            time.sleep(0.05)
        raise AssertionError(f"no reload log for each of {needles}:\n" + "\n".join(self.gw.lines[seen:]))


@pytest.fixture(scope="module")
def setup(blitzc, cache_dir, pki):
    root = pki.dir.parent
    live = root / "live"
    live.mkdir()
    install(pki, live, "default", "default")
    install(pki, live, "a", "a0")
    install(pki, live, "b", "b0")
    install(pki, live, "n", "n0")
    origins = {
        "good": TlsOrigin(pki.path("origin.crt"), pki.path("origin.key")),
        "dot": TlsOrigin(pki.path("origin.crt"), pki.path("origin.key")),
        "future": TlsOrigin(pki.path("future.crt"), pki.path("future.key")),
        "client_eku": TlsOrigin(pki.path("client-eku.crt"), pki.path("client-eku.key")),
        "no_intermediate": TlsOrigin(pki.path("no-int.crt"), pki.path("no-int.key")),
        "cn_only": TlsOrigin(pki.path("cn-only.crt"), pki.path("cn-only.key")),
        "rotating": ResumeOrigin(pki.path("origin.crt"), pki.path("origin.key")),
    }
    # The rotating CA file starts as the wrong CA; the late one exists for
    # `check` and `build` only, and is gone when the gateway starts.
    shutil.copyfile(pki.path("other-ca.crt"), live / "rotating-ca.pem")
    shutil.copyfile(pki.path("ca.crt"), live / "late-ca.pem")
    ports = {"http": free_port(), "reload": free_port(), "neighbour": free_port(), "names": free_port(),
             **{k: o.port for k, o in origins.items()}}
    routes = "".join(f'route "{u}" {{\n    match {{ path-prefix "/{u}/" }}\n    proxy "{u}"\n}}\n' for u in UPSTREAMS)
    spec = root / "review-tls-qa.kdl"
    spec.write_text(SPEC.format(routes=routes, **ports))
    check = subprocess.run([str(blitzc), "check", str(spec)], capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    out = root / "gateway-bin"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    (live / "late-ca.pem").unlink()
    gw = Served([str(out)], ports["http"], dict(os.environ))
    yield Setup(pki, live, gw, ports, origins)
    assert gw.stop() == 0, "graceful exit"
    for o in origins.values():
        o.stop()


@pytest.fixture
def s(setup):
    for o in setup.origins.values():
        o.reset()
        o.sni_seen.clear()
    yield setup
    assert setup.gw.proc.poll() is None, "the gateway died:\n" + "\n".join(setup.gw.lines[-30:])


def test_a_reload_applies_to_every_sni_name_of_a_listener_or_to_none(s):
    pki, live, port = s.pki, s.live, s.ports["reload"]
    assert served_cert(port, "a.test") == pki.der("a0")
    assert served_cert(port, "b.test") == pki.der("b0")
    assert served_cert(s.ports["neighbour"], "neighbour.test") == pki.der("n0")

    # a.test gets a good new certificate, b.test one for another name (B066
    # at load): the listener must keep both current ones, not half-apply.
    install(pki, live, "a", "a1")
    install(pki, live, "b", "c")
    install(pki, live, "n", "n1")
    line, neighbour = s.sighup('listener "reload"', 'listener "neighbour"')
    assert "not reloaded" in line and "b.crt" in line and "b.test" in line, line
    assert "not reloaded" not in neighbour, neighbour
    assert served_cert(port, "a.test") == pki.der("a0"), "a.test took its new file from a reload that failed"
    assert served_cert(port, "b.test") == pki.der("b0")
    assert served_cert(port, None) == pki.der("default")
    # Another listener's good files are its own business.
    assert served_cert(s.ports["neighbour"], "neighbour.test") == pki.der("n1")

    install(pki, live, "b", "b1")
    [line] = s.sighup('listener "reload"')
    assert "3 certificate(s) reloaded" in line, line
    assert served_cert(port, "a.test") == pki.der("a1")
    assert served_cert(port, "b.test") == pki.der("b1")


@pytest.mark.parametrize("client_sends", ["b.test", "B.TEST", "b.test."])
def test_an_sni_written_with_capitals_and_a_trailing_dot_selects_for_the_plain_name(s, client_sends):
    # The spec says sni="B.Test."; `check` accepted it (the fixture ran it).
    # Clients do send a trailing dot (Python's ssl does), though RFC 6066 says not to.
    assert served_cert(s.ports["names"], client_sends) == s.pki.der("b0")
    assert served_cert(s.ports["names"], "other.test") == s.pki.der("default")


def test_an_upstream_sni_with_a_trailing_dot_is_sent_without_it(s):
    status, body = s.get("/dot/x")
    assert status == 200, body
    assert s.origins["dot"].sni_seen == ["origin.test"]


@pytest.mark.parametrize("upstream,origin", [
    ("future", "future"),                    # notBefore in 2040
    ("client-eku", "client_eku"),            # extendedKeyUsage clientAuth only: not a server's certificate
    ("no-intermediate", "no_intermediate"),  # leaf alone; the CA file holds the root only
    ("cn-only", "cn_only"),                  # the name in the CN only: RFC 6125 §6.4.4, no CN fallback
])
def test_an_upstream_certificate_that_cannot_verify_is_a_502_and_nothing_reaches_it(s, upstream, origin):
    status, _ = s.get(f"/{upstream}/x")
    assert status == 502
    assert s.origins[origin].requests == [], "a request went to a server whose certificate did not verify"
    # The control: the same CA and name with a certificate that verifies.
    assert s.get("/good/x")[0] == 200


def test_upstream_ca_files_rotate_on_sighup_and_a_bad_one_changes_nothing(s):
    live, rotating = s.live, s.origins["rotating"]
    # Every answer closes its connection: each request is a new handshake,
    # verified with the CA certificates of that moment (a pooled connection
    # would keep what it verified, as documented).
    rotating.handler = closing
    rotating.resumed.clear()
    # At start: the rotating file is the wrong CA, the late one is missing.
    assert s.get("/rotating-ca/1")[0] == 502
    assert s.get("/late-ca/1")[0] == 502
    assert rotating.requests == []

    install_file(s.pki.path("ca.crt"), live / "rotating-ca.pem")
    install_file(s.pki.path("ca.crt"), live / "late-ca.pem")
    lines = s.sighup("rotating-ca.pem", "late-ca.pem")
    assert not any("not reloaded" in line for line in lines), lines
    assert s.get("/rotating-ca/2")[0] == 200
    assert s.get("/late-ca/2")[0] == 200

    # A file that does not load keeps the current CA certificates.
    (live / "rotating-ca.pem").write_text("not a certificate\n")
    [line] = s.sighup("rotating-ca.pem")
    assert "not reloaded" in line, line
    assert s.get("/rotating-ca/3")[0] == 200

    # Back to the wrong CA: new connections no longer verify.
    install_file(s.pki.path("other-ca.crt"), live / "rotating-ca.pem")
    [line] = s.sighup("rotating-ca.pem")
    assert "not reloaded" not in line, line
    assert s.get("/rotating-ca/4")[0] == 502
    assert [r.target for r in rotating.requests] == ["/rotating-ca/2", "/late-ca/2", "/rotating-ca/3"]
    # The failed reload kept the client configuration too: /rotating-ca/3
    # resumed the session /rotating-ca/2 verified (a successful reload
    # starts without sessions, test_tls_upstream_qa.py pins that).
    assert rotating.resumed == [False, False, True]


def test_upstreams_at_one_address_with_different_sni_share_no_pooled_connection(s):
    # One keep-alive client, one worker: the `good` connection is pooled.
    conn = http.client.HTTPConnection("127.0.0.1", s.ports["http"], timeout=15)
    try:
        for path, want in [("/good/1", 200), ("/other-name/2", 502), ("/other-ca/3", 502), ("/good/4", 200)]:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == want, path
    finally:
        conn.close()
    targets = [r.target for r in s.origins["good"].requests]
    assert "/other-name/2" not in targets, "a connection verified for origin.test carried a request for other.test"
    assert "/other-ca/3" not in targets, "a connection verified with one CA file carried a request of another's"
    assert "other.test" in s.origins["good"].sni_seen, "the other upstream made its own handshake"


CHECK_SPEC_UPSTREAM = """
version 1
listener "http" {{
    bind "127.0.0.1:{port}"
}}
upstream "u" {{
    server "127.0.0.1:{port2}" tls=#true sni="{sni}"
}}
route "r" {{
    match {{ path-prefix "/" }}
    proxy "u"
}}
"""

CHECK_SPEC_LISTENER = """
version 1
listener "tls" {{
    bind "127.0.0.1:{port}"
    tls {{
        cert "{certs}/default.crt" key="{certs}/default.key"
        cert "{certs}/b0.crt" key="{certs}/b0.key" sni="{sni}"
    }}
}}
"""


def check_output(blitzc, tmp_path: Path, spec: str) -> tuple[int, str]:
    path = tmp_path / "spec.kdl"
    path.write_text(spec)
    r = subprocess.run([str(blitzc), "check", "--format", "json", str(path)], capture_output=True, text=True,
                       timeout=60, check=False)
    return r.returncode, r.stdout + r.stderr


# Names `check` takes for DNS names and rustls (`ServerName::try_from`, what
# the runtime builds the upstream's TLS with) does not: its last label may
# not be all-numeric or a hex number (it would read as an IPv4 address),
# and no label may be empty.
NOT_SERVER_NAMES = ["origin.123", "svc.0x1f", "origin.test.."]


@pytest.mark.parametrize("sni", NOT_SERVER_NAMES)
def test_check_refuses_an_upstream_sni_the_runtime_cannot_use(blitzc, tmp_path, sni):
    rc, out = check_output(blitzc, tmp_path, CHECK_SPEC_UPSTREAM.format(port=free_port(), port2=free_port(), sni=sni))
    assert rc != 0 and "B039" in out, out


@pytest.mark.parametrize("sni", ["origin.test.", "origin.test", "my_host.test", "a1.b-2.test"])
def test_check_accepts_an_upstream_sni_the_runtime_can_use(blitzc, tmp_path, sni):
    """The control of the test above: names both agree on."""
    rc, out = check_output(blitzc, tmp_path, CHECK_SPEC_UPSTREAM.format(port=free_port(), port2=free_port(), sni=sni))
    assert rc == 0, out


@pytest.mark.parametrize("sni", ["b.123", "b.test.."])
def test_a_listener_sni_that_is_no_dns_name_is_b039(blitzc, pki, tmp_path, sni):
    rc, out = check_output(blitzc, tmp_path, CHECK_SPEC_LISTENER.format(port=free_port(), certs=pki.dir, sni=sni))
    assert rc != 0, out
    assert "B039" in out, out


def test_an_upstream_sni_that_checks_clean_is_one_the_runtime_can_connect_with(blitzc, cache_dir, pki, tmp_path):
    origin = TlsOrigin(pki.path("numeric.crt"), pki.path("numeric.key"))
    try:
        port = free_port()
        spec = tmp_path / "numeric.kdl"
        spec.write_text(CHECK_SPEC_UPSTREAM.format(port=port, port2=origin.port, sni="origin.123").replace(
            'sni="origin.123"', f'sni="origin.123" ca="{pki.path("ca.crt")}"'))
        if subprocess.run([str(blitzc), "check", str(spec)], capture_output=True, timeout=60, check=False).returncode != 0:
            return  # check refuses it: check and runtime agree
        out = tmp_path / "numeric-gw"
        result = build(blitzc, spec, out, cache_dir)
        assert result.returncode == 0, result.stderr
        gw = Served([str(out)], port, dict(os.environ))
        try:
            status, _, _ = gw.get("/x")
            assert status == 200, "\n".join(gw.lines)
        finally:
            gw.stop()
    finally:
        origin.stop()
