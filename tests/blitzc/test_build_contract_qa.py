"""A code-review and black-box pass over the back half of `blitzc` as a CI
job relies on it: `blitzc build`, `blitzc emit`, `blitzc run`, the build
cache (blitzc/src/build/, templates/, blitzc/src/codegen/) and
`GATEWAY --version`, against DESIGN.md ("The compiler (contract)", "The
generated binary", "Lean binaries"), docs/architecture.md ("Generated
code") and docs/operations.md ("From a spec change to a running binary").

test_contract_qa.py already covers the exit codes of bad specs and of a
failing cargo (`CARGO=false`), `-o DIR`, the `--version` line, a comment
keeping the hash, `run` handing `--` arguments and the exit status over;
test_examples.py the KDL/TOML twins sharing a hash and `run` with SIGTERM.
This file adds, with real builds that share one module fixture:

- the cache: a changed spec under the same gateway name never yields a
  stale binary, an identical one compiles nothing; two builds at once on
  one cache (what a CI runner with parallel jobs does);
- `-o`: a missing folder, a binary that is running (the upgrade flow), a
  device node, paths that cannot be written; what the error says;
- environment failures (cache folder, cargo, runtime sources): exit 3 and
  a message that names what failed; where the cache goes by default
  (`BLITZ_CACHE_DIR`, `XDG_CACHE_HOME`, `~/.cache/blitz`);
- gateway names the manifest or cargo cannot take (the default name is the
  spec file's stem, so `sites/build.kdl` is a gateway called `build`), and
  runtime folders the manifest cannot name;
- `emit`: deterministic, builds on its own with cargo, what it does to a
  folder that holds someone else's crate; the spec hash (the model, not
  the file) and what it leaves out;
- lean binaries: rustls and h2 linked only into gateways whose spec uses
  them; the generated crates compile without a warning;
- `blitzc run` is the gateway (exec): SIGINT drains it, its exit status
  (1 on a port in use) is `run`'s.

Bugs it found, fixed since, each tested next to a passing control: two
builds at once of specs sharing a gateway name both got one binary (now a
lock per crate); `-o` naming a device node replaced the node (now exit 2);
an IO failure around cargo printed the bare OS error (now it names the
path or program) and could leave a temporary file; an empty
`XDG_CACHE_HOME` or `BLITZ_CACHE_DIR` put the cache in the working folder;
a gateway named `build`, `deps`, `examples` or `incremental` failed in
cargo (now `gw-build`...); a newline in the gateway name, or a quote or
backslash in the runtime folder, broke or changed the generated manifest;
`emit -o DIR` overwrote a crate blitzc did not write (now exit 2).

Not run here (too slow for 2 cores): `--profile max` (fat LTO of the whole runtime) and
`cargo clippy` on a generated crate (clean when tried by hand).
"""

from __future__ import annotations

import filecmp
import http.client
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.blitzc import BLITZC_BUILD_TIMEOUT, blitz_env
from support.gateway import REPO, WatchedProcess, free_port

FIXTURES = REPO / "tests" / "fixtures"

# One template for every spec of this file: `{listeners}` are the spec's
# listener blocks, `{body}` tells builds apart over HTTP, `{extra}` adds routes.
SPEC = """version 1
gateway "{name}" {{ workers 1 }}
{listeners}
route "health" {{
    match {{ path "/healthz" }}
    respond 200 body="{body}\\n" content-type="text/plain"
}}
{extra}
"""

PLAIN = 'listener "http" {{ bind "127.0.0.1:{port}" }}'
H2C = 'listener "http" {{\n    bind "127.0.0.1:{port}"\n    protocols "h1" "h2c"\n}}'
TLS_H1 = 'listener "tls" {{\n    bind "127.0.0.1:{tls}"\n    tls {{ cert "cert.pem" key="key.pem" }}\n}}'
TLS_H2 = ('listener "tls" {{\n    bind "127.0.0.1:{tls}"\n    protocols "h1" "h2"\n'
          '    tls {{ cert "cert.pem" key="key.pem" }}\n}}')

# Two warnings (B051: a match without conditions; B055: a 204 with a body).
WARNING_ROUTE = 'route "warned" {\n    match { }\n    respond 204 body="x"\n}'

