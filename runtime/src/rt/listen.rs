//! Listeners: what the spec's `listener` blocks become at run time, and
//! the sockets behind them.
//!
//! Every worker owns one `SO_REUSEPORT` socket per listener, so the
//! kernel spreads new connections over the workers without a shared
//! accept queue or a lock.

use std::io;
use std::net::SocketAddr;

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
                Ok(n) => eprintln!(
                    "blitz: listener {:?}: {n} certificate(s) reloaded",
                    self.config.name
                ),
                Err(e) => eprintln!(
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
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Binds `workers` sockets for each listener: `result[listener][worker]`.
/// A listener on port 0 gets its port from its first socket.
pub(crate) fn bind_all(
    listeners: &[ListenerConfig],
    workers: usize,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut all = Vec::with_capacity(listeners.len());
    for l in listeners {
        let first = bind_tcp(l.addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("listener {:?}: cannot bind {}: {e}", l.name, l.addr),
            )
        })?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(bind_tcp(addr)?);
        }
        all.push(sockets);
    }
    Ok(all)
}
