//! TLS to upstream servers: server certificates are verified, against
//! the Mozilla roots compiled in (`webpki-roots`) or, when the spec names
//! one, a CA file only. Compiled-in roots behave the same in every
//! container (a slim image often has no system CA bundle), and a private
//! upstream CA is exactly what the `ca=` file is for.
//!
//! CA files are re-read on SIGHUP, like listener certificates
//! ([`reload_ca_files`]). The roots of each `(sni, ca)` pair live once per
//! process in a [`Trust`] with a generation number; every holder of an
//! [`UpstreamTls`] (a worker's endpoints, the health-check thread) keeps
//! its own rustls `ClientConfig` (its own session cache, no lock shared
//! between workers) and rebuilds it from the new roots when it sees the
//! generation move, on its next new connection. Connections already open,
//! pooled ones included, keep the session they verified. A CA file that
//! does not load on reload keeps the current roots, and the gateway says so.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use super::files::{self, TlsFileError};
use crate::lb::ServerTls;

/// The roots one `(sni, ca)` pair verifies with, shared by every thread
/// of the process, and how many times they were replaced.
#[derive(Debug)]
struct Trust {
    ca: Option<PathBuf>,
    generation: AtomicU64,
    /// The roots, or why the CA file did not load (then no connection is
    /// made: 502, as at start).
    roots: RwLock<Result<Arc<RootCertStore>, String>>,
}

/// A server's TLS settings as the key of its [`Trust`]: SNI and CA file.
type TrustKey = (String, Option<PathBuf>);

/// Every [`Trust`] of the process, by the server TLS settings it serves.
fn trusts() -> &'static Mutex<HashMap<TrustKey, Arc<Trust>>> {
    static TRUSTS: OnceLock<Mutex<HashMap<TrustKey, Arc<Trust>>>> = OnceLock::new();
    TRUSTS.get_or_init(Default::default)
}

/// The roots of `ca`: the file's certificates, or the compiled-in roots.
fn load_roots(ca: Option<&PathBuf>) -> Result<Arc<RootCertStore>, TlsFileError> {
    Ok(Arc::new(match ca {
        Some(ca) => files::load_ca_roots(ca)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    }))
}

