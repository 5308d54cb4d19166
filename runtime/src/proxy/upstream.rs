//! The upstream side of one proxied exchange: pick a server, reuse or
//! open a connection, send the re-framed head and the body, read the
//! response head, stream the response, and pool the connection only if
//! the exchange ended cleanly.

use std::pin::pin;
use std::time::{Duration, Instant};

use compio::net::TcpStream;
use futures_util::future::{Either, select};

use std::net::SocketAddr;
use std::rc::Rc;

use super::Worker;
use super::conn::Client;
use super::error::{ErrorKind, ProxyError, Side};
use super::gateway::Gateway;
use super::io::{
    Pump, PumpError, READ_CHUNK, ReadOutcome, Stream, UpstreamStream, read_more, write_all,
};
use crate::http::{
    BodyFraming, BodyReader, ForwardInfo, HeadLimits, RequestHead, ResponseHead, Version,
    parse_response_head, valid_request_id, write_forward_request, write_response_head,
};
use crate::lb::{Endpoint, UpstreamSet, UpstreamTimeouts};

/// How a proxied exchange ended.
pub(crate) enum Exchange {
    /// The response was relayed completely.
    Done { keep_alive: bool, status: u16 },
    /// It failed; `answered` says whether response bytes already reached
    /// the client (then the connection is cut, no error answer).
    Failed { error: ProxyError, answered: bool },
}

fn failed(kind: ErrorKind) -> Exchange {
    Exchange::Failed {
        error: ProxyError::new(kind),
        answered: false,
    }
}

/// Opens a connection for one try: the balancer picks an endpoint (never
/// one `avoid` rejects, `tried` ones only if nothing else is left), then a
/// pooled connection to it is reused or a new one opened. A failed connect
/// fails over to the next endpoint the balancer gives (nothing was sent, so
/// this is always safe), each endpoint at most once per call. Returns the
/// endpoint, the connection, and whether it came from the pool.
pub(crate) async fn connect(
    set: &UpstreamSet,
    key: u64,
    tried: &[SocketAddr],
    fresh_only: bool,
    connect_timeout: Duration,
    now: Instant,
) -> Result<(Rc<Endpoint>, UpstreamStream, bool), ProxyError> {
    let mut refused: Vec<SocketAddr> = Vec::new();
    let mut last = ProxyError::new(ErrorKind::NoHealthyUpstream);
    loop {
        let Some(ep) = set.pick(key, now, |a| refused.contains(&a), |a| tried.contains(&a)) else {
            return Err(last);
        };
        if !refused.is_empty() {
            ep.count_retry();
        }
        // The balancer picks the server; the pool only saves the handshake
        // to it. Taking another server's idle connection instead would turn
        // balancing into "whoever has a pooled connection".
        let pooled = if !fresh_only && refused.is_empty() {
            ep.pool.borrow_mut().checkout(now)
        } else {
            None
        };
        if let Some(conn) = pooled {
            return Ok((ep, conn, true));
        }
        let deadline = Instant::now() + connect_timeout;
        match crate::rt::time::within(deadline, TcpStream::connect(ep.addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                match upstream_stream(stream, &ep, deadline).await {
                    Ok(stream) => return Ok((ep, stream, false)),
                    Err(e) => last = e,
                }
            }
            Ok(Err(_)) => last = ProxyError::new(ErrorKind::UpstreamConnect),
            Err(_) => last = ProxyError::new(ErrorKind::UpstreamTimeout),
        }
        ep.failed(Instant::now());
        refused.push(ep.addr);
    }
}

