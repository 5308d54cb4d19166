//! Runtime errors as data: what failed, on which side, whether a retry is
//! safe, and the status the client gets (if a response can still be sent).

use std::fmt;

/// Which party caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream client (bad input, timeout, went away).
    Client,
    /// The upstream server.
    Upstream,
    /// The gateway itself.
    Internal,
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request head broke a framing or syntax rule (status from the parser).
    BadRequest(&'static str),
    /// Invalid chunked framing in the request body.
    BadRequestBody(&'static str),
    /// Head over `max_header_bytes` or `max_headers`.
    HeadTooLarge,
    /// Body over `max_body_bytes`, declared or streamed.
    BodyTooLarge,
    /// The client sent its head or body too slowly.
    ClientTimeout,
    /// The client closed or reset the connection mid-request.
    ClientClosed,
    /// Writing to the client failed.
    ClientWrite,
    /// No upstream server to try (empty list or all unhealthy).
    NoHealthyUpstream,
    /// Connecting to the upstream failed.
    UpstreamConnect,
    /// The TLS handshake with the upstream failed (certificate not
    /// verified, no common protocol, bad SNI).
    UpstreamTls,
    /// Connecting, or waiting for the response head, took too long.
    UpstreamTimeout,
    /// The upstream sent something that is not valid HTTP/1.1 for us.
    UpstreamProtocol(&'static str),
    /// The upstream closed or reset before the response was complete.
    UpstreamClosed,
    /// The upstream answered a status its `retry` lists, but no retry was
    /// possible any more (the answer was already discarded).
    UpstreamStatus,
    /// The gateway asked for something the runtime cannot do.
    Internal(&'static str),
}

/// A failed request: data, not just a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyError {
    /// What failed.
    pub kind: ErrorKind,
    /// Who caused it.
    pub side: Side,
    /// Whether sending the request again (elsewhere) is safe: true only when
    /// the upstream cannot have seen it.
    pub retryable: bool,
    /// Status for the client when a response can still be written.
    pub status: u16,
}

impl ProxyError {
    /// Builds an error with the default side, status and retry flag of `kind`.
    pub fn new(kind: ErrorKind) -> Self {
        use ErrorKind::*;
        let (side, status, retryable) = match kind {
            BadRequest(_) | BadRequestBody(_) => (Side::Client, 400, false),
            HeadTooLarge => (Side::Client, 431, false),
            BodyTooLarge => (Side::Client, 413, false),
            ClientTimeout => (Side::Client, 408, false),
            ClientClosed | ClientWrite => (Side::Client, 400, false),
            NoHealthyUpstream => (Side::Upstream, 503, true),
            UpstreamConnect | UpstreamTls => (Side::Upstream, 502, true),
            UpstreamTimeout => (Side::Upstream, 504, false),
            UpstreamProtocol(_) | UpstreamClosed | UpstreamStatus => (Side::Upstream, 502, false),
            Internal(_) => (Side::Internal, 500, false),
        };
        ProxyError {
            kind,
            side,
            retryable,
            status,
        }
    }

    /// Same, with an explicit status (parser rejections carry their own).
    pub fn with_status(kind: ErrorKind, status: u16) -> Self {
        ProxyError {
            status,
            ..Self::new(kind)
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ({:?} side, status {}, retryable {})",
            self.kind, self.side, self.status, self.retryable
        )
    }
}

impl std::error::Error for ProxyError {}
