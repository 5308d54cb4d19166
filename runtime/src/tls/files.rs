//! Loading a certificate chain and its private key from PEM files into a
//! rustls [`CertifiedKey`], with a typed error for each way it can fail.
//!
//! The runtime loads its certificates (at start and on SIGHUP) and
//! `blitzc check` validates `tls` blocks with this same code (same
//! provider, same parsing), so a spec that checks clean also loads. It
//! does file IO only; it knows nothing about spans or diagnostics.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    ServerName, UnixTime,
};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which of the two files an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFileRole {
    Certificate,
    PrivateKey,
}

/// Why a certificate or key could not be loaded.
// Not `non_exhaustive`: `blitzc check` matches every variant, so a new
// way to fail gets its own diagnostic.
#[derive(Debug)]
pub enum TlsFileError {
    /// The file does not exist.
    Missing { role: TlsFileRole, path: PathBuf },
    /// The file exists but cannot be read.
    Unreadable {
        role: TlsFileRole,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid PEM (bad section markers or base64).
    BadPem {
        role: TlsFileRole,
        path: PathBuf,
        detail: String,
    },
    /// A PEM file without a `CERTIFICATE` section. `found` lists the PEM
    /// labels of the sections it has instead (e.g. a private key given as
    /// the cert).
    NoCertificate { path: PathBuf, found: Vec<String> },
    /// The first certificate is not a valid X.509 certificate.
    BadCertificate { path: PathBuf, detail: String },
    /// A PEM file without a private key section (PKCS#8 `PRIVATE KEY`,
    /// PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`).
    NoPrivateKey {
        path: PathBuf,
        found: Vec<String>,
        /// The file holds an `ENCRYPTED PRIVATE KEY`, which needs a passphrase.
        encrypted: bool,
    },
    /// The key parses as PEM but the crypto provider cannot use it
    /// (corrupt DER, unsupported algorithm or curve).
    UnsupportedKey { path: PathBuf, detail: String },
    /// The certificate's public key is not the private key's.
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        /// The key is that of a later certificate in the file (counted
        /// from 1): the chain is out of order, the server's own
        /// certificate must come first.
        belongs_to: Option<usize>,
    },
    /// The certificate is not valid for the server name it is chosen for.
    NameMismatch { path: PathBuf, name: String },
    /// A name to ask an upstream for by SNI that is not one (see
    /// [`is_server_name`]).
    InvalidServerName { name: String },
}

impl TlsFileError {
    /// The file the error is about.
    pub fn role(&self) -> TlsFileRole {
        match self {
            TlsFileError::Missing { role, .. }
            | TlsFileError::Unreadable { role, .. }
            | TlsFileError::BadPem { role, .. } => *role,
            TlsFileError::NoCertificate { .. }
            | TlsFileError::BadCertificate { .. }
            | TlsFileError::KeyMismatch { .. }
            | TlsFileError::NameMismatch { .. }
            | TlsFileError::InvalidServerName { .. } => TlsFileRole::Certificate,
            TlsFileError::NoPrivateKey { .. } | TlsFileError::UnsupportedKey { .. } => {
                TlsFileRole::PrivateKey
            }
        }
    }
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = |role: &TlsFileRole| match role {
            TlsFileRole::Certificate => "certificate",
            TlsFileRole::PrivateKey => "private key",
        };
        match self {
            TlsFileError::Missing { role, path } => {
                write!(f, "{} file {} not found", what(role), path.display())
            }
            TlsFileError::Unreadable { role, path, source } => write!(
                f,
                "cannot read {} file {}: {source}",
                what(role),
                path.display()
            ),
            TlsFileError::BadPem { role, path, detail } => write!(
                f,
                "{} file {} is not valid PEM: {detail}",
                what(role),
                path.display()
            ),
            TlsFileError::NoCertificate { path, .. } => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
            TlsFileError::BadCertificate { path, detail } => write!(
                f,
                "{} does not hold a valid X.509 certificate: {detail}",
                path.display()
            ),
            TlsFileError::NoPrivateKey {
                path,
                encrypted: true,
                ..
            } => write!(
                f,
                "{} holds an encrypted private key: the gateway cannot ask for a passphrase",
                path.display()
            ),
            TlsFileError::NoPrivateKey { path, .. } => {
                write!(f, "{} holds no PEM private key", path.display())
            }
            TlsFileError::UnsupportedKey { path, detail } => {
                write!(
                    f,
                    "cannot use the private key in {}: {detail}",
                    path.display()
                )
            }
            TlsFileError::KeyMismatch {
                cert,
                key,
                belongs_to,
            } => {
                write!(
                    f,
                    "certificate {} does not match private key {}",
                    cert.display(),
                    key.display()
                )?;
                match belongs_to {
                    Some(n) => write!(
                        f,
                        " (the key is that of certificate {n} in the file: the server's own certificate must come first, then its intermediates)"
                    ),
                    None => Ok(()),
                }
            }
            TlsFileError::NameMismatch { path, name } => {
                write!(f, "certificate {} is not valid for {name}", path.display())
            }
            TlsFileError::InvalidServerName { name } => {
                write!(f, "`{name}` is no DNS name to send as SNI")
            }
        }
    }
}

