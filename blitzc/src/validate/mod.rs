//! Validation: rules over the lowered, resolved IR, one module per rule
//! family. Every rule reports all it finds; nothing stops at the first error.
//!
//! Rules see the spec after [`crate::ir::finish`]: references carry the index
//! of their target when the name is known (unknown names were reported
//! there), and match conditions are in canonical order. A value that the
//! spec did not write has an empty span, so "written" means a non-empty span.
//! The order of the diagnostics does not matter here: `check` sorts them into
//! file order.

pub mod auth;
pub mod names;
pub mod plugins;
pub mod routes;
pub mod shadow;
pub mod tls;
pub mod unworkable;
pub mod upstreams;

use crate::diag::Diagnostic;
use blitz_ir::{Route, Spec, Step, StepKind};

/// Runs every rule family over `spec`.
pub fn run(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    names::check(spec, diagnostics);
    tls::check(spec, diagnostics);
    unworkable::check(spec, diagnostics);
    upstreams::check(spec, diagnostics);
    auth::check(spec, diagnostics);
    plugins::check(spec, diagnostics);
    routes::check(spec, diagnostics);
    shadow::check(spec, diagnostics);
}

/// One step of a route after `use` is spliced, with the route's own `use`
/// step it came through (`None` for a step written in the route itself).
/// Rules point at `step` and mention `via`, so a problem inside a chain is
/// shown where it is and where the route pulls it in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExpandedStep<'a> {
    pub step: &'a Step,
    pub via: Option<&'a Step>,
}

/// The steps of `route` with every `use` replaced by its chain's steps,
/// recursively, in order — the same walk as [`Spec::expand_steps`], keeping
/// the route-level `use` each step came through. Unresolved and cyclic `use`s
/// are skipped (they are reported on their own).
pub(crate) fn expand_route<'a>(spec: &'a Spec, route: &'a Route) -> Vec<ExpandedStep<'a>> {
    let mut out = Vec::new();
    for step in &route.steps {
        match &step.kind {
            StepKind::Use(_) => out.extend(
                spec.expand_steps(std::slice::from_ref(step))
                    .into_iter()
                    .map(|inner| ExpandedStep {
                        step: inner,
                        via: Some(step),
                    }),
            ),
            _ => out.push(ExpandedStep { step, via: None }),
        }
    }
    out
}

/// `related` label for a step spliced into `route` through `via`.
pub(crate) fn via_label(route: &Route) -> String {
    format!("spliced into route `{}` here", route.name.value)
}

/// Whether the front end already reported an error inside `span`: a rule
/// about a construct that lost a malformed part (a `match` whose only
/// condition had a bad header name, a `balance` whose key did not parse)
/// stays quiet, so one mistake gives one diagnostic.
pub(crate) fn error_within(diagnostics: &[Diagnostic], span: blitz_ir::Span) -> bool {
    diagnostics
        .iter()
        .any(|d| d.is_error() && span.start <= d.span.start && d.span.end <= span.end)
}
