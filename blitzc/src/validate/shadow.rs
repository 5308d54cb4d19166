//! B050 `shadowed-route`: a route that can never match because the routes
//! before it match every request it matches.
//!
//! # The request space
//!
//! What the matcher ([`blitz_ir::matcher`]) looks at is a product of
//! independent dimensions: the host, the normalised path, the method, and,
//! per header name or query name, the set of values the request carries for
//! it. A route's `match` is a box in that space: one set per dimension (an
//! unconstrained dimension is the whole of it). Route R is shadowed iff
//! R ∖ (E₁ ∪ … ∪ Eₖ) = ∅ over the earlier routes Eᵢ.
//!
//! Treating dimensions as independent admits a few requests that cannot
//! exist (a `Host` of `a` with a `header host "b"`); that only makes R's box
//! larger, so it can hide a shadowed route, never invent one.
//!
//! # Region subtraction
//!
//! The remainder of R is kept as a list of disjoint regions, each a box
//! whose per-dimension sets are closed under "intersect with a condition"
//! and "subtract a condition". Subtracting an earlier route E (conditions
//! c₁…cₙ) from a region P splits it into
//! `P∖c₁`, `P∩c₁∖c₂`, …, `P∩c₁∩…∩cₙ₋₁∖cₙ` (the last part, `P∩E`, is
//! gone); empty parts are dropped. R is shadowed when no region is left.
//!
//! Per dimension, a set is exact for everything but regexes:
//!
//! - **Host, path, method** are laminar families: two atoms (`api.x.com`,
//!   `*.x.com`, `*.com`; `/v1`, `/v1/users` as prefix or exact path; `GET`)
//!   are either nested or disjoint (`*.a.x.com` ⊂ `*.x.com` because one
//!   suffix ends with the other; `x.com` ∉ `*.x.com`). A set is "a union
//!   of atoms minus a union of atoms". Intersection distributes and two
//!   atoms meet in the smaller one or nowhere, so it stays a union of
//!   atoms. Such a set is empty iff each positive atom lies inside a single
//!   negative atom: an infinite atom (a prefix, a wildcard, "any") minus
//!   finitely many points and strictly smaller atoms always keeps a value
//!   (`/v1/<fresh>`, `<fresh label>.x.com`, a fresh method).
//! - **Path regexes** are opaque: a path atom is a base (prefix or exact
//!   path) intersected with a set of regex texts, and atom A lies inside
//!   atom B only if A's base lies inside B's and B's regexes are among A's.
//!   So a regex covers only a route with the identical regex text, and a
//!   route with a regex is otherwise shadowed only by routes that cover it
//!   whatever its path is — or whatever its path is below the prefix its
//!   leading literal fixes ([`regex_base`]: `/api/v[0-9]+` only matches
//!   below `/api`). Missing a containment only keeps a region alive:
//!   conservative, never a false error.
//! - **Header and query values** (per name, the request's set V of values):
//!   a set is a conjunction of "V ≠ ∅", "V = ∅", clauses "V meets {a, b}"
//!   and exclusions "a ∉ V". It is empty iff "V = ∅" meets a positive
//!   constraint or some clause has only excluded values; otherwise V = one
//!   allowed value per clause (or a fresh one) is a witness. So
//!   `header x-canary "1"` is not covered by `header x-canary "2"`, and
//!   `header x` (present) is not covered by any finite set of values.
//!
//! # Cost
//!
//! Only earlier routes that may overlap R are subtracted: an index keyed by
//! host and by path finds them (hosts and paths are laminar, so two atoms
//! overlap only if one's key is the other's key or one of its ancestors:
//! `.x.com` for `a.x.com`, `/v1` for `/v1/users`). A region is only split by
//! a route that may meet it, and when the regions of one route outnumber
//! [`MAX_REGIONS`], or the tests of regions against routes exceed
//! [`WORK_BUDGET`], the route is not reported (conservative).
//!
//! Most routes are reachable, and most of those are settled before any
//! splitting by a [`Probe`]: one generic request of the route (a fresh
//! segment under its prefix, a fresh method, ...) that no earlier candidate
//! matches. On a 5,000-route spec (`bench/check-5000`) the whole analysis
//! takes about 20 ms of CPU.
//!
//! # Reporting
//!
//! One B050 error per shadowed route, at its name, naming the earlier
//! routes that cover it (a greedy minimal subset of those that removed
//! something) as related spans. Every route after a reachable route without
//! `match` is reported against that route alone. A route whose own
//! conditions exclude each other (`path "/a"` with `path-prefix "/b"`)
//! matches nothing and is not reported here. Neither is a route whose
//! `match` holds an error the front end reported (a condition of the wrong
//! type, without a value, with a bad header name or value): what lowered is
//! not what was meant (a dropped condition makes it broader, an emptied one
//! narrower), so it is neither reported nor taken to cover later routes —
//! one mistake, one diagnostic. The tests check soundness
//! against the reference matcher: no request reaches a reported route, and
//! a witness request built from what is left of an unreported route does.

use crate::diag::{Code, Diagnostic};
use blitz_ir::matcher::path_has_prefix;
use blitz_ir::{HostPattern, Route, Spec, Test};
use std::collections::HashMap;
use std::rc::Rc;

/// Past this many live regions for one route, give up on it (no report).
const MAX_REGIONS: usize = 256;

/// Past this many region-by-route tests for one route, give up on it (no
/// report): bounds the whole check to O(routes × WORK_BUDGET).
const WORK_BUDGET: usize = 20_000;

/// Reports every route that earlier routes shadow.
pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    for (index, verdict) in analyse(spec, diagnostics).into_iter().enumerate() {
        if let Verdict::Shadowed { by, catch_all } = verdict {
            diagnostics.push(diagnostic(spec, index, &by, catch_all));
        }
    }
}

fn diagnostic(spec: &Spec, index: usize, by: &[usize], catch_all: bool) -> Diagnostic {
    let route = &spec.routes[index];
    let names: Vec<String> = by
        .iter()
        .map(|&i| format!("`{}`", spec.routes[i].name.value))
        .collect();
    let help = if catch_all {
        format!(
            "route {} before it has no `match` and serves every request; move it after this route, or give it a `match`",
            names.join(", ")
        )
    } else if names.len() == 1 {
        format!(
            "every request it matches is served first by route {}; move this route above it, or narrow its `match`",
            names[0]
        )
    } else {
        const SHOWN: usize = 6;
        let mut list = names[..names.len().min(SHOWN) - 1].join(", ");
        if names.len() > SHOWN {
            list.push_str(&format!(
                ", {} or {} more",
                names[SHOWN - 1],
                names.len() - SHOWN
            ));
        } else {
            list.push_str(&format!(" or {}", names[names.len() - 1]));
        }
        format!(
            "every request it matches is served first by route {list}; move this route above them, or narrow their `match`"
        )
    };
    let mut d = Diagnostic::error(
        Code::ShadowedRoute,
        route.name.span,
        format!("route `{}` can never match", route.name.value),
    )
    .label("never matches")
    .help(help);
    for &i in by {
        let label = if catch_all {
            "matches every request"
        } else {
            "matches first"
        };
        d = d.related(spec.routes[i].name.span, label);
    }
    d
}

/// Where the requests that reach a route are.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
enum Open {
    /// A region of them, left by the subtraction.
    Region(Region),
    /// One of them.
    Probe(Probe),
}

