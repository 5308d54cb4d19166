"""Seeded random upstream answers, right and wrong (RELIABILITY.md,
"Upgrades and faults"), against the real hello_gateway and a scripted
raw-socket origin (`support/rogue_origin.py`), for clients speaking
HTTP/1.1 and HTTP/2, each in cleartext and over TLS.

Each case is one client connection (HTTP/1.1, HTTP/1.1 over TLS, h2c or h2
over TLS) carrying one to three requests in turn (GET, HEAD, or POST with a
body sent with a length or chunked); the origin answers each with its own
seeded random answer, written in random pieces with short pauses. A case is
built by `random.Random(seed, case number)` alone, so one case replays by
itself:

    BLITZ_RANDOM_SEED=1234 BLITZ_RANDOM_CASE=57 pytest tests/runtime/test_random_origin.py

(`BLITZ_RANDOM_CASES` / `BLITZ_RANDOM_SECONDS` change the run's bounds, 1500
cases or 40 s by default.) A failure prints the seed, the case and every
answer's exact bytes.

Answers are of three verdicts.

valid -- the client gets the same status, the same end-to-end fields (on
  HTTP/1.1 in the same order; on HTTP/2 the same values per name, in order,
  as RFC 9110 5.3 allows regrouping) and the exact body bytes (none for
  HEAD, 204, 304), ended properly: statuses 200-503, 1xx interim answers
  first (relayed or not here; RFC 9110 15.2 wants them relayed, pinned
  below), content-length, chunked
  with extensions and trailers (dropped), close-delimited, HTTP/1.0 with and
  without keep-alive, `connection: close`, HEAD answers declaring a length,
  304 with a length, repeated names, obs-text in values, heads of tens of
  KiB, hop-by-hop fields (`Connection` and what it names, `Keep-Alive`,
  `Proxy-Connection`, `Trailer`, `Upgrade`: never relayed). The gateway may
  add `via` and, when the origin sent none, `date` (RFC 9110 7.6.3, 6.6.1);
  a content-length it shows must be the body's, or for HEAD/304 the one
  the origin declared. Also valid: an answer with bytes after its end (more
  body than declared, a body after HEAD/204/304, a second response nobody
  asked for), and an answer written before the origin read the request body.

fault -- one right answer: the client gets a 502 (504 for a stall longer
  than --response-timeout) the gateway wrote itself, or, when the fault
  came after a complete head, a response that is visibly cut: the origin's
  status and fields, a prefix of the body bytes sent before the fault, and
  on HTTP/1.1 no terminating chunk or fewer bytes than the content-length,
  then a closed connection; on HTTP/2 RST_STREAM and never END_STREAM (and
  the connection lives on). Faults: a garbage status line, a line without a
  colon or with an empty name (not field lines at all), conflicting or
  invalid Content-Length (RFC 9112 6.3: 502), a 101 nobody asked for (9110
  15.2.2), a close, reset or stall inside the head or the body, invalid
  chunk framing (size not hex, bare LF, overflow, junk, no CRLF after the
  data, a trailer section with obs-fold, bare LF or NUL).

open -- RFC 9110/9112 leave the recipient a choice, and either is
  accepted, nothing else: a 502, or the answer forwarded as the RFC says it
  may be read: Content-Length twice with one value or as a list of equal
  values (9110 8.6), Content-Length with Transfer-Encoding (9112 6.3: the
  chunked body decoded), bare LF line ends (9112 2.2), whitespace before a
  colon (9112 5.1: removed), NUL in a value (9110 5.5: replaced by SP),
  obs-fold (9112 5.2: replaced by SP), Transfer-Encoding on HTTP/1.0 (9112
  6.1: faulty framing; 502, or decoded and the connection closed).

Checked after every case, besides the above:
- nothing hangs: every read is bounded (6 s; the gateway runs with a 1 s
  response timeout, so a stall costs one second);
- each request reaches the origin once, or twice when the gateway replayed a
  GET/HEAD whose pooled connection closed before a byte of the answer (the
  keep-alive race: the second try on a fresh connection);
- an upstream connection that carried a fault, bytes past its answer, an
  early answer, an answer ending with a close, or a fault the gateway
  answered with 502/504 or a cut, never carries another request (the origin
  knows each request's connection) and is closed by the gateway; no byte
  is sent on a connection after an answer that closed it;
- a bystander request is served after every case, the gateway stays alive,
  RSS stays bounded and the fd count returns to its baseline; and pooled
  connections were reused at all during the run (else the reuse check
  above proved nothing).

Two bugs the run found have regression tests below: an HTTP/2 client got
a bare RST_STREAM instead of a 502 for a body broken in the bytes that came
with its head, and 1xx interim answers were not relayed (both fixed).
"""

from __future__ import annotations

import os
import random
import re
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

import hpack
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame, WindowUpdateFrame

from support.client import RawConn
from support.gateway import CaseResources
from support.h2client import RawH2
from support.pki import Pki
from support.rogue_origin import RogueOrigin, Script

SEED = int(os.environ.get("BLITZ_RANDOM_SEED", "20261127"))
MAX_CASES = int(os.environ.get("BLITZ_RANDOM_CASES", "1500"))
MAX_SECONDS = float(os.environ.get("BLITZ_RANDOM_SECONDS", "40"))
ONLY_CASE = os.environ.get("BLITZ_RANDOM_CASE")

RESPONSE_TIMEOUT = 1
READ_BOUND = 6.0
OPTS = {"workers": 1, "response_timeout": RESPONSE_TIMEOUT, "connect_timeout": 1, "header_timeout": 3,
        "body_timeout": 3}
CLIENTS = ["h1", "h1-tls", "h2c", "h2-tls"]

TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = bytes(range(0x21, 0x7F))
OBS_TEXT = bytes(range(0x80, 0x100))
# Names the generator never picks for end-to-end fields: framing, hop-by-hop,
# and what the gateway may add itself.
RESERVED = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"te", b"trailer",
            b"upgrade", b"host", b"via", b"date", b"x-rogue-answer"}
COMMON_NAMES = [b"Content-Type", b"Cache-Control", b"ETag", b"Set-Cookie", b"Vary", b"Location",
                b"Last-Modified", b"Content-Language", b"X-Frame-Options", b"Server"]
