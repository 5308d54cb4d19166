"""An audit of docs/spec.md (the language reference) against the real `blitzc`:
the concrete statements no other file in tests/blitzc pinned (SPEC.md has its
own audit in test_spec_audit_qa.py, DESIGN.md in test_design_audit_qa.py; the
routing details of section 15 are in test_review_routing_qa.py, the value
bounds in test_review_check_qa.py, the odd inputs in test_spec_audit_qa.py).

What is new here:

- Every example of docs/spec.md, read out of the markdown at test time, passes
  `blitzc check` as written, without a diagnostic: the complete example of
  section 1 in KDL and TOML (with the JWKS file it names), the section
  examples put together into one spec per form (with the certificates, CA,
  JWKS and wasm files they name), each route-level fragment (header rewrite,
  `proxy`, `respond`, `redirect`) and each alternative given after an
  `or` comment inside a block. The KDL and TOML complete examples emit the
  same crate ("lower to equal models").
- Each diagnostic the page promises for an example it gives (`version "1"`
  is B003, `"1.5s"` is B030, `"16KB"` is B031 with a hint towards `KiB`, ...)
  is the code `blitzc check` gives, with the documented severity, and nothing
  else (one mistake, one diagnostic); each form the page says is accepted is
  accepted without a diagnostic.
- What sections 12 and 16 say a request meets, on `blitzc dev` and one
  `blitzc build` of one spec: header rewrites applied remove, then set, then
  add whatever their written order (B052's "ends up set", "the second value
  wins"; names lower-cased), over HTTP/1.1 and h2c; `x-forwarded-for`
  appended after the steps and `via` added as its own line; on a proxied
  answer `set` replacing every value, `add` appending, `remove` dropping;
  steps in written order with chains spliced in place (nested), a step
  written after the action still running (B054); the fields B056 names never
  leaving the gateway whatever a step sets; `respond` defaults (status only:
  an empty body typed `text/plain; charset=utf-8`), 204 and 304 never
  carrying a body, a 204 no `Content-Length`; `redirect` defaulting to 302
  with a relative location; a KDL property repeated on one node taking its
  rightmost value; `strip-prefix "/v1"` turning `/v1` into `/`; an
  unmatched request 404.
- `blitzc build` refusing a construct the runtime does not serve yet with
  B100 while `check` accepts it (section 17), alike from KDL and TOML;
  `blitzc route` following section 1's walk-through.

Bugs found, fixed (each test beside its control): a health-check path with
raw non-ASCII or a `#` passed check (docs/diagnostics.md says B038) and the
checker sent it raw, a target the gateway itself answers 400; B038's help
for a path with a malformed escape (`/files/100%`) said to write `/`;
`respond 205 body=...` sent the body (RFC 9110 §15.3.6: MUST NOT).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.blitzc import Served, blitz_env, build
from support.client import RawConn
from support.gateway import REPO, free_port
from support.h2client import H2Client
from support.origin import Origin, respond
from support.pki import Pki

DOCS = REPO / "docs" / "spec.md"
CHECK_TIMEOUT_S = 60


def check(blitzc: Path, spec: Path, cwd: Path | None = None) -> tuple[int, list[dict]]:
    """`blitzc check --format json SPEC`: its exit code and diagnostics (never a crash)."""
    result = subprocess.run([str(blitzc), "check", "--format", "json", str(spec)], check=False, capture_output=True, text=True,
                            timeout=CHECK_TIMEOUT_S, cwd=cwd)
    assert "panicked" not in result.stderr and result.returncode in (0, 1), (result.returncode, result.stderr)
    return result.returncode, json.loads(result.stdout)["diagnostics"]


def codes_of(diagnostics: list[dict]) -> list[tuple[str, str]]:
    return sorted((d["code"], d["severity"]) for d in diagnostics)


# ---------------------------------------------------------------- the page's own examples


def doc_blocks() -> list[tuple[str, str, str]]:
    """Every fenced kdl/toml block of docs/spec.md as (form, heading it is under, text)."""
    blocks, heading = [], ""
    for match in re.finditer(r"^(#{2,4} [^\n]*)$|^```(kdl|toml)\n(.*?)^```", DOCS.read_text(), re.DOTALL | re.MULTILINE):
        if match.group(1):
            heading = match.group(1)
        else:
            blocks.append((match.group(2), heading, match.group(3)))
    return blocks


TOP_LEVEL = ("version", "gateway", "listener", "limits", "upstream", "jwt", "rate-limit", "plugin", "chain",
             "route", "metrics", "admin", "[")
# An alternative the page gives inside a block: `// or: TEXT` (KDL), `# or: TEXT` (TOML).
ALTERNATIVE = re.compile(r"^(\s*)(?://|#) or: (.+)$")


def alternatives(block: str) -> list[str]:
    """The block as written plus, for each `or:` comment, the block with that
    alternative instead of the line it follows (the nearest line that is not a
    comment): `jwks-file ...` then `// or: jwks-url ...` is the other key source."""
    lines = block.splitlines()
    variants = [block]
    for i, line in enumerate(lines):
        alternative = ALTERNATIVE.match(line)
        if not alternative:
            continue
        target = max(j for j in range(i) if not lines[j].lstrip().startswith(("//", "#")))
        changed = list(lines)
        changed[target] = alternative.group(1) + alternative.group(2)
        variants.append("\n".join(changed) + "\n")
    return variants


def fragment_pieces(block: str) -> list[str]:
    """A route-level TOML fragment split at its `# or, ...:` lines: each piece is one way to write it."""
    return [piece for piece in re.split(r"^# or[^\n]*\n", block, flags=re.MULTILINE) if piece.strip()]


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory) -> Path:
    """A folder holding the files the examples name, relative to the spec:
    certificates (edge.crt, and api.crt valid for the `sni` api.example.com),
    the upstream CA, a JWKS with an RSA and a P-256 key (the examples list
    RS256 and ES256) and a (minimal, valid) wasm module."""
    folder = tmp_path_factory.mktemp("docs-examples")
    for sub in ("certs", "keys", "plugins"):
        (folder / sub).mkdir()
    pki = Pki(folder / "certs")
    pki.leaf("edge", "edge.example.com")
    pki.leaf("api", "api.example.com")
    shutil.copy(folder / "certs" / "ca.crt", folder / "certs" / "internal-ca.pem")
    jwks = {"keys": [
        {"kty": "RSA", "use": "sig", "e": "AQAB",
         "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU"
              "1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3"
              "UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC"
              "2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"},
        {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
    ]}
    for name in ("sso.json", "sso-jwks.json"):
        (folder / "keys" / name).write_text(json.dumps(jwks))
    (folder / "plugins" / "geo_tag.wasm").write_bytes(b"\0asm\x01\0\0\0")  # the empty module
    return folder


def test_the_page_has_the_examples_this_file_reads():
    """A guard: if the page's examples moved or changed shape, the tests below
    would check less than they claim."""
    blocks = doc_blocks()
    assert sum(1 for form, _, _ in blocks if form == "kdl") == sum(1 for form, _, _ in blocks if form == "toml")
    assert blocks[0][2].startswith("version 1\n") and blocks[1][2].startswith("version = 1\n")
    assert len(blocks) >= 30, [b[1] for b in blocks]


@pytest.mark.parametrize("form", ["kdl", "toml"])
def test_the_complete_example_passes_check_as_written(blitzc, docs_folder, form):
    """Section 1: the shop's spec, as written, with the JWKS file it names."""
    code, diagnostics = check(blitzc, complete_example(docs_folder, form))
    assert (code, diagnostics) == (0, []), diagnostics


def complete_example(folder: Path, form: str) -> Path:
    text = next(text for f, _, text in doc_blocks() if f == form and text.startswith("version"))
    spec = folder / f"shop.{form}"
    spec.write_text(text)
    return spec


# Section 1's walk-through: (method, URL, the route it names; None: 404).
WALK_THROUGH = [
    ("GET", "http://eu.shop.example.com/api/admin/orders", "admin-api"),
    ("GET", "http://eu.shop.example.com/api/items", "api"),
    ("GET", "http://eu.shop.example.com/other", None),
]