/// What the analysis concluded about one route.
#[derive(Debug)]
enum Verdict {
    /// Earlier routes `by` (in spec order) match every request it matches;
    /// `catch_all`: `by` is one route without `match`.
    Shadowed { by: Vec<usize>, catch_all: bool },
    /// Some request reaches it: here is where (the tests turn it into a
    /// witness request and check that the router agrees).
    Reachable(#[cfg_attr(not(test), allow(dead_code))] Open),
    /// Its own conditions exclude each other: it matches nothing, which is
    /// not this check's business.
    Empty,
    /// Its `match` holds an error already reported: what it matches is not
    /// known, so it is not judged and covers nothing.
    Malformed,
    /// Too many regions or too much work: not decided, not reported.
    GaveUp,
}

/// The verdict for every route, in spec order, given the diagnostics so
/// far (the front end's among them).
fn analyse(spec: &Spec, diagnostics: &[Diagnostic]) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(spec.routes.len());
    let mut index = RouteIndex::default();
    let mut lowered: Vec<Option<Vec<Cond>>> = Vec::with_capacity(spec.routes.len());
    let mut catch_all: Option<usize> = None;
    for (r, route) in spec.routes.iter().enumerate() {
        let conds = lower(route);
        if let Some(all) = catch_all {
            verdicts.push(Verdict::Shadowed {
                by: vec![all],
                catch_all: true,
            });
            lowered.push(conds);
            continue;
        }
        if route
            .matcher
            .as_ref()
            .is_some_and(|m| super::error_within(diagnostics, m.span))
        {
            // Not in the index, so never a candidate cover, and never the
            // catch-all (a `match` whose every condition was dropped would
            // lower like no `match`).
            verdicts.push(Verdict::Malformed);
            lowered.push(conds);
            continue;
        }
        let mut region = Region::universe();
        for c in conds.iter().flatten() {
            region.intersect(c);
        }
        if region.is_empty() {
            verdicts.push(Verdict::Empty);
            lowered.push(conds);
            continue;
        }
        let candidates = index.candidates(&region);
        let verdict = match Probe::of(&region) {
            // A request of R that no candidate matches: R is reachable,
            // no need to split anything.
            Some(probe)
                if !candidates
                    .iter()
                    .any(|&e| probe.may_match(lowered[e].as_deref())) =>
            {
                Verdict::Reachable(Open::Probe(probe))
            }
            _ => finish(
                cover(&region, candidates.into_iter(), &lowered),
                &region,
                &lowered,
            ),
        };
        if conds.is_none() && !matches!(verdict, Verdict::Shadowed { .. }) {
            // Matches everything and is reached: every later route is
            // shadowed by it alone.
            catch_all = Some(r);
        }
        if !matches!(verdict, Verdict::Shadowed { .. }) {
            index.insert(r, &region);
        }
        verdicts.push(verdict);
        lowered.push(conds);
    }
    verdicts
}

/// Outcome of subtracting earlier routes from a region.
enum Cover {
    /// Nothing left; the routes that removed something, in spec order.
    Covered(Vec<usize>),
    Open(Region),
    GaveUp,
}

/// Subtracts the routes `earlier` (indices into `lowered`, ascending) from
/// `region`.
fn cover(
    region: &Region,
    earlier: impl Iterator<Item = usize>,
    lowered: &[Option<Vec<Cond>>],
) -> Cover {
    let mut regions = vec![region.clone()];
    let mut work = 0;
    let mut used = Vec::new();
    for e in earlier {
        let Some(conds) = &lowered[e] else {
            used.push(e);
            return Cover::Covered(used);
        };
        let mut next = Vec::with_capacity(regions.len());
        let mut removed = false;
        work += regions.len();
        if work > WORK_BUDGET {
            return Cover::GaveUp;
        }
        for piece in regions.drain(..) {
            if !conds.iter().all(|c| piece.may_meet(c)) {
                next.push(piece);
                continue;
            }
            let mut inside = piece;
            let mut meets = true;
            for c in conds {
                let mut outside = inside.clone();
                outside.subtract(c);
                if !outside.is_empty() {
                    next.push(outside);
                }
                inside.intersect(c);
                if inside.is_empty() {
                    meets = false;
                    break;
                }
            }
            removed |= meets;
            if next.len() > MAX_REGIONS {
                return Cover::GaveUp;
            }
        }
        if removed {
            used.push(e);
        }
        regions = next;
        if regions.is_empty() {
            return Cover::Covered(used);
        }
    }
    match regions.into_iter().next() {
        Some(open) => Cover::Open(open),
        None => Cover::Covered(used),
    }
}

/// Turns a [`Cover`] of `region` into a verdict, keeping only the covering
/// routes that are needed (greedily, when there are few).
fn finish(result: Cover, region: &Region, lowered: &[Option<Vec<Cond>>]) -> Verdict {
    match result {
        Cover::GaveUp => Verdict::GaveUp,
        Cover::Open(open) => Verdict::Reachable(Open::Region(open)),
        Cover::Covered(mut by) => {
            if by.len() > 1 && by.len() <= 12 {
                let mut i = 0;
                while i < by.len() && by.len() > 1 {
                    let without: Vec<usize> = by
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, &e)| e)
                        .collect();
                    if matches!(
                        cover(region, without.iter().copied(), lowered),
                        Cover::Covered(_)
                    ) {
                        by = without;
                    } else {
                        i += 1;
                    }
                }
            }
            let catch_all = by.len() == 1 && lowered[by[0]].is_none();
            Verdict::Shadowed { by, catch_all }
        }
    }
}

// ---------------------------------------------------------------- conditions

type Name = Rc<str>;

/// A condition of a route's `match`, in the form the set algebra uses.
#[derive(Clone, Debug)]
enum Cond {
    Host(Vec<HostAtom>),
    Path(Vec<PathAtom>),
    Method(Vec<MethodAtom>),
    Header(Name, ValueCond),
    Query(Name, ValueCond),
}

#[derive(Clone, Debug)]
enum ValueCond {
    Present,
    OneOf(Vec<Name>),
}

/// The route's conditions; `None` when it matches every request.
fn lower(route: &Route) -> Option<Vec<Cond>> {
    let matcher = route.matcher.as_ref()?;
    if matcher.conditions.is_empty() {
        return None;
    }
    let conds = matcher
        .conditions
        .iter()
        .map(|condition| match &condition.test {
            Test::Host(patterns) => Cond::Host(
                patterns
                    .iter()
                    .map(|p| match &p.value {
                        HostPattern::Exact(name) => HostAtom::Exact(name.as_str().into()),
                        HostPattern::Wildcard(suffix) => HostAtom::Wild(suffix.as_str().into()),
                    })
                    .collect(),
            ),
            Test::Path(paths) => Cond::Path(
                paths
                    .iter()
                    .map(|p| PathAtom::base(PathBase::Exact(p.value.as_str().into())))
                    .collect(),
            ),
            Test::PathPrefix(prefixes) => Cond::Path(
                prefixes
                    .iter()
                    .map(|p| PathAtom::base(PathBase::prefix(&p.value)))
                    .collect(),
            ),
            Test::PathRegex(patterns) => Cond::Path(
                patterns
                    .iter()
                    .map(|p| PathAtom {
                        base: regex_base(&p.value),
                        regexes: vec![p.value.as_str().into()],
                    })
                    .collect(),
            ),
            Test::Method(methods) => Cond::Method(
                methods
                    .iter()
                    .map(|m| MethodAtom::Name(m.value.as_str().into()))
                    .collect(),
            ),
            Test::Header { name, values } => Cond::Header(
                name.value.to_ascii_lowercase().into(),
                value_cond(values.iter().map(|v| v.value.as_str())),
            ),
            Test::Query { name, values } => Cond::Query(
                name.value.as_str().into(),
                value_cond(values.iter().map(|v| v.value.as_str())),
            ),
        })
        .collect();
    Some(conds)
}

/// A segment prefix holding every path the anchored regex `pattern` can
/// match, from its leading literal: `/api/v[0-9]+/x` only matches paths
/// starting with `/api/v`, all below the prefix `/api`. Sound by
/// construction: the literal ends at the first character with a meaning in
/// regex syntax, loses its last character when a quantifier follows, and is
/// empty (prefix `/`, every path) when the pattern has an alternation or
/// starts with a group, flag or class.
fn regex_base(pattern: &str) -> PathBase {
    const SPECIAL: &[char] = &[
        '\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$', '#', '&', '-', '~',
    ];
    if pattern.contains('|') {
        return PathBase::prefix("/");
    }
    let end = pattern
        .find(|c: char| SPECIAL.contains(&c) || c.is_whitespace())
        .unwrap_or(pattern.len());
    let mut literal = &pattern[..end];
    if pattern[end..].starts_with(['*', '?', '{', '+']) {
        // The quantifier applies to the literal's last character.
        literal = literal
            .char_indices()
            .last()
            .map_or("", |(i, _)| &literal[..i]);
    }
    // Every match starts with `literal`; if it has a `/` after the first
    // character, every match is below the part before that last `/`.
    match literal.rfind('/') {
        Some(i) if i > 0 && literal.starts_with('/') => PathBase::prefix(&literal[..i]),
        _ => PathBase::prefix("/"),
    }
}

fn value_cond<'a>(values: impl Iterator<Item = &'a str>) -> ValueCond {
    let mut values: Vec<Name> = values.map(Name::from).collect();
    if values.is_empty() {
        return ValueCond::Present;
    }
    values.sort();
    values.dedup();
    ValueCond::OneOf(values)
}

// ---------------------------------------------------------------- laminar sets