# Manifest tables templates/Cargo.toml writes; nothing else belongs there.
MANIFEST_TABLES = {"package", "bin", "dependencies", "workspace", "profile"}

BUILDING = re.compile(r"building gateway `[^`]*` \((sha256:[0-9a-f]{64})\)")
VERSION = re.compile(r"\(blitzc (\S+), spec (sha256:[0-9a-f]{64})\)\n")


# ---------------------------------------------------------------- helpers


def run(*argv, env=None, cwd=None, timeout: float = BLITZC_BUILD_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=False, capture_output=True, text=True, env=env,
                          cwd=cwd, stdin=subprocess.DEVNULL, timeout=timeout)


def write_spec(folder: Path, file: str, name: str, listeners: str, body: str, extra: str = "", **ports) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    path.write_text(SPEC.format(name=name, listeners=listeners.format(**ports), body=body, extra=extra))
    return path


def built_hash(stderr: str) -> str:
    """The spec hash blitzc announced while building (`blitzc: building gateway ...`)."""
    m = BUILDING.search(stderr)
    assert m, stderr
    return m.group(1)


def version_hash(binary: Path) -> str:
    r = run(binary, "--version", timeout=10)
    m = VERSION.search(r.stdout)
    assert r.returncode == 0 and m, r
    return m.group(2)


def emitted_hash(crate: Path) -> str:
    m = re.search(r"sha256:[0-9a-f]{64}", (crate / "src" / "gateway.rs").read_text())
    assert m
    return m.group(0)


def error_lines(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if line.startswith("error"))


def cargo_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning")]


