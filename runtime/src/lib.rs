//! Blitz runtime: a thread-per-core HTTP/1.1 reverse proxy engine on
//! compio (io_uring, with a polling fallback) that generated gateways link
//! against.
//!
//! Module map:
//! - [`http`]: sans-IO HTTP/1.1 (strict parsing, chunked coding, serializers).
//! - [`proxy`]: the request pipeline (IO shell), limits, errors and the
//!   [`Gateway`] trait generated code implements.
//! - [`handoff`]: the control socket and the socket handoff of upgrades.
//! - [`lb`]: upstreams, balancers, the per-worker connection pools, retry
//!   budgets and per-server counters.
//! - [`health`]: the gateway-wide part: resolved endpoints (DNS) and active
//!   health checks on background threads; passive outlier ejection.
//! - [`rt`]: workers, driver selection, listeners, signals and drain
//!   (the only place `unsafe` is allowed).

/// Writes one line to stderr, the gateway's log, in one `write` (lines of
/// workers, and of the old and new process during an upgrade, do not
/// interleave). Unlike `eprintln!`, a failed write is dropped, not a
/// panic: with SIGPIPE ignored, a log pipe whose reader went away (a
/// supervisor restarted, a `| head`) fails every write with EPIPE, and
/// losing a log line must never take a worker, a drain or an upgrade down
/// with it. Exported for the binaries built on the runtime.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

pub mod app;
pub mod handoff;
pub mod health;
pub mod http;
#[cfg(feature = "interp")]
pub mod interp;
pub mod lb;
pub mod prelude;
pub mod proxy;
pub mod route;
pub mod rt;
#[cfg(feature = "tls")]
pub mod tls;

pub use proxy::gateway::{Action, Gateway};
pub use proxy::{Limits, ProxyError};
pub use rt::{
    CertConfig, DriverChoice, ListenerConfig, Protocols, ServerConfig, TestHooks, TlsConfig, serve,
};

/// The process allocator when the `mimalloc` feature is on (generated
/// gateways turn it on; see the feature's note in Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
