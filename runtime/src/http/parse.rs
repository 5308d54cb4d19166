//! Strict request and response head parsing (RFC 9112), over `httparse`.
//!
//! Pure functions: bytes in, a validated head (or a rejection with its
//! status) out. Every framing rule of RELIABILITY.md "HTTP/1.1 framing" is
//! decided here, so the IO shell only acts on the verdict. A rejected
//! request is answered with its status and `Connection: close`, and the
//! bytes after it are never looked at.

use std::mem::MaybeUninit;

use super::head::{BodyFraming, HeaderBlock, RequestHead, ResponseHead, Version};

/// Header fields parsed in a stack array; a `max_headers` above it is
/// served from a heap array sized by the head's lines.
pub const MAX_HEADERS_CAP: usize = 256;

type Slot<'b> = MaybeUninit<httparse::Header<'b>>;

/// The slots httparse fills: `max_headers` of the stack array, or, for a
/// larger limit, a heap array with no more slots than `buf` has lines (a
/// head cannot hold more fields), so the allocation follows the input and
/// never the configured number.
fn header_slots<'s, 'b>(
    limits: &HeadLimits,
    buf: &[u8],
    stack: &'s mut [Slot<'b>; MAX_HEADERS_CAP],
    heap: &'s mut Vec<Slot<'b>>,
) -> &'s mut [Slot<'b>] {
    if limits.max_headers <= MAX_HEADERS_CAP {
        return &mut stack[..limits.max_headers.max(1)];
    }
    let lines = buf.iter().filter(|&&b| b == b'\n').count() + 1;
    heap.resize_with(limits.max_headers.min(lines), MaybeUninit::uninit);
    heap
}

/// Size limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest head (request line and fields) accepted; over it: 431 (414
    /// when the request-target alone runs past it).
    pub max_header_bytes: usize,
    /// Most header fields accepted; over it: 431.
    pub max_headers: usize,
    /// Largest declared body accepted; over it: 413.
    pub max_body_bytes: u64,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_header_bytes: 16384,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Why a message was rejected: the status to answer with and a short cause.
/// The connection is always closed after a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// Status for the client (400, 413, 417, 431, 501, 505); for an upstream
    /// response, the gateway answers 502 whatever this says.
    pub status: u16,
    /// Short static cause, for logs and tests.
    pub why: &'static str,
}

const fn reject(status: u16, why: &'static str) -> Reject {
    Reject { status, why }
}

/// tchar (RFC 9110 §5.6.2).
pub fn is_token_byte(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' |
        b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// A byte a request target may hold as sent: visible ASCII. RFC 3986
/// (which RFC 9112 §3.2 builds the target from) has no raw byte above
/// 0x7F, nor a control, space or DEL; a client percent-encodes them.
/// httparse lets bytes above 0x7F through when they are UTF-8 (and refuses
/// the others): the parser refuses them all alike, so no upstream gets a
/// raw non-ASCII target that it and the routes might read differently.
fn is_target_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b)
}

/// Every LF must be preceded by CR: bare LF line endings are refused
/// rather than tolerated, so no peer can read the head differently.
fn has_bare_lf(head: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return true;
        }
        prev = b;
    }
    false
}

