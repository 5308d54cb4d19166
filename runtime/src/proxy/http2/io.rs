//! The byte stream under the `h2` crate: compio's completion-based streams
//! behind tokio's poll-based `AsyncRead`/`AsyncWrite` (the only part of
//! tokio used; no tokio runtime runs), feeding every byte read from the
//! client to the [`FrameWatch`] first (and withholding what it stops at).
//!
//! compio's own compat layer ([`AsyncStream`]) keeps one read in flight
//! into its read buffer and batches writes in a bounded write buffer
//! (flushed once two thirds full); this file only bridges its
//! `futures-io` traits to tokio's, serves bytes already read while
//! sniffing the preface first, and feeds the watch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use compio::io::compat::AsyncStream;
use futures_util::{AsyncRead as _, AsyncWrite as _};
use tokio::io::ReadBuf;

use super::watch::FrameWatch;

/// A compio stream as tokio's `AsyncRead + AsyncWrite`, after `prefix`
/// (bytes already read from it).
pub(crate) struct H2Io<S> {
    prefix: Vec<u8>,
    prefix_pos: usize,
    inner: AsyncStream<S>,
    watch: std::rc::Rc<FrameWatch>,
}

/// Base capacity of the compat layer's read and write buffers: one frame
/// of the largest size we accept plus its header, so a read usually
/// brings whole frames.
const IO_BUFFER: usize = 16 * 1024 + 9;

impl<S> H2Io<S> {
    pub(crate) fn new(stream: S, prefix: Vec<u8>, watch: std::rc::Rc<FrameWatch>) -> Self {
        H2Io {
            prefix,
            prefix_pos: 0,
            inner: AsyncStream::with_capacity(IO_BUFFER, stream),
            watch,
        }
    }
}

impl<S: compio::io::AsyncRead + 'static> tokio::io::AsyncRead for H2Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.stop().is_some() {
            // The connection loop is ending the connection.
            return Poll::Pending;
        }
        if this.prefix_pos < this.prefix.len() {
            let rest = &this.prefix[this.prefix_pos..];
            let n = rest.len().min(buf.remaining());
            let parse = this.watch.inspect(&rest[..n]);
            buf.put_slice(&rest[..parse]);
            this.prefix_pos += n;
            if this.prefix_pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_pos = 0;
            }
            return read_done(n, parse);
        }
        let dst = buf.initialize_unfilled();
        match Pin::new(&mut this.inner).poll_read(cx, dst) {
            Poll::Ready(Ok(n)) => {
                let parse = this.watch.inspect(&dst[..n]);
                buf.advance(parse);
                read_done(n, parse)
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
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

impl<S: compio::io::AsyncWrite + 'static> tokio::io::AsyncWrite for H2Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// A TLS connection as a compio `AsyncRead + AsyncWrite`, for HTTP/2 over
/// TLS (ALPN `h2`). [`crate::tls::TlsStream`] reads into and writes from
/// owned `Vec`s through `&self` (the HTTP/1.1 pipeline is full duplex);
/// the compat layer under `h2` wants compio's generic-buffer traits.
/// Writes go to rustls straight from the compat layer's buffer; reads
/// copy plaintext once more (rustls → `pending` → the caller's buffer, a
/// `memcpy` of bytes that are in cache) because filling the caller's
/// uninitialised buffer directly would need `unsafe` here.
#[cfg(feature = "tls")]
pub(crate) struct TlsIo {
    tls: crate::tls::TlsStream,
    /// Plaintext read but not handed out yet (a read larger than the
    /// caller's buffer), from `pending_pos`.
    pending: Vec<u8>,
    pending_pos: usize,
}

#[cfg(feature = "tls")]
impl TlsIo {
    pub(crate) fn new(tls: crate::tls::TlsStream) -> Self {
        TlsIo {
            tls,
            pending: Vec::new(),
            pending_pos: 0,
        }
    }
}

#[cfg(feature = "tls")]
impl compio::io::AsyncRead for TlsIo {
    async fn read<B: compio::buf::IoBufMut>(&mut self, buf: B) -> compio::BufResult<usize, B> {
        if self.pending_pos == self.pending.len() {
            let mut spare = std::mem::take(&mut self.pending);
            spare.clear();
            spare.reserve(IO_BUFFER);
            let compio::BufResult(res, filled) = self.tls.read_some(spare).await;
            self.pending = filled;
            self.pending_pos = 0;
            if let Err(e) = res {
                return compio::BufResult(Err(e), buf);
            }
        }
        // `&[u8]`'s own reader copies into the caller's buffer.
        let mut src: &[u8] = &self.pending[self.pending_pos..];
        let compio::BufResult(res, buf) = compio::io::AsyncRead::read(&mut src, buf).await;
        if let Ok(n) = res {
            self.pending_pos += n;
        }
        compio::BufResult(res, buf)
    }
}

#[cfg(feature = "tls")]
impl compio::io::AsyncWrite for TlsIo {
    async fn write<T: compio::buf::IoBuf>(&mut self, buf: T) -> compio::BufResult<usize, T> {
        let n = buf.as_init().len();
        let res = self.tls.send(buf.as_init()).await;
        compio::BufResult(res.map(|()| n), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        // `write_all` sent everything already.
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.tls.shutdown().await
    }
}