@pytest.mark.parametrize("form", ["kdl", "toml"])
@pytest.mark.parametrize("method,url,route", WALK_THROUGH)
def test_blitzc_route_follows_the_complete_examples_walk_through(blitzc, docs_folder, form, method, url, route):
    """Section 1: `blitzc route shop.kdl GET http://eu.shop.example.com/api/admin/orders`
    prints the route a request would take; `/api/items` falls through to
    `api`; `/other` matches no route and gets 404. The TOML twin decides alike."""
    result = subprocess.run([str(blitzc), "route", str(complete_example(docs_folder, form)), method, url],
                            check=False, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    if route is None:
        assert result.returncode == 1 and "404" in result.stdout + result.stderr, result
    else:
        assert (result.returncode, result.stdout.strip()) == (0, route), result


def test_build_refuses_what_the_runtime_does_not_serve_yet_with_b100_in_both_forms(blitzc, docs_folder, cache_dir):
    """Section 17: B100 is raised by `blitzc build` (not by `check`, which
    accepted the complete example above) for each construct the runtime does
    not serve yet: the access log, the jwt, the rate limit and the steps that
    use them. Both forms name the same constructs."""
    found = {}
    for form in ("kdl", "toml"):
        spec = complete_example(docs_folder, form)
        result = build(blitzc, spec, docs_folder / f"shop-{form}-gateway", cache_dir)
        assert result.returncode == 1, result.stderr[-3000:]
        found[form] = sorted(re.findall(r"B100\(unsupported\)\s+×\s+([^\n]*)", result.stderr))
        assert found[form] and len(found[form]) == result.stderr.count("B100"), result.stderr
        assert not (docs_folder / f"shop-{form}-gateway").exists()
    assert found["kdl"] == found["toml"], found


def section_spec(form: str) -> str:
    """The examples of sections 4 to 14 put together into one spec (they name
    each other: the route uses the chain, the chain the jwt and rate limit,
    the route proxies to the upstream), plus one route per route-level
    fragment (header rewrite, `proxy`, `respond`, `redirect`) and per way of
    writing it."""
    items, fragments = [], []
    for block_form, heading, text in doc_blocks():
        if block_form != form or text.startswith("version"):
            continue
        (items if text.lstrip().startswith(TOP_LEVEL) else fragments).append((heading, text))
    spec = "version 1\n" if form == "kdl" else "version = 1\n"
    spec += "\n".join(text for _, text in items)
    count = 0
    for _, text in fragments:
        pieces = [text] if form == "kdl" else fragment_pieces(text)
        for piece in pieces:
            count += 1
            is_step = "headers" in piece.split("\n", 1)[0]
            if form == "kdl":
                spec += (f'\nroute "fragment-{count}" {{\n    match {{ path-prefix "/v1/fragment-{count}" }}\n'
                         f'{piece}' + ("    respond 204\n" if is_step else "") + "}\n")
            else:
                spec += (f'\n[[route]]\nname = "fragment-{count}"\nmatch = {{ path-prefix = "/v1/fragment-{count}" }}\n'
                         + (f"steps = [\n{piece}]\nrespond = 204\n" if is_step else piece))
    return spec


@pytest.mark.parametrize("form", ["kdl", "toml"])
def test_the_section_examples_together_pass_check_as_written(blitzc, docs_folder, form):
    """Sections 4 to 14: every construct's example, in both forms, with the
    files it names, and every route-level fragment and its alternatives."""
    spec = docs_folder / f"sections.{form}"
    spec.write_text(section_spec(form))
    code, diagnostics = check(blitzc, spec)
    assert (code, diagnostics) == (0, []), (diagnostics, spec.read_text())


def test_every_alternative_given_in_a_comment_passes_check(blitzc, docs_folder):
    """`// or: jwks-url "…" refresh="5m"` and TOML's two `# or: jwks-url = …`
    forms (section 8) replace the line they follow and the spec still passes."""
    variants = 0
    for form in ("kdl", "toml"):
        whole = section_spec(form)
        for _, _, text in doc_blocks():
            for variant in alternatives(text)[1:]:
                if text not in whole:
                    continue
                variants += 1
                spec = docs_folder / f"alternative-{variants}.{form}"
                spec.write_text(whole.replace(text, variant))
                code, diagnostics = check(blitzc, spec)
                assert (code, diagnostics) == (0, []), (diagnostics, variant)
    assert variants >= 3  # section 8's three alternatives at least


# ---------------------------------------------------------------- the diagnostics the page promises

LISTENER = 'listener "l" { bind "127.0.0.1:8080" }\n'
UPSTREAM = 'upstream "u" { server "127.0.0.1:9000" }\n'


def kdl(*items: str) -> str:
    """A KDL spec: `version 1` and the items."""
    return "version 1\n" + "".join(items)


def matchless_route(body: str, name: str = "r") -> str:
    """A route without `match` (it matches every request)."""
    return f'route "{name}" {{\n{body}\n}}\n'


def route(match: str = 'path "/r"', steps: str = "", action: str = "respond 200", name: str = "r") -> str:
    """A KDL route: its match conditions, steps and action."""
    return f'route "{name}" {{\n    match {{ {match} }}\n    {steps}\n    {action}\n}}\n'


def kdl_route(**kw) -> str:
    """A valid KDL spec (a listener, the upstream `u`) around one `route(**kw)`."""
    return kdl(LISTENER, UPSTREAM, route(**kw))


def kdl_limits(limits: str) -> str:
    """A valid KDL spec with a `limits` block holding `limits`."""
    return kdl(LISTENER, f"limits {{ {limits} }}\n", route())


def kdl_upstream(upstream: str, routes: bool = True) -> str:
    """A valid KDL spec with `upstream` (named `x`) and a route proxying to it."""
    return kdl(LISTENER, upstream, route(action='proxy "x"') if routes else "")


TOML_HEAD = 'version = 1\n\n[[listener]]\nname = "l"\nbind = "127.0.0.1:8080"\n'
TOML_ROUTE = '\n[[route]]\nname = "r"\nmatch = { path = "/r" }\nrespond = 200\n'


def toml(*items: str) -> str:
    """A TOML spec: a listener, the items, then a route."""
    return TOML_HEAD + "".join(items) + TOML_ROUTE


ERROR = "error"
WARNING = "warning"
# (id, file extension, spec text, the (code, severity) list `check` must give,
# optionally a text its label or help must hold). Each comes from a sentence
# of docs/spec.md: the section is in the comment above its group.
CASES = [
    # section 2
    ("format-yaml", "yaml", kdl(LISTENER, route()), [("B004", ERROR)]),
    ("kdl-bare-true", "kdl", kdl_upstream('upstream "x" { server "127.0.0.1:9" tls=true }\n'), [("B001", ERROR)]),
    ("kdl-quoted-true", "kdl", kdl_upstream('upstream "x" { server "127.0.0.1:9" tls="true" }\n'), [("B011", ERROR)]),
    ("toml-key-twice", "toml", TOML_HEAD + 'bind = "127.0.0.1:8081"\n' + TOML_ROUTE, [("B002", ERROR)]),
    ("toml-table-twice", "toml", toml("\n[gateway]\nworkers = 1\n\n[gateway]\nworkers = 2\n"), [("B002", ERROR)]),
    (
        "toml-header-tables",
        "toml",
        TOML_HEAD + '\n[[route]]\nname = "r"\nrespond = 200\n[route.match]\npath = "/r"\n',
        [],
    ),
    ("kdl-empty", "kdl", "", [("B003", ERROR), ("B015", ERROR)]),
    ("kdl-no-version", "kdl", LISTENER + route(), [("B003", ERROR)]),
    ("kdl-version-not-first", "kdl", LISTENER + "version 1\n" + route(), [("B003", ERROR)]),
    ("kdl-version-2", "kdl", "version 2\n" + LISTENER + route(), [("B003", ERROR)]),
    ("kdl-version-string", "kdl", 'version "1"\n' + LISTENER + route(), [("B003", ERROR)]),
    ("kdl-version-twice", "kdl", kdl(LISTENER, "version 1\n", route()), [("B013", ERROR)]),
    ("toml-version-missing", "toml", TOML_HEAD.replace("version = 1\n", "") + TOML_ROUTE, [("B003", ERROR)]),
    (
        "toml-version-not-first",
        "toml",
        'listener = [{ name = "l", bind = "127.0.0.1:8080" }]\nversion = 1\n' + TOML_ROUTE,
        [("B003", ERROR)],
    ),
    ("toml-version-2", "toml", TOML_HEAD.replace("version = 1", "version = 2") + TOML_ROUTE, [("B003", ERROR)]),
    ("toml-version-string", "toml", TOML_HEAD.replace("version = 1", 'version = "1"') + TOML_ROUTE, [("B011", ERROR)]),
    (
        "unknown-property",
        "kdl",
        kdl_upstream('upstream "x" { balance "weighted-round-robin"; server "127.0.0.1:9" wieght=3 }\n'),
        [("B010", ERROR)],
        "weight",
    ),
    (
        "too-many-arguments",
        "kdl",
        kdl('listener "l" { bind "127.0.0.1:8080" "127.0.0.1:8081" }\n', route()),
        [("B011", ERROR)],
    ),
    ("missing-argument", "kdl", kdl('listener "l" { bind }\n', route()), [("B011", ERROR)]),
    ("block-on-leaf", "kdl", kdl('listener "l" { bind "127.0.0.1:8080" { } }\n', route()), [("B011", ERROR)]),
    (
        "missing-bind",
        "kdl",
        kdl('listener "l" { protocols "h1" }\n', 'listener "m" { bind "127.0.0.1:8081" }\n', route()),
        [("B012", ERROR)],
    ),
    (
        "bind-twice",
        "kdl",
        kdl('listener "l" { bind "127.0.0.1:8080"; bind "127.0.0.1:8081" }\n', route()),
        [("B013", ERROR)],
    ),
    ("gateway-twice", "kdl", kdl(LISTENER, 'gateway "a"\ngateway "b"\n', route()), [("B013", ERROR)]),
    (
        "match-twice",
        "kdl",
        kdl(LISTENER, 'route "r" {\n match { path "/a" }\n match { path "/b" }\n respond 200\n}\n'),
        [("B013", ERROR)],
    ),
    ("two-actions", "kdl", kdl_route(action='respond 200\n    redirect "/x"'), [("B014", ERROR)]),
    ("rightmost-property-wins", "kdl", kdl_route(action='redirect "/x" status=301 status=308'), []),
    (
        "left-out-upstream-not-unknown",
        "kdl",
        kdl(LISTENER, 'upstream "x" { balance "round-robin" }\n', route(action='proxy "x"')),
        [("B012", ERROR)],
    ),
    ("toml-empty-protocols", "toml", TOML_HEAD + "protocols = []\n" + TOML_ROUTE, [("B011", ERROR)]),
    ("missing-name", "kdl", kdl(LISTENER, 'upstream { server "127.0.0.1:9" }\n', route()), [("B012", ERROR)]),
    (
        "duplicate-name-each-repeat",
        "kdl",
        kdl(LISTENER, route(name="r"), route(name="r", match='path "/b"'), route(name="r", match='path "/c"')),
        [("B020", ERROR), ("B020", ERROR)],
    ),
    (
        "separate-namespaces",
        "kdl",
        kdl(
            LISTENER,
            'jwt "sso" { algorithms "RS256"; jwks-url "https://sso.example.com/jwks" }\nchain "sso" { auth "sso" }\n',
            route(steps='use "sso"'),
        ),
        [],
    ),
    ("unknown-reference", "kdl", kdl_route(action='proxy "uu"'), [("B021", ERROR)], "`u`"),
    (
        "chain-cycle",
        "kdl",
        kdl(LISTENER, 'chain "a" { use "b" }\nchain "b" { use "a" }\n', route(steps='use "a"')),
        [("B023", ERROR)],
    ),
    (
        "unused-chain-only-outer-warned",
        "kdl",
        kdl(LISTENER, 'chain "a" { use "b" }\nchain "b" { }\n', route()),
        [("B024", WARNING)],
    ),
    ("unused-upstream-exempt", "kdl", kdl(LISTENER, UPSTREAM, route()), []),
    ("no-listener", "kdl", kdl(route()), [("B015", ERROR)]),
    (
        "empty-path",
        "kdl",
        kdl(LISTENER, 'jwt "j" { algorithms "RS256"; jwks-file "" }\n', route(steps='auth "j"')),
        [("B011", ERROR)],
    ),
    # section 3
    *[(f"duration-ok-{v}", "kdl", kdl_limits(f'idle-timeout "{v}"'), []) for v in ("500ms", "10s", "5m", "1h", "0s")],
    *[
        (f"duration-bad-{v}", "kdl", kdl_limits(f'idle-timeout "{v}"'), [("B030", ERROR)])
        for v in ("10", "1.5s", "+1s", "-1s", " 1s", "1 s", "10sec", "1d", "99999999999999999999h")
    ],
    ("duration-bare-number", "kdl", kdl_limits("idle-timeout 10"), [("B011", ERROR)]),
    ("duration-zero-header-timeout", "kdl", kdl_limits('header-timeout "0s"'), [("B041", WARNING)]),
    *[
        (f"size-ok-{v}", "kdl", kdl_limits(f"max-body-bytes {v}"), [])
        for v in ("16384", '"512"', '"512B"', '"16KiB"', '"10MiB"', '"1GiB"')
    ],
    *[
        (
            f"size-bad-{v}",
            "kdl",
            kdl_limits(f'max-body-bytes "1{v}"'),
            [("B031", ERROR)],
            {"K": "KiB", "M": "MiB", "G": "GiB"}[v[0].upper()],
        )
        for v in ("KB", "kB", "kb", "K", "k", "MB", "mb", "M", "GB", "gb", "G")
    ],
    ("size-negative", "kdl", kdl_limits("max-body-bytes -1"), [("B031", ERROR)]),
    ("size-overflow", "kdl", kdl_limits("max-body-bytes 18446744073709551616"), [("B031", ERROR)]),
    *[
        (
            f"rate-ok-{v}",
            "kdl",
            kdl(LISTENER, f'rate-limit "rl" {{ key "client-ip"; rate "{v}" }}\n', route(steps='rate-limit "rl"')),
            [],
        )
        for v in ("100/s", "5/m", "1/h")
    ],
    *[
        (
            f"rate-bad-{v}",
            "kdl",
            kdl(LISTENER, f'rate-limit "rl" {{ key "client-ip"; rate "{v}" }}\n', route(steps='rate-limit "rl"')),
            [("B032", ERROR)],
        )
        for v in ("0/s", "100", "100/d", "100/sec", "1.5/s", "100 /s")
    ],
    ("workers-zero", "kdl", kdl(LISTENER, 'gateway "g" { workers 0 }\n', route()), [("B041", ERROR)]),
    ("workers-over-u32", "kdl", kdl(LISTENER, 'gateway "g" { workers 4294967296 }\n', route()), [("B041", ERROR)]),
    ("workers-fraction", "kdl", kdl(LISTENER, 'gateway "g" { workers 1.5 }\n', route()), [("B011", ERROR)]),
    ("workers-other-word", "kdl", kdl(LISTENER, 'gateway "g" { workers "many" }\n', route()), [("B037", ERROR)]),
    ("max-headers-zero", "kdl", kdl_limits("max-headers 0"), [("B041", ERROR)]),
    ("max-headers-string", "kdl", kdl_limits('max-headers "100"'), [("B011", ERROR)]),
    ("bind-v6-wildcard", "kdl", kdl('listener "l" { bind "[::]:8443" }\n', route()), []),
    ("bind-localhost", "kdl", kdl('listener "l" { bind "localhost:8080" }\n', route()), [("B033", ERROR)]),
    ("server-name-ok", "kdl", kdl_upstream('upstream "x" { server "My_Svc.Internal:80" }\n'), []),
    *[
        (f"server-bad-{n}", "kdl", kdl_upstream(f'upstream "x" {{ server "{a}" }}\n'), [("B033", ERROR)])
        for n, a in [
            ("port-0", "127.0.0.1:0"),
            ("port-65536", "svc.internal:65536"),
            ("label-dash", "-svc.internal:80"),
            ("label-end-dash", "svc-.internal:80"),
            ("label-64", "a" * 64 + ".internal:80"),
            ("name-254", ".".join(["a" * 63] * 4)[:250] + ".com:80"),
            ("scheme", "http://svc.internal:80"),
            ("no-port", "svc.internal"),
        ]
    ],
    *[
        (f"host-ok-{h}", "kdl", kdl_route(match=f'host "{h}"'), [])
        for h in ("::1", "[::1]", "example.com.", "*.Example.com", "127.0.0.1")
    ],
    *[
        (f"host-bad-{h}", "kdl", kdl_route(match=f'host "{h}"'), [("B039", ERROR)])
        for h in ("example.com:443", "a.*.com", "*example.com", "*", "[::1]:443")
    ],
    *[
        (f"path-bad-{p}", "kdl", kdl_route(match=f'path "{p}"'), [("B038", ERROR)], hint)
        for p, hint in [
            ("/a/../b", "`/b`"),
            ("/a//b", "`/a/b`"),
            ("/%7euser", "`/~user`"),
            ("/%2f", "`/%2F`"),
            ("relative", None),
            ("/a?b", None),
            ("/a#b", None),
        ]
    ],
    ("path-prefix-trailing-slash", "kdl", kdl_route(match='path-prefix "/v1/"'), []),
    ("regex-bad", "kdl", kdl_route(match='path-regex "/("'), [("B036", ERROR)]),
    ("header-name-upper-ok", "kdl", kdl_route(steps='request-headers { set "X-Tag" "a" }'), []),
    ("header-name-bad", "kdl", kdl_route(steps='request-headers { set "x tag" "a" }'), [("B035", ERROR)]),
    ("header-value-tab-ok", "kdl", kdl_route(steps='request-headers { set "x-tag" "a\tb" }'), []),
    *[
        (
            f"header-value-bad-{n}",
            "kdl",
            kdl_route(steps=f'request-headers {{ set "x-tag" "a{c}b" }}'),
            [("B040", ERROR)],
        )
        for n, c in [("cr", "\\r"), ("lf", "\\n"), ("nul", "\\u{0}"), ("bel", "\\u{7}"), ("del", "\\u{7f}")]
    ],
    *[
        (f"header-match-value-{n}", "kdl", kdl_route(match=f'header "x-a" "{v}"'), [("B040", ERROR)])
        for n, v in [("lead-space", " 1"), ("trail-tab", "1\\t")]
    ],
    ("method-lower-ok", "kdl", kdl_route(match='method "get"'), []),
    ("method-bad", "kdl", kdl_route(match='method "GE T"'), [("B037", ERROR)]),
    *[(f"respond-{s}", "kdl", kdl_route(action=f"respond {s}"), [("B034", ERROR)]) for s in (199, 600)],
    ("respond-string", "kdl", kdl_route(action='respond "200"'), [("B011", ERROR)]),
    *[
        (f"redirect-{s}", "kdl", kdl_route(action=f'redirect "/x" status={s}'), [("B034", ERROR)])
        for s in (300, 304, 200)
    ],
    *[
        (f"redirect-ok-{s}", "kdl", kdl_route(action=f'redirect "/x" status={s}'), [])
        for s in (301, 302, 303, 307, 308)
    ],
    *[
        (
            f"key-bad-{k}",
            "kdl",
            kdl(LISTENER, f'rate-limit "rl" {{ key "{k}"; rate "1/s" }}\n', route(steps='rate-limit "rl"')),
            [(c, ERROR)],
        )
        for k, c in [
            ("header:", "B037"),
            ("jwt:", "B037"),
            ("cookie:x", "B037"),
            ("header:x y", "B035"),
            ("client_ip", "B037"),
        ]
    ],
    (
        "key-path-ok",
        "kdl",
        kdl_upstream('upstream "x" { balance "consistent-hash" key="path"; server "127.0.0.1:9" }\n'),
        [],
    ),
    (
        "keyword-case",
        "kdl",
        kdl('listener "l" { bind "127.0.0.1:8080"; protocols "H1" }\n', route()),
        [("B037", ERROR)],
        "h1",
    ),
    # section 4
    (
        "access-log-format",
        "kdl",
        kdl(LISTENER, 'gateway "g" { access-log "stdout" format="xml" }\n', route()),
        [("B037", ERROR)],
    ),
    ("toml-access-log-no-target", "toml", toml('\n[gateway]\naccess-log = { format = "json" }\n'), [("B012", ERROR)]),
    # section 5
    ("toml-protocols-lone-string", "toml", TOML_HEAD + 'protocols = "h1"\n' + TOML_ROUTE, [("B011", ERROR)]),
    *[
        (
            f"{p}-without-tls",
            "kdl",
            kdl(f'listener "l" {{ bind "127.0.0.1:8080"; protocols "{p}" }}\n', route()),
            [("B060", ERROR)],
        )
        for p in ("h2", "h3")
    ],
    ("tls-without-cert", "kdl", kdl('listener "l" { bind "127.0.0.1:8443"; tls { } }\n', route()), [("B065", ERROR)]),
    *[
        (
            f"bind-collision-{n}",
            "kdl",
            kdl(f'listener "a" {{ bind "{a}" }}\nlistener "b" {{ bind "{b}" }}\n', route()),
            want,
        )
        for n, a, b, want in [
            ("v4-wildcard", "0.0.0.0:8080", "127.0.0.1:8080", [("B022", ERROR)]),
            ("dual-stack", "[::]:8080", "127.0.0.1:8080", [("B022", ERROR)]),
            ("v4-mapped", "[::ffff:127.0.0.1]:8080", "127.0.0.1:8080", [("B022", ERROR)]),
            ("other-port", "0.0.0.0:8080", "127.0.0.1:8081", []),
            ("port-0", "127.0.0.1:0", "127.0.0.1:0", []),
        ]
    ],
    (
        "metrics-on-listener-bind",
        "kdl",
        kdl(LISTENER, 'metrics { bind "127.0.0.1:8080" }\n', route()),
        [("B022", ERROR)],
    ),
    # section 6
    ("max-header-bytes-25", "kdl", kdl_limits("max-header-bytes 25"), [("B041", WARNING)]),
    ("max-header-bytes-26", "kdl", kdl_limits("max-header-bytes 26"), []),
    # section 7
    (
        "hash-without-key",
        "kdl",
        kdl_upstream('upstream "x" { balance "consistent-hash"; server "127.0.0.1:9" }\n'),
        [("B080", ERROR)],
    ),
    (
        "key-ignored",
        "kdl",
        kdl_upstream('upstream "x" { balance "round-robin" key="path"; server "127.0.0.1:9" }\n'),
        [("B084", WARNING)],
    ),
    ("weight-1-ignored", "kdl", kdl_upstream('upstream "x" { server "127.0.0.1:9" weight=1 }\n'), [("B082", WARNING)]),
    (
        "all-weights-zero",
        "kdl",
        kdl_upstream(
            'upstream "x" { balance "weighted-round-robin"; server "127.0.0.1:9" weight=0; server "127.0.0.1:10" weight=0 }\n'
        ),
        [("B081", ERROR)],
    ),
    (
        "some-weight-zero",
        "kdl",
        kdl_upstream(
            'upstream "x" { balance "weighted-round-robin"; server "127.0.0.1:9" weight=0; server "127.0.0.1:10" weight=2 }\n'
        ),
        [],
    ),
    (
        "weight-negative",
        "kdl",
        kdl_upstream('upstream "x" { balance "weighted-round-robin"; server "127.0.0.1:9" weight=-1 }\n'),
        [("B041", ERROR)],
    ),
    (
        "duplicate-server",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; server "127.0.0.1:9" }\n'),
        [("B083", ERROR)],
    ),
    ("server-is-listener", "kdl", kdl_upstream('upstream "x" { server "localhost:8080" }\n'), [("B085", WARNING)]),
    *[
        (
            f"{f}-without-tls",
            "kdl",
            kdl_upstream(f'upstream "x" {{ server "127.0.0.1:9" {f}="{v}" }}\n'),
            [("B012", ERROR)],
        )
        for f, v in (("sni", "api.internal"), ("ca", "ca.pem"))
    ],
    (
        "ca-missing",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9" tls=#true ca="no-such-ca.pem" }\n'),
        [("B062", ERROR)],
    ),
    *[
        (
            f"server-sni-{n}",
            "kdl",
            kdl_upstream(f'upstream "x" {{ server "127.0.0.1:9" tls=#true sni="{v}" }}\n'),
            [("B039", ERROR)],
        )
        for n, v in (("ip", "10.0.0.1"), ("wildcard", "*.internal"), ("port", "api.internal:443"))
    ],
    (
        "retry-attempts-11",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; retry attempts=11 }\n'),
        [("B041", WARNING)],
    ),
    ("retry-attempts-10", "kdl", kdl_upstream('upstream "x" { server "127.0.0.1:9"; retry attempts=10 }\n'), []),
    (
        "retry-no-attempts",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; retry on="502" }\n'),
        [("B012", ERROR)],
    ),
    *[
        (
            f"retry-on-{n}",
            "kdl",
            kdl_upstream(f'upstream "x" {{ server "127.0.0.1:9"; retry attempts=1 on={v} }}\n'),
            want,
        )
        for n, v, want in [
            ("404", '"404"', [("B037", ERROR)]),
            ("600", '"600"', [("B037", ERROR)]),
            ("5xx", '"5xx"', [("B037", ERROR)]),
            ("Timeout", '"Timeout"', [("B037", ERROR)]),
            ("int-503", "503", []),
            ("reset-and-args", '"reset" "timeout" 599 "500"', []),
        ]
    ],
    (
        "toml-retry-on-empty",
        "toml",
        toml(
            '\n[[upstream]]\nname = "x"\nservers = [{ address = "127.0.0.1:9" }]\nretry = { attempts = 1, on = [] }\n'
        ),
        [("B011", ERROR)],
    ),
    *[
        (
            f"expect-{n}",
            "kdl",
            kdl_upstream(f'upstream "x" {{ server "127.0.0.1:9"; health-check expect={v} }}\n'),
            want,
        )
        for n, v, want in [
            ("range-reversed", '"300-200"', [("B034", ERROR)]),
            ("99", '"99"', [("B034", ERROR)]),
            ("600", "600", [("B034", ERROR)]),
            ("int-204", "204", []),
            ("range", '"200-299"', []),
            ("100", '"100"', []),
        ]
    ],
    (
        "health-path-relative",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; health-check path="healthz" }\n'),
        [("B038", ERROR)],
    ),
    (
        "health-interval-zero",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; health-check interval="0s" }\n'),
        [("B041", WARNING)],
    ),
    (
        "health-timeout-zero",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; health-check timeout="0s" }\n'),
        [("B041", WARNING)],
    ),
    (
        "connect-zero",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; timeouts connect="0s" }\n'),
        [("B041", WARNING)],
    ),
    (
        "retry-total-zero",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; retry attempts=1 total="0s" }\n'),
        [("B041", WARNING)],
    ),
    (
        "healthy-zero",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; health-check healthy=0 }\n'),
        [("B041", ERROR)],
    ),
    (
        "pool-max-idle-negative",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; pool max-idle=-1 }\n'),
        [("B041", ERROR)],
    ),
    (
        "health-check-argument",
        "kdl",
        kdl_upstream('upstream "x" { server "127.0.0.1:9"; health-check "/healthz" }\n'),
        [("B011", ERROR)],
    ),
    (
        "hash-on-claim-without-auth",
        "kdl",
        kdl_upstream('upstream "x" { balance "consistent-hash" key="jwt:sub"; server "127.0.0.1:9" }\n'),
        [("B071", ERROR)],
    ),
    # section 8
    *[
        (
            f"jwt-alg-{a}",
            "kdl",
            kdl(
                LISTENER,
                f'jwt "j" {{ algorithms {a}; jwks-url "https://sso.example.com/jwks" }}\n',
                route(steps='auth "j"'),
            ),
            want,
        )
        for a, want in [
            ('"none"', [("B037", ERROR)]),
            ('"None"', [("B037", ERROR)]),
            ('"HS256" "RS256"', [("B072", ERROR)]),
            ('"RS256" "ES256" "EdDSA"', []),
        ]
    ],
    # The file is kept as the source (section 8): it is read, and is missing here.
    (
        "jwks-both",
        "kdl",
        kdl(
            LISTENER,
            'jwt "j" { algorithms "RS256"; jwks-url "https://a.example/jwks"; jwks-file "k.json" }\n',
            route(steps='auth "j"'),
        ),
        [("B014", ERROR), ("B073", ERROR)],
    ),
    (
        "duplicate-reference-goes-to-first",
        "kdl",
        kdl(
            LISTENER,
            'jwt "j" { algorithms "RS256"; jwks-url "https://a.example/jwks" }\nchain "c" { auth "j" }\nchain "c" { }\n',
            route(steps='use "c"\n    require-role "admin"'),
        ),
        [("B020", ERROR), ("B024", WARNING)],
    ),
    (
        "duplicate-reference-control",
        "kdl",
        kdl(
            LISTENER,
            'jwt "j" { algorithms "RS256"; jwks-url "https://a.example/jwks" }\nchain "c" { }\nchain "c" { auth "j" }\n',
            route(steps='use "c"\n    require-role "admin"'),
        ),
        [("B020", ERROR), ("B024", WARNING), ("B070", ERROR)],
    ),
    (
        "jwks-neither",
        "kdl",
        kdl(LISTENER, 'jwt "j" { algorithms "RS256" }\n', route(steps='auth "j"')),
        [("B012", ERROR)],
    ),
    (
        "jwt-without-algorithms-kept",
        "kdl",
        kdl(LISTENER, 'jwt "j" { jwks-url "https://a.example/jwks" }\n', route(steps='auth "j"')),
        [("B012", ERROR)],
    ),
    (
        "jwks-url-ftp",
        "kdl",
        kdl(LISTENER, 'jwt "j" { algorithms "RS256"; jwks-url "ftp://a.example/jwks" }\n', route(steps='auth "j"')),
        [("B037", ERROR)],
    ),
    (
        "jwks-file-missing",
        "kdl",
        kdl(LISTENER, 'jwt "j" { algorithms "RS256"; jwks-file "no-such.json" }\n', route(steps='auth "j"')),
        [("B073", ERROR)],
    ),
    (
        "toml-audience-empty",
        "toml",
        toml(
            '\n[[jwt]]\nname = "j"\nalgorithms = ["RS256"]\njwks-url = "https://a.example/jwks"\naudience = []\n\n[[chain]]\nname = "c"\nsteps = [{ auth = "j" }]\n\n[[route]]\nname = "q"\nmatch = { path = "/q" }\nsteps = [{ use = "c" }]\nrespond = 200\n'
        ),
        [("B011", ERROR)],
    ),
    (
        "toml-jwks-url-table-no-url",
        "toml",
        toml(
            '\n[[jwt]]\nname = "j"\nalgorithms = ["RS256"]\njwks-url = { refresh = "5m" }\n\n[[route]]\nname = "q"\nmatch = { path = "/q" }\nsteps = [{ auth = "j" }]\nrespond = 200\n'
        ),
        [("B012", ERROR)],
    ),
    # section 9
    (
        "burst-0-kdl",
        "kdl",
        kdl(LISTENER, 'rate-limit "rl" { key "client-ip"; rate "1/s" burst=0 }\n', route(steps='rate-limit "rl"')),
        [("B041", ERROR)],
    ),
    (
        "burst-0-toml",
        "toml",
        toml(
            '\n[[rate-limit]]\nname = "rl"\nkey = "client-ip"\nrate = "1/s"\nburst = 0\n\n[[route]]\nname = "q"\nmatch = { path = "/q" }\nsteps = [{ rate-limit = "rl" }]\nrespond = 200\n'
        ),
        [("B041", ERROR)],
    ),
    (
        "burst-over-u32",
        "kdl",
        kdl(
            LISTENER,
            'rate-limit "rl" { key "client-ip"; rate "1/s" burst=4294967296 }\n',
            route(steps='rate-limit "rl"'),
        ),
        [("B041", ERROR)],
    ),
    (
        "burst-u32-max",
        "kdl",
        kdl(
            LISTENER,
            'rate-limit "rl" { key "client-ip"; rate "1/s" burst=4294967295 }\n',
            route(steps='rate-limit "rl"'),
        ),
        [],
    ),
    (
        "ebpf-header-key",
        "kdl",
        kdl(
            LISTENER,
            'rate-limit "rl" { key "header:x-user"; rate "1/s"; ebpf #true }\n',
            route(steps='rate-limit "rl"'),
        ),
        [("B074", ERROR)],
    ),
    (
        "claim-limit-without-auth",
        "kdl",
        kdl(LISTENER, 'rate-limit "rl" { key "jwt:sub"; rate "1/s" }\n', route(steps='rate-limit "rl"')),
        [("B071", ERROR)],
    ),
    # section 10
    (
        "wasm-missing",
        "kdl",
        kdl(LISTENER, 'plugin "p" { wasm "no-such.wasm" }\n', route(steps='plugin "p"')),
        [("B090", ERROR)],
    ),
    (
        "wasm-field-missing",
        "kdl",
        kdl(LISTENER, 'plugin "p" { config "x" }\n', route(steps='plugin "p"')),
        [("B012", ERROR)],
    ),
    # section 11
    (
        "toml-chain-without-steps-kept",
        "toml",
        toml(
            '\n[[chain]]\nname = "c"\n\n[[route]]\nname = "q"\nmatch = { path = "/q" }\nsteps = [{ use = "c" }]\nrespond = 200\n'
        ),
        [("B012", ERROR)],
    ),
    (
        "toml-chain-empty-steps",
        "toml",
        toml(
            '\n[[chain]]\nname = "c"\nsteps = []\n\n[[route]]\nname = "q"\nmatch = { path = "/q" }\nsteps = [{ use = "c" }]\nrespond = 200\n'
        ),
        [],
    ),
    (
        "chain-with-match",
        "kdl",
        kdl(LISTENER, 'chain "c" { match { path "/x" } }\n', route(steps='use "c"')),
        [("B010", ERROR)],
    ),
    # section 12
    (
        "step-after-action",
        "kdl",
        kdl_route(steps="", action='respond 200\n    response-headers { set "x-a" "1" }'),
        [("B054", WARNING)],
    ),
    ("no-action", "kdl", kdl_route(action=""), [("B012", ERROR)]),
    (
        "toml-three-actions",
        "toml",
        TOML_HEAD
        + '\n[[route]]\nname = "r"\nproxy = "u"\nrespond = 200\nredirect = "/x"\n\n[[upstream]]\nname = "u"\nservers = [{ address = "127.0.0.1:9" }]\n',
        [("B014", ERROR), ("B014", ERROR)],
    ),
    ("empty-match", "kdl", kdl_route(match=""), [("B051", WARNING)]),
    ("after-matchless-route", "kdl", kdl(LISTENER, matchless_route("respond 200", "all"), route()), [("B050", ERROR)]),
    (
        "host-after-wildcard",
        "kdl",
        kdl(LISTENER, route(match='host "*.example.com"', name="w"), route(match='host "a.example.com"')),
        [("B050", ERROR)],
    ),
    (
        "prefix-after-get-and-head",
        "kdl",
        kdl(
            LISTENER,
            route(match='path-prefix "/v1"; method "GET"', name="g"),
            route(match='path-prefix "/v1"; method "HEAD"', name="h"),
            route(match='path-prefix "/v1"; method "GET" "HEAD"'),
        ),
        [("B050", ERROR)],
    ),
    (
        "regex-below-prefix",
        "kdl",
        kdl(LISTENER, route(match='path-prefix "/api"', name="api"), route(match='path-regex "/api/v[0-9]+"')),
        [("B050", ERROR)],
    ),
    (
        "wildcard-not-apex",
        "kdl",
        kdl(LISTENER, route(match='host "*.example.com"', name="w"), route(match='host "example.com"')),
        [],
    ),
    ("condition-without-value", "kdl", kdl_route(match="path"), [("B011", ERROR)]),
    (
        "toml-header-false",
        "toml",
        TOML_HEAD + '\n[[route]]\nname = "r"\nmatch = { header = { x-a = false } }\nrespond = 200\n',
        [("B011", ERROR)],
    ),
    ("same-matcher-twice", "kdl", kdl_route(match='path-prefix "/a"; path-prefix "/b"'), [("B053", ERROR)]),
    ("same-header-twice", "kdl", kdl_route(match='header "x-a" "1"; header "x-a" "2"'), [("B053", ERROR)]),
    ("two-header-names", "kdl", kdl_route(match='header "x-a"; header "x-b"'), []),
    ("query-name-not-checked", "kdl", kdl_route(match='query "a b&c"'), []),
    (
        "toml-step-empty",
        "toml",
        TOML_HEAD + '\n[[route]]\nname = "r"\nsteps = [{}]\nrespond = 200\n',
        [("B011", ERROR)],
    ),
    (
        "toml-step-two-keys",
        "toml",
        TOML_HEAD
        + '\n[[route]]\nname = "r"\nsteps = [{ request-headers = { remove = "a" }, response-headers = { remove = "b" } }]\nrespond = 200\n',
        [("B011", ERROR)],
    ),
    (
        "toml-step-unknown",
        "toml",
        TOML_HEAD + '\n[[route]]\nname = "r"\nsteps = [{ request-header = { remove = "a" } }]\nrespond = 200\n',
        [("B010", ERROR)],
    ),
    ("role-without-auth", "kdl", kdl_route(steps='require-role "admin"'), [("B070", ERROR)]),
    (
        "auth-twice-via-chain",
        "kdl",
        kdl(
            LISTENER,
            'jwt "j" { algorithms "RS256"; jwks-url "https://a.example/jwks" }\nchain "c" { auth "j" }\n',
            route(steps='use "c"\n    auth "j"'),
        ),
        [("B075", WARNING)],
    ),
    ("set-and-remove", "kdl", kdl_route(steps='request-headers { set "x-a" "1"; remove "x-a" }'), [("B052", WARNING)]),
    ("set-twice", "kdl", kdl_route(steps='request-headers { set "x-a" "1"; set "x-a" "2" }'), [("B052", WARNING)]),
    ("add-twice-ok", "kdl", kdl_route(steps='request-headers { add "x-a" "1"; add "x-a" "2" }'), []),
    *[
        (f"ineffective-{n}", "kdl", kdl_route(steps=st), want)
        for n, st, want in [
            ("connection", 'request-headers { set "connection" "close" }', [("B056", WARNING)]),
            ("proxy-authorization", 'request-headers { add "proxy-authorization" "x" }', [("B056", WARNING)]),
            ("content-length", 'response-headers { set "content-length" "1" }', [("B056", WARNING)]),
            ("expect-request", 'request-headers { set "expect" "100-continue" }', [("B056", WARNING)]),
            ("expect-response", 'response-headers { set "expect" "x" }', []),
            ("proxy-status", 'response-headers { set "proxy-status" "x" }', []),
        ]
    ],
    ("kdl-remove-no-args", "kdl", kdl_route(steps="request-headers { remove }"), [("B011", ERROR)]),
    (
        "toml-remove-empty",
        "toml",
        TOML_HEAD + '\n[[route]]\nname = "r"\nsteps = [{ request-headers = { remove = [] } }]\nrespond = 200\n',
        [],
    ),
    (
        "toml-add-array",
        "toml",
        TOML_HEAD
        + '\n[[route]]\nname = "r"\nsteps = [{ request-headers = { add = { x-tag = ["a", "b"] } } }]\nrespond = 200\n',
        [],
    ),
    ("kdl-set-three-args", "kdl", kdl_route(steps='request-headers { set "x-a" "1" "2" }'), [("B011", ERROR)]),
    *[
        (f"body-never-sent-{s}", "kdl", kdl_route(action=f'respond {s} body="x"'), [("B055", WARNING)])
        for s in (204, 304)
    ],
    (
        "strip-prefix-relative",
        "kdl",
        kdl_route(match='path-prefix "/v1"', action='proxy "u" strip-prefix="v1"'),
        [("B038", ERROR)],
    ),
    (
        "strip-prefix-unnormalised",
        "kdl",
        kdl_route(match='path-prefix "/v1"', action='proxy "u" strip-prefix="/v1/../v1"'),
        [("B038", ERROR)],
    ),
    (
        "strip-prefix-not-fitting",
        "kdl",
        kdl_route(match='path-prefix "/v1"; path "/v2/x"', action='proxy "u" strip-prefix="/v2"'),
        [("B038", WARNING)],
    ),
    (
        "toml-proxy-table-no-upstream",
        "toml",
        TOML_HEAD + '\n[[route]]\nname = "r"\nproxy = { strip-prefix = "/v1" }\n',
        [("B012", ERROR)],
    ),
    (
        "toml-respond-table-no-status",
        "toml",
        TOML_HEAD + '\n[[route]]\nname = "r"\nrespond = { body = "x" }\n',
        [("B012", ERROR)],
    ),
    (
        "toml-redirect-table-no-location",
        "toml",
        TOML_HEAD + '\n[[route]]\nname = "r"\nredirect = { status = 301 }\n',
        [("B012", ERROR)],
    ),
    (
        "content-type-control",
        "kdl",
        kdl_route(action='respond 200 content-type="text/plain\\r\\nx: y"'),
        [("B040", ERROR)],
    ),
    ("redirect-relative-ok", "kdl", kdl_route(action='redirect "../elsewhere?a=1"'), []),
    # sections 13, 14
    ("metrics-no-bind", "kdl", kdl(LISTENER, 'metrics { path "/m" }\n', route()), [("B012", ERROR)]),
    (
        "metrics-path-relative",
        "kdl",
        kdl(LISTENER, 'metrics { bind "127.0.0.1:9090"; path "metrics" }\n', route()),
        [("B038", ERROR)],
    ),
    ("admin-socket-empty", "kdl", kdl(LISTENER, 'admin { socket "" }\n', route()), [("B011", ERROR)]),
    # section 2, "File paths": an empty path is B011, wherever a path is written
    ("empty-access-log", "kdl", kdl(LISTENER, 'gateway "g" { access-log "" }\n', route()), [("B011", ERROR)]),
    ("empty-cert", "kdl", kdl('listener "l" { bind "127.0.0.1:8443"; tls { cert "" key="k.pem" } }\n', route()),
     [("B011", ERROR)]),
    ("empty-key", "kdl", kdl('listener "l" { bind "127.0.0.1:8443"; tls { cert "c.pem" key="" } }\n', route()),
     [("B011", ERROR)]),
    ("empty-wasm", "kdl", kdl(LISTENER, 'plugin "p" { wasm "" }\n', route(steps='plugin "p"')), [("B011", ERROR)]),
    ("empty-ca", "kdl", kdl_upstream('upstream "x" { server "127.0.0.1:9" tls=#true ca="" }\n'), [("B011", ERROR)]),
    # section 2: KDL v2 bare identifier strings; TOML arrays of tables as `[[…]]` headers
    ("kdl-bare-identifiers", "kdl",
     kdl('listener "l" { bind "127.0.0.1:8080"; protocols h1 h2c }\n', route(match="method GET")), []),
    (
        "toml-array-of-table-headers",
        "toml",
        toml('\n[[upstream]]\nname = "x"\n[[upstream.servers]]\naddress = "127.0.0.1:9"\nweight = 2\n'
             '[[upstream.servers]]\naddress = "127.0.0.1:10"\n[upstream.balance]\n'
             'algorithm = "weighted-round-robin"\n'),
        [],
    ),
    # section 7: health-check, pool and timeouts take only properties in KDL
    ("pool-children", "kdl", kdl_upstream('upstream "x" { server "127.0.0.1:9"; pool { max-idle 3 } }\n'),
     [("B011", ERROR)]),
    ("timeouts-argument", "kdl", kdl_upstream('upstream "x" { server "127.0.0.1:9"; timeouts "1s" }\n'),
     [("B011", ERROR)]),
    ("tls-false", "kdl", kdl_upstream('upstream "x" { server "127.0.0.1:9" tls=#false }\n'), []),
    # section 3: a `*` only as the whole first label; a bind IPv6 address only in brackets
    *[
        (f"host-bad-{host}", "kdl", kdl_route(match=f'host "{host}"'), [("B039", ERROR)])
        for host in ("*.*.example.com", "**.example.com", "[example.com]", "exa mple.com")
    ],
    ("bind-v6-without-brackets", "kdl", kdl('listener "l" { bind "::1:8081" }\n', route()), [("B033", ERROR)]),
    ("keyword-suggestion", "kdl",
     kdl_upstream('upstream "x" { balance "least_conn"; server "127.0.0.1:9" }\n'), [("B037", ERROR)],
     "`least-conn`"),
    # section 7's table: a server's address is B011 missing in KDL, B012 in TOML; no server at all is B012
    # (section 7's "servers: required", though section 2 says an empty TOML array is B011: see the report)
    ("kdl-server-without-address", "kdl", kdl_upstream('upstream "x" { server }\n'), [("B011", ERROR)]),
    ("toml-server-without-address", "toml",
     toml('\n[[upstream]]\nname = "x"\nservers = [{ weight = 2 }]\n'), [("B012", ERROR)]),
    ("toml-no-server", "toml", toml('\n[[upstream]]\nname = "x"\nservers = []\n'), [("B012", ERROR)]),
]


