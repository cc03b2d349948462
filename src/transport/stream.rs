//! Stream transports for connected TCP and Unix sockets (asyncio:
//! `selector_events._SelectorSocketTransport`).
//!
//! The transport is a Rust object handed to the protocol directly; it reads the socket and
//! calls `protocol.data_received` (or `get_buffer`/`buffer_updated` for a
//! `BufferedProtocol`), and owns the write buffer and its flow control. Its `__class__` is
//! `asyncio.Transport`, so `isinstance(t, asyncio.Transport)` holds.
//!
//! Readiness: the socket is registered with the loop's poller once, edge-triggered, readable
//! interest always and writable interest only while data is buffered. A readiness report
//! becomes a `ReadyItem` in the loop's ready queue, so protocol callbacks run in the same
//! FIFO order as asyncio's reader handles. One `recv` per turn, as asyncio does: a read that
//! fills the whole buffer queues another turn for the next iteration (more may be waiting and
//! no new edge will say so); a shorter read drained the socket, and the next edge reports new
//! data. Resuming reading queues a turn for the same reason.
//!
//! Closing follows asyncio: `close()` stops reading, lets the buffer drain, then calls
//! `connection_lost(None)` on the next iteration and closes the socket right after.

use std::os::fd::RawFd;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};

use crate::attach::SafeCall;
use crate::errors::os_error;
use crate::event_loop::CoreLoop;
use crate::gil_cell::GilCell;
use crate::sys::{read_fd, recv, send, with_scratch, would_block, write_fd, writev};

use super::tls::TlsProtocol;
use super::{
    asyncio_class, call_flow_control, close, connection_lost, copy_context, fatal_error,
    force_close, in_context, is_base_exit, schedule_connection_lost, set_interest, Common,
    NativeTransport, Transport, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use std::cell::{Ref, RefMut};

/// Bytes asked of each `recv` (asyncio's `max_size`).
const MAX_READ: usize = 256 * 1024;

enum Reader {
    /// `protocol.data_received`, bound once.
    Data(Py<PyAny>),
    /// `protocol.get_buffer` and `protocol.buffer_updated`, bound once.
    Buffered(Py<PyAny>, Py<PyAny>),
    /// ferroloop's TLS layer: records go from the socket into its incoming BIO in Rust.
    Tls(Py<TlsProtocol>),
    /// Nothing is read (a write pipe).
    None,
}

struct State {
    c: Common,
    reader: Reader,
    server: Option<Py<PyAny>>,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already sent.
    sent: usize,
    paused: bool,
    /// The peer's EOF arrived and the protocol kept the connection open: stop reading.
    read_eof: bool,
    /// The poller reported a hang-up or error: keep reading (a turn per iteration) until
    /// `recv` says EOF or fails, since no further edge will come.
    hangup: bool,
    eof: bool,
    /// Reading started, then the poller registration was lent out (native sendfile).
    suspended: bool,
    /// `loop.sendfile` waits for the buffer to empty; writes are refused meanwhile.
    empty_waiter: Option<Py<PyAny>>,
}

impl State {
    fn buffered(&self) -> usize {
        self.buffer.len() - self.sent
    }
}

/// What the fd is: a connected socket, or one end of a pipe (or a character device).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Socket,
    /// `connect_read_pipe`: reads only; EOF closes the transport.
    ReadPipe,
    /// `connect_write_pipe`: writes only; readiness to read means the reader went away
    /// (when `watch_peer`), and `write_eof`/`close` close the pipe once flushed.
    WritePipe {
        watch_peer: bool,
    },
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Socket => "socket",
            _ => "pipe",
        }
    }
}

#[pyclass(frozen, weakref, dict, module = "ferroloop._ferroloop")]
pub struct StreamTransport {
    fd: RawFd,
    kind: Kind,
    state: GilCell<State>,
}

fn is_reader_protocol_buffered(py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    static BUFFERED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let cls = BUFFERED.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("asyncio")?.getattr("BufferedProtocol")?.unbind())
    })?;
    protocol.is_instance(cls.bind(py))
}

