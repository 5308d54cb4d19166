"""Every example spec, built by `blitzc build` into a real binary and driven
over HTTP, and the same spec served by the reference interpreter
(`blitzc dev`): the responses prove the routing, and both must agree.

Origins are real HTTP servers (tests/support/origin.py) that say who they
are; the example's ports are replaced by free ones in a copy of the spec.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.gateway import REPO, _register, free_port
from support.origin import Origin, respond

BLITZC_BUILD_TIMEOUT = 1800


@pytest.fixture(scope="session")
def blitzc() -> Path:
    """The blitzc binary, built once (release, so the suite's builds are quick)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    subprocess.run(
        ["cargo", "build", "--release", "-p", "blitzc"], cwd=REPO, check=True, timeout=BLITZC_BUILD_TIMEOUT
    )
    return target / "release" / "blitzc"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One blitz cache for the session: the runtime compiles once."""
    env_dir = os.environ.get("BLITZ_CACHE_DIR")
    return Path(env_dir) if env_dir else tmp_path_factory.mktemp("blitz-cache")


def named_origin(name: str) -> Origin:
    """An origin that answers `<name> <METHOD> <target>` and echoes what it got as JSON headers."""
    origin = Origin()

    def handler(req, conn):
        seen = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        body = f"{name} {req.method} {req.target}\n".encode()
        return respond(conn, req, 200, body, headers=(f"x-origin: {name}", f"x-seen: {json.dumps(seen)}"))

    origin.handler = handler
    return origin


class Served:
    """A gateway process (compiled binary or `blitzc dev`) on a known port."""

    def __init__(self, argv: list[str], port: int, env: dict):
        self.port = port
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            start_new_session=True,
        )
        _register(self.proc)
        ready = threading.Event()

        def read():
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if line.startswith("listening on"):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 600  # `blitzc dev` may build nothing, a binary nothing either
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start:\n" + "\n".join(self.lines))

    def get(self, path: str, method: str = "GET", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), body

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=40)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def spec_copy(tmp_path: Path, name: str, ports: dict[int, int]) -> Path:
    """examples/NAME with every `127.0.0.1:PORT` of `ports` replaced."""
    text = (REPO / "examples" / name).read_text()
    for old, new in ports.items():
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    path = tmp_path / name
    path.write_text(text)
    return path


def build(blitzc: Path, spec: Path, out: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    return subprocess.run(
        [str(blitzc), "build", str(spec), "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=BLITZC_BUILD_TIMEOUT,
    )


def serve_both(blitzc, spec, tmp_path, cache_dir):
    """Yields (label, Served) for the compiled binary, then the interpreter."""
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    out = tmp_path / "gateway-bin"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out), "the binary's path is printed last"
    yield "compiled", [str(out)]
    yield "interpreted", [str(blitzc), "dev", str(spec)]


# ---------------------------------------------------------------- quickstart


@pytest.mark.timeout(1800)
def test_quickstart_compiled_and_interpreted(blitzc, cache_dir, tmp_path):
    port = free_port()
    spec = spec_copy(tmp_path, "quickstart.kdl", {8080: port})
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    answers = {}
    for label, argv in serve_both(blitzc, spec, tmp_path, cache_dir):
        gw = Served(argv, port, env)
        try:
            got = {
                "health": gw.get("/healthz"),
                "hello": gw.get("/hello/world"),
                "hello-post": gw.get("/hello", method="POST"),
                "docs": gw.get("/docs/a/../guide"),
                "other": gw.get("/elsewhere"),
            }
        finally:
            assert gw.stop() == 0, f"{label}: graceful exit"
        assert got["health"][0] == 200 and got["health"][2] == b"ok\n"
        assert got["hello"][0] == 200 and got["hello"][2] == b"hello from blitz\n"
        assert got["hello"][1].get("x-served-by") == "blitz", f"{label}: response-headers step"
        assert got["hello-post"][0] == 404 and got["hello-post"][2] == b"no such page\n", "method GET/HEAD only"
        assert got["docs"][0] == 301 and got["docs"][1]["location"] == "https://example.com/docs/"
        assert got["other"][0] == 404
        answers[label] = {k: (v[0], v[2]) for k, v in got.items()}
    assert answers["compiled"] == answers["interpreted"]


# ---------------------------------------------------------------- api (proxy)


@pytest.mark.timeout(1800)
def test_api_example_routes_to_the_right_origins(blitzc, cache_dir, tmp_path):
    origins = {name: named_origin(name) for name in ("users-a", "users-b", "items", "canary")}
    port = free_port()
    ports = {8080: port, 9001: origins["users-a"].port, 9002: origins["users-b"].port,
             9003: origins["items"].port, 9004: origins["canary"].port}
    spec = spec_copy(tmp_path, "api.kdl", ports)
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    answers = {}
    try:
        for label, argv in serve_both(blitzc, spec, tmp_path, cache_dir):
            gw = Served(argv, port, env)
            try:
                users = [gw.get("/api/users/7", headers={"cookie": "secret=1"}) for _ in range(4)]
                canary = gw.get("/api/users/7", headers={"x-canary": "1"})
                item = gw.get("/api/items/42")
                item_dots = gw.get("/api/users/../items/5")
                item_post = gw.get("/api/items/42", method="POST")
                debug = gw.get("/api/items?debug=1")
                old = gw.get("/v0/anything")
                health = gw.get("/healthz")
            finally:
                assert gw.stop() == 0
            # Round-robin over the two users servers, prefix stripped, cookie removed, header set.
            served_by = sorted(r[1]["x-origin"] for r in users)
            assert served_by == ["users-a", "users-a", "users-b", "users-b"], served_by
            for status, headers, body in users:
                assert status == 200
                assert body.endswith(b" GET /users/7\n"), body
                seen = json.loads(headers["x-seen"])
                assert "cookie" not in seen and seen.get("x-gateway") == "blitz", seen
                assert headers.get("x-frame-options") == "DENY"
            assert canary[1]["x-origin"] == "canary" and canary[2] == b"canary GET /users/7\n"
            assert "x-frame-options" not in canary[1], "response steps belong to the users route only"
            assert item[2] == b"items GET /api/items/42\n"
            assert item_dots[2] == b"items GET /api/items/5\n", "dot-segments removed before routing and forwarding"
            assert item_post[0] == 404, "the item route is GET only; the fallback answers"
            assert debug[0] == 403 and debug[2] == b"debugging is off\n"
            assert old[0] == 308 and old[1]["location"] == "https://api.example.com/api/"
            assert health[0] == 200
            answers[label] = [(r[0], r[2]) for r in (canary, item, item_dots, item_post, debug, old, health)]
        assert answers["compiled"] == answers["interpreted"]
    finally:
        for o in origins.values():
            o.stop()


# ---------------------------------------------------------------- edge (SPEC.md example)


def test_edge_example_is_refused_with_a_diagnostic_per_unsupported_construct(blitzc, cache_dir, tmp_path):
    """The SPEC.md example uses h2/h3, JWT, rate limits, plugins...: `build`
    must refuse each by name rather than silently drop it (TLS is served)."""
    result = build(blitzc, REPO / "examples" / "edge.kdl", tmp_path / "edge-bin", cache_dir)
    assert result.returncode == 1, result.stderr
    refused = result.stderr.count("B100")
    assert refused >= 8, result.stderr
    assert "`tls`" not in result.stderr, "TLS is served now"
    for construct in ("protocol `h2`", "`jwt`", "`rate-limit`", "`plugin`", "`metrics`", "the step `auth`"):
        assert construct in result.stderr, f"{construct} not named:\n{result.stderr}"
    assert not (tmp_path / "edge-bin").exists()


def test_version_prints_the_spec_hash_shared_by_both_forms(blitzc, cache_dir, tmp_path):
    port = free_port()
    outs = []
    for name in ("quickstart.kdl", "quickstart.toml"):
        spec = spec_copy(tmp_path, name, {8080: port})
        out = tmp_path / f"bin-{name}"
        result = build(blitzc, spec, out, cache_dir)
        assert result.returncode == 0, result.stderr
        version = subprocess.run([str(out), "--version"], capture_output=True, text=True, timeout=10)
        assert version.returncode == 0
        assert re.match(r"^quickstart \(blitzc \d+\.\d+\.\d+, spec sha256:[0-9a-f]{64}\)$", version.stdout.strip())
        outs.append(version.stdout)
    assert outs[0] == outs[1]


def test_build_exit_codes(blitzc, cache_dir, tmp_path):
    bad = tmp_path / "bad.kdl"
    bad.write_text('version 1\nroute "r" { proxy "nowhere" }\n')
    result = build(blitzc, bad, tmp_path / "x", cache_dir)
    assert result.returncode == 1 and "B021" in result.stderr
    missing = build(blitzc, tmp_path / "missing.kdl", tmp_path / "x", cache_dir)
    assert missing.returncode == 2


@pytest.mark.timeout(1800)
def test_run_builds_and_serves_in_the_foreground(blitzc, cache_dir, tmp_path):
    """The README's quick-start command: `blitzc run SPEC`."""
    port = free_port()
    spec = spec_copy(tmp_path, "quickstart.toml", {8080: port})
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    gw = Served([str(blitzc), "run", str(spec)], port, env)
    try:
        status, headers, body = gw.get("/healthz")
        assert (status, body) == (200, b"ok\n")
    finally:
        assert gw.stop() == 0, "SIGTERM reaches the gateway through blitzc run and drains it"