INTERIMS = [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 102 Processing\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"]
STATUSES = [200] * 8 + [201, 202, 203, 204, 206, 301, 302, 304, 400, 404, 410, 500, 503]
GARBAGE_STATUS_LINES = [b"HTTP/1.1 2x0 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/2.0 200 OK",
                        b"http/1.1 200 OK", b"HTTP/1.1 200 O\x01K", b"HTTP/1.1 OK", b"ICY 200 OK",
                        b"\x16\x03\x01\x00\xa5\x01\x00", b"SSH-2.0-OpenSSH_9.6", b"HTTP/1.1 099 Low"]


# ------------------------------------------------------------------ answers


@dataclass
class Draft:
    """A valid answer, in parts a fault can change."""

    version: bytes
    status: int
    reason: bytes
    interim: bytes
    lines: list  # field lines as written
    expected: list  # [(lower name, bytes or re.Pattern)]: the end-to-end fields the client must get
    framing: str  # length | chunked | close | none
    body: bytes
    chunks: list = field(default_factory=list)  # chunked: each chunk's wire bytes, the last chunk (+ trailers) last
    declared: int | None = None  # the content-length a bodiless answer declared
    keep: bool = True
    bodiless: bool = False
    sep: bytes = b"\r\n"

    def head(self) -> bytes:
        line = self.version + b" %d " % self.status + self.reason
        return self.interim + self.sep.join([line, *self.lines]) + self.sep + self.sep

    def body_wire(self) -> bytes:
        if self.bodiless:
            return b""
        return b"".join(self.chunks) if self.framing == "chunked" else self.body

    def wire(self) -> bytes:
        return self.head() + self.body_wire()


@dataclass
class Answer:
    tag: str
    kind: str
    verdict: str  # valid | fault | open
    draft: Draft
    script: Script
    reusable: bool  # the upstream connection may carry another request afterwards
    local: tuple = ()  # statuses the gateway may answer itself instead
    cut_ok: bool = False  # the fault came after a complete head: a visible cut is right too
    good_body: bytes = b""  # the body bytes sent before the fault (a cut shows a prefix of them)
    silent: bool = False  # the connection ends before any answer byte

    def describe(self) -> str:
        return f"{self.tag} {self.verdict}:{self.kind} end={self.script.end} early={self.script.early} " \
               f"pieces={[len(p) for p in self.script.pieces]} wire={self.script.wire[:3000]!r}"


def rand_bytes(rng: random.Random, alphabet: bytes, lo: int, hi: int) -> bytes:
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def rand_value(rng: random.Random, longest: int = 40) -> bytes:
    """VCHAR and obs-text with inner SP/HTAB, never at the ends."""
    v = rand_bytes(rng, VCHAR * 4 + OBS_TEXT + b" \t", 1, longest).strip(b" \t")
    return v or b"v"


def rand_name(rng: random.Random) -> bytes:
    while True:
        n = rng.choice(COMMON_NAMES) if rng.random() < 0.4 else b"X-" + rand_bytes(rng, TCHAR, 1, 12)
        if rng.random() < 0.3:
            n = n.lower() if rng.random() < 0.5 else n.upper()
        if n.lower() not in RESERVED and not n.lower().startswith(b"proxy-"):
            return n


def chunked_payload(wire: bytes) -> bytes:
    """The payload in (a prefix of) chunked bytes, leniently: what a decoder
    could have passed on before the wire ended or broke."""
    out, pos = bytearray(), 0
    while True:
        eol = wire.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out)
        try:
            size = int(wire[pos:eol].split(b";")[0].strip(b" \t"), 16)
        except ValueError:
            return bytes(out)
        if size == 0:
            return bytes(out)
        data = wire[eol + 2 : eol + 2 + size]
        out += data
        if len(data) < size:
            return bytes(out)
        pos = eol + 2 + size + 2


def make_chunks(rng: random.Random, body: bytes, trailers: bool) -> list:
    chunks, pos = [], 0
    while pos < len(body):
        size = min(len(body) - pos, rng.choice([1, 7, 100, 1000, 5000, 16384]))
        spelt = b"%x" % size
        if rng.random() < 0.2:
            spelt = spelt.upper()
        elif rng.random() < 0.1:
            spelt = b"00" + spelt
        ext = rng.choice([b""] * 4 + [b";a=b", b";x", b';q="v;w"', b" ;y=1", b";n=\"\\\"\""])
        chunks.append(spelt + ext + b"\r\n" + body[pos : pos + size] + b"\r\n")
        pos += size
    last = b"0" + rng.choice([b"", b"", b";end=1"]) + b"\r\n"
    if trailers:
        last += b"X-Trailer: " + rand_value(rng) + b"\r\n"
    chunks.append(last + b"\r\n")
    return chunks


def valid_draft(rng: random.Random, method: str, tag: str, bodied: bool = False) -> Draft:
    """A random valid answer to `method` (`bodied`: one with a body whatever the draw)."""
    v10 = rng.random() < 0.08
    version = b"HTTP/1.0" if v10 else b"HTTP/1.1"
    status = 200 if bodied else rng.choice(STATUSES)
    bodiless = method == "HEAD" or status in (204, 304)
    reason = rng.choice([b"OK", b"OK", b"", b"Whatever It Is", b"caf\xe9 cr\xe8me"])
    interim = b"".join(rng.sample(INTERIMS, rng.randint(1, 2))) if not v10 and rng.random() < 0.15 else b""
    fields: list = [(b"x-rogue-answer", tag.encode())]
    count = rng.choice([0, 1, 2, 3, 5, 8, 40] if rng.random() < 0.97 else [150])
    for _ in range(count):
        fields.append((rand_name(rng), rand_value(rng)))
    if fields and rng.random() < 0.25:  # a repeated name, in another case
        name = rng.choice(fields)[0]
        fields.insert(rng.randrange(len(fields) + 1), (name.swapcase(), rand_value(rng)))
    if rng.random() < 0.05:  # a long head
        fields.append((b"X-Long", rand_value(rng, 1) + rand_bytes(rng, VCHAR + OBS_TEXT, 4000, 20000)))
    if rng.random() < 0.2:
        fields.append((b"Date", b"Fri, 27 Nov 2026 19:00:00 GMT"))
    rng.shuffle(fields)
    lines = [n + b":" + rng.choice([b"", b" ", b" ", b"\t", b"  "]) + v + rng.choice([b"", b"", b" ", b"\t "])
             for n, v in fields]
    expected = [(n.lower(), v) for n, v in fields]

    if bodiless:
        # a HEAD or 304 answer may carry the framing fields of the body it does not send
        framing = rng.choice(["none", "none", "length"] + ([] if v10 else ["chunked"]))
        if status == 204:
            framing = "none"  # RFC 9110 8.6: never a length on 204
    elif v10:
        framing = rng.choice(["length", "length", "close"])
    else:
        framing = rng.choice(["length", "length", "chunked", "close"])
    longest = rng.choice([1, 17, 300, 3000, 20000] + ([] if bodied else [0]))
    body = b"" if bodiless else rand_bytes(rng, bytes(range(256)), 1 if bodied else 0, longest)
    draft = Draft(version, status, reason, interim, lines, expected, framing, body, bodiless=bodiless)
    hop: list = []
    if framing == "length":
        draft.declared = len(body) if not bodiless or rng.random() < 0.5 else rng.randint(0, 99999)
        hop.append(rng.choice([b"Content-Length", b"content-length"]) + b": %d" % draft.declared)
    elif framing == "chunked":
        hop.append(b"Transfer-Encoding: chunked")
        trailers = not bodiless and rng.random() < 0.3
        if trailers:
            hop.append(b"Trailer: X-Trailer")
        draft.chunks = make_chunks(rng, body, trailers)
    if v10:
        draft.keep = framing != "close" and rng.random() < 0.5
        if draft.keep:
            hop.append(b"Connection: keep-alive")
    else:
        draft.keep = framing != "close" and rng.random() < 0.8
        listed = b"X-Hop-" + rand_bytes(rng, TCHAR, 1, 6)
        if rng.random() < 0.25:
            hop += [b"Connection: " + (b"keep-alive, " if draft.keep else b"close, ") + listed, listed + b": gone"]
        elif not draft.keep:
            hop.append(rng.choice([b"Connection: close", b"connection: Close", b"Connection: keep-alive, close"]))
    if rng.random() < 0.1:
        hop.append(rng.choice([b"Keep-Alive: timeout=5, max=100", b"Proxy-Connection: keep-alive", b"Upgrade: h2c"]))
    for h in hop:
        lines.insert(rng.randrange(len(lines) + 1), h)
    return draft


