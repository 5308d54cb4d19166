"""Routing and request steps, compiled against interpreted against SPEC.md: a
code-review and differential QA pass over `blitzc/src/codegen/` (the generated
decision tree: host classes, first-segment dispatch, ordered checks),
`runtime/src/route.rs` (the helpers it calls), `runtime/src/interp/` (what
`blitzc dev` runs, on `blitz_ir::matcher`) and the runtime's handling of the
action (`respond`, `redirect`, `proxy` with `strip-prefix`, header steps).

One spec of many routes (every matcher SPEC.md defines, nested host
wildcards, an IPv6 host, prefixes that share letters such as `/api` and
`/apix`, a regex kept in every dispatch arm, header and query conditions,
every action and header steps with a chain) is served twice at once: as a
`blitzc build` binary and by `blitzc dev`, the two specs differing only in
their port and control socket. The same requests go to both, over HTTP/1.1
(raw sockets, so `..`, `//`, odd spacing and absolute-form targets reach the
gateway as written) and over h2c: a fixed list of tricky cases, then a few
hundred seeded-random ones (bounded in time). For each request:

- both gateways answer alike (status, the fields that matter, body) and the
  origin receives the same request from both (method, target, end-to-end
  fields in order, the proxy's own fields);
- the answer is that of the route SPEC.md picks, computed here in Python
  from SPEC.md's rules (route order, host without port and trailing dot,
  case-insensitive, `*.` wildcards; path normalisation; segment-aware
  prefixes; whole-path regexes; methods; header and query conditions);
- a proxied request reaches the origin with the normalised path, the prefix
  stripped on a segment boundary, the query as sent, and the steps' edits.

Then targeted requests for what the code review found: the reference
matcher behind `blitzc dev` read header values and decoded query values as
lossy UTF-8 where the generated code compares bytes, so the two decided
apart on a spec value holding U+FFFD; and a `response-headers` `remove` of
`content-type` left a `respond`'s own in place (bugs, fixed; each test next
to its control).

`BLITZ_RANDOM_SEED`, `BLITZ_RANDOM_CASES` and `BLITZ_RANDOM_SECONDS` steer the
random part (defaults: a fixed seed, 600 cases, 25 s per gateway).
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.blitzc import Served, build
from support.client import Closed, RawConn
from support.gateway import free_port
from support.h2client import H2Client
from support.origin import Origin, respond

SEED = int(os.environ.get("BLITZ_RANDOM_SEED", "20261127"))
RANDOM_CASES = int(os.environ.get("BLITZ_RANDOM_CASES", "600"))
RANDOM_SECONDS = float(os.environ.get("BLITZ_RANDOM_SECONDS", "25"))

# ---------------------------------------------------------------- the spec

# A condition: (kind, values) or, for header/query, (kind, name, values).
# Each route: name, conditions, and the KDL of its steps and action. Every
# route first sets `x-route` on its response, so the answer names its route
# (local answers too: response steps run on `respond` and `redirect`).
ROUTES = [
    ("api-host", [("host", ["api.example.com"]), ("path-prefix", ["/api"])],
     'proxy "origin" strip-prefix="/api"'),
    ("deep-wild", [("host", ["*.b.example.com"]), ("path-prefix", ["/w"])], 'respond 200 body="deep-wild"'),
    ("wild", [("host", ["*.example.com", "*.example.org"]), ("path-prefix", ["/w"])], 'respond 200 body="wild"'),
    ("v6", [("host", ["::1"]), ("path-prefix", ["/w"])], 'respond 200 body="v6"'),
    ("health", [("path", ["/healthz"]), ("method", ["GET", "HEAD"])],
     'respond 200 body="ok\\n" content-type="text/plain"'),
    ("slash-exact", [("path", ["/exact/"])], 'respond 200 body="slash-exact"'),
    ("encoded", [("path", ["/a%2Fb", "/~u"])], 'respond 200 body="encoded"'),
    ("users", [("path-prefix", ["/v1/users"]), ("method", ["GET"])], 'proxy "origin" strip-prefix="/v1"'),
    ("v1-write", [("path-prefix", ["/v1"]), ("method", ["POST", "PUT"])],
     """request-headers {
        remove "x-drop"
        set "x-set" "s"
        add "x-keep" "added"
    }
    use "tag"
    proxy "origin\""""),
    ("regex", [("path-regex", ["/r/[a-z]+/[0-9]{1,3}"])], 'respond 200 body="regex"'),
    ("header-value", [("path-prefix", ["/h"]), ("header", "X-Canary", ["1", "yes"])],
     'respond 200 body="header-value"'),
    ("header-present", [("path-prefix", ["/h"]), ("header", "x-flag", [])], 'respond 200 body="header-present"'),
    ("header-both", [("path-prefix", ["/hh"]), ("header", "x-a", ["1"]), ("header", "x-b", [])],
     'respond 200 body="header-both"'),
    ("query-value", [("path-prefix", ["/q"]), ("query", "lang", ["en", "fr b"])], 'respond 200 body="query-value"'),
    ("query-present", [("path-prefix", ["/q"]), ("query", "debug", [])], 'respond 200 body="query-present"'),
    ("query-empty", [("path", ["/qe"]), ("query", "v", [""])], 'respond 200 body="query-empty"'),
    # Spec values holding U+FFFD, which the targeted tests at the end aim at.
    ("query-replacement", [("path", ["/qr"]), ("query", "v", ["\ufffd"])], 'respond 200 body="query-replacement"'),
    ("header-replacement", [("path", ["/hr"]), ("header", "x-r", ["\ufffd"])],
     'respond 200 body="header-replacement"'),
    ("apix", [("path-prefix", ["/apix"])], 'respond 200 body="apix"'),
    ("api", [("path-prefix", ["/api"])], 'proxy "origin"'),
    ("moved", [("path-prefix", ["/old"])],
     'response-headers { add "x-moved" "1" }\n    redirect "https://example.net/new" status=308'),
    # Names that collide once made Rust identifiers (`NoRoute` is the generated 404 variant,
    # `Self` a keyword, `é` and `ü` both `R`, `fn matches` beside `matches!`), and bytes that
    # must survive as literals in generated code.
    ("no-route", [("path", ["/n/1"])],
     'respond 200 body="q\\"b\\\\s\\u{0}nul\\u{7f}\u00e9\\u{fffd}\\n" content-type="text/x; q=\\"\u00e9\\""'),
    ("self", [("path", ["/n/2"])], 'redirect "/rel?x=\\"y\\"&\u00e9" status=307'),
    ("Self", [("path", ["/n/3"])], 'respond 200 body="Self"'),
    ("a.b", [("path", ["/n/4"])], 'respond 200 body="a.b"'),
    ("a_b", [("path", ["/n/5"])], 'respond 200 body="a_b"'),
    ("1st", [("path", ["/n/6"])], 'respond 200 body="1st"'),
    ("\u00e9", [("path", ["/n/7"])], 'respond 200 body="\u00e9"'),
    ("\u00fc", [("path", ["/n/8"])], 'respond 200 body="\u00fc"'),
    # A `remove` step on the gateway's own answer and on an origin's (targeted tests only).
    ("respond-remove", [("path", ["/n/9"])], 'response-headers { remove "content-type" }\n    respond 200 body="n9"'),
    ("proxy-remove", [("path", ["/n/10"])],
     'response-headers { remove "content-type" "x-origin-conn" }\n    proxy "origin"'),
    ("root", [("path", ["/"])], 'respond 200 body="root"'),
    ("fallback", [("path-prefix", ["/"]), ("method", ["GET", "HEAD", "POST", "DELETE"])], 'proxy "origin"'),
]
PROXIED = {name for name, _, tail in ROUTES if "proxy " in tail}
TARGETED_ONLY = {"respond-remove", "proxy-remove"}  # never aimed at by random cases
STRIP = {"api-host": "/api", "users": "/v1"}
REDIRECT = {"moved": (308, "https://example.net/new"), "self": (307, '/rel?x="y"&\u00e9')}
BODY = {"health": b"ok\n", "no-route": 'q"b\\s\0nul\x7f\u00e9\ufffd\n'.encode()}
CONTENT_TYPE = {"health": "text/plain", "no-route": 'text/x; q="\u00e9"'}
DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"


