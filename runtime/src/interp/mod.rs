//! The reference interpreter: a [`Gateway`] that runs a spec straight from
//! its IR, with the semantics of the compiled gateway.
//!
//! It exists for three reasons (DESIGN.md): differential testing (for any
//! request, the compiled gateway and the interpreter decide the same), a dev
//! loop without cargo (`blitzc dev`), and the honest measurement of what
//! compilation buys (same runtime, same run, only the gateway differs).
//!
//! Routing goes through `blitz_ir::matcher::Router`, the reference matcher;
//! steps and actions are read from the model on every request. It is meant
//! to be obviously right, not fast: it allocates a small header list per
//! request and walks the route list in order.

#![forbid(unsafe_code)]

use crate::app::GatewayConfig;
use crate::http::{RequestHead, ResponseHead};
use crate::lb::{
    Balance, HashKey, HealthCheck, PoolConfig, RetryPolicy, Server, ServerTls, Upstream,
};
use crate::rt::{CertConfig, ListenerConfig, Protocols, TlsConfig};
use crate::{Action, Gateway, Limits};
use blitz_ir::matcher::{RequestHead as MatchHead, Router};
use blitz_ir::{ActionKind, HeaderRewrite, ServerAddress, Spec, StepKind, Workers};
use std::borrow::Cow;

/// A spec being interpreted. Leaked once per process: the interpreter
/// serves one spec for the life of the process, on every worker.
#[derive(Debug)]
pub struct Interpreter {
    spec: &'static Spec,
    router: Router<'static>,
}

impl Interpreter {
    /// Prepares a spec for interpretation (compiles its regexes).
    pub fn new(spec: &'static Spec) -> Result<Self, String> {
        let router = Router::new(spec).map_err(|e| format!("invalid path-regex: {e}"))?;
        Ok(Interpreter { spec, router })
    }

    /// Parses a spec serialized as JSON (the IR's serde form) and leaks it.
    pub fn leak_from_json(json: &str) -> Result<&'static Spec, String> {
        let spec: Spec = serde_json::from_str(json).map_err(|e| format!("invalid IR: {e}"))?;
        Ok(Box::leak(Box::new(spec)))
    }

    /// The spec being interpreted.
    pub fn spec(&self) -> &'static Spec {
        self.spec
    }

    /// The index of the route that serves `req`, or `None` (a 404).
    pub fn route_index(&self, req: &RequestHead) -> Option<usize> {
        // Values as bytes: a value with obs-text (RFC 9110 §5.5) is still a
        // field line that `header NAME` finds, and equals no spec value, as
        // in generated code. Names are tokens (the parser refused others).
        let owned: Vec<(Cow<'_, str>, &[u8])> = req
            .headers()
            .iter()
            .map(|(n, v)| (String::from_utf8_lossy(n), v))
            .collect();
        let headers: Vec<(&str, &[u8])> = owned.iter().map(|(n, v)| (&**n, *v)).collect();
        let host = String::from_utf8_lossy(req.host());
        // Origin-form path and query, also for an absolute-form target.
        let target = String::from_utf8_lossy(req.path());
        let head = MatchHead {
            method: req.method(),
            host: &host,
            target: &target,
            headers: &headers,
        };
        self.router.route(&head).ok().flatten()
    }

    fn rewrite(&self, rewrite: &'static HeaderRewrite, headers: &mut crate::http::HeaderBlock) {
        for name in &rewrite.remove {
            headers.remove(&name.value);
        }
        for (name, value) in &rewrite.set {
            headers.set(&name.value, value.value.as_bytes());
        }
        for (name, value) in &rewrite.add {
            headers.append(&name.value, value.value.as_bytes());
        }
    }
}

impl Gateway for Interpreter {
    type Route = Option<usize>;
    type Ctx = ();

    fn upstreams(&self) -> Vec<Upstream> {
        self.spec.upstreams.iter().map(upstream_from_ir).collect()
    }

