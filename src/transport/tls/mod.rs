//! TLS over a stream transport (asyncio: `sslproto.SSLProtocol` and `_SSLProtocolTransport`).
//!
//! The TLS layer is two objects:
//! - `TlsProtocol` is the protocol of the underlying (TCP or Unix) transport. It feeds what
//!   the socket delivers into an `ssl.MemoryBIO`, drives the user's `ssl.SSLObject` (made by
//!   `SSLContext.wrap_bio`, so every context a user builds works), and writes what the
//!   object produces to the transport below. The state machine (handshake, wrapped,
//!   flushing, shutdown), the write backlog and both directions of flow control live here.
//! - `TlsTransport` is what the application's protocol sees: an `asyncio.Transport` whose
//!   writes are encrypted and whose reads are decrypted.
//!
//! This file holds the state machine; `callbacks.rs` the protocol methods the transport
//! below and the loop call; `app.rs` the application's transport.
//!
//! The behaviour is asyncio's, state by state: the same exceptions for a failed or timed
//! out handshake, the same `close_notify` exchange on close, the same flow-control water
//! marks (256 KiB of unread TLS records pause the socket; 512 KiB of unsent application data
//! pause the application).
//!
//! Speed: when the transport below is ferroloop's own `StreamTransport`, it copies what it
//! receives straight into the incoming BIO and takes the encrypted records back in Rust (no
//! `bytes` and no Python method call in between); records are decrypted side by side into one
//! reused buffer; and decrypting stops as soon as the incoming BIO is empty instead of
//! provoking (and catching) one `SSLWantReadError` per batch of records.

mod app;
mod callbacks;

pub use app::TlsTransport;

use std::collections::VecDeque;

use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice};
use pyo3::{PyTraverseError, PyVisit};

use crate::attach::SafeCall;
use crate::event_loop::CoreLoop;
use crate::gil_cell::GilCell;

use super::{asyncio_class, is_base_exit, report_flow_control, water_marks, StreamTransport};

/// Plaintext decrypted per `data_received` call at most (asyncio's `SSLProtocol.max_size`),
/// the size of the buffer records are decrypted into.
const READ_BUFFER_SIZE: usize = 256 * 1024;
/// The most plaintext one TLS record carries (RFC 8446, 5.1).
const MAX_RECORD: usize = 16 * 1024;

/// Where records are decrypted: a bytearray and a view of it, reused for every read (asyncio
/// asks `SSLObject.read` for 256 KiB of new `bytes` per record, which the allocator maps and
/// unmaps each time).
struct ReadBuffer {
    bytes: Py<PyByteArray>,
    view: Py<PyMemoryView>,
}

thread_local! {
    static READ_BUFFER: std::cell::RefCell<Option<ReadBuffer>> =
        const { std::cell::RefCell::new(None) };
}

/// Unread TLS data that pauses the socket (asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_READ`).
const READ_HIGH_WATER: usize = 256 * 1024;
/// Unsent application data that pauses the application (`FLOW_CONTROL_HIGH_WATER_SSL_WRITE`).
const WRITE_HIGH_WATER: usize = 512 * 1024;
/// asyncio's `SSL_HANDSHAKE_TIMEOUT` and `SSL_SHUTDOWN_TIMEOUT`, in seconds.
const HANDSHAKE_TIMEOUT: f64 = 60.0;
const SHUTDOWN_TIMEOUT: f64 = 30.0;
/// After this many writes to a closed TLS connection, asyncio starts warning.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// The `ssl` module's exception classes, looked up once.
struct SslErrors {
    /// `SSLWantReadError` and `SSLSyscallError`: "feed me more and try again".
    want_read: Py<PyAny>,
    syscall: Py<PyAny>,
    ssl_error: Py<PyAny>,
    cert_error: Py<PyAny>,
    memory_bio: Py<PyAny>,
}

fn ssl_errors(py: Python<'_>) -> PyResult<&SslErrors> {
    static CELL: PyOnceLock<SslErrors> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        let ssl = py.import("ssl")?;
        Ok::<_, PyErr>(SslErrors {
            want_read: ssl.getattr("SSLWantReadError")?.unbind(),
            syscall: ssl.getattr("SSLSyscallError")?.unbind(),
            ssl_error: ssl.getattr("SSLError")?.unbind(),
            cert_error: ssl.getattr("CertificateError")?.unbind(),
            memory_bio: ssl.getattr("MemoryBIO")?.unbind(),
        })
    })
}

