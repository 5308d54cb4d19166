//! `docs/diagnostics.md` is generated: from `Code::ALL`, the descriptions
//! below, and for each code the first corpus file of `tests/specs/invalid/`
//! that triggers it (the spec and what `blitzc check` prints for it).
//!
//! The test fails when the document differs from what it generates. After a
//! change to a code, a description, a corpus file or a diagnostic's text,
//! rewrite it and review the diff:
//!
//! ```text
//! BLESS=1 cargo test -p blitzc --test diagnostics_doc
//! ```
#![allow(clippy::unwrap_used)]

mod common;

use blitzc::diag::render::{self, Format, Report};
use blitzc::diag::{Code, Severity, SourceFile};
use common::{Case, corpus, workspace_root};
use std::fmt::Write as _;

/// What the document says about one code. Kept here rather than in
/// `codes.rs` because doc comments are not available at run time.
struct Description {
    code: &'static str,
    /// "error", "warning" or "error or warning".
    severity: &'static str,
    /// What the diagnostic means (one or two sentences).
    meaning: &'static str,
    /// How to fix it.
    fix: &'static str,
}

const DESCRIPTIONS: &[Description] = &[
    // ---- syntax
    Description {
        code: "B001",
        severity: "error",
        meaning: "The KDL text does not parse: a block or string that is not closed, an unknown \
                  escape in a string, an unquoted value that is not a plain word (such as an \
                  address), KDL v1 syntax (`true` instead of `#true`, `key = value`), or a \
                  byte that is not UTF-8.",
        fix: "Correct the text at the position shown. Specs are KDL v2: strings are quoted, \
              booleans are `#true` and `#false`, properties are written `key=value` without \
              spaces. One mistake can be reported at more than one place (an unclosed block \
              also leaves the rest of the file unclosed).",
    },
    Description {
        code: "B002",
        severity: "error",
        meaning: "The TOML text does not parse: an unclosed `[table]` header, a key or table \
                  given twice, an unknown escape in a string, an unquoted string value, a key \
                  without `=`, or a byte that is not UTF-8.",
        fix: "Correct the text at the position shown. Quote strings; write regular \
              expressions in single-quoted literal strings (`'/v1/\\d+'`) so backslashes are \
              kept; give each named item its own `[[kind]]` table and each `[table]` once.",
    },
    Description {
        code: "B003",
        severity: "error",
        meaning: "The spec does not start with `version 1`, or names a version this `blitzc` \
                  does not read.",
        fix: "Put `version 1` (KDL) or `version = 1` (TOML) first in the file.",
    },
    Description {
        code: "B004",
        severity: "error",
        meaning: "The file name ends neither in `.kdl` nor in `.toml`, so `blitzc` cannot tell \
                  which syntax it is written in.",
        fix: "Rename the spec to `NAME.kdl` or `NAME.toml`.",
    },
    // ---- structure
    Description {
        code: "B010",
        severity: "error",
        meaning: "A node, key or property that this place does not take, most often a typo \
                  (`upstreams`, `wieght=3`, `path-prefx`).",
        fix: "Use one of the names the help lists (it suggests the closest one), or remove \
              it. docs/spec.md lists what each construct takes.",
    },
    Description {
        code: "B011",
        severity: "error",
        meaning: "A value of the wrong type (a string where an integer or boolean belongs, a \
                  string where TOML wants an array), or the wrong number of values.",
        fix: "Write the value in the type the message names: integers and booleans unquoted \
              (`max-headers 100`, `ebpf #true`), addresses and durations quoted, lists as \
              several arguments (KDL) or an array (TOML).",
    },
    Description {
        code: "B012",
        severity: "error",
        meaning: "A required field is missing: a name, a listener's `bind`, an upstream's \
                  servers, a route's action (`proxy`, `respond` or `redirect`), a jwt's \
                  `algorithms` or key source, a rate limit's `key` or `rate`, a plugin's \
                  `wasm`.",
        fix: "Add the field; the help shows an example. An item missing a field it cannot do \
              without is left out, so references to it may be reported too (B021).",
    },
    Description {
        code: "B013",
        severity: "error",
        meaning: "A field or block given twice where it may appear once (two `bind`s in a \
                  listener, two `limits` blocks). In TOML a repeated key is a syntax error \
                  (B002) instead.",
        fix: "Keep one, or merge the two blocks into one.",
    },
    Description {
        code: "B014",
        severity: "error",
        meaning: "Fields that exclude each other: two actions in one route, or both \
                  `jwks-file` and `jwks-url` in one jwt.",
        fix: "Keep one of them. A route has exactly one action; keys come either from a file \
              or from a URL.",
    },
    Description {
        code: "B015",
        severity: "error",
        meaning: "The spec has no listener (or none that could be lowered), so the gateway \
                  would accept no connection.",
        fix: "Add a listener, e.g. `listener \"public\" { bind \"0.0.0.0:8080\" }`, or fix the \
              errors reported on the listeners there are.",
    },
    // ---- names and references
    Description {
        code: "B020",
        severity: "error",
        meaning: "Two items of one kind (listeners, upstreams, jwts, rate limits, plugins, \
                  chains or routes) share a name. References go to the first.",
        fix: "Rename one of them.",
    },
    Description {
        code: "B021",
        severity: "error",
        meaning: "A reference (`proxy`, `auth`, `rate-limit`, `plugin`, `use`) names no item of \
                  its kind. Also reported when the item is defined but has an error that \
                  keeps it out of the model.",
        fix: "Correct the name (the help suggests a close one), define the item, or fix the \
              errors reported on its definition.",
    },
    Description {
        code: "B022",
        severity: "error",
        meaning: "Two listeners, or a listener and the metrics endpoint, would bind the same \
                  socket: the same address and port, or a wildcard address (`0.0.0.0`, `[::]`) \
                  and another address on the same port.",
        fix: "Give each its own port. One listener serves several protocols; there is no \
              need for a second listener on the same address.",
    },
    Description {
        code: "B023",
        severity: "error",
        meaning: "Chains `use` each other in a cycle, so splicing them would never end.",
        fix: "Remove one `use` of the cycle; the message lists the chains in it.",
    },
    Description {
        code: "B024",
        severity: "warning",
        meaning: "A jwt, rate limit, plugin or chain that no route or chain references. \
                  Upstreams are exempt: one may be declared before a route uses it.",
        fix: "Reference it (`auth`, `rate-limit`, `plugin`, `use`), or remove it.",
    },
    // ---- values
    Description {
        code: "B030",
        severity: "error",
        meaning: "A duration that is not a whole number followed by `ms`, `s`, `m` or `h`.",
        fix: "Write e.g. `\"500ms\"`, `\"10s\"`, `\"5m\"`, `\"1h\"`; use a smaller unit instead \
              of a fraction (`\"1500ms\"`, not `\"1.5s\"`).",
    },
    Description {
        code: "B031",
        severity: "error",
        meaning: "A size that is neither a whole number of bytes nor a number with a binary \
                  unit (`B`, `KiB`, `MiB`, `GiB`); decimal units like `MB` are ambiguous and \
                  rejected.",
        fix: "Write e.g. `16384` or `\"16KiB\"`, `\"10MiB\"`.",
    },
    Description {
        code: "B032",
        severity: "error",
        meaning: "A rate that is not `N/s`, `N/m` or `N/h`.",
        fix: "Write a positive whole number, a slash and a period, e.g. `\"100/s\"`.",
    },
    Description {
        code: "B033",
        severity: "error",
        meaning: "An address that does not parse: a bind address must be `IP:PORT`; an \
                  upstream server `IP:PORT` or `DNS-NAME:PORT`, without a scheme.",
        fix: "Write e.g. `\"0.0.0.0:8080\"`, `\"[::]:8080\"` (bind) or `\"127.0.0.1:9001\"`, \
              `\"users.internal:80\"` (server).",
    },
    Description {
        code: "B034",
        severity: "error",
        meaning: "A status code out of its range: `respond` takes 200 to 599, `redirect` takes \
                  301, 302, 303, 307 or 308; a health check's `expect` is a status from 100 to \
                  599 or a range of them (`\"200-399\"`).",
        fix: "Use a status from the range the label gives.",
    },
    Description {
        code: "B035",
        severity: "error",
        meaning: "A header name that is not an HTTP token (it has spaces, a colon or other \
                  separators).",
        fix: "Use only letters, digits and ``!#$%&'*+-.^_`|~``, e.g. `x-forwarded-proto`.",
    },
    Description {
        code: "B036",
        severity: "error",
        meaning: "A `path-regex` that does not compile with Rust `regex` syntax, as it is \
                  applied: anchored to the whole path, as `^(?:REGEX)$` (a `#` comment of \
                  `(?x)` mode that runs to the end of the pattern swallows the anchoring).",
        fix: "Fix the expression at the place the label names; it must match the whole path.",
    },
    Description {
        code: "B037",
        severity: "error",
        meaning: "A keyword that is not one of the allowed choices: a protocol, balance \
                  algorithm, JWT algorithm (`none` is never accepted), access-log format, \
                  request key, retry condition, method, `workers` value or JWKS URL.",
        fix: "Use one of the choices the help lists; it suggests the closest one.",
    },
    Description {
        code: "B038",
        severity: "error or warning",
        meaning: "A path that is not absolute, not normalised, or holds a character a \
                  request target cannot carry unencoded (a space, a control or non-ASCII \
                  character) (`path`, `path-prefix`, a health-check path, `strip-prefix`): \
                  requests are normalised before matching, and a raw such byte is refused \
                  with 400, so such a path could never match. A warning when a \
                  `strip-prefix` does not fit the paths the route matches, so nothing would \
                  be stripped.",
        fix: "Start paths with `/` and write them normalised and percent-encoded as clients \
              send them (the help gives that form); use a `strip-prefix` that every matched \
              path starts with.",
    },
    Description {
        code: "B039",
        severity: "error",
        meaning: "A host pattern that is neither a host name nor `*.name` (a port, a wildcard \
                  that is not the first label), or an `sni` that is not a DNS name.",
        fix: "Write `api.example.com` or `*.example.com`; hosts are matched without their \
              port.",
    },
    Description {
        code: "B040",
        severity: "error",
        meaning: "A header value (in `set`/`add`, `content-type` or a redirect location) \
                  with CR, LF or NUL, which would split or corrupt the \
                  response, or another control character or DEL, which RFC 9110 leaves out of \
                  field values (HTTP/2 cannot carry it, and no request holds one). Also a \
                  value of a `header` match condition that starts or ends with a space or \
                  tab: no request's field value keeps that whitespace, so the condition \
                  could never hold.",
        fix: "Keep header values on one line, without control characters; write match \
              values without surrounding whitespace.",
    },
    Description {
        code: "B041",
        severity: "error or warning",
        meaning: "A number out of its range: `workers 0`, a negative or too large count, a \
                  rate limit with a burst of 0 (errors); more than 10 retry attempts \
                  (warning: retries multiply load during an outage); a `max-header-bytes` \
                  below the smallest HTTP/1.1 request head, 26 bytes (warning: every \
                  HTTP/1.1 and HTTP/2 request would get 431; a size without a unit is \
                  bytes); a zero \
                  `header-timeout`, `body-timeout`, upstream `connect`/`response` \
                  timeout, retry `total`, or health-check `interval`/`timeout` (warning: \
                  the gateway could serve nothing, or would flood its upstreams with \
                  checks).",
        fix: "Use a number in the range the label gives.",
    },
    // ---- routing
    Description {
        code: "B050",
        severity: "error",
        meaning: "A route that can never match: an earlier route matches every request it \
                  matches (routes are tried in file order, the first match wins).",
        fix: "Move the more specific route above the broader one, or narrow the earlier \
              route's `match`.",
    },
    Description {
        code: "B051",
        severity: "warning",
        meaning: "A `match` without conditions matches every request. Also reported when every \
                  condition in it had an error.",
        fix: "Add conditions, or remove `match` to make a catch-all route explicit.",
    },
    Description {
        code: "B052",
        severity: "warning",
        meaning: "One header block both sets and removes a header, or sets it twice. Edits \
                  apply as remove, then set, then add, so one of them has no effect.",
        fix: "Drop the edit that has no effect; use `add` to send several values.",
    },
    Description {
        code: "B053",
        severity: "error",
        meaning: "The same matcher twice in one `match` block. Conditions must all hold, so \
                  two `path-prefix` conditions require both prefixes at once.",
        fix: "Write the values as alternatives of one matcher: `path-prefix \"/a\" \"/b\"`.",
    },
    Description {
        code: "B054",
        severity: "warning",
        meaning: "A step (`auth`, `request-headers`, ...) written after the route's action. \
                  Steps run before the action regardless of where they are written.",
        fix: "Move the step above the action, so the route reads in the order it runs.",
    },
    Description {
        code: "B055",
        severity: "warning",
        meaning: "`respond` with status 204, 205 or 304 and a `body`. Those responses have \
                  no content (RFC 9110), so the gateway sends the status without the body.",
        fix: "Remove the body, or answer with a status that has content, such as 200.",
    },
    Description {
        code: "B056",
        severity: "warning",
        meaning: "A `request-headers` or `response-headers` step sets or adds a field the \
                  gateway drops whatever its value: a hop-by-hop field (`connection`, \
                  `keep-alive`, `te`, `trailer`, `upgrade`, `proxy-*` but `proxy-status`), a \
                  framing field (`content-length`, `transfer-encoding`: the gateway frames each \
                  message it sends), or `expect` on a request (the gateway answers it itself).",
        fix: "Remove the edit. To close connections or limit bodies, use the gateway's own \
              settings (`limits`), not header edits.",
    },
    Description {
        code: "B057",
        severity: "warning",
        meaning: "A `path-regex` value that no request path can match, proven from the literal \
                  text every match starts with: it begins without `/`, or needs a `?` or `#` \
                  (matching sees the path without query and fragment), `//` (merged before \
                  matching) or a byte outside visible ASCII (such bytes arrive \
                  percent-encoded). The route never matches by that value.",
        fix: "Start the regex with `/` and match the whole normalised path; match the query \
              with `query`.",
    },
    Description {
        code: "B058",
        severity: "warning",
        meaning: "A `redirect` location that is empty, which sends the client back to the URL \
                  it asked for (a redirect loop), or that is not a URI reference (RFC 9110 \
                  §10.2.2, RFC 3986): whitespace, a byte outside visible ASCII, one of \
                  `\"<>\\^{|}` or a backtick, or a `%` that starts no escape, which clients \
                  repair each in their own way or refuse.",
        fix: "Give the target URL, absolute or a path, with such bytes percent-encoded \
              (`%20` for a space).",
    },
    // ---- listeners and TLS
    Description {
        code: "B060",
        severity: "error",
        meaning: "`h2` or `h3` on a listener without `tls`: HTTP/2 over TLS is negotiated by \
                  ALPN, and HTTP/3 runs over QUIC, which is always encrypted.",
        fix: "Add a `tls` block with a certificate, or use `h2c` for cleartext HTTP/2.",
    },
    Description {
        code: "B061",
        severity: "error",
        meaning: "`h2c` (cleartext HTTP/2 with prior knowledge) on a listener with `tls`.",
        fix: "Write `h2` on TLS listeners; serve `h2c` on a separate listener without `tls`.",
    },
    Description {
        code: "B062",
        severity: "error",
        meaning: "A certificate or key file that is missing, unreadable, not PEM, holds no \
                  certificate or no private key (often `cert` and `key` swapped), or holds a \
                  key type that cannot be used.",
        fix: "Point `cert` at a PEM certificate chain and `key` at its PEM private key; paths \
              are relative to the spec file's folder.",
    },
    Description {
        code: "B063",
        severity: "error",
        meaning: "A certificate whose public key is not the one of the private key it is \
                  paired with.",
        fix: "Pair each certificate with the key it was issued for.",
    },
    Description {
        code: "B064",
        severity: "error",
        meaning: "Two certificates for one server name, or two default certificates (without \
                  `sni`) in one `tls` block.",
        fix: "Keep one certificate per server name and one default.",
    },
    Description {
        code: "B065",
        severity: "error",
        meaning: "A `tls` block without any certificate.",
        fix: "Add `cert \"certs/NAME.crt\" key=\"certs/NAME.key\"`.",
    },
    Description {
        code: "B066",
        severity: "error",
        meaning: "A certificate chosen by `sni` that is not valid for that name (the name is \
                  not among its subject alternative names), so clients would reject it.",
        fix: "Use a certificate issued for the name, or change `sni`.",
    },
    Description {
        code: "B067",
        severity: "warning",
        meaning: "A listener certificate, or an intermediate certificate in its file, that is \
                  outside its validity period now: expired (after its notAfter) or not valid \
                  yet (before its notBefore). The gateway still serves it, but TLS clients \
                  reject it (for an intermediate: those that build their path through it). \
                  The period is read with the runtime's certificate loader and webpki, as \
                  clients check it.",
        fix: "Renew the certificate and point `cert` at the new file, or put the CA's \
              current intermediate in it (the gateway re-reads certificates on SIGHUP); for \
              a certificate not valid yet, check the clock.",
    },
    // ---- auth and limits
    Description {
        code: "B070",
        severity: "error",
        meaning: "`require-role` with no `auth` before it in the route's steps (chains \
                  included), so there is no verified token to take roles from.",
        fix: "Add `auth \"JWT\"` before `require-role`.",
    },
    Description {
        code: "B071",
        severity: "error",
        meaning: "A `jwt:CLAIM` key (of a rate limit, or of a consistent-hash upstream) used \
                  by a route with no `auth` before it.",
        fix: "Add `auth \"JWT\"` before the step, or key by something the request carries \
              (`client-ip`, `header:NAME`).",
    },
    Description {
        code: "B072",
        severity: "error",
        meaning: "A jwt whose `algorithms` mix HMAC (`HS*`) with public-key algorithms, which \
                  opens the door to algorithm-confusion attacks.",
        fix: "List only HMAC or only public-key algorithms; use a second `jwt` for the other \
              kind.",
    },
    Description {
        code: "B073",
        severity: "error",
        meaning: "A JWKS file that is missing, is not a JSON JWK Set, or has no key usable \
                  with one of the jwt's `algorithms`.",
        fix: "Point `jwks-file` at the issuer's JWK Set (relative to the spec's folder) and \
              list only algorithms it has keys for.",
    },
    Description {
        code: "B074",
        severity: "error",
        meaning: "`ebpf #true` on a rate limit whose key is not `client-ip`: the kernel (XDP) \
                  program sees only packet addresses.",
        fix: "Key the limit by `client-ip`, or remove `ebpf #true`.",
    },
    Description {
        code: "B075",
        severity: "warning",
        meaning: "A route runs `auth` twice (directly, or once through a chain it uses).",
        fix: "Keep one `auth`.",
    },
    // ---- upstreams
    Description {
        code: "B080",
        severity: "error",
        meaning: "A `consistent-hash` upstream without a `key` to hash.",
        fix: "Add a key, e.g. `key=\"header:x-user-id\"` (`client-ip`, `header:NAME`, \
              `jwt:CLAIM` or `path`).",
    },
    Description {
        code: "B081",
        severity: "error",
        meaning: "Every server of an upstream has `weight=0`, which leaves no server to send \
                  requests to.",
        fix: "Give at least one server a positive weight.",
    },
    Description {
        code: "B082",
        severity: "warning",
        meaning: "A `weight` on a server of an upstream whose balance ignores weights \
                  (`round-robin`, the default, `least-conn`, `p2c`).",
        fix: "Use `balance \"weighted-round-robin\"`, or remove the weight.",
    },
    Description {
        code: "B083",
        severity: "error",
        meaning: "The same server address twice in one upstream, however it is spelt (an \
                  IPv4 address and its IPv4-mapped IPv6 form, a name with and without its \
                  trailing dot, any letter case).",
        fix: "List each server once; to send it more requests, give it a higher weight.",
    },
    Description {
        code: "B084",
        severity: "warning",
        meaning: "A `key` on a balance other than `consistent-hash`, which ignores it.",
        fix: "Remove the key, or use `balance \"consistent-hash\"`.",
    },
    Description {
        code: "B085",
        severity: "warning",
        meaning: "An upstream server at an address one of the gateway's own listeners binds \
                  (the same address and port, a loopback address or `localhost` on the port \
                  of a loopback or wildcard listener): a request proxied there comes back to \
                  the gateway, matches the same route and goes round again until connections \
                  run out.",
        fix: "Point the server at the origin's address. To route a second pass on purpose, \
              match it by a header the first pass adds.",
    },
    // ---- plugins
    Description {
        code: "B090",
        severity: "error",
        meaning: "A plugin's `wasm` file that is missing, is not a WebAssembly binary, is a \
                  component rather than a core module, or does not validate.",
        fix: "Point `wasm` at the compiled core module (e.g. from `cargo build --target \
              wasm32-wasip1`); paths are relative to the spec file's folder.",
    },
    // ---- build
    Description {
        code: "B100",
        severity: "error",
        meaning: "A construct the runtime does not serve yet. Reported by `blitzc build`, not \
                  by `blitzc check`: the spec is valid.",
        fix: "Leave the construct out of specs you build, or build a `blitzc` that supports \
              it.",
    },
];

