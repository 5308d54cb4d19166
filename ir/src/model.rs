//! The spec model: one struct per construct of SPEC.md, defaults applied.
//!
//! Conventions:
//! - `span` on a struct is the span of its whole node (KDL node, TOML table).
//! - Values a diagnostic may point at are [`Spanned`].
//! - References to named items are [`Ref`]s; after resolution their `index`
//!   points into the matching `Spec` list (see [`Spec::resolve`]).
//! - Lists whose order carries no meaning are kept in a canonical order by the
//!   front ends (match conditions by kind), so both forms of a spec lower to
//!   equal models.

use crate::units::Rate;
use crate::{Span, Spanned};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole gateway spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub version: u32,
    pub gateway: Gateway,
    pub listeners: Vec<Listener>,
    pub limits: Limits,
    pub upstreams: Vec<Upstream>,
    pub jwts: Vec<Jwt>,
    pub rate_limits: Vec<RateLimit>,
    pub plugins: Vec<Plugin>,
    pub chains: Vec<Chain>,
    pub routes: Vec<Route>,
    pub metrics: Option<Metrics>,
    pub admin: Admin,
    /// Named items the front end reported and left out (a required field
    /// missing or invalid). References to them are not reported again as
    /// unknown, so one mistake gives one diagnostic. Not part of the meaning.
    #[serde(skip)]
    pub left_out: Vec<(ItemKind, String)>,
}

/// The kinds of named items; names are unique within a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ItemKind {
    Listener,
    Upstream,
    Jwt,
    RateLimit,
    Plugin,
    Chain,
    Route,
}

impl ItemKind {
    /// The keyword of the kind in both spec forms (`rate-limit`, `jwt`, ...).
    pub fn keyword(self) -> &'static str {
        match self {
            ItemKind::Listener => "listener",
            ItemKind::Upstream => "upstream",
            ItemKind::Jwt => "jwt",
            ItemKind::RateLimit => "rate-limit",
            ItemKind::Plugin => "plugin",
            ItemKind::Chain => "chain",
            ItemKind::Route => "route",
        }
    }
}

/// A reference by name to a named item of `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ref {
    pub kind: ItemKind,
    pub name: Spanned<String>,
    /// Index into the list of `kind` in [`Spec`]; `None` until resolved, and
    /// after resolution only when the name is unknown (a diagnostic).
    pub index: Option<usize>,
}

impl Ref {
    pub fn new(kind: ItemKind, name: Spanned<String>) -> Self {
        Ref {
            kind,
            name,
            index: None,
        }
    }
}

