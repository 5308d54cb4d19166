//! Differential test of routing: for random specs (random matchers over a
//! small vocabulary, so routes overlap) and random requests, four deciders
//! must pick the same route:
//!
//! 1. the generated code (compiled with cargo, on the runtime's parsed head),
//! 2. the runtime's reference interpreter (same parsed head),
//! 3. the IR's reference matcher, on the request as sent,
//! 4. `blitzc route` (for a sample), the command users run.
//!
//! All generated gateways go into one harness crate, so cargo runs once.
//! The seed is fixed for reproducibility; `BLITZ_DIFF_SEED` picks another.

use blitz_ir::matcher::{RequestHead, Router};
use blitzc::diag::{Code, SourceFile};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const SPECS: usize = 40;
const REQUESTS: usize = 400;

/// xorshift64*: small, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn some<'a>(&mut self, items: &[&'a str], max: usize) -> Vec<&'a str> {
        let n = 1 + self.below(max);
        let mut out: Vec<&str> = (0..n).map(|_| self.pick(items)).collect();
        out.sort();
        out.dedup();
        out
    }
}

const HOST_PATTERNS: &[&str] = &[
    "a.example.com",
    "b.example.com",
    "*.example.com",
    "*.a.example.com",
    "api.test",
];
const EXACT_PATHS: &[&str] = &[
    "/",
    "/v1",
    "/v1/users",
    "/v1/users/",
    "/v2/items/7",
    "/static/app.css",
];
const PREFIXES: &[&str] = &["/", "/v1", "/v1/users", "/v2", "/static", "/v2/items"];
const REGEXES: &[&str] = &["/v[0-9]+/users/[0-9]+", "/static/.*\\.css", "/v2/.*"];
const METHODS: &[&str] = &["GET", "POST", "HEAD", "DELETE"];
const HEADER_VALUES: &[&str] = &["1", "2"];

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn random_spec(rng: &mut Rng) -> String {
    let mut spec = String::from("version 1\nlistener \"l\" {\n    bind \"127.0.0.1:1\"\n}\n");
    let routes = 1 + rng.below(12);
    for r in 0..routes {
        let _ = writeln!(spec, "route \"r{r}\" {{");
        if !rng.chance(10) {
            spec.push_str("    match {\n");
            if rng.chance(45) {
                let _ = writeln!(spec, "        host {}", quoted(&rng.some(HOST_PATTERNS, 2)));
            }
            match rng.below(5) {
                0 => {
                    let _ = writeln!(spec, "        path {}", quoted(&rng.some(EXACT_PATHS, 2)));
                }
                1 | 2 => {
                    let _ = writeln!(
                        spec,
                        "        path-prefix {}",
                        quoted(&rng.some(PREFIXES, 2))
                    );
                }
                3 => {
                    let _ = writeln!(spec, "        path-regex {}", quoted(&rng.some(REGEXES, 1)));
                }
                _ => {}
            }
            if rng.chance(40) {
                let _ = writeln!(spec, "        method {}", quoted(&rng.some(METHODS, 2)));
            }
            if rng.chance(25) {
                if rng.chance(50) {
                    let _ = writeln!(
                        spec,
                        "        header \"x-canary\" {}",
                        quoted(&rng.some(HEADER_VALUES, 2))
                    );
                } else {
                    spec.push_str("        header \"X-Tenant\"\n");
                }
            }
            if rng.chance(20) {
                if rng.chance(50) {
                    spec.push_str("        query \"debug\"\n");
                } else {
                    let _ = writeln!(
                        spec,
                        "        query \"page\" {}",
                        quoted(&rng.some(HEADER_VALUES, 2))
                    );
                }
            }
            spec.push_str("    }\n");
        }
        let _ = writeln!(spec, "    respond 200 body=\"r{r}\"\n}}");
    }
    spec
}

/// One request: the fields for the reference matcher and the raw bytes.
struct Request {
    method: String,
    host: String,
    target: String,
    headers: Vec<(String, String)>,
    /// Also an `x-tenant` line whose value is obs-text (byte 0xE9, not
    /// UTF-8): RFC 9110 allows it, and it is present like any other.
    obs_text: bool,
}

