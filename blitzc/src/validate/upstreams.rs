//! Upstream rules: the balance and its key (B080, B084), server weights
//! (B081, B082), repeated servers (B083), servers that are the gateway's
//! own listeners (B085), the health-check path (B038) and retry counts
//! (B041).

use crate::diag::{Code, Diagnostic};
use crate::ir::values::{encoded_if_raw, mend_escapes};
use blitz_ir::{BalanceAlgorithm, Listener, ServerAddress, Spec, Upstream};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// More retries than this multiply the load on a failing upstream.
const MAX_SENSIBLE_RETRIES: u32 = 10;

pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    for upstream in &spec.upstreams {
        balance(upstream, diagnostics);
        weights(upstream, diagnostics);
        duplicate_servers(upstream, diagnostics);
        own_listeners(upstream, &spec.listeners, diagnostics);
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

/// B085 (warning): a server that is one of the gateway's own listeners.
/// A request proxied there comes back to the gateway, matches the same
/// route and goes round again, each turn holding a connection, until the
/// gateway runs out of them. (Routing a second pass on purpose, by a header
/// the first pass adds, is possible, hence a warning.)
fn own_listeners(upstream: &Upstream, listeners: &[Listener], diagnostics: &mut Vec<Diagnostic>) {
    for server in &upstream.servers {
        let Some(listener) = listeners
            .iter()
            .find(|l| reaches(&server.address.value, l.bind.value))
        else {
            continue;
        };
        diagnostics.push(
            Diagnostic::warning(
                Code::ServerIsListener,
                server.address.span,
                format!(
                    "server `{}` of upstream `{}` is this gateway's listener `{}`",
                    server.address.value, upstream.name.value, listener.name.value
                ),
            )
            .label("requests proxied here come back to the gateway")
            .help("point the server at the origin's address; a request sent to the gateway itself loops until connections run out")
            .related(listener.bind.span, "the gateway listens here"),
        );
    }
}

/// Whether connecting to `server` reaches a socket bound to `bind` on
/// this machine, as far as the spec tells: the same address and port (an
/// IPv4-mapped IPv6 address is the IPv4 one), or a loopback address when
/// `bind` is a wildcard (`0.0.0.0` takes IPv4, `[::]` both families).
/// Connecting to the unspecified address lands on loopback; `localhost` is
/// 127.0.0.1 and ::1. Port 0 binds a port chosen at start: unknown.
fn reaches(server: &ServerAddress, bind: SocketAddr) -> bool {
    let (targets, port): (Vec<IpAddr>, u16) = match server {
        ServerAddress::Ip(addr) => {
            let ip = addr.ip().to_canonical();
            let ip = match ip {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            (vec![ip], addr.port())
        }
        ServerAddress::Dns { host, port } if host.trim_end_matches('.') == "localhost" => (
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            *port,
        ),
        ServerAddress::Dns { .. } => return false,
    };
    if port != bind.port() || port == 0 {
        return false;
    }
    let bind_ip = bind.ip().to_canonical();
    targets.into_iter().any(|ip| {
        ip == bind_ip
            || (bind_ip.is_unspecified() && ip.is_loopback() && (bind_ip.is_ipv6() || ip.is_ipv4()))
    })
}

/// B038: the health-check request path is an origin-form target (RFC 9112
/// §3.2.1): absolute, with a query if any but no fragment, and only
/// visible ASCII (the checker sends it as written; the gateway itself
/// answers 400 to a target holding anything else).
fn health_check(upstream: &Upstream, diagnostics: &mut Vec<Diagnostic>) {
    let Some(check) = &upstream.health_check else {
        return;
    };
    let path = &check.path.value;
    let path_part = path.split(['?', '#']).next().unwrap_or_default();
    let label = if !path.starts_with('/') {
        "the path must start with `/`"
    } else if encoded_if_raw(path).is_some() {
        "holds a character a request target cannot carry unencoded"
    } else if path.contains('#') {
        "has a fragment, which is never sent in a request"
    } else if mend_escapes(path_part) != path_part {
        "has a `%` that starts no escape (a target the gateway itself answers 400)"
    } else {
        return;
    };
    // Every problem mended at once, so that the spelling suggested passes.
    let encoded = encoded_if_raw(path).unwrap_or_else(|| path.clone());
    let fixed = mend_escapes(encoded.split('#').next().unwrap_or_default());
    let fixed = if fixed.starts_with('/') {
        fixed
    } else {
        format!("/{fixed}")
    };
    let help = if path.contains('#') {
        format!("write `{fixed}` (a fragment stays with the client; `%23` is a literal `#`)")
    } else {
        format!("write `{fixed}`")
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ServerAddress {
        ServerAddress::Ip(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    fn bind(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_server_reaches_a_listener_it_would_connect_to() {
        let localhost = ServerAddress::Dns {
            host: "localhost".into(),
            port: 8080,
        };
        for (server, listener) in [
            (ip("127.0.0.1:8080"), "127.0.0.1:8080"),
            (ip("[::ffff:127.0.0.1]:8080"), "127.0.0.1:8080"),
            (ip("127.0.0.1:8080"), "0.0.0.0:8080"),
            (ip("127.0.0.1:8080"), "[::]:8080"),
            (ip("[::1]:8080"), "[::]:8080"),
            (ip("0.0.0.0:8080"), "127.0.0.1:8080"),
            (ip("10.1.2.3:8080"), "10.1.2.3:8080"),
            (localhost.clone(), "[::1]:8080"),
            (localhost.clone(), "0.0.0.0:8080"),
        ] {
            assert!(reaches(&server, bind(listener)), "{server} -> {listener}");
        }
        for (server, listener) in [
            (ip("127.0.0.1:8081"), "127.0.0.1:8080"),
            (ip("127.0.0.2:8080"), "127.0.0.1:8080"),
            (ip("[::1]:8080"), "0.0.0.0:8080"),
            (ip("10.1.2.3:8080"), "0.0.0.0:8080"),
            (ip("127.0.0.1:0"), "127.0.0.1:0"),
            (localhost.clone(), "10.1.2.3:8080"),
            (
                ServerAddress::Dns {
                    host: "origin.internal".into(),
                    port: 8080,
                },
                "0.0.0.0:8080",
            ),
        ] {
            assert!(!reaches(&server, bind(listener)), "{server} -> {listener}");
        }
    }
}