def kdl_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def spec_text(port: int, origin: int, socket_name: str) -> str:
    parts = [f"""version 1
gateway "routing-qa" {{ workers 1 }}
listener "l" {{
    bind "127.0.0.1:{port}"
    protocols "h1" "h2c"
}}
admin {{ socket {kdl_string(socket_name)} }}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
chain "tag" {{
    response-headers {{ add "x-chain" "tag" }}
}}
"""]
    for name, conditions, tail in ROUTES:
        lines = []
        for condition in conditions:
            kind, *rest = condition
            args = ([rest[0]] if kind in ("header", "query") else []) + rest[-1]
            lines.append(f"        {kind} " + " ".join(kdl_string(a) for a in args))
        parts.append(f'route "{name}" {{\n    match {{\n' + "\n".join(lines) + "\n    }\n"
                     f'    response-headers {{ set "x-route" "{name}" }}\n    {tail}\n}}\n')
    return "".join(parts)


# ---------------------------------------------------------------- SPEC.md's rules, in Python

UNRESERVED = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalise(target: str) -> str | None:
    """SPEC.md "Path" with docs/spec.md 15.2: no query, unreserved escapes
    decoded (others upper-cased), repeated slashes merged, dot-segments removed."""
    path = target.split("?", 1)[0]
    if not path.startswith("/"):
        return None
    decoded = re.sub(
        r"%([0-9A-Fa-f]{2})",
        lambda m: chr(int(m[1], 16)) if int(m[1], 16) in UNRESERVED else "%" + m[1].upper(),
        path,
    )
    out: list[str] = []
    trailing = False
    parts = decoded.split("/")[1:]
    for i, segment in enumerate(parts):
        last = i == len(parts) - 1
        if segment in (".", ".."):
            if segment == ".." and out:
                out.pop()
            trailing = True
        elif segment == "":
            trailing = trailing or last
        else:
            out.append(segment)
            trailing = False
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def request_host(authority: str) -> str:
    """SPEC.md "Host": port removed, compared lower-case; a trailing dot and
    the IPv6 spelling do not count (docs/spec.md 15.3)."""
    if authority.startswith("["):
        return str(ipaddress.IPv6Address(authority[1:].split("]")[0]))
    name, _, port = authority.rpartition(":")
    host = name if name and port.isdigit() else authority
    return host.removesuffix(".").lower()