impl std::error::Error for TlsFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsFileError::Unreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The crypto provider certificates are loaded with (the runtime's).
pub fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The PEM sections of a file, in order.
fn sections(role: TlsFileRole, path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsFileError::Missing {
            role,
            path: path.to_path_buf(),
        },
        _ => TlsFileError::Unreadable {
            role,
            path: path.to_path_buf(),
            source,
        },
    })?;
    <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| TlsFileError::BadPem {
            role,
            path: path.to_path_buf(),
            detail: pem_detail(&e),
        })
}

/// What is wrong with a PEM file, in words: the crate's `Display` shows
/// the markers as lists of byte values.
fn pem_detail(e: &pem::Error) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a section has no `-----END {}-----` line", text(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line `{}`", text(line))
        }
        other => other.to_string(),
    }
}

/// The PEM labels of `sections` (`CERTIFICATE`, `PRIVATE KEY`, ...).
fn section_names(sections: &[(SectionKind, Vec<u8>)]) -> Vec<String> {
    sections
        .iter()
        .map(|(kind, _)| {
            match kind {
                SectionKind::Certificate => "CERTIFICATE",
                SectionKind::PublicKey => "PUBLIC KEY",
                SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
                SectionKind::PrivateKey => "PRIVATE KEY",
                SectionKind::EcPrivateKey => "EC PRIVATE KEY",
                SectionKind::Crl => "X509 CRL",
                SectionKind::Csr => "CERTIFICATE REQUEST",
                _ => "ECHCONFIG",
            }
            .to_string()
        })
        .collect()
}

/// The certificate chain in a PEM file, end-entity first; the end-entity
/// certificate is checked to parse as X.509.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let sections = sections(TlsFileRole::Certificate, path)?;
    let chain: Vec<CertificateDer<'static>> = sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    let Some(end_entity) = chain.first() else {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
            found: section_names(&sections),
        });
    };
    webpki::EndEntityCert::try_from(end_entity).map_err(|e| TlsFileError::BadCertificate {
        path: path.to_path_buf(),
        detail: format!("{e:?}"),
    })?;
    Ok(chain)
}

/// Whether a key file holds an encrypted key: PKCS#8 `ENCRYPTED PRIVATE
/// KEY`, or a traditional PEM key with `Proc-Type: 4,ENCRYPTED` headers
/// (`openssl genrsa -aes256`), whose headers are no base64 and would
/// otherwise read as a broken PEM file.
fn holds_encrypted_key(path: &Path) -> bool {
    let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    std::fs::read(path)
        .is_ok_and(|b| has(&b, b"ENCRYPTED PRIVATE KEY") || has(&b, b"Proc-Type: 4,ENCRYPTED"))
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key_der(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let sections = match sections(TlsFileRole::PrivateKey, path) {
        Err(TlsFileError::BadPem { .. }) if holds_encrypted_key(path) => {
            return Err(TlsFileError::NoPrivateKey {
                path: path.to_path_buf(),
                found: Vec::new(),
                encrypted: true,
            });
        }
        other => other?,
    };
    let key = sections.iter().find_map(|(kind, der)| match kind {
        SectionKind::PrivateKey => {
            Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.clone())))
        }
        SectionKind::RsaPrivateKey => {
            Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der.clone())))
        }
        SectionKind::EcPrivateKey => {
            Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der.clone())))
        }
        _ => None,
    });
    key.ok_or_else(|| TlsFileError::NoPrivateKey {
        path: path.to_path_buf(),
        found: section_names(&sections),
        encrypted: holds_encrypted_key(path),
    })
}

