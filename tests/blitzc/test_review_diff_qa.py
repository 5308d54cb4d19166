"""A review of one day's fixes on main (df070c6..dd8d16a), looking for gaps
in the fixes themselves, each suspicion settled against the real binaries:
one gateway built by `blitzc build` from SPEC below, `blitzc dev` on the
same spec, and `blitzc check` on small KDL files.

- Active health checks (`runtime/src/health/active.rs`, `final_status`)
  now read the answer "as the proxy reads an upstream's" (docs/spec.md
  7.1), but did so with `Limits::default()`'s response-head limits, not
  the gateway's: with `max-header-bytes` above the 64 KiB floor, the proxy
  relays a 100 KiB head that the checker refused, so a server that serves
  clients was called down (a bug, fixed: the checker gets the gateway's
  limits; controls: the same server proxied unchecked answers 200, a
  small-head server stays up).
- KDL nesting limit (`blitzc/src/syntax/kdl.rs`, `too_deep`/`quoted_len`):
  the pre-scan ends a single-line string at a newline that a KDL v2
  whitespace escape (a backslash, spaces, then the newline) swallows, so
  the rest of the string is scanned as code: `{` in it gives a valid spec a
  false B001, and a `}` in it at each level lets deep nesting through to
  the `kdl` crate's recursion, which overflowed the stack (both bugs,
  fixed: `quoted_len` skips the escape's whole whitespace run; controls:
  the escape with a short string is accepted, plain deep nesting is B001).
- Local answers (`local_response_steps`): `add` replaces the answer's own
  content-type and date, `remove` drops them (a 204), `set` replaces a
  redirect's location, the same over HTTP/1.1 and h2c, HEAD without a body.
- HTTP/2 `:path` with `#` (`hpack_check.rs`): refused with 400 also when the
  block comes in one-byte CONTINUATION fragments (every Huffman symbol
  split), HEAD gets no body; a `#` in another field is served; the note
  of a stream the `h2` crate refused (over 100 concurrent streams) sticks
  neither to the next accepted stream nor hides a later `#`.
- A local answer's field holding DEL (0x7f): B040 let it through, HTTP/1.1
  wrote it raw, HTTP/2 (`translate::local_head`) dropped it, so a 302 went
  out without its location (a bug, fixed: B040 refuses control characters
  other than tab, and DEL).
- Durations of "10000000h" everywhere a spec takes one (limits, pool,
  health check, timeouts, retry total): the gateway serves h1 and h2c.
- Reference matcher vs generated code: `blitzc dev` and the built gateway
  pick the same route for `+`/`%20`, `a`, `a=`, `&a`, `=a`, encoded names,
  and obs-text header values.

Nothing asserts a timing: waits only bound how long a test blocks.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time

import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame
from support.blitzc import Served, build
from support.gateway import free_port
from support.h2client import REFUSED_STREAM, H2Client, RawH2
from support.origin import Origin, respond
from support.waits import wait_until

HUGE = "10000000h"  # past u64 nanoseconds: a "never" a spec may write

SPEC = """
version 1
gateway "rdq" {{
    workers 1
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
    protocols "h1" "h2c"
}}
limits {{
    max-header-bytes "256KiB"
    idle-timeout "{huge}"
    body-timeout "{huge}"
}}
upstream "big" {{
    server "127.0.0.1:{big}"
    health-check path="/healthz" interval="100ms" timeout="1s" healthy=1 unhealthy=1
}}
upstream "big-unchecked" {{
    server "127.0.0.1:{big}"
}}
upstream "small" {{
    server "127.0.0.1:{small}"
    health-check path="/healthz" interval="100ms" timeout="1s" healthy=1 unhealthy=1
}}
upstream "huge" {{
    server "127.0.0.1:{small}"
    pool idle-timeout="{huge}"
    health-check path="/healthz" interval="{huge}" timeout="{huge}"
    timeouts connect="{huge}" response="{huge}"
    retry attempts=1 on="connect-error" "502" total="{huge}"
}}
route "big" {{
    match {{ path-prefix "/big" }}
    proxy "big"
}}
route "big-unchecked" {{
    match {{ path-prefix "/unchecked" }}
    proxy "big-unchecked"
}}
route "small" {{
    match {{ path-prefix "/small" }}
    proxy "small"
}}
route "huge" {{
    match {{ path-prefix "/huge" }}
    proxy "huge"
}}
route "q-space" {{
    match {{
        path "/q"
        query "v" "a b"
    }}
    respond 200 body="q-space\\n"
}}
route "q-empty" {{
    match {{
        path "/q"
        query "e" ""
    }}
    respond 200 body="q-empty\\n"
}}
route "q-present" {{
    match {{
        path "/q"
        query "p"
    }}
    respond 200 body="q-present\\n"
}}
route "h-obs" {{
    match {{
        path "/h"
        header "x-v" "caf\\u{{e9}}"
    }}
    respond 200 body="h-obs\\n"
}}
route "ct-add" {{
    match {{ path "/ct-add" }}
    response-headers {{
        add "content-type" "application/json"
        add "date" "Thu, 01 Jan 1970 00:00:00 GMT"
    }}
    respond 200 body="{{}}" content-type="text/plain"
}}
route "ct-remove" {{
    match {{ path "/ct-remove" }}
    response-headers {{
        remove "content-type" "date"
    }}
    respond 204
}}
route "loc-set" {{
    match {{ path "/loc-set" }}
    response-headers {{
        set "location" "/elsewhere"
    }}
    redirect "/here" status=307
}}
route "fallback" {{
    respond 404 body="none\\n"
}}
"""

# A response head of ~100 KiB: over the 64 KiB floor of the response-head
# limit, under the spec's max-header-bytes (256 KiB), so the proxy relays it.
# Two lines: http.client reads no line over 64 KiB.
BIG_HEADERS = ("x-big-1: " + "a" * 50_000, "x-big-2: " + "b" * 50_000)


def big_head_origin(port: int) -> Origin:
    origin = Origin(port=port)
    origin.handler = lambda req, conn: respond(conn, req, 200, b"big\n", headers=BIG_HEADERS)
    return origin


def small_origin(port: int) -> Origin:
    origin = Origin(port=port)
    origin.handler = lambda req, conn: respond(conn, req, 200, b"small\n")
    return origin


def get(port: int, path: str, method: str = "GET", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def checks(origin: Origin) -> int:
    return sum(r.target == "/healthz" for r in origin.requests)



@pytest.fixture(scope="module")
def setup(blitzc, cache_dir, tmp_path_factory):
    """The built gateway serving SPEC, its two origins, and the spec's path."""
    tmp = tmp_path_factory.mktemp("rdq")
    ports = {"gw": free_port(), "big": free_port(), "small": free_port()}
    spec = tmp / "rdq.kdl"
    spec.write_text(SPEC.format(huge=HUGE, **ports))
    out = tmp / "rdq-gateway"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    origins = {"big": big_head_origin(ports["big"]), "small": small_origin(ports["small"])}
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    gateway = Served([str(out)], ports["gw"], env)
    try:
        yield {"port": ports["gw"], "gateway": gateway, "origins": origins, "spec": spec, "tmp": tmp}
    finally:
        gateway.stop()
        for o in origins.values():
            o.stop()


