//! One worker's live view of an upstream: its endpoints (with their idle
//! connections, in-flight counts, passive health and counters), the
//! balancer over them, and the retry budget.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::proxy::UpstreamStream;

use super::{
    Balance, Balancer, Candidate, ConnPool, HashKey, PoolConfig, RetryBudget, RetryPolicy,
    Upstream, UpstreamTimeouts, hash_bytes,
};
use crate::health::{EndpointState, Outlier, OutlierVerdict, UpstreamDirectory};

/// Plain per-worker counters of one endpoint (for the metrics to come).
#[derive(Debug, Default)]
struct Counters {
    requests: Cell<u64>,
    in_flight: Cell<u64>,
    failures: Cell<u64>,
    ejections: Cell<u64>,
    retries: Cell<u64>,
}

/// A snapshot of one endpoint's counters on one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCounters {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// Index of its spec `server`.
    pub server: usize,
    /// Active health (shared by all workers): `true` = up.
    pub healthy: bool,
    /// Passive health on this worker: `true` = ejected now.
    pub ejected: bool,
    /// Requests sent to it (each try counts).
    pub requests: u64,
    /// Requests in flight to it now.
    pub in_flight: u64,
    /// Failed tries (connect errors, timeouts, 5xx, broken exchanges).
    pub failures: u64,
    /// Times passive health ejected it.
    pub ejections: u64,
    /// Tries that were retries (or connect failovers) of a request.
    pub retries: u64,
}

/// One endpoint on one worker.
#[derive(Debug)]
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<EndpointState>,
    /// Idle connections to it.
    pub pool: RefCell<ConnPool<UpstreamStream>>,
    /// TLS to it (its server's), shared by the endpoints of one server.
    #[cfg(feature = "tls")]
    pub tls: Option<Rc<crate::tls::UpstreamTlsState>>,
    outlier: Outlier,
    counters: Counters,
    /// Set when DNS removed it: connections are no longer pooled.
    retired: Cell<bool>,
}

/// A try in flight to an endpoint ([`Endpoint::begin`]); dropping it ends
/// the try.
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let c = &self.0.counters;
        c.in_flight.set(c.in_flight.get().saturating_sub(1));
    }
}

impl Endpoint {
    fn new(state: Arc<EndpointState>, pool: PoolConfig, tls: &ServerTlsStates) -> Self {
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        Endpoint {
            addr: state.addr,
            #[cfg(feature = "tls")]
            tls: tls.get(state.server).cloned().flatten(),
            state,
            pool: RefCell::new(ConnPool::new(pool)),
            outlier: Outlier::default(),
            counters: Counters::default(),
            retired: Cell::new(false),
        }
    }

    /// Whether active health says up and passive health does not eject it.
    pub fn is_available(&self, now: Instant) -> bool {
        self.state.is_up() && self.outlier.is_available(now)
    }

    /// Whether active health says up.
    pub fn is_up(&self) -> bool {
        self.state.is_up()
    }

    /// Whether DNS removed it since it was picked.
    pub fn is_retired(&self) -> bool {
        self.retired.get()
    }

