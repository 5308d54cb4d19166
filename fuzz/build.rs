//! Generates the router of `specs/route_matcher.kdl` for the `route_matcher`
//! target: blitzc's own code generator (as a library, the same call
//! `blitzc build` makes) writes the gateway module into `OUT_DIR`, and the
//! target `include!`s it. Generating at build time keeps the fuzzed code
//! what the current blitzc emits, with nothing generated checked in.

use std::path::PathBuf;

const SPEC: &str = "specs/route_matcher.kdl";

fn main() {
    println!("cargo::rerun-if-changed={SPEC}");
    println!("cargo::rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(SPEC).expect("the route_matcher spec is readable");
    let checked = blitzc::check(blitzc::diag::SourceFile::new(SPEC, text));
    // A warning (a shadowed route, say) would make part of the spec
    // unreachable and the fuzzing weaker: the spec must be clean.
    assert!(
        checked.diagnostics.is_empty(),
        "{SPEC} must check without diagnostics: {:#?}",
        checked.diagnostics
    );
    let spec = checked.spec.as_ref().expect("a spec without errors lowers");
    let source = blitzc::codegen::generate(spec, &checked.file);
    // The generated file is a crate module with inner attributes (`//!`
    // docs, `#![allow(..)]`), which `include!` cannot take: drop them; the
    // target wraps the module in its own `#![allow(..)]`.
    let body: String = source
        .code
        .lines()
        .filter(|line| !line.starts_with("//!") && !line.starts_with("#!["))
        .flat_map(|line| [line, "\n"])
        .collect();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("route_matcher_gateway.rs"), body).expect("write the generated router");
}
