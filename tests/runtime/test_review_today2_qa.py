"""A review of the runtime changes of 2026-11-28 (86dd3ce..78f86ee), each
suspicion from reading the diff proven or pinned against hello_gateway with
real clients (hyperframe frames, raw sockets) and hand-written origins:

- `upstream.rs::HeadClock`: each of the first 16 interim answers starts the
  wait for the response head again; with a body, once the body was sent;
- `http2/exchange.rs::send_request_body` / `end_of_body` / `empty_body_end`:
  the last byte of a body with a length waits for END_STREAM, request
  trailers are checked (400 before an answer, RST_STREAM(PROTOCOL_ERROR)
  after one), a `content-length: 0` head without END_STREAM waits for the
  stream's end before it goes up;
- `http2/watch.rs`: a HEADERS frame depending on its own stream ends the
  connection (GOAWAY(PROTOCOL_ERROR));
- `http2/translate.rs`: `:scheme` case-insensitive;
- `tls/stream.rs`: a read sends what rustls queued in answer to it, on the
  turn to send a writer may hold (`sending`).

Bugs found in those changes, fixed since, each beside a passing control:

- A `content-length: 0` request whose END_STREAM comes later than
  `response` after the stream opened is answered 504 at once, though the
  upstream answered 200 in a millisecond (and did the POST): the head goes
  up only after `empty_body_end`, but `forward_request` starts the head's
  clock with `HeadClock::sent_at(t.now, ...)`, `t.now` being the try's
  start, before the wait for END_STREAM.
- A bad trailer section arriving together with the last DATA frame does not
  hold the last byte back: `send_request_body` reads the frames at hand
  with `now_or_never`, which ends the batch (`ended = true`) when the DATA
  frames end, trailers or not, and the hold-back is skipped on `!ended`.
  The upstream gets the whole body (and answers it) while the client gets
  400: the malformed request was forwarded, what the hold-back is for
  (RFC 9113 §8.1.1). The control: the same trailers a moment later.
- Interims that arrive while the body is still going up use up the 16
  that may start the wait again, though they start nothing (there is no
  deadline while uploading: `HeadClock::interim` does nothing, but
  `read_response_head` counts them): an upstream that sent 16 `103`/`102`
  while it read a slow upload, then `102` every 0.5 s while it works, is cut
  at `response` after the body (504), over HTTP/1.1 and h2c; without the
  early interims it is served (the control). Now only interims that
  start the wait again count toward the 16.

Pinned (behaviour the changes chose or that holds):

- a client that sends a body with a length whole but waits for the answer
  before its END_STREAM (legal: RFC 9113 does not tie END_STREAM to the
  last DATA) now gets 408 at body-timeout, the upstream having got every
  byte but the last (docs/architecture.md: the last byte waits for the
  stream's end); an early answer (full duplex) echoes all but the held
  byte, which goes up with the END_STREAM that comes after the answer;
- a reset while the byte is held: the upstream request is never completed
  and its connection is not used again;
- a bad trailer after an early answer resets the stream with
  PROTOCOL_ERROR, the upstream never getting the last byte; bad trailers
  on a `content-length: 0` stream: 400 and nothing forwarded; good ones:
  served;
- a PRIORITY frame (type 2) depending on its own stream is a stream error
  (RST_STREAM PROTOCOL_ERROR, no HPACK involved), the connection serves on;
  a trailers HEADERS (or an exclusive one) depending on itself ends the
  connection as the head's does;
- an HTTP/1.0 client, to which no interim is relayed, has its wait started
  again by them all the same; the gateway's 504 after interims is dated;
  the 16th interim starts the wait again, the 17th does not; 5000 interims
  at once are read and dropped in bounded memory, the 200 after them relayed;
- `:scheme` `HTTP` served as `http`;
- KeyUpdates asking for one back during an 8 MiB h2 download over TLS:
  every record decrypts, the download is whole, each batch is answered, and
  one sent on the quiet connection is answered before the next record.
  (rustls keeps that answer until it next sends a record, which RFC 8446
  §4.6.3 allows: `send_answers` never sends it on its own, whatever its
  comment says; a PING after it gets both.)
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import select
import socket
import subprocess
import time
from urllib.parse import parse_qs, urlsplit

import hpack
import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from support.client import RawConn
from support.gateway import Gateway
from support.h2client import PREFACE, PROTOCOL_ERROR, RawH2, Seen
from support.origin import ThreadPerConnection, pattern_sha256

RESPONSE = 1.5  # the gateways' response timeout
BODY_TIMEOUT = 3
BOUND = 10  # how long any wait here may block


class Precondition(Exception):
    """A step a test relies on went wrong: never taken for the bug its strict
    xfail names (the xfails expect AssertionError only)."""


class ScriptedOrigin(ThreadPerConnection):
    """One request per connection, its part chosen by the path:

    - `/work?pre=P&n=N&gap=S[&last_gap=L]`: `P` `102 Processing` at once
      after the head, then reads the body (content-length), then `N` more
      `S` seconds apart (the last one `L` after the one before), then
      `200 done` (`L` after the last);
    - `/duplex`: answers `200` (chunked) at once, then echoes each read of
      the body (content-length) as a chunk, then the last chunk;
    - anything else: reads the body (content-length or chunked), answers 200.

    What each connection received is kept in `received[path]` (bytes after
    the head), with `done[path]` set once the body was read whole."""

    def __init__(self):
        self.received: dict[str, bytes] = {}
        self.done: dict[str, bool] = {}
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        c.settimeout(BOUND + 5)
        with c:
            try:
                # A keep-alive answer keeps the connection serving: the
                # gateway pools it, and a close right after the answer could
                # meet its next request (a body is never replayed: 502).
                while self._exchange(c):
                    pass
            except OSError:
                return

    def _exchange(self, c: socket.socket) -> bool:
        """One request; whether the connection may serve another."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return False
            buf += d
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        fields = {n.strip().lower(): v.strip() for n, _, v in (ln.partition(b":") for ln in lines[1:])}
        target = lines[0].split(b" ")[1].decode()
        path, query = urlsplit(target).path, parse_qs(urlsplit(target).query)
        length = int(fields.get(b"content-length", b"0"))
        self.received[path], self.done[path] = body, False

        def take_body(echo: bool) -> bool:
            nonlocal body
            if echo and body:
                c.sendall(b"%x\r\n%s\r\n" % (len(body), body))
            while len(self.received[path]) < length:
                d = c.recv(65536)
                if not d:
                    return False
                self.received[path] += d
                if echo:
                    c.sendall(b"%x\r\n%s\r\n" % (len(d), d))
            self.done[path] = True
            return True

        if path == "/duplex":
            # No `connection: close`: the gateway stops an upload beside such an answer.
            c.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            if take_body(echo=True):
                c.sendall(b"0\r\n\r\n")
                return True
            return False
        if path == "/work":
            for _ in range(int(query["pre"][0])):
                c.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
            if not take_body(echo=False):
                return False
            n, gap = int(query["n"][0]), float(query["gap"][0])
            last_gap = float(query.get("last_gap", [gap])[0])
            for i in range(n):
                time.sleep(last_gap if i == n - 1 else gap)
                c.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
            time.sleep(last_gap)
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone")
            return False
        if fields.get(b"transfer-encoding"):
            while not self.received[path].endswith(b"0\r\n\r\n"):
                d = c.recv(65536)
                if not d:
                    return False
                self.received[path] += d
            self.done[path] = True
        elif not take_body(echo=False):
            return False
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
        return False


