"""A command run with its stdout or stderr a pipe whose reader is gone: a
log reader that went away, a `| head` that exited. Every write then fails
with EPIPE (Rust programs ignore SIGPIPE), which must never be a panic."""

from __future__ import annotations

import os
import subprocess


def exit_code_with_closed_pipe(argv: list[str], which: str, timeout: float) -> int:
    """Runs `argv` with `which` ("stdout" or "stderr") such a pipe, the
    other stream and stdin on /dev/null; its exit code."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, which: writer}
        return subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=timeout, check=False, **streams).returncode
    finally:
        os.close(writer)
