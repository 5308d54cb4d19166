"""HTTP/2 through compiled gateways: one spec, written in KDL and in TOML,
built by `blitzc build` with a TLS listener (`h1 h2`, chosen by ALPN), a
cleartext one (`h1 h2c`, prior knowledge) and an HTTP/1.1-only one. Every
feature of the spec must behave the same whatever the protocol the client
spoke: the same requests are sent over HTTP/1.1 and over HTTP/2 (h2c and
h2 over TLS), and what the client got (status, headers but hop-by-hop
ones, body) and what the origin received (request line, headers but the
few that name the protocol) are compared.

Covered: route matching (host with wildcard, path exact, segment-aware
prefix, regex, method, header, query), `respond`, `redirect`, request and
response header steps (also from a `chain`), `strip-prefix`, hop-by-hop
fields of the origin's response, round-robin across three servers,
consistent hashing on a header, a retry on 503, 504 on a slow upstream,
502 on a dead one, 503 when health checks found no server, 413 (declared
and streamed), 431 (head too large, too many fields), x-forwarded-*, via
and x-request-id; then
h1 and h2 on one TLS port by ALPN, h2c refused on the h1-only listener,
and a drain (SIGTERM) with HTTP/2 streams in flight on the compiled binary.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hyperframe.frame import WindowUpdateFrame

from support.blitzc import Served, build
from support.gateway import free_port
from support.h2client import NO_ERROR, RawH2
from support.h2streams import Streams
from support.origin import Origin, default_handler, respond


NAMES = ("a", "b", "c")
KEEP = 4 << 20  # response bodies compared whole up to this
MiB = 1 << 20

KDL = """version 1

gateway "h2specs" {{
    workers 1
}}

listener "tls" {{
    bind "127.0.0.1:{tls}"
    protocols "h1" "h2"
    tls {{
        cert "certs/edge.crt" key="certs/edge.key"
    }}
}}

listener "clear" {{
    bind "127.0.0.1:{clear}"
    protocols "h1" "h2c"
}}

listener "h1only" {{
    bind "127.0.0.1:{h1only}"
    protocols "h1"
}}

limits {{
    header-timeout "5s"
    body-timeout "5s"
    max-header-bytes "4KiB"
    max-headers 30
    max-body-bytes "1MiB"
}}

upstream "one" {{
    server "127.0.0.1:{a}"
}}

upstream "pool" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
}}

upstream "retrying" {{
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    retry attempts=1 on="503"
}}

upstream "slow" {{
    server "127.0.0.1:{a}"
    timeouts connect="1s" response="1s"
}}

upstream "dead" {{
    server "127.0.0.1:{dead}"
    timeouts connect="1s"
}}

upstream "hashed" {{
    balance "consistent-hash" key="header:x-user"
    server "127.0.0.1:{a}"
    server "127.0.0.1:{b}"
    server "127.0.0.1:{c}"
}}

upstream "down" {{
    server "127.0.0.1:{dead}"
    health-check path="/healthz" interval="1s" timeout="200ms" unhealthy=1
}}

chain "tagging" {{
    request-headers {{
        add "x-chain" "1"
    }}
    response-headers {{
        set "x-chain-seen" "1"
    }}
}}

route "health" {{
    match {{
        path "/healthz"
    }}
    response-headers {{
        set "x-local" "1"
    }}
    respond 200 body="ok\\n" content-type="text/plain"
}}

route "gone" {{
    match {{
        path "/gone"
    }}
    respond 410 body="gone for good\\n"
}}

route "moved" {{
    match {{
        path-prefix "/old"
    }}
    redirect "https://example.com/new" status=308
}}

route "api" {{
    match {{
        host "api.test" "*.api.test"
        path-prefix "/v1"
    }}
    request-headers {{
        remove "x-secret"
        set "x-route" "api"
        add "x-tag" "a"
        add "x-tag" "b"
    }}
    response-headers {{
        remove "x-origin-internal"
        set "x-resp" "api"
        add "x-resp-tag" "r1"
    }}
    proxy "one" strip-prefix="/v1"
}}