/// Whether an `SSLObject` call failed only for want of more input (asyncio's
/// `SSLAgainErrors`).
fn is_again(py: Python<'_>, e: &PyErr) -> PyResult<bool> {
    let t = ssl_errors(py)?;
    Ok(e.is_instance(py, t.want_read.bind(py)) || e.is_instance(py, t.syscall.bind(py)))
}

fn is_ssl_error(py: Python<'_>, e: &PyErr) -> PyResult<bool> {
    Ok(e.is_instance(py, ssl_errors(py)?.ssl_error.bind(py)))
}

fn logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    crate::handles::format_module(py)?.safe_method0(intern!(py, "logger"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Unwrapped,
    Handshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Unwrapped => "UNWRAPPED",
            Phase::Handshake => "DO_HANDSHAKE",
            Phase::Wrapped => "WRAPPED",
            Phase::Flushing => "FLUSHING",
            Phase::Shutdown => "SHUTDOWN",
        }
    }

    /// asyncio's allowed transitions: forward one step, or back to unwrapped from anywhere.
    fn can_become(self, next: Phase) -> bool {
        matches!(
            (self, next),
            (_, Phase::Unwrapped)
                | (Phase::Unwrapped, Phase::Handshake)
                | (Phase::Handshake, Phase::Wrapped)
                | (Phase::Wrapped, Phase::Flushing)
                | (Phase::Flushing, Phase::Shutdown)
        )
    }

    /// The connection is closing or closed: writes are refused, shutdown has begun.
    fn is_closing(self) -> bool {
        matches!(self, Phase::Flushing | Phase::Shutdown | Phase::Unwrapped)
    }
}

/// Where the application protocol stands: made → [eof] → lost.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppState {
    Init,
    Made,
    Eof,
    Lost,
}

/// How decrypted data reaches the application protocol.
enum AppReader {
    Data,
    /// A `BufferedProtocol`: its `get_buffer` and `buffer_updated`, bound once.
    Buffered(Py<PyAny>, Py<PyAny>),
}

/// The `SSLObject`, its memory BIOs and the bound methods called on every record.
struct Ssl {
    obj: Py<PyAny>,
    read: Py<PyAny>,
    write: Py<PyAny>,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    feed: Py<PyAny>,
    drain: Py<PyAny>,
}

impl Ssl {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for obj in [
            &self.obj,
            &self.read,
            &self.write,
            &self.incoming,
            &self.outgoing,
            &self.feed,
            &self.drain,
        ] {
            visit.call(obj)?;
        }
        Ok(())
    }

    fn pending(py: Python<'_>, bio: &Py<PyAny>) -> PyResult<usize> {
        bio.bind(py).getattr(intern!(py, "pending"))?.extract()
    }
}

struct State {
    phase: Phase,
    app: AppState,
    app_protocol: Option<Py<PyAny>>,
    app_reader: AppReader,
    app_transport: Option<Py<TlsTransport>>,
    app_transport_created: bool,
    /// The transport below, and the same object when it is ours (writes then stay in Rust).
    lower: Option<Py<PyAny>>,
    lower_native: Option<Py<StreamTransport>>,
    waiter: Option<Py<PyAny>>,
    handshake_timer: Option<Py<PyAny>>,
    shutdown_timer: Option<Py<PyAny>>,
    handshake_start: Option<f64>,
    /// Application data not yet encrypted.
    backlog: VecDeque<Py<PyAny>>,
    backlog_size: usize,
    conn_lost: u32,
    eof_received: bool,
    /// The transport below asked us to stop writing (its buffer is full).
    ssl_writing_paused: bool,
    /// We asked the transport below to stop reading (too much undecrypted data).
    ssl_reading_paused: bool,
    /// The application paused reading.
    app_reading_paused: bool,
    /// We told the application to stop writing.
    app_writing_paused: bool,
    in_high: usize,
    in_low: usize,
    out_high: usize,
    out_low: usize,
}