impl Request {
    fn raw(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: {}\r\n",
            self.method, self.target, self.host
        );
        for (n, v) in &self.headers {
            let _ = write!(out, "{n}: {v}\r\n");
        }
        let mut out = out.into_bytes();
        if self.obs_text {
            out.extend_from_slice(b"x-tenant: caf\xe9\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

fn random_request(rng: &mut Rng) -> Request {
    const HOSTS: &[&str] = &[
        "a.example.com",
        "A.Example.COM:8080",
        "b.example.com",
        "x.a.example.com",
        "a.example.com.",
        "example.com",
        "api.test",
        "other.test",
        "deep.x.a.example.com",
        "a.example.com..",
    ];
    const PATHS: &[&str] = &[
        "/",
        "/v1",
        "/v1/",
        "/v1/users",
        "/v1/users/",
        "/v1/users/42",
        "/v1/usersx",
        "/v2/items/7",
        "/v2/items/7/../8",
        "/v1/./users/9",
        "//v1//users",
        "/%76%31/users/3",
        "/static/app.css",
        "/static/a/b.css",
        "/static",
        "/v3/users/1",
        "/other",
        "/v1/users/../../v2",
    ];
    const QUERIES: &[&str] = &[
        "",
        "?debug",
        "?debug=1",
        "?page=1",
        "?page=2&x=y",
        "?page=3",
        "?a=1&page=2",
    ];
    let mut headers = Vec::new();
    if rng.chance(40) {
        headers.push((
            "X-Canary".to_string(),
            rng.pick(&["1", "2", "3"]).to_string(),
        ));
    }
    if rng.chance(25) {
        headers.push(("x-tenant".to_string(), "t".to_string()));
    }
    // `OPTIONS *`: a target without a path, which no route matches.
    let (method, target) = if rng.chance(3) {
        ("OPTIONS".to_string(), "*".to_string())
    } else {
        (
            rng.pick(METHODS).to_string(),
            format!("{}{}", rng.pick(PATHS), rng.pick(QUERIES)),
        )
    };
    Request {
        method,
        host: rng.pick(HOSTS).to_string(),
        target,
        headers,
        obs_text: rng.chance(10),
    }
}

fn reference(router: &Router<'_>, req: &Request) -> Option<usize> {
    let mut headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    if req.obs_text {
        headers.push(("x-tenant", b"caf\xe9"));
    }
    let head = RequestHead {
        method: &req.method,
        host: &req.host,
        target: &req.target,
        headers: &headers,
    };
    match router.route(&head) {
        Ok(route) => route,
        // Only `*` has no path: it matches no route (a 404).
        Err(_) if req.target == "*" => None,
        Err(e) => panic!("{}: {e:?}", req.target),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const HARNESS_MAIN: &str = r#"//! Reads hex-encoded raw requests (one per line) from the file in argv[1]
//! and prints, for every spec module and request, the route the compiled
//! gateway and the interpreter choose: `SPEC REQUEST COMPILED INTERPRETED`.
use blitz_runtime::Gateway;
use blitz_runtime::http::{HeadLimits, RequestHead, parse_request_head};
use blitz_runtime::interp::Interpreter;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// One spec module: the compiled gateway and the interpreter of its IR.
fn run<G: Gateway>(k: usize, compiled: G, name: fn(G::Route) -> Option<&'static str>, ir: &str, requests: &[Vec<u8>]) {
    let spec = Interpreter::leak_from_json(ir).unwrap();
    let interp = Interpreter::new(spec).unwrap();
    for (i, raw) in requests.iter().enumerate() {
        let mut head = RequestHead::default();
        match parse_request_head(raw, &HeadLimits::default(), &mut head) {
            Ok(Some(_)) => {
                let c = name(compiled.route(&head)).unwrap_or("-");
                let n = interp.route(&head).map_or("-".to_string(), |r| spec.routes[r].name.value.clone());
                println!("{k} {i} {c} {n}");
            }
            other => println!("{k} {i} REJECT {other:?}"),
        }
    }
}
"#;

#[test]
fn compiled_interpreted_and_reference_routing_agree() {
    let seed = std::env::var("BLITZ_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_b117_2026u64);
    let mut rng = Rng(seed | 1);
    let requests: Vec<Request> = (0..REQUESTS).map(|_| random_request(&mut rng)).collect();
    let work = scratch_dir().join("differential");
    let src = work.join("src");
    std::fs::create_dir_all(&src).expect("scratch dir");

    let mut specs = Vec::new();
    for k in 0..SPECS {
        let text = random_spec(&mut rng);
        let checked = blitzc::check(SourceFile::new(format!("spec_{k}.kdl"), text.clone()));
        let unexpected: Vec<_> = checked
            .diagnostics
            .iter()
            .filter(|d| d.is_error() && d.code != Code::ShadowedRoute)
            .collect();
        assert!(
            unexpected.is_empty(),
            "generated spec {k} is invalid: {unexpected:?}\n{text}"
        );
        let spec = checked.spec.clone().expect("lowers");
        let source = blitzc::codegen::generate(&spec, &checked.file);
        std::fs::write(src.join(format!("spec_{k}.rs")), &source.code).expect("write module");
        std::fs::write(
            src.join(format!("spec_{k}.json")),
            serde_json::to_string(&spec).expect("IR serializes"),
        )
        .expect("write IR");
        specs.push((text, spec));
    }
    let mut main = String::from(HARNESS_MAIN);
    for k in 0..SPECS {
        let _ = writeln!(main, "mod spec_{k};");
    }
    main.push_str("\nfn main() {\n    let text = std::fs::read_to_string(std::env::args().nth(1).unwrap()).unwrap();\n    let requests: Vec<Vec<u8>> = text.lines().map(unhex).collect();\n");
    for k in 0..SPECS {
        let _ = writeln!(
            main,
            "    run({k}, spec_{k}::Generated::new(), spec_{k}::Route::name, include_str!(\"spec_{k}.json\"), &requests);"
        );
    }
    main.push_str("}\n");
    std::fs::write(src.join("main.rs"), main).expect("write main");
    let runtime = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime"))
        .expect("runtime");
    let manifest = format!(
        "[package]\nname = \"blitz-differential\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\nblitz-runtime = {{ path = {:?}, features = [\"regex\", \"interp\"] }}\n\n[workspace]\n",
        runtime.display().to_string()
    );
    std::fs::write(work.join("Cargo.toml"), manifest).expect("write manifest");
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    if !work.join("Cargo.lock").exists() {
        std::fs::copy(lock, work.join("Cargo.lock")).expect("copy lock file");
    }
    let requests_file = work.join("requests.hex");
    std::fs::write(
        &requests_file,
        requests
            .iter()
            .map(|r| hex(&r.raw()) + "\n")
            .collect::<String>(),
    )
    .expect("write requests");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = scratch_dir().join("target");
    let output = Command::new(cargo)
        .args(["run", "--quiet", "--manifest-path"])
        .arg(work.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .arg("--")
        .arg(&requests_file)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "harness failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");

    let routers: Vec<Router<'_>> = specs
        .iter()
        .map(|(_, s)| Router::new(s).expect("regexes compile"))
        .collect();
    let mut compared = 0;
    let mut matched_some = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (k, i): (usize, usize) = (
            fields[0].parse().expect("spec"),
            fields[1].parse().expect("request"),
        );
        assert_ne!(
            fields[2], "REJECT",
            "the runtime rejected a valid request: {line}\n{}",
            requests[i].target
        );
        let (compiled, interpreted) = (fields[2], fields[3]);
        let expected =
            reference(&routers[k], &requests[i]).map_or("-".to_string(), |r| format!("r{r}"));
        let req = &requests[i];
        assert_eq!(
            (compiled, interpreted),
            (expected.as_str(), expected.as_str()),
            "spec {k}, request `{} {} host={} {:?} obs-text={}`:\n{}",
            req.method,
            req.target,
            req.host,
            req.headers,
            req.obs_text,
            specs[k].0
        );
        compared += 1;
        matched_some += usize::from(expected != "-");
    }
    assert_eq!(
        compared,
        SPECS * REQUESTS,
        "every request of every spec was decided"
    );
    // Guard against a vacuous pass: most requests should hit some route.
    assert!(
        matched_some > compared / 3,
        "only {matched_some} of {compared} requests matched a route"
    );

    // `blitzc route` agrees with the reference matcher on a sample.
    let blitzc = env!("CARGO_BIN_EXE_blitzc");
    for (k, (text, spec)) in specs.iter().enumerate().take(4) {
        let path = work.join(format!("spec_{k}.kdl"));
        std::fs::write(&path, text).expect("write spec");
        // (argv carries neither `*` as a URL nor obs-text.)
        let sample = requests.iter().filter(|r| r.target != "*" && !r.obs_text);
        for req in sample.take(25) {
            let mut cmd = Command::new(blitzc);
            cmd.arg("route")
                .arg(&path)
                .arg(&req.method)
                .arg(format!("http://{}{}", req.host, req.target));
            for (n, v) in &req.headers {
                cmd.arg("-H").arg(format!("{n}: {v}"));
            }
            let out = cmd.output().expect("blitzc runs");
            let expected = reference(&routers[k], req);
            match expected {
                Some(r) => {
                    assert_eq!(out.status.code(), Some(0));
                    assert_eq!(
                        String::from_utf8_lossy(&out.stdout).trim(),
                        spec.routes[r].name.value
                    );
                }
                None => assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{:?}",
                    String::from_utf8_lossy(&out.stdout)
                ),
            }
        }
    }
}

/// A folder for the harness crate and its target directory, kept between
/// runs so cargo only rebuilds what changed.
fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
