//! B041 (warning): settings written so that the gateway cannot work. A
//! `max-header-bytes` below the smallest HTTP/1.1 request head answers
//! every HTTP/1.1 and HTTP/2 request 431 (a size without a unit is bytes: `16` where `16KiB`
//! was meant). And timeouts and intervals written as zero where zero makes
//! the gateway unable to work. `"0s"` is a valid duration, and zero keeps a
//! meaning where it switches something off (`idle-timeout`: no keep-alive;
//! a pool's `idle-timeout`: no idle connections kept; a jwt's `leeway`). But
//! a zero `header-timeout` lets no request head arrive (every connection is
//! closed unanswered), a zero `body-timeout` cuts any pause in a body, a
//! zero `connect`, `response` or retry `total` fails every proxied request
//! (504), a zero health-check `timeout` fails every check (503), and a zero
//! health-check `interval` checks every server back to back, flooding the
//! upstreams with checks.

use crate::diag::{Code, Diagnostic};
use blitz_ir::{Spanned, Spec};
use std::time::Duration;

/// The smallest HTTP/1.1 request head: `GET / HTTP/1.1`, `Host:a`, the
/// empty line (26 bytes; HTTP/1.1 requires `Host`). An HTTP/2 head is
/// measured as the HTTP/1.1 head it stands for, which writes `Host: a`: 27.
pub const SMALLEST_REQUEST_HEAD: u64 = b"GET / HTTP/1.1\r\nHost:a\r\n\r\n".len() as u64;

/// Reports a head limit no request fits in, and each zero duration of the
/// spec's limits and upstreams that would leave the gateway unable to
/// serve (or flood its upstreams).
pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    let limits = &spec.limits;
    let head = &limits.max_header_bytes;
    if head.value < SMALLEST_REQUEST_HEAD && !head.span.is_empty() {
        diagnostics.push(
            Diagnostic::warning(
                Code::OutOfRange,
                head.span,
                format!("`max-header-bytes` of {} bytes", head.value),
            )
            .label(format!(
                "no HTTP/1.1 request head fits (the smallest is {SMALLEST_REQUEST_HEAD} bytes): every HTTP/1.1 and HTTP/2 request gets 431"
            ))
            .help("a size without a unit is in bytes: write \"16KiB\" for 16 KiB (the default)"),
        );
    }
    let mut zero = |d: &Spanned<Duration>, what: String, effect: &str| {
        if d.value.is_zero() && !d.span.is_empty() {
            diagnostics.push(
                Diagnostic::warning(Code::OutOfRange, d.span, format!("zero {what}"))
                    .label(effect.to_string())
                    .help("give it a positive duration, e.g. \"1s\""),
            );
        }
    };
    zero(
        &limits.header_timeout,
        "`header-timeout`".into(),
        "no request head arrives in zero time: every connection is closed unanswered",
    );
    zero(
        &limits.body_timeout,
        "`body-timeout`".into(),
        "any pause between body bytes cuts the request or response",
    );
    for upstream in &spec.upstreams {
        let name = &upstream.name.value;
        zero(
            &upstream.timeouts.connect,
            format!("connect timeout on upstream `{name}`"),
            "every connection attempt times out: every request gets 504",
        );
        zero(
            &upstream.timeouts.response,
            format!("response timeout on upstream `{name}`"),
            "no response arrives in zero time: every request gets 504",
        );
        if let Some(total) = upstream.retry.as_ref().and_then(|r| r.total.as_ref()) {
            zero(
                total,
                format!("retry `total` deadline on upstream `{name}`"),
                "every request is over its deadline at once: 504",
            );
        }
        if let Some(hc) = &upstream.health_check {
            zero(
                &hc.interval,
                format!("health-check interval on upstream `{name}`"),
                "checks every server back to back, flooding it with checks",
            );
            zero(
                &hc.timeout,
                format!("health-check timeout on upstream `{name}`"),
                "every check fails: every server is marked down (503)",
            );
        }
    }
}
