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
use super::io::{ReadOutcome, Stream, read_more, write_all_within};
use super::upstream::{Exchange, proxy_request};
use crate::http::{
    HeaderBlock, LocalFields, LocalResponse, RequestHead, ResponseHead, Version,
    parse_request_head, write_local_response,
};
use crate::rt::Listener;
use crate::rt::time::coarse_now;

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
    /// A close-delimited answer was cut: the connection is reset, since the
    /// client would read a FIN as the end of a complete body.
    pub cut_until_close: bool,
}

impl<S: Stream> Client<S> {
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }
}

enum HeadOutcome {
    Ready,
    /// Nothing to answer: EOF, idle timeout, drain, read error.
    Closed,
    /// Answer with `error` and close; `head_request`: the head got as far
    /// as the HEAD method, so the answer has no content (RFC 9110 §9.3.2).
    Rejected {
        error: ProxyError,
        head_request: bool,
    },
}

/// Whether `buffered`, the start of a request head, is a HEAD request's
/// (after the empty lines RFC 9112 §2.2 lets a server skip).
fn starts_a_head_request(buffered: &[u8]) -> bool {
    let start = buffered
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buffered.len());
    buffered[start..].starts_with(b"HEAD ")
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve_connection<G: Gateway>(
    w: Rc<Worker<G>>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Rc<Listener>,
) {
    let _open = w.active.open(std::os::fd::AsRawFd::as_raw_fd(&stream));
    // The first request's head is due `header-timeout` after accept,
    // however long telling HTTP/2's preface from it took.
    let head_due = coarse_now() + w.limits.header_timeout;
    let _ = stream.set_nodelay(true);
    #[cfg(feature = "tls")]
    if let Some(tls) = &listener.tls {
        // Boxed: the TLS path's state stays out of the plain connection's
        // future.
        let tls = std::sync::Arc::clone(tls);
        Box::pin(serve_tls(Rc::clone(&w), stream, peer, tls, listener)).await;
        return;
    }
    #[cfg_attr(not(feature = "h2"), allow(unused_mut))]
    let mut client = Client {
        stream,
        peer,
        rbuf: Vec::new(),
        rpos: 0,
        cut_until_close: false,
    };
    // What the listener speaks decides the protocol: HTTP/2 with prior
    // knowledge starts with its preface, anything else is HTTP/1.1.
    #[cfg(feature = "h2")]
    if listener.config.protocols.h2c {
        // Boxed: neither future weighs on an HTTP/1.1 connection's task.
        let h1 = listener.config.protocols.h1;
        match Box::pin(sniff_h2c(&w, &mut client, h1, head_due)).await {
            Sniffed::Http1 => {}
            Sniffed::Closed => return,
            Sniffed::Http2 => {
                let Client { stream, rbuf, .. } = client;
                let io = super::http2::Transport::Tcp(stream);
                let h2 = super::http2::serve_h2(Rc::clone(&w), io, rbuf, peer, listener, false);
                Box::pin(h2).await;
                return;
            }
        }
    }
    #[cfg(not(feature = "h2"))]
    let _ = &listener;
    serve_h1(Rc::clone(&w), client, head_due).await;
}

/// The TLS handshake (bounded by the header timeout), then the protocol
/// ALPN chose.
#[cfg(feature = "tls")]
async fn serve_tls<G: Gateway>(
    w: Rc<Worker<G>>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: std::sync::Arc<crate::tls::TlsServer>,
    listener: Rc<Listener>,
) {
    let Ok(conn) = tls.connection() else {
        let _ = stream.close().await;
        return;
    };
    let stream = crate::tls::TlsStream::new(stream, conn);
    let deadline = Instant::now() + w.limits.header_timeout;
    if !tls_handshake(&w, &stream, deadline).await {
        if stream.sent_plain_http() {
            // As nginx: say what went wrong, in the client's protocol.
            let mut answer = Vec::with_capacity(256);
            write_local_response(
                &LocalResponse {
                    status: 400,
                    fields: LocalFields::Own {
                        content_type: Some("text/plain"),
                        location: None,
                    },
                    body: PLAIN_HTTP_TO_TLS,
                    close: true,
                    head_only: stream.sent_plain_head(),
                    keep_alive_10: false,
                },
                &mut answer,
            );
            let _ = crate::rt::time::write_paced(stream.tcp(), answer, w.limits.body_timeout).await;
        }
        let _ = Stream::close(stream).await;
        return;
    }
    #[cfg(feature = "h2")]
    if speaks_h2(stream.alpn_protocol().as_deref(), &listener) {
        let io = super::http2::Transport::Tls(stream);
        super::http2::serve_h2(w, io, Vec::new(), peer, listener, true).await;
        return;
    }
    let _ = &listener;
    let client = Client {
        stream,
        peer,
        rbuf: Vec::new(),
        rpos: 0,
        cut_until_close: false,
    };
    // The handshake had its own header-timeout (docs/spec.md): the head's
    // starts now.
    let head_due = coarse_now() + w.limits.header_timeout;
    serve_h1(w, client, head_due).await;
}

