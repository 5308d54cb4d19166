//! Listener protocols and TLS: `h2`/`h3` without TLS (B060), `h2c` with TLS
//! (B061), certificate and key files (B062, B063, B066), a certificate or
//! an intermediate in its file outside its validity period now (B067, a
//! warning: the gateway serves it, clients reject it), `tls` without a certificate (B065), and certificate
//! selection by SNI (B064, B039).
//! Upstream servers with `tls=#true`: the CA file (B062) and the `sni`
//! name (B039). Files are loaded by the runtime's own loader
//! (`blitz_runtime::tls::files`), so what checks clean also loads.

use crate::diag::{Code, Diagnostic};
use crate::ir::values::is_dns_name;
use blitz_ir::{FilePath, Listener, Protocol, Span, Spanned, Spec, Tls, TlsCert};
use blitz_runtime::tls::files::{self as tls_files, OutOfValidity, TlsFileError, TlsFileRole};
use rustls::pki_types::UnixTime;
use std::collections::HashMap;

pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    let provider = tls_files::provider();
    for listener in &spec.listeners {
        protocols(listener, diagnostics);
        if let Some(tls) = &listener.tls {
            certificates(listener, tls, &provider, diagnostics);
            sni(tls, diagnostics);
        }
    }
    for upstream in &spec.upstreams {
        for server in &upstream.servers {
            let Some(tls) = &server.tls else { continue };
            if let Some(sni) = &tls.sni
                && !is_sni_name(&sni.value)
            {
                diagnostics.push(invalid_sni(
                    sni,
                    "write the DNS name the server's certificate is issued for, or leave `sni` out to use the address's host",
                ));
            }
            if let Some(ca) = &tls.ca
                && let Err(error) = tls_files::load_ca_roots(&ca.value.resolved)
            {
                diagnostics.push(ca_error(ca, &error));
            }
        }
    }
}

/// B062 for a server's `ca` file.
fn ca_error(ca: &Spanned<FilePath>, error: &TlsFileError) -> Diagnostic {
    let written = &ca.value.written;
    let (message, label, help) = match error {
        TlsFileError::Missing { .. } => (
            format!("CA file `{written}` not found"),
            "no such file".to_string(),
            "paths are relative to the spec file's folder".to_string(),
        ),
        TlsFileError::NoCertificate { found, .. } => (
            format!("CA file `{written}` holds no certificate"),
            found_label(found),
            "`ca` takes a PEM file with one or more -----BEGIN CERTIFICATE----- sections"
                .to_string(),
        ),
        other => (
            format!("CA file `{written}` cannot be used"),
            other.to_string(),
            "`ca` takes a PEM file with one or more -----BEGIN CERTIFICATE----- sections"
                .to_string(),
        ),
    };
    Diagnostic::error(Code::TlsFile, ca.span, message)
        .label(label)
        .help(help)
}

/// B060, B061: HTTP/2 over TLS and HTTP/3 are negotiated by ALPN and need
/// TLS; `h2c` (prior knowledge) is cleartext only.
fn protocols(listener: &Listener, diagnostics: &mut Vec<Diagnostic>) {
    for protocol in &listener.protocols {
        match (protocol.value, &listener.tls) {
            (Protocol::H2 | Protocol::H3, None) => {
                let (kdl, toml) = (
                    "a `tls { cert \"...\" key=\"...\" }` block",
                    "a `[listener.tls]` table with `certs = [{ cert = \"...\", key = \"...\" }]`",
                );
                let help = |tls: &str| {
                    if protocol.value == Protocol::H2 {
                        format!("add {tls}, or use `h2c` for cleartext HTTP/2")
                    } else {
                        format!("HTTP/3 runs over QUIC, which is always encrypted: add {tls}")
                    }
                };
                diagnostics.push(
                    Diagnostic::error(
                        Code::ProtocolNeedsTls,
                        protocol.span,
                        format!(
                            "`{}` on listener `{}`, which has no `tls`",
                            protocol.value.keyword(),
                            listener.name.value
                        ),
                    )
                    .label("needs TLS")
                    .help_in(help(kdl), help(toml)),
                );
            }
            (Protocol::H2c, Some(tls)) => diagnostics.push(
                Diagnostic::error(
                    Code::H2cWithTls,
                    protocol.span,
                    format!("`h2c` on listener `{}`, which has `tls`", listener.name.value),
                )
                .label("cleartext HTTP/2 on a TLS listener")
                .help("with TLS, HTTP/2 is negotiated by ALPN: write `h2`, or serve `h2c` on a separate listener without `tls`")
                .related(tls.span, "TLS enabled here"),
            ),
            _ => {}
        }
    }
}

