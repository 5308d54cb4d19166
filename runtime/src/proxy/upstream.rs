//! The upstream side of one proxied exchange: pick a server, reuse or
//! open a connection, send the re-framed head and the body, read the
//! response head, stream the response, and pool the connection only if
//! the exchange ended cleanly.

use std::cell::Cell;
use std::future::Future;
use std::pin::{Pin, pin};
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
    DuplexClock, Pump, PumpError, READ_CHUNK, ReadOutcome, Stream, UpstreamStream, read_more,
    write_all_within,
};
use crate::http::{
    BodyFraming, BodyReader, ForwardInfo, HeadLimits, RequestHead, ResponseHead, Version,
    add_missing_date, parse_response_head, valid_request_id, write_forward_request,
    write_response_head,
};
use crate::lb::{Endpoint, UpstreamSet, UpstreamTimeouts};
use crate::rt::time::coarse_now;

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
/// this is always safe), each endpoint at most once per call, and never
/// past `deadline` (`retry total`): each connect is cut to what it leaves,
/// and once it has passed no other endpoint is tried (504). Returns the
/// endpoint, the connection, and whether it came from the pool.
async fn connect(
    set: &UpstreamSet,
    key: Option<u64>,
    tried: &[SocketAddr],
    fresh_only: bool,
    connect_timeout: Duration,
    deadline: Option<Instant>,
    now: Instant,
) -> Result<(Rc<Endpoint>, UpstreamStream, bool), ProxyError> {
    let mut refused: Vec<SocketAddr> = Vec::new();
    let mut last = ProxyError::new(ErrorKind::NoHealthyUpstream);
    loop {
        let connect_timeout = match deadline {
            Some(d) if !refused.is_empty() => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ProxyError::new(ErrorKind::UpstreamTimeout));
                }
                connect_timeout.min(left)
            }
            _ => connect_timeout,
        };
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
            ep.pool
                .borrow_mut()
                .checkout(now, UpstreamStream::idle_and_open)
        } else {
            None
        };
        if let Some(conn) = pooled {
            return Ok((ep, conn, true));
        }
        // Boxed: a connect and a TLS handshake are large futures, and with
        // a warm pool few requests await one.
        match Box::pin(open(&ep, connect_timeout)).await {
            Ok(stream) => return Ok((ep, stream, false)),
            Err(e) => last = e,
        }
        ep.failed(Instant::now());
        refused.push(ep.addr);
    }
}

