"""h2spec's server test groups (summerwind/h2spec: generic, http2, hpack),
ported to hand-made frames (`hyperframe`/`hpack`) because h2spec itself
cannot be installed here. One test per h2spec case, named by its section
and number (`test_http2_6_5_3` is "http2/6.5 #3"); H2SPEC.md lists them
with the result. A case the gateway fails is xfail with the reason.

h2spec's verdicts, reproduced by `conn_error` / `stream_error`:
- connection error: GOAWAY with one of the codes, or the connection closed;
- stream error: RST_STREAM with one of the codes on the stream, or a
  connection error with one of them, or the connection closed.
The cases the gateway's frame watch answers (instead of the h2 crate) use
the stricter `goaway`: GOAWAY with exactly that code, then the close.
"""

from __future__ import annotations

import struct
import time

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from support.gateway import Gateway, GatewayError
from support.h2client import (
    CANCEL,
    COMPRESSION_ERROR,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    RawH2,
)

WAIT = 3.0

# The h2 crate reports every HPACK decoding failure as PROTOCOL_ERROR, like
# any other connection error, where h2spec wants COMPRESSION_ERROR: the
# connection still ends with GOAWAY (H2SPEC.md says why this stays).


@pytest.fixture(scope="module")
def gw(hello_bin, origin_server, gateway_logs):
    g = Gateway(hello_bin, origin_server.addr, log_dir=gateway_logs, protocols="h1,h2c")
    try:
        g.start()
    except GatewayError as e:
        pytest.fail(str(e), pytrace=False)
    yield g
    alive = g.alive()
    g.kill()
    assert alive, "the gateway died during the h2spec cases"


def raw(gw, **kw) -> RawH2:
    c = RawH2(gw.addr, timeout=5, **kw)
    if kw.get("preface", True):
        c.read_frames(time.monotonic() + WAIT, stop=lambda s: s.settings >= 1 and s.settings_acks >= 1)
        assert c.seen.settings >= 1 and c.seen.settings_acks >= 1, "no SETTINGS handshake"
    return c


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame as raw bytes, for frames hyperframe would refuse to build."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def conn_error(c: RawH2, *codes: int):
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: s.goaway is not None or s.closed)
    assert (s.goaway in codes) or (s.goaway is None and s.closed), f"want GOAWAY {codes}: {s}"


def stream_error(c: RawH2, sid: int, *codes: int):
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: sid in s.resets or s.goaway is not None or s.closed)
    if sid in s.resets:
        assert s.resets[sid] in codes, f"RST_STREAM {s.resets[sid]}, want {codes}"
    else:
        assert s.goaway in codes or (s.goaway is None and s.closed), f"want RST_STREAM/GOAWAY {codes}: {s}"


def goaway(c: RawH2, code: int):
    """Stricter than h2spec's verdicts, for the errors the gateway's frame
    watch answers: GOAWAY with exactly `code`, then the connection closed."""
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: s.goaway is not None or s.closed)
    assert s.goaway == code, f"want GOAWAY {code}: {s}"
    s = c.read_frames(time.monotonic() + WAIT)
    assert s.closed, f"GOAWAY {code}, but the connection stays open: {s}"


def responds(c: RawH2, sid: int, status: int = 200):
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: sid in s.ended or sid in s.resets or s.closed)
    assert s.status(sid) == status and sid in s.ended, f"want {status} on stream {sid}: {s}"


def ping_ack(c: RawH2):
    """Sends a PING and expects its ACK: the connection is still fine."""
    c.frame(PingFrame(0, opaque_data=b"h2spec!!"))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: s.pings >= 1 or s.goaway is not None or s.closed)
    assert s.pings >= 1 and s.goaway is None, f"no PING ACK: {s}"


def headers(c: RawH2, sid: int, end_stream=True, end_headers=True, **kw) -> HeadersFrame:
    f = HeadersFrame(sid)
    f.data = c.block(**kw)
    if end_stream:
        f.flags.add("END_STREAM")
    if end_headers:
        f.flags.add("END_HEADERS")
    return f


def post_headers(c: RawH2, sid: int, extra=()) -> HeadersFrame:
    return headers(c, sid, end_stream=False, method="POST", path="/sink", extra=list(extra))


# ------------------------------------------------------------ http2/3.5


def test_http2_3_5_1(gw):
    """Sends client connection preface."""
    c = raw(gw)
    c.close()


def test_http2_3_5_2(gw):
    """Sends invalid connection preface."""
    c = RawH2(gw.addr, preface=False)
    c.send(b"INVALID CONNECTION PREFACE\r\n\r\n")
    conn_error(c, PROTOCOL_ERROR)


# ------------------------------------------------------------ http2/4.x


def test_http2_4_1_1(gw):
    """Sends a frame with unknown type: ignored."""
    c = raw(gw)
    c.send(frame(0x16, 0, 0, b"\x00" * 8))
    ping_ack(c)


def test_http2_4_1_2(gw):
    """Sends a frame with undefined flag: ignored."""
    c = raw(gw)
    c.send(frame(0x6, 0x16, 0, b"\x00" * 8))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: s.pings >= 1 or s.goaway is not None)
    assert s.goaway is None