/// B065, B062, B063, B066: every certificate and key loads, and they match.
fn certificates(
    listener: &Listener,
    tls: &Tls,
    provider: &rustls::crypto::CryptoProvider,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if tls.certs.is_empty() {
        diagnostics.push(
            Diagnostic::error(
                Code::TlsWithoutCert,
                tls.span,
                format!(
                    "`tls` on listener `{}` has no certificate",
                    listener.name.value
                ),
            )
            .label_in("no `cert` in this block", "no entry in `certs`")
            .help_in(
                "add `cert \"certs/NAME.crt\" key=\"certs/NAME.key\"`",
                "add `certs = [{ cert = \"certs/NAME.crt\", key = \"certs/NAME.key\" }]`",
            ),
        );
        return;
    }
    for cert in &tls.certs {
        let chain = tls_files::load_cert_chain(&cert.cert.resolved);
        let key = tls_files::load_private_key(&cert.key.resolved, provider);
        let (chain, key) = match (chain, key) {
            (Ok(chain), Ok(key)) => (chain, key),
            (chain, key) => {
                for error in [chain.err(), key.err()].into_iter().flatten() {
                    diagnostics.push(file_error(cert, &error));
                }
                continue;
            }
        };
        let certified =
            match tls_files::certified_key(chain, key, &cert.cert.resolved, &cert.key.resolved) {
                Ok(certified) => certified,
                Err(error) => {
                    diagnostics.push(file_error(cert, &error));
                    continue;
                }
            };
        if let Some((place, out)) = tls_files::validity_at(&certified, UnixTime::now()) {
            diagnostics.push(out_of_validity(cert, place, out));
        }
        // An `sni` that is not a server name is reported once, by `sni()`.
        if let Some(sni) = &cert.sni
            && is_sni_name(&sni.value)
            && let Err(error) =
                tls_files::check_server_name(&certified, &cert.cert.resolved, &sni.value)
        {
            diagnostics.push(file_error(cert, &error).related(sni.span, "chosen for this name"));
        }
    }
}

/// B067: the certificate loads, but TLS clients reject it today: the
/// certificate itself, or an intermediate of its chain (`place` in the
/// file, 0 being the certificate itself).
fn out_of_validity(cert: &TlsCert, place: usize, out: OutOfValidity) -> Diagnostic {
    let written = &cert.cert.written;
    let (label, help) = match (place, out) {
        (0, OutOfValidity::Expired { .. }) => (
            "clients reject an expired certificate",
            "renew the certificate (or issue a new one) and point `cert` at it; \
             the gateway re-reads certificates on SIGHUP",
        ),
        (0, OutOfValidity::NotYetValid { .. }) => (
            "clients reject a certificate before its validity starts",
            "check this machine's clock and the certificate's notBefore \
             (`openssl x509 -noout -dates -in FILE`), or use a certificate valid now",
        ),
        (_, OutOfValidity::Expired { .. }) => (
            "clients that build their path through an expired intermediate reject the chain",
            "replace the intermediate in the file with the current one from your CA \
             (the certificate itself is still valid); the gateway re-reads certificates on SIGHUP",
        ),
        (_, OutOfValidity::NotYetValid { .. }) => (
            "clients that build their path through this intermediate reject the chain",
            "check this machine's clock and the intermediate's notBefore \
             (`openssl crl2pkcs7 -nocrl -certfile FILE | openssl pkcs7 -print_certs -noout`)",
        ),
    };
    let message = if place == 0 {
        format!("certificate `{written}` {out}")
    } else {
        let nth = place + 1;
        format!("certificate `{written}`: the chain's certificate {nth} (an intermediate) {out}")
    };
    Diagnostic::warning(Code::CertValidity, cert.cert.span, message)
        .label(label)
        .help(help)
}

