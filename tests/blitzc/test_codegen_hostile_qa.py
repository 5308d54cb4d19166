"""Hostile strings through the compiler: what `blitzc check` accepts, `blitzc
build` must compile and serve exactly as written, and `blitzc dev` must serve
alike.

Every string a spec holds ends up in generated Rust (blitzc/src/codegen/):
byte-string and string literals, identifiers derived from names, doc
comments that quote names and file names, paths opened at run time. A spec
whose strings break out of those (a quote, a backslash, `{{`, a raw-string
terminator `"#`, a comment terminator `*/`, a newline, a bidi control that
rustc refuses in source) must either be refused by `check` with a positioned
diagnostic, or come out byte-exact. test_review_routing_qa.py and
blitzc/tests/*.rs cover matching; this file covers the escaping and fidelity
of everything else:

- one KDL spec of ~140 routes (`route_table`, fixture `hostile`), with a TOML
  twin written from the same table, holding quotes, backslashes, braces,
  raw-string and comment breakers, `$`, backticks, newlines/tabs/CR/NUL in
  bodies, UTF-8 of 2, 3 and 4 bytes, combining marks, RTL/bidi marks, a 64 KiB
  body, route names that are Rust keywords or look like generated identifiers
  (and names that fold to one identifier), hostile upstream/listener/gateway
  names, two chains named alike but for case, header and query condition
  values, a path-regex with breakers, header names of every token character, a
  health-check path and TLS/admin file paths in folders with hostile names;
  three more bodies written in KDL raw and multi-line strings and TOML literal
  and multi-line strings.
  Built once; served by the binary and by `blitzc dev` at once (KDL for the
  binary, the TOML twin for dev): respond bodies and content-types, response
  header set/add values, request headers as the origin receives them,
  redirect Locations, byte for byte over HTTP/1.1, h2c and TLS, and both
  processes answering alike; the twins emit the same code.
- what `check` refuses: a diagnostic with file:line:col, a code and a help
  line; never a panic.
- a seeded mutation loop (BLITZ_RANDOM_SEED, ~20 s) over valid KDL and TOML
  specs: `check` exits 0 or 1 without "panicked", each diagnostic names its
  file, a line:col inside it and a `B0NN`/`B1NN` code; a sample of the mutants
  that pass goes through `emit`, and two through `build`.

Bugs this file found, fixed (each test passes when `check` refuses the
string at its place, or the gateway serves it):

- a gateway name or spec file name holding CR or a bidi control (U+202E,
  U+2066) passed `check`, then rustc refused the generated crate: both were
  pasted unescaped into gateway.rs's `//!`/`///` comments (now
  `codegen::comment_text`);
- a `set`/`add` value or `content-type` with leading/trailing whitespace
  passed `check` (B040 refused it only in a `header` condition) and went out
  verbatim: a malformed HTTP/2 field (RFC 9113 8.2.1; nghttp resets the
  stream). Now B040;
- a gateway name with `/` made a default control socket path in a folder
  that is not there, and an `admin` socket path with NUL passed `check`:
  the gateway started with upgrades disabled. Now the `/` is written `-`,
  and a NUL in any file path is B037.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from support.blitzc import Served, blitz_env, build
from support.client import RawConn
from support.gateway import free_port
from support.origin import Origin
from support.pki import Pki
from support.waits import wait_until

RUN_BOUND = 60  # how long one blitzc check/emit/route may take here
MUTATION_SECONDS = float(os.environ.get("BLITZ_RANDOM_SECONDS", "20"))
SEED = int(os.environ.get("BLITZ_RANDOM_SEED", "20261128"))

# ------------------------------------------------------------ the hostile strings
# Pieces that break out of a Rust string, raw string, format string, comment or
# shell word if pasted unescaped, and text that is valid UTF-8 but awkward.
BREAKERS = [
    '"', "\\", '\\"', "{}", "{{", "}}", "{{bin}}", "{0}", "#", '"#', 'r#"', '"##', 'r##"x"##', "*/", "/*", "//",
    "/**/", "$x", "${x}", "`", "```", "'", "b'\\x00'", "\\u{41}", "\\x41", "%s", "%n",
]
UNICODE = [
    "é",  # 2 bytes
    "€",  # 3 bytes
    "😀",  # 4 bytes
    "e\u0301",  # combining mark
    "\u0301x",  # a combining mark first (Rust's Debug escapes it there)
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE: rustc refuses it unescaped in source
    "\u2066",  # LEFT-TO-RIGHT ISOLATE: likewise
    "\ufeff",  # BOM inside text
    "\u2028",  # LINE SEPARATOR
    "\U0010fffd",  # last plane
]
# Text for bodies only: any character the languages can write.
BODY_ONLY = ["\n", "\t", "\r", "\r\n", "\x00", "\x00" + "7", "\x01\x1f\x7f", "\u0085"]


def joined_hostile() -> str:
    return "".join(BREAKERS + UNICODE)


def big_body() -> str:
    """A 64 KiB body (in UTF-8 bytes) made of every hostile piece, repeated."""
    text = "".join(BREAKERS + UNICODE + BODY_ONLY) * 400
    out = text.encode()[:65536].decode(errors="ignore")
    return out + "." * (65536 - len(out.encode()))


BODIES = [*BREAKERS, *UNICODE, *BODY_ONLY, "", joined_hostile(), "".join(BODY_ONLY) + joined_hostile(), big_body()]
# Header values (set/add/content-type/header match): no control but tab, and
# no leading or trailing whitespace, which B040 refuses (test_field_values_with_edge_whitespace_...).
HEADER_VALUES = [*BREAKERS, *UNICODE[:5], *UNICODE[7:], "a\tb", "a  b", "\u0085\u009b", joined_hostile()]
HEADER_VALUES.remove("\u0301x")  # kept for bodies; as a value it reads the same as the others
LOCATIONS = [
    '/"{{x}}', "/a\\b", "/*/x", "https://x.test/a?b=\"#c", "/`$x`", "/é€😀", "/r#\"x\"#", "//host.test/p",
    "/%7B%7B%7D%7D", "relative/path?q={}", "/" + "x" * 4000,
]
ROUTE_NAMES = [
    "self", "Self", "crate", "super", "r#type", "type", "fn", "async", "dyn", "union", "macro_rules!",
    "route_0", "Route0", "route-0", "_", "__", "NoRoute", "no route", "No-Route", "noroute", "matches",
    "matches_", "R", "r", "R1", "r1", "a-b", "A_B", "a b", "a.b", "a/b", "é", "ü", "😀", "404", "R404",
    "host_class_0", "REGEX_0", "Generated", "config", "main", "gateway", "Route", "NoRoute0", "Self0",
    '"', "\\", "{{bin}}", "*/", "/*", 'r#"x"#', "`", "$x", "line\nbreak", "tab\there", "cr\rhere",
    "\u202e", "\u2066x", "e\u0301", "\u0301",
]
UPSTREAM_NAME = 'up "{{bin}}" \\ */ r#" `$x` \u202e é'
LISTENER_NAMES = ['plain "{{x}}" */ \\', "h2c \u202e\n`$x`", "tls r#\"\"# é"]
CHAIN_NAME = 'chain "{{x}}" */ \u2066 \\'
CHAIN_NAMES = [CHAIN_NAME, CHAIN_NAME.upper()]  # two chains whose names differ only by case
GATEWAY_NAME = 'gw "{{bin}}"\n*/ /* \\ `$x` r#"x"# é'
# Query/header match values with breakers (matched literally; the request
# sends them percent-encoded or as field bytes).
MATCH_VALUE = 'v"{{x}}\\*/é'
REGEX = '/regex/[0-9]+(?:"#|\\{\\{\\}\\}|r#"|\\*/|\\\\|x)?'
REGEX_MATCHES = {"/regex/12": 200, "/regex/12x": 200, "/regex/1*/": 200, "/regex/1{{}}": 200, "/regex/": 404,
                 "/regex/1y": 404, "/regex/1*": 404}
TOKEN_NAME = "x!#$%&'*+-.^_`|~0"  # every non-alphanumeric token character (RFC 9110 5.6.2)
HEALTH_PATH = '/h"{}`$x\\*/?q="{{bin}}"'
# Folders: every byte Linux takes in a file name that a spec string can hold.
FILE_FOLDER = 'f "{{bin}}" \\ $x `t`\té \u202e*'


# ------------------------------------------------------------ writing specs
KDL_DISALLOWED = {0x7F, 0x85, 0x2028, 0x2029, 0xFEFF, *range(0x200E, 0x2010), *range(0x202A, 0x202F),
                  *range(0x2066, 0x206A)}


def kdl_string(text: str) -> str:
    """`text` as a quoted KDL v2 string: code points KDL forbids in a document
    (controls, newlines, bidi marks, BOM) as `\\u{...}`, the rest raw."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) in KDL_DISALLOWED:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (controls and DEL escaped, the rest raw)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def pct(text: str) -> str:
    """Every byte percent-encoded (a query value the matcher decodes)."""
    return "".join(f"%{b:02X}" for b in text.encode())


