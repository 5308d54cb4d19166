"""The generated binary's contract (DESIGN.md, "The generated binary";
docs/operations.md), checked on real `blitzc build`s of specs, with real
clients (curl, raw HTTP/1.1 and HTTP/2 sockets) against real origins:
HTTP/2 with prior knowledge on `h1 h2c` and `h2c`-only listeners, the
drain of connections on such listeners during an upgrade, HTTP/2 clients
in flight during an upgrade (RFC 9113 §6.8), the default control socket
path, systemd socket activation and signals.

Two builds of one KDL spec (A, B: they answer differently) and one TOML
spec without `admin` are built once per module.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import hpack
import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from support.blitzc import build, named_origin
from support.gateway import _kill_group, _register, accept_queue_length, free_port
from support.origin import Origin, default_handler, pattern_sha256, respond
from support.waits import wait_until

SPEC = """version 1
gateway "contract" {{ workers 2 }}
listener "both" {{
    bind "127.0.0.1:{both}"
    protocols "h1" "h2c"
}}
listener "h2-only" {{
    bind "127.0.0.1:{h2only}"
    protocols "h2c"
}}
listener "h1-only" {{
    bind "127.0.0.1:{h1only}"
    protocols "h1"
}}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
admin {{ socket "{socket}" }}
route "health" {{
    match {{ path "/healthz" }}
    respond 200 body="ok {label}\\n" content-type="text/plain"
}}
route "old" {{
    match {{ path-prefix "/old" }}
    redirect "https://example.com/new" status=301
}}
route "api" {{
    match {{ path-prefix "/api" }}
    request-headers {{
        set "x-step" "{label}"
        remove "cookie"
    }}
    response-headers {{ set "x-build" "{label}" }}
    proxy "origin" strip-prefix="/api"
}}
route "data" {{
    match {{ path-prefix "/sink" "/bytes" }}
    proxy "origin"
}}
"""

TOML_SPEC = """version = 1

[gateway]
name = "{name}"
workers = 1

[[listener]]
name = "public"
bind = "127.0.0.1:{port}"
protocols = ["h1", "h2c"]

[[route]]
name = "health"
respond = {{ status = 200, body = "ok toml\\n", content-type = "text/plain" }}
"""


@dataclass
class Built:
    bins: dict[str, Path]
    ports: dict[str, int]
    socket: Path
    origin: Origin
    tmp: Path
    toml_bin: Path
    toml_name: str
    toml_port: int


def _origin() -> Origin:
    """The origin's default paths (/sink, /bytes) plus /seen: what it was sent, as JSON."""
    origin = named_origin("origin")

    def handler(req, conn):
        if req.path.startswith("/seen"):
            seen = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
            return respond(conn, req, 200, json.dumps({"target": req.target, "headers": seen}).encode())
        return default_handler(req, conn)

    origin.handler = handler
    return origin