// ---------------------------------------------------------------- gateway

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    /// The gateway's name; defaults to the spec file's stem.
    pub name: Spanned<String>,
    pub workers: Spanned<Workers>,
    pub access_log: Option<AccessLog>,
    pub span: Span,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            name: Spanned::new("gateway".into(), Span::default()),
            workers: Spanned::new(Workers::Auto, Span::default()),
            access_log: None,
            span: Span::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workers {
    /// One worker per core.
    Auto,
    Count(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLog {
    pub target: Spanned<LogTarget>,
    pub format: Spanned<LogFormat>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogTarget {
    Stdout,
    Stderr,
    File(FilePath),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFormat {
    Json,
    Combined,
}

/// A path written in the spec, and the same path resolved against the
/// spec file's folder (SPEC.md "Files").
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilePath {
    pub written: String,
    pub resolved: PathBuf,
}

// ---------------------------------------------------------------- listeners

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    pub name: Spanned<String>,
    pub bind: Spanned<SocketAddr>,
    /// Defaults to `h1` alone.
    pub protocols: Vec<Spanned<Protocol>>,
    pub tls: Option<Tls>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    H1,
    H2,
    H2c,
    H3,
}

impl Protocol {
    pub fn keyword(self) -> &'static str {
        match self {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2",
            Protocol::H2c => "h2c",
            Protocol::H3 => "h3",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// In spec order; the first one without `sni` is the default certificate.
    pub certs: Vec<TlsCert>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCert {
    pub cert: Spanned<FilePath>,
    pub key: Spanned<FilePath>,
    /// Server name this certificate is chosen for; `None` = default.
    pub sni: Option<Spanned<String>>,
    pub span: Span,
}

// ---------------------------------------------------------------- limits

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub header_timeout: Spanned<Duration>,
    pub idle_timeout: Spanned<Duration>,
    pub body_timeout: Spanned<Duration>,
    pub max_header_bytes: Spanned<u64>,
    pub max_headers: Spanned<u64>,
    pub max_body_bytes: Spanned<u64>,
    pub span: Span,
}

impl Limits {
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
    pub const DEFAULT_MAX_HEADERS: u64 = 100;
    pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        let d = Span::default();
        Limits {
            header_timeout: Spanned::new(Self::DEFAULT_HEADER_TIMEOUT, d),
            idle_timeout: Spanned::new(Self::DEFAULT_IDLE_TIMEOUT, d),
            body_timeout: Spanned::new(Self::DEFAULT_BODY_TIMEOUT, d),
            max_header_bytes: Spanned::new(Self::DEFAULT_MAX_HEADER_BYTES, d),
            max_headers: Spanned::new(Self::DEFAULT_MAX_HEADERS, d),
            max_body_bytes: Spanned::new(Self::DEFAULT_MAX_BODY_BYTES, d),
            span: d,
        }
    }
}

// ---------------------------------------------------------------- upstreams

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    pub name: Spanned<String>,
    pub balance: Balance,
    pub servers: Vec<Server>,
    pub pool: Pool,
    pub health_check: Option<HealthCheck>,
    pub timeouts: UpstreamTimeouts,
    pub retry: Option<Retry>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Defaults to round-robin.
    pub algorithm: Spanned<BalanceAlgorithm>,
    /// The hash key of `consistent-hash`.
    pub key: Option<Spanned<RequestKey>>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BalanceAlgorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    P2c,
    ConsistentHash,
}

impl BalanceAlgorithm {
    pub const ALL: [BalanceAlgorithm; 5] = [
        BalanceAlgorithm::RoundRobin,
        BalanceAlgorithm::WeightedRoundRobin,
        BalanceAlgorithm::LeastConn,
        BalanceAlgorithm::P2c,
        BalanceAlgorithm::ConsistentHash,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            BalanceAlgorithm::RoundRobin => "round-robin",
            BalanceAlgorithm::WeightedRoundRobin => "weighted-round-robin",
            BalanceAlgorithm::LeastConn => "least-conn",
            BalanceAlgorithm::P2c => "p2c",
            BalanceAlgorithm::ConsistentHash => "consistent-hash",
        }
    }

    pub fn from_keyword(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.keyword() == word)
    }

    /// Whether server weights change this algorithm's choices.
    pub fn uses_weights(self) -> bool {
        matches!(
            self,
            BalanceAlgorithm::WeightedRoundRobin | BalanceAlgorithm::ConsistentHash
        )
    }
}

/// What a per-request key is taken from (hash keys, rate-limit keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestKey {
    ClientIp,
    /// A request header, name lower-cased.
    Header(String),
    /// A claim of the verified JWT.
    JwtClaim(String),
    /// The normalised request path.
    Path,
}

impl RequestKey {
    /// Parses `client-ip`, `header:NAME`, `jwt:CLAIM` or `path`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "client-ip" => Some(RequestKey::ClientIp),
            "path" => Some(RequestKey::Path),
            _ => {
                if let Some(name) = text.strip_prefix("header:") {
                    (!name.is_empty()).then(|| RequestKey::Header(name.to_ascii_lowercase()))
                } else if let Some(claim) = text.strip_prefix("jwt:") {
                    (!claim.is_empty()).then(|| RequestKey::JwtClaim(claim.to_string()))
                } else {
                    None
                }
            }
        }
    }
}

