"""Shared pytest setup for every end-to-end suite under tests/.

- puts tests/ on sys.path, so suites import helpers as `from support.origin import Origin`;
- gives every test a 60 s timeout on the test function (pytest-timeout, `func_only`:
  fixtures such as a cargo build bound themselves), unless the test sets its own;
- kills every process the helpers started when the session ends.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support import gateway as _gateway  # noqa: E402

DEFAULT_TIMEOUT = 60


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (memory, load, timeouts)")
    if not config.pluginmanager.hasplugin("timeout"):
        config.issue_config_time_warning(
            pytest.PytestConfigWarning("pytest-timeout is not installed: run scripts/install-test-deps.sh"), 2
        )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT, func_only=True))


def pytest_sessionfinish(session, exitstatus):
    _gateway.kill_all()
