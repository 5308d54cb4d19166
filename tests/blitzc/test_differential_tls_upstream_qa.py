"""The upstream half of a differential pass over TLS (the listener half is
tests/runtime/test_differential_tls_qa.py): a spec served by `blitzc dev`
connects with TLS to Python ssl origins (`support/pki.TlsOrigin`) whose
certificates or settings are odd, and what it does was compared with nginx
1.22 (`proxy_ssl_verify on`, `proxy_ssl_trusted_certificate`, `proxy_ssl_name`)
and HAProxy 2.6 (`ssl verify required ca-file ... sni ... verifyhost`), both
on OpenSSL 3.0, in front of the same origins. The peers are not needed here.

The three agree (and test_tls_specs.py, test_tls_upstream_qa.py and
test_review_tls_qa.py pin the gateway's side) on: a chain without its
intermediate, an expired or not yet valid certificate, one for another
name, a TLS 1.2-only server, a TLS 1.3 server requiring a client
certificate. This file adds where they differ, each read against
docs/spec.md ("TLS to a server"):

- a `ca` file holding only the intermediate that issued the server's
  certificate verifies it: the spec says the file holds "the CA that issued
  the server's certificate", webpki takes any CA certificate as a trust
  anchor (RFC 5280 §6.1.1); OpenSSL without X509_V_FLAG_PARTIAL_CHAIN wants
  a self-signed root, so nginx (502) and HAProxy (503) refuse;
- a self-signed certificate made as a CA (`openssl req -x509`: CA:TRUE) is
  refused as its own trust anchor (webpki's CaUsedAsEndEntity, documented);
  nginx and HAProxy accept it. One made with CA:FALSE verifies in all three;
- a server that offers only CBC suites, or only the P-521 group, in TLS 1.2
  gets no handshake (502 and the reason logged): the client side has the
  listener's AEAD/ECDHE set (RFC 9325 §4.2); nginx and HAProxy connect;
- and, agreeing: a server that asks for an optional client certificate is
  served (the gateway sends none), a TLS 1.2 server that requires one is a
  502 (the TLS 1.3 case, where the refusal comes after the handshake, is in
  test_tls_upstream_qa.py).
"""

from __future__ import annotations

import os
import ssl

import pytest
from support.blitzc import Served
from support.gateway import free_port
from support.pki import Pki, TlsOrigin, openssl
from support.waits import wait_until

NAME = "up.test"
TLS12 = ssl.TLSVersion.TLSv1_2


def self_signed(pki: Pki, name: str, *extensions: str) -> str:
    """`name.crt`/`name.key`: a self-signed certificate for NAME."""
    args = [a for e in extensions for a in ("-addext", e)]
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-subj", f"/CN={NAME}", "-days", "30", "-addext", f"subjectAltName=DNS:{NAME}",
            *args, cwd=pki.dir)
    return name


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("diff-tls-up"))
    p.leaf("good", NAME)
    p.leaf("via-int", NAME, signer="int")  # the file holds the leaf, then the intermediate
    self_signed(p, "self-ca")  # req -x509 marks it CA:TRUE
    self_signed(p, "self-ee", "basicConstraints=critical,CA:FALSE")
    return p


def tls_origin(pki: Pki, cert: str, max_version=None, ciphers=None, curve=None, client_cert=None) -> TlsOrigin:
    o = TlsOrigin(pki.path(f"{cert}.crt"), pki.path(f"{cert}.key"))
    if max_version:
        o.ctx.maximum_version = max_version
    if ciphers:
        o.ctx.set_ciphers(ciphers)
    if curve:
        o.ctx.set_ecdh_curve(curve)
    if client_cert is not None:
        o.ctx.verify_mode = client_cert
        o.ctx.load_verify_locations(pki.path("ca.crt"))
    return o


# name -> (origin settings, the `ca` file the spec gives for it)
SERVERS = {
    "good": ({"cert": "good"}, "ca.crt"),
    "int-as-ca": ({"cert": "via-int"}, "int.crt"),
    "self-ca": ({"cert": "self-ca"}, "self-ca.crt"),
    "self-ee": ({"cert": "self-ee"}, "self-ee.crt"),
    "cbc-only": ({"cert": "good", "max_version": TLS12, "ciphers": "ECDHE-ECDSA-AES128-SHA"}, "ca.crt"),
    "p521-only": ({"cert": "good", "max_version": TLS12, "curve": "secp521r1"}, "ca.crt"),
    "client-cert-optional": ({"cert": "good", "client_cert": ssl.CERT_OPTIONAL}, "ca.crt"),
    "client-cert-required-tls12": ({"cert": "good", "max_version": TLS12, "client_cert": ssl.CERT_REQUIRED}, "ca.crt"),
}


