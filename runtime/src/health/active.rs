//! The active health checker: one scheduler thread for the whole gateway,
//! and one short-lived thread per check in flight.
//!
//! Each endpoint of an upstream with a `health-check` has its own
//! schedule, as each server has its own check timer in HAProxy and Envoy:
//! its next check is due `interval` after its last one ended. A check is
//! `GET path HTTP/1.1` (`connection: close`) on a new connection, within
//! `timeout` for connect (and TLS handshake) + the response head, read as
//! the proxy reads one (interim 1xx heads skipped; a head cut short or
//! one the proxy refuses is a failure). A server the
//! workers reach over TLS is checked over TLS too, with the same
//! verification, SNI and CA file: in cleartext a TLS server answers no
//! HTTP, and every check would fail. A status in `expect` (default 2xx
//! and 3xx) is a success; anything else (refused, timeout, other status,
//! garbage) a failure. `unhealthy` failures in a row mark a healthy
//! endpoint down, `healthy` successes in a row mark a down endpoint up
//! again. Endpoints start up (a gateway serves at once), and each is first
//! checked as soon as it exists. Each change is logged on stderr.
//!
//! Why a thread per check rather than one round for all: a check waits up
//! to its `timeout` (a server that accepts and never answers takes all of
//! it), and a round waits for its slowest check, so one upstream's long
//! timeout would hold every other endpoint's checks past their interval
//! and a dead server elsewhere would be marked down late. The scheduler
//! never waits on a check: it starts the ones that are due on their own
//! threads (at most one in flight per endpoint, so the threads are bounded
//! by the endpoints) and takes their verdicts from a channel. The checks
//! stay the blocking `std` client (a few lines easy to trust), with no
//! async runtime of their own; a thread per check costs microseconds,
//! checks come every `interval` per endpoint.
//!
//! Counts belong to an endpoint's state object, not to its address: an
//! address DNS removes and later re-adds is a new endpoint
//! ([`super::UpstreamDirectory::update_server`]) and starts fresh, as a
//! server of a newly started gateway does: up, with no failed or passed
//! check counted (HAProxy and Envoy forget a removed server too).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{Directory, EndpointState};
use crate::http::HeadLimits;
use crate::lb::{HealthCheck, Server, ServerAddress};

/// Longest the scheduler sleeps: how soon it sees a stop or a DNS change.
const POLL: Duration = Duration::from_millis(100);

/// How the checker talks to one spec server: as the workers do.
#[derive(Debug)]
pub enum Transport {
    Plain,
    #[cfg(feature = "tls")]
    Tls(crate::tls::UpstreamTls),
    /// TLS that cannot be set up (an SNI that is not a server name; the
    /// workers log why): every check fails. (A CA file that does not load
    /// is a `Tls` whose connections fail until a SIGHUP loads it.)
    #[cfg(feature = "tls")]
    Unusable,
}

impl Transport {
    /// The transport of `server`.
    pub fn of(server: &Server) -> Transport {
        #[cfg(feature = "tls")]
        if let Some(tls) = &server.tls {
            return crate::tls::UpstreamTls::new(tls).map_or(Transport::Unusable, Transport::Tls);
        }
        let _ = server;
        Transport::Plain
    }
}

/// The `Host` a check of `server` sends: the name the spec gives it (a DNS
/// name, else the `sni` of a TLS server), so a server that picks its site
/// by name answers the check for the name the spec knows it by (requests
/// themselves carry the client's `Host`);
/// the port is left out when it is the scheme's default. `None` for a
/// server given by address alone (with TLS, one whose `sni` is its IP):
/// each endpoint's `IP:port` then, an IPv6 address in brackets.
pub fn host_of(server: &Server) -> Option<String> {
    // A TLS server given by address without `sni=` verifies its IP: no name.
    let sni = server
        .tls
        .as_ref()
        .map(|t| t.sni.as_str())
        .filter(|sni| sni.parse::<std::net::IpAddr>().is_err());
    let (name, port) = match &server.address {
        ServerAddress::Dns { host, port } => (host.as_str(), *port),
        ServerAddress::Ip(addr) => (sni?, addr.port()),
    };
    let default_port = if server.tls.is_some() { 443 } else { 80 };
    Some(if port == default_port {
        name.to_string()
    } else {
        format!("{name}:{port}")
    })
}