def host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


def has_prefix(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def form_decode(text: str) -> bytes:
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]),
                  text.replace("+", " ").encode("latin-1"))


@dataclass
class Case:
    """One request, sent alike over HTTP/1.1 and (when `h2` holds) h2c."""

    ident: str
    method: str
    path: str  # origin-form path and query, as sent
    authority: str  # Host over HTTP/1.1 (or the absolute-form target's), :authority over h2c
    headers: list = field(default_factory=list)  # (name, value) as written on the wire
    body: bytes | None = None
    absolute_form: bool = False
    host_field: str = "other.test"  # the Host field of an absolute-form request (overridden by its target)

    @property
    def h2(self) -> bool:
        # HTTP/2 methods are tokens too, but a client library upper-cases nothing: keep h2c to
        # upper-case methods, and leave absolute-form and `Connection` (not in HTTP/2) to HTTP/1.1.
        return self.method.isupper() and not self.absolute_form and "connection" not in dict(self.wire_headers())

    def wire_headers(self) -> list:
        """The end-to-end fields as the gateway parses them: values without the spaces around them."""
        return [(n.lower(), v.strip(" \t")) for n, v in self.headers]


def condition_holds(condition, case: Case, path: str) -> bool:
    kind, *rest = condition
    values = rest[-1]
    if kind == "host":
        return any(host_matches(request_host(case.authority), p) for p in values)
    if kind == "path":
        return path in values
    if kind == "path-prefix":
        return any(has_prefix(path, p) for p in values)
    if kind == "path-regex":
        return any(re.fullmatch(p, path) for p in values)
    if kind == "method":
        return case.method in values
    if kind == "header":
        seen = [v for n, v in case.wire_headers() if n == rest[0].lower()]
        return bool(seen) if not values else any(v.encode("latin-1") == x.encode() for v in seen for x in values)
    assert kind == "query"
    query = case.path.partition("?")[2]
    pairs = [pair.partition("=") for pair in query.split("&") if pair]
    found = [form_decode(v) for k, _, v in pairs if form_decode(k) == rest[0].encode()]
    return bool(found) if not values else any(v == x.encode() for v in found for x in values)


def spec_route(case: Case) -> str | None:
    """The first route whose conditions all hold (SPEC.md "Route order"), None for a 404."""
    path = normalise(case.path)
    if path is None:
        return None
    for name, conditions, _ in ROUTES:
        if all(condition_holds(c, case, path) for c in conditions):
            return name
    return None


def spec_forwarded_target(route: str, case: Case) -> str:
    """What the origin's request line carries: the normalised path, `strip-prefix`
    removed on a segment boundary (an empty rest is `/`), then the query as sent."""
    path = normalise(case.path)
    prefix = STRIP.get(route)
    if prefix and has_prefix(path, prefix):
        path = path[len(prefix):] or "/"
    query = case.path.partition("?")
    return path + query[1] + query[2]


def spec_forwarded_fields(route: str, case: Case, tag: str) -> list:
    """The end-to-end fields the origin gets, in order: the client's, then the
    route's request-header edits (remove, set, add: docs/spec.md 12.2)."""
    client = case.wire_headers()
    # RFC 9110 7.6.1: `Connection` and the fields it names are the client's hop-by-hop ones.
    hop = {"connection"} | {n.strip().lower() for k, v in client if k == "connection" for n in v.split(",")}
    fields = [("x-case", tag), *((n, v) for n, v in client if n not in hop)]
    if route == "v1-write":
        fields = [(n, v) for n, v in fields if n not in ("x-drop", "x-set")] + [("x-set", "s"), ("x-keep", "added")]
    return fields


# ---------------------------------------------------------------- the requests

HOSTS = [
    "api.example.com", "API.Example.COM:8080", "api.example.com.", "api.example.com.evil", "x.b.example.com",
    "B.example.com", "deep.X.b.example.com:1", "example.com", "a.example.org", "example.org", "badexample.com",
    "localhost", "127.0.0.1:80", "[::1]", "[0:0::1]:8080", "other.test",
]
SEGMENTS = ["api", "apix", "api.", "v1", "users", "usersx", "w", "h", "hh", "q", "r", "abc", "ABC", "12", "1234",
            "a%2Fb", "a%2fb", "%7Eu", "~u", "x", "new"]
