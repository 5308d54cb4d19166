//! The invalid-spec corpus, `tests/specs/invalid/`: every file produces
//! exactly the diagnostics its first line states (code, line, column), each
//! with a label and a help line; its human and GitHub renderings are
//! snapshot-tested (`blitzc/tests/snapshots/`); every code a spec can
//! trigger has a file; the JSON and SARIF renderings carry the same
//! positions. And the example specs in `examples/` check clean.
//!
//! Accept changed snapshots after reviewing them:
//! `INSTA_UPDATE=always cargo test -p blitzc --test invalid_specs`
//! (or `cargo insta review`), then read the diff.
#![allow(clippy::unwrap_used)]

mod common;

use blitzc::diag::Code;
use blitzc::diag::render::Format;
use common::{Case, corpus, show};
use serde_json::Value;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Codes no spec file can trigger: B004 is about the file name, not its
/// text; B100 comes from `blitzc build`, not `check`.
const NOT_FROM_A_SPEC: &[Code] = &[Code::UnknownFormat, Code::Unsupported];

#[test]
fn every_invalid_spec_gives_exactly_its_expected_diagnostics() {
    let cases = corpus();
    assert!(
        cases.len() >= 60,
        "the corpus has only {} files",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let checked = case.check();
        let actual = case.actual(&checked);
        let expected = match &case.expected {
            Ok(expected) => expected,
            Err(problem) => {
                failures.push(format!("{problem}\n  actual:   {}", show(&actual)));
                continue;
            }
        };
        if actual != *expected {
            failures.push(format!(
                "{}\n  expected: {}\n  actual:   {}\n{}",
                case.name,
                show(expected),
                show(&actual),
                indent(&case.render(&checked, Format::Human)),
            ));
        }
        for d in &checked.diagnostics {
            let (line, column) = checked.file.line_col(d.span.start);
            if d.label.trim().is_empty() || d.help.trim().is_empty() {
                failures.push(format!(
                    "{}: {}@{line}:{column} has no label or no help",
                    case.name, d.code
                ));
            }
            if d.span.end > checked.file.text.len() || d.span.start > d.span.end {
                failures.push(format!(
                    "{}: {}@{line}:{column} has a span outside the file",
                    case.name, d.code
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files fail:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn human_and_github_renderings_match_their_snapshots() {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let _guard = settings.bind_to_scope();
    let mut failures = Vec::new();
    for case in corpus() {
        let checked = case.check();
        for (format, suffix) in [(Format::Human, "human"), (Format::Github, "github")] {
            let rendered = case.render(&checked, format);
            let name = format!("{}.{suffix}", case.name);
            // Go on after a mismatch, so one run lists every changed snapshot.
            let result = catch_unwind(AssertUnwindSafe(|| {
                insta::assert_snapshot!(name.clone(), rendered);
            }));
            if result.is_err() {
                failures.push(name);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} snapshots differ (review, then accept with \
         `INSTA_UPDATE=always cargo test -p blitzc --test invalid_specs`):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn every_code_a_spec_can_trigger_has_a_corpus_file() {
    let cases = corpus();
    let covered: BTreeSet<&str> = cases
        .iter()
        .flat_map(|c| c.expected_or_none().iter().map(|e| e.code.as_str()))
        .collect();
    let missing: Vec<String> = Code::ALL
        .iter()
        .filter(|code| !NOT_FROM_A_SPEC.contains(code))
        .filter(|code| !covered.contains(code.as_str()))
        .map(|code| format!("{code} ({})", code.slug()))
        .collect();
    assert!(
        missing.is_empty(),
        "no file in tests/specs/invalid/ expects: {}",
        missing.join(", ")
    );
    let unknown: Vec<&str> = covered
        .iter()
        .copied()
        .filter(|c| !Code::ALL.iter().any(|code| code.as_str() == *c))
        .collect();
    assert!(
        unknown.is_empty(),
        "the corpus expects unknown codes: {unknown:?}"
    );
    let toml = cases.iter().filter(|c| c.syntax() == "toml").count();
    assert!(toml >= 20, "only {toml} TOML files in the corpus");
}

/// The corpus file `name`.
/// A TOML spec's help lines and labels quote TOML, not KDL: no `name="value"`
/// property, no `#true`/`#false`, no `{ ... }` node block.
#[test]
fn toml_specs_get_help_in_toml_syntax() {
    let kdl_only = ["=\"", "#true", "#false", "\" {"];
    let mut failures = Vec::new();
    for case in corpus().iter().filter(|c| c.syntax() == "toml") {
        for d in case.check().diagnostics {
            for text in [&d.help, &d.label] {
                if let Some(bit) = kdl_only.iter().find(|bit| text.contains(**bit)) {
                    failures.push(format!(
                        "{} {}: `{bit}` in {text:?}",
                        case.name,
                        d.code.as_str()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "KDL syntax in TOML diagnostics:\n{}",
        failures.join("\n")
    );
}

fn case(name: &str) -> Case {
    corpus()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no corpus file {name}"))
}

/// Files whose diagnostics are spread over several lines, with warnings and
/// related spans, in both syntaxes.
const MACHINE_READABLE_SAMPLES: &[&str] = &[
    "020-duplicate-upstream-name.kdl",
    "082-toml-weight-on-round-robin.toml",
    "035-toml-invalid-header-matcher.toml",
];

#[test]
fn json_rendering_carries_code_and_position() {
    for name in MACHINE_READABLE_SAMPLES {
        let case = case(name);
        let checked = case.check();
        let json: Value = serde_json::from_str(&case.render(&checked, Format::Json))
            .unwrap_or_else(|e| panic!("{name}: the JSON output does not parse: {e}"));
        let diagnostics = json["diagnostics"].as_array().expect("a diagnostics array");
        assert_eq!(diagnostics.len(), checked.diagnostics.len(), "{name}");
        for (value, d) in diagnostics.iter().zip(&checked.diagnostics) {
            let (line, column) = checked.file.line_col(d.span.start);
            assert_eq!(value["code"], d.code.as_str(), "{name}: {value}");
            assert_eq!(value["slug"], d.code.slug(), "{name}: {value}");
            assert_eq!(value["line"], line, "{name}: {value}");
            assert_eq!(value["column"], column, "{name}: {value}");
            assert_eq!(
                value["file"],
                case.display_path().as_str(),
                "{name}: {value}"
            );
            assert_eq!(value["message"], d.message.as_str(), "{name}: {value}");
            assert_eq!(value["help"], d.help.as_str(), "{name}: {value}");
            let severity = if d.is_error() { "error" } else { "warning" };
            assert_eq!(value["severity"], severity, "{name}: {value}");
        }
        let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
        assert_eq!(json["summary"]["errors"], errors, "{name}");
        assert_eq!(
            json["summary"]["warnings"],
            checked.diagnostics.len() - errors,
            "{name}"
        );
    }
}

#[test]
fn sarif_rendering_is_sarif_2_1_0_with_rules_and_regions() {
    for name in MACHINE_READABLE_SAMPLES {
        let case = case(name);
        let checked = case.check();
        let sarif: Value = serde_json::from_str(&case.render(&checked, Format::Sarif))
            .unwrap_or_else(|e| panic!("{name}: the SARIF output does not parse: {e}"));
        assert_eq!(sarif["version"], "2.1.0", "{name}");
        let run = &sarif["runs"][0];
        assert_eq!(run["tool"]["driver"]["name"], "blitzc", "{name}");
        let rules: Vec<&str> = run["tool"]["driver"]["rules"]
            .as_array()
            .expect("a rules array")
            .iter()
            .map(|r| r["id"].as_str().expect("a rule id"))
            .collect();
        let results = run["results"].as_array().expect("a results array");
        assert_eq!(results.len(), checked.diagnostics.len(), "{name}");
        for (result, d) in results.iter().zip(&checked.diagnostics) {
            let (line, column) = checked.file.line_col(d.span.start);
            assert_eq!(result["ruleId"], d.code.as_str(), "{name}: {result}");
            assert!(
                rules.contains(&d.code.as_str()),
                "{name}: no rule for {}",
                d.code
            );
            let level = if d.is_error() { "error" } else { "warning" };
            assert_eq!(result["level"], level, "{name}: {result}");
            let location = &result["locations"][0]["physicalLocation"];
            assert_eq!(
                location["artifactLocation"]["uri"],
                case.display_path().as_str(),
                "{name}: {result}"
            );
            assert_eq!(location["region"]["startLine"], line, "{name}: {result}");
            assert_eq!(
                location["region"]["startColumn"], column,
                "{name}: {result}"
            );
            // The same fields as json: message, label, help, related.
            let properties = &result["properties"];
            assert_eq!(properties["message"], d.message.as_str(), "{name}");
            assert_eq!(properties["label"], d.label.as_str(), "{name}");
            assert_eq!(properties["help"], d.help.as_str(), "{name}");
            assert_eq!(properties["slug"], d.code.slug(), "{name}");
            assert_eq!(result["locations"][0]["message"]["text"], d.label.as_str());
            let text = result["message"]["text"].as_str().expect("a message");
            assert!(
                text.contains(&d.label) && text.contains(&d.help),
                "{name}: {text}"
            );
            let related = result["relatedLocations"].as_array().expect("related");
            assert_eq!(related.len(), d.related.len(), "{name}: {result}");
            for (value, r) in related.iter().zip(&d.related) {
                let (line, _) = checked.file.line_col(r.span.start);
                let region = &value["physicalLocation"]["region"];
                assert_eq!(region["startLine"], line, "{name}: {result}");
                assert_eq!(value["message"]["text"], r.label.as_str(), "{name}");
            }
        }
    }
}

#[test]
fn example_specs_check_clean() {
    let examples = common::workspace_root().join("examples");
    let mut specs: Vec<_> = std::fs::read_dir(&examples)
        .expect("examples/ exists")
        .map(|e| e.expect("readable directory entry").path())
        // Only the top level: examples/bad/ holds specs that are wrong on purpose.
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "kdl" || e == "toml"))
        .collect();
    specs.sort();
    assert!(!specs.is_empty(), "no specs in examples/");
    let mut failures = Vec::new();
    for path in &specs {
        let checked = blitzc::check_path(path).unwrap();
        if !checked.diagnostics.is_empty() {
            let report = [blitzc::diag::render::Report {
                file: &checked.file,
                diagnostics: &checked.diagnostics,
            }];
            failures.push(blitzc::diag::render::render(&report, Format::Human, false));
        }
    }
    assert!(
        failures.is_empty(),
        "example specs with diagnostics:\n{}",
        failures.join("\n")
    );
}

/// `examples/bad/` shows in the README what `blitzc check` prints for a spec
/// with several mistakes: each must report several problems, and the output
/// is snapshot-tested so the README can quote it.
#[test]
fn bad_examples_report_several_problems() {
    let dir = common::workspace_root().join("examples/bad");
    let mut specs: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/bad/ exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl" || e == "toml"))
        .collect();
    specs.sort();
    assert!(
        specs.len() >= 2,
        "examples/bad/ should hold a KDL and a TOML spec"
    );
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let _guard = settings.bind_to_scope();
    for path in specs {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap()
            .to_string();
        let checked = blitzc::check_path(&path).unwrap();
        let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
        assert!(
            errors >= 3,
            "examples/bad/{name} reports only {errors} errors"
        );
        let shown = blitzc::diag::SourceFile::new(
            format!("examples/bad/{name}"),
            checked.file.text.clone(),
        );
        let report = [blitzc::diag::render::Report {
            file: &shown,
            diagnostics: &checked.diagnostics,
        }];
        let human = blitzc::diag::render::render(&report, Format::Human, false);
        insta::assert_snapshot!(format!("examples-bad-{name}.human"), human);
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
