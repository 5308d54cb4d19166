"""An independent black-box pass over RELIABILITY.md: "HTTP/1.1 framing
(RFC 9112) - request smuggling", "Resource limits and slow clients" and the
upstream-fault bullet of "Upgrades and faults".

Written from the RFCs (9112 sections 2-7, 9110) against the real
hello_gateway with raw sockets, probing the variants test_framing.py,
test_limits.py, test_upstream_faults.py and test_proxy_basics.py leave out.
Each test checks both sides: what the client got and the exact bytes the
recording origin received.

Two gateways serve the whole module: the session's default one (`gateway`)
and `tight`, with small limits and short timeouts (1 KiB heads, 10 fields,
1 KiB bodies, 2 s header, 1 s body and 2 s response timeouts).
"""

from __future__ import annotations

import socket
import time

import pytest

from support.asserts import assert_clean_forward, assert_origin_saw_nothing, assert_rejected
from support.client import RawConn, exchange, request
from support.gateway import Gateway, GatewayError

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"
TIGHT = dict(
    max_header_bytes=1024,
    max_headers=10,
    max_body_bytes=1024,
    header_timeout=2,
    body_timeout=1,
    response_timeout=2,
    connect_timeout=1,
)


@pytest.fixture(scope="module")
def _tight_gateway(hello_bin, origin_server, gateway_logs):
    g = Gateway(hello_bin, origin_server.addr, log_dir=gateway_logs, **TIGHT)
    try:
        g.start()
    except GatewayError as e:
        pytest.fail(str(e), pytrace=False)
    yield g
    g.kill()


@pytest.fixture
def tight(_tight_gateway, origin):
    g = _tight_gateway
    yield g
    if not g.alive():
        pytest.fail(f"the tight gateway died during this test: {g.crashed() or g.tail()}", pytrace=False)


def head(method="POST", target="/echo", headers=(), version="HTTP/1.1", host: bytes | None = b"Host: a.test") -> bytes:
    lines = [f"{method} {target} {version}".encode("latin-1")]
    if host is not None:
        lines.append(host)
    lines += [h if isinstance(h, bytes) else h.encode("latin-1") for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def finals(ex):
    return [r for r in ex.responses if r.status >= 200]


def no_smuggled(origin) -> None:
    raw = origin.raw_since_reset()
    assert b"smuggled" not in raw, f"bytes after a rejected request reached the origin: {raw[:600]!r}"


def wait_upstream_closed(origin, req, timeout=5.0) -> bool:
    conn = origin.conn(req.conn_id)
    return origin.wait_for(lambda: conn.closed or conn.peer_closed, timeout)


def forwarded_or_rejected(gw, origin, ex, body: bytes, what: str) -> str:
    """Either one 400/501 and close with nothing forwarded, or the request reached the
    origin re-framed with exactly `body`. Returns which."""
    fs = finals(ex)
    assert fs, f"{what}: no response (closed={ex.closed})"
    if fs[0].status in (400, 501):
        assert_rejected(ex, (400, 501), what)
        assert_origin_saw_nothing(gw.port, origin, what)
        return "rejected"
    assert fs[0].status == 200 and fs[0].body == body, f"{what}: {ex.responses}"
    reqs = origin.wait_requests(1, complete=True)
    assert reqs, what
    assert_clean_forward(reqs[0], body)
    return "forwarded"


# ================================================================ Content-Length
CL_SAME_LENGTH = {
    # OWS around the value is not part of it (RFC 9110 5.5): SP and HTAB, either side
    "tabs-around": b"Content-Length:\t5\t",
    "spaces-around": b"Content-Length:   5   ",
    "no-space": b"Content-Length:5",
    "lower-case-name": b"content-length: 5",
    "upper-case-name": b"CONTENT-LENGTH: 5",
}


@pytest.mark.parametrize("name", list(CL_SAME_LENGTH))
def test_content_length_forms_forwarded_as_exactly_that_length(gateway, origin, name):
    data = head(headers=[CL_SAME_LENGTH[name], b"Connection: close"]) + b"hello"
    ex = exchange(gateway.port, data)
    assert ex.statuses == [200] and ex.responses[0].body == b"hello", f"{name}: {ex.responses}"
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req, b"hello")
    assert req.header("content-length") == ["5"], req


@pytest.mark.parametrize(
    "value",
    ["0000000000000000000000005", "00000000000000000005", "0" * 200 + "5"],
    ids=["25-digits", "20-digits", "201-digits"],
)
def test_content_length_with_many_leading_zeros(gateway, origin, value):
    """1*DIGIT with leading zeros is 5: a bounded parser may refuse a very long digit
    string (400), but never reads it as another length."""
    data = head(headers=[f"Content-Length: {value}", "Connection: close"]) + b"hello" + SMUGGLED
    forwarded_or_rejected(gateway, origin, exchange(gateway.port, data), b"hello", value[:30])
    no_smuggled(origin)


BAD_CL = {
    "list-same-nospace": [b"Content-Length: 5,5"],
    "list-tab": [b"Content-Length: 5,\t5"],
    "plus-with-space": [b"Content-Length: + 5"],
    "vtab-after": [b"Content-Length: 5\x0b"],
    "nbsp-after": [b"Content-Length: 5\xa0"],
    "second-empty": [b"Content-Length: 5", b"Content-Length: "],
    "second-differs-by-zero-length": [b"Content-Length: 5", b"Content-Length: 0"],
    "u64-max": [b"Content-Length: 18446744073709551615"],
    "long-digits": [b"Content-Length: " + b"9" * 300],
    "obs-fold-continuation": [b"Content-Length: 5", b" 6"],
}


@pytest.mark.parametrize("name", list(BAD_CL))
def test_bad_content_length_variants_rejected(gateway, origin, name):
    data = head(headers=BAD_CL[name]) + b"hello" + SMUGGLED
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400, 413), name)
    assert_origin_saw_nothing(gateway.port, origin, name)


# ================================================================ Transfer-Encoding
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    "te",
    [b"Transfer-Encoding: chunked ", b"Transfer-Encoding:\tchunked\t", b"Transfer-Encoding: CHUNKED", b"transfer-encoding: cHuNkEd"],
    ids=["trailing-space", "tabs", "upper", "mixed-case"],
)
def test_chunked_spellings_decoded_and_reframed(gateway, origin, te):
    """OWS around the coding and any case of `chunked` (RFC 9112 7: case-insensitive):
    decoded, and forwarded with the gateway's own `transfer-encoding: chunked`."""
    ex = exchange(gateway.port, head(headers=[te, b"Connection: close"]) + CHUNKED_HELLO)
    assert ex.statuses == [200] and ex.responses[0].body == b"hello", ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req, b"hello")
    assert b"transfer-encoding: chunked\r\n" in req.head_raw, req


