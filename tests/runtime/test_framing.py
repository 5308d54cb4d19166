"""RELIABILITY.md, "HTTP/1.1 framing (RFC 9112) - request smuggling".

Each test writes exact bytes on a raw socket and checks two sides: what the
client got (status, closed connection) and what the origin received (nothing,
or one correctly re-framed request).
"""

from __future__ import annotations

import pytest

from support.asserts import (
    assert_clean_forward,
    assert_origin_saw_nothing,
    assert_rejected,
    assert_rejected_or_closed,
)
from support.client import RawConn, exchange, request

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


def head(method: str = "POST", target: str = "/x", headers=("Host: a.test",), version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}".encode("latin-1")]
    lines += [h if isinstance(h, bytes) else h.encode("latin-1") for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def no_smuggled(origin) -> None:
    assert not [r for r in origin.requests if "smuggled" in r.target], f"smuggled request reached the origin: {origin.requests}"


# ---------------------------------------------------------------- CL + TE
CL_TE = {
    # classic CL.TE: a CL-reader forwards "0\r\n\r\nG", a TE-reader sees "G" start the next request
    "cl-then-te": head(headers=("Host: a.test", "Content-Length: 6", "Transfer-Encoding: chunked")) + b"0\r\n\r\nG",
    # classic TE.CL
    "te-then-cl": head(headers=("Host: a.test", "Transfer-Encoding: chunked", "Content-Length: 4"))
    + b"5c\r\nGPOST /smuggled HTTP/1.1\r\nHost: a.test\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
    "cl-zero-te": head(headers=("Host: a.test", "Content-Length: 0", "Transfer-Encoding: chunked")) + CHUNKED_HELLO,
    "te-cl-matching": head(headers=("Host: a.test", "Transfer-Encoding: chunked", "Content-Length: 15")) + CHUNKED_HELLO,
    "get-cl-te": head("GET", "/x", ("Host: a.test", "Content-Length: 5", "Transfer-Encoding: chunked")) + CHUNKED_HELLO,
}


@pytest.mark.parametrize("name", list(CL_TE))
def test_content_length_and_transfer_encoding_rejected(gateway, origin, name):
    """Both CL and TE: the documented choice is 400 and close; nothing forwarded."""
    ex = exchange(gateway.port, CL_TE[name])
    assert_rejected(ex, (400,), name)
    assert_origin_saw_nothing(gateway.port, origin, name)


# ---------------------------------------------------------------- Content-Length
BAD_CL = {
    "plus": [b"Content-Length: +5"],
    "minus": [b"Content-Length: -5"],
    "minus-zero": [b"Content-Length: -0"],
    "hex": [b"Content-Length: 0x5"],
    "empty": [b"Content-Length: "],
    "list-different": [b"Content-Length: 5, 6"],
    "list-different-nospace": [b"Content-Length: 5,6"],
    "two-headers-different": [b"Content-Length: 5", b"Content-Length: 6"],
    "overflow-2^64": [b"Content-Length: 18446744073709551616"],
    "overflow-huge": [b"Content-Length: 99999999999999999999999999999"],
    "junk-after-digits": [b"Content-Length: 5x"],
    "junk-before-digits": [b"Content-Length: x5"],
    "space-inside": [b"Content-Length: 5 5"],
    "decimal": [b"Content-Length: 5.0"],
    "exponent": [b"Content-Length: 5e0"],
    "unicode-digit": ["Content-Length: \u0665".encode("utf-8")],
    "fullwidth-digit": ["Content-Length: \uff15".encode("utf-8")],
    "list-empty-element": [b"Content-Length: ,5"],
}


@pytest.mark.parametrize("name", list(BAD_CL))
def test_invalid_content_length_rejected(gateway, origin, name):
    """Content-Length not exactly 1*DIGIT, or several different ones: 400 and close."""
    data = head(headers=[b"Host: a.test", *BAD_CL[name]]) + b"hello" + SMUGGLED
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400,), name)
    assert_origin_saw_nothing(gateway.port, origin, name)