@pytest.mark.parametrize("case_id,extension,text,expected,hint", [(*c, None) if len(c) == 4 else c for c in CASES],
                         ids=[c[0] for c in CASES])
def test_check_gives_the_documented_diagnostic(blitzc, tmp_path, case_id, extension, text, expected, hint):
    """Exactly the diagnostics the page names for the example (one mistake,
    one diagnostic), with the severity it names; none for a form it accepts."""
    spec = tmp_path / f"case.{extension}"
    spec.write_text(text)
    code, diagnostics = check(blitzc, spec)
    assert codes_of(diagnostics) == sorted(expected), (diagnostics, text)
    assert code == (1 if any(severity == ERROR for _, severity in expected) else 0)
    if hint:
        assert any(hint in d["label"] + " " + d["help"] for d in diagnostics), diagnostics


# ---------------------------------------------------------------- what a request meets (sections 12 and 16)

# One spec for `blitzc dev` and one `blitzc build`. Each route stands for one
# sentence of sections 12 and 16; its header rewrites are written in the
# opposite order to the one they apply in, so an order taken from the text
# would show.
RUNTIME_SPEC = """version 1
gateway "docs-audit" {{ workers 1 }}
listener "l" {{
    bind "127.0.0.1:{port}"
    protocols "h1" "h2c"
}}
upstream "origin" {{ server "127.0.0.1:{origin}" }}
route "rewrite" {{
    match {{ path "/rewrite" }}
    request-headers {{
        add "x-tag" "eu"
        set "X-Tag" "edge"
        remove "x-tag" "cookie"
        add "x-keep" "two"
        set "x-both" "kept"
        remove "x-both"
        set "x-twice" "first"
        set "x-twice" "second"
        set "x-forwarded-for" "192.0.2.1"
        set "via" "1.1 corp-proxy"
    }}
    proxy "origin"
}}
route "local-rewrite" {{
    match {{ path "/local-rewrite" }}
    response-headers {{
        add "x-a" "1"
        add "x-a" "2"
        set "x-b" "set"
        remove "x-b"
    }}
    respond 200 body="local"
}}
route "defaults" {{
    match {{ path "/defaults" }}
    respond 200
}}
route "no-content" {{
    match {{ path "/no-content" }}
    respond 204 body="never sent"
}}
route "not-modified" {{
    match {{ path "/not-modified" }}
    respond 304 body="never sent"
}}
route "reset-content" {{
    match {{ path "/reset-content" }}
    respond 205 body="never sent"
}}
route "moved" {{
    match {{ path "/moved" }}
    redirect "../elsewhere?from=moved"
}}
route "rightmost" {{
    match {{ path "/rightmost" }}
    redirect "/elsewhere" status=301 status=308
}}
route "ineffective" {{
    match {{ path "/ineffective" }}
    request-headers {{
        set "connection" "x-secret"
        set "keep-alive" "timeout=5"
        set "te" "trailers"
        set "trailer" "x-late"
        add "upgrade" "websocket"
        set "proxy-authorization" "Basic eDp5"
        set "content-length" "5"
        set "transfer-encoding" "chunked"
        set "expect" "100-continue"
        set "proxy-status" "kept"
    }}
    response-headers {{
        set "content-length" "999"
        set "transfer-encoding" "chunked"
        set "connection" "close"
        set "keep-alive" "timeout=1"
        add "upgrade" "h2c"
        set "proxy-status" "kept"
    }}
    proxy "origin"
}}
chain "inner" {{
    request-headers {{ add "x-order" "inner" }}
}}
chain "outer" {{
    request-headers {{ add "x-order" "outer-1" }}
    use "inner"
    request-headers {{ add "x-order" "outer-2" }}
}}
route "spliced" {{
    match {{ path "/spliced" }}
    request-headers {{
        add "x-order" "route-1"
        set "x-late" "set-by-an-earlier-step"
    }}
    use "outer"
    request-headers {{
        add "x-order" "route-2"
        remove "x-late"
    }}
    proxy "origin"
}}
route "proxied-rewrite" {{
    match {{ path "/proxied-rewrite" }}
    response-headers {{
        add "set-cookie" "b=2"
        remove "x-internal"
        set "x-multi" "from-gateway"
    }}
    proxy "origin"
}}
route "step-after-action" {{
    match {{ path "/step-after-action" }}
    respond 200 body="local"
    response-headers {{ set "x-after" "ran" }}
}}
route "strip" {{
    match {{ path-prefix "/v1" }}
    proxy "origin" strip-prefix="/v1"
}}
"""