route "writes" {{
    match {{
        path-prefix "/m"
        method "POST" "PUT"
    }}
    request-headers {{
        set "x-route" "writes"
    }}
    proxy "one"
}}

route "canary" {{
    match {{
        path-prefix "/c"
        header "x-canary" "1"
    }}
    request-headers {{
        set "x-route" "canary"
    }}
    proxy "one"
}}

route "lang" {{
    match {{
        path-prefix "/q"
        query "lang" "en"
    }}
    request-headers {{
        set "x-route" "lang"
    }}
    proxy "one"
}}

route "exact" {{
    match {{
        path "/exact"
    }}
    use "tagging"
    request-headers {{
        set "x-route" "exact"
    }}
    proxy "one"
}}

route "regex" {{
    match {{
        path-regex "/r/[0-9]+"
    }}
    request-headers {{
        set "x-route" "regex"
    }}
    proxy "one"
}}

route "hashed" {{
    match {{
        path-prefix "/h"
    }}
    proxy "hashed"
}}

route "down" {{
    match {{
        path-prefix "/down"
    }}
    proxy "down"
}}

route "balanced" {{
    match {{
        path-prefix "/lb"
    }}
    proxy "pool"
}}

route "retried" {{
    match {{
        path-prefix "/retry"
    }}
    proxy "retrying"
}}

route "slow" {{
    match {{
        path-prefix "/slow"
    }}
    proxy "slow"
}}

route "dead" {{
    match {{
        path-prefix "/dead"
    }}
    proxy "dead"
}}

route "fallback" {{
    request-headers {{
        set "x-route" "fallback"
    }}
    proxy "one"
}}
"""

TOML = """version = 1

[gateway]
name = "h2specs"
workers = 1

[[listener]]
name = "tls"
bind = "127.0.0.1:{tls}"
protocols = ["h1", "h2"]
tls = {{ certs = [{{ cert = "certs/edge.crt", key = "certs/edge.key" }}] }}

[[listener]]
name = "clear"
bind = "127.0.0.1:{clear}"
protocols = ["h1", "h2c"]

[[listener]]
name = "h1only"
bind = "127.0.0.1:{h1only}"
protocols = ["h1"]

[limits]
header-timeout = "5s"
body-timeout = "5s"
max-header-bytes = "4KiB"
max-headers = 30
max-body-bytes = "1MiB"

[[upstream]]
name = "one"
servers = [{{ address = "127.0.0.1:{a}" }}]

[[upstream]]
name = "pool"
servers = [{{ address = "127.0.0.1:{a}" }}, {{ address = "127.0.0.1:{b}" }}, {{ address = "127.0.0.1:{c}" }}]

[[upstream]]
name = "retrying"
servers = [{{ address = "127.0.0.1:{a}" }}, {{ address = "127.0.0.1:{b}" }}]
retry = {{ attempts = 1, on = ["503"] }}

[[upstream]]
name = "slow"
servers = [{{ address = "127.0.0.1:{a}" }}]
timeouts = {{ connect = "1s", response = "1s" }}

[[upstream]]
name = "dead"
servers = [{{ address = "127.0.0.1:{dead}" }}]
timeouts = {{ connect = "1s" }}

[[upstream]]
name = "hashed"
balance = {{ algorithm = "consistent-hash", key = "header:x-user" }}
servers = [{{ address = "127.0.0.1:{a}" }}, {{ address = "127.0.0.1:{b}" }}, {{ address = "127.0.0.1:{c}" }}]

[[upstream]]
name = "down"
servers = [{{ address = "127.0.0.1:{dead}" }}]
health-check = {{ path = "/healthz", interval = "1s", timeout = "200ms", unhealthy = 1 }}

[[chain]]
name = "tagging"
steps = [
  {{ request-headers = {{ add = {{ x-chain = "1" }} }} }},
  {{ response-headers = {{ set = {{ x-chain-seen = "1" }} }} }},
]