/// The private key in a PEM file, loaded by the provider for signing.
pub fn load_private_key(
    path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<dyn rustls::sign::SigningKey>, TlsFileError> {
    let der = load_private_key_der(path)?;
    provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsFileError::UnsupportedKey {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// A loaded chain and key, checked to belong together. `cert` and `key` are
/// the paths the two came from, for the error.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn rustls::sign::SigningKey>,
    cert: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsFileError> {
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // A key that cannot show its public half is not known to mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsFileError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key_path.to_path_buf(),
            belongs_to: certificate_of_key(&certified),
        }),
        Err(e) => Err(TlsFileError::BadCertificate {
            path: cert.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Which certificate of the chain (counted from 1) has the key's public
/// key, when it is not the first: a chain written out of order.
fn certificate_of_key(certified: &CertifiedKey) -> Option<usize> {
    let spki = certified.key.public_key()?;
    certified
        .cert
        .iter()
        .enumerate()
        .skip(1)
        .find_map(|(i, der)| {
            let parsed = rustls::server::ParsedCertificate::try_from(der).ok()?;
            (parsed.subject_public_key_info() == spki).then_some(i + 1)
        })
}

/// Loads a certificate chain and its key, and checks they match.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsFileError> {
    let chain = load_cert_chain(cert)?;
    let signing_key = load_private_key(key, &provider())?;
    certified_key(chain, signing_key, cert, key)
}

/// Whether `name` can be asked for by SNI (RFC 6066 §3: a DNS name, no IP
/// literal), by rustls' own rules (a last label not all digits, no empty
/// label): `check` takes an `sni` only if the runtime can use it.
pub fn is_server_name(name: &str) -> bool {
    matches!(ServerName::try_from(name), Ok(ServerName::DnsName(_)))
}

/// Checks that the end-entity certificate is valid for `name` (its subject
/// alternative names), as rustls requires of a certificate chosen by SNI.
pub fn check_server_name(
    certified: &CertifiedKey,
    cert: &Path,
    name: &str,
) -> Result<(), TlsFileError> {
    let mismatch = || TlsFileError::NameMismatch {
        path: cert.to_path_buf(),
        name: name.to_string(),
    };
    let server_name = ServerName::try_from(name).map_err(|_| mismatch())?;
    let end_entity = certified.end_entity_cert().map_err(|_| mismatch())?;
    let parsed = webpki::EndEntityCert::try_from(end_entity).map_err(|_| mismatch())?;
    parsed
        .verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| mismatch())
}

/// A certificate that is not valid at the time it was checked at: TLS
/// clients reject it (rustls with `CertExpired` / `CertNotValidYet`).
/// Times are seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutOfValidity {
    /// Checked after its notAfter.
    Expired { not_after: u64 },
    /// Checked before its notBefore.
    NotYetValid { not_before: u64 },
}

impl fmt::Display for OutOfValidity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            OutOfValidity::Expired { not_after } => {
                write!(f, "expired on {}", utc_date_time(not_after))
            }
            OutOfValidity::NotYetValid { not_before } => {
                write!(f, "is not valid before {}", utc_date_time(not_before))
            }
        }
    }
}

/// The first certificate of `certified`'s chain outside its validity
/// period at `now`, with its place in the chain: 0 for the end-entity
/// certificate, then the intermediates in the file's order. Clients
/// build their path through the intermediates the server sends, so an
/// expired intermediate fails them as an expired leaf does (only a client
/// that finds another path, through a newer copy of that CA it holds,
/// gets through). `None` also for a certificate webpki cannot read
/// (loading reports that).
pub fn validity_at(certified: &CertifiedKey, now: UnixTime) -> Option<(usize, OutOfValidity)> {
    certified
        .cert
        .iter()
        .enumerate()
        .find_map(|(place, der)| cert_validity_at(der, now).map(|out| (place, out)))
}