impl std::fmt::Display for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestKey::ClientIp => f.write_str("client-ip"),
            RequestKey::Path => f.write_str("path"),
            RequestKey::Header(name) => write!(f, "header:{name}"),
            RequestKey::JwtClaim(claim) => write!(f, "jwt:{claim}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub address: Spanned<ServerAddress>,
    /// Defaults to 1.
    pub weight: Spanned<u32>,
    /// TLS to this server (`tls=#true`); `None` = cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    pub span: Span,
}

/// TLS to an upstream server: the certificate is always verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTls {
    /// Name sent in SNI and verified; `None` = the address's host.
    pub sni: Option<Spanned<String>>,
    /// CA file to verify with instead of the built-in (Mozilla) roots.
    pub ca: Option<Spanned<FilePath>>,
    /// The `tls=#true` entry.
    pub span: Span,
}

impl Server {
    /// The name verified in the server's certificate (and sent in SNI):
    /// `sni`, else the address's host.
    pub fn tls_name(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        Some(match (&tls.sni, &self.address.value) {
            (Some(sni), _) => sni.value.clone(),
            (None, ServerAddress::Ip(addr)) => addr.ip().to_string(),
            (None, ServerAddress::Dns { host, .. }) => host.clone(),
        })
    }
}

/// `host:port`, the host an IP address or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServerAddress {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Ip(addr) => write!(f, "{addr}"),
            ServerAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub max_idle: Spanned<u32>,
    pub idle_timeout: Spanned<Duration>,
    pub span: Span,
}

impl Pool {
    pub const DEFAULT_MAX_IDLE: u32 = 64;
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            max_idle: Spanned::new(Self::DEFAULT_MAX_IDLE, Span::default()),
            idle_timeout: Spanned::new(Self::DEFAULT_IDLE_TIMEOUT, Span::default()),
            span: Span::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub path: Spanned<String>,
    pub interval: Spanned<Duration>,
    pub timeout: Spanned<Duration>,
    /// Consecutive successes that make an unhealthy server healthy.
    pub healthy: Spanned<u32>,
    /// Consecutive failures that make a healthy server unhealthy.
    pub unhealthy: Spanned<u32>,
    /// Statuses that count as healthy.
    pub expect: Spanned<StatusRange>,
    pub span: Span,
}

/// An inclusive range of HTTP status codes (`"200-399"`, or one: `"204"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRange {
    pub first: u16,
    pub last: u16,
}

impl StatusRange {
    /// Parses `NNN` or `NNN-NNN`, each from 100 to 599, the first not above
    /// the last.
    pub fn parse(text: &str) -> Option<Self> {
        let status = |t: &str| -> Option<u16> {
            let n: u16 = t.parse().ok().filter(|_| t.len() == 3)?;
            (100..=599).contains(&n).then_some(n)
        };
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (status(a)?, status(b)?),
            None => (status(text)?, status(text)?),
        };
        (first <= last).then_some(StatusRange { first, last })
    }

    pub fn contains(self, status: u16) -> bool {
        (self.first..=self.last).contains(&status)
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl HealthCheck {
    /// 2xx and 3xx.
    pub const DEFAULT_EXPECT: StatusRange = StatusRange {
        first: 200,
        last: 399,
    };
    pub const DEFAULT_PATH: &'static str = "/";
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_HEALTHY: u32 = 2;
    pub const DEFAULT_UNHEALTHY: u32 = 3;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTimeouts {
    pub connect: Spanned<Duration>,
    /// From the request sent to the response head received.
    pub response: Spanned<Duration>,
    pub span: Span,
}

impl UpstreamTimeouts {
    pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
    pub const DEFAULT_RESPONSE: Duration = Duration::from_secs(60);
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Spanned::new(Self::DEFAULT_CONNECT, Span::default()),
            response: Spanned::new(Self::DEFAULT_RESPONSE, Span::default()),
            span: Span::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Further attempts after the first one.
    pub attempts: Spanned<u32>,
    pub on: Vec<Spanned<RetryOn>>,
    /// Deadline of the whole request, all tries included; `None`: only each
    /// try's own timeouts bound it.
    pub total: Option<Spanned<Duration>>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    ConnectError,
    Timeout,
    /// The upstream closed or reset the connection before a response head.
    Reset,
    /// An upstream response with this status.
    Status(u16),
}

impl RetryOn {
    /// Parses `connect-error`, `timeout`, `reset` or a 5xx status code.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "connect-error" => Some(RetryOn::ConnectError),
            "timeout" => Some(RetryOn::Timeout),
            "reset" => Some(RetryOn::Reset),
            _ => {
                let status: u16 = text.parse().ok().filter(|_| text.len() == 3)?;
                (500..=599)
                    .contains(&status)
                    .then_some(RetryOn::Status(status))
            }
        }
    }
}