# ---------------------------------------------------------------- health checks


def test_the_proxy_relays_a_head_between_the_floor_and_max_header_bytes(setup):
    """Control: the big-head server, proxied without a check, is served."""
    status, headers, body = get(setup["port"], "/unchecked/x")
    assert (status, body) == (200, b"big\n")
    assert len(headers["x-big-1"]) + len(headers["x-big-2"]) == 100_000


def test_a_small_head_server_stays_up(setup):
    """Control: checks of a server with a small head succeed."""
    small = setup["origins"]["small"]
    assert wait_until(lambda: checks(small) >= 3, timeout=5), setup["gateway"].lines
    assert get(setup["port"], "/small/x")[::2] == (200, b"small\n")


def test_a_check_reads_a_head_the_proxy_would_relay(setup):
    """docs/spec.md 7.1: a check reads the head as the proxy reads an
    upstream's, and fails only for one the proxy would answer 502 for. A
    100 KiB head is within the spec's max-header-bytes, so the proxy
    relays it (control above): the server must stay up."""
    big = setup["origins"]["big"]
    assert wait_until(lambda: checks(big) >= 3, timeout=5), setup["gateway"].lines
    status, _, body = get(setup["port"], "/big/x")
    assert (status, body) == (200, b"big\n"), [line for line in setup["gateway"].lines if "unhealthy" in line]