GATEWAY_KINDS = ["built", "dev"]
# What the origin adds to every answer, for the response rewrites to edit.
ORIGIN_FIELDS = ("x-multi: o1", "x-multi: o2", "set-cookie: a=1", "x-internal: secret")


@pytest.fixture(scope="module")
def gateways(blitzc, cache_dir, tmp_path_factory):
    """The spec served by a `blitzc build` binary and by `blitzc dev`, each on
    its own port, before one recording origin (it answers 200 and its target)."""
    folder = tmp_path_factory.mktemp("docs-runtime")
    origin = Origin()
    origin.handler = lambda req, conn: respond(conn, req, 200, req.target.encode(), headers=ORIGIN_FIELDS)
    served: dict[str, Served] = {}
    try:
        specs = {}
        for kind in GATEWAY_KINDS:
            port = free_port()
            specs[kind] = (folder / f"docs-audit-{kind}.kdl", port)
            specs[kind][0].write_text(RUNTIME_SPEC.format(port=port, origin=origin.port))
        binary = folder / "docs-audit-gateway"
        result = build(blitzc, specs["built"][0], binary, cache_dir)
        assert result.returncode == 0, result.stderr
        served["built"] = Served([str(binary)], specs["built"][1], blitz_env(cache_dir))
        served["dev"] = Served([str(blitzc), "dev", str(specs["dev"][0])], specs["dev"][1], blitz_env(cache_dir))
        yield served, origin
    finally:
        for gateway in served.values():
            gateway.stop()
        origin.stop()


