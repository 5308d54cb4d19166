//! Serializers: the forwarded request head, the client response head and
//! the runtime's own short responses. Each writes a whole head into one
//! reusable buffer, so it leaves in one write.
//!
//! Re-framing invariant: the peer sees exactly one framing header that this
//! module wrote, CRLF line endings, one `Host` (requests), and no
//! hop-by-hop field as sent by the other side.

use std::io::Write as _;
use std::net::IpAddr;

use super::head::{BodyFraming, HeaderBlock, RequestHead, ResponseHead, Version};

/// Fields the writer always drops from what it forwards, because it either
/// rewrites them or they are hop-by-hop (RFC 9110 §7.6.1). `proxy-*` is
/// matched by prefix separately.
fn dropped_when_forwarding(name: &[u8]) -> bool {
    const NAMES: &[&[u8]] = &[
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-request-id",
    ];
    (name.len() >= 6
        && name[..6].eq_ignore_ascii_case(b"proxy-")
        && !name.eq_ignore_ascii_case(b"proxy-status"))
        || NAMES
            .iter()
            .any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
}

/// Decimal digits of `n`, without going through `fmt` (hot path).
pub(crate) fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_framing(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            put_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
}

/// Valid incoming request ids are kept: 1 to 128 visible ASCII bytes
/// from a conservative set (no spaces, quotes or separators).
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=')
        })
}

/// What the proxy adds to a forwarded request.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInfo<'a> {
    /// The client's address, appended to `x-forwarded-for`.
    pub client_ip: IpAddr,
    /// `http` or `https`, written as `x-forwarded-proto`.
    pub proto: &'a str,
    /// The request id to send (the valid incoming one or a generated one).
    pub request_id: &'a [u8],
    /// A prefix to strip from the path, if it matches.
    pub strip_prefix: Option<&'a str>,
    /// `Host` to send when the request has none (HTTP/1.0): the upstream
    /// server's authority, since HTTP/1.1 requires one.
    pub fallback_host: &'a [u8],
    /// The protocol version the request came in with, for `via` (RFC 9110
    /// §7.6.3): `1.0`, `1.1` or `2`.
    pub received: &'a str,
}

/// The forwarded path: `path` with `prefix` removed when it matches on a
/// segment boundary; an empty result becomes `/`.
pub fn strip_path_prefix<'p>(path: &'p [u8], prefix: Option<&str>) -> (&'static [u8], &'p [u8]) {
    let Some(prefix) = prefix.map(|p| p.trim_end_matches('/').as_bytes()) else {
        return (b"", path);
    };
    if prefix.is_empty() || !path.starts_with(prefix) {
        return (b"", path);
    }
    let rest = &path[prefix.len()..];
    match rest.first() {
        None => (b"/", rest),
        Some(b'/') => (b"", rest),
        Some(b'?') => (b"/", rest),
        // "/api" must not strip "/apix".
        Some(_) => (b"", path),
    }
}

/// Writes the request head sent upstream: origin-form target, HTTP/1.1,
/// one `Host` (the decided authority), end-to-end fields, the proxy
/// fields, then the framing header for `framing`.
pub fn write_forward_request(
    req: &RequestHead,
    info: &ForwardInfo<'_>,
    framing: BodyFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(req.method().as_bytes());
    out.push(b' ');
    // The normalised path (what the route matched), then the query as sent.
    let (lead, path) = strip_path_prefix(req.path_only(), info.strip_prefix);
    out.extend_from_slice(lead);
    out.extend_from_slice(path);
    let raw = req.path();
    if let Some(q) = raw.iter().position(|&b| b == b'?') {
        out.extend_from_slice(&raw[q..]);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    // The last live Host field: the parsed one, the absolute-form authority,
    // or what the gateway's header steps set. None (HTTP/1.0): the server.
    let host = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"host"))
        .last()
        .map_or(info.fallback_host, |(_, v)| v);
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    for (name, value) in req.headers.iter_end_to_end() {
        if !dropped_when_forwarding(name) {
            put_field(out, name, value);
        }
    }
    // x-forwarded-for: every incoming end-to-end value, in order, then the
    // client (values the client's Connection named are hop-by-hop).
    out.extend_from_slice(b"x-forwarded-for: ");
    for v in req.headers.get_all_end_to_end("x-forwarded-for") {
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    put_ip(out, info.client_ip);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(info.proto.as_bytes());
    out.extend_from_slice(b"\r\nvia: ");
    out.extend_from_slice(info.received.as_bytes());
    out.extend_from_slice(b" blitz\r\nx-request-id: ");
    out.extend_from_slice(info.request_id);
    out.extend_from_slice(b"\r\n");
    put_framing(out, framing);
    out.extend_from_slice(b"\r\n");
}

