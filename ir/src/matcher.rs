//! The reference route matcher: SPEC.md "Meaning", executed directly on the
//! model. `blitzc route`, the runtime's interpreter, the shadowed-route check
//! and the differential tests of generated code all use it, so it is written
//! for clarity, not speed.
//!
//! The rules, in the order [`Router::route`] applies them:
//!
//! - Routes are tried in spec order; the first whose conditions all hold
//!   wins. A route without `match` (or with an empty one) matches every
//!   request. When no route matches the answer is `None`: a 404.
//! - Inside one `match`, different conditions must all hold; the several
//!   values of one condition are alternatives.
//! - **Host**: the `Host` header (or the authority of an absolute-form
//!   target) with its port and a trailing dot removed, lower-cased
//!   ([`host_without_port`]). `api.example.com` is exact; `*.example.com`
//!   matches names that end in `.example.com` and are longer than it, so
//!   never `example.com` itself. A request without a host matches no host
//!   condition.
//! - **Path**: conditions see [`normalize_path`] of the target: no query,
//!   no dot-segments. `path` is exact, `path-prefix` is segment-aware
//!   ([`path_has_prefix`]), `path-regex` must match the whole path.
//! - **Method**: exact and case-sensitive, as RFC 9110 §9.1 says (`get` is
//!   not `GET`).
//! - **Header** `NAME [VALUE...]`: the name is compared case-insensitively.
//!   Without values the header must be present (an empty value counts).
//!   With values, some field line of that name must equal one of them
//!   exactly, after removing the optional whitespace around the field value
//!   (RFC 9110 §5.5). A request may carry several lines of one name: any of
//!   them may match. Lines are not split at commas: `x: 1, 2` has the one
//!   value `1, 2`.
//! - **Query** `NAME [VALUE...]`: the query is split at `&`, each pair at
//!   its first `=`, and both sides decoded as HTML forms encode them (`+`
//!   is a space, `%XX` a byte). Names are case-sensitive. Without values the
//!   parameter must be present (`?debug` and `?debug=` count); with values,
//!   some occurrence must equal one of them.
//!
//! Decisions the spec leaves open, taken here once for every consumer:
//! percent-escapes of unreserved characters are decoded before matching
//! (`%2e%2e` is a dot-segment, `/%75sers` is `/users`); repeated slashes
//! are merged (`//admin` is `/admin`); every other escape is kept as
//! written with upper-case hex digits (`%2f` becomes `%2F`, and is not a
//! segment separator).

use crate::model::{HostPattern, Spec, Test};
use regex::Regex;

/// What the matcher sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The `Host` header or the authority of an absolute-form target, maybe
    /// with a port; empty when the request has none.
    pub host: &'a str,
    /// The request target's path and query (`/a/b?x=1`), not normalised.
    pub target: &'a str,
    /// Every header field line, in order; names in any case. Values are
    /// bytes: a value with obs-text (RFC 9110 §5.5) is a field line that
    /// `header NAME` finds, and equals no spec value (which is UTF-8 text),
    /// as in generated code.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Normalises a request path for matching and forwarding:
/// - drops the query and fragment;
/// - decodes percent-encoded unreserved characters (RFC 3986 §6.2.2.2), so
///   `%2e%2e` is a dot-segment and `%75sers` is `users`; other escapes, such
///   as `%2F`, are kept as written, with upper-case hex digits;
/// - merges repeated slashes (as nginx does by default), so `//admin` cannot
///   slip past a route for `/admin`;
/// - removes dot-segments (RFC 3986 §5.2.4): `/a/./b/../c` is `/a/c`.
///
/// Returns `None` when the path does not start with `/` or has a malformed
/// percent escape.
pub fn normalize_path(target: &str) -> Option<String> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return None;
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded.split('/').skip(1).peekable();
    // Whether the output ends with a slash after the last segment.
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            "" if !last => {} // merged slash
            "" => trailing_slash = true,
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
            let value = u8::from_str_radix(hex, 16).ok()?;
            if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                out.push(value as char);
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            let ch = path[i..].chars().next()?;
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    Some(out)
}