@pytest.mark.parametrize(
    "lines",
    [[b"Content-Length: 5, 5"], [b"Content-Length: 5", b"Content-Length: 5"]],
    ids=["list-same", "two-headers-same"],
)
def test_duplicate_identical_content_length(gateway, origin, lines):
    """Identical duplicates (RFC 9110 8.6): either rejected (400, close), or forwarded
    with exactly one Content-Length: 5 - never both values, never a different length."""
    data = head(target="/echo", headers=[b"Host: a.test", *lines, b"Connection: close"]) + b"hello"
    ex = exchange(gateway.port, data)
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals, f"no response (closed={ex.closed})"
    if finals[0].status == 400:
        assert_rejected(ex)
        assert_origin_saw_nothing(gateway.port, origin)
        return
    assert finals[0].status == 200 and finals[0].body == b"hello", finals
    reqs = origin.wait_requests(1, complete=True)
    assert reqs and reqs[0].path == "/echo"
    assert_clean_forward(reqs[0], b"hello")


def test_valid_content_length_forwarded(gateway, origin):
    ex = exchange(gateway.port, head(target="/echo", headers=("Host: a.test", "Content-Length: 5", "Connection: close")) + b"hello")
    assert ex.statuses == [200] and ex.responses[0].body == b"hello", ex
    reqs = origin.wait_requests(1, complete=True)
    assert_clean_forward(reqs[0], b"hello")
    assert reqs[0].header("content-length") == ["5"] or reqs[0].header("transfer-encoding") == ["chunked"]


# ---------------------------------------------------------------- Transfer-Encoding
BAD_TE = {
    "gzip": [b"Transfer-Encoding: gzip"],
    "gzip-chunked": [b"Transfer-Encoding: gzip, chunked"],
    "chunked-gzip": [b"Transfer-Encoding: chunked, gzip"],
    "chunked-twice-list": [b"Transfer-Encoding: chunked, chunked"],
    "chunked-twice-headers": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    "leading-comma": [b"Transfer-Encoding: ,chunked"],
    "leading-comma-space": [b"Transfer-Encoding: , chunked"],
    "trailing-comma": [b"Transfer-Encoding: chunked,"],
    "identity": [b"Transfer-Encoding: identity"],
    "identity-chunked": [b"Transfer-Encoding: identity, chunked"],
    "empty": [b"Transfer-Encoding: "],
    "vtab-before": [b"Transfer-Encoding: \x0bchunked"],
    "vtab-after": [b"Transfer-Encoding: chunked\x0b"],
    "formfeed-before": [b"Transfer-Encoding: \x0cchunked"],
    "nbsp-latin1-before": [b"Transfer-Encoding: \xa0chunked"],
    "nbsp-utf8-before": [b"Transfer-Encoding: \xc2\xa0chunked"],
    "nbsp-utf8-after": [b"Transfer-Encoding: chunked\xc2\xa0"],
    "xchunked": [b"Transfer-Encoding: xchunked"],
    "chunkedx": [b"Transfer-Encoding: chunkedx"],
    "chunk": [b"Transfer-Encoding: chunk"],
    "quoted": [b'Transfer-Encoding: "chunked"'],
}


@pytest.mark.parametrize("name", list(BAD_TE))
def test_invalid_transfer_encoding_rejected(gateway, origin, name):
    """TE other than exactly one final `chunked`: 400/501 and close; nothing forwarded."""
    data = head(headers=[b"Host: a.test", *BAD_TE[name]]) + CHUNKED_HELLO + SMUGGLED
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400, 501), name)
    assert_origin_saw_nothing(gateway.port, origin, name)


def test_transfer_encoding_on_http10_rejected(gateway, origin):
    data = head(headers=("Host: a.test", "Transfer-Encoding: chunked"), version="HTTP/1.0") + CHUNKED_HELLO
    ex = exchange(gateway.port, data + SMUGGLED)
    assert_rejected(ex, (400,), "TE on HTTP/1.0")
    assert_origin_saw_nothing(gateway.port, origin)