// ---------------------------------------------------------------- auth

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwt {
    pub name: Spanned<String>,
    pub issuer: Option<Spanned<String>>,
    /// Accepted audiences (alternatives); empty = `aud` not checked.
    pub audience: Vec<Spanned<String>>,
    pub algorithms: Vec<Spanned<JwtAlgorithm>>,
    pub keys: Spanned<JwksSource>,
    pub roles_claim: Spanned<String>,
    pub leeway: Spanned<Duration>,
    pub span: Span,
}

impl Jwt {
    pub const DEFAULT_ROLES_CLAIM: &'static str = "roles";
    pub const DEFAULT_LEEWAY: Duration = Duration::ZERO;
    pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwksSource {
    File(FilePath),
    Url { url: String, refresh: Duration },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 12] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn from_keyword(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.keyword() == word)
    }

    /// HMAC (shared secret) rather than a public-key algorithm.
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }

    /// The JWK `kty` a key for this algorithm has (`oct`, `RSA`, `EC`, `OKP`).
    pub fn key_type(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => "oct",
            JwtAlgorithm::RS256
            | JwtAlgorithm::RS384
            | JwtAlgorithm::RS512
            | JwtAlgorithm::PS256
            | JwtAlgorithm::PS384
            | JwtAlgorithm::PS512 => "RSA",
            JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => "EC",
            JwtAlgorithm::EdDSA => "OKP",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub name: Spanned<String>,
    pub key: Spanned<RequestKey>,
    pub rate: Spanned<Rate>,
    /// Bucket capacity; defaults to the rate's count.
    pub burst: Spanned<u64>,
    /// Also enforce in the kernel (XDP); only for `client-ip` keys.
    pub ebpf: Spanned<bool>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugin {
    pub name: Spanned<String>,
    pub wasm: Spanned<FilePath>,
    /// Handed to the plugin as its configuration; empty when absent.
    pub config: Spanned<String>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    pub name: Spanned<String>,
    pub steps: Vec<Step>,
    pub span: Span,
}

// ---------------------------------------------------------------- routes

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub name: Spanned<String>,
    /// `None`: the route matches every request.
    pub matcher: Option<Match>,
    pub steps: Vec<Step>,
    pub action: Action,
    pub span: Span,
}

/// A `match` block: every condition must hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// Sorted by kind (host, path, path-prefix, path-regex, method, header,
    /// query), otherwise in spec order.
    pub conditions: Vec<Condition>,
    pub span: Span,
}

/// One condition of a `match`; its several values are alternatives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub test: Test,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Test {
    Host(Vec<Spanned<HostPattern>>),
    /// Exact normalised paths.
    Path(Vec<Spanned<String>>),
    /// Segment-aware prefixes, stored without a trailing `/` (except `/`).
    PathPrefix(Vec<Spanned<String>>),
    /// Regexes that must match the whole normalised path.
    PathRegex(Vec<Spanned<String>>),
    /// Upper-case method names.
    Method(Vec<Spanned<String>>),
    /// Header `name` (lower-case) present, or equal to one of `values`.
    Header {
        name: Spanned<String>,
        values: Vec<Spanned<String>>,
    },
    /// Query parameter `name` present, or equal to one of `values`.
    Query {
        name: Spanned<String>,
        values: Vec<Spanned<String>>,
    },
}