[[route]]
name = "health"
match = {{ path = "/healthz" }}
steps = [{{ response-headers = {{ set = {{ x-local = "1" }} }} }}]
respond = {{ status = 200, body = "ok\\n", content-type = "text/plain" }}

[[route]]
name = "gone"
match = {{ path = "/gone" }}
respond = {{ status = 410, body = "gone for good\\n" }}

[[route]]
name = "moved"
match = {{ path-prefix = "/old" }}
redirect = {{ location = "https://example.com/new", status = 308 }}

[[route]]
name = "api"
match = {{ host = ["api.test", "*.api.test"], path-prefix = "/v1" }}
steps = [
  {{ request-headers = {{ remove = ["x-secret"], set = {{ x-route = "api" }}, add = {{ x-tag = ["a", "b"] }} }} }},
  {{ response-headers = {{ remove = ["x-origin-internal"], set = {{ x-resp = "api" }}, add = {{ x-resp-tag = "r1" }} }} }},
]
proxy = {{ upstream = "one", strip-prefix = "/v1" }}

[[route]]
name = "writes"
match = {{ path-prefix = "/m", method = ["POST", "PUT"] }}
steps = [{{ request-headers = {{ set = {{ x-route = "writes" }} }} }}]
proxy = "one"

[[route]]
name = "canary"
match = {{ path-prefix = "/c", header = {{ x-canary = "1" }} }}
steps = [{{ request-headers = {{ set = {{ x-route = "canary" }} }} }}]
proxy = "one"

[[route]]
name = "lang"
match = {{ path-prefix = "/q", query = {{ lang = "en" }} }}
steps = [{{ request-headers = {{ set = {{ x-route = "lang" }} }} }}]
proxy = "one"

[[route]]
name = "exact"
match = {{ path = "/exact" }}
steps = [{{ use = "tagging" }}, {{ request-headers = {{ set = {{ x-route = "exact" }} }} }}]
proxy = "one"

[[route]]
name = "regex"
match = {{ path-regex = "/r/[0-9]+" }}
steps = [{{ request-headers = {{ set = {{ x-route = "regex" }} }} }}]
proxy = "one"

[[route]]
name = "hashed"
match = {{ path-prefix = "/h" }}
proxy = "hashed"

[[route]]
name = "down"
match = {{ path-prefix = "/down" }}
proxy = "down"

[[route]]
name = "balanced"
match = {{ path-prefix = "/lb" }}
proxy = "pool"

[[route]]
name = "retried"
match = {{ path-prefix = "/retry" }}
proxy = "retrying"

[[route]]
name = "slow"
match = {{ path-prefix = "/slow" }}
proxy = "slow"

[[route]]
name = "dead"
match = {{ path-prefix = "/dead" }}
proxy = "dead"

