//! TLS to upstream servers: server certificates are verified, against
//! the Mozilla roots compiled in (`webpki-roots`) or, when the spec names
//! one, a CA file only. Compiled-in roots behave the same in every
//! container (a slim image often has no system CA bundle), and a private
//! upstream CA is exactly what the `ca=` file is for.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::files::{self, TlsFileError};
use crate::lb::ServerTls;

/// What connecting to one TLS server needs: its configuration and name.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl UpstreamTls {
    /// Builds the client side for `tls` (loads the CA file, if any).
    pub fn new(tls: &ServerTls) -> Result<UpstreamTls, TlsFileError> {
        let name =
            ServerName::try_from(tls.sni.clone()).map_err(|_| TlsFileError::NameMismatch {
                path: PathBuf::new(),
                name: tls.sni.clone(),
            })?;
        Ok(UpstreamTls {
            config: client_config(tls)?,
            name,
        })
    }

    /// A new client-side connection state.
    pub fn connection(&self) -> Result<rustls::ClientConnection, rustls::Error> {
        rustls::ClientConnection::new(Arc::clone(&self.config), self.name.clone())
    }
}

/// The rustls client configuration for one server: TLS 1.3 and 1.2,
/// ALPN `http/1.1`, session resumption with rustls' default cache.
pub fn client_config(tls: &ServerTls) -> Result<Arc<ClientConfig>, TlsFileError> {
    let roots = match &tls.ca {
        Some(ca) => files::load_ca_roots(ca)?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(files::provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsFileError::BadCertificate {
            path: PathBuf::new(),
            detail: e.to_string(),
        })?;
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One TLS server's client side on one worker: its configuration, or why
/// it could not be built (a CA file that does not load; `blitzc check`
/// reports it first), and whether a failed handshake was logged already.
#[derive(Debug)]
pub struct UpstreamTlsState {
    /// The client configuration, or why there is none (connections to the
    /// server then fail with 502).
    pub tls: Result<UpstreamTls, String>,
    /// A failed handshake was logged (once per server and worker).
    pub reported: Cell<bool>,
}

impl UpstreamTlsState {
    /// Builds the state of `server` of upstream `upstream`; worker 0 logs a
    /// configuration that does not load.
    pub fn new(upstream: &str, server: &ServerTls, worker: usize) -> Self {
        let tls = UpstreamTls::new(server).map_err(|e| {
            if worker == 0 {
                eprintln!("blitz: upstream {upstream:?}: TLS: {e}");
            }
            e.to_string()
        });
        UpstreamTlsState {
            tls,
            reported: Cell::new(false),
        }
    }
}
