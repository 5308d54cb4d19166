//! The KDL front end and every validation rule on arbitrary text: never a
//! panic, and a spec that does not lower always comes with a diagnostic.
#![no_main]

use blitzc::diag::SourceFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // A folder that holds no files, so file-based rules find nothing to read.
    let checked = blitzc::check(SourceFile::new("/nonexistent-blitz-fuzz/spec.kdl", text));
    if checked.spec.is_none() {
        assert!(checked.has_errors(), "a spec that does not lower must have an error");
    }
    for d in &checked.diagnostics {
        assert!(d.span.start <= d.span.end && d.span.end <= text.len(), "span out of the text: {d:?}");
        assert!(!d.help.is_empty(), "every diagnostic has a help line: {d:?}");
        let _ = checked.file.line_col(d.span.start);
    }
});
