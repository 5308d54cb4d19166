"""A differential pass over the gateway's TLS termination (rustls, aws-lc-rs).

hello_gateway, nginx 1.22 and HAProxy 2.6 (both on OpenSSL 3.0) each
terminated TLS with the same throwaway certificates in front of their own
recording origin, and were probed with `openssl s_client` (versions, suites,
groups, signature algorithms, ALPN, sessions, renegotiation, fragment
options), Python's ssl over memory BIOs (records sent after the handshake)
and hand-built ClientHellos (SNI, ALPN and record edge cases). Every place
Blitz answered differently from both peers, or where an RFC MUST says
otherwise, was read against docs/spec.md (TLS) and runtime/README.md. The
peers are not needed here: each test asserts what the RFC requires, against
the real gateway. What test_tls_runtime.py, test_tls_h2_qa.py,
test_tls_resume_qa.py and tests/blitzc/test_tls*.py pin already is not
repeated (TLS 1.0/1.1, odd server names that still resolve, unknown-only
ALPN, resumption across workers, reloads and names, 0-RTT, KeyUpdate).
TLS to upstreams, compared the same way, is in
tests/blitzc/test_differential_tls_upstream_qa.py.

Bugs, each beside a passing control (the rustls ones strict xfails):

- (fixed since) a TLS 1.2 client-initiated renegotiation was not answered:
  rustls queues its `no_renegotiation` warning while the gateway is
  reading, and tls/stream.rs sent queued output only with the next write,
  so the client (which waits for the server's hello) hung until the header
  timeout (on a fresh connection) or the idle timeout (after a request);
  nginx and HAProxy answer at once (RFC 5746 §4.4, RFC 5246 §7.2.2). A
  read now sends what rustls queued in answer (`send_answers`);
- (fixed since) a TLS 1.2 handshake with no signature scheme the key can
  use ended with a bare TCP close, no alert (rustls 0.23 server/tls12.rs
  returns `Error::General("incompatible signing key")` without one); the
  peers send handshake_failure, RFC 5246 §7.2.2 says an alert MUST precede
  the close. A handshake that fails before the gateway sent anything now
  gets a plaintext handshake_failure (`alert_if_silent`);
- no `record_overflow` ever (RFC 8446 §5.1/§5.2 MUST): a ClientHello in a
  plaintext record of 2^14+1 bytes is even served, a TLS 1.3 record over
  2^14+256 bytes gets bad_record_mac (rustls allows TLS 1.2's 2^14+2048)
  and one beyond that decode_error;
- an unexpected record type (an unknown one, or heartbeat, not negotiated)
  gets decode_error or bad_record_mac where RFC 8446 §5 says MUST
  unexpected_message (HAProxy sends it, nginx too after the handshake).

Pinned, where the peers differ and the RFCs side with Blitz: only ECDHE
AEAD suites in TLS 1.2 (nginx and HAProxy also take CBC suites, RFC 9325
§4.2); only X25519/P-256/P-384 (no P-521, X448, FFDHE), a key share for
another group gets a HelloRetryRequest and a client with none of them
handshake_failure (RFC 8446 §4.1.1); a session made under a server name is
not resumed without SNI (both peers resume it; RFC 6066 §3); h2 offered
alone to an HTTP/1-only listener is no_application_protocol (HAProxy goes
on without ALPN; RFC 7301 §3.2); a ClientHello without the null compression
method is illegal_parameter (the peers say decode_error; RFC 8446 §4.1.2
MUST); an empty host name or ALPN name is decode_error, a server name that is
no DNS name is refused (nginx takes its default certificate); an SSL 3.0
hello is protocol_version. Agreements worth keeping: 0-RTT a client really
sends (with a ticket from another server that allowed it) is rejected and
never forwarded, however often replayed; a request sent ahead of the
client's Finished is bad_record_mac and never forwarded; a request followed
by close_notify is answered and the connection ends with close_notify; a
client asking max_fragment_length is served (the server may ignore it,
RFC 6066 §4, which rustls does where the peers echo it).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import subprocess
import time

import pytest
from support.gateway import Gateway, free_port
from support.waits import wait_until

REQUEST = "GET /tls-qa HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n\r\n"
# TLS record limits (RFC 8446 §5.1, §5.2).
MAX_PLAINTEXT = 2**14
MAX_TLS13_CIPHERTEXT = 2**14 + 256

ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 47: "illegal_parameter", 50: "decode_error", 70: "protocol_version",
    80: "internal_error", 100: "no_renegotiation", 112: "unrecognized_name", 120: "no_application_protocol",
}


# ------------------------------------------------------------------ gateways


@pytest.fixture(scope="module")
def tls_gw(hello_bin, origin_server, gateway_logs, pki):
    """One TLS gateway (h1 and h2 by ALPN) for the probes that end only their
    own connection; each test checks it is still alive afterwards."""
    g = Gateway(hello_bin, origin_server.addr, log_dir=gateway_logs, workers=1, protocols="h1,h2",
                tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key")).start()
    yield g
    g.kill()


@pytest.fixture
def gw(tls_gw, origin):
    yield tls_gw
    assert tls_gw.alive(), f"the gateway died: {tls_gw.crashed() or tls_gw.tail()}"


def s_client(port: int, *opts: str, stdin: str = REQUEST, name: str | None = "edge.test") -> str:
    sni = ["-servername", name] if name else ["-noservername"]
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *sni, "-ign_eof", *opts],
                       input=stdin, capture_output=True, text=True, errors="replace", timeout=20, check=False)
    return r.stdout + r.stderr


def served(out: str) -> bool:
    return "HTTP/1.1 200 OK" in out and "GET /tls-qa" in out


def alert_number(out: str) -> int | None:
    """The fatal alert an s_client run received, if any."""
    for line in out.splitlines():
        if "SSL alert number" in line:
            return int(line.rsplit("SSL alert number", 1)[1].split()[0].strip(":"))
    return None


# ------------------------------------------------------------------ hand-built ClientHellos


def _u8(b: bytes) -> bytes:
    return struct.pack("!B", len(b)) + b


def _u16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!H", kind) + _u16(body)


def sni_ext(*names: bytes) -> bytes:
    return ext(0, _u16(b"".join(b"\x00" + _u16(n) for n in names)))


def alpn_ext(*protocols: bytes) -> bytes:
    return ext(16, _u16(b"".join(_u8(p) for p in protocols)))


# RFC 7748 §6.1's X25519 public key: only the server's first answer is read.
X25519_SHARE = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def client_hello(sni=(b"edge.test",), extra=(), tls13=True, legacy_version=0x0303, compression=b"\x00") -> bytes:
    """A ClientHello handshake message (TLS 1.3 and 1.2, or 1.2 only): X25519
    and P-256, ECDSA and RSA-PSS signatures, AEAD suites; `sni` None sends
    no server_name, `extra` are more extensions."""
    exts = [sni_ext(*sni)] if sni is not None else []
    exts += [ext(10, _u16(struct.pack("!HH", 0x001D, 0x0017))), ext(11, _u8(b"\x00")),
             ext(13, _u16(struct.pack("!HHH", 0x0403, 0x0804, 0x0401)))]
    if tls13:
        exts += [ext(43, _u8(struct.pack("!HH", 0x0304, 0x0303))),
                 ext(51, _u16(struct.pack("!H", 0x001D) + _u16(X25519_SHARE)))]
    exts += list(extra)
    suites = ([0x1301, 0x1302] if tls13 else []) + [0xC02B, 0xC02C, 0xCCA9]
    body = (struct.pack("!H", legacy_version) + os.urandom(32) + _u8(os.urandom(32))
            + _u16(b"".join(struct.pack("!H", s) for s in suites)) + _u8(compression) + _u16(b"".join(exts)))
    return b"\x01" + struct.pack("!I", len(body))[1:] + body


def padded_hello(size: int) -> bytes:
    """A valid ClientHello of exactly `size` bytes (a padding extension, RFC 7685)."""
    base = len(client_hello(extra=[ext(21, b"")]))
    return client_hello(extra=[ext(21, b"\x00" * (size - base))])


def record(content_type: int, payload: bytes, version: int = 0x0301) -> bytes:
    return struct.pack("!BHH", content_type, version, len(payload)) + payload


def first_answer(port: int, data: bytes) -> str:
    """What the server answers first to `data`: `server_hello`, `alert:<name>`
    or `closed` (a TCP close without any record)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < 7 and time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
    if not got:
        return "closed"
    if got[0] == 22 and len(got) > 5 and got[5] == 2:
        return "server_hello"
    if got[0] == 21 and len(got) >= 7:
        return f"alert:{ALERTS.get(got[6], got[6])}"
    return f"other:{got[:12].hex()}"


