//! One test per validation rule: a small KDL spec, and the code, severity
//! and the text its span points at. Specs live in `tests/fixtures/` (so
//! relative file paths resolve to the fixture certificates, keys and
//! modules; see `tests/fixtures/make-fixtures.sh`).
#![allow(clippy::unwrap_used)]

use blitzc::diag::{Code, Diagnostic, Severity, SourceFile};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A listener that makes no diagnostic, for specs that need one.
const LISTENER: &str = r#"
listener "public" {
    bind "127.0.0.1:8080"
}
"#;

struct Checked {
    text: String,
    diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// The text a span points at.
    fn at(&self, span: blitz_ir::Span) -> &str {
        &self.text[span.start..span.end]
    }

    fn with_code(&self, code: Code) -> Vec<&Diagnostic> {
        self.diagnostics.iter().filter(|d| d.code == code).collect()
    }

    /// The one diagnostic with `code`; checks its severity and that its span
    /// points at `text`.
    #[track_caller]
    fn one(&self, code: Code, severity: Severity, text: &str) -> &Diagnostic {
        let found = self.with_code(code);
        assert_eq!(
            found.len(),
            1,
            "expected one {code}, got {:#?}",
            self.diagnostics
        );
        let d = found[0];
        assert_eq!(d.severity, severity, "{d:#?}");
        assert_eq!(self.at(d.span), text, "{d:#?}");
        assert!(!d.help.is_empty(), "{code} has no help: {d:#?}");
        assert!(!d.label.is_empty(), "{code} has no label: {d:#?}");
        d
    }

    /// Every diagnostic with `code`, as the texts they point at.
    fn all(&self, code: Code) -> Vec<&str> {
        self.with_code(code)
            .iter()
            .map(|d| self.at(d.span))
            .collect()
    }

    #[track_caller]
    fn none(&self, code: Code) {
        assert!(
            self.with_code(code).is_empty(),
            "unexpected {code}: {:#?}",
            self.diagnostics
        );
    }

    #[track_caller]
    fn clean(&self) {
        assert!(
            self.diagnostics.is_empty(),
            "expected no diagnostics: {:#?}",
            self.diagnostics
        );
    }

    #[track_caller]
    fn related_at(&self, d: &Diagnostic, text: &str) {
        assert!(
            d.related.iter().any(|r| self.at(r.span) == text),
            "no related span at {text:?}: {d:#?}"
        );
    }
}

fn check(spec: &str) -> Checked {
    let text = format!("version 1\n{spec}");
    let checked = blitzc::check(SourceFile::new(fixtures().join("test.kdl"), text.clone()));
    assert!(
        checked.spec.is_some(),
        "did not parse: {:#?}",
        checked.diagnostics
    );
    Checked {
        text,
        diagnostics: checked.diagnostics,
    }
}

/// A TOML spec (`version = 1` is added), checked from the fixtures folder.
fn check_toml(spec: &str) -> Checked {
    let text = format!("version = 1\n{spec}");
    let checked = blitzc::check(SourceFile::new(fixtures().join("test.toml"), text.clone()));
    assert!(
        checked.spec.is_some(),
        "did not parse: {:#?}",
        checked.diagnostics
    );
    Checked {
        text,
        diagnostics: checked.diagnostics,
    }
}

/// `spec` with a listener added.
fn check_with_listener(spec: &str) -> Checked {
    check(&format!("{LISTENER}{spec}"))
}

// ---------------------------------------------------------------- names

