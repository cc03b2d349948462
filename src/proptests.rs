//! Model-based property tests of the PyO3-free data structures: the write buffer, the timer
//! heap and the fd registrations. Each test applies a random sequence of operations to the
//! real structure and to a plain model (`VecDeque`, `Vec`, `HashMap`) and compares them
//! after every step.
//!
//! The normal run (`cargo test --lib`, `make test-rust`) tries `DEFAULT_CASES` sequences per
//! property; `PROPTEST_CASES=N` asks for more (`make fuzz` does).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use mio::{Events, Interest, Poll};
use proptest::prelude::*;

use crate::poller::{IoMap, Ready, Side};
use crate::timers::{wait_duration, Cancellable, TimerHeap};
use crate::write_buffer::{WriteBuffer, KEEP};

const DEFAULT_CASES: u32 = 64;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig::with_cases(cases)
}

// -- write buffer ------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum BufOp {
    /// Appends `len` bytes of a pattern that starts at `seed`.
    Extend {
        len: usize,
        seed: u8,
    },
    /// Marks up to `n` bytes sent (more than are pending, sometimes).
    Consume(usize),
    /// Consumes everything pending.
    ConsumeAll,
    Reserve(usize),
    /// A reservation that cannot succeed.
    ReserveHuge(usize),
    Clear,
}

fn buf_op() -> impl Strategy<Value = BufOp> {
    let len = prop_oneof![
        6 => 0usize..100,
        3 => 0usize..70_000,
        1 => KEEP..3 * KEEP,
    ];
    prop_oneof![
        8 => (len, any::<u8>()).prop_map(|(len, seed)| BufOp::Extend { len, seed }),
        6 => prop_oneof![0usize..100, 0usize..100_000, 0usize..2 * KEEP].prop_map(BufOp::Consume),
        2 => Just(BufOp::ConsumeAll),
        1 => (0usize..100_000).prop_map(BufOp::Reserve),
        1 => prop_oneof![Just(usize::MAX), Just(isize::MAX as usize), Just(isize::MAX as usize - 8)]
            .prop_map(BufOp::ReserveHuge),
        1 => Just(BufOp::Clear),
    ]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn check_buffer(b: &WriteBuffer, model: &VecDeque<u8>) -> Result<(), TestCaseError> {
    prop_assert_eq!(b.len(), model.len());
    prop_assert_eq!(b.is_empty(), model.is_empty());
    prop_assert!(b.pending().iter().eq(model.iter()), "pending bytes differ");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn write_buffer_matches_a_deque(ops in prop::collection::vec(buf_op(), 1..40)) {
        let mut b = WriteBuffer::new();
        let mut model = VecDeque::new();
        for op in ops {
            match op {
                BufOp::Extend { len, seed } => {
                    let data = pattern(len, seed);
                    b.extend(&data).unwrap();
                    model.extend(data);
                }
                BufOp::Consume(n) => {
                    b.consume(n);
                    model.drain(..n.min(model.len()));
                }
                BufOp::ConsumeAll => {
                    b.consume(b.len());
                    model.clear();
                }
                BufOp::Reserve(n) => {
                    b.reserve(n).unwrap();
                    prop_assert!(b.capacity() >= b.len() + n);
                }
                BufOp::ReserveHuge(n) => {
                    // Fails, and changes nothing.
                    prop_assert!(b.reserve(n).is_err());
                }
                BufOp::Clear => {
                    b.clear();
                    model.clear();
                    prop_assert_eq!(b.capacity(), 0);
                }
            }
            check_buffer(&b, &model)?;
            if matches!(op, BufOp::Consume(_) | BufOp::ConsumeAll) {
                // Memory follows the contents down: a drained buffer keeps at most `KEEP`,
                // a draining one at most eight times what it still uses (sent bytes
                // included, which are under half of it) beyond `4 * KEEP`.
                if b.is_empty() {
                    prop_assert!(b.capacity() <= KEEP, "drained, capacity {}", b.capacity());
                } else {
                    prop_assert!(
                        b.capacity() <= (4 * KEEP).max(16 * b.len() + 16),
                        "capacity {} for {} pending", b.capacity(), b.len()
                    );
                }
            }
        }
        // Whatever happened, draining it gives the memory back.
        b.consume(b.len());
        prop_assert!(b.is_empty());
        prop_assert!(b.capacity() <= KEEP);
    }
}

// -- timer heap --------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Timer {
    id: usize,
    cancelled: Rc<Cell<bool>>,
}

