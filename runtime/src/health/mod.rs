//! Health and endpoint discovery: the one part of the upstreams that is
//! shared by all workers.
//!
//! - [`Directory`]: per upstream, the current endpoints (a `server` by IP
//!   is one endpoint; a `server` by DNS name is one endpoint per address it
//!   resolves to) and, per endpoint, its active health state in an atomic.
//!   Built once per gateway before the workers start.
//! - [`active`]: one background thread for the whole gateway schedules
//!   every active health check, each endpoint on its own timer, and runs
//!   each check (a blocking `std::net` HTTP/1.1 GET, off the request path)
//!   on a thread of its own, so a slow or silent server delays no other
//!   endpoint's checks. The verdict is stored with a `Release` store.
//!   Workers read it with one `Relaxed` load per endpoint they consider:
//!   no lock, no cross-thread hop.
//! - [`dns`]: one background thread re-resolves DNS servers and publishes
//!   a new endpoint list (a new generation) when the addresses changed.
//!   Endpoints whose address stayed keep their state object, so their
//!   health and, on each worker, their idle connections carry over. An
//!   address that comes back after DNS removed it is a new endpoint: up,
//!   with fresh check counts and passive health, as at start.
//!   Workers adopt a new generation from their maintenance tick (once a
//!   second), never on the request path.
//! - [`Outlier`]: passive health, per worker and per endpoint: consecutive
//!   failures (connect errors, timeouts, 5xx) eject the endpoint for a
//!   while, longer each time it is ejected again.
//!
//! Why threads rather than a compio task on one worker: the checks then
//! cost the workers nothing, a stuck check cannot delay requests, and a
//! blocking client is a few lines of plain std code that is easy to trust.

#![forbid(unsafe_code)]

pub mod active;
pub mod dns;
mod outlier;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub use outlier::{BASE_EJECTION, CONSECUTIVE_FAILURES, MAX_EJECTION, Outlier, OutlierVerdict};

use crate::lb::{HealthCheck, Server, ServerAddress, Upstream};

/// One endpoint as all workers see it.
#[derive(Debug)]
pub struct EndpointState {
    /// Its address.
    pub addr: SocketAddr,
    /// Index of the spec `server` it comes from.
    pub server: usize,
    /// Weight of that server.
    pub weight: u32,
    up: AtomicBool,
}

impl EndpointState {
    fn new(addr: SocketAddr, server: usize, weight: u32) -> Self {
        EndpointState {
            addr,
            server,
            weight,
            up: AtomicBool::new(true),
        }
    }

    /// Whether active health checks consider it healthy (always true for an
    /// upstream without checks, and at start before the first verdict).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Stores a verdict of the active checker.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }
}

/// An endpoint list: shared, immutable, replaced whole on change.
pub type Endpoints = Arc<[Arc<EndpointState>]>;

/// One upstream's shared state.
#[derive(Debug)]
pub struct UpstreamDirectory {
    /// The upstream's name.
    pub name: String,
    /// The servers as written in the spec.
    pub servers: Vec<Server>,
    /// Its active health check, if any.
    pub health_check: Option<HealthCheck>,
    generation: AtomicU64,
    endpoints: Mutex<Endpoints>,
}

