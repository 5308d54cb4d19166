//! HTTP/1.1, sans-IO: heads, strict parsing, body framing, serializers.
//!
//! Nothing here does IO or reads a clock: callers feed bytes and get
//! verdicts, payload ranges and serialized bytes back. The proxy shell in
//! `crate::proxy` drives these over sockets.
//!
//! Deliberate decisions (see also `runtime/README.md`):
//!
//! - **Content-Length and Transfer-Encoding together**: rejected with 400
//!   and the connection closed (not "use chunked and drop the length").
//! - **Transfer-Encoding**: only exactly one `chunked`, as the only coding,
//!   on HTTP/1.1. Empty elements, `chunked` twice or odd whitespace: 400;
//!   any other coding: 501; on HTTP/1.0: 400.
//! - **Content-Length**: exactly `1*DIGIT` per field (lists refused), several
//!   fields must agree, at most 19 digits without overflow; else 400.
//! - **Line endings**: CRLF only; a bare LF anywhere in a head is a 400.
//! - **Upgrade is refused by ignoring it** (RFC 9110 §7.8 allows a server to
//!   ignore Upgrade): `Upgrade` and `Connection` are hop-by-hop and stripped,
//!   the request is forwarded as plain HTTP/1.1, and an upstream answering
//!   `101` anyway gets the client a 502. No tunnels, no WebSocket yet.
//!   `CONNECT` gets 501.
//! - **Trailers** of chunked bodies (both directions) are parsed strictly,
//!   bounded (16 KiB) and dropped, never forwarded: fields the gateway did
//!   not check cannot ride behind the body. `TE` and `Trailer` are stripped.
//! - **Expect: 100-continue** is answered by the gateway itself (interim
//!   `100 Continue` right before it reads the body it will forward) and not
//!   forwarded; other expectations get 417.
//! - **Absolute-form targets** decide the host; the forwarded `Host` is
//!   rewritten to it and the target becomes origin-form.
//! - **Paths** are normalised once at parse time ([`normalize`]): routes
//!   see, and the upstream receives, the normalised path (original query
//!   kept). A malformed percent escape in the path is a 400.

#![forbid(unsafe_code)]

mod body;
mod date;
pub mod fuzzing;
mod head;
pub mod normalize;
pub mod parse;
pub(crate) mod write;

#[cfg(test)]
mod tests;

pub use body::{
    BodyReader, ChunkError, ChunkedDecoder, Decoded, LAST_CHUNK, MAX_CHUNK_EXT, MAX_TRAILERS,
    put_chunk_head,
};
pub(crate) use date::add_missing_date;
pub(crate) use date::http_date;
pub use head::{BodyFraming, HeaderBlock, RequestHead, ResponseHead, Version};
pub use parse::{
    HeadLimits, Reject, parse_content_length, parse_request_head, parse_response_head,
    valid_authority,
};
pub use write::LocalFields;
pub(crate) use write::own_local_fields;
pub use write::{
    ForwardInfo, LocalResponse, local_body, reason_phrase, status_has_no_body, step_has_no_effect,
    strip_path_prefix, valid_request_id, write_forward_request, write_local_response,
    write_response_head,
};
