"""`openssl s_client` driven step by step: the one TLS client here that
sends a KeyUpdate on demand (Python's ssl module cannot).

A step is bytes to write or a number of seconds to sleep. A request line
(`GET /path ...`) is waited for by its path echoed in the origin's body; a
line holding only `K` sends a KeyUpdate asking for one back, `k` one that
does not, each waited for by s_client's `KEYUPDATE`.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path


def s_client_session(port: int, ca: Path, steps: list, server_name: str = "edge.test") -> str:
    """Runs `steps` over one TLS 1.3 (http/1.1) connection to 127.0.0.1:`port`;
    returns s_client's output, whatever happened (a write to a closed
    connection ends the steps)."""
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name, "-tls1_3",
         "-alpn", "http/1.1", "-CAfile", str(ca)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    out = b""

    def read_until(needle: bytes, timeout: float) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while needle not in out and time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 0.1)[0]:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    return
                out += chunk

    try:
        read_until(b"Verify return code", 10)
        read_until(b"---\n", 2)
        for step in steps:
            if isinstance(step, (int, float)):
                time.sleep(step)
                continue
            try:
                p.stdin.write(step)
                p.stdin.flush()
            except OSError:
                break
            read_until(step.split(b" ")[1] + b"\n" if step.startswith(b"GET ") else b"KEYUPDATE", 10)
    finally:
        p.kill()
        p.wait(5)
    return out.decode(errors="replace")