def test_http2_4_1_3(gw):
    """Sends a frame with reserved field bit: ignored."""
    c = raw(gw)
    c.send(frame(0x6, 0, 0x80000000, b"\x00" * 8))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: s.goaway is not None or len(s.frames) > 2)
    assert s.goaway is None


def test_http2_4_2_1(gw):
    """Sends a DATA frame with 2^14 octets in length."""
    c = raw(gw)
    c.frame(post_headers(c, 1))
    c.frame(DataFrame(1, data=b"x" * 16384, flags=["END_STREAM"]))
    responds(c, 1)


def test_http2_4_2_2(gw):
    """Sends a large size DATA frame that exceeds SETTINGS_MAX_FRAME_SIZE."""
    c = raw(gw)
    c.frame(post_headers(c, 1))
    c.send(frame(0x0, 0x1, 1, b"x" * 16385))
    stream_error(c, 1, FRAME_SIZE_ERROR)


def test_http2_4_2_3(gw):
    """Sends a large size HEADERS frame that exceeds SETTINGS_MAX_FRAME_SIZE."""
    c = raw(gw)
    block = c.block(extra=[(f"x-{i}", f"{i:0>90}") for i in range(300)])
    assert len(block) > 16384
    c.send(frame(0x1, 0x5, 1, block))
    conn_error(c, FRAME_SIZE_ERROR)


def test_http2_4_3_1(gw):
    """Sends invalid header block fragment."""
    c = raw(gw)
    c.send(frame(0x1, 0x5, 1, b"\x00\x00\x00\x00\x00"))  # literal, truncated
    goaway(c, COMPRESSION_ERROR)


def test_http2_4_3_2(gw):
    """Sends a PRIORITY frame while sending the header blocks."""
    c = raw(gw)
    c.frame(headers(c, 1, end_headers=False))
    c.frame(PriorityFrame(1, depends_on=0, stream_weight=255))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_4_3_3(gw):
    """Sends a HEADERS frame to another stream while sending the header blocks."""
    c = raw(gw)
    c.frame(headers(c, 1, end_headers=False))
    c.frame(headers(c, 3))
    conn_error(c, PROTOCOL_ERROR)


# ------------------------------------------------------------ http2/5.1


def test_http2_5_1_1(gw):
    """idle: Sends a DATA frame."""
    c = raw(gw)
    c.frame(DataFrame(1, data=b"x", flags=["END_STREAM"]))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_5_1_2(gw):
    """idle: Sends a RST_STREAM frame."""
    c = raw(gw)
    c.frame(RstStreamFrame(1, error_code=CANCEL))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_5_1_3(gw):
    """idle: Sends a WINDOW_UPDATE frame."""
    c = raw(gw)
    c.frame(WindowUpdateFrame(1, window_increment=100))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_5_1_4(gw):
    """idle: Sends a CONTINUATION frame."""
    c = raw(gw)
    c.frame(ContinuationFrame(1, data=c.block(), flags=["END_HEADERS"]))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_5_1_5(gw):
    """half closed (remote): Sends a DATA frame."""
    c = raw(gw)
    c.frame(headers(c, 1, path="/slow?delay=1"))
    c.frame(DataFrame(1, data=b"x", flags=["END_STREAM"]))
    goaway(c, STREAM_CLOSED)


def test_http2_5_1_6(gw):
    """half closed (remote): Sends a HEADERS frame."""
    c = raw(gw)
    c.frame(headers(c, 1, path="/slow?delay=1"))
    c.frame(headers(c, 1))
    goaway(c, STREAM_CLOSED)


def test_http2_5_1_7(gw):
    """half closed (remote): Sends a CONTINUATION frame."""
    c = raw(gw)
    c.frame(headers(c, 1, path="/slow?delay=1"))
    c.frame(ContinuationFrame(1, data=c.block(), flags=["END_HEADERS"]))
    stream_error(c, 1, STREAM_CLOSED, PROTOCOL_ERROR)


def test_http2_5_1_8(gw):
    """closed: Sends a DATA frame after sending RST_STREAM frame."""
    c = raw(gw)
    c.frame(headers(c, 1, end_stream=False, path="/slow?delay=1"))
    c.frame(RstStreamFrame(1, error_code=CANCEL))
    c.frame(DataFrame(1, data=b"x", flags=["END_STREAM"]))
    goaway(c, STREAM_CLOSED)


def test_http2_5_1_9(gw):
    """closed: Sends a HEADERS frame after sending RST_STREAM frame."""
    c = raw(gw)
    c.frame(headers(c, 1, end_stream=False, path="/slow?delay=1"))
    c.frame(RstStreamFrame(1, error_code=CANCEL))
    c.frame(headers(c, 1))
    goaway(c, STREAM_CLOSED)


