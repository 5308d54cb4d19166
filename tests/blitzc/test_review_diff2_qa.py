"""A review of one day's fixes on main (01ac00c..410bed0), looking for gaps
in the fixes themselves, each suspicion settled against the real binaries:
one gateway built by `blitzc build` from SPEC below (real origins, over
IPv4 and IPv6 loopback, plain and TLS, and the test DNS server),
`blitzc dev` on the same spec, `blitzc check` on small KDL/TOML files, and
the runtime's hello_gateway where a limit is a command-line flag. The
upgrade change (drain before `draining`) is reviewed in
tests/runtime/test_review_upgrade2_qa.py.

- Health-check `host` (`runtime/src/health/active.rs`, `host_of`): the
  server's spec name, else a TLS server's `sni`, with the port unless it is
  the scheme's default; a server given by address gets `IP:port`. A TLS
  server given by an IPv6 address and no `sni` has, as its `sni`, the bare
  address (`blitz_ir::Server::tls_name`), so its checks went out with
  `host: ::1:PORT`, which is no valid Host (RFC 3986 §3.2.2: an IPv6
  literal is bracketed) — a bug, fixed since; controls: the same server
  plain gets `[::1]:PORT`, an IPv4 TLS server `127.0.0.1:PORT`, an `sni`
  `api.test:PORT`. A trailing-dot or upper-case DNS name is sent as written
  (pinned).
- B040 for a `header` match value with surrounding whitespace
  (`match_header_value`): the runtime indeed trims SP/HTAB around an
  HTTP/1.1 field (the route for `v` serves `x-a:  v \\t`), refuses such a
  field over HTTP/2 (400), `blitzc dev` agrees; a value no request could
  carry only because of non-ASCII whitespace (NBSP) is reachable and passes
  check; KDL and TOML twins agree, and a condition whose values all fail is
  reported once (no B050/B051 from the dropped condition).
- B041 for `max-header-bytes` (`validate/unworkable.rs`): the diagnostic
  said "every request gets 431" below 27 bytes, but at 26 a `Host:a` head
  (26 bytes) and an HTTP/1.0 head without Host (18 bytes) are served — a
  wrong claim, fixed since: the bound is 26 (`GET / HTTP/1.1` + `Host:a`),
  and the label says every HTTP/1.1 and HTTP/2 request (the smallest
  HTTP/2 one is measured as `Host: a`, 27 bytes).
- B085 (`validate/upstreams.rs`, `reaches`): the cases of the brief
  (IPv4-mapped, `[::]`, `localhost.`, `LOCALHOST`, port 0, several
  listeners) are pinned against `blitzc check`; a server that is the
  gateway's own listener really loops: one request makes the gateway
  connect to itself until the request head outgrows `max-header-bytes`
  (each turn adds to `x-forwarded-for`), the client gets an error status,
  and the gateway serves on; 20 concurrent loops under a 400-descriptor
  limit hit EMFILE (logged, accepts backed off), every client still gets
  an error status, and the gateway serves once they unwound. (nginx and
  HAProxy have no loop detection either: without a growing header such a
  loop runs until worker_connections / maxconn or the descriptors run out.)

Nothing asserts a timing: waits only bound how long a test blocks.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.blitzc import Served, build
from support.gateway import Gateway, build_hello_gateway, free_port
from support.h2client import H2Client, RawH2
from support.origin import Origin, ThreadPerConnection
from support.pki import Pki
from support.waits import wait_until

SPEC = """
version 1
gateway "rd2" {{
    workers 1
}}
listener "main" {{
    bind "127.0.0.1:{gw}"
    protocols "h1" "h2c"
}}
upstream "v6-plain" {{
    server "[::1]:{v6_plain}"
    health-check path="/healthz" interval="200ms" timeout="1s"
}}
upstream "v6-tls" {{
    server "[::1]:{v6_tls}" tls=#true ca="ca.crt"
    health-check path="/healthz" interval="200ms" timeout="1s"
}}
upstream "v4-tls" {{
    server "127.0.0.1:{v4_tls}" tls=#true ca="ca.crt"
    health-check path="/healthz" interval="200ms" timeout="1s"
}}
upstream "v4-tls-sni" {{
    server "127.0.0.1:{v4_tls_sni}" tls=#true sni="API.test" ca="ca.crt"
    health-check path="/healthz" interval="200ms" timeout="1s"
}}
upstream "dotted" {{
    server "svc.test.:{dotted}"
    health-check path="/healthz" interval="200ms" timeout="1s"
}}
upstream "upper" {{
    server "SVC.Test:{upper}"
    health-check path="/healthz" interval="200ms" timeout="1s"
}}
upstream "self" {{
    server "127.0.0.1:{gw}"
}}
route "loop" {{
    match {{ path-prefix "/loop" }}
    proxy "self"
}}
route "hdr-v" {{
    match {{
        path "/h"
        header "x-a" "v"
    }}
    respond 200 body="hdr-v\\n"
}}
route "hdr-nbsp" {{
    match {{
        path "/h"
        header "x-b" "\\u{{a0}}v"
    }}
    respond 200 body="hdr-nbsp\\n"
}}
route "fallback" {{
    respond 404 body="none\\n"
}}
"""

# The origins of SPEC's checked upstreams: (name, family, TLS).
CHECKED = [
    ("v6_plain", socket.AF_INET6, False),
    ("v6_tls", socket.AF_INET6, True),
    ("v4_tls", socket.AF_INET, True),
    ("v4_tls_sni", socket.AF_INET, True),
    ("dotted", socket.AF_INET, False),
    ("upper", socket.AF_INET, False),
]


class HostRecorder(ThreadPerConnection):
    """A loopback origin (IPv4 or IPv6, plain or TLS) that answers every
    request 200 and keeps the `host` of each health check it gets."""

    def __init__(self, family: int, tls: ssl.SSLContext | None):
        self.tls = tls
        self.hosts: list[str] = []
        super().__init__("::1" if family == socket.AF_INET6 else "127.0.0.1")

    def serve(self, conn: socket.socket):
        conn.settimeout(5)
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n")
            if lines[0].startswith(b"GET /healthz "):
                self.hosts += [line.split(b":", 1)[1].strip().decode("latin-1")
                               for line in lines[1:] if line.lower().startswith(b"host:")]
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self):
        self.close()


def get(port: int, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Sends `request` on a new connection; returns everything read until
    the close (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        try:
            while data := s.recv(65536):
                out += data
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def check_codes(blitzc: Path, folder: Path, name: str, text: str) -> list[str]:
    """`blitzc check` of `text` (as `folder/name`): the codes reported, in order."""
    path = folder / name
    path.write_text(text)
    r = subprocess.run([str(blitzc), "check", "--format", "github", str(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    return [line.split("title=", 1)[1][:4] for line in r.stdout.splitlines() if "title=" in line]


@pytest.fixture(scope="module")
def built(blitzc, cache_dir, tmp_path_factory, dns):
    """SPEC built once, with its origins (made first: their ports go into
    the spec) and the PKI their TLS uses; the gateway is started per test."""
    tmp = tmp_path_factory.mktemp("rd2")
    pki = Pki(tmp)
    pki.leaf("origin", "api.test", "IP:127.0.0.1", "IP:::1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "origin.crt", tmp / "origin.key")
    origins = {name: HostRecorder(family, ctx if tls else None) for name, family, tls in CHECKED}
    ports = {"gw": free_port(), **{name: o.port for name, o in origins.items()}}
    spec = tmp / "rd2.kdl"
    spec.write_text(SPEC.format(**ports))
    out = tmp / "rd2-gateway"
    result = build(blitzc, spec, out, cache_dir)
    assert result.returncode == 0, result.stderr
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir), BLITZ_DNS_SERVER=dns.addr)
    dns.set("svc.test", ["127.0.0.1"])
    try:
        yield {"binary": out, "spec": spec, "ports": ports, "origins": origins, "env": env, "tmp": tmp}
    finally:
        for o in origins.values():
            o.stop()


@pytest.fixture
def gateway(built):
    served = Served([str(built["binary"])], built["ports"]["gw"], built["env"])
    try:
        yield served
    finally:
        served.stop()


# ---------------------------------------------------------------- health-check host


def hosts_seen(built, gateway, name: str) -> set[str]:
    """The `host`s of the checks origin `name` got (waits for two)."""
    origin = built["origins"][name]
    assert wait_until(lambda: len(origin.hosts) >= 2, timeout=8), gateway.lines[-20:]
    return set(origin.hosts)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("v6_plain", "[::1]:{port}"),  # by address: the endpoint's IP:port, bracketed
        ("v4_tls", "127.0.0.1:{port}"),  # TLS by IPv4 address, no sni: the address
        ("v4_tls_sni", "api.test:{port}"),  # the sni (lower-cased by blitzc)
        ("dotted", "svc.test.:{port}"),  # a DNS name as written, trailing dot kept
    ],
)
def test_a_check_host_is_the_servers_spec_name_or_its_address(built, gateway, name, expected):
    """docs/spec.md 7.1: a check's `host` is the DNS name, else a TLS
    server's `sni`, with the port unless it is the scheme's default; a
    server given by address alone gets the endpoint's `IP:port`."""
    port = built["ports"][name]
    assert hosts_seen(built, gateway, name) == {expected.format(port=port)}


