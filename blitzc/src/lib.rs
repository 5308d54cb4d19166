//! `blitzc`, the Blitz gateway compiler, as a library: the CLI in `main.rs`
//! is a thin shell over [`check`] and the back end.
//!
//! The pipeline: [`syntax`] (KDL or TOML text to the IR, with spans) →
//! [`ir`] (name resolution, canonical order) → [`validate`] (every rule, all
//! diagnostics at once) → [`codegen`] (IR to Rust) → [`build`] (crate and cargo).
#![forbid(unsafe_code)]

pub mod build;
pub mod codegen;
pub mod diag;
pub mod ir;
pub mod syntax;
pub mod validate;

use blitz_ir::Spec;
use diag::{Diagnostic, SourceFile};

/// The outcome of checking one spec file.
#[derive(Debug)]
pub struct Checked {
    pub file: SourceFile,
    /// The model, when the file parsed (it may still have errors).
    pub spec: Option<Spec>,
    /// Every diagnostic, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn has_warnings(&self) -> bool {
        self.diagnostics.iter().any(|d| !d.is_error())
    }
}

/// Parses, lowers and validates one spec file.
pub fn check(file: SourceFile) -> Checked {
    let (spec, mut diagnostics) = syntax::lower(&file);
    let spec = spec.map(|mut spec| {
        ir::finish(&mut spec, &mut diagnostics);
        validate::run(&spec, &mut diagnostics);
        spec
    });
    if let Some(syntax) = file.syntax() {
        diagnostics = diagnostics
            .into_iter()
            .map(|d| d.for_syntax(syntax))
            .collect();
    }
    diag::sort(&mut diagnostics);
    Checked {
        file,
        spec,
        diagnostics,
    }
}

/// Reads and checks the spec at `path`. A file that cannot be read is an
/// IO error; one that is not UTF-8 (KDL and TOML documents are) is a
/// syntax error at its first bad byte, so it is reported beside other
/// specs' diagnostics with a position, not as an unreadable file.
pub fn check_path(path: &std::path::Path) -> std::io::Result<Checked> {
    let bytes = std::fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => check(SourceFile::new(path, text)),
        Err(e) => not_utf8(path, &e),
    })
}

/// The one diagnostic of a spec that is not UTF-8, placed on its first bad
/// byte (shown as U+FFFD in the snippet). Nothing is parsed: a lossy text
/// would let a bad byte pass for a character inside a string.
fn not_utf8(path: &std::path::Path, e: &std::string::FromUtf8Error) -> Checked {
    use diag::{Code, Syntax};
    let at = e.utf8_error().valid_up_to();
    let byte = e.as_bytes()[at];
    let file = SourceFile::new(path, String::from_utf8_lossy(e.as_bytes()).into_owned());
    let code = match file.syntax() {
        Some(Syntax::Kdl) => Code::KdlSyntax,
        Some(Syntax::Toml) => Code::TomlSyntax,
        None => return check(file),
    };
    let span = blitz_ir::Span::new(at, at + char::REPLACEMENT_CHARACTER.len_utf8());
    let diagnostic = Diagnostic::error(code, span, "the spec is not UTF-8")
        .label(match e.utf8_error().error_len() {
            Some(_) => format!("byte 0x{byte:02X} starts no UTF-8 character"),
            None => format!("byte 0x{byte:02X} starts a UTF-8 character the file ends inside"),
        })
        .help(
            "KDL and TOML specs are UTF-8 text: save the file as UTF-8 (a Latin-1 or \
             Windows-1252 `é` is one byte, UTF-8 writes it as two)",
        );
    Checked {
        file,
        spec: None,
        diagnostics: vec![diagnostic],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_that_is_not_utf8_is_a_syntax_error_at_its_first_bad_byte() {
        let dir = std::env::temp_dir().join(format!("blitzc-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, code) in [("s.kdl", "B001"), ("s.toml", "B002"), ("s.txt", "B004")] {
            let path = dir.join(name);
            std::fs::write(&path, b"version 1\n# caf\xe9\n").unwrap();
            let checked = check_path(&path).unwrap();
            let codes: Vec<_> = checked
                .diagnostics
                .iter()
                .map(|d| d.code.as_str())
                .collect();
            assert_eq!(codes, [code], "{name}");
            if code != "B004" {
                let d = &checked.diagnostics[0];
                assert_eq!(checked.file.line_col(d.span.start), (2, 6), "{name}");
                assert!(d.label.contains("0xE9"), "{}", d.label);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