fn make_reader(py: Python<'_>, kind: Kind, protocol: &Bound<'_, PyAny>) -> PyResult<Reader> {
    if let Kind::WritePipe { .. } = kind {
        // A write pipe never reads: its protocol may be a plain `BaseProtocol`.
        return Ok(Reader::None);
    }
    if let Ok(tls) = protocol.cast::<TlsProtocol>() {
        return Ok(Reader::Tls(tls.clone().unbind()));
    }
    if is_reader_protocol_buffered(py, protocol)? {
        Ok(Reader::Buffered(
            protocol.getattr(intern!(py, "get_buffer"))?.unbind(),
            protocol.getattr(intern!(py, "buffer_updated"))?.unbind(),
        ))
    } else {
        Ok(Reader::Data(
            protocol.getattr(intern!(py, "data_received"))?.unbind(),
        ))
    }
}

impl Transport for StreamTransport {
    fn fd(&self) -> RawFd {
        self.fd
    }
    fn common(&self, py: Python<'_>) -> Ref<'_, Common> {
        Ref::map(self.state.borrow(py), |s| &s.c)
    }
    fn common_mut(&self, py: Python<'_>) -> RefMut<'_, Common> {
        RefMut::map(self.state.borrow_mut(py), |s| &mut s.c)
    }
    fn discard_buffer(&self, py: Python<'_>) {
        let mut st = self.state.borrow_mut(py);
        st.buffer = Vec::new();
        st.sent = 0;
    }
}

impl StreamTransport {
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    fn read_some(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.kind {
            Kind::Socket => recv(self.fd, buf),
            _ => read_fd(self.fd, buf),
        }
    }

    fn write_some(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self.kind {
            Kind::Socket => send(self.fd, buf),
            _ => write_fd(self.fd, buf),
        }
    }

    pub fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).c.closing
    }

    /// Called by the loop when the poller reports a hang-up or an error on the socket.
    pub fn note_hangup(&self, py: Python<'_>) {
        self.state.borrow_mut(py).hangup = true;
    }

