//! Listeners: what the spec's `listener` blocks become at run time, and
//! the sockets behind them.
//!
//! Every worker owns one `SO_REUSEPORT` socket per listener, so the
//! kernel spreads new connections over the workers without a shared
//! accept queue or a lock.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// The application protocols a listener speaks (the spec's `protocols`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// HTTP/1.1 (and 1.0).
    pub h1: bool,
    /// HTTP/2 over TLS, chosen by ALPN.
    pub h2: bool,
    /// HTTP/2 in cleartext with prior knowledge.
    pub h2c: bool,
    /// HTTP/3 over QUIC (UDP on the same port).
    pub h3: bool,
}

impl Protocols {
    /// HTTP/1.1 alone, the spec's default.
    pub const H1: Protocols = Protocols {
        h1: true,
        h2: false,
        h2c: false,
        h3: false,
    };
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols::H1
    }
}

/// One listener of the gateway.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// The spec's name of the listener, for logs.
    pub name: String,
    /// Address to bind. Port 0 picks one port, shared by every worker.
    pub addr: SocketAddr,
    /// What it speaks.
    pub protocols: Protocols,
    /// TLS termination (the spec's `tls` block); `None` for cleartext.
    pub tls: Option<TlsConfig>,
}

/// A listener's certificates, as files: loaded at start and re-read on
/// SIGHUP (needs the runtime's `tls` feature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// In spec order. The one without `sni` is the default certificate.
    pub certs: Vec<CertConfig>,
}

/// One certificate of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertConfig {
    /// PEM certificate chain, server certificate first.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
    /// The server name this certificate is chosen for; `None` = default.
    pub sni: Option<String>,
}

impl ListenerConfig {
    /// An HTTP/1.1 listener.
    pub fn h1(name: impl Into<String>, addr: SocketAddr) -> Self {
        ListenerConfig {
            name: name.into(),
            addr,
            protocols: Protocols::H1,
            tls: None,
        }
    }
}

/// A listener as the workers serve it: its configuration and, with TLS,
/// the TLS state all workers share (certificates, session cache, ticket
/// keys).
#[derive(Debug, Clone)]
pub(crate) struct Listener {
    pub config: ListenerConfig,
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<crate::tls::TlsServer>>,
}

impl Listener {
    /// Sets up what `config` needs beyond its socket (TLS: loads the
    /// certificates).
    pub fn new(config: ListenerConfig) -> io::Result<Listener> {
        #[cfg(feature = "tls")]
        {
            let tls = match &config.tls {
                Some(files) => Some(std::sync::Arc::new(
                    crate::tls::TlsServer::new(files, config.protocols).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("listener {:?}: {e}", config.name),
                        )
                    })?,
                )),
                None => None,
            };
            Ok(Listener { config, tls })
        }
        #[cfg(not(feature = "tls"))]
        {
            if config.tls.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "listener {:?} has `tls`, but this runtime was built without its `tls` feature",
                        config.name
                    ),
                ));
            }
            Ok(Listener { config })
        }
    }

    /// SIGHUP: re-reads the certificates; a listener whose files do not
    /// all load keeps its current ones. Logs the outcome.
    pub fn reload(&self) {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(n) => log_line!(
                    "blitz: listener {:?}: {n} certificate(s) reloaded",
                    self.config.name
                ),
                Err(e) => log_line!(
                    "blitz: listener {:?}: certificates not reloaded, keeping the current ones: {e}",
                    self.config.name
                ),
            }
        }
    }
}

/// A non-blocking TCP listening socket in the `SO_REUSEPORT` group of
/// `addr`.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A TCP socket for `addr`. An IPv6 one is dual-stack whatever the host's
/// `net.ipv6.bindv6only` says: docs/spec.md promises that `[::]:P` takes
/// IPv4 clients too (and `check` refuses a `0.0.0.0:P` beside it, B022),
/// and an IPv4-mapped address (`[::ffff:127.0.0.1]:P`) binds only so.
fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    Ok(socket)
}

