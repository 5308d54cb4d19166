//! Auth and rate-limit rules: steps that need a verified token before them
//! (B070, B071), `jwt` definitions (B072, B073) and `rate-limit` definitions
//! (B074, B041).

use super::{expand_route, via_label};
use crate::diag::{Code, Diagnostic};
use blitz_ir::{
    ActionKind, BalanceAlgorithm, JwksSource, Jwt, JwtAlgorithm, RateLimit, RequestKey, Route,
    Spanned, Spec, StepKind,
};
use serde_json::Value;
use std::path::Path;

pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    for route in &spec.routes {
        steps_need_auth(spec, route, diagnostics);
    }
    for jwt in &spec.jwts {
        algorithm_mix(jwt, diagnostics);
        jwks_file(jwt, diagnostics);
    }
    for limit in &spec.rate_limits {
        rate_limit(limit, diagnostics);
    }
}

/// Adds the help line asking for an `auth` step before `what`, naming the
/// `jwt` to use when the spec has exactly one (in KDL and in TOML).
fn add_auth_help(diagnostic: Diagnostic, spec: &Spec, what: &str) -> Diagnostic {
    let help = |step: &dyn Fn(&str) -> String| match spec.jwts.as_slice() {
        [only] => format!("add `{}` before {what}", step(&only.name.value)),
        _ => format!(
            "add `{}` before {what}, naming one of the spec's `jwt` blocks",
            step("JWT")
        ),
    };
    diagnostic.help_in(
        help(&|jwt| format!("auth \"{jwt}\"")),
        help(&|jwt| format!("{{ auth = \"{jwt}\" }}")),
    )
}

/// B070: `require-role` with no `auth` before it; B071: a rate limit keyed
/// by a JWT claim with no `auth` before it, or a proxy to an upstream
/// hashing on a JWT claim in a route without `auth`. Without a verified
/// token there are no roles or claims to read.
fn steps_need_auth(spec: &Spec, route: &Route, diagnostics: &mut Vec<Diagnostic>) {
    let steps = expand_route(spec, route);
    let mut authenticated = false;
    for expanded in &steps {
        let step = expanded.step;
        let diagnostic = match &step.kind {
            StepKind::Auth(_) => {
                authenticated = true;
                continue;
            }
            StepKind::RequireRole(_) if !authenticated => add_auth_help(
                Diagnostic::error(
                    Code::RoleWithoutAuth,
                    step.span,
                    format!(
                        "`require-role` has no `auth` before it in route `{}`",
                        route.name.value
                    ),
                )
                .label("no verified token to take roles from"),
                spec,
                "`require-role`",
            ),
            StepKind::RateLimit(r) if !authenticated => {
                let Some(limit) = r.index.and_then(|i| spec.rate_limits.get(i)) else {
                    continue;
                };
                let RequestKey::JwtClaim(claim) = &limit.key.value else {
                    continue;
                };
                let diagnostic = Diagnostic::error(
                    Code::ClaimWithoutAuth,
                    step.span,
                    format!(
                        "rate limit `{}` is keyed by JWT claim `{claim}`, but route `{}` has no `auth` before it",
                        limit.name.value, route.name.value
                    ),
                )
                .label("no verified token to take the claim from")
                .related(limit.key.span, "keyed by a JWT claim here");
                add_auth_help(diagnostic, spec, "this `rate-limit`")
            }
            _ => continue,
        };
        let diagnostic = match expanded.via {
            Some(via) => diagnostic.related(via.span, via_label(route)),
            None => diagnostic,
        };
        diagnostics.push(diagnostic);
    }

    // The hash key is read when the request is proxied, after every step.
    let ActionKind::Proxy { upstream, .. } = &route.action.kind else {
        return;
    };
    let Some(target) = upstream.index.and_then(|i| spec.upstreams.get(i)) else {
        return;
    };
    if target.balance.algorithm.value != BalanceAlgorithm::ConsistentHash {
        return;
    }
    if let Some(key) = &target.balance.key
        && let RequestKey::JwtClaim(claim) = &key.value
        && !authenticated
    {
        let diagnostic = Diagnostic::error(
            Code::ClaimWithoutAuth,
            upstream.name.span,
            format!(
                "upstream `{}` hashes on JWT claim `{claim}`, but route `{}` has no `auth`",
                target.name.value, route.name.value
            ),
        )
        .label("no verified token to take the hash key from")
        .related(key.span, "keyed by a JWT claim here");
        diagnostics.push(add_auth_help(diagnostic, spec, "the `proxy`"));
    }
}

