"""A black-box pass over SPEC.md against the real `blitzc` and a real
compiled gateway, written from the normative text (SPEC.md, DESIGN.md's
compiler table) rather than from the implementation:

- "What `blitzc check` must catch": every rule, in KDL and TOML, each
  diagnostic with its code, severity, line and column (pointed at by a
  needle in the spec text), a label and a help line; all of them in one
  run, alike in the human, json, github and sarif formats; the exit codes
  (0 clean or warnings, 1 errors, 2 usage or IO; `--deny-warnings`);
  tricky variants (addresses written differently, shadowing through host
  wildcards and method subsets, sizes and durations at their edges, zero
  timeouts, names shared across kinds);
- "Meaning": one spec with many routes, built once by `blitzc build`,
  served by the binary and by `blitzc dev`, and asked of `blitzc route`:
  for every request all three pick the same route (host, path
  normalisation, segment-aware prefixes, whole-path regexes, query,
  header and method matchers, 404), and the proxied request is what SPEC.md
  says (steps in written order with `use` spliced in place, strip-prefix,
  hop-by-hop removal, x-forwarded-for/-proto and via, 502/503/504);
- "TOML form": the fixed shapes, and the KDL and TOML twins of that spec
  give the same generated gateway (`blitzc emit`);
- "Files": `version 1` required and first; paths relative to the spec's
  folder whatever the working directory (the admin socket of the built
  binary too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.blitzc import Served, build
from support.gateway import REPO, free_port
from support.origin import Origin, respond

FIXTURES = REPO / "tests" / "fixtures"

# ---------------------------------------------------------------- check: one rule at a time

KDL_BASE = """version 1
listener "l" { bind "127.0.0.1:8080" }
upstream "u" { server "127.0.0.1:9000" }
"""

TOML_BASE = """version = 1

[[listener]]
name = "l"
bind = "127.0.0.1:8080"

