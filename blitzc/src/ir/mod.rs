//! The IR as the compiler uses it: the model itself lives in the `blitz-ir`
//! crate (shared with the runtime); this module holds what only the compiler
//! does with it: lowering of values ([`values`]) and the final pass over a
//! lowered spec ([`finish`]).

pub mod values;

pub use blitz_ir::*;

use crate::diag::{Code, Diagnostic, did_you_mean};

/// Puts a freshly lowered spec into canonical form and resolves its
/// references, reporting each unknown name (with a suggestion when a
/// known name is close).
pub fn finish(spec: &mut Spec, diagnostics: &mut Vec<Diagnostic>) {
    for route in &mut spec.routes {
        if let Some(matcher) = &mut route.matcher {
            matcher.conditions.sort_by_key(|c| c.test.order());
        }
    }
    for unknown in spec.resolve() {
        let kind = unknown.kind.keyword();
        let names: Vec<&str> = spec
            .names(unknown.kind)
            .into_iter()
            .map(|n| n.value.as_str())
            .collect();
        let help = match did_you_mean(&unknown.name.value, names.iter().copied()) {
            Some(best) => format!("did you mean `{best}`?"),
            None if names.is_empty() => {
                format!(
                    "no {kind} is defined: define one named `{}`",
                    unknown.name.value
                )
            }
            None => format!(
                "known {kind}s: {}",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        diagnostics.push(
            Diagnostic::error(
                Code::UnknownReference,
                unknown.name.span,
                format!("unknown {kind} `{}`", unknown.name.value),
            )
            .label(format!("no {kind} has this name"))
            .help(help),
        );
    }
}