@pytest.fixture(scope="module")
def scripted():
    o = ScriptedOrigin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def gw(hello_bin, scripted, tmp_path_factory):
    g = Gateway(hello_bin, scripted.addr, log_dir=tmp_path_factory.mktemp("logs"), protocols="h1,h2c", workers=1,
                response_timeout=f"{int(RESPONSE * 1000)}ms", body_timeout=BODY_TIMEOUT).start()
    yield g
    g.kill()


def h2(gw: Gateway) -> RawH2:
    return RawH2(f"127.0.0.1:{gw.port}", timeout=BOUND)


def until_stream_ends(c: RawH2, sid: int, timeout: float = BOUND) -> Seen:
    """Frames until stream `sid` ends (END_STREAM or reset) or the connection does."""
    return c.read_frames(time.monotonic() + timeout,
                         stop=lambda s: sid in s.ended or sid in s.resets or s.goaway is not None)


def post(c: RawH2, sid: int, path: str, length: int | None) -> None:
    """A POST's HEADERS without END_STREAM, with `content-length: length` unless None."""
    extra = [] if length is None else [("content-length", str(length))]
    c.headers(sid, c.block(method="POST", path=path, extra=extra), end_stream=False)


def trailers(c: RawH2, sid: int, fields: list[tuple[str, str]]) -> bytes:
    """A trailers HEADERS frame (END_STREAM), serialized."""
    return HeadersFrame(sid, c.enc.encode(fields), flags=["END_STREAM", "END_HEADERS"]).serialize()