    /// A try starts; `retry` when it is not the request's first. It is in
    /// flight until the returned guard is dropped: when the try ends, or
    /// when the request is cancelled mid-try (an HTTP/2 stream whose
    /// connection went away), so a count is never left up (least-conn and
    /// p2c would shun the endpoint on this worker for good).
    #[must_use = "the try is in flight until this is dropped"]
    pub fn begin(&self, retry: bool) -> InFlight<'_> {
        let c = &self.counters;
        c.requests.set(c.requests.get() + 1);
        c.in_flight.set(c.in_flight.get() + 1);
        if retry {
            c.retries.set(c.retries.get() + 1);
        }
        InFlight(self)
    }

    /// Requests in flight to it on this worker.
    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight.get()
    }

    /// A connect or exchange with it failed at `now` (passive health).
    pub fn failed(&self, now: Instant) {
        let c = &self.counters;
        c.failures.set(c.failures.get() + 1);
        if let OutlierVerdict::Ejected(_) = self.outlier.failure(now) {
            c.ejections.set(c.ejections.get() + 1);
        }
    }

    /// An exchange with it went well.
    pub fn succeeded(&self) {
        self.outlier.success();
    }

    /// A complete exchange with it ended with `status`: a 5xx counts as a
    /// failure for passive health, anything else as a success.
    pub fn answered(&self, status: u16, now: Instant) {
        if status >= 500 {
            self.failed(now);
        } else {
            self.succeeded();
        }
    }

    /// Keeps `conn` for reuse, unless DNS retired this endpoint; it is idle
    /// `since` then (the end of its last exchange).
    pub fn give_back(&self, conn: UpstreamStream, since: Instant) {
        if self.is_retired() {
            return;
        }
        // Over `max-idle`: closed at once, by reset (idle, nothing lost).
        if let Err(surplus) = self.pool.borrow_mut().checkin(conn, since) {
            surplus.close_idle();
        }
    }

    /// A connect failover to another endpoint was counted against this one
    /// as a retry (nothing was sent).
    pub fn count_retry(&self) {
        let c = &self.counters;
        c.retries.set(c.retries.get() + 1);
    }

    /// Its counters now.
    pub fn counters(&self, now: Instant) -> ServerCounters {
        let c = &self.counters;
        ServerCounters {
            addr: self.addr,
            server: self.state.server,
            healthy: self.state.is_up(),
            ejected: !self.outlier.is_available(now),
            requests: c.requests.get(),
            in_flight: c.in_flight.get(),
            failures: c.failures.get(),
            ejections: c.ejections.get(),
            retries: c.retries.get(),
        }
    }
}

struct Live {
    generation: u64,
    endpoints: Vec<Rc<Endpoint>>,
    balancer: Balancer,
}

/// One upstream on one worker.
pub struct UpstreamSet {
    /// The upstream's name.
    pub name: String,
    /// Its retry policy.
    pub retry: RetryPolicy,
    /// Its timeouts (the upstream's own or the server's).
    pub timeouts: UpstreamTimeouts,
    /// Its retry budget on this worker.
    pub budget: RetryBudget,
    balance: Balance,
    pool: PoolConfig,
    /// TLS client state of each spec server (by index), if it speaks TLS.
    server_tls: ServerTlsStates,
    seed: u64,
    live: RefCell<Live>,
}

/// TLS client state by spec server index.
#[cfg(feature = "tls")]
type ServerTlsStates = Vec<Option<Rc<crate::tls::UpstreamTlsState>>>;
/// Without the `tls` feature nothing speaks TLS.
#[cfg(not(feature = "tls"))]
type ServerTlsStates = ();

impl std::fmt::Debug for UpstreamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSet")
            .field("name", &self.name)
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

/// The TLS client side of `config`'s servers on one worker.
#[cfg(feature = "tls")]
fn server_tls(config: &Upstream, worker: usize) -> ServerTlsStates {
    config
        .servers
        .iter()
        .map(|s| {
            s.tls
                .as_ref()
                .map(|tls| Rc::new(crate::tls::UpstreamTlsState::new(&config.name, tls, worker)))
        })
        .collect()
}

/// (`rt::serve` refuses to start with a TLS server in this build.)
#[cfg(not(feature = "tls"))]
fn server_tls(_config: &Upstream, _worker: usize) -> ServerTlsStates {}

impl UpstreamSet {
    /// The worker's state of `config`, with the endpoints of `dir`.
    pub fn new(
        config: &Upstream,
        dir: Option<&UpstreamDirectory>,
        worker: usize,
        default_timeouts: UpstreamTimeouts,
        default_pool: PoolConfig,
    ) -> Self {
        let set = UpstreamSet {
            name: config.name.clone(),
            retry: config.retry.clone(),
            timeouts: config.timeouts.unwrap_or(default_timeouts),
            budget: RetryBudget::default(),
            balance: config.balance.clone(),
            pool: config.pool.unwrap_or(default_pool),
            server_tls: server_tls(config, worker),
            seed: worker as u64,
            live: RefCell::new(Live {
                generation: u64::MAX,
                endpoints: Vec::new(),
                balancer: Balancer::new(&config.balance, &[], worker as u64),
            }),
        };
        if let Some(dir) = dir {
            set.refresh(dir);
        }
        set
    }