/// The diagnostic for a certificate or key that failed to load.
fn file_error(cert: &TlsCert, error: &TlsFileError) -> Diagnostic {
    let (span, written) = match error.role() {
        TlsFileRole::Certificate => (cert.cert.span, &cert.cert.written),
        TlsFileRole::PrivateKey => (cert.key.span, &cert.key.written),
    };
    let relative = "paths are relative to the spec file's folder";
    let (code, message, label, help) = match error {
        TlsFileError::Missing { role, .. } => (
            Code::TlsFile,
            format!("{} file `{written}` not found", role_name(*role)),
            "no such file".to_string(),
            relative.to_string(),
        ),
        TlsFileError::Unreadable { role, source, .. } => (
            Code::TlsFile,
            format!("cannot read {} file `{written}`", role_name(*role)),
            source.to_string(),
            "check the file's permissions".to_string(),
        ),
        TlsFileError::BadPem { role, detail, .. } => (
            Code::TlsFile,
            format!("{} file `{written}` is not valid PEM", role_name(*role)),
            detail.clone(),
            "the file must be PEM text with -----BEGIN ...----- and -----END ...----- lines"
                .to_string(),
        ),
        TlsFileError::NoCertificate { found, .. } => (
            Code::TlsFile,
            format!("`{written}` holds no certificate"),
            found_label(found),
            if found.iter().any(|f| f.contains("PRIVATE KEY")) {
                "this looks like a private key: are `cert` and `key` swapped?".to_string()
            } else {
                "`cert` takes a PEM file with -----BEGIN CERTIFICATE----- sections, the server's certificate first"
                    .to_string()
            },
        ),
        TlsFileError::BadCertificate { detail, .. } => (
            Code::TlsFile,
            format!("`{written}` is not a valid X.509 certificate"),
            detail.clone(),
            "regenerate or re-export the certificate as PEM".to_string(),
        ),
        TlsFileError::NoPrivateKey {
            found, encrypted, ..
        } => (
            Code::TlsFile,
            format!("`{written}` holds no private key"),
            if *encrypted {
                "the key is encrypted".to_string()
            } else {
                found_label(found)
            },
            if *encrypted {
                "the gateway cannot ask for a passphrase: decrypt the key, e.g. `openssl pkey -in KEY -out KEY.pem`"
                    .to_string()
            } else if found.iter().any(|f| f == "CERTIFICATE") {
                "this looks like a certificate: are `cert` and `key` swapped?".to_string()
            } else {
                "`key` takes a PEM private key: PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY"
                    .to_string()
            },
        ),
        TlsFileError::UnsupportedKey { detail, .. } => (
            Code::TlsFile,
            format!("the private key in `{written}` cannot be used"),
            detail.clone(),
            "use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key".to_string(),
        ),
        TlsFileError::KeyMismatch {
            belongs_to: Some(n),
            ..
        } => (
            Code::CertKeyMismatch,
            format!(
                "certificate `{written}` does not match key `{}`",
                cert.key.written
            ),
            format!("its first certificate is not the key's: certificate {n} in the file is"),
            "put the server's own certificate first, then its intermediates".to_string(),
        ),
        TlsFileError::KeyMismatch { .. } => (
            Code::CertKeyMismatch,
            format!(
                "certificate `{written}` does not match key `{}`",
                cert.key.written
            ),
            "its public key is not the key's".to_string(),
            "pair each certificate with the key it was issued for".to_string(),
        ),
        TlsFileError::NameMismatch { name, .. } => (
            Code::CertNameMismatch,
            format!("certificate `{written}` is not valid for `{name}`"),
            "the name is not among its subject alternative names".to_string(),
            format!("use a certificate issued for `{name}`, or change `sni`"),
        ),
        // `sni` values are checked first (B039): never reached from here.
        TlsFileError::InvalidServerName { name } => (
            Code::InvalidHost,
            format!("invalid SNI name `{name}`"),
            "not a DNS name".to_string(),
            "write a DNS name such as `api.example.com`".to_string(),
        ),
    };
    let diagnostic = Diagnostic::error(code, span, message)
        .label(label)
        .help(help);
    if matches!(error, TlsFileError::KeyMismatch { .. }) {
        diagnostic.related(cert.key.span, "the key")
    } else {
        diagnostic
    }
}