# ---------------------------------------------------------------- content-length: 0 without END_STREAM


@pytest.mark.parametrize("late", [
    pytest.param(False, id="control-ended-within-response"),
    pytest.param(True, id="ended-after-response"),
])
def test_content_length_0_is_timed_from_when_it_went_up(gw, scripted, late):
    """The head goes up once END_STREAM came (`empty_body_end`): the wait
    for the answer starts then. An upstream answering at once is relayed,
    however long the client took to end its stream (within body-timeout)."""
    path = f"/cl0-{'late' if late else 'soon'}"
    with h2(gw) as c:
        post(c, 1, path, 0)
        time.sleep(RESPONSE + 0.5 if late else 0.2)
        if path in scripted.received:
            raise Precondition("the head went up before END_STREAM")
        c.frame(DataFrame(1, b"", flags=["END_STREAM"]))
        s = until_stream_ends(c, 1)
    assert scripted.done.get(path), "the origin got the request whole (and answered it)"
    assert (s.status(1), s.data.get(1)) == (200, b"ok\n"), s


# ---------------------------------------------------------------- trailers and the held byte


@pytest.mark.parametrize("together", [
    pytest.param(False, id="control-trailers-later"),
    pytest.param(True, id="trailers-with-the-last-data"),
])
def test_a_body_with_bad_trailers_is_never_completed_upstream(gw, scripted, together):
    """RFC 9113 §8.1.1: a malformed request is not forwarded. Its last byte
    waits for the end of the stream, and the end is a trailer field with a
    space before its value: 400, and the upstream never gets the body whole."""
    path = f"/bad-trailers-{'together' if together else 'later'}"
    with h2(gw) as c:
        post(c, 1, path, 5)
        data = DataFrame(1, b"hello").serialize()
        bad = trailers(c, 1, [("x-sum", " 5")])
        if together:
            c.send(data + bad)
        else:
            c.send(data)
            time.sleep(0.5)
            c.send(bad)
        s = until_stream_ends(c, 1)
    assert s.status(1) == 400, s
    time.sleep(0.3)
    assert scripted.received.get(path) == b"hell", "every byte but the held one went up"
    assert not scripted.done.get(path)


def test_bad_trailers_on_content_length_0_forward_nothing(gw, scripted):
    with h2(gw) as c:
        post(c, 1, "/cl0-bad-trailers", 0)
        c.send(trailers(c, 1, [("x-sum", "0\t")]))
        s = until_stream_ends(c, 1)
        post(c, 3, "/cl0-good-trailers", 0)
        c.send(trailers(c, 3, [("x-sum", "0")]))
        s = until_stream_ends(c, 3)
    assert s.status(1) == 400, s
    assert "/cl0-bad-trailers" not in scripted.received
    assert s.status(3) == 200, s
    assert scripted.done.get("/cl0-good-trailers")


def test_a_bad_trailer_after_an_early_answer_resets_the_stream(gw, scripted):
    """The upstream answered 200 at once and echoes the body: the client
    sees all of it but the held byte, then its bad trailers reset the
    stream (PROTOCOL_ERROR) and the held byte never goes up."""
    with h2(gw) as c:
        post(c, 1, "/duplex", 5)
        c.frame(DataFrame(1, b"hello"))
        c.read_frames(time.monotonic() + BOUND, stop=lambda s: s.data.get(1, b"") == b"hell")
        if c.seen.status(1) != 200:
            raise Precondition(f"no early answer: {c.seen}")
        assert c.seen.data.get(1) == b"hell", c.seen
        c.send(trailers(c, 1, [("x-sum", "5 ")]))
        s = until_stream_ends(c, 1)
    assert s.resets.get(1) == PROTOCOL_ERROR, s
    assert 1 not in s.ended
    assert scripted.received["/duplex"] == b"hell"


def test_the_held_byte_goes_up_with_an_end_stream_after_the_answer(gw, scripted):
    """Full duplex: the answer started, every byte but the last echoed; the
    client ends its stream only once it saw that echo. The last byte goes
    up then and its echo ends the answer."""
    with h2(gw) as c:
        post(c, 1, "/duplex", 5)
        c.frame(DataFrame(1, b"hello"))
        c.read_frames(time.monotonic() + BOUND, stop=lambda s: s.data.get(1, b"") == b"hell")
        time.sleep(0.3)
        assert c.seen.data.get(1) == b"hell", "the last byte waits for END_STREAM"
        c.frame(DataFrame(1, b"", flags=["END_STREAM"]))
        s = until_stream_ends(c, 1)
    assert (s.status(1), s.data.get(1), 1 in s.ended) == (200, b"hello", True), s
    assert scripted.done["/duplex"]