def cut_into_pieces(rng: random.Random, wire: bytes, tail: bytes = b"") -> tuple[list, list]:
    """`wire` in random pieces, `tail` glued to the last one (bytes past an
    answer arrive with its end, so they are there before anything else)."""
    n = rng.choice([0, 0, 1, 2, 4, 8])
    cuts = sorted(rng.sample(range(1, len(wire)), min(n, len(wire) - 1))) if len(wire) > 1 else []
    pieces = [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)])]
    pieces[-1] += tail
    pauses = [0.0] + [rng.choice([0, 0, 0.001, 0.005, 0.02]) for _ in pieces[1:]]
    return pieces, pauses


def valid_answer(rng: random.Random, method: str, has_body: bool, tag: str) -> Answer:
    d = valid_draft(rng, method, tag)
    wire = d.wire()
    end = "keep" if d.keep else "close"
    kind, extra, early = "valid", b"", False
    r = rng.random()
    if r < 0.12 and (d.bodiless or d.framing in ("length", "chunked")):
        kind = "body-after-bodiless" if d.bodiless else "more-than-declared" if d.framing == "length" \
            else "bytes-after-last-chunk"
        extra = rng.choice([b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged", b"forged",
                            rand_bytes(rng, bytes(range(33, 256)), 1, 50)])
        if d.bodiless and d.framing == "length" and rng.random() < 0.5:
            extra = b"b" * min(d.declared or 1, 2000)  # a body after HEAD/304, as long as declared
        end = "wait"
    elif r < 0.25 and has_body:
        kind, early, end = "early-answer", True, "close"
    pieces, pauses = cut_into_pieces(rng, wire, extra)
    script = Script(pieces, pauses, end=end, early=early)
    reusable = end == "keep"
    return Answer(tag, kind, "valid", d, script, reusable)


OPEN_KINDS = ["cl-twice-equal", "cl-list-equal", "cl-and-te", "bare-lf", "space-before-colon", "nul-in-value",
              "obs-fold", "te-on-http10"]
HEAD_FAULTS = ["garbage-status-line", "no-colon", "empty-name", "cl-conflict", "cl-invalid", "unasked-101",
               "close-in-head", "reset-in-head", "stall-in-head"]
BODY_FAULTS = ["close-in-body", "reset-in-body", "stall-in-body", "bad-chunk"]


def open_answer(rng: random.Random, method: str, tag: str) -> Answer:
    kind = rng.choice(OPEN_KINDS)
    framed = {"cl-and-te": "chunked", "cl-twice-equal": "length", "cl-list-equal": "length"}.get(kind)
    d = valid_draft(rng, method, tag, bodied=framed is not None)
    while framed and not d.bodiless and d.framing != framed:
        d = valid_draft(rng, method, tag, bodied=True)
    if kind in ("cl-twice-equal", "cl-list-equal", "cl-and-te", "te-on-http10") and d.bodiless:
        kind = "bare-lf"  # framing kinds need a body: another open kind
    if kind in ("cl-twice-equal", "cl-list-equal") and d.framing != "length":
        kind = "bare-lf"
    framing_at = next((i for i, ln in enumerate(d.lines) if ln.lower().startswith((b"content-length", b"transfer"))),
                      None)
    ends = [i for i, (n, v) in enumerate(d.expected) if n != b"x-rogue-answer" and isinstance(v, bytes)]
    if kind in ("space-before-colon", "nul-in-value", "obs-fold") and not ends:
        kind = "bare-lf"
    if kind == "cl-twice-equal":
        d.lines.insert(rng.randrange(len(d.lines) + 1), b"content-length: %d" % d.declared)
    elif kind == "cl-list-equal":
        d.lines[framing_at] = b"Content-Length: %d, %d" % (d.declared, d.declared)
    elif kind == "cl-and-te":
        if d.framing == "chunked":
            d.lines.insert(rng.randrange(len(d.lines) + 1), b"Content-Length: %d" % rng.randint(0, 40000))
        else:
            kind = "bare-lf"
    elif kind == "te-on-http10":
        d.version, d.keep, d.interim = b"HTTP/1.0", False, b""
        # (the fields a Connection line named go with it: they would be end-to-end without it)
        d.lines = [ln for ln in d.lines if not ln.lower().startswith((b"content-length", b"transfer-encoding",
                                                                      b"connection", b"trailer", b"x-hop-"))]
        d.framing, d.chunks = "chunked", make_chunks(rng, d.body, False)
        d.lines.append(b"Transfer-Encoding: chunked")
    elif kind in ("space-before-colon", "nul-in-value", "obs-fold"):
        i = rng.choice(ends)
        name, value = d.expected[i]
        # the i-th end-to-end field is the i-th line that starts with its name and a colon or space
        at = [j for j, ln in enumerate(d.lines) if ln.lower().startswith(name + b":")][
            [k for k, (n, _) in enumerate(d.expected) if n == name].index(i)]
        if kind == "space-before-colon":
            d.lines[at] = d.lines[at][: len(name)] + rng.choice([b" ", b"\t"]) + d.lines[at][len(name) :]
        elif kind == "nul-in-value":
            pos = rng.randint(0, len(value))
            d.lines[at] = d.lines[at][: len(name)] + b": " + value[:pos] + b"\x00" + value[pos:]
            d.expected[i] = (name, value[:pos] + b" " + value[pos:])
        else:
            pos = rng.randint(1, len(value)) if len(value) > 1 else 1
            first, rest = value[:pos].rstrip(b" \t"), value[pos:].lstrip(b" \t") or b"folded"
            d.lines[at] = d.lines[at][: len(name)] + b": " + first + b"\r\n" + rng.choice([b" ", b"\t", b"  "]) + rest
            d.expected[i] = (name, re.compile(re.escape(first) + rb"[ \t]+" + re.escape(rest), re.DOTALL))
    if kind == "bare-lf":
        d.sep = b"\n"
        d.interim = d.interim.replace(b"\r\n", b"\n")
    pieces, pauses = cut_into_pieces(rng, d.wire())
    end = "keep" if d.keep and d.framing != "close" else "close"
    # CL with TE is "ought to be handled as an error" (9112 6.3): no reuse asked for either way
    return Answer(tag, kind, "open", d, Script(pieces, pauses, end=end), reusable=end == "keep", local=(502,))


