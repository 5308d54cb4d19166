//! The reference matcher against every rule of SPEC.md "Meaning", on specs
//! built directly as models.

use blitz_ir::matcher::{MatchError, RequestHead, Router, normalize_path};
use blitz_ir::{
    Action, ActionKind, Condition, HostPattern, Match, Route, Span, Spanned, Spec, Test,
};

fn s(text: &str) -> Spanned<String> {
    Spanned::new(text.to_string(), Span::default())
}

fn strings(values: &[&str]) -> Vec<Spanned<String>> {
    values.iter().map(|v| s(v)).collect()
}

fn host(patterns: &[&str]) -> Test {
    Test::Host(
        patterns
            .iter()
            .map(|p| {
                let p = p.to_ascii_lowercase();
                let pattern = match p.strip_prefix('*') {
                    Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
                    None => HostPattern::Exact(p),
                };
                Spanned::new(pattern, Span::default())
            })
            .collect(),
    )
}

fn header(name: &str, values: &[&str]) -> Test {
    Test::Header {
        name: s(name),
        values: strings(values),
    }
}

fn query(name: &str, values: &[&str]) -> Test {
    Test::Query {
        name: s(name),
        values: strings(values),
    }
}

fn route(name: &str, tests: Option<Vec<Test>>) -> Route {
    Route {
        name: s(name),
        matcher: tests.map(|tests| Match {
            conditions: tests
                .into_iter()
                .map(|test| Condition {
                    test,
                    span: Span::default(),
                })
                .collect(),
            span: Span::default(),
        }),
        steps: Vec::new(),
        action: Action {
            kind: ActionKind::Respond {
                status: Spanned::new(200, Span::default()),
                body: s(name),
                content_type: None,
            },
            span: Span::default(),
        },
        span: Span::default(),
    }
}

fn spec(routes: Vec<Route>) -> Spec {
    Spec {
        version: 1,
        routes,
        ..Spec::default()
    }
}