/// An atom of a laminar family: two atoms are nested or disjoint.
trait Atom: Clone + PartialEq {
    /// Sound: `true` only when every value of `other` is one of `self`.
    fn contains(&self, other: &Self) -> bool;

    /// A superset of the intersection; `None` only when they are disjoint.
    fn meet(&self, other: &Self) -> Option<Self> {
        if self.contains(other) {
            Some(other.clone())
        } else if other.contains(self) {
            Some(self.clone())
        } else {
            None
        }
    }
}

/// `⋃ pos ∖ ⋃ neg`. Invariant: no positive atom lies inside a single
/// negative atom, so the set is empty iff `pos` is (see the module doc).
#[derive(Clone, Debug, PartialEq)]
struct AtomSet<A> {
    pos: Vec<A>,
    neg: Vec<A>,
}

impl<A: Atom> AtomSet<A> {
    fn of(atom: A) -> Self {
        AtomSet {
            pos: vec![atom],
            neg: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    fn intersect(&mut self, cond: &[A]) {
        let mut pos: Vec<A> = Vec::with_capacity(self.pos.len());
        for p in &self.pos {
            for c in cond {
                if let Some(m) = p.meet(c)
                    && !self.neg.iter().any(|n| n.contains(&m))
                {
                    push_atom(&mut pos, m);
                }
            }
        }
        self.pos = pos;
        // A negative atom that meets no positive one can never matter again:
        // positive atoms only shrink.
        let pos = &self.pos;
        self.neg.retain(|n| pos.iter().any(|p| p.meet(n).is_some()));
    }

    fn subtract(&mut self, cond: &[A]) {
        self.pos.retain(|p| !cond.iter().any(|c| c.contains(p)));
        for c in cond {
            if self.pos.iter().any(|p| p.meet(c).is_some()) && !self.neg.contains(c) {
                self.neg.push(c.clone());
            }
        }
    }

    /// `false` only when the set and `cond` are disjoint.
    fn may_meet(&self, cond: &[A]) -> bool {
        self.pos.iter().any(|p| {
            cond.iter().any(|c| {
                p.meet(c)
                    .is_some_and(|m| !self.neg.iter().any(|n| n.contains(&m)))
            })
        })
    }
}

/// Adds `atom` to a union, keeping it free of atoms inside other atoms.
fn push_atom<A: Atom>(union: &mut Vec<A>, atom: A) {
    if union.iter().any(|u| u.contains(&atom)) {
        return;
    }
    union.retain(|u| !atom.contains(u));
    union.push(atom);
}

/// A set of hosts (lower-case, without port).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HostAtom {
    Any,
    Exact(Name),
    /// `*.example.com` as its suffix `.example.com`: longer names ending so.
    Wild(Name),
}

impl Atom for HostAtom {
    fn contains(&self, other: &Self) -> bool {
        match (self, other) {
            (HostAtom::Any, _) => true,
            (_, HostAtom::Any) => false,
            (HostAtom::Exact(a), HostAtom::Exact(b)) => a == b,
            (HostAtom::Exact(_), HostAtom::Wild(_)) => false,
            (HostAtom::Wild(s), HostAtom::Exact(h)) => h.len() > s.len() && h.ends_with(&**s),
            // Every `X + t` (X not empty) ends with `s` when `t` does.
            (HostAtom::Wild(s), HostAtom::Wild(t)) => t.ends_with(&**s),
        }
    }
}

/// A set of normalised paths: `base`, and every regex of `regexes` matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PathAtom {
    base: PathBase,
    /// Sorted regex texts, opaque.
    regexes: Vec<Name>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PathBase {
    /// Segment-aware prefix without trailing slash; `/` is every path.
    Prefix(Name),
    Exact(Name),
}

impl PathBase {
    fn prefix(prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        PathBase::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.into())
    }

    fn contains(&self, other: &PathBase) -> bool {
        match (self, other) {
            (PathBase::Prefix(q), PathBase::Prefix(r) | PathBase::Exact(r)) => {
                path_has_prefix(r, q)
            }
            (PathBase::Exact(p), PathBase::Exact(r)) => p == r,
            (PathBase::Exact(_), PathBase::Prefix(_)) => false,
        }
    }

    fn is_everything(&self) -> bool {
        matches!(self, PathBase::Prefix(q) if &**q == "/")
    }
}

impl PathAtom {
    fn base(base: PathBase) -> Self {
        PathAtom {
            base,
            regexes: Vec::new(),
        }
    }
}

impl Atom for PathAtom {
    fn contains(&self, other: &Self) -> bool {
        self.base.contains(&other.base) && self.regexes.iter().all(|r| other.regexes.contains(r))
    }

