//! One client connection: the keep-alive loop, head reading with
//! timeouts, local answers, errors and the lingering close.

use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::net::TcpStream;
use futures_util::future::{Either, select};

use super::Worker;
use super::error::{ErrorKind, ProxyError};
use super::gateway::{Action, Gateway, RequestLog};
use super::io::{ReadOutcome, Stream, read_more, write_all};
use super::upstream::{Exchange, proxy_request};
use crate::http::{
    HeaderBlock, LocalResponse, RequestHead, ResponseHead, Version, parse_request_head,
    write_local_response,
};
use crate::rt::Listener;

/// Initial (and idle) capacity of a connection's read buffer. An idle
/// keep-alive connection keeps one read posted, and so this buffer: small
/// enough that ten thousand idle clients cost little, large enough for most
/// request heads in one read.
const IDLE_READ_CAPACITY: usize = 1024;

/// Room added when a head did not fit: large heads grow fast.
const HEAD_READ_ROOM: usize = 4096;

/// The client side of a connection: the socket and its read buffer.
/// `rbuf[rpos..]` holds bytes received but not consumed yet (the rest of
/// a body, or pipelined requests).
pub(crate) struct Client<S: Stream> {
    pub stream: S,
    pub peer: SocketAddr,
    pub rbuf: Vec<u8>,
    pub rpos: usize,
}

impl<S: Stream> Client<S> {
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }
}

struct ActiveGuard<'a>(&'a std::cell::Cell<usize>);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

