//! The core of the event loop (asyncio: `BaseEventLoop` in `base_events.py`, plus the
//! reader/writer half of `BaseSelectorEventLoop`).
//!
//! `CoreLoop` owns the ready queue, the timer heap, the fd registrations and the poller.
//! `ferroloop.Loop` (Python) subclasses it together with `asyncio.AbstractEventLoop` and
//! adds the rarely-hot orchestration (tasks, executors, DNS, signals, run_until_complete).
//!
//! One iteration (`run_once`), as in asyncio:
//! 1. Decide how long to wait: not at all if callbacks are ready or `stop()` was called,
//!    until the earliest timer otherwise, forever if there is nothing to wait for.
//! 2. Poll, detached from the interpreter when the wait is not zero. Readiness reports
//!    become reader/writer handles appended to the ready queue.
//! 3. Timers whose deadline has passed move to the ready queue, in (when, seq) order.
//! 4. Run exactly the handles that were ready when this step began; what they schedule
//!    runs next iteration.
//!
//! Cross-thread wake-ups: `call_soon_threadsafe` appends to the ready queue (it holds the
//! interpreter lock, like every caller) and writes the waker only if the loop is, or is
//! about to be, blocked in the poller and nobody has written it since: N wake-ups from
//! other threads during one wait cost one syscall.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mio::{Events, Poll, Registry, Token, Waker};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyTuple, PyWeakrefReference};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::attach;
use crate::attach::SafeCall;
use crate::errors::os_error;
use crate::gil_cell::GilCell;
use crate::handles::{format_module, Args, Handle, TimerHandle};
use crate::metrics::Metrics;
use crate::poller::{interest_of, FdMap, IoMap, Side};
use crate::sock_ops::{self, OpKind, SockOp};
use crate::timers::TimerHeap;

mod batch;
mod fastcall;
mod io;
mod metrics;
mod native_io;

use crate::transport::{DatagramTransport, NativeTransport, StreamTransport};
pub use fastcall::install_fast_methods;
pub use io::fileobj_to_fd;

const WAKER_TOKEN: Token = Token(usize::MAX);
/// Tokens of Rust-owned sockets (transports) carry this bit above the fd.
pub(crate) const NATIVE_BIT: usize = 1 << 40;
const EVENTS_CAPACITY: usize = 1024;
/// While callbacks are ready, the poller is asked for I/O at most this often (seconds).
/// Discussion: asyncio polls (with a zero timeout) on every iteration, which costs a
/// syscall per iteration in loops that only pass control between tasks (`sleep(0)`,
/// future ping-pong). Polling at least every 50 µs keeps I/O latency within noise while
/// letting such iterations skip the syscall. Iterations with nothing ready always poll.
const BUSY_POLL_INTERVAL: f64 = 50e-6;

/// `time.monotonic()`, without the round trip through Python.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn current_thread_id() -> u64 {
    // SAFETY: a plain query of the calling thread's identifier (`threading.get_ident()`).
    unsafe { ffi::PyThread_get_thread_ident() as u64 }
}

/// An entry of the ready queue: a Python callback, or a turn of a Rust transport.
///
/// Discussion: an entry is 16 bytes, so the kinds of transport are variants here rather
/// than one variant holding a `NativeTransport`. At 24 bytes, `call_soon` built each entry
/// on the stack with narrow stores and copied it into the queue with a 16-byte load, which
/// the processor cannot forward from those stores: a stall on every callback.
pub enum ReadyItem {
    Handle(Py<Handle>),
    /// A transport's turn to read, or to write what it buffered.
    Stream(Py<StreamTransport>, Side),
    Datagram(Py<DatagramTransport>, Side),
    /// A turn of the native `sock_*` operation waiting on an fd.
    Sock(RawFd, Side),
}

impl ReadyItem {
    fn as_object(&self) -> Option<&Py<PyAny>> {
        match self {
            ReadyItem::Handle(h) => Some(h.as_any()),
            ReadyItem::Stream(t, _) => Some(t.as_any()),
            ReadyItem::Datagram(t, _) => Some(t.as_any()),
            ReadyItem::Sock(..) => None,
        }
    }
}

