//! The generated router against the reference interpreter, on one fixed
//! spec (`specs/route_matcher.kdl`: every matcher kind, overlapping routes,
//! exact, wildcard, IPv4 and IPv6 hosts).
//!
//! The input is the bytes of an HTTP/1.1 request head. When the runtime's
//! own parser accepts it (`parse_request_head`, as the gateway does before
//! routing), the code blitzc generates for the spec (built into this binary
//! by `build.rs`) and `Interpreter::route_index` over the same spec (what
//! `blitzc dev` runs, through `blitz_ir::matcher::Router`) must pick the
//! same route, or both none. Heads the parser refuses never reach routing
//! and are not compared.
#![no_main]

use blitz_runtime::Gateway as _;
use blitz_runtime::http::{HeadLimits, RequestHead, parse_request_head};
use blitz_runtime::interp::Interpreter;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// The gateway blitzc generates for the spec (see `build.rs`), with the
/// lints its dropped `#![allow(..)]` silenced, and `unused_parens`: a
/// route whose only condition has several `path-prefix` or `path-regex`
/// values is emitted as `(a || b)`, which rustc flags.
#[allow(
    clippy::all,
    dead_code,
    unused_imports,
    unused_variables,
    unused_parens
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/route_matcher_gateway.rs"));
}

const SPEC_PATH: &str = "specs/route_matcher.kdl";
const SPEC_TEXT: &str = include_str!("../specs/route_matcher.kdl");

/// The two routers, built once per process. The interpreter gets the spec
/// from the same front end `blitzc dev` uses, not from the generated code.
struct Routers {
    generated: generated::Generated,
    interpreter: Interpreter,
}

static ROUTERS: LazyLock<Routers> = LazyLock::new(|| {
    let checked = blitzc::check(blitzc::diag::SourceFile::new(SPEC_PATH, SPEC_TEXT));
    assert!(!checked.has_errors(), "{:#?}", checked.diagnostics);
    let spec = Box::leak(Box::new(checked.spec.expect("the spec lowers")));
    Routers {
        generated: generated::Generated::new(),
        interpreter: Interpreter::new(spec).expect("the spec's regexes compile"),
    }
});

fuzz_target!(|data: &[u8]| {
    let routers = &*ROUTERS;
    let mut head = RequestHead::default();
    let Ok(Some(_)) = parse_request_head(data, &HeadLimits::default(), &mut head) else {
        return;
    };
    let compiled = routers.generated.route(&head).name();
    let interpreted = routers
        .interpreter
        .route_index(&head)
        .map(|i| routers.interpreter.spec().routes[i].name.value.as_str());
    assert_eq!(
        compiled,
        interpreted,
        "generated router vs interpreter: method {:?}, host {:?}, target {:?}, \
         normalised path {:?}, headers {:?}",
        head.method(),
        String::from_utf8_lossy(head.host()),
        String::from_utf8_lossy(head.target()),
        String::from_utf8_lossy(head.path_only()),
        head.headers()
            .iter()
            .map(|(n, v)| (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned()
            ))
            .collect::<Vec<_>>(),
    );
});