BAD_TE = {
    "split-gzip-then-chunked": [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"],
    "split-chunked-then-gzip": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"],
    "split-chunked-then-empty": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: "],
    "split-chunked-then-identity": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"],
    "chunked-with-parameter": [b"Transfer-Encoding: chunked;q=1"],
    "chunked-space-comma-space": [b"Transfer-Encoding: chunked , "],
    "obs-fold-continuation": [b"Transfer-Encoding: gzip,", b" chunked"],
    "tab-only-element": [b"Transfer-Encoding: \t,chunked"],
}


@pytest.mark.parametrize("name", list(BAD_TE))
def test_bad_transfer_encoding_variants_rejected(gateway, origin, name):
    data = head(headers=BAD_TE[name]) + CHUNKED_HELLO + SMUGGLED
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400, 501), name)
    assert_origin_saw_nothing(gateway.port, origin, name)


@pytest.mark.parametrize(
    "lines",
    [
        [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
        [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked"],
    ],
    ids=["te-cl", "cl-te", "te-only"],
)
def test_transfer_encoding_on_http10_rejected(gateway, origin, lines):
    data = head(headers=lines, version="HTTP/1.0") + CHUNKED_HELLO + SMUGGLED
    assert_rejected(exchange(gateway.port, data), (400,))
    assert_origin_saw_nothing(gateway.port, origin)


# ================================================================ chunk framing
GOOD_CHUNKS = {
    "ext-token": (b"5;name=value\r\nhello\r\n0\r\n\r\n", b"hello"),
    "ext-quoted-with-escapes": (b'5;a="x;y\\"z";b=c\r\nhello\r\n0;last="1"\r\n\r\n', b"hello"),
    "ext-bws": (b"5 ; a = b\r\nhello\r\n0\r\n\r\n", b"hello"),
    "ext-name-only": (b"5;flag\r\nhello\r\n0\r\n\r\n", b"hello"),
    "size-leading-zeros": (b"00000005\r\nhello\r\n000\r\n\r\n", b"hello"),
    "size-upper-hex": (b"A\r\n0123456789\r\nF\r\n0123456789abcde\r\n0\r\n\r\n", b"01234567890123456789abcde"),
    "size-mixed-hex": (b"1a\r\n" + b"m" * 26 + b"\r\n0\r\n\r\n", b"m" * 26),
    "one-byte-chunks": (b"".join(b"1\r\n%c\r\n" % c for c in b"hello") + b"0\r\n\r\n", b"hello"),
}


@pytest.mark.parametrize("name", list(GOOD_CHUNKS))
def test_valid_chunk_framing_decoded(gateway, origin, name):
    """Legal chunk lines (extensions, BWS, leading zeros, any hex case) decode to the
    payload, which is forwarded re-chunked (extensions are not forwarded)."""
    body, payload = GOOD_CHUNKS[name]
    ex = exchange(gateway.port, head(headers=[b"Transfer-Encoding: chunked", b"Connection: close"]) + body)
    assert ex.statuses == [200] and ex.responses[0].body == payload, f"{name}: {ex.responses}"
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req, payload)
    raw = origin.raw_since_reset()
    assert b";" not in raw[len(req.head_raw) :], f"{name}: chunk extension forwarded: {raw!r}"


BAD_CHUNKS = {
    "ext-overlong": b"5;a=" + b"x" * 8000 + b"\r\nhello\r\n0\r\n\r\n",
    "size-too-many-leading-zeros": b"0" * 40 + b"5\r\nhello\r\n0\r\n\r\n",
    "ws-before-size": b" 5\r\nhello\r\n0\r\n\r\n",
    "ws-after-size-no-ext": b"5 \r\nhello\r\n0\r\n\r\n",
    "ext-unterminated-quote": b'5;a="x\r\nhello\r\n0\r\n\r\n',
    "ext-ctl-in-value": b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
    "ext-value-empty": b"5;a=\r\nhello\r\n0\r\n\r\n",
    "size-line-lf-only-on-last": b"5\r\nhello\r\n0\n\n",
    "data-then-lf": b"5\r\nhello\n0\r\n\r\n",
    "data-then-cr-only": b"5\r\nhello\r0\r\n\r\n",
    "trailer-obs-fold": b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n",
    "trailer-bare-lf": b"5\r\nhello\r\n0\r\nX-T: a\n\r\n",
    "trailer-no-colon-nul": b"5\r\nhello\r\n0\r\nX\x00T\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_CHUNKS))
def test_invalid_chunk_variants_abort_the_upstream_request(gateway, origin, name):
    """Bad framing anywhere in a chunked body (size line, data terminator, trailers):
    400 or a closed connection, the origin never sees the request completed, and the
    upstream connection that carried it is closed."""
    data = head(target="/chunk-abort", headers=[b"Transfer-Encoding: chunked"]) + BAD_CHUNKS[name] + SMUGGLED
    ex = exchange(gateway.port, data)
    fs = finals(ex)
    if fs:
        assert_rejected(ex, (400, 413), name)
    else:
        assert ex.closed, f"{name}: neither a response nor a close"
    no_smuggled(origin)
    for r in [q for q in origin.requests if q.path == "/chunk-abort"]:
        assert not r.complete, f"{name}: origin got a complete request {r!r}"
        assert wait_upstream_closed(origin, r), f"{name}: upstream connection of the aborted request left open"


def test_request_trailers_never_reach_the_upstream(gateway, origin):
    """Trailer fields could smuggle Host, framing or auth headers the gateway never
    checked: they are dropped; the origin gets an empty trailer section."""
    trailers = b"Host: evil.test\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nX-Trailer-Secret: 1\r\n"
    data = head(headers=[b"Transfer-Encoding: chunked", b"Trailer: X-Trailer-Secret", b"Connection: close"])
    ex = exchange(gateway.port, data + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n")
    assert ex.statuses == [200] and ex.responses[0].body == b"hello", ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req, b"hello")
    raw = origin.raw_since_reset()
    assert raw.endswith(b"0\r\n\r\n"), raw[-200:]
    for leak in (b"evil", b"X-Trailer-Secret", b"Content-Length: 99"):
        assert leak.lower() not in raw.lower(), f"trailer {leak!r} forwarded: {raw!r}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,tail",
    [
        ("last-chunk-without-final-crlf", b"5\r\nhello\r\n0\r\n"),
        ("last-chunk-inside-trailers", b"5\r\nhello\r\n0\r\nX-T: 1\r\n"),
        ("content-length-short", None),
    ],
)
def test_unfinished_body_is_408_and_the_upstream_request_aborted(tight, origin, name, tail):
    """A body that stops short of its end (last chunk without the final CRLF, a
    declared length not reached): after body-timeout, 408 or a close; the origin
    never sees it completed and its connection is closed."""
    if tail is None:
        data = head(target="/unfinished", headers=[b"Content-Length: 10"]) + b"hello"
    else:
        data = head(target="/unfinished", headers=[b"Transfer-Encoding: chunked"]) + tail
    ex = exchange(tight.port, data, quiet=6, timeout=10)
    fs = finals(ex)
    assert not fs or fs[0].status == 408, f"{name}: {ex.responses}"
    assert ex.closed, f"{name}: connection still open after body-timeout"
    for r in [q for q in origin.requests if q.path == "/unfinished"]:
        assert not r.complete, f"{name}: {r!r}"
        assert wait_upstream_closed(origin, r), f"{name}: upstream request not aborted"


# ================================================================ header syntax
BAD_FIELDS = {
    "del-in-value": b"X-A: a\x7fb",
    "ctl-01-in-value": b"X-A: a\x01b",
    "esc-in-value": b"X-A: a\x1bb",
    "bare-cr-at-end-of-value": b"X-A: ab\r",
    "name-trailing-space-host": b"Host : b.test",
    "name-leading-space": b" X-A: b",
    "name-with-at": b"X@A: b",
    "name-with-equals": b"X=A: b",
    "name-del": b"X\x7fA: b",
    "name-high-bit": b"X\xffA: b",
    "colon-only": b":",
}


@pytest.mark.parametrize("name", list(BAD_FIELDS))
def test_bad_field_bytes_rejected(gateway, origin, name):
    data = head("GET", "/x", [BAD_FIELDS[name]]) + SMUGGLED
    assert_rejected(exchange(gateway.port, data), (400,), name)
    assert_origin_saw_nothing(gateway.port, origin, name)


@pytest.mark.parametrize(
    "value",
    [b"caf\xe9 \xff\x80", b"a\tb", b"\xc3\xa4\xc3\xb6", b"a  b", b"!#$%&'*+-.^_`|~\"(),/:;<=>?@[\\]{}"],
    ids=["obs-text", "inner-tab", "utf8", "inner-spaces", "all-vchar-punct"],
)
def test_field_values_with_obs_text_and_inner_whitespace_forwarded_byte_exact(gateway, origin, value):
    """field-vchar includes obs-text (0x80-0xFF), and SP/HTAB may appear inside a
    value (RFC 9110 5.5): allowed, and forwarded as the same bytes."""
    ex = exchange(gateway.port, head("GET", "/v", [b"X-V: " + value, b"Connection: close"]))
    assert ex.statuses == [200], ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert [v for k, v in req.headers if k.lower() == b"x-v"] == [value], req


def test_long_single_header_within_limit_forwarded(gateway, origin):
    value = b"L" * 15000
    ex = exchange(gateway.port, head("GET", "/long", [b"X-Long: " + value, b"Connection: close"]))
    assert ex.statuses == [200], ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert [v for k, v in req.headers if k.lower() == b"x-long"] == [value]


# ================================================================ Host and targets
@pytest.mark.parametrize(
    "host",
    [b"", b"u:p@a.test", b"@a.test", b"a.test:", b"a.test:8o", b"[::1]x", b"[]", b"[::1]:", b"a..test:80:", b"a\tb"],
    ids=["empty", "userinfo", "empty-userinfo", "empty-port", "letter-in-port", "junk-after-ipv6", "empty-ipv6", "ipv6-empty-port", "two-colons", "inner-tab"],
)
def test_invalid_host_values_rejected(gateway, origin, host):
    ex = exchange(gateway.port, head("GET", "/x", host=b"Host: " + host) + SMUGGLED)
    assert_rejected(ex, (400,), repr(host))
    assert_origin_saw_nothing(gateway.port, origin, repr(host))


@pytest.mark.parametrize("host", ["[::1]", "[2001:db8::1]:8080", "xn--bcher-kva.test", "a-b_c.test:65535", "1.2.3.4:1"])
def test_valid_host_values_forwarded_once(gateway, origin, host):
    ex = exchange(gateway.port, head("GET", "/x", [b"Connection: close"], host=f"Host: {host}".encode()))
    assert ex.statuses == [200], ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.header("host") == [host], req


@pytest.mark.parametrize(
    "target,authority,path",
    [
        ("https://abs.test/p?q=1", "abs.test", "/p?q=1"),
        ("HTTP://Abs.Test:81/p", "Abs.Test:81", "/p"),
        ("http://[::1]:8080/p", "[::1]:8080", "/p"),
        ("http://abs.test?x=1", "abs.test", "/?x=1"),
    ],
)
def test_absolute_form_authority_replaces_host(gateway, origin, target, authority, path):
    """The absolute-form authority wins over a different Host header; the upstream
    gets exactly one Host, the target's, and an origin-form target."""
    ex = exchange(gateway.port, head("GET", target, [b"Connection: close"], host=b"Host: other.test"))
    assert ex.statuses == [200], ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.header("host") == [authority], req
    assert req.target == path, req
    assert b"other.test" not in req.head_raw


@pytest.mark.parametrize(
    "line,host",
    [
        (b"GET http://u@abs.test/p HTTP/1.1", b"Host: abs.test"),
        (b"GET http:///p HTTP/1.1", b"Host: a.test"),
        (b"GET ftp://abs.test/p HTTP/1.1", b"Host: abs.test"),
        (b"GET http://abs.test/p HTTP/1.1", None),
        (b"GET //abs.test/p HTTP/1.1", b"Host: a.test"),
        (b"POST a.test:443 HTTP/1.1", b"Host: a.test"),
        (b"DELETE * HTTP/1.1", b"Host: a.test"),
        (b"GET /x  HTTP/1.1", b"Host: a.test"),
        (b"GET /x HTTP/1.1 ", b"Host: a.test"),
        (b"G@T /x HTTP/1.1", b"Host: a.test"),
        (b"GET /a\x0bb HTTP/1.1", b"Host: a.test"),
    ],
    ids=[
        "abs-userinfo",
        "abs-empty-authority",
        "abs-ftp",
        "abs-without-host-header",
        "scheme-relative",
        "authority-form-post",
        "asterisk-delete",
        "two-spaces-before-version",
        "space-after-version",
        "method-non-token",
        "vtab-in-target",
    ],
)
def test_bad_request_lines_rejected(gateway, origin, line, host):
    data = line + b"\r\n" + (host + b"\r\n" if host else b"") + b"Connection: close\r\n\r\n" + SMUGGLED
    ex = exchange(gateway.port, data)
    fs = finals(ex)
    # "//abs.test/p" is a valid origin-form path ("//" is an empty segment): it may be
    # served, but never as a request for the authority abs.test
    if line.startswith(b"GET //") and fs and fs[0].status == 200:
        req = origin.wait_requests(1, complete=True)[0]
        assert req.header("host") == ["a.test"], req
        return
    assert_rejected(ex, (400,), repr(line))
    assert_origin_saw_nothing(gateway.port, origin, repr(line))


@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/1.9"])
def test_higher_minor_version(gateway, origin, version):
    """RFC 9110 2.5: a higher minor version SHOULD be processed as HTTP/1.1; refusing
    it with 505 (and closing) is allowed too. Never anything in between."""
    ex = exchange(gateway.port, head("GET", "/minor", [b"Connection: close"], version=version) + SMUGGLED)
    fs = finals(ex)
    assert fs, ex
    if fs[0].status == 200:
        req = origin.wait_requests(1, complete=True)[0]
        assert_clean_forward(req)
    else:
        assert_rejected(ex, (400, 505), version)
        assert_origin_saw_nothing(gateway.port, origin, version)


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/1.10", "HTTP/01.1"])
def test_other_major_versions_rejected(gateway, origin, version):
    ex = exchange(gateway.port, head("GET", "/x", version=version) + SMUGGLED)
    assert_rejected(ex, (400, 505), version)
    assert_origin_saw_nothing(gateway.port, origin, version)


def test_methods_are_case_sensitive_and_forwarded_as_sent(gateway, origin):
    """`get` is not GET (RFC 9110 9.1): an unknown method is forwarded as is,
    never folded to upper case; `head` is not a HEAD either."""
    data = head("get", "/lower", host=b"Host: a.test") + head("head", "/lower2", [b"Connection: close"])
    ex = exchange(gateway.port, data)
    assert ex.statuses == [200, 200], ex.responses
    assert [r.body for r in ex.responses] == [b"get /lower\n", b"head /lower2\n"]
    reqs = origin.wait_requests(2, complete=True)
    assert [r.method for r in reqs] == ["get", "head"], reqs


def test_options_asterisk_forwarded_as_asterisk(gateway, origin):
    ex = exchange(gateway.port, head("OPTIONS", "*", [b"Connection: close"]))
    assert ex.statuses == [200], ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert (req.method, req.target) == ("OPTIONS", "*"), req
    assert_clean_forward(req)


# ================================================================ hop-by-hop, exactly
GATEWAY_FIELDS = {"x-forwarded-for", "x-forwarded-proto", "via", "x-request-id"}


def test_hop_by_hop_fields_stripped_exactly(gateway, origin):
    """Everything hop-by-hop goes (Connection and every name it lists, in any case,
    over several Connection lines, Keep-Alive, Proxy-*, TE, Trailer, Upgrade); every
    end-to-end field stays, in order; the gateway adds only its own fields."""
    fields = [
        b"Connection: keep-alive, X-Foo",
        b"connection: x-bar ,  TE",
        b"X-Foo: 1",
        b"x-bar: 2",
        b"Keep-Alive: timeout=5, max=10",
        b"Proxy-Connection: keep-alive",
        b"Proxy-Authorization: Basic Zm9vOmJhcg==",
        b"Proxy-Foo: x",
        b"TE: trailers",
        b"Trailer: X-Checksum",
        b"Upgrade: websocket",
        b"X-Keep-1: a",
        b"Accept: */*",
        b"X-Keep-2: b",
    ]
    with RawConn(gateway.port) as c:
        c.send(head("GET", "/hop", fields))
        r = c.read_response()
    assert r.status == 200, r
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.head_raw.startswith(b"GET /hop HTTP/1.1\r\nhost: a.test\r\n"), req.head_raw
    names = req.header_names()
    end_to_end = [n for n in names if n not in GATEWAY_FIELDS]
    assert end_to_end == ["host", "x-keep-1", "accept", "x-keep-2"], req.head_raw
    assert set(names) - set(end_to_end) == GATEWAY_FIELDS, req.head_raw


@pytest.mark.parametrize(
    "listed",
    [b"host", b"content-length", b"transfer-encoding", b"Host, Content-Length, Transfer-Encoding"],
)
def test_connection_cannot_strip_host_or_framing(gateway, origin, listed):
    """A client listing Host or the framing fields in Connection does not make the
    gateway forward a request without Host or without framing."""
    data = head(
        headers=[b"Connection: " + listed, b"Content-Length: 5", b"Connection: close"]
    ) + b"hello"
    ex = exchange(gateway.port, data)
    assert ex.statuses == [200] and ex.responses[0].body == b"hello", ex.responses
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req, b"hello")
    assert req.header("host") == ["a.test"] and req.header("content-length") == ["5"], req


