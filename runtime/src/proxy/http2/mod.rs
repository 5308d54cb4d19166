//! HTTP/2 downstream: one client connection speaking HTTP/2 (`h2c` by
//! prior knowledge, or `h2` chosen by ALPN over TLS), its streams proxied
//! to the HTTP/1.1 upstreams over the worker's pool.
//!
//! The `h2` crate does the framing, HPACK, flow control and stream states;
//! it runs over the TCP or TLS stream through [`io::H2Io`] (compio's
//! completion-based I/O behind tokio's io traits). The connection's task
//! accepts streams (which drives all its IO) and spawns each stream's
//! exchange as its own task, keeping the handles ([`StreamTasks`]): when
//! the connection ends, every stream ends with it.
//!
//! ```text
//! preface + SETTINGS (header_timeout) ─► accept streams ──► per stream:
//!   h2 head ─► HTTP/1.1 head (translate.rs, parsed by crate::http as if
//!   received) ─► route ─► request steps ─► respond | redirect | proxy
//!   (exchange.rs: pooled upstream, body both ways under flow control)
//!   ─► logging
//! every read: frame watch ─► stop: GOAWAY(its code), close
//! tick (1 s): new control-frame budget, idle_timeout (no request, PINGs
//!   or not), header-block timeout, the client's SETTINGS after its
//!   preface, closing deadline
//! drain: GOAWAY, streams in flight finish, then close
//! ```
//!
//! Every limit of the `h2` crate is set in [`builder`], each with its
//! reason; what the crate does not bound (SETTINGS and PING floods, a
//! trickled header block, unknown frames) is bounded by [`watch::FrameWatch`]
//! and the tick. The watch also answers the protocol errors for which the
//! crate's GOAWAY(PROTOCOL_ERROR) is not the code RFC 9113 names (frame
//! sizes, SETTINGS_INITIAL_WINDOW_SIZE, frames on streams the client
//! closed): it stops before the crate sees the frame.

#![forbid(unsafe_code)]

mod exchange;
#[doc(hidden)]
pub mod fuzzing;
mod hpack_check;
pub(crate) mod io;
mod stream;
mod translate;
mod watch;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use slab::Slab;

use super::conn::wait_opening;
use super::gateway::Gateway;
use super::{Limits, Worker};
use io::H2Io;
pub(crate) use io::Transport;
use watch::FrameWatch;
pub(crate) use watch::PREFACE;

/// Streams a client may have open at once. RFC 9113 §6.5.2 advises at
/// least 100 so browsers are not held back; every open stream may hold an
/// upstream connection, a 16 KiB read buffer and up to
/// [`MAX_SEND_BUFFER`] of response, so this also bounds a connection's
/// memory (about 8 MiB at worst).
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Request-body window per stream: what a client may send ahead of the
/// upstream reading it. 256 KiB keeps uploads fast over real RTTs.
pub(crate) const STREAM_WINDOW: u32 = 256 * 1024;

/// Request-body window for the whole connection: the most request body
/// buffered in the gateway for one connection, whatever the streams.
pub(crate) const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Largest frame payload we accept: the protocol minimum. Larger frames
/// only make each buffered frame bigger; 16 KiB is also our read chunk.
pub(crate) const MAX_FRAME_SIZE: u32 = 16 * 1024;

/// HPACK dynamic table the client may use (its SETTINGS_HEADER_TABLE_SIZE
/// from us). The RFC default; the table's memory is bounded by it.
pub(crate) const HEADER_TABLE_SIZE: u32 = 4096;

/// Response bytes buffered per stream before the client's window opens:
/// a zero-window reader holds at most this much per stream, and the
/// upstream is not read further until it drains (then `body_timeout`
/// resets the stream).
pub(crate) const MAX_SEND_BUFFER: usize = 64 * 1024;

/// Locally reset streams remembered (to ignore their late frames) and for
/// how long: the crate's defaults, kept on purpose. 50 bounds the state;
/// one second covers a round trip on any sane link.
pub(crate) const MAX_RESET_STREAMS: usize = 50;
pub(crate) const RESET_STREAM_DURATION: Duration = Duration::from_secs(1);

