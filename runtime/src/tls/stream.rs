//! A TLS connection over a compio `TcpStream`, driving a rustls
//! [`Connection`] directly.
//!
//! Why not `compio-tls`: its stream needs `&mut self` for reads and
//! writes, but the pipeline reads and writes one socket at the same time
//! through `&` (a request body goes up while the upstream's early answer
//! is awaited on the same connection). Here the rustls state sits in a
//! `RefCell` that is borrowed only between awaits, never across one, so a
//! read and a write may be in flight together, exactly as on a plain
//! `&TcpStream`. It also saves a layer of buffering: ciphertext is read
//! straight into a buffer that rustls decrypts from.
//!
//! Output that rustls produces while reading (a TLS 1.3 key update
//! answer, say) is sent with the next write; alerts for a failed
//! handshake are flushed before the error is returned.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use rustls::Connection;

/// Ciphertext is read into this much room while reads are small (a
/// request head, an idle connection's next request): an idle connection
/// keeps its posted read's buffer, so it stays small, as on cleartext.
const CIPHERTEXT_READ_SMALL: usize = 2 * 1024;
/// After a read that filled its room (a body in transit), a full TLS
/// record's worth.
const CIPHERTEXT_READ: usize = 17 * 1024;

/// A ciphertext buffer up to this capacity is kept for the next write; a
/// larger one (a handshake flight, a body's records) is freed once sent,
/// so a quiet connection does not keep the largest write it ever made.
const OUTGOING_KEPT: usize = 4 * 1024;

/// How long a connection failing on what it read is given to take the
/// alert that says why.
const ALERT_PAUSE: Duration = Duration::from_secs(1);

/// One TLS connection (server or client side).
pub struct TlsStream {
    tcp: TcpStream,
    // Boxed: a rustls connection is large, and the stream lives in every
    // TLS connection's task.
    state: RefCell<Box<State>>,
    /// Held by whoever sends ciphertext: a writer, or a reader sending
    /// what rustls queued in answer to what it read (see
    /// [`TlsStream::send_answers`]). Records are never interleaved.
    sending: futures_util::lock::Mutex<()>,
    /// While set ([`TlsStream::limit_unfinished_records`]): how long a
    /// read that took some ciphertext may wait for the rest of its record.
    record_limit: std::cell::Cell<Option<Duration>>,
}

struct State {
    conn: Connection,
    /// Ciphertext received and not yet handed to rustls: `incoming[pos..]`.
    incoming: Vec<u8>,
    pos: usize,
    /// Plaintext rustls holds for us (from the last `process_new_packets`).
    plaintext: usize,
    /// The peer sent close_notify, or the socket reached EOF.
    closed: bool,
    /// The peer sent close_notify: the end of its data. An EOF without
    /// it may be a cut (see [`TlsStream::read_some`]).
    close_notify: bool,
    /// The last socket read filled its buffer: read bigger next time.
    busy: bool,
    /// Some ciphertext arrived (the peer started the handshake).
    received: bool,
    /// The first bytes that arrived were plain HTTP, not a TLS record: a
    /// request line (a client speaking `http://` to an `https://` port) or
    /// a status line (an upstream server that does not speak TLS).
    plain_http: bool,
    /// That plain HTTP request was a HEAD (its answer has no content).
    plain_head: bool,
    /// Why rustls gave up on the connection (an alert the peer sent, a
    /// record that did not decrypt), once it did.
    failure: Option<String>,
    /// Buffer for ciphertext on its way out (kept while small).
    outgoing: Vec<u8>,
    /// Some bytes went to the peer.
    sent_any: bool,
    /// The record framing of what came in, followed as it arrives (rustls
    /// keeps a partial record to itself). See [`Records`].
    records: Records,
}

/// Where the incoming ciphertext stands in its records: how much of the
/// current record's 5-byte header has come, and how much of its body is
/// still to come. A record begun and not finished is a request on its way
/// that no byte of plaintext shows yet (timed by header-timeout, not by
/// idle-timeout, while a connection waits for its next request).
#[derive(Debug, Default, Clone, Copy)]
struct Records {
    /// Records begun so far: names the current one.
    begun: u64,
    /// When the current record's first byte came, while it is unfinished.
    since: Option<Instant>,
    /// Bytes of the current record's header seen (0 to 4; 0: between records).
    header_seen: u8,
    /// The high byte of its length, once seen.
    length_high: u8,
    /// Bytes of its body still to come.
    body_left: usize,
}

