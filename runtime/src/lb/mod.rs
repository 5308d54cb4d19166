//! Upstreams, server selection and the per-worker connection pool.
//!
//! Everything here is owned by one worker thread (shared-nothing): no
//! locks, no atomics. Selection is round-robin over an upstream's servers.
//! Passive health: a server whose connect failed is skipped by new
//! connections for [`PASSIVE_EJECTION`] while another server is healthy;
//! when none is, all are tried anyway (a 502 then says more than a 503
//! would). 503 "no healthy upstream" is for an upstream without servers
//! (and, later, for servers that active health checks marked down).

#![forbid(unsafe_code)]

mod pool;

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use pool::{ConnPool, PoolConfig};

/// One upstream: a named group of interchangeable servers.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name, for logs.
    pub name: String,
    /// Server addresses.
    pub servers: Vec<SocketAddr>,
    /// TLS per server, by index in `servers`; empty when no server uses
    /// TLS.
    pub server_tls: Vec<Option<ServerTls>>,
}

/// TLS to one server (the spec's `tls`, `sni` and `ca` on `server`;
/// needs the runtime's `tls` feature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Name sent in SNI and verified against the server's certificate.
    pub sni: String,
    /// CA file (PEM) to verify with instead of the built-in roots.
    pub ca: Option<std::path::PathBuf>,
}

impl Upstream {
    /// An upstream of one server.
    pub fn single(name: impl Into<String>, addr: SocketAddr) -> Self {
        Upstream {
            name: name.into(),
            servers: vec![addr],
            server_tls: Vec::new(),
        }
    }
}

/// Round-robin cursor over one upstream's servers.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: Cell<usize>,
}

impl RoundRobin {
    /// The next server index among `n` servers, or `None` when `n == 0`.
    pub fn pick(&self, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let i = self.next.get() % n;
        self.next.set(i.wrapping_add(1));
        Some(i)
    }
}

/// How long a server that refused a connection is avoided.
pub const PASSIVE_EJECTION: Duration = Duration::from_secs(2);

/// Per-server passive health on one worker, by flat server id.
#[derive(Debug)]
pub struct PassiveHealth {
    down_until: Vec<Cell<Option<Instant>>>,
}

impl PassiveHealth {
    /// All `servers` healthy.
    pub fn new(servers: usize) -> Self {
        PassiveHealth {
            down_until: (0..servers).map(|_| Cell::new(None)).collect(),
        }
    }

    /// Whether `server` may get new connections at `now`.
    pub fn is_up(&self, server: usize, now: Instant) -> bool {
        self.down_until
            .get(server)
            .and_then(Cell::get)
            .is_none_or(|until| now >= until)
    }

    /// A connect to `server` failed at `now`.
    pub fn failed(&self, server: usize, now: Instant) {
        if let Some(c) = self.down_until.get(server) {
            c.set(Some(now + PASSIVE_EJECTION));
        }
    }

    /// A connect to `server` succeeded.
    pub fn succeeded(&self, server: usize) {
        if let Some(c) = self.down_until.get(server) {
            c.set(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_ejection_expires_and_clears() {
        let t0 = Instant::now();
        let h = PassiveHealth::new(2);
        assert!(h.is_up(0, t0) && h.is_up(1, t0) && h.is_up(9, t0));
        h.failed(0, t0);
        assert!(!h.is_up(0, t0 + Duration::from_millis(1)));
        assert!(h.is_up(1, t0));
        assert!(h.is_up(0, t0 + PASSIVE_EJECTION));
        h.failed(1, t0);
        h.succeeded(1);
        assert!(h.is_up(1, t0));
    }
}