@pytest.fixture(scope="module")
def served(blitzc, cache_dir, pki, tmp_path_factory):
    """One `blitzc dev` gateway with an upstream and a route `/<name>/` per
    server of SERVERS; yields (gateway, origins by name)."""
    origins = {name: tls_origin(pki, **settings) for name, (settings, _) in SERVERS.items()}
    port = free_port()
    blocks = [(f'version 1\n\ngateway "diff-tls-up" {{\n    workers 1\n}}\n\n'
               f'listener "http" {{\n    bind "127.0.0.1:{port}"\n}}\n')]
    for name, (_, ca) in SERVERS.items():
        blocks.append(f'upstream "{name}" {{\n    server "127.0.0.1:{origins[name].port}" tls=#true sni="{NAME}" '
                      f'ca="{pki.path(ca)}"\n}}\n'
                      f'route "{name}" {{\n    match {{ path-prefix "/{name}/" }}\n    proxy "{name}"\n}}\n')
    spec = tmp_path_factory.mktemp("diff-tls-up-spec") / "gateway.kdl"
    spec.write_text("\n".join(blocks))
    gw = Served([str(blitzc), "dev", str(spec)], port, dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir)))
    yield gw, origins
    gw.stop()
    for o in origins.values():
        o.stop()


def handshake_log(gw: Served, origin: TlsOrigin) -> list[str]:
    return [line for line in gw.lines if f"upstream server 127.0.0.1:{origin.port} failed" in line]


def assert_reached(served, name: str) -> None:
    gw, origins = served
    status, _, body = gw.get(f"/{name}/x")
    assert status == 200 and body.startswith(f"GET /{name}/x".encode()), (status, body[:200], gw.lines[-5:])
    assert origins[name].sni_seen[-1:] == [NAME]


def assert_refused(served, name: str, why: str) -> None:
    """A 502, nothing reached the origin, and the reason logged."""
    gw, origins = served
    status, _, _ = gw.get(f"/{name}/x")
    assert status == 502, status
    assert not origins[name].requests, origins[name].requests
    # The log line may follow the 502 by a moment.
    wait_until(lambda: handshake_log(gw, origins[name]), timeout=5)
    logged = handshake_log(gw, origins[name])
    assert logged and why in logged[0], (why, logged, gw.lines[-5:])


def test_a_certificate_from_the_ca_verifies(served):
    """Control for the rest: the same spec shape, a plain CA-issued leaf."""
    assert_reached(served, "good")


def test_the_intermediate_that_issued_the_certificate_is_enough_as_ca(served):
    """docs/spec.md: the `ca` file holds the CA that issued the server's
    certificate. The server sends leaf and intermediate; with only the
    intermediate in `ca`, webpki ends the path there (a trust anchor need not
    be self-signed, RFC 5280 §6.1.1). nginx and HAProxy refuse (OpenSSL
    without partial-chain verification needs the root)."""
    assert_reached(served, "int-as-ca")


def test_a_self_signed_ca_certificate_cannot_stand_for_itself(served):
    """Documented in docs/spec.md: `openssl req -x509` makes a CA:TRUE
    certificate, which webpki refuses as an end entity even when it is the
    trust anchor (CaUsedAsEndEntity). nginx and HAProxy accept it."""
    assert_refused(served, "self-ca", "CaUsedAsEndEntity")


def test_a_self_signed_end_entity_certificate_verifies_as_its_own_ca(served):
    """The same certificate made with CA:FALSE is its own trust anchor, in
    all three: the way out the spec could also mention."""
    assert_reached(served, "self-ee")


@pytest.mark.parametrize("name", ["cbc-only", "p521-only"])
def test_a_server_with_only_suites_or_groups_outside_rfc_9325_gets_no_handshake(served, name):
    """The client side offers the listener's set: ECDHE with AEAD in TLS 1.2,
    X25519/P-256/P-384. A TLS 1.2 server with only a CBC suite, or only
    P-521, refuses the handshake (handshake_failure): a 502, logged. nginx
    and HAProxy (OpenSSL's DEFAULT) connect to both."""
    assert_refused(served, name, "HandshakeFailure")


def test_a_server_asking_for_an_optional_client_certificate_is_served(served):
    """The gateway has no client certificate and says so (an empty
    Certificate message); a server for which one is optional goes on, as it
    does with nginx and HAProxy."""
    assert_reached(served, "client-cert-optional")


def test_a_tls12_server_requiring_a_client_certificate_is_a_502(served):
    """In TLS 1.2 the server refuses inside the handshake (handshake_failure
    after the client's empty Certificate): a 502 with the alert logged, as
    nginx (502) and HAProxy (503, server down) do."""
    assert_refused(served, "client-cert-required-tls12", "HandshakeFailure")
