//! Workers: one thread per core, pinned, each with its own compio runtime
//! (io_uring, or the polling driver as fallback), its own `SO_REUSEPORT`
//! listener, upstream pool, buffers and timers. Nothing is shared on the
//! request path. The main thread only binds, waits for readiness, waits
//! for SIGTERM/SIGINT and tells the workers to drain.
//!
//! Driver choice: `--driver`/[`ServerConfig::driver`] or env `BLITZ_DRIVER`
//! (`auto`, `io-uring`, `poll`). `auto` tries io_uring and falls back to
//! polling when the ring cannot be created (old kernel, seccomp profile
//! of a container); `io-uring` fails instead. Each worker logs the driver
//! it runs on one line on stderr.
//!
//! SIGHUP re-reads every listener's TLS certificates (see
//! [`crate::tls`]); connections are not touched.
//!
//! Drain (SIGTERM/SIGINT): each worker stops accepting (its listener is
//! closed), wakes idle keep-alive connections so they close, lets
//! in-flight exchanges finish within the grace period, then returns; the
//! process exits 0.
//!
//! `unsafe` is allowed in this module tree only (signal masks, later the
//! io_uring extras and socket handoff), each block with a `SAFETY` note.

mod buffers;
mod drain;
mod listen;
mod process;
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod seccomp_test;

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use compio::driver::{DriverType, ProactorBuilder};
use compio::net::TcpListener;
use compio::runtime::{Runtime, RuntimeBuilder};
use futures_util::future::{Either, select};

pub use buffers::{BUFFER_CAPACITY, BufferPool, RequestIds};
pub use drain::{DrainState, DrainWait};
pub(crate) use listen::Listener;
pub use listen::{CertConfig, ListenerConfig, Protocols, TlsConfig};

use crate::lb::PoolConfig;
use crate::proxy::gateway::Gateway;
use crate::proxy::{Limits, Worker, serve_connection};

/// Which compio driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring if it can be set up, else polling.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// The polling (epoll) driver.
    Poll,
}

impl FromStr for DriverChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DriverChoice::Auto),
            "io-uring" | "io_uring" | "iouring" => Ok(DriverChoice::IoUring),
            "poll" | "polling" | "epoll" => Ok(DriverChoice::Poll),
            other => Err(format!(
                "unknown driver {other:?} (expected auto, io-uring or poll)"
            )),
        }
    }
}

impl DriverChoice {
    /// `BLITZ_DRIVER` if set and valid, else `Auto`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("BLITZ_DRIVER") {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(DriverChoice::Auto),
        }
    }
}

/// Name used in logs.
pub fn driver_name(t: DriverType) -> &'static str {
    match t {
        DriverType::IoUring => "io_uring",
        DriverType::Poll => "poll",
        DriverType::IOCP => "iocp",
    }
}

/// Builds with the chosen driver; for `Auto`, tries io_uring first and
/// falls back to polling on any error. Returns what was built, the driver
/// and, after a fallback, why io_uring was not used. `build` is a
/// parameter so the detection path is tested without a kernel.
pub fn build_with_fallback<R>(
    choice: DriverChoice,
    mut build: impl FnMut(DriverType) -> io::Result<R>,
) -> io::Result<(R, DriverType, Option<io::Error>)> {
    match choice {
        DriverChoice::Poll => build(DriverType::Poll).map(|r| (r, DriverType::Poll, None)),
        DriverChoice::IoUring => build(DriverType::IoUring).map(|r| (r, DriverType::IoUring, None)),
        DriverChoice::Auto => match build(DriverType::IoUring) {
            Ok(r) => Ok((r, DriverType::IoUring, None)),
            Err(e) => build(DriverType::Poll).map(|r| (r, DriverType::Poll, Some(e))),
        },
    }
}

/// Parses `10s`, `250ms`, `2m`, `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(d)
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The listeners; every worker accepts on each (`SO_REUSEPORT`).
    pub listeners: Vec<ListenerConfig>,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Driver choice.
    pub driver: DriverChoice,
    /// Request limits and timeouts.
    pub limits: Limits,
    /// Upstream pool policy.
    pub pool: PoolConfig,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub grace: Duration,
    /// Pin worker i to core i (modulo the core count).
    pub pin: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listeners: vec![ListenerConfig::h1(
                "default",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )],
            workers: 1,
            driver: DriverChoice::Auto,
            limits: Limits::default(),
            pool: PoolConfig::default(),
            grace: Duration::from_secs(30),
            pin: true,
        }
    }
}

