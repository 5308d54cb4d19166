//! One HTTP/2 stream proxied to an HTTP/1.1 upstream over the worker's
//! pool: the h2 counterpart of `proxy::upstream`'s exchange, reusing its
//! tries ([`Tries`]: server choice, connect failover, the retry policy and
//! budget) and its response-head reader.
//!
//! Bodies stream both ways and are never buffered whole: the request body
//! goes up DATA frame by DATA frame, its flow-control window released only
//! once the bytes are written upstream; the response body comes down in
//! 16 KiB reads, each read only after the client's window took the last
//! one (`max_send_buffer_size` bounds what waits per stream). A client
//! that stops reading (zero window) gets the stream reset after
//! `body_timeout`; one that resets its stream ends the exchange and the
//! upstream connection is closed, not pooled.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::{Either, select};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};

use super::translate::{response_head, trailers_fault};
use crate::http::{
    BodyFraming, BodyReader, ForwardInfo, LAST_CHUNK, RequestHead, ResponseHead, add_missing_date,
    put_chunk_head, write_forward_request,
};
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::proxy::gateway::Gateway;
use crate::proxy::io::{DuplexClock, READ_CHUNK, ReadOutcome, read_more, write_all_within};
use crate::proxy::upstream::{
    HeadClock, HeadFail, HeadRead, Interims, Miss, RequestId, Tries, Try, head_write_failed,
    log_tls_failure, read_response_head, replayable, upload_goes_on,
};
use crate::proxy::{UpstreamStream, Worker};

/// How a proxied stream ended.
pub(crate) enum Outcome {
    /// The response was relayed completely.
    Done { status: u16 },
    /// It failed; `answered`: the response head was already sent (or the
    /// stream is gone), so no error answer is possible.
    Failed { error: ProxyError, answered: bool },
}

fn failed(kind: ErrorKind, answered: bool) -> Outcome {
    Outcome::Failed {
        error: ProxyError::new(kind),
        answered,
    }
}

enum Attempt {
    Done {
        reusable: bool,
        status: u16,
    },
    /// No complete response was relayed.
    Missed(Miss),
}

