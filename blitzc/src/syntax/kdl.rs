//! The KDL front end: KDL v2 text (the `kdl` crate, which keeps every span)
//! lowered into the IR.
//!
//! Shape of the language: each construct is a node; a named item's name is
//! its first argument (`upstream "users" { ... }`); single values are
//! arguments (`bind "0.0.0.0:8080"`), options are properties
//! (`server "127.0.0.1:9001" weight=3`), and blocks are children. Lowering
//! reports every problem it meets and carries on; an item that lacks a
//! required field is reported and left out of the model.

use crate::diag::{Code, Diagnostic, SourceFile, choices_help};
use crate::ir::values::Lowering;
use blitz_ir::units::Rate;
use blitz_ir::*;
use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use std::time::Duration;

/// Lowers one KDL spec file. `None` when the text is not valid KDL.
pub fn lower(file: &SourceFile) -> (Option<Spec>, Vec<Diagnostic>) {
    if let Some(at) = too_deep(&file.text) {
        return (None, vec![too_deep_diagnostic(at)]);
    }
    let doc = match file.text.parse::<KdlDocument>() {
        Ok(doc) => doc,
        Err(error) => return (None, syntax_diagnostics(file, error)),
    };
    let mut lowerer = Lowerer {
        lw: Lowering::new(&file.path),
        file,
    };
    let spec = lowerer.spec(&doc);
    (Some(spec), lowerer.lw.diagnostics)
}

/// How deep `{` blocks may nest. The kdl crate parses children blocks by
/// recursion and overflows the stack (an abort, not an error) a little past
/// 1,200 levels in a release build and past 250 in a debug build on an
/// 8 MiB main thread; a spec nests a handful of levels (`route { match {
/// ... } }`). So a text nested deeper is reported instead of parsed.
const MAX_NESTING: usize = 128;

/// The offset of the first `{` that opens a block nested deeper than
/// [`MAX_NESTING`], counting every `{` and `}` outside strings and comments
/// as the kdl crate reads them (KDL v2: `"..."` with escapes, `"""..."""`,
/// raw `#"..."#` and `#"""..."""#` with any number of `#`, `// ...` and
/// nested `/* ... */`). A `/-` comments out a node, but the crate still
/// parses it, so its blocks count. A single-line string ends at a line
/// break here (it is an error there), so an unclosed quote cannot hide the
/// braces after it: erring on the side of counting.
fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        i = match bytes[i] {
            b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(i);
                }
                i + 1
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i + 1
            }
            b'/' if rest.starts_with(b"//") => {
                i + rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())
            }
            b'/' if rest.starts_with(b"/*") => i + block_comment_len(rest),
            b'"' => i + quoted_len(rest),
            b'#' => i + raw_len(rest),
            _ => i + 1,
        };
    }
    None
}

/// The length of the nested block comment `rest` starts with (to the end
/// of the text when it is not closed).
fn block_comment_len(rest: &[u8]) -> usize {
    let mut open = 0usize;
    let mut j = 0;
    while j < rest.len() {
        if rest[j..].starts_with(b"/*") {
            open += 1;
            j += 2;
        } else if rest[j..].starts_with(b"*/") {
            open -= 1;
            j += 2;
            if open == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    rest.len()
}

/// The length of the quoted string `rest` starts with: `"""` to `"""`, or
/// `"` to `"` or the line's end; a backslash escapes the next byte, or a
/// run of whitespace, newlines included (KDL v2's whitespace escape, which
/// carries a single-line string onto the next line).
fn quoted_len(rest: &[u8]) -> usize {
    let multi_line = rest.starts_with(b"\"\"\"");
    let mut j = if multi_line { 3 } else { 1 };
    while j < rest.len() {
        match rest[j] {
            b'\\' => {
                j += 1;
                let run = whitespace_run(&rest[j..]);
                j += if run > 0 { run } else { 1 };
            }
            b'"' if !multi_line => return j + 1,
            b'"' if rest[j..].starts_with(b"\"\"\"") => return j + 3,
            b'\n' | b'\r' if !multi_line => return j,
            _ => j += 1,
        }
    }
    rest.len()
}

/// The bytes of the KDL whitespace and newlines `rest` starts with
/// (ASCII, and the Unicode spaces and line ends KDL v2 counts).
fn whitespace_run(rest: &[u8]) -> usize {
    let mut j = 0;
    loop {
        let len = match &rest[j..] {
            [b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c, ..] => 1,
            // U+0085, U+00A0
            [0xc2, 0x85 | 0xa0, ..] => 2,
            // U+1680
            [0xe1, 0x9a, 0x80, ..] => 3,
            // U+2000..U+200A, U+2028, U+2029, U+202F
            [0xe2, 0x80, 0x80..=0x8a | 0xa8 | 0xa9 | 0xaf, ..] => 3,
            // U+205F
            [0xe2, 0x81, 0x9f, ..] => 3,
            // U+3000
            [0xe3, 0x80, 0x80, ..] => 3,
            _ => return j,
        };
        j += len;
    }
}

/// The length of the raw string `rest` starts with (`#"..."#`,
/// `##"""..."""##`: no escapes, closed by the quote and as many `#`), or
/// of its `#`s when no quote follows (`#true`, `#null`).
fn raw_len(rest: &[u8]) -> usize {
    let hashes = rest.iter().take_while(|&&b| b == b'#').count();
    if rest.get(hashes) != Some(&b'"') {
        return hashes;
    }
    let multi_line = rest[hashes..].starts_with(b"\"\"\"");
    let quotes = if multi_line { 3 } else { 1 };
    let mut j = hashes + quotes;
    while j < rest.len() {
        if rest[j..].starts_with(&rest[hashes..hashes + quotes])
            && rest[j + quotes..].starts_with(&rest[..hashes])
        {
            return j + quotes + hashes;
        }
        if !multi_line && matches!(rest[j], b'\n' | b'\r') {
            return j;
        }
        j += 1;
    }
    rest.len()
}

fn too_deep_diagnostic(at: usize) -> Diagnostic {
    Diagnostic::error(
        Code::KdlSyntax,
        Span::new(at, at + 1),
        format!("KDL syntax error: blocks nested more than {MAX_NESTING} levels deep"),
    )
    .label(format!("block {} levels deep", MAX_NESTING + 1))
    .help(
        "a spec nests only a few levels (`route \"r\" { match { ... } }`): look for blocks opened with `{` \
         and never closed with `}`",
    )
}

fn syntax_diagnostics(file: &SourceFile, error: kdl::KdlError) -> Vec<Diagnostic> {
    let end = file.text.len();
    error
        .diagnostics
        .into_iter()
        .map(|d| {
            let start = d.span.offset().min(end);
            let mut span = Span::new(start, (start + d.span.len()).min(end));
            if start == 0 && d.label.as_deref() == Some("not property value") {
                span = token_at(&file.text, span.end);
            }
            let message = d.message.unwrap_or_else(|| "invalid KDL".into());
            let help = d.help.unwrap_or_else(|| {
                "see docs/spec.md for the syntax; strings are quoted, blocks are closed with `}`".into()
            });
            Diagnostic::error(Code::KdlSyntax, span, format!("KDL syntax error: {message}"))
                .label(d.label.unwrap_or_else(|| "here".into()))
                .help(help)
        })
        .collect()
}

/// The span of the token where the parser stopped at `stop`, for a kdl
/// diagnostic whose own span is no use: the kdl crate (6.x) gives a
/// malformed property value (`weight=1.2.3`, `weight=`, `body=#"x"`) no
/// recovery point of its own, so its span runs from the start of the
/// document (line 1, column 1) to where parsing stopped, which is inside
/// the bad value or just after it. The token is the run of text around
/// `stop` up to whitespace, `=` or a `{`, `}`, `;` (`1.2.3`, `1x`, `#"x"`);
/// when `stop` is at whitespace or a delimiter, the run just before it
/// (`1e` in `b=1e }`), else the character at `stop` (the `}` where a value
/// was due), or an empty span at a line end.
fn token_at(text: &str, stop: usize) -> Span {
    let bytes = text.as_bytes();
    let stop = stop.min(bytes.len());
    let in_token = |b: u8| !b.is_ascii_whitespace() && !matches!(b, b'=' | b'{' | b'}' | b';');
    let mut start = stop;
    while start > 0 && in_token(bytes[start - 1]) {
        start -= 1;
    }
    let mut end = stop;
    while end < bytes.len() && in_token(bytes[end]) {
        end += 1;
    }
    if start == end {
        // Nothing of a token around `stop`: point at what stands there
        // instead of a value (a `}` or `;`), or at the line's end.
        if let Some(&b) = bytes.get(stop)
            && !b.is_ascii_whitespace()
        {
            end = stop + 1;
        }
    }
    Span::new(start, end)
}

fn span_of(s: miette::SourceSpan) -> Span {
    Span::new(s.offset(), s.offset() + s.len())
}

/// The span of a node's name (where most diagnostics about the node point).
fn name_span(node: &KdlNode) -> Span {
    span_of(node.name().span())
}

fn type_name(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number with a fraction",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

struct Lowerer<'f> {
    lw: Lowering,
    file: &'f SourceFile,
}

/// A node's arguments and properties, checked against what the node takes.
struct Entries<'n> {
    args: Vec<&'n KdlEntry>,
    props: Vec<(&'n str, &'n KdlEntry)>,
}

impl<'n> Entries<'n> {
    fn prop(&self, key: &str) -> Option<&'n KdlEntry> {
        // KDL v2: the rightmost property of a name wins.
        self.props
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| *e)
    }
}