# ------------------------------------------------------------------ records after the handshake


class MemoryTls:
    """A Python ssl client over memory BIOs: the handshake is done by the
    library, then raw records can be written straight on the socket and the
    server's (encrypted) alert still read."""

    def __init__(self, port: int, version: ssl.TLSVersion, before_last_flight: bytes = b""):
        """`before_last_flight`: raw bytes sent ahead of the client's last
        handshake flight (in TLS 1.3, ahead of its Finished)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = version
        ctx.set_alpn_protocols(["http/1.1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="edge.test")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                chunk = self.sock.recv(65536)
                assert chunk, "the server closed during the handshake"
                self.incoming.write(chunk)
        if before_last_flight:
            self.sock.sendall(before_last_flight)
        self.flush()

    def flush(self) -> None:
        out = self.outgoing.read()
        if out:
            self.sock.sendall(out)

    def read_to_end(self) -> tuple[bytes, str]:
        """(plaintext, how it ended): `close_notify`, `eof` (a TCP close
        without one), `alert:<name>` or `timeout`."""
        plain, deadline = b"", time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return plain, "timeout"
            except ConnectionResetError:
                chunk = b""
            self.incoming.write(chunk) if chunk else self.incoming.write_eof()
            try:
                while True:
                    got = self.tls.read(65536)
                    if not got:
                        return plain, "close_notify"
                    plain += got
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return plain, "close_notify"
            except ssl.SSLEOFError:
                return plain, "eof"
            except ssl.SSLError as e:
                reason = (e.reason or "").lower()
                return plain, "alert:" + reason.split("alert_", 1)[1] if "alert_" in reason else f"error:{reason}"
            if not chunk:
                return plain, "eof"
        return plain, "timeout"

    def close(self) -> None:
        self.sock.close()


def answer_after_handshake(port: int, raw: bytes, version=ssl.TLSVersion.TLSv1_3) -> str:
    """How the server ends a finished connection on which `raw` was sent."""
    c = MemoryTls(port, version)
    try:
        c.sock.sendall(raw)
        return c.read_to_end()[1]
    finally:
        c.close()


# ================================================================== versions, suites, groups


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                   "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_tls12_serves_ecdhe_aead_suites(gw, suite):
    out = s_client(gw.port, "-tls1_2", "-cipher", suite)
    assert f"Cipher is {suite}" in out and served(out), out[-1500:]


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-CCM",
                                   "AES128-GCM-SHA256"])
def test_tls12_refuses_cbc_ccm_and_static_rsa_suites(gw, suite):
    """RFC 9325 §4.2: TLS 1.2 with ECDHE and AEAD only. nginx and HAProxy
    (default `ssl_ciphers` / `ciphers`) also take the CBC suites (nginx the
    CCM one); rustls has none of them: handshake_failure (RFC 5246 §7.4.1.3)."""
    out = s_client(gw.port, "-tls1_2", "-cipher", suite)
    assert alert_number(out) == 40 and "HTTP/1.1" not in out, out[-1500:]


@pytest.mark.parametrize("groups,temp_key", [("X25519", "X25519"), ("P-256", "prime256v1"), ("P-384", "secp384r1"),
                                             ("X448:P-256", "prime256v1"), ("P-521:X25519", "X25519")])
def test_key_exchange_groups_and_hello_retry(gw, groups, temp_key):
    """openssl sends a key share for its first group only: for X448 or P-521
    (which the gateway lacks and nginx/HAProxy have) the server must answer
    a HelloRetryRequest naming one it has (RFC 8446 §4.1.4), then serve."""
    out = s_client(gw.port, "-tls1_3", "-groups", groups, "-msg")
    assert f"Server Temp Key: {temp_key}" in out.replace("ECDH, ", "") and served(out), out[-1500:]
    hellos = out.count("ClientHello")
    assert hellos == (2 if groups.split(":")[0] in ("X448", "P-521") else 1), out[-3000:]


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize("groups", ["X448", "P-521", "ffdhe2048:ffdhe3072"])
def test_no_common_group_is_handshake_failure(gw, version, groups):
    """RFC 8446 §4.1.1: no group in common, the server MUST abort with
    handshake_failure or insufficient_security (nginx and HAProxy serve
    these groups)."""
    out = s_client(gw.port, version, "-groups", groups)
    assert alert_number(out) in (40, 71) and "HTTP/1.1" not in out, out[-1500:]


def test_an_ssl3_hello_is_protocol_version(gw):
    """A ClientHello for SSL 3.0 without supported_versions: protocol_version
    (RFC 7568 MUST NOT negotiate it; RFC 8446 Appendix D); the peers say
    handshake_failure. The same hello as TLS 1.2 is served (control)."""
    assert first_answer(gw.port, record(22, client_hello(tls13=False, legacy_version=0x0300))) == \
        "alert:protocol_version"
    assert first_answer(gw.port, record(22, client_hello(tls13=False))) == "server_hello"


def test_a_hello_without_the_null_compression_method_is_illegal_parameter(gw):
    """RFC 8446 §4.1.2: a TLS 1.3 ClientHello whose legacy_compression_methods
    is not the single null method MUST be aborted with illegal_parameter
    (nginx and HAProxy say decode_error)."""
    assert first_answer(gw.port, record(22, client_hello(compression=b"\x01"))) == "alert:illegal_parameter"
    assert first_answer(gw.port, record(22, client_hello(compression=b"\x00"))) == "server_hello"


# ================================================================== signature algorithms


@pytest.mark.parametrize("sigalgs", ["rsa_pss_rsae_sha256", "ed25519", "ECDSA+SHA384"])
def test_tls13_without_a_usable_signature_scheme_is_handshake_failure(gw, sigalgs):
    """The edge certificate is P-256: in TLS 1.3 it signs only with
    ecdsa_secp256r1_sha256 (RFC 8446 §4.2.3), so each of these leaves nothing
    to sign with: handshake_failure, as from both peers (rustls sends its
    ServerHello first; the alert is the same)."""
    out = s_client(gw.port, "-tls1_3", "-sigalgs", sigalgs)
    assert alert_number(out) == 40 and "HTTP/1.1" not in out, out[-1500:]
    assert served(s_client(gw.port, "-tls1_3", "-sigalgs", "ECDSA+SHA256"))


@pytest.mark.parametrize("sigalgs", ["ed25519", "rsa_pss_rsae_sha256:ed25519"])
def test_tls12_without_a_usable_signature_scheme_is_handshake_failure(gw, sigalgs):
    """RFC 5246 §7.2.2: a fatal condition MUST be told with its alert before
    the close; nginx and HAProxy send handshake_failure here. rustls gives
    up without queuing one (`Error::General`), so the gateway sent nothing at
    all ("read 0 bytes"); now it sends a plaintext handshake_failure itself
    when a handshake fails before it sent anything (tls/stream.rs,
    `alert_if_silent`)."""
    out = s_client(gw.port, "-tls1_2", "-sigalgs", sigalgs)
    assert "HTTP/1.1" not in out, out[-1500:]
    assert alert_number(out) == 40, out[-1500:]


def test_tls12_with_its_own_signature_scheme_is_served(gw):
    """Control for the test above: the same client offering ECDSA P-256."""
    out = s_client(gw.port, "-tls1_2", "-sigalgs", "ed25519:ECDSA+SHA256")
    assert "Peer signature type: ECDSA" in out and served(out), out[-1500:]


# ================================================================== SNI and ALPN in the ClientHello


LONGEST_NAME = b".".join([b"a" * 63] * 3) + b"." + b"b" * 61  # 253 octets, RFC 1035's limit for a name


@pytest.mark.parametrize("names,answer", [
    ((LONGEST_NAME,), "server_hello"),
    ((b"unknown.test",), "server_hello"),
    ((b"",), "alert:decode_error"),               # HostName<1..2^16-1> (RFC 6066 §3)
    ((), "alert:decode_error"),                   # ServerNameList<1..2^16-1>
    ((b"edge.test", b"other.test"), "alert:decode_error"),  # one name per type (RFC 6066 §3)
], ids=["253-octets", "unknown-name", "empty-name", "empty-list", "two-names"])
def test_server_name_extension_syntax(gw, names, answer):
    """A long or unknown name gets the default certificate; the extension's
    syntax errors are decode_error (nginx takes an empty name, HAProxy says
    unrecognized_name to the empty forms)."""
    for tls13 in (True, False):
        assert first_answer(gw.port, record(22, client_hello(sni=names, tls13=tls13))) == answer, tls13


@pytest.mark.parametrize("name", [b"edge.test\x00.evil", b"edge test", b"a" * 64 + b".test", "\u00e9dge.test".encode(),
                                  b"x" * 63 + (b"." + b"y" * 63) * 4],
                         ids=["nul", "space", "label-64", "non-ascii", "over-255"])
def test_a_server_name_that_is_no_dns_name_is_refused(gw, name):
    """rustls refuses a HostName that is not a DNS name with a fatal alert
    (illegal_parameter) and never serves a certificate for it: a NUL is not
    a place where the name ends. RFC 6066 §3 lets a server either refuse or
    go on; nginx and HAProxy go on with the default certificate (or say
    unrecognized_name). The listener serves the next client (control)."""
    answer = first_answer(gw.port, record(22, client_hello(sni=(name,))))
    assert answer.startswith("alert:") and answer != "alert:internal_error", answer
    assert first_answer(gw.port, record(22, client_hello(sni=(b"edge.test",)))) == "server_hello"


def test_two_server_name_extensions_are_refused(gw):
    """RFC 8446 §4.2: no two extensions of one type; all three servers
    answer illegal_parameter."""
    hello = client_hello(extra=[sni_ext(b"other.test")])
    assert first_answer(gw.port, record(22, hello)) == "alert:illegal_parameter"


@pytest.mark.parametrize("protocols", [(), (b"",), (b"http/1.1", b"")], ids=["empty-list", "empty-name", "one-empty"])
def test_an_empty_alpn_list_or_name_is_decode_error(gw, protocols):
    """RFC 7301 §3.1: ProtocolNameList<2..2^16-1> of ProtocolName<1..2^8-1>,
    "empty strings MUST NOT be included": decode_error, as from the peers."""
    assert first_answer(gw.port, record(22, client_hello(extra=[alpn_ext(*protocols)]))) == "alert:decode_error"


def test_a_long_alpn_list_ends_with_the_listeners_protocol(gw):
    offered = ",".join([f"x-{i}" for i in range(150)] + ["http/1.1"])
    out = s_client(gw.port, "-alpn", offered)
    assert "ALPN protocol: http/1.1" in out and served(out), out[-1500:]


def test_h2_alone_on_an_http1_listener_is_no_application_protocol(start_gateway, origin, pki):
    """RFC 7301 §3.2: no protocol in common SHALL be no_application_protocol.
    nginx agrees; HAProxy (`alpn http/1.1`) completes the handshake without
    ALPN. test_tls_h2_qa.py covers unknown names on an h1,h2 listener."""
    g = start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), protocols="h1")
    out = s_client(g.port, "-alpn", "h2")
    assert alert_number(out) == 120 and "HTTP/1.1" not in out, out[-1500:]
    out = s_client(g.port, "-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in out and served(out), out[-1500:]


# ================================================================== sessions


@pytest.mark.parametrize("opts", [("-tls1_3",), ("-tls1_2",), ("-tls1_2", "-no_ticket")],
                         ids=["tls13-ticket", "tls12-ticket", "tls12-session-id"])
def test_a_session_made_with_sni_is_not_resumed_without_it(gw, tmp_path, opts):
    """RFC 6066 §3: a server MUST NOT resume a session whose server name
    differs, and no name is not the name. nginx and HAProxy (one SSL_CTX)
    resume it, and resume it under another name too; the gateway makes a
    full handshake. test_tls_resume_qa.py has the other-name case."""
    sess = tmp_path / "s.pem"
    out = s_client(gw.port, *opts, "-sess_out", str(sess))
    assert "New," in out and served(out), out[-1500:]
    out = s_client(gw.port, *opts, "-sess_in", str(sess), name=None)
    assert "New," in out and "Reused," not in out and served(out), out[-1500:]
    out = s_client(gw.port, *opts, "-sess_in", str(sess))
    assert "Reused," in out and served(out), out[-1500:]


@pytest.fixture
def early_data_session(pki, tmp_path):
    """A TLS 1.3 session for edge.test whose ticket allows 16 KiB of early
    data: made with `openssl s_server -early_data` and the same certificate,
    as a client would hold from another server of the same site (the
    gateway's own tickets allow none). The gateway cannot decrypt the ticket,
    so the client's 0-RTT really is sent and must be rejected."""
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(pki.path("edge.crt")),
                               "-key", str(pki.path("edge.key")), "-early_data", "-quiet"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sess = tmp_path / "early.pem"
    client = None
    try:
        assert wait_until(lambda: _accepts(port), timeout=10), "openssl s_server did not start"
        client = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "edge.test",
                                   "-tls1_3", "-sess_out", str(sess)],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The ticket comes after the handshake; s_client writes it on arrival.
        assert wait_until(lambda: sess.exists() and sess.stat().st_size > 0, timeout=10), "no session ticket"
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait(5)
    return sess


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_early_data_really_sent_is_rejected_and_never_forwarded(gw, origin, early_data_session, tmp_path):
    """RFC 8446 §8: 0-RTT data can be replayed, and the spec says the
    gateway takes none. Here the client does send a POST as early data
    (test_tls_resume_qa.py covers tickets of the gateway's own, with which
    openssl sends none): the server must reject it and skip it (§4.2.10),
    finish the handshake and serve the 1-RTT request; the POST never
    reaches the origin, however often the client replays it. nginx and
    HAProxy (early data off by default) answer the same."""
    early = tmp_path / "early.txt"
    early.write_text("POST /from-early-data HTTP/1.1\r\nhost: edge.test\r\ncontent-length: 5\r\n\r\nhello")
    for _ in range(2):
        out = s_client(gw.port, "-tls1_3", "-sess_in", str(early_data_session), "-early_data", str(early))
        assert "Early data was rejected" in out and served(out), out[-1500:]
    origin.wait_requests(2)
    assert [r.target for r in origin.requests] == ["/tls-qa", "/tls-qa"], origin.requests