def fault_answer(rng: random.Random, method: str, has_body: bool, tag: str) -> Answer:
    kinds = HEAD_FAULTS + ([] if method == "HEAD" else BODY_FAULTS * 2)
    kind = rng.choice(kinds)
    if kind.startswith("stall") and rng.random() < 0.6:
        kind = rng.choice([k for k in kinds if not k.startswith("stall")])  # stalls cost a second each
    d = valid_draft(rng, method, tag, bodied=kind in BODY_FAULTS)
    local, end, cut_ok, good = (502,), "wait", False, b""
    if kind == "garbage-status-line":
        d.interim = b""
        d.version, d.reason = b"", b""
        garbage = rng.choice(GARBAGE_STATUS_LINES)
        wire = garbage + b"\r\n" + b"\r\n".join(d.lines) + b"\r\n\r\n" + d.body_wire()
    else:
        if kind == "no-colon":
            d.lines.insert(rng.randrange(len(d.lines) + 1), rng.choice([b"X-Broken header", b"junk", b"X-A;b"]))
        elif kind == "empty-name":
            d.lines.insert(rng.randrange(len(d.lines) + 1), b": empty")
        elif kind in ("cl-conflict", "cl-invalid"):
            d.lines = [ln for ln in d.lines if not ln.lower().startswith((b"content-length", b"transfer-encoding"))]
            d.framing, n = "length", len(d.body_wire())
            if kind == "cl-conflict":
                d.lines += [b"Content-Length: %d" % n, b"Content-Length: %d" % (n + rng.randint(1, 9))]
            else:
                bad = rng.choice([b"-1", b"0x5", b"", b"5a", b"+5", b"1" * 25, b"5 5", b"5.0", b"\xd9\xa5"])
                d.lines.append(b"Content-Length: " + bad)
        elif kind == "unasked-101":
            d.status, d.reason, d.interim = 101, b"Switching Protocols", b""
            d.lines.append(b"Upgrade: websocket")
            d.lines.append(b"Connection: upgrade")
        wire = d.wire()
        head = d.head()
        if kind.endswith("-in-head"):
            wire = head[: rng.randrange(len(head) - 1)]
            end = {"close": "close", "reset": "reset", "stall": "stall"}[kind.split("-")[0]]
        elif kind in BODY_FAULTS:
            body = d.body_wire()
            if kind == "bad-chunk":
                if d.framing != "chunked":
                    d = valid_draft(rng, method, tag, bodied=True)
                    while d.framing != "chunked":
                        d = valid_draft(rng, method, tag, bodied=True)
                    head = d.head()
                i = rng.randrange(len(d.chunks))
                chunk = d.chunks[i]
                size_line, _, rest = chunk.partition(b"\r\n")
                how = rng.choice(["not-hex", "bare-lf", "overflow", "junk", "no-crlf-after-data", "bad-trailer"])
                if how == "bad-trailer":
                    # every byte of data sent, then a trailer section no decoder may take
                    i = len(d.chunks) - 1
                    bad = b"0\r\n" + rng.choice([b"X-T: a\r\n folded\r\n", b"X-T: a\nX-U: b\r\n",
                                                   b"X-T: a\x00b\r\n", b" X-T: a\r\n"]) + b"\r\n"
                    good = d.body
                elif how == "no-crlf-after-data" and i < len(d.chunks) - 1:
                    bad = size_line + b"\r\n" + rest[:-2] + b"XX"
                    good = chunked_payload(b"".join(d.chunks[: i + 1]))
                else:
                    bad = {"not-hex": b"zz", "bare-lf": size_line + b"\n", "overflow": b"f" * 20,
                           "junk": size_line.split(b";")[0] + b" x", "no-crlf-after-data": b"g"}[how]
                    bad = (bad if how == "bare-lf" else bad + b"\r\n") + rest
                    good = chunked_payload(b"".join(d.chunks[:i]))
                kind = f"bad-chunk:{how}"
                wire = head + b"".join(d.chunks[:i]) + bad + b"".join(d.chunks[i + 1 :])
            else:
                # never the whole body: a close at the end of a close-delimited body is its valid end
                at = rng.randrange(max(1, len(body)))
                if d.framing == "close" and kind == "close-in-body":
                    end = "reset"
                    kind = "reset-in-body"
                good = chunked_payload(body[:at]) if d.framing == "chunked" else body[:at]
                wire = head + body[:at]
                end = {"close": "close", "reset": "reset", "stall": "stall"}[kind.split("-")[0]]
            cut_ok = True
        if kind.startswith("stall"):
            local = (504,)
    if kind == "stall-in-head" and has_body and rng.random() < 0.5:
        kind, script = "stall-before-reading-the-body", Script([b""], [0.0], end="stall", early=True)
    else:
        pieces, pauses = cut_into_pieces(rng, wire) if wire else ([b""], [0.0])
        script = Script(pieces, pauses, end=end)
    silent = not script.wire and script.end in ("close", "reset")
    return Answer(tag, kind, "fault", d, script, reusable=False, local=local, cut_ok=cut_ok, good_body=good,
                  silent=silent)


# -------------------------------------------------------------------- cases


@dataclass
class Exchange:
    tag: str
    method: str
    target: str
    body: bytes
    chunked: bool  # HTTP/1.1: the body sent chunked; HTTP/2: no content-length
    answer: Answer


@dataclass
class Case:
    n: int
    client: str
    exchanges: list

    def describe(self) -> str:
        lines = [(f"seed={SEED} case={self.n} client={self.client} (replay: BLITZ_RANDOM_SEED={SEED} "
                  f"BLITZ_RANDOM_CASE={self.n})")]
        for ex in self.exchanges:
            lines.append(f"  {ex.method} {ex.target} body={len(ex.body)} chunked={ex.chunked}: "
                         f"{ex.answer.describe()}")
        return "\n".join(lines)