def test_an_upper_case_dns_name_is_sent_as_a_valid_host(built, gateway):
    """`SVC.Test:PORT`: host names are case-insensitive (RFC 9110 §4.2.3),
    any casing is a valid Host; pinned: blitzc lower-cases the name."""
    port = built["ports"]["upper"]
    assert {h.lower() for h in hosts_seen(built, gateway, "upper")} == {f"svc.test:{port}"}


def test_a_tls_server_by_ipv6_address_gets_a_bracketed_host(built, gateway):
    """docs/spec.md 7.1: a server given by address alone gets the endpoint's
    `IP:port`; for IPv6 that is `[::1]:PORT` (RFC 3986 §3.2.2, RFC 9110
    §7.2), as the plain IPv6 server gets (control above). The TLS one's
    `sni` is its address (`Server::tls_name`), which `host_of` took as a
    name and wrote unbracketed (fixed: an `sni` that is an IP is no name)."""
    port = built["ports"]["v6_tls"]
    assert hosts_seen(built, gateway, "v6_tls") == {f"[::1]:{port}"}


# ---------------------------------------------------------------- B040: header match values

NBSP_V = "\u00a0v".encode()  # obs-text: a request carries these bytes as they are

# (head lines after the request line, the route's answer): what SP/HTAB
# trimming and obs-text mean for the routes of SPEC.
H1_HEADER_CASES = [
    (b"x-a: v", b"hdr-v\n"),
    (b"x-a:  \t v \t ", b"hdr-v\n"),  # OWS dropped around the value (RFC 9110 5.5)
    (b"x-a:v", b"hdr-v\n"),
    (b"x-a: w", b"none\n"),  # control: another value
    (b"x-b: " + NBSP_V, b"hdr-nbsp\n"),  # NBSP is no OWS: kept, and matched
    (b"x-b: v", b"none\n"),
]


