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
//! Listening sockets are bound here, inherited from the running instance
//! on `--upgrade` (`crate::handoff`), or passed by systemd (`systemd.rs`);
//! workers initialise before they get them (see [`serve`]).
//!
//! SIGHUP re-reads every listener's TLS certificates and every upstream
//! CA file (see [`crate::tls`]); connections are not touched.
//!
//! Drain (SIGTERM/SIGINT, or a new process took over): each worker stops
//! accepting (closes its listening descriptors), gives connections waiting
//! for a request a last call, lets in-flight exchanges finish within the
//! grace period, then returns; the process exits 0.
//!
//! `unsafe` is allowed in this module tree only (signal masks, adopting
//! systemd's descriptors, later the io_uring extras), each block with a
//! `SAFETY` note.

mod buffers;
pub mod connect;
mod drain;
mod listen;
pub(crate) mod process;
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod seccomp_test;
mod systemd;
pub mod time;
mod timer;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::pin;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use compio::driver::{DriverType, ProactorBuilder};
use compio::net::{PollFd, TcpStream};
use compio::runtime::{Runtime, RuntimeBuilder};
use futures_util::future::{Either, select};

pub use buffers::{BUFFER_CAPACITY, BufferPool, RequestIds};
pub use drain::{DrainState, DrainWait};
pub(crate) use listen::Listener;
pub use listen::{CertConfig, ListenerConfig, Protocols, TlsConfig};

use crate::handoff::server::Offer;
use crate::handoff::wire::Kind;
use crate::handoff::{self, ControlSocket};
use crate::health::Directory;
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
        // Asked for by name, so no fallback; the error says what failed (a
        // seccomp profile's bare EPERM names nothing).
        DriverChoice::IoUring => build(DriverType::IoUring)
            .map(|r| (r, DriverType::IoUring, None))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("io_uring is not available here ({e}); `--driver auto` would fall back to poll"),
                )
            }),
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
    /// The gateway's name: only a binary of the same name takes over.
    pub name: String,
    /// The control socket to serve, for upgrades (`None`: this instance
    /// cannot be upgraded); with `upgrade`, the one to take over from
    /// (`None`: the default path for `name`).
    pub admin_socket: Option<PathBuf>,
    /// Take the listening sockets over from the running instance
    /// (`GATEWAY --upgrade`) instead of binding them.
    pub upgrade: bool,
    /// Faults the upgrade tests inject; none in a generated gateway.
    pub test_hooks: TestHooks,
}

/// Faults injected by the upgrade tests, set only by the test binary
/// (`hello_gateway`, from its environment): a generated gateway never
/// builds them, so no production binary reads a test variable.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// Each worker sees the drain this late (a loaded machine's
    /// scheduling, made repeatable), for the test that no new connection
    /// reaches the old process once the new one says it took over.
    pub drain_delay: Option<Duration>,
    /// With `--upgrade`, stop right after the sockets were received, so a
    /// test can kill the new process mid-handoff.
    pub stall_after_sockets: bool,
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
            name: "blitz".to_string(),
            admin_socket: None,
            upgrade: false,
            test_hooks: TestHooks::default(),
        }
    }
}

/// Tasks a worker polls before it submits their IO and reaps completions
/// (compio's default: 61). An HTTP/2 connection is one task that runs all
/// its streams, so 61 of them made batches of hundreds of exchanges: the
/// upstream sends left in bursts and both the worker and the origin sat
/// idle between them (CPU 0 at 86 % under h2load). At 32, `h2load -c50
/// -m10` over TLS ran 10-15 % more requests per second and cleartext
/// HTTP/1.1 under wrk stayed level (at 16, HTTP/1.1 lost ~10 %: more
/// `io_uring_enter` calls per request). See bench/RESULTS.md.
const EVENT_INTERVAL: usize = 32;

