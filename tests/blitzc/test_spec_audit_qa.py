"""A sentence-by-sentence audit of SPEC.md against built gateways: only the
observable statements that no other file in tests/blitzc pinned yet (see
tests/runtime/README.md for those: test_spec_qa.py has every "must catch"
rule with its position, test_review_routing_qa.py the route model with 600
random requests, test_h2_specs.py the limits over HTTP/2, ...).

What is new here, each checked on the `blitzc build` binary and on `blitzc
dev` (the serving interpreter) with the same requests, and where it is a
routing decision on `blitzc route` too and over h2c:

- "Other matchers": `header NAME ""` (an exact empty value) against an absent
  field, an empty one, one of only spaces and a repeated one; `path`,
  `path-prefix` and `path-regex` are case-sensitive (only hosts are compared
  case-insensitively), an exact `path` is not matched with a trailing slash,
  a whole-path regex sees the normalised path without its query.
- "limits" (the example's comments, docs/spec.md section 6): each bound at
  its value and one past it, on the compiled gateway and the interpreter:
  `max-headers` (more header lines: 431), `max-header-bytes` (a larger head:
  431), `max-body-bytes` declared and streamed (larger: 413, the upstream
  request never completed); and what the timeouts measure: `header-timeout`
  the whole head (a head trickled with gaps well under it is still cut),
  `body-timeout` the gap between body bytes (a body trickled over three
  times the timeout is served; one pause past it is not), `idle-timeout` a
  keep-alive connection with no request. Over h2c too: `max-headers` (the
  `:authority` standing for Host), `max-body-bytes` with and without a
  content-length, a header block trickled in CONTINUATION frames, and
  DATA frames trickled or paused.
- "What `blitzc check` must catch" on odd input: never a panic, every error
  a diagnostic with file, line, column, a stable `Bnnn` code and a help line
  (odd bytes, odd numbers, odd durations, sizes, addresses, regexes, hosts,
  paths and TOML shapes), in KDL and TOML.
- "Proxying": `strip-prefix` (and `path-prefix`) written with a trailing
  slash forward the same target from both gateways, stripped from the
  normalised path with the query kept.
- "TOML form": the KDL and TOML twins of a spec using the upstream,
  limits and gateway fields the other twin tests leave out (weights, pool,
  health-check, timeouts, retry, consistent-hash key, limits)
  emit the same gateway crate.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from hyperframe.frame import ContinuationFrame, DataFrame
from support.blitzc import Served, build
from support.client import Closed, RawConn
from support.gateway import free_port
from support.h2client import H2Client, RawH2
from support.origin import Origin

# ---------------------------------------------------------------- one spec, compiled and interpreted

# Small limits so each bound is reachable with a few bytes and each timeout
# with a few seconds; all six differ from their defaults, so a limit the
# gateway ignored would show.
MAX_HEADERS = 12
MAX_HEADER_BYTES = 300
MAX_BODY_BYTES = 1000
TIMEOUT_S = 1.0  # header-, body- and idle-timeout alike
# How long a test waits for a timeout to act: far past 1 s, far below the
# defaults (10 s, 30 s, 60 s), so it bounds the wait without timing anything.
TIMEOUT_BOUND_S = 5.0

SPEC = """version 1
gateway "spec-audit" {{ workers 1 }}
listener "l" {{
    bind "127.0.0.1:{port}"
    protocols "h1" "h2c"
}}
limits {{
    header-timeout "1s"
    idle-timeout "1s"
    body-timeout "1s"
    max-header-bytes {max_header_bytes}
    max-headers {max_headers}
    max-body-bytes {max_body_bytes}
}}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
route "header-empty" {{
    match {{
        path "/he"
        header "x-e" ""
    }}
    respond 200 body="header-empty"
}}
route "header-present" {{
    match {{
        path "/he"
        header "x-e"
    }}
    respond 200 body="header-present"
}}
route "case" {{
    match {{ path-prefix "/Case" }}
    respond 200 body="case"
}}
route "exact" {{
    match {{ path "/exact" }}
    respond 200 body="exact"
}}
route "regex" {{
    match {{ path-regex "/rx/[a-z]+" }}
    respond 200 body="regex"
}}
route "get-only" {{
    match {{
        path "/g"
        method "GET"
    }}
    respond 200 body="get-only"
}}
route "header-value" {{
    match {{
        path "/hv"
        header "x-v" "Yes"
    }}
    respond 200 body="header-value"
}}
route "query-value" {{
    match {{
        path "/q"
        query "lang" "en"
    }}
    respond 200 body="query-value"
}}
route "slash-prefix" {{
    match {{ path-prefix "/s/" }}
    proxy "origin" strip-prefix="/s/"
}}
route "proxied" {{
    match {{ path-prefix "/up" }}
    proxy "origin"
}}
"""

HOST = "audit.test"


class Pair:
    """The compiled binary and `blitzc dev`, each on its own port, before one origin."""

    def __init__(self, blitzc: Path, spec: Path, served: dict[str, Served], origin: Origin):
        self.blitzc = blitzc
        self.spec = spec  # the interpreter's copy (its port differs only)
        self.served = served
        self.origin = origin


@pytest.fixture(scope="module")
def pair(blitzc, cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("spec-audit")
    origin = Origin()  # its default behaviour: 200 with the method and target
    served: dict[str, Served] = {}
    try:
        specs = {}
        for kind in ("compiled", "interpreted"):
            spec = folder / f"audit-{kind}.kdl"
            spec.write_text(SPEC.format(port=free_port(), origin=origin.port, max_headers=MAX_HEADERS,
                                        max_header_bytes=MAX_HEADER_BYTES, max_body_bytes=MAX_BODY_BYTES))
            specs[kind] = spec
        binary = folder / "audit-gateway"
        result = build(blitzc, specs["compiled"], binary, cache_dir)
        assert result.returncode == 0, result.stderr
        port_of = {k: int(re.search(r'bind "127\.0\.0\.1:(\d+)"', s.read_text())[1]) for k, s in specs.items()}
        served["compiled"] = Served([str(binary)], port_of["compiled"], dict(os.environ))
        served["interpreted"] = Served([str(blitzc), "dev", str(specs["interpreted"])], port_of["interpreted"],
                                       dict(os.environ))
        yield Pair(blitzc, specs["interpreted"], served, origin)
    finally:
        for s in served.values():
            s.stop()
        origin.stop()


GATEWAYS = ["compiled", "interpreted"]


def head(target: str, fields: list[tuple[str, str]] = (), method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", *(f"{n}: {v}" for n, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ask(port: int, data: bytes, method: str = "GET"):
    """Send `data` on a fresh connection; the response, or None when the gateway closed without one."""
    with RawConn(port, timeout=10) as conn:
        conn.send(data)
        try:
            return conn.read_response(method=method)
        except Closed:
            return None


def answered_or_closed(conn: RawConn, bound: float) -> tuple[int | None, float]:
    """Wait (at most `bound` s) for the gateway to answer or close: (status or None, seconds waited)."""
    start = time.monotonic()
    try:
        return conn.read_response(timeout=bound).status, time.monotonic() - start
    except Closed:
        return None, time.monotonic() - start
    except TimeoutError:
        return -1, time.monotonic() - start


# ---------------------------------------------------------------- matchers

# SPEC.md leaves the answer open: the gateways and `blitzc route` need only agree.
EITHER = "either"

# (case id, method, target, fields, the route SPEC.md picks, None for its 404, or EITHER)
MATCH_CASES = [
    # `header NAME VALUE` is the exact value; RFC 9110 5.5 trims a field's OWS, so spaces alone are empty.
    ("header-empty", "GET", "/he", [("x-e", "")], "header-empty"),
    ("header-only-spaces", "GET", "/he", [("x-e", "   ")], "header-empty"),
    ("header-absent", "GET", "/he", [], None),
    ("header-other-value", "GET", "/he", [("X-E", "v")], "header-present"),
    ("header-repeated-one-empty", "GET", "/he", [("x-e", "v"), ("x-e", "")], "header-empty"),
    ("header-other-name", "GET", "/he", [("x-ee", "")], None),
    # Only the host is compared case-insensitively: paths are not.
    ("prefix-case", "GET", "/Case/x", [], "case"),
    ("prefix-other-case", "GET", "/case/x", [], None),
    ("prefix-upper", "GET", "/CASE", [], None),
    ("prefix-escaped-letter", "GET", "/%43ase/x", [], "case"),
    ("exact", "GET", "/exact", [], "exact"),
    ("exact-query", "GET", "/exact?x=1", [], "exact"),
    ("exact-trailing-slash", "GET", "/exact/", [], None),
    ("exact-dotdot", "GET", "/a/../exact", [], "exact"),
    ("exact-dot", "GET", "/./exact", [], "exact"),
    ("exact-upper", "GET", "/EXACT", [], None),
    ("exact-escaped-letter", "GET", "/exac%74", [], "exact"),
    # `path-regex` must match the whole path, without its query, after dot-segments.
    ("regex", "GET", "/rx/abc", [], "regex"),
    ("regex-trailing-slash", "GET", "/rx/abc/", [], None),
    ("regex-more", "GET", "/rx/abc/d", [], None),
    ("regex-query", "GET", "/rx/abc?q=1", [], "regex"),
    ("regex-upper", "GET", "/rx/ABC", [], None),
    ("regex-escaped-letter", "GET", "/rx/a%62c", [], "regex"),
    ("regex-dotdot", "GET", "/x/../rx/abc", [], "regex"),
    # A `path-prefix` written with a trailing slash is segment-aware (`/s` itself: see STRIP_CASES).
    ("slash-prefix-longer", "GET", "/sx", [], None),
    # `method` is exact: HEAD is not GET.
    ("method-get", "GET", "/g", [], "get-only"),
    ("method-head-is-not-get", "HEAD", "/g", [], None),
    # `header NAME VALUE` is an exact value: only the name is case-insensitive.
    ("header-value", "GET", "/hv", [("X-V", "Yes")], "header-value"),
    ("header-value-other-case", "GET", "/hv", [("x-v", "yes")], None),
    ("header-value-in-a-list", "GET", "/hv", [("x-v", "No, Yes")], EITHER),
    # `query NAME VALUE` is exact too; a repeated name is not settled by SPEC.md.
    ("query-value", "GET", "/q?lang=en", [], "query-value"),
    ("query-value-other-case", "GET", "/q?lang=EN", [], None),
    ("query-repeated", "GET", "/q?lang=de&lang=en", [], EITHER),
    ("query-repeated-first", "GET", "/q?lang=en&lang=de", [], EITHER),
]


def route_answered(pair: Pair, kind: str, method: str, target: str, fields) -> tuple[int, bytes]:
    resp = ask(pair.served[kind].port, head(target, fields, method), method)
    assert resp is not None, f"{kind}: closed without an answer"
    return resp.status, resp.body


def route_cli(pair: Pair, method: str, target: str, fields) -> str | None:
    """The route `blitzc route` names, or None for its 404."""
    argv = [str(pair.blitzc), "route", str(pair.spec), method, target, "-H", f"host: {HOST}"]
    argv += [a for name, value in fields for a in ("-H", f"{name}: {value}")]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode in (0, 1), result
    if result.returncode == 1:
        assert "404" in result.stdout + result.stderr, result
        return None
    return result.stdout.strip()


MATCH_IDS = [c[0] for c in MATCH_CASES]


@pytest.mark.parametrize("case_id,method,target,fields,route", MATCH_CASES, ids=MATCH_IDS)
def test_matchers_pick_the_same_route_on_the_gateways_and_blitzc_route(pair, case_id, method, target, fields, route):
    """Every answer names its route in its body (HEAD aside: its status)."""
    answers = {kind: route_answered(pair, kind, method, target, fields) for kind in GATEWAYS}
    assert answers["interpreted"] == answers["compiled"], answers
    status, body = answers["compiled"]
    assert status in (200, 404), answers
    if route != EITHER:
        assert status == (200 if route else 404), answers
        if route and method != "HEAD":
            assert body == route.encode(), answers
    picked = body.decode() if status == 200 else None
    cli = route_cli(pair, method, target, fields)
    if method == "HEAD":
        assert (cli is None) == (status == 404), (cli, answers)
    else:
        assert cli == picked, (cli, answers)


# An HTTP/2 field value cannot start or end with a space (RFC 9113 8.2.1: the gateway answers 400).
H2_MATCH_CASES = [c for c in MATCH_CASES if c[0] != "header-only-spaces"]


@pytest.mark.parametrize("case_id,method,target,fields,route", H2_MATCH_CASES, ids=[c[0] for c in H2_MATCH_CASES])
def test_matchers_decide_alike_over_h2c(pair, case_id, method, target, fields, route):
    """The same request over h2c (field names lower-cased, as HTTP/2 writes
    them) gets the answer it gets over HTTP/1.1, from both gateways."""
    expected = route_answered(pair, "compiled", method, target, fields)
    for kind in GATEWAYS:
        with H2Client(f"127.0.0.1:{pair.served[kind].port}") as client:
            resp = client.request(target, method, authority=HOST, headers=[(n.lower(), v) for n, v in fields])
        assert (resp.status, resp.body) == expected, (kind, resp)


# (request target, the target the origin must get, None for a 404, or EITHER): a
# prefix written with its trailing slash, as route prefix and as strip-prefix.
STRIP_CASES = [
    ("/s/x", "/x"),
    ("/s/", "/"),
    ("/s/./x?q=1", "/x?q=1"),  # stripped from the normalised path, the query kept
    ("/s//x", "/x"),
    ("/a/../s/x", "/x"),
    ("/s", EITHER),  # is `/s` under the prefix `/s/`? SPEC.md does not say
    ("/sx", None),
]


@pytest.mark.parametrize("target,forwarded", STRIP_CASES, ids=[c[0] for c in STRIP_CASES])
def test_strip_prefix_with_a_trailing_slash_forwards_alike_from_both_gateways(pair, target, forwarded):
    got = {}
    for kind in GATEWAYS:
        pair.origin.reset()
        status, _ = route_answered(pair, kind, "GET", target, [])
        seen = pair.origin.wait_requests(1, timeout=2) if status == 200 else []
        got[kind] = (status, [r.target for r in seen])
    assert got["interpreted"] == got["compiled"], got
    assert route_cli(pair, "GET", target, []) == ("slash-prefix" if got["compiled"][0] == 200 else None), got
    if forwarded is None:
        assert got["compiled"] == (404, []), got
    elif forwarded != EITHER:
        assert got["compiled"] == (200, [forwarded]), got


# ---------------------------------------------------------------- limits at their bound and one past it


def head_of_fields(count: int) -> bytes:
    """A request head with exactly `count` header lines (Host included)."""
    return head("/up/fields", [(f"x-f{i}", "v") for i in range(count - 1)])


def head_of_size(size: int) -> bytes:
    """A request head of exactly `size` bytes, request line to the blank line."""
    bare = head("/up/size", [("x-pad", "")])
    data = head("/up/size", [("x-pad", "p" * (size - len(bare)))])
    assert len(data) == size
    return data


@pytest.mark.parametrize("kind", GATEWAYS)
def test_max_headers_is_the_most_header_lines_served(pair, kind):
    port = pair.served[kind].port
    at_bound = ask(port, head_of_fields(MAX_HEADERS))
    assert at_bound is not None and at_bound.status == 200, at_bound
    past = ask(port, head_of_fields(MAX_HEADERS + 1))
    assert past is not None and past.status == 431, past


@pytest.mark.parametrize("kind", GATEWAYS)
def test_max_header_bytes_is_the_largest_head_served(pair, kind):
    port = pair.served[kind].port
    at_bound = ask(port, head_of_size(MAX_HEADER_BYTES))
    assert at_bound is not None and at_bound.status == 200, at_bound
    past = ask(port, head_of_size(MAX_HEADER_BYTES + 1))
    assert past is not None and past.status == 431, past


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def requests_for(origin, path: str) -> list:
    """The origin's requests for `path`: another case's aborted upstream
    request (a 413's) may reach the shared origin after its reset."""
    return [r for r in origin.requests if r.path == path]


def forwarded(origin, path: str):
    """The complete request for `path` the origin got (None after 5 s). By
    path: the previous case's aborted upstream request (its 413) may reach
    the origin after that origin's reset."""
    def done():
        return next((r for r in origin.requests if r.complete and r.path == path), None)

    origin.wait_for(lambda: done() is not None)
    return done()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("kind", GATEWAYS)
def test_max_body_bytes_is_the_largest_body_forwarded(pair, kind, framing):
    port = pair.served[kind].port
    for size, status in ((MAX_BODY_BYTES, 200), (MAX_BODY_BYTES + 1, 413)):
        pair.origin.reset()
        body = b"b" * size
        if framing == "content-length":
            data = head(f"/up/body{size}", [("Content-Length", str(size))], "POST") + body
        else:
            data = head(f"/up/body{size}", [("Transfer-Encoding", "chunked")], "POST") + chunked(body)
        resp = ask(port, data, "POST")
        assert resp is not None and resp.status == status, (size, resp)
        if status == 200:
            seen = forwarded(pair.origin, f"/up/body{size}")
            assert seen and seen.body_len == size, pair.origin.requests
        else:
            # Nothing larger than the limit ever reaches the upstream whole.
            assert not any(r.complete and r.body_len > MAX_BODY_BYTES for r in pair.origin.requests)


def h2_ask(pair: Pair, kind: str, target: str, fields=(), method: str = "GET", body: bytes | None = None):
    with H2Client(f"127.0.0.1:{pair.served[kind].port}") as client:
        return client.request(target, method, authority=HOST, headers=list(fields), body=body)


@pytest.mark.parametrize("kind", GATEWAYS)
def test_max_headers_over_h2c_counts_as_over_http1(pair, kind):
    """`:authority` stands for Host; pseudo-fields are not header lines."""
    at_bound = h2_ask(pair, kind, "/up/fields", [(f"x-f{i}", "v") for i in range(MAX_HEADERS - 1)])
    assert at_bound.status == 200, at_bound
    past = h2_ask(pair, kind, "/up/fields", [(f"x-f{i}", "v") for i in range(MAX_HEADERS)])
    assert past.status == 431, past


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
@pytest.mark.parametrize("kind", GATEWAYS)
def test_max_body_bytes_over_h2c(pair, kind, declared):
    for size, status in ((MAX_BODY_BYTES, 200), (MAX_BODY_BYTES + 1, 413)):
        pair.origin.reset()
        fields = [("content-length", str(size))] if declared else []
        path = f"/up/h2body{size}"
        resp = h2_ask(pair, kind, path, fields, "POST", b"b" * size)
        assert resp.status == status, (size, resp)
        if status == 200:
            seen = forwarded(pair.origin, path)
            assert seen and seen.body_len == size, pair.origin.requests
        else:
            assert not any(r.complete and r.body_len > MAX_BODY_BYTES for r in pair.origin.requests)


# ---------------------------------------------------------------- what each timeout measures


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", GATEWAYS)
def test_header_timeout_bounds_the_whole_head_not_each_gap(pair, kind):
    """A head trickled a byte each 0.2 s (gaps well under the 1 s timeout)
    must still be cut once the whole head took more than 1 s: 408 or a close."""
    pair.origin.reset()
    data = head("/up/trickled-head", [("x-slow", "s" * 40)])
    with RawConn(pair.served[kind].port, timeout=10) as conn:
        start = time.monotonic()
        cut = False
        for byte in data[:-1]:  # never the last byte: the head stays unfinished
            if not conn.send(bytes([byte])) or conn.wait_closed(0.2):
                cut = True
                break
            if time.monotonic() - start > TIMEOUT_BOUND_S:
                break
        assert cut, f"{kind}: a head trickled for {time.monotonic() - start:.1f} s was not cut"
        assert not conn.buf or conn.buf.startswith(b"HTTP/1.1 408"), bytes(conn.buf[:100])
    assert not requests_for(pair.origin, "/up/trickled-head"), pair.origin.requests


@pytest.mark.parametrize("kind", GATEWAYS)
def test_idle_timeout_closes_a_keep_alive_connection_with_no_request(pair, kind):
    with RawConn(pair.served[kind].port, timeout=10) as conn:
        conn.send(head("/exact"))
        assert conn.read_response().status == 200
        # Control: a request well inside the idle time is served on the same connection.
        time.sleep(TIMEOUT_S / 3)
        conn.send(head("/exact"))
        assert conn.read_response().status == 200
        assert conn.wait_closed(TIMEOUT_BOUND_S), f"{kind}: idle connection kept past {TIMEOUT_BOUND_S} s"
        assert not conn.buf, bytes(conn.buf)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", GATEWAYS)
def test_body_timeout_is_the_gap_between_body_bytes_not_the_whole_body(pair, kind):
    """Ten body bytes 0.3 s apart take three times the timeout and are served."""
    pair.origin.reset()
    body = b"0123456789"
    with RawConn(pair.served[kind].port, timeout=10) as conn:
        conn.send(head("/up/trickled-body", [("Content-Length", str(len(body)))], "POST"))
        for byte in body:
            time.sleep(0.3)
            assert conn.send(bytes([byte])), f"{kind}: cut during a body whose gaps were 0.3 s"
        resp = conn.read_response(method="POST")
    assert resp.status == 200 and resp.body == b"POST /up/trickled-body\n", resp
    seen = pair.origin.wait_requests(1, complete=True)
    assert seen[0].complete and bytes(seen[0].body) == body, seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", GATEWAYS)
def test_body_timeout_cuts_a_pause_longer_than_it(pair, kind):
    pair.origin.reset()
    with RawConn(pair.served[kind].port, timeout=10) as conn:
        conn.send(head("/up/paused-body", [("Content-Length", "10")], "POST") + b"01234")
        status, waited = answered_or_closed(conn, TIMEOUT_BOUND_S)
    assert status in (408, None), f"{kind}: {status} after {waited:.1f} s (-1: neither answer nor close)"
    assert not any(r.complete for r in requests_for(pair.origin, "/up/paused-body")), pair.origin.requests


def cut(seen) -> bool:
    """Stream 1 reset or answered, or the connection ended."""
    return seen.closed or seen.goaway is not None or 1 in seen.resets or 1 in seen.headers


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", GATEWAYS)
def test_header_timeout_bounds_a_header_block_trickled_in_continuations_over_h2c(pair, kind):
    """HTTP/2's request head is its header block: HEADERS then CONTINUATION
    frames of a few bytes each 0.2 s must still be cut at the 1 s timeout
    (a reset of the stream, a GOAWAY or a close; never a response)."""
    pair.origin.reset()
    with RawH2(f"127.0.0.1:{pair.served[kind].port}") as conn:
        block = conn.block("GET", "/up/trickled-h2-head", HOST, [("x-slow", "s" * 200)])
        conn.headers(1, block[:4], end_stream=True, end_headers=False)
        start = time.monotonic()
        sent = 4
        while sent < len(block) - 4 and time.monotonic() - start < TIMEOUT_BOUND_S:
            if not conn.frame(ContinuationFrame(1, data=block[sent:sent + 4])):
                break
            sent += 4
            if cut(conn.read_frames(time.monotonic() + 0.2, stop=cut)):
                break
        seen = conn.seen
        assert cut(seen), f"{kind}: a header block trickled for {time.monotonic() - start:.1f} s was not cut"
        assert seen.status(1) in (None, 408), seen
    assert not requests_for(pair.origin, "/up/trickled-h2-head"), pair.origin.requests


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", GATEWAYS)
def test_body_timeout_is_the_gap_between_data_frames_over_h2c(pair, kind):
    """Ten one-byte DATA frames 0.3 s apart are served; then a 2.5 s pause is cut."""
    pair.origin.reset()
    with RawH2(f"127.0.0.1:{pair.served[kind].port}") as conn:
        conn.headers(1, end_stream=False, method="POST", path="/up/trickled-h2-body", authority=HOST,
                     extra=[("content-length", "10")])
        for i in range(10):
            time.sleep(0.3)
            data = DataFrame(1, data=b"%d" % i)
            if i == 9:
                data.flags.add("END_STREAM")
            assert conn.frame(data), f"{kind}: cut during a body whose gaps were 0.3 s"
        seen = conn.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended or 1 in s.resets or s.closed)
        assert seen.status(1) == 200 and 1 in seen.ended, seen
        # A second stream pauses longer than the timeout after its first bytes.
        conn.headers(3, end_stream=False, method="POST", path="/up/paused-h2-body", authority=HOST,
                     extra=[("content-length", "10")])
        conn.frame(DataFrame(3, data=b"01234"))
        ended = conn.read_frames(time.monotonic() + TIMEOUT_BOUND_S,
                                 stop=lambda s: 3 in s.ended or 3 in s.resets or s.closed or s.goaway is not None)
        assert 3 in ended.resets or ended.closed or ended.goaway is not None or ended.status(3) == 408, ended
    # The paused body may have reached the origin in part, never whole.
    assert [r.complete for r in pair.origin.requests][:1] == [True], pair.origin.requests
    assert not any(r.complete for r in pair.origin.requests[1:]), pair.origin.requests