def h1_route(port: int, field: bytes) -> tuple[int, bytes]:
    raw = raw_exchange(port, b"GET /h HTTP/1.1\r\nhost: a\r\n" + field + b"\r\nconnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("field, answer", H1_HEADER_CASES)
def test_an_http1_field_matches_without_its_surrounding_whitespace(built, gateway, field, answer):
    """docs/spec.md 5 (header, value): values compare without surrounding
    spaces and tabs, which is why B040 refuses a match value that has
    them. Over HTTP/1.1 the field `x-a:  \\t v \\t` is the value `v`."""
    status, body = h1_route(built["ports"]["gw"], field)
    assert (status, body) == (404 if body == b"none\n" else 200, answer)


def test_blitzc_dev_trims_and_matches_as_the_built_gateway(built, blitzc):
    """The reference interpreter agrees with the built gateway on every
    case above."""
    port = free_port()
    dev_spec = built["tmp"] / "rd2-dev.kdl"
    dev_spec.write_text(built["spec"].read_text().replace(f"127.0.0.1:{built['ports']['gw']}", f"127.0.0.1:{port}"))
    dev = Served([str(blitzc), "dev", str(dev_spec)], port, built["env"], cwd=built["tmp"])
    try:
        got = [h1_route(port, field)[1] for field, _ in H1_HEADER_CASES]
    finally:
        dev.stop()
    assert got == [answer for _, answer in H1_HEADER_CASES]


@pytest.mark.parametrize(
    "value, status, body",
    [
        (b"v", 200, b"hdr-v\n"),  # control
        (b" v", 400, None),  # RFC 9113 8.2.1: malformed, never trimmed
        (b"v\t", 400, None),
    ],
)
def test_an_http2_field_with_surrounding_whitespace_is_refused(built, gateway, value, status, body):
    """Over HTTP/2 a field value starting or ending with SP/HTAB is
    malformed (RFC 9113 §8.2.1): 400, so no route could match such a
    value there either (and B040 is right for both protocols)."""
    conn = RawH2(f"127.0.0.1:{built['ports']['gw']}")
    try:
        conn.headers(1, path="/h", extra=[(b"x-a", value)])
        seen = conn.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended or 1 in s.resets)
    finally:
        conn.close()
    assert seen.status(1) == status, seen
    if body is not None:
        assert seen.data.get(1) == body