def exchange_until_close(port: int, target: str, fields: tuple[str, ...] = ()) -> tuple[str, bytes]:
    """One HTTP/1.1 request with `connection: close`: the response head and
    every byte after it until the gateway closes (so a body a 204 or 304
    should not have would show)."""
    lines = [f"GET {target} HTTP/1.1", "host: docs.test", "connection: close", *fields]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        received = bytearray()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def fields_of(head: str) -> list[tuple[str, str]]:
    """The (lower-cased name, value) pairs of a response head, in order."""
    return [(name.strip().lower(), value.strip()) for name, _, value in
            (line.partition(":") for line in head.split("\r\n")[1:])]


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [value for field_name, value in fields if field_name == name]


def list_items(lines: list[str]) -> list[str]:
    """A list field's elements however they were split into lines (RFC 9110 §5.3)."""
    return [item.strip() for line in lines for item in line.split(",")]


def last_request(origin: Origin, path: str):
    assert origin.wait_for(lambda: any(r.path == path for r in origin.requests), timeout=10), origin.requests
    return [r for r in origin.requests if r.path == path][-1]


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_request_rewrites_apply_remove_then_set_then_add_and_the_gateway_writes_after(gateways, kind):
    """Section 12.2: "remove, then set, then add" whatever the written order;
    add keeps the values there; a header both set and removed "ends up set",
    set twice "the second value wins"; names are lower-cased. Against what the
    gateway writes: `x-forwarded-for` gets the client's address appended after
    the steps, and `via` its own line after the step's."""
    served, origin = gateways
    head, _ = exchange_until_close(served[kind].port, "/rewrite", (
        "x-tag: from-client", "x-keep: one", "cookie: a=1", "x-both: from-client", "x-twice: from-client"))
    assert head.startswith("HTTP/1.1 200"), head
    seen = last_request(origin, "/rewrite")
    assert seen.header("x-tag") == ["edge", "eu"], seen.headers
    assert all(name == b"x-tag" for name, _ in seen.headers if name.lower() == b"x-tag"), seen.headers
    assert seen.header("x-keep") == ["one", "two"], seen.headers
    assert seen.header("cookie") == [], seen.headers
    assert seen.header("x-both") == ["kept"], seen.headers
    assert seen.header("x-twice") == ["second"], seen.headers
    assert list_items(seen.header("x-forwarded-for")) == ["192.0.2.1", "127.0.0.1"], seen.headers
    via = list_items(seen.header("via"))
    assert len(via) == 2 and via[0] == "1.1 corp-proxy", seen.headers


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_response_rewrites_on_a_local_answer_keep_every_added_value_in_order(gateways, kind):
    """Section 12.2: several `add` nodes append in order; set then remove of one
    header in one block ends up set (remove runs first)."""
    served, _ = gateways
    head, body = exchange_until_close(served[kind].port, "/local-rewrite")
    fields = fields_of(head)
    assert head.startswith("HTTP/1.1 200") and body == b"local", (head, body)
    assert list_items(values(fields, "x-a")) == ["1", "2"], head
    assert values(fields, "x-b") == ["set"], head


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_response_rewrites_on_a_proxied_answer_replace_append_and_drop(gateways, kind):
    """Section 12.2's table: `set` replaces every value of the header with its
    one, `add` appends a value keeping the existing ones, `remove` drops every
    value; `response-headers` edits the response sent to the client."""
    served, _ = gateways
    head, body = exchange_until_close(served[kind].port, "/proxied-rewrite")
    fields = fields_of(head)
    assert head.startswith("HTTP/1.1 200") and body == b"/proxied-rewrite", (head, body)
    assert values(fields, "x-multi") == ["from-gateway"], head
    assert values(fields, "set-cookie") == ["a=1", "b=2"], head
    assert values(fields, "x-internal") == [], head


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_respond_with_a_status_only_sends_an_empty_text_body(gateways, kind):
    """Section 12.3 `respond`: body defaults to "", content-type to
    `text/plain; charset=utf-8`."""
    served, _ = gateways
    head, body = exchange_until_close(served[kind].port, "/defaults")
    fields = fields_of(head)
    assert head.startswith("HTTP/1.1 200") and body == b"", (head, body)
    assert values(fields, "content-type") == ["text/plain; charset=utf-8"], head
    assert values(fields, "content-length") == ["0"], head


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
@pytest.mark.parametrize("target,status", [("/no-content", 204), ("/not-modified", 304)])
def test_204_and_304_never_carry_the_written_body(gateways, kind, target, status):
    """Section 12.3: "A 204 or 304 answer never carries a body (a body given
    is not sent ...), and a 204 no Content-Length (RFC 9110 §8.6)"."""
    served, _ = gateways
    head, rest = exchange_until_close(served[kind].port, target)
    assert head.startswith(f"HTTP/1.1 {status}"), head
    assert rest == b"", (head, rest)
    if status == 204:
        assert values(fields_of(head), "content-length") == [], head


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_205_never_carries_the_written_body(gateways, kind):
    """RFC 9110 §15.3.6: "a server MUST NOT generate content in a 205
    response"; it is framed, with `Content-Length: 0` (docs/spec.md 12.3).
    The gateway is the server here. Was a bug: the body written for a 205
    was sent (the 204 and 304 tests above are the controls)."""
    served, _ = gateways
    head, rest = exchange_until_close(served[kind].port, "/reset-content")
    assert head.startswith("HTTP/1.1 205"), head
    assert rest == b"", (head, rest)
    assert values(fields_of(head), "content-length") == ["0"], head


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_redirect_defaults_to_302_and_keeps_a_relative_location(gateways, kind):
    """Section 12.3 `redirect`: status defaults to 302; relative locations are allowed (sent as written)."""
    served, _ = gateways
    head, _ = exchange_until_close(served[kind].port, "/moved")
    assert head.startswith("HTTP/1.1 302"), head
    assert values(fields_of(head), "location") == ["../elsewhere?from=moved"], head


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_a_repeated_kdl_property_takes_its_rightmost_value(gateways, kind):
    """Section 2: "when a property is repeated on one node the rightmost one
    wins (KDL v2 semantics)": `status=301 status=308` redirects with 308."""
    served, _ = gateways
    head, _ = exchange_until_close(served[kind].port, "/rightmost")
    assert head.startswith("HTTP/1.1 308"), head


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
@pytest.mark.parametrize("target,forwarded", [("/v1", "/"), ("/v1/users", "/users"), ("/v1/", "/")])
def test_strip_prefix_on_a_segment_boundary(gateways, kind, target, forwarded):
    """Section 12.3: `/v1` is stripped from `/v1/users` (giving `/users`) and from `/v1` (giving `/`)."""
    served, _ = gateways
    head, body = exchange_until_close(served[kind].port, target)
    assert head.startswith("HTTP/1.1 200") and body == forwarded.encode(), (head, body)


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
@pytest.mark.parametrize("target", ["/v10", "/nothing", "/rewrite/"])
def test_a_request_no_route_matches_gets_404(gateways, kind, target):
    """Sections 12.3 and 15.1: not stripped from `/v10` (it is not below `/v1`:
    no route matches it), and a request no route matches gets 404."""
    served, _ = gateways
    head, _ = exchange_until_close(served[kind].port, target)
    assert head.startswith("HTTP/1.1 404"), head


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_steps_run_in_written_order_with_chains_spliced_in_place(gateways, kind):
    """Sections 12.2 and 16: "Its steps run in order, with every `use` spliced
    in place", recursively (a chain may `use` another); a later step sees what
    an earlier one did (a `remove` in a later block drops what an earlier
    block set, unlike remove and set in one block)."""
    served, origin = gateways
    head, _ = exchange_until_close(served[kind].port, "/spliced", ("x-order: client",))
    assert head.startswith("HTTP/1.1 200"), head
    seen = last_request(origin, "/spliced")
    assert seen.header("x-order") == ["client", "route-1", "outer-1", "inner", "outer-2", "route-2"], seen.headers
    assert seen.header("x-late") == [], seen.headers


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_a_step_written_after_the_action_still_runs(gateways, kind):
    """Section 12: "A step written after the action is B054 (warning): it still
    runs before the action, since steps always run first"."""
    served, _ = gateways
    head, body = exchange_until_close(served[kind].port, "/step-after-action")
    assert head.startswith("HTTP/1.1 200") and body == b"local", (head, body)
    assert values(fields_of(head), "x-after") == ["ran"], head