# ---------------------------------------------------------------- check on odd input

KDL_HEAD = 'version 1\nlistener "l" { bind "127.0.0.1:8080" }\nupstream "u" { server "127.0.0.1:9000" }\n'
TOML_HEAD = ('version = 1\n\n[[listener]]\nname = "l"\nbind = "127.0.0.1:8080"\n\n'
             '[[upstream]]\nname = "u"\nservers = [{ address = "127.0.0.1:9000" }]\n')


def kdl_route(match: str = 'path "/r"', steps: str = "", action: str = 'respond 200') -> str:
    return KDL_HEAD + f'route "r" {{\n    match {{ {match} }}\n    {steps}\n    {action}\n}}\n'


# (id, form, spec bytes, must it be an error). Each is odd in one way SPEC.md
# names (syntax, type, duration, size, rate, address, status, header name,
# regex) or in bytes no rule names; none may panic or pass silently when wrong.
ODD_INPUTS = [
    ("empty-kdl", "kdl", b"", True),
    ("empty-toml", "toml", b"", True),
    ("bom-only", "kdl", b"\xef\xbb\xbf", True),
    ("version-2", "kdl", b"version 2\n", True),
    ("version-string", "kdl", b'version "1"\n', True),
    ("version-float", "toml", b"version = 1.0\n", True),
    ("version-not-first", "kdl", b'listener "l" { bind "127.0.0.1:8080" }\nversion 1\n', True),
    ("nul-in-name", "kdl", KDL_HEAD.encode() + b'route "r\x00" { respond 200 }\n', True),
    # A KDL or TOML document is UTF-8: a byte that is not is a syntax error of the document, which
    # SPEC.md wants as a diagnostic with its position, not exit 2 as though the file could not be read
    # (it was, until fixed after this audit).
    ("invalid-utf8", "kdl", KDL_HEAD.encode() + b'route "\xff\xfe" { respond 200 }\n', True),
    ("invalid-utf8-toml", "toml", TOML_HEAD.encode() + b'\n[[route]]\nname = "\xff"\nrespond = 200\n', True),
    ("lone-brace", "kdl", KDL_HEAD.encode() + b"}\n", True),
    ("unterminated-string", "kdl", KDL_HEAD.encode() + b'route "r { respond 200 }\n', True),
    ("status-huge", "kdl", kdl_route(action="respond 99999999999999999999").encode(), True),
    ("status-99", "kdl", kdl_route(action="respond 99").encode(), True),
    ("status-600", "kdl", kdl_route(action="respond 600").encode(), True),
    ("status-negative", "kdl", kdl_route(action="respond -200").encode(), True),
    ("redirect-200", "kdl", kdl_route(action='redirect "/x" status=200').encode(), True),
    ("weight-negative", "kdl", (KDL_HEAD + 'upstream "w" { balance "weighted-round-robin"; '
                                'server "127.0.0.1:1" weight=-1 }\n').encode(), True),
    ("weight-too-big", "kdl", (KDL_HEAD + 'upstream "w" { balance "weighted-round-robin"; '
                               'server "127.0.0.1:1" weight=4294967296 }\n').encode(), True),
    ("workers-zero", "kdl", (KDL_HEAD + "gateway { workers 0 }\n").encode(), True),
    ("workers-negative", "toml", (TOML_HEAD + "\n[gateway]\nworkers = -1\n").encode(), True),
    ("workers-float", "kdl", (KDL_HEAD + 'gateway "g" { workers 1.5 }\n').encode(), True),
    ("duration-empty", "kdl", (KDL_HEAD + 'limits { idle-timeout "" }\n').encode(), True),
    ("duration-unit-only", "kdl", (KDL_HEAD + 'limits { idle-timeout "s" }\n').encode(), True),
    ("duration-space", "kdl", (KDL_HEAD + 'limits { idle-timeout "1 s" }\n').encode(), True),
    ("duration-two-parts", "kdl", (KDL_HEAD + 'limits { idle-timeout "1m30s" }\n').encode(), True),
    ("duration-arabic-digit", "kdl", (KDL_HEAD + 'limits { idle-timeout "\u0663s" }\n').encode(), True),
    ("duration-micro", "kdl", (KDL_HEAD + 'limits { idle-timeout "5\u00b5s" }\n').encode(), True),
    ("duration-upper-unit", "toml", (TOML_HEAD + '\n[limits]\nidle-timeout = "1S"\n').encode(), True),
    ("size-empty", "kdl", (KDL_HEAD + 'limits { max-body-bytes "" }\n').encode(), True),
    ("size-unit-only", "kdl", (KDL_HEAD + 'limits { max-body-bytes "KiB" }\n').encode(), True),
    ("size-fraction", "kdl", (KDL_HEAD + 'limits { max-body-bytes "1.5KiB" }\n').encode(), True),
    ("size-lower-unit", "kdl", (KDL_HEAD + 'limits { max-body-bytes "16kib" }\n').encode(), True),
    ("size-overflow", "toml", (TOML_HEAD + '\n[limits]\nmax-body-bytes = "18446744073709551616"\n').encode(), True),
    ("size-overflow-unit", "kdl", (KDL_HEAD + 'limits { max-body-bytes "17179869184GiB" }\n').encode(), True),
    ("size-negative", "toml", (TOML_HEAD + "\n[limits]\nmax-body-bytes = -1\n").encode(), True),
    ("rate-zero", "kdl", (KDL_HEAD + 'rate-limit "x" { key "client-ip"; rate "0/s" }\n').encode(), True),
    ("rate-per-day", "kdl", (KDL_HEAD + 'rate-limit "x" { key "client-ip"; rate "1/d" }\n').encode(), True),
    ("rate-no-count", "kdl", (KDL_HEAD + 'rate-limit "x" { key "client-ip"; rate "/s" }\n').encode(), True),
    ("bind-no-port", "kdl", b'version 1\nlistener "l" { bind "127.0.0.1" }\n', True),
    ("bind-port-too-big", "kdl", b'version 1\nlistener "l" { bind "127.0.0.1:65536" }\n', True),
    ("bind-no-host", "kdl", b'version 1\nlistener "l" { bind ":80" }\n', True),
    ("bind-open-bracket", "kdl", b'version 1\nlistener "l" { bind "[::1:80" }\n', True),
    ("server-empty", "kdl", (KDL_HEAD + 'upstream "v" { server "" }\n').encode(), True),
    ("set-empty-header-name", "kdl", kdl_route(steps='request-headers { set "" "v" }').encode(), True),
    ("set-header-name-space", "kdl", kdl_route(steps='request-headers { set "x y" "v" }').encode(), True),
    ("set-header-name-colon", "kdl", kdl_route(steps='response-headers { set "x:y" "v" }').encode(), True),
    ("match-header-name-nonascii", "kdl", kdl_route(match='header "x-\u00e9"').encode(), True),
    ("regex-open-group", "kdl", kdl_route(match='path-regex "/("').encode(), True),
    # Compiles to far more than the regex crate's size limit: a diagnostic, not a hang or an abort.
    ("regex-too-big", "kdl", kdl_route(match='path-regex "/a{1000}{1000}{1000}"').encode(), True),
    ("host-empty", "kdl", kdl_route(match='host ""').encode(), True),
    ("host-only-star", "kdl", kdl_route(match='host "*"').encode(), True),
    ("path-empty", "kdl", kdl_route(match='path ""').encode(), True),
    ("path-relative", "kdl", kdl_route(match='path-prefix "relative"').encode(), True),
    ("method-empty", "kdl", kdl_route(match='method ""').encode(), True),
    ("toml-steps-string", "toml", (TOML_HEAD + '\n[[route]]\nname = "r"\nsteps = "x"\nrespond = 200\n').encode(), True),
    ("toml-proxy-number", "toml", (TOML_HEAD + '\n[[route]]\nname = "r"\nproxy = 5\n').encode(), True),
    ("toml-route-not-table", "toml", (TOML_HEAD + "\nroute = 1\n").encode(), True),
    ("toml-match-array", "toml", (TOML_HEAD + '\n[[route]]\nname = "r"\nmatch = []\nrespond = 200\n').encode(), True),
    ("toml-two-actions", "toml", (TOML_HEAD + '\n[[route]]\nname = "r"\nproxy = "u"\nrespond = 200\n').encode(), True),
    ("kdl-two-actions", "kdl", kdl_route(steps='proxy "u"').encode(), True),
    ("long-line", "kdl", kdl_route(match='path "/' + "a" * 200_000 + '"', action="respond 200").encode(), False),
    ("crlf-and-tabs", "kdl", kdl_route(match='path\t"/x"').replace("\n", "\r\n").encode(), False),
]