/// Why moving a body stopped early.
enum BodyError {
    /// The client's body: it reset the stream or broke its framing.
    ClientGone,
    /// The request turned out malformed (why): a trailer field the head
    /// would be refused for, DATA past its content-length.
    Malformed(&'static str),
    ClientTimeout,
    TooLarge,
    /// The client did not open its window within `body_timeout`.
    ClientStalled,
    UpstreamWrite,
    UpstreamClosed,
    UpstreamTimeout,
    UpstreamFraming(&'static str),
}

/// Proxies one stream's request to `upstream` and relays the answer.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn proxy_stream<G: Gateway>(
    w: &Worker<G>,
    req: &mut RequestHead,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    route: G::Route,
    ctx: &mut G::Ctx,
    upstream: usize,
    strip_prefix: Option<&'static str>,
    peer: SocketAddr,
    proto: &'static str,
) -> Outcome {
    let Some(set) = w.upstreams.get(upstream) else {
        return failed(ErrorKind::Internal("upstream index out of range"), false);
    };
    // The balancer, connect failover, the keep-alive replay and the retry
    // policy are HTTP/1.1's (`Tries`): a bodiless idempotent stream is
    // retried on what `retry` lists, within its attempts, deadline and
    // budget; one with a body is not, once sent (its DATA frames are
    // streamed up, never kept).
    let key = set.hash_key(req, peer);
    let id = RequestId::of(w, req);
    let mut tries = Tries::new(set, replayable(req));
    loop {
        let Try {
            ep,
            conn,
            reused,
            now,
            timeouts,
            total,
        } = match unless_reset(&RefCell::new(&mut *respond), tries.connect(key)).await {
            Some(Ok(t)) => t,
            Some(Err(error)) => {
                return Outcome::Failed {
                    error,
                    answered: false,
                };
            }
            // The connect (or its failover) is dropped where it stands: no
            // socket left half-open until connect-timeout, nothing sent.
            None => return failed(ErrorKind::ClientClosed, true),
        };
        let target = Target {
            up: &conn,
            server: ep.addr,
            strip_prefix,
            peer,
            proto,
            now,
            response_timeout: timeouts.response,
            total,
            retry_statuses: tries.retry_statuses(),
            id: &id,
        };
        // Dropped when the try ends, or with the stream if it is cancelled.
        let in_flight = ep.begin(tries.is_retry());
        let result = attempt(w, req, body, respond, route, ctx, &target).await;
        drop(in_flight);
        match result {
            Attempt::Done { reusable, status } => {
                tries.done(&ep, conn, status, reusable && !w.drain.is_draining());
                return Outcome::Done { status };
            }
            Attempt::Missed(miss) => {
                log_tls_failure(&ep, &conn);
                if let Some((error, answered)) = tries.missed(&ep, reused, miss) {
                    return Outcome::Failed { error, answered };
                }
            }
        }
    }
}

/// Runs `phase` unless the client resets the stream first: then `phase`
/// is dropped where it stands and the answer is `None`. Until the response
/// head is sent, nothing else wakes a stream's task when its client resets
/// it, so every phase before it (the connect and its failover, the request
/// going up, the wait for the response head) runs under this.
///
/// `respond` is shared with the phase, which may send interim answers on
/// it ([`StreamInterims`]): each borrows it only inside a poll.
async fn unless_reset<F: Future>(
    respond: &RefCell<&mut SendResponse<Bytes>>,
    phase: F,
) -> Option<F::Output> {
    let phase = pin!(phase);
    let reset = pin!(poll_fn(|cx| respond.borrow_mut().poll_reset(cx)));
    match select(phase, reset).await {
        Either::Left((done, _)) => Some(done),
        Either::Right(_) => None,
    }
}

/// Interim answers to an HTTP/2 client: informational HEADERS on its
/// stream (see [`Interims`]).
struct StreamInterims<'a, 'r> {
    respond: &'a RefCell<&'r mut SendResponse<Bytes>>,
}

impl Interims for StreamInterims<'_, '_> {
    async fn relay(&mut self, head: &ResponseHead) {
        let _ = self
            .respond
            .borrow_mut()
            .send_informational(response_head(head, false));
    }
}

struct Target<'a> {
    up: &'a UpstreamStream,
    /// The server `up` is connected to: the request's `host` if header
    /// steps removed the one translation gave.
    server: SocketAddr,
    strip_prefix: Option<&'static str>,
    peer: SocketAddr,
    proto: &'static str,
    now: Instant,
    /// The upstream's response timeout (head, and pauses in the body).
    response_timeout: Duration,
    /// `retry total`'s deadline ([`HeadClock`]).
    total: Option<Instant>,
    /// Statuses set aside for a retry instead of relayed (`Tries`).
    retry_statuses: &'a [u16],
    /// The request's `x-request-id`, the same on every try.
    id: &'a RequestId,
}