/// The native `sock_*` operations waiting on one fd.
///
/// Discussion: the poller registration outlives the operations. A socket served with
/// `sock_recv` and `sock_sendall` waits again and again; registering and removing it each
/// time cost two `epoll_ctl` calls per wait, a fifth of an echo server's system calls. The
/// fd stays registered (edge-triggered: an operation waits only after an attempt found the
/// socket not ready, so the next edge is still to come) while the same socket object uses
/// it. The registration is the fd's entry in `State::io` (its native interest), shared with
/// the fd's reader and writer, so `add_writer` or `sock_sendfile` on the same socket leaves
/// a waiting `sock_recv` its events. It is forgotten when a transport takes the fd over,
/// and renewed for another socket object, which may have inherited the number of a closed
/// one.
#[derive(Default)]
pub(crate) struct SockWaits {
    read: Option<SockOp>,
    write: Option<SockOp>,
    /// A weak reference to the socket object whose operations registered the fd.
    owner: Option<Py<PyAny>>,
}

impl SockWaits {
    pub(crate) fn slot(&mut self, side: Side) -> &mut Option<SockOp> {
        match side {
            Side::Read => &mut self.read,
            Side::Write => &mut self.write,
        }
    }
    /// The registration was made for operations of `sock` (compared by identity).
    pub(crate) fn is_owned_by(&self, sock: &Bound<'_, PyAny>) -> bool {
        self.owner.as_ref().is_some_and(|w| {
            w.bind(sock.py())
                .cast::<PyWeakrefReference>()
                .ok()
                .and_then(|w| w.upgrade())
                .is_some_and(|owner| owner.is(sock))
        })
    }

    pub(crate) fn interest(&self) -> Option<mio::Interest> {
        interest_of(self.read.is_some(), self.write.is_some())
    }
}

/// The Rust transport that owns an fd, as the loop records it (asyncio: `loop._transports`,
/// a `WeakValueDictionary`).
///
/// Discussion: the record must not outlive the transport's ownership of the fd, or any
/// later socket with that number is refused ("File descriptor N is used by transport").
/// Ownership ends when the connection is lost (the transport unregisters before it closes
/// its socket) or when the transport dies: a transport whose start failed (its protocol
/// factory returned None, say) is dropped without ever being closed. So the loop holds a
/// transport strongly only while the poller reports for it, which is what keeps a reading
/// transport alive (as asyncio's selector keeps its reader's handle), and weakly otherwise.
pub(crate) enum FdOwner {
    /// Registered with the poller (`NATIVE_BIT` token, edge-triggered).
    Polled(NativeTransport),
    /// Made, not (yet) registered with the poller: a weak reference.
    Made(Py<PyWeakrefReference>),
}

impl FdOwner {
    /// The transport, if it is alive.
    fn transport(&self, py: Python<'_>) -> Option<NativeTransport> {
        match self {
            FdOwner::Polled(t) => Some(t.clone_ref(py)),
            FdOwner::Made(w) => NativeTransport::from_object(&w.bind(py).upgrade()?).ok(),
        }
    }

    /// The record is `transport`'s.
    fn is(&self, py: Python<'_>, transport: &Bound<'_, PyAny>) -> bool {
        match self {
            FdOwner::Polled(t) => t.as_any().is(transport),
            FdOwner::Made(w) => w.bind(py).upgrade().is_some_and(|t| t.is(transport)),
        }
    }

    /// The record is that of the transport whose Rust struct is at `ptr` (see
    /// `NativeTransport::is_at`). A strong reference made here is dropped before this
    /// returns, with the transport still alive: no Python code runs.
    fn is_at(&self, py: Python<'_>, ptr: *const ()) -> bool {
        match self {
            FdOwner::Polled(t) => t.is_at(ptr),
            FdOwner::Made(_) => self.transport(py).is_some_and(|t| t.is_at(ptr)),
        }
    }

    /// The transport of a weak record is gone.
    fn is_dead(&self, py: Python<'_>) -> bool {
        match self {
            FdOwner::Polled(_) => false,
            FdOwner::Made(w) => w.bind(py).upgrade().is_none(),
        }
    }
}

pub(crate) struct State {
    ready: VecDeque<ReadyItem>,
    /// Rust transports by fd.
    transports: FdMap<FdOwner>,
    /// Native `sock_*` operations waiting for readiness, by fd (`SOCK_BIT` tokens).
    sock_waits: FdMap<SockWaits>,
    timers: TimerHeap<Py<TimerHandle>>,
    io: IoMap<Py<Handle>>,
    registry: Option<Registry>,
    waker: Option<Waker>,
    slow_callback_duration: f64,
    /// The handle being run, in debug mode (for `default_exception_handler`).
    current: Option<Py<Handle>>,
    /// When the poller was last asked for events.
    last_poll: f64,
    /// `set_task_factory`'s callable, if any.
    task_factory: Option<Py<PyAny>>,
    /// `{"loop": self}`, the keyword arguments of every `Future` and `Task` made here.
    loop_kwargs: Option<Py<PyDict>>,
    /// What `loop.metrics()` reports (see `crate::metrics`).
    metrics: Metrics,
}

