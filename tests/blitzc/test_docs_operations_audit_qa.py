"""An operator's audit of docs/operations.md (and the operator-facing claims of
README.md and docs/architecture.md): each documented procedure followed
literally against one real `blitzc build` gateway (two HTTP/1.1 listeners,
two workers, a proxied route), real signals, real files, and the systemd
unit of examples/systemd run by hand (no systemd as PID 1 here):
`systemd-socket-activate` for `LISTEN_FDS`, a unix datagram socket this file
binds as `NOTIFY_SOCKET`, the unit's own ExecStart/ExecReload lines.

Already pinned elsewhere (not repeated): upgrades under load, the failure
table's wrong name/version, concurrent and in-progress upgrades, a new
process killed mid-handoff, removed/added listeners, SIGTERM/SIGINT around a
handoff (tests/runtime/test_upgrade*.py, test_review_upgrade2_qa.py,
test_review_lifecycle_qa.py); `--version`, usage errors (exit 2), two
activated sockets matched by address (tests/blitzc/test_contract_qa.py); the
`/tmp` default socket, `--workers auto`, the default grace
(test_design_audit_qa.py); "in use ... --upgrade" (test_lifecycle.py).

What this file adds:

- the shell recipe as written: `install -m 0755 … eu1.new && mv … eu1` while
  the old build runs (it keeps its own, now unlinked, file), `eu1 --upgrade`
  on the default control socket `/tmp/blitz-NAME.sock` (mode 0600), the four
  log lines the docs quote, the old process exiting 0, rolling back "with the
  previous binary" the same way, and the serving instance's fd count not
  growing over the upgrades (what "Checking an upgrade" says to look at);
  an absolute `XDG_RUNTIME_DIR` holding the default socket;
- the systemd unit: ExecStart under `systemd-socket-activate` (a connection
  queued before the gateway runs is served; the passed socket without
  `ReusePort` shared by the workers, the other listener bound by the
  gateway), `READY=1` with `MAINPID=` of the started process, ExecReload
  (`--upgrade --detach`) returning 0 once the new process serves, which sent
  `READY=1` with its own pid, the old one exiting 0, SIGTERM to the new main
  pid draining it; with `ReusePort=yes` (a launcher that binds like systemd)
  one socket per worker; a refused reload (a control socket of another
  gateway) exits 1 with the reason on stderr, sends no READY, and the
  running instance serves on;
- `--detach`: the detached instance keeps the caller's stderr (a pipe read
  to its end stays open until the instance exits), runs in its own process
  group with stdin closed; with nothing to take over from it exits 1 once;
- a fresh start on a control socket a live instance serves starts without
  one ("upgrades of this instance are disabled") and leaves it to its owner;
  a fresh start on a served address exits 1 with "in use … take over from
  it with --upgrade";
- an `--upgrade` by another user (the socket opened to everyone) is refused
  and the running instance serves on;
- a request in flight at a SIGTERM drain or a handoff is answered with
  `Connection: close`; SIGHUP to a gateway without TLS changes nothing;
  a spec without health checks or DNS names runs no such thread
  (architecture.md, "Background threads").

Bugs found, fixed (each test beside its control):

- a gateway whose stderr is a pipe nobody reads any more (a log reader that
  went away; `2>&1 | head`) panics on its next log line, so its control
  thread refuses every `--upgrade` and a SIGTERM, instead of a drain, ends
  the process at once with exit 101, cutting the requests in flight (Rust's
  `eprintln!` panics on EPIPE; SIGPIPE is ignored). Control: stderr a file;
- `--upgrade --detach=yes`: `--detach` with a value is taken as `--detach`
  and forwarded to the child unchanged, so every child detaches again:
  processes are spawned until fork fails and no upgrade is tried (run as
  nobody in a pid namespace with a process limit). Control: `--detach`.

About 12 s here plus the one `blitzc build` (5-20 s warm, by load).
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from support.blitzc import BLITZC_BUILD_TIMEOUT, blitz_env
from support.client import RawConn
from support.gateway import (
    REPO,
    WatchedProcess,
    _register,
    build_hello_gateway,
    free_port,
    settled_fd_count,
)
from support.origin import Origin
from support.waits import wait_until

NAME = "qa-ops-audit"
GRACE = "5s"

SPEC = """version 1
gateway "{name}" {{ workers 2 }}
listener "web" {{ bind "127.0.0.1:{web}" }}
listener "alt" {{ bind "127.0.0.1:{alt}" }}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
route "hi" {{
    match {{ path "/hi" }}
    respond 200 body="hi\\n" content-type="text/plain"
}}
route "origin" {{ proxy "origin" }}
"""

UNIT = REPO / "examples" / "systemd" / "blitz@.service"
INSTANCE = "eu1"


class Built:
    """The one `blitzc build` of SPEC, its ports and its origin."""

    def __init__(self, binary: Path, web: int, alt: int, origin: Origin):
        self.binary, self.web, self.alt, self.origin = binary, web, alt, origin


@pytest.fixture(scope="module")
def built(blitzc, cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ops-audit")
    origin = Origin()
    web, alt = free_port(), free_port()
    spec = folder / "eu1.kdl"
    spec.write_text(SPEC.format(name=NAME, web=web, alt=alt, origin=origin.port))
    binary = folder / "dist" / "eu1"
    r = subprocess.run([str(blitzc), "build", str(spec), "-o", str(binary)], check=False, capture_output=True, text=True,
                       env=blitz_env(cache_dir), timeout=BLITZC_BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    yield Built(binary, web, alt, origin)
    origin.stop()


# ---------------------------------------------------------------- helpers


def env_without(*names: str, **extra: str) -> dict:
    """os.environ without `names` (and without any inherited systemd variable), plus `extra`."""
    drop = set(names) | {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def ship(new_build: Path, installed: Path) -> None:
    """Step 3 of "From a spec change to a running binary", as written:
    `install -m 0755 NEW PATH.new && mv PATH.new PATH` (a rename)."""
    staged = installed.with_name(installed.name + ".new")
    subprocess.run(["install", "-m", "0755", str(new_build), str(staged)], check=True, timeout=10)
    subprocess.run(["mv", str(staged), str(installed)], check=True, timeout=10)


def get(port: int, path: str = "/hi") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def serves(*ports: int) -> bool:
    return all(get(p) == (200, b"hi\n") for p in ports)


def listening_sockets(pid: int, port: int) -> int:
    """How many listening TCP sockets on 127.0.0.1:`port` the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    with open("/proc/net/tcp") as f:
        next(f)
        return sum(1 for row in f if (cols := row.split())[3] == "0A"
                   and cols[1] == f"0100007F:{port:04X}" and cols[9] in inodes)


