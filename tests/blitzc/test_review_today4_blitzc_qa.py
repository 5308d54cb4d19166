"""A review of the blitzc side of aaaae66..main for gaps in the fixes
themselves, with the real `blitzc` (check, route) and one gateway it builds:

- B057 (`validate/routes.rs::never_matches_a_path`): false positives are
  worse than misses, so every regex here that `blitzc route` (the reference
  matcher the generated code is tested against) matches for some path must
  pass `check` without B057: case-insensitive flags, `\\x2F`, `\\x{2F}`,
  `(?x)` comments, `\\A`/`\\z`/`^`/`$` written inside, empty alternations,
  a class holding `/`, `{0}` repetitions and an alternation too large for
  regex-syntax's prefix extraction. The regexes it must report still are.
- B038 (`ir/values.rs::normal_spelling`): the spelling its help suggests for
  a malformed escape passes `check` itself (KDL and TOML, `path`,
  `path-prefix`, `strip-prefix`) and routes the request a client sends for
  what was written.
- B038 on health-check paths (`validate/upstreams.rs::health_check`): the
  fix covers raw non-ASCII and fragments, the targets the gateway itself
  answers 400; a malformed escape is such a target too.
- B058 (`redirect` location) in KDL and TOML.
- The generated gateway's command line (`runtime/src/app.rs`): a value given
  to a flag that takes none, `--version`/`--help` on a closed stdout and a
  usage error on a closed stderr (no panic, the documented exit codes).
- Local 205 answers (`http/write.rs::local_body`, `http2/stream.rs`) over
  HTTP/1.1 (keep-alive reuse, HEAD, HTTP/1.0) and h2c, with and without a
  written body. test_docs_spec_audit_qa covers one HTTP/1.1 GET.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from support.blitzc import Served, blitz_env, build_with_ports
from support.closed_pipe import exit_code_with_closed_pipe
from support.h2client import H2Client

RUN_BOUND = 60  # how long one blitzc command may take here
IO_BOUND = 10  # how long one socket read may block


# ------------------------------------------------------------ helpers
def run(blitzc: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(blitzc), *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=RUN_BOUND)


def diagnostics(blitzc: Path, folder: Path, name: str, text: str) -> list[dict]:
    """Writes `text` as `folder/name` and returns `blitzc check`'s diagnostics."""
    (folder / name).write_text(text, encoding="utf-8")
    r = run(blitzc, "check", "--format", "json", name, cwd=folder)
    assert "panicked" not in r.stderr, r.stderr
    return json.loads(r.stdout)["diagnostics"]


def route_of(blitzc: Path, folder: Path, name: str, method: str, path: str) -> str | None:
    """The route `blitzc route` picks for the request, None for a 404."""
    r = run(blitzc, "route", name, method, path, cwd=folder)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.stdout.strip() if r.returncode == 0 else None


def kdl_string(text: str) -> str:
    """`text` as a quoted KDL string (KDL has JSON's escapes but `\\u{...}`, so non-ASCII stays raw)."""
    return json.dumps(text, ensure_ascii=False)


def one_regex_spec(regex: str) -> str:
    return f"""version 1
listener "public" {{
    bind "127.0.0.1:8080"
}}
route "regex" {{
    match {{ path-regex {kdl_string(regex)} }}
    respond 200 body="regex"
}}
"""


# ------------------------------------------------------------ B057
# (regex, a path it matches): `blitzc route` must agree it matches, and then
# check must not call it a regex that matches no path.
MATCHING_REGEXES = [
    ("(?i)/API", "/api"),
    ("(?i:/M)x", "/mx"),
    (r"\x2Fb", "/b"),
    (r"\x{2F}h", "/h"),
    (r"\/n", "/n"),
    ("(?x) / c  # the c route\n", "/c"),
    (r"\A/d\z", "/d"),
    ("(?m)^/i$", "/i"),
    ("(|/e)", "/e"),
    ("/f|", "/f"),
    ("(?:x|)/j", "/j"),
    ("[/]g", "/g"),
    ("(?i)[/]T", "/t"),
    ("x{0}/q", "/q"),
    ("(?:/r)+", "/r/r"),
    ("(?-u:/)l", "/l"),
    ("[[:punct:]]s", "/s"),
    ("/%2Fu", "/%2fu"),
    ("/caf%C3%A9", "/caf%c3%a9"),
    ("|".join(f"x{i}" for i in range(300)) + "|/big", "/big"),
    ("|".join(f"/a{i}x" for i in range(300)), "/a299x"),
]


