//! Rules on single routes: an empty `match` (B051), conflicting header edits
//! (B052), a matcher given twice (B053), a `strip-prefix` that is not a
//! normalised absolute path or does not fit the route's paths (B038),
//! `auth` twice (B075), a `path-regex` no path can match (B057), and a
//! `redirect` location that is empty or not a URI reference (B058). Shadowing between routes lives in `shadow`.

use super::{expand_route, via_label};
use crate::diag::{Code, Diagnostic};
use blitz_ir::matcher::path_has_prefix;
use blitz_ir::{ActionKind, HeaderRewrite, Route, Span, Spanned, Spec, StepKind, Test};

pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    for route in &spec.routes {
        empty_match(route, diagnostics);
        duplicate_matchers(route, diagnostics);
        header_edits(route.steps.iter().map(|s| &s.kind), diagnostics);
        strip_prefix(route, diagnostics);
        duplicate_auth(spec, route, diagnostics);
        body_without_content(route, diagnostics);
        regexes_never_matching(route, diagnostics);
        redirect_location(route, diagnostics);
    }
    for chain in &spec.chains {
        header_edits(chain.steps.iter().map(|s| &s.kind), diagnostics);
    }
}

/// B055 (warning): `respond 204`, `205` or `304` with a `body`. Those
/// answers have no content (RFC 9110 §15.3.5, §15.3.6, §15.4.5), so the
/// gateway never sends it.
fn body_without_content(route: &Route, diagnostics: &mut Vec<Diagnostic>) {
    let ActionKind::Respond { status, body, .. } = &route.action.kind else {
        return;
    };
    if matches!(status.value, 204 | 205 | 304) && !body.value.is_empty() {
        diagnostics.push(
            Diagnostic::warning(
                Code::BodyNeverSent,
                body.span,
                format!("a {} response has no body", status.value),
            )
            .label("never sent")
            .help("remove the body, or answer with a status that has content, such as 200")
            .related(status.span, "status without content"),
        );
    }
}

/// B058 (warning): a `redirect` whose location is empty, which sends the
/// client back to the URL it asked for (a loop), or is not a URI reference
/// (RFC 9110 §10.2.2, RFC 3986): whitespace, bytes outside visible ASCII,
/// `"`, `<`, `>`, `\`, `^`, a backtick, `{`, `|`, `}` (all sent
/// percent-encoded), or a `%` that starts no escape: clients repair those
/// each in their own way, or refuse them.
fn redirect_location(route: &Route, diagnostics: &mut Vec<Diagnostic>) {
    /// Visible ASCII that RFC 3986 allows nowhere in a URI unencoded.
    const NOT_IN_URIS: &str = "\"<>\\^`{|}";
    let ActionKind::Redirect { location, .. } = &route.action.kind else {
        return;
    };
    let (message, label, help) = if location.value.is_empty() {
        (
            "an empty redirect location is the URL just asked for",
            "the client is sent back here, again and again",
            "give the target URL, absolute (`https://example.com/`) or a path (`/new`)",
        )
    } else if let Some(c) = location
        .value
        .chars()
        .find(|&c| !c.is_ascii_graphic() || NOT_IN_URIS.contains(c))
    {
        (
            "a redirect location must be a URI reference",
            if c.is_ascii_whitespace() {
                "holds whitespace"
            } else if c.is_ascii() {
                "holds a character no URI holds unencoded"
            } else {
                "holds a byte outside visible ASCII"
            },
            "percent-encode it (a space is `%20`, `|` is `%7C`, `é` is `%C3%A9`)",
        )
    } else if crate::ir::values::mend_escapes(&location.value) != location.value {
        (
            "a redirect location must be a URI reference",
            "has a `%` that starts no escape",
            "a literal `%` is written `%25`",
        )
    } else {
        return;
    };
    diagnostics.push(
        Diagnostic::warning(Code::BadRedirectLocation, location.span, message)
            .label(label)
            .help(help),
    );
}

