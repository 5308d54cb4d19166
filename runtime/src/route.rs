//! Helpers that generated route decisions call: request facts in the form
//! the generated comparisons need, without allocating.
//!
//! The semantics are those of the reference matcher (`blitz_ir::matcher`):
//! hosts compare case-insensitively without their port, paths are compared
//! after normalisation (done by the runtime before routing, see
//! [`crate::http::normalize`]), prefixes are segment-aware, header names are
//! case-insensitive and values exact, query values are form-decoded.

#![forbid(unsafe_code)]

use crate::http::RequestHead;

/// Longest host name (RFC 1035), plus room for a trailing dot.
pub const MAX_HOST: usize = 256;

/// The request's host, lower-cased, without port and trailing dot, written
/// into `buf`. A host too long to be a DNS name yields an empty slice, which
/// no host pattern matches.
pub fn host_lower<'b>(req: &RequestHead, buf: &'b mut [u8; MAX_HOST]) -> &'b [u8] {
    host_lower_bytes(req.host(), buf)
}

/// [`host_lower`] on raw bytes (testable without a request). An IPv6
/// literal (`[0:0::1]:80`) becomes its canonical text (`::1`), as host
/// patterns are stored: it is compared as an address.
pub fn host_lower_bytes<'b>(host: &[u8], buf: &'b mut [u8; MAX_HOST]) -> &'b [u8] {
    let name = if let Some(rest) = host.strip_prefix(b"[") {
        let literal = rest.split(|&b| b == b']').next().unwrap_or(rest);
        if let Some(n) = canonical_ipv6(literal, buf) {
            return &buf[..n];
        }
        literal
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
            _ => host,
        }
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.len() > buf.len() {
        return &[];
    }
    for (dst, src) in buf.iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
    }
    &buf[..name.len()]
}

/// Writes the canonical text of the IPv6 address `literal` into `buf`
/// (RFC 5952, as `Ipv6Addr` displays it: at most 45 bytes) and returns its
/// length; `None` when `literal` is not an IPv6 address.
fn canonical_ipv6(literal: &[u8], buf: &mut [u8; MAX_HOST]) -> Option<usize> {
    use std::io::Write as _;
    let addr: std::net::Ipv6Addr = std::str::from_utf8(literal).ok()?.parse().ok()?;
    let mut out = &mut buf[..];
    write!(out, "{addr}").ok()?;
    Some(MAX_HOST - out.len())
}

/// Whether `host` ends in `suffix` (`.example.com`) with at least one more
/// byte before it: `*.example.com` does not match `example.com`.
#[inline]
pub fn host_has_suffix(host: &[u8], suffix: &[u8]) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

/// Segment-aware prefix test on a normalised path: `/v1/users` is a prefix
/// of `/v1/users`, `/v1/users/` and `/v1/users/7`, not of `/v1/usersx`.
#[inline]
pub fn has_prefix(path: &[u8], prefix: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

/// The first segment of a normalised path: `v1` for `/v1/users`, empty for `/`.
#[inline]
pub fn first_segment(path: &[u8]) -> &[u8] {
    let rest = path.strip_prefix(b"/").unwrap_or(path);
    match rest.iter().position(|&b| b == b'/') {
        Some(i) => &rest[..i],
        None => rest,
    }
}

/// Whether some `name` header (lower-case `name`) has one of `values`.
#[inline]
pub fn header_is(req: &RequestHead, name: &str, values: &[&[u8]]) -> bool {
    req.headers().get_all(name).any(|v| values.contains(&v))
}

/// Whether the request has a `name` header.
#[inline]
pub fn header_present(req: &RequestHead, name: &str) -> bool {
    req.headers().get(name).is_some()
}

/// The query string of the request target (after `?`, before `#`).
fn query(req: &RequestHead) -> &[u8] {
    query_of(req.target())
}

fn query_of(target: &[u8]) -> &[u8] {
    match target.iter().position(|&b| b == b'?') {
        Some(i) => {
            let q = &target[i + 1..];
            q.split(|&b| b == b'#').next().unwrap_or(q)
        }
        None => b"",
    }
}

/// Whether the query has parameter `name` equal to one of `values`.
pub fn query_is(req: &RequestHead, name: &[u8], values: &[&[u8]]) -> bool {
    query_pairs(query(req)).any(|(k, v)| form_eq(k, name) && values.iter().any(|x| form_eq(v, x)))
}

/// Whether the query has parameter `name`.
pub fn query_present(req: &RequestHead, name: &[u8]) -> bool {
    query_pairs(query(req)).any(|(k, _)| form_eq(k, name))
}

fn query_pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        })
}