    fn meet(&self, other: &Self) -> Option<Self> {
        let base = if self.base.contains(&other.base) {
            other.base.clone()
        } else if other.base.contains(&self.base) {
            self.base.clone()
        } else {
            return None;
        };
        let mut regexes = self.regexes.clone();
        regexes.extend(other.regexes.iter().cloned());
        regexes.sort();
        regexes.dedup();
        Some(PathAtom { base, regexes })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum MethodAtom {
    Any,
    Name(Name),
}

impl Atom for MethodAtom {
    fn contains(&self, other: &Self) -> bool {
        match (self, other) {
            (MethodAtom::Any, _) => true,
            (MethodAtom::Name(a), MethodAtom::Name(b)) => a == b,
            (MethodAtom::Name(_), MethodAtom::Any) => false,
        }
    }
}

// ---------------------------------------------------------------- value sets

/// A set of "values a request carries for one header or query name" (V).
#[derive(Clone, Debug, Default, PartialEq)]
struct ValueSet {
    /// V ≠ ∅.
    present: bool,
    /// V = ∅.
    absent: bool,
    /// V meets each of these (already without excluded values).
    clauses: Vec<Vec<Name>>,
    /// Not in V.
    excluded: Vec<Name>,
}

impl ValueSet {
    fn is_empty(&self) -> bool {
        (self.absent && (self.present || !self.clauses.is_empty()))
            || self.clauses.iter().any(Vec::is_empty)
    }

    fn intersect(&mut self, cond: &ValueCond) {
        match cond {
            ValueCond::Present => self.present = true,
            ValueCond::OneOf(values) => {
                let clause: Vec<Name> = values
                    .iter()
                    .filter(|v| !self.excluded.contains(v))
                    .cloned()
                    .collect();
                // A clause implied by an existing one adds nothing.
                if !self
                    .clauses
                    .iter()
                    .any(|c| c.iter().all(|v| clause.contains(v)))
                {
                    self.clauses.push(clause);
                }
            }
        }
    }

    fn subtract(&mut self, cond: &ValueCond) {
        match cond {
            ValueCond::Present => self.absent = true,
            ValueCond::OneOf(values) => {
                for v in values {
                    if !self.excluded.contains(v) {
                        self.excluded.push(v.clone());
                    }
                }
                for clause in &mut self.clauses {
                    clause.retain(|v| !values.contains(v));
                }
            }
        }
    }

    /// Exact: whether some V is in both.
    fn may_meet(&self, cond: &ValueCond) -> bool {
        !self.is_empty()
            && !self.absent
            && match cond {
                ValueCond::Present => true,
                ValueCond::OneOf(values) => values.iter().any(|v| !self.excluded.contains(v)),
            }
    }
}

// ---------------------------------------------------------------- regions

/// A box of requests: one set per dimension; a header or query name not
/// listed is unconstrained.
#[derive(Clone, Debug, PartialEq)]
struct Region {
    host: AtomSet<HostAtom>,
    path: AtomSet<PathAtom>,
    method: AtomSet<MethodAtom>,
    headers: Vec<(Name, ValueSet)>,
    queries: Vec<(Name, ValueSet)>,
}

fn entry<'a>(list: &'a mut Vec<(Name, ValueSet)>, name: &Name) -> &'a mut ValueSet {
    let i = match list.iter().position(|(n, _)| n == name) {
        Some(i) => i,
        None => {
            list.push((name.clone(), ValueSet::default()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

fn lookup<'a>(list: &'a [(Name, ValueSet)], name: &Name) -> Option<&'a ValueSet> {
    list.iter().find(|(n, _)| n == name).map(|(_, set)| set)
}

impl Region {
    fn universe() -> Self {
        Region {
            host: AtomSet::of(HostAtom::Any),
            path: AtomSet::of(PathAtom::base(PathBase::prefix("/"))),
            method: AtomSet::of(MethodAtom::Any),
            headers: Vec::new(),
            queries: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.host.is_empty()
            || self.path.is_empty()
            || self.method.is_empty()
            || self.headers.iter().any(|(_, s)| s.is_empty())
            || self.queries.iter().any(|(_, s)| s.is_empty())
    }

    fn intersect(&mut self, cond: &Cond) {
        match cond {
            Cond::Host(atoms) => self.host.intersect(atoms),
            Cond::Path(atoms) => self.path.intersect(atoms),
            Cond::Method(atoms) => self.method.intersect(atoms),
            Cond::Header(name, c) => entry(&mut self.headers, name).intersect(c),
            Cond::Query(name, c) => entry(&mut self.queries, name).intersect(c),
        }
    }

    fn subtract(&mut self, cond: &Cond) {
        match cond {
            Cond::Host(atoms) => self.host.subtract(atoms),
            Cond::Path(atoms) => self.path.subtract(atoms),
            Cond::Method(atoms) => self.method.subtract(atoms),
            Cond::Header(name, c) => entry(&mut self.headers, name).subtract(c),
            Cond::Query(name, c) => entry(&mut self.queries, name).subtract(c),
        }
    }

    /// `false` only when no request of the region meets `cond`.
    fn may_meet(&self, cond: &Cond) -> bool {
        match cond {
            Cond::Host(atoms) => self.host.may_meet(atoms),
            Cond::Path(atoms) => self.path.may_meet(atoms),
            Cond::Method(atoms) => self.method.may_meet(atoms),
            Cond::Header(name, c) => lookup(&self.headers, name).is_none_or(|s| s.may_meet(c)),
            Cond::Query(name, c) => lookup(&self.queries, name).is_none_or(|s| s.may_meet(c)),
        }
    }
}

// ---------------------------------------------------------------- probes

/// One generic request of a route's own region: a fresh label under a
/// wildcard, a fresh segment under a prefix, a fresh method, a fresh value
/// for a bare presence, no line for an unconstrained header. "Fresh" values
/// (`\u{1}`) exist in the model's request space, which is all the analysis
/// reasons about: when no earlier route may match the probe, R is not
/// shadowed, exactly as the full subtraction would find, only sooner.
/// Regions with a regex have no probe.
#[derive(Debug)]
struct Probe {
    host: HostAtom,
    path: PathBase,
    method: MethodAtom,
    headers: Vec<(Name, Vec<Name>)>,
    queries: Vec<(Name, Vec<Name>)>,
}

const FRESH: &str = "\u{1}";

impl Probe {
    /// The probe of `region`, which must be a route's own region (made by
    /// intersections only: no negative atoms, no exclusions).
    fn of(region: &Region) -> Option<Probe> {
        let host = match region.host.pos.first()? {
            HostAtom::Any => HostAtom::Exact(FRESH.into()),
            HostAtom::Exact(h) => HostAtom::Exact(h.clone()),
            HostAtom::Wild(s) => HostAtom::Exact(format!("{FRESH}{s}").into()),
        };
        let path = region.path.pos.first()?;
        if !path.regexes.is_empty() {
            return None;
        }
        let path = match &path.base {
            PathBase::Exact(p) => PathBase::Exact(p.clone()),
            PathBase::Prefix(q) if &**q == "/" => PathBase::Exact(format!("/{FRESH}").into()),
            PathBase::Prefix(q) => PathBase::Exact(format!("{q}/{FRESH}").into()),
        };
        let method = match region.method.pos.first()? {
            MethodAtom::Any => MethodAtom::Name(FRESH.into()),
            name => name.clone(),
        };
        let values = |list: &[(Name, ValueSet)]| -> Option<Vec<(Name, Vec<Name>)>> {
            list.iter()
                .map(|(name, set)| {
                    if set.absent || !set.excluded.is_empty() {
                        return None;
                    }
                    let mut v: Vec<Name> = Vec::new();
                    for clause in &set.clauses {
                        v.push(clause.first()?.clone());
                    }
                    if v.is_empty() && set.present {
                        v.push(FRESH.into());
                    }
                    Some((name.clone(), v))
                })
                .collect()
        };
        let intersections_only = region.host.neg.is_empty()
            && region.path.neg.is_empty()
            && region.method.neg.is_empty();
        intersections_only.then_some(())?;
        Some(Probe {
            host,
            path,
            method,
            headers: values(&region.headers)?,
            queries: values(&region.queries)?,
        })
    }

    /// `false` only when a route with these conditions cannot match the
    /// probe (`None`: a route without `match`).
    fn may_match(&self, conds: Option<&[Cond]>) -> bool {
        let Some(conds) = conds else {
            return true;
        };
        let values_meet = |list: &[(Name, Vec<Name>)], name: &Name, c: &ValueCond| {
            let v = list
                .iter()
                .find(|(n, _)| n == name)
                .map_or(&[][..], |(_, v)| v.as_slice());
            match c {
                ValueCond::Present => !v.is_empty(),
                ValueCond::OneOf(values) => v.iter().any(|x| values.contains(x)),
            }
        };
        // Candidates mostly share the host: test it last.
        let host = |c: &Cond| matches!(c, Cond::Host(_));
        let others = conds.iter().filter(|c| !host(c));
        others
            .chain(conds.iter().filter(|c| host(c)))
            .all(|c| match c {
                Cond::Host(atoms) => atoms.iter().any(|a| a.contains(&self.host)),
                // A regex atom lies inside its base: outside the base it
                // cannot match; inside, it may.
                Cond::Path(atoms) => atoms.iter().any(|a| a.base.contains(&self.path)),
                Cond::Method(atoms) => atoms.iter().any(|a| a.contains(&self.method)),
                Cond::Header(name, c) => values_meet(&self.headers, name, c),
                Cond::Query(name, c) => values_meet(&self.queries, name, c),
            })
    }
}

// ---------------------------------------------------------------- index

/// Finds the earlier routes whose host and path sets may overlap a region.
#[derive(Debug, Default)]
struct RouteIndex {
    host: TreeIndex,
    path: TreeIndex,
    /// Every indexed route, ascending.
    all: Vec<usize>,
}

impl RouteIndex {
    fn insert(&mut self, route: usize, region: &Region) {
        self.host.insert(route, host_nodes(&region.host.pos));
        self.path.insert(route, path_nodes(&region.path.pos));
        self.all.push(route);
    }

    /// Ascending indices of the routes that may overlap `region`.
    fn candidates(&self, region: &Region) -> Vec<usize> {
        let hosts = self.host.lookup(host_nodes(&region.host.pos));
        // A short list is cheaper to filter region by region than the path
        // lookup is to build.
        if let Some(hosts) = &hosts
            && hosts.len() <= 256
        {
            return hosts.clone();
        }
        let paths = self.path.lookup(path_nodes(&region.path.pos));
        match (hosts, paths) {
            (None, None) => self.all.clone(),
            (Some(one), None) | (None, Some(one)) => one,
            (Some(hosts), Some(paths)) => {
                let mut out = Vec::with_capacity(hosts.len().min(paths.len()));
                let (mut i, mut j) = (0, 0);
                while i < hosts.len() && j < paths.len() {
                    match hosts[i].cmp(&paths[j]) {
                        std::cmp::Ordering::Less => i += 1,
                        std::cmp::Ordering::Greater => j += 1,
                        std::cmp::Ordering::Equal => {
                            out.push(hosts[i]);
                            i += 1;
                            j += 1;
                        }
                    }
                }
                out
            }
        }
    }
}

/// A node of a laminar family: its key, and the keys of the nodes above it.
type Node<'a> = (&'a str, Vec<&'a str>);

/// The nodes of some atoms; `None`: the whole dimension, or a set the index
/// cannot place.
type Nodes<'a> = Option<Vec<Node<'a>>>;

fn host_nodes(atoms: &[HostAtom]) -> Nodes<'_> {
    let mut nodes = Vec::with_capacity(atoms.len());
    for atom in atoms {
        let name: &str = match atom {
            HostAtom::Any => return None,
            HostAtom::Exact(name) => name,
            // `Wild("example.com")` would hold `badexample.com`, which has
            // no dot-suffix `example.com`: only dot-led suffixes are placed.
            HostAtom::Wild(suffix) if !suffix.starts_with('.') => return None,
            HostAtom::Wild(suffix) => suffix,
        };
        let above = name
            .char_indices()
            .filter(|&(i, c)| i > 0 && c == '.')
            .map(|(i, _)| &name[i..])
            .collect();
        nodes.push((name, above));
    }
    Some(nodes)
}

fn path_nodes(atoms: &[PathAtom]) -> Nodes<'_> {
    let mut nodes = Vec::with_capacity(atoms.len());
    for atom in atoms {
        if atom.base.is_everything() {
            return None;
        }
        let (PathBase::Prefix(path) | PathBase::Exact(path)) = &atom.base;
        let path: &str = path;
        let above = path
            .char_indices()
            .filter(|&(i, c)| i > 0 && c == '/')
            .map(|(i, _)| &path[..i])
            .collect();
        nodes.push((path, above));
    }
    Some(nodes)
}

/// Routes by node of a laminar family: an atom meets another only if one's
/// node is the other's or above it.
#[derive(Debug, Default)]
struct TreeIndex {
    /// Routes with an atom at this node, ascending.
    at: FastMap<Vec<usize>>,
    /// Routes with an atom strictly below this node, ascending.
    below: FastMap<Vec<usize>>,
    /// Routes the index cannot place, ascending.
    anywhere: Vec<usize>,
}

impl TreeIndex {
    fn insert(&mut self, route: usize, nodes: Nodes<'_>) {
        let Some(nodes) = nodes else {
            self.anywhere.push(route);
            return;
        };
        for (key, above) in nodes {
            push_once(&mut self.at, key, route);
            for a in above {
                push_once(&mut self.below, a, route);
            }
        }
    }

    /// Ascending routes that may meet the atoms of `nodes`; `None` = all.
    fn lookup(&self, nodes: Nodes<'_>) -> Option<Vec<usize>> {
        let nodes = nodes?;
        let mut lists: Vec<&[usize]> = Vec::new();
        if !self.anywhere.is_empty() {
            lists.push(&self.anywhere);
        }
        for (key, above) in &nodes {
            for k in std::iter::once(key).chain(above) {
                if let Some(routes) = self.at.get(*k) {
                    lists.push(routes);
                }
            }
            if let Some(routes) = self.below.get(*key) {
                lists.push(routes);
            }
        }
        Some(match lists.as_slice() {
            [] => Vec::new(),
            [one] => one.to_vec(),
            _ => {
                let mut out = lists.concat();
                out.sort_unstable();
                out.dedup();
                out
            }
        })
    }
}

/// Adds `route` to the list of `key`. Routes are inserted in ascending
/// order, so a repeat is always last.
fn push_once(map: &mut FastMap<Vec<usize>>, key: &str, route: usize) {
    match map.get_mut(key) {
        Some(list) => {
            if list.last() != Some(&route) {
                list.push(route);
            }
        }
        None => {
            map.insert(key.into(), vec![route]);
        }
    }
}

/// A map from node keys; FNV-1a, as the keys are short and not chosen by
/// an attacker (they come from the spec being checked).
type FastMap<V> = HashMap<Name, V, std::hash::BuildHasherDefault<Fnv>>;

#[derive(Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitz_ir::matcher::{RequestHead, Router, host_without_port, normalize_path};
    use blitz_ir::{Action, ActionKind, Condition, Match, Span, Spanned};

    // ------------------------------------------------------------ building specs

    fn s(text: &str) -> Spanned<String> {
        Spanned::new(text.to_string(), Span::default())
    }

    /// One condition in a tiny notation: `host a.com *.b.com`, `path /a`,
    /// `prefix /a`, `regex /a.*`, `method GET POST`, `header x 1 2`,
    /// `query q`.
    fn test(text: &str) -> Test {
        let mut words = text.split_whitespace();
        let kind = words.next().expect("a kind");
        let rest: Vec<&str> = words.collect();
        let spanned = |v: &[&str]| v.iter().map(|w| s(w)).collect::<Vec<_>>();
        match kind {
            "host" => Test::Host(
                rest.iter()
                    .map(|w| {
                        let pattern = match w.strip_prefix('*') {
                            Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
                            None => HostPattern::Exact(w.to_string()),
                        };
                        Spanned::new(pattern, Span::default())
                    })
                    .collect(),
            ),
            "path" => Test::Path(spanned(&rest)),
            "prefix" => Test::PathPrefix(spanned(&rest)),
            "regex" => Test::PathRegex(spanned(&rest)),
            "method" => Test::Method(spanned(&rest)),
            "header" => Test::Header {
                name: s(rest[0]),
                values: spanned(&rest[1..]),
            },
            "query" => Test::Query {
                name: s(rest[0]),
                values: spanned(&rest[1..]),
            },
            other => panic!("unknown condition kind {other}"),
        }
    }

    /// A route named `name` whose name has the span `index*10..index*10+5`;
    /// `conditions` separated by `;`, or `None` for a route without match.
    fn route(index: usize, name: &str, conditions: Option<&str>) -> Route {
        let matcher = conditions.map(|text| {
            let mut conditions: Vec<Condition> = text
                .split(';')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| Condition {
                    test: test(c),
                    span: Span::default(),
                })
                .collect();
            conditions.sort_by_key(|c| c.test.order());
            Match {
                conditions,
                span: Span::default(),
            }
        });
        Route {
            name: Spanned::new(name.to_string(), Span::new(index * 10, index * 10 + 5)),
            matcher,
            steps: Vec::new(),
            action: Action {
                kind: ActionKind::Respond {
                    status: Spanned::new(200, Span::default()),
                    body: s(name),
                    content_type: None,
                },
                span: Span::default(),
            },
            span: Span::default(),
        }
    }

