//! The request pipeline: the IO shell around `crate::http`.
//!
//! Lifecycle of a client connection (one task on its worker):
//!
//! ```text
//! accept ─► wait for head (idle_timeout, or header_timeout on a new
//!           connection; on drain, a 1 s last call, then close) ─► parse (header_timeout
//!           from the first byte) ─► reject? ─► error + close
//!                  │
//!                  ▼
//!         Gateway::route ─► Gateway::request ─► Respond/Redirect ─► write
//!                  │
//!                  ▼ Proxy
//!         pooled or new upstream connection ─► head (+100-continue)
//!         ─► request body streamed ─► response head ─► Gateway::response
//!         ─► response head + body streamed ─► pool the upstream if clean
//!                  │
//!                  ▼
//!         keep-alive and not draining? ─► next request (pipelined bytes
//!         already buffered are parsed first, answers stay in order)
//! ```
//!
//! Invariants: at most one request is in flight per connection, so
//! pipelined requests are answered in order; no buffer grows past its
//! bound (head: `max_header_bytes` + 4 KiB, body transfers: fixed 16 KiB
//! pool buffers and a 64 KiB write batch); an upstream connection returns
//! to the pool only after a clean, complete exchange; after a rejected
//! request no further byte is parsed.

#![forbid(unsafe_code)]

mod conn;
pub mod error;
pub mod gateway;
#[cfg(feature = "h2")]
mod http2;
/// The HPACK check's hook for the `hpack_check` fuzz target.
#[cfg(feature = "h2")]
#[doc(hidden)]
pub use http2::fuzzing as http2_fuzzing;
mod io;
mod upstream;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::{ErrorKind, ProxyError, Side};

use crate::health::Directory;
use crate::lb::{PoolConfig, ServerCounters, UpstreamSet, UpstreamTimeouts};
use crate::rt::{BufferPool, DrainState, RequestIds};

pub(crate) use conn::serve_connection;
pub(crate) use io::UpstreamStream;

use crate::http::RequestHead;

/// Before a route's steps run: the client's own `x-forwarded-proto` goes
/// (routing has already seen it), so that one present afterwards was set
/// by a `request-headers` step, which then wins over the gateway's own
/// value (SPEC.md's example sets `x-forwarded-proto "https"`).
pub(crate) fn before_steps(req: &mut RequestHead) {
    req.headers_mut().remove("x-forwarded-proto");
}

/// RFC 9110 §7.6.2: an intermediary checks and updates `Max-Forwards` on
/// an OPTIONS or TRACE before forwarding it. Spent (0), the gateway answers
/// as the final recipient instead of proxying: OPTIONS with 200, TRACE with
/// 501 (the gateway does not reflect requests: cookies and credentials
/// would come back in the body); otherwise the count goes up lowered by
/// one. Other methods, other actions and values that are no count are
/// left as they are.
pub(crate) fn max_forwards(req: &mut RequestHead, action: gateway::Action) -> gateway::Action {
    use gateway::Action;
    use std::borrow::Cow;
    let (Action::Proxy { .. }, "OPTIONS" | "TRACE") = (&action, req.method()) else {
        return action;
    };
    // One the client's `Connection` names is hop-by-hop: not ours to
    // count down, and not forwarded.
    let count = req
        .headers()
        .get_all_end_to_end("max-forwards")
        .next()
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    match count {
        None => action,
        Some(0) if req.method() == "OPTIONS" => Action::Respond {
            status: 200,
            body: Cow::Borrowed(b""),
            content_type: "text/plain",
        },
        Some(0) => Action::Respond {
            status: 501,
            body: Cow::Borrowed(b"TRACE is not reflected\n"),
            content_type: "text/plain",
        },
        Some(n) => {
            req.headers_mut()
                .set("max-forwards", (n - 1).to_string().as_bytes());
            action
        }
    }
}

/// The `x-forwarded-proto` to send upstream: what a step set, else the
/// scheme the client used (`http` or `https`).
pub(crate) fn forwarded_proto<'a>(req: &'a RequestHead, scheme: &'a str) -> &'a str {
    req.headers()
        .get("x-forwarded-proto")
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or(scheme)
}