def make_case(n: int) -> Case:
    rng = random.Random(SEED * 1_000_003 + n)
    client = rng.choice(CLIENTS)
    exchanges = []
    for i in range(rng.choice([1, 1, 2, 3])):
        tag = f"c{n}-{i}"
        method = rng.choice(["GET", "GET", "HEAD", "POST", "POST"])
        body = rand_bytes(rng, bytes(range(256)), 1, rng.choice([10, 500, 20000])) if method == "POST" else b""
        segment = rand_bytes(rng, b"abcxyz0129-._~", 0, 8).decode()
        # "." and ".." would be forwarded normalised away (runtime/README.md)
        target = f"/rogue/{tag}/" + (segment + "x" if segment in (".", "..") else segment)
        r = rng.random()
        if r < 0.45:
            answer = valid_answer(rng, method, bool(body), tag)
        elif r < 0.6:
            answer = open_answer(rng, method, tag)
        else:
            answer = fault_answer(rng, method, bool(body), tag)
        exchanges.append(Exchange(tag, method, target, body, rng.random() < 0.3, answer))
    return Case(n, client, exchanges)


# ------------------------------------------------------------------ clients


@dataclass
class Got:
    """What the client got for one request, whatever the protocol."""

    status: int | None = None  # the final status; None: no final head came
    fields: list = field(default_factory=list)  # [(lower name, value)] without what the gateway frames with
    length: bytes | None = None  # the content-length the client was shown
    body: bytes = b""
    complete: bool = False  # framing complete (HTTP/1.1) or END_STREAM (HTTP/2)
    ended: str = ""  # how an incomplete answer ended: closed, reset-stream, goaway, ...
    interims: list = field(default_factory=list)
    conn_lost: bool = False  # HTTP/2: the whole connection ended (GOAWAY or close)
    hung: bool = False
    bad_framing: str = ""  # the gateway's own framing was not HTTP

    def value_of(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.fields if n == name), None)

    def __repr__(self) -> str:
        return (f"<got {self.status} complete={self.complete} ended={self.ended!r} interims={self.interims} "
                f"length={self.length!r} fields={self.fields!r:.2000} body[{len(self.body)}]={self.body[:200]!r}"
                f"{' HUNG' if self.hung else ''}{' lost' if self.conn_lost else ''} {self.bad_framing}>")


class H1Conn(RawConn):
    """An HTTP/1.1 client connection that keeps the exact field bytes."""

    def __init__(self, sock: socket.socket):
        super().__init__(sock=sock, timeout=READ_BOUND)

    def line(self, deadline: float) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                return None
        i = self.buf.index(b"\r\n")
        out = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return out

    def take(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n and self._fill(deadline):
            pass
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read(self, method: str, deadline: float) -> Got:
        got = Got()
        while True:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill(deadline):
                    got.hung, got.ended = not self.eof, "closed before a head" if self.eof else ""
                    return got
            i = self.buf.index(b"\r\n\r\n")
            head = bytes(self.buf[:i]).split(b"\r\n")
            del self.buf[: i + 4]
            m = re.fullmatch(rb"HTTP/1\.1 (\d{3}) [^\r\n]*", head[0])
            if not m:
                got.bad_framing = f"status line {head[0]!r}"
                return got
            status = int(m.group(1))
            fields = []
            for ln in head[1:]:
                name, colon, value = ln.partition(b":")
                if not colon or not name or not all(b in TCHAR for b in name):
                    got.bad_framing = f"field line {ln!r}"
                    return got
                fields.append((name.lower(), value.strip(b" \t")))
            if status < 200:
                got.interims.append(status)
                continue
            break
        got.status = status
        te = [v for n, v in fields if n == b"transfer-encoding"]
        cl = [v for n, v in fields if n == b"content-length"]
        conn = [v.lower() for n, v in fields if n == b"connection"]
        got.length = cl[0] if cl else None
        # what the gateway frames and ends the connection with is not the origin's
        got.fields = [(n, v) for n, v in fields if n not in (b"transfer-encoding", b"content-length")
                      and not (n == b"connection" and v.lower() in (b"close", b"keep-alive"))]
        if len(cl) > 1 or te and (te != [b"chunked"] or cl):
            got.bad_framing = f"framing fields CL={cl} TE={te}"
            return got
        if method == "HEAD" or status in (204, 304):
            got.complete = True
        elif te:
            body = bytearray()
            while True:
                size_line = self.line(deadline)
                if size_line is None:
                    break
                if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_line):
                    got.bad_framing = f"chunk size line {size_line!r}"
                    break
                size = int(size_line, 16)
                if size == 0:
                    trailer = self.line(deadline)
                    got.complete = trailer == b""
                    break
                data = self.take(size, deadline)
                body += data
                if len(data) < size or self.take(2, deadline) != b"\r\n":
                    break
            got.body = bytes(body)
        elif cl:
            n = int(cl[0])
            got.body = self.take(n, deadline)
            got.complete = len(got.body) == n
        else:
            got.bad_framing = "a close-delimited answer to an HTTP/1.1 client"
            while self._fill(deadline):
                pass
            got.body = bytes(self.buf)
        if not got.complete:
            got.hung = not self.eof
            got.ended = "closed" if self.eof else "stalled"
        elif b"close" in conn:
            got.ended = "connection: close"
        return got


def h1_request(ex: Exchange) -> bytes:
    head = f"{ex.method} {ex.target} HTTP/1.1\r\nHost: a.test\r\n".encode()
    if ex.method != "POST":
        return head + b"\r\n"
    if ex.chunked:
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(ex.body), ex.body)
    return head + b"Content-Length: %d\r\n\r\n" % len(ex.body) + ex.body


class H2Conn(RawH2):
    """`RawH2` that keeps every header block of a stream (interim, final),
    decoded to raw bytes (obs-text stays as sent), across CONTINUATION."""

    def __init__(self, sock: socket.socket):
        super().__init__("", sock=sock, settings={4: 1 << 24})  # SETTINGS_INITIAL_WINDOW_SIZE
        self.dec = hpack.Decoder(max_header_list_size=1 << 22)
        self.blocks: dict[int, list] = {}
        self.pending: tuple[int, bytes, bool] | None = None
        self.frame(WindowUpdateFrame(0, window_increment=1 << 30))

    def _note(self, f) -> None:
        if isinstance(f, (HeadersFrame, ContinuationFrame)):
            if isinstance(f, HeadersFrame):
                self.pending = (f.stream_id, bytes(f.data), "END_STREAM" in f.flags)
            elif self.pending:
                sid, data, end = self.pending
                self.pending = (sid, data + bytes(f.data), end)
            if "END_HEADERS" in f.flags and self.pending:
                sid, data, end = self.pending
                self.pending = None
                block = self.dec.decode(data, raw=True)
                self.blocks.setdefault(sid, []).append(block)
                self.seen.headers[sid] = block
                if end:
                    self.seen.ended.add(sid)
            self.seen.frames.append(type(f).__name__)
            return
        super()._note(f)