enum HeadOutcome {
    Ready,
    /// Nothing to answer: EOF, idle timeout, drain, read error.
    Closed,
    Rejected(ProxyError),
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve_connection<G: Gateway>(
    w: Rc<Worker<G>>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Rc<Listener>,
) {
    w.active.set(w.active.get() + 1);
    let _guard = ActiveGuard(&w.active);
    let _ = stream.set_nodelay(true);
    #[cfg(feature = "tls")]
    if let Some(tls) = &listener.tls {
        // Boxed: the TLS path's state stays out of the plain connection's
        // future.
        Box::pin(serve_tls(
            Rc::clone(&w),
            stream,
            peer,
            std::sync::Arc::clone(tls),
        ))
        .await;
        return;
    }
    let _ = &listener;
    serve_h1(Rc::clone(&w), stream, peer).await;
}

/// The TLS handshake (bounded by the header timeout), then the protocol
/// ALPN chose.
#[cfg(feature = "tls")]
async fn serve_tls<G: Gateway>(
    w: Rc<Worker<G>>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: std::sync::Arc<crate::tls::TlsServer>,
) {
    let Ok(conn) = tls.connection() else {
        let _ = stream.close().await;
        return;
    };
    let stream = crate::tls::TlsStream::new(stream, conn);
    let deadline = Instant::now() + w.limits.header_timeout;
    let done = {
        let handshake = pin!(stream.handshake(deadline));
        let drained = pin!(w.drain.wait());
        match select(handshake, drained).await {
            Either::Left((r, _)) => r.is_ok(),
            Either::Right(_) => false,
        }
    };
    if !done {
        let _ = Stream::close(stream).await;
        return;
    }
    match stream.alpn_protocol().as_deref() {
        Some(b"h2") => {
            // ALPN h2: crate::proxy::h2::serve(w, stream, peer) once HTTP/2
            // lands (issue #5, part B). Until then the connection closes.
            let _ = Stream::shutdown(&stream).await;
            let _ = Stream::close(stream).await;
        }
        // `http/1.1`, or no ALPN at all.
        _ => serve_h1(w, stream, peer).await,
    }
}

/// The HTTP/1.1 keep-alive loop over `stream`.
async fn serve_h1<G: Gateway, S: Stream>(w: Rc<Worker<G>>, stream: S, peer: SocketAddr) {
    let mut client = Client {
        stream,
        peer,
        rbuf: Vec::new(),
        rpos: 0,
    };
    let mut req = RequestHead::default();
    let mut first = true;
    loop {
        match read_head(&w, &mut client, &mut req, first).await {
            HeadOutcome::Ready => {}
            HeadOutcome::Closed => break,
            HeadOutcome::Rejected(err) => {
                // Answer and close: bytes after a rejected head are never parsed.
                let mut out = w.buffers.take();
                write_error(&mut out, err.status, Version::Http11);
                let _ = write_all(&client.stream, &mut out).await;
                w.buffers.give(out);
                let mut ctx = G::Ctx::default();
                w.gateway.logging(
                    None,
                    &RequestLog {
                        status: err.status,
                        error: Some(&err),
                    },
                    &mut ctx,
                );
                linger_close(client).await;
                return;
            }
        }
        first = false;
        req.client = Some(client.peer);
        let route = w.gateway.route(&req);
        let mut ctx = G::Ctx::default();
        let action = w.gateway.request(route, &mut req, &mut ctx);
        let (keep_alive, status, error) = match action {
            Action::Respond {
                status,
                body,
                content_type,
            } => {
                let extra = local_response_steps(&w, route, status, &mut ctx);
                local_answer(
                    &w,
                    &mut client,
                    &req,
                    status,
                    &body,
                    Some(content_type),
                    None,
                    extra.as_ref(),
                )
                .await
            }
            Action::Redirect { location, status } => {
                let extra = local_response_steps(&w, route, status, &mut ctx);
                local_answer(
                    &w,
                    &mut client,
                    &req,
                    status,
                    b"",
                    None,
                    Some(location.as_bytes()),
                    extra.as_ref(),
                )
                .await
            }
            Action::Proxy {
                upstream,
                strip_prefix,
            } => {
                // Boxed: the exchange's state is large and only lives while a
                // request is proxied, so idle connections stay small.
                match Box::pin(proxy_request(
                    &w,
                    &mut client,
                    &mut req,
                    route,
                    &mut ctx,
                    upstream,
                    strip_prefix,
                ))
                .await
                {
                    Exchange::Done { keep_alive, status } => (keep_alive, status, None),
                    Exchange::Failed { error, answered } => {
                        let status = if answered {
                            0
                        } else {
                            let mut out = w.buffers.take();
                            write_error(&mut out, error.status, req.version());
                            let _ = write_all(&client.stream, &mut out).await;
                            w.buffers.give(out);
                            error.status
                        };
                        w.gateway.logging(
                            Some(route),
                            &RequestLog {
                                status,
                                error: Some(&error),
                            },
                            &mut ctx,
                        );
                        // The request body may be unread: never parse on.
                        linger_close(client).await;
                        return;
                    }
                }
            }
        };
        w.gateway.logging(
            Some(route),
            &RequestLog {
                status,
                error: error.as_ref(),
            },
            &mut ctx,
        );
        if !keep_alive {
            linger_close(client).await;
            return;
        }
        if w.drain.is_draining() {
            break;
        }
        // Between requests, give back memory a big request made us take.
        if client.rpos == client.rbuf.len() {
            client.rbuf.clear();
            client.rpos = 0;
            if client.rbuf.capacity() > IDLE_READ_CAPACITY {
                client.rbuf = Vec::with_capacity(IDLE_READ_CAPACITY);
            }
        }
    }
    let _ = client.stream.close().await;
}

/// Reads until a whole head is parsed into `req` (consumed from the buffer).
async fn read_head<G: Gateway, S: Stream>(
    w: &Worker<G>,
    c: &mut Client<S>,
    req: &mut RequestHead,
    first: bool,
) -> HeadOutcome {
    let limits = w.limits.head_limits();
    let mut head_deadline = if first {
        Some(Instant::now() + w.limits.header_timeout)
    } else {
        None
    };
    loop {
        if c.rpos < c.rbuf.len() {
            match parse_request_head(c.buffered(), &limits, req) {
                Ok(Some(n)) => {
                    c.rpos += n;
                    return HeadOutcome::Ready;
                }
                Ok(None) => {}
                Err(rej) => {
                    let kind = match rej.status {
                        431 => ErrorKind::HeadTooLarge,
                        413 => ErrorKind::BodyTooLarge,
                        _ => ErrorKind::BadRequest(rej.why),
                    };
                    return HeadOutcome::Rejected(ProxyError::with_status(kind, rej.status));
                }
            }
            if head_deadline.is_none() {
                head_deadline = Some(Instant::now() + w.limits.header_timeout);
            }
        }
        // Keep only the unconsumed bytes, at the front.
        if c.rpos > 0 {
            c.rbuf.drain(..c.rpos);
            c.rpos = 0;
        }
        let partial = !c.rbuf.is_empty();
        let room = if partial {
            HEAD_READ_ROOM
        } else {
            IDLE_READ_CAPACITY
        };
        let buf = std::mem::take(&mut c.rbuf);
        let (outcome, buf) = match head_deadline {
            Some(deadline) if partial || !first => read_more(&c.stream, buf, room, deadline).await,
            _ => {
                // Waiting for a request to start: idle, so drain may end it.
                let timeout = if first {
                    w.limits.header_timeout
                } else {
                    w.limits.idle_timeout
                };
                let deadline = head_deadline.unwrap_or_else(|| Instant::now() + timeout);
                let read = pin!(read_more(&c.stream, buf, room, deadline));
                let drained = pin!(w.drain.wait());
                match select(read, drained).await {
                    Either::Left((r, _)) => r,
                    Either::Right(_) => return HeadOutcome::Closed,
                }
            }
        };
        c.rbuf = buf;
        match outcome {
            // The head deadline starts at the first parse that needs more.
            ReadOutcome::Data(_) => {}
            ReadOutcome::Eof | ReadOutcome::Error => return HeadOutcome::Closed,
            ReadOutcome::Timeout if partial => {
                return HeadOutcome::Rejected(ProxyError::new(ErrorKind::ClientTimeout));
            }
            ReadOutcome::Timeout => return HeadOutcome::Closed,
        }
    }
}

/// Answers locally. The request body, if any, is not read: the connection
/// closes after the answer so its bytes are never parsed as a request.
#[allow(clippy::too_many_arguments)]
/// Runs the route's response steps for a response the gateway writes
/// itself (`respond`, `redirect`), so `response-headers` apply there as on
/// proxied responses. `None` when the steps set nothing (no allocation).
fn local_response_steps<G: Gateway>(
    w: &Worker<G>,
    route: G::Route,
    status: u16,
    ctx: &mut G::Ctx,
) -> Option<HeaderBlock> {
    let mut resp = ResponseHead {
        status,
        ..ResponseHead::default()
    };
    w.gateway.response(route, &mut resp, ctx);
    (!resp.headers.is_empty()).then_some(resp.headers)
}

#[allow(clippy::too_many_arguments)]
async fn local_answer<G: Gateway, S: Stream>(
    w: &Worker<G>,
    c: &mut Client<S>,
    req: &RequestHead,
    status: u16,
    body: &[u8],
    content_type: Option<&str>,
    location: Option<&[u8]>,
    extra: Option<&HeaderBlock>,
) -> (bool, u16, Option<ProxyError>) {
    let keep_alive = req.keep_alive() && !req.framing().has_body() && !w.drain.is_draining();
    let mut out = w.buffers.take();
    write_local_response(
        &LocalResponse {
            status,
            content_type,
            location,
            body,
            close: !keep_alive,
            head_only: req.is_head(),
            keep_alive_10: keep_alive && req.version() == Version::Http10,
            extra,
        },
        &mut out,
    );
    let ok = write_all(&c.stream, &mut out).await.is_ok();
    w.buffers.give(out);
    if ok {
        (keep_alive, status, None)
    } else {
        (false, status, Some(ProxyError::new(ErrorKind::ClientWrite)))
    }
}

/// A short plain-text error answer with `connection: close`.
pub(crate) fn write_error(out: &mut Vec<u8>, status: u16, _version: Version) {
    out.clear();
    let body: &[u8] = match status {
        400 => b"bad request\n",
        408 => b"request timeout\n",
        413 => b"content too large\n",
        417 => b"expectation failed\n",
        431 => b"request header fields too large\n",
        500 => b"internal error\n",
        501 => b"not implemented\n",
        502 => b"bad gateway\n",
        503 => b"service unavailable\n",
        504 => b"gateway timeout\n",
        505 => b"http version not supported\n",
        _ => b"error\n",
    };
    write_local_response(
        &LocalResponse {
            status,
            content_type: Some("text/plain"),
            location: None,
            body,
            close: true,
            head_only: false,
            keep_alive_10: false,
            extra: None,
        },
        out,
    );
}

/// Closes after sending FIN and discarding what the client still sends for
/// a short while, so an unread request body does not turn the close into a
/// reset that would destroy the answer in flight (like nginx's
/// lingering_close). Bounded in time and bytes.
pub(crate) async fn linger_close<S: Stream>(c: Client<S>) {
    let Client {
        stream, mut rbuf, ..
    } = c;
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut discarded = 0usize;
    rbuf.clear();
    while discarded < 256 * 1024 {
        let (outcome, mut buf) = read_more(
            &stream,
            std::mem::take(&mut rbuf),
            IDLE_READ_CAPACITY,
            deadline,
        )
        .await;
        match outcome {
            ReadOutcome::Data(n) => {
                discarded += n;
                buf.clear();
                rbuf = buf;
            }
            _ => break,
        }
    }
    let _ = stream.close().await;
}