impl Records {
    /// Follows `bytes`, which came at `now()`: the clock is read only when
    /// a record begins and stays unfinished, not on every read.
    fn arrived(&mut self, bytes: &[u8], now: impl FnOnce() -> Instant) {
        let before = self.begun;
        self.track(bytes);
        if self.unfinished().is_none() {
            self.since = None;
        } else if self.begun != before {
            self.since = Some(now());
        }
    }

    fn track(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(bytes.len());
                self.body_left -= k;
                bytes = &bytes[k..];
                continue;
            }
            if self.header_seen == 0 {
                self.begun += 1;
            }
            match self.header_seen {
                3 => self.length_high = bytes[0],
                4 => self.body_left = usize::from(u16::from_be_bytes([self.length_high, bytes[0]])),
                _ => {}
            }
            self.header_seen = (self.header_seen + 1) % 5;
            bytes = &bytes[1..];
        }
    }

    /// The current record, if it has begun and not finished.
    fn unfinished(&self) -> Option<u64> {
        (self.header_seen > 0 || self.body_left > 0).then_some(self.begun)
    }
}

impl State {
    /// Hands buffered ciphertext to rustls until it is all consumed or
    /// rustls holds as much plaintext as it takes.
    fn feed(&mut self) -> Result<(), rustls::Error> {
        while self.pos < self.incoming.len() {
            let mut slice = &self.incoming[self.pos..];
            match self.conn.read_tls(&mut slice) {
                // close_notify was received: nothing more is read.
                Ok(0) => {
                    self.closed = true;
                    self.close_notify = true;
                    break;
                }
                Ok(n) => self.pos += n,
                // The plaintext buffer is full: read it first.
                Err(_) if self.plaintext > 0 => break,
                Err(_) => return Err(rustls::Error::General("TLS input buffer full".into())),
            }
            let io = self
                .conn
                .process_new_packets()
                .map_err(|e| self.failed(e))?;
            self.plaintext = io.plaintext_bytes_to_read();
            if io.peer_has_closed() {
                self.closed = true;
                self.close_notify = true;
            }
        }
        if self.pos == self.incoming.len() {
            self.incoming.clear();
            self.pos = 0;
        }
        Ok(())
    }

    /// Hands rustls the ciphertext left over from the last socket read
    /// once it has no plaintext left to give.
    fn feed_if_idle(&mut self) -> Result<(), rustls::Error> {
        if self.plaintext == 0 && self.pos < self.incoming.len() {
            self.feed()?;
        }
        Ok(())
    }

    /// Plaintext into `dst`, or the end of the stream, if either is here:
    /// `Ok(0)` after close_notify; `UnexpectedEof` after a bare TCP EOF
    /// (see [`TlsStream::read_some`]).
    fn read_buffered(&mut self, dst: &mut [u8]) -> Option<io::Result<usize>> {
        if self.plaintext > 0 {
            let got = self.conn.reader().read(dst);
            if let Ok(k) = got {
                self.plaintext -= k.min(self.plaintext);
            }
            return Some(got);
        }
        if self.closed {
            return Some(if self.close_notify {
                Ok(0)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            });
        }
        None
    }

    /// The socket reached EOF: tells rustls.
    fn eof(&mut self) -> Result<(), rustls::Error> {
        let mut empty: &[u8] = &[];
        let _ = self.conn.read_tls(&mut empty);
        let io = self
            .conn
            .process_new_packets()
            .map_err(|e| self.failed(e))?;
        self.plaintext = io.plaintext_bytes_to_read();
        self.closed = true;
        self.close_notify |= io.peer_has_closed();
        Ok(())
    }

    /// Keeps the first reason rustls gave up, for [`TlsStream::failure`].
    fn failed(&mut self, e: rustls::Error) -> rustls::Error {
        self.failure.get_or_insert_with(|| e.to_string());
        e
    }

