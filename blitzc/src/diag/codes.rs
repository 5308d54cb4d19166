//! The stable diagnostic codes. A code never changes meaning once released;
//! retired codes are not reused. `docs/diagnostics.md` documents each one.

use serde::Serialize;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $slug:literal), )*) => {
        /// A stable diagnostic code: `B` followed by three digits, plus a slug.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[non_exhaustive]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// `B010`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// `unknown-key`.
            pub fn slug(self) -> &'static str {
                match self { $(Code::$variant => $slug,)* }
            }
        }
    };
}

codes! {
    // ---- syntax
    /// The KDL text does not parse.
    KdlSyntax = ("B001", "kdl-syntax"),
    /// The TOML text does not parse.
    TomlSyntax = ("B002", "toml-syntax"),
    /// `version 1` is missing, not first, or another version.
    Version = ("B003", "version"),
    /// The file is neither `.kdl` nor `.toml`.
    UnknownFormat = ("B004", "unknown-format"),

    // ---- structure
    /// A node, key or property that this place does not take.
    UnknownKey = ("B010", "unknown-key"),
    /// A value of the wrong type, or the wrong number of values.
    WrongType = ("B011", "wrong-type"),
    /// A required field is missing.
    MissingField = ("B012", "missing-field"),
    /// A field or block given twice where it may appear once.
    DuplicateField = ("B013", "duplicate-field"),
    /// Fields that exclude each other (two actions, jwks-file and jwks-url).
    ConflictingFields = ("B014", "conflicting-fields"),
    /// A spec without any listener serves nothing.
    NoListener = ("B015", "no-listener"),

    // ---- names and references
    /// Two items of one kind share a name.
    DuplicateName = ("B020", "duplicate-name"),
    /// A reference names no item of its kind.
    UnknownReference = ("B021", "unknown-reference"),
    /// Two listeners bind the same address.
    DuplicateBind = ("B022", "duplicate-bind"),
    /// Chains that `use` each other in a cycle.
    ChainCycle = ("B023", "chain-cycle"),
    /// An item that nothing references (warning).
    Unused = ("B024", "unused"),

    // ---- values
    InvalidDuration = ("B030", "invalid-duration"),
    InvalidSize = ("B031", "invalid-size"),
    InvalidRate = ("B032", "invalid-rate"),
    InvalidAddress = ("B033", "invalid-address"),
    InvalidStatus = ("B034", "invalid-status"),
    InvalidHeaderName = ("B035", "invalid-header-name"),
    InvalidRegex = ("B036", "invalid-regex"),
    /// A keyword that is not one of the allowed choices.
    InvalidValue = ("B037", "invalid-value"),
    /// A path that is not absolute or not normalised.
    InvalidPath = ("B038", "invalid-path"),
    /// A host pattern that is not a name or `*.name`.
    InvalidHost = ("B039", "invalid-host"),
    /// A header value with CR, LF or NUL.
    InvalidHeaderValue = ("B040", "invalid-header-value"),
    /// A number out of its range (workers 0, burst 0, ...).
    OutOfRange = ("B041", "out-of-range"),

    // ---- routing
    /// An earlier route matches every request this one matches.
    ShadowedRoute = ("B050", "shadowed-route"),
    /// A `match` block with no condition matches everything (warning).
    EmptyMatch = ("B051", "empty-match"),
    /// A header set and removed by the same block (warning).
    ConflictingHeaderEdit = ("B052", "conflicting-header-edit"),
    /// The same matcher twice in one `match` block.
    DuplicateMatcher = ("B053", "duplicate-matcher"),
    /// A step written after the route's action; it still runs first (warning).
    StepAfterAction = ("B054", "step-after-action"),
    /// `respond 204`, `205` or `304` with a body, which is never sent (warning).
    BodyNeverSent = ("B055", "body-never-sent"),
    /// A header step that sets or adds a hop-by-hop or framing field,
    /// which the gateway drops whatever the step says (warning).
    IneffectiveHeaderEdit = ("B056", "ineffective-header-edit"),
    /// A `path-regex` that no normalised path can match (warning).
    RegexNeverMatches = ("B057", "regex-never-matches"),
    /// A `redirect` location that is empty or not a URI reference (warning).
    BadRedirectLocation = ("B058", "bad-redirect-location"),

    // ---- listeners and TLS
    /// `h2` or `h3` on a listener without `tls`.
    ProtocolNeedsTls = ("B060", "protocol-needs-tls"),
    /// `h2c` on a listener with `tls`.
    H2cWithTls = ("B061", "h2c-with-tls"),
    /// A certificate or key file that is missing or does not parse.
    TlsFile = ("B062", "tls-file"),
    /// A certificate that does not match its key.
    CertKeyMismatch = ("B063", "cert-key-mismatch"),
    /// Two certificates for one server name, or two defaults.
    DuplicateSni = ("B064", "duplicate-sni"),
    /// `tls` without any certificate.
    TlsWithoutCert = ("B065", "tls-without-cert"),
    /// A certificate chosen by `sni` that is not valid for that name.
    CertNameMismatch = ("B066", "cert-name-mismatch"),
    /// A listener certificate that is expired or not valid yet (warning).
    CertValidity = ("B067", "cert-validity"),

    // ---- auth and limits
    /// `require-role` with no `auth` before it.
    RoleWithoutAuth = ("B070", "role-without-auth"),
    /// A `jwt:CLAIM` key used with no `auth` before it.
    ClaimWithoutAuth = ("B071", "claim-without-auth"),
    /// `algorithms` mixing HMAC with public-key algorithms.
    JwtAlgorithmMix = ("B072", "jwt-algorithm-mix"),
    /// A JWKS file that is missing, does not parse or has no key for the algorithms.
    JwksFile = ("B073", "jwks-file"),
    /// `ebpf #true` on a limit whose key is not `client-ip`.
    EbpfKey = ("B074", "ebpf-key"),
    /// `auth` twice in one route's steps (warning).
    DuplicateAuth = ("B075", "duplicate-auth"),

    // ---- upstreams
    /// `consistent-hash` without a `key`.
    HashWithoutKey = ("B080", "hash-without-key"),
    /// Every server has `weight=0`.
    AllWeightsZero = ("B081", "all-weights-zero"),
    /// A `weight` on a balance that ignores weights (warning).
    WeightIgnored = ("B082", "weight-ignored"),
    /// The same server address twice in one upstream.
    DuplicateServer = ("B083", "duplicate-server"),
    /// A `key` on a balance that is not `consistent-hash`.
    KeyIgnored = ("B084", "key-ignored"),
    /// A server at an address a listener of this gateway binds (warning).
    ServerIsListener = ("B085", "server-is-listener"),

    // ---- plugins
    /// A plugin file that is missing or is not a WebAssembly module.
    PluginFile = ("B090", "plugin-file"),

    // ---- build
    /// A construct the runtime does not serve yet (from `blitzc build`).
    Unsupported = ("B100", "unsupported"),
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_slugs_are_unique() {
        let codes: HashSet<_> = Code::ALL.iter().map(|c| c.as_str()).collect();
        let slugs: HashSet<_> = Code::ALL.iter().map(|c| c.slug()).collect();
        assert_eq!(codes.len(), Code::ALL.len());
        assert_eq!(slugs.len(), Code::ALL.len());
    }
}