# ================================================================== renegotiation


def renegotiate(port: int, wait: float, alpn: str | None = None) -> tuple[str, float | None]:
    """A TLS 1.2 connection (offering `alpn`, if given) that asks to
    renegotiate (s_client's `R`); the output and how many seconds after the
    request the server's no_renegotiation arrived (None: not within `wait`)."""
    p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "edge.test",
                          "-tls1_2", "-msg"] + (["-alpn", alpn] if alpn else []),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, asked = b"", None

    def read_until(needle: bytes, deadline: float) -> bool:
        nonlocal out
        while needle not in out and time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 0.1)[0]:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        return needle in out

    try:
        assert read_until(b"Verify return code", time.monotonic() + 10), out.decode(errors="replace")
        if alpn == "h2":
            # An HTTP/2 server speaks first (its SETTINGS, RFC 9113 §3.4).
            # Asked before that record is read, openssl meets application
            # data in the middle of its own handshake and gives up
            # (unexpected_message), which says nothing of the gateway.
            assert read_until(b"<<< TLS 1.2, RecordHeader [length 0005]\n    17 03 03", time.monotonic() + 10), \
                out.decode(errors="replace")
        p.stdin.write(b"R\n")
        p.stdin.flush()
        asked = time.monotonic()
        answered = read_until(b"no_renegotiation", asked + wait)
        took = time.monotonic() - asked if answered else None
    finally:
        p.kill()
        p.wait(5)
    return out.decode(errors="replace"), took