/// B057 (warning): a `path-regex` value that no normalised path can match,
/// proven from the literals every match must start with (regex-syntax's
/// prefix extraction: sound, so a regex it cannot decide is never
/// reported). A normalised path (docs/spec.md 15.2) starts with `/`, holds
/// no `?` or `#` (query and fragment are dropped before matching), no `//`,
/// and only visible ASCII (other bytes arrive percent-encoded and stay so).
/// The usual slips: `api/.*` without its leading slash, and a query written
/// into the regex (`/search\?q=.*`).
fn regexes_never_matching(route: &Route, diagnostics: &mut Vec<Diagnostic>) {
    let Some(matcher) = &route.matcher else {
        return;
    };
    for condition in &matcher.conditions {
        let Test::PathRegex(patterns) = &condition.test else {
            continue;
        };
        for pattern in patterns {
            if let Some(why) = never_matches_a_path(&pattern.value) {
                diagnostics.push(
                    Diagnostic::warning(
                        Code::RegexNeverMatches,
                        pattern.span,
                        format!("path-regex `{}` matches no request path", pattern.value),
                    )
                    .label(why)
                    .help(
                        "the regex must match the whole normalised path: it starts with `/`, \
                         without the query (match that with `query`)",
                    ),
                );
            }
        }
    }
}

/// Why no normalised path can match the (anchored) regex `pattern`, when
/// that can be proven: every match starts with one of a finite set of
/// literals, and each of them already rules a path out.
fn never_matches_a_path(pattern: &str) -> Option<&'static str> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    let prefixes = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let mut why = None;
    for literal in prefixes.literals()? {
        let bytes = literal.as_bytes();
        let reason = if bytes.is_empty() {
            // Inexact: some match starts anywhere. Exact: only "" matches.
            literal
                .is_exact()
                .then_some("matches only the empty path; every path starts with `/`")?
        } else if bytes[0] != b'/' {
            "every match starts without the `/` that begins every path"
        } else if bytes.iter().any(|b| matches!(b, b'?' | b'#')) {
            "needs a `?` or `#`: matching sees the path without query and fragment"
        } else if bytes.windows(2).any(|w| w == b"//") {
            "needs `//`: repeated slashes are merged before matching"
        } else if bytes.iter().any(|b| !b.is_ascii_graphic()) {
            "needs a space, control or non-ASCII byte: a path holds those percent-encoded"
        } else {
            return None;
        };
        why.get_or_insert(reason);
    }
    why
}

/// B051 (warning): `match {}` matches every request, like no `match` (not
/// when its conditions were all malformed: those are reported already).
fn empty_match(route: &Route, diagnostics: &mut Vec<Diagnostic>) {
    if let Some(matcher) = &route.matcher
        && matcher.conditions.is_empty()
        && !super::error_within(diagnostics, matcher.span)
    {
        diagnostics.push(
            Diagnostic::warning(
                Code::EmptyMatch,
                matcher.span,
                format!("route `{}` has a `match` without conditions", route.name.value),
            )
            .label("matches every request")
            .help_in(
                "add conditions such as `path-prefix \"/api\"`, or remove `match` to make a catch-all route explicit",
                "add conditions such as `path-prefix = \"/api\"`, or remove `match` to make a catch-all route explicit",
            ),
        );
    }
}

/// What makes two conditions "the same matcher": the kind, and for
/// `header` and `query` the name too.
fn matcher_identity(test: &Test) -> (u8, Option<&str>) {
    match test {
        Test::Header { name, .. } | Test::Query { name, .. } => (test.order(), Some(&name.value)),
        _ => (test.order(), None),
    }
}

/// B053: the same matcher twice in one `match`. Values of one matcher are
/// alternatives; two matchers would both have to hold, which is rarely meant.
fn duplicate_matchers(route: &Route, diagnostics: &mut Vec<Diagnostic>) {
    let Some(matcher) = &route.matcher else {
        return;
    };
    for (j, condition) in matcher.conditions.iter().enumerate() {
        let identity = matcher_identity(&condition.test);
        let Some(first) = matcher.conditions[..j]
            .iter()
            .find(|c| matcher_identity(&c.test) == identity)
        else {
            continue;
        };
        let keyword = condition.test.keyword();
        let (what, example) = match identity.1 {
            Some(name) => (
                format!("`{keyword} \"{name}\"`"),
                format!("`{keyword} \"{name}\" \"a\" \"b\"`"),
            ),
            None => (format!("`{keyword}`"), format!("`{keyword} \"a\" \"b\"`")),
        };
        diagnostics.push(
            Diagnostic::error(
                Code::DuplicateMatcher,
                condition.span,
                format!(
                    "{what} appears twice in the `match` of route `{}`",
                    route.name.value
                ),
            )
            .label("second time")
            .help(format!(
                "values of one matcher are alternatives: write them together, e.g. {example}"
            ))
            .related(first.span, "first here"),
        );
    }
}