/// Opens a new connection to `ep` within `connect_timeout` (TCP, then TLS
/// if its server speaks it).
async fn open(ep: &Endpoint, connect_timeout: Duration) -> Result<UpstreamStream, ProxyError> {
    let deadline = Instant::now() + connect_timeout;
    match crate::rt::time::within(deadline, crate::rt::connect::connect_tcp(ep.addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            upstream_stream(stream, ep, deadline).await
        }
        Ok(Err(_)) => Err(ProxyError::new(ErrorKind::UpstreamConnect)),
        Err(_) => Err(ProxyError::new(ErrorKind::UpstreamTimeout)),
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
                // Why, once per server and worker, and again after a
                // SIGHUP reloaded the CA files.
                if state.first_failure() {
                    let hint = if stream.sent_plain_http() {
                        " (it answered in plain HTTP: is it a TLS server?)"
                    } else {
                        ""
                    };
                    log_line!(
                        "blitz: TLS handshake with upstream server {} failed: {e}{hint}",
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

/// A try on a TLS connection that rustls gave up on (an alert from the
/// server, a record that did not decrypt) is logged once per server,
/// worker and reload, as a failed handshake is: a TLS 1.3 server that wants a client
/// certificate says so only after the handshake looked done, and the 502
/// would otherwise come with no reason anywhere.
pub(crate) fn log_tls_failure(ep: &Endpoint, conn: &UpstreamStream) {
    #[cfg(feature = "tls")]
    if let (UpstreamStream::Tls(stream), Some(state)) = (conn, &ep.tls)
        && let Some(why) = stream.failure()
        && state.first_failure()
    {
        log_line!("blitz: TLS with upstream server {} failed: {why}", ep.addr);
    }
    let _ = (ep, conn);
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

/// A failure after the request was sent, as the retry policy names it
/// (`on="timeout"`, `on="503"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No response head within the try's response timeout.
    Timeout,
    /// The upstream closed or reset the connection before a response head
    /// (`on="reset"`).
    Reset,
    /// The response head had this status (set aside, not relayed).
    Status(u16),
}

/// One request's tries against one upstream: the retry policy applied to
/// it (attempts left, the `retry total` deadline, the worker's budget), the
/// endpoints already tried, and whether the next connection must be fresh.
/// HTTP/1.1 exchanges and HTTP/2 streams both go through it, so the two
/// retry, count and fail over alike; each keeps only its own exchange.
pub(crate) struct Tries<'a> {
    set: &'a UpstreamSet,
    /// When the request reached the upstream side (the first try's clock).
    pub(crate) started: Instant,
    deadline: Option<Instant>,
    replayable: bool,
    /// Retries left: `attempts` for a [`replayable`] request, else 0.
    left: u32,
    /// Whether the try under way may be retried (decided as it starts).
    armed: bool,
    tried: Vec<SocketAddr>,
    fresh_only: bool,
}

/// One try: where it goes and how long it may take.
pub(crate) struct Try {
    pub(crate) ep: Rc<Endpoint>,
    pub(crate) conn: UpstreamStream,
    /// Whether `conn` came from the pool.
    pub(crate) reused: bool,
    /// The clock when the connection was ready (the response deadline
    /// runs from here).
    pub(crate) now: Instant,
    /// The try's timeouts, cut to what `retry total` leaves.
    pub(crate) timeouts: UpstreamTimeouts,
    /// `retry total`'s deadline: interims never move the wait for the
    /// head past it ([`HeadClock`]).
    pub(crate) total: Option<Instant>,
}

impl<'a> Tries<'a> {
    /// Starts a request to `set`; it counts towards the retry budget.
    pub(crate) fn new(set: &'a UpstreamSet, replayable: bool) -> Self {
        set.budget.deposit();
        let started = coarse_now();
        Tries {
            set,
            started,
            deadline: set.retry.total.map(|t| started + t),
            replayable,
            left: if replayable { set.retry.attempts } else { 0 },
            armed: false,
            tried: Vec::new(),
            fresh_only: false,
        }
    }

    /// Opens the next try's connection ([`connect`], with its failover),
    /// then decides whether this try may be retried.
    pub(crate) async fn connect(&mut self, key: Option<u64>) -> Result<Try, ProxyError> {
        // One clock read serves the pool and the response deadline of a
        // pooled connection on the first try (the hot path).
        let now = if self.tried.is_empty() {
            self.started
        } else {
            coarse_now()
        };
        let timeouts = self.timeouts(now);
        let (ep, conn, reused) = connect(
            self.set,
            key,
            &self.tried,
            self.fresh_only,
            timeouts.connect,
            self.deadline,
            now,
        )
        .await?;
        let now = if reused { now } else { coarse_now() };
        // The response timeout is cut to what the connect (and any connect
        // failover) left of the total deadline.
        let timeouts = UpstreamTimeouts {
            connect: timeouts.connect,
            response: self.timeouts(now).response,
        };
        self.arm(now);
        Ok(Try {
            ep,
            conn,
            reused,
            now,
            timeouts,
            total: self.deadline,
        })
    }

    /// A try starts at `now`: it may be retried if attempts are left, the
    /// budget has room and the total deadline has not passed.
    fn arm(&mut self, now: Instant) {
        self.armed = self.left > 0 && self.set.budget.has_room(now) && self.before_deadline(now);
    }

    /// Each try's timeouts, cut to what the total deadline leaves.
    fn timeouts(&self, now: Instant) -> UpstreamTimeouts {
        let all = self.set.timeouts;
        match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(now);
                UpstreamTimeouts {
                    connect: all.connect.min(left),
                    response: all.response.min(left),
                }
            }
            None => all,
        }
    }

    fn before_deadline(&self, now: Instant) -> bool {
        self.deadline.is_none_or(|d| now < d)
    }

    /// Whether the try under way is itself a retry (an endpoint counter).
    pub(crate) fn is_retry(&self) -> bool {
        !self.tried.is_empty()
    }

    /// The statuses the try under way sets aside for a retry instead of
    /// relaying: the policy's, if this try may be retried at all.
    pub(crate) fn retry_statuses(&self) -> &'a [u16] {
        if self.armed {
            &self.set.retry.on_status
        } else {
            &[]
        }
    }

    /// The keep-alive race: a pooled connection the upstream had closed
    /// before answering anything. A replayable request is sent once more,
    /// on a fresh connection, outside the retry policy.
    fn replay_stale(&mut self, reused: bool) -> bool {
        if reused && self.replayable && !self.fresh_only {
            self.fresh_only = true;
            return true;
        }
        false
    }

    /// A try relayed a complete response with `status`: passive health
    /// hears of it, and the connection is pooled if `reusable`, idle from
    /// now (not from the start of the exchange: a response that took longer
    /// than `idle-timeout` leaves a connection that was never idle).
    pub(crate) fn done(&self, ep: &Endpoint, conn: UpstreamStream, status: u16, reusable: bool) {
        let now = coarse_now();
        ep.answered(status, now);
        if reusable {
            ep.give_back(conn, now);
        }
    }

    /// A try at `ep` ended with `miss`: an upstream's failure is reported
    /// to passive health, then the request is tried again (`None`) or ends
    /// with an error and whether the client was already answered. Tried
    /// again: a stale pooled connection ([`Tries::replay_stale`]), a status
    /// or a timeout the policy retries ([`Tries::again`]). A status set
    /// aside for a retry that cannot happen after all (the budget or the
    /// total deadline ran out during the try) was discarded: the client
    /// gets that status, without the upstream's body.
    pub(crate) fn missed(
        &mut self,
        ep: &Endpoint,
        reused: bool,
        miss: Miss,
    ) -> Option<(ProxyError, bool)> {
        let (error, answered, failure) = match miss {
            Miss::Stale if self.replay_stale(reused) => return None,
            Miss::Stale => (
                ProxyError::new(ErrorKind::UpstreamClosed),
                false,
                Some(Failure::Reset),
            ),
            Miss::RetryStatus(status) => (
                ProxyError::with_status(ErrorKind::UpstreamStatus, status),
                false,
                Some(Failure::Status(status)),
            ),
            Miss::Failed { error, answered } => {
                let failure = match error.kind {
                    _ if answered => None,
                    ErrorKind::UpstreamTimeout => Some(Failure::Timeout),
                    ErrorKind::UpstreamClosed => Some(Failure::Reset),
                    _ => None,
                };
                (error, answered, failure)
            }
        };
        if error.side == Side::Upstream {
            ep.failed(Instant::now());
        }
        match failure {
            Some(failure) if self.again(ep.addr, failure) => None,
            _ => Some((error, answered)),
        }
    }

    /// The retry decision, for both protocols: whether the try that just
    /// failed at `addr` with `failure` is tried again. Only if the try was
    /// armed (a replayable request, attempts left, budget room when it
    /// started), the policy lists the failure, the total deadline has not
    /// passed, and the budget still gives a retry (taken here). The next
    /// try then avoids `addr` while other endpoints are left.
    fn again(&mut self, addr: SocketAddr, failure: Failure) -> bool {
        let listed = match failure {
            Failure::Timeout => self.set.retry.on_timeout,
            Failure::Reset => self.set.retry.on_reset,
            Failure::Status(status) => self.set.retry.on_status.contains(&status),
        };
        let now = Instant::now();
        if !(self.armed && listed && self.before_deadline(now) && self.set.budget.withdraw(now)) {
            return false;
        }
        self.left -= 1;
        self.tried.push(addr);
        self.fresh_only = false;
        true
    }
}

