//! Every example spec with a KDL and a TOML form: both check clean and lower
//! to the same model (SPEC.md: "turning one form into the other must give the
//! same compiled gateway").

use blitzc::diag::render::{self, Format, Report};
use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn check_clean(path: &Path) -> blitz_ir::Spec {
    let checked =
        blitzc::check_path(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let report = [Report {
        file: &checked.file,
        diagnostics: &checked.diagnostics,
    }];
    // Clean means exit 0: no errors (the SPEC.md example warns that its
    // `sessions` upstream is unused, rightly).
    assert!(
        !checked.has_errors(),
        "{} has errors:\n{}",
        path.display(),
        render::render(&report, Format::Human, false)
    );
    checked.spec.expect("a spec without errors lowers")
}

#[test]
fn kdl_and_toml_twins_lower_to_equal_models() {
    let mut twins = 0;
    for entry in std::fs::read_dir(examples_dir()).expect("examples/ exists") {
        let kdl = entry.expect("readable dir entry").path();
        if kdl.extension().is_none_or(|e| e != "kdl") {
            continue;
        }
        let toml = kdl.with_extension("toml");
        assert!(toml.exists(), "{} has no TOML twin", kdl.display());
        let from_kdl = check_clean(&kdl);
        let from_toml = check_clean(&toml);
        assert_eq!(
            from_kdl.canonical_json(),
            from_toml.canonical_json(),
            "{} and its TOML twin lower to different models",
            kdl.display()
        );
        twins += 1;
    }
    assert!(
        twins >= 2,
        "expected at least the quickstart and edge twins, found {twins}"
    );
}

#[test]
fn the_model_is_not_trivially_equal() {
    // Guards the comparison above: a changed value must change the model.
    let a = check_clean(&examples_dir().join("quickstart.kdl"));
    let text = std::fs::read_to_string(examples_dir().join("quickstart.kdl")).expect("readable");
    let changed = text.replace("hello from blitz", "hello from elsewhere");
    let b = blitzc::check(blitzc::diag::SourceFile::new(
        examples_dir().join("quickstart.kdl"),
        changed,
    ));
    let b = b.spec.expect("still lowers");
    assert_ne!(a.canonical_json(), b.canonical_json());
}