# Section 12.2 (B056): fields the gateway drops whatever value a step gives them.
DROPPED_FROM_REQUESTS = ["connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
                         "transfer-encoding", "expect"]
DROPPED_FROM_RESPONSES = ["transfer-encoding", "connection", "keep-alive", "upgrade"]


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_fields_a_step_sets_but_the_gateway_drops_never_leave_it(gateways, kind):
    """Section 12.2: "A `set` or `add` of a field the gateway drops whatever its
    value is B056 (warning): hop-by-hop fields (`connection`, `keep-alive`,
    `te`, `trailer`, `upgrade`, `proxy-*` but `proxy-status`), the framing
    fields `content-length` and `transfer-encoding` (each message is framed by
    the gateway), and `expect` on a request." So a bodiless request reaches the
    origin without any of them (and without a content-length), `proxy-status`
    kept; the response is framed by the gateway (its own content-length, the
    origin's body exactly) and keeps the connection open though a step set
    `connection: close`."""
    served, origin = gateways
    with RawConn(served[kind].port, timeout=10) as conn:
        conn.send(b"GET /ineffective HTTP/1.1\r\nhost: docs.test\r\n\r\n")
        first = conn.read_response()
        conn.send(b"GET /ineffective HTTP/1.1\r\nhost: docs.test\r\n\r\n")
        second = conn.read_response()
    seen = last_request(origin, "/ineffective")
    assert [n for n in DROPPED_FROM_REQUESTS + ["content-length"] if seen.header(n)] == [], seen.headers
    assert seen.header("proxy-status") == ["kept"], seen.headers
    for response in (first, second):
        assert response.status == 200 and response.body == b"/ineffective", response
        assert response.header("content-length") == [str(len(b"/ineffective"))], response
        assert [n for n in DROPPED_FROM_RESPONSES if response.header(n)] == [], response
        assert response.header("proxy-status") == ["kept"], response


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_request_rewrites_apply_alike_over_h2c(gateways, kind):
    """Section 5: HTTP/2 requests "go through the same routes, steps and
    upstreams ... as HTTP/1.1 ones": the rewrite above, from an h2c stream."""
    served, origin = gateways
    client = H2Client(f"127.0.0.1:{served[kind].port}")
    try:
        response = client.request("/rewrite", authority="docs.test", headers=[
            ("x-tag", "from-client"), ("x-keep", "one"), ("cookie", "a=1"), ("x-twice", "from-client")])
    finally:
        client.close()
    assert response.status == 200, response
    seen = last_request(origin, "/rewrite")
    assert seen.header("x-tag") == ["edge", "eu"] and seen.header("x-keep") == ["one", "two"], seen.headers
    assert seen.header("cookie") == [] and seen.header("x-twice") == ["second"], seen.headers
    assert seen.header("x-both") == ["kept"], seen.headers


