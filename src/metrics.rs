//! What `loop.metrics()` reports: the loop's counters, its busy and idle time, the timer-lag
//! histogram and the slowest callbacks (Node.js: `performance.eventLoopUtilization()` and
//! `perf_hooks.monitorEventLoopDelay()`; tokio: runtime metrics). `docs/metrics.md` says
//! what each figure means.
//!
//! Discussion: the loop updates these on its hot paths, so they cost a few additions per
//! iteration, one per callback (a counter kept in a register and stored once per batch),
//! a few instructions per timer fired, and no allocation. The clock is read once per
//! iteration, at the end of the callback batch, and that reading replaces the one the
//! next poll made anyway (see `CoreLoop::run_ready`). Callbacks are not timed one by one
//! outside debug mode (a clock read costs a sixth of a trivial callback): a slow callback
//! shows as a slow iteration, named when it ran alone in its iteration.
//!
//! No PyO3 types here, so `cargo test` covers it without an interpreter.

/// Sub-buckets per power of two: a recorded lag is known within 1/8 (12.5 %).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Lags below 2^10 ns (about 1 µs) share the first bucket.
const MIN_EXP: u32 = 10;
/// Powers of two covered: up to 2^41 ns (about 37 minutes); longer lags share the last
/// bucket.
const MAX_EXP: u32 = 40;
/// The underflow bucket, `SUB` per power of two, and the overflow bucket.
pub const LAG_BUCKETS: usize = 1 + (MAX_EXP - MIN_EXP + 1) as usize * SUB + 1;

/// A log-bucketed histogram of timer lags, in nanoseconds: fixed size, nothing allocated
/// when recording.
pub struct LagHistogram {
    counts: [u64; LAG_BUCKETS],
    count: u64,
    /// Sum of the recorded lags, in seconds.
    sum: f64,
    max_ns: u64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            counts: [0; LAG_BUCKETS],
            count: 0,
            sum: 0.0,
            max_ns: 0,
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < 1 << MIN_EXP {
        return 0;
    }
    let exp = 63 - ns.leading_zeros();
    if exp > MAX_EXP {
        return LAG_BUCKETS - 1;
    }
    let sub = ((ns >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    1 + (exp - MIN_EXP) as usize * SUB + sub
}

/// The smallest value (ns) above every value of bucket `i`; `u64::MAX` for the overflow.
fn bucket_upper(i: usize) -> u64 {
    if i == 0 {
        return 1 << MIN_EXP;
    }
    if i >= LAG_BUCKETS - 1 {
        return u64::MAX;
    }
    let exp = MIN_EXP + ((i - 1) / SUB) as u32;
    let sub = ((i - 1) % SUB) as u64;
    (SUB as u64 + sub + 1) << (exp - SUB_BITS)
}

impl LagHistogram {
    /// Records a lag of `secs` seconds (a negative or NaN lag counts as zero).
    #[inline]
    pub fn record(&mut self, secs: f64) {
        let secs = if secs > 0.0 { secs } else { 0.0 };
        // A saturating conversion: an infinite lag lands in the overflow bucket.
        let ns = (secs * 1e9) as u64;
        self.counts[bucket_of(ns)] += 1;
        self.count += 1;
        self.sum += secs;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The largest lag recorded, in seconds (0 when none was).
    pub fn max(&self) -> f64 {
        self.max_ns as f64 * 1e-9
    }

    /// An upper bound (seconds) of the lag below which a fraction `q` of the recorded lags
    /// lie: the upper edge of the bucket holding the rank-`q` lag (at most 12.5 % above
    /// it), never more than the largest lag. 0 when nothing was recorded.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The rank (1-based) of the wanted sample.
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(i).min(self.max_ns) as f64 * 1e-9;
            }
        }
        self.max()
    }

    /// The non-empty buckets as (upper edge in seconds, count), in increasing order: a
    /// bucket counts the lags below its edge and at or above the previous bucket's edge
    /// (the overflow bucket's edge is infinite).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| match bucket_upper(i) {
                u64::MAX => (f64::INFINITY, c),
                edge => (edge as f64 * 1e-9, c),
            })
            .collect()
    }
}

