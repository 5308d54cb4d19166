//! Golden files of the generated code: every example spec's generated
//! `gateway.rs` is checked in under `blitzc/tests/golden/`, so a change to
//! the code generator shows up as a reviewable diff. On a mismatch the test
//! fails; `BLESS=1 cargo test -p blitzc --test golden` rewrites the files.

use blitzc::diag::SourceFile;
use std::path::{Path, PathBuf};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .collect();
    specs.sort();
    specs
}

fn generate(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("readable spec");
    // The real path: file rules (certificates, keys) resolve against it.
    // Generated code names the file, and the certificate paths resolved
    // against it: those are shown relative to `<examples>` so the output
    // stays the same wherever the checkout lies.
    let checked = blitzc::check(SourceFile::new(path, text));
    assert!(
        !checked.has_errors(),
        "{} has errors: {:?}",
        path.display(),
        checked.diagnostics
    );
    let spec = checked.spec.as_ref().expect("lowered");
    let code = blitzc::codegen::generate(spec, &checked.file).code;
    let dir = path.parent().expect("spec folder").display().to_string();
    code.replace(&dir, "<examples>")
}

/// `code` as tokens, without its layout: how prettyplease wraps a line
/// holding a path depends on the path's length, i.e. on where the checkout
/// lies, so the files are compared token by token.
fn unwrapped(code: &str) -> String {
    code.parse::<proc_macro2::TokenStream>()
        .map_or_else(|e| format!("unparsable: {e}"), |t| t.to_string())
}

#[test]
fn generated_code_matches_the_golden_files() {
    let bless = std::env::var_os("BLESS").is_some();
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut mismatches = Vec::new();
    for spec in examples() {
        let code = generate(&spec);
        let stem = spec
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let golden = golden_dir.join(format!("{stem}.gateway.rs"));
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if unwrapped(&code) != unwrapped(&expected) {
            if bless {
                std::fs::write(&golden, &code).expect("golden file written");
            } else {
                mismatches.push(golden.display().to_string());
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "generated code differs from {mismatches:?}; review and run `BLESS=1 cargo test -p blitzc --test golden`"
    );
}

#[test]
fn generation_is_deterministic() {
    for spec in examples() {
        assert_eq!(
            generate(&spec),
            generate(&spec),
            "{} generates differently twice",
            spec.display()
        );
    }
}

#[test]
fn the_kdl_and_toml_forms_generate_the_same_gateway() {
    for kdl in examples() {
        let toml = kdl.with_extension("toml");
        let from_toml = generate(&toml).replace(".toml", ".kdl");
        // Only the origin comments' line numbers may differ between forms.
        let strip = |code: &str| {
            code.lines()
                .filter(|l| !l.trim_start().starts_with("///"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            strip(&generate(&kdl)),
            strip(&from_toml),
            "{} and its TOML twin differ",
            kdl.display()
        );
    }
}

/// A route's test function is warning-free code: a lone condition of
/// several values is its bare body (rustc flags `{ (a || b) }` with
/// `unused_parens` on every `blitzc build`), and the same alternatives
/// joined with another condition keep their parentheses.
#[test]
fn alternatives_are_parenthesised_only_when_joined() {
    let text = r#"version 1
listener "l" { bind "127.0.0.1:8080" }
route "lone" { match { path-prefix "/a" "/b" }; respond 200 }
route "joined" { match { method "GET"; path-prefix "/c" "/d" }; respond 200 }
"#;
    let checked = blitzc::check(SourceFile::new(Path::new("parens.kdl"), text.to_string()));
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let spec = checked.spec.as_ref().expect("lowered");
    let code = unwrapped(&blitzc::codegen::generate(spec, &checked.file).code);
    assert!(
        code.contains(r#"-> bool { has_prefix (path , b"/a") || has_prefix (path , b"/b") }"#),
        "{code}"
    );
    assert!(
        code.contains(r#"bool { (has_prefix (path , b"/c") || has_prefix (path , b"/d")) &&"#),
        "{code}"
    );
}
