//! The TOML front end: SPEC.md's TOML example, the edge example (which must
//! lower to the same model as its KDL twin), every construct in TOML form,
//! and the diagnostics for malformed specs with their exact positions.

use blitz_ir::units::{Period, Rate};
use blitz_ir::*;
use blitzc::diag::{Code, Diagnostic, SourceFile};
use blitzc::syntax;
use std::path::Path;
use std::time::Duration;

fn lower(text: &str) -> (Option<Spec>, Vec<Diagnostic>, SourceFile) {
    let file = SourceFile::new("specs/edge.toml", text);
    let (spec, diagnostics) = syntax::toml::lower(&file);
    (spec, diagnostics, file)
}

/// Lowers `text` and expects no diagnostic.
fn lower_clean(text: &str) -> Spec {
    let (spec, diagnostics, _) = lower(text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    spec.expect("the spec parses")
}

/// Each diagnostic as (code, line, column), in file order.
fn positions(text: &str) -> Vec<(&'static str, usize, usize)> {
    let (_, diagnostics, file) = lower(text);
    for d in &diagnostics {
        assert!(!d.label.is_empty(), "no label: {d:#?}");
        assert!(!d.help.is_empty(), "no help: {d:#?}");
    }
    let mut found: Vec<_> = diagnostics
        .iter()
        .map(|d| {
            let (line, column) = file.line_col(d.span.start);
            (d.code.as_str(), line, column)
        })
        .collect();
    found.sort_by_key(|&(_, line, column)| (line, column));
    found
}

/// The one diagnostic that `text` produces.
fn only(text: &str) -> Diagnostic {
    let (_, mut diagnostics, _) = lower(text);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    diagnostics.remove(0)
}

fn text_at(text: &str, span: Span) -> &str {
    &text[span.start..span.end]
}

fn strings(values: &[Spanned<String>]) -> Vec<&str> {
    values.iter().map(|v| v.value.as_str()).collect()
}

const SPEC_EXAMPLE: &str = r#"version = 1

[gateway]
name = "edge-eu1"
workers = "auto"

[[listener]]
name = "public"
bind = "0.0.0.0:8080"
protocols = ["h1", "h2c"]

[[upstream]]
name = "users"
balance = "weighted-round-robin"
servers = [
  { address = "127.0.0.1:9001", weight = 3 },
  { address = "127.0.0.1:9002", weight = 1 },
]
health-check = { path = "/healthz", interval = "2s" }

[[route]]
name = "users-read"
match = { host = ["api.example.com"], path-prefix = "/v1/users", method = ["GET", "HEAD"] }
steps = [
  { auth = "corp-sso" },
  { require-role = ["users:read", "admin"] },
  { request-headers = { set = { x-forwarded-proto = "https" }, remove = ["cookie"] } },
]
proxy = { upstream = "users", strip-prefix = "/v1" }

[[route]]
name = "fallback"
proxy = "users"          # shorthand for { upstream = "users" }
"#;

#[test]
fn spec_md_example_lowers() {
    let text = SPEC_EXAMPLE;
    let spec = lower_clean(text);
    assert_eq!(spec.version, 1);
    assert_eq!(spec.gateway.name.value, "edge-eu1");
    assert_eq!(text_at(text, spec.gateway.name.span), "\"edge-eu1\"");
    assert_eq!(spec.gateway.workers.value, Workers::Auto);
    assert_eq!(text_at(text, spec.gateway.span), "[gateway]");

    let [listener] = spec.listeners.as_slice() else {
        panic!("one listener")
    };
    assert_eq!(listener.name.value, "public");
    assert_eq!(listener.bind.value.to_string(), "0.0.0.0:8080");
    let protocols: Vec<_> = listener.protocols.iter().map(|p| p.value).collect();
    assert_eq!(protocols, [Protocol::H1, Protocol::H2c]);
    assert!(listener.tls.is_none());
    assert_eq!(text_at(text, listener.span), "[[listener]]");

    let [users] = spec.upstreams.as_slice() else {
        panic!("one upstream")
    };
    assert_eq!(
        users.balance.algorithm.value,
        BalanceAlgorithm::WeightedRoundRobin
    );
    let weights: Vec<_> = users.servers.iter().map(|s| s.weight.value).collect();
    assert_eq!(weights, [3, 1]);
    assert_eq!(
        text_at(text, users.servers[0].span),
        r#"{ address = "127.0.0.1:9001", weight = 3 }"#
    );
    let hc = users.health_check.as_ref().expect("health-check");
    assert_eq!(hc.path.value, "/healthz");
    assert_eq!(hc.interval.value, Duration::from_secs(2));
    assert_eq!(hc.timeout.value, HealthCheck::DEFAULT_TIMEOUT);
    assert!(hc.timeout.span.is_empty(), "a default has an empty span");
    assert_eq!(users.pool, Pool::default());
    assert!(users.retry.is_none());

    let [read, fallback] = spec.routes.as_slice() else {
        panic!("two routes")
    };
    let conditions = &read.matcher.as_ref().expect("match").conditions;
    assert_eq!(conditions.len(), 3);
    assert!(matches!(&conditions[0].test, Test::Host(h)
        if h[0].value == HostPattern::Exact("api.example.com".into())));
    assert_eq!(
        text_at(text, conditions[0].span),
        r#"host = ["api.example.com"]"#
    );
    assert!(matches!(&conditions[1].test, Test::PathPrefix(p) if p[0].value == "/v1/users"));
    assert!(matches!(&conditions[2].test, Test::Method(m) if strings(m) == ["GET", "HEAD"]));

    assert_eq!(read.steps.len(), 3);
    assert!(matches!(&read.steps[0].kind, StepKind::Auth(r)
        if r.kind == ItemKind::Jwt && r.name.value == "corp-sso"));
    assert_eq!(
        text_at(text, read.steps[0].span),
        r#"{ auth = "corp-sso" }"#
    );
    assert!(matches!(&read.steps[1].kind, StepKind::RequireRole(r)
        if strings(r) == ["users:read", "admin"]));
    let StepKind::RequestHeaders(rewrite) = &read.steps[2].kind else {
        panic!("request-headers")
    };
    assert_eq!(rewrite.set[0].0.value, "x-forwarded-proto");
    assert_eq!(rewrite.set[0].1.value, "https");
    assert_eq!(strings(&rewrite.remove), ["cookie"]);
    let ActionKind::Proxy {
        upstream,
        strip_prefix,
    } = &read.action.kind
    else {
        panic!("proxy")
    };
    assert_eq!(upstream.name.value, "users");
    assert_eq!(strip_prefix.as_ref().map(|s| s.value.as_str()), Some("/v1"));
    assert_eq!(
        text_at(text, read.action.span),
        r#"proxy = { upstream = "users", strip-prefix = "/v1" }"#
    );

    assert!(fallback.matcher.is_none());
    assert!(fallback.steps.is_empty());
    assert!(
        matches!(&fallback.action.kind, ActionKind::Proxy { upstream, strip_prefix: None }
        if upstream.name.value == "users")
    );
    assert_eq!(text_at(text, fallback.action.span), r#"proxy = "users""#);
}

#[test]
fn spec_md_example_checks_with_only_the_undefined_jwt() {
    // The TOML example of SPEC.md is an excerpt: it uses `corp-sso`
    // without defining it.
    let checked = blitzc::check(SourceFile::new("edge.toml", SPEC_EXAMPLE));
    let unknown: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::UnknownReference)
        .collect();
    assert_eq!(unknown.len(), 1, "{:#?}", checked.diagnostics);
    assert!(unknown[0].message.contains("corp-sso"));
    // Nothing the TOML front end reports.
    assert!(
        checked.diagnostics.iter().all(|d| !matches!(
            d.code.as_str(),
            "B002" | "B003" | "B010" | "B011" | "B012" | "B014"
        )),
        "{:#?}",
        checked.diagnostics
    );
}

fn example(name: &str) -> (SourceFile, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("example exists");
    (SourceFile::new(path, text.clone()), text)
}

#[test]
fn edge_example_lowers_and_resolves() {
    let (file, text) = example("edge.toml");
    let (spec, mut diagnostics) = syntax::toml::lower(&file);
    let mut spec = spec.expect("parses");
    blitzc::ir::finish(&mut spec, &mut diagnostics);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");

    assert_eq!(spec.gateway.name.value, "edge-eu1");
    let log = spec.gateway.access_log.as_ref().expect("access-log");
    assert_eq!(log.target.value, LogTarget::Stdout);
    assert_eq!(log.format.value, LogFormat::Json);

    let tls = spec.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(text_at(&text, tls.span), "[listener.tls]");
    assert_eq!(tls.certs.len(), 2);
    assert_eq!(tls.certs[0].cert.value.written, "certs/edge.crt");
    assert!(
        tls.certs[0]
            .cert
            .value
            .resolved
            .ends_with("examples/certs/edge.crt")
    );
    assert_eq!(
        tls.certs[1].sni.as_ref().map(|s| s.value.as_str()),
        Some("api.example.com")
    );

    assert_eq!(spec.limits.max_header_bytes.value, 16 * 1024);
    assert_eq!(spec.limits.max_body_bytes.value, 10 * 1024 * 1024);
    assert_eq!(spec.limits.max_headers.value, 100);

    let users = &spec.upstreams[0];
    assert_eq!(users.pool.idle_timeout.value, Duration::from_secs(90));
    let retry = users.retry.as_ref().expect("retry");
    assert_eq!(retry.attempts.value, 2);
    let on: Vec<_> = retry.on.iter().map(|o| o.value).collect();
    assert_eq!(
        on,
        [
            RetryOn::ConnectError,
            RetryOn::Status(502),
            RetryOn::Status(503)
        ]
    );
    let sessions = &spec.upstreams[1];
    assert_eq!(
        sessions.balance.algorithm.value,
        BalanceAlgorithm::ConsistentHash
    );
    assert_eq!(
        sessions.balance.key.as_ref().map(|k| k.value.clone()),
        Some(RequestKey::Header("x-user-id".into()))
    );
    assert!(sessions.servers[0].weight.span.is_empty());

    let limit = &spec.rate_limits[0];
    assert_eq!(
        limit.rate.value,
        Rate {
            count: 100,
            period: Period::Second
        }
    );
    assert_eq!(limit.burst.value, 200);
    assert!(limit.ebpf.value);
    assert_eq!(spec.plugins[0].config.value, r#"{"default":"EU"}"#);

    let route = &spec.routes[0];
    assert!(matches!(&route.steps[0].kind, StepKind::Use(r) if r.index == Some(0)));
    let conditions = &route.matcher.as_ref().expect("match").conditions;
    assert!(matches!(&conditions[3].test, Test::Header { name, values }
        if name.value == "x-canary" && strings(values) == ["1"]));
    assert_eq!(text_at(&text, conditions[3].span), r#"x-canary = "1""#);
    assert!(
        matches!(&spec.routes[2].action.kind, ActionKind::Redirect { status, .. }
        if status.value == 301)
    );
    let metrics = spec.metrics.as_ref().expect("metrics");
    assert_eq!(metrics.path.value, "/metrics");
    assert!(spec.admin.socket.is_some());
}

#[test]
fn examples_match_their_kdl_twins() {
    let lower = |file: &SourceFile| {
        let (spec, mut diagnostics) = syntax::lower(file);
        let mut spec = spec.unwrap_or_else(|| panic!("{diagnostics:#?}"));
        blitzc::ir::finish(&mut spec, &mut diagnostics);
        let errors: Vec<_> = diagnostics.iter().filter(|d| d.is_error()).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display_path());
        spec.canonical_json()
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut pairs = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        let twin = path.with_extension("kdl");
        if path.extension().is_none_or(|e| e != "toml") || !twin.exists() {
            continue;
        }
        let read = |p: &Path| SourceFile::new(p, std::fs::read_to_string(p).expect("readable"));
        assert_eq!(
            lower(&read(&path)),
            lower(&read(&twin)),
            "{} and its .kdl twin differ",
            path.display()
        );
        pairs += 1;
    }
    assert!(pairs >= 1, "examples/edge.toml and edge.kdl at least");
}

/// Every construct and every alternative form of the TOML mapping.
const EVERY_FORM: &str = r#"
version = 1

[gateway]
workers = 4
access-log = "logs/access.log"

[[listener]]
name = "tls"
bind = "[::]:8443"
protocols = ["h1", "h2"]
tls = { certs = [{ cert = "c.crt", key = "c.key", sni = "API.example.com" }] }

[[listener]]
name = "tls-headers"
bind = "0.0.0.0:9443"
[[listener.tls.certs]]
cert = "d.crt"
key = "d.key"

[limits]
max-header-bytes = 8192

[[upstream]]
name = "dns"
balance = "p2c"
[[upstream.servers]]
address = "Users.internal:80"
weight = 0
[[upstream.servers]]
address = "users2.internal:80"

[[jwt]]
name = "remote"
audience = ["api", "web"]
algorithms = ["HS256"]
jwks-url = { url = "https://sso.example.com/jwks", refresh = "10m" }

[[jwt]]
name = "remote-short"
algorithms = ["ES256"]
jwks-url = "https://sso.example.com/jwks"

[[rate-limit]]
name = "per-user"
key = "jwt:sub"
rate = "10/m"

[[chain]]
name = "empty"
steps = []

[[route]]
name = "search"
match = { path-regex = "/search/[a-z]+", query = { q = true, lang = ["en", "de"] }, header = { X-Debug = true }, path = ["/a", "/b"] }
steps = [
  { auth = "remote" },
  { require-role = "reader" },
  { rate-limit = "per-user" },
  { response-headers = { add = { via = ["blitz", "edge"], x-a = "1" }, remove = "server" } },
  { use = "empty" },
]
respond = 204

[[route]]
name = "moved"
match = {}
redirect = "https://example.com/"

[[route]]
name = "teapot"
[route.match]
host = "*.Example.com"
method = "post"
[route.respond]
status = 418

[metrics]
bind = "127.0.0.1:9100"
path = "/m"
"#;

#[test]
fn every_form_lowers() {
    let text = EVERY_FORM;
    let spec = lower_clean(text);
    assert_eq!(spec.gateway.name.value, "edge", "defaults to the file stem");
    assert!(spec.gateway.name.span.is_empty());
    assert_eq!(spec.gateway.workers.value, Workers::Count(4));
    let log = spec.gateway.access_log.as_ref().expect("access-log");
    assert!(matches!(&log.target.value, LogTarget::File(p)
        if p.written == "logs/access.log" && p.resolved == Path::new("specs/logs/access.log")));

    let tls = spec.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(
        tls.certs[0].sni.as_ref().map(|s| s.value.as_str()),
        Some("api.example.com")
    );
    let tls = spec.listeners[1].tls.as_ref().expect("tls from headers");
    assert_eq!(tls.certs[0].key.value.written, "d.key");
    assert_eq!(text_at(text, tls.certs[0].span), "[[listener.tls.certs]]");
    assert_eq!(
        text_at(text, tls.span),
        "tls",
        "an implicit table spans its key"
    );

    assert_eq!(spec.limits.max_header_bytes.value, 8192);
    assert_eq!(spec.limits.max_headers.value, Limits::DEFAULT_MAX_HEADERS);

    let dns = &spec.upstreams[0];
    assert_eq!(dns.balance.algorithm.value, BalanceAlgorithm::P2c);
    assert_eq!(text_at(text, dns.balance.span), "\"p2c\"");
    assert_eq!(
        dns.servers[0].address.value,
        ServerAddress::Dns {
            host: "users.internal".into(),
            port: 80
        }
    );
    assert_eq!(dns.servers[0].weight.value, 0);
    assert!(!dns.servers[0].weight.span.is_empty());
    assert_eq!(dns.servers[1].weight.value, 1);

    let remote = &spec.jwts[0];
    assert_eq!(strings(&remote.audience), ["api", "web"]);
    assert_eq!(
        remote.keys.value,
        JwksSource::Url {
            url: "https://sso.example.com/jwks".into(),
            refresh: Duration::from_secs(600)
        }
    );
    assert!(
        matches!(&spec.jwts[1].keys.value, JwksSource::Url { refresh, .. }
        if *refresh == Jwt::DEFAULT_JWKS_REFRESH)
    );
    assert_eq!(spec.jwts[1].roles_claim.value, "roles");

    let limit = &spec.rate_limits[0];
    assert_eq!(limit.key.value, RequestKey::JwtClaim("sub".into()));
    assert_eq!(limit.burst.value, 10, "burst defaults to the rate's count");
    assert!(limit.burst.span.is_empty());
    assert!(!limit.ebpf.value);

    assert!(spec.chains[0].steps.is_empty());

    let search = &spec.routes[0];
    let conditions = &search.matcher.as_ref().expect("match").conditions;
    // In the order written: `finish` sorts them.
    let keywords: Vec<_> = conditions.iter().map(|c| c.test.keyword()).collect();
    assert_eq!(keywords, ["path-regex", "query", "query", "header", "path"]);
    assert!(matches!(&conditions[1].test, Test::Query { name, values }
        if name.value == "q" && values.is_empty()));
    assert_eq!(text_at(text, conditions[1].span), "q = true");
    assert!(matches!(&conditions[2].test, Test::Query { values, .. }
        if strings(values) == ["en", "de"]));
    assert!(matches!(&conditions[3].test, Test::Header { name, values }
        if name.value == "x-debug" && values.is_empty()));
    assert!(matches!(&search.steps[1].kind, StepKind::RequireRole(r) if strings(r) == ["reader"]));
    let StepKind::ResponseHeaders(rewrite) = &search.steps[3].kind else {
        panic!("response-headers")
    };
    let added: Vec<_> = rewrite
        .add
        .iter()
        .map(|(n, v)| (n.value.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(added, [("via", "blitz"), ("via", "edge"), ("x-a", "1")]);
    assert_eq!(strings(&rewrite.remove), ["server"]);
    assert!(
        matches!(&search.action.kind, ActionKind::Respond { status, body, content_type: None }
        if status.value == 204 && body.value.is_empty() && body.span.is_empty())
    );

    let moved = &spec.routes[1];
    assert!(
        moved
            .matcher
            .as_ref()
            .is_some_and(|m| m.conditions.is_empty())
    );
    assert!(
        matches!(&moved.action.kind, ActionKind::Redirect { location, status }
        if location.value == "https://example.com/" && status.value == 302 && status.span.is_empty())
    );

    let teapot = &spec.routes[2];
    let matcher = teapot.matcher.as_ref().expect("match");
    assert_eq!(text_at(text, matcher.span), "[route.match]");
    assert!(matches!(&matcher.conditions[0].test, Test::Host(h)
        if h[0].value == HostPattern::Wildcard(".example.com".into())));
    assert!(matches!(&matcher.conditions[1].test, Test::Method(m) if strings(m) == ["POST"]));
    assert!(
        matches!(&teapot.action.kind, ActionKind::Respond { status, .. } if status.value == 418)
    );

    let metrics = spec.metrics.as_ref().expect("metrics");
    assert_eq!(metrics.path.value, "/m");
    assert!(spec.admin.socket.is_none());
}

// ---------------------------------------------------------------- errors

#[test]
fn syntax_error() {
    let text = "version = 1\n[[listener]\nname = \"a\"\n";
    let d = only(text);
    assert_eq!(d.code, Code::TomlSyntax);
    assert!(!d.label.is_empty() && !d.help.is_empty());
    assert_eq!(positions(text)[0].1, 2);
    let (spec, _, _) = lower(text);
    assert!(spec.is_none());

    let text = "version = 1\nworkers = \n";
    assert_eq!(positions(text), [("B002", 2, 11)]);
}

#[test]
fn duplicate_table_is_a_syntax_error() {
    let text = "version = 1\n[metrics]\nbind = \"127.0.0.1:1\"\n[metrics]\n";
    let d = only(text);
    assert_eq!(d.code, Code::TomlSyntax);
    assert!(d.help.contains("once per table"), "{d:#?}");
}

#[test]
fn version() {
    let d = only("[admin]\n");
    assert_eq!(d.code, Code::Version);
    assert_eq!(positions("version = 2\n"), [("B003", 1, 11)]);
    assert_eq!(positions("version = \"1\"\n"), [("B011", 1, 11)]);
    assert_eq!(
        positions("gateway = { workers = 2 }\nversion = 1\n"),
        [("B003", 2, 1)]
    );
}

#[test]
fn unknown_top_level_key() {
    let text = "version = 1\n\n[[routes]]\nname = \"a\"\nproxy = \"u\"\n";
    let d = only(text);
    assert_eq!(d.code, Code::UnknownKey);
    assert!(d.help.starts_with("did you mean `route`?"), "{}", d.help);
    assert_eq!(positions(text), [("B010", 3, 3)]);
}

#[test]
fn unknown_keys_at_every_level() {
    let text = r#"version = 1
[[upstream]]
name = "u"
servers = [{ adress = "127.0.0.1:1" }, { address = "127.0.0.1:2", wieght = 1 }]
health-check = { pth = "/" }
[[route]]
name = "r"
match = { paht = "/" }
steps = [{ auht = "x" }, { request-headers = { sett = { a = "b" } } }]
proxy = { upstream = "u", strip = "/v1" }
"#;
    let (_, diagnostics, file) = lower(text);
    let found: Vec<_> = diagnostics
        .iter()
        .map(|d| {
            let (line, column) = file.line_col(d.span.start);
            (d.code.as_str(), line, column, d.help.clone())
        })
        .collect();
    let expect = [
        ("B010", 4, 14, "did you mean `address`?"),
        ("B012", 4, 12, ""), // the first server has no address
        ("B010", 4, 67, "did you mean `weight`?"),
        ("B010", 5, 18, "did you mean `path`?"),
        ("B010", 8, 11, "did you mean `path`?"),
        ("B010", 9, 12, "did you mean `auth`?"),
        ("B010", 9, 48, "did you mean `set`?"),
        ("B010", 10, 27, "did you mean `strip-prefix`?"),
    ];
    let mut sorted = found.clone();
    sorted.sort_by_key(|f| (f.1, f.2));
    let mut expected: Vec<_> = expect.to_vec();
    expected.sort_by_key(|e| (e.1, e.2));
    assert_eq!(sorted.len(), expected.len(), "{found:#?}");
    for (f, e) in sorted.iter().zip(&expected) {
        assert_eq!((f.0, f.1, f.2), (e.0, e.1, e.2), "{found:#?}");
        assert!(f.3.starts_with(e.3), "{f:?} vs {e:?}");
    }
}

#[test]
fn wrong_types() {
    let text = r#"version = 1
[[listener]]
name = "l"
bind = 8080
protocols = "h1"
[[upstream]]
name = "u"
servers = [{ address = "127.0.0.1:1", weight = 1.5 }]
pool = "big"
[limits]
max-headers = "100"
header-timeout = 10
"#;
    assert_eq!(
        positions(text),
        [
            ("B011", 4, 8),
            ("B011", 5, 13),
            ("B011", 8, 48),
            ("B011", 9, 8),
            ("B011", 11, 15),
            ("B011", 12, 18),
        ]
    );
    let (_, diagnostics, _) = lower(text);
    assert_eq!(
        diagnostics[0].message,
        "`bind` must be a string, found an integer"
    );
    assert_eq!(diagnostics[0].help, "write it as `bind = \"0.0.0.0:8080\"`");
    assert!(diagnostics.iter().any(|d| d.message
        == "`header-timeout` must be a duration string such as \"10s\", found an integer"));
}

/// A server's `tls` is a boolean: its help shows that, not the listener's
/// `tls` table of certificates.
#[test]
fn a_server_tls_of_the_wrong_type_is_helped_as_a_boolean() {
    let text = r#"version = 1
[[upstream]]
name = "u"
servers = [{ address = "127.0.0.1:9", tls = "true" }]
"#;
    let d = only(text);
    assert_eq!(d.code, Code::WrongType);
    assert_eq!(d.help, "write it as `tls = true`");
}

#[test]
fn wrong_shape_of_named_items() {
    let text = "version = 1\n[listener]\nname = \"l\"\n";
    let d = only(text);
    assert_eq!(d.code, Code::WrongType);
    assert_eq!(d.help, "write it as `[[listener]]`");
    assert_eq!(positions(text), [("B011", 2, 1)]);
}

#[test]
fn missing_fields_leave_items_out() {
    let text = r#"version = 1
[[listener]]
bind = "0.0.0.0:80"
[[listener]]
name = "no-bind"
[[upstream]]
name = "empty"
servers = []
[[rate-limit]]
name = "r"
key = "client-ip"
[[route]]
name = "no-action"
[metrics]
path = "/m"
"#;
    let (spec, diagnostics, file) = lower(text);
    let spec = spec.expect("parses");
    let found: Vec<_> = diagnostics
        .iter()
        .map(|d| {
            let (line, column) = file.line_col(d.span.start);
            (d.code.as_str(), line, column, d.message.as_str())
        })
        .collect();
    assert_eq!(
        found,
        [
            ("B012", 2, 1, "this `listener` has no `name`"),
            ("B012", 4, 1, "listener `no-bind` has no `bind`"),
            ("B012", 8, 11, "upstream `empty` has no servers"),
            ("B012", 9, 1, "rate-limit `r` has no `rate`"),
            ("B012", 12, 1, "route `no-action` has no action"),
            ("B012", 14, 1, "`[metrics]` has no `bind`"),
        ]
    );
    assert!(diagnostics[4].help.contains("proxy, respond, redirect"));
    assert!(diagnostics[1].help.contains("bind = \"0.0.0.0:8080\""));
    assert!(spec.listeners.is_empty());
    assert!(spec.rate_limits.is_empty());
    assert!(spec.routes.is_empty());
    assert!(spec.metrics.is_none());
    // Kept (empty), so `proxy = "empty"` does not also report an unknown upstream.
    assert_eq!(spec.upstreams.len(), 1);
}

#[test]
fn conflicting_fields() {
    let text = r#"version = 1
[[jwt]]
name = "j"
algorithms = ["RS256"]
jwks-file = "k.json"
jwks-url = "https://x/jwks"
[[route]]
name = "r"
proxy = "u"
respond = 200
"#;
    assert_eq!(positions(text), [("B014", 6, 1), ("B014", 10, 1)]);
    let (spec, diagnostics, _) = lower(text);
    let spec = spec.expect("parses");
    assert_eq!(
        text_at(text, diagnostics[1].span),
        "respond = 200",
        "the second action"
    );
    assert_eq!(
        text_at(text, diagnostics[1].related[0].span),
        "proxy = \"u\""
    );
    // Best effort: the first of each is kept.
    assert!(matches!(spec.jwts[0].keys.value, JwksSource::File(_)));
    assert!(matches!(
        spec.routes[0].action.kind,
        ActionKind::Proxy { .. }
    ));
}

#[test]
fn steps_with_zero_or_several_keys() {
    let text = r#"version = 1
[[chain]]
name = "c"
steps = [{}, { auth = "a", rate-limit = "b" }, "auth"]
"#;
    assert_eq!(
        positions(text),
        [("B011", 4, 10), ("B011", 4, 14), ("B011", 4, 48)]
    );
    let (spec, diagnostics, _) = lower(text);
    assert!(
        diagnostics
            .iter()
            .any(|d| d.help.contains("{ auth = ... }, { rate-limit = ... }"))
    );
    assert!(spec.expect("parses").chains[0].steps.is_empty());
}

#[test]
fn values_are_checked_by_the_shared_lowering() {
    let text = r#"version = 1
[gateway]
workers = 0
[[listener]]
name = "l"
bind = "localhost:80"
protocols = ["h1", "h4"]
[[route]]
name = "r"
match = { path-prefix = "v1", header = { "bad name" = "x", x = false } }
redirect = { location = "https://e/", status = 200 }
"#;
    assert_eq!(
        positions(text),
        [
            ("B041", 3, 11),
            ("B033", 6, 8),
            ("B037", 7, 20),
            ("B038", 10, 25),
            ("B035", 10, 42),
            ("B011", 10, 64),
            ("B034", 11, 48),
        ]
    );
}

#[test]
fn parse_errors_never_panic_on_odd_documents() {
    for text in [
        "",
        "version = 1\n[[route]]\n",
        "version = 1\nroute = 3\nlistener = [1, {}]\n",
        "version = 1\n[gateway]\naccess-log = { format = \"xml\" }\n",
        "version = 1\n[[upstream]]\nname = \"u\"\nservers = [{ address = \"a:1\" }]\nretry = { on = [] }\nbalance = {}\n",
        "version = 1\n[[route]]\nname = \"r\"\nsteps = [{ request-headers = 1 }]\nrespond = { body = 1 }\n",
        "version = 1\n[[jwt]]\nname = \"j\"\nalgorithms = []\njwks-url = { refresh = \"1s\" }\n",
    ] {
        let (_, diagnostics, _) = lower(text);
        for d in diagnostics {
            assert!(d.span.end <= text.len().max(d.span.start), "{d:#?}");
            assert!(!d.help.is_empty(), "{d:#?}");
        }
    }
}

/// `EVERY_FORM` in KDL: both forms must lower to the same model.
const EVERY_FORM_KDL: &str = r#"
version 1
gateway {
    workers 4
    access-log "logs/access.log"
}
listener "tls" {
    bind "[::]:8443"
    protocols "h1" "h2"
    tls {
        cert "c.crt" key="c.key" sni="API.example.com"
    }
}
listener "tls-headers" {
    bind "0.0.0.0:9443"
    tls {
        cert "d.crt" key="d.key"
    }
}
limits {
    max-header-bytes 8192
}
upstream "dns" {
    balance "p2c"
    server "Users.internal:80" weight=0
    server "users2.internal:80"
}
jwt "remote" {
    audience "api" "web"
    algorithms "HS256"
    jwks-url "https://sso.example.com/jwks" refresh="10m"
}
jwt "remote-short" {
    algorithms "ES256"
    jwks-url "https://sso.example.com/jwks"
}
rate-limit "per-user" {
    key "jwt:sub"
    rate "10/m"
}
chain "empty" {}
route "search" {
    match {
        path-regex "/search/[a-z]+"
        query "q"
        query "lang" "en" "de"
        header "X-Debug"
        path "/a" "/b"
    }
    auth "remote"
    require-role "reader"
    rate-limit "per-user"
    response-headers {
        add "via" "blitz"
        add "via" "edge"
        add "x-a" "1"
        remove "server"
    }
    use "empty"
    respond 204
}
route "moved" {
    match {}
    redirect "https://example.com/"
}
route "teapot" {
    match {
        host "*.Example.com"
        method "post"
    }
    respond 418
}
metrics {
    bind "127.0.0.1:9100"
    path "/m"
}
"#;

#[test]
fn every_form_matches_its_kdl_twin() {
    let lower = |file: SourceFile| {
        let (spec, mut diagnostics) = syntax::lower(&file);
        let mut spec = spec.unwrap_or_else(|| panic!("{diagnostics:#?}"));
        blitzc::ir::finish(&mut spec, &mut diagnostics);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        spec.canonical_json()
    };
    let from_toml = lower(SourceFile::new("specs/edge.toml", EVERY_FORM));
    let from_kdl = lower(SourceFile::new("specs/edge.kdl", EVERY_FORM_KDL));
    assert_eq!(from_toml, from_kdl);
}

/// A server's TLS options lower the same from both syntaxes: on, SNI
/// lower-cased, the CA path resolved against the spec's folder; without
/// `tls` the server is cleartext.
#[test]
fn server_tls_options_lower_in_both_syntaxes() {
    let toml = r#"
version = 1

[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[upstream]]
name = "api"
servers = [
    { address = "10.0.0.7:443", tls = true, sni = "API.internal", ca = "certs/ca.pem" },
    { address = "10.0.0.8:443", tls = true },
    { address = "10.0.0.9:80" },
]

[[route]]
name = "all"
proxy = "api"
"#;
    let kdl = r#"
version 1
listener "public" {
    bind "127.0.0.1:8080"
}
upstream "api" {
    server "10.0.0.7:443" tls=#true sni="API.internal" ca="certs/ca.pem"
    server "10.0.0.8:443" tls=#true
    server "10.0.0.9:80"
}
route "all" {
    proxy "api"
}
"#;
    let from_toml = lower_clean(toml);
    let file = SourceFile::new("specs/edge.kdl", kdl);
    let (from_kdl, diagnostics) = syntax::kdl::lower(&file);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let from_kdl = from_kdl.expect("the spec parses");
    for spec in [&from_toml, &from_kdl] {
        let servers = &spec.upstreams[0].servers;
        let tls = servers[0].tls.as_ref().expect("tls on");
        assert_eq!(
            tls.sni.as_ref().map(|s| s.value.as_str()),
            Some("api.internal")
        );
        let ca = tls.ca.as_ref().expect("ca");
        assert_eq!(ca.value.written, "certs/ca.pem");
        assert_eq!(ca.value.resolved, Path::new("specs/certs/ca.pem"));
        assert_eq!(servers[0].tls_name().as_deref(), Some("api.internal"));
        assert_eq!(servers[1].tls_name().as_deref(), Some("10.0.0.8"));
        assert!(servers[2].tls.is_none() && servers[2].tls_name().is_none());
    }
}