impl Cancellable for Timer {
    fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }
}

#[derive(Clone, Debug)]
enum TimerOp {
    Push(f64),
    /// Cancels the `n`-th (modulo) timer still in the heap, if it is not cancelled yet.
    Cancel(usize),
    Prune,
    PopDue(f64),
    Drain,
}

fn deadline() -> impl Strategy<Value = f64> {
    prop_oneof![
        // Small integers: many equal deadlines, whose order is the scheduling order.
        6 => (0u8..8).prop_map(f64::from),
        3 => -1e3f64..1e3,
        1 => prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(-0.0),
            Just(f64::MIN_POSITIVE),
        ],
    ]
}

fn timer_op() -> impl Strategy<Value = TimerOp> {
    prop_oneof![
        8 => deadline().prop_map(TimerOp::Push),
        6 => any::<usize>().prop_map(TimerOp::Cancel),
        2 => Just(TimerOp::Prune),
        3 => deadline().prop_map(TimerOp::PopDue),
        1 => Just(TimerOp::Drain),
    ]
}

/// What the heap orders by: a NaN deadline is due at once.
fn key(when: f64) -> f64 {
    if when.is_nan() {
        f64::NEG_INFINITY
    } else {
        when
    }
}

/// The model: `(deadline, sequence, timer)`, unordered.
type TimerModel = Vec<(f64, u64, Timer)>;