impl Test {
    /// The canonical order of conditions in a [`Match`].
    pub fn order(&self) -> u8 {
        match self {
            Test::Host(_) => 0,
            Test::Path(_) => 1,
            Test::PathPrefix(_) => 2,
            Test::PathRegex(_) => 3,
            Test::Method(_) => 4,
            Test::Header { .. } => 5,
            Test::Query { .. } => 6,
        }
    }

    /// The matcher's keyword in the spec.
    pub fn keyword(&self) -> &'static str {
        match self {
            Test::Host(_) => "host",
            Test::Path(_) => "path",
            Test::PathPrefix(_) => "path-prefix",
            Test::PathRegex(_) => "path-regex",
            Test::Method(_) => "method",
            Test::Header { .. } => "header",
            Test::Query { .. } => "query",
        }
    }
}

/// A host pattern, lower-cased: `api.example.com` or `*.example.com`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub kind: StepKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepKind {
    Auth(Ref),
    RequireRole(Vec<Spanned<String>>),
    RateLimit(Ref),
    RequestHeaders(HeaderRewrite),
    ResponseHeaders(HeaderRewrite),
    Plugin(Ref),
    /// Splices a chain's steps in place.
    Use(Ref),
}

impl StepKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            StepKind::Auth(_) => "auth",
            StepKind::RequireRole(_) => "require-role",
            StepKind::RateLimit(_) => "rate-limit",
            StepKind::RequestHeaders(_) => "request-headers",
            StepKind::ResponseHeaders(_) => "response-headers",
            StepKind::Plugin(_) => "plugin",
            StepKind::Use(_) => "use",
        }
    }
}

/// Header edits, applied in this order: remove, then set, then add.
/// Header names are lower-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRewrite {
    pub remove: Vec<Spanned<String>>,
    /// Replace every value of the header with this one.
    pub set: Vec<(Spanned<String>, Spanned<String>)>,
    /// Append a value, keeping the existing ones.
    pub add: Vec<(Spanned<String>, Spanned<String>)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub kind: ActionKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActionKind {
    Proxy {
        upstream: Ref,
        strip_prefix: Option<Spanned<String>>,
    },
    Respond {
        status: Spanned<u16>,
        body: Spanned<String>,
        content_type: Option<Spanned<String>>,
    },
    Redirect {
        location: Spanned<String>,
        /// Defaults to 302.
        status: Spanned<u16>,
    },
}

impl ActionKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            ActionKind::Proxy { .. } => "proxy",
            ActionKind::Respond { .. } => "respond",
            ActionKind::Redirect { .. } => "redirect",
        }
    }
}

// ---------------------------------------------------------------- metrics, admin

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub bind: Spanned<SocketAddr>,
    /// Defaults to `/metrics`.
    pub path: Spanned<String>,
    pub span: Span,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admin {
    /// The control socket; `None` = `$XDG_RUNTIME_DIR/blitz-NAME.sock`, or
    /// `/tmp/blitz-NAME.sock` without an absolute `XDG_RUNTIME_DIR` (decided at run time).
    pub socket: Option<Spanned<FilePath>>,
    pub span: Span,
}

// ---------------------------------------------------------------- queries

impl Spec {
    /// Names of every item of `kind`, in spec order.
    pub fn names(&self, kind: ItemKind) -> Vec<&Spanned<String>> {
        match kind {
            ItemKind::Listener => self.listeners.iter().map(|x| &x.name).collect(),
            ItemKind::Upstream => self.upstreams.iter().map(|x| &x.name).collect(),
            ItemKind::Jwt => self.jwts.iter().map(|x| &x.name).collect(),
            ItemKind::RateLimit => self.rate_limits.iter().map(|x| &x.name).collect(),
            ItemKind::Plugin => self.plugins.iter().map(|x| &x.name).collect(),
            ItemKind::Chain => self.chains.iter().map(|x| &x.name).collect(),
            ItemKind::Route => self.routes.iter().map(|x| &x.name).collect(),
        }
    }

