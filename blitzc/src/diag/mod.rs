//! The diagnostic model: every problem `blitzc` finds in a spec is one
//! [`Diagnostic`] with a stable [`Code`], a severity, a primary span with its
//! label, a help line, and optional secondary labels. One renderer per output
//! format lives in [`render`].

pub mod codes;
pub mod render;

pub use codes::Code;

use blitz_ir::Span;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A secondary place the diagnostic points at (e.g. the earlier duplicate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Related {
    pub span: Span,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    /// One sentence, no trailing period: what is wrong.
    pub message: String,
    pub span: Span,
    /// Short text shown at the span.
    pub label: String,
    /// How to fix it.
    pub help: String,
    pub related: Vec<Related>,
    /// The label and help as they read in a TOML spec, for the few rules
    /// that quote spec syntax (the validators see only the model, not the
    /// syntax it came from). [`Diagnostic::for_syntax`] picks one.
    #[serde(skip)]
    pub toml: Option<TomlText>,
}

/// Replacements for a diagnostic's label and help that quote TOML syntax.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TomlText {
    pub label: Option<String>,
    pub help: Option<String>,
}

/// The syntax a spec is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Kdl,
    Toml,
}

impl Diagnostic {
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            span,
            label: String::new(),
            help: String::new(),
            related: Vec::new(),
            toml: None,
        }
    }

    pub fn warning(code: Code, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, span, message)
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }

    /// A label that quotes KDL syntax, and the same in TOML.
    pub fn label_in(mut self, kdl: impl Into<String>, toml: impl Into<String>) -> Self {
        self.label = kdl.into();
        self.toml.get_or_insert_default().label = Some(toml.into());
        self
    }

    /// A help line that quotes KDL syntax, and the same in TOML.
    pub fn help_in(mut self, kdl: impl Into<String>, toml: impl Into<String>) -> Self {
        self.help = kdl.into();
        self.toml.get_or_insert_default().help = Some(toml.into());
        self
    }

    /// Keeps the wording for `syntax`: the TOML label and help replace the
    /// KDL ones in a TOML spec (the alternative is dropped either way).
    pub fn for_syntax(mut self, syntax: Syntax) -> Self {
        if let (Syntax::Toml, Some(toml)) = (syntax, self.toml.take()) {
            if let Some(label) = toml.label {
                self.label = label;
            }
            if let Some(help) = toml.help {
                self.help = help;
            }
        }
        self
    }

    pub fn related(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push(Related {
            span,
            label: label.into(),
        });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A spec file's text, with the line index needed to turn spans into
/// 1-based line and column numbers.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The path as given on the command line (shown in diagnostics).
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        let path = path.into();
        let text = text.into();
        let breaks = newlines(&text, Syntax::of_path(&path));
        let line_starts = std::iter::once(0).chain(breaks.map(|nl| nl.end)).collect();
        SourceFile {
            path,
            text,
            line_starts,
        }
    }

    /// The text as the human renderer shows it: every newline of the
    /// file's syntax rewritten to `\n` or `\r\n` padded to the same byte
    /// length, so miette (which only knows those two) breaks lines where
    /// the parser does, and every byte offset still points at the same
    /// place. A lone CR that is no newline (TOML) becomes a space.
    pub fn for_display(&self) -> String {
        let mut shown = String::with_capacity(self.text.len());
        let mut pos = 0;
        for nl in newlines(&self.text, self.syntax()) {
            shown.push_str(&self.text[pos..nl.start].replace('\r', " "));
            shown.push_str(match nl.len() {
                1 => "\n",
                2 => "\r\n",
                _ => " \r\n",
            });
            pos = nl.end;
        }
        shown.push_str(&self.text[pos..].replace('\r', " "));
        shown
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let start = self.line_starts[line];
        // A byte-order mark opening the file is no column (editors and
        // rustc do not count it).
        let column = self.text.get(start..offset).map_or(offset - start, |s| {
            s.strip_prefix('\u{feff}').unwrap_or(s).chars().count()
        });
        (line + 1, column + 1)
    }

    /// The syntax, by the file's extension (`None`: neither `.kdl` nor `.toml`).
    pub fn syntax(&self) -> Option<Syntax> {
        Syntax::of_path(&self.path)
    }

    pub fn display_path(&self) -> String {
        self.path.display().to_string()
    }
}