# ================================================================ Connection, Expect, pipelining
@pytest.mark.parametrize(
    "conn", [b"Connection: close", b"connection: CLOSE", b"Connection: keep-alive, close", b"Connection: foo", b"Connection: x, close"]
)
def test_connection_close_honoured(gateway, origin, conn):
    """`close` anywhere in Connection ends the connection after the answer; bytes
    after it are never read as a request."""
    second = head("GET", "/smuggled-second", [b"Connection: close"])
    ex = exchange(gateway.port, head("GET", "/cc", [conn]) + second)
    if b"close" in conn.lower():
        assert ex.statuses == [200] and ex.closed, ex.responses
        assert ex.responses[0].h("connection") == "close", ex.responses[0]
        time.sleep(0.2)
        no_smuggled(origin)
    else:
        assert ex.statuses == [200, 200] and ex.closed, ex.responses


def test_expect_100_continue_then_body(gateway, origin):
    """The client waits for 100 Continue before sending the body; it gets it, then the
    answer. The upstream never sees Expect."""
    with RawConn(gateway.port) as c:
        c.send(head(headers=[b"Expect: 100-continue", b"Content-Length: 5"]))
        interim = c.read_response(timeout=5)
        assert interim.status == 100, interim
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello", r
        # the connection stays in sync
        c.send(head("GET", "/after-expect"))
        assert c.read_response().body == b"GET /after-expect\n"
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req, b"hello")
    assert not req.header("expect"), req