def test_http2_5_1_10(gw):
    """closed: Sends a CONTINUATION frame after sending RST_STREAM frame."""
    c = raw(gw)
    c.frame(headers(c, 1, end_stream=False, path="/slow?delay=1"))
    c.frame(RstStreamFrame(1, error_code=CANCEL))
    c.frame(ContinuationFrame(1, data=c.block(), flags=["END_HEADERS"]))
    stream_error(c, 1, STREAM_CLOSED, PROTOCOL_ERROR)


def test_http2_5_1_11(gw):
    """closed: Sends a DATA frame (stream closed by END_STREAM both ways)."""
    c = raw(gw)
    c.frame(headers(c, 1))
    responds(c, 1)
    c.frame(DataFrame(1, data=b"x", flags=["END_STREAM"]))
    goaway(c, STREAM_CLOSED)


def test_http2_5_1_12(gw):
    """closed: Sends a HEADERS frame (stream closed by END_STREAM both ways)."""
    c = raw(gw)
    c.frame(headers(c, 1))
    responds(c, 1)
    c.frame(headers(c, 1))
    goaway(c, STREAM_CLOSED)


def test_http2_5_1_13(gw):
    """closed: Sends a CONTINUATION frame."""
    c = raw(gw)
    c.frame(headers(c, 1))
    responds(c, 1)
    c.frame(ContinuationFrame(1, data=c.block(), flags=["END_HEADERS"]))
    conn_error(c, STREAM_CLOSED, PROTOCOL_ERROR)


def test_http2_5_1_1_1(gw):
    """Sends even-numbered stream identifier."""
    c = raw(gw)
    c.frame(headers(c, 2))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_5_1_1_2(gw):
    """Sends stream identifier that is numerically smaller than previous."""
    c = raw(gw)
    c.frame(headers(c, 5))
    responds(c, 5)
    c.frame(headers(c, 3))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_5_1_2_1(gw):
    """Sends HEADERS frames that causes their advertised concurrent stream limit to be exceeded."""
    c = raw(gw)
    for i in range(101):
        c.frame(headers(c, 1 + 2 * i, path="/slow?delay=1"))
    stream_error(c, 1 + 2 * 100, PROTOCOL_ERROR, REFUSED_STREAM)


# ------------------------------------------------------------ http2/5.3, 5.4, 5.5


def test_http2_5_3_1_1(gw):
    """Sends HEADERS frame that depends on itself."""
    c = raw(gw)
    f = headers(c, 1)
    f.flags.add("PRIORITY")
    f.depends_on, f.stream_weight = 1, 16
    c.frame(f)
    stream_error(c, 1, PROTOCOL_ERROR)


def test_http2_5_3_1_2(gw):
    """Sends PRIORITY frame that depend on itself."""
    c = raw(gw)
    c.frame(PriorityFrame(1, depends_on=1, stream_weight=16))
    stream_error(c, 1, PROTOCOL_ERROR)


def test_http2_5_4_1_1(gw):
    """Sends an invalid PING frame for connection close."""
    c = raw(gw)
    c.send(frame(0x6, 0, 0, b"\x00" * 6))
    goaway(c, FRAME_SIZE_ERROR)


def test_http2_5_4_1_2(gw):
    """Sends an invalid PING frame to receive GOAWAY frame, then the connection closes."""
    c = raw(gw)
    c.send(frame(0x6, 0, 0, b"\x00" * 6))
    goaway(c, FRAME_SIZE_ERROR)  # then the close


def test_http2_5_5_1(gw):
    """Sends an unknown extension frame: ignored."""
    c = raw(gw)
    c.send(frame(0xFF, 0, 0, b"\x00" * 8))
    ping_ack(c)


def test_http2_5_5_2(gw):
    """Sends an unknown extension frame in the middle of a header block."""
    c = raw(gw)
    c.frame(headers(c, 1, end_headers=False))
    c.send(frame(0xFF, 0, 1, b"\x00" * 8))
    conn_error(c, PROTOCOL_ERROR)


# ------------------------------------------------------------ http2/6.1 .. 6.4


def test_http2_6_1_1(gw):
    """DATA frame with 0x0 stream identifier."""
    c = raw(gw)
    c.send(frame(0x0, 0x1, 0, b"x"))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_1_2(gw):
    """DATA frame on a stream not in "open" or "half-closed (local)" state."""
    c = raw(gw)
    c.frame(headers(c, 1, path="/slow?delay=1"))
    c.frame(DataFrame(1, data=b"x", flags=["END_STREAM"]))
    goaway(c, STREAM_CLOSED)