[[route]]
name = "fallback"
steps = [{{ request-headers = {{ set = {{ x-route = "fallback" }} }} }}]
proxy = "one"
"""


# ---------------------------------------------------------------- origins


def who_handler(name: str):
    """Answers `NAME METHOD TARGET` with fields a proxy must handle: one for
    a response step to remove, two set-cookies, a mixed-case name, a field
    listed in `connection` (hop-by-hop) and keep-alive. `fail=a,b` makes
    the named origins answer 503; `delay=S` waits first. /sink, /bytes and
    /echo as the default origin does."""

    def handler(req, conn):
        q = req.query
        if req.path.startswith(("/sink", "/bytes", "/echo")):
            return default_handler(req, conn)
        if "delay" in q:
            conn.sleep(float(q["delay"]))
        if name in q.get("fail", "").split(","):
            return respond(conn, req, 503, f"{name} failing\n".encode(), (f"x-origin: {name}",))
        body = f"{name} {req.method} {req.target}\n".encode()
        return respond(conn, req, 200, body, (
            f"x-origin: {name}", "x-origin-internal: secret", "set-cookie: s=1", "set-cookie: t=2",
            "X-Mixed-Case: Value", "connection: x-hop", "x-hop: dropped", "keep-alive: timeout=5",
        ))

    return handler


# ---------------------------------------------------------------- clients

# Fields that depend on the connection, not on the request.
PER_CONNECTION = {"connection", "keep-alive", "transfer-encoding", "x-origin-conn", "date"}


@dataclass
class Answer:
    status: int
    headers: list  # (lower-case name, value), per-connection fields left out, sorted by name (stable)
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


def _answer(status: int, headers, body: bytes) -> Answer:
    hs = [(n.lower(), v) for n, v in headers if not n.startswith(":") and n.lower() not in PER_CONNECTION]
    return Answer(status, sorted(hs, key=lambda h: h[0]), body)


class Client:
    """One way of talking to the gateway: HTTP/1.1 or HTTP/2, cleartext or TLS."""

    def __init__(self, gw: "Gateway", http2: bool, tls: bool):
        self.gw, self.http2, self.tls = gw, http2, tls
        self.name = ("h2" if http2 else "h1") + ("-tls" if tls else "-clear")

    def socket(self) -> socket.socket:
        port = self.gw.ports["tls" if self.tls else "clear"]
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.tls:
            return raw
        ctx = ssl.create_default_context(cafile=str(self.gw.ca))
        ctx.set_alpn_protocols(["h2"] if self.http2 else ["http/1.1"])
        s = ctx.wrap_socket(raw, server_hostname="edge.test")
        assert s.selected_alpn_protocol() == ("h2" if self.http2 else "http/1.1")
        return s

    def request(self, method: str, path: str, headers=(), body: bytes | None = None, length: bool = True,
                timeout: float = 20) -> Answer:
        """`headers` holds `host` (the h2 :authority); a body goes with
        content-length, or chunked (HTTP/2: no length) when `length` is False."""
        headers = list(headers)
        host = next((v for n, v in headers if n == "host"), "a.test")
        if self.http2:
            with Streams("", sock=self.socket(), keep=KEEP) as s:
                rest = [(n, v) for n, v in headers if n != "host"]
                sid = s.start(path, method=method, body=body, length=length, headers=rest, authority=host)
                r = s.run(timeout)[sid]
            assert r.ended and r.reset is None and r.length <= KEEP, f"{self.name} {method} {path}: {r}"
            return _answer(r.status, r.headers, r.head)
        conn = http.client.HTTPConnection("127.0.0.1", timeout=timeout)
        conn.sock = self.socket()
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            if not any(n == "host" for n, _ in headers):
                conn.putheader("host", host)
            for n, v in headers:
                conn.putheader(n, v)
            if body is not None and length:
                conn.putheader("content-length", str(len(body)))
            if body is not None and not length:
                conn.putheader("transfer-encoding", "chunked")
                conn.endheaders()
                # Answered early (413): a send fails once the gateway closed
                # (the last chunk's too, when the kernel took every piece
                # before): read the answer.
                try:
                    for i in range(0, len(body), 65536):
                        piece = body[i:i + 65536]
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                    conn.send(b"0\r\n\r\n")
                except OSError:
                    pass
            else:
                try:
                    conn.endheaders(body)
                except OSError:
                    pass  # answered early (413): read the answer
            resp = conn.getresponse()
            data = resp.read() if method != "HEAD" else b""
            return _answer(resp.status, resp.getheaders(), data)
        finally:
            conn.close()


@dataclass
class Gateway:
    served: Served
    ports: dict[str, int]
    origins: dict[str, Origin]
    ca: Path
    form: str
    binary: Path

    def restart(self) -> None:
        """A new process of the same build (after a test stopped it)."""
        self.served = Served([str(self.binary)], self.ports["clear"], dict(os.environ))

    def reset(self) -> None:
        for name, o in self.origins.items():
            o.reset()
            o.handler = who_handler(name)

    def clients(self) -> list[Client]:
        return [Client(self, http2, tls) for tls in (False, True) for http2 in (False, True)]


@pytest.fixture(scope="module")
def built(blitzc, cache_dir, tmp_path_factory):
    """Both forms of the spec, built once per module (ports chosen first)."""
    from test_tls import make_leaf, openssl  # the TLS suites' throwaway-CA helpers

    tmp = tmp_path_factory.mktemp("h2specs")
    certs = tmp / "certs"
    certs.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=Blitz h2 Test CA", "-days", "30", cwd=certs)
    make_leaf(certs, "edge", "edge.test", 1)
    ports = {k: free_port() for k in ("tls", "clear", "h1only", "a", "b", "c", "dead")}
    bins = {}
    for form, text in (("kdl", KDL), ("toml", TOML)):
        spec = tmp / f"h2specs.{form}"
        spec.write_text(text.format(**ports))
        out = tmp / f"gw-{form}"
        result = build(blitzc, spec, out, cache_dir)
        assert result.returncode == 0, result.stderr
        bins[form] = out
    return bins, ports, certs / "ca.crt"


def start(built, form: str) -> Gateway:
    bins, ports, ca = built
    origins = {}
    for name in NAMES:
        o = Origin(port=ports[name])
        o.handler = who_handler(name)
        origins[name] = o
    # One process serves every listener: up once it says so.
    served = Served([str(bins[form])], ports["clear"], dict(os.environ))
    return Gateway(served, ports, origins, ca, form, bins[form])


@pytest.fixture(scope="module", params=["kdl", "toml"])
def gw(request, built):
    g = start(built, request.param)
    yield g
    if g.served.proc.poll() is None:
        assert g.served.stop() == 0, "graceful exit"
    for o in g.origins.values():
        o.stop()




# ---------------------------------------------------------------- parity


@dataclass
class Case:
    name: str
    method: str
    path: str
    headers: tuple = ()
    body: bytes | None = None
    length: bool = True
    status: int = 200
    route: str | None = None  # the x-route the origin must see (None: nothing reaches origin a)
    target: str | None = None  # the target origin a must see
    whole: bool = True  # compare whole answers across protocols (else the status only)
    expect: tuple = ()  # (name, [values]) the client's answer must carry
    upstream: tuple = ()  # (name, [values]) origin a must receive


BIG = bytes(range(256)) * 3600  # 900 KiB, under max-body-bytes
CASES = [
    Case("local", "GET", "/healthz", expect=(("x-local", ["1"]), ("content-type", ["text/plain"]))),
    Case("local-head", "HEAD", "/healthz", expect=(("x-local", ["1"]), ("content-length", ["3"]))),
    Case("local-410", "GET", "/gone", status=410),
    Case("redirect", "GET", "/old/page?x=1", status=308, expect=(("location", ["https://example.com/new"]),)),
    Case("host-prefix-strip", "GET", "/v1/users/7?x=1", (("host", "api.test"), ("x-secret", "s"), ("x-tag", "client")),
         route="api", target="/users/7?x=1",
         expect=(("x-resp", ["api"]), ("x-resp-tag", ["r1"]), ("set-cookie", ["s=1", "t=2"]), ("x-origin", ["a"])),
         upstream=(("x-tag", ["client", "a", "b"]), ("x-secret", []), ("host", ["api.test"]))),
    Case("host-wildcard", "GET", "/v1", (("host", "eu.api.test:8443"),), route="api", target="/"),
    Case("host-case-port", "GET", "/v1/u", (("host", "API.Test:443"),), route="api", target="/u"),
    Case("prefix-segment", "GET", "/v1x", (("host", "api.test"),), route="fallback", target="/v1x"),
    Case("host-other", "GET", "/v1/u", (("host", "api.test.evil"),), route="fallback", target="/v1/u"),
    Case("head-proxied", "HEAD", "/v1/h", (("host", "api.test"),), route="api", target="/h"),
    Case("method-post", "POST", "/m/x", body=b"hello", route="writes", target="/m/x"),
    Case("method-put", "PUT", "/m/y", body=b"p" * 1000, route="writes", target="/m/y"),
    Case("method-get", "GET", "/m/x", route="fallback", target="/m/x"),
    Case("method-delete", "DELETE", "/m/x", route="fallback", target="/m/x"),
    Case("header-match", "GET", "/c/1", (("x-canary", "1"),), route="canary", target="/c/1"),
    Case("header-other", "GET", "/c/1", (("x-canary", "2"),), route="fallback", target="/c/1"),
    Case("query-match", "GET", "/q?lang=en&x=1", route="lang", target="/q?lang=en&x=1"),
    Case("query-other", "GET", "/q?lang=fr", route="fallback", target="/q?lang=fr"),
    Case("exact-chain", "GET", "/exact", route="exact", target="/exact",
         expect=(("set-cookie", ["s=1", "t=2"]), ("x-mixed-case", ["Value"]), ("x-origin-internal", ["secret"]),
                 ("x-chain-seen", ["1"])),
         upstream=(("x-chain", ["1"]),)),
    Case("regex", "GET", "/r/123?q", route="regex", target="/r/123?q"),
    Case("regex-whole", "GET", "/r/12a", route="fallback", target="/r/12a"),
    # The same key goes to the same server whatever the protocol (the
    # answer names it; whole answers are compared).
    *[Case(f"hash-{user}", "GET", "/h/x", (("x-user", user),)) for user in ("alice", "bob", "carol", "dave")],
    Case("no-healthy-server-503", "GET", "/down", status=503),
    Case("exact-slash", "GET", "/exact/", route="fallback", target="/exact/"),
    Case("normalised", "GET", "/a/./b/../c//d?k=v", route="fallback", target="/a/c/d?k=v"),
    Case("unreserved-escape", "GET", "/%75sers/%2f", route="fallback", target="/users/%2F"),
    Case("forwarded", "GET", "/fwd", (("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "gopher"),
                                      ("x-request-id", "client-id-123"), ("cookie", "a=1; b=2")),
         route="fallback", target="/fwd", upstream=(("cookie", ["a=1; b=2"]), ("host", ["a.test"]))),
    Case("upload", "POST", "/sink", body=BIG, route="fallback", target="/sink"),
    Case("upload-unsized", "POST", "/sink", body=BIG, length=False, route="fallback", target="/sink"),
    Case("download", "GET", "/bytes/3000000", route="fallback", target="/bytes/3000000"),
    Case("download-chunked", "GET", "/bytes/1000000?chunked=1", route="fallback", target="/bytes/1000000?chunked=1"),
    Case("retry-503", "GET", "/retry?fail=a", expect=(("x-origin", ["b"]),)),
    # Which server answers last depends on the balancer's turn: status only.
    Case("retry-both-fail", "GET", "/retry?fail=a,b", status=503, whole=False),
    Case("post-not-retried", "POST", "/retry?fail=a,b", body=b"once", status=503, whole=False),
    Case("timeout-504", "GET", "/slow?delay=3", status=504),
    Case("dead-502", "GET", "/dead", status=502),
    Case("too-large-413", "POST", "/m/big", body=b"x" * (2 * MiB), status=413),
    Case("too-large-unsized-413", "POST", "/m/big", body=b"x" * (2 * MiB), length=False, status=413),
    # Over the decoded header-list bound (max-header-bytes + 32 per field):
    # the h2 crate answers a bare 431 itself.
    Case("big-head-431", "GET", "/x", (("x-big", "b" * 5000),), status=431, whole=False),
    Case("big-head-431-gateway", "GET", "/x", (("x-big", "b" * 4000), ("x-b2", "c" * 200)), status=431),
    Case("many-fields-431", "GET", "/x", tuple((f"x-f{i}", "v") for i in range(40)), status=431),
    # max-headers 30 counts the host line (HTTP/2: from :authority) too.
    Case("fields-at-limit", "GET", "/x", tuple((f"x-f{i}", "v") for i in range(29)), route="fallback", target="/x"),
    Case("fields-over-limit-431", "GET", "/x", tuple((f"x-f{i}", "v") for i in range(30)), status=431),
]


def origin_view(req) -> tuple:
    """What origin a got, less the fields that name the client's protocol
    (checked on their own), sorted by name with each name's values in order."""
    own = {"via", "x-forwarded-proto", "x-request-id"}
    headers = sorted(((n.decode().lower(), v.decode()) for n, v in req.headers if n.decode().lower() not in own),
                     key=lambda h: h[0])
    return req.method, req.target, headers, req.body_len, req.body_sha256, req.complete