/// One endpoint's checks: its schedule and its counts.
#[derive(Debug)]
struct Track {
    /// The endpoint; holding it keeps its address (the track's key) from
    /// being reused by another state object while the track lives.
    ep: Arc<EndpointState>,
    upstream: usize,
    successes: u32,
    failures: u32,
    /// When the next check is due (once none is in flight).
    next: Instant,
    in_flight: bool,
}

/// A track's key: the identity of its endpoint's state object.
fn key(ep: &Arc<EndpointState>) -> usize {
    Arc::as_ptr(ep) as usize
}

/// What a check thread sends back: the endpoint and whether it passed.
type Verdict = (Arc<EndpointState>, bool);

/// The checker's state: per upstream, its check and its servers'
/// transports; per endpoint, a [`Track`].
struct Checker<'d> {
    dir: &'d Directory,
    checks: Vec<Option<Arc<HealthCheck>>>,
    /// Per upstream, per spec server (endpoints keep their server's
    /// index): how to reach it and the `Host` its checks send.
    probes: Vec<Vec<Arc<Probe>>>,
    /// Per upstream, the endpoint generation the tracks follow.
    generations: Vec<Option<u64>>,
    tracks: HashMap<usize, Track>,
    verdicts: mpsc::Sender<Verdict>,
    /// The gateway's bounds on an upstream's response head: a check reads
    /// the answer within them, as the proxy does.
    head_limits: HeadLimits,
}

/// Runs the checks until the directory is stopped; answers are read within
/// `head_limits` (the gateway's `Limits::response_head_limits`).
pub fn run(dir: &Directory, head_limits: HeadLimits) {
    let (verdicts, received) = mpsc::channel();
    let mut checker = Checker {
        dir,
        head_limits,
        checks: dir
            .upstreams()
            .iter()
            .map(|up| up.health_check.clone().map(Arc::new))
            .collect(),
        probes: dir
            .upstreams()
            .iter()
            .map(|up| {
                up.servers
                    .iter()
                    .map(|s| {
                        Arc::new(Probe {
                            transport: Transport::of(s),
                            host: host_of(s),
                        })
                    })
                    .collect()
            })
            .collect(),
        generations: vec![None; dir.upstreams().len()],
        tracks: HashMap::new(),
        verdicts,
    };
    while !dir.is_stopped() {
        checker.follow_endpoints();
        let now = Instant::now();
        let wake = checker.start_due(now);
        match received.recv_timeout(wake.saturating_duration_since(now).min(POLL)) {
            Ok(verdict) => {
                checker.record(verdict);
                while let Ok(verdict) = received.try_recv() {
                    checker.record(verdict);
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }
}

impl Checker<'_> {
    /// One track per current endpoint of each checked upstream: a new
    /// endpoint gets a fresh track, due at once; a removed one's track
    /// (and the verdict of a check still in flight for it) is forgotten.
    fn follow_endpoints(&mut self) {
        let now = Instant::now();
        for (u, up) in self.dir.upstreams().iter().enumerate() {
            if self.checks[u].is_none() {
                continue;
            }
            // The generation first: a change made after it is seen next time.
            let generation = up.generation();
            if self.generations[u] == Some(generation) {
                continue;
            }
            self.generations[u] = Some(generation);
            let current = up.endpoints();
            self.tracks
                .retain(|_, t| t.upstream != u || current.iter().any(|e| Arc::ptr_eq(e, &t.ep)));
            for ep in current.iter() {
                self.tracks.entry(key(ep)).or_insert_with(|| Track {
                    ep: Arc::clone(ep),
                    upstream: u,
                    successes: 0,
                    failures: 0,
                    next: now,
                    in_flight: false,
                });
            }
        }
    }

    /// Starts the checks due at `now`, each on its own thread; returns
    /// when the next one not in flight is due.
    fn start_due(&mut self, now: Instant) -> Instant {
        let mut wake = now + POLL;
        for track in self.tracks.values_mut() {
            if track.in_flight {
                continue;
            }
            if track.next > now {
                wake = wake.min(track.next);
                continue;
            }
            let Some(hc) = self.checks[track.upstream].clone() else {
                continue;
            };
            let probe = self.probes[track.upstream]
                .get(track.ep.server)
                .cloned()
                .unwrap_or_else(|| Arc::new(Probe::default()));
            let interval = hc.interval;
            let ep = Arc::clone(&track.ep);
            let verdicts = self.verdicts.clone();
            let limits = self.head_limits;
            let started = std::thread::Builder::new()
                .name("blitz-check".into())
                .spawn(move || {
                    let ok = check(ep.addr, &hc, &probe, &limits);
                    // The scheduler may have stopped: nobody to tell.
                    let _ = verdicts.send((ep, ok));
                });
            match started {
                Ok(_) => track.in_flight = true,
                Err(e) => {
                    // No thread now (a resource limit): try at the next interval.
                    log_line!("blitz: health check of {} not started: {e}", track.ep.addr);
                    track.next = now + interval;
                    wake = wake.min(track.next);
                }
            }
        }
        wake
    }

    /// Counts a check's verdict and, at a threshold, marks the endpoint
    /// down or up again.
    fn record(&mut self, (ep, ok): Verdict) {
        let Some(track) = self.tracks.get_mut(&key(&ep)) else {
            return; // DNS removed it meanwhile
        };
        let Some(hc) = &self.checks[track.upstream] else {
            return;
        };
        track.in_flight = false;
        track.next = Instant::now() + hc.interval;
        let name = &self.dir.upstreams()[track.upstream].name;
        if ok {
            track.successes = track.successes.saturating_add(1);
            track.failures = 0;
            if !ep.is_up() && track.successes >= hc.healthy {
                ep.set_up(true);
                log_line!("blitz: upstream {name:?}: {} is healthy again", ep.addr);
            }
        } else {
            track.failures = track.failures.saturating_add(1);
            track.successes = 0;
            if ep.is_up() && track.failures >= hc.unhealthy {
                ep.set_up(false);
                log_line!(
                    "blitz: upstream {name:?}: {} is unhealthy ({} failed checks)",
                    ep.addr,
                    track.failures
                );
            }
        }
    }
}

/// How the checks of one spec server are made.
#[derive(Debug)]
pub struct Probe {
    pub transport: Transport,
    /// Its `Host` ([`host_of`]); `None`: the endpoint's address.
    pub host: Option<String>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            transport: Transport::Plain,
            host: None,
        }
    }
}

