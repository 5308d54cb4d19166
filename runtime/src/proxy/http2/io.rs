//! The byte stream under the `h2` crate: a compio TCP or TLS stream
//! behind tokio's poll-based `AsyncRead`/`AsyncWrite` (the only part of
//! tokio used; no tokio runtime runs), feeding every byte read from the
//! client to the [`FrameWatch`] first (and withholding what it stops at).
//!
//! Why not compio's io compat layer: it gives a connection a read and a
//! write buffer of one fixed size for its whole life, and the `h2` crate
//! keeps its own two besides; with a frame's size each, an idle HTTP/2
//! connection cost about 37 KiB (56 KiB over TLS, with a third buffer
//! between rustls and the compat layer). Here:
//!
//! - over TLS, the crate reads plaintext straight out of rustls and writes
//!   straight into it: no buffer of ours, and one copy fewer each way.
//!   Only ciphertext moves through owned buffers, the [`crate::tls::TlsStream`]'s,
//!   which are small while the connection is quiet;
//! - in cleartext, reads go into a buffer that is small while reads are
//!   small (an idle connection's posted read keeps it) and a frame's size
//!   after a read filled it, as HTTP/1.1 connections do; writes gather in
//!   a buffer that is kept between batches only while it is small.
//!
//! An operation in flight is a boxed future holding an `Rc` of the stream,
//! since the `h2` crate polls reads and writes separately and both may be
//! in flight at once. A write in flight finishes before the next batch is
//! taken, so at most one batch waits beside the crate's own buffer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use compio::BufResult;
use compio::io::{AsyncRead as _, AsyncWrite as _, AsyncWriteExt as _};
use compio::net::TcpStream;
use tokio::io::ReadBuf;

use super::watch::FrameWatch;

/// The connection HTTP/2 runs over.
pub(crate) enum Transport {
    /// `h2c`: prior knowledge, in cleartext.
    Tcp(TcpStream),
    /// `h2` chosen by ALPN.
    #[cfg(feature = "tls")]
    Tls(crate::tls::TlsStream),
}

impl Transport {
    /// Over TLS, the record that has begun to arrive and not finished
    /// (see [`crate::tls::TlsStream::unfinished_record`]); in cleartext
    /// every byte reaches the frame watch as it comes: `None`.
    pub(crate) fn unfinished_record(&self) -> Option<u64> {
        match self {
            Transport::Tcp(_) => None,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.unfinished_record(),
        }
    }
}

/// An operation in flight, with the buffer it owns until it completes.
type Op<T> = Pin<Box<dyn Future<Output = BufResult<T, Vec<u8>>>>>;

/// Cleartext read room while reads are small: a request's HEADERS, a
/// WINDOW_UPDATE, an idle connection's next frame.
const READ_SMALL: usize = 1024;
/// Read room after a read filled its buffer (a body in transit): one frame
/// of the largest size we accept plus its header.
const READ_LARGE: usize = 16 * 1024 + 9;
/// A write buffer up to this capacity is kept for the next batch; a larger
/// one (a body's DATA frames) is freed once sent.
const WRITE_KEPT: usize = 4 * 1024;

/// A [`Transport`] as tokio's `AsyncRead + AsyncWrite`, after `prefix`
/// (bytes already read from it).
pub(crate) struct H2Io {
    stream: Rc<Transport>,
    watch: Rc<FrameWatch>,
    /// Bytes read and not yet handed to the crate, from `rpos`: the
    /// sniffed preface, then each cleartext read.
    rbuf: Vec<u8>,
    rpos: usize,
    /// The last cleartext read filled its room: read a frame's worth next.
    busy: bool,
    /// A socket read in flight (over TLS, rustls' own receive).
    reading: Option<Op<usize>>,
    /// Cleartext waiting to be sent (over TLS the output waits in rustls).
    wbuf: Vec<u8>,
    /// A write in flight: a batch, or the shutdown.
    writing: Option<Op<()>>,
    shutdown_sent: bool,
}

impl H2Io {
    pub(crate) fn new(stream: Rc<Transport>, prefix: Vec<u8>, watch: Rc<FrameWatch>) -> Self {
        H2Io {
            stream,
            watch,
            rbuf: prefix,
            rpos: 0,
            busy: false,
            reading: None,
            wbuf: Vec::new(),
            writing: None,
            shutdown_sent: false,
        }
    }

    /// Hands up to `buf`'s room of `bytes` to the crate, through the watch;
    /// returns how many were consumed (handed or withheld).
    fn hand_over(&self, bytes: &[u8], buf: &mut ReadBuf<'_>) -> (usize, usize) {
        let n = bytes.len().min(buf.remaining());
        let parse = self.watch.inspect(&bytes[..n]);
        buf.put_slice(&bytes[..parse]);
        (n, parse)
    }

    /// Posts the next socket read: into a buffer sized by the last read
    /// over cleartext; rustls' receive over TLS.
    fn start_read(&mut self) -> Op<usize> {
        let buf = match &*self.stream {
            Transport::Tcp(_) => self.read_buffer(),
            #[cfg(feature = "tls")]
            Transport::Tls(_) => Vec::new(),
        };
        let stream = Rc::clone(&self.stream);
        Box::pin(async move {
            match &*stream {
                Transport::Tcp(tcp) => {
                    let mut tcp = tcp;
                    tcp.read(buf).await
                }
                #[cfg(feature = "tls")]
                Transport::Tls(tls) => BufResult(tls.receive_and_answer().await.map(|()| 0), buf),
            }
        })
    }