fn offset(base: &[u8], part: &[u8]) -> u32 {
    // Both slices come from the same buffer: plain address arithmetic.
    (part.as_ptr() as usize - base.as_ptr() as usize) as u32
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Parses `1*DIGIT` into a u64; anything else (sign, hex, space, empty,
/// overflow) is `None`.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Checks `host [ ":" port ]` where host is a reg-name, IPv4 or `[IPv6]`.
/// Userinfo, empty hosts and empty or over-long ports are refused, and so
/// is a percent-encoded host (RFC 3986 allows `%2e` in a reg-name, but no
/// DNS name holds one; routes match the host as sent, so `admin%2etest`
/// would miss a route for `admin.test`, fall to another, and reach an
/// upstream that may decode it; nginx and HAProxy refuse it too).
pub fn valid_authority(a: &[u8]) -> bool {
    if a.is_empty() || a.len() > 255 {
        return false;
    }
    let (host, port) = if a[0] == b'[' {
        let Some(close) = a.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &a[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &a[close + 1..] {
            [] => (&a[..0], None),
            [b':', port @ ..] => (&a[..0], Some(port)),
            _ => return false,
        }
    } else {
        match a.iter().rposition(|&b| b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    if a[0] != b'[' {
        if host.is_empty() {
            return false;
        }
        let ok = host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        });
        if !ok {
            return false;
        }
    }
    match port {
        None => true,
        Some(p) => !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit),
    }
}

/// Where the `HTTP/d.d` of a request line `METHOD SP TARGET SP HTTP/d.d`
/// starts in `buf`. Only for such a line is a version httparse refuses a
/// 505 (or, for a higher 1.x, served as 1.1) rather than a malformed line.
fn request_line_version_at(buf: &[u8]) -> Option<usize> {
    let line = match buf.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) => &buf[..i],
        None => buf,
    };
    let mut parts = line.split(|&b| b == b' ');
    let (Some(m), Some(t), Some(v), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let well_formed = !m.is_empty() && !t.is_empty() && is_version_token(v);
    well_formed.then(|| m.len() + 1 + t.len() + 1)
}

/// `HTTP/d.d`, digits only, exactly one of each.
fn is_version_token(v: &[u8]) -> bool {
    v.len() == 8
        && v.starts_with(b"HTTP/")
        && v[5].is_ascii_digit()
        && v[6] == b'.'
        && v[7].is_ascii_digit()
}

/// `buf` with the `HTTP/1.x` at `at` rewritten to `HTTP/1.1` when x is a
/// minor version above 1: RFC 9110 §2.5 says a recipient SHOULD process a
/// higher minor version of a major version it implements as the highest
/// minor it implements. `None` for any other version (2.0, 0.9, ...),
/// which stays an error. The copy is the rare path only; the rewritten
/// token has the same length, so every offset into `buf` still holds.
fn as_http11(buf: &[u8], at: usize) -> Option<Vec<u8>> {
    let v = buf.get(at..at + 8)?;
    if !(is_version_token(v) && v[5] == b'1' && v[7] > b'1') {
        return None;
    }
    let mut patched = buf.to_vec();
    patched[at + 7] = b'1';
    Some(patched)
}

fn httparse_reject(e: httparse::Error) -> Reject {
    match e {
        httparse::Error::TooManyHeaders => reject(431, "too many header fields"),
        httparse::Error::Version => reject(505, "unsupported HTTP version"),
        httparse::Error::HeaderName => reject(400, "invalid header name"),
        httparse::Error::HeaderValue => reject(400, "invalid header value"),
        httparse::Error::Token => reject(400, "invalid token in request line"),
        httparse::Error::NewLine => reject(400, "invalid line ending"),
        httparse::Error::Status => reject(400, "invalid status"),
    }
}

/// Decides the framing from all `Content-Length` and `Transfer-Encoding`
/// values. Shared by requests and responses; `Err` carries the cause.
fn framing_fields(
    headers: &[httparse::Header<'_>],
    version: Version,
) -> Result<(Option<u64>, bool), Reject> {
    let mut length: Option<u64> = None;
    let mut te_seen = false;
    let mut chunked = 0u32;
    let mut other_coding = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            // A list ("5, 5") is refused outright: exactly 1*DIGIT per field.
            let Some(n) = parse_content_length(h.value) else {
                return Err(reject(400, "invalid Content-Length"));
            };
            match length {
                Some(prev) if prev != n => return Err(reject(400, "conflicting Content-Length")),
                _ => length = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_seen = true;
            for element in h.value.split(|&b| b == b',') {
                // Only SP and HTAB count as whitespace; VT, NBSP etc. stay
                // part of the element and make it unknown.
                let coding = trim_ows(element);
                if coding.is_empty() {
                    return Err(reject(400, "empty Transfer-Encoding element"));
                }
                if !coding.iter().all(|&b| is_token_byte(b)) {
                    return Err(reject(400, "invalid Transfer-Encoding"));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                } else {
                    other_coding = true;
                }
            }
        }
    }
    if te_seen {
        if version == Version::Http10 {
            return Err(reject(400, "Transfer-Encoding on HTTP/1.0"));
        }
        if length.is_some() {
            return Err(reject(400, "both Content-Length and Transfer-Encoding"));
        }
        if chunked > 1 {
            return Err(reject(400, "chunked applied more than once"));
        }
        if other_coding {
            return Err(reject(501, "unsupported transfer coding"));
        }
    }
    Ok((length, te_seen))
}

/// A head past `max_header_bytes`: 414 when its request-target alone runs
/// past the limit (the line holds the space after the method but not the
/// one after the target: RFC 9112 §3, a request-target longer than the
/// server parses MUST get 414, as nginx answers it), else 431 (RFC 6585
/// §5: the fields, or a limit too small for any head, made it too large).
fn too_large(buf: &[u8], max_header_bytes: usize) -> Reject {
    let within = &buf[..buf.len().min(max_header_bytes)];
    let line = within.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.len() == within.len() && line.iter().filter(|&&b| b == b' ').count() == 1 {
        reject(414, "request target too long")
    } else {
        reject(431, "request head too large")
    }
}

/// Parses and validates a request head at the start of `buf`.
///
/// `Ok(None)`: incomplete, read more (unless `buf` already holds
/// `max_header_bytes`, which is a 431). `Ok(Some(n))`: the head is the
/// first `n` bytes and `head` is filled in.
pub fn parse_request_head(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<Option<usize>, Reject> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let mut heap = Vec::new();
    let slots = header_slots(limits, buf, &mut stack, &mut heap);
    let mut req = httparse::Request::new(&mut []);
    let status =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, slots);
    let n = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_header_bytes {
                return Err(too_large(buf, limits.max_header_bytes));
            }
            // A bare LF would only be caught once complete; refuse early so
            // a slow client cannot hold the connection with garbage.
            if has_bare_lf(buf) {
                return Err(reject(400, "bare LF in head"));
            }
            return Ok(None);
        }
        Err(httparse::Error::Version) => {
            let Some(at) = request_line_version_at(buf) else {
                return Err(reject(400, "malformed request line"));
            };
            return match as_http11(buf, at) {
                Some(patched) => parse_request_head(&patched, limits, head),
                None => Err(httparse_reject(httparse::Error::Version)),
            };
        }
        Err(e) => return Err(httparse_reject(e)),
    };
    if n > limits.max_header_bytes {
        return Err(too_large(buf, limits.max_header_bytes));
    }
    if has_bare_lf(&buf[..n]) {
        return Err(reject(400, "bare LF in head"));
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(reject(400, "malformed request line"));
    };
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };

    head.headers.clear();
    let base = head.headers.store(&buf[..n]);
    debug_assert_eq!(base, 0);
    let m0 = offset(buf, method.as_bytes());
    head.method = m0..m0 + method.len() as u32;
    let t0 = offset(buf, target.as_bytes());
    head.target = t0..t0 + target.len() as u32;
    head.version = Some(version);
    head.is_head = method == "HEAD";
    head.absolute_form = false;

    if method == "CONNECT" {
        return Err(reject(501, "CONNECT is not supported"));
    }

    // Request target (RFC 9112 §3.2).
    let tb = target.as_bytes();
    if !tb.iter().all(|&b| is_target_byte(b)) {
        return Err(reject(400, "byte outside visible ASCII in request target"));
    }
    let mut target_authority = None;
    if tb.contains(&b'#') {
        return Err(reject(400, "fragment in request target"));
    }
    // The target is `*` (or stands for it, below).
    let mut asterisk = tb == b"*";
    if tb.first() == Some(&b'/') {
        head.path = head.target.clone();
    } else if tb == b"*" {
        if method != "OPTIONS" {
            return Err(reject(400, "asterisk-form outside OPTIONS"));
        }
        head.path = head.target.clone();
    } else {
        let rest = if tb.len() > 7 && tb[..7].eq_ignore_ascii_case(b"http://") {
            &tb[7..]
        } else if tb.len() > 8 && tb[..8].eq_ignore_ascii_case(b"https://") {
            &tb[8..]
        } else {
            return Err(reject(400, "invalid request target"));
        };
        let end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if !valid_authority(authority) {
            return Err(reject(400, "invalid authority in request target"));
        }
        let a0 = offset(buf, authority);
        target_authority = Some(a0..a0 + authority.len() as u32);
        let path = &rest[end..];
        if path.first() == Some(&b'/') {
            let p0 = offset(buf, path);
            head.path = p0..p0 + path.len() as u32;
        } else if path.is_empty() && method == "OPTIONS" {
            // OPTIONS of the server itself, not of a resource: the last
            // proxy asks the origin `OPTIONS *` (RFC 9112 §3.2.4).
            let p0 = head.headers.store(b"*");
            head.path = p0..p0 + 1;
            asterisk = true;
        } else {
            // Empty path or a bare query: the origin-form path is "/".
            let p0 = head.headers.store(b"/");
            head.headers.store(path);
            head.path = p0..p0 + 1 + path.len() as u32;
        }
        head.absolute_form = true;
    }

    // Normalised path, stored after the raw head.
    {
        let raw = head.path.clone();
        let block = head.storage_mut();
        let n0 = block.len_bytes();
        if block.normalize_into_self(&raw) {
            head.norm = n0..head.headers.len_bytes();
        } else if asterisk {
            head.norm = raw;
        } else {
            return Err(reject(400, "malformed percent escape in path"));
        }
    }

    let headers = &*req.headers;
    let (length, chunked) = framing_fields(headers, version)?;

    let mut host = None;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in headers {
        let v0 = offset(buf, h.value);
        let n0 = offset(buf, h.name.as_bytes());
        head.headers
            .push_span(n0..n0 + h.name.len() as u32, v0..v0 + h.value.len() as u32);
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(v0..v0 + h.value.len() as u32);
            if !valid_authority(h.value) {
                return Err(reject(400, "invalid Host"));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim_ows(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") && version == Version::Http11 {
            // A list (RFC 9110 §10.1.1): its empty elements are skipped
            // (§5.6.1.2), and several lines mean one joined list (§5.3).
            for expectation in h.value.split(|&b| b == b',').map(trim_ows) {
                if expectation.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else if !expectation.is_empty() {
                    return Err(reject(417, "unsupported expectation"));
                }
            }
        }
    }
    if hosts > 1 {
        return Err(reject(400, "several Host fields"));
    }
    if hosts == 0 && version == Version::Http11 {
        return Err(reject(400, "missing Host"));
    }
    head.host = match (target_authority, host) {
        (Some(a), _) => {
            // The target's authority is the Host from here on, for the
            // gateway's header steps and for the upstream.
            head.headers.remove("host");
            head.headers.append_with_value_span("host", a.clone());
            a
        }
        (None, Some(h)) => h,
        (None, None) => 0..0,
    };
    // Names listed in Connection are hop-by-hop for this message only.
    mark_connection_listed(&mut head.headers, headers);

    let framing = if chunked {
        BodyFraming::Chunked
    } else {
        match length {
            Some(n) if n > limits.max_body_bytes => {
                return Err(reject(413, "declared body too large"));
            }
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::None,
        }
    };
    head.framing = Some(framing);
    head.keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };
    head.expect_continue = expect_continue && framing.has_body();
    Ok(Some(n))
}