def test_valid_chunked_request_reframed(gateway, origin):
    """A chunked body with extensions, uppercase hex and a trailer reaches the origin
    decoded and re-framed: one framing header, the same bytes."""
    body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n1;x\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"
    data = head(target="/echo", headers=("Host: a.test", "Transfer-Encoding: chunked", "Connection: close")) + body
    ex = exchange(gateway.port, data)
    assert ex.statuses == [200], ex
    assert ex.responses[0].body == b"hello0123456789!"
    reqs = origin.wait_requests(1, complete=True)
    assert_clean_forward(reqs[0], b"hello0123456789!")


def test_transfer_encoding_case_insensitive_chunked(gateway, origin):
    """Transfer-coding names are case-insensitive (RFC 9112 7): `Chunked` is chunked,
    or else rejected - never forwarded with a different framing."""
    data = head(target="/echo", headers=("Host: a.test", "Transfer-Encoding: Chunked", "Connection: close"))
    ex = exchange(gateway.port, data + CHUNKED_HELLO)
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals, ex
    if finals[0].status in (400, 501):
        assert_rejected(ex, (400, 501))
        assert_origin_saw_nothing(gateway.port, origin)
    else:
        assert finals[0].status == 200 and finals[0].body == b"hello", finals
        assert_clean_forward(origin.wait_requests(1, complete=True)[0], b"hello")


# ---------------------------------------------------------------- header syntax
BAD_HEADER = {
    "space-before-colon": [b"X-A : b"],
    "tab-before-colon": [b"X-A\t: b"],
    "host-space-before-colon": [b"X-B: c", b"Host : b.test"],
    "obs-fold-space": [b"X-A: b", b" folded"],
    "obs-fold-tab": [b"X-A: b", b"\tfolded"],
    "nul-in-value": [b"X-A: b\x00c"],
    "cr-in-value": [b"X-A: b\rc"],
    "lf-in-value": [b"X-A: b\nX-B: c"],
    "nul-in-name": [b"X\x00A: b"],
    "cr-in-name": [b"X\rA: b"],
    "empty-name": [b": b"],
    "no-colon": [b"X-A b"],
    "space-in-name": [b"X A: b"],
    "paren-in-name": [b"X(A): b"],
    "quote-in-name": [b'X"A: b'],
    "slash-in-name": [b"X/A: b"],
    "brace-in-name": [b"X{A}: b"],
    "non-ascii-name": ["X-\u00e4: b".encode("utf-8")],
    "latin1-name": [b"X-\xe4: b"],
    "te-obs-fold": [b"Transfer-Encoding:", b" chunked"],
    "cl-obs-fold": [b"Content-Length:", b" 5"],
}


@pytest.mark.parametrize("name", list(BAD_HEADER))
def test_invalid_header_syntax_rejected(gateway, origin, name):
    """Bad header syntax: 400 and close, nothing forwarded, following bytes not parsed."""
    data = head("GET", "/x", [b"Host: a.test", *BAD_HEADER[name]]) + SMUGGLED
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400,), name)
    assert_origin_saw_nothing(gateway.port, origin, name)


def test_header_line_starting_with_whitespace_rejected(gateway, origin):
    """Whitespace between the start line and the first header (RFC 9112 2.2)."""
    data = b"GET /x HTTP/1.1\r\n Host: a.test\r\nHost: a.test\r\n\r\n" + SMUGGLED
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400,))
    assert_origin_saw_nothing(gateway.port, origin)