/// The body of the 400 to a plain HTTP request sent to a TLS listener.
#[cfg(feature = "tls")]
const PLAIN_HTTP_TO_TLS: &[u8] = b"The plain HTTP request was sent to an HTTPS port\n";

/// The TLS handshake, by `deadline`; `false`: the connection is to close.
/// A drain does not cut a handshake under way: the client connected before
/// the drain (during an upgrade, the old process accepted it) and is served
/// like any accepted connection. One that sent nothing gets the last call
/// of a plain connection waiting for its first request.
#[cfg(feature = "tls")]
async fn tls_handshake<G: Gateway>(
    w: &Worker<G>,
    stream: &crate::tls::TlsStream,
    deadline: Instant,
) -> bool {
    let handshake = pin!(stream.handshake(deadline));
    wait_opening(w, handshake, || stream.received_any())
        .await
        .is_some_and(|r| r.is_ok())
}

/// Whether a TLS connection speaks HTTP/2: ALPN chose `h2` (offered only
/// when the listener speaks it), or the client offered no ALPN to a
/// listener without `h1` — then it must speak HTTP/2 (whose handshake
/// checks the preface), as on a cleartext listener without `h1`. A client
/// without ALPN on a listener with `h1` speaks HTTP/1.1.
#[cfg(all(feature = "tls", feature = "h2"))]
fn speaks_h2(alpn: Option<&[u8]>, listener: &Listener) -> bool {
    match alpn {
        Some(protocol) => protocol == b"h2",
        None => !listener.config.protocols.h1,
    }
}