@pytest.mark.parametrize("regex, path", MATCHING_REGEXES, ids=[f"r{i}" for i in range(len(MATCHING_REGEXES))])
def test_b057_never_warns_on_a_regex_that_matches_some_path(blitzc, tmp_path, regex, path):
    found = diagnostics(blitzc, tmp_path, "s.kdl", one_regex_spec(regex))
    assert route_of(blitzc, tmp_path, "s.kdl", "GET", path) == "regex", (regex, path, found)
    assert [d["code"] for d in found if d["code"] == "B057"] == [], (regex, found)
    assert not [d for d in found if d["severity"] == "error"], found


# Regexes no normalised path matches (the sample paths are the ones a user
# meant): B057 is still reported, and `blitzc route` agrees.
NEVER_MATCHING = [
    ("api/.*", "/api/x"),
    (r"/search\?q=.*", "/search?q=1"),
    ("", "/"),
    ("//admin.*", "//admin"),
    (r"\x2F\x2Fv", "//v"),
    ("(?i)API/v1", "/api/v1"),
    ("/x#y", "/x"),
    ("/a b", "/a%20b"),
]


@pytest.mark.parametrize("regex, path", NEVER_MATCHING, ids=[f"n{i}" for i in range(len(NEVER_MATCHING))])
def test_b057_still_reports_a_regex_no_path_matches(blitzc, tmp_path, regex, path):
    found = diagnostics(blitzc, tmp_path, "s.kdl", one_regex_spec(regex))
    assert [d["code"] for d in found] == ["B057"], (regex, found)
    assert route_of(blitzc, tmp_path, "s.kdl", "GET", path) is None, (regex, path)


# ------------------------------------------------------------ B038 spellings
def path_spec_kdl(test: str, value: str) -> str:
    return f"""version 1
listener "public" {{
    bind "127.0.0.1:8080"
}}
route "written" {{
    match {{ {test} {kdl_string(value)} }}
    respond 200 body="written"
}}
"""


def path_spec_toml(test: str, value: str) -> str:
    return f"""version = 1
[[listener]]
name = "public"
bind = "127.0.0.1:8080"
[[route]]
name = "written"
match = {{ {test} = {json.dumps(value, ensure_ascii=False)} }}
respond = {{ status = 200, body = "written" }}
"""


def suggested_spelling(diagnostic: dict) -> str:
    """The spelling a B038 help gives (`... write `X``)."""
    help_text = diagnostic.get("help") or ""
    assert "write `" in help_text, diagnostic
    return help_text.split("write `", 1)[1].split("`", 1)[0]


# (written, the target a client sends for what was meant)
MALFORMED = [
    ("/files/100%", "/files/100%25"),
    ("/a%zz/./b", "/a%25zz/b"),
    ("/x%4", "/x%254"),
    ("/a%2f%", "/a%2F%25"),
    ("/%7e%", "/~%25"),
]


@pytest.mark.parametrize("front", ["kdl", "toml"])
@pytest.mark.parametrize("test", ["path", "path-prefix"])
@pytest.mark.parametrize("written, sent", MALFORMED, ids=[w for w, _ in MALFORMED])
def test_b038_suggested_spelling_passes_check_and_routes_what_was_meant(blitzc, tmp_path, front, test, written,
                                                                         sent):
    make, name = (path_spec_kdl, "s.kdl") if front == "kdl" else (path_spec_toml, "s.toml")
    found = diagnostics(blitzc, tmp_path, name, make(test, written))
    assert [d["code"] for d in found] == ["B038"], found
    fixed = suggested_spelling(found[0])
    assert diagnostics(blitzc, tmp_path, name, make(test, fixed)) == [], fixed
    assert route_of(blitzc, tmp_path, name, "GET", sent) == "written", (written, fixed, sent)


def strip_prefix_spec(prefix: str) -> str:
    return f"""version 1
listener "public" {{
    bind "127.0.0.1:8080"
}}
upstream "app" {{
    server "127.0.0.1:9001"
}}
route "stripped" {{
    match {{ path-prefix "/api%25" }}
    proxy "app" strip-prefix={kdl_string(prefix)}
}}
"""


def test_b038_strip_prefix_suggestion_passes_check(blitzc, tmp_path):
    found = diagnostics(blitzc, tmp_path, "s.kdl", strip_prefix_spec("/api%"))
    assert [d["code"] for d in found] == ["B038"], found
    fixed = suggested_spelling(found[0])
    assert fixed == "/api%25", found
    assert diagnostics(blitzc, tmp_path, "s.kdl", strip_prefix_spec(fixed)) == []


def health_check_spec(path: str) -> str:
    return f"""version 1
listener "public" {{
    bind "127.0.0.1:8080"
}}
upstream "app" {{
    server "127.0.0.1:9001"
    health-check path={kdl_string(path)}
}}
route "all" {{
    proxy "app"
}}
"""


