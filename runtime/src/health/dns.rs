//! Resolution of servers named by DNS, at start and then in the background.
//!
//! The system resolver (`getaddrinfo`: `/etc/hosts`, nsswitch,
//! `/etc/resolv.conf`) does not say how long an answer is valid, so its
//! names are re-resolved every [`DEFAULT_REFRESH`] (or `BLITZ_DNS_REFRESH`,
//! a duration such as `5s`). A failed or empty resolution keeps the last
//! addresses (a resolver outage must not empty an upstream) and is tried
//! again after a second.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::Directory;
use crate::lb::ServerAddress;

/// Re-resolution interval of system-resolved names.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// Shortest time between two resolutions of a name.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest time between two resolutions of a name.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// The addresses of a name and how long they are valid.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Addresses, deduplicated, in the resolver's order.
    pub addrs: Vec<SocketAddr>,
    /// How long they may be used; `None`: unknown (system resolver).
    pub ttl: Option<Duration>,
}

/// Resolves `host` once (blocking).
pub fn resolve(host: &str, port: u16) -> io::Result<Resolved> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in (host, port).to_socket_addrs()? {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    Ok(Resolved { addrs, ttl: None })
}

fn refresh_interval() -> Duration {
    std::env::var("BLITZ_DNS_REFRESH")
        .ok()
        .and_then(|v| crate::rt::parse_duration(&v).ok())
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Re-resolves every DNS server until the directory is stopped.
pub fn run(dir: &Directory) {
    let refresh = refresh_interval();
    // (upstream, server) -> next resolution.
    let mut due: Vec<(usize, usize, Instant)> = Vec::new();
    let start = Instant::now();
    for (u, up) in dir.upstreams().iter().enumerate() {
        for (s, server) in up.servers.iter().enumerate() {
            if matches!(server.address, ServerAddress::Dns { .. }) {
                let resolved_at_start = up.endpoints().iter().any(|e| e.server == s);
                let first = if resolved_at_start {
                    start + refresh
                } else {
                    start + MIN_REFRESH
                };
                due.push((u, s, first));
            }
        }
    }
    loop {
        let now = Instant::now();
        for (u, s, next) in &mut due {
            if *next > now {
                continue;
            }
            let up = &dir.upstreams()[*u];
            let ServerAddress::Dns { host, port } = &up.servers[*s].address else {
                continue;
            };
            match resolve(host, *port) {
                Ok(r) if !r.addrs.is_empty() => {
                    if up.update_server(*s, &r.addrs) {
                        eprintln!("blitz: upstream {:?}: {host} is now {:?}", up.name, r.addrs);
                    }
                    *next =
                        Instant::now() + r.ttl.unwrap_or(refresh).clamp(MIN_REFRESH, MAX_REFRESH);
                }
                Ok(_) | Err(_) => *next = Instant::now() + MIN_REFRESH,
            }
        }
        let wake = due.iter().map(|d| d.2).min().unwrap_or(now + MAX_REFRESH);
        if !dir.sleep(wake.saturating_duration_since(Instant::now())) {
            return;
        }
    }
}
