//! HTTP/2 ⇄ HTTP/1.1 head translation (RFC 9113 §8.2, §8.3).
//!
//! A request head is translated into the HTTP/1.1 head it stands for and
//! then parsed by [`crate::http::parse_request_head`], exactly as if a
//! client had sent it: the gateway's routes and steps see the same
//! [`RequestHead`], and every rule of the HTTP/1.1 parser (limits, Host
//! validation, path normalisation, framing) applies to HTTP/2 as well.
//!
//! - `:method`, `:path` become the request line; `:authority` (or, without
//!   it, `host`) becomes the one `Host` that decides routing (§8.3.1); a
//!   `host` field beside `:authority` is dropped.
//! - Cookie crumbs are joined with `"; "` into one field (§8.2.3).
//! - Connection-specific fields (`connection`, `keep-alive`,
//!   `proxy-connection`, `transfer-encoding`, `upgrade`) and `te` other
//!   than `trailers` make the request malformed: the `h2` crate resets the
//!   stream with PROTOCOL_ERROR before we see it (§8.2.2). They are
//!   refused here again, so no such field can ever be forwarded.
//! - A value holding CR, LF or NUL (forbidden by §8.2.1, refused by the
//!   crate's decoder) is refused again here with 400 before it could end
//!   up in an HTTP/1.1 head: no header injection, no request smuggling.
//! - A value starting or ending with a space or tab makes the request
//!   malformed too (§8.2.1, a MUST; the crate lets it through): 400, as
//!   nghttp2 (and so Envoy) refuses it, rather than trimming it as the
//!   HTTP/1.1 parser would trim OWS.
//! - A `:path` with a fragment (`#`) is refused with 400, as the same
//!   target is over HTTP/1.1. The `http` crate's URI parser cuts it at the
//!   `#`, so the verdict comes from the frame watch's HPACK mirror, which
//!   saw the bytes sent, as a [`PathFragment`] mark on the request.
//! - Body framing: `content-length` when the client sent one (the crate
//!   checks the DATA frames add up to it), none when the HEADERS frame
//!   ended the stream, else `transfer-encoding: chunked`.

use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};

use crate::http::parse::is_token_byte;
use crate::http::{
    BodyFraming, HeadLimits, LocalFields, RequestHead, ResponseHead, parse_request_head,
    status_has_no_body,
};

/// A request refused before routing: the status to answer and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub status: u16,
    pub why: &'static str,
}

/// Marks a request whose `:path` had a fragment the `http` crate cut off
/// (seen by [`super::watch::FrameWatch`] in the HPACK bytes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathFragment;

fn refused(status: u16, why: &'static str) -> Refused {
    Refused { status, why }
}