def test_a_client_ending_its_stream_after_the_answer_waits_for_body_timeout(gw, scripted):
    """The other side of the hold-back: a client that sent its whole body
    but keeps the stream open until it has the answer (legal), in front of
    an upstream that answers once it read the whole body, gets 408 at
    body-timeout; the upstream never got the last byte."""
    with h2(gw) as c:
        post(c, 1, "/whole-body-first", 5)
        c.frame(DataFrame(1, b"hello"))
        s = until_stream_ends(c, 1, timeout=BODY_TIMEOUT + BOUND)
    assert s.status(1) == 408, s
    assert scripted.received["/whole-body-first"] == b"hell"
    assert not scripted.done["/whole-body-first"]


def test_a_reset_while_the_last_byte_is_held_leaves_the_request_incomplete(gw, scripted):
    with h2(gw) as c:
        post(c, 1, "/reset-held", 5)
        c.frame(DataFrame(1, b"hello"))
        time.sleep(0.5)
        c.frame(RstStreamFrame(1, error_code=0x8))
        c.headers(3, c.block(path="/after-reset"))
        s = until_stream_ends(c, 3)
    assert s.status(3) == 200, s
    assert scripted.received["/reset-held"] == b"hell"
    assert not scripted.done["/reset-held"]


# ---------------------------------------------------------------- priority


def test_a_priority_frame_depending_on_its_own_stream_is_a_stream_error(gw):
    """RFC 9113 §5.3.1: a stream error; a PRIORITY frame has no field block,
    so no HPACK state is at stake and the connection goes on."""
    with h2(gw) as c:
        c.frame(PriorityFrame(3, depends_on=3, stream_weight=16))
        c.headers(5, c.block(path="/after-priority"))
        s = until_stream_ends(c, 5)
    assert s.resets.get(3) == PROTOCOL_ERROR, s
    assert s.goaway is None and s.status(5) == 200, s


@pytest.mark.parametrize("part", ["trailers", "exclusive-head", "padded-head-in-pieces"])
def test_a_headers_frame_depending_on_its_own_stream_ends_the_connection(gw, part):
    """The trailers' field block is HPACK-decoded as the head's is, so the
    same rule holds; an exclusive flag or padding before the dependency
    (sent a byte at a time) changes nothing."""
    with h2(gw) as c:
        flags, pad = ["END_STREAM", "END_HEADERS", "PRIORITY"], 0
        if part == "trailers":
            post(c, 1, "/self-dependent-trailers", None)
            c.frame(DataFrame(1, b"hello"))
            block, exclusive = c.enc.encode([("x-sum", "5")]), False
        else:
            block, exclusive = c.block(path="/self-dependent"), part == "exclusive-head"
            if part == "padded-head-in-pieces":
                flags, pad = flags + ["PADDED"], 3
        frame = HeadersFrame(1, block, flags=flags, depends_on=1, stream_weight=16, exclusive=exclusive,
                             pad_length=pad).serialize()
        if pad:
            # Split inside the dependency (9-byte frame header, pad length,
            # then its 4 bytes): the verdict comes once its last byte is in,
            # before the field block, which is not sent.
            dependency_ends = 9 + 1 + 4
            for piece in (frame[:12], frame[12:dependency_ends]):
                c.send(piece)
                time.sleep(0.1)
        else:
            c.send(frame)
        s = c.ended_by_server(BOUND)
    assert s.goaway == PROTOCOL_ERROR, s


def test_scheme_in_upper_case_is_http(gw, scripted):
    with h2(gw) as c:
        c.headers(1, c.block(path="/upper-scheme", scheme="HTTP"))
        s = until_stream_ends(c, 1)
    assert s.status(1) == 200, s


# ---------------------------------------------------------------- interims