    fn route(&self, req: &RequestHead) -> Option<usize> {
        self.route_index(req)
    }

    fn request(&self, route: Option<usize>, req: &mut RequestHead, _ctx: &mut ()) -> Action {
        let Some(route) = route.and_then(|i| self.spec.routes.get(i)) else {
            return Action::Respond {
                status: 404,
                body: Cow::Borrowed(b"404 Not Found\n"),
                content_type: "text/plain; charset=utf-8",
            };
        };
        for step in self.spec.expand_steps(&route.steps) {
            if let StepKind::RequestHeaders(rewrite) = &step.kind {
                self.rewrite(rewrite, req.headers_mut());
            }
        }
        match &route.action.kind {
            ActionKind::Proxy {
                upstream,
                strip_prefix,
            } => Action::Proxy {
                upstream: upstream.index.unwrap_or(usize::MAX),
                strip_prefix: strip_prefix.as_ref().map(|p| p.value.as_str()),
            },
            ActionKind::Respond {
                status,
                body,
                content_type,
            } => Action::Respond {
                status: status.value,
                body: Cow::Borrowed(body.value.as_bytes()),
                content_type: content_type
                    .as_ref()
                    .map_or("text/plain; charset=utf-8", |c| c.value.as_str()),
            },
            ActionKind::Redirect { location, status } => Action::Redirect {
                location: Cow::Borrowed(location.value.as_str()),
                status: status.value,
            },
        }
    }

    fn response(&self, route: Option<usize>, resp: &mut ResponseHead, _ctx: &mut ()) {
        let Some(route) = route.and_then(|i| self.spec.routes.get(i)) else {
            return;
        };
        for step in self.spec.expand_steps(&route.steps) {
            if let StepKind::ResponseHeaders(rewrite) = &step.kind {
                self.rewrite(rewrite, resp.headers_mut());
            }
        }
    }
}

/// A spec listener as the runtime sees it.
pub fn listener_config(l: &blitz_ir::Listener) -> ListenerConfig {
    let mut protocols = Protocols {
        h1: false,
        h2: false,
        h2c: false,
        h3: false,
    };
    for p in &l.protocols {
        match p.value {
            blitz_ir::Protocol::H1 => protocols.h1 = true,
            blitz_ir::Protocol::H2 => protocols.h2 = true,
            blitz_ir::Protocol::H2c => protocols.h2c = true,
            blitz_ir::Protocol::H3 => protocols.h3 = true,
        }
    }
    if l.protocols.is_empty() {
        protocols = Protocols::H1;
    }
    ListenerConfig {
        name: l.name.value.clone(),
        addr: l.bind.value,
        protocols,
        tls: l.tls.as_ref().map(|tls| TlsConfig {
            certs: tls
                .certs
                .iter()
                .map(|c| CertConfig {
                    cert: c.cert.value.resolved.clone(),
                    key: c.key.value.resolved.clone(),
                    sni: c.sni.as_ref().map(|s| s.value.clone()),
                })
                .collect(),
        }),
    }
}