impl Trust {
    /// The process's trust for `tls`, loaded on first use.
    fn of(tls: &ServerTls) -> Arc<Trust> {
        let mut all = trusts().lock().unwrap_or_else(PoisonError::into_inner);
        let key = (tls.sni.clone(), tls.ca.clone());
        let trust = all.entry(key).or_insert_with(|| {
            Arc::new(Trust {
                ca: tls.ca.clone(),
                generation: AtomicU64::new(0),
                roots: RwLock::new(load_roots(tls.ca.as_ref()).map_err(|e| e.to_string())),
            })
        });
        Arc::clone(trust)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, String> {
        self.roots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the CA file; on failure the current roots stay.
    fn reload(&self) -> Result<(), TlsFileError> {
        let roots = load_roots(self.ca.as_ref())?;
        *self.roots.write().unwrap_or_else(PoisonError::into_inner) = Ok(roots);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

/// How many times SIGHUP reloaded the upstream CA files: the epoch of the
/// "handshake failed" log, which says why once per server, worker and
/// reload ([`UpstreamTlsState::first_failure`]).
static RELOADS: AtomicU64 = AtomicU64::new(0);

/// SIGHUP: re-reads every upstream CA file in use. New connections verify
/// with the new roots; a file that does not load keeps the current ones.
/// Logs the outcome of each file, and starts a new epoch of handshake
/// failure logs: a server that still (or now) fails after a reload is
/// logged again, so the reload's effect can be seen.
pub fn reload_ca_files() {
    let all: Vec<(TrustKey, Arc<Trust>)> = trusts()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect();
    for ((sni, ca), trust) in all {
        let Some(ca) = ca else { continue };
        match trust.reload() {
            Ok(()) => log_line!(
                "blitz: upstream CA file {} (sni {sni:?}) reloaded",
                ca.display()
            ),
            Err(e) => log_line!(
                "blitz: upstream CA file {} (sni {sni:?}) not reloaded, keeping the current one: {e}",
                ca.display()
            ),
        }
    }
    // After the roots moved: a failure logged in the new epoch is one of
    // the roots of the reload (or later).
    RELOADS.fetch_add(1, Ordering::Release);
}

/// What connecting to one TLS server needs: its roots and name, and this
/// holder's client configuration built from the roots' current generation.
#[derive(Debug)]
pub struct UpstreamTls {
    trust: Arc<Trust>,
    /// This holder's configuration and the generation it was built from.
    /// A mutex only because the health checker shares its transports
    /// between its check threads; a worker's is never contended.
    local: Mutex<Option<(u64, Arc<ClientConfig>)>>,
    pub name: ServerName<'static>,
}

impl Clone for UpstreamTls {
    /// Same roots and name; the clone builds its own configuration.
    fn clone(&self) -> Self {
        UpstreamTls {
            trust: Arc::clone(&self.trust),
            local: Mutex::new(None),
            name: self.name.clone(),
        }
    }
}

impl UpstreamTls {
    /// The client side for `tls`; `Err` for an SNI that is not a server
    /// name. A CA file that does not load is no error here: connections
    /// fail ([`UpstreamTls::load_error`] says why) until a SIGHUP loads it.
    pub fn new(tls: &ServerTls) -> Result<UpstreamTls, TlsFileError> {
        let name =
            ServerName::try_from(tls.sni.clone()).map_err(|_| TlsFileError::InvalidServerName {
                name: tls.sni.clone(),
            })?;
        Ok(UpstreamTls {
            trust: Trust::of(tls),
            local: Mutex::new(None),
            name,
        })
    }

    /// Why no connection can be made now: the CA file did not load.
    pub fn load_error(&self) -> Option<String> {
        self.trust.roots().err()
    }

    /// A new client-side connection state, with the current roots.
    pub fn connection(&self) -> Result<rustls::ClientConnection, rustls::Error> {
        rustls::ClientConnection::new(self.config()?, self.name.clone())
    }

    /// This holder's configuration, rebuilt when the roots were reloaded.
    fn config(&self) -> Result<Arc<ClientConfig>, rustls::Error> {
        let generation = self.trust.generation.load(Ordering::Acquire);
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built, config)) = &*local
            && *built == generation
        {
            return Ok(Arc::clone(config));
        }
        let roots = self.trust.roots().map_err(rustls::Error::General)?;
        let config = client_config(roots)?;
        *local = Some((generation, Arc::clone(&config)));
        Ok(config)
    }
}

/// The rustls client configuration for one server: TLS 1.3 and 1.2,
/// ALPN `http/1.1`, session resumption with rustls' default cache.
fn client_config(roots: Arc<RootCertStore>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(files::provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One TLS server's client side on one worker: its configuration, or why
/// it could not be built (an SNI that is not a name; `blitzc check`
/// reports it first), and whether a failed handshake was logged already
/// since start or the last SIGHUP.
#[derive(Debug)]
pub struct UpstreamTlsState {
    /// The client side, or why there is none (connections to the server
    /// then fail with 502, as they do while its CA file does not load).
    pub tls: Result<UpstreamTls, String>,
    /// The reload epoch in which a failed handshake was last logged.
    reported: Cell<Option<u64>>,
}

impl UpstreamTlsState {
    /// Builds the state of `server` of upstream `upstream`; worker 0 logs a
    /// configuration that does not load.
    pub fn new(upstream: &str, server: &ServerTls, worker: usize) -> Self {
        let tls = UpstreamTls::new(server).map_err(|e| e.to_string());
        let error = match &tls {
            Ok(tls) => tls.load_error(),
            Err(e) => Some(e.clone()),
        };
        if let Some(e) = error
            && worker == 0
        {
            log_line!("blitz: upstream {upstream:?}: TLS: {e}");
        }
        UpstreamTlsState {
            tls,
            reported: Cell::new(None),
        }
    }

    /// A handshake with the server failed: whether to log why. Yes for
    /// the first failure since start and since each SIGHUP (per server and
    /// worker): a certificate that does not verify is a configuration
    /// problem to see, not to repeat on every request.
    pub fn first_failure(&self) -> bool {
        let epoch = Some(RELOADS.load(Ordering::Acquire));
        self.reported.replace(epoch) != epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_rebuilds_the_config_and_a_bad_file_keeps_the_roots() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let dir = std::env::temp_dir().join(format!("blitz-ca-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let ca = dir.join("ca.pem");
        let copy = |name: &str| {
            std::fs::copy(fixtures.join(name), &ca).unwrap_or_else(|e| panic!("{e}"));
        };
        copy("api.crt");
        let server = ServerTls {
            sni: "api.example.com".into(),
            ca: Some(ca.clone()),
        };
        let tls = UpstreamTls::new(&server).unwrap_or_else(|e| panic!("{e}"));
        let config = |tls: &UpstreamTls| tls.config().unwrap_or_else(|e| panic!("{e}"));
        let first = config(&tls);
        assert!(
            Arc::ptr_eq(&first, &config(&tls)),
            "built once per generation"
        );
        let roots = |tls: &UpstreamTls| tls.trust.roots().unwrap_or_else(|e| panic!("{e}"));
        let subjects = |tls: &UpstreamTls| {
            roots(tls)
                .roots
                .iter()
                .map(|r| r.subject.as_ref().to_vec())
                .collect::<Vec<_>>()
        };
        let api = subjects(&tls);

        copy("edge.crt");
        assert!(tls.trust.reload().is_ok());
        let second = config(&tls);
        assert!(!Arc::ptr_eq(&first, &second), "rebuilt after a reload");
        assert_ne!(subjects(&tls), api);

        std::fs::write(&ca, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(tls.trust.reload().is_err());
        assert!(
            Arc::ptr_eq(&second, &config(&tls)),
            "a failed reload changes nothing"
        );
        assert_ne!(subjects(&tls), api);

        // A CA file missing at start: no connection until a reload loads it.
        let later = dir.join("later.pem");
        let server = ServerTls {
            sni: "api.example.com".into(),
            ca: Some(later.clone()),
        };
        let tls = UpstreamTls::new(&server).unwrap_or_else(|e| panic!("{e}"));
        assert!(tls.load_error().is_some_and(|e| e.contains("not found")));
        assert!(tls.connection().is_err());
        std::fs::copy(fixtures.join("api.crt"), &later).unwrap_or_else(|e| panic!("{e}"));
        assert!(tls.trust.reload().is_ok());
        assert!(tls.load_error().is_none());
        assert!(tls.connection().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_handshake_is_logged_once_per_reload() {
        let server = ServerTls {
            sni: "logged.example.com".into(),
            ca: None,
        };
        let state = UpstreamTlsState::new("u", &server, 1);
        assert!(state.first_failure());
        assert!(!state.first_failure(), "once");
        reload_ca_files();
        assert!(state.first_failure(), "again after a reload");
        assert!(!state.first_failure());
    }
}