# ---------------------------------------------------------------- the health-check path (section 7, B038)

def health_check_targets(blitzc: Path, folder: Path, path: str) -> tuple[list[bytes], int]:
    """Serve a spec whose one upstream is checked at `path` every second with
    `blitzc dev`; the request targets the origin got from the checker (raw
    bytes), and the status the gateway itself answers to a request line with
    the first such target."""
    origin = Origin()
    port = free_port()
    spec = folder / "health-path.kdl"
    spec.write_text(f'version 1\nlistener "l" {{ bind "127.0.0.1:{port}" }}\n'
                    f'upstream "u" {{ server "127.0.0.1:{origin.port}"; health-check path="{path}" interval="1s" }}\n'
                    'route "r" { proxy "u" }\n')
    gateway = Served([str(blitzc), "dev", str(spec)], port, blitz_env(None))
    try:
        assert origin.wait_for(lambda: len(origin.requests) >= 1, timeout=10), gateway.lines
        targets = [r.head_raw.split(b" ")[1] for r in origin.requests]
        with RawConn(port, timeout=10) as conn:
            conn.send(b"GET " + targets[0] + b" HTTP/1.1\r\nhost: docs.test\r\nconnection: close\r\n\r\n")
            status = conn.read_response().status
        return targets, status
    finally:
        gateway.stop()
        origin.stop()