/// How a try ended that relayed no complete response (HTTP/1.1 and
/// HTTP/2 alike); [`Tries::missed`] decides what follows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Miss {
    /// The upstream closed before sending a single response byte.
    Stale,
    /// The response head had a status the retry policy retries; nothing
    /// was relayed and the upstream connection is dropped.
    RetryStatus(u16),
    /// It failed; `answered`: the client already got (part of) an answer,
    /// so no error answer is possible.
    Failed { error: ProxyError, answered: bool },
}

impl Miss {
    pub(crate) fn failed(kind: ErrorKind, answered: bool) -> Self {
        Miss::Failed {
            error: ProxyError::new(kind),
            answered,
        }
    }
}

/// Proxies `req` to `upstream`. On success the client connection is
/// positioned after the request body.
///
/// Tries: connect failures fail over inside [`connect`]. Once the request
/// was sent, it is tried again (on another endpoint if there is one) only
/// if it is [`replayable`], the upstream's `retry` lists the failure
/// (`timeout`: no response head in time; a status: the response head had
/// it, and it was not relayed), attempts are left, and the retry budget
/// has room ([`Tries::again`], shared with HTTP/2 streams). A pooled
/// connection the upstream closed before answering anything is replayed
/// once on a fresh one for replayable requests (the keep-alive race),
/// outside the retry policy.
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
    let key = set.hash_key(req, c.peer);
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
        } = match tries.connect(key).await {
            Ok(t) => t,
            Err(error) => {
                return Exchange::Failed {
                    error,
                    answered: false,
                };
            }
        };
        let in_flight = ep.begin(tries.is_retry());
        let attempt = exchange(
            w,
            c,
            req,
            route,
            ctx,
            &conn,
            &ep,
            timeouts,
            tries.retry_statuses(),
            strip_prefix,
            now,
            total,
            &id,
        )
        .await;
        drop(in_flight);
        match attempt {
            Attempt::Done {
                keep_alive,
                upstream_reusable,
                status,
            } => {
                let reusable = upstream_reusable && !w.drain.is_draining();
                tries.done(&ep, conn, status, reusable);
                return Exchange::Done { keep_alive, status };
            }
            Attempt::Missed(miss) => {
                log_tls_failure(&ep, &conn);
                if let Some((error, answered)) = tries.missed(&ep, reused, miss) {
                    return Exchange::Failed { error, answered };
                }
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
    /// No complete response was relayed.
    Missed(Miss),
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
    total: Option<Instant>,
    id: &RequestId,
) -> Attempt {
    let limits = &w.limits;
    // --- request head (+ body) upstream ---
    let request_id = id.get(req);
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
        proto: super::forwarded_proto(req, if c.stream.is_tls() { "https" } else { "http" }),
        request_id,
        strip_prefix,
        fallback_host: fallback.as_bytes(),
        received: match req.version() {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
        },
    };
    write_forward_request(req, &info, framing, &mut out);

    let head_limits = limits.response_head_limits();
    let mut ubuf = w.buffers.take();
    let mut resp = ResponseHead::default();
    let is_head = req.is_head();
    // Whether the client's body was left unread (early upstream answer).
    let mut body_unfinished = false;
    // The rest of the body, still going up beside the response: an
    // upstream that accepted the request (2xx) before reading all of it
    // (full duplex).
    let mut upload: Option<Upload<'_>> = None;
    let head_result = if framing.has_body() {
        if req.expect_continue() && c.buffered().is_empty() {
            let mut cont = w.buffers.take();
            cont.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            let ok = write_all_within(&c.stream, &mut cont, limits.body_timeout)
                .await
                .is_ok();
            w.buffers.give(cont);
            if !ok {
                w.buffers.give(out);
                w.buffers.give(ubuf);
                return Attempt::Missed(Miss::Failed {
                    error: ProxyError::new(ErrorKind::ClientWrite),
                    answered: true,
                });
            }
        }
        // Boxed: a body pump is large, and every request (most have no
        // body) would carry and move its room in this future.
        let mut sending: Upload<'_> = Box::pin(upload_body(
            w,
            // Borrowed apart: the stream is written to (interims, the
            // response) while the body is read from it.
            (&c.stream, &mut c.rbuf, &mut c.rpos),
            up,
            out,
            framing,
            timeouts.response,
        ));
        let mut interims = ClientInterims {
            client: &c.stream,
            http11: req.version() == Version::Http11,
            write_timeout: limits.body_timeout,
        };
        let read = ResponseRead {
            is_head,
            head_limits: &head_limits,
            timeouts,
            total,
        };
        // Boxed for the same reason.
        let sent = Box::pin(send_body_read_head(
            sending.as_mut(),
            up,
            &mut ubuf,
            &mut resp,
            read,
            &mut interims,
        ))
        .await;
        match sent {
            Ok(BodySent::Whole(head)) => head,
            Ok(BodySent::Unfinished(head)) => {
                body_unfinished = true;
                if head.is_ok() && upload_goes_on(&resp) {
                    upload = Some(sending);
                }
                head
            }
            Err(attempt) => {
                w.buffers.give(ubuf);
                return attempt;
            }
        }
    } else {
        let res = write_all_within(up, &mut out, timeouts.response).await;
        w.buffers.give(out);
        if let Err(e) = res {
            w.buffers.give(ubuf);
            return Attempt::Missed(head_write_failed(&e));
        }
        let clock = HeadClock::sent_at(now, timeouts.response, total);
        let read = HeadRead {
            is_head,
            limits: &head_limits,
            clock: &clock,
        };
        let mut interims = ClientInterims {
            client: &c.stream,
            http11: req.version() == Version::Http11,
            write_timeout: limits.body_timeout,
        };
        read_response_head(up, &mut ubuf, &mut resp, read, &mut interims).await
    };
    let mut upos = match head_result {
        Ok(upos) => upos,
        Err(HeadFail::Stale) if !framing.has_body() => {
            w.buffers.give(ubuf);
            return Attempt::Missed(Miss::Stale);
        }
        Err(HeadFail::Stale) => return fail_up(w, ubuf, ErrorKind::UpstreamClosed),
        Err(HeadFail::Failed(kind)) => return fail_up(w, ubuf, kind),
    };

    if retry_statuses.contains(&resp.status()) && !body_unfinished {
        w.buffers.give(ubuf);
        return Attempt::Missed(Miss::RetryStatus(resp.status()));
    }

    // Before the response steps, which may replace or remove it.
    add_missing_date(&mut resp);
    w.gateway.response(route, &mut resp, ctx);

    // --- response to the client ---
    let client_10 = req.version() == Version::Http10;
    let client_framing = match resp.framing() {
        BodyFraming::None => BodyFraming::None,
        BodyFraming::Length(n) => BodyFraming::Length(n),
        BodyFraming::Chunked | BodyFraming::UntilClose if client_10 => BodyFraming::UntilClose,
        BodyFraming::Chunked | BodyFraming::UntilClose => BodyFraming::Chunked,
    };
    // With the body still going up, the answer is written as keep-alive;
    // the connection closes after it if the body does not end well.
    let keep_alive = req.keep_alive()
        && client_framing != BodyFraming::UntilClose
        && (!body_unfinished || upload.is_some())
        && !w.drain.is_draining();
    let mut out = w.buffers.take();
    write_response_head(&resp, client_framing, req.version(), !keep_alive, &mut out);
    let status = resp.status();
    let clock = DuplexClock::uploading();
    let mut pump = Pump {
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
        // A client that stops taking the response is cut, as one that
        // pauses its request body: body-timeout bounds either gap.
        write_timeout: limits.body_timeout,
        flushed: false,
        duplex: upload.is_some().then_some(&clock),
    };
    let res = match upload {
        None => pump.run().await,
        Some(upload) => {
            // An upload that failed is reported as the answer's failure:
            // it is cut either way.
            let (res, uploaded) = clock
                .relay_beside_upload(
                    pump.run(),
                    upload,
                    timeouts.response,
                    PumpError::SourceTimeout,
                    |_| PumpError::SourceClosed,
                )
                .await;
            body_unfinished = !uploaded;
            res
        }
    };
    // Nothing reached the client yet (the body was bad from its first
    // bytes, which came with the head): it can still get a 502.
    let answered = pump.flushed;
    // An HTTP/1.0 client reads this body until the connection ends: only a
    // reset tells it the body was cut.
    c.cut_until_close = res.is_err() && answered && client_framing == BodyFraming::UntilClose;
    // Bytes past the response (a second answer nobody asked for) make the
    // connection untrustworthy.
    let leftover = upos < ubuf.len();
    w.buffers.give(out);
    w.buffers.give(ubuf);
    match res {
        Ok(_) => Attempt::Done {
            keep_alive: keep_alive && !body_unfinished,
            upstream_reusable: resp.keep_alive() && !leftover && !body_unfinished,
            status,
        },
        Err(e) => {
            let kind = match e {
                PumpError::SinkFailed => ErrorKind::ClientWrite,
                PumpError::SinkTimeout => ErrorKind::ClientTimeout,
                PumpError::SourceTimeout => ErrorKind::UpstreamTimeout,
                PumpError::Framing(why) => ErrorKind::UpstreamProtocol(why),
                PumpError::SourceClosed | PumpError::TooLarge => ErrorKind::UpstreamClosed,
            };
            Attempt::Missed(Miss::Failed {
                error: ProxyError::new(kind),
                answered,
            })
        }
    }
}