def h2_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def h2_exchange(conn: H2Conn, sid: int, ex: Exchange, tls: bool, deadline: float, pause: float = 0.0) -> Got:
    """One request on stream `sid`; `pause` seconds before its last DATA frame."""
    fields = [(b":method", ex.method.encode()), (b":scheme", b"https" if tls else b"http"),
              (b":authority", b"a.test"), (b":path", ex.target.encode())]
    if ex.body and not ex.chunked:
        fields.append((b"content-length", b"%d" % len(ex.body)))
    frames = [h2_frame(1, 0x4 | (0 if ex.body else 0x1), sid, conn.enc.encode(fields))]
    size = 16384 if len(ex.body) > 16384 else max(1, len(ex.body) // 2)
    for pos in range(0, len(ex.body), size):
        last = pos + size >= len(ex.body)
        frames.append(h2_frame(0, 0x1 if last else 0, sid, ex.body[pos : pos + size]))
    conn.send(b"".join(frames[:-1]))
    if pause and len(frames) > 1:
        time.sleep(pause)
    conn.send(frames[-1])
    seen = conn.read_frames(deadline, stop=lambda s: sid in s.ended or sid in s.resets or s.closed)
    got = Got(body=seen.data.get(sid, b""))
    for block in conn.blocks.get(sid, []):
        status = int(dict(block).get(b":status", b"0"))
        if 100 <= status < 200:
            got.interims.append(status)
            continue
        got.status = status
        got.length = next((v for n, v in block if n == b"content-length"), None)
        got.fields = [(n, v) for n, v in block if not n.startswith(b":") and n != b"content-length"]
    got.complete = sid in seen.ended and sid not in seen.resets
    got.conn_lost = seen.closed or seen.goaway is not None
    if not got.complete:
        if sid in seen.resets:
            got.ended = f"reset-stream {seen.resets[sid]}"
        elif got.conn_lost:
            got.ended = f"connection lost (goaway {seen.goaway})"
        else:
            got.hung = True
    return got


# ----------------------------------------------------------------- checking


def matches(value: bytes, want) -> bool:
    return want.fullmatch(value) is not None if isinstance(want, re.Pattern) else value == want


def fields_agree(got: list, want: list, h2: bool) -> bool:
    """The client's end-to-end fields are the origin's: in order on HTTP/1.1;
    on HTTP/2 per name in order (the gateway's header map groups names).
    `via` and, when the origin sent none, `date` may be added."""
    names = {n for n, _ in want}
    got = [(n, v) for n, v in got if n in names or n not in (b"via", b"date")]
    if h2:
        def grouped(fields):
            out: dict = {}
            for n, v in fields:
                out.setdefault(n, []).append(v)
            return out
        g, w = grouped(got), grouped(want)
        return g.keys() == w.keys() and all(
            len(g[n]) == len(w[n]) and all(matches(a, b) for a, b in zip(g[n], w[n])) for n in w)
    return len(got) == len(want) and all(gn == wn and matches(gv, wv) for (gn, gv), (wn, wv) in zip(got, want))


def from_origin(got: Got, a: Answer) -> bool:
    return got.value_of(b"x-rogue-answer") == a.tag.encode()


def check_head(got: Got, a: Answer, h2: bool, what: str) -> None:
    d = a.draft
    assert got.status == d.status, f"status {got.status}, the origin said {d.status}: {what}"
    assert fields_agree(got.fields, d.expected, h2), \
        f"fields differ:\n got  {got.fields!r}\n want {d.expected!r}\n{what}"
    assert all(100 <= s < 200 for s in got.interims), f"interims {got.interims}: {what}"
    if d.status == 204:
        assert got.length is None, f"a content-length on 204: {got!r}: {what}"
    elif d.bodiless and got.length is not None:
        assert d.declared is not None and got.length == b"%d" % d.declared, \
            f"content-length {got.length!r} shown, the origin declared {d.declared}: {what}"


def check_answered(got: Got, a: Answer, h2: bool, what: str) -> None:
    check_head(got, a, h2, what)
    want = b"" if a.draft.bodiless else a.draft.body
    assert got.body == want, f"body differs ({len(got.body)} bytes, want {len(want)}): {got!r}: {what}"
    assert got.complete, f"a whole answer not ended properly: {got!r}: {what}"
    if got.length is not None and not a.draft.bodiless:
        assert got.length == b"%d" % len(want), f"content-length {got.length!r}: {what}"


def check_local(got: Got, a: Answer, what: str) -> None:
    assert got.status in a.local and not from_origin(got, a), f"not the gateway's {a.local}: {got!r}: {what}"
    assert got.complete, f"the gateway's own answer not complete: {got!r}: {what}"


def check_cut(got: Got, a: Answer, h2: bool, what: str) -> None:
    check_head(got, a, h2, what)
    assert not got.complete, f"a cut answer looks complete: {got!r}: {what}"
    assert a.good_body.startswith(got.body), \
        f"the client got body bytes the origin never sent before the fault: {got!r}: {what}"
    if h2:
        assert got.ended.startswith("reset-stream"), f"HTTP/2: no RST_STREAM after a cut: {got!r}: {what}"
    else:
        assert got.ended == "closed", f"HTTP/1.1: the connection not closed after a cut: {got!r}: {what}"


def head_dropped_by_reset(ex: Exchange, got: Got, h2: bool) -> bool:
    """HTTP/2: a fault in bytes that came after the head (another read of
    the gateway's) resets a stream whose HEADERS the `h2` crate may still
    hold unsent, and a reset drops them: the client sees a bare RST_STREAM,
    a cut it cannot tell from one after the head. A fault in the bytes
    that came with the head is a 502 (the regression test below)."""
    a = ex.answer
    return h2 and a.cut_ok and got.status is None and got.ended.startswith("reset-stream") and not got.body


def check_exchange(ex: Exchange, got: Got, h2: bool, arrivals: list, case: Case) -> str:
    """Asserts the client's view and the forwards; returns how it ended
    (answered | local | cut | cut-before-head)."""
    a = ex.answer
    what = f"{ex.tag} {ex.method} -> {a.verdict}:{a.kind}\n{case.describe()}"
    assert not got.hung, f"the client still waited {READ_BOUND}s after the request: {got!r}: {what}"
    assert not got.bad_framing, f"the gateway's answer is not valid HTTP framing: {got!r}: {what}"
    if h2:
        assert not got.conn_lost, f"HTTP/2: an upstream answer ended the whole connection: {got!r}: {what}"
    mine = [x for x in arrivals if x.req.target == ex.target]
    replayed = a.silent and ex.method in ("GET", "HEAD") and mine and mine[0].seq > 0
    assert 1 <= len(mine) <= (2 if replayed else 1), \
        f"forwarded {len(mine)} times (first on a {'pooled' if mine and mine[0].seq else 'fresh'} connection): {what}"
    if len(mine) == 2:
        assert mine[1].seq == 0, f"the replay of a stale pooled connection's request was not on a fresh one: {what}"
    if ex.body and not a.script.early:
        req = mine[-1].req
        assert req.complete and bytes(req.body) == ex.body, f"the origin got another body: {req!r}: {what}"
    if a.verdict == "valid":
        check_answered(got, a, h2, what)
        return "answered"
    if got.status in a.local and not from_origin(got, a):
        check_local(got, a, what)
        return "local"
    if head_dropped_by_reset(ex, got, h2):
        return "cut-before-head"
    assert a.verdict == "open" or a.cut_ok, f"a fault with one right answer ({a.local}) got {got!r}: {what}"
    if a.verdict == "open":
        check_answered(got, a, h2, what)
        return "answered"
    check_cut(got, a, h2, what)
    return "cut"


# ------------------------------------------------------------------- running


class Client:
    """Opens connections of one kind to one gateway."""

    def __init__(self, port: int, kind: str, pki: Pki):
        self.port, self.kind = port, kind
        self.tls, self.h2 = kind.endswith("tls"), kind.startswith("h2")
        if self.tls:
            self.ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
            self.ctx.set_alpn_protocols(["h2" if self.h2 else "http/1.1"])

    def sock(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=READ_BOUND)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ctx.wrap_socket(s, server_hostname="edge.test") if self.tls else s


def run_case(case: Case, client: Client, rng: random.Random) -> list:
    """Sends the case's requests one after the other; [Got]."""
    results = []
    h1: H1Conn | None = None
    h2: H2Conn | None = None
    sid = 1
    try:
        for ex in case.exchanges:
            deadline = time.monotonic() + READ_BOUND
            if client.h2:
                if h2 is None or h2.seen.closed or h2.seen.goaway is not None:
                    if h2 is not None:
                        h2.close()
                    h2, sid = H2Conn(client.sock()), 1
                results.append(h2_exchange(h2, sid, ex, client.tls, deadline, rng.choice([0, 0, 0.02])))
                sid += 2
                continue
            if h1 is None or h1.eof:
                if h1 is not None:
                    h1.close()
                h1 = H1Conn(client.sock())
            data = h1_request(ex)
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.choice([0, 0, 1, 2]))))
            for a, b in zip([0] + cuts, cuts + [len(data)]):
                if not h1.send(data[a:b]):
                    break
                # a pause lets an early answer come while the body is still on its way
                time.sleep(rng.choice([0.001, 0.001, 0.02]) if b < len(data) else 0)
            got = h1.read(ex.method, deadline)
            results.append(got)
            if not got.complete or got.ended:
                h1.close()
                h1 = None
    finally:
        if h1 is not None:
            h1.close()
        if h2 is not None:
            h2.close()
    return results