/// Writes the response head for the client. `framing` is the framing the
/// client will see (decided by the caller), `close` adds `connection: close`.
pub fn write_response_head(
    resp: &ResponseHead,
    framing: BodyFraming,
    client_version: Version,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(resp.status()));
    out.push(b' ');
    let reason = resp.reason();
    if reason.is_empty() {
        out.extend_from_slice(reason_phrase(resp.status()).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers.iter_end_to_end() {
        if !dropped_from_response(name) {
            put_field(out, name, value);
        }
    }
    match framing {
        BodyFraming::None => {
            // HEAD and 304 answers describe the body they do not carry.
            if let Some(n) = resp.declared_length
                && resp.status() != 204
                && resp.status() >= 200
            {
                out.extend_from_slice(b"content-length: ");
                put_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        other => put_framing(out, other),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client_version == Version::Http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Upstream response fields that never reach the client, over HTTP/1.1 or
/// HTTP/2: hop-by-hop ones (RFC 9110 §7.6.1, `Proxy-*` as RELIABILITY.md
/// counts them; those `Connection` nominates are dropped by
/// `iter_end_to_end`), and `content-length`, which is written from the
/// framing instead. HTTP/2 forbids the connection-specific ones too (RFC
/// 9113 §8.2.2). `Proxy-Status` is the exception: each intermediary on the
/// response's way adds itself to it for the client (RFC 9209 §2).
pub(crate) fn dropped_from_response(name: &[u8]) -> bool {
    const NAMES: &[&[u8]] = &[
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ];
    (name.len() >= 6
        && name[..6].eq_ignore_ascii_case(b"proxy-")
        && !name.eq_ignore_ascii_case(b"proxy-status"))
        || NAMES
            .iter()
            .any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
}

/// Whether a header step that sets or adds `name` can have no effect,
/// because the writer drops that field whatever its value: hop-by-hop and
/// framing fields (and, on a request, `expect`, which the gateway answers
/// itself). `blitzc check` warns about such a step (B056) from this very
/// list. Fields the gateway writes from the steps' result are not among
/// them: `host`, `x-forwarded-for`, `x-forwarded-proto`, `x-request-id`.
pub fn step_has_no_effect(name: &[u8], on_request: bool) -> bool {
    const FROM_STEPS: &[&[u8]] = &[
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-request-id",
    ];
    if on_request {
        dropped_when_forwarding(name)
            && !FROM_STEPS
                .iter()
                .any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
    } else {
        dropped_from_response(name)
    }
}

/// A response the runtime writes itself (errors, `respond`, `redirect`).
#[derive(Debug, Clone, Copy)]
pub struct LocalResponse<'a> {
    /// Status code.
    pub status: u16,
    /// Its fields (framing and connection fields are added here).
    pub fields: LocalFields<'a>,
    /// Body bytes.
    pub body: &'a [u8],
    /// Add `connection: close`.
    pub close: bool,
    /// Answer to HEAD: write the length but not the body.
    pub head_only: bool,
    /// HTTP/1.0 client that asked for keep-alive.
    pub keep_alive_10: bool,
}

/// The fields of an answer the gateway writes itself.
#[derive(Clone, Copy, Debug)]
pub enum LocalFields<'a> {
    /// Its own: a `content-type`, a `location` (redirects), and a `date`
    /// added when written ([`own_local_fields`]).
    Own {
        content_type: Option<&'a str>,
        location: Option<&'a [u8]>,
    },
    /// Its own after the route's response steps (`response-headers`) ran
    /// over them, which may have replaced or removed them. Framing and
    /// hop-by-hop names among them are dropped when written, as from an
    /// upstream.
    Stepped(&'a HeaderBlock),
}

impl LocalFields<'_> {
    /// Each field to write, given to `put`.
    pub(crate) fn each(&self, mut put: impl FnMut(&[u8], &[u8])) {
        match *self {
            LocalFields::Own {
                content_type,
                location,
            } => own_local_fields(content_type, location, |n, v| put(n.as_bytes(), v)),
            LocalFields::Stepped(block) => {
                for (name, value) in block.iter() {
                    if !dropped_from_response(name) {
                        put(name, value);
                    }
                }
            }
        }
    }
}

/// A local answer's own fields, each given to `put`: its `content-type`,
/// its `location` (unless it holds CR, LF or NUL) and a `date` (an origin
/// server with a clock dates its answers, RFC 9110 §6.6.1).
pub(crate) fn own_local_fields(
    content_type: Option<&str>,
    location: Option<&[u8]>,
    mut put: impl FnMut(&str, &[u8]),
) {
    if let Some(ct) = content_type {
        put("content-type", ct.as_bytes());
    }
    if let Some(loc) = location
        && !loc.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
    {
        put("location", loc);
    }
    put("date", &super::http_date());
}

/// Writes a whole local response (head and body) into `out`.
pub fn write_local_response(r: &LocalResponse<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(r.status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(r.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    r.fields.each(|name, value| put_field(out, name, value));
    // 204 and 304 carry no body, and a 204 no length (RFC 9110 §8.6,
    // §15.3.5, §15.4.5): a body written after them would be read as the
    // start of the next response.
    let bodyless = status_has_no_body(r.status);
    let body = local_body(r.status, r.body);
    if !bodyless {
        out.extend_from_slice(b"content-length: ");
        put_u64(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if r.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if r.keep_alive_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !r.head_only {
        out.extend_from_slice(body);
    }
}

/// Statuses whose responses never have a body (1xx, 204, 304), whatever
/// a spec's `respond` gives.
pub fn status_has_no_body(status: u16) -> bool {
    status < 200 || status == 204 || status == 304
}

/// The body a local answer of `status` sends of the `body` it was given:
/// none for the statuses without one ([`status_has_no_body`]), and none
/// for 205, which must have no content (RFC 9110 §15.3.6) but, unlike
/// them, is framed (`content-length: 0`).
pub fn local_body(status: u16, body: &[u8]) -> &[u8] {
    if status_has_no_body(status) || status == 205 {
        &[]
    } else {
        body
    }
}

/// The reason phrase of a registered status (RFC 9110 §15, RFC 6585,
/// RFC 8297, RFC 8470, RFC 7725), for the answers the runtime writes and
/// for relayed responses that came without one; empty for any other
/// status (the phrase is optional, RFC 9112 §4, and clients ignore it).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        511 => "Network Authentication Required",
        _ => "",
    }
}