def test_http2_6_1_3(gw):
    """DATA frame with invalid pad length."""
    c = raw(gw)
    c.frame(post_headers(c, 1))
    c.send(frame(0x0, 0x9, 1, b"\x06" + b"x" * 4))  # PADDED|END_STREAM, pad 6 > 4
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_2_1(gw):
    """HEADERS without END_HEADERS, then a PRIORITY frame."""
    c = raw(gw)
    c.frame(headers(c, 1, end_headers=False))
    c.frame(PriorityFrame(1, depends_on=0, stream_weight=16))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_2_2(gw):
    """HEADERS to another stream while sending a header block."""
    c = raw(gw)
    c.frame(headers(c, 1, end_headers=False))
    c.frame(headers(c, 3))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_2_3(gw):
    """HEADERS frame with 0x0 stream identifier."""
    c = raw(gw)
    c.send(frame(0x1, 0x5, 0, c.block()))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_2_4(gw):
    """HEADERS frame with invalid pad length."""
    c = raw(gw)
    block = c.block()
    c.send(frame(0x1, 0x5 | 0x8, 1, bytes([len(block) + 1]) + block))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_3_1(gw):
    """PRIORITY frame with 0x0 stream identifier."""
    c = raw(gw)
    c.send(frame(0x2, 0, 0, b"\x00\x00\x00\x00\x10"))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_3_2(gw):
    """PRIORITY frame with a length other than 5 octets."""
    c = raw(gw)
    c.send(frame(0x2, 0, 1, b"\x00\x00\x00\x00"))
    goaway(c, FRAME_SIZE_ERROR)


def test_http2_6_4_1(gw):
    """RST_STREAM frame with 0x0 stream identifier."""
    c = raw(gw)
    c.send(frame(0x3, 0, 0, b"\x00\x00\x00\x08"))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_4_2(gw):
    """RST_STREAM frame on an idle stream."""
    c = raw(gw)
    c.send(frame(0x3, 0, 1, b"\x00\x00\x00\x08"))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_4_3(gw):
    """RST_STREAM frame with a length other than 4 octets."""
    c = raw(gw)
    c.frame(headers(c, 1, path="/slow?delay=1"))
    c.send(frame(0x3, 0, 1, b"\x00\x00\x08"))
    goaway(c, FRAME_SIZE_ERROR)


# ------------------------------------------------------------ http2/6.5


def test_http2_6_5_1(gw):
    """SETTINGS frame with ACK flag and payload."""
    c = raw(gw)
    c.send(frame(0x4, 0x1, 0, b"\x00\x03\x00\x00\x00\x64"))
    goaway(c, FRAME_SIZE_ERROR)


def test_http2_6_5_2(gw):
    """SETTINGS frame with a stream identifier other than 0x0."""
    c = raw(gw)
    c.send(frame(0x4, 0, 1, b"\x00\x03\x00\x00\x00\x64"))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_5_3(gw):
    """SETTINGS frame with a length other than a multiple of 6 octets."""
    c = raw(gw)
    c.send(frame(0x4, 0, 0, b"\x00\x03\x00\x00\x00"))
    goaway(c, FRAME_SIZE_ERROR)


def test_http2_6_5_2_1(gw):
    """SETTINGS_ENABLE_PUSH (0x2): Sends the value other than 0 or 1."""
    c = raw(gw)
    c.send(frame(0x4, 0, 0, struct.pack(">HI", 0x2, 2)))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_5_2_2(gw):
    """SETTINGS_INITIAL_WINDOW_SIZE (0x4): Sends the value above the maximum flow control window size."""
    c = raw(gw)
    c.send(frame(0x4, 0, 0, struct.pack(">HI", 0x4, 2**31)))
    goaway(c, FLOW_CONTROL_ERROR)


def test_http2_6_5_2_3(gw):
    """SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value below the initial value."""
    c = raw(gw)
    c.send(frame(0x4, 0, 0, struct.pack(">HI", 0x5, 16383)))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_5_2_4(gw):
    """SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value above the maximum allowed frame size."""
    c = raw(gw)
    c.send(frame(0x4, 0, 0, struct.pack(">HI", 0x5, 2**24)))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_5_2_5(gw):
    """Sends a SETTINGS frame with unknown identifier: ignored (ACKed)."""
    c = raw(gw)
    acks = c.seen.settings_acks
    c.send(frame(0x4, 0, 0, struct.pack(">HI", 0xFF, 1)))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: s.settings_acks > acks)
    assert s.settings_acks > acks and s.goaway is None


def test_http2_6_5_3_1(gw):
    """Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE: the last one counts."""
    c = raw(gw)
    c.send(frame(0x4, 0, 0, struct.pack(">HIHI", 0x4, 100, 0x4, 1)))
    c.frame(headers(c, 1))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: 1 in s.data or s.goaway is not None)
    assert len(s.data.get(1, b"")) == 1, s


def test_http2_6_5_3_2(gw):
    """Sends a SETTINGS frame without ACK flag: the server ACKs it."""
    c = raw(gw)
    acks = c.seen.settings_acks
    c.frame(SettingsFrame(0, settings={0x3: 100}))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: s.settings_acks > acks)
    assert s.settings_acks > acks


# ------------------------------------------------------------ http2/6.7 .. 6.10


def test_http2_6_7_1(gw):
    """Sends a PING frame: ACK with the same payload."""
    c = raw(gw)
    ping_ack(c)


def test_http2_6_7_2(gw):
    """Sends a PING frame with ACK: no answer."""
    c = raw(gw)
    c.frame(PingFrame(0, opaque_data=b"ackackac", flags=["ACK"]))
    s = c.read_frames(time.monotonic() + 1)
    assert s.pings == 0 and s.goaway is None