impl UpstreamDirectory {
    /// The generation of the endpoint list (bumped on each change).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current endpoints. Takes a short lock: call it from background
    /// threads and maintenance ticks, not per request.
    pub fn endpoints(&self) -> Endpoints {
        Arc::clone(
            &self
                .endpoints
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Publishes the addresses now behind `server`: endpoints of other
    /// servers, and of this one at an unchanged address, are kept as they
    /// are. Returns whether anything changed.
    pub fn update_server(&self, server: usize, addrs: &[SocketAddr]) -> bool {
        let mut guard = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old: Vec<SocketAddr> = guard
            .iter()
            .filter(|e| e.server == server)
            .map(|e| e.addr)
            .collect();
        let mut new_sorted = addrs.to_vec();
        new_sorted.sort_unstable();
        new_sorted.dedup();
        let mut old_sorted = old.clone();
        old_sorted.sort_unstable();
        if old_sorted == new_sorted {
            return false;
        }
        let weight = self.servers.get(server).map_or(1, |s| s.weight);
        let mut list: Vec<Arc<EndpointState>> = Vec::with_capacity(guard.len());
        // Spec order of servers; within a server, the resolver's order.
        for s in 0..self.servers.len() {
            if s == server {
                for &addr in &new_sorted {
                    let kept = guard.iter().find(|e| e.server == s && e.addr == addr);
                    list.push(
                        kept.map_or_else(
                            || Arc::new(EndpointState::new(addr, s, weight)),
                            Arc::clone,
                        ),
                    );
                }
            } else {
                list.extend(guard.iter().filter(|e| e.server == s).cloned());
            }
        }
        *guard = list.into();
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// The gateway-wide upstream state (one per process, shared by workers).
#[derive(Debug)]
pub struct Directory {
    upstreams: Vec<UpstreamDirectory>,
    stopped: AtomicBool,
}

impl Directory {
    /// Resolves every server (DNS names once, blocking: this runs before
    /// the workers start) without starting background threads.
    pub fn new(upstreams: &[Upstream]) -> Arc<Self> {
        let upstreams = upstreams
            .iter()
            .map(|u| {
                let mut list = Vec::new();
                for (i, server) in u.servers.iter().enumerate() {
                    let addrs = match &server.address {
                        ServerAddress::Ip(addr) => vec![*addr],
                        ServerAddress::Dns { host, port } => match dns::resolve(host, *port) {
                            Ok(r) => r.addrs,
                            Err(e) => {
                                log_line!(
                                    "blitz: upstream {:?}: cannot resolve {host}: {e} (retrying in the background)",
                                    u.name
                                );
                                Vec::new()
                            }
                        },
                    };
                    for addr in addrs {
                        if !list
                            .iter()
                            .any(|e: &Arc<EndpointState>| e.server == i && e.addr == addr)
                        {
                            list.push(Arc::new(EndpointState::new(addr, i, server.weight)));
                        }
                    }
                }
                UpstreamDirectory {
                    name: u.name.clone(),
                    servers: u.servers.clone(),
                    health_check: u.health_check.clone(),
                    generation: AtomicU64::new(0),
                    endpoints: Mutex::new(list.into()),
                }
            })
            .collect();
        Arc::new(Directory {
            upstreams,
            stopped: AtomicBool::new(false),
        })
    }

    /// [`Directory::new`], then starts the background threads the
    /// upstreams need: the health checker if any has a `health-check`, the
    /// resolver if any server is a DNS name. They stop on [`Directory::stop`].
    /// Health checks read answers within `head_limits` (the gateway's
    /// response-head bounds).
    pub fn start(
        upstreams: &[Upstream],
        head_limits: crate::http::HeadLimits,
    ) -> std::io::Result<Arc<Self>> {
        let dir = Self::new(upstreams);
        if dir.upstreams.iter().any(|u| u.health_check.is_some()) {
            let d = Arc::clone(&dir);
            std::thread::Builder::new()
                .name("blitz-health".into())
                .spawn(move || active::run(&d, head_limits))?;
        }
        let has_dns = dir.upstreams.iter().any(|u| {
            u.servers
                .iter()
                .any(|s| matches!(s.address, ServerAddress::Dns { .. }))
        });
        if has_dns {
            let d = Arc::clone(&dir);
            std::thread::Builder::new()
                .name("blitz-dns".into())
                .spawn(move || dns::run(&d))?;
        }
        Ok(dir)
    }

    /// The upstreams, in gateway order.
    pub fn upstreams(&self) -> &[UpstreamDirectory] {
        &self.upstreams
    }

    /// Asks the background threads to stop (they notice within ~100 ms).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether [`Directory::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Sleeps up to `d`, waking early when stopped. Returns `false` if stopped.
    pub(crate) fn sleep(&self, d: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + d;
        loop {
            if self.is_stopped() {
                return false;
            }
            let now = std::time::Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(std::time::Duration::from_millis(100)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn dns_updates_keep_unchanged_endpoints() {
        let up = Upstream::new(
            "u",
            vec![Server::ip(addr(1), 1), Server::dns("localhost", 2, 3)],
        );
        let dir = Directory::new(&[up]);
        let u = &dir.upstreams()[0];
        let first = u.endpoints();
        assert_eq!(first[0].addr, addr(1));
        assert!(first.iter().skip(1).all(|e| e.server == 1 && e.weight == 3));
        let g0 = u.generation();
        assert!(u.update_server(1, &[addr(2), addr(3)]));
        let second = u.endpoints();
        assert_eq!(u.generation(), g0 + 1);
        assert!(Arc::ptr_eq(&first[0], &second[0]), "other server untouched");
        first[0].set_up(false);
        assert!(!second[0].is_up(), "same state object, same health");
        assert!(
            !u.update_server(1, &[addr(3), addr(2)]),
            "same set, other order"
        );
        let kept = Arc::clone(&second[2]);
        assert!(u.update_server(1, &[addr(3)]));
        let third = u.endpoints();
        assert_eq!(third.len(), 2);
        assert!(Arc::ptr_eq(&kept, &third[1]), "unchanged address kept");
    }
}
