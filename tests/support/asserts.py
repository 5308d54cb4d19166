"""Assertions shared by the gateway end-to-end tests."""

from __future__ import annotations

from .client import Exchange, request
from .origin import HOP_BY_HOP, Origin, RecordedRequest

SENTINEL = "/__sentinel"


def assert_rejected(ex: Exchange, statuses=(400,), what: str = "") -> None:
    """Exactly one final response with a status in `statuses`, then the connection closed."""
    finals = [r for r in ex.responses if r.status >= 200]
    assert finals, f"{what}: no response at all (closed={ex.closed}, leftover={ex.leftover[:200]!r})"
    assert finals[0].status in statuses, f"{what}: expected {statuses}, got {finals[0]!r}"
    assert len(finals) == 1, f"{what}: bytes after the rejected request were answered: {ex.responses!r}"
    assert ex.closed, f"{what}: connection left open after {finals[0].status}"


def assert_rejected_or_closed(ex: Exchange, statuses=(400,), what: str = "") -> None:
    """Either one response in `statuses` then close, or a closed connection with no response."""
    finals = [r for r in ex.responses if r.status >= 200]
    if finals:
        assert_rejected(ex, statuses, what)
    else:
        assert ex.closed, f"{what}: neither a response nor a closed connection (leftover={ex.leftover[:200]!r})"


def assert_origin_saw_nothing(gateway_port: int, origin: Origin, what: str = "") -> None:
    """After a rejected request, the origin received nothing from it.

    A known-good sentinel request goes through the gateway on a fresh
    connection; once the origin has it, anything the gateway had forwarded for
    the rejected request would already be there too. The upstream bytes since
    the test started must be exactly the sentinel request."""
    r = request(gateway_port, "GET", SENTINEL)
    assert r.status == 200, f"{what}: sentinel request failed: {r!r}"
    reqs = origin.wait_requests(1)
    others = [q for q in reqs if q.target != SENTINEL]
    assert not others, f"{what}: origin received {others!r}"
    assert len(reqs) == 1, f"{what}: origin received {reqs!r}"
    raw = origin.raw_since_reset()
    assert raw == reqs[0].head_raw, f"{what}: stray upstream bytes besides the sentinel: {raw[:600]!r}"


def assert_clean_forward(req: RecordedRequest, expect_body: bytes | None = None) -> None:
    """The request the origin got was re-framed by the gateway: CRLF lines, one Host,
    at most one framing header (exactly one when there is a body), no hop-by-hop
    headers, no control characters, and the body complete."""
    assert req.head_error is None, f"origin could not parse the forwarded head: {req.head_error}: {req!r}"
    assert req.head_crlf, f"forwarded head has bare LF line endings: {req.head_raw!r}"
    assert req.version == "HTTP/1.1", f"forwarded as {req.version}: {req!r}"
    assert len(req.header("host")) == 1, f"forwarded Host headers: {req.header('host')}: {req!r}"
    cl, te = req.header("content-length"), req.header("transfer-encoding")
    assert len(cl) + len(te) <= 1, f"several framing headers forwarded: CL={cl} TE={te}: {req!r}"
    if te:
        assert te == ["chunked"], f"forwarded Transfer-Encoding {te}"
    if cl:
        assert cl[0].isdigit() and cl[0].isascii(), f"forwarded Content-Length {cl}"
    if req.body_len:
        assert cl or te, f"body forwarded without a framing header: {req!r}"
    for name, value in req.headers:
        assert name and all(33 <= b < 127 and b != ord(":") for b in name), f"bad forwarded header name {name!r}"
        assert not any(b in value for b in (0, 10, 13)), f"control char in forwarded header {name!r}: {value!r}"
    names = set(req.header_names())
    hop = (names & HOP_BY_HOP) - {"transfer-encoding", "connection"}
    hop |= {n for n in names if n.startswith("proxy-")}
    assert not hop, f"hop-by-hop headers forwarded: {sorted(hop)}: {req!r}"
    for v in req.header("connection"):
        for tok in v.split(","):
            assert tok.strip().lower() in ("keep-alive", "close", ""), f"forwarded Connection: {v!r}"
    assert req.complete, f"forwarded request not complete: {req.body_error}: {req!r}"
    if expect_body is not None:
        assert req.body_len == len(expect_body), f"body length {req.body_len} != {len(expect_body)}"
        if len(expect_body) <= len(req.body):
            assert bytes(req.body) == expect_body, f"forwarded body differs: {bytes(req.body[:200])!r}"