/// Limits and timeouts enforced on every connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed to receive a whole request head, from its first byte
    /// (and, on a new connection, from accept): then 408 and close.
    pub header_timeout: Duration,
    /// Time a keep-alive connection may wait for the next request.
    pub idle_timeout: Duration,
    /// Longest pause between two reads of a request body (then 408 and
    /// close), and longest a client may take nothing of a response body
    /// (then the connection is cut).
    pub body_timeout: Duration,
    /// Largest request head: over it, 431.
    pub max_header_bytes: usize,
    /// Most request header fields: over it, 431.
    pub max_headers: usize,
    /// Largest request body, declared or streamed: over it, 413.
    pub max_body_bytes: u64,
    /// Time allowed to connect to an upstream: then 504 (refused: 502).
    /// An upstream's own `timeouts` take precedence.
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response head after the request was
    /// sent, and longest pause inside its body: 504, or a cut connection
    /// once the response started. An upstream's own `timeouts` take
    /// precedence.
    pub response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 16384,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// Least room an upstream's response head gets, whatever the request
/// limits: responses carry more than requests (cookies, security policies).
const RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// Least number of fields an upstream's response head may have (the
/// parser's stack array).
const RESPONSE_HEADERS: usize = crate::http::parse::MAX_HEADERS_CAP;

impl Limits {
    pub(crate) fn head_limits(&self) -> crate::http::HeadLimits {
        crate::http::HeadLimits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_bytes,
        }
    }

    /// Bounds for an upstream's response head (over them: 502). The
    /// request limits say what clients may send; a gateway that takes
    /// small requests (`max-headers 10`) still relays ordinary answers, so
    /// they only ever raise these floors.
    pub(crate) fn response_head_limits(&self) -> crate::http::HeadLimits {
        crate::http::HeadLimits {
            max_header_bytes: self.max_header_bytes.max(RESPONSE_HEAD_BYTES),
            max_headers: self.max_headers.max(RESPONSE_HEADERS),
            max_body_bytes: u64::MAX,
        }
    }
}

/// Everything one worker thread owns for the pipeline: the gateway, its
/// view of the upstreams (endpoints, pools, balancers, budgets), buffers,
/// and the drain state; plus the gateway-wide [`Directory`] it reads
/// endpoint lists from on its maintenance tick.
/// The worker's open client connections: counted for the drain, and their
/// sockets known, so that those still open when the grace period ends are
/// reset rather than closed ([`OpenConnections::reset_all`]).
#[derive(Default)]
pub(crate) struct OpenConnections(RefCell<slab::Slab<std::os::fd::RawFd>>);

impl OpenConnections {
    pub(crate) fn count(&self) -> usize {
        self.0.borrow().len()
    }

    /// Counts the connection on socket `fd` until the guard drops.
    pub(crate) fn open(&self, fd: std::os::fd::RawFd) -> OpenConnection<'_> {
        let key = self.0.borrow_mut().insert(fd);
        OpenConnection { set: self, key }
    }

    /// Makes the close of every connection still open a reset (the grace
    /// period is over and they are about to be dropped): a FIN would tell
    /// a client reading a body to the close that it got the whole of it.
    pub(crate) fn reset_all(&self) {
        for (_, &fd) in self.0.borrow().iter() {
            crate::rt::process::reset_on_close(fd);
        }
    }
}

/// One connection of [`OpenConnections`].
pub(crate) struct OpenConnection<'a> {
    set: &'a OpenConnections,
    key: usize,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.set.0.borrow_mut().try_remove(self.key);
    }
}

pub(crate) struct Worker<G: gateway::Gateway> {
    pub gateway: G,
    pub upstreams: Vec<UpstreamSet>,
    pub directory: Arc<Directory>,
    pub limits: Limits,
    pub drain: DrainState,
    pub active: OpenConnections,
    pub buffers: BufferPool,
    pub ids: RequestIds,
}

impl<G: gateway::Gateway> Worker<G> {
    pub fn new(
        id: usize,
        gateway: G,
        limits: Limits,
        pool: PoolConfig,
        directory: Arc<Directory>,
    ) -> Self {
        let timeouts = UpstreamTimeouts {
            connect: limits.connect_timeout,
            response: limits.response_timeout,
        };
        let upstreams = gateway
            .upstreams()
            .iter()
            .enumerate()
            .map(|(i, u)| UpstreamSet::new(u, directory.upstreams().get(i), id, timeouts, pool))
            .collect();
        Worker {
            gateway,
            upstreams,
            directory,
            limits,
            drain: DrainState::default(),
            active: OpenConnections::default(),
            buffers: BufferPool::default(),
            ids: RequestIds::new(id),
        }
    }