/// Builds one worker's runtime on driver `t`, pinned to `core`. (io_uring's
/// cooperative task running was measured and left off: fewer requests per
/// second with the same CPU per request.)
fn build_runtime(t: DriverType, core: Option<usize>) -> io::Result<Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor.driver_type(t);
    let mut rb = RuntimeBuilder::new();
    rb.with_proactor(proactor);
    if let Some(core) = core {
        rb.thread_affinity(std::iter::once(core).collect());
    }
    rb.build()
}

enum Ready {
    Up(compio::event::EventHandle),
    Failed(io::Error),
}

/// Runs the gateway until SIGTERM/SIGINT, then drains and returns.
///
/// `make_gateway(worker_index)` builds each worker's own gateway instance
/// on that worker's thread. Prints `listening on ADDR` on stderr once every
/// worker accepts.
pub fn serve<G, F>(config: ServerConfig, make_gateway: F) -> io::Result<()>
where
    G: Gateway,
    F: Fn(usize) -> G + Send + Sync + 'static,
{
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.workers
    };
    // Before any thread exists, so all inherit the mask.
    process::block_termination()?;
    process::raise_nofile_limit();

    let mut bound = listen::bind_all(&config.listeners, workers)?;
    // The actual addresses (a port 0 was given one), for logs and workers.
    let mut listener_configs = config.listeners.clone();
    for (l, sockets) in listener_configs.iter_mut().zip(&bound) {
        if let Some(s) = sockets.first() {
            l.addr = s.local_addr()?;
        }
    }
    // [listener][worker] -> [worker][listener]
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    for sockets in &mut bound {
        for (w, s) in sockets.drain(..).enumerate() {
            per_worker[w].push(s);
        }
    }
    // TLS state (certificates loaded) before any worker starts: a bad
    // file fails the start, not the first handshake.
    let listener_configs: Arc<[Listener]> = listener_configs
        .into_iter()
        .map(Listener::new)
        .collect::<io::Result<Vec<_>>>()?
        .into();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let make_gateway = Arc::new(make_gateway);
    let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
    let mut threads = Vec::with_capacity(workers);
    for (id, sockets) in per_worker.into_iter().enumerate() {
        let make_gateway = Arc::clone(&make_gateway);
        let listener_configs = Arc::clone(&listener_configs);
        let ready_tx = ready_tx.clone();
        let config = config.clone();
        let handle = std::thread::Builder::new()
            .name(format!("blitz-worker-{id}"))
            .spawn(move || {
                let core = if config.pin { Some(id % cores) } else { None };
                let built = build_with_fallback(config.driver, |t| build_runtime(t, core));
                let runtime: Runtime = match built {
                    Ok((rt, _, fallback)) => {
                        let why = fallback
                            .map(|e| format!(" (io_uring unavailable: {e})"))
                            .unwrap_or_default();
                        eprintln!(
                            "blitz: worker {id} driver={}{why}",
                            driver_name(rt.driver_type())
                        );
                        rt
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Ready::Failed(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut listeners = Vec::with_capacity(sockets.len());
                    for socket in sockets {
                        match TcpListener::from_std(socket) {
                            Ok(l) => listeners.push(l),
                            Err(e) => {
                                let _ = ready_tx.send(Ready::Failed(e));
                                return;
                            }
                        }
                    }
                    let drain_event = compio::event::Event::new();
                    if ready_tx.send(Ready::Up(drain_event.handle())).is_err() {
                        return;
                    }
                    drop(ready_tx);
                    let gateway = make_gateway(id);
                    let worker = Rc::new(Worker::new(id, gateway, config.limits, config.pool));
                    run_worker(
                        worker,
                        listeners,
                        &listener_configs,
                        drain_event,
                        config.grace,
                    )
                    .await;
                });
            })?;
        threads.push(handle);
    }
    drop(ready_tx);

    let mut handles = Vec::with_capacity(workers);
    let mut failure = None;
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ready::Up(h)) => handles.push(h),
            Ok(Ready::Failed(e)) => {
                failure = Some(e);
                break;
            }
            Err(_) => {
                failure = Some(io::Error::other("a worker exited during start"));
                break;
            }
        }
    }
    if let Some(e) = failure {
        for h in handles {
            h.notify();
        }
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    for l in listener_configs.iter() {
        eprintln!(
            "listening on {} (listener {:?})",
            l.config.addr, l.config.name
        );
    }

    // SIGHUP re-reads certificates; SIGTERM/SIGINT drain.
    let sig = loop {
        let sig = process::wait_termination()?;
        if sig != libc::SIGHUP {
            break sig;
        }
        for l in listener_configs.iter() {
            l.reload();
        }
    };
    eprintln!("blitz: signal {sig}, draining (grace {:?})", config.grace);
    for h in handles {
        h.notify();
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

async fn run_worker<G: Gateway>(
    worker: Rc<Worker<G>>,
    listeners: Vec<TcpListener>,
    configs: &[Listener],
    drain_event: compio::event::Event,
    grace: Duration,
) {
    // Close idle upstream connections past their idle timeout even when
    // no traffic comes to do it at checkout.
    let reaper = {
        let worker = Rc::clone(&worker);
        compio::runtime::spawn(async move {
            while !worker.drain.is_draining() {
                compio::time::sleep(Duration::from_secs(1)).await;
                worker.pool.borrow_mut().reap(Instant::now());
            }
        })
    };
    reaper.detach();

    // One accept loop per listener; the first drain signal ends them all.
    let accepting: Vec<_> = listeners
        .into_iter()
        .zip(configs)
        .map(|(listener, config)| {
            let worker = Rc::clone(&worker);
            let config = Rc::new(config.clone());
            compio::runtime::spawn(accept_loop(worker, listener, config))
        })
        .collect();
    drain_event.wait().await;
    worker.drain.start();
    // Each loop returns (dropping its listener) once it sees the drain.
    for task in accepting {
        let _ = task.await;
    }
    // Idle upstream connections are not needed any more.
    worker
        .pool
        .borrow_mut()
        .reap(Instant::now() + Duration::from_secs(365 * 24 * 3600));
    let deadline = Instant::now() + grace;
    while worker.active.get() > 0 && Instant::now() < deadline {
        compio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Accepts connections on one listener until the worker drains.
async fn accept_loop<G: Gateway>(
    worker: Rc<Worker<G>>,
    listener: TcpListener,
    config: Rc<Listener>,
) {
    let mut drained = pin!(worker.drain.wait());
    loop {
        let accept = pin!(listener.accept());
        match select(accept, drained.as_mut()).await {
            Either::Left((Ok((stream, peer)), _)) => {
                // Accepted while the drain began: still a client to serve.
                let conn = serve_connection(Rc::clone(&worker), stream, peer, Rc::clone(&config));
                compio::runtime::spawn(conn).detach();
                if worker.drain.is_draining() {
                    break;
                }
            }
            Either::Left((Err(e), _)) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("blitz: accept failed on {}: {e}", config.config.addr);
                compio::time::sleep(Duration::from_millis(20)).await;
            }
            Either::Right(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_poll_when_io_uring_fails() {
        let mut tried = Vec::new();
        let (r, t, why) = build_with_fallback(DriverChoice::Auto, |t| {
            tried.push(t);
            if t == DriverType::IoUring {
                Err(io::Error::from_raw_os_error(libc::EPERM))
            } else {
                Ok(7)
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r, t), (7, DriverType::Poll));
        assert!(why.is_some());
        assert_eq!(tried, [DriverType::IoUring, DriverType::Poll]);
    }

    #[test]
    fn forced_drivers_do_not_fall_back() {
        let r = build_with_fallback(DriverChoice::IoUring, |t| {
            if t == DriverType::IoUring {
                Err(io::Error::from_raw_os_error(libc::ENOSYS))
            } else {
                Ok(())
            }
        });
        assert!(r.is_err());
        let (_, t, _) =
            build_with_fallback(DriverChoice::Poll, |_| Ok(())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t, DriverType::Poll);
        let (_, t, why) =
            build_with_fallback(DriverChoice::Auto, |_| Ok(())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t, why.is_none()), (DriverType::IoUring, true));
    }

    #[test]
    fn real_runtime_builds_with_each_choice() {
        // Poll always works; auto works everywhere (falls back if needed).
        for choice in [DriverChoice::Poll, DriverChoice::Auto] {
            let built = build_with_fallback(choice, |t| {
                let mut p = ProactorBuilder::new();
                p.driver_type(t);
                RuntimeBuilder::new().with_proactor(p).build()
            });
            let (rt, t, _) = built.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(rt.driver_type(), t);
        }
    }

    #[test]
    fn driver_choice_and_durations_parse() {
        assert_eq!(
            "io-uring".parse::<DriverChoice>(),
            Ok(DriverChoice::IoUring)
        );
        assert_eq!("poll".parse::<DriverChoice>(), Ok(DriverChoice::Poll));
        assert!("uring2".parse::<DriverChoice>().is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }
}