@pytest.mark.timeout(600)
def test_every_feature_answers_alike_over_h1_and_h2(gw):
    clients = gw.clients()
    failures = []
    for case in CASES:
        answers, seen = {}, {}
        for c in clients:
            gw.reset()
            headers = case.headers if any(n == "host" for n, _ in case.headers) else (("host", "a.test"),) + case.headers
            try:
                answers[c.name] = a = c.request(case.method, case.path, headers, case.body, case.length)
            except Exception as e:  # noqa: BLE001 - reported with the case
                failures.append(f"{case.name} {c.name}: {e!r}")
                continue
            if a.status != case.status:
                failures.append(f"{case.name} {c.name}: status {a.status} body {a.body[:100]!r}")
            reqs = gw.origins["a"].wait_requests(1, timeout=2, complete=True) if case.route else []
            if case.route:
                if not reqs:
                    failures.append(f"{case.name} {c.name}: nothing reached origin a")
                    continue
                req = reqs[-1]
                seen[c.name] = origin_view(req)
                if req.header("x-route") != [case.route] or req.target != case.target:
                    failures.append(f"{case.name} {c.name}: origin saw {req.target} route {req.header('x-route')}")
                check_protocol_fields(case, c, req, failures)
                for name, values in case.upstream:
                    if req.header(name) != values:
                        failures.append(f"{case.name} {c.name}: upstream {name} {req.header(name)} != {values}")
            for name, values in case.expect:
                if a.header(name) != values:
                    failures.append(f"{case.name} {c.name}: {name} {a.header(name)} != {values}")
            dropped = {"x-hop", "keep-alive"} | ({"x-origin-internal"} if case.route == "api" else set())
            for n, _ in a.headers:
                if n in dropped:
                    failures.append(f"{case.name} {c.name}: {n} reached the client")
        ref = clients[0].name
        shown = (lambda a: a) if case.whole else (lambda a: a.status)
        for name, a in answers.items():
            if ref in answers and shown(a) != shown(answers[ref]):
                failures.append(f"{case.name}: {name} got {a} but {ref} got {answers[ref]}")
        for name, s in seen.items():
            if s != seen.get(ref):
                failures.append(f"{case.name}: origin saw {s} for {name} but {seen.get(ref)} for {ref}")
    assert not failures, f"{gw.form}:\n" + "\n".join(failures)