impl Syntax {
    fn of_path(path: &std::path::Path) -> Option<Syntax> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("kdl") => Some(Syntax::Kdl),
            Some("toml") => Some(Syntax::Toml),
            _ => None,
        }
    }
}

/// The byte ranges of the newlines in `text`, as its syntax has them:
/// KDL v2 (the `kdl` crate's v2 parser) breaks lines at CRLF, CR, LF, NEL,
/// VT, FF, LS and PS; TOML (and a file of neither syntax) at LF and CRLF
/// only. Line numbers count these, so a CR-only KDL file has lines.
fn newlines(
    text: &str,
    syntax: Option<Syntax>,
) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let kdl = syntax == Some(Syntax::Kdl);
    let bytes = text.as_bytes();
    text.char_indices().filter_map(move |(i, c)| {
        let crlf = c == '\r' && bytes.get(i + 1) == Some(&b'\n');
        let breaks = match c {
            '\n' => !(i > 0 && bytes[i - 1] == b'\r'),
            '\r' => crlf || kdl,
            '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}' => kdl,
            _ => false,
        };
        let len = if crlf { 2 } else { c.len_utf8() };
        breaks.then_some(i..i + len)
    })
}

/// Sorts diagnostics into file order (then errors before warnings, then code)
/// and drops exact duplicates.
pub fn sort(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(|a, b| {
        (a.span.start, a.span.end, a.severity, a.code).cmp(&(
            b.span.start,
            b.span.end,
            b.severity,
            b.code,
        ))
    });
    diagnostics.dedup();
}

/// "did you mean `x`?" for a misspelt `word` among `candidates`, if one is close.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, c)| *score >= 0.8 && *c != word)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A help line listing the choices, with a suggestion first when one is close.
pub fn choices_help(word: &str, choices: &[&str]) -> String {
    let list = choices
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match did_you_mean(word, choices.iter().copied()) {
        Some(best) => format!("did you mean `{best}`? expected one of {list}"),
        None => format!("expected one of {list}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let file = SourceFile::new("x.kdl", "ab\ncdé\nf");
        assert_eq!(file.line_col(0), (1, 1));
        assert_eq!(file.line_col(1), (1, 2));
        assert_eq!(file.line_col(3), (2, 1));
        assert_eq!(file.line_col(7), (2, 4)); // after the two-byte é
        assert_eq!(file.line_col(8), (3, 1));
        assert_eq!(file.line_col(9), (3, 2));
        assert_eq!(file.line_col(100), (3, 2));
    }

    #[test]
    fn kdl_lines_break_where_the_kdl_parser_breaks_them() {
        // KDL v2 newlines: CRLF, CR, LF, NEL, VT, FF, LS, PS.
        let text = "a\r\nb\rc\nd\u{85}e\u{0B}f\u{0C}g\u{2028}h\u{2029}ié";
        let file = SourceFile::new("x.kdl", text);
        for (n, letter) in "abcdefghi".chars().enumerate() {
            let at = text.find(letter).unwrap_or_else(|| panic!("{letter}"));
            assert_eq!(file.line_col(at), (n + 1, 1), "{letter}");
        }
        assert_eq!(file.line_col(text.len()), (9, 3));
        // The CR of a CRLF ends line 1, not a line of its own.
        assert_eq!(file.line_col(1), (1, 2));
        assert_eq!(file.line_col(2), (1, 3));
        // The display text keeps every offset and has only \n and \r\n.
        let shown = file.for_display();
        assert_eq!(shown.len(), text.len());
        assert_eq!(shown, "a\r\nb\nc\nd\r\ne\nf\ng \r\nh \r\nié");
    }

    #[test]
    fn toml_lines_break_at_lf_and_crlf_only() {
        let text = "a\r\nb\rc\u{85}d\u{2028}e\nf";
        let file = SourceFile::new("x.toml", text);
        assert_eq!(file.line_col(text.find('b').unwrap_or(0)), (2, 1));
        assert_eq!(file.line_col(text.find('e').unwrap_or(0)), (2, 7));
        assert_eq!(file.line_col(text.find('f').unwrap_or(0)), (3, 1));
        assert_eq!(file.for_display(), "a\r\nb c\u{85}d\u{2028}e\nf");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("upstrem", ["upstream", "route"]),
            Some("upstream")
        );
        assert_eq!(did_you_mean("zzz", ["upstream", "route"]), None);
        assert!(
            choices_help("round-robbin", &["round-robin", "p2c"])
                .starts_with("did you mean `round-robin`?")
        );
    }
}