impl State {
    /// Moves out the queued callbacks, timers, fd registrations (unregistered), transports,
    /// socket waits and the `{"loop": self}` dict (which refers back to the loop), for the
    /// caller to `release` once the borrow has ended.
    fn take_contents(&mut self) -> Contents {
        let io = match &self.registry {
            Some(r) => self.io.clear(r),
            None => Vec::new(),
        };
        Contents {
            ready: std::mem::take(&mut self.ready),
            timers: self.timers.drain(),
            io,
            transports: std::mem::take(&mut self.transports),
            sock_waits: std::mem::take(&mut self.sock_waits),
            loop_kwargs: self.loop_kwargs.take(),
        }
    }
}

/// The loop lets go of timers that left its heap without running (they were cancelled, or
/// the loop closed); called once no borrow of the state is held.
fn release_timers(py: Python<'_>, timers: Vec<Py<TimerHandle>>) {
    for t in timers {
        Handle::release(t.bind(py).as_super());
    }
}

/// What a closed (or cleared) loop lets go of.
struct Contents {
    ready: VecDeque<ReadyItem>,
    timers: Vec<Py<TimerHandle>>,
    io: Vec<Py<Handle>>,
    transports: FdMap<FdOwner>,
    sock_waits: FdMap<SockWaits>,
    loop_kwargs: Option<Py<PyDict>>,
}

impl Contents {
    /// Drops everything (with no borrow of the loop's state held: releasing runs Python
    /// code). A pending handle that someone else keeps becomes visible to the collector
    /// (see `Handle`); the rest is tracked already. A transport that nothing else keeps
    /// dies unclosed, which closes its socket.
    fn release(self, py: Python<'_>) {
        let Contents {
            ready,
            timers,
            io,
            transports,
            sock_waits,
            loop_kwargs,
        } = self;
        for item in ready {
            if let ReadyItem::Handle(h) = item {
                Handle::release(h.bind(py));
            }
        }
        release_timers(py, timers);
        drop((io, transports, sock_waits, loop_kwargs));
    }
}

#[pyclass(subclass, frozen, weakref, module = "ferroloop._ferroloop")]
pub struct CoreLoop {
    state: GilCell<State>,
    /// The poller and its event buffer; only the thread running the loop locks this.
    poll: Mutex<Option<(Poll, Events)>>,
    /// The loop is blocked (or about to block) in the poller.
    sleeping: AtomicBool,
    /// The waker was written during the current wait.
    wake_pending: AtomicBool,
    stopping: AtomicBool,
    closed: AtomicBool,
    debug: AtomicBool,
    /// Identifier of the thread running the loop; 0 when it is not running.
    thread_id: AtomicU64,
    timers_cancelled: Arc<AtomicUsize>,
    /// `time` is replaced on the instance or overridden in a subclass: scheduling reads
    /// `self.time()`, as asyncio's does, instead of the monotonic clock (see `clock`).
    custom_clock: AtomicBool,
}

/// `loop.time() + delay` through Python, for `call_later` with an overridden clock.
#[cold]
#[inline(never)]
fn custom_clock_plus(slf: &Bound<'_, PyAny>, delay: &Bound<'_, PyAny>) -> PyResult<f64> {
    let now = slf.safe_method0(intern!(slf.py(), "time"))?;
    now.add(delay)?.extract()
}

/// `asyncio.Future` and `asyncio.Task` (the C implementations when CPython has them), and
/// the keyword-names tuple `("loop",)` used to call them without building a dict.
/// The namespaces that asyncio's own loop takes `Future` and `Task` from at each call
/// (`futures.Future(loop=self)`, `tasks.Task(coro, loop=self, ...)`), so that code which
/// replaces them there (CPython's tests do, with the pure-Python classes) is honoured too.
struct AsyncioTypes {
    futures: Py<PyDict>,
    tasks: Py<PyDict>,
}

impl AsyncioTypes {
    fn get<'py>(
        py: Python<'py>,
        namespace: &Py<PyDict>,
        name: &Bound<'py, pyo3::types::PyString>,
    ) -> PyResult<Bound<'py, PyAny>> {
        namespace.bind(py).get_item(name)?.ok_or_else(|| {
            pyo3::exceptions::PyAttributeError::new_err(format!("asyncio has no {name}"))
        })
    }

    fn future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Self::get(py, &self.futures, intern!(py, "Future"))
    }

    fn task<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Self::get(py, &self.tasks, intern!(py, "Task"))
    }
}

