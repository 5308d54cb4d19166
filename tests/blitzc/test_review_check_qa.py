"""A code-review pass over `blitzc check` (front ends, lowering, validation,
diagnostics), each suspicion proven with the real `blitzc` binary: `check`
itself, `blitzc route` (the reference matcher every consumer shares) and,
where only the runtime can show it, `blitzc dev` (the interpreter, no cargo).

What the earlier passes (test_spec_qa.py, test_positions_qa.py,
test_contract_qa.py) already cover is not repeated here. This file adds:

- value bounds in KDL and TOML side by side: each twin must get the same
  verdict and codes (SPEC.md "TOML form": both forms of a spec are one
  gateway), at and one past each documented bound (docs/spec.md section 3,
  the field tables);
- B050 cases that turn on a detail of matching (query names are
  case-sensitive, methods upper-cased, a header present with an empty
  value, a trailing dot on a host, wildcards that only share a suffix, an
  encoded slash that is no segment, value alternatives covered by a union):
  every route left unreported is shown reachable by a witness request
  given to `blitzc route`;
- positions after tabs and multi-byte characters, with CRLF, on a last line
  without a newline, in both forms and all machine formats;
- bugs found here and fixed since, kept as regression tests, each next to a
  passing control: a `(?x)` regex with a comment that `check` accepted and
  nothing else could compile (now B036, `check` compiles the anchored form);
  a match path no request can carry (raw UTF-8, a space) accepted although
  it could never match (now B038); a `burst` the KDL form accepted and the
  TOML form rejected; a `header-timeout` `check` accepts that left the
  gateway answering nothing (a timer tick that wrapped in release builds);
  a byte-order mark counted as a column; B083 blind to an IPv4-mapped or
  trailing-dot spelling of one server; the reference matcher finding a query
  parameter named "" in requests without one; a malformed KDL
  property value was reported at line 1, column 1 (the kdl crate spans it
  from the start of the document); a match condition that failed to lower
  (wrong type, no value, bad header name) was dropped, so its route looked
  broader and a later route got a spurious B050; KDL nested ~1,300 levels
  deep aborted `check` with a stack overflow in the kdl crate's parser.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from support.blitzc import Served
from support.gateway import free_port

# The same one-listener, one-upstream base as the first check QA pass.
from test_spec_qa import KDL_BASE, TOML_BASE

GITHUB_LINE = re.compile(r"^::(?:error|warning) file=[^,]+,line=(\d+),col=(\d+),title=(B\d{3})::", re.MULTILINE)


# ---------------------------------------------------------------- helpers


def write_spec(tmp_path: Path, form: str, body: str, base: bool = True) -> Path:
    """The spec `body` (after the base listener and upstream unless `base` is false) as spec.FORM."""
    spec = tmp_path / f"spec.{form}"
    prefix = (KDL_BASE if form == "kdl" else TOML_BASE) if base else ""
    spec.write_bytes((prefix + body).encode("utf-8"))
    return spec


def check(blitzc: Path, spec: Path, fmt: str = "json") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(blitzc), "check", "--format", fmt, str(spec)], capture_output=True, text=True, timeout=60, check=False
    )


def diagnostics(blitzc: Path, spec: Path) -> list[dict]:
    result = check(blitzc, spec)
    assert result.returncode in (0, 1), (result.returncode, result.stderr)
    return json.loads(result.stdout)["diagnostics"]


def verdict(blitzc: Path, spec: Path) -> list[tuple[str, str]]:
    """Sorted (code, severity) of every diagnostic."""
    return sorted((d["code"], d["severity"]) for d in diagnostics(blitzc, spec))


def route_of(blitzc: Path, spec: Path, method: str, url: str, *headers: str) -> subprocess.CompletedProcess:
    argv = [str(blitzc), "route", str(spec), method, url]
    for header in headers:
        argv += ["-H", header]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def serve(blitzc: Path, spec: Path, port: int) -> Served:
    """`blitzc dev SPEC`: the reference interpreter, listening on `port`."""
    return Served([str(blitzc), "dev", str(spec)], port, dict(os.environ), cwd=spec.parent)


def stop(served: Served) -> None:
    """Kill, not drain: some of these gateways hold a connection no drain would end before its grace."""
    served.proc.kill()
    served.proc.wait(timeout=20)


def raw_get(port: int, target: bytes, timeout: float = 5) -> bytes:
    """Sends `GET target` as raw bytes (no client re-encodes it); returns what came back before the
    gateway closed or `timeout` passed (b"" when it said nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except TimeoutError:
            pass
        return got


def status_of(response: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------- KDL and TOML twins at the bounds

DNS_253 = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters: the longest DNS name
DNS_254 = DNS_253 + "a"
LABEL_64 = "a" * 64 + ".test"


def upstream_twins(kdl_line: str, toml_line: str, server: str = "127.0.0.1:1") -> tuple[str, str]:
    return (
        f'upstream "v" {{ server "{server}"; {kdl_line} }}\n',
        f'\n[[upstream]]\nname = "v"\nservers = [{{ address = "{server}" }}]\n{toml_line}\n',
    )


def route_twins(kdl_action: str, toml_action: str) -> tuple[str, str]:
    return f'route "r" {{ {kdl_action} }}\n', f'\n[[route]]\nname = "r"\n{toml_action}\n'


def weight_twins(weight: int) -> tuple[str, str]:
    return (
        f'upstream "v" {{ balance "weighted-round-robin"; server "127.0.0.1:1" weight={weight} }}\n',
        (f'\n[[upstream]]\nname = "v"\nbalance = "weighted-round-robin"\n'
        f'servers = [{{ address = "127.0.0.1:1", weight = {weight} }}]\n'),
    )


def limits_twins(key: str, value: str) -> tuple[str, str]:
    return f"limits {{ {key} {value} }}\n", f"\n[limits]\n{key} = {value}\n"


def burst_twins(burst: int) -> tuple[str, str]:
    return (
        (f'rate-limit "rl" {{ key "client-ip"; rate "1/s" burst={burst} }}\n'
         'route "r" { rate-limit "rl"; proxy "u" }\n'),
        (f'\n[[rate-limit]]\nname = "rl"\nkey = "client-ip"\nrate = "1/s"\nburst = {burst}\n'
        '\n[[route]]\nname = "r"\nsteps = [{ rate-limit = "rl" }]\nproxy = "u"\n'),
    )


E, W = "error", "warning"

# (id, (kdl body, toml body), expected (code, severity) list): values at a bound and one past it.
BOUNDS = [
    ("weight-u32-max", weight_twins(4294967295), []),
    ("weight-u32-max-plus-1", weight_twins(4294967296), [("B041", E)]),
    ("weight-negative", weight_twins(-1), [("B041", E)]),
    ("workers-0", ('gateway "g" { workers 0 }\n', "\n[gateway]\nworkers = 0\n"), [("B041", E)]),
    ("workers-float", ('gateway "g" { workers 2.0 }\n', "\n[gateway]\nworkers = 2.0\n"), [("B011", E)]),
    ("max-headers-0", limits_twins("max-headers", "0"), [("B041", E)]),
    ("max-headers-i64-max", limits_twins("max-headers", "9223372036854775807"), [("B041", E)]),
    ("size-u64-max", limits_twins("max-body-bytes", '"18446744073709551615"'), []),
    ("size-u64-max-plus-1", limits_twins("max-body-bytes", '"18446744073709551616"'), [("B031", E)]),
    ("size-0B", limits_twins("max-body-bytes", '"0B"'), []),
    ("size-signed", limits_twins("max-body-bytes", '"+1"'), [("B031", E)]),
    ("size-float", limits_twins("max-body-bytes", "1.5"), [("B011", E)]),
    ("duration-leading-zero", limits_twins("idle-timeout", '"01s"'), []),
    ("duration-upper-case-unit", limits_twins("idle-timeout", '"1S"'), [("B030", E)]),
    ("duration-empty", limits_twins("idle-timeout", '""'), [("B030", E)]),
    ("duration-full-width-digit", limits_twins("idle-timeout", '"\uff11s"'), [("B030", E)]),
    ("rate-overflowing-u64", (
        ('rate-limit "rl" { key "client-ip"; rate "99999999999999999999/s" }\n'
         'route "r" { rate-limit "rl"; proxy "u" }\n'),
        ('\n[[rate-limit]]\nname = "rl"\nkey = "client-ip"\nrate = "99999999999999999999/s"\n'
        '\n[[route]]\nname = "r"\nsteps = [{ rate-limit = "rl" }]\nproxy = "u"\n')), [("B032", E)]),
    ("burst-0", burst_twins(0), [("B041", E)]),
    ("burst-u32-max", burst_twins(4294967295), []),
    ("retry-attempts-10", upstream_twins("retry attempts=10", "retry = { attempts = 10 }"), []),
    ("retry-attempts-11", upstream_twins("retry attempts=11", "retry = { attempts = 11 }"), [("B041", W)]),
    ("retry-on-500", upstream_twins("retry attempts=1 on=500", "retry = { attempts = 1, on = [500] }"), []),
    ("retry-on-499", upstream_twins("retry attempts=1 on=499", "retry = { attempts = 1, on = [499] }"), [("B037", E)]),
    ("retry-on-600", upstream_twins('retry attempts=1 on="600"', 'retry = { attempts = 1, on = ["600"] }'),
     [("B037", E)]),
    ("expect-100", upstream_twins("health-check expect=100", "health-check = { expect = 100 }"), []),
    ("expect-99", upstream_twins("health-check expect=99", "health-check = { expect = 99 }"), [("B034", E)]),
    ("expect-one-status-range",
     upstream_twins('health-check expect="200-200"', 'health-check = { expect = "200-200" }'), []),
    ("expect-reversed-range", upstream_twins('health-check expect="300-200"', 'health-check = { expect = "300-200" }'),
     [("B034", E)]),
    ("healthy-0", upstream_twins("health-check healthy=0", "health-check = { healthy = 0 }"), [("B041", E)]),
    ("max-idle-0", upstream_twins("pool max-idle=0", "pool = { max-idle = 0 }"), []),
    ("server-dns-name-253", upstream_twins("", "", server=f"{DNS_253}:80"), []),
    ("server-dns-name-254", upstream_twins("", "", server=f"{DNS_254}:80"), [("B033", E)]),
    ("server-dns-label-64", upstream_twins("", "", server=f"{LABEL_64}:80"), [("B033", E)]),
    ("server-port-0", upstream_twins("", "", server="127.0.0.1:0"), [("B033", E)]),
    ("bind-port-65535", ('listener "m" { bind "127.0.0.1:65535" }\n',
                         '\n[[listener]]\nname = "m"\nbind = "127.0.0.1:65535"\n'), []),
    ("respond-199", route_twins("respond 199", "respond = 199"), [("B034", E)]),
    ("respond-599", route_twins("respond 599", "respond = 599"), []),
    ("redirect-304", route_twins('redirect "/x" status=304', 'redirect = { location = "/x", status = 304 }'),
     [("B034", E)]),
    ("redirect-308", route_twins('redirect "/x" status=308', 'redirect = { location = "/x", status = 308 }'), []),
]


@pytest.mark.parametrize("kdl, toml, want", [b[1] + (b[2],) for b in BOUNDS], ids=[b[0] for b in BOUNDS])
def test_kdl_and_toml_twins_agree_at_each_bound(blitzc, tmp_path, kdl, toml, want):
    got_kdl = verdict(blitzc, write_spec(tmp_path, "kdl", kdl))
    got_toml = verdict(blitzc, write_spec(tmp_path, "toml", toml))
    assert (got_kdl, got_toml) == (want, want)


def test_kdl_and_toml_twins_agree_one_past_the_u32_burst(blitzc, tmp_path):
    """docs/spec.md section 9 admits it ("the TOML front end takes 1 to 4294967295; the KDL front end takes
    any non-negative integer"), but SPEC.md wants one gateway from both forms: the KDL spec below has no
    TOML twin. The control is burst-u32-max above."""
    kdl, toml = burst_twins(4294967296)
    assert verdict(blitzc, write_spec(tmp_path, "kdl", kdl)) == verdict(blitzc, write_spec(tmp_path, "toml", toml))


# ---------------------------------------------------------------- B050 on details of matching

# (id, routes in KDL, the route named "r" shadowed?, a witness request (method, url, headers) that
# reaches "r" when it is not).
SHADOW = [
    ("query-names-are-case-sensitive",
     'route "e" { match { query "A" }; respond 200 }\nroute "r" { match { query "a" }; respond 200 }\n',
     False, ("GET", "/?a", ())),
    ("methods-are-upper-cased-so-get-is-GET",
     'route "e" { match { method "GET" }; respond 200 }\nroute "r" { match { method "get" }; respond 200 }\n',
     True, None),
    ("an-empty-value-does-not-cover-presence",
     'route "e" { match { header "x" "" }; respond 200 }\nroute "r" { match { header "x" }; respond 200 }\n',
     False, ("GET", "/", ("x: 1",))),
    ("a-trailing-dot-is-the-same-host",
     ('route "e" { match { host "example.com" }; respond 200 }\n'
      'route "r" { match { host "EXAMPLE.com." }; respond 200 }\n'),
     True, None),
    ("wildcards-sharing-only-a-suffix",
     'route "e" { match { host "*.b.com" }; respond 200 }\nroute "r" { match { host "*.ab.com" }; respond 200 }\n',
     False, ("GET", "/", ("host: x.ab.com",))),
    ("an-encoded-slash-is-no-segment",
     'route "e" { match { path-prefix "/a" }; respond 200 }\nroute "r" { match { path "/a%2Fb" }; respond 200 }\n',
     False, ("GET", "/a%2fb", ())),
    ("value-alternatives-covered-by-a-union",
     ('route "e1" { match { header "x" "1" }; respond 200 }\nroute "e2" { match { header "x" "2" }; respond 200 }\n'
      'route "r" { match { header "X" "1" "2" }; respond 200 }\n'),
     True, None),
    ("a-query-value-plus-is-not-a-space-in-the-spec",
     'route "e" { match { query "q" "a b" }; respond 200 }\nroute "r" { match { query "q" "a+b" }; respond 200 }\n',
     False, ("GET", "/?q=a%2Bb", ())),
    ("a-method-left-open-by-a-header-route",
     ('route "e" { match { path-prefix "/v1"; method "GET" }; respond 200 }\n'
      'route "e2" { match { path-prefix "/v1"; header "x" }; respond 200 }\n'
      'route "r" { match { path "/v1/a"; method "GET" "POST" }; respond 200 }\n'),
     False, ("POST", "/v1/a", ())),
    ("an-apex-among-wildcards",
     ('route "e" { match { host "*.example.com" }; respond 200 }\n'
      'route "e2" { match { host "example.com" }; respond 200 }\n'
      'route "r" { match { host "example.com" "x.example.com" "*.a.example.com" }; respond 200 }\n'),
     True, None),
]


@pytest.mark.parametrize("routes, shadowed, witness", [s[1:] for s in SHADOW], ids=[s[0] for s in SHADOW])
def test_b050_agrees_with_the_reference_matcher(blitzc, tmp_path, routes, shadowed, witness):
    spec = write_spec(tmp_path, "kdl", routes)
    reported = {d["message"] for d in diagnostics(blitzc, spec) if d["code"] == "B050"}
    assert reported == ({"route `r` can never match"} if shadowed else set())
    if witness:
        method, url, headers = witness
        picked = route_of(blitzc, spec, method, url, *headers)
        assert (picked.returncode, picked.stdout.strip()) == (0, "r"), picked.stderr


# ---------------------------------------------------------------- positions

POSITION_KDL = ('version 1\r\nlistener "l" {\tbind "127.0.0.1:8080" }\r\n'
                'route "é日😀" {\tmatch {\tpath "/x" }\t; proxy "nope" }')
POSITION_TOML = ('version = 1\r\n[[listener]]\r\nname = "l"\r\nbind = "127.0.0.1:8080"\r\n[[route]]\r\n'
                 'name = "é日😀"\r\nmatch = {\tpath = "/x" }\r\nproxy = {\tupstream = "nope" }')


@pytest.mark.parametrize("form, text", [("kdl", POSITION_KDL), ("toml", POSITION_TOML)])
def test_positions_after_tabs_and_wide_characters_on_a_last_line_without_newline(blitzc, tmp_path, form, text):
    """A tab is one column, a character outside the BMP too; CRLF is one line break; the last line has none."""
    spec = write_spec(tmp_path, form, text, base=False)
    lines = text.split("\r\n")
    want = (len(lines), lines[-1].index('"nope"') + 1)
    (d,) = diagnostics(blitzc, spec)
    assert (d["code"], d["line"], d["column"]) == ("B021", *want), d
    github = GITHUB_LINE.findall(check(blitzc, spec, "github").stdout)
    assert github == [(str(want[0]), str(want[1]), "B021")]
    sarif = json.loads(check(blitzc, spec, "sarif").stdout)
    region = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]
    assert (region["startLine"], region["startColumn"]) == want, region


MALFORMED_PROPERTY = ["weight=", "weight=1.2.3", "weight=1x", "weight=0b2", 'body=#"x"', "body=(t)", "b=1e"]


def weight_spec(tmp_path: Path, value: str) -> tuple[Path, int]:
    """A KDL spec whose third line holds `value` as a server property; that line's number."""
    return write_spec(tmp_path, "kdl", f'upstream "w" {{ server "127.0.0.1:1" {value} }}\n'), 4


def test_a_malformed_kdl_string_is_reported_on_its_line(blitzc, tmp_path):
    """Control for the test below: an unterminated string on line 4 is reported there."""
    spec, line = weight_spec(tmp_path, 'weight="1')
    found = diagnostics(blitzc, spec)
    assert found and all(d["code"] == "B001" and d["line"] == line for d in found), found


@pytest.mark.parametrize("value", MALFORMED_PROPERTY)
def test_a_malformed_kdl_property_value_is_reported_on_its_line(blitzc, tmp_path, value):
    """The kdl crate spans such an error from the start of the document; `check` points at the value (or
    at what stands where a value was due), within its line, not at line 1, column 1."""
    spec, line = weight_spec(tmp_path, value)
    found = diagnostics(blitzc, spec)
    assert found and all(d["code"] == "B001" and d["line"] == d["end_line"] == line for d in found), found
    text = spec.read_text().splitlines()[line - 1]
    value_column = text.index(value) + value.index("=") + 2
    assert all(d["column"] >= value_column for d in found), (found, value_column)


BOM_SPECS = {
    "kdl": 'version 2\nlistener "l" { bind "127.0.0.1:8080" }\n',
    "toml": 'version = 2\n[[listener]]\nname = "l"\nbind = "127.0.0.1:8080"\n',
}


def version_column(blitzc: Path, tmp_path: Path, form: str, bom: str) -> tuple[int, int]:
    spec = write_spec(tmp_path, form, bom + BOM_SPECS[form], base=False)
    (d,) = diagnostics(blitzc, spec)
    assert d["code"] == "B003", d
    return d["line"], d["column"]


@pytest.mark.parametrize("form", ["kdl", "toml"])
def test_version_error_column_without_a_bom(blitzc, tmp_path, form):
    """Control: `2` is the 9th (KDL) or 11th (TOML) character of line 1."""
    assert version_column(blitzc, tmp_path, form, "") == (1, BOM_SPECS[form].index("2") + 1)


@pytest.mark.parametrize("form", ["kdl", "toml"])
def test_a_byte_order_mark_is_not_a_column(blitzc, tmp_path, form):
    """A BOM is an encoding signature, not text: editors, GitHub annotations and rustc do not count it."""
    assert version_column(blitzc, tmp_path, form, "\ufeff") == (1, BOM_SPECS[form].index("2") + 1)


# ---------------------------------------------------------------- regexes check accepts and nothing compiles

VERBOSE_REGEX_SPEC = 'route "r" {{ match {{ path-regex "{regex}" }}; respond 200 }}\n'


@pytest.mark.parametrize("regex", ["(?x) /api", "(?x)/api # a comment ended by a newline\\n"])
def test_a_regex_check_accepts_is_one_the_matcher_compiles(blitzc, tmp_path, regex):
    """docs/spec.md: a regex is checked to compile, then applied as `^(?:REGEX)$`: what `check` passes,
    `blitzc route` (and so `dev` and the generated gateway) compiles and applies."""
    spec = write_spec(tmp_path, "kdl", VERBOSE_REGEX_SPEC.format(regex=regex))
    assert check(blitzc, spec).returncode == 0
    picked = route_of(blitzc, spec, "GET", "/api")
    assert (picked.returncode, picked.stdout.strip()) == (0, "r"), picked.stderr


def test_a_regex_that_compiles_only_unanchored_is_b036(blitzc, tmp_path):
    """In verbose mode a `#` comment runs to the end of the line and swallows the `)$` of the wrapping:
    `blitzc route`, `dev` and the generated gateway (`Regex::new(...).expect("regex validated by blitzc")`)
    could not compile what `check` passed (a bug, fixed: `check` compiles the anchored form)."""
    spec = write_spec(tmp_path, "kdl", VERBOSE_REGEX_SPEC.format(regex="(?x)/api # a comment"))
    assert ("B036", "error") in verdict(blitzc, spec)


# ---------------------------------------------------------------- match paths no request can carry

# As written in KDL: raw UTF-8, a space, a tab (a KDL escape).
UNREACHABLE_PATHS = ["/café", "/a b", "/a\\tb"]

NON_ASCII_SPEC = """version 1
listener "l" {{ bind "127.0.0.1:{port}" }}
route "encoded" {{ match {{ path "/caf%C3%A9" "/a%20b" "/a%09b" }}; respond 200 body="encoded" }}
"""


def test_a_match_path_with_raw_utf8_or_a_space_is_reached_by_no_request(blitzc, tmp_path):
    """docs/spec.md 15.2: a target with a byte outside visible ASCII is refused with 400 before routing,
    and an escape that is not of an unreserved character stays escaped, so `/café`, `/a b` and `/a<TAB>b`
    can never be a normalised request path; their percent-encoded spellings can (route "encoded")."""
    port = free_port()
    spec = tmp_path / "paths.kdl"
    spec.write_text(NON_ASCII_SPEC.format(port=port), encoding="utf-8")
    served = serve(blitzc, spec, port)
    try:
        for raw in ("/café".encode(), b"/a b", b"/a\tb"):
            assert status_of(raw_get(port, raw)) == 400, raw
        for encoded in (b"/caf%C3%A9", b"/caf%c3%a9", b"/a%20b", b"/a%09b"):
            answer = raw_get(port, encoded)
            assert status_of(answer) == 200 and answer.endswith(b"encoded"), (encoded, answer)
    finally:
        stop(served)


@pytest.mark.parametrize("path", UNREACHABLE_PATHS)
def test_check_rejects_a_match_path_no_request_can_carry(blitzc, tmp_path, path):
    """B038 is "a path ... not normalised: requests are normalised before matching, so such a path could
    never match"; the test above shows these never match."""
    spec = write_spec(tmp_path, "kdl", f'route "r" {{ match {{ path "{path}" }}; respond 200 }}\n')
    assert ("B038", "error") in verdict(blitzc, spec)


def test_the_encoded_spelling_of_those_paths_passes_check(blitzc, tmp_path):
    """Control for the test above."""
    spec = write_spec(tmp_path, "kdl", 'route "r" { match { path "/caf%C3%A9" "/a%20b" "/a%09b" }; respond 200 }\n')
    assert verdict(blitzc, spec) == []


# ---------------------------------------------------------------- a header-timeout check accepts

TIMEOUT_SPEC = """version 1
gateway "t" {{ workers 1 }}
listener "l" {{ bind "127.0.0.1:{port}" }}
limits {{ header-timeout "{timeout}" }}
route "r" {{ respond 200 body="ok" }}
"""


@pytest.mark.parametrize("timeout", [
    "1000000h",
    "10000000h",
])
def test_a_header_timeout_check_accepts_still_lets_the_gateway_answer(blitzc, tmp_path, timeout):
    """`check` passes both (a zero header-timeout is warned, B041, because the gateway could serve
    nothing; a huge one is silent), so the gateway must serve with either. 1,000,000 h (3.6e18 ns) is the
    control; 10,000,000 h (3.6e19 ns, past u64 nanoseconds) leaves every connection unanswered."""
    port = free_port()
    spec = tmp_path / "timeout.kdl"
    spec.write_text(TIMEOUT_SPEC.format(port=port, timeout=timeout))
    assert check(blitzc, spec).returncode == 0
    served = serve(blitzc, spec, port)
    try:
        assert status_of(raw_get(port, b"/")) == 200
    finally:
        stop(served)


# ---------------------------------------------------------------- one server written two ways (B083)


def servers_spec(tmp_path: Path, first: str, second: str) -> Path:
    return write_spec(tmp_path, "kdl", f'upstream "v" {{ server "{first}"; server "{second}" }}\n')


@pytest.mark.parametrize("first, second", [
    ("127.0.0.1:80", "127.0.0.1:80"),
    ("[::1]:80", "[0:0::1]:80"),
    ("a.test:80", "A.TEST:80"),
], ids=["same-text", "ipv6-spellings", "dns-name-case"])
def test_one_server_written_twice_is_b083(blitzc, tmp_path, first, second):
    """Controls for the test below: B083 already sees through case and IPv6 spelling."""
    assert verdict(blitzc, servers_spec(tmp_path, first, second)) == [("B083", "error")]


@pytest.mark.parametrize("first, second", [
    ("127.0.0.1:80", "[::ffff:127.0.0.1]:80"),
    ("a.test:80", "a.test.:80"),
], ids=["ipv4-mapped", "dns-trailing-dot"])
def test_one_server_written_two_other_ways_is_b083(blitzc, tmp_path, first, second):
    """B022 treats `[::ffff:127.0.0.1]` as `127.0.0.1` for binds (test_spec_qa's bind-ipv4-mapped); a connect
    to either reaches one endpoint, and `a.test.` is the fully qualified `a.test`."""
    assert verdict(blitzc, servers_spec(tmp_path, first, second)) == [("B083", "error")]


# ---------------------------------------------------------------- deep nesting


def nested_kdl(tmp_path: Path, depth: int) -> Path:
    """A valid spec, then an unknown node `a` holding `a` ... `depth` levels deep (on line 4)."""
    text = 'version 1\nlistener "l" { bind "127.0.0.1:8080" }\nroute "r" { respond 200 }\n'
    return write_spec(tmp_path, "kdl", text + "a {" * depth + "}" * depth + "\n", base=False)


# How deep `check` lets KDL blocks nest (blitzc/src/syntax/kdl.rs MAX_NESTING): far above any spec, far below the
# ~1,240 levels where the kdl crate's recursive parser overflows an 8 MiB stack in a release build.
KDL_NESTING_LIMIT = 128


def test_nested_kdl_is_reported_not_crashed_on(blitzc, tmp_path):
    """Control: at the limit, one B010 (the unknown top-level node), exit 1."""
    result = check(blitzc, nested_kdl(tmp_path, KDL_NESTING_LIMIT))
    assert result.returncode == 1, result.stderr
    assert [d["code"] for d in json.loads(result.stdout)["diagnostics"]] == ["B010"]


@pytest.mark.parametrize("depth", [KDL_NESTING_LIMIT + 1, 2000, 100_000])
def test_deeply_nested_kdl_is_reported_not_crashed_on(blitzc, tmp_path, depth):
    """Any input gets diagnostics and exit 1 (DESIGN.md's table), never a crash: past the limit one B001 at the
    first `{` too deep (2,000 levels used to abort `check` with a stack overflow)."""
    result = check(blitzc, nested_kdl(tmp_path, depth))
    assert result.returncode == 1, (result.returncode, result.stderr[-300:])
    found = [(d["code"], d["line"], d["column"]) for d in json.loads(result.stdout)["diagnostics"]]
    assert found == [("B001", 4, len("a {") * KDL_NESTING_LIMIT + len("a {"))], found


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, "{ a = " * 100_000 + "1" + " }" * 100_000])
def test_deeply_nested_toml_is_reported_not_crashed_on(blitzc, tmp_path, value):
    """The TOML twin: the toml crate has its own recursion limit, so deep arrays and inline tables are a B002."""
    result = check(blitzc, write_spec(tmp_path, "toml", f"x = {value}\n"))
    assert result.returncode == 1, (result.returncode, result.stderr[-300:])
    assert [d["code"] for d in json.loads(result.stdout)["diagnostics"]] == ["B002"]