    /// The periodic tick (about once a second, off the request path): adopt
    /// changed endpoint lists (DNS) and close expired idle connections.
    pub fn maintain(&self, now: Instant) {
        for (set, dir) in self.upstreams.iter().zip(self.directory.upstreams()) {
            set.refresh(dir);
        }
        for set in &self.upstreams {
            set.reap(now);
        }
    }

    /// Closes every idle upstream connection (drain).
    pub fn close_idle(&self) {
        for set in &self.upstreams {
            set.close_idle();
        }
    }

    /// This worker's per-endpoint counters, per upstream (for metrics).
    #[allow(dead_code)]
    pub fn upstream_counters(&self, now: Instant) -> Vec<(&str, Vec<ServerCounters>)> {
        self.upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.counters(now)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;
    use crate::http::RequestHead;
    use crate::lb::Upstream;
    use compio::net::TcpStream;

    struct Nothing;

    fn test_listener(addr: std::net::SocketAddr) -> crate::rt::Listener {
        crate::rt::Listener::new(crate::rt::ListenerConfig::h1("test", addr))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    impl gateway::Gateway for Nothing {
        type Route = ();
        type Ctx = ();
        fn upstreams(&self) -> Vec<Upstream> {
            Vec::new()
        }
        fn route(&self, _req: &RequestHead) {}
        fn request(&self, _route: (), _req: &mut RequestHead, _ctx: &mut ()) -> gateway::Action {
            gateway::Action::Proxy {
                upstream: 0,
                strip_prefix: None,
            }
        }
    }

    /// An idle connection costs its task (this future) plus its 4 KiB read
    /// buffer: keep the future small.
    #[test]
    fn connection_task_is_small() {
        let rt = compio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        let size = rt.block_on(async {
            let listener = compio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let stream = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let w = Rc::new(Worker::new(
                0,
                Nothing,
                Limits::default(),
                PoolConfig::default(),
                Directory::new(&[]),
            ));
            let listener = Rc::new(test_listener(addr));
            let fut = serve_connection(w, stream, addr, listener);
            std::mem::size_of_val(&fut)
        });
        log_line!("connection future: {size} bytes");
        assert!(size < 2048, "connection future is {size} bytes");
    }

    struct ToOrigin(std::net::SocketAddr);

    impl gateway::Gateway for ToOrigin {
        type Route = bool;
        type Ctx = ();
        fn upstreams(&self) -> Vec<Upstream> {
            vec![Upstream::single("origin", self.0)]
        }
        fn route(&self, req: &RequestHead) -> bool {
            req.path_only() == b"/local"
        }
        fn request(&self, local: bool, req: &mut RequestHead, _ctx: &mut ()) -> gateway::Action {
            req.headers_mut().set("x-step", b"1");
            if local {
                gateway::Action::Respond {
                    status: 200,
                    body: std::borrow::Cow::Borrowed(b"here\n"),
                    content_type: "text/plain",
                }
            } else {
                gateway::Action::Proxy {
                    upstream: 0,
                    strip_prefix: Some("/api"),
                }
            }
        }
        fn response(&self, _local: bool, resp: &mut crate::http::ResponseHead, _ctx: &mut ()) {
            resp.headers_mut().append("x-resp-step", b"2");
        }
    }

    /// The IO shell end to end, in memory of one runtime: pipelined
    /// requests answered in order, a pooled upstream connection, the
    /// upstream's close-delimited body re-framed as chunked, request and
    /// response steps applied, proxy fields added.
    #[test]
    fn pipelined_requests_through_a_pooled_upstream() {
        use compio::io::{AsyncReadExt, AsyncWriteExt};
        use compio::net::TcpListener;
        use std::cell::RefCell;

        let rt = compio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let origin = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
            let origin_addr = origin.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let seen = Rc::new(RefCell::new(Vec::<String>::new()));
            let conns = Rc::new(Cell::new(0));
            {
                let (seen, conns) = (Rc::clone(&seen), Rc::clone(&conns));
                compio::runtime::spawn(async move {
                    while let Ok((mut s, _)) = origin.accept().await {
                        conns.set(conns.get() + 1);
                        let seen = Rc::clone(&seen);
                        compio::runtime::spawn(async move {
                            let mut buf = Vec::with_capacity(4096);
                            loop {
                                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                                    let head = String::from_utf8_lossy(&head).into_owned();
                                    let last = head.contains("/last");
                                    seen.borrow_mut().push(head);
                                    let answer: &'static [u8] = if last {
                                        // Close-delimited: no length, no chunks.
                                        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close"
                                    } else {
                                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: x-hop\r\nx-hop: 1\r\n\r\nok\n"
                                    };
                                    let _ = s.write_all(answer).await;
                                    if last {
                                        return;
                                    }
                                }
                                buf.reserve(4096);
                                let compio::BufResult(r, b) = s.append(std::mem::take(&mut buf)).await;
                                buf = b;
                                if !matches!(r, Ok(n) if n > 0) {
                                    return;
                                }
                            }
                        })
                        .detach();
                    }
                })
                .detach();
            }

            let gw = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
            let gw_addr = gw.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let gateway = ToOrigin(origin_addr);
            let directory = Directory::new(&gateway::Gateway::upstreams(&gateway));
            let worker = Rc::new(Worker::new(0, gateway, Limits::default(), PoolConfig::default(), directory));
            let listener = Rc::new(test_listener(gw_addr));
            compio::runtime::spawn(async move {
                while let Ok((s, peer)) = gw.accept().await {
                    compio::runtime::spawn(serve_connection(Rc::clone(&worker), s, peer, Rc::clone(&listener))).detach();
                }
            })
            .detach();

            let mut client = TcpStream::connect(gw_addr).await.unwrap_or_else(|e| panic!("{e}"));
            let requests: &'static [u8] = b"GET /api/one HTTP/1.1\r\nHost: a.test\r\nConnection: x-secret\r\nX-Secret: s\r\n\r\n\
GET /local HTTP/1.1\r\nHost: a.test\r\n\r\n\
GET /api/two?q=1 HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: keep-me\r\n\r\n\
GET /last HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
            let compio::BufResult(r, _) = client.write_all(requests).await;
            r.unwrap_or_else(|e| panic!("{e}"));
            let compio::BufResult(r, got) = client.read_to_end(Vec::new()).await;
            r.unwrap_or_else(|e| panic!("{e}"));
            let got = String::from_utf8_lossy(&got).into_owned();
            // Every answer is dated (the origin here sends no Date).
            let dated = got.matches("\r\ndate: ").count();
            assert_eq!(dated, 4, "{got}");
            let got: String = got.split_inclusive("\r\n").filter(|l| !l.starts_with("date: ")).collect();

            let expected = "HTTP/1.1 200 OK\r\nx-resp-step: 2\r\ncontent-length: 3\r\n\r\nok\n\
HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-resp-step: 2\r\ncontent-length: 5\r\n\r\nhere\n\
HTTP/1.1 200 OK\r\nx-resp-step: 2\r\ncontent-length: 3\r\n\r\nok\n\
HTTP/1.1 200 OK\r\nx-resp-step: 2\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nb\r\nuntil close\r\n0\r\n\r\n";
            assert_eq!(got, expected);
            assert_eq!(conns.get(), 1, "one pooled upstream connection served all");
            let seen = seen.borrow();
            assert_eq!(seen.len(), 3);
            assert!(seen[0].starts_with("GET /one HTTP/1.1\r\nhost: a.test\r\n"), "{}", seen[0]);
            assert!(seen[0].contains("x-step: 1\r\n") && seen[0].contains("via: 1.1 blitz\r\n"), "{}", seen[0]);
            assert!(seen[0].contains("x-forwarded-for: 127.0.0.1\r\n"), "{}", seen[0]);
            assert!(!seen[0].to_ascii_lowercase().contains("secret"), "{}", seen[0]);
            assert!(seen[1].starts_with("GET /two?q=1 HTTP/1.1\r\n") && seen[1].contains("x-request-id: keep-me\r\n"), "{}", seen[1]);
        });
    }
}