/// Builds one worker's runtime on driver `t`, pinned to `core`.
///
/// io_uring runs with cooperative task running (`IORING_SETUP_COOP_TASKRUN`,
/// Linux 5.19): a socket event for a busy worker waits for the worker's next
/// `io_uring_enter` instead of interrupting it. Without it, every packet that
/// completes a posted read on a running worker makes the sending core kick it
/// with an IPI: under `wrk` over TLS, 1.0 reschedule IPI per request, each a
/// VM exit on a virtual machine, paid partly by the core that runs the client
/// and the origin. With it, 0.03 per request; the worker's CPU per request
/// fell 7-19 % and the client's and origin's 5-11 % (TLS HTTP/1.1, 8
/// interleaved pairs); HTTP/2 and cleartext stayed within the noise. The
/// worker calls `io_uring_enter` at least every [`EVENT_INTERVAL`] tasks, so
/// completions are never held back for long. See bench/RESULTS.md. A
/// kernel that does not know the flag (EINVAL) gets io_uring without it.
fn build_runtime(t: DriverType, core: Option<usize>) -> io::Result<Runtime> {
    match build_runtime_with(t, core, true) {
        Err(e) if t == DriverType::IoUring && e.raw_os_error() == Some(libc::EINVAL) => {
            build_runtime_with(t, core, false)
        }
        built => built,
    }
}

fn build_runtime_with(t: DriverType, core: Option<usize>, coop: bool) -> io::Result<Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor.driver_type(t);
    proactor.coop_taskrun(coop);
    let mut rb = RuntimeBuilder::new();
    rb.with_proactor(proactor).event_interval(EVENT_INTERVAL);
    if let Some(core) = core {
        rb.thread_affinity(std::iter::once(core).collect());
    }
    rb.build()
}

/// What a worker thread reports to the main thread.
enum Ready {
    /// Runtime and gateway built; waiting for its sockets.
    Initialized(compio::event::EventHandle),
    /// Accepting on every socket it was given.
    Accepting,
    /// Drain started: every accept loop has returned, so this worker
    /// takes no new connection from the (shared) listening sockets.
    StoppedAccepting,
    Failed(io::Error),
}

/// With this variable set, `serve` writes `ready PID` on stdout once it
/// serves (for `--upgrade --detach`, whose parent waits for that line).
pub const REPORT_READY_ENV: &str = "BLITZ_REPORT_READY";

/// Why the main thread starts the drain.
enum Stop {
    Signal(i32),
    HandedOff(u32),
}

/// A worker's listening sockets: `(listener index, socket)`.
type WorkerSockets = Vec<(usize, std::net::TcpListener)>;

/// The worker threads, initialised and waiting for their sockets.
struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    drains: Vec<compio::event::EventHandle>,
    sockets: Vec<mpsc::Sender<WorkerSockets>>,
    ready: mpsc::Receiver<Ready>,
}