class Bystander:
    """One HTTP/1.1 keep-alive connection to a gateway, served after every case."""

    def __init__(self, client: Client):
        self.client, self.conn = client, H1Conn(client.sock())

    def serve(self, n: int) -> None:
        target = f"/__bystander/{n}"
        self.conn.send(f"GET {target} HTTP/1.1\r\nHost: b.test\r\n\r\n".encode())
        got = self.conn.read("GET", time.monotonic() + READ_BOUND)
        assert got.status == 200 and got.body == f"GET {target}\n".encode(), \
            f"bystander not served after case {n}: {got!r} (seed={SEED})"


@pytest.fixture(scope="module")
def rogue():
    o = RogueOrigin()
    yield o
    o.stop()


@pytest.mark.timeout(150)
def test_random_origin_answers(start_gateway, rogue, pki):
    clear = start_gateway(upstream=rogue.addr, protocols="h1,h2c", **OPTS)
    tls = start_gateway(upstream=rogue.addr, protocols="h1,h2", tls_cert=pki.path("edge.crt"),
                        tls_key=pki.path("edge.key"), **OPTS)
    gateways = {"h1": clear, "h2c": clear, "h1-tls": tls, "h2-tls": tls}
    bystanders = {clear.pid: Bystander(Client(clear.port, "h1", pki)),
                  tls.pid: Bystander(Client(tls.port, "h1-tls", pki))}
    resources = [CaseResources(clear), CaseResources(tls)]
    for b in bystanders.values():
        b.serve(-1)
    # upstream connections that must never carry another request: conn id -> (arrival index, why)
    poisoned: dict[int, tuple[int, str]] = {}
    checked = rogue.next_index
    tally: dict[str, int] = {}
    tally_kinds: dict[str, int] = {}
    cases = [int(ONLY_CASE)] if ONLY_CASE else range(MAX_CASES)
    started = time.monotonic()
    print(f"\nseed={SEED} (BLITZ_RANDOM_SEED to change it)")
    for n in cases:
        if time.monotonic() - started > MAX_SECONDS:
            break
        case = make_case(n)
        gw = gateways[case.client]
        client = Client(gw.port, case.client, pki)
        for ex in case.exchanges:
            rogue.scripts[ex.target] = ex.answer.script
        first = rogue.next_index
        results = run_case(case, client, random.Random(SEED * 7 + n))
        bystanders[gw.pid].serve(n)
        assert gw.alive(), f"gateway died: {gw.crashed() or gw.tail()}\n{case.describe()}"
        arrivals = rogue.arrivals_since(first)
        for ex, got in zip(case.exchanges, results):
            outcome = check_exchange(ex, got, client.h2, arrivals, case)
            key = f"{ex.answer.verdict}:{outcome}"
            tally_kinds[f"{ex.answer.kind.split(':')[0]}:{outcome}"] = tally_kinds.get(
                f"{ex.answer.kind.split(':')[0]}:{outcome}", 0) + 1
            if sum(1 for x in arrivals if x.req.target == ex.target) == 2:
                tally["replayed on a fresh connection"] = tally.get("replayed on a fresh connection", 0) + 1
            tally[key] = tally.get(key, 0) + 1
            if not (ex.answer.reusable and outcome == "answered"):
                for x in arrivals:
                    if x.req.target == ex.target:
                        poisoned[x.conn_id] = (x.index, f"{ex.answer.kind} ({outcome}) in case {n}")
        for x in rogue.arrivals_since(checked):
            if x.conn_id in poisoned and x.index > poisoned[x.conn_id][0]:
                pytest.fail(f"upstream connection {x.conn_id} carried {x.req.method} {x.req.target} after "
                            f"{poisoned[x.conn_id][1]}\n{case.describe()}")
        checked = rogue.next_index
        with rogue.cond:
            late = dict(rogue.late_bytes)
        assert not late, f"bytes sent on upstream connections after an answer that closed them: {late}\n" \
                         f"{case.describe()}"
        for r in resources:
            r.case_done()
    elapsed = time.monotonic() - started
    done = resources[0].done
    print(f"{done} cases in {elapsed:.1f}s: {dict(sorted(tally.items()))}\n"
          f"by kind: {dict(sorted(tally_kinds.items()))}")

    def left() -> list:
        """Poisoned connections the gateway has not closed yet."""
        return [cid for cid in poisoned if not (rogue.conn(cid).closed or rogue.conn(cid).peer_closed)]

    assert rogue.wait_for(lambda: not left(), 5), f"upstream connections kept open after a fault: {left()}"
    reused = sum(1 for x in rogue.arrivals if x.seq > 0)
    if done >= 50:
        assert reused, "no request ever rode a pooled connection: the reuse checks proved nothing"
    for b in bystanders.values():
        b.conn.close()
    for r, name in zip(resources, ["cleartext", "tls"]):
        r.check(32 * 1024, 6, f"{name} gateway, seed={SEED}")


