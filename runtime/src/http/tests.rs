//! Byte-string tests of the sans-IO HTTP/1.1 core: every framing rule of
//! RELIABILITY.md "HTTP/1.1 framing", chunked decoding edge cases, and the
//! re-framing done by the serializers.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn limits() -> HeadLimits {
    HeadLimits {
        max_header_bytes: 1024,
        max_headers: 20,
        max_body_bytes: 1000,
    }
}

fn parse(raw: &[u8]) -> Result<(RequestHead, usize), Reject> {
    let mut head = RequestHead::default();
    match parse_request_head(raw, &limits(), &mut head)? {
        Some(n) => Ok((head, n)),
        None => Err(Reject {
            status: 0,
            why: "incomplete",
        }),
    }
}

fn ok(raw: &[u8]) -> RequestHead {
    match parse(raw) {
        Ok((h, _)) => h,
        Err(e) => panic!("{:?} rejected: {e:?}", String::from_utf8_lossy(raw)),
    }
}

fn status(raw: &[u8]) -> u16 {
    match parse(raw) {
        Ok(_) => 200,
        Err(e) => e.status,
    }
}

fn with_headers(lines: &str) -> Vec<u8> {
    format!("POST /x HTTP/1.1\r\nHost: a.test\r\n{lines}\r\n").into_bytes()
}

