//! Routing compiled to a decision tree that keeps first-match semantics.
//!
//! The tree has two levels of dispatch, then ordered checks:
//!
//! 1. **Host class.** Every exact host name in the spec, every wildcard
//!    suffix, and "no listed host" is one class. A `match` over the exact
//!    names, then suffix tests longest first, picks the class. For each class
//!    the set of host patterns a request of that class satisfies is known at
//!    build time (wildcards nest: a host's longest matching wildcard decides
//!    all of them), so each class keeps only the routes that can match there.
//! 2. **First path segment.** Within a class, a `match` on the first segment
//!    of the normalised path keeps the routes whose `path`/`path-prefix` can
//!    match that segment; routes without such a condition (or with a regex,
//!    or with prefix `/`) are kept in every arm.
//! 3. **Ordered checks.** Each arm tries its remaining routes in spec order,
//!    each a small generated function of inlined comparisons; the first that
//!    holds wins. A route is placed in an arm only if it could match there,
//!    and arms keep spec order, so the result is the first matching route.
//!
//! No allocation and no dynamic dispatch: the host is lower-cased into a
//! stack buffer, and regexes are compiled once, at start-up.

use super::names::Names;
use blitz_ir::{HostPattern, Route, Spec, Test};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use std::collections::BTreeSet;

/// Below this many routes in a host class, segment dispatch costs more
/// code than it saves time.
const SEGMENT_DISPATCH_MIN: usize = 4;

/// Host class: which host patterns a request of the class satisfies.
struct HostClass {
    /// `None` for "any other host".
    exact: Option<String>,
    /// The wildcard suffix that decides the class, if any.
    wildcard: Option<String>,
    /// Route indices that can match a request of this class, in order.
    routes: Vec<usize>,
}

/// The first segments a route's path conditions allow; `None` = any.
fn route_segments(route: &Route) -> Option<BTreeSet<String>> {
    let conditions = route.matcher.as_ref()?.conditions.iter();
    for condition in conditions {
        let paths: Vec<(&str, bool)> = match &condition.test {
            Test::Path(p) => p.iter().map(|p| (p.value.as_str(), false)).collect(),
            Test::PathPrefix(p) => p.iter().map(|p| (p.value.as_str(), true)).collect(),
            _ => continue,
        };
        let mut segments = BTreeSet::new();
        for (path, prefix) in paths {
            if prefix && path == "/" {
                return None;
            }
            let rest = path.strip_prefix('/').unwrap_or(path);
            segments.insert(rest.split('/').next().unwrap_or("").to_string());
        }
        // One condition is enough to bound the segments (all must hold).
        return Some(segments);
    }
    None
}

fn route_hosts(route: &Route) -> Option<Vec<&HostPattern>> {
    route
        .matcher
        .as_ref()?
        .conditions
        .iter()
        .find_map(|c| match &c.test {
            Test::Host(patterns) => Some(patterns.iter().map(|p| &p.value).collect()),
            _ => None,
        })
}

fn host_classes(spec: &Spec) -> Vec<HostClass> {
    let mut exact = BTreeSet::new();
    let mut wildcards = BTreeSet::new();
    for route in &spec.routes {
        for pattern in route_hosts(route).into_iter().flatten() {
            match pattern {
                HostPattern::Exact(name) => exact.insert(name.clone()),
                HostPattern::Wildcard(suffix) => wildcards.insert(suffix.clone()),
            };
        }
    }
    // Which patterns a host of each class satisfies.
    let satisfied =
        |exact_name: Option<&str>, wildcard: Option<&str>, pattern: &HostPattern| match pattern {
            HostPattern::Exact(name) => exact_name == Some(name.as_str()),
            HostPattern::Wildcard(suffix) => match (exact_name, wildcard) {
                (Some(host), _) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
                (None, Some(longest)) => longest.ends_with(suffix.as_str()),
                (None, None) => false,
            },
        };
    let class = |exact_name: Option<String>, wildcard: Option<String>| {
        let routes = spec
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| match route_hosts(r) {
                None => true,
                Some(patterns) => patterns
                    .iter()
                    .any(|p| satisfied(exact_name.as_deref(), wildcard.as_deref(), p)),
            })
            .map(|(i, _)| i)
            .collect();
        HostClass {
            exact: exact_name,
            wildcard,
            routes,
        }
    };
    let mut classes: Vec<HostClass> = exact.into_iter().map(|e| class(Some(e), None)).collect();
    // Longest suffix first: it decides the class of a host.
    let mut wildcards: Vec<String> = wildcards.into_iter().collect();
    wildcards.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    classes.extend(wildcards.into_iter().map(|w| class(None, Some(w))));
    classes.push(class(None, None));
    classes
}