def test_http2_6_7_3(gw):
    """Sends a PING frame with a stream identifier field value other than 0x0."""
    c = raw(gw)
    c.send(frame(0x6, 0, 1, b"\x00" * 8))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_7_4(gw):
    """Sends a PING frame with a length field value other than 8."""
    c = raw(gw)
    c.send(frame(0x6, 0, 0, b"\x00" * 6))
    goaway(c, FRAME_SIZE_ERROR)


def test_http2_6_8_1(gw):
    """Sends a GOAWAY frame with a stream identifier other than 0x0."""
    c = raw(gw)
    c.send(frame(0x7, 0, 1, b"\x00" * 8))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_9_1(gw):
    """Sends a WINDOW_UPDATE frame with a flow control window increment of 0."""
    c = raw(gw)
    c.send(frame(0x8, 0, 0, b"\x00\x00\x00\x00"))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_9_2(gw):
    """Sends a WINDOW_UPDATE frame with a flow control window increment of 0 on a stream."""
    c = raw(gw)
    c.frame(headers(c, 1, end_stream=False, method="POST"))
    c.send(frame(0x8, 0, 1, b"\x00\x00\x00\x00"))
    stream_error(c, 1, PROTOCOL_ERROR)


def test_http2_6_9_3(gw):
    """Sends a WINDOW_UPDATE frame with a length other than 4 octets."""
    c = raw(gw)
    c.send(frame(0x8, 0, 0, b"\x00\x00\x01"))
    goaway(c, FRAME_SIZE_ERROR)


def test_http2_6_9_1_1(gw):
    """Sends SETTINGS frame to set the initial window size to 1 and sends HEADERS frame."""
    c = raw(gw)
    c.frame(SettingsFrame(0, settings={0x4: 1}))
    c.frame(headers(c, 1))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: 1 in s.data)
    assert len(s.data.get(1, b"")) == 1, s


def test_http2_6_9_1_2(gw):
    """Sends multiple WINDOW_UPDATE frames increasing the flow control window to above 2^31-1."""
    c = raw(gw)
    c.frame(WindowUpdateFrame(0, window_increment=2**31 - 1))
    c.frame(WindowUpdateFrame(0, window_increment=2**31 - 1))
    conn_error(c, FLOW_CONTROL_ERROR)


def test_http2_6_9_1_3(gw):
    """Sends multiple WINDOW_UPDATE frames increasing the flow control window to above 2^31-1 on a stream."""
    c = raw(gw)
    c.frame(headers(c, 1, end_stream=False, method="POST"))
    c.frame(WindowUpdateFrame(1, window_increment=2**31 - 1))
    c.frame(WindowUpdateFrame(1, window_increment=2**31 - 1))
    stream_error(c, 1, FLOW_CONTROL_ERROR)


def test_http2_6_9_2_1(gw):
    """Changes SETTINGS_INITIAL_WINDOW_SIZE after sending HEADERS frame."""
    c = raw(gw)
    c.frame(SettingsFrame(0, settings={0x4: 0}))
    c.frame(headers(c, 1))
    c.read_frames(time.monotonic() + 0.5)
    c.frame(SettingsFrame(0, settings={0x4: 1}))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: 1 in s.data)
    assert len(s.data.get(1, b"")) == 1, s


def test_http2_6_9_2_2(gw):
    """Sends a SETTINGS frame for window size to be negative."""
    c = raw(gw)
    c.frame(SettingsFrame(0, settings={0x4: 3}))
    c.frame(headers(c, 1, path="/bytes/10"))
    c.read_frames(time.monotonic() + WAIT, stop=lambda s: len(s.data.get(1, b"")) >= 3)
    c.frame(SettingsFrame(0, settings={0x4: 2}))  # window now -1
    c.frame(WindowUpdateFrame(1, window_increment=2))  # back to 1
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: len(s.data.get(1, b"")) >= 4)
    assert len(s.data.get(1, b"")) == 4, s


def test_http2_6_9_2_3(gw):
    """Sends a SETTINGS_INITIAL_WINDOW_SIZE settings with an exceeded maximum window size value."""
    c = raw(gw)
    c.send(frame(0x4, 0, 0, struct.pack(">HI", 0x4, 2**31)))
    goaway(c, FLOW_CONTROL_ERROR)


def test_http2_6_10_1(gw):
    """Sends multiple CONTINUATION frames preceded by a HEADERS frame."""
    c = raw(gw)
    block = c.block(extra=[("x-a", "1"), ("x-b", "2")])
    h = HeadersFrame(1, data=block[:5], flags=["END_STREAM"])
    c.frame(h)
    c.frame(ContinuationFrame(1, data=block[5:10]))
    c.frame(ContinuationFrame(1, data=block[10:], flags=["END_HEADERS"]))
    responds(c, 1)