# ---------------------------------------------------------------- chunk framing
BAD_CHUNKS = {
    "size-not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "size-not-hex-after-good-chunk": b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
    "size-0x-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "size-negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "size-plus": b"+5\r\nhello\r\n0\r\n\r\n",
    "size-overflow-2^64": b"5\r\nhello\r\n10000000000000000\r\nhello\r\n0\r\n\r\n",
    "size-overflow-long": b"5\r\nhello\r\nffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "size-empty": b"5\r\nhello\r\n\r\nhello\r\n0\r\n\r\n",
    "bare-lf-after-size": b"5\r\nhello\r\n5\nworld\r\n0\r\n\r\n",
    "bare-cr-after-size": b"5\r\nhello\r\n5\rworld\r\n0\r\n\r\n",
    "bare-lf-after-data": b"5\r\nhello\nX5\r\nworld\r\n0\r\n\r\n",
    "bare-lf-last-chunk": b"5\r\nhello\r\n0\n\r\n",
    "missing-crlf-after-data": b"5\r\nhelloXY5\r\nworld\r\n0\r\n\r\n",
    "data-longer-than-size": b"3\r\nhello\r\n0\r\n\r\n",
    "junk-after-size": b"5 junk\r\nhello\r\n0\r\n\r\n",
    "space-inside-size": b"5 5\r\nhello\r\n0\r\n\r\n",
    "ext-without-name": b"5;\r\nhello\r\n0\r\n\r\n",
    "nul-in-size-line": b"5\x00\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_CHUNKS))
def test_invalid_chunk_framing_aborts_upstream(gateway, origin, name):
    """Invalid chunk framing: the client gets 400 or a closed connection; the origin
    never sees the request completed (no terminating chunk, no raw bad framing), the
    upstream connection that carried it is closed and never reused."""
    data = head(target="/chunk-abort", headers=("Host: a.test", "Transfer-Encoding: chunked")) + BAD_CHUNKS[name]
    ex = exchange(gateway.port, data + SMUGGLED)
    assert_rejected_or_closed(ex, (400,), name)
    no_smuggled(origin)
    aborted = [r for r in origin.requests if r.path == "/chunk-abort"]
    for r in aborted:
        conn = origin.conn(r.conn_id)
        closed = origin.wait_for(lambda: conn.closed or conn.peer_closed, 5)
        assert not r.complete, f"{name}: the origin received a complete request: {r!r}"
        assert "bad chunk" not in (r.body_error or "") and "CRLF" not in (r.body_error or ""), (
            f"{name}: the gateway forwarded invalid chunk framing as is: {r.body_error}: {r!r}"
        )
        assert closed, f"{name}: the upstream connection carrying the aborted request was left open"
    # a good request afterwards does not ride on the aborted connection
    r = request(gateway.port, "GET", "/after-abort")
    assert r.status == 200, r
    after = [q for q in origin.requests if q.target == "/after-abort"]
    assert after and after[0].conn_id not in {a.conn_id for a in aborted}


# ---------------------------------------------------------------- Host
def test_missing_host_http11_rejected(gateway, origin):
    ex = exchange(gateway.port, head("GET", "/x", ()) + SMUGGLED)
    assert_rejected(ex, (400,))
    assert_origin_saw_nothing(gateway.port, origin)


@pytest.mark.parametrize(
    "hosts", [["a.test", "b.test"], ["a.test", "a.test"]], ids=["different", "identical"]
)
def test_several_host_headers_rejected(gateway, origin, hosts):
    ex = exchange(gateway.port, head("GET", "/x", [f"Host: {h}" for h in hosts]) + SMUGGLED)
    assert_rejected(ex, (400,))
    assert_origin_saw_nothing(gateway.port, origin)


BAD_HOSTS = ["a b", "a/b", "a@b", "[::1", "::1", "a.test:abc", "a.test:80:80", "a\\b", "a?b", "a#b", "a%zzb", "a.test:-1"]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_invalid_host_rejected(gateway, origin, host):
    ex = exchange(gateway.port, head("GET", "/x", [f"Host: {host}"]) + SMUGGLED)
    assert_rejected(ex, (400,), f"Host: {host}")
    assert_origin_saw_nothing(gateway.port, origin, host)


@pytest.mark.parametrize("host", ["a.test", "a.test:8080", "127.0.0.1", "[::1]:80", "A.Test"])
def test_valid_host_forwarded_once(gateway, origin, host):
    ex = exchange(gateway.port, head("GET", "/x", [f"Host: {host}", "Connection: close"]))
    assert ex.statuses == [200], ex
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.header("host")[0].lower() == host.lower()


@pytest.mark.parametrize(
    "target,authority,path",
    [
        ("http://abs.test/p?q=1", "abs.test", "/p?q=1"),
        ("http://abs.test:8080/p", "abs.test:8080", "/p"),
        ("http://abs.test", "abs.test", "/"),
    ],
)
def test_absolute_form_decides_host(gateway, origin, target, authority, path):
    """An absolute-form target decides the host; the forwarded Host is rewritten to it."""
    ex = exchange(gateway.port, head("GET", target, ["Host: other.test", "Connection: close"]))
    assert ex.statuses == [200], ex
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.header("host") == [authority], req
    if req.target.startswith("http"):
        assert req.target.lower().startswith(f"http://{authority}"), req
    else:
        assert req.target == path, req


def test_http10_without_host_accepted(gateway, origin):
    """Host is only required on HTTP/1.1; the upstream still gets exactly one Host."""
    ex = exchange(gateway.port, b"GET /ten HTTP/1.0\r\n\r\n")
    assert ex.statuses == [200], ex
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.header("via") == ["1.0 blitz"], "via names the protocol received (RFC 9110 §7.6.3)"


# ---------------------------------------------------------------- request target
BAD_TARGETS = {
    "no-leading-slash": b"GET path HTTP/1.1",
    "asterisk-with-get": b"GET * HTTP/1.1",
    "asterisk-with-post": b"POST * HTTP/1.1",
    "authority-form-with-get": b"GET a.test:443 HTTP/1.1",
    "space-in-target": b"GET /a b HTTP/1.1",
    "double-space": b"GET  /a HTTP/1.1",
    "missing-target": b"GET HTTP/1.1",
    "nul-in-target": b"GET /a\x00b HTTP/1.1",
    "del-in-target": b"GET /a\x7fb HTTP/1.1",
    "fragment": b"GET /a#frag HTTP/1.1",
    "non-ascii": b"GET /\xff HTTP/1.1",
    "tab-separator": b"GET\t/a HTTP/1.1",
    "bad-version": b"GET /a HTTP/1.x",
    "lowercase-version": b"GET /a http/1.1",
    "trailing-space": b"GET /a HTTP/1.1 ",
    "bad-method-char": b"GE(T /a HTTP/1.1",
    "nul-in-method": b"G\x00ET /a HTTP/1.1",
    "empty-method": b" /a HTTP/1.1",
    "http2-version": b"GET /a HTTP/2.0",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM",
}


@pytest.mark.parametrize("name", list(BAD_TARGETS))
def test_invalid_request_target_rejected(gateway, origin, name):
    data = BAD_TARGETS[name] + b"\r\nHost: a.test\r\n\r\n" + SMUGGLED
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400, 505) if ("version" in name or "http2" in name) else (400,), name)
    assert_origin_saw_nothing(gateway.port, origin, name)