    /// Adopts the directory's endpoint list if it changed: endpoints at an
    /// unchanged address keep their pool, counters and passive health.
    pub fn refresh(&self, dir: &UpstreamDirectory) {
        let generation = dir.generation();
        if self.live.borrow().generation == generation {
            return;
        }
        let states = dir.endpoints();
        let mut live = self.live.borrow_mut();
        let endpoints: Vec<Rc<Endpoint>> = states
            .iter()
            .map(|s| {
                live.endpoints
                    .iter()
                    .find(|e| Arc::ptr_eq(&e.state, s))
                    .map_or_else(
                        || Rc::new(Endpoint::new(Arc::clone(s), self.pool, &self.server_tls)),
                        Rc::clone,
                    )
            })
            .collect();
        for old in &live.endpoints {
            if !endpoints.iter().any(|e| Rc::ptr_eq(e, old)) {
                old.retired.set(true);
                old.pool.borrow_mut().clear();
            }
        }
        let candidates: Vec<Candidate> = endpoints
            .iter()
            .map(|e| Candidate {
                weight: e.state.weight,
                id: hash_bytes(e.addr.to_string().as_bytes()),
            })
            .collect();
        live.balancer = Balancer::new(&self.balance, &candidates, self.seed);
        live.endpoints = endpoints;
        live.generation = generation;
    }

    /// The consistent-hash key of a request: `None` for other algorithms,
    /// and for a `header:` key the request lacks or sends empty (such
    /// requests are spread over the ring, as nginx and HAProxy spread them,
    /// instead of all landing on one endpoint).
    pub fn hash_key(&self, req: &crate::http::RequestHead, client: SocketAddr) -> Option<u64> {
        let Balance::ConsistentHash(key) = &self.balance else {
            return None;
        };
        Some(match key {
            HashKey::ClientIp => match client.ip() {
                std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
                std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
            },
            HashKey::Header(name) => match req.headers().get(name) {
                Some(value) if !value.is_empty() => hash_bytes(value),
                _ => return None,
            },
            HashKey::Path => hash_bytes(req.path_only()),
        })
    }

    /// Picks an endpoint for a try. Active-down endpoints and those `avoid`
    /// rejects are never picked. Passively ejected ones are picked only when
    /// nothing else is left; endpoints `prefer_not` rejects (tried already)
    /// only when that is all there is. `None`: nothing left (503).
    pub fn pick(
        &self,
        key: Option<u64>,
        now: Instant,
        avoid: impl Fn(SocketAddr) -> bool,
        prefer_not: impl Fn(SocketAddr) -> bool,
    ) -> Option<Rc<Endpoint>> {
        let live = self.live.borrow();
        let eps = &live.endpoints;
        let load = |i: usize| eps[i].in_flight();
        let passes: [&dyn Fn(&Endpoint) -> bool; 3] = [
            &|e| e.is_available(now) && !prefer_not(e.addr),
            &|e| !prefer_not(e.addr),
            &|_| true,
        ];
        for pass in passes {
            let usable = |i: usize| {
                let e = &eps[i];
                e.is_up() && !avoid(e.addr) && pass(e)
            };
            if let Some(i) = live.balancer.pick(key, usable, load) {
                return Some(Rc::clone(&eps[i]));
            }
        }
        None
    }

    /// Closes idle connections past their timeout.
    pub fn reap(&self, now: Instant) {
        for e in &self.live.borrow().endpoints {
            e.pool.borrow_mut().reap(now);
        }
    }

    /// Closes every idle connection.
    pub fn close_idle(&self) {
        for e in &self.live.borrow().endpoints {
            e.pool.borrow_mut().clear();
        }
    }

    /// The counters of every current endpoint on this worker.
    pub fn counters(&self, now: Instant) -> Vec<ServerCounters> {
        self.live
            .borrow()
            .endpoints
            .iter()
            .map(|e| e.counters(now))
            .collect()
    }

