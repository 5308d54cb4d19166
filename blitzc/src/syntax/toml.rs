//! The TOML front end (being written).

use crate::diag::{Diagnostic, SourceFile};
use blitz_ir::Spec;

pub fn lower(file: &SourceFile) -> (Option<Spec>, Vec<Diagnostic>) {
    let _ = file;
    (None, Vec::new())
}