@pytest.fixture(scope="module")
def built(blitzc, cache_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    origin = _origin()
    ports = {"both": free_port(), "h2only": free_port(), "h1only": free_port()}
    sock = tmp / "control.sock"
    bins = {}
    for label in ("A", "B"):
        spec = tmp / f"contract-{label}.kdl"
        spec.write_text(SPEC.format(**ports, origin=origin.port, socket=sock, label=label))
        out = tmp / f"gw-{label}"
        result = build(blitzc, spec, out, cache_dir)
        assert result.returncode == 0, result.stderr
        bins[label] = out
    # A name of its own per run: its default control socket may be in /tmp.
    toml_name, toml_port = f"contract-{os.getpid()}", free_port()
    toml_spec = tmp / "contract.toml"
    toml_spec.write_text(TOML_SPEC.format(name=toml_name, port=toml_port))
    toml_bin = tmp / "gw-toml"
    result = build(blitzc, toml_spec, toml_bin, cache_dir)
    assert result.returncode == 0, result.stderr
    yield Built(bins, ports, sock, origin, tmp, toml_bin, toml_name, toml_port)
    origin.stop()


class Gw:
    """One gateway process (ours: stopped by pid), its stderr collected."""

    def __init__(self, argv, env=None, wait_for="listening on", **popen):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, start_new_session=True, **popen,
        )
        _register(self.proc)
        self.seen = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_line(wait_for)

    def _read(self):
        for raw in self.proc.stderr:
            with self.seen:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.seen.notify_all()
        with self.seen:
            self.seen.notify_all()

    def wait_line(self, text: str, timeout: float = 30):
        """Waits for a stderr line containing `text` (fails if the process ends first)."""
        deadline = time.monotonic() + timeout
        with self.seen:
            while True:
                # Read before looking: a process that printed the line and exited at once may have
                # it still in the pipe; it is given up on only once the reader reached the end.
                all_read = self.proc.poll() is not None and not self.reader.is_alive()
                if any(text in line for line in self.lines):
                    return
                if time.monotonic() > deadline or all_read:
                    raise AssertionError(f"no {text!r} (exit {self.proc.poll()}):\n" + "\n".join(self.lines))
                self.seen.wait(0.2)

    def stop(self, sig=signal.SIGTERM) -> int:
        """Signals the process, waits for its exit and for its stderr read to the end (its last
        lines, such as `drained, exiting`, may still be in the pipe when it has exited)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            _kill_group(self.proc)
            self.reader.join(5)


def curl(*args, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


def h2(port: int, path: str, *args) -> subprocess.CompletedProcess:
    return curl("--http2-prior-knowledge", *args, f"http://127.0.0.1:{port}{path}")


# ---------------------------------------------------------------- h2c on a spec-built binary


def test_h2c_serves_every_action_and_step_like_h1(built, tmp_path):
    gw = Gw([built.bins["A"], "--grace", "5s"])
    try:
        for port in (built.ports["both"], built.ports["h2only"]):
            r = h2(port, "/healthz", "-i")
            assert r.stdout.startswith(b"HTTP/2 200") and r.stdout.endswith(b"\r\n\r\nok A\n"), r
            head = h2(port, "/healthz", "-I")
            assert head.stdout.startswith(b"HTTP/2 200") and b"content-length: 5" in head.stdout, head
            missing = h2(port, "/nowhere", "-w", "%{http_code}", "-o", "/dev/null")
            assert missing.stdout == b"404"
            moved = h2(port, "/old/x", "-i")
            assert moved.stdout.startswith(b"HTTP/2 301") and b"location: https://example.com/new" in moved.stdout
            api = h2(port, "/api/seen/x?q=1", "-i", "-H", "cookie: secret", "-H", "x-client: 1")
            head, _, body = api.stdout.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/2 200") and b"x-build: A" in head, api
            seen = json.loads(body)
            assert seen["target"] == "/seen/x?q=1", "strip-prefix on HTTP/2"
            assert seen["headers"]["x-step"] == "A" and "cookie" not in seen["headers"]
            assert seen["headers"]["x-client"] == "1" and seen["headers"]["x-forwarded-proto"] == "http"
        # Large bodies both ways, on the h2c-only listener.
        upload = tmp_path / "upload.bin"
        upload.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
        sink = h2(built.ports["h2only"], "/sink", "--data-binary", f"@{upload}")
        assert sink.stdout.decode().split() == [str(upload.stat().st_size), hashlib.sha256(upload.read_bytes()).hexdigest()]
        down = h2(built.ports["h2only"], "/bytes/20000000")
        assert len(down.stdout) == 20_000_000 and hashlib.sha256(down.stdout).hexdigest() == pattern_sha256(20_000_000)
        # Many streams at once on few connections.
        load = subprocess.run(
            ["h2load", "-n", "2000", "-c", "2", "-m", "100", f"http://127.0.0.1:{built.ports['both']}/api/x"],
            capture_output=True, text=True, timeout=60,
        )
        assert "2000 succeeded, 0 failed, 0 errored" in load.stdout, load.stdout
    finally:
        assert gw.stop() == 0


def test_h1_client_on_an_h2c_only_listener_is_closed_not_hung(built):
    gw = Gw([built.bins["A"], "--grace", "5s"])
    try:
        with socket.create_connection(("127.0.0.1", built.ports["h2only"]), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            got = b""
            while chunk := s.recv(4096):
                got += chunk
        assert b"ok A" not in got and not got.startswith(b"HTTP/1.1 200"), got
    finally:
        assert gw.stop() == 0


# ---------------------------------------------------------------- upgrades


def _upgrade(built, label, *extra) -> Gw:
    return Gw([built.bins[label], "--upgrade", "--grace", "5s", *extra], wait_for="took over from pid")


def test_drain_gives_silent_connections_the_last_call_on_h2c_listeners_too(built):
    """A connection the old instance accepted but whose first bytes had not
    arrived when it drained is answered (`Connection: close`) if the request
    comes within the last call, on an `h1 h2c` listener as on an `h1` one
    (regression: it was closed at once on `h1 h2c`, failing the request)."""
    old = Gw([built.bins["A"], "--grace", "5s"])
    conns = {name: socket.create_connection(("127.0.0.1", built.ports[name]), timeout=10) for name in ("both", "h1only")}
    new = None
    try:
        # accepted by the old instance (one left on the kernel's queue would go to the new one), nothing sent
        assert wait_until(lambda: all(accept_queue_length(built.ports[name]) == 0 for name in conns), 10), \
            "the old instance never accepted the connections"
        new = _upgrade(built, "B")
        old.wait_line("handed off to pid")
        time.sleep(0.2)  # well inside the 1 s last call
        for name, s in conns.items():
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            got = b""
            while b"ok A\n" not in got and (chunk := s.recv(4096)):
                got += chunk
            assert got.startswith(b"HTTP/1.1 200") and b"connection: close" in got.lower(), (name, got)
        assert old.proc.wait(10) == 0
    finally:
        for s in conns.values():
            s.close()
        old.stop()
        if new:
            assert new.stop() == 0


def _preface() -> bytes:
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()


def test_h2c_streams_in_flight_during_an_upgrade_all_finish(built):
    """RFC 9113 §6.8: the old instance sends GOAWAY, and every stream up to
    the last stream id it announces is answered; streams above it were never
    processed (safe to retry). The client keeps 10 streams in flight and
    opens new ones until the final GOAWAY, as a client racing it does."""
    old = Gw([built.bins["A"], "--grace", "5s"])
    new = None
    enc = hpack.Encoder()
    s = socket.create_connection(("127.0.0.1", built.ports["h2only"]), timeout=10)
    s.sendall(_preface())
    s.settimeout(0.2)
    next_id, in_flight, answered, resets, goaways = 1, set(), 0, [], []
    buf, closed, send_failed = b"", False, False
    start = time.monotonic()
    try:
        while time.monotonic() - start < 15 and not closed:
            if new is None and answered >= 200:
                new = subprocess.Popen(
                    [str(built.bins["B"]), "--upgrade", "--grace", "5s"], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                )
                _register(new)
            while not send_failed and len(goaways) < 2 and len(in_flight) < 10:
                f = HeadersFrame(next_id)
                f.data = enc.encode([(":method", "GET"), (":path", "/healthz"), (":scheme", "http"), (":authority", "t")])
                f.flags.add("END_HEADERS")
                f.flags.add("END_STREAM")
                try:
                    s.sendall(f.serialize())
                except OSError:
                    send_failed = True
                    break
                in_flight.add(next_id)
                next_id += 2
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                closed = True
            buf += data
            while len(buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                frame.parse_body(memoryview(buf[9 : 9 + length]))
                buf = buf[9 + length :]
                reply = b""
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    reply = SettingsFrame(0, flags=["ACK"]).serialize()
                elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                    reply = PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize()
                elif isinstance(frame, DataFrame) and frame.flow_controlled_length:
                    reply = WindowUpdateFrame(0, window_increment=frame.flow_controlled_length).serialize()
                if isinstance(frame, (HeadersFrame, DataFrame)) and "END_STREAM" in frame.flags:
                    in_flight.discard(frame.stream_id)
                    answered += 1
                elif isinstance(frame, RstStreamFrame):
                    resets.append((frame.stream_id, frame.error_code))
                elif isinstance(frame, GoAwayFrame):
                    goaways.append((frame.last_stream_id, frame.error_code))
                if reply and not send_failed:
                    try:
                        s.sendall(reply)
                    except OSError:
                        send_failed = True
        assert new is not None, "the upgrade never started"
        assert closed, "the old instance closes the connection once its streams are answered"
        assert goaways and all(code == 0 for _, code in goaways), goaways
        last = goaways[-1][0]
        assert not resets, resets
        assert not [i for i in in_flight if i <= last], f"streams up to {last} unanswered: {sorted(in_flight)}"
        assert old.proc.wait(10) == 0
        assert h2(built.ports["h2only"], "/healthz").stdout == b"ok B\n"
    finally:
        s.close()
        old.stop()
        if new is not None:
            new.send_signal(signal.SIGTERM)
            assert new.wait(20) == 0


# ---------------------------------------------------------------- control socket, systemd, signals


@pytest.mark.parametrize("xdg", [True, False], ids=["XDG_RUNTIME_DIR", "tmp"])
def test_default_control_socket_path_and_upgrade_through_it(built, tmp_path, xdg):
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    if xdg:
        runtime_dir = tmp_path / "run"
        runtime_dir.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
        path = runtime_dir / f"blitz-{built.toml_name}.sock"
    else:
        path = Path(f"/tmp/blitz-{built.toml_name}.sock")
    old = Gw([built.toml_bin, "--grace", "5s"], env=env)
    new = None
    try:
        # Bound just after the `listening on` lines.
        deadline = time.monotonic() + 10
        while not path.is_socket() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
        new = Gw([built.toml_bin, "--upgrade", "--grace", "5s"], env=env, wait_for="took over from pid")
        assert old.proc.wait(10) == 0
        assert h2(built.toml_port, "/").stdout == b"ok toml\n"
        assert path.is_socket()
    finally:
        old.stop()
        if new:
            assert new.stop() == 0
    assert not path.exists(), "SIGTERM removes the control socket"


def test_socket_activation_like_systemd(built):
    """LISTEN_FDS/LISTEN_PID as systemd sets them: the gateway serves on the
    passed socket (binding the address itself would fail: the socket is not
    SO_REUSEPORT), over HTTP/1.1 and h2c."""
    spec_port = built.toml_port
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", spec_port))
    lsock.listen(128)
    fd = lsock.fileno()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["LISTEN_FDS"] = "1"
    # The shell moves the socket to fd 3 and execs the gateway with its own pid.
    script = f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ exec "$0" --grace 5s --admin-socket "$1"'
    gw = Gw(["bash", "-c", script, built.toml_bin, built.tmp / "activated.sock"], env=env, pass_fds=(fd,))
    lsock.close()
    try:
        assert curl(f"http://127.0.0.1:{spec_port}/").stdout == b"ok toml\n"
        assert h2(spec_port, "/").stdout == b"ok toml\n"
    finally:
        assert gw.stop() == 0


def test_sighup_does_not_stop_a_gateway_without_tls(built):
    gw = Gw([built.toml_bin, "--grace", "5s", "--admin-socket", built.tmp / "hup.sock"])
    try:
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert gw.proc.poll() is None, f"SIGHUP ended the gateway: {gw.proc.returncode}"
        assert curl(f"http://127.0.0.1:{built.toml_port}/").stdout == b"ok toml\n"
    finally:
        gw.stop()


def test_sigint_drains_and_exits_0(built):
    gw = Gw([built.toml_bin, "--grace", "5s", "--admin-socket", built.tmp / "int.sock"])
    assert gw.stop(signal.SIGINT) == 0
    assert any("drained, exiting" in line for line in gw.lines), gw.lines


def test_blitzc_dev_serves_h2c(blitzc, built, cache_dir):
    """The reference interpreter speaks HTTP/2 on h2c listeners too (blitzc
    enables the runtime's `h2` feature; before, prior knowledge got an empty reply)."""
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    gw = Gw([blitzc, "dev", built.tmp / "contract-A.kdl"], env=env)
    try:
        for port in (built.ports["both"], built.ports["h2only"]):
            r = h2(port, "/healthz", "-i")
            assert r.stdout.startswith(b"HTTP/2 200") and r.stdout.endswith(b"ok A\n"), r
        assert curl(f"http://127.0.0.1:{built.ports['both']}/healthz").stdout == b"ok A\n"
    finally:
        assert gw.stop() == 0
