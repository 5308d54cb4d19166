//! The generated router against the reference interpreter, on fixed specs:
//! `specs/route_matcher.kdl` (every matcher kind, overlapping routes, exact,
//! wildcard, IPv4 and IPv6 hosts, no catch-all) and
//! `specs/route_matcher_catch_all.kdl` (a route without `match` last).
//!
//! The input is the bytes of an HTTP/1.1 request head. When the runtime's
//! own parser accepts it (`parse_request_head`, as the gateway does before
//! routing), the code blitzc generates for each spec (built into this
//! binary by `build.rs`) and `Interpreter::route_index` over the same spec
//! (what `blitzc dev` runs, through `blitz_ir::matcher::Router`) must pick
//! the same route, or both none. Heads the parser refuses never reach
//! routing and are not compared.
#![no_main]

use blitz_runtime::Gateway;
use blitz_runtime::http::{HeadLimits, RequestHead, parse_request_head};
use blitz_runtime::interp::Interpreter;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// The gateways blitzc generates for the specs (see `build.rs`), with the
/// lints of their dropped `#![allow(..)]` silenced.
macro_rules! generated_module {
    ($module:ident, $file:literal) => {
        #[allow(
            clippy::all,
            dead_code,
            unused_imports,
            unused_variables
        )]
        mod $module {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}
generated_module!(rich, "route_matcher_gateway.rs");
generated_module!(catch_all, "route_matcher_catch_all_gateway.rs");

/// A generated gateway's choice for a head: the route's name, or `None`.
type GeneratedRoute = Box<dyn Fn(&RequestHead) -> Option<&'static str> + Send + Sync>;

/// One spec: the route its generated gateway picks (by name), and the
/// interpreter over the spec as the front end `blitzc dev` uses reads it
/// (not from the generated code).
struct Routers {
    spec_path: &'static str,
    generated: GeneratedRoute,
    interpreter: Interpreter,
}

impl Routers {
    fn new(
        spec_path: &'static str,
        spec_text: &'static str,
        generated: impl Fn(&RequestHead) -> Option<&'static str> + Send + Sync + 'static,
    ) -> Self {
        let checked = blitzc::check(blitzc::diag::SourceFile::new(spec_path, spec_text));
        assert!(!checked.has_errors(), "{:#?}", checked.diagnostics);
        let spec = Box::leak(Box::new(checked.spec.expect("the spec lowers")));
        Routers {
            spec_path,
            generated: Box::new(generated),
            interpreter: Interpreter::new(spec).expect("the spec's regexes compile"),
        }
    }
}

static ROUTERS: LazyLock<[Routers; 2]> = LazyLock::new(|| {
    let rich = rich::Generated::new();
    let catch_all = catch_all::Generated::new();
    [
        Routers::new(
            "specs/route_matcher.kdl",
            include_str!("../specs/route_matcher.kdl"),
            move |head| rich.route(head).name(),
        ),
        Routers::new(
            "specs/route_matcher_catch_all.kdl",
            include_str!("../specs/route_matcher_catch_all.kdl"),
            move |head| catch_all.route(head).name(),
        ),
    ]
});

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    let Ok(Some(_)) = parse_request_head(data, &HeadLimits::default(), &mut head) else {
        return;
    };
    for routers in &*ROUTERS {
        let compiled = (routers.generated)(&head);
        let interpreted = routers
            .interpreter
            .route_index(&head)
            .map(|i| routers.interpreter.spec().routes[i].name.value.as_str());
        assert_eq!(
            compiled,
            interpreted,
            "{}: generated router vs interpreter: method {:?}, host {:?}, target {:?}, \
             normalised path {:?}, headers {:?}",
            routers.spec_path,
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
    }
});