def gone(pid: int) -> bool:
    """The process exited (a zombie nobody reaped counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def stop(gw: WatchedProcess, timeout: float = 20) -> int:
    if gw.proc.poll() is None:
        gw.proc.send_signal(signal.SIGTERM)
    return gw.exit_code(timeout)


class NotifySocket:
    """What systemd's NOTIFY_SOCKET is: a unix datagram socket; every
    message received is kept as a dict of its KEY=VALUE lines."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))

    def wait_ready(self, count: int, timeout: float = 30) -> dict[str, str]:
        """The `count`-th READY=1 message."""
        def ready():
            return [m for m in self.messages if m.get("READY") == "1"]
        assert wait_until(lambda: len(ready()) >= count, timeout), f"no READY=1 #{count}: {self.messages}"
        return ready()[count - 1]

    def close(self):
        self.done.set()
        self.sock.close()


def unit_commands(lib: Path, runtime_dir: Path) -> dict[str, list[str]]:
    """ExecStart and ExecReload of examples/systemd/blitz@.service for
    instance eu1, with /usr/local/lib/blitz at `lib` and %t at `runtime_dir`."""
    commands = {}
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key in ("ExecStart", "ExecReload"):
            value = value.replace("/usr/local/lib/blitz", str(lib)).replace("%t", str(runtime_dir))
            commands[key] = shlex.split(value.replace("%i", INSTANCE))
    assert set(commands) == {"ExecStart", "ExecReload"}, commands
    return commands


def unit_setting(key: str) -> str:
    values = [line.partition("=")[2] for line in UNIT.read_text().splitlines() if line.startswith(key + "=")]
    assert len(values) == 1, (key, values)
    return values[0]


@pytest.fixture
def site(built, tmp_path):
    """/usr/local/lib/blitz with eu1 installed, and the unit's runtime folder."""
    lib = tmp_path / "lib"
    lib.mkdir()
    ship(built.binary, lib / INSTANCE)
    runtime = tmp_path / "run"
    (runtime / f"blitz-{INSTANCE}").mkdir(parents=True)  # RuntimeDirectory=blitz-%i
    return lib, runtime