@pytest.mark.parametrize("alpn", [None, "http/1.1", "h2"])
def test_a_renegotiation_request_is_refused_at_once(start_gateway, origin, pki, alpn):
    """nginx and HAProxy answer the second ClientHello at once with a
    no_renegotiation warning (RFC 5746 §4.4 lets a server refuse this way);
    the client waits for that answer. The gateway's rustls queues the same
    warning; it was sent only with the next write, at the connection's
    header timeout (here 30 s). Now a read sends what rustls queued in
    answer to it, over HTTP/1.1 and HTTP/2 alike."""
    g = start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), header_timeout=30,
                      protocols="h1,h2")
    out, took = renegotiate(g.port, wait=4, alpn=alpn)
    assert "Secure Renegotiation IS supported" in out, out[-1500:]
    assert took is not None, f"no no_renegotiation within 4 s:\n{out[-1500:]}"


def test_a_renegotiation_request_is_refused_by_the_timeout_at_the_latest(start_gateway, origin, pki):
    """Control for the test above: with a 2 s header timeout the refusal
    (a no_renegotiation warning, then the close) does come, and the gateway
    lives. RFC 5746's renegotiation_info is answered, so a client knows the
    server is not open to the renegotiation attack."""
    g = start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), header_timeout=2)
    out, took = renegotiate(g.port, wait=8)
    assert "Secure Renegotiation IS supported" in out, out[-1500:]
    assert took is not None, out[-1500:]
    assert g.alive()