QUERY_PARTS = ["lang=en", "lang=fr+b", "lang=fr%20b", "lang=FR", "Lang=en", "la%6Eg=en", "lang", "debug", "debug=",
               "debug=0", "v", "v=", "v=1", "x=1", "", "v=%EF%BF%BD"]
HEADER_LINES = [
    ("X-Canary", "1"), ("x-canary", " yes\t"), ("x-canary", "2"), ("x-canary", "1, 2"), ("X-Flag", ""),
    ("x-flag", "on"), ("x-a", "1"), ("X-A", "2"), ("x-b", ""), ("X-B", "z"), ("x-drop", "d"), ("x-keep", "k"),
    ("X-Set", "client"),
]
METHODS = ["GET"] * 6 + ["HEAD", "POST", "PUT", "DELETE", "PATCH", "get"]


def near_path(rng: random.Random, conditions) -> str:
    """A path on or just beside a route's own path condition: the value itself, below it, a
    letter past its boundary, or (no path condition) a few random segments."""
    for kind, *rest in conditions:
        values = rest[-1]
        if kind in ("path", "path-prefix"):
            path = rng.choice(values)
            roll = rng.random()
            if roll < 0.3:
                path = path.rstrip("/") + "/" + "/".join(rng.choices(SEGMENTS, k=rng.randrange(1, 3)))
            elif roll < 0.4:
                path += "x"
            elif roll < 0.5:
                path += "/"
            return path
        if kind == "path-regex":
            letters = "".join(rng.choices("abcZ", k=rng.randrange(1, 4)))
            return f"/r/{letters}/" + "".join(rng.choices("0123456789", k=rng.randrange(1, 5)))
    return "/" + "/".join(rng.choices(SEGMENTS, k=rng.randrange(4)))


def disguise(rng: random.Random, path: str) -> str:
    """The same path (or nearly) spelled as SPEC.md's normalisation must undo: dot-segments,
    repeated slashes, escaped unreserved characters, a climb above the root."""
    roll = rng.random()
    if roll < 0.15:
        return "/x/.." + path
    if roll < 0.25:
        return "/.." + path.replace("/", "/./", 1)
    if roll < 0.35:
        return path.replace("/", "//")
    if roll < 0.5:
        # Not a hex digit of an escape already there (`%2F` stays one escape).
        letters = [i for i, ch in enumerate(path) if (ch.isalpha() or ch in "-._~") and "%" not in path[max(0, i - 2):i]]
        if letters:
            i = rng.choice(letters)
            return path[:i] + rng.choice(["%{:02x}", "%{:02X}"]).format(ord(path[i])) + path[i + 1:]
    if roll < 0.55:
        return "/%2e%2e" + path
    return path


def near_host(rng: random.Random, conditions) -> str:
    """One of a route's host patterns spelled as a client might (case, port, trailing dot),
    the apex of a wildcard, or any host of HOSTS."""
    patterns = next((rest[-1] for kind, *rest in conditions if kind == "host"), None)
    if not patterns or rng.random() < 0.3:
        return rng.choice(HOSTS)
    host = rng.choice(patterns)
    if host == "::1":
        return rng.choice(["[::1]", "[0:0::1]:80", "[0000::1]"])
    if host.startswith("*."):
        host = rng.choice(["", "a.", "x.y."]) + host[2:]
    host = "".join(ch.upper() if rng.random() < 0.2 else ch for ch in host)
    return host + rng.choice(["", "", ":8080", "."])


def random_case(rng: random.Random, ident: str) -> Case:
    """A request aimed at a random route, then perturbed: its neighbours decide as well."""
    _, conditions, _ = rng.choice([r for r in ROUTES if r[0] not in TARGETED_ONLY])
    path = disguise(rng, near_path(rng, conditions))
    roll = rng.random()
    if roll < 0.5:
        path += "?" + "&".join(rng.choices(QUERY_PARTS, k=rng.randrange(1, 4)))
    elif roll < 0.55:
        path += "?"
    method = rng.choice(METHODS)
    body = bytes(rng.randrange(20)) if method in ("POST", "PUT") else None
    return Case(
        ident, method, path, near_host(rng, conditions),
        headers=rng.choices(HEADER_LINES, k=rng.randrange(5)),
        body=body, absolute_form=rng.random() < 0.1, host_field=rng.choice(HOSTS),
    )