def route_table() -> list[dict]:
    """The routes of the hostile spec, in order: one dict per route, with what
    a request to `path` must get (`kind`: body, headers, request, redirect, match)."""
    routes = []
    names = iter(ROUTE_NAMES)

    def add(kind: str, **fields) -> None:
        index = len(routes)
        name = next(names, None) or f"extra {index} \"{{{{{index}}}}}\""
        routes.append(dict(kind=kind, name=name, path=f"/{kind}/{index}", **fields))

    for i, body in enumerate(BODIES):
        add("body", body=body, content_type=HEADER_VALUES[i % len(HEADER_VALUES)])
    for value in HEADER_VALUES:
        add("headers", value=value)
    for value in HEADER_VALUES:
        add("request", value=value)
    for i, location in enumerate(LOCATIONS):
        add("redirect", location=location, status=(301, 302, 303, 307, 308)[i % 5])
    for chain in CHAIN_NAMES:  # `use` of chains with hostile names, differing by case
        add("chain", value=chain)
    add("match", value=MATCH_VALUE)  # header and query conditions with breakers
    add("regex", value=REGEX)  # a path-regex holding raw-string and format breakers
    add("names", value=joined_hostile())  # header names of every token character
    return routes


def kdl_spec(routes: list[dict], ports: dict, folder_name: str, admin: str) -> str:
    k = kdl_string
    cert, key = k(folder_name + "/cert.pem"), k(folder_name + "/key.pem")
    lines = [
        "version 1",
        f"gateway {k(GATEWAY_NAME)} {{ workers 1; }}",
        f"listener {k(LISTENER_NAMES[0])} {{ bind \"127.0.0.1:{ports['h1']}\"; }}",
        f"listener {k(LISTENER_NAMES[1])} {{ bind \"127.0.0.1:{ports['h2c']}\"; protocols \"h2c\"; }}",
        f"listener {k(LISTENER_NAMES[2])} {{",
        f"    bind \"127.0.0.1:{ports['tls']}\"",
        "    protocols \"h1\" \"h2\"",
        f"    tls {{ cert {cert} key={key}; }}",
        "}",
        f"admin {{ socket {k(admin)}; }}",
        f"upstream {k(UPSTREAM_NAME)} {{",
        f"    server \"127.0.0.1:{ports['origin']}\"",
        f"    health-check path={k(HEALTH_PATH)} interval=\"300ms\"",
        "}",
        *(f"chain {k(c)} {{ response-headers {{ set \"x-chain\" {k(c)}; }}; }}" for c in CHAIN_NAMES),
    ]
    for r in routes:
        match = f"match {{ path {k(r['path'])}; }}"
        v = k(r.get("value", ""))
        body = {
            "body": [match, f"respond 200 body={k(r.get('body', ''))} content-type={k(r.get('content_type', ''))}"],
            "headers": [match, f"response-headers {{ set \"x-set\" {v}; add \"x-add\" {v}; add \"x-add\" {v}; }}",
                        f"respond 200 body={k(r['name'])}"],
            "request": [match, f"request-headers {{ set \"x-set\" {v}; add \"x-add\" {v}; add \"x-add\" {v}; }}",
                        f"proxy {k(UPSTREAM_NAME)}"],
            "redirect": [match, f"redirect {k(r.get('location', ''))} status={r.get('status')}"],
            "chain": [match, f"use {v}", "respond 200 body=\"chain\""],
            "match": [f"match {{ path {k(r['path'])}; header \"x-m\" {v}; query {v} {v}; }}",
                      "respond 200 body=\"matched\""],
            "regex": [f"match {{ path-regex {v}; }}", "respond 200 body=\"regex\""],
            "names": [match, f"request-headers {{ set {k(TOKEN_NAME)} {v}; }}",
                      f"response-headers {{ add {k(TOKEN_NAME)} {v}; }}", f"proxy {k(UPSTREAM_NAME)}"],
        }[r["kind"]]
        lines += [f"route {k(r['name'])} {{", *(f"    {line}" for line in body), "}"]
    lines += kdl_spellings()
    return "\n".join(lines) + "\n"


