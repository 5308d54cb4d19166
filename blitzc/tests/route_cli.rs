//! `blitzc route SPEC METHOD URL [-H 'name: value']...` end to end: the
//! built binary on KDL specs written to a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "blitzc-route-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write spec");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const PREAMBLE: &str = r#"version 1

listener "public" {
    bind "127.0.0.1:8080"
    protocols "h1"
}

upstream "users" {
    server "127.0.0.1:9001"
}
"#;

/// Routes in the style of SPEC.md's example.
const ROUTES: &str = r#"
route "users-read" {
    match {
        host "api.example.com" "*.api.example.com"
        path-prefix "/v1/users"
        method "GET" "HEAD"
        header "x-canary" "1"
    }
    proxy "users" strip-prefix="/v1"
}

route "health" {
    match { path "/healthz" }
    respond 200 body="ok\n" content-type="text/plain"
}

route "old-docs" {
    match { path-prefix "/docs/v0" }
    redirect "https://docs.example.com/" status=301
}

route "root-debug" {
    match {
        path "/"
        query "debug" "1"
    }
    respond 200 body="debug"
}

route "items" {
    match { path-regex "/items/[0-9]+" }
    respond 200 body="item"
}

route "fallback" {
    proxy "users"
}
"#;

/// The same without a fallback, so that some requests get a 404.
const NO_FALLBACK: &str = r#"
route "health" {
    match { path "/healthz" }
    respond 200 body="ok\n"
}

route "write" {
    match {
        host "*.example.com"
        method "POST" "PUT"
    }
    proxy "users"
}
"#;

fn blitzc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blitzc"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run blitzc")
}

fn route_in(spec: &Path, method: &str, url: &str, headers: &[&str]) -> (Option<i32>, String) {
    let spec = spec.to_str().expect("utf-8 path");
    let mut args = vec!["route", spec, method, url];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    let out = blitzc(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.code(), stdout)
}

fn full_spec(dir: &TempDir) -> PathBuf {
    dir.write("gateway.kdl", &format!("{PREAMBLE}{ROUTES}"))
}

/// Asserts that `blitzc route` picks `expected` (exit 0).
#[track_caller]
fn picks(spec: &Path, method: &str, url: &str, headers: &[&str], expected: &str) {
    let (code, stdout) = route_in(spec, method, url, headers);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), expected),
        "{method} {url} {headers:?}"
    );
}