def http_body(port: int) -> bytes:
    """The body of GET /healthz (straight to the port: no proxy from the environment)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().read()
    finally:
        conn.close()


def build_ok(blitzc: Path, spec: Path, out: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    """`blitzc build SPEC -o OUT` that must succeed, print only the binary's path on
    stdout, and compile the generated crate without a warning."""
    r = run(blitzc, "build", spec, "-o", out, env=blitz_env(cache_dir))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{out}\n", r.stdout
    assert not cargo_warnings(r.stderr), r.stderr
    return r


def serve(binary: Path, tmp: Path, label: str) -> WatchedProcess:
    """The gateway with a control socket of its own (the default path is per
    gateway name, and this file runs several builds of one name)."""
    return WatchedProcess([binary, "--grace", "5s", "--admin-socket", tmp / f"{label}.sock"])


@dataclass
class Build:
    spec: Path
    binary: Path
    hash: str
    port: int


@pytest.fixture(scope="module")
def builds(blitzc, cache_dir, tmp_path_factory) -> dict[str, Build]:
    """Four gateways, one per runtime feature set blitzc can pick: plain
    HTTP/1.1, h1+h2c, TLS with HTTP/1.1, and h2c plus TLS with h1 and h2."""
    folder = tmp_path_factory.mktemp("bqa-specs")
    shutil.copy(FIXTURES / "edge.crt", folder / "cert.pem")
    shutil.copy(FIXTURES / "edge.key", folder / "key.pem")
    kinds = {"plain": PLAIN, "h2c": H2C, "tls": TLS_H1, "full": H2C + "\n" + TLS_H2}
    out = {}
    for kind, listeners in kinds.items():
        port, tls = free_port(), free_port()
        spec = write_spec(folder, f"{kind}.kdl", f"bqa-{kind}", listeners, f"{kind} A", port=port, tls=tls)
        binary = folder / "bin" / kind
        r = build_ok(blitzc, spec, binary, cache_dir)
        out[kind] = Build(spec, binary, built_hash(r.stderr), port)
    return out


# ---------------------------------------------------------------- the cache


@pytest.mark.timeout(600)
def test_rebuilding_under_one_name_is_never_stale_and_replaces_a_running_binary(blitzc, cache_dir, builds, tmp_path):
    """The cache is one crate folder per gateway name, rewritten where its
    content changed; cargo's fingerprints decide the rest. A changed spec of
    the same name (here also one with warnings: they do not block a build)
    gives a new binary, built over the path of a running one as
    docs/operations.md does (the old process keeps its file and serves on);
    going back to the first spec gives its hash again; an identical spec
    compiles nothing and gives the same bytes."""
    plain = builds["plain"]
    site = tmp_path / "dist" / "site"
    site.parent.mkdir()
    shutil.copy(plain.binary, site)
    old = serve(site, tmp_path, "old")
    try:
        assert http_body(plain.port) == b"plain A\n"
        changed = write_spec(tmp_path, "plain.kdl", "bqa-plain", PLAIN, "plain B", WARNING_ROUTE, port=plain.port)
        r = build_ok(blitzc, changed, site, cache_dir)
        assert "B051" in r.stderr and "B055" in r.stderr, "the warnings are shown"
        hash_b = built_hash(r.stderr)
        assert hash_b != plain.hash and version_hash(site) == hash_b
        assert http_body(plain.port) == b"plain A\n", "the running binary serves on"
        old.proc.send_signal(signal.SIGTERM)
        assert old.exit_code(30) == 0
    finally:
        old.kill()
    new = serve(site, tmp_path, "new")
    try:
        assert http_body(plain.port) == b"plain B\n"
    finally:
        new.proc.send_signal(signal.SIGTERM)
        assert new.exit_code(30) == 0
        new.kill()
    back = tmp_path / "back"
    build_ok(blitzc, plain.spec, back, cache_dir)
    assert version_hash(back) == plain.hash
    again = tmp_path / "again"
    r = build_ok(blitzc, plain.spec, again, cache_dir)
    assert "Compiling" not in r.stderr, f"an identical spec compiled again:\n{r.stderr}"
    assert filecmp.cmp(back, again, shallow=False)


def _build_at_once(blitzc: Path, cache_dir: Path, specs: list[Path], folder: Path) -> list[tuple[str, str]]:
    """Starts one `blitzc build` per spec at the same moment; returns, per
    spec, (hash blitzc announced, hash the binary it wrote reports)."""
    started = []
    for i, spec in enumerate(specs):
        err, binary = folder / f"build-{i}.err", folder / f"bin-{i}"
        with open(err, "w") as stderr:
            proc = subprocess.Popen([str(blitzc), "build", str(spec), "-o", str(binary)], env=blitz_env(cache_dir),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        started.append((proc, err, binary))
    out = []
    for proc, err, binary in started:
        rc = proc.wait(timeout=BLITZC_BUILD_TIMEOUT)
        assert rc == 0, err.read_text()
        out.append((built_hash(err.read_text()), version_hash(binary)))
    return out


@pytest.mark.timeout(600)
def test_two_gateways_built_at_once_on_one_cache_each_get_their_own(blitzc, cache_dir, tmp_path):
    """Control for the test below: two specs with different gateway names
    built at once share the cache (cargo's lock serialises them) and each
    binary is its own spec's."""
    specs = [write_spec(tmp_path, f"{n}.kdl", f"bqa-parallel-{n}", PLAIN, n, port=free_port()) for n in ("a", "b")]
    for announced, got in _build_at_once(blitzc, cache_dir, specs, tmp_path):
        assert got == announced


@pytest.mark.timeout(600)
def test_two_specs_of_one_gateway_name_built_at_once_each_get_their_own(blitzc, cache_dir, tmp_path):
    """Per-site specs that keep one gateway name (or name none and share a
    file stem, `a/gateway.kdl`, `b/gateway.kdl`) built by parallel CI jobs
    on one runner: each job must get the binary of its spec. The crate
    folder is `crates/NAME` and the binary `target/release/NAME`, so the
    second job's crate is what the first job's cargo compiles, and each
    copies whatever binary is there when its cargo ends. Three rounds (each
    spec changed every round) so that a lucky interleaving does not hide it."""
    for round_ in range(3):
        specs = [write_spec(tmp_path / n, "gateway.kdl", "bqa-shared-name", PLAIN, f"{n} {round_}", port=free_port())
                 for n in ("eu1", "us1")]
        for (announced, got), spec in zip(_build_at_once(blitzc, cache_dir, specs, tmp_path), specs):
            assert got == announced, f"round {round_}: the binary for {spec} is another spec's"


# ---------------------------------------------------------------- -o and what a failure says


def test_output_into_a_missing_folder_is_created(blitzc, cache_dir, builds, tmp_path):
    out = tmp_path / "dist" / "eu1" / "gateway"
    build_ok(blitzc, builds["plain"].spec, out, cache_dir)
    assert version_hash(out) == builds["plain"].hash


def test_output_to_a_device_node_leaves_the_node(blitzc, cache_dir, builds, tmp_path):
    """`-o /dev/null` (build only to see that it builds) as root in a CI
    container replaced the system's /dev/null with a 13 MB regular file
    (found by trying it here; restored with mknod). Shown on a null device
    node made in the test's own folder."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    r = run(blitzc, "build", builds["plain"].spec, "-o", node, env=blitz_env(cache_dir))
    assert stat.S_ISCHR(node.lstat().st_mode), f"the device node was replaced (exit {r.returncode})"


def _failure_cases(tmp: Path) -> dict[str, tuple[list, dict, str]]:
    """name -> (extra argv, env changes, what the error line must name)."""
    (tmp / "a-file").write_text("")
    return {
        "cache folder unwritable": ([], {"BLITZ_CACHE_DIR": "/proc/blitz-qa-cache"}, "/proc/blitz-qa-cache"),
        "cargo not found": ([], {"CARGO": "/nonexistent/cargo"}, "cargo"),
        "output unwritable": (["-o", "/proc/blitz-qa-gw"], {}, "/proc/blitz-qa-gw"),
        "output under a file": (["-o", str(tmp / "a-file" / "gw")], {}, str(tmp / "a-file" / "gw")),
        "output with a trailing slash": (["-o", f"{tmp / 'no-such-dir'}/"], {}, str(tmp / "no-such-dir")),
    }


def test_a_missing_runtime_exits_3_naming_it(blitzc, cache_dir, builds, tmp_path):
    """Control for the test below: this failure says what it was."""
    r = run(blitzc, "build", builds["plain"].spec, "-o", tmp_path / "gw",
            env=blitz_env(cache_dir, BLITZ_RUNTIME="/nonexistent/runtime"))
    assert r.returncode == 3 and r.stdout == "", r
    assert "/nonexistent/runtime" in error_lines(r.stderr) and "BLITZ_RUNTIME" in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["cache folder unwritable", "cargo not found", "output unwritable",
                                  "output under a file", "output with a trailing slash"])
def test_a_failure_around_cargo_says_what_failed(blitzc, cache_dir, builds, tmp_path, case):
    """DESIGN.md: 3 when the build failed. A CI log must say what to fix:
    the cache folder, cargo missing from PATH, the output path. The last
    case (`-o dist/` for a folder that does not exist yet) also left a
    13 MB `dist.blitz-tmp` beside it."""
    argv, env, named = _failure_cases(tmp_path)[case]
    if not argv:
        argv = ["-o", str(tmp_path / "gw")]
    r = run(blitzc, "build", builds["plain"].spec, *argv, env=blitz_env(cache_dir, **env))
    assert r.returncode in (2, 3) and r.stdout == "", r
    assert named in error_lines(r.stderr), r.stderr
    assert not list(tmp_path.glob("*.blitz-tmp")), "a temporary file was left behind"


# ---------------------------------------------------------------- where the cache goes


def _crate_folder_of(blitzc: Path, tmp: Path, env: dict) -> set[Path]:
    """Runs a build with `CARGO=false` (it fails after writing the crate) from
    a fresh working folder; returns every `crates/bqa-where` written under tmp."""
    spec = write_spec(tmp / "spec", "where.kdl", "bqa-where", PLAIN, "where", port=18999)
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    r = run(blitzc, "build", spec, "-o", tmp / "gw", env=dict(env, CARGO="false"), cwd=work)
    assert r.returncode == 3, r
    return {p.parent for p in tmp.rglob("crates/bqa-where/Cargo.toml")}


def test_cache_folder_defaults(blitzc, tmp_path):
    """`BLITZ_CACHE_DIR`, else `$XDG_CACHE_HOME/blitz`, else `~/.cache/blitz`
    (docs/architecture.md names the last; blitzc/src/build/mod.rs all three)."""
    home = tmp_path / "home"
    cases = {
        "BLITZ_CACHE_DIR": ({"BLITZ_CACHE_DIR": str(tmp_path / "c1"), "XDG_CACHE_HOME": str(tmp_path / "x1")},
                            tmp_path / "c1"),
        "XDG_CACHE_HOME": ({"XDG_CACHE_HOME": str(tmp_path / "x2")}, tmp_path / "x2" / "blitz"),
        "HOME": ({"XDG_CACHE_HOME": None}, home / ".cache" / "blitz"),
    }
    for name, (changes, expected) in cases.items():
        env = blitz_env(None, HOME=str(home), **changes)
        got = _crate_folder_of(blitzc, tmp_path, env)
        assert got == {expected / "crates" / "bqa-where"}, (name, got)
        shutil.rmtree(expected)


@pytest.mark.parametrize("variable", ["XDG_CACHE_HOME", "BLITZ_CACHE_DIR"])
def test_an_empty_cache_variable_counts_as_unset(blitzc, tmp_path, variable):
    """The XDG base directory spec: "If $XDG_CACHE_HOME is either not set or
    empty, a default equal to $HOME/.cache should be used". Some CI images
    export such variables empty; the cache then landed in the checkout."""
    home = tmp_path / "home"
    env = blitz_env(None, **{"HOME": str(home), "XDG_CACHE_HOME": None, variable: ""})
    got = _crate_folder_of(blitzc, tmp_path, env)
    assert got == {home / ".cache" / "blitz" / "crates" / "bqa-where"}, got


# ---------------------------------------------------------------- gateway names


@pytest.mark.parametrize("how", ["file stem", "gateway name"])
def test_a_gateway_named_like_a_cargo_folder_builds(blitzc, cache_dir, builds, tmp_path, how):
    """cargo forbids binary names that are its own target folders; blitzc
    names the binary after the gateway. The control is every other build
    of this file (and `test`, `self` build, tried by hand)."""
    if how == "file stem":
        spec = tmp_path / "build.kdl"
        spec.write_text(builds["plain"].spec.read_text().replace('gateway "bqa-plain" { workers 1 }\n', ""))
    else:
        spec = write_spec(tmp_path, "site.kdl", "deps", PLAIN, "deps", port=free_port())
    assert run(blitzc, "check", spec).returncode == 0
    r = run(blitzc, "build", spec, "-o", tmp_path / "gw", env=blitz_env(cache_dir))
    assert r.returncode == 0, error_lines(r.stderr)


def _manifest_of(blitzc: Path, tmp: Path, name: str, env: dict | None = None) -> str:
    """The Cargo.toml `blitzc emit` writes for a gateway called `name` (a KDL string)."""
    spec = tmp / "named.kdl"
    spec.write_text(f'version 1\ngateway "{name}" {{ workers 1 }}\n' + PLAIN.format(port=18998)
                    + '\nroute "r" { respond 200 }\n')
    assert run(blitzc, "check", spec).returncode == 0
    r = run(blitzc, "emit", spec, "-o", tmp / "crate", env=env)
    assert r.returncode == 0, r
    return (tmp / "crate" / "Cargo.toml").read_text()


def _parsed(text: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        pytest.fail(f"the generated Cargo.toml does not parse ({e}):\n{text}")


def test_the_manifest_holds_the_template_tables(blitzc, tmp_path):
    """Control for the two tests below: an ordinary name, the runtime blitzc
    was built with (or BLITZ_RUNTIME)."""
    manifest = _parsed(_manifest_of(blitzc, tmp_path, "bqa-named"))
    assert set(manifest) == MANIFEST_TABLES
    assert manifest["bin"][0]["name"] == "bqa-named"
    assert manifest["package"]["name"] == "blitz-gateway-bqa-named"
    runtime = Path(os.environ.get("BLITZ_RUNTIME", REPO / "runtime")).resolve()
    assert manifest["dependencies"]["blitz-runtime"]["path"] == str(runtime)


@pytest.mark.parametrize("folder", ['run"time', "run\\time"], ids=["quote", "backslash"])
def test_the_manifest_names_any_runtime_folder(blitzc, tmp_path, folder):
    """BLITZ_RUNTIME (or the folder blitzc was built in) may be any path."""
    runtime = tmp_path / folder
    runtime.mkdir()
    text = _manifest_of(blitzc, tmp_path, "bqa-runtime-path", env=blitz_env(None, BLITZ_RUNTIME=str(runtime)))
    assert _parsed(text)["dependencies"]["blitz-runtime"]["path"] == str(runtime)


@pytest.mark.parametrize("name", ["two\\nlines", 'bqa\\n[badges]\\nmaintenance = { status = \\"none\\" }\\n#'],
                         ids=["newline", "added-table"])
def test_a_gateway_name_cannot_change_the_manifest(blitzc, tmp_path, name):
    """`check` accepts any string as the name (docs/spec.md section 4); the
    Rust code quotes it safely (prettyplease), the manifest does not: a name
    can add any table to the crate blitzc builds — a dependency with a build
    script included."""
    text = _manifest_of(blitzc, tmp_path, name)
    assert set(_parsed(text)) == MANIFEST_TABLES, text


# ---------------------------------------------------------------- emit


@pytest.mark.timeout(600)
def test_emit_is_deterministic_and_builds_on_its_own(blitzc, cache_dir, builds, tmp_path):
    """The crate from a relative and an absolute spec path, from two working
    folders, is byte for byte the same; cargo alone builds it (here into the
    cache's target folder, so only the crate compiles) without a warning,
    into a binary with the spec's hash. Not documented: the manifest names
    the runtime by its absolute path (the source tree blitzc was built
    from, or BLITZ_RUNTIME), so the crate builds where that tree exists."""
    spec = write_spec(tmp_path / "spec", "emitted.kdl", "bqa-emitted", PLAIN, "emitted", port=free_port())
    first = run(blitzc, "emit", "emitted.kdl", "-o", tmp_path / "one", cwd=spec.parent)
    second = run(blitzc, "emit", spec, "-o", tmp_path / "two", cwd=REPO)
    assert first.returncode == 0 and second.returncode == 0, (first, second)
    compared = filecmp.dircmp(tmp_path / "one", tmp_path / "two")
    assert not (compared.diff_files or compared.left_only or compared.right_only), compared.report()
    assert filecmp.cmpfiles(tmp_path / "one" / "src", tmp_path / "two" / "src", ["main.rs", "gateway.rs"],
                            shallow=False)[0] == ["main.rs", "gateway.rs"]
    runtime = Path(tomllib.loads((tmp_path / "one" / "Cargo.toml").read_text())
                   ["dependencies"]["blitz-runtime"]["path"])
    assert runtime.is_absolute() and (runtime / "Cargo.toml").is_file(), runtime
    target = cache_dir / "target"
    r = run("cargo", "build", "--release", "--manifest-path", tmp_path / "one" / "Cargo.toml",
            "--target-dir", target)
    assert r.returncode == 0, r.stderr
    assert not cargo_warnings(r.stderr), r.stderr
    assert version_hash(target / "release" / "bqa-emitted") == emitted_hash(tmp_path / "one")


def test_emit_over_its_own_crate_updates_it(blitzc, tmp_path):
    """Control for the test below: emitting a changed spec into the folder
    of an earlier emit rewrites the crate."""
    out = tmp_path / "crate"
    spec = write_spec(tmp_path, "a.kdl", "bqa-reemit", PLAIN, "one", port=18997)
    assert run(blitzc, "emit", spec, "-o", out).returncode == 0
    first = emitted_hash(out)
    spec = write_spec(tmp_path, "a.kdl", "bqa-reemit", PLAIN, "two", port=18997)
    assert run(blitzc, "emit", spec, "-o", out).returncode == 0
    assert emitted_hash(out) != first


def test_emit_does_not_overwrite_a_crate_it_did_not_write(blitzc, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    mine = {"Cargo.toml": '[package]\nname = "mine"\nversion = "0.1.0"\n', "src/main.rs": 'fn main() {}\n'}
    for rel, text in mine.items():
        (project / rel).write_text(text)
    spec = write_spec(tmp_path, "a.kdl", "bqa-clobber", PLAIN, "x", port=18996)
    r = run(blitzc, "emit", spec, "-o", project)
    assert {rel: (project / rel).read_text() for rel in mine} == mine, f"exit {r.returncode}, files overwritten"


def test_spec_hash_is_the_model_not_the_file_nor_its_folder(blitzc, tmp_path):
    """What `--version`'s hash covers (DESIGN.md: "the spec's hash"): the
    span-free model (`Spec::canonical_json`), so comments (test_contract_qa)
    and the syntax (test_examples) do not change it, and neither does the
    folder the spec lies in, although the binary embeds certificate paths
    resolved against it: two builds with one hash can read other files.
    Order that carries meaning (routes are first-match) changes it."""
    hashes, certs = {}, {}
    for site in ("eu1", "us1"):
        folder = tmp_path / site
        spec = write_spec(folder, "edge.kdl", "bqa-hash", TLS_H1, "hash", tls=18995)
        shutil.copy(FIXTURES / "edge.crt", folder / "cert.pem")
        shutil.copy(FIXTURES / "edge.key", folder / "key.pem")
        r = run(blitzc, "emit", spec, "-o", folder / "crate")
        assert r.returncode == 0, r
        hashes[site] = emitted_hash(folder / "crate")
        certs[site] = str(folder / "cert.pem") in (folder / "crate" / "src" / "gateway.rs").read_text()
    assert hashes["eu1"] == hashes["us1"]
    assert certs == {"eu1": True, "us1": True}, "each binary reads the certificate beside its own spec"
    # Two overlapping routes (GET /x/y goes to the first), in both orders.
    routes = {"b": 'route "b" {\n    match { path-prefix "/x"; method "GET" }\n    respond 201\n}\n',
              "c": 'route "c" {\n    match { path-prefix "/x/y" }\n    respond 202\n}\n'}
    original = (tmp_path / "eu1" / "edge.kdl").read_text()
    for order in ("bc", "cb"):
        spec = tmp_path / "eu1" / f"{order}.kdl"
        spec.write_text(original + "".join(routes[r] for r in order))
        r = run(blitzc, "emit", spec, "-o", tmp_path / order)
        assert r.returncode == 0, r.stderr
    assert emitted_hash(tmp_path / "bc") != emitted_hash(tmp_path / "cb")


# ---------------------------------------------------------------- lean binaries


def _linked_crates(binary: Path) -> set[str]:
    """Which of rustls and h2 have symbols in the binary (demangled `nm`)."""
    names = run("nm", "-C", binary, timeout=60).stdout
    return {crate for crate in ("rustls", "h2") if re.search(rf"(^|[\s<(&,]){crate}::", names, re.MULTILINE)}


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_binaries_link_tls_and_h2_only_when_the_spec_uses_them(builds):
    """DESIGN.md "Lean binaries": blitzc enables only the runtime features
    the spec uses, so an HTTP/1.1-only gateway carries neither rustls nor h2."""
    linked = {kind: _linked_crates(b.binary) for kind, b in builds.items()}
    assert linked == {"plain": set(), "h2c": {"h2"}, "tls": {"rustls"}, "full": {"rustls", "h2"}}, linked
    sizes = {kind: b.binary.stat().st_size for kind, b in builds.items()}
    assert sizes["plain"] < sizes["full"], sizes


# ---------------------------------------------------------------- blitzc run


@pytest.mark.timeout(600)
def test_run_is_the_gateway_sigint_drains_it_and_its_failure_is_runs(blitzc, cache_dir, builds, tmp_path):
    """`blitzc run` builds, then execs the gateway: the process blitzc
    started is the gateway (no blitzc in between to orphan it or to swallow
    a signal), SIGINT (Ctrl-C) drains it to exit 0, and a gateway that
    cannot start (its port taken) makes `run` exit 1, as the gateway does
    (docs/operations.md: 1 when the gateway cannot start)."""
    plain = builds["plain"]
    env = blitz_env(cache_dir)
    gw = WatchedProcess([blitzc, "run", plain.spec, "--", "--grace", "5s", "--admin-socket", tmp_path / "run.sock"],
                        wait_for=None, env=env)
    try:
        gw.wait_line("listening on", timeout=BLITZC_BUILD_TIMEOUT)
        exe = Path(os.readlink(f"/proc/{gw.pid}/exe"))
        assert exe.parent == (cache_dir / "bin").resolve() and exe.name != "blitzc", exe
        assert http_body(plain.port) == b"plain A\n"
        gw.proc.send_signal(signal.SIGINT)
        assert gw.exit_code(30) == 0, gw.text()
    finally:
        gw.kill()
    with socket.socket() as taken:
        # SO_REUSEADDR: the gateway's side of the connection above may be in TIME_WAIT.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", plain.port))
        taken.listen()
        r = run(blitzc, "run", plain.spec, "--", "--admin-socket", tmp_path / "run2.sock", env=env)
    assert r.returncode == 1 and "in use" in r.stderr and r.stdout == "", r