@pytest.mark.parametrize("target", ["/path", "a.test"], ids=["origin-form", "authority-no-port"])
def test_connect_without_authority_form_not_forwarded(gateway, origin, target):
    """CONNECT needs authority-form (host:port): anything else is a bad target;
    a gateway without CONNECT support may say 405/501. Never forwarded."""
    ex = exchange(gateway.port, f"CONNECT {target} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status in (400, 405, 501), ex
    assert_origin_saw_nothing(gateway.port, origin)


def test_options_asterisk_not_rejected_as_bad_target(gateway, origin):
    """`OPTIONS *` is a valid request target (asterisk-form)."""
    ex = exchange(gateway.port, b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals and finals[0].status != 400, ex


# ---------------------------------------------------------------- hop-by-hop
# Hop-by-hop fields of a request (and one end-to-end field that must stay),
# also sent over TLS by test_reliability_matrix_qa.py.
HOP_REQUEST_FIELDS = [
    "Connection: keep-alive, X-Private, Keep-Alive",
    "X-Private: secret",
    "Keep-Alive: timeout=5",
    "TE: trailers",
    "Trailer: X-Checksum",
    "Upgrade: websocket",
    "Proxy-Authorization: Basic Zm9vOmJhcg==",
    "Proxy-Connection: keep-alive",
    "X-End-To-End: kept",
]


def test_hop_by_hop_headers_not_forwarded(gateway, origin):
    with RawConn(gateway.port) as c:
        c.send(head("GET", "/hop", ["Host: a.test", *HOP_REQUEST_FIELDS]))
        r = c.read_response()
    assert r.status == 200, r
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert not req.header("x-private"), "a header named in Connection was forwarded"
    assert req.header("x-end-to-end") == ["kept"], "an end-to-end header was dropped"


def test_connection_listed_proxy_fields_not_taken_from_the_client(gateway, origin):
    """Fields the gateway itself writes, named in the client's Connection: the
    client's values are hop-by-hop and never reach the upstream; the gateway's
    own X-Forwarded-For (just the client address) and request id replace them."""
    hdrs = [
        "Host: a.test",
        "Connection: X-Forwarded-For, X-Request-Id",
        "X-Forwarded-For: 203.0.113.9",
        "X-Request-Id: client-chosen-id",
    ]
    with RawConn(gateway.port) as c:
        c.send(head("GET", "/hop-proxy-fields", hdrs))
        r = c.read_response()
    assert r.status == 200, r
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req)
    assert req.header("x-forwarded-for") == ["127.0.0.1"], req
    assert req.header("x-request-id") and req.header("x-request-id") != ["client-chosen-id"], req


def test_hop_by_hop_response_headers_not_returned(gateway, origin):
    """The same rule on the way back: Connection-listed names and Keep-Alive/Upgrade/Proxy-*
    from the origin do not reach the client as sent."""

    def handler(req, conn):
        conn.send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
            b"Keep-Alive: timeout=1\r\nProxy-Authenticate: Basic\r\nX-Keep: yes\r\n\r\nok"
        )
        return True

    origin.handler = handler
    with RawConn(gateway.port) as c:
        c.send(head("GET", "/resp-hop", ["Host: a.test"]))
        r = c.read_response()
    assert r.status == 200 and r.body == b"ok", r
    names = {k for k, _ in r.headers}
    assert "x-hop" not in names and "keep-alive" not in names and "proxy-authenticate" not in names, r
    assert r.h("x-keep") == "yes"