#[test]
fn the_spec_checks_clean() {
    let dir = TempDir::new();
    let spec = full_spec(&dir);
    let out = blitzc(&["check", spec.to_str().expect("utf-8")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn prints_the_matching_route() {
    let dir = TempDir::new();
    let spec = full_spec(&dir);
    let canary = &["x-canary: 1"][..];
    picks(
        &spec,
        "GET",
        "http://api.example.com/v1/users/7",
        canary,
        "users-read",
    );
    picks(
        &spec,
        "HEAD",
        "https://api.example.com/v1/users",
        canary,
        "users-read",
    );
    picks(
        &spec,
        "GET",
        "http://eu.api.example.com/v1/users/",
        canary,
        "users-read",
    );
    picks(
        &spec,
        "GET",
        "http://API.Example.com:8443/v1/users",
        canary,
        "users-read",
    );
    picks(
        &spec,
        "GET",
        "http://api.example.com/v1/./x/../users",
        canary,
        "users-read",
    );
    picks(
        &spec,
        "GET",
        "http://api.example.com/v1/users",
        &["X-Canary:1"],
        "users-read",
    );
    picks(&spec, "GET", "/healthz", &[], "health");
    picks(
        &spec,
        "GET",
        "http://example.com/healthz?x=1",
        &[],
        "health",
    );
    picks(
        &spec,
        "GET",
        "http://example.com/healthz#top",
        &[],
        "health",
    );
    picks(&spec, "GET", "/docs/v0/intro", &[], "old-docs");
    picks(&spec, "GET", "/items/42", &[], "items");
}

#[test]
fn every_condition_must_hold() {
    let dir = TempDir::new();
    let spec = full_spec(&dir);
    let url = "http://api.example.com/v1/users/7";
    picks(&spec, "GET", url, &[], "fallback");
    picks(&spec, "GET", url, &["x-canary: 2"], "fallback");
    picks(&spec, "POST", url, &["x-canary: 1"], "fallback");
    picks(
        &spec,
        "GET",
        "http://api.example.com/v1/usersx",
        &["x-canary: 1"],
        "fallback",
    );
    picks(
        &spec,
        "GET",
        "http://example.com/v1/users",
        &["x-canary: 1"],
        "fallback",
    );
    picks(&spec, "GET", "/items/42/x", &[], "fallback");
    picks(&spec, "GET", "/docs/v01", &[], "fallback");
}

#[test]
fn host_comes_from_the_url_or_the_host_header() {
    let dir = TempDir::new();
    let spec = full_spec(&dir);
    let origin = "/v1/users";
    picks(
        &spec,
        "GET",
        origin,
        &["host: api.example.com", "x-canary: 1"],
        "users-read",
    );
    picks(
        &spec,
        "GET",
        origin,
        &["Host: api.example.com:80", "x-canary: 1"],
        "users-read",
    );
    picks(&spec, "GET", origin, &["x-canary: 1"], "fallback");
    // An absolute URL's authority wins over a Host header.
    let url = "http://other.example.com/v1/users";
    picks(
        &spec,
        "GET",
        url,
        &["host: api.example.com", "x-canary: 1"],
        "fallback",
    );
    // Userinfo is not part of the host.
    let url = "http://user:pw@api.example.com/v1/users";
    picks(&spec, "GET", url, &["x-canary: 1"], "users-read");
}

#[test]
fn a_url_without_path_keeps_its_query() {
    let dir = TempDir::new();
    let spec = full_spec(&dir);
    picks(
        &spec,
        "GET",
        "http://example.com?debug=1",
        &[],
        "root-debug",
    );
    picks(
        &spec,
        "GET",
        "http://example.com:8080?debug=1",
        &[],
        "root-debug",
    );
    picks(
        &spec,
        "GET",
        "HTTP://example.com/?debug=1",
        &[],
        "root-debug",
    );
    picks(&spec, "GET", "/?debug=1", &[], "root-debug");
    picks(&spec, "GET", "http://example.com", &[], "fallback");
    picks(&spec, "GET", "http://example.com?debug=2", &[], "fallback");
    picks(&spec, "GET", "http://example.com#?debug=1", &[], "fallback");
}

#[test]
fn no_route_exits_1() {
    let dir = TempDir::new();
    let spec = dir.write("gateway.kdl", &format!("{PREAMBLE}{NO_FALLBACK}"));
    picks(&spec, "POST", "http://a.example.com/x", &[], "write");
    for (method, url) in [
        ("GET", "http://a.example.com/x"),
        ("POST", "http://example.com/x"),
        ("GET", "/"),
    ] {
        let (code, stdout) = route_in(&spec, method, url, &[]);
        assert_eq!(code, Some(1), "{method} {url}");
        assert!(stdout.contains("no route"), "{stdout}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::new();
    let spec = full_spec(&dir);
    for (method, url, headers) in [
        ("GET", "ftp://example.com/", &[][..]),
        ("GET", "example.com/x", &[]),
        ("GET", "http:///x", &[]),
        ("GET", "http://:80/x", &[]),
        ("GET", "/a%zz", &[]),
        ("GET", "/", &["no-colon"][..]),
        ("GET", "/", &[": value"]),
        ("GET", "/", &["bad name: x"]),
        ("G T", "/", &[]),
        ("", "/", &[]),
    ] {
        let (code, _) = route_in(&spec, method, url, headers);
        assert_eq!(code, Some(2), "{method:?} {url} {headers:?}");
    }
    // Missing arguments, a missing file, a spec that does not check.
    assert_eq!(
        blitzc(&["route", spec.to_str().expect("utf-8"), "GET"])
            .status
            .code(),
        Some(2)
    );
    let missing = dir.0.join("missing.kdl");
    assert_eq!(route_in(&missing, "GET", "/", &[]).0, Some(2));
    let broken = dir.write("broken.kdl", "version 1\nroute \"x\" {\n");
    assert_eq!(route_in(&broken, "GET", "/", &[]).0, Some(2));
    let unknown = dir.write(
        "unknown.kdl",
        &format!("{PREAMBLE}route \"r\" {{\n    proxy \"nope\"\n}}\n"),
    );
    assert_eq!(route_in(&unknown, "GET", "/", &[]).0, Some(2));
}

#[test]
fn shadowed_routes_still_route_with_a_note() {
    let dir = TempDir::new();
    let text = format!(
        "{PREAMBLE}{}",
        r#"
route "get" {
    match { path-prefix "/v1"; method "GET"; }
    proxy "users"
}
route "post" {
    match { path-prefix "/v1"; method "POST"; }
    proxy "users"
}
route "both" {
    match { path-prefix "/v1/users"; method "GET" "POST"; }
    proxy "users"
}
"#
    );
    let spec = dir.write("shadow.kdl", &text);
    let out = blitzc(&["route", spec.to_str().expect("utf-8"), "POST", "/v1/users"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "post");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("route `both` can never match (B050"),
        "{stderr}"
    );

    let out = blitzc(&["check", "--format", "github", spec.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("title=B050::route `both` can never match"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("B050").count(), 1, "{stdout}");
}