/// The host without its port, lower-cased. Handles `[v6]:port`: an IPv6
/// literal is an address, so it becomes its canonical text (RFC 5952:
/// `[0:0::1]` and `[::1]` are both `::1`), as host patterns are stored.
pub fn host_without_port(host: &str) -> String {
    let host = if let Some(rest) = host.strip_prefix('[') {
        let literal = rest.split(']').next().unwrap_or(rest);
        if let Some(canonical) = canonical_ipv6(literal) {
            return canonical;
        }
        literal
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    // One trailing dot (the root label): `a.example.com..` is not a name.
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// The canonical text (RFC 5952 §4: lower-case hex, no leading zeros,
/// the longest run of zero groups as `::`) of an IPv6 address written
/// without brackets, or `None` when `text` is not one.
pub fn canonical_ipv6(text: &str) -> Option<String> {
    text.parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|a| a.to_string())
}

/// Whether `path` (normalised) is `prefix` or lies below it, segment-wise:
/// `/v1/users` has the prefix `/v1/users` and `/v1`, not `/v1/user`.
/// `prefix` is stored without a trailing slash, except the root `/`, which
/// every path has.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    // Tolerate a trailing slash that a front end did not strip: `/v1/` is
    // the same prefix as `/v1`.
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether `host` (lower-case, no port) matches `pattern`.
pub fn host_matches(host: &str, pattern: &HostPattern) -> bool {
    match pattern {
        HostPattern::Exact(name) => host == name,
        HostPattern::Wildcard(suffix) => {
            host.len() > suffix.len() && host.ends_with(suffix.as_str())
        }
    }
}

/// Every value of the query parameter `name`, decoded as HTML forms encode
/// them (`+` and `%XX`), as bytes: `%FF` is the byte 0xFF, which no spec
/// value (UTF-8 text) holds alone. Empty pairs (`a=1&&b=2`, an empty
/// query) are no parameter.
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = Vec<u8>> + 'a {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_query(k) == name.as_bytes()).then(|| decode_query(v))
        })
}

fn decode_query(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                // `from_str_radix` would take a sign (`%+1`): check digits.
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// A `path-regex` as every consumer compiles it: anchored to match the
/// whole path. Validation compiles this very string, so a pattern that only
/// compiles bare (a `(?x)` comment that swallows the closing `)$`) is
/// refused by `check`, not met by a panic in a generated gateway.
pub fn anchored_regex(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// The reference matcher over a spec, with its regexes compiled once.
#[derive(Debug)]
pub struct Router<'s> {
    spec: &'s Spec,
    /// Per route, per condition index: the compiled, anchored regexes of a
    /// `path-regex` condition (empty for other conditions).
    regexes: Vec<Vec<Vec<Regex>>>,
}

/// Why a request could not be matched at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchError {
    /// The target's path is not absolute or has a malformed escape.
    BadPath,
}

/// A request head with its host and path normalised once, for matching
/// against many routes.
#[derive(Clone, Debug)]
pub struct PreparedRequest<'a> {
    pub method: &'a str,
    /// [`host_without_port`] of the request's host.
    pub host: String,
    /// [`normalize_path`] of the target.
    pub path: String,
    /// The raw query, without `?` and fragment; empty when there is none.
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl<'a> PreparedRequest<'a> {
    pub fn new(request: &RequestHead<'a>) -> Result<Self, MatchError> {
        let path = normalize_path(request.target).ok_or(MatchError::BadPath)?;
        let query = request.target.split('#').next().unwrap_or("");
        let query = query.split_once('?').map_or("", |(_, q)| q);
        Ok(PreparedRequest {
            method: request.method,
            host: host_without_port(request.host),
            path,
            query,
            headers: request.headers,
        })
    }

    /// Whether some field line named `name` (any case) is present and, when
    /// `values` is not empty, has one of them as its value.
    fn header_matches(&self, name: &str, values: &[crate::Spanned<String>]) -> bool {
        self.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case(name) && {
                // Optional whitespace around a field value (RFC 9110 §5.5).
                let ows = |b: &u8| *b == b' ' || *b == b'\t';
                let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
                let end = v.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
                let v = &v[start..end];
                values.is_empty() || values.iter().any(|x| x.value.as_bytes() == v)
            }
        })
    }

    /// Whether the query parameter `name` is present and, when `values` is
    /// not empty, some occurrence has one of them as its value.
    fn query_matches(&self, name: &str, values: &[crate::Spanned<String>]) -> bool {
        let mut found = query_values(self.query, name);
        if values.is_empty() {
            found.next().is_some()
        } else {
            found.any(|v| values.iter().any(|x| x.value.as_bytes() == v))
        }
    }
}