impl State {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.app_protocol)?;
        if let AppReader::Buffered(g, u) = &self.app_reader {
            visit.call(g)?;
            visit.call(u)?;
        }
        visit.call(&self.app_transport)?;
        visit.call(&self.lower)?;
        visit.call(&self.lower_native)?;
        visit.call(&self.waiter)?;
        visit.call(&self.handshake_timer)?;
        visit.call(&self.shutdown_timer)?;
        for item in &self.backlog {
            visit.call(item)?;
        }
        Ok(())
    }

    /// Everything that may lead back to this protocol (for `__clear__`), to be dropped once
    /// the borrow has ended.
    fn release(&mut self) -> impl Sized {
        (
            self.app_protocol.take(),
            std::mem::replace(&mut self.app_reader, AppReader::Data),
            self.app_transport.take(),
            self.lower.take(),
            self.lower_native.take(),
            self.waiter.take(),
            self.handshake_timer.take(),
            self.shutdown_timer.take(),
            std::mem::take(&mut self.backlog),
        )
    }
}

/// The protocol of the transport under a TLS connection.
///
/// Like the stream transports (see `Transport`), both TLS objects are visible to the
/// cyclic collector, and let go of what leads back to them when the connection is lost.
#[pyclass(frozen, weakref, module = "ferroloop._ferroloop")]
pub struct TlsProtocol {
    event_loop: Py<CoreLoop>,
    ssl: Ssl,
    extra: Py<PyDict>,
    server_side: bool,
    /// Seconds, and as given (for the timeout's message).
    handshake_timeout: (f64, String),
    shutdown_timeout: f64,
    st: GilCell<State>,
}

/// A positive timeout, or the default; asyncio's `ValueError` otherwise.
/// Also returns the value as asyncio's messages print it.
fn timeout_arg(
    name: &str,
    value: Option<&Bound<'_, PyAny>>,
    default: f64,
) -> PyResult<(f64, String)> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok((default, format!("{default:.1}")));
    };
    let secs: f64 = value.extract()?;
    if secs <= 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} should be a positive number, got {}",
            value.str()?
        )));
    }
    Ok((secs, value.str()?.to_string()))
}