    /// Every step as written: those of the chains, then those of the
    /// routes (`use` not expanded).
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.chains
            .iter()
            .flat_map(|c| &c.steps)
            .chain(self.routes.iter().flat_map(|r| &r.steps))
    }

    /// Resolves every [`Ref`] to the index of the first item of its kind
    /// with that name. Returns the references that name no item, in spec
    /// order, so the caller can report them (except those naming an item
    /// in [`Spec::left_out`], already reported).
    pub fn resolve(&mut self) -> Vec<Ref> {
        use std::collections::HashMap;
        let mut tables: HashMap<ItemKind, HashMap<String, usize>> = HashMap::new();
        for kind in [
            ItemKind::Upstream,
            ItemKind::Jwt,
            ItemKind::RateLimit,
            ItemKind::Plugin,
            ItemKind::Chain,
        ] {
            let mut table = HashMap::new();
            for (i, name) in self.names(kind).into_iter().enumerate() {
                table.entry(name.value.clone()).or_insert(i);
            }
            tables.insert(kind, table);
        }
        let mut unknown = Vec::new();
        let mut resolve = |r: &mut Ref| {
            r.index = tables
                .get(&r.kind)
                .and_then(|t| t.get(&r.name.value))
                .copied();
            if r.index.is_none() {
                unknown.push(r.clone());
            }
        };
        for chain in &mut self.chains {
            for step in &mut chain.steps {
                step.kind.refs_mut().into_iter().for_each(&mut resolve);
            }
        }
        for route in &mut self.routes {
            for step in &mut route.steps {
                step.kind.refs_mut().into_iter().for_each(&mut resolve);
            }
            if let ActionKind::Proxy { upstream, .. } = &mut route.action.kind {
                resolve(upstream);
            }
        }
        unknown.retain(|r| {
            !self
                .left_out
                .iter()
                .any(|(k, n)| *k == r.kind && *n == r.name.value)
        });
        unknown.sort_by_key(|r| r.name.span);
        unknown
    }

    /// The steps of `steps` with every `use` replaced by its chain's steps,
    /// recursively, in order. Unresolved or cyclic `use`s are skipped (they
    /// are diagnostics, reported by validation).
    pub fn expand_steps<'a>(&'a self, steps: &'a [Step]) -> Vec<&'a Step> {
        fn walk<'a>(
            spec: &'a Spec,
            steps: &'a [Step],
            stack: &mut Vec<usize>,
            out: &mut Vec<&'a Step>,
        ) {
            for step in steps {
                match &step.kind {
                    StepKind::Use(r) => {
                        if let Some(i) = r.index
                            && !stack.contains(&i)
                            && let Some(chain) = spec.chains.get(i)
                        {
                            stack.push(i);
                            walk(spec, &chain.steps, stack, out);
                            stack.pop();
                        }
                    }
                    _ => out.push(step),
                }
            }
        }
        let mut out = Vec::new();
        walk(self, steps, &mut Vec::new(), &mut out);
        out
    }

    /// The model as JSON without spans and resolved paths: equal for the KDL
    /// and TOML forms of one spec wherever it lies. Used by tests and to
    /// fingerprint a spec (`GATEWAY --version`).
    pub fn canonical_json(&self) -> String {
        fn strip_spans(value: &mut serde_json::Value) {
            match value {
                serde_json::Value::Object(map) => {
                    map.remove("span");
                    // Where the spec file lies is not part of its meaning.
                    map.remove("resolved");
                    // A `Spanned<T>` becomes `{"value": T}`: keep only T.
                    if map.len() == 1
                        && let Some(inner) = map.remove("value")
                    {
                        *value = inner;
                        strip_spans(value);
                        return;
                    }
                    map.values_mut().for_each(strip_spans);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(strip_spans),
                _ => {}
            }
        }
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        strip_spans(&mut value);
        value.to_string()
    }
}

impl StepKind {
    fn refs_mut(&mut self) -> Vec<&mut Ref> {
        match self {
            StepKind::Auth(r) | StepKind::RateLimit(r) | StepKind::Plugin(r) | StepKind::Use(r) => {
                vec![r]
            }
            StepKind::RequireRole(_)
            | StepKind::RequestHeaders(_)
            | StepKind::ResponseHeaders(_) => vec![],
        }
    }
}