@pytest.mark.parametrize("path, code", [("/health#x", ["B038"]), ("/h\u00e9alth", ["B038"]), ("/health%25zz", []),
                                        ("/health%41", [])])
def test_health_check_path_controls(blitzc, tmp_path, path, code):
    """The fix's own cases (fragment, raw non-ASCII) and well-formed escapes."""
    found = diagnostics(blitzc, tmp_path, "s.kdl", health_check_spec(path))
    assert [d["code"] for d in found] == code, found


@pytest.mark.parametrize("path", ["/health%zz", "/health%", "/h%2"])
def test_health_check_path_with_a_malformed_escape_is_b038(blitzc, tmp_path, path):
    """The fix made B038 of the health-check paths the gateway itself answers
    400 (the checker sends the path as written). The runtime's parser answers
    400 to a malformed escape too ("malformed percent escape in path",
    runtime/src/http/parse.rs; test_review_today4_qa pins it), and RFC 3986
    §2.1 has no `%` without two hex digits, so the checker's every probe is
    a request origins refuse: the upstream would never turn healthy. The
    route matchers already report it (`has a % that starts no escape`)."""
    found = diagnostics(blitzc, tmp_path, "s.kdl", health_check_spec(path))
    assert [d["code"] for d in found] == ["B038"], found


def spec_for(where: str, value: str) -> str:
    """A spec with `value` as a route's `path` or an upstream's health-check path."""
    return health_check_spec(value) if where == "health-check" else path_spec_kdl(where, value)


# (where, written): a single problem each; the suggestion is the fix.
SINGLE_PROBLEMS = [("path", "/a b"), ("path", "/a%zz"), ("path", "/a/../b"), ("health-check", "/h\u00e9alth"),
                   ("health-check", "/health#x")]
# Two problems each: the suggestion for the first must mend the second too.
TWO_PROBLEMS = [("path", "/a b%zz"), ("path", "/a b/../c"), ("path-prefix", "/\u00e9/./x"),
                ("health-check", "/h\u00e9alth#x"), ("health-check", "/h ealth#x")]


def suggestion_then_recheck(blitzc: Path, folder: Path, where: str, written: str) -> tuple[str, list[dict]]:
    found = diagnostics(blitzc, folder, "s.kdl", spec_for(where, written))
    assert found and found[0]["code"] == "B038", found
    fixed = suggested_spelling(found[0])
    return fixed, diagnostics(blitzc, folder, "s.kdl", spec_for(where, fixed))


@pytest.mark.parametrize("where, written", SINGLE_PROBLEMS)
def test_b038_suggestion_for_one_problem_passes_check(blitzc, tmp_path, where, written):
    fixed, again = suggestion_then_recheck(blitzc, tmp_path, where, written)
    assert again == [], (written, fixed, again)


@pytest.mark.parametrize("where, written", TWO_PROBLEMS)
def test_b038_suggestion_for_two_problems_passes_check(blitzc, tmp_path, where, written):
    """The raw-byte branch (ir/values.rs and validate/routes.rs: `encoded_if_raw`
    first; validate/upstreams.rs::health_check likewise before the fragment)
    suggests the written path with only its raw bytes encoded: `/a b%zz` gets
    `write /a%20b%zz`, which check refuses next for its `%`; a health-check
    `/h\u00e9alth#x` gets `/h%C3%A9alth#x`, refused next for its fragment.
    The suggestion should go through `normal_spelling` (and the fragment
    rule) after encoding, so that following it ends the matter."""
    fixed, again = suggestion_then_recheck(blitzc, tmp_path, where, written)
    assert again == [], (written, fixed, again)


# ------------------------------------------------------------ B058
@pytest.mark.parametrize("front", ["kdl", "toml"])
@pytest.mark.parametrize("location, warned", [("", True), ("/a b", True), ("/a\tb", True), ("/caf\u00e9", True),
                                              ("/a%20b", False), ("https://e.test/x?y=1#z", False),
                                              ("../up", False)])
def test_b058_redirect_location(blitzc, tmp_path, front, location, warned):
    if front == "kdl":
        text = f"""version 1
listener "public" {{
    bind "127.0.0.1:8080"
}}
route "moved" {{
    redirect {kdl_string(location)} status=308
}}
"""
    else:
        text = f"""version = 1
[[listener]]
name = "public"
bind = "127.0.0.1:8080"
[[route]]
name = "moved"
redirect = {{ location = {json.dumps(location, ensure_ascii=False)}, status = 308 }}
"""
    found = diagnostics(blitzc, tmp_path, "s." + front, text)
    assert [d["code"] for d in found] == (["B058"] if warned else []), found


