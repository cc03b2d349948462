//! Rust transports: stream (TCP, Unix, pipes) and datagram (UDP, Unix datagram), and what
//! they share: flow control of the write buffer, running protocol callbacks in the
//! transport's context, and the enum the loop keeps them in.

pub mod datagram;
pub mod stream;

use std::os::fd::RawFd;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

pub use datagram::DatagramTransport;
pub use stream::StreamTransport;

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

    pub fn on_readable(&self, py: Python<'_>) -> PyResult<()> {
        match self {
            NativeTransport::Stream(t) => StreamTransport::on_readable(t.bind(py)),
            NativeTransport::Datagram(t) => DatagramTransport::on_readable(t.bind(py)),
        }
    }

    pub fn on_writable(&self, py: Python<'_>) -> PyResult<()> {
        match self {
            NativeTransport::Stream(t) => StreamTransport::on_writable(t.bind(py)),
            NativeTransport::Datagram(t) => DatagramTransport::on_writable(t.bind(py)),
        }
    }
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
        let high = match (high, low) {
            (Some(h), _) => h,
            (None, Some(l)) => 4 * l,
            (None, None) => DEFAULT_HIGH_WATER as i64,
        };
        let low = low.unwrap_or(high / 4);
        if !(high >= low && low >= 0) {
            return Err(PyValueError::new_err(format!(
                "high ({high}) must be >= low ({low}) must be >= 0"
            )));
        }
        self.high = high as usize;
        self.low = low as usize;
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

/// Calls `protocol.pause_writing()`/`resume_writing()`; a failure goes to the loop's
/// exception handler with asyncio's message.
pub fn call_flow_control(
    event_loop: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    protocol: &Py<PyAny>,
    name: &str,
) -> PyResult<()> {
    let py = event_loop.py();
    match protocol.bind(py).call_method0(name) {
        Ok(_) => Ok(()),
        Err(e) if is_base_exit(py, &e) => Err(e),
        Err(e) => {
            let ctx = PyDict::new(py);
            ctx.set_item("message", format!("protocol.{name}() failed"))?;
            ctx.set_item("exception", e.into_value(py))?;
            ctx.set_item("transport", transport)?;
            ctx.set_item("protocol", protocol)?;
            event_loop.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
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

/// A copy of the current context (`contextvars.copy_context()`).
pub fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: attached; returns a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()).map(Bound::unbind) }
}

/// `KeyboardInterrupt` and `SystemExit` propagate; everything else is reported.
pub fn is_base_exit(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyKeyboardInterrupt>(py) || e.is_instance_of::<PySystemExit>(py)
}

/// `asyncio.<name>` for the transports' `__class__` (see `Handle.__class__`).
pub fn asyncio_class(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Py<PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("asyncio")?.getattr(name)?.unbind())
    })
    .map(|c| c.clone_ref(py))
}
