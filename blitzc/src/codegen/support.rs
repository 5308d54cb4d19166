//! What the runtime serves today, and the cargo features a spec needs.
//!
//! `blitzc build` refuses, with one B100 diagnostic each, every construct
//! the runtime does not serve yet: a gateway silently missing its auth or
//! its TLS would be worse than no gateway. `check` does not run this: a
//! spec can be valid before the runtime catches up with it.

use crate::diag::{Code, Diagnostic};
use blitz_ir::{BalanceAlgorithm, Protocol, RequestKey, Span, Spec, StepKind, Test};

fn refuse(span: Span, what: &str) -> Diagnostic {
    Diagnostic::error(
        Code::Unsupported,
        span,
        format!("{what} is not served by this runtime yet"),
    )
    .label("not supported by `blitzc build` yet")
    .help("`blitzc check` accepts it; remove it to build now, or build with a newer blitzc")
}

/// One diagnostic per construct the runtime cannot serve.
pub fn unsupported(spec: &Spec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if let Some(log) = &spec.gateway.access_log {
        out.push(refuse(log.span, "`access-log`"));
    }
    for listener in &spec.listeners {
        for p in &listener.protocols {
            // h1, h2 (over TLS, by ALPN) and h2c (prior knowledge) are
            // served; h3 (QUIC) is not yet.
            if p.value == Protocol::H3 {
                out.push(refuse(p.span, &format!("protocol `{}`", p.value.keyword())));
            }
        }
    }
    for upstream in &spec.upstreams {
        if let Some(key) = &upstream.balance.key
            && upstream.balance.algorithm.value == BalanceAlgorithm::ConsistentHash
            && matches!(key.value, RequestKey::JwtClaim(_))
        {
            out.push(refuse(key.span, "a `consistent-hash` key `jwt:CLAIM`"));
        }
    }
    for jwt in &spec.jwts {
        out.push(refuse(jwt.name.span, "`jwt`"));
    }
    for limit in &spec.rate_limits {
        out.push(refuse(limit.name.span, "`rate-limit`"));
    }
    for plugin in &spec.plugins {
        out.push(refuse(plugin.name.span, "`plugin`"));
    }
    for step in spec.all_steps() {
        match &step.kind {
            StepKind::Auth(_)
            | StepKind::RequireRole(_)
            | StepKind::RateLimit(_)
            | StepKind::Plugin(_) => {
                out.push(refuse(
                    step.span,
                    &format!("the step `{}`", step.kind.keyword()),
                ));
            }
            StepKind::RequestHeaders(_) | StepKind::ResponseHeaders(_) | StepKind::Use(_) => {}
        }
    }
    if let Some(metrics) = &spec.metrics {
        out.push(refuse(metrics.span, "`metrics`"));
    }
    out
}

/// The runtime's cargo features this spec uses.
pub fn features(spec: &Spec) -> Vec<&'static str> {
    let uses_regex = spec
        .routes
        .iter()
        .flat_map(|r| r.matcher.iter().flat_map(|m| &m.conditions))
        .any(|c| matches!(c.test, Test::PathRegex(_)));
    let speaks_h2 = spec.listeners.iter().any(|l| {
        l.protocols
            .iter()
            .any(|p| matches!(p.value, Protocol::H2 | Protocol::H2c))
    });
    // mimalloc: the runtime's allocator (why: docs/architecture.md).
    let mut features = vec!["mimalloc"];
    if speaks_h2 {
        features.push("h2");
    }
    if uses_regex {
        features.push("regex");
    }
    let upstream_tls = spec
        .upstreams
        .iter()
        .flat_map(|u| &u.servers)
        .any(|s| s.tls.is_some());
    if upstream_tls || spec.listeners.iter().any(|l| l.tls.is_some()) {
        features.push("tls");
    }
    features
}