/// One of the slowest callbacks (or iterations).
#[derive(Clone, Debug, PartialEq)]
pub struct Slow {
    /// Seconds: the callback's own run in debug mode, its iteration's busy time otherwise.
    pub duration: f64,
    /// Loop time at which it ended.
    pub at: f64,
    /// Callbacks that shared `duration`: 1 when it is one callback's.
    pub callbacks: u64,
    /// What ran (None for an iteration of several callbacks).
    pub description: Option<String>,
    /// Where the callback was scheduled (`file:line`, debug mode only).
    pub source: Option<String>,
}

/// How many of the slowest are kept.
pub const SLOWEST_KEPT: usize = 5;

/// The few slowest, slowest first.
#[derive(Default)]
pub struct Slowest {
    entries: Vec<Slow>,
}

impl Slowest {
    /// Whether an entry of `duration` would be kept (so describing it is worth it).
    pub fn admits(&self, duration: f64) -> bool {
        self.entries.len() < SLOWEST_KEPT
            || self
                .entries
                .last()
                .is_some_and(|last| duration > last.duration)
    }

    pub fn insert(&mut self, entry: Slow) {
        if !self.admits(entry.duration) {
            return;
        }
        let at = self
            .entries
            .iter()
            .position(|e| entry.duration > e.duration)
            .unwrap_or(self.entries.len());
        self.entries.insert(at, entry);
        self.entries.truncate(SLOWEST_KEPT);
    }