impl Lowerer<'_> {
    fn push(&mut self, d: Diagnostic) {
        self.lw.push(d);
    }

    // ------------------------------------------------------------ node shape

    /// Splits a node's entries and reports properties it does not take,
    /// arguments beyond `max_args`, and children when it takes none.
    fn entries<'n>(
        &mut self,
        node: &'n KdlNode,
        max_args: usize,
        props: &[&str],
        children: bool,
    ) -> Entries<'n> {
        let mut args = Vec::new();
        let mut known_props = Vec::new();
        let node_name = node.name().value();
        for entry in node.entries() {
            match entry.name() {
                None => args.push(entry),
                Some(key) if props.contains(&key.value()) => known_props.push((key.value(), entry)),
                Some(key) => {
                    let help = if props.is_empty() {
                        format!("`{node_name}` takes no properties")
                    } else {
                        choices_help(key.value(), props)
                    };
                    self.push(
                        Diagnostic::error(
                            Code::UnknownKey,
                            span_of(key.span()),
                            format!("unknown property `{}` on `{node_name}`", key.value()),
                        )
                        .label("unknown property")
                        .help(help),
                    );
                }
            }
        }
        if args.len() > max_args {
            let extra = Span::new(
                span_of(args[max_args].span()).start,
                span_of(args[args.len() - 1].span()).end,
            );
            let takes = match max_args {
                0 => "no arguments".to_string(),
                1 => "one argument".to_string(),
                n => format!("at most {n} arguments"),
            };
            self.push(
                Diagnostic::error(
                    Code::WrongType,
                    extra,
                    format!("too many arguments to `{node_name}`"),
                )
                .label("unexpected argument")
                .help(format!("`{node_name}` takes {takes}")),
            );
            args.truncate(max_args);
        }
        if !children && let Some(block) = node.children() {
            self.push(
                Diagnostic::error(
                    Code::WrongType,
                    span_of(block.span()),
                    format!("`{node_name}` takes no block"),
                )
                .label("unexpected block")
                .help(format!("remove the `{{ ... }}` after `{node_name}`")),
            );
        }
        Entries {
            args,
            props: known_props,
        }
    }

    /// The child nodes of `node` whose names are in `allowed`; reports the others.
    fn children<'n>(&mut self, node: &'n KdlNode, allowed: &[&str]) -> Vec<&'n KdlNode> {
        let mut known = Vec::new();
        for child in node.children().map(KdlDocument::nodes).unwrap_or_default() {
            let name = child.name().value();
            if allowed.contains(&name) {
                known.push(child);
            } else {
                self.push(
                    Diagnostic::error(
                        Code::UnknownKey,
                        name_span(child),
                        format!("unknown node `{name}` in `{}`", node.name().value()),
                    )
                    .label("not allowed here")
                    .help(choices_help(name, allowed)),
                );
            }
        }
        known
    }

    /// The one child named `name`; reports repeats.
    fn single<'n>(&mut self, nodes: &[&'n KdlNode], name: &str) -> Option<&'n KdlNode> {
        let mut found = nodes.iter().filter(|n| n.name().value() == name);
        let first = found.next().copied();
        for again in found {
            self.push(
                Diagnostic::error(
                    Code::DuplicateField,
                    name_span(again),
                    format!("`{name}` is given twice"),
                )
                .label("second `".to_string() + name + "`")
                .help(format!("keep one `{name}`"))
                .related(name_span(first.unwrap_or(again)), "first given here"),
            );
        }
        first
    }

    fn missing(&mut self, at: Span, what: &str, field: &str, example: &str) {
        self.push(
            Diagnostic::error(Code::MissingField, at, format!("{what} has no `{field}`"))
                .label(format!("`{field}` is required"))
                .help(format!("add `{example}`")),
        );
    }

    /// The name argument of a named item (`upstream "users"`).
    fn item_name(&mut self, node: &KdlNode, e: &Entries<'_>) -> Option<Spanned<String>> {
        let keyword = node.name().value();
        match e.args.first() {
            Some(entry) => self.string(entry, "the name"),
            None => {
                self.missing(
                    name_span(node),
                    &format!("this `{keyword}`"),
                    "name",
                    &format!("{keyword} \"NAME\""),
                );
                None
            }
        }
    }

    // ------------------------------------------------------------ values

    fn string(&mut self, entry: &KdlEntry, what: &str) -> Option<Spanned<String>> {
        match entry.value() {
            KdlValue::String(s) => Some(Spanned::new(s.clone(), span_of(entry.span()))),
            other => {
                self.wrong_type(entry, what, "a string", other);
                None
            }
        }
    }

    fn integer(&mut self, entry: &KdlEntry, what: &str) -> Option<Spanned<i128>> {
        match entry.value() {
            KdlValue::Integer(n) => Some(Spanned::new(*n, span_of(entry.span()))),
            other => {
                self.wrong_type(entry, what, "an integer", other);
                None
            }
        }
    }

    fn boolean(&mut self, entry: &KdlEntry, what: &str) -> Option<Spanned<bool>> {
        match entry.value() {
            KdlValue::Bool(b) => Some(Spanned::new(*b, span_of(entry.span()))),
            other => {
                self.wrong_type(entry, what, "#true or #false", other);
                None
            }
        }
    }

    fn wrong_type(&mut self, entry: &KdlEntry, what: &str, expected: &str, found: &KdlValue) {
        let mut help = format!("write {what} as {expected}");
        if expected == "a string" && !matches!(found, KdlValue::String(_)) {
            help = format!("{help}, in double quotes");
        }
        if expected.starts_with("#true")
            && matches!(found, KdlValue::String(s) if s == "true" || s == "false")
        {
            help = "KDL v2 booleans are written #true and #false".into();
        }
        self.push(
            Diagnostic::error(
                Code::WrongType,
                span_of(entry.span()),
                format!("{what} must be {expected}"),
            )
            .label(format!("found {}", type_name(found)))
            .help(help),
        );
    }

    /// The single string argument of a leaf node (`bind "0.0.0.0:80"`).
    fn leaf_string(&mut self, node: &KdlNode, what: &str) -> Option<Spanned<String>> {
        let e = self.entries(node, 1, &[], false);
        match e.args.first() {
            Some(entry) => self.string(entry, what),
            None => {
                let name = node.name().value();
                self.missing_value(node, what, &format!("{name} \"...\""));
                None
            }
        }
    }

    fn missing_value(&mut self, node: &KdlNode, what: &str, example: &str) {
        self.push(
            Diagnostic::error(
                Code::WrongType,
                span_of(node.span()),
                format!("`{}` needs a value", node.name().value()),
            )
            .label(format!("{what} is missing"))
            .help(format!("write `{example}`")),
        );
    }

    /// Every argument of a node as strings (alternatives, lists).
    fn string_args(&mut self, node: &KdlNode, what: &str, min: usize) -> Vec<Spanned<String>> {
        let e = self.entries(node, usize::MAX, &[], false);
        if e.args.len() < min {
            let name = node.name().value();
            self.missing_value(node, what, &format!("{name} \"...\""));
        }
        e.args.iter().filter_map(|a| self.string(a, what)).collect()
    }

    fn leaf_duration(&mut self, node: &KdlNode) -> Option<Spanned<Duration>> {
        let text = self.leaf_string(node, "a duration")?;
        self.lw.duration(&text.value, text.span)
    }

    fn duration_entry(&mut self, entry: &KdlEntry, what: &str) -> Option<Spanned<Duration>> {
        let text = self.string(entry, what)?;
        self.lw.duration(&text.value, text.span)
    }

    /// A size: an integer of bytes or a string with a unit.
    fn size_entry(&mut self, entry: &KdlEntry) -> Option<Spanned<u64>> {
        let span = span_of(entry.span());
        match entry.value() {
            KdlValue::Integer(n) => self.lw.size_int(*n, span),
            KdlValue::String(s) => self.lw.size_text(s, span),
            other => {
                self.wrong_type(
                    entry,
                    "a size",
                    "an integer of bytes or a string such as \"16KiB\"",
                    other,
                );
                None
            }
        }
    }

    fn count_entry(&mut self, entry: &KdlEntry, min: u32, what: &str) -> Option<Spanned<u32>> {
        let n = self.integer(entry, what)?;
        self.lw.count(n.value, min, what, n.span)
    }

    fn leaf_entry<'n>(
        &mut self,
        node: &'n KdlNode,
        what: &str,
        example: &str,
    ) -> Option<&'n KdlEntry> {
        let e = self.entries(node, 1, &[], false);
        let first = e.args.first().copied();
        if first.is_none() {
            self.missing_value(node, what, example);
        }
        first
    }

    // ------------------------------------------------------------ the spec

    fn spec(&mut self, doc: &KdlDocument) -> Spec {
        let mut spec = Spec {
            gateway: Gateway {
                name: Spanned::new(super::default_gateway_name(self.file), Span::default()),
                ..Gateway::default()
            },
            ..Spec::default()
        };
        self.version(doc, &mut spec);
        let mut seen_singletons: Vec<&KdlNode> = Vec::new();
        for node in doc.nodes() {
            let keyword = node.name().value();
            if !super::TOP_LEVEL.contains(&keyword) {
                self.push(
                    Diagnostic::error(
                        Code::UnknownKey,
                        name_span(node),
                        format!("unknown node `{keyword}`"),
                    )
                    .label("not a spec construct")
                    .help(choices_help(keyword, super::TOP_LEVEL)),
                );
                continue;
            }
            if matches!(
                keyword,
                "version" | "gateway" | "limits" | "metrics" | "admin"
            ) {
                if let Some(first) = seen_singletons.iter().find(|n| n.name().value() == keyword) {
                    self.push(
                        Diagnostic::error(
                            Code::DuplicateField,
                            name_span(node),
                            format!("`{keyword}` is given twice"),
                        )
                        .label(format!("second `{keyword}`"))
                        .help(format!("merge the two `{keyword}` blocks into one"))
                        .related(name_span(first), "first given here"),
                    );
                    continue;
                }
                seen_singletons.push(node);
            }
            match keyword {
                "version" => {}
                "gateway" => spec.gateway = self.gateway(node, spec.gateway.name.clone()),
                "listener" => {
                    let item = self.listener(node);
                    left_out(&mut spec, ItemKind::Listener, node, item.is_none());
                    spec.listeners.extend(item);
                }
                "limits" => spec.limits = self.limits(node),
                "upstream" => spec.upstreams.extend(self.upstream(node)),
                "jwt" => {
                    let item = self.jwt(node);
                    left_out(&mut spec, ItemKind::Jwt, node, item.is_none());
                    spec.jwts.extend(item);
                }
                "rate-limit" => {
                    let item = self.rate_limit(node);
                    left_out(&mut spec, ItemKind::RateLimit, node, item.is_none());
                    spec.rate_limits.extend(item);
                }
                "plugin" => {
                    let item = self.plugin(node);
                    left_out(&mut spec, ItemKind::Plugin, node, item.is_none());
                    spec.plugins.extend(item);
                }
                "chain" => {
                    let item = self.chain(node);
                    left_out(&mut spec, ItemKind::Chain, node, item.is_none());
                    spec.chains.extend(item);
                }
                "route" => {
                    let item = self.route(node);
                    left_out(&mut spec, ItemKind::Route, node, item.is_none());
                    spec.routes.extend(item);
                }
                "metrics" => spec.metrics = self.metrics(node),
                "admin" => spec.admin = self.admin(node),
                _ => {}
            }
        }
        spec
    }

    fn version(&mut self, doc: &KdlDocument, spec: &mut Spec) {
        let help = "start the spec with `version 1`";
        let Some(first) = doc.nodes().first() else {
            self.push(
                Diagnostic::error(Code::Version, Span::new(0, 0), "the spec is empty")
                    .label("no `version 1`")
                    .help(help),
            );
            return;
        };
        let Some(node) = doc.nodes().iter().find(|n| n.name().value() == "version") else {
            self.push(
                Diagnostic::error(
                    Code::Version,
                    name_span(first),
                    "the spec does not start with `version 1`",
                )
                .label("expected `version 1` before this")
                .help(help),
            );
            return;
        };
        if !std::ptr::eq(node, first) {
            self.push(
                Diagnostic::error(
                    Code::Version,
                    name_span(node),
                    "`version` must be the first node",
                )
                .label("not first")
                .help("move `version 1` to the top of the file"),
            );
        }
        let Some(entry) = self.leaf_entry(node, "the version", "version 1") else {
            return;
        };
        match entry.value() {
            KdlValue::Integer(1) => spec.version = 1,
            other => self.push(
                Diagnostic::error(
                    Code::Version,
                    span_of(entry.span()),
                    format!("unsupported spec version {other}"),
                )
                .label("this blitzc reads version 1")
                .help("write `version 1`"),
            ),
        }
    }

    fn gateway(&mut self, node: &KdlNode, default_name: Spanned<String>) -> Gateway {
        let e = self.entries(node, 1, &[], true);
        let name = e
            .args
            .first()
            .and_then(|a| self.string(a, "the gateway name"))
            .unwrap_or(default_name);
        let kids = self.children(node, &["workers", "access-log"]);
        let mut gateway = Gateway {
            name,
            span: span_of(node.span()),
            ..Gateway::default()
        };
        if let Some(n) = self.single(&kids, "workers")
            && let Some(entry) = self.leaf_entry(n, "the number of workers", "workers \"auto\"")
        {
            let span = span_of(entry.span());
            let workers = match entry.value() {
                KdlValue::String(s) => self.lw.workers_text(s, span),
                KdlValue::Integer(i) => self.lw.workers_int(*i, span),
                other => {
                    self.wrong_type(entry, "workers", "\"auto\" or an integer", other);
                    None
                }
            };
            if let Some(w) = workers {
                gateway.workers = w;
            }
        }
        if let Some(n) = self.single(&kids, "access-log") {
            let e = self.entries(n, 1, &["format"], false);
            let target = match e.args.first() {
                Some(a) => self
                    .string(a, "the access-log target")
                    .and_then(|t| self.lw.log_target(&t.value, t.span)),
                None => {
                    self.missing_value(n, "the target", "access-log \"stdout\" format=\"json\"");
                    None
                }
            };
            let format = match e.prop("format") {
                Some(f) => self
                    .string(f, "the format")
                    .and_then(|f| self.lw.log_format(&f.value, f.span)),
                None => Some(Spanned::new(LogFormat::Json, Span::default())),
            };
            if let (Some(target), Some(format)) = (target, format) {
                gateway.access_log = Some(AccessLog {
                    target,
                    format,
                    span: span_of(n.span()),
                });
            }
        }
        gateway
    }

    fn listener(&mut self, node: &KdlNode) -> Option<Listener> {
        let e = self.entries(node, 1, &[], true);
        let name = self.item_name(node, &e);
        let kids = self.children(node, &["bind", "protocols", "tls"]);
        let bind = match self.single(&kids, "bind") {
            Some(n) => self
                .leaf_string(n, "the address")
                .and_then(|b| self.lw.bind_address(&b.value, b.span)),
            None => {
                let what = format!(
                    "listener `{}`",
                    name.as_ref().map_or("?", |n| n.value.as_str())
                );
                self.missing(name_span(node), &what, "bind", "bind \"0.0.0.0:8080\"");
                None
            }
        };
        let protocols = match self.single(&kids, "protocols") {
            Some(n) => self
                .string_args(n, "a protocol", 1)
                .iter()
                .filter_map(|p| self.lw.protocol(&p.value, p.span))
                .collect(),
            None => vec![Spanned::new(Protocol::H1, Span::default())],
        };
        // A `tls` block none of whose certificates could be read leaves the
        // listener out, as a bad `bind` does: the errors were reported, and
        // "no certificate" (B065) would only repeat them, wrongly.
        let tls = match self.single(&kids, "tls").map(|n| self.tls(n)) {
            Some(None) => return None,
            tls => tls.flatten(),
        };
        Some(Listener {
            name: name?,
            bind: bind?,
            protocols,
            tls,
            span: span_of(node.span()),
        })
    }

    /// `None` when the block had `cert` nodes but none lowered (each one's
    /// error reported).
    fn tls(&mut self, node: &KdlNode) -> Option<Tls> {
        self.entries(node, 0, &[], true);
        let kids = self.children(node, &["cert"]);
        let mut certs = Vec::new();
        let had_entries = !kids.is_empty();
        for n in kids {
            let e = self.entries(n, 1, &["key", "sni"], false);
            let cert = match e.args.first() {
                Some(a) => self
                    .string(a, "the certificate path")
                    .and_then(|p| self.lw.file_path(&p.value, p.span)),
                None => {
                    self.missing_value(
                        n,
                        "the certificate path",
                        "cert \"certs/edge.crt\" key=\"certs/edge.key\"",
                    );
                    None
                }
            };
            let key = match e.prop("key") {
                Some(k) => self
                    .string(k, "the key path")
                    .and_then(|p| self.lw.file_path(&p.value, p.span)),
                None => {
                    self.missing(name_span(n), "this `cert`", "key", "key=\"certs/edge.key\"");
                    None
                }
            };
            let sni = e
                .prop("sni")
                .and_then(|s| self.string(s, "the server name"));
            let sni = sni.map(|s| Spanned::new(s.value.to_ascii_lowercase(), s.span));
            if let (Some(cert), Some(key)) = (cert, key) {
                certs.push(TlsCert {
                    cert,
                    key,
                    sni,
                    span: span_of(n.span()),
                });
            }
        }
        if certs.is_empty() && had_entries {
            return None;
        }
        Some(Tls {
            certs,
            span: span_of(node.span()),
        })
    }

    /// A server's `tls=#true`, `sni=` and `ca=`. `Some(None)`: cleartext;
    /// `None`: an error was reported.
    fn server_tls(
        &mut self,
        tls: Option<&KdlEntry>,
        sni: Option<&KdlEntry>,
        ca: Option<&KdlEntry>,
    ) -> Option<Option<ServerTls>> {
        let on = match tls {
            Some(t) => Some(self.boolean(t, "`tls`")?),
            None => None,
        };
        let sni = match sni {
            Some(s) => Some(self.string(s, "the server name")?),
            None => None,
        };
        let ca = match ca {
            Some(c) => {
                let p = self.string(c, "the CA file path")?;
                Some(self.lw.file_path(&p.value, p.span)?)
            }
            None => None,
        };
        self.lw.server_tls(on, sni, ca, "tls=#true")
    }

    fn limits(&mut self, node: &KdlNode) -> Limits {
        self.entries(node, 0, &[], true);
        let names = [
            "header-timeout",
            "idle-timeout",
            "body-timeout",
            "max-header-bytes",
            "max-headers",
            "max-body-bytes",
        ];
        let kids = self.children(node, &names);
        let mut limits = Limits {
            span: span_of(node.span()),
            ..Limits::default()
        };
        for name in names {
            let Some(n) = self.single(&kids, name) else {
                continue;
            };
            match name {
                "header-timeout" | "idle-timeout" | "body-timeout" => {
                    if let Some(d) = self.leaf_duration(n) {
                        match name {
                            "header-timeout" => limits.header_timeout = d,
                            "idle-timeout" => limits.idle_timeout = d,
                            _ => limits.body_timeout = d,
                        }
                    }
                }
                "max-headers" => {
                    if let Some(entry) =
                        self.leaf_entry(n, "a number of headers", "max-headers 100")
                        && let Some(c) = self.count_entry(entry, 1, "max-headers")
                    {
                        limits.max_headers = Spanned::new(u64::from(c.value), c.span);
                    }
                }
                _ => {
                    if let Some(entry) = self.leaf_entry(n, "a size", &format!("{name} \"16KiB\""))
                        && let Some(size) = self.size_entry(entry)
                    {
                        if name == "max-header-bytes" {
                            limits.max_header_bytes = size;
                        } else {
                            limits.max_body_bytes = size;
                        }
                    }
                }
            }
        }
        limits
    }

    fn upstream(&mut self, node: &KdlNode) -> Option<Upstream> {
        let e = self.entries(node, 1, &[], true);
        let name = self.item_name(node, &e);
        let kids = self.children(
            node,
            &[
                "balance",
                "server",
                "pool",
                "health-check",
                "timeouts",
                "retry",
            ],
        );
        let mut balance = Balance {
            algorithm: Spanned::new(BalanceAlgorithm::RoundRobin, Span::default()),
            key: None,
            span: Span::default(),
        };
        if let Some(n) = self.single(&kids, "balance") {
            let e = self.entries(n, 1, &["key"], false);
            balance.span = span_of(n.span());
            match e.args.first() {
                Some(a) => {
                    if let Some(alg) = self
                        .string(a, "the algorithm")
                        .and_then(|s| self.lw.balance(&s.value, s.span))
                    {
                        balance.algorithm = alg;
                    }
                }
                None => self.missing_value(n, "the algorithm", "balance \"round-robin\""),
            }
            balance.key = e
                .prop("key")
                .and_then(|k| self.string(k, "the key"))
                .and_then(|k| self.lw.request_key(&k.value, k.span));
        }
        let mut servers = Vec::new();
        for n in kids.iter().filter(|n| n.name().value() == "server") {
            let e = self.entries(n, 1, &["weight", "tls", "sni", "ca"], false);
            let address = match e.args.first() {
                Some(a) => self
                    .string(a, "the address")
                    .and_then(|s| self.lw.server_address(&s.value, s.span)),
                None => {
                    self.missing_value(n, "the address", "server \"127.0.0.1:9001\"");
                    None
                }
            };
            let weight = match e.prop("weight") {
                Some(w) => self.count_entry(w, 0, "weight"),
                None => Some(Spanned::new(1, Span::default())),
            };
            let tls = self.server_tls(e.prop("tls"), e.prop("sni"), e.prop("ca"));
            if let (Some(address), Some(weight), Some(tls)) = (address, weight, tls) {
                servers.push(Server {
                    address,
                    weight,
                    tls,
                    span: span_of(n.span()),
                });
            }
        }
        if !kids.iter().any(|n| n.name().value() == "server") {
            let what = format!(
                "upstream `{}`",
                name.as_ref().map_or("?", |n| n.value.as_str())
            );
            self.missing(
                name_span(node),
                &what,
                "server",
                "server \"127.0.0.1:9001\"",
            );
        }
        let mut pool = Pool::default();
        if let Some(n) = self.single(&kids, "pool") {
            let e = self.entries(n, 0, &["max-idle", "idle-timeout"], false);
            pool.span = span_of(n.span());
            if let Some(m) = e
                .prop("max-idle")
                .and_then(|m| self.count_entry(m, 0, "max-idle"))
            {
                pool.max_idle = m;
            }
            if let Some(t) = e
                .prop("idle-timeout")
                .and_then(|t| self.duration_entry(t, "idle-timeout"))
            {
                pool.idle_timeout = t;
            }
        }
        let health_check = self
            .single(&kids, "health-check")
            .map(|n| self.health_check(n));
        let mut timeouts = UpstreamTimeouts::default();
        if let Some(n) = self.single(&kids, "timeouts") {
            let e = self.entries(n, 0, &["connect", "response"], false);
            timeouts.span = span_of(n.span());
            if let Some(t) = e
                .prop("connect")
                .and_then(|t| self.duration_entry(t, "connect"))
            {
                timeouts.connect = t;
            }
            if let Some(t) = e
                .prop("response")
                .and_then(|t| self.duration_entry(t, "response"))
            {
                timeouts.response = t;
            }
        }
        let retry = self.single(&kids, "retry").and_then(|n| self.retry(n));
        Some(Upstream {
            name: name?,
            balance,
            servers,
            pool,
            health_check,
            timeouts,
            retry,
            span: span_of(node.span()),
        })
    }

    fn health_check(&mut self, node: &KdlNode) -> HealthCheck {
        let e = self.entries(
            node,
            0,
            &[
                "path",
                "interval",
                "timeout",
                "healthy",
                "unhealthy",
                "expect",
            ],
            false,
        );
        let d = Span::default();
        let mut hc = HealthCheck {
            path: Spanned::new(HealthCheck::DEFAULT_PATH.into(), d),
            interval: Spanned::new(HealthCheck::DEFAULT_INTERVAL, d),
            timeout: Spanned::new(HealthCheck::DEFAULT_TIMEOUT, d),
            healthy: Spanned::new(HealthCheck::DEFAULT_HEALTHY, d),
            unhealthy: Spanned::new(HealthCheck::DEFAULT_UNHEALTHY, d),
            expect: Spanned::new(HealthCheck::DEFAULT_EXPECT, d),
            span: span_of(node.span()),
        };
        if let Some(p) = e.prop("path").and_then(|p| self.string(p, "the path")) {
            hc.path = p;
        }
        if let Some(t) = e
            .prop("interval")
            .and_then(|t| self.duration_entry(t, "interval"))
        {
            hc.interval = t;
        }
        if let Some(t) = e
            .prop("timeout")
            .and_then(|t| self.duration_entry(t, "timeout"))
        {
            hc.timeout = t;
        }
        if let Some(n) = e
            .prop("healthy")
            .and_then(|n| self.count_entry(n, 1, "healthy"))
        {
            hc.healthy = n;
        }
        if let Some(n) = e
            .prop("unhealthy")
            .and_then(|n| self.count_entry(n, 1, "unhealthy"))
        {
            hc.unhealthy = n;
        }
        if let Some(entry) = e.prop("expect") {
            let span = span_of(entry.span());
            let text = match entry.value() {
                KdlValue::String(s) => Some(s.clone()),
                KdlValue::Integer(n) => Some(n.to_string()),
                other => {
                    self.wrong_type(entry, "`expect`", "a string", other);
                    None
                }
            };
            if let Some(r) = text.and_then(|t| self.lw.status_range(&t, span)) {
                hc.expect = r;
            }
        }
        hc
    }

    /// `retry attempts=2 on="connect-error" "502" "503"`: the `on` property
    /// and every argument are retry conditions.
    fn retry(&mut self, node: &KdlNode) -> Option<Retry> {
        let e = self.entries(node, usize::MAX, &["attempts", "on", "total"], false);
        let attempts = match e.prop("attempts") {
            Some(a) => self.count_entry(a, 0, "attempts")?,
            None => {
                self.missing(name_span(node), "`retry`", "attempts", "retry attempts=2");
                return None;
            }
        };
        let mut on = Vec::new();
        for entry in e.prop("on").into_iter().chain(e.args.iter().copied()) {
            let span = span_of(entry.span());
            let text = match entry.value() {
                KdlValue::String(s) => s.clone(),
                KdlValue::Integer(n) => n.to_string(),
                other => {
                    self.wrong_type(entry, "a retry condition", "a string", other);
                    continue;
                }
            };
            on.extend(self.lw.retry_on(&text, span));
        }
        if on.is_empty() {
            on.push(Spanned::new(RetryOn::ConnectError, Span::default()));
        }
        let total = e
            .prop("total")
            .and_then(|t| self.duration_entry(t, "total"));
        Some(Retry {
            attempts,
            on,
            total,
            span: span_of(node.span()),
        })
    }

    fn jwt(&mut self, node: &KdlNode) -> Option<Jwt> {
        let e = self.entries(node, 1, &[], true);
        let name = self.item_name(node, &e);
        let kids = self.children(
            node,
            &[
                "issuer",
                "audience",
                "algorithms",
                "jwks-file",
                "jwks-url",
                "roles-claim",
                "leeway",
            ],
        );
        let what = format!("jwt `{}`", name.as_ref().map_or("?", |n| n.value.as_str()));
        let issuer = self
            .single(&kids, "issuer")
            .and_then(|n| self.leaf_string(n, "the issuer"));
        let audience = match self.single(&kids, "audience") {
            Some(n) => self.string_args(n, "an audience", 1),
            None => Vec::new(),
        };
        let algorithms: Vec<_> = match self.single(&kids, "algorithms") {
            Some(n) => self
                .string_args(n, "an algorithm", 1)
                .iter()
                .filter_map(|a| self.lw.jwt_algorithm(&a.value, a.span))
                .collect(),
            None => {
                self.missing(name_span(node), &what, "algorithms", "algorithms \"RS256\"");
                Vec::new()
            }
        };
        let file = self.single(&kids, "jwks-file");
        let url = self.single(&kids, "jwks-url");
        let keys = match (file, url) {
            (Some(f), Some(u)) => {
                self.push(
                    Diagnostic::error(
                        Code::ConflictingFields,
                        name_span(u),
                        "both `jwks-file` and `jwks-url` are given",
                    )
                    .label("second key source")
                    .help("keep one of them: keys come from a file or from a URL")
                    .related(name_span(f), "first key source"),
                );
                // Keep the jwt (with its file), so routes using it do not
                // also report it unknown.
                self.leaf_string(f, "the JWKS path")
                    .and_then(|p| self.lw.file_path(&p.value, p.span))
                    .map(|p| Spanned::new(JwksSource::File(p.value), p.span))
            }
            (Some(f), None) => self
                .leaf_string(f, "the JWKS path")
                .and_then(|p| self.lw.file_path(&p.value, p.span))
                .map(|p| Spanned::new(JwksSource::File(p.value), p.span)),
            (None, Some(u)) => {
                let e = self.entries(u, 1, &["refresh"], false);
                let refresh = match e.prop("refresh") {
                    Some(r) => self.duration_entry(r, "refresh").map(|d| d.value),
                    None => Some(Jwt::DEFAULT_JWKS_REFRESH),
                };
                let url_text = match e.args.first() {
                    Some(a) => self.string(a, "the JWKS URL"),
                    None => {
                        self.missing_value(
                            u,
                            "the URL",
                            "jwks-url \"https://sso.example.com/jwks\"",
                        );
                        None
                    }
                };
                let url_text = url_text.filter(|t| {
                    let ok = t.value.starts_with("https://") || t.value.starts_with("http://");
                    if !ok {
                        self.lw.push(
                            Diagnostic::error(Code::InvalidValue, t.span, format!("invalid JWKS URL `{}`", t.value))
                                .label("not an http(s) URL")
                                .help("write the full URL, e.g. \"https://sso.example.com/.well-known/jwks.json\""),
                        );
                    }
                    ok
                });
                match (url_text, refresh) {
                    (Some(t), Some(refresh)) => Some(Spanned::new(
                        JwksSource::Url {
                            url: t.value,
                            refresh,
                        },
                        t.span,
                    )),
                    _ => None,
                }
            }
            (None, None) => {
                self.missing(
                    name_span(node),
                    &what,
                    "jwks-file",
                    "jwks-file \"keys/jwks.json\"",
                );
                None
            }
        };
        let roles_claim = self
            .single(&kids, "roles-claim")
            .and_then(|n| self.leaf_string(n, "the claim name"))
            .unwrap_or_else(|| Spanned::new(Jwt::DEFAULT_ROLES_CLAIM.into(), Span::default()));
        let leeway = self
            .single(&kids, "leeway")
            .and_then(|n| self.leaf_duration(n))
            .unwrap_or(Spanned::new(Jwt::DEFAULT_LEEWAY, Span::default()));
        Some(Jwt {
            name: name?,
            issuer,
            audience,
            algorithms,
            keys: keys?,
            roles_claim,
            leeway,
            span: span_of(node.span()),
        })
    }

    fn rate_limit(&mut self, node: &KdlNode) -> Option<RateLimit> {
        let e = self.entries(node, 1, &[], true);
        let name = self.item_name(node, &e);
        let kids = self.children(node, &["key", "rate", "ebpf"]);
        let what = format!(
            "rate-limit `{}`",
            name.as_ref().map_or("?", |n| n.value.as_str())
        );
        let key = match self.single(&kids, "key") {
            Some(n) => self
                .leaf_string(n, "the key")
                .and_then(|k| self.lw.request_key(&k.value, k.span)),
            None => {
                self.missing(name_span(node), &what, "key", "key \"client-ip\"");
                None
            }
        };
        let mut burst = None;
        let rate: Option<Spanned<Rate>> = match self.single(&kids, "rate") {
            Some(n) => {
                let e = self.entries(n, 1, &["burst"], false);
                burst = e.prop("burst").and_then(|b| self.integer(b, "burst"));
                match e.args.first() {
                    Some(a) => self
                        .string(a, "the rate")
                        .and_then(|r| self.lw.rate(&r.value, r.span)),
                    None => {
                        self.missing_value(n, "the rate", "rate \"100/s\" burst=200");
                        None
                    }
                }
            }
            None => {
                self.missing(name_span(node), &what, "rate", "rate \"100/s\"");
                None
            }
        };
        let burst = match burst {
            // 0 is left to validation (B041); the range is TOML's, so
            // both forms accept the same specs.
            Some(b) => match u32::try_from(b.value) {
                Ok(v) => Some(Spanned::new(u64::from(v), b.span)),
                Err(_) => {
                    self.push(
                        Diagnostic::error(
                            Code::OutOfRange,
                            b.span,
                            format!("burst `{}` is out of range", b.value),
                        )
                        .label("must be a positive whole number")
                        .help("write the bucket size, e.g. burst=200"),
                    );
                    None
                }
            },
            None => rate
                .as_ref()
                .map(|r| Spanned::new(r.value.count, Span::default())),
        };
        let ebpf = match self.single(&kids, "ebpf") {
            Some(n) => self
                .leaf_entry(n, "#true or #false", "ebpf #true")
                .and_then(|b| self.boolean(b, "ebpf")),
            None => Some(Spanned::new(false, Span::default())),
        };
        Some(RateLimit {
            name: name?,
            key: key?,
            rate: rate?,
            burst: burst?,
            ebpf: ebpf?,
            span: span_of(node.span()),
        })
    }

    fn plugin(&mut self, node: &KdlNode) -> Option<Plugin> {
        let e = self.entries(node, 1, &[], true);
        let name = self.item_name(node, &e);
        let kids = self.children(node, &["wasm", "config"]);
        let wasm = match self.single(&kids, "wasm") {
            Some(n) => self
                .leaf_string(n, "the module path")
                .and_then(|p| self.lw.file_path(&p.value, p.span)),
            None => {
                let what = format!(
                    "plugin `{}`",
                    name.as_ref().map_or("?", |n| n.value.as_str())
                );
                self.missing(name_span(node), &what, "wasm", "wasm \"plugins/NAME.wasm\"");
                None
            }
        };
        let config = self
            .single(&kids, "config")
            .and_then(|n| self.leaf_string(n, "the configuration"))
            .unwrap_or_else(|| Spanned::new(String::new(), Span::default()));
        Some(Plugin {
            name: name?,
            wasm: wasm?,
            config,
            span: span_of(node.span()),
        })
    }

    fn chain(&mut self, node: &KdlNode) -> Option<Chain> {
        let e = self.entries(node, 1, &[], true);
        let name = self.item_name(node, &e);
        let kids = self.children(node, STEP_NODES);
        let steps = kids.iter().filter_map(|n| self.step(n)).collect();
        Some(Chain {
            name: name?,
            steps,
            span: span_of(node.span()),
        })
    }

    fn route(&mut self, node: &KdlNode) -> Option<Route> {
        let e = self.entries(node, 1, &[], true);
        let name = self.item_name(node, &e);
        let mut allowed = vec!["match"];
        allowed.extend_from_slice(STEP_NODES);
        allowed.extend_from_slice(ACTION_NODES);
        let kids = self.children(node, &allowed);
        let matcher = self.single(&kids, "match").map(|m| self.matcher(m));
        let mut steps = Vec::new();
        let mut action: Option<Action> = None;
        let mut first_action: Option<&KdlNode> = None;
        for n in &kids {
            let keyword = n.name().value();
            if STEP_NODES.contains(&keyword) {
                if let Some(first) = first_action {
                    self.push(
                        Diagnostic::warning(
                            Code::StepAfterAction,
                            name_span(n),
                            format!("`{keyword}` after the action"),
                        )
                        .label("runs before the action regardless")
                        .help(format!(
                            "steps run in order, then the action: move `{keyword}` above it"
                        ))
                        .related(name_span(first), "the action"),
                    );
                }
                steps.extend(self.step(n));
            } else if ACTION_NODES.contains(&keyword) {
                if let Some(first) = first_action {
                    self.push(
                        Diagnostic::error(
                            Code::ConflictingFields,
                            name_span(n),
                            "a route has exactly one action",
                        )
                        .label("second action")
                        .help("keep one of `proxy`, `respond` and `redirect`")
                        .related(name_span(first), "first action"),
                    );
                    continue;
                }
                first_action = Some(n);
                action = self.action(n);
            }
        }
        if first_action.is_none() {
            let label = name.as_ref().map_or("?".to_string(), |n| n.value.clone());
            self.push(
                Diagnostic::error(
                    Code::MissingField,
                    name_span(node),
                    format!("route `{label}` has no action"),
                )
                .label("no `proxy`, `respond` or `redirect`")
                .help("end the route with one action, e.g. `proxy \"UPSTREAM\"` or `respond 200`"),
            );
        }
        Some(Route {
            name: name?,
            matcher,
            steps,
            action: action?,
            span: span_of(node.span()),
        })
    }

    fn matcher(&mut self, node: &KdlNode) -> Match {
        self.entries(node, 0, &[], true);
        let kids = self.children(
            node,
            &[
                "host",
                "path",
                "path-prefix",
                "path-regex",
                "method",
                "header",
                "query",
            ],
        );
        let mut conditions = Vec::new();
        for n in kids {
            let keyword = n.name().value();
            let test = match keyword {
                "header" | "query" => {
                    let mut args = self.string_args(n, "a name", 1).into_iter();
                    let Some(name) = args.next() else { continue };
                    if keyword == "header" {
                        let Some(name) = self.lw.header_name(&name.value, name.span) else {
                            continue;
                        };
                        let Some(values) = self.lw.match_header_values(args) else {
                            continue;
                        };
                        Test::Header { name, values }
                    } else {
                        Test::Query {
                            name,
                            values: args.collect(),
                        }
                    }
                }
                _ => {
                    let args = self.string_args(n, "a value", 1);
                    if args.is_empty() {
                        continue;
                    }
                    match keyword {
                        "host" => Test::Host(
                            args.iter()
                                .filter_map(|a| self.lw.host_pattern(&a.value, a.span))
                                .collect(),
                        ),
                        "path" => Test::Path(
                            args.iter()
                                .filter_map(|a| self.lw.match_path(&a.value, a.span, false))
                                .collect(),
                        ),
                        "path-prefix" => Test::PathPrefix(
                            args.iter()
                                .filter_map(|a| self.lw.match_path(&a.value, a.span, true))
                                .collect(),
                        ),
                        "path-regex" => Test::PathRegex(
                            args.iter()
                                .filter_map(|a| self.lw.regex(&a.value, a.span))
                                .collect(),
                        ),
                        _ => Test::Method(
                            args.iter()
                                .filter_map(|a| self.lw.method(&a.value, a.span))
                                .collect(),
                        ),
                    }
                }
            };
            conditions.push(Condition {
                test,
                span: span_of(n.span()),
            });
        }
        Match {
            conditions,
            span: span_of(node.span()),
        }
    }

    fn step(&mut self, node: &KdlNode) -> Option<Step> {
        let keyword = node.name().value();
        let reference = |this: &mut Self, kind: ItemKind| {
            this.leaf_string(node, &format!("the {} name", kind.keyword()))
                .map(|n| Ref::new(kind, n))
        };
        let kind = match keyword {
            "auth" => StepKind::Auth(reference(self, ItemKind::Jwt)?),
            "rate-limit" => StepKind::RateLimit(reference(self, ItemKind::RateLimit)?),
            "plugin" => StepKind::Plugin(reference(self, ItemKind::Plugin)?),
            "use" => StepKind::Use(reference(self, ItemKind::Chain)?),
            "require-role" => StepKind::RequireRole(self.string_args(node, "a role", 1)),
            "request-headers" => StepKind::RequestHeaders(self.header_rewrite(node)),
            "response-headers" => StepKind::ResponseHeaders(self.header_rewrite(node)),
            _ => return None,
        };
        Some(Step {
            kind,
            span: span_of(node.span()),
        })
    }

    fn header_rewrite(&mut self, node: &KdlNode) -> HeaderRewrite {
        self.entries(node, 0, &[], true);
        let kids = self.children(node, &["set", "add", "remove"]);
        let mut rewrite = HeaderRewrite::default();
        for n in kids {
            let keyword = n.name().value();
            if keyword == "remove" {
                for name in self.string_args(n, "a header name", 1) {
                    rewrite
                        .remove
                        .extend(self.lw.header_name(&name.value, name.span));
                }
                continue;
            }
            let e = self.entries(n, 2, &[], false);
            if e.args.len() < 2 {
                self.missing_value(
                    n,
                    "a header name and value",
                    &format!("{keyword} \"x-name\" \"value\""),
                );
                continue;
            }
            let name = self
                .string(e.args[0], "the header name")
                .and_then(|s| self.lw.header_name(&s.value, s.span));
            let value = self
                .string(e.args[1], "the header value")
                .and_then(|s| self.lw.header_value(&s.value, s.span));
            if let (Some(name), Some(value)) = (name, value) {
                if keyword == "set" {
                    rewrite.set.push((name, value));
                } else {
                    rewrite.add.push((name, value));
                }
            }
        }
        rewrite
    }

    fn action(&mut self, node: &KdlNode) -> Option<Action> {
        let keyword = node.name().value();
        let kind = match keyword {
            "proxy" => {
                let e = self.entries(node, 1, &["strip-prefix"], false);
                let upstream = match e.args.first() {
                    Some(a) => self.string(a, "the upstream name")?,
                    None => {
                        self.missing_value(node, "the upstream", "proxy \"UPSTREAM\"");
                        return None;
                    }
                };
                let strip_prefix = e
                    .prop("strip-prefix")
                    .and_then(|p| self.string(p, "the prefix"));
                ActionKind::Proxy {
                    upstream: Ref::new(ItemKind::Upstream, upstream),
                    strip_prefix,
                }
            }
            "respond" => {
                let e = self.entries(node, 1, &["body", "content-type"], false);
                let status = match e.args.first() {
                    Some(a) => {
                        let n = self.integer(a, "the status")?;
                        self.lw.status(n.value, 200..=599, n.span)?
                    }
                    None => {
                        self.missing_value(node, "the status", "respond 200 body=\"ok\"");
                        return None;
                    }
                };
                let body = e
                    .prop("body")
                    .and_then(|b| self.string(b, "the body"))
                    .unwrap_or_else(|| Spanned::new(String::new(), Span::default()));
                let content_type = e
                    .prop("content-type")
                    .and_then(|c| self.string(c, "the content type"))
                    .and_then(|c| self.lw.header_value(&c.value, c.span));
                ActionKind::Respond {
                    status,
                    body,
                    content_type,
                }
            }
            _ => {
                let e = self.entries(node, 1, &["status"], false);
                let location = match e.args.first() {
                    Some(a) => self.string(a, "the location")?,
                    None => {
                        self.missing_value(
                            node,
                            "the location",
                            "redirect \"https://example.com/\"",
                        );
                        return None;
                    }
                };
                let location = self.lw.header_value(&location.value, location.span)?;
                let status = match e.prop("status") {
                    Some(s) => {
                        let n = self.integer(s, "the status")?;
                        self.redirect_status(n)?
                    }
                    None => Spanned::new(302, Span::default()),
                };
                ActionKind::Redirect { location, status }
            }
        };
        Some(Action {
            kind,
            span: span_of(node.span()),
        })
    }

    fn redirect_status(&mut self, n: Spanned<i128>) -> Option<Spanned<u16>> {
        const REDIRECTS: [i128; 5] = [301, 302, 303, 307, 308];
        if REDIRECTS.contains(&n.value) {
            return Some(Spanned::new(n.value as u16, n.span));
        }
        self.push(
            Diagnostic::error(
                Code::InvalidStatus,
                n.span,
                format!("`{}` is not a redirect status", n.value),
            )
            .label("not 301, 302, 303, 307 or 308")
            .help("use 301 or 308 for permanent redirects, 302, 303 or 307 for temporary ones"),
        );
        None
    }

    fn metrics(&mut self, node: &KdlNode) -> Option<Metrics> {
        self.entries(node, 0, &[], true);
        let kids = self.children(node, &["bind", "path"]);
        let bind = match self.single(&kids, "bind") {
            Some(n) => self
                .leaf_string(n, "the address")
                .and_then(|b| self.lw.bind_address(&b.value, b.span)),
            None => {
                self.missing(
                    name_span(node),
                    "`metrics`",
                    "bind",
                    "bind \"127.0.0.1:9090\"",
                );
                None
            }
        };
        let path = match self.single(&kids, "path") {
            Some(n) => self
                .leaf_string(n, "the path")
                .and_then(|p| self.lw.match_path(&p.value, p.span, false)),
            None => Some(Spanned::new("/metrics".into(), Span::default())),
        };
        Some(Metrics {
            bind: bind?,
            path: path?,
            span: span_of(node.span()),
        })
    }

    fn admin(&mut self, node: &KdlNode) -> Admin {
        self.entries(node, 0, &[], true);
        let kids = self.children(node, &["socket"]);
        let socket = self
            .single(&kids, "socket")
            .and_then(|n| self.leaf_string(n, "the socket path"))
            .and_then(|p| self.lw.file_path(&p.value, p.span));
        Admin {
            socket,
            span: span_of(node.span()),
        }
    }
}

