//! Idle upstream connections, per server, on one worker.
//!
//! Invariants: only connections whose last exchange ended cleanly (request
//! and response bodies complete, no error, upstream keep-alive) are checked
//! in; a connection is never handed out after `idle_timeout`; at most
//! `max_idle` per server are kept (the rest are closed). Generic over the
//! connection type so the policy is tested without sockets.

use std::time::{Duration, Instant};

/// Pool policy.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Most idle connections kept per server.
    pub max_idle: usize,
    /// Idle connections older than this are closed, not reused.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle: 128,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Idle connections for a set of servers, indexed by a flat server id.
#[derive(Debug)]
pub struct ConnPool<T> {
    config: PoolConfig,
    idle: Vec<Vec<(T, Instant)>>,
}

impl<T> ConnPool<T> {
    /// An empty pool for `servers` servers.
    pub fn new(servers: usize, config: PoolConfig) -> Self {
        ConnPool {
            config,
            idle: (0..servers).map(|_| Vec::new()).collect(),
        }
    }

    /// The most recently used live connection to `server`, if any.
    /// Expired ones met on the way are dropped (closed).
    pub fn checkout(&mut self, server: usize, now: Instant) -> Option<T> {
        let list = self.idle.get_mut(server)?;
        while let Some((conn, since)) = list.pop() {
            if now.saturating_duration_since(since) < self.config.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a cleanly finished connection. Dropped if the pool is full.
    pub fn checkin(&mut self, server: usize, conn: T, now: Instant) {
        if let Some(list) = self.idle.get_mut(server)
            && list.len() < self.config.max_idle
        {
            list.push((conn, now));
        }
    }

    /// Closes every connection idle for `idle_timeout` or longer.
    pub fn reap(&mut self, now: Instant) {
        let timeout = self.config.idle_timeout;
        for list in &mut self.idle {
            list.retain(|(_, since)| now.saturating_duration_since(*since) < timeout);
        }
    }

    /// Number of idle connections to `server`.
    pub fn idle_count(&self, server: usize) -> usize {
        self.idle.get(server).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifo_reuse_expiry_and_cap() {
        let t0 = Instant::now();
        let mut pool = ConnPool::new(
            2,
            PoolConfig {
                max_idle: 2,
                idle_timeout: Duration::from_secs(10),
            },
        );
        pool.checkin(0, "a", t0);
        pool.checkin(0, "b", t0 + Duration::from_secs(5));
        pool.checkin(0, "c", t0);
        assert_eq!(pool.idle_count(0), 2, "over max_idle is dropped");
        assert_eq!(pool.checkout(1, t0), None);
        // "a" expired at t0+10, "b" still fresh.
        assert_eq!(pool.checkout(0, t0 + Duration::from_secs(11)), Some("b"));
        pool.checkin(0, "a", t0);
        assert_eq!(pool.checkout(0, t0 + Duration::from_secs(10)), None);
        pool.checkin(0, "d", t0);
        pool.reap(t0 + Duration::from_secs(10));
        assert_eq!(pool.idle_count(0), 0);
        assert_eq!(pool.checkout(7, t0), None, "unknown server");
    }

    #[test]
    fn round_robin() {
        let rr = super::super::RoundRobin::default();
        assert_eq!(rr.pick(0), None);
        let picks: Vec<_> = (0..4).filter_map(|_| rr.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
    }
}