fn model_first(model: &TimerModel) -> Option<usize> {
    (0..model.len()).min_by(|&a, &b| {
        model[a]
            .0
            .total_cmp(&model[b].0)
            .then(model[a].1.cmp(&model[b].1))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn timer_heap_matches_a_sorted_model(
        ops in prop::collection::vec(timer_op(), 1..300),
    ) {
        let mut heap = TimerHeap::new();
        let mut model: TimerModel = Vec::new();
        let mut seq = 0u64;
        for op in ops {
            match op {
                TimerOp::Push(when) => {
                    let t = Timer { id: seq as usize, cancelled: Rc::new(Cell::new(false)) };
                    heap.push(when, t.clone());
                    model.push((key(when), seq, t));
                    seq += 1;
                }
                TimerOp::Cancel(n) => {
                    if !model.is_empty() {
                        let t = &model[n % model.len()].2;
                        if !t.is_cancelled() {
                            t.cancelled.set(true);
                            heap.note_cancelled();
                        }
                    }
                }
                TimerOp::Prune => {
                    let removed = heap.prune();
                    for t in removed {
                        prop_assert!(t.is_cancelled(), "pruned a live timer {}", t.id);
                        let at = model.iter().position(|e| e.2.id == t.id);
                        prop_assert!(at.is_some(), "pruned timer {} twice", t.id);
                        if let Some(at) = at {
                            model.swap_remove(at);
                        }
                    }
                    // What stays at the top is live, and cancelled entries never make up
                    // most of a large heap.
                    if let Some(i) = model_first(&model) {
                        prop_assert!(!model[i].2.is_cancelled());
                    }
                    let dead = model.iter().filter(|e| e.2.is_cancelled()).count();
                    prop_assert!(model.len() <= 100 || dead * 2 <= model.len());
                }
                TimerOp::PopDue(now) => {
                    let got = heap.pop_due(now);
                    // Due unless its deadline is later: as in asyncio, a NaN clock (an
                    // overridden `loop.time`) makes everything due.
                    let want = model_first(&model).filter(|&i| model[i].0.partial_cmp(&now) != Some(std::cmp::Ordering::Greater));
                    match (got, want) {
                        (Some(t), Some(i)) => {
                            prop_assert_eq!(t.id, model[i].2.id);
                            model.remove(i);
                        }
                        (None, None) => {}
                        (got, want) => prop_assert!(
                            false,
                            "pop_due({}): heap {:?}, model {:?}",
                            now,
                            got.map(|t| t.id),
                            want.map(|i| model[i].2.id)
                        ),
                    }
                }
                TimerOp::Drain => {
                    let mut ids: Vec<usize> = heap.drain().into_iter().map(|t| t.id).collect();
                    let mut want: Vec<usize> = model.drain(..).map(|e| e.2.id).collect();
                    ids.sort_unstable();
                    want.sort_unstable();
                    prop_assert_eq!(ids, want);
                }
            }
            prop_assert_eq!(heap.len(), model.len());
            prop_assert_eq!(heap.is_empty(), model.is_empty());
            let want_next = model_first(&model).map(|i| model[i].0);
            prop_assert_eq!(heap.next_when().map(f64::to_bits), want_next.map(f64::to_bits));
        }
        // Everything left comes out in (deadline, sequence) order.
        let mut order = Vec::new();
        while let Some(t) = heap.pop_due(f64::INFINITY) {
            order.push(t.id);
        }
        model.retain(|e| e.0 <= f64::INFINITY);
        model.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        prop_assert_eq!(order, model.iter().map(|e| e.2.id).collect::<Vec<_>>());
    }

    #[test]
    fn wait_duration_is_total_and_bounded(secs in prop_oneof![
        any::<f64>(),
        -10.0f64..1e6,
        Just(f64::NAN),
        Just(f64::INFINITY),
    ]) {
        let d = wait_duration(secs);
        prop_assert!(d <= Duration::from_secs(86_400));
        if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
            let diff = (d.as_secs_f64() - secs).abs();
            prop_assert!(diff <= 1e-9 * secs.max(1.0), "{} -> {:?}", secs, d);
        } else if secs.is_nan() || secs <= 0.0 {
            prop_assert_eq!(d, Duration::ZERO);
        }
    }
}

// -- fd registrations --------------------------------------------------------------------

const PIPES: usize = 3;

#[derive(Clone, Debug)]
enum IoOp {
    /// Sets (`Some`) or clears the reader or writer of fd number `fd` (modulo the pipes'
    /// `2 * PIPES` ends).
    Set {
        fd: usize,
        side: Side,
        item: Option<u32>,
    },
    /// Sets or clears the native interest (0: none, 1: read, 2: write, 3: both).
    Native {
        fd: usize,
        interest: u8,
        force: bool,
    },
    ForgetNative(usize),
    /// Writes a byte into pipe `n`.
    Fill(usize),
    /// Reads pipe `n` empty.
    Drain(usize),
    /// A registration for an fd that is not open fails and leaves nothing.
    BadFd(Side),
    /// One poll: exactly the readers of pipes holding data and the writers of write ends
    /// must run (level-triggered).
    Poll,
}

fn io_op() -> impl Strategy<Value = IoOp> {
    let side = prop_oneof![Just(Side::Read), Just(Side::Write)];
    prop_oneof![
        6 => (any::<usize>(), side.clone(), prop::option::of(0u32..1000))
            .prop_map(|(fd, side, item)| IoOp::Set { fd, side, item }),
        2 => (any::<usize>(), 0u8..4, any::<bool>())
            .prop_map(|(fd, interest, force)| IoOp::Native { fd, interest, force }),
        1 => any::<usize>().prop_map(IoOp::ForgetNative),
        2 => any::<usize>().prop_map(IoOp::Fill),
        2 => any::<usize>().prop_map(IoOp::Drain),
        1 => side.prop_map(IoOp::BadFd),
        4 => Just(IoOp::Poll),
    ]
}

/// The pipes' fds, closed on drop (also when a case fails).
struct Pipes(Vec<(RawFd, RawFd)>);

impl Pipes {
    fn new() -> Pipes {
        Pipes(
            (0..PIPES)
                .map(|_| {
                    let mut fds = [0; 2];
                    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
                    let rc = unsafe {
                        libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC)
                    };
                    assert_eq!(rc, 0);
                    (fds[0], fds[1])
                })
                .collect(),
        )
    }

    /// Every end, read ends first.
    fn fd(&self, n: usize) -> RawFd {
        let n = n % (2 * PIPES);
        if n < PIPES {
            self.0[n].0
        } else {
            self.0[n - PIPES].1
        }
    }
}

