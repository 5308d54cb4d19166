//! The TOML front end: TOML text (parsed with `toml_edit`, which keeps the
//! byte span of every key and value) lowered into the IR.
//!
//! Shape of the language (SPEC.md "TOML form"): a top-level `version`, the
//! tables `[gateway]`, `[limits]`, `[metrics]` and `[admin]`, one array of
//! tables per kind of named item (`[[listener]]`, `[[route]]`, ...), each
//! with a `name` key, and inline tables for everything nested. A nested
//! table may equally be written as a `[listener.tls]` header, and an array
//! of inline tables as `[[...]]` headers: TOML makes them the same value.
//!
//! Lowering reports every problem it meets and carries on; an item that
//! lacks a required field is reported and left out of the model. Single
//! values go through [`Lowering`], shared with the KDL front end, so both
//! forms of a spec mean the same thing.
//!
//! Spans: a struct's `span` is its table's (the `[[header]]`, or the braces
//! of an inline table; a shorthand value's own span when the struct is
//! written as one value, e.g. `proxy = "users"`); actions and match
//! conditions span their key through their value; a `Spanned` value has the
//! span of the TOML value. Defaults keep an empty span ("not written").

use crate::diag::{Code, Diagnostic, SourceFile, choices_help};
use crate::ir::values::Lowering;
use blitz_ir::*;
use std::time::Duration;
use toml_edit::{Item, TableLike, Value};

/// Lowers one TOML spec file. `None` when the text is not valid TOML.
pub fn lower(file: &SourceFile) -> (Option<Spec>, Vec<Diagnostic>) {
    let doc = match toml_edit::Document::parse(file.text.as_str()) {
        Ok(doc) => doc,
        Err(error) => return (None, vec![syntax_diagnostic(file, &error)]),
    };
    let mut lowerer = Lowerer {
        lw: Lowering::new(&file.path),
    };
    let default_name = super::default_gateway_name(file);
    let spec = lowerer.spec(doc.as_table(), default_name);
    (Some(spec), lowerer.lw.diagnostics)
}

fn syntax_diagnostic(file: &SourceFile, error: &toml_edit::TomlError) -> Diagnostic {
    let end = file.text.len();
    let message = error.message().trim();
    let too_deep = message.contains("recursion limit");
    let span = match error.span() {
        Some(r) => Span::new(r.start.min(end), r.end.min(end)),
        // toml_edit reports its limit on dotted keys without a position.
        None if too_deep => deep_dotted_key(&file.text).unwrap_or(Span::new(end, end)),
        None => Span::new(end, end),
    };
    let label = message.lines().next().unwrap_or("invalid TOML").to_string();
    let help = if too_deep {
        "a key may have at most 80 dotted parts (`a.b.c = 1` has 3): nest with tables instead"
    } else if message.contains("duplicate key") {
        "a key may appear once per table: give several named items as `[[KIND]]` tables, \
         and merge repeated `[TABLE]`s into one"
    } else if message.contains("must be quoted") {
        "quote string values, e.g. `workers = \"auto\"`"
    } else if message.contains("unclosed") {
        "close what is opened here: `]` for arrays and headers, `}` for inline tables, \
         `\"` for strings"
    } else {
        "strings are quoted, keys are written `key = value`, tables `[name]` and arrays \
         of tables `[[name]]` (see docs/spec.md for the spec's TOML form)"
    };
    Diagnostic::error(
        Code::TomlSyntax,
        span,
        format!("TOML syntax error: {label}"),
    )
    .label(label)
    .help(help)
}

/// The first key with more dotted parts than toml_edit takes (80), as a
/// span: where its "recursion limit" error, which has no position, comes
/// from. A scan of the text: strings and comments are skipped; a run of
/// key characters, dots and spaces that ends at `=` (a key) or `]` (a
/// table header) is a key. Only called once the parser has refused the
/// text for that reason.
fn deep_dotted_key(text: &str) -> Option<Span> {
    const MOST_PARTS: usize = 80;
    let bytes = text.as_bytes();
    let mut i = 0;
    // The run being read: where it started, and its dots so far.
    let mut run: Option<(usize, usize)> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' | b'\'' => {
                let triple = bytes[i..].starts_with(&[b; 3]);
                let close_len = if triple { 3 } else { 1 };
                let mut j = i + close_len;
                loop {
                    match bytes.get(j) {
                        None => return None,
                        Some(b'\\') if b == b'"' => j += 2,
                        Some(b'\n') if !triple => break,
                        Some(&c) if c == b && (!triple || bytes[j..].starts_with(&[b; 3])) => {
                            j += close_len;
                            break;
                        }
                        Some(_) => j += 1,
                    }
                }
                run.get_or_insert((i, 0));
                i = j;
                continue;
            }
            b'#' => {
                run = None;
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'.' => {
                if let Some((_, dots)) = run.as_mut() {
                    *dots += 1;
                }
            }
            b'=' | b']' => {
                if let Some((start, dots)) = run.take()
                    && dots + 1 > MOST_PARTS
                {
                    return Some(Span::new(start, i));
                }
            }
            b' ' | b'\t' => {}
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => {
                run.get_or_insert((i, 0));
            }
            _ => run = None,
        }
        i += 1;
    }
    None
}

// ---------------------------------------------------------------- the view

fn span_of(range: Option<std::ops::Range<usize>>) -> Option<Span> {
    range.map(|r| Span::new(r.start, r.end))
}

/// A TOML table, written as a `[header]` or inline, with the span its
/// struct takes in the IR.
#[derive(Clone, Copy)]
struct Tbl<'a> {
    inner: &'a dyn TableLike,
    span: Span,
}

/// One `key = value` of a table, with both spans.
#[derive(Clone, Copy)]
struct Field<'a> {
    name: &'a str,
    key: Span,
    item: &'a Item,
    /// The value's span (the header, for a `[table]` or `[[array]]`).
    span: Span,
}

impl Field<'_> {
    /// From the key to the end of the value.
    fn whole(&self) -> Span {
        Span::new(
            self.key.start.min(self.span.start),
            self.key.end.max(self.span.end),
        )
    }
}

impl<'a> Tbl<'a> {
    fn get(self, name: &str) -> Option<Field<'a>> {
        let (key, item) = self.inner.get_key_value(name)?;
        if item.is_none() {
            return None;
        }
        let key_span = span_of(key.span()).unwrap_or(self.span);
        Some(Field {
            name: key.get(),
            key: key_span,
            item,
            span: span_of(item.span()).unwrap_or(key_span),
        })
    }

    /// Every field, in the order written.
    fn fields(self) -> Vec<Field<'a>> {
        self.inner
            .iter()
            .filter_map(|(name, _)| self.get(name))
            .collect()
    }
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => value_type_name(v),
    }
}

fn value_type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

fn value_span(value: &Value, fallback: Span) -> Span {
    span_of(value.span()).unwrap_or(fallback)
}

fn own(s: Spanned<&str>) -> Spanned<String> {
    Spanned::new(s.value.to_string(), s.span)
}

/// "in `health-check`", "at the top level": where a key sits, for messages.
fn place(ctx: &str) -> String {
    match ctx {
        "spec" => "at the top level".into(),
        "step" => "in a step".into(),
        "server" => "in a server".into(),
        "cert" => "in a TLS certificate".into(),
        _ => format!("in `{ctx}`"),
    }
}