/// Whether the certificate `der` is outside its validity period at `now`.
/// The period is read by webpki, the verifier rustls clients use: its
/// path building checks the certificate's own properties, validity first,
/// before looking for an issuer, so with no trust anchors a certificate in
/// its period fails later (unknown issuer, or a CA's basic constraints),
/// never with `CertExpired` or `CertNotValidYet`.
fn cert_validity_at(der: &CertificateDer<'_>, now: UnixTime) -> Option<OutOfValidity> {
    let parsed = webpki::EndEntityCert::try_from(der).ok()?;
    let algorithms = provider().signature_verification_algorithms.all;
    let checked = parsed.verify_for_usage(
        algorithms,
        &[],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    match checked {
        Err(webpki::Error::CertExpired { not_after, .. }) => Some(OutOfValidity::Expired {
            not_after: not_after.as_secs(),
        }),
        Err(webpki::Error::CertNotValidYet { not_before, .. }) => {
            Some(OutOfValidity::NotYetValid {
                not_before: not_before.as_secs(),
            })
        }
        _ => None,
    }
}

/// `2026-11-27 10:21:23 UTC` for seconds since the Unix epoch (the
/// proleptic Gregorian calendar, days to a civil date as in H. Hinnant's
/// `civil_from_days`).
pub fn utc_date_time(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Shift the epoch to 0000-03-01: leap days then end each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The certificates of a CA file (PEM, one or more `CERTIFICATE`
/// sections) as a root store for verifying upstream servers.
pub fn load_ca_roots(path: &Path) -> Result<rustls::RootCertStore, TlsFileError> {
    let sections = sections(TlsFileRole::Certificate, path)?;
    let mut roots = rustls::RootCertStore::empty();
    for (kind, der) in &sections {
        if *kind != SectionKind::Certificate {
            continue;
        }
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| TlsFileError::BadCertificate {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
    }
    if roots.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
            found: section_names(&sections),
        });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_read_from_the_end_entity_certificate() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let certified = load_certified_key(&fixtures.join("api.crt"), &fixtures.join("api.key"))
            .unwrap_or_else(|e| panic!("{e}"));
        let at = |secs| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        assert_eq!(validity_at(&certified, UnixTime::now()), None);
        assert!(matches!(
            validity_at(&certified, at(0)),
            Some((0, OutOfValidity::NotYetValid { not_before })) if not_before > 1_700_000_000
        ));
        // Year 2400: after the fixture's 100 years.
        assert!(matches!(
            validity_at(&certified, at(13_569_465_600)),
            Some((0, OutOfValidity::Expired { not_after })) if not_after < 13_569_465_600
        ));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date_time(1_609_459_199), "2020-12-31 23:59:59 UTC");
        assert_eq!(utc_date_time(4_102_444_800), "2100-01-01 00:00:00 UTC");
        assert_eq!(utc_date_time(1_795_775_283), "2026-11-27 10:28:03 UTC");
    }

    #[test]
    fn a_traditional_encrypted_key_is_an_encrypted_key_not_bad_pem() {
        let dir = std::env::temp_dir().join(format!("blitz-enc-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("enc.key");
        std::fs::write(
            &path,
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
             DEK-Info: AES-256-CBC,A11E19887F887777D5523070C9BB6752\n\nAAAA\n\
             -----END RSA PRIVATE KEY-----\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let error = load_private_key_der(&path).err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(
                error,
                Some(TlsFileError::NoPrivateKey {
                    encrypted: true,
                    ..
                })
            ),
            "{error:?}"
        );
        assert!(error.is_some_and(|e| e.to_string().contains("encrypted private key")));
    }

    #[test]
    fn a_chain_written_the_wrong_way_round_says_which_certificate_has_the_key() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let dir = std::env::temp_dir().join(format!("blitz-chain-order-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let read =
            |name: &str| std::fs::read(fixtures.join(name)).unwrap_or_else(|e| panic!("{e}"));
        let reversed = dir.join("reversed.crt");
        std::fs::write(&reversed, [read("api.crt"), read("edge.crt")].concat())
            .unwrap_or_else(|e| panic!("{e}"));
        let error = load_certified_key(&reversed, &fixtures.join("edge.key")).err();
        let other = load_certified_key(&fixtures.join("api.crt"), &fixtures.join("edge.key")).err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(
                error,
                Some(TlsFileError::KeyMismatch {
                    belongs_to: Some(2),
                    ..
                })
            ),
            "{error:?}"
        );
        assert!(
            matches!(
                other,
                Some(TlsFileError::KeyMismatch {
                    belongs_to: None,
                    ..
                })
            ),
            "{other:?}"
        );
    }

    #[test]
    fn a_truncated_pem_file_is_explained_in_words() {
        let dir = std::env::temp_dir().join(format!("blitz-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("truncated.crt");
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nAAAA\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let error = load_cert_chain(&path).err().map(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let error = error.unwrap_or_else(|| panic!("a truncated file loads"));
        assert!(
            error.ends_with("a section has no `-----END CERTIFICATE-----` line"),
            "{error}"
        );
    }
}
