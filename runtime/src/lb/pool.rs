//! Idle upstream connections, per server, on one worker.
//!
//! Invariants: only connections whose last exchange ended cleanly (request
//! and response bodies complete, no error, upstream keep-alive) are checked
//! in; a connection is never handed out after `idle_timeout`, nor once the
//! caller's check finds the server closed it while idle; at most
//! `max_idle` per server are kept (the rest are handed back and closed). Generic over the
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

/// Idle connections to one endpoint (each [`super::Endpoint`] has its own,
/// so an endpoint list rebuilt after DNS keeps the pools of the endpoints
/// that stayed).
#[derive(Debug)]
pub struct ConnPool<T> {
    config: PoolConfig,
    idle: Vec<(T, Instant)>,
}

impl<T> ConnPool<T> {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        ConnPool {
            config,
            idle: Vec::new(),
        }
    }

    /// The most recently used live connection, if any: not expired, and
    /// `open` (the server has neither closed it nor sent anything while it
    /// sat idle). The others met on the way are dropped (closed).
    pub fn checkout(&mut self, now: Instant, open: impl Fn(&T) -> bool) -> Option<T> {
        while let Some((conn, since)) = self.idle.pop() {
            if now.saturating_duration_since(since) < self.config.idle_timeout && open(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a cleanly finished connection; when the pool is full it is
    /// handed back, for the caller to close.
    pub fn checkin(&mut self, conn: T, now: Instant) -> Result<(), T> {
        if self.idle.len() < self.config.max_idle {
            self.idle.push((conn, now));
            Ok(())
        } else {
            Err(conn)
        }
    }

    /// Closes every connection idle for `idle_timeout` or longer.
    pub fn reap(&mut self, now: Instant) {
        let timeout = self.config.idle_timeout;
        self.idle
            .retain(|(_, since)| now.saturating_duration_since(*since) < timeout);
    }

    /// Closes every idle connection.
    pub fn clear(&mut self) {
        self.idle.clear();
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifo_reuse_expiry_and_cap() {
        let t0 = Instant::now();
        let mut pool = ConnPool::new(PoolConfig {
            max_idle: 2,
            idle_timeout: Duration::from_secs(10),
        });
        assert_eq!(pool.checkin("a", t0), Ok(()));
        assert_eq!(pool.checkin("b", t0 + Duration::from_secs(5)), Ok(()));
        assert_eq!(
            pool.checkin("c", t0),
            Err("c"),
            "over max_idle is handed back"
        );
        assert_eq!(pool.idle_count(), 2);
        // "a" expired at t0+10, "b" still fresh.
        assert_eq!(
            pool.checkout(t0 + Duration::from_secs(11), |_| true),
            Some("b")
        );
        let _ = pool.checkin("a", t0);
        assert_eq!(pool.checkout(t0 + Duration::from_secs(10), |_| true), None);
        let _ = pool.checkin("d", t0);
        pool.reap(t0 + Duration::from_secs(10));
        assert_eq!(pool.idle_count(), 0);
        let _ = pool.checkin("e", t0);
        pool.clear();
        assert_eq!(pool.checkout(t0, |_| true), None);
    }

    #[test]
    fn connections_the_server_closed_are_skipped_and_dropped() {
        let t0 = Instant::now();
        let mut pool = ConnPool::new(PoolConfig::default());
        for c in ["open", "closed-1", "closed-2"] {
            let _ = pool.checkin(c, t0);
        }
        let open = |c: &&str| !c.starts_with("closed");
        assert_eq!(pool.checkout(t0, open), Some("open"));
        assert_eq!(pool.idle_count(), 0, "the closed ones are gone");
    }
}