/// B072: HMAC and public-key algorithms in one `jwt`. A verifier that takes
/// both can be tricked into using a public key as an HMAC secret.
fn algorithm_mix(jwt: &Jwt, diagnostics: &mut Vec<Diagnostic>) {
    let Some(first) = jwt.algorithms.first() else {
        return;
    };
    let Some(other) = jwt
        .algorithms
        .iter()
        .find(|a| a.value.is_hmac() != first.value.is_hmac())
    else {
        return;
    };
    let (hmac, public) = if first.value.is_hmac() {
        (first, other)
    } else {
        (other, first)
    };
    diagnostics.push(
        Diagnostic::error(
            Code::JwtAlgorithmMix,
            other.span,
            format!(
                "jwt `{}` mixes HMAC ({}) with public-key algorithms ({})",
                jwt.name.value,
                hmac.value.keyword(),
                public.value.keyword()
            ),
        )
        .label(if other.value.is_hmac() {
            "an HMAC algorithm among public-key ones"
        } else {
            "a public-key algorithm among HMAC ones"
        })
        .help(
            "accepting both lets a token signed with the public key as an HMAC secret pass \
             (algorithm confusion): list only HMAC or only public-key algorithms, and use a \
             second `jwt` for the other kind",
        )
        .related(first.span, "first algorithm"),
    );
}

/// B073: a `jwks-file` that is missing, does not parse as a JWK Set, or has
/// no usable key for one of the `algorithms`.
fn jwks_file(jwt: &Jwt, diagnostics: &mut Vec<Diagnostic>) {
    let JwksSource::File(path) = &jwt.keys.value else {
        return;
    };
    let span = jwt.keys.span;
    let written = &path.written;
    let error = |message: String, label: &str, help: &str| {
        Diagnostic::error(Code::JwksFile, span, message)
            .label(label)
            .help(help)
    };
    let keys = match load_jwks(&path.resolved) {
        Ok(keys) => keys,
        Err(problem) => {
            let d = match problem {
                JwksProblem::Missing => error(
                    format!("JWKS file `{written}` not found"),
                    "no such file",
                    "paths are relative to the spec file's folder",
                ),
                JwksProblem::Unreadable(e) => error(
                    format!("cannot read JWKS file `{written}`"),
                    &e,
                    "check the path and the file's permissions",
                ),
                JwksProblem::NotJson(e) => error(
                    format!("JWKS file `{written}` is not JSON"),
                    &e,
                    "the file must hold a JWK Set: {\"keys\": [ ... ]} (RFC 7517)",
                ),
                JwksProblem::NotKeySet(what) => error(
                    format!("JWKS file `{written}` is not a JWK Set"),
                    &what,
                    "the file must hold a JWK Set: {\"keys\": [ ... ]} (RFC 7517)",
                ),
            };
            diagnostics.push(d);
            return;
        }
    };
    let lacking: Vec<&Spanned<JwtAlgorithm>> = jwt
        .algorithms
        .iter()
        .filter(|a| !keys.iter().any(|k| key_fits(k, a.value)))
        .collect();
    let Some(first) = lacking.first() else { return };
    let names: Vec<&str> = lacking.iter().map(|a| a.value.keyword()).collect();
    let message = if keys.is_empty() {
        format!("JWKS file `{written}` holds no keys")
    } else {
        format!("JWKS file `{written}` has no key for {}", names.join(", "))
    };
    let wanted: Vec<String> = lacking.iter().map(|a| key_description(a.value)).collect();
    let mut d = error(
        message,
        &format!("no usable key for {}", names.join(", ")),
        &format!(
            "add {} to the key set, or remove the algorithm from `algorithms`",
            wanted.join("; ")
        ),
    );
    d = d.related(first.span, "algorithm without a key");
    for other in &lacking[1..] {
        d = d.related(other.span, "algorithm without a key");
    }
    diagnostics.push(d);
}

/// Why a JWKS file could not be read as a key set.
enum JwksProblem {
    Missing,
    Unreadable(String),
    NotJson(String),
    NotKeySet(String),
}

/// The keys of the JWK Set at `path`, as JSON objects.
fn load_jwks(path: &Path) -> Result<Vec<serde_json::Map<String, Value>>, JwksProblem> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => JwksProblem::Missing,
        _ => JwksProblem::Unreadable(e.to_string()),
    })?;
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|e| JwksProblem::NotJson(e.to_string()))?;
    let Some(keys) = json.get("keys") else {
        return Err(JwksProblem::NotKeySet("no `keys` member".into()));
    };
    let Some(keys) = keys.as_array() else {
        return Err(JwksProblem::NotKeySet("`keys` is not an array".into()));
    };
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            key.as_object()
                .cloned()
                .ok_or_else(|| JwksProblem::NotKeySet(format!("key {i} is not an object")))
        })
        .collect()
}

