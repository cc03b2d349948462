//! The timer queue behind `call_later`/`call_at` (asyncio: `BaseEventLoop._scheduled`).
//!
//! A binary min-heap keyed by `(when, seq)`: equal deadlines keep the order in which they
//! were scheduled. Cancellation is lazy, as in asyncio and trio: a cancelled entry stays
//! in the heap until it reaches the top (then it is popped and dropped) or until cancelled
//! entries make up more than half of a large heap, when the heap is rebuilt without them.
//! Discussion: most timeouts are cancelled before they fire (curio's observation), so the
//! cost of cancelling must be O(1); the rebuild keeps memory bounded.
//!
//! No PyO3 types here, so `cargo test` covers it without an interpreter.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

/// The longest wait the poller is given: asyncio's `MAXIMUM_SELECT_TIMEOUT` (one day). A
/// later deadline is waited for in several polls.
const MAX_WAIT_SECS: f64 = 24.0 * 3600.0;

/// How long to wait for something `secs` seconds away: the one conversion of a float from
/// Python to a `Duration`. A NaN or negative wait is zero, an infinite or huge one a day.
pub fn wait_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs.min(MAX_WAIT_SECS)).unwrap_or(Duration::ZERO)
}

/// Implemented by what the heap holds, so it can drop cancelled entries.
pub trait Cancellable {
    fn is_cancelled(&self) -> bool;
}

/// Below this many entries a rebuild is never worth it (asyncio uses the same figure).
const MIN_ENTRIES_FOR_REBUILD: usize = 100;

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed so that `BinaryHeap` (a max-heap) yields the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    /// How many entries in `heap` are known to be cancelled (kept by the owner through
    /// `note_cancelled`, since the items themselves are flipped from outside).
    cancelled: usize,
}

