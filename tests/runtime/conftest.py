"""Fixtures for the runtime end-to-end tests: the real hello_gateway binary
in front of the recording origin (tests/support/origin.py).

- `hello_bin`      the release binary (built once per session, or BLITZ_HELLO_BIN)
- `origin`         the session's origin, its records cleared for this test
- `gateway`        a gateway with default options, shared by tests while it lives;
                   a test after which it is dead fails (a crash is a bug)
- `start_gateway`  start gateways with custom flags; killed at teardown,
                   and the test fails if one died unasked
- `pki`            a throwaway CA and its leaf `edge` for edge.test (per module)
"""

from __future__ import annotations

import pytest

from support.gateway import Gateway, GatewayError, build_hello_gateway
from support.origin import Origin
from support.pki import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.leaf("edge", "edge.test")
    return p


@pytest.fixture(scope="session")
def hello_bin():
    try:
        return build_hello_gateway()
    except RuntimeError as e:
        pytest.fail(f"cannot build hello_gateway: {e}", pytrace=False)


@pytest.fixture(scope="session")
def origin_server():
    o = Origin()
    yield o
    o.stop()


@pytest.fixture
def origin(origin_server):
    origin_server.reset()
    yield origin_server
    origin_server.reset()


@pytest.fixture(scope="session")
def gateway_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("gateway-logs")


class _Shared:
    def __init__(self, binary, origin, logs):
        self.binary, self.origin, self.logs = binary, origin, logs
        self.gw: Gateway | None = None

    def get(self) -> Gateway:
        if self.gw is None or not self.gw.alive():
            self.gw = Gateway(self.binary, self.origin.addr, log_dir=self.logs).start()
        return self.gw

    def close(self):
        if self.gw is not None:
            self.gw.kill()


@pytest.fixture(scope="session")
def _shared_gateway(hello_bin, origin_server, gateway_logs):
    s = _Shared(hello_bin, origin_server, gateway_logs)
    yield s
    s.close()


@pytest.fixture
def gateway(_shared_gateway, origin):
    try:
        g = _shared_gateway.get()
    except GatewayError as e:
        pytest.fail(str(e), pytrace=False)
    yield g
    if not g.alive():
        msg = g.crashed() or f"gateway exited: {g.tail()}"
        _shared_gateway.gw = None
        pytest.fail(f"the gateway died during this test: {msg}", pytrace=False)


@pytest.fixture
def start_gateway(hello_bin, origin, gateway_logs):
    started: list[Gateway] = []

    def start(upstream: str | None = None, extra_args=(), **opts) -> Gateway:
        g = Gateway(hello_bin, upstream or origin.addr, log_dir=gateway_logs, extra_args=extra_args, **opts)
        started.append(g)
        try:
            return g.start()
        except GatewayError as e:
            pytest.fail(str(e), pytrace=False)

    yield start
    crashes = [c for c in (g.crashed() for g in started) if c]
    for g in started:
        g.kill()
    if crashes:
        pytest.fail("gateway died during the test: " + "\n".join(crashes), pytrace=False)
