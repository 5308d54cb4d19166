//! Upstreams: their configuration, server selection (balancers), the
//! per-worker connection pools, retry budgets and per-server counters.
//!
//! Split by who owns what (DESIGN.md: thread-per-core, shared-nothing):
//!
//! - [`Upstream`] and friends are plain configuration, built by generated
//!   code from the spec (or by hand: `hello_gateway`).
//! - [`UpstreamSet`] is one worker's live state of one upstream: its
//!   endpoints ([`Endpoint`]: address, idle connections, in-flight count,
//!   passive health, counters), its [`Balancer`] and its [`RetryBudget`].
//!   Only that worker's thread touches it: `Cell`s and `RefCell`s, no locks,
//!   no atomics, except one `Relaxed` load per considered endpoint of the
//!   active health state that [`crate::health`] publishes.
//! - [`crate::health::Directory`] is the one gateway-wide part: the
//!   resolved endpoints of each upstream (DNS) and their active health,
//!   written by background threads. Workers pick up a changed endpoint
//!   list from their maintenance tick, never on the request path.

#![forbid(unsafe_code)]

mod balance;
mod endpoint;
mod pool;
mod retry;

use std::net::SocketAddr;
use std::time::Duration;

pub use balance::{Balancer, Candidate, hash_bytes};
pub use endpoint::{Endpoint, InFlight, ServerCounters, UpstreamSet};
pub use pool::{ConnPool, PoolConfig};
pub use retry::RetryBudget;

/// One upstream: a named group of interchangeable servers and how to use
/// them. Build with [`Upstream::new`] and the `with_*` methods.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name, for logs.
    pub name: String,
    /// Servers, in spec order.
    pub servers: Vec<Server>,
    /// How a server is chosen for a request.
    pub balance: Balance,
    /// Active health checks, if any.
    pub health_check: Option<HealthCheck>,
    /// When a failed request is tried again.
    pub retry: RetryPolicy,
    /// Connect and response timeouts; `None`: the server's [`crate::Limits`].
    pub timeouts: Option<UpstreamTimeouts>,
    /// Idle-connection pool; `None`: the server's default [`PoolConfig`].
    pub pool: Option<PoolConfig>,
}

impl Upstream {
    /// An upstream of `servers`, round-robin, no health checks, no retries,
    /// the server-wide timeouts and pool.
    pub fn new(name: impl Into<String>, servers: Vec<Server>) -> Self {
        Upstream {
            name: name.into(),
            servers,
            balance: Balance::RoundRobin,
            health_check: None,
            retry: RetryPolicy::default(),
            timeouts: None,
            pool: None,
        }
    }

    /// An upstream of one server.
    pub fn single(name: impl Into<String>, addr: SocketAddr) -> Self {
        Self::new(name, vec![Server::ip(addr, 1)])
    }

    /// Sets the balance algorithm.
    pub fn with_balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// Enables active health checks.
    pub fn with_health_check(mut self, check: HealthCheck) -> Self {
        self.health_check = Some(check);
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets this upstream's own timeouts.
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.timeouts = Some(UpstreamTimeouts { connect, response });
        self
    }

    /// Sets this upstream's own pool policy.
    pub fn with_pool(mut self, max_idle: usize, idle_timeout: Duration) -> Self {
        self.pool = Some(PoolConfig {
            max_idle,
            idle_timeout,
        });
        self
    }
}

/// One `server` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Where it is.
    pub address: ServerAddress,
    /// Share of the load for weighted algorithms; 0 takes it out of rotation.
    pub weight: u32,
    /// TLS to it; `None`: plain TCP.
    pub tls: Option<ServerTls>,
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

impl Server {
    /// A server at an IP address.
    pub fn ip(addr: SocketAddr, weight: u32) -> Self {
        Server {
            address: ServerAddress::Ip(addr),
            weight,
            tls: None,
        }
    }

    /// Speaks TLS to this server.
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A server named by DNS: every address the name resolves to is an
    /// endpoint with this weight.
    pub fn dns(host: impl Into<String>, port: u16, weight: u32) -> Self {
        Server {
            address: ServerAddress::Dns {
                host: host.into(),
                port,
            },
            weight,
            tls: None,
        }
    }
}

/// A server's address as written in the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    /// A fixed socket address.
    Ip(SocketAddr),
    /// A DNS name, resolved at start and re-resolved in the background.
    Dns {
        /// The name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Ip(addr) => write!(f, "{addr}"),
            ServerAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The balance algorithm of an upstream (docs/spec.md, section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Each server in turn.
    RoundRobin,
    /// Smooth weighted round-robin (nginx's): over every window of
    /// sum(weights) picks, each server gets exactly its weight, spread out.
    WeightedRoundRobin,
    /// The server with the fewest requests in flight on this worker.
    LeastConn,
    /// Power of two choices: two servers at random, the one with fewer
    /// requests in flight on this worker.
    P2c,
    /// A hash ring on a request key: a key sticks to its server while that
    /// server is up; removing one of N servers moves about 1/N of the keys.
    ConsistentHash(HashKey),
}

/// Where the consistent-hash key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header (lower-case name); absent: the empty key.
    Header(String),
    /// The normalised path.
    Path,
}

/// Active health check of an upstream, run by one background thread for
/// the whole gateway (see [`crate::health`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// Path of the `GET` request.
    pub path: String,
    /// Time between two checks of one endpoint.
    pub interval: Duration,
    /// Time allowed for connect + answer.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy endpoint healthy.
    pub healthy: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy: u32,
    /// Statuses that count as healthy (the spec's default: 200..=399).
    pub expect: std::ops::RangeInclusive<u16>,
}

/// Per-upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Time allowed to connect.
    pub connect: Duration,
    /// Time from the request sent to the response head received (per try).
    pub response: Duration,
}

/// When a request is tried again on another server (docs/spec.md, "Retries").
///
/// Whatever the policy, a request the upstream may have processed is
/// retried only if its method is idempotent and it had no body (bodies are
/// streamed, never buffered, so they cannot be sent twice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Further attempts after the first; 0 = no retries.
    pub attempts: u32,
    /// Retry when connecting failed.
    pub on_connect_error: bool,
    /// Retry when the response head did not come in time.
    pub on_timeout: bool,
    /// Retry when the upstream closed or reset the connection before a
    /// response head (Envoy's `reset`, HAProxy's `empty-response`, part of
    /// nginx's default `error`).
    pub on_reset: bool,
    /// Retry when the response has one of these statuses.
    pub on_status: Vec<u16>,
    /// Deadline of the whole request (until its response head), all tries
    /// included: no try starts after it, and each try's timeouts are cut to
    /// what is left. `None`: only each try's own timeouts bound it.
    pub total: Option<Duration>,
}

impl RetryPolicy {
    /// `attempts` further tries on the given conditions.
    pub fn new(attempts: u32, on_connect_error: bool, on_timeout: bool, on_status: &[u16]) -> Self {
        RetryPolicy {
            attempts,
            on_connect_error,
            on_timeout,
            on_reset: false,
            on_status: on_status.to_vec(),
            total: None,
        }
    }

    /// Retries when the upstream closed or reset the connection before a
    /// response head, too.
    pub fn on_reset(mut self) -> Self {
        self.on_reset = true;
        self
    }

    /// Sets the deadline of the whole request.
    pub fn with_total(mut self, total: Duration) -> Self {
        self.total = Some(total);
        self
    }

    /// Whether a response with `status` may be retried under this policy.
    pub fn retries_status(&self, status: u16) -> bool {
        self.attempts > 0 && self.on_status.contains(&status)
    }
}
