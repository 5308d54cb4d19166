//! What the runtime serves today, and the cargo features a spec needs.
//!
//! `blitzc build` refuses, with one B100 diagnostic each, every construct
//! the runtime does not serve yet: a gateway silently missing its auth or
//! its TLS would be worse than no gateway. `check` does not run this: a
//! spec can be valid before the runtime catches up with it.

use crate::diag::{Code, Diagnostic};
use blitz_ir::{BalanceAlgorithm, Protocol, ServerAddress, Span, Spec, StepKind, Test};

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
            if p.value != Protocol::H1 {
                out.push(refuse(p.span, &format!("protocol `{}`", p.value.keyword())));
            }
        }
    }
    for upstream in &spec.upstreams {
        if upstream.balance.algorithm.value != BalanceAlgorithm::RoundRobin {
            let alg = upstream.balance.algorithm.value.keyword();
            out.push(refuse(
                upstream.balance.algorithm.span,
                &format!("balance `{alg}`"),
            ));
        }
        if let Some(hc) = &upstream.health_check {
            out.push(refuse(hc.span, "`health-check`"));
        }
        if let Some(retry) = &upstream.retry {
            out.push(refuse(retry.span, "`retry`"));
        }
        for server in &upstream.servers {
            if matches!(server.address.value, ServerAddress::Dns { .. }) {
                out.push(refuse(server.address.span, "a server named by DNS"));
            }
        }
    }
    if let Some(first) = spec.upstreams.first() {
        for upstream in &spec.upstreams[1..] {
            if upstream.timeouts.connect.value != first.timeouts.connect.value
                || upstream.timeouts.response.value != first.timeouts.response.value
            {
                out.push(refuse(
                    upstream.name.span,
                    "`timeouts` that differ between upstreams",
                ));
            }
            if upstream.pool.max_idle.value != first.pool.max_idle.value
                || upstream.pool.idle_timeout.value != first.pool.idle_timeout.value
            {
                out.push(refuse(
                    upstream.name.span,
                    "a `pool` that differs between upstreams",
                ));
            }
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
    if let Some(socket) = &spec.admin.socket {
        out.push(refuse(socket.span, "`admin socket` (upgrades)"));
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
    let mut features = Vec::new();
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