def check_json(blitzc: Path, spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(blitzc), "check", "--format", "json", str(spec)], check=False, capture_output=True, timeout=60)


@pytest.mark.parametrize("case_id,form,data,is_error", ODD_INPUTS, ids=[c.values[0] if hasattr(c, "values") else c[0] for c in ODD_INPUTS])
def test_check_answers_odd_input_with_positioned_diagnostics_never_a_panic(blitzc, tmp_path, case_id, form,
                                                                            data, is_error):
    spec = tmp_path / f"odd.{form}"
    spec.write_bytes(data)
    result = check_json(blitzc, spec)
    stderr = result.stderr.decode(errors="replace")
    assert "panicked" not in stderr and result.returncode in (0, 1), (result.returncode, stderr[-2000:])
    assert result.returncode == (1 if is_error else 0), result.stdout.decode(errors="replace")[-3000:]
    report = json.loads(result.stdout)
    line_count = data.count(b"\n") + 1
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert bool(errors) == is_error, report
    for d in report["diagnostics"]:
        assert re.fullmatch(r"B\d{3}", d["code"]), d
        assert Path(d["file"]).name == spec.name, d
        assert 1 <= d["line"] <= line_count and d["column"] >= 1, d
        assert d["help"].strip() and d["label"].strip(), d


