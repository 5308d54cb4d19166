//! The HTTP/1.1 request parser with a differential check: a request that is
//! accepted and re-serialized parses back to the same request (see
//! `blitz_runtime::http::fuzzing::request_roundtrip`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blitz_runtime::http::fuzzing::request_roundtrip(data);
});
