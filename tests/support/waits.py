"""Bounded waits shared by the end-to-end tests: they only bound how long a
test blocks, never assert a timing."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Polls `predicate` every `step` seconds until it holds or `timeout`
    passed; returns its last value (checked once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