def test_an_http2_obs_text_value_matches(built, gateway):
    """Control for the NBSP route over h2c: its bytes arrive and match."""
    client = H2Client(f"127.0.0.1:{built['ports']['gw']}", validate=False)
    try:
        resp = client.request("/h", headers=[(b"x-b", NBSP_V)])
    finally:
        client.close()
    assert (resp.status, resp.body) == (200, b"hdr-nbsp\n")


KDL_MATCH = """version 1
listener "web" {{ bind "127.0.0.1:8080" }}
route "a" {{
    match {{
        path "/x"
        header "x-a" {values}
    }}
    respond 200
}}
route "b" {{
    match {{
        path "/x"
        header "x-a" "w"
    }}
    respond 200
}}
"""

TOML_MATCH = """version = 1
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
[[route]]
name = "a"
match = {{ path = "/x", header = {{ x-a = [{values}] }} }}
respond = {{ status = 200 }}
[[route]]
name = "b"
match = {{ path = "/x", header = {{ x-a = "w" }} }}
respond = {{ status = 200 }}
"""


@pytest.mark.parametrize(
    "values, codes",
    [
        (['"v"'], []),
        (['"a  b"'], []),  # interior whitespace is kept by every protocol
        (['"a\\tb"'], []),
        (['"\\u00a0v"'], []),  # NBSP: reachable (test above)
        (['"\\u3000v"'], []),  # ideographic space: no OWS either
        (['" v"'], ["B040"]),
        (['"v\\t"'], ["B040"]),
        (['" "'], ["B040"]),
        (['"v"', '" w"'], ["B040"]),  # one bad value of two
        (['" v"', '"w "'], ["B040", "B040"]),  # all dropped: skipped, route b not called shadowed
        (['"a\\rb"'], ["B040"]),
    ],
)
def test_header_match_values_kdl_and_toml_agree(blitzc, tmp_path, values, codes):
    """B040 for a match value no request's field can hold, and nothing
    else: not B050 for route b (the dropped condition neither broadens
    route a nor turns into "present"). KDL and TOML give the same."""
    kdl_values = " ".join(v.replace("\\u00a0", "\\u{a0}").replace("\\u3000", "\\u{3000}") for v in values)
    kdl = check_codes(blitzc, tmp_path, "m.kdl", KDL_MATCH.format(values=kdl_values))
    toml = check_codes(blitzc, tmp_path, "m.toml", TOML_MATCH.format(values=", ".join(values)))
    assert (kdl, toml) == (codes, codes)


# ---------------------------------------------------------------- B041: max-header-bytes

