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
//! data. Resuming reading queues a turn for the same reason, and so does a read whose
//! protocol callback let `KeyboardInterrupt`/`SystemExit` escape (asyncio's level-triggered
//! reader reads on when the loop runs again). The write side is in `stream/write.rs`.
//!
//! Closing follows asyncio: `close()` stops reading, lets the buffer drain, then calls
//! `connection_lost(None)` on the next iteration and closes the socket right after.
//!
//! The socket is reached as `sock_io` decides: raw syscalls while the socket object still
//! holds the fd, or the object's own methods when its class overrides them.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict};
use pyo3::{PyTraverseError, PyVisit};

use crate::attach::SafeCall;
use crate::buffers::RawBuffer;
use crate::event_loop::CoreLoop;
use crate::gil_cell::GilCell;
use crate::poller::Side;
use crate::sys::{read_fd, recv, send, with_scratch, write_fd};
use crate::write_buffer::WriteBuffer;

use super::finalize::Finalize;
use super::sock_io::{self, py_io, Access, IoErr};
use super::tls::TlsProtocol;
use super::{
    asyncio_class, close, connection_lost, copy_context, fatal_error, force_close, in_context,
    is_base_exit, schedule_connection_lost, set_interest, Common, NativeTransport, Transport,
};
use std::cell::{Ref, RefMut};

mod pipe;
mod write;

pub use pipe::{ReadPipeTransport, WritePipeTransport};

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

/// A `Reader`'s callables for one turn.
enum ReaderRef<'py> {
    Data(Bound<'py, PyAny>),
    Buffered(Bound<'py, PyAny>, Bound<'py, PyAny>),
    Tls(Bound<'py, TlsProtocol>),
}

struct State {
    c: Common,
    reader: Reader,
    server: Option<Py<PyAny>>,
    buffer: WriteBuffer,
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
        self.buffer.len()
    }
}

/// Socket methods asyncio's stream transport calls: a class overriding any of them gets
/// them called (see `sock_io`).
const SOCKET_METHODS: &[&str] = &["recv", "recv_into", "send", "sendmsg", "shutdown"];

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

/// (`subclass`: the pipe transports, `stream/pipe.rs`, are subclasses with asyncio's
/// methods of each direction.)
#[pyclass(frozen, subclass, weakref, dict, module = "ferroloop._ferroloop")]
pub struct StreamTransport {
    fd: RawFd,
    kind: Kind,
    access: Access,
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

impl Reader {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Reader::Data(f) => visit.call(f),
            Reader::Buffered(g, u) => {
                visit.call(g)?;
                visit.call(u)
            }
            Reader::Tls(t) => visit.call(t),
            Reader::None => Ok(()),
        }
    }
}

impl Finalize for StreamTransport {
    /// asyncio's `__del__` (see `Common::close_unclosed`).
    fn finalize(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        let owns_socket = this
            .state
            .try_borrow_for_gc()
            .is_some_and(|st| st.c.sock.is_some());
        if !owns_socket {
            return;
        }
        let repr = this.__repr__(py);
        let unclosed = this.state.try_borrow_mut_for_gc().and_then(|mut st| {
            let sock = st.c.sock.take()?;
            Some((sock, st.c.event_loop.clone_ref(py), st.server.take()))
        });
        if let Some(unclosed) = unclosed {
            Common::close_unclosed(slf.as_any(), this.fd, &repr, unclosed);
        }
    }
}

fn empty_buffer() -> PyErr {
    PyRuntimeError::new_err("get_buffer() returned an empty buffer")
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
        self.state.borrow_mut(py).buffer.clear();
    }
    fn holds_fd(&self, py: Python<'_>) -> bool {
        sock_io::holds(py, self.access, self.sock_obj(py).as_ref(), self.fd)
    }
}