    fn hangup(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).hangup
    }

    /// One turn of reading, run from the loop's ready queue.
    pub fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if let Kind::WritePipe { watch_peer } = this.kind {
            // The read end went away (asyncio: "Pipe was closed by peer").
            let buffered = this.state.borrow(py).buffered() > 0;
            if watch_peer && this.state.borrow(py).c.conn_lost == 0 {
                let exc = if buffered {
                    Some(
                        pyo3::exceptions::PyBrokenPipeError::new_err(())
                            .into_value(py)
                            .into_any(),
                    )
                } else {
                    None
                };
                return force_close(slf, exc);
            }
            return Ok(());
        }
        let (context, reader) = {
            let st = this.state.borrow(py);
            if st.c.conn_lost > 0 || st.c.closing || st.paused || st.read_eof || !st.c.registered {
                return Ok(());
            }
            let reader = match &st.reader {
                Reader::Data(f) => Reader::Data(f.clone_ref(py)),
                Reader::Buffered(g, u) => Reader::Buffered(g.clone_ref(py), u.clone_ref(py)),
                Reader::Tls(t) => Reader::Tls(t.clone_ref(py)),
                Reader::None => return Ok(()),
            };
            (st.c.context.clone_ref(py), reader)
        };
        let again = in_context(py, &context, || match reader {
            Reader::Data(data_received) => Self::read_data(slf, data_received.bind(py)),
            Reader::Buffered(get_buffer, updated) => {
                Self::read_buffered(slf, get_buffer.bind(py), updated.bind(py))
            }
            Reader::Tls(tls) => Self::read_tls(slf, tls.bind(py)),
            Reader::None => Ok(false),
        })?;
        if again {
            let event_loop = this.loop_of(py);
            event_loop
                .bind(py)
                .get()
                .push_transport_read(py, NativeTransport::Stream(slf.clone().unbind()));
        }
        Ok(())
    }

    /// Returns whether another turn should be queued (the read filled the buffer).
    fn read_data(slf: &Bound<'_, Self>, data_received: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let result = with_scratch(MAX_READ, |buf| {
            this.read_some(buf)
                .map(|n| (n, (n > 0).then(|| PyBytes::new(py, &buf[..n]))))
        });
        let (len, data) = match result {
            Ok(r) => r,
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => {
                let msg = format!("Fatal read error on {} transport", slf.get().kind.noun());
                fatal_error(slf, os_error(e), &msg)?;
                return Ok(false);
            }
        };
        if len == 0 {
            Self::on_eof(slf)?;
            return Ok(false);
        }
        if let Err(e) = data_received.safe_call1(data) {
            if is_base_exit(py, &e) {
                return Err(e);
            }
            fatal_error(slf, e, "Fatal error: protocol.data_received() call failed.")?;
            return Ok(false);
        }
        Ok(len == MAX_READ || slf.get().hangup(py))
    }

    /// One `recv` straight into the TLS layer's incoming BIO (no `bytes` in between), then
    /// the TLS state machine runs. Its failures are reported as asyncio's TLS protocol's
    /// are (it is a `BufferedProtocol` there).
    fn read_tls(slf: &Bound<'_, Self>, tls: &Bound<'_, TlsProtocol>) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        // No Python code runs in `feed`, so the scratch buffer is not re-entered.
        let result = with_scratch(MAX_READ, |buf| match this.read_some(buf) {
            Ok(n) => Ok(tls.get().feed(py, &buf[..n]).map(|()| n)),
            Err(e) => Err(e),
        });
        let n = match result {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Self::buffered_protocol_failed(slf, e),
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => {
                let msg = format!("Fatal read error on {} transport", this.kind.noun());
                fatal_error(slf, os_error(e), &msg)?;
                return Ok(false);
            }
        };
        if n == 0 {
            Self::on_eof(slf)?;
            return Ok(false);
        }
        if let Err(e) = TlsProtocol::after_feed(tls) {
            return Self::buffered_protocol_failed(slf, e);
        }
        Ok(n == MAX_READ || this.hangup(py))
    }

    fn buffered_protocol_failed(slf: &Bound<'_, Self>, e: PyErr) -> PyResult<bool> {
        if is_base_exit(slf.py(), &e) {
            return Err(e);
        }
        fatal_error(
            slf,
            e,
            "Fatal error: protocol.buffer_updated() call failed.",
        )?;
        Ok(false)
    }

    fn read_buffered(
        slf: &Bound<'_, Self>,
        get_buffer: &Bound<'_, PyAny>,
        buffer_updated: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let buf = match get_buffer.safe_call1(-1).and_then(|b| {
            let pybuf = PyBuffer::<u8>::get(&b)?;
            if pybuf.readonly() || !pybuf.is_c_contiguous() {
                return Err(PyTypeError::new_err(
                    "get_buffer() must return a writable contiguous buffer",
                ));
            }
            if pybuf.len_bytes() == 0 {
                return Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                ));
            }
            Ok(pybuf)
        }) {
            Ok(b) => b,
            Err(e) if is_base_exit(py, &e) => return Err(e),
            Err(e) => {
                fatal_error(slf, e, "Fatal error: protocol.get_buffer() call failed.")?;
                return Ok(false);
            }
        };
        let cap = buf.len_bytes();
        // SAFETY: the buffer is writable and C-contiguous (checked above), `cap` bytes long,
        // and `buf` keeps the exporter's view alive for the duration of the call. No Python
        // code runs while the slice is borrowed.
        let slice = unsafe { std::slice::from_raw_parts_mut(buf.buf_ptr().cast::<u8>(), cap) };
        let result = slf.get().read_some(slice);
        drop(buf);
        let n = match result {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => {
                let msg = format!("Fatal read error on {} transport", slf.get().kind.noun());
                fatal_error(slf, os_error(e), &msg)?;
                return Ok(false);
            }
        };
        if n == 0 {
            Self::on_eof(slf)?;
            return Ok(false);
        }
        if let Err(e) = buffer_updated.safe_call1(n) {
            if is_base_exit(py, &e) {
                return Err(e);
            }
            fatal_error(
                slf,
                e,
                "Fatal error: protocol.buffer_updated() call failed.",
            )?;
            return Ok(false);
        }
        Ok(n == cap || slf.get().hangup(py))
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().kind == Kind::ReadPipe {
            // asyncio's pipe transport: stop, then eof_received() and connection_lost(None)
            // as loop callbacks; eof_received's answer does not matter.
            let (event_loop, protocol) = {
                let mut st = slf.get().state.borrow_mut(py);
                st.c.closing = true;
                st.c.conn_lost += 1;
                (st.c.event_loop.clone_ref(py), st.c.protocol.clone_ref(py))
            };
            set_interest(slf.get(), py, false, false)?;
            let eof = protocol.bind(py).getattr(intern!(py, "eof_received"))?;
            event_loop
                .bind(py)
                .safe_method1(intern!(py, "call_soon"), eof)?;
            return schedule_connection_lost(slf, None);
        }
        let protocol = slf.get().state.borrow(py).c.protocol.clone_ref(py);
        match protocol.bind(py).safe_method0(intern!(py, "eof_received")) {
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    // Stop reading, keep the connection open for writing.
                    slf.get().state.borrow_mut(py).read_eof = true;
                } else {
                    Self::close(slf)?;
                }
                Ok(())
            }
            Err(e) if is_base_exit(py, &e) => Err(e),
            Err(e) => fatal_error(slf, e, "Fatal error: protocol.eof_received() call failed."),
        }
    }

    /// Sends buffered data, run from the loop's ready queue on writable readiness.
    pub fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let context = {
            let st = this.state.borrow(py);
            if st.c.conn_lost > 0 || st.buffered() == 0 {
                return Ok(());
            }
            st.c.context.clone_ref(py)
        };
        in_context(py, &context, || Self::flush(slf))
    }

    fn flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = {
            let st = this.state.borrow(py);
            this.write_some(&st.buffer[st.sent..])
        };
        match result {
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => {
                let waiter = {
                    let mut st = this.state.borrow_mut(py);
                    st.buffer = Vec::new();
                    st.sent = 0;
                    st.empty_waiter.as_ref().map(|w| w.clone_ref(py))
                };
                set_interest(this, py, true, false)?;
                let err = os_error(e);
                if let Some(w) = waiter {
                    let value = err.clone_ref(py).into_value(py);
                    w.bind(py)
                        .safe_method1(intern!(py, "set_exception"), value)?;
                }
                let msg = format!("Fatal write error on {} transport", this.kind.noun());
                fatal_error(slf, err, &msg)
            }
            Ok(n) => {
                let (empty, closing, eof) = {
                    let mut st = this.state.borrow_mut(py);
                    st.sent += n;
                    if st.sent == st.buffer.len() {
                        st.buffer.clear();
                        st.sent = 0;
                    } else if st.sent > st.buffer.len() / 2 {
                        let sent = st.sent;
                        st.buffer.drain(..sent);
                        st.sent = 0;
                    }
                    (st.buffered() == 0, st.c.closing, st.eof)
                };
                Self::maybe_resume_protocol(slf)?;
                if empty {
                    set_interest(this, py, true, false)?;
                    let waiter = this
                        .state
                        .borrow(py)
                        .empty_waiter
                        .as_ref()
                        .map(|w| w.clone_ref(py));
                    if let Some(w) = waiter {
                        let w = w.bind(py);
                        if !w.safe_method0(intern!(py, "done"))?.is_truthy()? {
                            w.safe_method1(intern!(py, "set_result"), py.None())?;
                        }
                    }
                    if closing {
                        return Self::call_connection_lost_now(slf, None);
                    } else if eof {
                        Self::shutdown_write(slf)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn shutdown_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        // SAFETY: shutting down the write side of the transport's own socket.
        let rc = unsafe { libc::shutdown(slf.get().fd, libc::SHUT_WR) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            // A peer that already went away is not an error for write_eof.
            if e.raw_os_error() != Some(libc::ENOTCONN) {
                return Err(os_error(e));
            }
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flow_control(slf, true)
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flow_control(slf, false)
    }

    fn flow_control(slf: &Bound<'_, Self>, pause: bool) -> PyResult<()> {
        let py = slf.py();
        let (event_loop, protocol) = {
            let mut st = slf.get().state.borrow_mut(py);
            let size = st.buffered();
            let due = if pause {
                st.c.flow.pause_due(size)
            } else {
                st.c.flow.resume_due(size)
            };
            if !due {
                return Ok(());
            }
            (st.c.event_loop.clone_ref(py), st.c.protocol.clone_ref(py))
        };
        let name = if pause {
            "pause_writing"
        } else {
            "resume_writing"
        };
        call_flow_control(event_loop.bind(py).as_any(), slf.as_any(), &protocol, name)
    }

    fn call_connection_lost_now(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        StreamTransport::_call_connection_lost(slf, exc)
    }

    /// `write` of a byte slice (also how a TLS layer above hands over its records).
    pub(crate) fn write_bytes(slf: &Bound<'_, Self>, data: &[u8]) -> PyResult<()> {
        if !Self::write_allowed(slf, data.is_empty())? {
            return Ok(());
        }
        let outcome = slf.get().send_or_buffer(slf.py(), data);
        Self::after_write(slf, outcome)
    }

    /// asyncio's checks before a write. `Ok(false)`: drop the data silently (nothing to
    /// send, or the connection is lost, counting such writes and warning as asyncio does).
    fn write_allowed(slf: &Bound<'_, Self>, empty: bool) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let mut st = this.state.borrow_mut(py);
        if st.eof {
            return Err(PyRuntimeError::new_err(
                "Cannot call write() after write_eof()",
            ));
        }
        if st.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err(
                "unable to write; sendfile is in progress",
            ));
        }
        if empty {
            return Ok(false);
        }
        // A pipe also refuses writes once closing (asyncio's pipe transport does).
        if st.c.conn_lost > 0 || (this.kind != Kind::Socket && st.c.closing) {
            st.c.conn_lost += 1;
            let warn = st.c.conn_lost > LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            drop(st);
            if warn {
                let message = match this.kind {
                    Kind::Socket => "socket.send() raised exception.",
                    _ => "pipe closed by peer or os.write(pipe, data) raised exception.",
                };
                crate::handles::format_module(py)?
                    .safe_method0(intern!(py, "logger"))?
                    .safe_method1(intern!(py, "warning"), message)?;
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends what the kernel takes now and buffers the rest; `Ok(true)` if something was
    /// buffered. No Python code runs here, so `data` may point into a mutable buffer.
    fn send_or_buffer(&self, py: Python<'_>, data: &[u8]) -> std::io::Result<bool> {
        let mut rest = data;
        if self.state.borrow(py).buffered() == 0 {
            match self.write_some(data) {
                Ok(n) if n == data.len() => return Ok(false),
                Ok(n) => rest = &data[n..],
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.state.borrow_mut(py).buffer.extend_from_slice(rest);
        Ok(true)
    }

    /// What follows a write: a failure is fatal; buffered data wants writable readiness and
    /// may pause the protocol.
    fn after_write(slf: &Bound<'_, Self>, outcome: std::io::Result<bool>) -> PyResult<()> {
        let this = slf.get();
        match outcome {
            Ok(false) => Ok(()),
            Ok(true) => {
                set_interest(this, slf.py(), true, true)?;
                Self::maybe_pause_protocol(slf)
            }
            Err(e) => {
                let msg = format!("Fatal write error on {} transport", this.kind.noun());
                fatal_error(slf, os_error(e), &msg)
            }
        }
    }
}

#[pymethods]
impl StreamTransport {
    /// Makes a transport for a connected non-blocking stream socket. `connection_made` and
    /// the start of reading are scheduled with `call_soon`, as asyncio does; the Python side
    /// (`Loop._make_socket_transport`) builds `extra` and schedules the waiter.
    #[new]
    #[pyo3(signature = (event_loop, sock, protocol, extra, server=None, kind="socket"))]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, CoreLoop>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        extra: Bound<'_, PyDict>,
        server: Option<Bound<'_, PyAny>>,
        kind: &str,
    ) -> PyResult<Self> {
        let kind = match kind {
            "socket" => Kind::Socket,
            "read_pipe" => Kind::ReadPipe,
            "write_pipe" => Kind::WritePipe { watch_peer: true },
            "write_device" => Kind::WritePipe { watch_peer: false },
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown transport kind {other:?}"
                )))
            }
        };
        let fd: RawFd = sock.safe_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err("the socket is closed"));
        }
        let reader = make_reader(py, kind, &protocol)?;
        let context = copy_context(py)?;
        // The caller (`Loop._make_socket_transport`) calls `server._attach(transport)`.
        let server = server.filter(|s| !s.is_none());
        Ok(StreamTransport {
            fd,
            kind,
            state: GilCell::new(State {
                c: Common::new(event_loop, sock, protocol, extra, context),
                reader,
                server: server.map(Bound::unbind),
                buffer: Vec::new(),
                sent: 0,
                paused: false,
                read_eof: false,
                hangup: false,
                eof: false,
                suspended: false,
                empty_waiter: None,
            }),
        })
    }

    /// `asyncio.Transport` (see `Handle.__class__` for why).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        static SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static READ: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static WRITE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        match self.kind {
            Kind::Socket => asyncio_class(py, &SOCKET, "Transport"),
            Kind::ReadPipe => asyncio_class(py, &READ, "ReadTransport"),
            Kind::WritePipe { .. } => asyncio_class(py, &WRITE, "WriteTransport"),
        }
    }

    /// Starts reading (scheduled by the constructor's caller after `connection_made`).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = {
            let mut st = this.state.borrow_mut(py);
            if st.c.registered || st.c.closing || st.c.conn_lost > 0 {
                return Ok(());
            }
            st.c.registered = true;
            st.c.want_write = st.buffered() > 0;
            st.c.event_loop.clone_ref(py)
        };
        let want_write = this.state.borrow(py).c.want_write;
        let core = event_loop.bind(py).get();
        if let Err(e) = core.transport_register(
            py,
            NativeTransport::Stream(slf.clone().unbind()),
            want_write,
        ) {
            this.state.borrow_mut(py).c.registered = false;
            return Err(e);
        }
        let reads = !matches!(this.kind, Kind::WritePipe { .. });
        if reads && !this.state.borrow(py).paused {
            core.push_transport_read(py, NativeTransport::Stream(slf.clone().unbind()));
        }
        Ok(())
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if let Ok(b) = data.cast::<PyBytes>() {
            return Self::write_bytes(slf, b.as_bytes());
        }
        if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            let buf = PyBuffer::<u8>::get(data)?;
            if !Self::write_allowed(slf, buf.len_bytes() == 0)? {
                return Ok(());
            }
            let outcome = if buf.is_c_contiguous() {
                // SAFETY: the buffer is C-contiguous and `len_bytes` long; `buf` holds the
                // export (so the object cannot be resized) until after the slice's last use,
                // and no Python code runs while the slice lives (`send_or_buffer` only makes
                // syscalls and copies what is left into our own buffer).
                let slice = unsafe {
                    std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes())
                };
                slf.get().send_or_buffer(py, slice)
            } else {
                let bytes = buf.to_vec(py)?;
                slf.get().send_or_buffer(py, &bytes)
            };
            drop(buf);
            return Self::after_write(slf, outcome);
        }
        Err(PyTypeError::new_err(format!(
            "data argument must be a bytes-like object, not {:?}",
            data.get_type().name()?.to_string()
        )))
    }

    /// Writes a sequence of bytes-like objects. With nothing buffered and only `bytes`
    /// items, they go out in one vectored write (no joined copy); what the socket does not
    /// take is buffered as `write` would.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let items: Vec<Bound<'_, PyAny>> = list_of_data.try_iter()?.collect::<PyResult<_>>()?;
        let idle = {
            let st = this.state.borrow(py);
            st.buffered() == 0 && !st.eof && st.empty_waiter.is_none() && st.c.conn_lost == 0
        };
        let all_bytes: Option<Vec<&[u8]>> = items
            .iter()
            .map(|i| i.cast::<PyBytes>().ok().map(|b| b.as_bytes()))
            .collect();
        let (Some(slices), true) = (all_bytes, idle && items.len() <= 1024) else {
            let joined = PyBytes::new(py, b"").safe_method1(intern!(py, "join"), &items)?;
            return Self::write(slf, &joined);
        };
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let sent = match writev(this.fd, &slices) {
            Ok(n) => n,
            Err(e) if would_block(&e) => 0,
            Err(_) => 0, // `write_bytes` below meets the error again and reports it
        };
        if sent == total {
            return Ok(());
        }
        let mut rest = Vec::with_capacity(total - sent);
        let mut skip = sent;
        for s in slices {
            if skip >= s.len() {
                skip -= s.len();
            } else {
                rest.extend_from_slice(&s[skip..]);
                skip = 0;
            }
        }
        Self::write_bytes(slf, &rest)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if let Kind::WritePipe { .. } = slf.get().kind {
            // A pipe has no half-close: EOF means closing it once the buffer is flushed.
            return Self::close(slf);
        }
        {
            let mut st = slf.get().state.borrow_mut(py);
            if st.c.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            if st.buffered() > 0 {
                return Ok(());
            }
        }
        Self::shutdown_write(slf)
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let buffered = slf.get().state.borrow(slf.py()).buffered();
        close(slf, buffered)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        force_close(slf, None)
    }

    /// asyncio's `_force_close(exc)`: drop the buffer, stop, `connection_lost(exc)` soon.
    #[pyo3(signature = (exc=None))]
    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        force_close(slf, exc)
    }

    /// `loop.start_tls` may wrap a socket transport (not a pipe).
    #[getter]
    fn _start_tls_compatible(&self) -> bool {
        self.kind == Kind::Socket
    }

    #[pyo3(name = "is_closing")]
    fn py_is_closing(&self, py: Python<'_>) -> bool {
        self.is_closing(py)
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        let st = self.state.borrow(py);
        !st.c.closing && !st.paused
    }

    fn pause_reading(&self, py: Python<'_>) {
        let mut st = self.state.borrow_mut(py);
        if !st.c.closing {
            st.paused = true;
        }
    }

    fn resume_reading(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        let event_loop = {
            let mut st = this.state.borrow_mut(py);
            if st.c.closing || !st.paused {
                return;
            }
            st.paused = false;
            if !st.c.registered {
                return;
            }
            st.c.event_loop.clone_ref(py)
        };
        // Data may have arrived while paused, with no new edge to report it.
        event_loop
            .bind(py)
            .get()
            .push_transport_read(py, NativeTransport::Stream(slf.clone().unbind()));
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let reader = make_reader(py, self.kind, &protocol)?;
        let (old_p, old_r) = {
            let mut st = self.state.borrow_mut(py);
            st.c.protocol_connected = true;
            (
                std::mem::replace(&mut st.c.protocol, protocol.unbind()),
                std::mem::replace(&mut st.reader, reader),
            )
        };
        drop((old_p, old_r));
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.state.borrow(py).c.protocol.clone_ref(py)
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        // The lookup hashes `name` (Python code): not while the state is borrowed.
        let extra = self.state.borrow(py).c.extra.clone_ref(py);
        Common::lookup_extra(py, &extra, name, default)
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.state.borrow(py).c.extra.clone_ref(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let py = slf.py();
        slf.get()
            .state
            .borrow_mut(py)
            .c
            .flow
            .set_limits(high, low)?;
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        let st = self.state.borrow(py);
        (st.c.flow.low, st.c.flow.high)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.borrow(py).buffered()
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    /// The socket object (for `loop.sendfile`'s native path).
    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sock_obj(py)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).c.flow.paused
    }

    /// A future done when the write buffer is empty; `write()` is refused until
    /// `_reset_empty_waiter()` (asyncio's contract with `loop.sendfile`).
    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if this.state.borrow(py).empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let event_loop = this.loop_of(py);
        let fut = CoreLoop::create_future(event_loop.bind(py))?;
        let (empty, old) = {
            let mut st = this.state.borrow_mut(py);
            let old = st.empty_waiter.replace(fut.clone().unbind());
            (st.buffered() == 0, old)
        };
        drop(old);
        if empty {
            fut.safe_method1(intern!(py, "set_result"), py.None())?;
        }
        Ok(fut.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) {
        let old = self.state.borrow_mut(py).empty_waiter.take();
        drop(old);
    }

    /// Lends the socket's poller registration out (native sendfile drives the fd itself).
    fn _suspend_io(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut st = self.state.borrow_mut(py);
            if !st.c.registered {
                return Ok(());
            }
            st.suspended = true;
        }
        set_interest(self, py, false, false)
    }

    /// Takes the registration back after `_suspend_io`.
    fn _resume_io(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().state.borrow_mut(py);
            if !std::mem::replace(&mut st.suspended, false) || st.c.sock.is_none() {
                return Ok(());
            }
        }
        Self::_start_reading(slf)
    }

    /// asyncio's `_call_connection_lost`: tell the protocol, close the socket, detach from
    /// the server. Runs as a loop callback.
    #[pyo3(signature = (exc=None))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let result = connection_lost(slf, exc);
        let server = slf.get().state.borrow_mut(py).server.take();
        if let Some(server) = server {
            server.bind(py).safe_method1(intern!(py, "_detach"), slf)?;
        }
        result.map(drop)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let st = self.state.borrow(py);
        let mut parts = vec!["StreamTransport".to_owned()];
        if st.c.sock.is_none() {
            parts.push("closed".into());
        } else if st.c.closing {
            parts.push("closing".into());
        }
        parts.push(format!("fd={}", self.fd));
        if st.c.sock.is_some() {
            parts.push(
                if st.c.registered && !st.paused {
                    "read=polling"
                } else {
                    "read=idle"
                }
                .into(),
            );
            let state = if st.c.want_write { "polling" } else { "idle" };
            parts.push(format!("write=<{state}, bufsize={}>", st.buffered()));
        }
        format!("<{}>", parts.join(" "))
    }
}