# ---------------------------------------------------------------- a query parameter with an empty name

EMPTY_QUERY_NAME = 'route "e" { match { query "" }; respond 200 }\nroute "fallback" { respond 404 }\n'


def test_a_query_with_parameters_has_no_empty_named_one(blitzc, tmp_path):
    """Control for the test below: `check` accepts the name ("query parameter names are taken as written"),
    and `?a=1` carries no parameter named ""."""
    spec = write_spec(tmp_path, "kdl", EMPTY_QUERY_NAME)
    assert verdict(blitzc, spec) == []
    assert route_of(blitzc, spec, "GET", "/x?a=1").stdout.strip() == "fallback"


@pytest.mark.parametrize("target", ["/x", "/x?", "/x?a=1&&b=2"])
def test_no_parameter_named_empty_without_one_in_the_query(blitzc, tmp_path, target):
    """docs/spec.md 15.3: "Without values the parameter must appear". `blitz_ir::matcher::query_values` splits
    an empty query into one empty pair (name ""), so `blitzc route` and `blitzc dev` send these to `e`;
    the compiled gateway's `query_pairs` (runtime/src/route.rs) skips empty pairs, so it would not."""
    spec = write_spec(tmp_path, "kdl", EMPTY_QUERY_NAME)
    assert route_of(blitzc, spec, "GET", target).stdout.strip() == "fallback"


