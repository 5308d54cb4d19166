"""Helpers for tests of spec-built gateways (`blitzc build`, `blitzc dev`):
build a spec, serve it on a known port, copy an example with its ports
replaced, and an origin that says who it is and what it was sent.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from support.gateway import REPO, _register, free_port
from support.origin import Origin, respond

BLITZC_BUILD_TIMEOUT = 1800


def blitz_env(cache_dir: Path | None, **changes: str | None) -> dict:
    """os.environ with BLITZ_CACHE_DIR (unless None) and `changes` (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if k != "BLITZ_CACHE_DIR"}
    if cache_dir is not None:
        env["BLITZ_CACHE_DIR"] = str(cache_dir)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def named_origin(name: str) -> Origin:
    """An origin that answers `<name> <METHOD> <target>` and echoes what it got as JSON headers."""
    origin = Origin()

    def handler(req, conn):
        seen = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        body = f"{name} {req.method} {req.target}\n".encode()
        return respond(conn, req, 200, body, headers=(f"x-origin: {name}", f"x-seen: {json.dumps(seen)}"))

    origin.handler = handler
    return origin


class Served:
    """A gateway process (compiled binary or `blitzc dev`) on a known port."""

    def __init__(self, argv: list[str], port: int, env: dict, cwd: Path | None = None):
        self.port = port
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            start_new_session=True, cwd=cwd,
        )
        _register(self.proc)
        ready = threading.Event()

        def read():
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if line.startswith("listening on"):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 600  # `blitzc dev` may build nothing, a binary nothing either
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start:\n" + "\n".join(self.lines))

    def get(self, path: str, method: str = "GET", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), body

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=40)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def spec_copy(tmp_path: Path, name: str, ports: dict[int, int]) -> Path:
    """examples/NAME with every `127.0.0.1:PORT` of `ports` replaced."""
    text = (REPO / "examples" / name).read_text()
    for old, new in ports.items():
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    path = tmp_path / name
    path.write_text(text)
    return path


def build(blitzc: Path, spec: Path, out: Path, cache_dir: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`blitzc build SPEC -o OUT`, run in `cwd` (SPEC may be relative to it)."""
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    return subprocess.run(
        [str(blitzc), "build", str(spec), "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=BLITZC_BUILD_TIMEOUT, cwd=cwd,
    )


def build_with_ports(blitzc: Path, cache_dir: Path, folder: Path, name: str, template: str,
                     port_names, **values) -> tuple[Path, dict[str, int]]:
    """Formats `template` with a free port per name in `port_names` (and
    `values`), writes it as `folder/name.kdl`, builds it (the build must
    succeed) and returns the binary and the ports."""
    ports = {n: free_port() for n in port_names}
    spec = folder / f"{name}.kdl"
    spec.write_text(template.format(**values, **ports))
    out = folder / f"{name}-gateway"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    return out, ports
