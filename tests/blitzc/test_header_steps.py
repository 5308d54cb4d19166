"""Header steps against what the gateway itself writes (SPEC.md "Steps",
"Proxying"), on a real `blitzc build` and on `blitzc dev` of one spec,
with curl over HTTP/1.1 and HTTP/2 (h2c) against a recording origin:

- `request-headers { set "x-forwarded-proto" "https" }` (SPEC.md's own
  example) reaches the upstream: a step's edit wins over the proxy's value,
  while a client's own `x-forwarded-proto` is still replaced;
- `response-headers { set "content-type" ... }` on a `respond`, and
  `set "location" ...` on a `redirect`, replace the action's header
  instead of adding a second one;
- `request-headers { remove "host" }` sends the chosen server's address as
  `host` (an HTTP/1.1 request must carry one, RFC 9112 section 3.2), over
  HTTP/1.1 and HTTP/2 alike: HTTP/2's translation gives every request a
  `host` from `:authority`, and the step removing it used to leave an
  empty `host:` field over HTTP/2.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from support.blitzc import Served, build, named_origin
from support.gateway import free_port

SPEC = """version 1
gateway "header-steps" {{ workers 1 }}
listener "l" {{
    bind "127.0.0.1:{port}"
    protocols "h1" "h2c"
}}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
route "tls-terminated-elsewhere" {{
    match {{ path-prefix "/https" }}
    request-headers {{ set "x-forwarded-proto" "https" }}
    proxy "origin"
}}
route "no-host" {{
    match {{ path-prefix "/no-host" }}
    request-headers {{ remove "host" }}
    proxy "origin"
}}
route "plain" {{
    match {{ path-prefix "/plain" }}
    proxy "origin"
}}
route "json" {{
    match {{ path "/json" }}
    response-headers {{ set "content-type" "application/json" }}
    respond 200 body="{{}}"
}}
route "moved" {{
    match {{ path "/moved" }}
    response-headers {{ set "location" "https://b.example/" }}
    redirect "https://a.example/" status=301
}}
"""


@pytest.fixture(scope="module")
def built(blitzc, cache_dir, tmp_path_factory):
    """The spec, built once: (spec path, binary, port, origin)."""
    tmp = tmp_path_factory.mktemp("header-steps")
    origin = named_origin("o")
    port = free_port()
    spec = tmp / "steps.kdl"
    spec.write_text(SPEC.format(port=port, origin=origin.port))
    out = tmp / "gateway-bin"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    yield spec, out, port, origin
    origin.stop()


@pytest.fixture(scope="module", params=["compiled", "interpreted"])
def served(request, built, blitzc, cache_dir):
    """(label, port) of the compiled binary, then of `blitzc dev`."""
    spec, out, port, _ = built
    argv = [str(out)] if request.param == "compiled" else [str(blitzc), "dev", str(spec)]
    gw = Served(argv, port, dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir)))
    yield request.param, port
    assert gw.stop() == 0


def curl(port: int, path: str, *args: str) -> tuple[dict[str, list[str]], str]:
    """Headers (lower-case name -> values) and body of one curl request."""
    r = subprocess.run(
        ["curl", "-sS", "-D", "-", "-o", "-", *args, f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    headers: dict[str, list[str]] = {}
    for line in head.split("\n")[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return headers, body


@pytest.mark.parametrize("http", [[], ["--http2-prior-knowledge"]], ids=["h1", "h2c"])
def test_step_sets_x_forwarded_proto_but_a_client_cannot(served, http):
    label, port = served
    headers, _ = curl(port, "/https", *http, "-H", "X-Forwarded-Proto: gopher")
    seen = json.loads(headers["x-seen"][0])
    assert seen["x-forwarded-proto"] == "https", f"{label}: the step's value reaches the upstream"
    headers, _ = curl(port, "/plain", *http, "-H", "X-Forwarded-Proto: https")
    seen = json.loads(headers["x-seen"][0])
    assert seen["x-forwarded-proto"] == "http", f"{label}: a client's own value is replaced"


@pytest.mark.parametrize("http", [[], ["--http2-prior-knowledge"]], ids=["h1", "h2c"])
def test_response_step_replaces_the_local_answers_headers(served, http):
    label, port = served
    headers, body = curl(port, "/json", *http)
    assert headers["content-type"] == ["application/json"], f"{label}: one content-type, the step's"
    assert body == "{}"
    headers, _ = curl(port, "/moved", *http)
    assert headers["location"] == ["https://b.example/"], f"{label}: one location, the step's"


@pytest.mark.parametrize("http", [[], ["--http2-prior-knowledge"]], ids=["h1", "h2c"])
def test_a_removed_host_becomes_the_servers_address(served, built, http):
    label, port = served
    origin = built[3]
    headers, _ = curl(port, "/no-host", *http)
    seen = json.loads(headers["x-seen"][0])
    assert seen.get("host") == f"127.0.0.1:{origin.port}", f"{label}: {seen}"
    headers, _ = curl(port, "/plain", *http)  # control: the client's own host goes up
    assert json.loads(headers["x-seen"][0]).get("host") == f"127.0.0.1:{port}", label
