//! The HTTP/1.1 response head parser (upstream side): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blitz_runtime::http::fuzzing::response_head(data);
});
