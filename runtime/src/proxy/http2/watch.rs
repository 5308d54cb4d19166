//! A sans-IO watch over the frames the client sends, fed every byte read
//! (by [`super::io::H2Io`]) before the `h2` crate parses it. It reads each
//! frame header, and of the payloads only SETTINGS entries.
//!
//! Budgets, for what the `h2` crate does not bound itself: it answers
//! every SETTINGS and PING (one at a time, so memory stays bounded, but
//! forever), ignores PING ACKs it never asked for and unknown frame types,
//! adds up WINDOW_UPDATE increments of 1 until the window would pass
//! 2^31-1 (two billion frames), and keeps a half-received header block
//! open as long as the client trickles CONTINUATION frames. The watch
//! counts the control frames per tick of the connection loop (over
//! budget: ENHANCE_YOUR_CALM), holds WINDOW_UPDATE frames to what the
//! DATA frames the gateway sent can explain (as Envoy's
//! `max_inbound_window_update_frames_per_data_frame_sent`; the outgoing
//! frame headers are fed to [`FrameWatch::sent`]), and notes an open
//! header block.
//!
//! Error codes, where the `h2` crate ends the connection with
//! GOAWAY(PROTOCOL_ERROR) but RFC 9113 names a precise code:
//! - FRAME_SIZE_ERROR (§4.2) for a frame of a size its type forbids:
//!   PRIORITY ≠ 5 (§6.3), RST_STREAM ≠ 4 (§6.4), SETTINGS not a multiple
//!   of 6 or with ACK and a payload (§6.5), PING ≠ 8 (§6.7), GOAWAY < 8
//!   (§6.8), WINDOW_UPDATE ≠ 4 (§6.9), DATA or HEADERS too short for the
//!   pad length or priority their flags announce (§6.1, §6.2);
//! - FLOW_CONTROL_ERROR for SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1
//!   (§6.5.2);
//! - STREAM_CLOSED for DATA or HEADERS on a stream the client itself
//!   closed, with END_STREAM or RST_STREAM (§5.1).
//! - PROTOCOL_ERROR for a HEADERS frame whose priority makes its stream
//!   depend on itself (§5.3.1). A stream error in the RFC, but the `h2`
//!   crate resets the stream before it decodes the field block, so its
//!   HPACK table would fall out of step with the client's (§4.3) and a
//!   later request's indexed field could be read as an earlier one's.
//!   Ending the connection is what nginx and HAProxy do.
//!
//! - COMPRESSION_ERROR (§4.3) for a header block HPACK cannot decode, and
//!   PROTOCOL_ERROR for a pseudo-header in trailers (§8.1), both found by
//!   [`HpackCheck`], a validate-only mirror of the client's HPACK state
//!   fed each block's fragments (the crate reports a bad block like any
//!   other PROTOCOL_ERROR, and does not look for pseudo-headers in
//!   trailers).
//!
//! Some of these the RFC makes stream errors (PRIORITY's size; DATA or
//! HEADERS while half-closed (remote), or after RST_STREAM): they are
//! answered as connection errors, which §5.4.1 allows. The watch cannot
//! send RST_STREAM, and the `h2` crate must not see the frame (it would
//! answer first, with its own code). So on a broken rule or budget the
//! watch stops: [`FrameWatch::inspect`] hands the `h2` crate only the
//! bytes before the offending frame, reads stop, and the connection loop
//! (`super::serve_h2`) at once sends GOAWAY with the watch's code and
//! closes.
//!
//! Stream states: only what the client itself did counts, so a client
//! that follows the protocol never trips a rule. Frames on a stream the
//! *server* reset must be ignored (§5.1: the client may have sent them
//! before our RST_STREAM arrived); the watch never learns of those resets,
//! so it never objects to such frames — the `h2` crate ignores them. Only
//! DATA and HEADERS are checked: WINDOW_UPDATE, PRIORITY and RST_STREAM
//! are legal after the client's END_STREAM, and a stray one after its own
//! RST_STREAM is harmless, not worth a connection. The closed streams are
//! remembered as one bit per client stream id in a window of the newest
//! [`CLOSED_WINDOW`] ids, shifted as new streams open: a frame on an
//! older stream is left to the `h2` crate (which answers it with
//! STREAM_CLOSED or PROTOCOL_ERROR).
//!
//! Cost: a few branches per frame header, nothing per payload byte
//! outside SETTINGS frames and header blocks, fixed-size state but for the
//! HPACK mirror's table (at most 128 entries of a few words).

use std::cell::{Cell, RefCell};

use h2::Reason;

use super::HEADER_TABLE_SIZE;
use super::hpack_check::HpackCheck;

/// Control frames (SETTINGS and PING without ACK, RST_STREAM, PRIORITY,
/// unknown types) a client may send per tick (one second) of the
/// connection loop. Browsers and h2load send a handful per connection;
/// a flood sends thousands per second. Rapid reset (CVE-2023-44487) is
/// one RST_STREAM per stream, so it trips this too.
pub(crate) const CONTROL_FRAMES_PER_TICK: u32 = 500;

/// WINDOW_UPDATE frames a client may send per DATA frame the gateway sent
/// it: a client acknowledges received data with at most one update for
/// the stream and one for the connection per frame; Envoy's default
/// allowance, 10, leaves room for clients that update more eagerly.
const WINDOW_UPDATES_PER_DATA_FRAME: u64 = 10;

/// WINDOW_UPDATE frames any connection may send beyond that (a client
/// widening its windows up front, before any DATA), plus two per stream it
/// opened.
const WINDOW_UPDATES_BASE: u64 = 100;

/// The client's connection preface, before the first frame.
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Client streams whose closing the watch remembers: the newest 128
/// stream ids (one bit each), far more than a client keeps in flight.
const CLOSED_WINDOW: u32 = u128::BITS;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;

/// What the connection loop learns from the client's frames, sans-IO:
/// fed the raw bytes read, in order. Shared by the byte stream (which
/// feeds it) and the connection loop (which reads it), hence the `Cell`.
#[derive(Debug)]
pub(crate) struct FrameWatch {
    state: Cell<State>,
    hpack: RefCell<HpackCheck>,
}