/// Fields that are connection-specific in HTTP/2 (RFC 9113 §8.2.2).
fn connection_specific(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

fn bad_value(v: &[u8]) -> bool {
    v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

/// A value that starts or ends with a space or tab (RFC 9113 §8.2.1).
fn padded_value(v: &[u8]) -> bool {
    let ws = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    ws(v.first()) || ws(v.last())
}

/// Why a request's trailer section (RFC 9113 §8.1) makes it malformed,
/// held to the rules its head is: a name of token characters (RFC 9110
/// §5.1; the `http` crate lets some others through), a value without CR,
/// LF or NUL, nor a space or tab at either end (§8.2.1). The trailers are
/// not forwarded; a malformed request must not be either.
pub(crate) fn trailers_fault(trailers: &HeaderMap) -> Option<&'static str> {
    trailers.iter().find_map(|(name, value)| {
        let value = value.as_bytes();
        if !name.as_str().bytes().all(is_token_byte) {
            Some("a trailer field name that is not a token")
        } else if bad_value(value) || padded_value(value) {
            Some("whitespace around a trailer field value")
        } else {
            None
        }
    })
}

/// Writes the HTTP/1.1 head `parts` stands for into `out` and parses it
/// into `req`. `end_stream`: the HEADERS frame carried END_STREAM.
pub(crate) fn request_head(
    parts: &Parts,
    end_stream: bool,
    limits: &HeadLimits,
    out: &mut Vec<u8>,
    req: &mut RequestHead,
) -> Result<(), Refused> {
    out.clear();
    if parts.method == Method::CONNECT {
        return Err(refused(501, "CONNECT is not supported"));
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .ok_or(refused(400, "missing :path"))?;
    if parts.extensions.get::<PathFragment>().is_some() {
        return Err(refused(400, "fragment in :path"));
    }
    // Schemes are case-insensitive (RFC 3986 §3.1); the `http` crate keeps
    // any other spelling than lower case as an "other" scheme.
    if let Some(scheme) = parts.uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(refused(400, "unsupported :scheme"));
    }
    let headers = &parts.headers;
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => {
            let mut hosts = headers.get_all(http::header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(h), None) => h.as_bytes(),
                (None, _) => return Err(refused(400, "missing :authority and host")),
                (Some(_), Some(_)) => return Err(refused(400, "several host fields")),
            }
        }
    };
    if bad_value(authority) {
        return Err(refused(400, "invalid :authority"));
    }
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n");
    let mut has_length = false;
    for (name, value) in headers {
        let name = name.as_str();
        let value = value.as_bytes();
        if connection_specific(name) || (name == "te" && value != b"trailers") {
            return Err(refused(400, "connection-specific header field"));
        }
        if bad_value(value) {
            return Err(refused(400, "CR, LF or NUL in a header value"));
        }
        if padded_value(value) {
            return Err(refused(400, "whitespace around a header value"));
        }
        match name {
            "host" | "cookie" => continue,
            "content-length" => has_length = true,
            _ => {}
        }
        put_field(out, name.as_bytes(), value);
    }
    put_cookies(headers, out)?;
    if !has_length && !end_stream {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    match parse_request_head(out, limits, req) {
        Ok(Some(n)) if n == out.len() => Ok(()),
        Ok(_) => Err(refused(400, "malformed request head")),
        Err(rej) => Err(refused(rej.status, rej.why)),
    }
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Cookie crumbs, joined into one field (RFC 9113 §8.2.3).
fn put_cookies(headers: &HeaderMap, out: &mut Vec<u8>) -> Result<(), Refused> {
    let mut crumbs = headers.get_all(http::header::COOKIE).iter().peekable();
    if crumbs.peek().is_none() {
        return Ok(());
    }
    out.extend_from_slice(b"cookie: ");
    let mut first = true;
    for crumb in crumbs {
        let crumb = crumb.as_bytes();
        if bad_value(crumb) {
            return Err(refused(400, "CR, LF or NUL in a header value"));
        }
        if !first {
            out.extend_from_slice(b"; ");
        }
        first = false;
        out.extend_from_slice(crumb);
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// The HTTP/2 response head for an upstream's HTTP/1.1 one (after the
/// response steps ran on it). Fields HTTP/2 cannot carry are dropped,
/// names are lower-cased, and `content-length` is set from the framing
/// (or, for HEAD and 304, from what the upstream declared).
pub(crate) fn response_head(resp: &ResponseHead, is_head: bool) -> Response<()> {
    let mut out = Response::new(());
    *out.status_mut() = StatusCode::from_u16(resp.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = out.headers_mut();
    for (name, value) in resp.headers.iter_end_to_end() {
        if crate::http::write::dropped_from_response(name) {
            continue;
        }
        // Invalid names or values cannot be carried: dropped, never mangled.
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    let length = match resp.framing() {
        BodyFraming::Length(n) => Some(n),
        BodyFraming::None if is_head || resp.status() == 304 => resp.declared_length,
        _ => None,
    };
    if let Some(n) = length {
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    out
}

/// The HTTP/2 head of an answer the gateway writes itself, as
/// `write_local_response` writes it for HTTP/1.1: its fields, then the
/// length of its `length`-byte body (none for 204 and 304).
pub(crate) fn local_head(status: u16, fields: LocalFields<'_>, length: usize) -> Response<()> {
    let mut out = Response::new(());
    *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    fields.each(|name, value| {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    });
    // A 204 has no length (RFC 9110 §8.6), and neither it nor a 304 a body.
    if !status_has_no_body(status) {
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_header_bytes: 16384,
            max_headers: 100,
            max_body_bytes: 1 << 20,
        }
    }

    fn translate(
        b: http::request::Builder,
        end_stream: bool,
    ) -> (Result<(), Refused>, String, RequestHead) {
        let (parts, ()) = b.body(()).unwrap_or_else(|e| panic!("{e}")).into_parts();
        let mut out = Vec::new();
        let mut req = RequestHead::default();
        let r = request_head(&parts, end_stream, &limits(), &mut out, &mut req);
        (r, String::from_utf8_lossy(&out).into_owned(), req)
    }

    #[test]
    fn authority_decides_host_and_cookies_join() {
        let (r, head, req) = translate(
            http::Request::builder()
                .method("GET")
                .uri("https://a.test:8443/x/../y?q=1")
                .header("host", "evil.test")
                .header("cookie", "a=1")
                .header("accept", "*/*")
                .header("cookie", "b=2")
                .header("te", "trailers"),
            true,
        );
        assert_eq!(r, Ok(()), "{head}");
        assert_eq!(req.host(), b"a.test:8443");
        assert_eq!(req.path_only(), b"/y");
        assert_eq!(req.headers().get("cookie"), Some(&b"a=1; b=2"[..]));
        assert!(!head.contains("evil"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
    }

    #[test]
    fn framing_from_length_or_end_stream() {
        let (r, _, req) = translate(
            http::Request::builder()
                .method("POST")
                .uri("http://a.test/")
                .header("content-length", "5"),
            false,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(req.framing(), BodyFraming::Length(5));
        let (_, _, req) = translate(
            http::Request::builder()
                .method("POST")
                .uri("http://a.test/"),
            false,
        );
        assert_eq!(req.framing(), BodyFraming::Chunked);
        let (_, _, req) = translate(
            http::Request::builder()
                .method("POST")
                .uri("http://a.test/"),
            true,
        );
        assert_eq!(req.framing(), BodyFraming::None);
    }

    #[test]
    fn refuses_connection_headers_and_connect() {
        for (name, value) in [
            ("connection", "close"),
            ("keep-alive", "1"),
            ("proxy-connection", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
        ] {
            let (r, _, _) = translate(
                http::Request::builder()
                    .uri("http://a.test/")
                    .header(name, value),
                true,
            );
            assert_eq!(r.map_err(|e| e.status), Err(400), "{name}");
        }
        let (r, _, _) = translate(
            http::Request::builder().method("CONNECT").uri("a.test:443"),
            true,
        );
        assert_eq!(r.map_err(|e| e.status), Err(501));
        let (r, _, _) = translate(http::Request::builder().uri("/nohost"), true);
        assert_eq!(r.map_err(|e| e.status), Err(400));
    }

    #[test]
    fn a_path_with_raw_non_ascii_is_400_as_on_http11() {
        // The `http` crate takes UTF-8 in `:path` (and refuses other bytes:
        // the `h2` crate resets such a stream); the parser refuses it.
        let uri = http::Uri::from_maybe_shared(&b"http://a.test/caf\xc3\xa9"[..])
            .unwrap_or_else(|e| panic!("{e}"));
        let (r, _, _) = translate(http::Request::builder().uri(uri), true);
        assert_eq!(r.map_err(|e| e.status), Err(400));
        let (r, _, _) = translate(
            http::Request::builder().uri("http://a.test/caf%C3%A9"),
            true,
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn refuses_whitespace_around_values() {
        for value in [" a", "a ", "\ta", "a\t", " "] {
            for name in ["x-a", "cookie", "content-type"] {
                let (r, _, _) = translate(
                    http::Request::builder()
                        .uri("http://a.test/")
                        .header(name, value),
                    true,
                );
                assert_eq!(r.map_err(|e| e.status), Err(400), "{name}: {value:?}");
            }
        }
        let (r, _, req) = translate(
            http::Request::builder()
                .uri("http://a.test/")
                .header("x-a", "a \t b")
                .header("x-empty", ""),
            true,
        );
        assert_eq!(r, Ok(()), "inner whitespace and empty values are fine");
        assert_eq!(req.headers().get("x-a"), Some(&b"a \t b"[..]));
    }

    #[test]
    fn too_large_head_is_431() {
        let (r, _, _) = translate(
            http::Request::builder()
                .uri("http://a.test/")
                .header("x-big", "a".repeat(20000)),
            true,
        );
        assert_eq!(r.map_err(|e| e.status), Err(431));
        let (r, _, _) = translate(
            http::Request::builder().uri(format!("http://a.test/{}", "a".repeat(20000))),
            true,
        );
        assert_eq!(r.map_err(|e| e.status), Err(414), "a :path past the limit");
    }

    /// The `h2` crate refuses a header list of `max_header_list_size` or
    /// more in HPACK's accounting before this translation runs: for the
    /// largest requests of several shapes that pass the exact check, the
    /// list must stay under that bound.
    #[test]
    fn the_crate_never_refuses_a_head_the_exact_check_takes() {
        let bound = super::super::max_header_list_size(&crate::proxy::Limits {
            max_header_bytes: limits().max_header_bytes,
            max_headers: limits().max_headers,
            ..Default::default()
        });
        let request = |crumbs: usize, crumb: &str, fields: usize| {
            let mut b = http::Request::builder().uri("https://a.test/");
            let mut hpack = [":method", ":scheme", ":authority", ":path"].len() * 32
                + ":methodGET:schemehttps:authoritya.test:path/".len();
            for _ in 0..crumbs {
                b = b.header("cookie", crumb);
                hpack += "cookie".len() + crumb.len() + 32;
            }
            for i in 0..fields {
                let name = format!("x{}", i % 10);
                hpack += name.len() + 32;
                b = b.header(name, "");
            }
            (b, hpack)
        };
        // Each shape: the most crumbs (or fields) the exact check takes.
        let shapes: [(&str, usize); 4] = [("", 0), ("a", 0), ("a=1", 0), ("", 98)];
        for (crumb, fields) in shapes {
            let passes = |n: usize| translate(request(n, crumb, fields).0, true).0.is_ok();
            let (mut lo, mut hi) = (1, limits().max_header_bytes);
            assert!(passes(lo) && !passes(hi), "{crumb:?}");
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if passes(mid) { lo = mid } else { hi = mid }
            }
            let (_, hpack) = request(lo, crumb, fields);
            assert!(
                hpack < bound as usize,
                "{lo} crumbs {crumb:?} and {fields} fields: {hpack} in HPACK, bound {bound}"
            );
        }
        // The bound grows with the limits it stands for, and saturates.
        let huge = crate::proxy::Limits {
            max_header_bytes: usize::MAX,
            ..Default::default()
        };
        assert_eq!(super::super::max_header_list_size(&huge), u32::MAX);
    }

    #[test]
    fn response_drops_hop_by_hop() {
        let mut resp = ResponseHead::default();
        let raw = b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: t=1\r\nX-Ok: yes\r\nContent-Length: 3\r\n\r\n";
        let lim = limits();
        let n = crate::http::parse_response_head(raw, &lim, false, &mut resp);
        assert!(matches!(n, Ok(Some(_))));
        let h = response_head(&resp, false);
        assert_eq!(h.status(), 200);
        assert_eq!(
            h.headers().get("x-ok").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
        assert_eq!(
            h.headers().get("content-length").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert!(h.headers().get("x-hop").is_none());
        assert!(h.headers().get("keep-alive").is_none());
        assert!(h.headers().get("connection").is_none());
    }
}