    /// A spec of routes named r0, r1, ... with these conditions.
    fn spec(routes: &[Option<&str>]) -> Spec {
        Spec {
            version: 1,
            routes: routes
                .iter()
                .enumerate()
                .map(|(i, c)| route(i, &format!("r{i}"), *c))
                .collect(),
            ..Spec::default()
        }
    }

    /// For each route, `Some(covering routes)` when it is reported.
    fn shadowed(routes: &[Option<&str>]) -> Vec<Option<Vec<usize>>> {
        analyse(&spec(routes), &[])
            .into_iter()
            .map(|v| match v {
                Verdict::Shadowed { by, .. } => Some(by),
                _ => None,
            })
            .collect()
    }

    /// Whether the last route is reported, by exactly the routes `by`.
    fn last_shadowed_by(routes: &[&str], by: &[usize]) {
        let routes: Vec<Option<&str>> = routes.iter().map(|r| Some(*r)).collect();
        let verdicts = shadowed(&routes);
        assert_eq!(
            verdicts.last().cloned().flatten(),
            Some(by.to_vec()),
            "{routes:?}"
        );
        assert!(
            verdicts[..verdicts.len() - 1].iter().all(Option::is_none),
            "{routes:?}: {verdicts:?}"
        );
    }

    fn last_open(routes: &[&str]) {
        let routes: Vec<Option<&str>> = routes.iter().map(|r| Some(*r)).collect();
        let verdicts = shadowed(&routes);
        assert!(
            verdicts.iter().all(Option::is_none),
            "{routes:?}: {verdicts:?}"
        );
    }

    // ------------------------------------------------------------ single dimensions

    #[test]
    fn identical_route_is_shadowed() {
        let c = "host api.example.com; prefix /v1; method GET; header x-canary 1; query debug";
        last_shadowed_by(&[c, c], &[0]);
        last_shadowed_by(&["path /a", "path /a"], &[0]);
    }

    #[test]
    fn prefixes_are_segment_aware() {
        last_shadowed_by(&["prefix /v1", "prefix /v1/users"], &[0]);
        last_shadowed_by(&["prefix /v1", "path /v1/users/7"], &[0]);
        last_shadowed_by(&["prefix /v1", "path /v1"], &[0]);
        last_shadowed_by(&["prefix /v1", "path /v1/"], &[0]);
        last_shadowed_by(&["prefix /v1/", "prefix /v1/x"], &[0]);
        last_shadowed_by(&["prefix /", "path /anything"], &[0]);
        last_open(&["prefix /v1", "prefix /v1x"]);
        last_open(&["prefix /v1", "path /v10"]);
        last_open(&["prefix /v1/users", "prefix /v1"]);
        last_open(&["path /v1", "prefix /v1"]);
        last_open(&["path /v1", "path /v1/"]);
        last_open(&["prefix /v1", "prefix /v2"]);
    }

    #[test]
    fn paths_are_covered_by_unions() {
        last_shadowed_by(&["path /a", "path /b", "path /a /b"], &[0, 1]);
        last_shadowed_by(&["prefix /a", "path /b", "path /a/x /b"], &[0, 1]);
        last_open(&["path /a", "path /b", "path /a /b /c"]);
        // `/v1` is `/v1` itself and everything below it: an exact path and
        // every first segment below would be needed.
        last_open(&["path /v1", "prefix /v1/a", "prefix /v1/b", "prefix /v1"]);
    }