# ================================================================== records


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_a_request_then_close_notify_is_answered_then_closed_with_close_notify(gw, origin, version):
    """RFC 8446 §6.1: close_notify closes the client's writing side only; the
    request before it is still answered (as by both peers), and the server
    ends with its own close_notify, not a bare FIN (which a client must take
    as a possible truncation)."""
    c = MemoryTls(gw.port, version)
    try:
        c.tls.write(REQUEST.replace("connection: close\r\n", "").encode())
        try:
            c.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        c.flush()
        plain, how = c.read_to_end()
    finally:
        c.close()
    assert plain.startswith(b"HTTP/1.1 200 OK") and b"GET /tls-qa" in plain, plain[:300]
    assert how == "close_notify", how


def test_a_client_hello_record_of_exactly_2_14_bytes_is_served(gw):
    """Control for the record_overflow xfail: a record at the limit is fine."""
    hello = padded_hello(MAX_PLAINTEXT)
    assert len(hello) == MAX_PLAINTEXT
    assert first_answer(gw.port, record(22, hello)) == "server_hello"


def test_a_record_at_the_tls13_ciphertext_limit_that_does_not_decrypt_is_bad_record_mac(gw):
    """Control: 2^14+256 bytes is the most a TLS 1.3 record may carry; one
    that does not decrypt is bad_record_mac (RFC 8446 §5.2), as from the peers."""
    assert answer_after_handshake(gw.port, record(23, b"\x00" * MAX_TLS13_CIPHERTEXT, 0x0303)) == "alert:bad_record_mac"