# ---------------------------------------------------------------- huge durations


def test_durations_past_u64_nanoseconds_leave_the_gateway_serving(setup):
    """Every duration of upstream "huge" and the limits is 10000000h: the
    gateway answers over HTTP/1.1 and h2c, proxied and local."""
    assert get(setup["port"], "/huge/x")[::2] == (200, b"small\n")
    assert get(setup["port"], "/q?p")[::2] == (200, b"q-present\n")
    client = H2Client(f"127.0.0.1:{setup['port']}")
    try:
        resp = client.request("/huge/y")
        assert (resp.status, resp.body) == (200, b"small\n")
        # A second request on the same connection: the idle timer of
        # 10000000h armed after the first did not end it.
        assert client.request("/q?p").status == 200
    finally:
        client.close()


# ---------------------------------------------------------------- local answers


def h2_request(port: int, path: str, method: str = "GET"):
    client = H2Client(f"127.0.0.1:{port}")
    try:
        resp = client.request(path, method=method)
        return resp.status, dict(resp.headers), resp.body, resp.headers
    finally:
        client.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_response_steps_over_a_local_answers_own_fields(setup, method):
    """docs/spec.md 12.2: `add` replaces the answer's own content-type and
    date (one each), `remove` drops them, `set` replaces the location;
    HTTP/1.1 and h2c alike, HEAD without a body."""
    port = setup["port"]
    status, headers, body = get(port, "/ct-add", method)
    assert (status, headers["content-type"], headers["date"]) == (200, "application/json", "Thu, 01 Jan 1970 00:00:00 GMT")
    assert body == (b"{}" if method == "GET" else b"")
    status, _, body, fields = h2_request(port, "/ct-add", method)
    assert status == 200 and body == (b"{}" if method == "GET" else b"")
    assert [v for n, v in fields if n == "content-type"] == ["application/json"]
    assert [v for n, v in fields if n == "date"] == ["Thu, 01 Jan 1970 00:00:00 GMT"]

    status, headers, _ = get(port, "/ct-remove", method)
    assert status == 204 and "content-type" not in headers and "date" not in headers
    status, h2_headers, _, _ = h2_request(port, "/ct-remove", method)
    assert status == 204 and "content-type" not in h2_headers and "date" not in h2_headers

    status, headers, _ = get(port, "/loc-set", method)
    assert (status, headers["location"]) == (307, "/elsewhere") and "date" in headers
    status, _, _, fields = h2_request(port, "/loc-set", method)
    assert status == 307 and [v for n, v in fields if n == "location"] == ["/elsewhere"]


CONTROL_BYTE_SPEC = """
version 1
gateway "rdq-ctl" {{
    workers 1
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
    protocols "h1" "h2c"
}}
route "redirect" {{
    match {{ path "/redirect" }}
    redirect "/a\\u{{7f}}b" status=302
}}
route "content-type" {{
    match {{ path "/content-type" }}
    respond 200 body="x" content-type="text/a\\u{{7f}}b"
}}
route "stepped" {{
    match {{ path "/stepped" }}
    response-headers {{
        set "x-a" "a\\u{{7f}}b"
    }}
    respond 200 body="x"
}}
"""


def test_a_local_answers_fields_that_check_accepts_reach_both_protocols(blitzc, cache_dir, tmp_path):
    """docs/spec.md 3 (B040): a header value is any text without CR, LF or
    NUL, so a redirect location, a content-type or a set value holding DEL
    (0x7f) passes check. Over HTTP/1.1 the gateway writes it raw; over
    HTTP/2 `translate::local_head` drops the field the `http` crate refuses,
    so the 302 goes out without a location. Either check refuses such a
    value or both protocols carry it."""
    port = free_port()
    spec = tmp_path / "ctl.kdl"
    spec.write_text(CONTROL_BYTE_SPEC.format(gw=port))
    checked = subprocess.run([str(blitzc), "check", str(spec)], check=False, capture_output=True, text=True, timeout=30)
    if checked.returncode != 0:
        assert "B040" in checked.stdout + checked.stderr
        return
    out = tmp_path / "ctl-gateway"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    gateway = Served([str(out)], port, dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir)))
    try:
        for path, name in (("/redirect", "location"), ("/content-type", "content-type"), ("/stepped", "x-a")):
            _, h1_headers, _ = get(port, path)
            _, _, _, h2_fields = h2_request(port, path)
            assert [v for n, v in h2_fields if n == name] == [h1_headers.get(name)], (path, h1_headers, h2_fields)
    finally:
        gateway.stop()


