"""QA of downstream TLS session resumption on the runtime (hello_gateway
with `--tls-cert` / `--tls-key`), with `openssl s_client -sess_out /
-sess_in`: around a SIGHUP, across workers, across gateway processes, by
server name, and 0-RTT. test_tls_runtime.py already shows that a session
resumes on every worker without a reload; test_tls_specs.py that one does
not resume under another certificate's name or on another listener.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from support.pki import Pki

VERSIONS = [("-tls1_3",), ("-tls1_2",), ("-tls1_2", "-no_ticket")]
IDS = ["tls13-ticket", "tls12-ticket", "tls12-session-id"]
REQUEST = "GET /healthz HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("resume-qa"))
    p.leaf("edge", "edge.test", "other.test", signer="int")
    p.leaf("renewed", "edge.test", "other.test", key="rsa")
    return p


@pytest.fixture
def certs(pki, tmp_path) -> Path:
    shutil.copy(pki.path("edge.crt"), tmp_path / "live.crt")
    shutil.copy(pki.path("edge.key"), tmp_path / "live.key")
    return tmp_path


def tls_gateway(start_gateway, certs: Path, **opts):
    return start_gateway(tls_cert=certs / "live.crt", tls_key=certs / "live.key", **opts)


def s_client(port: int, *opts: str, name: str = "edge.test", stdin: str = REQUEST) -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name, "-ign_eof",
                        *opts], input=stdin, capture_output=True, text=True, errors="replace", timeout=20)
    return r.stdout + r.stderr


def new_session(port: int, opts: tuple, sess: Path, name: str = "edge.test") -> None:
    out = s_client(port, *opts, "-sess_out", str(sess), name=name)
    assert "New," in out and "HTTP/1.1 200" in out, out
    assert sess.stat().st_size > 0


def resumed(port: int, opts: tuple, sess: Path, name: str = "edge.test") -> bool:
    out = s_client(port, *opts, "-sess_in", str(sess), name=name)
    assert "HTTP/1.1 200" in out, out
    assert ("Reused," in out) != ("New," in out), out
    return "Reused," in out


def reload(gw) -> None:
    mark = len(gw.lines)
    gw.signal(signal.SIGHUP)
    line = gw.line_with("reloaded", mark, timeout=10)
    assert line is not None and "not reloaded" not in line, gw.tail()


@pytest.mark.parametrize("opts", VERSIONS, ids=IDS)
def test_a_session_resumes_on_every_worker_after_a_sighup(start_gateway, certs, tmp_path, opts):
    """A reload re-reads the certificate files only: the ticket keys and the
    session cache are the listener's and stay, so sessions made before
    it resume after it, on either worker (eight connections, spread by
    SO_REUSEPORT), and so do sessions made after it."""
    gw = tls_gateway(start_gateway, certs, workers=2)
    before, after = tmp_path / "before.pem", tmp_path / "after.pem"
    new_session(gw.port, opts, before)
    reload(gw)
    assert [resumed(gw.port, opts, before) for _ in range(8)] == [True] * 8
    new_session(gw.port, opts, after)
    assert [resumed(gw.port, opts, after) for _ in range(8)] == [True] * 8
    assert gw.alive()


@pytest.mark.parametrize("opts", VERSIONS, ids=IDS)
def test_a_session_does_not_resume_in_another_gateway_process(start_gateway, certs, tmp_path, opts):
    """Ticket keys are made at start, never fixed: a ticket (or a session
    ID) from one gateway process means nothing to another one with the same
    certificate, which makes a full handshake and serves the client."""
    first = tls_gateway(start_gateway, certs, workers=1)
    sess = tmp_path / "s.pem"
    new_session(first.port, opts, sess)
    assert resumed(first.port, opts, sess)
    second = tls_gateway(start_gateway, certs, workers=1)
    assert not resumed(second.port, opts, sess)
    assert first.alive() and second.alive()


@pytest.mark.parametrize("opts", VERSIONS, ids=IDS)
def test_a_session_resumes_only_under_its_server_name(start_gateway, certs, tmp_path, opts):
    """One certificate valid for both names, yet a session made for
    edge.test is not resumed for other.test (RFC 8446 §4.6.1, RFC 6066
    §3: the server name is part of the session)."""
    gw = tls_gateway(start_gateway, certs, workers=1)
    sess = tmp_path / "s.pem"
    new_session(gw.port, opts, sess, name="edge.test")
    assert not resumed(gw.port, opts, sess, name="other.test")
    assert resumed(gw.port, opts, sess, name="EDGE.test")


def test_early_data_is_not_accepted(start_gateway, origin, certs, tmp_path):
    """0-RTT data can be replayed by anyone who saw it (RFC 8446 §8): the
    gateway does not take it. The request sent as early data is not
    served from the early data; the client's handshake still completes."""
    gw = tls_gateway(start_gateway, certs, workers=1)
    sess = tmp_path / "s.pem"
    new_session(gw.port, ("-tls1_3",), sess)
    early = tmp_path / "early.txt"
    early.write_text("GET /from-early-data HTTP/1.1\r\nhost: edge.test\r\n\r\n")
    out = s_client(gw.port, "-tls1_3", "-sess_in", str(sess), "-early_data", str(early),
                   stdin="GET /after HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n\r\n")
    assert "Reused," in out, out
    # The tickets allow none (`max_early_data_size` 0), so openssl does not
    # even try; were it sent anyway, it would be rejected.
    assert "Max Early Data: 0" in out and re.search(r"Early data was (not sent|rejected)", out), out
    origin.wait_requests(1)
    assert [r.target for r in origin.requests] == ["/after"], origin.requests
    assert gw.alive()


def test_a_session_of_a_key_type_a_reload_replaced_makes_a_full_handshake(start_gateway, certs, pki, tmp_path):
    """The certificate of edge.test renewed with an RSA key in place of an
    EC one: a TLS 1.2 session made with the old certificate has an ECDSA
    suite, which the new key cannot use, so rustls does not resume it: a
    full handshake, with the new certificate, and the client is served."""
    gw = tls_gateway(start_gateway, certs, workers=1)
    sess = tmp_path / "s.pem"
    new_session(gw.port, ("-tls1_2",), sess)
    shutil.copy(pki.path("renewed.crt"), certs / "live.crt")
    shutil.copy(pki.path("renewed.key"), certs / "live.key")
    reload(gw)
    out = s_client(gw.port, "-tls1_2", "-sess_in", str(sess))
    assert "New," in out and "HTTP/1.1 200" in out, out
    assert re.search(r"Server public key is 2048 bit", out), out