/// Streams reset by the client before we accepted them (rapid reset,
/// CVE-2023-44487): over this, GOAWAY(ENHANCE_YOUR_CALM). We accept as
/// fast as frames arrive, so a legitimate client never gets near 20.
pub(crate) const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Rapid reset paced under the per-tick control budget (a few streams
/// opened and reset every few milliseconds, as over a real network): each
/// reset frees a stream slot at no cost to the client while the work it
/// started upstream is thrown away. Envoy's rule and defaults: a stream
/// the client resets within [`PREMATURE_RESET_LIFETIME`] of opening it is
/// premature; the connection gets GOAWAY(ENHANCE_YOUR_CALM) once half of
/// its ended streams, counted over at least [`PREMATURE_RESET_STREAMS`],
/// were (so 250 premature resets end any connection). Clients cancel a
/// stream now and then, never most of them.
pub(crate) const PREMATURE_RESET_LIFETIME: Duration = Duration::from_secs(1);
pub(crate) const PREMATURE_RESET_STREAMS: u64 = 500;

/// Streams we had to reset for the client's protocol errors before the
/// connection gets GOAWAY(ENHANCE_YOUR_CALM): a correct client makes none.
pub(crate) const MAX_LOCAL_ERROR_RESETS: usize = 128;

/// Budget for the overhead of tiny DATA frames buffered at once (the
/// crate's "half the connection window" made explicit).
pub(crate) const DATA_FRAME_BUDGET: usize = CONNECTION_WINDOW as usize / 2;

/// Period of the connection loop's checks (budget, idle, header block).
const TICK: Duration = Duration::from_secs(1);

/// Time allowed to flush a GOAWAY and close once we decided to end the
/// connection: a client that does not read cannot keep it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The `h2` server configuration: every limit set deliberately (see the
/// constants above and docs/architecture.md, "HTTP/2").
pub(crate) fn builder(limits: &Limits) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .header_table_size(HEADER_TABLE_SIZE)
        .max_header_list_size(max_header_list_size(limits))
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_reset_streams(MAX_RESET_STREAMS)
        .reset_stream_duration(RESET_STREAM_DURATION)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .data_frame_budget(DATA_FRAME_BUDGET);
    b
}

/// The `h2` crate's bound on a decoded header list: the largest list, in
/// HPACK's accounting, of a request whose HTTP/1.1 head passes the spec's
/// `max-header-bytes` and `max-headers`, so the crate never refuses (with
/// its own 431) a request the exact check after translation would take.
/// It is a memory bound, not the policy: a block past four times this
/// ends the connection (the crate's HPACK-bomb rule), and fields over it
/// are decoded without being kept.
///
/// HPACK counts name + value + 32 per field (RFC 9113 §6.5.2), pseudo-
/// headers included; the HTTP/1.1 head counts name + value + 4 per line and
/// joins cookie crumbs into one line with `"; "` (translate.rs). Beyond the
/// head's own bytes, a list may therefore carry:
/// - 28 bytes per field line (32 against `": "` and CRLF);
/// - 36 bytes per cookie crumb (32 and `cookie` against `"; "`), and a
///   crumb adds at least those 2 bytes to the head, so at most
///   `max-header-bytes / 2` + 1 crumbs (browsers send a crumb per cookie:
///   a few hundred short cookies are a real head, within an HTTP/1.1 limit);
/// - the pseudo-headers' names and overhead against the request line and
///   `host` line (under 256).
///
/// A `host` field beside `:authority` costs the head nothing (it is
/// dropped); only such requests can meet this bound within the limits.
pub(crate) fn max_header_list_size(limits: &Limits) -> u32 {
    const PER_FIELD: usize = 32 - 4;
    const PER_CRUMB: usize = 32 + "cookie".len() - "; ".len();
    const PSEUDO_HEADERS: usize = 256;
    let head = limits.max_header_bytes;
    let crumbs = head / 2 + 1;
    let bytes = head
        .saturating_add(PER_FIELD.saturating_mul(limits.max_headers))
        .saturating_add(PER_CRUMB.saturating_mul(crumbs))
        .saturating_add(PSEUDO_HEADERS);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// How a stream's answer ended, as its connection's [`StreamEnds`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Answered, or refused (the usual end).
    Done,
    /// The client reset the stream (or left) before the answer was complete.
    ResetByClient,
    /// The response had started and the client took none of it within
    /// `body_timeout` (a window kept closed, or a socket not read).
    Stalled,
}