/// The HTTP/1.1 keep-alive loop over `stream`; the first request's head
/// is due by `head_due`.
async fn serve_h1<G: Gateway, S: Stream>(
    w: Rc<Worker<G>>,
    mut client: Client<S>,
    head_due: Instant,
) {
    let mut req = RequestHead::default();
    let mut first = Some(head_due);
    loop {
        match read_head(&w, &mut client, &mut req, first).await {
            HeadOutcome::Ready => {}
            HeadOutcome::Closed => break,
            HeadOutcome::Rejected {
                error: err,
                head_request,
            } => {
                // Answer and close: bytes after a rejected head are never parsed.
                let mut out = w.buffers.take();
                write_error(&mut out, err.status, head_request);
                let sent = write_all_within(&client.stream, &mut out, w.limits.body_timeout).await;
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
                close_after_answer(client, sent.is_ok()).await;
                return;
            }
        }
        first = None;
        req.client = Some(client.peer);
        let route = w.gateway.route(&req);
        super::before_steps(&mut req);
        let mut ctx = G::Ctx::default();
        let action = w.gateway.request(route, &mut req, &mut ctx);
        let action = super::max_forwards(&mut req, action);
        let (keep_alive, status, error) = match action {
            Action::Respond {
                status,
                body,
                content_type,
            } => {
                let fields =
                    local_response_steps(&w, route, status, (Some(content_type), None), &mut ctx);
                local_answer(&w, &mut client, &req, status, &body, &fields).await
            }
            Action::Redirect { location, status } => {
                let own = (None, Some(location.as_bytes()));
                let fields = local_response_steps(&w, route, status, own, &mut ctx);
                local_answer(&w, &mut client, &req, status, b"", &fields).await
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
                        // Delivered: an error answer the client took whole.
                        // An answer cut short (a stalled or failed write, an
                        // upstream that broke off) gains nothing from a
                        // lingering close.
                        let (status, delivered) = if answered {
                            (0, false)
                        } else {
                            let mut out = w.buffers.take();
                            write_error(&mut out, error.status, req.is_head());
                            let sent =
                                write_all_within(&client.stream, &mut out, w.limits.body_timeout)
                                    .await;
                            w.buffers.give(out);
                            (error.status, sent.is_ok())
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
                        if client.cut_until_close {
                            reset_close(client).await;
                        } else {
                            close_after_answer(client, delivered).await;
                        }
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
            let delivered = error.is_none_or(|e| e.kind != ErrorKind::ClientWrite);
            close_after_answer(client, delivered).await;
            return;
        }
        // Draining: the next request still gets its answer (with
        // `Connection: close`) if it comes within the last call.
        // Between requests, give back memory a big request made us take.
        if client.rpos == client.rbuf.len() {
            client.rbuf.clear();
            client.rpos = 0;
            if client.rbuf.capacity() > IDLE_READ_CAPACITY {
                client.rbuf = Vec::with_capacity(IDLE_READ_CAPACITY);
            }
        }
    }
    // Idle timeout, drain or the client's own close: over TLS the stream
    // ends with close_notify (RFC 8446 §6.1: each party MUST send one
    // before closing its write side), so the client can tell the end from
    // a cut. Bounded: a client that does not read cannot stall the close.
    if client.stream.is_tls() {
        let deadline = Instant::now() + CLOSE_WITHIN;
        let _ = crate::rt::time::within(deadline, client.stream.shutdown()).await;
    }
    let _ = client.stream.close().await;
}

/// How long a closing connection's last words (FIN, TLS close_notify) and
/// the lingering read after them may take.
const CLOSE_WITHIN: Duration = Duration::from_millis(500);

#[cfg(feature = "h2")]
enum Sniffed {
    Http1,
    Http2,
    Closed,
}

/// Tells HTTP/2 with prior knowledge from HTTP/1.1 by the first bytes:
/// reads until they are the whole preface (`Http2`) or differ from it
/// (`Http1`, the bytes stay in the read buffer). A listener without `h1`
/// hands everything to HTTP/2, whose handshake checks the preface. A
/// connection that has sent nothing when the worker drains gets the last
/// call, as on an HTTP/1.1-only listener.
#[cfg(feature = "h2")]
async fn sniff_h2c<G: Gateway>(
    w: &Worker<G>,
    c: &mut Client<TcpStream>,
    h1: bool,
    deadline: Instant,
) -> Sniffed {
    use super::http2::PREFACE;
    if !h1 {
        return Sniffed::Http2;
    }
    loop {
        let have = c.rbuf.len().min(PREFACE.len());
        if c.rbuf[..have] != PREFACE[..have] {
            return Sniffed::Http1;
        }
        if have == PREFACE.len() {
            return Sniffed::Http2;
        }
        let waiting = c.rbuf.is_empty();
        let buf = std::mem::take(&mut c.rbuf);
        let mut read = pin!(read_more(&c.stream, buf, IDLE_READ_CAPACITY, deadline));
        let (outcome, buf) = if waiting {
            // Nothing sent yet: a drain gives it the same last call as an
            // HTTP/1.1 connection waiting for its first request.
            match wait_request_start(w, read).await {
                Some(r) => r,
                None => return Sniffed::Closed,
            }
        } else {
            // Part of the preface arrived: a request is under way.
            read.as_mut().await
        };
        c.rbuf = buf;
        match outcome {
            ReadOutcome::Data(_) => {}
            ReadOutcome::Eof | ReadOutcome::Error | ReadOutcome::Timeout => return Sniffed::Closed,
        }
    }
}

/// Reads until a whole head is parsed into `req` (consumed from the buffer).
/// `first_due`: the connection's first request, whose head is due then; a
/// later one's head is due `header-timeout` after its first byte.
async fn read_head<G: Gateway, S: Stream>(
    w: &Worker<G>,
    c: &mut Client<S>,
    req: &mut RequestHead,
    first_due: Option<Instant>,
) -> HeadOutcome {
    let limits = w.limits.head_limits();
    let first = first_due.is_some();
    let mut head_deadline = first_due;
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
                        431 | 414 => ErrorKind::HeadTooLarge,
                        413 => ErrorKind::BodyTooLarge,
                        _ => ErrorKind::BadRequest(rej.why),
                    };
                    return HeadOutcome::Rejected {
                        error: ProxyError::with_status(kind, rej.status),
                        head_request: starts_a_head_request(c.buffered()),
                    };
                }
            }
            if head_deadline.is_none() {
                head_deadline = Some(coarse_now() + w.limits.header_timeout);
            }
        }
        // Keep only the unconsumed bytes, at the front.
        if c.rpos > 0 {
            c.rbuf.drain(..c.rpos);
            c.rpos = 0;
        }
        let partial = !c.rbuf.is_empty();
        // Known before the read: a read that times out gives no bytes back.
        let head_request = starts_a_head_request(&c.rbuf);
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
                let deadline = head_deadline.unwrap_or_else(|| coarse_now() + timeout);
                // Over TLS, a next head in a record not finished yet is no
                // plaintext byte: hold it to header-timeout all the same.
                if !first {
                    c.stream
                        .limit_unfinished_records(Some(w.limits.header_timeout));
                }
                let read = pin!(read_more(&c.stream, buf, room, deadline));
                let read = wait_request_start(w, read).await;
                c.stream.limit_unfinished_records(None);
                match read {
                    Some(r) => r,
                    None => return HeadOutcome::Closed,
                }
            }
        };
        c.rbuf = buf;
        match outcome {
            // The head deadline starts at the first parse that needs more.
            ReadOutcome::Data(_) => {}
            ReadOutcome::Eof | ReadOutcome::Error => return HeadOutcome::Closed,
            ReadOutcome::Timeout if partial => {
                return HeadOutcome::Rejected {
                    error: ProxyError::new(ErrorKind::ClientTimeout),
                    head_request,
                };
            }
            ReadOutcome::Timeout => return HeadOutcome::Closed,
        }
    }
}

