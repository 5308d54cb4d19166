"""Helpers of the upgrade (socket handoff) tests: which build answers, and
which gateway processes are left."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.client import request


def tag_of(port: int) -> str:
    """The `--tag` of the build that answers a new connection on `port`."""
    r = request(port, "GET", "/tag")
    assert r.status == 200, r
    return r.body.decode().strip()


def serves_tag(port: int, tag: str, timeout: float = 5) -> bool:
    """Whether new connections reach build `tag` within `timeout`: for a test
    that starts an upgrade without waiting for its "took over" line. Once that
    line is printed, the old process accepts nothing (it stops accepting before
    it says `draining`): there `tag_of(port) == tag` holds at once."""
    deadline = time.monotonic() + timeout
    while tag_of(port) != tag:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gateway_pids(binary: Path, sock: Path) -> list[int]:
    """Live (not zombie) processes of `binary` using the control socket
    `sock`, sorted (the leftover check after upgrades)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            state = open(f"/proc/{d}/stat").read().rsplit(") ", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(sock).encode() in cmd and cmd[0] == str(binary).encode() and state != "Z":
            pids.append(int(d))
    return sorted(pids)