/// A connection's ended streams: how many, how many of them the client
/// reset prematurely (see [`PREMATURE_RESET_STREAMS`]), and whether one
/// stalled since the last tick (a zero-window reader, see [`serve_h2`]).
#[derive(Debug, Default)]
pub(crate) struct StreamEnds {
    ended: Cell<u64>,
    premature: Cell<u64>,
    stalled: Cell<bool>,
}

impl StreamEnds {
    /// A stream ended as `end`, `lived` after it was opened.
    pub(crate) fn record(&self, end: StreamEnd, lived: Duration) {
        let premature = end == StreamEnd::ResetByClient && lived < PREMATURE_RESET_LIFETIME;
        self.ended.set(self.ended.get() + 1);
        self.premature
            .set(self.premature.get() + u64::from(premature));
        if end == StreamEnd::Stalled {
            self.stalled.set(true);
        }
    }

    /// Whether a stream was reset for a closed window since the last call.
    fn take_stalled(&self) -> bool {
        self.stalled.replace(false)
    }

    /// Whether the client's resets call for GOAWAY(ENHANCE_YOUR_CALM).
    fn too_many(&self) -> bool {
        self.premature.get() * 2 >= self.ended.get().max(PREMATURE_RESET_STREAMS)
    }
}

/// Ends the connection with GOAWAY(`reason`), flushed before the close
/// (the crate's abrupt shutdown), unless that is under way already.
fn end_abruptly(
    conn: &mut h2::server::Connection<H2Io, Bytes>,
    closing: &mut Closing,
    reason: Reason,
) {
    if *closing != Closing::Abrupt {
        conn.abrupt_shutdown(reason);
        *closing = Closing::Abrupt;
    }
}

/// Why the connection loop stopped accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Still serving.
    No,
    /// GOAWAY(NO_ERROR) sent: streams in flight finish (drain, idle).
    Graceful,
    /// GOAWAY with an error sent: close once it is flushed.
    Abrupt,
}

