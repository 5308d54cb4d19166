//! Request and response heads: owned, reusable, allocation-free after warm-up.
//!
//! A head owns one byte buffer holding a copy of the raw head as received
//! plus any header added later, and a list of spans into it. Parsing copies
//! the head once out of the connection's read buffer, so that buffer can be
//! reused for the body while the head lives on for the whole exchange.
//! Both buffers keep their capacity across requests on a connection.

use std::ops::Range;

/// HTTP version of a message. Only HTTP/1.0 and HTTP/1.1 exist on the wire here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: close by default, no chunked coding.
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Response only: the body runs until the upstream closes.
    UntilClose,
}

impl BodyFraming {
    /// True when bytes follow the head.
    pub fn has_body(self) -> bool {
        !matches!(self, BodyFraming::None | BodyFraming::Length(0))
    }
}

#[derive(Debug, Clone)]
struct Entry {
    name: Range<u32>,
    value: Range<u32>,
    /// Removed by a header edit: kept in place so spans stay valid.
    removed: bool,
    /// Hop-by-hop: visible to the gateway but never forwarded.
    hop: bool,
}

/// Header fields of one message, in order, with case-insensitive lookup.
#[derive(Debug, Default, Clone)]
pub struct HeaderBlock {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

fn span(r: &Range<u32>) -> Range<usize> {
    r.start as usize..r.end as usize
}

impl HeaderBlock {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }

    /// Stores raw bytes (the head copy) and returns their offset.
    pub(crate) fn store(&mut self, raw: &[u8]) -> u32 {
        let at = self.bytes.len() as u32;
        self.bytes.extend_from_slice(raw);
        at
    }

    pub(crate) fn len_bytes(&self) -> u32 {
        self.bytes.len() as u32
    }

    /// Appends the normalised form of the stored path at `path`.
    pub(crate) fn normalize_into_self(&mut self, path: &Range<u32>) -> bool {
        // The path lives in `bytes` itself: normalise from a copy kept on
        // the stack when short, else from a temporary (rare, long paths).
        let r = span(path);
        let mut stack = [0u8; 512];
        if r.len() <= stack.len() {
            stack[..r.len()].copy_from_slice(&self.bytes[r.clone()]);
            super::normalize::normalize_path(&stack[..r.len()], &mut self.bytes)
        } else {
            let copy = self.bytes[r].to_vec();
            super::normalize::normalize_path(&copy, &mut self.bytes)
        }
    }

    pub(crate) fn raw(&self, r: &Range<u32>) -> &[u8] {
        &self.bytes[span(r)]
    }

    pub(crate) fn push_span(&mut self, name: Range<u32>, value: Range<u32>) {
        self.entries.push(Entry {
            name,
            value,
            removed: false,
            hop: false,
        });
    }

    /// Marks every field called `name` as hop-by-hop (not forwarded).
    pub(crate) fn mark_hop(&mut self, name: &[u8]) {
        for i in 0..self.entries.len() {
            if self.bytes[span(&self.entries[i].name)].eq_ignore_ascii_case(name) {
                self.entries[i].hop = true;
            }
        }
    }

