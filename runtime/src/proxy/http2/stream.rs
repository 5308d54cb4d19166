//! One HTTP/2 stream: translate its head, run the gateway's phases
//! (route, request steps, action, response steps, logging) exactly as for
//! an HTTP/1.1 request, and answer locally or through
//! [`super::exchange`].

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::Request;

use super::exchange::{Outcome, proxy_stream};
use super::translate::{Refused, local_head, request_head};
use super::{StreamEnd, StreamEnds};
use crate::http::{LocalFields, RequestHead, local_body};
use crate::proxy::Worker;
use crate::proxy::conn::error_body;
use crate::proxy::conn::local_response_steps;
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::proxy::gateway::{Action, Gateway, RequestLog};
use crate::rt::time::{coarse_now, within};

/// What of a request body is still read and dropped after its answer went
/// out (a 413, an upstream's early answer, a local answer), and for how
/// long: the HTTP/2 counterpart of HTTP/1.1's lingering close. Past either
/// bound the stream is reset (NO_ERROR, RFC 9113 §8.1).
const DISCARD_BYTES: usize = 1024 * 1024;
const DISCARD_TIME: Duration = Duration::from_secs(1);

/// Serves one stream to its end; errors are answered or reset here. Its
/// end is told to the connection's `ends`.
pub(crate) async fn serve_stream<G: Gateway>(
    w: Rc<Worker<G>>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    proto: &'static str,
    ends: Rc<StreamEnds>,
) {
    let opened = coarse_now();
    let (parts, mut body) = request.into_parts();
    let end = answer(&w, parts, &mut body, &mut respond, peer, proto).await;
    ends.record(end, coarse_now().saturating_duration_since(opened));
    if !body.is_end_stream() {
        discard_rest(&mut body).await;
    }
}

/// Reads and drops the rest of a request body whose answer was sent, so
/// the client finishes its upload and reads the answer as complete. A
/// reset instead (what dropping the body does) is legal but some clients
/// (curl 7.88) then report the answer they received as a failed transfer.
async fn discard_rest(body: &mut RecvStream) {
    let deadline = Instant::now() + DISCARD_TIME;
    let mut discarded = 0;
    while discarded < DISCARD_BYTES {
        match within(deadline, body.data()).await {
            Ok(Some(Ok(chunk))) => {
                discarded += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            _ => return,
        }
    }
}

/// Translates, routes and answers one stream (locally or by proxying).
async fn answer<G: Gateway>(
    w: &Rc<Worker<G>>,
    parts: http::request::Parts,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    peer: SocketAddr,
    proto: &'static str,
) -> StreamEnd {
    let mut req = RequestHead::default();
    let mut scratch = w.buffers.take();
    let translated = request_head(
        &parts,
        body.is_end_stream(),
        &w.limits.head_limits(),
        &mut scratch,
        &mut req,
    );
    w.buffers.give(scratch);
    let head_only = parts.method == http::Method::HEAD;
    drop(parts);
    if let Err(Refused { status, why }) = translated {
        let kind = match status {
            431 | 414 => ErrorKind::HeadTooLarge,
            413 => ErrorKind::BodyTooLarge,
            _ => ErrorKind::BadRequest(why),
        };
        let err = ProxyError::with_status(kind, status);
        let sent = send_error(respond, status, head_only);
        let mut ctx = G::Ctx::default();
        w.gateway.logging(
            None,
            &RequestLog {
                status: if sent { status } else { 0 },
                error: Some(&err),
            },
            &mut ctx,
        );
        return StreamEnd::Done;
    }
    req.client = Some(peer);
    let route = w.gateway.route(&req);
    crate::proxy::before_steps(&mut req);
    let mut ctx = G::Ctx::default();
    let action = w.gateway.request(route, &mut req, &mut ctx);
    let action = crate::proxy::max_forwards(&mut req, action);
    let mut stalled = false;
    let (status, error) = match action {
        Action::Respond {
            status,
            body: content,
            content_type,
        } => {
            let own = (Some(content_type), None);
            let fields = local_response_steps(w, route, status, own, &mut ctx);
            let ok = send_local(
                respond,
                status,
                LocalFields::Stepped(&fields),
                content,
                req.is_head(),
            );
            local_outcome(ok, status)
        }
        Action::Redirect { location, status } => {
            let own = (None, Some(location.as_bytes()));
            let fields = local_response_steps(w, route, status, own, &mut ctx);
            let empty = std::borrow::Cow::Borrowed(&b""[..]);
            let ok = send_local(
                respond,
                status,
                LocalFields::Stepped(&fields),
                empty,
                req.is_head(),
            );
            local_outcome(ok, status)
        }
        Action::Proxy {
            upstream,
            strip_prefix,
        } => {
            let outcome = proxy_stream(
                w,
                &mut req,
                body,
                respond,
                route,
                &mut ctx,
                upstream,
                strip_prefix,
                peer,
                proto,
            )
            .await;
            match outcome {
                Outcome::Done { status } => (status, None),
                Outcome::Failed { error, answered } => {
                    stalled = answered && error.kind == ErrorKind::ClientTimeout;
                    let status = if answered {
                        0
                    } else if send_error(respond, error.status, req.is_head()) {
                        error.status
                    } else {
                        0
                    };
                    (status, Some(error))
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
    if stalled {
        StreamEnd::Stalled
    } else if error.is_some_and(|e| e.kind == ErrorKind::ClientClosed) {
        StreamEnd::ResetByClient
    } else {
        StreamEnd::Done
    }
}

fn local_outcome(ok: bool, status: u16) -> (u16, Option<ProxyError>) {
    if ok {
        (status, None)
    } else {
        (0, Some(ProxyError::new(ErrorKind::ClientWrite)))
    }
}

/// Sends a whole local answer; the body is small and already in memory.
/// False when the stream is gone.
fn send_local(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    fields: LocalFields<'_>,
    body: std::borrow::Cow<'static, [u8]>,
    head_only: bool,
) -> bool {
    let length = local_body(status, &body).len();
    let head = local_head(status, fields, length);
    let empty = head_only || length == 0;
    let Ok(mut send) = respond.send_response(head, empty) else {
        return false;
    };
    if empty {
        return true;
    }
    let data = match body {
        std::borrow::Cow::Borrowed(b) => Bytes::from_static(b),
        std::borrow::Cow::Owned(v) => Bytes::from(v),
    };
    // Local bodies are small: the stream's send buffer holds them while
    // the client's window opens (h2 queues them; no capacity wait).
    send.send_data(data, true).is_ok()
}

/// The runtime's short error answer (400, 502, 504...).
fn send_error(respond: &mut SendResponse<Bytes>, status: u16, head_only: bool) -> bool {
    let own = LocalFields::Own {
        content_type: Some("text/plain"),
        location: None,
    };
    let body = std::borrow::Cow::Borrowed(error_body(status));
    let sent = send_local(respond, status, own, body, head_only);
    if !sent {
        respond.send_reset(Reason::INTERNAL_ERROR);
    }
    sent
}