const DOC_PATH: &str = "docs/diagnostics.md";

fn description(code: Code) -> &'static Description {
    DESCRIPTIONS
        .iter()
        .find(|d| d.code == code.as_str())
        .unwrap_or_else(|| {
            panic!(
                "{code} ({}) has no description: add one to DESCRIPTIONS in {}",
                code.slug(),
                file!()
            )
        })
}

/// GitHub's heading anchor for `## B020 duplicate-name`.
fn anchor(code: Code) -> String {
    format!("{}-{}", code.as_str().to_ascii_lowercase(), code.slug())
}

/// The corpus file that documents `code`: preferably one that triggers it
/// alone (no other diagnostic to read past), then one numbered after the
/// code, then the first in file-name order.
fn example(cases: &[Case], code: Code) -> Option<&Case> {
    cases
        .iter()
        .filter(|c| c.expected_or_none().iter().any(|e| e.code == code.as_str()))
        .min_by_key(|c| {
            let alone = c.expected_or_none().iter().all(|e| e.code == code.as_str());
            let numbered = code.as_str()[1..] == *c.number();
            (!alone, !numbered, c.name.as_str())
        })
}

/// `blitzc check` on the example as a reader sees it: without the corpus's
/// `expect` line, under its bare file name.
fn example_output(case: &Case) -> String {
    let text = case.text_without_expectations().to_string();
    // Checked from the corpus folder, so its relative file paths resolve.
    let checked = blitzc::check(SourceFile::new(&case.path, text.clone()));
    let shown = SourceFile::new(&case.name, text);
    let report = [Report {
        file: &shown,
        diagnostics: &checked.diagnostics,
    }];
    render::render(&report, Format::Human, false)
}