/// A request's `x-request-id` upstream, the same on every try (a replay
/// after the keep-alive race, a retry): the client's own when valid, else
/// one drawn once for the request.
pub(crate) enum RequestId {
    FromClient,
    Drawn([u8; 32]),
}

impl RequestId {
    pub(crate) fn of<G: Gateway>(w: &Worker<G>, req: &RequestHead) -> Self {
        match req.headers().get_all_end_to_end("x-request-id").next() {
            Some(v) if valid_request_id(v) => RequestId::FromClient,
            _ => {
                let mut id = [0u8; 32];
                w.ids.next(&mut id);
                RequestId::Drawn(id)
            }
        }
    }

    pub(crate) fn get<'a>(&'a self, req: &'a RequestHead) -> &'a [u8] {
        match self {
            RequestId::FromClient => req
                .headers()
                .get_all_end_to_end("x-request-id")
                .next()
                .unwrap_or_default(),
            RequestId::Drawn(id) => id,
        }
    }
}

pub(crate) enum HeadFail {
    /// The upstream closed before sending a single byte.
    Stale,
    Failed(ErrorKind),
}

/// How [`send_body_read_head`] reads the response.
struct ResponseRead<'a> {
    is_head: bool,
    head_limits: &'a HeadLimits,
    timeouts: UpstreamTimeouts,
    total: Option<Instant>,
}