# ---------------------------------------------------------------- the shell recipe


def test_shell_recipe_ship_upgrade_and_roll_back(built, site):
    """operations.md, steps 3-4 and "Upgrading from a shell": `./eu1 &` serves
    on the default control socket `/tmp/blitz-NAME.sock` (0600, no
    XDG_RUNTIME_DIR); a new build moved into place by `install` + `mv` leaves
    the running process its own file; `eu1 --upgrade` prints `listening on …`
    and "blitz: upgrade: took over from pid N", the old one "blitz: handed
    off to pid M, draining" and "blitz: drained, exiting" and exits 0.
    Rolling back is the same step with the previous binary; over the three
    upgrades the serving instance's fd count does not grow."""
    lib, _ = site
    installed = lib / INSTANCE
    previous = lib.parent / "previous-eu1"
    shutil.copy2(installed, previous)
    env = env_without("XDG_RUNTIME_DIR")
    control = Path(f"/tmp/blitz-{NAME}.sock")
    current = WatchedProcess([installed, "--grace", GRACE], env=env, cwd=lib, wait_for=r'listening on .*"alt"')
    started = [current]
    try:
        assert control.is_socket() and stat.S_IMODE(control.stat().st_mode) == 0o600, control
        assert serves(built.web, built.alt)
        fds_first = settled_fd_count(current.pid)
        for step, build in enumerate([built.binary, previous, built.binary]):
            ship(build, installed)
            assert os.readlink(f"/proc/{current.pid}/exe").endswith(" (deleted)"), \
                "mv did not leave the running process its own file"
            assert serves(built.web), "the running build stopped serving when its file was replaced"
            new = WatchedProcess([installed, "--upgrade", "--grace", GRACE], env=env, cwd=lib,
                                 wait_for=r'listening on .*"alt"')
            started.append(new)
            new.wait_line(rf"blitz: upgrade: took over from pid {current.pid}\b")
            assert current.exit_code(20) == 0, current.text()  # nothing in flight: it drains and exits
            old_log = current.text()
            assert re.search(rf"^blitz: handed off to pid {new.pid}, draining", old_log, re.MULTILINE), old_log
            assert re.search(r"^blitz: drained, exiting$", old_log, re.MULTILINE), old_log
            assert serves(built.web, built.alt), f"upgrade {step}"
            current = new
        assert control.is_socket(), "the control socket went with an old process"
        assert settled_fd_count(current.pid) <= fds_first, "the serving instance's fd count grew over upgrades"
        assert stop(current) == 0
    finally:
        for gw in started:
            gw.kill()


def test_an_absolute_xdg_runtime_dir_holds_the_default_control_socket(built, site, tmp_path):
    """The `--admin-socket` row: default `$XDG_RUNTIME_DIR/blitz-NAME.sock`
    (an absolute XDG_RUNTIME_DIR), 0600; `--upgrade` with the same
    environment finds it."""
    lib, _ = site
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = env_without(XDG_RUNTIME_DIR=str(runtime))
    old = WatchedProcess([lib / INSTANCE, "--grace", GRACE], env=env, wait_for=r'listening on .*"alt"')
    new = None
    try:
        control = runtime / f"blitz-{NAME}.sock"
        assert control.is_socket() and stat.S_IMODE(control.stat().st_mode) == 0o600, list(runtime.iterdir())
        new = WatchedProcess([lib / INSTANCE, "--upgrade", "--grace", GRACE], env=env,
                             wait_for=rf"took over from pid {old.pid}\b")
        assert old.exit_code(20) == 0
        assert stop(new) == 0
    finally:
        old.kill()
        if new:
            new.kill()