def test_http2_6_10_2(gw):
    """Sends a CONTINUATION frame followed by any frame other than CONTINUATION."""
    c = raw(gw)
    block = c.block()
    c.frame(HeadersFrame(1, data=block[:3], flags=["END_STREAM"]))
    c.frame(ContinuationFrame(1, data=block[3:5]))
    c.frame(DataFrame(1, data=b"x"))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_10_3(gw):
    """Sends a CONTINUATION frame with 0x0 stream identifier."""
    c = raw(gw)
    block = c.block()
    c.frame(HeadersFrame(1, data=block[:3], flags=["END_STREAM"]))
    c.send(frame(0x9, 0x4, 0, block[3:]))
    conn_error(c, PROTOCOL_ERROR)


def test_http2_6_10_4(gw):
    """Sends a CONTINUATION frame preceded by a HEADERS frame with END_HEADERS flag."""
    c = raw(gw)
    c.frame(headers(c, 1, path="/slow?delay=1"))
    c.frame(ContinuationFrame(1, data=c.block(), flags=["END_HEADERS"]))
    conn_error(c, PROTOCOL_ERROR, STREAM_CLOSED)


def test_http2_6_10_5(gw):
    """Sends a CONTINUATION frame preceded by a CONTINUATION frame with END_HEADERS flag."""
    c = raw(gw)
    block = c.block()
    c.frame(HeadersFrame(1, data=block[:3], flags=["END_STREAM"]))
    c.frame(ContinuationFrame(1, data=block[3:], flags=["END_HEADERS"]))
    c.frame(ContinuationFrame(1, data=c.block(), flags=["END_HEADERS"]))
    conn_error(c, PROTOCOL_ERROR, STREAM_CLOSED)


def test_http2_6_10_6(gw):
    """Sends a CONTINUATION frame preceded by a DATA frame."""
    c = raw(gw)
    c.frame(post_headers(c, 1))
    c.frame(DataFrame(1, data=b"x"))
    c.frame(ContinuationFrame(1, data=c.block(), flags=["END_HEADERS"]))
    conn_error(c, PROTOCOL_ERROR)


# ------------------------------------------------------------ http2/7, 8.x


def test_http2_7_1(gw):
    """Sends a GOAWAY frame with unknown error code: no error."""
    c = raw(gw)
    c.frame(GoAwayFrame(0, last_stream_id=0, error_code=0xFF))
    s = c.read_frames(time.monotonic() + 1)
    assert s.goaway in (None, NO_ERROR)


def test_http2_7_2(gw):
    """Sends a RST_STREAM frame with unknown error code: no connection error."""
    c = raw(gw)
    c.frame(headers(c, 1, end_stream=False, method="POST"))
    c.frame(RstStreamFrame(1, error_code=0xFF))
    ping_ack(c)


def test_http2_8_1_1(gw):
    """Sends a second HEADERS frame without the END_STREAM flag."""
    c = raw(gw)
    c.frame(post_headers(c, 1))
    c.frame(DataFrame(1, data=b"x"))
    f = HeadersFrame(1, data=c.enc.encode([("x-trailer", "1")]), flags=["END_HEADERS"])
    c.frame(f)
    stream_error(c, 1, PROTOCOL_ERROR)


def _malformed(gw, hdrs):
    c = raw(gw)
    f = HeadersFrame(1, data=c.enc.encode(hdrs), flags=["END_STREAM", "END_HEADERS"])
    c.frame(f)
    stream_error(c, 1, PROTOCOL_ERROR)


