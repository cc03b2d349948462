//! Rust transports: stream (TCP, Unix, pipes) and datagram (UDP, Unix datagram), and what
//! they share: flow control of the write buffer, running protocol callbacks in the
//! transport's context, and the enum the loop keeps them in.

pub mod datagram;
pub mod finalize;
pub mod sock_io;
pub mod stream;
pub mod tls;

use std::os::fd::RawFd;

use std::ffi::CString;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};
use std::cell::{Ref, RefMut};

use crate::attach::SafeCall;
use crate::event_loop::{CoreLoop, ReadyItem};
use crate::poller::Side;

pub use datagram::DatagramTransport;
pub use stream::{ReadPipeTransport, StreamTransport, WritePipeTransport};
pub use tls::{TlsProtocol, TlsTransport};

/// Default high-water mark of a write buffer (asyncio's).
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// After this many writes to a lost connection, asyncio starts warning.
pub const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// A transport the loop polls for: what its ready queue and fd map hold.
pub enum NativeTransport {
    Stream(Py<StreamTransport>),
    Datagram(Py<DatagramTransport>),
}

impl NativeTransport {
    /// A `StreamTransport` or `DatagramTransport` object as the loop keeps it.
    pub fn from_object(obj: &Bound<'_, PyAny>) -> PyResult<NativeTransport> {
        if let Ok(t) = obj.cast::<StreamTransport>() {
            return Ok(NativeTransport::Stream(t.clone().unbind()));
        }
        let t = obj.cast::<DatagramTransport>()?;
        Ok(NativeTransport::Datagram(t.clone().unbind()))
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            NativeTransport::Stream(t) => NativeTransport::Stream(t.clone_ref(py)),
            NativeTransport::Datagram(t) => NativeTransport::Datagram(t.clone_ref(py)),
        }
    }

    pub fn as_any(&self) -> &Py<PyAny> {
        match self {
            NativeTransport::Stream(t) => t.as_any(),
            NativeTransport::Datagram(t) => t.as_any(),
        }
    }

    pub fn fd(&self) -> RawFd {
        match self {
            NativeTransport::Stream(t) => t.get().fd(),
            NativeTransport::Datagram(t) => t.get().fd(),
        }
    }

    /// Whether this is the transport whose Rust struct is at `ptr`.
    pub fn is_at(&self, ptr: *const ()) -> bool {
        match self {
            NativeTransport::Stream(t) => std::ptr::eq(t.get() as *const _ as *const (), ptr),
            NativeTransport::Datagram(t) => std::ptr::eq(t.get() as *const _ as *const (), ptr),
        }
    }

    pub fn is_closing(&self, py: Python<'_>) -> bool {
        match self {
            NativeTransport::Stream(t) => t.get().is_closing(py),
            NativeTransport::Datagram(t) => t.get().is_closing(py),
        }
    }

    /// The poller reported a hang-up or an error (streams keep reading until EOF).
    pub fn note_hangup(&self, py: Python<'_>) {
        if let NativeTransport::Stream(t) = self {
            t.get().note_hangup(py);
        }
    }

    /// Its turn to read or to write, as an entry of the loop's ready queue.
    pub fn turn(self, side: Side) -> ReadyItem {
        match self {
            NativeTransport::Stream(t) => ReadyItem::Stream(t, side),
            NativeTransport::Datagram(t) => ReadyItem::Datagram(t, side),
        }
    }
}

/// The state every transport has (asyncio: `_SelectorTransport`'s attributes).
pub struct Common {
    pub event_loop: Py<CoreLoop>,
    /// The socket (or pipe) object; it owns the fd. `None` once closed.
    pub sock: Option<Py<PyAny>>,
    pub protocol: Py<PyAny>,
    /// `connection_made` was (or will be) called, so `connection_lost` is owed.
    pub protocol_connected: bool,
    pub extra: Py<PyDict>,
    /// The context protocol callbacks run in (copied when the transport was made).
    pub context: Py<PyAny>,
    pub flow: FlowControl,
    /// Set when `connection_lost` is scheduled; counts writes after that.
    pub conn_lost: u32,
    pub closing: bool,
    /// Registered with the poller (reading has started).
    pub registered: bool,
    /// Writable interest is on.
    pub want_write: bool,
}

impl Common {
    pub fn new(
        event_loop: Bound<'_, CoreLoop>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        extra: Bound<'_, PyDict>,
        context: Py<PyAny>,
    ) -> Common {
        Common {
            event_loop: event_loop.unbind(),
            sock: Some(sock.unbind()),
            protocol: protocol.unbind(),
            protocol_connected: true,
            extra: extra.unbind(),
            context,
            flow: FlowControl::default(),
            conn_lost: 0,
            closing: false,
            registered: false,
            want_write: false,
        }
    }