/// Fails when some process already listens on `addr`. `SO_REUSEPORT`
/// would otherwise let a second gateway (a fresh start where `--upgrade`
/// was meant) join the first one's group and split its traffic between
/// two specs. A probe bound without `SO_REUSEPORT` cannot join a listening
/// group: `EADDRINUSE` means someone is there (as nginx would report).
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = new_socket(addr)?;
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            e.kind(),
            format!(
                "{addr} is in use by another process (a running gateway? take over from it with --upgrade)"
            ),
        )),
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot bind {addr}: {e}"))),
        Ok(()) => Ok(()),
    }
}

/// The listening sockets of every listener, `[listener][socket]`, with
/// the listeners' actual addresses (port 0 resolved).
#[derive(Debug)]
pub(crate) struct Bound {
    pub listeners: Vec<ListenerConfig>,
    pub sockets: Vec<Vec<std::net::TcpListener>>,
}

/// Gives every listener its sockets: the inherited ones on its address
/// (from an old process or systemd, all of them: a socket nobody accepts
/// on strands its backlog), or one freshly bound. An inherited socket no
/// listener claims is an error naming its address (`from` says where it
/// came from). Dropping inherited descriptors on an error closes only this
/// process's duplicates: the old process keeps serving. [`Bound::fill`]
/// then adds a socket per worker, once nothing else can fail.
pub(crate) fn assemble(
    listeners: &[ListenerConfig],
    inherited: Vec<(SocketAddr, OwnedFd)>,
    from: &str,
) -> Result<Bound, String> {
    let unclaimed: Vec<SocketAddr> = inherited
        .iter()
        .map(|(a, _)| *a)
        .filter(|a| !listeners.iter().any(|l| l.addr == *a))
        .collect();
    if !unclaimed.is_empty() {
        let mut addrs: Vec<String> = unclaimed.iter().map(|a| a.to_string()).collect();
        addrs.dedup();
        return Err(format!(
            "{from} listens on {}, which no listener of this spec binds; \
             dropping a listener would refuse the connections queued on it, so it is \
             not done by an upgrade: keep the listener, or stop the gateway and start the new one",
            addrs.join(", ")
        ));
    }
    let mut inherited = inherited;
    let mut bound = Bound {
        listeners: listeners.to_vec(),
        sockets: Vec::with_capacity(listeners.len()),
    };
    for l in &mut bound.listeners {
        let (mine, rest): (Vec<_>, Vec<_>) = inherited.into_iter().partition(|(a, _)| *a == l.addr);
        inherited = rest;
        let mut sockets: Vec<std::net::TcpListener> = mine
            .into_iter()
            .map(|(_, fd)| std::net::TcpListener::from(fd))
            .collect();
        if sockets.is_empty() {
            ensure_free(l.addr).map_err(|e| format!("listener {:?}: {e}", l.name))?;
            let first = bind_tcp(l.addr)
                .map_err(|e| format!("listener {:?}: cannot bind {}: {e}", l.name, l.addr))?;
            l.addr = first.local_addr().map_err(|e| e.to_string())?;
            sockets.push(first);
        }
        bound.sockets.push(sockets);
    }
    Ok(bound)
}

impl Bound {
    /// Gives every listener at least `workers` sockets: fresh ones bound
    /// into the `SO_REUSEPORT` group of its first (or, when an inherited
    /// socket is not in one, duplicates of it). Called last, once every
    /// step that can refuse an upgrade is passed: a socket in the group
    /// takes its share of new connections at once, and closing it on an
    /// abort would reset the ones queued on it.
    pub(crate) fn fill(&mut self, workers: usize) -> Result<(), String> {
        for (l, sockets) in self.listeners.iter().zip(&mut self.sockets) {
            let first = sockets.len();
            while sockets.len() < workers {
                let s = match bind_tcp(l.addr) {
                    Ok(s) => s,
                    // An inherited socket without SO_REUSEPORT (systemd's
                    // default): the workers share it instead.
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => sockets
                        [sockets.len() % first]
                        .try_clone()
                        .map_err(|e| format!("listener {:?}: {e}", l.name))?,
                    Err(e) => {
                        return Err(format!(
                            "listener {:?}: cannot bind {}: {e}",
                            l.name, l.addr
                        ));
                    }
                };
                sockets.push(s);
            }
        }
        Ok(())
    }
}