#[test]
fn simple_get_and_keep_alive_defaults() {
    let (h, n) = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n\r\nrest")
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(n, 45);
    assert_eq!(h.method(), "GET");
    assert_eq!(h.path(), b"/a?b=1");
    assert_eq!(h.path_only(), b"/a");
    assert_eq!(h.host(), b"a.test");
    assert_eq!(h.version(), Version::Http11);
    assert_eq!(h.framing(), BodyFraming::None);
    assert!(h.keep_alive());
    assert_eq!(h.headers().get("x-a"), Some(&b"1"[..]));
    assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive());
    assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").keep_alive());
    assert!(ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
    assert!(ok(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
}

#[test]
fn incomplete_head_asks_for_more() {
    let mut head = RequestHead::default();
    assert_eq!(
        parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n", &limits(), &mut head),
        Ok(None)
    );
    assert_eq!(
        parse_request_head(b"GET / HT", &limits(), &mut head),
        Ok(None)
    );
}

#[test]
fn pipelined_requests_parse_one_after_the_other() {
    let raw = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    let (h1, n) = parse(raw).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(h1.path(), b"/1");
    let (h2, m) = parse(&raw[n..]).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(h2.path(), b"/2");
    assert_eq!(n + m, raw.len());
}

#[test]
fn content_length_and_transfer_encoding_together_is_400() {
    assert_eq!(
        status(&with_headers(
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        )),
        400
    );
    assert_eq!(
        status(&with_headers(
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"
        )),
        400
    );
}

#[test]
fn malformed_content_length_is_400() {
    for v in [
        "+5",
        "-5",
        "0x5",
        "",
        "5 5",
        "5,5",
        "5, 5",
        "5, 6",
        "5a",
        "a",
        "99999999999999999999",
        "18446744073709551616",
        " 5 x",
    ] {
        assert_eq!(
            status(&with_headers(&format!("Content-Length: {v}\r\n"))),
            400,
            "Content-Length: {v:?}"
        );
    }
    assert_eq!(
        status(&with_headers("Content-Length: 5\r\nContent-Length: 6\r\n")),
        400
    );
    let h = ok(&with_headers("Content-Length: 5\r\nContent-Length: 5\r\n"));
    assert_eq!(h.framing(), BodyFraming::Length(5));
    assert_eq!(
        ok(&with_headers("Content-Length: 0\r\n")).framing(),
        BodyFraming::Length(0)
    );
    assert_eq!(
        ok(&with_headers("Content-Length:  007 \r\n")).framing(),
        BodyFraming::Length(7)
    );
}

#[test]
fn declared_body_over_limit_is_413() {
    assert_eq!(status(&with_headers("Content-Length: 1001\r\n")), 413);
    assert_eq!(
        ok(&with_headers("Content-Length: 1000\r\n")).framing(),
        BodyFraming::Length(1000)
    );
}

#[test]
fn transfer_encoding_must_be_exactly_chunked() {
    assert_eq!(
        ok(&with_headers("Transfer-Encoding: chunked\r\n")).framing(),
        BodyFraming::Chunked
    );
    assert_eq!(
        ok(&with_headers("Transfer-Encoding: Chunked\r\n")).framing(),
        BodyFraming::Chunked
    );
    for (v, want) in [
        ("gzip", 501),
        ("gzip, chunked", 501),
        ("chunked, gzip", 501),
        ("identity", 501),
        ("chunked, chunked", 400),
        (",chunked", 400),
        ("chunked,", 400),
        ("chunked,,", 400),
        ("\x0bchunked", 400),
        ("chunked\x0b", 400),
        ("\u{a0}chunked", 400),
        ("chu nked", 400),
        ("\"chunked\"", 400),
        ("", 400),
    ] {
        assert_eq!(
            status(&with_headers(&format!("Transfer-Encoding: {v}\r\n"))),
            want,
            "TE {v:?}"
        );
    }
    assert_eq!(
        status(&with_headers(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
        )),
        400
    );
    assert_eq!(
        status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
}

#[test]
fn request_targets_hold_only_visible_ascii() {
    for raw in [
        &b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /a?q=\xc3\xa4 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a/\xe2\x82\xac HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
    }
    // Percent-encoded, the same characters are fine.
    assert_eq!(
        status(b"GET /caf%C3%A9?q=%E2%82%AC HTTP/1.1\r\nHost: a\r\n\r\n"),
        200
    );
}

#[test]
fn header_syntax_violations_are_400() {
    for raw in [
        &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\0: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX(y: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX y: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
    ] {
        assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn host_rules() {
    assert_eq!(
        status(b"GET / HTTP/1.1\r\n\r\n"),
        400,
        "missing Host on 1.1"
    );
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        400,
        "two Hosts"
    );
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
        400,
        "two Hosts"
    );
    assert_eq!(
        status(b"GET / HTTP/1.0\r\n\r\n"),
        200,
        "Host optional on 1.0"
    );
    for bad in [
        "a b",
        "a/b",
        "a@b",
        "[::1",
        "::1",
        "a.test:abc",
        "a.test:80:80",
        "a\\b",
        "a?b",
        "a#b",
        "a%zzb",
        "a.test:-1",
        "",
        "a:",
        "a:123456",
        "a%20b",
        "admin%2etest",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
        assert_eq!(status(raw.as_bytes()), 400, "Host {bad:?}");
    }
    for good in [
        "a.test",
        "a.test:8080",
        "127.0.0.1",
        "[::1]:443",
        "[::1]",
        "xn--d1acufc.xn--p1ai",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
        assert_eq!(ok(raw.as_bytes()).host(), good.as_bytes());
    }
}

#[test]
fn absolute_form_decides_the_host() {
    let h = ok(b"GET http://b.test:81/x?y=1 HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(h.host(), b"b.test:81");
    assert_eq!(h.path(), b"/x?y=1");
    assert_eq!(
        ok(b"GET HTTP://b.test HTTP/1.1\r\nHost: a\r\n\r\n").path(),
        b"/"
    );
    assert_eq!(
        ok(b"GET https://b.test?q HTTP/1.1\r\nHost: a\r\n\r\n").path(),
        b"/?q"
    );
    assert_eq!(status(b"GET http://a@b/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET ftp://b/x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    // The forwarded Host is the target's authority.
    let out = forward(&h, None);
    assert!(
        out.starts_with("GET /x?y=1 HTTP/1.1\r\nhost: b.test:81\r\n"),
        "{out}"
    );
    assert_eq!(
        out.matches("host:").count() + out.matches("Host:").count(),
        1
    );
}

#[test]
fn request_target_forms() {
    assert_eq!(ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").path(), b"*");
    assert_eq!(status(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET a.test:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(
        status(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
        501
    );
    assert_eq!(status(b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET  /a HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET /a HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
}

#[test]
fn higher_minor_version_is_served_as_http11() {
    // RFC 9110 §2.5: HTTP/1.2 .. HTTP/1.9 are processed as HTTP/1.1.
    for v in ["1.2", "1.9"] {
        let raw = format!("GET /m HTTP/{v}\r\nHost: a\r\nX: 1\r\n\r\nrest");
        let (h, n) = parse(raw.as_bytes()).unwrap_or_else(|e| panic!("{v}: {e:?}"));
        assert_eq!(n, raw.len() - 4, "{v}");
        assert_eq!(h.version(), Version::Http11, "{v}");
        assert_eq!(h.path(), b"/m");
        assert_eq!(h.host(), b"a");
        assert_eq!(h.headers().get("x"), Some(&b"1"[..]));
        assert!(h.keep_alive());
    }
    // Without Host it is an HTTP/1.1 request without Host.
    assert_eq!(status(b"GET /m HTTP/1.2\r\n\r\n"), 400);
    // Incomplete: read more.
    assert_eq!(status(b"GET /m HTTP/1.2\r\nHost: a\r\n"), 0);
    // Other majors and malformed versions stay refused.
    for (raw, want) in [
        (&b"GET /a HTTP/2.0\r\nHost: a\r\n\r\n"[..], 505),
        (b"GET /a HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /a HTTP/0.9\r\nHost: a\r\n\r\n", 505),
        (b"GET /a HTTP/1.10\r\nHost: a\r\n\r\n", 400),
        (b"GET /a HTTP/01.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /a HTTP/1.x\r\nHost: a\r\n\r\n", 400),
    ] {
        assert_eq!(status(raw), want, "{:?}", String::from_utf8_lossy(raw));
    }
    // An upstream's HTTP/1.2 status line is read as HTTP/1.1 too.
    let r = resp(b"HTTP/1.2 200 OK\r\ncontent-length: 2\r\n\r\nok", false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.status, 200);
    assert!(resp(b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false).is_err());
}

#[test]
fn head_size_limits_are_431() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "a".repeat(1100)
    );
    assert_eq!(status(big.as_bytes()), 431);
    // Even before the head is complete.
    let partial = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "a".repeat(1100));
    assert_eq!(status(partial.as_bytes()), 431);
    let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        status(format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()),
        431
    );
}

#[test]
fn a_request_line_past_the_head_limit_is_414() {
    let long = "a".repeat(1100);
    let whole = format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status(whole.as_bytes()), 414);
    let partial = format!("GET /{long}");
    assert_eq!(status(partial.as_bytes()), 414, "before the line ends");
    // A line that ends within the limit: the fields made the head too large.
    let short_line = format!("GET /{} HTTP/1.1\r\nHost: {long}\r\n\r\n", &long[..900]);
    assert_eq!(status(short_line.as_bytes()), 431);
    // A limit too small for any head: the target did not cause it.
    let limits = HeadLimits {
        max_header_bytes: 10,
        ..limits()
    };
    let mut head = RequestHead::default();
    let r = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &limits, &mut head);
    assert_eq!(r.map_err(|e| e.status), Err(431));
}

#[test]
fn expect_continue() {
    let h = ok(&with_headers(
        "Content-Length: 5\r\nExpect: 100-continue\r\n",
    ));
    assert!(h.expect_continue());
    assert!(
        !ok(&with_headers("Expect: 100-continue\r\n")).expect_continue(),
        "no body, nothing to wait for"
    );
    assert_eq!(
        status(&with_headers("Content-Length: 5\r\nExpect: something\r\n")),
        417
    );
    // The list forms of RFC 9110 §5.6.1.2 ask for 100-continue alone.
    for list in [
        "Expect: 100-continue,\r\n",
        "Expect: , 100-Continue\r\n",
        "Expect: 100-continue, 100-continue\r\n",
        "Expect: 100-continue\r\nExpect:\r\n",
    ] {
        let h = ok(&with_headers(&format!("Content-Length: 5\r\n{list}")));
        assert!(h.expect_continue(), "{list:?}");
    }
    let empty = ok(&with_headers("Content-Length: 5\r\nExpect:\r\n"));
    assert!(!empty.expect_continue(), "an empty list expects nothing");
    assert_eq!(
        status(&with_headers(
            "Content-Length: 5\r\nExpect: 100-continue, x\r\n"
        )),
        417
    );
}

fn forward(h: &RequestHead, strip: Option<&str>) -> String {
    let mut out = Vec::new();
    let info = ForwardInfo {
        client_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        proto: "http",
        request_id: b"rid-1",
        strip_prefix: strip,
        fallback_host: b"10.0.0.1:80",
        received: "1.1",
    };
    write_forward_request(h, &info, h.framing(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[test]
fn forwarded_head_is_reframed_and_hop_by_hop_free() {
    let raw = b"POST /api/x HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n\
TE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\nProxy-Authorization: x\r\nProxy-Connection: y\r\n\
X-Secret: s\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nVia: 1.0 other\r\nX-Request-Id: bad id\r\n\
Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nX-Keep: k\r\n\r\n";
    let h = ok(raw);
    let out = forward(&h, Some("/api"));
    let lower = out.to_ascii_lowercase();
    for gone in [
        "connection:",
        "keep-alive:",
        "\r\nte:",
        "trailer:",
        "upgrade:",
        "proxy-",
        "x-secret",
        "expect:",
        "bad id",
        "https",
    ] {
        assert!(!lower.contains(gone), "{gone} forwarded:\n{out}");
    }
    assert!(
        out.starts_with("POST /x HTTP/1.1\r\nhost: a.test\r\n"),
        "{out}"
    );
    assert!(out.contains("x-forwarded-for: 1.1.1.1, 10.0.0.9\r\n"));
    assert!(out.contains("x-forwarded-proto: http\r\n"));
    assert!(out.contains("Via: 1.0 other\r\n") && out.contains("via: 1.1 blitz\r\n"));
    assert!(out.contains("x-request-id: rid-1\r\n"));
    assert!(out.contains("X-Keep: k\r\n"));
    assert_eq!(lower.matches("transfer-encoding: chunked").count(), 1);
    assert!(!lower.contains("content-length"));
    assert!(out.ends_with("\r\n\r\n"));
    assert!(
        !out.replace("\r\n", "").contains('\n'),
        "only CRLF line endings"
    );
    // What we send parses back to the same request under the same rules.
    let back = ok(out.as_bytes());
    assert_eq!(
        (back.method(), back.path(), back.host(), back.framing()),
        ("POST", &b"/x"[..], &b"a.test"[..], BodyFraming::Chunked)
    );
}

#[test]
fn header_edits_cannot_inject() {
    let mut h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\n");
    h.headers_mut().set("x-a", b"3");
    h.headers_mut().append("x-b", b"4");
    h.headers_mut().append("x-c", b"evil\r\nInjected: 1");
    h.headers_mut().append("bad name", b"v");
    h.headers_mut().remove("x-missing");
    assert_eq!(h.headers().get_all("x-a").collect::<Vec<_>>(), [&b"3"[..]]);
    let out = forward(&h, None);
    assert!(out.contains("x-a: 3\r\nx-b: 4\r\n"), "{out}");
    assert!(
        !out.contains("Injected") && !out.contains("bad name"),
        "{out}"
    );
}

#[test]
fn host_header_steps_reach_the_upstream() {
    let mut h = ok(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    h.headers_mut().set("host", b"internal.svc:8080");
    let out = forward(&h, None);
    assert!(
        out.starts_with("GET / HTTP/1.1\r\nhost: internal.svc:8080\r\n"),
        "{out}"
    );
    assert_eq!(
        out.to_ascii_lowercase().matches("host:").count(),
        1,
        "{out}"
    );
    assert_eq!(h.host(), b"a.test", "routing host unchanged");
    // Absolute-form: the target's authority replaces the Host field.
    let h = ok(b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(
        h.headers().get_all("host").collect::<Vec<_>>(),
        [&b"b.test"[..]]
    );
    // Removed: the upstream server's authority is sent instead.
    let mut h = ok(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    h.headers_mut().remove("host");
    assert!(forward(&h, None).contains("\r\nhost: 10.0.0.1:80\r\n"));
}

#[test]
fn strip_prefix_on_segment_boundary() {
    let cases: [(&str, Option<&str>, &str); 7] = [
        ("/api/x", Some("/api"), "/x"),
        ("/api", Some("/api"), "/"),
        ("/api?q", Some("/api/"), "/?q"),
        ("/apix", Some("/api"), "/apix"),
        ("/other", Some("/api"), "/other"),
        ("/x", None, "/x"),
        ("/x", Some("/"), "/x"),
    ];
    for (path, prefix, want) in cases {
        let (lead, rest) = strip_path_prefix(path.as_bytes(), prefix);
        assert_eq!(
            [lead, rest].concat(),
            want.as_bytes(),
            "{path} - {prefix:?}"
        );
    }
}

fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() && !d.is_done() {
        let end = (pos + step).min(input.len());
        let r = d.decode(&input[pos..end])?;
        out.extend_from_slice(&input[pos..end][r.data.clone()]);
        assert!(r.consumed > 0 || d.is_done());
        pos += r.consumed;
    }
    Ok((out, pos, d.is_done()))
}

#[test]
fn chunked_decoding_at_every_split() {
    let body = b"5\r\nhello\r\n6;name=val;q=\"a\\\"b\" ;x\r\n world\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\nNEXT";
    for step in 1..body.len() {
        let (data, used, done) =
            decode_all(body, step).unwrap_or_else(|e| panic!("step {step}: {e:?}"));
        assert_eq!(data, b"hello world0123456789");
        assert!(done);
        assert_eq!(
            &body[used..],
            b"NEXT",
            "trailers consumed and dropped, nothing past the end"
        );
    }
    let (data, _, done) = decode_all(b"0\r\n\r\n", 3).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(data.is_empty() && done);
    let (_, _, done) = decode_all(b"5\r\nhel", 64).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!done, "incomplete body is not done");
    let (data, _, _) = decode_all(b"00000000000000005\r\nhello\r\n0\r\n\r\n", 64)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(data, b"hello", "leading zeros are fine within 16 digits");
}

#[test]
fn valid_trailer_fields_are_taken() {
    let good: &[&[u8]] = &[
        b"0\r\nX-T: 1\r\n\r\n",
        b"0\r\nX-T:\r\n\r\n",
        b"0\r\nX-T:\tv\t\r\n\r\n",
        b"0\r\nX-T: \x80\xff\r\n\r\n",
        b"0\r\nx_t!#$%&'*+.^`|~: 1\r\nY: a:b c\r\n\r\n",
    ];
    for raw in good {
        for step in [1, 3, 64] {
            let (data, _, done) = decode_all(raw, step).unwrap_or_else(|e| panic!("{e:?} {raw:?}"));
            assert!(data.is_empty() && done, "{raw:?} (step {step})");
        }
    }
}

#[test]
fn invalid_chunk_framing_is_an_error() {
    let bad: &[&[u8]] = &[
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n10000000000000000\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\nffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n5\nworld\r\n0\r\n\r\n",
        b"5\r\nhello\r\n5\rworld\r\n0\r\n\r\n",
        b"5\r\nhello\nX5\r\nworld\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\n\r\n",
        b"5\r\nhelloXY5\r\nworld\r\n0\r\n\r\n",
        b"3\r\nhello\r\n0\r\n\r\n",
        b"5 junk\r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"5;\r\nhello\r\n0\r\n\r\n",
        b"5\x00\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
        b"5;a=b c\r\nhello\r\n0\r\n\r\n",
        b"5;a\nhello\r\n0\r\n\r\n",
        b"0\r\nX: 1\n\r\n",
        b"0\r\n X: 1\r\n\r\n",
        b"0\r\n: 1\r\n\r\n",
        b"0\r\n\r\r",
        // Trailer field lines are as strict as the head's (RFC 9112 §5.1).
        b"0\r\nX : 1\r\n\r\n",
        b"0\r\nX\t: 1\r\n\r\n",
        b"0\r\nno-colon\r\n\r\n",
        b"0\r\nX(y): 1\r\n\r\n",
        b"0\r\nGET / HTTP/1.1\r\n\r\n",
        b"0\r\nX: a\x00b\r\n\r\n",
        b"0\r\nX: a\x7fb\r\n\r\n",
        b"0\r\nX: a\x0bb\r\n\r\n",
        b"0\r\nX: a\rb\r\n\r\n",
    ];
    for raw in bad {
        for step in [1, 3, 64] {
            assert!(
                decode_all(raw, step).is_err(),
                "accepted {:?} (step {step})",
                String::from_utf8_lossy(raw)
            );
        }
    }
    // Bounded extension and trailer sections.
    let long_ext = [
        &b"5;x="[..],
        &vec![b'a'; MAX_CHUNK_EXT + 1],
        b"\r\nhello\r\n0\r\n\r\n",
    ]
    .concat();
    assert!(decode_all(&long_ext, 4096).is_err());
    let long_trailer = [&b"0\r\nX: "[..], &vec![b'a'; MAX_TRAILERS + 1], b"\r\n\r\n"].concat();
    assert!(decode_all(&long_trailer, 4096).is_err());
}

#[test]
fn number_and_address_formatting() {
    for n in [0u64, 7, 10, 99, 1234567890, u64::MAX] {
        let mut out = Vec::new();
        write::put_u64(&mut out, n);
        assert_eq!(out, n.to_string().as_bytes());
    }
    let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut out = Vec::new();
    let v6: IpAddr = "2001:db8::1"
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let info = ForwardInfo {
        client_ip: v6,
        proto: "https",
        request_id: b"r",
        strip_prefix: None,
        fallback_host: b"",
        received: "1.1",
    };
    write_forward_request(&h, &info, BodyFraming::None, &mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("x-forwarded-for: 2001:db8::1\r\nx-forwarded-proto: https\r\n"),
        "{out}"
    );
}

#[test]
fn chunk_head_encoding() {
    let mut out = Vec::new();
    put_chunk_head(&mut out, 0x1a2b);
    put_chunk_head(&mut out, 1);
    assert_eq!(out, b"1a2b\r\n1\r\n");
}

#[test]
fn body_reader_length_stops_at_length() {
    let mut r = BodyReader::new(BodyFraming::Length(3));
    let d = r.decode(b"abcdef").unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((d.consumed, d.data), (3, 0..3));
    assert!(r.is_done());
    assert!(BodyReader::new(BodyFraming::None).is_done());
    assert!(!BodyReader::new(BodyFraming::UntilClose).is_done());
}

fn resp(raw: &[u8], head_req: bool) -> Result<ResponseHead, Reject> {
    let mut h = ResponseHead::default();
    match parse_response_head(raw, &limits(), head_req, &mut h)? {
        Some(_) => Ok(h),
        None => Err(Reject {
            status: 0,
            why: "incomplete",
        }),
    }
}

#[test]
fn response_framing() {
    let get = |raw: &[u8]| resp(raw, false).unwrap_or_else(|e| panic!("{e:?}"));
    let r = get(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(
        (r.status(), r.framing(), r.keep_alive()),
        (200, BodyFraming::Length(5), true)
    );
    assert_eq!(
        get(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing(),
        BodyFraming::Chunked
    );
    let r = get(b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(
        (r.framing(), r.keep_alive()),
        (BodyFraming::UntilClose, false)
    );
    assert_eq!(
        get(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").framing(),
        BodyFraming::None
    );
    assert_eq!(
        get(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n").framing(),
        BodyFraming::None
    );
    assert_eq!(
        get(b"HTTP/1.1 100 Continue\r\n\r\n").framing(),
        BodyFraming::None
    );
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.framing(), BodyFraming::None, "answer to HEAD");
    assert!(!get(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").keep_alive());
    assert!(
        get(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n").keep_alive()
    );
    assert!(
        !get(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n").keep_alive()
    );
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"garbage\r\n\r\n",
    ] {
        assert!(
            resp(bad, false).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn response_head_reframing() {
    let r = resp(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 1\r\nX-E: 2\r\nProxy-Authenticate: Basic\r\nProxy-Status: origin; error=x\r\n\r\n",
        false,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let mut out = Vec::new();
    write_response_head(&r, BodyFraming::Chunked, Version::Http11, false, &mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 200 OK\r\nX-E: 2\r\nProxy-Status: origin; error=x\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    // Answer to HEAD keeps the declared length, carries no body.
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", true)
        .unwrap_or_else(|e| panic!("{e:?}"));
    out.clear();
    write_response_head(&r, BodyFraming::None, Version::Http10, true, &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\nconnection: close\r\n\r\n"
    );
    let r = resp(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        false,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    out.clear();
    write_response_head(&r, BodyFraming::None, Version::Http11, false, &mut out);
    assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
}

/// `out` without its one `date` line, which must be an IMF-fixdate.
fn undated(out: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(out);
    let dates: Vec<&str> = text
        .split("\r\n")
        .filter(|l| l.starts_with("date: "))
        .collect();
    assert_eq!(dates.len(), 1, "{text}");
    assert!(
        dates[0].len() == 6 + 29 && dates[0].ends_with(" GMT"),
        "{text}"
    );
    text.replacen(&format!("{}\r\n", dates[0]), "", 1)
        .into_bytes()
}

#[test]
fn local_responses() {
    let mut out = Vec::new();
    write_local_response(
        &LocalResponse {
            status: 301,
            fields: LocalFields::Own {
                content_type: None,
                location: Some(b"https://example.com/"),
            },
            body: b"",
            close: false,
            head_only: false,
            keep_alive_10: false,
        },
        &mut out,
    );
    assert_eq!(undated(&out), b"HTTP/1.1 301 Moved Permanently\r\nlocation: https://example.com/\r\ncontent-length: 0\r\n\r\n");
    out.clear();
    write_local_response(
        &LocalResponse {
            status: 200,
            fields: LocalFields::Own {
                content_type: Some("text/plain"),
                location: None,
            },
            body: b"ok\n",
            close: true,
            head_only: true,
            keep_alive_10: false,
        },
        &mut out,
    );
    assert_eq!(undated(&out), b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\n");
}

#[test]
fn local_204_and_304_have_neither_body_nor_length() {
    for status in [204, 304] {
        let mut out = Vec::new();
        write_local_response(
            &LocalResponse {
                status,
                fields: LocalFields::Own {
                    content_type: None,
                    location: None,
                },
                body: b"xyz",
                close: false,
                head_only: false,
                keep_alive_10: false,
            },
            &mut out,
        );
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.ends_with("\r\n\r\n"),
            "no body after the head: {text:?}"
        );
        assert!(!text.contains("content-length"), "{text:?}");
    }
}

#[test]
fn paths_are_normalised_for_routing_and_forwarding() {
    let h = ok(b"GET /public/%2e%2e//admin/./x?q=%2e%2e HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.path_only(), b"/admin/x");
    assert_eq!(h.query(), b"q=%2e%2e");
    assert_eq!(
        h.path(),
        b"/public/%2e%2e//admin/./x?q=%2e%2e",
        "raw target kept"
    );
    let out = forward(&h, None);
    assert!(
        out.starts_with("GET /admin/x?q=%2e%2e HTTP/1.1\r\n"),
        "{out}"
    );
    assert_eq!(
        ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").path_only(),
        b"*"
    );
    let out = forward(&ok(b"GET /x HTTP/1.0\r\n\r\n"), None);
    assert!(
        out.starts_with("GET /x HTTP/1.1\r\nhost: 10.0.0.1:80\r\n"),
        "{out}"
    );
    assert_eq!(
        ok(b"GET http://b/../x HTTP/1.1\r\nHost: a\r\n\r\n").path_only(),
        b"/x"
    );
    assert_eq!(status(b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET /a%2 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

/// Deterministic mutation fuzzing: no input panics the parser or the
/// chunked decoder, and an accepted request re-serialized by the proxy
/// parses back to the same request (method, path, host, framing).
#[test]
fn mutated_inputs_never_panic_and_accepted_requests_round_trip() {
    let seeds: &[&[u8]] = &[
        b"GET /a/b?c=d HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\nConnection: keep-alive\r\n\r\n",
        b"POST /up HTTP/1.1\r\nHost: a.test:8080\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        b"POST http://b.test/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"OPTIONS * HTTP/1.0\r\nConnection: keep-alive, X-B\r\nX-B: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close, X-C\r\n\r\nhello",
        b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    ];
    let alphabet = b" \t\r\n:;,/?%#0123456789abcdefABCDEF-\x00\x0b\x7f\x80\xff\"chunkedHostContent-LengthTransfer-Encoding";
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let limits = HeadLimits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 1 << 20,
    };
    let mut head = RequestHead::default();
    let mut accepted = 0;
    for round in 0..20_000 {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..(1 + rand() % 4) {
            let pos = (rand() as usize) % (input.len() + 1);
            let byte = alphabet[(rand() as usize) % alphabet.len()];
            match rand() % 3 {
                0 if pos < input.len() => input[pos] = byte,
                1 => input.insert(pos, byte),
                _ if pos < input.len() => {
                    input.remove(pos);
                }
                _ => {}
            }
        }
        fuzzing::chunked(&input);
        fuzzing::response_head(&input);
        fuzzing::request_roundtrip(&input);
        if let Ok(Some(_)) = parse_request_head(&input, &limits, &mut head) {
            accepted += 1;
        }
    }
    assert!(
        accepted > 1000,
        "mutations too destructive: {accepted} accepted"
    );
}
