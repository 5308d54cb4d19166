//! Lowering of single values, shared by both front ends: each function takes
//! the text (or number) as written and its span, and returns the IR value or
//! pushes a diagnostic and returns `None`. Keeping these in one place is what
//! makes the KDL and TOML forms of a spec mean the same thing.

use crate::diag::{Code, Diagnostic, choices_help};
use blitz_ir::units::{self, Rate};
use blitz_ir::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The state a front end carries while lowering one spec file.
#[derive(Debug)]
pub struct Lowering {
    /// The spec file's folder: relative paths in the spec are resolved here.
    pub dir: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl Lowering {
    pub fn new(spec_path: &Path) -> Self {
        let dir = spec_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Lowering {
            dir,
            diagnostics: Vec::new(),
        }
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    pub fn duration(&mut self, text: &str, span: Span) -> Option<Spanned<Duration>> {
        match units::parse_duration(text) {
            Ok(d) => Some(Spanned::new(d, span)),
            Err(e) => {
                self.push(
                    Diagnostic::error(
                        Code::InvalidDuration,
                        span,
                        format!("invalid duration `{text}`"),
                    )
                    .label(e.message)
                    .help(e.help),
                );
                None
            }
        }
    }

    /// A size written as text (`"16KiB"`); integers are bytes already.
    pub fn size_text(&mut self, text: &str, span: Span) -> Option<Spanned<u64>> {
        match units::parse_size(text) {
            Ok(n) => Some(Spanned::new(n, span)),
            Err(e) => {
                self.push(
                    Diagnostic::error(Code::InvalidSize, span, format!("invalid size `{text}`"))
                        .label(e.message)
                        .help(e.help),
                );
                None
            }
        }
    }

    /// A size written as an integer of bytes.
    pub fn size_int(&mut self, n: i128, span: Span) -> Option<Spanned<u64>> {
        match u64::try_from(n) {
            Ok(n) => Some(Spanned::new(n, span)),
            Err(_) => {
                self.push(
                    Diagnostic::error(Code::InvalidSize, span, format!("invalid size `{n}`"))
                        .label("a size cannot be negative or this large")
                        .help("write a whole number of bytes, or a string such as \"16KiB\""),
                );
                None
            }
        }
    }

    pub fn rate(&mut self, text: &str, span: Span) -> Option<Spanned<Rate>> {
        match units::parse_rate(text) {
            Ok(r) => Some(Spanned::new(r, span)),
            Err(e) => {
                self.push(
                    Diagnostic::error(Code::InvalidRate, span, format!("invalid rate `{text}`"))
                        .label(e.message)
                        .help(e.help),
                );
                None
            }
        }
    }

    /// A non-negative integer that fits `u32`, at least `min`.
    pub fn count(&mut self, n: i128, min: u32, what: &str, span: Span) -> Option<Spanned<u32>> {
        match u32::try_from(n) {
            Ok(v) if v >= min => Some(Spanned::new(v, span)),
            _ => {
                self.push(
                    Diagnostic::error(
                        Code::OutOfRange,
                        span,
                        format!("{what} `{n}` is out of range"),
                    )
                    .label(format!("must be a whole number from {min} to {}", u32::MAX))
                    .help(format!("write a whole number of at least {min}")),
                );
                None
            }
        }
    }

    /// A listener or metrics bind address: `IP:PORT` (`[::1]:80` for IPv6).
    pub fn bind_address(&mut self, text: &str, span: Span) -> Option<Spanned<SocketAddr>> {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(Spanned::new(addr, span)),
            Err(_) => {
                let help = if text.starts_with("localhost:") {
                    "bind to an IP address: write \"127.0.0.1:PORT\" instead of \"localhost:PORT\""
                        .to_string()
                } else if !text.contains(':') {
                    format!("add a port, e.g. \"{text}:8080\"")
                } else {
                    "write IP:PORT, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"".to_string()
                };
                self.push(
                    Diagnostic::error(
                        Code::InvalidAddress,
                        span,
                        format!("invalid bind address `{text}`"),
                    )
                    .label("not an IP:PORT address")
                    .help(help),
                );
                None
            }
        }
    }

    /// An upstream server: `IP:PORT` or `HOST:PORT` with a DNS name.
    pub fn server_address(&mut self, text: &str, span: Span) -> Option<Spanned<ServerAddress>> {
        if let Ok(addr) = text.parse::<SocketAddr>()
            && addr.port() != 0
        {
            return Some(Spanned::new(ServerAddress::Ip(addr), span));
        }
        let parsed = text.rsplit_once(':').and_then(|(host, port)| {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))?;
            is_dns_name(host).then(|| ServerAddress::Dns {
                host: host.to_ascii_lowercase(),
                port,
            })
        });
        match parsed {
            Some(address) => Some(Spanned::new(address, span)),
            None => {
                self.push(
                    Diagnostic::error(Code::InvalidAddress, span, format!("invalid server address `{text}`"))
                        .label("not HOST:PORT")
                        .help("write IP:PORT or DNS-NAME:PORT, e.g. \"127.0.0.1:9001\" or \"users.internal:80\""),
                );
                None
            }
        }
    }

    /// A health check's `expect`: `NNN` or `NNN-NNN` (B034).
    pub fn status_range(&mut self, text: &str, span: Span) -> Option<Spanned<StatusRange>> {
        if let Some(range) = StatusRange::parse(text) {
            return Some(Spanned::new(range, span));
        }
        self.push(
            Diagnostic::error(
                Code::InvalidStatus,
                span,
                format!("invalid status range `{}`", text.escape_debug()),
            )
            .label("not a status or a range of statuses")
            .help("write one status from 100 to 599 (\"204\") or a range (\"200-399\")"),
        );
        None
    }

    /// An HTTP status code in `range` (e.g. 100..=599, or 300..=399).
    pub fn status(
        &mut self,
        n: i128,
        range: std::ops::RangeInclusive<u16>,
        span: Span,
    ) -> Option<Spanned<u16>> {
        match u16::try_from(n) {
            Ok(code) if range.contains(&code) => Some(Spanned::new(code, span)),
            _ => {
                self.push(
                    Diagnostic::error(
                        Code::InvalidStatus,
                        span,
                        format!("invalid status code `{n}`"),
                    )
                    .label(format!("must be from {} to {}", range.start(), range.end()))
                    .help(format!(
                        "write a status code from {} to {}",
                        range.start(),
                        range.end()
                    )),
                );
                None
            }
        }
    }

    /// A header name (an RFC 9110 token), lower-cased.
    pub fn header_name(&mut self, text: &str, span: Span) -> Option<Spanned<String>> {
        if !text.is_empty() && text.bytes().all(is_tchar) {
            Some(Spanned::new(text.to_ascii_lowercase(), span))
        } else {
            self.push(
                Diagnostic::error(
                    Code::InvalidHeaderName,
                    span,
                    format!("invalid header name `{}`", text.escape_debug()),
                )
                .label("not a valid HTTP header name")
                .help(
                    "header names are non-empty and use only letters, digits and !#$%&'*+-.^_`|~",
                ),
            );
            None
        }
    }

    /// A header value: text without control characters but the tab, and
    /// not starting or ending with a space or tab (RFC 9110 §5.5: no CTL
    /// or DEL; a field value has no surrounding whitespace). HTTP/1.1 would
    /// write a control character raw, outside the field-value grammar, and
    /// HTTP/2 cannot carry it at all; surrounding whitespace HTTP/1.1
    /// parsing drops and HTTP/2 refuses (RFC 9113 §8.2.1), so a step that
    /// set it would reset the stream of every HTTP/2 answer it is on.
    pub fn header_value(&mut self, text: &str, span: Span) -> Option<Spanned<String>> {
        self.field_value(
            text,
            span,
            "starts or ends with whitespace, which no field value may",
            "HTTP/2 refuses such a field and HTTP/1.1 drops the whitespace",
        )
    }

    /// A value a `header` match condition compares with: a header value
    /// (above), with its own word for surrounding whitespace. A field value
    /// never keeps that whitespace (HTTP/1.1 parsing drops it; HTTP/2
    /// refuses a field that has it), so such a condition could never hold.
    pub fn match_header_value(&mut self, text: &str, span: Span) -> Option<Spanned<String>> {
        self.field_value(
            text,
            span,
            "starts or ends with whitespace, which no request's header keeps",
            "header values are compared without surrounding spaces and tabs",
        )
    }

    fn field_value(
        &mut self,
        text: &str,
        span: Span,
        edge_label: &'static str,
        edge_why: &str,
    ) -> Option<Spanned<String>> {
        if text.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            let label = if text.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                "contains CR, LF or NUL"
            } else {
                "contains a control character (other than tab) or DEL"
            };
            self.push(
                Diagnostic::error(Code::InvalidHeaderValue, span, "invalid header value")
                    .label(label)
                    .help("a header value must be a single line without control characters"),
            );
            return None;
        }
        let trimmed = text.trim_matches([' ', '\t']);
        if trimmed.len() == text.len() {
            return Some(Spanned::new(text.to_string(), span));
        }
        self.push(
            Diagnostic::error(Code::InvalidHeaderValue, span, "invalid header value")
                .label(edge_label)
                .help(format!("{edge_why}: write `{}`", trimmed.escape_debug())),
        );
        None
    }

    /// The values of a `header` match condition, each through
    /// [`Lowering::match_header_value`]. `None` when values were written
    /// but none is usable: the condition is dropped (its error reported)
    /// rather than read as "the header is present".
    pub fn match_header_values(
        &mut self,
        values: impl IntoIterator<Item = Spanned<String>>,
    ) -> Option<Vec<Spanned<String>>> {
        let mut written = 0;
        let mut kept = Vec::new();
        for v in values {
            written += 1;
            kept.extend(self.match_header_value(&v.value, v.span));
        }
        (!kept.is_empty() || written == 0).then_some(kept)
    }

    /// A host pattern: a DNS name or `*.name`, lower-cased, or an IP
    /// address. An IPv6 address (bare or in brackets, as a `Host` header
    /// has it) is stored as its canonical text, which is what a request's
    /// IPv6 host is turned into before matching
    /// (`blitz_ir::matcher::host_without_port`).
    pub fn host_pattern(&mut self, text: &str, span: Span) -> Option<Spanned<HostPattern>> {
        // Request hosts are matched without a trailing dot, so patterns are
        // stored without one too (`example.com.` is `example.com`).
        let lower = text.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower).to_string();
        let ipv6 = lower
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(&lower);
        let pattern = match lower.strip_prefix("*.") {
            Some(rest) if is_dns_name(rest) => Some(HostPattern::Wildcard(format!(".{rest}"))),
            Some(_) => None,
            None if is_dns_name(&lower) || lower.parse::<std::net::Ipv4Addr>().is_ok() => {
                Some(HostPattern::Exact(lower))
            }
            None => blitz_ir::matcher::canonical_ipv6(ipv6).map(HostPattern::Exact),
        };
        if pattern.is_none() {
            let help = if text.contains(':') {
                "hosts are matched without their port: remove `:PORT`"
            } else if text.contains('*') {
                "a wildcard stands only as the first label: `*.example.com`"
            } else {
                "write a host name such as `api.example.com`, or `*.example.com` for its subdomains"
            };
            self.push(
                Diagnostic::error(
                    Code::InvalidHost,
                    span,
                    format!("invalid host pattern `{text}`"),
                )
                .label("not a host name or wildcard")
                .help(help),
            );
        }
        pattern.map(|p| Spanned::new(p, span))
    }

    /// A path for `path` and `path-prefix`: absolute and already normalised
    /// (requests are normalised before matching, so a path with dot-segments
    /// could never match).
    pub fn match_path(&mut self, text: &str, span: Span, prefix: bool) -> Option<Spanned<String>> {
        let problem = if !text.starts_with('/') {
            Some(("must start with `/`", format!("write `/{text}`")))
        } else if text.contains('?') || text.contains('#') {
            Some((
                "contains a query or fragment",
                "match on the path alone; use `query` for parameters".to_string(),
            ))
        } else if encoded_if_raw(text).is_some() {
            Some((
                "holds a character a request target cannot carry unencoded",
                format!(
                    "clients send it percent-encoded: write `{}`",
                    normal_spelling(text).0
                ),
            ))
        } else {
            match normal_spelling(text) {
                (normal, _) if normal == text => None,
                (fixed, true) => Some((
                    "has a `%` that starts no escape",
                    format!("a literal `%` is written `%25`: write `{fixed}`"),
                )),
                (fixed, false) => Some((
                    "is not normalised",
                    format!("requests are normalised before matching: write `{fixed}`"),
                )),
            }
        };
        if let Some((label, help)) = problem {
            self.push(
                Diagnostic::error(Code::InvalidPath, span, format!("invalid path `{text}`"))
                    .label(format!("the path {label}"))
                    .help(help),
            );
            return None;
        }
        let value = if prefix && text.len() > 1 {
            text.trim_end_matches('/').to_string()
        } else {
            text.to_string()
        };
        Some(Spanned::new(
            if value.is_empty() { "/".into() } else { value },
            span,
        ))
    }

    /// A `path-regex`, checked to compile as it is used: anchored
    /// ([`blitz_ir::matcher::anchored_regex`]).
    ///
    /// The pattern must also compile on its own: `x)|(/.*` compiles once
    /// wrapped, as `^(?:x)|(/.*)$`, an alternation out of the anchors that
    /// matches any path holding a `/`, not what was written.
    pub fn regex(&mut self, text: &str, span: Span) -> Option<Spanned<String>> {
        let anchored = blitz_ir::matcher::anchored_regex(text);
        match regex::Regex::new(text).and_then(|_| regex::Regex::new(&anchored)) {
            Ok(_) => Some(Spanned::new(text.to_string(), span)),
            Err(_) if regex::Regex::new(text).is_ok() => {
                // Only the anchoring breaks it: a `#` comment of `(?x)`
                // mode runs to the end of the line, over the `)$`.
                self.push(
                    Diagnostic::error(Code::InvalidRegex, span, format!("invalid regex `{text}`"))
                        .label("compiles alone, but not anchored to the whole path as `^(?:…)$`")
                        .help(
                            "end a `#` comment of `(?x)` mode with a newline (`\\n`), or drop it; \
                             path-regex must match the whole path",
                        ),
                );
                None
            }
            Err(e) => {
                let detail = e.to_string();
                let last = detail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid regex");
                self.push(
                    Diagnostic::error(Code::InvalidRegex, span, format!("invalid regex `{text}`"))
                        .label(last.trim().trim_start_matches("error: ").to_string())
                        .help("path-regex uses Rust `regex` syntax and must match the whole path"),
                );
                None
            }
        }
    }

    /// An HTTP method (a token), upper-cased.
    pub fn method(&mut self, text: &str, span: Span) -> Option<Spanned<String>> {
        if !text.is_empty() && text.bytes().all(is_tchar) {
            Some(Spanned::new(text.to_ascii_uppercase(), span))
        } else {
            self.push(
                Diagnostic::error(Code::InvalidValue, span, format!("invalid method `{text}`"))
                    .label("not an HTTP method")
                    .help("write a method name such as GET, POST or HEAD"),
            );
            None
        }
    }

    /// A path in the spec, resolved against the spec's folder.
    pub fn file_path(&mut self, text: &str, span: Span) -> Option<Spanned<FilePath>> {
        if text.is_empty() {
            self.push(
                Diagnostic::error(Code::WrongType, span, "empty file path")
                    .label("expected a path")
                    .help("paths are relative to the spec file's folder"),
            );
            return None;
        }
        if text.contains('\0') {
            self.push(
                Diagnostic::error(Code::InvalidValue, span, "file path holds a NUL character")
                    .label("no file's name can hold one")
                    .help("remove the `\\0` from the path"),
            );
            return None;
        }
        Some(Spanned::new(
            FilePath {
                written: text.to_string(),
                resolved: self.dir.join(text),
            },
            span,
        ))
    }

    /// A server's TLS from its parsed `tls`, `sni` and `ca` (each front end
    /// reads them its own way; `enable` is how its syntax writes TLS on,
    /// for the help line). `Some(None)`: cleartext; `None`: an error was
    /// reported (`sni` or `ca` without TLS).
    pub fn server_tls(
        &mut self,
        on: Option<Spanned<bool>>,
        sni: Option<Spanned<String>>,
        ca: Option<Spanned<FilePath>>,
        enable: &str,
    ) -> Option<Option<ServerTls>> {
        if let Some(on) = on.filter(|on| on.value) {
            return Some(Some(ServerTls {
                sni: sni.map(|s| Spanned::new(s.value.to_ascii_lowercase(), s.span)),
                ca,
                span: on.span,
            }));
        }
        let (what, at) = match (&sni, &ca) {
            (Some(s), _) => ("sni", s.span),
            (None, Some(c)) => ("ca", c.span),
            (None, None) => return Some(None),
        };
        self.push(
            Diagnostic::error(
                Code::MissingField,
                at,
                format!("`{what}` on a server without `{enable}`"),
            )
            .label("only used for TLS")
            .help(format!(
                "add `{enable}` to connect to this server with TLS, or remove it"
            )),
        );
        None
    }

    /// One of a fixed set of keywords.
    pub fn keyword<T: Copy>(
        &mut self,
        text: &str,
        span: Span,
        what: &str,
        choices: &[(&str, T)],
    ) -> Option<Spanned<T>> {
        if let Some((_, value)) = choices.iter().find(|(word, _)| *word == text) {
            return Some(Spanned::new(*value, span));
        }
        let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
        self.push(
            Diagnostic::error(Code::InvalidValue, span, format!("unknown {what} `{text}`"))
                .label(format!("not a {what}"))
                .help(choices_help(text, &words)),
        );
        None
    }

    pub fn protocol(&mut self, text: &str, span: Span) -> Option<Spanned<Protocol>> {
        let choices = [
            ("h1", Protocol::H1),
            ("h2", Protocol::H2),
            ("h2c", Protocol::H2c),
            ("h3", Protocol::H3),
        ];
        self.keyword(text, span, "protocol", &choices)
    }

    pub fn balance(&mut self, text: &str, span: Span) -> Option<Spanned<BalanceAlgorithm>> {
        let choices: Vec<_> = BalanceAlgorithm::ALL
            .iter()
            .map(|a| (a.keyword(), *a))
            .collect();
        self.keyword(text, span, "balance algorithm", &choices)
    }

    pub fn jwt_algorithm(&mut self, text: &str, span: Span) -> Option<Spanned<JwtAlgorithm>> {
        if text.eq_ignore_ascii_case("none") {
            self.push(
                Diagnostic::error(
                    Code::InvalidValue,
                    span,
                    "the `none` algorithm is never accepted",
                )
                .label("unsigned tokens are not allowed")
                .help("list the signing algorithms your issuer uses, e.g. \"RS256\""),
            );
            return None;
        }
        let choices: Vec<_> = JwtAlgorithm::ALL
            .iter()
            .map(|a| (a.keyword(), *a))
            .collect();
        self.keyword(text, span, "JWT algorithm", &choices)
    }

    pub fn log_format(&mut self, text: &str, span: Span) -> Option<Spanned<LogFormat>> {
        self.keyword(
            text,
            span,
            "access-log format",
            &[("json", LogFormat::Json), ("combined", LogFormat::Combined)],
        )
    }

    pub fn log_target(&mut self, text: &str, span: Span) -> Option<Spanned<LogTarget>> {
        match text {
            "stdout" => Some(Spanned::new(LogTarget::Stdout, span)),
            "stderr" => Some(Spanned::new(LogTarget::Stderr, span)),
            _ => self
                .file_path(text, span)
                .map(|p| Spanned::new(LogTarget::File(p.value), span)),
        }
    }

    /// A per-request key: `client-ip`, `header:NAME`, `jwt:CLAIM`, `path`.
    pub fn request_key(&mut self, text: &str, span: Span) -> Option<Spanned<RequestKey>> {
        match RequestKey::parse(text) {
            Some(RequestKey::Header(name)) if !name.bytes().all(is_tchar) => self
                .header_name(&name, span)
                .map(|n| Spanned::new(RequestKey::Header(n.value), span)),
            Some(key) => Some(Spanned::new(key, span)),
            None => {
                let help = choices_help(text, &["client-ip", "header:NAME", "jwt:CLAIM", "path"]);
                self.push(
                    Diagnostic::error(Code::InvalidValue, span, format!("unknown key `{text}`"))
                        .label("not a request key")
                        .help(help),
                );
                None
            }
        }
    }

    pub fn retry_on(&mut self, text: &str, span: Span) -> Option<Spanned<RetryOn>> {
        match RetryOn::parse(text) {
            Some(on) => Some(Spanned::new(on, span)),
            None => {
                let help = choices_help(
                    text,
                    &["connect-error", "timeout", "reset", "502", "503", "504"],
                );
                self.push(
                    Diagnostic::error(
                        Code::InvalidValue,
                        span,
                        format!("unknown retry condition `{text}`"),
                    )
                    .label("not a retry condition")
                    .help(format!("{help}, or any 5xx status")),
                );
                None
            }
        }
    }

    /// `"auto"` or a positive integer.
    pub fn workers_text(&mut self, text: &str, span: Span) -> Option<Spanned<Workers>> {
        if text == "auto" {
            return Some(Spanned::new(Workers::Auto, span));
        }
        self.push(
            Diagnostic::error(
                Code::InvalidValue,
                span,
                format!("invalid workers `{text}`"),
            )
            .label("expected \"auto\" or a number")
            .help("write \"auto\" for one worker per core, or a number of workers such as 4"),
        );
        None
    }

    pub fn workers_int(&mut self, n: i128, span: Span) -> Option<Spanned<Workers>> {
        self.count(n, 1, "workers", span)
            .map(|c| Spanned::new(Workers::Count(c.value), span))
    }
}

/// RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// How a path written in a spec (starting with `/`) must be spelt to be
/// matched, every problem mended at once (so that the spelling a
/// diagnostic suggests passes `check`): raw bytes percent-encoded as a
/// client sends them, each `%` that starts no escape written `%25` (a
/// literal `%`: `/files/100%` is `/files/100%25`), then normalised. Also
/// says whether an escape had to be mended.
pub(crate) fn normal_spelling(text: &str) -> (String, bool) {
    let encoded = encoded_if_raw(text);
    let text = encoded.as_deref().unwrap_or(text);
    if let Some(normal) = blitz_ir::matcher::normalize_path(text) {
        return (normal, false);
    }
    let normal =
        blitz_ir::matcher::normalize_path(&mend_escapes(text)).unwrap_or_else(|| "/".into());
    (normal, true)
}

/// `text` with each `%` that starts no escape (two hex digits after it)
/// written `%25`, a literal `%`.
pub(crate) fn mend_escapes(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut mended = String::with_capacity(text.len() + 8);
    for (i, c) in text.char_indices() {
        let escape = bytes
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if c == '%' && !escape {
            mended.push_str("%25");
        } else {
            mended.push(c);
        }
    }
    mended
}

/// `text` with every byte outside visible ASCII percent-encoded, when it
/// has one: the spelling a client sends. The runtime refuses a request
/// target holding such a raw byte (400), so a path written with one could
/// never match or be stripped.
pub(crate) fn encoded_if_raw(text: &str) -> Option<String> {
    if text.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Some(out)
}