@pytest.mark.parametrize(
    "fields,version",
    [
        ([b"Expect: 100-continue", b"Content-Length: 0"], "HTTP/1.1"),
        ([b"Expect: 100-continue"], "HTTP/1.1"),
        ([b"Expect: 100-continue", b"Content-Length: 5"], "HTTP/1.0"),
    ],
    ids=["empty-body", "no-body", "http10"],
)
def test_no_100_continue_without_a_body_or_on_http10(gateway, origin, fields, version):
    """No interim 100 where there is no body to invite, nor to an HTTP/1.0 client
    (RFC 9110 10.1.1); the request is served normally."""
    body = b"hello" if b"Content-Length: 5" in fields else b""
    ex = exchange(gateway.port, head(headers=fields + [b"Connection: close"], version=version) + body)
    assert ex.statuses == [200], ex.responses
    assert ex.responses[0].body == body


def test_unknown_expectation_417_not_forwarded(gateway, origin):
    ex = exchange(gateway.port, head(headers=[b"Expect: 100-continue, foo", b"Content-Length: 5"]) + b"hello" + SMUGGLED)
    assert_rejected(ex, (417,))
    assert_origin_saw_nothing(gateway.port, origin)


def test_ten_pipelined_requests_in_one_write(gateway, origin):
    data = b"".join(head("GET", f"/p{i}") for i in range(9)) + head("GET", "/p9", [b"Connection: close"])
    ex = exchange(gateway.port, data)
    assert [r.body for r in ex.responses] == [f"GET /p{i}\n".encode() for i in range(10)], ex.responses
    assert ex.closed
    reqs = origin.wait_requests(10, complete=True)
    assert [r.target for r in reqs] == [f"/p{i}" for i in range(10)]
    for r in reqs:
        assert_clean_forward(r)