#[test]
fn b020_duplicate_name() {
    let c = check_with_listener(
        r#"
route "a" { respond 200 }
route "a" { respond 404 }
"#,
    );
    let d = c.one(Code::DuplicateName, Severity::Error, r#""a""#);
    assert!(d.span.start > c.text.find(r#"route "a""#).unwrap() + 5);
    assert_eq!(d.related.len(), 1);
}

#[test]
fn b022_duplicate_bind() {
    let c = check(
        r#"
listener "a" { bind "0.0.0.0:8080"; }
listener "b" { bind "127.0.0.1:8080"; }
listener "c" { bind "127.0.0.1:8081"; }
listener "d" { bind "[::1]:8081"; }
listener "e" { bind "[::]:9000"; }
listener "f" { bind "10.0.0.1:9000"; }
listener "g" { bind "10.0.0.1:9001"; }
listener "h" { bind "10.0.0.1:9001"; }
route "r" { respond 200; }
"#,
    );
    assert_eq!(
        c.all(Code::DuplicateBind),
        [
            r#""127.0.0.1:8080""#,
            r#""10.0.0.1:9000""#,
            r#""10.0.0.1:9001""#
        ]
    );
    let d = c.with_code(Code::DuplicateBind)[0];
    assert!(d.is_error());
    c.related_at(d, r#""0.0.0.0:8080""#);
}

#[test]
fn b023_chain_cycle() {
    let c = check_with_listener(
        r#"
chain "a" { use "b"; }
chain "b" { use "c"; }
chain "c" { use "a"; }
chain "self" { use "self"; }
chain "ok" { use "a"; }
route "r" { use "ok"; use "self"; respond 200; }
"#,
    );
    let found = c.with_code(Code::ChainCycle);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(c.at(found[0].span), r#""b""#);
    assert!(
        found[0].message.contains("`a` → `b` → `c` → `a`"),
        "{}",
        found[0].message
    );
    assert_eq!(found[0].related.len(), 2);
    assert_eq!(c.at(found[1].span), r#""self""#);
}

#[test]
fn b024_unused_items() {
    let c = check_with_listener(
        r#"
upstream "used" { server "127.0.0.1:9000"; }
upstream "idle" { server "127.0.0.1:9001"; }
jwt "sso" {
    algorithms "ES256"
    jwks-file "jwks.json"
}
jwt "spare" {
    algorithms "ES256"
    jwks-file "jwks.json"
}
rate-limit "rl" { key "client-ip"; rate "10/s"; }
plugin "geo" { wasm "geo_tag.wasm"; }
chain "c" { auth "sso"; rate-limit "rl"; }
chain "lonely" { plugin "geo"; }
route "r" { use "c"; proxy "used"; }
"#,
    );
    // Upstreams are exempt (SPEC.md's example declares one without a route).
    assert_eq!(c.all(Code::Unused), [r#""spare""#, r#""lonely""#]);
    assert!(c.with_code(Code::Unused).iter().all(|d| !d.is_error()));
}

#[test]
fn b015_no_listener() {
    let c = check(r#"route "r" { respond 200; }"#);
    let d = c.with_code(Code::NoListener);
    assert_eq!(d.len(), 1);
    assert!(d[0].is_error());
    assert_eq!(d[0].span, blitz_ir::Span::new(0, 0));
}

// ---------------------------------------------------------------- routes

#[test]
fn b051_empty_match() {
    let c = check_with_listener(
        r#"
route "r" {
    match {}
    respond 200
}
"#,
    );
    c.one(Code::EmptyMatch, Severity::Warning, "match {}");
}

#[test]
fn b052_conflicting_header_edits() {
    let c = check_with_listener(
        r#"
route "r" {
    request-headers {
        remove "x-a"
        set "x-a" "1"
        set "x-b" "1"
        set "x-b" "2"
        remove "x-c"
        add "x-c" "ok"
    }
    respond 200
}
"#,
    );
    let found = c.with_code(Code::ConflictingHeaderEdit);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found.iter().all(|d| !d.is_error()));
    let spans: Vec<&str> = found.iter().map(|d| c.at(d.span)).collect();
    assert_eq!(spans, [r#""x-a""#, r#""x-b""#]);
    assert!(c.text[found[1].span.start - 4..].starts_with("set"));
    assert!(found[0].message.contains("set and removed"));
    assert!(found[1].message.contains("set twice"));
}

#[test]
fn b053_duplicate_matcher() {
    let c = check_with_listener(
        r#"
route "r" {
    match {
        host "a.example.com"
        header "x-a" "1"
        host "b.example.com"
        header "x-b"
        header "x-a" "2"
    }
    respond 200
}
"#,
    );
    assert_eq!(
        c.all(Code::DuplicateMatcher),
        [r#"host "b.example.com""#, r#"header "x-a" "2""#]
    );
    assert!(c.with_code(Code::DuplicateMatcher)[0].is_error());
}

#[test]
fn b038_strip_prefix() {
    let c = check_with_listener(
        r#"
upstream "u" { server "127.0.0.1:9000"; }
route "bad" {
    match { path-prefix "/v1/users"; }
    proxy "u" strip-prefix="v1"
}
route "unnormalised" {
    match { path-prefix "/v1/users"; }
    proxy "u" strip-prefix="/v1/../v2"
}
route "misfit" {
    match { path-prefix "/v1/users" "/v2/users"; }
    proxy "u" strip-prefix="/v1"
}
route "fits" {
    match { path-prefix "/v1/users"; }
    proxy "u" strip-prefix="/v1"
}
"#,
    );
    let found = c.with_code(Code::InvalidPath);
    let summary: Vec<(Severity, &str)> = found.iter().map(|d| (d.severity, c.at(d.span))).collect();
    assert_eq!(
        summary,
        [
            (Severity::Error, r#"strip-prefix="v1""#),
            (Severity::Error, r#"strip-prefix="/v1/../v2""#),
            (Severity::Warning, r#"strip-prefix="/v1""#),
        ]
    );
    c.related_at(found[2], r#""/v2/users""#);
}

#[test]
fn b075_duplicate_auth() {
    let c = check_with_listener(
        r#"
jwt "sso" {
    algorithms "ES256"
    jwks-file "jwks.json"
}
chain "c" { auth "sso"; }
route "r" {
    use "c"
    auth "sso"
    respond 200
}
"#,
    );
    let d = c.one(Code::DuplicateAuth, Severity::Warning, r#""sso""#);
    assert!(c.text[..d.span.start].ends_with("    auth "));
    c.related_at(d, r#""sso""#);
}

// ---------------------------------------------------------------- auth

const JWT: &str = r#"
jwt "sso" {
    algorithms "RS256" "ES256"
    jwks-file "jwks.json"
}
"#;

#[test]
fn b070_role_without_auth() {
    let c = check_with_listener(&format!(
        r#"{JWT}
chain "roles" {{ require-role "admin"; }}
chain "login" {{ auth "sso"; }}
route "direct" {{
    require-role "admin"
    auth "sso"
    respond 200
}}
route "through-chain" {{
    use "roles"
    respond 200
}}
route "fine" {{
    use "login"
    use "roles"
    respond 200
}}
"#
    ));
    let found = c.with_code(Code::RoleWithoutAuth);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found.iter().all(|d| d.is_error()));
    // In file order: the chain's `require-role` (reached from route
    // "through-chain"), then the one written in route "direct".
    assert!(found[0].message.contains("through-chain"));
    assert!(c.text[..found[0].span.start].ends_with(r#"chain "roles" { "#));
    c.related_at(found[0], r#"use "roles""#);
    assert!(found[1].message.contains("direct"));
    assert!(c.at(found[1].span).starts_with(r#"require-role "admin""#));
    assert!(c.text[..found[1].span.start].ends_with("    "));
}

#[test]
fn b071_claim_without_auth() {
    let c = check_with_listener(&format!(
        r#"{JWT}
rate-limit "per-user" {{ key "jwt:sub"; rate "10/s"; }}
upstream "sticky" {{
    balance "consistent-hash" key="jwt:sub"
    server "127.0.0.1:9000"
}}
route "limited" {{
    rate-limit "per-user"
    auth "sso"
    respond 200
}}
route "hashed" {{
    proxy "sticky"
}}
route "fine" {{
    auth "sso"
    rate-limit "per-user"
    proxy "sticky"
}}
"#
    ));
    let found = c.with_code(Code::ClaimWithoutAuth);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(c.at(found[0].span).starts_with(r#"rate-limit "per-user""#));
    c.related_at(found[0], r#""jwt:sub""#);
    assert_eq!(c.at(found[1].span), r#""sticky""#);
    assert!(c.text[..found[1].span.start].ends_with("proxy "));
    c.related_at(found[1], r#"key="jwt:sub""#);
}

#[test]
fn b072_algorithm_mix() {
    let c = check_with_listener(
        r#"
jwt "mixed" {
    algorithms "RS256" "HS256"
    jwks-file "jwks.json"
}
"#,
    );
    let d = c.one(Code::JwtAlgorithmMix, Severity::Error, r#""HS256""#);
    c.related_at(d, r#""RS256""#);
}

#[test]
fn b073_jwks_file() {
    let c = check_with_listener(
        r#"
jwt "missing" {
    algorithms "RS256"
    jwks-file "nope.json"
}
jwt "not-json" {
    algorithms "RS256"
    jwks-file "edge.crt"
}
jwt "no-key" {
    algorithms "ES384" "RS256" "EdDSA"
    jwks-file "jwks.json"
}
jwt "hmac" {
    algorithms "HS256"
    jwks-file "hmac-jwks.json"
}
jwt "hmac-needs-oct" {
    algorithms "RS256"
    jwks-file "hmac-jwks.json"
}
"#,
    );
    let found = c.with_code(Code::JwksFile);
    assert_eq!(
        c.all(Code::JwksFile),
        [
            r#""nope.json""#,
            r#""edge.crt""#,
            r#""jwks.json""#,
            r#""hmac-jwks.json""#
        ]
    );
    assert!(found[0].message.contains("not found"));
    assert!(found[1].message.contains("not JSON"));
    assert!(
        found[2].message.contains("ES384, EdDSA"),
        "{}",
        found[2].message
    );
    c.related_at(found[2], r#""ES384""#);
    assert!(found[3].message.contains("RS256"));
}

#[test]
fn b073_not_a_key_set() {
    let dir = std::env::temp_dir().join(format!("blitz-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("list.json"), "[1, 2]").unwrap();
    let text = r#"version 1
listener "l" { bind "127.0.0.1:1"; }
jwt "j" {
    algorithms "RS256"
    jwks-file "list.json"
}
route "r" { auth "j"; respond 200; }
"#;
    let checked = blitzc::check(SourceFile::new(dir.join("t.kdl"), text));
    let found: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::JwksFile)
        .collect();
    assert_eq!(found.len(), 1, "{:#?}", checked.diagnostics);
    assert!(found[0].message.contains("not a JWK Set"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn b074_ebpf_key() {
    let c = check_with_listener(
        r#"
rate-limit "by-header" {
    key "header:x-api-key"
    rate "10/s"
    ebpf #true
}
rate-limit "by-ip" {
    key "client-ip"
    rate "10/s"
    ebpf #true
}
"#,
    );
    let d = c.one(Code::EbpfKey, Severity::Error, "#true");
    c.related_at(d, r#""header:x-api-key""#);
}

#[test]
fn b041_burst_zero() {
    let c = check_with_listener(
        r#"
rate-limit "none" {
    key "client-ip"
    rate "10/s" burst=0
}
"#,
    );
    c.one(Code::OutOfRange, Severity::Error, "burst=0");
}

// ---------------------------------------------------------------- tls

#[test]
fn b060_b061_protocols_and_tls() {
    let c = check(
        r#"
listener "plain" {
    bind "127.0.0.1:8080"
    protocols "h1" "h2" "h3"
}
listener "secure" {
    bind "127.0.0.1:8443"
    protocols "h1" "h2c"
    tls { cert "edge.crt" key="edge.key"; }
}
"#,
    );
    assert_eq!(c.all(Code::ProtocolNeedsTls), [r#""h2""#, r#""h3""#]);
    assert!(
        c.with_code(Code::ProtocolNeedsTls)
            .iter()
            .all(|d| d.is_error())
    );
    c.one(Code::H2cWithTls, Severity::Error, r#""h2c""#);
}

#[test]
fn b065_tls_without_cert() {
    let c = check(
        r#"
listener "l" {
    bind "127.0.0.1:8443"
    tls {}
}
"#,
    );
    c.one(Code::TlsWithoutCert, Severity::Error, "tls {}");
}

#[test]
fn b062_tls_files() {
    let c = check(
        r#"
listener "l" {
    bind "127.0.0.1:8443"
    tls {
        cert "missing.crt" key="edge.key"
        cert "garbage.pem" key="missing.key" sni="a.example.com"
        cert "edge.key" key="edge.crt" sni="b.example.com"
    }
}
"#,
    );
    assert_eq!(
        c.all(Code::TlsFile),
        [
            r#""missing.crt""#,
            r#""garbage.pem""#,
            r#"key="missing.key""#,
            r#""edge.key""#,
            r#"key="edge.crt""#,
        ]
    );
    let found = c.with_code(Code::TlsFile);
    assert!(found[0].message.contains("not found"));
    assert!(found[3].help.contains("swapped"));
}

#[test]
fn b063_cert_key_mismatch() {
    let c = check(
        r#"
listener "l" {
    bind "127.0.0.1:8443"
    tls {
        cert "mismatched.crt" key="mismatched.key"
        cert "api.crt" key="api.key" sni="api.example.com"
    }
}
"#,
    );
    let d = c.one(
        Code::CertKeyMismatch,
        Severity::Error,
        r#""mismatched.crt""#,
    );
    c.related_at(d, r#"key="mismatched.key""#);
    c.none(Code::TlsFile);
}

#[test]
fn b066_cert_name_mismatch() {
    let c = check(
        r#"
listener "l" {
    bind "127.0.0.1:8443"
    tls {
        cert "edge.crt" key="edge.key" sni="api.example.com"
    }
}
"#,
    );
    let d = c.one(Code::CertNameMismatch, Severity::Error, r#""edge.crt""#);
    c.related_at(d, r#"sni="api.example.com""#);
}

#[test]
fn b064_b039_sni() {
    let c = check(
        r#"
listener "l" {
    bind "127.0.0.1:8443"
    tls {
        cert "edge.crt" key="edge.key"
        cert "edge.crt" key="edge.key"
        cert "api.crt" key="api.key" sni="api.example.com"
        cert "api.crt" key="api.key" sni="API.example.com"
        cert "api.crt" key="api.key" sni="*.example.com"
    }
}
"#,
    );
    let found = c.with_code(Code::DuplicateSni);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(c.at(found[0].span), r#""edge.crt""#);
    assert_eq!(c.at(found[1].span), r#"sni="API.example.com""#);
    c.one(Code::InvalidHost, Severity::Error, r#"sni="*.example.com""#);
}

#[test]
fn tls_files_load_for_the_runtime() {
    use blitz_runtime::tls::files::{TlsFileError, load_certified_key};
    let dir = fixtures();
    let key = load_certified_key(&dir.join("api.crt"), &dir.join("api.key")).unwrap();
    assert_eq!(key.cert.len(), 1);
    let err = load_certified_key(&dir.join("edge.crt"), &dir.join("api.key")).unwrap_err();
    assert!(matches!(err, TlsFileError::KeyMismatch { .. }), "{err}");
    let err = load_certified_key(&dir.join("garbage.pem"), &dir.join("api.key")).unwrap_err();
    assert!(matches!(err, TlsFileError::BadPem { .. }), "{err}");
}

// ---------------------------------------------------------------- upstreams

#[test]
fn b080_b084_balance_key() {
    let c = check_with_listener(
        r#"
upstream "hash" {
    balance "consistent-hash"
    server "127.0.0.1:9000"
}
upstream "rr" {
    balance "round-robin" key="client-ip"
    server "127.0.0.1:9000"
}
"#,
    );
    c.one(
        Code::HashWithoutKey,
        Severity::Error,
        r#""consistent-hash""#,
    );
    c.one(Code::KeyIgnored, Severity::Warning, r#"key="client-ip""#);
}

#[test]
fn b081_b082_weights() {
    let c = check_with_listener(
        r#"
upstream "zero" {
    balance "weighted-round-robin"
    server "127.0.0.1:9000" weight=0
    server "127.0.0.1:9001" weight=0
}
upstream "ignored" {
    balance "least-conn"
    server "127.0.0.1:9000" weight=3
    server "127.0.0.1:9001"
}
upstream "default" {
    server "127.0.0.1:9000" weight=2
}
"#,
    );
    let d = c.one(Code::AllWeightsZero, Severity::Error, "weight=0");
    assert_eq!(d.related.len(), 1);
    assert_eq!(c.all(Code::WeightIgnored), ["weight=3", "weight=2"]);
    assert!(
        c.with_code(Code::WeightIgnored)
            .iter()
            .all(|d| !d.is_error())
    );
}

#[test]
fn b083_duplicate_server() {
    let c = check_with_listener(
        r#"
upstream "u" {
    server "127.0.0.1:9000"
    server "users.internal:80"
    server "127.0.0.1:9000"
    server "USERS.internal:80"
}
"#,
    );
    assert_eq!(
        c.all(Code::DuplicateServer),
        [r#""127.0.0.1:9000""#, r#""USERS.internal:80""#]
    );
}

#[test]
fn b038_b041_health_check_and_retries() {
    let c = check_with_listener(
        r#"
upstream "u" {
    server "127.0.0.1:9000"
    health-check path="healthz"
    retry attempts=11
}
"#,
    );
    c.one(Code::InvalidPath, Severity::Error, r#"path="healthz""#);
    c.one(Code::OutOfRange, Severity::Warning, "attempts=11");
}

// ---------------------------------------------------------------- plugins

#[test]
fn b090_plugin_file() {
    let c = check_with_listener(
        r#"
plugin "ok" { wasm "geo_tag.wasm"; }
plugin "missing" { wasm "nope.wasm"; }
plugin "text" { wasm "not-wasm.wasm"; }
plugin "pem" { wasm "edge.crt"; }
"#,
    );
    assert_eq!(
        c.all(Code::PluginFile),
        [r#""nope.wasm""#, r#""not-wasm.wasm""#, r#""edge.crt""#]
    );
    assert!(c.with_code(Code::PluginFile).iter().all(|d| d.is_error()));
}

// ---------------------------------------------------------------- examples

#[test]
fn spec_example_checks_clean() {
    for name in ["edge.kdl", "edge.toml"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        let checked = blitzc::check_path(&path).unwrap();
        assert!(
            checked.diagnostics.is_empty(),
            "{name}: {:#?}",
            checked.diagnostics
        );
    }
}

#[test]
fn clean_spec_is_clean() {
    let c = check_with_listener(&format!(
        r#"{JWT}
upstream "u" {{ server "127.0.0.1:9000"; }}
route "r" {{
    match {{ path-prefix "/v1/users"; }}
    auth "sso"
    require-role "admin"
    proxy "u" strip-prefix="/v1"
}}
"#
    ));
    c.clean();
}

// ---------------------------------------------------------------- TOML form

#[test]
fn toml_spans_point_at_values() {
    let c = check_toml(
        r#"
[[listener]]
name = "plain"
bind = "127.0.0.1:8080"
protocols = ["h1", "h2"]

[[listener]]
name = "secure"
bind = "127.0.0.1:8443"
protocols = ["h2c"]
tls = { certs = [{ cert = "mismatched.crt", key = "mismatched.key" }] }

[[upstream]]
name = "u"
balance = "least-conn"
servers = [{ address = "127.0.0.1:9000", weight = 5 }]

[[jwt]]
name = "sso"
algorithms = ["ES256", "HS512"]
jwks-file = "jwks.json"

[[plugin]]
name = "p"
wasm = "not-wasm.wasm"

[[route]]
name = "r"
steps = [{ require-role = ["admin"] }, { plugin = "p" }, { auth = "sso" }]
proxy = "u"
"#,
    );
    c.one(Code::ProtocolNeedsTls, Severity::Error, r#""h2""#);
    c.one(Code::H2cWithTls, Severity::Error, r#""h2c""#);
    c.one(
        Code::CertKeyMismatch,
        Severity::Error,
        r#""mismatched.crt""#,
    );
    c.one(Code::WeightIgnored, Severity::Warning, "5");
    c.one(Code::JwtAlgorithmMix, Severity::Error, r#""HS512""#);
    c.one(Code::PluginFile, Severity::Error, r#""not-wasm.wasm""#);
    let d = c.one(
        Code::RoleWithoutAuth,
        Severity::Error,
        r#"{ require-role = ["admin"] }"#,
    );
    assert!(d.message.contains("route `r`"));
}