impl StreamTransport {
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The fd for a syscall: for a socket, the one its object holds now (-1 once the
    /// caller closed it, whose number may be another connection's by now: the syscall then
    /// fails with `EBADF`, as `sock.send` does). No Python code may run between this and
    /// the syscall.
    #[inline]
    fn io_fd(&self, st: &State) -> RawFd {
        match self.access {
            Access::Raw => sock_io::current_fd(st.c.sock.as_ref()),
            _ => self.fd,
        }
    }

    #[inline]
    fn io_fd_now(&self, py: Python<'_>) -> RawFd {
        self.io_fd(&self.state.borrow(py))
    }

    /// One read syscall on `fd` (not for `Access::Methods`).
    #[inline]
    fn sys_read(&self, fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.kind {
            Kind::Socket => recv(fd, buf),
            _ => read_fd(fd, buf),
        }
    }

    /// One write syscall on `fd` (not for `Access::Methods`).
    #[inline]
    fn sys_write(&self, fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
        match self.kind {
            Kind::Socket => send(fd, buf),
            _ => write_fd(fd, buf),
        }
    }

    /// The socket object, for `Access::Methods` (`EBADF` once the transport closed it).
    fn method_sock<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>, IoErr> {
        match self.sock_obj(py) {
            Some(s) => Ok(s.into_bound(py)),
            None => Err(IoErr::Os(sock_io::ebadf())),
        }
    }

    /// A read or write syscall (or socket method) failed: KeyboardInterrupt and SystemExit
    /// propagate, anything else is fatal to the transport.
    fn io_failed(slf: &Bound<'_, Self>, e: IoErr, what: &str) -> PyResult<()> {
        let e = e.into_pyerr();
        if is_base_exit(slf.py(), &e) {
            return Err(e);
        }
        let msg = format!("Fatal {what} error on {} transport", slf.get().kind.noun());
        fatal_error(slf, e, &msg)
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
        // (the fd is read here: no Python code runs before the read syscall, except for a
        // `BufferedProtocol`'s `get_buffer`, after which it is read again)
        let (context, reader, fd) = {
            let st = this.state.borrow(py);
            if st.c.conn_lost > 0 || st.c.closing || st.paused || st.read_eof || !st.c.registered {
                return Ok(());
            }
            // (as `Bound`s: dropping them needs no check of the interpreter lock)
            let reader = match &st.reader {
                Reader::Data(f) => ReaderRef::Data(f.bind(py).clone()),
                Reader::Buffered(g, u) => {
                    ReaderRef::Buffered(g.bind(py).clone(), u.bind(py).clone())
                }
                Reader::Tls(t) => ReaderRef::Tls(t.bind(py).clone()),
                Reader::None => return Ok(()),
            };
            (st.c.context.bind(py).clone(), reader, this.io_fd(&st))
        };
        let result = in_context(py, context.as_unbound(), || match reader {
            ReaderRef::Data(data_received) => Self::read_data(slf, &data_received, fd),
            ReaderRef::Buffered(get_buffer, updated) => {
                Self::read_buffered(slf, &get_buffer, &updated)
            }
            ReaderRef::Tls(tls) => Self::read_tls(slf, &tls, fd),
        });
        // Another turn if the read filled the buffer; also if KeyboardInterrupt or
        // SystemExit escapes the protocol: running the loop again must read what is left
        // (asyncio's reader stays registered), and no new edge will say it is there.
        if !matches!(result, Ok(false)) {
            Self::push_turn(slf, Side::Read);
        }
        result.map(drop)
    }

    /// Queues a turn of reading or writing at the end of the loop's ready queue.
    fn push_turn(slf: &Bound<'_, Self>, side: Side) {
        let py = slf.py();
        let t = NativeTransport::Stream(slf.clone().unbind());
        slf.get()
            .loop_of(py)
            .bind(py)
            .get()
            .push_transport_turn(py, t, side);
    }

    /// Returns whether another turn should be queued (the read filled the buffer).
    /// `fd`: from `io_fd`, just before.
    fn read_data(
        slf: &Bound<'_, Self>,
        data_received: &Bound<'_, PyAny>,
        fd: RawFd,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let result = if this.access == Access::Methods {
            this.method_sock(py).and_then(|sock| {
                let data = py_io(sock.safe_method1(intern!(py, "recv"), MAX_READ))?;
                let n = py_io(data.len())?;
                Ok((n, (n > 0).then_some(data)))
            })
        } else {
            with_scratch(MAX_READ, |buf| {
                this.sys_read(fd, buf)
                    .map(|n| (n, (n > 0).then(|| PyBytes::new(py, &buf[..n]).into_any())))
            })
            .map_err(IoErr::Os)
        };
        let (len, data) = match result {
            Ok(r) => r,
            Err(e) if e.would_block(py) => return Ok(false),
            Err(e) => {
                Self::io_failed(slf, e, "read")?;
                return Ok(false);
            }
        };
        if len == 0 {
            Self::on_eof(slf)?;
            return Ok(false);
        }
        if let Err(e) = data_received.safe_call1(data) {
            if is_base_exit(py, &e) || this.kind == Kind::ReadPipe {
                // asyncio's read pipe lets it escape to the loop, which reports it and
                // reads on (the run loop's `turn_failed`).
                return Err(e);
            }
            fatal_error(slf, e, "Fatal error: protocol.data_received() call failed.")?;
            return Ok(false);
        }
        Ok(len == MAX_READ || this.read_again(py))
    }

    /// Whether to read again after a read that did not fill the buffer: after a hang-up
    /// (no further edge comes), or through socket methods (which may return less than
    /// there is).
    fn read_again(&self, py: Python<'_>) -> bool {
        self.access == Access::Methods || self.hangup(py)
    }

    /// One `recv` straight into the TLS layer's incoming BIO (no `bytes` in between), then
    /// the TLS state machine runs. Its failures are reported as asyncio's TLS protocol's
    /// are (it is a `BufferedProtocol` there).
    fn read_tls(slf: &Bound<'_, Self>, tls: &Bound<'_, TlsProtocol>, fd: RawFd) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let result = if this.access == Access::Methods {
            // asyncio's TLS layer is a `BufferedProtocol`: `sock.recv_into(its buffer)`.
            // A fresh buffer each time: the method may keep a reference to it.
            this.method_sock(py).and_then(|sock| {
                let buf = PyByteArray::new(py, &[0; MAX_READ]);
                let n: usize = py_io(
                    sock.safe_method1(intern!(py, "recv_into"), &buf)
                        .and_then(|n| n.extract()),
                )?;
                let data = buf.to_vec();
                Ok(tls.get().feed(py, &data[..n.min(data.len())]).map(|()| n))
            })
        } else {
            // No Python code runs in `feed`, so the scratch buffer is not re-entered.
            with_scratch(MAX_READ, |buf| match this.sys_read(fd, buf) {
                Ok(n) => Ok(tls.get().feed(py, &buf[..n]).map(|()| n)),
                Err(e) => Err(IoErr::Os(e)),
            })
        };
        let n = match result {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Self::buffered_protocol_failed(slf, e),
            Err(e) if e.would_block(py) => return Ok(false),
            Err(e) => {
                Self::io_failed(slf, e, "read")?;
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
        Ok(n == MAX_READ || this.read_again(py))
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
        let this = slf.get();
        // asyncio: `buf = get_buffer(-1)`, refused if empty, then `sock.recv_into(buf)`.
        let empty = |b: &Bound<'_, PyAny>| b.len().map(|n| n == 0);
        let obj = match get_buffer.safe_call1(-1).and_then(|b| {
            // (for a buffer, the same as its length in bytes: checked below without a call)
            if this.access == Access::Methods && empty(&b)? {
                return Err(empty_buffer());
            }
            Ok(b)
        }) {
            Ok(b) => b,
            Err(e) => return Self::get_buffer_failed(slf, e),
        };
        // (`cap`: the buffer's length in bytes, when known)
        let (result, cap) = if this.access == Access::Methods {
            let result = this.method_sock(py).and_then(|sock| {
                py_io(
                    sock.safe_method1(intern!(py, "recv_into"), &obj)
                        .and_then(|n| n.extract::<usize>()),
                )
            });
            (result, None)
        } else {
            let mut buf = match RawBuffer::writable(&obj, "recv_into() argument 1") {
                Ok(b) if b.len() == 0 => return Self::get_buffer_failed(slf, empty_buffer()),
                Ok(b) => b,
                Err(e) => match empty(&obj) {
                    Ok(true) => return Self::get_buffer_failed(slf, empty_buffer()),
                    Err(e) => return Self::get_buffer_failed(slf, e),
                    Ok(false) => {
                        Self::io_failed(slf, IoErr::Py(e), "read")?;
                        return Ok(false);
                    }
                },
            };
            // No Python code runs while the buffer is borrowed.
            let fd = this.io_fd_now(py);
            let result = this.sys_read(fd, buf.as_mut_slice()).map_err(IoErr::Os);
            (result, Some(buf.len()))
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if e.would_block(py) => return Ok(false),
            Err(e) => {
                Self::io_failed(slf, e, "read")?;
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
        Ok(cap == Some(n) || this.read_again(py))
    }

    fn get_buffer_failed(slf: &Bound<'_, Self>, e: PyErr) -> PyResult<bool> {
        if is_base_exit(slf.py(), &e) {
            return Err(e);
        }
        fatal_error(slf, e, "Fatal error: protocol.get_buffer() call failed.")?;
        Ok(false)
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
}

#[pymethods]
impl StreamTransport {
    /// Makes a transport for a connected non-blocking stream socket (`kind="socket"`; the
    /// pipe transports' constructors pass theirs). `connection_made` and
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
        let access = sock_io::choose(py, &sock, fd, kind != Kind::Socket, SOCKET_METHODS)?;
        let reader = make_reader(py, kind, &protocol)?;
        let context = copy_context(py)?;
        // The caller (`Loop._make_socket_transport`) calls `server._attach(transport)`.
        let server = server.filter(|s| !s.is_none());
        Ok(StreamTransport {
            fd,
            kind,
            access,
            state: GilCell::new(State {
                c: Common::new(event_loop, sock, protocol, extra, context),
                reader,
                server: server.map(Bound::unbind),
                buffer: WriteBuffer::new(),
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
            // asyncio's write pipe transport derives from `Transport` (its read-side
            // methods raise NotImplementedError), so it passes `isinstance(ReadTransport)`.
            Kind::WritePipe { .. } => asyncio_class(py, &WRITE, "Transport"),
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
        Self::write_object(slf, data)
    }

    /// Writes a sequence of bytes-like objects.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_sequence(slf, list_of_data)
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

    /// Bytes the write buffer has allocated (for tests).
    fn _write_buffer_capacity(&self, py: Python<'_>) -> usize {
        self.state.borrow(py).buffer.capacity()
    }

    /// Whether I/O goes through the socket object's methods (for tests).
    #[getter]
    fn _uses_socket_methods(&self) -> bool {
        self.access == Access::Methods
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
        let (server, reader) = {
            let mut st = slf.get().state.borrow_mut(py);
            (
                st.server.take(),
                std::mem::replace(&mut st.reader, Reader::None),
            )
        };
        // The reader holds the protocol's methods (see `Transport`).
        drop(reader);
        if let Some(server) = server {
            server.bind(py).safe_method1(intern!(py, "_detach"), slf)?;
        }
        result.map(drop)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow_for_gc() {
            st.c.traverse(&visit)?;
            st.reader.traverse(&visit)?;
            visit.call(&st.server)?;
            visit.call(&st.empty_waiter)?;
        }
        Ok(())
    }

    /// Breaks cycles through the transport; a socket still owned is closed when it dies.
    fn __clear__(&self) {
        Python::attach(|py| {
            let released = {
                let Some(mut st) = self.state.try_borrow_mut_for_gc() else {
                    return;
                };
                let reader = std::mem::replace(&mut st.reader, Reader::None);
                (st.c.take_protocol(py), reader, st.empty_waiter.take())
            };
            drop(released);
        });
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