# Tricky cases every run sends, whatever the seed: the brief's list, each
# against the rule of SPEC.md it exercises.
PINNED = [
    # Prefix boundaries and strip-prefix.
    Case("api", "GET", "/api", "api.example.com"),
    Case("api-slash", "GET", "/api/", "api.example.com"),
    Case("api-query", "GET", "/api?x=1&&y=", "api.example.com"),
    Case("apix", "GET", "/apix", "api.example.com"),
    Case("apix-other", "GET", "/apix/1", "other.test"),
    Case("api-dot", "GET", "/api.", "api.example.com"),
    Case("users", "GET", "/v1/users", "other.test"),
    Case("usersx", "GET", "/v1/usersx", "other.test"),
    Case("users-trailing", "GET", "/v1/users/", "other.test"),
    # Dot-segments, repeated slashes, escapes.
    Case("dotdot-out", "GET", "/api/../apix", "api.example.com"),
    Case("dotdot-escaped", "GET", "/v1/users/%2e%2E/x", "other.test"),
    Case("above-root", "GET", "/../../api/x", "api.example.com"),
    Case("double-slash", "GET", "//exact//", "other.test"),
    Case("exact-no-slash", "GET", "/exact", "other.test"),
    Case("escaped-slash", "GET", "/a%2fb", "other.test"),
    Case("real-slash", "GET", "/a/b", "other.test"),
    Case("escaped-tilde", "GET", "/%7eu", "other.test"),
    Case("escaped-letters", "GET", "/%61pi/x", "API.EXAMPLE.COM"),
    # Hosts: case, port, trailing dot, nested wildcards, the apex, IPv6, absolute-form.
    Case("host-port", "GET", "/api/x", "API.Example.COM:8080"),
    Case("host-dot", "GET", "/api/x", "api.example.com."),
    Case("host-suffix-not-name", "GET", "/api/x", "api.example.com.evil"),
    Case("deep-wild", "GET", "/w", "a.B.example.com"),
    Case("deep-apex", "GET", "/w", "b.example.com"),
    Case("wild-apex", "GET", "/w", "example.com"),
    Case("wild-other", "GET", "/w/x", "x.example.org:9"),
    Case("not-suffix", "GET", "/w", "badexample.com"),
    Case("ipv6", "GET", "/w", "[0:0::1]:8080"),
    Case("absolute", "GET", "/api/abs?q", "api.example.com", absolute_form=True, host_field="other.test"),
    # Headers: name case, spaces around the value, repeated lines, empty value, two conditions.
    Case("header-case", "GET", "/h", "other.test", headers=[("X-CANARY", "yes")]),
    Case("header-spaces", "GET", "/h", "other.test", headers=[("x-canary", " \t1\t ")]),
    Case("header-repeated", "GET", "/h", "other.test", headers=[("x-canary", "2"), ("X-Canary", "1")]),
    Case("header-list", "GET", "/h", "other.test", headers=[("x-canary", "1, 2")]),
    Case("header-empty", "GET", "/h", "other.test", headers=[("X-Flag", "")]),
    Case("header-both", "GET", "/hh", "other.test", headers=[("x-a", "1"), ("x-b", "")]),
    Case("header-one-of-two", "GET", "/hh", "other.test", headers=[("x-a", "1")]),
    # Query: alternatives, form decoding, empty values, name case.
    Case("query-plus", "GET", "/q?lang=fr+b", "other.test"),
    Case("query-escaped", "GET", "/q?la%6Eg=fr%20b", "other.test"),
    Case("query-name-case", "GET", "/q?Lang=en", "other.test"),
    Case("query-present-empty", "GET", "/q?debug=", "other.test"),
    Case("query-empty-value", "GET", "/qe?v=", "other.test"),
    Case("query-bare-name", "GET", "/qe?v", "other.test"),
    Case("query-not-empty", "GET", "/qe?v=1", "other.test"),
    # Methods, steps, actions, 404.
    Case("head-respond", "HEAD", "/healthz", "other.test"),
    Case("lower-method", "get", "/healthz", "other.test"),
    Case("write-steps", "POST", "/v1/x", "other.test", body=b"abc",
         headers=[("x-drop", "1"), ("x-keep", "k1"), ("X-Set", "client"), ("x-keep", "k2")]),
    Case("write-steps-nominated", "PUT", "/v1/c", "other.test", body=b"",
         headers=[("Connection", "x-set, X-Keep"), ("x-set", "client"), ("x-keep", "k1"), ("x-other", "o")]),
    Case("redirect", "GET", "/old/x?y=1", "other.test"),
    *(Case(f"names-{i}", "GET", f"/n/{i}", "other.test") for i in range(1, 9)),
    Case("no-route", "PATCH", "/x", "other.test"),
]


# ---------------------------------------------------------------- serving and sending

@dataclass
class Answer:
    status: int
    fields: tuple  # the response fields that matter, (name, value), in order
    body: bytes
    route: str | None


ANSWER_FIELDS = ("x-route", "x-chain", "x-moved", "location", "content-type", "content-length")


def answer(status: int, headers, body: bytes) -> Answer:
    fields = tuple((n.lower(), v) for n, v in headers if n.lower() in ANSWER_FIELDS)
    routes = [v for n, v in fields if n == "x-route"]
    return Answer(status, fields, body, routes[0] if routes else None)


