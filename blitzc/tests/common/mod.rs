//! The invalid-spec corpus (`tests/specs/invalid/`), shared by the corpus
//! test (`invalid_specs.rs`) and the generator of `docs/diagnostics.md`
//! (`diagnostics_doc.rs`).
//!
//! Each corpus file is a small, realistic spec with one problem. Its first
//! line is a comment that states every diagnostic the file must produce, as
//! `CODE@LINE:COLUMN` (1-based, the start of the diagnostic's span):
//!
//! ```text
//! // expect: B020@12:10 B024@12:10      (KDL)
//! # expect: B002@4:7                    (TOML)
//! ```
#![allow(dead_code)] // each test binary uses its own part of this module

use blitzc::Checked;
use blitzc::diag::SourceFile;
use blitzc::diag::render::{self, Format, Report};
use std::path::{Path, PathBuf};

/// The workspace root (the corpus, `examples/` and `docs/` hang off it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("blitzc/ sits in the workspace")
        .to_path_buf()
}

/// Where the corpus lives, relative to the workspace root.
pub const CORPUS_DIR: &str = "tests/specs/invalid";

/// One diagnostic as the corpus states it: `B020@12:10`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    pub code: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.code, self.line, self.column)
    }
}

impl std::str::FromStr for Expected {
    type Err = String;

    fn from_str(token: &str) -> Result<Self, String> {
        let bad = || format!("`{token}` is not CODE@LINE:COLUMN");
        let (code, position) = token.split_once('@').ok_or_else(bad)?;
        let (line, column) = position.split_once(':').ok_or_else(bad)?;
        let valid_code = code.len() == 4
            && code.starts_with('B')
            && code[1..].bytes().all(|b| b.is_ascii_digit());
        if !valid_code {
            return Err(bad());
        }
        Ok(Expected {
            code: code.to_string(),
            line: line.parse().map_err(|_| bad())?,
            column: column.parse().map_err(|_| bad())?,
        })
    }
}

/// One corpus file.
#[derive(Debug)]
pub struct Case {
    /// The file name, e.g. `020-duplicate-upstream-name.kdl`.
    pub name: String,
    /// Absolute path: specs are checked from here, so the relative file
    /// paths in them (certificates, JWKS, plugins) resolve as in real use.
    pub path: PathBuf,
    pub text: String,
    /// The first line's expectations, sorted; an error when that line is
    /// not a well-formed `expect:` comment.
    pub expected: Result<Vec<Expected>, String>,
}

impl Case {
    /// The path shown in rendered output: relative to the workspace root, so
    /// snapshots and docs do not depend on where the repository is.
    pub fn display_path(&self) -> String {
        format!("{CORPUS_DIR}/{}", self.name)
    }

    /// The number before the first `-` of the file name (`020` for B020).
    pub fn number(&self) -> &str {
        self.name.split('-').next().unwrap_or("")
    }

    /// `kdl` or `toml`.
    pub fn syntax(&self) -> &str {
        Path::new(&self.name)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
    }

    /// The expectations, or none when the `expect:` line is malformed (the
    /// corpus test reports that).
    pub fn expected_or_none(&self) -> &[Expected] {
        self.expected.as_deref().unwrap_or(&[])
    }

    /// Checks the spec as it is on disk.
    pub fn check(&self) -> Checked {
        blitzc::check(SourceFile::new(&self.path, self.text.clone()))
    }

    /// The diagnostics `check` gives, as `CODE@LINE:COLUMN`, sorted.
    pub fn actual(&self, checked: &Checked) -> Vec<Expected> {
        let mut actual: Vec<Expected> = checked
            .diagnostics
            .iter()
            .map(|d| {
                let (line, column) = checked.file.line_col(d.span.start);
                Expected {
                    code: d.code.as_str().to_string(),
                    line,
                    column,
                }
            })
            .collect();
        actual.sort();
        actual
    }

    /// `checked` rendered in `format` (no color), under [`Case::display_path`].
    pub fn render(&self, checked: &Checked, format: Format) -> String {
        let shown = SourceFile::new(self.display_path(), checked.file.text.clone());
        let report = [Report {
            file: &shown,
            diagnostics: &checked.diagnostics,
        }];
        render::render(&report, format, false)
    }

    /// The spec without its `expect` line, as a reader of the docs sees it.
    pub fn text_without_expectations(&self) -> &str {
        self.text.split_once('\n').map_or("", |(_, rest)| rest)
    }
}

/// Parses the `expect:` comment on the first line of a corpus file.
pub fn parse_expectations(name: &str, text: &str) -> Result<Vec<Expected>, String> {
    let first = text.lines().next().unwrap_or("");
    let comment = if name.ends_with(".toml") { "#" } else { "//" };
    let rest = first
        .strip_prefix(comment)
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix("expect:"))
        .ok_or_else(|| {
            format!("{name}: the first line must be `{comment} expect: CODE@LINE:COLUMN ...`")
        })?;
    let mut expected = rest
        .split_whitespace()
        .map(|token| token.parse().map_err(|e| format!("{name}: {e}")))
        .collect::<Result<Vec<Expected>, String>>()?;
    if expected.is_empty() {
        return Err(format!(
            "{name}: an invalid spec expects at least one diagnostic"
        ));
    }
    expected.sort();
    Ok(expected)
}

/// Every corpus file, in file-name order.
pub fn corpus() -> Vec<Case> {
    let dir = workspace_root().join(CORPUS_DIR);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "kdl" || e == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file name")
                .to_string();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let expected = parse_expectations(&name, &text);
            Case {
                name,
                path,
                text,
                expected,
            }
        })
        .collect()
}

/// Joins expectations for messages: `B020@12:10 B024@12:10`.
pub fn show(list: &[Expected]) -> String {
    if list.is_empty() {
        return "(none)".to_string();
    }
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