async fn attempt<G: Gateway>(
    w: &Worker<G>,
    req: &mut RequestHead,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    route: G::Route,
    ctx: &mut G::Ctx,
    t: &Target<'_>,
) -> Attempt {
    if req.expect_continue() {
        // As for HTTP/1.1: a client that asked waits for `100 Continue`
        // before its body; it goes once the upstream connection is ready.
        // (Only requests with a body ask, and those are tried once.)
        let mut cont = http::Response::new(());
        *cont.status_mut() = http::StatusCode::CONTINUE;
        let _ = respond.send_informational(cont);
    }
    let mut ubuf = w.buffers.take();
    let mut resp = ResponseHead::default();
    // Until the response head: the request goes up while we watch for the
    // client resetting the stream (then the upstream is dropped at once),
    // and interim answers go out as they come.
    let respond_cell = RefCell::new(&mut *respond);
    let mut interims = StreamInterims {
        respond: &respond_cell,
    };
    let forward = forward_request(w, req, body, &mut ubuf, &mut resp, t, &mut interims);
    let head = unless_reset(&respond_cell, forward)
        .await
        .unwrap_or(Err(Attempt::Missed(Miss::failed(
            ErrorKind::ClientClosed,
            true,
        ))));
    let (upos, mut body_unfinished, mut upload) = match head {
        Ok(Forwarded::Whole(upos)) => (upos, false, None),
        Ok(Forwarded::Early(upos, upload)) => (upos, true, upload_goes_on(&resp).then_some(upload)),
        Err(a) => {
            w.buffers.give(ubuf);
            return a;
        }
    };
    if t.retry_statuses.contains(&resp.status()) && !body_unfinished {
        w.buffers.give(ubuf);
        return Attempt::Missed(Miss::RetryStatus(resp.status()));
    }

    // Before the response steps, which may replace or remove it.
    add_missing_date(&mut resp);
    w.gateway.response(route, &mut resp, ctx);
    let is_head = req.is_head();
    let status = resp.status();
    let framing = resp.framing();
    let has_body = !is_head && framing.has_body();
    if has_body && let Some(why) = framing_error(framing, &ubuf[upos..]) {
        // The body is broken in the bytes that came with the head: nothing
        // went to the client yet, so it gets a 502, as on HTTP/1.1 (whose
        // head waits for those bytes too). Later bytes can only cut it.
        w.buffers.give(ubuf);
        return Attempt::Missed(Miss::failed(ErrorKind::UpstreamProtocol(why), false));
    }
    let mut send = match respond.send_response(response_head(&resp, is_head), !has_body) {
        Ok(s) => s,
        Err(_) => {
            w.buffers.give(ubuf);
            return Attempt::Missed(Miss::failed(ErrorKind::ClientClosed, true));
        }
    };
    let clock = DuplexClock::uploading();
    let duplex = upload.is_some().then_some(&clock);
    let relay = async {
        if has_body {
            relay_response(w, t, &mut ubuf, upos, framing, &mut send, duplex).await
        } else {
            Ok(upos < ubuf.len())
        }
    };
    let relayed = match upload.take() {
        None => relay.await,
        Some(upload) => {
            let (relayed, uploaded) = clock
                .relay_beside_upload(
                    relay,
                    upload,
                    t.response_timeout,
                    BodyError::UpstreamTimeout,
                    |e| e,
                )
                .await;
            body_unfinished = !uploaded;
            relayed
        }
    };
    w.buffers.give(ubuf);
    match relayed {
        Ok(leftover) => Attempt::Done {
            reusable: resp.keep_alive() && !leftover && !body_unfinished,
            status,
        },
        Err(e) => {
            let reason = match e {
                BodyError::ClientStalled => Reason::CANCEL,
                BodyError::Malformed(_) => Reason::PROTOCOL_ERROR,
                _ => Reason::INTERNAL_ERROR,
            };
            send.send_reset(reason);
            let kind = match e {
                BodyError::ClientGone => ErrorKind::ClientClosed,
                BodyError::Malformed(why) => ErrorKind::BadRequestBody(why),
                BodyError::ClientStalled | BodyError::ClientTimeout => ErrorKind::ClientTimeout,
                BodyError::UpstreamTimeout => ErrorKind::UpstreamTimeout,
                BodyError::UpstreamFraming(why) => ErrorKind::UpstreamProtocol(why),
                BodyError::TooLarge | BodyError::UpstreamWrite | BodyError::UpstreamClosed => {
                    ErrorKind::UpstreamClosed
                }
            };
            Attempt::Missed(Miss::failed(kind, true))
        }
    }
}

/// A request body on its way up (the buffer that held the request head is
/// given back to the pool once it is sent).
type Upload<'a> = Pin<Box<dyn Future<Output = Result<(), BodyError>> + 'a>>;

/// What [`forward_request`] got: where the response body starts in `ubuf`,
/// after the whole request went up, or before its body did (an early
/// answer: the upload is left where it stopped, for the caller to go on
/// with or drop).
enum Forwarded<'a> {
    Whole(usize),
    Early(usize, Upload<'a>),
}