@pytest.mark.parametrize("how", ["sigterm", "upgrade"])
def test_a_request_in_flight_at_the_drain_is_answered_with_connection_close(built, site, tmp_path, how):
    """"What the old process does when it drains": "A request in flight
    (slow upload, slow origin) finishes, within the grace period; its
    response says `Connection: close`" (and the connection then ends), for a
    SIGTERM drain and for the drain after a handoff."""
    lib, _ = site
    control = tmp_path / "c.sock"
    env = env_without("XDG_RUNTIME_DIR")
    old = WatchedProcess([lib / INSTANCE, "--admin-socket", control, "--grace", GRACE], env=env,
                         wait_for=r'listening on .*"alt"')
    new = None
    try:
        with RawConn(built.web, timeout=20) as conn:
            target = f"/slow?delay=1&case=close-{how}"
            conn.send(f"GET {target} HTTP/1.1\r\nHost: ops\r\n\r\n".encode())
            assert wait_until(lambda: any(r.target == target for r in built.origin.requests), 10)
            if how == "sigterm":
                old.proc.send_signal(signal.SIGTERM)
                old.wait_line("draining")
            else:
                new = WatchedProcess([lib / INSTANCE, "--upgrade", "--admin-socket", control, "--grace", GRACE],
                                     env=env, wait_for=rf"took over from pid {old.pid}\b")
            resp = conn.read_response(timeout=20)
            assert resp.status == 200 and resp.complete, resp
            assert (resp.h("connection") or "").lower() == "close", resp
            assert conn.wait_closed(10), "the connection stayed open after a Connection: close answer"
        assert old.exit_code(20) == 0
        if new:
            assert stop(new) == 0
    finally:
        old.kill()
        if new:
            new.kill()


def test_a_gateway_without_health_checks_or_dns_names_runs_no_such_thread(built, site, tmp_path):
    """architecture.md, "Background threads": the health checker and the
    resolver "exist only when the spec needs them (a `health-check`; a DNS
    name)". This spec has neither: the process runs its workers, the
    signal thread and the control socket's thread, nothing else."""
    lib, _ = site
    gw = WatchedProcess([lib / INSTANCE, "--admin-socket", tmp_path / "c.sock", "--grace", GRACE],
                        env=env_without("XDG_RUNTIME_DIR"), wait_for=r'listening on .*"alt"')
    try:
        def names():
            return sorted((task / "comm").read_text().strip() for task in Path(f"/proc/{gw.pid}/task").iterdir())

        # The signal and control threads start just after the "listening on" lines.
        assert wait_until(lambda: {"blitz-signals", "blitz-control"} <= set(names()), 10), names()
        assert names() == sorted([INSTANCE, "blitz-worker-0", "blitz-worker-1", "blitz-signals", "blitz-control"]), names()
        assert stop(gw) == 0
    finally:
        gw.kill()


# ---------------------------------------------------------------- systemd, by hand