fn asyncio_types(py: Python<'_>) -> PyResult<&AsyncioTypes> {
    static TYPES: PyOnceLock<AsyncioTypes> = PyOnceLock::new();
    TYPES.get_or_try_init(py, || {
        let namespace =
            |module: &str| -> PyResult<Py<PyDict>> { Ok(py.import(module)?.dict().unbind()) };
        Ok(AsyncioTypes {
            futures: namespace("asyncio.futures")?,
            tasks: namespace("asyncio.tasks")?,
        })
    })
}

/// `cls(*args, loop=event_loop)` for asyncio's `Future` and `Task`, whose C types have no
/// vectorcall: any call with a keyword builds a keyword dict, so the loop keeps one,
/// `{"loop": loop}`, and passes it each time (the types only read it).
fn call_with_loop<'py>(
    cls: &Bound<'py, PyAny>,
    args: impl IntoPyObject<'py, Target = PyTuple>,
    event_loop: &Bound<'py, CoreLoop>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let cached = event_loop
        .get()
        .state
        .borrow(py)
        .loop_kwargs
        .as_ref()
        .map(|k| k.clone_ref(py));
    let kwargs = match cached {
        Some(k) => k.into_bound(py),
        None => {
            let k = PyDict::new(py);
            k.set_item(intern!(py, "loop"), event_loop)?;
            event_loop.get().state.borrow_mut(py).loop_kwargs = Some(k.clone().unbind());
            k
        }
    };
    cls.safe_call(args, Some(&kwargs))
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".to_owned())
}

