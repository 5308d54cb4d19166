//! The active health checker: one thread for the whole gateway.
//!
//! Every `interval`, each endpoint of an upstream with a `health-check`
//! gets `GET path HTTP/1.1` (`connection: close`) on a new connection,
//! within `timeout` for connect (and TLS handshake) + status line. A
//! server the workers reach over TLS is checked over TLS too, with the
//! same verification, SNI and CA file: in cleartext a TLS server answers
//! no HTTP, and every check would fail. A status in `expect`
//! (default 2xx and 3xx) is a success; anything else (refused, timeout, other status, garbage) a
//! failure. `unhealthy` failures in a row mark a healthy endpoint down,
//! `healthy` successes in a row mark a down endpoint up again. Endpoints
//! start up (a gateway serves at once), and the first round runs at start.
//! Each change is logged on stderr.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Directory;
use crate::lb::{HealthCheck, Server};

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

#[derive(Debug, Default)]
struct Track {
    successes: u32,
    failures: u32,
    next: Option<Instant>,
}

/// Runs the checks until the directory is stopped.
pub fn run(dir: &Directory) {
    let mut tracks: HashMap<(usize, SocketAddr), Track> = HashMap::new();
    // Per upstream, per spec server (endpoints keep their server's index).
    let transports: Vec<Vec<Transport>> = dir
        .upstreams()
        .iter()
        .map(|up| up.servers.iter().map(Transport::of).collect())
        .collect();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next_wake = now + Duration::from_secs(1);
        for (u, up) in dir.upstreams().iter().enumerate() {
            let Some(hc) = &up.health_check else { continue };
            for ep in up.endpoints().iter() {
                let track = tracks.entry((u, ep.addr)).or_default();
                match track.next {
                    Some(t) if t > now => next_wake = next_wake.min(t),
                    _ => due.push((u, std::sync::Arc::clone(ep), hc)),
                }
            }
        }
        let verdicts: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = due
                .iter()
                .map(|(u, ep, hc)| {
                    let transport = transports[*u].get(ep.server).unwrap_or(&Transport::Plain);
                    s.spawn(move || check(ep.addr, hc, transport))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(false))
                .collect()
        });
        let done = Instant::now();
        for ((u, ep, hc), ok) in due.iter().zip(verdicts) {
            let track = tracks.entry((*u, ep.addr)).or_default();
            track.next = Some(done + hc.interval);
            next_wake = next_wake.min(done + hc.interval);
            let name = &dir.upstreams()[*u].name;
            if ok {
                track.successes += 1;
                track.failures = 0;
                if !ep.is_up() && track.successes >= hc.healthy {
                    ep.set_up(true);
                    eprintln!("blitz: upstream {name:?}: {} is healthy again", ep.addr);
                }
            } else {
                track.failures += 1;
                track.successes = 0;
                if ep.is_up() && track.failures >= hc.unhealthy {
                    ep.set_up(false);
                    eprintln!(
                        "blitz: upstream {name:?}: {} is unhealthy ({} failed checks)",
                        ep.addr, track.failures
                    );
                }
            }
        }
        // Forget endpoints DNS removed.
        if tracks.len() > 4 * due.len().max(64) {
            tracks.retain(|(u, addr), _| {
                dir.upstreams()[*u]
                    .endpoints()
                    .iter()
                    .any(|e| e.addr == *addr)
            });
        }
        if !dir.sleep(next_wake.saturating_duration_since(Instant::now())) {
            return;
        }
    }
}

/// One check: whether `addr` answers `GET path` with a status of
/// `expect` in time, over `transport`.
pub fn check(addr: SocketAddr, hc: &HealthCheck, transport: &Transport) -> bool {
    let deadline = Instant::now() + hc.timeout;
    let Ok(tcp) = TcpStream::connect_timeout(&addr, hc.timeout) else {
        return false;
    };
    match transport {
        Transport::Plain => exchange(&mut &tcp, &tcp, addr, hc, deadline),
        #[cfg(feature = "tls")]
        Transport::Tls(tls) => {
            let Ok(mut conn) = tls.connection() else {
                return false;
            };
            // The handshake runs inside the first write, under the
            // socket's timeouts.
            let mut sock = &tcp;
            let mut stream = rustls::Stream::new(&mut conn, &mut sock);
            exchange(&mut stream, &tcp, addr, hc, deadline)
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
    addr: SocketAddr,
    hc: &HealthCheck,
    deadline: Instant,
) -> bool {
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: blitz-health-check\r\nconnection: close\r\n\r\n",
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
    let mut buf = [0u8; 512];
    let mut len = 0;
    while len < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    status_of(&buf[..len]).is_some_and(|s| hc.expect.contains(&s))
}

/// The status of a response starting with `head`, if its status line is
/// valid. The reason phrase may be missing, with or without the space
/// before it (`HTTP/1.1 200`): the proxy's parser (httparse) relays such a
/// response, so the checker must not call that server down.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    if !parts.next().is_some_and(|v| v.starts_with(b"HTTP/1.")) {
        return None;
    }
    let status = parts.next().unwrap_or_default();
    if status.len() != 3 || !status.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(status).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 302 Found\r\n"), Some(302));
        assert_eq!(status_of(b"HTTP/1.1 503 Unavailable\r\n"), Some(503));
        assert_eq!(
            status_of(b"HTTP/1.1 204\r\n"),
            Some(204),
            "no reason phrase"
        );
        assert_eq!(status_of(b"HTTP/1.1 204 \r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.1 204\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.1 2000\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 20\r\n"), None);
        assert_eq!(status_of(b"garbage"), None);
        assert_eq!(status_of(b""), None);
    }

    #[test]
    fn checks_a_real_server() {
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
        assert!(check(addr, &hc, &Transport::Plain));
        assert!(!check(addr, &hc, &Transport::Plain));
        let only_204 = HealthCheck {
            expect: 204..=204,
            ..hc.clone()
        };
        assert!(
            !check(addr, &only_204, &Transport::Plain),
            "200 is not in expect"
        );
        let t = Instant::now();
        assert!(!check(addr, &hc, &Transport::Plain));
        assert!(
            t.elapsed() < Duration::from_millis(790),
            "bounded by the timeout"
        );
        let _ = server.join();
        assert!(!check(addr, &hc, &Transport::Plain), "refused");
    }
}