SMALLEST_H1 = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"  # 27 bytes: what an HTTP/2 `:authority a` stands for
TIGHTEST_H1 = b"GET / HTTP/1.1\r\nHost:a\r\n\r\n"  # 26 bytes, B041's bound


@pytest.fixture(scope="module")
def hello_bin() -> Path:
    return build_hello_gateway()


class HelloGateway:
    """hello_gateway on h1+h2c with `--max-header-bytes N`, in front of the
    recording origin (which answers 200 to `/`)."""

    def __init__(self, binary: Path, origin: Origin, max_header_bytes: int):
        self.gw = Gateway(binary, origin.addr, workers=1, protocols="h1,h2c",
                          max_header_bytes=max_header_bytes).start()
        self.port = self.gw.port

    def h1_status(self, head: bytes) -> int:
        raw = raw_exchange(self.port, head)
        return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0

    def h2_status(self, authority: str) -> int | None:
        conn = RawH2(f"127.0.0.1:{self.port}")
        try:
            conn.headers(1, authority=authority)
            return conn.read_frames(time.monotonic() + 5, stop=lambda s: 1 in s.ended or 1 in s.resets).status(1)
        finally:
            conn.close()


@pytest.fixture
def limited(hello_bin):
    origin = Origin()
    started = []

    def start(n: int) -> HelloGateway:
        started.append(HelloGateway(hello_bin, origin, n))
        return started[-1]

    yield start
    for g in started:
        g.gw.kill()
    origin.stop()


def test_26_bytes_is_the_smallest_http1_head_and_27_the_smallest_http2_one(limited):
    """OWS after the colon is optional (RFC 9112 §5.1): `Host:a` makes the
    smallest HTTP/1.1 head, 26 bytes, served at `max-header-bytes 26` and
    431 at 25. The smallest HTTP/2 request (`:authority a`) is measured as
    the HTTP/1.1 head it stands for, which writes `Host: a`: 27 bytes."""
    at_27, at_26, at_25 = limited(27), limited(26), limited(25)
    assert at_27.h1_status(SMALLEST_H1) == 200
    assert at_27.h2_status("a") == 200
    assert at_27.h2_status("ab") == 431  # one byte over
    assert at_26.h1_status(SMALLEST_H1) == 431
    assert at_26.h1_status(TIGHTEST_H1) == 200
    assert at_26.h2_status("a") == 431
    assert at_25.h1_status(TIGHTEST_H1) == 431


def test_b041_warns_below_26_bytes_only(blitzc, tmp_path):
    """Control of the check side: 25 warns, 26 does not."""
    spec = ('version 1\nlistener "web" {{ bind "127.0.0.1:8080" }}\nlimits {{ max-header-bytes {n} }}\n'
            'route "r" {{ respond 200 }}\n')
    assert check_codes(blitzc, tmp_path, "l25.kdl", spec.format(n=25)) == ["B041"]
    assert check_codes(blitzc, tmp_path, "l26.kdl", spec.format(n=26)) == []


def test_below_the_b041_bound_every_http1_and_http2_request_gets_431(limited):
    """docs/spec.md 4 and B041's label: below 26 bytes "every HTTP/1.1 and
    HTTP/2 request gets 431" (an HTTP/1.0 request needs no Host: its 18-byte
    head is served, and the label does not claim otherwise). Found by this
    review: the label said "every request" below 27."""
    at_25 = limited(25)
    assert at_25.h1_status(TIGHTEST_H1) == 431
    assert at_25.h2_status("a") == 431
    assert at_25.h1_status(b"GET / HTTP/1.0\r\n\r\n") == 200


# ---------------------------------------------------------------- B085: a server that is the gateway


OWN_LISTENER = """version 1
{listeners}
upstream "app" {{ server "{server}" }}
route "app" {{ proxy "app" }}
"""