def test_application_data_before_the_clients_finished_is_never_served(gw, origin):
    """A request sent as a plaintext record ahead of the client's Finished
    (TLS 1.3): the server reads it under the handshake keys, it does not
    decrypt, bad_record_mac (RFC 8446 §5.2), as from both peers; nothing of
    it reaches the origin."""
    c = MemoryTls(gw.port, ssl.TLSVersion.TLSv1_3, before_last_flight=record(23, REQUEST.encode(), 0x0303))
    try:
        plain, how = c.read_to_end()
    finally:
        c.close()
    assert how == "alert:bad_record_mac" and not plain, (how, plain[:200])
    assert not origin.requests, origin.requests


@pytest.mark.xfail(strict=True, reason="bug (rustls): a record over the length limit is never record_overflow "
                                       "(unexpected_message, decode_error or bad_record_mac)")
@pytest.mark.parametrize("case", ["plaintext-hello-2^14+1", "tls13-ciphertext-2^14+257", "tls13-ciphertext-2^14+2049"])
def test_a_record_over_the_limit_is_record_overflow(gw, case):
    """RFC 8446 §5.1: a record longer than 2^14 bytes MUST be answered with
    record_overflow; §5.2: a TLS 1.3 TLSCiphertext over 2^14+256 the same.
    nginx and HAProxy do; rustls serves the oversized ClientHello record,
    accepts TLS 1.2's 2^14+2048 in TLS 1.3 too (then the record does not
    decrypt: bad_record_mac) and says decode_error beyond it."""
    if case.startswith("plaintext"):
        answer = first_answer(gw.port, record(22, padded_hello(MAX_PLAINTEXT + 1)))
    else:
        size = int(case.rsplit("+", 1)[1]) + MAX_PLAINTEXT
        answer = answer_after_handshake(gw.port, record(23, b"\x00" * size, 0x0303))
    assert answer == "alert:record_overflow"