impl Default for FrameWatch {
    fn default() -> Self {
        FrameWatch {
            state: Cell::default(),
            hpack: RefCell::new(HpackCheck::new(HEADER_TABLE_SIZE as usize)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// Preface bytes still to skip.
    preface_left: usize,
    /// Frame header bytes collected so far (9 make a header).
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to skip, of its length.
    payload_left: usize,
    frame_len: usize,
    /// The current payload carries a header block fragment, after
    /// `block_front` bytes (pad length, priority) and before `block_pad`
    /// bytes of padding (read from the first byte when `block_padded`);
    /// `block_ends` if the frame has END_HEADERS.
    in_block: bool,
    block_front: usize,
    block_padded: bool,
    block_pad: usize,
    block_ends: bool,
    /// The stream dependency of the current HEADERS frame (PRIORITY flag)
    /// is at this payload offset; its bytes collected so far, and the
    /// frame's stream.
    dependency_at: Option<usize>,
    dependency: [u8; 4],
    frame_stream: u32,
    /// The open header block is a HEADERS frame's (checked), not a
    /// PUSH_PROMISE's (which a client must not send: the crate ends the
    /// connection).
    checking_block: bool,
    /// The current payload is a SETTINGS frame's: its entries are read.
    in_settings: bool,
    /// SETTINGS entry bytes collected so far (6 make an entry).
    entry: [u8; 6],
    entry_len: usize,
    /// Control frames seen since the last tick.
    control: u32,
    /// A HEADERS or PUSH_PROMISE frame arrived without END_HEADERS and its
    /// last CONTINUATION has not.
    header_block_open: bool,
    /// A HEADERS frame (a request) arrived since the last tick. Other
    /// frames (PING, SETTINGS, WINDOW_UPDATE) are no request: a client
    /// sending only those is idle, as an HTTP/1.1 connection without a
    /// request is.
    requested: bool,
    /// A whole frame header followed the preface (the client's SETTINGS,
    /// which must come first).
    first_frame: bool,
    /// The highest stream id the client opened with HEADERS (0: none).
    newest_stream: u32,
    /// Bit `i`: the client closed stream `newest_stream - 2 * i`.
    closed: u128,
    /// The code to end the connection with: a rule or budget was broken.
    stop: Option<Reason>,
    /// HEADERS frames (requests and trailers) the client sent, in all.
    headers_received: u64,
    /// WINDOW_UPDATE frames the client sent, in all.
    window_updates: u64,
    /// The gateway's own frames, as written: the header bytes collected
    /// of the current one, the payload bytes of it still to come, and the
    /// DATA frames sent in all.
    out_head: [u8; 9],
    out_head_len: usize,
    out_payload_left: usize,
    data_frames_sent: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            preface_left: PREFACE.len(),
            head: [0; 9],
            head_len: 0,
            payload_left: 0,
            frame_len: 0,
            in_block: false,
            block_front: 0,
            block_padded: false,
            block_pad: 0,
            block_ends: false,
            dependency_at: None,
            dependency: [0; 4],
            frame_stream: 0,
            checking_block: false,
            in_settings: false,
            entry: [0; 6],
            entry_len: 0,
            control: 0,
            header_block_open: false,
            requested: false,
            first_frame: false,
            newest_stream: 0,
            closed: 0,
            stop: None,
            headers_received: 0,
            window_updates: 0,
            out_head: [0; 9],
            out_head_len: 0,
            out_payload_left: 0,
            data_frames_sent: 0,
        }
    }
}

impl FrameWatch {
    /// Feeds bytes read from the client; returns how many of them the `h2`
    /// crate may parse: all of them, or once a frame broke a rule, those
    /// before that frame (none once stopped).
    pub(crate) fn inspect(&self, bytes: &[u8]) -> usize {
        let mut s = self.state.get();
        let n = s.inspect(bytes, &mut self.hpack.borrow_mut());
        self.state.set(s);
        n
    }

    /// Feeds bytes the gateway writes to the client (the `h2` crate's
    /// output, frames from the first byte): counts the DATA frames sent,
    /// which explain the client's WINDOW_UPDATE frames.
    pub(crate) fn sent(&self, bytes: &[u8]) {
        let mut s = self.state.get();
        s.sent(bytes);
        self.state.set(s);
    }

    /// Called by the connection loop once per tick: returns whether the
    /// client sent a request (a HEADERS frame) since the last tick and
    /// starts a new control budget.
    pub(crate) fn tick(&self) -> bool {
        let mut s = self.state.get();
        s.control = 0;
        let requested = std::mem::replace(&mut s.requested, false);
        self.state.set(s);
        requested
    }

    /// DATA frames the gateway has written to the client so far.
    pub(crate) fn data_frames_sent(&self) -> u64 {
        self.state.get().data_frames_sent
    }

    /// True once any byte of the client's preface arrived.
    pub(crate) fn received_any(&self) -> bool {
        self.state.get().preface_left < PREFACE.len()
    }

    /// True once the client's first frame (its SETTINGS) followed its
    /// preface: the HTTP/2 handshake is complete on its side.
    pub(crate) fn preface_complete(&self) -> bool {
        self.state.get().first_frame
    }

    /// The header block being received, if one is: a HEADERS frame
    /// without END_HEADERS waiting for its last CONTINUATION, or a HEADERS
    /// or CONTINUATION frame whose header or payload is still arriving (a
    /// head trickled inside one frame is as slow as one trickled in
    /// CONTINUATION frames; a frame header is known to be one from its
    /// fourth byte, its type). Named by the count of HEADERS frames with
    /// this one, so that the connection loop tells one block taking its
    /// time from several quick ones.
    pub(crate) fn header_block_arriving(&self) -> Option<u64> {
        let s = self.state.get();
        let in_frame_header = s.head_len >= 4 && matches!(s.head[3], HEADERS | CONTINUATION);
        let arriving = s.header_block_open || (s.in_block && s.payload_left > 0) || in_frame_header;
        // A HEADERS frame is counted once its header is whole: the same
        // number names it while its header is still coming.
        let block = s.headers_received + u64::from(in_frame_header && s.head[3] == HEADERS);
        arriving.then_some(block)
    }

    /// The code to end the connection with, once the client broke a rule
    /// or a budget: reads stop then.
    pub(crate) fn stop(&self) -> Option<Reason> {
        self.state.get().stop
    }