/// Sends the head and body upstream and reads the response head into
/// `resp`.
async fn forward_request<'a, G: Gateway>(
    w: &'a Worker<G>,
    req: &RequestHead,
    body: &'a mut RecvStream,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    t: &'a Target<'a>,
    interims: &mut StreamInterims<'_, '_>,
) -> Result<Forwarded<'a>, Attempt> {
    let limits = &w.limits;
    let request_id = t.id.get(req);
    let framing = req.framing();
    // Translation always gives a Host (from :authority), but a header step
    // may remove it: then the server's address, as over HTTP/1.1.
    let fallback = if req.headers().get("host").is_none() {
        t.server.to_string()
    } else {
        String::new()
    };
    let info = ForwardInfo {
        client_ip: t.peer.ip(),
        proto: crate::proxy::forwarded_proto(req, t.proto),
        request_id,
        strip_prefix: t.strip_prefix,
        fallback_host: fallback.as_bytes(),
        received: "2",
    };
    let mut out = w.buffers.take();
    write_forward_request(req, &info, framing, &mut out);
    let head_limits = limits.response_head_limits();
    let is_head = req.is_head();
    if !framing.has_body() {
        // `content-length: 0` without END_STREAM: the request goes up once
        // the stream ended well, as the last byte of a longer body waits
        // ([`send_request_body`]).
        let mut sent = t.now;
        if !body.is_end_stream() {
            if let Err(e) = empty_body_end(w, body).await {
                w.buffers.give(out);
                return Err(Attempt::Missed(body_failed(e)));
            }
            // The wait for the head starts once the head went up.
            sent = crate::rt::time::coarse_now();
        }
        let res = write_all_within(t.up, &mut out, t.response_timeout).await;
        w.buffers.give(out);
        if let Err(e) = res {
            return Err(Attempt::Missed(head_write_failed(&e)));
        }
        let clock = HeadClock::sent_at(sent, t.response_timeout, t.total);
        let read = HeadRead {
            is_head,
            limits: &head_limits,
            clock: &clock,
        };
        return match read_response_head(t.up, ubuf, resp, read, interims).await {
            Ok(upos) => Ok(Forwarded::Whole(upos)),
            Err(HeadFail::Stale) => Err(Attempt::Missed(Miss::Stale)),
            Err(HeadFail::Failed(kind)) => Err(Attempt::Missed(Miss::failed(kind, false))),
        };
    }
    // Boxed: the body's sender and the head reader running beside it are
    // most of this future's size, which every stream (most have no body)
    // would carry and move.
    let mut upload: Upload<'a> = Box::pin(async move {
        let mut out = out;
        let sent = send_request_body(w, body, t.up, &mut out, framing, t.response_timeout).await;
        w.buffers.give(out);
        sent
    });
    let clock = HeadClock::uploading(t.response_timeout, t.total);
    let read = HeadRead {
        is_head,
        limits: &head_limits,
        clock: &clock,
    };
    let head = Box::pin(send_body_read_head(
        upload.as_mut(),
        ubuf,
        resp,
        t,
        read,
        interims,
    ))
    .await?;
    Ok(match head {
        (upos, true) => Forwarded::Whole(upos),
        (upos, false) => Forwarded::Early(upos, upload),
    })
}