def check_protocol_fields(case: Case, c: Client, req, failures: list) -> None:
    """via names the protocol received, x-forwarded-proto the scheme,
    x-request-id is the client's (when valid) or a new one."""
    want = {
        "via": ["2 blitz" if c.http2 else "1.1 blitz"],
        "x-forwarded-proto": ["https" if c.tls else "http"],
    }
    for name, value in want.items():
        if req.header(name) != value:
            failures.append(f"{case.name} {c.name}: {name} {req.header(name)} != {value}")
    ids = req.header("x-request-id")
    given = dict(case.headers).get("x-request-id")
    if len(ids) != 1 or (given and ids != [given]) or not ids[0]:
        failures.append(f"{case.name} {c.name}: x-request-id {ids}")
    if req.header("x-forwarded-for") != [", ".join(filter(None, [dict(case.headers).get("x-forwarded-for"), "127.0.0.1"]))]:
        failures.append(f"{case.name} {c.name}: x-forwarded-for {req.header('x-forwarded-for')}")


# ---------------------------------------------------------------- balancing


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_round_robin_over_one_h2_connection(gw, tls):
    """Nine streams on one connection, one after another and then all at
    once: each of the three servers serves three (one worker: exact)."""
    gw.reset()
    c = Client(gw, http2=True, tls=tls)
    with Streams("", sock=c.socket()) as s:
        for i in range(9):
            sid = s.start(f"/lb/seq/{i}")
            s.run(10, until=lambda: s.results[sid].ended)
        for i in range(9):
            s.start(f"/lb/par/{i}")
        rs = s.run(20)
    assert all(r.ended and r.status == 200 for r in rs.values()), rs
    for phase in ("seq", "par"):
        served = sorted(r.head.split()[0].decode() for r in rs.values() if f"/lb/{phase}/".encode() in r.head)
        assert served == ["a"] * 3 + ["b"] * 3 + ["c"] * 3, (phase, served)


