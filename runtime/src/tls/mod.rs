//! TLS (feature `tls`): termination on listeners and TLS to upstreams,
//! with rustls on the aws-lc-rs provider.
//!
//! - [`files`]: PEM certificates and keys into rustls types, with typed
//!   errors; shared with `blitzc check`, so what checks clean also loads.
//! - [`server`]: one [`TlsServer`] per listener: TLS 1.3 and 1.2, SNI
//!   certificate selection, ALPN, session tickets and cache, reload.
//! - [`client`]: the rustls client configuration for upstream servers
//!   (verification with the webpki roots or a CA file, SNI; CA files
//!   re-read on SIGHUP).
//! - [`stream`]: [`TlsStream`], a rustls connection driven over a compio
//!   `TcpStream` with full-duplex `&self` reads and writes.
//!
//! Provider: aws-lc-rs. It is rustls' default, has the fastest AES-GCM
//! and ChaCha20 here, offers the post-quantum hybrid key exchange, and it
//! builds from its crate without cmake (prebuilt NASM objects).

pub mod client;
pub mod files;
pub mod server;
mod stream;

pub use client::{UpstreamTls, UpstreamTlsState, reload_ca_files};
pub use server::TlsServer;
pub use stream::TlsStream;