/// What a key for `alg` looks like, for help lines.
fn key_description(alg: JwtAlgorithm) -> String {
    match alg {
        JwtAlgorithm::ES256 => "an EC key on P-256 for ES256".into(),
        JwtAlgorithm::ES384 => "an EC key on P-384 for ES384".into(),
        JwtAlgorithm::EdDSA => "an OKP key on Ed25519 for EdDSA".into(),
        _ if alg.is_hmac() => format!("a shared-secret (`oct`) key for {}", alg.keyword()),
        _ => format!("an RSA key for {}", alg.keyword()),
    }
}

/// Whether a JWK can verify tokens signed with `alg` (RFC 7517/7518/8037):
/// the right `kty`, `alg` equal when given, `use` "sig" when given, the
/// right curve, and the public key members present.
fn key_fits(key: &serde_json::Map<String, Value>, alg: JwtAlgorithm) -> bool {
    let text = |member: &str| key.get(member).and_then(Value::as_str);
    let has = |member: &str| text(member).is_some_and(is_base64url);
    if text("kty") != Some(alg.key_type()) {
        return false;
    }
    if key.get("alg").is_some() && text("alg") != Some(alg.keyword()) {
        return false;
    }
    if key.get("use").is_some() && text("use") != Some("sig") {
        return false;
    }
    if let Some(ops) = key.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")))
    {
        return false;
    }
    match alg.key_type() {
        "oct" => has("k"),
        "RSA" => has("n") && has("e"),
        "EC" => {
            let curve = if alg == JwtAlgorithm::ES256 {
                "P-256"
            } else {
                "P-384"
            };
            text("crv") == Some(curve) && has("x") && has("y")
        }
        "OKP" => text("crv") == Some("Ed25519") && has("x"),
        _ => false,
    }
}

/// Non-empty base64url text (RFC 7515 §2, padding tolerated).
fn is_base64url(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// B074: `ebpf #true` needs a `client-ip` key (the kernel sees addresses,
/// not headers or tokens); B041: `burst=0` admits no request.
fn rate_limit(limit: &RateLimit, diagnostics: &mut Vec<Diagnostic>) {
    if limit.ebpf.value && limit.key.value != RequestKey::ClientIp {
        diagnostics.push(
            Diagnostic::error(
                Code::EbpfKey,
                limit.ebpf.span,
                format!(
                    "rate limit `{}` enforces in the kernel but is keyed by `{}`",
                    limit.name.value, limit.key.value
                ),
            )
            .label_in("needs `key \"client-ip\"`", "needs `key = \"client-ip\"`")
            .help_in(
                "the XDP program sees only packet addresses: key the limit by `client-ip`, or remove `ebpf #true`",
                "the XDP program sees only packet addresses: key the limit by `client-ip`, or remove `ebpf = true`",
            )
            .related(limit.key.span, "the limit's key"),
        );
    }
    if limit.burst.value == 0 {
        let span = if limit.burst.span.is_empty() {
            limit.rate.span
        } else {
            limit.burst.span
        };
        diagnostics.push(
            Diagnostic::error(
                Code::OutOfRange,
                span,
                format!("rate limit `{}` has a burst of 0", limit.name.value),
            )
            .label("a bucket of size 0 admits no request")
            .help("set burst to at least 1; it is how many requests may arrive at once"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).expect("test JWK")
    }

    #[test]
    fn keys_fit_algorithms() {
        let ec = jwk(r#"{"kty":"EC","crv":"P-256","x":"abc","y":"def"}"#);
        assert!(key_fits(&ec, JwtAlgorithm::ES256));
        assert!(!key_fits(&ec, JwtAlgorithm::ES384));
        assert!(!key_fits(&ec, JwtAlgorithm::RS256));
        let rsa = jwk(r#"{"kty":"RSA","alg":"RS256","n":"abc","e":"AQAB"}"#);
        assert!(key_fits(&rsa, JwtAlgorithm::RS256));
        assert!(!key_fits(&rsa, JwtAlgorithm::PS256));
        let enc = jwk(r#"{"kty":"RSA","use":"enc","n":"abc","e":"AQAB"}"#);
        assert!(!key_fits(&enc, JwtAlgorithm::RS256));
        let ed = jwk(r#"{"kty":"OKP","crv":"Ed25519","x":"abc"}"#);
        assert!(key_fits(&ed, JwtAlgorithm::EdDSA));
        let oct = jwk(r#"{"kty":"oct","k":"c2VjcmV0"}"#);
        assert!(key_fits(&oct, JwtAlgorithm::HS256));
        let bad = jwk(r#"{"kty":"oct","k":"not base64!"}"#);
        assert!(!key_fits(&bad, JwtAlgorithm::HS256));
    }
}