impl CoreLoop {
    pub(crate) fn debug_enabled(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(PyRuntimeError::new_err("Event loop is closed"))
        } else {
            Ok(())
        }
    }

    /// Debug-mode checks of `call_soon` and friends: right thread, usable callback.
    fn debug_checks(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<()> {
        if check_thread {
            let tid = self.thread_id.load(Ordering::Relaxed);
            if tid != 0 && tid != current_thread_id() {
                return Err(PyRuntimeError::new_err(
                    "Non-thread-safe operation invoked on an event loop other than the current one",
                ));
            }
        }
        format_module(py)?.safe_method(intern!(py, "check_callback"), (callback, method), None)?;
        Ok(())
    }

    #[inline(always)]
    fn new_handle(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
        repeats: bool,
    ) -> PyResult<Py<Handle>> {
        let debug = self.debug.load(Ordering::Relaxed);
        if !debug && !repeats {
            // Made outside a run, it is tracked (see `Handle`).
            return Handle::one_shot(py, callback, args, context, !self.is_running());
        }
        Handle::new_tracked(py, callback, args, context, debug, repeats)
    }

    /// `call_soon` proper (both the PyO3 method and the vectorcall fast path use it).
    pub(crate) fn call_soon_inner(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        if self.debug.load(Ordering::Relaxed) {
            self.debug_checks(py, &callback, "call_soon", true)?;
        }
        let handle = self.new_handle(py, callback, args, context, false)?;
        self.state
            .borrow_mut(py)
            .ready
            .push_back(ReadyItem::Handle(handle.clone_ref(py)));
        Ok(handle)
    }

    /// `call_at` proper: checks, then a `TimerHandle` on the heap.
    fn schedule_timer(
        &self,
        py: Python<'_>,
        method: &str,
        // The deadline, and the object it was given as when that was not a float.
        (when, when_obj): (f64, Option<Py<PyAny>>),
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        self.check_closed()?;
        if self.debug.load(Ordering::Relaxed) {
            self.debug_checks(py, &callback, method, true)?;
        }
        let debug = self.debug.load(Ordering::Relaxed);
        // Tracked if made outside a run (see `Handle`), or in debug mode.
        let tracked = debug || !self.is_running();
        let args = Args::from_tuple(args);
        let base = Handle::new(py, callback, args, context, (debug, false, tracked))?;
        let init = PyClassInitializer::from(base).add_subclass(TimerHandle::new(
            when,
            when_obj,
            self.timers_cancelled.clone(),
        ));
        let timer = Py::new(py, init)?;
        if tracked {
            Handle::expose(timer.bind(py).as_super());
        }
        self.state
            .borrow_mut(py)
            .timers
            .push(when, timer.clone_ref(py));
        Ok(timer)
    }

    /// The loop stops running: the pending handles and timers that someone else keeps
    /// become visible to the collector, which may now find the loop in a cycle (see
    /// `Handle`).
    fn expose_shared_pending(&self, py: Python<'_>) {
        let shared: Vec<Py<Handle>> = {
            let st = self.state.borrow(py);
            let queued = st.ready.iter().filter_map(|item| match item {
                ReadyItem::Handle(h) => Some(h),
                _ => None,
            });
            let mut shared: Vec<Py<Handle>> = queued
                .filter(|h| Handle::is_untracked_and_shared(h))
                .map(|h| h.clone_ref(py))
                .collect();
            for t in st.timers.iter() {
                let t = t.bind(py).as_super();
                if Handle::is_untracked_and_shared(t.as_unbound()) {
                    shared.push(t.clone().unbind());
                }
            }
            shared
        };
        for h in shared {
            Handle::expose(h.bind(py));
        }
    }

    /// Step 3: due timers join the ready queue. `now`: the time timers are compared with;
    /// `custom`: it is an overridden clock's.
    #[inline]
    fn collect_timers(&self, py: Python<'_>, now: impl FnOnce() -> f64, custom: bool) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.borrow_mut(py);
            if st.timers.is_empty() {
                // A timer scheduled from now on is late from no earlier than now (on an
                // overridden clock, from its deadline).
                st.metrics.timer_ref = if custom {
                    f64::NEG_INFINITY
                } else {
                    st.metrics.mark
                };
                return;
            }
            let now = now();
            let State {
                timers,
                ready,
                metrics,
                ..
            } = &mut *st;
            while let Some(t) = timers.pop_due(now) {
                t.get().set_unscheduled();
                if t.bind(py).as_super().get().is_cancelled() {
                    dead.push(t);
                } else {
                    metrics.timer_fired(t.get().deadline(), now);
                    let handle = t.into_bound(py).into_super();
                    ready.push_back(ReadyItem::Handle(handle.unbind()));
                }
            }
            metrics.timer_ref = now;
        }
        release_timers(py, dead);
    }

    /// The rest of a `sock_sendall` that could not send everything at once: a future
    /// waiting for room, or (blocking socket) the count sent, for the general path.
    fn sendall_wait(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        sent: usize,
        rest: Vec<u8>,
    ) -> PyResult<Py<PyAny>> {
        if slf.get().sock_hand_over(slf.py(), sock, fd)? {
            return Ok(sent.into_pyobject(slf.py())?.into_any().unbind());
        }
        let kind = OpKind::SendAll { data: rest, pos: 0 };
        Self::sock_op_start(slf, sock, fd, Side::Write, kind)
    }

    fn run_once(&self, slf: &Bound<'_, CoreLoop>) -> PyResult<()> {
        let py = slf.py();
        py.check_signals()?;
        // `self.time()` when `time` is overridden, else None: the monotonic clock is then
        // read where it is needed, with no call into Python.
        if self.custom_clock.load(Ordering::Relaxed) {
            return self.run_once_custom_clock(slf);
        }
        self.poll_io(py, |end_of_batch| end_of_batch)?;
        self.collect_timers(py, monotonic, false);
        self.run_ready(slf)
    }

    /// `run_once` when `time` is overridden: timers are compared with `self.time()`, read
    /// before the wait and again after it (asyncio's `end_time`), outside any borrow of
    /// the state since it runs Python code.
    #[cold]
    #[inline(never)]
    fn run_once_custom_clock(&self, slf: &Bound<'_, CoreLoop>) -> PyResult<()> {
        let py = slf.py();
        let time = intern!(py, "time");
        let now: f64 = slf.safe_method0(time)?.extract()?;
        self.poll_io(py, |_| now)?;
        let now: f64 = slf.safe_method0(time)?.extract()?;
        self.collect_timers(py, || now, true);
        self.run_ready(slf)
    }
}