    /// The buffer for the next cleartext read: `rbuf`, emptied, with room
    /// for a frame after a read that filled it and small otherwise.
    fn read_buffer(&mut self) -> Vec<u8> {
        let room = if self.busy { READ_LARGE } else { READ_SMALL };
        let mut buf = std::mem::take(&mut self.rbuf);
        self.rpos = 0;
        buf.clear();
        if buf.capacity() > room {
            // Quiet again: give the big buffer back.
            buf = Vec::new();
        }
        buf.reserve(room);
        buf
    }

    /// Whether output waits to be sent.
    fn has_output(&self) -> bool {
        match &*self.stream {
            Transport::Tcp(_) => !self.wbuf.is_empty(),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.wants_flush(),
        }
    }

    /// Sends the output waiting: the gathered batch in cleartext, rustls'
    /// queue over TLS.
    fn start_write(&mut self) {
        let stream = Rc::clone(&self.stream);
        let buf = std::mem::take(&mut self.wbuf);
        self.writing = Some(Box::pin(async move {
            match &*stream {
                Transport::Tcp(tcp) => {
                    let mut tcp = tcp;
                    tcp.write_all(buf).await
                }
                #[cfg(feature = "tls")]
                Transport::Tls(tls) => BufResult(tls.flush().await, buf),
            }
        }));
    }

    /// Sends close_notify over TLS, then FIN.
    fn start_shutdown(&mut self) {
        let stream = Rc::clone(&self.stream);
        self.shutdown_sent = true;
        self.writing = Some(Box::pin(async move {
            let done = match &*stream {
                Transport::Tcp(tcp) => {
                    let mut tcp = tcp;
                    tcp.shutdown().await
                }
                #[cfg(feature = "tls")]
                Transport::Tls(tls) => tls.shutdown().await,
            };
            BufResult(done, Vec::new())
        }));
    }

    /// Polls the write in flight, if any, to its end.
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(op) = &mut self.writing else {
            return Poll::Ready(Ok(()));
        };
        let BufResult(done, mut buf) = ready!(op.as_mut().poll(cx));
        self.writing = None;
        if buf.capacity() <= WRITE_KEPT {
            buf.clear();
            self.wbuf = buf;
        }
        Poll::Ready(done)
    }
}

impl tokio::io::AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.watch.stop().is_some() {
                // The connection loop is ending the connection.
                return Poll::Pending;
            }
            if this.rpos < this.rbuf.len() {
                let (n, parse) = this.hand_over(&this.rbuf[this.rpos..], buf);
                this.rpos += n;
                return read_done(n, parse);
            }
            #[cfg(feature = "tls")]
            if let Transport::Tls(tls) = &*this.stream {
                // Zeroing all the room (8 KiB, most reads) would cost a
                // memset per read and keep every page of the crate's
                // buffer resident on an idle connection.
                let ready = match tls.plaintext_ready() {
                    Ok(ready) => ready,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                let dst = buf.initialize_unfilled_to(ready.min(buf.remaining()));
                match tls.read_buffered(dst) {
                    Some(Ok(n)) => {
                        let parse = this.watch.inspect(&dst[..n]);
                        buf.advance(parse);
                        return read_done(n, parse);
                    }
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => {}
                }
            }
            let read = match &mut this.reading {
                Some(read) => read,
                None => {
                    let read = this.start_read();
                    this.reading.insert(read)
                }
            };
            let BufResult(res, filled) = ready!(read.as_mut().poll(cx));
            this.reading = None;
            match res {
                Ok(n) if matches!(*this.stream, Transport::Tcp(_)) => {
                    this.busy = n > 0 && n == filled.capacity();
                    this.rbuf = filled;
                    this.rpos = 0;
                    if n == 0 {
                        // End of stream: a read that fills nothing.
                        return Poll::Ready(Ok(()));
                    }
                }
                // TLS: rustls has plaintext or an end now.
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// How a read of `read` bytes ends once the watch let `parse` of them
/// through. A read the watch withheld entirely is no end of stream (what an
/// empty read would say) but a stop: pending, and the connection loop,
/// which checks the watch as soon as this poll returns, ends the
/// connection.
fn read_done(read: usize, parse: usize) -> Poll<io::Result<()>> {
    if read > 0 && parse == 0 {
        Poll::Pending
    } else {
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // The batch before goes out first: what waits stays one batch.
        ready!(this.poll_writing(cx))?;
        this.watch.sent(buf);
        match &*this.stream {
            Transport::Tcp(_) => this.wbuf.extend_from_slice(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.write_buffered(buf)?,
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_writing(cx))?;
            if !this.has_output() {
                return Poll::Ready(Ok(()));
            }
            this.start_write();
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let this = self.get_mut();
        if !this.shutdown_sent {
            this.start_shutdown();
        }
        this.poll_writing(cx)
    }
}
