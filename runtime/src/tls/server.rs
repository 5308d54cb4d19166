//! TLS termination for one listener: the rustls server configuration,
//! certificate selection by SNI, and the reload of certificates on SIGHUP.
//!
//! One [`TlsServer`] per listener is shared by all workers (`Arc`): its
//! rustls `ServerConfig` holds the session cache and the ticket keys,
//! which must be common to every worker for a client to resume on any of
//! them. Certificates sit behind a `RwLock<Arc<..>>` that the resolver
//! reads once per handshake (an uncontended read lock and an `Arc` clone);
//! a reload builds the whole new set first and swaps it in only if every
//! file loaded, so a bad file keeps the old certificates. Connections
//! already established keep the keys they negotiated: nothing about them
//! changes on reload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;

use super::files::{self, TlsFileError};
use crate::rt::{Protocols, TlsConfig};

/// Sessions kept for stateful resumption (TLS 1.2 clients that do not
/// take tickets; everyone else resumes with a ticket and costs nothing
/// here). About 200 bytes each, so at most ~3 MiB, shared by the workers
/// of the listener; the oldest are evicted first.
pub const SESSION_CACHE_ENTRIES: usize = 16 * 1024;

/// The certificates of a listener, by server name.
#[derive(Debug)]
struct CertSet {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertSet {
    /// Loads every certificate of `config`, with the same checks as
    /// `blitzc check` (chain, key, key match, name match for `sni`).
    fn load(config: &TlsConfig) -> Result<CertSet, TlsFileError> {
        let mut by_name = HashMap::new();
        let mut default = None;
        let mut first = None;
        for c in &config.certs {
            let certified = Arc::new(files::load_certified_key(&c.cert, &c.key)?);
            first.get_or_insert_with(|| Arc::clone(&certified));
            match &c.sni {
                Some(name) => {
                    files::check_server_name(&certified, &c.cert, name)?;
                    by_name.insert(normalize(name), certified);
                }
                None => {
                    default.get_or_insert(certified);
                }
            }
        }
        // Without a certificate lacking `sni`, the first one is the
        // default (as nginx's first server): an unknown name still gets a
        // certificate, and the client decides.
        let Some(default) = default.or(first) else {
            return Err(TlsFileError::NoCertificate {
                path: std::path::PathBuf::new(),
                found: Vec::new(),
            });
        };
        Ok(CertSet { by_name, default })
    }

    fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        server_name
            .and_then(|name| self.by_name.get(&normalize(name)))
            .unwrap_or(&self.default)
            .clone()
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The rustls resolver: exact server name, else the default certificate.
#[derive(Debug)]
struct CertStore {
    current: RwLock<Arc<CertSet>>,
}

impl CertStore {
    fn get(&self) -> Arc<CertSet> {
        match self.current.read() {
            Ok(set) => Arc::clone(&set),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set(&self, set: CertSet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut current) => *current = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get().choose(hello.server_name()))
    }
}

/// TLS for one listener.
#[derive(Debug)]
pub struct TlsServer {
    files: TlsConfig,
    store: Arc<CertStore>,
    config: Arc<ServerConfig>,
}

/// The ALPN protocols a listener offers, in preference order.
pub fn alpn_for(protocols: Protocols) -> Vec<Vec<u8>> {
    let mut alpn = Vec::new();
    if protocols.h2 {
        alpn.push(b"h2".to_vec());
    }
    if protocols.h1 {
        alpn.push(b"http/1.1".to_vec());
    }
    alpn
}

/// Why TLS could not be set up for a listener.
#[derive(Debug)]
pub enum TlsSetupError {
    Files(TlsFileError),
    Rustls(rustls::Error),
}

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsSetupError::Files(e) => e.fmt(f),
            TlsSetupError::Rustls(e) => write!(f, "TLS setup: {e}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

impl TlsServer {
    /// Loads the certificates and builds the server configuration: TLS
    /// 1.3 and 1.2, ALPN from `protocols`, tickets and a session cache.
    pub fn new(files: &TlsConfig, protocols: Protocols) -> Result<TlsServer, TlsSetupError> {
        let set = CertSet::load(files).map_err(TlsSetupError::Files)?;
        let store = Arc::new(CertStore {
            current: RwLock::new(Arc::new(set)),
        });
        let provider = Arc::new(files::provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsSetupError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn_for(protocols);
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsSetupError::Rustls)?;
        Ok(TlsServer {
            files: files.clone(),
            store,
            config: Arc::new(config),
        })
    }

    /// Re-reads every certificate from disk. On any error the current
    /// certificates stay and the error says why.
    pub fn reload(&self) -> Result<usize, TlsFileError> {
        let set = CertSet::load(&self.files)?;
        self.store.set(set);
        Ok(self.files.certs.len())
    }

    /// A new server-side connection state for one accepted client.
    pub fn connection(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        rustls::ServerConnection::new(Arc::clone(&self.config))
    }
}