/// How long a connection waiting for a request start still gets once the
/// worker drains. A client under load sends its next request within
/// milliseconds of the previous answer (or of connecting): it arrives in
/// this window and is answered with `Connection: close`, instead of
/// meeting a closed socket. A connection quiet for the whole window is
/// closed; a request sent at that very moment is the race every server
/// has when it closes an idle keep-alive connection (clients retry
/// idempotent requests on it), narrowed to connections idle this long.
const DRAIN_LAST_CALL: Duration = Duration::from_secs(1);

/// Waits for the start of a request: until `read` completes while the
/// worker serves; once it drains, for the last call at most. `None`: the
/// connection is to close quietly.
pub(crate) async fn wait_request_start<G: Gateway, F: Future>(
    w: &Worker<G>,
    mut read: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    if !w.drain.is_draining() {
        let drained = pin!(w.drain.wait());
        match select(read.as_mut(), drained).await {
            Either::Left((r, _)) => return Some(r),
            Either::Right(_) => {}
        }
    }
    Box::pin(last_call(read)).await
}

/// Waits for a connection's opening (a TLS handshake, an HTTP/2 preface),
/// which the connection's own deadline bounds. A drain does not cut one
/// under way (`started`: the client sent some of it), as the client
/// connected before the drain; one that sent nothing gets the last call.
/// `None`: the connection is to close quietly.
#[cfg(any(feature = "tls", feature = "h2"))]
pub(crate) async fn wait_opening<G: Gateway, F: Future>(
    w: &Worker<G>,
    mut opening: std::pin::Pin<&mut F>,
    started: impl Fn() -> bool,
) -> Option<F::Output> {
    match wait_request_start(w, opening.as_mut()).await {
        Some(done) => Some(done),
        None if started() => Some(opening.await),
        None => None,
    }
}

/// Waits at most [`DRAIN_LAST_CALL`] for `read`; `None` when it did not
/// complete (the read is dropped: nothing arrived). Callers box it: it
/// only runs once per connection at drain, and inline its timer would
/// grow every idle connection's task.
async fn last_call<F: Future>(read: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let window = pin!(crate::rt::time::sleep(DRAIN_LAST_CALL));
    match select(read, window).await {
        Either::Left((r, _)) => Some(r),
        Either::Right(_) => None,
    }
}

/// Runs the route's response steps for a response the gateway writes
/// itself (`respond`, `redirect`) over its own fields (`content-type`,
/// `location`, `date`), so `response-headers` set, add and remove there as
/// on proxied responses; returns the answer's fields.
pub(super) fn local_response_steps<G: Gateway>(
    w: &Worker<G>,
    route: G::Route,
    status: u16,
    (content_type, location): (Option<&str>, Option<&[u8]>),
    ctx: &mut G::Ctx,
) -> HeaderBlock {
    let mut resp = ResponseHead {
        status,
        ..ResponseHead::default()
    };
    let mut own = 0;
    crate::http::own_local_fields(content_type, location, |name, value| {
        resp.headers.append(name, value);
        own += 1;
    });
    w.gateway.response(route, &mut resp, ctx);
    // A step's `add` of one of them replaces it rather than adding a
    // second (docs/spec.md 12.2); `set` and `remove` act as on any answer.
    resp.headers.give_way(own);
    resp.headers
}