fn generate() -> String {
    let cases = corpus();
    let mut doc = String::new();
    doc.push_str(
        "<!-- Generated by blitzc/tests/diagnostics_doc.rs from the codes in \
         blitzc/src/diag/codes.rs and the invalid-spec corpus in tests/specs/invalid/. \
         Do not edit: change those, then run \
         `BLESS=1 cargo test -p blitzc --test diagnostics_doc`. -->\n\n",
    );
    doc.push_str("# Diagnostics\n\n");
    doc.push_str(
        "`blitzc check` reports every problem in a spec in one run, in file order. Each \
         diagnostic has a stable code (`B` and three digits, never reused for another \
         meaning), a slug, a severity, the position it points at, a label and a help line. \
         Errors make `blitzc check` exit with 1; warnings do not, unless `--deny-warnings` is \
         given. `--format json`, `--format sarif` and `--format github` carry the same \
         fields as the human output shown below. A position is a 1-based line and column: \
         lines are counted at the newlines of the spec's syntax (in KDL: CRLF, CR, LF, NEL, \
         VT, FF, LS and PS; in TOML: LF and CRLF), columns in characters, the same in every \
         format.\n\n",
    );
    doc.push_str(
        "Each example below is a file of the invalid-spec corpus (`tests/specs/invalid/`), \
         which the tests check diagnostic by diagnostic; the output is what `blitzc check` \
         prints for it.\n\n",
    );
    doc.push_str("| code | slug | severity | meaning |\n| --- | --- | --- | --- |\n");
    for &code in Code::ALL {
        let d = description(code);
        let _ = writeln!(
            doc,
            "| [{}](#{}) | `{}` | {} | {} |",
            code.as_str(),
            anchor(code),
            code.slug(),
            d.severity,
            d.meaning.replace('|', "\\|"),
        );
    }
    for &code in Code::ALL {
        let d = description(code);
        let _ = write!(
            doc,
            "\n## {} {}\n\n**Severity:** {}.\n\n{}\n\n**How to fix:** {}\n",
            code.as_str(),
            code.slug(),
            d.severity,
            d.meaning,
            d.fix,
        );
        if code == Code::UnknownFormat {
            // No corpus file can show this one: the corpus holds .kdl and .toml files.
            let file = SourceFile::new("gateway.yaml", "version: 1\n");
            let checked = blitzc::check(file.clone());
            let report = [Report {
                file: &file,
                diagnostics: &checked.diagnostics,
            }];
            let output = render::render(&report, Format::Human, false);
            let _ = write!(
                doc,
                "\nExample: `blitzc check gateway.yaml`\n\n```text\n{}```\n",
                output
            );
            continue;
        }
        let Some(case) = example(&cases, code) else {
            continue;
        };
        let output = example_output(case);
        let _ = write!(
            doc,
            "\nExample (`{}`):\n\n```{}\n{}```\n\n```text\n{}```\n",
            case.display_path(),
            case.syntax(),
            case.text_without_expectations(),
            output,
        );
    }
    doc
}