fn role_name(role: TlsFileRole) -> &'static str {
    match role {
        TlsFileRole::Certificate => "certificate",
        TlsFileRole::PrivateKey => "private key",
    }
}

fn found_label(found: &[String]) -> String {
    if found.is_empty() {
        "no PEM section in the file".to_string()
    } else {
        format!("found only: {}", found.join(", "))
    }
}

/// B064: one certificate per server name and one default; B039: SNI values
/// are DNS names (RFC 6066: no IP addresses, no wildcards).
fn sni(tls: &Tls, diagnostics: &mut Vec<Diagnostic>) {
    let mut names: HashMap<String, Span> = HashMap::new();
    let mut default: Option<Span> = None;
    for cert in &tls.certs {
        let Some(sni) = &cert.sni else {
            match default {
                Some(first) => diagnostics.push(
                    Diagnostic::error(
                        Code::DuplicateSni,
                        cert.cert.span,
                        "two default certificates (without `sni`)",
                    )
                    .label("second certificate without `sni`")
                    .help_in(
                        "only one certificate can be the default: give the others `sni=\"NAME\"`",
                        "only one certificate can be the default: give the others `sni = \"NAME\"`",
                    )
                    .related(first, "first default certificate"),
                ),
                None => default = Some(cert.cert.span),
            }
            continue;
        };
        if !is_sni_name(&sni.value) {
            let help = if sni.value.starts_with("*.") {
                "SNI selects a certificate by exact name: list each name with its own `cert`, or make the wildcard certificate the default (no `sni`)"
            } else if sni.value.parse::<std::net::IpAddr>().is_ok() {
                "clients send no SNI for IP addresses: make this certificate the default (no `sni`)"
            } else {
                "write a DNS name such as `api.example.com`"
            };
            diagnostics.push(invalid_sni(sni, help));
            continue;
        }
        let key = sni.value.trim_end_matches('.').to_ascii_lowercase();
        match names.get(&key) {
            Some(&first) => diagnostics.push(
                Diagnostic::error(
                    Code::DuplicateSni,
                    sni.span,
                    format!("two certificates for `{}`", sni.value),
                )
                .label("second certificate for this name")
                .help("keep one certificate per server name")
                .related(first, "first certificate for it"),
            ),
            None => {
                names.insert(key, sni.span);
            }
        }
    }
}

/// SNI carries DNS names only (RFC 6066 §3): no IP address literals, and
/// only names rustls takes (the runtime's own test, so what checks clean
/// connects: a last label of digits or `0x1f`, `a..`, are not).
fn is_sni_name(name: &str) -> bool {
    is_dns_name(name) && tls_files::is_server_name(name)
}

/// B039 for an `sni` that is not a DNS name; `help` says what to write in
/// its place.
fn invalid_sni(sni: &Spanned<String>, help: &str) -> Diagnostic {
    Diagnostic::error(
        Code::InvalidHost,
        sni.span,
        format!("invalid SNI name `{}`", sni.value),
    )
    .label("not a DNS name")
    .help(help)
}