@pytest.mark.parametrize(
    "binds, server, codes",
    [
        (["127.0.0.1:8080"], "127.0.0.1:8080", ["B085"]),
        (["127.0.0.1:8080"], "[::ffff:127.0.0.1]:8080", ["B085"]),  # IPv4-mapped is the IPv4 address
        (["[::ffff:127.0.0.1]:8080"], "127.0.0.1:8080", ["B085"]),
        (["[::]:8080"], "127.0.0.1:8080", ["B085"]),  # a dual-stack wildcard (bindv6only=0)
        (["[::]:8080"], "[::1]:8080", ["B085"]),
        (["0.0.0.0:8080"], "127.9.9.9:8080", ["B085"]),  # all of 127/8 is loopback
        (["0.0.0.0:8080"], "[::ffff:0.0.0.0]:8080", ["B085"]),  # connecting to 0.0.0.0 lands on loopback
        (["127.0.0.1:8080"], "localhost:8080", ["B085"]),
        (["127.0.0.1:8080"], "localhost.:8080", ["B085"]),
        (["127.0.0.1:8080"], "LOCALHOST:8080", ["B085"]),
        (["[::1]:8080"], "localhost:8080", ["B085"]),
        (["127.0.0.1:8080", "127.0.0.1:8081"], "127.0.0.1:8081", ["B085"]),  # the second listener
        # Controls: another port or address, a family the listener does not take, port 0.
        (["127.0.0.1:8080"], "127.0.0.1:8081", []),
        (["127.0.0.2:8080"], "localhost:8080", []),
        (["0.0.0.0:8080"], "[::1]:8080", []),
        (["0.0.0.0:8080"], "[::]:8080", []),  # :: connects to ::1, which 0.0.0.0 does not take
        (["[::1]:8080"], "[::ffff:127.0.0.1]:8080", []),
        (["127.0.0.1:0"], "127.0.0.1:8080", []),  # a port chosen at start: unknown (a server port 0 is B033)
        (["0.0.0.0:8080"], "origin.internal:8080", []),
    ],
)
def test_b085_reports_servers_the_gateway_would_accept(blitzc, tmp_path, binds, server, codes):
    """docs/spec.md 7 (B085): a server the gateway's own listener would
    accept, as far as the spec tells (a DNS name other than `localhost`
    and the host's own non-loopback addresses cannot be known)."""
    listeners = "\n".join(f'listener "l{i}" {{ bind "{b}" }}' for i, b in enumerate(binds))
    assert check_codes(blitzc, tmp_path, "own.kdl", OWN_LISTENER.format(listeners=listeners, server=server)) == codes


LOOP_ENDS = {431, 502, 503, 504}  # what a turn of the loop may end with: never a hang, never a 200


def loop_answers(port: int, clients: int) -> list[int]:
    """`clients` concurrent `GET /loop`; each one's status (0: no answer)."""
    statuses = [0] * clients

    def one(i: int):
        try:
            raw = raw_exchange(port, b"GET /loop HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n", timeout=20)
            statuses[i] = int(raw.split(b" ", 2)[1])
        except (OSError, IndexError, ValueError):
            pass

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


def test_a_server_that_is_the_gateway_loops_until_the_head_is_too_large(built, gateway):
    """B085 is right that such a spec loops: `/loop` proxies to the
    gateway's own listener. Each turn adds to the request head
    (`x-forwarded-for`, `via`), so the loop ends once the head passes
    `max-header-bytes` (16 KiB): the client gets an error status, not a
    hang; and the gateway serves on."""
    port = built["ports"]["gw"]
    assert set(loop_answers(port, 1)) <= LOOP_ENDS
    assert h1_route(port, b"x-a: v") == (200, b"hdr-v\n")


def test_concurrent_loops_past_the_fd_limit_leave_the_gateway_serving(built):
    """With 400 descriptors, 20 concurrent loops need more than the
    process has (about 60 turns of two connections each): accepts fail
    with EMFILE (logged, backed off), every client still gets an error
    status, and once the loops unwound the gateway serves."""
    port = built["ports"]["gw"]
    served = Served(["prlimit", "--nofile=400:400", str(built["binary"])], port, built["env"])
    try:
        assert set(loop_answers(port, 20)) <= LOOP_ENDS
        assert wait_until(lambda: h1_route(port, b"x-a: v") == (200, b"hdr-v\n"), timeout=10), served.lines[-10:]
    finally:
        served.stop()