def test_systemd_unit_start_notify_reload_and_stop(built, site, tmp_path):
    """"Upgrading with systemd" with the unit's own command lines: ExecStart
    under `systemd-socket-activate` (the .socket unit: web passed, alt bound
    by the gateway; without ReusePort the two workers share the passed
    socket); the connection that activated it, queued before the gateway
    ran, is served. `Type=notify`: READY=1 with MAINPID= the started pid.
    ExecReload returns 0 once the new build serves, which sent READY=1 with
    its own MAINPID; the old process exits 0; the new one serves every
    listener on the same sockets; SIGTERM to it (KillMode=control-group: to
    it and to an old instance still draining, which `mixed` would SIGKILL
    once the main process exits) drains it. The journal (stderr) has every line the docs quote."""
    if not shutil.which("systemd-socket-activate"):
        pytest.skip("systemd-socket-activate is not installed")
    lib, runtime = site
    commands = unit_commands(lib, runtime)
    assert unit_setting("Type") == "notify" and unit_setting("NotifyAccess") == "all"
    assert unit_setting("KillMode") == "control-group"
    assert int(unit_setting("TimeoutStopSec")) > 30, "TimeoutStopSec is not above the default grace (30 s)"
    notify = NotifySocket(tmp_path / "notify")
    journal = tmp_path / "journal.log"
    env = env_without("XDG_RUNTIME_DIR", NOTIFY_SOCKET=str(notify.path))
    with open(journal, "ab") as log:
        main = subprocess.Popen(
            ["systemd-socket-activate", "-l", f"127.0.0.1:{built.web}", "-E", f"NOTIFY_SOCKET={notify.path}",
             *commands["ExecStart"]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
    _register(main)
    new_pid = None
    try:
        # systemd-socket-activate runs the service on the first connection, as systemd may.
        assert wait_until(lambda: listening_anywhere(built.web), 10), "systemd-socket-activate is not listening"
        assert "systemd-socket-activate" in os.readlink(f"/proc/{main.pid}/exe"), "the gateway ran before a connection"
        first = http.client.HTTPConnection("127.0.0.1", built.web, timeout=20)
        first.request("GET", "/hi")
        resp = first.getresponse()
        assert (resp.status, resp.read()) == (200, b"hi\n")
        first.close()
        ready = notify.wait_ready(1)
        assert ready.get("MAINPID") == str(main.pid), ready
        assert serves(built.web, built.alt)
        assert os.readlink(f"/proc/{main.pid}/fd/3").startswith("socket:"), "the activated socket is not fd 3"
        assert listening_sockets(main.pid, built.web) == 1, "without ReusePort the workers share the passed socket"
        assert listening_sockets(main.pid, built.alt) == 2, "the listener not passed is bound, one socket per worker"
        assert (runtime / f"blitz-{INSTANCE}" / "control.sock").is_socket()

        ship(built.binary, lib / INSTANCE)  # the new build
        with open(journal, "ab") as log:
            reload = subprocess.run(commands["ExecReload"], check=False, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, timeout=60)
        assert reload.returncode == 0, journal.read_text()
        ready = notify.wait_ready(2)
        new_pid = int(ready["MAINPID"])
        assert new_pid != main.pid and not gone(new_pid), ready
        assert "--upgrade" in Path(f"/proc/{new_pid}/cmdline").read_text()
        assert main.wait(20) == 0, "the old main process did not exit 0 after the reload"
        assert serves(built.web, built.alt)
        assert listening_sockets(new_pid, built.web) == 1, "the activated socket was not handed over as it was"
        os.kill(new_pid, signal.SIGTERM)
        assert wait_until(lambda: gone(new_pid), 20), "SIGTERM did not end the new main process"
        log_text = journal.read_text()
        for line in (f"blitz: upgrade: took over from pid {main.pid}", f"blitz: handed off to pid {new_pid}, draining",
                     f"upgraded: pid {new_pid} serves"):
            assert line in log_text, log_text
        assert log_text.count("blitz: drained, exiting") == 2, log_text
    finally:
        notify.close()
        if new_pid and not gone(new_pid):
            os.kill(new_pid, signal.SIGKILL)


def listening_anywhere(port: int) -> bool:
    """A socket listens on 127.0.0.1:`port` (seen in /proc/net/tcp: no connection made)."""
    with open("/proc/net/tcp") as f:
        next(f)
        return any((cols := row.split())[3] == "0A" and cols[1] == f"0100007F:{port:04X}" for row in f)


def socket_accepts(port: int) -> bool:
    """Something listens on the port (a connect succeeds; closed at once, no request)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


REUSEPORT_LAUNCHER = r"""
import fcntl, os, socket, sys
# What systemd does for a .socket unit with ReusePort=yes: SO_REUSEPORT set
# before bind, the socket passed as fd 3 with LISTEN_PID/LISTEN_FDS.
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4096)
high = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 10)  # the socket itself may be fd 3
s.close()
os.dup2(high, 3)  # dup2'd descriptors are inheritable
os.close(high)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="web")
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_socket_activation_with_reuseport_gives_each_worker_its_own_socket(built, site, tmp_path):
    """"With `ReusePort=yes` each worker gets its own socket in the group":
    a passed SO_REUSEPORT socket and two workers make two listening
    sockets on that address, both serving; the activated instance upgrades."""
    lib, runtime = site
    launcher = tmp_path / "launch.py"
    launcher.write_text(REUSEPORT_LAUNCHER)
    control = runtime / f"blitz-{INSTANCE}" / "control.sock"
    env = env_without("XDG_RUNTIME_DIR")
    gw = WatchedProcess([sys.executable, launcher, built.web, lib / INSTANCE, "--admin-socket", control,
                         "--grace", GRACE], env=env, wait_for=r'listening on .*"alt"')
    new = None
    try:
        assert listening_sockets(gw.pid, built.web) == 2, "the passed ReusePort socket was not given a group"
        assert all(serves(built.web) for _ in range(6))
        new = WatchedProcess([lib / INSTANCE, "--upgrade", "--admin-socket", control, "--grace", GRACE], env=env,
                             wait_for=rf"took over from pid {gw.pid}\b")
        assert gw.exit_code(20) == 0
        assert listening_sockets(new.pid, built.web) == 2
        assert serves(built.web, built.alt)
        assert stop(new) == 0
    finally:
        gw.kill()
        if new:
            new.kill()