BASE = [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", "/")]


def test_http2_8_1_2_1(gw):
    """Sends a HEADERS frame that contains the header field name in uppercase letters."""
    _malformed(gw, BASE + [("X-Upper", "1")])


def test_http2_8_1_2_1_1(gw):
    """Sends a HEADERS frame that contains a unknown pseudo-header field."""
    _malformed(gw, BASE + [(":test", "1")])


def test_http2_8_1_2_1_2(gw):
    """Sends a HEADERS frame that contains the pseudo-header field defined for response."""
    _malformed(gw, BASE + [(":status", "200")])


def test_http2_8_1_2_1_3(gw):
    """Sends a HEADERS frame that contains a pseudo-header field as trailers."""
    c = raw(gw)
    c.frame(post_headers(c, 1))
    c.frame(DataFrame(1, data=b"x"))
    c.frame(HeadersFrame(1, data=c.enc.encode([(":method", "GET")]), flags=["END_STREAM", "END_HEADERS"]))
    stream_error(c, 1, PROTOCOL_ERROR)


def test_http2_8_1_2_1_4(gw):
    """Sends a HEADERS frame that contains a pseudo-header field that appears in a header block after a regular header field."""
    _malformed(gw, BASE[:3] + [("x-a", "1"), (":path", "/")])


def test_http2_8_1_2_2_1(gw):
    """Sends a HEADERS frame that contains the connection-specific header field."""
    _malformed(gw, BASE + [("connection", "keep-alive")])


def test_http2_8_1_2_2_2(gw):
    """Sends a HEADERS frame that contains the TE header field with any value other than "trailers"."""
    _malformed(gw, BASE + [("te", "trailers, deflate")])


def test_http2_8_1_2_3_1(gw):
    """Sends a HEADERS frame with empty ":path" pseudo-header field."""
    _malformed(gw, BASE[:3] + [(":path", "")])


def test_http2_8_1_2_3_2(gw):
    """Sends a HEADERS frame that omits ":method" pseudo-header field."""
    _malformed(gw, BASE[1:])


def test_http2_8_1_2_3_3(gw):
    """Sends a HEADERS frame that omits ":scheme" pseudo-header field."""
    _malformed(gw, [BASE[0]] + BASE[2:])


def test_http2_8_1_2_3_4(gw):
    """Sends a HEADERS frame that omits ":path" pseudo-header field."""
    _malformed(gw, BASE[:3])


def test_http2_8_1_2_3_5(gw):
    """Sends a HEADERS frame with duplicated ":method" pseudo-header field."""
    _malformed(gw, BASE + [(":method", "GET")])


def test_http2_8_1_2_3_6(gw):
    """Sends a HEADERS frame with duplicated ":scheme" pseudo-header field."""
    _malformed(gw, BASE + [(":scheme", "http")])


def test_http2_8_1_2_3_7(gw):
    """Sends a HEADERS frame with duplicated ":path" pseudo-header field."""
    _malformed(gw, BASE + [(":path", "/")])


def test_http2_8_1_2_6_1(gw):
    """Sends a HEADERS frame with the "content-length" header field which does not equal the DATA frame payload length."""
    c = raw(gw)
    c.frame(post_headers(c, 1, extra=[("content-length", "1")]))
    c.frame(DataFrame(1, data=b"xyz", flags=["END_STREAM"]))
    stream_error(c, 1, PROTOCOL_ERROR)


def test_http2_8_1_2_6_2(gw):
    """Sends a HEADERS frame with the "content-length" header field which does not equal the sum of the multiple DATA frames payload length."""
    c = raw(gw)
    c.frame(post_headers(c, 1, extra=[("content-length", "1")]))
    c.frame(DataFrame(1, data=b"x"))
    c.frame(DataFrame(1, data=b"y", flags=["END_STREAM"]))
    s = c.read_frames(time.monotonic() + WAIT, stop=lambda s: 1 in s.resets or s.goaway is not None or s.closed)
    if s.resets.get(1) == 0:
        # The upstream may answer once the declared byte arrived: the response is then
        # complete before the extra DATA is read, and RFC 9113 §8.1 lets the server end
        # the stream with RST_STREAM(NO_ERROR). h2spec wants PROTOCOL_ERROR; both are
        # safe (the extra byte is never forwarded), so accept NO_ERROR only then.
        assert 1 in s.ended, f"RST_STREAM(NO_ERROR) before a complete response: {s}"
    else:
        stream_error(c, 1, PROTOCOL_ERROR)


def test_http2_8_2_1(gw):
    """Sends a PUSH_PROMISE frame."""
    c = raw(gw)
    c.frame(headers(c, 1, end_stream=False, method="POST"))
    f = PushPromiseFrame(1, promised_stream_id=2, data=c.block(), flags=["END_HEADERS"])
    c.frame(f)
    conn_error(c, PROTOCOL_ERROR)


# ------------------------------------------------------------ generic


def test_generic_1_1(gw):
    """Sends a client connection preface."""
    raw(gw)


@pytest.mark.parametrize(
    "case",
    ["idle_to_open", "half_closed_remote", "closed_after_response", "data_then_end"],
)
def test_generic_2(gw, case):
    """Streams and multiplexing: valid state transitions get answered."""
    c = raw(gw)
    if case == "idle_to_open":
        c.frame(headers(c, 1))
        responds(c, 1)
    elif case == "half_closed_remote":
        c.frame(post_headers(c, 1))
        c.frame(DataFrame(1, data=b"abc", flags=["END_STREAM"]))
        responds(c, 1)
    elif case == "closed_after_response":
        c.frame(headers(c, 1))
        responds(c, 1)
        c.frame(headers(c, 3))
        responds(c, 3)
    else:
        c.frame(post_headers(c, 1))
        c.frame(DataFrame(1, data=b"a"))
        c.frame(DataFrame(1, data=b"", flags=["END_STREAM"]))
        responds(c, 1)


@pytest.mark.parametrize(
    "kind", ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"]
)
def test_generic_3(gw, kind):
    """Frame definitions: each valid frame is accepted."""
    c = raw(gw)
    if kind == "DATA":
        c.frame(post_headers(c, 1))
        c.frame(DataFrame(1, data=b"x" * 10, flags=["END_STREAM"]))
        responds(c, 1)
    elif kind == "HEADERS":
        f = headers(c, 1)
        f.flags.add("PRIORITY")
        f.depends_on, f.stream_weight = 0, 255
        c.frame(f)
        responds(c, 1)
    elif kind == "PRIORITY":
        c.frame(PriorityFrame(1, depends_on=0, stream_weight=16))
        c.frame(headers(c, 3))
        responds(c, 3)
    elif kind == "RST_STREAM":
        c.frame(headers(c, 1, end_stream=False, method="POST"))
        c.frame(RstStreamFrame(1, error_code=CANCEL))
        ping_ack(c)
    elif kind == "SETTINGS":
        c.frame(SettingsFrame(0, settings={0x3: 50}))
        ping_ack(c)
    elif kind == "PING":
        ping_ack(c)
    elif kind == "GOAWAY":
        c.frame(GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR))
        s = c.read_frames(time.monotonic() + 1)
        assert s.goaway in (None, NO_ERROR)
    elif kind == "WINDOW_UPDATE":
        c.frame(WindowUpdateFrame(0, window_increment=1))
        ping_ack(c)
    else:
        block = c.block()
        c.frame(HeadersFrame(1, data=block[:4], flags=["END_STREAM"]))
        c.frame(ContinuationFrame(1, data=block[4:], flags=["END_HEADERS"]))
        responds(c, 1)


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "POST-trailers"])
def test_generic_4(gw, method):
    """HTTP message exchanges."""
    c = raw(gw)
    if method in ("GET", "HEAD"):
        c.frame(headers(c, 1, method=method))
    else:
        c.frame(post_headers(c, 1))
        c.frame(DataFrame(1, data=b"body"))
        if method == "POST-trailers":
            c.frame(HeadersFrame(1, data=c.enc.encode([("x-trailer", "1")]), flags=["END_STREAM", "END_HEADERS"]))
        else:
            c.frame(DataFrame(1, data=b"", flags=["END_STREAM"]))
    responds(c, 1)