    #[test]
    fn hosts_exact_and_wildcard() {
        last_shadowed_by(&["host *.example.com", "host api.example.com"], &[0]);
        last_shadowed_by(&["host *.example.com", "host a.b.example.com"], &[0]);
        last_shadowed_by(&["host *.example.com", "host *.api.example.com"], &[0]);
        last_shadowed_by(&["host *.com", "host *.example.com"], &[0]);
        last_shadowed_by(&["host a.com", "host b.com", "host b.com a.com"], &[0, 1]);
        last_shadowed_by(&["host a.com *.b.com", "host x.b.com a.com"], &[0]);
        last_open(&["host *.example.com", "host example.com"]);
        last_open(&["host *.example.com", "host badexample.com"]);
        last_open(&["host *.api.example.com", "host *.example.com"]);
        last_open(&["host api.example.com", "host *.example.com"]);
        last_open(&["host *.a.com", "host *.b.com", "host *.com"]);
        last_open(&["host a.com", "prefix /"]);
    }

    #[test]
    fn wildcards_need_every_name_below_them() {
        // Finitely many names never cover a wildcard.
        last_open(&["host a.x.com", "host b.x.com", "host *.x.com"]);
        // A wildcard minus a smaller wildcard still has names.
        last_open(&["host *.a.x.com", "host a.x.com", "host *.x.com"]);
    }

    #[test]
    fn methods_are_covered_by_unions() {
        last_shadowed_by(&["method GET", "method POST", "method GET POST"], &[0, 1]);
        last_shadowed_by(&["method GET HEAD", "method HEAD"], &[0]);
        last_open(&["method GET", "method POST", "method GET PUT"]);
        last_open(&["method GET", "method POST", "prefix /"]);
        // Methods are case-sensitive.
        last_open(&["method GET", "method get"]);
    }

    #[test]
    fn unions_across_dimensions() {
        // GET requests by r0; every other method under /v1/users by r1.
        last_shadowed_by(
            &[
                "prefix /v1; method GET",
                "prefix /v1/users; method POST PUT",
                "prefix /v1/users; method GET POST",
            ],
            &[0, 1],
        );
        // A request to /v1/users with PUT reaches r2.
        last_open(&[
            "prefix /v1; method GET",
            "prefix /v1/users; method POST",
            "prefix /v1/users",
        ]);
        // Split by host and by path at once.
        last_shadowed_by(
            &[
                "host a.com; prefix /x",
                "host b.com",
                "prefix /y",
                "host a.com b.com; prefix /x /y",
            ],
            &[0, 1, 2],
        );
        last_open(&[
            "host a.com; prefix /x",
            "host b.com; prefix /y",
            "host a.com b.com; prefix /x /y",
        ]);
    }

    #[test]
    fn header_values_are_exact() {
        last_open(&["header x-canary 2", "header x-canary 1"]);
        last_shadowed_by(&["header x-canary", "header x-canary 1"], &[0]);
        last_shadowed_by(&["header x-canary 1 2", "header x-canary 2"], &[0]);
        last_shadowed_by(
            &[
                "header x-canary 1",
                "header x-canary 2",
                "header x-canary 1 2",
            ],
            &[0, 1],
        );
        // Present with another value is not covered by listed values.
        last_open(&["header x-canary 1", "header x-canary 2", "header x-canary"]);
        // Absent versus present.
        last_open(&["header x-canary", "path /a"]);
        last_shadowed_by(&["path /a", "path /a; header x-canary"], &[0]);
        // Names are case-insensitive, different names are independent.
        last_shadowed_by(&["header X-Canary 1", "header x-canary 1"], &[0]);
        last_open(&["header x-a 1", "header x-b 1"]);
        last_shadowed_by(&["header x-a 1", "header x-a 1; header x-b 1"], &[0]);
    }

    #[test]
    fn header_presence_splits() {
        // Requests with the header go to r0, those without to r1.
        last_shadowed_by(
            &[
                "prefix /a; header x",
                "prefix /a; method GET",
                "prefix /a; method GET",
            ],
            &[1],
        );
        last_open(&["prefix /a; header x", "prefix /a; header y", "prefix /a"]);
        // With x: r0. Without x but GET: r1. R needs GET: covered by both.
        last_shadowed_by(
            &["header x", "method GET; header y", "method GET; header y 1"],
            &[1],
        );
    }

    #[test]
    fn query_values_are_exact() {
        last_open(&["query lang en", "query lang fr"]);
        last_shadowed_by(&["query lang", "query lang fr"], &[0]);
        last_shadowed_by(
            &["query lang en", "query lang fr", "query lang fr en"],
            &[0, 1],
        );
        last_open(&["query lang en", "query lang"]);
        last_open(&["query lang en", "query Lang en"]);
        last_open(&["query lang", "header lang"]);
    }

    #[test]
    fn regexes_are_opaque() {
        last_shadowed_by(&["regex /a.*", "regex /a.*"], &[0]);
        last_shadowed_by(&["regex /a.* /b", "regex /a.*"], &[0]);
        last_shadowed_by(&["regex /a.*", "regex /a.*; method GET"], &[0]);
        last_shadowed_by(&["regex /a.*", "prefix /a; regex /a.*"], &[0]);
        // Covered whatever its path is.
        last_shadowed_by(&["method GET", "regex /a.*; method GET"], &[0]);
        last_shadowed_by(&["prefix /", "regex /a.*"], &[0]);
        last_shadowed_by(&["prefix /a", "prefix /a; regex /a.*"], &[0]);
        // Never covering by meaning, only by identical text.
        last_open(&["regex /a.*", "regex /a/.*"]);
        last_open(&["regex .*", "path /a"]);
        last_open(&["regex /a", "path /a"]);
        last_open(&["prefix /a", "regex /a.*"]);
        last_open(&["prefix /a; regex /a.*", "regex /a.*"]);
    }

    #[test]
    fn regexes_lie_below_their_leading_literal() {
        let base = |p: &str| match regex_base(p) {
            PathBase::Prefix(q) => q.to_string(),
            PathBase::Exact(e) => panic!("exact {e}"),
        };
        assert_eq!(base("/api/v[0-9]+/x"), "/api");
        assert_eq!(base("/api/v1/items/[0-9]+"), "/api/v1/items");
        assert_eq!(base("/api/v1/items/"), "/api/v1/items");
        assert_eq!(base("/api/v1/items"), "/api/v1");
        assert_eq!(base("/x.*"), "/");
        assert_eq!(base("/a/bc?"), "/a");
        assert_eq!(base("/a/b/?"), "/a");
        assert_eq!(base("/a/b/c{0,1}"), "/a/b");
        assert_eq!(base("/a/b/c+"), "/a/b");
        assert_eq!(base("/a/b/x|/c/d/e"), "/");
        assert_eq!(base("(?i)/a/b/c"), "/");
        assert_eq!(base("[/]a/b/c"), "/");
        assert_eq!(base("/a/b\\.c/d"), "/a");
        assert_eq!(base("/a/b/c d"), "/a/b");
        assert_eq!(base("a/b/c"), "/");
        assert_eq!(base("/é/ü/x"), "/é/ü");
        last_shadowed_by(&["prefix /api", "regex /api/v[0-9]+/x"], &[0]);
        last_shadowed_by(
            &["prefix /api/v1", "method GET; regex /api/v1/[0-9]+"],
            &[0],
        );
        last_open(&["prefix /api/v1", "regex /api/v[0-9]+"]);
        last_open(&["prefix /a", "regex /a/x|/b"]);
        last_open(&["prefix /a/b", "regex /a/bc?"]);
        last_open(&["prefix /a/b", "regex /a/b*"]);
        last_open(&["regex /a/[0-9]+", "prefix /a/1"]);
    }

    #[test]
    fn a_route_without_match_shadows_every_later_route() {
        let verdicts = analyse(&spec(&[Some("path /a"), None, Some("path /b"), None]), &[]);
        assert!(matches!(verdicts[0], Verdict::Reachable(_)));
        assert!(matches!(verdicts[1], Verdict::Reachable(_)));
        for v in &verdicts[2..] {
            assert!(
                matches!(v, Verdict::Shadowed { by, catch_all: true } if by == &[1]),
                "{v:?}"
            );
        }
        // An empty match block matches everything too.
        let verdicts = analyse(&spec(&[Some(""), Some("path /b")]), &[]);
        assert!(matches!(&verdicts[1], Verdict::Shadowed { by, catch_all: true } if by == &[0]));
    }

