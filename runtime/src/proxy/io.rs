//! Socket helpers for the pipeline: the [`Stream`] the pipeline is
//! generic over (plain TCP or TLS), bounded reads with deadlines and the
//! body pump that moves one body from a source socket to a sink socket
//! through the sans-IO [`BodyReader`], re-framing it on the way.

use std::cell::Cell;
use std::pin::Pin;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWrite};
use compio::net::TcpStream;
use futures_util::future::{Either, select};

use crate::http::{BodyReader, LAST_CHUNK, put_chunk_head};

/// Writes are batched up to this many bytes before a flush.
pub const WRITE_BATCH: usize = 64 * 1024;
/// Reads ask for at least this much room.
pub const READ_CHUNK: usize = 16 * 1024;

/// A connection the pipeline reads and writes: a TCP socket or a TLS
/// connection over one. Everything goes through `&self`, and a read and a
/// write may be in flight at the same time (full duplex). The pipeline is
/// monomorphised per stream type, so plain TCP pays nothing for TLS.
#[allow(async_fn_in_trait)]
pub trait Stream {
    /// Reads into the spare capacity of `buf` (appending); `Ok(0)` at the
    /// end of the stream.
    async fn read_some(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>>;
    /// Writes all of `buf`; `TimedOut` once the peer takes nothing for
    /// `pause` (a stall, not a slow reader: see [`crate::rt::time::write_paced`]).
    async fn write_paced(&self, buf: Vec<u8>, pause: Duration) -> BufResult<(), Vec<u8>>;
    /// Ends the sending side (TLS: close_notify, then FIN).
    async fn shutdown(&self) -> std::io::Result<()>;
    /// Closes the socket.
    async fn close(self) -> std::io::Result<()>;
    /// Makes the coming [`Stream::close`] a reset (`SO_LINGER` 0), not a FIN:
    /// for a peer that would read a FIN as the end of a close-delimited body.
    fn reset_on_close(&self);
    /// Whether the client reached us over TLS (`x-forwarded-proto`).
    fn is_tls(&self) -> bool {
        false
    }
    /// TLS: holds a read that took part of a record to `limit` for the
    /// rest of it (see [`crate::tls::TlsStream::limit_unfinished_records`]).
    /// Plain TCP has no records: every byte is seen as it comes.
    fn limit_unfinished_records(&self, _limit: Option<Duration>) {}
}

impl Stream for TcpStream {
    async fn read_some(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        let mut s = self;
        s.append(buf).await
    }
    async fn write_paced(&self, buf: Vec<u8>, pause: Duration) -> BufResult<(), Vec<u8>> {
        crate::rt::time::write_paced(self, buf, pause).await
    }
    async fn shutdown(&self) -> std::io::Result<()> {
        let mut s = self;
        AsyncWrite::shutdown(&mut s).await
    }
    async fn close(self) -> std::io::Result<()> {
        TcpStream::close(self).await
    }
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

#[cfg(feature = "tls")]
impl Stream for crate::tls::TlsStream {
    async fn read_some(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        crate::tls::TlsStream::read_some(self, buf).await
    }
    async fn write_paced(&self, buf: Vec<u8>, pause: Duration) -> BufResult<(), Vec<u8>> {
        crate::tls::TlsStream::write_paced(self, buf, pause).await
    }
    async fn shutdown(&self) -> std::io::Result<()> {
        crate::tls::TlsStream::shutdown(self).await
    }
    async fn close(self) -> std::io::Result<()> {
        crate::tls::TlsStream::close(self).await
    }
    fn reset_on_close(&self) {
        Stream::reset_on_close(self.tcp());
    }
    fn is_tls(&self) -> bool {
        true
    }
    fn limit_unfinished_records(&self, limit: Option<Duration>) {
        crate::tls::TlsStream::limit_unfinished_records(self, limit);
    }
}

/// A connection to an upstream server: plain, or TLS when the server is
/// configured so. (One type, so one pool holds both.)
pub enum UpstreamStream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(crate::tls::TlsStream),
}

impl std::fmt::Debug for UpstreamStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamStream::Tcp(_) => f.write_str("UpstreamStream::Tcp"),
            #[cfg(feature = "tls")]
            UpstreamStream::Tls(_) => f.write_str("UpstreamStream::Tls"),
        }
    }
}

