//! The upstream side of one proxied exchange: pick a server, reuse or
//! open a connection, send the re-framed head and the body, read the
//! response head, stream the response, and pool the connection only if
//! the exchange ended cleanly.

use std::pin::pin;
use std::time::{Duration, Instant};

use compio::net::TcpStream;
use futures_util::future::{Either, select};

use super::Worker;
use super::conn::Client;
use super::error::{ErrorKind, ProxyError};
use super::gateway::Gateway;
use super::io::{
    Pump, PumpError, READ_CHUNK, ReadOutcome, Stream, UpstreamStream, read_more, write_all,
};
use crate::http::{
    BodyFraming, BodyReader, ForwardInfo, HeadLimits, RequestHead, ResponseHead, Version,
    parse_response_head, valid_request_id, write_forward_request, write_response_head,
};

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

/// Opens a connection to the upstream's next server in round-robin order:
/// a pooled one to that server if there is one, else a new one, trying the
/// following servers only when connecting fails. Returns the connection,
/// its flat server id and whether it came from the pool.
async fn connect<G: Gateway>(
    w: &Worker<G>,
    upstream: usize,
    fresh_only: bool,
    now: Instant,
) -> Result<(UpstreamStream, usize, bool), ProxyError> {
    let Some(up) = w.upstreams.get(upstream) else {
        return Err(ProxyError::new(ErrorKind::Internal(
            "upstream index out of range",
        )));
    };
    let n = up.servers.len();
    let base = w.server_base[upstream];
    let Some(start) = w.rr[upstream].pick(n) else {
        return Err(ProxyError::new(ErrorKind::NoHealthyUpstream));
    };
    // The balancer picks the server; the pool only saves the handshake to
    // it. Taking another server's idle connection instead would turn round
    // robin into "whoever has a pooled connection" and starve the rest.
    if !fresh_only
        && w.health.is_up(base + start, now)
        && let Some(conn) = w.pool.borrow_mut().checkout(base + start, now)
    {
        return Ok((conn, base + start, true));
    }
    let mut last = ProxyError::new(ErrorKind::UpstreamConnect);
    // Healthy servers first; if none is, every server anyway.
    for healthy_pass in [true, false] {
        for k in 0..n {
            let s = (start + k) % n;
            if w.health.is_up(base + s, now) != healthy_pass {
                continue;
            }
            let addr = up.servers[s];
            match compio::time::timeout(w.limits.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    match w.upstream_stream(stream, base + s).await {
                        Ok(stream) => {
                            w.health.succeeded(base + s);
                            return Ok((stream, base + s, false));
                        }
                        Err(e) => last = e,
                    }
                }
                Ok(Err(_)) => last = ProxyError::new(ErrorKind::UpstreamConnect),
                Err(_) => last = ProxyError::new(ErrorKind::UpstreamTimeout),
            }
            w.health.failed(base + s, Instant::now());
        }
    }
    Err(last)
}

/// Proxies `req` to `upstream`. On success the client connection is
/// positioned after the request body.
pub(crate) async fn proxy_request<G: Gateway, S: Stream>(
    w: &Worker<G>,
    c: &mut Client<S>,
    req: &mut RequestHead,
    route: G::Route,
    ctx: &mut G::Ctx,
    upstream: usize,
    strip_prefix: Option<&'static str>,
) -> Exchange {
    // A request without body on a reused connection may be sent again on a
    // fresh one if the upstream closed the idle connection under us before
    // answering anything (the classic keep-alive race).
    // Only idempotent methods (RFC 9110 §9.2.2) are replayed.
    let replayable = !req.framing().has_body()
        && matches!(
            req.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
    let mut fresh_only = false;
    // One clock read serves the pool and the response deadline of a pooled
    // connection (the hot path).
    let started = Instant::now();
    loop {
        let (conn, server, reused) = match connect(w, upstream, fresh_only, started).await {
            Ok(x) => x,
            Err(error) => {
                return Exchange::Failed {
                    error,
                    answered: false,
                };
            }
        };
        let now = if reused { started } else { Instant::now() };
        match exchange(w, c, req, route, ctx, &conn, server, strip_prefix, now).await {
            Attempt::Done {
                keep_alive,
                upstream_reusable,
                status,
            } => {
                if upstream_reusable && !w.drain.is_draining() {
                    // Stamped with the start: it may expire a little early, never late.
                    w.pool.borrow_mut().checkin(server, conn, started);
                }
                return Exchange::Done { keep_alive, status };
            }
            Attempt::Stale if reused && replayable && !fresh_only => {
                fresh_only = true;
                continue;
            }
            Attempt::Stale => return failed(ErrorKind::UpstreamClosed),
            Attempt::Failed(e) => return e,
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
    server: usize,
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
        w.server_addr(server).to_string()
    } else {
        String::new()
    };
    let info = ForwardInfo {
        client_ip: c.peer.ip(),
        proto: if c.stream.is_tls() { "https" } else { "http" },
        request_id,
        strip_prefix,
        fallback_host: fallback.as_bytes(),
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
                    match compio::time::timeout(limits.response_timeout, head).await {
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
        let deadline = now + limits.response_timeout;
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
        read_timeout: limits.response_timeout,
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

enum HeadFail {
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
async fn read_response_head(
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