/// One check: whether `addr` answers `GET path` with a status of
/// `expect` in time, as `probe` says.
pub fn check(addr: SocketAddr, hc: &HealthCheck, probe: &Probe, limits: &HeadLimits) -> bool {
    let host = match &probe.host {
        Some(name) => name.clone(),
        None => addr.to_string(),
    };
    let deadline = Instant::now() + hc.timeout;
    let Ok(tcp) = TcpStream::connect_timeout(&addr, hc.timeout) else {
        return false;
    };
    match &probe.transport {
        Transport::Plain => exchange(&mut &tcp, &tcp, &host, hc, deadline, limits),
        #[cfg(feature = "tls")]
        Transport::Tls(tls) => {
            let Ok(mut conn) = tls.connection() else {
                return false;
            };
            // The handshake runs inside the first write, under the
            // socket's timeouts.
            let mut sock = &tcp;
            let mut stream = rustls::Stream::new(&mut conn, &mut sock);
            exchange(&mut stream, &tcp, &host, hc, deadline, limits)
        }
        #[cfg(feature = "tls")]
        Transport::Unusable => false,
    }
}

/// The request and the status line, over `stream` (on `tcp`, whose
/// timeouts bound every read and write by `deadline`).
fn exchange(
    stream: &mut (impl Read + Write),
    tcp: &TcpStream,
    host: &str,
    hc: &HealthCheck,
    deadline: Instant,
    limits: &HeadLimits,
) -> bool {
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: blitz-health-check\r\nconnection: close\r\n\r\n",
        hc.path
    );
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero()
        || tcp.set_write_timeout(Some(left)).is_err()
        || tcp.set_read_timeout(Some(left)).is_err()
        || stream.write_all(request.as_bytes()).is_err()
    {
        return false;
    }
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        match final_status(&mut buf, limits) {
            Ok(Some(status)) => return hc.expect.contains(&status),
            Ok(None) => {}
            Err(()) => return false,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        let mut chunk = [0u8; READ_CHUNK];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Bytes read from a checked server at a time.
const READ_CHUNK: usize = 1024;

/// The status of the final answer at the start of `buf`, read as the
/// proxy reads an upstream's answer (the same parser, within the gateway's
/// response-head `limits`), so that the checker never calls a server
/// down that serves clients, nor up one whose answers end in a 502 or
/// 504: interim (1xx) heads are skipped (dropped from `buf`), a 101 or a
/// head the proxy refuses is `Err`, a head not complete yet `Ok(None)`
/// (the caller reads more, until `timeout`: a head cut by a close or a
/// stall fails, as it is a 502 or 504 for a client).
fn final_status(buf: &mut Vec<u8>, limits: &HeadLimits) -> Result<Option<u16>, ()> {
    let mut head = crate::http::ResponseHead::default();
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        match crate::http::parse_response_head(buf, limits, false, &mut head) {
            Ok(Some(_)) if head.status() == 101 => return Err(()),
            Ok(Some(n)) if head.status() < 200 => {
                buf.drain(..n);
            }
            Ok(Some(_)) => return Ok(Some(head.status())),
            Ok(None) => return Ok(None),
            Err(_) => return Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::Upstream;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn final_statuses() {
        let limits = crate::proxy::Limits::default().response_head_limits();
        let status = |bytes: &[u8]| final_status(&mut bytes.to_vec(), &limits);
        assert_eq!(status(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(Some(200)));
        assert_eq!(
            status(b"HTTP/1.0 302 Found\r\nlocation: /\r\n\r\n"),
            Ok(Some(302))
        );
        assert_eq!(status(b"HTTP/1.1 503 Unavailable\r\n\r\n"), Ok(Some(503)));
        // No reason phrase: the proxy's parser relays such an answer.
        assert_eq!(status(b"HTTP/1.1 204\r\n\r\n"), Ok(Some(204)));
        assert_eq!(status(b"HTTP/1.1 204 \r\n\r\n"), Ok(Some(204)));
        // Bare LF line ends: the proxy refuses such an answer (502).
        assert_eq!(status(b"HTTP/1.1 204\n\n"), Err(()));
        // Interim answers are skipped, as the proxy skips them.
        assert_eq!(
            status(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
            Ok(Some(200))
        );
        assert_eq!(status(b"HTTP/1.1 100 Continue\r\n\r\n"), Ok(None));
        assert_eq!(status(b"HTTP/1.1 101 Switching\r\n\r\n"), Err(()));
        // Not complete yet: a status line cut, or a head without its end.
        assert_eq!(status(b"HTTP/1.1 200 OK"), Ok(None));
        assert_eq!(status(b"HTTP/1.1 200 OK\r\nserver: x\r\n"), Ok(None));
        assert_eq!(status(b""), Ok(None));
        assert_eq!(status(b"HTTP/1.1 2000\r\n\r\n"), Err(()));
        assert_eq!(status(b"HTTP/1.1 20\r\n\r\n"), Err(()));
        assert_eq!(status(b"SSH-2.0-OpenSSH_9.6\r\n"), Err(()));
        assert_eq!(
            status(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            Err(()),
            "framing the proxy refuses (502)"
        );
    }

    #[test]
    fn checks_a_real_server() {
        let limits = crate::proxy::Limits::default().response_head_limits();
        let hc = HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy: 1,
            unhealthy: 1,
            expect: 200..=399,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let server = std::thread::spawn(move || {
            for answer in [
                &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
                b"HTTP/1.1 500 Oops\r\n\r\n",
                b"",
            ] {
                let (mut s, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap_or(0);
                assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
                if answer.is_empty() {
                    // Stall past the timeout.
                    std::thread::sleep(Duration::from_millis(800));
                }
                let _ = s.write_all(answer);
            }
        });
        assert!(check(addr, &hc, &Probe::default(), &limits));
        assert!(!check(addr, &hc, &Probe::default(), &limits));
        let only_204 = HealthCheck {
            expect: 204..=204,
            ..hc.clone()
        };
        assert!(
            !check(addr, &only_204, &Probe::default(), &limits),
            "200 is not in expect"
        );
        let t = Instant::now();
        assert!(!check(addr, &hc, &Probe::default(), &limits));
        assert!(
            t.elapsed() < Duration::from_millis(790),
            "bounded by the timeout"
        );
        let _ = server.join();
        assert!(!check(addr, &hc, &Probe::default(), &limits), "refused");
    }

    #[test]
    fn a_check_names_the_server_as_the_spec_does() {
        use crate::lb::ServerTls;
        let tls = |sni: &str| ServerTls {
            sni: sni.into(),
            ca: None,
        };
        let ip: SocketAddr = "10.0.0.7:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        let ip_443: SocketAddr = "10.0.0.7:443".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host_of(&Server::ip(ip, 1)), None, "the endpoint's IP:port");
        assert_eq!(
            host_of(&Server::dns("users.internal", 8080, 1)).as_deref(),
            Some("users.internal:8080")
        );
        assert_eq!(
            host_of(&Server::dns("users.internal", 80, 1)).as_deref(),
            Some("users.internal")
        );
        assert_eq!(
            host_of(&Server::dns("users.internal", 80, 1).with_tls(tls("x.test"))).as_deref(),
            Some("users.internal:80"),
            "80 is not TLS's default port; the DNS name, not the SNI"
        );
        assert_eq!(
            host_of(&Server::ip(ip_443, 1).with_tls(tls("api.test"))).as_deref(),
            Some("api.test")
        );
        assert_eq!(
            host_of(&Server::ip(ip, 1).with_tls(tls("api.test"))).as_deref(),
            Some("api.test:8080")
        );
        let v6: SocketAddr = "[::1]:8443".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            host_of(&Server::ip(v6, 1).with_tls(tls("::1"))),
            None,
            "an sni that is the server's IP (the default): the bracketed endpoint address"
        );
    }

    fn hc(interval_ms: u64, timeout_ms: u64, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            healthy: 1,
            unhealthy,
            expect: 200..=399,
        }
    }

    fn wait(what: &str, until: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !until() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A port nothing listens on (bound, then closed).
    fn refused_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_silent_server_does_not_hold_other_endpoints_checks() {
        // Accepts (in the backlog) and never answers: its check takes 30 s.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let mut slow = Upstream::new("slow", vec![Server::ip(silent_addr, 1)]);
        slow.health_check = Some(hc(50, 30_000, 1));
        let mut dead = Upstream::new("dead", vec![Server::ip(refused_addr(), 1)]);
        dead.health_check = Some(hc(50, 50, 2));
        let dir = Directory::new(&[slow, dead]);
        let d = Arc::clone(&dir);
        let limits = crate::proxy::Limits::default().response_head_limits();
        let checker = std::thread::spawn(move || run(&d, limits));
        let dead_ep = Arc::clone(&dir.upstreams()[1].endpoints()[0]);
        wait("the dead server is marked down", || !dead_ep.is_up());
        assert!(dir.upstreams()[0].endpoints()[0].is_up(), "still waiting");
        dir.stop();
        let _ = checker.join();
    }

    /// A server that fails every check (closes without an answer), and
    /// counts them.
    fn failing_server() -> (
        SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<AtomicBool>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        l.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (Arc::clone(&count), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(_) => {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        (addr, count, stop)
    }

    #[test]
    fn an_address_dns_re_adds_starts_fresh() {
        let (addr, checks, stop) = failing_server();
        let other = refused_addr();
        let mut up = Upstream::new("u", vec![Server::ip(addr, 1)]);
        up.health_check = Some(hc(20, 200, 3));
        let dir = Directory::new(&[up]);
        let u = &dir.upstreams()[0];
        let find = || {
            u.endpoints()
                .iter()
                .find(|e| e.addr == addr)
                .cloned()
                .unwrap_or_else(|| panic!("{addr} not listed"))
        };
        let d = Arc::clone(&dir);
        let limits = crate::proxy::Limits::default().response_head_limits();
        let checker = std::thread::spawn(move || run(&d, limits));
        let first = find();
        wait("marked down", || !first.is_up());
        // Let its count grow past the threshold, then DNS drops it and
        // gives it back: a new endpoint, up, that needs 3 failures again.
        let seen = checks.load(Ordering::Relaxed);
        wait("more failed checks", || {
            checks.load(Ordering::Relaxed) >= seen + 3
        });
        assert!(u.update_server(0, &[other]));
        let before = checks.load(Ordering::Relaxed);
        assert!(u.update_server(0, &[addr, other]));
        let again = find();
        assert!(!Arc::ptr_eq(&first, &again));
        assert!(again.is_up(), "starts up, as at start");
        wait("marked down again", || !again.is_up());
        let taken = checks.load(Ordering::Relaxed) - before;
        assert!(
            taken >= 3,
            "down after {taken} checks, not 3: the old count was kept"
        );
        dir.stop();
        stop.store(true, Ordering::Relaxed);
        let _ = checker.join();
    }
}