# ------------------------------------------------- regressions found above


@pytest.mark.parametrize("client", ["h2c", "h2-tls"])
@pytest.mark.parametrize("first_bytes", [b"zz\r\nhello\r\n0\r\n\r\n", b"5 x\r\nhello\r\n0\r\n\r\n",
                                         b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"],
                         ids=["not-hex", "junk", "overflow"])
def test_h2_body_broken_from_its_first_bytes_is_502_not_a_bare_reset(start_gateway, rogue, pki, client, first_bytes):
    """Found by test_random_origin_answers (seed 20261127, cases 7, 73, 137).
    The upstream's head and a first chunk that is not valid chunked framing
    arrive in one write: nothing can have reached the client, so, as an
    HTTP/1.1 client does (test_upstream_faults.py,
    test_bad_first_chunk_with_the_head_is_502), it must get a 502
    (RELIABILITY.md: "a 502/504, or a cut connection if the response had
    started"). Before the fix an HTTP/2 client got RST_STREAM(INTERNAL_ERROR)
    and no response at all: the h2 exchange handed the response head to the
    h2 crate before the first body bytes were decoded, and the reset that
    followed discarded the HEADERS still queued."""
    if client == "h2c":
        gw = start_gateway(upstream=rogue.addr, protocols="h1,h2c", **OPTS)
    else:
        gw = start_gateway(upstream=rogue.addr, protocols="h1,h2", tls_cert=pki.path("edge.crt"),
                           tls_key=pki.path("edge.key"), **OPTS)
    answer = b"HTTP/1.1 200 OK\r\nx-rogue-answer: first\r\ntransfer-encoding: chunked\r\n\r\n" + first_bytes
    target = f"/first-chunk/{client}/{first_bytes[:2].hex()}"
    rogue.scripts[target] = Script([answer], [0.0], end="wait")
    ex = Exchange("first", "GET", target, b"", False, None)
    conn = H2Conn(Client(gw.port, client, pki).sock())
    try:
        got = h2_exchange(conn, 1, ex, client == "h2-tls", time.monotonic() + READ_BOUND)
    finally:
        conn.close()
    assert not got.hung and not got.conn_lost, got
    assert got.status == 502 and got.complete, f"not a 502: {got!r}"


@pytest.mark.parametrize("client", ["h1", "h2c", "h1-tls", "h2-tls"])
def test_103_early_hints_from_the_upstream_reach_the_client(start_gateway, rogue, pki, client):
    """Found by test_random_origin_answers: no interim answer ever reached a
    client. RFC 9110 15.2: "A proxy MUST forward 1xx responses unless the
    proxy itself requested the generation of the 1xx response". The
    upstream sends a 100 (which the gateway does not relay: it answers
    `Expect: 100-continue` itself and never passes it on), then a 103
    (relayed, before the final answer), then the final answer, intact."""
    tls = client.endswith("tls")
    if tls:
        gw = start_gateway(upstream=rogue.addr, protocols="h1,h2", tls_cert=pki.path("edge.crt"),
                           tls_key=pki.path("edge.key"), **OPTS)
    else:
        gw = start_gateway(upstream=rogue.addr, protocols="h1,h2c", **OPTS)
    target = f"/early-hints/{client}"
    hints = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nconnection: x-hop\r\nx-hop: 1\r\n\r\n"
    rogue.scripts[target] = Script([b"HTTP/1.1 100 Continue\r\n\r\n", hints,
                                    b"HTTP/1.1 200 OK\r\nx-rogue-answer: hints\r\ncontent-length: 5\r\n\r\nfinal"],
                                   [0.0, 0.0, 0.05], end="keep")
    ex = Exchange("hints", "GET", target, b"", False, None)
    sock = Client(gw.port, client, pki).sock()
    if client.startswith("h2"):
        conn = H2Conn(sock)
        try:
            got = h2_exchange(conn, 1, ex, tls, time.monotonic() + READ_BOUND)
        finally:
            conn.close()
    else:
        conn = H1Conn(sock)
        try:
            conn.send(h1_request(ex))
            got = conn.read("GET", time.monotonic() + READ_BOUND)
        finally:
            conn.close()
    assert got.status == 200 and got.body == b"final" and got.complete, got
    assert got.interims == [103], f"not the upstream's 103 alone: {got!r}"


def test_no_interim_answer_reaches_an_http10_client(start_gateway, rogue):
    """RFC 9110 15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0
    client". The same upstream answers as above: the HTTP/1.0 client reads
    the final answer first."""
    gw = start_gateway(upstream=rogue.addr, protocols="h1", **OPTS)
    target = "/early-hints/http10"
    rogue.scripts[target] = Script([b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nx-rogue-answer: hints\r\ncontent-length: 5\r\n\r\nfinal"],
                                   [0.0, 0.05], end="keep")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=READ_BOUND) as s:
        s.sendall(f"GET {target} HTTP/1.0\r\nhost: a.test\r\n\r\n".encode())
        got = b""
        deadline = time.monotonic() + READ_BOUND
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                break
            got += d
    assert got.startswith(b"HTTP/1.1 200 "), got
    assert got.endswith(b"\r\n\r\nfinal") and b" 103 " not in got, got