/// [`forward_request`]'s path for a request with a body: it goes up
/// (after the head already in its buffer) while the response head is
/// awaited, as an upstream may answer early (401, 413) without reading it
/// all. Returns where the response body starts in `ubuf` and whether the
/// request body went up whole before the head came.
async fn send_body_read_head(
    mut upload: Pin<&mut (dyn Future<Output = Result<(), BodyError>> + '_)>,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    t: &Target<'_>,
    read: HeadRead<'_>,
    interims: &mut StreamInterims<'_, '_>,
) -> Result<(usize, bool), Attempt> {
    // No deadline until the body is sent (`read.clock` is uploading): then
    // the response timeout starts.
    let clock = read.clock;
    let head = pin!(read_response_head(t.up, ubuf, resp, read, interims));
    match select(upload.as_mut(), head).await {
        Either::Left((Ok(()), head)) => clock
            .bound(head)
            .await
            .unwrap_or(Err(HeadFail::Failed(ErrorKind::UpstreamTimeout)))
            .map(|upos| (upos, true))
            .map_err(head_failed),
        Either::Left((Err(e), _)) => Err(Attempt::Missed(body_failed(e))),
        Either::Right((r, _)) => r.map(|upos| (upos, false)).map_err(head_failed),
    }
}

/// A request body that failed before any answer went to the client.
fn body_failed(e: BodyError) -> Miss {
    match e {
        BodyError::TooLarge => Miss::failed(ErrorKind::BodyTooLarge, false),
        BodyError::ClientTimeout => Miss::failed(ErrorKind::ClientTimeout, false),
        BodyError::UpstreamWrite => Miss::failed(ErrorKind::UpstreamClosed, false),
        BodyError::UpstreamTimeout => Miss::failed(ErrorKind::UpstreamTimeout, false),
        BodyError::Malformed(why) => Miss::failed(ErrorKind::BadRequestBody(why), false),
        _ => Miss::failed(ErrorKind::ClientClosed, true),
    }
}

/// With a body sent, even a silent close is a failure, never a replay.
fn head_failed(f: HeadFail) -> Attempt {
    match f {
        HeadFail::Stale => Attempt::Missed(Miss::failed(ErrorKind::UpstreamClosed, false)),
        HeadFail::Failed(kind) => Attempt::Missed(Miss::failed(kind, false)),
    }
}

/// Moves the request body from the client's DATA frames to the upstream
/// (after the head already in `out`), chunked when no length was given.
/// Window is released only for bytes written upstream. An upstream that
/// takes nothing for `write_pause` (it stopped reading) ends it, as the
/// HTTP/1.1 body pump does.
async fn send_request_body<G: Gateway>(
    w: &Worker<G>,
    body: &mut RecvStream,
    up: &UpstreamStream,
    out: &mut Vec<u8>,
    framing: BodyFraming,
    write_pause: Duration,
) -> Result<(), BodyError> {
    let chunked = framing == BodyFraming::Chunked;
    let write_up = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::TimedOut => BodyError::UpstreamTimeout,
        _ => BodyError::UpstreamWrite,
    };
    write_all_within(up, out, write_pause)
        .await
        .map_err(write_up)?;
    let length = match framing {
        BodyFraming::Length(n) => Some(n),
        _ => None,
    };
    // The last byte of a body with a length, kept until the stream ended
    // well (see below).
    let mut held = None;
    let mut total = 0u64;
    let mut ended = false;
    while !ended {
        let chunk = match crate::rt::time::within_for(w.limits.body_timeout, body.data()).await {
            Err(_) => return Err(BodyError::ClientTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyError::ClientGone),
            Ok(Some(Ok(b))) => b,
        };
        // The DATA frames already received go up in the same write: a
        // client sending tiny frames is drained as fast as it sends them,
        // one write per batch, not one per frame (the `h2` crate ends the
        // connection when too many small frames wait to be read).
        let mut batch = 0;
        let mut next = Some(chunk);
        while let Some(chunk) = next.take() {
            total += chunk.len() as u64;
            if total > w.limits.max_body_bytes {
                return Err(BodyError::TooLarge);
            }
            put_body_part(out, &chunk, chunked);
            batch += chunk.len();
            if batch >= READ_CHUNK {
                break;
            }
            match body.data().now_or_never() {
                Some(Some(Ok(b))) => next = Some(b),
                Some(Some(Err(_))) => return Err(BodyError::ClientGone),
                Some(None) => ended = true,
                None => {}
            }
        }
        if batch == 0 {
            continue;
        }
        // Until END_STREAM the request may still turn out malformed (DATA
        // past its content-length, a bad trailer), and an intermediary
        // must not forward a malformed request (RFC 9113 §8.1.1): an
        // upstream holding the whole body would answer it. So the last
        // byte waits for the end (a chunked body's last chunk does too).
        if Some(total) == length && !body.is_end_stream() {
            held = out.pop();
        }
        write_all_within(up, out, write_pause)
            .await
            .map_err(write_up)?;
        let _ = body.flow_control().release_capacity(batch);
    }
    end_of_body(w, body).await?;
    out.extend(held);
    if chunked {
        out.extend_from_slice(LAST_CHUNK);
    }
    if !out.is_empty() {
        write_all_within(up, out, write_pause)
            .await
            .map_err(write_up)?;
    }
    Ok(())
}

/// The end of a stream whose head declared `content-length: 0` (empty DATA
/// frames, trailers). The `h2` crate resets a stream whose DATA add up to
/// more than its content-length.
async fn empty_body_end<G: Gateway>(w: &Worker<G>, body: &mut RecvStream) -> Result<(), BodyError> {
    loop {
        match crate::rt::time::within_for(w.limits.body_timeout, body.data()).await {
            Err(_) => return Err(BodyError::ClientTimeout),
            Ok(None) => return end_of_body(w, body).await,
            Ok(Some(Err(_))) => return Err(BodyError::ClientGone),
            Ok(Some(Ok(data))) if data.is_empty() => {}
            Ok(Some(Ok(_))) => return Err(BodyError::Malformed("DATA past content-length")),
        }
    }
}

/// The end of a request body whose DATA frames were all read: the trailer
/// section, if the stream has one (within `body-timeout`), must be one
/// the head would not be refused for ([`trailers_fault`]). It is dropped.
async fn end_of_body<G: Gateway>(w: &Worker<G>, body: &mut RecvStream) -> Result<(), BodyError> {
    if body.is_end_stream() {
        return Ok(());
    }
    match crate::rt::time::within_for(w.limits.body_timeout, body.trailers()).await {
        Err(_) => Err(BodyError::ClientTimeout),
        Ok(Err(_)) => Err(BodyError::ClientGone),
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(trailers))) => {
            trailers_fault(&trailers).map_or(Ok(()), |why| Err(BodyError::Malformed(why)))
        }
    }
}