def h1_work(gw: Gateway, version: str, pre: int, n: int, gap: float, body: bytes = b"", body_after: int = 0,
            last_gap: float | None = None):
    """A request to `/work` over HTTP/1.x; with `body_after`, the body goes
    only once that many interims came back. Returns every answer read."""
    with RawConn(gw.port, timeout=BOUND) as c:
        last = "" if last_gap is None else f"&last_gap={last_gap}"
        head = f"POST /work?pre={pre}&n={n}&gap={gap}{last} HTTP/{version}\r\nHost: a.test\r\n"
        c.send(head.encode() + b"content-length: %d\r\n\r\n" % len(body) + (b"" if body_after else body))
        answers = []
        while not answers or answers[-1].status < 200:
            answers.append(c.read_response("POST", timeout=BOUND))
            if body_after and len(answers) == body_after:
                c.send(body)
        return answers


def test_interims_not_relayed_to_an_http10_client_start_the_wait_again(gw):
    """No 1xx goes to an HTTP/1.0 client (RFC 9110 §15.2), but the upstream
    is at work all the same: 6 interims 0.5 s apart (3 s, twice `response`)
    then its 200; the control: the same silence without them is a 504."""
    served = h1_work(gw, "1.0", 0, 6, 0.5, b"x")
    assert [a.status for a in served] == [200], served
    assert served[-1].body == b"done"
    cut = h1_work(gw, "1.0", 0, 0, RESPONSE + 1.5, b"x")
    assert [a.status for a in cut] == [504], cut
    assert email.utils.parsedate_to_datetime(cut[-1].h("date")), "the 504 is dated"


@pytest.mark.parametrize("pre", [
    pytest.param(0, id="control-no-interims-while-uploading"),
    pytest.param(16, id="16-interims-while-uploading"),
])
def test_interims_after_the_upload_start_the_wait_again(gw, pre):
    """The upstream sends `pre` interims as it gets the head (the client
    sends its body only once it saw them), then reads the body and sends
    6 `102` 0.5 s apart (3 s, twice `response`) before its 200."""
    answers = h1_work(gw, "1.1", pre, 6, 0.5, b"body", body_after=pre)
    statuses = [a.status for a in answers]
    if statuses[:pre] != [102] * pre:
        raise Precondition(f"the early interims were not relayed: {statuses}")
    assert statuses[-1] == 200, statuses


# ---------------------------------------------------------------- TLS: answers to what a read brought


DOWNLOAD = 8 << 20


def h2_data_of_stream_1(out: bytes) -> tuple[bytes, bool, list[str]]:
    """The DATA of stream 1 in `out` (HTTP/2 frames as the server sent
    them), whether it ended, and the types of every frame parsed."""
    data, ended, kinds, at = bytearray(), False, [], 0
    while len(out) - at >= 9:
        length = int.from_bytes(out[at:at + 3], "big")
        if len(out) - at < 9 + length:
            break
        f, _ = Frame.parse_frame_header(memoryview(out[at:at + 9]))
        f.parse_body(memoryview(out[at + 9:at + 9 + length]))
        at += 9 + length
        kinds.append(type(f).__name__)
        if isinstance(f, DataFrame) and f.stream_id == 1:
            data += f.data
            ended = ended or "END_STREAM" in f.flags
    return bytes(data), ended, kinds