/// A request body on its way up: its pump, with the buffer that held the
/// request head (given back to the pool once the body is sent).
type Upload<'a> = Pin<Box<dyn Future<Output = Result<(), PumpError>> + 'a>>;

/// Whether the rest of a request body goes up after `resp` came early, as
/// RFC 9112 §9.5 has a client stop only when the answer says the server
/// does not want the body and is closing: an upstream that accepted the
/// request (2xx) and keeps the connection goes on reading it (full
/// duplex); any other early answer (401, 413...) ends the upload, as that
/// upstream is unlikely to read the rest.
pub(crate) fn upload_goes_on(resp: &ResponseHead) -> bool {
    (200..300).contains(&resp.status()) && resp.keep_alive()
}

/// Sends `out` (the request head), then the client's body as `framing`
/// reads it.
async fn upload_body<G: Gateway, S: Stream>(
    w: &Worker<G>,
    (src, src_buf, src_pos): (&S, &mut Vec<u8>, &mut usize),
    up: &UpstreamStream,
    mut out: Vec<u8>,
    framing: BodyFraming,
    write_timeout: Duration,
) -> Result<(), PumpError> {
    let mut pump = Pump {
        src,
        src_buf,
        src_pos,
        reader: BodyReader::new(framing),
        sink: up,
        out: &mut out,
        chunked_out: framing == BodyFraming::Chunked,
        max_bytes: w.limits.max_body_bytes,
        read_timeout: w.limits.body_timeout,
        read_room: READ_CHUNK,
        // An upstream that stops taking the body (and does not answer)
        // is bounded like one that does not answer.
        write_timeout,
        flushed: false,
        duplex: None,
    };
    let res = pump.run().await.map(drop);
    w.buffers.give(out);
    res
}

/// What [`send_body_read_head`] got: the response head's result after the
/// whole body went up, or before it did (an early answer: the upload is
/// left where it stopped, for the caller to go on with or drop).
enum BodySent {
    Whole(Result<usize, HeadFail>),
    Unfinished(Result<usize, HeadFail>),
}