/// The runtime's upstream for a spec's, as generated code builds it.
pub fn upstream_from_ir(u: &blitz_ir::Upstream) -> Upstream {
    use blitz_ir::{BalanceAlgorithm, RequestKey, RetryOn};
    let servers = u
        .servers
        .iter()
        .map(|s| {
            let server = match &s.address.value {
                ServerAddress::Ip(addr) => Server::ip(*addr, s.weight.value),
                ServerAddress::Dns { host, port } => {
                    Server::dns(host.clone(), *port, s.weight.value)
                }
            };
            match (&s.tls, s.tls_name()) {
                (Some(tls), Some(sni)) => server.with_tls(ServerTls {
                    sni,
                    ca: tls.ca.as_ref().map(|ca| ca.value.resolved.clone()),
                }),
                _ => server,
            }
        })
        .collect();
    let balance = match u.balance.algorithm.value {
        BalanceAlgorithm::RoundRobin => Balance::RoundRobin,
        BalanceAlgorithm::WeightedRoundRobin => Balance::WeightedRoundRobin,
        BalanceAlgorithm::LeastConn => Balance::LeastConn,
        BalanceAlgorithm::P2c => Balance::P2c,
        BalanceAlgorithm::ConsistentHash => {
            Balance::ConsistentHash(match u.balance.key.as_ref().map(|k| &k.value) {
                Some(RequestKey::Header(name)) => HashKey::Header(name.clone()),
                Some(RequestKey::Path) => HashKey::Path,
                // `jwt:` keys are refused by `blitzc build`/`dev` until JWT lands.
                Some(RequestKey::ClientIp | RequestKey::JwtClaim(_)) | None => HashKey::ClientIp,
            })
        }
    };
    let mut up = Upstream::new(u.name.value.clone(), servers)
        .with_balance(balance)
        .with_timeouts(u.timeouts.connect.value, u.timeouts.response.value)
        .with_pool(u.pool.max_idle.value as usize, u.pool.idle_timeout.value);
    if let Some(hc) = &u.health_check {
        up = up.with_health_check(HealthCheck {
            path: hc.path.value.clone(),
            interval: hc.interval.value,
            timeout: hc.timeout.value,
            healthy: hc.healthy.value,
            unhealthy: hc.unhealthy.value,
            expect: hc.expect.value.first..=hc.expect.value.last,
        });
    }
    if let Some(r) = &u.retry {
        let on = |c: RetryOn| r.on.iter().any(|o| o.value == c);
        let statuses: Vec<u16> =
            r.on.iter()
                .filter_map(|o| match o.value {
                    RetryOn::Status(s) => Some(s),
                    _ => None,
                })
                .collect();
        let mut policy = RetryPolicy::new(
            r.attempts.value,
            on(RetryOn::ConnectError),
            on(RetryOn::Timeout),
            &statuses,
        );
        if let Some(total) = &r.total {
            policy = policy.with_total(total.value);
        }
        if on(RetryOn::Reset) {
            policy = policy.on_reset();
        }
        up = up.with_retry(policy);
    }
    up
}

/// The server settings of a spec, as the compiled gateway's `config()`
/// would give them.
pub fn config(spec: &'static Spec, spec_hash: &'static str) -> GatewayConfig {
    let first = spec.upstreams.first();
    let timeouts = first.map(|u| u.timeouts.clone()).unwrap_or_default();
    let pool = first.map(|u| u.pool.clone()).unwrap_or_default();
    let l = &spec.limits;
    GatewayConfig {
        name: spec.gateway.name.value.as_str(),
        blitzc_version: env!("CARGO_PKG_VERSION"),
        spec_hash,
        listeners: spec.listeners.iter().map(listener_config).collect(),
        workers: match spec.gateway.workers.value {
            Workers::Auto => 0,
            Workers::Count(n) => n as usize,
        },
        limits: Limits {
            header_timeout: l.header_timeout.value,
            idle_timeout: l.idle_timeout.value,
            body_timeout: l.body_timeout.value,
            max_header_bytes: usize::try_from(l.max_header_bytes.value).unwrap_or(usize::MAX),
            max_headers: usize::try_from(l.max_headers.value).unwrap_or(usize::MAX),
            max_body_bytes: l.max_body_bytes.value,
            connect_timeout: timeouts.connect.value,
            response_timeout: timeouts.response.value,
        },
        pool: PoolConfig {
            max_idle: pool.max_idle.value as usize,
            idle_timeout: pool.idle_timeout.value,
        },
        admin_socket: spec.admin.socket.as_ref().map(|p| {
            &*Box::leak(
                p.value
                    .resolved
                    .to_string_lossy()
                    .into_owned()
                    .into_boxed_str(),
            )
        }),
    }
}