# ---------------------------------------------------------------- protocols by listener


def test_alpn_and_prior_knowledge_choose_the_protocol(gw):
    """h2 and HTTP/1.1 on the one TLS port by ALPN (curl); h2c by prior
    knowledge on `h1 h2c`; h2c refused on the `h1`-only listener (its
    preface is a bad HTTP/1.1 request: 400 and close), which still serves
    HTTP/1.1."""
    tls, clear, h1only = gw.ports["tls"], gw.ports["clear"], gw.ports["h1only"]
    resolve = ["--resolve", f"edge.test:{tls}:127.0.0.1", "--cacert", str(gw.ca)]
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        r = curl(flag, *resolve, "-w", " %{http_version}", f"https://edge.test:{tls}/healthz")
        assert (r.returncode, r.stdout) == (0, "ok\n " + version), r
    for flag, version in (("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")):
        r = curl(flag, "-w", " %{http_version}", f"http://127.0.0.1:{clear}/healthz")
        assert (r.returncode, r.stdout) == (0, "ok\n " + version), r
    r = curl("--http2-prior-knowledge", "-w", " %{http_version}", f"http://127.0.0.1:{h1only}/healthz")
    assert r.returncode != 0 and not r.stdout.startswith("ok"), r
    with socket.create_connection(("127.0.0.1", h1only), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 505 ")), got[:200]
    r = curl("-w", " %{http_version}", f"http://127.0.0.1:{h1only}/healthz")
    assert (r.returncode, r.stdout) == (0, "ok\n 1.1"), r


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)