#[pymethods]
impl CoreLoop {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Self> {
        let poll = Poll::new().map_err(os_error)?;
        let registry = poll.registry().try_clone().map_err(os_error)?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN).map_err(os_error)?;
        Ok(CoreLoop {
            state: GilCell::new(State {
                ready: VecDeque::new(),
                transports: FdMap::default(),
                sock_waits: FdMap::default(),
                timers: TimerHeap::new(),
                io: IoMap::new(),
                registry: Some(registry),
                waker: Some(waker),
                slow_callback_duration: 0.1,
                current: None,
                last_poll: 0.0,
                task_factory: None,
                loop_kwargs: None,
                metrics: Metrics::new(monotonic()),
            }),
            poll: Mutex::new(Some((poll, Events::with_capacity(EVENTS_CAPACITY)))),
            sleeping: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            timers_cancelled: Arc::new(AtomicUsize::new(0)),
            custom_clock: AtomicBool::new(false),
        })
    }

    /// `time.monotonic()`: the loop's clock.
    fn time(&self) -> f64 {
        monotonic()
    }

    /// Whether scheduling calls `self.time()` (set by `Loop` when `time` is replaced on
    /// the instance or overridden in a subclass) or reads the monotonic clock directly.
    fn _set_custom_clock(&self, enabled: bool) {
        self.custom_clock.store(enabled, Ordering::Relaxed);
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.call_soon_inner(py, callback, Args::from_tuple(args), context)
    }

    /// A new `asyncio.Future` attached to this loop.
    pub fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let types = asyncio_types(py)?;
        call_with_loop(&types.future(py)?, (), slf)
    }

    /// Records a new transport as the owner of its fd (asyncio: `loop._transports[fd]`), so
    /// `add_reader` and friends refuse the fd from the start.
    fn _attach_transport(&self, py: Python<'_>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let fd = NativeTransport::from_object(transport)?.fd();
        // Made before the state is borrowed: allocating may start a collection.
        let weak = FdOwner::Made(PyWeakrefReference::new(transport)?.unbind());
        let old = self.state.borrow_mut(py).transports.insert(fd, weak);
        drop(old);
        Ok(())
    }

    /// Native `sock_recv`: bytes, a future of bytes, or `NotImplemented` when the fd is in
    /// use by a reader, writer or transport, or the socket would have to block in blocking
    /// mode (then `Loop` takes the general path, which calls the socket's own `recv`).
    fn _sock_recv(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        n: isize,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let n = sock_ops::recv_size(n)?;
        if !slf.get().sock_fd_free(py, fd) {
            return Ok(py.NotImplemented());
        }
        if let Some(data) = sock_ops::first_recv(py, fd, n)? {
            return Ok(data);
        }
        if slf.get().sock_hand_over(py, sock, fd)? {
            return Ok(py.NotImplemented());
        }
        Self::sock_op_start(slf, sock, fd, Side::Read, OpKind::Recv { n })
    }

    /// Native `sock_recv_into`: an int, a future of it, or `NotImplemented` (as
    /// `_sock_recv`).
    fn _sock_recv_into(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if !slf.get().sock_fd_free(py, fd) {
            return Ok(py.NotImplemented());
        }
        if let Some(n) = sock_ops::first_recv_into(py, fd, buf)? {
            return Ok(n.into_pyobject(py)?.into_any().unbind());
        }
        if slf.get().sock_hand_over(py, sock, fd)? {
            return Ok(py.NotImplemented());
        }
        let buf = buf.clone().unbind();
        Self::sock_op_start(slf, sock, fd, Side::Read, OpKind::RecvInto { buf })
    }

    /// Native `sock_sendall`: None when everything was sent at once, else a future, or
    /// `NotImplemented` (as `_sock_recv`). A socket in blocking mode that cannot take
    /// everything at once gives the number of bytes sent: the general path sends the rest
    /// with the socket's own `send`.
    fn _sock_sendall(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if !slf.get().sock_fd_free(py, fd) {
            return Ok(py.NotImplemented());
        }
        let (sent, rest) = if let Ok(b) = data.cast::<PyBytes>() {
            let bytes = b.as_bytes();
            let sent = sock_ops::first_send(fd, bytes)?;
            if sent == bytes.len() {
                return Ok(py.None());
            }
            (sent, &bytes[sent..])
        } else {
            // Any C-contiguous buffer, whatever its item format, as its raw bytes; anything
            // else takes the general path, where `socket.send` says what it thinks of it.
            let Ok(buf) = crate::buffers::RawBuffer::readable(data) else {
                return Ok(py.NotImplemented());
            };
            // No Python code runs while the slice is used.
            let bytes = buf.as_slice();
            let sent = sock_ops::first_send(fd, bytes)?;
            if sent == bytes.len() {
                return Ok(py.None());
            }
            let rest = crate::errors::try_copy(&bytes[sent..])?;
            drop(buf);
            return Self::sendall_wait(slf, sock, fd, sent, rest);
        };
        let rest = crate::errors::try_copy(rest)?;
        Self::sendall_wait(slf, sock, fd, sent, rest)
    }

    /// Schedules a coroutine as an `asyncio.Task` (through the task factory if one is set).
    #[pyo3(signature = (coro, *, name=None, context=None, **kwargs))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if context.is_some() && py.version_info() < (3, 11) {
            // 3.10's create_task (and Task) have no `context` parameter.
            return Err(PyTypeError::new_err(
                "create_task() got an unexpected keyword argument 'context'",
            ));
        }
        this.check_closed()?;
        let factory = this
            .state
            .borrow(py)
            .task_factory
            .as_ref()
            .map(|f| f.clone_ref(py));
        let kwargs_empty = kwargs.is_none_or(|k| k.is_empty());
        if let Some(factory) = factory {
            let kw = match kwargs {
                Some(k) => k.copy()?,
                None => PyDict::new(py),
            };
            if let Some(c) = context {
                kw.set_item(intern!(py, "context"), c)?;
            }
            // From 3.14 the factory is given every keyword argument, `name` too; before, the
            // task was named after the factory returned it.
            let name_to_factory = py.version_info() >= (3, 14);
            if let (Some(n), true) = (name, name_to_factory) {
                kw.set_item(intern!(py, "name"), n)?;
            }
            let task = factory.bind(py).safe_call((slf, coro), Some(&kw))?;
            if let (Some(n), false) = (name, name_to_factory) {
                task.safe_method1(intern!(py, "set_name"), n)?;
            }
            return Ok(task);
        }
        let types = asyncio_types(py)?;
        let task = &types.task(py)?;
        if name.is_none() && context.is_none() && kwargs_empty {
            return call_with_loop(task, (coro,), slf);
        }
        let kw = match kwargs {
            Some(k) => k.copy()?,
            None => PyDict::new(py),
        };
        kw.set_item(intern!(py, "loop"), slf)?;
        kw.set_item(intern!(py, "name"), name)?;
        if let Some(c) = context {
            kw.set_item(intern!(py, "context"), c)?;
        }
        task.safe_call((coro,), Some(&kw))
    }

    fn set_task_factory(&self, py: Python<'_>, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let factory = factory.filter(|f| !f.is_none());
        if factory.as_ref().is_some_and(|f| !f.is_callable()) {
            return Err(PyTypeError::new_err(
                "task factory must be a callable or None",
            ));
        }
        let old = std::mem::replace(
            &mut self.state.borrow_mut(py).task_factory,
            factory.map(Bound::unbind),
        );
        drop(old);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .task_factory
            .as_ref()
            .map(|f| f.clone_ref(py))
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        if self.debug.load(Ordering::Relaxed) {
            self.debug_checks(py, &callback, "call_soon_threadsafe", false)?;
        }
        let handle = self.new_handle(py, callback, Args::from_tuple(args), context, false)?;
        if crate::threadsafe::asyncio_has_threadsafe_handles(py) {
            handle.get().make_threadsafe();
        }
        let st = &mut *self.state.borrow_mut(py);
        st.ready.push_back(ReadyItem::Handle(handle.clone_ref(py)));
        if self.sleeping.load(Ordering::SeqCst) && !self.wake_pending.swap(true, Ordering::SeqCst) {
            if let Some(w) = &st.waker {
                // A failed wake can only mean the eventfd counter is saturated, i.e. a
                // wake-up is already pending.
                let _ = w.wake();
            }
        }
        Ok(handle)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let py = slf.py();
        let this = slf.get();
        // `self.time() + delay`, as asyncio computes it: ints and floats directly, anything
        // else (or an overridden clock's value) through Python's `+` (a Decimal is refused,
        // a numpy float accepted).
        let when = if this.custom_clock.load(Ordering::Relaxed) {
            custom_clock_plus(slf, delay)?
        } else if delay.is_instance_of::<PyFloat>() || delay.is_instance_of::<PyInt>() {
            monotonic() + delay.extract::<f64>()?
        } else {
            PyFloat::new(py, monotonic()).add(delay)?.extract::<f64>()?
        };
        this.schedule_timer(py, "call_later", (when, None), callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        &self,
        py: Python<'_>,
        when: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        // `when()` gives back what was passed (asyncio keeps the object).
        let original = (!when.is_exact_instance_of::<PyFloat>()).then(|| when.clone().unbind());
        let deadline = (when.extract()?, original);
        self.schedule_timer(py, "call_at", deadline, callback, args, context)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.add_io(py, fd, Side::Read, callback, args)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.add_io(py, fd, Side::Write, callback, args)
    }

    fn remove_reader(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_io(py, fd, Side::Read)
    }

    fn remove_writer(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_io(py, fd, Side::Write)
    }

    /// The reader handle registered for `fd`, if any (for diagnostics and tests).
    fn _get_reader(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<Option<Py<Handle>>> {
        let Ok(fd) = RawFd::try_from(fileobj_to_fd(fd)?) else {
            return Ok(None);
        };
        Ok(self
            .state
            .borrow(py)
            .io
            .get(fd, Side::Read)
            .map(|h| h.clone_ref(py)))
    }

    fn _get_writer(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<Option<Py<Handle>>> {
        let Ok(fd) = RawFd::try_from(fileobj_to_fd(fd)?) else {
            return Ok(None);
        };
        Ok(self
            .state
            .borrow(py)
            .io
            .get(fd, Side::Write)
            .map(|h| h.clone_ref(py)))
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn is_running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn get_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    fn _set_debug(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    #[getter]
    fn get_slow_callback_duration(&self, py: Python<'_>) -> f64 {
        self.state.borrow(py).slow_callback_duration
    }

    #[setter]
    fn set_slow_callback_duration(&self, py: Python<'_>, value: f64) {
        self.state.borrow_mut(py).slow_callback_duration = value;
    }

    /// The figures of `loop.metrics()` as a dict (`ferroloop._metrics` makes the object);
    /// `reset` empties the timer-lag histogram and the slowest callbacks afterwards.
    #[pyo3(signature = (reset=false))]
    fn _metrics<'py>(&self, py: Python<'py>, reset: bool) -> PyResult<Bound<'py, PyDict>> {
        self.metrics_snapshot(py, reset)
    }

    /// The identifier of the thread running the loop, or None.
    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    #[getter]
    fn _current_handle(&self, py: Python<'_>) -> Option<Py<Handle>> {
        self.state
            .borrow(py)
            .current
            .as_ref()
            .map(|h| h.clone_ref(py))
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Runs iterations until `stop()`; the body of `run_forever` (whose Python part sets
    /// up the running-loop and async-generator hooks around it).
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.check_closed()?;
        if this
            .thread_id
            .compare_exchange(0, current_thread_id(), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(PyRuntimeError::new_err(
                "This event loop is already running",
            ));
        }
        /// Marks the loop as no longer running however `_run` ends (a panic included).
        struct Running<'a>(&'a CoreLoop);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.stopping.store(false, Ordering::Relaxed);
                self.0.thread_id.store(0, Ordering::SeqCst);
            }
        }
        let _running = Running(this);
        let py = slf.py();
        this.state.borrow_mut(py).metrics.run_started(monotonic());
        // Interpreter exit may end this thread while callbacks run (see `attach`).
        let result = attach::hang_on_exit(|| loop {
            this.run_once(slf)?;
            if this.stopping.load(Ordering::Relaxed) {
                return Ok(());
            }
        });
        this.state.borrow_mut(py).metrics.worked(monotonic());
        this.expose_shared_pending(py);
        result
    }

    /// Releases the queues, the registrations and the poller (the Rust half of `close`).
    fn _close(&self, py: Python<'_>) -> PyResult<()> {
        if self.is_running() {
            return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
        }
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (contents, registry, waker) = {
            let mut st = self.state.borrow_mut(py);
            (st.take_contents(), st.registry.take(), st.waker.take())
        };
        contents.release(py);
        drop((registry, waker));
        if let Ok(mut g) = self.poll.lock() {
            g.take();
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow_for_gc() {
            for item in st.ready.iter() {
                match item {
                    ReadyItem::Handle(h) => Handle::traverse_pending(h, &visit)?,
                    other => visit.call(other.as_object())?,
                }
            }
            for w in st.sock_waits.values() {
                for op in w.read.iter().chain(w.write.iter()) {
                    visit.call(op.future())?;
                    visit.call(&op.sock)?;
                }
                visit.call(&w.owner)?;
            }
            for owner in st.transports.values() {
                match owner {
                    FdOwner::Polled(t) => visit.call(t.as_any())?,
                    FdOwner::Made(w) => visit.call(w)?,
                }
            }
            for t in st.timers.iter() {
                visit.call(t)?;
            }
            for h in st.io.iter() {
                visit.call(h)?;
            }
            visit.call(&st.task_factory)?;
            visit.call(&st.loop_kwargs)?;
            visit.call(&st.current)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let (contents, factory) = {
            let Some(mut st) = self.state.try_borrow_mut_for_gc() else {
                return;
            };
            (st.take_contents(), st.task_factory.take())
        };
        // SAFETY: the collector clears objects on an attached thread.
        contents.release(unsafe { Python::assume_attached() });
        drop(factory);
    }
}
