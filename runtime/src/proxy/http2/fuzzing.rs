//! The HPACK check seen from outside the crate, for the `hpack_check` fuzz
//! target (`fuzz/fuzz_targets/hpack_check.rs`), which holds it against the
//! `h2` crate's own HPACK decoder. Not an API: nothing else calls it.

use h2::Reason;

use super::hpack_check::HpackCheck;

/// One connection's HPACK check.
#[derive(Debug)]
pub struct HpackMirror(HpackCheck);

impl HpackMirror {
    /// A connection whose SETTINGS_HEADER_TABLE_SIZE is the gateway's.
    pub fn new() -> Self {
        HpackMirror(HpackCheck::new(super::HEADER_TABLE_SIZE as usize))
    }

    /// One header block (not trailers), fed in pieces cut at `cuts` (block
    /// offsets, as frame and read boundaries would cut it).
    pub fn block(&mut self, block: &[u8], cuts: &[usize]) -> Result<(), Reason> {
        self.0.begin_block(1, false);
        let mut start = 0;
        for &cut in cuts.iter().chain([&block.len()]) {
            let cut = cut.clamp(start, block.len());
            self.0.feed(&block[start..cut])?;
            start = cut;
        }
        self.0.end_block()
    }

    /// The dynamic table: number of entries, size, maximum size.
    pub fn table(&self) -> (usize, usize, usize) {
        self.0.table_state()
    }
}

impl Default for HpackMirror {
    fn default() -> Self {
        Self::new()
    }
}