@pytest.mark.timeout(60)
def test_key_updates_during_an_h2_download_over_tls_interleave_no_record(start_gateway, origin, pki, tmp_path):
    """RFC 8446 §4.6.3: a KeyUpdate asking for one back is answered. Over
    h2 the gateway reads (and so answers) while it writes an 8 MiB
    download: the answer goes on the turn to send (`TlsStream::sending`),
    the writer's or the reader's, never inside another record. The client
    (`openssl s_client`, HTTP/2 frames written raw on its stdin, each
    stdin read starting with `K` a KeyUpdate) decrypts every byte: the
    download arrives whole, its hash the origin's."""
    g = start_gateway(tls_cert=pki.path("edge.crt"), tls_key=pki.path("edge.key"), protocols="h1,h2", workers=1)
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{g.port}", "-servername", "edge.test", "-tls1_3",
         "-alpn", "h2", "-CAfile", str(pki.path("ca.crt")), "-quiet", "-no_ign_eof",
         "-msg", "-msgfile", str(tmp_path / "msg")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, updates = b"", 0
    enc = hpack.Encoder()
    head = enc.encode([(":method", "GET"), (":scheme", "https"), (":authority", "edge.test"),
                       (":path", f"/bytes/{DOWNLOAD}")])

    def write(data: bytes) -> None:
        p.stdin.write(data)
        p.stdin.flush()
        time.sleep(0.05)  # one stdin read per write: s_client looks at each read's first byte

    try:
        write(PREFACE + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 24}).serialize()
              + WindowUpdateFrame(0, window_increment=1 << 24).serialize())
        write(HeadersFrame(1, head, flags=["END_STREAM", "END_HEADERS"]).serialize())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 0.05)[0]:
                got = os.read(p.stdout.fileno(), 1 << 16)
                if not got:
                    break
                out += got
            data, ended, _ = h2_data_of_stream_1(out)
            if ended:
                break
            if len(data) > updates * (DOWNLOAD // 8) and updates < 6:
                write(b"K\n")
                updates += 1
        # The connection quiet: one more, then a PING whose ACK is the next
        # application data record, which the answer must precede.
        write(b"K\n")
        write(PingFrame(0, opaque_data=b"rvr-ping").serialize())
        deadline = time.monotonic() + BOUND
        while b"rvr-ping" not in out[-4096:] and time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 0.05)[0]:
                out += os.read(p.stdout.fileno(), 1 << 16)
        pinged = b"rvr-ping" in out[-4096:]
        p.stdin.close()  # s_client ends (-no_ign_eof) and flushes its message log
        p.wait(BOUND)
    finally:
        p.kill()
        p.wait(5)
        errors = p.stderr.read().decode(errors="replace")
    data, ended, kinds = h2_data_of_stream_1(out)
    if updates < 3:
        raise Precondition(f"only {updates} KeyUpdates sent during the download")
    assert "error" not in errors.lower(), errors[-1500:]
    assert ended and len(data) == DOWNLOAD, (len(data), kinds[-5:], errors[-1500:])
    assert hashlib.sha256(data).hexdigest() == pattern_sha256(DOWNLOAD)
    assert pinged, "the PING after the last KeyUpdate was answered"
    # s_client's message log, in order: after its last KeyUpdate, the gateway's.
    log = [ln for ln in (tmp_path / "msg").read_text(errors="replace").splitlines() if "KeyUpdate" in ln]
    last_sent = max(i for i, ln in enumerate(log) if ln.startswith(">>>"))
    assert any(ln.startswith("<<<") for ln in log[last_sent:]), log
    # Requests read together may get one answer (RFC 8446 §4.6.3): at least one for those of the download.
    assert any(ln.startswith("<<<") for ln in log[:last_sent]), log


@pytest.mark.parametrize("n", [16, 17])
def test_the_sixteenth_interim_starts_the_wait_again_the_seventeenth_does_not(gw, n):
    """Interims 0.1 s apart, the last one 1 s after the one before and the
    200 1 s after it: 2 s from the one before the last, past `response`
    (1.5 s), 1 s from the last, within it. Served if the last restarted the
    wait: the 16th does, the 17th does not (runtime/README.md)."""
    answers = h1_work(gw, "1.1", 0, n, 0.1, b"x", last_gap=1.0)
    statuses = [a.status for a in answers]
    assert statuses == [102] * 16 + ([200] if n == 16 else [504]), statuses


@pytest.mark.parametrize("pre", [
    pytest.param(0, id="control-no-interims-while-uploading"),
    pytest.param(16, id="16-interims-while-uploading"),
])
def test_interims_after_an_h2_upload_start_the_wait_again(gw, pre):
    """The h2c twin of the HTTP/1.1 case above (`exchange.rs` reads the head
    with the same `HeadClock`): informational HEADERS count the early ones."""
    with h2(gw) as c:
        post(c, 1, f"/work?pre={pre}&n=6&gap=0.5", 4)
        if pre:
            c.read_frames(time.monotonic() + BOUND, stop=lambda s: s.frames.count("HeadersFrame") >= pre)
            if c.seen.frames.count("HeadersFrame") < pre:
                raise Precondition(f"the early interims were not relayed: {c.seen}")
        c.frame(DataFrame(1, b"body", flags=["END_STREAM"]))
        s = until_stream_ends(c, 1)
    assert (s.status(1), s.data.get(1)) == (200, b"done"), s


def test_thousands_of_interims_are_read_and_dropped_then_the_answer_relayed(gw):
    """Past the 16 relayed, interims are read and dropped (they neither
    grow a buffer nor start the wait again): 5000 at once, then the 200."""
    rss_before = gw.rss_kib()
    answers = h1_work(gw, "1.1", 0, 5000, 0, b"x")
    assert [a.status for a in answers] == [102] * 16 + [200]
    assert answers[-1].body == b"done"
    assert gw.rss_kib() - rss_before < 4096, "RSS grew by 4 MiB reading 140 KB of interims"