@pytest.mark.parametrize(
    "form", ["indexed", "literal-incremental", "literal-without-indexing", "literal-never-indexed", "table-size-update"]
)
def test_generic_5(gw, form):
    """HPACK representations, each answered."""
    c = raw(gw)
    # :method GET (2), :scheme http (6), :path / (4) are static entries.
    static = b"\x82\x86\x84"
    name = b"\x0aa.test"[1:]
    authority = {
        "indexed": b"\x41" + bytes([len(name)]) + name,  # literal incremental, then...
        "literal-incremental": b"\x41" + bytes([len(name)]) + name,
        "literal-without-indexing": b"\x01" + bytes([len(name)]) + name,
        "literal-never-indexed": b"\x11" + bytes([len(name)]) + name,
        "table-size-update": b"\x01" + bytes([len(name)]) + name,
    }[form]
    # A dynamic table size update must come first in a block (RFC 7541 §4.2).
    lead = b"\x20" if form == "table-size-update" else b""
    f = HeadersFrame(1, data=lead + static + authority, flags=["END_STREAM", "END_HEADERS"])
    c.frame(f)
    responds(c, 1)
    if form == "indexed":
        # :authority now at dynamic index 62.
        c.frame(HeadersFrame(3, data=static + b"\xbe", flags=["END_STREAM", "END_HEADERS"]))
        responds(c, 3)


# ------------------------------------------------------------ hpack


def _compression_error(gw, block: bytes):
    c = raw(gw)
    c.frame(HeadersFrame(1, data=block, flags=["END_STREAM", "END_HEADERS"]))
    goaway(c, COMPRESSION_ERROR)


def test_hpack_2_3_3_1(gw):
    """Sends a indexed header field representation with invalid index."""
    _compression_error(gw, b"\x82\x86\x84\xff\x00")  # index 62+127 with an empty table


def test_hpack_2_3_3_2(gw):
    """Sends a literal header field representation with invalid index."""
    _compression_error(gw, b"\x82\x86\x84\x7f\x00\x01a")


def test_hpack_4_2_1(gw):
    """Sends a dynamic table size update at the end of header block."""
    _compression_error(gw, b"\x82\x86\x84\x41\x06a.test\x20")


def test_hpack_5_2_1(gw):
    """Sends a Huffman-encoded string literal representation with padding longer than 7 bits."""
    _compression_error(gw, b"\x82\x86\x84\x41\x86\xf2\xb2\x4c\x1e\xff\xff")


def test_hpack_5_2_2(gw):
    """Sends a Huffman-encoded string literal representation padded by zero."""
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    value = b"a.test"
    coded = bytearray(HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(value))
    pad = 8 * len(coded) - sum(REQUEST_CODES_LENGTH[b] for b in value)
    assert pad > 0
    coded[-1] &= 0xFF << pad & 0xFF  # the EOS-prefix padding replaced by zeros
    _compression_error(gw, b"\x82\x86\x84\x41" + bytes([0x80 | len(coded)]) + bytes(coded))


def test_hpack_5_2_3(gw):
    """Sends a Huffman-encoded string literal representation containing the EOS symbol."""
    _compression_error(gw, b"\x82\x86\x84\x41\x84\xff\xff\xff\xff")


def test_hpack_6_1_1(gw):
    """Sends a indexed header field representation with index 0."""
    _compression_error(gw, b"\x82\x86\x84\x80")


def test_hpack_6_3_1(gw):
    """Sends a dynamic table size update larger than the value of SETTINGS_HEADER_TABLE_SIZE."""
    _compression_error(gw, b"\x3f\xe2\x1f\x82\x86\x84\x41\x06a.test")  # 4097 > 4096
