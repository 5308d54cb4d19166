//! Properties for fuzz targets (cargo-fuzz calls these with arbitrary
//! bytes; the unit tests call them with mutated seeds). Each panics when a
//! property breaks, and never otherwise.
//!
//! A fuzz target is then one line, e.g. in `fuzz/fuzz_targets/h1_request.rs`:
//! `fuzz_target!(|data: &[u8]| blitz_runtime::http::fuzzing::request_roundtrip(data));`

use std::net::{IpAddr, Ipv4Addr};

use super::{
    ChunkedDecoder, ForwardInfo, HeadLimits, RequestHead, ResponseHead, parse_request_head,
    parse_response_head, write_forward_request,
};

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 8192,
    max_headers: 64,
    max_body_bytes: 1 << 20,
};

/// The request parser never panics, and a request it accepts, once
/// re-serialized for the upstream, parses back to the same request
/// (method, normalised path, host, framing): the upstream cannot read it
/// differently from the gateway.
pub fn request_roundtrip(data: &[u8]) {
    let mut head = RequestHead::default();
    let Ok(Some(n)) = parse_request_head(data, &LIMITS, &mut head) else {
        return;
    };
    assert!(n <= data.len());
    let mut out = Vec::new();
    let info = ForwardInfo {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        proto: "http",
        request_id: b"r",
        strip_prefix: None,
        fallback_host: b"127.0.0.1:9",
        received: "1.1",
    };
    write_forward_request(&head, &info, head.framing(), &mut out);
    // The upstream reads the forwarded head with room for what the gateway
    // adds (host, x-forwarded-for, x-forwarded-proto, via, x-request-id):
    // an accepted request at the header limit stays acceptable there.
    let upstream_limits = HeadLimits {
        max_header_bytes: LIMITS.max_header_bytes + 1024,
        max_headers: LIMITS.max_headers + 8,
        ..LIMITS
    };
    let mut back = RequestHead::default();
    match parse_request_head(&out, &upstream_limits, &mut back) {
        Ok(Some(m)) => assert_eq!(m, out.len(), "forwarded head not parsed whole"),
        other => panic!(
            "{:?} re-serialized as {:?}: {other:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(back.method(), head.method());
    assert_eq!(back.path_only(), head.path_only());
    let want_host: &[u8] = if head.host().is_empty() {
        b"127.0.0.1:9"
    } else {
        head.host()
    };
    assert_eq!(back.host(), want_host);
    assert_eq!(back.framing(), head.framing());
}

/// The response parser never panics.
pub fn response_head(data: &[u8]) {
    let mut head = ResponseHead::default();
    let _ = parse_response_head(data, &LIMITS, false, &mut head);
    let _ = parse_response_head(data, &LIMITS, true, &mut head);
}

/// The chunked decoder never panics, consumes at least one byte per call
/// until done, only reports payload inside its input, and decodes the same
/// whatever the split of the input.
pub fn chunked(data: &[u8]) {
    let whole = decode(data, data.len().max(1));
    let split = decode(data, 1 + data.len() % 7);
    assert_eq!(whole, split, "result depends on how the input is split");
}

fn decode(data: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), &'static str> {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() && !d.is_done() {
        let end = (pos + step).min(data.len());
        let r = d.decode(&data[pos..end]).map_err(|e| e.0)?;
        assert!(r.consumed <= end - pos && r.data.end <= r.consumed && r.data.start <= r.data.end);
        assert!(r.consumed > 0 || d.is_done(), "no progress");
        out.extend_from_slice(&data[pos..end][r.data.clone()]);
        pos += r.consumed;
    }
    Ok((out, pos, d.is_done()))
}