/// Compares a form-encoded query component with a plain value, decoding
/// `+` and `%XX` on the fly (no allocation).
fn form_eq(encoded: &[u8], plain: &[u8]) -> bool {
    let mut decoded = FormDecode {
        bytes: encoded,
        i: 0,
    };
    let mut expected = plain.iter();
    loop {
        match (decoded.next(), expected.next()) {
            (None, None) => return true,
            (Some(a), Some(&b)) if a == b => {}
            _ => return false,
        }
    }
}

struct FormDecode<'a> {
    bytes: &'a [u8],
    i: usize,
}

impl Iterator for FormDecode<'_> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.i)?;
        self.i += 1;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    self.bytes.get(self.i).and_then(|&c| hex(c)),
                    self.bytes.get(self.i + 1).and_then(|&c| hex(c)),
                ) {
                    (Some(h), Some(l)) => {
                        self.i += 2;
                        Some((h * 16 + l) as u8)
                    }
                    _ => Some(b'%'),
                }
            }
            _ => Some(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let mut buf = [0; MAX_HOST];
        assert_eq!(
            host_lower_bytes(b"API.Example.COM:8443", &mut buf),
            b"api.example.com"
        );
        assert_eq!(host_lower_bytes(b"example.com.", &mut buf), b"example.com");
        assert_eq!(host_lower_bytes(b"[::1]:80", &mut buf), b"::1");
        assert_eq!(host_lower_bytes(b"[0:0::1]", &mut buf), b"::1");
        assert_eq!(
            host_lower_bytes(b"[2001:DB8:0:0:1::1]:443", &mut buf),
            b"2001:db8::1:0:0:1"
        );
        assert_eq!(host_lower_bytes(b"[Not-V6]", &mut buf), b"not-v6");
        // The same text as the reference matcher, for every form.
        for host in [
            "[0000::0:1]",
            "[::FFFF:10.0.0.1]:1",
            "[1:2:3:4:5:6:7:8]",
            "[::]",
            "[x",
        ] {
            assert_eq!(
                host_lower_bytes(host.as_bytes(), &mut buf),
                blitz_ir::matcher::host_without_port(host).as_bytes(),
                "{host}"
            );
        }
        assert_eq!(host_lower_bytes(&[b'a'; 300], &mut buf), b"");
        assert!(host_has_suffix(b"a.example.com", b".example.com"));
        assert!(!host_has_suffix(b".example.com", b".example.com"));
        assert!(!host_has_suffix(b"example.com", b".example.com"));
    }

    #[test]
    fn prefixes_and_segments() {
        assert!(has_prefix(b"/v1/users", b"/v1/users"));
        assert!(has_prefix(b"/v1/users/7", b"/v1/users"));
        assert!(!has_prefix(b"/v1/usersx", b"/v1/users"));
        assert!(has_prefix(b"/x", b"/"));
        assert_eq!(first_segment(b"/v1/users"), b"v1");
        assert_eq!(first_segment(b"/v1"), b"v1");
        assert_eq!(first_segment(b"/"), b"");
    }

    #[test]
    fn query_matching() {
        let q = query_of(b"/a?x=1&debug&name=a+b%21#frag");
        let has = |k: &[u8], v: &[u8]| query_pairs(q).any(|(a, b)| form_eq(a, k) && form_eq(b, v));
        assert!(has(b"x", b"1"));
        assert!(has(b"debug", b""));
        assert!(has(b"name", b"a b!"));
        assert!(!has(b"x", b"2"));
        assert!(query_pairs(query_of(b"/a")).next().is_none());
    }
}