    /// What the transport refers to, for the collector (see `Transport`).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sock)?;
        visit.call(&self.protocol)?;
        visit.call(&self.extra)?;
        visit.call(&self.context)
    }

    /// Lets go of the protocol (asyncio's `_call_connection_lost` and `__clear__`): it
    /// usually keeps the transport. Returned, to be dropped once the borrow has ended.
    pub fn take_protocol(&mut self, py: Python<'_>) -> Py<PyAny> {
        std::mem::replace(&mut self.protocol, py.None())
    }

    /// asyncio's transport `__del__` (the finalizer, see `finalize`), once the transport
    /// (whose `repr` is given as it was) gave up the socket it still owned, its loop and its
    /// server: warn (`ResourceWarning: unclosed transport ...`), close the socket, forget
    /// the transport's record in the loop and (3.13+) detach from the server.
    pub fn close_unclosed(
        slf: &Bound<'_, PyAny>,
        fd: RawFd,
        repr: &str,
        (sock, event_loop, server): (Py<PyAny>, Py<CoreLoop>, Option<Py<PyAny>>),
    ) {
        let py = slf.py();
        warn_unclosed(slf, repr);
        if let Err(e) = sock.bind(py).safe_method0(intern!(py, "close")) {
            e.write_unraisable(py, Some(slf));
        }
        event_loop.bind(py).get().forget_transport(py, fd, slf);
        if let Some(server) = server.filter(|_| py.version_info() >= (3, 13)) {
            if let Err(e) = server.bind(py).safe_method1(intern!(py, "_detach"), slf) {
                e.write_unraisable(py, Some(slf));
            }
        }
    }

    /// `get_extra_info`: `extra[name]` or `default`. The caller takes `extra` out of the
    /// transport's state first: looking `name` up runs its `__hash__`/`__eq__`.
    pub fn lookup_extra(
        py: Python<'_>,
        extra: &Py<PyDict>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match extra.bind(py).get_item(name)? {
            Some(v) => Ok(v.unbind()),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }
}