/// The body of `Gateway::route` and the per-route and per-class functions.
pub struct RouteCode {
    /// Statements of `fn route(&self, req: &RequestHead) -> Route`.
    pub route_body: TokenStream,
    /// Free functions: one matcher per route, one dispatcher per host class.
    pub items: TokenStream,
    /// `static` regexes, and the statement that compiles them all at start.
    pub regex_statics: TokenStream,
    pub regex_init: TokenStream,
}

pub fn generate(spec: &Spec, names: &Names) -> RouteCode {
    let mut items = TokenStream::new();
    let mut regex_statics = TokenStream::new();
    let mut regex_names = Vec::new();
    for (index, route) in spec.routes.iter().enumerate() {
        let fn_name = &names.route_fns[index];
        let doc = format!(" {}", names.route_origin[index]);
        let mut checks: Vec<Check> = Vec::new();
        for condition in route.matcher.iter().flat_map(|m| &m.conditions) {
            let check: Check = match &condition.test {
                Test::Host(_) => continue, // decided by the host class
                Test::Path(paths) => {
                    let lits = paths
                        .iter()
                        .map(|p| Literal::byte_string(p.value.as_bytes()));
                    quote! { matches!(path, #(#lits)|*) }.into()
                }
                Test::PathPrefix(prefixes) => {
                    let tests = prefixes.iter().map(|p| {
                        let lit = Literal::byte_string(p.value.as_bytes());
                        quote! { has_prefix(path, #lit) }
                    });
                    any_of(tests.collect())
                }
                Test::PathRegex(regexes) => {
                    let tests = regexes.iter().map(|re| {
                        let name = format_ident!("REGEX_{}", regex_names.len());
                        let anchored = blitz_ir::matcher::anchored_regex(&re.value);
                        regex_statics.extend(quote! {
                            static #name: LazyLock<Regex> =
                                LazyLock::new(|| Regex::new(#anchored).expect("regex validated by blitzc"));
                        });
                        regex_names.push(name.clone());
                        quote! { std::str::from_utf8(path).is_ok_and(|p| #name.is_match(p)) }
                    });
                    any_of(tests.collect())
                }
                Test::Method(methods) => {
                    let lits = methods.iter().map(|m| m.value.as_str());
                    quote! { matches!(req.method(), #(#lits)|*) }.into()
                }
                Test::Header { name, values } => {
                    let name = name.value.as_str();
                    if values.is_empty() {
                        quote! { header_present(req, #name) }.into()
                    } else {
                        let lits = values
                            .iter()
                            .map(|v| Literal::byte_string(v.value.as_bytes()));
                        quote! { header_is(req, #name, &[#(#lits),*]) }.into()
                    }
                }
                Test::Query { name, values } => {
                    let name = Literal::byte_string(name.value.as_bytes());
                    if values.is_empty() {
                        quote! { query_present(req, #name) }.into()
                    } else {
                        let lits = values
                            .iter()
                            .map(|v| Literal::byte_string(v.value.as_bytes()));
                        quote! { query_is(req, #name, &[#(#lits),*]) }.into()
                    }
                }
            };
            checks.push(check);
        }
        // A lone condition of several values is the whole body, bare;
        // joined with others by `&&`, its alternatives are parenthesised
        // (`any_of`). Either way rustc sees no `unused_parens`.
        let body = match checks.len() {
            0 => quote! { true },
            1 => checks.remove(0).bare,
            _ => {
                let joined = checks.iter().map(|c| &c.joined);
                quote! { #(#joined)&&* }
            }
        };
        // Name unused parameters `_x`, so the generated code is warning-free.
        let text = body.to_string();
        let req = if text.contains("req") {
            format_ident!("req")
        } else {
            format_ident!("_req")
        };
        let path = if text.contains("path") {
            format_ident!("path")
        } else {
            format_ident!("_path")
        };
        items.extend(quote! {
            #[doc = #doc]
            #[inline]
            fn #fn_name(#req: &RequestHead, #path: &[u8]) -> bool {
                #body
            }
        });
    }

    let segments: Vec<Option<BTreeSet<String>>> = spec.routes.iter().map(route_segments).collect();
    let classes = host_classes(spec);
    let only_one_class = classes.len() == 1;
    let mut exact_arms = Vec::new();
    let mut wildcard_tests = Vec::new();
    let mut default_call = TokenStream::new();
    for (ci, class) in classes.iter().enumerate() {
        let body = class_body(&class.routes, &segments, names);
        if only_one_class {
            default_call = body;
            break;
        }
        let class_fn = format_ident!("host_class_{}", ci);
        let doc = match (&class.exact, &class.wildcard) {
            (Some(e), _) => format!(" Requests for host `{e}`."),
            (None, Some(w)) => {
                format!(" Requests for hosts ending in `{w}` (and no longer listed suffix).")
            }
            (None, None) => " Requests for any other host.".to_string(),
        };
        items.extend(quote! {
            #[doc = #doc]
            fn #class_fn(req: &RequestHead, path: &[u8]) -> Route {
                #body
            }
        });
        match (&class.exact, &class.wildcard) {
            (Some(e), _) => {
                let lit = Literal::byte_string(e.as_bytes());
                exact_arms.push(quote! { #lit => return #class_fn(req, path), });
            }
            (None, Some(w)) => {
                let lit = Literal::byte_string(w.as_bytes());
                wildcard_tests.push(quote! {
                    if host_has_suffix(host, #lit) {
                        return #class_fn(req, path);
                    }
                });
            }
            (None, None) => default_call = quote! { #class_fn(req, path) },
        }
    }
    // `OPTIONS *` (path `*`): no path to match, so no route, as in the
    // reference matcher (docs/spec.md 15.2) — even a route without `match`.
    let not_a_path = quote! {
        if path.first() != Some(&b'/') {
            return Route::NoRoute;
        }
    };
    let route_body = if only_one_class {
        quote! {
            let path = req.path_only();
            #not_a_path
            #default_call
        }
    } else {
        let host_match = if exact_arms.is_empty() {
            TokenStream::new()
        } else {
            quote! {
                match host {
                    #(#exact_arms)*
                    _ => {}
                }
            }
        };
        quote! {
            let mut host_buf = [0u8; MAX_HOST];
            let host = host_lower(req, &mut host_buf);
            let path = req.path_only();
            #not_a_path
            #host_match
            #(#wildcard_tests)*
            #default_call
        }
    };
    let regex_init = quote! { #( LazyLock::force(&#regex_names); )* };
    RouteCode {
        route_body,
        items,
        regex_statics,
        regex_init,
    }
}

/// One condition's test, as generated code: `bare` when it is a route's
/// only condition (the function's whole body), `joined` when `&&` joins it
/// with others.
struct Check {
    bare: TokenStream,
    joined: TokenStream,
}

impl From<TokenStream> for Check {
    /// A test that is one expression either way.
    fn from(test: TokenStream) -> Self {
        Check {
            bare: test.clone(),
            joined: test,
        }
    }
}

/// `a || b || ...`: parenthesised only where `&&` joins it with other
/// conditions, so generated code never draws rustc's `unused_parens`.
fn any_of(tests: Vec<TokenStream>) -> Check {
    if tests.len() == 1 {
        Check::from(tests.into_iter().collect::<TokenStream>())
    } else {
        Check {
            bare: quote! { #(#tests)||* },
            joined: quote! { (#(#tests)||*) },
        }
    }
}

/// The ordered checks of one host class, with segment dispatch when it pays.
fn class_body(
    routes: &[usize],
    segments: &[Option<BTreeSet<String>>],
    names: &Names,
) -> TokenStream {
    let checks = |subset: &mut dyn Iterator<Item = &usize>| {
        let calls: Vec<TokenStream> = subset
            .map(|&i| {
                let f = &names.route_fns[i];
                let v = &names.route_variants[i];
                quote! { if #f(req, path) { return Route::#v; } }
            })
            .collect();
        quote! { #(#calls)* }
    };
    let all_segments: BTreeSet<&String> = routes
        .iter()
        .filter_map(|&i| segments[i].as_ref())
        .flatten()
        .collect();
    if routes.len() < SEGMENT_DISPATCH_MIN || all_segments.is_empty() {
        let body = checks(&mut routes.iter());
        return quote! {
            #body
            Route::NoRoute
        };
    }
    let arms = all_segments.iter().map(|segment| {
        let lit = Literal::byte_string(segment.as_bytes());
        let body = checks(
            &mut routes
                .iter()
                .filter(|&&i| segments[i].as_ref().is_none_or(|s| s.contains(*segment))),
        );
        quote! { #lit => { #body } }
    });
    let default = checks(&mut routes.iter().filter(|&&i| segments[i].is_none()));
    quote! {
        match first_segment(path) {
            #(#arms)*
            _ => { #default }
        }
        Route::NoRoute
    }
}