/// How a field is written, for help lines: `ctx` is the table it sits in.
fn example(ctx: &str, key: &str) -> Option<String> {
    let text = match (ctx, key) {
        (_, "version") => "version = 1",
        ("spec", "gateway") => "[gateway]",
        ("spec", "limits") => "[limits]",
        ("spec", "metrics") => "[metrics]",
        ("spec", "admin") => "[admin]",
        ("spec", kind) => return Some(format!("[[{kind}]]")),
        ("gateway", "name") => "name = \"edge-eu1\"",
        ("listener", "name") => "name = \"public\"",
        ("upstream", "name") => "name = \"users\"",
        ("jwt", "name") => "name = \"corp-sso\"",
        ("rate-limit", "name") => "name = \"per-client\"",
        ("plugin", "name") => "name = \"geo-tag\"",
        ("chain", "name") => "name = \"api-common\"",
        ("route", "name") => "name = \"users-read\"",
        (_, "workers") => "workers = \"auto\"",
        (_, "access-log") => "access-log = \"stdout\"",
        ("access-log", "target") => "target = \"stdout\"",
        ("access-log", "format") => "format = \"json\"",
        ("metrics", "bind") => "bind = \"127.0.0.1:9090\"",
        (_, "bind") => "bind = \"0.0.0.0:8080\"",
        (_, "protocols") => "protocols = [\"h1\", \"h2c\"]",
        ("server", "tls") => "tls = true",
        ("server", "sni") => "sni = \"api.internal\"",
        ("server", "ca") => "ca = \"certs/internal-ca.pem\"",
        (_, "tls") => "tls = { certs = [{ cert = \"certs/edge.crt\", key = \"certs/edge.key\" }] }",
        (_, "certs") => "certs = [{ cert = \"certs/edge.crt\", key = \"certs/edge.key\" }]",
        ("cert", "cert") => "cert = \"certs/edge.crt\"",
        ("cert", "key") => "key = \"certs/edge.key\"",
        ("cert", "sni") => "sni = \"api.example.com\"",
        (_, "max-header-bytes") => "max-header-bytes = \"16KiB\"",
        (_, "max-body-bytes") => "max-body-bytes = \"10MiB\"",
        (_, "max-headers") => "max-headers = 100",
        (_, "balance") => "balance = \"round-robin\"",
        (_, "algorithm") => "algorithm = \"consistent-hash\"",
        ("balance", "key") => "key = \"header:x-user-id\"",
        ("rate-limit", "key") => "key = \"client-ip\"",
        (_, "servers") => "servers = [{ address = \"127.0.0.1:9001\" }]",
        (_, "address") => "address = \"127.0.0.1:9001\"",
        (_, "weight") => "weight = 1",
        (_, "pool") => "pool = { max-idle = 64, idle-timeout = \"90s\" }",
        (_, "max-idle") => "max-idle = 64",
        (_, "health-check") => "health-check = { path = \"/healthz\", interval = \"2s\" }",
        ("health-check", "path") => "path = \"/healthz\"",
        (_, "healthy") => "healthy = 2",
        (_, "unhealthy") => "unhealthy = 3",
        (_, "expect") => "expect = \"200-399\"",
        (_, "timeouts") => "timeouts = { connect = \"1s\", response = \"30s\" }",
        (_, "retry") => "retry = { attempts = 2, on = [\"connect-error\", \"502\"] }",
        (_, "attempts") => "attempts = 2",
        ("retry", "total") => "total = \"10s\"",
        (_, "on") => "on = [\"connect-error\", \"502\"]",
        (
            _,
            "header-timeout" | "idle-timeout" | "body-timeout" | "interval" | "timeout" | "connect"
            | "response" | "leeway" | "refresh",
        ) => return Some(format!("{key} = \"10s\"")),
        (_, "issuer") => "issuer = \"https://sso.example.com\"",
        (_, "audience") => "audience = \"api\"",
        (_, "algorithms") => "algorithms = [\"RS256\"]",
        (_, "jwks-file") => "jwks-file = \"keys/jwks.json\"",
        (_, "jwks-url") => "jwks-url = \"https://sso.example.com/jwks\"",
        ("jwks-url", "url") => "url = \"https://sso.example.com/jwks\"",
        (_, "roles-claim") => "roles-claim = \"roles\"",
        (_, "rate") => "rate = \"100/s\"",
        (_, "burst") => "burst = 200",
        (_, "ebpf") => "ebpf = true",
        (_, "wasm") => "wasm = \"plugins/geo_tag.wasm\"",
        (_, "config") => "config = \"{}\"",
        (_, "steps") => "steps = [{ auth = \"corp-sso\" }, { rate-limit = \"per-client\" }]",
        ("step", "auth") => "{ auth = \"corp-sso\" }",
        ("step", "require-role") => "{ require-role = [\"users:read\", \"admin\"] }",
        ("step", "rate-limit") => "{ rate-limit = \"per-client\" }",
        ("step", "plugin") => "{ plugin = \"geo-tag\" }",
        ("step", "use") => "{ use = \"api-common\" }",
        ("step", "request-headers" | "response-headers") => {
            return Some(format!(
                "{{ {key} = {{ set = {{ x-forwarded-proto = \"https\" }} }} }}"
            ));
        }
        (_, "set") => "set = { x-forwarded-proto = \"https\" }",
        (_, "add") => "add = { via = \"blitz\" }",
        (_, "remove") => "remove = [\"cookie\"]",
        ("set" | "add", _) => return Some(format!("{key} = \"value\"")),
        (_, "match") => "match = { path-prefix = \"/v1/users\" }",
        ("match", "host") => "host = [\"api.example.com\", \"*.api.example.com\"]",
        ("match", "path") => "path = \"/healthz\"",
        ("match", "path-prefix") => "path-prefix = \"/v1/users\"",
        ("match", "path-regex") => "path-regex = \"/v[0-9]+/.*\"",
        ("match", "method") => "method = [\"GET\", \"HEAD\"]",
        ("match", "header") => "header = { x-canary = \"1\" }",
        ("match", "query") => "query = { debug = true }",
        ("header" | "query", _) => return Some(format!("{key} = \"value\"")),
        (_, "proxy") => "proxy = { upstream = \"users\", strip-prefix = \"/v1\" }",
        (_, "upstream") => "upstream = \"users\"",
        (_, "strip-prefix") => "strip-prefix = \"/v1\"",
        (_, "respond") => "respond = { status = 200, body = \"ok\\n\" }",
        ("respond", "status") => "status = 200",
        (_, "body") => "body = \"ok\\n\"",
        (_, "content-type") => "content-type = \"text/plain\"",
        (_, "redirect") => "redirect = { location = \"https://example.com/\", status = 301 }",
        (_, "location") => "location = \"https://example.com/\"",
        ("redirect", "status") => "status = 301",
        ("metrics", "path") => "path = \"/metrics\"",
        (_, "socket") => "socket = \"/run/blitz/edge.sock\"",
        _ => return None,
    };
    Some(text.to_string())
}

// ---------------------------------------------------------------- keys

const TOP_KEYS: &[&str] = super::TOP_LEVEL;

/// Records a named item the front end reported and left out.
fn left_out(spec: &mut Spec, kind: ItemKind, t: Tbl<'_>, is_left_out: bool) {
    let name = t.get("name").and_then(|f| f.item.as_str());
    if let (true, Some(name)) = (is_left_out, name) {
        spec.left_out.push((kind, name.to_string()));
    }
}
const GATEWAY_KEYS: &[&str] = &["name", "workers", "access-log"];
const ACCESS_LOG_KEYS: &[&str] = &["target", "format"];
const LISTENER_KEYS: &[&str] = &["name", "bind", "protocols", "tls"];
const TLS_KEYS: &[&str] = &["certs"];
const CERT_KEYS: &[&str] = &["cert", "key", "sni"];
const LIMITS_KEYS: &[&str] = &[
    "header-timeout",
    "idle-timeout",
    "body-timeout",
    "max-header-bytes",
    "max-headers",
    "max-body-bytes",
];
const UPSTREAM_KEYS: &[&str] = &[
    "name",
    "balance",
    "servers",
    "pool",
    "health-check",
    "timeouts",
    "retry",
];
const BALANCE_KEYS: &[&str] = &["algorithm", "key"];
const SERVER_KEYS: &[&str] = &["address", "weight", "tls", "sni", "ca"];
const POOL_KEYS: &[&str] = &["max-idle", "idle-timeout"];
const HEALTH_CHECK_KEYS: &[&str] = &[
    "path",
    "interval",
    "timeout",
    "healthy",
    "unhealthy",
    "expect",
];
const TIMEOUTS_KEYS: &[&str] = &["connect", "response"];
const RETRY_KEYS: &[&str] = &["attempts", "on", "total"];
const JWT_KEYS: &[&str] = &[
    "name",
    "issuer",
    "audience",
    "algorithms",
    "jwks-file",
    "jwks-url",
    "roles-claim",
    "leeway",
];
const JWKS_URL_KEYS: &[&str] = &["url", "refresh"];
const RATE_LIMIT_KEYS: &[&str] = &["name", "key", "rate", "burst", "ebpf"];
const PLUGIN_KEYS: &[&str] = &["name", "wasm", "config"];
const CHAIN_KEYS: &[&str] = &["name", "steps"];
const ROUTE_KEYS: &[&str] = &["name", "match", "steps", "proxy", "respond", "redirect"];
const MATCH_KEYS: &[&str] = &[
    "host",
    "path",
    "path-prefix",
    "path-regex",
    "method",
    "header",
    "query",
];
const STEP_KEYS: &[&str] = &[
    "auth",
    "require-role",
    "rate-limit",
    "request-headers",
    "response-headers",
    "plugin",
    "use",
];
const REWRITE_KEYS: &[&str] = &["set", "add", "remove"];
const ACTION_KEYS: &[&str] = &["proxy", "respond", "redirect"];
const PROXY_KEYS: &[&str] = &["upstream", "strip-prefix"];
const RESPOND_KEYS: &[&str] = &["status", "body", "content-type"];
const REDIRECT_KEYS: &[&str] = &["location", "status"];
const METRICS_KEYS: &[&str] = &["bind", "path"];
const ADMIN_KEYS: &[&str] = &["socket"];

