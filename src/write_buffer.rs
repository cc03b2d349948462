//! A stream transport's write buffer: the bytes written but not yet sent (no PyO3: `cargo
//! test`).
//!
//! Growth is fallible (the caller turns a failure into `MemoryError`; an allocation failure
//! must not abort the process). Memory is given back after a burst, so a transport that
//! once buffered 64 MiB does not hold them for the rest of its life: a buffer that drains
//! completely keeps at most `KEEP` bytes of capacity, and one that is still draining
//! shrinks once what is left uses under an eighth of a capacity over `4 * KEEP`.
//!
//! Discussion: `KEEP` is four times asyncio's default high-water mark, so a connection
//! under flow control (buffer between empty and a little over the mark, again and again)
//! reuses one allocation and never copies its buffer for resizing. Emptied, the buffer
//! frees its memory, and the next write allocates afresh instead of growing the old block
//! (which would copy its stale contents).

use std::collections::TryReserveError;

/// Capacity a drained buffer keeps (reused by the next writes).
pub const KEEP: usize = 256 * 1024;

#[derive(Default)]
pub struct WriteBuffer {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already sent.
    sent: usize,
}

impl WriteBuffer {
    pub const fn new() -> WriteBuffer {
        WriteBuffer {
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Bytes waiting to be sent.
    pub fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What is waiting to be sent.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// Bytes allocated.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends `data`; on allocation failure nothing changes.
    pub fn extend(&mut self, data: &[u8]) -> Result<(), TryReserveError> {
        self.reserve(data.len())?;
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Makes room for `additional` more bytes; on allocation failure nothing changes.
    pub fn reserve(&mut self, additional: usize) -> Result<(), TryReserveError> {
        if self.buf.is_empty() && self.buf.capacity() < additional {
            // Nothing to keep: a new block, not a copy of the old one.
            self.buf = Vec::new();
        }
        if let Err(e) = self.buf.try_reserve(additional) {
            // Doubling was too much: exactly what is needed may still fit.
            self.buf.try_reserve_exact(additional).map_err(|_| e)?;
        }
        Ok(())
    }

    /// Marks the first `n` pending bytes as sent.
    pub fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.buf.len());
        if self.sent == self.buf.len() {
            self.sent = 0;
            if self.buf.capacity() > KEEP {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            return;
        } else if self.sent > self.buf.len() / 2 {
            // Move the rest to the front (less than what was sent), so the space is reused.
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        self.trim();
    }

    /// Drops everything, memory included.
    pub fn clear(&mut self) {
        *self = WriteBuffer::new();
    }

    fn trim(&mut self) {
        let (cap, used) = (self.buf.capacity(), self.buf.len());
        if cap > 4 * KEEP && used < cap / 8 {
            self.buf.shrink_to(KEEP.max(used * 2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn keeps_order_across_partial_sends_and_appends() {
        let mut b = WriteBuffer::new();
        let data = filled(300_000);
        let mut out = Vec::new();
        let mut fed = 0;
        let mut step = 1;
        while out.len() < data.len() {
            if fed < data.len() {
                let end = (fed + 7_001 * step).min(data.len());
                b.extend(&data[fed..end]).unwrap();
                fed = end;
            }
            let n = b.len().min(5_003 * step % 40_000 + 1);
            out.extend_from_slice(&b.pending()[..n]);
            b.consume(n);
            step += 1;
        }
        assert_eq!(out, data);
        assert!(b.is_empty());
    }

    #[test]
    fn gives_memory_back_after_a_burst() {
        let mut b = WriteBuffer::new();
        b.extend(&filled(64 << 20)).unwrap();
        assert!(b.capacity() >= 64 << 20);
        // Drained in pieces, the capacity follows the contents down.
        while b.len() > 1 << 20 {
            b.consume(1 << 20);
            // (what is left is at least half of what the buffer holds)
            assert!(b.capacity() <= (4 * KEEP).max(16 * b.len()));
        }
        b.consume(b.len());
        assert!(b.is_empty());
        assert!(b.capacity() <= KEEP, "capacity {}", b.capacity());
    }

    #[test]
    fn keeps_a_small_capacity_for_reuse() {
        let mut b = WriteBuffer::new();
        b.extend(&filled(KEEP)).unwrap();
        let cap = b.capacity();
        b.consume(KEEP);
        assert_eq!(b.capacity(), cap);
        b.extend(&filled(1000)).unwrap();
        assert_eq!(b.capacity(), cap);
        // Filled and drained again and again below `KEEP`: never reallocated.
        for _ in 0..100 {
            b.extend(&filled(KEEP / 2)).unwrap();
            b.consume(KEEP / 4);
            b.extend(&filled(KEEP / 4)).unwrap();
            b.consume(b.len());
            assert_eq!(b.capacity(), cap);
        }
    }

    #[test]
    fn a_failed_allocation_changes_nothing() {
        let mut b = WriteBuffer::new();
        b.extend(b"abc").unwrap();
        b.consume(1);
        assert!(b.reserve(usize::MAX).is_err());
        assert!(b.reserve(isize::MAX as usize - 8).is_err());
        assert_eq!(b.pending(), b"bc");
        b.extend(b"d").unwrap();
        assert_eq!(b.pending(), b"bcd");
    }
}