    /// All live fields, in order, hop-by-hop ones included.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries
            .iter()
            .filter(|e| !e.removed)
            .map(|e| (&self.bytes[span(&e.name)], &self.bytes[span(&e.value)]))
    }

    /// Live fields that are forwarded (not hop-by-hop).
    pub(crate) fn iter_end_to_end(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries
            .iter()
            .filter(|e| !e.removed && !e.hop)
            .map(|e| (&self.bytes[span(&e.name)], &self.bytes[span(&e.value)]))
    }

    /// Number of live fields.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| !e.removed).count()
    }

    /// True when there is no live field.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first live field called `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every live end-to-end field called `name`, in order: not those the
    /// sender's `Connection` named (they are for the gateway, not to pass on).
    pub(crate) fn get_all_end_to_end<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter_end_to_end()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every live field called `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Appends a field. The caller vouches for the bytes: names must be
    /// tokens and values must not hold CR, LF or NUL; anything else is
    /// dropped silently here rather than forwarded (no header injection).
    pub fn append(&mut self, name: &str, value: &[u8]) {
        if name.is_empty()
            || !name.bytes().all(super::parse::is_token_byte)
            || value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
        {
            return;
        }
        let n0 = self.store(name.as_bytes());
        let n1 = self.bytes.len() as u32;
        let v0 = self.store(value);
        let v1 = self.bytes.len() as u32;
        self.entries.push(Entry {
            name: n0..n1,
            value: v0..v1,
            removed: false,
            hop: false,
        });
    }

    /// Appends a field whose value is bytes already stored (a span).
    pub(crate) fn append_with_value_span(&mut self, name: &str, value: Range<u32>) {
        let n0 = self.store(name.as_bytes());
        let n1 = self.bytes.len() as u32;
        self.entries.push(Entry {
            name: n0..n1,
            value,
            removed: false,
            hop: false,
        });
    }

    /// Removes every field called `name`.
    pub fn remove(&mut self, name: &str) {
        for i in 0..self.entries.len() {
            if self.bytes[span(&self.entries[i].name)].eq_ignore_ascii_case(name.as_bytes()) {
                self.entries[i].removed = true;
            }
        }
    }

    /// Replaces every field called `name` by one field with `value`.
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.append(name, value);
    }

    /// Removes each of the first `first` fields that a later live field of
    /// the same name follows: a local answer's own `content-type`,
    /// `location` or `date` gives way to one a response step added.
    pub(crate) fn give_way(&mut self, first: usize) {
        for i in 0..first.min(self.entries.len()) {
            let name = span(&self.entries[i].name);
            let superseded = self.entries[i + 1..].iter().any(|later| {
                !later.removed
                    && self.bytes[span(&later.name)].eq_ignore_ascii_case(&self.bytes[name.clone()])
            });
            if superseded {
                self.entries[i].removed = true;
            }
        }
    }
}

/// A parsed, validated request head.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    pub(crate) headers: HeaderBlock,
    pub(crate) method: Range<u32>,
    pub(crate) target: Range<u32>,
    pub(crate) path: Range<u32>,
    /// Normalised path (no query), see [`super::normalize`].
    pub(crate) norm: Range<u32>,
    pub(crate) host: Range<u32>,
    pub(crate) version: Option<Version>,
    pub(crate) framing: Option<BodyFraming>,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    pub(crate) is_head: bool,
    pub(crate) absolute_form: bool,
    /// Set by the connection, not the parser.
    pub(crate) client: Option<std::net::SocketAddr>,
}

impl RequestHead {
    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        std::str::from_utf8(self.headers.raw(&self.method)).unwrap_or("")
    }

    /// The request target exactly as sent.
    pub fn target(&self) -> &[u8] {
        self.headers.raw(&self.target)
    }

    /// Path and query as sent (origin-form), also for an absolute-form target.
    pub fn path(&self) -> &[u8] {
        self.headers.raw(&self.path)
    }

    /// The normalised path without the query: what routes match on and
    /// what is forwarded (see [`super::normalize`]). `*` for `OPTIONS *`.
    pub fn path_only(&self) -> &[u8] {
        self.headers.raw(&self.norm)
    }

    /// The query without `?` (empty if none).
    pub fn query(&self) -> &[u8] {
        let p = self.path();
        match p.iter().position(|&b| b == b'?') {
            Some(i) => &p[i + 1..],
            None => &[],
        }
    }

    pub(crate) fn storage_mut(&mut self) -> &mut HeaderBlock {
        &mut self.headers
    }

    /// The authority that decides routing: from an absolute-form target,
    /// else from the `Host` field.
    pub fn host(&self) -> &[u8] {
        self.headers.raw(&self.host)
    }

    /// Protocol version.
    pub fn version(&self) -> Version {
        self.version.unwrap_or(Version::Http11)
    }

    /// Body framing as decided by the parser.
    pub fn framing(&self) -> BodyFraming {
        self.framing.unwrap_or(BodyFraming::None)
    }

    /// Whether the client allows the connection to stay open.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether the client sent `Expect: 100-continue`.
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }

    /// True for `HEAD`.
    pub fn is_head(&self) -> bool {
        self.is_head
    }

    /// The client's address (the TCP peer), when known.
    pub fn client_addr(&self) -> Option<std::net::SocketAddr> {
        self.client
    }

    /// Header fields.
    pub fn headers(&self) -> &HeaderBlock {
        &self.headers
    }

    /// Header fields, for request header steps (set/add/remove).
    pub fn headers_mut(&mut self) -> &mut HeaderBlock {
        &mut self.headers
    }
}

/// A parsed, validated response head (from an upstream).
#[derive(Debug, Default, Clone)]
pub struct ResponseHead {
    pub(crate) headers: HeaderBlock,
    pub(crate) status: u16,
    pub(crate) reason: Range<u32>,
    pub(crate) version: Option<Version>,
    pub(crate) framing: Option<BodyFraming>,
    pub(crate) keep_alive: bool,
    /// `Content-Length` as sent, kept for HEAD and 304 answers that carry
    /// no body but describe one.
    pub(crate) declared_length: Option<u64>,
}

impl ResponseHead {
    /// Status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Reason phrase as sent.
    pub fn reason(&self) -> &[u8] {
        self.headers.raw(&self.reason)
    }

    /// Protocol version of the upstream.
    pub fn version(&self) -> Version {
        self.version.unwrap_or(Version::Http11)
    }

    /// Body framing.
    pub fn framing(&self) -> BodyFraming {
        self.framing.unwrap_or(BodyFraming::None)
    }

    /// Whether the upstream allows reusing the connection.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Header fields.
    pub fn headers(&self) -> &HeaderBlock {
        &self.headers
    }

    /// Header fields, for response header steps (set/add/remove).
    pub fn headers_mut(&mut self) -> &mut HeaderBlock {
        &mut self.headers
    }
}