[[upstream]]
name = "u"
servers = [{ address = "127.0.0.1:9000" }]
"""

JWT_KDL = f'jwt "sso" {{ issuer "https://sso.test"; audience "api"; algorithms "RS256"; jwks-file "{FIXTURES}/jwks.json" }}\n'
JWT_TOML = f'\n[[jwt]]\nname = "sso"\nissuer = "https://sso.test"\naudience = "api"\nalgorithms = ["RS256"]\njwks-file = "{FIXTURES}/jwks.json"\n'


@dataclass
class Case:
    """A spec (the base listener and upstream plus `body`) and what `check`
    must say: (code, severity, needle) per diagnostic, the needle being the
    text the diagnostic's line and column point at (its first occurrence
    in the spec, or the occurrence after `|` counted from 1: `needle|2`)."""

    id: str
    form: str
    body: str
    expect: list[tuple[str, str, str]]
    base: bool = True

    def text(self) -> str:
        if not self.base:
            return self.body
        return (KDL_BASE if self.form == "kdl" else TOML_BASE) + self.body


def E(code, needle):
    return (code, "error", needle)


def W(code, needle):
    return (code, "warning", needle)


K, T = "kdl", "toml"

CASES = [
    # -- syntax, unknown names, types, missing fields
    Case("kdl-syntax", K, 'route "r" { respond 200\n', [E("B001", "")]),
    Case("toml-syntax", T, '[[route]\nname = "r"\n', [E("B002", '\nname = "r"')]),
    Case("kdl-unknown-node", K, 'listner "x" { bind "127.0.0.1:1" }\n', [E("B010", "listner")]),
    Case("kdl-unknown-property", K, 'upstream "v" { server "127.0.0.1:1" wieght=2 }\n', [E("B010", "wieght=2")]),
    Case("toml-unknown-key", T, '\n[[route]]\nname = "r"\nrespond = 200\nmethod = "GET"\n', [E("B010", "method")]),
    Case("kdl-wrong-type", K, 'limits { max-headers "100" }\n', [E("B011", '"100"')]),
    Case("toml-wrong-type", T, '\n[gateway]\nworkers = true\n', [E("B011", "true")]),
    Case("kdl-listener-without-bind", K, 'listener "m" { protocols "h1" }\n', [E("B012", 'listener "m"')]),
    Case("kdl-upstream-without-server", K, 'upstream "v" { balance "round-robin" }\n', [E("B012", 'upstream "v"')]),
    Case("kdl-route-without-action", K, 'route "r" { match { path "/" } }\n', [E("B012", 'route "r"')]),
    Case("toml-listener-without-bind", T, '\n[[listener]]\nname = "m"\n', [E("B012", "[[listener]]|2")]),
    Case("toml-upstream-without-servers", T, '\n[[upstream]]\nname = "v"\n', [E("B012", "[[upstream]]|2")]),
    Case("toml-route-without-action", T, '\n[[route]]\nname = "r"\n', [E("B012", "[[route]]")]),
    # -- references and names
    Case("kdl-unknown-upstream", K, 'route "r" { proxy "nowhere" }\n', [E("B021", '"nowhere"')]),
    Case("kdl-unknown-chain", K, 'route "r" { use "nochain"; proxy "u" }\n', [E("B021", '"nochain"')]),
    Case("kdl-unknown-jwt", K, 'route "r" { auth "nojwt"; proxy "u" }\n', [E("B021", '"nojwt"')]),
    Case("kdl-unknown-rate-limit", K, 'route "r" { rate-limit "nolimit"; proxy "u" }\n', [E("B021", '"nolimit"')]),
    Case("kdl-unknown-plugin", K, 'route "r" { plugin "noplugin"; proxy "u" }\n', [E("B021", '"noplugin"')]),
    Case("toml-unknown-upstream", T, '\n[[route]]\nname = "r"\nproxy = { upstream = "nowhere" }\n', [E("B021", '"nowhere"')]),
    Case("toml-unknown-chain", T, '\n[[route]]\nname = "r"\nsteps = [{ use = "nochain" }]\nproxy = "u"\n', [E("B021", '"nochain"')]),
    Case("kdl-duplicate-route", K, 'route "r" { match { path "/a" }; proxy "u" }\nroute "r" { match { path "/b" }; proxy "u" }\n', [E("B020", '"r"|2')]),
    Case("kdl-duplicate-upstream", K, 'upstream "u" { server "127.0.0.1:9001" }\n', [E("B020", '"u"|2')]),
    Case("toml-duplicate-chain", T, '\n[[chain]]\nname = "c"\nsteps = []\n\n[[chain]]\nname = "c"\nsteps = []\n'
         '\n[[route]]\nname = "r"\nsteps = [{ use = "c" }]\nproxy = "u"\n',
         # A reference to a repeated name goes to the first: the second is unused.
         [E("B020", '"c"|2'), W("B024", '"c"|2')]),
    Case("kdl-same-name-across-kinds-is-fine", K,
         JWT_KDL.replace('"sso"', '"u"') + 'chain "u" { auth "u" }\nroute "u" { use "u"; proxy "u" }\n', []),
    # -- binds
    Case("bind-twice", K, 'listener "m" { bind "127.0.0.1:8080" }\n', [E("B022", '"127.0.0.1:8080"|2')]),
    Case("bind-under-ipv4-wildcard", K, 'listener "m" { bind "0.0.0.0:8080" }\n', [E("B022", '"0.0.0.0:8080"')]),
    Case("bind-under-dual-stack-wildcard", K, 'listener "m" { bind "[::]:8080" }\n', [E("B022", '"[::]:8080"')]),
    Case("bind-ipv4-mapped", K, 'listener "m" { bind "[::ffff:127.0.0.1]:8080" }\n', [E("B022", '"[::ffff:127.0.0.1]:8080"')]),
    Case("bind-ipv6-spelled-long", K, 'listener "m" { bind "[::1]:81" }\nlistener "n" { bind "[0:0:0:0:0:0:0:1]:81" }\n',
         [E("B022", '"[0:0:0:0:0:0:0:1]:81"')]),
    Case("bind-other-port-or-address-is-fine", K,
         'listener "m" { bind "127.0.0.1:8081" }\nlistener "n" { bind "127.0.0.2:8080" }\nlistener "o" { bind "[::1]:8080" }\n', []),
    Case("bind-port-0-twice-is-fine", K, 'listener "m" { bind "127.0.0.1:0" }\nlistener "n" { bind "127.0.0.1:0" }\n', []),
    Case("toml-bind-twice", T, '\n[[listener]]\nname = "m"\nbind = "0.0.0.0:8080"\n', [E("B022", '"0.0.0.0:8080"')]),
    Case("bind-leading-zeros", K, 'listener "m" { bind "127.000.0.1:81" }\n', [E("B033", '"127.000.0.1:81"')]),
    Case("bind-port-out-of-range", K, 'listener "m" { bind "127.0.0.1:65536" }\n', [E("B033", '"127.0.0.1:65536"')]),
    Case("bind-host-name", K, 'listener "m" { bind "localhost:81" }\n', [E("B033", '"localhost:81"')]),
    Case("server-without-port", K, 'upstream "v" { server "10.0.0.1" }\n', [E("B033", '"10.0.0.1"')]),
    Case("server-with-scheme", T, '\n[[upstream]]\nname = "v"\nservers = [{ address = "http://a.test:80" }]\n',
         [E("B033", '"http://a.test:80"')]),
    # -- shadowed routes
    Case("shadow-after-catch-all", K, 'route "all" { proxy "u" }\nroute "r" { match { path "/x" }; proxy "u" }\n',
         [E("B050", '"r"')]),
    Case("shadow-exact-host-after-wildcard", K,
         'route "w" { match { host "*.example.com" }; proxy "u" }\nroute "r" { match { host "A.Example.COM" }; proxy "u" }\n',
         [E("B050", '"r"')]),
    Case("apex-after-wildcard-is-reachable", K,
         'route "w" { match { host "*.example.com" }; proxy "u" }\nroute "r" { match { host "example.com" }; proxy "u" }\n', []),
    Case("shadow-by-method-subsets", K,
         'route "g" { match { path-prefix "/v1"; method "GET" }; proxy "u" }\n'
         'route "h" { match { path-prefix "/v1"; method "HEAD" }; proxy "u" }\n'
         'route "r" { match { path-prefix "/v1/x"; method "HEAD" "GET" }; proxy "u" }\n', [E("B050", '"r"')]),
    Case("method-superset-is-reachable", K,
         'route "g" { match { path-prefix "/v1"; method "GET" }; proxy "u" }\n'
         'route "r" { match { path "/v1"; method "GET" "POST" }; proxy "u" }\n', []),
    Case("shadow-path-under-prefix", K,
         'route "p" { match { path-prefix "/v1/" }; proxy "u" }\nroute "r" { match { path "/v1" }; proxy "u" }\n',
         [E("B050", '"r"')]),
    Case("prefix-is-segment-aware-for-shadowing", K,
         'route "p" { match { path-prefix "/v1" }; proxy "u" }\nroute "r" { match { path "/v10" }; proxy "u" }\n', []),
    Case("shadow-header-value-under-presence", K,
         'route "p" { match { header "X-A" }; proxy "u" }\nroute "r" { match { header "x-a" "1" }; proxy "u" }\n',
         [E("B050", '"r"')]),
    Case("shadow-regex-under-prefix", K,
         'route "p" { match { path-prefix "/api" }; proxy "u" }\nroute "r" { match { path-regex "/api/.*" }; proxy "u" }\n',
         [E("B050", '"r"')]),
    Case("regex-alternatives-are-reachable", K,
         'route "p" { match { path-prefix "/api" }; proxy "u" }\n'
         'route "r" { match { path-regex "/api|/other" }; proxy "u" }\n'
         'route "s" { match { path-regex "(?i)/api/x" }; proxy "u" }\n', []),
    Case("toml-shadow-after-catch-all", T,
         '\n[[route]]\nname = "all"\nproxy = "u"\n\n[[route]]\nname = "r"\nmatch = { path = "/x" }\nproxy = "u"\n',
         [E("B050", '"r"')]),
    # -- values
    Case("duration-fraction", K, 'limits { idle-timeout "1.5s" }\n', [E("B030", '"1.5s"')]),
    Case("duration-without-unit", K, 'limits { idle-timeout "10" }\n', [E("B030", '"10"')]),
    Case("duration-days", K, 'upstream "v" { server "127.0.0.1:1"; timeouts connect="1d" }\n', [E("B030", 'connect="1d"')]),
    Case("duration-negative", T, '\n[limits]\nbody-timeout = "-1s"\n', [E("B030", '"-1s"')]),
    Case("duration-overflow", K, 'limits { body-timeout "99999999999999999999h" }\n', [E("B030", '"9999')]),
    Case("duration-as-number", T, '\n[limits]\nidle-timeout = 10\n', [E("B011", "10")]),
    Case("size-units-and-edges-are-fine", K,
         'limits { max-header-bytes "16KiB"; max-body-bytes "10MiB" }\n'
         'route "r" { match { path "/x" }; proxy "u" }\n', []),
    Case("size-zero-is-fine", T, '\n[limits]\nmax-body-bytes = 0\nidle-timeout = "0s"\n', []),
    Case("size-decimal-unit", K, 'limits { max-body-bytes "10MB" }\n', [E("B031", '"10MB"')]),
    Case("size-negative", K, 'limits { max-body-bytes -1 }\n', [E("B031", "-1")]),
    Case("size-overflow", T, '\n[limits]\nmax-body-bytes = "17179869184GiB"\n', [E("B031", '"17179869184GiB"')]),
    Case("size-with-space", K, 'limits { max-header-bytes "16 KiB" }\n', [E("B031", '"16 KiB"')]),
    Case("rate-zero", K, 'rate-limit "rl" { key "client-ip"; rate "0/s" }\nroute "r" { rate-limit "rl"; proxy "u" }\n',
         [E("B032", '"0/s"')]),
    Case("rate-without-unit", T, '\n[[rate-limit]]\nname = "rl"\nkey = "client-ip"\nrate = "100"\n'
         '\n[[route]]\nname = "r"\nsteps = [{ rate-limit = "rl" }]\nproxy = "u"\n', [E("B032", '"100"')]),
    Case("rate-per-day", K, 'rate-limit "rl" { key "client-ip"; rate "100/d" }\nroute "r" { rate-limit "rl"; proxy "u" }\n',
         [E("B032", '"100/d"')]),
    Case("status-99", K, 'route "r" { respond 99 }\n', [E("B034", "99")]),
    Case("status-600", T, '\n[[route]]\nname = "r"\nrespond = 600\n', [E("B034", "600")]),
    Case("redirect-status-not-3xx", K, 'route "r" { redirect "/x" status=300 }\n', [E("B034", "status=300")]),
    Case("status-as-string", K, 'route "r" { respond "200" }\n', [E("B011", '"200"')]),
    Case("header-name-with-space-in-set", K, 'route "r" { request-headers { set "bad name" "v" }; proxy "u" }\n',
         [E("B035", '"bad name"')]),
    Case("header-name-with-colon-in-remove", K, 'route "r" { response-headers { remove "x:y" }; proxy "u" }\n',
         [E("B035", '"x:y"')]),
    Case("header-name-in-matcher", T, '\n[[route]]\nname = "r"\nmatch = { header = { "x(y)" = "1" } }\nproxy = "u"\n',
         [E("B035", '"x(y)"')]),
    Case("header-name-in-hash-key", K, 'upstream "h" { balance "consistent-hash" key="header:x y"; server "127.0.0.1:1" }\n',
         [E("B035", 'key="header:x y"')]),
    Case("header-value-with-newline", K, 'route "r" { request-headers { set "x-a" "1\\n2" }; proxy "u" }\n',
         [E("B040", '"1\\n2"')]),
    Case("regex-unclosed", K, 'route "r" { match { path-regex "/a(" }; proxy "u" }\n', [E("B036", '"/a("')]),
    Case("regex-look-ahead", T, '\n[[route]]\nname = "r"\nmatch = { path-regex = "/(?=x)" }\nproxy = "u"\n',
         [E("B036", '"/(?=x)"')]),
    Case("regex-too-big", K, 'route "r" { match { path-regex "/a{1000}{1000}" }; proxy "u" }\n', [E("B036", '"/a{1000}')]),
    # -- zero durations that leave a gateway unable to serve (warnings)
    Case("zero-header-timeout", K, 'limits { header-timeout "0s" }\n', [W("B041", '"0s"')]),
    Case("zero-upstream-timeouts", K,
         'upstream "v" {\n server "127.0.0.1:1"\n timeouts connect="0s" response="0ms"\n'
         ' health-check interval="0s" timeout="0s"\n retry attempts=1 total="0s"\n}\n',
         [W("B041", 'connect="0s"'), W("B041", 'response="0ms"'), W("B041", 'interval="0s"'),
          W("B041", 'timeout="0s"'), W("B041", 'total="0s"')]),
    Case("toml-zero-health-check-interval", T,
         '\n[[upstream]]\nname = "v"\nservers = [{ address = "127.0.0.1:1" }]\nhealth-check = { interval = "0s" }\n',
         [W("B041", '"0s"')]),
    # -- protocols and TLS
    Case("h2-without-tls", K, 'listener "m" { bind "127.0.0.1:81"; protocols "h1" "h2" }\n', [E("B060", '"h2"')]),
    Case("h3-without-tls", T, '\n[[listener]]\nname = "m"\nbind = "127.0.0.1:81"\nprotocols = ["h3"]\n', [E("B060", '"h3"')]),
    Case("h2c-with-tls", K,
         f'listener "m" {{\n bind "127.0.0.1:81"\n protocols "h1" "h2c"\n tls {{ cert "{FIXTURES}/edge.crt" key="{FIXTURES}/edge.key" }}\n}}\n',
         [E("B061", '"h2c"')]),
    Case("tls-cert-missing", K,
         f'listener "m" {{\n bind "127.0.0.1:81"\n tls {{ cert "{FIXTURES}/none.crt" key="{FIXTURES}/edge.key" }}\n}}\n',
         [E("B062", f'"{FIXTURES}/none.crt"')]),
    Case("tls-cert-garbage", T,
         f'\n[[listener]]\nname = "m"\nbind = "127.0.0.1:81"\ntls = {{ certs = [{{ cert = "{FIXTURES}/garbage.pem", key = "{FIXTURES}/edge.key" }}] }}\n',
         [E("B062", f'"{FIXTURES}/garbage.pem"')]),
    Case("tls-cert-key-mismatch", K,
         f'listener "m" {{\n bind "127.0.0.1:81"\n tls {{ cert "{FIXTURES}/mismatched.crt" key="{FIXTURES}/mismatched.key" }}\n}}\n',
         [E("B063", f'"{FIXTURES}/mismatched.crt"')]),
    # -- auth order
    Case("require-role-without-auth", K, JWT_KDL + 'route "r" { require-role "admin"; auth "sso"; proxy "u" }\n',
         [E("B070", 'require-role "admin"')]),
    Case("require-role-in-chain-before-auth", K,
         JWT_KDL + 'chain "roles" { require-role "admin" }\nroute "r" { use "roles"; auth "sso"; proxy "u" }\n',
         [E("B070", 'require-role "admin"')]),
    Case("require-role-after-auth-from-chain-is-fine", K,
         JWT_KDL + 'chain "authn" { auth "sso" }\nchain "roles" { require-role "admin" }\n'
         'route "r" { use "authn"; use "roles"; proxy "u" }\n', []),
    Case("toml-require-role-without-auth", T, JWT_TOML +
         '\n[[route]]\nname = "r"\nsteps = [{ require-role = ["admin"] }, { auth = "sso" }]\nproxy = "u"\n',
         [E("B070", "{ require-role")]),
    Case("claim-rate-limit-before-auth", K,
         JWT_KDL + 'rate-limit "rl" { key "jwt:sub"; rate "10/s" }\nchain "authn" { auth "sso" }\n'
         'route "r" { rate-limit "rl"; use "authn"; proxy "u" }\n', [E("B071", 'rate-limit "rl";')]),
    Case("claim-rate-limit-after-auth-is-fine", K,
         JWT_KDL + 'rate-limit "rl" { key "jwt:sub"; rate "10/s" }\nchain "authn" { auth "sso" }\n'
         'route "r" { use "authn"; rate-limit "rl"; proxy "u" }\n', []),
    Case("ebpf-on-header-key", K,
         'rate-limit "rl" { key "header:x-user"; rate "10/s"; ebpf #true }\nroute "r" { rate-limit "rl"; proxy "u" }\n',
         [E("B074", "#true")]),
    Case("jwt-algorithm-mix", K, JWT_KDL.replace('"RS256"', '"RS256" "HS256"') + 'route "r" { auth "sso"; proxy "u" }\n',
         # The key set holds no HMAC key either.
         [E("B072", '"HS256"'), E("B073", f'"{FIXTURES}/jwks.json"')]),
    Case("jwks-missing", K, JWT_KDL.replace("jwks.json", "none.json") + 'route "r" { auth "sso"; proxy "u" }\n',
         [E("B073", f'"{FIXTURES}/none.json"')]),
    Case("jwks-without-key-for-algorithm", K,
         JWT_KDL.replace("jwks.json", "hmac-jwks.json") + 'route "r" { auth "sso"; proxy "u" }\n', [E("B073", f'"{FIXTURES}/hmac-jwks.json"')]),
    Case("plugin-missing", K, f'plugin "p" {{ wasm "{FIXTURES}/none.wasm" }}\nroute "r" {{ plugin "p"; proxy "u" }}\n',
         [E("B090", f'"{FIXTURES}/none.wasm"')]),
    Case("plugin-not-wasm", T, f'\n[[plugin]]\nname = "p"\nwasm = "{FIXTURES}/not-wasm.wasm"\n'
         '\n[[route]]\nname = "r"\nsteps = [{ plugin = "p" }]\nproxy = "u"\n', [E("B090", f'"{FIXTURES}/not-wasm.wasm"')]),
    # -- balancing
    Case("consistent-hash-without-key", K, 'upstream "h" { balance "consistent-hash"; server "127.0.0.1:1" }\n',
         [E("B080", '"consistent-hash"')]),
    Case("every-weight-zero", T,
         '\n[[upstream]]\nname = "w"\nbalance = "weighted-round-robin"\n'
         'servers = [{ address = "127.0.0.1:1", weight = 0 }, { address = "127.0.0.1:2", weight = 0 }]\n',
         [E("B081", "0 }")]),
    Case("one-weight-zero-is-fine", K,
         'upstream "w" { balance "weighted-round-robin"; server "127.0.0.1:1" weight=0; server "127.0.0.1:2" weight=3 }\n', []),
    Case("weight-on-round-robin", K, 'upstream "w" { server "127.0.0.1:1" weight=1 }\n', [W("B082", "weight=1")]),
    Case("weight-on-p2c", T, '\n[[upstream]]\nname = "w"\nbalance = "p2c"\nservers = [{ address = "127.0.0.1:1", weight = 2 }]\n',
         [W("B082", "2 }")]),
    # -- version
    Case("version-missing", K, 'listener "l" { bind "127.0.0.1:8080" }\n', [E("B003", "listener")], base=False),
    Case("version-not-first", K, 'listener "l" { bind "127.0.0.1:8080" }\nversion 1\n', [E("B003", "version")], base=False),
    Case("version-2", K, 'version 2\nlistener "l" { bind "127.0.0.1:8080" }\n', [E("B003", "2")], base=False),
    Case("version-after-comments-is-fine", K, '// a spec\n/* v1 */\nversion 1\nlistener "l" { bind "127.0.0.1:8080" }\n', [],
         base=False),
    Case("toml-version-missing", T, '[[listener]]\nname = "l"\nbind = "127.0.0.1:8080"\n', [E("B003", "[[listener]]")], base=False),
    Case("toml-version-not-first", T, 'listener = [{ name = "l", bind = "127.0.0.1:8080" }]\nversion = 1\n',
         [E("B003", "version")], base=False),
]


def run_check(blitzc: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(blitzc), "check", *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based (line, column) of `needle` (`needle|N`: its Nth occurrence)."""
    needle, _, nth = needle.partition("|")
    at = -1
    for _ in range(int(nth or 1)):
        at = text.find(needle, at + 1)
        assert at >= 0, f"needle {needle!r} not in the spec"
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1