/// Appends one DATA frame's bytes to the upstream request body in `out`,
/// as a chunk if the body goes up chunked.
fn put_body_part(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        put_chunk_head(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// The framing error in `bytes`, the start of a body framed by `framing`,
/// if they hold one (bytes past the body's end are not looked at).
fn framing_error(framing: BodyFraming, mut bytes: &[u8]) -> Option<&'static str> {
    let mut reader = BodyReader::new(framing);
    while !bytes.is_empty() && !reader.is_done() {
        match reader.decode(bytes) {
            Err(e) => return Some(e.0),
            Ok(d) if d.consumed == 0 => break,
            Ok(d) => bytes = &bytes[d.consumed..],
        }
    }
    None
}

/// Relays the response body from `ubuf[upos..]` and the upstream to the
/// stream, decoded from its HTTP/1.1 framing. Returns whether bytes were
/// left after the body (the upstream connection is then not reused).
/// `duplex`: the request body still goes up beside it ([`DuplexClock`]).
async fn relay_response<G: Gateway>(
    w: &Worker<G>,
    t: &Target<'_>,
    ubuf: &mut Vec<u8>,
    mut upos: usize,
    framing: BodyFraming,
    send: &mut SendStream<Bytes>,
    duplex: Option<&DuplexClock>,
) -> Result<bool, BodyError> {
    let mut reader = BodyReader::new(framing);
    loop {
        while upos < ubuf.len() && !reader.is_done() {
            let d = reader
                .decode(&ubuf[upos..])
                .map_err(|e| BodyError::UpstreamFraming(e.0))?;
            let data = &ubuf[upos..][d.data.clone()];
            upos += d.consumed;
            if !data.is_empty() {
                // The body's last bytes carry END_STREAM: no empty DATA
                // frame after them (most bodies are one read).
                let last = reader.is_done();
                let data = Bytes::copy_from_slice(data);
                send_data(send, data, last, w.limits.body_timeout).await?;
                if last {
                    return Ok(upos < ubuf.len());
                }
            }
            if d.consumed == 0 {
                break;
            }
        }
        if reader.is_done() {
            send.send_data(Bytes::new(), true)
                .map_err(|_| BodyError::ClientGone)?;
            return Ok(upos < ubuf.len());
        }
        ubuf.clear();
        upos = 0;
        let deadline = match duplex {
            Some(clock) => clock.read_deadline(t.response_timeout),
            None => crate::rt::time::coarse_now() + t.response_timeout,
        };
        // A quiet upstream (a long poll, a slow origin) must not keep the
        // upstream connection past the client's reset: nothing else wakes
        // this stream until the upstream's next bytes or the timeout.
        let read = pin!(read_more(t.up, std::mem::take(ubuf), READ_CHUNK, deadline));
        let reset = pin!(poll_fn(|cx| send.poll_reset(cx)));
        let (outcome, buf) = match select(read, reset).await {
            Either::Left((read, _)) => read,
            Either::Right(_) => return Err(BodyError::ClientGone),
        };
        *ubuf = buf;
        if let Some(clock) = duplex {
            clock.read_done();
        }
        match outcome {
            ReadOutcome::Data(_) => {}
            ReadOutcome::Eof if matches!(reader, BodyReader::UntilClose) => {
                send.send_data(Bytes::new(), true)
                    .map_err(|_| BodyError::ClientGone)?;
                return Ok(false);
            }
            ReadOutcome::Eof | ReadOutcome::Error => return Err(BodyError::UpstreamClosed),
            ReadOutcome::Timeout => return Err(BodyError::UpstreamTimeout),
        }
    }
}

/// Sends `data` as the client's window allows, waiting at most `stall`
/// for each grant of capacity; `last` ends the stream with its final part.
async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    last: bool,
    stall: Duration,
) -> Result<(), BodyError> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted =
            crate::rt::time::within_for(stall, poll_fn(|cx| send.poll_capacity(cx))).await;
        let cap = match granted {
            Err(_) => return Err(BodyError::ClientStalled),
            Ok(None | Some(Err(_))) => return Err(BodyError::ClientGone),
            Ok(Some(Ok(n))) => n,
        };
        if cap == 0 {
            continue;
        }
        let part = data.split_to(cap.min(data.len()));
        send.send_data(part, last && data.is_empty())
            .map_err(|_| BodyError::ClientGone)?;
    }
    Ok(())
}