impl<T: Cancellable> Default for TimerHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Cancellable> TimerHeap<T> {
    pub fn new() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `item` at `when`. A NaN deadline is due at once (asyncio's heap, whose
    /// comparisons with NaN are all false, runs such a timer as soon as it reaches the top;
    /// `sleep(nan)` and `call_later(nan, cb)` return at once there).
    pub fn push(&mut self, when: f64, item: T) {
        let when = if when.is_nan() {
            f64::NEG_INFINITY
        } else {
            when
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
    }

    /// Records that one entry still in the heap was cancelled.
    pub fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// Drops cancelled entries: all of them when they dominate a large heap, otherwise
    /// those at the top. Returns what was removed so the caller can drop it at a safe
    /// point (dropping Python objects may run arbitrary code).
    #[inline(always)] // on every iteration of the loop; usually finds nothing to do
    pub fn prune(&mut self) -> Vec<T> {
        let mut removed = Vec::new();
        if self.heap.len() > MIN_ENTRIES_FOR_REBUILD && self.cancelled * 2 > self.heap.len() {
            let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
                .into_vec()
                .into_iter()
                .partition(|e| !e.item.is_cancelled());
            self.heap = BinaryHeap::from(keep);
            removed.extend(gone.into_iter().map(|e| e.item));
            self.cancelled = 0;
        } else {
            while self.heap.peek().is_some_and(|e| e.item.is_cancelled()) {
                if let Some(e) = self.heap.pop() {
                    self.cancelled = self.cancelled.saturating_sub(1);
                    removed.push(e.item);
                }
            }
        }
        removed
    }

    /// The deadline of the earliest entry, cancelled or not.
    pub fn next_when(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// Pops the earliest entry if its deadline is at or before `now`. Cancelled entries
    /// are returned too (the caller skips them); the cancelled count is kept right.
    pub fn pop_due(&mut self, now: f64) -> Option<T> {
        if self.heap.peek()?.when > now {
            return None;
        }
        let e = self.heap.pop()?;
        if e.item.is_cancelled() {
            self.cancelled = self.cancelled.saturating_sub(1);
        }
        Some(e.item)
    }

    /// Empties the heap, returning every item.
    pub fn drain(&mut self) -> Vec<T> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }

    /// Visits every item (for the garbage collector's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct T(u32, Rc<Cell<bool>>);
    impl Cancellable for T {
        fn is_cancelled(&self) -> bool {
            self.1.get()
        }
    }
    fn t(n: u32) -> T {
        T(n, Rc::new(Cell::new(false)))
    }

    fn drain_due(h: &mut TimerHeap<T>, now: f64) -> Vec<u32> {
        let mut out = vec![];
        while let Some(x) = h.pop_due(now) {
            if !x.is_cancelled() {
                out.push(x.0);
            }
        }
        out
    }

    #[test]
    fn orders_by_deadline_then_sequence() {
        let mut h = TimerHeap::new();
        h.push(2.0, t(1));
        h.push(1.0, t(2));
        h.push(1.0, t(3));
        h.push(0.5, t(4));
        h.push(1.0, t(5));
        assert_eq!(drain_due(&mut h, 10.0), vec![4, 2, 3, 5, 1]);
    }

    #[test]
    fn never_pops_before_deadline() {
        let mut h = TimerHeap::new();
        h.push(1.0, t(1));
        assert!(h.pop_due(0.999_999).is_none());
        assert_eq!(h.next_when(), Some(1.0));
        assert_eq!(drain_due(&mut h, 1.0), vec![1]);
        assert!(h.is_empty());
    }

    #[test]
    fn cancelled_entries_are_pruned_from_the_top() {
        let mut h = TimerHeap::new();
        let a = t(1);
        h.push(1.0, a.clone());
        h.push(2.0, t(2));
        a.1.set(true);
        h.note_cancelled();
        let removed = h.prune();
        assert_eq!(removed.len(), 1);
        assert_eq!(h.next_when(), Some(2.0));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn large_mostly_cancelled_heap_is_rebuilt() {
        let mut h = TimerHeap::new();
        let items: Vec<T> = (0..300).map(t).collect();
        for (i, it) in items.iter().enumerate() {
            h.push(i as f64, it.clone());
        }
        // Cancel all but every tenth, from the end so the top stays live.
        for it in items.iter().filter(|it| it.0 % 10 != 0) {
            it.1.set(true);
            h.note_cancelled();
        }
        let removed = h.prune();
        assert_eq!(removed.len(), 270);
        assert_eq!(h.len(), 30);
        assert_eq!(
            drain_due(&mut h, 1e9),
            (0..300).step_by(10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn nan_deadline_is_due_at_once() {
        let mut h = TimerHeap::new();
        h.push(5.0, t(1));
        h.push(f64::NAN, t(2));
        h.push(f64::INFINITY, t(3));
        h.push(f64::NEG_INFINITY, t(4));
        assert_eq!(h.next_when(), Some(f64::NEG_INFINITY));
        assert_eq!(drain_due(&mut h, 0.0), vec![2, 4]);
        assert_eq!(drain_due(&mut h, 1e300), vec![1]);
        assert_eq!(h.next_when(), Some(f64::INFINITY));
    }

    #[test]
    fn wait_durations_never_panic() {
        assert_eq!(wait_duration(f64::NAN), Duration::ZERO);
        assert_eq!(wait_duration(-1.0), Duration::ZERO);
        assert_eq!(wait_duration(f64::NEG_INFINITY), Duration::ZERO);
        assert_eq!(wait_duration(1.5), Duration::from_millis(1500));
        assert_eq!(wait_duration(f64::INFINITY), Duration::from_secs(86400));
        assert_eq!(wait_duration(1e300), Duration::from_secs(86400));
        assert_eq!(wait_duration(f64::MIN_POSITIVE), Duration::ZERO);
    }

    #[test]
    fn drain_returns_everything() {
        let mut h = TimerHeap::new();
        h.push(1.0, t(1));
        h.push(0.0, t(2));
        assert_eq!(h.drain().len(), 2);
        assert!(h.is_empty());
        assert_eq!(h.next_when(), None);
    }
}