impl Drop for Pipes {
    fn drop(&mut self) {
        for &(r, w) in &self.0 {
            // SAFETY: closing fds this test owns.
            unsafe {
                libc::close(r);
                libc::close(w);
            }
        }
    }
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct ModelEntry {
    reader: Option<u32>,
    writer: Option<u32>,
    native: Option<Interest>,
}

impl ModelEntry {
    fn is_empty(&self) -> bool {
        self.reader.is_none() && self.writer.is_none() && self.native.is_none()
    }
}

fn interest(code: u8) -> Option<Interest> {
    match code {
        1 => Some(Interest::READABLE),
        2 => Some(Interest::WRITABLE),
        3 => Some(Interest::READABLE | Interest::WRITABLE),
        _ => None,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn io_map_matches_a_hash_map(ops in prop::collection::vec(io_op(), 1..60)) {
        let mut poll = Poll::new().unwrap();
        let mut map: IoMap<u32> = IoMap::new();
        let pipes = Pipes::new();
        let mut model: HashMap<RawFd, ModelEntry> = HashMap::new();
        let mut filled = [0usize; PIPES];
        let mut events = Events::with_capacity(64);
        for op in ops {
            match op {
                IoOp::Set { fd, side, item } => {
                    let fd = pipes.fd(fd);
                    let entry = model.entry(fd).or_default();
                    let slot = match side {
                        Side::Read => &mut entry.reader,
                        Side::Write => &mut entry.writer,
                    };
                    let want_old = std::mem::replace(slot, item);
                    let old = map.set(poll.registry(), fd, side, item).unwrap();
                    prop_assert_eq!(old, want_old);
                }
                IoOp::Native { fd, interest: code, force } => {
                    let fd = pipes.fd(fd);
                    model.entry(fd).or_default().native = interest(code);
                    map.set_native(poll.registry(), fd, interest(code), force).unwrap();
                }
                IoOp::ForgetNative(fd) => {
                    let fd = pipes.fd(fd);
                    if let Some(e) = model.get_mut(&fd) {
                        e.native = None;
                    }
                    // (The kernel keeps the registration: only the reader and writer
                    // are ever dispatched, so the extra interest shows nowhere.)
                    map.forget_native(fd);
                }
                IoOp::Fill(n) => {
                    let n = n % PIPES;
                    // SAFETY: a one-byte buffer for a pipe this test owns.
                    let rc = unsafe { libc::write(pipes.0[n].1, b"x".as_ptr().cast(), 1) };
                    prop_assert_eq!(rc, 1);
                    filled[n] += 1;
                }
                IoOp::Drain(n) => {
                    let n = n % PIPES;
                    let mut buf = [0u8; 256];
                    while filled[n] > 0 {
                        // SAFETY: `buf` is valid for `buf.len()` bytes.
                        let rc = unsafe {
                            libc::read(pipes.0[n].0, buf.as_mut_ptr().cast(), buf.len())
                        };
                        prop_assert!(rc > 0);
                        filled[n] -= rc as usize;
                    }
                }
                IoOp::BadFd(side) => {
                    let err = map.set(poll.registry(), 999_999, side, Some(1)).unwrap_err();
                    prop_assert_eq!(err.raw_os_error(), Some(libc::EBADF));
                    prop_assert!(map.get(999_999, side).is_none());
                }
                IoOp::Poll => {
                    map.rearm(poll.registry());
                    poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
                    let mut got = Vec::new();
                    for ev in events.iter() {
                        map.dispatch(Ready::from_event(ev), |x| got.push(*x));
                    }
                    let mut want = Vec::new();
                    for (n, &(r, w)) in pipes.0.iter().enumerate() {
                        if filled[n] > 0 {
                            want.extend(model.get(&r).and_then(|e| e.reader));
                        }
                        want.extend(model.get(&w).and_then(|e| e.writer));
                    }
                    got.sort_unstable();
                    want.sort_unstable();
                    prop_assert_eq!(got, want);
                }
            }
            model.retain(|_, e| !e.is_empty());
            prop_assert_eq!(map.len(), model.len());
            for n in 0..2 * PIPES {
                let fd = pipes.fd(n);
                let e = model.get(&fd).copied().unwrap_or_default();
                prop_assert_eq!(map.get(fd, Side::Read).copied(), e.reader);
                prop_assert_eq!(map.get(fd, Side::Write).copied(), e.writer);
                prop_assert_eq!(map.native(fd), e.native);
                prop_assert_eq!(map.has_handles(fd), e.reader.is_some() || e.writer.is_some());
            }
        }
        let mut items = map.clear(poll.registry());
        items.sort_unstable();
        let mut want: Vec<u32> = model
            .values()
            .flat_map(|e| e.reader.into_iter().chain(e.writer))
            .collect();
        want.sort_unstable();
        prop_assert_eq!(items, want);
        prop_assert!(map.is_empty());
    }
}