def json_diagnostics(result: subprocess.CompletedProcess) -> list[dict]:
    return json.loads(result.stdout)["diagnostics"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check_catches_each_rule_with_its_position(blitzc, tmp_path, case):
    text = case.text()
    spec = tmp_path / f"spec.{case.form}"
    spec.write_text(text)
    result = run_check(blitzc, spec, "--format", "json")
    got = json_diagnostics(result)
    if case.id == "kdl-syntax":  # where a parser notices a missing brace is its own business
        assert got and {d["code"] for d in got} == {"B001"} and result.returncode == 1, result.stdout
        return
    want = sorted((code, sev, *position(text, needle)) for code, sev, needle in case.expect)
    actual = sorted((d["code"], d["severity"], d["line"], d["column"]) for d in got)
    assert actual == want, json.dumps(got, indent=1)
    for d in got:
        assert d["file"] == str(spec) and d["help"].strip() and d["label"].strip() and d["message"].strip(), d
    errors = any(sev == "error" for _, sev, _ in case.expect)
    assert result.returncode == (1 if errors else 0), result.stderr
    if not errors:
        denied = run_check(blitzc, spec, "--deny-warnings", "--format", "json")
        assert denied.returncode == (1 if case.expect else 0)


# ---------------------------------------------------------------- check: all at once, every format

MANY_KDL = f"""version 1
gateway "many" {{ workers 0 }}
listener "a" {{ bind "0.0.0.0:8080" }}
listener "b" {{
    bind "[::]:8080"
    protocols "h1" "h2"
}}
limits {{
    idle-timeout "10"
    max-body-bytes "10MB"
}}
upstream "u" {{
    balance "consistent-hash"
    server "127.0.0.1:9000" weight=2
}}
upstream "v" {{ server "127.0.0.1:9001" weight=1 }}
jwt "sso" {{
    issuer "https://sso.test"
    audience "api"
    algorithms "RS256" "HS256"
    jwks-file "{FIXTURES}/jwks.json"
}}
rate-limit "rl" {{
    key "jwt:sub"
    rate "10/s"
}}
rate-limit "bad" {{
    key "client-ip"
    rate "100/d"
}}
chain "roles" {{ require-role "admin" }}
route "r1" {{
    match {{ path-regex "/a(" }}
    use "roles"
    rate-limit "rl"
    rate-limit "bad"
    auth "sso"
    request-headers {{ set "bad name" "1" }}
    proxy "nowhere"
}}
route "r2" {{
    match {{ path "/x" }}
    respond 600
}}
route "all" {{ proxy "v" }}
route "late" {{
    match {{ path "/late" }}
    respond 200
}}
"""

MANY_EXPECT = [
    E("B041", "0 }"), E("B022", '"[::]:8080"'), E("B060", '"h2"'), E("B030", '"10"'), E("B031", '"10MB"'),
    E("B080", '"consistent-hash"'), W("B082", "weight=1"), E("B072", '"HS256"'), E("B073", f'"{FIXTURES}/jwks.json"'),
    E("B032", '"100/d"'), E("B070", 'require-role "admin"'), E("B071", 'rate-limit "rl"\n'), E("B036", '"/a("'), E("B035", '"bad name"'),
    E("B021", '"nowhere"'), E("B034", "600"), E("B050", '"late"'),
]

MANY_TOML = f"""version = 1

[gateway]
workers = 0

[[listener]]
name = "a"
bind = "0.0.0.0:8080"

[[listener]]
name = "b"
bind = "[::]:8080"
protocols = ["h1", "h2"]

[limits]
idle-timeout = "10"
max-body-bytes = "10MB"

[[upstream]]
name = "u"
balance = "consistent-hash"
servers = [{{ address = "127.0.0.1:9000", weight = 2 }}]

[[upstream]]
name = "v"
servers = [{{ address = "127.0.0.1:9001", weight = 1 }}]

[[jwt]]
name = "sso"
issuer = "https://sso.test"
audience = "api"
algorithms = ["RS256", "HS256"]
jwks-file = "{FIXTURES}/jwks.json"

[[rate-limit]]
name = "rl"
key = "jwt:sub"
rate = "10/s"

[[rate-limit]]
name = "bad"
key = "client-ip"
rate = "100/d"

[[chain]]
name = "roles"
steps = [{{ require-role = "admin" }}]

[[route]]
name = "r1"
match = {{ path-regex = "/a(" }}
steps = [
  {{ use = "roles" }},
  {{ rate-limit = "rl" }},
  {{ rate-limit = "bad" }},
  {{ auth = "sso" }},
  {{ request-headers = {{ set = {{ "bad name" = "1" }} }} }},
]
proxy = "nowhere"

[[route]]
name = "r2"
match = {{ path = "/x" }}
respond = 600

[[route]]
name = "all"
proxy = "v"

[[route]]
name = "late"
match = {{ path = "/late" }}
respond = 200
"""

MANY_TOML_EXPECT = [
    E("B041", "0\n"), E("B022", '"[::]:8080"'), E("B060", '"h2"'), E("B030", '"10"'), E("B031", '"10MB"'),
    E("B080", '"consistent-hash"'), W("B082", "1 }"), E("B072", '"HS256"'), E("B073", f'"{FIXTURES}/jwks.json"'),
    E("B032", '"100/d"'),
    E("B070", '{ require-role'), E("B071", '{ rate-limit'), E("B036", '"/a("'), E("B035", '"bad name"'),
    E("B021", '"nowhere"'), E("B034", "600"), E("B050", '"late"'),
]


def _github(line: str):
    m = re.match(r"^::(error|warning) file=([^,]*),line=(\d+),col=(\d+),title=(B\d{3})::(.*)$", line)
    assert m, line
    sev, file, ln, col, code, rest = m.groups()
    assert "%0Ahelp: " in rest, line
    return code, sev, int(ln), int(col), file


def _sarif(doc: dict):
    out = []
    for r in doc["runs"][0]["results"]:
        loc = r["locations"][0]["physicalLocation"]
        out.append((r["ruleId"], r["level"], loc["region"]["startLine"], loc["region"]["startColumn"],
                    loc["artifactLocation"]["uri"]))
        assert r["properties"]["help"], r
    return out


@pytest.mark.parametrize("form", ["kdl", "toml"])
def test_every_problem_in_one_run_alike_in_every_format(blitzc, tmp_path, form):
    text, expect = (MANY_KDL, MANY_EXPECT) if form == "kdl" else (MANY_TOML, MANY_TOML_EXPECT)
    spec = tmp_path / f"many.{form}"
    spec.write_text(text)
    want = sorted((code, sev, *position(text, needle), str(spec)) for code, sev, needle in expect)

    as_json = run_check(blitzc, spec, "--format", "json")
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    got = sorted((d["code"], d["severity"], d["line"], d["column"], d["file"]) for d in doc["diagnostics"])
    assert got == want, json.dumps(doc["diagnostics"], indent=1)
    lines = [(d["line"], d["column"]) for d in doc["diagnostics"]]
    assert lines == sorted(lines), "reported in file order"

    github = run_check(blitzc, spec, "--format", "github")
    assert github.returncode == 1
    assert sorted(_github(line) for line in github.stdout.splitlines() if line.startswith("::")) == want

    sarif = run_check(blitzc, spec, "--format", "sarif")
    assert sarif.returncode == 1
    assert sorted(_sarif(json.loads(sarif.stdout))) == want

    human = run_check(blitzc, spec)
    assert human.returncode == 1
    shown = human.stdout + human.stderr
    for code, sev, line, col, _ in want:
        assert f"{code}(" in shown and f"[{spec}:{line}:" in shown, (code, line)
    assert shown.count("help:") >= len(want)


def test_exit_codes_of_check(blitzc, tmp_path):
    clean = tmp_path / "clean.kdl"
    clean.write_text(KDL_BASE + 'route "r" { proxy "u" }\n')
    warned = tmp_path / "warned.toml"
    warned.write_text(TOML_BASE.replace('9000" }', '9000", weight = 2 }') + '\n[[route]]\nname = "r"\nproxy = "u"\n')
    bad = tmp_path / "bad.kdl"
    bad.write_text(KDL_BASE + 'route "r" { proxy "nowhere" }\n')
    other = tmp_path / "spec.yaml"
    other.write_text("version: 1\n")
    assert run_check(blitzc, clean).returncode == 0
    assert run_check(blitzc, clean, "--deny-warnings").returncode == 0
    assert run_check(blitzc, warned).returncode == 0
    assert run_check(blitzc, warned, "--deny-warnings").returncode == 1
    assert run_check(blitzc, clean, warned).returncode == 0
    both = run_check(blitzc, clean, bad, "--format", "json")
    assert both.returncode == 1 and {d["file"] for d in json_diagnostics(both)} == {str(bad)}
    assert run_check(blitzc, tmp_path / "missing.kdl").returncode == 2
    assert run_check(blitzc, tmp_path).returncode == 2, "a folder is an IO error"
    assert run_check(blitzc, clean, "--format", "xml").returncode == 2
    assert run_check(blitzc).returncode == 2
    unknown = run_check(blitzc, other, "--format", "json")
    assert unknown.returncode in (1, 2) and "B004" in unknown.stdout + unknown.stderr


def test_paths_are_relative_to_the_spec_folder_not_the_working_directory(blitzc, tmp_path):
    site = tmp_path / "site"
    for sub, name in (("certs", "edge.crt"), ("certs", "edge.key"), ("keys", "jwks.json"), ("plugins", "geo_tag.wasm")):
        (site / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / name, site / sub / name)
    text = """version 1
listener "tls" {
    bind "127.0.0.1:8443"
    tls { cert "certs/edge.crt" key="certs/edge.key" }
}
upstream "u" { server "127.0.0.1:9000" }
jwt "sso" { issuer "https://sso.test"; audience "api"; algorithms "RS256"; jwks-file "keys/jwks.json" }
plugin "geo" { wasm "plugins/geo_tag.wasm" }
route "r" { auth "sso"; plugin "geo"; proxy "u" }
"""
    (site / "edge.kdl").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Relative and absolute spec paths, from a folder holding none of the files.
    assert run_check(blitzc, "../site/edge.kdl", cwd=elsewhere).returncode == 0
    assert run_check(blitzc, site / "edge.kdl", cwd="/").returncode == 0
    # The same spec in a folder without the files: each path is reported where it is written.
    (elsewhere / "edge.kdl").write_text(text)
    result = run_check(blitzc, "edge.kdl", "--format", "json", cwd=site)
    assert result.returncode == 0, "the spec of the working directory is read, with its files"
    result = run_check(blitzc, elsewhere / "edge.kdl", "--format", "json", cwd=site)
    got = sorted((d["code"], d["line"]) for d in json_diagnostics(result))
    assert got == [("B062", 4), ("B062", 4), ("B073", 7), ("B090", 8)], got


# ---------------------------------------------------------------- meaning: one spec, three deciders

MEANING_KDL = """version 1
gateway "spec-qa" {{ workers 2 }}
listener "l" {{ bind "127.0.0.1:{port}" }}
admin {{ socket "run/ctl.sock" }}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
upstream "slow" {{
    server "127.0.0.1:{origin}"
    timeouts connect="1s" response="1s"
}}
upstream "dead" {{
    server "127.0.0.1:{dead}"
    timeouts connect="1s"
}}
upstream "down" {{
    server "127.0.0.1:{origin}"
    health-check path="/healthz" interval="1s" timeout="500ms" unhealthy=1 expect="299"
}}
chain "inner" {{
    request-headers {{
        set "x-order" "inner"
        add "x-trace" "inner"
    }}
    response-headers {{ add "x-rtrace" "inner" }}
}}
chain "outer" {{
    request-headers {{ add "x-trace" "outer-1" }}
    use "inner"
    request-headers {{ add "x-trace" "outer-2" }}
}}
route "exact-host" {{
    match {{
        host "Exact.Example.com"
        path-prefix "/h"
    }}
    respond 200 body="exact-host"
}}
route "wild-host" {{
    match {{
        host "*.example.com"
        path-prefix "/h"
    }}
    respond 200 body="wild-host"
}}
route "path-exact" {{
    match {{ path "/p/exact" "/p/~user" }}
    respond 200 body="path-exact"
}}
route "users" {{
    match {{ path-prefix "/v1/users" }}
    response-headers {{ set "x-route" "users" }}
    proxy "origin" strip-prefix="/v1"
}}
route "regex" {{
    match {{ path-regex "/r/[0-9]+" }}
    respond 200 body="regex"
}}
route "query-val" {{
    match {{
        path "/q"
        query "lang" "en" "fr"
    }}
    respond 200 body="query-val"
}}
route "query-present" {{
    match {{
        path "/q"
        query "debug"
    }}
    respond 200 body="query-present"
}}
route "header-val" {{
    match {{
        path "/hd"
        header "X-Canary" "1"
    }}
    respond 200 body="header-val"
}}
route "header-present" {{
    match {{
        path "/hd"
        header "x-present"
    }}
    respond 200 body="header-present"
}}
route "methods" {{
    match {{
        path "/m"
        method "PUT" "delete"
    }}
    respond 200 body="methods"
}}
route "steps" {{
    match {{ path-prefix "/steps" }}
    request-headers {{
        set "x-order" "route-first"
        add "x-trace" "route-first"
    }}
    response-headers {{ add "x-rtrace" "route-first" }}
    use "outer"
    request-headers {{
        add "x-trace" "route-last"
        remove "x-drop"
    }}
    response-headers {{
        add "x-rtrace" "route-last"
        set "x-route" "steps"
    }}
    proxy "origin"
}}
route "slow" {{
    match {{ path-prefix "/slow" }}
    proxy "slow"
}}
route "dead" {{
    match {{ path-prefix "/dead" }}
    proxy "dead"
}}
route "down" {{
    match {{ path-prefix "/down" }}
    proxy "down"
}}
route "moved" {{
    match {{ path-prefix "/old" }}
    redirect "https://example.com/new" status=307
}}
route "fallback" {{
    match {{
        path-prefix "/o" "/"
        method "GET" "POST"
    }}
    response-headers {{ set "x-route" "fallback" }}
    proxy "origin"
}}
"""

MEANING_TOML = """version = 1

[gateway]
name = "spec-qa"
workers = 2

[[listener]]
name = "l"
bind = "127.0.0.1:{port}"

[admin]
socket = "run/ctl.sock"

[[upstream]]
name = "origin"
servers = [{{ address = "127.0.0.1:{origin}" }}]

[[upstream]]
name = "slow"
servers = [{{ address = "127.0.0.1:{origin}" }}]
timeouts = {{ connect = "1s", response = "1s" }}

[[upstream]]
name = "dead"
timeouts = {{ connect = "1s" }}

[[upstream.servers]]
address = "127.0.0.1:{dead}"

[[upstream]]
name = "down"
servers = [{{ address = "127.0.0.1:{origin}" }}]
health-check = {{ path = "/healthz", interval = "1s", timeout = "500ms", unhealthy = 1, expect = "299" }}

[[chain]]
name = "inner"
steps = [
  {{ request-headers = {{ set = {{ x-order = "inner" }}, add = {{ x-trace = "inner" }} }} }},
  {{ response-headers = {{ add = {{ x-rtrace = "inner" }} }} }},
]

[[chain]]
name = "outer"
steps = [
  {{ request-headers = {{ add = {{ x-trace = "outer-1" }} }} }},
  {{ use = "inner" }},
  {{ request-headers = {{ add = {{ x-trace = "outer-2" }} }} }},
]

[[route]]
name = "exact-host"
match = {{ host = "Exact.Example.com", path-prefix = "/h" }}
respond = {{ status = 200, body = "exact-host" }}

[[route]]
name = "wild-host"
match = {{ host = ["*.example.com"], path-prefix = ["/h"] }}
respond = {{ status = 200, body = "wild-host" }}

[[route]]
name = "path-exact"
match = {{ path = ["/p/exact", "/p/~user"] }}
respond = {{ status = 200, body = "path-exact" }}

[[route]]
name = "users"
match = {{ path-prefix = "/v1/users" }}
steps = [{{ response-headers = {{ set = {{ x-route = "users" }} }} }}]
proxy = {{ upstream = "origin", strip-prefix = "/v1" }}

[[route]]
name = "regex"
match = {{ path-regex = "/r/[0-9]+" }}
respond = {{ status = 200, body = "regex" }}

[[route]]
name = "query-val"
match = {{ path = "/q", query = {{ lang = ["en", "fr"] }} }}
respond = {{ status = 200, body = "query-val" }}

[[route]]
name = "query-present"
match = {{ path = "/q", query = {{ debug = true }} }}
respond = {{ status = 200, body = "query-present" }}

[[route]]
name = "header-val"
respond = {{ status = 200, body = "header-val" }}

[route.match]
path = "/hd"
header = {{ X-Canary = "1" }}

[[route]]
name = "header-present"
match = {{ path = "/hd", header = {{ x-present = true }} }}
respond = {{ status = 200, body = "header-present" }}

[[route]]
name = "methods"
match = {{ path = "/m", method = ["PUT", "delete"] }}
respond = {{ status = 200, body = "methods" }}

[[route]]
name = "steps"
match = {{ path-prefix = "/steps" }}
steps = [
  {{ request-headers = {{ set = {{ x-order = "route-first" }}, add = {{ x-trace = "route-first" }} }} }},
  {{ response-headers = {{ add = {{ x-rtrace = "route-first" }} }} }},
  {{ use = "outer" }},
  {{ request-headers = {{ add = {{ x-trace = "route-last" }}, remove = ["x-drop"] }} }},
  {{ response-headers = {{ add = {{ x-rtrace = "route-last" }}, set = {{ x-route = "steps" }} }} }},
]
proxy = "origin"

[[route]]
name = "slow"
match = {{ path-prefix = "/slow" }}
proxy = "slow"

[[route]]
name = "dead"
match = {{ path-prefix = "/dead" }}
proxy = {{ upstream = "dead" }}

[[route]]
name = "down"
match = {{ path-prefix = "/down" }}
proxy = "down"

[[route]]
name = "moved"
match = {{ path-prefix = "/old" }}
redirect = {{ location = "https://example.com/new", status = 307 }}

[[route]]
name = "fallback"
match = {{ path-prefix = ["/o", "/"], method = ["GET", "POST"] }}
steps = [{{ response-headers = {{ set = {{ x-route = "fallback" }} }} }}]
proxy = "origin"
"""

# (method, target, header lines, the route SPEC.md picks, the target the origin gets when proxied)
ROUTING = [
    # Host: case-insensitive, port and trailing dot removed, a wildcard not matching the apex.
    ("GET", "/h", [("Host", "exact.example.com")], "exact-host", None),
    ("GET", "/h", [("Host", "EXACT.EXAMPLE.COM:8080")], "exact-host", None),
    ("GET", "/h", [("Host", "exact.example.com.")], "exact-host", None),
    ("GET", "/h", [("Host", "a.exact.example.com")], "wild-host", None),
    ("GET", "/h", [("Host", "B.Example.Com:1")], "wild-host", None),
    ("GET", "/h", [("Host", "example.com")], "fallback", "/h"),
    ("GET", "/h", [("Host", "badexample.com")], "fallback", "/h"),
    ("GET", "http://exact.example.com/h", [("Host", "other.test")], "exact-host", None),
    # Path: exact, after dot-segments, unreserved escapes and repeated slashes; query not part of it.
    ("GET", "/p/exact", [], "path-exact", None),
    ("GET", "/p/exact/", [], "fallback", "/p/exact/"),
    ("GET", "/p/./x/../exact", [], "path-exact", None),
    ("GET", "/p/%7euser", [], "path-exact", None),
    ("GET", "/p//exact", [], "path-exact", None),
    ("GET", "/p/ex%61ct?x=1", [], "path-exact", None),
    ("GET", "/P/exact", [], "fallback", "/P/exact"),
    # Segment-aware prefix, strip-prefix, what the origin receives.
    ("GET", "/v1/users", [], "users", "/users"),
    ("GET", "/v1/users/", [], "users", "/users/"),
    ("GET", "/v1/users/7?a=b&c", [], "users", "/users/7?a=b&c"),
    ("GET", "/v1/usersx", [], "fallback", "/v1/usersx"),
    ("GET", "/v1/users/../admin", [], "fallback", "/v1/admin"),
    ("GET", "/v1/users/%2e%2e/admin", [], "fallback", "/v1/admin"),
    ("GET", "/v1/users/a%2fb", [], "users", "/users/a%2Fb"),
    ("GET", "/v1/./users//7", [], "users", "/users/7"),
    ("GET", "/../../v1/users", [], "users", "/users"),
    # A regex matches the whole path.
    ("GET", "/r/123", [], "regex", None),
    ("GET", "/r/1%32", [], "regex", None),
    ("GET", "/r/123/", [], "fallback", "/r/123/"),
    ("GET", "/r/12a", [], "fallback", "/r/12a"),
    ("GET", "/x/r/1", [], "fallback", "/x/r/1"),
    # Query: values are alternatives, names case-sensitive, form-decoded.
    ("GET", "/q?lang=en", [], "query-val", None),
    ("GET", "/q?lang=fr&x", [], "query-val", None),
    ("GET", "/q?lang=de&lang=en", [], "query-val", None),
    ("GET", "/q?la%6Eg=e%6E", [], "query-val", None),
    ("GET", "/q?lang=de", [], "fallback", "/q?lang=de"),
    ("GET", "/q?lang=en+", [], "fallback", "/q?lang=en+"),
    ("GET", "/q?debug", [], "query-present", None),
    ("GET", "/q?debug=", [], "query-present", None),
    ("GET", "/q?Debug=1", [], "fallback", "/q?Debug=1"),
    ("GET", "/q", [], "fallback", "/q"),
    # Headers: the name case-insensitive, the value exact (spaces around it trimmed).
    ("GET", "/hd", [("X-CANARY", "1")], "header-val", None),
    ("GET", "/hd", [("x-canary", "01")], "fallback", "/hd"),
    ("GET", "/hd", [("x-canary", "1, 2")], "fallback", "/hd"),
    ("GET", "/hd", [("x-canary", "2"), ("x-canary", "1")], "header-val", None),
    ("GET", "/hd", [("x-present", "")], "header-present", None),
    ("GET", "/hd", [], "fallback", "/hd"),
    # Methods: alternatives, upper-cased in the spec, compared case-sensitively; no route: 404.
    ("PUT", "/m", [], "methods", None),
    ("DELETE", "/m", [], "methods", None),
    ("delete", "/m", [], None, None),
    ("GET", "/m", [], "fallback", "/m"),
    ("PATCH", "/m", [], None, None),
    ("PATCH", "/anything", [], None, None),
    # Actions and upstream failures.
    ("GET", "/old/x", [], "moved", None),
    ("GET", "/slow/x", [], "slow", None),
    ("GET", "/dead/x", [], "dead", None),
    ("GET", "/down/x", [], "down", None),
]

LOCAL_BODIES = {"exact-host", "wild-host", "path-exact", "regex", "query-val", "query-present", "header-val",
                "header-present", "methods"}
STATUS_OF = {"moved": 307, "slow": 504, "dead": 502, "down": 503}


def meaning_origin() -> Origin:
    """Answers with what it was sent (target, method, header lines in order) as JSON, plus
    hop-by-hop fields of its own; `/slow...` after 3 s."""
    origin = Origin()

    def handler(req, conn):
        if req.path.startswith("/slow"):
            time.sleep(3)
        seen = [[k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in req.headers]
        body = json.dumps({"target": req.target, "method": req.method, "headers": seen}).encode()
        return respond(conn, req, 200, body, headers=("connection: x-hop, keep-alive", "x-hop: 1", "keep-alive: timeout=5"))

    origin.handler = handler
    return origin


def send(port: int, method: str, target: str, lines) -> tuple[int, list[tuple[str, str]], bytes]:
    """One raw HTTP/1.1 request (header lines as written), the response read to its close."""
    if not any(k.lower() == "host" for k, _ in lines):
        lines = [("Host", "spec-qa.test"), *lines]
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines) + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(head.encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = raw_head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (f.partition(":") for f in fields)]
    return int(status_line.split()[1]), headers, body


def decided_route(status: int, headers, body: bytes) -> str | None:
    """Which route of MEANING_KDL served a response."""
    named = [v for k, v in headers if k == "x-route"]
    if named:
        return named[0]
    if status == 200 and body.decode() in LOCAL_BODIES:
        return body.decode()
    for route, code in STATUS_OF.items():
        if status == code:
            return route
    assert status == 404, (status, headers, body)
    return None


def route_cli(blitzc: Path, spec: Path, method: str, target: str, lines) -> str | None:
    host = next((v for k, v in lines if k.lower() == "host"), "spec-qa.test")
    url = target if target.startswith("http://") else f"http://{host}{target}"
    args = [str(blitzc), "route", str(spec), method, url]
    for k, v in lines:
        args += ["-H", f"{k}: {v}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if result.returncode == 1:
        assert "no route" in result.stdout + result.stderr
        return None
    assert result.returncode == 0, result
    return result.stdout.strip()


@dataclass
class Meaning:
    spec: Path
    toml: Path
    binary: Path
    port: int
    origin: Origin


@pytest.fixture(scope="module")
def meaning(blitzc, cache_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spec-qa")
    site = tmp / "site"
    (site / "run").mkdir(parents=True)
    origin = meaning_origin()
    ports = dict(port=free_port(), origin=origin.port, dead=free_port())
    spec = site / "spec-qa.kdl"
    spec.write_text(MEANING_KDL.format(**ports))
    toml = site / "spec-qa.toml"
    toml.write_text(MEANING_TOML.format(**ports))
    binary = tmp / "gw"
    result = build(blitzc, spec, binary, cache_dir, cwd=tmp)
    assert result.returncode == 0, result.stderr
    yield Meaning(spec, toml, binary, ports["port"], origin)
    origin.stop()


def serve(argv, port, cwd) -> Served:
    return Served([str(a) for a in argv], port, dict(os.environ), cwd=cwd)


def wait_down(port: int):
    """Until the health checker has marked the `down` upstream's server down."""
    deadline = time.monotonic() + 15
    while send(port, "GET", "/down/x", [])[0] != 503:
        assert time.monotonic() < deadline, "health checks never marked the server down"
        time.sleep(0.2)


def observe(port: int) -> list:
    wait_down(port)
    out = []
    for method, target, lines, _, _ in ROUTING:
        status, headers, body = send(port, method, target, lines)
        route = decided_route(status, headers, body)
        forwarded = json.loads(body)["target"] if route in ("users", "fallback", "steps") else None
        out.append((method, target, route, status, forwarded))
    return out


@pytest.mark.timeout(300)
def test_route_cli_compiled_gateway_and_interpreter_decide_alike(blitzc, meaning, tmp_path):
    expected = [(m, t, route, forwarded) for m, t, _, route, forwarded in ROUTING]
    cli = [(m, t, route_cli(blitzc, meaning.spec, m, t, lines), f) for m, t, lines, _, f in ROUTING]
    assert cli == expected
    cli_toml = [(m, t, route_cli(blitzc, meaning.toml, m, t, lines), f) for m, t, lines, _, f in ROUTING]
    assert cli_toml == expected

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    socket_path = meaning.spec.parent / "run" / "ctl.sock"
    seen = {}
    for label, argv in (("compiled", [meaning.binary, "--grace", "2s"]), ("interpreted", [blitzc, "dev", meaning.spec])):
        gw = serve(argv, meaning.port, cwd=elsewhere)
        try:
            if label == "compiled":
                # `admin socket "run/ctl.sock"` is in the spec's folder, not the working directory.
                deadline = time.monotonic() + 10
                while not socket_path.is_socket() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert socket_path.is_socket() and not (elsewhere / "run").exists()
            seen[label] = observe(meaning.port)
        finally:
            assert gw.stop() == 0, f"{label}: graceful exit"
    for label, got in seen.items():
        decided = [(m, t, route, f) for m, t, route, _, f in got]
        assert decided == expected, label
        for m, t, route, status, _ in got:
            assert status == (STATUS_OF.get(route, 200) if route else 404), (label, m, t, status)
    assert seen["compiled"] == seen["interpreted"]


def test_proxying_steps_in_order_hop_by_hop_and_forwarding_fields(blitzc, meaning, tmp_path):
    client = [
        ("x-drop", "1"), ("x-order", "client"), ("x-trace", "client"),
        ("Connection", "x-custom, keep-alive"), ("x-custom", "hop"), ("Keep-Alive", "timeout=1"), ("TE", "trailers"),
        ("Upgrade", "websocket"), ("Proxy-Connection", "keep-alive"),
        ("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-Proto", "https"), ("Via", "1.0 corp-proxy"),
    ]
    answers = {}
    for label, argv in (("compiled", [meaning.binary, "--grace", "2s"]), ("interpreted", [blitzc, "dev", meaning.spec])):
        gw = serve(argv, meaning.port, cwd=tmp_path)
        try:
            status, headers, body = send(meaning.port, "GET", "/steps/a/../b?q=1", client)
        finally:
            assert gw.stop() == 0
        assert status == 200, (label, headers, body)
        got = json.loads(body)
        assert got["target"] == "/steps/b?q=1", "the origin gets the normalised path"
        fields = [(k, v) for k, v in got["headers"] if k != "x-request-id"]
        names = {k for k, _ in fields}
        # Hop-by-hop fields, and those `Connection` names, are not forwarded.
        assert not names & {"connection", "x-custom", "keep-alive", "te", "upgrade", "proxy-connection"}, fields
        assert "x-drop" not in names
        # Steps in the order written, `use` spliced in place: the last `set` wins, `add`s append in order.
        assert [v for k, v in fields if k == "x-order"] == ["inner"]
        assert [v for k, v in fields if k == "x-trace"] == ["client", "route-first", "outer-1", "inner", "outer-2", "route-last"]
        assert [v for k, v in fields if k == "x-forwarded-for"] == ["192.0.2.7, 127.0.0.1"]
        assert [v for k, v in fields if k == "x-forwarded-proto"] == ["http"], "a client's own value is replaced"
        via = ", ".join(v for k, v in fields if k == "via")
        assert via.startswith("1.0 corp-proxy") and re.search(r"1\.1 \S+$", via), via
        # The origin's response: its hop-by-hop fields removed, response steps in order.
        response_names = {k for k, _ in headers}
        assert not response_names & {"x-hop", "keep-alive"}, headers
        assert [v for k, v in headers if k == "x-rtrace"] == ["route-first", "inner", "route-last"]
        answers[label] = (fields, [(k, v) for k, v in headers if k not in ("date", "x-origin-conn", "content-length")])
    assert answers["compiled"] == answers["interpreted"]


def test_kdl_and_toml_twins_give_the_same_gateway(blitzc, meaning, tmp_path):
    """SPEC.md: turning one form into the other gives the same compiled gateway. The
    generated crates differ only in the comments that name the source file and lines."""
    crates = {}
    for spec in (meaning.spec, meaning.toml):
        out = tmp_path / spec.suffix[1:]
        result = subprocess.run([str(blitzc), "emit", str(spec), "-o", str(out)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        crates[spec.suffix] = out
    files = sorted(p.relative_to(crates[".kdl"]) for p in crates[".kdl"].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(crates[".toml"]) for p in crates[".toml"].rglob("*") if p.is_file())
    assert any(f.suffix == ".rs" for f in files)

    def code(path: Path) -> str:
        text = path.read_text()
        return re.sub(r"spec-qa\.(kdl|toml)(:\d+)?", "SPEC", text)

    for f in files:
        assert code(crates[".kdl"] / f) == code(crates[".toml"] / f), f