def toml_spec(routes: list[dict], ports: dict, folder_name: str, admin: str) -> str:
    s = toml_string
    cert, key = s(folder_name + "/cert.pem"), s(folder_name + "/key.pem")
    lines = [
        "version = 1",
        f"[gateway]\nname = {s(GATEWAY_NAME)}\nworkers = 1",
        f"[admin]\nsocket = {s(admin)}",
        f"[[listener]]\nname = {s(LISTENER_NAMES[0])}\nbind = \"127.0.0.1:{ports['h1']}\"",
        f"[[listener]]\nname = {s(LISTENER_NAMES[1])}\nbind = \"127.0.0.1:{ports['h2c']}\"\nprotocols = [\"h2c\"]",
        (f"[[listener]]\nname = {s(LISTENER_NAMES[2])}\nbind = \"127.0.0.1:{ports['tls']}\"\n"
        f"protocols = [\"h1\", \"h2\"]\ntls = {{ certs = [{{ cert = {cert}, key = {key} }}] }}"),
        (f"[[upstream]]\nname = {s(UPSTREAM_NAME)}\nservers = [{{ address = \"127.0.0.1:{ports['origin']}\" }}]\n"
        f"health-check = {{ path = {s(HEALTH_PATH)}, interval = \"300ms\" }}"),
        *(f"[[chain]]\nname = {s(c)}\nsteps = [{{ response-headers = {{ set = {{ x-chain = {s(c)} }} }} }}]"
          for c in CHAIN_NAMES),
    ]
    for r in routes:
        match = f"match = {{ path = {s(r['path'])} }}"
        v = s(r.get("value", ""))
        edits = f"set = {{ x-set = {v} }}, add = {{ x-add = [{v}, {v}] }}"
        body = {
            "body": [match, (f"respond = {{ status = 200, body = {s(r.get('body', ''))}, "
                            f"content-type = {s(r.get('content_type', ''))} }}")],
            "headers": [match, f"steps = [{{ response-headers = {{ {edits} }} }}]",
                        f"respond = {{ status = 200, body = {s(r['name'])} }}"],
            "request": [match, f"steps = [{{ request-headers = {{ {edits} }} }}]", f"proxy = {s(UPSTREAM_NAME)}"],
            "redirect": [match, f"redirect = {{ location = {s(r.get('location', ''))}, status = {r.get('status')} }}"],
            "chain": [match, f"steps = [{{ use = {v} }}]", "respond = { status = 200, body = \"chain\" }"],
            "match": [f"match = {{ path = {s(r['path'])}, header = {{ x-m = {v} }}, query = {{ {v} = {v} }} }}",
                      "respond = { status = 200, body = \"matched\" }"],
            "regex": [f"match = {{ path-regex = {v} }}", "respond = { status = 200, body = \"regex\" }"],
            "names": [match, (f"steps = [{{ request-headers = {{ set = {{ {s(TOKEN_NAME)} = {v} }} }} }}, "
                             f"{{ response-headers = {{ add = {{ {s(TOKEN_NAME)} = {v} }} }} }}]"),
                      f"proxy = {s(UPSTREAM_NAME)}"],
        }[r["kind"]]
        lines.append("\n".join(["[[route]]", f"name = {s(r['name'])}", *body]))
    lines += toml_spellings()
    return "\n\n".join(lines) + "\n"


# The same hostile text written in each language's other string forms; the
# route answers it as its body. (path, expected body)
SPELLED = {
    "/spelled/raw": 'r#"x"# "#{{bin}}\\*/ é',
    "/spelled/raw2": 'a "## b "# c',
    "/spelled/multi": 'a "q" \\ {{x}}\n  b */\n\tc',
}


def kdl_spellings() -> list[str]:
    return [
        'route "spelled raw" { match { path "/spelled/raw"; }; respond 200 body=##"r#"x"# "#{{bin}}\\*/ é"##; }',
        'route "spelled raw2" { match { path "/spelled/raw2"; }; respond 200 body=###"a "## b "# c"###; }',
        # KDL v2 multi-line: the closing line's indentation is removed from each line.
        ('route "spelled multi" {\n    match { path "/spelled/multi"; }\n    respond 200 body="""\n'
        '        a "q" \\\\ {{x}}\n          b */\n        \\tc\n        """\n}'),
    ]


def toml_spellings() -> list[str]:
    return [
        ("[[route]]\nname = \"spelled raw\"\nmatch = { path = \"/spelled/raw\" }\n"
        "respond = { status = 200, body = 'r#\"x\"# \"#{{bin}}\\*/ é' }"),
        ("[[route]]\nname = \"spelled raw2\"\nmatch = { path = \"/spelled/raw2\" }\n"
        "respond = { status = 200, body = '''a \"## b \"# c''' }"),
        # A newline right after the opening ''' is trimmed (TOML 1.0).
        ("[[route]]\nname = \"spelled multi\"\nmatch = { path = \"/spelled/multi\" }\n"
        "respond = { status = 200, body = \"\"\"\na \"q\" \\\\ {{x}}\n  b */\n\\tc\"\"\" }"),
    ]


# ------------------------------------------------------------ running blitzc
def run(blitzc: Path, *args, cwd: Path, cache_dir: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(blitzc), *map(str, args)], check=False, capture_output=True, cwd=cwd,
                          timeout=RUN_BOUND, env=blitz_env(cache_dir))


def json_diagnostics(result: subprocess.CompletedProcess) -> list[dict]:
    assert b"panicked" not in result.stderr, result.stderr.decode(errors="replace")
    assert result.returncode in (0, 1), (result.returncode, result.stderr.decode(errors="replace"))
    return json.loads(result.stdout)["diagnostics"]


def errors(diagnostics: list[dict]) -> list[dict]:
    return [d for d in diagnostics if d["severity"] == "error"]


def emitted_code(blitzc: Path, spec: Path, out: Path) -> str:
    """`src/gateway.rs` as `blitzc emit` writes it, without its comment lines
    (they name the spec file and its line numbers)."""
    r = run(blitzc, "emit", spec.name, "-o", out, cwd=spec.parent)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    code = (out / "src" / "gateway.rs").read_text()
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("//", "#![doc")))


# ------------------------------------------------------------ reading answers byte for byte
def h1_fields(raw_head: bytes) -> list[tuple[bytes, bytes]]:
    """The field lines of a response head as (lower-case name, value) bytes,
    the value without the OWS around it (RFC 9112 §5)."""
    fields = []
    for line in raw_head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields.append((name.lower(), value.strip(b" \t")))
    return fields


def field_values(fields, name: bytes) -> list[bytes]:
    return [v for n, v in fields if n == name]


class H2Raw:
    """A prior-knowledge h2c client that keeps response fields as bytes and
    does not validate them (the python `h2` library would refuse some, and
    the point is to see what the gateway sent)."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def get(self, path: str, headers=()) -> tuple[list[tuple[bytes, bytes]], bytes]:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "hostile.test"),
                                     (":path", path), *headers], end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        fields, body = [], bytearray()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("h2c connection closed")
            for event in self.conn.receive_data(data):
                if getattr(event, "stream_id", None) != sid:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    fields = [(bytes(n), bytes(v)) for n, v in event.headers]
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    return fields, bytes(body)
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream reset {event.error_code}")
            self.sock.sendall(self.conn.data_to_send())
        raise TimeoutError(path)

    def close(self) -> None:
        self.sock.close()


def h1_get(port: int, target: str, headers=()) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One GET over HTTP/1.1, its fields written as UTF-8 bytes."""
    lines = [f"GET {target} HTTP/1.1", "Host: hostile.test", "Connection: close", *headers]
    with RawConn(port) as conn:
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        r = conn.read_response()
    return r.status, h1_fields(r.raw_head), r.body


