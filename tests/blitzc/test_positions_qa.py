"""Known compiler gaps fixed after the QA passes, with the real `blitzc`
(and real `blitzc build`s where the runtime is part of it).

Diagnostic positions agree with the parser and across the four formats
of `blitzc check`:

- A KDL spec's lines are counted at every KDL v2 newline (CRLF, CR, LF,
  NEL, VT, FF, LS, PS: what the `kdl` crate's v2 parser breaks lines at),
  so a CR-only file no longer puts every diagnostic on line 1; a TOML
  spec's at LF and CRLF only (TOML's newlines).
- Columns count characters in every format: the human (miette) header
  `[file:line:column]` no longer counts bytes where json, github and sarif
  count characters.

IPv6 `host` matchers compare addresses (RFC 5952 canonical text): a route
for `[::1]` serves `Host: [0:0::1]`, alike in `blitzc route`, the compiled
gateway and `blitzc dev`, and two spellings of one address shadow (B050).

A listener certificate outside its validity period (expired, or not valid
yet) is the warning B067, at the `cert` path, from certificates openssl
makes in the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from support.blitzc import Served, build, named_origin
from support.gateway import free_port

KDL_NEWLINES = {
    "lf": "\n",
    "crlf": "\r\n",
    "cr": "\r",
    "nel": "\u0085",
    "vt": "\u000b",
    "ff": "\u000c",
    "ls": "\u2028",
    "ps": "\u2029",
}

# Line 5 refers to an upstream nobody defines (B021); `é` and `ü` come before
# it on its line, so its column in characters (41) is not the one in bytes (43).
KDL_LINES = [
    "version 1",
    'listener "é" {',
    '    bind "127.0.0.1:8080"',
    "}",
    'route "ré-ü" { match { path "/x"; }; proxy "nope"; }',
    "",
]
LINE, COLUMN = 5, KDL_LINES[4].index('"nope"') + 1

HUMAN_HEADER = re.compile(r"╭─\[([^\]]+):(\d+):(\d+)\]")


def check(blitzc: Path, spec: Path, fmt: str) -> str:
    r = subprocess.run(
        [str(blitzc), "check", "--format", fmt, spec.name],
        cwd=spec.parent,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )
    assert r.returncode == 1, (fmt, r.returncode, r.stdout, r.stderr)
    return r.stdout


def positions(blitzc: Path, spec: Path) -> dict[str, tuple[int, int]]:
    """(line, column) of the one diagnostic, as each format reports it."""
    (d,) = json.loads(check(blitzc, spec, "json"))["diagnostics"]
    assert d["code"] == "B021", d
    out = {"json": (d["line"], d["column"])}
    m = re.search(r"line=(\d+),col=(\d+),title=B021", check(blitzc, spec, "github"))
    assert m, "no B021 annotation"
    out["github"] = (int(m.group(1)), int(m.group(2)))
    (res,) = json.loads(check(blitzc, spec, "sarif"))["runs"][0]["results"]
    region = res["locations"][0]["physicalLocation"]["region"]
    out["sarif"] = (region["startLine"], region["startColumn"])
    headers = HUMAN_HEADER.findall(check(blitzc, spec, "human"))
    assert len(headers) == 1, headers
    name, line, column = headers[0]
    assert name == spec.name
    out["human"] = (int(line), int(column))
    return out


@pytest.mark.parametrize("newline", list(KDL_NEWLINES), ids=list(KDL_NEWLINES))
def test_kdl_newlines_count_as_lines_in_every_format(blitzc, tmp_path, newline):
    spec = tmp_path / "spec.kdl"
    spec.write_bytes(KDL_NEWLINES[newline].join(KDL_LINES).encode("utf-8"))
    got = positions(blitzc, spec)
    assert got == dict.fromkeys(got, (LINE, COLUMN)), got


@pytest.mark.parametrize("newline", ["cr", "nel", "ls"])
def test_human_snippet_shows_the_lines_a_kdl_newline_separates(blitzc, tmp_path, newline):
    spec = tmp_path / "spec.kdl"
    spec.write_bytes(KDL_NEWLINES[newline].join(KDL_LINES).encode("utf-8"))
    out = check(blitzc, spec, "human")
    numbered = dict(re.findall(r"^ *(\d+) │ (.*)$", out, re.M))
    assert numbered.get(str(LINE), "").rstrip() == KDL_LINES[LINE - 1], out
    assert numbered.get(str(LINE - 1), "").rstrip() == KDL_LINES[LINE - 2], out
    assert "\r" not in out, repr(out)


def test_human_column_counts_characters_like_json(blitzc, tmp_path):
    spec = tmp_path / "wide.kdl"
    # Two- and three-byte characters before the span: bytes would say 47.
    line = 'route "日本-é" { match { path "/x"; }; proxy "nope"; }'
    spec.write_text('version 1\nlistener "a" { bind "127.0.0.1:8080"; }\n' + line + "\n", encoding="utf-8")
    column = line.index('"nope"') + 1
    assert len(line[: column - 1].encode()) + 1 != column
    got = positions(blitzc, spec)
    assert got == dict.fromkeys(got, (3, column)), got


def test_toml_lines_are_lf_and_crlf_only(blitzc, tmp_path):
    """TOML's newlines are LF and CRLF: a NEL or LS in a comment is no line break."""
    spec = tmp_path / "spec.toml"
    lines = [
        "version = 1",
        "# a comment with a NEL \u0085 and an LS \u2028 in it",
        "[[listener]]",
        'name = "a"',
        'bind = "127.0.0.1:8080"',
        "[[route]]",
        'name = "r"',
        'match = { path = "/x" }',
        'proxy = "nope"',
        "",
    ]
    spec.write_bytes("\r\n".join(lines).encode("utf-8"))
    got = positions(blitzc, spec)
    assert got == dict.fromkeys(got, (9, len('proxy = "'))), got


