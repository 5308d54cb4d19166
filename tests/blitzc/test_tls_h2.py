"""HTTP/2 over TLS, chosen by ALPN (`protocols "h1" "h2"` with a `tls` block):
curl `--http2` and `--http1.1` on one port, h2load over TLS, and the
translation the origin sees, on the interpreter (`blitzc dev`) and on a
compiled binary (`blitzc build`, runtime features `tls` and `h2`).
"""

from __future__ import annotations

import os
import re
import subprocess

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