def tls_get(port: int, ca: Path, target: str) -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 request over TLS (ALPN http/1.1): status, raw head, body."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="hostile.test") as tls:
        tls.sendall(f"GET {target} HTTP/1.1\r\nHost: hostile.test\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


# ------------------------------------------------------------ the hostile gateway, built and in dev
ADMIN_SOCKETS = {"built": 'adm "{{bin}}" \\ é b.sock', "dev": "adm `$x` \u202e d.sock"}


@pytest.fixture(scope="module")
def hostile(blitzc: Path, cache_dir: Path, tmp_path_factory):
    """The hostile spec built from KDL and served, and its TOML twin served by
    `blitzc dev` at the same time (own ports, own admin socket, own origin)."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "pki").mkdir()
    pki = Pki(folder / "pki")
    pki.leaf("edge", "hostile.test")
    files = folder / FILE_FOLDER
    files.mkdir()
    shutil.copy(pki.path("edge.crt"), files / "cert.pem")
    shutil.copy(pki.path("edge.key"), files / "key.pem")
    routes = route_table()
    origins = {which: Origin() for which in ("built", "dev")}
    ports = {which: {"h1": free_port(), "h2c": free_port(), "tls": free_port(), "origin": origins[which].port}
             for which in origins}
    kdl, toml = folder / "hostile.kdl", folder / "hostile.toml"
    kdl.write_text(kdl_spec(routes, ports["built"], FILE_FOLDER, ADMIN_SOCKETS["built"]), encoding="utf-8")
    toml.write_text(toml_spec(routes, ports["dev"], FILE_FOLDER, ADMIN_SOCKETS["dev"]), encoding="utf-8")
    binary = folder / "hostile-gateway"
    result = build(blitzc, kdl, binary, cache_dir)
    assert result.returncode == 0, result.stderr[-6000:]
    served = {}
    try:
        served["built"] = Served([str(binary)], ports["built"]["h1"], blitz_env(cache_dir), cwd=folder)
        served["dev"] = Served([str(blitzc), "dev", toml.name], ports["dev"]["h1"], blitz_env(cache_dir),
                               cwd=folder)
        # `Served` returns at the first listener's line; wait for all three.
        for which, gateway in served.items():
            wanted = [f"127.0.0.1:{ports[which][p]} " for p in ("h1", "h2c", "tls")]
            assert wait_until(lambda g=gateway, w=wanted: all(any(x in line for line in g.lines) for x in w)), \
                gateway.lines
        yield {"folder": folder, "routes": routes, "ports": ports, "origins": origins, "served": served,
               "kdl": kdl, "toml": toml, "binary": binary, "ca": pki.path("ca.crt")}
    finally:
        for s in served.values():
            s.stop()
        for o in origins.values():
            o.stop()


WAYS = ["built", "dev"]


def route_by_kind(hostile, kind: str) -> list[dict]:
    return [r for r in hostile["routes"] if r["kind"] == kind]


def answers(hostile, which: str, protocol: str, target: str, headers=()) -> tuple[int, list, bytes]:
    """(status, fields as bytes, body) of one GET to `which` over `protocol` (h1 or h2c)."""
    ports = hostile["ports"][which]
    if protocol == "h1":
        return h1_get(ports["h1"], target, [f"{n}: {v}" for n, v in headers])
    client = H2Raw(ports["h2c"])
    try:
        fields, body = client.get(target, [(n.encode(), v.encode()) for n, v in headers])
    finally:
        client.close()
    status = int(field_values(fields, b":status")[0])
    return status, fields, body


@pytest.mark.timeout(300)
def test_both_forms_pass_check_and_the_twins_emit_the_same_code(blitzc, hostile, tmp_path):
    """Every hostile string of the table is accepted in KDL and TOML (warnings
    only: B058 for the locations that are not URI references), and the two
    forms lower to the same gateway: the same generated code."""
    for spec in (hostile["kdl"], hostile["toml"]):
        diagnostics = json_diagnostics(run(blitzc, "check", "--format", "json", spec.name, cwd=spec.parent))
        assert not errors(diagnostics), diagnostics
        assert {d["code"] for d in diagnostics} <= {"B058"}, diagnostics
    # The twins with the same ports and admin socket, emitted side by side.
    folder = hostile["folder"]
    same = dict(hostile["ports"]["dev"])
    twin_kdl, twin_toml = folder / "twin.kdl", folder / "twin.toml"
    twin_kdl.write_text(kdl_spec(hostile["routes"], same, FILE_FOLDER, ADMIN_SOCKETS["dev"]), encoding="utf-8")
    twin_toml.write_text(toml_spec(hostile["routes"], same, FILE_FOLDER, ADMIN_SOCKETS["dev"]), encoding="utf-8")
    assert emitted_code(blitzc, twin_kdl, tmp_path / "kdl") == emitted_code(blitzc, twin_toml, tmp_path / "toml")


@pytest.mark.parametrize("which", WAYS)
@pytest.mark.parametrize("protocol", ["h1", "h2c"])
def test_respond_bodies_and_content_types_are_byte_exact(hostile, which, protocol):
    """`respond` bodies (quotes, braces, raw-string and comment breakers, NUL,
    CR, bidi marks, 64 KiB) and content-types come out as written."""
    for r in route_by_kind(hostile, "body"):
        status, fields, body = answers(hostile, which, protocol, r["path"])
        assert status == 200, r
        assert body == r["body"].encode(), (r["name"], r["body"][:80], body[:200])
        assert field_values(fields, b"content-type") == [r["content_type"].encode()], r
    for path, text in SPELLED.items():
        status, _, body = answers(hostile, which, protocol, path)
        assert (status, body) == (200, text.encode()), path


@pytest.mark.parametrize("which", WAYS)
@pytest.mark.parametrize("protocol", ["h1", "h2c"])
def test_response_header_values_are_byte_exact(hostile, which, protocol):
    """`response-headers` set and add values (and a chain's, named with
    breakers) come out as written, the added one twice."""
    for r in route_by_kind(hostile, "headers"):
        status, fields, body = answers(hostile, which, protocol, r["path"])
        value = r["value"].encode()
        assert status == 200, r
        assert field_values(fields, b"x-set") == [value], r
        assert field_values(fields, b"x-add") == [value, value], r
        assert body == r["name"].encode(), r
    for chain in route_by_kind(hostile, "chain"):
        status, fields, body = answers(hostile, which, protocol, chain["path"])
        assert (status, body, field_values(fields, b"x-chain")) == (200, b"chain", [chain["value"].encode()])


@pytest.mark.parametrize("which", WAYS)
@pytest.mark.parametrize("protocol", ["h1", "h2c"])
def test_request_header_values_reach_the_origin_byte_exact(hostile, which, protocol):
    """`request-headers` set and add values reach the upstream (whose name
    holds breakers) as written."""
    origin = hostile["origins"][which]
    for r in route_by_kind(hostile, "request"):
        status, _, _ = answers(hostile, which, protocol, r["path"])
        assert status == 200, r
        seen = [q for q in origin.requests if q.target == r["path"]]
        assert seen, r
        headers = seen[-1].headers
        value = r["value"].encode()
        assert [v for n, v in headers if n.lower() == b"x-set"] == [value], r
        assert [v for n, v in headers if n.lower() == b"x-add"] == [value, value], r


@pytest.mark.parametrize("which", WAYS)
@pytest.mark.parametrize("protocol", ["h1", "h2c"])
def test_redirect_locations_are_sent_as_written(hostile, which, protocol):
    """docs/spec.md 12.3: "The gateway sends the location as written" (the
    ones B058 warns about too), with the status given."""
    for r in route_by_kind(hostile, "redirect"):
        status, fields, _ = answers(hostile, which, protocol, r["path"])
        assert status == r["status"], r
        assert field_values(fields, b"location") == [r["location"].encode()], r


@pytest.mark.parametrize("which", WAYS)
def test_header_and_query_conditions_with_breakers(hostile, which):
    """A header value and a query name and value holding `"`, `{{`, `\\`,
    `*/` and UTF-8 match exactly that, sent as field bytes / percent-encoded."""
    (r,) = route_by_kind(hostile, "match")
    query = f"?{pct(MATCH_VALUE)}={pct(MATCH_VALUE)}"
    good = [("x-m", MATCH_VALUE)]
    for protocol in ("h1", "h2c"):
        assert answers(hostile, which, protocol, r["path"] + query, good)[::2] == (200, b"matched")
        # Controls: one byte less in either condition.
        assert answers(hostile, which, protocol, r["path"] + query, [("x-m", MATCH_VALUE[:-1])])[0] == 404
        assert answers(hostile, which, protocol, r["path"] + query[:-3], good)[0] == 404


@pytest.mark.parametrize("which", WAYS)
@pytest.mark.parametrize("protocol", ["h1", "h2c"])
def test_regex_with_breakers_and_token_header_names(hostile, which, protocol):
    """A `path-regex` holding `"#`, `{{}}`, `r#"`, `*/` and `\\` matches as
    the regex says; a header name made of every token character is set on
    the forwarded request and added to the answer with a hostile value."""
    for target, status in REGEX_MATCHES.items():
        assert answers(hostile, which, protocol, target)[0] == status, target
    (r,) = route_by_kind(hostile, "names")
    status, fields, _ = answers(hostile, which, protocol, r["path"])
    value = r["value"].encode()
    assert status == 200
    assert field_values(fields, TOKEN_NAME.encode()) == [value]
    seen = [q for q in hostile["origins"][which].requests if q.target == r["path"]]
    assert [v for n, v in seen[-1].headers if n.lower() == TOKEN_NAME.encode()] == [value]


def comparable(answer) -> tuple:
    status, fields, body = answer
    return status, [(n, v) for n, v in fields if n not in (b"date", b"x-origin-conn")], body


@pytest.mark.parametrize("protocol", ["h1", "h2c"])
def test_built_binary_and_dev_answer_alike(hostile, protocol):
    """Every route (and a 404) answered identically by the built binary and
    by `blitzc dev` of the TOML twin: status, every field but `date`, body."""
    targets = [r["path"] for r in hostile["routes"]] + list(SPELLED) + list(REGEX_MATCHES) + ["/no/such/route"]
    for target in targets:
        built = comparable(answers(hostile, "built", protocol, target))
        dev = comparable(answers(hostile, "dev", protocol, target))
        if target.startswith(("/request/", "/names/")):
            # The origin's own answer names the connection it came on.
            built, dev = built[0], dev[0]
        assert built == dev, target


@pytest.mark.parametrize("which", WAYS)
def test_tls_listener_with_certificate_in_a_hostile_folder(hostile, which):
    """cert/key paths holding quotes, braces, `\\`, `$`, a backtick, a tab,
    UTF-8 and a bidi mark are opened as written (served over TLS)."""
    status, head, body = tls_get(hostile["ports"][which]["tls"], hostile["ca"], "/body/0")
    (first,) = route_by_kind(hostile, "body")[:1]
    assert (status, body) == (200, first["body"].encode()), head


@pytest.mark.parametrize("which", WAYS)
def test_admin_socket_bound_at_its_hostile_path(hostile, which):
    """docs/spec.md 14: the `admin` socket path (quotes, `{{bin}}`, `\\`, a
    backtick, `$`, UTF-8, a bidi mark), relative to the spec's folder, is
    where the control socket is."""
    path = hostile["folder"] / ADMIN_SOCKETS[which]
    assert path.is_socket(), (sorted(p.name for p in hostile["folder"].iterdir()), hostile["served"][which].lines)


@pytest.mark.parametrize("which", WAYS)
def test_health_check_path_is_sent_as_written(hostile, which):
    """docs/spec.md 7: the health-check path (visible ASCII with `"`, `{}`,
    a backtick, `$`, `\\`, `*/` and a query) is "sent as written"."""
    origin = hostile["origins"][which]
    assert origin.wait_for(lambda: any(q.target == HEALTH_PATH for q in origin.requests), timeout=10), \
        sorted({q.target for q in origin.requests})[:10]


def test_route_and_gateway_names_come_back_as_written(blitzc, hostile):
    """Names that are Rust keywords, look like generated identifiers, fold to
    one identifier or hold breakers: each route still answers as itself (the
    bodies above), `blitzc route` names it exactly, and `GATEWAY --version`
    prints the gateway's name as written."""
    for r in hostile["routes"][: len(ROUTE_NAMES)]:
        for spec in (hostile["kdl"], hostile["toml"]):
            out = run(blitzc, "route", spec.name, "GET", r["path"], cwd=spec.parent)
            assert out.returncode == 0, out.stderr
            assert out.stdout == r["name"].encode() + b"\n", r
    version = subprocess.run([str(hostile["binary"]), "--version"], capture_output=True, timeout=RUN_BOUND,
                             check=False)
    assert version.returncode == 0
    assert version.stdout.startswith(GATEWAY_NAME.encode() + b" (blitzc "), version.stdout


# ------------------------------------------------------------ what check refuses
# (value, code): strings `check` must refuse where a header value or name goes.
REFUSED_VALUES = ["a\rb", "a\nb", "a\x00b", "a\x7fb", "a\x01b", "\r\n", "x\x1b[31m"]
REFUSED_NAMES = ["x y", "é", "x:", "(x)", 'x"']


def refused_spec_kdl(values: list[str], names: list[str]) -> tuple[str, list[int]]:
    """A KDL spec with one refused string per line; the lines they are on."""
    lines = ["version 1", 'listener "l" { bind "127.0.0.1:1"; }', 'upstream "u" { server "127.0.0.1:2"; }']
    bad = []
    for i, v in enumerate(values):
        k = kdl_string(v)
        for step in (f"response-headers {{ set \"x-v\" {k}; }}", f"request-headers {{ add \"x-v\" {k}; }}"):
            lines += [f'route "v{len(lines)}" {{', f'    match {{ path "/v/{len(lines)}"; }}', f"    {step}"]
            bad.append(len(lines))
            lines += ['    proxy "u"', "}"]
        lines += [f'route "c{i}" {{', f'    match {{ path "/c/{i}"; }}', f"    respond 200 content-type={k}"]
        bad.append(len(lines))
        lines += ["}", f'route "l{i}" {{', f'    match {{ path "/l/{i}"; }}', f"    redirect {k}"]
        bad.append(len(lines))
        lines += ["}", f'route "m{i}" {{', f"    match {{ path \"/m/{i}\"; header \"x-m\" {k}; }}"]
        bad.append(len(lines))
        lines += ['    respond 200', "}"]
    for i, n in enumerate(names):
        lines += [f'route "n{i}" {{', f'    match {{ path "/n/{i}"; }}',
                  f"    response-headers {{ remove {kdl_string(n)}; }}"]
        bad.append(len(lines))
        lines += ['    respond 200', "}"]
    return "\n".join(lines) + "\n", bad


def refused_spec_toml(values: list[str], names: list[str]) -> tuple[str, list[int]]:
    s = toml_string
    lines = ["version = 1", "[[listener]]", 'name = "l"', 'bind = "127.0.0.1:1"',
             "[[upstream]]", 'name = "u"', 'servers = [{ address = "127.0.0.1:2" }]']
    bad = []
    for i, v in enumerate(values):
        lines += ["[[route]]", f'name = "v{i}"', f'match = {{ path = "/v/{i}" }}', "steps = [",
                  f"  {{ response-headers = {{ set = {{ x-v = {s(v)} }} }} }},"]
        bad.append(len(lines))
        lines += [f"  {{ request-headers = {{ add = {{ x-v = [{s(v)}] }} }} }},"]
        bad.append(len(lines))
        lines += ["]", 'proxy = "u"',
                  "[[route]]", f'name = "c{i}"', f'match = {{ path = "/c/{i}" }}',
                  f"respond = {{ status = 200, content-type = {s(v)} }}"]
        bad.append(len(lines))
        lines += ["[[route]]", f'name = "l{i}"', f'match = {{ path = "/l/{i}" }}', f"redirect = {s(v)}"]
        bad.append(len(lines))
        lines += ["[[route]]", f'name = "m{i}"', f'match = {{ path = "/m/{i}", header = {{ x-m = {s(v)} }} }}']
        bad.append(len(lines))
        lines += ["respond = 200"]
    for i, n in enumerate(names):
        lines += ["[[route]]", f'name = "n{i}"', f'match = {{ path = "/n/{i}" }}',
                  f"steps = [{{ response-headers = {{ remove = [{s(n)}] }} }}]"]
        bad.append(len(lines))
        lines += ["respond = 200"]
    return "\n".join(lines) + "\n", bad


def assert_well_formed(diagnostic: dict, text: str, file_name: str) -> None:
    """A diagnostic names the file, a line:col inside it, a B-code and a help line."""
    assert diagnostic["file"] == file_name, diagnostic
    assert re.fullmatch(r"B[01]\d\d", diagnostic["code"]), diagnostic
    lines = text.split("\n")
    assert 1 <= diagnostic["line"] <= len(lines), diagnostic
    assert 1 <= diagnostic["column"] <= len(lines[diagnostic["line"] - 1]) + 1, diagnostic
    assert diagnostic.get("help"), diagnostic


@pytest.mark.parametrize("form", ["kdl", "toml"])
def test_check_refuses_control_characters_and_bad_names_at_their_place(blitzc, cache_dir, tmp_path, form):
    """docs/spec.md 3, B040/B035: CR, LF, NUL, DEL, other C0 controls in a
    set/add value, a content-type, a redirect location or a header condition,
    and non-token header names, are each one error on their own line (code,
    column inside the line, help). `build` refuses the spec before cargo."""
    text, bad_lines = (refused_spec_kdl if form == "kdl" else refused_spec_toml)(REFUSED_VALUES, REFUSED_NAMES)
    spec = tmp_path / f"refused.{form}"
    spec.write_text(text, encoding="utf-8")
    diagnostics = json_diagnostics(run(blitzc, "check", "--format", "json", spec.name, cwd=tmp_path))
    for d in diagnostics:
        assert_well_formed(d, text, spec.name)
    found = sorted(d["line"] for d in errors(diagnostics))
    assert found == sorted(bad_lines), (found, bad_lines)
    assert {d["code"] for d in errors(diagnostics)} == {"B040", "B035"}
    r = subprocess.run([str(blitzc), "build", spec.name, "-o", "never"], capture_output=True, cwd=tmp_path,
                       env=blitz_env(cache_dir), timeout=RUN_BOUND, check=False)
    assert r.returncode == 1 and b"Compiling" not in r.stderr and b"panicked" not in r.stderr, r.stderr
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------ bugs
@pytest.mark.parametrize(("gateway_name", "file_name"), [
    ("gw\rcr", "plain.kdl"),  # rustc: "bare CR not allowed in doc-comment"
    ("gw \u202e bidi", "plain.kdl"),  # rustc: text_direction_codepoint_in_literal (deny by default)
    ("plain-file", "spec \u2066.kdl"),  # the file name, in the header and each route's origin comment
], ids=["gateway-name-cr", "gateway-name-bidi", "file-name-bidi"])
def test_names_quoted_in_doc_comments_never_break_the_build(blitzc, cache_dir, tmp_path, gateway_name, file_name):
    """Every name `check` accepts builds: the gateway name and the spec's file
    name are quoted in `//!`/`///` comments of the generated code
    (codegen/mod.rs `generate`'s header, names.rs `route_origin`), where the
    route names are escaped with `{:?}` but these are not. Either `check`
    refuses the name with a positioned diagnostic, or `build` succeeds."""
    spec = tmp_path / file_name
    # h2c and a regex: the runtime features of the mutation test's builds, so a cache holds them once.
    text = (f"version 1\ngateway {kdl_string(gateway_name)}\n"
            f"listener \"l\" {{ bind \"127.0.0.1:{free_port()}\"; protocols \"h1\" \"h2c\"; }}\n"
            "route \"r\" { match { path-regex \"/r[0-9]*\"; }; respond 200 body=\"r\"; }\n")
    spec.write_text(text, encoding="utf-8")
    diagnostics = json_diagnostics(run(blitzc, "check", "--format", "json", spec.name, cwd=tmp_path))
    if errors(diagnostics):
        for d in diagnostics:
            assert_well_formed(d, text, spec.name)
        return
    result = build(blitzc, spec, tmp_path / "gw", cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("form", ["kdl", "toml"])
def test_field_values_with_edge_whitespace_are_refused_or_valid_on_h2(blitzc, cache_dir, tmp_path, form):
    """B040 already refuses edge whitespace in a `header` condition value
    (docs/spec.md 3: a field value never keeps it); a `set`/`add` value or a
    `content-type` with it passes, and the runtime sends it verbatim, which
    RFC 9113 §8.2.1 makes a malformed HTTP/2 response ("A field value MUST
    NOT start or end with an ASCII whitespace character"), and over HTTP/1.1
    no recipient can read it as written (RFC 9110 §5.5 field-value). Either
    `check` refuses it with a positioned diagnostic, or what goes out over h2c
    is a valid field value. (`blitzc dev`: the built binary sends the same.)"""
    port = free_port()
    values = {"x-lead": " lead", "x-trail": "trail\t", "content-type": " text/plain "}
    if form == "kdl":
        text = (f'version 1\nlistener "l" {{ bind "127.0.0.1:{port}"; protocols "h2c"; }}\nroute "r" {{\n'
                f'    response-headers {{ set "x-lead" " lead"; add "x-trail" "trail\\t"; }}\n'
                f'    respond 200 body="r" content-type=" text/plain "\n}}\n')
    else:
        text = (f'version = 1\n[[listener]]\nname = "l"\nbind = "127.0.0.1:{port}"\nprotocols = ["h2c"]\n'
                f'[[route]]\nname = "r"\n'
                f'steps = [{{ response-headers = {{ set = {{ x-lead = " lead" }}, '
                f'add = {{ x-trail = "trail\\t" }} }} }}]\n'
                f'respond = {{ status = 200, body = "r", content-type = " text/plain " }}\n')
    spec = tmp_path / f"ws.{form}"
    spec.write_text(text, encoding="utf-8")
    diagnostics = json_diagnostics(run(blitzc, "check", "--format", "json", spec.name, cwd=tmp_path))
    if errors(diagnostics):
        for d in diagnostics:
            assert_well_formed(d, text, spec.name)
        assert len(errors(diagnostics)) == len(values), diagnostics
        return
    dev = Served([str(blitzc), "dev", spec.name], port, blitz_env(cache_dir), cwd=tmp_path)
    try:
        client = H2Raw(port)
        fields, body = client.get("/")
        client.close()
    finally:
        dev.stop()
    assert body == b"r"
    for name in values:
        (value,) = field_values(fields, name.encode())
        assert value == value.strip(b" \t"), (name, value)


# ------------------------------------------------------------ mutations
# Valid seeds touching most constructs, with a few hostile strings inside.
SEED_KDL = """version 1
gateway "mutant" { workers 1; }
limits { header-timeout "5s"; max-header-bytes "16KiB"; max-body-bytes "1MiB"; }
listener "public" { bind "127.0.0.1:{port}"; protocols "h1" "h2c"; }
upstream "api" {
    balance "consistent-hash" key="header:x-user"
    server "127.0.0.1:9" weight=2
    server "svc.internal:80"
    pool max-idle=4 idle-timeout="30s"
    health-check path="/healthz?x=\\"{{}}\\"" interval="2s" expect="200-299"
    timeouts connect="1s" response="5s"
    retry attempts=1 on="connect-error" "502"
}
chain "common \\"{{x}}\\"" {
    request-headers { set "x-a" "a \\"b\\" {{c}} */ é"; remove "cookie"; }
}
route "self" {
    match { host "api.example.com" "*.example.org"; path-prefix "/v1"; method "GET" "HEAD"; header "x-c" "1"; }
    use "common \\"{{x}}\\""
    response-headers { add "x-r" "r#\\"x\\"# `$x`"; }
    proxy "api" strip-prefix="/v1"
}
route "r#type" {
    match { path-regex "/re/[0-9]+\\\\.x"; query "q" "v\\"{}"; }
    respond 201 body="a\\n\\"b\\"\\t{{c}}\\u{0}\\u{202e}😀" content-type="text/x; q=\\"1\\""
}
route "redir" { match { path "/old"; }; redirect "/new?a=\\"{}\\"" status=308; }
route "_" { respond 404 body=##"r#"x"#"##; }
"""

SEED_TOML = """version = 1
[gateway]
name = "mutant"
workers = 1
[limits]
header-timeout = "5s"
max-header-bytes = "16KiB"
max-body-bytes = "1MiB"
[[listener]]
name = "public"
bind = "127.0.0.1:{port}"
protocols = ["h1", "h2c"]
[[upstream]]
name = "api"
balance = { algorithm = "consistent-hash", key = "header:x-user" }
servers = [{ address = "127.0.0.1:9", weight = 2 }, { address = "svc.internal:80" }]
pool = { max-idle = 4, idle-timeout = "30s" }
health-check = { path = "/healthz?x=\\"{{}}\\"", interval = "2s", expect = "200-299" }
timeouts = { connect = "1s", response = "5s" }
retry = { attempts = 1, on = ["connect-error", "502"] }
[[chain]]
name = "common \\"{{x}}\\""
steps = [{ request-headers = { set = { x-a = "a \\"b\\" {{c}} */ é" }, remove = ["cookie"] } }]
[[route]]
name = "self"
steps = [{ use = "common \\"{{x}}\\"" }, { response-headers = { add = { x-r = "r#\\"x\\"# `$x`" } } }]
proxy = { upstream = "api", strip-prefix = "/v1" }
[route.match]
host = ["api.example.com", "*.example.org"]
path-prefix = "/v1"
method = ["GET", "HEAD"]
header = { x-c = "1" }
[[route]]
name = "r#type"
match = { path-regex = "/re/[0-9]+\\\\.x", query = { q = "v\\"{}" } }
respond = { status = 201, body = "a\\n\\"b\\"\\t{{c}}\\u0000\\u202e😀", content-type = "text/x; q=\\"1\\"" }
[[route]]
name = "redir"
match = { path = "/old" }
redirect = { location = "/new?a=\\"{}\\"", status = 308 }
[[route]]
name = "_"
respond = { status = 404, body = 'r#"x"#' }
"""

INSERTS = [b'"', b"\\", b"{", b"}", b"#", b"=", b";", b"\n", b"/", b"*", b"[", b"]", b"'", b"\x00", b"\xff", b"\t",
           b"\r", b" ", b"-", b"0", b"\xc3", b"\xe2\x80\xae", b"\xf0\x9f\x98"]
TOKENS = [b"#true", b"#false", b"true", b"#null", b"1", b"-1", b"0", b"99999999999999999999999", b"1.5", b'""',
          b'"x"', b'"/"', b'"*"', b"{", b"}", b"[", b"]", b'"""', b"'''", b'#"', b'"#', b'r#"', b"route", b"match",
          b"respond", b"proxy", b"use", b"[[route]]", b"[gateway]", b"name =", b"= {", b"/-", b"//", b"/*", b"*/",
          b"status=", b"body=", b'"\\u{110000}"', b'"\\u{d800}"', b'"\\q"', b'"\\uD800"', b"version 2", b"\\"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-3 byte or token edits: flip, insert, delete, duplicate, swap, splice."""
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(data) + 1)
        kind = rng.randrange(7)
        if kind == 0 and data:
            i = min(i, len(data) - 1)
            data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]
        elif kind == 1:
            data = data[:i] + rng.choice(INSERTS) + data[i:]
        elif kind == 2:
            data = data[:i] + data[i + rng.randint(1, 8):]
        elif kind == 3:
            data = data[:i] + data[i:i + rng.randint(1, 40)] * 2 + data[i + 40:]
        elif kind == 4:
            data = data[:i] + b" " + rng.choice(TOKENS) + b" " + data[i:]
        else:
            tokens = re.split(rb"(\s+)", data)
            a, b = rng.randrange(len(tokens)), rng.randrange(len(tokens))
            if kind == 5:
                tokens[a], tokens[b] = tokens[b], tokens[a]
            else:
                del tokens[a]
            data = b"".join(tokens)
    return data


# Where a line ends, as blitzc counts lines (diag/mod.rs `newlines`): KDL v2's
# newlines (a lone CR, VT, FF, NEL, LS, PS too), TOML's LF and CRLF.
NEWLINES = {"kdl": re.compile("\r\n|[\r\n\x0b\x0c\x85\u2028\u2029]"), "toml": re.compile("\r?\n")}


def source_lines(data: bytes, file_name: str) -> list[str]:
    return NEWLINES[file_name.rsplit(".", 1)[1]].split(data.decode(errors="replace"))


def check_batch(blitzc: Path, folder: Path, mutants: dict[str, bytes]) -> dict[str, list[dict]]:
    """Runs one `blitzc check` over every mutant; returns each one's
    diagnostics, each checked well-formed. On a panic, names the mutant."""
    for name, data in mutants.items():
        (folder / name).write_bytes(data)
    r = run(blitzc, "check", "--format", "json", *mutants, cwd=folder)
    if r.returncode not in (0, 1) or b"panicked" in r.stderr:
        for name, data in mutants.items():  # which one
            alone = run(blitzc, "check", "--format", "json", name, cwd=folder)
            assert alone.returncode in (0, 1) and b"panicked" not in alone.stderr, \
                (name, data, alone.returncode, alone.stderr.decode(errors="replace"))
        pytest.fail(f"check of the batch exited {r.returncode}: {r.stderr.decode(errors='replace')}")
    by_file: dict[str, list[dict]] = {name: [] for name in mutants}
    for d in json.loads(r.stdout)["diagnostics"]:
        assert d["file"] in by_file, d
        data = mutants[d["file"]]
        lines = source_lines(data, d["file"])
        where = f"{d['file']}:{d['line']}:{d['column']} {d['code']} {d['message']!r} in {data!r}"
        assert re.fullmatch(r"B[01]\d\d", d["code"]), where
        for position in [d, *d.get("related", [])]:
            assert 1 <= position["line"] <= len(lines), where
            # Columns count characters; bytes bound them whatever the decoding.
            assert 1 <= position["column"] <= len(lines[position["line"] - 1].encode()) + 1, where
        by_file[d["file"]].append(d)
    return by_file


@pytest.mark.timeout(240)
def test_mutated_specs_never_panic_check_and_what_passes_emits_and_builds(blitzc, cache_dir, tmp_path):
    """Seeded mutants of a valid KDL and TOML spec (BLITZ_RANDOM_SEED; about
    BLITZ_RANDOM_SECONDS): `check` exits 0 or 1 without a panic and every
    diagnostic is positioned inside its file with a code; up to 12 mutants
    that pass `check` pass `emit`, and two whose crate needs the seed's
    runtime features (so no runtime rebuild) pass `build`."""
    rng = random.Random(SEED)
    port = free_port()
    seeds = {"kdl": SEED_KDL.replace("{port}", str(port)).encode(),
             "toml": SEED_TOML.replace("{port}", str(port)).encode()}
    # The seeds themselves are valid, and emit the same gateway.
    for form, data in seeds.items():
        (tmp_path / f"seed.{form}").write_bytes(data)
    seed_diagnostics = check_batch(blitzc, tmp_path, {f"seed.{form}": data for form, data in seeds.items()})
    assert not any(errors(d) for d in seed_diagnostics.values()), seed_diagnostics
    seed_code = emitted_code(blitzc, tmp_path / "seed.kdl", tmp_path / "seed-kdl")
    assert emitted_code(blitzc, tmp_path / "seed.toml", tmp_path / "seed-toml") == seed_code
    seed_features = re.search(r"features = \[.*\]", (tmp_path / "seed-kdl" / "Cargo.toml").read_text()).group(0)

    batch_folder = tmp_path / "mutants"
    batch_folder.mkdir()
    passed: list[tuple[str, bytes]] = []
    total = 0
    deadline = time.monotonic() + MUTATION_SECONDS
    while time.monotonic() < deadline:
        mutants = {}
        for k in range(40):
            form = rng.choice(["kdl", "toml"])
            mutants[f"m{total + k:05d}.{form}"] = mutate(seeds[form], rng)
        total += len(mutants)
        for name, diagnostics in check_batch(blitzc, batch_folder, mutants).items():
            if not errors(diagnostics) and mutants[name] not in seeds.values():
                passed.append((name, mutants[name]))
    print(f"{total} mutants (seed {SEED}), {len(passed)} passed check")
    assert total >= 200, total  # the loop ran at all

    emitted = []
    for name, data in rng.sample(passed, min(12, len(passed))):
        folder = tmp_path / "emit" / name
        folder.mkdir(parents=True)
        (folder / name).write_bytes(data)
        r = run(blitzc, "emit", name, "-o", "crate", cwd=folder)
        assert r.returncode == 0 and b"panicked" not in r.stderr, (name, data, r.stderr.decode(errors="replace"))
        features = re.search(r"features = \[.*\]", (folder / "crate" / "Cargo.toml").read_text()).group(0)
        code = (folder / "crate" / "src" / "gateway.rs").read_text()
        if features == seed_features and code != seed_code:
            emitted.append((folder / name, data))
    print(f"{len(emitted)} of the emitted mutants changed the generated code; building {min(2, len(emitted))}")
    for spec, data in emitted[:2]:
        r = build(blitzc, spec, spec.parent / "gw", cache_dir)
        assert r.returncode == 0, (data, r.stderr[-3000:])


@pytest.mark.parametrize(("gateway_name", "admin_socket"), [
    ("eu/1", None),  # the binary is `eu-1`; the socket path gets a folder `blitz-eu` that is not there
    ("eu1", "ctl\x00.sock"),  # no path holds a NUL
], ids=["gateway-name-slash", "admin-socket-nul"])
def test_the_control_socket_a_spec_names_is_bound_or_refused(blitzc, cache_dir, tmp_path, gateway_name,
                                                              admin_socket):
    """docs/spec.md 14 / operations.md: the control socket is the spec's
    `admin { socket }`, else `$XDG_RUNTIME_DIR/blitz-NAME.sock`; the only
    documented start without one is a path another live instance serves.
    These two strings pass `check`, then the socket cannot be bound
    (runtime/src/handoff/mod.rs `default_socket_path` pastes the name as a
    path; a NUL is refused by the kernel interface) and `--upgrade` is
    impossible. Either `check` refuses them at their place, or the socket
    is bound."""
    port = free_port()
    admin = f"admin {{ socket {kdl_string(admin_socket)}; }}\n" if admin_socket else ""
    text = (f"version 1\ngateway {kdl_string(gateway_name)}\n{admin}"
            f"listener \"l\" {{ bind \"127.0.0.1:{port}\"; }}\nroute \"r\" {{ respond 200 body=\"r\"; }}\n")
    spec = tmp_path / "ctl.kdl"
    spec.write_text(text, encoding="utf-8")
    diagnostics = json_diagnostics(run(blitzc, "check", "--format", "json", spec.name, cwd=tmp_path))
    if errors(diagnostics):
        for d in diagnostics:
            assert_well_formed(d, text, spec.name)
        return
    runtime_dir = tmp_path / "xdg"
    runtime_dir.mkdir()
    dev = Served([str(blitzc), "dev", spec.name], port, blitz_env(cache_dir, XDG_RUNTIME_DIR=str(runtime_dir)),
                 cwd=tmp_path)
    try:
        assert h1_get(port, "/")[::2] == (200, b"r")
        log = "\n".join(dev.lines)
    finally:
        dev.stop()
    assert "cannot bind control socket" not in log, log