/// Serves one HTTP/2 connection over `io` until it closes. `prefix` holds
/// bytes already read from `io` (the sniffed preface); `secure` says
/// whether `io` is TLS (`x-forwarded-proto: https`).
pub(crate) async fn serve_h2<G: Gateway>(
    w: Rc<Worker<G>>,
    io: Transport,
    prefix: Vec<u8>,
    peer: SocketAddr,
    listener: Rc<crate::rt::Listener>,
    secure: bool,
) {
    let _ = &listener;
    let watch = Rc::new(FrameWatch::default());
    let transport = Rc::new(io);
    let io = H2Io::new(Rc::clone(&transport), prefix, Rc::clone(&watch));
    let handshake = builder(&w.limits).handshake::<_, Bytes>(io);
    let handshake = pin!(crate::rt::time::within_for(
        w.limits.header_timeout,
        handshake
    ));
    // Not HTTP/2, too slow, gone, or quiet through a drain's last call:
    // nothing to answer.
    let Some(Ok(Ok(mut conn))) = wait_opening(&w, handshake, || watch.received_any()).await else {
        return;
    };
    let proto = if secure { "https" } else { "http" };
    let mut streams = StreamTasks::default();
    let ends = Rc::new(StreamEnds::default());
    let drain = pin!(w.drain.wait());
    let mut drain = drain;
    let mut tick = pin!(crate::rt::time::sleep(TICK));
    let mut closing = Closing::No;
    let mut closing_ticks = 0u32;
    let mut idle_ticks = 0u32;
    let mut header_block_ticks = 0u32;
    let mut last_block = None;
    // A TLS record begun with no stream open, and ticks it has taken.
    let (mut last_record, mut record_ticks) = (None, 0u32);
    let mut preface_ticks = 0u32;
    // DATA frames written so far, and ticks since that count last moved.
    let (mut data_sent, mut quiet_ticks) = (0u64, 0u32);
    let ticks_of = |d: Duration| (d.as_millis() / TICK.as_millis()).max(1) as u32;
    let idle_limit = ticks_of(w.limits.idle_timeout);
    let header_limit = ticks_of(w.limits.header_timeout);
    let body_limit = ticks_of(w.limits.body_timeout);
    let close_limit = ticks_of(CLOSE_GRACE);

    enum Event<T> {
        Accepted(T),
        Closed,
        /// The watch stopped reads: a frame broke a rule or a budget.
        Stop(Reason),
        Drain,
        Tick,
    }
    loop {
        let event = {
            let mut accept = pin!(conn.accept());
            std::future::poll_fn(|cx| {
                match accept.as_mut().poll(cx) {
                    Poll::Ready(Some(Ok(s))) => return Poll::Ready(Event::Accepted(s)),
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Event::Closed),
                    Poll::Pending => {}
                }
                // The accept poll did the reads: a stop is seen right
                // after the read that made it (which wakes nothing).
                if let Some(reason) = watch.stop()
                    && closing != Closing::Abrupt
                {
                    return Poll::Ready(Event::Stop(reason));
                }
                if closing == Closing::No && drain.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
                if tick.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Tick);
                }
                Poll::Pending
            })
            .await
        };
        match event {
            Event::Accepted((mut req, respond)) => {
                if watch.take_path_fragment(respond.stream_id().into()) {
                    req.extensions_mut().insert(translate::PathFragment);
                }
                streams.spawn(stream::serve_stream(
                    Rc::clone(&w),
                    req,
                    respond,
                    peer,
                    proto,
                    Rc::clone(&ends),
                ));
                // Checked as streams come: the tick would let a paced
                // attack run for up to a second more.
                if ends.too_many() {
                    end_abruptly(&mut conn, &mut closing, Reason::ENHANCE_YOUR_CALM);
                }
            }
            Event::Closed => break,
            Event::Stop(reason) => {
                // The h2 crate never saw the offending frame: this GOAWAY
                // is the only answer, flushed before the close.
                end_abruptly(&mut conn, &mut closing, reason);
            }
            Event::Drain => {
                conn.graceful_shutdown();
                closing = Closing::Graceful;
            }
            Event::Tick => {
                tick.set(crate::rt::time::sleep(TICK));
                let requested = watch.tick();
                if !watch.preface_complete() {
                    preface_ticks += 1;
                    if preface_ticks > header_limit {
                        // The preface came without the SETTINGS frame that
                        // must follow it: the handshake is not done in
                        // time, nothing to answer (as for a slow preface).
                        break;
                    }
                }
                let arriving = watch.header_block_arriving();
                header_block_ticks = match arriving {
                    Some(_) if arriving == last_block => header_block_ticks + 1,
                    Some(_) => 1,
                    None => 0,
                };
                last_block = arriving;
                if header_block_ticks > header_limit {
                    // One header block trickled (in CONTINUATION frames, or
                    // inside one frame): its request is not complete in
                    // time, and in the CONTINUATION case the connection
                    // can do nothing else meanwhile.
                    end_abruptly(&mut conn, &mut closing, Reason::ENHANCE_YOUR_CALM);
                }
                // Over TLS, the frames of a next request can sit in a record
                // not finished yet, where the frame watch cannot see them:
                // with no stream open, that record is held to header-timeout
                // as a header block is (a body's records, with a stream
                // open, to the body's own timeouts).
                let record = transport.unfinished_record().filter(|_| streams.is_empty());
                record_ticks = match record {
                    Some(_) if record == last_record => record_ticks + 1,
                    Some(_) => 1,
                    None => 0,
                };
                last_record = record;
                if record_ticks > header_limit && closing == Closing::No {
                    end_abruptly(&mut conn, &mut closing, Reason::ENHANCE_YOUR_CALM);
                }
                let sent = watch.data_frames_sent();
                quiet_ticks = if sent == data_sent {
                    quiet_ticks + 1
                } else {
                    0
                };
                data_sent = sent;
                if ends.take_stalled() && quiet_ticks >= body_limit {
                    // A zero-window reader (RELIABILITY.md): a stream was
                    // reset for a window kept closed past body_timeout, and
                    // no other stream took a DATA frame meanwhile. A client
                    // that holds back one stream while reading others keeps
                    // its connection; one that reads nothing loses it.
                    end_abruptly(&mut conn, &mut closing, Reason::ENHANCE_YOUR_CALM);
                }
                // Idle: no stream in flight and none opened; frames that
                // are no request (PINGs...) do not keep a connection.
                idle_ticks = if requested || !streams.is_empty() {
                    0
                } else {
                    idle_ticks + 1
                };
                if idle_ticks >= idle_limit && closing == Closing::No {
                    conn.graceful_shutdown();
                    closing = Closing::Graceful;
                }
                match closing {
                    Closing::No => {}
                    // Graceful: streams in flight have their own timeouts;
                    // once none is left, the GOAWAY only needs flushing.
                    Closing::Graceful if !streams.is_empty() => {}
                    Closing::Graceful => {
                        closing_ticks += 1;
                        if closing_ticks > close_limit {
                            // The crate's final GOAWAY (the last stream it
                            // processed, RFC 9113 §6.8) waits for the ack
                            // of its shutdown PING, which this client never
                            // sent: send it now, then close once flushed.
                            end_abruptly(&mut conn, &mut closing, Reason::NO_ERROR);
                            closing_ticks = 0;
                        }
                    }
                    Closing::Abrupt => {
                        closing_ticks += 1;
                        if closing_ticks > close_limit {
                            break;
                        }
                    }
                }
            }
        }
    }
    // Dropping the connection cancels what is left of its streams and
    // closes the socket.
    drop(streams);
    drop(conn);
}

