"""A review of the blitzc and spec-built parts of fb05990..94b59ba, with the
real `blitzc` and a gateway it builds:

- `blitzc/src/lib.rs::check_path` / `not_utf8`: a spec that is not UTF-8 (a
  bad byte in a KDL comment, in TOML, at offset 0, at the very end, a UTF-16
  file) is one B001/B002 diagnostic at its first bad byte, in every format
  and from every command (check/route/build/emit/dev/run), with the exit
  code of DESIGN.md's table (check/build/emit/dev/run 1; route 2, as for any
  spec with errors); a UTF-8 BOM is still accepted;
- `main.rs::check`: several specs with one missing still report the others'
  diagnostics, and exit 2;
- `lb/endpoint.rs::hash_key` -> `None` (consistent-hash without its key
  header): such requests are spread over the ring by weight, requests with
  the header still stick, and a retry of a keyless request goes to another
  endpoint;
- `handoff/mod.rs::default_socket_path`: a relative `XDG_RUNTIME_DIR` is
  ignored (the control socket goes to /tmp), an absolute one is used.

test_differential_lb_qa.py already checks that keyless requests spread over
equal weights; this file adds the weights and the retries.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from support.blitzc import Served, blitz_env, build_with_ports, named_origin
from support.origin import Origin, respond

RUN_BOUND = 60  # how long a blitzc command may take here (dev/run of a bad spec build nothing)

GOOD = Path(__file__).resolve().parents[2] / "examples" / "quickstart.kdl"


# ------------------------------------------------------------- not UTF-8
def bad_specs(folder: Path) -> dict[str, tuple[Path, str, tuple[int, int], str]]:
    """Specs that are not UTF-8: path, the code, the (line, column) of the
    first bad byte, and that byte as the label names it."""
    good = GOOD.read_bytes()
    cases = {
        "kdl-comment": ("s.kdl", good + b"// caf\xe9\n", "B001", (good.count(b"\n") + 1, 7), "0xE9"),
        "kdl-offset-0": ("z.kdl", b"\xff" + good, "B001", (1, 1), "0xFF"),
        "kdl-at-the-end": ("e.kdl", good + b"\xc3", "B001", (good.count(b"\n") + 1, 1), "0xC3"),
        "utf16": ("u.kdl", good.decode().encode("utf-16"), "B001", (1, 1), "0xFF"),
        "toml": ("t.toml", b'version = 1\nname = "caf\xe9"\n', "B002", (2, 12), "0xE9"),
    }
    out = {}
    for name, (file, data, code, pos, byte) in cases.items():
        path = folder / file
        path.write_bytes(data)
        out[name] = (path, code, pos, byte)
    return out


def run(blitzc: Path, *args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(blitzc), *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=RUN_BOUND, env=env)


@pytest.mark.parametrize("case", ["kdl-comment", "kdl-offset-0", "kdl-at-the-end", "utf16", "toml"])
def test_check_places_one_diagnostic_on_the_first_bad_byte(blitzc, tmp_path, case):
    path, code, (line, col), byte = bad_specs(tmp_path)[case]
    r = run(blitzc, "check", "--format", "json", path.name, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "panicked" not in r.stderr
    found = json.loads(r.stdout)["diagnostics"]
    assert [d["code"] for d in found] == [code], found
    d = found[0]
    assert (d["line"], d["column"]) == (line, col), d
    assert byte in json.dumps(d), d
    gh = run(blitzc, "check", "--format", "github", path.name, cwd=tmp_path)
    assert f"line={line},col={col},title={code}" in gh.stdout, gh.stdout


@pytest.mark.parametrize("command, code", [
    (["route", "{spec}", "GET", "http://a/"], 2),
    (["build", "{spec}", "-o", "out-bin"], 1),
    (["emit", "{spec}", "-o", "out-crate"], 1),
    (["dev", "{spec}"], 1),
    (["run", "{spec}"], 1),
])
def test_every_command_on_a_spec_that_is_not_utf8_reports_it_and_exits_by_the_table(
    blitzc, cache_dir, tmp_path, command, code
):
    path, _, (line, col), _ = bad_specs(tmp_path)["kdl-comment"]
    r = run(blitzc, *[a.format(spec=path.name) for a in command], cwd=tmp_path, env=blitz_env(cache_dir))
    text = r.stdout + r.stderr
    assert r.returncode == code, text
    assert "panicked" not in text
    assert "B001" in text and f"{path.name}:{line}:{col}" in text, text
    assert not (tmp_path / "out-bin").exists() and not (tmp_path / "out-crate").exists()


def test_a_utf8_bom_is_still_accepted(blitzc, tmp_path):
    (tmp_path / "bom.kdl").write_bytes(b"\xef\xbb\xbf" + GOOD.read_bytes())
    r = run(blitzc, "check", "bom.kdl", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_several_specs_with_one_missing_report_the_others_and_exit_2(blitzc, tmp_path):
    path, _, _, _ = bad_specs(tmp_path)["kdl-comment"]
    (tmp_path / "good.kdl").write_bytes(GOOD.read_bytes())
    r = run(blitzc, "check", "--format", "json", path.name, "missing.kdl", "good.kdl", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "missing.kdl" in r.stderr
    found = json.loads(r.stdout)["diagnostics"]
    assert [(Path(d["file"]).name, d["code"]) for d in found] == [(path.name, "B001")], r.stdout
    # Only good specs and one missing: still 2, not 0.
    r = run(blitzc, "check", "good.kdl", "missing.kdl", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr


# ------------------------------------------------ consistent-hash without a key
SPEC = """
version 1
gateway "{gateway_name}" {{
    workers 1
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
}}
upstream "weighted" {{
    balance "consistent-hash" key="header:x-user"
    server "127.0.0.1:{a}" weight=1
    server "127.0.0.1:{b}" weight=1
    server "127.0.0.1:{c}" weight=2
}}
upstream "retried" {{
    balance "consistent-hash" key="header:x-user"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{busy}"
    retry attempts=1 on="503"
}}
route "weighted" {{
    match {{ path-prefix "/weighted/" }}
    proxy "weighted"
}}
route "retried" {{
    match {{ path-prefix "/retried/" }}
    proxy "retried"
}}
"""


def busy_origin(seen: list) -> Origin:
    """An origin that answers every request 503 (a retry condition)."""
    origin = Origin()

    def handler(req, conn):
        seen.append(req.target)
        return respond(conn, req, 503, b"busy\n", headers=("x-origin: busy",))

    origin.handler = handler
    return origin


@pytest.fixture(scope="module")
def hash_gateway(blitzc, cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hash")
    origins = {n: named_origin(n) for n in "abc"}
    busy_seen: list = []
    origins["busy"] = busy_origin(busy_seen)
    ports = {n: int(o.addr.rsplit(":", 1)[1]) for n, o in origins.items()}
    binary, built = build_with_ports(blitzc, cache_dir, folder, "hash", SPEC, ["gw"], gateway_name=f"qa-r-hash-{os.getpid()}",
                                     **ports)
    served = Served([str(binary)], built["gw"], blitz_env(cache_dir))
    yield served, busy_seen
    served.stop()
    for o in origins.values():
        o.stop()


def picks(served: Served, path: str, n: int, headers: dict | None = None) -> Counter:
    seen = Counter()
    for _ in range(n):
        status, fields, _ = served.get(path, headers=headers)
        seen[(status, fields.get("x-origin"))] += 1
    return seen


def test_keyless_requests_spread_over_the_ring_by_weight(hash_gateway):
    """400 requests without `x-user` over weights 1:1:2: each server's share
    is within wide bounds of 100/100/200 (the ring places 2x the points for
    c; a bound missed by chance is far below 1e-6)."""
    served, _ = hash_gateway
    seen = picks(served, "/weighted/x", 400)
    per = {name: seen[(200, name)] for name in "abc"}
    assert sum(per.values()) == 400, seen
    assert 50 <= per["a"] <= 160 and 50 <= per["b"] <= 160, per
    assert 130 <= per["c"] <= 280, per


def test_requests_with_the_key_header_still_stick(hash_gateway):
    served, _ = hash_gateway
    for user in ("alice", "bob", "carol"):
        seen = picks(served, "/weighted/x", 10, {"x-user": user})
        assert len(seen) == 1, (user, seen)


def test_a_retry_of_a_keyless_request_goes_to_another_endpoint(hash_gateway):
    """Keyless requests land on the busy server about half the time; its
    503 is retried, and the retry must go to the other server (the one try
    allowed), so every request is answered 200 by `a`."""
    served, busy_seen = hash_gateway
    before = len(busy_seen)
    seen = picks(served, "/retried/x", 40)
    assert len(busy_seen) > before, "no keyless request reached the busy server: the retry went untested"
    assert seen == Counter({(200, "a"): 40}), seen


# ---------------------------------------------------------- XDG_RUNTIME_DIR
XDG_SPEC = """
version 1
gateway "{gateway_name}" {{
    workers 1
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
}}
route "ok" {{
    match {{ path-prefix "/" }}
    respond 200 body="ok\\n"
}}
"""


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_the_control_socket_ignores_a_relative_xdg_runtime_dir(blitzc, cache_dir, tmp_path, relative):
    name = f"qa-r-xdg-{os.getpid()}-{int(relative)}"
    binary, ports = build_with_ports(blitzc, cache_dir, tmp_path, "xdg", XDG_SPEC, ["gw"], gateway_name=name)
    (tmp_path / "run").mkdir()
    xdg = "run" if relative else str(tmp_path / "run")
    served = Served([str(binary)], ports["gw"], blitz_env(cache_dir, XDG_RUNTIME_DIR=xdg), cwd=tmp_path)
    try:
        in_xdg = tmp_path / "run" / f"blitz-{name}.sock"
        in_tmp = Path("/tmp") / f"blitz-{name}.sock"
        deadline = time.monotonic() + 10
        while not (in_xdg.exists() or in_tmp.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if relative:
            assert in_tmp.exists() and not in_xdg.exists(), served.lines
        else:
            assert in_xdg.exists() and not in_tmp.exists(), served.lines
    finally:
        served.stop()