/// Answers locally with `fields` (from [`local_response_steps`]). The
/// request body, if any, is not read: the connection closes after the
/// answer so its bytes are never parsed as a request.
async fn local_answer<G: Gateway, S: Stream>(
    w: &Worker<G>,
    c: &mut Client<S>,
    req: &RequestHead,
    status: u16,
    body: &[u8],
    fields: &HeaderBlock,
) -> (bool, u16, Option<ProxyError>) {
    let keep_alive = req.keep_alive() && !req.framing().has_body() && !w.drain.is_draining();
    let mut out = w.buffers.take();
    write_local_response(
        &LocalResponse {
            status,
            fields: LocalFields::Stepped(fields),
            body,
            close: !keep_alive,
            head_only: req.is_head(),
            keep_alive_10: keep_alive && req.version() == Version::Http10,
        },
        &mut out,
    );
    // A client that takes nothing of its answer for body-timeout (it
    // pipelines and never reads) is given up on, as on proxied answers.
    let ok = write_all_within(&c.stream, &mut out, w.limits.body_timeout)
        .await
        .is_ok();
    w.buffers.give(out);
    if ok {
        (keep_alive, status, None)
    } else {
        (false, status, Some(ProxyError::new(ErrorKind::ClientWrite)))
    }
}

/// A short plain-text error answer with `connection: close`; its head only
/// for a HEAD request.
pub(crate) fn write_error(out: &mut Vec<u8>, status: u16, head_only: bool) {
    out.clear();
    write_local_response(
        &LocalResponse {
            status,
            fields: LocalFields::Own {
                content_type: Some("text/plain"),
                location: None,
            },
            body: error_body(status),
            close: true,
            head_only,
            keep_alive_10: false,
        },
        out,
    );
}

/// The body of the runtime's short error answers (HTTP/1.1 and HTTP/2).
pub(crate) fn error_body(status: u16) -> &'static [u8] {
    match status {
        400 => b"bad request\n",
        408 => b"request timeout\n",
        413 => b"content too large\n",
        414 => b"uri too long\n",
        417 => b"expectation failed\n",
        431 => b"request header fields too large\n",
        500 => b"internal error\n",
        501 => b"not implemented\n",
        502 => b"bad gateway\n",
        503 => b"service unavailable\n",
        504 => b"gateway timeout\n",
        505 => b"http version not supported\n",
        _ => b"error\n",
    }
}

/// Closes with a reset: the client gets no FIN it could take for the end
/// of a close-delimited body that was cut.
async fn reset_close<S: Stream>(c: Client<S>) {
    c.stream.reset_on_close();
    let _ = c.stream.close().await;
}

/// Closes after an answer: with a lingering close when the client took
/// the answer, at once when it did not (a write failed or stalled for
/// body-timeout): a client that does not read gains nothing from it.
async fn close_after_answer<S: Stream>(c: Client<S>, delivered: bool) {
    if delivered {
        linger_close(c).await;
    } else {
        let _ = c.stream.close().await;
    }
}

/// How long a lingering close may discard what the client still sends:
/// in all, and from one read to the next (nginx: `lingering_time` 30 s,
/// `lingering_timeout` 5 s), and how many bytes at most. A client that
/// sends its whole body before it reads (many simple clients do) keeps
/// sending after an early answer (413 over `max-body-bytes`); a close with
/// its bytes unread is a reset, and most TCP stacks (Windows, BSDs) drop
/// the unread answer on a reset. A well-behaved client reads the answer,
/// sees the FIN and closes at once, so this is spent only on the others.
const LINGER_TOTAL: Duration = Duration::from_secs(5);
const LINGER_GAP: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 8 * 1024 * 1024;
/// Read size while discarding (16 KiB: a few reads per window, not one
/// per KiB).
const LINGER_READ: usize = 16 * 1024;

/// Closes after sending FIN and discarding what the client still sends for
/// a while, so an unread request body does not turn the close into a
/// reset that would destroy the answer in flight (like nginx's
/// lingering_close). Bounded in time ([`LINGER_TOTAL`], [`LINGER_GAP`])
/// and bytes ([`LINGER_BYTES`]).
pub(crate) async fn linger_close<S: Stream>(c: Client<S>) {
    let Client {
        stream, mut rbuf, ..
    } = c;
    let start = Instant::now();
    // Bounded: over TLS this writes close_notify, which a client that
    // stopped reading would never take.
    let _ = crate::rt::time::within(start + CLOSE_WITHIN, stream.shutdown()).await;
    let mut discarded = 0usize;
    rbuf.clear();
    while discarded < LINGER_BYTES {
        let deadline = (Instant::now() + LINGER_GAP).min(start + LINGER_TOTAL);
        let (outcome, mut buf) =
            read_more(&stream, std::mem::take(&mut rbuf), LINGER_READ, deadline).await;
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