# ------------------------------------------------------------ a built gateway
GATEWAY_SPEC = """version 1
gateway "rev4" {{
    workers 1
}}
listener "clear" {{
    bind "127.0.0.1:{clear}"
    protocols "h1" "h2c"
}}
route "reset-with-body" {{
    match {{ path "/reset-body" }}
    respond 205 body="never sent"
}}
route "reset" {{
    match {{ path "/reset" }}
    respond 205
}}
route "after" {{
    respond 200 body="after"
}}
"""


@pytest.fixture(scope="module")
def built(blitzc, cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rev4")
    binary, ports = build_with_ports(blitzc, cache_dir, folder, "rev4", GATEWAY_SPEC, ["clear"])
    return binary, ports


@pytest.fixture(scope="module")
def served(built, cache_dir):
    binary, ports = built
    gateway = Served([str(binary)], ports["clear"], blitz_env(cache_dir))
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("args", [["--version=1"], ["--help=yes"], ["--upgrade=1"], ["--detach=yes"]])
def test_a_long_flag_given_a_value_it_does_not_take_is_a_usage_error(built, args):
    binary, _ = built
    r = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=RUN_BOUND, check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "takes no value" in r.stderr and r.stdout == "", r


@pytest.mark.parametrize("args", [["-V=1"], ["-h=yes"]])
def test_a_short_flag_given_a_value_it_does_not_take_is_a_usage_error(built, args):
    """fd65182 made a value given to --version/--help a usage error (exit 2),
    but app.rs checks the value against the long spellings only: `-V=1`
    splits into the flag `-V` with a value, is not in the list, and prints
    the version (exit 0). The same flag in two spellings should not read a
    value differently."""
    binary, _ = built
    r = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=RUN_BOUND, check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["--help"], ["-h"]])
def test_version_and_help_on_a_closed_stdout_exit_1_without_a_panic(built, args):
    binary, _ = built
    assert subprocess.run([str(binary), *args], check=False, capture_output=True, timeout=RUN_BOUND).returncode == 0
    assert exit_code_with_closed_pipe([str(binary), *args], "stdout", RUN_BOUND) == 1


@pytest.mark.parametrize("args", [["--bogus"], ["--workers"], ["--detach"], ["--grace", "soon"]])
def test_a_usage_error_on_a_closed_stderr_is_still_exit_2(built, args):
    binary, _ = built
    assert exit_code_with_closed_pipe([str(binary), *args], "stderr", RUN_BOUND) == 2


def read_h1_response(sock: socket.socket, head_only: bool) -> tuple[bytes, bytes]:
    """One HTTP/1.x response read by its framing (content-length, or none
    for HEAD): its head and its body. Bytes past it stay unread."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed inside the head: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:]]
    lengths = [int(v.strip()) for k, v in fields if k.strip().lower() == b"content-length"]
    length = 0 if head_only else (lengths[0] if lengths else 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside the body"
        rest += chunk
    assert len(rest) == length, f"bytes past the framed body: {rest!r}"
    return head, rest


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("target", ["/reset-body", "/reset"])
def test_local_205_over_http11_is_framed_empty_and_the_connection_reused(served, method, target):
    """RFC 9110 §15.3.6: no content, and the 205 is framed (content-length:
    0), so the next answer on the connection is read as the next answer."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=IO_BOUND) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nhost: a.test\r\n\r\n".encode())
        head, body = read_h1_response(sock, head_only=method == "HEAD")
        assert head.startswith(b"HTTP/1.1 205"), head
        assert b"content-length: 0" in head.lower() and body == b"", (head, body)
        sock.sendall(b"GET /next HTTP/1.1\r\nhost: a.test\r\n\r\n")
        head, body = read_h1_response(sock, head_only=False)
        assert head.startswith(b"HTTP/1.1 200") and body == b"after", (head, body)


def test_local_205_to_an_http10_client_has_no_body(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=IO_BOUND) as sock:
        sock.sendall(b"GET /reset-body HTTP/1.0\r\nhost: a.test\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 205", b"HTTP/1.0 205")), head
    assert body == b"", data


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("target", ["/reset-body", "/reset"])
def test_local_205_over_h2c_has_no_data_and_the_connection_goes_on(served, method, target):
    client = H2Client(f"127.0.0.1:{served.port}", timeout=IO_BOUND)
    try:
        answer = client.request(target, method=method, timeout=IO_BOUND)
        assert answer.status == 205 and answer.body == b"", answer
        assert dict(answer.headers).get("content-length") == "0", answer.headers
        following = client.request("/next", timeout=IO_BOUND)
        assert following.status == 200 and following.body == b"after", following
    finally:
        client.close()