/// B052 (warning): within one `request-headers`/`response-headers` block, a
/// header that is both set and removed, or set twice. Edits apply as
/// remove, then set, then add, so the written order does not decide.
fn header_edits<'a>(steps: impl Iterator<Item = &'a StepKind>, diagnostics: &mut Vec<Diagnostic>) {
    for kind in steps {
        let (StepKind::RequestHeaders(rewrite) | StepKind::ResponseHeaders(rewrite)) = kind else {
            continue;
        };
        conflicting_edits(rewrite, diagnostics);
        ineffective_edits(
            rewrite,
            matches!(kind, StepKind::RequestHeaders(_)),
            diagnostics,
        );
    }
}

/// B056: `set` or `add` of a field the gateway drops whatever its value
/// (hop-by-hop, framing; `expect` on a request). The list is the runtime's
/// own ([`blitz_runtime::http::step_has_no_effect`]), so what check flags
/// is exactly what the writer drops.
fn ineffective_edits(rewrite: &HeaderRewrite, on_request: bool, diagnostics: &mut Vec<Diagnostic>) {
    let names = rewrite
        .set
        .iter()
        .map(|(n, _)| n)
        .chain(rewrite.add.iter().map(|(n, _)| n));
    for name in names {
        if !blitz_runtime::http::step_has_no_effect(name.value.as_bytes(), on_request) {
            continue;
        }
        let framing = matches!(name.value.as_str(), "content-length" | "transfer-encoding");
        let (why, help) = if framing {
            (
                "the gateway frames every message it sends itself",
                format!(
                    "drop this edit: `{}` is written from the body the gateway sends, never copied",
                    name.value
                ),
            )
        } else if name.value == "expect" {
            (
                "the gateway answers `expect` itself and never forwards it",
                "drop this edit".to_string(),
            )
        } else {
            (
                "a hop-by-hop field, never forwarded (RFC 9110 section 7.6.1)",
                format!(
                    "drop this edit: `{}` concerns one connection, and the gateway runs its own",
                    name.value
                ),
            )
        };
        diagnostics.push(
            Diagnostic::warning(
                Code::IneffectiveHeaderEdit,
                name.span,
                format!("setting header `{}` has no effect", name.value),
            )
            .label(why)
            .help(help),
        );
    }
}

fn conflicting_edits(rewrite: &HeaderRewrite, diagnostics: &mut Vec<Diagnostic>) {
    // (name, span, is_set), in file order.
    let mut edits: Vec<(&Spanned<String>, bool)> = rewrite
        .remove
        .iter()
        .map(|n| (n, false))
        .chain(rewrite.set.iter().map(|(n, _)| (n, true)))
        .collect();
    edits.sort_by_key(|(n, _)| n.span);
    for (j, (name, is_set)) in edits.iter().enumerate() {
        let earlier = edits[..j]
            .iter()
            .find(|(other, other_set)| other.value == name.value && (*is_set || *other_set));
        let Some((first, first_set)) = earlier else {
            continue;
        };
        let (message, label, help) = match (first_set, is_set) {
            (true, true) => (
                format!("header `{}` is set twice", name.value),
                "the second value replaces the first",
                format!(
                    "keep one `set \"{}\"`, or use `add` to send several values",
                    name.value
                ),
            ),
            _ => (
                format!("header `{}` is both set and removed", name.value),
                "conflicts with the other edit",
                format!(
                    "edits apply as remove, then set, then add, so `{}` ends up set: drop the `remove`, or the `set`",
                    name.value
                ),
            ),
        };
        // Report removes repeated (remove twice) elsewhere: not a conflict.
        diagnostics.push(
            Diagnostic::warning(Code::ConflictingHeaderEdit, name.span, message)
                .label(label)
                .help(help)
                .related(first.span, "first edit of this header"),
        );
    }
}

fn strip_prefix_help(matcher: &str, prefix: &str) -> String {
    format!(
        "requests matched by `{matcher}` do not start with `{prefix}`, so they reach the upstream unchanged; \
         use a strip-prefix that every matched path starts with, or a separate route"
    )
}