    #[test]
    fn a_fallback_after_routes_covering_everything_is_shadowed() {
        let got = shadowed(&[Some("prefix /"), None]);
        assert_eq!(got, vec![None, Some(vec![0])]);
        let got = shadowed(&[Some("method GET"), None]);
        assert_eq!(got, vec![None, None]);
    }

    #[test]
    fn contradictory_routes_are_not_reported() {
        let verdicts = analyse(&spec(&[Some("path /a"), Some("path /a; prefix /b")]), &[]);
        assert!(matches!(verdicts[1], Verdict::Empty));
        let verdicts = analyse(
            &spec(&[
                Some("path /a"),
                Some("header x; header x 1"),
                Some("header x 1"),
            ]),
            &[],
        );
        assert!(matches!(&verdicts[2], Verdict::Shadowed { by, .. } if by == &[1]));
    }

    /// A `match` with an error inside (here a condition the front end
    /// dropped, leaving `path /b` or nothing) is not what the user meant:
    /// it neither covers later routes nor is the catch-all, nor is judged.
    #[test]
    fn a_match_with_an_error_inside_covers_nothing() {
        let error_in = |span: Span| {
            vec![Diagnostic::error(
                Code::MissingField,
                span,
                "a condition without its value",
            )]
        };
        let mut broken = spec(&[Some("path /b"), Some(""), Some("path /b"), Some("path /b")]);
        broken.routes[0].matcher.as_mut().unwrap().span = Span::new(100, 200);
        broken.routes[1].matcher.as_mut().unwrap().span = Span::new(300, 400);
        let first = error_in(Span::new(150, 155));
        let verdicts = analyse(&broken, &first);
        assert!(matches!(verdicts[0], Verdict::Malformed), "{verdicts:?}");
        // Route 1 (an empty `match`, no error in it) shadows the rest alone.
        assert!(matches!(&verdicts[2], Verdict::Shadowed { by, catch_all: true } if by == &[1]));
        let both = [first, error_in(Span::new(350, 351))].concat();
        let verdicts = analyse(&broken, &both);
        assert!(matches!(verdicts[1], Verdict::Malformed), "{verdicts:?}");
        assert!(matches!(verdicts[2], Verdict::Reachable(_)), "{verdicts:?}");
        assert!(matches!(&verdicts[3], Verdict::Shadowed { by, .. } if by == &[2]));
        // An error outside every `match` (in a step, say) changes nothing.
        let verdicts = analyse(&broken, &error_in(Span::new(250, 260)));
        assert!(matches!(verdicts[0], Verdict::Reachable(_)), "{verdicts:?}");
        assert!(matches!(&verdicts[2], Verdict::Shadowed { by, catch_all: true } if by == &[1]));
    }

    #[test]
    fn only_needed_routes_are_named() {
        last_shadowed_by(
            &["path /a; header x 1", "path /a", "path /a; header x 1 2"],
            &[1],
        );
    }

    #[test]
    fn diagnostic_points_at_both_routes() {
        let spec = spec(&[
            Some("method GET"),
            Some("method POST"),
            Some("method GET POST"),
        ]);
        let mut diagnostics = Vec::new();
        check(&spec, &mut diagnostics);
        assert_eq!(diagnostics.len(), 1);
        let d = &diagnostics[0];
        assert_eq!(d.code, Code::ShadowedRoute);
        assert!(d.is_error());
        assert_eq!(d.span, Span::new(20, 25));
        assert_eq!(d.label, "never matches");
        assert_eq!(d.message, "route `r2` can never match");
        assert!(
            d.help.contains("`r0`") && d.help.contains("`r1`"),
            "{}",
            d.help
        );
        let related: Vec<Span> = d.related.iter().map(|r| r.span).collect();
        assert_eq!(related, vec![Span::new(0, 5), Span::new(10, 15)]);

        let spec = self::spec(&[None, Some("path /a")]);
        let mut diagnostics = Vec::new();
        check(&spec, &mut diagnostics);
        assert_eq!(diagnostics.len(), 1);
        assert!(
            diagnostics[0].help.contains("has no `match`"),
            "{}",
            diagnostics[0].help
        );
        assert_eq!(diagnostics[0].related[0].label, "matches every request");
    }

    #[test]
    fn too_many_regions_gives_up() {
        // Each earlier route cuts every region along another header: the
        // regions double until the cap, and the route is not reported.
        let mut routes: Vec<String> = (0..12).map(|i| format!("header h{i} 1")).collect();
        routes.push("prefix /".into());
        let refs: Vec<Option<&str>> = routes.iter().map(|r| Some(r.as_str())).collect();
        let verdicts = analyse(&spec(&refs), &[]);
        assert!(
            matches!(
                verdicts.last(),
                Some(Verdict::GaveUp | Verdict::Reachable(_))
            ),
            "{:?}",
            verdicts.last()
        );
    }

    #[test]
    fn many_routes_stay_independent() {
        // 2,000 disjoint routes then copies of some of them.
        let mut routes = Vec::new();
        for i in 0..2000 {
            routes.push(format!(
                "host h{}.example.com; prefix /s{}; method GET",
                i % 50,
                i
            ));
        }
        routes.push("host h3.example.com; prefix /s3/x; method GET".into());
        routes.push("host *.example.com; prefix /s3; method GET".into());
        let refs: Vec<Option<&str>> = routes.iter().map(|r| Some(r.as_str())).collect();
        let got = shadowed(&refs);
        assert!(got[..2000].iter().all(Option::is_none));
        assert_eq!(got[2000], Some(vec![3]));
        assert_eq!(got[2001], None);
    }

    // ------------------------------------------------------------ witnesses

    /// A request owned, for the router.
    #[derive(Clone, Debug)]
    struct Request {
        method: String,
        host: String,
        target: String,
        headers: Vec<(String, String)>,
    }

    fn serve(router: &Router<'_>, request: &Request) -> Option<usize> {
        let headers: Vec<(&str, &[u8])> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let head = RequestHead {
            method: &request.method,
            host: &request.host,
            target: &request.target,
            headers: &headers,
        };
        router.route(&head).expect("valid target")
    }

    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    fn path_atom_matches(atom: &PathAtom, path: &str) -> bool {
        let base = match &atom.base {
            PathBase::Prefix(q) => path_has_prefix(path, q),
            PathBase::Exact(p) => &**p == path,
        };
        base && atom.regexes.iter().all(|r| {
            regex::Regex::new(&blitz_ir::matcher::anchored_regex(r))
                .is_ok_and(|re| re.is_match(path))
        })
    }

    fn values(set: &ValueSet) -> Option<Vec<String>> {
        if set.absent {
            return Some(Vec::new());
        }
        let mut out: Vec<String> = Vec::new();
        for clause in &set.clauses {
            let v = clause.first()?;
            if v.trim() != &**v {
                return None;
            }
            out.push(v.to_string());
        }
        if out.is_empty() && set.present {
            let fresh = ["w", "w1", "w2", "w3"]
                .into_iter()
                .find(|f| !set.excluded.iter().any(|e| &**e == *f))?;
            out.push(fresh.to_string());
        }
        Some(out)
    }

    /// A concrete request that should reach the route, when one is easy to
    /// name.
    fn witness(open: &Open) -> Option<Request> {
        match open {
            Open::Region(region) => region_witness(region),
            Open::Probe(probe) => Some(probe_request(probe)),
        }
    }