# ---------------------------------------------------------------- pipelining
def test_bytes_after_rejected_request_not_parsed(gateway, origin):
    data = head("GET", "/first", ["Host: a.test", "X Bad: 1"]) + SMUGGLED + head("GET", "/third", ["Host: a.test"])
    ex = exchange(gateway.port, data)
    assert_rejected(ex, (400,))
    assert_origin_saw_nothing(gateway.port, origin)


def test_pipelined_requests_answered_in_order(gateway, origin):
    """Three pipelined requests in one write; the first is slow at the origin.
    The answers come back in request order."""
    data = (
        head("GET", "/slow?delay=0.5&n=1", ["Host: a.test"])
        + head("POST", "/echo", ["Host: a.test", "Content-Length: 3"])
        + b"two"
        + head("GET", "/third", ["Host: a.test"])
    )
    with RawConn(gateway.port) as c:
        c.send(data)
        rs = [c.read_response() for _ in range(3)]
    assert [r.status for r in rs] == [200, 200, 200], rs
    assert rs[0].body == b"GET /slow?delay=0.5&n=1\n"
    assert rs[1].body == b"two"
    assert rs[2].body == b"GET /third\n"


def test_pipelined_valid_then_invalid(gateway, origin):
    """A valid request, then an invalid one, then a smuggled one: the first is answered,
    the second rejected, the third never parsed."""
    data = head("GET", "/ok1", ["Host: a.test"]) + head("GET", "/bad", ["Host: a.test", "Content-Length: -1"]) + SMUGGLED
    ex = exchange(gateway.port, data)
    finals = [r for r in ex.responses if r.status >= 200]
    assert [r.status for r in finals] == [200, 400], ex
    assert ex.closed
    reqs = origin.wait_requests(1)
    assert [r.target for r in reqs] == ["/ok1"], reqs
    no_smuggled(origin)