def test_pipelined_mix_of_get_and_bodies(gateway, origin):
    """GETs, Content-Length and chunked POSTs (one with an extension and a trailer),
    one write: answered in order, each body intact, each re-framed."""
    data, want = b"", []
    for i in range(8):
        kind = i % 3
        if kind == 0:
            data += head("GET", f"/m{i}")
            want.append(f"GET /m{i}\n".encode())
        elif kind == 1:
            payload = b"c" * (i * 7)
            data += head("POST", f"/echo?m{i}", [f"Content-Length: {len(payload)}"]) + payload
            want.append(payload)
        else:
            payload = b"k" * (i * 5)
            data += head("POST", f"/echo?m{i}", [b"Transfer-Encoding: chunked"])
            data += b"%x;e=1\r\n%s\r\n0\r\nX-T: t\r\n\r\n" % (len(payload), payload)
            want.append(payload)
    data += head("GET", "/m-last", [b"Connection: close"])
    want.append(b"GET /m-last\n")
    ex = exchange(gateway.port, data)
    assert [r.body for r in ex.responses] == want, ex.responses
    reqs = origin.wait_requests(len(want), complete=True)
    assert len(reqs) == len(want)
    for r in reqs:
        assert_clean_forward(r)


@pytest.mark.parametrize(
    "bad",
    [
        head("GET", "/bad", [b"Content-Length: 1, 2"]),
        head("POST", "/bad", [b"Transfer-Encoding: chunked"]) + b"zz\r\n",
        b"GET /bad HTTP/1.1\r\nHost: a.test\r\nX A: 1\r\n\r\n",
        head("GET", "/bad", host=None),
    ],
    ids=["bad-cl", "bad-chunk", "bad-field-name", "no-host"],
)
def test_bad_request_in_the_middle_of_a_pipeline(gateway, origin, bad):
    """Two good requests, a bad one, then more: the two are answered, the bad one is
    refused, the connection closes, and the upstream never sees anything after it."""
    data = head("GET", "/ok1") + head("GET", "/ok2") + bad + SMUGGLED + head("GET", "/smuggled-too")
    ex = exchange(gateway.port, data)
    fs = finals(ex)
    assert [r.body for r in fs[:2]] == [b"GET /ok1\n", b"GET /ok2\n"], ex.responses
    assert len(fs) <= 3 and ex.closed, ex.responses
    if len(fs) == 3:
        assert fs[2].status == 400, ex.responses
    time.sleep(0.3)
    no_smuggled(origin)
    assert [r.target for r in origin.requests if r.target != "/bad"] == ["/ok1", "/ok2"], origin.requests


# ================================================================ limits at the boundary
def _head_of_size(total: int, target: str = "/b") -> bytes:
    base = f"GET {target} HTTP/1.1\r\nHost: a\r\nX-Pad: ".encode()
    data = base + b"p" * (total - len(base) - 4) + b"\r\n\r\n"
    assert len(data) == total
    return data


