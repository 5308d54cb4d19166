"""Known correctness gaps fixed after the QA passes, each end to end with
the real hello_gateway, a raw-socket client and the recording origin.

- A higher minor version in the request line (`HTTP/1.2`) is served as
  HTTP/1.1 (RFC 9110 §2.5, RFC 9112 §2.3), forwarded as HTTP/1.1 and
  answered as HTTP/1.1; other majors stay 505, malformed versions 400.
- A listener certificate outside its validity period is still served (the
  client decides), and the gateway says so at start and on SIGHUP, as
  `blitzc check` does with B067 (tests/blitzc/test_positions_qa.py).
"""

from __future__ import annotations

import shutil
import signal
import time

import pytest

from support.asserts import assert_clean_forward, assert_origin_saw_nothing, assert_rejected
from support.client import exchange
from support.pki import Pki, served_cert

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


def _wait_line(gw, needle: str, after: int = 0, timeout: float = 10.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gw.lines[after:]:
            if needle in line:
                return line
        time.sleep(0.05)
    return None


def test_out_of_validity_listener_certificate_is_served_with_a_warning(start_gateway, pki, tmp_path):
    shutil.copy(pki.path("old.crt"), tmp_path / "live.crt")
    shutil.copy(pki.path("old.key"), tmp_path / "live.key")
    gw = start_gateway(tls_cert=tmp_path / "live.crt", tls_key=tmp_path / "live.key")
    line = _wait_line(gw, "warning: certificate")
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
        line = _wait_line(gw, "warning: certificate", after=mark, timeout=1.0 if warned is None else 10.0)
        if warned is None:
            assert line is None, line
        else:
            assert line and warned in line, gw.tail()