/// [`exchange`]'s path for a request with a body: the body goes up while
/// the response head is awaited. Returns the head's result, or the
/// attempt's end if the body failed.
async fn send_body_read_head(
    mut upload: Pin<&mut (dyn Future<Output = Result<(), PumpError>> + '_)>,
    up: &UpstreamStream,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    read: ResponseRead<'_>,
    interims: &mut ClientInterims<'_, impl Stream>,
) -> Result<BodySent, Attempt> {
    let ResponseRead {
        is_head,
        head_limits,
        timeouts,
        total,
    } = read;
    // The body goes up while the response head is awaited: an upstream
    // may answer (401, 413...) without reading the whole body, and must
    // not deadlock us. The response timeout starts once the body is sent.
    let clock = HeadClock::uploading(timeouts.response, total);
    let read = HeadRead {
        is_head,
        limits: head_limits,
        clock: &clock,
    };
    let head = pin!(read_response_head(up, ubuf, resp, read, interims));
    match select(upload.as_mut(), head).await {
        Either::Left((Ok(()), head)) => {
            let head = clock
                .bound(head)
                .await
                .unwrap_or(Err(HeadFail::Failed(ErrorKind::UpstreamTimeout)));
            Ok(BodySent::Whole(head))
        }
        Either::Left((Err(e), _)) => {
            // The upstream connection is dropped here, mid-request: it
            // never sees a terminating chunk and is never reused.
            let kind = body_error_kind(e);
            let answered = matches!(kind, ErrorKind::ClientClosed);
            Err(Attempt::Missed(Miss::Failed {
                error: ProxyError::new(kind),
                answered,
            }))
        }
        Either::Right((r, _)) => Ok(BodySent::Unfinished(r)),
    }
}

/// Why a request body's pump failed, as the exchange's error.
fn body_error_kind(e: PumpError) -> ErrorKind {
    match e {
        PumpError::Framing(why) => ErrorKind::BadRequestBody(why),
        PumpError::TooLarge => ErrorKind::BodyTooLarge,
        PumpError::SourceTimeout => ErrorKind::ClientTimeout,
        PumpError::SourceClosed => ErrorKind::ClientClosed,
        PumpError::SinkFailed => ErrorKind::UpstreamClosed,
        PumpError::SinkTimeout => ErrorKind::UpstreamTimeout,
    }
}

/// Reads and parses the response head into `resp`, skipping interim (1xx)
/// answers; returns the position in `ubuf` where the body starts.
pub(crate) async fn read_response_head(
    up: &UpstreamStream,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    read: HeadRead<'_>,
    interims: &mut impl Interims,
) -> Result<usize, HeadFail> {
    let HeadRead {
        is_head,
        limits,
        clock,
    } = read;
    let mut upos = 0usize;
    let mut received_any = false;
    let mut relayed = 0;
    let mut interims_read = 0;
    // An interim is a response too: its `Connection: close` (or an
    // HTTP/1.0 interim without keep-alive) ends the connection after this
    // exchange, as the final answer's would (RFC 9112 §9.6).
    let mut interims_keep_alive = true;
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
                        interims_keep_alive &= resp.keep_alive;
                        if interims_read < MAX_INTERIMS && clock.interim() {
                            interims_read += 1;
                        }
                        if relayed_interim(resp.status()) && relayed < MAX_INTERIMS {
                            relayed += 1;
                            interims.relay(resp).await;
                        }
                        continue;
                    }
                    resp.keep_alive &= interims_keep_alive;
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
        let (outcome, buf) =
            read_more(up, std::mem::take(ubuf), READ_CHUNK, clock.read_deadline()).await;
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

/// How [`read_response_head`] reads: the request was a HEAD, the limits
/// of a response head, and when the head must be complete.
#[derive(Clone, Copy)]
pub(crate) struct HeadRead<'a> {
    pub is_head: bool,
    pub limits: &'a HeadLimits,
    pub clock: &'a HeadClock,
}

/// When the wait for a response head ends: `response` after the request
/// was sent (with a body, once the whole body went up; until then the
/// wait has no deadline, the body's own timeouts bound it). Each interim
/// answer after that (the first [`MAX_INTERIMS`]) starts it again: the
/// upstream shows it is still at work, which is what `102 Processing` is
/// for (nginx's `proxy_read_timeout` and HAProxy's `timeout server` count
/// from the last bytes read too), but never past `retry total` (`total`),
/// which bounds the whole request until its head.
pub(crate) struct HeadClock {
    timeout: Duration,
    total: Option<Instant>,
    deadline: Cell<Option<Instant>>,
}

impl HeadClock {
    /// A clock for a request sent whole at `sent`.
    pub fn sent_at(sent: Instant, timeout: Duration, total: Option<Instant>) -> Self {
        HeadClock {
            timeout,
            total,
            deadline: Cell::new(Some(sent + timeout)),
        }
    }

    /// A clock for a request whose body is still going up: no deadline
    /// until [`HeadClock::bound`] starts one.
    pub fn uploading(timeout: Duration, total: Option<Instant>) -> Self {
        HeadClock {
            timeout,
            total,
            deadline: Cell::new(None),
        }
    }

    /// The deadline of a read of the head starting now.
    fn read_deadline(&self) -> Instant {
        self.deadline
            .get()
            .unwrap_or_else(|| coarse_now() + Duration::from_secs(24 * 3600))
    }

    /// An interim answer arrived: the wait starts again. Returns whether
    /// there was a wait to start again (while the body goes up there is no
    /// deadline, and such an interim counts for nothing).
    fn interim(&self) -> bool {
        let Some(deadline) = self.deadline.get() else {
            return false;
        };
        let again = coarse_now() + self.timeout;
        let again = self.total.map_or(again, |total| again.min(total));
        self.deadline.set(Some(deadline.max(again)));
        true
    }