class Sender:
    """Requests to one gateway over one keep-alive HTTP/1.1 connection and one h2c
    connection, each opened again when the gateway closed it."""

    def __init__(self, port: int):
        self.port = port
        self.h1: RawConn | None = None
        self.h2: H2Client | None = None

    def send_h1(self, case: Case, tag: str) -> Answer:
        target = f"http://{case.authority}{case.path}" if case.absolute_form else case.path
        host = case.host_field if case.absolute_form else case.authority
        lines = [f"{case.method} {target} HTTP/1.1", f"Host: {host}", f"x-case: {tag}"]
        lines += [f"{n}:{v}" if v[:1] in (" ", "\t") else f"{n}: {v}" for n, v in case.headers]
        if case.body is not None:
            lines.append(f"Content-Length: {len(case.body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (case.body or b"")
        for attempt in range(2):
            if self.h1 is None:
                self.h1 = RawConn(self.port)
            try:
                if not self.h1.send(data):
                    raise Closed("send failed")
                r = self.h1.read_response(method=case.method)
            except Closed:
                self.h1.close()
                self.h1 = None
                if attempt:
                    raise
                continue
            if (r.h("connection") or "").lower() == "close":
                self.h1.close()
                self.h1 = None
            # Non-ASCII field values (a route's name, a location) are UTF-8 on the wire.
            fields = [(n, v.encode("latin-1").decode("utf-8", "replace")) for n, v in r.headers]
            return answer(r.status, fields, r.body)
        raise AssertionError("unreachable")

    def send_h2(self, case: Case, tag: str) -> Answer:
        if self.h2 is None or self.h2.closed or self.h2.goaway is not None:
            self.h2 = H2Client(f"127.0.0.1:{self.port}")
        headers = [("x-case", tag), *case.wire_headers()]
        r = self.h2.request(case.path, method=case.method, authority=case.authority, headers=headers, body=case.body)
        assert r.reset is None, (case, r)
        return answer(r.status, [(n, v) for n, v in r.headers if not n.startswith(":")], r.body)

    def close(self) -> None:
        for c in (self.h1, self.h2):
            if c is not None:
                c.close()


def origin_handler(req, conn):
    return respond(conn, req, 200, b"origin\n", headers=("content-type: text/x-origin",))


@dataclass
class Pair:
    """Both gateways of the spec, serving at once, and the origin behind them."""

    ports: dict  # label -> port
    origin: Origin
    spec: Path


@pytest.fixture(scope="module")
def pair(blitzc, cache_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routing-qa")
    origin = Origin()
    origin.handler = origin_handler
    ports = {"compiled": free_port(), "interpreted": free_port()}
    specs = {}
    for label, port in ports.items():
        specs[label] = tmp / f"{label}.kdl"
        specs[label].write_text(spec_text(port, origin.port, f"{label}.sock"), encoding="utf-8")
    binary = tmp / "gw"
    result = build(blitzc, specs["compiled"], binary, cache_dir)
    assert result.returncode == 0, result.stderr
    env = dict(os.environ, BLITZ_CACHE_DIR=str(cache_dir))
    served = {
        "compiled": Served([str(binary)], ports["compiled"], env, cwd=tmp),
        "interpreted": Served([str(blitzc), "dev", str(specs["interpreted"])], ports["interpreted"], env, cwd=tmp),
    }
    try:
        yield Pair(ports, origin, specs["compiled"])
    finally:
        for gw in served.values():
            gw.stop()
        origin.stop()


@dataclass
class Seen:
    """What one request got from one gateway over one protocol, and what the origin received."""

    answer: Answer
    upstream: tuple | None  # (method, target, end-to-end fields but x-request-id) or None


GATEWAY_FIELDS = {"host", "content-length", "transfer-encoding", "x-forwarded-for", "x-forwarded-proto", "via",
                  "x-request-id"}


def upstream_view(req) -> tuple:
    fields = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in req.headers)
    return req.method, req.target, fields


@pytest.fixture(scope="module")
def observed(pair):
    """Every case (the pinned ones, then seeded-random ones until the count or the
    time runs out) sent to both gateways over both protocols: {(label, proto, ident): Seen}."""
    rng = random.Random(SEED)
    cases = list(PINNED)
    randoms = [random_case(rng, f"rnd{i}") for i in range(RANDOM_CASES)]
    senders = {label: Sender(port) for label, port in pair.ports.items()}
    answers: dict = {}
    sent_randoms = len(randoms)
    try:
        for label, sender in senders.items():
            deadline = time.monotonic() + RANDOM_SECONDS
            for n, case in enumerate(cases + randoms[:sent_randoms]):
                if n >= len(cases) and time.monotonic() > deadline:
                    sent_randoms = n - len(cases)  # the other gateway gets the same ones
                    break
                answers[(label, "h1", case.ident)] = sender.send_h1(case, f"{label}/h1/{case.ident}")
                if case.h2:
                    answers[(label, "h2", case.ident)] = sender.send_h2(case, f"{label}/h2/{case.ident}")
    finally:
        for sender in senders.values():
            sender.close()
    all_cases = cases + randoms[:sent_randoms]
    proxied = sum(1 for (label, proto, ident), a in answers.items() if a.route in PROXIED)
    pair.origin.wait_requests(proxied, timeout=10)
    upstream = {}
    for req in pair.origin.requests:
        tags = req.header("x-case")
        assert len(tags) == 1, req
        upstream[tuple(tags[0].split("/"))] = req
    idents = {c.ident for c in all_cases}
    seen = {}
    for key, a in answers.items():
        req = upstream.pop(key, None)
        if key[2] in idents:  # not a random case only the faster gateway got in time
            seen[key] = Seen(a, upstream_view(req) if req else None)
    assert not upstream, f"requests the origin got that no case explains: {list(upstream)[:5]}"
    assert sent_randoms >= min(RANDOM_CASES, 100), f"only {sent_randoms} random cases in time"
    return all_cases, seen


# ---------------------------------------------------------------- differential and SPEC.md


def test_compiled_and_interpreted_answer_alike_and_forward_alike(observed):
    cases, seen = observed
    differences = []
    for case in cases:
        for proto in ("h1", "h2") if case.h2 else ("h1",):
            compiled, interpreted = seen[("compiled", proto, case.ident)], seen[("interpreted", proto, case.ident)]
            if compiled.answer != interpreted.answer:
                differences.append((proto, case, compiled.answer, interpreted.answer))
                continue
            # The same request upstream from both, but for the tag saying who sent it.
            views = [s.upstream and (s.upstream[0], s.upstream[1], [f for f in s.upstream[2]
                                                                    if f[0] not in ("x-case", "x-request-id")])
                     for s in (compiled, interpreted)]
            if views[0] != views[1]:
                differences.append((proto, case, *views))
    assert not differences, f"{len(differences)} differ, first: {differences[:3]}"


def test_every_answer_is_that_of_the_route_spec_md_picks(observed):
    cases, seen = observed
    wrong = []
    for case in cases:
        route = spec_route(case)
        for (label, proto, ident), s in seen.items():
            if ident != case.ident:
                continue
            a = s.answer
            if a.route != route:
                wrong.append((label, proto, case, route, a))
                continue
            if route is None:
                ok = a.status == 404
            elif route in REDIRECT:
                status, location = REDIRECT[route]
                ok = a.status == status and ("location", location) in a.fields
                ok = ok and (("x-moved", "1") in a.fields) == (route == "moved")
            elif route in PROXIED:
                ok = a.status == 200 and a.body == (b"" if case.method == "HEAD" else b"origin\n")
                ok = ok and (("x-chain", "tag") in a.fields) == (route == "v1-write")
            else:
                body = b"" if case.method == "HEAD" else BODY.get(route, route.encode())
                ok = (a.status == 200 and a.body == body
                      and ("content-type", CONTENT_TYPE.get(route, DEFAULT_CONTENT_TYPE)) in a.fields)
            if not ok:
                wrong.append((label, proto, case, route, a))
    assert not wrong, f"{len(wrong)} answers not SPEC.md's, first: {wrong[:3]}"


def by_name(fields: list) -> list:
    return sorted(fields, key=lambda f: f[0])


def test_the_origin_gets_the_normalised_stripped_path_and_the_steps_edits(observed):
    cases, seen = observed
    by_ident = {c.ident: c for c in cases}
    wrong = []
    for (label, proto, ident), s in seen.items():
        case = by_ident[ident]
        route = spec_route(case)
        if (s.upstream is None) == (route in PROXIED):
            wrong.append((label, proto, case, route, "forwarded" if s.upstream else "never reached the origin"))
        if s.upstream is None or route not in PROXIED:
            continue
        method, target, fields = s.upstream
        want_fields = spec_forwarded_fields(route, case, f"{label}/{proto}/{ident}")
        got_fields = [f for f in fields if f[0] not in GATEWAY_FIELDS]
        if proto == "h2":
            # The h2 crate's header map groups lines by name: the order of lines of one name
            # is kept, that across names is not significant (RFC 9110 5.3).
            got_fields, want_fields = by_name(got_fields), by_name(want_fields)
        if (method, target, got_fields) != (case.method, spec_forwarded_target(route, case), want_fields):
            wrong.append((label, proto, case, (method, target, got_fields)))
            continue
        # The proxy's own fields, once each, with what SPEC.md says they carry.
        own = {n: [v for k, v in fields if k == n] for n in ("x-forwarded-for", "x-forwarded-proto", "host")}
        if own["x-forwarded-for"] != ["127.0.0.1"] or own["x-forwarded-proto"] != ["http"] or len(own["host"]) != 1:
            wrong.append((label, proto, case, own))
    assert not wrong, f"{len(wrong)} forwards not SPEC.md's, first: {wrong[:3]}"


def test_the_random_cases_reach_every_route_and_the_404(observed):
    """Guards the generator: a differential over requests that all hit the fallback proves little."""
    _, seen = observed
    reached = {s.answer.route for (label, proto, ident), s in seen.items() if ident.startswith("rnd")}
    missing = {"fallback", "root", "api-host", "api", "apix", "wild", "deep-wild", "v6", "regex", "encoded",
               "slash-exact", "moved", "header-value", None} - reached
    assert not missing, missing


# ---------------------------------------------------------------- what the review found


def raw_route(port: int, target: str, extra: bytes = b"") -> str | None:
    """The route (its `x-route`) one raw HTTP/1.1 request is served by."""
    head = f"GET {target} HTTP/1.1\r\nHost: other.test\r\n".encode() + extra + b"Connection: close\r\n\r\n"
    with RawConn(port) as c:
        c.send(head)
        r = c.read_response()
    return r.h("x-route")


def decisions(pair: Pair, target: str, extra: bytes = b"") -> dict:
    return {label: raw_route(port, target, extra) for label, port in pair.ports.items()}


def cli_route(blitzc: Path, spec: Path, url: str) -> str | None:
    """The route `blitzc route` (the reference matcher) prints for a GET of `url`."""
    result = subprocess.run([str(blitzc), "route", str(spec), "GET", url], check=False, capture_output=True,
                            text=True, timeout=30)
    return result.stdout.strip() if result.returncode == 0 else None


def test_control_query_value_spelled_in_utf8_matches_a_replacement_character(blitzc, pair):
    decided = decisions(pair, "/qr?v=%EF%BF%BD")
    decided["blitzc route"] = cli_route(blitzc, pair.spec, "http://other.test/qr?v=%EF%BF%BD")
    assert set(decided.values()) == {"query-replacement"}, decided


def test_query_byte_that_is_not_utf8_is_not_a_replacement_character(blitzc, pair):
    # SPEC.md: `%XX` is a byte. 0xFF is not the three bytes of U+FFFD, so `query "v" "\ufffd"`
    # does not hold and the request falls through, as the generated code decides; `blitzc dev`
    # and `blitzc route` take it for U+FFFD.
    decided = decisions(pair, "/qr?v=%FF")
    decided["blitzc route"] = cli_route(blitzc, pair.spec, "http://other.test/qr?v=%FF")
    assert set(decided.values()) == {"fallback"}, decided


def test_control_header_value_in_utf8_matches_a_replacement_character(pair):
    extra = "x-r: \ufffd\r\n".encode()
    assert decisions(pair, "/hr", extra) == {"compiled": "header-replacement", "interpreted": "header-replacement"}


def test_header_obs_text_is_not_a_replacement_character(pair):
    # SPEC.md: `header NAME VALUE` is an exact value. The obs-text byte 0xFF is not U+FFFD.
    assert decisions(pair, "/hr", b"x-r: \xff\r\n") == {"compiled": "fallback", "interpreted": "fallback"}


def test_blitzc_route_cli_decides_the_pinned_cases_like_the_gateways(blitzc, pair, observed):
    """`blitzc route` (DESIGN.md) prints the route that would serve a request: the
    same as both gateways for the pinned cases HTTP/1.1 can say as a URL."""
    _, seen = observed
    wrong = []
    for case in PINNED:
        if case.absolute_form or case.method != case.method.upper() or case.path.startswith("//"):
            continue
        args = [str(blitzc), "route", str(pair.spec), case.method, f"http://{case.authority}{case.path}"]
        for n, v in case.headers:
            args += ["-H", f"{n}: {v}"]
        result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=30)
        printed = result.stdout.strip() if result.returncode == 0 else None
        if printed != seen[("compiled", "h1", case.ident)].answer.route:
            wrong.append((case, result.returncode, result.stdout, result.stderr))
    assert not wrong, wrong