fn app_reader(py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<AppReader> {
    static BUFFERED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let cls = asyncio_class(py, &BUFFERED, "BufferedProtocol")?;
    if protocol.hasattr(intern!(py, "get_buffer"))? && protocol.is_instance(cls.bind(py))? {
        Ok(AppReader::Buffered(
            protocol.getattr(intern!(py, "get_buffer"))?.unbind(),
            protocol.getattr(intern!(py, "buffer_updated"))?.unbind(),
        ))
    } else {
        Ok(AppReader::Data)
    }
}

/// Keeps `PyException`s (reported, the connection fails) apart from the rest
/// (`KeyboardInterrupt`, `SystemExit`, `CancelledError`: propagated), as asyncio's
/// `except Exception` does.
fn catch_exception<T>(py: Python<'_>, r: PyResult<T>) -> PyResult<Result<T, PyErr>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) if e.is_instance_of::<PyException>(py) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

impl TlsProtocol {
    fn set_phase(&self, py: Python<'_>, next: Phase) -> PyResult<()> {
        let mut st = self.st.borrow_mut(py);
        if !st.phase.can_become(next) {
            return Err(PyRuntimeError::new_err(format!(
                "cannot switch state from SSLProtocolState.{} to SSLProtocolState.{}",
                st.phase.name(),
                next.name()
            )));
        }
        st.phase = next;
        Ok(())
    }

    fn phase(&self, py: Python<'_>) -> Phase {
        self.st.borrow(py).phase
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop.bind(py).get().debug_enabled()
    }

    fn lower(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).lower.as_ref().map(|t| t.clone_ref(py))
    }

    fn app_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .borrow(py)
            .app_protocol
            .as_ref()
            .map(|p| p.clone_ref(py))
    }

    fn call_soon(&self, py: Python<'_>, cb: Bound<'_, PyAny>) -> PyResult<()> {
        self.event_loop
            .bind(py)
            .safe_method1(intern!(py, "call_soon"), cb)
            .map(drop)
    }

    fn cancel_timer(py: Python<'_>, timer: Option<Py<PyAny>>) -> PyResult<()> {
        if let Some(t) = timer {
            t.bind(py).safe_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    fn wakeup_waiter(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(waiter) = self.st.borrow_mut(py).waiter.take() else {
            return Ok(());
        };
        let waiter = waiter.bind(py);
        if !waiter.safe_method0(intern!(py, "cancelled"))?.is_truthy()? {
            match exc {
                Some(exc) => waiter.safe_method1(intern!(py, "set_exception"), exc)?,
                None => waiter.safe_method1(intern!(py, "set_result"), py.None())?,
            };
        }
        Ok(())
    }

    /// The application transport, made on first use (once).
    fn app_transport(slf: &Bound<'_, Self>) -> PyResult<Option<Py<TlsTransport>>> {
        let py = slf.py();
        let this = slf.get();
        {
            let st = this.st.borrow(py);
            if let Some(t) = &st.app_transport {
                return Ok(Some(t.clone_ref(py)));
            }
            if st.app_transport_created {
                return Ok(None);
            }
        }
        let t = crate::transport::finalize::new_tracked(
            py,
            TlsTransport {
                proto: GilCell::new(Some(slf.clone().unbind())),
                closed: GilCell::new(false),
            },
        )?;
        let mut st = this.st.borrow_mut(py);
        st.app_transport = Some(t.clone_ref(py));
        st.app_transport_created = true;
        Ok(Some(t))
    }

    fn mark_app_transport_closed(&self, py: Python<'_>) {
        let t = self
            .st
            .borrow(py)
            .app_transport
            .as_ref()
            .map(|t| t.clone_ref(py));
        if let Some(t) = t {
            *t.get().closed.borrow_mut(py) = true;
        }
    }

    fn set_app_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let reader = app_reader(py, protocol)?;
        let old = {
            let mut st = self.st.borrow_mut(py);
            (
                std::mem::replace(&mut st.app_reader, reader),
                st.app_protocol.replace(protocol.clone().unbind()),
            )
        };
        drop(old);
        Ok(())
    }

    // -- the transport below --------------------------------------------------------------

    fn lower_write(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
        let (lower, native) = {
            let st = self.st.borrow(py);
            (
                st.lower.as_ref().map(|t| t.clone_ref(py)),
                st.lower_native.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        if let Some(native) = native {
            return StreamTransport::write_bytes(native.bind(py), data.as_bytes());
        }
        if let Some(lower) = lower {
            lower.bind(py).safe_method1(intern!(py, "write"), data)?;
        }
        Ok(())
    }

    fn lower_call(
        &self,
        py: Python<'_>,
        method: &Bound<'_, pyo3::types::PyString>,
    ) -> PyResult<()> {
        if let Some(lower) = self.lower(py) {
            lower.bind(py).safe_method0(method)?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: force-close the transport below, and report anything that
    /// is not an `OSError` (those are logged in debug mode only) or a cancellation.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let exc = exc.into_value(py).into_any();
        let lower = this.lower(py);
        if let Some(lower) = &lower {
            lower
                .bind(py)
                .safe_method1(intern!(py, "_force_close"), &exc)?;
        }
        let exc = exc.bind(py);
        if exc.is_instance_of::<PyOSError>() {
            if this.debug(py) {
                let kwargs = PyDict::new(py);
                kwargs.set_item("exc_info", true)?;
                logger(py)?.safe_method(
                    intern!(py, "debug"),
                    ("%r: %s", slf, message),
                    Some(&kwargs),
                )?;
            }
            return Ok(());
        }
        static CANCELLED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        if exc.is_instance(asyncio_class(py, &CANCELLED, "CancelledError")?.bind(py))? {
            return Ok(());
        }
        let ctx = PyDict::new(py);
        ctx.set_item("message", message)?;
        ctx.set_item("exception", exc)?;
        ctx.set_item("transport", lower)?;
        ctx.set_item("protocol", slf)?;
        self_loop(this, py).safe_method1(intern!(py, "call_exception_handler"), ctx)?;
        Ok(())
    }

    // -- incoming records -----------------------------------------------------------------

    /// Copies received records into the incoming BIO. Runs no Python code.
    pub(crate) fn feed(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: `data` is valid for reads of `data.len()` bytes for this whole call; the
        // read-only view over it is released below, before `data` can go away, and
        // `MemoryBIO.write` copies the bytes without keeping the view.
        let view = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                pyo3::ffi::PyMemoryView_FromMemory(
                    data.as_ptr() as *mut std::os::raw::c_char,
                    data.len() as pyo3::ffi::Py_ssize_t,
                    pyo3::ffi::PyBUF_READ,
                ),
            )?
        };
        let result = self.ssl.feed.bind(py).safe_call1(&view);
        view.safe_method0(intern!(py, "release"))?;
        result.map(drop)
    }

    /// What newly fed records mean in the current phase.
    pub(crate) fn after_feed(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py()) {
            Phase::Handshake => Self::do_handshake(slf),
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            Phase::Unwrapped => Ok(()),
        }
    }

    // -- handshake ------------------------------------------------------------------------

    fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let start = if this.debug(py) {
            logger(py)?.safe_method(
                intern!(py, "debug"),
                ("%r starts SSL handshake", slf),
                None,
            )?;
            Some(crate::event_loop::monotonic())
        } else {
            None
        };
        this.st.borrow_mut(py).handshake_start = start;
        this.set_phase(py, Phase::Handshake)?;
        let cb = slf.getattr(intern!(py, "_check_handshake_timeout"))?;
        let timer = self_loop(this, py).safe_method(
            intern!(py, "call_later"),
            (this.handshake_timeout.0, cb),
            None,
        )?;
        this.st.borrow_mut(py).handshake_timer = Some(timer.unbind());
        Self::do_handshake(slf)
    }

    fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let obj = slf.get().ssl.obj.bind(py);
        match obj.safe_method0(intern!(py, "do_handshake")) {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if is_ssl_error(py, &e)? => Self::on_handshake_complete(slf, Some(e)),
            Err(e) => Err(e),
        }
    }

    fn on_handshake_complete(slf: &Bound<'_, Self>, failure: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let timer = this.st.borrow_mut(py).handshake_timer.take();
        Self::cancel_timer(py, timer)?;
        let obj = this.ssl.obj.bind(py);
        let peercert = match failure {
            Some(e) => Err(e),
            None => this
                .set_phase(py, Phase::Wrapped)
                .and_then(|()| obj.safe_method0(intern!(py, "getpeercert"))),
        };
        let peercert = match catch_exception(py, peercert)? {
            Ok(cert) => cert,
            Err(e) => {
                this.set_phase(py, Phase::Unwrapped)?;
                let msg = if e.is_instance(py, ssl_errors(py)?.cert_error.bind(py)) {
                    "SSL handshake failed on verifying the certificate"
                } else {
                    "SSL handshake failed"
                };
                let exc = e.clone_ref(py).into_value(py).into_any();
                Self::fatal_error(slf, e, msg)?;
                return this.wakeup_waiter(py, Some(exc.bind(py)));
            }
        };
        let start = this.st.borrow(py).handshake_start;
        if let (Some(start), true) = (start, this.debug(py)) {
            let ms = (crate::event_loop::monotonic() - start) * 1e3;
            logger(py)?.safe_method(
                intern!(py, "debug"),
                ("%r: SSL handshake took %.1f ms", slf, ms),
                None,
            )?;
        }
        let extra = this.extra.bind(py);
        extra.set_item("peercert", peercert)?;
        extra.set_item("cipher", obj.safe_method0(intern!(py, "cipher"))?)?;
        extra.set_item("compression", obj.safe_method0(intern!(py, "compression"))?)?;
        extra.set_item("ssl_object", obj)?;
        let made = {
            let mut st = this.st.borrow_mut(py);
            let init = st.app == AppState::Init;
            if init {
                st.app = AppState::Made;
            }
            init
        };
        if made {
            let transport = Self::app_transport(slf)?;
            if let Some(protocol) = this.app_protocol(py) {
                protocol
                    .bind(py)
                    .safe_method1(intern!(py, "connection_made"), transport)?;
            }
        }
        this.wakeup_waiter(py, None)?;
        Self::do_read(slf)
    }

    // -- shutdown -------------------------------------------------------------------------

    fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let phase = this.phase(py);
        if phase.is_closing() {
            return Ok(());
        }
        this.mark_app_transport_closed(py);
        if phase == Phase::Handshake {
            return this.abort(py, None);
        }
        this.set_phase(py, Phase::Flushing)?;
        let cb = slf.getattr(intern!(py, "_check_shutdown_timeout"))?;
        let timer = self_loop(this, py).safe_method(
            intern!(py, "call_later"),
            (this.shutdown_timeout, cb),
            None,
        )?;
        this.st.borrow_mut(py).shutdown_timer = Some(timer.unbind());
        Self::do_flush(slf)
    }

    fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        slf.get().set_phase(slf.py(), Phase::Shutdown)?;
        Self::do_shutdown(slf)
    }

    fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = if this.st.borrow(py).eof_received {
            Ok(())
        } else {
            this.ssl
                .obj
                .bind(py)
                .safe_method0(intern!(py, "unwrap"))
                .map(drop)
        };
        match result {
            Ok(()) => {
                Self::process_outgoing(slf)?;
                Self::call_eof_received(slf)?;
                Self::on_shutdown_complete(slf, None)
            }
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if is_ssl_error(py, &e)? => Self::on_shutdown_complete(slf, Some(e)),
            Err(e) => Err(e),
        }
    }

    fn on_shutdown_complete(slf: &Bound<'_, Self>, failure: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // 3.14: closing the transport below flushes its buffer first, which a peer that does
        // not read can delay forever, so the shutdown timeout stays armed (or is armed, when
        // the peer began the shutdown) until connection_lost. Before, it ended here.
        let keep_timer = failure.is_none() && py.version_info() >= (3, 14);
        if keep_timer {
            if this.st.borrow(py).shutdown_timer.is_none() {
                let cb = slf.getattr(intern!(py, "_check_shutdown_timeout"))?;
                let timer = self_loop(this, py).safe_method(
                    intern!(py, "call_later"),
                    (this.shutdown_timeout, cb),
                    None,
                )?;
                this.st.borrow_mut(py).shutdown_timer = Some(timer.unbind());
            }
        } else {
            let timer = this.st.borrow_mut(py).shutdown_timer.take();
            Self::cancel_timer(py, timer)?;
        }
        match failure {
            Some(e) => Self::fatal_error(slf, e, "Fatal error on transport"),
            None => match this.lower(py) {
                Some(lower) => this.call_soon(py, lower.bind(py).getattr(intern!(py, "close"))?),
                None => Ok(()),
            },
        }
    }

    /// Closes the transport below at once: `abort()`, or `_force_close(exc)` with an
    /// exception for the application's `connection_lost`.
    fn abort(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.set_phase(py, Phase::Unwrapped)?;
        match (exc, self.lower(py)) {
            (Some(exc), Some(lower)) => lower
                .bind(py)
                .safe_method1(intern!(py, "_force_close"), exc)
                .map(drop),
            _ => self.lower_call(py, intern!(py, "abort")),
        }
    }

    // -- outgoing -------------------------------------------------------------------------

    fn write_appdata(slf: &Bound<'_, Self>, items: Vec<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut st = this.st.borrow_mut(py);
            if st.phase.is_closing() {
                let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost += 1;
                drop(st);
                if warn {
                    logger(py)?.safe_method1(intern!(py, "warning"), "SSL connection is closed")?;
                }
                return Ok(());
            }
        }
        let mut sizes = Vec::with_capacity(items.len());
        for item in &items {
            sizes.push(item.len()?);
        }
        let wrapped = {
            let mut st = this.st.borrow_mut(py);
            for (item, size) in items.into_iter().zip(sizes) {
                st.backlog.push_back(item.unbind());
                st.backlog_size += size;
            }
            st.phase == Phase::Wrapped
        };
        if wrapped {
            if let Err(e) = catch_exception(py, Self::do_write(slf))? {
                Self::fatal_error(slf, e, "Fatal error on SSL protocol")?;
            }
        }
        Ok(())
    }

    /// Encrypts the backlog (as far as the `SSLObject` takes it), then sends the records.
    fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let write = this.ssl.write.bind(py);
        loop {
            let data = match this.st.borrow(py).backlog.front() {
                Some(d) => d.clone_ref(py),
                None => break,
            };
            let data = data.bind(py);
            let count: usize = match write.safe_call1(data) {
                Ok(n) => n.extract()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            };
            let len = data.len()?;
            // Made (and the old item dropped) outside the borrow: Python code may run.
            let rest = if count < len {
                Some(data.get_item(PySlice::new(py, count as isize, len as isize, 1))?)
            } else {
                None
            };
            let mut st = this.st.borrow_mut(py);
            let done = match rest {
                Some(rest) => {
                    st.backlog_size -= count;
                    st.backlog
                        .front_mut()
                        .map(|d| std::mem::replace(d, rest.unbind()))
                }
                None => {
                    st.backlog_size -= len;
                    st.backlog.pop_front()
                }
            };
            drop(st);
            drop(done);
        }
        Self::process_outgoing(slf)
    }

    /// Hands the encrypted records to the transport below (unless it asked us to wait),
    /// then applies the application's flow control.
    fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.st.borrow(py).ssl_writing_paused {
            let data = this.ssl.drain.bind(py).safe_call0()?;
            let data = data.cast::<PyBytes>()?;
            if !data.as_bytes().is_empty() {
                this.lower_write(py, data)?;
            }
        }
        Self::control_app_writing(slf)
    }

    fn write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        let pending = Ssl::pending(py, &self.ssl.outgoing)?;
        Ok(pending + self.st.borrow(py).backlog_size)
    }

    fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // Unless the transport below is paused, `process_outgoing` has just emptied the
        // outgoing BIO: only the backlog counts, and the BIO need not be asked.
        let paused_below = this.st.borrow(py).ssl_writing_paused;
        let size = if paused_below {
            this.write_buffer_size(py)?
        } else {
            this.st.borrow(py).backlog_size
        };
        let name = {
            let mut st = this.st.borrow_mut(py);
            if size >= st.out_high && !st.app_writing_paused {
                st.app_writing_paused = true;
                "pause_writing"
            } else if size <= st.out_low && st.app_writing_paused {
                st.app_writing_paused = false;
                "resume_writing"
            } else {
                return Ok(());
            }
        };
        let Some(protocol) = this.app_protocol(py) else {
            return Ok(());
        };
        let transport = this
            .st
            .borrow(py)
            .app_transport
            .as_ref()
            .map(|t| t.clone_ref(py).into_any().into_bound(py))
            .unwrap_or_else(|| py.None().into_bound(py));
        report_flow_control(
            self_loop(this, py).as_any(),
            &transport,
            &protocol,
            slf.as_any(),
            name,
        )
    }

    // -- incoming -------------------------------------------------------------------------

    fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !matches!(this.phase(py), Phase::Wrapped | Phase::Flushing) {
            return Ok(());
        }
        let result = (|| {
            if !this.st.borrow(py).app_reading_paused {
                let buffered = match &this.st.borrow(py).app_reader {
                    AppReader::Data => None,
                    AppReader::Buffered(g, u) => Some((g.clone_ref(py), u.clone_ref(py))),
                };
                match buffered {
                    Some((get_buffer, updated)) => Self::read_buffered(slf, &get_buffer, &updated)?,
                    None => Self::read_copied(slf)?,
                }
                if this.st.borrow(py).backlog.is_empty() {
                    Self::process_outgoing(slf)?;
                } else {
                    Self::do_write(slf)?;
                }
            }
            Self::control_ssl_reading(slf)
        })();
        if let Err(e) = catch_exception(py, result)? {
            Self::fatal_error(slf, e, "Fatal error on SSL protocol")?;
        }
        Ok(())
    }

    /// Decrypts what has arrived and hands it to `data_received` in one piece.
    fn read_copied(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // Taken out while in use: a nested read (from an `ssl` callback) makes its own.
        let buffer = match READ_BUFFER.with(|b| b.borrow_mut().take()) {
            Some(b) => b,
            None => {
                let bytes = PyByteArray::new(py, &[0; READ_BUFFER_SIZE]);
                let view = PyMemoryView::from(&bytes)?.unbind();
                ReadBuffer {
                    bytes: bytes.unbind(),
                    view,
                }
            }
        };
        let result = this.decrypt(py, &buffer);
        READ_BUFFER.with(|b| *b.borrow_mut() = Some(buffer));
        let (data, eof) = result?;
        if let (Some(data), Some(protocol)) = (data, this.app_protocol(py)) {
            protocol
                .bind(py)
                .safe_method1(intern!(py, "data_received"), data)?;
        }
        if eof {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    /// Decrypts every complete record the incoming BIO holds, side by side into `buffer`,
    /// and copies the plaintext out once. Returns it (if any) and whether the peer's
    /// `close_notify` came.
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        buffer: &ReadBuffer,
    ) -> PyResult<(Option<Bound<'py, PyAny>>, bool)> {
        let read = self.ssl.read.bind(py);
        let (bytes, view) = (buffer.bytes.bind(py), buffer.view.bind(py));
        // SAFETY: (in `copy_out`) no Python code runs while the slice is borrowed, and the
        // bytearray is ours (never handed out; the view pins its size).
        let copy_out = |filled: usize| PyBytes::new(py, unsafe { &bytes.as_bytes()[..filled] });
        let mut full: Vec<Bound<'py, PyBytes>> = Vec::new();
        let mut filled = 0;
        let mut eof = false;
        loop {
            if READ_BUFFER_SIZE - filled < MAX_RECORD {
                full.push(copy_out(filled));
                filled = 0;
            }
            let room = READ_BUFFER_SIZE - filled;
            let target = if filled == 0 {
                view.clone().into_any()
            } else {
                view.get_item(PySlice::new(
                    py,
                    filled as isize,
                    READ_BUFFER_SIZE as isize,
                    1,
                ))?
            };
            let n: usize = match read.safe_call((room, target), None) {
                Ok(n) => n.extract()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            };
            if n == 0 {
                eof = true; // close_notify
                break;
            }
            filled += n;
            // A read stops at the end of a record. If it did not fill the room and the
            // incoming BIO is empty, the next read could only raise SSLWantReadError.
            if n < room && Ssl::pending(py, &self.ssl.incoming)? == 0 {
                break;
            }
        }
        let data = match (full.is_empty(), filled) {
            (true, 0) => None,
            (true, _) => Some(copy_out(filled).into_any()),
            (false, _) => {
                if filled > 0 {
                    full.push(copy_out(filled));
                }
                Some(PyBytes::new(py, b"").safe_method1(intern!(py, "join"), full)?)
            }
        };
        Ok((data, eof))
    }

    /// Decrypts into the application's buffer (`get_buffer`/`buffer_updated`).
    fn read_buffered(
        slf: &Bound<'_, Self>,
        get_buffer: &Py<PyAny>,
        buffer_updated: &Py<PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let hint = Ssl::pending(py, &this.ssl.incoming)?;
        let buf = get_buffer.bind(py).safe_call1(hint)?;
        let view = PyMemoryView::from(&buf)?;
        let wants = view.len()?;
        let read = this.ssl.read.bind(py);
        let mut offset = 0;
        let mut count = 1;
        loop {
            let target = if offset == 0 {
                view.clone().into_any()
            } else {
                view.get_item(PySlice::new(py, offset as isize, wants as isize, 1))?
            };
            match read.safe_call((wants - offset, target), None) {
                Ok(n) => count = n.extract::<usize>()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            }
            if count == 0 {
                break;
            }
            offset += count;
            if offset >= wants {
                // The buffer is full: come back for the rest on the next iteration.
                this.call_soon(py, slf.getattr(intern!(py, "_do_read"))?)?;
                break;
            }
        }
        drop(view);
        if offset > 0 {
            buffer_updated.bind(py).safe_call1(offset)?;
        }
        if count == 0 {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = {
            let mut st = this.st.borrow_mut(py);
            if st.app != AppState::Made {
                return Ok(());
            }
            st.app = AppState::Eof;
            st.app_protocol.as_ref().map(|p| p.clone_ref(py))
        };
        let Some(protocol) = protocol else {
            return Ok(());
        };
        // (the answer's truth test is part of the call: its failure is the call's)
        let result = protocol
            .bind(py)
            .safe_method0(intern!(py, "eof_received"))
            .and_then(|keep_open| keep_open.is_truthy());
        match result {
            Ok(keep_open) => {
                if keep_open {
                    logger(py)?.safe_method1(
                        intern!(py, "warning"),
                        "returning true from eof_received() has no effect when using ssl",
                    )?;
                }
                Ok(())
            }
            Err(e) if is_base_exit(py, &e) => Err(e),
            Err(e) => Self::fatal_error(slf, e, "Error calling eof_received()"),
        }
    }

    /// Pauses the transport below while too much undecrypted data waits, resumes it after.
    fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size = Ssl::pending(py, &this.ssl.incoming)?;
        let method = {
            let mut st = this.st.borrow_mut(py);
            if size >= st.in_high && !st.ssl_reading_paused {
                st.ssl_reading_paused = true;
                intern!(py, "pause_reading")
            } else if size <= st.in_low && st.ssl_reading_paused {
                st.ssl_reading_paused = false;
                intern!(py, "resume_reading")
            } else {
                return Ok(());
            }
        };
        this.lower_call(py, method)
    }
}

fn self_loop<'a, 'py>(this: &'a TlsProtocol, py: Python<'py>) -> &'a Bound<'py, CoreLoop> {
    this.event_loop.bind(py)
}