fn mark_connection_listed(block: &mut HeaderBlock, headers: &[httparse::Header<'_>]) {
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim_ows(token);
                if !token.is_empty() {
                    block.mark_hop(token);
                }
            }
        }
    }
}

/// Parses and validates an upstream response head at the start of `buf`.
///
/// `request_is_head` matters for framing: answers to HEAD, 1xx, 204 and
/// 304 never have a body. A response with neither length nor chunked is
/// delimited by close. Framing the gateway cannot trust is a `Reject`,
/// which the caller turns into 502 and an unreusable connection.
pub fn parse_response_head(
    buf: &[u8],
    limits: &HeadLimits,
    request_is_head: bool,
    head: &mut ResponseHead,
) -> Result<Option<usize>, Reject> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let mut heap = Vec::new();
    let slots = header_slots(limits, buf, &mut stack, &mut heap);
    let mut resp = httparse::Response::new(&mut []);
    let status =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, slots);
    let n = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_header_bytes {
                return Err(reject(502, "response head too large"));
            }
            return Ok(None);
        }
        // `HTTP/1.x` (x > 1) from the upstream is read as HTTP/1.1 too.
        Err(httparse::Error::Version) => {
            return match as_http11(buf, 0) {
                Some(patched) => parse_response_head(&patched, limits, request_is_head, head),
                None => Err(httparse_reject(httparse::Error::Version)),
            };
        }
        Err(e) => return Err(httparse_reject(e)),
    };
    if n > limits.max_header_bytes {
        return Err(reject(502, "response head too large"));
    }
    if has_bare_lf(&buf[..n]) {
        return Err(reject(502, "bare LF in response head"));
    }
    let (Some(code), Some(minor)) = (resp.code, resp.version) else {
        return Err(reject(502, "malformed status line"));
    };
    if !(100..=999).contains(&code) {
        return Err(reject(502, "invalid status code"));
    }
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    head.headers.clear();
    head.headers.store(&buf[..n]);
    head.status = code;
    let reason = resp.reason.unwrap_or("");
    let r0 = if reason.is_empty() {
        0
    } else {
        offset(buf, reason.as_bytes())
    };
    head.reason = r0..r0 + reason.len() as u32;
    head.version = Some(version);

    let headers = &*resp.headers;
    let (length, chunked) = framing_fields(headers, version).map_err(|r| Reject {
        status: 502,
        why: r.why,
    })?;
    let mut close = false;
    let mut keep_alive_token = false;
    for h in headers {
        let v0 = offset(buf, h.value);
        let n0 = offset(buf, h.name.as_bytes());
        head.headers
            .push_span(n0..n0 + h.name.len() as u32, v0..v0 + h.value.len() as u32);
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim_ows(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        }
    }
    mark_connection_listed(&mut head.headers, headers);
    head.declared_length = length;
    let bodyless = request_is_head || code < 200 || code == 204 || code == 304;
    let framing = if bodyless {
        BodyFraming::None
    } else if chunked {
        BodyFraming::Chunked
    } else {
        match length {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    };
    head.framing = Some(framing);
    head.keep_alive = framing != BodyFraming::UntilClose
        && match version {
            Version::Http11 => !close,
            Version::Http10 => keep_alive_token && !close,
        };
    Ok(Some(n))
}
