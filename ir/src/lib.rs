//! The typed model of a Blitz gateway spec (the IR).
//!
//! Both spec front ends (KDL and TOML, in `blitzc`) lower into [`Spec`]; the
//! code generator, `blitzc route` and the runtime's reference interpreter all
//! read it. It is the single place where the meaning of a spec is fixed:
//! units are parsed ([`units`]), names are resolved to indices, defaults are
//! applied, and the route matcher ([`matcher`]) implements the reference
//! semantics of SPEC.md "Meaning".
//!
//! Every node keeps the [`Span`] of the text it came from, so validation can
//! point at the exact place in the spec. Spans are byte offsets into the spec
//! file; they are not part of a spec's meaning, and [`Spec::canonical_json`]
//! drops them so that the KDL and TOML forms of one spec compare equal.
#![forbid(unsafe_code)]

pub mod matcher;
pub mod model;
pub mod units;

pub use model::*;

use serde::{Deserialize, Serialize};

/// A byte range in the spec's source text.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub const fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A value together with the span of the text it was lowered from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub const fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}