/// "listener `public`", or "a listener" when the name is missing.
fn owner(kind: &str, name: &Option<Spanned<String>>) -> String {
    match name {
        Some(n) => format!("{kind} `{}`", n.value),
        None => format!("a {kind}"),
    }
}

// ---------------------------------------------------------------- lowering

struct Lowerer {
    lw: Lowering,
}

impl Lowerer {
    fn push(&mut self, d: Diagnostic) {
        self.lw.push(d);
    }

    // ------------------------------------------------------------ shape

    /// Reports every key of `t` that is not in `allowed`.
    fn unknown_keys(&mut self, t: Tbl<'_>, allowed: &[&str], ctx: &str) {
        for f in t.fields() {
            if !allowed.contains(&f.name) {
                self.unknown_key(f, allowed, ctx);
            }
        }
    }

    fn unknown_key(&mut self, f: Field<'_>, allowed: &[&str], ctx: &str) {
        self.push(
            Diagnostic::error(
                Code::UnknownKey,
                f.key,
                format!("unknown key `{}` {}", f.name, place(ctx)),
            )
            .label("unknown key")
            .help(choices_help(f.name, allowed)),
        );
    }

    fn wrong_type(&mut self, span: Span, ctx: &str, key: &str, expected: &str, found: &str) {
        let help = match example(ctx, key) {
            Some(ex) => format!("write it as `{ex}`"),
            None => format!("write {expected}"),
        };
        self.push(
            Diagnostic::error(
                Code::WrongType,
                span,
                format!("`{key}` must be {expected}, found {found}"),
            )
            .label(format!("expected {expected}"))
            .help(help),
        );
    }

    fn missing(&mut self, at: Span, what: &str, ctx: &str, key: &str) {
        let help = match example(ctx, key) {
            Some(ex) => format!("add `{ex}`"),
            None => format!("add `{key} = ...`"),
        };
        self.push(
            Diagnostic::error(Code::MissingField, at, format!("{what} has no `{key}`"))
                .label(format!("`{key}` is required"))
                .help(help),
        );
    }