def test_a_refused_reload_fails_with_the_reason_and_the_running_instance_serves(built, site, tmp_path):
    """"A refused or failed upgrade makes the reload fail with the reason in
    the journal, and the old instance serves on": ExecReload against a
    control socket served by another gateway (hello_gateway) exits 1,
    stderr says "this control socket belongs to gateway …", no READY=1 is
    sent, and the running instance keeps serving."""
    lib, runtime = site
    commands = unit_commands(lib, runtime)
    control = runtime / f"blitz-{INSTANCE}" / "control.sock"
    port = free_port()
    other = WatchedProcess([build_hello_gateway(), "--listen", f"127.0.0.1:{port}", "--upstream",
                            f"127.0.0.1:{built.origin.port}", "--admin-socket", control, "--grace", "2s"],
                           env=env_without())
    notify = NotifySocket(tmp_path / "notify")
    try:
        reload = subprocess.run(commands["ExecReload"], check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                env=env_without(NOTIFY_SOCKET=str(notify.path)), timeout=60)
        assert reload.returncode == 1, reload
        assert "this control socket belongs to gateway" in reload.stderr, reload.stderr
        assert "keeps serving" in reload.stderr, reload.stderr
        assert get(port, "/healthz")[0] == 200
        assert not socket_accepts(built.web), "the refused build bound a listener"
        assert not [m for m in notify.messages if m.get("READY")], notify.messages
        assert stop(other) == 0
    finally:
        notify.close()
        other.kill()


def test_detach_keeps_the_callers_stderr_until_the_instance_exits(built, site, tmp_path):
    """"The detached instance keeps the standard error it was started with
    … not to a pipe a script reads to its end, or that read waits for the
    instance to exit": `--upgrade --detach` exits 0 while the new instance
    writes to the same pipe; the pipe ends only when that instance does."""
    lib, _ = site
    control = tmp_path / "c.sock"
    env = env_without("XDG_RUNTIME_DIR")
    old = WatchedProcess([lib / INSTANCE, "--admin-socket", control, "--grace", GRACE], env=env,
                         wait_for=r'listening on .*"alt"')
    detach = subprocess.Popen([lib / INSTANCE, "--admin-socket", control, "--grace", GRACE, "--upgrade", "--detach"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                              start_new_session=True)
    _register(detach)
    new_pid = None
    try:
        assert detach.wait(30) == 0
        pipe = os.fstat(detach.stderr.fileno()).st_ino
        found = []
        for line in iter(detach.stderr.readline, b""):
            found.append(line.decode())
            if m := re.search(r"upgraded: pid (\d+) serves", line.decode()):
                new_pid = int(m.group(1))
                break
        assert new_pid, found
        assert os.readlink(f"/proc/{new_pid}/fd/2") == f"pipe:[{pipe}]", "the detached instance has another stderr"
        # In the background: its own process group (a Ctrl-C in the caller's terminal is not for it), no stdin.
        assert os.getpgid(new_pid) == new_pid != detach.pid, "the detached instance is in its caller's group"
        assert os.readlink(f"/proc/{new_pid}/fd/0") == "/dev/null"
        assert old.exit_code(20) == 0
        assert serves(built.web)
        os.kill(new_pid, signal.SIGTERM)
        rest = detach.stderr.read().decode()  # ends when the detached instance exits
        assert "blitz: drained, exiting" in rest, rest
    finally:
        old.kill()
        if new_pid and not gone(new_pid):
            os.kill(new_pid, signal.SIGKILL)


def test_a_fresh_start_on_a_served_control_socket_starts_without_one(built, site, tmp_path):
    """"A fresh start (no `--upgrade`) whose control socket path is already
    served by a live instance starts anyway, without a control socket
    ('upgrades of this instance are disabled')": a second gateway on another
    address and the same path serves and says so; the path stays the first
    one's (it is upgraded through it), also after the second exits."""
    lib, _ = site
    control = tmp_path / "c.sock"
    env = env_without("XDG_RUNTIME_DIR")
    first = WatchedProcess([lib / INSTANCE, "--admin-socket", control, "--grace", GRACE], env=env,
                           wait_for=r'listening on .*"alt"')
    port = free_port()
    second = WatchedProcess([build_hello_gateway(), "--listen", f"127.0.0.1:{port}", "--upstream",
                             f"127.0.0.1:{built.origin.port}", "--admin-socket", control, "--grace", "2s"], env=env)
    new = None
    try:
        assert "upgrades of this instance are disabled" in second.text(), second.text()
        assert get(port, "/healthz")[0] == 200
        assert stop(second) == 0
        assert control.is_socket(), "the second instance removed the first one's control socket"
        new = WatchedProcess([lib / INSTANCE, "--upgrade", "--admin-socket", control, "--grace", GRACE], env=env,
                             wait_for=rf"took over from pid {first.pid}\b")
        assert first.exit_code(20) == 0
        assert stop(new) == 0
    finally:
        first.kill()
        second.kill()
        if new:
            new.kill()


@pytest.fixture(scope="module")
def public_binary(built):
    """A copy of the build that user nobody may run (pytest's folders are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="qa-ops-public-"))
    folder.chmod(0o755)
    binary = folder / INSTANCE
    shutil.copy2(built.binary, binary)
    binary.chmod(0o755)
    yield binary
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody_contained(argv: list, processes: int = 15, seconds: int = 5) -> list[str]:
    """`argv` run as nobody in its own pid namespace (all of it killed at the
    end) with at most `processes` processes and `seconds` of time: a command
    that may spawn without end stays bounded."""
    return ["unshare", "--fork", "--pid", "--kill-child", "--", "setpriv", "--reuid=65534", "--regid=65534",
            "--clear-groups", "prlimit", f"--nproc={processes}", "--", "timeout", str(seconds), *map(str, argv)]


def test_an_upgrade_by_another_user_is_refused(built, public_binary):
    """The failure table: "the upgrading process runs as another user |
    refused (peer credentials checked; the socket is 0600 anyway)". With
    the socket opened to everyone, `--upgrade` as nobody exits 1 naming the
    uid; the running instance serves on and a same-user upgrade works."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a process as nobody")
    binary = public_binary
    control = binary.with_name("c.sock")
    env = env_without("XDG_RUNTIME_DIR")
    old = WatchedProcess([binary, "--admin-socket", control, "--grace", GRACE], env=env,
                         wait_for=r'listening on .*"alt"')
    new = None
    try:
        control.chmod(0o666)  # let the other user reach the peer-credential check
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(binary),
                            "--upgrade", "--admin-socket", str(control)], check=False, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, env=env, timeout=30)
        assert r.returncode == 1, r
        assert "uid 65534" in r.stderr, r.stderr
        assert old.proc.poll() is None and serves(built.web, built.alt)
        new = WatchedProcess([binary, "--upgrade", "--admin-socket", control, "--grace", GRACE], env=env,
                             wait_for=rf"took over from pid {old.pid}\b")
        assert old.exit_code(20) == 0
        assert stop(new) == 0
    finally:
        old.kill()
        if new:
            new.kill()