# ---------------------------------------------------------------- HTTP/2 fragments


def one_byte_fragments(raw: RawH2, sid: int, block: bytes) -> None:
    """The block as a HEADERS frame of one byte and CONTINUATIONs of one
    byte each: every Huffman symbol is split across frames."""
    first = HeadersFrame(sid, data=block[:1], flags=["END_STREAM"])
    raw.frame(first)
    for i in range(1, len(block)):
        flags = ["END_HEADERS"] if i == len(block) - 1 else []
        raw.frame(ContinuationFrame(sid, data=block[i : i + 1], flags=flags))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_fragment_in_path_split_in_one_byte_continuations_is_400(setup, method):
    raw = RawH2(f"127.0.0.1:{setup['port']}")
    try:
        # Stream 1: a Huffman `:path` with a `#`, entered into the table.
        one_byte_fragments(raw, 1, raw.block(method=method, path="/small/hashed#frag"))
        # Stream 3: a `#` in another field only: served.
        one_byte_fragments(raw, 3, raw.block(method=method, path="/small/b", extra=[("x-tag", "a#b")]))
        seen = raw.read_frames(time.monotonic() + 5, stop=lambda s: {1, 3} <= s.ended)
        assert (seen.status(1), seen.status(3)) == (400, 200), seen
        assert seen.goaway is None, seen
        if method == "HEAD":
            assert seen.data.get(1, b"") == b"", "a HEAD's 400 has no body"
    finally:
        raw.close()
    assert not [r for r in setup["origins"]["small"].requests if r.target.startswith("/small/hashed")]


def test_fragment_notes_of_streams_the_crate_refused_do_not_stick_to_later_streams(setup):
    """Past SETTINGS_MAX_CONCURRENT_STREAMS (100) the `h2` crate refuses a
    stream (REFUSED_STREAM) and never hands it over: the note of its `#`
    must neither mark the next stream accepted (a 200) nor be lost for a
    later one that has a `#` itself (a 400)."""
    raw = RawH2(f"127.0.0.1:{setup['port']}")
    try:
        # 100 uploads left open (no END_STREAM): the origin waits for their bodies.
        for i in range(100):
            raw.headers(1 + 2 * i, method="POST", path=f"/small/open{i}", end_stream=False)
        raw.headers(201, path="/small/refused#x")
        raw.headers(203, path="/small/refused")
        seen = raw.read_frames(time.monotonic() + 5, stop=lambda s: {201, 203} <= set(s.resets))
        assert seen.resets.get(201) == seen.resets.get(203) == REFUSED_STREAM, seen.resets
        raw.frame(DataFrame(1, data=b"", flags=["END_STREAM"]))
        seen = raw.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended)
        assert seen.status(1) == 200, seen
        # One slot is free: one stream at a time.
        raw.headers(205, path="/small/after")
        raw.read_frames(time.monotonic() + 5, stop=lambda s: 205 in s.ended)
        raw.headers(207, path="/small/after#x")
        seen = raw.read_frames(time.monotonic() + 5, stop=lambda s: {205, 207} <= s.ended)
        assert (seen.status(205), seen.status(207)) == (200, 400), seen
    finally:
        raw.close()


# ---------------------------------------------------------------- matcher parity


QUERIES = ["/q?v=a+b", "/q?v=a%20b", "/q?v=a%2Bb", "/q?e", "/q?e=", "/q?&p", "/q?p&", "/q?=p", "/q?%76=a+b",
           "/q?v%3Da", "/q?p=1&e", "/q?e=1&e", "/q?v=a&v=a+b", "/q?%"]
HEADERS = [{"x-v": "caf\xc3\xa9"}, {"x-v": "caf\xe9"}, {"x-v": " caf\xc3\xa9\t"}]


