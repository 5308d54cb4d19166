"""Every example spec, built by `blitzc build` into a real binary and driven
over HTTP, and the same spec served by the reference interpreter
(`blitzc dev`): the responses prove the routing, and both must agree.

Origins are real HTTP servers (tests/support/origin.py) that say who they
are; the example's ports are replaced by free ones in a copy of the spec.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.blitzc import Served, build, named_origin, spec_copy
from support.gateway import REPO, free_port

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
    """The SPEC.md example uses h3, JWT, rate limits, plugins...: `build`
    must refuse each by name rather than silently drop it (TLS and h2 are served)."""
    result = build(blitzc, REPO / "examples" / "edge.kdl", tmp_path / "edge-bin", cache_dir)
    assert result.returncode == 1, result.stderr
    refused = result.stderr.count("B100")
    assert refused >= 8, result.stderr
    assert "`tls`" not in result.stderr, "TLS is served now"
    assert "protocol `h2`" not in result.stderr, "h2 is served now"
    for construct in ("protocol `h3`", "`jwt`", "`rate-limit`", "`plugin`", "`metrics`", "the step `auth`"):
        assert construct in result.stderr, f"{construct} not named:\n{result.stderr}"
    # Served now (issue #6): balancing, health checks, retries, per-upstream timeouts and pools.
    for served in ("balance", "`health-check`", "`retry`", "`timeouts`", "`pool`"):
        assert f"{served} is not served" not in result.stderr and f"{served} that differ" not in result.stderr, result.stderr
    assert not (tmp_path / "edge-bin").exists()


@pytest.mark.timeout(1800)  # two builds in the test itself
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


# ---------------------------------------------------------------- h2c


@pytest.mark.timeout(1800)
def test_h2c_listener_is_built_and_serves_both_protocols(blitzc, cache_dir, tmp_path):
    """`protocols "h1" "h2c"`: blitzc builds it with the runtime's `h2`
    feature, and one port answers HTTP/2 with prior knowledge and HTTP/1.1."""
    port, origin_port = free_port(), 0
    origin = named_origin("api")
    origin_port = int(origin.addr.rsplit(":", 1)[1])
    spec = tmp_path / "h2c.kdl"
    spec.write_text(
        f"""version 1
gateway "h2c" {{ workers 1 }}
listener "plain" {{
    bind "127.0.0.1:{port}"
    protocols "h1" "h2c"
}}
upstream "api" {{ server "127.0.0.1:{origin_port}" }}
route "health" {{
    match {{ path "/healthz" }}
    respond 200 body="ok\\n" content-type="text/plain"
}}
route "api" {{
    request-headers {{ set "x-step" "1" }}
    proxy "api"
}}
"""
    )
    out = tmp_path / "h2c-bin"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    gw = Served([str(out)], port, dict(os.environ))
    try:
        for args, want in (
            (["--http2-prior-knowledge"], "2"),
            ([], "1.1"),
        ):
            r = subprocess.run(
                ["curl", "-sS", *args, "-w", " %{http_version}", f"http://127.0.0.1:{port}/items?id=1"],
                capture_output=True, text=True, timeout=20,
            )
            assert r.stdout == f"api GET /items?id=1\n {want}", r.stdout + r.stderr
        r = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/healthz"],
            capture_output=True, text=True, timeout=20,
        )
        assert r.stdout == "ok\n"
        assert gw.stop() == 0
    finally:
        origin.stop()


# ---------------------------------------------------------------- upgrades of real builds


@pytest.mark.timeout(1800)
def test_upgrades_between_two_real_builds_under_load(blitzc, cache_dir, tmp_path):
    """Two `blitzc build`s of the quickstart spec that answer `/hello` differently; 6 upgrades
    alternating them (`--upgrade --detach`, as the systemd unit's reload does) while clients
    keep requesting: nothing refused, nothing failed, each build answers after its upgrade."""
    from support.client import Closed, RawConn, request
    from support.gateway import _kill_group, _register

    port = free_port()
    spec_a = spec_copy(tmp_path, "quickstart.kdl", {8080: port})
    spec_b = tmp_path / "quickstart-b.kdl"
    spec_b.write_text(spec_a.read_text().replace("hello from blitz", "hello from build B"))
    bins = {}
    for label, spec in (("A", spec_a), ("B", spec_b)):
        out = tmp_path / f"gw-{label}"
        result = build(blitzc, spec, out, cache_dir)
        assert result.returncode == 0, result.stderr
        bins[label] = out
    answers = {"A": b"hello from blitz\n", "B": b"hello from build B\n"}
    sock = tmp_path / "control.sock"
    common = ["--admin-socket", str(sock), "--grace", "5s"]
    logs = open(tmp_path / "gateways.log", "w")

    def popen(args):
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logs,
                             start_new_session=True)
        _register(p)
        return p

    first = popen([str(bins["A"])] + common)
    stop, failures, counts = threading.Event(), [], {"ok": 0}
    detached: list[int] = []

    def client():
        while not stop.is_set():
            try:
                with RawConn(port, timeout=10) as c:
                    for _ in range(5):
                        c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
                        r = c.read_response()
                        if r.status != 200 or r.body not in answers.values():
                            failures.append(repr(r))
                        counts["ok"] += 1
                        if "close" in (r.h("connection") or ""):
                            break
            except (OSError, Closed, TimeoutError) as e:
                failures.append(repr(e))

    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                request(port, "GET", "/healthz")
                break
            except OSError:
                time.sleep(0.05)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(6):
            label = "B" if i % 2 == 0 else "A"
            # stderr to a file: the detached instance inherits it and keeps it open.
            err_path = tmp_path / f"upgrade-{i}.log"
            with open(err_path, "w") as err:
                rc = subprocess.run([str(bins[label]), "--upgrade", "--detach"] + common,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    timeout=60).returncode
            err_text = err_path.read_text()
            assert rc == 0, err_text
            detached += [int(m) for m in re.findall(r"upgraded: pid (\d+) serves", err_text)]
            assert request(port, "GET", "/hello").body == answers[label]
            time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(20)
        assert not failures, failures[:10]
        assert counts["ok"] > 50
        assert first.wait(10) == 0
    finally:
        stop.set()
        _kill_group(first)
        # The detached instances are not our children: stop them by pid.
        for pid in detached:
            try:
                if b"gw-" in open(f"/proc/{pid}/cmdline", "rb").read():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
