//! The chunked decoder, fed in every split: never a panic, and the decoded
//! body is the same whatever the split.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blitz_runtime::http::fuzzing::chunked(data);
});