@pytest.mark.parametrize("size,status", [(1023, 200), (1024, 200), (1025, 431)])
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-halves"])
def test_max_header_bytes_boundary(tight, origin, size, status, split):
    """--max-header-bytes 1024: a head (request line to the empty line) of exactly
    1024 bytes is served, 1025 is 431 - whether it arrives at once or in two parts."""
    # bytes after a refused head must never be read; after a served one they would
    # be a legitimate next request, so none are sent then
    data = _head_of_size(size) + (SMUGGLED if status == 431 else b"")
    with RawConn(tight.port) as c:
        if split:
            c.send(data[: size // 2])
            time.sleep(0.1)
            c.send(data[size // 2 :])
        else:
            c.send(data)
        r = c.read_response()
        assert r.status == status, f"{size} bytes: {r!r}"
        if status == 431:
            assert c.wait_closed(5)
    if status == 431:
        assert_origin_saw_nothing(tight.port, origin)


def test_max_header_bytes_applies_to_every_request_on_a_connection(tight, origin):
    data = _head_of_size(1024, "/first") + _head_of_size(1024, "/second") + _head_of_size(1025, "/third") + SMUGGLED
    ex = exchange(tight.port, data)
    assert ex.statuses == [200, 200, 431] and ex.closed, ex.responses
    time.sleep(0.2)
    assert [r.path for r in origin.requests] == ["/first", "/second"]


@pytest.mark.parametrize("count,status", [(10, 200), (11, 431)])
def test_max_headers_boundary_on_a_keepalive_request(tight, origin, count, status):
    """--max-headers 10 counts every field line, Host included, on the second
    request of a connection as on the first."""
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(count - 2)) + b"Connection: close\r\n"
    data = head("GET", "/first", host=b"Host: a") + b"GET /counted HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n" + SMUGGLED
    ex = exchange(tight.port, data)
    assert ex.statuses == [200, status] and ex.closed, ex.responses
    time.sleep(0.2)
    no_smuggled(origin)


def test_response_heads_are_not_held_to_the_request_limits(tight, origin):
    """--max-headers and --max-header-bytes bound what clients send (431): an
    upstream's answer with more fields, or a larger head, than a request may have
    is relayed, not turned into a 502."""

    def many_fields(req, conn):
        fields = b"".join(b"x-r%d: %s\r\n" % (i, b"v" * 100) for i in range(20))  # 20 fields, ~2.4 KiB
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + fields + b"\r\nok")
        return True

    origin.handler = many_fields
    ex = exchange(tight.port, head("GET", "/many-response-fields", [b"Connection: close"]))
    assert ex.statuses == [200] and ex.responses[0].body == b"ok", ex.responses
    assert ex.responses[0].h("x-r19") == "v" * 100

    # still bounded: a 256 KiB response head is a 502, not buffered
    origin.handler = _respond_then(b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"b" * (256 << 10) + b"\r\n\r\n", "wait")
    ex = exchange(tight.port, head("GET", "/huge-response-head", [b"Connection: close"]))
    assert ex.statuses == [502], ex.responses


# ================================================================ 413
@pytest.mark.parametrize(
    "name,body",
    [
        ("one-chunk-declared-over", b"10000\r\n" + b"z" * 1500),
        ("chunks-cross-by-one", b"400\r\n" + b"z" * 1024 + b"\r\n1\r\nz\r\n0\r\n\r\n"),
        ("many-small-chunks", b"".join(b"10\r\n" + b"s" * 16 + b"\r\n" for _ in range(70)) + b"0\r\n\r\n"),
    ],
)
def test_streamed_body_over_limit_413_upstream_aborted_not_reused(tight, origin, name, body):
    """A chunked body crossing --max-body-bytes 1024: 413 and close; the origin sees
    no terminating chunk, no more than the limit, and its connection closed; the next
    request goes over another upstream connection."""
    data = head(target="/sink-413", headers=[b"Transfer-Encoding: chunked"]) + body
    ex = exchange(tight.port, data + SMUGGLED, quiet=3)
    assert_rejected(ex, (413,), name)
    started = [q for q in origin.requests if q.path == "/sink-413"]
    for q in started:
        assert not q.complete and q.body_len <= 1024, f"{name}: {q!r}"
        assert wait_upstream_closed(origin, q), f"{name}: upstream connection left open"
        assert not origin.raw_since_reset().endswith(b"0\r\n\r\n"), f"{name}: terminating chunk forwarded"
    r = request(tight.port, "GET", "/after-413")
    assert r.status == 200, r
    after = [q for q in origin.requests if q.path == "/after-413"][0]
    assert after.conn_id not in {q.conn_id for q in started}, "aborted upstream connection reused"
    no_smuggled(origin)


def test_streamed_413_after_100_continue(tight, origin):
    """Expect: 100-continue with a chunked body: the gateway invites the body (the
    size is unknown), then answers 413 as soon as it crosses the limit."""
    with RawConn(tight.port) as c:
        c.send(head(target="/sink-413e", headers=[b"Transfer-Encoding: chunked", b"Expect: 100-continue"]))
        r = c.read_response(timeout=5)
        assert r.status == 100, r
        for _ in range(6):
            if not c.send(b"200\r\n" + b"e" * 512 + b"\r\n"):
                break
            time.sleep(0.05)
        r = c.read_response(timeout=5)
        assert r.status == 413, r
        assert c.wait_closed(5)
    for q in [q for q in origin.requests if q.path == "/sink-413e"]:
        assert not q.complete and wait_upstream_closed(origin, q), q


def test_declared_413_on_a_pipelined_second_request(tight, origin):
    data = head("GET", "/first", host=b"Host: a") + head(target="/big", headers=[b"Content-Length: 1025"]) + b"x" * 1025 + SMUGGLED
    ex = exchange(tight.port, data)
    assert ex.statuses == [200, 413] and ex.closed, ex.responses
    time.sleep(0.2)
    assert [r.path for r in origin.requests] == ["/first"]


# ================================================================ slow clients
@pytest.mark.slow
@pytest.mark.timeout(60, func_only=True)
def test_few_hundred_slowloris_clients_and_a_good_client(tight, origin):
    """300 clients trickle heads (a byte each 0.5 s) at a gateway with a 2 s
    header-timeout: a good client keeps being served meanwhile, and every slow one
    is cut (408 or close) soon after the timeout, none reaching the origin."""
    n = 300
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", tight.port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    trickle = b"GET /loris HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 100
    pos, cut = [0] * n, [False] * n
    served = 0
    start = time.monotonic()
    next_tick = start
    try:
        while time.monotonic() - start < 8 and not all(cut):
            if time.monotonic() >= next_tick:
                next_tick += 0.5
                for i, s in enumerate(socks):
                    if cut[i]:
                        continue
                    try:
                        d = s.recv(4096)
                        if not d or d.startswith(b"HTTP/1.1 408"):
                            cut[i] = True
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        cut[i] = True
                        continue
                    try:
                        s.send(trickle[pos[i] : pos[i] + 1])
                        pos[i] = min(pos[i] + 1, len(trickle) - 1)
                    except BlockingIOError:
                        pass
                    except OSError:
                        cut[i] = True
            r = request(tight.port, "GET", f"/good{served}", timeout=5)
            assert r.status == 200 and r.body == f"GET /good{served}\n".encode(), r
            served += 1
        elapsed = time.monotonic() - start
        print(f"\n{n} slowloris clients: {sum(cut)} cut after {elapsed:.1f} s; {served} good requests served meanwhile")
        assert all(cut), f"only {sum(cut)}/{n} slow clients cut within 8 s of a 2 s header-timeout"
        assert served >= 10, served
        assert not [q for q in origin.requests if q.path == "/loris"]
    finally:
        for s in socks:
            s.close()


# ================================================================ upstream faults
def _respond_then(raw: bytes, then: str = "wait"):
    def handler(req, conn):
        conn.send(raw)
        if then == "close":
            conn.sleep(0.2)
            conn.close()
            return False
        if then == "reset":
            conn.sleep(0.2)
            conn.reset()
            return False
        if then == "keep":
            return True
        conn.wait_peer_close(10)
        return False

    return handler


def _follow_up(gw, origin, bad_conns: set) -> None:
    origin.handler = None
    for i in range(2):
        r = request(gw.port, "GET", f"/after-fault{i}")
        assert r.status == 200 and r.body == f"GET /after-fault{i}\n".encode(), r
    after = [q for q in origin.requests if q.target.startswith("/after-fault")]
    reused = [q for q in after if q.conn_id in bad_conns]
    assert not reused, f"a broken upstream connection was reused: {reused}"


GARBAGE_RESPONSES = {
    "status-no-code": b"HTTP/1.1 OK\r\ncontent-length: 0\r\n\r\n",
    "status-two-digits": b"HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n",
    "status-four-digits": b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
    "status-letters": b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n",
    "version-2": b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "version-lower-case": b"http/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "reason-with-ctl": b"HTTP/1.1 200 O\x01K\r\ncontent-length: 2\r\n\r\nok",
    "cl-differ": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    "cl-list-differ": b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello!",
    "cl-negative": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nhello",
    "te-chunked-then-gzip": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-chunked-twice": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-on-http10": b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
    "bare-lf": b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nx-a : 1\r\ncontent-length: 2\r\n\r\nok",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nx-a: a\x00\r\ncontent-length: 2\r\n\r\nok",
    "cut-inside-head": b"HTTP/1.1 200 OK\r\ncontent-len",
}


@pytest.mark.parametrize("name", list(GARBAGE_RESPONSES))
def test_garbage_upstream_response_is_502_and_not_reused(tight, origin, name):
    origin.handler = _respond_then(GARBAGE_RESPONSES[name], "close" if name.startswith("cut") else "wait")
    with RawConn(tight.port, timeout=10) as c:
        c.send(head("GET", "/garbage-response", host=b"Host: a"))
        r = c.read_response(timeout=10)
    assert r.status == 502, f"{name}: {r!r}"
    bad = {q.conn_id for q in origin.requests}
    for cid in bad:
        conn = origin.conn(cid)
        assert origin.wait_for(lambda: conn.closed or conn.peer_closed, 5), f"{name}: broken connection kept"
    _follow_up(tight, origin, bad)


def test_upstream_cl_and_te_never_relayed_raw(tight, origin):
    """CL + TE in a response: 502, or TE wins (RFC 9112 6.3) and the body is decoded;
    never the first 3 bytes as a 3-byte body with the rest left to poison the pool."""
    origin.handler = _respond_then(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "keep"
    )
    with RawConn(tight.port, timeout=10) as c:
        c.send(head("GET", "/cl-te", host=b"Host: a"))
        r = c.read_response()
        assert r.status == 502 or r.body == b"hello", r
        assert not (r.h("content-length") and r.h("transfer-encoding")), r
    bad = {q.conn_id for q in origin.requests}
    _follow_up(tight, origin, bad)


CUT_RESPONSES = {
    "cl-fin-mid-body": (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello", "close"),
    "cl-rst-mid-body": (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello", "reset"),
    "cl-rst-after-head": (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", "reset"),
    "chunked-fin-between-chunks": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", "close"),
    "chunked-fin-inside-chunk": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nhello", "close"),
    "chunked-fin-before-final-crlf": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n", "close"),
    "chunked-bad-second-chunk": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", "bad-later"),
    "close-delimited-rst": (b"HTTP/1.1 200 OK\r\n\r\nsome body", "reset"),
    "chunked-stall": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", "wait"),
}


@pytest.mark.parametrize("name", list(CUT_RESPONSES))
@pytest.mark.parametrize("client", ["HTTP/1.1", "HTTP/1.0"])
def test_upstream_cut_mid_response_is_a_visible_cut(tight, origin, name, client):
    """The upstream dies, resets, stalls past the response timeout or breaks its
    framing after the response started: the client gets a 502/504 if nothing was
    relayed yet, else a cut it can tell from a complete body - for an HTTP/1.0 client
    reading until close, that means a reset, never a clean close after a truncated
    body. The broken upstream connection is not reused."""
    raw, then = CUT_RESPONSES[name]
    if then == "bad-later":

        def handler(req, conn):
            conn.send(raw)
            conn.sleep(0.3)
            conn.send(b"zz\r\nworld\r\n0\r\n\r\n")
            conn.wait_peer_close(10)
            return False

        origin.handler = handler
    else:
        origin.handler = _respond_then(raw, then)
    s = socket.create_connection(("127.0.0.1", tight.port), timeout=10)
    got, end = b"", "timeout"
    try:
        line = b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n" if client == "HTTP/1.1" else b"GET /cut HTTP/1.0\r\n\r\n"
        s.sendall(line)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                end = "reset"
                break
            except socket.timeout:
                break
            if not d:
                end = "fin"
                break
            got += d
    finally:
        s.close()
    assert end != "timeout", f"{name}/{client}: client still waiting 10 s after the upstream fault: {got!r}"
    status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None
    if status in (502, 504):
        pass
    else:
        assert status == 200, f"{name}/{client}: {got!r}"
        head_raw, _, body = got.partition(b"\r\n\r\n")
        headers = head_raw.lower()
        if b"content-length: 100" in headers:
            assert len(body) < 100, got
        elif b"transfer-encoding: chunked" in headers:
            assert not body.endswith(b"0\r\n\r\n"), f"{name}/{client}: a cut response was completed: {got!r}"
        else:
            # close-delimited to the client: only a reset tells the client of the cut
            assert end == "reset", f"{name}/{client}: a truncated close-delimited response ended with a clean close: {got!r}"
    bad = {q.conn_id for q in origin.requests}
    for cid in bad:
        conn = origin.conn(cid)
        assert origin.wait_for(lambda: conn.closed or conn.peer_closed, 5), f"{name}: broken upstream conn kept"
    _follow_up(tight, origin, bad)


INTERIM = {
    "100": b"HTTP/1.1 100 Continue\r\n\r\n",
    "103-twice": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n",
    "100-with-length": b"HTTP/1.1 100 Continue\r\ncontent-length: 5\r\n\r\n",
    "102-then-100": b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
}


@pytest.mark.parametrize("name", list(INTERIM))
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_interim_responses_before_the_final_one(tight, origin, name, method):
    """1xx answers before the final one (with or without a request body): the client
    gets the final answer intact, and both connections stay in sync."""

    def handler(req, conn):
        conn.send(INTERIM[name])
        conn.sleep(0.05)
        conn.send(f"HTTP/1.1 200 OK\r\ncontent-length: {len(req.target) + 1}\r\n\r\n{req.target}\n".encode())
        return True

    origin.handler = handler
    with RawConn(tight.port) as c:
        for i in range(2):
            body = b"hello" if method == "POST" else b""
            extra = [f"Content-Length: {len(body)}".encode()] if body else []
            c.send(head(method, f"/interim{i}", extra, host=b"Host: a") + body)
            r = c.read_response()
            while 100 <= r.status < 200:
                assert r.status in (100, 102, 103), r
                r = c.read_response()
            assert r.status == 200 and r.body == f"/interim{i}\n".encode(), f"{name}: {r!r}"


@pytest.mark.parametrize(
    "status,tail",
    [(204, b"content-length: 5\r\n\r\nhello"), (304, b"\r\nhello"), (204, b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")],
    ids=["204-cl-body", "304-body", "204-chunked-body"],
)
def test_bodiless_status_with_a_body_from_upstream(tight, origin, status, tail):
    """A 204/304 never has a body (RFC 9110 6.4.1): the client gets none, its next
    response is not poisoned by the stray bytes, and the upstream connection that
    carried them is not reused."""

    def handler(req, conn):
        if req.path == "/bodiless":
            conn.send(f"HTTP/1.1 {status} X\r\n".encode() + tail)
        else:
            conn.send(f"HTTP/1.1 200 OK\r\ncontent-length: {len(req.target) + 1}\r\n\r\n{req.target}\n".encode())
        return True

    origin.handler = handler
    with RawConn(tight.port) as c:
        c.send(head("GET", "/bodiless", host=b"Host: a"))
        r = c.read_response()
        assert r.status == status and r.body == b"", r
        assert not r.h("transfer-encoding"), r
        for i in range(2):
            c.send(head("GET", f"/next{i}", host=b"Host: a"))
            r = c.read_response()
            assert r.status == 200 and r.body == f"/next{i}\n".encode(), f"after the bodiless {status}: {r!r}"
        assert not c.buf, bytes(c.buf)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ],
    ids=["length", "chunked", "no-framing"],
)
def test_head_responses_have_no_body_and_keep_sync(tight, origin, answer):
    """Answers to HEAD carry no body whatever their framing fields say; the
    length is passed on, and the connection carries the next request cleanly."""

    def handler(req, conn):
        if req.method == "HEAD":
            conn.send(answer)
        else:
            conn.send(f"HTTP/1.1 200 OK\r\ncontent-length: {len(req.target) + 1}\r\n\r\n{req.target}\n".encode())
        return True

    origin.handler = handler
    with RawConn(tight.port) as c:
        c.send(head("HEAD", "/h", host=b"Host: a"))
        r = c.read_response(method="HEAD", timeout=5)
        assert r.status == 200, r
        if b"1234" in answer:
            assert r.h("content-length") == "1234", r
        c.send(head("GET", "/after-head", host=b"Host: a"))
        r = c.read_response(timeout=5)
        assert r.status == 200 and r.body == b"/after-head\n", r


@pytest.mark.parametrize("client", ["HTTP/1.1", "HTTP/1.0"])
def test_close_delimited_upstream_response_complete(tight, origin, client):
    """No framing at all: the body ends at the upstream's FIN; the client gets it
    whole (re-chunked for HTTP/1.1, until close for HTTP/1.0)."""
    origin.handler = _respond_then(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + b"b" * 5000, "close")
    line = b"GET /cd HTTP/1.1\r\nHost: a\r\n\r\n" if client == "HTTP/1.1" else b"GET /cd HTTP/1.0\r\n\r\n"
    with RawConn(tight.port) as c:
        c.send(line)
        r = c.read_response()
        assert r.status == 200 and r.body == b"b" * 5000 and r.complete, r
        if client == "HTTP/1.1":
            assert r.h("transfer-encoding") == "chunked", r



STRAY = {
    # a second, unasked-for response right behind the first one
    "second-response-at-once": (b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstray\n", 0.0),
    # the same, a moment later, while the connection sits in the pool
    "second-response-20ms-later": (b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstray\n", 0.02),
    # a common application bug: a body after a bodiless answer (to HEAD), in its own write
    "head-answer-body-written-later": (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nstray\n", 0.02),
}


@pytest.mark.parametrize("name", list(STRAY))
def test_bytes_after_a_complete_response_never_answer_the_next_request(tight, origin, name):
    """The upstream sends bytes after a complete response (a second response nobody
    asked for, a body after an answer to HEAD), at once or a moment later while the
    connection sits idle in the pool. They belong to no request: the next request -
    sent within milliseconds, as under load - gets its own answer, never the stray
    bytes, and no later request gets a response shifted by one (a desync that hands
    one client's response to another)."""
    stray, gap = STRAY[name]
    is_head = name.startswith("head")

    def handler(req, conn):
        answer = f"/{req.target.lstrip('/')}\n".encode()
        if req.path.startswith("/first") and is_head:
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
        else:
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
        if req.path.startswith("/first"):
            if gap:
                conn.sleep(gap)
            conn.send(stray)
        return True

    origin.handler = handler
    with RawConn(tight.port) as c:
        for i in range(4):
            c.send(head("HEAD" if is_head else "GET", f"/first{i}", host=b"Host: a"))
            r = c.read_response(method="HEAD" if is_head else "GET")
            assert r.status == 200 and r.body == (b"" if is_head else f"/first{i}\n".encode()), f"{name} round {i}: {r!r}"
            time.sleep(0.05)
            c.send(head("GET", f"/second{i}", host=b"Host: a"))
            r = c.read_response()
            assert r.status == 200 and r.body == f"/second{i}\n".encode(), f"{name} round {i}: /second{i} got {r!r}"


@pytest.mark.parametrize(
    "target",
    [b"/caf\xe9", b"/\xff\xfe", b"/caf\xc3\xa9?q=\xc3\xa4"],
    ids=["latin1", "invalid-utf8", "utf8"],
)
def test_raw_non_ascii_target_rejected(gateway, origin, target):
    """Raw bytes above 0x7F are not in any request-target form (RFC 9112 3.2):
    400, whether or not they are UTF-8 (a client must percent-encode them), and
    nothing reaches the origin."""
    data = b"GET " + target + b" HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n" + SMUGGLED
    assert_rejected(exchange(gateway.port, data), (400,), repr(target))
    assert_origin_saw_nothing(gateway.port, origin, repr(target))


@pytest.mark.parametrize(
    "answer,reusable",
    [
        (b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n%s", False),
        (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: %d\r\n\r\n%s", True),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s", False),
        (b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\ncontent-length: %d\r\n\r\n%s", False),
    ],
    ids=["http10", "http10-keep-alive", "close", "close-in-a-list"],
)
def test_upstream_connection_reuse_follows_its_answer(tight, origin, answer, reusable):
    """An upstream connection is pooled only if its answer kept it alive (HTTP/1.0
    needs keep-alive, `close` anywhere ends it); a POST after a closing answer is
    never sent on the closed connection (it could not be replayed: a 502)."""

    def handler(req, conn):
        body = f"{req.method} {req.target}\n".encode()
        conn.send(answer % (len(body), body))
        if not reusable:
            conn.sleep(0.05)
            conn.close()
            return False
        return True

    origin.handler = handler
    with RawConn(tight.port) as c:
        for i in range(3):
            c.send(head("POST", f"/reuse{i}", [b"Content-Length: 5"], host=b"Host: a") + b"hello")
            r = c.read_response()
            assert r.status == 200 and r.body == f"POST /reuse{i}\n".encode(), f"request {i}: {r!r}"
            assert r.h("connection") != "close", r
            time.sleep(0.1)
    conns = [q.conn_id for q in origin.requests]
    assert len(set(conns)) == (1 if reusable else 3), conns


def test_pipelined_request_trickled_after_a_served_one_is_cut_at_header_timeout(tight, origin):
    """The header timeout bounds every request's head, not only the first: a second
    request trickled a byte at a time is cut (408 or close) about header-timeout after
    it started, never reaching the origin."""
    with RawConn(tight.port, timeout=15) as c:
        c.send(head("GET", "/first", host=b"Host: a"))
        assert c.read_response().status == 200
        trickle = b"GET /second-slow HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 60
        cut = False
        deadline = time.monotonic() + 10
        for b in trickle:
            if not c.send(bytes([b])) or c.wait_closed(0.15) or time.monotonic() > deadline:
                cut = True
                break
        cut = cut or c.wait_closed(5)
        assert cut, "a second request trickled for ~10 s was never cut by a 2 s header-timeout"
        rest = bytes(c.buf)
        assert rest == b"" or rest.startswith(b"HTTP/1.1 408 "), rest
    assert [q.path for q in origin.requests] == ["/first"]


@pytest.mark.parametrize(
    "data,bodies",
    [
        (head("GET", "/slow?delay=0.5"), [b"GET /slow?delay=0.5\n"]),
        (head(headers=[b"Content-Length: 5"]) + b"hello", [b"hello"]),
        (head(headers=[b"Transfer-Encoding: chunked"]) + CHUNKED_HELLO, [b"hello"]),
        (head("GET", "/a") + head("GET", "/b"), [b"GET /a\n", b"GET /b\n"]),
    ],
    ids=["slow-upstream", "content-length", "chunked", "two-pipelined"],
)
def test_client_half_close_after_its_requests_still_gets_the_answers(gateway, origin, data, bodies):
    """A client may shut down its sending side once its requests are out (RFC 9112
    9.6: half-close): every complete request is still answered, then the gateway
    closes."""
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                break
            got += d
    finally:
        s.close()
    for b in bodies:
        assert b"\r\n\r\n" + b in got, f"{b!r} missing from {got!r}"
    assert got.count(b"HTTP/1.1 200 ") == len(bodies), got
