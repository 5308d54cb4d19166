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

/// Reads and checks the spec at `path`.
pub fn check_path(path: &std::path::Path) -> std::io::Result<Checked> {
    let text = std::fs::read_to_string(path)?;
    Ok(check(SourceFile::new(path, text)))
}