def raw_answer(port: int, head: bytes):
    with RawConn(port) as c:
        c.send(head)
        return c.read_response()


def test_control_a_response_step_removes_an_origins_content_type(pair):
    for label, port in pair.ports.items():
        r = raw_answer(port, b"GET /n/10 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
        got = (r.status, r.h("x-route"), r.h("content-type"), r.h("x-origin-conn"))
        assert got == (200, "proxy-remove", None, None), label


def test_a_response_step_removes_the_content_type_of_a_respond(pair):
    # docs/spec.md 12.2: `remove` drops every value of the header from the response sent to the
    # client; a `set` of `content-type` does replace the action's own (test_header_steps.py).
    for label, port in pair.ports.items():
        r = raw_answer(port, b"GET /n/9 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
        assert (r.status, r.h("x-route"), r.body) == (200, "respond-remove", b"n9"), label
        assert r.h("content-type") is None, (label, r)


def test_http10_without_host_matches_no_host_condition(pair):
    """docs/spec.md 15.3: a request without a host matches no `host` condition; the
    upstream still gets a `Host` (HTTP/1.1 needs one): its server's authority."""
    for label, port in pair.ports.items():
        pair.origin.reset()
        pair.origin.handler = origin_handler
        routes = [raw_answer(port, f"GET {target} HTTP/1.0\r\n\r\n".encode()).h("x-route")
                  for target in ("/api/x", "/w", "/healthz")]
        assert routes == ["api", "fallback", "health"], label
        forwarded = pair.origin.wait_requests(2)
        assert [(r.target, r.header("host")) for r in forwarded] == [
            ("/api/x", [pair.origin.addr]), ("/w", [pair.origin.addr])], label
