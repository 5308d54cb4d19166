//! Differential: the gateway's validate-only HPACK check
//! (`runtime/src/proxy/http2/hpack_check.rs`) against the `h2` crate's own
//! HPACK decoder, over a sequence of header blocks sharing one dynamic
//! table, as on one connection.
//!
//! Input: blocks, each a 2-byte little-endian length then that many bytes;
//! the length's top bit asks for the block to be fed to the check in two
//! pieces (cut at the block's first byte's value), as frames would cut it.
//!
//! After each block:
//! - the check rejects (COMPRESSION_ERROR) only what `h2` rejects;
//! - what `h2` rejects as an HPACK error (bad index, integer overflow,
//!   Huffman code, size update, truncation), the check rejects too; errors
//!   `h2` finds in the decoded fields (upper-case names, bad values,
//!   unknown pseudo-headers: "semantic", left to `h2` by design) end the
//!   connection without a verdict;
//! - both tables agree: the same size and maximum (from `h2`'s `Debug`),
//!   and the same number of entries (index 62 + n is valid in `h2` exactly
//!   when the check has more than n entries).
//!
//! `h2`'s decoder is not public: the `unstable` feature makes `h2::frame`
//! public, and `Headers::load_hpack` names the decoder's type, so a
//! `Default::default()` passed to it is one (the same `Decoder::new(4096)`
//! `h2` starts each connection with).
#![no_main]

use std::io::Cursor;
use std::ops::ControlFlow;

use blitz_runtime::proxy::http2_fuzzing::HpackMirror;
use bytes::BytesMut;
use h2::frame::{Head, Headers, Kind, StreamId};
use libfuzzer_sys::fuzz_target;

/// `h2` decoder errors that are about the fields, not HPACK; an empty
/// literal name is reported as `UnexpectedEndOfStream`, like a block
/// that ends where a string should start, so that one is ambiguous.
const SEMANTIC: [&str; 4] = [
    "InvalidUtf8",
    "InvalidStatusCode",
    "InvalidPseudoheader",
    "UnexpectedEndOfStream",
];

/// An indexed field (§6.1) of `index`.
fn indexed(index: usize) -> Vec<u8> {
    if index < 127 {
        return vec![0x80 | index as u8];
    }
    let mut out = vec![0xff];
    let mut rest = index - 127;
    while rest >= 128 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
    out
}

fn blocks(mut data: &[u8]) -> Vec<(&[u8], Option<usize>)> {
    let mut out = Vec::new();
    while let [lo, hi, rest @ ..] = data {
        let len = usize::from(u16::from_le_bytes([*lo, *hi]) & 0x7fff).min(rest.len());
        let (block, tail) = rest.split_at(len);
        let cut = (hi & 0x80 != 0).then(|| usize::from(block.first().copied().unwrap_or(0)));
        out.push((block, cut));
        data = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut mirror = HpackMirror::new();
    let mut dec = Default::default();
    if false {
        // Names the type of `dec`: the decoder `load_hpack` takes.
        let head = Head::new(Kind::Headers, 0x4, StreamId::from(1));
        if let Ok((mut h, mut rest)) = Headers::load(head, BytesMut::new()) {
            let _ = h.load_hpack(&mut rest, 0, &mut dec);
        }
    }
    macro_rules! h2_decode {
        ($bytes:expr) => {{
            let mut buf = BytesMut::from($bytes);
            dec.decode(&mut Cursor::new(&mut buf), |_| ControlFlow::Continue(()))
                .map_err(|e| format!("{e:?}"))
        }};
    }
    for (block, cut) in blocks(data) {
        let cuts: Vec<usize> = cut.into_iter().collect();
        let ours = mirror.block(block, &cuts);
        let theirs = h2_decode!(block);
        match (&ours, &theirs) {
            (Ok(()), Ok(())) => {}
            (Err(_), Err(_)) => return,
            (Ok(()), Err(e)) if SEMANTIC.iter().any(|s| e.contains(s)) => return,
            _ => panic!("verdicts differ on {block:02x?}: check {ours:?}, h2 {theirs:?}"),
        }
        let (entries, size, max) = mirror.table();
        let debug = format!("{dec:?}");
        assert!(
            debug.contains(&format!("size: {size}, max_size: {max} }}, buffer:")),
            "table size/max differ after {block:02x?}: check ({size}, {max}), h2 {debug}"
        );
        if entries > 0 {
            assert_eq!(
                h2_decode!(&indexed(61 + entries)[..]),
                Ok(()),
                "check has {entries} entries, h2 fewer"
            );
        }
        let past = h2_decode!(&indexed(62 + entries)[..]);
        assert!(
            past.as_ref()
                .is_err_and(|e| e.contains("InvalidTableIndex")),
            "check has {entries} entries, h2 more ({past:?})"
        );
    }
});