def test_a_percent_encoded_health_check_path_is_sent_as_written(blitzc, tmp_path):
    """Control for the test below: an encoded path with a query passes check,
    is what the checker sends, and is a target the gateway itself takes."""
    path = "/h%C3%A9alth?deep=1"
    spec = tmp_path / "encoded.kdl"
    spec.write_text(f'version 1\nlistener "l" {{ bind "127.0.0.1:8080" }}\n'
                    f'upstream "u" {{ server "127.0.0.1:9"; health-check path="{path}" }}\nroute "r" {{ proxy "u" }}\n')
    assert check(blitzc, spec) == (0, [])
    targets, own_status = health_check_targets(blitzc, tmp_path, path)
    assert set(targets) == {path.encode()}
    assert own_status != 400


@pytest.mark.parametrize("path", ["/h\u00e9alth", "/health#frag"])
def test_a_health_check_path_no_request_target_can_carry_is_refused_or_never_sent_raw(blitzc, tmp_path, path):
    """docs/diagnostics.md, B038: "a path that ... holds a character a request
    target cannot carry unencoded (a space, a control or non-ASCII character)
    (`path`, `path-prefix`, a health-check path, `strip-prefix`)". RFC 9112
    §3.2 (origin-form is absolute-path [ "?" query ], RFC 3986 characters):
    neither raw UTF-8 nor a fragment may be sent in a request line, and the
    gateway's own listener answers such a request 400 (docs/spec.md 15.2).
    Was a bug: `check` took both (it refused only spaces and controls) and
    the checker sent them raw. `check` refuses them now (B038), with the
    encoded spelling, or the path without its fragment, as the hint."""
    spec = tmp_path / "raw.kdl"
    spec.write_text(f'version 1\nlistener "l" {{ bind "127.0.0.1:8080" }}\n'
                    f'upstream "u" {{ server "127.0.0.1:9"; health-check path="{path}" }}\nroute "r" {{ proxy "u" }}\n')
    _, diagnostics = check(blitzc, spec)
    assert [d["code"] for d in diagnostics] == ["B038"], diagnostics
    assert any(hint in diagnostics[0]["help"] for hint in ("/h%C3%A9alth", "`/health`")), diagnostics


# ---------------------------------------------------------------- a match path with a malformed escape (section 3, B038)

MALFORMED_ESCAPES = ["/files/100%", "/a%2", "/a%zz/b"]


@pytest.mark.parametrize("path", MALFORMED_ESCAPES)
def test_a_malformed_escape_in_a_match_path_is_b038(blitzc, tmp_path, path):
    """Sections 3 and 15.2: a target holding a malformed escape (`%zz`, a
    truncated `%2`) cannot be matched, so a match path holding one is B038."""
    spec = tmp_path / "escape.kdl"
    spec.write_text(kdl_route(match=f'path-prefix "{path}"'))
    _, diagnostics = check(blitzc, spec)
    assert [(d["code"], d["severity"]) for d in diagnostics] == [("B038", ERROR)], diagnostics


@pytest.mark.parametrize("where", ["path-prefix", "strip-prefix"])
@pytest.mark.parametrize("path", MALFORMED_ESCAPES)
def test_b038_never_suggests_the_root_for_a_malformed_escape(blitzc, tmp_path, path, where):
    """Section 3: a path that is not normalised is rejected "with the
    normalised spelling as the hint" (`/a/../b` gives `/b`, pinned above). A
    malformed escape has no normalised spelling, yet the help says "write
    `/`": followed, `path-prefix "/files/100%"` becomes a route for every
    request. Was a bug; the help now names the escape (a literal `%` is
    `%25`) and gives the spelling with each stray `%` so written."""
    spec = tmp_path / "escape.kdl"
    if where == "path-prefix":
        spec.write_text(kdl_route(match=f'path-prefix "{path}"'))
    else:
        spec.write_text(kdl_route(match='path-prefix "/"', action=f'proxy "u" strip-prefix="{path}"'))
    _, diagnostics = check(blitzc, spec)
    helps = [d["help"] for d in diagnostics if d["code"] == "B038"]
    assert helps and not any("`/`" in help for help in helps), helps
    assert all("%25" in help for help in helps), helps