    /// Moves the ciphertext rustls wants to send into `outgoing`.
    fn take_output(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.outgoing);
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        self.sent_any |= !out.is_empty();
        out
    }

    /// A failed handshake that left the peer without a word: rustls gave
    /// up on a ClientHello without queuing an alert (TLS 1.2 with no
    /// signature scheme the key can make: `Error::General`). Nothing was
    /// sent yet, so no key is in use and a plaintext alert is the one the
    /// peer can read: `handshake_failure`, as RFC 5246 §7.2.2 and RFC 8446
    /// §6.2 want before the close (nginx and HAProxy send it here).
    fn alert_if_silent(&mut self) {
        if self.received && !self.sent_any && !self.conn.wants_write() {
            // Alert record, legacy version TLS 1.2, fatal, handshake_failure.
            self.outgoing
                .extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
        }
    }
}

/// An HTTP/1.x request line's start (a method token of capital letters
/// and a space) or a status line's (`HTTP/`: a cleartext server answering
/// a ClientHello, often with a 400). A TLS record starts with its content
/// type (20-24), never a letter.
fn looks_like_plain_http(bytes: &[u8]) -> bool {
    let method = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    ((1..=16).contains(&method) && bytes.get(method) == Some(&b' ')) || bytes.starts_with(b"HTTP/")
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Wraps `tcp` with `conn`, before the handshake.
    pub fn new(tcp: TcpStream, conn: impl Into<Connection>) -> Self {
        let mut conn = conn.into();
        // Writes are bounded by the pipeline's batches; rustls must take
        // each one whole.
        conn.set_buffer_limit(None);
        TlsStream {
            tcp,
            state: RefCell::new(Box::new(State {
                conn,
                incoming: Vec::new(),
                pos: 0,
                plaintext: 0,
                closed: false,
                close_notify: false,
                busy: false,
                received: false,
                plain_http: false,
                plain_head: false,
                failure: None,
                outgoing: Vec::new(),
                sent_any: false,
                records: Records::default(),
            })),
            sending: futures_util::lock::Mutex::new(()),
            record_limit: std::cell::Cell::new(None),
        }
    }

    /// From now on (until `None`), a [`Self::read_some`] that has taken
    /// part of a record fails with `TimedOut` unless the plaintext comes
    /// within `limit`. For the wait between two HTTP/1.1 requests: the
    /// wait itself is idle-timeout, but a next head that has started (in a
    /// record not finished yet, so no byte of it is plaintext) is held to
    /// header-timeout, as it is in cleartext.
    pub(crate) fn limit_unfinished_records(&self, limit: Option<Duration>) {
        self.record_limit.set(limit);
    }

    /// Runs the handshake to its end, or fails (after sending the alert)
    /// by `deadline`.
    pub async fn handshake(&self, deadline: Instant) -> io::Result<()> {
        match crate::rt::time::within(deadline, self.drive_handshake()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    /// Whether the peer sent anything yet: a handshake under way, not an
    /// idle connection.
    pub fn received_any(&self) -> bool {
        self.state.borrow().received
    }

    /// Whether the peer opened with plain HTTP instead of a TLS record: a
    /// client's request line (`http://` to an `https://` port), whose
    /// handshake fails without a TLS alert and which can be told so in
    /// plain HTTP (nginx: 400 "The plain HTTP request was sent to HTTPS
    /// port"); or an upstream server's status line (a cleartext server
    /// where the spec says `tls`), which the failed handshake's log names.
    pub fn sent_plain_http(&self) -> bool {
        self.state.borrow().plain_http
    }

    /// The plain HTTP request of [`TlsStream::sent_plain_http`] was a HEAD.
    pub fn sent_plain_head(&self) -> bool {
        self.state.borrow().plain_head
    }

    async fn drive_handshake(&self) -> io::Result<()> {
        loop {
            self.flush().await?;
            let (handshaking, closed) = {
                let st = self.state.borrow();
                (st.conn.is_handshaking(), st.closed)
            };
            if !handshaking {
                return Ok(());
            }
            if closed {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let result = self.receive().await;
            if let Err(e) = result {
                // Best effort: the alert rustls queued tells the peer why
                // (a plain HTTP client gets a plain answer instead, from
                // the caller: see `sent_plain_http`).
                if !self.sent_plain_http() {
                    self.state.borrow_mut().alert_if_silent();
                    let _ = self.flush().await;
                }
                return Err(e);
            }
        }
    }

    /// Reads ciphertext from the socket and hands it to rustls.
    pub(crate) async fn receive(&self) -> io::Result<()> {
        let (buf, room) = {
            let mut st = self.state.borrow_mut();
            let mut buf = std::mem::take(&mut st.incoming);
            // Ciphertext rustls did not take yet stays, at the front.
            buf.drain(..st.pos);
            st.pos = 0;
            let room = if st.busy {
                CIPHERTEXT_READ
            } else {
                CIPHERTEXT_READ_SMALL
            };
            if buf.is_empty() && buf.capacity() > room {
                // Quiet again: give the big buffer back.
                buf = Vec::new();
            }
            buf.reserve(room);
            let room = buf.capacity() - buf.len();
            (buf, room)
        };
        let kept = buf.len();
        let mut tcp = &self.tcp;
        let BufResult(res, buf) = tcp.append(buf).await;
        let mut st = self.state.borrow_mut();
        if let Some(new) = buf.get(kept..).filter(|new| !new.is_empty()) {
            st.records.arrived(new, crate::rt::time::coarse_now);
        }
        st.incoming = buf;
        st.pos = 0;
        st.busy = matches!(res, Ok(n) if n >= room);
        if !st.received && matches!(res, Ok(n) if n > 0) {
            st.received = true;
            st.plain_http = looks_like_plain_http(&st.incoming);
            st.plain_head = st.plain_http && st.incoming.starts_with(b"HEAD ");
        }
        match res {
            Ok(0) => st.eof().map_err(tls_error),
            Ok(_) => st.feed().map_err(tls_error),
            Err(e) => Err(e),
        }
    }

    /// Sends whatever rustls has queued.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        self.flush_paced(None).await
    }

    /// [`Self::flush`], giving up once the peer takes nothing for `pause`.
    async fn flush_paced(&self, pause: Option<Duration>) -> io::Result<()> {
        let _turn = self.sending.lock().await;
        self.send_queued(pause).await
    }

    /// Sends what rustls queued, and what it queues meanwhile (a reader
    /// that found the turn taken left its answers to this loop), on the
    /// turn to send.
    async fn send_queued(&self, pause: Option<Duration>) -> io::Result<()> {
        loop {
            let out = self.state.borrow_mut().take_output();
            if out.is_empty() {
                self.state.borrow_mut().outgoing = out;
                return Ok(());
            }
            let BufResult(res, mut out) = match pause {
                Some(pause) => crate::rt::time::write_paced(&self.tcp, out, pause).await,
                None => {
                    let mut tcp = &self.tcp;
                    tcp.write_all(out).await
                }
            };
            out.clear();
            if out.capacity() <= OUTGOING_KEPT {
                self.state.borrow_mut().outgoing = out;
            }
            res?;
        }
    }

    /// [`Self::receive`], then [`Self::send_answers`]: after the handshake,
    /// how a connection reads.
    pub(crate) async fn receive_and_answer(&self) -> io::Result<()> {
        if let Err(e) = self.receive().await {
            // The alert rustls queued tells the peer why, if it takes it
            // soon: the connection ends either way.
            let _ = self.send_answers(Some(ALERT_PAUSE)).await;
            return Err(e);
        }
        // Bounded by the read's own timeout, as the read is.
        self.send_answers(None).await
    }

    /// Sends what rustls queued in answer to records just read, with no
    /// write of ours to carry it: a `no_renegotiation` alert to a TLS 1.2
    /// client asking to renegotiate, an alert before a close. Without this
    /// it would wait for the next response, and a client waiting for it
    /// would wait for the idle timeout. (rustls keeps its answer to a
    /// KeyUpdate until it next sends a record, which RFC 8446 §4.6.3
    /// allows: `wants_write` stays false for it.) A writer at work
    /// sends them itself ([`Self::send_queued`] loops).
    async fn send_answers(&self, pause: Option<Duration>) -> io::Result<()> {
        if !self.state.borrow().conn.wants_write() {
            return Ok(());
        }
        match self.sending.try_lock() {
            Some(_turn) => self.send_queued(pause).await,
            None => Ok(()),
        }
    }

    /// Reads plaintext onto the end of `buf` (into its spare capacity, at
    /// least one byte of which the caller reserved). `Ok(0)` is the end of
    /// the stream: the peer's close_notify. A TCP EOF without it is
    /// `UnexpectedEof`, as rustls' own reader reports it: whoever cut the
    /// connection may have cut the data, so a body that ends only with the
    /// connection (HTTP/1.1 close-delimited) is complete only after a
    /// close_notify (RFC 9110 §9.8), never after a bare EOF.
    pub async fn read_some(&self, mut buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        loop {
            {
                let mut st = self.state.borrow_mut();
                if let Err(e) = st.feed_if_idle() {
                    return BufResult(Err(tls_error(e)), buf);
                }
                if st.plaintext > 0 || st.closed {
                    let len = buf.len();
                    let n = st.plaintext.min(buf.capacity() - len).max(1);
                    buf.resize(len + n, 0);
                    // Some: there is plaintext or an end.
                    let got = st.read_buffered(&mut buf[len..]).unwrap_or(Ok(0));
                    buf.truncate(len + got.as_ref().map_or(0, |k| *k));
                    return BufResult(got, buf);
                }
            }
            // A record begun and not finished (in this read or before it)
            // must end within `record_limit` of its first byte.
            let since = self.state.borrow().records.since;
            let received = match (self.record_limit.get(), since) {
                (Some(limit), Some(t)) => {
                    crate::rt::time::within(t + limit, self.receive_and_answer())
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                }
                _ => self.receive_and_answer().await,
            };
            if let Err(e) = received {
                return BufResult(Err(e), buf);
            }
        }
    }

    /// The record that has begun to arrive and not finished, if any (named
    /// by its count, so that a caller can tell one slow record from several).
    #[cfg(feature = "h2")]
    pub(crate) fn unfinished_record(&self) -> Option<u64> {
        self.state.borrow().records.unfinished()
    }

    /// How many bytes of plaintext are already here, decrypting what
    /// ciphertext waits if none is: what [`Self::read_buffered`] can give
    /// without touching the socket. The HTTP/2 bridge makes only that much
    /// of the `h2` crate's read buffer ready (zeroed), not all of its room.
    #[cfg(feature = "h2")]
    pub(crate) fn plaintext_ready(&self) -> io::Result<usize> {
        let mut st = self.state.borrow_mut();
        st.feed_if_idle().map_err(tls_error)?;
        Ok(st.plaintext)
    }

    /// Plaintext (or the end of the stream) that is already here, copied
    /// into `dst` without touching the socket; `None` when a
    /// [`Self::receive`] must come first (see [`Self::plaintext_ready`]).
    /// The HTTP/2 bridge reads through this straight into the `h2` crate's
    /// buffer.
    #[cfg(feature = "h2")]
    pub(crate) fn read_buffered(&self, dst: &mut [u8]) -> Option<io::Result<usize>> {
        self.state.borrow_mut().read_buffered(dst)
    }

    /// Encrypts all of `plaintext` into rustls' outgoing queue, without
    /// I/O: [`Self::flush`] sends it.
    #[cfg(feature = "h2")]
    pub(crate) fn write_buffered(&self, plaintext: &[u8]) -> io::Result<()> {
        self.state.borrow_mut().conn.writer().write_all(plaintext)
    }

    /// Whether encrypted output waits for [`Self::flush`].
    #[cfg(feature = "h2")]
    pub(crate) fn wants_flush(&self) -> bool {
        self.state.borrow().conn.wants_write()
    }

    /// Encrypts and sends all of `buf` (left cleared, capacity kept);
    /// `TimedOut` once the peer takes nothing for `pause`.
    pub async fn write_paced(&self, mut buf: Vec<u8>, pause: Duration) -> BufResult<(), Vec<u8>> {
        let taken = self.state.borrow_mut().conn.writer().write_all(&buf);
        buf.clear();
        let sent = match taken {
            Ok(()) => self.flush_paced(Some(pause)).await,
            Err(e) => Err(e),
        };
        BufResult(sent, buf)
    }

    /// Sends close_notify, then FIN.
    pub async fn shutdown(&self) -> io::Result<()> {
        self.state.borrow_mut().conn.send_close_notify();
        let _ = self.flush().await;
        let mut tcp = &self.tcp;
        tcp.shutdown().await
    }

    /// Closes the socket.
    pub async fn close(self) -> io::Result<()> {
        self.tcp.close().await
    }

    /// Why rustls gave up on this connection, if it did: an alert from
    /// the peer (a TLS 1.3 server refuses a client certificate, or the
    /// lack of one, only after the client's last handshake flight, so
    /// the handshake looked done), a record that did not decrypt.
    pub fn failure(&self) -> Option<String> {
        self.state.borrow().failure.clone()
    }

    /// Whether nothing came from the peer since the last read: no data
    /// decrypted or received and not yet read, and no end of the stream.
    /// A close_notify that arrived with a response's last bytes was
    /// consumed with them and leaves nothing on the socket to see: a
    /// pooled connection asks this before the socket is peeked.
    pub fn quiet(&self) -> bool {
        let st = self.state.borrow();
        !st.closed && st.plaintext == 0 && st.pos >= st.incoming.len()
    }

    /// The TCP connection under the TLS layer.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The protocol ALPN chose, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.state.borrow().conn.alpn_protocol().map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::Records;
    use super::looks_like_plain_http;
    use std::time::Instant;

    #[test]
    fn records_are_followed_across_reads_of_any_size() {
        // A 3-byte record and a 2-byte one, then the header of a third.
        let wire = [23, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 2, 9, 9, 23, 3];
        for split in 0..=wire.len() {
            let mut r = Records::default();
            r.track(&wire[..split]);
            r.track(&wire[split..]);
            assert_eq!(r.unfinished(), Some(3), "split at {split}");
        }
        let mut r = Records::default();
        assert_eq!(r.unfinished(), None);
        r.track(&wire[..8]);
        assert_eq!(r.unfinished(), None, "the first record is whole");
        r.track(&wire[8..10]);
        assert_eq!(r.unfinished(), Some(2));
        r.track(&wire[10..15]);
        assert_eq!(r.unfinished(), None);
        // The clock of an unfinished record starts with its first byte and
        // stops with its last, across reads (a KeyUpdate split in two).
        let (t0, t1) = (
            Instant::now(),
            Instant::now() + std::time::Duration::from_secs(1),
        );
        let mut r = Records::default();
        r.arrived(&wire[..10], || t0);
        assert_eq!(r.since, Some(t0), "the second record began");
        r.arrived(&wire[10..16], || t1);
        assert_eq!(r.since, Some(t1), "the second ended, the third began");
        r.arrived(&wire[16..], || t0);
        assert_eq!(r.since, Some(t1), "still the third");
        r.arrived(&[3, 0, 1, 7], || t0);
        assert_eq!(r.since, None, "the third ended");
        // A record of the largest length, byte by byte.
        let mut r = Records::default();
        r.track(&[23, 3, 3, 0xff, 0xff]);
        for _ in 0..0xffff - 1 {
            r.track(&[0]);
        }
        assert_eq!(r.unfinished(), Some(1));
        r.track(&[0]);
        assert_eq!(r.unfinished(), None);
    }

    #[test]
    fn a_request_or_status_line_is_plain_http_and_a_tls_record_is_not() {
        assert!(looks_like_plain_http(b"HTTP/1.1 400 Bad Request\r\n"));
        assert!(looks_like_plain_http(b"HTTP/1.0 400 Bad request\r\n"));
        assert!(looks_like_plain_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_plain_http(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(looks_like_plain_http(b"PRI * HTTP/2.0\r\n"));
        // a ClientHello record
        assert!(!looks_like_plain_http(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_plain_http(b"get / HTTP/1.1\r\n"));
        assert!(!looks_like_plain_http(b"GET"));
        assert!(!looks_like_plain_http(b""));
    }
}