/// Makes a freshly connected socket an upstream connection: as is, or
/// after a TLS handshake (within the connect deadline) when the endpoint's
/// server speaks TLS.
async fn upstream_stream(
    tcp: TcpStream,
    ep: &Endpoint,
    deadline: Instant,
) -> Result<UpstreamStream, ProxyError> {
    #[cfg(feature = "tls")]
    if let Some(state) = &ep.tls {
        let Ok(tls) = &state.tls else {
            return Err(ProxyError::new(ErrorKind::UpstreamTls));
        };
        let Ok(conn) = tls.connection() else {
            return Err(ProxyError::new(ErrorKind::UpstreamTls));
        };
        let stream = crate::tls::TlsStream::new(tcp, conn);
        return match stream.handshake(deadline).await {
            Ok(()) => Ok(UpstreamStream::Tls(stream)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(ProxyError::new(ErrorKind::UpstreamTimeout))
            }
            Err(e) => {
                // Why, once per server and worker: a certificate that does
                // not verify is a configuration problem to see.
                if !state.reported.replace(true) {
                    eprintln!(
                        "blitz: TLS handshake with upstream server {} failed: {e}",
                        ep.addr
                    );
                }
                Err(ProxyError::new(ErrorKind::UpstreamTls))
            }
        };
    }
    let _ = (ep, deadline);
    Ok(UpstreamStream::Tcp(tcp))
}

/// Whether a request may be sent again after the upstream may have seen
/// it: an idempotent method (RFC 9110 §9.2.2) and no body (bodies are
/// streamed, never kept, so they cannot be replayed).
pub(crate) fn replayable(req: &RequestHead) -> bool {
    !req.framing().has_body()
        && matches!(
            req.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
}

/// Proxies `req` to `upstream`. On success the client connection is
/// positioned after the request body.
///
/// Tries: connect failures fail over inside [`connect`]. Once the request
/// was sent, it is tried again (on another endpoint if there is one) only
/// if it is [`replayable`], the upstream's `retry` lists the failure
/// (`timeout`: no response head in time; a status: the response head had
/// it, and it was not relayed), attempts are left, and the retry budget
/// has room. A pooled connection the upstream closed before answering
/// anything is replayed once on a fresh one for replayable requests (the
/// keep-alive race), outside the retry policy.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn proxy_request<G: Gateway, S: Stream>(
    w: &Worker<G>,
    c: &mut Client<S>,
    req: &mut RequestHead,
    route: G::Route,
    ctx: &mut G::Ctx,
    upstream: usize,
    strip_prefix: Option<&'static str>,
) -> Exchange {
    let Some(set) = w.upstreams.get(upstream) else {
        return failed(ErrorKind::Internal("upstream index out of range"));
    };
    let replayable = replayable(req);
    let key = set.hash_key(req, c.peer);
    let mut fresh_only = false;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut retries_left = if replayable { set.retry.attempts } else { 0 };
    set.budget.deposit();
    // One clock read serves the pool and the response deadline of a pooled
    // connection (the hot path).
    let started = Instant::now();
    let deadline = set.retry.total.map(|t| started + t);
    loop {
        let now = if tried.is_empty() {
            started
        } else {
            Instant::now()
        };
        // Each try's timeouts, cut to what the total deadline leaves.
        let timeouts = match deadline {
            Some(d) => UpstreamTimeouts {
                connect: set.timeouts.connect.min(d.saturating_duration_since(now)),
                response: set.timeouts.response.min(d.saturating_duration_since(now)),
            },
            None => set.timeouts,
        };
        let (ep, conn, reused) =
            match connect(set, key, &tried, fresh_only, timeouts.connect, now).await {
                Ok(x) => x,
                Err(error) => {
                    return Exchange::Failed {
                        error,
                        answered: false,
                    };
                }
            };
        let now = if reused { now } else { Instant::now() };
        let may_retry =
            retries_left > 0 && set.budget.has_room(now) && deadline.is_none_or(|d| now < d);
        let retry_statuses: &[u16] = if may_retry { &set.retry.on_status } else { &[] };
        ep.begin(!tried.is_empty());
        let attempt = exchange(
            w,
            c,
            req,
            route,
            ctx,
            &conn,
            &ep,
            timeouts,
            retry_statuses,
            strip_prefix,
            now,
        )
        .await;
        ep.end();
        let retry_on_timeout = may_retry && set.retry.on_timeout;
        match attempt {
            Attempt::Done {
                keep_alive,
                upstream_reusable,
                status,
            } => {
                ep.answered(status, Instant::now());
                if upstream_reusable && !w.drain.is_draining() {
                    ep.give_back(conn, started);
                }
                return Exchange::Done { keep_alive, status };
            }
            Attempt::Stale if reused && replayable && !fresh_only => {
                fresh_only = true;
                continue;
            }
            Attempt::Stale => {
                ep.failed(Instant::now());
                return failed(ErrorKind::UpstreamClosed);
            }
            Attempt::RetryStatus(_)
                if deadline.is_none_or(|d| Instant::now() < d)
                    && set.budget.withdraw(Instant::now()) =>
            {
                ep.failed(Instant::now());
                retries_left -= 1;
                tried.push(ep.addr);
                fresh_only = false;
            }
            Attempt::RetryStatus(status) => {
                // The budget or the total deadline ran out during the try:
                // the answer was set aside and cannot be relayed any more.
                ep.failed(Instant::now());
                return Exchange::Failed {
                    error: ProxyError::with_status(ErrorKind::UpstreamStatus, status),
                    answered: false,
                };
            }
            Attempt::Failed(Exchange::Failed {
                error,
                answered: false,
            }) if error.kind == ErrorKind::UpstreamTimeout
                && retry_on_timeout
                && deadline.is_none_or(|d| Instant::now() < d)
                && set.budget.withdraw(Instant::now()) =>
            {
                ep.failed(Instant::now());
                retries_left -= 1;
                tried.push(ep.addr);
                fresh_only = false;
            }
            Attempt::Failed(e) => {
                if let Exchange::Failed { error, .. } = &e
                    && error.side == Side::Upstream
                {
                    ep.failed(Instant::now());
                }
                return e;
            }
        }
    }
}