    fn probe_request(probe: &Probe) -> Request {
        let HostAtom::Exact(host) = &probe.host else {
            panic!("probe host {:?}", probe.host)
        };
        let PathBase::Exact(path) = &probe.path else {
            panic!("probe path {:?}", probe.path)
        };
        let MethodAtom::Name(method) = &probe.method else {
            panic!("probe method {:?}", probe.method)
        };
        let headers = probe
            .headers
            .iter()
            .flat_map(|(n, vs)| vs.iter().map(move |v| (n.to_string(), v.to_string())))
            .collect();
        let query: Vec<String> = probe
            .queries
            .iter()
            .flat_map(|(n, vs)| {
                vs.iter()
                    .map(move |v| format!("{}={}", encode(n), encode(v)))
            })
            .collect();
        let target = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", query.join("&"))
        };
        Request {
            method: method.to_string(),
            host: host.to_string(),
            target,
            headers,
        }
    }

    /// A concrete request inside `region`, when one is easy to name.
    fn region_witness(region: &Region) -> Option<Request> {
        let host = region.host.pos.iter().find_map(|atom| {
            let candidates: Vec<String> = match atom {
                HostAtom::Exact(h) => vec![h.to_string()],
                HostAtom::Wild(s) => ["w", "v", "w1", "q.w"]
                    .iter()
                    .map(|x| format!("{x}{s}"))
                    .collect(),
                HostAtom::Any => ["w.invalid", "", "w", "v.test"]
                    .iter()
                    .map(|x| x.to_string())
                    .collect(),
            };
            candidates.into_iter().find(|c| {
                let exact = HostAtom::Exact(c.as_str().into());
                host_without_port(c) == *c
                    && atom.contains(&exact)
                    && !region.host.neg.iter().any(|n| n.contains(&exact))
            })
        })?;
        let path = region.path.pos.iter().find_map(|atom| {
            let candidates: Vec<String> = match &atom.base {
                PathBase::Exact(p) => vec![p.to_string()],
                PathBase::Prefix(q) if &**q == "/" => ["/", "/w", "/w/", "/v"]
                    .iter()
                    .map(|x| x.to_string())
                    .collect(),
                PathBase::Prefix(q) => ["", "/", "/w", "/v"]
                    .iter()
                    .map(|x| format!("{q}{x}"))
                    .collect(),
            };
            candidates.into_iter().find(|c| {
                normalize_path(c).as_deref() == Some(c.as_str())
                    && path_atom_matches(atom, c)
                    && !region.path.neg.iter().any(|n| path_atom_matches(n, c))
            })
        })?;
        let method = region.method.pos.iter().find_map(|atom| {
            let candidates: Vec<String> = match atom {
                MethodAtom::Name(m) => vec![m.to_string()],
                MethodAtom::Any => ["GET", "POST", "PUT", "DELETE", "WITNESS"]
                    .iter()
                    .map(|x| x.to_string())
                    .collect(),
            };
            candidates.into_iter().find(|c| {
                let name = MethodAtom::Name(c.as_str().into());
                !region.method.neg.iter().any(|n| n.contains(&name))
            })
        })?;
        let mut headers = Vec::new();
        for (name, set) in &region.headers {
            for v in values(set)? {
                headers.push((name.to_string(), v));
            }
        }
        let mut query = Vec::new();
        for (name, set) in &region.queries {
            for v in values(set)? {
                query.push(format!("{}={}", encode(name), encode(&v)));
            }
        }
        let target = if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.join("&"))
        };
        Some(Request {
            method,
            host,
            target,
            headers,
        })
    }

    #[test]
    fn witnesses_reach_their_route() {
        let cases: &[&[&str]] = &[
            &["method GET", "method POST", "method GET PUT"],
            &["header x-canary 2", "header x-canary 1"],
            &["header x-canary 1", "header x-canary 2", "header x-canary"],
            &["host *.a.x.com", "host a.x.com", "host *.x.com"],
            &[
                "prefix /v1; method GET",
                "prefix /v1/users; method POST",
                "prefix /v1/users",
            ],
            &["query lang en", "query lang"],
            &["path /v1", "prefix /v1/w", "prefix /v1"],
        ];
        for routes in cases {
            let refs: Vec<Option<&str>> = routes.iter().map(|r| Some(*r)).collect();
            let spec = spec(&refs);
            let router = Router::new(&spec).expect("regexes");
            let last = spec.routes.len() - 1;
            let Some(Verdict::Reachable(open)) = analyse(&spec, &[]).pop() else {
                panic!("{routes:?} should be reachable");
            };
            let request = witness(&open).unwrap_or_else(|| panic!("{routes:?}: no witness"));
            assert_eq!(
                serve(&router, &request),
                Some(last),
                "{routes:?}: {request:?}"
            );
        }
    }

    // ------------------------------------------------------------ properties

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::{select, subsequence};

        const HOSTS: &[&str] = &[
            "a.com",
            "b.a.com",
            "c.b.a.com",
            "x.com",
            "*.a.com",
            "*.b.a.com",
            "*.com",
        ];
        const PATHS: &[&str] = &["/", "/x", "/x/", "/x/y", "/y", "/xy"];
        const PREFIXES: &[&str] = &["/", "/x", "/x/y", "/y", "/xy"];
        const REGEXES: &[&str] = &[
            "/x.*",
            "/y",
            "/x/[a-z]+",
            "/x/y/.*",
            "/xy?",
            "/x|/y/x",
            "/x/y?",
            "/x/yz*",
        ];
        const METHODS: &[&str] = &["GET", "POST", "PUT"];
        const VALUES: &[&str] = &["1", "2"];

        fn condition() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => subsequence(HOSTS, 1..=2).prop_map(|h| format!("host {}", h.join(" "))),
                2 => subsequence(PATHS, 1..=2).prop_map(|p| format!("path {}", p.join(" "))),
                3 => subsequence(PREFIXES, 1..=2).prop_map(|p| format!("prefix {}", p.join(" "))),
                1 => select(REGEXES).prop_map(|r| format!("regex {r}")),
                3 => subsequence(METHODS, 1..=2).prop_map(|m| format!("method {}", m.join(" "))),
                3 => (select(&["h1", "h2"][..]), subsequence(VALUES, 0..=2))
                    .prop_map(|(n, v)| format!("header {n} {}", v.join(" "))),
                2 => subsequence(VALUES, 0..=2).prop_map(|v| format!("query q {}", v.join(" "))),
            ]
        }

        fn routes() -> impl Strategy<Value = Vec<Option<String>>> {
            let one = prop_oneof![
                1 => Just(None),
                12 => proptest::collection::vec(condition(), 1..=3).prop_map(|c| Some(c.join("; "))),
            ];
            proptest::collection::vec(one, 1..=7)
        }

        fn request() -> impl Strategy<Value = Request> {
            let hosts = select(
                &[
                    "a.com",
                    "A.com:80",
                    "b.a.com",
                    "c.b.a.com",
                    "d.b.a.com",
                    "z.a.com",
                    "x.com",
                    "y.x.com",
                    "",
                    "com",
                ][..],
            );
            let paths = select(
                &[
                    "/", "/x", "/x/", "/x/y", "/x/y/z", "/x/z", "/xy", "/xy/1", "/y", "/y/",
                    "/y/x", "/z",
                ][..],
            );
            let queries = select(&["", "?q", "?q=1", "?q=2", "?q=3", "?q=1&q=2"][..]);
            let methods = select(&["GET", "POST", "PUT", "DELETE"][..]);
            let headers = subsequence(
                &[
                    ("h1", "1"),
                    ("H1", "2"),
                    ("h1", "3"),
                    ("h2", "1"),
                    ("h2", "2"),
                    ("h2", ""),
                ][..],
                0..=3,
            );
            (hosts, paths, queries, methods, headers).prop_map(|(h, p, q, m, hs)| Request {
                method: m.to_string(),
                host: h.to_string(),
                target: format!("{p}{q}"),
                headers: hs
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// No request reaches a reported route; every witness of an
            /// unreported one reaches it.
            #[test]
            fn reported_routes_are_unreachable(
                routes in routes(),
                requests in proptest::collection::vec(request(), 64),
            ) {
                let refs: Vec<Option<&str>> = routes.iter().map(|r| r.as_deref()).collect();
                let spec = spec(&refs);
                let router = Router::new(&spec).expect("regexes");
                let verdicts = analyse(&spec, &[]);
                for request in &requests {
                    if let Some(i) = serve(&router, request) {
                        prop_assert!(
                            !matches!(verdicts[i], Verdict::Shadowed { .. }),
                            "{request:?} reaches reported route r{i} of {routes:?}"
                        );
                    }
                }
                for (i, verdict) in verdicts.iter().enumerate() {
                    if let Verdict::Reachable(open) = verdict
                        && let Some(w) = witness(open)
                    {
                        prop_assert_eq!(
                            serve(&router, &w), Some(i),
                            "witness {:?} for r{} of {:?}", w, i, routes
                        );
                    }
                    if let Verdict::Shadowed { by, .. } = verdict {
                        // The named routes alone cover it, too.
                        let mut kept: Vec<Option<&str>> = by.iter().map(|&j| refs[j]).collect();
                        kept.push(refs[i]);
                        let again = analyse(&self::spec(&kept), &[]);
                        prop_assert!(
                            matches!(again.last(), Some(Verdict::Shadowed { .. })),
                            "r{i} of {routes:?} not covered by {by:?} alone"
                        );
                    }
                }
            }
        }
    }
}
