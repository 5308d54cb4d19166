//! Socket helpers for the pipeline: bounded reads with deadlines and the
//! body pump that moves one body from a source socket to a sink socket
//! through the sans-IO [`BodyReader`], re-framing it on the way.

use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;

use crate::http::{BodyReader, LAST_CHUNK, put_chunk_head};

/// Writes are batched up to this many bytes before a flush.
pub const WRITE_BATCH: usize = 64 * 1024;
/// Reads ask for at least this much room.
pub const READ_CHUNK: usize = 16 * 1024;

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
pub async fn read_more(
    stream: &TcpStream,
    mut buf: Vec<u8>,
    room: usize,
    deadline: Instant,
) -> (ReadOutcome, Vec<u8>) {
    if buf.capacity() - buf.len() < room {
        buf.reserve(room);
    }
    let mut s = stream;
    match compio::time::timeout_at(deadline, s.append(buf)).await {
        Ok(BufResult(Ok(0), buf)) => (ReadOutcome::Eof, buf),
        Ok(BufResult(Ok(n), buf)) => (ReadOutcome::Data(n), buf),
        Ok(BufResult(Err(_), buf)) => (ReadOutcome::Error, buf),
        Err(_) => (ReadOutcome::Timeout, Vec::new()),
    }
}

/// Writes all of `buf` and clears it (keeping its capacity).
pub async fn write_all(stream: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut s = stream;
    let BufResult(res, mut back) = s.write_all(std::mem::take(buf)).await;
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
}

/// One body in transit: source buffer with a read position, the decoder,
/// and whether the sink gets chunked coding.
pub struct Pump<'a> {
    pub src: &'a TcpStream,
    pub src_buf: &'a mut Vec<u8>,
    pub src_pos: &'a mut usize,
    pub reader: BodyReader,
    pub sink: &'a TcpStream,
    /// Bytes waiting for the sink (may already hold a head).
    pub out: &'a mut Vec<u8>,
    pub chunked_out: bool,
    pub max_bytes: u64,
    pub read_timeout: Duration,
    /// Capacity cap for `src_buf` when it must grow to read.
    pub read_room: usize,
}

impl Pump<'_> {
    /// Moves the whole body, flushing `out` (the sink has everything when
    /// this returns `Ok`). With chunked output, the last chunk is written
    /// only after the source body completed: a failed body is never
    /// completed upstream.
    pub async fn run(mut self) -> Result<u64, PumpError> {
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
                    write_all(self.sink, self.out)
                        .await
                        .map_err(|_| PumpError::SinkFailed)?;
                }
                if d.consumed == 0 {
                    break;
                }
            }
            if self.reader.is_done() {
                return self.finish(total).await;
            }
            if !self.out.is_empty() {
                write_all(self.sink, self.out)
                    .await
                    .map_err(|_| PumpError::SinkFailed)?;
            }
            // Everything buffered is consumed: reuse the buffer from the start.
            self.src_buf.clear();
            *self.src_pos = 0;
            let deadline = Instant::now() + self.read_timeout;
            let buf = std::mem::take(self.src_buf);
            let (outcome, buf) = read_more(self.src, buf, self.read_room, deadline).await;
            *self.src_buf = buf;
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

    async fn finish(self, total: u64) -> Result<u64, PumpError> {
        if self.chunked_out {
            self.out.extend_from_slice(LAST_CHUNK);
        }
        if !self.out.is_empty() {
            write_all(self.sink, self.out)
                .await
                .map_err(|_| PumpError::SinkFailed)?;
        }
        Ok(total)
    }
}