/// Records a named item the front end reported and left out.
fn left_out(spec: &mut Spec, kind: ItemKind, node: &KdlNode, is_left_out: bool) {
    let name = node
        .entries()
        .iter()
        .find(|e| e.name().is_none())
        .and_then(|e| e.value().as_string());
    if let (true, Some(name)) = (is_left_out, name) {
        spec.left_out.push((kind, name.to_string()));
    }
}

/// Nodes that are steps, in a route or a chain.
const STEP_NODES: &[&str] = &[
    "auth",
    "require-role",
    "rate-limit",
    "request-headers",
    "response-headers",
    "plugin",
    "use",
];

/// Nodes that are a route's action.
const ACTION_NODES: &[&str] = &["proxy", "respond", "redirect"];

#[cfg(test)]
mod tests {
    use super::*;

    /// `depth` nested blocks `a { a { ... } }` after a valid head.
    fn nested(depth: usize) -> String {
        format!(
            "version 1\nroute \"r\" {{ respond 200 }}\n{}{}\n",
            "a {".repeat(depth),
            "}".repeat(depth)
        )
    }

    fn check(text: &str) -> (bool, Vec<Diagnostic>) {
        let (spec, diagnostics) = lower(&SourceFile::new("spec.kdl", text));
        (spec.is_some(), diagnostics)
    }