/// What the shared transport machinery needs of a transport class.
///
/// Discussion: a transport's protocol usually keeps the transport (`self.transport`), so
/// every transport is a cycle. As asyncio's, ours let go of the protocol, the socket and
/// the server once the connection is lost, which breaks the cycle at once; and they are
/// visible to the collector (`__traverse__`/`__clear__`), so cycles they are still part of
/// (a transport dropped unclosed, a loop dropped with connections open) are collected.
/// A transport that dies still owning its socket closes it, warning as asyncio does.
pub trait Transport: pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync {
    fn fd(&self) -> RawFd;
    fn common(&self, py: Python<'_>) -> Ref<'_, Common>;
    fn common_mut(&self, py: Python<'_>) -> RefMut<'_, Common>;
    /// Drops whatever is queued for writing (a forced close).
    fn discard_buffer(&self, py: Python<'_>);
    /// Whether the socket object still holds the fd (the caller may have closed it, and
    /// the number may be another socket's now). Takes no borrow of the state while it
    /// calls into Python.
    fn holds_fd(&self, py: Python<'_>) -> bool;

    /// Identifies the transport in the loop's fd map (see `NativeTransport::is_at`).
    fn identity(&self) -> *const () {
        self as *const Self as *const ()
    }

    fn loop_of(&self, py: Python<'_>) -> Py<CoreLoop> {
        self.common(py).event_loop.clone_ref(py)
    }

    /// The socket (or pipe) object, while the transport has not closed it.
    fn sock_obj(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.common(py).sock.as_ref().map(|s| s.clone_ref(py))
    }
}

/// Turns writable interest on or off, or with neither side wanted, forgets the
/// registration for good (the transport is stopping). The poller is only told while the
/// fd is still the transport's (see `CoreLoop::transport_modify`).
pub fn set_interest<T: Transport>(t: &T, py: Python<'_>, read: bool, write: bool) -> PyResult<()> {
    let event_loop = {
        let mut c = t.common_mut(py);
        if !c.registered {
            return Ok(());
        }
        if !read && !write {
            c.registered = false;
            c.want_write = false;
        } else if c.want_write == write {
            return Ok(());
        } else {
            c.want_write = write;
        }
        c.event_loop.clone_ref(py)
    };
    let held = t.holds_fd(py);
    let core = event_loop.bind(py).get();
    if read || write {
        if !held {
            // Closed under us: the kernel dropped the registration with the fd.
            return Ok(());
        }
        core.transport_modify(py, t.identity(), t.fd(), write)
    } else {
        core.transport_unregister(py, t.identity(), t.fd(), held);
        Ok(())
    }
}

/// `warnings.warn(f"unclosed transport {repr}", ResourceWarning, source=slf)`; a failure (the
/// warning made an error) is reported as unraisable.
pub fn warn_unclosed(slf: &Bound<'_, PyAny>, repr: &str) {
    let py = slf.py();
    let message = CString::new(format!("unclosed transport {repr}")).unwrap_or_default();
    // SAFETY: attached; `slf` is a live object; the format takes one C string, `message`,
    // which outlives the call.
    let rc =
        unsafe { ffi::PyErr_ResourceWarning(slf.as_ptr(), 1, c"%s".as_ptr(), message.as_ptr()) };
    if rc < 0 {
        PyErr::fetch(py).write_unraisable(py, Some(slf));
    }
}

/// Schedules `_call_connection_lost(exc)` as a loop callback.
pub fn schedule_connection_lost<T: Transport>(
    slf: &Bound<'_, T>,
    exc: Option<Py<PyAny>>,
) -> PyResult<()> {
    let py = slf.py();
    let event_loop = slf.get().common(py).event_loop.clone_ref(py);
    let cb = slf.as_any().getattr(intern!(py, "_call_connection_lost"))?;
    event_loop
        .bind(py)
        .safe_method(intern!(py, "call_soon"), (cb, exc), None)?;
    Ok(())
}

/// asyncio's `_force_close`: drop the buffer, stop, and schedule `connection_lost(exc)`.
pub fn force_close<T: Transport>(slf: &Bound<'_, T>, exc: Option<Py<PyAny>>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    {
        let mut c = this.common_mut(py);
        if c.conn_lost > 0 {
            return Ok(());
        }
        c.closing = true;
        c.conn_lost += 1;
    }
    this.discard_buffer(py);
    set_interest(this, py, false, false)?;
    schedule_connection_lost(slf, exc)
}

/// asyncio's `_fatal_error`: report (through the loop, which logs OSErrors only in debug
/// mode), then force-close with the exception.
pub fn fatal_error<T: Transport>(slf: &Bound<'_, T>, exc: PyErr, message: &str) -> PyResult<()> {
    let py = slf.py();
    let (event_loop, protocol) = {
        let c = slf.get().common(py);
        (c.event_loop.clone_ref(py), c.protocol.clone_ref(py))
    };
    let exc = exc.into_value(py).into_any();
    event_loop.bind(py).safe_method(
        intern!(py, "_transport_error"),
        (slf, &exc, message, protocol),
        None,
    )?;
    force_close(slf, Some(exc))
}

/// asyncio's `close()` of a transport whose `buffered` bytes are still to be sent: stop
/// reading; if nothing is buffered, schedule `connection_lost(None)` now, else the write side
/// does when the buffer drains.
pub fn close<T: Transport>(slf: &Bound<'_, T>, buffered: usize) -> PyResult<()> {
    let py = slf.py();
    {
        let mut c = slf.get().common_mut(py);
        if c.closing {
            return Ok(());
        }
        c.closing = true;
        if buffered > 0 {
            return Ok(());
        }
        c.conn_lost += 1;
    }
    set_interest(slf.get(), py, false, false)?;
    schedule_connection_lost(slf, None)
}

/// The shared part of `_call_connection_lost`: unregister, tell the protocol, close the
/// socket. Returns `false` if that already happened.
pub fn connection_lost<T: Transport>(slf: &Bound<'_, T>, exc: Option<Py<PyAny>>) -> PyResult<bool> {
    let py = slf.py();
    let this = slf.get();
    let (protocol, connected) = {
        let mut c = this.common_mut(py);
        if c.sock.is_none() {
            return Ok(false);
        }
        c.conn_lost = c.conn_lost.max(1);
        c.closing = true;
        let connected = std::mem::replace(&mut c.protocol_connected, false);
        (c.protocol.clone_ref(py), connected)
    };
    set_interest(this, py, false, false)?;
    // Forget the fd before the socket closes and its number can be reused.
    let held = this.holds_fd(py);
    let event_loop = this.common(py).event_loop.clone_ref(py);
    event_loop
        .bind(py)
        .get()
        .transport_unregister(py, this.identity(), this.fd(), held);
    // Runs in the caller's context: a loop callback's own, or the write turn's.
    let result = if connected {
        protocol
            .bind(py)
            .safe_method1(intern!(py, "connection_lost"), exc)
            .map(drop)
    } else {
        Ok(())
    };
    // As asyncio: the socket closes and the protocol goes whatever connection_lost did.
    let (sock, protocol) = {
        let mut c = this.common_mut(py);
        (c.sock.take(), c.take_protocol(py))
    };
    let closed = match sock {
        Some(sock) => sock.bind(py).safe_method0(intern!(py, "close")).map(drop),
        None => Ok(()),
    };
    drop(protocol);
    closed?;
    result.map(|()| true)
}

/// A transport's read or write turn raised what its own error handling does not catch
/// (asyncio: an exception escaping the reader or writer callback, e.g. from
/// `eof_received()`'s answer or a pipe protocol lacking `eof_received`):
/// `KeyboardInterrupt`/`SystemExit` propagate, anything else goes to the loop's exception
/// handler (`Loop._report_transport_turn_error`) and the loop goes on, as after a handle.
#[cold]
#[inline(never)]
pub fn turn_failed<T: Transport>(slf: &Bound<'_, T>, side: Side, e: PyErr) -> PyResult<()> {
    let py = slf.py();
    if is_base_exit(py, &e) {
        return Err(e);
    }
    let method = match side {
        Side::Read => "_read_ready",
        Side::Write => "_write_ready",
    };
    let event_loop = slf.get().loop_of(py);
    event_loop.bind(py).safe_method(
        intern!(py, "_report_transport_turn_error"),
        (slf, e.into_value(py), method),
        None,
    )?;
    Ok(())
}

/// Watermarks of a write buffer and whether the protocol was told to pause.
pub struct FlowControl {
    pub high: usize,
    pub low: usize,
    pub paused: bool,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl {
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_HIGH_WATER / 4,
            paused: false,
        }
    }
}

impl FlowControl {
    /// asyncio's `_set_write_buffer_limits`: defaults derived from whichever is given.
    pub fn set_limits(&mut self, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        (self.high, self.low) = water_marks(high, low, DEFAULT_HIGH_WATER)?;
        Ok(())
    }

    /// Whether `pause_writing` is due now that `size` bytes are buffered (and marks it).
    pub fn pause_due(&mut self, size: usize) -> bool {
        if size <= self.high || self.paused {
            return false;
        }
        self.paused = true;
        true
    }

    /// Whether `resume_writing` is due now that `size` bytes are buffered (and marks it).
    pub fn resume_due(&mut self, size: usize) -> bool {
        if !self.paused || size > self.low {
            return false;
        }
        self.paused = false;
        true
    }
}

/// asyncio's water marks from optional limits: `default_high` when neither is given, four
/// times `low` when only it is, and `high / 4` as the default low mark. Returns `(high, low)`.
pub fn water_marks(
    high: Option<i64>,
    low: Option<i64>,
    default_high: usize,
) -> PyResult<(usize, usize)> {
    let high = match (high, low) {
        (Some(h), _) => h,
        (None, Some(l)) => 4 * l,
        (None, None) => default_high as i64,
    };
    let low = low.unwrap_or(high / 4);
    if !(high >= low && low >= 0) {
        return Err(PyValueError::new_err(format!(
            "high ({high}) must be >= low ({low}) must be >= 0"
        )));
    }
    Ok((high as usize, low as usize))
}

/// Calls `protocol.pause_writing()`/`resume_writing()`; a failure goes to the loop's
/// exception handler with asyncio's message.
pub fn call_flow_control(
    event_loop: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    protocol: &Py<PyAny>,
    name: &str,
) -> PyResult<()> {
    report_flow_control(
        event_loop,
        transport,
        protocol,
        protocol.bind(event_loop.py()),
        name,
    )
}

/// `call_flow_control`, naming `reported` as the protocol in the handler's context (the TLS
/// layer names itself there, as asyncio's does).
pub fn report_flow_control(
    event_loop: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    protocol: &Py<PyAny>,
    reported: &Bound<'_, PyAny>,
    name: &str,
) -> PyResult<()> {
    let py = event_loop.py();
    match protocol.bind(py).safe_method0(name) {
        Ok(_) => Ok(()),
        Err(e) if is_base_exit(py, &e) => Err(e),
        Err(e) => {
            let ctx = PyDict::new(py);
            ctx.set_item("message", format!("protocol.{name}() failed"))?;
            ctx.set_item("exception", e.into_value(py))?;
            ctx.set_item("transport", transport)?;
            ctx.set_item("protocol", reported)?;
            event_loop.safe_method1(intern!(py, "call_exception_handler"), ctx)?;
            Ok(())
        }
    }
}

/// Runs `f` inside `context` (a `contextvars.Context`).
pub fn in_context<R>(
    py: Python<'_>,
    context: &Py<PyAny>,
    f: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    let ctx = context.as_ptr();
    // SAFETY: attached; `ctx` is a live context kept alive by the caller's reference.
    if unsafe { ffi::PyContext_Enter(ctx) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let r = f();
    // SAFETY: entered above on this thread.
    if unsafe { ffi::PyContext_Exit(ctx) } < 0 {
        return Err(PyErr::fetch(py));
    }
    r
}

pub use crate::handles::copy_context;

pub use crate::errors::is_base_exit;
pub use crate::handles::asyncio_class;

/// `ferroloop._transports.<name>`: the classes our transports report as `__class__` where
/// no single asyncio class fits.
pub fn transports_class(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Py<PyAny>> {
    crate::handles::module_attr(py, cell, "ferroloop._transports", name)
}