#[test]
fn every_code_has_a_description() {
    for &code in Code::ALL {
        let d = description(code);
        assert!(
            ["error", "warning", "error or warning"].contains(&d.severity),
            "{code}: severity `{}`",
            d.severity
        );
        assert!(!d.meaning.is_empty() && !d.fix.is_empty(), "{code}");
    }
    for d in DESCRIPTIONS {
        assert!(
            Code::ALL.iter().any(|c| c.as_str() == d.code),
            "{} is described but is not a code",
            d.code
        );
    }
}

#[test]
fn described_severities_match_the_corpus() {
    let mut wrong = Vec::new();
    for case in corpus() {
        let checked = case.check();
        for diagnostic in &checked.diagnostics {
            let severity = match diagnostic.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            if !description(diagnostic.code).severity.contains(severity) {
                wrong.push(format!(
                    "{}: {} is a {severity}, but DESCRIPTIONS says {}",
                    case.name,
                    diagnostic.code,
                    description(diagnostic.code).severity
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn diagnostics_doc_is_up_to_date() {
    let generated = generate();
    let path = workspace_root().join(DOC_PATH);
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let first_difference = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(generated.lines().count()));
        let line = |text: &str| {
            text.lines()
                .nth(first_difference)
                .unwrap_or("(end of file)")
                .to_string()
        };
        panic!(
            "{DOC_PATH} is out of date (first difference at line {}):\n  in the file: {}\n  generated:   {}\n\
             Regenerate it with `BLESS=1 cargo test -p blitzc --test diagnostics_doc` and review the diff.",
            first_difference + 1,
            line(&current),
            line(&generated),
        );
    }
}