impl Workers {
    /// Starts `n` workers; returns once each built its runtime and gateway.
    fn start<G, F>(
        config: &ServerConfig,
        n: usize,
        listeners: Arc<[Listener]>,
        directory: &Arc<Directory>,
        make_gateway: F,
    ) -> io::Result<Workers>
    where
        G: Gateway,
        F: Fn(usize) -> G + Send + Sync + 'static,
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let make_gateway = Arc::new(make_gateway);
        let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
        let mut workers = Workers {
            threads: Vec::with_capacity(n),
            drains: Vec::with_capacity(n),
            sockets: Vec::with_capacity(n),
            ready: ready_rx,
        };
        for id in 0..n {
            let (sockets_tx, sockets_rx) = mpsc::channel::<WorkerSockets>();
            workers.sockets.push(sockets_tx);
            let make_gateway = Arc::clone(&make_gateway);
            let listeners = Arc::clone(&listeners);
            let directory = Arc::clone(directory);
            let ready_tx = ready_tx.clone();
            let config = config.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("blitz-worker-{id}"))
                .spawn(move || {
                    let core = if config.pin { Some(id % cores) } else { None };
                    worker_thread(
                        (id, core),
                        &config,
                        &listeners,
                        directory,
                        &*make_gateway,
                        &ready_tx,
                        &sockets_rx,
                    )
                });
            match spawned {
                Ok(t) => workers.threads.push(t),
                Err(e) => {
                    workers.stop();
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        for _ in 0..n {
            match workers.ready.recv() {
                Ok(Ready::Initialized(h)) => workers.drains.push(h),
                Ok(Ready::Failed(e)) => {
                    workers.stop();
                    return Err(e);
                }
                Ok(Ready::Accepting | Ready::StoppedAccepting) | Err(_) => {
                    workers.stop();
                    return Err(io::Error::other("a worker exited during start"));
                }
            }
        }
        Ok(workers)
    }

    /// Hands out the sockets, spread over the workers, and waits until
    /// every worker accepts on all of its own.
    fn accept_on(&mut self, bound: Vec<Vec<std::net::TcpListener>>) -> io::Result<()> {
        let n = self.sockets.len();
        let mut per_worker: Vec<WorkerSockets> = (0..n).map(|_| Vec::new()).collect();
        for (listener, sockets) in bound.into_iter().enumerate() {
            for (j, s) in sockets.into_iter().enumerate() {
                per_worker[j % n].push((listener, s));
            }
        }
        for (tx, sockets) in self.sockets.iter().zip(per_worker) {
            if tx.send(sockets).is_err() {
                return Err(io::Error::other("a worker exited during start"));
            }
        }
        for _ in 0..n {
            match self.ready.recv() {
                Ok(Ready::Accepting) => {}
                Ok(Ready::Failed(e)) => return Err(e),
                Ok(Ready::Initialized(_) | Ready::StoppedAccepting) | Err(_) => {
                    return Err(io::Error::other("a worker exited during start"));
                }
            }
        }
        Ok(())
    }

    /// Starts the drain on every worker and returns once none of them
    /// accepts any more (or `STOP_ACCEPTING_TIMEOUT` passed: a worker
    /// busy that long is logged, not waited for). Only for workers that
    /// accept (after [`Workers::accept_on`]).
    fn stop_accepting(&mut self) {
        for h in self.drains.drain(..) {
            h.notify();
        }
        let deadline = Instant::now() + STOP_ACCEPTING_TIMEOUT;
        for _ in 0..self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ready.recv_timeout(left) {
                Ok(Ready::StoppedAccepting) => {}
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    log_line!(
                        "blitz: a worker did not stop accepting within {STOP_ACCEPTING_TIMEOUT:?}"
                    );
                    return;
                }
                // Every worker exited: none accepts.
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Starts the drain on every worker (if not started) and waits for
    /// them to finish.
    fn stop(self) {
        // Workers still waiting for sockets see their channel close.
        drop(self.sockets);
        for h in self.drains {
            h.notify();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One worker: runtime, gateway, then (once the main thread has the
/// sockets) its accept loops until drained.
fn worker_thread<G: Gateway>(
    (id, core): (usize, Option<usize>),
    config: &ServerConfig,
    listeners: &[Listener],
    directory: Arc<Directory>,
    make_gateway: &(dyn Fn(usize) -> G + Send + Sync),
    ready: &mpsc::Sender<Ready>,
    sockets: &mpsc::Receiver<WorkerSockets>,
) {
    let built = build_with_fallback(config.driver, |t| build_runtime(t, core));
    let runtime: Runtime = match built {
        Ok((rt, _, fallback)) => {
            let why = fallback
                .map(|e| format!(" (io_uring unavailable: {e})"))
                .unwrap_or_default();
            log_line!(
                "blitz: worker {id} driver={}{why}",
                driver_name(rt.driver_type())
            );
            rt
        }
        Err(e) => {
            let _ = ready.send(Ready::Failed(e));
            return;
        }
    };
    let poll_driver = runtime.driver_type() == DriverType::Poll;
    runtime.block_on(async move {
        let gateway = make_gateway(id);
        let worker = Rc::new(Worker::new(
            id,
            gateway,
            config.limits,
            config.pool,
            directory,
        ));
        let drain_event = compio::event::Event::new();
        if ready
            .send(Ready::Initialized(drain_event.handle()))
            .is_err()
        {
            return;
        }
        // Blocking is fine: nothing runs on this runtime yet.
        let Ok(sockets) = sockets.recv() else {
            return;
        };
        let mut polled = Vec::with_capacity(sockets.len());
        for (listener, socket) in sockets {
            match PollFd::new(socket) {
                Ok(p) => polled.push((listener, p)),
                Err(e) => {
                    let _ = ready.send(Ready::Failed(e));
                    return;
                }
            }
        }
        let accepting: Vec<_> = polled
            .into_iter()
            .map(|(listener, socket)| {
                let worker = Rc::clone(&worker);
                let config = Rc::new(listeners[listener].clone());
                compio::runtime::spawn(accept_loop(worker, socket, config, poll_driver))
            })
            .collect();
        if ready.send(Ready::Accepting).is_err() {
            return;
        }
        let drain = DrainTiming {
            grace: config.grace,
            delay: config.test_hooks.drain_delay,
        };
        run_worker(worker, accepting, drain_event, drain, ready).await;
    });
}

/// Runs the gateway until SIGTERM/SIGINT, or until a new process took
/// over (`GATEWAY --upgrade`), then drains and returns.
///
/// `make_gateway(worker_index)` builds each worker's own gateway instance
/// on that worker's thread. Order (docs/operations.md): workers initialise
/// (runtime, gateway), then the sockets are obtained — inherited from the
/// running instance on `upgrade`, from systemd (`LISTEN_FDS`), or bound —
/// then every worker accepts, then the old instance (if any) is told to
/// stop accepting and the control socket is taken over or bound, then
/// `listening on ADDR` is printed on stderr.
pub fn serve<G, F>(config: ServerConfig, make_gateway: F) -> io::Result<()>
where
    G: Gateway,
    F: Fn(usize) -> G + Send + Sync + 'static,
{
    let n = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.workers
    };
    // Before any thread exists, so all inherit the mask.
    process::block_termination()?;
    process::raise_nofile_limit();
    let activated = if config.upgrade {
        Vec::new()
    } else {
        systemd::listen_fds()?
    };

    // The one gateway-wide part of the upstreams: resolved endpoints and
    // active health, with their background threads (stopped on return).
    let upstreams = make_gateway(0).upstreams();
    #[cfg(not(feature = "tls"))]
    if let Some(u) = upstreams
        .iter()
        .find(|u| u.servers.iter().any(|s| s.tls.is_some()))
    {
        return Err(io::Error::other(format!(
            "upstream {:?} speaks TLS to its servers, but this runtime was built without its `tls` feature",
            u.name
        )));
    }
    let directory = Directory::start(&upstreams, config.limits.response_head_limits())?;
    let _directory_threads = StopOnDrop(Arc::clone(&directory));
    // Workers take their listeners before ports are known (a port 0
    // listener is only ever logged with its actual port below), with their
    // TLS certificates loaded: a bad file fails the start, before any
    // socket is taken over.
    let listeners: Arc<[Listener]> = config
        .listeners
        .iter()
        .cloned()
        .map(Listener::new)
        .collect::<io::Result<Vec<_>>>()?
        .into();
    let mut workers = Workers::start(&config, n, Arc::clone(&listeners), &directory, make_gateway)?;

    let mut takeover = None;
    let bound = if config.upgrade {
        let path = control_path(&config);
        let t =
            handoff::client::take_over(&path, &config.name, config.test_hooks.stall_after_sockets)
                .map_err(io::Error::other);
        let mut t = match t {
            Ok(t) => t,
            Err(e) => {
                workers.stop();
                return Err(e);
            }
        };
        let inherited = std::mem::take(&mut t.sockets)
            .into_iter()
            .filter_map(|(kind, addr, fd)| (kind == Kind::Tcp).then_some((addr, fd)))
            .collect();
        let from = "the running instance";
        match listen::assemble(&config.listeners, inherited, from) {
            Ok(b) => {
                takeover = Some(t);
                b
            }
            Err(why) => {
                t.abort(&why);
                workers.stop();
                return Err(io::Error::other(format!("upgrade refused: {why}")));
            }
        }
    } else {
        let from = "systemd (LISTEN_FDS)";
        match listen::assemble(&config.listeners, activated, from) {
            Ok(b) => b,
            Err(why) => {
                workers.stop();
                return Err(io::Error::other(why));
            }
        }
    };
    // The next control socket is bound before any worker accepts, so the
    // upgrade cannot fail once connections are being taken.
    let next_control = match &takeover {
        Some(t) => match t.bind_next() {
            Ok(s) => Some(s),
            Err(why) => {
                if let Some(t) = takeover.take() {
                    t.abort(&why);
                }
                workers.stop();
                return Err(io::Error::other(format!("upgrade aborted: {why}")));
            }
        },
        None => None,
    };
    // A stop signal that came while taking over (the handshake waits for
    // the old process) cancels the upgrade: the running instance serves
    // on, as when any step before the takeover fails. One that comes later
    // stops this instance once it serves, as it would any running one.
    let stopped = takeover.is_some().then(process::stop_pending).flatten();
    // Last, the sockets for the other workers: nothing can refuse the
    // upgrade once they join the listening groups (closing them would
    // reset the connections queued on them).
    let mut bound = bound;
    let filled = match stopped {
        Some(sig) => Err(format!(
            "the new process got signal {sig} before it took over"
        )),
        None => bound.fill(n),
    };
    if let Err(why) = filled {
        workers.stop();
        return Err(io::Error::other(match takeover.take() {
            Some(t) => {
                t.abort(&why);
                format!("upgrade aborted: {why}")
            }
            None => why,
        }));
    }
    let listener_configs = bound.listeners.clone();
    let offer = offer_of(&config.name, &bound.sockets)?;
    if let Err(e) = workers.accept_on(bound.sockets) {
        if let Some(t) = takeover.take() {
            t.abort(&format!("the new process failed to start: {e}"));
        }
        workers.stop();
        return Err(e);
    }
    let control = match (takeover, next_control) {
        (Some(t), Some(next)) => {
            let (socket, old_pid) = t.complete(next);
            log_line!("blitz: upgrade: took over from pid {old_pid}");
            socket
        }
        _ => match config.admin_socket.as_deref() {
            Some(path) => match ControlSocket::bind_fresh(path) {
                Ok(s) => Some(s),
                Err(e) => {
                    log_line!("blitz: {e}; upgrades of this instance are disabled");
                    None
                }
            },
            None => None,
        },
    };
    // After the control socket: a script that waits for this line can
    // `--upgrade` at once.
    for l in &listener_configs {
        log_line!("listening on {} (listener {:?})", l.addr, l.name);
    }
    systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    if std::env::var_os(REPORT_READY_ENV).is_some() {
        use std::io::Write;
        let mut out = io::stdout();
        let _ = writeln!(out, "ready {}", std::process::id());
        let _ = out.flush();
    }

    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    let signals = stop_tx.clone();
    std::thread::Builder::new()
        .name("blitz-signals".into())
        .spawn(move || {
            // SIGHUP re-reads certificates and upstream CA files;
            // SIGTERM/SIGINT drain.
            while let Ok(sig) = process::wait_termination() {
                if sig == libc::SIGHUP {
                    for l in listeners.iter() {
                        l.reload();
                    }
                    #[cfg(feature = "tls")]
                    crate::tls::reload_ca_files();
                    continue;
                }
                let _ = signals.send(Stop::Signal(sig));
                break;
            }
        })?;
    let stopped_accepting = Arc::new(Gate::default());
    let server = match control {
        Some(socket) => {
            let handed_off = stop_tx.clone();
            // Returns once no worker accepts, so that `draining` (sent
            // after it) means the new process alone takes new connections.
            // The main thread may be draining for a signal already: the
            // gate opens on either path.
            let stopped = Arc::clone(&stopped_accepting);
            let on_handed_off = move |pid| {
                let _ = handed_off.send(Stop::HandedOff(pid));
                stopped.wait(STOP_ACCEPTING_TIMEOUT + Duration::from_secs(1));
            };
            match handoff::server::spawn(socket, offer, on_handed_off) {
                Ok(s) => Some(s),
                Err(e) => {
                    log_line!("blitz: cannot serve the control socket ({e}); upgrades disabled");
                    None
                }
            }
        }
        // No successor can take the sockets: keep no copies of them, so a
        // drain's closing of the workers' sockets refuses new connections
        // at once instead of leaving them queued until the exit.
        None => {
            drop(offer);
            None
        }
    };
    drop(stop_tx);

    match stop_rx.recv() {
        Ok(Stop::Signal(sig)) => {
            log_line!("blitz: signal {sig}, draining (grace {:?})", config.grace);
            // Nobody takes over: close the listening sockets now so new
            // connections are refused at once rather than queued.
            if let Some(server) = &server {
                server.withdraw();
            }
        }
        Ok(Stop::HandedOff(pid)) => {
            log_line!(
                "blitz: handed off to pid {pid}, draining (grace {:?})",
                config.grace
            );
        }
        Err(_) => {}
    }
    workers.stop_accepting();
    stopped_accepting.open();
    workers.stop();
    if let Some(server) = &server {
        // The control thread tells the new process `draining` once the
        // gate above opened; exiting first would cut that short, and the
        // new process would take over without the old one's word.
        server.wait_told(Duration::from_secs(2));
    }
    drop(server);
    log_line!("blitz: drained, exiting");
    Ok(())
}

/// Stops the health and DNS threads when `serve` returns, on every path.
struct StopOnDrop(Arc<Directory>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The control socket path: `--admin-socket`/the spec's, else the default.
fn control_path(config: &ServerConfig) -> PathBuf {
    config
        .admin_socket
        .clone()
        .unwrap_or_else(|| handoff::default_socket_path(&config.name))
}

/// Duplicates of every listening socket, for a successor.
fn offer_of(name: &str, sockets: &[Vec<std::net::TcpListener>]) -> io::Result<Offer> {
    let mut offer = Offer {
        name: name.to_string(),
        sockets: Vec::new(),
    };
    for s in sockets.iter().flatten() {
        let addr = s.local_addr()?;
        offer
            .sockets
            .push((Kind::Tcp, addr, OwnedFd::from(s.try_clone()?)));
    }
    Ok(offer)
}

async fn run_worker<G: Gateway>(
    worker: Rc<Worker<G>>,
    accepting: Vec<compio::runtime::JoinHandle<()>>,
    drain_event: compio::event::Event,
    drain: DrainTiming,
    ready: &mpsc::Sender<Ready>,
) {
    // Close idle upstream connections past their idle timeout even when
    // no traffic comes to do it at checkout; adopt new DNS answers.
    let reaper = {
        let worker = Rc::clone(&worker);
        compio::runtime::spawn(async move {
            while !worker.drain.is_draining() {
                compio::time::sleep(Duration::from_secs(1)).await;
                worker.maintain(Instant::now());
            }
        })
    };
    reaper.detach();

    drain_event.wait().await;
    if let Some(delay) = drain.delay {
        // Accepting on meanwhile, as a worker busy elsewhere would.
        compio::time::sleep(delay).await;
    }
    worker.drain.start();
    // Each loop returns (dropping its listener) once it sees the drain.
    for task in accepting {
        let _ = task.await;
    }
    // An upgrade tells the new process the drain began only after this:
    // from then on, a new connection is the new process's.
    let _ = ready.send(Ready::StoppedAccepting);
    // Idle upstream connections are not needed any more.
    worker.close_idle();
    let deadline = Instant::now() + drain.grace;
    while worker.active.count() > 0 && Instant::now() < deadline {
        compio::time::sleep(Duration::from_millis(10)).await;
    }
    // What is still open is cut: reset, never closed as if complete.
    worker.active.reset_all();
}

/// When a worker drains: [`ServerConfig::grace`] and the test hook
/// [`TestHooks::drain_delay`].
#[derive(Clone, Copy)]
struct DrainTiming {
    grace: Duration,
    delay: Option<Duration>,
}

/// A one-way gate between threads: closed until [`Gate::open`].
#[derive(Default)]
pub(crate) struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    pub(crate) fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.opened.notify_all();
    }

    /// Returns once the gate is open, or after `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.opened.wait_timeout_while(open, timeout, |open| !*open);
    }
}

/// How long the drain waits for every worker to stop accepting before an
/// upgrade's `draining` goes out anyway. Accept loops return at their
/// next poll; only a worker stuck in a long computation takes longer.
const STOP_ACCEPTING_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections taken off the queue per readiness event before the
/// loop lets the new connections' tasks run.
const ACCEPT_BATCH: usize = 64;

/// Accepts connections on one listening socket until the worker drains.
///
/// Readiness, then `accept(2)`, rather than an io_uring accept: a pending
/// io_uring accept cancelled at the drain can complete in the kernel
/// anyway, and compio then closes the connection it took, which would be
/// a reset for a client of a gateway being upgraded. A cancelled poll
/// takes nothing; a connection accepted here is always served. The
/// socket is shared with the next process during an upgrade, so
/// `WouldBlock` after a wake-up (the other one took it) is normal.
async fn accept_loop<G: Gateway>(
    worker: Rc<Worker<G>>,
    socket: PollFd<std::net::TcpListener>,
    config: Rc<Listener>,
    poll_driver: bool,
) {
    let mut drained = pin!(worker.drain.wait());
    loop {
        for _ in 0..ACCEPT_BATCH {
            match socket.accept() {
                Ok((stream, peer)) => {
                    // Accepted while the drain began: still a client to serve.
                    match adopt(stream, poll_driver) {
                        Ok(stream) => {
                            let conn = serve_connection(
                                Rc::clone(&worker),
                                stream,
                                peer,
                                Rc::clone(&config),
                            );
                            compio::runtime::spawn(conn).detach();
                        }
                        Err(e) => log_line!("blitz: cannot serve a connection from {peer}: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log_line!("blitz: accept failed on {}: {e}", config.config.addr);
                    compio::time::sleep(Duration::from_millis(20)).await;
                    break;
                }
            }
        }
        if worker.drain.is_draining() {
            return;
        }
        match select(pin!(socket.accept_ready()), drained.as_mut()).await {
            Either::Left((Ok(()), _)) => {}
            Either::Left((Err(e), _)) => {
                log_line!(
                    "blitz: waiting for connections on {} failed: {e}",
                    config.config.addr
                );
                compio::time::sleep(Duration::from_millis(20)).await;
            }
            Either::Right(_) => return,
        }
    }
}

/// A connection the peer gave up on between the handshake and accept.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// An accepted socket as the driver wants it: io_uring works on blocking
/// sockets (like compio's own accept returns them), the polling driver
/// needs non-blocking ones.
fn adopt(stream: std::net::TcpStream, poll_driver: bool) -> io::Result<TcpStream> {
    if poll_driver {
        stream.set_nonblocking(true)?;
    }
    TcpStream::from_std(stream)
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
