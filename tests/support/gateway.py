"""Build and run the example gateway binary (`hello_gateway`) for tests.

- `build_hello_gateway()` runs cargo once (honouring CARGO_TARGET_DIR, default
  <repo>/target) unless BLITZ_HELLO_BIN names a binary to use.
- `Gateway` starts the binary on a free port, waits for `listening on` on its
  stderr, and keeps the whole stderr for assertions and failure messages.
- Every process started here is registered and killed at interpreter exit
  (and by the test fixtures at teardown), so no test leaks a process.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = int(os.environ.get("BLITZ_BUILD_TIMEOUT", "1800"))

_LIVE: set = set()
_LIVE_LOCK = threading.Lock()


def _register(p: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.add(p)


def kill_all() -> None:
    """Kill every process this module started that is still running (by PID)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
    for p in procs:
        _kill_group(p)


def _kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the process and its own process group (it was started with
    start_new_session, so the group id is its pid and holds only what it spawned)."""
    if p.returncode is None:  # not reaped yet: the pid (and so the group id) is still ours
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    if p.poll() is None:
        try:
            p.kill()
        except OSError:
            pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


atexit.register(kill_all)


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def build_hello_gateway() -> Path:
    """Path to a release hello_gateway, building it if needed. Raises RuntimeError on failure."""
    env_bin = os.environ.get("BLITZ_HELLO_BIN")
    if env_bin:
        p = Path(env_bin)
        if not os.access(p, os.X_OK):
            raise RuntimeError(f"BLITZ_HELLO_BIN={env_bin} is not an executable file")
        return p
    cmd = ["cargo", "build", "--release", "-p", "blitz-runtime", "--features", "h2,tls,mimalloc", "--example", "hello_gateway"]
    try:
        r = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd)} timed out after {BUILD_TIMEOUT}s")
    binary = target_dir() / "release" / "examples" / "hello_gateway"
    if r.returncode != 0 or not binary.exists():
        tail = "\n".join((r.stderr or "").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{tail}")
    return binary


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now on 127.0.0.1, and not one this process handed out
    before: the kernel may give two binds in a row the same port, and a
    test asking for three listeners got two alike (CI)."""
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _handed_out:
            break
    _handed_out.add(port)
    return port


def rss_kib(pid: int) -> int:
    """VmRSS of pid in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def accept_queue_length(port: int) -> int:
    """Connections waiting to be accepted on 127.0.0.1:`port`, summed over
    every socket listening there (a `SO_REUSEPORT` group): for a listening
    socket /proc/net/tcp shows its accept queue's length as rx_queue. 0
    once the gateway took every connection made to it off the queue, which
    is what a test means by "accepted by the worker" (a fixed sleep only
    guesses it, and a busy machine can run past the guess)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            cols = row.split()
            local, state, queues = cols[1], cols[3], cols[4]
            if state == "0A" and local == f"0100007F:{port:04X}":
                n += int(queues.split(":")[1], 16)
    return n


def settled_fd_count(pid: int, timeout: float = 15) -> int:
    """The fd count once it stopped changing for a second (the connections
    of a previous step closed), or as it is after `timeout`."""
    last, since, deadline = fd_count(pid), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        n = fd_count(pid)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break
    return last


class CaseResources:
    """A gateway's memory and descriptors over a run of test cases: the
    baseline once `settle` cases ran (pools and buffers warm), the RSS peak
    after it, and the descriptors once the run ended and closed its
    connections. A leak grows with the cases; a bounded run does not."""

    def __init__(self, gw, settle: int = 20):
        self.gw, self.settle = gw, settle
        self.done = 0
        self.rss_base = self.fds_base = None
        self.rss_max = 0

    def case_done(self) -> None:
        self.done += 1
        if self.done == self.settle:
            self.rss_base, self.fds_base = self.gw.rss_kib(), settled_fd_count(self.gw.pid)
        self.rss_max = max(self.rss_max, self.gw.rss_kib())

    def check(self, rss_growth_kib: int, fd_slack: int, what: str) -> None:
        """Asserts the RSS grew less than `rss_growth_kib` past the
        baseline and the descriptors end within `fd_slack` of it."""
        fds_end = settled_fd_count(self.gw.pid)
        print(f"RSS after {self.settle} cases {self.rss_base} KiB, max {self.rss_max} KiB; "
              f"fds after {self.settle} cases {self.fds_base}, at the end {fds_end}")
        if self.rss_base is None:
            return
        assert self.rss_max - self.rss_base < rss_growth_kib, \
            f"RSS grew from {self.rss_base} to {self.rss_max} KiB ({what})"
        assert fds_end <= self.fds_base + fd_slack, f"fds {self.fds_base} -> {fds_end} ({what})"


def _fmt_duration(v) -> str:
    return f"{v}s" if isinstance(v, (int, float)) else str(v)


def _finish_reading(proc: subprocess.Popen | None, reader: threading.Thread | None, timeout: float = 5) -> None:
    """Once `proc` ended, waits (bounded) for the thread reading its stderr
    to reach the end of the pipe: `wait()` returns as soon as the process
    exits, when its last lines (`drained, exiting`, an error) may not have
    been read yet, on a busy machine for a long while."""
    if proc is not None and reader is not None and proc.poll() is not None and reader is not threading.current_thread():
        reader.join(timeout)