def test_a_spec_that_is_not_utf8_does_not_hide_the_other_specs_diagnostics(blitzc, tmp_path):
    """SPEC.md: all problems "are reported in one run": one file's bad byte
    must not drop what `check` has to say about the files beside it."""
    wrong = tmp_path / "wrong.kdl"
    wrong.write_text(kdl_route(action='proxy "nowhere"'))
    not_utf8 = tmp_path / "not-utf8.kdl"
    not_utf8.write_bytes(KDL_HEAD.encode() + b'route "\xff" { respond 200 }\n')
    result = subprocess.run([str(blitzc), "check", "--format", "json", str(wrong), str(not_utf8)], check=False,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    files = {Path(d["file"]).name for d in json.loads(result.stdout)["diagnostics"]}
    assert files == {"wrong.kdl", "not-utf8.kdl"}, result.stdout


# ---------------------------------------------------------------- KDL and TOML twins

TWIN_KDL = """version 1
gateway "twins" {
    workers "auto"
}
listener "public" {
    bind "127.0.0.1:18431"
    protocols "h1" "h2c"
}
limits {
    header-timeout "7s"
    idle-timeout "61s"
    body-timeout "29s"
    max-header-bytes "8KiB"
    max-headers 77
    max-body-bytes "3MiB"
}
upstream "users" {
    balance "weighted-round-robin"
    server "127.0.0.1:19001" weight=3
    server "127.0.0.1:19002" weight=1
    pool max-idle=17 idle-timeout="91s"
    health-check path="/healthz" interval="2s" timeout="500ms" healthy=4 unhealthy=5 expect="200-299"
    timeouts connect="1500ms" response="31s"
    retry attempts=2 on="connect-error" "502" "503" total="9s"
}
upstream "sessions" {
    balance "consistent-hash" key="header:x-user-id"
    server "127.0.0.1:19101"
    server "127.0.0.1:19102"
}
upstream "least" {
    balance "least-conn"
    server "127.0.0.1:19201"
}
upstream "p2c" {
    balance "p2c"
    server "127.0.0.1:19301"
    server "127.0.0.1:19302"
}
route "users" {
    match {
        path-prefix "/v1/users"
        method "GET" "HEAD"
        header "x-canary" "1" "2"
        query "lang"
    }
    request-headers {
        set "x-forwarded-proto" "https"
        add "x-tag" "a"
        remove "cookie"
    }
    response-headers { set "strict-transport-security" "max-age=31536000" }
    proxy "users" strip-prefix="/v1"
}
route "sessions" {
    match { path-regex "/s/[0-9]+" }
    proxy "sessions"
}
route "least" {
    match { path "/least" }
    proxy "least"
}
route "p2c" {
    match { host "*.p2c.test" }
    proxy "p2c"
}
route "health" {
    match { path "/healthz" }
    respond 200 body="ok\\n" content-type="text/plain"
}
route "old" {
    match { path-prefix "/docs/v0" }
    redirect "https://docs.example.com/" status=301
}
"""

TWIN_TOML = """version = 1

[gateway]
name = "twins"
workers = "auto"

[[listener]]
name = "public"
bind = "127.0.0.1:18431"
protocols = ["h1", "h2c"]

[limits]
header-timeout = "7s"
idle-timeout = "61s"
body-timeout = "29s"
max-header-bytes = "8KiB"
max-headers = 77
max-body-bytes = "3MiB"

[[upstream]]
name = "users"
balance = "weighted-round-robin"
servers = [
  { address = "127.0.0.1:19001", weight = 3 },
  { address = "127.0.0.1:19002", weight = 1 },
]
pool = { max-idle = 17, idle-timeout = "91s" }
health-check = { path = "/healthz", interval = "2s", timeout = "500ms", healthy = 4, unhealthy = 5, expect = "200-299" }
timeouts = { connect = "1500ms", response = "31s" }
retry = { attempts = 2, on = ["connect-error", "502", "503"], total = "9s" }

[[upstream]]
name = "sessions"
balance = { algorithm = "consistent-hash", key = "header:x-user-id" }
servers = [{ address = "127.0.0.1:19101" }, { address = "127.0.0.1:19102" }]

[[upstream]]
name = "least"
balance = "least-conn"
servers = [{ address = "127.0.0.1:19201" }]

[[upstream]]
name = "p2c"
balance = "p2c"
servers = [{ address = "127.0.0.1:19301" }, { address = "127.0.0.1:19302" }]

[[route]]
name = "users"
match = { path-prefix = "/v1/users", method = ["GET", "HEAD"], header = { x-canary = ["1", "2"] }, query = { lang = true } }
steps = [
  { request-headers = { set = { x-forwarded-proto = "https" }, add = { x-tag = "a" }, remove = ["cookie"] } },
  { response-headers = { set = { strict-transport-security = "max-age=31536000" } } },
]
proxy = { upstream = "users", strip-prefix = "/v1" }

[[route]]
name = "sessions"
match = { path-regex = "/s/[0-9]+" }
proxy = "sessions"

[[route]]
name = "least"
match = { path = "/least" }
proxy = "least"

[[route]]
name = "p2c"
match = { host = "*.p2c.test" }
proxy = "p2c"

[[route]]
name = "health"
match = { path = "/healthz" }
respond = { status = 200, body = "ok\\n", content-type = "text/plain" }

[[route]]
name = "old"
match = { path-prefix = "/docs/v0" }
redirect = { location = "https://docs.example.com/", status = 301 }
"""


def test_kdl_and_toml_twins_of_upstream_limits_and_gateway_fields_emit_the_same_crate(blitzc, tmp_path):
    crates = {}
    for form, text in (("kdl", TWIN_KDL), ("toml", TWIN_TOML)):
        spec = tmp_path / f"twins.{form}"
        spec.write_text(text)
        checked = subprocess.run([str(blitzc), "check", str(spec)], check=False, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0 and "0 warnings" in checked.stdout + checked.stderr, checked
        out = tmp_path / f"crate-{form}"
        result = subprocess.run([str(blitzc), "emit", str(spec), "-o", str(out)], check=False,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        crates[form] = out
    files = sorted(p.relative_to(crates["kdl"]) for p in crates["kdl"].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(crates["toml"]) for p in crates["toml"].rglob("*") if p.is_file())

    def code(path: Path) -> str:
        # Only the comments naming the source file and its lines may differ.
        return re.sub(r"twins\.(kdl|toml)(:\d+(:\d+)?)?", "SPEC", path.read_text())

    for f in files:
        assert code(crates["kdl"] / f) == code(crates["toml"] / f), f
