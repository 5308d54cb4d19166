//! Per-worker pool of transfer buffers and request-id generation.

use std::cell::{Cell, RefCell};

/// Capacity of a pooled buffer.
pub const BUFFER_CAPACITY: usize = 16 * 1024;
/// Most free buffers kept; more are freed.
const MAX_FREE: usize = 256;

/// Free transfer buffers, so a request costs no allocation once warm.
/// Buffers that grew past 4× their size are freed instead of kept.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// An empty buffer with at least [`BUFFER_CAPACITY`] capacity.
    pub fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_CAPACITY))
    }

    /// Returns a buffer.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < BUFFER_CAPACITY || buf.capacity() > 4 * BUFFER_CAPACITY {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_FREE {
            buf.clear();
            free.push(buf);
        }
    }
}

/// Generates request ids: 32 hex digits, a per-worker random-ish prefix and
/// a counter, unique within the process and unlikely to collide across.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    counter: Cell<u64>,
}

impl RequestIds {
    /// A generator for worker `worker`.
    pub fn new(worker: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ ((worker as u64) << 56);
        // splitmix64 finalizer: spread the bits.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
        RequestIds {
            prefix: x ^ (x >> 31),
            counter: Cell::new(0),
        }
    }

    /// Writes the next id into `buf` and returns it.
    pub fn next<'b>(&self, buf: &'b mut [u8; 32]) -> &'b [u8] {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in buf.iter_mut().enumerate() {
            let word = if i < 16 { self.prefix } else { n };
            let shift = 60 - 4 * (i % 16);
            *b = HEX[((word >> shift) & 15) as usize];
        }
        &buf[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_hex() {
        let ids = RequestIds::new(3);
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        let x = ids.next(&mut a).to_vec();
        let y = ids.next(&mut b).to_vec();
        assert_ne!(x, y);
        assert!(x.iter().all(u8::is_ascii_hexdigit));
        assert!(crate::http::valid_request_id(&x));
    }

    #[test]
    fn pool_reuses_and_bounds() {
        let pool = BufferPool::default();
        let mut b = pool.take();
        b.extend_from_slice(b"abc");
        let ptr = b.as_ptr();
        pool.give(b);
        let b2 = pool.take();
        assert!(b2.is_empty());
        assert_eq!(b2.as_ptr(), ptr);
        pool.give(Vec::with_capacity(1 << 20));
        assert_eq!(pool.free.borrow().len(), 0);
    }
}