class WatchedProcess:
    """A process started in its own session (killed with its group at exit
    if still running), its stderr read line by line on a thread and kept,
    to wait on by pattern."""

    def __init__(self, argv, wait_for: str | None = "listening on", env=None, cwd=None, **popen):
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, cwd=cwd, start_new_session=True, **popen,
        )
        _register(self.proc)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if wait_for:
            self.wait_line(wait_for)

    def _read(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        """stderr so far; once the process ended, all of it (read to the end of the pipe)."""
        _finish_reading(self.proc, self.reader)
        with self.cond:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match:
        """The first match of `pattern` in stderr so far; AssertionError if
        the process exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                # Checked before looking: a process that printed the line and exited at once may
                # have it still in the pipe; it is given up on once the reader reached the end.
                all_read = self.proc.poll() is not None and not self.reader.is_alive()
                m = re.search(pattern, "\n".join(self.lines))
                if m:
                    return m
                if time.monotonic() > deadline or all_read:
                    raise AssertionError(f"no {pattern!r} (exit {self.proc.poll()}):\n" + "\n".join(self.lines))
                self.cond.wait(0.2)

    def exit_code(self, timeout: float) -> int:
        """The exit status, once the process ended and its stderr was read."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pid {self.pid} still running after {timeout}s:\n{self.text()[-3000:]}")
        self.reader.join(5)
        return rc

    def kill(self):
        _kill_group(self.proc)


class GatewayError(RuntimeError):
    pass


class Gateway:
    """One hello_gateway process.

    Options are passed as keyword arguments named like the flags
    (`max_header_bytes=1024` -> `--max-header-bytes 1024`; numbers for
    *_timeout/grace are seconds)."""

    def __init__(self, binary: Path, upstream: str, log_dir: Path | None = None, extra_args=(), **opts):
        self.binary = Path(binary)
        self.upstream = upstream
        self.opts = opts
        self.extra_args = list(extra_args)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.log_dir = log_dir
        self.stopped_on_purpose = False

    # ------------------------------------------------------------ lifecycle
    def args(self) -> list[str]:
        a = [str(self.binary), "--listen", f"127.0.0.1:{self.port}", "--upstream", self.upstream]
        for k, v in self.opts.items():
            if v is None:
                continue
            flag = "--" + k.replace("_", "-")
            if k.endswith("timeout") or k == "grace":
                v = _fmt_duration(v)
            a += [flag, str(v)]
        return a + self.extra_args

    def start(self, attempts: int = 3, timeout: float = 20.0) -> "Gateway":
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            self.lines = []
            self._listening.clear()
            self.proc = subprocess.Popen(
                self.args(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a signal to the test runner does not hit it, and vice versa
            )
            _register(self.proc)
            t = self._reader = threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True)
            t.start()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._listening.wait(0.05):
                    return self
                if self.proc.poll() is not None:
                    break
            t.join(timeout=1)
            last = self.stderr()
            if self.proc.poll() is None:
                self.kill()
                raise GatewayError(f"gateway did not print 'listening on' within {timeout}s:\n{last}")
            if "in use" not in last.lower():
                raise GatewayError(f"gateway exited with {self.proc.returncode} at start:\n{last}")
        raise GatewayError(f"gateway could not bind a port after {attempts} attempts:\n{last}")

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        f = open(self.log_dir / f"gateway-{proc.pid}.log", "w") if self.log_dir else None
        try:
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._lock:
                    self.lines.append(line)
                if f:
                    f.write(line + "\n")
                    f.flush()
                if "listening on" in line:
                    self._listening.set()
        finally:
            if f:
                f.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        """stderr so far; once the process ended, all of it (read to the end of the pipe)."""
        _finish_reading(self.proc, self._reader)
        with self._lock:
            return "\n".join(self.lines)

    def line_with(self, needle: str, after: int = 0, timeout: float = 5.0) -> str | None:
        """The first stderr line from index `after` on that contains
        `needle`, waiting up to `timeout`; None if none came."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                lines = self.lines[after:]
            for line in lines:
                if needle in line:
                    return line
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def tail(self, n: int = 30) -> str:
        _finish_reading(self.proc, self._reader)
        with self._lock:
            return "\n".join(self.lines[-n:])

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def fds(self) -> int:
        return fd_count(self.pid)

    def signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            self.stopped_on_purpose = True
        if self.alive():
            os.kill(self.pid, sig)

    def terminate(self, timeout: float = 35.0) -> int | None:
        """SIGTERM and wait; the exit code, or None if it did not exit in time."""
        self.stopped_on_purpose = True
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        self.stopped_on_purpose = True
        if self.proc is not None:
            _kill_group(self.proc)
        with _LIVE_LOCK:
            _LIVE.discard(self.proc)

    def crashed(self) -> str | None:
        """A description if the process died without being asked to."""
        if self.proc is None or self.stopped_on_purpose or self.proc.poll() is None:
            return None
        rc = self.proc.returncode
        sig = f" (signal {signal.Signals(-rc).name})" if rc < 0 else ""
        return f"gateway pid {self.pid} died with exit code {rc}{sig}; stderr tail:\n{self.tail()}"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
