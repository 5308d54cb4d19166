"""An audit of /work/shared/DESIGN.md read clause by clause: what no other test
pinned yet, checked against the real `blitzc`, a real built gateway, real
clients and real signals.

Already pinned elsewhere (not repeated here): the exit codes, streams and
four `--format`s of `check`, `route`, `emit`, `build`, `run`, `dev`
(test_contract_qa.py), `GATEWAY --version`, SIGTERM/SIGINT drains, `--grace`,
SIGHUP certificate reload, `LISTEN_FDS`, upgrades under load and the default
control socket (test_contract_qa.py, test_contract.py, tests/runtime/
test_upgrade*.py), the build cache, `-o` and lean binaries
(test_build_contract_qa.py, test_review_build2_qa.py), the driver flag of
hello_gateway (tests/runtime/test_lifecycle.py).

What this file adds, each from the DESIGN.md sentence in its docstring:

- README's quick start: `cargo run --release -p blitzc -- run
  examples/quickstart.kdl` serves `/hello` and `/docs/` and Ctrl-C (SIGINT
  to the process group) drains it to exit 0; `.ci/run` runs exactly the
  README's test command (read, not run: the whole suite is not for here);
- the compiler: a spec the user may not read is an IO error (exit 2) for
  every command; `blitzc dev` needs no cargo at all; `--profile release|max`
  reaches cargo (recorded by a stand-in cargo: a fat-LTO build is too slow
  for 2 cores) and the emitted manifest defines both profiles; `check` of
  the 5,000-route bench spec reports exactly the routes planted as shadowed;
- what `emit` writes: the templates' files, the runtime's `Gateway` trait
  implemented with static dispatch (no `dyn` in generated code);
- the generated binary: one pinned worker per core (`--workers auto`, within
  the CPUs it may use), each with its own `SO_REUSEPORT` listening socket
  per listener; io_uring refused by a seccomp filter (as container profiles
  do: EPERM, or ENOSYS) falls back to the poll driver and says so; the
  default grace period is 30 s;
- the performance method as bench/ implements it (peer configs and load
  tools read from the files, nothing measured).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
from support.blitzc import BLITZC_BUILD_TIMEOUT, blitz_env, spec_copy
from support.client import RawConn
from support.gateway import REPO, WatchedProcess, free_port
from support.origin import Origin
from support.waits import wait_until

AUDIT_SPEC = """version 1
gateway "qa-design-audit" {{ workers 2 }}
listener "first" {{ bind "127.0.0.1:{first}" }}
listener "second" {{ bind "127.0.0.1:{second}" }}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
route "hi" {{
    match {{ path "/hi" }}
    respond 200 body="hi\\n" content-type="text/plain"
}}
route "origin" {{ proxy "origin" }}
"""

# A seccomp filter, installed by a tiny launcher that then execs the gateway:
# the three io_uring system calls fail with the errno given, everything else
# is allowed (x86_64 numbers; another architecture is let through unfiltered,
# and the test skips there).
SECCOMP_LAUNCHER = r"""
import ctypes, os, struct, sys
errno_value, argv = int(sys.argv[1]), sys.argv[2:]
LD_ABS_W, JEQ_K, RET_K = 0x20, 0x15, 0x06
def ins(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
program = b"".join([
    ins(LD_ABS_W, 0, 0, 4), ins(JEQ_K, 0, 5, 0xC000003E),      # arch == x86_64, else allow
    ins(LD_ABS_W, 0, 0, 0),                                     # the system call number
    ins(JEQ_K, 2, 0, 425), ins(JEQ_K, 1, 0, 426), ins(JEQ_K, 0, 1, 427),  # io_uring_setup/enter/register
    ins(RET_K, 0, 0, 0x00050000 | errno_value),                 # SECCOMP_RET_ERRNO
    ins(RET_K, 0, 0, 0x7FFF0000),                               # SECCOMP_RET_ALLOW
])
buf = ctypes.create_string_buffer(program)
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = SockFprog(len(program) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS"
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, f"PR_SET_SECCOMP: errno {ctypes.get_errno()}"
os.execv(argv[0], argv)
"""


def run(*argv, env=None, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=False, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- README quick start and CI


def test_ci_runs_exactly_the_readme_test_command():
    """README: "Run the whole test suite ... `tests/run.sh`" and "`.ci/run`
    runs exactly that command". Read, not run (the whole suite)."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert "tests/run.sh\n" in blocks, blocks
    ci = REPO / ".ci" / "run"
    for script in (ci, REPO / "tests" / "run.sh"):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert script.read_text().startswith("#!"), f"{script} has no interpreter line"
    commands = [line.strip() for line in ci.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    # Strict mode and moving to the repository root are not another command;
    # what is left must be the README's command, run in place of the script.
    assert commands[-1] == "exec tests/run.sh", commands
    assert all(c.startswith(("set ", "cd ")) for c in commands[:-1]), commands


@pytest.mark.timeout(1200)
def test_readme_quick_start_serves_and_ctrl_c_drains(blitzc, cache_dir, tmp_path):
    """README's quick start: `cargo run --release -p blitzc -- run
    examples/quickstart.kdl` on 127.0.0.1:8080, then `curl -i
    localhost:8080/hello` and `/docs/`; "Ctrl-C drains and stops it". The
    spec is copied with a free port in place of 8080 (other suites may hold
    8080); the command is the README's otherwise, run from the repository."""
    readme = (REPO / "README.md").read_text()
    assert "cargo run --release -p blitzc -- run examples/quickstart.kdl\n" in readme
    assert "curl -i localhost:8080/hello" in readme and "localhost:8080/docs/" in readme
    assert 'bind "127.0.0.1:8080"' in (REPO / "examples" / "quickstart.kdl").read_text()
    port = free_port()
    spec = spec_copy(tmp_path, "quickstart.kdl", {8080: port})
    gw = WatchedProcess(["cargo", "run", "--release", "-q", "-p", "blitzc", "--", "run", spec],
                        wait_for=None, env=blitz_env(cache_dir), cwd=REPO)
    try:
        gw.wait_line(rf"listening on 127\.0\.0\.1:{port}\b", timeout=BLITZC_BUILD_TIMEOUT)

        def curl(path: str) -> tuple[str, str]:
            r = run("curl", "-si", "--max-time", "10", f"http://localhost:{port}{path}")
            assert r.returncode == 0, r
            head, _, body = r.stdout.partition("\n\n")  # text mode turned CRLF into LF
            return head, body

        head, body = curl("/hello")
        assert head.startswith("HTTP/1.1 200"), head
        assert re.search(r"(?im)^x-served-by: blitz$", head) and body == "hello from blitz\n", (head, body)
        head, _ = curl("/docs/")
        assert head.startswith("HTTP/1.1 301"), head
        assert re.search(r"(?im)^location: https://example\.com/docs/$", head), head
        # Ctrl-C: the terminal sends SIGINT to the whole foreground process group.
        os.killpg(gw.pid, signal.SIGINT)
        assert gw.exit_code(40) == 0, gw.text()
        assert "drained" in gw.text(), gw.text()
    finally:
        gw.kill()


# ---------------------------------------------------------------- the compiler


def _as_nobody() -> list[str]:
    """A prefix running a command as an unprivileged user: root reads any file,
    a user does not (the case of a spec checked out with mode 600 by another
    account on a CI runner)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_folder():
    """A folder anyone may enter and write (pytest's tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="blitz-audit-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("kind", ["unreadable", "folder"])
@pytest.mark.parametrize(
    "command",
    [["check", "{spec}"], ["check", "--format", "json", "{spec}"], ["emit", "{spec}", "-o", "{folder}/crate"],
     ["build", "{spec}", "-o", "{folder}/gw"], ["route", "{spec}", "GET", "/"], ["dev", "{spec}"],
     ["run", "{spec}"]],
    ids=lambda c: " ".join(c[:3]),
)
def test_a_spec_that_cannot_be_read_is_an_io_error(blitzc, open_folder, command, kind):
    """DESIGN.md, the compiler's table: exit "2 usage or IO error" (`emit`
    "as check"; `build`, `run`, `dev`, `route` read the spec first). A spec
    the user may not read, or a folder named as the spec: exit 2, the
    message on stderr naming it, nothing on stdout, nothing written."""
    spec = open_folder / "private.kdl"
    if kind == "folder":
        spec.mkdir()
        prefix, reason = [], "s a directory"
    else:
        spec.write_text(AUDIT_SPEC.format(first=free_port(), second=free_port(), origin=free_port()))
        spec.chmod(0o600)
        prefix, reason = _as_nobody(), "ermission denied"
    env = blitz_env(open_folder / "cache", CARGO="false", HOME=str(open_folder))
    argv = [a.format(spec=spec, folder=open_folder) for a in command]
    r = run(*prefix, blitzc, *argv, env=env, cwd=open_folder, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    assert "private.kdl" in r.stderr and reason in r.stderr, r.stderr
    assert sorted(p.name for p in open_folder.iterdir()) == ["private.kdl"], list(open_folder.iterdir())


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_check_of_several_specs_shows_every_readable_ones_diagnostics_when_one_is_missing(blitzc, tmp_path, fmt):
    """DESIGN.md: `check SPEC...` gives "all diagnostics at once" and exits 2
    on an IO error. One missing file among several used to stop the run
    before any output: the pull request's other errors stayed hidden. Now
    the readable specs are reported (examples/bad/gateway.kdl has six
    errors), the missing one named on stderr, and the exit is still 2."""
    bad = REPO / "examples" / "bad" / "gateway.kdl"
    missing = tmp_path / "missing.kdl"
    r = run(blitzc, "check", "--format", fmt, bad, missing, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "missing.kdl" in r.stderr, r.stderr
    if fmt == "json":
        diagnostics = json.loads(r.stdout)["diagnostics"]
        assert len([d for d in diagnostics if d["severity"] == "error"]) == 6, diagnostics
    else:
        assert "B021" in r.stdout, r.stdout
    alone = run(blitzc, "check", "--format", fmt, bad, timeout=60)
    assert alone.returncode == 1 and alone.stdout == r.stdout, alone


def test_dev_runs_without_cargo(blitzc, tmp_path):
    """DESIGN.md: "`blitzc dev SPEC` | run the reference interpreter, no
    cargo" ("a dev loop that starts instantly"). No cargo on PATH, CARGO
    naming a program that fails, an empty cache folder: it serves, and
    compiles nothing into the cache."""
    ports = {"first": free_port(), "second": free_port(), "origin": free_port()}
    spec = tmp_path / "dev.kdl"
    spec.write_text(AUDIT_SPEC.format(**ports))
    cache = tmp_path / "cache"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CARGO": "/bin/false", "BLITZ_CACHE_DIR": str(cache)}
    assert shutil.which("cargo", path=env["PATH"]) is None, "cargo is on the reduced PATH"
    dev = WatchedProcess([blitzc, "dev", spec], env=env, cwd=tmp_path)
    try:
        dev.wait_line(r'listener "second"')
        with RawConn(ports["second"]) as c:
            c.send(b"GET /hi HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response()
        assert (r.status, r.body) == (200, b"hi\n"), r
        assert "reference interpreter" in dev.text(), dev.text()
        dev.proc.send_signal(signal.SIGTERM)
        assert dev.exit_code(30) == 0, dev.text()
    finally:
        dev.kill()
    assert not cache.exists() or not any(cache.iterdir()), list(cache.rglob("*"))[:10]


@pytest.mark.parametrize("profile", [None, "release", "max"], ids=["default", "release", "max"])
def test_build_profile_reaches_cargo_and_the_manifest_defines_it(blitzc, tmp_path, profile):
    """DESIGN.md: "`blitzc build SPEC [-o PATH] [--profile release|max]`"
    and templates/ holding the "build profile". A fat-LTO `max` build takes
    far too long on 2 cores, so cargo is a stand-in that records its
    arguments and fails like cargo (exit 101): the build exits 3 ("build
    failed") having asked cargo for that profile, and the crate it wrote
    defines that profile."""
    record = tmp_path / "cargo-args"
    fake_cargo = tmp_path / "cargo"
    fake_cargo.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{record}'\nexit 101\n")
    fake_cargo.chmod(0o755)
    spec = tmp_path / "p.kdl"
    spec.write_text(AUDIT_SPEC.format(first=free_port(), second=free_port(), origin=free_port()))
    cache = tmp_path / "cache"
    extra = [] if profile is None else ["--profile", profile]
    r = run(blitzc, "build", spec, "-o", tmp_path / "gw", *extra, env=blitz_env(cache, CARGO=str(fake_cargo)))
    assert r.returncode == 3 and r.stdout == "", r
    args = record.read_text().splitlines()
    wanted = profile or "release"
    assert args[0] == "build", args
    assert ("--profile" in args and args[args.index("--profile") + 1] == wanted) or f"--profile={wanted}" in args \
        or (wanted == "release" and "--release" in args), args
    (manifest,) = cache.glob("crates/*/Cargo.toml")
    profiles = tomllib.loads(manifest.read_text())["profile"]
    assert wanted in profiles, profiles
    if wanted == "max":
        assert profiles["max"].get("inherits") == "release", profiles["max"]


def test_check_of_the_5000_route_bench_spec_reports_exactly_the_planted_shadows(blitzc, tmp_path):
    """DESIGN.md: "`check` of a 5,000-route spec" is a figure bench/ measures,
    and `check` reports "all diagnostics at once". bench/check-5000/gen.py
    names on stderr the routes it shadowed on purpose: `check` reports those,
    and only those, as B050, and `route` still finds the last routes."""
    gen = subprocess.run([sys.executable, REPO / "bench" / "check-5000" / "gen.py"], capture_output=True,
                         text=True, timeout=60, check=True)
    planted = set(re.findall(r"\b(h\d+-shadowed\d+)\b", gen.stderr))
    assert len(planted) >= 5, gen.stderr
    spec = tmp_path / "big.kdl"
    spec.write_text(gen.stdout)
    assert gen.stdout.count("\nroute ") + gen.stdout.startswith("route ") == 5000
    r = run(blitzc, "check", "--format", "json", spec)
    diags = json.loads(r.stdout)["diagnostics"]
    reported = {m.group(1) for d in diags if d["code"] == "B050" for m in [re.search(r"`([^`]+)`", d["message"])]}
    assert reported == planted, (reported ^ planted)
    assert {d["code"] for d in diags} == {"B050"}, {d["code"] for d in diags}
    shadow_severities = {d["severity"] for d in diags}
    assert r.returncode == (1 if "error" in shadow_severities else 0), (r.returncode, shadow_severities)
    assert run(blitzc, "route", spec, "GET", "http://nowhere.test/").stdout == "fallback\n"


# Diagnostics whose text holds what a workflow command or a URI must escape.
ODD_DIAGNOSTICS = r"""version 1
listener "h" { bind "127.0.0.1:18080" }
route "x" {
    proxy "a%0Ab\nc,d::e"
}
route "y" {
    match { }
    respond 204 body="x"
}
"""


def test_json_and_sarif_carry_the_same_fields(blitzc, tmp_path):
    """DESIGN.md: "`json` and `sarif` carry the same fields". Every field of
    each json diagnostic (code, slug, severity, message, label, help, the
    span, every related location with its label) is in the sarif result;
    the github line carries the message with `%`, CR and LF escaped."""
    spec = tmp_path / "odd.kdl"
    spec.write_text(ODD_DIAGNOSTICS)
    diags = json.loads(run(blitzc, "check", "--format", "json", spec).stdout)["diagnostics"]
    sarif = json.loads(run(blitzc, "check", "--format", "sarif", spec).stdout)["runs"][0]
    rules = {rule["id"]: rule for rule in sarif["tool"]["driver"]["rules"]}
    assert len(diags) == len(sarif["results"]) == 4, (diags, sarif["results"])
    for d, res in zip(diags, sarif["results"]):
        carried = json.dumps(res) + json.dumps(rules[res["ruleId"]])
        for field in ("message", "label", "help", "slug"):
            assert json.dumps(d[field])[1:-1] in carried, (field, d[field], res)
        assert (res["ruleId"], res["level"]) == (d["code"], d["severity"])
        region = res["locations"][0]["physicalLocation"]["region"]
        assert (region["startLine"], region["startColumn"], region["endLine"], region["endColumn"]) == (
            d["line"], d["column"], d["end_line"], d["end_column"])
        related = [(r["physicalLocation"]["region"]["startLine"], r["physicalLocation"]["region"]["startColumn"],
                    r["message"]["text"]) for r in res["relatedLocations"]]
        assert related == [(r["line"], r["column"], r["label"]) for r in d["related"]], (related, d["related"])
    first = run(blitzc, "check", "--format", "github", spec).stdout.splitlines()[0]
    assert first.startswith("::error file=") and f",line=4,col={diags[0]['column']},title=B021::" in first, first
    assert "unknown upstream `a%250Ab%0Ac,d::e`" in first, first


# ---------------------------------------------------------------- what `emit` writes


def test_emit_writes_the_templates_with_static_dispatch(blitzc, tmp_path):
    """DESIGN.md: "templates/ skeleton of the generated crate (Cargo.toml,
    main.rs, build profile)"; "Generated code implements one runtime trait
    ... with concrete types (static dispatch; no `dyn` ...)"; "formatted
    (prettyplease), checked by syn" (so no line of it is one long token run)."""
    spec = tmp_path / "e.kdl"
    spec.write_text(AUDIT_SPEC.format(first=free_port(), second=free_port(), origin=free_port()))
    out = tmp_path / "crate"
    r = run(blitzc, "emit", spec, "-o", out)
    assert r.returncode == 0, r
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    templates = {p.name for p in (REPO / "templates").iterdir() if p.is_file()}
    assert {"Cargo.toml", "src/main.rs"} <= written and templates <= {Path(w).name for w in written}, written
    manifest = tomllib.loads((out / "Cargo.toml").read_text())
    assert {"release", "max"} <= set(manifest["profile"]), manifest.get("profile")
    assert "blitz-runtime" in manifest["dependencies"], manifest["dependencies"]
    sources = {name: (out / name).read_text() for name in written if name.endswith(".rs")}
    impls = [n for n, text in sources.items() if re.search(r"^impl\b[^{]*\bGateway for \w+", text, re.MULTILINE)]
    assert len(impls) == 1, "one runtime trait, implemented once by the generated code"
    for name, text in sources.items():
        code = re.sub(r"//[^\n]*", "", text)
        assert not re.search(r"\bdyn\b", code), f"{name}: dynamic dispatch in generated code"
        assert max(len(line) for line in text.splitlines()) <= 200, f"{name} is not formatted"


# ---------------------------------------------------------------- the generated binary


@pytest.fixture(scope="module")
def audit_gateway(blitzc, cache_dir, tmp_path_factory):
    """One `blitzc build` of AUDIT_SPEC (two HTTP/1.1 listeners, a respond
    and a proxy route) and its origin."""
    folder = tmp_path_factory.mktemp("design-audit")
    origin = Origin()
    ports = {"first": free_port(), "second": free_port()}
    spec = folder / "audit.kdl"
    spec.write_text(AUDIT_SPEC.format(**ports, origin=origin.port))
    binary = folder / "gw"
    r = run(blitzc, "build", spec, "-o", binary, env=blitz_env(cache_dir), timeout=BLITZC_BUILD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    yield binary, ports, origin
    origin.stop()


def start(argv: list) -> WatchedProcess:
    """Starts a gateway of AUDIT_SPEC and waits until both listeners listen."""
    gw = WatchedProcess(argv, wait_for=None)
    gw.wait_line(r'listening on .*listener "second"')
    return gw


def stop(gw: WatchedProcess) -> int:
    try:
        if gw.proc.poll() is None:
            gw.proc.send_signal(signal.SIGTERM)
        return gw.exit_code(40)
    finally:
        gw.kill()


def get_hi(port: int) -> int:
    with RawConn(port) as c:
        c.send(b"GET /hi HTTP/1.1\r\nHost: a\r\n\r\n")
        return c.read_response().status


def worker_cpus(pid: int) -> list[str]:
    """Cpus_allowed_list of each worker thread (named blitz-worker-N)."""
    cpus = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().startswith("blitz-worker"):
            status = (task / "status").read_text()
            cpus.append(re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.MULTILINE).group(1))
    return cpus


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets the process holds (to find them in /proc/net/*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    return inodes


def listening_sockets_per_port(pid: int, ports) -> dict[int, int]:
    """How many listening TCP sockets the process holds on each port."""
    inodes = socket_inodes(pid)
    counts = dict.fromkeys(ports, 0)
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            cols = row.split()
            port = int(cols[1].split(":")[1], 16)
            if cols[3] == "0A" and port in counts and cols[9] in inodes:
                counts[port] += 1
    return counts


def test_auto_workers_are_one_per_core_pinned_each_with_its_own_sockets(audit_gateway):
    """DESIGN.md: "One worker thread per core (pinned), each with ... its own
    listening socket (`SO_REUSEPORT`)". `--workers auto` gives one worker per
    CPU this process may run on, each pinned to one of them, all different,
    and each holding one socket of every listener."""
    binary, ports, _ = audit_gateway
    allowed = sorted(os.sched_getaffinity(0))
    gw = start([binary, "--workers", "auto"])
    try:
        cpus = worker_cpus(gw.pid)
        assert len(cpus) == len(allowed), (cpus, allowed)
        assert sorted(int(c) for c in cpus) == allowed, f"each worker pinned to its own core: {cpus}"
        counts = listening_sockets_per_port(gw.pid, ports.values())
        assert set(counts.values()) == {len(allowed)}, counts
        assert get_hi(ports["first"]) == 200 and get_hi(ports["second"]) == 200
    finally:
        assert stop(gw) == 0, gw.text()


@pytest.mark.skipif(not shutil.which("taskset"), reason="needs taskset")
def test_auto_workers_stay_within_the_cpus_the_gateway_is_given(audit_gateway):
    """"One worker thread per core": the cores are those the operator gives
    the process (taskset, a cgroup cpuset); a worker pinned outside them
    would take a core reserved for something else."""
    binary, ports, _ = audit_gateway
    cpu = str(min(os.sched_getaffinity(0)))
    gw = start(["taskset", "-c", cpu, binary, "--workers", "auto"])
    try:
        assert worker_cpus(gw.pid) == [cpu]
        assert set(listening_sockets_per_port(gw.pid, ports.values()).values()) == {1}
    finally:
        assert stop(gw) == 0, gw.text()


def seccomp_argv(errno_value: int, argv: list) -> list:
    if os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter here knows x86_64 system call numbers only")
    return [sys.executable, "-c", SECCOMP_LAUNCHER, str(errno_value), *map(str, argv)]


@pytest.mark.parametrize("errno_value", [1, 38], ids=["EPERM-docker", "ENOSYS"])
def test_io_uring_refused_by_seccomp_falls_back_to_poll_and_says_so(audit_gateway, errno_value):
    """DESIGN.md: "io_uring is commonly disabled by container seccomp
    profiles: then the gateway must run on the fallback driver and log which
    driver it uses." Docker's default profile answers EPERM, others ENOSYS."""
    binary, ports, _ = audit_gateway
    gw = start(seccomp_argv(errno_value, [binary]))
    try:
        drivers = re.findall(r"worker \d+ driver=(\w+)", gw.text())
        assert drivers == ["poll"] * 2, gw.text()
        assert get_hi(ports["first"]) == 200 and get_hi(ports["second"]) == 200
    finally:
        assert stop(gw) == 0, gw.text()


def test_forced_io_uring_refused_by_seccomp_fails_naming_io_uring(audit_gateway):
    """`--driver io-uring` asks for io_uring and nothing else: where seccomp
    refuses it, the gateway must not run another driver (control: nothing
    listens, exit 1), and its message must say what failed. README:
    `--driver auto|io-uring|poll`; tests/runtime/test_lifecycle.py
    (test_io_uring_driver_or_clear_error) expects "io_uring" in it."""
    binary, _, _ = audit_gateway
    r = run(*seccomp_argv(1, [binary, "--driver", "io-uring"]), timeout=30)
    assert r.returncode == 1 and "listening on" not in r.stderr, r
    assert re.search(r"io.uring", r.stderr), r.stderr


def test_default_grace_lets_a_slow_request_finish(audit_gateway):
    """DESIGN.md: the old process "finishes in-flight requests within a grace
    period (default 30 s, flag `--grace`)". Without `--grace`, a request the
    origin answers 3 s after SIGTERM still gets its whole answer, the
    gateway says which grace it uses, and it exits 0."""
    binary, ports, origin = audit_gateway
    gw = start([binary])
    try:
        with RawConn(ports["first"], timeout=30) as c:
            c.send(b"GET /slow?delay=3 HTTP/1.1\r\nHost: a\r\n\r\n")
            assert wait_until(lambda: any(r.path == "/slow" for r in origin.requests), timeout=10)
            gw.proc.send_signal(signal.SIGTERM)
            gw.wait_line(r"draining \(grace 30s\)", timeout=10)
            r = c.read_response(timeout=30)
        assert r.status == 200 and r.body == b"GET /slow?delay=3\n", r
    finally:
        assert stop(gw) == 0, gw.text()


def control_sockets(pid: int) -> list[str]:
    """Paths of the listening Unix sockets the process holds (/proc/net/unix)."""
    inodes = socket_inodes(pid)
    paths = []
    with open("/proc/net/unix") as f:
        next(f)
        for row in f:
            cols = row.split()
            # Num RefCount Protocol Flags(__SO_ACCEPTCON=00010000) Type St Inode Path
            if len(cols) >= 8 and cols[6] in inodes and int(cols[3], 16) & 0x10000:
                paths.append(cols[7])
    return paths


DEFAULT_SOCKET = Path("/tmp/blitz-qa-design-audit.sock")


@pytest.mark.parametrize("xdg", [None, ""], ids=["unset", "empty"])
def test_default_control_socket_without_a_runtime_dir_is_in_tmp(audit_gateway, xdg, tmp_path):
    """DESIGN.md: "`admin.socket`, default `$XDG_RUNTIME_DIR/blitz-NAME.sock`
    or `/tmp/blitz-NAME.sock`". Unset or empty (the XDG Base Directory
    spec: an empty variable is as if unset): `/tmp/blitz-NAME.sock`."""
    binary, _, _ = audit_gateway
    gw = WatchedProcess([binary], wait_for=None, env=blitz_env(None, XDG_RUNTIME_DIR=xdg), cwd=tmp_path)
    try:
        gw.wait_line(r'listening on .*listener "second"')
        assert wait_until(lambda: control_sockets(gw.pid) == [str(DEFAULT_SOCKET)], timeout=10), \
            (control_sockets(gw.pid), gw.text())
    finally:
        assert stop(gw) == 0, gw.text()


def test_a_relative_runtime_dir_is_ignored(audit_gateway, tmp_path):
    """The XDG Base Directory spec: "All paths set in these environment
    variables must be absolute. If an implementation encounters a relative
    path in any of these variables it should consider the path invalid and
    ignore it." blitzc already ignores a relative XDG_CACHE_HOME
    (test_review_build2_qa.py). A relative XDG_RUNTIME_DIR puts the control
    socket under the gateway's working folder, where an `--upgrade` started
    from any other folder does not find it. Expected: `/tmp/blitz-NAME.sock`."""
    binary, _, _ = audit_gateway
    (tmp_path / "run").mkdir()
    gw = WatchedProcess([binary], wait_for=None, env=blitz_env(None, XDG_RUNTIME_DIR="run"), cwd=tmp_path)
    try:
        gw.wait_line(r'listening on .*listener "second"')
        wait_until(lambda: control_sockets(gw.pid), timeout=10)
        assert control_sockets(gw.pid) == [str(DEFAULT_SOCKET)], (control_sockets(gw.pid), gw.text())
    finally:
        assert stop(gw) == 0, gw.text()


def test_upgrade_with_nothing_running_fails_and_names_the_socket(audit_gateway, tmp_path):
    """DESIGN.md: "`GATEWAY --upgrade` takes over from the instance running
    the same spec: it connects to the control socket". With no instance
    there: exit non-zero, the socket named, nothing left listening."""
    binary, ports, _ = audit_gateway
    socket_path = tmp_path / "none.sock"
    r = run(binary, "--upgrade", "--admin-socket", socket_path, timeout=30)
    assert r.returncode != 0 and str(socket_path) in r.stderr, r
    assert "listening on" not in r.stderr and r.stdout == "", r
    with pytest.raises(OSError):
        RawConn(ports["first"], timeout=2).close()


# ---------------------------------------------------------------- performance method


def test_bench_follows_the_performance_method():
    """DESIGN.md, "Performance method": peers "nginx and haproxy, one worker
    each, keep-alive to the origin, logging off" and Blitz "one worker";
    load from `wrk` (HTTP/1.1) and `h2load` (HTTP/2); "Report ratios (Blitz /
    nginx, Blitz / direct-to-origin) and p50/p99, medians of interleaved
    runs". Read from bench/ (no benchmark is run)."""
    bench = REPO / "bench"
    for conf in sorted((bench / "conf").glob("nginx-proxy*.conf")):
        text = re.sub(r"#[^\n]*", "", conf.read_text())
        assert re.search(r"^\s*worker_processes\s+1;", text, re.MULTILINE), conf
        assert re.search(r"^\s*access_log\s+off;", text, re.MULTILINE), conf
        assert re.search(r"upstream\s+\w+\s*\{[^}]*\bkeepalive\s+\d+;", text), f"{conf}: no keep-alive to the origin"
    for conf in sorted((bench / "conf").glob("haproxy-proxy*.cfg")):
        text = re.sub(r"#[^\n]*", "", conf.read_text())
        assert re.search(r"^\s*nbthread\s+1\s*$", text, re.MULTILINE), conf
        assert not re.search(r"^\s*log\s", text, re.MULTILINE), f"{conf}: logging on"
        assert re.search(r"^\s*http-reuse\s+(always|safe|aggressive)", text, re.MULTILINE), conf
        assert not re.search(r"option\s+(httpclose|http-server-close)", text), f"{conf}: no keep-alive to the origin"
    scripts = {name: (bench / name).read_text() for name in ("run-h1.sh", "run-tls.sh")}
    for name, text in scripts.items():
        blitz_starts = [line for line in text.splitlines() if re.match(r"\s*start blitz\b", line)]
        assert blitz_starts and all("--workers 1" in line for line in blitz_starts), (name, blitz_starts)
    assert re.search(r"\bwrk -t1\b", scripts["run-h1.sh"]) and re.search(r"\bh2load\b", scripts["run-tls.sh"])
    readme = (bench / "README.md").read_text()
    for figure in ("vs direct", "vs nginx", "p50/p99", "median", "interleaved"):
        assert figure in readme, figure
    assert stat.S_IXUSR & (bench / "run-h1.sh").stat().st_mode