/// B038: `strip-prefix` must be an absolute, normalised path (it is removed
/// from the normalised request path); a warning when a path the route
/// matches does not start with it, since nothing is stripped there.
fn strip_prefix(route: &Route, diagnostics: &mut Vec<Diagnostic>) {
    let ActionKind::Proxy {
        strip_prefix: Some(prefix),
        ..
    } = &route.action.kind
    else {
        return;
    };
    let text = prefix.value.as_str();
    let problem = if !text.starts_with('/') {
        Some((
            "must start with `/`".to_string(),
            format!("write `/{text}`"),
        ))
    } else if text.contains('?') || text.contains('#') {
        Some((
            "contains a query or fragment".to_string(),
            "strip-prefix removes a leading part of the path only".to_string(),
        ))
    } else if crate::ir::values::encoded_if_raw(text).is_some() {
        Some((
            "holds a character a request target cannot carry unencoded".to_string(),
            format!(
                "clients send it percent-encoded: write `{}`",
                crate::ir::values::normal_spelling(text).0
            ),
        ))
    } else {
        match crate::ir::values::normal_spelling(text) {
            (normal, _) if normal == text => None,
            (fixed, true) => Some((
                "has a `%` that starts no escape".to_string(),
                format!("a literal `%` is written `%25`: write `{fixed}`"),
            )),
            (fixed, false) => Some((
                "is not normalised".to_string(),
                format!(
                    "request paths are normalised before the prefix is removed: write `{fixed}`"
                ),
            )),
        }
    };
    if let Some((label, help)) = problem {
        diagnostics.push(
            Diagnostic::error(
                Code::InvalidPath,
                prefix.span,
                format!("invalid strip-prefix `{text}`"),
            )
            .label(format!("the prefix {label}"))
            .help(help),
        );
        return;
    }
    let Some(matcher) = &route.matcher else {
        return;
    };
    for condition in &matcher.conditions {
        let paths = match &condition.test {
            Test::Path(paths) | Test::PathPrefix(paths) => paths,
            _ => continue,
        };
        for path in paths.iter().filter(|p| !path_has_prefix(&p.value, text)) {
            diagnostics.push(
                Diagnostic::warning(
                    Code::InvalidPath,
                    prefix.span,
                    format!("strip-prefix `{text}` does not fit `{}`", path.value),
                )
                .label("nothing is stripped from these requests")
                .help_in(
                    strip_prefix_help(
                        &format!("{} \"{}\"", condition.test.keyword(), path.value),
                        text,
                    ),
                    strip_prefix_help(
                        &format!("{} = \"{}\"", condition.test.keyword(), path.value),
                        text,
                    ),
                )
                .related(path.span, "matched path"),
            );
        }
    }
}

/// B075 (warning): `auth` twice in a route's steps, chains spliced in. The
/// token is verified twice, possibly with different issuers, and every
/// `auth` must pass.
fn duplicate_auth(spec: &Spec, route: &Route, diagnostics: &mut Vec<Diagnostic>) {
    let mut first: Option<Span> = None;
    for expanded in expand_route(spec, route) {
        let StepKind::Auth(r) = &expanded.step.kind else {
            continue;
        };
        let Some(first_span) = first else {
            first = Some(r.name.span);
            continue;
        };
        let mut diagnostic = Diagnostic::warning(
            Code::DuplicateAuth,
            r.name.span,
            format!("route `{}` runs `auth` twice", route.name.value),
        )
        .label("second `auth`")
        .help("a request must pass every `auth`; keep one (a chain used by the route may already have it)")
        .related(first_span, "first `auth`");
        if let Some(via) = expanded.via {
            diagnostic = diagnostic.related(via.span, via_label(route));
        }
        diagnostics.push(diagnostic);
    }
}

#[cfg(test)]
mod tests {
    use super::never_matches_a_path;

    #[test]
    fn regexes_no_path_can_match() {
        for pattern in [
            "",
            "api/.*",
            "(?i)API/v[0-9]+",
            "(a|b)/x",
            r"/search\?q=.*",
            "/a#frag",
            "//admin.*",
            "/caf\u{e9}",
            "/a b",
        ] {
            assert!(never_matches_a_path(pattern).is_some(), "{pattern:?}");
        }
    }

    #[test]
    fn regexes_some_path_can_match_are_not_reported() {
        for pattern in [
            "/api/.*",
            ".*",
            "/.*\\.png",
            "(/a|/b)/x",
            "/?x",
            "[/a]bc",
            "(?x) /api # the API\n /v[0-9]+",
            "(?i)/users/[0-9]+",
            r"/a/[^?]*",
            "/%2F.*",
        ] {
            assert_eq!(never_matches_a_path(pattern), None, "{pattern:?}");
        }
    }
}