/// A connection's streams, each its own task on the worker: a stream whose
/// upstream answered is polled alone, not with the connection and every
/// other stream (as in one task with a `FuturesUnordered`, whose every
/// wake re-polled the connection). The connection holds their handles:
/// dropping them cancels the streams, so none outlives its connection.
#[derive(Default)]
struct StreamTasks {
    handles: Slab<compio::runtime::JoinHandle<()>>,
    /// Keys of the streams that ended, for their handles to be dropped.
    ended: Rc<RefCell<Vec<usize>>>,
}

/// Reports a stream's end (finished or cancelled) to its [`StreamTasks`].
struct Ended {
    key: usize,
    ended: Rc<RefCell<Vec<usize>>>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.ended.borrow_mut().push(self.key);
    }
}

impl StreamTasks {
    fn spawn(&mut self, stream: impl std::future::Future<Output = ()> + 'static) {
        self.forget_ended();
        let ended = Ended {
            key: self.handles.vacant_key(),
            ended: Rc::clone(&self.ended),
        };
        // Boxed first: the stream's future is large (about 4 KiB), and
        // spawning moves what it is given several times.
        let stream = Box::pin(stream);
        let task = compio::runtime::spawn(async move {
            let _ended = ended;
            stream.await;
        });
        self.handles.insert(task);
    }

    /// Whether no stream is in flight.
    fn is_empty(&mut self) -> bool {
        self.forget_ended();
        self.handles.is_empty()
    }

    fn forget_ended(&mut self) {
        for key in self.ended.borrow_mut().drain(..) {
            self.handles.try_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(ended: u64, premature: u64) -> StreamEnds {
        let t = StreamEnds::default();
        for i in 0..ended {
            let end = if i < premature {
                StreamEnd::ResetByClient
            } else {
                StreamEnd::Done
            };
            t.record(end, Duration::ZERO);
        }
        t
    }

    #[test]
    fn premature_resets_end_a_connection_at_half_its_streams() {
        assert!(!tally(0, 0).too_many());
        assert!(
            !tally(249, 249).too_many(),
            "under 250 resets, however few streams"
        );
        assert!(tally(250, 250).too_many());
        assert!(!tally(600, 200).too_many(), "a third of the streams");
        assert!(!tally(1000, 499).too_many());
        assert!(tally(1000, 500).too_many());
    }
}
