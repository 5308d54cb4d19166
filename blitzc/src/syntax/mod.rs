//! The two spec front ends. Each parses its syntax with the format's own
//! crate (keeping every span) and lowers it into the IR, reporting every
//! problem it meets as a diagnostic and carrying on.
//!
//! Both share the value lowering of [`crate::ir::values`] and the structure
//! of SPEC.md, so the KDL and TOML forms of a spec lower to equal models.

pub mod kdl;
pub mod toml;

use crate::diag::{Code, Diagnostic, SourceFile, Syntax};
use blitz_ir::{Span, Spec};

/// The top-level constructs of a spec, in the order SPEC.md presents them:
/// KDL node names and TOML keys alike.
pub const TOP_LEVEL: &[&str] = &[
    "version",
    "gateway",
    "listener",
    "limits",
    "upstream",
    "jwt",
    "rate-limit",
    "plugin",
    "chain",
    "route",
    "metrics",
    "admin",
];

/// Lowers a spec file, choosing the front end by its extension.
/// `None` when the file does not parse at all.
pub fn lower(file: &SourceFile) -> (Option<Spec>, Vec<Diagnostic>) {
    match file.syntax() {
        Some(Syntax::Kdl) => kdl::lower(file),
        Some(Syntax::Toml) => toml::lower(file),
        None => {
            let diagnostic =
                Diagnostic::error(Code::UnknownFormat, Span::new(0, 0), "unknown spec format")
                    .label("the file name ends neither in .kdl nor in .toml")
                    .help("name the spec `NAME.kdl` or `NAME.toml`");
            (None, vec![diagnostic])
        }
    }
}

/// The gateway name used when the spec does not give one: the file stem
/// (a byte that is not UTF-8 read as U+FFFD, as in diagnostics), or
/// `gateway` for a path without one.
pub fn default_gateway_name(file: &SourceFile) -> String {
    file.path.file_stem().map_or_else(
        || "gateway".to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn the_default_gateway_name_is_the_file_stem_even_when_not_utf8() {
        let name = |path: &OsStr| default_gateway_name(&SourceFile::new(path, ""));
        assert_eq!(name(OsStr::new("sites/eu1.kdl")), "eu1");
        assert_eq!(name(OsStr::from_bytes(b"caf\xe9.kdl")), "caf\u{fffd}");
        assert_eq!(name(OsStr::new("/")), "gateway");
    }
}