impl UpstreamStream {
    /// The TCP connection under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Tcp(s) => s,
            #[cfg(feature = "tls")]
            UpstreamStream::Tls(s) => s.tcp(),
        }
    }

    /// Whether an *idle* pooled connection may carry a request: the server
    /// has neither closed it (EOF, reset) nor sent anything unasked (a
    /// `408`, garbage) since its last exchange. One non-blocking peek at
    /// the socket. Servers close idle keep-alive connections at their own
    /// timeout, often without saying so in the last response; a request
    /// with a body sent on such a connection cannot be replayed (the body
    /// is streamed, not kept), so it would fail with a 502. What is left is
    /// the race with a close in flight, which every proxy has. Over TLS,
    /// the TLS layer is asked first: a close_notify read together with the
    /// last response is no longer on the socket.
    pub fn idle_and_open(&self) -> bool {
        #[cfg(feature = "tls")]
        if let UpstreamStream::Tls(s) = self
            && !s.quiet()
        {
            return false;
        }
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        let peek = socket2::SockRef::from(self.tcp())
            .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
        matches!(peek, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Closes an *idle* connection with a reset instead of FIN (`SO_LINGER`
    /// 0), as HAProxy closes idle server connections: nothing is in flight
    /// on it, and the gateway keeps no TIME_WAIT socket. A pool that sheds
    /// connections under bursty load (more exchanges at once than
    /// `max-idle`) would otherwise leave one TIME_WAIT per connection for
    /// 60 s, and on a real network (no `tcp_tw_reuse` outside loopback)
    /// run the gateway out of source ports to a busy origin.
    pub fn close_idle(self) {
        Stream::reset_on_close(self.tcp());
        drop(self);
    }
}

impl Stream for UpstreamStream {
    async fn read_some(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        match self {
            UpstreamStream::Tcp(s) => s.read_some(buf).await,
            #[cfg(feature = "tls")]
            UpstreamStream::Tls(s) => Stream::read_some(s, buf).await,
        }
    }
    async fn write_paced(&self, buf: Vec<u8>, pause: Duration) -> BufResult<(), Vec<u8>> {
        match self {
            UpstreamStream::Tcp(s) => s.write_paced(buf, pause).await,
            #[cfg(feature = "tls")]
            UpstreamStream::Tls(s) => s.write_paced(buf, pause).await,
        }
    }
    async fn shutdown(&self) -> std::io::Result<()> {
        match self {
            UpstreamStream::Tcp(s) => Stream::shutdown(s).await,
            #[cfg(feature = "tls")]
            UpstreamStream::Tls(s) => Stream::shutdown(s).await,
        }
    }
    async fn close(self) -> std::io::Result<()> {
        match self {
            UpstreamStream::Tcp(s) => Stream::close(s).await,
            #[cfg(feature = "tls")]
            UpstreamStream::Tls(s) => Stream::close(s).await,
        }
    }
    fn reset_on_close(&self) {
        Stream::reset_on_close(self.tcp());
    }
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(usize),
    Eof,
    Error,
    Timeout,
}

/// Reads more bytes onto the end of `buf` (keeping at least `room` spare
/// capacity), within `deadline`. On timeout the buffer stays with the
/// cancelled operation, so a fresh empty one comes back: the caller closes
/// the connection in that case anyway.
pub async fn read_more<S: Stream>(
    stream: &S,
    mut buf: Vec<u8>,
    room: usize,
    deadline: Instant,
) -> (ReadOutcome, Vec<u8>) {
    if buf.capacity() - buf.len() < room {
        buf.reserve(room);
    }
    match crate::rt::time::within(deadline, stream.read_some(buf)).await {
        Ok(BufResult(Ok(0), buf)) => (ReadOutcome::Eof, buf),
        Ok(BufResult(Ok(n), buf)) => (ReadOutcome::Data(n), buf),
        Ok(BufResult(Err(_), buf)) => (ReadOutcome::Error, buf),
        Err(_) => (ReadOutcome::Timeout, Vec::new()),
    }
}

/// Writes all of `buf` and clears it (keeping its capacity). A peer that
/// takes nothing for `pause` is given up on (`TimedOut`): a client that
/// stops reading its answers, an upstream that stops reading a body. One
/// that reads slowly but steadily is served to the end.
pub async fn write_all_within<S: Stream>(
    stream: &S,
    buf: &mut Vec<u8>,
    pause: Duration,
) -> std::io::Result<()> {
    let BufResult(res, mut back) = stream.write_paced(std::mem::take(buf), pause).await;
    back.clear();
    *buf = back;
    res
}

/// Why a body transfer stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpError {
    /// Invalid chunked framing from the source.
    Framing(&'static str),
    /// The source sent more than the allowed body size.
    TooLarge,
    /// The source paused longer than its timeout.
    SourceTimeout,
    /// The source closed or failed before the body ended.
    SourceClosed,
    /// Writing to the sink failed.
    SinkFailed,
    /// The sink took nothing for longer than the write timeout.
    SinkTimeout,
}

/// One body in transit: source buffer with a read position, the decoder,
/// and whether the sink gets chunked coding.
pub struct Pump<'a, R: Stream, W: Stream> {
    pub src: &'a R,
    pub src_buf: &'a mut Vec<u8>,
    pub src_pos: &'a mut usize,
    pub reader: BodyReader,
    pub sink: &'a W,
    /// Bytes waiting for the sink (may already hold a head).
    pub out: &'a mut Vec<u8>,
    pub chunked_out: bool,
    pub max_bytes: u64,
    pub read_timeout: Duration,
    /// Capacity cap for `src_buf` when it must grow to read.
    pub read_room: usize,
    /// Longest the sink may take nothing: an upstream that stops reading a
    /// request body, or a client that stops reading a response, must not
    /// hold the transfer forever (a slow one that keeps reading is served).
    pub write_timeout: Duration,
    /// Whether anything reached the sink yet (set by `run`): a transfer
    /// that failed before its first write can still be answered with an
    /// error instead of a cut connection.
    pub flushed: bool,
    /// For a response relayed while its request body still goes up: reads
    /// wait without a deadline until the upload ended ([`DuplexClock`]).
    pub duplex: Option<&'a DuplexClock>,
}

/// An upstream's silence during a full-duplex exchange (an answer that came
/// before the request body was all sent). While the body still goes up, the
/// upstream may be waiting for it: reads of the answer have no deadline
/// (the body's own timeouts bound the exchange: `body-timeout` for the
/// client's pauses, `response-timeout` for an upstream that stops taking
/// it). Once the body is sent, `response-timeout` of silence counts again,
/// as docs/spec.md has it run from the request sent.
pub struct DuplexClock {
    uploading: Cell<bool>,
    /// A read started while the body went up is in flight: it has no
    /// deadline of its own.
    unbounded_read: Cell<bool>,
}

impl DuplexClock {
    /// A clock for an upload still going.
    pub fn uploading() -> Self {
        DuplexClock {
            uploading: Cell::new(true),
            unbounded_read: Cell::new(false),
        }
    }

    /// The deadline of a read of the answer starting now.
    pub fn read_deadline(&self, timeout: Duration) -> Instant {
        let now = crate::rt::time::coarse_now();
        if self.uploading.get() {
            self.unbounded_read.set(true);
            now + Duration::from_secs(24 * 3600)
        } else {
            now + timeout
        }
    }

    /// A read of the answer completed.
    pub fn read_done(&self) {
        self.unbounded_read.set(false);
    }

    /// Relays an answer (`relay`, whose reads this clock times) while the
    /// rest of its request body goes up (`upload`). Returns the relay's
    /// result and whether the body went up whole. A failed relay drops the
    /// upload (the upstream connection is closed mid-request). A failed
    /// upload cuts an answer still in flight (`cut` says why), since an
    /// upstream missing the rest of the body may never end it; after a
    /// complete answer it only closes the connections. Once the body is
    /// sent, an upstream silent for `timeout` is `timed_out`.
    pub async fn relay_beside_upload<T, E, U>(
        &self,
        relay: impl Future<Output = Result<T, E>>,
        upload: impl Future<Output = Result<(), U>>,
        timeout: Duration,
        timed_out: E,
        cut: impl FnOnce(U) -> E,
    ) -> (Result<T, E>, bool) {
        let relay = std::pin::pin!(relay);
        let upload = std::pin::pin!(upload);
        match select(relay, upload).await {
            Either::Left((Ok(relayed), upload)) => (Ok(relayed), upload.await.is_ok()),
            Either::Left((Err(e), _)) => (Err(e), false),
            Either::Right((Ok(()), relay)) => match self.after_upload(relay, timeout).await {
                Some(relayed) => (relayed, true),
                None => (Err(timed_out), true),
            },
            Either::Right((Err(e), _)) => (Err(cut(e)), false),
        }
    }

    /// The upload ended: runs the rest of `relay`, `None` if the read in
    /// flight then (which has no deadline) waits `timeout` more. Later
    /// reads have their deadlines, and writes to the client their own
    /// bound, so a client slow to take the answer is not taken for a
    /// silent upstream.
    async fn after_upload<F: Future>(
        &self,
        mut relay: Pin<&mut F>,
        timeout: Duration,
    ) -> Option<F::Output> {
        self.uploading.set(false);
        if !self.unbounded_read.get() {
            return Some(relay.await);
        }
        match crate::rt::time::within_for(timeout, relay.as_mut()).await {
            Ok(out) => Some(out),
            Err(_) if self.unbounded_read.get() => None,
            Err(_) => Some(relay.await),
        }
    }
}

impl<R: Stream, W: Stream> Pump<'_, R, W> {
    /// Moves the whole body, flushing `out` (the sink has everything when
    /// this returns `Ok`). With chunked output, the last chunk is written
    /// only after the source body completed: a failed body is never
    /// completed upstream.
    pub async fn run(&mut self) -> Result<u64, PumpError> {
        let mut total: u64 = 0;
        loop {
            while *self.src_pos < self.src_buf.len() && !self.reader.is_done() {
                let input = &self.src_buf[*self.src_pos..];
                let d = self
                    .reader
                    .decode(input)
                    .map_err(|e| PumpError::Framing(e.0))?;
                let data = &input[d.data.clone()];
                total += data.len() as u64;
                if total > self.max_bytes {
                    return Err(PumpError::TooLarge);
                }
                if !data.is_empty() {
                    if self.chunked_out {
                        put_chunk_head(self.out, data.len());
                        self.out.extend_from_slice(data);
                        self.out.extend_from_slice(b"\r\n");
                    } else {
                        self.out.extend_from_slice(data);
                    }
                }
                *self.src_pos += d.consumed;
                if self.out.len() >= WRITE_BATCH {
                    self.flush().await?;
                }
                if d.consumed == 0 {
                    break;
                }
            }
            if self.reader.is_done() {
                return self.finish(total).await;
            }
            if !self.out.is_empty() {
                self.flush().await?;
            }
            // Everything buffered is consumed: reuse the buffer from the start.
            self.src_buf.clear();
            *self.src_pos = 0;
            let deadline = match self.duplex {
                Some(clock) => clock.read_deadline(self.read_timeout),
                None => crate::rt::time::coarse_now() + self.read_timeout,
            };
            let buf = std::mem::take(self.src_buf);
            let (outcome, buf) = read_more(self.src, buf, self.read_room, deadline).await;
            *self.src_buf = buf;
            if let Some(clock) = self.duplex {
                clock.read_done();
            }
            match outcome {
                ReadOutcome::Data(_) => {}
                ReadOutcome::Eof if matches!(self.reader, BodyReader::UntilClose) => {
                    return self.finish(total).await;
                }
                ReadOutcome::Eof | ReadOutcome::Error => return Err(PumpError::SourceClosed),
                ReadOutcome::Timeout => return Err(PumpError::SourceTimeout),
            }
        }
    }

    async fn finish(&mut self, total: u64) -> Result<u64, PumpError> {
        if self.chunked_out {
            self.out.extend_from_slice(LAST_CHUNK);
        }
        if !self.out.is_empty() {
            self.flush().await?;
        }
        Ok(total)
    }

    /// Writes what `out` holds to the sink (no pause over the write timeout).
    async fn flush(&mut self) -> Result<(), PumpError> {
        self.flushed = true;
        write_all_within(self.sink, self.out, self.write_timeout)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => PumpError::SinkTimeout,
                _ => PumpError::SinkFailed,
            })
    }
}
