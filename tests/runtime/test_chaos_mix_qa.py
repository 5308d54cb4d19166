"""A bounded chaos pass: every way in at once, good and hostile clients, faulty origin answers, SIGHUP.

The other files test each RELIABILITY.md item alone. This one tests their interactions, which is where a
gateway mixes up state: a response relayed on the wrong stream, a pooled upstream connection reused after
a fault, a descriptor or thread kept by an attack that ended while a reload ran.

Set-up. `hello_gateway` takes one `--upstream` and applies its TLS and `--protocols` to every listener, so
the four ways in are two processes of two workers each: a cleartext one speaking `h1,h2c` and a TLS one
speaking `h1,h2` (ALPN decides), both in front of one recording origin (`ChaosOrigin`) that answers per
path, so one upstream address stands for a healthy origin and several faulty ones:

  /ok/TAG?n=N[&chunked=1]   200, `x-got: <length> <sha256>` of the body it received, `x-tag: TAG`, and
                            N bytes made from TAG (so bytes from another request show), chunked if asked
  /fault/KIND/TAG           KIND: reset (RST, no answer), stall (never answers: 504 at response-timeout),
                            garbage (not HTTP), cut / cutrst (content-length 4000, half of it, then FIN /
                            RST), trickle (a valid answer, one byte per 0.3 s past response-timeout),
                            early (`?early_status=503` of support/origin.py: a 503 before the body is
                            read, then close; relayed, or a 502 or a cut)
  /hostile/...              a small 200 (hostile clients' requests that are allowed to get through)

For CHAOS_SECONDS (BLITZ_CHAOS_SECONDS, 35 s by default), seeded by BLITZ_RANDOM_SEED:

- good clients, two threads per way in, send requests with bodies of 0 bytes to 2 MiB, with a length or
  chunked (HTTP/1.1) / without content-length (HTTP/2, several streams per connection), to healthy and
  faulty paths. A healthy answer must be exactly its own (the origin got this body, the client this
  tag's bytes); a faulty one a 502/504 or a cut (for trickle, its own exact answer may also come), never
  another request's bytes, never a hang past the timeouts plus slack;
- hostile clients, three threads, run attacks picked at random: slowloris heads, bodies paused past
  body-timeout, heads over max-header-bytes (431), bodies over max-body-bytes declared and streamed
  (413), smuggling shapes, garbage bytes, resets mid-request and mid-response, h2 rapid reset, PING,
  SETTINGS and CONTINUATION floods, zero-window readers, TLS clients that stop mid-handshake. Each must
  end as RELIABILITY.md says within its timeout plus slack;
- every 2-4 s the TLS gateway's certificate files are swapped between two leaves and it gets SIGHUP;
  one time in four the new pair does not match (the other leaf's certificate beside the current key),
  which the reload must refuse, keeping the current pair.

Afterwards: both gateways alive and serving each way in; the last good certificate pair is the one
served and each SIGHUP was logged as a reload or a refusal; once idle-timeout passed (a bounded wait) no
accepted connection is held and descriptors and threads are back near the baseline; RSS printed and under
a generous bound; no panic on stderr. At the origin: nothing the hostile clients sent that must not reach
it did (a smuggled request; a body over the limit, paused or cut, completed upstream), no request no
client sent, no write on an upstream connection after a stall or garbage answer (never reused), and every
forwarded head re-framed with one `x-request-id` no other request has and the `x-forwarded-proto` and
`via` of its way in.

Every wrong answer is listed with its seed, client and case. Replay: BLITZ_RANDOM_SEED=N (the order of
events between threads is not replayed, only what each client does). BLITZ_CHAOS_DRIVER=poll runs both
gateways on the poll driver instead of io_uring (`--driver`).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from support.client import Closed, RawConn
from support.gateway import fd_count, rss_kib, settled_fd_count
from support.h2client import CANCEL, RawH2
from support.h2streams import Streams
from support.origin import Origin, OriginConn, RecordedRequest, respond
from support.pki import served_cert
from support.waits import wait_until

SEED = int(os.environ.get("BLITZ_RANDOM_SEED", "20261128"))
CHAOS_SECONDS = float(os.environ.get("BLITZ_CHAOS_SECONDS", "35"))
AUTHORITY = "edge.test"

HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT, RESPONSE_TIMEOUT = 2, 2, 3, 2
MAX_HEADER_BYTES = 8192
MAX_BODY_BYTES = 3 << 20
LIMITS = {
    "workers": 2, "header_timeout": HEADER_TIMEOUT, "body_timeout": BODY_TIMEOUT, "idle_timeout": IDLE_TIMEOUT,
    "response_timeout": RESPONSE_TIMEOUT, "connect_timeout": 1, "max_header_bytes": MAX_HEADER_BYTES,
    "max_body_bytes": MAX_BODY_BYTES, "pool_max_idle": 4, "driver": os.environ.get("BLITZ_CHAOS_DRIVER"),
}
# Pooled upstream connections may stay open (idle, up to 30 s) after the run: at most pool-max-idle per
# worker, on top of the baseline's few descriptors.
FD_SLACK = 2 * 4 + 4
# Threads that come and go besides the workers: io_uring's kernel workers (iou-wrk-*) and, with the poll
# driver, compio's blocking pool (threads named after their worker); seen to add up to 2.
THREAD_SLACK = 4
# How far past the configured timeout an answer or a close may come on this shared 2-core machine
# (many Python threads hashing MiB bodies) before it counts as a hang. It only bounds waits.
SLACK = 10.0
# Longest a good request may take: a timeout, then up to 2 MiB each way through a loaded machine.
REQUEST_BOUND = RESPONSE_TIMEOUT + 3.6 + SLACK  # trickle runs 3.6 s
FAULTS = ("reset", "stall", "garbage", "cut", "cutrst", "trickle", "early")
CUT_LENGTH = 4000
TRICKLE = b"trickled!!!!"  # 12 bytes, one each 0.3 s


def tag_body(tag: str, n: int) -> bytes:
    """n bytes that only this tag makes (a body relayed to the wrong request shows)."""
    block = hashlib.sha256(tag.encode()).digest() * 1024  # 32 KiB
    return (block * (n // len(block) + 1))[:n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the origin


class ChaosOrigin(Origin):
    """The recording origin answering by path (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.handler = self.answer
        # (connection, bytes) the gateway wrote on a connection after a stalled or garbage answer: a
        # broken upstream connection must never be reused (RELIABILITY.md, "Upgrades and faults")
        self.late: list[tuple[int, int]] = []

    def answer(self, req: RecordedRequest, conn: OriginConn) -> bool:
        parts = req.path.split("/")
        if req.path.startswith("/ok/"):
            n = int(req.query.get("n", "0"))
            body = tag_body(parts[2], n)
            extra = (f"x-got: {req.body_len} {req.body_sha256}", f"x-tag: {parts[2]}")
            if req.query.get("chunked") == "1":
                head = ["HTTP/1.1 200 OK", f"x-origin-conn: {conn.id}", "transfer-encoding: chunked", *extra]
                data = ("\r\n".join(head) + "\r\n\r\n").encode()
                for i in range(0, n, 50000):
                    piece = body[i:i + 50000]
                    data += b"%x\r\n%s\r\n" % (len(piece), piece)
                return conn.send(data + b"0\r\n\r\n")
            return respond(conn, req, 200, body, extra)
        if req.path.startswith("/fault/"):
            return self.fault(parts[2], req, conn)
        return respond(conn, req, 200, b"hostile request let through\n")

    def fault(self, kind: str, req: RecordedRequest, conn: OriginConn) -> bool:
        if kind == "reset":
            conn.reset()
        elif kind in ("stall", "garbage"):
            if kind == "garbage":
                conn.send(b"\x16\x03\x01 NOT HTTP \x00\xff\r\n\r\n")
            before = conn.nbytes
            conn.wait_peer_close(RESPONSE_TIMEOUT + SLACK)
            if conn.nbytes > before:
                with self.cond:
                    self.late.append((conn.id, conn.nbytes - before))
        elif kind in ("cut", "cutrst"):
            conn.send(f"HTTP/1.1 200 OK\r\ncontent-length: {CUT_LENGTH}\r\n\r\n".encode() + b"c" * (CUT_LENGTH // 2))
            conn.sleep(0.1)
            conn.reset() if kind == "cutrst" else conn.close()
        elif kind == "trickle":
            conn.send(f"HTTP/1.1 200 OK\r\ncontent-length: {len(TRICKLE)}\r\n\r\n".encode())
            for i in range(len(TRICKLE)):
                if not conn.sleep(0.3) or not conn.send(TRICKLE[i:i + 1]):
                    return False
            return True
        return False


# ------------------------------------------------------------------ bookkeeping


@dataclass
class Ledger:
    """What happened, shared by every thread: each wrong answer with its case, and counts."""

    problems: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Tags the origin must never see completed (cut, oversize or paused uploads) or see at all.
    never_complete: set = field(default_factory=set)
    never_seen: set = field(default_factory=set)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def wrong(self, case: str, what: str) -> None:
        with self.lock:
            self.problems.append(f"seed={SEED} {case}: {what}")


@dataclass
class Request:
    """One good request: where it goes, what it sends, what it must get."""

    tag: str
    fault: str | None  # None: the healthy path
    body: bytes | None  # None: no body at all
    n: int  # bytes the healthy answer carries
    chunked_up: bool  # HTTP/1.1: chunked upload; HTTP/2: no content-length
    chunked_down: bool

    @property
    def path(self) -> str:
        if self.fault == "early":
            return f"/fault/early/{self.tag}?early_status=503"  # support/origin.py's own fault
        if self.fault:
            return f"/fault/{self.fault}/{self.tag}"
        return f"/ok/{self.tag}?n={self.n}" + ("&chunked=1" if self.chunked_down else "")

    def sent_digest(self) -> str:
        body = self.body or b""
        return f"{len(body)} {sha(body)}"


def random_request(rng: random.Random, tag: str) -> Request:
    def size() -> int:
        # mostly small, sometimes up to 2 MiB: the whole range of buffering paths
        return rng.choice([0, rng.randrange(1, 2000), rng.randrange(2000, 200_000), rng.randrange(200_000, 2 << 20)])

    fault = rng.choice(FAULTS) if rng.random() < 0.3 else None
    body = None if rng.random() < 0.25 else tag_body("up-" + tag, size())
    return Request(tag, fault, body, size(), rng.random() < 0.5, rng.random() < 0.5)


def judge(ledger: Ledger, case: str, r: Request, status: int | None, headers: dict, body: bytes | None,
          complete: bool, elapsed: float) -> None:
    """The rules for one good request's outcome. `status` None: no answer head (a cut);
    `complete` False: the answer was cut after its head."""
    if elapsed > REQUEST_BOUND:
        ledger.wrong(case, f"took {elapsed:.1f} s (bound {REQUEST_BOUND} s)")
    if r.fault is None:
        want = tag_body(r.tag, r.n)
        if status != 200 or not complete:
            ledger.wrong(case, f"healthy {r.path}: status {status} complete={complete} body[:80]={(body or b'')[:80]!r}")
        elif headers.get("x-tag") != r.tag or headers.get("x-got") != r.sent_digest():
            ledger.wrong(case, f"healthy {r.path}: x-tag {headers.get('x-tag')} x-got {headers.get('x-got')} "
                               f"want {r.tag} {r.sent_digest()}")
        elif body != want:
            ledger.wrong(case, f"healthy {r.path}: body of {len(body)} bytes, sha {sha(body)[:12]} "
                               f"want {len(want)} {sha(want)[:12]}")
        ledger.count("healthy")
        return
    if status is None:
        ledger.count(f"{r.fault}: cut")
        return
    if status in (502, 504):
        ledger.count(f"{r.fault}: {status}")
        return
    if r.fault in ("cut", "cutrst") and status == 200 and not complete and body == b"c" * len(body):
        ledger.count(f"{r.fault}: 200 cut")
        return
    if r.fault == "early" and status == 503 and complete and body == b"early\n":
        ledger.count("early: 503")
        return
    if r.fault == "trickle" and status == 200 and (body == TRICKLE if complete else TRICKLE.startswith(body)):
        ledger.count(f"trickle: 200 {'whole' if complete else 'cut'}")
        return
    ledger.wrong(case, f"faulty {r.path}: status {status} complete={complete} body[:80]={(body or b'')[:80]!r}")


# ------------------------------------------------------------------ the ways in


@dataclass
class Way:
    name: str  # h1 | h1-tls | h2c | h2-tls
    port: int
    ctx: ssl.SSLContext | None

    @property
    def h2(self) -> bool:
        return self.name.startswith("h2")

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ctx.wrap_socket(s, server_hostname=AUTHORITY) if self.ctx else s


def tls_context(ca, alpn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols([alpn])
    return ctx


def h1_head(r: Request, expect: bool = False) -> bytes:
    head = [f"{'POST' if r.body is not None else 'GET'} {r.path} HTTP/1.1", f"Host: {AUTHORITY}"]
    if r.body is not None:
        head.append("Transfer-Encoding: chunked" if r.chunked_up else f"Content-Length: {len(r.body)}")
    if expect:
        head.append("Expect: 100-continue")
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def h1_body(r: Request) -> bytes:
    body = r.body or b""
    if r.body is None or not r.chunked_up:
        return body
    step = max(1, len(body) // 3 + 1)
    chunks = [b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step]) for i in range(0, len(body), step)]
    return b"".join(chunks) + b"0\r\n\r\n"


def h1_round(conn: RawConn, reqs: list[Request], expect: bool, started: float, cases: list[str],
             ledger: Ledger) -> bool:
    """Sends `reqs` on `conn` (pipelined when several; the one request's body after the 100 when `expect`)
    and judges each answer in order. True if the connection may carry the next round."""
    if expect:
        conn.send(h1_head(reqs[0], expect=True))
        first = conn.read_response(timeout=REQUEST_BOUND)
        if first.status != 100:
            judge(ledger, cases[0], reqs[0], first.status, dict(first.headers), first.body, first.complete,
                  time.monotonic() - started)
            return False
        ledger.count("h1: 100-continue")
        conn.send(h1_body(reqs[0]))
    else:
        # Sent whole before reading: the origin reads every body before it answers or faults, and an
        # SSLSocket must not be read and written from two threads at once. A send the gateway cut short
        # (False) still leaves its answers to read.
        conn.send(b"".join(h1_head(r) + h1_body(r) for r in reqs))
    for k, r in enumerate(reqs):
        try:
            resp = conn.read_response(timeout=REQUEST_BOUND)
        except Closed as e:
            if k == 0:
                judge(ledger, cases[k], r, None, {}, e.partial, False, time.monotonic() - started)
            else:
                # a pipeline cut after an earlier answer: these requests were not answered, never wrongly
                ledger.count("h1: pipelined requests left unanswered by a close")
                if e.partial:
                    ledger.wrong(cases[k], f"{r.path}: bytes that are no answer: {e.partial[:80]!r}")
            return False
        judge(ledger, cases[k], r, resp.status, dict(resp.headers), resp.body, resp.complete,
              time.monotonic() - started)
        if not resp.complete or "close" in (resp.h("connection") or "").lower():
            if k + 1 < len(reqs):
                ledger.count(f"h1: pipelined requests left unanswered after a {resp.status} "
                             f"({r.fault or 'healthy'}, {'cut' if not resp.complete else 'connection: close'})")
            return False
        if r.fault == "early":
            ledger.count("h1: connection kept after an early answer")
    # A relayed early answer that kept the connection open is followed by the next round on it: what
    # the gateway did with the rest of that body must not show up as an answer or a request.
    return not any(r.fault and r.fault != "early" for r in reqs)


def good_h1_client(way: Way, rng: random.Random, name: str, until: float, ledger: Ledger) -> None:
    """Keep-alive HTTP/1.1 rounds: mostly one request, sometimes 2-4 pipelined (small bodies), sometimes
    one with `Expect: 100-continue`; a new connection after any cut, close or fault."""
    conn, i = None, 0
    while time.monotonic() < until:
        roll = rng.random()
        count = rng.randrange(2, 5) if roll < 0.2 else 1
        reqs = []
        for _ in range(count):
            i += 1
            r = random_request(rng, f"{name}.{i}")
            if count > 1 and r.body is not None:
                r.body = r.body[:4000]
            reqs.append(r)
        expect = count == 1 and reqs[0].body is not None and not reqs[0].chunked_up and roll > 0.85
        cases = [f"{name} case {i - count + 1 + k} ({way.name}{', pipelined' if count > 1 else ''}"
                 f"{', expect 100' if expect else ''})" for k in range(count)]
        started = time.monotonic()
        try:
            if conn is None:
                conn = RawConn(sock=way.connect(), timeout=REQUEST_BOUND)
            if not h1_round(conn, reqs, expect, started, cases, ledger):
                conn.close()
                conn = None
        except TimeoutError as e:
            ledger.wrong(cases[0], f"{[r.path for r in reqs]}: no answer within {REQUEST_BOUND} s ({e})")
            conn.close()
            conn = None
        except (OSError, ValueError) as e:
            # a connection cut while it was being opened or written to (the TLS one by a reset)
            if all(r.fault for r in reqs):
                ledger.count("h1: connection cut while writing to a faulty path")
            else:
                ledger.wrong(cases[0], f"{[r.path for r in reqs]}: {type(e).__name__} {e}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def good_h2_client(way: Way, rng: random.Random, name: str, until: float, ledger: Ledger) -> None:
    """A connection at a time with 2-6 streams of random requests driven together, one of them now and
    then reset by the client while the others run."""
    batch = 0
    while time.monotonic() < until:
        batch += 1
        reqs = {}
        started = time.monotonic()
        try:
            s = Streams("", sock=way.connect(), scheme="https" if way.ctx else "http")
        except OSError as e:
            ledger.wrong(f"{name} batch {batch} ({way.name})", f"cannot connect: {e}")
            continue
        with s:
            for j in range(rng.randrange(2, 7)):
                r = random_request(rng, f"{name}.{batch}.{j}")
                sid = start_stream(s, r)
                reqs[sid] = r
            if rng.random() < 0.25:
                # the client gives up on one stream mid-way (its upload or its answer): only that one ends
                s.run(rng.uniform(0.02, 0.6), until=lambda: False)
                victim = rng.choice(list(reqs))
                if not s.results[victim].ended and s.results[victim].reset is None and not s.closed:
                    s.reset(victim)
                    del reqs[victim]
                    ledger.count("h2: stream reset by the client")
            results = s.run(REQUEST_BOUND)
        elapsed = time.monotonic() - started
        for sid, r in reqs.items():
            res = results[sid]
            case = f"{name} batch {batch} stream {sid} ({way.name})"
            if not res.ended and res.reset is None and not s.closed:
                ledger.wrong(case, f"{r.path}: neither ended nor reset within {REQUEST_BOUND} s")
                continue
            # An answer that ended is judged whole even if a RST_STREAM(NO_ERROR) followed it (RFC 9113
            # §8.1: the server no longer wants the rest of an upload it answered early).
            if not res.ended:
                if r.fault is None:
                    ledger.wrong(case, f"healthy {r.path}: reset {res.reset} closed={s.closed} goaway={s.goaway}")
                else:
                    judge(ledger, case, r, None, {}, b"", False, elapsed)
                continue
            headers = dict(res.headers)
            body = res.head if res.length <= len(res.head) else None
            if r.fault is None and res.status == 200:
                # the body is hashed, not kept: compare the hash
                want = tag_body(r.tag, r.n)
                body = want if res.sha256 == sha(want) and res.length == len(want) else f"<{res.length} bytes, " \
                    f"sha {res.sha256[:12]}>".encode()
            judge(ledger, case, r, res.status, headers, body if body is not None else b"<long>", True, elapsed)


def start_stream(s: Streams, r: Request) -> int:
    """Opens r's stream. `Streams` sends a body as DATA frames as windows allow and never ends a stream
    whose body is empty: that one is ended here, by an empty DATA frame with END_STREAM."""
    method = "POST" if r.body is not None else "GET"
    sid = s.start(r.path, method=method, body=r.body, length=not r.chunked_up, authority=AUTHORITY)
    if r.body == b"":
        s.bodies.pop(sid, None)
        s.conn.send_data(sid, b"", end_stream=True)
        s.flush()
    return sid


# ------------------------------------------------------------------ hostile clients


class Hostile:
    """The attacks. Each takes (rng, tag) and returns a problem or None; the bound on how long the
    gateway may take to end it is its timeout plus SLACK."""

    def __init__(self, ways: dict[str, Way], ledger: Ledger, client_hello: bytes):
        self.ways, self.ledger, self.client_hello = ways, ledger, client_hello

    def h1_way(self, rng) -> Way:
        return self.ways[rng.choice(["h1", "h1-tls"])]

    def h2_way(self, rng) -> Way:
        return self.ways[rng.choice(["h2c", "h2-tls"])]

    @staticmethod
    def ended(conn: RawConn, bound: float, statuses=()) -> str | None:
        """None once the gateway answered one of `statuses` (if any came) and closed within `bound`."""
        try:
            resp = conn.read_response(timeout=bound)
            if statuses and resp.status not in statuses:
                return f"answered {resp.status}, want one of {statuses}"
        except (Closed, TimeoutError, OSError, ValueError):
            pass
        return None if conn.wait_closed(bound) else f"still open {bound:.0f} s on"

    def slowloris(self, rng, tag):
        with RawConn(sock=self.h1_way(rng).connect()) as c:
            c.send(f"GET /hostile/slowloris/{tag} HTTP/1.1\r\nHost: {AUTHORITY}\r\n".encode())
            deadline = time.monotonic() + HEADER_TIMEOUT + SLACK
            while time.monotonic() < deadline and c.send(b"x-a: b\r\n"):
                if c.wait_closed(0.5):
                    return None
            return self.ended(c, 1, (408,))

    def paused_body(self, rng, tag):
        self.ledger.never_complete.add(tag)
        with RawConn(sock=self.h1_way(rng).connect()) as c:
            c.send(f"POST /hostile/paused/{tag} HTTP/1.1\r\nHost: {AUTHORITY}\r\nContent-Length: 100000\r\n\r\n"
                   .encode() + b"p" * 1000)
            return self.ended(c, BODY_TIMEOUT + SLACK, (408,))

    def big_head(self, rng, tag):
        with RawConn(sock=self.h1_way(rng).connect()) as c:
            c.send(f"GET /hostile/bighead/{tag} HTTP/1.1\r\nHost: {AUTHORITY}\r\nx-big: {'h' * MAX_HEADER_BYTES}"
                   "\r\n\r\n".encode())
            return self.ended(c, SLACK, (431,))

    def big_body_declared(self, rng, tag):
        self.ledger.never_seen.add(tag)
        with RawConn(sock=self.h1_way(rng).connect()) as c:
            c.send(f"POST /hostile/bigbody/{tag} HTTP/1.1\r\nHost: {AUTHORITY}\r\n"
                   f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode())
            return self.ended(c, SLACK, (413,))

    def big_body_streamed(self, rng, tag):
        self.ledger.never_complete.add(tag)
        with RawConn(sock=self.h1_way(rng).connect()) as c:
            piece = b"%x\r\n%s\r\n" % (1 << 16, b"s" * (1 << 16))
            # the lingering close after a 413 reads up to 8 MiB, so this whole write goes through
            c.send(f"POST /hostile/bigstream/{tag} HTTP/1.1\r\nHost: {AUTHORITY}\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n".encode()
                   + piece * (MAX_BODY_BYTES // (1 << 16) + 8) + b"0\r\n\r\n")
            return self.ended(c, SLACK, (413,))

    def smuggle(self, rng, tag):
        """Framing a proxy and its upstream could read apart; the bytes after are a request that must never
        reach the origin (checked by its path, `smuggled`)."""
        inner = f"GET /hostile/smuggled/{tag} HTTP/1.1\r\nHost: {AUTHORITY}\r\n\r\n"
        shapes = [
            f"Content-Length: {len(inner) + 5}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}",
            f"Content-Length: 5\r\nContent-Length: {len(inner)}\r\n\r\n{inner}",
            f"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{inner}",
            f"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{inner}",
            f"Content-Length: +{len(inner)}\r\n\r\n{inner}",
        ]
        shape = rng.randrange(len(shapes))
        with RawConn(sock=self.h1_way(rng).connect()) as c:
            c.send(f"POST /hostile/smuggle/{tag}?shape={shape} HTTP/1.1\r\nHost: {AUTHORITY}\r\n".encode()
                   + shapes[shape].encode())
            # the first shape may be served as chunked and closed (RELIABILITY.md lets either be chosen)
            return self.ended(c, SLACK, (400, 501) if shape else (200, 400))

    def garbage(self, rng, tag):
        way = self.ways[rng.choice(["h1", "h1-tls", "h2c", "h2-tls"])]
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        if way.h2 and rng.random() < 0.5:
            junk = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + junk
        with RawConn(sock=way.connect()) as c:
            c.send(junk + b"\r\n\r\n")
            # HTTP/1.1: a 400 then close; h2: GOAWAY then close; either way, closed by header-timeout
            return None if c.wait_closed(HEADER_TIMEOUT + SLACK) else "garbage left the connection open"

    def reset_mid_request(self, rng, tag):
        self.ledger.never_complete.add(tag)
        s = self.h1_way(rng).connect()
        s.sendall(f"POST /hostile/rstreq/{tag} HTTP/1.1\r\nHost: {AUTHORITY}\r\nContent-Length: 500000\r\n\r\n"
                  .encode() + b"r" * rng.randrange(0, 300000))
        abort(s)

    def reset_mid_response(self, rng, tag):
        way = self.h1_way(rng)
        s = way.connect()
        s.sendall(f"GET /ok/{tag}?n={2 << 20} HTTP/1.1\r\nHost: {AUTHORITY}\r\n\r\n".encode())
        got, deadline = 0, time.monotonic() + SLACK
        want = rng.randrange(1, 1 << 20)
        while got < want and time.monotonic() < deadline:
            try:
                d = s.recv(65536)
            except OSError:
                break
            if not d:
                break
            got += len(d)
        abort(s)

    def h2_attack(self, rng, frames_of) -> str | None:
        """Sends what frames_of(raw) makes; the gateway must end the connection (GOAWAY or close)."""
        way = self.h2_way(rng)
        raw = RawH2("", sock=way.connect(), settings={})
        frames_of(raw, way)
        s = raw.ended_by_server(HEADER_TIMEOUT + SLACK)
        raw.close()
        return None if s.goaway is not None or s.closed else f"{way.name}: not ended, saw {s.frames[-5:]}"

    def rapid_reset(self, rng, tag):
        def frames(raw, way):
            sid = 1
            for _ in range(10):
                batch = b""
                for _ in range(200):
                    h = HeadersFrame(sid, flags=["END_STREAM", "END_HEADERS"])
                    h.data = raw.block(path=f"/hostile/rr/{tag}", authority=AUTHORITY, scheme=scheme(way))
                    batch += h.serialize() + RstStreamFrame(sid, error_code=CANCEL).serialize()
                    sid += 2
                if not raw.send(batch):
                    return
        return self.h2_attack(rng, frames)

    def ping_flood(self, rng, tag):
        return self.h2_attack(rng, lambda raw, way: all(
            raw.send(PingFrame(0, opaque_data=b"12345678").serialize() * 400) for _ in range(30)))

    def settings_flood(self, rng, tag):
        return self.h2_attack(rng, lambda raw, way: all(
            raw.send(SettingsFrame(0, settings={0x4: 65535}).serialize() * 400) for _ in range(30)))

    def continuation_flood(self, rng, tag):
        def frames(raw, way):
            raw.headers(1, block=raw.block(path=f"/hostile/cont/{tag}", authority=AUTHORITY, scheme=scheme(way)),
                        end_headers=False)
            junk = raw.enc.encode([("x-flood", "a" * 100)])
            for _ in range(2000):
                if not raw.frame(ContinuationFrame(1, data=junk)):
                    return
        return self.h2_attack(rng, frames)

    def zero_window(self, rng, tag):
        """A reader that never opens its window for a 1 MiB answer: the stream or the connection is ended
        once body-timeout passes without a byte going out."""
        way = self.h2_way(rng)
        with RawH2("", sock=way.connect(), settings={0x4: 0}) as raw:
            raw.headers(1, path=f"/ok/{tag}?n={1 << 20}", authority=AUTHORITY, scheme=scheme(way))
            s = raw.read_frames(time.monotonic() + BODY_TIMEOUT + IDLE_TIMEOUT + SLACK,
                                stop=lambda s: 1 in s.resets or s.goaway is not None or s.closed)
            return None if 1 in s.resets or s.goaway is not None or s.closed else f"{way.name}: zero window held"

    def tls_half_handshake(self, rng, tag):
        port = self.ways["h1-tls"].port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            c = RawConn(sock=s)
            # part of a ClientHello, or all of it and then nothing (the server's flight is left unanswered)
            c.send(self.client_hello[:rng.randrange(1, len(self.client_hello) + 1)])
            return None if c.wait_closed(HEADER_TIMEOUT + SLACK) else "a handshake held past header-timeout"

    def stops_reading(self, rng, tag):
        """An HTTP/1.1 client that asks for 24 MiB and reads none of it: more than the socket buffers
        hold, so the gateway's writes stall and body-timeout must end the connection."""
        n = 24 << 20
        s = self.h1_way(rng).connect()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(f"GET /ok/{tag}?n={n} HTTP/1.1\r\nHost: {AUTHORITY}\r\n\r\n".encode())
            time.sleep(BODY_TIMEOUT + 3)
            got, deadline = 0, time.monotonic() + BODY_TIMEOUT + SLACK
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    d = s.recv(1 << 20)
                except TimeoutError:
                    break
                except OSError:
                    return None
                if not d:
                    return None
                got += len(d)
                if got > n:
                    return f"more than the {n} bytes asked for: {got}"
            return f"still open after {got} bytes"
        finally:
            abort(s)

    def all(self):
        return [self.slowloris, self.paused_body, self.big_head, self.big_body_declared, self.big_body_streamed,
                self.smuggle, self.garbage, self.reset_mid_request, self.reset_mid_response, self.rapid_reset,
                self.ping_flood, self.settings_flood, self.continuation_flood, self.zero_window,
                self.tls_half_handshake, self.stops_reading]


def scheme(way: Way) -> str:
    return "https" if way.ctx else "http"


def abort(s: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): the client vanished."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def hostile_client(hostile: Hostile, rng: random.Random, name: str, until: float) -> None:
    i = 0
    while time.monotonic() < until:
        i += 1
        attack = rng.choice(hostile.all())
        tag = f"{name}.{i}"
        try:
            problem = attack(rng, tag)
        except OSError as e:
            # the gateway closing on an attacker while it writes is an answer, not a problem
            problem = None if isinstance(e, (ConnectionError, ssl.SSLError, socket.timeout)) else repr(e)
        hostile.ledger.count(f"attack {attack.__name__}")
        if problem:
            hostile.ledger.wrong(f"{name} case {i} {attack.__name__} ({tag})", problem)


def client_hello_bytes(ca) -> bytes:
    """A real ClientHello for edge.test, made in memory (never completed)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=AUTHORITY)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


# ------------------------------------------------------------------ process state


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def client_connections(pid: int, port: int) -> int:
    """Connections accepted on `port` that process `pid` still holds (any state but LISTEN): read from its
    descriptors' socket inodes and /proc/net/tcp, so pooled upstream connections do not count."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return -1
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            cols = row.split()
            if cols[1] == f"0100007F:{port:04X}" and cols[3] != "0A" and cols[9] in inodes:
                n += 1
    return n


def fresh_request_each_way(ways: dict[str, Way], tag: str) -> list[str]:
    """One healthy request with a body over each way in; what was wrong (empty: all exact)."""
    ledger = Ledger()
    for name, way in ways.items():
        r = Request(f"{tag}-{name}", None, tag_body(tag, 70_000), 90_000, False, False)
        case = f"fresh {name}"
        started = time.monotonic()
        if way.h2:
            with Streams("", sock=way.connect(), scheme=scheme(way)) as s:
                sid = start_stream(s, r)
                res = s.run(REQUEST_BOUND)[sid]
            want = tag_body(r.tag, r.n)
            body = want if res.sha256 == sha(want) and res.length == len(want) else b"<other>"
            judge(ledger, case, r, res.status, dict(res.headers), body, res.ended, time.monotonic() - started)
        else:
            with RawConn(sock=way.connect()) as c:
                c.send(h1_head(r) + h1_body(r))
                resp = c.read_response()
            judge(ledger, case, r, resp.status, dict(resp.headers), resp.body, resp.complete,
                  time.monotonic() - started)
    return ledger.problems


def forwarded_head_problems(requests: list[RecordedRequest]) -> list[str]:
    """What is wrong in the heads the good clients' requests reached the origin with: the re-framing of
    RELIABILITY.md (CRLF, one Host, one framing header written by the gateway) and runtime/README.md's
    added fields (one `x-request-id`, never shared by two requests; `x-forwarded-proto` and `via` of the
    way in). A request sent again after the keep-alive race keeps its id: same tag, same id."""
    problems, ids = [], {}
    for req in requests:
        if req.head_error or not req.path.startswith(("/ok/", "/fault/", "/hostile/")):
            problems.append(f"a request no client sent: {req!r}")
            continue
        if not req.path.startswith(("/ok/", "/fault/")):
            continue
        tag = req.path.rsplit("/", 1)[1]
        rid = req.header("x-request-id")
        if req.head_error or not req.head_crlf or len(req.header("host")) != 1 or len(rid) != 1 \
                or req.header("content-length") and req.header("transfer-encoding") \
                or req.header("via") not in (["1.1 blitz"], ["2 blitz"]):
            problems.append(f"forwarded head: {req!r}")
            continue
        if ids.setdefault(rid[0], tag) != tag:
            problems.append(f"x-request-id {rid[0]} on {ids[rid[0]]} and {tag}")
        if tag.startswith("good-"):
            # RFC 9110 §7.6.3: `via` names the protocol version the gateway received
            want = ["https" if "-tls-" in tag else "http", "2 blitz" if tag.startswith("good-h2") else "1.1 blitz"]
            if [*req.header("x-forwarded-proto"), *req.header("via")] != want:
                problems.append(f"x-forwarded-proto/via not {want} for {tag}: {req!r}")
    return problems


# ------------------------------------------------------------------ the test


@pytest.fixture(scope="module")
def certs(pki):
    """Two leaves for edge.test and the files the gateway reads, swapped between them on SIGHUP."""
    pki.leaf("edge2", AUTHORITY)
    shutil.copy(pki.path("edge.crt"), pki.path("served.crt"))
    shutil.copy(pki.path("edge.key"), pki.path("served.key"))
    return pki


def swap_certificate(pki, cert: str, key: str) -> None:
    """Points served.crt at leaf `cert` and served.key at leaf `key`'s key (each file replaced whole, both
    before any SIGHUP; `cert` != `key` is a pair that does not match, which a reload must refuse)."""
    for ext, name in (("crt", cert), ("key", key)):
        tmp = pki.path(f"served.{ext}.tmp")
        shutil.copy(pki.path(f"{name}.{ext}"), tmp)
        os.replace(tmp, pki.path(f"served.{ext}"))


@pytest.mark.timeout(150)
def test_chaos_mix(start_gateway, certs):
    rng = random.Random(SEED)
    origin = ChaosOrigin()
    try:
        plain = start_gateway(upstream=origin.addr, protocols="h1,h2c", **LIMITS)
        tls = start_gateway(upstream=origin.addr, protocols="h1,h2", tls_cert=certs.path("served.crt"),
                            tls_key=certs.path("served.key"), **LIMITS)
        ca = certs.path("ca.crt")
        ways = {
            "h1": Way("h1", plain.port, None),
            "h1-tls": Way("h1-tls", tls.port, tls_context(ca, "http/1.1")),
            "h2c": Way("h2c", plain.port, None),
            "h2-tls": Way("h2-tls", tls.port, tls_context(ca, "h2")),
        }
        # warm up (pools, buffers, TLS state) before the baseline
        for k in range(3):
            assert fresh_request_each_way(ways, f"warm{k}") == []
        time.sleep(IDLE_TIMEOUT + 1)
        gws = {"plain": plain, "tls": tls}
        base = {n: (settled_fd_count(g.pid, timeout=5), threads_of(g.pid), g.rss_kib()) for n, g in gws.items()}
        print(f"\nseed={SEED} (BLITZ_RANDOM_SEED to change it), {CHAOS_SECONDS:.0f} s; baseline (fds, threads, "
              f"RSS KiB): {base}")

        ledger = Ledger()
        hostile = Hostile(ways, ledger, client_hello_bytes(ca))
        until = time.monotonic() + CHAOS_SECONDS
        threads = []
        for way in ways.values():
            for k in range(2):
                name = f"good-{way.name}-{k}"
                target = good_h2_client if way.h2 else good_h1_client
                threads.append(threading.Thread(target=target, args=(way, random.Random(rng.random()), name, until,
                                                                     ledger), daemon=True))
        for k in range(3):
            threads.append(threading.Thread(target=hostile_client,
                                            args=(hostile, random.Random(rng.random()), f"hostile-{k}", until),
                                            daemon=True))
        for t in threads:
            t.start()
        served = "edge"
        reloads = {"good": 0, "broken": 0}
        while time.monotonic() < until:
            time.sleep(min(rng.uniform(2, 4), max(0.0, until - time.monotonic())))
            other = "edge2" if served == "edge" else "edge"
            if rng.random() < 0.25:
                # the other leaf's certificate beside this one's key: refused, the current pair kept
                swap_certificate(certs, other, served)
                reloads["broken"] += 1
            else:
                served = other
                swap_certificate(certs, served, served)
                reloads["good"] += 1
            tls.signal(signal.SIGHUP)
        ledger.counts["SIGHUP"] = dict(reloads)
        # every client's own bound ends it; a thread still running long after is itself a hang
        for t in threads:
            t.join(REQUEST_BOUND + 2 * SLACK)
        hung = [t.name for t in threads if t.is_alive()]

        print("counts:", dict(sorted(ledger.counts.items())))
        assert plain.alive() and tls.alive(), f"a gateway died: {plain.crashed() or tls.crashed()}"
        assert not hung, f"client threads still blocked after the run: {hung}"

        fresh = fresh_request_each_way(ways, "after")
        served_now = wait_until(lambda: served_cert(tls.port, AUTHORITY) == certs.der(served), 5)

        # idle-timeout closes every keep-alive connection left; then descriptors and threads settle
        after = {}
        for n, g in gws.items():
            fds0, thr0, _ = base[n]
            wait_until(lambda g=g, fds0=fds0, thr0=thr0: fd_count(g.pid) <= fds0 + FD_SLACK
                       and threads_of(g.pid) <= thr0 + THREAD_SLACK and client_connections(g.pid, g.port) == 0,
                       IDLE_TIMEOUT + BODY_TIMEOUT + SLACK, step=0.5)
            after[n] = (fd_count(g.pid), threads_of(g.pid), rss_kib(g.pid), client_connections(g.pid, g.port))
        print(f"after (fds, threads, RSS KiB, client connections): {after}")

        origin_problems = []
        with origin.cond:
            for req in origin.requests:
                parts = req.path.split("/")
                tag = parts[3] if len(parts) > 3 else ""
                if tag in ledger.never_seen or "smuggled" in req.path:
                    origin_problems.append(f"reached the origin: {req!r}")
                elif tag in ledger.never_complete and req.complete:
                    origin_problems.append(f"completed upstream: {req!r}")

        origin_problems += forwarded_head_problems(origin.requests)
        if origin.late:
            origin_problems.append(f"upstream connections written to after a stall or garbage: {origin.late}")
        panics = [ln for g in gws.values() for ln in g.stderr().splitlines() if "panic" in ln.lower()]
        shapes: dict[str, int] = {}
        for g in gws.values():
            for ln in g.stderr().splitlines():
                shapes[ln[:70]] = shapes.get(ln[:70], 0) + 1
        print("stderr lines by their first 70 characters:", shapes)
        assert not ledger.problems, f"{len(ledger.problems)} wrong answers:\n" + "\n".join(ledger.problems[:40])
        assert not origin_problems, "\n".join(origin_problems[:20])
        assert fresh == [], f"after the run: {fresh}"
        assert served_now, f"after the last SIGHUP the TLS gateway does not serve {served}.crt"
        # every SIGHUP handled, each as its files deserved
        tls_log = tls.stderr()
        assert (tls_log.count("certificate(s) reloaded"), tls_log.count("certificates not reloaded")) == \
            (reloads["good"], reloads["broken"]), tls_log[-2000:]
        for n in gws:
            fds0, thr0, _ = base[n]
            fds1, thr1, rss1, clients = after[n]
            assert clients == 0, f"{n}: {clients} client connections still held once idle"
            assert fds1 <= fds0 + FD_SLACK, f"{n}: descriptors {fds0} -> {fds1} once idle"
            assert thr1 <= thr0 + THREAD_SLACK, f"{n}: threads {thr0} -> {thr1} once idle"
            assert rss1 < 256 * 1024, f"{n}: RSS {rss1} KiB after the run"
        assert not panics, "\n".join(panics)
    finally:
        origin.stop()
