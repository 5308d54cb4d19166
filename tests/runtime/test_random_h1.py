"""Seeded random and mutation testing of the HTTP/1.1 request path
(RELIABILITY.md, "HTTP/1.1 framing" and "Resource limits"): many requests
generated from one seed, valid ones and mutations of them, against the real
hello_gateway and the recording origin.

Each case is one connection: one to four requests (several pipelined in one
write), written in pieces cut at random byte offsets, sometimes followed by a
half-close. A case is built by `random.Random(seed, case number)` alone, so
one failing case replays by itself:

    BLITZ_RANDOM_SEED=1234 BLITZ_RANDOM_CASE=57 pytest tests/runtime/test_random_h1.py

(`BLITZ_RANDOM_CASES` / `BLITZ_RANDOM_SECONDS` change the run's bounds,
1500 cases or 45 s by default.) A failure prints the seed, the case, the
mutation and the exact bytes.

Checked after every case:
- the gateway is alive and every read ends (a 5 s bound: no hang);
- a valid request gets the origin's 200 with its body echoed, and the origin
  got exactly that request: same method, target, end-to-end fields (names
  and values, in order) and body bytes, re-framed (CRLF, one Host, one
  framing header);
- a mutation RELIABILITY.md says is invalid gets one 4xx/5xx then a close,
  or just a close; the requests pipelined after it are never answered nor
  forwarded, and no upstream request of the case is ever completed;
- a mutation whose verdict the spec leaves open (duplicate equal lengths,
  CL with TE, bare LF, random byte flips, truncations) is either rejected
  as above, or forwarded with a meaning taken from what was sent: the
  method and target as in a sent request line, each forwarded end-to-end
  field a field line that was sent, a body that is what the client got back;
- a bystander keep-alive connection is served after every case;
- RSS stays bounded over the run and the fd count returns to its baseline.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from dataclasses import dataclass, field

import pytest

from support.client import Closed, RawConn
from support.gateway import CaseResources

SEED = int(os.environ.get("BLITZ_RANDOM_SEED", "20261127"))
MAX_CASES = int(os.environ.get("BLITZ_RANDOM_CASES", "1500"))
MAX_SECONDS = float(os.environ.get("BLITZ_RANDOM_SECONDS", "45"))
ONLY_CASE = os.environ.get("BLITZ_RANDOM_CASE")

READ_BOUND = 5.0
# Fields the gateway adds or rewrites itself (test_reliability_qa.py).
GATEWAY_FIELDS = {"x-forwarded-for", "x-forwarded-proto", "via", "x-request-id", "forwarded"}
# Names the generator never uses for its own end-to-end fields.
RESERVED = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "expect", "proxy-connection", "proxy-authorization", "proxy-authenticate",
} | GATEWAY_FIELDS
TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = bytes(range(0x21, 0x7F))
OBS_TEXT = bytes(range(0x80, 0x100))
PCHAR = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
NOT_TCHAR = bytes(b for b in range(256) if b not in TCHAR and b not in b":\r\n")
BAD_VALUE_BYTES = bytes([*range(0, 9), 0x0B, 0x0C, 0x0D, *range(0x0E, 0x20), 0x7F])

# A gateway of its own, with short timeouts so that nothing waits long.
OPTS = dict(header_timeout=2, body_timeout=2, response_timeout=5)


# ------------------------------------------------------------------ requests


@dataclass
class Req:
    """One valid request, and how it is written."""

    tag: str
    method: str
    target: str
    host: bytes
    fields: list  # [(name, value)] end-to-end, as meant (no OWS)
    body: bytes
    framing: str  # none | length | chunked
    ows: list = field(default_factory=list)  # (before, after) per field
    chunk_sizes: list = field(default_factory=list)
    chunk_exts: list = field(default_factory=list)
    size_forms: list = field(default_factory=list)  # how each size is spelt
    trailers: list = field(default_factory=list)
    keep_alive_field: bool = False
    absolute: bool = False  # absolute-form target (the gateway forwards origin-form)
    listed: bytes = b""  # a field Connection names: sent, never forwarded

    def head_lines(self) -> list[bytes]:
        target = f"http://{self.host.decode()}{self.target}" if self.absolute else self.target
        lines = [f"{self.method} {target} HTTP/1.1".encode(), b"Host: " + self.host]
        for (n, v), (a, b) in zip(self.fields, self.ows):
            lines.append(n + b":" + a + v + b)
        if self.listed:
            lines += [b"Connection: " + (b"keep-alive, " if self.keep_alive_field else b"") + self.listed,
                      self.listed + b": dropped"]
        elif self.keep_alive_field:
            lines.append(b"Connection: keep-alive")
        if self.framing == "length":
            lines.append(b"Content-Length: %d" % len(self.body))
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
        return lines

    def body_bytes(self) -> bytes:
        if self.framing == "length":
            return self.body
        if self.framing != "chunked":
            return b""
        out, pos = bytearray(), 0
        for size, ext, form in zip(self.chunk_sizes, self.chunk_exts, self.size_forms):
            out += form + ext + b"\r\n" + self.body[pos : pos + size] + b"\r\n"
            pos += size
        out += b"0\r\n" + b"".join(t + b"\r\n" for t in self.trailers) + b"\r\n"
        return bytes(out)

    def encode(self, lines: list[bytes] | None = None, body: bytes | None = None) -> bytes:
        lines = self.head_lines() if lines is None else lines
        return b"\r\n".join(lines) + b"\r\n\r\n" + (self.body_bytes() if body is None else body)


def rand_bytes(rng: random.Random, alphabet: bytes, lo: int, hi: int) -> bytes:
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def rand_value(rng: random.Random) -> bytes:
    """A field value: VCHAR and obs-text, inner SP/HTAB, never at the ends."""
    alphabet = VCHAR * 4 + OBS_TEXT + b" \t"
    v = rand_bytes(rng, alphabet, 1, 40).strip(b" \t")
    return v or b"v"


def rand_name(rng: random.Random) -> bytes:
    while True:
        n = b"x-" + rand_bytes(rng, TCHAR, 1, 12)
        if n.lower().decode() not in RESERVED:
            return n


def size_form(rng: random.Random, size: int) -> bytes:
    s = b"%x" % size
    r = rng.random()
    if r < 0.2:
        s = s.upper()
    elif r < 0.3:
        s = b"0" * rng.randint(1, 3) + s
    return s


def valid_request(rng: random.Random, tag: str) -> Req:
    framing = rng.choice(["none", "none", "length", "chunked"])
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] if framing == "none" else ["POST", "PUT", "PATCH"])
    segment = rand_bytes(rng, PCHAR, 0, 20).decode()
    # "." and ".." would be forwarded normalised away (runtime/README.md)
    path = "/echo/" + tag + "/" + (segment + "x" if segment in (".", "..") else segment)
    if rng.random() < 0.3:
        path += "?" + rand_bytes(rng, PCHAR + b"/?", 0, 20).decode()
    host = rng.choice([b"a.test", b"a.test:8080", b"127.0.0.1", b"[::1]:1", b"xn--bcher-kva.example"])
    n = rng.randint(0, 6)
    fields = [(rand_name(rng), rand_value(rng)) for _ in range(n)]
    if fields and rng.random() < 0.2:  # a repeated name, both kept in order
        fields.append((fields[0][0].upper(), rand_value(rng)))
    ows = [(rng.choice([b"", b" ", b"\t", b"  "]), rng.choice([b"", b"", b" ", b"\t "])) for _ in fields]
    body = b"" if framing == "none" else rand_bytes(rng, bytes(range(256)), 0, rng.choice([10, 300, 3000]))
    req = Req(tag, method, path, host, fields, body, framing, ows, keep_alive_field=rng.random() < 0.2)
    req.absolute = rng.random() < 0.1
    if rng.random() < 0.15:
        req.listed = rand_name(rng)
        if req.listed.lower() in {n.lower() for n, _ in fields}:
            req.listed = b""
    if framing == "chunked":
        left = len(body)
        while left:
            size = min(left, rng.randint(1, 1200))
            req.chunk_sizes.append(size)
            left -= size
        req.chunk_exts = [rng.choice([b"", b"", b";a=b", b";x", b';q="v;w"', b" ;y=1"]) for _ in req.chunk_sizes]
        req.size_forms = [size_form(rng, s) for s in req.chunk_sizes]
        if rng.random() < 0.3:
            req.trailers = [b"X-Trailer: " + rand_value(rng)]
    return req


# ----------------------------------------------------------------- mutations


def mutate(rng: random.Random, req: Req) -> tuple[str, str, bytes]:
    """(name, verdict, bytes): verdict "reject" (RELIABILITY.md names it
    invalid) or "open" (either a rejection or a faithful forward)."""
    lines = req.head_lines()
    body = req.body_bytes()

    def at_field() -> int:
        return rng.randrange(1, len(lines))

    def insert(b: bytes, pos: int, x: bytes) -> bytes:
        return b[:pos] + x + b[pos:]

    kind = rng.choice(
        [
            "name-byte", "value-byte", "space-before-colon", "obs-fold", "leading-space-line",
            "empty-name", "bad-length", "lengths-differ", "bad-te", "te-on-1.0", "no-host",
            "two-hosts", "bad-host", "bad-chunk", "bad-request-line", "lengths-equal", "length-and-te",
            "bare-lf", "byte-flip", "byte-insert", "byte-delete", "truncate", "te-case",
        ]
    )
    reject = "reject"
    if kind == "name-byte":
        i = rng.randrange(1, len(lines))
        name, _, rest = lines[i].partition(b":")
        lines[i] = insert(name, rng.randrange(len(name) + 1), bytes([rng.choice(NOT_TCHAR)])) + b":" + rest
    elif kind == "value-byte":
        i = at_field()
        name, _, rest = lines[i].partition(b":")
        lines[i] = name + b":" + insert(rest, rng.randrange(len(rest) + 1), bytes([rng.choice(BAD_VALUE_BYTES)]))
    elif kind == "space-before-colon":
        i = at_field()
        name, _, rest = lines[i].partition(b":")
        lines[i] = name + rng.choice([b" ", b"\t", b"  "]) + b":" + rest
    elif kind == "obs-fold":
        i = at_field()
        lines.insert(i + 1, rng.choice([b" folded", b"\tfolded", b"  x: y"]))
    elif kind == "leading-space-line":
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice([b" X-Lead: 1", b"\tX-Lead: 1"]))
    elif kind == "empty-name":
        lines.insert(rng.randrange(1, len(lines) + 1), b": empty")
    elif kind == "bad-length":
        bad = rng.choice([b"+5", b"-5", b"0x5", b"", b"5 5", b"5,6", b"5a", b"1" * 25, b"\x0b5", b"5.0", b"\xd9\xa5"])
        lines = [ln for ln in lines if not ln.lower().startswith((b"content-length", b"transfer-encoding"))]
        lines.append(b"Content-Length: " + bad)
        body = b"hello"
    elif kind == "lengths-differ":
        lines = [ln for ln in lines if not ln.lower().startswith((b"content-length", b"transfer-encoding"))]
        a = rng.randint(0, 9)
        lines += [b"Content-Length: %d" % a, b"Content-Length: %d" % (a + rng.randint(1, 5))]
        body = b"x" * (a + 5)
    elif kind == "bad-te":
        bad = rng.choice(
            [b"gzip", b"chunked, chunked", b",chunked", b"chunked,", b"gzip, chunked", b"chunked, gzip",
             b"chunked\x0b", b"identity", b"chunkedx", b"\xa0chunked", b"chunked;q=1", b""]
        )
        lines = [ln for ln in lines if not ln.lower().startswith((b"content-length", b"transfer-encoding"))]
        lines.append(b"Transfer-Encoding: " + bad)
        body = b"5\r\nhello\r\n0\r\n\r\n"
    elif kind == "te-on-1.0":
        lines[0] = lines[0].replace(b"HTTP/1.1", b"HTTP/1.0")
        lines = [ln for ln in lines if not ln.lower().startswith((b"content-length", b"transfer-encoding"))]
        lines.append(b"Transfer-Encoding: chunked")
        body = b"5\r\nhello\r\n0\r\n\r\n"
    elif kind == "no-host":
        lines = [ln for ln in lines if not ln.lower().startswith(b"host:")]
    elif kind == "two-hosts":
        lines.insert(rng.randrange(1, len(lines) + 1), b"Host: " + rng.choice([b"a.test", b"b.test"]))
    elif kind == "bad-host":
        lines[1] = b"Host: " + rng.choice([b"a b", b"a/b", b"a.test:80x", b"a@b", b"[::1", b"a\x7fb", b"a.test, b.test"])
    elif kind == "bad-chunk":
        lines = [ln for ln in lines if not ln.lower().startswith((b"content-length", b"transfer-encoding"))]
        lines[0] = re.sub(rb"^\S+", b"POST", lines[0])
        lines.append(b"Transfer-Encoding: chunked")
        good = b"5\r\nhello\r\n"
        bad = rng.choice(
            [b"g\r\nx\r\n", b"-1\r\nx\r\n", b"0x5\r\nhello\r\n", b"f" * 20 + b"\r\nx\r\n", b"5\nhello\r\n",
             b"5\rhello\r\n", b"5 x\r\nhello\r\n", b"5\r\nhelloXX", b"5\r\nhello\n", b"\r\nhello\r\n", b"5;\x00\r\nhello\r\n"]
        )
        body = good * rng.randint(0, 2) + bad + b"0\r\n\r\n"
    elif kind == "bad-request-line":
        m, t, v = lines[0].split(b" ")
        lines[0] = rng.choice(
            [m + b"  " + t + b" " + v, m + b" " + t, m + b" " + t + b" HTTP/1.1 x", m + b" " + t + b" HTTP/2.0",
             m + b" " + t + b" http/1.1", m + b"\x00 " + t + b" " + v, m + b" " + t + b"\x7f " + v,
             m + b" " + t + b"\xff " + v, m + b" " + t + b" " + t + b" " + v, m + b" a.test:80 " + v,
             m + b" " + t.replace(b"/", b"\\", 1) + b" " + v]
            + ([] if m == b"OPTIONS" else [m + b" * " + v])
        )
    elif kind == "lengths-equal":
        reject = "open"
        if req.framing == "length":
            lines.append(b"Content-Length: %d" % len(req.body))
    elif kind == "length-and-te":
        reject = "open"
        if req.framing == "chunked":
            lines.insert(rng.randrange(1, len(lines) + 1), b"Content-Length: %d" % rng.randint(0, 20))
    elif kind == "bare-lf":
        reject = "open"
        return kind, reject, b"\n".join(lines) + b"\n\n" + body
    elif kind == "te-case":
        reject = "open"
        if req.framing == "chunked":
            lines[-1] = b"transfer-encoding: " + rng.choice([b"Chunked", b"CHUNKED", b"chunked ", b" chunked"])
    else:
        raw = req.encode(lines, body)
        pos = rng.randrange(len(raw))
        if kind == "byte-flip":
            raw = raw[:pos] + bytes([raw[pos] ^ (1 << rng.randrange(8))]) + raw[pos + 1 :]
        elif kind == "byte-insert":
            raw = insert(raw, pos, bytes([rng.randrange(256)]))
        elif kind == "byte-delete":
            raw = raw[:pos] + raw[pos + 1 :]
        else:
            raw = raw[:pos]
        return kind, "open", raw
    return kind, reject, req.encode(lines, body)


# ------------------------------------------------------------------- a case


@dataclass
class Case:
    n: int
    parts: list  # [(kind, verdict, bytes, Req)]
    cuts: list
    half_close: bool

    @property
    def data(self) -> bytes:
        return b"".join(p[2] for p in self.parts)

    def describe(self) -> str:
        kinds = [p[0] for p in self.parts]
        return (
            f"seed={SEED} case={self.n} (replay: BLITZ_RANDOM_SEED={SEED} BLITZ_RANDOM_CASE={self.n}) "
            f"parts={kinds} cuts={self.cuts} half_close={self.half_close}\ndata={self.data!r}"
        )


def make_case(n: int) -> Case:
    rng = random.Random(SEED * 1_000_003 + n)
    count = rng.choice([1, 1, 1, 2, 3, 4])
    bad_at = rng.randrange(count) if rng.random() < 0.55 else None
    parts = []
    for i in range(count):
        req = valid_request(rng, f"c{n}-{i}")
        if i == bad_at:
            kind, verdict, raw = mutate(rng, req)
        else:
            kind, verdict, raw = "valid", "valid", req.encode()
        parts.append((kind, verdict, raw, req))
        if verdict != "valid" or req.method == "GET" and rng.random() < 0.1:
            break
    total = sum(len(p[2]) for p in parts)
    cuts = sorted(rng.sample(range(1, total), min(total - 1, rng.choice([0, 0, 1, 3, 10])))) if total > 1 else []
    half_close = bad_at is not None or rng.random() < 0.3
    return Case(n, parts, cuts, half_close)


def send_case(port: int, case: Case) -> tuple[list, bool]:
    """Writes the case, reads every response; (responses, closed)."""
    c = RawConn(port, timeout=READ_BOUND)
    try:
        data, prev = case.data, 0
        for cut in case.cuts + [len(data)]:
            if not c.send(data[prev:cut]):
                break
            prev = cut
            if cut != len(data):
                time.sleep(0.001)
        if case.half_close:
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        want = sum(1 for p in case.parts if p[1] == "valid")
        responses = []
        while True:
            method = case.parts[min(len(responses), len(case.parts) - 1)][3].method
            try:
                r = c.read_response(method=method, timeout=READ_BOUND)
            except Closed:
                break
            except TimeoutError as e:
                if case.half_close or len(responses) < want:
                    raise AssertionError(f"no answer nor close within {READ_BOUND}s: {e}\n{case.describe()}")
                break
            except ValueError as e:
                raise AssertionError(f"not an HTTP response: {e}\n{case.describe()}")
            responses.append(r)
            rejected = r.status >= 400 and r.h("x-origin-conn") is None
            if rejected or not case.half_close and len(responses) == want:
                break
        closed = c.eof or c.wait_closed(READ_BOUND if case.half_close or any(r.status >= 400 for r in responses) else 0.05)
        return responses, closed
    finally:
        c.close()


# ------------------------------------------------------------------ checking


def forwarded_fields(rec) -> list:
    return [(k.lower(), v) for k, v in rec.headers if k.lower().decode("latin-1") not in GATEWAY_FIELDS | {"host", "content-length", "transfer-encoding", "connection"}]


def check_clean(rec, case: Case) -> None:
    assert rec.head_error is None, f"origin could not parse the forwarded head: {rec.head_error}\n{case.describe()}"
    assert rec.head_crlf, f"bare LF forwarded: {rec.head_raw!r}\n{case.describe()}"
    assert len(rec.header("host")) == 1, f"Host forwarded {len(rec.header('host'))} times\n{case.describe()}"
    cl, te = rec.header("content-length"), rec.header("transfer-encoding")
    assert len(cl) + len(te) <= 1, f"framing headers forwarded: CL={cl} TE={te}\n{case.describe()}"
    assert te in ([], ["chunked"]), f"forwarded TE {te}\n{case.describe()}"
    for name, value in rec.headers:
        assert name and all(b in TCHAR for b in name), f"bad forwarded name {name!r}\n{case.describe()}"
        assert not any(b in value for b in (0, 10, 13)), f"CTL forwarded in {name!r}: {value!r}\n{case.describe()}"


def check_valid(rec, resp, req: Req, case: Case) -> None:
    what = f"{req.tag}\n{case.describe()}"
    assert resp is not None and resp.status == 200, f"valid request not answered 200: {resp!r}: {what}"
    assert rec is not None, f"valid request not forwarded: {what}"
    check_clean(rec, case)
    assert rec.complete, f"forwarded request incomplete ({rec.body_error}): {what}"
    assert (rec.method, rec.target) == (req.method, req.target), f"forwarded as {rec.method} {rec.target}: {what}"
    sent = [(n.lower(), v) for n, v in req.fields]
    assert forwarded_fields(rec) == sent, f"fields forwarded {forwarded_fields(rec)} != sent {sent}: {what}"
    assert bytes(rec.body) == req.body and rec.body_len == len(req.body), f"body differs ({rec.body_len} bytes): {what}"
    assert resp.body == req.body, f"echoed body differs: {what}"


def normalised(target: bytes) -> bytes:
    """The path as the gateway forwards it: no empty or dot segments (the
    query as sent)."""
    path, q, query = target.partition(b"?")
    out: list[bytes] = []
    for seg in path.split(b"/")[1:]:
        if seg == b"..":
            out = out[:-1]
        elif seg not in (b".", b""):
            out.append(seg)
    trailing = path.endswith((b"/", b"/.", b"/..")) and out
    return b"/" + b"/".join(out) + (b"/" if trailing else b"") + q + query


def check_open(rec, resp, case: Case) -> None:
    """A forward whose exact meaning is not known: it must be one the client
    could have meant."""
    data = case.data.replace(b"\r\n", b"\n")
    check_clean(rec, case)
    line = f"{rec.method} {rec.target} ".encode("latin-1")
    # the method token may follow body bytes (a length changed by a flip):
    # the regex then takes them in, so the method is a suffix of what it found
    sent = {
        (m, normalised(t))
        for m, t in re.findall(rb"([!-~]+) (?:[hH][tT][tT][pP][sS]?://[^/ ]*)?(/[!-~]*) HTTP/1\.[01]\n", data)
    }
    method, target = rec.method.encode("latin-1"), rec.target.encode("latin-1")
    in_sent = any(m.endswith(method) and t == target for m, t in sent)
    assert line in data or in_sent, f"forwarded request line {line!r} was never sent\n{case.describe()}"
    sent_lines = {ln.strip(b" \t\r").lower() for ln in data.split(b"\n")}
    for name, value in forwarded_fields(rec):
        ok = any(ln.startswith(name + b":") and ln[len(name) + 1 :].strip(b" \t") == value.lower() for ln in sent_lines)
        assert ok, f"forwarded field {name!r}: {value!r} was never sent\n{case.describe()}"
    if rec.complete and resp is not None and resp.status == 200:
        assert resp.body == bytes(rec.body), f"client got another body than the origin\n{case.describe()}"
        assert bytes(rec.body) in case.data or rec.framing == "chunked", f"body never sent\n{case.describe()}"


def check_case(case: Case, responses: list, closed: bool, recs: list) -> None:
    finals = [r for r in responses if r.status >= 200]
    for r in finals:
        assert 200 <= r.status < 600 and r.version == "HTTP/1.1", f"odd response {r!r}\n{case.describe()}"
    by_tag = {}
    for rec in recs:
        m = re.match(r"/echo/(c\d+-\d+)/", rec.target)
        by_tag.setdefault(m.group(1) if m else None, []).append(rec)
    stopped = False
    for i, (kind, verdict, _raw, req) in enumerate(case.parts):
        resp = finals[i] if i < len(finals) else None
        mine = by_tag.pop(req.tag, [])
        assert len(mine) <= 1, f"{req.tag} forwarded {len(mine)} times\n{case.describe()}"
        rec = mine[0] if mine else None
        if stopped:
            assert resp is None and rec is None, f"request after a rejected one served: {resp!r} {rec!r}\n{case.describe()}"
            continue
        if verdict == "valid":
            check_valid(rec, resp, req, case)
            continue
        from_origin = resp is not None and resp.h("x-origin-conn") is not None
        if verdict == "open" and (resp is None or from_origin):
            # forwarded (or cut, e.g. a truncation): what was forwarded must have been sent
            if rec is not None:
                check_open(rec, resp if from_origin else None, case)
            stopped = resp is None
            continue
        assert not from_origin, f"{kind}: forwarded and answered by the origin: {resp!r}\n{case.describe()}"
        # rejected: a 4xx/5xx then close, or just a close
        if resp is not None:
            assert resp.status >= 400, f"{kind}: answered {resp.status}, not rejected\n{case.describe()}"
        assert closed, f"{kind}: connection left open after {resp!r}\n{case.describe()}"
        if rec is not None:
            assert not rec.complete, f"{kind}: upstream request completed although rejected: {rec!r}\n{case.describe()}"
            check_clean(rec, case)
        stopped = True
    # a mutation may spell another target: whatever else arrived must be clean too
    for tag, rest in by_tag.items():
        for rec in rest:
            check_clean(rec, case)
            if rec.complete:
                check_open(rec, None, case)
    rejected = [i for i, r in enumerate(finals) if r.status >= 400 and r.h("x-origin-conn") is None]
    assert not rejected or rejected[0] == len(finals) - 1, f"answers after a rejection: {finals!r}\n{case.describe()}"
    if all(p[1] != "open" for p in case.parts):
        assert len(finals) <= len(case.parts), f"more responses than requests: {responses!r}\n{case.describe()}"


# -------------------------------------------------------------------- tests


@pytest.mark.timeout(150)
def test_random_h1_requests(start_gateway, origin):
    gw = start_gateway(**OPTS)
    bystander = RawConn(gw.port, timeout=READ_BOUND)

    def serve_bystander(n: int) -> None:
        bystander.send(b"GET /__bystander/%d HTTP/1.1\r\nHost: b.test\r\n\r\n" % n)
        r = bystander.read_response(timeout=READ_BOUND)
        assert r.status == 200, f"bystander not served after case {n}: {r!r} (seed={SEED})"

    serve_bystander(-1)
    cases = [int(ONLY_CASE)] if ONLY_CASE else range(MAX_CASES)
    started = time.monotonic()
    print(f"\nseed={SEED} (BLITZ_RANDOM_SEED to change it)")
    res = CaseResources(gw)
    kinds: dict[str, int] = {}
    for n in cases:
        if time.monotonic() - started > MAX_SECONDS:
            break
        case = make_case(n)
        first = len(origin.requests)
        responses, closed = send_case(gw.port, case)
        serve_bystander(n)
        assert gw.alive(), f"gateway died: {gw.crashed() or gw.tail()}\n{case.describe()}"
        with origin.cond:
            recs = [r for r in origin.requests[first:] if not r.target.startswith("/__bystander")]
        check_case(case, responses, closed, recs)
        for p in case.parts:
            kinds[p[0]] = kinds.get(p[0], 0) + 1
        res.case_done()
        if len(origin.requests) > 2000:
            origin.reset()
    elapsed = time.monotonic() - started
    print(f"{res.done} cases in {elapsed:.1f}s; parts by kind: {dict(sorted(kinds.items()))}")
    bystander.close()
    # the upstream pool may hold a connection or two more or fewer
    res.check(32 * 1024, 4, f"seed={SEED}")