    /// Number of current endpoints.
    pub fn len(&self) -> usize {
        self.live.borrow().endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{CONSECUTIVE_FAILURES, Directory};
    use crate::lb::Server;
    use std::time::Duration;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn set(servers: Vec<Server>, balance: Balance) -> (Arc<Directory>, UpstreamSet) {
        let up = Upstream::new("u", servers).with_balance(balance);
        let dir = Directory::new(std::slice::from_ref(&up));
        let timeouts = UpstreamTimeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
        };
        let s = UpstreamSet::new(
            &up,
            dir.upstreams().first(),
            0,
            timeouts,
            PoolConfig::default(),
        );
        (dir, s)
    }

    #[test]
    fn counters_count() {
        let t0 = Instant::now();
        let (_dir, s) = set(
            vec![Server::ip(addr(1), 1), Server::ip(addr(2), 1)],
            Balance::RoundRobin,
        );
        let a = s
            .pick(None, t0, |_| false, |_| false)
            .unwrap_or_else(|| panic!("a pick"));
        let first = a.begin(false);
        let _retry = a.begin(true);
        assert_eq!(a.in_flight(), 2);
        drop(first);
        for _ in 0..CONSECUTIVE_FAILURES {
            a.failed(t0);
        }
        a.count_retry();
        let c = a.counters(t0);
        assert_eq!(
            (
                c.requests,
                c.in_flight,
                c.retries,
                c.failures,
                c.ejections,
                c.ejected,
                c.healthy
            ),
            (2, 1, 2, u64::from(CONSECUTIVE_FAILURES), 1, true, true)
        );
        assert_eq!(s.counters(t0).len(), 2);
    }

    #[test]
    fn picks_skip_down_ejected_and_avoided_endpoints() {
        let t0 = Instant::now();
        let (dir, s) = set(
            vec![
                Server::ip(addr(1), 1),
                Server::ip(addr(2), 1),
                Server::ip(addr(3), 1),
            ],
            Balance::RoundRobin,
        );
        let states = dir.upstreams()[0].endpoints();
        states[0].set_up(false);
        for _ in 0..20 {
            let e = s
                .pick(None, t0, |_| false, |_| false)
                .unwrap_or_else(|| panic!("pick"));
            assert_ne!(e.addr, addr(1), "active-down is never picked");
        }
        // Eject 2 passively: only 3 is left...
        let e2 = s
            .pick(None, t0, |a| a != addr(2), |_| false)
            .unwrap_or_else(|| panic!("2"));
        for _ in 0..CONSECUTIVE_FAILURES {
            e2.failed(t0);
        }
        for _ in 0..5 {
            assert_eq!(
                s.pick(None, t0, |_| false, |_| false).map(|e| e.addr),
                Some(addr(3))
            );
        }
        // ...and when 3 is avoided too, the ejected one is tried anyway.
        assert_eq!(
            s.pick(None, t0, |a| a == addr(3), |_| false)
                .map(|e| e.addr),
            Some(addr(2))
        );
        // Already-tried endpoints are picked only when nothing else is left.
        assert_eq!(
            s.pick(None, t0, |_| false, |a| a == addr(3))
                .map(|e| e.addr),
            Some(addr(2))
        );
        // Every endpoint down: nothing (503).
        states[1].set_up(false);
        states[2].set_up(false);
        assert!(s.pick(None, t0, |_| false, |_| false).is_none());
    }

    #[test]
    fn refresh_keeps_pools_of_unchanged_endpoints() {
        let (dir, s) = set(
            vec![Server::ip(addr(1), 1), Server::dns("localhost", 80, 1)],
            Balance::RoundRobin,
        );
        let u = &dir.upstreams()[0];
        let before: Vec<Rc<Endpoint>> = s.live.borrow().endpoints.clone();
        assert!(u.update_server(1, &[addr(7)]));
        s.refresh(u);
        let after: Vec<Rc<Endpoint>> = s.live.borrow().endpoints.clone();
        assert!(
            Rc::ptr_eq(&before[0], &after[0]),
            "the IP server's endpoint (and pool) stays"
        );
        assert_eq!(after.len(), 2);
        assert_eq!(after[1].addr, addr(7));
        assert!(before[1..].iter().all(|e| e.is_retired()));
        assert!(!after[0].is_retired());
    }
}