# ---------------------------------------------------------------- bodies that look like requests
# Three requests whose first two bodies (Content-Length, then chunked) hold a
# request's bytes: each echoed as a body, the inner request never parsed.
# Also sent over TLS by test_reliability_matrix_qa.py.
INNER_CHUNK_BODY = b"0\r\n\r\n" + SMUGGLED
REQUESTS_IN_BODIES = (
    head(target="/echo", headers=("Host: a.test", f"Content-Length: {len(SMUGGLED)}"))
    + SMUGGLED
    + head(target="/echo", headers=("Host: a.test", "Transfer-Encoding: chunked"))
    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(INNER_CHUNK_BODY), INNER_CHUNK_BODY)
    + head("GET", "/last", ("Host: a.test", "Connection: close"))
)


def test_request_inside_body_not_parsed(gateway, origin):
    """A body (CL or chunked) whose bytes look like requests stays a body."""
    inner, chunk_body = SMUGGLED, INNER_CHUNK_BODY
    ex = exchange(gateway.port, REQUESTS_IN_BODIES)
    assert ex.statuses == [200, 200, 200], ex
    assert [r.body for r in ex.responses] == [inner, chunk_body, b"GET /last\n"]
    no_smuggled(origin)
    reqs = origin.wait_requests(3, complete=True)
    assert [q.path for q in reqs] == ["/echo", "/echo", "/last"], reqs
    for q in reqs:
        assert_clean_forward(q)


@pytest.mark.parametrize("cl", ["005", "0"], ids=["leading-zeros", "zero"])
def test_content_length_digit_forms_accepted(gateway, origin, cl):
    """1*DIGIT includes leading zeros: accepted, and the body is exactly that long."""
    n = int(cl)
    data = head(target="/echo", headers=("Host: a.test", f"Content-Length: {cl}", "Connection: close")) + b"hello"[:n]
    ex = exchange(gateway.port, data)
    assert ex.statuses == [200] and ex.responses[0].body == b"hello"[:n], ex
    req = origin.wait_requests(1, complete=True)[0]
    assert_clean_forward(req, b"hello"[:n])


def test_many_tiny_chunks(gateway, origin):
    body = b"1\r\nx\r\n" * 20000 + b"0\r\n\r\n"
    ex = exchange(gateway.port, head(target="/sink", headers=("Host: a.test", "Transfer-Encoding: chunked", "Connection: close")) + body)
    assert ex.statuses == [200], ex
    assert ex.responses[0].body.split()[0] == b"20000"


# ---------------------------------------------------------------- bodies on gateway-served routes
@pytest.mark.parametrize("route", ["/healthz", "/redirect"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_on_local_route_is_consumed_not_parsed(gateway, origin, route, framing):
    """A request the gateway answers itself may carry a body: the body is read (or the
    connection closed), never parsed as the next request."""
    inner = SMUGGLED
    if framing == "chunked":
        hdr, body = "Transfer-Encoding: chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    else:
        hdr, body = f"Content-Length: {len(inner)}", inner
    data = head("POST", route, ("Host: a.test", hdr)) + body + head("GET", "/next", ("Host: a.test", "Connection: close"))
    ex = exchange(gateway.port, data)
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals, ex
    no_smuggled(origin)
    # either both requests answered in order (body skipped), or the connection closed after the first
    assert len(finals) in (1, 2), ex
    if len(finals) == 2:
        assert finals[1].status == 200 and finals[1].body == b"GET /next\n", ex
    else:
        assert ex.closed, ex
