//! Generates the routers of the `route_matcher` target's specs: blitzc's
//! own code generator (as a library, the same call `blitzc build` makes)
//! writes each spec's gateway module into `OUT_DIR` as `NAME_gateway.rs`,
//! and the target `include!`s them. Generating at build time keeps the
//! fuzzed code what the current blitzc emits, with nothing generated
//! checked in.

use std::path::PathBuf;

/// `specs/NAME.kdl`, one generated module each.
const SPECS: &[&str] = &["route_matcher", "route_matcher_catch_all"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in SPECS {
        let path = format!("specs/{name}.kdl");
        println!("cargo::rerun-if-changed={path}");
        let text = std::fs::read_to_string(&path).expect("the spec is readable");
        let checked = blitzc::check(blitzc::diag::SourceFile::new(&path, text));
        // A warning (a shadowed route, say) would make part of the spec
        // unreachable and the fuzzing weaker: the spec must be clean.
        assert!(
            checked.diagnostics.is_empty(),
            "{path} must check without diagnostics: {:#?}",
            checked.diagnostics
        );
        let spec = checked.spec.as_ref().expect("a spec without errors lowers");
        let source = blitzc::codegen::generate(spec, &checked.file);
        // The generated file is a crate module with inner attributes (`//!`
        // docs, `#![allow(..)]`), which `include!` cannot take: drop them;
        // the target wraps the module in its own `#[allow(..)]`.
        let body: String = source
            .code
            .lines()
            .filter(|line| !line.starts_with("//!") && !line.starts_with("#!["))
            .flat_map(|line| [line, "\n"])
            .collect();
        std::fs::write(out.join(format!("{name}_gateway.rs")), body)
            .expect("write the generated router");
    }
}