impl<'s> Router<'s> {
    /// Compiles the spec's regexes. Fails only on a regex that validation
    /// would have rejected.
    pub fn new(spec: &'s Spec) -> Result<Self, regex::Error> {
        let mut regexes = Vec::with_capacity(spec.routes.len());
        for route in &spec.routes {
            let mut per_condition = Vec::new();
            for condition in route.matcher.iter().flat_map(|m| &m.conditions) {
                let mut compiled = Vec::new();
                if let Test::PathRegex(patterns) = &condition.test {
                    for pattern in patterns {
                        compiled.push(Regex::new(&anchored_regex(&pattern.value))?);
                    }
                }
                per_condition.push(compiled);
            }
            regexes.push(per_condition);
        }
        Ok(Router { spec, regexes })
    }

    /// The index of the first route whose match holds, or `None` (a 404).
    pub fn route(&self, request: &RequestHead<'_>) -> Result<Option<usize>, MatchError> {
        let request = PreparedRequest::new(request)?;
        Ok((0..self.spec.routes.len()).find(|&index| self.route_matches(index, &request)))
    }

    /// Whether route `index`'s own conditions hold for `request`, regardless
    /// of the routes before it. `false` for an index out of range.
    pub fn route_matches(&self, index: usize, request: &PreparedRequest<'_>) -> bool {
        let Some(route) = self.spec.routes.get(index) else {
            return false;
        };
        let Some(matcher) = &route.matcher else {
            return true;
        };
        matcher
            .conditions
            .iter()
            .enumerate()
            .all(|(ci, condition)| match &condition.test {
                Test::Host(patterns) => patterns.iter().any(|p| host_matches(&request.host, p)),
                Test::Path(paths) => paths.iter().any(|p| p.value == request.path),
                Test::PathPrefix(prefixes) => {
                    prefixes.iter().any(|p| path_has_prefix(&request.path, p))
                }
                Test::PathRegex(_) => self.regexes[index][ci]
                    .iter()
                    .any(|re| re.is_match(&request.path)),
                Test::Method(methods) => methods.iter().any(|m| m.value == request.method),
                Test::Header { name, values } => request.header_matches(name, values),
                Test::Query { name, values } => request.query_matches(name, values),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        let cases = [
            ("/", "/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a//b", "/a/b"),
            ("//a", "/a"),
            ("/a/", "/a/"),
            ("/a?x=1", "/a"),
            ("/a#frag", "/a"),
            ("/%2e%2e/a", "/a"),
            ("/%75sers", "/users"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/%2E/b", "/a/b"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_path(input).as_deref(), Some(expected), "{input}");
        }
        assert_eq!(normalize_path("a/b"), None);
        assert_eq!(normalize_path("/a%zz"), None);
        assert_eq!(normalize_path("/a%2"), None);
    }

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(path_has_prefix("/v1/users", "/v1/users"));
        assert!(path_has_prefix("/v1/users/", "/v1/users"));
        assert!(path_has_prefix("/v1/users/7", "/v1/users"));
        assert!(!path_has_prefix("/v1/usersx", "/v1/users"));
        assert!(path_has_prefix("/anything", "/"));
    }

    #[test]
    fn hosts() {
        assert_eq!(host_without_port("API.Example.com:8443"), "api.example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        // IPv6 literals compare as addresses: canonical text, any case.
        assert_eq!(host_without_port("[0:0::1]"), "::1");
        assert_eq!(host_without_port("[0000:0:0:0:0:0:0:1]:8080"), "::1");
        assert_eq!(
            host_without_port("[2001:DB8:0:0:1::1]"),
            "2001:db8::1:0:0:1"
        );
        assert_eq!(host_without_port("[::FFFF:127.0.0.1]"), "::ffff:127.0.0.1");
        assert_eq!(host_without_port("[not-v6]"), "not-v6");
        assert_eq!(host_without_port("example.com."), "example.com");
        assert_eq!(host_without_port("example.com..:80"), "example.com.");
        let wildcard = HostPattern::Wildcard(".example.com".into());
        assert!(host_matches("a.example.com", &wildcard));
        assert!(host_matches("a.b.example.com", &wildcard));
        assert!(!host_matches("example.com", &wildcard));
        assert!(!host_matches("badexample.com", &wildcard));
    }
}
