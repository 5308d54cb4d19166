"""A black-box QA pass of DESIGN.md's two contracts, "The compiler" and "The
generated binary", with the real `blitzc` and real `blitzc build`s.

The compiler: every command of the table with its exit codes, usage and IO
errors, the four `--format`s (github lines, json and sarif carrying the same
fields), `--deny-warnings`, what goes to stdout and stderr.

The generated binary: `--version`, its command-line errors, SIGTERM/SIGINT
drains on every kind of listener (HTTP/1.1, h2c, TLS with HTTP/1.1 and h2),
`--grace`, SIGHUP re-reading certificates, systemd socket activation of two
sockets passed in another order than the spec's (by a Python launcher that
binds and execs), the spec's relative `admin { socket }`, and upgrades under
continuous load on all three listeners at once (RELIABILITY.md, "Upgrades
and faults": nothing refused, failed or truncated; no fd or process leak).

One spec is built twice (A and B differ in one response body, hence in their
spec hash); tests/blitzc/test_contract.py and test_examples.py cover the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperframe.frame import SettingsFrame, WindowUpdateFrame

from support.client import Closed, RawConn
from support.gateway import REPO, WatchedProcess, free_port, settled_fd_count
from support.h2client import RawH2
from support.origin import Origin, pattern_sha256

FIXTURES = REPO / "tests" / "fixtures"

SPEC = """version 1
gateway "qa-contract" {{ workers 2 }}
listener "plain" {{ bind "127.0.0.1:{plain}" }}
listener "mixed" {{
    bind "127.0.0.1:{mixed}"
    protocols "h1" "h2c"
}}
listener "tls" {{
    bind "127.0.0.1:{tls}"
    protocols "h1" "h2"
    tls {{ cert "cert.pem" key="key.pem" }}
}}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
admin {{ socket "run/control.sock" }}
route "health" {{
    match {{ path "/healthz" }}
    respond 200 body="ok {label}\\n" content-type="text/plain"
}}
route "origin" {{ proxy "origin" }}
"""

CLEAN = """version 1
gateway "qa-cli" { workers 1 }
listener "http" { bind "127.0.0.1:18080" }
route "health" {
    match { path "/healthz" }
    respond 200 body="ok\\n"
}
"""

# Two warnings: B051 (a match without conditions), B055 (a 204 with a body).
WARNINGS = """version 1
gateway "qa-cli" { workers 1 }
listener "http" { bind "127.0.0.1:18080" }
route "health" {
    match { }
    respond 204 body="x"
}
"""

# Four errors, one per line 2, 3, 5 and 6.
ERRORS = """version 1
gateway "qa-cli" { workers 0 }
listener "http" { bind "127.0.0.1:99999" }
route "health" {
    match { path "nope" }
    proxy "missing"
}
"""


def run(*argv, env=None, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def specs(tmp_path) -> dict[str, Path]:
    out = {}
    for name, text in (("clean", CLEAN), ("warnings", WARNINGS), ("errors", ERRORS)):
        out[name] = tmp_path / f"{name}.kdl"
        out[name].write_text(text)
    return out


# ---------------------------------------------------------------- blitzc check


def test_check_exit_codes_and_where_the_report_goes(blitzc, specs):
    """0 clean, 0 with warnings, 1 with errors, 1 with warnings under
    --deny-warnings; the report on stdout (pipe it), nothing on stderr."""
    for name, code in (("clean", 0), ("warnings", 0), ("errors", 1)):
        r = run(blitzc, "check", specs[name])
        assert r.returncode == code, (name, r.stdout, r.stderr)
        assert r.stderr == "", (name, r.stderr)
    assert run(blitzc, "check", specs["clean"]).stdout == "ok: 0 errors, 0 warnings in 1 file\n"
    human = run(blitzc, "check", specs["errors"]).stdout
    # miette's report: code(slug), the message, the source line it points at.
    assert "B041(out-of-range)" in human and 'gateway "qa-cli" { workers 0 }' in human, human
    assert human.endswith("failed: 4 errors, 0 warnings in 1 file\n"), human
    denied = run(blitzc, "check", "--deny-warnings", specs["warnings"])
    assert denied.returncode == 1 and "B051" in denied.stdout and "B055" in denied.stdout, denied
    assert run(blitzc, "check", "--deny-warnings", specs["clean"]).returncode == 0
    gh = run(blitzc, "check", "--format", "github", "--deny-warnings", specs["warnings"])
    assert gh.returncode == 1 and gh.stdout.count("::warning ") == 2, gh


def test_check_of_several_specs_reports_them_all(blitzc, specs):
    r = run(blitzc, "check", "--format", "json", specs["clean"], specs["warnings"], specs["errors"])
    assert r.returncode == 1, r
    doc = json.loads(r.stdout)
    files = {Path(d["file"]).name for d in doc["diagnostics"]}
    assert files == {"warnings.kdl", "errors.kdl"}, files
    assert doc["summary"] == {"errors": 4, "warnings": 2}, doc["summary"]
    human = run(blitzc, "check", specs["errors"], specs["warnings"]).stdout
    assert human.endswith("failed: 4 errors, 2 warnings in 2 files\n"), human
    # Order of the files on the command line does not change the exit code.
    assert run(blitzc, "check", specs["warnings"], specs["clean"]).returncode == 0


def test_a_missing_spec_beside_others_is_exit_2_after_their_results(blitzc, specs, tmp_path):
    """`check clean missing`: the missing file is named on stderr and makes
    the exit 2, and the readable specs are still reported on stdout (one
    unreadable file must not hide a pull request's other diagnostics), as
    `check` of the readable ones alone reports them."""
    r = run(blitzc, "check", "--format", "json", specs["clean"], tmp_path / "missing.kdl")
    assert r.returncode == 2 and "missing.kdl" in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == run(blitzc, "check", "--format", "json", specs["clean"]).stdout


def test_a_spec_that_is_not_utf8_is_a_syntax_error_with_a_position(blitzc, tmp_path):
    """KDL and TOML documents are UTF-8: a byte that is not is a syntax error
    of the document (B001), at its line and column, exit 1; not exit 2 as
    though the file could not be read."""
    spec = tmp_path / "nonutf8.kdl"
    spec.write_bytes(b'version 1\n\xff\xfe gateway "x"\n')
    r = run(blitzc, "check", "--format", "json", spec)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    (d,) = json.loads(r.stdout)["diagnostics"]
    assert (d["code"], d["line"], d["column"]) == ("B001", 2, 1), d


@pytest.mark.parametrize(
    "argv",
    [
        ["check"],
        ["check", "--bogus", "{clean}"],
        ["check", "--format", "xml", "{clean}"],
        ["check", "--format"],
        ["check", "{missing}"],
        ["check", "{dir}"],
        ["frobnicate", "{clean}"],
        [],
        ["build"],
        ["build", "{clean}", "{clean}"],
        ["build", "{clean}", "--profile", "debug"],
        ["build", "{missing}"],
        ["build", "{dir}"],
        ["build", "{clean}", "-o", "{dir}"],
        ["emit", "{clean}"],
        ["emit", "{missing}", "-o", "{out}"],
        ["emit", "{clean}", "-o", "{file}"],
        ["route", "{clean}", "GET"],
        ["route", "{missing}", "GET", "/"],
        ["run"],
        ["dev"],
        ["dev", "{missing}"],
    ],
    ids=lambda a: " ".join(a) or "no-command",
)
def test_usage_and_io_errors_exit_2_with_a_message_on_stderr(blitzc, specs, tmp_path, argv):
    (tmp_path / "a-file").write_text("")
    names = {
        "clean": specs["clean"], "missing": tmp_path / "missing.kdl", "dir": tmp_path, "out": tmp_path / "crate",
        "file": tmp_path / "a-file",
    }
    r = run(blitzc, *[a.format(**names) for a in argv], env=dict(os.environ, CARGO="false"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", f"an error's message belongs on stderr, stdout had: {r.stdout!r}"
    assert r.stderr.strip(), "exit 2 without a word"


def test_help_and_version_exit_0_on_stdout(blitzc):
    for argv in (["--help"], ["--version"], ["check", "--help"], ["route", "--help"]):
        r = run(blitzc, *argv)
        assert r.returncode == 0 and r.stdout.strip() and r.stderr == "", (argv, r)
    assert re.fullmatch(r"blitzc \d+\.\d+\.\d+\n", run(blitzc, "--version").stdout)


# ---------------------------------------------------------------- formats

GITHUB_LINE = re.compile(r"^::(error|warning) file=([^,]+),line=(\d+),col=(\d+),title=(B\d{3})::(.+)$")


def _json(blitzc, *specs) -> list[dict]:
    r = run(blitzc, "check", "--format", "json", *specs)
    return json.loads(r.stdout)["diagnostics"]


def test_github_lines_are_exactly_the_workflow_command_and_match_json(blitzc, specs):
    r = run(blitzc, "check", "--format", "github", specs["warnings"], specs["errors"])
    assert r.returncode == 1 and r.stderr == ""
    lines = r.stdout.splitlines()
    diags = _json(blitzc, specs["warnings"], specs["errors"])
    assert len(lines) == len(diags) == 6, r.stdout
    for line, d in zip(lines, diags):
        m = GITHUB_LINE.match(line)
        assert m, f"not a workflow command: {line!r}"
        level, file, ln, col, code, message = m.groups()
        assert (level, file, int(ln), int(col), code) == (d["severity"], d["file"], d["line"], d["column"], d["code"])
        assert message.startswith(d["message"]), (message, d["message"])
        assert "\n" not in message and "\r" not in message
    assert [GITHUB_LINE.match(x).group(5) for x in lines] == ["B051", "B055", "B041", "B033", "B038", "B021"]
    assert [int(GITHUB_LINE.match(x).group(3)) for x in lines[2:]] == [2, 3, 5, 6]


def test_github_escapes_a_file_name_with_a_comma_or_colon(blitzc, tmp_path):
    odd = tmp_path / "a,b:c.kdl"
    odd.write_text(ERRORS)
    r = run(blitzc, "check", "--format", "github", odd.name, cwd=tmp_path)
    first = r.stdout.splitlines()[0]
    assert first.startswith("::error file=a%2Cb%3Ac.kdl,line=2,col="), first
    assert GITHUB_LINE.match(first), first


def test_sarif_is_2_1_0_and_carries_the_json_fields(blitzc, specs):
    r = run(blitzc, "check", "--format", "sarif", specs["warnings"], specs["errors"])
    assert r.returncode == 1 and r.stderr == ""
    sarif = json.loads(r.stdout)
    diags = _json(blitzc, specs["warnings"], specs["errors"])
    assert sarif["version"] == "2.1.0" and "sarif" in sarif["$schema"] and "2.1.0" in sarif["$schema"]
    assert len(sarif["runs"]) == 1
    sarif_run = sarif["runs"][0]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "blitzc" and re.fullmatch(r"\d+\.\d+\.\d+", driver["version"])
    rule_ids = [rule["id"] for rule in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    results = sarif_run["results"]
    assert len(results) == len(diags)
    for res, d in zip(results, diags):
        assert res["ruleId"] == d["code"] and res["ruleId"] in rule_ids
        if "ruleIndex" in res:
            assert rule_ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] == d["severity"] and res["level"] in ("error", "warning", "note", "none")
        assert res["message"]["text"].startswith(d["message"])
        (loc,) = res["locations"]
        phys = loc["physicalLocation"]
        region = phys["region"]
        assert (region["startLine"], region["startColumn"]) == (d["line"], d["column"])
        assert (region["endLine"], region["endColumn"]) == (d["end_line"], d["end_column"])
        assert phys["artifactLocation"]["uri"].endswith(Path(d["file"]).name)
        for rel, drel in zip(res.get("relatedLocations", []), d["related"]):
            assert rel["physicalLocation"]["region"]["startLine"] == drel["line"]
            assert rel["message"]["text"] == drel["label"]
    clean = json.loads(run(blitzc, "check", "--format", "sarif", specs["clean"]).stdout)
    assert clean["version"] == "2.1.0" and clean["runs"][0]["results"] == []


def test_sarif_uri_is_a_uri_reference(blitzc, tmp_path):
    """SARIF's artifactLocation.uri is a URI reference (RFC 3986): a file name
    with a space, a `%` or a non-ASCII letter is percent-encoded there (code
    scanning resolves it against the checkout), and stays as it is in json."""
    spec = tmp_path / "my spec%é.kdl"
    spec.write_text(ERRORS)
    sarif = json.loads(run(blitzc, "check", "--format", "sarif", spec.name, cwd=tmp_path).stdout)
    uris = {loc["physicalLocation"]["artifactLocation"]["uri"]
            for res in sarif["runs"][0]["results"] for loc in res["locations"] + res["relatedLocations"]}
    assert uris == {"my%20spec%25%C3%A9.kdl"}, uris
    doc = json.loads(run(blitzc, "check", "--format", "json", spec.name, cwd=tmp_path).stdout)
    assert {d["file"] for d in doc["diagnostics"]} == {"my spec%é.kdl"}


# ---------------------------------------------------------------- route, emit, build (no cargo)


def test_route_prints_the_route_or_exits_1_or_2(blitzc, tmp_path):
    spec = tmp_path / "routes.kdl"
    spec.write_text("""version 1
listener "http" { bind "127.0.0.1:18080" }
route "api" {
    match {
        host "api.example.com"
        path-prefix "/v1"
        method "GET"
    }
    respond 200
}
route "beta" {
    match { header "x-beta" "1" }
    respond 200
}
""")
    cases = [
        (["GET", "http://api.example.com/v1/x"], 0, "api\n"),
        (["GET", "/v1/x", "-H", "host: api.example.com"], 0, "api\n"),
        (["GET", "/v1/x", "-H", "Host: API.example.com:8443"], 0, "api\n"),
        (["GET", "/v1/x", "-H", "x-beta: 1"], 0, "beta\n"),
        (["GET", "/v1/x", "--header", "x-beta:1", "--header", "host: api.example.com"], 0, "api\n"),
        (["POST", "http://api.example.com/v1/x"], 1, None),
        (["GET", "/nothing"], 1, None),
        (["GET", "/v1", "-H", "x-beta 1"], 2, None),
        (["G T", "/v1"], 2, None),
        (["GET", "v1"], 2, None),
        (["GET", "ftp://api.example.com/v1"], 2, None),
        (["GET", "/", "--bogus"], 2, None),
    ]
    for args, code, out in cases:
        r = run(blitzc, "route", spec, *args)
        assert r.returncode == code, (args, r)
        if out is not None:
            assert r.stdout == out and r.stderr == "", (args, r)
        if code == 2:
            assert r.stdout == "" and r.stderr, (args, r)
    broken = tmp_path / "broken.kdl"
    broken.write_text(ERRORS)
    r = run(blitzc, "route", broken, "GET", "/")
    assert r.returncode == 2 and "B021" in r.stderr and r.stdout == "", r


def test_route_takes_a_header_value_as_bytes(blitzc, tmp_path):
    """A field value is bytes (RFC 9110 §5.5: obs-text is allowed), so
    `-H` takes any but CR, LF and NUL, and trims only SP and HTAB around
    it, as the runtime does (a no-break space is part of the value)."""
    spec = tmp_path / "values.kdl"
    spec.write_text(r"""version 1
listener "http" { bind "127.0.0.1:18080" }
route "utf8" {
    match { header "x-name" "caf\u{e9}" }
    respond 200
}
route "nbsp" {
    match { header "x-name" "\u{a0}x" }
    respond 200
}
route "other" { respond 404 }
""")

    def route(value: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([str(blitzc).encode(), b"route", bytes(spec), b"GET", b"http://a.test/",
                               b"-H", b"x-name:" + value], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)

    cases = [
        (b" caf\xc3\xa9\t", 0, b"utf8\n"),
        (b" caf\xe9", 0, b"other\n"),  # Latin-1 bytes are not the UTF-8 of the spec's value
        (b" \xc2\xa0x ", 0, b"nbsp\n"),
        (b" a\rb", 2, b""),
        (b" a\nb", 2, b""),
    ]
    for value, code, out in cases:
        r = route(value)
        assert (r.returncode, r.stdout) == (code, out), (value, r)
        if code == 2:
            assert b"is not `name: value`" in r.stderr, r


def test_emit_writes_the_crate_and_exits_like_check(blitzc, specs, tmp_path):
    out = tmp_path / "crate"
    r = run(blitzc, "emit", specs["clean"], "-o", out)
    assert r.returncode == 0, r
    assert r.stdout.strip() == str(out)
    assert (out / "Cargo.toml").is_file() and (out / "src" / "main.rs").is_file()
    assert "sha256:" in (out / "src" / "gateway.rs").read_text()
    warned = run(blitzc, "emit", specs["warnings"], "--output", tmp_path / "crate-w")
    assert warned.returncode == 0 and "B051" in warned.stderr, warned
    failed = run(blitzc, "emit", specs["errors"], "-o", tmp_path / "crate-e")
    assert failed.returncode == 1 and "B021" in failed.stderr and failed.stdout == "", failed
    assert not (tmp_path / "crate-e").exists(), "a spec with errors wrote a crate"


def test_build_of_a_bad_spec_exits_1_and_a_failed_cargo_exits_3(blitzc, specs, tmp_path):
    env = dict(os.environ, CARGO="false", BLITZ_CACHE_DIR=str(tmp_path / "cache"))
    bad = run(blitzc, "build", specs["errors"], "-o", tmp_path / "bad", env=env)
    assert bad.returncode == 1 and "B021" in bad.stderr and bad.stdout == "", bad
    assert not (tmp_path / "bad").exists()
    failed = run(blitzc, "build", specs["clean"], "-o", tmp_path / "gw", env=env)
    assert failed.returncode == 3, failed
    assert failed.stdout == "", "no binary path is printed when the build failed"
    assert not (tmp_path / "gw").exists()
    run_failed = run(blitzc, "run", specs["clean"], env=env)
    assert run_failed.returncode == 3 and run_failed.stdout == "", run_failed


# ---------------------------------------------------------------- the generated binary


@dataclass
class Built:
    bins: dict[str, Path]
    stdout: dict[str, str]
    spec: dict[str, Path]
    dir: Path
    ports: dict[str, int]
    origin: Origin
    control: Path
    cwd: Path  # where they were built from, with relative paths


@pytest.fixture(scope="module")
def built(blitzc, cache_dir, tmp_path_factory):
    """A and B of one spec (three listeners, TLS, a relative admin socket), built
    from another working folder than the spec's, the spec named by a relative
    path (`../../qa-spec/gw-A.kdl`); that folder is renamed once they are
    built: a binary must not depend on where blitzc ran."""
    spec_dir = tmp_path_factory.mktemp("qa-spec")
    (spec_dir / "run").mkdir()
    shutil.copy(FIXTURES / "edge.crt", spec_dir / "cert.pem")
    shutil.copy(FIXTURES / "edge.key", spec_dir / "key.pem")
    origin = Origin()
    ports = {"plain": free_port(), "mixed": free_port(), "tls": free_port()}
    top = tmp_path_factory.mktemp("qa-cwd")
    elsewhere = top / "build"
    elsewhere.mkdir()
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    bins, stdout, spec = {}, {}, {}
    for label in ("A", "B"):
        spec[label] = spec_dir / f"gw-{label}.kdl"
        spec[label].write_text(SPEC.format(**ports, origin=origin.port, label=label))
        r = subprocess.run(
            [str(blitzc), "build", os.path.relpath(spec[label], elsewhere), "-o", f"../out/gw-{label}"],
            capture_output=True, text=True, env=env, cwd=elsewhere, timeout=1800,
        )
        assert r.returncode == 0, r.stderr
        bins[label], stdout[label] = top / "out" / f"gw-{label}", r.stdout
    moved = elsewhere.rename(top / "moved")
    yield Built(bins, stdout, spec, spec_dir, ports, origin, spec_dir / "run" / "control.sock", moved)
    origin.stop()


def test_build_prints_the_binary_path_last_and_alone_on_stdout(built):
    for label, path in built.bins.items():
        # Absolute, and still valid with the build's working folder gone.
        assert built.stdout[label] == f"{path}\n", built.stdout[label]
        assert os.access(path, os.X_OK)


def test_version_names_blitzc_and_the_spec_hash(blitzc, built, cache_dir, tmp_path):
    blitzc_version = run(blitzc, "--version").stdout.split()[1]
    hashes = {}
    for label, binary in built.bins.items():
        r = run(binary, "--version")
        assert r.returncode == 0 and r.stderr == "", r
        m = re.fullmatch(r"qa-contract \(blitzc (\S+), spec (sha256:[0-9a-f]{64})\)\n", r.stdout)
        assert m, r.stdout
        assert m.group(1) == blitzc_version
        hashes[label] = m.group(2)
        # The hash the compiler put in the generated crate.
        run(blitzc, "emit", built.spec[label], "-o", tmp_path / label)
        assert hashes[label] in (tmp_path / label / "src" / "gateway.rs").read_text()
    assert hashes["A"] != hashes["B"], "two specs that answer differently share a hash"
    # Whitespace and comments are not the spec: the same hash.
    reformatted = built.dir / "gw-A-reformatted.kdl"
    reformatted.write_text("// a comment\n" + built.spec["A"].read_text().replace("\n", "\n\n"))
    run(blitzc, "emit", reformatted, "-o", tmp_path / "A2")
    assert hashes["A"] in (tmp_path / "A2" / "src" / "gateway.rs").read_text()
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    # `blitzc dev` and `blitzc run` hand the arguments after `--` to the gateway.
    dev = run(blitzc, "dev", built.spec["B"], "--", "--version", env=env)
    assert dev.returncode == 0 and hashes["B"] in dev.stdout, dev
    # The spec named as at its build (from a folder as deep): the same crate, no cargo work.
    spec_b = os.path.relpath(built.spec["B"], built.cwd)
    ran = run(blitzc, "run", spec_b, "--", "--version", env=env, cwd=built.cwd, timeout=900)
    assert ran.returncode == 0 and ran.stdout == run(built.bins["B"], "--version").stdout, ran
    usage = run(blitzc, "run", spec_b, "--", "--bogus", env=env, cwd=built.cwd, timeout=900)
    assert usage.returncode == 2, "the exit status of `blitzc run` is the gateway's"


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["--workers"], ["--workers", "0"], ["--workers", "x"], ["--grace", "soon"], ["--grace"],
     ["--driver", "kqueue"], ["--admin-socket"], ["--detach"], ["--grace=-1s"]],
    ids=" ".join,
)
def test_binary_command_line_errors_exit_2(built, args):
    r = run(built.bins["A"], *args, timeout=20)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "usage:" in r.stderr or "--" in r.stderr, r.stderr
    assert r.stdout == ""


class Gw(WatchedProcess):
    """A gateway process of these tests; stderr kept; stopped by pid."""

    def wait(self, timeout: float) -> int:
        return self.exit_code(timeout)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.wait(timeout)
        finally:
            self.kill()


def tls_context(alpn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def tls_connect(port: int, alpn: str = "http/1.1", timeout: float = 15) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s = tls_context(alpn).wrap_socket(raw, server_hostname="edge")
    except BaseException:
        raw.close()
        raise
    assert s.selected_alpn_protocol() == alpn, s.selected_alpn_protocol()
    return s


class TlsConn(RawConn):
    """RawConn's HTTP/1.1 parser over a TLS connection."""

    def __init__(self, port: int, timeout: float = 15):
        self.sock = tls_connect(port, "http/1.1", timeout)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False


def get(conn: RawConn, target: str, close: bool = False, timeout: float = 20):
    extra = "Connection: close\r\n" if close else ""
    conn.send(f"GET {target} HTTP/1.1\r\nHost: edge\r\n{extra}\r\n".encode())
    return conn.read_response(timeout=timeout)


def h2_streams(sock, paths: list[str]) -> RawH2:
    """Opens one stream per path on a new HTTP/2 connection (responses not read
    yet), with windows of 16 MiB: large bodies need no WINDOW_UPDATE."""
    window = 1 << 24
    c = RawH2("", sock=sock, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window})
    c.frame(WindowUpdateFrame(0, window_increment=window))
    for i, path in enumerate(paths):
        c.headers(1 + 2 * i, path=path)
    return c