/// A request, built fluently.
struct Req {
    method: &'static str,
    host: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

fn get(host: &'static str, target: &'static str) -> Req {
    Req {
        method: "GET",
        host,
        target,
        headers: Vec::new(),
    }
}

impl Req {
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// The name of the route serving `req`, or `None` for a 404.
fn serve(spec: &Spec, req: &Req) -> Option<String> {
    let router = Router::new(spec).expect("regexes compile");
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|&(n, v)| (n, v.as_bytes()))
        .collect();
    let head = RequestHead {
        method: req.method,
        host: req.host,
        target: req.target,
        headers: &headers,
    };
    router
        .route(&head)
        .expect("valid path")
        .map(|i| spec.routes[i].name.value.clone())
}

fn matches(test: Test, req: &Req) -> bool {
    serve(&spec(vec![route("r", Some(vec![test]))]), req).is_some()
}

#[test]
fn first_match_wins_in_spec_order() {
    let spec = spec(vec![
        route("a", Some(vec![Test::PathPrefix(strings(&["/v1"]))])),
        route("b", Some(vec![Test::PathPrefix(strings(&["/v1/users"]))])),
        route("c", Some(vec![Test::PathPrefix(strings(&["/v2"]))])),
    ]);
    assert_eq!(serve(&spec, &get("x", "/v1/users")).as_deref(), Some("a"));
    assert_eq!(serve(&spec, &get("x", "/v2/z")).as_deref(), Some("c"));
}

#[test]
fn no_match_is_none() {
    let spec = spec(vec![route("a", Some(vec![Test::Path(strings(&["/a"]))]))]);
    assert_eq!(serve(&spec, &get("x", "/b")), None);
    assert_eq!(serve(&self::spec(vec![]), &get("x", "/")), None);
}

#[test]
fn route_without_match_matches_everything() {
    let spec = spec(vec![
        route("a", Some(vec![Test::Path(strings(&["/a"]))])),
        route("fallback", None),
        route("never", Some(vec![Test::Path(strings(&["/b"]))])),
    ]);
    assert_eq!(serve(&spec, &get("x", "/a")).as_deref(), Some("a"));
    assert_eq!(serve(&spec, &get("", "/b")).as_deref(), Some("fallback"));
    let req = get("q", "/zz?x=1").method("BREW").header("x", "y");
    assert_eq!(serve(&spec, &req).as_deref(), Some("fallback"));
    // An empty `match` block also has no condition to fail.
    let empty = self::spec(vec![route("empty", Some(vec![]))]);
    assert_eq!(serve(&empty, &get("", "/")).as_deref(), Some("empty"));
}

#[test]
fn all_conditions_must_hold() {
    let tests = vec![
        host(&["api.example.com"]),
        Test::PathPrefix(strings(&["/v1"])),
        Test::Method(strings(&["GET"])),
        header("x-canary", &["1"]),
        query("debug", &[]),
    ];
    let spec = spec(vec![route("r", Some(tests))]);
    let full = || get("api.example.com", "/v1/x?debug").header("x-canary", "1");
    assert!(serve(&spec, &full()).is_some());
    assert!(serve(&spec, &get("api.example.com", "/v1/x?debug")).is_none());
    assert!(serve(&spec, &full().method("POST")).is_none());
    let wrong_path = get("api.example.com", "/v2?debug").header("x-canary", "1");
    assert!(serve(&spec, &wrong_path).is_none());
    let wrong_host = get("web.example.com", "/v1?debug").header("x-canary", "1");
    assert!(serve(&spec, &wrong_host).is_none());
    let no_query = get("api.example.com", "/v1").header("x-canary", "1");
    assert!(serve(&spec, &no_query).is_none());
}

#[test]
fn several_values_are_alternatives() {
    let t = || host(&["a.example.com", "b.example.com"]);
    assert!(matches(t(), &get("a.example.com", "/")));
    assert!(matches(t(), &get("b.example.com", "/")));
    assert!(!matches(t(), &get("c.example.com", "/")));
    let p = || Test::Path(strings(&["/a", "/b"]));
    assert!(matches(p(), &get("", "/b")));
    assert!(!matches(p(), &get("", "/c")));
}

#[test]
fn host_is_case_insensitive_without_port() {
    let t = || host(&["api.example.com"]);
    assert!(matches(t(), &get("api.example.com", "/")));
    assert!(matches(t(), &get("API.Example.COM", "/")));
    assert!(matches(t(), &get("api.example.com:8443", "/")));
    assert!(matches(t(), &get("api.example.com.", "/")));
    assert!(!matches(t(), &get("api.example.co", "/")));
    assert!(!matches(t(), &get("", "/")));
    let v6 = || host(&["::1"]);
    assert!(matches(v6(), &get("[::1]:8080", "/")));
    assert!(matches(v6(), &get("[::1]", "/")));
}

#[test]
fn wildcard_host_needs_a_label_before_the_suffix() {
    let t = || host(&["*.example.com"]);
    assert!(matches(t(), &get("a.example.com", "/")));
    assert!(matches(t(), &get("A.B.Example.com:80", "/")));
    assert!(!matches(t(), &get("example.com", "/")));
    assert!(!matches(t(), &get("badexample.com", "/")));
    assert!(!matches(t(), &get("example.com.evil.net", "/")));
}

#[test]
fn path_is_exact_after_normalisation_and_without_query() {
    let t = || Test::Path(strings(&["/a/c"]));
    assert!(matches(t(), &get("", "/a/c")));
    assert!(matches(t(), &get("", "/a/./b/../c")));
    assert!(matches(t(), &get("", "/a/c?x=1")));
    assert!(matches(t(), &get("", "/a//c")));
    assert!(matches(t(), &get("", "/%61/c")));
    assert!(!matches(t(), &get("", "/a/c/")));
    assert!(!matches(t(), &get("", "/a/cd")));
    assert!(!matches(t(), &get("", "/A/c")));
}

#[test]
fn path_prefix_is_segment_aware() {
    let t = || Test::PathPrefix(strings(&["/v1/users"]));
    for yes in [
        "/v1/users",
        "/v1/users/",
        "/v1/users/7",
        "/v1/users?x",
        "/v1/x/../users/7",
    ] {
        assert!(matches(t(), &get("", yes)), "{yes}");
    }
    for no in [
        "/v1/usersx",
        "/v1/user",
        "/v1",
        "/",
        "/v2/users",
        "/v1/users%2F7",
    ] {
        assert!(!matches(t(), &get("", no)), "{no}");
    }
    let root = || Test::PathPrefix(strings(&["/"]));
    assert!(matches(root(), &get("", "/")));
    assert!(matches(root(), &get("", "/anything/at/all")));
}

#[test]
fn path_regex_matches_the_whole_normalised_path() {
    let t = || Test::PathRegex(strings(&["/v[0-9]+/items/[0-9]+"]));
    assert!(matches(t(), &get("", "/v2/items/42")));
    assert!(matches(t(), &get("", "/v2/x/../items/42?q=1")));
    assert!(!matches(t(), &get("", "/v2/items/42/extra")));
    assert!(!matches(t(), &get("", "/prefix/v2/items/42")));
    // Alternation inside the pattern stays anchored on both sides.
    let alt = || Test::PathRegex(strings(&["/a|/b"]));
    assert!(matches(alt(), &get("", "/a")));
    assert!(!matches(alt(), &get("", "/ab")));
    assert!(!matches(alt(), &get("", "/x/b")));
}

#[test]
fn method_alternatives_are_case_sensitive() {
    let t = || Test::Method(strings(&["GET", "HEAD"]));
    assert!(matches(t(), &get("", "/")));
    assert!(matches(t(), &get("", "/").method("HEAD")));
    assert!(!matches(t(), &get("", "/").method("POST")));
    assert!(!matches(t(), &get("", "/").method("get")));
}

#[test]
fn header_value_is_exact_and_name_case_insensitive() {
    let t = || header("x-canary", &["1", "yes"]);
    assert!(matches(t(), &get("", "/").header("x-canary", "1")));
    assert!(matches(t(), &get("", "/").header("X-Canary", "yes")));
    assert!(matches(t(), &get("", "/").header("x-canary", " 1\t")));
    assert!(!matches(t(), &get("", "/").header("x-canary", "2")));
    assert!(!matches(t(), &get("", "/").header("x-canary", "YES")));
    assert!(!matches(t(), &get("", "/").header("x-canary", "1, 2")));
    assert!(!matches(t(), &get("", "/").header("x-canaryx", "1")));
    assert!(!matches(t(), &get("", "/")));
}

#[test]
fn header_without_value_means_present() {
    let t = || header("x-debug", &[]);
    assert!(matches(t(), &get("", "/").header("X-DEBUG", "anything")));
    assert!(matches(t(), &get("", "/").header("x-debug", "")));
    assert!(!matches(t(), &get("", "/").header("x-other", "1")));
    assert!(!matches(t(), &get("", "/")));
}

#[test]
fn any_line_of_a_repeated_header_may_match() {
    let t = || header("x-tag", &["b"]);
    let req = get("", "/").header("x-tag", "a").header("X-Tag", "b");
    assert!(matches(t(), &req));
    let req = get("", "/").header("x-tag", "a").header("x-tag", "c");
    assert!(!matches(t(), &req));
}

#[test]
fn query_value_and_presence() {
    let v = || query("lang", &["en", "fr"]);
    assert!(matches(v(), &get("", "/?lang=en")));
    assert!(matches(v(), &get("", "/?a=1&lang=fr&b")));
    assert!(matches(v(), &get("", "/?lang=de&lang=en")));
    assert!(!matches(v(), &get("", "/?lang=de")));
    assert!(!matches(v(), &get("", "/?Lang=en")));
    assert!(!matches(v(), &get("", "/?lang")));
    assert!(!matches(v(), &get("", "/")));
    let p = || query("debug", &[]);
    assert!(matches(p(), &get("", "/?debug")));
    assert!(matches(p(), &get("", "/?debug=")));
    assert!(matches(p(), &get("", "/?x=1&debug=0")));
    assert!(!matches(p(), &get("", "/?debugx=1")));
    assert!(!matches(p(), &get("", "/debug")));
    assert!(!matches(p(), &get("", "/#?debug")));
}

#[test]
fn query_is_form_decoded() {
    let t = || query("q", &["a b", "x&y"]);
    assert!(matches(t(), &get("", "/?q=a+b")));
    assert!(matches(t(), &get("", "/?q=a%20b")));
    assert!(matches(t(), &get("", "/?%71=x%26y")));
    assert!(!matches(t(), &get("", "/?q=a%2Bb")));
    // A malformed escape stays literal; a sign is not a hex digit.
    assert!(matches(query("p", &["% 1"]), &get("", "/?p=%+1")));
    assert!(matches(query("p", &["%zz"]), &get("", "/?p=%zz")));
}

#[test]
fn bad_paths_are_errors() {
    let spec = spec(vec![route("all", None)]);
    let router = Router::new(&spec).expect("no regex");
    for target in ["a/b", "*", "/a%zz", "/a%2", "http://x/"] {
        let head = RequestHead {
            method: "GET",
            host: "",
            target,
            headers: &[],
        };
        assert_eq!(router.route(&head), Err(MatchError::BadPath), "{target}");
    }
}

#[test]
fn normalisation_cases() {
    let cases = [
        ("/", "/"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/.", "/a/"),
        ("/..", "/"),
        ("/../../a", "/a"),
        ("/a/../..", "/"),
        ("/a//b", "/a/b"),
        ("//a", "/a"),
        ("///", "/"),
        ("/a//", "/a/"),
        ("/a/", "/a/"),
        ("/a/..b/c", "/a/..b/c"),
        ("/a/.b", "/a/.b"),
        ("/a?x=1", "/a"),
        ("/a?x=/../b", "/a"),
        ("/a#frag", "/a"),
        ("/%2e%2e/a", "/a"),
        ("/a/%2E/b", "/a/b"),
        ("/a/%2e%2E/b", "/b"),
        ("/%75sers", "/users"),
        ("/%7e%2D%5F", "/~-_"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2F..%2Fb", "/a%2F..%2Fb"),
        ("/a%20b", "/a%20b"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/café", "/café"),
    ];
    for (input, expected) in cases {
        assert_eq!(normalize_path(input).as_deref(), Some(expected), "{input}");
    }
    for bad in ["", "a/b", "/a%zz", "/a%2", "/a%", "?x"] {
        assert_eq!(normalize_path(bad), None, "{bad}");
    }
}