enum Attempt {
    Done {
        keep_alive: bool,
        upstream_reusable: bool,
        status: u16,
    },
    /// The upstream closed before sending a single response byte.
    Stale,
    /// The response head had a status the retry policy retries; nothing
    /// was relayed and the upstream connection is dropped.
    RetryStatus(u16),
    Failed(Exchange),
}

#[allow(clippy::too_many_arguments)]
async fn exchange<G: Gateway, S: Stream>(
    w: &Worker<G>,
    c: &mut Client<S>,
    req: &mut RequestHead,
    route: G::Route,
    ctx: &mut G::Ctx,
    up: &UpstreamStream,
    ep: &Endpoint,
    timeouts: UpstreamTimeouts,
    retry_statuses: &[u16],
    strip_prefix: Option<&'static str>,
    now: Instant,
) -> Attempt {
    let limits = &w.limits;
    // --- request head (+ body) upstream ---
    let mut id_buf = [0u8; 32];
    let request_id: &[u8] = match req.headers().get("x-request-id") {
        Some(v) if valid_request_id(v) => v,
        _ => w.ids.next(&mut id_buf),
    };
    let mut out = w.buffers.take();
    let framing = req.framing();
    // HTTP/1.0 requests may come without Host; HTTP/1.1 upstream needs one.
    let fallback = if req.headers().get("host").is_none() {
        ep.addr.to_string()
    } else {
        String::new()
    };
    let info = ForwardInfo {
        client_ip: c.peer.ip(),
        proto: if c.stream.is_tls() { "https" } else { "http" },
        request_id,
        strip_prefix,
        fallback_host: fallback.as_bytes(),
        received: match req.version() {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
        },
    };
    write_forward_request(req, &info, framing, &mut out);

    let head_limits = limits.head_limits();
    let mut ubuf = w.buffers.take();
    let mut resp = ResponseHead::default();
    let is_head = req.is_head();
    // Whether the client's body was left unread (early upstream answer).
    let mut body_unfinished = false;
    let head_result = if framing.has_body() {
        if req.expect_continue() && c.buffered().is_empty() {
            let mut cont = w.buffers.take();
            cont.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            let ok = write_all(&c.stream, &mut cont).await.is_ok();
            w.buffers.give(cont);
            if !ok {
                w.buffers.give(out);
                w.buffers.give(ubuf);
                return Attempt::Failed(Exchange::Failed {
                    error: ProxyError::new(ErrorKind::ClientWrite),
                    answered: true,
                });
            }
        }
        // The body goes up while the response head is awaited: an upstream
        // may answer (401, 413...) without reading the whole body, and must
        // not deadlock us. The response timeout starts once the body is sent.
        let outcome = {
            let pump = Pump {
                src: &c.stream,
                src_buf: &mut c.rbuf,
                src_pos: &mut c.rpos,
                reader: BodyReader::new(framing),
                sink: up,
                out: &mut out,
                chunked_out: framing == BodyFraming::Chunked,
                max_bytes: limits.max_body_bytes,
                read_timeout: limits.body_timeout,
                read_room: READ_CHUNK,
            };
            let far = Instant::now() + Duration::from_secs(24 * 3600);
            let pump = pin!(pump.run());
            let head = pin!(read_response_head(
                up,
                &mut ubuf,
                &mut resp,
                is_head,
                &head_limits,
                far
            ));
            match select(pump, head).await {
                Either::Left((Ok(_), head)) => {
                    match crate::rt::time::within_for(timeouts.response, head).await {
                        Ok(r) => r,
                        Err(_) => Err(HeadFail::Failed(ErrorKind::UpstreamTimeout)),
                    }
                    .map_err(BodyOrHead::Head)
                }
                Either::Left((Err(e), _)) => Err(BodyOrHead::Body(e)),
                Either::Right((r, _)) => {
                    body_unfinished = true;
                    r.map_err(BodyOrHead::Head)
                }
            }
        };
        w.buffers.give(out);
        match outcome {
            Ok(upos) => Ok(upos),
            Err(BodyOrHead::Head(f)) => Err(f),
            Err(BodyOrHead::Body(e)) => {
                w.buffers.give(ubuf);
                // The upstream connection is dropped here, mid-request: it
                // never sees a terminating chunk and is never reused.
                let kind = match e {
                    PumpError::Framing(why) => ErrorKind::BadRequestBody(why),
                    PumpError::TooLarge => ErrorKind::BodyTooLarge,
                    PumpError::SourceTimeout => ErrorKind::ClientTimeout,
                    PumpError::SourceClosed => ErrorKind::ClientClosed,
                    PumpError::SinkFailed => ErrorKind::UpstreamClosed,
                };
                let answered = matches!(kind, ErrorKind::ClientClosed);
                return Attempt::Failed(Exchange::Failed {
                    error: ProxyError::new(kind),
                    answered,
                });
            }
        }
    } else {
        let res = write_all(up, &mut out).await;
        w.buffers.give(out);
        if res.is_err() {
            w.buffers.give(ubuf);
            return Attempt::Stale;
        }
        let deadline = now + timeouts.response;
        read_response_head(up, &mut ubuf, &mut resp, is_head, &head_limits, deadline).await
    };
    let mut upos = match head_result {
        Ok(upos) => upos,
        Err(HeadFail::Stale) if !framing.has_body() => {
            w.buffers.give(ubuf);
            return Attempt::Stale;
        }
        Err(HeadFail::Stale) => return fail_up(w, ubuf, ErrorKind::UpstreamClosed),
        Err(HeadFail::Failed(kind)) => return fail_up(w, ubuf, kind),
    };

    if retry_statuses.contains(&resp.status()) && !body_unfinished {
        w.buffers.give(ubuf);
        return Attempt::RetryStatus(resp.status());
    }

    w.gateway.response(route, &mut resp, ctx);

    // --- response to the client ---
    let client_10 = req.version() == Version::Http10;
    let client_framing = match resp.framing() {
        BodyFraming::None => BodyFraming::None,
        BodyFraming::Length(n) => BodyFraming::Length(n),
        BodyFraming::Chunked | BodyFraming::UntilClose if client_10 => BodyFraming::UntilClose,
        BodyFraming::Chunked | BodyFraming::UntilClose => BodyFraming::Chunked,
    };
    let keep_alive = req.keep_alive()
        && client_framing != BodyFraming::UntilClose
        && !body_unfinished
        && !w.drain.is_draining();
    let mut out = w.buffers.take();
    write_response_head(&resp, client_framing, req.version(), !keep_alive, &mut out);
    let status = resp.status();
    let pump = Pump {
        src: up,
        src_buf: &mut ubuf,
        src_pos: &mut upos,
        reader: BodyReader::new(resp.framing()),
        sink: &c.stream,
        out: &mut out,
        chunked_out: client_framing == BodyFraming::Chunked,
        max_bytes: u64::MAX,
        read_timeout: timeouts.response,
        read_room: READ_CHUNK,
    };
    let res = pump.run().await;
    // Bytes past the response (a second answer nobody asked for) make the
    // connection untrustworthy.
    let leftover = upos < ubuf.len();
    w.buffers.give(out);
    w.buffers.give(ubuf);
    match res {
        Ok(_) => Attempt::Done {
            keep_alive,
            upstream_reusable: resp.keep_alive() && !leftover && !body_unfinished,
            status,
        },
        Err(e) => {
            let kind = match e {
                PumpError::SinkFailed => ErrorKind::ClientWrite,
                PumpError::SourceTimeout => ErrorKind::UpstreamTimeout,
                PumpError::Framing(why) => ErrorKind::UpstreamProtocol(why),
                PumpError::SourceClosed | PumpError::TooLarge => ErrorKind::UpstreamClosed,
            };
            Attempt::Failed(Exchange::Failed {
                error: ProxyError::new(kind),
                answered: true,
            })
        }
    }
}

