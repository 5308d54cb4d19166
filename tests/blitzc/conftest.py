"""Fixtures of the suites that build specs with the real `blitzc`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.blitzc import BLITZC_BUILD_TIMEOUT
from support.dns_server import DnsServer
from support.gateway import REPO


@pytest.fixture(scope="session")
def blitzc() -> Path:
    """The blitzc binary, built once (release, so the suite's builds are quick)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    subprocess.run(
        ["cargo", "build", "--release", "-p", "blitzc"], cwd=REPO, check=True, timeout=BLITZC_BUILD_TIMEOUT
    )
    return target / "release" / "blitzc"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One blitz cache for the session: the runtime compiles once."""
    env_dir = os.environ.get("BLITZ_CACHE_DIR")
    return Path(env_dir) if env_dir else tmp_path_factory.mktemp("blitz-cache")


@pytest.fixture(scope="module")
def dns():
    """A DNS server for a gateway's BLITZ_DNS_SERVER: svc.test at 127.0.0.1,
    TTL 1 s (tests re-point it with `dns.set`), one per test module."""
    server = DnsServer({"svc.test": ["127.0.0.1"]}, ttl=1)
    yield server
    server.stop()