    pub fn entries(&self) -> &[Slow] {
        &self.entries
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The loop's counters and clocks (one per loop, in its state).
///
/// Time accounting: while the loop runs, every moment is either busy or idle. `mark` is
/// the last boundary: the end of the last callback batch, or the end of the last wait.
/// A wait adds `end of wait - mark` to `idle`; a batch adds `end of batch - mark` to
/// `busy`. The bookkeeping between a batch's end and the wait (signals, pruning cancelled
/// timers, re-arming fds: microseconds) counts as idle when the loop then waits.
#[derive(Default)]
pub struct Metrics {
    pub iterations: u64,
    /// Callbacks run: handles (not cancelled ones) and turns of Rust transports and
    /// native `sock_*` operations.
    pub callbacks: u64,
    /// Readiness reports from the poller (the loop's own wake-ups excluded).
    pub io_events: u64,
    pub timers_fired: u64,
    /// Callbacks known to have run for `slow_callback_duration` or longer.
    pub slow_callbacks: u64,
    /// Iterations whose busy time reached `slow_callback_duration`.
    pub slow_iterations: u64,
    pub busy: f64,
    pub idle: f64,
    /// The last busy/idle boundary (monotonic seconds; see above).
    pub mark: f64,
    /// Timer lag is counted from the later of a timer's deadline and this: the last time
    /// the loop looked for due timers (so a timer scheduled with a deadline already past
    /// is late by the time the loop took to look, not by how far past its deadline was).
    pub timer_ref: f64,
    pub lag: LagHistogram,
    pub slowest: Slowest,
    /// When `lag` and `slowest` were last emptied (the loop's creation, or a reset).
    pub reset_at: f64,
}

impl Metrics {
    pub fn new(now: f64) -> Metrics {
        Metrics {
            mark: now,
            timer_ref: now,
            reset_at: now,
            ..Metrics::default()
        }
    }

    /// The loop starts running at `now`: time from here on is accounted.
    pub fn run_started(&mut self, now: f64) {
        self.mark = now;
        self.timer_ref = now;
    }

    /// A wait in the poller ended at `now`.
    #[inline]
    pub fn waited(&mut self, now: f64) {
        self.idle += now - self.mark;
        self.mark = now;
    }

    /// A batch of callbacks (or the end of a run) at `now`: returns the busy time since
    /// the last boundary.
    #[inline]
    pub fn worked(&mut self, now: f64) -> f64 {
        let span = now - self.mark;
        self.busy += span;
        self.mark = now;
        span
    }

    /// A timer due at `when` is collected at `now`.
    #[inline]
    pub fn timer_fired(&mut self, when: f64, now: f64) {
        self.timers_fired += 1;
        // `max` ignores a NaN (or -inf) deadline: such a timer is due at once.
        self.lag.record(now - when.max(self.timer_ref));
    }

    /// Empties what covers "since the last reset".
    pub fn reset(&mut self, now: f64) {
        self.lag = LagHistogram::default();
        self.slowest.clear();
        self.reset_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_contiguous() {
        let mut last = 0;
        for i in 0..LAG_BUCKETS - 1 {
            let upper = bucket_upper(i);
            assert!(upper > last, "bucket {i}");
            assert_eq!(bucket_of(upper - 1), i, "bucket {i}");
            assert_eq!(bucket_of(upper), i + 1, "bucket {i}");
            last = upper;
        }
        assert_eq!(bucket_of(u64::MAX), LAG_BUCKETS - 1);
    }

    #[test]
    fn a_bucket_is_within_an_eighth() {
        for i in 2..LAG_BUCKETS - 1 {
            let (lo, hi) = (bucket_upper(i - 1), bucket_upper(i));
            assert!((hi - lo) as f64 <= lo as f64 / 8.0, "bucket {i}");
        }
    }

    #[test]
    fn quantiles_of_known_lags() {
        let mut h = LagHistogram::default();
        assert_eq!(h.quantile(0.5), 0.0);
        for _ in 0..98 {
            h.record(0.001);
        }
        h.record(0.050);
        h.record(0.200);
        assert_eq!(h.count(), 100);
        let p50 = h.quantile(0.5);
        assert!((0.001..=0.001 * 1.125).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((0.050..=0.050 * 1.125).contains(&p99), "{p99}");
        assert!((h.quantile(1.0) - 0.2).abs() < 1e-9);
        assert!((h.max() - 0.2).abs() < 1e-9);
        assert!((h.sum() - (0.098 + 0.25)).abs() < 1e-9);
        let b = h.buckets();
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 100);
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn odd_lags_do_not_panic() {
        let mut h = LagHistogram::default();
        for v in [f64::NAN, -1.0, 0.0, f64::INFINITY, 1e300, 5e-10] {
            h.record(v);
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.quantile(f64::NAN), h.max());
        assert!(h.quantile(0.5) >= 0.0);
    }

    #[test]
    fn lag_counts_from_the_later_of_deadline_and_last_look() {
        let mut m = Metrics::new(100.0);
        m.timer_fired(100.5, 101.0); // due at 100.5, collected at 101: 0.5 late
        m.timer_ref = 200.0;
        m.timer_fired(50.0, 200.25); // scheduled in the past: 0.25 since the last look
        m.timer_fired(f64::NAN, 200.25);
        assert_eq!(m.timers_fired, 3);
        assert!((m.lag.max() - 0.5).abs() < 1e-6);
        assert!((m.lag.sum() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn busy_and_idle_add_up() {
        let mut m = Metrics::new(0.0);
        m.run_started(10.0);
        m.waited(12.0);
        assert_eq!(m.worked(13.0), 1.0);
        m.waited(20.0);
        m.worked(20.5);
        assert_eq!(m.idle, 9.0);
        assert_eq!(m.busy, 1.5);
    }

    #[test]
    fn keeps_the_slowest_few() {
        let mut s = Slowest::default();
        let slow = |d: f64| Slow {
            duration: d,
            at: 0.0,
            callbacks: 1,
            description: None,
            source: None,
        };
        for d in [0.3, 0.1, 0.7, 0.2, 0.5, 0.4, 0.05, 0.6] {
            if s.admits(d) {
                s.insert(slow(d));
            }
        }
        let kept: Vec<f64> = s.entries().iter().map(|e| e.duration).collect();
        assert_eq!(kept, vec![0.7, 0.6, 0.5, 0.4, 0.3]);
        assert!(!s.admits(0.3));
        assert!(s.admits(0.31));
    }
}
