//! The gateways of the decision benchmark (generated into `src/gateways/` by
//! `blitz-bench-prep`) and the requests they are timed on.
//!
//! Each spec is decided two ways on the same parsed heads: the compiled
//! gateway's `Generated::route` and the reference interpreter's
//! `Interpreter::route`, both as the runtime calls them.

use blitz_runtime::Gateway;
use blitz_runtime::http::{HeadLimits, RequestHead, parse_request_head};
use blitz_runtime::interp::Interpreter;
use std::hint::black_box;

mod gateways;

/// One generated gateway and its interpreter.
pub struct Spec {
    /// `N` or `N` plus a variant (`1000api`): names `requests-ID.txt`.
    pub id: &'static str,
    pub routes: usize,
    pub interp: Interpreter,
    /// The compiled decision, as a route name (for the agreement check).
    pub compiled_name: Box<dyn Fn(&RequestHead) -> Option<&'static str>>,
    /// Decides every head with the compiled gateway; the loop is
    /// monomorphic, so the timing has one indirect call per batch.
    pub compiled_batch: Box<dyn Fn(&[RequestHead])>,
}

impl Spec {
    fn new<G: Gateway>(id: &'static str, json: &str, compiled: G, name: fn(G::Route) -> Option<&'static str>) -> Spec {
        let ir = Interpreter::leak_from_json(json).expect("IR parses");
        let interp = Interpreter::new(ir).expect("interpreter starts");
        let compiled: &'static G = Box::leak(Box::new(compiled));
        Spec {
            id,
            routes: ir.routes.len(),
            interp,
            compiled_name: Box::new(move |h| name(compiled.route(h))),
            compiled_batch: Box::new(move |heads| {
                for h in heads {
                    black_box(compiled.route(black_box(h)));
                }
            }),
        }
    }

    /// Decides every head with the interpreter.
    pub fn interp_batch(&self, heads: &[RequestHead]) {
        for h in heads {
            black_box(self.interp.route(black_box(h)));
        }
    }

    /// The interpreter's decision as a route name.
    pub fn interp_name(&self, h: &RequestHead) -> Option<&'static str> {
        self.interp.route(h).map(|i| self.interp.spec().routes[i].name.value.as_str())
    }
}

/// Every generated gateway, smallest first (a variant after its plain size).
pub fn specs() -> Vec<Spec> {
    let mut specs = gateways::specs();
    specs.sort_by_key(|s| (s.routes, s.id));
    specs
}

/// A request of the sample: what it was aimed at and its parsed head.
pub struct Sample {
    /// `hit` (aimed at route `target`) or `miss`.
    pub kind: String,
    pub target: Option<usize>,
    pub head: RequestHead,
}

/// Reads `requests-N.txt` (`KIND TARGET HEX` lines) and parses each head
/// with the runtime's parser.
pub fn samples(path: &std::path::Path) -> Vec<Sample> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let mut f = line.split(' ');
            let kind = f.next().expect("kind").to_string();
            let target = f.next().expect("target").parse::<i64>().expect("number");
            let hex = f.next().expect("hex");
            let raw: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
            let mut head = RequestHead::default();
            match parse_request_head(&raw, &HeadLimits::default(), &mut head) {
                Ok(Some(_)) => {}
                other => panic!("sample does not parse: {other:?}: {}", String::from_utf8_lossy(&raw)),
            }
            Sample { kind, target: usize::try_from(target).ok(), head }
        })
        .collect()
}