    /// Whether the request on `stream`, being accepted, had a fragment in
    /// its `:path`, which the `http` crate cut (see [`HpackCheck`]).
    pub(crate) fn take_path_fragment(&self, stream: u32) -> bool {
        self.hpack.borrow_mut().take_path_fragment(stream)
    }
}

impl State {
    fn inspect(&mut self, bytes: &[u8], hpack: &mut HpackCheck) -> usize {
        if self.stop.is_some() || bytes.is_empty() {
            return 0;
        }
        let mut pos = self.preface_left.min(bytes.len());
        self.preface_left -= pos;
        // Where the current frame began in `bytes` (0: in an earlier read).
        let mut frame_start = 0;
        while pos < bytes.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() - pos);
                if self.in_settings {
                    self.settings_entries(&bytes[pos..pos + n]);
                }
                if self.in_block {
                    self.fragment(&bytes[pos..pos + n], hpack);
                }
                self.payload_left -= n;
                pos += n;
                if self.payload_left == 0 {
                    self.frame_end(hpack);
                }
            } else if self.head_len == 0
                && let Some(head) = bytes[pos..].first_chunk::<9>()
            {
                // The usual case: a whole header in this read.
                frame_start = pos;
                pos += 9;
                self.frame(head, hpack);
            } else {
                if self.head_len == 0 {
                    frame_start = pos;
                }
                let have = self.head_len;
                let n = (9 - have).min(bytes.len() - pos);
                self.head[have..have + n].copy_from_slice(&bytes[pos..pos + n]);
                self.head_len += n;
                pos += n;
                if self.head_len == 9 {
                    self.head_len = 0;
                    let head = self.head;
                    self.frame(&head, hpack);
                }
            }
            if self.stop.is_some() {
                return frame_start;
            }
        }
        bytes.len()
    }

    /// A whole frame header arrived.
    fn frame(&mut self, h: &[u8; 9], hpack: &mut HpackCheck) {
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.payload_left = len;
        self.frame_len = len;
        self.in_settings = false;
        self.in_block = false;
        self.dependency_at = None;
        self.frame_stream = stream;
        self.first_frame = true;
        match kind {
            DATA => {
                self.size_at_least(len, usize::from(flags & FLAG_PADDED != 0));
                self.not_closed(stream);
                if flags & FLAG_END_STREAM != 0 {
                    self.close(stream);
                }
            }
            HEADERS => {
                self.headers_received += 1;
                let pad = usize::from(flags & FLAG_PADDED != 0);
                let priority = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                self.size_at_least(len, pad + priority);
                self.not_closed(stream);
                // Inside an open block a HEADERS frame is the crate's
                // PROTOCOL_ERROR (§6.10): not a block of its own to check.
                if !self.header_block_open {
                    let trailers = stream & 1 == 1 && stream <= self.newest_stream;
                    hpack.begin_block(stream, trailers);
                    self.begin_fragment(pad + priority, pad == 1, flags);
                    if priority != 0 {
                        self.dependency_at = Some(pad);
                    }
                }
                self.checking_block = !self.header_block_open;
                self.open(stream);
                self.requested = true;
                if flags & FLAG_END_STREAM != 0 {
                    self.close(stream);
                }
                self.header_block_open = flags & FLAG_END_HEADERS == 0;
            }
            PRIORITY => {
                self.size(len == 5);
                self.control();
            }
            RST_STREAM => {
                self.size(len == 4);
                self.close(stream);
                self.control();
            }
            SETTINGS if flags & FLAG_ACK != 0 => self.size(len == 0),
            SETTINGS => {
                self.size(len % 6 == 0);
                self.in_settings = true;
                self.entry_len = 0;
                self.control();
            }
            // An ACK counts too: the gateway sends one PING at most (at
            // drain), and the crate drops ACKs it never asked for unseen.
            PING => {
                self.size(len == 8);
                self.control();
            }
            GOAWAY => self.size_at_least(len, 8),
            WINDOW_UPDATE => {
                self.size(len == 4);
                self.window_update();
            }
            PUSH_PROMISE => {
                self.checking_block = false;
                self.header_block_open = flags & FLAG_END_HEADERS == 0;
            }
            CONTINUATION => {
                if self.header_block_open && self.checking_block {
                    self.begin_fragment(0, false, flags);
                }
                if flags & FLAG_END_HEADERS != 0 {
                    self.header_block_open = false;
                }
            }
            // Unknown types are ignored by the h2 crate: they cost a
            // parse each and carry nothing.
            _ => self.control(),
        }
        if len == 0 {
            self.frame_end(hpack);
        }
    }

    /// A HEADERS or CONTINUATION frame whose payload is a fragment of the
    /// block being checked, after `front` bytes.
    fn begin_fragment(&mut self, front: usize, padded: bool, flags: u8) {
        self.in_block = true;
        self.block_front = front;
        self.block_padded = padded;
        self.block_pad = 0;
        self.block_ends = flags & FLAG_END_HEADERS != 0;
    }

    /// Payload bytes of a fragment-carrying frame (`bytes` starts at
    /// payload offset `frame_len - payload_left`): the fragment's part goes
    /// to the HPACK mirror.
    fn fragment(&mut self, bytes: &[u8], hpack: &mut HpackCheck) {
        let start = self.frame_len - self.payload_left;
        if let Some(at) = self.dependency_at {
            self.dependency_bytes(at, start, bytes);
            if self.stop.is_some() {
                return;
            }
        }
        if self.block_padded && start == 0 {
            self.block_pad = usize::from(bytes[0]);
        }
        // Padding longer than the payload is the crate's PROTOCOL_ERROR;
        // then nothing is checked.
        let Some(end) = self.frame_len.checked_sub(self.block_pad) else {
            return;
        };
        let from = self.block_front.max(start) - start;
        let to = end.min(start + bytes.len()).saturating_sub(start);
        if from < to
            && let Err(reason) = hpack.feed(&bytes[from..to])
        {
            self.fail(reason);
        }
    }

    /// Payload bytes (from offset `start`) of a HEADERS frame whose stream
    /// dependency is at offset `at`: a stream depending on itself stops.
    fn dependency_bytes(&mut self, at: usize, start: usize, bytes: &[u8]) {
        for (offset, &b) in (start..).zip(bytes) {
            if (at..at + 4).contains(&offset) {
                self.dependency[offset - at] = b;
            }
        }
        if start + bytes.len() >= at + 4 {
            self.dependency_at = None;
            if u32::from_be_bytes(self.dependency) & 0x7fff_ffff == self.frame_stream {
                self.fail(Reason::PROTOCOL_ERROR);
            }
        }
    }

    /// The current frame's payload is complete (or it had none).
    fn frame_end(&mut self, hpack: &mut HpackCheck) {
        if !self.in_block {
            return;
        }
        let checked = if self.block_ends {
            self.in_block = false;
            hpack.end_block()
        } else {
            hpack.fragment_end()
        };
        if let Err(reason) = checked {
            self.fail(reason);
        }
    }

    /// A WINDOW_UPDATE: within what the DATA frames sent can explain.
    fn window_update(&mut self) {
        self.window_updates += 1;
        let allowed = WINDOW_UPDATES_BASE
            + 2 * self.headers_received
            + WINDOW_UPDATES_PER_DATA_FRAME * self.data_frames_sent;
        if self.window_updates > allowed {
            self.fail(Reason::ENHANCE_YOUR_CALM);
        }
    }

    /// The gateway's output, in order: counts the DATA frame headers.
    fn sent(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.out_payload_left > 0 {
                let n = self.out_payload_left.min(bytes.len());
                self.out_payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let have = self.out_head_len;
            let n = (9 - have).min(bytes.len());
            self.out_head[have..have + n].copy_from_slice(&bytes[..n]);
            self.out_head_len += n;
            bytes = &bytes[n..];
            if self.out_head_len == 9 {
                self.out_head_len = 0;
                let h = self.out_head;
                self.out_payload_left =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                if h[3] == DATA {
                    self.data_frames_sent += 1;
                }
            }
        }
    }

    /// Records the first broken rule.
    fn fail(&mut self, reason: Reason) {
        self.stop.get_or_insert(reason);
    }

    fn size(&mut self, ok: bool) {
        if !ok {
            self.fail(Reason::FRAME_SIZE_ERROR);
        }
    }

    fn size_at_least(&mut self, len: usize, min: usize) {
        self.size(len >= min);
    }

    fn control(&mut self) {
        self.control += 1;
        if self.control > CONTROL_FRAMES_PER_TICK {
            self.fail(Reason::ENHANCE_YOUR_CALM);
        }
    }

    /// DATA or HEADERS on `stream`: not after the client closed it. Inside
    /// a header block any such frame is the `h2` crate's PROTOCOL_ERROR
    /// (§6.10), so it is left to it.
    fn not_closed(&mut self, stream: u32) {
        if !self.header_block_open && self.closed_by_client(stream) {
            self.fail(Reason::STREAM_CLOSED);
        }
    }

    /// How far below the newest client stream `stream` is, in client
    /// stream ids; `None` for ids the client cannot have opened (even,
    /// zero, above the newest).
    fn age(&self, stream: u32) -> Option<u32> {
        (stream & 1 == 1 && stream <= self.newest_stream).then(|| (self.newest_stream - stream) / 2)
    }

    fn closed_by_client(&self, stream: u32) -> bool {
        match self.age(stream) {
            Some(age) if age < CLOSED_WINDOW => self.closed >> age & 1 == 1,
            _ => false,
        }
    }

    /// HEADERS on `stream`: a new stream if its id is the highest yet
    /// (HEADERS on an old id is trailers, or for the `h2` crate to refuse).
    fn open(&mut self, stream: u32) {
        if stream & 1 == 1 && stream > self.newest_stream {
            // `newest_stream` is odd, or 0 with nothing closed yet.
            let shift = (stream - self.newest_stream) / 2;
            self.closed = self.closed.checked_shl(shift).unwrap_or(0);
            self.newest_stream = stream;
        }
    }

    /// The client sent END_STREAM or RST_STREAM on `stream`.
    fn close(&mut self, stream: u32) {
        if let Some(age) = self.age(stream).filter(|&age| age < CLOSED_WINDOW) {
            self.closed |= 1 << age;
        }
    }

    /// Payload bytes of a SETTINGS frame, in order, across reads.
    fn settings_entries(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.entry[self.entry_len] = b;
            self.entry_len += 1;
            if self.entry_len == self.entry.len() {
                self.entry_len = 0;
                let [i0, i1, v0, v1, v2, v3] = self.entry;
                let id = u16::from_be_bytes([i0, i1]);
                let value = u32::from_be_bytes([v0, v1, v2, v3]);
                if id == SETTINGS_INITIAL_WINDOW_SIZE && value > MAX_WINDOW_SIZE {
                    self.fail(Reason::FLOW_CONTROL_ERROR);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        on(kind, flags, 1, len)
    }

    /// A frame on `stream` with a payload of `len` bytes: zeroes, but for a
    /// header block fragment, which is valid HPACK (indexed fields 15,
    /// `accept-charset`).
    fn on(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(9 + len, 0);
        let front = match kind {
            HEADERS => {
                usize::from(flags & FLAG_PADDED != 0)
                    + if flags & FLAG_PRIORITY != 0 { 5 } else { 0 }
            }
            CONTINUATION => 0,
            _ => return f,
        };
        for b in f.iter_mut().skip(9 + front) {
            *b = 0x8f;
        }
        f
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut f = on(SETTINGS, 0, 0, 0);
        for &(id, value) in entries {
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&value.to_be_bytes());
        }
        f[2] = (f.len() - 9) as u8;
        f
    }

    /// A watch past the preface.
    fn watch() -> FrameWatch {
        let w = FrameWatch::default();
        assert_eq!(w.inspect(PREFACE), PREFACE.len());
        w
    }

    /// Feeds `frames` to a fresh watch, whole: where it stops, if it does.
    fn verdict(frames: &[Vec<u8>]) -> Option<Reason> {
        let w = watch();
        for f in frames {
            w.inspect(f);
        }
        w.stop()
    }

    const END_STREAM: u8 = FLAG_END_STREAM;
    const END_HEADERS: u8 = FLAG_END_HEADERS;

    #[test]
    fn counts_control_frames_across_split_reads() {
        let w = FrameWatch::default();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 6));
        bytes.extend(frame(SETTINGS, FLAG_ACK, 0));
        bytes.extend(frame(DATA, 0, 100));
        for _ in 0..CONTROL_FRAMES_PER_TICK - 1 {
            bytes.extend(frame(PING, 0, 8));
        }
        for piece in bytes.chunks(7) {
            assert_eq!(w.inspect(piece), piece.len());
        }
        assert_eq!(w.stop(), None);
        let rst = frame(RST_STREAM, 0, 4);
        assert_eq!(w.inspect(&rst), 0, "the frame over budget is withheld");
        assert_eq!(w.stop(), Some(Reason::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn the_preface_is_complete_with_the_first_frame_header() {
        let w = FrameWatch::default();
        w.inspect(&PREFACE[..10]);
        w.inspect(&PREFACE[10..]);
        assert!(!w.preface_complete(), "the preface alone");
        let first = settings(&[(0x3, 100)]);
        w.inspect(&first[..5]);
        assert!(!w.preface_complete(), "half a frame header");
        w.inspect(&first[5..]);
        assert!(w.preface_complete());
    }

    #[test]
    fn tick_starts_a_new_budget() {
        let w = watch();
        for _ in 0..3 {
            for _ in 0..CONTROL_FRAMES_PER_TICK {
                w.inspect(&frame(PING, 0, 8));
            }
            w.tick();
        }
        assert_eq!(w.stop(), None);
    }

    #[test]
    fn only_a_request_is_activity() {
        let w = watch();
        w.inspect(&frame(PING, 0, 8));
        w.inspect(&frame(WINDOW_UPDATE, 0, 4));
        w.inspect(&settings(&[]));
        assert!(!w.tick(), "PING, WINDOW_UPDATE and SETTINGS are no request");
        w.inspect(&on(HEADERS, END_HEADERS | END_STREAM, 1, 10));
        assert!(w.tick(), "a HEADERS frame is a request");
        assert!(!w.tick(), "nothing since the last tick");
    }

    #[test]
    fn notes_an_open_header_block() {
        let w = watch();
        w.inspect(&frame(HEADERS, 0, 10));
        let first = w.header_block_arriving();
        assert!(first.is_some());
        w.inspect(&frame(CONTINUATION, 0, 10));
        assert_eq!(w.header_block_arriving(), first, "the same block");
        w.inspect(&frame(CONTINUATION, FLAG_END_HEADERS, 10));
        assert_eq!(w.header_block_arriving(), None);
        w.inspect(&frame(HEADERS, FLAG_END_HEADERS, 10));
        assert_eq!(w.header_block_arriving(), None);
    }

    #[test]
    fn a_headers_frame_still_arriving_is_an_open_block() {
        let w = watch();
        // One whole request on `stream`: `:method GET`, `:scheme http`,
        // `:path /`, a literal authority.
        let request = |stream| {
            block_frame(
                HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                stream,
                &[],
                b"\x82\x86\x84\x41\x01a",
                0,
            )
        };
        let f = request(1);
        w.inspect(&f[..12]);
        let arriving = w.header_block_arriving();
        assert!(arriving.is_some(), "the payload is not all here");
        w.inspect(&f[12..13]);
        assert_eq!(w.header_block_arriving(), arriving);
        w.inspect(&f[13..]);
        assert_eq!(w.header_block_arriving(), None);
        // Its frame header trickled: known from the type byte on, and the
        // same block once the header is whole.
        let h = request(3);
        w.inspect(&h[..3]);
        assert_eq!(w.header_block_arriving(), None, "the type is not known yet");
        w.inspect(&h[3..4]);
        let trickled = w.header_block_arriving();
        assert!(trickled.is_some());
        w.inspect(&h[4..11]);
        assert_eq!(w.header_block_arriving(), trickled);
        w.inspect(&h[11..]);
        assert_eq!(w.header_block_arriving(), None);
        let g = request(5);
        w.inspect(&g[..10]);
        assert!(w.header_block_arriving() > arriving, "another block");
        assert_eq!(w.stop(), None);
    }

    /// HEADERS on `stream` with the PRIORITY flag (and padding, if
    /// `padded`), depending on `dependency`.
    fn headers_depending_on(stream: u32, dependency: u32, padded: bool) -> Vec<u8> {
        let flags = FLAG_PRIORITY | END_HEADERS | END_STREAM | if padded { FLAG_PADDED } else { 0 };
        let mut f = on(HEADERS, flags, stream, 8 + usize::from(padded));
        let at = 9 + usize::from(padded);
        f[at..at + 4].copy_from_slice(&(dependency | 0x8000_0000).to_be_bytes());
        f
    }

    #[test]
    fn a_stream_depending_on_itself_stops_the_watch() {
        for padded in [false, true] {
            let own = headers_depending_on(3, 3, padded);
            assert_eq!(
                verdict(std::slice::from_ref(&own)),
                Some(Reason::PROTOCOL_ERROR)
            );
            // Split anywhere: the dependency is collected across reads.
            let w = watch();
            for piece in own.chunks(1) {
                w.inspect(piece);
            }
            assert_eq!(w.stop(), Some(Reason::PROTOCOL_ERROR));
            // Control: on another stream (even one never opened), no rule is broken.
            assert_eq!(verdict(&[headers_depending_on(3, 1, padded)]), None);
            assert_eq!(verdict(&[headers_depending_on(3, 7, padded)]), None);
        }
    }

    #[test]
    fn frames_of_a_size_their_type_forbids() {
        let bad = [
            on(PING, 0, 0, 6),
            on(PING, FLAG_ACK, 0, 9),
            on(PRIORITY, 0, 1, 4),
            on(PRIORITY, 0, 1, 6),
            on(RST_STREAM, 0, 1, 3),
            on(RST_STREAM, 0, 1, 5),
            on(SETTINGS, FLAG_ACK, 0, 6),
            on(SETTINGS, 0, 0, 5),
            on(SETTINGS, 0, 0, 13),
            on(GOAWAY, 0, 0, 7),
            on(WINDOW_UPDATE, 0, 0, 3),
            on(WINDOW_UPDATE, 0, 1, 5),
            on(DATA, FLAG_PADDED, 1, 0),
            on(HEADERS, FLAG_PADDED | END_HEADERS, 1, 0),
            on(HEADERS, FLAG_PRIORITY | END_HEADERS, 1, 4),
            on(HEADERS, FLAG_PADDED | FLAG_PRIORITY | END_HEADERS, 1, 5),
        ];
        for f in bad {
            assert_eq!(
                verdict(std::slice::from_ref(&f)),
                Some(Reason::FRAME_SIZE_ERROR),
                "{f:?}"
            );
        }
        let good = [
            on(PING, 0, 0, 8),
            on(PING, FLAG_ACK, 0, 8),
            on(PRIORITY, 0, 1, 5),
            on(SETTINGS, FLAG_ACK, 0, 0),
            on(SETTINGS, 0, 0, 0),
            on(SETTINGS, 0, 0, 12),
            on(GOAWAY, 0, 0, 8),
            on(GOAWAY, 0, 0, 20),
            on(WINDOW_UPDATE, 0, 0, 4),
            on(DATA, 0, 1, 0),
            on(DATA, FLAG_PADDED, 1, 1),
            on(HEADERS, END_HEADERS, 1, 0),
            on(HEADERS, FLAG_PADDED | FLAG_PRIORITY | END_HEADERS, 3, 6),
            on(RST_STREAM, 0, 3, 4),
            on(0xff, 0, 0, 3),
            on(CONTINUATION, END_HEADERS, 5, 0),
        ];
        assert_eq!(verdict(&good), None);
    }

    #[test]
    fn ping_acks_count_as_control_frames() {
        let w = watch();
        for _ in 0..CONTROL_FRAMES_PER_TICK {
            w.inspect(&frame(PING, FLAG_ACK, 8));
        }
        assert_eq!(w.stop(), None);
        assert_eq!(w.inspect(&frame(PING, FLAG_ACK, 8)), 0);
        assert_eq!(w.stop(), Some(Reason::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn window_updates_are_held_to_the_data_frames_sent() {
        let update = on(WINDOW_UPDATE, 0, 0, 4);
        let w = watch();
        // Two streams opened: their allowance, and the base.
        w.inspect(&on(HEADERS, END_HEADERS | END_STREAM, 1, 3));
        w.inspect(&on(HEADERS, END_HEADERS | END_STREAM, 3, 3));
        for _ in 0..WINDOW_UPDATES_BASE + 4 {
            w.inspect(&update);
        }
        assert_eq!(w.stop(), None);
        // The gateway's SETTINGS, a response head and three DATA frames,
        // written in pieces that split frame headers and payloads.
        let mut out = settings(&[(0x3, 100)]);
        out.extend(on(HEADERS, END_HEADERS, 1, 10));
        out.extend(on(DATA, 0, 1, 100));
        out.extend(on(DATA, 0, 1, 100));
        out.extend(on(DATA, END_STREAM, 1, 0));
        for piece in out.chunks(5) {
            w.sent(piece);
        }
        for _ in 0..3 * WINDOW_UPDATES_PER_DATA_FRAME {
            w.inspect(&update);
        }
        assert_eq!(w.stop(), None, "updates the DATA frames explain");
        assert_eq!(w.inspect(&update), 0, "one more is a flood");
        assert_eq!(w.stop(), Some(Reason::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn initial_window_size_over_the_maximum() {
        let over = settings(&[(0x3, 100), (SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)]);
        assert_eq!(
            verdict(std::slice::from_ref(&over)),
            Some(Reason::FLOW_CONTROL_ERROR)
        );
        // Entries split across reads, one byte at a time.
        let w = watch();
        for b in &over {
            w.inspect(std::slice::from_ref(b));
        }
        assert_eq!(w.stop(), Some(Reason::FLOW_CONTROL_ERROR));
        // The maximum itself, and any value for other settings, pass.
        let fine = settings(&[
            (SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW_SIZE),
            (0x6, u32::MAX),
            (0xff, u32::MAX),
        ]);
        assert_eq!(verdict(&[fine.clone(), on(DATA, 0, 1, 10)]), None);
        // Entries are read in SETTINGS payloads only.
        let mut lookalike = on(DATA, 0, 1, 0);
        lookalike.extend_from_slice(&over[9..]);
        lookalike[2] = 12;
        assert_eq!(verdict(&[lookalike]), None);
    }

    #[test]
    fn data_or_headers_after_the_clients_end_stream() {
        // GET: END_STREAM on HEADERS.
        let get = on(HEADERS, END_STREAM | END_HEADERS, 1, 5);
        for late in [on(DATA, 0, 1, 1), on(DATA, END_STREAM, 1, 0), get.clone()] {
            assert_eq!(verdict(&[get.clone(), late]), Some(Reason::STREAM_CLOSED));
        }
        // POST: END_STREAM on the last DATA, or on trailers.
        let post = on(HEADERS, END_HEADERS, 3, 5);
        let body = on(DATA, 0, 3, 10);
        let last = on(DATA, END_STREAM, 3, 10);
        let trailers = on(HEADERS, END_STREAM | END_HEADERS, 3, 5);
        assert_eq!(verdict(&[post.clone(), body.clone(), last.clone()]), None);
        assert_eq!(
            verdict(&[post.clone(), body.clone(), trailers.clone()]),
            None
        );
        assert_eq!(
            verdict(&[post.clone(), body.clone(), last.clone(), trailers.clone()]),
            Some(Reason::STREAM_CLOSED)
        );
        assert_eq!(
            verdict(&[post.clone(), body.clone(), last.clone(), body.clone()]),
            Some(Reason::STREAM_CLOSED)
        );
        assert_eq!(
            verdict(&[post.clone(), body.clone(), trailers.clone(), body.clone()]),
            Some(Reason::STREAM_CLOSED)
        );
        // Legal after END_STREAM: WINDOW_UPDATE, PRIORITY, RST_STREAM.
        let after = [
            get.clone(),
            on(WINDOW_UPDATE, 0, 1, 4),
            on(PRIORITY, 0, 1, 5),
            on(RST_STREAM, 0, 1, 4),
            on(PRIORITY, 0, 1, 5),
        ];
        assert_eq!(verdict(&after), None);
        // Other streams are not affected.
        assert_eq!(verdict(&[get, post, body]), None);
    }

    #[test]
    fn data_or_headers_after_the_clients_rst_stream() {
        let post = on(HEADERS, END_HEADERS, 1, 5);
        let rst = on(RST_STREAM, 0, 1, 4);
        for late in [
            on(DATA, 0, 1, 1),
            on(HEADERS, END_STREAM | END_HEADERS, 1, 5),
        ] {
            assert_eq!(
                verdict(&[post.clone(), rst.clone(), late]),
                Some(Reason::STREAM_CLOSED)
            );
        }
        assert_eq!(verdict(&[post, rst, on(PRIORITY, 0, 1, 5)]), None);
    }

    #[test]
    fn streams_the_client_did_not_close_are_left_alone() {
        // The server may reset a stream (413, REFUSED_STREAM, early
        // response): the client's frames already in flight must be ignored,
        // and the watch never objects to them.
        let post = on(HEADERS, END_HEADERS, 1, 5);
        let body = on(DATA, 0, 1, 10);
        assert_eq!(
            verdict(&[post, body.clone(), body.clone(), on(DATA, END_STREAM, 1, 0)]),
            None
        );
        // A stream never opened below the newest one: the h2 crate's
        // PROTOCOL_ERROR (§5.1.1), not the watch's.
        let five = on(HEADERS, END_STREAM | END_HEADERS, 5, 5);
        assert_eq!(
            verdict(&[five, on(HEADERS, END_STREAM | END_HEADERS, 3, 5)]),
            None
        );
        // Idle, zero and even ids: the h2 crate's too.
        assert_eq!(verdict(&[on(DATA, 0, 7, 1)]), None);
        assert_eq!(verdict(&[on(RST_STREAM, 0, 9, 4), on(DATA, 0, 9, 1)]), None);
        assert_eq!(
            verdict(&[on(DATA, END_STREAM, 0, 1), on(DATA, 0, 0, 1)]),
            None
        );
        let even = on(HEADERS, END_STREAM | END_HEADERS, 2, 5);
        assert_eq!(verdict(&[even.clone(), even]), None);
    }

    #[test]
    fn inside_a_header_block_the_h2_crate_answers() {
        // HEADERS with END_STREAM but no END_HEADERS, then DATA on it:
        // §6.10's PROTOCOL_ERROR, which the h2 crate sends.
        let open = on(HEADERS, END_STREAM, 1, 5);
        assert_eq!(verdict(&[open.clone(), on(DATA, 0, 1, 1)]), None);
        assert_eq!(
            verdict(&[open.clone(), on(CONTINUATION, END_HEADERS, 1, 3)]),
            None
        );
        assert_eq!(
            verdict(&[open, on(CONTINUATION, END_HEADERS, 1, 3), on(DATA, 0, 1, 1)]),
            Some(Reason::STREAM_CLOSED)
        );
    }

    #[test]
    fn closed_streams_are_remembered_for_the_newest_window() {
        let get = |id| on(HEADERS, END_STREAM | END_HEADERS, id, 5);
        let newest_remembered = 1 + 2 * (CLOSED_WINDOW - 1);
        assert_eq!(
            verdict(&[get(1), get(newest_remembered), on(DATA, 0, 1, 1)]),
            Some(Reason::STREAM_CLOSED)
        );
        assert_eq!(
            verdict(&[get(1), get(newest_remembered + 2), on(DATA, 0, 1, 1)]),
            None,
            "forgotten: left to the h2 crate"
        );
        // One stream at a time, as a browser does: every one remembered.
        let w = watch();
        for id in (1..2000).step_by(2) {
            w.inspect(&get(id));
        }
        assert_eq!(w.inspect(&on(DATA, 0, 1999 - 2 * 100, 1)), 0);
        assert_eq!(w.stop(), Some(Reason::STREAM_CLOSED));
        // The highest id there is.
        let max = 0x7fff_ffff;
        assert_eq!(verdict(&[get(max), get(max)]), Some(Reason::STREAM_CLOSED));
    }

    #[test]
    fn hands_over_the_bytes_before_the_offending_frame() {
        let w = watch();
        let mut read = on(HEADERS, END_HEADERS, 1, 5);
        let good = read.len();
        read.extend(on(PING, 0, 0, 6));
        read.extend(on(PING, 0, 0, 8));
        assert_eq!(w.inspect(&read), good);
        assert_eq!(w.stop(), Some(Reason::FRAME_SIZE_ERROR));
        assert_eq!(w.inspect(&on(PING, 0, 0, 8)), 0, "nothing once stopped");
        // With the preface in the same read.
        let w = FrameWatch::default();
        let mut read = PREFACE.to_vec();
        read.extend(on(WINDOW_UPDATE, 0, 0, 3));
        assert_eq!(w.inspect(&read), PREFACE.len());
    }

    /// Every way of cutting the bytes into reads: the `h2` crate gets every
    /// frame before the offending one and never the whole offending frame.
    #[test]
    fn split_reads_withhold_the_offending_frame() {
        let cases = [
            (on(PING, 0, 0, 7), Reason::FRAME_SIZE_ERROR),
            (on(DATA, 0, 1, 0), Reason::STREAM_CLOSED),
            (on(DATA, END_STREAM, 1, 3), Reason::STREAM_CLOSED),
            (
                settings(&[(0x3, 1), (SETTINGS_INITIAL_WINDOW_SIZE, u32::MAX)]),
                Reason::FLOW_CONTROL_ERROR,
            ),
        ];
        for (bad, reason) in cases {
            let mut bytes = PREFACE.to_vec();
            bytes.extend(settings(&[(0x4, 1000)]));
            bytes.extend(on(HEADERS, END_STREAM, 1, 4));
            bytes.extend(on(CONTINUATION, END_HEADERS, 1, 4));
            bytes.extend(on(WINDOW_UPDATE, 0, 1, 4));
            let bad_at = bytes.len();
            bytes.extend(&bad);
            bytes.extend(on(PING, 0, 0, 8));
            for size in 1..=bytes.len() {
                let w = FrameWatch::default();
                let handed: usize = bytes.chunks(size).map(|c| w.inspect(c)).sum();
                assert_eq!(w.stop(), Some(reason), "reads of {size}");
                assert!(
                    (bad_at..bad_at + bad.len()).contains(&handed),
                    "reads of {size}: {handed} bytes handed over, offending frame at {bad_at}..{}",
                    bad_at + bad.len()
                );
            }
        }
    }

    /// A HEADERS or CONTINUATION frame on `stream` whose fragment is
    /// `block`, after `front` (pad length, priority) and before `pad`
    /// bytes of padding, all 0x80 (index 0: invalid if it were HPACK).
    fn block_frame(
        kind: u8,
        flags: u8,
        stream: u32,
        front: &[u8],
        block: &[u8],
        pad: usize,
    ) -> Vec<u8> {
        let len = front.len() + block.len() + pad;
        let mut f = on(kind, flags, stream, 0);
        f[..3].copy_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
        f.extend_from_slice(front);
        f.extend_from_slice(block);
        f.resize(f.len() + pad, 0x80);
        f
    }

    #[test]
    fn header_blocks_hpack_cannot_decode() {
        let headers = |flags, block: &[u8]| block_frame(HEADERS, flags, 1, &[], block, 0);
        let continuation = |flags, block: &[u8]| block_frame(CONTINUATION, flags, 1, &[], block, 0);
        let cases: [(Vec<Vec<u8>>, Option<Reason>); 9] = [
            (vec![headers(END_HEADERS, b"\x82\x86\x84\x41\x01a")], None),
            (
                vec![headers(END_HEADERS, b"\x82\x86\x84\xbe")],
                Some(Reason::COMPRESSION_ERROR),
            ),
            (
                vec![headers(END_HEADERS, b"\x82\x41")],
                Some(Reason::COMPRESSION_ERROR),
            ),
            // Padding and priority are not HPACK: 0x80 there is no index 0.
            (
                vec![block_frame(
                    HEADERS,
                    END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
                    1,
                    &[3, 0, 0, 0, 0, 16],
                    b"\x82",
                    3,
                )],
                None,
            ),
            (
                vec![block_frame(
                    HEADERS,
                    END_HEADERS | FLAG_PADDED,
                    1,
                    &[2],
                    b"\x80",
                    2,
                )],
                Some(Reason::COMPRESSION_ERROR),
            ),
            // A representation may span frames; the block may not end in one.
            (
                vec![
                    headers(0, b"\x82\x41\x03a"),
                    continuation(END_HEADERS, b"bc\x84"),
                ],
                None,
            ),
            (
                vec![
                    headers(0, b"\x82\x41\x03a"),
                    continuation(END_HEADERS, b"b"),
                ],
                Some(Reason::COMPRESSION_ERROR),
            ),
            // Trailers (HEADERS again on stream 1) with a pseudo-header.
            (
                vec![
                    headers(END_HEADERS, b"\x82\x84"),
                    headers(END_HEADERS | END_STREAM, b"\x8f"),
                ],
                None,
            ),
            (
                vec![
                    headers(END_HEADERS, b"\x82\x84"),
                    headers(END_HEADERS | END_STREAM, b"\x84"),
                ],
                Some(Reason::PROTOCOL_ERROR),
            ),
        ];
        for (i, (frames, want)) in cases.iter().enumerate() {
            assert_eq!(verdict(frames), *want, "case {i}");
        }
    }

    #[test]
    fn a_malformed_request_split_across_frames_ends_the_connection() {
        // The `h2` crate can lose its verdict on a field in a fragment that
        // is not the block's last (hpack_check's docs): that fragment is
        // withheld and the connection ends. In one fragment, or in the
        // last, the crate resets the stream itself.
        let headers = |flags, block: &[u8]| block_frame(HEADERS, flags, 1, &[], block, 0);
        let continuation = |flags, block: &[u8]| block_frame(CONTINUATION, flags, 1, &[], block, 0);
        const START: &[u8] = b"\x82\x86\x84";
        let conn = b"\x00\x0aconnection\x05close";
        let with = |field: &[u8]| [START, field].concat();
        let cases: [(Vec<Vec<u8>>, Option<Reason>); 5] = [
            (vec![headers(END_HEADERS, &with(conn))], None),
            (
                vec![headers(0, START), continuation(END_HEADERS, conn)],
                None,
            ),
            (
                vec![
                    headers(0, &with(conn)),
                    continuation(END_HEADERS, b"\x41\x01a"),
                ],
                Some(Reason::PROTOCOL_ERROR),
            ),
            // Cut inside the field after it, as the random tests found.
            (
                vec![
                    headers(0, &with(b"\x84\x41\x01")),
                    continuation(END_HEADERS, b"a"),
                ],
                Some(Reason::PROTOCOL_ERROR),
            ),
            (
                vec![
                    headers(0, START),
                    continuation(0, b"\x00\x02te\x04gzip"),
                    continuation(END_HEADERS, b""),
                ],
                Some(Reason::PROTOCOL_ERROR),
            ),
        ];
        for (i, (frames, want)) in cases.iter().enumerate() {
            assert_eq!(verdict(frames), *want, "case {i}");
        }
        // The fragment with the field never reaches the crate.
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings(&[]));
        let bad_at = bytes.len();
        bytes.extend(headers(0, &with(conn)));
        bytes.extend(continuation(END_HEADERS, b"\x41\x01a"));
        let w = FrameWatch::default();
        assert_eq!(w.inspect(&bytes), bad_at);
        assert_eq!(w.stop(), Some(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn a_bad_header_block_is_withheld_from_the_crate_across_split_reads() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings(&[]));
        bytes.extend(block_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &[],
            b"\x82\x86\x84\x41\x01a",
            0,
        ));
        bytes.extend(block_frame(HEADERS, 0, 3, &[], b"\x82\x86", 0));
        let bad_at = bytes.len();
        let bad = block_frame(
            CONTINUATION,
            END_HEADERS,
            3,
            &[],
            b"\x84\x00\x81\xfe\x00",
            0,
        );
        bytes.extend(&bad);
        for size in 1..=bytes.len() {
            let w = FrameWatch::default();
            let handed: usize = bytes.chunks(size).map(|c| w.inspect(c)).sum();
            assert_eq!(w.stop(), Some(Reason::COMPRESSION_ERROR), "reads of {size}");
            assert!(
                (bad_at..bad_at + bad.len()).contains(&handed),
                "reads of {size}: {handed} handed over"
            );
        }
    }
}
