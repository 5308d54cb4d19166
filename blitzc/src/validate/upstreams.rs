//! Upstream rules: the balance and its key (B080, B084), server weights
//! (B081, B082), repeated servers (B083), the health-check path (B038) and
//! retry counts (B041).

use crate::diag::{Code, Diagnostic};
use blitz_ir::{BalanceAlgorithm, ServerAddress, Spec, Upstream};

/// More retries than this multiply the load on a failing upstream.
const MAX_SENSIBLE_RETRIES: u32 = 10;

pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    for upstream in &spec.upstreams {
        balance(upstream, diagnostics);
        weights(upstream, diagnostics);
        duplicate_servers(upstream, diagnostics);
        health_check(upstream, diagnostics);
        retry(upstream, diagnostics);
    }
}

/// B080: `consistent-hash` needs a key; B084 (warning): other balances
/// ignore one.
fn balance(upstream: &Upstream, diagnostics: &mut Vec<Diagnostic>) {
    let algorithm = &upstream.balance.algorithm;
    match (&upstream.balance.key, algorithm.value) {
        // A key written but malformed is reported already.
        (None, BalanceAlgorithm::ConsistentHash)
            if super::error_within(diagnostics, upstream.balance.span) => {}
        (None, BalanceAlgorithm::ConsistentHash) => diagnostics.push(
            Diagnostic::error(
                Code::HashWithoutKey,
                algorithm.span,
                format!("upstream `{}` uses consistent-hash without a key", upstream.name.value),
            )
            .label("hash of what?")
            .help_in(
                "add the request key to hash, e.g. `balance \"consistent-hash\" key=\"header:x-user-id\"` (client-ip, header:NAME, jwt:CLAIM or path)",
                "add the request key to hash, e.g. `balance = { algorithm = \"consistent-hash\", key = \"header:x-user-id\" }` (client-ip, header:NAME, jwt:CLAIM or path)",
            ),
        ),
        (Some(key), other) if other != BalanceAlgorithm::ConsistentHash => diagnostics.push(
            Diagnostic::warning(
                Code::KeyIgnored,
                key.span,
                format!("`{}` ignores the key `{}`", other.keyword(), key.value),
            )
            .label("only consistent-hash uses a key")
            .help_in(
                "remove the key, or use `balance \"consistent-hash\"` to pin requests with one key to one server",
                "remove the key, or use `algorithm = \"consistent-hash\"` to pin requests with one key to one server",
            )
            .related(algorithm.span, "the balance"),
        ),
        _ => {}
    }
}

/// B081: weights all 0 leave no server to choose; B082 (warning): a weight
/// written for a balance that does not look at weights.
fn weights(upstream: &Upstream, diagnostics: &mut Vec<Diagnostic>) {
    let algorithm = &upstream.balance.algorithm;
    if !algorithm.value.uses_weights() {
        for server in upstream
            .servers
            .iter()
            .filter(|s| !s.weight.span.is_empty())
        {
            diagnostics.push(
                Diagnostic::warning(
                    Code::WeightIgnored,
                    server.weight.span,
                    format!("`{}` ignores server weights", algorithm.value.keyword()),
                )
                .label("has no effect")
                .help_in(
                    "use `balance \"weighted-round-robin\"` to share load by weight, or remove the weight",
                    "use `balance = \"weighted-round-robin\"` to share load by weight, or remove the weight",
                )
                .related(
                    if algorithm.span.is_empty() { upstream.name.span } else { algorithm.span },
                    if algorithm.span.is_empty() { "round-robin by default" } else { "the balance" },
                ),
            );
        }
        return;
    }
    let Some(first) = upstream.servers.first() else {
        return;
    };
    if upstream.servers.iter().all(|s| s.weight.value == 0) {
        let span = if first.weight.span.is_empty() {
            first.address.span
        } else {
            first.weight.span
        };
        let mut diagnostic = Diagnostic::error(
            Code::AllWeightsZero,
            span,
            format!(
                "every server of upstream `{}` has weight 0",
                upstream.name.value
            ),
        )
        .label("weight 0")
        .help(
            "weight 0 takes a server out of rotation: give at least one server a positive weight",
        );
        for other in &upstream.servers[1..] {
            diagnostic = diagnostic.related(other.weight.span, "weight 0");
        }
        diagnostics.push(diagnostic);
    }
}

/// B083: one address listed twice (to give it more load, use a weight).
fn duplicate_servers(upstream: &Upstream, diagnostics: &mut Vec<Diagnostic>) {
    for (j, server) in upstream.servers.iter().enumerate() {
        if let Some(first) = upstream.servers[..j]
            .iter()
            .find(|s| same_server(&s.address.value, &server.address.value))
        {
            diagnostics.push(
                Diagnostic::error(
                    Code::DuplicateServer,
                    server.address.span,
                    format!("server `{}` is listed twice in upstream `{}`", server.address.value, upstream.name.value),
                )
                .label("listed again")
                .help("list each server once; to send it more requests, give it a higher `weight` with weighted-round-robin")
                .related(first.address.span, "first listed here"),
            );
        }
    }
}

/// Whether two addresses name one server: an IPv4 address and its
/// IPv4-mapped IPv6 form are one address (as B022 holds for binds), and a
/// DNS name with its trailing dot is the same name (names are lower-case
/// already).
fn same_server(a: &ServerAddress, b: &ServerAddress) -> bool {
    match (a, b) {
        (ServerAddress::Ip(a), ServerAddress::Ip(b)) => {
            a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
        }
        (ServerAddress::Dns { host: ha, port: pa }, ServerAddress::Dns { host: hb, port: pb }) => {
            pa == pb && ha.trim_end_matches('.') == hb.trim_end_matches('.')
        }
        _ => false,
    }
}

/// B038: the health-check request path is absolute, and fits in a request
/// line (no spaces or control characters).
fn health_check(upstream: &Upstream, diagnostics: &mut Vec<Diagnostic>) {
    let Some(check) = &upstream.health_check else {
        return;
    };
    let path = &check.path.value;
    let problem = if !path.starts_with('/') {
        Some(("the path must start with `/`", format!("write `/{path}`")))
    } else if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        Some((
            "contains a space or control character",
            "percent-encode it, e.g. a space as `%20`".to_string(),
        ))
    } else {
        None
    };
    if let Some((label, help)) = problem {
        diagnostics.push(
            Diagnostic::error(
                Code::InvalidPath,
                check.path.span,
                format!("invalid health-check path `{}`", path.escape_debug()),
            )
            .label(label)
            .help(help),
        );
    }
}

/// B041 (warning): many retries turn one failing request into a burst.
fn retry(upstream: &Upstream, diagnostics: &mut Vec<Diagnostic>) {
    let Some(retry) = &upstream.retry else { return };
    if retry.attempts.value > MAX_SENSIBLE_RETRIES {
        diagnostics.push(
            Diagnostic::warning(
                Code::OutOfRange,
                retry.attempts.span,
                format!("{} retry attempts on upstream `{}`", retry.attempts.value, upstream.name.value),
            )
            .label(format!("more than {MAX_SENSIBLE_RETRIES}"))
            .help("each retry is another request to a struggling upstream: retries multiply load during an outage; 1 to 3 is usual"),
        );
    }
}