# ---------------------------------------------------------------- drain


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_sigterm_drains_h2_streams_in_flight(gw, tls):
    """SIGTERM with streams in flight on an HTTP/2 connection of the
    compiled binary: GOAWAY(NO_ERROR), every stream is answered whole, the
    connection then closes, new connections are refused once the process
    is gone, and it exits 0. (Last in the module: it restarts the gateway.)"""
    g = gw
    g.reset()
    c = Client(g, http2=True, tls=tls)
    raw = RawH2("", sock=c.socket(), settings={0x4: 1 << 30})  # SETTINGS_INITIAL_WINDOW_SIZE
    with raw:
        raw.frame(WindowUpdateFrame(0, window_increment=1 << 30))
        raw.read_frames(time.monotonic() + 2, stop=lambda s: s.settings >= 1)
        for sid in (1, 3, 5):
            raw.headers(sid, path=f"/d/{sid}?delay=1.5", scheme="https" if tls else "http")
        raw.headers(7, path=f"/bytes/{2 * MiB}", scheme="https" if tls else "http")
        g.origins["a"].wait_requests(3, timeout=5)
        g.served.proc.send_signal(signal.SIGTERM)
        s = raw.read_frames(time.monotonic() + 20)  # to the close
    assert s.goaway == NO_ERROR, s.frames[-10:]
    for sid in (1, 3, 5):
        assert sid in s.ended and s.status(sid) == 200, (sid, s.frames[-10:])
        assert s.data.get(sid) == f"a GET /d/{sid}?delay=1.5\n".encode()
    assert 7 in s.ended and len(s.data.get(7, b"")) == 2 * MiB
    assert s.closed
    assert g.served.proc.wait(timeout=40) == 0
    port = g.ports["tls" if tls else "clear"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    g.restart()