    #[test]
    fn nesting_past_the_limit_is_reported_at_the_first_brace_too_deep() {
        let text = nested(MAX_NESTING + 1);
        let last = text.match_indices('{').nth(MAX_NESTING + 1).map(|(i, _)| i);
        let (parsed, diagnostics) = check(&text);
        assert!(!parsed);
        assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
        assert_eq!(diagnostics[0].code, Code::KdlSyntax);
        assert_eq!(Some(diagnostics[0].span.start), last);
        assert_eq!(diagnostics[0].span.len(), 1);
        // Far past where the kdl crate would overflow the stack.
        let (parsed, diagnostics) = check(&nested(100_000));
        assert!(!parsed && diagnostics.len() == 1, "{diagnostics:?}");
    }

    /// The limit stays clear of the kdl crate's stack overflow on the 8 MiB
    /// main thread `blitzc` runs on, in this (debug) build too.
    #[test]
    fn nesting_at_the_limit_parses_on_a_main_thread_stack() {
        let (parsed, _) = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(|| check(&nested(MAX_NESTING)))
            .expect("a thread")
            .join()
            .expect("no overflow");
        assert!(parsed);
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_nest() {
        let deep = "{".repeat(MAX_NESTING + 1);
        for hidden in [
            format!("\"{deep}\""),
            format!("\"\\\"{deep}\""),
            format!("\"\"\"\n\"{deep}\"\n\"\"\""),
            format!("#\"{deep}\"#"),
            format!("##\"\"#{deep}\"##"),
            format!("#\"\"\"\n\"\"\"{deep}\n\"\"\"#"),
            format!("/* /* */ {deep} */"),
            format!("#true // {deep}\n"),
            // A whitespace escape carries a string over its line end.
            format!("\"a\\   \n{deep}\""),
            format!("\"a\\\r\n{deep}\""),
            format!("\"a\\\u{3000}\n {deep}\""),
        ] {
            let text = format!("node {hidden}\n");
            assert_eq!(too_deep(&text), None, "{text}");
        }
    }

    #[test]
    fn an_unclosed_quote_does_not_hide_the_braces_after_its_line() {
        let deep = "a {".repeat(MAX_NESTING + 1);
        assert!(too_deep(&format!("node \"open\n{deep}")).is_some());
        assert!(too_deep(&format!("node #\"open\n{deep}")).is_some());
        // Slashdashed nodes are parsed all the same.
        assert!(too_deep(&format!("/-node {deep}")).is_some());
        // A `}` inside an escaped-over line end is string, not a close.
        let hidden_closes = "n \"a\\  \n}\" {".repeat(MAX_NESTING + 1);
        assert!(too_deep(&hidden_closes).is_some());
    }

    #[test]
    fn a_malformed_property_value_is_spanned_where_it_stands() {
        for (line, bad) in [
            ("server \"x\" weight=1.2.3 }", "1.2.3"),
            ("server \"x\" weight=1x }", "1x"),
            ("server \"x\" body=#\"x\" }", "#\"x\""),
            ("server \"x\" b=1e }", "1e"),
            ("server \"x\" weight= }", "}"),
        ] {
            let text = format!("version 1\nupstream \"u\" {{\n    {line}\n");
            let (parsed, diagnostics) = check(&text);
            assert!(!parsed);
            let spans: Vec<&str> = diagnostics
                .iter()
                .map(|d| &text[d.span.start..d.span.end])
                .collect();
            assert_eq!(spans, [bad], "{line}: {diagnostics:?}");
        }
    }
}