def h2_body(c: RawH2, sid: int) -> bytes | None:
    return c.seen.data.get(sid, b"") if sid in c.seen.ended and c.seen.status(sid) == 200 else None


BIG = 1_200_000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_every_listener_kind_and_exits_0(built, sig):
    """In flight when the signal comes: a slow response on HTTP/1.1, TLS and h2c,
    a 1.2 MB body paused after 1 MiB on h2 over TLS. Idle: a keep-alive connection on each listener.
    Every response finishes, every idle connection is closed, the exit is 0, and
    well before the 30 s grace (idle connections do not hold the drain)."""
    origin, ports = built.origin, built.ports
    gw = Gw([built.bins["A"], "--grace", "30s"], cwd="/")
    idle = [RawConn(ports["plain"]), RawConn(ports["mixed"]), TlsConn(ports["tls"])]
    h2_idle = RawH2(f"127.0.0.1:{ports['mixed']}")
    slow = [RawConn(ports["plain"], timeout=30), TlsConn(ports["tls"], timeout=30)]
    h2c = tls_h2 = None
    try:
        for c in idle:
            assert get(c, "/healthz").body == b"ok A\n"
        h2_idle.headers(1, path="/healthz")
        assert h2_idle.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended).data.get(1) == b"ok A\n"
        origin.reset()
        for i, c in enumerate(slow):
            c.send(f"GET /slow?delay=2&c={i} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
        h2c = h2_streams(socket.create_connection(("127.0.0.1", ports["mixed"]), timeout=30), ["/slow?delay=2&c=h2c"])
        tls_h2 = h2_streams(tls_connect(ports["tls"], "h2", 30), [f"/bytes/{BIG}?pause=2", "/slow?delay=2&c=h2"])
        in_flight = ("/slow", f"/bytes/{BIG}")
        assert origin.wait_for(lambda: sum(q.path in in_flight for q in origin.requests) == 5, 10), origin.requests
        gw.proc.send_signal(sig)
        for c in slow:
            r = c.read_response(timeout=30)
            assert r.status == 200 and r.complete and r.body.startswith(b"GET /slow?delay=2"), r
        h2c.read_frames(time.monotonic() + 30, stop=lambda s: 1 in s.ended or s.closed)
        assert h2_body(h2c, 1) == b"GET /slow?delay=2&c=h2c\n", h2c.seen
        tls_h2.read_frames(time.monotonic() + 30, stop=lambda s: {1, 3} <= s.ended or s.closed)
        big = h2_body(tls_h2, 1)
        assert big is not None and len(big) == BIG and hashlib.sha256(big).hexdigest() == pattern_sha256(BIG), tls_h2.seen.resets
        assert h2_body(tls_h2, 3) == b"GET /slow?delay=2&c=h2\n", tls_h2.seen
        for c in idle:
            assert c.wait_closed(20), "an idle keep-alive connection was left open by the drain"
        assert h2_idle.ended_by_server(20).goaway is not None or h2_idle.seen.closed
        assert gw.wait(20) == 0
        assert "drained, exiting" in gw.text()
        assert not built.control.exists(), "the control socket outlived the gateway"
    finally:
        for c in idle + slow + [h2_idle, h2c, tls_h2]:
            if c is not None:
                c.close()
        gw.stop()


def test_grace_bounds_a_drain_held_by_h2_streams(built):
    """A stream that would take 30 s does not keep the process past --grace 1s."""
    gw = Gw([built.bins["A"], "--grace", "1s"])
    c = h2_streams(tls_connect(built.ports["tls"], "h2", 30), ["/slow?delay=30"])
    plain = RawConn(built.ports["plain"], timeout=30)
    try:
        plain.send(b"GET /slow?delay=30 HTTP/1.1\r\nHost: edge\r\n\r\n")
        assert built.origin.wait_for(lambda: sum(q.path == "/slow" for q in built.origin.requests) >= 2, 10)
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
        assert plain.wait_closed(5)
        assert c.read_frames(time.monotonic() + 5, stop=lambda s: s.closed).closed
    finally:
        c.close()
        plain.close()
        gw.stop()


def _served_cert(port: int) -> bytes:
    with tls_connect(port) as s:
        return s.getpeercert(binary_form=True)


def _pem_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_rereads_the_certificate_files(built, tmp_path):
    """The spec's files are swapped for another pair and SIGHUP sent: new
    handshakes get the new certificate, an open TLS connection keeps working,
    HTTP/1.1 and h2c listeners are untouched; a broken file keeps the old pair."""
    cert, key = built.dir / "cert.pem", built.dir / "key.pem"
    gw = Gw([built.bins["A"], "--grace", "5s"])
    open_conn = TlsConn(built.ports["tls"])
    try:
        assert _served_cert(built.ports["tls"]) == _pem_der(FIXTURES / "edge.crt")
        assert get(open_conn, "/healthz").body == b"ok A\n"
        shutil.copy(FIXTURES / "api.crt", cert)
        shutil.copy(FIXTURES / "api.key", key)
        assert _served_cert(built.ports["tls"]) == _pem_der(FIXTURES / "edge.crt"), "reloaded without SIGHUP"
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _served_cert(built.ports["tls"]) != _pem_der(FIXTURES / "api.crt") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _served_cert(built.ports["tls"]) == _pem_der(FIXTURES / "api.crt"), gw.text()
        assert get(open_conn, "/healthz").body == b"ok A\n", "SIGHUP broke an open TLS connection"
        with RawConn(built.ports["plain"]) as c:
            assert get(c, "/healthz", close=True).body == b"ok A\n"
        # Half a renewal (a certificate without its key): the last good pair stays.
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert _served_cert(built.ports["tls"]) == _pem_der(FIXTURES / "api.crt")
        assert gw.proc.poll() is None
        assert gw.stop() == 0
    finally:
        open_conn.close()
        shutil.copy(FIXTURES / "edge.crt", cert)
        shutil.copy(FIXTURES / "edge.key", key)
        gw.stop()


def test_upgrade_to_a_build_whose_certificate_does_not_load_changes_nothing(built):
    """The new process loads its certificates before it asks for the sockets:
    with its certificate file gone it exits 1 naming the file, and the running
    instance never stopped serving (nor was it told anything)."""
    cert = built.dir / "cert.pem"
    gw = Gw([built.bins["A"], "--grace", "5s"])
    try:
        cert.rename(built.dir / "cert.pem.away")
        try:
            r = run(built.bins["B"], "--upgrade", "--grace", "5s", timeout=30)
        finally:
            (built.dir / "cert.pem.away").rename(cert)
        assert r.returncode == 1 and "cert.pem not found" in r.stderr, r
        assert "upgrade" not in gw.text(), gw.text()
        with TlsConn(built.ports["tls"]) as c:
            assert get(c, "/healthz", close=True).body == b"ok A\n"
        assert gw.stop() == 0
    finally:
        gw.stop()


LAUNCHER = r"""
import fcntl, os, socket, sys
# Binds like a systemd .socket unit, in another order than the spec's
# listeners, moves the sockets to fds 3 and 4, and execs the gateway.
tls_port, plain_port = int(sys.argv[1]), int(sys.argv[2])
high = []
for port in (tls_port, plain_port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    high.append(fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 10))  # out of the way of 3 and 4
    s.close()
for fd, h in zip((3, 4), high):
    os.dup2(h, fd)  # dup2'd descriptors are inheritable
    os.close(h)
os.environ.update(LISTEN_FDS="2", LISTEN_FDNAMES="tls:plain", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[3], sys.argv[3:])
"""


def test_socket_activation_of_two_sockets_then_an_upgrade(built, tmp_path):
    """systemd socket activation (LISTEN_FDS=2, fds 3 and 4, matched by address,
    not order); the third listener is bound by the gateway. The activated
    instance is then upgraded: the new one serves every listener, the
    activated one exits 0."""
    ports = built.ports
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    sock = tmp_path / "activated.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    gw = Gw([sys.executable, launcher, ports["tls"], ports["plain"], built.bins["A"], "--grace", "5s",
             "--admin-socket", sock], env=env, wait_for='listening on .* \\(listener "tls"\\)')
    new = None
    try:
        assert gw.text().count("listening on") == 3
        # The gateway's own descriptors 3 and 4 are the activated sockets, nothing else.
        fd3, fd4 = (os.readlink(f"/proc/{gw.proc.pid}/fd/{n}") for n in (3, 4))
        assert fd3.startswith("socket:") and fd4.startswith("socket:"), (fd3, fd4)
        with RawConn(ports["plain"]) as c:
            assert get(c, "/healthz", close=True).body == b"ok A\n"
        with TlsConn(ports["tls"]) as c:
            assert get(c, "/healthz", close=True).body == b"ok A\n"
        with RawH2(f"127.0.0.1:{ports['mixed']}") as c:
            c.headers(1, path="/healthz")
            assert c.read_frames(time.monotonic() + 10, stop=lambda s: 1 in s.ended).data.get(1) == b"ok A\n"
        assert sock.is_socket(), "--admin-socket is where the control socket is"
        assert not built.control.exists(), "--admin-socket overrides the spec's socket"
        new = Gw([built.bins["B"], "--upgrade", "--grace", "5s", "--admin-socket", sock], env=env,
                 wait_for=r"took over from pid")
        assert gw.wait(15) == 0
        for port in (ports["plain"], ports["mixed"]):
            with RawConn(port) as c:
                assert get(c, "/healthz", close=True).body == b"ok B\n"
        with TlsConn(ports["tls"]) as c:
            assert get(c, "/healthz", close=True).body == b"ok B\n"
        assert new.stop() == 0
    finally:
        gw.stop()
        if new:
            new.stop()