def test_blitzc_dev_picks_the_routes_the_built_gateway_picks(setup, blitzc, cache_dir):
    """`blitzc dev` (the reference matcher) and generated code agree on
    query forms and obs-text header values (http.client sends str headers
    as Latin-1, so "caf\\xc3\\xa9" goes out as the UTF-8 bytes of café)."""
    port = free_port()
    dev_spec = setup["tmp"] / "rdq-dev.kdl"
    dev_spec.write_text(setup["spec"].read_text().replace(f"127.0.0.1:{setup['port']}", f"127.0.0.1:{port}"))
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    dev = Served([str(blitzc), "dev", str(dev_spec)], port, env)
    try:
        for target in QUERIES:
            assert get(port, target)[::2] == get(setup["port"], target)[::2], target
        for headers in HEADERS:
            assert get(port, "/h", headers=headers)[::2] == get(setup["port"], "/h", headers=headers)[::2], headers
        assert get(port, "/h", headers=HEADERS[0])[::2] == (200, b"h-obs\n"), "control: the UTF-8 value matches"
    finally:
        dev.stop()


# ---------------------------------------------------------------- KDL nesting pre-scan


SPEC_WITH_BODY = """version 1
listener "main" {{
    bind "127.0.0.1:{port}"
}}
route "r" {{
    respond 200 body={body}
}}
"""

# KDL v2: a backslash then whitespace, newlines included, is one escape that
# swallows all of it; the string goes on on the next line. The pre-scan
# skips the backslash and one byte, then takes the newline for the end of
# a single-line string: spaces before the LF, or the CR of a CRLF.
WHITESPACE_ESCAPE = '"a\\   \n'
ESCAPES = {"spaces-lf": WHITESPACE_ESCAPE, "crlf": '"a\\\r\n'}


def check(blitzc, tmp_path, name: str, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(text)
    return subprocess.run([str(blitzc), "check", str(path)], check=False, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("escape", list(ESCAPES.values()), ids=list(ESCAPES))
def test_a_whitespace_escape_across_lines_is_valid_kdl(blitzc, tmp_path, escape):
    """Control: the escape is accepted, and so are 130 `{` in a plain string."""
    short = check(blitzc, tmp_path, "short.kdl", SPEC_WITH_BODY.format(port=free_port(), body=escape + '{{{"'))
    assert short.returncode == 0, short.stdout + short.stderr
    plain = check(blitzc, tmp_path, "plain.kdl", SPEC_WITH_BODY.format(port=free_port(), body='"' + "{" * 130 + '"'))
    assert plain.returncode == 0, plain.stdout + plain.stderr


@pytest.mark.parametrize("escape", list(ESCAPES.values()), ids=list(ESCAPES))
def test_braces_after_a_whitespace_escape_are_no_nesting(blitzc, tmp_path, escape):
    body = escape + "{" * 130 + '"'
    result = check(blitzc, tmp_path, "escape.kdl", SPEC_WITH_BODY.format(port=free_port(), body=body))
    assert result.returncode == 0, result.stdout + result.stderr


def deep(levels: int, argument: str) -> str:
    return "version 1\n" + f"n {argument} {{\n" * levels + "}\n" * levels


def test_deep_nesting_is_b001(blitzc, tmp_path):
    """Control: 3000 levels, each node with a plain string argument."""
    result = check(blitzc, tmp_path, "deep.kdl", deep(3000, '"a"'))
    assert result.returncode == 1 and "B001" in result.stdout + result.stderr, result.stderr[-2000:]


def test_deep_nesting_behind_whitespace_escapes_is_b001_not_a_crash(blitzc, tmp_path):
    """Each level's argument is a string whose second line is `}`: the
    pre-scan counts it as a closing brace, so the depth never grows, and
    the `kdl` crate's recursive parser runs out of stack."""
    result = check(blitzc, tmp_path, "sneak.kdl", deep(3000, WHITESPACE_ESCAPE + '}"'))
    assert result.returncode == 1 and "B001" in result.stdout + result.stderr, (result.returncode, result.stderr[-500:])


def test_the_gateway_port_is_still_served(setup):
    """Last: the module's gateway is still up after everything above."""
    with socket.create_connection(("127.0.0.1", setup["port"]), timeout=5):
        pass
    assert get(setup["port"], "/small/z")[::2] == (200, b"small\n")