# ---------------------------------------------------------------- IPv6 hosts

IPV6_SPEC = """version 1
gateway "ipv6-hosts" {{ workers 1 }}
listener "http" {{ bind "127.0.0.1:{port}" }}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
route "loopback" {{
    match {{ host "[::1]" }}
    respond 200 body="loopback\\n"
}}
route "doc" {{
    match {{ host "2001:DB8:0:0:1::1" }}
    respond 200 body="doc\\n"
}}
route "rest" {{ proxy "origin" }}
"""

# Host header -> route: IPv6 literals compare as addresses (RFC 5952
# canonical text, hex in any case), with or without a port.
IPV6_HOSTS = {
    "[::1]": "loopback",
    "[0:0::1]": "loopback",
    "[0000:0000:0000:0000:0000:0000:0000:0001]:8080": "loopback",
    "[2001:db8::1:0:0:1]": "doc",
    "[2001:DB8:0000:0:1:0:0:1]:443": "doc",
    "[::2]": "rest",
    "[2001:db8::1]": "rest",
}


def _blitzc_route(blitzc: Path, spec: Path, host: str) -> str:
    r = subprocess.run(
        [str(blitzc), "route", str(spec), "GET", "/x", "-H", f"host: {host}"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, (host, r.stdout, r.stderr)
    return r.stdout.strip()


@pytest.mark.timeout(1800)
def test_ipv6_hosts_match_as_addresses_compiled_interpreted_and_route(blitzc, cache_dir, tmp_path):
    origin = named_origin("origin")
    port = free_port()
    spec = tmp_path / "ipv6.kdl"
    spec.write_text(IPV6_SPEC.format(port=port, origin=origin.port))
    try:
        # `blitzc route` (the reference matcher) says which route serves each host.
        routed = {h: _blitzc_route(blitzc, spec, h) for h in IPV6_HOSTS}
        assert routed == IPV6_HOSTS
        out = tmp_path / "gateway-bin"
        result = build(blitzc, spec, out, cache_dir)
        assert result.returncode == 0, result.stderr
        env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
        for label, argv in (("compiled", [str(out)]), ("interpreted", [str(blitzc), "dev", str(spec)])):
            gw = Served(argv, port, env)
            try:
                got = {}
                for host in IPV6_HOSTS:
                    status, _, body = gw.get("/x", headers={"Host": host})
                    assert status == 200, (label, host, status, body)
                    got[host] = "rest" if body.startswith(b"origin ") else body.decode().strip()
            finally:
                assert gw.stop() == 0, f"{label}: graceful exit"
            assert got == IPV6_HOSTS, label
    finally:
        origin.stop()


def test_ipv6_host_patterns_are_one_address_however_written(blitzc, tmp_path):
    """`[::1]` and `0:0::1` are the same host: the second route is shadowed (B050)."""
    spec = tmp_path / "shadow.kdl"
    spec.write_text(
        'version 1\nlistener "a" { bind "127.0.0.1:8080"; }\n'
        'route "one" { match { host "[::1]"; }; respond 200; }\n'
        'route "two" { match { host "0:0::1"; }; respond 200; }\n'
    )
    diags = json.loads(check(blitzc, spec, "json"))["diagnostics"]
    assert [(d["code"], d["line"]) for d in diags] == [("B050", 4)], diags


# ---------------------------------------------------------------- certificate validity

CERT_SPEC_KDL = """version 1
listener "tls" {
    bind "127.0.0.1:8443"
    tls {
        cert "certs/good.crt" key="certs/good.key"
        cert "certs/old.crt" key="certs/old.key" sni="old.test"
        cert "certs/future.crt" key="certs/future.key" sni="future.test"
    }
}
route "r" { respond 200; }
"""

CERT_SPEC_TOML = """version = 1
[[listener]]
name = "tls"
bind = "127.0.0.1:8443"
[listener.tls]
certs = [
  { cert = "certs/good.crt", key = "certs/good.key" },
  { cert = "certs/old.crt", key = "certs/old.key", sni = "old.test" },
  { cert = "certs/future.crt", key = "certs/future.key", sni = "future.test" },
]
[[route]]
name = "r"
respond = { status = 200 }
"""


@pytest.fixture(scope="module")
def dated_certs(tmp_path_factory) -> Path:
    from support.pki import Pki

    folder = tmp_path_factory.mktemp("cert-validity")
    certs = folder / "certs"
    certs.mkdir()
    pki = Pki(certs)
    pki.leaf("good", "good.test")  # valid for 30 days from now
    pki.expired("old", "old.test")  # January 2020
    pki.dated("future", "future.test", "20990101000000Z", "21000101000000Z")
    return folder


def _position(text: str, needle: str) -> tuple[int, int]:
    before = text[: text.index(needle)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


@pytest.mark.parametrize("form", ["kdl", "toml"])
def test_listener_certificate_outside_its_validity_warns_b067(blitzc, dated_certs, form):
    text = CERT_SPEC_KDL if form == "kdl" else CERT_SPEC_TOML
    spec = dated_certs / f"spec.{form}"
    spec.write_text(text)
    r = subprocess.run([str(blitzc), "check", "--format", "json", spec.name], cwd=dated_certs,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)  # a warning: check passes
    diags = json.loads(r.stdout)["diagnostics"]
    got = [(d["code"], d["severity"], d["line"], d["column"], d["message"]) for d in diags]
    assert got == [
        ("B067", "warning", *_position(text, '"certs/old.crt"'),
         "certificate `certs/old.crt` expired on 2020-02-01 00:00:00 UTC"),
        ("B067", "warning", *_position(text, '"certs/future.crt"'),
         "certificate `certs/future.crt` is not valid before 2099-01-01 00:00:00 UTC"),
    ], got
    for d in diags:
        assert d["file"] == spec.name and d["slug"] == "cert-validity"
        assert d["label"].startswith("clients reject") and d["help"], d
    # --deny-warnings makes it fail, and every format carries it.
    deny = subprocess.run([str(blitzc), "check", "--deny-warnings", spec.name], cwd=dated_certs,
                          capture_output=True, text=True, timeout=60)
    assert deny.returncode == 1 and deny.stdout.count("B067(cert-validity)") == 2, deny.stdout
    github = subprocess.run([str(blitzc), "check", "--format", "github", spec.name], cwd=dated_certs,
                            capture_output=True, text=True, timeout=60).stdout
    assert github.count("::warning file=") == 2 and github.count("title=B067::") == 2, github


def test_a_valid_certificate_gets_no_b067(blitzc, dated_certs):
    spec = dated_certs / "good.kdl"
    spec.write_text(
        'version 1\nlistener "tls" {\n    bind "127.0.0.1:8443"\n'
        '    tls { cert "certs/good.crt" key="certs/good.key"; }\n}\nroute "r" { respond 200; }\n'
    )
    r = subprocess.run([str(blitzc), "check", "--deny-warnings", "--format", "json", spec.name],
                       cwd=dated_certs, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["diagnostics"] == [], r.stdout