pub(crate) enum HeadFail {
    /// The upstream closed before sending a single byte.
    Stale,
    Failed(ErrorKind),
}

enum BodyOrHead {
    Body(PumpError),
    Head(HeadFail),
}

/// Reads and parses the response head into `resp`, skipping interim (1xx)
/// answers; returns the position in `ubuf` where the body starts.
pub(crate) async fn read_response_head(
    up: &UpstreamStream,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    is_head: bool,
    limits: &HeadLimits,
    deadline: Instant,
) -> Result<usize, HeadFail> {
    let mut upos = 0usize;
    let mut received_any = false;
    loop {
        if upos < ubuf.len() {
            match parse_response_head(&ubuf[upos..], limits, is_head, resp) {
                Ok(Some(n)) => {
                    upos += n;
                    if resp.status() == 101 {
                        return Err(HeadFail::Failed(ErrorKind::UpstreamProtocol(
                            "101 to a request without Upgrade",
                        )));
                    }
                    if resp.status() < 200 {
                        // Interim answers (100, 103) are not relayed.
                        continue;
                    }
                    return Ok(upos);
                }
                Ok(None) => {}
                Err(rej) => return Err(HeadFail::Failed(ErrorKind::UpstreamProtocol(rej.why))),
            }
        }
        if upos > 0 {
            ubuf.drain(..upos);
            upos = 0;
        }
        let (outcome, buf) = read_more(up, std::mem::take(ubuf), READ_CHUNK, deadline).await;
        *ubuf = buf;
        match outcome {
            ReadOutcome::Data(_) => received_any = true,
            ReadOutcome::Eof | ReadOutcome::Error if !received_any => return Err(HeadFail::Stale),
            ReadOutcome::Eof | ReadOutcome::Error => {
                return Err(HeadFail::Failed(ErrorKind::UpstreamClosed));
            }
            ReadOutcome::Timeout => return Err(HeadFail::Failed(ErrorKind::UpstreamTimeout)),
        }
    }
}

fn fail_up<G: Gateway>(w: &Worker<G>, buf: Vec<u8>, kind: ErrorKind) -> Attempt {
    w.buffers.give(buf);
    Attempt::Failed(failed(kind))
}