@pytest.mark.parametrize("when,raw", [
    ("before-hello", record(23, b"hello", 0x0303)),
    ("after-tls13-handshake", record(20, b"\x01", 0x0303)),
], ids=["application-data-before-hello", "change-cipher-spec-after-tls13-handshake"])
def test_a_record_out_of_place_is_unexpected_message(gw, when, raw):
    """Control for the xfail below: records of known types where they may
    not be are unexpected_message (RFC 8446 §5 and §5.1)."""
    if when == "before-hello":
        assert first_answer(gw.port, raw) == "alert:unexpected_message"
    else:
        assert answer_after_handshake(gw.port, raw) == "alert:unexpected_message"


@pytest.mark.xfail(strict=True, reason="bug (rustls): an unexpected record type gets decode_error or bad_record_mac, "
                                       "not unexpected_message")
@pytest.mark.parametrize("when,content_type", [("before-hello", 99), ("before-hello", 24),
                                               ("after-tls13-handshake", 99), ("after-tls13-handshake", 24)],
                         ids=["unknown-before-hello", "heartbeat-before-hello", "unknown-after-handshake",
                              "heartbeat-after-handshake"])
def test_an_unexpected_record_type_is_unexpected_message(gw, when, content_type):
    """RFC 8446 §5: "If a TLS implementation receives an unexpected record
    type, it MUST terminate the connection with an unexpected_message
    alert." Content type 99 is none, 24 is heartbeat (RFC 6520), which no
    ClientHello here negotiated. HAProxy answers unexpected_message to all
    four, nginx to the two after the handshake (before a hello it answers
    its plain-HTTP 400)."""
    raw = record(content_type, b"\x01\x00\x00", 0x0303)
    if when == "before-hello":
        answer = first_answer(gw.port, raw)
    else:
        answer = answer_after_handshake(gw.port, raw)
    assert answer == "alert:unexpected_message"


@pytest.mark.parametrize("opts", [("-maxfraglen", "512"), ("-tls1_2", "-maxfraglen", "1024"),
                                  ("-record_padding", "512"), ("-max_send_frag", "512"),
                                  ("-split_send_frag", "64", "-max_pipelines", "2")],
                         ids=["mfl-512", "tls12-mfl-1024", "record-padding", "max-send-frag", "split-send-frag"])
def test_fragment_and_padding_options_are_served(gw, origin, opts):
    """A client asking max_fragment_length is served: rustls does not echo
    the extension (RFC 6066 §4 lets a server ignore it; nginx and HAProxy
    accept it) and sends full records, which the client then takes.
    Padded TLS 1.3 records and a request cut into 64-byte records likewise."""
    out = s_client(gw.port, *opts)
    assert served(out), out[-1500:]
