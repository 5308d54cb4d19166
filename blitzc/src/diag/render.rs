//! One renderer per output format of `blitzc check --format`: human
//! (miette's graphical report with the source snippet), json, github
//! (workflow annotations) and sarif (2.1.0). All carry the same fields:
//! code, severity, message, file, line, column, label, help.

use super::{Diagnostic, Severity, SourceFile};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Output formats of `blitzc check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Github,
    Sarif,
}

/// One checked file and its diagnostics.
#[derive(Debug)]
pub struct Report<'a> {
    pub file: &'a SourceFile,
    pub diagnostics: &'a [Diagnostic],
}

/// Renders every report in `format`. `color` only affects `Human`.
pub fn render(reports: &[Report<'_>], format: Format, color: bool) -> String {
    match format {
        Format::Human => human(reports, color),
        Format::Json => json(reports),
        Format::Github => github(reports),
        Format::Sarif => sarif(reports),
    }
}

/// Where a diagnostic starts and ends, 1-based.
struct Position {
    line: usize,
    column: usize,
    end_line: usize,
    end_column: usize,
}

fn position(file: &SourceFile, d: &Diagnostic) -> Position {
    let (line, column) = file.line_col(d.span.start);
    let (end_line, end_column) = file.line_col(d.span.end.max(d.span.start));
    Position {
        line,
        column,
        end_line,
        end_column,
    }
}

fn totals(reports: &[Report<'_>]) -> (usize, usize) {
    let all = reports.iter().flat_map(|r| r.diagnostics.iter());
    let errors = all.clone().filter(|d| d.is_error()).count();
    (errors, all.count() - errors)
}

// ---------------------------------------------------------------- human

/// Adapter that lets miette draw one of our diagnostics over its source.
struct MietteDiagnostic<'a> {
    d: &'a Diagnostic,
    source: &'a Snippet<'a>,
}

/// The source miette draws from. Its snippet comes from the file's text
/// with the syntax's newlines made ones miette knows
/// ([`SourceFile::for_display`]); the line and column of the
/// `[file:line:column]` header come from [`SourceFile::line_col`], so they
/// are the json/github/sarif ones (columns in characters; miette alone
/// counts bytes).
struct Snippet<'a> {
    file: &'a SourceFile,
    name: String,
    shown: String,
}

impl<'a> Snippet<'a> {
    fn new(file: &'a SourceFile) -> Self {
        Snippet {
            file,
            name: file.display_path(),
            shown: file.for_display(),
        }
    }
}

impl miette::SourceCode for Snippet<'_> {
    fn read_span<'b>(
        &'b self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'b> + 'b>, miette::MietteError> {
        let contents = self
            .shown
            .read_span(span, context_lines_before, context_lines_after)?;
        let (line, column) = self.file.line_col(contents.span().offset());
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            contents.data(),
            *contents.span(),
            line - 1,
            column - 1,
            contents.line_count(),
        )))
    }
}

impl std::fmt::Debug for MietteDiagnostic<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.d.message)
    }
}

impl std::fmt::Display for MietteDiagnostic<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.d.message)
    }
}

impl std::error::Error for MietteDiagnostic<'_> {}

impl miette::Diagnostic for MietteDiagnostic<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn std::fmt::Display + 'b>> {
        Some(Box::new(format!(
            "{}({})",
            self.d.code.as_str(),
            self.d.code.slug()
        )))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn std::fmt::Display + 'b>> {
        (!self.d.help.is_empty()).then(|| Box::new(&self.d.help) as Box<dyn std::fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let primary = miette::LabeledSpan::new_primary_with_span(
            (!self.d.label.is_empty()).then(|| self.d.label.clone()),
            (self.d.span.start, self.d.span.len()),
        );
        let related = self.d.related.iter().map(|r| {
            miette::LabeledSpan::new_with_span(Some(r.label.clone()), (r.span.start, r.span.len()))
        });
        Some(Box::new(std::iter::once(primary).chain(related)))
    }
}

fn human(reports: &[Report<'_>], color: bool) -> String {
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    for report in reports {
        let source = Snippet::new(report.file);
        for d in report.diagnostics {
            let adapter = MietteDiagnostic { d, source: &source };
            if handler.render_report(&mut out, &adapter).is_err() {
                let p = position(report.file, d);
                let _ = writeln!(
                    out,
                    "{}:{}:{}: {}: {}",
                    report.file.display_path(),
                    p.line,
                    p.column,
                    d.code,
                    d.message
                );
            }
            out.push('\n');
        }
    }
    let (errors, warnings) = totals(reports);
    let files = reports.len();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(
        out,
        "{}: {}, {} in {}",
        if errors > 0 { "failed" } else { "ok" },
        plural(errors, "error"),
        plural(warnings, "warning"),
        plural(files, "file"),
    );
    out
}

// ---------------------------------------------------------------- json

fn diagnostic_json(file: &SourceFile, d: &Diagnostic) -> Value {
    let p = position(file, d);
    let related: Vec<Value> = d
        .related
        .iter()
        .map(|r| {
            let (line, column) = file.line_col(r.span.start);
            json!({ "line": line, "column": column, "label": r.label })
        })
        .collect();
    json!({
        "code": d.code.as_str(),
        "slug": d.code.slug(),
        "severity": d.severity,
        "message": d.message,
        "file": file.display_path(),
        "line": p.line,
        "column": p.column,
        "end_line": p.end_line,
        "end_column": p.end_column,
        "label": d.label,
        "help": d.help,
        "related": related,
    })
}

fn json(reports: &[Report<'_>]) -> String {
    let diagnostics: Vec<Value> = reports
        .iter()
        .flat_map(|r| r.diagnostics.iter().map(|d| diagnostic_json(r.file, d)))
        .collect();
    let (errors, warnings) = totals(reports);
    let doc = json!({ "diagnostics": diagnostics, "summary": { "errors": errors, "warnings": warnings } });
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}

// ---------------------------------------------------------------- github

/// Escapes an annotation's message (GitHub's workflow-command encoding).
fn github_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes an annotation property value.
fn github_property(text: &str) -> String {
    github_data(text).replace(':', "%3A").replace(',', "%2C")
}

fn github(reports: &[Report<'_>]) -> String {
    let mut out = String::new();
    for report in reports {
        for d in report.diagnostics {
            let p = position(report.file, d);
            let level = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let mut message = d.message.clone();
            if !d.label.is_empty() {
                let _ = write!(message, ": {}", d.label);
            }
            if !d.help.is_empty() {
                let _ = write!(message, "\nhelp: {}", d.help);
            }
            let _ = writeln!(
                out,
                "::{level} file={},line={},col={},title={}::{}",
                github_property(&report.file.display_path()),
                p.line,
                p.column,
                d.code.as_str(),
                github_data(&message),
            );
        }
    }
    out
}

// ---------------------------------------------------------------- sarif

/// A file path as the URI reference SARIF's `artifactLocation.uri` must
/// be (RFC 3986): bytes other than unreserved characters and `/` are
/// percent-encoded, so `my spec.kdl` is `my%20spec.kdl`.
fn uri_reference(path: &str) -> String {
    let mut uri = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(char::from(b));
        } else {
            let _ = write!(uri, "%{b:02X}");
        }
    }
    uri
}

fn sarif(reports: &[Report<'_>]) -> String {
    let mut codes: Vec<_> = reports
        .iter()
        .flat_map(|r| r.diagnostics.iter().map(|d| d.code))
        .collect();
    codes.sort();
    codes.dedup();
    let rules: Vec<Value> = codes
        .iter()
        .map(|c| json!({ "id": c.as_str(), "name": c.slug(), "shortDescription": { "text": c.slug() } }))
        .collect();
    let results: Vec<Value> = reports
        .iter()
        .flat_map(|r| {
            r.diagnostics.iter().map(move |d| {
                let p = position(r.file, d);
                // The message as github shows it (message: label, help);
                // the label is also the primary location's message.
                let mut text = d.message.clone();
                if !d.label.is_empty() {
                    let _ = write!(text, ": {}", d.label);
                }
                if !d.help.is_empty() {
                    let _ = write!(text, "\nhelp: {}", d.help);
                }
                let uri = uri_reference(&r.file.display_path());
                let related: Vec<Value> = d
                    .related
                    .iter()
                    .map(|rel| {
                        let (line, column) = r.file.line_col(rel.span.start);
                        json!({
                            "physicalLocation": {
                                "artifactLocation": { "uri": uri },
                                "region": { "startLine": line, "startColumn": column },
                            },
                            "message": { "text": rel.label },
                        })
                    })
                    .collect();
                json!({
                    "ruleId": d.code.as_str(),
                    "level": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
                    "message": { "text": text },
                    "locations": [{
                        "physicalLocation": {
                            "artifactLocation": { "uri": uri },
                            "region": {
                                "startLine": p.line,
                                "startColumn": p.column,
                                "endLine": p.end_line,
                                "endColumn": p.end_column,
                            }
                        },
                        "message": { "text": d.label },
                    }],
                    "relatedLocations": related,
                    "properties": {
                        "slug": d.code.slug(),
                        "message": d.message,
                        "label": d.label,
                        "help": d.help,
                    },
                })
            })
        })
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "blitzc",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://example.invalid/blitz/docs/diagnostics.md",
                "rules": rules,
            }},
            "results": results,
        }],
    });
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}