# ---------------------------------------------------------------- one mistake in a match, one diagnostic

# A route "a" with one malformed condition, then a route "b" that "a" would not cover once the mistake is
# fixed (the condition narrows "a"): (form, spec body, the one code `check` must report).
B_FOR_B = 'route "b" { match { path "/b" }; respond 200 }\n'


def kdl_a_then_b(a_match: str) -> str:
    return f'route "a" {{ match {{ {a_match} }}; respond 200 }}\n' + B_FOR_B


def toml_a_then_b(a_match: str) -> str:
    return (f'\n[[route]]\nname = "a"\nmatch = {a_match}\nrespond = 200\n'
            '\n[[route]]\nname = "b"\nmatch = { path = "/b" }\nrespond = 200\n')


BROKEN_CONDITION = {
    "kdl-bad-path": ("kdl", kdl_a_then_b('path "nope"'), "B038"),
    "kdl-bad-host": ("kdl", kdl_a_then_b('host "bad:80"'), "B039"),
    "kdl-bad-regex": ("kdl", kdl_a_then_b('path-regex "("'), "B036"),
    "kdl-bad-header-name": ("kdl", kdl_a_then_b('header "bad name"'), "B035"),
    "kdl-bad-header-name-beside-a-path": ("kdl", kdl_a_then_b('header "x y" "1"; path "/b"'), "B035"),
    "kdl-header-without-name": ("kdl", kdl_a_then_b("header"), "B011"),
    "kdl-query-without-name": ("kdl", kdl_a_then_b('query; path "/b"'), "B011"),
    "kdl-host-of-wrong-type": ("kdl", kdl_a_then_b('host 5; path "/b"'), "B011"),
    "kdl-path-without-value": ("kdl", kdl_a_then_b("path"), "B011"),
    "toml-bad-header-name": ("toml", toml_a_then_b('{ header = { "bad name" = true } }'), "B035"),
    "toml-empty-host-array": ("toml", toml_a_then_b('{ host = [], path = "/b" }'), "B011"),
    "toml-host-of-wrong-type": ("toml", toml_a_then_b('{ host = 5, path = "/b" }'), "B011"),
    "toml-match-of-wrong-type": ("toml", toml_a_then_b("5"), "B011"),
    "kdl-match-with-an-argument": ("kdl", 'route "a" { match 5 { path "/b" }; respond 200 }\n' + B_FOR_B, "B011"),
}


@pytest.mark.parametrize("case", BROKEN_CONDITION)
def test_a_malformed_condition_gives_one_diagnostic_and_no_b050(blitzc, tmp_path, case):
    """docs/spec.md: "one mistake, one diagnostic" (and `validate::error_within` keeps B051 quiet for a
    `match` whose only condition was malformed). Route "a" is meant to be narrower than it lowers to; B050
    on "b" (whose help even says "a" has no `match`) sends the user after a problem the spec does not have.
    A bad path, host or regex value leaves an empty condition; a condition of the wrong type, without a
    value, or with a bad header name used to be dropped instead, and a TOML `match` that is no table too."""
    form, body, code = BROKEN_CONDITION[case]
    assert verdict(blitzc, write_spec(tmp_path, form, body)) == [(code, "error")]