    /// The field `key` of `t`, reported as missing when absent.
    fn required<'a>(&mut self, t: Tbl<'a>, key: &str, ctx: &str, what: &str) -> Option<Field<'a>> {
        let f = t.get(key);
        if f.is_none() {
            self.missing(t.span, what, ctx, key);
        }
        f
    }

    // ------------------------------------------------------------ values

    fn string<'a>(&mut self, f: Field<'a>, ctx: &str) -> Option<Spanned<&'a str>> {
        match f.item.as_str() {
            Some(s) => Some(Spanned::new(s, f.span)),
            None => {
                self.wrong_type(f.span, ctx, f.name, "a string", type_name(f.item));
                None
            }
        }
    }

    fn integer(&mut self, f: Field<'_>, ctx: &str) -> Option<Spanned<i128>> {
        match f.item.as_integer() {
            Some(n) => Some(Spanned::new(i128::from(n), f.span)),
            None => {
                self.wrong_type(f.span, ctx, f.name, "an integer", type_name(f.item));
                None
            }
        }
    }

    fn boolean(&mut self, f: Field<'_>, ctx: &str) -> Option<Spanned<bool>> {
        match f.item.as_bool() {
            Some(b) => Some(Spanned::new(b, f.span)),
            None => {
                self.wrong_type(
                    f.span,
                    ctx,
                    f.name,
                    "a boolean (true or false)",
                    type_name(f.item),
                );
                None
            }
        }
    }

    fn count(&mut self, f: Field<'_>, ctx: &str, min: u32) -> Option<Spanned<u32>> {
        let n = self.integer(f, ctx)?;
        self.lw.count(n.value, min, f.name, n.span)
    }

    fn duration(&mut self, f: Field<'_>, ctx: &str) -> Option<Spanned<Duration>> {
        match f.item.as_str() {
            Some(s) => self.lw.duration(s, f.span),
            None => {
                self.wrong_type(
                    f.span,
                    ctx,
                    f.name,
                    "a duration string such as \"10s\"",
                    type_name(f.item),
                );
                None
            }
        }
    }

    /// A size: an integer of bytes or a string with a unit.
    fn size(&mut self, f: Field<'_>, ctx: &str) -> Option<Spanned<u64>> {
        match f.item {
            Item::Value(Value::Integer(n)) => self.lw.size_int(i128::from(*n.value()), f.span),
            Item::Value(Value::String(s)) => self.lw.size_text(s.value(), f.span),
            other => {
                self.wrong_type(
                    f.span,
                    ctx,
                    f.name,
                    "an integer of bytes or a string such as \"16KiB\"",
                    type_name(other),
                );
                None
            }
        }
    }

    /// An array of strings, or (when `single` allows it) one string. The
    /// elements that are not strings are reported and skipped; an empty
    /// array is reported when `at_least_one`.
    fn strings<'a>(
        &mut self,
        f: Field<'a>,
        ctx: &str,
        single: bool,
        at_least_one: bool,
    ) -> Vec<Spanned<&'a str>> {
        let expected = if single {
            "a string or an array of strings"
        } else {
            "an array of strings"
        };
        let array = match f.item {
            Item::Value(Value::String(s)) if single => {
                return vec![Spanned::new(s.value().as_str(), f.span)];
            }
            Item::Value(Value::Array(a)) => a,
            other => {
                self.wrong_type(f.span, ctx, f.name, expected, type_name(other));
                return Vec::new();
            }
        };
        if array.is_empty() && at_least_one {
            let help = match example(ctx, f.name) {
                Some(ex) => format!("write at least one value, e.g. `{ex}`"),
                None => "write at least one value".to_string(),
            };
            self.push(
                Diagnostic::error(Code::WrongType, f.span, format!("`{}` is empty", f.name))
                    .label("expected at least one value")
                    .help(help),
            );
        }
        let mut out = Vec::new();
        for v in array.iter() {
            match v {
                Value::String(s) => {
                    out.push(Spanned::new(s.value().as_str(), value_span(v, f.span)))
                }
                other => self.wrong_type(
                    value_span(other, f.span),
                    ctx,
                    f.name,
                    "an array of strings",
                    &format!("{} in it", value_type_name(other)),
                ),
            }
        }
        out
    }

    /// A table: a `[header]` table or an inline table.
    fn table<'a>(&mut self, f: Field<'a>, ctx: &str) -> Option<Tbl<'a>> {
        match f.item {
            Item::Table(t) => Some(Tbl {
                inner: t,
                span: span_of(t.span()).filter(|s| !s.is_empty()).unwrap_or(f.key),
            }),
            Item::Value(Value::InlineTable(t)) => Some(Tbl {
                inner: t,
                span: f.span,
            }),
            other => {
                self.wrong_type(f.span, ctx, f.name, "a table", type_name(other));
                None
            }
        }
    }

    /// A list of tables: `[[header]]` tables or an array of inline tables.
    fn tables<'a>(&mut self, f: Field<'a>, ctx: &str) -> Vec<Tbl<'a>> {
        match f.item {
            Item::ArrayOfTables(array) => array
                .iter()
                .map(|t| Tbl {
                    inner: t,
                    span: span_of(t.span()).unwrap_or(f.key),
                })
                .collect(),
            Item::Value(Value::Array(array)) => {
                let mut out = Vec::new();
                for v in array.iter() {
                    match v {
                        Value::InlineTable(t) => out.push(Tbl {
                            inner: t,
                            span: value_span(v, f.span),
                        }),
                        other => self.wrong_type(
                            value_span(other, f.span),
                            ctx,
                            f.name,
                            "an array of tables",
                            &format!("{} in it", value_type_name(other)),
                        ),
                    }
                }
                out
            }
            other => {
                self.wrong_type(f.span, ctx, f.name, "an array of tables", type_name(other));
                Vec::new()
            }
        }
    }

    fn file_path(&mut self, f: Field<'_>, ctx: &str) -> Option<Spanned<FilePath>> {
        let s = self.string(f, ctx)?;
        self.lw.file_path(s.value, s.span)
    }

    fn reference(&mut self, f: Field<'_>, ctx: &str, kind: ItemKind) -> Option<Ref> {
        let s = self.string(f, ctx)?;
        Some(Ref::new(kind, own(s)))
    }

    // ------------------------------------------------------------ the spec

    fn spec(&mut self, root: &toml_edit::Table, default_name: String) -> Spec {
        let root = Tbl {
            inner: root,
            span: Span::new(0, 0),
        };
        self.unknown_keys(root, TOP_KEYS, "spec");
        let mut spec = Spec {
            gateway: Gateway {
                name: Spanned::new(default_name, Span::default()),
                ..Gateway::default()
            },
            ..Spec::default()
        };
        self.version(root, &mut spec);
        if let Some(t) = root.get("gateway").and_then(|f| self.table(f, "spec")) {
            self.gateway(t, &mut spec.gateway);
        }
        for t in self.items(root, "listener") {
            let item = self.listener(t);
            left_out(&mut spec, ItemKind::Listener, t, item.is_none());
            spec.listeners.extend(item);
        }
        if let Some(t) = root.get("limits").and_then(|f| self.table(f, "spec")) {
            spec.limits = self.limits(t);
        }
        for t in self.items(root, "upstream") {
            spec.upstreams.extend(self.upstream(t));
        }
        for t in self.items(root, "jwt") {
            let item = self.jwt(t);
            left_out(&mut spec, ItemKind::Jwt, t, item.is_none());
            spec.jwts.extend(item);
        }
        for t in self.items(root, "rate-limit") {
            let item = self.rate_limit(t);
            left_out(&mut spec, ItemKind::RateLimit, t, item.is_none());
            spec.rate_limits.extend(item);
        }
        for t in self.items(root, "plugin") {
            let item = self.plugin(t);
            left_out(&mut spec, ItemKind::Plugin, t, item.is_none());
            spec.plugins.extend(item);
        }
        for t in self.items(root, "chain") {
            let item = self.chain(t);
            left_out(&mut spec, ItemKind::Chain, t, item.is_none());
            spec.chains.extend(item);
        }
        for t in self.items(root, "route") {
            let item = self.route(t);
            left_out(&mut spec, ItemKind::Route, t, item.is_none());
            spec.routes.extend(item);
        }
        if let Some(t) = root.get("metrics").and_then(|f| self.table(f, "spec")) {
            spec.metrics = self.metrics(t);
        }
        if let Some(t) = root.get("admin").and_then(|f| self.table(f, "spec")) {
            spec.admin = self.admin(t);
        }
        spec
    }

    fn version(&mut self, root: Tbl<'_>, spec: &mut Spec) {
        let Some(f) = root.get("version") else {
            self.push(
                Diagnostic::error(
                    Code::Version,
                    Span::new(0, 0),
                    "the spec does not start with `version = 1`",
                )
                .label("no `version`")
                .help("start the spec with `version = 1`"),
            );
            return;
        };
        if root
            .fields()
            .first()
            .is_some_and(|first| first.name != "version")
        {
            self.push(
                Diagnostic::error(Code::Version, f.key, "`version` must come first")
                    .label("not first")
                    .help("move `version = 1` to the top of the file"),
            );
        }
        match f.item.as_integer() {
            Some(1) => spec.version = 1,
            Some(n) => self.push(
                Diagnostic::error(
                    Code::Version,
                    f.span,
                    format!("unsupported spec version {n}"),
                )
                .label("this blitzc reads version 1")
                .help("write `version = 1`"),
            ),
            None => self.wrong_type(
                f.span,
                "spec",
                "version",
                "the integer 1",
                type_name(f.item),
            ),
        }
    }

    /// The tables of one kind of named item (`[[listener]]`), each checked
    /// for unknown keys.
    fn items<'a>(&mut self, root: Tbl<'a>, kind: &str) -> Vec<Tbl<'a>> {
        let Some(f) = root.get(kind) else {
            return Vec::new();
        };
        let tables = self.tables(f, "spec");
        let allowed = match kind {
            "listener" => LISTENER_KEYS,
            "upstream" => UPSTREAM_KEYS,
            "jwt" => JWT_KEYS,
            "rate-limit" => RATE_LIMIT_KEYS,
            "plugin" => PLUGIN_KEYS,
            "chain" => CHAIN_KEYS,
            _ => ROUTE_KEYS,
        };
        for t in &tables {
            self.unknown_keys(*t, allowed, kind);
        }
        tables
    }

    /// The `name` of a named item.
    fn name(&mut self, t: Tbl<'_>, kind: &str) -> Option<Spanned<String>> {
        let f = self.required(t, "name", kind, &format!("this `{kind}`"))?;
        self.string(f, kind).map(own)
    }

    fn gateway(&mut self, t: Tbl<'_>, gateway: &mut Gateway) {
        const CTX: &str = "gateway";
        self.unknown_keys(t, GATEWAY_KEYS, CTX);
        gateway.span = t.span;
        if let Some(name) = t.get("name").and_then(|f| self.string(f, CTX)) {
            gateway.name = own(name);
        }
        if let Some(f) = t.get("workers") {
            let workers = match f.item {
                Item::Value(Value::String(s)) => self.lw.workers_text(s.value(), f.span),
                Item::Value(Value::Integer(n)) => {
                    self.lw.workers_int(i128::from(*n.value()), f.span)
                }
                other => {
                    self.wrong_type(
                        f.span,
                        CTX,
                        "workers",
                        "\"auto\" or an integer",
                        type_name(other),
                    );
                    None
                }
            };
            if let Some(w) = workers {
                gateway.workers = w;
            }
        }
        if let Some(f) = t.get("access-log") {
            gateway.access_log = self.access_log(f);
        }
    }

    /// `access-log = "stdout"` or `{ target = "stdout", format = "json" }`.
    fn access_log(&mut self, f: Field<'_>) -> Option<AccessLog> {
        const CTX: &str = "access-log";
        let default_format = Spanned::new(LogFormat::Json, Span::default());
        if let Some(s) = f.item.as_str() {
            let target = self.lw.log_target(s, f.span)?;
            return Some(AccessLog {
                target,
                format: default_format,
                span: f.span,
            });
        }
        if !matches!(f.item, Item::Table(_) | Item::Value(Value::InlineTable(_))) {
            self.wrong_type(
                f.span,
                "gateway",
                "access-log",
                "a string or a table",
                type_name(f.item),
            );
            return None;
        }
        let t = self.table(f, "gateway")?;
        self.unknown_keys(t, ACCESS_LOG_KEYS, CTX);
        let target = self
            .required(t, "target", CTX, "`access-log`")
            .and_then(|f| self.string(f, CTX))
            .and_then(|s| self.lw.log_target(s.value, s.span));
        let format = match t.get("format") {
            Some(f) => self
                .string(f, CTX)
                .and_then(|s| self.lw.log_format(s.value, s.span)),
            None => Some(default_format),
        };
        Some(AccessLog {
            target: target?,
            format: format?,
            span: t.span,
        })
    }

    fn listener(&mut self, t: Tbl<'_>) -> Option<Listener> {
        const CTX: &str = "listener";
        let name = self.name(t, CTX);
        let what = owner(CTX, &name);
        let bind = self
            .required(t, "bind", CTX, &what)
            .and_then(|f| self.string(f, CTX))
            .and_then(|s| self.lw.bind_address(s.value, s.span));
        let mut protocols = Vec::new();
        if let Some(f) = t.get("protocols") {
            for p in self.strings(f, CTX, false, true) {
                protocols.extend(self.lw.protocol(p.value, p.span));
            }
        }
        if protocols.is_empty() {
            protocols.push(Spanned::new(Protocol::H1, Span::default()));
        }
        // A `tls` that is no table, or none of whose certificates could be
        // read, leaves the listener out, as a bad `bind` does: the errors were
        // reported, and B060/B065 would only repeat them, wrongly.
        let tls = match t
            .get("tls")
            .map(|f| self.table(f, CTX).and_then(|t| self.tls(t)))
        {
            Some(None) => return None,
            tls => tls.flatten(),
        };
        Some(Listener {
            name: name?,
            bind: bind?,
            protocols,
            tls,
            span: t.span,
        })
    }

    /// `None` when `certs` had entries but none lowered (each one's error
    /// reported).
    fn tls(&mut self, t: Tbl<'_>) -> Option<Tls> {
        self.unknown_keys(t, TLS_KEYS, "tls");
        let mut certs = Vec::new();
        let tables = match t.get("certs") {
            Some(f) => self.tables(f, "tls"),
            None => Vec::new(),
        };
        let had_entries = !tables.is_empty();
        for c in tables {
            const CTX: &str = "cert";
            self.unknown_keys(c, CERT_KEYS, CTX);
            let cert = self
                .required(c, "cert", CTX, "this certificate")
                .and_then(|f| self.file_path(f, CTX));
            let key = self
                .required(c, "key", CTX, "this certificate")
                .and_then(|f| self.file_path(f, CTX));
            let sni = c
                .get("sni")
                .and_then(|f| self.string(f, CTX))
                .map(|s| Spanned::new(s.value.to_ascii_lowercase(), s.span));
            if let (Some(cert), Some(key)) = (cert, key) {
                certs.push(TlsCert {
                    cert,
                    key,
                    sni,
                    span: c.span,
                });
            }
        }
        if certs.is_empty() && had_entries {
            return None;
        }
        Some(Tls {
            certs,
            span: t.span,
        })
    }

    fn limits(&mut self, t: Tbl<'_>) -> Limits {
        const CTX: &str = "limits";
        self.unknown_keys(t, LIMITS_KEYS, CTX);
        let mut limits = Limits {
            span: t.span,
            ..Limits::default()
        };
        for f in t.fields() {
            match f.name {
                "header-timeout" => {
                    limits.header_timeout = self.duration(f, CTX).unwrap_or(limits.header_timeout)
                }
                "idle-timeout" => {
                    limits.idle_timeout = self.duration(f, CTX).unwrap_or(limits.idle_timeout)
                }
                "body-timeout" => {
                    limits.body_timeout = self.duration(f, CTX).unwrap_or(limits.body_timeout)
                }
                "max-header-bytes" => {
                    limits.max_header_bytes = self.size(f, CTX).unwrap_or(limits.max_header_bytes);
                }
                "max-body-bytes" => {
                    limits.max_body_bytes = self.size(f, CTX).unwrap_or(limits.max_body_bytes);
                }
                "max-headers" => {
                    if let Some(n) = self.count(f, CTX, 1) {
                        limits.max_headers = Spanned::new(u64::from(n.value), n.span);
                    }
                }
                _ => {}
            }
        }
        limits
    }

    fn upstream(&mut self, t: Tbl<'_>) -> Option<Upstream> {
        const CTX: &str = "upstream";
        let name = self.name(t, CTX);
        let what = owner(CTX, &name);
        let balance = match t.get("balance") {
            Some(f) => self.balance(f),
            None => Balance {
                algorithm: Spanned::new(BalanceAlgorithm::RoundRobin, Span::default()),
                key: None,
                span: Span::default(),
            },
        };
        let mut servers = Vec::new();
        match t.get("servers") {
            None => self.missing(t.span, &what, CTX, "servers"),
            Some(f) => {
                let tables = self.tables(f, CTX);
                if tables.is_empty() && f.item.as_array().is_some_and(|a| a.is_empty()) {
                    self.push(
                        Diagnostic::error(
                            Code::MissingField,
                            f.span,
                            format!("{what} has no servers"),
                        )
                        .label("empty `servers`")
                        .help("add a server: `servers = [{ address = \"127.0.0.1:9001\" }]`"),
                    );
                }
                for s in tables {
                    servers.extend(self.server(s));
                }
            }
        }
        let pool = match t.get("pool").and_then(|f| self.table(f, CTX)) {
            Some(p) => self.pool(p),
            None => Pool::default(),
        };
        let health_check = t
            .get("health-check")
            .and_then(|f| self.table(f, CTX))
            .map(|h| self.health_check(h));
        let timeouts = match t.get("timeouts").and_then(|f| self.table(f, CTX)) {
            Some(u) => self.timeouts(u),
            None => UpstreamTimeouts::default(),
        };
        let retry = t
            .get("retry")
            .and_then(|f| self.table(f, CTX))
            .and_then(|r| self.retry(r));
        Some(Upstream {
            name: name?,
            balance,
            servers,
            pool,
            health_check,
            timeouts,
            retry,
            span: t.span,
        })
    }

    /// `balance = "p2c"` or `{ algorithm = "consistent-hash", key = "..." }`.
    fn balance(&mut self, f: Field<'_>) -> Balance {
        const CTX: &str = "balance";
        let mut balance = Balance {
            algorithm: Spanned::new(BalanceAlgorithm::RoundRobin, Span::default()),
            key: None,
            span: f.span,
        };
        if let Some(s) = f.item.as_str() {
            if let Some(a) = self.lw.balance(s, f.span) {
                balance.algorithm = a;
            }
            return balance;
        }
        if !matches!(f.item, Item::Table(_) | Item::Value(Value::InlineTable(_))) {
            self.wrong_type(
                f.span,
                "upstream",
                "balance",
                "a string or a table",
                type_name(f.item),
            );
            return balance;
        }
        let Some(t) = self.table(f, "upstream") else {
            return balance;
        };
        self.unknown_keys(t, BALANCE_KEYS, CTX);
        balance.span = t.span;
        if let Some(a) = self
            .required(t, "algorithm", CTX, "`balance`")
            .and_then(|f| self.string(f, CTX))
            .and_then(|s| self.lw.balance(s.value, s.span))
        {
            balance.algorithm = a;
        }
        balance.key = t
            .get("key")
            .and_then(|f| self.string(f, CTX))
            .and_then(|s| self.lw.request_key(s.value, s.span));
        balance
    }

    fn server(&mut self, t: Tbl<'_>) -> Option<Server> {
        const CTX: &str = "server";
        self.unknown_keys(t, SERVER_KEYS, CTX);
        let address = self
            .required(t, "address", CTX, "this server")
            .and_then(|f| self.string(f, CTX))
            .and_then(|s| self.lw.server_address(s.value, s.span));
        let weight = match t.get("weight") {
            Some(f) => self.count(f, CTX, 0),
            None => Some(Spanned::new(1, Span::default())),
        };
        let tls = self.server_tls(t);
        Some(Server {
            address: address?,
            weight: weight?,
            tls: tls?,
            span: t.span,
        })
    }

    /// A server's `tls`, `sni` and `ca`. `Some(None)`: cleartext; `None`:
    /// an error was reported.
    fn server_tls(&mut self, t: Tbl<'_>) -> Option<Option<ServerTls>> {
        const CTX: &str = "server";
        let on = match t.get("tls") {
            Some(f) => Some(self.boolean(f, CTX)?),
            None => None,
        };
        let sni = match t.get("sni") {
            Some(f) => Some(self.string(f, CTX)?),
            None => None,
        };
        let sni = sni.map(|s| Spanned::new(s.value.to_string(), s.span));
        let ca = match t.get("ca") {
            Some(f) => Some(self.file_path(f, CTX)?),
            None => None,
        };
        self.lw.server_tls(on, sni, ca, "tls = true")
    }

    fn pool(&mut self, t: Tbl<'_>) -> Pool {
        const CTX: &str = "pool";
        self.unknown_keys(t, POOL_KEYS, CTX);
        let mut pool = Pool {
            span: t.span,
            ..Pool::default()
        };
        if let Some(n) = t.get("max-idle").and_then(|f| self.count(f, CTX, 0)) {
            pool.max_idle = n;
        }
        if let Some(d) = t.get("idle-timeout").and_then(|f| self.duration(f, CTX)) {
            pool.idle_timeout = d;
        }
        pool
    }

    fn health_check(&mut self, t: Tbl<'_>) -> HealthCheck {
        const CTX: &str = "health-check";
        self.unknown_keys(t, HEALTH_CHECK_KEYS, CTX);
        let d = Span::default();
        let mut hc = HealthCheck {
            path: Spanned::new(HealthCheck::DEFAULT_PATH.into(), d),
            interval: Spanned::new(HealthCheck::DEFAULT_INTERVAL, d),
            timeout: Spanned::new(HealthCheck::DEFAULT_TIMEOUT, d),
            healthy: Spanned::new(HealthCheck::DEFAULT_HEALTHY, d),
            unhealthy: Spanned::new(HealthCheck::DEFAULT_UNHEALTHY, d),
            expect: Spanned::new(HealthCheck::DEFAULT_EXPECT, d),
            span: t.span,
        };
        if let Some(p) = t.get("path").and_then(|f| self.string(f, CTX)) {
            hc.path = own(p);
        }
        if let Some(v) = t.get("interval").and_then(|f| self.duration(f, CTX)) {
            hc.interval = v;
        }
        if let Some(v) = t.get("timeout").and_then(|f| self.duration(f, CTX)) {
            hc.timeout = v;
        }
        if let Some(n) = t.get("healthy").and_then(|f| self.count(f, CTX, 1)) {
            hc.healthy = n;
        }
        if let Some(n) = t.get("unhealthy").and_then(|f| self.count(f, CTX, 1)) {
            hc.unhealthy = n;
        }
        if let Some(f) = t.get("expect") {
            let text = match f.item.as_value() {
                Some(Value::String(s)) => Some(s.value().clone()),
                Some(Value::Integer(n)) => Some(n.value().to_string()),
                _ => {
                    self.wrong_type(
                        f.span,
                        CTX,
                        "expect",
                        "a status or a range such as \"200-399\"",
                        type_name(f.item),
                    );
                    None
                }
            };
            if let Some(r) = text.and_then(|t| self.lw.status_range(&t, f.span)) {
                hc.expect = r;
            }
        }
        hc
    }

    fn timeouts(&mut self, t: Tbl<'_>) -> UpstreamTimeouts {
        const CTX: &str = "timeouts";
        self.unknown_keys(t, TIMEOUTS_KEYS, CTX);
        let mut timeouts = UpstreamTimeouts {
            span: t.span,
            ..UpstreamTimeouts::default()
        };
        if let Some(v) = t.get("connect").and_then(|f| self.duration(f, CTX)) {
            timeouts.connect = v;
        }
        if let Some(v) = t.get("response").and_then(|f| self.duration(f, CTX)) {
            timeouts.response = v;
        }
        timeouts
    }

    fn retry(&mut self, t: Tbl<'_>) -> Option<Retry> {
        const CTX: &str = "retry";
        self.unknown_keys(t, RETRY_KEYS, CTX);
        let attempts = self
            .required(t, "attempts", CTX, "`retry`")
            .and_then(|f| self.count(f, CTX, 0));
        let mut on = Vec::new();
        if let Some(f) = t.get("on") {
            match f.item.as_array() {
                Some(array) => {
                    if array.is_empty() {
                        self.push(
                            Diagnostic::error(Code::WrongType, f.span, "`on` is empty")
                                .label("expected at least one value")
                                .help("write at least one condition, e.g. `on = [\"connect-error\", \"502\"]`; leave `on` out to retry on connect errors only"),
                        );
                    }
                    for v in array.iter() {
                        let span = value_span(v, f.span);
                        let text = match v {
                            Value::String(s) => s.value().clone(),
                            Value::Integer(n) => n.value().to_string(),
                            other => {
                                self.wrong_type(
                                    span,
                                    CTX,
                                    "on",
                                    "an array of strings or status codes",
                                    &format!("{} in it", value_type_name(other)),
                                );
                                continue;
                            }
                        };
                        on.extend(self.lw.retry_on(&text, span));
                    }
                }
                None => self.wrong_type(
                    f.span,
                    CTX,
                    "on",
                    "an array of strings or status codes",
                    type_name(f.item),
                ),
            }
        }
        if on.is_empty() {
            on.push(Spanned::new(RetryOn::ConnectError, Span::default()));
        }
        let total = t.get("total").and_then(|f| self.duration(f, CTX));
        Some(Retry {
            attempts: attempts?,
            on,
            total,
            span: t.span,
        })
    }

    fn jwt(&mut self, t: Tbl<'_>) -> Option<Jwt> {
        const CTX: &str = "jwt";
        let name = self.name(t, CTX);
        let what = owner(CTX, &name);
        let issuer = t.get("issuer").and_then(|f| self.string(f, CTX)).map(own);
        // An empty list would silently turn the `aud` check off: refuse it,
        // as KDL does (leave `audience` out to not check `aud`).
        let audience = match t.get("audience") {
            Some(f) => self
                .strings(f, CTX, true, true)
                .into_iter()
                .map(own)
                .collect(),
            None => Vec::new(),
        };
        let mut algorithms = Vec::new();
        match t.get("algorithms") {
            Some(f) => {
                let written = self.strings(f, CTX, false, false);
                if written.is_empty() && f.item.as_array().is_some_and(|a| a.is_empty()) {
                    self.push(
                        Diagnostic::error(
                            Code::MissingField,
                            f.span,
                            format!("{what} has no algorithms"),
                        )
                        .label("empty `algorithms`")
                        .help("list the signing algorithms your issuer uses: `algorithms = [\"RS256\"]`"),
                    );
                }
                for a in written {
                    algorithms.extend(self.lw.jwt_algorithm(a.value, a.span));
                }
            }
            None => self.missing(t.span, &what, CTX, "algorithms"),
        }
        let file = t.get("jwks-file");
        let url = t.get("jwks-url");
        if let (Some(file), Some(url)) = (file, url) {
            self.push(
                Diagnostic::error(
                    Code::ConflictingFields,
                    url.whole(),
                    "both `jwks-file` and `jwks-url` are given",
                )
                .label("second key source")
                .help("keep one of them: keys come from a file or from a URL")
                .related(file.whole(), "first key source"),
            );
        }
        let keys = match (file, url) {
            (Some(f), _) => self
                .file_path(f, CTX)
                .map(|p| Spanned::new(JwksSource::File(p.value), p.span)),
            (None, Some(u)) => self.jwks_url(u),
            (None, None) => {
                self.missing(t.span, &what, CTX, "jwks-file");
                None
            }
        };
        let roles_claim = t
            .get("roles-claim")
            .and_then(|f| self.string(f, CTX))
            .map(own)
            .unwrap_or_else(|| Spanned::new(Jwt::DEFAULT_ROLES_CLAIM.into(), Span::default()));
        let leeway = t
            .get("leeway")
            .and_then(|f| self.duration(f, CTX))
            .unwrap_or(Spanned::new(Jwt::DEFAULT_LEEWAY, Span::default()));
        Some(Jwt {
            name: name?,
            issuer,
            audience,
            algorithms,
            keys: keys?,
            roles_claim,
            leeway,
            span: t.span,
        })
    }

    /// `jwks-url = "https://..."` or `{ url = "https://...", refresh = "5m" }`.
    fn jwks_url(&mut self, f: Field<'_>) -> Option<Spanned<JwksSource>> {
        const CTX: &str = "jwks-url";
        let (url, refresh) = if f.item.as_str().is_some() {
            let url = self.string(f, "jwt");
            (url, Some(Jwt::DEFAULT_JWKS_REFRESH))
        } else if matches!(f.item, Item::Table(_) | Item::Value(Value::InlineTable(_))) {
            let t = self.table(f, "jwt")?;
            self.unknown_keys(t, JWKS_URL_KEYS, CTX);
            let url = self
                .required(t, "url", CTX, "`jwks-url`")
                .and_then(|f| self.string(f, CTX));
            let refresh = match t.get("refresh") {
                Some(f) => self.duration(f, CTX).map(|d| d.value),
                None => Some(Jwt::DEFAULT_JWKS_REFRESH),
            };
            (url, refresh)
        } else {
            self.wrong_type(
                f.span,
                "jwt",
                "jwks-url",
                "a string or a table",
                type_name(f.item),
            );
            return None;
        };
        let url = url?;
        if !(url.value.starts_with("https://") || url.value.starts_with("http://")) {
            self.push(
                Diagnostic::error(
                    Code::InvalidValue,
                    url.span,
                    format!("invalid JWKS URL `{}`", url.value),
                )
                .label("not an http(s) URL")
                .help("write the full URL, e.g. \"https://sso.example.com/.well-known/jwks.json\""),
            );
            return None;
        }
        Some(Spanned::new(
            JwksSource::Url {
                url: url.value.to_string(),
                refresh: refresh?,
            },
            url.span,
        ))
    }

    fn rate_limit(&mut self, t: Tbl<'_>) -> Option<RateLimit> {
        const CTX: &str = "rate-limit";
        let name = self.name(t, CTX);
        let what = owner(CTX, &name);
        let key = self
            .required(t, "key", CTX, &what)
            .and_then(|f| self.string(f, CTX))
            .and_then(|s| self.lw.request_key(s.value, s.span));
        let rate = self
            .required(t, "rate", CTX, &what)
            .and_then(|f| self.string(f, CTX))
            .and_then(|s| self.lw.rate(s.value, s.span));
        let burst = match t.get("burst") {
            Some(f) => self
                .count(f, CTX, 1)
                .map(|n| Spanned::new(u64::from(n.value), n.span)),
            None => rate
                .as_ref()
                .map(|r| Spanned::new(r.value.count, Span::default())),
        };
        let ebpf = match t.get("ebpf") {
            Some(f) => self.boolean(f, CTX),
            None => Some(Spanned::new(false, Span::default())),
        };
        Some(RateLimit {
            name: name?,
            key: key?,
            rate: rate?,
            burst: burst?,
            ebpf: ebpf?,
            span: t.span,
        })
    }

    fn plugin(&mut self, t: Tbl<'_>) -> Option<Plugin> {
        const CTX: &str = "plugin";
        let name = self.name(t, CTX);
        let what = owner(CTX, &name);
        let wasm = self
            .required(t, "wasm", CTX, &what)
            .and_then(|f| self.file_path(f, CTX));
        let config = t
            .get("config")
            .and_then(|f| self.string(f, CTX))
            .map(own)
            .unwrap_or_else(|| Spanned::new(String::new(), Span::default()));
        Some(Plugin {
            name: name?,
            wasm: wasm?,
            config,
            span: t.span,
        })
    }

    fn chain(&mut self, t: Tbl<'_>) -> Option<Chain> {
        const CTX: &str = "chain";
        let name = self.name(t, CTX);
        let what = owner(CTX, &name);
        // A chain without `steps` is reported but kept (empty), so the
        // routes that `use` it do not also report an unknown chain.
        let steps = match self.required(t, "steps", CTX, &what) {
            Some(f) => self.steps(f, CTX),
            None => Vec::new(),
        };
        Some(Chain {
            name: name?,
            steps,
            span: t.span,
        })
    }

    fn route(&mut self, t: Tbl<'_>) -> Option<Route> {
        const CTX: &str = "route";
        let name = self.name(t, CTX);
        let matcher = t.get("match").map(|f| self.matcher(f));
        let steps = match t.get("steps") {
            Some(f) => self.steps(f, CTX),
            None => Vec::new(),
        };
        let mut action = None;
        let mut first_action: Option<Field<'_>> = None;
        for f in t.fields() {
            if !ACTION_KEYS.contains(&f.name) {
                continue;
            }
            if let Some(first) = first_action {
                self.push(
                    Diagnostic::error(
                        Code::ConflictingFields,
                        f.whole(),
                        "a route has exactly one action",
                    )
                    .label("second action")
                    .help("keep one of `proxy`, `respond` and `redirect`")
                    .related(first.whole(), "first action"),
                );
                continue;
            }
            first_action = Some(f);
            action = self.action(f);
        }
        if first_action.is_none() {
            let label = name.as_ref().map_or("?", |n| n.value.as_str());
            self.push(
                Diagnostic::error(
                    Code::MissingField,
                    t.span,
                    format!("route `{label}` has no action"),
                )
                .label("no `proxy`, `respond` or `redirect`")
                .help(
                    "add one of proxy, respond, redirect, e.g. `proxy = \"UPSTREAM\"` or \
                     `respond = 200`",
                ),
            );
        }
        Some(Route {
            name: name?,
            matcher,
            steps,
            action: action?,
            span: t.span,
        })
    }

    // ------------------------------------------------------------ match

    fn matcher(&mut self, f: Field<'_>) -> Match {
        const CTX: &str = "match";
        let Some(t) = self.table(f, "route") else {
            // Reported; an empty `match` over the bad value (as KDL keeps a
            // `match` node whatever its errors) rather than none: no `match`
            // would read as a catch-all route that shadows every later one.
            return Match {
                conditions: Vec::new(),
                span: f.span,
            };
        };
        let mut conditions = Vec::new();
        for c in t.fields() {
            let test = match c.name {
                "header" | "query" => {
                    self.named_conditions(c, &mut conditions);
                    continue;
                }
                "host" | "path" | "path-prefix" | "path-regex" | "method" => {
                    let written = self.strings(c, CTX, true, true);
                    let values = written.iter();
                    let test = match c.name {
                        "host" => Test::Host(
                            values
                                .filter_map(|v| self.lw.host_pattern(v.value, v.span))
                                .collect(),
                        ),
                        "path" => Test::Path(
                            values
                                .filter_map(|v| self.lw.match_path(v.value, v.span, false))
                                .collect(),
                        ),
                        "path-prefix" => Test::PathPrefix(
                            values
                                .filter_map(|v| self.lw.match_path(v.value, v.span, true))
                                .collect(),
                        ),
                        "path-regex" => Test::PathRegex(
                            values
                                .filter_map(|v| self.lw.regex(v.value, v.span))
                                .collect(),
                        ),
                        _ => Test::Method(
                            values
                                .filter_map(|v| self.lw.method(v.value, v.span))
                                .collect(),
                        ),
                    };
                    if written.is_empty() {
                        continue;
                    }
                    test
                }
                _ => {
                    self.unknown_key(c, MATCH_KEYS, CTX);
                    continue;
                }
            };
            conditions.push(Condition {
                test,
                span: c.whole(),
            });
        }
        Match {
            conditions,
            span: t.span,
        }
    }

    /// `header = { NAME = VALUE, ... }` and `query = { ... }`: one condition
    /// per name; the value is a string, an array of strings (alternatives)
    /// or `true` (present).
    fn named_conditions(&mut self, f: Field<'_>, conditions: &mut Vec<Condition>) {
        let Some(t) = self.table(f, "match") else {
            return;
        };
        let ctx = f.name;
        for entry in t.fields() {
            let values = match entry.item {
                Item::Value(Value::Boolean(b)) if *b.value() => Vec::new(),
                Item::Value(Value::String(_) | Value::Array(_)) => {
                    let values = self.strings(entry, ctx, true, true);
                    if values.is_empty() {
                        continue;
                    }
                    values.into_iter().map(own).collect()
                }
                other => {
                    let found = match other {
                        Item::Value(Value::Boolean(_)) => "`false`",
                        other => type_name(other),
                    };
                    self.wrong_type(
                        entry.span,
                        ctx,
                        entry.name,
                        "a string, an array of strings or `true` (present)",
                        found,
                    );
                    continue;
                }
            };
            let test = if ctx == "header" {
                let Some(name) = self.lw.header_name(entry.name, entry.key) else {
                    continue;
                };
                let Some(values) = self.lw.match_header_values(values) else {
                    continue;
                };
                Test::Header { name, values }
            } else {
                Test::Query {
                    name: Spanned::new(entry.name.to_string(), entry.key),
                    values,
                }
            };
            conditions.push(Condition {
                test,
                span: entry.whole(),
            });
        }
    }

    // ------------------------------------------------------------ steps

    fn steps(&mut self, f: Field<'_>, ctx: &str) -> Vec<Step> {
        let mut steps = Vec::new();
        for t in self.tables(f, ctx) {
            let fields = t.fields();
            for extra in &fields {
                if !STEP_KEYS.contains(&extra.name) {
                    self.unknown_key(*extra, STEP_KEYS, "step");
                }
            }
            match fields.as_slice() {
                [one] => {
                    if STEP_KEYS.contains(&one.name) {
                        steps.extend(self.step(*one, t.span));
                    }
                }
                [] => self.push(
                    Diagnostic::error(Code::WrongType, t.span, "empty step")
                        .label("expected one key, such as `auth`")
                        .help(
                            "write each step as a table with one key, e.g. \
                             `{ auth = \"corp-sso\" }`",
                        ),
                ),
                [_, second, ..] => self.push(
                    Diagnostic::error(
                        Code::WrongType,
                        t.span,
                        format!("a step has one key, found {}", fields.len()),
                    )
                    .label("several steps in one table")
                    .help(format!(
                        "give each step its own table: `{{ {} = ... }}, {{ {} = ... }}`",
                        fields[0].name, second.name
                    )),
                ),
            }
        }
        steps
    }

    fn step(&mut self, f: Field<'_>, span: Span) -> Option<Step> {
        const CTX: &str = "step";
        let kind = match f.name {
            "auth" => StepKind::Auth(self.reference(f, CTX, ItemKind::Jwt)?),
            "rate-limit" => StepKind::RateLimit(self.reference(f, CTX, ItemKind::RateLimit)?),
            "plugin" => StepKind::Plugin(self.reference(f, CTX, ItemKind::Plugin)?),
            "use" => StepKind::Use(self.reference(f, CTX, ItemKind::Chain)?),
            "require-role" => {
                let roles: Vec<_> = self
                    .strings(f, CTX, true, true)
                    .into_iter()
                    .map(own)
                    .collect();
                if roles.is_empty() {
                    return None;
                }
                StepKind::RequireRole(roles)
            }
            "request-headers" => StepKind::RequestHeaders(self.header_rewrite(f)?),
            _ => StepKind::ResponseHeaders(self.header_rewrite(f)?),
        };
        Some(Step { kind, span })
    }

    /// `{ set = { NAME = VALUE }, add = { NAME = VALUE }, remove = [NAME] }`.
    fn header_rewrite(&mut self, f: Field<'_>) -> Option<HeaderRewrite> {
        let ctx = f.name;
        let t = self.table(f, "step")?;
        self.unknown_keys(t, REWRITE_KEYS, ctx);
        let mut rewrite = HeaderRewrite::default();
        for g in t.fields() {
            match g.name {
                "remove" => {
                    for name in self.strings(g, ctx, true, false) {
                        rewrite
                            .remove
                            .extend(self.lw.header_name(name.value, name.span));
                    }
                }
                "set" | "add" => {
                    let Some(headers) = self.table(g, ctx) else {
                        continue;
                    };
                    for h in headers.fields() {
                        // `add` may append several values to one header.
                        let values = if g.name == "add" && h.item.as_array().is_some() {
                            self.strings(h, "add", false, false)
                        } else {
                            self.string(h, g.name).into_iter().collect()
                        };
                        let name = self.lw.header_name(h.name, h.key);
                        for v in values {
                            let value = self.lw.header_value(v.value, v.span);
                            if let (Some(name), Some(value)) = (name.clone(), value) {
                                if g.name == "set" {
                                    rewrite.set.push((name, value));
                                } else {
                                    rewrite.add.push((name, value));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Some(rewrite)
    }

    // ------------------------------------------------------------ actions

    fn action(&mut self, f: Field<'_>) -> Option<Action> {
        let is_table = matches!(f.item, Item::Table(_) | Item::Value(Value::InlineTable(_)));
        let kind = match f.name {
            "proxy" => {
                const CTX: &str = "proxy";
                if let Some(upstream) = f.item.as_str() {
                    ActionKind::Proxy {
                        upstream: Ref::new(ItemKind::Upstream, own(Spanned::new(upstream, f.span))),
                        strip_prefix: None,
                    }
                } else if is_table {
                    let t = self.table(f, "route")?;
                    self.unknown_keys(t, PROXY_KEYS, CTX);
                    let upstream = self
                        .required(t, "upstream", CTX, "`proxy`")
                        .and_then(|u| self.reference(u, CTX, ItemKind::Upstream));
                    let strip_prefix = t
                        .get("strip-prefix")
                        .and_then(|p| self.string(p, CTX))
                        .map(own);
                    ActionKind::Proxy {
                        upstream: upstream?,
                        strip_prefix,
                    }
                } else {
                    self.wrong_type(
                        f.span,
                        "route",
                        "proxy",
                        "an upstream name or a table",
                        type_name(f.item),
                    );
                    return None;
                }
            }
            "respond" => {
                const CTX: &str = "respond";
                let no_body = Spanned::new(String::new(), Span::default());
                if let Some(n) = f.item.as_integer() {
                    ActionKind::Respond {
                        status: self.lw.status(i128::from(n), 200..=599, f.span)?,
                        body: no_body,
                        content_type: None,
                    }
                } else if is_table {
                    let t = self.table(f, "route")?;
                    self.unknown_keys(t, RESPOND_KEYS, CTX);
                    let status = self
                        .required(t, "status", CTX, "`respond`")
                        .and_then(|s| self.integer(s, CTX))
                        .and_then(|n| self.lw.status(n.value, 200..=599, n.span));
                    let body = match t.get("body") {
                        Some(b) => self.string(b, CTX).map(own),
                        None => Some(no_body),
                    };
                    let content_type = t
                        .get("content-type")
                        .and_then(|c| self.string(c, CTX))
                        .and_then(|c| self.lw.header_value(c.value, c.span));
                    ActionKind::Respond {
                        status: status?,
                        body: body?,
                        content_type,
                    }
                } else {
                    self.wrong_type(
                        f.span,
                        "route",
                        "respond",
                        "a status code or a table",
                        type_name(f.item),
                    );
                    return None;
                }
            }
            _ => {
                const CTX: &str = "redirect";
                let default_status = Spanned::new(302, Span::default());
                if let Some(location) = f.item.as_str() {
                    ActionKind::Redirect {
                        location: self.lw.header_value(location, f.span)?,
                        status: default_status,
                    }
                } else if is_table {
                    let t = self.table(f, "route")?;
                    self.unknown_keys(t, REDIRECT_KEYS, CTX);
                    let location = self
                        .required(t, "location", CTX, "`redirect`")
                        .and_then(|l| self.string(l, CTX))
                        .and_then(|l| self.lw.header_value(l.value, l.span));
                    let status = match t.get("status") {
                        Some(s) => self.integer(s, CTX).and_then(|n| self.redirect_status(n)),
                        None => Some(default_status),
                    };
                    ActionKind::Redirect {
                        location: location?,
                        status: status?,
                    }
                } else {
                    self.wrong_type(
                        f.span,
                        "route",
                        "redirect",
                        "a URL or a table",
                        type_name(f.item),
                    );
                    return None;
                }
            }
        };
        Some(Action {
            kind,
            span: f.whole(),
        })
    }

    fn redirect_status(&mut self, n: Spanned<i128>) -> Option<Spanned<u16>> {
        const REDIRECTS: [u16; 5] = [301, 302, 303, 307, 308];
        match u16::try_from(n.value) {
            Ok(code) if REDIRECTS.contains(&code) => Some(Spanned::new(code, n.span)),
            _ => {
                self.push(
                    Diagnostic::error(
                        Code::InvalidStatus,
                        n.span,
                        format!("`{}` is not a redirect status", n.value),
                    )
                    .label("not 301, 302, 303, 307 or 308")
                    .help(
                        "use 301 or 308 for permanent redirects, 302, 303 or 307 for \
                         temporary ones",
                    ),
                );
                None
            }
        }
    }

    // ------------------------------------------------------------ metrics, admin

    fn metrics(&mut self, t: Tbl<'_>) -> Option<Metrics> {
        const CTX: &str = "metrics";
        self.unknown_keys(t, METRICS_KEYS, CTX);
        let bind = self
            .required(t, "bind", CTX, "`[metrics]`")
            .and_then(|f| self.string(f, CTX))
            .and_then(|s| self.lw.bind_address(s.value, s.span));
        let path = match t.get("path") {
            Some(f) => self
                .string(f, CTX)
                .and_then(|s| self.lw.match_path(s.value, s.span, false)),
            None => Some(Spanned::new("/metrics".into(), Span::default())),
        };
        Some(Metrics {
            bind: bind?,
            path: path?,
            span: t.span,
        })
    }

    fn admin(&mut self, t: Tbl<'_>) -> Admin {
        const CTX: &str = "admin";
        self.unknown_keys(t, ADMIN_KEYS, CTX);
        Admin {
            socket: t.get("socket").and_then(|f| self.file_path(f, CTX)),
            span: t.span,
        }
    }
}
