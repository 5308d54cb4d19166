//! A sans-IO watch over the frames the client sends, fed every byte read
//! (by [`super::io::H2Io`]) before the `h2` crate parses it.
//!
//! The watch exists for what the `h2` crate does not bound itself: it
//! answers every SETTINGS and PING (one at a time, so memory stays bounded,
//! but forever), keeps a half-received header block open as long as the
//! client trickles CONTINUATION frames, and ignores unknown frame types.
//! The watch counts those frames per tick of the connection loop and
//! notes an open header block; the loop (`super::serve_h2`) turns a
//! tripped budget into GOAWAY(ENHANCE_YOUR_CALM). Once tripped, reads stop:
//! nothing more the client sends is parsed.

use std::cell::Cell;

/// Control frames (SETTINGS and PING without ACK, RST_STREAM, PRIORITY,
/// unknown types) a client may send per tick (one second) of the
/// connection loop. Browsers and h2load send a handful per connection;
/// a flood sends thousands per second. Rapid reset (CVE-2023-44487) is
/// one RST_STREAM per stream, so it trips this too.
pub(crate) const CONTROL_FRAMES_PER_TICK: u32 = 500;

/// The client's connection preface, before the first frame.
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
const FLAG_END_HEADERS: u8 = 0x4;

/// What the connection loop learns from the client's frames, sans-IO:
/// fed the raw bytes read, in order.
#[derive(Debug)]
pub(crate) struct FrameWatch {
    /// Preface bytes still to skip.
    preface_left: Cell<usize>,
    /// Frame header bytes collected so far (9 make a header).
    head: Cell<[u8; 9]>,
    head_len: Cell<usize>,
    /// Payload bytes of the current frame still to skip.
    payload_left: Cell<usize>,
    /// Control frames seen since the last tick.
    control: Cell<u32>,
    /// A HEADERS or PUSH_PROMISE frame arrived without END_HEADERS and its
    /// last CONTINUATION has not.
    header_block_open: Cell<bool>,
    /// Bytes arrived since the last tick.
    active: Cell<bool>,
    /// The control budget was exceeded: reads stop.
    tripped: Cell<bool>,
}

impl Default for FrameWatch {
    fn default() -> Self {
        FrameWatch {
            preface_left: Cell::new(PREFACE.len()),
            head: Cell::new([0; 9]),
            head_len: Cell::new(0),
            payload_left: Cell::new(0),
            control: Cell::new(0),
            header_block_open: Cell::new(false),
            active: Cell::new(false),
            tripped: Cell::new(false),
        }
    }
}

impl FrameWatch {
    /// Feeds bytes read from the client.
    pub(crate) fn inspect(&self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.active.set(true);
        let skip = self.preface_left.get().min(bytes.len());
        self.preface_left.set(self.preface_left.get() - skip);
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            let left = self.payload_left.get();
            if left > 0 {
                let n = left.min(bytes.len());
                self.payload_left.set(left - n);
                bytes = &bytes[n..];
                continue;
            }
            let mut head = self.head.get();
            let have = self.head_len.get();
            let n = (9 - have).min(bytes.len());
            head[have..have + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if have + n < 9 {
                self.head.set(head);
                self.head_len.set(have + n);
                return;
            }
            self.head_len.set(0);
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            self.payload_left.set(len);
            self.frame(head[3], head[4]);
        }
    }

    fn frame(&self, kind: u8, flags: u8) {
        let control = match kind {
            SETTINGS | PING => flags & FLAG_ACK == 0,
            RST_STREAM | PRIORITY => true,
            HEADERS | PUSH_PROMISE => {
                self.header_block_open.set(flags & FLAG_END_HEADERS == 0);
                false
            }
            CONTINUATION => {
                if flags & FLAG_END_HEADERS != 0 {
                    self.header_block_open.set(false);
                }
                false
            }
            DATA | GOAWAY | WINDOW_UPDATE => false,
            // Unknown types are ignored by the h2 crate: they cost a
            // parse each and carry nothing.
            _ => true,
        };
        if control {
            let n = self.control.get() + 1;
            self.control.set(n);
            if n > CONTROL_FRAMES_PER_TICK {
                self.tripped.set(true);
            }
        }
    }

    /// Called by the connection loop once per tick: returns whether bytes
    /// arrived since the last tick and starts a new control budget.
    pub(crate) fn tick(&self) -> bool {
        self.control.set(0);
        self.active.replace(false)
    }

    /// True while a header block waits for its last CONTINUATION.
    pub(crate) fn header_block_open(&self) -> bool {
        self.header_block_open.get()
    }

    /// True once the client sent more control frames than allowed.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(9 + len, 0);
        f
    }

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
            w.inspect(piece);
        }
        assert!(!w.tripped());
        w.inspect(&frame(RST_STREAM, 0, 4));
        assert!(w.tripped());
    }

    #[test]
    fn tick_starts_a_new_budget() {
        let w = FrameWatch::default();
        w.inspect(PREFACE);
        for _ in 0..3 {
            for _ in 0..CONTROL_FRAMES_PER_TICK {
                w.inspect(&frame(PING, 0, 8));
            }
            assert!(w.tick());
        }
        assert!(!w.tripped());
        assert!(!w.tick(), "no bytes since the last tick");
    }

    #[test]
    fn notes_an_open_header_block() {
        let w = FrameWatch::default();
        w.inspect(PREFACE);
        w.inspect(&frame(HEADERS, 0, 10));
        assert!(w.header_block_open());
        w.inspect(&frame(CONTINUATION, 0, 10));
        assert!(w.header_block_open());
        w.inspect(&frame(CONTINUATION, FLAG_END_HEADERS, 10));
        assert!(!w.header_block_open());
        w.inspect(&frame(HEADERS, FLAG_END_HEADERS, 10));
        assert!(!w.header_block_open());
    }
}
