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
            warn_if_out_of_validity(&certified, &c.cert);
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

/// Serves a certificate outside its validity period (the client decides,
/// as nginx does) but says so at start and on reload, as `blitzc check`
/// does with B067.
fn warn_if_out_of_validity(certified: &CertifiedKey, path: &std::path::Path) {
    match files::validity_at(certified, rustls::pki_types::UnixTime::now()) {
        Some((0, out)) => log_line!(
            "blitz: warning: certificate {} {out}: TLS clients will reject it",
            path.display()
        ),
        Some((place, out)) => log_line!(
            "blitz: warning: certificate {}: the chain's certificate {} (an intermediate) \
             {out}: TLS clients that build their path through it will reject it",
            path.display(),
            place + 1
        ),
        None => {}
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

/// The ALPN protocols a listener offers, in preference order. `h1` is
/// HTTP/1.1 and 1.0, so it answers `http/1.0` too (`curl --http1.0`
/// offers only that one), as nginx does: refusing it would end an
/// HTTP/1.0 client's handshake with `no_application_protocol`.
pub fn alpn_for(protocols: Protocols) -> Vec<Vec<u8>> {
    let mut alpn = Vec::new();
    if protocols.h2 {
        alpn.push(b"h2".to_vec());
    }
    if protocols.h1 {
        alpn.push(b"http/1.1".to_vec());
        alpn.push(b"http/1.0".to_vec());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::CertConfig;
    use std::path::{Path, PathBuf};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    fn cert(name: &str, sni: Option<&str>) -> CertConfig {
        CertConfig {
            cert: fixture(&format!("{name}.crt")),
            key: fixture(&format!("{name}.key")),
            sni: sni.map(str::to_string),
        }
    }

    fn end_entity(set: &CertSet, name: Option<&str>) -> Vec<u8> {
        set.choose(name).cert[0].to_vec()
    }

    #[test]
    fn sni_chooses_by_exact_name_else_the_default() {
        let config = TlsConfig {
            certs: vec![cert("edge", None), cert("api", Some("api.example.com"))],
        };
        let set = CertSet::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let edge = end_entity(&set, None);
        let api = end_entity(&set, Some("api.example.com"));
        assert_ne!(edge, api);
        assert_eq!(end_entity(&set, Some("API.example.com.")), api);
        assert_eq!(end_entity(&set, Some("other.example.com")), edge);
        assert_eq!(end_entity(&set, Some("example.com")), edge);
    }

    #[test]
    fn without_a_default_the_first_certificate_is_it() {
        let config = TlsConfig {
            certs: vec![cert("api", Some("api.example.com"))],
        };
        let set = CertSet::load(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            end_entity(&set, Some("x.test")),
            end_entity(&set, Some("api.example.com"))
        );
    }

    #[test]
    fn loading_applies_the_same_rules_as_check() {
        let mismatch = TlsConfig {
            certs: vec![CertConfig {
                cert: fixture("mismatched.crt"),
                key: fixture("mismatched.key"),
                sni: None,
            }],
        };
        assert!(matches!(
            CertSet::load(&mismatch),
            Err(TlsFileError::KeyMismatch { .. })
        ));
        let wrong_name = TlsConfig {
            certs: vec![cert("edge", Some("api.example.com"))],
        };
        assert!(matches!(
            CertSet::load(&wrong_name),
            Err(TlsFileError::NameMismatch { .. })
        ));
    }

    #[test]
    fn a_failed_reload_keeps_the_current_certificates() {
        let dir = std::env::temp_dir().join(format!("blitz-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let (crt, key) = (dir.join("c.crt"), dir.join("c.key"));
        let copy = |from: &str, to: &Path| {
            std::fs::copy(fixture(from), to).unwrap_or_else(|e| panic!("{e}"));
        };
        copy("edge.crt", &crt);
        copy("edge.key", &key);
        let config = TlsConfig {
            certs: vec![CertConfig {
                cert: crt.clone(),
                key: key.clone(),
                sni: None,
            }],
        };
        let server = TlsServer::new(&config, Protocols::H1).unwrap_or_else(|e| panic!("{e}"));
        let before = end_entity(&server.store.get(), None);
        copy("garbage.pem", &crt);
        assert!(server.reload().is_err());
        assert_eq!(end_entity(&server.store.get(), None), before);
        copy("api.crt", &crt);
        copy("api.key", &key);
        assert_eq!(server.reload().ok(), Some(1));
        assert_ne!(end_entity(&server.store.get(), None), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn alpn_follows_the_listener_protocols() {
        let h1 = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        assert_eq!(alpn_for(Protocols::H1), h1);
        let both = Protocols {
            h2: true,
            ..Protocols::H1
        };
        assert_eq!(alpn_for(both), [vec![b"h2".to_vec()], h1].concat());
        let h2_only = Protocols {
            h1: false,
            h2: true,
            ..Protocols::H1
        };
        assert_eq!(alpn_for(h2_only), vec![b"h2".to_vec()]);
    }
}