    /// Finishes `head`, a read started while the body went up (its read in
    /// flight has no deadline), within `response` from now, and from each
    /// interim after. `None` once the upstream was silent that long.
    pub async fn bound<F: Future>(&self, mut head: Pin<&mut F>) -> Option<F::Output> {
        self.deadline.set(Some(coarse_now() + self.timeout));
        loop {
            let deadline = self.deadline.get()?;
            match crate::rt::time::within(deadline, head.as_mut()).await {
                Ok(out) => return Some(out),
                // An interim moved the deadline while this wait ran.
                Err(_) if self.deadline.get() != Some(deadline) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Where the interim (1xx) answers of an upstream go as they arrive.
/// RFC 9110 §15.2: a proxy forwards them, unless it asked for them itself
/// (the gateway answers `Expect: 100-continue` itself and does not pass it
/// on, so a `100` from the upstream is not relayed), and never to an
/// HTTP/1.0 client. 103 Early Hints is the one clients act on: the hints
/// are worth something only before the final answer, so each interim goes
/// out as it arrives.
pub(crate) trait Interims {
    /// Relays `head`, an interim answer (102-199). A client that cannot
    /// take it is left to fail on the final answer.
    async fn relay(&mut self, head: &ResponseHead);
}

/// Interim answers relayed per response at most; more are read and dropped
/// (an upstream that sends them without end is bounded by `response`).
const MAX_INTERIMS: u32 = 16;

/// Whether an interim answer of `status` is relayed (see [`Interims`]).
fn relayed_interim(status: u16) -> bool {
    (102..200).contains(&status)
}

/// Interim answers to an HTTP/1.1 client, on its connection.
struct ClientInterims<'a, S> {
    client: &'a S,
    /// The client speaks HTTP/1.1 (an HTTP/1.0 client gets none).
    http11: bool,
    /// Longest the client may take to accept one.
    write_timeout: Duration,
}

impl<S: Stream> Interims for ClientInterims<'_, S> {
    async fn relay(&mut self, head: &ResponseHead) {
        if !self.http11 {
            return;
        }
        let mut out = Vec::with_capacity(128);
        write_response_head(head, BodyFraming::None, Version::Http11, false, &mut out);
        let _ = write_all_within(self.client, &mut out, self.write_timeout).await;
    }
}

fn fail_up<G: Gateway>(w: &Worker<G>, buf: Vec<u8>, kind: ErrorKind) -> Attempt {
    w.buffers.give(buf);
    Attempt::Missed(Miss::failed(kind, false))
}

/// A request head that could not be written: the upstream closed a pooled
/// connection (stale, replayable), or took nothing for `timeouts response`
/// (its receive buffer full: a server that stopped reading).
pub(crate) fn head_write_failed(e: &std::io::Error) -> Miss {
    if e.kind() == std::io::ErrorKind::TimedOut {
        Miss::failed(ErrorKind::UpstreamTimeout, false)
    } else {
        Miss::Stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Directory;
    use crate::lb::{PoolConfig, RetryPolicy, Upstream};

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn set(retry: RetryPolicy) -> UpstreamSet {
        let up = Upstream::single("u", addr(1)).with_retry(retry);
        let dir = Directory::new(std::slice::from_ref(&up));
        let timeouts = UpstreamTimeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
        };
        UpstreamSet::new(
            &up,
            dir.upstreams().first(),
            0,
            timeouts,
            PoolConfig::default(),
        )
    }

    /// A request that starts its first try at once.
    fn started(set: &UpstreamSet, replayable: bool) -> Tries<'_> {
        let mut t = Tries::new(set, replayable);
        t.arm(t.started);
        t
    }

    #[test]
    fn retries_what_the_policy_lists_within_attempts() {
        let s = set(RetryPolicy::new(2, true, false, &[503]));
        let mut t = started(&s, true);
        assert_eq!(t.retry_statuses(), &[503]);
        assert!(!t.again(addr(1), Failure::Status(502)), "not listed");
        assert!(!t.again(addr(1), Failure::Timeout), "not listed");
        assert!(t.again(addr(1), Failure::Status(503)));
        assert!(t.is_retry());
        t.arm(Instant::now());
        assert!(t.again(addr(2), Failure::Status(503)));
        assert_eq!(t.tried, [addr(1), addr(2)]);
        // attempts=2 are spent: the third try sets nothing aside.
        t.arm(Instant::now());
        assert!(t.retry_statuses().is_empty());
        assert!(!t.again(addr(1), Failure::Status(503)));
    }

    #[test]
    fn a_request_with_a_body_is_never_retried_once_sent() {
        let s = set(RetryPolicy::new(3, true, true, &[503]));
        let mut t = started(&s, false);
        assert!(t.retry_statuses().is_empty());
        assert!(!t.again(addr(1), Failure::Status(503)));
        assert!(!t.again(addr(1), Failure::Timeout));
        assert!(!t.is_retry());
    }

    #[test]
    fn no_retry_once_the_total_deadline_passed() {
        let s = set(RetryPolicy::new(3, false, true, &[]).with_total(Duration::ZERO));
        let mut t = started(&s, true);
        assert_eq!(t.timeouts(t.started).response, Duration::ZERO);
        assert!(!t.again(addr(1), Failure::Timeout));
    }

    #[test]
    fn retries_draw_on_the_upstreams_budget() {
        let s = set(RetryPolicy::new(1, false, false, &[503]));
        let begun = Instant::now();
        let granted = (0..10)
            .filter(|_| started(&s, true).again(addr(1), Failure::Status(503)))
            .count();
        // 10 requests bank 2 retries (20 %), plus the floor of 3 a second
        // (`lb::retry::FLOOR_PER_SECOND`).
        let floor = 3 * (1 + begun.elapsed().as_secs() as usize);
        assert!((2 + 3..=2 + floor).contains(&granted), "{granted}");
    }

    #[test]
    fn a_missed_try_reports_the_upstreams_failures_and_retries_by_the_policy() {
        let s = set(RetryPolicy::new(2, false, true, &[503]));
        let ep = s
            .pick(None, Instant::now(), |_| false, |_| false)
            .unwrap_or_else(|| panic!("an endpoint"));
        let failures = |ep: &Endpoint| ep.counters(Instant::now()).failures;
        let mut t = started(&s, true);
        assert!(t.missed(&ep, false, Miss::RetryStatus(503)).is_none());
        assert_eq!(failures(&ep), 1);
        t.arm(Instant::now());
        let timeout = Miss::failed(ErrorKind::UpstreamTimeout, false);
        assert!(t.missed(&ep, false, timeout).is_none());
        assert_eq!((failures(&ep), t.tried.len()), (2, 2));
        // Attempts spent: the set-aside status is the answer.
        t.arm(Instant::now());
        let (error, answered) = t
            .missed(&ep, false, Miss::RetryStatus(503))
            .unwrap_or_else(|| panic!("no third retry"));
        assert_eq!(
            (error.kind, error.status, answered),
            (ErrorKind::UpstreamStatus, 503, false)
        );
        // A timeout after the client got bytes is never retried; a client's
        // failure is not the upstream's.
        let mut t = started(&s, true);
        let late = Miss::failed(ErrorKind::UpstreamTimeout, true);
        assert!(t.missed(&ep, false, late).is_some());
        let gone = Miss::failed(ErrorKind::ClientClosed, true);
        assert!(t.missed(&ep, false, gone).is_some());
        assert_eq!(failures(&ep), 4);
        // The keep-alive race costs no failure.
        assert!(t.missed(&ep, true, Miss::Stale).is_none());
        assert_eq!(failures(&ep), 4);
    }

    #[test]
    fn a_close_before_the_head_is_retried_only_with_reset_listed() {
        let closed = || Miss::failed(ErrorKind::UpstreamClosed, false);
        for (policy, retried) in [
            (RetryPolicy::new(2, false, false, &[502]), false),
            (RetryPolicy::new(2, false, false, &[]).on_reset(), true),
        ] {
            let s = set(policy);
            let ep = s
                .pick(None, Instant::now(), |_| false, |_| false)
                .unwrap_or_else(|| panic!("an endpoint"));
            // On a fresh connection: a close before any byte, or mid-head.
            let mut t = started(&s, true);
            assert_eq!(t.missed(&ep, false, Miss::Stale).is_none(), retried);
            let mut t = started(&s, true);
            assert_eq!(t.missed(&ep, false, closed()).is_none(), retried);
            // Never once the client got bytes, nor for a request that is
            // not replayable.
            let mut t = started(&s, true);
            let late = Miss::failed(ErrorKind::UpstreamClosed, true);
            assert!(t.missed(&ep, false, late).is_some());
            let mut t = started(&s, false);
            assert!(t.missed(&ep, false, closed()).is_some());
        }
    }

    #[test]
    fn a_stale_pooled_connection_is_replayed_once_for_replayable_requests() {
        let s = set(RetryPolicy::default());
        let mut t = started(&s, true);
        assert!(
            !t.replay_stale(false),
            "a fresh connection's close is a failure"
        );
        assert!(t.replay_stale(true));
        assert!(!t.replay_stale(true), "once");
        assert!(!started(&s, false).replay_stale(true));
    }

    #[test]
    fn an_interim_starts_the_wait_for_the_head_again() {
        let timeout = Duration::from_secs(30);
        let clock = HeadClock::sent_at(coarse_now() - Duration::from_secs(20), timeout, None);
        let before = clock.read_deadline();
        assert!(clock.interim());
        assert!(clock.read_deadline() >= before + Duration::from_secs(20));
    }

    #[test]
    fn an_interim_never_moves_the_wait_past_retry_total() {
        let timeout = Duration::from_secs(30);
        let now = coarse_now();
        let total = now + Duration::from_secs(5);
        let clock = HeadClock::sent_at(now - Duration::from_secs(28), timeout, Some(total));
        assert!(clock.interim());
        assert_eq!(clock.read_deadline(), total);
        // Nor back before where it was.
        let late = HeadClock::sent_at(now, timeout, Some(total));
        assert!(late.interim());
        assert_eq!(late.read_deadline(), now + timeout);
    }

    #[test]
    fn an_interim_while_the_body_goes_up_sets_no_deadline() {
        let clock = HeadClock::uploading(Duration::from_secs(1), None);
        assert!(!clock.interim());
        assert!(clock.deadline.get().is_none());
        assert!(clock.read_deadline() > coarse_now() + Duration::from_secs(3600));
    }
}