# ---------------------------------------------------------------- a log reader that went away

# Was a bug: with stderr a pipe nobody reads any more, eprintln! panicked (EPIPE): the control thread died on
# its 'connected' line (upgrade refused), SIGTERM exited 101 cutting requests. The runtime's log lines now drop
# a failed write (`log_line!`).


def start_with_stderr(binary: Path, control: Path, kind: str, tmp_path: Path) -> subprocess.Popen:
    """The gateway started with stderr a file, or a pipe whose reader read the
    start-up lines and then went away (closed its end)."""
    env = env_without("XDG_RUNTIME_DIR")
    argv = [str(binary), "--admin-socket", str(control), "--grace", GRACE]
    if kind == "file":
        with open(tmp_path / "stderr.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                                    start_new_session=True)
        _register(proc)
        assert wait_until(lambda: (tmp_path / "stderr.log").read_text().count("listening on") == 2, 20)
        return proc
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    _register(proc)
    seen = 0
    while seen < 2:
        line = proc.stderr.readline()
        assert line, "the gateway did not start"
        seen += line.startswith(b"listening on")
    proc.stderr.close()
    return proc


STDERR_KINDS = ["file", "closed-pipe"]


@pytest.mark.parametrize("kind", STDERR_KINDS)
def test_an_instance_whose_log_reader_went_away_can_be_upgraded(built, site, tmp_path, kind):
    """"The new binary takes the listening sockets over; the old one drains
    and exits 0", whatever became of the old one's stderr."""
    lib, _ = site
    control = tmp_path / "c.sock"
    old = start_with_stderr(lib / INSTANCE, control, kind, tmp_path)
    new = WatchedProcess([lib / INSTANCE, "--upgrade", "--admin-socket", control, "--grace", GRACE],
                         env=env_without("XDG_RUNTIME_DIR"), wait_for=None)
    try:
        new.wait_line(r"took over from pid|upgrade failed|no answer|refused", 30)
        assert "took over" in new.text(), new.text()
        assert old.wait(20) == 0
        assert stop(new) == 0
    finally:
        new.kill()
        if old.poll() is None:
            old.kill()


@pytest.mark.parametrize("kind", STDERR_KINDS)
def test_an_instance_whose_log_reader_went_away_drains_and_exits_0(built, site, tmp_path, kind):
    """"Exit codes: 0 after a drain (SIGTERM/SIGINT …)": a request in flight
    at the SIGTERM is answered and the exit status is 0."""
    lib, _ = site
    old = start_with_stderr(lib / INSTANCE, tmp_path / "c.sock", kind, tmp_path)
    try:
        result, target = {}, f"/slow?delay=1&case=drain-{kind}"

        def slow_request():
            try:
                result["r"] = get(built.web, target)
            except OSError as e:  # cut: the assertion below shows it
                result["error"] = repr(e)

        slow = threading.Thread(target=slow_request)
        slow.start()
        assert wait_until(lambda: any(r.target == target for r in built.origin.requests), 10)
        old.send_signal(signal.SIGTERM)
        slow.join(20)
        assert result.get("r", (0,))[0] == 200, result
        assert old.wait(20) == 0
    finally:
        if old.poll() is None:
            old.kill()


# ---------------------------------------------------------------- the flags


@pytest.mark.parametrize("detach", [
    "--detach",
    "--detach=yes",
])
def test_detach_runs_one_new_instance(public_binary, tmp_path, detach):
    """The command line section: `--upgrade [--detach]`, "run the new
    instance in the background". With nothing to take over from, one new
    instance starts, finds no running instance and gives up: `--detach`
    exits 1 once, naming the socket. A value given to `--detach` is a usage
    error (exit 2, as for every bad command line), never more processes.
    Run as nobody in a pid namespace with a process limit, so a command
    that spawns without end stays bounded."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("prlimit"):
        pytest.skip("needs root, unshare and prlimit to contain the command")
    control = public_binary.with_name("none.sock")
    r = subprocess.run(as_nobody_contained([public_binary, "--upgrade", detach, "--admin-socket", control]),
                       check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       env=env_without("XDG_RUNTIME_DIR"), timeout=30)
    spawned = r.stderr.count("upgrade failed") + r.stderr.count("cannot start the new instance")
    if detach == "--detach":
        assert r.returncode == 1 and spawned == 1, r
        assert "no running instance to upgrade" in r.stderr and str(control) in r.stderr, r.stderr
    else:
        assert r.returncode == 2 and spawned == 0, (r.returncode, spawned, r.stderr[-2000:])


def test_a_fresh_start_on_a_served_address_exits_1_pointing_at_upgrade(built, site, tmp_path):
    """"Exit codes: … 1 when the gateway cannot start" and "A fresh start
    (without `--upgrade`) on an address another process already listens on
    fails with 'in use … take over from it with --upgrade'", on the built
    binary; the running one serves on."""
    lib, _ = site
    env = env_without("XDG_RUNTIME_DIR")
    first = WatchedProcess([lib / INSTANCE, "--admin-socket", tmp_path / "a.sock", "--grace", GRACE], env=env,
                           wait_for=r'listening on .*"alt"')
    try:
        r = subprocess.run([lib / INSTANCE, "--admin-socket", tmp_path / "b.sock"], check=False, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, env=env, timeout=30)
        assert r.returncode == 1, r
        assert re.search(r"in use.*take over from it with --upgrade", r.stderr), r.stderr
        assert serves(built.web, built.alt) and first.proc.poll() is None
        assert stop(first) == 0
    finally:
        first.kill()


def test_sighup_to_a_gateway_without_tls_changes_nothing(built, site, tmp_path):
    """README: "SIGTERM or SIGINT drain it gracefully, SIGHUP re-reads its
    certificates". A gateway with no certificate to re-read (a log rotation
    script sends SIGHUP to everything) keeps serving, several times over,
    and still drains to 0 on SIGTERM."""
    lib, _ = site
    gw = WatchedProcess([lib / INSTANCE, "--admin-socket", tmp_path / "c.sock", "--grace", GRACE],
                        env=env_without("XDG_RUNTIME_DIR"), wait_for=r'listening on .*"alt"')
    try:
        assert wait_until(lambda: "blitz-signals" in {(t / "comm").read_text().strip()
                                                      for t in Path(f"/proc/{gw.pid}/task").iterdir()}, 10)
        for _ in range(3):
            gw.proc.send_signal(signal.SIGHUP)
            assert serves(built.web, built.alt)
        assert gw.proc.poll() is None, gw.text()
        assert stop(gw) == 0
    finally:
        gw.kill()