def test_socket_activation_errors_are_clear(built, tmp_path):
    """LISTEN_PID naming the gateway with a descriptor that is no listening socket
    fails the start with a message (exit 1); LISTEN_PID of another process is
    not for this one (the gateway binds its own sockets)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    script = 'exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" --admin-socket "$1"'
    r = run("bash", "-c", script, built.bins["A"], tmp_path / "x.sock", env=env, timeout=20)
    assert r.returncode == 1 and "LISTEN_FDS" in r.stderr, r
    script = 'LISTEN_PID=1 LISTEN_FDS=1 exec "$0" --admin-socket "$1" --grace 2s'
    gw = Gw(["bash", "-c", script, built.bins["A"], tmp_path / "y.sock"], env=env)
    try:
        with RawConn(built.ports["plain"]) as c:
            assert get(c, "/healthz", close=True).body == b"ok A\n"
    finally:
        assert gw.stop() == 0


# ---------------------------------------------------------------- upgrades under load on every listener

GRACE = 10


class MixedLoad:
    """Client threads on the three listeners until `finish()`; every response is
    checked whole (status, length, sha256 for the large ones)."""

    BIG = 1_500_000  # the origin pauses after 1 MiB: in flight across a handoff

    def __init__(self, ports: dict[str, int]):
        self.ports = ports
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok: dict[str, int] = {}
        self.labels: set[str] = set()
        self.failures: list[str] = []
        self.goaways = 0
        self.threads = [
            threading.Thread(target=fn, args=args, daemon=True)
            for fn, args in (
                (self.h1_keep_alive, ("plain",)), (self.h1_keep_alive, ("mixed",)),
                (self.h1_big, ("plain",)), (self.h1_big, ("mixed",)),
                (self.h1_new_connections, ("plain",)),
                (self.h2_streams, ("h2c",)), (self.h2_streams, ("tls-h2",)),
                (self.tls_h1, (1,)), (self.tls_h1, (2,)),
            )
        ]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self, timeout: float = 40):
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a load client did not stop in time"

    def good(self, kind: str, label: str | None = None):
        with self.lock:
            self.ok[kind] = self.ok.get(kind, 0) + 1
            if label:
                self.labels.add(label)

    def fail(self, what: str):
        with self.lock:
            if len(self.failures) < 40:
                self.failures.append(what)

    @staticmethod
    def breathe():
        """Lets the other client threads have the GIL: a TLS client starved of it
        for a second after connecting would meet a drain's last call (1 s) before
        sending its ClientHello, and be closed as an idle connection."""
        time.sleep(0.002)

    def _conn(self, kind: str, port: int):
        try:
            return RawConn(port, timeout=20)
        except OSError as e:
            self.fail(f"{kind}: connect: {e!r}")
            return None

    def h1_keep_alive(self, listener: str):
        """Back-to-back requests on one connection, alternating /healthz (the
        build's label) and the origin; a new connection after `Connection: close`."""
        kind, conn, i = f"h1-keep-alive@{listener}", None, 0
        while not self.stop.is_set():
            conn = conn or self._conn(kind, self.ports[listener])
            if conn is None:
                time.sleep(0.05)
                continue
            i += 1
            target = "/healthz" if i % 2 else f"/ka?i={i}"
            try:
                r = get(conn, target)
            except (Closed, OSError, TimeoutError, ValueError) as e:
                self.fail(f"{kind} {target}: {e!r}")
                conn.close()
                conn = None
                continue
            if r.status == 200 and r.complete and (r.body in (b"ok A\n", b"ok B\n") or r.body == f"GET {target}\n".encode()):
                self.good(kind, r.body.decode().split()[1] if target == "/healthz" else None)
            else:
                self.fail(f"{kind} {target}: {r!r}")
            if "close" in (r.h("connection") or "").lower():
                conn.close()
                conn = None
            self.breathe()
        if conn:
            conn.close()

    def h1_big(self, listener: str):
        kind, n = f"h1-big@{listener}", self.BIG
        want = pattern_sha256(n)
        while not self.stop.is_set():
            conn = self._conn(kind, self.ports[listener])
            if conn is None:
                time.sleep(0.05)
                continue
            try:
                r = get(conn, f"/bytes/{n}?pause=0.6", close=True, timeout=30)
            except (Closed, OSError, TimeoutError, ValueError) as e:
                self.fail(f"{kind}: {e!r}")
                continue
            finally:
                conn.close()
            if r.status == 200 and r.complete and len(r.body) == n and hashlib.sha256(r.body).hexdigest() == want:
                self.good(kind)
            else:
                self.fail(f"{kind}: status {r.status}, {len(r.body)} bytes, complete={r.complete}")

    def h1_new_connections(self, listener: str):
        kind, i = f"h1-new@{listener}", 0
        while not self.stop.is_set():
            i += 1
            conn = self._conn(kind, self.ports[listener])
            if conn is None:
                time.sleep(0.05)
                continue
            try:
                r = get(conn, f"/nc?i={i}", close=True)
            except (Closed, OSError, TimeoutError, ValueError) as e:
                self.fail(f"{kind} {i}: {e!r}")
                continue
            finally:
                conn.close()
            if r.status == 200 and r.body == f"GET /nc?i={i}\n".encode():
                self.good(kind)
            else:
                self.fail(f"{kind} {i}: {r!r}")
            self.breathe()

    def tls_h1(self, n: int):
        kind, i = f"tls-h1#{n}", 0
        want = pattern_sha256(200_000)
        while not self.stop.is_set():
            i += 1
            target = "/bytes/200000" if i % 3 == 0 else f"/tls{n}?i={i}"
            started = time.monotonic()
            try:
                with TlsConn(self.ports["tls"], timeout=20) as conn:
                    r = get(conn, target, close=True)
            except (Closed, OSError, TimeoutError, ValueError, ssl.SSLError) as e:
                self.fail(f"{kind} {target}: {e!r} after {time.monotonic() - started:.3f}s at {time.monotonic():.3f}")
                continue
            if target.startswith("/bytes"):
                ok = r.complete and len(r.body) == 200_000 and hashlib.sha256(r.body).hexdigest() == want
            else:
                ok = r.body == f"GET {target}\n".encode()
            if r.status == 200 and ok:
                self.good(kind)
            else:
                self.fail(f"{kind} {target}: status {r.status}, {len(r.body)} bytes")

    def h2_streams(self, which: str):
        """Streams back to back on one connection until the server's GOAWAY; a
        stream the GOAWAY's last-stream-id covers must be answered, one above it
        was not processed (RFC 9113 §6.8: the client retries it elsewhere)."""
        kind = f"h2-{which}"
        while not self.stop.is_set():
            try:
                if which == "h2c":
                    c = RawH2(f"127.0.0.1:{self.ports['mixed']}", timeout=20)
                else:
                    c = RawH2("", sock=tls_connect(self.ports["tls"], "h2", 20))
            except (OSError, ssl.SSLError) as e:
                self.fail(f"{kind}: connect: {e!r}")
                time.sleep(0.05)
                continue
            sent, sid = [], 1
            with c:
                while not self.stop.is_set() and c.seen.goaway is None and not c.seen.closed:
                    path = "/healthz" if sid % 4 == 1 else f"/{which}/{sid}"
                    c.headers(sid, path=path)
                    sent.append((sid, path))
                    c.read_frames(time.monotonic() + 20, stop=lambda s, sid=sid: sid in s.ended or sid in s.resets or s.closed)
                    sid += 2
                    self.breathe()
                s = c.read_frames(time.monotonic() + 20,
                                  stop=lambda s: all(i in s.ended or i in s.resets for i, _ in sent) or s.closed)
            if s.goaway is not None:
                with self.lock:
                    self.goaways += 1
            last = s.goaway_last_stream if s.goaway is not None else None
            for i, path in sent:
                body = s.data.get(i, b"")
                if i in s.ended and s.status(i) == 200 and (body in (b"ok A\n", b"ok B\n") or body == f"GET {path}\n".encode()):
                    self.good(kind)
                elif last is not None and i > last and i not in s.headers and i not in s.resets:
                    pass  # not processed: safe to retry
                elif self.stop.is_set() and s.goaway is None and not s.closed:
                    pass  # the test ended while it was in flight
                else:
                    self.fail(f"{kind} stream {i} {path}: status {s.status(i)}, reset {s.resets.get(i)}, "
                              f"goaway {s.goaway} last {last}, closed {s.closed}")


def _running(binaries: list[Path]) -> list[int]:
    """Live (not zombie) processes running one of these binaries."""
    targets = {str(b) for b in binaries}
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{d}/exe")
            state = open(f"/proc/{d}/stat").read().rsplit(") ", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if exe in targets and state != "Z":
            pids.append(int(d))
    return sorted(pids)


@pytest.mark.timeout(150)
def test_upgrades_under_load_on_every_listener_refuse_fail_and_leak_nothing(built):
    """Five upgrades alternating A and B, through the spec's relative control
    socket, under load on the three listeners at once: HTTP/1.1 keep-alive and
    new connections, 1.5 MB bodies paused mid-way (in flight during handoffs)
    checked by length and sha256, h2c and TLS h2 streams, TLS HTTP/1.1. No
    request fails, every old process exits 0 within the grace period having
    handed off to the next, both builds answered, the last process has as many
    descriptors as the first, and no gateway process is left but the last."""
    bins = [built.bins["A"], built.bins["B"]]
    current = Gw([bins[0], "--grace", f"{GRACE}s"], cwd="/")
    first_pid = current.proc.pid
    procs = [current]
    load = MixedLoad(built.ports)
    try:
        assert built.control.is_socket() and (built.control.stat().st_mode & 0o777) == 0o600
        first_fds = settled_fd_count(first_pid)
        load.start()
        time.sleep(1.5)
        olds = []
        for i in range(5):
            old = current
            current = Gw([bins[(i + 1) % 2], "--upgrade", "--grace", f"{GRACE}s"], cwd="/",
                         wait_for=r"took over from pid")
            procs.append(current)
            assert f"took over from pid {old.proc.pid}" in current.text()
            olds.append((old, time.monotonic(), current.proc.pid))
            print(f"upgrade {i + 1} done at {time.monotonic():.3f}")
            time.sleep(1.5)
        time.sleep(1.0)
    finally:
        load.finish()
    report = f"ok={load.ok} goaways={load.goaways} labels={load.labels}\nfailures:\n" + "\n".join(load.failures)
    print(report)
    assert not load.failures, report
    assert load.labels == {"A", "B"}, report
    assert all(load.ok.get(k, 0) > 0 for k in ("h1-big@plain", "h1-big@mixed", "h2-h2c", "h2-tls-h2", "tls-h1#1")), report
    assert load.goaways > 0, report
    for old, handed_off, new_pid in olds:
        rc = old.wait(max(0.5, handed_off + GRACE + 3 - time.monotonic()))
        assert rc == 0, old.text()[-3000:]
        assert f"handed off to pid {new_pid}" in old.text()
    # The last process took nothing more along than the first had.
    last = current
    current = Gw([bins[0], "--upgrade", "--grace", f"{GRACE}s"], cwd="/", wait_for=r"took over from pid")
    procs.append(current)
    assert last.wait(GRACE + 3) == 0
    try:
        final_fds = settled_fd_count(current.proc.pid)
        assert final_fds <= first_fds, f"descriptors grew across 6 upgrades: {first_fds} -> {final_fds}"
        assert _running(bins) == [current.proc.pid], "leftover gateway processes"
        assert built.control.is_socket()
        assert current.stop() == 0
        assert not built.control.exists()
    finally:
        for p in procs:
            p.stop()
